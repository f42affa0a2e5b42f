/* hub_uring.c — the io_uring backend: a completion backend, the preferred one.
 *
 * Every operation becomes one SQE (two with a deadline: the operation linked
 * to an IORING_OP_LINK_TIMEOUT, reserved together so a submit can never fall
 * between them). SQEs are only queued by submit() and cancel(); wait() hands
 * the whole batch to the kernel in the same io_uring_enter that reaps, once
 * per loop turn.
 *
 * user_data is (generation << 32 | slot << 2 | tag). The slot table maps an
 * in-flight operation to its struct gr_op; the generation changes each time a
 * slot is reused, so a CQE that arrives for an operation already completed
 * (which the kernel must not produce, but a bug or a cancel race could) is
 * dropped instead of waking whichever fiber owns the slot now. The tag tells
 * operation CQEs from those of timeouts (linked, or a file kind's own) and
 * cancel requests, which never wake anyone: the operation's own CQE always
 * follows.
 *
 * Ring setup tries, best first: SINGLE_ISSUER|DEFER_TASKRUN (completions are
 * processed only when we enter the kernel to reap: no interrupts while fibers
 * run), then COOP_TASKRUN, then plain. SUBMIT_ALL keeps one bad SQE from
 * holding back the rest of a batch. The CQ is four times the SQ; if it still
 * overflows, the kernel keeps the overflow (IORING_FEAT_NODROP) and wait()
 * flushes it, so no completion is lost.
 *
 * Files. OPENAT, STATX, FSYNC and SPLICE are SQEs too, but not in the probe's
 * list: a kernel without one of them still runs this hub, which refuses that
 * kind with -EOPNOTSUPP and the core makes the call on its thread pool
 * (hub_ops.h). Only SPLICE (Linux 5.7) can be missing where CLOSE (5.6), which
 * the probe requires, exists.
 *
 * Deadlines of the file kinds. A linked timeout never fires for a request
 * that an io-wq worker is blocked in (an open of a FIFO waiting for its
 * writer, a splice into a full socket: no CQE at all, measured on Linux
 * 6.18), while an explicit ASYNC_CANCEL does interrupt it. So a file kind
 * with a deadline gets a timeout of its own, not linked; when it expires
 * (its CQE carries the operation's user_data with TAG_LINK_TIMEOUT) the
 * operation, if still in flight, is cancelled like a kill would; when the
 * operation ends first, the timeout is removed. The other kinds keep the
 * linked timeout, which costs no extra CQE handling.
 *
 * The ring's own timer. While operations on fds are in flight, every wait
 * of the hub is bounded (the audit of long waits, fd.c), often by the same
 * deadline for a hundred milliseconds of waits. Passing that bound to
 * io_uring_enter (IORING_ENTER_EXT_ARG) costs every wait the kernel's copy
 * of the argument and the timespec, and the conversion here; a pipe round
 * trip between two fibers, two waits, paid about 2% for it (bench/micro,
 * docs/benchmarks.md). So wait_until arms one IORING_OP_TIMEOUT at the
 * absolute deadline, leaves it pending across waits and waits untimed; a
 * deadline sooner than the armed one replaces it, a later one waits for it
 * to fire (a wake-up early, which the core answers by asking again). Its
 * CQEs carry TAG_WAKE with slot 1 and the arming's generation. The
 * deadlines come from the coarse clock, which lags CLOCK_MONOTONIC by up
 * to a tick: a timer that fired before the core's clock saw its deadline
 * pass is not armed again for the same deadline (it would fire at once,
 * for as long as the tick lasts): that wait is timed the usual way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define DEFAULT_ENTRIES 256u
#define NO_SLOT UINT32_MAX

enum tag { TAG_OP = 0, TAG_LINK_TIMEOUT = 1, TAG_CANCEL = 2, TAG_WAKE = 3 };

struct slot {
	struct gr_op *op;       /* NULL when free */
	uint32_t gen;
	uint32_t next_free;
};

