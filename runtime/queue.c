/* queue.c — a FIFO of pointers between fibers: bounded, unbounded, or a
 * rendezvous channel (capacity 0).
 *
 * Items live in a ring buffer. Two invariants keep the FIFO order and make
 * every hand-off direct:
 *   - getters wait only while the ring is empty, so a put with a waiting
 *     getter hands the item to it (w->data) instead of queueing it;
 *   - putters wait only while the ring is full (always, at capacity 0), so
 *     a get from a full ring moves the first waiting putter's item into the
 *     freed slot, behind everything already queued.
 * A woken waiter's status is its receipt: 0 means the item was delivered (a
 * getter finds it in its waiter, a putter's item is in the queue). Whoever
 * wakes it sets the status before anything else can run, so a deadline or a
 * kill arriving afterwards cannot undo the delivery, and an item is never
 * both queued and returned, nor lost.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"
#include "sync_internal.h"

struct queue {
	struct gr__sync_head h;
	struct gr__waitq getters;   /* non-empty only while the ring is empty */
	struct gr__waitq putters;   /* non-empty only while the ring is full */
	struct gr__ring ring;
	bool closed;
};
GR__SYNC_STORAGE(gr_queue, struct queue);
_Static_assert(GR_QUEUE_UNBOUNDED == GR__RING_UNBOUNDED, "one meaning of unbounded");

static inline struct queue *QU(gr_queue *q)
{
	return (struct queue *)(void *)q;
}

int gr_queue_init(gr_queue *q, size_t capacity)
{
	if (!q)
		return -EINVAL;
	struct queue *qu = QU(q);
	memset(qu, 0, sizeof(*qu));
	/* A bounded queue takes its memory now, so a put can only fail for a
	 * reason the caller asked about (full, closed, time). */
	int err = gr__ring_init(&qu->ring, capacity);
	if (err)
		return err;
	gr__sync_head_init(&qu->h, GR__MAGIC_QUEUE);
	return 0;
}

int gr_queue_destroy(gr_queue *q)
{
	struct queue *qu = QU(q);
	int err = gr__sync_destroy_check(q ? &qu->h : NULL, GR__MAGIC_QUEUE);

	if (err)
		return err;
	if (!gr__waitq_empty(&qu->getters) || !gr__waitq_empty(&qu->putters))
		return -EBUSY;
	gr__ring_free(&qu->ring);
	qu->h.magic = 0;
	return 0;
}

/* Deliver item without waiting: to the first getter, else into the ring.
 * 0; -EAGAIN (full); -ENOMEM. */
static int offer(struct queue *qu, void *item)
{
	if (!gr__waitq_empty(&qu->getters)) {
		struct gr__park *w = gr__waitq_first(&qu->getters);

		w->data = (uintptr_t)item;
		gr__unpark(w, 0);
		return 0;
	}
	if (!gr__ring_full(&qu->ring))
		return gr__ring_push(&qu->ring, item);
	return -EAGAIN;
}

/* Take an item without waiting. 0; -EAGAIN (empty); -EPIPE (empty, closed). */
static int take(struct queue *qu, void **item)
{
	void *it;

	if (qu->ring.count > 0) {
		it = gr__ring_pop(&qu->ring);
		if (!gr__waitq_empty(&qu->putters)) {
			/* The ring was full: the first putter's item takes the slot
			 * just freed (a bounded ring has all its slots, so this
			 * cannot fail). */
			struct gr__park *w = gr__waitq_first(&qu->putters);

			(void)gr__ring_push(&qu->ring, (void *)w->data);
			gr__unpark(w, 0);
		}
	} else if (!gr__waitq_empty(&qu->putters)) {
		/* Capacity 0: straight from the putter. */
		struct gr__park *w = gr__waitq_first(&qu->putters);

		it = (void *)w->data;
		gr__unpark(w, 0);
	} else {
		return qu->closed ? -EPIPE : -EAGAIN;
	}
	if (item)
		*item = it;
	return 0;
}

int gr_queue_put(gr_queue *q, void *item, int64_t deadline)
{
	struct queue *qu = QU(q);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_queue_put" };
	int err = gr__sync_enter(q ? &qu->h : NULL, GR__MAGIC_QUEUE, deadline, &p, &hub);

	if (err)
		return err;
	if (qu->closed)
		return -EPIPE;
	err = offer(qu, item);
	if (err != -EAGAIN)
		return err;
	p.data = (uintptr_t)item;
	return gr__sync_wait(hub, &qu->h, &qu->putters, &p);
}

int gr_queue_tryput(gr_queue *q, void *item)
{
	struct queue *qu = QU(q);
	int err = gr__sync_check(q ? &qu->h : NULL, GR__MAGIC_QUEUE);

	if (err)
		return err;
	if (qu->closed)
		return -EPIPE;
	return offer(qu, item);
}

int gr_queue_get(gr_queue *q, void **item, int64_t deadline)
{
	struct queue *qu = QU(q);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_queue_get" };
	int err = gr__sync_enter(q ? &qu->h : NULL, GR__MAGIC_QUEUE, deadline, &p, &hub);

	if (err)
		return err;
	err = take(qu, item);
	if (err != -EAGAIN)
		return err;
	err = gr__sync_wait(hub, &qu->h, &qu->getters, &p);
	if (err == 0 && item)
		*item = (void *)p.data;
	return err;
}

int gr_queue_tryget(gr_queue *q, void **item)
{
	struct queue *qu = QU(q);
	int err = gr__sync_check(q ? &qu->h : NULL, GR__MAGIC_QUEUE);

	if (err)
		return err;
	return take(qu, item);
}

int gr_queue_close(gr_queue *q)
{
	struct queue *qu = QU(q);
	int err = gr__sync_check(q ? &qu->h : NULL, GR__MAGIC_QUEUE);

	if (err)
		return err;
	qu->closed = true;
	/* Getters wait only on an empty ring: nothing is left for them. */
	gr__sync_wake_all(&qu->getters, -EPIPE);
	gr__sync_wake_all(&qu->putters, -EPIPE);
	return 0;
}

ssize_t gr_queue_len(gr_queue *q)
{
	struct queue *qu = QU(q);
	int err = gr__sync_check(q ? &qu->h : NULL, GR__MAGIC_QUEUE);

	return err ? err : (ssize_t)qu->ring.count;
}
