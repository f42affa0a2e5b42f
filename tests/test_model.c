/* test_model.c — randomized, model-checked producers and consumers.
 *
 * Each round builds a few queues (rendezvous, small bounded, unbounded),
 * producers that put uniquely numbered items with random deadlines and try
 * variants, consumers that take them the same way, and a killer that kills
 * random producers and consumers at random moments. Consumers also pass each
 * item through a semaphore of N units and a mutex, checking that never more
 * than N (or 1) fibers are inside.
 *
 * The model: an item whose put returned 0 was delivered; any other put
 * result means it was not. At the end (queues closed and drained), every
 * delivered item must have been received exactly once and no other item
 * received at all: nothing lost, nothing duplicated, nothing invented, however
 * kills and deadlines raced with the hand-offs. Every fiber must end: the
 * last consumer of a queue to end closes it, as the last reader of a pipe,
 * so producers never wait for consumers that are gone.
 *
 * The seed is printed; GRT_SEED=<n> replays its random choices (the timing
 * of deadlines, and so the exact interleaving, still varies from run to run).
 * GRT_ROUNDS=<n> changes the number of rounds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(model);

enum {
	MAX_QUEUES = 3,
	MAX_PRODUCERS = 6,
	MAX_CONSUMERS = 6,
	MAX_ITEMS_PER_PRODUCER = 60,
	MAX_ITEMS = MAX_PRODUCERS * MAX_ITEMS_PER_PRODUCER,
};

/* ------------------------------------------------------------ the world */

struct world {
	int nq;
	gr_queue q[MAX_QUEUES];
	int np, nc;
	gr_fiber *producer[MAX_PRODUCERS];
	gr_fiber *consumer[MAX_CONSUMERS];
	int consumers_left[MAX_QUEUES]; /* live consumers per queue */
	int nitems;
	/* The model. */
	uint8_t delivered[MAX_ITEMS];   /* its put returned 0 */
	uint8_t received[MAX_ITEMS];    /* times a get returned it */
	int bogus;                      /* items received that never existed */
	/* Mutual exclusion checks. */
	gr_sem sem;
	int sem_units, in_sem, max_in_sem;
	gr_mutex mutex;
	int in_mutex, max_in_mutex;
	int mutex_unlock_errors;
	/* What happened, to show the run did exercise the races. */
	long puts_ok, puts_failed, gets_ok, kills, timeouts, cancels;
};

struct producer_arg {
	struct world *w;
	int q;
	int first, count;
};

struct consumer_arg {
	struct world *w;
	int q;
};

static void *item_ptr(int id)
{
	return (void *)(uintptr_t)(id + 1); /* never NULL */
}

static void count_error(struct world *w, int r)
{
	if (r == -ETIMEDOUT)
		w->timeouts++;
	else if (r == -ECANCELED)
		w->cancels++;
}

static void *producer(void *arg)
{
	struct producer_arg *a = arg;
	struct world *w = a->w;
	gr_queue *q = &w->q[a->q];

	for (int id = a->first; id < a->first + a->count; id++) {
		int r;

		if (grt_pick(5) == 0) {
			r = gr_queue_tryput(q, item_ptr(id));
		} else if (grt_pick(6) == 0) {
			/* eventlet's Timeout: the fiber's own deadline. */
			int64_t old = gr_deadline_set(gr_now() + (int64_t)grt_pick(200) * 1000);
			r = gr_queue_put(q, item_ptr(id), grt_random_deadline());
			gr_deadline_set(old);
		} else {
			r = gr_queue_put(q, item_ptr(id), grt_random_deadline());
		}
		if (r == 0) {
			w->delivered[id] = 1;
			w->puts_ok++;
		} else {
			w->puts_failed++;
			count_error(w, r);
		}
		if (r == -ECANCELED || r == -EPIPE)
			break;
		if (grt_random_pause() == -ECANCELED)
			break;
	}
	return NULL;
}

/* Check-in/check-out of a section at most `limit` fibers may be inside. */
static void enter(int *in, int *max)
{
	if (++*in > *max)
		*max = *in;
}

