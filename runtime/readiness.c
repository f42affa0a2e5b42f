/* readiness.c — waiter lists, ready queue, deadlines, cancel and wake-up
 * shared by the epoll and poll backends (see readiness.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"
#include "readiness.h"

#define GR__RD_MIN_FDS 256

/* Where an operation is (backend_data[GR__RD_STATE] & 0xff). */
enum gr__rd_where {
	WHERE_NONE = 0,
	WHERE_LIST_IN = 1 + GR__RD_IN,   /* on a waiter list: list index + 1 */
	WHERE_LIST_OUT = 1 + GR__RD_OUT,
	WHERE_LIST_BOTH = 1 + GR__RD_BOTH,
	WHERE_READY,                     /* on the ready queue, result in the upper bits */
	WHERE_TIMER,                     /* in the timer heap only */
};

static inline struct gr__link *link_of(struct gr_op *op)
{
	return (struct gr__link *)&op->backend_data[GR__RD_LINK];
}

static inline struct gr_op *op_of(struct gr__link *l)
{
	return l ? gr__container(l, struct gr_op, backend_data[GR__RD_LINK]) : NULL;
}

static inline enum gr__rd_where where(const struct gr_op *op)
{
	return (enum gr__rd_where)(op->backend_data[GR__RD_STATE] & 0xff);
}

static inline void set_where(struct gr_op *op, enum gr__rd_where w, uint16_t result)
{
	op->backend_data[GR__RD_STATE] = (uintptr_t)w | (uintptr_t)result << 8;
}

static inline short ready_result(const struct gr_op *op)
{
	return (short)(uint16_t)(op->backend_data[GR__RD_STATE] >> 8);
}

/* ------------------------------------------------------------ setup */

int gr__rd_init(struct gr__rd *r)
{
	memset(r, 0, sizeof(*r));
	gr__timers_init(&r->timers);
	atomic_init(&r->wake_pending, false);
	r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->wake_fd < 0)
		return -errno;
	return 0;
}

void gr__rd_fini(struct gr__rd *r)
{
	if (r->wake_fd >= 0)
		close(r->wake_fd);
	r->wake_fd = -1;
	free(r->fds);
	r->fds = NULL;
	r->nfds = 0;
	gr__timers_fini(&r->timers);
}

struct gr__rd_fd *gr__rd_fd(struct gr__rd *r, int fd)
{
	if (fd < 0)
		return NULL;
	if ((size_t)fd >= r->nfds) {
		size_t n = r->nfds ? r->nfds : GR__RD_MIN_FDS;

		while (n <= (size_t)fd)
			n *= 2;
		struct gr__rd_fd *fds = realloc(r->fds, n * sizeof(*fds));
		if (!fds)
			return NULL;
		memset(fds + r->nfds, 0, (n - r->nfds) * sizeof(*fds));
		r->fds = fds;
		r->nfds = n;
	}
	return &r->fds[fd];
}

int gr__rd_check(const struct gr_op *op)
{
	if (op->kind == GR_OP_TIMEOUT)
		return 0;
	if (op->kind != GR_OP_POLL)
		return -EINVAL;
	return op->fd < 0 ? -EBADF : 0;
}

/* ------------------------------------------------------------ lists */

static enum gr__rd_list list_for(short events)
{
	bool in = events & GR__RD_IN_EVENTS, out = events & GR__RD_OUT_EVENTS;

	/* Asking for neither still waits for an error or hang-up, which wakes
	 * every list: any list will do. */
	return in && out ? GR__RD_BOTH : out ? GR__RD_OUT : GR__RD_IN;
}

/* Take op out of every structure it is in. */
static void detach(struct gr__rd *r, struct gr_op *op)
{
	enum gr__rd_where w = where(op);

	if (w >= WHERE_LIST_IN && w <= WHERE_LIST_BOTH) {
		struct gr__rd_fd *fs = &r->fds[op->fd];

		gr__list_remove(&fs->waiters[w - WHERE_LIST_IN], link_of(op));
		fs->stale = 1;
	} else if (w == WHERE_READY) {
		gr__list_remove(&r->ready, link_of(op));
	}
	gr__timers_remove(&r->timers, op);
	set_where(op, WHERE_NONE, 0);
}

/* ------------------------------------------------------------ arrivals */

int gr__rd_park(struct gr__rd *r, struct gr_op *op)
{
	op->backend_data[GR__TIMER_SLOT] = 0;
	if (op->deadline >= 0) {
		int err = gr__timers_add(&r->timers, op);

		if (err)
			return err;
	}
	if (op->kind == GR_OP_POLL) {
		enum gr__rd_list l = list_for(op->events);

		gr__list_push_back(&r->fds[op->fd].waiters[l], link_of(op));
		set_where(op, (enum gr__rd_where)(WHERE_LIST_IN + l), 0);
	} else {
		set_where(op, WHERE_TIMER, 0);
	}
	return 0;
}

