/* chan.c — a FIFO of pointers between threads: bounded, unbounded, or a
 * rendezvous (capacity 0).
 *
 * gr_queue's design (queue.c) under a mutex, with the gate's cross-thread
 * queues (wait.c, gr__xpark/gr__xunpark) in place of a hub's wait queues:
 *   - receivers wait only while the ring is empty, so a send with a waiting
 *     receiver hands the item to it (its park's data) instead of queueing;
 *   - senders wait only while the ring is full (always, at capacity 0), so
 *     a receive from a full ring moves the first waiting sender's item into
 *     the slot it freed, behind everything already queued.
 * A woken waiter's status is its receipt, set under the lock by whoever
 * takes it off its queue: 0 means the item went through (a receiver finds
 * it in its park, a sender's is queued or taken). A deadline or a kill that
 * comes afterwards finds the waiter off the queue (the gate decides under
 * the same lock) and changes nothing, so an item is never both kept and
 * delivered, nor lost.
 *
 * Every call takes the channel's mutex once. A send that hands its item to
 * a fiber of another hub posts that fiber to its hub's inbox, and wakes the
 * hub only if the inbox was empty (wait.c): a burst of items to one hub
 * costs it one wake-up.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <string.h>

#include "ring.h"
#include "sync_internal.h" /* GR__SYNC_STORAGE */
#include "xsync.h"

struct chan {
	struct gr__xhead h;
	struct gr__xq receivers;    /* non-empty only while the ring is empty */
	struct gr__xq senders;      /* non-empty only while the ring is full */
	struct gr__ring ring;
	bool closed;
};
GR__SYNC_STORAGE(gr_chan, struct chan);
_Static_assert(GR_CHAN_UNBOUNDED == GR__RING_UNBOUNDED, "one meaning of unbounded");

static inline struct chan *CH(gr_chan *c)
{
	return (struct chan *)(void *)c;
}

/* A waiter's thread exits mid-wait (the gate, lock held): it never
 * returns to count itself out. A sender's item was not sent; an item
 * handed to a receiver that never ran goes with its thread. */
static void waiter_gone(struct chan *ch, bool gone)
{
	if (gone)
		ch->h.users--;
}

static void receiver_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	(void)p;
	waiter_gone(gr__container(xq, struct chan, receivers), gone);
}

static void sender_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	(void)p;
	waiter_gone(gr__container(xq, struct chan, senders), gone);
}

int gr_chan_init(gr_chan *c, size_t capacity)
{
	if (!c)
		return -EINVAL;
	struct chan *ch = CH(c);
	memset(ch, 0, sizeof(*ch));
	int err = gr__ring_init(&ch->ring, capacity);
	if (err)
		return err;
	ch->receivers.lock = &ch->h.lock;
	ch->receivers.on_leave = receiver_left;
	ch->senders.lock = &ch->h.lock;
	ch->senders.on_leave = sender_left;
	gr__xhead_init(&ch->h, GR__MAGIC_CHAN);
	return 0;
}

int gr_chan_destroy(gr_chan *c)
{
	struct chan *ch = CH(c);
	int err = gr__xhead_lock(c ? &ch->h : NULL, GR__MAGIC_CHAN);

	if (err)
		return err;
	struct gr__ring ring = ch->ring;
	err = gr__xhead_destroy(&ch->h, gr__list_empty(&ch->receivers.parked) &&
						gr__list_empty(&ch->senders.parked));
	if (!err)
		gr__ring_free(&ring);
	return err;
}

static struct gr__park *first_waiter(struct gr__xq *q)
{
	return q->parked.first ? gr__container(q->parked.first, struct gr__park, link) : NULL;
}

/* Deliver item without waiting (lock held): to the first receiver, else
 * into the ring. 0; -EAGAIN (full); -ENOMEM. */
static int offer(struct chan *ch, void *item)
{
	struct gr__park *w = first_waiter(&ch->receivers);

	if (w) {
		w->data = (uintptr_t)item;
		gr__xunpark(w, 0);
		return 0;
	}
	if (!gr__ring_full(&ch->ring))
		return gr__ring_push(&ch->ring, item);
	return -EAGAIN;
}

