/* server.c — gr_server: listen, accept on a fiber, one fiber per connection.
 *
 * Built on the public API (gr_accept4, gr_spawn_with, gr_kill, gr_close), so
 * it behaves the same on every hub. The one internal thing it uses is the
 * parking gate's wait queue (gr__park_queue/gr__unpark, wait.c), for the two
 * waits that no fd can express: the acceptor waiting for a free connection
 * slot, and gr_server_wait() callers waiting for the last handler. A
 * semaphore and an event would do the same, but gr_server_free() must wait
 * uncancellably (a killed caller must not free the server under its
 * fibers), which only the gate offers.
 *
 * Lifetimes:
 *   - The acceptor and the connection fibers are detached. Each records its
 *     own handle (gr_self()) once its body runs and clears it before it ends,
 *     so a handle the server holds always names a live fiber. A fiber that has
 *     not started yet is never gr_kill()ed: a fiber killed before it runs
 *     never runs its body, and the body is what closes its fd and does the
 *     books. Such a fiber is flagged instead and ends at once when it starts.
 *   - The acceptor closes the listening socket as it ends; a connection fiber
 *     closes its socket after the handler returns. Both with gr_close(), which
 *     is uncancellable, so a killed fiber still cleans up, and both only if
 *     the number still names the socket the server opened (fd_identity).
 *   - Nothing touches the server after the last wake of its done queue: that
 *     is when gr_server_free() may release it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "greenring/server.h"

/* Accept failures that mean "out of a resource" are retried after a pause
 * that doubles from MIN to MAX (as Go's net/http does): retrying at once
 * would spin the acceptor while the process has no fd to give. */
#define BACKOFF_MIN (5 * GR_MSEC)
#define BACKOFF_MAX GR_SEC

/* Which file an fd number names: a number the server opened is closed by
 * it only while it still names that file. A program may close it behind the
 * server's back (the listening socket, through gr_server_fd(); a handler,
 * against the rules, its connection) and get the number back for a file of
 * its own, which the server must never close. */
struct fd_identity {
	dev_t dev;
	ino_t ino;
};

static int fd_identity(int fd, struct fd_identity *id)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	return 0;
}

/* Close fd if it still names the file `id` was taken from. */
static void close_owned(int fd, const struct fd_identity *id)
{
	struct fd_identity now = { 0, 0 };

	if (fd_identity(fd, &now) == 0 && now.dev == id->dev && now.ino == id->ino)
		(void)gr_close(fd);
}

struct conn {
	struct gr__link link;       /* on the server's conns */
	gr_server *server;
	gr_fiber *fiber;            /* set while the handler runs */
	int fd;
	struct fd_identity id;      /* of the accepted socket */
	bool cancelled;             /* stop(KILL) came before the fiber started */
	struct sockaddr_storage peer;
};

struct gr_server {
	pthread_t owner;
	gr_server_handler handler;
	void *arg;
	struct gr_server_opts opts;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int lfd;                    /* listening socket; -1 when none */
	struct fd_identity lid;     /* of the listening socket */
	int port;                   /* bound port; -1 before start */
	int error;                  /* the acceptor's fatal error (-errno), else 0 */
	gr_fiber *acceptor;         /* valid while acceptor_running */
	bool started;
	bool acceptor_running;      /* spawned and not yet ended */
	bool acceptor_began;        /* its body has run (so it may be killed) */
	bool stopping;
	bool killing;               /* stop(GR_SERVER_KILL) */
	size_t live;                /* connection fibers spawned and not ended */
	struct gr__list conns;
	struct gr__waitq slot_q;    /* the acceptor, waiting under max_conns */
	struct gr__waitq done_q;    /* gr_server_wait()/free() callers */
};

static bool own_thread(const gr_server *s)
{
	return pthread_equal(s->owner, pthread_self()) != 0;
}

/* The last fiber of the server may have ended: let the waiters go. */
static void notify_done(gr_server *s)
{
	if (s->acceptor_running || s->live)
		return;
	while (!gr__waitq_empty(&s->done_q))
		gr__unpark(gr__waitq_first(&s->done_q), 0);
}

/* ------------------------------------------------------------ connections */

static struct conn *conn_of(struct gr__link *l)
{
	return gr__container(l, struct conn, link);
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	gr_server *s = c->server;

	if (!c->cancelled) {
		c->fiber = gr_self();
		s->handler(c->fd, (const struct sockaddr *)&c->peer, s->arg);
		c->fiber = NULL;
	}
	close_owned(c->fd, &c->id);
	gr__list_remove(&s->conns, &c->link);
	s->live--;
	if (!gr__waitq_empty(&s->slot_q))
		gr__unpark(gr__waitq_first(&s->slot_q), 0);
	notify_done(s);
	free(c);
	return NULL;
}

/* The fiber's name, shown in overflow and deadlock messages: the peer, as
 * "1.2.3.4:5678" or "[::1]:5678" (truncated to fit). */
