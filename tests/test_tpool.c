/* test_tpool.c — gr_tpool_run: results, concurrency with the hub, kills and
 * deadlines while a job runs and while it waits in the queue, a burst of 10k
 * jobs, threads with and without hubs, thread exit mid-wait, fork.
 * Runs once per hub.
 *
 * Jobs that must stay busy block on a pipe the test controls (never a
 * sleep): the test decides when they end. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(tpool);

static void *twice(void *arg)
{
	return (void *)(2 * (uintptr_t)arg);
}

Test(tpool, a_job_runs_on_another_thread_and_its_result_comes_back)
{
	void *r = NULL;

	assert_ok(gr_tpool_run(twice, (void *)21, &r, GR_FOREVER));
	cr_assert_eq((uintptr_t)r, 42);
	assert_ok(gr_tpool_run(twice, (void *)1, NULL, GR_FOREVER));
	assert_err(gr_tpool_run(NULL, NULL, &r, GR_FOREVER), EINVAL);
}

/* A job that blocks reading one byte from a pipe: the test says when it
 * ends by writing to the pipe. It counts itself in `started`. */
struct gate {
	int p[2];
	atomic_int started;
	atomic_int finished;
	atomic_int cleaned;
	atomic_uintptr_t cleanup_result;
};

static void gate_open(struct gate *g)
{
	cr_assert_eq(pipe2(g->p, O_CLOEXEC), 0);
	atomic_init(&g->started, 0);
	atomic_init(&g->finished, 0);
	atomic_init(&g->cleaned, 0);
	atomic_init(&g->cleanup_result, 0);
}

static void gate_release(struct gate *g, int n)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(write(g->p[1], "x", 1), 1);
}

static void gate_close(struct gate *g)
{
	close(g->p[0]);
	close(g->p[1]);
}

static void *blocked_job(void *arg)
{
	struct gate *g = arg;
	char c;

	atomic_fetch_add(&g->started, 1);
	if (read(g->p[0], &c, 1) != 1)
		return NULL;
	atomic_fetch_add(&g->finished, 1);
	return (void *)0x5eed;
}

static void cleanup_job(void *result, void *arg)
{
	struct gate *g = arg;

	atomic_store(&g->cleanup_result, (uintptr_t)result);
	atomic_fetch_add(&g->cleaned, 1);
}

struct caller {
	struct gate *g;
	int64_t deadline;
	int rc;
	void *result;
	int64_t returned_at;
};

static void *call_blocked(void *arg)
{
	struct caller *c = arg;

	c->result = (void *)0xdead;
	c->rc = gr_tpool_run_cleanup(blocked_job, c->g, cleanup_job, &c->result, c->deadline);
	c->returned_at = gr_now();
	return NULL;
}

/* Wait, yielding, until `n` jobs have started on workers. */
static void await_started(struct gate *g, int n)
{
	int64_t until = gr_now() + 5 * GR_SEC;

	while (atomic_load(&g->started) < n) {
		cr_assert_lt(gr_now(), until, "only %d of %d jobs started", atomic_load(&g->started), n);
		assert_ok(gr_sleep(GR_MSEC));
	}
}

Test(tpool, the_hub_keeps_running_fibers_while_a_job_blocks)
{
	struct gate g;
	struct caller c = { .deadline = GR_FOREVER };
	int ticks = 0;

	gate_open(&g);
	c.g = &g;
	gr_fiber *f = gr_spawn(call_blocked, &c);
	await_started(&g, 1);
	/* The job is blocked in read(2) on a worker; this thread is free. */
	for (int i = 0; i < 10; i++, ticks++)
		assert_ok(gr_sleep(0));
	cr_assert_eq(ticks, 10);
	cr_assert_eq((uintptr_t)c.result, 0xdead, "the result came before the job ended");
	gate_release(&g, 1);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(c.rc);
	cr_assert_eq((uintptr_t)c.result, 0x5eed);
	cr_assert_eq(atomic_load(&g.cleaned), 0, "cleanup runs only for an abandoned job");
	gate_close(&g);
}

