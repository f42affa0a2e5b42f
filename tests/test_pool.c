/* test_pool.c — gr_pool (GreenPool) and gr_pile (GreenPile, imap): the
 * bound on running fibers, waiting for slots, wait-all, resize, kill, and
 * results in spawn order. Runs once per hub. Assertions run in the main
 * context; fibers only record. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "support.h"

GRT_SUITE(pool);
GRT_SUITE(pile);

#define LATE_OK (GR_SEC / 2)

static void settle(void)
{
	for (int i = 0; i < 4; i++)
		assert_ok(gr_sleep(0));
}

/* Work that counts how many run at once. */
struct load {
	int running, max_running, done, started;
	int yields;             /* how long each one works */
	gr_event *gate;         /* if set, work waits for it */
	int cancelled;          /* blocking calls that failed with ECANCELED */
};

static void work(void *arg)
{
	struct load *l = arg;

	l->started++;
	if (++l->running > l->max_running)
		l->max_running = l->running;
	for (int i = 0; i < l->yields; i++)
		gr_sleep(0);
	if (l->gate && gr_event_wait(l->gate, GR_FOREVER) == -ECANCELED)
		l->cancelled++;
	l->running--;
	l->done++;
}

Test(pool, never_runs_more_than_its_size)
{
	gr_pool p;
	struct load l = { .yields = 3 };

	assert_err(gr_pool_init(&p, 0), EINVAL);
	assert_ok(gr_pool_init(&p, 4));
	cr_assert_eq(gr_pool_free_slots(&p), 4);
	for (int i = 0; i < 200; i++) {
		assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
		cr_assert_leq(gr_pool_running(&p), 4);
	}
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 200);
	cr_assert_eq(l.max_running, 4, "max running %d", l.max_running);
	cr_assert_eq(gr_pool_running(&p), 0);
	cr_assert_eq(gr_pool_free_slots(&p), 4);
	assert_ok(gr_pool_destroy(&p));
}

Test(pool, spawn_does_not_run_the_work)
{
	gr_pool p;
	struct load l = { 0 };

	assert_ok(gr_pool_init(&p, 2));
	assert_ok(gr_pool_spawn(&p, work, &l, 0));
	cr_assert_eq(l.started, 0);
	cr_assert_eq(gr_pool_running(&p), 1, "a spawned fiber holds its slot at once");
	cr_assert_eq(gr_pool_free_slots(&p), 1);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 1);
	assert_err(gr_pool_spawn(&p, NULL, NULL, 0), EINVAL);
	assert_ok(gr_pool_destroy(&p));
}

struct spawner {
	gr_pool *p;
	struct load *l;
	int64_t deadline;
	int id;
	int *order;
	int *norder;
	int r;
};

static void *spawner_fiber(void *arg)
{
	struct spawner *s = arg;

	s->r = gr_pool_spawn(s->p, work, s->l, s->deadline);
	if (s->r == 0 && s->order)
		s->order[(*s->norder)++] = s->id;
	return NULL;
}

Test(pool, spawn_waits_for_a_slot_with_a_deadline)
{
	gr_pool p;
	gr_event gate;
	struct load l = { 0 };

	assert_ok(gr_event_init(&gate));
	l.gate = &gate;
	assert_ok(gr_pool_init(&p, 2));
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	cr_assert_eq(gr_pool_free_slots(&p), 0);
	assert_err(gr_pool_spawn(&p, work, &l, 0), ETIMEDOUT);
	int64_t t0 = gr_now();
	assert_err(gr_pool_spawn(&p, work, &l, t0 + 25 * GR_MSEC), ETIMEDOUT);
	int64_t took = gr_now() - t0;
	cr_assert_geq(took, 25 * GR_MSEC, "woke early: %lld", (long long)took);
	cr_assert_lt(took, 25 * GR_MSEC + LATE_OK, "woke late: %lld", (long long)took);
	cr_assert_eq(l.started, 2);
	cr_assert_eq(gr_pool_running(&p), 2);
	assert_err(gr_pool_wait(&p, gr_now() + 10 * GR_MSEC), ETIMEDOUT);
	assert_err(gr_pool_destroy(&p), EBUSY);
	gr_event_set(&gate);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 2);
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&gate));
}

