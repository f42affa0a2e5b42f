/* test_sync.c — event, result, semaphore, mutex and condition: each one's
 * contract, deadlines, kills, deadlock, misuse and the cross-thread rule.
 * Runs once per hub.
 *
 * Fibers record what their calls returned; the assertions run in the main
 * context (a Criterion assertion must not unwind a fiber's stack). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "support.h"

GRT_SUITE(sync);

/* Timing tolerance: a wait ends no earlier than its deadline and, on this
 * shared machine (and under sanitizers or valgrind), not much later. */
#define LATE_OK (GR_SEC / 2)

/* Run every runnable fiber until they all park or end. */
static void settle(void)
{
	for (int i = 0; i < 4; i++)
		assert_ok(gr_sleep(0));
}

/* An order log shared by fibers. */
struct log {
	int v[64];
	int n;
};

static void log_add(struct log *l, int x)
{
	if (l->n < 64)
		l->v[l->n++] = x;
}

/* ---------------------------------------------------------------- event */

struct ev_waiter {
	gr_event *e;
	int64_t deadline;
	int id;
	struct log *log;
	int r;
	int64_t woke_at;
};

static void *ev_wait_fiber(void *arg)
{
	struct ev_waiter *w = arg;

	w->r = gr_event_wait(w->e, w->deadline);
	w->woke_at = gr_now();
	if (w->log)
		log_add(w->log, w->id);
	return NULL;
}

Test(sync, event_wait_returns_at_once_when_set)
{
	gr_event e;

	assert_ok(gr_event_init(&e));
	cr_assert_eq(gr_event_is_set(&e), 0);
	cr_assert_eq(gr_event_set(&e), 0, "nobody waited, so nobody was woken");
	cr_assert_eq(gr_event_is_set(&e), 1);
	assert_ok(gr_event_wait(&e, GR_FOREVER));
	assert_ok(gr_event_wait(&e, 0));
	assert_ok(gr_event_clear(&e));
	cr_assert_eq(gr_event_is_set(&e), 0);
	assert_err(gr_event_wait(&e, 0), ETIMEDOUT);
	assert_ok(gr_event_destroy(&e));
}

Test(sync, event_set_wakes_every_waiter_in_order_without_switching)
{
	gr_event e;
	struct log log = { 0 };
	struct ev_waiter w[5];
	gr_fiber *f[5];

	assert_ok(gr_event_init(&e));
	for (int i = 0; i < 5; i++) {
		w[i] = (struct ev_waiter){ .e = &e, .deadline = GR_FOREVER, .id = i, .log = &log, .r = 1 };
		f[i] = gr_spawn(ev_wait_fiber, &w[i]);
		cr_assert_not_null(f[i]);
	}
	settle();
	cr_assert_eq(log.n, 0, "waiters returned before the event was set");
	cr_assert_eq(gr_event_set(&e), 5);
	cr_assert_eq(log.n, 0, "gr_event_set switched to a waiter");
	/* Cleared before they run: they were woken, so they still return 0. */
	assert_ok(gr_event_clear(&e));
	for (int i = 0; i < 5; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	cr_assert_eq(log.n, 5);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(w[i].r, 0);
		cr_assert_eq(log.v[i], i, "waiters resumed out of FIFO order");
	}
	assert_ok(gr_event_destroy(&e));
}

Test(sync, event_wait_deadline)
{
	gr_event e;

	assert_ok(gr_event_init(&e));
	int64_t t0 = gr_now();
	assert_err(gr_event_wait(&e, t0 + 30 * GR_MSEC), ETIMEDOUT);
	int64_t took = gr_now() - t0;
	cr_assert_geq(took, 30 * GR_MSEC, "woke early: %lld ns", (long long)took);
	cr_assert_lt(took, 30 * GR_MSEC + LATE_OK, "woke late: %lld ns", (long long)took);

	/* A deadline already past fails without parking. */
	assert_err(gr_event_wait(&e, gr_now() - GR_MSEC), ETIMEDOUT);

	/* The fiber's own deadline bounds the wait too. */
	int64_t dl = gr_now() + 20 * GR_MSEC;
	int64_t old = gr_deadline_set(dl);
	assert_err(gr_event_wait(&e, GR_FOREVER), ETIMEDOUT);
	cr_assert_geq(gr_now(), dl, "the fiber deadline ended the wait early");
	/* ... and, once passed, fails a wait that would not even park. */
	assert_ok(gr_event_set(&e));
	assert_err(gr_event_wait(&e, GR_FOREVER), ETIMEDOUT);
	assert_ok(gr_event_wait(&e, 0)); /* a pure try still succeeds */
	gr_deadline_set(old);
	assert_ok(gr_event_wait(&e, GR_FOREVER));
	assert_ok(gr_event_destroy(&e));
}

