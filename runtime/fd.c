/* fd.c — what the hub knows per fd number: the operations in flight that
 * name it (so gr_close can cancel them and wait for them), a gr_close under
 * way, the audit of long waits on fds closed behind the runtime's back, and
 * what belongs to the file behind the number: its per-fd deadlines
 * (gr_fd_set_deadline) and whether it is a socket (io.c writes to sockets
 * with MSG_NOSIGNAL).
 *
 * Per-fd deadlines. Each call's park record says which directions bound it
 * (fd_dirs) and its own deadline (limit); the effective deadline is the
 * sooner of that, the fiber's and the fd's. A deadline set while calls wait
 * cancels those whose effective deadline changes, for a retime: the gate
 * (wait.c) submits the operation again under the new deadline if it moved
 * no data. A retime is the weakest cancel reason: a kill, a deadline or a
 * gr_close arriving on top of it ends the call as they always do.
 *
 * The table is indexed by fd number, in chunks allocated on first use and
 * never moved, so a pointer to an fd's state (and the wait queue inside it)
 * stays valid for the hub's life: nobody has to re-fetch it after a switch.
 *
 * Audits. greenring takes raw fds, and a program (or a library it calls)
 * may close() one while a fiber waits on it. The readiness hubs then wait on
 * a registration the kernel has dropped (epoll) and the fiber would hang with
 * no word said. So the hub audits long waits: when the soonest check is due
 * it walks the fds with operations in flight, and each fd whose operations
 * have waited since before the last epoch (100 ms of the clock) is checked,
 * then again after 2, 4, ... up to 64 epochs while it keeps waiting. An fd's
 * first operation pulls the next walk in to an epoch away (gr__fd_busy), so
 * a new wait is first checked after one to two epochs whatever the others'
 * backoff. The check is the backend's
 * fd_audit (epoll re-arms the registration, re-registering a number that now
 * names another file) or, without one, fcntl(F_GETFD). A closed fd's waiters
 * are woken with EBADF and one line on stderr. On a completion backend
 * (io_uring) an open number's waiting operations are submitted again, so
 * that one closed with close() and reused binds them to its new file instead
 * of leaving them on the old one, which they keep open. Short waits, which are all a
 * busy server has, are never checked: the audit costs nothing per operation,
 * and a clock read per loop turn only while fds wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define CHUNK GR__FD_CHUNK
#define AUDIT_GAP_MAX 64

struct gr__fdstate *gr__fd_state_make(struct gr__hub *hub, int fd)
{
	struct gr__fdstate *st = gr__fd_peek(hub, fd);

	if (st)
		return st;
	/* Grow only for an open fd: a bad number (100000, INT_MAX) must be
	 * EBADF, not a table of 2^31 entries. */
	if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
		errno = EBADF;
		return NULL;
	}
	size_t c = (size_t)fd / CHUNK;
	if (c >= hub->fd_nchunks) {
		size_t n = hub->fd_nchunks ? hub->fd_nchunks : 4;

		while (n <= c)
			n *= 2;
		struct gr__fdstate **chunks = realloc(hub->fd_chunks, n * sizeof(*chunks));
		if (!chunks) {
			errno = ENOMEM;
			return NULL;
		}
		memset(chunks + hub->fd_nchunks, 0, (n - hub->fd_nchunks) * sizeof(*chunks));
		hub->fd_chunks = chunks;
		hub->fd_nchunks = n;
	}
	hub->fd_chunks[c] = calloc(CHUNK, sizeof(struct gr__fdstate));
	if (!hub->fd_chunks[c]) {
		errno = ENOMEM;
		return NULL;
	}
	return &hub->fd_chunks[c][(size_t)fd % CHUNK];
}

void gr__fd_table_free(struct gr__hub *hub)
{
	for (size_t c = 0; c < hub->fd_nchunks; c++)
		free(hub->fd_chunks[c]);
	free(hub->fd_chunks);
	hub->fd_chunks = NULL;
	hub->fd_nchunks = 0;
}

/* gr__fd_link (internal.h) when its fast path cannot: the fd's state is
 * not known yet (made here for an open fd), a gr_close of it is under way,
 * or this hub's claim on it is not recorded yet. */
int gr__fd_link_slow(struct gr__hub *hub, struct gr__op *o, struct gr__fdstate *st)
{
	if (!st)
		st = gr__fd_state(hub, o->op.fd);
	if (!st)
		return errno == EBADF ? -EBADF : -ENOMEM;
	if (st->closing && o->op.kind != GR_OP_CLOSE && gr__fd_still_held(o->op.fd, st))
		return -EBADF;
	if (gr__list_empty(&st->ops)) {
		gr__fd_busy(hub);
		/* Once per fd and hub (until it closes the fd), not per
		 * operation: the record other threads' gr_close reads. */
		if (!st->claimed && o->op.kind != GR_OP_CLOSE)
			gr__fd_claim(hub, o->op.fd, st);
	}
	gr__list_push_back(&st->ops, &o->fd_link);
	o->fd_st = st;
	o->on_fd = true;
	return 0;
}

