/* io.c — the drop-in green calls: POSIX arguments, -1 and errno.
 *
 * Every call builds one operation on the caller's stack and goes through
 * gr__run_op(), which parks through the gate (wait.c): on a completion
 * backend (io_uring) the backend performs the system call; on a readiness
 * backend (epoll, poll) it tries the non-blocking system call first and
 * parks on GR_OP_POLL only on EAGAIN, then tries again (gr__run_stream). One
 * path for every operation, not one per syscall. A read or write of a
 * regular file on a readiness hub cannot wait for readiness (a file is
 * always "ready", and blocks on the disk instead): file.c serves it, from
 * the page cache when it can, else on the thread pool.
 *
 * errno is set only as the last act before returning to the caller
 * (posix_result), because another fiber may run (and fail) between a
 * failure and the caller's read of errno.
 *
 * What run_op adds to every call, on every hub:
 *   - Per-fd deadlines (gr_fd_set_deadline, fd.c): the call is bounded by
 *     the sooner of its own deadline, the fiber's and the fd's for its
 *     direction; the park record keeps which directions, so a deadline
 *     moved while the call waits reaches it (wait.c, retime).
 *   - No SIGPIPE: a write on a socket is made a send with MSG_NOSIGNAL, so a
 *     peer that went away is EPIPE for the call, not a signal that kills the
 *     process (io_uring's IORING_OP_WRITE raises SIGPIPE as write(2) does;
 *     its SEND does not). Whether fd is a socket is remembered per number
 *     (fd.c); a stale "socket" shows as ENOTSOCK, and the call is made again
 *     as the plain write it was.
 *   - Fairness: a call that finds its data (or room) at once returns without
 *     switching, so a fiber reading a burst could keep the thread. After
 *     io_budget such calls in a row (GREENRING_IO_BUDGET, 64), the call
 *     yields once before returning, as Go's scheduler preempts and Tokio's
 *     coop budget does. Every switch refills the budget, so a call that had
 *     to wait never yields on top of it (every call on io_uring waits).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define GR__HAVE_MEMCHECK 1
#else
#define GR__HAVE_MEMCHECK 0
#endif


static inline int64_t syscall_result(ssize_t r)
{
	return r < 0 ? -(int64_t)errno : (int64_t)r;
}

/* ------------------------------------------------------ readiness path */

/* The direction of each kind of green call: whose per-fd deadline bounds it
 * and what it waits for when it would block. A table, not a switch: every
 * call reads it. */
static const uint8_t kind_dirs[GR_OP_KIND_COUNT] = {
	[GR_OP_READ] = GR_FD_READ,	[GR_OP_READV] = GR_FD_READ,   [GR_OP_RECV] = GR_FD_READ,
	[GR_OP_RECVMSG] = GR_FD_READ,	[GR_OP_ACCEPT] = GR_FD_READ,  [GR_OP_WRITE] = GR_FD_WRITE,
	[GR_OP_WRITEV] = GR_FD_WRITE,	[GR_OP_SEND] = GR_FD_WRITE,   [GR_OP_SENDMSG] = GR_FD_WRITE,
	[GR_OP_CONNECT] = GR_FD_WRITE,
};

static short op_events(const struct gr_op *op)
{
	return kind_dirs[op->kind] == GR_FD_WRITE ? POLLOUT : POLLIN;
}

/* Whose per-fd deadlines bound a wait for `events` (gr_fd_set_deadline). */
static uint8_t events_dirs(short events)
{
	return (uint8_t)(((events & (POLLIN | POLLPRI | POLLRDHUP)) ? GR_FD_READ : 0) |
			 ((events & POLLOUT) ? GR_FD_WRITE : 0));
}

/* Kinds whose syscall has no per-call non-blocking flag: the fd itself must
 * be O_NONBLOCK or the thread (and every fiber on it) would block. */
static bool needs_nonblocking_fd(const struct gr_op *op)
{
	switch (op->kind) {
	case GR_OP_READ:
	case GR_OP_WRITE:
	case GR_OP_READV:
	case GR_OP_WRITEV:
	case GR_OP_ACCEPT:
	case GR_OP_CONNECT:
		return true;
	default:
		return false;
	}
}

/* Asked every time, not cached: a program may close() an fd itself and get
 * the number back for a new, blocking file; a stale "already non-blocking"
 * mark would then block the whole thread in read(). */
static int ensure_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* The system call itself, never blocking (given a non-blocking fd).
 * Inlined where it is called: a ready socket call's whole cost is a few
 * dozen instructions around it. */
static inline __attribute__((always_inline)) int64_t attempt(const struct gr_op *op)
{
	ssize_t r;

	switch (op->kind) {
	case GR_OP_READ:
		r = op->off < 0 ? read(op->fd, op->buf, op->len) : pread(op->fd, op->buf, op->len, op->off);
		break;
	case GR_OP_WRITE:
		r = op->off < 0 ? write(op->fd, op->buf, op->len)
				: pwrite(op->fd, op->buf, op->len, op->off);
		break;
	case GR_OP_READV:
		r = op->off < 0 ? readv(op->fd, op->iov, op->iovcnt)
				: preadv(op->fd, op->iov, op->iovcnt, op->off);
		break;
	case GR_OP_WRITEV:
		r = op->off < 0 ? writev(op->fd, op->iov, op->iovcnt)
				: pwritev(op->fd, op->iov, op->iovcnt, op->off);
		break;
	case GR_OP_RECV:
		r = recv(op->fd, op->buf, op->len, op->flags | MSG_DONTWAIT);
		break;
	case GR_OP_SEND:
		r = send(op->fd, op->buf, op->len, op->flags | MSG_DONTWAIT | MSG_NOSIGNAL);
		break;
	case GR_OP_RECVMSG:
		r = recvmsg(op->fd, op->msg, op->flags | MSG_DONTWAIT);
		break;
	case GR_OP_SENDMSG:
		r = sendmsg(op->fd, op->msg, op->flags | MSG_DONTWAIT | MSG_NOSIGNAL);
		break;
	case GR_OP_ACCEPT:
		r = accept4(op->fd, op->addr, op->addrlen, op->flags);
		break;
	case GR_OP_CONNECT:
		r = connect(op->fd, op->addr, op->addrlen_value);
		break;
	default:
		return -EINVAL;
	}
	return syscall_result(r);
}

