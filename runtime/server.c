/* server.c — gr_server: listen, accept on a fiber, one fiber per
 * connection, on one hub or on several (a hub per thread), with graceful
 * shutdown.
 *
 * Shards. A server is `threads` shards, each a hub of its own with its own
 * listening socket on the same port (SO_REUSEPORT: the kernel spreads new
 * connections), its own acceptor and its own connection fibers; a
 * connection stays on the hub that accepted it. Shard 0 runs on the thread
 * that created the server (the owner), the others on threads the server
 * starts. Everything of a shard (its connections, counts, wait queues) is
 * touched by its own thread only; what crosses threads is small:
 *   - commands, owner to shard: bits in `cmd` (atomic), then a fire of the
 *     shard's notifier, on which its thread's main context waits;
 *   - the end, shard to owner: the shard thread counts itself done and
 *     fires the server's notifier, on which the owner waits
 *     (gr_server_wait, shutdown, free); shard 0 fires it too, locally;
 *   - gr_server_conns: each shard publishes its live count (atomic).
 * The owner joins the shard threads once they are done, so that when a wait
 * returns their hubs (and fds) are gone too. The API is the owner's only
 * (EPERM elsewhere): the server object is never shared, its shards are.
 *
 * Built on the public API (gr_accept4, gr_spawn_with, gr_kill, gr_close,
 * notifiers), so it behaves the same on every hub. The one internal thing it
 * uses is the parking gate's wait queue (gr__park_queue/gr__unpark, wait.c)
 * for the acceptor waiting for a connection slot, and the gate's
 * uncancellable waits: gr_server_free() must not return early, even when
 * its caller is killed, while fibers still use the server.
 *
 * Lifetimes, per shard:
 *   - The acceptor and the connection fibers are detached. Each records its
 *     own handle (gr_self()) once its body runs and clears it before it ends,
 *     so a handle the shard holds always names a live fiber. A fiber that has
 *     not started yet is never gr_kill()ed: a fiber killed before it runs
 *     never runs its body, and the body is what closes its fd and does the
 *     books. Such a fiber is flagged instead and ends at once when it starts.
 *   - The acceptor closes the listening socket as it ends; a connection fiber
 *     closes its socket after the handler returns. Both with gr_close(), which
 *     is uncancellable, so a killed fiber still cleans up, and both only if
 *     the number still names the socket the server opened (fd_identity).
 *   - Nothing touches the shard after its end is signalled, nor the server
 *     after the last shard's: that is when gr_server_free() may release it.
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
	struct gr__link link;       /* on the shard's conns */
	struct shard *shard;
	gr_fiber *fiber;            /* set while the handler runs */
	int fd;
	struct fd_identity id;      /* of the accepted socket */
	bool cancelled;             /* killed before the fiber started */
	struct sockaddr_storage peer;
};

/* Commands to a shard (struct shard.cmd). */
#define CMD_STOP 0x1u           /* stop accepting */
#define CMD_KILL 0x2u           /* kill the connections */
#define CMD_LINGER 0x4u         /* ... and let them close lingering (shutdown) */

struct shard {
	gr_server *s;
	unsigned index;
	pthread_t thread;           /* index > 0 */
	bool thread_started, thread_joined;
	int lfd;                    /* listening socket; -1 when none */
	struct fd_identity lid;
	int error;                  /* the acceptor's fatal error (-errno), else 0 */
	gr_fiber *acceptor;         /* valid while acceptor_running */
	bool acceptor_running;      /* spawned and not yet ended */
	bool acceptor_began;        /* its body has run (so it may be killed) */
	bool stopping, killing, lingering;
	bool ended;                 /* acceptor and connections are all gone */
	size_t live;                /* connection fibers spawned and not ended */
	size_t live_at_stop;        /* live when it stopped accepting */
	size_t live_at_kill;        /* live when its connections were killed */
	_Atomic size_t live_shown;  /* `live`, for gr_server_conns on the owner */
	struct gr__list conns;
	struct gr__waitq slot_q;    /* the acceptor, waiting under max_conns */
	gr_notifier control;        /* index > 0: the owner's commands, the end */
	_Atomic unsigned cmd;       /* CMD_* sent by the owner */
};

struct gr_server {
	pthread_t owner;
	gr_server_handler handler;
	void *arg;
	struct gr_server_opts opts;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int port;                   /* bound port; -1 before start */
	bool started;
	bool stopping, killing;
	unsigned nshards;
	struct shard *shards;       /* [0] runs on the owner's thread */
	const struct gr_hub_ops *ops; /* the owner's backend, for every shard */
	gr_notifier done;           /* a shard ended */
	_Atomic unsigned shards_ended;
	/* Worker threads report whether their hub could be made. */
	pthread_mutex_t boot_lock;
	pthread_cond_t boot_cond;
	unsigned booted;
	int boot_error;
};