static void peer_name(const struct sockaddr_storage *peer, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (peer->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)peer;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		snprintf(out, len, "%s:%d", host, port);
	} else if (peer->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(out, len, "[%s]:%d", host, port);
	} else {
		snprintf(out, len, "conn");
	}
}

/* Hand an accepted socket to a new connection fiber. On failure the socket
 * is closed (the client sees a reset) and -errno returned. */
static int conn_spawn(gr_server *s, int fd, const struct sockaddr_storage *peer)
{
	struct conn *c = malloc(sizeof(*c));

	if (!c) {
		(void)gr_close(fd);
		return -ENOMEM;
	}
	c->server = s;
	c->fiber = NULL;
	c->fd = fd;
	c->cancelled = false;
	c->peer = *peer;

	char name[GR__NAME_MAX];
	struct gr_spawn_opts so = { .stack_size = s->opts.stack_size, .detached = 1, .name = name };
	int err = fd_identity(fd, &c->id);
	peer_name(peer, name, sizeof(name));
	if (err || !gr_spawn_with(&so, conn_main, c)) {
		err = err ? err : -errno;
		free(c);
		(void)gr_close(fd);
		return err;
	}
	gr__list_push_front(&s->conns, &c->link);
	s->live++;
	return 0;
}

/* ------------------------------------------------------------ the acceptor */

/* Wait for a connection slot under opts.max_conns. 0 when one is free;
 * -ECANCELED once the acceptor is being stopped. */
static int wait_slot(gr_server *s)
{
	while (s->opts.max_conns && s->live >= s->opts.max_conns) {
		struct gr__hub *hub = NULL;
		struct gr__park p = { .what = "gr_server (at max_conns)" };
		int r = gr__park_prepare(&hub, &p, GR_FOREVER);

		if (!r)
			r = gr__park_queue(hub, &p, &s->slot_q);
		if (r < 0)
			return r;
	}
	return 0;
}

/* What to do after a failed accept: 0 retry now, 1 retry after a pause,
 * -1 stop (cancelled, or an error retrying cannot fix). */
static int accept_failure(int err)
{
	switch (err) {
	case ECONNABORTED: /* the client gave up while queued */
	case EPROTO:
	case EPERM:        /* a firewall rule refused this one */
	case EINTR:
	case EAGAIN:
	case ENETDOWN: case ENOPROTOOPT: case EHOSTDOWN: case ENONET:
	case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH:
		/* accept(2): pending network errors of the new socket are
		 * reported by accept; they concern that client only. */
		return 0;
	case EMFILE:
	case ENFILE:
	case ENOBUFS:
	case ENOMEM:
		return 1;
	default:
		return -1;
	}
}

