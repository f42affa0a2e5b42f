/* test_later.c — spawning later (gr_spawn_at, gr_spawn_after): deadline
 * order, FIFO for equal deadlines (10k pending at once), cancel before and
 * after firing, detach, re-arming for an earlier spawn, a hub that joins at
 * once when everything was cancelled, bad handles, threads. Runs per hub.
 * Timing assertions: never early; late by at most a generous bound (the
 * test machines are shared). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

GRT_SUITE(later);

#define LATE_BOUND (500 * GR_MSEC)

struct log {
	int order[16];
	int64_t at[16];
	int n;
};

struct entry {
	struct log *log;
	int id;
};

static void note(void *arg)
{
	struct entry *e = arg;

	e->log->at[e->log->n] = gr_now();
	e->log->order[e->log->n++] = e->id;
}

Test(later, spawns_fire_in_deadline_order_and_equal_deadlines_in_fifo_order)
{
	struct log log = { .n = 0 };
	struct entry e[5];
	gr_later *t[5];
	int64_t d = gr_now() + 20 * GR_MSEC;
	int64_t when[5] = { d + 30 * GR_MSEC, d, d + 10 * GR_MSEC, d + 10 * GR_MSEC, d };

	for (int i = 0; i < 5; i++) {
		e[i] = (struct entry){ .log = &log, .id = i };
		t[i] = gr_spawn_at(when[i], note, &e[i]);
		cr_assert_not_null(t[i], "%s", strerror(errno));
	}
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	int want[5] = { 1, 4, 2, 3, 0 };
	cr_assert_eq(log.n, 5);
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(log.order[i], want[i], "position %d: %d, want %d", i, log.order[i],
			     want[i]);
		int64_t due = when[log.order[i]];
		cr_assert_geq(log.at[i], due, "spawn %d ran early", log.order[i]);
		cr_assert_lt(log.at[i], due + LATE_BOUND, "spawn %d ran late", log.order[i]);
	}
	for (int i = 0; i < 5; i++)
		cr_assert_eq(gr_later_cancel(t[i]), -EALREADY, "it fired: too late to cancel");
}

Test(later, a_cancelled_spawn_never_runs)
{
	struct log log = { .n = 0 };
	struct entry x = { .log = &log, .id = 1 }, y = { .log = &log, .id = 2 };

	gr_later *tx = gr_spawn_after(20 * GR_MSEC, note, &x);
	gr_later *ty = gr_spawn_after(40 * GR_MSEC, note, &y);
	cr_assert(tx && ty);
	assert_ok(gr_later_cancel(tx));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(log.n, 1);
	cr_assert_eq(log.order[0], 2);
	cr_assert_eq(gr_later_cancel(ty), -EALREADY);
}

Test(later, an_earlier_spawn_wakes_the_server_and_cancelling_the_rest_ends_it)
{
	struct log log = { .n = 0 };
	struct entry far = { .log = &log, .id = 1 }, near = { .log = &log, .id = 2 };

	gr_later *tf = gr_spawn_after(10 * GR_SEC, note, &far);
	assert_ok(gr_sleep(GR_MSEC)); /* the server sleeps for the far one */
	int64_t t0 = gr_now();
	gr_later *tn = gr_spawn_after(10 * GR_MSEC, note, &near);
	cr_assert(tf && tn);
	while (log.n == 0)
		assert_ok(gr_sleep(GR_MSEC));
	cr_assert_lt(log.at[0] - t0, 10 * GR_MSEC + LATE_BOUND, "it waited for the far one");
	cr_assert_eq(gr_later_cancel(tn), -EALREADY);
	/* Nothing pending after this: the hub joins at once, not in 10 s. */
	assert_ok(gr_later_cancel(tf));
	int64_t t1 = gr_now();
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_lt(gr_now() - t1, LATE_BOUND);
	struct gr_hub_stats st;
	assert_ok(gr_hub_stats(&st));
	cr_assert_eq(st.fibers, 0, "the server has ended");
}

static int fired_count;

static void count(void *arg)
{
	(void)arg;
	fired_count++;
}

Test(later, a_thousand_cancelled_spawns_leave_nothing_behind)
{
	static gr_later *t[1000];

	fired_count = 0;
	for (int i = 0; i < 1000; i++)
		t[i] = gr_spawn_after((int64_t)(1000 - i) * GR_MSEC, count, NULL);
	for (int i = 0; i < 1000; i++)
		assert_ok(gr_later_cancel(t[i]));
	int64_t t0 = gr_now();
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_lt(gr_now() - t0, LATE_BOUND);
	cr_assert_eq(fired_count, 0);
}