/* Whether a wait after EAGAIN may trust the backend's existing watch of the
 * fd (GR_POLL_AFTER_EAGAIN): yes for the calls a server makes per message,
 * which saves the epoll hub a system call per park. If the number was closed
 * with plain close() and now names another socket, that watch is stale; the
 * hub's audit of long waits (fd.c) re-registers it within a few hundred ms.
 * accept is not trusted: a listening socket is often born of plain socket()
 * on a reused number, and an accept's park is rare enough to re-arm at once.
 * read/write keep the full check too: they serve pipes, ttys and whatever a
 * program opens itself. */
static bool trusts_registration(const struct gr_op *op)
{
	switch (op->kind) {
	case GR_OP_RECV:
	case GR_OP_SEND:
	case GR_OP_RECVMSG:
	case GR_OP_SENDMSG:
	case GR_OP_CONNECT:
		return true;
	default:
		return false;
	}
}

/* fd was just created (accepted, or a socket being connected): whatever the
 * backend remembers of an earlier file under this number is stale. (The
 * core's own record is renewed by the caller: gr_accept4 and gr_connect.) */
static void forget_previous_file(struct gr__hub *hub, int fd)
{
	if (hub->ops->fd_forget)
		hub->ops->fd_forget(hub->backend, fd);
}

/* What o's fd names (GR__FD_*, or -EBADF, -ENOMEM): from the state the
 * call looked up, without a second look-up or a call, once known. */
static inline int op_fd_kind(struct gr__hub *hub, struct gr__op *o)
{
	const struct gr__fdstate *st = o->fd_st;

	if (__builtin_expect(st && st->kind != GR__FD_UNKNOWN, 1))
		return st->kind;
	int kind = gr__fd_kind(hub, o->op.fd);
	if (!o->fd_st)
		o->fd_st = gr__fd_peek(hub, o->op.fd);
	return kind;
}

/* read, write, readv, writev: the calls that serve regular files too. */
static bool reads_or_writes(const struct gr_op *op)
{
	return op->kind == GR_OP_READ || op->kind == GR_OP_WRITE || op->kind == GR_OP_READV ||
	       op->kind == GR_OP_WRITEV;
}

static int64_t run_readiness(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	struct gr_op *op = &o->op;

	if (reads_or_writes(op)) {
		/* A regular file is never "not ready": its calls would block
		 * the thread on the disk instead of returning EAGAIN. file.c
		 * serves it (page-cache hits here, the rest on the pool). */
		int kind = op_fd_kind(hub, o);

		if (kind < 0)
			return kind;
		if (kind == GR__FD_FILE)
			return gr__file_rw(hub, p, o);
	}
	return gr__run_stream(hub, p, o);
}

/* A read or write at the file position of a stream, tried without
 * blocking by the call itself: preadv2/pwritev2 with RWF_NOWAIT (pipes,
 * sockets, eventfd and timerfd reads, on Linux 6.18). The file's O_NONBLOCK
 * is left as the program set it, for every other user of the open file
 * description (a pipe shared with a shell, a child's stdin), and no F_GETFL
 * is asked on each call: a pipe round trip on epoll is four system calls
 * cheaper. A file that refuses the flag (a tty, a FIFO, inotify, an eventfd
 * written to: EOPNOTSUPP; a sandbox that denies preadv2: ENOSYS or EPERM)
 * is remembered (nowait_refused) and made O_NONBLOCK instead, as every
 * stream was before. */
static uint8_t nowait_dir(const struct gr_op *op)
{
	return kind_dirs[op->kind] == GR_FD_WRITE ? GR__NOWAIT_WRITE : GR__NOWAIT_READ;
}

static bool tries_with_nowait(const struct gr__op *o)
{
	const struct gr_op *op = &o->op;

	return reads_or_writes(op) && op->off < 0 &&
	       !(o->fd_st && (o->fd_st->nowait_refused & nowait_dir(op)));
}

static bool refuses_nowait(int64_t r)
{
	return r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM;
}

/* The fd must not block op's system call. A read or write whose file
 * refused RWF_NOWAIT (tries_with_nowait said no) and that finds the fd
 * blocking may be facing a new file: the number was closed with plain
 * close() and reused, say by a pipe. Before it gets O_NONBLOCK, the refusal
 * is forgotten and the file asked again (*nowait set); one that refuses
 * again is remembered and made O_NONBLOCK then (gr__run_stream). */
