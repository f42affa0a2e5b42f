/* offload.c — operations the thread pool performs instead of the hub's
 * backend: on a readiness hub (epoll, poll), a read or write of a regular
 * file that would block, and the file side of gr_sendfile (file.c). The
 * backend never sees them; the gate routes them here (wait.c: op_submit,
 * gr__op_cancel), and they are operations in flight like any other: listed
 * on their fd, so gr_close cancels them and waits for them; counted in
 * hub->inflight, so the hub sleeps in the backend's wait() until a worker
 * wakes it, and a thread's exit waits for them; resumed only by their
 * completion. See struct gr__offload in internal.h.
 *
 * A completion travels back like a cross-thread wake-up (wait.c,
 * gr__xunpark): the worker pushes the record on the hub's `done` inbox
 * (list.h) and wakes the hub only if it was empty (one wake-up for many
 * completions); the hub loop takes the inbox and calls gr_hub_complete()
 * for each, on its own thread. The push and the wake happen in the work's
 * finish(), under the pool's lock, so a hub being torn down waits them out
 * with gr__tpool_barrier() before it frees what wake() touches.
 *
 * Deadlines: no backend times these operations, so the hub keeps a heap of
 * those with one (timer.c, the readiness backends' heap; the slot it uses
 * in backend_data is free, since no backend holds the operation). The hub
 * loop bounds its wait by the earliest, and a deadline that passes cancels
 * the operation with ETIMEDOUT: withdrawn if still queued, else waited for.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "internal.h"

static struct gr__offload *offload_of(struct gr__work *w)
{
	return gr__container(w, struct gr__offload, work);
}

/* On a worker: the blocking system call. The caller is parked and its
 * memory (the operation, its buffers) stays valid until we hand it back. */
static void offload_run(struct gr__work *w)
{
	struct gr__offload *off = offload_of(w);

	off->res = off->perform(&off->o->op);
}

/* On the worker, pool lock held: hand the completion to the hub. */
static void offload_finish(struct gr__work *w)
{
	struct gr__offload *off = offload_of(w);
	struct gr__hub *hub = off->hub;

	/* The result, and what perform() wrote into the caller's buffers, are
	 * visible to the hub that takes the record. */
	if (gr__inbox_push(&hub->offload.done, &off->done_link))
		gr__hub_wake(hub);
}

int gr__offload_submit(struct gr__hub *hub, struct gr__op *o)
{
	struct gr__offload *off = o->offload;
	struct gr_op *op = &o->op;

	off->work.run = offload_run;
	off->work.finish = offload_finish;
	off->work.release = NULL; /* never abandoned: its caller waits for it */
	off->o = o;
	off->hub = hub;
	op->backend_data[GR__TIMER_SLOT] = 0;
	if (op->deadline != GR_FOREVER) {
		int err = gr__timers_add(&hub->offload.deadlines, op);

		if (err)
			return err;
	}
	hub->offload.used = true;
	int err = gr__tpool_submit(&off->work);
	if (err)
		gr__timers_remove(&hub->offload.deadlines, op);
	return err;
}

void gr__offload_cancel(struct gr__hub *hub, struct gr__op *o)
{
	/* Its deadline has done its job (or cannot matter any more). */
	gr__timers_remove(&hub->offload.deadlines, &o->op);
	if (gr__tpool_withdraw(&o->offload->work))
		gr_hub_complete(&o->op, -ECANCELED);
	/* Else a worker is in the system call: its completion comes. */
}

void gr__offload_reap_used(struct gr__hub *hub)
{
	/* In finish order. The record may be gone once its operation is
	 * complete: next is read first. */
	for (struct gr__slink *l = gr__inbox_take(&hub->offload.done), *next; l; l = next) {
		struct gr__offload *off = gr__container(l, struct gr__offload, done_link);
		struct gr_op *op = &off->o->op;

		next = l->next;
		gr__timers_remove(&hub->offload.deadlines, op);
		gr_hub_complete(op, off->res);
	}
	if (hub->offload.deadlines.n == 0)
		return; /* no clock read on the common path */
	int64_t now = gr_now();
	for (struct gr_op *op; (op = gr__timers_pop_expired(&hub->offload.deadlines, now)) != NULL;)
		gr__op_cancel(hub, gr__op_of(op), ETIMEDOUT);
}

int64_t gr__offload_next_deadline(const struct gr__hub *hub)
{
	return gr__timers_next(&hub->offload.deadlines);
}

void gr__offload_fini(struct gr__hub *hub)
{
	if (hub->offload.used)
		gr__tpool_barrier();
	gr__timers_fini(&hub->offload.deadlines);
}
