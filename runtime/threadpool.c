/* threadpool.c — the process-wide pool of worker threads (gr_tpool_run).
 *
 * One mutex guards everything: the FIFO of queued jobs, the worker counts and
 * every job's state. A caller queues a job and waits on it through the
 * gate's cross-thread queue (wait.c, gr__xpark): a fiber parks and its hub
 * goes on; a thread with no hub blocks. The worker that finishes the job
 * hands it back with gr__xunpark, which puts the fiber on its hub's inbox
 * and wakes the hub once for any number of completions that arrive before
 * it runs.
 *
 * A job's life, every change under the lock:
 *   QUEUED   in the FIFO. If its caller stops waiting (kill, deadline, its
 *            thread's exit), the job is taken out and freed: it never runs.
 *   RUNNING  a worker runs fn. If the caller stops waiting now, the job is
 *            ABANDONED: the worker runs the cleanup when fn returns and
 *            frees the job.
 *   DONE     the caller is woken with the result and frees the job.
 *   ORPHANED the caller's thread exited after the job was DONE but before
 *            the caller ran: the job goes back to the front of the FIFO and
 *            a worker runs the cleanup on the result and frees it.
 * A caller that stops waiting settles its job in job_left(), called by the
 * gate under the lock at the moment it leaves: the caller itself may never
 * run again (its thread may be exiting), and after leaving it never touches
 * the job. The job lives on the heap, never on the caller's stack: a worker
 * that finishes after its caller gave up writes nowhere near a fiber's stack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define THREADS_DEFAULT 10
#define THREADS_MAX 1024
#define IDLE_EXIT (10 * GR_SEC)

enum job_state { QUEUED, RUNNING, DONE, ABANDONED, ORPHANED };

struct job {
	struct gr__link link;           /* in the FIFO while QUEUED */
	void *(*fn)(void *);
	void *arg;
	void (*cleanup)(void *result, void *arg);
	void *result;
	enum job_state state;
	struct gr__xq waiter;           /* the caller, while it waits */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;            /* a job was queued (CLOCK_MONOTONIC) */
	struct gr__list queue;
	size_t queued;
	unsigned threads, idle, max;
	uint64_t completed;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void)
{
	pthread_mutex_lock(&pool.lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&pool.lock);
}

/* The child has none of the workers, and none of the callers: the fibers
 * that queued jobs do not exist in it (hub.c). Start afresh; the jobs
 * still queued are dropped (their memory with them: nobody can free it). */
static void fork_child(void)
{
	pthread_condattr_t attr;

	pthread_mutex_init(&pool.lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&pool.work, &attr);
	pthread_condattr_destroy(&attr);
	pool.queue.first = pool.queue.last = NULL;
	pool.queued = 0;
	pool.threads = pool.idle = 0;
}

static void pool_init(void)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&pool.work, &attr);
	pthread_condattr_destroy(&attr);
	pool.max = (unsigned)gr__env_size("GREENRING_THREADS", THREADS_DEFAULT, 1, THREADS_MAX,
					  false);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void *worker_main(void *unused)
{
	struct timespec ts;

	(void)unused;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (gr__list_empty(&pool.queue)) {
			pool.idle++;
			gr__ns_to_timespec(gr_now() + IDLE_EXIT, &ts);
			int r = pthread_cond_timedwait(&pool.work, &pool.lock, &ts);
			pool.idle--;
			if (r == ETIMEDOUT && gr__list_empty(&pool.queue)) {
				pool.threads--;
				pthread_mutex_unlock(&pool.lock);
				return NULL;
			}
		}
		struct job *j = gr__container(gr__list_pop_front(&pool.queue), struct job, link);
		pool.queued--;
		if (j->state == ORPHANED) {
			pthread_mutex_unlock(&pool.lock);
			if (j->cleanup)
				j->cleanup(j->result, j->arg);
			free(j);
			pthread_mutex_lock(&pool.lock);
			continue;
		}
		j->state = RUNNING;
		pthread_mutex_unlock(&pool.lock);

		void *result = j->fn(j->arg);

		pthread_mutex_lock(&pool.lock);
		pool.completed++;
		if (j->state == ABANDONED) {
			pthread_mutex_unlock(&pool.lock);
			if (j->cleanup)
				j->cleanup(result, j->arg);
			free(j);
			pthread_mutex_lock(&pool.lock);
			continue;
		}
		j->result = result;
		j->state = DONE;
		gr__xunpark(gr__container(j->waiter.parked.first, struct gr__park, link), 0);
	}
}