struct uring_hub {
	struct io_uring ring;
	struct slot *slots;
	uint32_t nslots;
	uint32_t free_head;
	int wake_fd;
	atomic_bool wake_pending;  /* coalesces wake() calls until the hub reads */
	bool wake_unarmed;         /* the wake poll ended and is not re-armed yet */
	uint32_t refused;          /* 1 << GR_OP_* of the optional kinds this kernel lacks */
	uint64_t *late_cancels;    /* user_data to cancel once the SQ has room */
	uint32_t nlate, late_cap;
	unsigned enter_flags;      /* IORING_ENTER_REGISTERED_RING once registered */
	struct {                   /* the ring's own timer (top of this file) */
		int64_t at;        /* its deadline while armed; 0: none is */
		int64_t fired;     /* the deadline of the last one that fired */
		uint32_t gen;      /* the arming's generation, in its user_data */
		struct __kernel_timespec ts; /* read by the kernel at submission */
	} timer;
};

/* user_data of the wake poll's CQEs, and (slot 1 and a generation) the
 * ring timer's. */
#define WAKE_SLOT 0u
#define TIMER_SLOT 1u

/* backend_data[3] of a file kind: its own deadline timer is pending. */
#define OWN_TIMER ((uintptr_t)1)

static bool file_kind(const struct gr_op *op)
{
	return op->kind == GR_OP_OPENAT || op->kind == GR_OP_STATX || op->kind == GR_OP_FSYNC ||
	       op->kind == GR_OP_SPLICE;
}

/* IORING_OP_WAITID (Linux 6.7) and its SQE layout, spelled out because
 * Debian bookworm's liburing 2.3 predates both the opcode and its prep
 * helper. The kernel reads: fd = the id, len = the idtype, file_index = the
 * waitid options, addr2 = the siginfo_t to fill; every other field zero. */
#ifndef IORING_OP_WAITID
#define IORING_OP_WAITID 50
#endif

static void prep_waitid(struct io_uring_sqe *sqe, const struct gr_op *op)
{
	bool any = op->fd < 0;

	io_uring_prep_rw(IORING_OP_WAITID, sqe, any ? 0 : op->fd, NULL, any ? P_ALL : P_PIDFD, 0);
	sqe->file_index = (uint32_t)op->flags;
	sqe->addr2 = (uint64_t)(uintptr_t)op->buf;
}

