/* xsync.h — what chan.c and notifier.c share: objects any thread may call.
 *
 * Each starts with a head: a tag checked by every call, the object's mutex
 * (every change is made under it, and it is the lock of the gate's
 * cross-thread queues the waiters park on, wait.c), and `users`, the
 * callers inside a waiting call: counted from before they park until they
 * return, with the lock held again. A waiter handed something is off the
 * queue but has not returned, and takes the lock once more on its way out;
 * destroy refuses (EBUSY) while users > 0, so it never destroys a lock a
 * woken waiter is about to take. A waiter whose thread exits never returns:
 * the gate tells the object (on_leave, gone), which counts it out then.
 */
#ifndef GREENRING_XSYNC_H
#define GREENRING_XSYNC_H

#include <pthread.h>

#include "internal.h"

struct gr__xhead {
	uint32_t magic;             /* the kind's tag while initialised, 0 after */
	uint32_t users;             /* callers inside a waiting call */
	pthread_mutex_t lock;
};

#define GR__MAGIC_CHAN     0x67724368u /* grCh */
#define GR__MAGIC_NOTIFIER 0x67724e74u /* grNt */

static inline void gr__xhead_init(struct gr__xhead *h, uint32_t magic)
{
	pthread_mutex_init(&h->lock, NULL);
	h->users = 0;
	h->magic = magic;
}

/* Entry of every call: the object is live; returns with its lock held. */
static inline int gr__xhead_lock(struct gr__xhead *h, uint32_t magic)
{
	/* The first look is a best effort against storage never initialised
	 * (its mutex cannot be taken); the second, under the lock, is exact
	 * against a destroy that came first. */
	if (!h || h->magic != magic)
		return -EINVAL;
	pthread_mutex_lock(&h->lock);
	if (h->magic != magic) {
		pthread_mutex_unlock(&h->lock);
		return -EINVAL;
	}
	return 0;
}

/* Before the lock: may the caller wait, and how (the gate's checks). A
 * fiber of this thread's hub parks (*hubp set); a thread with no hub blocks
 * (*hubp NULL: none is made for it). */
static inline int gr__xpark_prepare(struct gr__hub **hubp, struct gr__park *p, int64_t deadline)
{
	*hubp = gr__hub_peek();
	if (*hubp)
		return gr__park_prepare(hubp, p, deadline);
	gr__xpark_thread_begin(p, deadline);
	return 0;
}

/* Entry of a call that may wait: the gate's checks, then the lock (held on
 * success). h NULL: -EINVAL. */
static inline int gr__xhead_enter(struct gr__xhead *h, uint32_t magic, struct gr__hub **hubp,
				  struct gr__park *p, int64_t deadline)
{
	int err = h ? gr__xpark_prepare(hubp, p, deadline) : -EINVAL;

	return err ? err : gr__xhead_lock(h, magic);
}

/* Park on q (lock held), counted as a user. Deadline 0 never parks. */
static inline int gr__xhead_wait(struct gr__xhead *h, struct gr__hub *hub, struct gr__park *p,
				 struct gr__xq *q)
{
	if (p->deadline == 0)
		return -ETIMEDOUT;
	h->users++;
	int r = gr__xpark(hub, p, q);
	h->users--;
	return r;
}

/* destroy: nobody inside; then the object is dead (lock released). The
 * waiter queues are checked by the caller, which knows them. */
static inline int gr__xhead_destroy(struct gr__xhead *h, bool idle)
{
	if (h->users || !idle) {
		pthread_mutex_unlock(&h->lock);
		return -EBUSY;
	}
	h->magic = 0;
	pthread_mutex_unlock(&h->lock);
	pthread_mutex_destroy(&h->lock);
	return 0;
}

#endif
