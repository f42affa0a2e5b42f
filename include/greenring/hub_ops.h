/* greenring/hub_ops.h — the backend contract.
 *
 * A hub is the per-thread event loop fiber. What it waits on is a backend: a
 * `struct gr_hub_ops`. greenring ships three (io_uring, epoll, poll); a third
 * party plugs its own in with gr_hub_use_ops(). This header is everything such a
 * backend needs.
 *
 * The core hands a backend operations (`struct gr_op`), one at a time, and asks
 * it to reap completions. Each operation the backend accepts must be completed
 * exactly once, by calling gr_hub_complete() from inside the backend's wait()
 * (or from cancel(), see below). The core never asks "are you epoll"; it reads
 * `caps`:
 *
 *   GR_HUB_CAP_COMPLETION   the backend performs the system calls itself
 *                           (io_uring). It must accept every GR_OP_* kind,
 *                           except that it may refuse GR_OP_WAITID and the
 *                           file kinds (GR_OP_OPENAT, GR_OP_STATX,
 *                           GR_OP_FSYNC, GR_OP_SPLICE) with -EOPNOTSUPP
 *                           from submit(), for instance on a kernel without
 *                           the opcode: the core then polls the pidfd, or
 *                           makes the file call on its thread pool.
 *   (no flag)               readiness backend (epoll, poll). The core tries the
 *                           non-blocking system call first and hands the backend
 *                           only GR_OP_POLL (wait until `fd` is ready for
 *                           `events`) and GR_OP_TIMEOUT (wait until `deadline`).
 *                           It never receives the file kinds: the core makes
 *                           those calls on its thread pool, and so reads and
 *                           writes of regular files that would block.
 *
 * Every operation carries an absolute deadline (`deadline`, CLOCK_MONOTONIC ns,
 * GR_FOREVER for none). When it passes first, the backend completes the
 * operation with -ETIMEDOUT (a GR_OP_TIMEOUT completes with 0: reaching its
 * deadline is its success). Deadlines are rounded up, never down.
 *
 * Memory: `struct gr_op` lives on the stack of the fiber that started it, and so
 * may the buffers it names. The fiber does not resume, and so the memory stays
 * valid, until the backend has completed the operation. A backend must therefore
 * never complete an operation while the kernel may still write into its buffers.
 */
#ifndef GREENRING_HUB_OPS_H
#define GREENRING_HUB_OPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GREENRING_BUILDING) && defined(__GNUC__)
#define GR_API __attribute__((visibility("default")))
#else
#define GR_API
#endif

/* What an operation does. The arguments it reads are listed per kind. */
enum gr_op_kind {
	GR_OP_NOP = 0,   /* nothing; completes with 0 */
	GR_OP_READ,      /* fd, buf, len, off (-1: current position) */
	GR_OP_WRITE,     /* fd, buf, len, off (-1: current position) */
	GR_OP_READV,     /* fd, iov, iovcnt, off */
	GR_OP_WRITEV,    /* fd, iov, iovcnt, off */
	GR_OP_RECV,      /* fd, buf, len, flags */
	GR_OP_SEND,      /* fd, buf, len, flags */
	GR_OP_RECVMSG,   /* fd, msg, flags */
	GR_OP_SENDMSG,   /* fd, msg, flags */
	GR_OP_ACCEPT,    /* fd, addr, addrlen, flags (accept4 flags) */
	GR_OP_CONNECT,   /* fd, addr, addrlen_value */
	GR_OP_POLL,      /* fd, events, flags (GR_POLL_*); completes with the revents mask */
	GR_OP_TIMEOUT,   /* deadline only; completes with 0 when it passes */
	GR_OP_CLOSE,     /* fd */
	/* fd: a pidfd, or -1 for any child of the process; flags: waitid(2)
	 * options (the core passes WEXITED | WNOWAIT); buf: a siginfo_t to
	 * fill. Completes with 0 once a matching child can be waited for, with
	 * *buf filled as waitid(P_PIDFD or P_ALL) fills it, or -errno (-ECHILD:
	 * no such child). Handed only to backends with GR_HUB_CAP_COMPLETION,
	 * and optional even there: one may refuse it in submit() with
	 * -EOPNOTSUPP (io_uring on a kernel without IORING_OP_WAITID, < 6.7),
	 * and the core then polls the pidfd (or waits for any child another
	 * way) instead, as it does on readiness backends. */
	GR_OP_WAITID,
	/* The file kinds (completion backends only; see GR_HUB_CAP_COMPLETION).
	 * Each has the semantics of its system call, FIFOs and devices
	 * included: an open of a FIFO waits for the other end, as open(2). */
	GR_OP_OPENAT,    /* fd (directory fd or AT_FDCWD), path, flags (open flags),
			    mode; completes with the new fd */
	GR_OP_STATX,     /* fd (directory fd), path, flags (AT_* flags), mode (the
			    STATX_* mask), buf (struct statx *, written) */
	GR_OP_FSYNC,     /* fd, flags (GR_FSYNC_DATASYNC: fdatasync) */
	GR_OP_SPLICE,    /* fd_in, off_in (-1: current position) -> fd, len,
			    flags (SPLICE_F_*); one of the two is a pipe;
			    completes with the bytes moved */
	GR_OP_KIND_COUNT
};

