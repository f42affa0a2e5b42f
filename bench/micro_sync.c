/* micro_sync.c — micro-benchmark cases of the sync primitives: queue
 * ping-pong, mutex hand-off, pool spawns, pile imap. Each case runs on a
 * fresh thread (a fresh hub) chosen by bench/micro. */
#define _GNU_SOURCE
#include <stdint.h>

#include <greenring.h>

#include "micro.h"

/* ---------------------------------------------------- queue ping-pong */

struct pingpong {
	gr_queue there, back;
	long iters;
};

static void *ponger(void *p)
{
	struct pingpong *pp = p;
	void *it;

	while (gr_queue_get(&pp->there, &it, GR_FOREVER) == 0) {
		if (gr_queue_put(&pp->back, it, GR_FOREVER) != 0)
			break;
	}
	return NULL;
}

static void *pinger(void *p)
{
	struct pingpong *pp = p;
	void *it;

	for (long i = 0; i < pp->iters; i++) {
		if (gr_queue_put(&pp->there, (void *)(uintptr_t)(i + 1), GR_FOREVER) != 0 ||
		    gr_queue_get(&pp->back, &it, GR_FOREVER) != 0)
			break;
	}
	gr_queue_close(&pp->there);
	return NULL;
}

/* Nanoseconds for `iters` round trips (two messages each). */
static double timed_pingpong(long iters, size_t capacity)
{
	struct pingpong pp = { .iters = iters };

	if (gr_queue_init(&pp.there, capacity) || gr_queue_init(&pp.back, capacity))
		return -1;
	int64_t start = gr_now();
	gr_fiber *a = gr_spawn(pinger, &pp), *b = gr_spawn(ponger, &pp);
	gr_join(a, NULL, GR_FOREVER);
	gr_join(b, NULL, GR_FOREVER);
	double elapsed = (double)(gr_now() - start);
	gr_queue_destroy(&pp.there);
	gr_queue_destroy(&pp.back);
	return elapsed;
}

/* Calibrate on a short run, then measure about budget_ns. */
static double per_message(int64_t budget_ns, size_t capacity)
{
	long iters = 10000;
	double elapsed = timed_pingpong(iters, capacity);

	if (elapsed < 0)
		return -1;
	iters = (long)((double)iters * (double)budget_ns / (elapsed + 1));
	if (iters < 1000)
		iters = 1000;
	return timed_pingpong(iters, capacity) / (double)(2 * iters);
}

static double queue_pingpong_cap1(int64_t budget_ns)
{
	return per_message(budget_ns, 1);
}

static double queue_pingpong_rendezvous(int64_t budget_ns)
{
	return per_message(budget_ns, 0);
}

/* ---------------------------------------------------- mutex */

struct handoff {
	gr_mutex m;
	long iters;
	long handoffs;
};

/* Lock and unlock in a loop. With a second fiber queued on the mutex, each
 * unlock hands it over and the next lock parks until it comes back: every
 * iteration is one hand-off and one switch. */
static void *locker(void *p)
{
	struct handoff *h = p;

	for (long i = 0; i < h->iters; i++) {
		if (gr_mutex_lock(&h->m, GR_FOREVER) != 0)
			break;
		h->handoffs++;
		gr_mutex_unlock(&h->m);
	}
	return NULL;
}

static double timed_handoffs(long iters, long *handoffs)
{
	struct handoff h = { .iters = iters };

	if (gr_mutex_init(&h.m))
		return -1;
	/* Hold it while both start, so the two queue up behind each other. */
	gr_mutex_lock(&h.m, GR_FOREVER);
	gr_fiber *a = gr_spawn(locker, &h), *b = gr_spawn(locker, &h);
	gr_sleep(0);
	int64_t start = gr_now();
	gr_mutex_unlock(&h.m);
	gr_join(a, NULL, GR_FOREVER);
	gr_join(b, NULL, GR_FOREVER);
	double elapsed = (double)(gr_now() - start);
	gr_mutex_destroy(&h.m);
	*handoffs = h.handoffs;
	return elapsed;
}

static double mutex_handoff(int64_t budget_ns)
{
	long iters = 10000, n;
	double elapsed = timed_handoffs(iters, &n);

	if (elapsed < 0)
		return -1;
	iters = (long)((double)iters * (double)budget_ns / (elapsed + 1));
	if (iters < 1000)
		iters = 1000;
	elapsed = timed_handoffs(iters, &n);
	return elapsed / (double)n;
}

static double mutex_uncontended(int64_t budget_ns)
{
	gr_mutex m;
	long n = 0;
	int64_t start = gr_now(), elapsed;

	if (gr_mutex_init(&m))
		return -1;
	do {
		for (int i = 0; i < 100000; i++) {
			gr_mutex_lock(&m, GR_FOREVER);
			gr_mutex_unlock(&m);
		}
		n += 100000;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	gr_mutex_destroy(&m);
	return (double)elapsed / (double)n;
}

/* ---------------------------------------------------- pool and pile */

static void nothing(void *p)
{
	(void)p;
}

/* Spawns per second through a pool of 1000 (eventlet's default), tasks
 * that return at once: the cost of waiting for a slot, spawning, and
 * handing the slot on. */
static double pool_spawn_rate(int64_t budget_ns)
{
	gr_pool pool;
	long n = 0;
	int64_t start = gr_now(), elapsed;

	if (gr_pool_init(&pool, 1000))
		return -1;
	do {
		for (int i = 0; i < 10000; i++) {
			if (gr_pool_spawn(&pool, nothing, NULL, GR_FOREVER) != 0)
				return -1;
		}
		n += 10000;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	gr_pool_wait(&pool, GR_FOREVER);
	elapsed = gr_now() - start;
	gr_pool_destroy(&pool);
	return (double)n / ((double)elapsed / 1e9) / 1e6;
}

static void *identity(void *p)
{
	return p;
}

/* Items per second through gr_pile_imap on a pool of 64, results read
 * back in order. */
static double pile_imap_rate(int64_t budget_ns)
{
	enum { N = 10000 };
	static void *args[N];
	gr_pool pool;
	gr_pile pile;
	long n = 0;
	int64_t start = gr_now(), elapsed;

	if (gr_pool_init(&pool, 64) || gr_pile_init(&pile, &pool))
		return -1;
	for (int i = 0; i < N; i++)
		args[i] = (void *)(uintptr_t)(i + 1);
	do {
		void *r;

		if (gr_pile_imap(&pile, identity, args, N) != 0)
			return -1;
		while (gr_pile_next(&pile, &r, GR_FOREVER) == 0)
			n++;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	gr_pile_destroy(&pile);
	gr_pool_destroy(&pool);
	return (double)n / ((double)elapsed / 1e9) / 1e6;
}

const struct micro_case micro_sync_cases[] = {
	{ "queue ping-pong cap 1, per message", "ns", false, false, queue_pingpong_cap1 },
	{ "queue ping-pong cap 0, per message", "ns", false, false, queue_pingpong_rendezvous },
	{ "mutex hand-off, 2 fibers", "ns", false, false, mutex_handoff },
	{ "mutex lock+unlock, uncontended", "ns", false, false, mutex_uncontended },
	{ "pool spawn, size 1000, empty fn", "M/s", true, false, pool_spawn_rate },
	{ "pile imap, pool of 64", "M/s", true, false, pile_imap_rate },
	{ 0 },
};