/* The rest of gr__fd_unlink (internal.h) once o is off the list, when a
 * gr_close of the fd is under way or o is the close itself. */
void gr__fd_unlink_close(struct gr__hub *hub, struct gr__op *o, struct gr__fdstate *st)
{
	/* gr_close's own close ended (or could not start): the number is free
	 * from this moment, before the closer runs again. */
	if (o->op.kind == GR_OP_CLOSE)
		st->closing = 0;
	if (!gr__list_empty(&st->ops))
		return;
	hub->fds_busy--;
	st->audit_at = 0;
	if (st->closing && !gr__waitq_empty(&st->closers))
		gr__unpark(gr__waitq_first(&st->closers), 0);
}

/* Cancel with `why` every operation on st that `wanted` picks. A cancel may
 * complete, and so unlink, any operation of the fd (a readiness backend
 * completes the one cancelled; io_uring may reap others to make room for
 * the cancel), so no link saved across it can be trusted: start again from
 * the head each time. `wanted` must refuse what it has had cancelled. */
static void cancel_each(struct gr__hub *hub, struct gr__fdstate *st, int why,
			bool (*wanted)(struct gr__hub *hub, const struct gr__op *o, unsigned arg),
			unsigned arg)
{
	for (;;) {
		struct gr__op *todo = NULL;

		gr__list_foreach(it, &st->ops) {
			struct gr__op *o = gr__container(it, struct gr__op, fd_link);

			if (wanted(hub, o, arg)) {
				todo = o;
				break;
			}
		}
		if (!todo)
			return;
		gr__op_cancel(hub, todo, why);
	}
}

/* Not cancelled yet for a reason that ends the call (a retime does not). */
static bool not_ending(struct gr__hub *hub, const struct gr__op *o, unsigned arg)
{
	(void)hub;
	(void)arg;
	return !o->cancel_errno || gr__cancel_weak(o->cancel_errno);
}

void gr__fd_cancel_all(struct gr__hub *hub, struct gr__fdstate *st, int why)
{
	cancel_each(hub, st, why, not_ending, 0);
}

/* ------------------------------------------------------------ per file */

enum gr__fd_kind gr__fd_kind_of_mode(unsigned mode)
{
	if (S_ISSOCK(mode))
		return GR__FD_SOCKET;
	/* What poll(2) calls always ready but whose reads and writes may wait
	 * for a disk; everything else (pipes, ttys, eventfds...) says when it
	 * is ready. */
	return S_ISREG(mode) || S_ISBLK(mode) ? GR__FD_FILE : GR__FD_STREAM;
}

/* drain.c's hint and what it learnt of the file: a new file's own. */
static void forget_drain(struct gr__fdstate *st)
{
	st->drains = GR__DRAINS_UNKNOWN;
	st->drained_at = 0;
}

static void set_kind(struct gr__fdstate *st, enum gr__fd_kind kind)
{
	if (st->kind != kind) {
		st->kind = (uint8_t)kind;
		st->nowait_refused = 0;
		st->nowait_taken = 0;
	}
}

int gr__fd_kind_check(struct gr__hub *hub, int fd)
{
	struct gr__fdstate *st = gr__fd_state(hub, fd);
	struct stat sb;

	if (!st)
		return errno == EBADF ? -EBADF : -ENOMEM;
	if (fstat(fd, &sb) < 0)
		return -errno;
	enum gr__fd_kind kind = gr__fd_kind_of_mode(sb.st_mode);
	set_kind(st, kind);
	return kind;
}

int gr__fd_kind(struct gr__hub *hub, int fd)
{
	struct gr__fdstate *st = gr__fd_state(hub, fd);

	if (!st)
		return errno == EBADF ? -EBADF : -ENOMEM;
	if (st->kind != GR__FD_UNKNOWN)
		return st->kind;
	return gr__fd_kind_check(hub, fd);
}

void gr__fd_set_kind(struct gr__hub *hub, int fd, enum gr__fd_kind kind)
{
	struct gr__fdstate *st = gr__fd_state(hub, fd);

	if (st) {
		set_kind(st, kind);
		/* A socket just connected: whether it drains is its own. */
		forget_drain(st);
	}
}