static void process(struct world *w)
{
	/* Through the semaphore (N at once) ... */
	int r = grt_pick(4) == 0 ? gr_sem_tryacquire(&w->sem) : gr_sem_acquire(&w->sem, grt_random_deadline());

	count_error(w, r);
	if (r == 0) {
		enter(&w->in_sem, &w->max_in_sem);
		grt_random_pause();
		w->in_sem--;
		gr_sem_release(&w->sem);
	}
	/* ... and the mutex (1 at once). */
	r = grt_pick(4) == 0 ? gr_mutex_trylock(&w->mutex) : gr_mutex_lock(&w->mutex, grt_random_deadline());
	count_error(w, r);
	if (r == 0) {
		enter(&w->in_mutex, &w->max_in_mutex);
		grt_random_pause(); /* even killed here, it must unlock */
		w->in_mutex--;
		if (gr_mutex_unlock(&w->mutex) != 0)
			w->mutex_unlock_errors++;
	}
}

static void receive(struct world *w, void *item)
{
	uintptr_t id = (uintptr_t)item - 1;

	if (item == NULL || id >= (uintptr_t)w->nitems) {
		w->bogus++;
		return;
	}
	w->received[id]++;
	w->gets_ok++;
}

static void *consumer(void *arg)
{
	struct consumer_arg *a = arg;
	struct world *w = a->w;
	gr_queue *q = &w->q[a->q];

	for (;;) {
		void *item = NULL;
		int r = grt_pick(5) == 0 ? gr_queue_tryget(q, &item) : gr_queue_get(q, &item, grt_random_deadline());

		if (r == 0) {
			receive(w, item);
			process(w);
		} else {
			count_error(w, r);
		}
		if (r == -ECANCELED || r == -EPIPE)
			break;
		if (grt_random_pause() == -ECANCELED)
			break;
	}
	/* Like the last reader of a pipe: nobody will take what producers
	 * put, so they must not wait for it. */
	if (--w->consumers_left[a->q] == 0)
		gr_queue_close(q);
	return NULL;
}

struct killer_arg {
	struct world *w;
	int kills;
};

static void *killer(void *arg)
{
	struct killer_arg *k = arg;
	struct world *w = k->w;

	for (int i = 0; i < k->kills; i++) {
		/* Kill right away, after a yield (when woken fibers are about to
		 * run: the hand-off race), or after a short sleep. */
		if (grt_pick(3))
			gr_sleep(grt_pick(2) ? 0 : (int64_t)grt_pick(400) * 1000);
		gr_fiber *f = grt_pick(2) ? w->producer[grt_pick((unsigned)w->np)] : w->consumer[grt_pick((unsigned)w->nc)];
		if (gr_kill(f) == 0)
			w->kills++;
	}
	return NULL;
}

static const size_t capacities[] = { 0, 1, 2, 5, GR_QUEUE_UNBOUNDED };

static void join(gr_fiber *f, uint64_t seed)
{
	int r = gr_join(f, NULL, gr_now() + 30 * GR_SEC);

	cr_assert_eq(r, 0, "seed %llu: a fiber did not end: %s", (unsigned long long)seed, strerror(-r));
}

