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
 * cancelled or timed-out operation returns.
 *
 * The record of the call, struct gr__park, lives on the parked fiber's stack
 * and is reachable from the fiber (f->park) for as long as the call lasts,
 * including while a woken fiber still has its deadline timer in flight. That
 * is what lets kill, thread exit, fork and a failing backend find every
 * operation in flight without a list of their own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "internal.h"

int gr__park_hub_slow(struct gr__hub **hubp)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub)
		return err;
	if (hub->current == hub->loop)
		return -EPERM;
	/* The first park needs the hub's fiber. Created here, before anything
	 * is queued, so that failing to map its stack is this call's ENOMEM
	 * rather than a scheduler with nowhere to switch to. */
	if (!gr__hub_loop_fiber(hub))
		return -ENOMEM;
	*hubp = hub;
	return 0;
}

int gr__park_again(const struct gr__park *p)
{
	if (p->deadline == 0 || p->uncancellable)
		return 0;
	if (p->fiber->killed)
		return -ECANCELED;
	if (p->deadline != GR_FOREVER && p->deadline <= gr_now())
		return -ETIMEDOUT;
	return 0;
}

/* ------------------------------------------------------------ operations */

static void op_done(struct gr__op *o)
{
	gr__ready(o->park->fiber);
}

void gr_hub_complete(struct gr_op *op, int64_t res)
{
	struct gr__hub *hub = gr__tls_hub;
	struct gr__op *o = gr__op_of(op);

	o->res = res;
	if (o->on_fd)
		gr__fd_unlink(hub, o);
	hub->inflight--;
	if (o->park->op == o)
		o->park->op = NULL;
	o->on_complete(o);
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
 * on it. 0 or -errno (then nothing is in flight). */
static int op_submit(struct gr__hub *hub, struct gr__op *o)
{
	if (gr__op_names_fd(&o->op)) {
		int err = gr__fd_link(hub, o);

		if (err)
			return err;
	}
	hub->inflight++;
	o->park->op = o;
	int err = hub->ops->submit(hub->backend, &o->op);
	if (err < 0) {
		hub->inflight--;
		o->park->op = NULL;
		if (o->on_fd)
			gr__fd_unlink(hub, o);
	}
	return err;
}

int64_t gr__park_op(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	gr_fiber *self = p->fiber;

	if (o->op.kind != GR_OP_TIMEOUT)
		o->op.deadline = p->deadline;
	o->res = 0;
	o->cancel_errno = 0;
	o->park = p;
	o->on_complete = op_done;
	o->on_fd = false;
	/* Parked before submit(), so that a backend completing the operation
	 * at once finds the books in order. */
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
	return op_result(o);
}

void gr__op_cancel(struct gr__hub *hub, struct gr__op *o, int why)
{
	if (!o->cancel_errno)
		o->cancel_errno = (uint8_t)why;
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
	gr__ready(p->fiber);
}

/* A queue wait's deadline timer completed: it expired, or it was cancelled
 * because the wait ended first (then the fiber is draining it), or the
 * core forced it off (thread exit, a broken backend: cancel_errno says). */
static void timer_done(struct gr__op *o)
{
	struct gr__park *p = o->park;

	if (p->queue)
		gr__unpark(p, o->cancel_errno ? -(int)o->cancel_errno : -ETIMEDOUT);
	else if (p->fiber->state == GR__FIBER_PARKED)
		gr__ready(p->fiber); /* it was draining this timer */
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
	p->on_queue_wait = true;
	gr__list_push_back(&q->parked, &p->link);
	if (p->deadline != GR_FOREVER) {
		struct gr__op *t = &timer;

		memset(t, 0, sizeof(*t));
		t->op.kind = GR_OP_TIMEOUT;
		t->op.fd = -1;
		t->op.deadline = p->deadline;
		t->park = p;
		t->on_complete = timer_done;
		int err = op_submit(hub, t);
		if (err < 0) {
			waitq_remove(p);
			return err;
		}
	}
	self->state = GR__FIBER_PARKED;
	self->park = p;
	gr__switch_out(hub);
	if (p->op) {
		/* Woken before the deadline: the timer lives in this frame, so it
		 * must complete before we return. */
		gr__op_cancel(hub, p->op, ECANCELED);
		while (p->op) {
			self->state = GR__FIBER_PARKED;
			gr__switch_out(hub);
		}
	}
	self->park = NULL;
	return p->status;
}

/* ------------------------------------------------------------ early ends */

void gr__park_interrupt(struct gr__hub *hub, gr_fiber *f, int why, bool force)
{
	struct gr__park *p = f->park;

	if (!p || (p->uncancellable && !force))
		return;
	if (p->queue) {
		/* Its timer, if any, is cancelled by the fiber itself when it
		 * runs; a forced end (the fiber will never run) cancels it here. */
		gr__unpark(p, -why);
		if (force && p->op)
			gr__op_cancel(hub, p->op, why);
	} else if (p->op && (!p->on_queue_wait || force)) {
		/* An operation; or the timer of a woken wait that can never
		 * drain it itself. */
		gr__op_cancel(hub, p->op, why);
	}
}
