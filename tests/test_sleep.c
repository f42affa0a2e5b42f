/* test_sleep.c — sleep accuracy, rounding, yield fairness (I/O and timers
 * are not starved by a loop of gr_sleep(0)), and the per-fiber deadline.
 * Runs once per hub. Timing bounds allow for a shared, noisy 2-core box:
 * never early, and late by at most SLACK. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(sleep);

#define SLACK (50 * GR_MSEC)

/* ------------------------------------------------------------ accuracy */

Test(sleep, sleeps_at_least_the_time_asked_and_not_much_more)
{
	static const int64_t ms[] = { 1, 5, 20 };

	for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
		int64_t want = ms[i] * GR_MSEC, t0 = gr_now();

		cr_assert_eq(gr_sleep(want), 0);
		int64_t took = gr_now() - t0;
		cr_assert_geq(took, want, "gr_sleep(%lld ms) returned early after %lld ns",
			      (long long)ms[i], (long long)took);
		cr_assert_lt(took, want + SLACK, "gr_sleep(%lld ms) took %lld ns",
			     (long long)ms[i], (long long)took);
	}
}

Test(sleep, tiny_sleeps_round_up_never_down)
{
	/* 1 ns .. 1 µs: each must really wait until its deadline (no
	 * truncation to 0, which would spin), and must not return before it. */
	for (int64_t ns = 1; ns <= 1000; ns *= 10) {
		int64_t t0 = gr_now();

		cr_assert_eq(gr_sleep(ns), 0);
		int64_t took = gr_now() - t0;
		cr_assert_geq(took, ns, "gr_sleep(%lld ns) returned after %lld ns", (long long)ns,
			      (long long)took);
		cr_assert_lt(took, SLACK);
	}
}

Test(sleep, sleep_until_an_absolute_time)
{
	int64_t until = gr_now() + 15 * GR_MSEC;

	cr_assert_eq(gr_sleep_until(until), 0);
	int64_t now = gr_now();
	cr_assert_geq(now, until, "woke %lld ns early", (long long)(until - now));
	cr_assert_lt(now, until + SLACK);
	/* A time in the past is a yield, not an error. */
	cr_assert_eq(gr_sleep_until(gr_now() - GR_SEC), 0);
	cr_assert_eq(gr_sleep_until(0), 0);
}

struct sleeper {
	int64_t want;     /* absolute wake time */
	int64_t woke;
	int rc;
};

static void *sleeper_fn(void *arg)
{
	struct sleeper *s = arg;

	s->rc = gr_sleep_until(s->want);
	s->woke = gr_now();
	return NULL;
}

Test(sleep, many_concurrent_sleepers_each_wake_on_time)
{
	enum { N = 200 };
	static struct sleeper s[N];
	gr_fiber *f[N];
	int64_t t0 = gr_now();

	for (int i = 0; i < N; i++) {
		/* 2..40 ms, interleaved so submission order is not wake order. */
		s[i].want = t0 + (int64_t)((i * 7) % 20 + 1) * 2 * GR_MSEC;
		f[i] = gr_spawn(sleeper_fn, &s[i]);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_join(f[i], NULL, GR_FOREVER), 0);
	int64_t total = gr_now() - t0;
	for (int i = 0; i < N; i++) {
		cr_assert_eq(s[i].rc, 0);
		cr_assert_geq(s[i].woke, s[i].want, "sleeper %d woke %lld ns early", i,
			      (long long)(s[i].want - s[i].woke));
		cr_assert_lt(s[i].woke, s[i].want + SLACK, "sleeper %d woke %lld ns late", i,
			     (long long)(s[i].woke - s[i].want));
	}
	/* They slept concurrently, not one after another. */
	cr_assert_lt(total, 40 * GR_MSEC + SLACK, "200 sleeps of <= 40 ms took %lld ns",
		     (long long)total);
}

