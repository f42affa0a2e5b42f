/* micro_threads.c — bench/micro cases for work across threads: the thread
 * pool's round trip and channel ping-pongs (between two hubs, one pair and
 * 64 at once; between a hub and a plain thread), beside the plain pthread
 * hand-off they are measured against, and a burst of queued jobs. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <greenring.h>

#include "micro.h"

/* ---------------------------------------------------- pthread hand-off */

/* The baseline: what a program without greenring writes to hand work to a
 * thread and wait for it. One mutex, one condition variable per direction. */
struct handoff {
	pthread_mutex_t mu;
	pthread_cond_t to_worker, to_caller;
	bool job, done, stop;
};

static void *handoff_worker(void *p)
{
	struct handoff *h = p;

	pthread_mutex_lock(&h->mu);
	for (;;) {
		while (!h->job && !h->stop)
			pthread_cond_wait(&h->to_worker, &h->mu);
		if (h->stop)
			break;
		h->job = false;
		h->done = true; /* the empty function ran */
		pthread_cond_signal(&h->to_caller);
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

static double handoff_rounds(struct handoff *h, long n)
{
	int64_t start = gr_now();

	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&h->mu);
		h->job = true;
		pthread_cond_signal(&h->to_worker);
		while (!h->done)
			pthread_cond_wait(&h->to_caller, &h->mu);
		h->done = false;
		pthread_mutex_unlock(&h->mu);
	}
	return (double)(gr_now() - start);
}

static double pthread_handoff_round_trip(int64_t budget_ns)
{
	struct handoff h = { .mu = PTHREAD_MUTEX_INITIALIZER, .to_worker = PTHREAD_COND_INITIALIZER,
			     .to_caller = PTHREAD_COND_INITIALIZER };
	pthread_t t;

	if (pthread_create(&t, NULL, handoff_worker, &h) != 0)
		return 0;
	long n = 2000;
	double elapsed = handoff_rounds(&h, n);
	n = (long)((double)n * (double)budget_ns / (elapsed + 1));
	if (n < 1000)
		n = 1000;
	elapsed = handoff_rounds(&h, n);
	pthread_mutex_lock(&h.mu);
	h.stop = true;
	pthread_cond_signal(&h.to_worker);
	pthread_mutex_unlock(&h.mu);
	pthread_join(t, NULL);
	return elapsed / (double)n;
}

/* ---------------------------------------------------- the pool */

static void *empty(void *arg)
{
	return arg;
}

static double tpool_rounds(long n)
{
	int64_t start = gr_now();

	for (long i = 0; i < n; i++)
		gr_tpool_run(empty, NULL, NULL, GR_FOREVER);
	return (double)(gr_now() - start);
}

/* A fiber hands an empty function to the pool and resumes with its result. */
static double tpool_round_trip(int64_t budget_ns)
{
	long n = 2000;
	double elapsed = tpool_rounds(n);

	n = (long)((double)n * (double)budget_ns / (elapsed + 1));
	if (n < 1000)
		n = 1000;
	return tpool_rounds(n) / (double)n;
}

static void *one_job(void *arg)
{
	(void)arg;
	gr_tpool_run(empty, NULL, NULL, GR_FOREVER);
	return NULL;
}

/* 10k fibers each queue one job at once: the time until all are back. */
static double tpool_burst_ms(int64_t budget_ns)
{
	enum { N = 10000 };
	static gr_fiber *f[N];

	(void)budget_ns;
	int64_t start = gr_now();
	for (int i = 0; i < N; i++)
		f[i] = gr_spawn(one_job, NULL);
	for (int i = 0; i < N; i++)
		gr_join(f[i], NULL, GR_FOREVER);
	return (double)(gr_now() - start) / 1e6;
}

/* The same burst: the memory it adds while all 10k are queued or running
 * (read once every fiber has run up to its wait), in MiB. */
static double tpool_burst_rss_mib(int64_t budget_ns)
{
	enum { N = 10000 };
	static gr_fiber *f[N];

	(void)budget_ns;
	gr_sleep(0); /* the hub and its loop exist before the baseline */
	long before = micro_rss_kib();
	for (int i = 0; i < N; i++)
		f[i] = gr_spawn(one_job, NULL);
	gr_sleep(0); /* every fiber has queued its job */
	long peak = micro_rss_kib();
	for (int i = 0; i < N; i++)
		gr_join(f[i], NULL, GR_FOREVER);
	return before < 0 || peak < 0 ? -1 : (double)(peak - before) / 1024.0;
}

/* ---------------------------------------------------- channels */

/* Ping-pong over two channels between this thread's hub and a partner: a
 * thread with a hub of the same kind whose fibers answer, or a plain thread
 * answering itself. `pairs` fibers on each hub ping at once (the partner
 * answers whoever asked), so one wake-up of a hub can carry many messages. */
struct xping {
	gr_chan there, back;
	gr_notifier ping, pong;     /* the notifier case's pair */
	long iters;                 /* round trips per pinger */
	int pairs;
	int plain;                  /* the partner has no hub */
	int notifier;               /* ping-pong two notifiers instead */
	const char *hub;
	pthread_t partner;
};