Test(tpool, kill_while_the_job_runs_returns_at_once_and_the_cleanup_gets_the_result)
{
	struct gate g;
	struct caller c = { .deadline = GR_FOREVER };

	gate_open(&g);
	c.g = &g;
	gr_fiber *f = gr_spawn(call_blocked, &c);
	await_started(&g, 1);
	int64_t t0 = gr_now();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_err(c.rc, ECANCELED);
	cr_assert_lt(c.returned_at - t0, GR_SEC / 2, "the killed caller did not return at once");
	cr_assert_eq((uintptr_t)c.result, 0xdead, "a result was written for a caller that left");
	/* The job runs to its end; its result goes to the cleanup. */
	gate_release(&g, 1);
	int64_t until = gr_now() + 5 * GR_SEC;
	while (atomic_load(&g.cleaned) == 0) {
		cr_assert_lt(gr_now(), until, "the cleanup never ran");
		assert_ok(gr_sleep(GR_MSEC));
	}
	cr_assert_eq(atomic_load(&g.cleanup_result), 0x5eed);
	cr_assert_eq(atomic_load(&g.finished), 1);
	gate_close(&g);
}

Test(tpool, a_deadline_while_the_job_runs_is_etimedout)
{
	struct gate g;
	struct caller c;

	gate_open(&g);
	c = (struct caller){ .g = &g, .deadline = gr_now() + 50 * GR_MSEC };
	gr_fiber *f = gr_spawn(call_blocked, &c);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_err(c.rc, ETIMEDOUT);
	cr_assert_geq(c.returned_at, c.deadline, "returned before its deadline");
	cr_assert_lt(c.returned_at - c.deadline, GR_SEC / 2);
	gate_release(&g, 1);
	int64_t until = gr_now() + 5 * GR_SEC;
	while (atomic_load(&g.cleaned) == 0) {
		cr_assert_lt(gr_now(), until, "the cleanup never ran");
		assert_ok(gr_sleep(GR_MSEC));
	}
	gate_close(&g);
}

/* Fill every worker with blocked jobs, so the next job waits in the FIFO;
 * then kill (or time out) its caller: it returns at once and its job never
 * runs, even after workers free up. */
Test(tpool, a_queued_job_whose_caller_left_never_runs)
{
	struct gr_tpool_stats st;
	struct gate busy, queued;
	struct caller cb[1024];

	assert_ok(gr_tpool_stats(&st));
	unsigned n = st.max;
	cr_assert_leq(n, 1024);
	gate_open(&busy);
	gate_open(&queued);
	atomic_store(&queued.cleanup_result, 1); /* the cleanups must say NULL */
	gr_fiber *fb[1024];
	for (unsigned i = 0; i < n; i++) {
		cb[i] = (struct caller){ .g = &busy, .deadline = GR_FOREVER };
		fb[i] = gr_spawn(call_blocked, &cb[i]);
	}
	await_started(&busy, (int)n);
	struct caller killed = { .g = &queued, .deadline = GR_FOREVER };
	struct caller timed = { .g = &queued, .deadline = gr_now() + 30 * GR_MSEC };
	gr_fiber *fk = gr_spawn(call_blocked, &killed);
	gr_fiber *ft = gr_spawn(call_blocked, &timed);
	assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.queued, 2, "%zu jobs queued", st.queued);
	assert_ok(gr_kill(fk));
	assert_ok(gr_join(fk, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(ft, NULL, gr_now() + 5 * GR_SEC));
	assert_err(killed.rc, ECANCELED);
	assert_err(timed.rc, ETIMEDOUT);
	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.queued, 0, "a job whose caller left is still queued");
	/* Free the workers: the two abandoned jobs must not run now. */
	gate_release(&busy, (int)n);
	for (unsigned i = 0; i < n; i++) {
		assert_ok(gr_join(fb[i], NULL, gr_now() + 5 * GR_SEC));
		assert_ok(cb[i].rc);
	}
	void *r;
	assert_ok(gr_tpool_run(twice, (void *)4, &r, gr_now() + 5 * GR_SEC));
	cr_assert_eq(atomic_load(&queued.started), 0, "a job whose caller left was run");
	/* Their cleanups still run, once each, with no result: what the
	 * callers handed the jobs can be freed there (tpool.h). */
	int64_t until = gr_now() + 5 * GR_SEC;
	while (atomic_load(&queued.cleaned) < 2) {
		cr_assert_lt(gr_now(), until, "%d of 2 cleanups ran", atomic_load(&queued.cleaned));
		assert_ok(gr_sleep(GR_MSEC));
	}
	cr_assert_eq(atomic_load(&queued.cleanup_result), 0, "a job that never ran had a result");
	assert_ok(gr_sleep(10 * GR_MSEC));
	cr_assert_eq(atomic_load(&queued.cleaned), 2, "a cleanup ran twice");
	gate_close(&busy);
	gate_close(&queued);
}