Test(pool, waiting_spawners_get_slots_in_order_and_resize_hands_them_out)
{
	gr_pool p;
	gr_event gate;
	struct load l = { 0 };
	struct spawner s[4];
	gr_fiber *f[4];
	int order[4], norder = 0;

	assert_ok(gr_event_init(&gate));
	l.gate = &gate;
	assert_ok(gr_pool_init(&p, 1));
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	for (int i = 0; i < 4; i++) {
		s[i] = (struct spawner){ .p = &p, .l = &l, .deadline = GR_FOREVER, .id = i,
					 .order = order, .norder = &norder, .r = 1 };
		f[i] = gr_spawn(spawner_fiber, &s[i]);
	}
	settle();
	cr_assert_eq(norder, 0);
	/* Growing by two: the first two waiters get the new slots, at once. */
	assert_ok(gr_pool_resize(&p, 3));
	cr_assert_eq(gr_pool_running(&p), 3);
	/* ... and a newcomer cannot take a slot before the other two. */
	assert_ok(gr_pool_resize(&p, 4));
	assert_err(gr_pool_spawn(&p, work, &l, 0), ETIMEDOUT);
	settle();
	cr_assert_eq(norder, 3);
	cr_assert_eq(order[0], 0);
	cr_assert_eq(order[1], 1);
	cr_assert_eq(order[2], 2);
	/* Shrink below running: nothing new starts until running < 2. */
	assert_ok(gr_pool_resize(&p, 2));
	cr_assert_eq(gr_pool_free_slots(&p), 0);
	assert_err(gr_pool_resize(&p, 0), EINVAL);
	gr_event_set(&gate);
	assert_ok(gr_join(f[3], NULL, GR_FOREVER));
	cr_assert_eq(s[3].r, 0);
	cr_assert_eq(order[3], 3);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	for (int i = 0; i < 3; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	cr_assert_eq(l.done, 5);
	cr_assert_leq(l.max_running, 4);
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&gate));
}

Test(pool, killed_spawner_gives_up_and_a_kill_after_the_handoff_still_spawns)
{
	gr_pool p;
	gr_event gate;
	struct load l = { 0 };
	struct spawner a, b;

	assert_ok(gr_event_init(&gate));
	l.gate = &gate;
	assert_ok(gr_pool_init(&p, 1));
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	a = (struct spawner){ .p = &p, .l = &l, .deadline = GR_FOREVER, .r = 1 };
	b = (struct spawner){ .p = &p, .l = &l, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *fa = gr_spawn(spawner_fiber, &a);
	gr_fiber *fb = gr_spawn(spawner_fiber, &b);
	settle();
	assert_ok(gr_kill(fa));
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	cr_assert_eq(a.r, -ECANCELED);
	/* Free the slot: it goes to b; b is killed before it runs, and still
	 * uses the slot it was handed. */
	gr_event_set(&gate);
	while (l.done < 1)
		assert_ok(gr_sleep(0));
	assert_ok(gr_kill(fb));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert_eq(b.r, 0, "a slot handed over was lost to a kill");
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 2);
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&gate));
}

Test(pool, kill_stops_running_work_and_skips_unstarted_work)
{
	gr_pool p;
	gr_event gate;
	struct load l = { 0 };

	assert_ok(gr_event_init(&gate));
	l.gate = &gate;
	assert_ok(gr_pool_init(&p, 8));
	for (int i = 0; i < 3; i++)
		assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	settle();
	cr_assert_eq(l.started, 3);
	for (int i = 0; i < 2; i++)
		assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	cr_assert_eq(gr_pool_kill(&p), 5);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.started, 3, "work killed before it started ran");
	cr_assert_eq(l.cancelled, 3);
	cr_assert_eq(gr_pool_running(&p), 0);
	cr_assert_eq(gr_pool_kill(&p), 0);
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&gate));
}

