/* sync.c — event, result, semaphore, mutex and condition.
 *
 * Each is a gr__sync_head and one or two wait queues (sync_internal.h).
 * Waking is always gr__unpark(): it unlinks the waiter and sets its status
 * before anything else can see it, so a waiter's deadline timer or a gr_kill
 * arriving later finds it off the queue and changes nothing. What a waiter
 * is given (a value, a unit, the lock) is therefore given exactly when its
 * status is 0, and the waiter returns 0 even if it was killed meanwhile: the
 * hand-off is never lost, and the kill shows at its next blocking call.
 *
 * Semaphore and mutex hand off: a release with waiters gives the unit (the
 * lock) to the first waiter instead of making it free, so a fiber that
 * arrives between the release and the waiter's resumption finds nothing to
 * take. Strict FIFO costs throughput under contention (each hand-off waits
 * for the new owner to be scheduled) but no waiter can starve; see
 * docs/sync.md.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "sync_internal.h"

/* ---------------------------------------------------------------- event */

struct event {
	struct gr__sync_head h;
	struct gr__waitq waiters;
	bool set;
};
GR__SYNC_STORAGE(gr_event, struct event);

static inline struct event *EV(gr_event *e)
{
	return (struct event *)(void *)e;
}

int gr_event_init(gr_event *e)
{
	if (!e)
		return -EINVAL;
	struct event *ev = EV(e);
	memset(ev, 0, sizeof(*ev));
	gr__sync_head_init(&ev->h, GR__MAGIC_EVENT);
	return 0;
}

int gr_event_destroy(gr_event *e)
{
	struct event *ev = EV(e);
	int err = gr__sync_destroy_check(e ? &ev->h : NULL, GR__MAGIC_EVENT);

	if (err)
		return err;
	if (!gr__waitq_empty(&ev->waiters))
		return -EBUSY;
	ev->h.magic = 0;
	return 0;
}

int gr_event_set(gr_event *e)
{
	struct event *ev = EV(e);
	int err = gr__sync_check(e ? &ev->h : NULL, GR__MAGIC_EVENT);

	if (err)
		return err;
	ev->set = true;
	return gr__sync_wake_all(&ev->waiters, 0);
}

int gr_event_clear(gr_event *e)
{
	struct event *ev = EV(e);
	int err = gr__sync_check(e ? &ev->h : NULL, GR__MAGIC_EVENT);

	if (err)
		return err;
	ev->set = false;
	return 0;
}

int gr_event_is_set(gr_event *e)
{
	struct event *ev = EV(e);
	int err = gr__sync_check(e ? &ev->h : NULL, GR__MAGIC_EVENT);

	return err ? err : ev->set;
}

int gr_event_wait(gr_event *e, int64_t deadline)
{
	struct event *ev = EV(e);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_event_wait" };
	int err = gr__sync_enter(e ? &ev->h : NULL, GR__MAGIC_EVENT, deadline, &p, &hub);

	if (err)
		return err;
	if (ev->set)
		return 0;
	return gr__sync_wait(hub, &ev->h, &ev->waiters, &p);
}

/* --------------------------------------------------------------- result */

struct result {
	struct gr__sync_head h;
	struct gr__waitq waiters;
	void *value;
	int err;          /* positive errno for an error result */
	bool set;
};
GR__SYNC_STORAGE(gr_result, struct result);

static inline struct result *RS(gr_result *r)
{
	return (struct result *)(void *)r;
}

int gr_result_init(gr_result *r)
{
	if (!r)
		return -EINVAL;
	struct result *rs = RS(r);
	memset(rs, 0, sizeof(*rs));
	gr__sync_head_init(&rs->h, GR__MAGIC_RESULT);
	return 0;
}

int gr_result_destroy(gr_result *r)
{
	struct result *rs = RS(r);
	int err = gr__sync_destroy_check(r ? &rs->h : NULL, GR__MAGIC_RESULT);

	if (err)
		return err;
	if (!gr__waitq_empty(&rs->waiters))
		return -EBUSY;
	rs->h.magic = 0;
	return 0;
}