static void *killed_then_calls(void *arg)
{
	struct caller *c = arg;

	gr_kill(gr_self());
	c->rc = gr_tpool_run_cleanup(blocked_job, c->g, cleanup_job, &c->result, GR_FOREVER);
	gr_kill_ack(GR_FOREVER);
	return NULL;
}

/* A pure try (deadline 0) cannot be met by another thread, and a killed
 * caller cannot wait: both fail before anything is queued (a job queued
 * for a caller that is not waiting used to be handed to nobody), and the
 * cleanup still gets its one call, at once, with no result. */
Test(tpool, a_pure_try_and_a_killed_caller_fail_before_queueing_and_get_their_cleanup)
{
	struct gate g;
	struct gr_tpool_stats st;
	void *r = (void *)0xdead;

	gate_open(&g);
	atomic_store(&g.cleanup_result, 1);
	assert_err(gr_tpool_run_cleanup(blocked_job, &g, cleanup_job, &r, 0), ETIMEDOUT);
	cr_assert_eq(atomic_load(&g.cleaned), 1, "no cleanup for the pure try");
	cr_assert_eq(atomic_load(&g.cleanup_result), 0);
	assert_err(gr_tpool_run(twice, (void *)1, &r, 0), ETIMEDOUT);
	cr_assert_eq((uintptr_t)r, 0xdead, "a result for a call that failed");

	struct caller c = { .g = &g, .result = (void *)0xdead };
	gr_fiber *f = gr_spawn(killed_then_calls, &c);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_err(c.rc, ECANCELED);
	cr_assert_eq(atomic_load(&g.cleaned), 2, "no cleanup for the killed caller");
	cr_assert_eq((uintptr_t)c.result, 0xdead);
	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.queued, 0);
	assert_ok(gr_sleep(10 * GR_MSEC));
	cr_assert_eq(atomic_load(&g.started), 0, "a job nobody waits for ran");
	gate_close(&g);
}

static void *burst_one(void *arg)
{
	uintptr_t i = (uintptr_t)arg;
	void *r = NULL;

	if (gr_tpool_run(twice, (void *)i, &r, gr_now() + 60 * GR_SEC) != 0)
		return (void *)1;
	return (uintptr_t)r == 2 * i ? NULL : (void *)1;
}

Test(tpool, a_burst_of_10k_jobs_from_10k_fibers_all_complete)
{
	enum { N = 10000 };
	static gr_fiber *f[N];
	struct gr_tpool_stats before, after;

	assert_ok(gr_tpool_stats(&before));
	for (uintptr_t i = 0; i < N; i++) {
		f[i] = gr_spawn(burst_one, (void *)i);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < N; i++) {
		void *bad = (void *)1;

		assert_ok(gr_join(f[i], &bad, GR_FOREVER));
		cr_assert_null(bad, "job %d", i);
	}
	assert_ok(gr_tpool_stats(&after));
	cr_assert_geq(after.completed - before.completed, N);
	cr_assert_leq(after.threads, after.max);
}

/* ------------------------------------------------------------ threads */

struct plain {
	int rc;
	void *result;
	int64_t deadline;
	struct gate *g;
	int had_hub;
};

static void *plain_thread(void *arg)
{
	struct plain *pl = arg;
	struct gr_hub_stats st;

	if (pl->g)
		pl->rc = gr_tpool_run(blocked_job, pl->g, &pl->result, pl->deadline);
	else
		pl->rc = gr_tpool_run(twice, (void *)50, &pl->result, pl->deadline);
	pl->had_hub = gr_hub_stats(&st) != -ESRCH;
	return NULL;
}

