/* resolve.c — names (greenring/resolve.h): getaddrinfo and getnameinfo on
 * the thread pool, and gr_dial, which connects to a host by name.
 *
 * A lookup is a gr_tpool_run_cleanup job over a heap record holding copies
 * of the arguments and room for the results: the worker never touches the
 * caller's memory, so a caller that is killed or whose deadline passes
 * leaves at once, and the job's cleanup frees the record (and the
 * addrinfo list a finished lookup made) whenever the lookup ends, or at
 * once if it never started.
 *
 * What needs no lookup is answered on the calling thread: a numeric host
 * and port (getaddrinfo with AI_NUMERICHOST|AI_NUMERICSERV parses them and
 * asks nobody), and getnameinfo with NI_NUMERICHOST|NI_NUMERICSERV. A
 * connect to "127.0.0.1" costs no thread hop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

#define DIAL_MIN_ATTEMPT (2 * GR_SEC)

/* ------------------------------------------------------------ getaddrinfo */

struct gai_call {
	struct addrinfo hints;
	bool has_hints;
	int rc;                     /* getaddrinfo's return */
	int err;                    /* its errno, for EAI_SYSTEM */
	struct addrinfo *res;
	const char *node, *service; /* into strings[], or NULL */
	char strings[];
};

static void *gai_run(void *arg)
{
	struct gai_call *c = arg;

	c->rc = getaddrinfo(c->node, c->service, c->has_hints ? &c->hints : NULL, &c->res);
	c->err = errno;
	return NULL;
}

/* The caller left: the list it would have had is nobody's. */
static void gai_cleanup(void *result, void *arg)
{
	struct gai_call *c = arg;

	(void)result;
	if (c->rc == 0 && c->res)
		freeaddrinfo(c->res);
	free(c);
}

static char *copy_string(char **to, const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *at = memcpy(*to, s, n);
	*to += n;
	return at;
}

/* A lookup's outcome as -errno for the pool's own failures (the caller's
 * wait, not the resolver's answer) and EAI_* otherwise. */
static int gai_of_pool_error(int err, int *sys)
{
	if (err == -ENOMEM)
		return EAI_MEMORY;
	*sys = -err;
	return EAI_SYSTEM;
}

/* getaddrinfo: 0 or EAI_*, with *sys the errno of EAI_SYSTEM. */
static int lookup(const char *node, const char *service, const struct addrinfo *hints,
		  struct addrinfo **res, int64_t deadline, int *sys)
{
	struct addrinfo numeric = { .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };

	if (hints) {
		numeric.ai_flags |= hints->ai_flags;
		numeric.ai_family = hints->ai_family;
		numeric.ai_socktype = hints->ai_socktype;
		numeric.ai_protocol = hints->ai_protocol;
	}
	/* Numbers are parsed, not looked up: no thread hop. EAI_NONAME says
	 * a name is in it; any other answer is what the lookup would say. */
	int rc = getaddrinfo(node, service, &numeric, res);
	if (rc != EAI_NONAME || (hints && (hints->ai_flags & (AI_NUMERICHOST | AI_NUMERICSERV)) ==
						  (AI_NUMERICHOST | AI_NUMERICSERV))) {
		*sys = errno;
		return rc;
	}

	size_t n = (node ? strlen(node) + 1 : 0) + (service ? strlen(service) + 1 : 0);
	struct gai_call *c = calloc(1, sizeof(*c) + n);
	if (!c)
		return EAI_MEMORY;
	char *to = c->strings;
	c->node = copy_string(&to, node);
	c->service = copy_string(&to, service);
	if (hints) {
		/* The fields a caller may set (the rest must be zero). */
		c->has_hints = true;
		c->hints.ai_flags = hints->ai_flags;
		c->hints.ai_family = hints->ai_family;
		c->hints.ai_socktype = hints->ai_socktype;
		c->hints.ai_protocol = hints->ai_protocol;
	}
	int err = gr_tpool_run_cleanup(gai_run, c, gai_cleanup, NULL, deadline);
	if (err == -ECANCELED || err == -ETIMEDOUT)
		return gai_of_pool_error(err, sys); /* the record is the cleanup's */
	if (err) {
		free(c);
		return gai_of_pool_error(err, sys);
	}
	rc = c->rc;
	*sys = c->err;
	*res = rc == 0 ? c->res : NULL;
	free(c);
	return rc;
}

int gr_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		   struct addrinfo **res, int64_t deadline)
{
	int sys = 0;
	int rc = res ? lookup(node, service, hints, res, deadline, &sys)
		     : gai_of_pool_error(-EINVAL, &sys);

	if (rc == EAI_SYSTEM)
		errno = sys;
	return rc;
}

/* ------------------------------------------------------------ getnameinfo */

struct gni_call {
	struct sockaddr_storage sa;
	socklen_t salen;
	int flags;
	socklen_t hostlen, servlen; /* 0: not asked for */
	int rc, err;
	char host[NI_MAXHOST];
	char serv[NI_MAXSERV];
};

static void *gni_run(void *arg)
{
	struct gni_call *c = arg;

	c->rc = getnameinfo((struct sockaddr *)&c->sa, c->salen, c->hostlen ? c->host : NULL,
			    c->hostlen, c->servlen ? c->serv : NULL, c->servlen, c->flags);
	c->err = errno;
	return NULL;
}

static void gni_cleanup(void *result, void *arg)
{
	(void)result;
	free(arg);
}

static socklen_t at_most(socklen_t n, size_t max)
{
	return n < max ? n : (socklen_t)max;
}