static void *acceptor_main(void *arg)
{
	gr_server *s = arg;
	int64_t backoff = 0;

	s->acceptor_began = true;
	s->acceptor = gr_self();
	while (!s->stopping) {
		if (wait_slot(s) < 0)
			break;

		struct sockaddr_storage peer;
		socklen_t len = sizeof(peer);
		int fd = gr_accept4(s->lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
		int err = fd < 0 ? errno : 0;

		if (fd >= 0 && s->stopping) {
			/* The kernel completed the accept before the kill took
			 * hold: we are not serving any more. */
			(void)gr_close(fd);
			break;
		}
		if (fd >= 0) {
			if (!s->opts.nagle) {
				int one = 1;

				/* Ignored on failure: it can only fail for a socket
				 * the peer already reset, and the handler's first
				 * call reports that better. */
				(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			}
			err = -conn_spawn(s, fd, &peer);
			if (!err) {
				backoff = 0;
				continue;
			}
		}
		int what = err == ECANCELED ? -1 : accept_failure(err);
		if (what < 0) {
			if (err != ECANCELED)
				s->error = -err;
			break;
		}
		if (what > 0) {
			backoff = backoff ? backoff * 2 : BACKOFF_MIN;
			if (backoff > BACKOFF_MAX)
				backoff = BACKOFF_MAX;
			if (gr_sleep(backoff) < 0)
				break; /* killed: stopping */
		}
	}
	close_owned(s->lfd, &s->lid);
	s->lfd = -1;
	s->acceptor = NULL;
	s->acceptor_running = false;
	notify_done(s);
	return NULL;
}

/* ------------------------------------------------------------ the API */

static int parse_host(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (!host || !*host)
		host = "0.0.0.0";

	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof(*sin);
		return 0;
	}

	/* IPv6, bare or in brackets as in URLs ("[::1]"). */
	char buf[INET6_ADDRSTRLEN + 2];
	size_t n = strlen(host);
	if (n >= sizeof(buf))
		return -EINVAL;
	if (host[0] == '[') {
		if (n < 2 || host[n - 1] != ']')
			return -EINVAL;
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
	} else {
		memcpy(buf, host, n + 1);
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
		return -EINVAL;
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((uint16_t)port);
	*len = sizeof(*sin6);
	return 0;
}

gr_server *gr_server_create(const char *host, int port, gr_server_handler handler, void *arg,
			    const struct gr_server_opts *opts)
{
	if (!handler || port < 0 || port > 65535 || (opts && opts->backlog < 0)) {
		errno = EINVAL;
		return NULL;
	}
	gr_server *s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	int err = parse_host(host, port, &s->addr, &s->addrlen);
	if (err) {
		free(s);
		errno = -err;
		return NULL;
	}
	s->owner = pthread_self();
	s->handler = handler;
	s->arg = arg;
	if (opts)
		s->opts = *opts;
	s->lfd = -1;
	s->port = -1;
	return s;
}

/* socket, options, bind, listen: the listening fd, or -errno. */
static int open_listener(gr_server *s)
{
	int one = 1;
	int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	/* A restarted server must not wait for its old connections' TIME_WAIT. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	if (s->opts.reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (struct sockaddr *)&s->addr, s->addrlen) < 0)
		goto fail;
	if (listen(fd, s->opts.backlog ? s->opts.backlog : SOMAXCONN) < 0)
		goto fail;

	struct sockaddr_storage bound;
	socklen_t len = sizeof(bound);
	if (getsockname(fd, (struct sockaddr *)&bound, &len) < 0)
		goto fail;
	if (fd_identity(fd, &s->lid) < 0)
		goto fail;
	s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						    : ((struct sockaddr_in *)&bound)->sin_port);
	return fd;
fail:;
	int err = errno;
	/* Never seen by the hub (no green call yet): a plain close is right. */
	close(fd);
	return -err;
}

int gr_server_start(gr_server *s)
{
	if (!s)
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	if (s->started || s->stopping)
		return -EALREADY;

	int fd = open_listener(s);
	if (fd < 0) {
		s->port = -1;
		return fd;
	}
	s->lfd = fd;
	struct gr_spawn_opts so = { .name = "gr_server acceptor", .detached = 1 };
	gr_fiber *f = gr_spawn_with(&so, acceptor_main, s);
	if (!f) {
		int err = errno;

		close(fd);
		s->lfd = -1;
		s->port = -1;
		return -err;
	}
	s->acceptor = f; /* valid until it runs; it then records itself */
	s->acceptor_running = true;
	s->started = true;
	return 0;
}

int gr_server_port(const gr_server *s)
{
	if (!s)
		return -EINVAL;
	return s->port < 0 ? -ENOTCONN : s->port;
}

int gr_server_fd(const gr_server *s)
{
	if (!s)
		return -EINVAL;
	return s->lfd < 0 ? -ENOTCONN : s->lfd;
}

long gr_server_conns(const gr_server *s)
{
	if (!s)
		return -EINVAL;
	return (long)s->live;
}

int gr_server_stop(gr_server *s, int flags)
{
	if (!s || (flags & ~GR_SERVER_KILL))
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	if (!s->stopping) {
		s->stopping = true;
		/* Not yet started: its body sees `stopping` and ends at once. */
		if (s->acceptor_running && s->acceptor_began)
			(void)gr_kill(s->acceptor);
	}
	if ((flags & GR_SERVER_KILL) && !s->killing) {
		s->killing = true;
		gr__list_foreach(it, &s->conns) {
			struct conn *c = conn_of(it);

			if (c->fiber && c->fiber != gr_self())
				(void)gr_kill(c->fiber);
			else
				c->cancelled = true;
		}
	}
	return 0;
}

/* Is the caller one of s's own fibers? It would wait for itself. */
static bool called_from_inside(const gr_server *s)
{
	gr_fiber *self = gr_self();

	if (self && self == s->acceptor)
		return true;
	gr__list_foreach(it, &s->conns) {
		if (conn_of(it)->fiber == self)
			return true;
	}
	return false;
}

static int wait_done(gr_server *s, int64_t deadline, bool uncancellable)
{
	if (called_from_inside(s))
		return -EDEADLK;
	while (s->acceptor_running || s->live) {
		struct gr__hub *hub = NULL;
		struct gr__park p = { .what = "gr_server_wait", .uncancellable = uncancellable };
		int r = gr__park_prepare(&hub, &p, deadline);

		if (!r)
			r = gr__park_queue(hub, &p, &s->done_q);
		if (r < 0)
			return r;
	}
	return s->error;
}

int gr_server_wait(gr_server *s, int64_t deadline)
{
	if (!s)
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	return wait_done(s, deadline, false);
}

int gr_server_free(gr_server *s)
{
	if (!s)
		return 0;
	if (!own_thread(s))
		return -EPERM;
	if (called_from_inside(s))
		return -EPERM;
	(void)gr_server_stop(s, GR_SERVER_KILL);
	/* Uncancellable: the fibers still use s, so a killed caller must not
	 * return early and leave it to be freed later. */
	int r = wait_done(s, GR_FOREVER, true);
	if (s->acceptor_running || s->live)
		return r; /* -EDEADLK, or -EPERM inside the hub: s stays valid */
	free(s);
	return 0;
}