/* The opcodes greenring relies on; probe() refuses a kernel missing one. */
static const struct {
	uint8_t opcode;
	const char *name;
} needed_opcodes[] = {
	{ IORING_OP_NOP, "NOP" },		{ IORING_OP_READ, "READ" },
	{ IORING_OP_WRITE, "WRITE" },		{ IORING_OP_READV, "READV" },
	{ IORING_OP_WRITEV, "WRITEV" },		{ IORING_OP_RECV, "RECV" },
	{ IORING_OP_SEND, "SEND" },		{ IORING_OP_RECVMSG, "RECVMSG" },
	{ IORING_OP_SENDMSG, "SENDMSG" },	{ IORING_OP_ACCEPT, "ACCEPT" },
	{ IORING_OP_CONNECT, "CONNECT" },	{ IORING_OP_POLL_ADD, "POLL_ADD" },
	{ IORING_OP_TIMEOUT, "TIMEOUT" },	{ IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT" },
	{ IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL" }, { IORING_OP_CLOSE, "CLOSE" },
};

_Static_assert(GR_OP_KIND_COUNT <= 32, "refused kinds are a 32-bit mask");

/* The file kinds and their opcodes: used when the kernel has them. */
static const struct {
	uint8_t kind;
	uint8_t opcode;
} file_opcodes[] = {
	{ GR_OP_OPENAT, IORING_OP_OPENAT },
	{ GR_OP_STATX, IORING_OP_STATX },
	{ GR_OP_FSYNC, IORING_OP_FSYNC },
	{ GR_OP_SPLICE, IORING_OP_SPLICE },
};

static inline uint64_t encode(uint32_t idx, uint32_t gen, enum tag tag)
{
	return (uint64_t)gen << 32 | (uint64_t)idx << 2 | (uint64_t)tag;
}

/* ------------------------------------------------------------ slots */

static int slot_alloc(struct uring_hub *h, struct gr_op *op, uint64_t *ud)
{
	if (h->free_head == NO_SLOT) {
		uint32_t n = h->nslots ? h->nslots * 2 : 256;

		if (n >= (1u << 30))
			return -ENOMEM;
		struct slot *slots = realloc(h->slots, (size_t)n * sizeof(*slots));
		if (!slots)
			return -ENOMEM;
		for (uint32_t i = h->nslots; i < n; i++) {
			slots[i].op = NULL;
			slots[i].gen = 0;
			slots[i].next_free = i + 1 < n ? i + 1 : NO_SLOT;
		}
		h->free_head = h->nslots;
		h->slots = slots;
		h->nslots = n;
	}
	uint32_t idx = h->free_head;
	struct slot *s = &h->slots[idx];

	h->free_head = s->next_free;
	s->op = op;
	*ud = encode(idx, s->gen, TAG_OP);
	return 0;
}

static void slot_free(struct uring_hub *h, uint32_t idx)
{
	struct slot *s = &h->slots[idx];

	s->op = NULL;
	s->gen++;
	s->next_free = h->free_head;
	h->free_head = idx;
}

/* ------------------------------------------------------------ reaping */

/* Ask the kernel to cancel the request `target` (a user_data). Called while
 * reaping, where a full SQ cannot be flushed: the cancel then waits in
 * late_cancels for the next wait(). */
static void cancel_soon(struct uring_hub *h, uint64_t target)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);

	if (sqe) {
		io_uring_prep_cancel64(sqe, target, 0);
		io_uring_sqe_set_data64(sqe, (target & ~(uint64_t)3) | TAG_CANCEL);
		return;
	}
	if (h->nlate == h->late_cap) {
		uint32_t cap = h->late_cap ? h->late_cap * 2 : 16;
		uint64_t *late = realloc(h->late_cancels, cap * sizeof(*late));

		if (!late) {
			fprintf(stderr, "greenring: io_uring hub: no memory to cancel an operation "
					"whose deadline passed; it ends when it completes\n");
			return;
		}
		h->late_cancels = late;
		h->late_cap = cap;
	}
	h->late_cancels[h->nlate++] = target;
}

static void handle_cqe(struct uring_hub *h, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	enum tag tag = (enum tag)(ud & 3);
	uint32_t idx = (uint32_t)(ud >> 2) & ((1u << 30) - 1);
	uint32_t gen = (uint32_t)(ud >> 32);

	if (tag == TAG_WAKE && idx == TIMER_SLOT) {
		/* Fired (or failed): a stale arming's CQE, replaced since,
		 * carries an older generation. */
		if (gen == h->timer.gen && h->timer.at != 0) {
			h->timer.fired = h->timer.at;
			h->timer.at = 0;
		}
		return;
	}
	if (tag == TAG_WAKE) {
		uint64_t v;
		ssize_t ignored = read(h->wake_fd, &v, sizeof(v));

		(void)ignored;
		atomic_store_explicit(&h->wake_pending, false, memory_order_release);
		/* The kernel may end a multishot poll at will: arm a new one. */
		if (!(cqe->flags & IORING_CQE_F_MORE))
			h->wake_unarmed = true;
		return;
	}
	struct gr_op *op = NULL;
	if (idx < h->nslots && h->slots[idx].gen == gen)
		op = h->slots[idx].op; /* NULL: its slot was reused since */
	uint64_t op_ud = (ud & ~(uint64_t)3) | TAG_OP;

	if (tag == TAG_LINK_TIMEOUT && cqe->res == -ETIME && op &&
	    (op->backend_data[3] & OWN_TIMER)) {
		/* A file kind's own deadline passed (see the top of this file). */
		op->backend_data[3] = 0;
		cancel_soon(h, op_ud);
		return;
	}
	if (tag != TAG_OP || !op)
		return; /* a linked timeout or a cancel request: the op's CQE follows */
	int64_t res = cqe->res;

	if (op->backend_data[3] & OWN_TIMER) {
		/* Done before its deadline: remove the timer. If the SQ is full
		 * it stays, and its CQE finds the slot reused. */
		struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);

		if (sqe) {
			io_uring_prep_timeout_remove(sqe, (ud & ~(uint64_t)3) | TAG_LINK_TIMEOUT, 0);
			io_uring_sqe_set_data64(sqe, (ud & ~(uint64_t)3) | TAG_CANCEL);
		}
	}
	slot_free(h, idx);
	if (op->kind == GR_OP_TIMEOUT && res == -ETIME)
		res = 0; /* a timeout succeeds by expiring */
	/* The kernel's internal restart codes (ERESTARTSYS 512 to
	 * ERESTART_RESTARTBLOCK 516) leak into CQEs when a cancel interrupts a
	 * request blocked in an io-wq worker (seen on Linux 6.18 with an open of
	 * a FIFO that waits for its writer). They mean EINTR. */
	if (res <= -512 && res >= -516)
		res = -EINTR;
	gr_hub_complete(op, res);
}

