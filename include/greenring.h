/* greenring.h — green threads (fibers) for Linux servers.
 *
 * Each thread has a hub: a fiber that runs the event loop, created the first
 * time the thread uses greenring and started the first time something blocks.
 * A blocking call hands its operation to the hub and switches to it; the hub
 * resumes the caller when the operation completes. No run() call is needed:
 *
 *     gr_spawn_n(handle, arg);    // scheduled, not yet running
 *     gr_sleep(0);                // runs it (and everything else runnable)
 *
 * Conventions (docs/api.md has them all, with the rule for kills):
 *   - Drop-in green calls (gr_read, gr_send, gr_accept, ...) take the POSIX
 *     arguments and return like POSIX: -1 with errno set.
 *   - Every other function returns 0 (or a count) on success and -errno on
 *     failure; constructors return NULL and set errno.
 *   - Time is int64_t nanoseconds on CLOCK_MONOTONIC (gr_now()). Blocking
 *     calls take an absolute deadline: GR_FOREVER for none, 0 to try once.
 *   - "Switches" below means the call may run other fibers before it returns.
 *   - A fiber belongs to the thread that spawned it; calls naming another
 *     thread's fiber fail with EPERM.
 */
#ifndef GREENRING_H
#define GREENRING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "greenring/hub_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A fiber handle. It is valid from gr_spawn until gr_join returns 0 (or,
 * for a detached fiber, until it ends). A handle used after that is caught
 * (EINVAL) only while its stack waits unused in the pool: handles point
 * into fiber stacks, so a stale one may name a newer fiber. Keep handles as
 * you would pthread_t ones. */
typedef struct gr_fiber gr_fiber;

#define GR_FOREVER ((int64_t)-1)
#define GR_MSEC ((int64_t)1000000)
#define GR_SEC ((int64_t)1000000000)

/* CLOCK_MONOTONIC in nanoseconds. */
GR_API int64_t gr_now(void);

/* ------------------------------------------------------------------ hubs */

/* Choose this thread's backend by name ("io_uring", "epoll", "poll"), or the
 * default order (io_uring > epoll > poll) with NULL. Overrides GREENRING_HUB.
 * 0; -EBUSY once this thread has fibers; -ENOENT for an unknown name;
 * -ENOTSUP if that backend cannot run on this machine (gr_hub_why() says why). */
GR_API int gr_hub_use(const char *name);

/* Use a third-party backend on this thread (see greenring/hub_ops.h).
 * 0; -EINVAL for a NULL or incomplete ops table; -EBUSY once fibers exist;
 * -ENOTSUP if its probe() refuses. `ops` must outlive the thread's hub. */
GR_API int gr_hub_use_ops(const struct gr_hub_ops *ops);

/* The name of the backend this thread runs, creating the hub if needed;
 * NULL with errno set if no backend can run (gr_hub_why() says why). */
GR_API const char *gr_hub_name(void);

/* Why the last hub choice on this thread went as it did: one line per better
 * backend refused, e.g. "io_uring: io_uring_setup: Operation not permitted".
 * Empty when the first choice was taken. Also printed to stderr at hub
 * creation when GREENRING_DEBUG=1. Valid until the next choice. */
GR_API const char *gr_hub_why(void);

/* Run the other fibers of this thread until none is left (other than the
 * caller and the thread's main context). Switches.
 * 0; -ETIMEDOUT when `deadline` passed first; -EDEADLK when the remaining
 * fibers can never finish; -ECANCELED if the caller was killed. */
GR_API int gr_hub_join(int64_t deadline);

/* What this thread's hub holds now: for tests, leak checks and monitoring. */
struct gr_hub_stats {
	size_t fibers;          /* spawned fibers not yet ended */
	size_t unreleased;      /* ended joinable fibers nobody joined yet */
	size_t inflight;        /* operations handed to the backend, not completed */
	uint64_t turns;         /* loop turns so far */
	int loop_started;       /* the hub fiber exists (something has blocked) */
	/* Fiber stacks of the default size (greenring/stacks.h): */
	size_t stacks_free;     /* free, resident: the next spawns take these */
	size_t stacks_trimmed;  /* free, memory given back: taken when none is resident */
	size_t stacks_mapped;   /* mapped now: in use, free and trimmed ones */
};

/* Fill *out for this thread's hub. 0; -EINVAL (NULL); -ESRCH (this thread
 * has no hub yet). Does not create a hub. */
GR_API int gr_hub_stats(struct gr_hub_stats *out);

/* ---------------------------------------------------------------- fibers */

/* Options for gr_spawn_with(); zero-initialise, then set what you need. */
struct gr_spawn_opts {
	size_t stack_size;      /* bytes; 0 = default (GREENRING_STACK_SIZE, else 64 KiB) */
	const char *name;       /* copied; shown in deadlock and overflow messages */
	int detached;           /* released when it ends; gr_spawn_with returns it
				   only as a handle valid until it runs */
	int64_t deadline;       /* the fiber's own deadline from its start, as
				   gr_deadline_set() as its first act would set it
				   (it may change it); absolute; 0 (unset) or
				   GR_FOREVER: none */
};