Test(sync, event_set_before_the_deadline_wins)
{
	gr_event e;
	struct ev_waiter w;

	assert_ok(gr_event_init(&e));
	w = (struct ev_waiter){ .e = &e, .deadline = gr_now() + 10 * GR_SEC, .r = 1 };
	gr_fiber *f = gr_spawn(ev_wait_fiber, &w);
	settle();
	int64_t t0 = gr_now();
	cr_assert_eq(gr_event_set(&e), 1);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.r, 0);
	cr_assert_lt(w.woke_at - t0, LATE_OK, "the waiter's timer held it back");
	assert_ok(gr_event_destroy(&e));
}

static void *killed_event_wait(void *arg)
{
	struct ev_waiter *w = arg;

	gr_kill(gr_self());
	/* Every later wait fails, even one that would not park, unless it is
	 * a pure try. */
	w->r = gr_event_wait(w->e, GR_FOREVER);
	w->woke_at = gr_event_wait(w->e, 0);
	return NULL;
}

Test(sync, event_wait_killed)
{
	gr_event e;
	struct ev_waiter w;

	assert_ok(gr_event_init(&e));
	w = (struct ev_waiter){ .e = &e, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(ev_wait_fiber, &w);
	settle();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.r, -ECANCELED);
	/* The kill took it off the queue: a set now wakes nobody. */
	cr_assert_eq(gr_event_set(&e), 0);

	w = (struct ev_waiter){ .e = &e, .r = 1 };
	f = gr_spawn(killed_event_wait, &w);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.r, -ECANCELED);
	cr_assert_eq(w.woke_at, 0);
	assert_ok(gr_event_destroy(&e));
}

Test(sync, event_wait_that_can_never_end_is_a_deadlock)
{
	gr_event e;
	struct ev_waiter w;

	assert_ok(gr_event_init(&e));
	w = (struct ev_waiter){ .e = &e, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(ev_wait_fiber, &w);
	/* main and f both wait on e; nobody else can set it. */
	assert_err(gr_event_wait(&e, GR_FOREVER), EDEADLK);
	cr_assert_eq(w.r, 1, "the fiber should still be waiting");
	cr_assert_eq(gr_event_set(&e), 1);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.r, 0);
	assert_ok(gr_event_destroy(&e));
}

