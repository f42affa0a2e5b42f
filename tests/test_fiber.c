/* test_fiber.c — spawning, scheduling order, join, detach, kill-free
 * lifecycle, names and ids, spawn options, misuse, hub join and deadlock
 * detection. Runs once per hub. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(fiber);

/* ------------------------------------------------------------ helpers */

/* Capture what the runtime writes to stderr between begin and end. */
struct capture {
	int saved;
	int rd;
};

static void capture_begin(struct capture *c)
{
	int p[2];

	fflush(stderr);
	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	c->saved = dup(STDERR_FILENO);
	cr_assert_geq(c->saved, 0);
	cr_assert_geq(dup2(p[1], STDERR_FILENO), 0);
	close(p[1]);
	c->rd = p[0];
}

/* Restore stderr and return what was captured (static buffer). */
static const char *capture_end(struct capture *c)
{
	static char buf[4096];
	ssize_t n;

	fflush(stderr);
	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	n = read(c->rd, buf, sizeof(buf) - 1);
	close(c->rd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* ------------------------------------------------------------ laziness, order */

static void *set_flag(void *arg)
{
	*(int *)arg = 1;
	return NULL;
}

Test(fiber, spawn_does_not_run_until_the_spawner_yields)
{
	int ran = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);

	cr_assert_not_null(f, "gr_spawn: %s", strerror(errno));
	cr_assert_eq(ran, 0, "gr_spawn ran the fiber before the spawner yielded");
	/* Non-switching calls do not run it either. */
	gr_now();
	gr_self();
	gr_fiber_id(f);
	cr_assert_eq(ran, 0);
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(ran, 1, "gr_sleep(0) did not run a runnable fiber");
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

struct order_log {
	int log[64];
	int n;
};

struct order_arg {
	struct order_log *log;
	int id;
	int rounds;
};

static void *log_rounds(void *arg)
{
	struct order_arg *a = arg;

	for (int i = 0; i < a->rounds; i++) {
		a->log->log[a->log->n++] = a->id;
		if (i + 1 < a->rounds)
			cr_assert_eq(gr_sleep(0), 0);
	}
	return NULL;
}

Test(fiber, sleep0_runs_every_runnable_fiber_exactly_once_in_fifo_order)
{
	struct order_log log = { .n = 0 };
	struct order_arg args[5];
	gr_fiber *f[5];

	for (int i = 0; i < 5; i++) {
		args[i] = (struct order_arg){ .log = &log, .id = i, .rounds = 3 };
		f[i] = gr_spawn(log_rounds, &args[i]);
		cr_assert_not_null(f[i]);
	}
	/* Each yield of main is one turn: every fiber runs once, in spawn order. */
	for (int round = 1; round <= 3; round++) {
		cr_assert_eq(gr_sleep(0), 0);
		cr_assert_eq(log.n, 5 * round, "after %d yields of main, %d fiber runs (want %d)",
			     round, log.n, 5 * round);
		for (int i = 0; i < 5; i++)
			cr_assert_eq(log.log[5 * (round - 1) + i], i,
				     "round %d: position %d ran fiber %d, not FIFO", round, i,
				     log.log[5 * (round - 1) + i]);
	}
	for (int i = 0; i < 5; i++)
		cr_assert_eq(gr_join(f[i], NULL, GR_FOREVER), 0);
	cr_assert_eq(log.n, 15);
}

/* A yield and a wake-up both put a fiber at the back of the next turn: a
 * fiber woken during a turn runs in the next one, between the yielders
 * that queued before and after its wake-up, whether a yielder took the
 * gate's fast path (nothing to check) or its slow one (a deadline of its
 * own). Each turn here starts inside a fiber (nothing is in flight), and
 * the last starts in the hub loop (the sleeper's timer). */
struct turn_log {
	char log[32];
	int n;
	gr_event ev;
};

struct turn_arg {
	struct turn_log *t;
	char name;
	bool wakes;
};

static void *turn_yielder(void *arg)
{
	struct turn_arg *a = arg;

	a->t->log[a->t->n++] = a->name;
	if (a->wakes)
		cr_assert_eq(gr_event_set(&a->t->ev), 1); /* the waiter */
	assert_ok(gr_sleep(0));
	a->t->log[a->t->n++] = (char)(a->name - 'A' + 'a');
	return NULL;
}

static void *turn_waiter(void *arg)
{
	struct turn_log *t = arg;

	assert_ok(gr_event_wait(&t->ev, GR_FOREVER));
	t->log[t->n++] = 'w';
	/* A timer in flight: the yield behind it goes through the hub loop,
	 * which reaps before the next turn. */
	assert_ok(gr_sleep(GR_MSEC));
	t->log[t->n++] = 's';
	return NULL;
}

Test(fiber, yields_and_wake_ups_queue_for_the_next_turn_in_the_order_they_came)
{
	struct turn_log t = { .n = 0 };
	struct turn_arg a = { &t, 'A', false }, b = { &t, 'B', true }, c = { &t, 'C', false };
	struct gr_spawn_opts with_deadline = { .deadline = gr_now() + 60 * GR_SEC };

	assert_ok(gr_event_init(&t.ev));
	gr_fiber *f[4] = {
		gr_spawn(turn_waiter, &t),
		gr_spawn(turn_yielder, &a),
		gr_spawn_with(&with_deadline, turn_yielder, &b), /* the gate's slow path */
		gr_spawn(turn_yielder, &c),
	};
	for (int i = 0; i < 4; i++)
		cr_assert_not_null(f[i]);
	for (int i = 0; i < 4; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	t.log[t.n] = '\0';
	/* Turn 1: the waiter parks, A, B (waking it), C yield. Turn 2: A, then
	 * the waiter (woken after A's yield, before B's), B, C. */
	cr_assert_str_eq(t.log, "ABCawbcs");
	assert_ok(gr_event_destroy(&t.ev));
}

/* A fiber alone yields without a switch, and each such yield is a turn of
 * its own (gr_hub_counters' count moves, and the monitor's with it). */
Test(fiber, a_lone_yield_is_a_turn_without_a_switch)
{
	struct gr_hub_counters c0, c1;

	assert_ok(gr_sleep(0)); /* the hub and its loop exist */
	assert_ok(gr_hub_counters(&c0, sizeof(c0)));
	gr_fiber *self = gr_self();
	for (int i = 0; i < 100; i++)
		assert_ok(gr_sleep(0));
	assert_ok(gr_hub_counters(&c1, sizeof(c1)));
	cr_assert_eq(gr_self(), self);
	cr_assert_eq(c1.turns - c0.turns, 100, "%llu turns for 100 lone yields",
		     (unsigned long long)(c1.turns - c0.turns));
}

struct nested {
	int order[8];
	int n;
};

static void *nested_child(void *arg)
{
	struct nested *s = arg;

	s->order[s->n++] = 2;
	return NULL;
}

static void *nested_parent(void *arg)
{
	struct nested *s = arg;
	gr_fiber *c = gr_spawn(nested_child, s);

	cr_assert_not_null(c);
	s->order[s->n++] = 1; /* the child has not run yet */
	cr_assert_eq(gr_join(c, NULL, GR_FOREVER), 0);
	s->order[s->n++] = 3;
	return NULL;
}

/* errno is each fiber's own, as each thread's is. Two fibers set their own
 * values and switch in every way a call can (a yield, a park on a pipe, a
 * mutex hand-off, a sleep); each finds its own value after each, whatever
 * the other left. */
struct errno_pair {
	int value;
	int fds[2];
	gr_mutex *m;
	int bad;
};

static void *keep_errno(void *arg)
{
	struct errno_pair *e = arg;
	char c;

	for (int round = 0; round < 20; round++) {
		errno = e->value;
		gr_sleep(0);
		e->bad += errno != e->value;
		errno = e->value;
		if (e->fds[0] >= 0) {
			if (gr_read(e->fds[0], &c, 1) != 1)
				e->bad++; /* parks until the other writes */
		} else {
			if (gr_write(e->fds[1], "x", 1) != 1)
				e->bad++;
		}
		e->bad += errno != e->value;
		errno = e->value;
		if (gr_mutex_lock(e->m, GR_FOREVER) != 0)
			e->bad++;
		gr_sleep(GR_MSEC / 10);
		gr_mutex_unlock(e->m);
		e->bad += errno != e->value;
	}
	return NULL;
}

Test(fiber, errno_is_each_fibers_own_across_every_kind_of_switch)
{
	int p[2];
	gr_mutex m;

	cr_assert_eq(gr_mutex_init(&m), 0);
	cr_assert_eq(pipe(p), 0);
	struct errno_pair a = { .value = EILSEQ, .fds = { p[0], -1 }, .m = &m };
	struct errno_pair b = { .value = ENOTSUP, .fds = { -1, p[1] }, .m = &m };
	gr_fiber *fa = gr_spawn(keep_errno, &a), *fb = gr_spawn(keep_errno, &b);

	errno = EDOM;
	cr_assert_eq(gr_join(fa, NULL, gr_now() + 10 * GR_SEC), 0);
	cr_assert_eq(gr_join(fb, NULL, gr_now() + 10 * GR_SEC), 0);
	cr_assert_eq(errno, EDOM, "the main context's errno: %d", errno);
	cr_assert_eq(a.bad, 0, "fiber a found another's errno %d times", a.bad);
	cr_assert_eq(b.bad, 0, "fiber b found another's errno %d times", b.bad);
	cr_assert_eq(gr_mutex_destroy(&m), 0);
	gr_close(p[0]);
	gr_close(p[1]);
}

Test(fiber, a_fiber_spawned_by_a_fiber_is_lazy_too)
{
	struct nested s = { .n = 0 };
	gr_fiber *p = gr_spawn(nested_parent, &s);

	cr_assert_eq(gr_join(p, NULL, GR_FOREVER), 0);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.order[0], 1);
	cr_assert_eq(s.order[1], 2);
	cr_assert_eq(s.order[2], 3);
}

/* ------------------------------------------------------------ join */

static void *return_arg_plus_one(void *arg)
{
	return (char *)arg + 1;
}

static void *sleep_then_return(void *arg)
{
	cr_assert_eq(gr_sleep(5 * GR_MSEC), 0);
	return arg;
}

Test(fiber, join_returns_the_result_of_fn)
{
	static char base[16];
	gr_fiber *f[10];

	for (int i = 0; i < 10; i++)
		f[i] = gr_spawn(i % 2 ? return_arg_plus_one : sleep_then_return, base + i);
	/* Join in reverse: some have ended (and wait for us), some still sleep. */
	for (int i = 9; i >= 0; i--) {
		void *res = NULL;

		cr_assert_eq(gr_join(f[i], &res, GR_FOREVER), 0);
		cr_assert_eq(res, base + i + (i % 2), "fiber %d returned %p, want %p", i, res,
			     (void *)(base + i + (i % 2)));
	}
}

Test(fiber, join_of_an_ended_fiber_does_not_switch_and_null_result_is_allowed)
{
	int ran = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);

	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(ran, 1);
	cr_assert_eq(gr_join(f, NULL, 0), 0, "join with deadline 0 of an ended fiber");
}

static void *sleep_arg_ms(void *arg)
{
	gr_sleep((int64_t)(intptr_t)arg * GR_MSEC);
	return arg;
}

Test(fiber, join_timeout_leaves_the_fiber_joinable)
{
	gr_fiber *f = gr_spawn(sleep_arg_ms, (void *)(intptr_t)30);
	void *res = NULL;
	int64_t t0 = gr_now();

	cr_assert_eq(gr_join(f, &res, 0), -ETIMEDOUT, "deadline 0 must try once");
	cr_assert_eq(gr_join(f, &res, gr_now() + 5 * GR_MSEC), -ETIMEDOUT);
	int64_t waited = gr_now() - t0;
	cr_assert_geq(waited, 5 * GR_MSEC, "join timed out early: %lld ns", (long long)waited);
	cr_assert_eq(gr_join(f, &res, GR_FOREVER), 0, "fiber not joinable after a timed-out join");
	cr_assert_eq(res, (void *)(intptr_t)30);
}

static void *join_other(void *arg)
{
	void *res = NULL;
	int r = gr_join(arg, &res, GR_FOREVER);

	return r == 0 ? res : (void *)(intptr_t)r;
}

Test(fiber, a_fiber_can_join_another_fiber)
{
	gr_fiber *sleeper = gr_spawn(sleep_arg_ms, (void *)(intptr_t)2);
	gr_fiber *joiner = gr_spawn(join_other, sleeper);
	void *res = NULL;

	cr_assert_eq(gr_join(joiner, &res, GR_FOREVER), 0);
	cr_assert_eq(res, (void *)(intptr_t)2);
}

static void *try_join_twice(void *arg)
{
	return (void *)(intptr_t)gr_join(arg, NULL, GR_FOREVER);
}

Test(fiber, a_second_joiner_gets_einval)
{
	gr_fiber *sleeper = gr_spawn(sleep_arg_ms, (void *)(intptr_t)5);
	gr_fiber *j1 = gr_spawn(try_join_twice, sleeper);
	gr_fiber *j2 = gr_spawn(try_join_twice, sleeper);
	void *r1, *r2;

	cr_assert_eq(gr_join(j1, &r1, GR_FOREVER), 0);
	cr_assert_eq(gr_join(j2, &r2, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)r1, 0);
	cr_assert_eq((intptr_t)r2, -EINVAL, "second joiner: %s", strerror((int)-(intptr_t)r2));
}

/* ------------------------------------------------------------ detach, spawn_n */

static void count_up(void *arg)
{
	(*(int *)arg)++;
}

static void *count_up_ret(void *arg)
{
	gr_sleep(GR_MSEC);
	(*(int *)arg)++;
	return NULL;
}

Test(fiber, detached_fibers_run_and_are_released_when_they_end)
{
	int n = 0;
	gr_fiber *running = gr_spawn(count_up_ret, &n);
	gr_fiber *ended = gr_spawn(set_flag, &(int){ 0 });

	cr_assert_eq(gr_detach(running), 0);
	cr_assert_eq(gr_sleep(0), 0); /* `ended` ends, unjoined */
	cr_assert_eq(gr_detach(ended), 0, "detaching an ended fiber releases it");
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(n, 1);
	struct gr_hub_stats st;
	cr_assert_eq(gr_hub_stats(&st), 0);
	cr_assert_eq(st.fibers, 0);
	cr_assert_eq(st.unreleased, 0);
}

Test(fiber, detach_misuse)
{
	int n = 0;
	gr_fiber *f = gr_spawn(count_up_ret, &n);

	cr_assert_eq(gr_detach(NULL), -EINVAL);
	cr_assert_eq(gr_detach(f), 0);
	cr_assert_eq(gr_detach(f), -EINVAL, "detaching twice");
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), -EINVAL, "joining a detached fiber");
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(n, 1);
}

