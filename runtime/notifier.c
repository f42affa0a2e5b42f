/* notifier.c — any thread fires, one waiter wakes (gevent's async).
 *
 * State: `pending`, the fires nobody has taken yet, and a cross-thread
 * queue of waiters (wait.c). One invariant, kept under the lock: pending >
 * 0 only while nobody waits. So a fire either hands itself to the first
 * waiter (its status, 1, is its receipt: the gate decides under the lock
 * whether the wake or a deadline came first) or adds to pending; and a wait
 * either takes every pending fire at once or parks.
 *
 * The fast path: a fire that finds fires pending adds to them with one
 * compare-and-swap and no lock. It can only succeed while pending > 0, when
 * nobody waits (the invariant), so nobody needs waking; if a waiter took
 * the fires in between, pending is 0, the swap fails and the fire takes the
 * lock. A burst of fires before the waiter runs thus costs one locked fire
 * and then one atomic operation each.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <string.h>

#include "sync_internal.h" /* GR__SYNC_STORAGE */
#include "xsync.h"

struct notifier {
	struct gr__xhead h;
	struct gr__xq waiters;
	_Atomic uint32_t pending;   /* fires not taken yet; > 0 only while nobody waits */
};
GR__SYNC_STORAGE(gr_notifier, struct notifier);

static inline struct notifier *NT(gr_notifier *n)
{
	return (struct notifier *)(void *)n;
}

/* A waiter's thread exits mid-wait (the gate, lock held). A fire handed to
 * it goes with the thread. */
static void waiter_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	(void)p;
	if (gone)
		gr__container(xq, struct notifier, waiters)->h.users--;
}

int gr_notifier_init(gr_notifier *n)
{
	if (!n)
		return -EINVAL;
	struct notifier *nt = NT(n);
	memset(nt, 0, sizeof(*nt));
	nt->waiters.lock = &nt->h.lock;
	nt->waiters.on_leave = waiter_left;
	atomic_init(&nt->pending, 0);
	gr__xhead_init(&nt->h, GR__MAGIC_NOTIFIER);
	return 0;
}

int gr_notifier_destroy(gr_notifier *n)
{
	struct notifier *nt = NT(n);
	int err = gr__xhead_lock(n ? &nt->h : NULL, GR__MAGIC_NOTIFIER);

	if (err)
		return err;
	return gr__xhead_destroy(&nt->h, gr__list_empty(&nt->waiters.parked));
}

/* Add a fire to pending: only to fires already pending, unless
 * `from_zero` (lock held, nobody waits). Saturates rather than wraps: past
 * INT_MAX the count is only a hint. */
static bool pending_add(struct notifier *nt, bool from_zero)
{
	uint32_t v = atomic_load_explicit(&nt->pending, memory_order_relaxed);
	uint32_t next;

	do {
		if (v == 0 && !from_zero)
			return false;
		next = v < INT_MAX ? v + 1 : v;
	} while (!atomic_compare_exchange_weak_explicit(&nt->pending, &v, next, memory_order_release,
							memory_order_relaxed));
	return true;
}

int gr_notifier_fire(gr_notifier *n)
{
	struct notifier *nt = NT(n);

	if (!n || nt->h.magic != GR__MAGIC_NOTIFIER)
		return -EINVAL;
	if (pending_add(nt, false))
		return 0;
	int err = gr__xhead_lock(&nt->h, GR__MAGIC_NOTIFIER);
	if (err)
		return err;
	if (nt->waiters.parked.first)
		gr__xunpark(gr__container(nt->waiters.parked.first, struct gr__park, link), 1);
	else
		(void)pending_add(nt, true);
	pthread_mutex_unlock(&nt->h.lock);
	return 0;
}

int gr_notifier_wait(gr_notifier *n, int64_t deadline)
{
	return gr__notifier_wait(n, deadline, false);
}

int gr__notifier_wait(gr_notifier *n, int64_t deadline, bool uncancellable)
{
	struct notifier *nt = NT(n);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_notifier_wait", .uncancellable = uncancellable };
	int err = gr__xhead_enter(n ? &nt->h : NULL, GR__MAGIC_NOTIFIER, &hub, &p, deadline);

	if (err)
		return err;
	/* Exchanged, not stored: a lock-free fire may add to it meanwhile. */
	int r = (int)atomic_exchange_explicit(&nt->pending, 0, memory_order_acquire);
	if (r == 0)
		r = gr__xhead_wait(&nt->h, hub, &p, &nt->waiters);
	pthread_mutex_unlock(&nt->h.lock);
	return r;
}