Test(sync, event_destroy_with_waiters_is_busy)
{
	gr_event e;
	struct ev_waiter w;

	assert_ok(gr_event_init(&e));
	w = (struct ev_waiter){ .e = &e, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(ev_wait_fiber, &w);
	settle();
	assert_err(gr_event_destroy(&e), EBUSY);
	/* Woken but not yet returned: still using it. */
	gr_event_set(&e);
	assert_err(gr_event_destroy(&e), EBUSY);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	assert_ok(gr_event_destroy(&e));
	/* Destroyed: every call is refused, none crashes. */
	assert_err(gr_event_set(&e), EINVAL);
	assert_err(gr_event_wait(&e, 0), EINVAL);
	assert_err(gr_event_destroy(&e), EINVAL);
}

Test(sync, misuse_is_einval)
{
	gr_event zero_e;
	gr_mutex zero_m;
	gr_queue zero_q;

	memset(&zero_e, 0, sizeof(zero_e));
	memset(&zero_m, 0, sizeof(zero_m));
	memset(&zero_q, 0, sizeof(zero_q));
	assert_err(gr_event_init(NULL), EINVAL);
	assert_err(gr_event_wait(NULL, 0), EINVAL);
	assert_err(gr_event_wait(&zero_e, GR_FOREVER), EINVAL);
	assert_err(gr_event_set(&zero_e), EINVAL);
	assert_err(gr_result_init(NULL), EINVAL);
	assert_err(gr_result_set(NULL, NULL), EINVAL);
	assert_err(gr_sem_init(NULL, 0, 0), EINVAL);
	assert_err(gr_sem_release(NULL), EINVAL);
	assert_err(gr_mutex_lock(&zero_m, GR_FOREVER), EINVAL);
	assert_err(gr_mutex_unlock(NULL), EINVAL);
	assert_err(gr_cond_signal(NULL), EINVAL);
	assert_err(gr_cond_wait(NULL, &zero_m, 0), EINVAL);
	assert_err(gr_queue_get(&zero_q, NULL, 0), EINVAL);
	cr_assert_eq(gr_queue_len(NULL), -EINVAL);
}

/* The cross-thread rule: an object belongs to the hub that first used it. */
struct thread_calls {
	gr_event *e;
	gr_mutex *m;
	gr_sem *s;
	int set, wait, lock, unlock, release;
};

static void *other_thread(void *arg)
{
	struct thread_calls *t = arg;

	/* No hub yet on this thread: a non-waiting call still may not touch
	 * another hub's object. */
	t->set = gr_event_set(t->e);
	t->release = gr_sem_release(t->s);
	/* A waiting call creates this thread's hub, then is refused. */
	t->wait = gr_event_wait(t->e, GR_FOREVER);
	t->lock = gr_mutex_lock(t->m, GR_FOREVER);
	t->unlock = gr_mutex_unlock(t->m);
	return NULL;
}

Test(sync, another_threads_calls_are_eperm)
{
	gr_event e;
	gr_mutex m;
	gr_sem s;
	pthread_t th;

	assert_ok(gr_event_init(&e));
	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_sem_init(&s, 0, 0));
	/* First use binds them to this thread's hub. */
	assert_err(gr_event_wait(&e, 0), ETIMEDOUT);
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	cr_assert_eq(gr_sem_value(&s), 0);
	struct thread_calls t = { .e = &e, .m = &m, .s = &s };
	cr_assert_eq(pthread_create(&th, NULL, other_thread, &t), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(t.set, -EPERM);
	cr_assert_eq(t.release, -EPERM);
	cr_assert_eq(t.wait, -EPERM);
	cr_assert_eq(t.lock, -EPERM);
	cr_assert_eq(t.unlock, -EPERM);
	cr_assert_eq(gr_event_is_set(&e), 0, "the other thread's set took effect");
	cr_assert_eq(gr_sem_value(&s), 0);
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_event_destroy(&e));
	assert_ok(gr_mutex_destroy(&m));
	assert_ok(gr_sem_destroy(&s));
}

static void *init_here_use_there(void *arg)
{
	gr_event *e = arg;

	/* Never used by the main thread: this thread's hub takes it. */
	int r = gr_event_set(e);
	if (r == 0)
		r = gr_event_wait(e, GR_FOREVER);
	if (r == 0)
		r = gr_event_destroy(e);
	return (void *)(intptr_t)r;
}

Test(sync, an_unused_object_may_be_handed_to_another_thread)
{
	gr_event e;
	pthread_t th;
	void *r;

	assert_ok(gr_event_init(&e));
	cr_assert_eq(pthread_create(&th, NULL, init_here_use_there, &e), 0);
	cr_assert_eq(pthread_join(th, &r), 0);
	cr_assert_eq((intptr_t)r, 0, "%s", strerror(-(int)(intptr_t)r));
}

/* --------------------------------------------------------------- result */

struct rs_waiter {
	gr_result *r;
	int64_t deadline;
	int ret;
	void *value;
};

static void *rs_wait_fiber(void *arg)
{
	struct rs_waiter *w = arg;

	w->ret = gr_result_wait(w->r, &w->value, w->deadline);
	return NULL;
}