void gr__fd_doubt(struct gr__fdstate *st)
{
	st->kind = GR__FD_UNKNOWN;
	st->nowait_refused = 0;
	st->nowait_taken = 0;
}

void gr__fd_forget(struct gr__fdstate *st)
{
	gr__fd_doubt(st);
	forget_drain(st);
	st->deadline[0] = st->deadline[1] = 0;
}

void gr__fd_born(struct gr__hub *hub, int fd, enum gr__fd_kind kind)
{
	struct gr__fdstate *st = gr__fd_state(hub, fd);

	if (st) {
		gr__fd_forget(st);
		st->kind = (uint8_t)kind;
	}
}

/* An operation whose call is bounded by the fd's deadlines of `dirs`, not
 * being ended already, and whose deadline the new ones change. */
static bool needs_retime(struct gr__hub *hub, const struct gr__op *o, unsigned dirs)
{
	const struct gr__park *p = o->park;

	if (o->cancel_errno || !(p->fd_dirs & dirs) || o->op.kind == GR_OP_CLOSE)
		return false;
	int64_t want = gr__deadline_min(gr__deadline_min(p->limit, p->fiber->deadline),
					gr__fd_deadline(hub, o->op.fd, p->fd_dirs));
	return want != o->op.deadline;
}

int gr_fd_set_deadline(int fd, int dirs, int64_t deadline)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub)
		return err;
	if (fd < 0)
		return -EBADF;
	if (dirs == 0 || (dirs & ~(GR_FD_READ | GR_FD_WRITE)))
		return -EINVAL;
	struct gr__fdstate *st = gr__fd_state(hub, fd);
	if (!st)
		return errno == EBADF ? -EBADF : -ENOMEM;
	/* A first deadline for a number the table knew already: make sure it
	 * names an open file (later sets, before every read, cost nothing). */
	if (deadline >= 0 && !st->deadline[0] && !st->deadline[1] && fcntl(fd, F_GETFD) < 0)
		return -EBADF;
	/* 0 is a pure try's deadline everywhere else: a past one is kept as 1. */
	int64_t kept = deadline < 0 ? 0 : deadline == 0 ? 1 : deadline;
	if (dirs & GR_FD_READ)
		st->deadline[0] = kept;
	if (dirs & GR_FD_WRITE)
		st->deadline[1] = kept;
	/* Calls waiting now: cancelled for a retime, they wait again under the
	 * new deadline (or fail with ETIMEDOUT if it has passed), wait.c. */
	cancel_each(hub, st, GR__RETIME, needs_retime, (unsigned)dirs);
	return 0;
}

/* ------------------------------------------------------------ audits */

static int check_open(struct gr__hub *hub, int fd)
{
	if (hub->ops->fd_audit)
		return hub->ops->fd_audit(hub->backend, fd);
	return fcntl(fd, F_GETFD) < 0 && errno == EBADF ? -EBADF : 0;
}

static void report_closed(struct gr__hub *hub, int fd, struct gr__fdstate *st)
{
	size_t n = 0;
	const struct gr__park *first = NULL;

	gr__list_foreach(it, &st->ops) {
		const struct gr__op *o = gr__container(it, struct gr__op, fd_link);

		if (!first)
			first = o->park;
		n++;
	}
	fprintf(stderr,
		"greenring: %s hub: fd %d was closed with close() while %zu operation%s waited on it "
		"(fiber %llu \"%s\" in %s): they fail with EBADF; close such fds with gr_close()\n",
		hub->ops->name, fd, n, n == 1 ? "" : "s",
		first ? (unsigned long long)first->fiber->id : 0ULL, first ? first->fiber->name : "",
		first && first->what ? first->what : "a green call");
}

/* What a completion backend may submit again when the audit refreshes its
 * long waits: the calls that a cancel stops without moving data (or that
 * complete instead), made through the green calls' path (io.c), whose park
 * record keeps the call's own deadline for the retime (fd_dirs set; the
 * runtime's own waits, a signalfd's, keep none). Not connect: its cancel
 * aborts the attempt. */
static bool refreshable(struct gr__hub *hub, const struct gr__op *o, unsigned arg)
{
	(void)hub;
	(void)arg;
	if (o->cancel_errno || o->offload || !o->park->fd_dirs)
		return false;
	switch (o->op.kind) {
	case GR_OP_READ:
	case GR_OP_READV:
	case GR_OP_RECV:
	case GR_OP_RECVMSG:
	case GR_OP_WRITE:
	case GR_OP_WRITEV:
	case GR_OP_SEND:
	case GR_OP_SENDMSG:
	case GR_OP_ACCEPT:
	case GR_OP_POLL:
		return true;
	default:
		return false;
	}
}

