/* test_trust.c — adversarial regressions: what the runtime must never do
 * however its public API is used, or misused, at the worst moment.
 * Runs once per hub. Covers:
 *   - joins: a joinable fiber is released exactly once, even when a join or
 *     detach comes while its joiner is woken by its end but not yet run, or
 *     when the joiner's deadline ties with the end;
 *   - gr_hub_use refuses while an ended fiber still waits for its join;
 *   - tunables (GREENRING_URING_ENTRIES, GREENRING_STACK_SIZE): a value that
 *     cannot be used is replaced and said on stderr, never spun on;
 *   - thread exit with a woken (or killed) waiter does not wait out its timer;
 *   - a number gr_close just freed is usable before the closer runs again;
 *   - fork() in a fiber: the child has none of the parent's other fibers,
 *     and the forking fiber's return ends the child with status 0;
 *   - ASan: fibers discarded at thread exit leave no stack poison behind;
 *   - gr_server never closes a number it no longer owns (its listening
 *     socket or a connection closed behind its back and reused);
 *   - stale numbers: accept and recv on a number reused after a plain
 *     close() see their events; a read whose fd is closed under it fails;
 *   - misbehaving third-party backends: one whose cancel() completes other
 *     operations (gr_close must not hang), one whose wait() keeps failing
 *     (its operations fail with EIO, and stderr says why);
 *   - the kill model: gr_kill_ack() and gr_killed(), cleanup deadlines.
 *
 * Scenarios that could hang the old runtime, need their own environment
 * (tunables are read once per process) or must capture stderr run in a
 * child: the test binary re-executes itself with GRT_TRUST_CHILD=<mode>, and
 * a constructor runs the child's part before Criterion's main. The parent
 * waits for it under a deadline and kills it on timeout. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"
#include "tinypoll.h"

GRT_SUITE(trust);

/* ------------------------------------------------------------ children */

/* A child's part (see the top): runs before Criterion's main, with nothing
 * of greenring used yet, and returns the exit status. What went wrong goes
 * to stdout. The modes are listed at the end of the file. */
struct child_mode {
	const char *name;
	int (*run)(void);
};

struct child_run {
	int status;        /* from waitpid */
	int timed_out;     /* killed at the deadline */
	int64_t took;      /* ns from start to exit (or kill) */
	char out[4096];
	char err[16384];
};

/* Run this binary as a child in `mode`, with environment variable env_name
 * set to env_value (if env_name is not NULL); collect its stdout and stderr
 * and its exit; kill it if it is still running `timeout` ns after the start.
 * Plain poll() and waitpid(): the parent's hub is not involved. */
