/* test_thread.c — hubs are per thread: a thread's hub is freed when it
 * exits (even with fibers left), two threads run their own fibers at once,
 * and a fiber belongs to the thread that spawned it. Runs once per hub.
 *
 * Threads record what they saw; only the test's own thread asserts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
/* Nothing of what a thread's discarded fibers held may leak (ASan builds). */
#define assert_no_leak() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaks: see stderr")
#else
#define assert_no_leak() ((void)0)
#endif

GRT_SUITE(thread);

/* ------------------------------------------------------------ helpers */

static long vm_size_kib(void)
{
	FILE *f = fopen("/proc/self/status", "re");
	char line[256];
	long kib = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "VmSize: %ld kB", &kib) == 1)
			break;
	}
	fclose(f);
	return kib;
}

static void run_thread(void *(*fn)(void *), void *arg)
{
	pthread_t th;

	cr_assert_eq(pthread_create(&th, NULL, fn, arg), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
}

/* ------------------------------------------------------------ a busy short life */

struct life {
	const char *hub;
	int fibers_done;
	int io_ok;
	int err;
};

static void *ping(void *arg)
{
	int *p = arg; /* p[0] read end, p[1] write end of this fiber's pipe */
	char c = 0;

	if (gr_sleep(GR_MSEC / 10) != 0)
		return NULL;
	if (gr_write(p[1], "p", 1) != 1 || gr_read(p[0], &c, 1) != 1)
		return NULL;
	return c == 'p' ? arg : NULL;
}

static void *short_life(void *arg)
{
	struct life *l = arg;
	enum { N = 20 };
	int pipes[N][2];
	gr_fiber *f[N];

	l->hub = gr_hub_name();
	if (!l->hub) {
		l->err = errno;
		return NULL;
	}
	for (int i = 0; i < N; i++) {
		if (pipe2(pipes[i], O_CLOEXEC) != 0) {
			l->err = errno;
			return NULL;
		}
		f[i] = gr_spawn(ping, pipes[i]);
	}
	for (int i = 0; i < N; i++) {
		void *res = NULL;

		if (f[i] && gr_join(f[i], &res, GR_FOREVER) == 0 && res == pipes[i])
			l->fibers_done++;
		gr_close(pipes[i][0]);
		gr_close(pipes[i][1]);
	}
	l->io_ok = 1;
	return NULL;
}

Test(thread, a_thread_that_exits_frees_its_hub)
{
	int base_fds = grt_count_fds();
	long base_vm = -1;

	for (int i = 0; i < 60; i++) {
		struct life l = { 0 };

		run_thread(short_life, &l);
		cr_assert_str_eq(l.hub, grt_hub(), "thread %d: hub %s (%s)", i, l.hub ? l.hub : "none",
				 strerror(l.err));
		cr_assert_eq(l.fibers_done, 20, "thread %d: %d of 20 fibers finished", i, l.fibers_done);
		cr_assert_eq(grt_count_fds(), base_fds, "thread %d left %d fds open (its hub's?)", i,
			     grt_count_fds() - base_fds);
		/* glibc caches thread stacks and arenas: measure after a warm-up. */
		if (i == 9)
			base_vm = vm_size_kib();
	}
	long grown = vm_size_kib() - base_vm;
	/* A leaked hub keeps at least its loop stack and 20 fiber stacks
	 * (80 KiB each with the guard): 50 threads would leak > 80 MiB. */
	cr_assert_lt(grown, 16 * 1024, "address space grew by %ld KiB over 50 threads", grown);
}

/* ------------------------------------------------------------ exiting with fibers left */

struct abandon {
	int fd;
	int started;
	const char *hub;
};

static void *recv_forever(void *arg)
{
	struct abandon *a = arg;
	char buf[16];

	a->started++;
	gr_recv(a->fd, buf, sizeof(buf), 0);
	return NULL;
}

static void *sleep_forever(void *arg)
{
	struct abandon *a = arg;

	a->started++;
	gr_sleep(3600 * GR_SEC);
	return NULL;
}

static void *join_with_deadline(void *arg)
{
	struct abandon *a = arg;
	gr_fiber *target = gr_spawn(sleep_forever, a);

	a->started++;
	gr_join(target, NULL, gr_now() + 3600 * GR_SEC);
	return NULL;
}

static void *wait_fd_with_deadline(void *arg)
{
	struct abandon *a = arg;

	a->started++;
	gr_wait_fd(a->fd, POLLIN, gr_now() + 3600 * GR_SEC);
	return NULL;
}

static void *abandon_fibers(void *arg)
{
	struct abandon *a = arg;

	a->hub = gr_hub_name();
	gr_spawn(recv_forever, a);
	gr_spawn(join_with_deadline, a);
	gr_spawn(wait_fd_with_deadline, a);
	gr_spawn(sleep_forever, a);
	struct gr_spawn_opts o = { .detached = 1 };
	gr_spawn_with(&o, sleep_forever, a);
	gr_spawn(sleep_forever, a); /* never runs */
	gr_sleep(GR_MSEC);
	return NULL;
}

Test(thread, a_thread_may_exit_with_fibers_blocked)
{
	int sv[2];
	struct abandon a = { 0 };
	int base_fds;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	base_fds = grt_count_fds();
	a.fd = sv[0];
	int64_t t0 = gr_now();
	run_thread(abandon_fibers, &a);
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the thread's exit waited for its fibers");
	cr_assert_geq(a.started, 6);
	cr_assert_eq(grt_count_fds(), base_fds, "the exited thread's hub left fds open");
	/* The abandoned recv was cancelled, not left to eat data later. */
	cr_assert_eq(send(sv[1], "later", 5, 0), 5);
	char buf[8];
	cr_assert_eq(recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT), 5, "the abandoned recv took the data");
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ exit mid-turn (review s20a) */

/* The thread's main context returns in the middle of a turn the loop started
 * (fibers still queued in it and the next), with every kind of fiber the
 * fast paths touch: yielding, ended and unjoined, a woken joiner that has
 * not run, gr_hub_join callers, a pool at its limit (its spawns tried once,
 * deadline 0: a spawner left waiting at the exit would leak the slot it
 * allocated, which only its discarded stack points to), a killed fiber that
 * spawned, and fibers that never ran. The pool is static: its slots stay
 * reachable (no leak report), and its fibers never end. */
static gr_pool exit_pool;

struct midturn {
	int yields;
	int spawned_in_kill;
	int pool_waiting;
	int hub_joining;
};

static void *yield_forever(void *arg)
{
	struct midturn *m = arg;

	while (gr_sleep(0) == 0)
		m->yields++;
	return NULL;
}

static void *return_at_once(void *arg)
{
	return arg;
}

static void *sleep_ms_arg(void *arg)
{
	gr_sleep((int64_t)(intptr_t)arg * GR_MSEC);
	return NULL;
}

static void *join_arg(void *arg)
{
	gr_join(arg, NULL, gr_now() + 3600 * GR_SEC);
	return NULL;
}

static void *hub_join_long(void *arg)
{
	struct midturn *m = arg;

	m->hub_joining++;
	gr_hub_join(gr_now() + 3600 * GR_SEC);
	return NULL;
}

static void pool_work_forever(void *arg)
{
	(void)arg;
	gr_sleep(3600 * GR_SEC);
}

static void *pool_spawner(void *arg)
{
	struct midturn *m = arg;

	/* Waits for a slot until the thread exits and discards it (its
	 * slot's record must not leak then: LeakSanitizer's report on exit). */
	m->pool_waiting++;
	(void)gr_pool_spawn(&exit_pool, pool_work_forever, NULL, GR_FOREVER);
	m->pool_waiting--; /* never reached: the thread exits first */
	return NULL;
}

static void *spawn_once_killed(void *arg)
{
	struct midturn *m = arg;

	if (gr_sleep(3600 * GR_SEC) == -ECANCELED)
		m->spawned_in_kill = gr_spawn(yield_forever, m) != NULL;
	return NULL;
}

static void *exit_mid_turn(void *arg)
{
	struct midturn *m = arg;
	struct gr_spawn_opts det = { .detached = 1 };

	if (gr_pool_init(&exit_pool, 1) != 0)
		return NULL;
	gr_pool_spawn(&exit_pool, pool_work_forever, NULL, GR_FOREVER);
	gr_spawn(sleep_ms_arg, (void *)(intptr_t)3600000); /* in flight: the loop starts turns */
	gr_spawn(return_at_once, NULL);
	gr_spawn_with(&det, return_at_once, NULL);
	gr_fiber *short_one = gr_spawn(sleep_ms_arg, (void *)(intptr_t)1);
	gr_spawn(join_arg, short_one);
	gr_spawn(hub_join_long, m);
	gr_spawn(hub_join_long, m);
	for (int i = 0; i < 3; i++)
		gr_spawn(pool_spawner, m);
	gr_fiber *k = gr_spawn(spawn_once_killed, m);
	for (int i = 0; i < 2; i++)
		gr_spawn(yield_forever, m);
	/* Until the short sleeper ended and its joiner is woken. */
	int64_t until = gr_now() + 5 * GR_MSEC;
	while (gr_now() < until)
		gr_sleep(0);
	gr_kill(k);
	gr_sleep(0); /* k spawns: that fiber is queued */
	gr_spawn(return_at_once, NULL); /* never runs */
	/* Main first in a turn the loop starts: the yielders are queued behind. */
	gr_sleep(0);
	return NULL;
}

Test(thread, a_thread_may_exit_mid_turn_with_fibers_of_every_kind)
{
	struct midturn m = { 0 };
	int base_fds = grt_count_fds();
	int64_t t0 = gr_now();

	run_thread(exit_mid_turn, &m);
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the thread's exit waited for its fibers");
	cr_assert_gt(m.yields, 0);
	cr_assert_eq(m.spawned_in_kill, 1);
	cr_assert_eq(m.pool_waiting, 3);
	cr_assert_eq(m.hub_joining, 2);
	cr_assert_eq(grt_count_fds(), base_fds, "the exited thread's hub left fds open");
	assert_no_leak();
}

/* ------------------------------------------------------------ two hubs at once */

struct worker {
	pthread_barrier_t *start;
	const char *hub;
	gr_fiber *self;
	uint64_t main_id;
	long rounds_done;
	int errors;
};

struct pingpong {
	int rd, wr;
	int rounds;
	long *done;
	int *errors;
};

static void *pingpong_fiber(void *arg)
{
	struct pingpong *p = arg;

	for (int i = 0; i < p->rounds; i++) {
		char c = (char)i, got;

		if (gr_write(p->wr, &c, 1) != 1 || gr_read(p->rd, &got, 1) != 1 || got != c) {
			(*p->errors)++;
			break;
		}
		if (i % 16 == 0 && gr_sleep(0) != 0)
			(*p->errors)++;
		(*p->done)++;
	}
	return NULL;
}

static void *worker_thread(void *arg)
{
	struct worker *w = arg;
	enum { N = 50 };
	struct pingpong pp[N];
	gr_fiber *f[N];
	int pipes[N][2];

	w->hub = gr_hub_name();
	w->self = gr_self();
	w->main_id = gr_fiber_id(w->self);
	pthread_barrier_wait(w->start);
	for (int i = 0; i < N; i++) {
		if (pipe2(pipes[i], O_CLOEXEC) != 0) {
			w->errors++;
			return NULL;
		}
		/* Each fiber writes into its own pipe and reads it back. */
		pp[i] = (struct pingpong){ .rd = pipes[i][0], .wr = pipes[i][1], .rounds = 200,
					   .done = &w->rounds_done, .errors = &w->errors };
		f[i] = gr_spawn(pingpong_fiber, &pp[i]);
	}
	for (int i = 0; i < N; i++) {
		if (!f[i] || gr_join(f[i], NULL, gr_now() + 20 * GR_SEC) != 0)
			w->errors++;
		gr_close(pipes[i][0]);
		gr_close(pipes[i][1]);
	}
	if (gr_self() != w->self)
		w->errors++;
	return NULL;
}

Test(thread, two_threads_run_their_own_hubs_concurrently)
{
	pthread_barrier_t start;
	struct worker w[2] = { { .start = &start }, { .start = &start } };
	pthread_t th[2];
	int base_fds = grt_count_fds();

	cr_assert_eq(pthread_barrier_init(&start, NULL, 2), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, worker_thread, &w[i]), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_join(th[i], NULL), 0);
	pthread_barrier_destroy(&start);
	for (int i = 0; i < 2; i++) {
		cr_assert_str_eq(w[i].hub, grt_hub());
		cr_assert_eq(w[i].errors, 0, "thread %d: %d errors", i, w[i].errors);
		cr_assert_eq(w[i].rounds_done, 50 * 200);
	}
	cr_assert_neq(w[0].self, w[1].self, "two threads share a main fiber");
	cr_assert_neq(w[0].main_id, w[1].main_id, "fiber ids are not unique across threads");
	cr_assert_neq(w[0].main_id, gr_fiber_id(gr_self()));
	cr_assert_eq(grt_count_fds(), base_fds);
}