static void *xponger(void *p)
{
	struct xping *x = p;
	void *it;

	if (x->notifier) {
		/* Until the pinger's last fire carries no more round trips. */
		for (long i = 0; i < x->iters; i++)
			if (gr_notifier_wait(&x->ping, GR_FOREVER) < 0 || gr_notifier_fire(&x->pong) < 0)
				break;
		return NULL;
	}
	while (gr_chan_recv(&x->there, &it, GR_FOREVER) == 0)
		if (gr_chan_send(&x->back, it, GR_FOREVER) != 0)
			break;
	return NULL;
}

static void *xpinger(void *p)
{
	struct xping *x = p;
	void *it;

	for (long i = 0; i < x->iters; i++) {
		if (x->notifier) {
			if (gr_notifier_fire(&x->ping) < 0 || gr_notifier_wait(&x->pong, GR_FOREVER) < 0)
				break;
		} else if (gr_chan_send(&x->there, (void *)(uintptr_t)(i + 1), GR_FOREVER) != 0 ||
			   gr_chan_recv(&x->back, &it, GR_FOREVER) != 0) {
			break;
		}
	}
	return NULL;
}

static void *xpartner(void *p)
{
	struct xping *x = p;
	gr_fiber *f[64];

	if (x->plain)
		return xponger(x);
	if (gr_hub_use(x->hub) != 0)
		return NULL;
	for (int i = 0; i < x->pairs; i++)
		f[i] = gr_spawn(xponger, x);
	for (int i = 0; i < x->pairs; i++)
		if (f[i])
			gr_join(f[i], NULL, GR_FOREVER);
	return NULL;
}

/* Nanoseconds for x->iters round trips of each of x->pairs pingers. */
static double xping_rounds(struct xping *x)
{
	gr_fiber *f[64];

	if (gr_chan_init(&x->there, 1) || gr_chan_init(&x->back, 1) || gr_notifier_init(&x->ping) ||
	    gr_notifier_init(&x->pong))
		return -1;
	x->hub = gr_hub_name();
	if (pthread_create(&x->partner, NULL, xpartner, x) != 0)
		return -1;
	int64_t start = gr_now();
	for (int i = 0; i < x->pairs; i++)
		f[i] = gr_spawn(xpinger, x);
	for (int i = 0; i < x->pairs; i++)
		if (f[i])
			gr_join(f[i], NULL, GR_FOREVER);
	double elapsed = (double)(gr_now() - start);
	gr_chan_close(&x->there);
	pthread_join(x->partner, NULL);
	gr_chan_destroy(&x->there);
	gr_chan_destroy(&x->back);
	gr_notifier_destroy(&x->ping);
	gr_notifier_destroy(&x->pong);
	return elapsed;
}

/* Per round trip (per pinger's round trip divided by the pingers at once). */
static double xping_case(int64_t budget_ns, int pairs, int plain, int notifier)
{
	struct xping x = { .iters = 500, .pairs = pairs, .plain = plain, .notifier = notifier };
	double elapsed = xping_rounds(&x);

	if (elapsed < 0)
		return -1;
	x.iters = (long)((double)x.iters * (double)budget_ns / (elapsed + 1));
	if (x.iters < 200)
		x.iters = 200;
	elapsed = xping_rounds(&x);
	return elapsed < 0 ? -1 : elapsed / (double)(x.iters * pairs);
}

static double chan_two_hubs(int64_t budget_ns)
{
	return xping_case(budget_ns, 1, 0, 0);
}

static double chan_two_hubs_64(int64_t budget_ns)
{
	return xping_case(budget_ns, 64, 0, 0);
}

static double chan_hub_plain(int64_t budget_ns)
{
	return xping_case(budget_ns, 1, 1, 0);
}

static double notifier_two_hubs(int64_t budget_ns)
{
	return xping_case(budget_ns, 1, 0, 1);
}

/* The one comparison that matters here, made robust to a machine whose
 * load drifts: the two round trips measured in turns, five times each, and
 * the ratio of their medians. */
static double chan_vs_pthread(int64_t budget_ns)
{
	double chan[5], cond[5];

	for (int i = 0; i < 5; i++) {
		chan[i] = xping_case(budget_ns / 10, 1, 0, 0);
		cond[i] = pthread_handoff_round_trip(budget_ns / 10);
	}
	double chan_median = micro_median(chan, 5), cond_median = micro_median(cond, 5);

	return cond_median > 0 ? chan_median / cond_median : -1;
}

const struct micro_case micro_threads_cases[] = {
	{ "pthread cond hand-off round trip", "ns", false, true, pthread_handoff_round_trip },
	{ "tpool round trip (empty fn)", "ns", false, false, tpool_round_trip },
	{ "tpool: 10k jobs from 10k fibers", "ms", false, false, tpool_burst_ms },
	{ "tpool: 10k jobs, memory added at the peak", "MiB", false, false, tpool_burst_rss_mib },
	{ "chan round trip, 2 hubs", "ns", false, false, chan_two_hubs },
	{ "chan round trip, 2 hubs, 64 pairs", "ns", false, false, chan_two_hubs_64 },
	{ "chan round trip, hub <-> plain thread", "ns", false, false, chan_hub_plain },
	{ "notifier round trip, 2 hubs", "ns", false, false, notifier_two_hubs },
	{ "chan 2 hubs / pthread cond, in turns", "x", false, false, chan_vs_pthread },
	{ 0 },
};