static void run_self(const char *mode, const char *env_name, const char *env_value,
		     int64_t timeout, struct child_run *r)
{
	int out[2], err[2];
	size_t nout = 0, nerr = 0;

	memset(r, 0, sizeof(*r));
	cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t parent = getpid();
	int64_t t0 = gr_now();
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(127);
		dup2(out[1], STDOUT_FILENO);
		dup2(err[1], STDERR_FILENO);
		setenv("GRT_TRUST_CHILD", mode, 1);
		if (env_name)
			setenv(env_name, env_value, 1);
		signal(SIGSEGV, SIG_DFL);
		execl("/proc/self/exe", "test_trust", (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	struct pollfd p[2] = { { .fd = out[0], .events = POLLIN },
			       { .fd = err[0], .events = POLLIN } };
	int open_pipes = 2;
	int64_t until = t0 + timeout;
	while (open_pipes > 0) {
		int64_t left = until - gr_now();

		if (left <= 0) {
			if (r->timed_out)
				break; /* a grandchild holds the pipes: stop reading */
			kill(pid, SIGKILL);
			r->timed_out = 1;
			r->took = gr_now() - t0;
			until = gr_now() + GR_SEC; /* what is left to read */
			continue;
		}
		if (poll(p, 2, (int)((left + GR_MSEC - 1) / GR_MSEC)) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < 2; i++) {
			char *buf = i ? r->err : r->out;
			size_t cap = i ? sizeof(r->err) : sizeof(r->out);
			size_t *n = i ? &nerr : &nout;
			char sink[512];

			if (p[i].fd < 0 || !p[i].revents)
				continue;
			ssize_t k = *n + 1 < cap ? read(p[i].fd, buf + *n, cap - 1 - *n)
						 : read(p[i].fd, sink, sizeof(sink));
			if (k <= 0) {
				close(p[i].fd);
				p[i].fd = -1;
				open_pipes--;
			} else if (*n + 1 < cap) {
				*n += (size_t)k;
			}
		}
	}
	for (int i = 0; i < 2; i++) {
		if (p[i].fd >= 0)
			close(p[i].fd);
	}
	r->out[nout] = '\0';
	r->err[nerr] = '\0';
	pid_t w;
	while ((w = waitpid(pid, &r->status, 0)) < 0 && errno == EINTR)
		;
	cr_assert_eq(w, pid);
	if (!r->timed_out)
		r->took = gr_now() - t0;
}

static const char *describe(const struct child_run *r, char *buf, size_t len)
{
	if (r->timed_out)
		snprintf(buf, len, "still running after %lld ms: killed",
			 (long long)(r->took / GR_MSEC));
	else if (WIFSIGNALED(r->status))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(r->status));
	else
		snprintf(buf, len, "exit status %d", WEXITSTATUS(r->status));
	return buf;
}

/* The child ended on its own with status 0. */
static void expect_child_ok(const struct child_run *r, const char *what)
{
	char how[96];

	cr_assert(!r->timed_out && WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0,
		  "%s: %s\nstdout: %s\nstderr: %s", what, describe(r, how, sizeof(how)), r->out,
		  r->err);
}

/* Run this binary as a child in `mode` (killed after `timeout`), expect it
 * to succeed, and to have said `said` on stderr. */
static void expect_child_says(const char *mode, int64_t timeout, const char *what, const char *said)
{
	struct child_run r;

	run_self(mode, NULL, NULL, timeout, &r);
	expect_child_ok(&r, what);
	cr_assert_not_null(strstr(r.err, said), "%s: stderr without \"%s\": %s", what, said, r.err);
}

/* The same, but the child must not have said `unsaid`. */
static void expect_child_never_says(const char *mode, int64_t timeout, const char *what, const char *unsaid)
{
	struct child_run r;

	run_self(mode, NULL, NULL, timeout, &r);
	expect_child_ok(&r, what);
	cr_assert_null(strstr(r.err, unsaid), "%s: stderr says \"%s\": %s", what, unsaid, r.err);
}

/* ------------------------------------------------------------ helpers */

static void *return_arg(void *arg)
{
	return arg;
}

/* Spawn n fibers, check their handles are distinct (no stack handed out
 * twice), then join each and check it ran as itself. */
static void spawn_distinct_and_join(int n)
{
	gr_fiber *f[8];

	cr_assert_leq(n, 8);
	for (int i = 0; i < n; i++) {
		f[i] = gr_spawn(return_arg, (void *)(intptr_t)(100 + i));
		cr_assert_not_null(f[i], "gr_spawn: %s", strerror(errno));
		for (int j = 0; j < i; j++)
			cr_assert_neq(f[i], f[j], "spawns %d and %d got the same handle: a "
				      "stack was released twice", j, i);
	}
	for (int i = 0; i < n; i++) {
		void *res = NULL;

		assert_ok(gr_join(f[i], &res, gr_now() + 5 * GR_SEC));
		cr_assert_eq((intptr_t)res, 100 + i, "fiber %d returned %ld", i,
			     (long)(intptr_t)res);
	}
}

/* ------------------------------------------------------------ joins */

struct join_race {
	gr_fiber *b;
	int a_rc;
	void *a_res;
	int c_ran, c_join, c_detach;
};

static void *join_b_with_deadline(void *arg)
{
	struct join_race *jr = arg;

	jr->a_rc = gr_join(jr->b, &jr->a_res, gr_now() + 5 * GR_SEC);
	return NULL;
}

static void *join_and_detach_b(void *arg)
{
	struct join_race *jr = arg;

	jr->c_join = gr_join(jr->b, NULL, GR_FOREVER);
	jr->c_detach = gr_detach(jr->b);
	jr->c_ran = 1;
	return NULL;
}

/* A joins B; B ends, which wakes A; before A runs, C tries to join and to
 * detach B. A still holds the claim on B: had C's join released B, A would
 * release it a second time, and the stack pool would hand one stack to two
 * later fibers. Spawn order makes it exact: in one turn A parks in its join,
 * B returns (A becomes runnable for the next turn) and C runs. */
Test(trust, a_join_woken_but_not_yet_run_keeps_its_claim)
{
	struct join_race jr = { .a_rc = 1, .c_join = 1, .c_detach = 1 };
	gr_fiber *a = gr_spawn(join_b_with_deadline, &jr);
	jr.b = gr_spawn(return_arg, (void *)0xb0b);
	gr_fiber *c = gr_spawn(join_and_detach_b, &jr);

	cr_assert(a && jr.b && c);
	assert_ok(gr_sleep(0));
	cr_assert(jr.c_ran, "C did not run in the first turn");
	assert_err(jr.c_join, EINVAL);
	assert_err(jr.c_detach, EBUSY);
	assert_ok(gr_join(a, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(c, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(jr.a_rc);
	cr_assert_eq(jr.a_res, (void *)0xb0b, "A's join got %p", jr.a_res);
	spawn_distinct_and_join(6);
}

struct join_tie {
	gr_fiber *b;
	int64_t at;
	int a_rc, c_join, c_detach;
	void *a_res, *c_res;
};

static void *end_at(void *arg)
{
	struct join_tie *t = arg;

	gr_sleep_until(t->at);
	return (void *)0x71e;
}

static void *return_0x71e(void *arg)
{
	return (void *)0x71e;
}

static void *join_until(void *arg)
{
	struct join_tie *t = arg;

	t->a_rc = gr_join(t->b, &t->a_res, t->at);
	return NULL;
}

static void *reap_at(void *arg)
{
	struct join_tie *t = arg;

	gr_sleep_until(t->at);
	t->c_join = gr_join(t->b, &t->c_res, 0);
	t->c_detach = gr_detach(t->b);
	return NULL;
}

static void *reap_after_deadline(void *arg)
{
	struct join_tie *t = arg;

	/* Still in the turn B ended in: let A's deadline pass (a spin on the
	 * clock, not a sleep, so that nothing else runs meanwhile). */
	while (gr_now() <= t->at)
		;
	t->c_join = gr_join(t->b, &t->c_res, 0);
	t->c_detach = gr_detach(t->b);
	return NULL;
}

/* Check that B was released once over A's join, C's join and detach, and
 * a last join by main (which waits for B if nobody took it). */
static void expect_one_release(struct join_tie *t, const char *how)
{
	void *res = NULL;

	cr_assert(t->a_rc == 0 || t->a_rc == -ETIMEDOUT, "%s: A's join: %d", how, t->a_rc);
	int last = gr_join(t->b, &res, gr_now() + 5 * GR_SEC);
	int releases = (t->a_rc == 0) + (t->c_join == 0) + (t->c_detach == 0) + (last == 0);
	cr_assert_eq(releases, 1,
		     "%s: B released %d times: A's join %d, C's join %d, C's detach %d, the "
		     "last join %d", how, releases, t->a_rc, t->c_join, t->c_detach, last);
	if (t->a_rc == 0)
		cr_assert_eq(t->a_res, (void *)0x71e);
	if (t->c_join == 0)
		cr_assert_eq(t->c_res, (void *)0x71e);
	if (last == 0)
		cr_assert_eq(res, (void *)0x71e);
}

/* A's join deadline passes at the moment B ends. First exactly: B ends,
 * waking A, and before A runs its deadline passes and C tries to reap B (a
 * join with deadline 0, then a detach): A still holds its claim, so C fails
 * (-EINVAL, -EBUSY); A then resumes with 0 or -ETIMEDOUT, and B is released
 * exactly once over A's join and a last join by main. Then as it falls: B
 * ends, A's deadline passes and C reaps, all at one instant on three timers,
 * in every spawn order, several rounds each; whatever the order the timers
 * fire and the fibers run in, B is released once and never twice. */
Test(trust, a_join_deadline_tied_with_the_end_releases_once)
{
	static const char orders[6][4] = { "abc", "acb", "bac", "bca", "cab", "cba" };
	struct join_tie e = { .a_rc = 1, .c_join = 1, .c_detach = 1,
			      .at = gr_now() + 10 * GR_MSEC };
	gr_fiber *ea = gr_spawn(join_until, &e);
	e.b = gr_spawn(return_0x71e, NULL);
	gr_fiber *ec = gr_spawn(reap_after_deadline, &e);

	cr_assert(ea && e.b && ec);
	assert_ok(gr_join(ea, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(ec, NULL, gr_now() + 5 * GR_SEC));
	assert_err(e.c_join, EINVAL);
	assert_err(e.c_detach, EBUSY);
	expect_one_release(&e, "exact tie");
	spawn_distinct_and_join(4);

	for (int round = 0; round < 36; round++) {
		const char *order = orders[round % 6];
		struct join_tie t = { .a_rc = 1, .c_join = 1, .c_detach = 1,
				      .at = gr_now() + 2 * GR_MSEC };
		gr_fiber *a = NULL, *c = NULL;
		char how[64];

		for (int i = 0; i < 3; i++) {
			if (order[i] == 'a')
				a = gr_spawn(join_until, &t);
			else if (order[i] == 'b')
				t.b = gr_spawn(end_at, &t);
			else
				c = gr_spawn(reap_at, &t);
		}
		cr_assert(a && t.b && c);
		assert_ok(gr_join(a, NULL, gr_now() + 5 * GR_SEC));
		assert_ok(gr_join(c, NULL, gr_now() + 5 * GR_SEC));
		snprintf(how, sizeof(how), "round %d (spawn order %s)", round, order);
		expect_one_release(&t, how);
		spawn_distinct_and_join(4);
	}
}

/* ------------------------------------------------------------ hub switch */

/* An ended fiber nobody joined pins the hub: its handle must stay valid
 * until gr_join. A gr_hub_use that tore the hub down under it would leave
 * the join reading freed memory. */
Test(trust, gr_hub_use_refuses_while_an_ended_fiber_is_unjoined)
{
	struct gr_hub_stats st;
	void *res = NULL;
	gr_fiber *f = gr_spawn(return_arg, (void *)0x3);

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0));
	assert_ok(gr_hub_stats(&st));
	cr_assert_eq(st.fibers, 0);
	cr_assert_eq(st.unreleased, 1);
	assert_err(gr_hub_use(grt_hub()), EBUSY);
	assert_ok(gr_join(f, &res, GR_FOREVER));
	cr_assert_eq(res, (void *)0x3);
}

/* ------------------------------------------------------------ tunables */

/* A read of an empty pipe under a 50 ms fiber deadline: -1/ETIMEDOUT within
 * 2 s, on the hub GREENRING_HUB names. For the tunables. */
static int child_timed_read(void)
{
	int p[2];
	char c;

	const char *hub = gr_hub_name();
	const char *want = getenv("GREENRING_HUB");
	if (!hub || (want && strcmp(hub, want) != 0)) {
		printf("hub %s, wanted %s: %s\n", hub ? hub : "none", want ? want : "default",
		       gr_hub_why());
		return 1;
	}
	if (pipe2(p, O_CLOEXEC) != 0)
		return 2;
	int64_t t0 = gr_now();
	int64_t old = gr_deadline_set(t0 + 50 * GR_MSEC);
	ssize_t n = gr_read(p[0], &c, 1);
	int e = errno;
	gr_deadline_set(old);
	int64_t took = gr_now() - t0;
	if (n != -1 || e != ETIMEDOUT) {
		printf("gr_read of an empty pipe under a deadline: %zd (%s)\n", n, strerror(e));
		return 3;
	}
	if (took > 2 * GR_SEC) {
		printf("gr_read took %lld ms to time out\n", (long long)(took / GR_MSEC));
		return 4;
	}
	gr_fiber *f = gr_spawn(return_arg, (void *)0x5);
	void *res = NULL;
	if (!f || gr_join(f, &res, gr_now() + 2 * GR_SEC) != 0 || res != (void *)0x5) {
		printf("a fiber did not run\n");
		return 5;
	}
	if (gr_close(p[0]) != 0 || gr_close(p[1]) != 0)
		return 6;
	return 0;
}

/* Run the timed read in a child with GREENRING_URING_ENTRIES=value. */
static void uring_entries(const char *value, int said)
{
	struct child_run r;
	char what[96];

	snprintf(what, sizeof(what), "GREENRING_URING_ENTRIES=%s", value);
	run_self("timed_read", "GREENRING_URING_ENTRIES", value, 4 * GR_SEC, &r);
	expect_child_ok(&r, what);
	if (said)
		cr_assert_not_null(strstr(r.err, "GREENRING_URING_ENTRIES"),
				   "%s was used without a word on stderr: %s", what, r.err);
	else
		cr_assert_null(strstr(r.err, "greenring"), "%s is fine, yet: %s", what, r.err);
}

/* An operation with a deadline takes two submission entries: a ring of one
 * can never submit it, and the hub spun at 100% CPU for ever. Below the
 * minimum the value is raised to it, and stderr says so. io_uring only. */
Test(trust, uring_entries_below_the_minimum_is_raised_not_spun)
{
	if (strcmp(grt_hub(), "io_uring") != 0)
		return;
	uring_entries("1", 1);
	uring_entries("0", 1);
	uring_entries("2", 0);
}

/* Not a number, negative, or above the maximum: the default, and a line on
 * stderr naming the variable, never a silent misreading. io_uring only. */
Test(trust, uring_entries_that_are_not_usable_get_the_default_and_a_word)
{
	if (strcmp(grt_hub(), "io_uring") != 0)
		return;
	uring_entries("abc", 1);
	uring_entries("-5", 1);
	uring_entries("99999999", 1);
}

/* A GREENRING_STACK_SIZE that is not a number is said on stderr; fibers
 * still run (on the default stack). */
Test(trust, a_stack_size_that_is_not_a_number_is_said)
{
	struct child_run r;

	run_self("timed_read", "GREENRING_STACK_SIZE", "abc", 4 * GR_SEC, &r);
	expect_child_ok(&r, "GREENRING_STACK_SIZE=abc");
	cr_assert_not_null(strstr(r.err, "GREENRING_STACK_SIZE"),
			   "GREENRING_STACK_SIZE=abc was ignored without a word: %s", r.err);
}

/* ------------------------------------------------------------ thread exit */

struct exit_case {
	int kill;            /* gr_kill the waiter instead of setting the event */
	gr_event ev;         /* outlives the thread: the parent owns it */
	const char *err;
};

static void *wait_12s(void *arg)
{
	struct exit_case *c = arg;

	gr_event_wait(&c->ev, gr_now() + 12 * GR_SEC);
	return NULL;
}

static void *exit_with_a_woken_waiter(void *arg)
{
	struct exit_case *c = arg;

	if (gr_hub_use(grt_hub()) != 0 || gr_event_init(&c->ev) != 0) {
		c->err = "no hub or no event";
		return NULL;
	}
	gr_fiber *w = gr_spawn(wait_12s, c);
	if (!w || gr_sleep(0) != 0) {
		c->err = "the waiter did not start";
		return NULL;
	}
	/* The waiter is parked with its 12 s deadline timer in flight. Wake it
	 * (runnable, not run) and leave: it is discarded at thread exit. */
	if (c->kill ? gr_kill(w) != 0 : gr_event_set(&c->ev) != 1)
		c->err = "the wake failed";
	return NULL;
}

static void thread_exit_is_prompt(int kill)
{
	/* Static: a thread that outlives a failed test must not write into a
	 * dead frame. */
	static struct exit_case c;
	pthread_t th;
	struct timespec until;

	c = (struct exit_case){ .kill = kill };
	int64_t t0 = gr_now();
	cr_assert_eq(pthread_create(&th, NULL, exit_with_a_woken_waiter, &c), 0);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	int r = pthread_timedjoin_np(th, NULL, &until);
	cr_assert_eq(r, 0, "the thread did not exit within 2 s (%s): its hub waits out the "
		     "discarded waiter's 12 s timer", strerror(r));
	cr_assert_null(c.err, "%s", c.err);
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC);
}

/* A thread ends while one of its fibers was woken from an event wait (its
 * deadline timer still in flight) but has not run: the hub discards the
 * fiber and must cancel its timer, not wait 12 s for it at thread exit. */
Test(trust, thread_exit_does_not_wait_out_a_woken_waiters_timer)
{
	thread_exit_is_prompt(0);
}

/* The same with the waiter killed (woken with ECANCELED) instead of set. */
Test(trust, thread_exit_does_not_wait_out_a_killed_waiters_timer)
{
	thread_exit_is_prompt(1);
}

/* ------------------------------------------------------------ fd numbers */

struct close_reuse {
	int fd;              /* X closes it */
	int x_rc, x_errno;
	int q[2];            /* Y's new pipe */
	ssize_t wrote, got;
	int w_errno, r_errno;
	int close0, close1;
	char byte;
};

static void *close_it(void *arg)
{
	struct close_reuse *c = arg;

	c->x_rc = gr_close(c->fd);
	c->x_errno = errno;
	return NULL;
}

static void *reuse_the_number(void *arg)
{
	struct close_reuse *c = arg;

	gr_sleep(0); /* X's close is done in the kernel; X has not run since */
	if (pipe2(c->q, O_CLOEXEC) != 0)
		return (void *)"pipe";
	/* The first green call names the reused number, before X runs. */
	if (write(c->q[1], "y", 1) != 1)
		return (void *)"write";
	int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
	c->got = gr_read(c->q[0], &c->byte, 1);
	c->r_errno = errno;
	if (c->got == 1 && c->byte == 'y') {
		c->wrote = gr_write(c->q[1], "z", 1);
		c->w_errno = errno;
		c->got = gr_read(c->q[0], &c->byte, 1);
		c->r_errno = errno;
	}
	gr_deadline_set(old);
	c->close0 = gr_close(c->q[0]);
	c->close1 = gr_close(c->q[1]);
	return NULL;
}

/* X gr_close()s a pipe end; Y, spawned right after, yields once and makes a
 * pipe, which gets the number X closed. The number is free once the close
 * is done, even though X has not run since: Y's I/O and closes on it must
 * work (on io_uring the close completes asynchronously, and X's pending
 * close must not be taken for Y's file, failing its I/O with EBADF and
 * leaking it). */
Test(trust, a_number_gr_close_just_freed_is_usable_before_the_closer_runs)
{
	int p[2];
	struct close_reuse c = { .x_rc = 1, .close0 = 1, .close1 = 1 };

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	/* The hub has seen the number: I/O went through it. */
	cr_assert_eq(gr_write(p[1], "a", 1), 1);
	cr_assert_eq(gr_read(p[0], &c.byte, 1), 1);
	c.fd = p[0];
	gr_fiber *x = gr_spawn(close_it, &c);
	gr_fiber *y = gr_spawn(reuse_the_number, &c);
	void *why = NULL;

	cr_assert(x && y);
	assert_ok(gr_join(x, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(y, &why, gr_now() + 5 * GR_SEC));
	cr_assert_null(why, "%s", (const char *)why);
	cr_assert_eq(c.x_rc, 0, "X's gr_close: %s", strerror(c.x_errno));
	cr_assert_eq(c.q[0], p[0], "the new pipe got %d, not the closed number %d", c.q[0], p[0]);
	cr_assert_eq(c.got, 1, "gr_read on the reused number: %s", strerror(c.r_errno));
	cr_assert_eq(c.wrote, 1, "gr_write into the new pipe: %s", strerror(c.w_errno));
	cr_assert_eq(c.byte, 'z');
	cr_assert_eq(c.close0, 0, "gr_close of the reused number failed: it leaks");
	cr_assert_eq(c.close1, 0);
	cr_assert_eq(gr_close(p[1]), 0);
}

/* ------------------------------------------------------------ fork */

/* fork() inside a fiber; the child lets that fiber return. */
struct forker {
	int rep;             /* write end of the report pipe */
	pid_t pid;
	int err;
};

static void *child_echo_fiber(void *arg)
{
	return arg;
}

/* The forking fiber's work in the child: greenring works there, and the
 * fiber then returns from its function, which ends the child with 0. */
static void forked_child_work(struct forker *fk)
{
	int p[2];
	char buf[4];
	void *res = NULL;

	if (gr_sleep(GR_MSEC) != 0) {
		printf("child: gr_sleep failed\n");
		return;
	}
	gr_fiber *f = gr_spawn(child_echo_fiber, (void *)0x6);
	if (!f || gr_join(f, &res, gr_now() + 2 * GR_SEC) != 0 || res != (void *)0x6) {
		printf("child: spawn and join failed\n");
		return;
	}
	if (pipe2(p, O_CLOEXEC) != 0 || gr_write(p[1], "rt", 2) != 2 ||
	    gr_read(p[0], buf, sizeof(buf)) != 2 || memcmp(buf, "rt", 2) != 0) {
		printf("child: the pipe round trip failed\n");
		return;
	}
	gr_close(p[0]);
	gr_close(p[1]);
	if (write(fk->rep, "M", 1) != 1)
		printf("child: the marker write failed\n");
}

static void *fork_and_return(void *arg)
{
	struct forker *fk = arg;

	fflush(NULL);
	fk->pid = fork();
	if (fk->pid == 0) {
		forked_child_work(fk);
		return NULL; /* ends the child (exit status 0) */
	}
	if (fk->pid < 0)
		fk->err = errno;
	return NULL;
}

struct marker {
	int rep;
	int fd;              /* R: the pipe it reads */
	char mark;
};

static void *sleep_then_mark(void *arg)
{
	struct marker *m = arg;

	if (gr_sleep(200 * GR_MSEC) == 0 && write(m->rep, &m->mark, 1) != 1)
		return (void *)1;
	return NULL;
}

static void *read_then_mark(void *arg)
{
	struct marker *m = arg;
	char c;

	if (gr_read(m->fd, &c, 1) == 1 && write(m->rep, &m->mark, 1) != 1)
		return (void *)1;
	return NULL;
}

static int child_fork_in_fiber(void)
{
	int rep[2], feed[2];

	if (pipe2(rep, O_CLOEXEC) != 0 || pipe2(feed, O_CLOEXEC) != 0)
		return 2;
	struct marker ms = { .rep = rep[1], .mark = 'S' };
	struct marker mr = { .rep = rep[1], .fd = feed[0], .mark = 'R' };
	struct forker fk = { .rep = rep[1], .pid = -1 };
	gr_fiber *s = gr_spawn(sleep_then_mark, &ms);
	gr_fiber *r = gr_spawn(read_then_mark, &mr);
	if (!s || !r || gr_sleep(GR_MSEC) != 0)
		return 3;
	/* S sleeps, R is blocked in gr_read: now F forks. */
	gr_fiber *f = gr_spawn(fork_and_return, &fk);
	if (!f || gr_join(f, NULL, gr_now() + 2 * GR_SEC) != 0)
		return 4;
	if (fk.pid < 0) {
		printf("fork: %s\n", strerror(fk.err));
		return 5;
	}
	int pidfd = (int)syscall(SYS_pidfd_open, fk.pid, 0);
	if (pidfd < 0)
		return 6;
	int waited = gr_wait_fd(pidfd, POLLIN, gr_now() + 3 * GR_SEC);
	if (waited != 0)
		kill(fk.pid, SIGKILL);
	int ws = 0;
	pid_t w;
	while ((w = waitpid(fk.pid, &ws, 0)) < 0 && errno == EINTR)
		;
	gr_close(pidfd);
	if (waited != 0) {
		printf("the child did not end within 3 s\n");
		return 7;
	}
	if (w != fk.pid || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
		printf("the child whose forking fiber returned: %s %d\n",
		       WIFSIGNALED(ws) ? "killed by signal" : "exit status",
		       WIFSIGNALED(ws) ? WTERMSIG(ws) : WEXITSTATUS(ws));
		return 8;
	}
	/* The parent's S and R go on: feed R, let S's sleep end. */
	if (write(feed[1], "f", 1) != 1)
		return 9;
	void *rs = NULL, *rr = NULL;
	if (gr_join(r, &rr, gr_now() + 2 * GR_SEC) != 0 ||
	    gr_join(s, &rs, gr_now() + 2 * GR_SEC) != 0)
		return 10;
	gr_close(rep[1]);
	char got[16];
	ssize_t n = 0, k;
	while (n < (ssize_t)sizeof(got) && (k = read(rep[0], got + n, sizeof(got) - (size_t)n)) > 0)
		n += k;
	int nm = 0, ns = 0, nr = 0;
	for (ssize_t i = 0; i < n; i++) {
		nm += got[i] == 'M';
		ns += got[i] == 'S';
		nr += got[i] == 'R';
	}
	if (nm != 1 || ns != 1 || nr != 1) {
		printf("reports: %zd bytes, %d M (the child's marker), %d S, %d R: S and R must "
		       "end once, in the parent only\n", n, nm, ns, nr);
		return 11;
	}
	gr_close(rep[0]);
	gr_close(feed[0]);
	gr_close(feed[1]);
	return 0;
}

/* A fiber F forks while the process has other fibers: S sleeping 200 ms, R
 * blocked in gr_read. In the child F is the main context of a fresh hub:
 * it sleeps, spawns and joins, does pipe I/O, reports, and then returns
 * from its function, which ends the child with status 0 (as a thread's
 * return ends a process it is the last thread of). S and R must not exist
 * in the child: they report when they end, and only the parent's copies
 * may, once each. Run in a child of the test (re-executed), so that the
 * grandchild's exit() never runs Criterion's handlers. */
Test(trust, a_fiber_that_forked_may_return_in_the_child)
{
	struct child_run r;

	run_self("fork_in_fiber", NULL, NULL, 8 * GR_SEC, &r);
	expect_child_ok(&r, "fork in a fiber");
}

/* ------------------------------------------------------------ ASan */

/* Fibers discarded deep in big frames, then new fibers on new threads with
 * big frames of their own (ASan: no stale poison may survive a discard). */
#define POISON_THREADS 4
#define POISON_FIBERS 4

static __attribute__((noinline)) int park_deep(gr_event *ev, int depth)
{
	char buf[8192];

	memset(buf, depth, sizeof(buf));
	__asm__ volatile("" : : "r"(buf) : "memory");
	if (depth == 3)
		return gr_event_wait(ev, GR_FOREVER) + buf[100];
	return park_deep(ev, depth + 1) + buf[depth];
}

static void *park_deep_fiber(void *arg)
{
	return (void *)(intptr_t)park_deep(arg, 1);
}

static void *discard_parked(void *arg)
{
	gr_event *ev = arg; /* outlives the thread: its hub may unlink waiters */

	if (gr_hub_use(grt_hub()) != 0 || gr_event_init(ev) != 0)
		return (void *)"no hub";
	for (int i = 0; i < POISON_FIBERS; i++) {
		if (!gr_spawn(park_deep_fiber, ev))
			return (void *)"spawn";
	}
	if (gr_sleep(0) != 0)
		return (void *)"yield";
	return NULL; /* every fiber is parked: discarded at thread exit */
}

static __attribute__((noinline)) int fill_frames(int depth)
{
	char buf[12288];

	memset(buf, depth + 1, sizeof(buf));
	__asm__ volatile("" : : "r"(buf) : "memory");
	if (depth == 3)
		return buf[0] + buf[sizeof(buf) - 1];
	return fill_frames(depth + 1) + buf[sizeof(buf) / 2];
}

static void *fill_frames_fiber(void *arg)
{
	return (void *)(intptr_t)fill_frames(1);
}

static void *use_big_frames(void *arg)
{
	gr_fiber *f[POISON_FIBERS];

	if (gr_hub_use(grt_hub()) != 0)
		return (void *)"no hub";
	for (int i = 0; i < POISON_FIBERS; i++) {
		f[i] = gr_spawn(fill_frames_fiber, NULL);
		if (!f[i])
			return (void *)"spawn";
	}
	for (int i = 0; i < POISON_FIBERS; i++) {
		void *res = NULL;

		if (gr_join(f[i], &res, gr_now() + 5 * GR_SEC) != 0 || (intptr_t)res != 8 + 3 + 2)
			return (void *)"join";
	}
	return NULL;
}

static int run_threads(void *(*fn)(void *), gr_event *ev)
{
	pthread_t th[POISON_THREADS];

	for (int i = 0; i < POISON_THREADS; i++) {
		if (pthread_create(&th[i], NULL, fn, ev ? &ev[i] : NULL) != 0)
			return -1;
	}
	int bad = 0;
	for (int i = 0; i < POISON_THREADS; i++) {
		void *why = NULL;

		pthread_join(th[i], &why);
		if (why) {
			printf("thread %d: %s\n", i, (const char *)why);
			bad = 1;
		}
	}
	return bad;
}

static int child_discard_poison(void)
{
	static gr_event ev[3][POISON_THREADS];

	for (int round = 0; round < 3; round++) {
		if (run_threads(discard_parked, ev[round]) != 0)
			return 2;
		if (run_threads(use_big_frames, NULL) != 0)
			return 3;
	}
	return 0;
}

/* Threads end with fibers parked deep in big frames (8 KiB arrays in three
 * nested calls): the fibers are discarded with their stacks. Then new
 * threads run fibers whose frames fill larger arrays. Under ASan a discard
 * must unpoison what the dead frames left in shadow memory: a stack mapped
 * again at the same address would otherwise report a bogus overflow. In a
 * child, so that an ASan report is seen whole; in a release build it checks
 * only that the scenario runs. */
Test(trust, discarded_fibers_leave_no_stack_poison_behind)
{
	struct child_run r;

	run_self("discard_poison", NULL, NULL, 8 * GR_SEC, &r);
	expect_child_ok(&r, "fibers discarded at thread exit, then big frames");
	cr_assert_null(strstr(r.err, "AddressSanitizer"), "%s", r.err);
}

/* ------------------------------------------------------------ servers */

static void never_called(int fd, const struct sockaddr *peer, void *arg)
{
	*(int *)arg = 1;
}

/* fd is open and names a pipe that still carries bytes: write to `wr`,
 * read the byte back from `rd`. */
static void expect_pipe_alive(int rd, int wr, int reused)
{
	char c = 0;

	cr_assert_geq(fcntl(reused, F_GETFD), 0, "fd %d (the reused number) was closed: %s", reused,
		      strerror(errno));
	cr_assert_eq(write(wr, "p", 1), 1, "write: %s", strerror(errno));
	cr_assert_eq(read(rd, &c, 1), 1, "read: %s", strerror(errno));
	cr_assert_eq(c, 'p');
}

/* Pipes until one end gets `number`; the others are closed. */
static void pipe_onto(int number, int q[2])
{
	int spare[32][2];
	int n = 0;

	for (;;) {
		cr_assert_lt(n, 32, "no pipe got fd %d", number);
		cr_assert_eq(pipe2(q, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
		if (q[0] == number || q[1] == number)
			break;
		spare[n][0] = q[0];
		spare[n][1] = q[1];
		n++;
	}
	for (int i = 0; i < n; i++) {
		close(spare[i][0]);
		close(spare[i][1]);
	}
}

/* The program closes the server's listening socket behind its back (plain
 * close of gr_server_fd, against the rules) while the acceptor waits in
 * accept, and the number goes to a pipe of its own. Stopping the server
 * must not close that pipe: the server closes only what is still its file. */
Test(trust, a_server_never_closes_its_listening_number_once_reused)
{
	int called = 0, q[2];
	gr_server *s = gr_server_create("127.0.0.1", 0, never_called, &called, NULL);

	cr_assert_not_null(s, "gr_server_create: %s", strerror(errno));
	assert_ok(gr_server_start(s));
	int lfd = gr_server_fd(s);
	cr_assert_geq(lfd, 0);
	assert_ok(gr_sleep(0)); /* the acceptor parks in accept */
	cr_assert_eq(close(lfd), 0);
	pipe_onto(lfd, q);
	assert_ok(gr_server_stop(s, 0));
	int r = gr_server_wait(s, gr_now() + 3 * GR_SEC);
	cr_assert_neq(r, -ETIMEDOUT, "gr_server_wait did not return");
	expect_pipe_alive(q[0], q[1], lfd);
	assert_ok(gr_server_free(s));
	expect_pipe_alive(q[0], q[1], lfd);
	cr_assert_eq(called, 0);
	cr_assert_eq(gr_close(q[0]), 0);
	cr_assert_eq(gr_close(q[1]), 0);
}

struct rogue {
	int fd;              /* the connection's number */
	int q[2];            /* the pipe that took it */
	int err;
	gr_event done;
};

static void close_own_fd_and_reuse(int fd, const struct sockaddr *peer, void *arg)
{
	struct rogue *g = arg;

	g->fd = fd;
	close(fd); /* against the rules */
	g->q[0] = g->q[1] = -1;
	for (int i = 0; i < 16; i++) {
		int q[2];

		if (pipe2(q, O_CLOEXEC) != 0) {
			g->err = errno;
			break;
		}
		if (q[0] == fd || q[1] == fd) {
			g->q[0] = q[0];
			g->q[1] = q[1];
			break;
		}
		close(q[0]);
		close(q[1]);
	}
	gr_event_set(&g->done);
}

/* A handler closes its own connection with plain close() (against the
 * rules), and a pipe takes the number; the handler returns. The server,
 * which closes a connection after its handler, must not close the pipe. */
Test(trust, a_server_never_closes_a_connection_number_once_reused)
{
	struct rogue g = { .fd = -1 };

	assert_ok(gr_event_init(&g.done));
	gr_server *s = gr_server_create("127.0.0.1", 0, close_own_fd_and_reuse, &g, NULL);
	cr_assert_not_null(s, "gr_server_create: %s", strerror(errno));
	assert_ok(gr_server_start(s));
	int client = grt_connect_plain(gr_server_port(s));
	assert_ok(gr_event_wait(&g.done, gr_now() + 3 * GR_SEC));
	cr_assert_eq(g.err, 0, "pipe2: %s", strerror(g.err));
	cr_assert_geq(g.q[0], 0, "no pipe got the connection's number %d", g.fd);
	/* Every handler has returned (and its connection been dealt with). */
	assert_ok(gr_server_stop(s, 0));
	int r = gr_server_wait(s, gr_now() + 3 * GR_SEC);
	cr_assert_neq(r, -ETIMEDOUT, "gr_server_wait did not return");
	expect_pipe_alive(g.q[0], g.q[1], g.fd);
	assert_ok(gr_server_free(s));
	expect_pipe_alive(g.q[0], g.q[1], g.fd);
	cr_assert_eq(gr_close(g.q[0]), 0);
	cr_assert_eq(gr_close(g.q[1]), 0);
	close(client);
	assert_ok(gr_event_destroy(&g.done));
}

/* ------------------------------------------------------------ stale numbers */

struct timed_call {
	int fd;
	int port;
	ssize_t rc;
	int err;
	int64_t took;
	char byte;
};

static void *read_one(void *arg)
{
	struct timed_call *t = arg;

	t->rc = gr_read(t->fd, &t->byte, 1);
	t->err = errno;
	return NULL;
}

static void *wait_readable(void *arg)
{
	struct timed_call *t = arg;
	int64_t t0 = gr_now();

	t->rc = gr_wait_fd(t->fd, POLLIN, GR_FOREVER);
	t->err = errno;
	t->took = gr_now() - t0;
	return NULL;
}

static void *accept_within_5s(void *arg)
{
	struct timed_call *t = arg;
	int64_t t0 = gr_now();
	int64_t old = gr_deadline_set(t0 + 5 * GR_SEC);

	t->rc = gr_accept(t->fd, NULL, NULL);
	t->err = errno;
	t->took = gr_now() - t0;
	gr_deadline_set(old);
	return NULL;
}

static void *connect_to(void *arg)
{
	struct timed_call *t = arg;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)t->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		t->err = errno;
		return NULL;
	}
	t->rc = gr_connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	t->err = errno;
	return (void *)(intptr_t)fd;
}

static void *recv_one(void *arg)
{
	struct timed_call *t = arg;

	t->rc = gr_recv(t->fd, &t->byte, 1, 0);
	t->err = errno;
	return NULL;
}

/* Use fd's number through the hub until a wait on it is registered (a read,
 * or a recv, that has to wait, then a byte to end it). */
static void register_by_reading(int rd, int wr, void *(*reader)(void *))
{
	struct timed_call t = { .fd = rd };
	gr_fiber *f = gr_spawn(reader, &t);

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0)); /* f waits in gr_read */
	cr_assert_eq(write(wr, "r", 1), 1);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(t.rc, 1, "the registering read: %s", strerror(t.err));
}

/* A pipe's read end waited in the hub (the epoll hub registered it), then
 * was closed with plain close(); a listening socket takes the number. A
 * gr_accept on it must see the connection that arrives, not wait on the
 * registration the kernel dropped with the old file (the silent hang: on
 * epoll it lasted until the deadline). */
Test(trust, an_accept_on_a_reused_number_sees_its_connection)
{
	int p[2];
	struct timed_call a = { .rc = -2 }, c = { .rc = -2 };

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	register_by_reading(p[0], p[1], read_one);
	int number = p[0];
	cr_assert_eq(close(p[0]), 0);
	a.fd = grt_listener(&c.port);
	cr_assert_eq(a.fd, number, "the listener got %d, not the closed number %d", a.fd, number);
	gr_fiber *fa = gr_spawn(accept_within_5s, &a);
	gr_fiber *fc = gr_spawn(connect_to, &c);
	void *cfd = NULL;

	cr_assert(fa && fc);
	assert_ok(gr_join(fa, NULL, gr_now() + 10 * GR_SEC));
	assert_ok(gr_join(fc, &cfd, gr_now() + 10 * GR_SEC));
	cr_assert_eq(c.rc, 0, "gr_connect: %s", strerror(c.err));
	cr_assert_geq(a.rc, 0, "gr_accept on the reused number: %s after %lld ms", strerror(a.err),
		      (long long)(a.took / GR_MSEC));
	cr_assert_lt(a.took, GR_SEC, "gr_accept took %lld ms", (long long)(a.took / GR_MSEC));
	cr_assert_eq(gr_close((int)a.rc), 0);
	cr_assert_eq(gr_close((int)(intptr_t)cfd), 0);
	cr_assert_eq(gr_close(a.fd), 0);
	cr_assert_eq(gr_close(p[1]), 0);
}

static void *recv_within_3s(void *arg)
{
	struct timed_call *t = arg;
	int64_t t0 = gr_now();
	int64_t old = gr_deadline_set(t0 + 3 * GR_SEC);

	t->rc = gr_recv(t->fd, &t->byte, 1, 0);
	t->err = errno;
	t->took = gr_now() - t0;
	gr_deadline_set(old);
	return NULL;
}

static void *send_one(void *arg)
{
	struct timed_call *t = arg;

	t->rc = gr_send(t->fd, "s", 1, 0);
	t->err = errno;
	return NULL;
}

/* A connected socket waited in gr_recv (registered), then both ends were
 * closed with plain close(); a new TCP pair takes the number. A gr_recv on
 * it (which trusts the fd's registration after EAGAIN) must get the byte
 * the peer sends, not wait on the stale registration until its deadline. */
Test(trust, a_recv_on_a_reused_socket_number_gets_its_byte)
{
	int old[2], np[2], spare[8][2], nspare = 0;
	struct timed_call r = { .rc = -2 }, s = { .rc = -2 };

	grt_tcp_pair(old);
	register_by_reading(old[1], old[0], recv_one);
	int number = old[1];
	cr_assert_eq(close(old[1]), 0);
	cr_assert_eq(close(old[0]), 0);
	for (;;) {
		cr_assert_lt(nspare, 8, "no TCP pair got fd %d", number);
		grt_tcp_pair(np);
		if (np[0] == number || np[1] == number)
			break;
		spare[nspare][0] = np[0];
		spare[nspare][1] = np[1];
		nspare++;
	}
	r.fd = number;
	s.fd = np[0] == number ? np[1] : np[0];
	gr_fiber *fr = gr_spawn(recv_within_3s, &r);
	gr_fiber *fs = gr_spawn(send_one, &s);

	cr_assert(fr && fs);
	assert_ok(gr_join(fr, NULL, gr_now() + 10 * GR_SEC));
	assert_ok(gr_join(fs, NULL, gr_now() + 10 * GR_SEC));
	cr_assert_eq(s.rc, 1, "gr_send: %s", strerror(s.err));
	cr_assert_eq(r.rc, 1, "gr_recv on the reused number: %s after %lld ms", strerror(r.err),
		     (long long)(r.took / GR_MSEC));
	cr_assert_eq(r.byte, 's');
	cr_assert_lt(r.took, GR_SEC, "gr_recv took %lld ms", (long long)(r.took / GR_MSEC));
	for (int i = 0; i < nspare; i++) {
		close(spare[i][0]);
		close(spare[i][1]);
	}
	cr_assert_eq(gr_close(np[0]), 0);
	cr_assert_eq(gr_close(np[1]), 0);
}

/* ------------------------------------------------------------ closed under a wait */

static int closed_reader_fd = -1;

static void *close_plainly(void *arg)
{
	/* One turn first: the reader's operation is then in the backend (on
	 * io_uring, in the kernel, holding the file). */
	gr_sleep(0);
	close(*(int *)arg); /* against the rules: gr_close is the way */
	return NULL;
}

/* A fiber waits in gr_read on a pipe; another closes the fd with plain
 * close(). The reader must fail with EBADF within 2 s. */
static int child_closed_under_reader(void)
{
	int p[2];
	struct timed_call t = { .rc = -2 };

	if (pipe2(p, O_CLOEXEC) != 0)
		return 2;
	closed_reader_fd = p[0];
	printf("fd=%d\n", p[0]);
	t.fd = p[0];
	gr_fiber *r = gr_spawn(read_one, &t);
	gr_fiber *k = gr_spawn(close_plainly, &closed_reader_fd);
	if (!r || !k)
		return 3;
	int64_t t0 = gr_now();
	int j = gr_join(r, NULL, t0 + 3 * GR_SEC);
	int64_t took = gr_now() - t0;
	if (j != 0) {
		/* Say what became of the reader once main's join timer woke the
		 * hub: still waiting, or failed but left unrun. */
		int again = gr_join(r, NULL, gr_now() + GR_SEC);

		printf("the reader of the closed fd still waits after 3 s (%s); a second join: "
		       "%s, the reader's gr_read: %zd (%s)\n", strerror(-j),
		       again ? strerror(-again) : "ok", t.rc,
		       t.rc == -2 ? "not returned" : strerror(t.err));
		return 4;
	}
	if (t.rc != -1 || t.err != EBADF) {
		printf("the reader of the closed fd: %zd (%s)\n", t.rc, strerror(t.err));
		return 5;
	}
	if (took > 2 * GR_SEC) {
		printf("the reader took %lld ms to fail\n", (long long)(took / GR_MSEC));
		return 6;
	}
	if (gr_join(k, NULL, gr_now() + GR_SEC) != 0 || gr_close(p[1]) != 0)
		return 7;
	return 0;
}

/* A fiber waits in gr_read on a pipe (the write end stays open); once the
 * read is in the backend, another fiber closes the fd with plain close()
 * and nothing reuses the number. The reader must not wait for ever: -1/EBADF
 * within 2 s on every hub. poll sees POLLNVAL at once; epoll's registration
 * went with the file, and io_uring's read holds the file itself, so there
 * the runtime's audit of long waits must find the number closed. On epoll
 * stderr names the fd. */
Test(trust, a_read_whose_fd_is_closed_under_it_fails_with_ebadf)
{
	struct child_run r;
	int fd = -1;
	char want[32];

	run_self("closed_under_reader", NULL, NULL, 6 * GR_SEC, &r);
	expect_child_ok(&r, "a reader whose fd was closed with close()");
	cr_assert_eq(sscanf(r.out, "fd=%d", &fd), 1, "stdout: %s", r.out);
	snprintf(want, sizeof(want), "fd %d ", fd);
	if (strcmp(grt_hub(), "epoll") == 0)
		cr_assert_not_null(strstr(r.err, want), "stderr does not name %s: %s", want, r.err);
}

/* ------------------------------------------------------------ test hubs
 * Two misbehaving hubs built from tinypoll's parts (tinypoll.c: a readiness
 * hub written against the public greenring/hub_ops.h only, as a third party
 * would). Operations wait in an array, oldest first; wait() polls them.
 *   "greedy": its cancel(op) completes op with -ECANCELED and also, at once,
 *             the nearest other operation it holds on the same fd (as a
 *             backend that reaps while it cancels), with a readiness result.
 *   "failing": its wait() fails with -EIO whenever an operation is held.
 *   "interrupting": announces GR_HUB_CAP_WAIT_UNTIL, and its wait_until
 *             returns `early_return` (-EINTR, or 0) at once, without
 *             waiting or reaping, whenever an operation is held (an early
 *             return the core takes for a signal's or a wake's, and asks
 *             again). "interrupting_late": its wait() does the same, and
 *             its cancel() leaves the operation to complete in a later
 *             wait(), as a completion backend's does. */

/* What the "interrupting" hubs return at once; a child mode sets it before
 * its first wait. */
static int early_return = -EINTR;

static int greedy_cancel(void *state, struct gr_op *op)
{
	struct grt_tinypoll *t = state;
	int i = grt_tp_find(t, op);

	if (i < 0)
		return -ENOENT;
	int fd = op->fd;
	grt_tp_complete(t, i, -ECANCELED);
	/* The nearest other operation on fd: the one submitted just before,
	 * else just after. It is "ready" (readiness may be spurious). */
	for (int j = i - 1; j >= 0; j--) {
		if (t->ops[j]->kind == GR_OP_POLL && t->ops[j]->fd == fd) {
			grt_tp_complete(t, j, t->ops[j]->events);
			return 0;
		}
	}
	for (int j = i; j < t->n; j++) {
		if (t->ops[j]->kind == GR_OP_POLL && t->ops[j]->fd == fd) {
			grt_tp_complete(t, j, t->ops[j]->events);
			return 0;
		}
	}
	return 0;
}

static int failing_wait(void *state, int64_t timeout_ns)
{
	struct grt_tinypoll *t = state;

	return t->n > 0 ? -EIO : grt_tp_wait(state, timeout_ns);
}

static int interrupting_wait_until(void *state, int64_t timeout_ns, int64_t deadline)
{
	struct grt_tinypoll *t = state;

	(void)deadline;
	return t->n > 0 ? early_return : grt_tp_wait(state, timeout_ns);
}

static int interrupting_wait(void *state, int64_t timeout_ns)
{
	struct grt_tinypoll *t = state;

	return t->n > 0 ? early_return : grt_tp_wait(state, timeout_ns);
}

static int late_cancel(void *state, struct gr_op *op)
{
	return grt_tp_find(state, op) < 0 ? -ENOENT : 0;
}

static const struct gr_hub_ops greedy_ops = {
	GRT_TP_OPS,
	.name = "greedy",
	.cancel = greedy_cancel,
	.wait = grt_tp_wait,
};

static const struct gr_hub_ops failing_ops = {
	GRT_TP_OPS,
	.name = "failing",
	.cancel = grt_tp_cancel,
	.wait = failing_wait,
};

static const struct gr_hub_ops interrupting_ops = {
	GRT_TP_OPS,
	.name = "interrupting",
	.caps = GR_HUB_CAP_WAIT_UNTIL,
	.cancel = grt_tp_cancel,
	.wait = grt_tp_wait,
	.wait_until = interrupting_wait_until,
};

static const struct gr_hub_ops interrupting_late_ops = {
	GRT_TP_OPS,
	.name = "interrupting_late",
	.cancel = late_cancel,
	.wait = interrupting_wait,
};

/* "unending": its cancel() leaves the operation to complete in a later
 * wait(), as interrupting_late's does, and its wait() is tinypoll's own,
 * which honours its timeout: an operation on an fd that never becomes
 * ready never completes, cancelled or not. */
static const struct gr_hub_ops unending_ops = {
	GRT_TP_OPS,
	.name = "unending",
	.cancel = late_cancel,
	.wait = grt_tp_wait,
};

/* ------------------------------------------------------------ backends that misbehave */

#define GREEDY_READERS 5

/* Five readers wait on one pipe under "greedy"; main gr_close()s it. */
static int child_greedy_cancel(void)
{
	int p[2];
	struct timed_call t[GREEDY_READERS];
	gr_fiber *f[GREEDY_READERS];
	struct gr_hub_stats st;

	if (gr_hub_use_ops(&greedy_ops) != 0 || pipe2(p, O_CLOEXEC) != 0)
		return 2;
	for (int i = 0; i < GREEDY_READERS; i++) {
		t[i] = (struct timed_call){ .fd = p[0], .rc = -2 };
		f[i] = gr_spawn(read_one, &t[i]);
		if (!f[i])
			return 3;
	}
	if (gr_sleep(0) != 0 || gr_hub_stats(&st) != 0 || st.inflight != GREEDY_READERS) {
		printf("the readers are not all waiting\n");
		return 4;
	}
	int64_t t0 = gr_now();
	int c = gr_close(p[0]);
	int64_t took = gr_now() - t0;
	if (c != 0 || took > 2 * GR_SEC) {
		printf("gr_close: %d (%s) after %lld ms\n", c, strerror(errno),
		       (long long)(took / GR_MSEC));
		return 5;
	}
	for (int i = 0; i < GREEDY_READERS; i++) {
		if (gr_join(f[i], NULL, gr_now() + 2 * GR_SEC) != 0)
			return 6;
		if (t[i].rc != -1 || t[i].err != EBADF) {
			printf("reader %d: %zd (%s)\n", i, t[i].rc, strerror(t[i].err));
			return 7;
		}
	}
	if (gr_hub_stats(&st) != 0 || st.inflight != 0 || st.fibers != 0) {
		printf("after the close: %zu in flight, %zu fibers\n", st.inflight, st.fibers);
		return 8;
	}
	close(p[1]);
	/* Give the thread its built-in hub back: the greedy one ends idle. */
	const char *hub = getenv("GREENRING_HUB");
	if (gr_hub_use(hub && *hub ? hub : NULL) != 0)
		return 9;
	return 0;
}

/* gr_close cancels every operation on the fd, and a backend may complete
 * other operations of that fd inside cancel() (it reaps while it cancels).
 * The cancel loop must not trust a link saved before a cancel: the old one
 * skipped the rest and waited for ever (gr_close cannot be interrupted). In
 * a child, killed if it hangs. A third-party hub: run once, with the poll
 * hub's run. */
Test(trust, gr_close_survives_a_cancel_that_completes_other_operations)
{
	struct child_run r;

	if (strcmp(grt_hub(), "poll") != 0)
		return;
	run_self("greedy_cancel", NULL, NULL, 5 * GR_SEC, &r);
	expect_child_ok(&r, "gr_close under the greedy hub");
}

/* A fiber waits for a pipe under "failing", whose every wait() fails. */
static int child_failing_wait(void)
{
	int p[2];
	struct timed_call t = { .rc = -2 };

	if (gr_hub_use_ops(&failing_ops) != 0 || pipe2(p, O_CLOEXEC) != 0)
		return 2;
	t.fd = p[0];
	gr_fiber *f = gr_spawn(wait_readable, &t);
	if (!f)
		return 3;
	/* Giving up on the backend fails every wait of the thread, main's
	 * join included (it has no operation of its own): join again then. */
	int j = gr_join(f, NULL, GR_FOREVER);
	if (j == -EIO)
		j = gr_join(f, NULL, GR_FOREVER);
	if (j != 0) {
		printf("gr_join of the waiting fiber: %s\n", strerror(-j));
		return 3;
	}
	if (t.rc != -1 || t.err != EIO) {
		printf("gr_wait_fd under a failing wait(): %zd (%s)\n", t.rc, strerror(t.err));
		return 4;
	}
	if (t.took > 3 * GR_SEC) {
		printf("gr_wait_fd took %lld ms to fail\n", (long long)(t.took / GR_MSEC));
		return 5;
	}
	gr_close(p[0]);
	gr_close(p[1]);
	return 0;
}

/* A backend whose wait() keeps failing: the fibers waiting on it must not
 * hang in silence (the old hub printed and retried for ever). The failure
 * is said on stderr ("wait failed") and, after a few, the operations in
 * flight fail with EIO: gr_wait_fd returns -1/EIO within 3 s. In a child,
 * killed if it hangs. */
Test(trust, a_backend_whose_wait_keeps_failing_fails_its_operations)
{
	expect_child_says("failing_wait", 6 * GR_SEC, "gr_wait_fd under a failing backend", "wait failed");
}

/* A fiber waits for a pipe under "interrupting", whose wait_until comes
 * back at once with -EINTR. The CPU time the process spent is measured
 * around it. */
static int child_interrupting_wait(void)
{
	int p[2];
	struct timed_call t = { .rc = -2 };
	struct timespec c0, c1;

	if (gr_hub_use_ops(&interrupting_ops) != 0 || pipe2(p, O_CLOEXEC) != 0)
		return 2;
	t.fd = p[0];
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	gr_fiber *f = gr_spawn(wait_readable, &t);
	if (!f)
		return 3;
	int j = gr_join(f, NULL, GR_FOREVER);
	if (j == -EIO)
		j = gr_join(f, NULL, GR_FOREVER);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	int64_t cpu = (c1.tv_sec - c0.tv_sec) * GR_SEC + (c1.tv_nsec - c0.tv_nsec);
	if (j != 0) {
		printf("gr_join of the waiting fiber: %s\n", strerror(-j));
		return 3;
	}
	if (t.rc != -1 || t.err != EIO || t.took > 3 * GR_SEC) {
		printf("gr_wait_fd under a wait_until that returns EINTR at once: %zd (%s) after "
		       "%lld ms\n", t.rc, strerror(t.err), (long long)(t.took / GR_MSEC));
		return 4;
	}
	if (cpu > 300 * GR_MSEC) {
		printf("%lld ms of CPU in %lld ms: the hub spun\n", (long long)(cpu / GR_MSEC),
		       (long long)(t.took / GR_MSEC));
		return 5;
	}
	gr_close(p[0]);
	gr_close(p[1]);
	return 0;
}

/* An early return is fine (hub_ops.h), and the transient errors (EINTR,
 * EAGAIN, ETIME, EBUSY) are asked again without a word; but a backend
 * that returns one at once, every time, without waiting or reaping, had
 * the loop spin at full speed, silent, for as long as anything was in
 * flight (25 million calls in 1.6 s, for ever without a deadline). Such a
 * run, faster than signals can come, is a failing wait: said on stderr,
 * paused, and after a few, the operations in flight fail with EIO. In a
 * child, killed if it hangs. */
Test(trust, a_backend_whose_wait_returns_eintr_at_once_does_not_spin)
{
	if (strcmp(grt_hub(), "poll") != 0)
		return;
	expect_child_says("interrupting_wait", 6 * GR_SEC,
			  "gr_wait_fd under a wait_until that returns EINTR at once", "wait failed");
}

/* The backend of the thread exit_with_a_reader starts. */
static const struct gr_hub_ops *exiting_hub_ops = &interrupting_late_ops;

/* A thread on exiting_hub_ops ("interrupting_late" unless a child mode
 * says otherwise) returns with a fiber parked on a pipe: its exit cancels
 * the read and waits for the cancel to complete. */
static void *exit_with_a_reader(void *arg)
{
	static struct timed_call t = { .rc = -2 };
	int *p = arg;

	if (gr_hub_use_ops(exiting_hub_ops) != 0)
		return "gr_hub_use_ops";
	t.fd = p[0];
	if (!gr_spawn(read_one, &t))
		return "gr_spawn";
	if (gr_sleep(0) != 0)
		return "gr_sleep";
	return NULL;
}

static int child_interrupting_exit(void)
{
	int p[2];
	pthread_t th;
	void *why = NULL;
	struct timespec c0, c1, until;

	if (pipe2(p, O_CLOEXEC) != 0)
		return 2;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	if (pthread_create(&th, NULL, exit_with_a_reader, p) != 0)
		return 3;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 3;
	int j = pthread_timedjoin_np(th, &why, &until);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	if (j != 0) {
		printf("the thread had not exited after 3 s: %s\n", strerror(j));
		return 4;
	}
	if (why) {
		printf("in the thread: %s\n", (const char *)why);
		return 5;
	}
	int64_t cpu = (c1.tv_sec - c0.tv_sec) * GR_SEC + (c1.tv_nsec - c0.tv_nsec);
	if (cpu > 300 * GR_MSEC) {
		printf("%lld ms of CPU: the exit spun\n", (long long)(cpu / GR_MSEC));
		return 6;
	}
	return 0;
}

/* The same at thread exit, which waits until every operation in flight is
 * reaped (the kernel must not write into a stack it unmaps): a backend
 * whose wait returns EINTR at once held the exit in a silent spin for
 * ever. Such a run now ends the exit as a failing wait does: said, and
 * the hub leaked rather than its stacks unmapped under the operations. In
 * a child, killed if it hangs. */
Test(trust, a_thread_exit_under_a_wait_that_returns_eintr_at_once_does_not_spin)
{
	if (strcmp(grt_hub(), "poll") != 0)
		return;
	expect_child_says("interrupting_exit", 6 * GR_SEC,
			  "thread exit under a wait that returns EINTR at once", "cannot reap at thread exit");
}

/* The same two with a wait that returns 0 at once: "nothing completed",
 * which is also what a wait woken by wake() returns, so the core asks
 * again; returned before its timeout with nothing posted, every time, it
 * is the same spin. */
static int child_zero_wait(void)
{
	early_return = 0;
	return child_interrupting_wait();
}

static int child_zero_exit(void)
{
	early_return = 0;
	return child_interrupting_exit();
}

/* The loop under a wait_until that returns 0 at once whenever a fiber
 * waits: the same spin as EINTR's, silent, for as long as the operation is
 * in flight (the wait was bounded only by the fd audit's deadline, and
 * each audit that found the pipe open started another). Now a failing
 * wait: said, paused, and the operation fails with EIO. In a child,
 * killed if it hangs. */
Test(trust, a_backend_whose_wait_returns_zero_at_once_does_not_spin)
{
	if (strcmp(grt_hub(), "poll") != 0)
		return;
	expect_child_says("zero_wait", 6 * GR_SEC, "gr_wait_fd under a wait_until that returns 0 at once",
			  "wait failed");
}

/* Thread exit under a wait() that returns 0 at once: the exit waited for a
 * cancel that only a real wait would complete, spinning for ever, silent.
 * Now it gives up as under EINTR: said, the hub leaked. */
Test(trust, a_thread_exit_under_a_wait_that_returns_zero_at_once_does_not_spin)
{
	if (strcmp(grt_hub(), "poll") != 0)
		return;
	expect_child_says("zero_exit", 6 * GR_SEC, "thread exit under a wait that returns 0 at once",
			  "cannot reap at thread exit");
}

/* A thread on "unending" returns with a fiber parked on a pipe that never
 * becomes readable: its exit waits for a cancel that never completes, and
 * must (the stack may still be written into), but not in silence. The
 * child reads its own stderr (a pipe put in its place) until the exit says
 * it waits, bounded by 20 s, then ends (the thread is left waiting). */
static int child_unending_exit(void)
{
	int p[2], err[2], saved = dup(2);
	pthread_t th;
	char said[1024];
	size_t n = 0;

	if (saved < 0 || pipe2(p, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || dup2(err[1], 2) < 0)
		return 2;
	exiting_hub_ops = &unending_ops;
	int64_t t0 = gr_now();
	if (pthread_create(&th, NULL, exit_with_a_reader, p) != 0)
		return 3;
	said[0] = '\0';
	while (!strstr(said, "thread exit has waited") && n + 1 < sizeof(said)) {
		struct pollfd pfd = { .fd = err[0], .events = POLLIN };
		int64_t left = t0 + 20 * GR_SEC - gr_now();

		if (left <= 0 || poll(&pfd, 1, (int)(left / GR_MSEC) + 1) <= 0)
			break;
		ssize_t got = read(err[0], said + n, sizeof(said) - 1 - n);
		if (got <= 0)
			break;
		n += (size_t)got;
		said[n] = '\0';
	}
	int64_t took = gr_now() - t0;
	dup2(saved, 2);
	fprintf(stderr, "%s", said); /* for the parent's check */
	if (!strstr(said, "thread exit has waited 1 s for 1 operation in flight")) {
		printf("after %lld ms, the exit had not said it waits\n", (long long)(took / GR_MSEC));
		return 4;
	}
	if (took < 900 * GR_MSEC) {
		printf("said after %lld ms, before a second of waiting\n", (long long)(took / GR_MSEC));
		return 5;
	}
	fflush(NULL);
	_exit(0); /* the thread stays in its exit */
}

/* A backend whose cancel never completes held a thread's exit for ever,
 * without a word. It still holds it (unmapping stacks the backend may
 * write into is not an option), but the exit says so after a second, and
 * again each time the wait doubles. */
Test(trust, a_thread_exit_held_by_a_cancel_that_never_completes_says_so)
{
	if (strcmp(grt_hub(), "poll") != 0)
		return;
	expect_child_says("unending_exit", 30 * GR_SEC, "thread exit under a cancel that never completes",
			  "thread exit has waited 1 s");
}

/* A storm of signals at the hub's thread: every wait it makes is ended
 * early, at once, with nothing completed, as a spinning backend's would
 * be. The storm's thread sends SIGUSR1 (a handler that counts, so waits
 * end with EINTR) STORM_SIGNALS times, then writes the byte a fiber of
 * the hub's thread is reading. */
#define STORM_SIGNALS 200000

static atomic_long storm_delivered;

static void count_storm(int sig)
{
	(void)sig;
	atomic_fetch_add_explicit(&storm_delivered, 1, memory_order_relaxed);
}

struct storm {
	pthread_t target;
	int fd;
};

static void *storm_then_write(void *arg)
{
	struct storm *st = arg;

	for (long i = 0; i < STORM_SIGNALS; i++)
		pthread_kill(st->target, SIGUSR1);
	return write(st->fd, "x", 1) == 1 ? NULL : "write";
}

static int child_signal_storm(void)
{
	struct sigaction sa = { .sa_handler = count_storm };
	int p[2];
	struct timed_call t = { .rc = -2 };
	struct storm st = { .target = pthread_self() };
	pthread_t th;
	void *why = "not joined";

	if (sigaction(SIGUSR1, &sa, NULL) != 0 || pipe2(p, O_CLOEXEC) != 0)
		return 2;
	t.fd = p[0];
	st.fd = p[1];
	gr_fiber *f = gr_spawn(read_one, &t);
	if (!f || gr_sleep(0) != 0) /* f waits in gr_read */
		return 3;
	if (pthread_create(&th, NULL, storm_then_write, &st) != 0)
		return 3;
	int j = gr_join(f, NULL, gr_now() + 20 * GR_SEC);
	pthread_join(th, &why);
	long got = atomic_load(&storm_delivered);
	if (j != 0 || t.rc != 1 || why) {
		printf("the read under a storm of %ld signals: join %s, read %zd (%s), storm %s\n", got,
		       strerror(-j), t.rc, strerror(t.err), why ? (const char *)why : "done");
		return 4;
	}
	if (got < 1000) {
		printf("only %ld signals reached the thread: no storm\n", got);
		return 5;
	}
	printf("%ld signals delivered\n", got);
	gr_close(p[0]);
	gr_close(p[1]);
	return 0;
}

/* A storm of signals ends the built-in backends' waits at once, with
 * nothing done, a thousand times and more in a row: the rule that takes a
 * run of such returns for a spinning backend (returned_early) must not
 * take it for one, or the reader would fail with EIO and a line say "wait
 * failed". With the built-in backends under the rule, this failed on epoll
 * and poll (io_uring's waits were not ended that fast). In a child
 * (signals, stderr). */
Test(trust, a_storm_of_signals_is_not_taken_for_a_spinning_backend)
{
	expect_child_never_says("signal_storm", 30 * GR_SEC, "a read under a storm of signals", "wait failed");
}

/* ------------------------------------------------------------ the kill model */

struct goodbye {
	int fd;
	ssize_t recv_rc, send_rc;
	int recv_errno, send_errno;
	int killed_before, ack, killed_after, ack_again;
};

static void *serve_until_killed(void *arg)
{
	struct goodbye *g = arg;
	char buf[16];

	g->recv_rc = gr_recv(g->fd, buf, sizeof(buf), 0);
	g->recv_errno = errno;
	g->killed_before = gr_killed();
	g->ack = gr_kill_ack(gr_now() + GR_SEC);
	g->killed_after = gr_killed();
	g->ack_again = gr_kill_ack(GR_FOREVER);
	g->send_rc = gr_send(g->fd, "bye", 3, 0);
	g->send_errno = errno;
	return NULL;
}

static void *ack_unkilled(void *arg)
{
	return (void *)(intptr_t)gr_kill_ack(GR_FOREVER);
}

/* A connection fiber blocked in gr_recv is killed: the recv fails with
 * ECANCELED and gr_killed() says so; it acknowledges with a cleanup
 * deadline, after which its blocking calls work again: its goodbye reaches
 * the peer. gr_kill_ack without a (pending) kill is -ESRCH: a second ack,
 * a fiber never killed, the main context. */
Test(trust, an_acknowledged_kill_lets_a_connection_say_goodbye)
{
	int fds[2];
	struct goodbye g = { .recv_rc = -2, .send_rc = -2, .ack = 1, .ack_again = 1 };
	char buf[8] = "";
	void *res = NULL;

	grt_tcp_pair(fds);
	g.fd = fds[1];
	gr_fiber *f = gr_spawn(serve_until_killed, &g);
	cr_assert_not_null(f);
	assert_ok(gr_sleep(0)); /* f waits in gr_recv */
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(g.recv_rc, -1);
	cr_assert_eq(g.recv_errno, ECANCELED, "the killed recv: %s", strerror(g.recv_errno));
	cr_assert_eq(g.killed_before, 1);
	assert_ok(g.ack);
	cr_assert_eq(g.killed_after, 0);
	assert_err(g.ack_again, ESRCH);
	cr_assert_eq(g.send_rc, 3, "the goodbye after the ack: %s", strerror(g.send_errno));
	cr_assert_eq(recv(fds[0], buf, sizeof(buf), MSG_DONTWAIT), 3);
	cr_assert_str_eq(buf, "bye");

	gr_fiber *u = gr_spawn(ack_unkilled, NULL);
	cr_assert_not_null(u);
	assert_ok(gr_join(u, &res, gr_now() + 5 * GR_SEC));
	assert_err((int)(intptr_t)res, ESRCH);
	assert_err(gr_kill_ack(GR_FOREVER), ESRCH);
	cr_assert_eq(gr_killed(), 0);
	cr_assert_eq(gr_close(fds[0]), 0);
	cr_assert_eq(gr_close(fds[1]), 0);
}

struct family {
	gr_event never, go;
	gr_fiber *ended, *live;
	int wait_rc, reap_rc, early_join_rc, ack, join_rc;
	void *reaped, *joined;
};

static void *wait_for_go(void *arg)
{
	struct family *fam = arg;

	gr_event_wait(&fam->go, gr_now() + 5 * GR_SEC);
	return (void *)0x1e;
}

static void *parent_of_two(void *arg)
{
	struct family *fam = arg;

	fam->ended = gr_spawn(return_arg, (void *)0xe);
	fam->live = gr_spawn(wait_for_go, fam);
	if (!fam->ended || !fam->live)
		return (void *)"spawn";
	/* The children run in the next turn: one ends, one waits for go. */
	fam->wait_rc = gr_event_wait(&fam->never, GR_FOREVER);
	/* Killed. An ended child is reaped with a pure try, ack or not. */
	fam->reap_rc = gr_join(fam->ended, &fam->reaped, 0);
	/* Waiting for a live one is blocking: refused until the ack. */
	fam->early_join_rc = gr_join(fam->live, NULL, gr_now() + GR_SEC);
	fam->ack = gr_kill_ack(gr_now() + 2 * GR_SEC);
	gr_event_set(&fam->go);
	fam->join_rc = gr_join(fam->live, &fam->joined, gr_now() + GR_SEC);
	return NULL;
}

/* A parent fiber is killed while it has an ended child and a live one. It
 * reaps the ended child with gr_join(child, &r, 0) without acknowledging
 * the kill; a join that would wait fails with ECANCELED until it
 * acknowledges; after gr_kill_ack it waits for the live child (with a
 * deadline) and gets its result. */
Test(trust, a_killed_parent_reaps_its_children)
{
	struct family fam = { .wait_rc = 1, .reap_rc = 1, .early_join_rc = 1, .ack = 1,
			      .join_rc = 1 };
	void *why = NULL;

	assert_ok(gr_event_init(&fam.never));
	assert_ok(gr_event_init(&fam.go));
	gr_fiber *p = gr_spawn(parent_of_two, &fam);
	cr_assert_not_null(p);
	assert_ok(gr_sleep(0)); /* p spawns and parks */
	assert_ok(gr_sleep(0)); /* its children run: one ends, one waits */
	assert_ok(gr_kill(p));
	assert_ok(gr_join(p, &why, gr_now() + 5 * GR_SEC));
	cr_assert_null(why, "%s", (const char *)why);
	assert_err(fam.wait_rc, ECANCELED);
	assert_ok(fam.reap_rc);
	cr_assert_eq(fam.reaped, (void *)0xe);
	assert_err(fam.early_join_rc, ECANCELED);
	assert_ok(fam.ack);
	assert_ok(fam.join_rc);
	cr_assert_eq(fam.joined, (void *)0x1e);
	assert_ok(gr_event_destroy(&fam.never));
	assert_ok(gr_event_destroy(&fam.go));
}

struct cleanup {
	gr_event started, never;
	int first, ack, during, second, killed_again, after, ack2, last;
};

static void *clean_up_twice(void *arg)
{
	struct cleanup *c = arg;

	c->first = gr_sleep(10 * GR_SEC);
	c->ack = gr_kill_ack(gr_now() + 2 * GR_SEC);
	c->during = gr_sleep(GR_MSEC);
	gr_event_set(&c->started);
	c->second = gr_event_wait(&c->never, GR_FOREVER);
	c->killed_again = gr_killed();
	c->after = gr_sleep(0);
	c->ack2 = gr_kill_ack(GR_FOREVER);
	c->last = gr_sleep(0);
	return NULL;
}

struct bounded {
	int ack, rc;
	int64_t took;
};

static void *clean_up_slowly(void *arg)
{
	struct bounded *b = arg;

	gr_sleep(10 * GR_SEC);
	b->ack = gr_kill_ack(gr_now() + 50 * GR_MSEC);
	int64_t t0 = gr_now();
	b->rc = gr_sleep(10 * GR_SEC);
	b->took = gr_now() - t0;
	return NULL;
}

/* A kill that arrives during the cleanup cancels the cleanup in turn: the
 * blocking call it is in fails with ECANCELED, and so does the next, until
 * it is acknowledged again. And the cleanup deadline bounds the cleanup: a
 * 10 s sleep after gr_kill_ack(now + 50 ms) fails with ETIMEDOUT at once. */
Test(trust, a_cleanup_is_bounded_by_its_deadline_and_cancelled_by_a_new_kill)
{
	struct cleanup c = { .first = 1, .ack = 1, .during = 1, .second = 1, .after = 1, .ack2 = 1,
			     .last = 1 };
	struct bounded b = { .ack = 1, .rc = 1 };

	assert_ok(gr_event_init(&c.started));
	assert_ok(gr_event_init(&c.never));
	gr_fiber *f = gr_spawn(clean_up_twice, &c);
	cr_assert_not_null(f);
	assert_ok(gr_sleep(0)); /* f sleeps */
	assert_ok(gr_kill(f));
	assert_ok(gr_event_wait(&c.started, gr_now() + 5 * GR_SEC)); /* f waits on never */
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_err(c.first, ECANCELED);
	assert_ok(c.ack);
	assert_ok(c.during);
	assert_err(c.second, ECANCELED);
	cr_assert_eq(c.killed_again, 1);
	assert_err(c.after, ECANCELED);
	assert_ok(c.ack2);
	assert_ok(c.last);
	assert_ok(gr_event_destroy(&c.started));
	assert_ok(gr_event_destroy(&c.never));

	gr_fiber *g = gr_spawn(clean_up_slowly, &b);
	cr_assert_not_null(g);
	assert_ok(gr_sleep(0));
	assert_ok(gr_kill(g));
	assert_ok(gr_join(g, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(b.ack);
	assert_err(b.rc, ETIMEDOUT);
	cr_assert_lt(b.took, GR_SEC, "the bounded cleanup slept %lld ms",
		     (long long)(b.took / GR_MSEC));
}

/* ------------------------------------------------------------ child modes */

static const struct child_mode child_modes[] = {
	{ "discard_poison", child_discard_poison },
	{ "timed_read", child_timed_read },
	{ "fork_in_fiber", child_fork_in_fiber },
	{ "closed_under_reader", child_closed_under_reader },
	{ "greedy_cancel", child_greedy_cancel },
	{ "failing_wait", child_failing_wait },
	{ "interrupting_wait", child_interrupting_wait },
	{ "interrupting_exit", child_interrupting_exit },
	{ "zero_wait", child_zero_wait },
	{ "zero_exit", child_zero_exit },
	{ "unending_exit", child_unending_exit },
	{ "signal_storm", child_signal_storm },
	{ NULL, NULL },
};

__attribute__((constructor)) static void child_entry(void)
{
	const char *mode = getenv("GRT_TRUST_CHILD");

	if (!mode)
		return;
	for (const struct child_mode *m = child_modes; m->name; m++) {
		if (strcmp(m->name, mode) == 0) {
			int status = m->run();

			fflush(NULL);
			_exit(status);
		}
	}
	printf("unknown child mode %s\n", mode);
	fflush(NULL);
	_exit(126);
}
