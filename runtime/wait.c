/* wait.c — the one parking gate: every blocking call of the runtime parks here.
 *
 * A blocking call is three steps, always in this order:
 *   1. gr__park_hub: may this context park at all (a fiber, not the hub)?
 *   2. gr__park_begin: the pre-block checks. A killed fiber fails with
 *      ECANCELED; the effective deadline is the sooner of the call's and the
 *      fiber's own (eventlet's Timeout), and one already past fails with
 *      ETIMEDOUT. Pure tries (deadline 0) and uncancellable calls (close)
 *      skip both, so a killed fiber can still drain what is there and close.
 *   3. one of the two parks:
 *      gr__park_op     an operation handed to the backend; only its
 *                      completion resumes the fiber;
 *      gr__park_queue  a wait queue; gr__unpark() or the deadline timer
 *                      resumes it, and the timer is drained before return.
 * and the result is mapped back here (op_result): one place decides what a
 * cancelled or timed-out operation returns. An operation cancelled because
 * its per-fd deadline moved (GR__RETIME, fd.c) and that moved no data is
 * submitted again here, under the new deadline, without the caller knowing;
 * one the audit of long waits doubts (GR__REDECIDE, fd.c) goes back to its
 * caller with -EAGAIN, to be served again as what the fd names now.
 *
 * The record of the call, struct gr__park, lives on the parked fiber's stack
 * and is reachable from the fiber (f->park) for as long as the call lasts,
 * including while a woken fiber still has its deadline timer in flight. That
 * is what lets kill, thread exit, fork and a failing backend find every
 * operation in flight without a list of their own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "internal.h"

struct gr__hub *gr__park_hub_slow(int *err)
{
	struct gr__hub *hub;

	*err = gr__hub_outside(&hub);
	if (*err)
		return NULL;
	/* The first park needs the hub's fiber. Created here, before anything
	 * is queued, so that failing to map its stack is this call's ENOMEM
	 * rather than a scheduler with nowhere to switch to. */
	if (!gr__hub_loop_fiber(hub)) {
		*err = -ENOMEM;
		return NULL;
	}
	return hub;
}

/* The gate's first question asked from outside, without its side effect
 * (gr__park_hub makes the hub and its loop fiber): a thread with no hub
 * answers no rather than getting one. Before the loop fiber exists the
 * caller is the main context (current == root, loop NULL), which may park. */
int gr_can_park(void)
{
	struct gr__hub *hub = gr__tls_hub;

	return hub && hub->current != hub->loop;
}

int gr__park_again(const struct gr__park *p)
{
	if (p->deadline == 0 || p->uncancellable)
		return 0;
	if (p->fiber->killed)
		return -ECANCELED;
	if (p->deadline != GR_FOREVER && p->deadline <= gr_now())
		return gr__deadline_passed();
	return 0;
}

int gr__deadline_passed(void)
{
	gr__tls_hub->counters.deadlines++;
	return -ETIMEDOUT;
}

/* ------------------------------------------------------------ operations */

void gr_hub_complete(struct gr_op *op, int64_t res)
{
	struct gr__hub *hub = gr__tls_hub;
	struct gr__op *o = gr__op_of(op);

	o->res = res;
	if (o->on_fd)
		gr__fd_unlink(hub, o);
	hub->inflight--;
	hub->counters.completed[op->kind]++;
	if (o->park->op == o)
		o->park->op = NULL;
	/* The common case, an operation its fiber waits for, without a call
	 * through a pointer: a fifth of this function's cost per completion
	 * (callgrind, a pipe round trip on io_uring). */
	if (o->on_complete)
		o->on_complete(o);
	else
		gr__ready(o->park->fiber);
}

/* What the caller of a completed operation sees. The kernel reports a
 * cancelled operation as ECANCELED (EINTR for some); what it means is what
 * the core cancelled it for, or, uncancelled, that its own deadline (a
 * linked timeout) passed. A result that arrived before the cancel took hold
 * is returned as it is: bytes moved are the caller's. */
static int64_t op_result(const struct gr__op *o)
{
	int64_t res = o->res;

	if (res == -ECANCELED || res == -EINTR) {
		if (o->cancel_errno)
			res = -(int64_t)o->cancel_errno;
		else if (o->op.deadline != GR_FOREVER)
			res = -ETIMEDOUT;
	}
	return res;
}

/* Hand o to the backend, counted in flight and, if it names an fd, listed
 * on it. 0 or -errno (then nothing is in flight). Inlined: as a call, its
 * register saves and restores were a fifth of its own cost on every
 * blocking call (callgrind, a pipe round trip). */