Test(fiber, spawn_n_runs_detached_fibers)
{
	int n = 0;

	for (int i = 0; i < 1000; i++)
		cr_assert_eq(gr_spawn_n(count_up, &n), 0);
	cr_assert_eq(n, 0, "gr_spawn_n ran before the spawner yielded");
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(n, 1000, "one yield must run every runnable fiber: %d ran", n);
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(gr_spawn_n(NULL, &n), -EINVAL);
}

Test(fiber, spawn_with_detached_option)
{
	int n = 0;
	struct gr_spawn_opts o = { .detached = 1, .name = "det" };
	gr_fiber *f = gr_spawn_with(&o, count_up_ret, &n);

	cr_assert_not_null(f);
	cr_assert_str_eq(gr_fiber_name(f), "det");
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), -EINVAL);
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(n, 1);
}

Test(fiber, many_fibers)
{
	enum { N = 5000 };
	int n = 0;

	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_spawn_n(count_up, &n), 0, "spawn %d: %s", i, strerror(errno));
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(n, N);
}

/* ------------------------------------------------------------ names and ids */

struct ident {
	gr_fiber *self;
	uint64_t id;
	char name[64];
};

static void *record_ident(void *arg)
{
	struct ident *i = arg;

	i->self = gr_self();
	i->id = gr_fiber_id(i->self);
	snprintf(i->name, sizeof(i->name), "%s", gr_fiber_name(i->self));
	return NULL;
}