static void wait_own_pool(void *arg)
{
	struct { gr_pool *p; int r; } *x = arg;

	x->r = gr_pool_wait(x->p, GR_FOREVER);
}

Test(pool, waiting_for_ones_own_pool_is_a_deadlock)
{
	gr_pool p;
	struct { gr_pool *p; int r; } x = { &p, 1 };

	assert_ok(gr_pool_init(&p, 2));
	assert_ok(gr_pool_spawn(&p, wait_own_pool, &x, GR_FOREVER));
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(x.r, -EDEADLK);

	/* Work stuck forever: main's wait-all is a deadlock, not a hang. */
	gr_event never;
	struct load l = { 0 };
	assert_ok(gr_event_init(&never));
	l.gate = &never;
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	assert_err(gr_pool_wait(&p, GR_FOREVER), EDEADLK);
	gr_event_set(&never);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&never));
}

/* ----------------------------------------------------------------- pile */

struct job {
	int id;
	int sleep_ms;
	int *running, *max_running;
};

static void *job_fn(void *arg)
{
	struct job *j = arg;

	if (j->running && ++*j->running > *j->max_running)
		*j->max_running = *j->running;
	if (j->sleep_ms)
		gr_sleep(j->sleep_ms * GR_MSEC);
	else
		gr_sleep(0);
	if (j->running)
		--*j->running;
	return (void *)(intptr_t)(j->id * 10);
}

Test(pile, results_come_back_in_spawn_order)
{
	gr_pile pile;
	struct job j[6];
	void *r;

	assert_ok(gr_pile_init(&pile, NULL));
	assert_err(gr_pile_next(&pile, &r, GR_FOREVER), ENOENT);
	/* The later a job is spawned, the sooner it finishes. */
	for (int i = 0; i < 6; i++) {
		j[i] = (struct job){ .id = i, .sleep_ms = 2 * (6 - i) };
		assert_ok(gr_pile_spawn(&pile, job_fn, &j[i], GR_FOREVER));
	}
	cr_assert_eq(gr_pile_len(&pile), 6);
	for (int i = 0; i < 6; i++) {
		r = NULL;
		assert_ok(gr_pile_next(&pile, &r, GR_FOREVER));
		cr_assert_eq((intptr_t)r, i * 10, "result %d out of order", i);
	}
	cr_assert_eq(gr_pile_len(&pile), 0);
	assert_err(gr_pile_next(&pile, &r, GR_FOREVER), ENOENT);
	assert_ok(gr_pile_destroy(&pile));
}

Test(pile, in_a_pool_runs_at_most_its_size)
{
	gr_pool p;
	gr_pile pile;
	struct job j[40];
	int running = 0, max_running = 0;
	void *r;

	assert_ok(gr_pool_init(&p, 3));
	assert_ok(gr_pile_init(&pile, &p));
	for (int i = 0; i < 40; i++) {
		j[i] = (struct job){ .id = i, .sleep_ms = i % 3, .running = &running,
				     .max_running = &max_running };
		assert_ok(gr_pile_spawn(&pile, job_fn, &j[i], GR_FOREVER));
	}
	for (int i = 0; i < 40; i++) {
		assert_ok(gr_pile_next(&pile, &r, GR_FOREVER));
		cr_assert_eq((intptr_t)r, i * 10);
	}
	cr_assert_eq(max_running, 3);
	assert_ok(gr_pile_destroy(&pile));
	assert_ok(gr_pool_destroy(&p));
}