static void round_run(uint64_t seed, struct world *w)
{
	struct producer_arg pa[MAX_PRODUCERS];
	struct consumer_arg ca[MAX_CONSUMERS];
	struct killer_arg ka;

	memset(w, 0, sizeof(*w));
	w->nq = 1 + (int)grt_pick(MAX_QUEUES);
	for (int i = 0; i < w->nq; i++)
		cr_assert_eq(gr_queue_init(&w->q[i], capacities[grt_pick(5)]), 0);
	w->sem_units = 1 + (int)grt_pick(3);
	cr_assert_eq(gr_sem_init(&w->sem, (unsigned)w->sem_units, (unsigned)w->sem_units), 0);
	cr_assert_eq(gr_mutex_init(&w->mutex), 0);

	w->np = 1 + (int)grt_pick(MAX_PRODUCERS);
	w->nc = w->nq + (int)grt_pick(MAX_CONSUMERS - MAX_QUEUES + 1);
	for (int i = 0; i < w->np; i++) {
		int count = 1 + (int)grt_pick(MAX_ITEMS_PER_PRODUCER);

		pa[i] = (struct producer_arg){ .w = w, .q = (int)grt_pick((unsigned)w->nq),
					       .first = w->nitems, .count = count };
		w->nitems += count;
		w->producer[i] = gr_spawn(producer, &pa[i]);
		cr_assert_not_null(w->producer[i]);
	}
	for (int i = 0; i < w->nc; i++) {
		/* Every queue gets a consumer: its last one closes it. */
		ca[i] = (struct consumer_arg){ .w = w, .q = i < w->nq ? i : (int)grt_pick((unsigned)w->nq) };
		w->consumers_left[ca[i].q]++;
		w->consumer[i] = gr_spawn(consumer, &ca[i]);
		cr_assert_not_null(w->consumer[i]);
	}
	ka = (struct killer_arg){ .w = w, .kills = (int)grt_pick(8) };
	gr_fiber *k = gr_spawn(killer, &ka);
	cr_assert_not_null(k);

	cr_assert_eq(gr_join(k, NULL, GR_FOREVER), 0);
	for (int i = 0; i < w->np; i++)
		join(w->producer[i], seed);
	/* Producers are done: close, so consumers drain and stop. */
	for (int i = 0; i < w->nq; i++)
		cr_assert_eq(gr_queue_close(&w->q[i]), 0);
	for (int i = 0; i < w->nc; i++)
		join(w->consumer[i], seed);
	/* What killed consumers left behind is still there. */
	for (int i = 0; i < w->nq; i++) {
		void *item;
		int r;

		while ((r = gr_queue_tryget(&w->q[i], &item)) == 0)
			receive(w, item);
		cr_assert_eq(r, -EPIPE, "seed %llu: draining a closed queue: %s",
			     (unsigned long long)seed, strerror(-r));
		cr_assert_eq(gr_queue_destroy(&w->q[i]), 0, "seed %llu", (unsigned long long)seed);
	}

	/* The model. */
	cr_assert_eq(w->bogus, 0, "seed %llu: %d items received that were never put",
		     (unsigned long long)seed, w->bogus);
	for (int id = 0; id < w->nitems; id++) {
		cr_assert_leq(w->received[id], 1, "seed %llu: item %d received %d times",
			      (unsigned long long)seed, id, w->received[id]);
		cr_assert_eq(w->received[id], w->delivered[id],
			     "seed %llu: item %d: put %s but received %d times",
			     (unsigned long long)seed, id, w->delivered[id] ? "succeeded" : "failed",
			     w->received[id]);
	}
	cr_assert_leq(w->max_in_sem, w->sem_units, "seed %llu: %d fibers inside a semaphore of %d",
		      (unsigned long long)seed, w->max_in_sem, w->sem_units);
	cr_assert_leq(w->max_in_mutex, 1, "seed %llu: %d fibers inside the mutex",
		      (unsigned long long)seed, w->max_in_mutex);
	cr_assert_eq(w->mutex_unlock_errors, 0);
	cr_assert_eq(gr_sem_value(&w->sem), w->sem_units, "seed %llu: semaphore units lost",
		     (unsigned long long)seed);
	cr_assert_eq(gr_sem_destroy(&w->sem), 0);
	cr_assert_eq(gr_mutex_destroy(&w->mutex), 0, "seed %llu: mutex left locked",
		     (unsigned long long)seed);
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

Test(model, queues_lose_and_duplicate_nothing_under_kills_and_deadlines)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t seed = env_u64("GRT_SEED", (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32));
	uint64_t rounds = env_u64("GRT_ROUNDS", 300);
	static struct world w;
	long totals[6] = { 0 };

	fprintf(stderr, "test_model (%s hub): seed %llu, %llu rounds (GRT_SEED, GRT_ROUNDS)\n",
		grt_hub(), (unsigned long long)seed, (unsigned long long)rounds);
	grt_rng_seed(seed);
	for (uint64_t i = 0; i < rounds; i++) {
		round_run(seed, &w);
		totals[0] += w.puts_ok;
		totals[1] += w.puts_failed;
		totals[2] += w.gets_ok;
		totals[3] += w.kills;
		totals[4] += w.timeouts;
		totals[5] += w.cancels;
	}
	fprintf(stderr, "test_model: %ld puts ok, %ld failed, %ld gets, %ld kills, %ld timeouts, "
			"%ld cancelled calls\n",
		totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]);
	/* The run must have exercised what it claims to. */
	cr_assert_gt(totals[0], 0);
	cr_assert_gt(totals[4], 0, "no deadline ever expired");
}
