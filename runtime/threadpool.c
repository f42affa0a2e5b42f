/* threadpool.c — the process-wide pool of worker threads: gr_tpool_run, and
 * the operations a hub cannot perform itself (offload.c).
 *
 * One mutex guards everything: the FIFO of queued work, the worker counts and
 * every work item's state. What a worker runs is a struct gr__work in its
 * owner's memory (internal.h): run() without the lock, then finish() with it
 * to hand the outcome over. A gr_tpool_run job is one kind: its caller
 * queues it and waits on it through the gate's cross-thread queue (wait.c,
 * gr__xpark): a fiber parks and its hub goes on; a thread with no hub blocks.
 * The job's finish() hands it back with gr__xunpark, which puts the fiber on
 * its hub's inbox and wakes the hub once for any number of completions that
 * arrive before it runs.
 *
 * A job's life, every change under the lock:
 *   QUEUED     in the FIFO. If its caller stops waiting (kill, deadline, its
 *              thread's exit), the job is taken out: it never runs. If it
 *              has a cleanup, that still runs, with a NULL result, on a worker
 *              (the release list): the caller may have handed the job memory
 *              that only the cleanup knows how to free.
 *   RUNNING    a worker runs fn. If the caller stops waiting now, the job is
 *   ABANDONED  and the worker runs the cleanup when fn returns, then frees it.
 *   DONE       the caller is woken with the result and frees the job. If
 *              its thread exits before it runs again to take the result,
 *              the job goes to the release list: a worker runs the cleanup
 *              on the result and frees it.
 * A caller that stops waiting settles its job in job_left(), called by the
 * gate under the lock at the moment it leaves: the caller itself may never
 * run again (its thread may be exiting), and after leaving it never touches
 * the job. The job lives on the heap, never on the caller's stack: a worker
 * that finishes after its caller gave up writes nowhere near a fiber's stack.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define THREADS_DEFAULT 10
#define THREADS_MAX 1024
#define IDLE_EXIT (10 * GR_SEC)

struct job {
	struct gr__work work;
	void *(*fn)(void *);
	void *arg;
	void (*cleanup)(void *result, void *arg);
	void *result;
	struct gr__xq waiter;           /* the caller, while it waits */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;            /* work was queued (CLOCK_MONOTONIC) */
	struct gr__list queue;          /* struct gr__work.link, QUEUED, FIFO */
	struct gr__list releases;       /* withdrawn before they ran: release() due */
	size_t queued;
	unsigned threads, idle, max;
	unsigned nested;                /* workers blocked in gr_tpool_run themselves */
	uint64_t completed;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* This thread is one of the pool's workers. */
static _Thread_local bool on_worker;

static void fork_prepare(void)
{
	pthread_mutex_lock(&pool.lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&pool.lock);
}

/* The child has none of the workers, and none of the callers: the fibers
 * that queued work do not exist in it (hub.c). Start afresh; what was still
 * queued is dropped (its memory with it: nobody can free it). */
static void fork_child(void)
{
	pthread_mutex_init(&pool.lock, NULL);
	gr__cond_init_monotonic(&pool.work);
	pool.queue.first = pool.queue.last = NULL;
	pool.releases.first = pool.releases.last = NULL;
	pool.queued = 0;
	pool.threads = pool.idle = pool.nested = 0;
	/* A job that forked: its thread is the child's only one, and no
	 * worker of the child's pool (which would never grow for it). */
	on_worker = false;
}

