/* micro_threads.c — bench/micro cases for work across threads: the thread
 * pool's round trip beside the plain pthread hand-off it is measured against,
 * and a burst of queued jobs. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
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

const struct micro_case micro_threads_cases[] = {
	{ "pthread cond hand-off round trip", "ns", false, true, pthread_handoff_round_trip },
	{ "tpool round trip (empty fn)", "ns", false, false, tpool_round_trip },
	{ "tpool: 10k jobs from 10k fibers", "ms", false, false, tpool_burst_ms },
	{ 0 },
};
