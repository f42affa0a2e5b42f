/* server_main.h — the main() shared by bench/echo_server and bench/http_server:
 * the command line, one gr_server per thread, the "listening on" line and a
 * clean shutdown on SIGINT/SIGTERM. Each program supplies only its connection
 * handler.
 *
 *   --hub NAME     io_uring, epoll or poll (default: greenring's default order);
 *                  an unknown or unusable hub is an error, never a silent fallback
 *   --host ADDR    numeric address (default 127.0.0.1)
 *   --port N       0 = any free port (default 7000)
 *   --threads T    T threads, each with its own hub and its own listening
 *                  socket on the same port (SO_REUSEPORT): the kernel spreads
 *                  connections across them (default 1)
 *   --max-conns N  at most N connections served at once per thread (default: no cap)
 *
 * Shutdown goes through the runtime, never through a signal handler: SIGINT
 * and SIGTERM are blocked in every thread and read from a signalfd by a fiber
 * of the main thread. That fiber closes the write end of a "stop" pipe; a
 * fiber in every thread is reading the read end, sees end-of-file, and stops
 * its thread's server, killing live connections. Every thread then joins its
 * fibers and ends; main exits 0 (1 if a server failed).
 *
 * Header-only like bench_common.h; include it once, from the program's .c.
 */
#ifndef GREENRING_BENCH_SERVER_MAIN_H
#define GREENRING_BENCH_SERVER_MAIN_H

#include "bench_common.h"

#include <greenring.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>

#define SRV_MAX_THREADS 256
#define SRV_STACK_SIZE ((size_t)64 * 1024)

struct srv_opts {
	const char *host;
	int port;
	const char *hub;           /* NULL: the default order */
	int threads;
	size_t max_conns;
};

/* Shared by every thread of the server. */
struct srv_shared {
	const struct srv_opts *opts;
	gr_server_handler handler;
	const char *prog;
	int port;                  /* the bound port, once thread 0 has it */
	int stop_rd, stop_wr;      /* the stop pipe */
	atomic_bool stop_sent;
	atomic_int failed;         /* a thread could not start or its server failed */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int started;               /* threads that reported (ready or failed) */
};

static inline void srv_usage(const char *prog, const char *what)
{
	printf("usage: %s [--hub NAME] [--host ADDR] [--port N] [--threads T] [--max-conns N]\n"
	       "%s\n"
	       "  --hub NAME     io_uring, epoll or poll (default: the first that runs here)\n"
	       "  --host ADDR    numeric address to listen on (default 127.0.0.1)\n"
	       "  --port N       TCP port, 0 for any free one (default 7000)\n"
	       "  --threads T    threads, each with its own hub, sharing the port with\n"
	       "                 SO_REUSEPORT (default 1)\n"
	       "  --max-conns N  connections served at once per thread (default: no cap)\n"
	       "Prints \"listening on HOST:PORT\" when ready; SIGINT/SIGTERM stop it cleanly.\n",
	       prog, what);
}

static inline void srv_parse(int argc, char **argv, struct srv_opts *o, const char *what)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "hub", required_argument, NULL, 'u' },
		{ "threads", required_argument, NULL, 't' },
		{ "max-conns", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	o->host = "127.0.0.1";
	o->port = 7000;
	o->hub = NULL;
	o->threads = 1;
	o->max_conns = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'H':
			o->host = optarg;
			break;
		case 'p':
			o->port = (int)bench_parse_long("port", optarg, 0, 65535);
			break;
		case 'u':
			o->hub = optarg;
			break;
		case 't':
			o->threads = (int)bench_parse_long("threads", optarg, 1, SRV_MAX_THREADS);
			break;
		case 'm':
			o->max_conns = (size_t)bench_parse_long("max-conns", optarg, 0, INT_MAX);
			break;
		case 'h':
			srv_usage(program_invocation_short_name, what);
			exit(0);
		default:
			exit(1);
		}
	}
	if (optind != argc)
		errx(1, "unexpected argument '%s' (try --help)", argv[optind]);
}

/* Select the hub on this thread; a clear message and -errno on failure. */
static inline int srv_use_hub(const struct srv_shared *sh)
{
	int r = gr_hub_use(sh->opts->hub);

	if (r == -ENOENT)
		warnx("unknown hub '%s': this build of greenring has no hub of that name", sh->opts->hub);
	else if (r == -ENOTSUP)
		warnx("hub '%s' cannot run on this machine: %s",
		      sh->opts->hub ? sh->opts->hub : "(default)", gr_hub_why());
	else if (r < 0)
		warnx("gr_hub_use(%s): %s", sh->opts->hub ? sh->opts->hub : "NULL", strerror(-r));
	else if (!gr_hub_name()) {
		warnx("no hub can run on this machine: %s", gr_hub_why());
		r = -ENOTSUP;
	}
	return r;
}