/* How long a connection killed by gr_server_shutdown keeps reading what its
 * client still sends, by default (opts.linger 0). */
#define LINGER_DEFAULT GR_SEC

static bool own_thread(const gr_server *s)
{
	return pthread_equal(s->owner, pthread_self()) != 0;
}

static bool shard_idle(const struct shard *sh)
{
	return !sh->acceptor_running && sh->live == 0;
}

/* The shard's acceptor and connections may all have ended: say so, once,
 * to whoever waits (the owner's wait through the server's notifier; a
 * worker's main context through the shard's). */
static void notify_done(struct shard *sh)
{
	if (!shard_idle(sh) || sh->ended)
		return;
	sh->ended = true;
	if (sh->index == 0)
		(void)gr_notifier_fire(&sh->s->done);
	else
		(void)gr_notifier_fire(&sh->control);
}

/* ------------------------------------------------------------ connections */

static struct conn *conn_of(struct gr__link *l)
{
	return gr__container(l, struct conn, link);
}

static void set_live(struct shard *sh, size_t live)
{
	sh->live = live;
	atomic_store_explicit(&sh->live_shown, live, memory_order_relaxed);
}

/* A connection killed by a graceful shutdown: what the handler sent is
 * still on its way. Closing with unread input would make the kernel reset
 * the connection and drop it, so stop sending (FIN after the data) and read
 * and drop what the client sends until it closes or the linger ends, as
 * nginx's lingering_close. */