static int result_settle(gr_result *r, void *value, int error)
{
	struct result *rs = RS(r);
	int err = gr__sync_check(r ? &rs->h : NULL, GR__MAGIC_RESULT);

	if (err)
		return err;
	if (rs->set)
		return -EALREADY;
	rs->set = true;
	rs->value = value;
	rs->err = error;
	/* Waiters read value and err when they resume: they are users of the
	 * result until then, so it cannot be destroyed under them. */
	return gr__sync_wake_all(&rs->waiters, 0);
}

int gr_result_set(gr_result *r, void *value)
{
	return result_settle(r, value, 0);
}

int gr_result_set_error(gr_result *r, int err)
{
	if (err <= 0)
		return -EINVAL;
	return result_settle(r, NULL, err);
}

int gr_result_ready(gr_result *r)
{
	struct result *rs = RS(r);
	int err = gr__sync_check(r ? &rs->h : NULL, GR__MAGIC_RESULT);

	return err ? err : rs->set;
}

int gr_result_wait(gr_result *r, void **value, int64_t deadline)
{
	struct result *rs = RS(r);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_result_wait" };
	int err = gr__sync_enter(r ? &rs->h : NULL, GR__MAGIC_RESULT, deadline, &p, &hub);

	if (err)
		return err;
	if (!rs->set) {

		err = gr__sync_wait(hub, &rs->h, &rs->waiters, &p);
		if (err)
			return err;
	}
	if (rs->err)
		return -rs->err;
	if (value)
		*value = rs->value;
	return 0;
}

/* ------------------------------------------------------------ semaphore */

struct sem {
	struct gr__sync_head h;
	struct gr__waitq waiters;   /* non-empty only while count == 0 */
	unsigned count;
	unsigned max;               /* INT_MAX when unbounded */
};
GR__SYNC_STORAGE(gr_sem, struct sem);

static inline struct sem *SM(gr_sem *s)
{
	return (struct sem *)(void *)s;
}

int gr_sem_init(gr_sem *s, unsigned value, unsigned max)
{
	if (!s || value > INT_MAX || max > INT_MAX || (max && value > max))
		return -EINVAL;
	struct sem *sm = SM(s);
	memset(sm, 0, sizeof(*sm));
	gr__sync_head_init(&sm->h, GR__MAGIC_SEM);
	sm->count = value;
	sm->max = max ? max : INT_MAX;
	return 0;
}

int gr_sem_destroy(gr_sem *s)
{
	struct sem *sm = SM(s);
	int err = gr__sync_destroy_check(s ? &sm->h : NULL, GR__MAGIC_SEM);

	if (err)
		return err;
	if (!gr__waitq_empty(&sm->waiters))
		return -EBUSY;
	sm->h.magic = 0;
	return 0;
}

int gr_sem_acquire(gr_sem *s, int64_t deadline)
{
	struct sem *sm = SM(s);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_sem_acquire" };
	int err = gr__sync_enter(s ? &sm->h : NULL, GR__MAGIC_SEM, deadline, &p, &hub);

	if (err)
		return err;
	/* count > 0 implies nobody waits (releases hand off), so taking it
	 * here never jumps the queue. */
	if (sm->count > 0) {
		sm->count--;
		return 0;
	}
	return gr__sync_wait(hub, &sm->h, &sm->waiters, &p);
}

int gr_sem_tryacquire(gr_sem *s)
{
	struct sem *sm = SM(s);
	int err = gr__sync_check(s ? &sm->h : NULL, GR__MAGIC_SEM);

	if (err)
		return err;
	if (sm->count == 0)
		return -EAGAIN;
	sm->count--;
	return 0;
}