/* ------------------------------------------------------------ foreign fibers */

struct owner {
	pthread_barrier_t *step;
	gr_fiber *fiber;
	gr_fiber *main_fiber;
	int ran;
	int join_rc;
};

static void *mark_ran(void *arg)
{
	((struct owner *)arg)->ran = 1;
	return arg;
}

static void *owner_thread(void *arg)
{
	struct owner *o = arg;

	o->main_fiber = gr_self();
	o->fiber = gr_spawn(mark_ran, o);
	pthread_barrier_wait(o->step); /* the test thread tries to use it */
	pthread_barrier_wait(o->step);
	o->join_rc = gr_join(o->fiber, NULL, GR_FOREVER);
	return NULL;
}

Test(thread, another_threads_fiber_is_eperm)
{
	pthread_barrier_t step;
	struct owner o = { .step = &step };
	pthread_t th;

	cr_assert_eq(pthread_barrier_init(&step, NULL, 2), 0);
	cr_assert_eq(pthread_create(&th, NULL, owner_thread, &o), 0);
	pthread_barrier_wait(&step);
	cr_assert_not_null(o.fiber);
	cr_assert_eq(gr_join(o.fiber, NULL, 0), -EPERM);
	cr_assert_eq(gr_join(o.fiber, NULL, GR_FOREVER), -EPERM);
	cr_assert_eq(gr_kill(o.fiber), -EPERM);
	cr_assert_eq(gr_detach(o.fiber), -EPERM);
	cr_assert_eq(gr_kill(o.main_fiber), -EPERM, "killing another thread's main");
	pthread_barrier_wait(&step);
	cr_assert_eq(pthread_join(th, NULL), 0);
	pthread_barrier_destroy(&step);
	cr_assert_eq(o.join_rc, 0, "the owner could not join its fiber: %s", strerror(-o.join_rc));
	cr_assert_eq(o.ran, 1, "the misuse from another thread disturbed the fiber");
}