Test(sync, result_is_set_once_and_wakes_every_waiter)
{
	gr_result r;
	struct rs_waiter w[3];
	gr_fiber *f[3];
	int a = 1, b = 2;

	assert_ok(gr_result_init(&r));
	cr_assert_eq(gr_result_ready(&r), 0);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct rs_waiter){ .r = &r, .deadline = GR_FOREVER, .ret = 1 };
		f[i] = gr_spawn(rs_wait_fiber, &w[i]);
	}
	settle();
	cr_assert_eq(gr_result_set(&r, &a), 3);
	assert_err(gr_result_set(&r, &b), EALREADY);
	assert_err(gr_result_set_error(&r, EIO), EALREADY);
	assert_err(gr_result_destroy(&r), EBUSY); /* woken, not returned */
	for (int i = 0; i < 3; i++) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(w[i].ret, 0);
		cr_assert_eq(w[i].value, &a, "a second set overwrote the value");
	}
	void *v = NULL;
	assert_ok(gr_result_wait(&r, &v, 0));
	cr_assert_eq(v, &a);
	assert_ok(gr_result_wait(&r, NULL, GR_FOREVER));
	cr_assert_eq(gr_result_ready(&r), 1);
	assert_ok(gr_result_destroy(&r));
}

Test(sync, result_error)
{
	gr_result r;
	struct rs_waiter w = { .deadline = GR_FOREVER, .ret = 1 };
	void *v = &w;

	assert_ok(gr_result_init(&r));
	w.r = &r;
	gr_fiber *f = gr_spawn(rs_wait_fiber, &w);
	settle();
	assert_err(gr_result_set_error(&r, 0), EINVAL);
	assert_err(gr_result_set_error(&r, -5), EINVAL);
	cr_assert_eq(gr_result_set_error(&r, ECONNRESET), 1);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.ret, -ECONNRESET);
	assert_err(gr_result_wait(&r, &v, 0), ECONNRESET);
	cr_assert_eq(v, &w, "an error result stored a value");
	cr_assert_eq(gr_result_ready(&r), 1);
	assert_ok(gr_result_destroy(&r));
}

Test(sync, result_wait_deadline_and_kill)
{
	gr_result r;

	assert_ok(gr_result_init(&r));
	int64_t t0 = gr_now();
	assert_err(gr_result_wait(&r, NULL, t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC);
	assert_err(gr_result_wait(&r, NULL, 0), ETIMEDOUT);

	struct rs_waiter w = { .r = &r, .deadline = GR_FOREVER, .ret = 1 };
	gr_fiber *f = gr_spawn(rs_wait_fiber, &w);
	settle();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.ret, -ECANCELED);
	cr_assert_eq(gr_result_set(&r, NULL), 0, "the killed waiter was still queued");

	/* Nobody could ever set it: deadlock, not a hang. */
	gr_result r2;
	assert_ok(gr_result_init(&r2));
	assert_err(gr_result_wait(&r2, NULL, GR_FOREVER), EDEADLK);
	assert_ok(gr_result_destroy(&r2));
	assert_ok(gr_result_destroy(&r));
}

/* ------------------------------------------------------------ semaphore */

struct sem_user {
	gr_sem *s;
	int64_t deadline;
	int id;
	struct log *log;
	int r;
};

static void *sem_acquire_fiber(void *arg)
{
	struct sem_user *u = arg;

	u->r = gr_sem_acquire(u->s, u->deadline);
	if (u->log && u->r == 0)
		log_add(u->log, u->id);
	return NULL;
}