static int nonblocking_for(struct gr__op *o, bool *nowait)
{
	struct gr_op *op = &o->op;
	int fl = fcntl(op->fd, F_GETFL);

	if (fl < 0)
		return -errno;
	if (fl & O_NONBLOCK)
		return 0;
	if (reads_or_writes(op) && op->off < 0) {
		o->fd_st->nowait_refused &= (uint8_t)~nowait_dir(op);
		*nowait = true;
		return 0;
	}
	return fcntl(op->fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

/* The file took RWF_NOWAIT: it said EAGAIN, or moved bytes, which it does
 * only past the flag's check (a refusal comes first; a file with no read
 * or write at all says EINVAL before it, and an empty call 0, so neither
 * proves anything). A completion hub lets its backend perform the file's
 * next calls in this direction (completes_in_backend). */
static void took_nowait(struct gr__op *o)
{
	o->fd_st->nowait_taken |= nowait_dir(&o->op);
}

int64_t gr__run_stream(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	struct gr_op *op = &o->op;
	bool nowait = tries_with_nowait(o);
	/* Whether the fd was seen O_NONBLOCK since this call last parked. A
	 * park lets other fibers (and threads) run: the program may have
	 * cleared the flag (fcntl), or closed the number and reused it for a
	 * blocking file, and a read(2) or write(2) the wake-up no longer
	 * covers (another reader took the byte, a pipe with less room than
	 * the write) would block the thread. So the flag is asked again after
	 * every park; only files without RWF_NOWAIT pay (a FIFO, a terminal),
	 * and accept. */
	bool checked = false;

	if (op->kind == GR_OP_CONNECT)
		forget_previous_file(hub, op->fd);
	bool connecting = false;
	for (;;) {
		int64_t r;

		if (connecting) {
			/* The connect started below finished: its outcome is SO_ERROR. */
			int soerr = 0;
			socklen_t len = sizeof(soerr);

			if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
				return -errno;
			return soerr ? -soerr : 0;
		}
		if (!nowait && !checked && needs_nonblocking_fd(op)) {
			int err = nonblocking_for(o, &nowait);

			if (err)
				return err;
			checked = !nowait;
		}
		r = nowait ? gr__rw_call(op, RWF_NOWAIT) : attempt(op);
		if (nowait && (r > 0 || r == -EAGAIN) && (hub->ops->caps & GR_HUB_CAP_COMPLETION)) {
			took_nowait(o);
			if (r == -EAGAIN)
				return r; /* from now on the backend serves it (run_completion) */
		}
		if (nowait && refuses_nowait(r)) {
			/* A file without RWF_NOWAIT (a tty): O_NONBLOCK then. */
			struct gr__fdstate *st = gr__fd_state(hub, op->fd);

			if (!st)
				return errno == EBADF ? -EBADF : -ENOMEM;
			st->nowait_refused |= nowait_dir(op);
			nowait = false;
			int err = ensure_nonblocking(op->fd);

			if (err)
				return err;
			checked = true;
			continue;
		}
		if (op->kind == GR_OP_CONNECT && (r == -EINPROGRESS || r == -EALREADY)) {
			connecting = true;
		} else if (r != -EAGAIN && r != -EWOULDBLOCK) {
			return r;
		}
		r = gr__park_ready(hub, p, op->fd, op_events(op),
				   trusts_registration(op) ? GR_POLL_AFTER_EAGAIN : 0,
				   reads_or_writes(op) && op->off < 0);
		if (r < 0)
			return r;
		checked = false;
	}
}

/* Whether fd was gr_closed (here, or by another thread through this hub)
 * since its state counted `closes`, or a close of it is under way: a call
 * that let other fibers run across that must not touch the number again,
 * which may name a new file by now. */
static inline bool closed_since(int fd, struct gr__fdstate *st, uint32_t closes)
{
	return st->closes != closes || (st->closing && gr__fd_still_held(fd, st));
}

int64_t gr__park_ready(struct gr__hub *hub, struct gr__park *p, int fd, short events, int flags,
		       bool tries_again)
{
	int64_t r = gr__park_again(p);

	if (r < 0)
		return r;
	struct gr__op wait = gr__op_init(GR_OP_POLL, fd);
	wait.op.events = events;
	wait.op.flags = flags;
	struct gr__fdstate *st = gr__fd_state(hub, fd);
	if (!st)
		return errno == EBADF ? -EBADF : -ENOMEM;
	uint32_t closes = st->closes;
	wait.fd_st = st;
	wait.tries_again = tries_again;
	r = gr__park_op(hub, p, &wait);
	/* -EAGAIN: the audit of long waits ended the wait (tries_again). */
	if (r < 0 && r != -EAGAIN)
		return r;
	/* The wait ended, but other fibers ran before this one: if one of them
	 * gr_closed the fd, the number may already name a new file. */
	return closed_since(fd, st, closes) ? -EBADF : 0;
}

int gr__fd_nonblocking(int fd)
{
	return ensure_nonblocking(fd);
}

/* ------------------------------------------------------ the one path */

#if GR__HAVE_MEMCHECK
/* RUNNING_ON_VALGRIND, asked once per process: the client request is a
 * dozen instructions and six stores even outside Valgrind, and every call a
 * completion backend performs asked it (about 1% of a pipe round trip
 * between two fibers on io_uring). Relaxed: every thread computes the same
 * answer. */
static bool under_valgrind(void)
{
	static atomic_int known = -1;
	int v = atomic_load_explicit(&known, memory_order_relaxed);

	if (__builtin_expect(v < 0, 0)) {
		v = RUNNING_ON_VALGRIND != 0;
		atomic_store_explicit(&known, v, memory_order_relaxed);
	}
	return v != 0;
}
#endif

/* A completion backend's kernel writes the results into user memory behind
 * Valgrind's back (no syscall it can see does the copy): tell it which bytes
 * are now defined, or every read buffer looks uninitialised. A load and a
 * branch outside Valgrind. */
static void mark_defined(const struct gr_op *op, int64_t res)
{
#if GR__HAVE_MEMCHECK
	if (!under_valgrind() || res < 0)
		return;
	const struct iovec *iov = NULL;
	size_t iovcnt = 0;

	switch (op->kind) {
	case GR_OP_READ:
	case GR_OP_RECV:
		VALGRIND_MAKE_MEM_DEFINED(op->buf, (size_t)res);
		return;
	case GR_OP_READV:
		iov = op->iov;
		iovcnt = (size_t)op->iovcnt;
		break;
	case GR_OP_RECVMSG:
		VALGRIND_MAKE_MEM_DEFINED(op->msg, sizeof(*op->msg));
		if (op->msg->msg_name)
			VALGRIND_MAKE_MEM_DEFINED(op->msg->msg_name, op->msg->msg_namelen);
		if (op->msg->msg_control)
			VALGRIND_MAKE_MEM_DEFINED(op->msg->msg_control, op->msg->msg_controllen);
		iov = op->msg->msg_iov;
		iovcnt = op->msg->msg_iovlen;
		break;
	case GR_OP_ACCEPT:
		if (op->addrlen) {
			VALGRIND_MAKE_MEM_DEFINED(op->addrlen, sizeof(*op->addrlen));
			VALGRIND_MAKE_MEM_DEFINED(op->addr, *op->addrlen);
		}
		return;
	case GR_OP_STATX:
		VALGRIND_MAKE_MEM_DEFINED(op->buf, sizeof(struct statx));
		return;
	default:
		return;
	}
	for (size_t i = 0; i < iovcnt && res > 0; i++) {
		size_t n = iov[i].iov_len < (size_t)res ? iov[i].iov_len : (size_t)res;

		VALGRIND_MAKE_MEM_DEFINED(iov[i].iov_base, n);
		res -= (int64_t)n;
	}
#else
	(void)op;
	(void)res;
#endif
}

/* Whether a completion backend performs o itself (1), or the core serves
 * it as the readiness hubs do (0: gr__run_stream), or -errno. io_uring
 * tries a read of a file that cannot be tried without blocking (no
 * RWF_NOWAIT) only once poll(2) calls the file ready, and some such files
 * never become ready although read(2) or write(2) answers them at once: a
 * FIFO that never had a writer (end of file), a pidfd or an epoll fd
 * (EINVAL), a terminal with VMIN 0 (0); IOSQE_ASYNC does not help, the
 * kernel's worker polls the same way (measured on Linux 6.18). So a read
 * or write at a stream's position goes to the backend only once the file
 * has taken RWF_NOWAIT (learnt by gr__run_stream's first try, once per fd
 * and direction); until then, and for a file that refused it, the call
 * itself is tried without blocking and the fiber parks on GR_OP_POLL.
 * Sockets and regular files always go to the backend. Asked on every call:
 * the fast path is two loads of the fd's state, already looked up. */
static inline int completes_in_backend(struct gr__hub *hub, struct gr__op *o)
{
	const struct gr_op *op = &o->op;

	if (!reads_or_writes(op) || op->off >= 0)
		return 1;
	const struct gr__fdstate *st = o->fd_st;
	if (__builtin_expect(st && (st->nowait_taken & nowait_dir(op)), 1))
		return 1;
	int kind = op_fd_kind(hub, o);
	if (kind < 0)
		return kind;
	return kind != GR__FD_STREAM;
}

/* A send on a completion hub (gr_send, gr_sendmsg, and a write on a socket,
 * which io.c makes a send) with no other fiber runnable: its SQE would
 * go to the kernel alone, in an io_uring_enter of its own, and the fiber
 * would park and come back through the loop for its completion. The send
 * itself with MSG_DONTWAIT is the same one system call, without the park
 * and the two switches. With other fibers runnable, or operations of this
 * turn queued already, the enter comes anyway and this SQE shares it,
 * which is cheaper than a call of its own. After EAGAIN the send goes the
 * usual way; ENOTSOCK (the number names no socket any more) is the call's
 * answer, as the SQE's would be, and gr__run_op makes a write of a write
 * again. */
static inline bool sends_at_once(const struct gr__hub *hub, const struct gr_op *op)
{
	return (op->kind == GR_OP_SEND || op->kind == GR_OP_SENDMSG) && hub->queued == 0 &&
	       !hub->now && gr__fifo_empty(&hub->next);
}

/* A completion backend runs the call in the kernel, which honours the
 * file's own O_NONBLOCK (a signalfd made with SFD_NONBLOCK, a socket the
 * program set non-blocking): the call comes back with EAGAIN (EINPROGRESS
 * for a connect) instead of waiting. A green call waits on every hub, so
 * here it waits for readiness, as the readiness hubs do, and tries again.
 * EAGAIN is also what the gate returns for a call the audit of long waits
 * doubted (GR__REDECIDE): the way to serve it is chosen again first. */
static int64_t run_completion(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	if (sends_at_once(hub, &o->op)) {
		int64_t r = attempt(&o->op);

		if (r != -EAGAIN && r != -EWOULDBLOCK)
			return r;
	}
	for (;;) {
		int in_backend = completes_in_backend(hub, o);

		if (in_backend < 0)
			return in_backend;
		if (in_backend == 0) {
			int64_t r = gr__run_stream(hub, p, o);

			/* EAGAIN: the file took RWF_NOWAIT and was not ready; the
			 * backend waits for it as for any other. */
			if (r != -EAGAIN)
				return r;
			continue;
		}
		int64_t r = gr__park_op(hub, p, o);
		/* EALREADY: a connect submitted again after a retime (wait.c)
		 * finds the first one still under way. */
		bool connecting = o->op.kind == GR_OP_CONNECT && (r == -EINPROGRESS || r == -EALREADY);

		if (r != -EAGAIN && !connecting) {
			mark_defined(&o->op, r);
			return r;
		}
		if (!connecting && completes_in_backend(hub, o) == 0)
			continue; /* doubted by the audit: the file is asked again */
		r = gr__park_again(p);
		if (r < 0)
			return r;
		struct gr__op wait = gr__op_init(GR_OP_POLL, o->op.fd);
		wait.op.events = op_events(&o->op);
		wait.fd_st = o->fd_st;
		wait.tries_again = !connecting;
		r = gr__park_op(hub, p, &wait);
		if (r == -EAGAIN)
			continue; /* the audit ended the wait: the call chooses again */
		if (r < 0)
			return r;
		if (r & POLLNVAL)
			return -EBADF;
		if (connecting) {
			int soerr = 0;
			socklen_t len = sizeof(soerr);

			if (getsockopt(o->op.fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
				return -errno;
			return soerr ? -soerr : 0;
		}
	}
}

static int64_t run_backend(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	if (hub->ops->caps & GR_HUB_CAP_COMPLETION)
		return run_completion(hub, p, o);
	return run_readiness(hub, p, o);
}

/* A write at the current position on a socket becomes a send with
 * MSG_NOSIGNAL (writev a sendmsg of the same iovecs, through *msg, which
 * lives as long as the call). Returns whether o was changed. */
static bool write_as_send(struct gr__hub *hub, struct gr__op *o, struct msghdr *msg)
{
	struct gr_op *op = &o->op;

	if ((op->kind != GR_OP_WRITE && op->kind != GR_OP_WRITEV) || op->off >= 0 ||
	    op_fd_kind(hub, o) != GR__FD_SOCKET)
		return false;
	if (op->kind == GR_OP_WRITE) {
		op->kind = GR_OP_SEND;
	} else {
		memset(msg, 0, sizeof(*msg));
		msg->msg_iov = (struct iovec *)op->iov;
		msg->msg_iovlen = (size_t)op->iovcnt;
		op->msg = msg;
		op->kind = GR_OP_SENDMSG;
	}
	op->flags = MSG_NOSIGNAL;
	return true;
}

/* The number named a socket once but names another file now (closed with
 * close() and reused): learn what it is, and write as asked. */
static void send_as_write(struct gr__hub *hub, struct gr__op *o)
{
	(void)gr__fd_kind_check(hub, o->op.fd);
	o->op.kind = o->op.kind == GR_OP_SEND ? GR_OP_WRITE : GR_OP_WRITEV;
	o->op.flags = 0;
}

/* A new file under fd, made by this call: what the backend and the fd
 * table knew of the number belonged to an earlier file. */
static void new_file(struct gr__hub *hub, int fd)
{
	forget_previous_file(hub, fd);
	gr__fd_born(hub, fd, GR__FD_SOCKET);
}

/* The call found what it wanted without a switch: after a budget of such
 * calls in a row, let the others run once (the result is kept: a kill or
 * deadline during this yield shows at the next call). The streak counts
 * from the hub's last switch, known by its progress count (which every
 * switch moves) rather than reset by the switch itself: a store on every
 * switch was 4% of a yield round trip (bench/micro, 8 paired runs). */
static void spend_budget(struct gr__hub *hub)
{
	uint64_t at = atomic_load_explicit(&hub->progress, memory_order_relaxed);

	if (hub->streak_at != at) {
		hub->streak_at = at;
		hub->streak = 0;
	}
	if (++hub->streak < hub->io_budget)
		return;
	hub->streak = 0; /* a yield with nobody else to run does not switch */
	gr__yield(hub);
}

/* An open or stat relative to the working directory names no fd. */
static bool names_a_path(const struct gr_op *op)
{
	return (op->kind == GR_OP_OPENAT || op->kind == GR_OP_STATX) && op->fd == AT_FDCWD;
}

/* The socket calls a server makes per message, on a readiness hub: tried
 * once before the call's park record is built, since they mostly find
 * their data or room (callgrind, a ready gr_send+gr_recv on epoll: the
 * record and the way down to run_stream were a quarter of the pair). They
 * need no O_NONBLOCK (MSG_DONTWAIT) and are never files, so the try is the
 * one run_stream would make first. */
static bool tried_before_parking(const struct gr__hub *hub, const struct gr_op *op)
{
	if (hub->ops->caps & GR_HUB_CAP_COMPLETION)
		return false;
	return op->kind == GR_OP_RECV || op->kind == GR_OP_SEND || op->kind == GR_OP_RECVMSG ||
	       op->kind == GR_OP_SENDMSG;
}

/* A call tried_before_parking whose try said EAGAIN (the gate's checks
 * passed with `deadline`): its park record, then run_stream's loop for these
 * kinds (no connect, no file, no fcntl) without the way down to it: wait
 * for readiness, try again. Out of line, so that the record and the loop
 * cost the calls that find their data nothing. */
static __attribute__((noinline)) int64_t ready_then_retry(struct gr__hub *hub, struct gr__op *o,
							   const char *what, uint8_t dirs,
							   int64_t deadline, bool hinted)
{
	struct gr__park p = { .what = what, .limit = o->op.deadline, .fd_dirs = dirs };
	int64_t r;

	gr__park_fill(hub, &p);
	p.deadline = deadline;
	do {
		r = gr__park_ready(hub, &p, o->op.fd, op_events(&o->op),
				   trusts_registration(&o->op) ? GR_POLL_AFTER_EAGAIN : 0, false);
		if (r >= 0)
			r = attempt(&o->op);
	} while (r == -EAGAIN || r == -EWOULDBLOCK);
	/* A hinted park this long may have been ended by the audit, not by
	 * data: the hint is doubted (drain.c). */
	if (hinted && hub->clock - p.since >= GR__DRAIN_DOUBT_NS)
		gr__drain_doubt(o->fd_st);
	gr__drain_note(hub, o, r);
	return r;
}

/* The one path: through the gate, then the backend's way of doing it. */
int64_t gr__run_op(struct gr__op *o, const char *what)
{
	struct gr__hub *hub = NULL;
	int err = gr__park_hub(&hub);

	if (err)
		return err;
	int fd = o->op.fd;
	if (fd < 0 && !names_a_path(&o->op))
		return -EBADF;
	uint8_t dirs = kind_dirs[o->op.kind];
	int64_t deadline;
	/* The one look-up of the fd's state for the whole call (NULL the first
	 * time: gr__fd_link makes it): the deadlines, the kind, the listing. */
	o->fd_st = gr__fd_peek(hub, fd);
	err = gr__park_check(hub->current,
			     gr__deadline_min(o->op.deadline, gr__fd_deadline_of(o->fd_st, dirs)), false,
			     &deadline);
	if (err)
		return err;
	/* The system calls made on the way (a try that says EAGAIN before the
	 * park) must not show in the caller's errno: a call that succeeds
	 * leaves it as it was, as read(2) in a thread does; one that fails has
	 * it set last by its wrapper (gr__posix_result). */
	int *errno_at = hub->errno_at;
	const int errno_before = *errno_at;
	if (tried_before_parking(hub, &o->op)) {
		/* A recv that came back short since the hub last waited has
		 * drained the socket: this one would say EAGAIN (drain.c). */
		bool hinted = gr__drain_hinted(hub, o, deadline);
		int64_t r = hinted ? -EAGAIN : attempt(&o->op);

		if (r == -EAGAIN || r == -EWOULDBLOCK)
			r = ready_then_retry(hub, o, what, dirs, deadline, hinted);
		else
			gr__drain_note(hub, o, r);
		spend_budget(hub);
		*errno_at = errno_before;
		return r;
	}
	struct gr__park p = { .what = what, .limit = o->op.deadline, .fd_dirs = dirs };
	gr__park_fill(hub, &p);
	p.deadline = deadline;
	int64_t r;
	struct msghdr msg;
	bool sent = write_as_send(hub, o, &msg);
	while ((r = run_backend(hub, &p, o)) == -ENOTSOCK && sent) {
		send_as_write(hub, o);
		sent = false;
	}
	spend_budget(hub);
	*errno_at = errno_before;
	return r;
}

ssize_t gr_read(int fd, void *buf, size_t n)
{
	struct gr__op o = gr__op_init(GR_OP_READ, fd);
	o.op.buf = buf;
	o.op.len = n;

	return gr__posix_result(gr__run_op(&o, "gr_read"));
}

ssize_t gr_write(int fd, const void *buf, size_t n)
{
	struct gr__op o = gr__op_init(GR_OP_WRITE, fd);
	o.op.buf = (void *)buf;
	o.op.len = n;

	return gr__posix_result(gr__run_op(&o, "gr_write"));
}

/* pread/pwrite on a pipe or socket is ESPIPE. io_uring does not say so: it
 * ignores the offset of a stream file and reads (or blocks) as read() would,
 * so a completion hub asks the kernel first. A readiness hub's pread() says
 * ESPIPE by itself. */
static int positional_unsupported(int fd)
{
	struct gr__hub *hub = gr__hub_peek();

	if (hub && !(hub->ops->caps & GR_HUB_CAP_COMPLETION))
		return 0;
	return fd >= 0 && lseek(fd, 0, SEEK_CUR) < 0 && errno == ESPIPE;
}

ssize_t gr_pread(int fd, void *buf, size_t n, off_t off)
{
	if (off < 0) {
		errno = EINVAL;
		return -1;
	}
	if (positional_unsupported(fd)) {
		errno = ESPIPE;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_READ, fd);
	o.op.buf = buf;
	o.op.len = n;
	o.op.off = off;

	return gr__posix_result(gr__run_op(&o, "gr_pread"));
}

ssize_t gr_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	if (off < 0) {
		errno = EINVAL;
		return -1;
	}
	if (positional_unsupported(fd)) {
		errno = ESPIPE;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_WRITE, fd);
	o.op.buf = (void *)buf;
	o.op.len = n;
	o.op.off = off;

	return gr__posix_result(gr__run_op(&o, "gr_pwrite"));
}

static bool valid_iov(const struct iovec *iov, int iovcnt)
{
	return iovcnt >= 0 && iovcnt <= IOV_MAX && (iov || iovcnt == 0);
}

ssize_t gr_readv(int fd, const struct iovec *iov, int iovcnt)
{
	if (!valid_iov(iov, iovcnt)) {
		errno = EINVAL;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_READV, fd);
	o.op.iov = iov;
	o.op.iovcnt = iovcnt;

	return gr__posix_result(gr__run_op(&o, "gr_readv"));
}

ssize_t gr_writev(int fd, const struct iovec *iov, int iovcnt)
{
	if (!valid_iov(iov, iovcnt)) {
		errno = EINVAL;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_WRITEV, fd);
	o.op.iov = iov;
	o.op.iovcnt = iovcnt;

	return gr__posix_result(gr__run_op(&o, "gr_writev"));
}

ssize_t gr_recv(int fd, void *buf, size_t n, int flags)
{
	struct gr__op o = gr__op_init(GR_OP_RECV, fd);
	o.op.buf = buf;
	o.op.len = n;
	o.op.flags = flags;

	return gr__posix_result(gr__run_op(&o, "gr_recv"));
}

ssize_t gr_send(int fd, const void *buf, size_t n, int flags)
{
	/* A peer that went away is an EPIPE for this call, not a SIGPIPE that
	 * kills the whole server. */
	struct gr__op o = gr__op_init(GR_OP_SEND, fd);
	o.op.buf = (void *)buf;
	o.op.len = n;
	o.op.flags = flags | MSG_NOSIGNAL;

	return gr__posix_result(gr__run_op(&o, "gr_send"));
}

/* All of buf with one kind of operation (a write or a send), looping over
 * short counts as a blocking write(2) or send(2) on a stream does. The
 * count moved is never lost: on a failure after some bytes went out it is
 * returned (short), errno saying why; -1 only when nothing moved. */
static ssize_t move_all(uint8_t kind, int fd, const void *buf, size_t n, int flags, const char *what)
{
	size_t done = 0;
	int64_t r;
	/* Each call may let other fibers run (its wait, the budget's yield at
	 * its end). One of them may gr_close fd and a new file take the
	 * number: the rest must not go there. So the fd's close count is taken
	 * before the first call (a close during that call's yield counts too)
	 * and checked before each next one. Its state is made here if need be
	 * (a number without one is closed without being counted), and this
	 * hub's claim on fd recorded: calls that never wait list nothing on
	 * the fd, and another thread's gr_close must come through this hub to
	 * be counted (fd_remote.c). */
	struct gr__hub *hub = NULL;
	struct gr__fdstate *st = gr__park_hub(&hub) == 0 ? gr__fd_state(hub, fd) : NULL;
	uint32_t closes = st ? st->closes : 0;
	if (st && !st->claimed && !st->closing)
		gr__fd_claim(hub, fd, st);

	do {
		if (done && st && closed_since(fd, st, closes)) {
			r = -EBADF;
			break;
		}
		struct gr__op o = gr__op_init(kind, fd);
		o.op.buf = done ? (char *)buf + done : (void *)buf;
		o.op.len = n - done;
		o.op.flags = flags;
		r = gr__run_op(&o, what);
		/* A stream that takes nothing and says nothing would keep the
		 * loop going for ever. */
		if (r == 0 && n > 0)
			r = -EIO;
		if (r < 0)
			break;
		done += (size_t)r;
	} while (done < n);
	if (r < 0) {
		errno = (int)-r;
		return done ? (ssize_t)done : -1;
	}
	return (ssize_t)done;
}

ssize_t gr_send_all(int fd, const void *buf, size_t n, int flags)
{
	return move_all(GR_OP_SEND, fd, buf, n, flags | MSG_NOSIGNAL, "gr_send_all");
}

ssize_t gr_write_all(int fd, const void *buf, size_t n)
{
	return move_all(GR_OP_WRITE, fd, buf, n, 0, "gr_write_all");
}

ssize_t gr_recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (!msg) {
		errno = EINVAL;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_RECVMSG, fd);
	o.op.msg = msg;
	o.op.flags = flags;

	return gr__posix_result(gr__run_op(&o, "gr_recvmsg"));
}

ssize_t gr_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	if (!msg) {
		errno = EINVAL;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_SENDMSG, fd);
	o.op.msg = (struct msghdr *)msg;
	o.op.flags = flags | MSG_NOSIGNAL;

	return gr__posix_result(gr__run_op(&o, "gr_sendmsg"));
}

int gr_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	if ((sa == NULL) != (len == NULL)) {
		errno = EINVAL;
		return -1;
	}
	struct gr__hub *hub = gr__hub_peek();
	/* On readiness hubs an accepted socket is made non-blocking at birth:
	 * it would be on its first green call anyway. */
	if (hub && !(hub->ops->caps & GR_HUB_CAP_COMPLETION))
		flags |= SOCK_NONBLOCK;
	struct gr__op o = gr__op_init(GR_OP_ACCEPT, fd);
	o.op.addr = sa;
	o.op.addrlen = len;
	o.op.flags = flags;
	int64_t r = gr__run_op(&o, "gr_accept4");

	if (r >= 0)
		new_file(gr__hub_peek(), (int)r);
	return (int)gr__posix_result(r);
}