static int find_worker(void);

/* The caller of a job stopped waiting (the gate's on_leave, lock held):
 * it left, or its thread is exiting (gone), maybe after the job was done
 * and before it could take the result. */
static void job_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	struct job *j = gr__container(xq, struct job, waiter);

	(void)p;
	if (j->state == DONE) {
		/* Only when gone: the caller would have taken the result and
		 * freed the job on return. The cleanup is user code, which must
		 * not run under the pool's lock (nor on an exiting thread): a
		 * worker runs it, first in line. */
		if (gone) {
			j->state = ORPHANED;
			gr__list_push_front(&pool.queue, &j->link);
			pool.queued++;
			(void)find_worker();
		}
	} else if (j->state == QUEUED) {
		gr__list_remove(&pool.queue, &j->link);
		pool.queued--;
		free(j);
	} else {
		j->state = ABANDONED; /* the worker runs the cleanup and frees it */
	}
}

/* A worker for a job just queued: an idle one, else a new one if the pool
 * may grow. -EAGAIN if there is none at all and none can be started. */
static int find_worker(void)
{
	if (pool.idle > pool.queued - 1) {
		pthread_cond_signal(&pool.work);
		return 0;
	}
	if (pool.threads >= pool.max)
		return 0; /* it waits its turn in the FIFO */
	pthread_attr_t attr;
	pthread_t t;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int r = pthread_create(&t, &attr, worker_main, NULL);
	pthread_attr_destroy(&attr);
	if (r == 0) {
		pool.threads++;
		return 0;
	}
	if (pool.idle > 0)
		pthread_cond_signal(&pool.work);
	return pool.threads > 0 ? 0 : -EAGAIN;
}

int gr_tpool_run_cleanup(void *(*fn)(void *), void *arg, void (*cleanup)(void *result, void *arg),
			 void **result, int64_t deadline)
{
	struct gr__hub *hub = gr__hub_peek();
	struct gr__park p = { .what = "gr_tpool_run" };
	int err;

	if (!fn)
		return -EINVAL;
	/* A thread with a hub parks a fiber; one without blocks (no hub is
	 * made for it: a plain thread asking for this wants to wait). */
	if (hub) {
		err = gr__park_prepare(&hub, &p, deadline);
		if (err)
			return err;
	} else {
		gr__xpark_thread_begin(&p, deadline);
	}
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->fn = fn;
	j->arg = arg;
	j->cleanup = cleanup;
	j->state = QUEUED;
	j->waiter.lock = &pool.lock;
	j->waiter.on_leave = job_left;

	pthread_once(&pool_once, pool_init);
	pthread_mutex_lock(&pool.lock);
	gr__list_push_back(&pool.queue, &j->link);
	pool.queued++;
	err = find_worker();
	if (err < 0) {
		gr__list_remove(&pool.queue, &j->link);
		pool.queued--;
		pthread_mutex_unlock(&pool.lock);
		free(j);
		return err;
	}
	err = gr__xpark(hub, &p, &j->waiter);
	if (err == 0 && result)
		*result = j->result;
	pthread_mutex_unlock(&pool.lock);
	if (err == 0)
		free(j);
	/* Else job_left() settled the job when we stopped waiting. */
	return err;
}

int gr_tpool_run(void *(*fn)(void *), void *arg, void **result, int64_t deadline)
{
	return gr_tpool_run_cleanup(fn, arg, NULL, result, deadline);
}

int gr_tpool_stats(struct gr_tpool_stats *out)
{
	if (!out)
		return -EINVAL;
	pthread_once(&pool_once, pool_init);
	pthread_mutex_lock(&pool.lock);
	out->threads = pool.threads;
	out->idle = pool.idle;
	out->max = pool.max;
	out->queued = pool.queued;
	out->completed = pool.completed;
	pthread_mutex_unlock(&pool.lock);
	return 0;
}