static void pool_init(void)
{
	gr__cond_init_monotonic(&pool.work);
	pool.max = (unsigned)gr__env_size("GREENRING_THREADS", THREADS_DEFAULT, 1, THREADS_MAX,
					  false);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static bool nothing_to_do(void)
{
	return gr__list_empty(&pool.queue) && gr__list_empty(&pool.releases);
}

static void *worker_main(void *unused)
{
	struct timespec ts;

	(void)unused;
	on_worker = true;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (nothing_to_do()) {
			pool.idle++;
			gr__ns_to_timespec(gr_now() + IDLE_EXIT, &ts);
			int r = pthread_cond_timedwait(&pool.work, &pool.lock, &ts);
			pool.idle--;
			if (r == ETIMEDOUT && nothing_to_do()) {
				pool.threads--;
				pthread_mutex_unlock(&pool.lock);
				return NULL;
			}
		}
		struct gr__link *l = gr__list_pop_front(&pool.releases);
		if (l) {
			/* Withdrawn before it ran: only its release is left. */
			struct gr__work *w = gr__container(l, struct gr__work, link);

			pthread_mutex_unlock(&pool.lock);
			w->release(w);
			pthread_mutex_lock(&pool.lock);
			continue;
		}
		struct gr__work *w = gr__container(gr__list_pop_front(&pool.queue), struct gr__work, link);
		pool.queued--;
		w->state = GR__WORK_RUNNING;
		pthread_mutex_unlock(&pool.lock);

		w->run(w);

		pthread_mutex_lock(&pool.lock);
		pool.completed++;
		if (w->state == GR__WORK_ABANDONED) {
			pthread_mutex_unlock(&pool.lock);
			if (w->release)
				w->release(w);
			pthread_mutex_lock(&pool.lock);
			continue;
		}
		w->state = GR__WORK_DONE;
		w->finish(w);
	}
}

int gr__thread_start(void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	pthread_t t;
	sigset_t all, old;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	/* A thread inherits the mask it is created with: every signal blocked,
	 * so that a signal sent to the process is never handed to one of ours
	 * (whose default action could end the process, or whose handler would
	 * run in the middle of a job) instead of the fiber waiting for it
	 * (greenring/signal.h). */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&t, &attr, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return -r;
}

/* A worker for work just queued: an idle one, else a new one if the pool
 * may grow. -EAGAIN if there is none at all and none can be started.
 * Workers blocked in a gr_tpool_run of their own do not count against the
 * size: were they all such, the jobs they wait for would wait in the FIFO
 * for a worker that never comes. */
static int find_worker(void)
{
	if (pool.idle > pool.queued - 1) {
		pthread_cond_signal(&pool.work);
		return 0;
	}
	if (pool.threads - pool.nested >= pool.max)
		return 0; /* it waits its turn in the FIFO */
	int r = gr__thread_start(worker_main, NULL);
	if (r == 0) {
		pool.threads++;
		return 0;
	}
	if (pool.idle > 0)
		pthread_cond_signal(&pool.work);
	return pool.threads > 0 ? 0 : -EAGAIN;
}

/* Lock held: queue w and find it a worker. 0 or -EAGAIN (not queued).
 * `first`: ahead of everything queued (a job a worker waits for). */
static int queue_locked(struct gr__work *w, bool first)
{
	w->state = GR__WORK_QUEUED;
	if (first)
		gr__list_push_front(&pool.queue, &w->link);
	else
		gr__list_push_back(&pool.queue, &w->link);
	pool.queued++;
	int err = find_worker();
	if (err < 0) {
		gr__list_remove(&pool.queue, &w->link);
		pool.queued--;
	}
	return err;
}

int gr__tpool_submit(struct gr__work *w)
{
	pthread_once(&pool_once, pool_init);
	pthread_mutex_lock(&pool.lock);
	int err = queue_locked(w, false);
	pthread_mutex_unlock(&pool.lock);
	return err;
}

bool gr__tpool_withdraw(struct gr__work *w)
{
	pthread_mutex_lock(&pool.lock);
	bool queued = w->state == GR__WORK_QUEUED;
	if (queued) {
		gr__list_remove(&pool.queue, &w->link);
		pool.queued--;
		w->state = GR__WORK_DONE;
	}
	pthread_mutex_unlock(&pool.lock);
	return queued;
}

void gr__tpool_barrier(void)
{
	/* finish() runs with the lock held: once we hold it, every finish()
	 * begun before has returned. */
	pthread_mutex_lock(&pool.lock);
	pthread_mutex_unlock(&pool.lock);
}