Test(sync, sem_counts)
{
	gr_sem s;

	assert_err(gr_sem_init(&s, 3, 2), EINVAL);
	assert_err(gr_sem_init(&s, (unsigned)INT32_MAX + 1u, 0), EINVAL);
	assert_ok(gr_sem_init(&s, 2, 0));
	cr_assert_eq(gr_sem_value(&s), 2);
	assert_ok(gr_sem_acquire(&s, GR_FOREVER));
	assert_ok(gr_sem_tryacquire(&s));
	cr_assert_eq(gr_sem_value(&s), 0);
	assert_err(gr_sem_tryacquire(&s), EAGAIN);
	assert_err(gr_sem_acquire(&s, 0), ETIMEDOUT);
	int64_t t0 = gr_now();
	assert_err(gr_sem_acquire(&s, t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC);
	cr_assert_lt(gr_now() - t0, 20 * GR_MSEC + LATE_OK);
	for (int i = 0; i < 5; i++)
		assert_ok(gr_sem_release(&s));
	cr_assert_eq(gr_sem_value(&s), 5, "unbounded: releases add up");
	assert_ok(gr_sem_destroy(&s));
}

Test(sync, sem_bound_makes_over_release_an_error)
{
	gr_sem s;

	assert_ok(gr_sem_init(&s, 1, 2));
	assert_ok(gr_sem_release(&s));
	assert_err(gr_sem_release(&s), EOVERFLOW);
	cr_assert_eq(gr_sem_value(&s), 2);
	assert_ok(gr_sem_acquire(&s, 0));
	assert_ok(gr_sem_release(&s));
	assert_ok(gr_sem_destroy(&s));
}

Test(sync, sem_release_hands_the_unit_to_the_first_waiter)
{
	gr_sem s;
	struct log log = { 0 };
	struct sem_user u[4];
	gr_fiber *f[4];

	assert_ok(gr_sem_init(&s, 0, 1));
	for (int i = 0; i < 4; i++) {
		u[i] = (struct sem_user){ .s = &s, .deadline = GR_FOREVER, .id = i, .log = &log, .r = 1 };
		f[i] = gr_spawn(sem_acquire_fiber, &u[i]);
	}
	settle();
	assert_err(gr_sem_destroy(&s), EBUSY);
	for (int i = 0; i < 4; i++) {
		/* A bound of 1 is no obstacle: the unit goes to the waiter. */
		assert_ok(gr_sem_release(&s));
		cr_assert_eq(gr_sem_value(&s), 0, "the released unit was left for anyone to take");
		/* Released but its new owner has not run: no barging. */
		assert_err(gr_sem_tryacquire(&s), EAGAIN);
		assert_err(gr_sem_acquire(&s, 0), ETIMEDOUT);
		settle();
		cr_assert_eq(log.n, i + 1);
		cr_assert_eq(log.v[i], i, "units handed out of FIFO order");
	}
	for (int i = 0; i < 4; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	assert_ok(gr_sem_destroy(&s));
}

Test(sync, sem_unit_handed_to_a_fiber_killed_before_it_ran_is_kept)
{
	gr_sem s;
	struct sem_user u = { .deadline = GR_FOREVER, .r = 1 };
	struct sem_user v = { .deadline = GR_FOREVER, .r = 1 };

	assert_ok(gr_sem_init(&s, 0, 0));
	u.s = v.s = &s;
	gr_fiber *fu = gr_spawn(sem_acquire_fiber, &u);
	gr_fiber *fv = gr_spawn(sem_acquire_fiber, &v);
	settle();
	assert_ok(gr_sem_release(&s)); /* to u */
	assert_ok(gr_kill(fu));        /* too late: u holds the unit */
	assert_ok(gr_kill(fv));        /* v is still waiting: cancelled */
	assert_ok(gr_join(fu, NULL, GR_FOREVER));
	assert_ok(gr_join(fv, NULL, GR_FOREVER));
	cr_assert_eq(u.r, 0, "a unit handed over was lost to a kill");
	cr_assert_eq(v.r, -ECANCELED);
	cr_assert_eq(gr_sem_value(&s), 0, "a unit was counted twice");
	assert_ok(gr_sem_destroy(&s));
}

/* ---------------------------------------------------------------- mutex */

struct mx_user {
	gr_mutex *m;
	int64_t deadline;
	int id;
	struct log *log;
	int r, unlock_r;
	int hold_yields;
	int *inside, *max_inside;
};

static void *mutex_fiber(void *arg)
{
	struct mx_user *u = arg;

	u->r = gr_mutex_lock(u->m, u->deadline);
	if (u->r != 0)
		return NULL;
	if (u->log)
		log_add(u->log, u->id);
	if (u->inside) {
		++*u->inside;
		if (*u->inside > *u->max_inside)
			*u->max_inside = *u->inside;
	}
	for (int i = 0; i < u->hold_yields; i++)
		gr_sleep(0);
	if (u->inside)
		--*u->inside;
	u->unlock_r = gr_mutex_unlock(u->m);
	return NULL;
}

static void *unlock_fiber(void *arg)
{
	struct mx_user *u = arg;

	u->unlock_r = gr_mutex_unlock(u->m);
	return NULL;
}

Test(sync, mutex_basics)
{
	gr_mutex m;

	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_mutex_trylock(&m));
	assert_err(gr_mutex_trylock(&m), EBUSY);
	assert_err(gr_mutex_lock(&m, GR_FOREVER), EDEADLK); /* not recursive */
	assert_err(gr_mutex_destroy(&m), EBUSY);

	/* Another fiber may not unlock it. */
	struct mx_user u = { .m = &m, .unlock_r = 1 };
	gr_fiber *f = gr_spawn(unlock_fiber, &u);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(u.unlock_r, -EPERM);

	assert_ok(gr_mutex_unlock(&m));
	assert_err(gr_mutex_unlock(&m), EPERM);
	assert_ok(gr_mutex_lock(&m, 0));
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_mutex_destroy(&m));
}