Test(tpool, a_thread_without_a_hub_just_blocks)
{
	struct plain pl = { .deadline = GR_FOREVER };
	pthread_t t;

	cr_assert_eq(pthread_create(&t, NULL, plain_thread, &pl), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_ok(pl.rc);
	cr_assert_eq((uintptr_t)pl.result, 100);
	cr_assert_eq(pl.had_hub, 0, "a hub was made for a plain thread");

	/* With a deadline, and a job that outlives it. */
	struct gate g;
	gate_open(&g);
	pl = (struct plain){ .deadline = gr_now() + 30 * GR_MSEC, .g = &g };
	cr_assert_eq(pthread_create(&t, NULL, plain_thread, &pl), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_err(pl.rc, ETIMEDOUT);
	gate_release(&g, 1);
	/* On a loaded machine the deadline may pass before a worker takes the
	 * job, which is then dropped: either way, once every worker is idle,
	 * a job that started has finished. */
	int64_t until = gr_now() + 5 * GR_SEC;
	struct gr_tpool_stats st;
	for (;;) {
		assert_ok(gr_tpool_stats(&st));
		if (st.queued == 0 && st.idle == st.threads)
			break;
		cr_assert_lt(gr_now(), until, "the abandoned job never finished");
		assert_ok(gr_sleep(GR_MSEC));
	}
	cr_assert_eq(atomic_load(&g.finished), atomic_load(&g.started));
	gate_close(&g);
}

struct hub_thread {
	int ok;
};

static void *hub_thread_main(void *arg)
{
	struct hub_thread *h = arg;

	if (gr_hub_use(grt_hub()) != 0)
		return NULL;
	gr_fiber *f[50];
	for (uintptr_t i = 0; i < 50; i++)
		f[i] = gr_spawn(burst_one, (void *)i);
	int ok = 1;
	for (int i = 0; i < 50; i++) {
		void *bad = (void *)1;

		if (!f[i] || gr_join(f[i], &bad, GR_FOREVER) != 0 || bad)
			ok = 0;
	}
	h->ok = ok;
	return NULL;
}

Test(tpool, fibers_of_several_hubs_share_the_pool)
{
	struct hub_thread h[3] = { { 0 } };
	pthread_t t[3];

	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, hub_thread_main, &h[i]), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(pthread_join(t[i], NULL), 0);
		cr_assert(h[i].ok, "thread %d", i);
	}
}

struct exiting {
	struct gate *g;
	struct caller c;
};

static void *exit_mid_wait(void *arg)
{
	struct exiting *e = arg;

	if (gr_hub_use(grt_hub()) != 0)
		return NULL;
	e->c = (struct caller){ .g = e->g, .deadline = GR_FOREVER };
	gr_spawn(call_blocked, &e->c);
	while (atomic_load(&e->g->started) == 0)
		gr_sleep(GR_MSEC);
	return NULL; /* the fiber is still waiting on its job */
}

Test(tpool, a_thread_exits_while_its_fiber_waits_on_a_job)
{
	struct gate g;
	struct exiting e;
	pthread_t t;

	gate_open(&g);
	e.g = &g;
	int64_t t0 = gr_now();
	cr_assert_eq(pthread_create(&t, NULL, exit_mid_wait, &e), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the thread's exit waited for the job");
	/* The job still ends, and its cleanup (not the gone fiber) gets it. */
	gate_release(&g, 1);
	int64_t until = gr_now() + 5 * GR_SEC;
	while (atomic_load(&g.cleaned) == 0) {
		cr_assert_lt(gr_now(), until, "the cleanup never ran");
		assert_ok(gr_sleep(GR_MSEC));
	}
	cr_assert_eq(atomic_load(&g.cleanup_result), 0x5eed);
	gate_close(&g);
}

Test(tpool, a_fork_child_gets_a_pool_of_its_own)
{
	void *r;
	struct gr_tpool_stats st;

	/* Make sure the parent has workers. */
	assert_ok(gr_tpool_run(twice, (void *)1, &r, GR_FOREVER));
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		if (gr_tpool_stats(&st) != 0 || st.threads != 0 || st.queued != 0)
			_exit(2);
		if (gr_tpool_run(twice, (void *)8, &r, gr_now() + 5 * GR_SEC) != 0 ||
		    (uintptr_t)r != 16)
			_exit(3);
		_exit(0);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "child check %d failed", WEXITSTATUS(status));
	assert_ok(gr_tpool_run(twice, (void *)2, &r, GR_FOREVER));
	cr_assert_eq((uintptr_t)r, 4);
}

/* ------------------------------------------------------------ exhaustion */