/* Tell every thread to stop, once. Safe from any thread: it only closes an
 * fd no green call ever used. */
static inline void srv_broadcast_stop(struct srv_shared *sh)
{
	if (!atomic_exchange(&sh->stop_sent, true))
		close(sh->stop_wr);
}

/* Read until n bytes arrived, EOF, or an error. A green read parks until
 * the fd is readable on every hub, even one the program made O_NONBLOCK
 * (the signalfd). 1 when n bytes arrived, 0 on EOF, -1 on error (errno
 * set). */
static inline int srv_read_full(int fd, void *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = gr_read(fd, (char *)buf + got, n - got);

		if (r > 0)
			got += (size_t)r;
		else if (r == 0)
			return 0;
		else if (errno != EINTR)
			return -1;
	}
	return 1;
}

/* Write all of buf (gr_send may write less). Switches. true when all is
 * written; false if the connection failed (errno set), or the fiber was
 * killed (ECANCELED). */
static inline bool srv_send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = gr_send(fd, p, len, 0);

		if (w < 0)
			return false;
		p += w;
		len -= (size_t)w;
	}
	return true;
}

/* How long a closing server keeps reading what the client still sends. */
#define SRV_LINGER (1 * GR_SEC)

/* Close first without losing the last reply: stop sending, then read and
 * drop what the client still sends for up to SRV_LINGER, as nginx's
 * lingering_close does. Closing a socket with unread input makes the kernel
 * send a reset, which can destroy the reply before the client reads it.
 * Switches; the server closes fd when the handler returns. */
static inline void srv_linger_close(int fd)
{
	char sink[4096];

	if (shutdown(fd, SHUT_WR) < 0)
		return;
	int64_t old = gr_deadline_set(gr_now() + SRV_LINGER);
	while (gr_recv(fd, sink, sizeof(sink), 0) > 0)
		;
	gr_deadline_set(old);
}

struct srv_thread {
	struct srv_shared *sh;
	pthread_t tid;
	int index;
	int sigfd;                 /* thread 0 only; else -1 */
	gr_server *server;
};

/* Every thread: waits for the stop pipe's EOF, then stops its server. */
static inline void *srv_stopper(void *arg)
{
	struct srv_thread *t = arg;
	char c;

	/* EOF is the signal. ECANCELED means the server ended on its own and
	 * the thread is tearing this fiber down; any other error leaves no way
	 * to hear the signal, so it stops the server too. */
	int r = srv_read_full(t->sh->stop_rd, &c, 1);
	if (r < 0 && errno != ECANCELED)
		warn("thread %d: reading the stop pipe", t->index);
	if (t->server && (r >= 0 || errno != ECANCELED))
		(void)gr_server_stop(t->server, GR_SERVER_KILL);
	return NULL;
}

/* Thread 0: SIGINT/SIGTERM become a stop broadcast. */
static inline void *srv_signal_watch(void *arg)
{
	struct srv_thread *t = arg;
	struct signalfd_siginfo si;

	int r = srv_read_full(t->sigfd, &si, sizeof(si));
	if (r < 0 && errno == ECANCELED)
		return NULL; /* the server ended on its own */
	if (r < 0)
		warn("reading signals");
	srv_broadcast_stop(t->sh);
	return NULL;
}