static int reap(struct uring_hub *h)
{
	int total = 0;

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;

		io_uring_for_each_cqe(&h->ring, head, cqe) {
			handle_cqe(h, cqe);
			n++;
		}
		io_uring_cq_advance(&h->ring, n);
		total += (int)n;
		/* CQEs the kernel kept aside while the CQ was full come back
		 * only when asked. */
		if (!io_uring_cq_has_overflow(&h->ring))
			break;
		int r = io_uring_get_events(&h->ring);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			return r;
	}
	return total;
}

/* Make room for `need` SQEs: submit what is queued (reaping if the kernel
 * pushes back) until there is space. */
static int reserve_slow(struct uring_hub *h, unsigned need)
{
	int stuck = 0;

	/* A ring smaller than one request could never make room. */
	if (need > h->ring.sq.ring_entries)
		return -EINVAL;
	while (io_uring_sq_space_left(&h->ring) < need) {
		int r = io_uring_submit(&h->ring);

		if (r >= 0 || r == -EINTR)
			continue;
		if (r != -EBUSY && r != -EAGAIN)
			return r;
		/* The kernel wants us to reap first (CQ overflow backlog, or
		 * no memory for a request). */
		int got = reap(h);
		if (got < 0)
			return got;
		if (got == 0 && ++stuck > 1000)
			return r;
	}
	return 0;
}

/* Every submit and cancel asks: inline while the SQ has room, which is
 * nearly always (the call out of line cost ~25 instructions per op). */
static inline int reserve(struct uring_hub *h, unsigned need)
{
	if (__builtin_expect(io_uring_sq_space_left(&h->ring) >= need, 1))
		return 0;
	return reserve_slow(h, need);
}

static void deadline_timespec(const struct gr_op *op, struct __kernel_timespec *ts)
{
	ts->tv_sec = op->deadline / GR_SEC;
	ts->tv_nsec = op->deadline % GR_SEC;
}

/* ------------------------------------------------------------ the ops */