int gr_getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
		   char *serv, socklen_t servlen, int flags, int64_t deadline)
{
	int sys = 0;
	int rc;

	if (!host)
		hostlen = 0;
	if (!serv)
		servlen = 0;
	if ((flags & (NI_NUMERICHOST | NI_NUMERICSERV)) == (NI_NUMERICHOST | NI_NUMERICSERV))
		return getnameinfo(sa, salen, host, hostlen, serv, servlen, flags); /* no lookup */
	if (!sa || salen > sizeof(struct sockaddr_storage))
		return EAI_FAMILY; /* as getnameinfo says of an address it cannot read */
	struct gni_call *c = calloc(1, sizeof(*c));
	if (!c)
		return EAI_MEMORY;
	memcpy(&c->sa, sa, salen);
	c->salen = salen;
	c->flags = flags;
	/* Names are at most NI_MAXHOST long; a smaller buffer must still get
	 * EAI_OVERFLOW, so the worker is given the caller's length. */
	c->hostlen = at_most(hostlen, sizeof(c->host));
	c->servlen = at_most(servlen, sizeof(c->serv));
	int err = gr_tpool_run_cleanup(gni_run, c, gni_cleanup, NULL, deadline);
	if (err) {
		if (err != -ECANCELED && err != -ETIMEDOUT)
			free(c); /* else the record is the cleanup's */
		rc = gai_of_pool_error(err, &sys);
	} else {
		rc = c->rc;
		sys = c->err;
		if (rc == 0 && c->hostlen)
			memcpy(host, c->host, strnlen(c->host, c->hostlen - 1) + 1);
		if (rc == 0 && c->servlen)
			memcpy(serv, c->serv, strnlen(c->serv, c->servlen - 1) + 1);
		free(c);
	}
	if (rc == EAI_SYSTEM)
		errno = sys;
	return rc;
}

/* ------------------------------------------------------------ dial */

/* What gr_dial reports for a lookup that found no address to try. */
static int errno_of_eai(int rc, int sys)
{
	switch (rc) {
	case EAI_SYSTEM:
		return sys;
	case EAI_MEMORY:
		return ENOMEM;
	case EAI_AGAIN:
		return EAGAIN;
	case EAI_FAMILY:
		return EAFNOSUPPORT;
	case EAI_SOCKTYPE:
		return ESOCKTNOSUPPORT;
	case EAI_SERVICE:
	case EAI_BADFLAGS:
		return EINVAL;
	default: /* EAI_NONAME, EAI_NODATA, EAI_ADDRFAMILY, EAI_FAIL */
		return EADDRNOTAVAIL;
	}
}

/* When the attempt at one address must give up, `left` addresses (this one
 * included) remaining before `deadline`: Go's net.Dial rule, the time left
 * shared out, but never less than DIAL_MIN_ATTEMPT (nor more than is left),
 * so that a first address that drops packets does not eat the whole
 * deadline and a slow network still gets a fair try per address. */
static int64_t attempt_deadline(int64_t deadline, int64_t attempt_timeout, int left)
{
	int64_t now = gr_now();

	if (attempt_timeout > 0)
		return gr__deadline_min(deadline, now + attempt_timeout);
	if (deadline == GR_FOREVER || left <= 1 || deadline <= now)
		return deadline;
	int64_t share = (deadline - now) / left;
	if (share < DIAL_MIN_ATTEMPT)
		share = deadline - now < DIAL_MIN_ATTEMPT ? deadline - now : DIAL_MIN_ATTEMPT;
	return now + share;
}

/* One address: a new socket, connected by attempt's deadline. The fd, or
 * -errno (the socket closed). */
static int dial_one(struct gr__hub *hub, const struct addrinfo *ai, int64_t attempt)
{
	/* Non-blocking from birth where it would be made so at connect. */
	int nonblock = hub->ops->caps & GR_HUB_CAP_COMPLETION ? 0 : SOCK_NONBLOCK;
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | nonblock, ai->ai_protocol);

	if (fd < 0)
		return -errno;
	struct gr__op o = gr__op_init(GR_OP_CONNECT, fd);
	o.op.addr = ai->ai_addr;
	o.op.addrlen_value = ai->ai_addrlen;
	o.op.deadline = attempt;
	int64_t r = gr__run_op(&o, "gr_dial");
	if (r == 0)
		return fd;
	gr_close(fd); /* not cancellable: a killed caller's socket is closed too */
	return (int)r;
}

int gr_dial_with(const char *host, const char *port, const struct gr_dial_opts *opts,
		 int64_t deadline)
{
	struct gr_dial_opts o = opts ? *opts : (struct gr_dial_opts){ 0 };
	struct addrinfo hints = { .ai_family = o.family,
				  .ai_socktype = o.socktype ? o.socktype : SOCK_STREAM,
				  .ai_protocol = o.protocol };
	struct gr__hub *hub = NULL;
	struct addrinfo *res = NULL;
	int sys = 0;

	if (!host || !port)
		return -EINVAL;
	int err = gr__park_hub(&hub);
	if (err)
		return err;
	int rc = lookup(host, port, &hints, &res, deadline, &sys);
	if (rc)
		return -errno_of_eai(rc, sys);
	int left = 0;
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
		left++;
	err = -EADDRNOTAVAIL;
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next, left--) {
		err = dial_one(hub, ai, attempt_deadline(deadline, o.attempt_timeout, left));
		if (err >= 0)
			break;
		/* Killed: stop now. Out of time: the next address would fail
		 * with ETIMEDOUT at once anyway. */
		if (err == -ECANCELED || err == -EPERM ||
		    (deadline != GR_FOREVER && gr_now() >= deadline))
			break;
	}
	freeaddrinfo(res);
	return err;
}

int gr_dial(const char *host, const char *port, int64_t deadline)
{
	return gr_dial_with(host, port, NULL, deadline);
}