static inline void srv_report(struct srv_shared *sh, bool ok)
{
	pthread_mutex_lock(&sh->mu);
	if (!ok)
		atomic_store(&sh->failed, 1);
	sh->started++;
	pthread_cond_broadcast(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
}

/* Create and start this thread's server; thread 0 learns the port. */
static inline int srv_start(struct srv_thread *t)
{
	struct srv_shared *sh = t->sh;
	const struct srv_opts *o = sh->opts;
	struct gr_server_opts so = {
		.max_conns = o->max_conns,
		.reuseport = o->threads > 1,
		/* The handlers keep their buffers on the stack (up to ~28 KiB):
		 * explicit, so that GREENRING_STACK_SIZE cannot shrink it below. */
		.stack_size = SRV_STACK_SIZE,
	};

	int r = srv_use_hub(sh);
	if (r < 0)
		return r;
	t->server = gr_server_create(o->host, t->index == 0 ? o->port : sh->port, sh->handler,
				     NULL, &so);
	if (!t->server) {
		r = -errno;
		warnx("--host '%s': %s", o->host,
		      r == -EINVAL ? "not a numeric IPv4 or IPv6 address" : strerror(-r));
		return r;
	}
	r = gr_server_start(t->server);
	if (r < 0) {
		warnx("listening on %s:%d: %s", o->host, t->index == 0 ? o->port : sh->port,
		      strerror(-r));
		(void)gr_server_free(t->server);
		t->server = NULL;
		return r;
	}
	if (t->index == 0)
		sh->port = gr_server_port(t->server);
	return 0;
}

/* Run this thread's server until it is stopped; 0 or -errno. */
static inline int srv_serve(struct srv_thread *t)
{
	gr_fiber *stopper = gr_spawn(srv_stopper, t);
	gr_fiber *watcher = NULL;
	int r;

	if (!stopper) {
		r = -errno;
		warnx("thread %d: spawning the stopper: %s", t->index, strerror(-r));
		(void)gr_server_free(t->server);
		return r;
	}
	if (t->sigfd >= 0 && !(watcher = gr_spawn(srv_signal_watch, t))) {
		r = -errno;
		warnx("spawning the signal watcher: %s", strerror(-r));
		srv_broadcast_stop(t->sh);
	}

	r = gr_server_wait(t->server, GR_FOREVER);
	if (r < 0) {
		warnx("thread %d: server failed: %s", t->index, strerror(-r));
		srv_broadcast_stop(t->sh); /* take the other threads down too */
	}
	/* Both have ended after a normal stop (gr_kill then says ESRCH); if the
	 * server failed first they are still reading, and are killed. Joined
	 * before the server is freed, since the stopper names it. */
	(void)gr_kill(stopper);
	(void)gr_join(stopper, NULL, GR_FOREVER);
	if (watcher) {
		(void)gr_kill(watcher);
		(void)gr_join(watcher, NULL, GR_FOREVER);
	}
	int fr = gr_server_free(t->server);
	if (fr < 0) {
		warnx("thread %d: gr_server_free: %s", t->index, strerror(-fr));
		r = r < 0 ? r : fr;
	}
	t->server = NULL;
	return r;
}

static inline void *srv_worker(void *arg)
{
	struct srv_thread *t = arg;
	int r = srv_start(t);

	srv_report(t->sh, r == 0);
	if (r == 0 && srv_serve(t) < 0)
		atomic_store(&t->sh->failed, 1);
	return NULL;
}

/* The whole program after option parsing; returns the exit status. */
static inline int srv_main(const struct srv_opts *o, gr_server_handler handler)
{
	static struct srv_thread threads[SRV_MAX_THREADS];
	struct srv_shared sh = {
		.opts = o,
		.handler = handler,
		.mu = PTHREAD_MUTEX_INITIALIZER,
		.cv = PTHREAD_COND_INITIALIZER,
	};
	int pfd[2];

	bench_raise_nofile();
	/* Before any thread exists, so that every thread inherits the mask and
	 * only the signalfd ever sees SIGINT/SIGTERM. */
	int sigfd = bench_signalfd();
	if (pipe2(pfd, O_CLOEXEC) != 0)
		err(1, "pipe2");
	sh.stop_rd = pfd[0];
	sh.stop_wr = pfd[1];

	threads[0] = (struct srv_thread){ .sh = &sh, .index = 0, .sigfd = sigfd };
	if (srv_start(&threads[0]) < 0)
		return 1;
	/* Thread 0 holds the port (maybe an ephemeral one); the others join it
	 * with SO_REUSEPORT. */
	int spawned = 1;
	for (; spawned < o->threads; spawned++) {
		struct srv_thread *t = &threads[spawned];

		*t = (struct srv_thread){ .sh = &sh, .index = spawned, .sigfd = -1 };
		int r = pthread_create(&t->tid, NULL, srv_worker, t);
		if (r != 0) {
			warnx("pthread_create: %s", strerror(r));
			atomic_store(&sh.failed, 1);
			break;
		}
	}
	pthread_mutex_lock(&sh.mu);
	while (sh.started < spawned - 1)
		pthread_cond_wait(&sh.cv, &sh.mu);
	pthread_mutex_unlock(&sh.mu);

	if (atomic_load(&sh.failed)) {
		srv_broadcast_stop(&sh);
	} else if (printf("listening on %s:%d\n", o->host, sh.port) < 0 || fflush(stdout) != 0) {
		warn("stdout");
		atomic_store(&sh.failed, 1);
		srv_broadcast_stop(&sh);
	}
	if (srv_serve(&threads[0]) < 0)
		atomic_store(&sh.failed, 1);
	for (int i = 1; i < spawned; i++) {
		int r = pthread_join(threads[i].tid, NULL);

		if (r != 0)
			errx(1, "pthread_join: %s", strerror(r));
	}
	/* The worker threads (and their hubs) are gone: no other hub names these
	 * fds now. gr_close lets this thread's hub forget them. */
	(void)gr_close(sh.stop_rd);
	(void)gr_close(sigfd);
	int r = gr_hub_join(GR_FOREVER);
	if (r < 0)
		warnx("gr_hub_join: %s", strerror(-r));
	return atomic_load(&sh.failed) || r < 0 ? 1 : 0;
}

#endif /* GREENRING_BENCH_SERVER_MAIN_H */