static inline __attribute__((always_inline)) int op_submit(struct gr__hub *hub, struct gr__op *o)
{
	if (gr__op_names_fd(&o->op)) {
		int err = gr__fd_link(hub, o);

		if (err)
			return err;
	}
	hub->inflight++;
	o->park->op = o;
	/* The thread pool performs what the backend cannot (offload.c). */
	int err = o->offload ? gr__offload_submit(hub, o) : hub->ops->submit(hub->backend, &o->op);
	if (err < 0) {
		hub->inflight--;
		o->park->op = NULL;
		if (o->on_fd)
			gr__fd_unlink(hub, o);
		return err;
	}
	hub->counters.submitted[o->op.kind]++;
	hub->queued++;
	return 0;
}

/* o was cancelled because its per-fd deadline moved (gr_fd_set_deadline)
 * and it moved no data: the call goes on under the new deadline. Sets
 * p->deadline; 0, or -ECANCELED/-ETIMEDOUT as gr__park_begin. */
static int retime(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	int64_t d = gr__deadline_min(p->limit, gr__fd_deadline(hub, o->op.fd, p->fd_dirs));

	/* The fd may have become ready while the call was off the backend:
	 * the park after EAGAIN's promise no longer holds. */
	if (o->op.kind == GR_OP_POLL)
		o->op.flags &= ~GR_POLL_AFTER_EAGAIN;
	return gr__park_check(p->fiber, d, p->uncancellable, &p->deadline);
}

int64_t gr__park_op(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	gr_fiber *self = p->fiber;

	/* Stamped here, where the call parks, not at the gate: a call that
	 * need not wait pays nothing for the dump. A retime goes on waiting. */
	p->since = hub->clock;
	for (;;) {
		if (o->op.kind != GR_OP_TIMEOUT)
			o->op.deadline = p->deadline;
		o->res = 0;
		o->cancel_errno = 0;
		o->park = p;
		o->on_complete = NULL; /* gr_hub_complete readies the fiber */
		o->on_fd = false;
		/* Parked before submit(), so that a backend completing the
		 * operation at once finds the books in order. */
		self->state = GR__FIBER_PARKED;
		self->park = p;
		int err = op_submit(hub, o);
		if (err < 0) {
			self->state = GR__FIBER_RUNNING;
			self->park = NULL;
			return err;
		}
		gr__switch_out(hub);
		self->park = NULL;
		bool moved_nothing = o->res == -ECANCELED || o->res == -EINTR;
		if (!gr__cancel_weak(o->cancel_errno) || !moved_nothing) {
			int64_t r = op_result(o);

			if (r == -ETIMEDOUT)
				hub->counters.deadlines++;
			return r;
		}
		err = retime(hub, p, o); /* a deadline passed meanwhile is counted there */
		if (err)
			return err;
		if (o->cancel_errno == GR__REDECIDE)
			return -EAGAIN; /* the caller chooses again how to serve it */
	}
}

void gr__op_cancel(struct gr__hub *hub, struct gr__op *o, int why)
{
	/* The first reason wins, but a retime only asks the call to wait
	 * again: a reason to end it (kill, deadline, close) replaces it, and
	 * so does a redecide (which retimes too); a retime does not replace a
	 * redecide. */
	uint8_t was = o->cancel_errno;
	if (!was || (gr__cancel_weak(was) && !(was == GR__REDECIDE && why == GR__RETIME)))
		o->cancel_errno = (uint8_t)why;
	hub->counters.cancels++;
	if (o->offload)
		gr__offload_cancel(hub, o);
	else
		hub->ops->cancel(hub->backend, &o->op);
}

/* ------------------------------------------------------------ wait queues */

static void waitq_remove(struct gr__park *p)
{
	if (!p->queue)
		return;
	gr__list_remove(&p->queue->parked, &p->link);
	p->queue = NULL;
}

void gr__unpark(struct gr__park *p, int status)
{
	waitq_remove(p);
	p->status = status;
	p->fiber->hub->counters.unparks++;
	gr__ready(p->fiber);
}

static bool xpark_end_early(struct gr__park *p, int status);

/* A queue wait's deadline timer completed: it expired, or it was cancelled
 * because the wait ended first (then the fiber is draining it), or the
 * core forced it off (thread exit, a broken backend: cancel_errno says). */
static void timer_done(struct gr__op *o)
{
	struct gr__park *p = o->park;
	int status = o->cancel_errno ? -(int)o->cancel_errno : -ETIMEDOUT;
	bool ended = false;

	if (p->draining)
		gr__ready(p->fiber);
	else if (p->kind == GR__PARK_XQUEUE)
		ended = xpark_end_early(p, status);
	else if ((ended = p->queue != NULL))
		gr__unpark(p, status);
	if (ended && status == -ETIMEDOUT)
		p->fiber->hub->counters.deadlines++;
}