static int uring_submit(void *state, struct gr_op *op)
{
	struct uring_hub *h = state;
	/* A plain timeout is its own deadline; a file kind with one gets a
	 * timeout of its own (see the top of this file); anything else a
	 * linked timeout. */
	bool timed = op->deadline != GR_FOREVER && op->kind != GR_OP_TIMEOUT;
	bool own_timer = timed && file_kind(op);
	bool linked = timed && !own_timer;
	struct __kernel_timespec *ts = (struct __kernel_timespec *)&op->backend_data[0];
	/* The kernel takes at most INT_MAX bytes per call anyway. */
	unsigned len = op->len > (size_t)INT_MAX ? (unsigned)INT_MAX : (unsigned)op->len;
	uint64_t off = op->off < 0 ? (uint64_t)-1 : (uint64_t)op->off;
	uint64_t ud;
	int r;

	_Static_assert(sizeof(op->backend_data[0]) * 2 >= sizeof(struct __kernel_timespec),
		       "the timespec lives in backend_data[0..1]");
	if (op->kind >= GR_OP_KIND_COUNT)
		return -EINVAL;
	if (h->refused & (1u << op->kind))
		return -EOPNOTSUPP; /* the core makes the call on its pool */
	r = reserve(h, timed ? 2 : 1);
	if (r < 0)
		return r;
	r = slot_alloc(h, op, &ud);
	if (r < 0)
		return r;
	op->backend_data[2] = (uintptr_t)ud;
	op->backend_data[3] = 0;

	struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);
	switch (op->kind) {
	case GR_OP_NOP:
		io_uring_prep_nop(sqe);
		break;
	case GR_OP_READ:
		io_uring_prep_read(sqe, op->fd, op->buf, len, off);
		break;
	case GR_OP_WRITE:
		io_uring_prep_write(sqe, op->fd, op->buf, len, off);
		break;
	case GR_OP_READV:
		io_uring_prep_readv(sqe, op->fd, op->iov, (unsigned)op->iovcnt, off);
		break;
	case GR_OP_WRITEV:
		io_uring_prep_writev(sqe, op->fd, op->iov, (unsigned)op->iovcnt, off);
		break;
	case GR_OP_RECV:
		io_uring_prep_recv(sqe, op->fd, op->buf, len, op->flags);
		break;
	case GR_OP_SEND:
		io_uring_prep_send(sqe, op->fd, op->buf, len, op->flags);
		break;
	case GR_OP_RECVMSG:
		io_uring_prep_recvmsg(sqe, op->fd, op->msg, (unsigned)op->flags);
		break;
	case GR_OP_SENDMSG:
		io_uring_prep_sendmsg(sqe, op->fd, op->msg, (unsigned)op->flags);
		break;
	case GR_OP_ACCEPT:
		io_uring_prep_accept(sqe, op->fd, op->addr, op->addrlen, op->flags);
		break;
	case GR_OP_CONNECT:
		io_uring_prep_connect(sqe, op->fd, op->addr, op->addrlen_value);
		break;
	case GR_OP_POLL:
		io_uring_prep_poll_add(sqe, op->fd, (unsigned)op->events);
		break;
	case GR_OP_TIMEOUT:
		/* The kernel copies the timespec when it consumes the SQE, at
		 * our next submit; it lives in the op until then. */
		deadline_timespec(op, ts);
		io_uring_prep_timeout(sqe, ts, 0, IORING_TIMEOUT_ABS);
		break;
	case GR_OP_CLOSE:
		io_uring_prep_close(sqe, op->fd);
		break;
	case GR_OP_WAITID:
		prep_waitid(sqe, op);
		break;
	case GR_OP_OPENAT:
		io_uring_prep_openat(sqe, op->fd, op->path, op->flags, (mode_t)op->mode);
		/* The kernel first tries an open inline with O_NONBLOCK forced
		 * on, which changes what opening a FIFO or a device does: a
		 * reader of a FIFO gets it at once instead of waiting for a
		 * writer (its reads then see end of file), a writer gets ENXIO
		 * (measured on Linux 6.18). From an io-wq worker (IOSQE_ASYNC)
		 * the open is open(2)'s, waits included, and a cancel still
		 * interrupts the wait. Only opens that cannot wait skip it:
		 * they are about 3 us cheaper (docs/files.md). */
		if (!(op->flags & (O_NONBLOCK | O_PATH | O_DIRECTORY)))
			sqe->flags |= IOSQE_ASYNC;
		break;
	case GR_OP_STATX:
		io_uring_prep_statx(sqe, op->fd, op->path, op->flags, op->mode, op->buf);
		break;
	case GR_OP_FSYNC:
		io_uring_prep_fsync(sqe, op->fd,
				    (op->flags & GR_FSYNC_DATASYNC) ? IORING_FSYNC_DATASYNC : 0);
		break;
	case GR_OP_SPLICE:
		io_uring_prep_splice(sqe, op->fd_in, op->off_in, op->fd, -1, len,
				     (unsigned)op->flags);
		break;
	}
	io_uring_sqe_set_data64(sqe, ud);
	if (own_timer) {
		deadline_timespec(op, ts); /* copied by the kernel at submission */
		struct io_uring_sqe *tsqe = io_uring_get_sqe(&h->ring);
		io_uring_prep_timeout(tsqe, ts, 0, IORING_TIMEOUT_ABS);
		io_uring_sqe_set_data64(tsqe, (ud & ~(uint64_t)3) | TAG_LINK_TIMEOUT);
		op->backend_data[3] = OWN_TIMER;
	}
	if (linked) {
		sqe->flags |= IOSQE_IO_LINK;
		deadline_timespec(op, ts);
		struct io_uring_sqe *lsqe = io_uring_get_sqe(&h->ring);
		io_uring_prep_link_timeout(lsqe, ts, IORING_TIMEOUT_ABS);
		io_uring_sqe_set_data64(lsqe, (ud & ~(uint64_t)3) | TAG_LINK_TIMEOUT);
	}
	return 0;
}

