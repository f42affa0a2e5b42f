/* ring.h — the FIFO of pointers behind gr_queue (queue.c) and gr_chan
 * (chan.c): a ring buffer, bounded (its slots taken at init, so a push below
 * the bound never fails) or unbounded (doubling as it fills, halving once
 * three quarters empty, so a burst does not pin its memory forever).
 * Zero-initialised is an empty ring with no slots. Not synchronised: the
 * owner's lock or thread guards it.
 */
#ifndef GREENRING_RING_H
#define GREENRING_RING_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

struct gr__ring {
	void **slots;
	size_t cap;                 /* slots: bound, or grown on demand */
	size_t bound;               /* most items held; GR__RING_UNBOUNDED */
	size_t head;                /* index of the oldest item */
	size_t count;
};

#define GR__RING_UNBOUNDED ((size_t)-1)
/* An unbounded ring starts this small and never shrinks below it. */
#define GR__RING_MIN 16

/* 0; -ENOMEM (a bounded ring's slots). */
static inline int gr__ring_init(struct gr__ring *r, size_t bound)
{
	r->slots = NULL;
	r->cap = r->head = r->count = 0;
	r->bound = bound;
	if (bound != GR__RING_UNBOUNDED && bound > 0) {
		if (bound > SIZE_MAX / sizeof(void *))
			return -ENOMEM;
		r->slots = malloc(bound * sizeof(void *));
		if (!r->slots)
			return -ENOMEM;
		r->cap = bound;
	}
	return 0;
}

static inline void gr__ring_free(struct gr__ring *r)
{
	free(r->slots);
	r->slots = NULL;
	r->cap = r->count = 0;
}

static inline bool gr__ring_full(const struct gr__ring *r)
{
	return r->count >= r->bound;
}

/* Move the items to newcap slots (newcap >= count). */
static inline int gr__ring_resize(struct gr__ring *r, size_t newcap)
{
	void **slots = malloc(newcap * sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t i = 0, j = r->head; i < r->count; i++) {
		slots[i] = r->slots[j];
		if (++j == r->cap)
			j = 0;
	}
	free(r->slots);
	r->slots = slots;
	r->cap = newcap;
	r->head = 0;
	return 0;
}

/* Append item (the caller checked the bound). 0; -ENOMEM (an unbounded
 * ring could not grow). */
static inline int gr__ring_push(struct gr__ring *r, void *item)
{
	if (r->count == r->cap) {
		/* Only an unbounded ring fills up below its bound. */
		if (r->cap > SIZE_MAX / 2 / sizeof(void *))
			return -ENOMEM;
		int err = gr__ring_resize(r, r->cap ? r->cap * 2 : GR__RING_MIN);
		if (err)
			return err;
	}
	size_t tail = r->head + r->count;
	if (tail >= r->cap)
		tail -= r->cap;
	r->slots[tail] = item;
	r->count++;
	return 0;
}

/* Take the oldest item (count > 0). */
static inline void *gr__ring_pop(struct gr__ring *r)
{
	void *item = r->slots[r->head];

	if (++r->head == r->cap)
		r->head = 0;
	r->count--;
	if (r->bound == GR__RING_UNBOUNDED && r->cap > GR__RING_MIN && r->count <= r->cap / 4)
		(void)gr__ring_resize(r, r->cap / 2); /* if this fails, the ring just stays large */
	return item;
}

#endif