/* ------------------------------------------------------------ killing a thread's main */

struct killed_main {
	gr_fiber *main_fiber;
	int join_rc, sleep_rc, yield_rc, kill_rc;
	int read_errno;
};

static void *kill_main(void *arg)
{
	struct killed_main *k = arg;

	k->kill_rc = gr_kill(k->main_fiber);
	return NULL;
}

static void *main_gets_killed(void *arg)
{
	struct killed_main *k = arg;
	int p[2];
	char c;

	k->main_fiber = gr_self();
	gr_fiber *f = gr_spawn(kill_main, k);
	k->join_rc = gr_join(f, NULL, GR_FOREVER);
	k->sleep_rc = gr_sleep(GR_MSEC);
	k->yield_rc = gr_sleep(0);
	if (pipe2(p, O_CLOEXEC) == 0) {
		k->read_errno = gr_read(p[0], &c, 1) < 0 ? errno : 0;
		close(p[0]);
		close(p[1]);
	}
	/* The thread ends with f unjoined: its hub discards it. */
	return NULL;
}

Test(thread, a_killed_main_context_gets_ecanceled)
{
	struct killed_main k = { 0 };
	int base_fds = grt_count_fds();

	run_thread(main_gets_killed, &k);
	cr_assert_eq(k.kill_rc, 0);
	cr_assert_eq(k.join_rc, -ECANCELED, "main's join after main was killed: %d", k.join_rc);
	cr_assert_eq(k.sleep_rc, -ECANCELED);
	cr_assert_eq(k.yield_rc, -ECANCELED);
	cr_assert_eq(k.read_errno, ECANCELED);
	cr_assert_eq(grt_count_fds(), base_fds);
}