/* A job that itself runs a job on the pool and waits for it (a library
 * that offloads internally, called from offloaded code). With every worker
 * busy in such an outer job, the inner jobs would wait in the FIFO for a
 * worker that never comes: a silent deadlock. A worker that waits on the
 * pool must not count against its size. */
static void *inner(void *arg)
{
	return (void *)((uintptr_t)arg + 1);
}

static void *outer(void *arg)
{
	void *r = NULL;
	int err = gr_tpool_run(inner, arg, &r, gr_now() + 3 * GR_SEC);

	return err ? (void *)(intptr_t)err : r;
}

static void *run_outer(void *arg)
{
	void *r = NULL;
	int err = gr_tpool_run(outer, arg, &r, gr_now() + 10 * GR_SEC);

	if (err)
		grt_fail("outer job %zu: %s", (size_t)(uintptr_t)arg, strerror(-err));
	else if ((uintptr_t)r != (uintptr_t)arg + 1)
		grt_fail("outer job %zu: the inner one returned %zd", (size_t)(uintptr_t)arg,
			 (ssize_t)(intptr_t)r);
	return NULL;
}

Test(tpool, jobs_that_wait_on_the_pool_themselves_never_starve_it)
{
	struct gr_tpool_stats st;
	enum { N = 40 }; /* more outer jobs than the pool has workers */
	gr_fiber *f[N];

	assert_ok(gr_tpool_stats(&st));
	cr_assert_lt(st.max, N, "GREENRING_THREADS %u: not exhausted", st.max);
	for (uintptr_t i = 0; i < N; i++) {
		f[i] = gr_spawn(run_outer, (void *)(i * 10));
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < N; i++)
		assert_ok(gr_join(f[i], NULL, gr_now() + 20 * GR_SEC));
	grt_assert_no_failures();
	assert_ok(gr_tpool_stats(&st));
	/* At most one worker more than the size for each outer job, which may
	 * hold a worker blocked in its own gr_tpool_run. */
	cr_assert_leq(st.threads, st.max + N, "%u workers for a pool of %u", st.threads, st.max);
}

/* A job that forks: the fork child's only thread was a worker of the
 * parent's pool, not of its own (empty) one; a job it runs must get a
 * worker of its own, whatever the parent counted. */
static void *fork_and_run(void *unused)
{
	(void)unused;
	pid_t pid = fork();
	if (pid == 0) {
		void *r = NULL;
		int err = gr_tpool_run(inner, (void *)41, &r, gr_now() + 3 * GR_SEC);

		_exit(err == 0 && (uintptr_t)r == 42 ? 0 : err == -ETIMEDOUT ? 3 : 4);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return (void *)(intptr_t)-1;
	return (void *)(intptr_t)status;
}

Test(tpool, a_job_that_forks_leaves_its_child_a_pool_that_works)
{
	void *r = NULL;

	assert_ok(gr_tpool_run(fork_and_run, NULL, &r, gr_now() + 10 * GR_SEC));
	int status = (int)(intptr_t)r;
	cr_assert(status != -1, "fork or waitpid failed");
	cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "the child's job: %s",
		     WEXITSTATUS(status) == 3 ? "no worker ever ran it" : "failed");
}

/* With no fd number left: starting the pool's first workers, and every wake-up
 * of a fiber by a worker, must need none (the hub's wake-up fd was made with
 * the hub), so that a program out of fds can still hand work to the pool. */
static void *twice_in_a_fiber(void *arg)
{
	void *r = NULL;
	int rc = gr_tpool_run(twice, arg, &r, gr_now() + 5 * GR_SEC);

	return rc == 0 && r == (void *)(2 * (uintptr_t)arg) ? NULL : (void *)(intptr_t)(rc ? rc : -1);
}

Test(tpool, jobs_run_and_their_callers_wake_with_no_fd_left)
{
	enum { N = 20 };
	int fill[64];
	struct rlimit old;
	gr_fiber *f[N];
	void *res[N];
	struct gr_tpool_stats st;

	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.threads, 0, "the pool has workers already: the test would not start any");
	int n = grt_exhaust_fds(fill, 64, 0, &old);
	for (uintptr_t i = 0; i < N; i++)
		f[i] = gr_spawn(twice_in_a_fiber, (void *)(i + 1));
	for (int i = 0; i < N; i++)
		res[i] = f[i] ? (void *)1 : (void *)2;
	for (int i = 0; i < N; i++)
		if (f[i])
			gr_join(f[i], &res[i], gr_now() + 10 * GR_SEC);
	struct plain pl = { .deadline = gr_now() + 5 * GR_SEC };
	pthread_t t;
	int made = pthread_create(&t, NULL, plain_thread, &pl);
	if (made == 0)
		pthread_join(t, NULL);
	grt_restore_fds(fill, n, &old);
	for (int i = 0; i < N; i++)
		cr_assert_null(res[i], "fiber %d: %d (%s)", i, (int)(intptr_t)res[i],
			       strerror(-(int)(intptr_t)res[i]));
	cr_assert_eq(made, 0);
	assert_ok(pl.rc);
	cr_assert_eq((uintptr_t)pl.result, 100);
}