Test(pile, imap_is_lazy_bounded_and_ordered)
{
	gr_pool p;
	gr_pile pile;
	enum { N = 50 };
	struct job j[N];
	void *args[N];
	int running = 0, max_running = 0;
	void *r;

	assert_ok(gr_pool_init(&p, 4));
	assert_ok(gr_pile_init(&pile, &p));
	for (int i = 0; i < N; i++) {
		j[i] = (struct job){ .id = i, .sleep_ms = (N - i) % 4, .running = &running,
				     .max_running = &max_running };
		args[i] = &j[i];
	}
	assert_ok(gr_pile_imap(&pile, job_fn, args, N));
	cr_assert_eq(gr_pool_running(&p), 4, "imap did not fill the pool's free slots");
	cr_assert_eq(gr_pile_len(&pile), N);
	assert_err(gr_pile_imap(&pile, job_fn, args, N), EBUSY);
	assert_err(gr_pile_spawn(&pile, job_fn, &j[0], 0), EBUSY);
	for (int i = 0; i < N; i++) {
		assert_ok(gr_pile_next(&pile, &r, GR_FOREVER));
		cr_assert_eq((intptr_t)r, i * 10, "imap result %d out of order", i);
		cr_assert_leq(gr_pool_running(&p), 4);
	}
	cr_assert_eq(max_running, 4);
	assert_err(gr_pile_next(&pile, &r, GR_FOREVER), ENOENT);
	/* Done: a new imap (or spawn) may start; an empty one is fine. */
	assert_ok(gr_pile_imap(&pile, job_fn, args, 0));
	assert_err(gr_pile_next(&pile, &r, 0), ENOENT);
	assert_ok(gr_pile_destroy(&pile));
	assert_ok(gr_pool_destroy(&p));
}

struct reader {
	gr_pile *pile;
	int64_t deadline;
	int r;
	void *value;
};

static void *reader_fiber(void *arg)
{
	struct reader *rd = arg;

	rd->r = gr_pile_next(rd->pile, &rd->value, rd->deadline);
	return NULL;
}

static void *gated_job(void *arg)
{
	struct { gr_event *gate; intptr_t v; } *g = arg;

	gr_event_wait(g->gate, GR_FOREVER);
	return (void *)g->v;
}

Test(pile, readers_take_results_in_the_order_they_asked)
{
	gr_pile pile;
	gr_event gate;
	struct { gr_event *gate; intptr_t v; } g[2] = { { &gate, 1 }, { &gate, 2 } };
	struct reader rd[3];
	gr_fiber *f[3];

	assert_ok(gr_event_init(&gate));
	assert_ok(gr_pile_init(&pile, NULL));
	assert_ok(gr_pile_spawn(&pile, gated_job, &g[0], GR_FOREVER));
	assert_ok(gr_pile_spawn(&pile, gated_job, &g[1], GR_FOREVER));
	for (int i = 0; i < 3; i++) {
		rd[i] = (struct reader){ .pile = &pile, .deadline = GR_FOREVER, .r = 1 };
		f[i] = gr_spawn(reader_fiber, &rd[i]);
	}
	settle();
	/* Two results for three readers: the third has nothing to wait for. */
	assert_ok(gr_join(f[2], NULL, GR_FOREVER));
	cr_assert_eq(rd[2].r, -ENOENT);
	assert_err(gr_pile_destroy(&pile), EBUSY);
	gr_event_set(&gate);
	for (int i = 0; i < 2; i++) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(rd[i].r, 0);
		cr_assert_eq((intptr_t)rd[i].value, i + 1);
	}
	assert_ok(gr_pile_destroy(&pile));
	assert_ok(gr_event_destroy(&gate));
}