Test(sleep, a_long_sleep_does_not_delay_a_short_one)
{
	struct sleeper longer = { .want = gr_now() + 10 * GR_SEC };
	struct sleeper shorter = { .want = gr_now() + 10 * GR_MSEC };
	gr_fiber *l = gr_spawn(sleeper_fn, &longer);
	gr_fiber *s = gr_spawn(sleeper_fn, &shorter);

	cr_assert_eq(gr_join(s, NULL, GR_FOREVER), 0);
	cr_assert_lt(shorter.woke, shorter.want + SLACK);
	cr_assert_eq(gr_kill(l), 0);
	cr_assert_eq(gr_join(l, NULL, GR_FOREVER), 0);
	cr_assert_eq(longer.rc, -ECANCELED);
}

struct counter {
	volatile int *stop;
	long runs;
};

static void *count_turns(void *arg)
{
	struct counter *c = arg;

	while (!*c->stop) {
		c->runs++;
		if (gr_sleep(0) != 0)
			break;
	}
	return NULL;
}

Test(sleep, every_sleep_is_a_switch_point_even_one_that_is_over_at_once)
{
	/* A sleep so short that its deadline passes before it is set up must
	 * still let the other fibers run: a loop of tiny sleeps must not spin
	 * alone. 2000 sleeps of 1..2000 ns, each one turn for the counter. */
	volatile int stop = 0;
	struct counter c = { .stop = &stop };
	gr_fiber *f = gr_spawn(count_turns, &c);
	long missed = 0;

	for (int64_t ns = 1; ns <= 2000; ns++) {
		long before = c.runs;

		cr_assert_eq(gr_sleep(ns), 0);
		missed += c.runs == before;
	}
	stop = 1;
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(missed, 0, "%ld of 2000 short sleeps returned without letting another fiber run",
		     missed);
}

/* ------------------------------------------------------------ fairness */

struct spinner {
	volatile int *stop;
	long yields;
	int64_t limit;       /* give up (and fail) after this absolute time */
	int rc;
};

static void *spin_yield(void *arg)
{
	struct spinner *s = arg;

	while (!*s->stop && gr_now() < s->limit) {
		s->rc = gr_sleep(0);
		if (s->rc)
			break;
		s->yields++;
	}
	return NULL;
}

struct receiver {
	int fd;
	char buf[16];
	ssize_t n;
	int err;
	volatile int *done;
};

static void *recv_fn(void *arg)
{
	struct receiver *r = arg;

	r->n = gr_recv(r->fd, r->buf, sizeof(r->buf), 0);
	r->err = r->n < 0 ? errno : 0;
	*r->done = 1;
	return NULL;
}

Test(sleep, a_loop_of_sleep0_does_not_starve_io)
{
	int sv[2];
	volatile int done = 0;
	struct spinner sp = { .stop = &done, .limit = gr_now() + 5 * GR_SEC };
	struct receiver rv = { .done = &done };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	rv.fd = sv[0];
	gr_fiber *r = gr_spawn(recv_fn, &rv);
	gr_fiber *s = gr_spawn(spin_yield, &sp);
	/* Let the receiver block and the spinner start spinning. */
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(done, 0);
	cr_assert_eq(send(sv[1], "ping", 4, 0), 4);
	/* main joins the spinner, which only stops once the recv completed:
	 * the hub must reap the completion although a fiber is always
	 * runnable. */
	cr_assert_eq(gr_join(s, NULL, GR_FOREVER), 0);
	cr_assert_eq(sp.rc, 0);
	cr_assert_eq(done, 1, "recv never completed while a fiber looped on gr_sleep(0) (%ld yields)",
		     sp.yields);
	cr_assert_eq(gr_join(r, NULL, GR_FOREVER), 0);
	cr_assert_eq(rv.n, 4, "recv: %zd (%s)", rv.n, strerror(rv.err));
	cr_assert_eq(memcmp(rv.buf, "ping", 4), 0);
	close(sv[0]);
	close(sv[1]);
}

Test(sleep, main_looping_on_sleep0_sees_io_complete)
{
	int sv[2];
	volatile int done = 0;
	struct receiver rv = { .done = &done };
	long yields = 0;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	rv.fd = sv[0];
	gr_fiber *r = gr_spawn(recv_fn, &rv);
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(send(sv[1], "pong", 4, 0), 4);
	int64_t limit = gr_now() + 5 * GR_SEC;
	while (!done && gr_now() < limit) {
		cr_assert_eq(gr_sleep(0), 0);
		yields++;
	}
	cr_assert_eq(done, 1, "recv not completed after %ld yields of main", yields);
	cr_assert_eq(gr_join(r, NULL, GR_FOREVER), 0);
	cr_assert_eq(rv.n, 4);
	close(sv[0]);
	close(sv[1]);
}

