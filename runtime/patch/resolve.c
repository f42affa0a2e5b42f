/* resolve.c — getaddrinfo, made green: the lookup runs on greenring's
 * thread pool, the fiber parks meanwhile.
 *
 * glibc's resolver calls its own internal socket, poll and read, which no
 * interposer sees: only the whole call can be moved off the thread.
 *
 * Ownership. A killed caller returns at once, but a lookup that already
 * started cannot be stopped; its result must be freed when it ends, and
 * the caller's strings must stay valid while it runs. gr_tpool_run_cleanup
 * frees what a started job made, but does not tell its caller whether the
 * job had started, so a job record handed to it could be neither freed
 * (it may still run) nor kept (it may never run). The caller therefore
 * hands the lookup to a small helper fiber that nobody can kill: the
 * helper waits for the pool uninterrupted, and whichever of the two
 * finishes last frees the record. The caller waits on an event, which a
 * kill or the fiber's deadline interrupts.
 *
 * To switch to gr_getaddrinfo (runtime/resolve.c) once it exists: replace
 * green_getaddrinfo's body by that call; numeric_only() can stay.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "patch.h"

struct lookup {
	char *node, *service;
	struct addrinfo hints;
	bool has_hints;
	struct addrinfo *res;
	int ret, err;
	gr_event done;                  /* set by the helper when ret is known */
	int refs;                       /* caller and helper: same thread */
	bool caller_gone;
};

static void lookup_put(struct lookup *l)
{
	if (--l->refs > 0)
		return;
	if (l->caller_gone && l->res)
		freeaddrinfo(l->res);
	gr_event_destroy(&l->done);
	free(l->node);
	free(l->service);
	free(l);
}

/* On a worker thread (no hub: the plain call). */
static void *run_lookup(void *arg)
{
	struct lookup *l = arg;

	l->ret = REAL(getaddrinfo)(l->node, l->service, l->has_hints ? &l->hints : NULL, &l->res);
	l->err = errno;
	return NULL;
}

static void *helper(void *arg)
{
	struct lookup *l = arg;
	int r = gr_tpool_run(run_lookup, l, NULL, GR_FOREVER);

	if (r == -EAGAIN || r == -ENOMEM) {
		/* No worker thread could be started: the lookup is made here,
		 * blocking the thread, rather than not at all. */
		run_lookup(l);
	} else if (r < 0) {
		l->ret = EAI_SYSTEM; /* this thread is exiting */
		l->err = -r;
	}
	gr_event_set(&l->done);
	lookup_put(l);
	return NULL;
}

/* Hosts and services written as numbers need no lookup: glibc answers
 * them without a file or a packet, so they stay on the fiber. */
static bool numeric_only(const char *node, const char *service, const struct addrinfo *hints)
{
	unsigned char addr[sizeof(struct in6_addr)];

	if (service && (!*service || service[strspn(service, "0123456789")] != '\0') &&
	    !(hints && (hints->ai_flags & AI_NUMERICSERV)))
		return false;
	if (!node || (hints && (hints->ai_flags & AI_NUMERICHOST)))
		return true;
	return inet_pton(AF_INET, node, addr) == 1 || inet_pton(AF_INET6, node, addr) == 1;
}

static char *dup_or_null(const char *s, bool *failed)
{
	char *d = s ? strdup(s) : NULL;

	*failed |= s && !d;
	return d;
}

static int green_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			     struct addrinfo **res)
{
	int err = patch_green_check();

	if (err) {
		errno = -err;
		return EAI_SYSTEM;
	}
	struct lookup *l = calloc(1, sizeof(*l));
	bool failed = !l;
	if (l) {
		l->node = dup_or_null(node, &failed);
		l->service = dup_or_null(service, &failed);
	}
	if (failed) {
		if (l) {
			free(l->node);
			free(l->service);
			free(l);
		}
		return EAI_MEMORY;
	}
	if (hints) {
		/* Only the four fields getaddrinfo reads; the rest must be 0. */
		l->hints.ai_flags = hints->ai_flags;
		l->hints.ai_family = hints->ai_family;
		l->hints.ai_socktype = hints->ai_socktype;
		l->hints.ai_protocol = hints->ai_protocol;
		l->has_hints = true;
	}
	gr_event_init(&l->done);
	l->refs = 2;
	/* A helper that only waits: the smallest stack. Detached: it frees
	 * itself, and the caller may be gone by then. */
	struct gr_spawn_opts opts = { .stack_size = 16 * 1024, .name = "getaddrinfo", .detached = 1 };
	if (!gr_spawn_with(&opts, helper, l)) {
		err = errno;
		gr_event_destroy(&l->done);
		free(l->node);
		free(l->service);
		free(l);
		errno = err;
		return err == ENOMEM ? EAI_MEMORY : EAI_SYSTEM;
	}
	err = gr_event_wait(&l->done, GR_FOREVER);
	if (err) {
		/* Killed, or the fiber's deadline: the helper finishes alone. */
		l->caller_gone = true;
		lookup_put(l);
		errno = -err;
		return EAI_SYSTEM;
	}
	int ret = l->ret, lookup_errno = l->err;
	*res = l->res;
	lookup_put(l);
	if (ret == EAI_SYSTEM)
		errno = lookup_errno;
	return ret;
}

PATCH_API int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			  struct addrinfo **res)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || !res || numeric_only(node, service, hints))
		return REAL(getaddrinfo)(node, service, hints, res);
	return green_getaddrinfo(node, service, hints, res);
}