/* ------------------------------------------------------------ jobs */

static void job_run(struct gr__work *w)
{
	struct job *j = gr__container(w, struct job, work);

	j->result = j->fn(j->arg);
}

/* Lock held: wake the caller, who takes the result and frees the job. */
static void job_finish(struct gr__work *w)
{
	struct job *j = gr__container(w, struct job, work);

	gr__xunpark(gr__container(j->waiter.parked.first, struct gr__park, link), 0);
}

/* The caller left: the cleanup gets fn's result (NULL if fn never ran). */
static void job_release(struct gr__work *w)
{
	struct job *j = gr__container(w, struct job, work);

	if (j->cleanup)
		j->cleanup(j->result, j->arg);
	free(j);
}

/* Lock held: w's release() is due on a worker (it is the caller's code,
 * never run under the pool's lock, nor on a thread that is exiting). An idle
 * worker is told, a busy one finds it when it is done; if none is left (all
 * went idle and exited), one is started. */
static void release_on_worker(struct gr__work *w)
{
	w->state = GR__WORK_ABANDONED;
	gr__list_push_back(&pool.releases, &w->link);
	if (pool.idle > 0)
		pthread_cond_signal(&pool.work);
	else if (pool.threads == 0 && gr__thread_start(worker_main, NULL) == 0)
		pool.threads++;
}

/* The caller of a job stopped waiting (the gate's on_leave, lock held): it
 * left, or its thread is exiting (gone), maybe after the job was done and
 * before the caller could run to take the result. */
static void job_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	struct job *j = gr__container(xq, struct job, waiter);

	(void)p;
	switch (j->work.state) {
	case GR__WORK_DONE:
		/* Only when gone: a caller that runs again takes the result and
		 * frees the job itself. One that never will leaves the result
		 * to its cleanup. */
		if (gone)
			release_on_worker(&j->work);
		return;
	case GR__WORK_QUEUED:
		gr__list_remove(&pool.queue, &j->work.link);
		pool.queued--;
		if (j->cleanup)
			release_on_worker(&j->work);
		else
			free(j);
		return;
	default:
		j->work.state = GR__WORK_ABANDONED; /* released by the worker after fn */
		return;
	}
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
	 * made for it: a plain thread asking for this wants to wait). A pure
	 * try (deadline 0) cannot be met by work on another thread: it fails
	 * here, before anything is queued (the gate would not park it, and the
	 * job would be left in the FIFO with nobody to hand it to). */
	err = 0;
	if (hub)
		err = gr__park_prepare(&hub, &p, deadline);
	else
		gr__xpark_thread_begin(&p, deadline);
	if (err == 0 && deadline == 0)
		err = -ETIMEDOUT;
	if (err) {
		/* A caller that stops waiting gets its cleanup, also when it
		 * stopped before queueing (tpool.h). */
		if ((err == -ECANCELED || err == -ETIMEDOUT) && cleanup)
			cleanup(NULL, arg);
		return err;
	}
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->work.run = job_run;
	j->work.finish = job_finish;
	j->work.release = job_release;
	j->fn = fn;
	j->arg = arg;
	j->cleanup = cleanup;
	j->waiter.lock = &pool.lock;
	j->waiter.on_leave = job_left;

	pthread_once(&pool_once, pool_init);
	pthread_mutex_lock(&pool.lock);
	/* A job that runs a job: counted before it queues, so that the pool
	 * grows by one for it (find_worker), and queued first, so that the
	 * worker that comes runs what frees a blocked worker rather than
	 * another job that may block one more (the pool would grow by one
	 * for every such job queued). */
	pool.nested += on_worker;
	err = queue_locked(&j->work, on_worker);
	if (err < 0) {
		pool.nested -= on_worker;
		pthread_mutex_unlock(&pool.lock);
		free(j);
		return err;
	}
	err = gr__xpark(hub, &p, &j->waiter);
	pool.nested -= on_worker;
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
