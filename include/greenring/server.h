/* greenring/server.h — a TCP server in a few lines, as gevent's StreamServer.
 *
 * A server listens on host:port, accepts in a loop on its own fiber (the
 * acceptor) and runs handler(fd, peer, arg) on a fresh fiber per connection:
 *
 *     static void echo(int fd, const struct sockaddr *peer, void *arg)
 *     {
 *             char buf[4096];
 *             ssize_t n;
 *             while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0)
 *                     if (gr_send(fd, buf, (size_t)n, 0) != n)  // see docs/servers.md
 *                             break;
 *     }
 *
 *     gr_server *s = gr_server_create("127.0.0.1", 7000, echo, NULL, NULL);
 *     gr_server_start(s);               // bound and accepting once fibers run
 *     gr_server_wait(s, GR_FOREVER);    // until gr_server_stop() and every handler returned
 *     gr_server_free(s);
 *
 * Rules the handler can rely on and must follow:
 *   - fd is a connected TCP socket (SOCK_CLOEXEC, TCP_NODELAY unless opts.nagle).
 *     The server closes it when the handler returns: the handler must not close
 *     it (shutdown(2) is fine), or a later connection could be closed by mistake.
 *   - peer (a struct sockaddr_in or sockaddr_in6) is valid until the handler
 *     returns.
 *   - gr_server_stop(s, GR_SERVER_KILL) kills the connection fibers: their
 *     blocking calls fail with ECANCELED and the handler is expected to return.
 *     A handler that ignores ECANCELED and loops keeps gr_server_wait() waiting.
 *
 * A hub per core: with opts.threads = N > 1 the server serves on N hubs, the
 * creating thread's and N - 1 threads it starts, each with its own
 * listening socket on the same port (SO_REUSEPORT: the kernel spreads new
 * connections) and its own acceptor; a connection stays on the hub that
 * accepted it, and its handler runs there. The threads use the creating
 * thread's backend, and end when the server has stopped and their fibers
 * (the handlers' own included) have ended.
 *
 * A server belongs to the thread that created it: the calls below are made
 * from that thread (from any of its fibers), others fail with -EPERM.
 * Handlers on other hubs must not call them; a handler that wants the
 * server stopped tells the owner thread (a gr_notifier, a gr_chan).
 *
 * Graceful shutdown (gr_server_shutdown): stop accepting, let the live
 * connections finish until a deadline, then kill what remains and wait for
 * it; a connection killed so keeps its socket half-open for a while, reading
 * and dropping what its client still sends, so that what it answered is not
 * lost to a reset (opts.linger).
 */
#ifndef GREENRING_SERVER_H
#define GREENRING_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gr_server gr_server;

/* Runs on the connection's own fiber. See the rules above. */
typedef void (*gr_server_handler)(int fd, const struct sockaddr *peer, void *arg);

/* Options for gr_server_create(); zero-initialise, then set what you need.
 * All-zero (or a NULL pointer) is: backlog SOMAXCONN, no connection cap, no
 * SO_REUSEPORT, TCP_NODELAY on accepted sockets, default fiber stacks. */
struct gr_server_opts {
	int backlog;            /* listen(2) backlog; 0 = SOMAXCONN */
	size_t max_conns;       /* at most this many handlers at once per hub
				   (per thread); 0 = no cap. At the cap the
				   acceptor stops accepting (the kernel's
				   backlog holds new clients) until a handler
				   returns. */
	int reuseport;          /* nonzero: SO_REUSEPORT, so several servers (one
				   per thread or process) can share the port */
	int nagle;              /* nonzero: leave Nagle's algorithm on. By default
				   TCP_NODELAY is set: a server answering in one
				   write wants it sent now, not after the peer's
				   delayed ACK (~40 ms) */
	size_t stack_size;      /* connection fibers' stack; 0 = the default */
	unsigned threads;       /* hubs serving: this thread's and threads - 1
				   more, each on a thread of its own; 0 or 1 =
				   this thread only; at most
				   GR_SERVER_THREADS_MAX. Implies reuseport. */
	int64_t linger;         /* ns a connection killed by gr_server_shutdown
				   keeps reading (and dropping) what its client
				   sends before it is closed; 0 = 1 s, < 0 = none */
};

#define GR_SERVER_THREADS_MAX 1024u

/* What gr_server_shutdown() reports. */
struct gr_server_shutdown_stats {
	size_t finished;        /* connections live at the stop that ended on
				   their own before the deadline */
	size_t killed;          /* connections killed at the deadline */
};

/* Flags for gr_server_stop(). */
#define GR_SERVER_KILL 0x1      /* also gr_kill() every live connection fiber */