static void *sleep_then_flag(void *arg)
{
	gr_sleep(5 * GR_MSEC);
	*(volatile int *)arg = 1;
	return NULL;
}

Test(sleep, a_loop_of_sleep0_does_not_starve_timers)
{
	volatile int done = 0;
	int64_t t0 = gr_now(), limit = t0 + 5 * GR_SEC;
	gr_fiber *f = gr_spawn(sleep_then_flag, (void *)&done);

	while (!done && gr_now() < limit)
		cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(done, 1, "a 5 ms sleeper never woke while main yielded");
	cr_assert_lt(gr_now() - t0, 5 * GR_MSEC + SLACK);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

Test(sleep, two_yielding_fibers_alternate)
{
	volatile int stop = 0;
	struct spinner a = { .stop = &stop, .limit = gr_now() + 5 * GR_SEC };
	struct spinner b = { .stop = &stop, .limit = gr_now() + 5 * GR_SEC };
	gr_fiber *fa = gr_spawn(spin_yield, &a);
	gr_fiber *fb = gr_spawn(spin_yield, &b);

	for (int i = 0; i < 100; i++)
		cr_assert_eq(gr_sleep(0), 0);
	stop = 1;
	cr_assert_eq(gr_join(fa, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(fb, NULL, GR_FOREVER), 0);
	/* Each of main's yields is one turn in which each spinner yields once. */
	cr_assert(a.yields >= 99 && a.yields <= 101, "a yielded %ld times", a.yields);
	cr_assert(b.yields >= 99 && b.yields <= 101, "b yielded %ld times", b.yields);
}

/* ------------------------------------------------------------ per-fiber deadline */

struct dl_result {
	int sleep_rc;
	int64_t took;
	ssize_t recv_rc;
	int recv_errno;
	int fd;
};

static void *deadline_sleep(void *arg)
{
	struct dl_result *r = arg;
	int64_t t0 = gr_now();

	cr_assert_eq(gr_deadline_get(), GR_FOREVER, "a new fiber starts without a deadline");
	cr_assert_eq(gr_deadline_set(t0 + 20 * GR_MSEC), GR_FOREVER);
	r->sleep_rc = gr_sleep(10 * GR_SEC);
	r->took = gr_now() - t0;
	/* Every later blocking call fails the same way, yields included. */
	cr_assert_eq(gr_sleep(GR_MSEC), -ETIMEDOUT);
	cr_assert_eq(gr_sleep(0), -ETIMEDOUT);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(gr_sleep(GR_MSEC), 0, "clearing the deadline did not restore sleeping");
	return NULL;
}

Test(sleep, fiber_deadline_ends_a_sleep_with_etimedout)
{
	struct dl_result r = { 0 };
	gr_fiber *f = gr_spawn(deadline_sleep, &r);

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.sleep_rc, -ETIMEDOUT, "gr_sleep past the deadline: %d", r.sleep_rc);
	cr_assert_geq(r.took, 20 * GR_MSEC, "the deadline fired early: %lld ns", (long long)r.took);
	cr_assert_lt(r.took, 20 * GR_MSEC + SLACK, "the deadline fired late: %lld ns",
		     (long long)r.took);
}

static void *deadline_later_than_sleep(void *arg)
{
	gr_deadline_set(gr_now() + 10 * GR_SEC);
	int rc = gr_sleep(2 * GR_MSEC);
	gr_deadline_set(GR_FOREVER);
	return (void *)(intptr_t)rc;
}

Test(sleep, a_deadline_after_the_sleep_does_not_interfere)
{
	void *rc;
	gr_fiber *f = gr_spawn(deadline_later_than_sleep, NULL);

	cr_assert_eq(gr_join(f, &rc, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)rc, 0);
}

static void *deadline_recv(void *arg)
{
	struct dl_result *r = arg;
	char buf[8];
	int64_t t0 = gr_now();

	gr_deadline_set(t0 + 20 * GR_MSEC);
	r->recv_rc = gr_recv(r->fd, buf, sizeof(buf), 0);
	r->recv_errno = errno;
	r->took = gr_now() - t0;
	gr_deadline_set(GR_FOREVER);
	/* The fd still works, and the timed-out recv consumed nothing. */
	ssize_t n = gr_recv(r->fd, buf, sizeof(buf), 0);
	cr_assert_eq(n, 3, "recv after the deadline: %zd (%s)", n, strerror(errno));
	cr_assert_eq(memcmp(buf, "abc", 3), 0);
	return NULL;
}

Test(sleep, fiber_deadline_bounds_a_blocked_recv)
{
	int sv[2];
	struct dl_result r = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(deadline_recv, &r);
	/* Wait until the fiber's recv has timed out, then feed it. */
	while (r.took == 0)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(send(sv[1], "abc", 3, 0), 3);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.recv_rc, -1);
	cr_assert_eq(r.recv_errno, ETIMEDOUT, "recv past the deadline: %s", strerror(r.recv_errno));
	cr_assert_geq(r.took, 20 * GR_MSEC);
	cr_assert_lt(r.took, 20 * GR_MSEC + SLACK);
	close(sv[0]);
	close(sv[1]);
}