int gr_sem_release(gr_sem *s)
{
	struct sem *sm = SM(s);
	int err = gr__sync_check(s ? &sm->h : NULL, GR__MAGIC_SEM);

	if (err)
		return err;
	if (!gr__waitq_empty(&sm->waiters)) {
		/* The unit goes to the first waiter: status 0 is its receipt. */
		gr__unpark(gr__waitq_first(&sm->waiters), 0);
		return 0;
	}
	if (sm->count >= sm->max)
		return -EOVERFLOW;
	sm->count++;
	return 0;
}

int gr_sem_value(gr_sem *s)
{
	struct sem *sm = SM(s);
	int err = gr__sync_check(s ? &sm->h : NULL, GR__MAGIC_SEM);

	return err ? err : (int)sm->count;
}

/* ---------------------------------------------------------------- mutex */

struct mutex {
	struct gr__sync_head h;
	struct gr__waitq waiters;   /* non-empty only while owned */
	uint64_t owner;             /* the holder's fiber id; 0 when free */
};
GR__SYNC_STORAGE(gr_mutex, struct mutex);

static inline struct mutex *MX(gr_mutex *m)
{
	return (struct mutex *)(void *)m;
}

int gr_mutex_init(gr_mutex *m)
{
	if (!m)
		return -EINVAL;
	struct mutex *mx = MX(m);
	memset(mx, 0, sizeof(*mx));
	gr__sync_head_init(&mx->h, GR__MAGIC_MUTEX);
	return 0;
}

int gr_mutex_destroy(gr_mutex *m)
{
	struct mutex *mx = MX(m);
	int err = gr__sync_destroy_check(m ? &mx->h : NULL, GR__MAGIC_MUTEX);

	if (err)
		return err;
	if (mx->owner || !gr__waitq_empty(&mx->waiters))
		return -EBUSY;
	mx->h.magic = 0;
	return 0;
}

/* Take mx for the caller of p (past the gate's checks), waiting if needed.
 * The unlocker sets owner to our id when it wakes us with 0. */
static int mutex_acquire(struct gr__hub *hub, struct mutex *mx, struct gr__park *p)
{
	/* owner == 0 implies nobody waits (unlock hands off). */
	if (mx->owner == 0) {
		mx->owner = p->fiber->id;
		return 0;
	}
	return gr__sync_wait(hub, &mx->h, &mx->waiters, p);
}

static void mutex_release(struct mutex *mx)
{
	if (gr__waitq_empty(&mx->waiters)) {
		mx->owner = 0;
		return;
	}
	struct gr__park *w = gr__waitq_first(&mx->waiters);
	mx->owner = w->fiber->id;
	gr__unpark(w, 0);
}

/* The mutex is held by another fiber (gr__sync_pass has checked the rest):
 * wait for it. */
static __attribute__((noinline)) int mutex_lock_wait(struct gr__hub *hub, struct mutex *mx,
						     int64_t deadline)
{
	struct gr__park p = { .what = "gr_mutex_lock" };
	int err = gr__park_begin(hub, &p, deadline);

	if (err)
		return err;
	return mutex_acquire(hub, mx, &p);
}

int gr_mutex_lock(gr_mutex *m, int64_t deadline)
{
	struct mutex *mx = MX(m);
	struct gr__hub *hub = NULL;
	int err = gr__sync_pass(m ? &mx->h : NULL, GR__MAGIC_MUTEX, deadline, &hub);

	if (err)
		return err;
	uint64_t self = hub->current->id;
	if (mx->owner == self)
		return -EDEADLK; /* as an error-checking pthread mutex */
	if (mx->owner == 0) {
		mx->owner = self; /* owner == 0 implies nobody waits (unlock hands off) */
		return 0;
	}
	return mutex_lock_wait(hub, mx, deadline);
}

int gr_mutex_trylock(gr_mutex *m)
{
	struct mutex *mx = MX(m);
	gr_fiber *self = NULL;
	int err = gr__sync_check_self(m ? &mx->h : NULL, GR__MAGIC_MUTEX, &self);

	if (err)
		return err;
	if (mx->owner)
		return -EBUSY;
	mx->owner = self->id;
	return 0;
}

