/* server_main.h — the main() shared by bench/echo_server and bench/http_server:
 * the command line, one gr_server (on as many hubs as --threads says), the
 * "listening on" line and a graceful shutdown on SIGINT/SIGTERM. Each program
 * supplies only its connection handler.
 *
 *   --hub NAME     io_uring, epoll or poll (default: greenring's default order);
 *                  an unknown or unusable hub is an error, never a silent fallback
 *   --host ADDR    numeric address (default 127.0.0.1)
 *   --port N       0 = any free port (default 7000)
 *   --threads T    T hubs, each on its own thread with its own listening
 *                  socket on the same port (gr_server_opts.threads, SO_REUSEPORT:
 *                  the kernel spreads connections across them) (default 1)
 *   --max-conns N  at most N connections served at once per thread (default: no cap)
 *
 * Shutdown goes through the runtime, never through a signal handler: SIGINT
 * and SIGTERM are blocked with gr_signal_block (before the server starts its
 * threads, which inherit the mask) and taken with gr_signal_wait by a fiber
 * of the main thread,
 * which shuts the server down gracefully (gr_server_shutdown: stop accepting,
 * let connections finish for SRV_GRACE, then kill the rest), says on stderr
 * how many finished and how many were killed, and main exits 0 (1 if the
 * server failed).
 *
 * Header-only like bench_common.h; include it once, from the program's .c.
 */
#ifndef GREENRING_BENCH_SERVER_MAIN_H
#define GREENRING_BENCH_SERVER_MAIN_H

#include "bench_common.h"

#include <greenring.h>

#define SRV_MAX_THREADS 256
#define SRV_STACK_SIZE ((size_t)64 * 1024)
/* How long live connections get to finish after SIGTERM. A benchmark's
 * clients are gone by then; tools/bench allows a server 5 s to exit. */
#define SRV_GRACE GR_SEC

struct srv_opts {
	const char *host;
	int port;
	const char *hub;           /* NULL: the default order */
	int threads;
	size_t max_conns;
};