static int uring_cancel(void *state, struct gr_op *op)
{
	struct uring_hub *h = state;
	int r = reserve(h, 1);

	if (r < 0)
		return r;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);
	uint64_t target = (uint64_t)op->backend_data[2];
	/* Its CQE says whether the cancel found the op (0), found it already
	 * running (-EALREADY) or finished (-ENOENT); in every case the op's own
	 * CQE is what wakes its fiber. */
	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, (target & ~(uint64_t)3) | TAG_CANCEL);
	return 0;
}

static void arm_wake(struct uring_hub *h)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);

	/* With a full SQ, try again at the next wait(). */
	h->wake_unarmed = sqe == NULL;
	if (sqe) {
		io_uring_prep_poll_multishot(sqe, h->wake_fd, POLLIN);
		io_uring_sqe_set_data64(sqe, encode(WAKE_SLOT, 0, TAG_WAKE));
	}
}

/* Whether the ring's timer ends a wait by `deadline`: it is armed no later,
 * or is now (a timer sooner than the armed one replaces it). False: the
 * wait must be timed itself (no room in the SQ, or this deadline's timer
 * already fired, see the top of this file). */
static bool ring_timer_by(struct uring_hub *h, int64_t deadline)
{
	if (h->timer.at != 0 && h->timer.at <= deadline)
		return true;
	if (deadline <= h->timer.fired)
		return false;
	unsigned need = h->timer.at != 0 ? 2 : 1;
	if (io_uring_sq_space_left(&h->ring) < need)
		return false;
	struct io_uring_sqe *sqe;
	if (h->timer.at != 0) {
		sqe = io_uring_get_sqe(&h->ring);
		io_uring_prep_timeout_remove(sqe, encode(TIMER_SLOT, h->timer.gen, TAG_WAKE), 0);
		io_uring_sqe_set_data64(sqe, encode(WAKE_SLOT, 0, TAG_CANCEL));
	}
	h->timer.gen++;
	h->timer.ts.tv_sec = deadline / GR_SEC;
	h->timer.ts.tv_nsec = deadline % GR_SEC;
	sqe = io_uring_get_sqe(&h->ring);
	io_uring_prep_timeout(sqe, &h->timer.ts, 0, IORING_TIMEOUT_ABS);
	io_uring_sqe_set_data64(sqe, encode(TIMER_SLOT, h->timer.gen, TAG_WAKE));
	h->timer.at = deadline;
	return true;
}

/* Submit what is queued and wait for `min` completions, up to ts (NULL: no
 * bound): one io_uring_enter, as liburing's io_uring_submit_and_wait and
 * io_uring_submit_and_wait_timeout make, but without their checks and, for
 * the timed one, its loop, which peeks at the CQ before and after the
 * call: about 135 instructions a wait more than an untimed one, and the
 * untimed one 35 more than this (callgrind). The hub reaps right after
 * anyway. A timed wait needs IORING_FEAT_EXT_ARG (5.11); the caller falls
 * back to liburing without it. */