Test(fiber, self_ids_and_names)
{
	gr_fiber *main_f = gr_self();
	char name[] = "worker-7";
	struct gr_spawn_opts o = { .name = name };
	struct ident a = { 0 }, b = { 0 };
	gr_fiber *fa = gr_spawn_with(&o, record_ident, &a);
	gr_fiber *fb = gr_spawn(record_ident, &b);

	cr_assert_not_null(main_f);
	cr_assert_neq(gr_fiber_id(main_f), 0);
	cr_assert_str_eq(gr_fiber_name(main_f), "main");
	name[0] = 'X'; /* the name was copied */
	cr_assert_str_eq(gr_fiber_name(fa), "worker-7");
	cr_assert_eq(gr_fiber_set_name(fb, "renamed"), 0);
	uint64_t ida = gr_fiber_id(fa), idb = gr_fiber_id(fb);
	cr_assert(ida != idb && ida != gr_fiber_id(main_f) && idb != gr_fiber_id(main_f),
		  "ids not unique: main %llu, a %llu, b %llu",
		  (unsigned long long)gr_fiber_id(main_f), (unsigned long long)ida,
		  (unsigned long long)idb);
	cr_assert_eq(gr_join(fa, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(fb, NULL, GR_FOREVER), 0);
	cr_assert_eq(a.self, fa, "gr_self() in a fiber is not its handle");
	cr_assert_eq(b.self, fb);
	cr_assert_eq(a.id, ida);
	cr_assert_eq(b.id, idb);
	cr_assert_str_eq(a.name, "worker-7");
	cr_assert_str_eq(b.name, "renamed");
	cr_assert_eq(gr_self(), main_f, "main's handle changed");
	cr_assert_eq(gr_fiber_set_name(NULL, "x"), -EINVAL);
	cr_assert_eq(gr_fiber_set_name(main_f, NULL), -EINVAL);
	cr_assert_eq(gr_fiber_id(NULL), 0);
	cr_assert_null(gr_fiber_name(NULL));
}

Test(fiber, long_names_are_truncated_not_overflowed)
{
	char longname[300];
	struct ident a = { 0 };

	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	struct gr_spawn_opts o = { .name = longname };
	gr_fiber *f = gr_spawn_with(&o, record_ident, &a);
	cr_assert_not_null(f);
	size_t len = strlen(gr_fiber_name(f));
	cr_assert(len > 0 && len < sizeof(longname) - 1);
	cr_assert_eq(strncmp(gr_fiber_name(f), longname, len), 0);
	cr_assert_eq(gr_fiber_set_name(f, longname), 0);
	cr_assert_eq(strlen(gr_fiber_name(f)), len);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

/* ------------------------------------------------------------ stack size option */

/* Touch `bytes` of stack in one frame; the compiler cannot drop it. */
static __attribute__((noinline)) int use_stack(size_t bytes)
{
	volatile char *p = __builtin_alloca(bytes);
	int sum = 0;

	for (size_t i = 0; i < bytes; i += 512)
		p[i] = (char)i;
	for (size_t i = 0; i < bytes; i += 512)
		sum += p[i];
	return sum;
}

static void *use_stack_fiber(void *arg)
{
	use_stack((size_t)(uintptr_t)arg);
	return arg;
}

Test(fiber, spawn_with_a_large_stack_can_use_it)
{
	/* 768 KiB of locals: far beyond the 64 KiB default, inside 1 MiB. */
	struct gr_spawn_opts o = { .stack_size = 1024 * 1024, .name = "big" };
	void *res = NULL;
	gr_fiber *f = gr_spawn_with(&o, use_stack_fiber, (void *)(uintptr_t)(768 * 1024));

	cr_assert_not_null(f, "spawn with a 1 MiB stack: %s", strerror(errno));
	cr_assert_eq(gr_join(f, &res, GR_FOREVER), 0);
	cr_assert_eq(res, (void *)(uintptr_t)(768 * 1024));
	/* A tiny request is raised to a usable minimum, not refused. */
	struct gr_spawn_opts tiny = { .stack_size = 1 };
	f = gr_spawn_with(&tiny, use_stack_fiber, (void *)(uintptr_t)2048);
	cr_assert_not_null(f, "spawn with stack_size 1: %s", strerror(errno));
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

Test(fiber, absurd_stack_sizes_fail_cleanly)
{
	/* A "negative" size (a -1 passed as size_t) is misuse: an error, never
	 * a crash; a size no mapping can hold is ENOMEM. */
	static const size_t sizes[] = { (size_t)-1, (size_t)-4096, SIZE_MAX / 2 + 1 };
	int ran = 0;

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct gr_spawn_opts o = { .stack_size = sizes[i] };

		errno = 0;
		cr_assert_null(gr_spawn_with(&o, set_flag, &ran), "stack_size %zu accepted", sizes[i]);
		cr_assert_eq(errno, EINVAL, "stack_size %zu: %s", sizes[i], strerror(errno));
	}
	struct gr_spawn_opts huge = { .stack_size = (size_t)1 << 50 };
	errno = 0;
	cr_assert_null(gr_spawn_with(&huge, set_flag, &ran), "a 1 PiB stack was accepted");
	cr_assert_eq(errno, ENOMEM, "1 PiB stack: %s", strerror(errno));
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(ran, 0);
}

Test(fiber, default_stack_holds_a_few_kib_of_locals)
{
	gr_fiber *f = gr_spawn(use_stack_fiber, (void *)(uintptr_t)(32 * 1024));

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

/* ------------------------------------------------------------ misuse */

Test(fiber, misuse_returns_errors)
{
	errno = 0;
	cr_assert_null(gr_spawn(NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	errno = 0;
	cr_assert_null(gr_spawn_with(&(struct gr_spawn_opts){ 0 }, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_join(NULL, NULL, GR_FOREVER), -EINVAL);
	cr_assert_eq(gr_kill(NULL), -EINVAL);
	cr_assert_eq(gr_sleep(-1), -EINVAL);
	cr_assert_eq(gr_sleep_until(-5), -EINVAL);
	cr_assert_eq(gr_hub_stats(NULL), -EINVAL);
	/* main is not a joinable fiber. */
	cr_assert_eq(gr_join(gr_self(), NULL, 0), -EINVAL);
	cr_assert_eq(gr_detach(gr_self()), -EINVAL);
	/* A released handle is refused, not followed. */
	gr_fiber *f = gr_spawn(return_arg_plus_one, NULL);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), -EINVAL, "joining a released fiber");
	cr_assert_eq(gr_kill(f), -EINVAL, "killing a released fiber");
	cr_assert_eq(gr_detach(f), -EINVAL, "detaching a released fiber");
}

static void *join_self(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)gr_join(gr_self(), NULL, GR_FOREVER);
}

Test(fiber, joining_oneself_fails_at_once)
{
	void *res;
	gr_fiber *f = gr_spawn(join_self, NULL);

	cr_assert_eq(gr_join(f, &res, gr_now() + 5 * GR_SEC), 0);
	/* As pthread_join: joining oneself would wait for ever. */
	cr_assert_eq((intptr_t)res, -EDEADLK, "gr_join(self): %s", strerror((int)-(intptr_t)res));
}

/* ------------------------------------------------------------ hub join */

Test(fiber, hub_join_runs_until_no_fiber_is_left)
{
	int n = 0;

	for (int i = 0; i < 10; i++) {
		gr_fiber *f = gr_spawn(count_up_ret, &n);
		cr_assert_eq(gr_detach(f), 0);
	}
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(n, 10);
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0, "nothing left: returns at once");
}

Test(fiber, hub_join_deadline)
{
	gr_fiber *f = gr_spawn(sleep_arg_ms, (void *)(intptr_t)60);
	int64_t t0 = gr_now();

	cr_assert_eq(gr_hub_join(t0 + 10 * GR_MSEC), -ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 10 * GR_MSEC);
	cr_assert_eq(gr_hub_join(0), -ETIMEDOUT);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

static void *hub_join_in_fiber(void *arg)
{
	int r = gr_hub_join(GR_FOREVER);

	*(int *)arg = 1;
	return (void *)(intptr_t)r;
}

Test(fiber, hub_join_from_a_fiber_waits_for_the_others)
{
	int n = 0, done = 0;
	void *res;

	for (int i = 0; i < 3; i++)
		cr_assert_eq(gr_detach(gr_spawn(count_up_ret, &n)), 0);
	gr_fiber *j = gr_spawn(hub_join_in_fiber, &done);
	cr_assert_eq(gr_join(j, &res, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)res, 0);
	cr_assert_eq(n, 3, "gr_hub_join in a fiber returned before the others ended");
}

/* ------------------------------------------------------------ deadlock */

struct cycle {
	gr_fiber *a, *b;
	int rb;
};

static void *cycle_a(void *arg)
{
	struct cycle *c = arg;

	return (void *)(intptr_t)gr_join(c->b, NULL, GR_FOREVER);
}

static void *cycle_b(void *arg)
{
	struct cycle *c = arg;

	c->rb = gr_join(c->a, NULL, GR_FOREVER);
	return NULL;
}

Test(fiber, join_cycle_is_edeadlk)
{
	struct cycle c = { 0 };
	void *ra;

	c.a = gr_spawn(cycle_a, &c);
	c.b = gr_spawn(cycle_b, &c);
	/* a parks joining b; b's join of a would close the cycle. main joins
	 * only after both ran (a fiber has at most one joiner). */
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(gr_join(c.a, &ra, gr_now() + 5 * GR_SEC), 0); /* a released b */
	cr_assert_eq(c.rb, -EDEADLK, "closing a join cycle: %s", strerror(-c.rb));
	cr_assert_eq((intptr_t)ra, 0, "a's join of b should succeed once b gives up");
}

struct cycle3 {
	gr_fiber *f[3];
	int r[3];
	int idx[3];
};

static struct cycle3 *cyc3;

static void *cycle3_fn(void *arg)
{
	int i = *(int *)arg;

	cyc3->r[i] = gr_join(cyc3->f[(i + 1) % 3], NULL, GR_FOREVER);
	return NULL;
}

Test(fiber, three_fiber_join_cycle_is_edeadlk)
{
	struct cycle3 c = { .idx = { 0, 1, 2 } };

	cyc3 = &c;
	for (int i = 0; i < 3; i++)
		c.f[i] = gr_spawn(cycle3_fn, &c.idx[i]);
	cr_assert_eq(gr_sleep(0), 0);
	/* 0 released 1, and 1 released 2. */
	cr_assert_eq(gr_join(c.f[0], NULL, gr_now() + 5 * GR_SEC), 0);
	/* 0 joins 1, 1 joins 2, 2 would join 0: refused; then 1 and 0 finish. */
	cr_assert_eq(c.r[2], -EDEADLK);
	cr_assert_eq(c.r[1], 0);
	cr_assert_eq(c.r[0], 0);
}

static void *hub_join_forever(void *arg)
{
	return (void *)(intptr_t)gr_hub_join(GR_FOREVER);
}

Test(fiber, main_waiting_on_what_no_fiber_can_provide_is_edeadlk)
{
	/* Two fibers each wait for the other to end (gr_hub_join from a fiber
	 * waits for every fiber but itself): nothing runnable, nothing in
	 * flight, no timer. main's join must fail, not hang. */
	gr_fiber *a = gr_spawn(hub_join_forever, NULL);
	gr_fiber *b = gr_spawn(hub_join_forever, NULL);
	struct capture cap;
	void *ra, *rb;

	capture_begin(&cap);
	int r = gr_join(a, NULL, GR_FOREVER);
	const char *msg = capture_end(&cap);
	cr_assert_eq(r, -EDEADLK, "gr_join: %s", strerror(-r));
	cr_assert_not_null(strstr(msg, "deadlock"), "no deadlock message on stderr: \"%s\"", msg);
	cr_assert_not_null(strstr(msg, "main"), "the message should name the waiter: \"%s\"", msg);
	cr_assert_eq(strchr(msg, '\n'), msg + strlen(msg) - 1, "one line expected: \"%s\"", msg);
	/* main is still usable: unwind the two. */
	cr_assert_eq(gr_kill(a), 0);
	cr_assert_eq(gr_kill(b), 0);
	cr_assert_eq(gr_join(a, &ra, GR_FOREVER), 0);
	cr_assert_eq(gr_join(b, &rb, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)ra, -ECANCELED);
	cr_assert_eq((intptr_t)rb, -ECANCELED);
}

Test(fiber, hub_join_deadlock_is_edeadlk)
{
	gr_fiber *a = gr_spawn(hub_join_forever, NULL);
	gr_fiber *b = gr_spawn(hub_join_forever, NULL);
	struct capture cap;

	capture_begin(&cap);
	int r = gr_hub_join(GR_FOREVER);
	capture_end(&cap);
	cr_assert_eq(r, -EDEADLK, "gr_hub_join: %s", strerror(-r));
	gr_kill(a);
	gr_kill(b);
	cr_assert_eq(gr_join(a, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(b, NULL, GR_FOREVER), 0);
}

Test(fiber, a_pending_timer_is_not_a_deadlock)
{
	/* main waits on a fiber that only sleeps: the timer will wake it. */
	gr_fiber *f = gr_spawn(sleep_arg_ms, (void *)(intptr_t)20);
	void *res;

	cr_assert_eq(gr_join(f, &res, GR_FOREVER), 0);
	cr_assert_eq(res, (void *)(intptr_t)20);
}

/* ------------------------------------------------------------ blocking inside the hub
 *
 * A minimal third-party readiness backend (only GR_OP_POLL and GR_OP_TIMEOUT),
 * whose wait() tries the blocking API: there no fiber can park, so every
 * blocking call must fail with EPERM and the loop must carry on. */

#define TH_MAX 64
static struct gr_op *th_ops[TH_MAX];
static int th_probe_calls;
static int th_in_wait_results[8];
static int th_tried;
static int th_busy_fd = -1; /* an fd with an operation in flight during wait() */

static int th_probe(char *why, size_t len)
{
	th_probe_calls++;
	return 0;
}

static int th_init(void **state, const struct gr_hub_config *cfg)
{
	memset(th_ops, 0, sizeof(th_ops));
	*state = th_ops;
	return 0;
}

static void th_fini(void *state, int after_fork)
{
}

static int th_submit(void *state, struct gr_op *op)
{
	if (op->kind != GR_OP_POLL && op->kind != GR_OP_TIMEOUT)
		return -EINVAL;
	for (int i = 0; i < TH_MAX; i++) {
		if (!th_ops[i]) {
			th_ops[i] = op;
			return 0;
		}
	}
	return -EAGAIN;
}

static int th_cancel(void *state, struct gr_op *op)
{
	for (int i = 0; i < TH_MAX; i++) {
		if (th_ops[i] == op) {
			th_ops[i] = NULL;
			gr_hub_complete(op, -ECANCELED);
			return 0;
		}
	}
	return 0;
}

static void *never_runs(void *arg)
{
	return arg;
}

static void try_blocking_calls_in_hub(void)
{
	char c;

	th_tried = 1;
	th_in_wait_results[0] = gr_sleep(0);
	th_in_wait_results[1] = gr_sleep(GR_MSEC);
	errno = 0;
	th_in_wait_results[2] = gr_read(0, &c, 1) == -1 ? errno : 0;
	errno = 0;
	th_in_wait_results[3] = gr_spawn(never_runs, NULL) == NULL ? errno : 0;
	th_in_wait_results[4] = gr_hub_join(GR_FOREVER);
	errno = 0;
	th_in_wait_results[5] = gr_wait_fd(0, POLLIN, GR_FOREVER) == -1 ? errno : 0;
	th_in_wait_results[6] = gr_spawn_n(count_up, NULL);
	errno = 0;
	th_in_wait_results[7] = gr_close(th_busy_fd) == -1 ? errno : 0;
}

static void *wait_readable(void *arg)
{
	return (void *)(intptr_t)gr_wait_fd(*(int *)arg, POLLIN, GR_FOREVER);
}

static int th_wait(void *state, int64_t timeout_ns)
{
	int64_t now = gr_now(), next = GR_FOREVER;
	int done = 0;

	if (!th_tried)
		try_blocking_calls_in_hub();
	for (int i = 0; i < TH_MAX; i++) {
		struct gr_op *op = th_ops[i];

		if (!op)
			continue;
		if (op->kind == GR_OP_TIMEOUT && op->deadline <= now) {
			th_ops[i] = NULL;
			gr_hub_complete(op, 0);
			done++;
		} else if (op->kind == GR_OP_TIMEOUT && (next < 0 || op->deadline < next)) {
			next = op->deadline;
		}
	}
	if (done || timeout_ns == 0 || next < 0)
		return done;
	struct timespec ts = { (next - now) / GR_SEC, (next - now) % GR_SEC };
	nanosleep(&ts, NULL);
	return 0;
}

static int th_wake(void *state)
{
	return 0;
}

static const struct gr_hub_ops test_hub = {
	.name = "testhub",
	.caps = 0,
	.probe = th_probe,
	.init = th_init,
	.fini = th_fini,
	.submit = th_submit,
	.cancel = th_cancel,
	.wait = th_wait,
	.wake = th_wake,
};

Test(fiber, blocking_inside_the_hub_is_eperm_and_the_loop_survives)
{
	int64_t t0;

	cr_assert_eq(gr_hub_use_ops(&test_hub), 0);
	cr_assert_str_eq(gr_hub_name(), "testhub");
	cr_assert_geq(th_probe_calls, 1);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	th_busy_fd = p[0];
	gr_fiber *waiter = gr_spawn(wait_readable, &p[0]);
	/* Nothing is in flight yet, so this yield runs the waiter without the
	 * hub: it parks on p[0] before the hub's wait() first runs. */
	cr_assert_eq(gr_sleep(0), 0);
	t0 = gr_now();
	cr_assert_eq(gr_sleep(2 * GR_MSEC), 0, "a sleep through the third-party hub");
	cr_assert_geq(gr_now() - t0, 2 * GR_MSEC);
	cr_assert_eq(th_tried, 1, "the hub's wait() never ran");
	cr_assert_eq(th_in_wait_results[0], -EPERM, "gr_sleep(0) in the hub: %d", th_in_wait_results[0]);
	cr_assert_eq(th_in_wait_results[1], -EPERM, "gr_sleep in the hub: %d", th_in_wait_results[1]);
	cr_assert_eq(th_in_wait_results[2], EPERM, "gr_read in the hub: %d", th_in_wait_results[2]);
	cr_assert_eq(th_in_wait_results[3], EPERM, "gr_spawn in the hub: %d", th_in_wait_results[3]);
	cr_assert_eq(th_in_wait_results[4], -EPERM, "gr_hub_join in the hub: %d", th_in_wait_results[4]);
	cr_assert_eq(th_in_wait_results[5], EPERM, "gr_wait_fd in the hub: %d", th_in_wait_results[5]);
	cr_assert_eq(th_in_wait_results[6], -EPERM, "gr_spawn_n in the hub: %d", th_in_wait_results[6]);
	/* Closing under an operation in flight would let the number be reused
	 * while it still names the fd: refused, and the fd stays open. */
	cr_assert_eq(th_in_wait_results[7], EPERM, "gr_close in the hub: %d", th_in_wait_results[7]);
	cr_assert_neq(fcntl(p[0], F_GETFD), -1, "the busy fd was closed from inside the hub");
	cr_assert_eq(gr_kill(waiter), 0);
	cr_assert_eq(gr_join(waiter, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(close(p[1]), 0);
	/* The loop still works after the refused calls. */
	int ran = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(ran, 1);
	/* Back to the hub this run is for, so teardown checks it as usual. */
	cr_assert_eq(gr_hub_use(grt_hub()), 0);
	cr_assert_str_eq(gr_hub_name(), grt_hub());
}

Test(fiber, an_idle_hub_can_be_switched_and_back)
{
	static const char *names[] = { "io_uring", "epoll", "poll" };
	int base = grt_count_fds();

	/* The loop has run (something blocked), but no fiber is left. */
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	for (int i = 0; i < 3; i++) {
		int r = gr_hub_use(names[i]);

		if (r == -ENOTSUP)
			continue;
		cr_assert_eq(r, 0, "gr_hub_use(%s): %s", names[i], strerror(-r));
		cr_assert_str_eq(gr_hub_name(), names[i]);
		int ran = 0;
		gr_fiber *f = gr_spawn(set_flag, &ran);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
		cr_assert_eq(ran, 1, "a fiber on the %s hub did not run", names[i]);
	}
	cr_assert_eq(gr_hub_use(grt_hub()), 0);
	cr_assert_str_eq(gr_hub_name(), grt_hub());
	cr_assert_eq(grt_count_fds(), base, "switching hubs leaked fds");
}

Test(fiber, hub_use_is_ebusy_once_fibers_exist)
{
	int ran = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);

	cr_assert_eq(gr_hub_use(grt_hub()), -EBUSY);
	cr_assert_eq(gr_hub_use_ops(NULL), -EINVAL);
	cr_assert_eq(gr_hub_use("no-such-hub"), -ENOENT);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_str_eq(gr_hub_name(), grt_hub());
}

/* ------------------------------------------------------------ out of memory */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GRT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define GRT_SANITIZED 1
#endif
#endif

#ifndef GRT_SANITIZED
static long address_space_bytes(void)
{
	long pages = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &pages) != 1)
		pages = -1;
	fclose(f);
	return pages * sysconf(_SC_PAGESIZE);
}
#endif

/* The first blocking call needs the hub's own fiber and so a new stack. If
 * it cannot be mapped, that call fails with ENOMEM: the process must not
 * abort, and it keeps working once memory is back. */
Test(fiber, no_memory_for_the_hubs_stack_is_enomem_not_an_abort)
{
#ifdef GRT_SANITIZED
	cr_skip_test("a capped address space and a sanitizer's shadow memory do not mix");
#else
	pid_t pid = fork();

	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* A fresh hub in the child (fork drops the parent's), no
		 * blocking call yet, then no room for one more mapping. */
		if (!gr_hub_name())
			_exit(10);
		struct gr_hub_stats st;
		if (gr_hub_stats(&st) != 0 || st.loop_started)
			_exit(11);
		struct rlimit old, cap;
		getrlimit(RLIMIT_AS, &old);
		cap = old;
		cap.rlim_cur = (rlim_t)address_space_bytes() + 4096;
		if (setrlimit(RLIMIT_AS, &cap) != 0)
			_exit(12);
		int r1 = gr_sleep(GR_MSEC);
		errno = 0;
		gr_fiber *f = gr_spawn(never_runs, NULL);
		int e2 = errno;
		setrlimit(RLIMIT_AS, &old);
		if (r1 != -ENOMEM)
			_exit(13);
		if (f || e2 != ENOMEM)
			_exit(14);
		/* Memory is back: the same thread blocks normally now. */
		if (gr_sleep(GR_MSEC) != 0)
			_exit(15);
		_exit(0);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child died (signal %d) instead of failing with ENOMEM",
		  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	cr_assert_eq(WEXITSTATUS(status), 0, "child check %d failed", WEXITSTATUS(status));
#endif
}

/* ------------------------------------------------------------ races on one ended fiber */

/* The target ends while its joiner is woken but has not run: the claim holds
 * (review s20a: a fiber's end no longer calls out unless gr_hub_join waits). */
struct ended_race {
	gr_fiber *t;
	int rdetach, rkill, rjoin;
};

static void *yield_once_ret(void *arg)
{
	gr_sleep(0);
	return arg;
}

static void *poke_ended_target(void *arg)
{
	struct ended_race *r = arg;

	gr_sleep(0); /* turn 2: the target has ended, its joiner is queued behind us */
	r->rdetach = gr_detach(r->t);
	r->rkill = gr_kill(r->t);
	r->rjoin = gr_join(r->t, NULL, 0);
	return NULL;
}

Test(fiber, detach_kill_and_join_of_an_ended_fiber_whose_joiner_has_not_run_yet)
{
	struct ended_race r = { 0 };
	void *res = NULL;

	r.t = gr_spawn(yield_once_ret, (void *)(intptr_t)42);
	gr_fiber *j = gr_spawn(join_other, r.t);
	gr_fiber *p = gr_spawn(poke_ended_target, &r);
	cr_assert_eq(gr_join(j, &res, GR_FOREVER), 0);
	cr_assert_eq(gr_join(p, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.rdetach, -EBUSY, "gr_detach under a woken joiner: %d", r.rdetach);
	cr_assert_eq(r.rkill, -ESRCH, "gr_kill of an ended fiber: %d", r.rkill);
	cr_assert_eq(r.rjoin, -EINVAL, "a second join under a woken joiner: %d", r.rjoin);
	cr_assert_eq(res, (void *)(intptr_t)42, "the woken joiner lost the result");
}

struct edge_join {
	gr_fiber *t;
	int64_t deadline;
	int r;
	void *res;
};

static void *join_until(void *arg)
{
	struct edge_join *e = arg;

	e->r = gr_join(e->t, &e->res, e->deadline);
	return NULL;
}

static void *sleep_until_arg(void *arg)
{
	gr_sleep_until(*(int64_t *)arg);
	return arg;
}

Test(fiber, a_joiner_whose_deadline_passes_as_the_target_ends_gets_one_answer)
{
	int timeouts = 0, joined = 0;

	for (int i = 0; i < 60; i++) {
		int64_t end = gr_now() + 200 * (GR_MSEC / 1000);
		struct edge_join e = { .deadline = end + (i % 5 - 2) * 20 * (GR_MSEC / 1000) };

		e.t = gr_spawn(sleep_until_arg, &end);
		gr_fiber *j = gr_spawn(join_until, &e);
		cr_assert_eq(gr_join(j, NULL, GR_FOREVER), 0);
		if (e.r == 0) {
			cr_assert_eq(e.res, &end);
			joined++;
			continue;
		}
		cr_assert_eq(e.r, -ETIMEDOUT, "round %d: %s", i, strerror(-e.r));
		timeouts++;
		/* Timed out: the target is still ours to join, ended or not. */
		void *res = NULL;
		cr_assert_eq(gr_join(e.t, &res, GR_FOREVER), 0, "round %d: the target was lost", i);
		cr_assert_eq(res, &end);
	}
	cr_assert_eq(joined + timeouts, 60);
}

/* ------------------------------------------------------------ hub join: every way to end */

struct ends {
	gr_fiber *parked;      /* parked forever until killed */
	int grandchild_ran;
	int hub_join_saw;      /* grandchild_ran when the fiber's own gr_hub_join returned */
	int spawned_in_kill;
};

static void *kill_arg_later(void *arg)
{
	struct ends *e = arg;

	gr_sleep(GR_MSEC);
	gr_kill(e->parked);
	return NULL;
}

static void grandchild(void *arg)
{
	gr_sleep(2 * GR_MSEC);
	((struct ends *)arg)->grandchild_ran = 1;
}

/* Killed while parked, it spawns before acknowledging: a spawn does not
 * switch, so it works for a killed fiber. */
static void *spawn_when_killed(void *arg)
{
	struct ends *e = arg;

	e->parked = gr_self();
	if (gr_sleep(INT64_MAX) == -ECANCELED)
		e->spawned_in_kill = gr_spawn_n(grandchild, e) == 0;
	return NULL;
}

static void *hub_join_then_look(void *arg)
{
	struct ends *e = arg;
	int r = gr_hub_join(GR_FOREVER);

	e->hub_join_saw = e->grandchild_ran;
	return (void *)(intptr_t)r;
}

Test(fiber, hub_join_callers_wake_whichever_way_the_last_fibers_end)
{
	struct ends e = { 0 };
	struct gr_hub_stats st;
	void *r_hj = NULL;
	int flags[3] = { 0 };

	gr_fiber *ended = gr_spawn(set_flag, &flags[0]);     /* ends, never joined until after */
	gr_fiber *unstarted = gr_spawn(set_flag, &flags[1]); /* killed before it runs */
	cr_assert_eq(gr_kill(unstarted), 0);
	gr_fiber *spawner = gr_spawn(spawn_when_killed, &e);
	cr_assert_eq(gr_detach(gr_spawn(kill_arg_later, &e)), 0);
	cr_assert_eq(gr_spawn_n(count_up, &flags[2]), 0);
	gr_fiber *hj = gr_spawn(hub_join_then_look, &e);
	cr_assert_eq(gr_hub_join(gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_hub_stats(&st), 0);
	cr_assert_eq(st.fibers, 0, "gr_hub_join returned with %zu fibers alive", st.fibers);
	cr_assert_eq(e.spawned_in_kill, 1);
	cr_assert_eq(e.grandchild_ran, 1);
	cr_assert(flags[0] == 1 && flags[1] == 0 && flags[2] == 1, "%d %d %d", flags[0], flags[1],
		  flags[2]);
	/* The ended ones stay joinable: their handles are valid. */
	cr_assert_eq(gr_join(ended, NULL, 0), 0);
	cr_assert_eq(gr_join(unstarted, NULL, 0), 0);
	cr_assert_eq(gr_join(spawner, NULL, 0), 0);
	cr_assert_eq(gr_join(hj, &r_hj, 0), 0);
	cr_assert_eq((intptr_t)r_hj, 0);
	cr_assert_eq(e.hub_join_saw, 1, "a fiber's gr_hub_join returned before a grandchild ended");
	/* Nothing is left at all: the hub may be replaced. */
	cr_assert_eq(gr_hub_use(grt_hub()), 0);
}

Test(fiber, hub_use_is_ebusy_while_an_ended_fiber_is_unjoined_and_free_after)
{
	int ran = 0, ran_detached = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);
	cr_assert_eq(gr_detach(gr_spawn(set_flag, &ran_detached)), 0);

	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(ran, 1);
	cr_assert_eq(gr_hub_use(grt_hub()), -EBUSY, "an ended fiber's handle would dangle");
	cr_assert_eq(gr_join(f, NULL, 0), 0);
	cr_assert_eq(gr_hub_use(grt_hub()), 0, "every fiber released, the hub is idle");
}

/* ------------------------------------------------------------ a lone yielder and other threads */

/* The only runnable fiber yields without a switch when nothing is in flight
 * (review s20a): a wake-up another thread posts meanwhile must still reach
 * the fiber it wakes, at the yielder's next yield. Here the main context
 * waits in gr_join (no operation in flight), one fiber ping-pongs with a
 * plain thread through notifiers, and another yields all along. Nothing
 * here has a deadline: a timer in flight would send every yield through
 * the hub loop, which is not the path under test. */
enum { PINGS = 300 };

struct lone {
	gr_notifier to_fiber, to_thread;
	atomic_int stop;
	int got, thread_got, err;
	long yields;
};

static void lone_thread(void *arg)
{
	struct lone *l = arg;

	for (int i = 0; i < PINGS; i++) {
		int r = gr_notifier_wait(&l->to_thread, gr_now() + 10 * GR_SEC);

		if (r < 0) {
			grt_fail("the thread's wait: %s", strerror(-r));
			return;
		}
		l->thread_got++;
		gr_notifier_fire(&l->to_fiber);
	}
}

static void *lone_pinger(void *arg)
{
	struct lone *l = arg;

	for (int i = 0; i < PINGS; i++) {
		gr_notifier_fire(&l->to_thread);
		/* No deadline: its timer would be in flight, and the yields
		 * would go through the hub loop anyway. */
		int r = gr_notifier_wait(&l->to_fiber, GR_FOREVER);

		if (r < 0) {
			l->err = r;
			break;
		}
		l->got++;
	}
	atomic_store(&l->stop, 1);
	return NULL;
}

static void *lone_yielder(void *arg)
{
	struct lone *l = arg;

	while (!atomic_load(&l->stop)) {
		if (gr_sleep(0) != 0)
			break;
		l->yields++;
	}
	return NULL;
}

Test(fiber, wake_ups_from_another_thread_reach_a_hub_whose_only_runnable_fiber_yields)
{
	struct lone l = { .got = 0 };
	struct grt_thread t;

	assert_ok(gr_notifier_init(&l.to_fiber));
	assert_ok(gr_notifier_init(&l.to_thread));
	gr_fiber *y = gr_spawn(lone_yielder, &l);
	gr_fiber *p = gr_spawn(lone_pinger, &l);
	grt_thread_start(&t, 0, lone_thread, &l);
	/* No deadline either (a stall is the suite's timeout). */
	cr_assert_eq(gr_join(p, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(y, NULL, GR_FOREVER), 0);
	grt_thread_join(&t);
	grt_assert_no_failures();
	cr_assert_eq(l.err, 0, "the fiber's wait: %s", strerror(-l.err));
	cr_assert_eq(l.got, PINGS);
	cr_assert_eq(l.thread_got, PINGS);
	cr_assert_gt(l.yields, 0);
	assert_ok(gr_notifier_destroy(&l.to_fiber));
	assert_ok(gr_notifier_destroy(&l.to_thread));
}