struct gr_op;

/* An operation. The core fills the arguments and `deadline`; a backend reads
 * them, may use `backend_data` as it likes between submit() and completion,
 * and writes nothing else. The core keeps its own bookkeeping beside the
 * struct, out of a backend's reach: a pointer received by submit() stays
 * the operation's identity until gr_hub_complete(). */
struct gr_op {
	uint8_t kind;                 /* enum gr_op_kind */
	short events;                 /* GR_OP_POLL: POLLIN, POLLOUT, ... */
	int fd;
	int flags;
	void *buf;
	size_t len;
	off_t off;
	const struct iovec *iov;
	int iovcnt;
	struct msghdr *msg;
	struct sockaddr *addr;
	socklen_t *addrlen;           /* ACCEPT: in/out */
	socklen_t addrlen_value;      /* CONNECT */
	const char *path;             /* OPENAT, STATX */
	unsigned mode;                /* OPENAT: the new file's mode; STATX: the mask */
	int fd_in;                    /* SPLICE: the fd read from */
	off_t off_in;                 /* SPLICE: where in fd_in, -1: its current position */
	int64_t deadline;             /* absolute CLOCK_MONOTONIC ns, or -1 */

	/* The backend's scratch space, untouched by the core while in flight. */
	uintptr_t backend_data[4];
};

/* gr_op.flags of a GR_OP_POLL. GR_POLL_AFTER_EAGAIN: the core saw the fd
 * not ready for these events and wait() has not been called since (a try
 * of the operation said EAGAIN just now, or a recv on a TCP socket came
 * back short: runtime/drain.c), so any readiness since then is a change
 * the backend's watch has been told of, and the next one ends the wait. An
 * edge-triggered backend already watching the fd for these events may park
 * without asking the kernel again. Without the flag (gr_wait_fd), the fd
 * may be ready already and must be checked. */
#define GR_POLL_AFTER_EAGAIN 0x1

/* gr_op.flags of a GR_OP_FSYNC: flush the data only (fdatasync(2)). */
#define GR_FSYNC_DATASYNC 0x1

/* Capability flags in gr_hub_ops.caps. */
#define GR_HUB_CAP_COMPLETION 0x1u
/* The backend has wait_until (below). The core reads that member only when
 * this flag is set: a backend built against a header older than the member
 * sets no such flag, and its struct, which ends before it, is never read
 * past its end. */
#define GR_HUB_CAP_WAIT_UNTIL 0x2u

/* Settings the core passes to init(). Zero means "the backend's default". */
struct gr_hub_config {
	unsigned entries;             /* io_uring: SQ entries (GREENRING_URING_ENTRIES) */
};

/* The contract. Every function is called on the hub's own thread, with two
 * exceptions: wake(), which any thread may call at any time while the
 * backend exists, and fini(state, 1), which the child of a fork() calls on
 * the thread that forked, for the hubs of every thread of the parent.
 * Errors are -errno; the backend never aborts the process on a kernel error. */