Test(pile, a_reader_that_gives_up_leaves_the_result_for_the_next)
{
	gr_pile pile;
	gr_event gate;
	struct { gr_event *gate; intptr_t v; } g = { &gate, 7 };
	void *v = NULL;

	assert_ok(gr_event_init(&gate));
	assert_ok(gr_pile_init(&pile, NULL));
	assert_ok(gr_pile_spawn(&pile, gated_job, &g, GR_FOREVER));
	int64_t t0 = gr_now();
	assert_err(gr_pile_next(&pile, &v, t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC);
	struct reader rd = { .pile = &pile, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(reader_fiber, &rd);
	settle();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(rd.r, -ECANCELED);
	/* Nothing more can finish the job: deadlock, not a hang. */
	assert_err(gr_pile_next(&pile, &v, GR_FOREVER), EDEADLK);
	gr_event_set(&gate);
	assert_ok(gr_pile_next(&pile, &v, GR_FOREVER));
	cr_assert_eq((intptr_t)v, 7);
	assert_ok(gr_pile_destroy(&pile));
	assert_ok(gr_event_destroy(&gate));
}

/* An imap of ten gated_job inputs (values 1..10) on a pool of 3. */
struct gated_imap {
	gr_pool p;
	gr_pile pile;
	gr_event gate;
	struct { gr_event *gate; intptr_t v; } g[10];
	void *args[10];
};

static void gated_imap_start(struct gated_imap *x)
{
	assert_ok(gr_event_init(&x->gate));
	assert_ok(gr_pool_init(&x->p, 3));
	assert_ok(gr_pile_init(&x->pile, &x->p));
	for (int i = 0; i < 10; i++) {
		x->g[i].gate = &x->gate;
		x->g[i].v = i + 1;
		x->args[i] = &x->g[i];
	}
	assert_ok(gr_pile_imap(&x->pile, gated_job, x->args, 10));
}

static void gated_imap_end(struct gated_imap *x)
{
	assert_ok(gr_pile_destroy(&x->pile));
	assert_ok(gr_pool_destroy(&x->p));
	assert_ok(gr_event_destroy(&x->gate));
}

Test(pile, kill_ends_the_work_and_drops_the_rest_of_an_imap)
{
	struct gated_imap x;
	gr_pool *const p = &x.p;
	gr_pile *const pile = &x.pile;
	void *v;

	gated_imap_start(&x);
	cr_assert_eq(gr_pile_len(pile), 10);
	settle();
	cr_assert_eq(gr_pile_kill(pile), 3);
	cr_assert_eq(gr_pile_len(pile), 3, "the unstarted imap items were not dropped");
	for (int i = 0; i < 3; i++) {
		v = NULL;
		assert_ok(gr_pile_next(pile, &v, GR_FOREVER));
		/* gated_job returns its value even when its wait was cancelled. */
		cr_assert_eq((intptr_t)v, i + 1);
	}
	assert_err(gr_pile_next(pile, &v, GR_FOREVER), ENOENT);

	/* Killed before they started: they leave a NULL result. */
	assert_ok(gr_pile_spawn(pile, gated_job, &x.g[0], GR_FOREVER));
	assert_ok(gr_pile_spawn(pile, gated_job, &x.g[1], GR_FOREVER));
	cr_assert_eq(gr_pool_kill(p), 2);
	for (int i = 0; i < 2; i++) {
		v = &x.g;
		assert_ok(gr_pile_next(pile, &v, GR_FOREVER));
		cr_assert_null(v);
	}
	gated_imap_end(&x);
}

Test(pile, next_item_tells_which_imap_inputs_never_ran_after_a_kill)
{
	struct gated_imap x;
	struct gr_pile_item it;

	gated_imap_start(&x);
	settle();                       /* inputs 0..2 run, waiting on the gate */
	cr_assert_eq(gr_event_set(&x.gate), 3);
	assert_ok(gr_sleep(0));         /* they end; 3..5 are spawned, not yet run */
	cr_assert_eq(gr_pile_kill(&x.pile), 3);
	bool ran[10] = { false }, seen[10] = { false };
	int n = 0;
	for (int r; (r = gr_pile_next_item(&x.pile, &it, GR_FOREVER)) == 0; n++) {
		cr_assert_lt(it.index, 10u);
		cr_assert_eq(it.index, (size_t)n, "items out of order");
		cr_assert_eq(it.arg, x.args[it.index]);
		seen[it.index] = true;
		ran[it.index] = it.ran;
		if (it.ran)
			cr_assert_eq((intptr_t)it.result, (intptr_t)it.index + 1);
		else
			cr_assert_null(it.result);
	}
	cr_assert_eq(n, 6, "%d items read back", n);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(seen[i], i < 6, "input %d %s read back", i, seen[i] ? "was" : "was not");
		cr_assert_eq(ran[i], i < 3, "input %d: ran = %d", i, ran[i]);
	}
	/* gr_pile_spawn work says so. */
	assert_ok(gr_pile_spawn(&x.pile, gated_job, &x.g[0], GR_FOREVER));
	assert_ok(gr_pile_next_item(&x.pile, &it, GR_FOREVER));
	cr_assert_eq(it.index, GR_PILE_SPAWNED);
	cr_assert_eq(it.ran, 1);
	cr_assert_eq(it.arg, &x.g[0]);
	assert_err(gr_pile_next_item(&x.pile, NULL, 0), EINVAL);
	gated_imap_end(&x);
}

Test(pile, destroy_drops_unread_results)
{
	gr_pile pile;
	struct job j[3] = { { .id = 0 }, { .id = 1 }, { .id = 2 } };

	assert_ok(gr_pile_init(&pile, NULL));
	for (int i = 0; i < 3; i++)
		assert_ok(gr_pile_spawn(&pile, job_fn, &j[i], GR_FOREVER));
	assert_err(gr_pile_destroy(&pile), EBUSY);
	assert_ok(gr_hub_join(GR_FOREVER));
	assert_ok(gr_pile_destroy(&pile));
	assert_err(gr_pile_next(&pile, NULL, 0), EINVAL);
}

/* ------------------------------------------------------------ the spawn's fast path (review s20a) */

/* gr_pool_spawn checks the gate without a park record and builds one only
 * when it must wait: the checks must still refuse a killed caller, and one
 * past its own deadline, when a slot is free; a try (deadline 0) works for
 * a killed fiber and never waits. */
struct gate_probe {
	gr_pool *p;
	struct load *l;
	int killed_forever, killed_try, past_own_deadline;
};

static void *probe_gate(void *arg)
{
	struct gate_probe *g = arg;

	gr_sleep(3600 * GR_SEC); /* parked until killed */
	g->killed_forever = gr_pool_spawn(g->p, work, g->l, GR_FOREVER);
	g->killed_try = gr_pool_spawn(g->p, work, g->l, 0);
	gr_kill_ack(GR_FOREVER);
	gr_deadline_set(gr_now() - 1);
	g->past_own_deadline = gr_pool_spawn(g->p, work, g->l, GR_FOREVER);
	gr_deadline_set(GR_FOREVER);
	return NULL;
}

Test(pool, the_gate_refuses_a_killed_or_late_spawner_even_with_a_free_slot)
{
	gr_pool p;
	struct load l = { 0 };
	struct gate_probe g = { .p = &p, .l = &l };

	assert_ok(gr_pool_init(&p, 4));
	gr_fiber *f = gr_spawn(probe_gate, &g);
	settle();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(g.killed_forever, -ECANCELED);
	cr_assert_eq(g.killed_try, 0, "a killed fiber's try must still spawn");
	cr_assert_eq(g.past_own_deadline, -ETIMEDOUT);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 1);
	assert_ok(gr_pool_destroy(&p));
}