int gr_mutex_unlock(gr_mutex *m)
{
	struct mutex *mx = MX(m);
	int err = gr__sync_check(m ? &mx->h : NULL, GR__MAGIC_MUTEX);

	if (err)
		return err;
	/* A thread without a hub has no fiber, so it holds no mutex. */
	gr_fiber *self = gr__self();
	if (!self || mx->owner != self->id)
		return -EPERM;
	mutex_release(mx);
	return 0;
}

/* ------------------------------------------------------------ condition */

struct cond {
	struct gr__sync_head h;
	struct gr__waitq waiters;
	struct mutex *mutex;        /* the waiters' mutex, while there are waiters */
};
GR__SYNC_STORAGE(gr_cond, struct cond);

static inline struct cond *CV(gr_cond *c)
{
	return (struct cond *)(void *)c;
}

int gr_cond_init(gr_cond *c)
{
	if (!c)
		return -EINVAL;
	struct cond *cv = CV(c);
	memset(cv, 0, sizeof(*cv));
	gr__sync_head_init(&cv->h, GR__MAGIC_COND);
	return 0;
}

int gr_cond_destroy(gr_cond *c)
{
	struct cond *cv = CV(c);
	int err = gr__sync_destroy_check(c ? &cv->h : NULL, GR__MAGIC_COND);

	if (err)
		return err;
	if (!gr__waitq_empty(&cv->waiters))
		return -EBUSY;
	cv->h.magic = 0;
	return 0;
}

int gr_cond_wait(gr_cond *c, gr_mutex *m, int64_t deadline)
{
	struct cond *cv = CV(c);
	struct mutex *mx = MX(m);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_cond_wait" };
	int err = gr__sync_enter(c ? &cv->h : NULL, GR__MAGIC_COND, deadline, &p, &hub);

	if (err)
		return err;
	err = gr__sync_check(m ? &mx->h : NULL, GR__MAGIC_MUTEX);
	if (err)
		return err;
	if (mx->owner != p.fiber->id)
		return -EPERM;
	if (gr__waitq_empty(&cv->waiters))
		cv->mutex = mx;
	else if (cv->mutex != mx)
		return -EINVAL;
	/* Nothing can signal a fiber that does not park: keep the mutex. */
	if (deadline == 0)
		return -ETIMEDOUT;

	/* Unlock and park with nothing in between that could switch, so no
	 * signal sent after the unlock can be missed. We count as a user of
	 * the mutex until we hold it again, so it cannot be destroyed under
	 * us while it is free. */
	mx->h.users++;
	mutex_release(mx);
	int r = gr__sync_wait(hub, &cv->h, &cv->waiters, &p);
	/* Taking the mutex back must not fail for a kill or a deadline: the
	 * caller expects to hold it on return. */
	struct gr__park relock = { .what = "gr_cond_wait (re-lock)", .uncancellable = true };
	int lr = gr__park_begin(hub, &relock, GR_FOREVER);
	if (!lr)
		lr = mutex_acquire(hub, mx, &relock);
	mx->h.users--;
	return lr ? lr : r;
}

int gr_cond_signal(gr_cond *c)
{
	struct cond *cv = CV(c);
	int err = gr__sync_check(c ? &cv->h : NULL, GR__MAGIC_COND);

	if (err)
		return err;
	if (gr__waitq_empty(&cv->waiters))
		return 0;
	gr__unpark(gr__waitq_first(&cv->waiters), 0);
	return 1;
}

int gr_cond_broadcast(gr_cond *c)
{
	struct cond *cv = CV(c);
	int err = gr__sync_check(c ? &cv->h : NULL, GR__MAGIC_COND);

	if (err)
		return err;
	return gr__sync_wake_all(&cv->waiters, 0);
}