struct gr_hub_ops {
	/* Short, unique, lower case: what GREENRING_HUB and gr_hub_use() match. */
	const char *name;
	/* GR_HUB_CAP_* flags. */
	unsigned caps;
	/* Whether this backend can run on this machine, tried for real (a real
	 * ring, a real epoll fd). 0 when usable; otherwise -errno, with a
	 * one-line reason such as "io_uring_setup: Operation not permitted"
	 * written into why[0..whylen). May be called from any thread, any time. */
	int (*probe)(char *why, size_t whylen);
	/* Create the per-thread state. 0 and *state set, or -errno. */
	int (*init)(void **state, const struct gr_hub_config *cfg);
	/* Destroy the state. Called only when nothing is in flight, or in a
	 * child after fork(), where it must release what the child holds and
	 * touch nothing shared with the parent (no cancel, no wait). The
	 * operations that were in flight are not resumed in the child: the
	 * parent's fibers do not exist there (only the code that called fork()
	 * goes on, on a fresh hub made at its first use), so the backend does
	 * nothing for them. */
	void (*fini)(void *state, int after_fork);
	/* Start one operation; its completion arrives later through
	 * gr_hub_complete(). May batch: the operation need only start by the
	 * next wait(). -errno if it cannot be started (it is then not in
	 * flight and must not be completed). */
	int (*submit)(void *state, struct gr_op *op);
	/* Ask an in-flight operation to stop. Its completion still arrives
	 * exactly once: with -ECANCELED, or with its real result if it finished
	 * first. May complete it synchronously (readiness backends do). */
	int (*cancel)(void *state, struct gr_op *op);
	/* Submit what is batched and reap completions, calling
	 * gr_hub_complete() for each. timeout_ns: 0 = do not block, -1 = until
	 * something completes or wake() is called, > 0 = at most that long.
	 * Returns the number of operations completed, or -errno. An early
	 * return (signal, wake) is fine: the core calls again. A wait() that
	 * keeps failing is reported, retried with a growing pause, and after a
	 * few failures the core cancels every operation in flight (with EIO).
	 * -EINTR, -EAGAIN, -ETIME and -EBUSY are taken for early returns, and
	 * so is a 0 from a wait that may block, returned before its timeout
	 * with nothing posted to the hub (so no wake()'s doing); but a run of
	 * them that come back at once, faster than signals could end waits
	 * (1024 in a row, under 50 us each), is a failing wait. (A storm of
	 * signals that fast would look the same: a backend that reports a
	 * signal's EINTR to the core, or as 0, shares that risk; the
	 * built-in backends are exempt from the rule for 0.) */
	int (*wait)(void *state, int64_t timeout_ns);
	/* Thread-safe: make a blocked or the next wait() return promptly.
	 * Repeated calls before that wait() may coalesce. */
	int (*wake)(void *state);
	/* Optional (may be NULL): forget per-fd state before the core closes fd.
	 * No operation on fd is in flight when it is called. */
	void (*fd_forget)(void *state, int fd);
	/* Optional (may be NULL): operations on fd have been waiting long; check
	 * that what the backend watches is still the file behind the number
	 * (the program may have closed it with close(), and the number may name
	 * another file now). Return -EBADF if fd is not open: the core then
	 * cancels its operations with EBADF. Without it the core asks
	 * fcntl(F_GETFD) alone. */
	int (*fd_audit)(void *state, int fd);
	/* Optional (with GR_HUB_CAP_WAIT_UNTIL): wait(), told also when its bound falls:
	 * `deadline`, absolute CLOCK_MONOTONIC ns, set when timeout_ns > 0
	 * (GR_FOREVER otherwise). The core calls it instead of wait(). For a
	 * backend that can keep a timer of its own across waits (io_uring's
	 * IORING_OP_TIMEOUT): the core's bound (the audit of long waits, the
	 * thread pool's deadlines, the stack trim) stays the same for many
	 * waits in a row, and such a backend then waits untimed, with no
	 * clock to read. Waking earlier than the deadline is fine, as for
	 * wait(); later is not. */
	int (*wait_until)(void *state, int64_t timeout_ns, int64_t deadline);
};

/* Complete an operation: set its result (>= 0, or -errno) and make the fiber
 * that started it runnable. Call it from the backend's wait() or cancel(),
 * exactly once per operation accepted by submit(). A backend that must make
 * room (a full submission queue) may also reap, and so complete other
 * operations, inside submit() and cancel(). */
GR_API void gr_hub_complete(struct gr_op *op, int64_t res);

#ifdef __cplusplus
}
#endif
#endif