/* Spawners whose deadlines pass around the moment the slot frees: each
 * either spawned (its work ran) or timed out, none is lost or counted twice,
 * and the pool never runs more than its size. */
static void sleep_200us(void *arg)
{
	struct load *l = arg;

	l->started++;
	if (++l->running > l->max_running)
		l->max_running = l->running;
	gr_sleep(200 * (GR_MSEC / 1000));
	l->running--;
	l->done++;
}

Test(pool, spawner_deadlines_racing_the_slots_release_lose_nothing)
{
	gr_pool p;
	struct load l = { 0 };
	enum { ROUNDS = 40, N = 4 };
	int spawned = 0;

	assert_ok(gr_pool_init(&p, 1));
	for (int round = 0; round < ROUNDS; round++) {
		struct spawner s[N];
		gr_fiber *f[N];
		int64_t base = gr_now();

		assert_ok(gr_pool_spawn(&p, sleep_200us, &l, GR_FOREVER)); /* holds the slot */
		for (int i = 0; i < N; i++) {
			s[i] = (struct spawner){ .p = &p, .l = &l, .r = 1,
						 .deadline = base + (150 + 25 * ((round + i) % 5)) *
									    (GR_MSEC / 1000) };
			f[i] = gr_spawn(spawner_fiber, &s[i]);
		}
		for (int i = 0; i < N; i++) {
			assert_ok(gr_join(f[i], NULL, GR_FOREVER));
			cr_assert(s[i].r == 0 || s[i].r == -ETIMEDOUT, "round %d: %s", round,
				  strerror(-s[i].r));
			spawned += s[i].r == 0;
		}
		assert_ok(gr_pool_wait(&p, GR_FOREVER));
		cr_assert_eq(gr_pool_running(&p), 0);
	}
	cr_assert_eq(l.max_running, 1);
	cr_assert_eq(l.done, l.started);
	cr_assert_eq(l.done, ROUNDS + spawned, "%d ran, %d rounds + %d spawns", l.done, ROUNDS,
		     spawned);
	assert_ok(gr_pool_destroy(&p));
}