void gr__rd_defer(struct gr__rd *r, struct gr_op *op, short revents)
{
	op->backend_data[GR__TIMER_SLOT] = 0;
	gr__list_push_back(&r->ready, link_of(op));
	set_where(op, WHERE_READY, (uint16_t)revents);
}

/* ------------------------------------------------------------ departures */

static void finish(struct gr__rd *r, struct gr_op *op, int64_t res)
{
	detach(r, op);
	gr_hub_complete(op, res);
}

int gr__rd_fire(struct gr__rd *r, int fd, short revents)
{
	if (fd < 0 || (size_t)fd >= r->nfds)
		return 0;
	bool fail = revents & GR__RD_FAIL_EVENTS;
	bool scan[GR__RD_NLISTS] = {
		[GR__RD_IN] = fail || (revents & GR__RD_IN_EVENTS),
		[GR__RD_OUT] = fail || (revents & GR__RD_OUT_EVENTS),
		[GR__RD_BOTH] = fail || (revents & (GR__RD_IN_EVENTS | GR__RD_OUT_EVENTS)),
	};
	/* Collect first, complete after, so no completion runs while a list is
	 * being walked. The chain reuses the op's link; a chained op is
	 * WHERE_NONE (its completion is under way: a cancel finds nothing to
	 * do) with its result in the state word. */
	struct gr__list chain = { NULL, NULL };

	for (int l = 0; l < GR__RD_NLISTS; l++) {
		if (!scan[l])
			continue;
		gr__list_foreach_safe(it, &r->fds[fd].waiters[l]) {
			struct gr_op *op = op_of(it);
			short res = (short)(revents & (op->events | GR__RD_FAIL_EVENTS));

			if (res) {
				detach(r, op);
				set_where(op, WHERE_NONE, (uint16_t)res);
				gr__list_push_back(&chain, link_of(op));
			}
		}
	}
	int n = 0;
	for (struct gr_op *op; (op = op_of(gr__list_pop_front(&chain))) != NULL; n++) {
		short res = ready_result(op);

		set_where(op, WHERE_NONE, 0);
		gr_hub_complete(op, res);
	}
	return n;
}

int gr__rd_expire(struct gr__rd *r)
{
	int n = 0;

	if (r->timers.n == 0)
		return 0; /* no clock read on the common path */
	int64_t now = gr_now();
	for (struct gr_op *op; (op = gr__timers_pop_expired(&r->timers, now)) != NULL; n++)
		finish(r, op, op->kind == GR_OP_TIMEOUT ? 0 : -ETIMEDOUT);
	return n;
}

int gr__rd_flush(struct gr__rd *r)
{
	int n = 0;

	for (struct gr_op *op; (op = op_of(r->ready.first)) != NULL; n++) {
		short res = ready_result(op);

		finish(r, op, res);
	}
	return n;
}

int gr__rd_cancel(struct gr__rd *r, struct gr_op *op)
{
	if (where(op) == WHERE_NONE)
		return -ENOENT; /* not ours, or already completed */
	finish(r, op, -ECANCELED);
	return 0;
}

int64_t gr__rd_timeout(const struct gr__rd *r, int64_t timeout_ns)
{
	if (!gr__list_empty(&r->ready))
		return 0;
	if (r->timers.n == 0)
		return timeout_ns;
	return gr__timers_timeout(&r->timers, timeout_ns, gr_now());
}

short gr__rd_fd_events(const struct gr__rd_fd *fs)
{
	short ev = 0;

	for (int l = 0; l < GR__RD_NLISTS; l++) {
		gr__list_foreach(it, &fs->waiters[l])
			ev |= op_of(it)->events;
	}
	return ev;
}

/* ------------------------------------------------------------ wake-up */

int gr__rd_wake(struct gr__rd *r)
{
	/* acq_rel: whatever the waker published before waking is visible to
	 * the hub once it drains (gr__rd_wake_drain exchanges the flag too). */
	if (atomic_exchange_explicit(&r->wake_pending, true, memory_order_acq_rel))
		return 0; /* a wake is already on its way */
	uint64_t one = 1;
	/* EAGAIN: the counter is full, so the eventfd is readable anyway. */
	if (write(r->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
		int err = -errno;

		/* Nothing is on its way after all: let the next wake try. */
		atomic_store_explicit(&r->wake_pending, false, memory_order_release);
		return err;
	}
	return 0;
}

void gr__rd_wake_drain(struct gr__rd *r)
{
	uint64_t v;

	/* Drain first, then re-open the gate: a wake that lands in between
	 * finds the flag still set and skips its write, but this wait() is
	 * returning anyway. The other order could leave the flag set with an
	 * empty eventfd, and every later wake would be swallowed. A
	 * non-blocking eventfd read fails only with EAGAIN (already empty);
	 * whatever happens, the gate must re-open. */
	if (read(r->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		fprintf(stderr, "greenring: wake-up eventfd: %s\n", strerror(errno));
	atomic_exchange_explicit(&r->wake_pending, false, memory_order_acq_rel);
}
