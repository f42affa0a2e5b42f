/* sync_internal.h — what sync.c, queue.c and pool.c share: the header every
 * primitive starts with, the checks at the top of each call, and the wait.
 *
 * Ownership: a primitive belongs to one hub, recorded as the id of that
 * hub's main context (fiber ids are never reused in a process, unlike the
 * hub's address, so a hub created later at the same address, e.g. after
 * gr_hub_use() or in a new thread, is not mistaken for the owner).
 *
 * Lifetime: `users` counts fibers inside a waiting call on the primitive,
 * from before they park until they return. A waiter woken by a set or a
 * hand-off is off the wait queue but has not returned yet, and may still read
 * the primitive; destroy refuses (EBUSY) while users > 0, so it never frees
 * memory a woken fiber is about to touch.
 */
#ifndef GREENRING_SYNC_INTERNAL_H
#define GREENRING_SYNC_INTERNAL_H

#include <assert.h>
#include <errno.h>
#include <stdalign.h>

#include "internal.h"

struct gr__sync_head {
	uint32_t magic;     /* the kind's tag while initialised, 0 after destroy */
	uint32_t users;     /* fibers inside a waiting call on it */
	uint64_t hub_id;    /* the owning hub's main-context id; 0 = not yet bound */
};

/* Tags (ASCII), so a dump shows what an object is. */
#define GR__MAGIC_EVENT  0x67724576u /* grEv */
#define GR__MAGIC_RESULT 0x67725273u /* grRs */
#define GR__MAGIC_SEM    0x6772536du /* grSm */
#define GR__MAGIC_MUTEX  0x67724d78u /* grMx */
#define GR__MAGIC_COND   0x67724376u /* grCv */
#define GR__MAGIC_QUEUE  0x67725175u /* grQu */
#define GR__MAGIC_POOL   0x6772506cu /* grPl */
#define GR__MAGIC_PILE   0x67725069u /* grPi */

/* The public struct is opaque storage for `impl`: check it fits. */
#define GR__SYNC_STORAGE(pub, impl)                                                  \
	static_assert(sizeof(impl) <= sizeof(pub), #impl " outgrew " #pub);          \
	static_assert(alignof(impl) <= alignof(pub), #impl " needs more alignment than " #pub)

static inline void gr__sync_head_init(struct gr__sync_head *h, uint32_t magic)
{
	h->magic = magic;
	h->users = 0;
	h->hub_id = 0;
}

/* Bind h to hub if it is unbound; EPERM if it belongs to another hub. A
 * thread without a hub (hub NULL) may touch an unbound object: nothing can be
 * parked on it yet, so no fiber of any hub is affected. */
static inline int gr__sync_bind(struct gr__sync_head *h, struct gr__hub *hub)
{
	if (h->hub_id == 0) {
		if (hub)
			h->hub_id = hub->root.id;
		return 0;
	}
	if (!hub || hub->root.id != h->hub_id)
		return -EPERM;
	return 0;
}

/* Entry of a call that does not wait. */
static inline int gr__sync_check(struct gr__sync_head *h, uint32_t magic)
{
	if (!h || h->magic != magic)
		return -EINVAL;
	return gr__sync_bind(h, gr__hub_peek());
}

/* Entry of a call that does not wait but needs the calling fiber (the
 * mutex's owner): creates the thread's hub if needed. */
static inline int gr__sync_check_self(struct gr__sync_head *h, uint32_t magic, gr_fiber **self)
{
	if (!h || h->magic != magic)
		return -EINVAL;
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);
	if (!hub)
		return err;
	err = gr__sync_bind(h, hub);
	if (err)
		return err;
	*self = hub->current;
	return 0;
}

/* The object is live and belongs to this hub, whose fibers may park here
 * (the gate's first check). Fills *hubp. */
static inline int gr__sync_here(struct gr__sync_head *h, uint32_t magic, struct gr__hub **hubp)
{
	if (!h || h->magic != magic)
		return -EINVAL;
	int err = gr__park_hub(hubp);
	if (err)
		return err;
	return gr__sync_bind(h, *hubp);
}

/* The entry checks of a call that may wait (those of gr__sync_enter below,
 * the gate's own), for the case where what it asks for is available now:
 * no park record is built (zeroing one costs more than a free mutex does).
 * A call that finds it must wait then builds its record with
 * gr__park_begin. */
static inline int gr__sync_pass(struct gr__sync_head *h, uint32_t magic, int64_t deadline,
				struct gr__hub **hubp)
{
	int64_t effective;
	int err = gr__sync_here(h, magic, hubp);

	if (err)
		return err;
	return gr__park_check((*hubp)->current, deadline, false, &effective);
}

/* Entry of a call that may wait until `deadline`: the object is live and
 * belongs to this hub, and the gate's pre-block checks pass (wait.c): a
 * killed fiber, or one past its own deadline, fails here even when what it
 * asks for is available now, so that a killed fiber's loop stops at its next
 * call rather than when the primitive happens to be empty, as every blocking
 * call of the core. Deadline 0 is a pure try, as gr_wait_fd's: it never
 * fails so. Fills p (p->fiber is the caller) and *hubp. */
static inline int gr__sync_enter(struct gr__sync_head *h, uint32_t magic, int64_t deadline,
				 struct gr__park *p, struct gr__hub **hubp)
{
	int err = gr__sync_here(h, magic, hubp);

	if (err)
		return err;
	return gr__park_begin(*hubp, p, deadline);
}

/* Park on q (gr__park_queue), counted as a user of h. Deadline 0 never
 * parks. The caller fills p->what and p->data. */
static inline int gr__sync_wait(struct gr__hub *hub, struct gr__sync_head *h, struct gr__waitq *q,
				struct gr__park *p)
{
	if (p->deadline == 0)
		return -ETIMEDOUT;
	h->users++;
	int r = gr__park_queue(hub, p, q);
	h->users--;
	return r;
}

/* Entry of destroy: live, ours, and nobody inside. The waitqs are checked
 * by the caller, which knows them. */
static inline int gr__sync_destroy_check(struct gr__sync_head *h, uint32_t magic)
{
	int err = gr__sync_check(h, magic);

	if (err)
		return err;
	return h->users ? -EBUSY : 0;
}

/* Wake every waiter of q with status. Returns how many. */
static inline int gr__sync_wake_all(struct gr__waitq *q, int status)
{
	int n = 0;

	while (!gr__waitq_empty(q)) {
		gr__unpark(gr__waitq_first(q), status);
		n++;
	}
	return n;
}

#endif