/* Jobs blocked in a read, their callers under deadlines that come sooner
 * and later than the ones already waiting (300 ms; 30 ms 10 ms later; 250
 * ms; 50 ms after 100 ms): the hub's bound moves earlier and later, and on
 * io_uring the ring's one timer is replaced and armed again. Each call
 * ends with ETIMEDOUT at its deadline, never early, at most 40 ms late;
 * each job's cleanup runs once its read is fed. Found nothing
 * (adversarial review). */
struct blocked_job {
	int fd;
	atomic_int cleaned;
};

static void *read_a_byte(void *arg)
{
	struct blocked_job *j = arg;
	char c;

	return read(j->fd, &c, 1) == 1 ? NULL : "read";
}

static void job_cleaned(void *result, void *arg)
{
	(void)result;
	atomic_store(&((struct blocked_job *)arg)->cleaned, 1);
}

struct timed_caller {
	struct blocked_job *job;
	int64_t start_after, within;
	int64_t deadline, ended;
	int r;
};

static void *call_with_deadline(void *arg)
{
	struct timed_caller *t = arg;

	if (t->start_after)
		(void)gr_sleep(t->start_after);
	t->deadline = gr_now() + t->within;
	t->r = gr_tpool_run_cleanup(read_a_byte, t->job, job_cleaned, NULL, t->deadline);
	t->ended = gr_now();
	return NULL;
}

/* Pool calls whose deadlines come sooner and later than those already
 * waiting: each ends at its own. The hub's wait is bounded by the soonest
 * (on io_uring a timer the ring keeps across waits, which a sooner
 * deadline must replace). Found nothing (adversarial review). */
Test(tpool, deadlines_sooner_and_later_than_those_waiting_each_end_their_call_on_time)
{
	enum { N = 4 };
	static struct blocked_job jobs[N];
	static const int64_t after[N] = { 0, 10 * GR_MSEC, 20 * GR_MSEC, 100 * GR_MSEC };
	static const int64_t within[N] = { 300 * GR_MSEC, 30 * GR_MSEC, 250 * GR_MSEC, 50 * GR_MSEC };
	struct timed_caller t[N];
	gr_fiber *f[N];
	int p[N][2];

	for (int i = 0; i < N; i++) {
		cr_assert_eq(pipe2(p[i], O_CLOEXEC), 0);
		jobs[i].fd = p[i][0];
		atomic_store(&jobs[i].cleaned, 0);
		t[i] = (struct timed_caller){ .job = &jobs[i], .start_after = after[i], .within = within[i] };
		cr_assert_not_null(f[i] = gr_spawn(call_with_deadline, &t[i]));
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0);
	for (int i = 0; i < N; i++) {
		int64_t late = t[i].ended - t[i].deadline;

		cr_assert_eq(t[i].r, -ETIMEDOUT, "call %d: %d", i, t[i].r);
		cr_assert_geq(late, 0, "call %d ended %lld us early", i, (long long)(-late / 1000));
		/* Under 80 ms, room for a loaded CI machine under ASan; a later
		 * timer left in place of a sooner one would end call 3 120 ms
		 * late (at call 2's deadline), call 1 260 ms late. */
		cr_assert_lt(late, 80 * GR_MSEC, "call %d ended %lld ms late", i, (long long)(late / GR_MSEC));
	}
	for (int i = 0; i < N; i++) {
		cr_assert_eq(write(p[i][1], "x", 1), 1);
		grt_await_flag(&jobs[i].cleaned, "a job's cleanup");
		cr_assert_eq(close(p[i][0]), 0);
		cr_assert_eq(close(p[i][1]), 0);
	}
}