static void linger_close(const struct shard *sh, int fd)
{
	int64_t linger = sh->s->opts.linger ? sh->s->opts.linger : LINGER_DEFAULT;
	char sink[1024];

	if (linger < 0 || gr_kill_ack(gr_now() + linger) != 0 || shutdown(fd, SHUT_WR) < 0)
		return;
	while (gr_recv(fd, sink, sizeof(sink), 0) > 0)
		;
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct shard *sh = c->shard;

	if (!c->cancelled) {
		c->fiber = gr_self();
		sh->s->handler(c->fd, (const struct sockaddr *)&c->peer, sh->s->arg);
		c->fiber = NULL;
		if (sh->lingering && gr_killed())
			linger_close(sh, c->fd);
	}
	close_owned(c->fd, &c->id);
	gr__list_remove(&sh->conns, &c->link);
	set_live(sh, sh->live - 1);
	if (!gr__waitq_empty(&sh->slot_q))
		gr__unpark(gr__waitq_first(&sh->slot_q), 0);
	notify_done(sh);
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
static int conn_spawn(struct shard *sh, int fd, const struct sockaddr_storage *peer)
{
	struct conn *c = malloc(sizeof(*c));

	if (!c) {
		(void)gr_close(fd);
		return -ENOMEM;
	}
	c->shard = sh;
	c->fiber = NULL;
	c->fd = fd;
	c->cancelled = false;
	c->peer = *peer;

	char name[GR__NAME_MAX];
	struct gr_spawn_opts so = { .stack_size = sh->s->opts.stack_size, .detached = 1, .name = name };
	int err = fd_identity(fd, &c->id);
	peer_name(peer, name, sizeof(name));
	if (err || !gr_spawn_with(&so, conn_main, c)) {
		err = err ? err : -errno;
		free(c);
		(void)gr_close(fd);
		return err;
	}
	gr__list_push_front(&sh->conns, &c->link);
	set_live(sh, sh->live + 1);
	return 0;
}

/* ------------------------------------------------------------ the acceptor */

/* Wait for a connection slot under opts.max_conns. 0 when one is free;
 * -ECANCELED once the acceptor is being stopped. */
static int wait_slot(struct shard *sh)
{
	while (sh->s->opts.max_conns && sh->live >= sh->s->opts.max_conns) {
		struct gr__hub *hub = NULL;
		struct gr__park p = { .what = "gr_server (at max_conns)" };
		int r = gr__park_prepare(&hub, &p, GR_FOREVER);

		if (!r)
			r = gr__park_queue(hub, &p, &sh->slot_q);
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
	struct shard *sh = arg;
	int64_t backoff = 0;

	sh->acceptor_began = true;
	sh->acceptor = gr_self();
	while (!sh->stopping) {
		if (wait_slot(sh) < 0)
			break;

		struct sockaddr_storage peer;
		socklen_t len = sizeof(peer);
		int fd = gr_accept4(sh->lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
		int err = fd < 0 ? errno : 0;

		if (fd >= 0 && sh->stopping) {
			/* The kernel completed the accept before the kill took
			 * hold: we are not serving any more. */
			(void)gr_close(fd);
			break;
		}
		if (fd >= 0) {
			if (!sh->s->opts.nagle) {
				int one = 1;

				/* Ignored on failure: it can only fail for a socket
				 * the peer already reset, and the handler's first
				 * call reports that better. */
				(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			}
			err = -conn_spawn(sh, fd, &peer);
			if (!err) {
				backoff = 0;
				continue;
			}
		}
		int what = err == ECANCELED ? -1 : accept_failure(err);
		if (what < 0) {
			if (err != ECANCELED)
				sh->error = -err;
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
	close_owned(sh->lfd, &sh->lid);
	sh->lfd = -1;
	sh->acceptor = NULL;
	sh->acceptor_running = false;
	notify_done(sh);
	return NULL;
}

static int acceptor_spawn(struct shard *sh)
{
	struct gr_spawn_opts so = { .name = "gr_server acceptor", .detached = 1 };
	gr_fiber *f = gr_spawn_with(&so, acceptor_main, sh);

	if (!f)
		return -errno;
	sh->acceptor = f; /* valid until it runs; it then records itself */
	sh->acceptor_running = true;
	return 0;
}

/* ------------------------------------------------------------ a shard's commands */

/* On the shard's own thread. */
static void shard_stop(struct shard *sh)
{
	if (sh->stopping)
		return;
	sh->stopping = true;
	sh->live_at_stop = sh->live;
	/* Not yet started: its body sees `stopping` and ends at once. */
	if (sh->acceptor_running && sh->acceptor_began)
		(void)gr_kill(sh->acceptor);
}

static void shard_kill(struct shard *sh, bool linger)
{
	if (sh->killing)
		return;
	sh->killing = true;
	sh->lingering = linger;
	sh->live_at_kill = sh->live;
	gr__list_foreach(it, &sh->conns) {
		struct conn *c = conn_of(it);

		if (c->fiber && c->fiber != gr_self())
			(void)gr_kill(c->fiber);
		else if (!c->fiber)
			c->cancelled = true;
	}
}

static void shard_obey(struct shard *sh, unsigned cmd)
{
	if (cmd & (CMD_STOP | CMD_KILL))
		shard_stop(sh);
	if (cmd & CMD_KILL)
		shard_kill(sh, cmd & CMD_LINGER);
}

/* Owner: command every shard (shard 0 at once, the others by notifier). */
static void command(gr_server *s, unsigned cmd)
{
	shard_obey(&s->shards[0], cmd);
	for (unsigned i = 1; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];

		if (!sh->thread_started)
			continue;
		atomic_fetch_or_explicit(&sh->cmd, cmd, memory_order_release);
		(void)gr_notifier_fire(&sh->control);
	}
}

/* ------------------------------------------------------------ shard threads */

static void boot_report(gr_server *s, int err)
{
	pthread_mutex_lock(&s->boot_lock);
	s->booted++;
	if (err && !s->boot_error)
		s->boot_error = err;
	pthread_cond_signal(&s->boot_cond);
	pthread_mutex_unlock(&s->boot_lock);
}

static void *shard_thread(void *arg)
{
	struct shard *sh = arg;
	gr_server *s = sh->s;

	/* The owner's backend: a server is the same on every one of its hubs. */
	int err = gr_hub_use_ops(s->ops);
	if (!err && !gr_hub_name())
		err = -ENOTSUP;
	if (!err)
		err = acceptor_spawn(sh);
	if (err) {
		close(sh->lfd); /* no green call ever saw it */
		sh->lfd = -1;
		sh->ended = true;
	}
	boot_report(s, err);
	/* The main context obeys the owner until the shard has ended. */
	while (!sh->ended) {
		shard_obey(sh, atomic_load_explicit(&sh->cmd, memory_order_acquire));
		if (sh->ended)
			break;
		(void)gr__notifier_wait(&sh->control, GR_FOREVER, true);
	}
	/* Fibers its handlers started run on this hub: the thread ends with
	 * them (then its hub goes, at the thread's exit). */
	if (!err)
		(void)gr_hub_join(GR_FOREVER);
	atomic_fetch_add_explicit(&s->shards_ended, 1, memory_order_release);
	(void)gr_notifier_fire(&s->done);
	return NULL;
}

/* Owner: join the threads of shards that have ended (each once). Their
 * hubs are being torn down: a short wait in pthread_join. */
static void join_ended(gr_server *s)
{
	for (unsigned i = 1; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];

		if (sh->thread_started && !sh->thread_joined) {
			pthread_join(sh->thread, NULL);
			sh->thread_joined = true;
		}
	}
}

/* ------------------------------------------------------------ the API */

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
	if (!handler || port < 0 || port > 65535 ||
	    (opts && (opts->backlog < 0 || opts->threads > GR_SERVER_THREADS_MAX))) {
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
	if (opts)
		s->opts = *opts;
	s->nshards = s->opts.threads ? s->opts.threads : 1;
	s->shards = calloc(s->nshards, sizeof(*s->shards));
	if (!s->shards) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	for (unsigned i = 0; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];

		sh->s = s;
		sh->index = i;
		sh->lfd = -1;
		(void)gr_notifier_init(&sh->control); /* cannot fail for a valid pointer */
	}
	(void)gr_notifier_init(&s->done);
	pthread_mutex_init(&s->boot_lock, NULL);
	pthread_cond_init(&s->boot_cond, NULL);
	s->owner = pthread_self();
	s->handler = handler;
	s->arg = arg;
	s->port = -1;
	return s;
}

/* socket, options, bind, listen for one shard at port: the listening fd,
 * or -errno. The first learns the port (maybe an ephemeral one). */
static int open_listener(gr_server *s, struct shard *sh, int port)
{
	int one = 1;
	struct sockaddr_storage addr = s->addr;
	int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (addr.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)port);
	else
		((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)port);
	/* A restarted server must not wait for its old connections' TIME_WAIT. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	/* Several shards share the port: one listening socket each. */
	if ((s->opts.reuseport || s->nshards > 1) &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (struct sockaddr *)&addr, s->addrlen) < 0)
		goto fail;
	if (listen(fd, s->opts.backlog ? s->opts.backlog : SOMAXCONN) < 0)
		goto fail;

	struct sockaddr_storage bound;
	socklen_t len = sizeof(bound);
	if (getsockname(fd, (struct sockaddr *)&bound, &len) < 0)
		goto fail;
	if (fd_identity(fd, &sh->lid) < 0)
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

/* Owner: stop the shard threads started so far and join them, and close
 * the listeners nobody took; the server can be started again. */
static void unstart(gr_server *s)
{
	for (unsigned i = 1; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];

		if (sh->thread_started) {
			atomic_fetch_or_explicit(&sh->cmd, CMD_STOP | CMD_KILL, memory_order_release);
			(void)gr_notifier_fire(&sh->control);
		}
	}
	join_ended(s); /* each stops on its own: it served nothing yet, or little */
	for (unsigned i = 0; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];

		if (sh->lfd >= 0 && !sh->thread_started)
			close(sh->lfd);
		sh->lfd = -1;
		sh->thread_started = sh->thread_joined = false;
		sh->ended = sh->stopping = sh->killing = sh->lingering = false;
		sh->error = 0;
		atomic_store(&sh->cmd, 0);
		(void)gr_notifier_wait(&sh->control, 0); /* a fire left pending */
	}
	atomic_store(&s->shards_ended, 0);
	s->booted = 0;
	s->boot_error = 0;
	s->port = -1;
}