int gr_accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	return gr_accept4(fd, sa, len, 0);
}

int gr_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (!sa) {
		errno = EFAULT;
		return -1;
	}
	struct gr__op o = gr__op_init(GR_OP_CONNECT, fd);
	o.op.addr = (struct sockaddr *)sa;
	o.op.addrlen_value = len;
	int64_t r = gr__run_op(&o, "gr_connect");

	/* A connected socket, whatever the number named before. */
	if (r == 0)
		gr__fd_set_kind(gr__hub_peek(), fd, GR__FD_SOCKET);
	return (int)gr__posix_result(r);
}

int gr_wait_fd(int fd, short events, int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_wait_fd" };
	int err = gr__park_hub(&hub);

	if (err)
		return (int)gr__posix_result(err);
	if (fd < 0)
		return (int)gr__posix_result(-EBADF);
	if (!(events & (POLLIN | POLLOUT | POLLPRI | POLLRDHUP)))
		return (int)gr__posix_result(-EINVAL);
	if (deadline == 0) {
		/* Try once: ask the kernel now, without parking. */
		struct pollfd pfd = { .fd = fd, .events = events };
		int r = poll(&pfd, 1, 0);

		if (r < 0)
			return (int)gr__posix_result(-errno);
		if (r == 1 && (pfd.revents & POLLNVAL))
			return (int)gr__posix_result(-EBADF);
		return r == 1 ? 0 : (int)gr__posix_result(-ETIMEDOUT);
	}
	p.limit = deadline;
	p.fd_dirs = events_dirs(events);
	err = gr__park_begin(hub, &p, gr__deadline_min(deadline, gr__fd_deadline(hub, fd, p.fd_dirs)));
	if (err)
		return (int)gr__posix_result(err);
	struct gr__op o = gr__op_init(GR_OP_POLL, fd);
	o.op.events = events;
	int64_t r = gr__park_op(hub, &p, &o);
	if (r >= 0 && (r & POLLNVAL))
		r = -EBADF;
	return (int)gr__posix_result(r < 0 ? r : 0);
}