/* Take an item without waiting (lock held). 0; -EAGAIN (empty); -EPIPE
 * (empty and closed). */
static int take(struct chan *ch, void **item)
{
	struct gr__park *w = first_waiter(&ch->senders);
	void *it;

	if (ch->ring.count > 0) {
		it = gr__ring_pop(&ch->ring);
		if (w) {
			/* The ring was full: the first sender's item takes the slot
			 * just freed (a bounded ring has all its slots: no failure). */
			(void)gr__ring_push(&ch->ring, (void *)w->data);
			gr__xunpark(w, 0);
		}
	} else if (w) {
		/* A rendezvous: straight from the sender. */
		it = (void *)w->data;
		gr__xunpark(w, 0);
	} else {
		return ch->closed ? -EPIPE : -EAGAIN;
	}
	if (item)
		*item = it;
	return 0;
}

int gr_chan_send(gr_chan *c, void *item, int64_t deadline)
{
	struct chan *ch = CH(c);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_chan_send" };
	int err = gr__xhead_enter(c ? &ch->h : NULL, GR__MAGIC_CHAN, &hub, &p, deadline);

	if (err)
		return err;
	if (ch->closed) {
		err = -EPIPE;
	} else {
		err = offer(ch, item);
		if (err == -EAGAIN) {
			p.data = (uintptr_t)item;
			err = gr__xhead_wait(&ch->h, hub, &p, &ch->senders);
		}
	}
	pthread_mutex_unlock(&ch->h.lock);
	return err;
}

int gr_chan_trysend(gr_chan *c, void *item)
{
	struct chan *ch = CH(c);
	int err = gr__xhead_lock(c ? &ch->h : NULL, GR__MAGIC_CHAN);

	if (err)
		return err;
	err = ch->closed ? -EPIPE : offer(ch, item);
	pthread_mutex_unlock(&ch->h.lock);
	return err;
}

int gr_chan_recv(gr_chan *c, void **item, int64_t deadline)
{
	struct chan *ch = CH(c);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_chan_recv" };
	int err = gr__xhead_enter(c ? &ch->h : NULL, GR__MAGIC_CHAN, &hub, &p, deadline);

	if (err)
		return err;
	err = take(ch, item);
	if (err == -EAGAIN) {
		err = gr__xhead_wait(&ch->h, hub, &p, &ch->receivers);
		if (err == 0 && item)
			*item = (void *)p.data;
	}
	pthread_mutex_unlock(&ch->h.lock);
	return err;
}

int gr_chan_tryrecv(gr_chan *c, void **item)
{
	struct chan *ch = CH(c);
	int err = gr__xhead_lock(c ? &ch->h : NULL, GR__MAGIC_CHAN);

	if (err)
		return err;
	err = take(ch, item);
	pthread_mutex_unlock(&ch->h.lock);
	return err;
}

int gr_chan_close(gr_chan *c)
{
	struct chan *ch = CH(c);
	int err = gr__xhead_lock(c ? &ch->h : NULL, GR__MAGIC_CHAN);
	struct gr__park *w;

	if (err)
		return err;
	ch->closed = true;
	/* Receivers wait only on an empty ring: nothing is left for them. */
	while ((w = first_waiter(&ch->receivers)))
		gr__xunpark(w, -EPIPE);
	while ((w = first_waiter(&ch->senders)))
		gr__xunpark(w, -EPIPE);
	pthread_mutex_unlock(&ch->h.lock);
	return 0;
}

ssize_t gr_chan_len(gr_chan *c)
{
	struct chan *ch = CH(c);
	int err = gr__xhead_lock(c ? &ch->h : NULL, GR__MAGIC_CHAN);

	if (err)
		return err;
	ssize_t n = (ssize_t)ch->ring.count;
	pthread_mutex_unlock(&ch->h.lock);
	return n;
}