Test(sync, mutex_hands_off_in_fifo_order_and_cannot_be_barged)
{
	gr_mutex m;
	struct log log = { 0 };
	struct mx_user u[5];
	gr_fiber *f[5];

	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	for (int i = 0; i < 5; i++) {
		u[i] = (struct mx_user){ .m = &m, .deadline = GR_FOREVER, .id = i, .log = &log, .r = 1 };
		f[i] = gr_spawn(mutex_fiber, &u[i]);
	}
	settle();
	cr_assert_eq(log.n, 0);
	assert_ok(gr_mutex_unlock(&m));
	/* The lock now belongs to u[0], though it has not run yet. */
	assert_err(gr_mutex_trylock(&m), EBUSY);
	assert_err(gr_mutex_lock(&m, 0), ETIMEDOUT);
	assert_err(gr_mutex_unlock(&m), EPERM);
	/* Queue behind them; we get it last. */
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	cr_assert_eq(log.n, 5);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(log.v[i], i, "lock handed out of FIFO order");
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(u[i].r, 0);
		cr_assert_eq(u[i].unlock_r, 0);
	}
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_mutex_destroy(&m));
}

Test(sync, mutex_excludes_under_contention)
{
	gr_mutex m;
	enum { N = 16 };
	struct mx_user u[N];
	gr_fiber *f[N];
	int inside = 0, max_inside = 0;

	assert_ok(gr_mutex_init(&m));
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < N; i++) {
			u[i] = (struct mx_user){ .m = &m, .deadline = GR_FOREVER, .r = 1,
						 .hold_yields = (i + round) % 3, .inside = &inside,
						 .max_inside = &max_inside };
			f[i] = gr_spawn(mutex_fiber, &u[i]);
		}
		for (int i = 0; i < N; i++) {
			assert_ok(gr_join(f[i], NULL, GR_FOREVER));
			cr_assert_eq(u[i].r, 0);
			cr_assert_eq(u[i].unlock_r, 0);
		}
	}
	cr_assert_eq(max_inside, 1, "%d fibers held the mutex at once", max_inside);
	assert_ok(gr_mutex_destroy(&m));
}

Test(sync, mutex_lock_deadline_kill_and_handoff_race)
{
	gr_mutex m;

	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));

	/* A deadline. */
	struct mx_user a = { .m = &m, .deadline = gr_now() + 20 * GR_MSEC, .r = 1 };
	gr_fiber *fa = gr_spawn(mutex_fiber, &a);
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	cr_assert_eq(a.r, -ETIMEDOUT);
	cr_assert_geq(gr_now(), a.deadline, "the lock's deadline ended the wait early");

	/* A kill while waiting: the lock is not handed to the dead waiter. */
	struct mx_user b = { .m = &m, .deadline = GR_FOREVER, .r = 1 };
	struct mx_user c = { .m = &m, .deadline = GR_FOREVER, .r = 1, .unlock_r = 1 };
	gr_fiber *fb = gr_spawn(mutex_fiber, &b);
	gr_fiber *fc = gr_spawn(mutex_fiber, &c);
	settle();
	assert_ok(gr_kill(fb));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert_eq(b.r, -ECANCELED);
	assert_ok(gr_mutex_unlock(&m)); /* to c, skipping the killed b */
	/* Killed after the hand-off, before it ran: it holds the lock and
	 * unlocks it (unlock does not wait, so it still works). */
	assert_ok(gr_kill(fc));
	assert_ok(gr_join(fc, NULL, GR_FOREVER));
	cr_assert_eq(c.r, 0, "a lock handed over was lost to a kill");
	cr_assert_eq(c.unlock_r, 0);
	assert_ok(gr_mutex_trylock(&m));
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_mutex_destroy(&m));
}

