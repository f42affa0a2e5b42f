/* bench_common.h — plumbing shared by the benchmark programs: the server command
 * line, the listening socket, signal delivery as a file descriptor, and the few
 * socket and number helpers the load generator needs as well.
 *
 * Header-only (every function static inline) so that each benchmark program stays
 * one self-contained file and nothing here is built into the library.
 *
 * Errors in setup are fatal (err(3)): these are benchmark programs, and a server
 * that half-started would only produce a misleading figure.  Every includer must
 * define _GNU_SOURCE before its first include (accept4, signalfd, program_invocation
 * names). */
#ifndef GREENRING_BENCH_COMMON_H
#define GREENRING_BENCH_COMMON_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before including bench_common.h"
#endif

#include <err.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* Parse a whole decimal integer in [min, max]; exits with a usage error otherwise. */
static inline long bench_parse_long(const char *opt, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		errx(1, "--%s: expected an integer in [%ld, %ld], got '%s'", opt, min, max, s);
	return v;
}

/* Parse a finite number of seconds in [min, max]; exits with a usage error otherwise. */
static inline double bench_parse_seconds(const char *opt, const char *s, double min, double max)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	/* The negated comparisons also reject NaN. */
	if (errno != 0 || end == s || *end != '\0' || !(v >= min) || !(v <= max))
		errx(1, "--%s: expected seconds in [%g, %g], got '%s'", opt, min, max, s);
	return v;
}

/* Resolve a numeric address (never a name: the benchmarks must not touch DNS). */
static inline void bench_resolve(const char *host, int port, struct sockaddr_storage *ss,
				 socklen_t *len)
{
	char service[8];
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
	};
	struct addrinfo *ai;

	snprintf(service, sizeof(service), "%d", port);
	int rc = getaddrinfo(host, service, &hints, &ai);
	if (rc != 0)
		errx(1, "address '%s' port %d: %s", host, port, gai_strerror(rc));
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
}

/* Whether an accept() error concerns only the connection being accepted, so the
 * server should go on accepting: accept(2) passes on the network errors pending on
 * a new connection, and a firewall may refuse it with EPERM.  Any other error (out
 * of descriptors or memory, a socket that is not listening) would repeat on every
 * attempt. */
static inline bool bench_accept_error_is_transient(int e)
{
	switch (e) {
	case EAGAIN:
	case EINTR:
	case ECONNABORTED:
	case EPERM:
	case EPROTO:
	case ENOPROTOOPT:
	case ENETDOWN:
	case ENONET:
	case EHOSTDOWN:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EOPNOTSUPP:
		return true;
	default:
		return false;
	}
}

/* Disable Nagle: echo and request/response traffic is latency bound, and a delayed
 * small segment would measure the TCP stack's timer, not the server. */
static inline int bench_set_nodelay(int fd)
{
	int one = 1;
	return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Raise the soft descriptor limit to the hard one so that a run with many
 * connections fails on the server's merits, not on the default of 1024. */
static inline void bench_raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		err(1, "getrlimit(RLIMIT_NOFILE)");
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			err(1, "setrlimit(RLIMIT_NOFILE)");
	}
}

/* Block SIGINT and SIGTERM and return a signalfd that becomes readable when one
 * arrives.  The event loop waits on it like on any socket, so a signal can never
 * slip in between checking a flag and going to sleep in the kernel.  SIGPIPE is
 * ignored: a peer that vanished is reported by send() as EPIPE instead. */
static inline int bench_signalfd(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		err(1, "sigprocmask");
	int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		err(1, "signalfd");
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		err(1, "signal(SIGPIPE)");
	return fd;
}

/* The command line every echo server of the benchmark accepts. */
struct bench_server_opts {
	const char *host;
	int port;
};

/* Parse --host and --port.  --hub and --threads are accepted and ignored so that the
 * driver can start a baseline exactly like bench/echo_server. */
static inline void bench_server_parse(int argc, char **argv, struct bench_server_opts *o)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "hub", required_argument, NULL, 'u' },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	o->host = "127.0.0.1";
	o->port = 7000;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'H':
			o->host = optarg;
			break;
		case 'p':
			o->port = (int)bench_parse_long("port", optarg, 0, 65535);
			break;
		case 'u':
		case 't':
			break;
		case 'h':
			printf("usage: %s [--host ADDR] [--port N] [--hub NAME] [--threads T]\n"
			       "  --host ADDR  numeric address to listen on (default 127.0.0.1)\n"
			       "  --port N     TCP port, 0 for any free one (default 7000)\n"
			       "  --hub, --threads  accepted for compatibility with echo_server;"
			       " ignored\n",
			       program_invocation_short_name);
			exit(0);
		default:
			exit(1);
		}
	}
	if (optind != argc)
		errx(1, "unexpected argument '%s' (try --help)", argv[optind]);
}

/* Create the listening socket and announce it with one flushed line on stdout,
 * "listening on HOST:PORT", which the driver waits for instead of sleeping.  The
 * port printed is the bound one, so --port 0 works. */
static inline int bench_listen(const struct bench_server_opts *o, bool nonblock)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;

	bench_resolve(o->host, o->port, &ss, &len);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0),
			0);
	if (fd < 0)
		err(1, "socket");
	/* A benchmark restarts servers back to back; TIME_WAIT must not block a port. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
		err(1, "setsockopt(SO_REUSEADDR)");
	if (bind(fd, (struct sockaddr *)&ss, len) != 0)
		err(1, "bind %s:%d", o->host, o->port);
	if (listen(fd, SOMAXCONN) != 0)
		err(1, "listen");

	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		err(1, "getsockname");
	int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						  : ((struct sockaddr_in *)&ss)->sin_port);
	if (printf("listening on %s:%d\n", o->host, port) < 0 || fflush(stdout) != 0)
		err(1, "stdout");
	return fd;
}

#endif /* GREENRING_BENCH_COMMON_H */