/* ------------------------------------------------------------ different hubs at once */

struct other_hub {
	const char *want;
	int use_rc;
	const char *name;
	int ok;
};

static void *sleeper_fiber(void *arg)
{
	return (void *)(intptr_t)gr_sleep((int64_t)(intptr_t)arg * GR_MSEC);
}

static void *run_other_hub(void *arg)
{
	struct other_hub *o = arg;

	o->use_rc = gr_hub_use(o->want);
	if (o->use_rc != 0)
		return NULL;
	o->name = gr_hub_name();
	gr_fiber *f[10];
	for (int i = 0; i < 10; i++)
		f[i] = gr_spawn(sleeper_fiber, (void *)(intptr_t)(i % 3 + 1));
	int ok = 1;
	for (int i = 0; i < 10; i++) {
		void *r = (void *)1;

		ok &= f[i] && gr_join(f[i], &r, gr_now() + 5 * GR_SEC) == 0 && r == NULL;
	}
	o->ok = ok;
	return NULL;
}

Test(thread, threads_may_run_different_hubs_at_once)
{
	static const char *names[] = { "io_uring", "epoll", "poll" };
	struct other_hub o[3];
	pthread_t th[3];
	gr_fiber *mine = gr_spawn(sleeper_fiber, (void *)(intptr_t)5);

	for (int i = 0; i < 3; i++) {
		o[i] = (struct other_hub){ .want = names[i] };
		cr_assert_eq(pthread_create(&th[i], NULL, run_other_hub, &o[i]), 0);
	}
	cr_assert_eq(gr_join(mine, NULL, gr_now() + 5 * GR_SEC), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		if (o[i].use_rc == -ENOTSUP || o[i].use_rc == -ENOENT)
			continue; /* that hub cannot run here */
		cr_assert_eq(o[i].use_rc, 0);
		cr_assert_str_eq(o[i].name, names[i]);
		cr_assert(o[i].ok, "the %s thread's fibers failed", names[i]);
	}
	cr_assert_str_eq(gr_hub_name(), grt_hub(), "another thread's choice changed this thread's hub");
}