static int submit_and_wait(struct uring_hub *h, unsigned min, const struct __kernel_timespec *ts)
{
	struct io_uring_sq *sq = &h->ring.sq;
	unsigned tail = sq->sqe_tail;

	/* liburing's own flush: the SQEs it handed out become the kernel's. */
	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		io_uring_smp_store_release(sq->ktail, tail);
	}
	unsigned n = tail - IO_URING_READ_ONCE(*sq->khead);
	unsigned fd = (unsigned)h->ring.enter_ring_fd;
	if (!ts)
		return io_uring_enter2(fd, n, min, IORING_ENTER_GETEVENTS | h->enter_flags, NULL,
				       _NSIG / 8);
	struct io_uring_getevents_arg arg = { .ts = (uint64_t)(uintptr_t)ts };
	return io_uring_enter2(fd, n, min, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | h->enter_flags,
			       (sigset_t *)(void *)&arg, sizeof(arg));
}

static int uring_wait(void *state, int64_t timeout_ns)
{
	struct uring_hub *h = state;
	int r;

	if (h->wake_unarmed)
		arm_wake(h);
	/* Cancels that found the SQ full while reaping (cancel_soon). */
	for (uint32_t i = 0; i < h->nlate; i++) {
		r = reserve(h, 1);
		if (r < 0)
			return r;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);
		io_uring_prep_cancel64(sqe, h->late_cancels[i], 0);
		io_uring_sqe_set_data64(sqe, (h->late_cancels[i] & ~(uint64_t)3) | TAG_CANCEL);
	}
	h->nlate = 0;
	if (timeout_ns <= 0) {
		r = submit_and_wait(h, timeout_ns == 0 ? 0 : 1, NULL);
	} else {
		/* liburing's timed wait costs about 200 instructions more than
		 * an untimed one. Reaping first without waiting saved them when
		 * the submission itself completed something (a pipe ping-pong
		 * between two fibers), and cost a second system call whenever
		 * the hub then had to sleep: an echo server with one client
		 * paid 3 to 12% more CPU per message (tools/bench, in one run
		 * beside the build without it). One call, timed. */
		struct __kernel_timespec ts = { .tv_sec = timeout_ns / GR_SEC,
						.tv_nsec = timeout_ns % GR_SEC };
		struct io_uring_cqe *cqe;

		if (h->ring.features & IORING_FEAT_EXT_ARG)
			r = submit_and_wait(h, 1, &ts);
		else
			r = io_uring_submit_and_wait_timeout(&h->ring, &cqe, 1, &ts, NULL);
	}
	if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY && r != -EAGAIN)
		return r;
	return reap(h);
}

static int uring_wait_until(void *state, int64_t timeout_ns, int64_t deadline)
{
	struct uring_hub *h = state;

	return uring_wait(state, ring_timer_by(h, deadline) ? -1 : timeout_ns);
}

