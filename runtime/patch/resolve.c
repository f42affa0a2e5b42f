/* resolve.c — getaddrinfo, made green: gr_getaddrinfo (runtime/resolve.c)
 * runs the lookup on greenring's thread pool while the fiber parks; a killed
 * caller returns at once and the pool frees what a started lookup made.
 *
 * glibc's resolver calls its own internal socket, poll and read, which no
 * interposer sees: only the whole call can be moved off the thread. On the
 * worker thread (no hub) the call comes back through this interposer, which
 * hands it to glibc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <string.h>

#include "patch.h"

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

static int green_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			     struct addrinfo **res)
{
	int saved = errno;
	int err = patch_green_check();

	if (err) {
		errno = -err;
		return EAI_SYSTEM;
	}
	/* No deadline of its own: the fiber's bounds it, as it bounds every
	 * blocking call the program makes. */
	int r = gr_getaddrinfo(node, service, hints, res, GR_FOREVER);
	if (r != EAI_SYSTEM)
		errno = saved; /* other fibers ran meanwhile: theirs is not the caller's */
	return r;
}

PATCH_API int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			  struct addrinfo **res)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || !res || numeric_only(node, service, hints))
		return REAL(getaddrinfo)(node, service, hints, res);
	return green_getaddrinfo(node, service, hints, res);
}