static void *hold_and_wait(void *arg)
{
	struct { gr_mutex *m; gr_event *e; } *x = arg;

	gr_mutex_lock(x->m, GR_FOREVER);
	gr_event_wait(x->e, GR_FOREVER);
	gr_mutex_unlock(x->m);
	return NULL;
}

Test(sync, mutex_held_by_a_stuck_fiber_is_a_deadlock)
{
	gr_mutex m;
	gr_event e;
	struct { gr_mutex *m; gr_event *e; } x = { &m, &e };

	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_event_init(&e));
	gr_fiber *f = gr_spawn(hold_and_wait, &x);
	settle();
	assert_err(gr_mutex_lock(&m, GR_FOREVER), EDEADLK);
	gr_event_set(&e);
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	assert_ok(gr_mutex_destroy(&m));
	assert_ok(gr_event_destroy(&e));
}

/* ------------------------------------------------------------ condition */

struct cv_user {
	gr_cond *c;
	gr_mutex *m;
	int64_t deadline;
	int id;
	struct log *log;
	int *ready;           /* the predicate */
	int r;
	int held_after;       /* 1 if the mutex was held on return */
};

static void *cond_fiber(void *arg)
{
	struct cv_user *u = arg;

	if (gr_mutex_lock(u->m, GR_FOREVER) != 0) {
		u->r = 99;
		return NULL;
	}
	u->r = gr_cond_wait(u->c, u->m, u->deadline);
	if (u->log)
		log_add(u->log, u->id);
	/* Unlocking succeeds only if we hold it. */
	u->held_after = gr_mutex_unlock(u->m) == 0;
	return NULL;
}

Test(sync, cond_signal_wakes_one_in_order_broadcast_wakes_all)
{
	gr_cond c;
	gr_mutex m;
	struct log log = { 0 };
	struct cv_user u[4];
	gr_fiber *f[4];

	assert_ok(gr_cond_init(&c));
	assert_ok(gr_mutex_init(&m));
	cr_assert_eq(gr_cond_signal(&c), 0);
	for (int i = 0; i < 4; i++) {
		u[i] = (struct cv_user){ .c = &c, .m = &m, .deadline = GR_FOREVER, .id = i, .log = &log, .r = 1 };
		f[i] = gr_spawn(cond_fiber, &u[i]);
	}
	settle();
	cr_assert_eq(log.n, 0);
	assert_err(gr_cond_destroy(&c), EBUSY);
	/* Signal with the mutex held: the woken waiter must wait for it. */
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	cr_assert_eq(gr_cond_signal(&c), 1);
	settle();
	cr_assert_eq(log.n, 0, "a waiter returned without the mutex");
	assert_ok(gr_mutex_unlock(&m));
	settle();
	cr_assert_eq(log.n, 1);
	cr_assert_eq(log.v[0], 0);
	cr_assert_eq(gr_cond_broadcast(&c), 3);
	for (int i = 0; i < 4; i++) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(u[i].r, 0);
		cr_assert_eq(u[i].held_after, 1);
		cr_assert_eq(log.v[i], i);
	}
	assert_ok(gr_cond_destroy(&c));
	assert_ok(gr_mutex_destroy(&m));
}

Test(sync, cond_wait_needs_the_mutex)
{
	gr_cond c;
	gr_mutex m, m2;

	assert_ok(gr_cond_init(&c));
	assert_ok(gr_mutex_init(&m));
	assert_ok(gr_mutex_init(&m2));
	assert_err(gr_cond_wait(&c, &m, GR_FOREVER), EPERM);
	assert_err(gr_cond_wait(&c, NULL, GR_FOREVER), EINVAL);

	/* Every waiter at once uses the same mutex. */
	struct cv_user u = { .c = &c, .m = &m, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(cond_fiber, &u);
	settle();
	assert_ok(gr_mutex_lock(&m2, GR_FOREVER));
	assert_err(gr_cond_wait(&c, &m2, GR_FOREVER), EINVAL);
	assert_ok(gr_mutex_unlock(&m2));
	/* The mutex of a waiter cannot go away under it. */
	assert_err(gr_mutex_destroy(&m), EBUSY);
	cr_assert_eq(gr_cond_signal(&c), 1);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(u.r, 0);

	/* Deadline 0 never parks, and keeps the mutex. */
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	assert_err(gr_cond_wait(&c, &m, 0), ETIMEDOUT);
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_cond_destroy(&c));
	assert_ok(gr_mutex_destroy(&m));
	assert_ok(gr_mutex_destroy(&m2));
}

