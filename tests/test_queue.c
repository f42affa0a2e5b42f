/* test_queue.c — gr_queue: order, bounds, rendezvous, try variants, close,
 * deadlines, kills and hand-off races, deadlock, misuse. Runs once per hub.
 * Assertions run in the main context; fibers only record. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "support.h"

GRT_SUITE(queue);

#define LATE_OK (GR_SEC / 2)

#define ITEM(i) ((void *)(uintptr_t)(i))

static void settle(void)
{
	for (int i = 0; i < 4; i++)
		assert_ok(gr_sleep(0));
}

/* One fiber doing one put or one get. */
struct op {
	gr_queue *q;
	int64_t deadline;
	uintptr_t item;
	int r;
	int done;
};

static void *put_fiber(void *arg)
{
	struct op *o = arg;

	o->r = gr_queue_put(o->q, ITEM(o->item), o->deadline);
	o->done = 1;
	return NULL;
}

static void *get_fiber(void *arg)
{
	struct op *o = arg;
	void *it = NULL;

	o->r = gr_queue_get(o->q, &it, o->deadline);
	o->item = (uintptr_t)it;
	o->done = 1;
	return NULL;
}

Test(queue, unbounded_keeps_fifo_order_through_growth_and_shrink)
{
	gr_queue q;
	void *it;

	assert_ok(gr_queue_init(&q, GR_QUEUE_UNBOUNDED));
	for (int round = 0; round < 3; round++) {
		for (uintptr_t i = 0; i < 100000; i++)
			assert_ok(gr_queue_tryput(&q, ITEM(i)));
		cr_assert_eq(gr_queue_len(&q), 100000);
		/* Interleave to wrap the ring around. */
		for (uintptr_t i = 0; i < 50000; i++) {
			assert_ok(gr_queue_get(&q, &it, 0));
			cr_assert_eq((uintptr_t)it, i);
		}
		for (uintptr_t i = 100000; i < 150000; i++)
			assert_ok(gr_queue_put(&q, ITEM(i), GR_FOREVER));
		for (uintptr_t i = 50000; i < 150000; i++) {
			assert_ok(gr_queue_tryget(&q, &it));
			cr_assert_eq((uintptr_t)it, i, "out of order at %zu", (size_t)i);
		}
		cr_assert_eq(gr_queue_len(&q), 0);
		assert_err(gr_queue_tryget(&q, &it), EAGAIN);
	}
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, bounded_put_waits_for_room_and_putters_keep_their_order)
{
	gr_queue q;
	struct op p[3];
	gr_fiber *f[3];
	void *it;

	assert_err(gr_queue_init(NULL, 1), EINVAL);
	assert_ok(gr_queue_init(&q, 2));
	assert_ok(gr_queue_put(&q, ITEM(1), GR_FOREVER));
	assert_ok(gr_queue_tryput(&q, ITEM(2)));
	assert_err(gr_queue_tryput(&q, ITEM(99)), EAGAIN);
	assert_err(gr_queue_put(&q, ITEM(99), 0), ETIMEDOUT);
	cr_assert_eq(gr_queue_len(&q), 2);
	for (int i = 0; i < 3; i++) {
		p[i] = (struct op){ .q = &q, .deadline = GR_FOREVER, .item = 3 + (uintptr_t)i, .r = 1 };
		f[i] = gr_spawn(put_fiber, &p[i]);
	}
	settle();
	for (int i = 0; i < 3; i++)
		cr_assert_eq(p[i].done, 0, "a put into a full queue returned");
	cr_assert_eq(gr_queue_len(&q), 2, "waiting putters' items are not counted");
	/* Each get makes room for exactly the first waiting putter, behind the
	 * items already queued; the putters resume in order. */
	for (uintptr_t want = 1; want <= 5; want++) {
		assert_ok(gr_queue_tryget(&q, &it));
		cr_assert_eq((uintptr_t)it, want);
		if (want <= 3) {
			cr_assert_eq(gr_queue_len(&q), 2, "the freed slot was not refilled at once");
			/* Full again: a newcomer cannot jump the waiting putters. */
			assert_err(gr_queue_tryput(&q, ITEM(99)), EAGAIN);
		}
	}
	cr_assert_eq(gr_queue_len(&q), 0);
	for (int i = 0; i < 3; i++) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(p[i].r, 0);
	}
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, put_with_a_waiting_getter_hands_over_without_switching)
{
	gr_queue q;
	struct op g[3];
	gr_fiber *f[3];

	assert_ok(gr_queue_init(&q, 1));
	for (int i = 0; i < 3; i++) {
		g[i] = (struct op){ .q = &q, .deadline = GR_FOREVER, .r = 1 };
		f[i] = gr_spawn(get_fiber, &g[i]);
	}
	settle();
	assert_err(gr_queue_destroy(&q), EBUSY);
	for (uintptr_t i = 0; i < 3; i++)
		assert_ok(gr_queue_put(&q, ITEM(10 + i), GR_FOREVER));
	/* Three puts into a queue of one: each went straight to a getter. */
	cr_assert_eq(gr_queue_len(&q), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(g[i].done, 0, "gr_queue_put switched to the getter");
	for (int i = 0; i < 3; i++) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert_eq(g[i].r, 0);
		cr_assert_eq(g[i].item, 10 + (uintptr_t)i, "getters served out of order");
	}
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, capacity_zero_is_a_rendezvous)
{
	gr_queue q;
	void *it;

	assert_ok(gr_queue_init(&q, 0));
	assert_err(gr_queue_tryput(&q, ITEM(1)), EAGAIN);
	assert_err(gr_queue_tryget(&q, &it), EAGAIN);

	/* A put waits for a getter. */
	struct op p = { .q = &q, .deadline = GR_FOREVER, .item = 7, .r = 1 };
	gr_fiber *f = gr_spawn(put_fiber, &p);
	settle();
	cr_assert_eq(p.done, 0);
	cr_assert_eq(gr_queue_len(&q), 0);
	assert_ok(gr_queue_get(&q, &it, GR_FOREVER));
	cr_assert_eq((uintptr_t)it, 7);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(p.r, 0);

	/* A get waits for a putter; tryput then succeeds. */
	struct op g = { .q = &q, .deadline = GR_FOREVER, .r = 1 };
	f = gr_spawn(get_fiber, &g);
	settle();
	assert_ok(gr_queue_tryput(&q, ITEM(8)));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(g.r, 0);
	cr_assert_eq(g.item, 8);

	int64_t t0 = gr_now();
	assert_err(gr_queue_put(&q, ITEM(9), t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC);
	assert_err(gr_queue_tryget(&q, &it), EAGAIN); /* the timed-out item is gone */
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, close_lets_getters_drain_then_fails_with_epipe)
{
	gr_queue q;
	void *it;

	assert_ok(gr_queue_init(&q, 4));
	assert_ok(gr_queue_put(&q, ITEM(1), 0));
	assert_ok(gr_queue_put(&q, ITEM(2), 0));
	assert_ok(gr_queue_close(&q));
	assert_ok(gr_queue_close(&q)); /* harmless twice */
	assert_err(gr_queue_put(&q, ITEM(3), GR_FOREVER), EPIPE);
	assert_err(gr_queue_tryput(&q, ITEM(3)), EPIPE);
	cr_assert_eq(gr_queue_len(&q), 2);
	assert_ok(gr_queue_get(&q, &it, GR_FOREVER));
	cr_assert_eq((uintptr_t)it, 1);
	assert_ok(gr_queue_tryget(&q, &it));
	cr_assert_eq((uintptr_t)it, 2);
	assert_err(gr_queue_get(&q, &it, GR_FOREVER), EPIPE);
	assert_err(gr_queue_tryget(&q, &it), EPIPE);
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, close_wakes_waiting_getters_and_putters)
{
	gr_queue q, full;
	struct op g[2], p[2];
	gr_fiber *fg[2], *fp[2];
	void *it;

	assert_ok(gr_queue_init(&q, 4));
	assert_ok(gr_queue_init(&full, 1));
	assert_ok(gr_queue_put(&full, ITEM(1), 0));
	for (int i = 0; i < 2; i++) {
		g[i] = (struct op){ .q = &q, .deadline = GR_FOREVER, .r = 1 };
		fg[i] = gr_spawn(get_fiber, &g[i]);
		p[i] = (struct op){ .q = &full, .deadline = GR_FOREVER, .item = 2 + (uintptr_t)i, .r = 1 };
		fp[i] = gr_spawn(put_fiber, &p[i]);
	}
	settle();
	assert_ok(gr_queue_close(&q));
	assert_ok(gr_queue_close(&full));
	for (int i = 0; i < 2; i++) {
		assert_ok(gr_join(fg[i], NULL, GR_FOREVER));
		assert_ok(gr_join(fp[i], NULL, GR_FOREVER));
		cr_assert_eq(g[i].r, -EPIPE);
		cr_assert_eq(p[i].r, -EPIPE);
	}
	/* The waiting putters' items were not queued; the queued one drains. */
	cr_assert_eq(gr_queue_len(&full), 1);
	assert_ok(gr_queue_get(&full, &it, GR_FOREVER));
	cr_assert_eq((uintptr_t)it, 1);
	assert_err(gr_queue_get(&full, &it, GR_FOREVER), EPIPE);
	assert_ok(gr_queue_destroy(&q));
	assert_ok(gr_queue_destroy(&full));
}

Test(queue, get_deadline_and_fiber_deadline)
{
	gr_queue q;
	void *it = ITEM(42);

	assert_ok(gr_queue_init(&q, 8));
	int64_t t0 = gr_now();
	assert_err(gr_queue_get(&q, &it, t0 + 30 * GR_MSEC), ETIMEDOUT);
	int64_t took = gr_now() - t0;
	cr_assert_geq(took, 30 * GR_MSEC, "woke early: %lld", (long long)took);
	cr_assert_lt(took, 30 * GR_MSEC + LATE_OK, "woke late: %lld", (long long)took);
	cr_assert_eq((uintptr_t)it, 42, "a failed get wrote the item");
	assert_err(gr_queue_get(&q, &it, 0), ETIMEDOUT);

	int64_t dl = gr_now() + 20 * GR_MSEC;
	int64_t old = gr_deadline_set(dl);
	assert_err(gr_queue_get(&q, &it, GR_FOREVER), ETIMEDOUT);
	cr_assert_geq(gr_now(), dl, "the fiber deadline ended the wait early");
	gr_deadline_set(old);
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, killed_waiters_lose_nothing)
{
	gr_queue q;
	void *it;

	/* A waiting getter killed: it gets nothing, the next getter gets the item. */
	assert_ok(gr_queue_init(&q, 1));
	struct op g1 = { .q = &q, .deadline = GR_FOREVER, .r = 1 };
	struct op g2 = { .q = &q, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f1 = gr_spawn(get_fiber, &g1);
	gr_fiber *f2 = gr_spawn(get_fiber, &g2);
	settle();
	assert_ok(gr_kill(f1));
	assert_ok(gr_queue_put(&q, ITEM(5), GR_FOREVER));
	assert_ok(gr_join(f1, NULL, GR_FOREVER));
	assert_ok(gr_join(f2, NULL, GR_FOREVER));
	cr_assert_eq(g1.r, -ECANCELED);
	cr_assert_eq(g2.r, 0);
	cr_assert_eq(g2.item, 5);

	/* A getter handed an item, then killed before it ran: it keeps it. */
	g1 = (struct op){ .q = &q, .deadline = GR_FOREVER, .r = 1 };
	f1 = gr_spawn(get_fiber, &g1);
	settle();
	assert_ok(gr_queue_put(&q, ITEM(6), GR_FOREVER));
	assert_ok(gr_kill(f1));
	assert_ok(gr_join(f1, NULL, GR_FOREVER));
	cr_assert_eq(g1.r, 0, "an item handed over was lost to a kill");
	cr_assert_eq(g1.item, 6);
	cr_assert_eq(gr_queue_len(&q), 0, "the item was also queued");

	/* A waiting putter killed: its item is not queued. */
	assert_ok(gr_queue_put(&q, ITEM(7), 0));
	struct op p1 = { .q = &q, .deadline = GR_FOREVER, .item = 8, .r = 1 };
	struct op p2 = { .q = &q, .deadline = GR_FOREVER, .item = 9, .r = 1 };
	f1 = gr_spawn(put_fiber, &p1);
	f2 = gr_spawn(put_fiber, &p2);
	settle();
	assert_ok(gr_kill(f1));
	settle();
	assert_ok(gr_queue_get(&q, &it, 0));
	cr_assert_eq((uintptr_t)it, 7);
	/* p2's item moved in; killing p2 now is too late to take it back. */
	assert_ok(gr_kill(f2));
	assert_ok(gr_join(f1, NULL, GR_FOREVER));
	assert_ok(gr_join(f2, NULL, GR_FOREVER));
	cr_assert_eq(p1.r, -ECANCELED);
	cr_assert_eq(p2.r, 0);
	assert_ok(gr_queue_get(&q, &it, 0));
	cr_assert_eq((uintptr_t)it, 9);
	assert_err(gr_queue_tryget(&q, &it), EAGAIN);

	/* A killed fiber's later calls fail even when they would not wait;
	 * a pure try still works. */
	assert_ok(gr_queue_put(&q, ITEM(10), 0));
	g1 = (struct op){ .q = &q, .deadline = GR_FOREVER, .r = 1 };
	f1 = gr_spawn(get_fiber, &g1);
	assert_ok(gr_kill(f1)); /* killed before it started: its body never runs */
	assert_ok(gr_join(f1, NULL, GR_FOREVER));
	cr_assert_eq(g1.r, 1);
	cr_assert_eq(gr_queue_len(&q), 1);
	assert_ok(gr_queue_destroy(&q));
}

static void *self_kill_then_get(void *arg)
{
	struct op *o = arg;
	void *it = NULL;

	gr_kill(gr_self());
	o->r = gr_queue_get(o->q, &it, GR_FOREVER);
	o->done = gr_queue_get(o->q, &it, 0);
	o->item = (uintptr_t)it;
	return NULL;
}

Test(queue, killed_fiber_may_still_try)
{
	gr_queue q;

	assert_ok(gr_queue_init(&q, 2));
	assert_ok(gr_queue_put(&q, ITEM(3), 0));
	struct op o = { .q = &q, .r = 1 };
	gr_fiber *f = gr_spawn(self_kill_then_get, &o);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(o.r, -ECANCELED);
	cr_assert_eq(o.done, 0);
	cr_assert_eq(o.item, 3);
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, get_on_a_queue_nobody_feeds_is_a_deadlock)
{
	gr_queue q;
	void *it;

	assert_ok(gr_queue_init(&q, 1));
	struct op g = { .q = &q, .deadline = GR_FOREVER, .r = 1 };
	gr_fiber *f = gr_spawn(get_fiber, &g);
	assert_err(gr_queue_get(&q, &it, GR_FOREVER), EDEADLK);
	assert_ok(gr_queue_close(&q));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(g.r, -EPIPE);
	assert_ok(gr_queue_destroy(&q));
}

Test(queue, destroy_drops_queued_items_and_refuses_later_calls)
{
	gr_queue q;
	void *it;

	assert_ok(gr_queue_init(&q, GR_QUEUE_UNBOUNDED));
	for (int i = 0; i < 100; i++)
		assert_ok(gr_queue_put(&q, ITEM(i), 0));
	assert_ok(gr_queue_destroy(&q));
	assert_err(gr_queue_tryget(&q, &it), EINVAL);
	assert_err(gr_queue_put(&q, ITEM(1), 0), EINVAL);
	cr_assert_eq(gr_queue_len(&q), -EINVAL);
}

struct pingpong {
	gr_queue a, b;
	int n;
	long sum;
};

static void *pong(void *arg)
{
	struct pingpong *pp = arg;
	void *it;

	while (gr_queue_get(&pp->a, &it, GR_FOREVER) == 0) {
		pp->sum += (long)(uintptr_t)it;
		if (gr_queue_put(&pp->b, it, GR_FOREVER) != 0)
			break;
	}
	return NULL;
}

Test(queue, ping_pong_between_two_fibers)
{
	struct pingpong pp = { .n = 10000 };
	void *it;

	assert_ok(gr_queue_init(&pp.a, 0));
	assert_ok(gr_queue_init(&pp.b, 1));
	gr_fiber *f = gr_spawn(pong, &pp);
	for (uintptr_t i = 1; i <= (uintptr_t)pp.n; i++) {
		assert_ok(gr_queue_put(&pp.a, ITEM(i), GR_FOREVER));
		assert_ok(gr_queue_get(&pp.b, &it, GR_FOREVER));
		cr_assert_eq((uintptr_t)it, i);
	}
	assert_ok(gr_queue_close(&pp.a));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(pp.sum, (long)pp.n * (pp.n + 1) / 2);
	assert_ok(gr_queue_destroy(&pp.a));
	assert_ok(gr_queue_destroy(&pp.b));
}

struct xthread {
	gr_queue *q;
	int put, get, close, len;
};

static void *queue_other_thread(void *arg)
{
	struct xthread *x = arg;
	void *it;

	x->put = gr_queue_tryput(x->q, ITEM(1));
	x->close = gr_queue_close(x->q);
	x->len = (int)gr_queue_len(x->q);
	x->get = gr_queue_get(x->q, &it, GR_FOREVER);
	return NULL;
}

Test(queue, another_threads_calls_are_eperm)
{
	gr_queue q;
	pthread_t th;

	assert_ok(gr_queue_init(&q, 4));
	cr_assert_eq(gr_queue_len(&q), 0); /* binds it to this thread's hub */
	struct xthread x = { .q = &q };
	cr_assert_eq(pthread_create(&th, NULL, queue_other_thread, &x), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(x.put, -EPERM);
	cr_assert_eq(x.close, -EPERM);
	cr_assert_eq(x.len, -EPERM);
	cr_assert_eq(x.get, -EPERM);
	cr_assert_eq(gr_queue_len(&q), 0);
	assert_ok(gr_queue_tryput(&q, ITEM(1)));
	assert_ok(gr_queue_destroy(&q));
}