/* Arm the deadline timer `t` (in the waiting frame) of a queue wait. */
static int timer_arm(struct gr__hub *hub, struct gr__park *p, struct gr__op *t)
{
	memset(t, 0, sizeof(*t));
	t->op.kind = GR_OP_TIMEOUT;
	t->op.fd = -1;
	t->op.deadline = p->deadline;
	t->park = p;
	t->on_complete = timer_done;
	return op_submit(hub, t);
}

/* The wait is over: if its timer is still in flight (it lives in the
 * caller's frame), cancel it and wait for it to complete. */
static void timer_drain(struct gr__hub *hub, struct gr__park *p)
{
	if (!p->op)
		return;
	gr__op_cancel(hub, p->op, ECANCELED);
	p->draining = true;
	while (p->op) {
		p->fiber->state = GR__FIBER_PARKED;
		gr__switch_out(hub);
	}
	p->draining = false;
}

int gr__park_queue(struct gr__hub *hub, struct gr__park *p, struct gr__waitq *q)
{
	gr_fiber *self = p->fiber;
	/* The deadline timer lives in this frame, which lasts as long as the
	 * wait: the park record stays small for the calls that need none. */
	struct gr__op timer;

	if (p->deadline == 0)
		return -ETIMEDOUT; /* a pure try does not park */
	p->queue = q;
	p->kind = GR__PARK_QUEUE;
	p->draining = false;
	gr__list_push_back(&q->parked, &p->link);
	if (p->deadline != GR_FOREVER) {
		int err = timer_arm(hub, p, &timer);

		if (err < 0) {
			waitq_remove(p);
			return err;
		}
	}
	self->state = GR__FIBER_PARKED;
	self->park = p;
	p->since = hub->clock;
	gr__switch_out(hub);
	timer_drain(hub, p);
	self->park = NULL;
	return p->status;
}

/* ------------------------------------------------------------ cross-thread */

/* Take p off its cross-thread queue (lock held). */
static void xq_remove(struct gr__park *p, int status)
{
	gr__list_remove(&p->xq->parked, &p->link);
	p->xlinked = false;
	p->status = status;
}

/* p leaves its queue on its own side, handed nothing (lock held). Its
 * caller resumes and takes the lock again, so the object stays. */
static void xq_leave(struct gr__park *p, int status)
{
	struct gr__xq *xq = p->xq;

	xq_remove(p, status);
	if (xq->on_leave)
		xq->on_leave(xq, p, false);
}

void gr__hub_post(struct gr__hub *hub, struct gr__park *p)
{
	/* What the poster wrote before posting (a status, an item handed
	 * over) is visible to the hub that takes p from its inbox. */
	if (gr__inbox_push(&hub->inbox, &p->inbox_link))
		gr__hub_wake(hub);
}

void gr__xunpark(struct gr__park *p, int status)
{
	xq_remove(p, status);
	if (!p->fiber) {
		pthread_cond_signal(p->cond);
		return;
	}
	struct gr__hub *hub = p->fiber->hub;
	if (hub == gr__tls_hub) {
		/* A fiber of this very hub: it is parked (we run), ready it. */
		gr__ready(p->fiber);
		return;
	}
	/* The lock is still held, so the hub cannot be torn down under the
	 * post: its teardown takes the lock to abandon p (gr__xpark_abandon). */
	gr__hub_post(hub, p);
}

void gr__hub_request(struct gr__hub *hub, struct gr__hub_request *rq)
{
	rq->park.fiber = NULL;
	/* Rare, and not worth the hub's fence before every wait: a hub may
	 * sleep without saying so (idle.c), so its first poster wakes it
	 * unasked. A later one finds the inbox taken care of. */
	if (gr__inbox_push(&hub->inbox, &rq->park.inbox_link))
		gr__hub_wake_unasked(hub);
}

void gr__hub_take_inbox(struct gr__hub *hub)
{
	/* In post order. A fiber made ready may run and be gone, a request
	 * served may be freed: next is read first. */
	for (struct gr__slink *l = gr__inbox_take(&hub->inbox), *next; l; l = next) {
		struct gr__park *p = gr__container(l, struct gr__park, inbox_link);

		next = l->next;
		if (p->fiber) {
			hub->counters.remote_wakeups++;
			gr__ready(p->fiber);
		} else {
			struct gr__hub_request *rq = gr__container(p, struct gr__hub_request, park);

			rq->run(hub, rq);
		}
	}
}

/* The waiter's own side ends its wait (deadline, kill, thread exit), racing
 * wakers on other threads: whoever takes it off the queue, under the lock,
 * decides. If a waker did, its delivery is on the way through the inbox. */