/* Close: cancel what is in flight on fd, let those fibers see EBADF, wait
 * until the backend has let go of every operation naming fd, then close.
 * Until then the number cannot be reused, so no queued operation can land on
 * a file opened later under the same number. The closing state ends the
 * moment the close itself completes (fd.c), before any other fiber runs: a
 * fiber that gets the number back from pipe() or socket() in the same turn
 * owns it at once. Fibers of other threads waiting on fd are reached through
 * their hubs first (fd_remote.c); the one load that asks costs nothing
 * measurable here (docs/threads.md). */
static inline __attribute__((always_inline)) int close_here(struct gr__hub *hub, int fd,
							    enum gr__close_how how);

int gr_close(int fd)
{
	struct gr__hub *hub = gr__hub_peek();

	if (fd < 0)
		return (int)gr__posix_result(-EBADF);
	if (gr__fd_elsewhere(hub, fd))
		return (int)gr__posix_result(gr__fd_close_elsewhere(hub, fd));
	return (int)gr__posix_result(close_here(hub, fd, GR__CLOSE));
}

int gr__close_here(struct gr__hub *hub, int fd, enum gr__close_how how)
{
	return close_here(hub, fd, how);
}

/* Inlined into gr_close, whose every call runs it. */
static inline __attribute__((always_inline)) int close_here(struct gr__hub *hub, int fd,
							    enum gr__close_how how)
{
	struct gr__fdstate *st = hub ? gr__fd_peek(hub, fd) : NULL;
	if (!st)
		return how == GR__CLOSE_HOLD ? 0 : close(fd) < 0 ? -errno : 0;
	if (!hub->loop && !gr__hub_loop_fiber(hub))
		return -ENOMEM; /* the close below may park */
	if (hub->current == hub->loop) {
		/* Inside the hub nothing can wait for the cancelled operations to
		 * drain, and closing under them would let the number be reused
		 * while an operation still names it. */
		if (!gr__list_empty(&st->ops))
			return -EPERM;
		gr__fd_forget(st);
		gr__fd_unclaim(hub, fd, st);
		st->closes++; /* a fiber between two calls on fd must not go on */
		if (how == GR__CLOSE_HOLD) {
			gr__fd_hold(fd, st);
			return 0;
		}
		return close(fd) < 0 ? -errno : 0;
	}
	if (gr__fd_still_held(fd, st))
		return -EBADF; /* another fiber, or another thread, is closing it */
	st->closing = GR__FD_CLOSING;
	st->closes++;
	gr__fd_cancel_all(hub, st, EBADF);
	/* Not cancellable: the fd must end up closed either way, whether the
	 * caller was killed or its deadline passed. */
	struct gr__park p = { .what = "gr_close", .uncancellable = true };
	int64_t r = gr__park_begin(hub, &p, GR_FOREVER);
	while (r == 0 && !gr__list_empty(&st->ops))
		r = gr__park_queue(hub, &p, &st->closers);
	if (hub->ops->fd_forget)
		hub->ops->fd_forget(hub->backend, fd);
	gr__fd_forget(st); /* what comes next under the number is learnt afresh */
	/* Before the number is free: a claim dropped after it could drop the
	 * claim of a hub that reused the number meanwhile. */
	gr__fd_unclaim(hub, fd, st);
	if (how == GR__CLOSE_HOLD) {
		gr__fd_hold(fd, st);
		return (int)r;
	}
	if (how == GR__CLOSE && (hub->ops->caps & GR_HUB_CAP_COMPLETION)) {
		struct gr__op o = gr__op_init(GR_OP_CLOSE, fd);

		r = gr__park_op(hub, &p, &o);
	} else {
		r = close(fd) < 0 ? -errno : 0;
		st->closing = 0;
	}
	return (int)r;
}