static int uring_wake(void *state)
{
	struct uring_hub *h = state;

	if (atomic_exchange_explicit(&h->wake_pending, true, memory_order_acq_rel))
		return 0; /* a wake is already on its way */
	uint64_t one = 1;
	if (write(h->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

static int setup_ring(struct io_uring *ring, unsigned entries)
{
	static const unsigned flag_sets[] = {
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
		IORING_SETUP_SUBMIT_ALL,
		0,
	};
	int r = -EINVAL;

	for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
		struct io_uring_params p;

		memset(&p, 0, sizeof(p));
		/* CLAMP: a large SQ's four-fold CQ is cut to the kernel's limit
		 * rather than refused. */
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
		p.cq_entries = entries * 4;
		r = io_uring_queue_init_params(entries, ring, &p);
		if (r != -EINVAL)
			return r;
	}
	return r;
}

/* The optional kinds whose opcode this kernel lacks, asked of the kernel (a
 * probe, once per hub), since seccomp and backports decide, not the
 * version; all of them if it cannot say. The core makes a refused file kind
 * on its pool, and waits for a child by polling its pidfd: slower, never
 * wrong. GREENRING_URING_NO_WAITID=1 refuses IORING_OP_WAITID anyway: the
 * tests run the fallback on io_uring with it, and it is the way out should
 * a kernel's WAITID misbehave. */
static uint32_t refused_kinds(struct io_uring *ring)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(ring);
	uint32_t refused = 0;

	for (size_t i = 0; i < sizeof(file_opcodes) / sizeof(file_opcodes[0]); i++) {
		if (!p || !io_uring_opcode_supported(p, file_opcodes[i].opcode))
			refused |= 1u << file_opcodes[i].kind;
	}
	if (!p || !io_uring_opcode_supported(p, IORING_OP_WAITID) ||
	    gr__env_flag("GREENRING_URING_NO_WAITID"))
		refused |= 1u << GR_OP_WAITID;
	if (p)
		io_uring_free_probe(p);
	return refused;
}

static int uring_init(void **state, const struct gr_hub_config *cfg)
{
	struct uring_hub *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	unsigned entries = cfg && cfg->entries ? cfg->entries : DEFAULT_ENTRIES;
	int r = setup_ring(&h->ring, entries);
	if (r < 0) {
		free(h);
		return r;
	}
	/* A registered ring fd spares io_uring_enter an fd lookup on every
	 * loop turn (Linux 5.18+); without it everything works the same. */
	if (io_uring_register_ring_fd(&h->ring) == 1)
		h->enter_flags = IORING_ENTER_REGISTERED_RING;
	h->refused = refused_kinds(&h->ring);
	h->free_head = NO_SLOT;
	h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (h->wake_fd < 0) {
		r = -errno;
		io_uring_queue_exit(&h->ring);
		free(h);
		return r;
	}
	/* Armed for the hub's lifetime; it names no fiber memory. */
	arm_wake(h);
	*state = h;
	return 0;
}

static void uring_fini(void *state, int after_fork)
{
	struct uring_hub *h = state;

	/* In a fork child this only unmaps our view of the shared rings and
	 * drops our reference to the ring fd: the parent's ring is untouched. */
	io_uring_queue_exit(&h->ring);
	close(h->wake_fd);
	(void)after_fork;
	free(h->slots);
	free(h->late_cancels);
	free(h);
}

static int uring_probe(char *why, size_t whylen)
{
	struct io_uring ring;
	int r = io_uring_queue_init(4, &ring, 0);

	if (r < 0) {
		gr__why(why, whylen, "io_uring_setup", r);
		return r;
	}
	struct io_uring_probe *p = io_uring_get_probe_ring(&ring);
	if (!p) {
		gr__why(why, whylen, "io_uring_register(PROBE)", -ENOTSUP);
		io_uring_queue_exit(&ring);
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(needed_opcodes) / sizeof(needed_opcodes[0]); i++) {
		if (!io_uring_opcode_supported(p, needed_opcodes[i].opcode)) {
			snprintf(why, whylen, "kernel lacks IORING_OP_%s", needed_opcodes[i].name);
			io_uring_free_probe(p);
			io_uring_queue_exit(&ring);
			return -ENOTSUP;
		}
	}
	io_uring_free_probe(p);
	/* A NOP round trip: seccomp may allow io_uring_setup and still forbid
	 * io_uring_enter. */
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	struct io_uring_cqe *cqe;
	io_uring_prep_nop(sqe);
	r = io_uring_submit_and_wait(&ring, 1);
	if (r < 0) {
		gr__why(why, whylen, "io_uring_enter", r);
		io_uring_queue_exit(&ring);
		return r;
	}
	r = io_uring_peek_cqe(&ring, &cqe);
	if (r == 0 && cqe->res < 0)
		r = cqe->res;
	if (r < 0)
		gr__why(why, whylen, "io_uring NOP", r);
	io_uring_queue_exit(&ring);
	return r < 0 ? r : 0;
}

const struct gr_hub_ops gr__hub_uring_ops = {
	.name = "io_uring",
	.caps = GR_HUB_CAP_COMPLETION | GR_HUB_CAP_WAIT_UNTIL,
	.probe = uring_probe,
	.init = uring_init,
	.fini = uring_fini,
	.submit = uring_submit,
	.cancel = uring_cancel,
	.wait = uring_wait,
	.wake = uring_wake,
	.fd_forget = NULL,
	.wait_until = uring_wait_until,
};