/* A spawner handed the slot and then killed, with its deadline timer still
 * in flight, and one killed while it waits with a deadline: the first uses
 * its slot, the second gives up, the third waiter gets the next slot. */
Test(pool, kill_of_a_deadline_spawner_before_and_after_the_handoff)
{
	gr_pool p;
	gr_event gate;
	struct load l = { 0 };
	struct spawner a, b, c;

	assert_ok(gr_event_init(&gate));
	l.gate = &gate;
	assert_ok(gr_pool_init(&p, 1));
	assert_ok(gr_pool_spawn(&p, work, &l, GR_FOREVER));
	int64_t later = gr_now() + 10 * GR_SEC;
	a = (struct spawner){ .p = &p, .l = &l, .deadline = later, .r = 1 };
	b = (struct spawner){ .p = &p, .l = &l, .deadline = later, .r = 1 };
	c = (struct spawner){ .p = &p, .l = &l, .deadline = later, .r = 1 };
	gr_fiber *fa = gr_spawn(spawner_fiber, &a);
	gr_fiber *fb = gr_spawn(spawner_fiber, &b);
	gr_fiber *fc = gr_spawn(spawner_fiber, &c);
	settle();
	gr_event_set(&gate); /* the running work ends: the slot goes to a */
	while (l.done < 1)
		assert_ok(gr_sleep(0));
	assert_ok(gr_kill(fa)); /* handed the slot, not yet run */
	assert_ok(gr_kill(fb)); /* still waiting */
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert_eq(a.r, 0, "a slot handed over was lost to a kill");
	cr_assert_eq(b.r, -ECANCELED);
	assert_ok(gr_join(fc, NULL, GR_FOREVER));
	cr_assert_eq(c.r, 0);
	assert_ok(gr_pool_wait(&p, GR_FOREVER));
	cr_assert_eq(l.done, 3);
	cr_assert_eq(l.max_running, 1);
	assert_ok(gr_pool_destroy(&p));
	assert_ok(gr_event_destroy(&gate));
}