/* ------------------------------------------------------------ no fd left */

/* A thread's first greenring call makes its hub: an io_uring ring, an epoll
 * fd, an eventfd for wake-ups from other threads. With no fd number left
 * that must fail with EMFILE (never abort, never leave half a hub's fds
 * open), and the same thread's next call, once fds are back, must make the
 * hub and run fibers. `room` numbers are left free: 0 fails every backend,
 * a few may let some of a hub's fds be made before one fails. */
struct no_fds {
	pthread_barrier_t step;
	int room;
	const char *first;          /* gr_hub_name() with fds exhausted */
	int first_err;
	gr_fiber *spawned;          /* gr_spawn then */
	int spawn_err;
	const char *second;         /* gr_hub_name() once fds are back */
	void *joined;
};

static void *returns_arg(void *arg)
{
	return arg;
}

static void *hub_without_fds(void *arg)
{
	struct no_fds *t = arg;

	errno = 0;
	t->first = gr_hub_name();
	t->first_err = errno;
	errno = 0;
	t->spawned = gr_spawn(returns_arg, t);
	t->spawn_err = errno;
	if (t->spawned)
		gr_join(t->spawned, NULL, gr_now() + 5 * GR_SEC);
	pthread_barrier_wait(&t->step); /* the test gives the fds back */
	pthread_barrier_wait(&t->step);
	t->second = gr_hub_name();
	gr_fiber *f = gr_spawn(returns_arg, t);
	if (f)
		gr_join(f, &t->joined, gr_now() + 5 * GR_SEC);
	return NULL;
}

Test(thread, a_hub_made_with_no_fd_left_fails_with_emfile_and_is_made_once_fds_are_back)
{
	int fill[64];
	struct rlimit old;

	for (int room = 0; room < 4; room++) {
		struct no_fds t = { .room = room };
		pthread_t th;
		int before = grt_count_fds();

		cr_assert_eq(pthread_barrier_init(&t.step, NULL, 2), 0);
		int n = grt_exhaust_fds(fill, 64, room, &old);
		int made = pthread_create(&th, NULL, hub_without_fds, &t);
		if (made == 0)
			pthread_barrier_wait(&t.step);
		grt_restore_fds(fill, n, &old);
		cr_assert_eq(made, 0, "pthread_create: %s", strerror(made));
		pthread_barrier_wait(&t.step);
		cr_assert_eq(pthread_join(th, NULL), 0);
		pthread_barrier_destroy(&t.step);
		if (room == 0) {
			cr_assert_null(t.first, "room 0: a %s hub with no fd left", t.first);
			cr_assert_eq(t.first_err, EMFILE, "room 0: %s (%s)", strerror(t.first_err),
				     gr_hub_why());
		}
		if (!t.first) {
			cr_assert(t.first_err == EMFILE, "room %d: %s", room, strerror(t.first_err));
			cr_assert_null(t.spawned, "room %d: a fiber without a hub", room);
			cr_assert_eq(t.spawn_err, EMFILE, "room %d: gr_spawn: %s", room, strerror(t.spawn_err));
		}
		cr_assert_not_null(t.second, "room %d: no hub once fds were back", room);
		cr_assert_str_eq(t.second, grt_hub(), "room %d", room);
		cr_assert_eq(t.joined, &t, "room %d: the fiber did not run", room);
		cr_assert_eq(grt_count_fds(), before, "room %d: the thread's fds were not all closed", room);
	}
}