/* Of the refreshable: a read or write at the file's position, which io.c
 * serves either through the backend or the readiness hubs' way, chosen by
 * what it learnt of the file (io.c, completes_in_backend). */
static bool served_by_choice(struct gr__hub *hub, const struct gr__op *o, unsigned arg)
{
	const struct gr_op *op = &o->op;

	return refreshable(hub, o, arg) && op->off < 0 &&
	       (op->kind == GR_OP_READ || op->kind == GR_OP_READV || op->kind == GR_OP_WRITE ||
		op->kind == GR_OP_WRITEV);
}

/* A wait for readiness that a read or write of a stream makes before it
 * tries its call again (io.c, gr__park_ready): ended early, it only tries
 * once more. */
static bool tries_again(struct gr__hub *hub, const struct gr__op *o, unsigned arg)
{
	(void)hub;
	(void)arg;
	return o->tries_again && !o->cancel_errno;
}

static void audit_one(struct gr__hub *hub, int fd, struct gr__fdstate *st, uint32_t epoch)
{
	if (st->audit_at == 0) {
		/* First seen waiting: check once it has waited an epoch. */
		st->audit_at = epoch + 1;
		st->audit_gap = 1;
		return;
	}
	if (epoch < st->audit_at)
		return;
	st->audit_gap = st->audit_gap >= AUDIT_GAP_MAX / 2 ? AUDIT_GAP_MAX : st->audit_gap * 2;
	st->audit_at = epoch + st->audit_gap;
	if (check_open(hub, fd) == -EBADF) {
		report_closed(hub, fd, st);
		gr__fd_cancel_all(hub, st, EBADF);
		return;
	}
	/* On every hub: a stream's read or write waiting for readiness tries
	 * its call again. The number may name another file now (closed with
	 * close() and reused, dup2), one that read(2) answers at once but
	 * that never becomes ready: a FIFO no writer has opened (end of
	 * file). On the same file the try says EAGAIN and the call waits
	 * again; the audit backs off as for any long wait. */
	cancel_each(hub, st, GR__REDECIDE, tries_again, 0);
	if (!hub->ops->fd_audit && (hub->ops->caps & GR_HUB_CAP_COMPLETION)) {
		/* An operation a completion backend holds keeps the file it was
		 * submitted on. If the number was closed with close() and now
		 * names another file (no check above can tell), the operation
		 * would wait on the old one for ever, and keep it open: a
		 * socket's peer never sees the close. Cancelled for a retime,
		 * it moved nothing and is submitted again (wait.c), on what
		 * the number names now; a socket call on a pipe then fails
		 * with ENOTSOCK. On the same file, it just waits on.
		 * What was learnt of the file is doubted too: a read that
		 * went to the backend because the number named a pipe would
		 * wait for ever on a FIFO that never had a writer, which
		 * read(2) answers at once. Such a call goes back to io.c
		 * (GR__REDECIDE), which asks the file again. */
		gr__fd_doubt(st);
		cancel_each(hub, st, GR__REDECIDE, served_by_choice, 0);
		cancel_each(hub, st, GR__RETIME, refreshable, 0);
	}
}

int64_t gr__fd_audit(struct gr__hub *hub, int64_t now)
{
	if (hub->fds_busy == 0) {
		hub->audit_due = 0;
		return GR_FOREVER;
	}
	if (hub->audit_due == 0) {
		/* Waits have begun since the last audit: plan one an epoch away. */
		hub->audit_due = now + GR__FD_AUDIT_EPOCH;
		return hub->audit_due;
	}
	if (now < hub->audit_due)
		return hub->audit_due;

	/* Epochs of the clock, not walks: a walk comes when the soonest check
	 * is due, so walks counted as epochs would stretch every gap by the
	 * others' (a check backed off to 64 epochs came after minutes). */
	uint32_t epoch = (uint32_t)(now / GR__FD_AUDIT_EPOCH);
	uint32_t next = UINT32_MAX;
	for (size_t c = 0; c < hub->fd_nchunks; c++) {
		struct gr__fdstate *chunk = hub->fd_chunks[c];

		if (!chunk)
			continue;
		for (size_t i = 0; i < CHUNK; i++) {
			struct gr__fdstate *st = &chunk[i];

			if (gr__list_empty(&st->ops) || st->closing)
				continue;
			audit_one(hub, (int)(c * CHUNK + i), st, epoch);
			if (st->audit_at && st->audit_at < next)
				next = st->audit_at;
		}
	}
	if (next == UINT32_MAX) {
		hub->audit_due = 0;
		return GR_FOREVER;
	}
	hub->audit_due = now + (int64_t)(next - epoch) * GR__FD_AUDIT_EPOCH;
	return hub->audit_due;
}