/* Create a joinable fiber that will run fn(arg). It is scheduled, not run:
 * it starts once the caller blocks or yields. Does not switch.
 * NULL with errno: EINVAL (fn is NULL), ENOMEM (no stack), EPERM (called
 * from inside the hub). */
GR_API gr_fiber *gr_spawn(void *(*fn)(void *), void *arg);

/* As gr_spawn, but detached: released when fn returns. Cheaper: no result
 * is kept. 0 or -errno (as gr_spawn). */
GR_API int gr_spawn_n(void (*fn)(void *), void *arg);

/* As gr_spawn, with options. */
GR_API gr_fiber *gr_spawn_with(const struct gr_spawn_opts *opts, void *(*fn)(void *), void *arg);

/* Wait until f has ended, store what fn returned in *result (if result is
 * not NULL; NULL for a fiber killed before it ran) and release f. Switches.
 * With deadline 0 it only tries: 0 if f has ended (even for a killed
 * caller, so a killed parent can always reap its ended children), else
 * -ETIMEDOUT. 0; -ETIMEDOUT (f stays joinable); -EDEADLK (the caller itself,
 * or f can never end, e.g. a join cycle); -ECANCELED (the caller was killed;
 * f stays joinable); -EINVAL (f is NULL, a thread's main context, detached,
 * or another fiber is joining it, or has been woken by its end and not yet
 * run); -EPERM (f belongs to another thread). */
GR_API int gr_join(gr_fiber *f, void **result, int64_t deadline);

/* Release f when it ends; f must not be used afterwards.
 * 0; -EINVAL (NULL, already detached); -EBUSY (a fiber is joining f, or was
 * woken by its end and has not run yet: that join releases it); -EPERM
 * (another thread's fiber). */
GR_API int gr_detach(gr_fiber *f);

/* Kill f (the one rule for kills, docs/api.md "Kills"): f's current
 * blocking call and every later one fail with ECANCELED until f
 * acknowledges the kill with gr_kill_ack(), so code that does not expect a
 * kill unwinds by returning. A fiber that has not started never runs its
 * body. If the kernel finished f's current operation before the kill took
 * hold, that call returns its real result (bytes read are f's) and the next
 * one fails. "Blocking call" means every call documented as switching,
 * whether or not it would have had to wait; pure tries still work: deadline
 * 0 (gr_join of an ended fiber included), the *_try* calls, and gr_close.
 * Does not switch. 0 (also for a fiber killed already); -EINVAL (NULL);
 * -EPERM (another thread's fiber); -ESRCH (f has already ended). */
GR_API int gr_kill(gr_fiber *f);

/* Acknowledge a kill of the calling fiber so it can clean up: its blocking
 * calls work again (send a goodbye, flush a buffer, join its children),
 * bounded by `cleanup_deadline`, which becomes the fiber's deadline if it is
 * sooner (GR_FOREVER: no new bound). A later gr_kill() cancels the cleanup
 * in turn. As gevent's GreenletExit, caught: the kill is delivered once
 * ECANCELED has been seen and acknowledged. Does not switch.
 * 0; -ESRCH (the caller was not killed, or has acknowledged already). */
GR_API int gr_kill_ack(int64_t cleanup_deadline);

/* 1 if the calling fiber has been killed and has not acknowledged it with
 * gr_kill_ack(), else 0. Does not switch. */
GR_API int gr_killed(void);

/* The calling fiber; the thread's main context is a fiber too. */
GR_API gr_fiber *gr_self(void);

/* A per-process unique id (main contexts included), and a name. */
GR_API uint64_t gr_fiber_id(const gr_fiber *f);
GR_API const char *gr_fiber_name(const gr_fiber *f);
GR_API int gr_fiber_set_name(gr_fiber *f, const char *name);   /* 0, -EINVAL */

/* Sleep for ns nanoseconds (rounded up). gr_sleep(0) yields: every other
 * runnable fiber runs once and completions are reaped without blocking.
 * Switches. 0; -ECANCELED (killed); -ETIMEDOUT (the fiber deadline passed
 * first); -EINVAL (ns < 0); -EPERM (inside the hub). */
GR_API int gr_sleep(int64_t ns);

/* Sleep until an absolute time. As gr_sleep. */
GR_API int gr_sleep_until(int64_t deadline);

/* The calling fiber's deadline, eventlet's Timeout: once it passes, every
 * blocking call of this fiber fails with ETIMEDOUT (the drop-in calls with
 * -1/ETIMEDOUT), including one already blocked. GR_FOREVER clears it.
 * Returns the previous deadline, so scopes nest:
 *     int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
 *     ... ; gr_deadline_set(old); */
GR_API int64_t gr_deadline_set(int64_t deadline);
GR_API int64_t gr_deadline_get(void);