/* Start the shard threads, one by one, each once it has its hub (the
 * owner blocks for that, briefly). 0 or -errno. */
static int start_threads(gr_server *s)
{
	for (unsigned i = 1; i < s->nshards; i++) {
		struct shard *sh = &s->shards[i];
		int r = pthread_create(&sh->thread, NULL, shard_thread, sh);

		if (r)
			return -r;
		sh->thread_started = true;
		pthread_mutex_lock(&s->boot_lock);
		while (s->booted < i)
			pthread_cond_wait(&s->boot_cond, &s->boot_lock);
		r = s->boot_error;
		pthread_mutex_unlock(&s->boot_lock);
		if (r)
			return r;
	}
	return 0;
}

int gr_server_start(gr_server *s)
{
	if (!s)
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	if (s->started || s->stopping)
		return -EALREADY;

	/* The owner's hub (made now if need be), and its backend for every
	 * shard; EPERM inside the hub, as any call that spawns. */
	struct gr__hub *hub = NULL;
	int err = gr__park_hub(&hub);
	if (err)
		return err;
	s->ops = hub->ops;
	int port = ntohs(s->addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&s->addr)->sin6_port
						       : ((struct sockaddr_in *)&s->addr)->sin_port);
	for (unsigned i = 0; i < s->nshards && !err; i++) {
		int fd = open_listener(s, &s->shards[i], i == 0 ? port : s->port);

		if (fd < 0)
			err = fd;
		else
			s->shards[i].lfd = fd;
	}
	if (!err)
		err = start_threads(s);
	if (!err)
		err = acceptor_spawn(&s->shards[0]);
	if (err) {
		unstart(s);
		return err;
	}
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
	return s->shards[0].lfd < 0 ? -ENOTCONN : s->shards[0].lfd;
}