static inline void srv_usage(const char *prog, const char *what)
{
	printf("usage: %s [--hub NAME] [--host ADDR] [--port N] [--threads T] [--max-conns N]\n"
	       "%s\n"
	       "  --hub NAME     io_uring, epoll or poll (default: the first that runs here)\n"
	       "  --host ADDR    numeric address to listen on (default 127.0.0.1)\n"
	       "  --port N       TCP port, 0 for any free one (default 7000)\n"
	       "  --threads T    hubs, each on its own thread with its own listening\n"
	       "                 socket on the port (SO_REUSEPORT) (default 1)\n"
	       "  --max-conns N  connections served at once per thread (default: no cap)\n"
	       "Prints \"listening on HOST:PORT\" when ready; SIGINT/SIGTERM stop it gracefully.\n",
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

/* Select the hub on this thread (the server's threads use the same); a
 * clear message and -errno on failure. */
static inline int srv_use_hub(const struct srv_opts *o)
{
	int r = gr_hub_use(o->hub);

	if (r == -ENOENT)
		warnx("unknown hub '%s': this build of greenring has no hub of that name", o->hub);
	else if (r == -ENOTSUP)
		warnx("hub '%s' cannot run on this machine: %s", o->hub ? o->hub : "(default)",
		      gr_hub_why());
	else if (r < 0)
		warnx("gr_hub_use(%s): %s", o->hub ? o->hub : "NULL", strerror(-r));
	else if (!gr_hub_name()) {
		warnx("no hub can run on this machine: %s", gr_hub_why());
		r = -ENOTSUP;
	}
	return r;
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

struct srv_watch {
	gr_server *server;
	sigset_t signals;          /* SIGINT, SIGTERM: blocked process-wide */
};

/* SIGINT/SIGTERM: shut the server down gracefully. */
static inline void *srv_signal_watch(void *arg)
{
	struct srv_watch *w = arg;
	struct gr_server_shutdown_stats st;

	int r = gr_signal_wait(&w->signals, NULL, GR_FOREVER);
	if (r == -ECANCELED)
		return NULL; /* the server ended on its own */
	if (r < 0)
		warnx("waiting for SIGINT/SIGTERM: %s", strerror(-r));
	r = gr_server_shutdown(w->server, gr_now() + SRV_GRACE, &st);
	if (r < 0 && r != -ECANCELED)
		warnx("shutdown: %s", strerror(-r));
	else
		fprintf(stderr, "shutdown: %zu connections finished, %zu killed\n", st.finished,
			st.killed);
	return NULL;
}

/* The whole program after option parsing; returns the exit status. */
static inline int srv_main(const struct srv_opts *o, gr_server_handler handler)
{
	struct gr_server_opts so = {
		.max_conns = o->max_conns,
		.threads = (unsigned)o->threads,
		/* The handlers keep their buffers on the stack (up to ~28 KiB):
		 * explicit, so that GREENRING_STACK_SIZE cannot shrink it below. */
		.stack_size = SRV_STACK_SIZE,
	};

	struct srv_watch w = { .server = NULL };

	bench_raise_nofile();
	/* Before the server starts its threads, so that every thread inherits
	 * the mask and only the watcher's gr_signal_wait ever takes SIGINT or
	 * SIGTERM (greenring/signal.h). */
	sigemptyset(&w.signals);
	for (int sig = SIGINT; sig; sig = sig == SIGINT ? SIGTERM : 0) {
		/* One the caller ignores stays ignored (a shell starts background
		 * jobs with SIGINT ignored): gr_signal_wait refuses a set with
		 * an ignored signal, which the kernel would discard anyway. */
		struct sigaction sa;

		if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_IGN)
			sigaddset(&w.signals, sig);
	}
	if (gr_signal_block(&w.signals) < 0) {
		warnx("gr_signal_block failed");
		return 1;
	}
	if (srv_use_hub(o) < 0)
		return 1;
	gr_server *s = gr_server_create(o->host, o->port, handler, NULL, &so);
	if (!s) {
		warnx("--host '%s': %s", o->host,
		      errno == EINVAL ? "not a numeric IPv4 or IPv6 address" : strerror(errno));
		return 1;
	}
	int r = gr_server_start(s);
	if (r < 0) {
		warnx("listening on %s:%d: %s", o->host, o->port, strerror(-r));
		(void)gr_server_free(s);
		return 1;
	}
	w.server = s;
	/* Both ignored: nothing to wait for, the server runs until it fails
	 * or is killed. */
	gr_fiber *watcher = NULL;
	if (!sigisemptyset(&w.signals) && !(watcher = gr_spawn(srv_signal_watch, &w))) {
		warn("spawning the signal watcher");
		(void)gr_server_free(s);
		return 1;
	}
	if (printf("listening on %s:%d\n", o->host, gr_server_port(s)) < 0 || fflush(stdout) != 0) {
		warn("stdout");
		(void)gr_server_stop(s, GR_SERVER_KILL);
	}
	int failed = 0;
	r = gr_server_wait(s, GR_FOREVER);
	if (r < 0) {
		warnx("server failed: %s", strerror(-r));
		failed = 1;
	}
	/* After a shutdown the watcher has ended (gr_kill then says ESRCH); if
	 * the server failed first it is still reading, and is killed. Joined
	 * before the server is freed, since it names it. */
	if (watcher) {
		(void)gr_kill(watcher);
		(void)gr_join(watcher, NULL, GR_FOREVER);
	}
	r = gr_server_free(s);
	if (r < 0) {
		warnx("gr_server_free: %s", strerror(-r));
		failed = 1;
	}
	r = gr_hub_join(GR_FOREVER);
	if (r < 0)
		warnx("gr_hub_join: %s", strerror(-r));
	return failed || r < 0 ? 1 : 0;
}

#endif /* GREENRING_BENCH_SERVER_MAIN_H */