/* ------------------------------------------------- drop-in green calls
 * POSIX arguments and results: -1 with errno on failure. They switch while
 * the operation waits (and once after 64 calls in a row that did not: see
 * docs/api.md, "Fairness"). Extra errno values: ECANCELED (killed),
 * ETIMEDOUT (the fiber's deadline, or the fd's for the call's direction,
 * gr_fd_set_deadline, passed), EBADF (gr_close() of the fd while waiting),
 * EPERM (called inside the hub). A send or write on a socket whose peer went
 * away fails with EPIPE and never raises SIGPIPE. On the epoll and poll
 * hubs a stream is tried with RWF_NOWAIT, leaving its flags alone (a pipe,
 * a socket); a file that refuses it (a terminal, a FIFO, an eventfd's
 * write) is made O_NONBLOCK on first use (docs/hubs.md). A write to a
 * stream may return a short count, as a non-blocking write(2) does
 * (gr_write_all and gr_send_all, below, loop until all is out). A
 * regular file never stalls the hub (greenring/file.h). */
GR_API ssize_t gr_read(int fd, void *buf, size_t n);
GR_API ssize_t gr_write(int fd, const void *buf, size_t n);
GR_API ssize_t gr_readv(int fd, const struct iovec *iov, int iovcnt);
GR_API ssize_t gr_writev(int fd, const struct iovec *iov, int iovcnt);
GR_API ssize_t gr_pread(int fd, void *buf, size_t n, off_t off);
GR_API ssize_t gr_pwrite(int fd, const void *buf, size_t n, off_t off);
GR_API ssize_t gr_recv(int fd, void *buf, size_t n, int flags);
GR_API ssize_t gr_send(int fd, const void *buf, size_t n, int flags);
GR_API ssize_t gr_recvmsg(int fd, struct msghdr *msg, int flags);
GR_API ssize_t gr_sendmsg(int fd, const struct msghdr *msg, int flags);

/* Send or write all n bytes, looping over short counts as a blocking
 * send(2) or write(2) on a stream does (gevent's sendall, Go's Write). n
 * when all went out. When an error, a deadline (the fiber's, the fd's write
 * deadline) or a kill stops it: the bytes that went out before, a short
 * count with errno set (as write(2) interrupted by a signal), or -1 with
 * errno if none did; the errno values are gr_send's or gr_write's, EIO
 * for a stream that took nothing without an error, and EBADF when another
 * fiber or thread gr_closed fd between two of its calls (the rest never
 * goes to a file that took the number since). `r != n` is the test for
 * failure. gr_send_all passes MSG_NOSIGNAL. Switches. */
GR_API ssize_t gr_send_all(int fd, const void *buf, size_t n, int flags);
GR_API ssize_t gr_write_all(int fd, const void *buf, size_t n);
GR_API int gr_accept(int fd, struct sockaddr *sa, socklen_t *len);
GR_API int gr_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags);
GR_API int gr_connect(int fd, const struct sockaddr *sa, socklen_t len);

/* Close fd: cancel the operations in flight on it, wake their fibers with
 * EBADF, then close it. The fd number is not reused while anything still
 * names it. 0, or -1 with errno: EBADF (an fd that is not open), EPERM
 * (called inside the hub while operations on fd are in flight). */
GR_API int gr_close(int fd);

/* Wait until fd is ready for `events` (POLLIN, POLLOUT), eventlet's
 * trampoline. An error or hang-up on fd counts as ready. 0 when ready;
 * -1 with errno: ETIMEDOUT (deadline passed; deadline 0 tries once),
 * ECANCELED, EBADF, EINVAL, EPERM. */
GR_API int gr_wait_fd(int fd, short events, int64_t deadline);

/* Deadlines per fd (Go's SetReadDeadline/SetWriteDeadline). */
#include "greenring/fd.h"

/* TCP servers: listen, one fiber per connection (gevent's StreamServer). */
#include "greenring/server.h"

#include "greenring/sync.h"

/* Blocking work on worker threads. */
#include "greenring/tpool.h"

/* May the caller park? Asked without creating a hub (interposers). */
#include "greenring/caller.h"

/* Fibers that wait for signals. */
#include "greenring/signal.h"

/* Child processes. */
#include "greenring/process.h"

/* Spawning later, cancellable. */
#include "greenring/later.h"

/* Callbacks run when a fiber ends. */
#include "greenring/link.h"

/* Files: open, stat, sync, sendfile. */
#include "greenring/file.h"

/* Names: DNS lookups, and connecting to a host by name. */
#include "greenring/resolve.h"

/* Channels and notifiers between threads. */
#include "greenring/chan.h"

/* The memory of fiber stacks: giving it back now. */
#include "greenring/stacks.h"

/* Counters, the run-info dump, the blocking monitor. */
#include "greenring/observe.h"

#ifdef __cplusplus
}
#endif
#endif