Test(sync, cond_wait_returns_with_the_mutex_after_deadline_or_kill)
{
	gr_cond c;
	gr_mutex m;

	assert_ok(gr_cond_init(&c));
	assert_ok(gr_mutex_init(&m));

	struct cv_user a = { .c = &c, .m = &m, .deadline = gr_now() + 20 * GR_MSEC, .r = 1 };
	struct cv_user b = { .c = &c, .m = &m, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *fa = gr_spawn(cond_fiber, &a);
	gr_fiber *fb = gr_spawn(cond_fiber, &b);
	settle();
	/* Hold the mutex across a's deadline and b's kill: both must wait for
	 * it before returning, whatever ended their wait. */
	assert_ok(gr_mutex_lock(&m, GR_FOREVER));
	assert_ok(gr_kill(fb));
	assert_ok(gr_sleep(40 * GR_MSEC));
	cr_assert_eq(a.r, 1, "a returned without the mutex");
	cr_assert_eq(b.r, 1, "b returned without the mutex");
	assert_ok(gr_mutex_unlock(&m));
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert_eq(a.r, -ETIMEDOUT);
	cr_assert_eq(b.r, -ECANCELED);
	cr_assert_eq(a.held_after, 1);
	cr_assert_eq(b.held_after, 1);
	cr_assert_eq(gr_cond_signal(&c), 0, "a finished waiter stayed queued");
	assert_ok(gr_cond_destroy(&c));
	assert_ok(gr_mutex_destroy(&m));
}

/* The classic use: a bounded buffer guarded by one mutex and two conditions. */
struct bb {
	gr_mutex m;
	gr_cond not_empty, not_full;
	int buf[4];
	int n, head;
	long sum;
};

static void *bb_producer(void *arg)
{
	struct bb *b = arg;

	for (int i = 1; i <= 500; i++) {
		gr_mutex_lock(&b->m, GR_FOREVER);
		while (b->n == 4)
			gr_cond_wait(&b->not_full, &b->m, GR_FOREVER);
		b->buf[(b->head + b->n++) % 4] = i;
		gr_cond_signal(&b->not_empty);
		gr_mutex_unlock(&b->m);
	}
	return NULL;
}

static void *bb_consumer(void *arg)
{
	struct bb *b = arg;

	for (int i = 0; i < 500; i++) {
		gr_mutex_lock(&b->m, GR_FOREVER);
		while (b->n == 0)
			gr_cond_wait(&b->not_empty, &b->m, GR_FOREVER);
		b->sum += b->buf[b->head];
		b->head = (b->head + 1) % 4;
		b->n--;
		gr_cond_signal(&b->not_full);
		gr_mutex_unlock(&b->m);
	}
	return NULL;
}

Test(sync, cond_bounded_buffer)
{
	struct bb b = { 0 };

	assert_ok(gr_mutex_init(&b.m));
	assert_ok(gr_cond_init(&b.not_empty));
	assert_ok(gr_cond_init(&b.not_full));
	gr_fiber *f[4] = { gr_spawn(bb_producer, &b), gr_spawn(bb_consumer, &b),
			   gr_spawn(bb_producer, &b), gr_spawn(bb_consumer, &b) };
	for (int i = 0; i < 4; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	cr_assert_eq(b.sum, 2L * 500 * 501 / 2);
	cr_assert_eq(b.n, 0);
	assert_ok(gr_cond_destroy(&b.not_empty));
	assert_ok(gr_cond_destroy(&b.not_full));
	assert_ok(gr_mutex_destroy(&b.m));
}