static void *deadline_already_passed(void *arg)
{
	int fd = *(int *)arg;
	char c;

	gr_deadline_set(gr_now() - 1);
	cr_assert_eq(gr_sleep(GR_SEC), -ETIMEDOUT);
	cr_assert_eq(gr_recv(fd, &c, 1, 0), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	cr_assert_eq(gr_wait_fd(fd, POLLIN, GR_FOREVER), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	gr_fiber *g = gr_spawn(deadline_already_passed, NULL); /* spawning never blocks */
	cr_assert_not_null(g);
	cr_assert_eq(gr_join(g, NULL, GR_FOREVER), -ETIMEDOUT);
	cr_assert_eq(gr_kill(g), 0);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(gr_join(g, NULL, GR_FOREVER), 0);
	return NULL;
}

Test(sleep, a_passed_deadline_fails_every_blocking_call_at_once)
{
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	int64_t t0 = gr_now();
	gr_fiber *f = gr_spawn(deadline_already_passed, &sv[0]);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_lt(gr_now() - t0, SLACK, "calls past the deadline waited");
	close(sv[0]);
	close(sv[1]);
}

static void *nest_deadlines(void *arg)
{
	int64_t t0 = gr_now();
	int64_t outer = t0 + 10 * GR_SEC;

	cr_assert_eq(gr_deadline_set(outer), GR_FOREVER);
	cr_assert_eq(gr_deadline_get(), outer);
	/* An inner, shorter scope. */
	int64_t inner = gr_now() + 10 * GR_MSEC;
	int64_t saved = gr_deadline_set(inner);
	cr_assert_eq(saved, outer);
	cr_assert_eq(gr_sleep(GR_SEC), -ETIMEDOUT);
	cr_assert_eq(gr_deadline_set(saved), inner, "gr_deadline_set returns the previous deadline");
	cr_assert_eq(gr_deadline_get(), outer, "restoring the outer scope");
	/* The outer deadline is far: sleeping works again. */
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_lt(gr_now() - t0, GR_SEC, "the inner scope's sleep was not cut short");
	/* Negative values clear it. */
	gr_deadline_set(-7);
	cr_assert_eq(gr_deadline_get(), GR_FOREVER);
	return NULL;
}

Test(sleep, deadlines_nest_and_restore)
{
	gr_fiber *f = gr_spawn(nest_deadlines, NULL);

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

static void *deadline_is_per_fiber(void *arg)
{
	return (void *)(intptr_t)gr_sleep(30 * GR_MSEC);
}

static void *short_deadline(void *arg)
{
	gr_deadline_set(gr_now() + 5 * GR_MSEC);
	int rc = gr_sleep(30 * GR_MSEC);
	gr_deadline_set(GR_FOREVER);
	return (void *)(intptr_t)rc;
}

Test(sleep, a_deadline_belongs_to_one_fiber)
{
	void *ra, *rb;
	gr_fiber *a = gr_spawn(short_deadline, NULL);
	gr_fiber *b = gr_spawn(deadline_is_per_fiber, NULL);

	cr_assert_eq(gr_join(a, &ra, GR_FOREVER), 0);
	cr_assert_eq(gr_join(b, &rb, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)ra, -ETIMEDOUT);
	cr_assert_eq((intptr_t)rb, 0, "another fiber's deadline cut this sleep short");
	cr_assert_eq(gr_deadline_get(), GR_FOREVER, "main's deadline changed");
}

static void *join_with_fiber_deadline(void *arg)
{
	gr_deadline_set(gr_now() + 10 * GR_MSEC);
	int rc = gr_join(arg, NULL, GR_FOREVER);
	gr_deadline_set(GR_FOREVER);
	return (void *)(intptr_t)rc;
}

Test(sleep, fiber_deadline_bounds_a_join)
{
	gr_fiber *slow = gr_spawn(deadline_is_per_fiber, NULL);
	gr_fiber *j = gr_spawn(join_with_fiber_deadline, slow);
	void *rc;

	cr_assert_eq(gr_join(j, &rc, GR_FOREVER), 0);
	cr_assert_eq((intptr_t)rc, -ETIMEDOUT);
	cr_assert_eq(gr_join(slow, NULL, GR_FOREVER), 0, "the timed-out join left it joinable");
}

struct spawn_deadline {
	int64_t seen;       /* gr_deadline_get() as the body starts */
	int rc;             /* a long sleep's result */
	int64_t ended;
	int later;          /* a sleep after lifting the deadline */
};

static void *deadline_seen(void *arg)
{
	((struct spawn_deadline *)arg)->seen = gr_deadline_get();
	return NULL;
}

static void *sleep_under_spawn_deadline(void *arg)
{
	struct spawn_deadline *d = arg;

	d->seen = gr_deadline_get();
	d->rc = gr_sleep(10 * GR_SEC);
	d->ended = gr_now();
	gr_deadline_set(GR_FOREVER); /* it is the fiber's own: it may lift it */
	d->later = gr_sleep(GR_MSEC);
	return NULL;
}

Test(sleep, a_deadline_given_at_spawn_bounds_the_whole_fiber_from_its_start)
{
	int64_t t0 = gr_now();
	struct gr_spawn_opts o = { .deadline = t0 + 40 * GR_MSEC };
	struct spawn_deadline d = { 0 };
	gr_fiber *f = gr_spawn_with(&o, sleep_under_spawn_deadline, &d);

	cr_assert_not_null(f);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(d.seen, o.deadline, "the body did not start with the deadline");
	cr_assert_eq(d.rc, -ETIMEDOUT, "sleep under the spawn deadline: %d", d.rc);
	cr_assert_geq(d.ended - t0, 40 * GR_MSEC);
	cr_assert_lt(d.ended - t0, 40 * GR_MSEC + SLACK);
	cr_assert_eq(d.later, 0, "the fiber could not lift its own deadline");
	cr_assert_eq(gr_deadline_get(), GR_FOREVER, "the spawner's deadline changed");

	/* Zero-initialised options mean no deadline, as GR_FOREVER does. */
	struct gr_spawn_opts none[2] = { { 0 }, { .deadline = GR_FOREVER } };
	for (int i = 0; i < 2; i++) {
		struct spawn_deadline z = { 0 };

		f = gr_spawn_with(&none[i], deadline_seen, &z);
		cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
		cr_assert_eq(z.seen, GR_FOREVER, "options %d gave a deadline", i);
	}
}

Test(sleep, main_has_a_deadline_too)
{
	int64_t t0 = gr_now();

	cr_assert_eq(gr_deadline_set(t0 + 10 * GR_MSEC), GR_FOREVER);
	int rc = gr_sleep(GR_SEC);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(rc, -ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 10 * GR_MSEC);
	cr_assert_lt(gr_now() - t0, 10 * GR_MSEC + SLACK);
}

/* ------------------------------------------------------------ extreme values */

struct huge {
	int fd;
	int sleep_rc, wait_rc, wait_err, dl_rc;
};

static void *huge_sleep(void *arg)
{
	struct huge *h = arg;

	h->sleep_rc = gr_sleep(INT64_MAX);
	return NULL;
}

static void *huge_waits(void *arg)
{
	struct huge *h = arg;

	h->wait_rc = gr_wait_fd(h->fd, POLLIN, INT64_MAX);
	h->wait_err = h->wait_rc ? errno : 0;
	gr_deadline_set(INT64_MAX);
	h->dl_rc = gr_sleep(GR_MSEC);
	gr_deadline_set(GR_FOREVER);
	return NULL;
}

Test(sleep, the_longest_sleeps_and_deadlines_do_not_overflow)
{
	/* INT64_MAX as a duration or a deadline means "practically forever":
	 * no overflow into the past (an instant return) or into an error. */
	struct huge h = { 0 };
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	h.fd = p[0];
	gr_fiber *s = gr_spawn(huge_sleep, &h);
	gr_fiber *w = gr_spawn(huge_waits, &h);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(h.sleep_rc, 0, "gr_sleep(INT64_MAX) returned at once: %d", h.sleep_rc);
	cr_assert_eq(h.wait_rc, 0, "gr_wait_fd(deadline INT64_MAX) returned at once: %s",
		     strerror(h.wait_err));
	cr_assert_eq(write(p[1], "x", 1), 1);
	cr_assert_eq(gr_join(w, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(h.wait_rc, 0, "gr_wait_fd: %s", strerror(h.wait_err));
	cr_assert_eq(h.dl_rc, 0, "a sleep under a deadline of INT64_MAX: %d", h.dl_rc);
	cr_assert_eq(gr_join(s, NULL, gr_now() + 2 * GR_MSEC), -ETIMEDOUT);
	cr_assert_eq(gr_kill(s), 0);
	cr_assert_eq(gr_join(s, NULL, INT64_MAX), 0);
	cr_assert_eq(h.sleep_rc, -ECANCELED, "the endless sleep: %d", h.sleep_rc);
	cr_assert_eq(gr_hub_join(INT64_MAX), 0);
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------------------ signals */

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

static void *write_later(void *arg)
{
	int fd = *(int *)arg;

	if (gr_sleep(20 * GR_MSEC) != 0)
		return (void *)1;
	return (void *)(intptr_t)(gr_write(fd, "sig", 3) == 3 ? 0 : errno);
}

Test(sleep, signals_do_not_disturb_the_loop)
{
	/* A signal every 500 µs, no SA_RESTART: the hub's wait is interrupted
	 * again and again; sleeps, I/O and joins must not notice. */
	struct sigaction sa = { .sa_handler = on_alarm }, old;
	struct itimerval it = { { 0, 500 }, { 0, 500 } }, off = { { 0, 0 }, { 0, 0 } };
	int p[2];
	char buf[4];
	void *wr;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGALRM, &sa, &old), 0);
	cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
	gr_fiber *w = gr_spawn(write_later, &p[1]);
	int64_t t0 = gr_now();
	ssize_t n = gr_read(p[0], buf, sizeof(buf));
	int err = errno;
	int64_t t1 = gr_now();
	int rc = gr_sleep(30 * GR_MSEC);
	int64_t slept = gr_now() - t1;
	int jrc = gr_join(w, &wr, GR_FOREVER);
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	cr_assert_gt(alarms, 10, "the signals did not arrive (%d)", (int)alarms);
	cr_assert_eq(n, 3, "gr_read under signals: %zd (%s)", n, strerror(err));
	cr_assert_geq(t1 - t0, 20 * GR_MSEC);
	cr_assert_eq(rc, 0, "gr_sleep under signals: %d", rc);
	cr_assert_geq(slept, 30 * GR_MSEC, "a signal cut the sleep short: %lld ns", (long long)slept);
	cr_assert_lt(slept, 30 * GR_MSEC + SLACK);
	cr_assert_eq(jrc, 0);
	cr_assert_null(wr, "the writer fiber failed: %s", strerror((int)(intptr_t)wr));
	close(p[0]);
	close(p[1]);
}