long gr_server_conns(const gr_server *s)
{
	if (!s)
		return -EINVAL;
	size_t n = 0;
	for (unsigned i = 0; i < s->nshards; i++)
		n += atomic_load_explicit(&s->shards[i].live_shown, memory_order_relaxed);
	return (long)n;
}

int gr_server_stop(gr_server *s, int flags)
{
	if (!s || (flags & ~GR_SERVER_KILL))
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	s->stopping = true;
	if ((flags & GR_SERVER_KILL) && !s->killing) {
		s->killing = true;
		command(s, CMD_STOP | CMD_KILL);
	} else {
		command(s, CMD_STOP);
	}
	return 0;
}

/* Is the caller one of s's own fibers (of shard 0: others are on other
 * threads, and refused as such)? It would wait for itself. */
static bool called_from_inside(const gr_server *s)
{
	const struct shard *sh = &s->shards[0];
	gr_fiber *self = gr_self();

	if (self && self == sh->acceptor)
		return true;
	gr__list_foreach(it, &sh->conns) {
		if (conn_of(it)->fiber == self)
			return true;
	}
	return false;
}

static bool all_ended(gr_server *s)
{
	unsigned threads = 0;

	for (unsigned i = 1; i < s->nshards; i++)
		threads += s->shards[i].thread_started;
	return shard_idle(&s->shards[0]) &&
	       atomic_load_explicit(&s->shards_ended, memory_order_acquire) == threads;
}

/* The first shard's fatal accept error, else 0. */
static int first_error(const gr_server *s)
{
	for (unsigned i = 0; i < s->nshards; i++)
		if (s->shards[i].error)
			return s->shards[i].error;
	return 0;
}

static int wait_done(gr_server *s, int64_t deadline, bool uncancellable)
{
	if (called_from_inside(s))
		return -EDEADLK;
	while (!all_ended(s)) {
		int r = gr__notifier_wait(&s->done, deadline, uncancellable);

		if (r < 0)
			return r;
	}
	/* A fire wakes one waiter: pass it on to the next fiber of this
	 * thread waiting here, if any (else it stays pending, harmlessly). */
	(void)gr_notifier_fire(&s->done);
	join_ended(s);
	return first_error(s);
}

int gr_server_wait(gr_server *s, int64_t deadline)
{
	if (!s)
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	return wait_done(s, deadline, false);
}

int gr_server_shutdown(gr_server *s, int64_t deadline, struct gr_server_shutdown_stats *stats)
{
	if (!s)
		return -EINVAL;
	if (!own_thread(s))
		return -EPERM;
	if (called_from_inside(s))
		return -EDEADLK;
	(void)gr_server_stop(s, 0);
	int r = wait_done(s, deadline, false);
	if (r == -ETIMEDOUT || r == -ECANCELED) {
		/* What remains is killed; what it answered still reaches the
		 * client (linger_close). Then the wait cannot be cut short:
		 * the caller may free the server next. */
		bool killed_caller = r == -ECANCELED;

		if (!s->killing) {
			s->killing = true;
			command(s, CMD_STOP | CMD_KILL | CMD_LINGER);
		}
		r = wait_done(s, GR_FOREVER, true);
		if (r >= 0 && killed_caller)
			r = -ECANCELED;
	}
	if (r == -EDEADLK || r == -EPERM)
		return r; /* could not wait: nothing to report */
	if (stats) {
		memset(stats, 0, sizeof(*stats));
		for (unsigned i = 0; i < s->nshards; i++) {
			const struct shard *sh = &s->shards[i];
			size_t killed = sh->killing ? sh->live_at_kill : 0;

			stats->killed += killed;
			stats->finished += sh->live_at_stop - killed;
		}
	}
	return r;
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
	if (!all_ended(s))
		return r; /* -EDEADLK, or -EPERM inside the hub: s stays valid */
	for (unsigned i = 0; i < s->nshards; i++)
		(void)gr_notifier_destroy(&s->shards[i].control);
	(void)gr_notifier_destroy(&s->done);
	pthread_mutex_destroy(&s->boot_lock);
	pthread_cond_destroy(&s->boot_cond);
	free(s->shards);
	free(s);
	return 0;
}