/* A server for host:port that will run handler(fd, peer, arg) per
 * connection. Nothing is bound yet: gr_server_start() does it. host is a
 * numeric IPv4 or IPv6 address ("127.0.0.1", "::1", "[::1]"); NULL or "" is
 * 0.0.0.0. Names are refused rather than resolved, since resolving would block
 * the thread. port 0 asks the kernel for a free port (see gr_server_port).
 * opts may be NULL; it is copied. Does not switch.
 * NULL with errno: EINVAL (handler NULL, host not a numeric address, port not
 * in 0..65535, backlog < 0, threads > GR_SERVER_THREADS_MAX), ENOMEM. */
GR_API gr_server *gr_server_create(const char *host, int port, gr_server_handler handler,
				   void *arg, const struct gr_server_opts *opts);

/* Bind, listen and spawn the acceptor fiber. Listening when it returns
 * (clients can connect; the backlog holds them); accepting starts when the
 * caller next blocks or yields. With threads > 1, every listening socket is
 * bound first, then the threads are started, each accepting on its own hub
 * as soon as it has made it: the call blocks the caller's thread (without
 * switching) until each has. Does not switch. A server starts once; after
 * a failed start nothing is left running and it may be started again.
 * 0; -EALREADY (already started, or stopped); -EPERM (another thread's server, or called
 * inside the hub); -EADDRINUSE, -EACCES, -EADDRNOTAVAIL, -EMFILE, ... from
 * socket/bind/listen; -ENOMEM (no fiber); -EAGAIN (no thread); a thread's
 * hub creation error (-ENOTSUP, -EMFILE, ...). */
GR_API int gr_server_start(gr_server *s);

/* The bound port (useful after port 0), or -ENOTCONN before a successful
 * gr_server_start(), -EINVAL for NULL. Valid after gr_server_stop() too. */
GR_API int gr_server_port(const gr_server *s);

/* The listening socket (with threads, the creating thread's one), -ENOTCONN
 * when there is none (not started, or the acceptor has ended and closed
 * it), -EINVAL for NULL. For getsockopt and the like: do not close it or
 * accept on it. */
GR_API int gr_server_fd(const gr_server *s);

/* Live connection handlers (started or about to start), on every hub of
 * the server (a snapshot: other threads change it), -EINVAL for NULL. */
GR_API long gr_server_conns(const gr_server *s);

/* Stop accepting: the acceptor is killed, and closes the listening socket
 * as it ends (the port is free once gr_server_wait() returns). With
 * GR_SERVER_KILL, every connection fiber is killed too (one that has not
 * started yet never runs its handler); otherwise the handlers finish on their
 * own. Idempotent: a second call may add GR_SERVER_KILL. A server that never
 * started is simply marked stopped (it cannot be started afterwards). Does not
 * switch. Callable from a handler, which is then not killed itself (it may
 * still answer its client).
 * 0; -EINVAL (NULL, unknown flag); -EPERM (another thread's server). */
GR_API int gr_server_stop(gr_server *s, int flags);

/* Wait until the acceptor has ended (after gr_server_stop(), or a fatal
 * accept error) and every connection handler has returned. Switches.
 * 0 at once for a server never started.
 * 0, or the acceptor's fatal error (-errno, e.g. -ENOTSOCK) when it ended on
 * its own; -ETIMEDOUT (deadline passed); -ECANCELED (the caller was killed);
 * -EDEADLK (the caller is one of the server's own handlers, which would wait
 * for itself); -EPERM (another thread's server, or inside the hub); -EINVAL
 * (NULL). The server keeps running after -ETIMEDOUT and -ECANCELED. With
 * threads, it also waits for the server's threads to end. */
GR_API int gr_server_wait(gr_server *s, int64_t deadline);

/* Graceful shutdown: stop accepting (gr_server_stop(s, 0)), wait until
 * `deadline` for the live connections to end on their own, then kill those
 * that remain (their handlers' calls fail with ECANCELED; a killed
 * connection lingers, see opts.linger) and wait for them, uncancellably.
 * Every shard (thread) takes part. Switches. When it returns, the acceptors
 * and every handler have ended, and *stats (if not NULL) says how many
 * connections finished and how many were killed.
 * 0, or the first acceptor's fatal error (as gr_server_wait); -ECANCELED
 * (the caller was killed during the grace period: what remained was killed
 * at once, and the rest is as for 0); -EDEADLK (called from one of the
 * server's own handlers; nothing waited for); -EPERM (another thread's
 * server, or inside the hub); -EINVAL (NULL). */
GR_API int gr_server_shutdown(gr_server *s, int64_t deadline,
			      struct gr_server_shutdown_stats *stats);

/* Stop (with GR_SERVER_KILL), wait for everything to end — even if the
 * caller is killed meanwhile — and release s. Switches. NULL is a no-op.
 * 0; -EPERM (another thread's server, inside the hub, or from one of its own
 * handlers) or -EDEADLK (a handler can never return): then s is not freed. */
GR_API int gr_server_free(gr_server *s);

#ifdef __cplusplus
}
#endif
#endif