Test(later, detached_spawns_fire_and_free_themselves)
{
	fired_count = 0;
	gr_later *a = gr_spawn_after(5 * GR_MSEC, count, NULL);
	gr_later *b = gr_spawn_at(0, count, NULL); /* in the past: next turn */
	cr_assert(a && b);
	assert_ok(gr_later_detach(a));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(fired_count, 2);
	assert_ok(gr_later_detach(b)); /* fired: released now */
}

/* 10k pending at once, many sharing a deadline: all fire, in (deadline,
 * creation) order. */
#define MANY 10000

static int many_log[MANY];
static int many_n;
static int64_t many_when[MANY];

static void many_note(void *arg)
{
	many_log[many_n++] = (int)(intptr_t)arg;
}

Test(later, ten_thousand_pending_spawns_fire_in_order)
{
	int64_t base = gr_now() + 30 * GR_MSEC;

	many_n = 0;
	srand(7);
	for (int i = 0; i < MANY; i++) {
		/* 50 distinct deadlines a millisecond apart, in random order. */
		many_when[i] = base + (rand() % 50) * GR_MSEC;
		gr_later *t = gr_spawn_at(many_when[i], many_note, (void *)(intptr_t)i);
		cr_assert_not_null(t);
		assert_ok(gr_later_detach(t));
	}
	assert_ok(gr_hub_join(gr_now() + 30 * GR_SEC));
	cr_assert_eq(many_n, MANY);
	for (int k = 1; k < MANY; k++) {
		int a = many_log[k - 1], b = many_log[k];

		cr_assert(many_when[a] < many_when[b] || (many_when[a] == many_when[b] && a < b),
			  "position %d: spawn %d (due %lld) before spawn %d (due %lld)", k, a,
			  (long long)many_when[a], b, (long long)many_when[b]);
	}
}

static void respawn(void *arg)
{
	int *left = arg;

	if (--*left > 0)
		gr_later_detach(gr_spawn_after(GR_MSEC, respawn, left));
}

Test(later, a_spawned_function_may_spawn_later_again)
{
	int left = 5;

	assert_ok(gr_later_detach(gr_spawn_after(GR_MSEC, respawn, &left)));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(left, 0);
}

static void *cancel_from_other_thread(void *arg)
{
	return (void *)(intptr_t)gr_later_cancel(arg);
}

Test(later, bad_arguments_and_other_threads_handles_are_refused)
{
	void *r;
	pthread_t th;

	errno = 0;
	cr_assert_null(gr_spawn_after(GR_MSEC, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_null(gr_spawn_after(-1, count, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_null(gr_spawn_at(-5, count, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_later_cancel(NULL), -EINVAL);
	cr_assert_eq(gr_later_detach(NULL), -EINVAL);

	fired_count = 0;
	gr_later *t = gr_spawn_after(10 * GR_SEC, count, NULL);
	cr_assert_eq(pthread_create(&th, NULL, cancel_from_other_thread, t), 0);
	cr_assert_eq(pthread_join(th, &r), 0);
	cr_assert_eq((int)(intptr_t)r, -EPERM);
	assert_ok(gr_later_cancel(t));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(fired_count, 0);
}

static void *thread_with_pending(void *arg)
{
	const char *hub = arg;

	if (gr_hub_use(hub) < 0)
		return (void *)"hub";
	/* Pending when the thread ends: never run, nothing leaked (ASan). */
	if (!gr_spawn_after(10 * GR_SEC, count, NULL))
		return (void *)"spawn";
	if (!gr_spawn_after(0, count, NULL))
		return (void *)"spawn";
	return NULL;
}

Test(later, a_thread_ending_with_spawns_pending_runs_none_of_them)
{
	pthread_t th;
	void *why;
	int before = grt_count_fds();

	fired_count = 0;
	cr_assert_eq(pthread_create(&th, NULL, thread_with_pending, (void *)grt_hub()), 0);
	cr_assert_eq(pthread_join(th, &why), 0);
	cr_assert_null(why, "%s", (const char *)why);
	cr_assert_eq(fired_count, 0);
	cr_assert_eq(grt_count_fds(), before);
}