static bool xpark_end_early(struct gr__park *p, int status)
{
	pthread_mutex_t *lock = p->xlock;
	bool mine;

	if (!lock)
		return false; /* abandoned, and its object may be gone: gr__xpark_abandon */
	pthread_mutex_lock(lock);
	mine = p->xlinked;
	if (mine)
		xq_leave(p, status);
	pthread_mutex_unlock(lock);
	if (mine)
		gr__ready(p->fiber);
	return mine;
}

void gr__xpark_abandon(gr_fiber *f)
{
	struct gr__park *p = f->park;

	if (!p || p->kind != GR__PARK_XQUEUE || !p->xlock)
		return;
	/* Whether still queued or handed something it will never take, its
	 * caller will not return: the object settles for it, under its lock,
	 * and from then on this wait touches neither (a timer completing later
	 * finds it abandoned). */
	pthread_mutex_t *lock = p->xlock;
	pthread_mutex_lock(lock);
	struct gr__xq *xq = p->xq;
	if (p->xlinked)
		xq_remove(p, -ECANCELED);
	p->xlock = NULL;
	if (xq->on_leave)
		xq->on_leave(xq, p, true);
	pthread_mutex_unlock(lock);
}

void gr__xpark_thread_begin(struct gr__park *p, int64_t deadline)
{
	p->fiber = NULL;
	p->queue = NULL;
	p->xq = NULL;
	p->op = NULL;
	p->status = 0;
	p->cond = NULL;
	p->deadline = deadline;
	p->since = 0; /* no hub, no clock: nothing lists it */
}

/* A thread with no hub waits on a condition variable of its own, bound to
 * the object's lock. */
void gr__cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

static int xpark_thread(struct gr__park *p, pthread_mutex_t *lock)
{
	pthread_cond_t cond;
	struct timespec ts;

	gr__cond_init_monotonic(&cond);
	p->cond = &cond;
	if (p->deadline != GR_FOREVER)
		gr__ns_to_timespec(p->deadline, &ts);
	while (p->xlinked) {
		if (p->deadline == GR_FOREVER) {
			pthread_cond_wait(&cond, lock);
		} else if (pthread_cond_timedwait(&cond, lock, &ts) == ETIMEDOUT && p->xlinked) {
			xq_leave(p, -ETIMEDOUT);
		}
	}
	pthread_cond_destroy(&cond);
	return p->status;
}

int gr__xpark(struct gr__hub *hub, struct gr__park *p, struct gr__xq *xq)
{
	pthread_mutex_t *lock = xq->lock;
	struct gr__op timer;

	if (p->deadline == 0)
		return -ETIMEDOUT; /* a pure try does not park */
	p->xq = xq;
	p->xlock = xq->lock;
	p->xlinked = true;
	p->kind = GR__PARK_XQUEUE;
	p->draining = false;
	gr__list_push_back(&xq->parked, &p->link);
	if (!p->fiber)
		return xpark_thread(p, lock);

	gr_fiber *self = p->fiber;
	hub->remote_waiting++;
	/* From here a waker on another thread may take p: its delivery goes
	 * through the inbox, which only this thread's hub fiber drains, after
	 * we have parked. The lock is let go before the timer is armed: arming
	 * may reap completions, and another waiter's early end takes the lock. */
	pthread_mutex_unlock(lock);
	int err = p->deadline != GR_FOREVER ? timer_arm(hub, p, &timer) : 0;
	if (err < 0) {
		/* Waiting without the timer would ignore the deadline: give the
		 * wait up, unless a waker was first (then take its delivery). */
		pthread_mutex_lock(lock);
		bool mine = p->xlinked;
		if (mine)
			xq_leave(p, err);
		pthread_mutex_unlock(lock);
		if (mine) {
			hub->remote_waiting--;
			pthread_mutex_lock(lock);
			return err;
		}
	}
	self->state = GR__FIBER_PARKED;
	self->park = p;
	p->since = hub->clock;
	gr__switch_out(hub);
	hub->remote_waiting--;
	timer_drain(hub, p);
	self->park = NULL;
	pthread_mutex_lock(lock);
	return p->status;
}

/* ------------------------------------------------------------ early ends */

void gr__park_interrupt(struct gr__hub *hub, gr_fiber *f, int why, bool force)
{
	struct gr__park *p = f->park;

	if (!p || (p->uncancellable && !force))
		return;
	switch (p->kind) {
	case GR__PARK_QUEUE:
		/* Its timer, if any, is cancelled by the fiber itself when it
		 * runs; a forced end (the fiber will never run) cancels it here. */
		if (p->queue)
			gr__unpark(p, -why);
		break;
	case GR__PARK_XQUEUE:
		if (!p->draining)
			xpark_end_early(p, -why);
		break;
	case GR__PARK_OP:
		if (p->op)
			gr__op_cancel(hub, p->op, why);
		return;
	}
	if (force && p->op)
		gr__op_cancel(hub, p->op, why);
}
