/* greenring/resolve.h — names: DNS lookups that do not stall the hub, and
 * connecting to a host by name (Go's net.Dial, gevent's create_connection).
 *
 * The C library's getaddrinfo(3) and getnameinfo(3) block: they read
 * /etc/hosts and ask DNS servers, for as long as their timeouts allow
 * (seconds). The green versions make them on greenring's thread pool
 * (gevent's threaded resolver) and park the calling fiber meanwhile.
 * Numeric addresses and ports (and NI_NUMERICHOST|NI_NUMERICSERV) need no
 * lookup: they are answered at once, on the calling thread.
 *
 * Kills and deadlines: the lookup runs on copies of the arguments, so a
 * killed caller, or one whose deadline passes, returns at once; the lookup
 * runs to its end on its worker and its result is freed there.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_RESOLVE_H
#define GREENRING_RESOLVE_H

#include <stdint.h>
#include <sys/socket.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

struct addrinfo;

/* getaddrinfo(3), with a deadline (absolute; GR_FOREVER; 0 tries only what
 * needs no lookup). Switches. Returns as getaddrinfo does, so that code
 * written for it works unchanged: 0 and *res (free it with freeaddrinfo),
 * or an EAI_* code (gai_strerror() names it). What is not the resolver's
 * answer comes as getaddrinfo's own system errors do: EAI_SYSTEM with errno
 * set — ECANCELED (the caller was killed), ETIMEDOUT (the deadline, or the
 * fiber's, passed), EPERM (called inside the hub), EAGAIN (no worker thread
 * could be started), EINVAL (res is NULL) — and EAI_MEMORY for ENOMEM.
 * (-errno was not an option: EAI_* codes are negative too, and EAI_NONAME
 * is -ENOENT's value.) */
GR_API int gr_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			  struct addrinfo **res, int64_t deadline);

/* getnameinfo(3), with a deadline, returning as gr_getaddrinfo does (host
 * and serv are written only when it returns 0). Switches. */
GR_API int gr_getnameinfo(const struct sockaddr *sa, socklen_t salen, char *host, socklen_t hostlen,
			  char *serv, socklen_t servlen, int flags, int64_t deadline);

/* Options of gr_dial_with(); zero-initialise, then set what you need. */
struct gr_dial_opts {
	int family;               /* AF_UNSPEC (0: any), AF_INET, AF_INET6 */
	int socktype;             /* 0: SOCK_STREAM */
	int protocol;             /* 0: the socket type's default */
	/* Longest wait for one address, ns. 0: with a deadline, the time left
	 * is shared among the addresses left, but at least 2 s each (Go's
	 * rule: a host whose first address does not answer still gets its
	 * second tried); without one, the kernel's connect timeout. */
	int64_t attempt_timeout;
};

/* Connect to host:port (port: a number or a service name, as "443" or
 * "https"): resolve it (gr_getaddrinfo), then try each address in the order
 * the resolver gives (RFC 6724, IPv6 first where it is usable), one at a
 * time, until one accepts, all under `deadline` (absolute; GR_FOREVER).
 * Switches. Returns the connected socket (SOCK_CLOEXEC; O_NONBLOCK on the
 * epoll and poll hubs, as a gr_accept'ed one), or -errno: the error of the
 * last address tried (ECONNREFUSED, ETIMEDOUT, ENETUNREACH, ...), or
 * EADDRNOTAVAIL (the name has no address: EAI_NONAME, EAI_NODATA,
 * EAI_ADDRFAMILY, EAI_FAIL), EAGAIN (EAI_AGAIN: no answer from the name
 * servers), EINVAL (host or port NULL; EAI_SERVICE: an unknown port name),
 * EAFNOSUPPORT (EAI_FAMILY), ENOMEM, ECANCELED (killed: it returns at once),
 * ETIMEDOUT (the deadline passed), EPERM (inside the hub). */
GR_API int gr_dial(const char *host, const char *port, int64_t deadline);

/* As gr_dial, with options (NULL: the defaults). */
GR_API int gr_dial_with(const char *host, const char *port, const struct gr_dial_opts *opts,
			int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
