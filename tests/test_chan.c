/* test_chan.c — gr_chan and gr_notifier across threads: every capacity
 * between two hubs and between a hub and a plain thread, FIFO, close with
 * waiters on both sides, kills and deadlines racing hand-offs, a waiter
 * whose thread exits mid-wait (queued, and handed an item it never took),
 * destroy while busy, misuse; the notifier's coalescing, waiters, and
 * threads. Runs once per hub.
 *
 * Other threads only record what they saw; the test's own thread asserts.
 * Nothing sleeps and hopes: threads are joined, and a thread that must not
 * run its hub for a while is parked in a plain read(2) of a pipe the test
 * writes to. The randomized exactly-once model is tests/test_chan_model.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(chan);

static const size_t capacities[] = { 0, 1, 3, GR_CHAN_UNBOUNDED };
#define NCAPS (sizeof(capacities) / sizeof(capacities[0]))

/* ------------------------------------------------------------ helpers */

static void *item(uintptr_t i)
{
	return (void *)(i + 1);
}

/* ------------------------------------------------------------ one thread */

Test(chan, fifo_capacity_and_tries_on_one_thread)
{
	gr_chan c;
	void *it;

	assert_ok(gr_chan_init(&c, 3));
	for (uintptr_t i = 0; i < 3; i++)
		assert_ok(gr_chan_trysend(&c, item(i)));
	assert_err(gr_chan_trysend(&c, item(9)), EAGAIN);
	assert_err(gr_chan_send(&c, item(9), 0), ETIMEDOUT);
	cr_assert_eq(gr_chan_len(&c), 3);
	for (uintptr_t i = 0; i < 3; i++) {
		assert_ok(gr_chan_recv(&c, &it, GR_FOREVER));
		cr_assert_eq(it, item(i));
	}
	assert_err(gr_chan_tryrecv(&c, &it), EAGAIN);
	assert_err(gr_chan_recv(&c, &it, 0), ETIMEDOUT);
	int64_t t0 = gr_now();
	assert_err(gr_chan_recv(&c, &it, t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC, "the deadline came early");
	assert_ok(gr_chan_destroy(&c));

	/* A rendezvous never queues; unbounded never refuses. */
	assert_ok(gr_chan_init(&c, 0));
	assert_err(gr_chan_trysend(&c, item(1)), EAGAIN);
	cr_assert_eq(gr_chan_len(&c), 0);
	assert_ok(gr_chan_destroy(&c));
	assert_ok(gr_chan_init(&c, GR_CHAN_UNBOUNDED));
	for (uintptr_t i = 0; i < 1000; i++)
		assert_ok(gr_chan_trysend(&c, item(i)));
	for (uintptr_t i = 0; i < 1000; i++) {
		assert_ok(gr_chan_tryrecv(&c, &it));
		cr_assert_eq(it, item(i));
	}
	assert_ok(gr_chan_destroy(&c));
}

Test(chan, misuse_is_einval_and_a_killed_fiber_still_tries)
{
	gr_chan c;
	gr_chan zero;
	void *it;

	memset(&zero, 0, sizeof(zero));
	assert_err(gr_chan_init(NULL, 1), EINVAL);
	assert_err(gr_chan_send(NULL, NULL, GR_FOREVER), EINVAL);
	assert_err(gr_chan_send(&zero, NULL, GR_FOREVER), EINVAL);
	assert_err(gr_chan_recv(&zero, &it, 0), EINVAL);
	assert_err(gr_chan_trysend(&zero, NULL), EINVAL);
	assert_err(gr_chan_tryrecv(&zero, NULL), EINVAL);
	assert_err(gr_chan_close(&zero), EINVAL);
	assert_err(gr_chan_destroy(&zero), EINVAL);
	cr_assert_eq(gr_chan_len(&zero), -EINVAL);
	assert_ok(gr_chan_init(&c, 2));
	assert_ok(gr_chan_destroy(&c));
	assert_err(gr_chan_send(&c, NULL, GR_FOREVER), EINVAL);
	assert_err(gr_chan_destroy(&c), EINVAL);

	/* The kill rule: a killed fiber's waiting calls fail even when the
	 * item is there; its pure tries still work. */
	assert_ok(gr_chan_init(&c, 2));
	assert_ok(gr_chan_trysend(&c, item(1)));
	assert_ok(gr_kill(gr_self()));
	assert_err(gr_chan_recv(&c, &it, GR_FOREVER), ECANCELED);
	assert_err(gr_chan_send(&c, item(2), GR_FOREVER), ECANCELED);
	assert_ok(gr_chan_recv(&c, &it, 0));
	cr_assert_eq(it, item(1));
	assert_ok(gr_chan_send(&c, item(2), 0));
	assert_ok(gr_kill_ack(GR_FOREVER));
	assert_ok(gr_chan_recv(&c, &it, GR_FOREVER));
	cr_assert_eq(it, item(2));
	assert_ok(gr_chan_destroy(&c));
}

/* ------------------------------------------------------------ two threads */

/* Senders each send their own ascending range of ids; receivers take until
 * the channel is closed (by the last sender to finish) and check that each
 * id arrives exactly once, and each sender's ids in order. */
enum { MAX_SENDERS = 4, PER_SENDER = 400, MAX_ROLES = 8 };

struct flow {
	gr_chan *c;
	atomic_int senders_left;
	atomic_int seen[MAX_SENDERS * PER_SENDER];
	atomic_int errors;          /* unexpected results */
	atomic_int first_error;
	atomic_int order_errors;
	atomic_int received;
};

struct role {
	struct flow *f;
	int sender;                 /* 1: sends range `index`; 0: receives */
	int index;
};

static void flow_error(struct flow *f, int r)
{
	int zero = 0;

	atomic_fetch_add(&f->errors, 1);
	atomic_compare_exchange_strong(&f->first_error, &zero, r);
}

static void *role_run(void *arg)
{
	struct role *ro = arg;
	struct flow *f = ro->f;

	if (ro->sender) {
		for (uintptr_t k = 0; k < PER_SENDER; k++) {
			int r = gr_chan_send(f->c, item((uintptr_t)ro->index * PER_SENDER + k), GR_FOREVER);

			if (r)
				flow_error(f, r);
		}
		if (atomic_fetch_sub(&f->senders_left, 1) == 1)
			gr_chan_close(f->c);
		return NULL;
	}
	long last[MAX_SENDERS];
	for (int i = 0; i < MAX_SENDERS; i++)
		last[i] = -1;
	for (;;) {
		void *it = NULL;
		int r = gr_chan_recv(f->c, &it, GR_FOREVER);

		if (r == -EPIPE)
			return NULL;
		if (r) {
			flow_error(f, r);
			return NULL;
		}
		long id = (long)((uintptr_t)it - 1);
		if (id < 0 || id >= MAX_SENDERS * PER_SENDER) {
			flow_error(f, -ERANGE);
			continue;
		}
		int s = (int)(id / PER_SENDER);
		if (id <= last[s])
			atomic_fetch_add(&f->order_errors, 1);
		last[s] = id;
		atomic_fetch_add(&f->seen[id], 1);
		atomic_fetch_add(&f->received, 1);
	}
}

/* One thread's part: its roles, as fibers of its hub, or the one role of
 * a plain thread, run directly. */
struct side {
	struct role roles[MAX_ROLES];
	int n;
	int plain;
	int spawn_errors;
};

static void side_run(void *arg)
{
	struct side *sd = arg;
	gr_fiber *f[MAX_ROLES];

	if (sd->plain) {
		role_run(&sd->roles[0]);
		return;
	}
	for (int i = 0; i < sd->n; i++)
		f[i] = gr_spawn(role_run, &sd->roles[i]);
	for (int i = 0; i < sd->n; i++) {
		if (!f[i] || gr_join(f[i], NULL, GR_FOREVER) != 0)
			sd->spawn_errors++;
	}
}

/* Run `ns` senders and `nr` receivers over a channel of `cap`: the
 * senders on this thread's hub (or, if plain_senders, on one plain
 * thread), the receivers on another thread (a hub's fibers, or one plain
 * thread if plain_receivers). */
static void run_flow(size_t cap, int ns, int nr, int plain_senders, int plain_receivers)
{
	static struct flow f;
	static struct side senders, receivers;
	struct grt_thread ws, wr;
	gr_chan c;

	memset(&f, 0, sizeof(f));
	assert_ok(gr_chan_init(&c, cap));
	f.c = &c;
	atomic_store(&f.senders_left, ns);
	senders = (struct side){ .n = ns, .plain = plain_senders };
	receivers = (struct side){ .n = nr, .plain = plain_receivers };
	for (int i = 0; i < ns; i++)
		senders.roles[i] = (struct role){ .f = &f, .sender = 1, .index = i };
	for (int i = 0; i < nr; i++)
		receivers.roles[i] = (struct role){ .f = &f, .sender = 0, .index = i };

	grt_thread_start(&wr, !plain_receivers, side_run, &receivers);
	if (plain_senders) {
		grt_thread_start(&ws, 0, side_run, &senders);
		grt_thread_join(&ws);
	} else {
		side_run(&senders);
	}
	grt_thread_join(&wr);

	const char *what = cap == GR_CHAN_UNBOUNDED ? "unbounded" : cap == 0 ? "rendezvous" : "bounded";
	cr_assert_eq(senders.spawn_errors + receivers.spawn_errors, 0);
	cr_assert_eq(atomic_load(&f.errors), 0, "%s (%zu): %d errors, first %s", what, cap,
		     atomic_load(&f.errors), strerror(-atomic_load(&f.first_error)));
	cr_assert_eq(atomic_load(&f.order_errors), 0, "%s: a sender's items out of order", what);
	cr_assert_eq(atomic_load(&f.received), ns * PER_SENDER, "%s: %d of %d received", what,
		     atomic_load(&f.received), ns * PER_SENDER);
	for (int id = 0; id < ns * PER_SENDER; id++)
		cr_assert_eq(atomic_load(&f.seen[id]), 1, "%s: item %d seen %d times", what, id,
			     atomic_load(&f.seen[id]));
	assert_ok(gr_chan_destroy(&c));
}

Test(chan, every_capacity_between_two_hubs)
{
	for (size_t i = 0; i < NCAPS; i++) {
		run_flow(capacities[i], 1, 1, 0, 0); /* strict FIFO: one each */
		run_flow(capacities[i], 3, 4, 0, 0);
	}
}

Test(chan, every_capacity_between_a_hub_and_a_plain_thread)
{
	for (size_t i = 0; i < NCAPS; i++) {
		run_flow(capacities[i], 1, 3, 1, 0); /* plain sender, fibers receive */
		run_flow(capacities[i], 3, 1, 0, 1); /* fibers send, plain receiver */
	}
}

/* ------------------------------------------------------------ close */

struct waiter {
	gr_chan *c;
	int send;                   /* wait in send (else recv) */
	int64_t deadline;
	int rc;
	void *got;
	atomic_int parked;          /* about to wait (set just before the call) */
};

static void *wait_once(void *arg)
{
	struct waiter *w = arg;

	atomic_store(&w->parked, 1);
	if (w->send)
		w->rc = gr_chan_send(w->c, item(77), w->deadline);
	else
		w->rc = gr_chan_recv(w->c, &w->got, w->deadline);
	return NULL;
}

static void wait_plain(void *arg)
{
	wait_once(arg);
}

struct fibers_wait {
	struct waiter *w;
	int n;
};

static void wait_as_fibers(void *arg)
{
	struct fibers_wait *fw = arg;
	gr_fiber *f[8];

	for (int i = 0; i < fw->n; i++)
		f[i] = gr_spawn(wait_once, &fw->w[i]);
	for (int i = 0; i < fw->n; i++)
		if (f[i])
			gr_join(f[i], NULL, GR_FOREVER);
}

/* Wait until the channel holds `n` waiters of its own count: len does not
 * show waiters, so watch for the waiters' call and then a little longer. */
static void await_waiting(struct waiter *w, int n)
{
	for (int i = 0; i < n; i++)
		grt_await_flag(&w[i].parked, "a waiter to start");
	/* They called; give their threads time to park (a wrong guess only
	 * makes the test weaker, never wrong: a late one sees EPIPE too). */
	assert_ok(gr_sleep(20 * GR_MSEC));
}

/* Three waiters on c, in send or recv: two fibers of another hub and a
 * plain thread; then close: each must get EPIPE. */
static void close_under_waiters(gr_chan *c, int send)
{
	struct waiter w[3];
	struct fibers_wait fw = { .w = w, .n = 2 };
	struct grt_thread hubw, plain;

	memset(w, 0, sizeof(w));
	for (int i = 0; i < 3; i++)
		w[i] = (struct waiter){ .c = c, .send = send, .deadline = GR_FOREVER };
	grt_thread_start(&hubw, 1, wait_as_fibers, &fw);
	grt_thread_start(&plain, 0, wait_plain, &w[2]);
	await_waiting(w, 3);
	assert_ok(gr_chan_close(c));
	grt_thread_join(&hubw);
	grt_thread_join(&plain);
	for (int i = 0; i < 3; i++)
		assert_err(w[i].rc, EPIPE);
}

Test(chan, close_wakes_receivers_on_other_threads_and_senders_too)
{
	gr_chan c;
	void *it;

	/* Receivers of an empty channel. */
	assert_ok(gr_chan_init(&c, 2));
	close_under_waiters(&c, 0);
	assert_err(gr_chan_send(&c, item(1), GR_FOREVER), EPIPE);
	assert_err(gr_chan_trysend(&c, item(1)), EPIPE);
	assert_ok(gr_chan_close(&c)); /* twice is harmless */
	assert_ok(gr_chan_destroy(&c));

	/* Senders on a full channel: queued items stay for the receivers,
	 * the waiting senders' items are refused. */
	assert_ok(gr_chan_init(&c, 2));
	assert_ok(gr_chan_trysend(&c, item(1)));
	assert_ok(gr_chan_trysend(&c, item(2)));
	close_under_waiters(&c, 1);
	assert_ok(gr_chan_recv(&c, &it, GR_FOREVER));
	cr_assert_eq(it, item(1));
	assert_ok(gr_chan_tryrecv(&c, &it));
	cr_assert_eq(it, item(2));
	assert_err(gr_chan_tryrecv(&c, &it), EPIPE);
	assert_err(gr_chan_recv(&c, &it, GR_FOREVER), EPIPE);
	assert_ok(gr_chan_destroy(&c));
}

/* ------------------------------------------------------------ deadlines and kills */

Test(chan, deadlines_of_fibers_and_plain_threads)
{
	gr_chan c;
	struct waiter w;
	struct grt_thread plain;

	assert_ok(gr_chan_init(&c, 0));
	/* A plain thread's deadline. */
	w = (struct waiter){ .c = &c, .deadline = gr_now() + 30 * GR_MSEC };
	int64_t t0 = gr_now();
	grt_thread_start(&plain, 0, wait_plain, &w);
	grt_thread_join(&plain);
	assert_err(w.rc, ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 30 * GR_MSEC);
	/* A fiber's own deadline (eventlet's Timeout) bounds a send. */
	int64_t old = gr_deadline_set(gr_now() + 20 * GR_MSEC);
	assert_err(gr_chan_send(&c, item(1), GR_FOREVER), ETIMEDOUT);
	gr_deadline_set(old);
	/* Nothing was left behind by the waiters that gave up. */
	assert_err(gr_chan_tryrecv(&c, NULL), EAGAIN);
	assert_ok(gr_chan_destroy(&c));
}

Test(chan, a_killed_waiter_gives_up_and_loses_nothing)
{
	gr_chan c;
	struct waiter w = { 0 };
	void *it;

	assert_ok(gr_chan_init(&c, 0));
	w = (struct waiter){ .c = &c, .send = 1, .deadline = GR_FOREVER };
	gr_fiber *f = gr_spawn(wait_once, &w);
	assert_ok(gr_sleep(0));
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	assert_err(w.rc, ECANCELED);
	assert_err(gr_chan_tryrecv(&c, &it), EAGAIN); /* its item was not sent */

	/* Handed an item, then killed before it runs: the item is its. */
	w = (struct waiter){ .c = &c, .deadline = GR_FOREVER };
	f = gr_spawn(wait_once, &w);
	assert_ok(gr_sleep(0));
	assert_ok(gr_chan_trysend(&c, item(5)));   /* handed over, not run yet */
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	assert_ok(w.rc);
	cr_assert_eq(w.got, item(5));
	assert_ok(gr_chan_destroy(&c));
}

/* ------------------------------------------------------------ thread exit, destroy */

/* A thread whose fiber waits on the channel while the thread's main
 * context sits in a plain read(2): its hub does not run until the test
 * writes to the pipe. Then main returns and the thread exits. */
struct stuck {
	struct waiter w;
	int pipe[2];
	atomic_int in_read;
};

static void stuck_thread(void *arg)
{
	struct stuck *s = arg;
	char ch;

	gr_fiber *f = gr_spawn(wait_once, &s->w);
	if (!f)
		return;
	gr_sleep(0); /* the fiber runs and parks */
	atomic_store(&s->in_read, 1);
	if (read(s->pipe[0], &ch, 1) != 1)
		return;
	if (ch == 'r')
		gr_join(f, NULL, GR_FOREVER); /* run the hub: the fiber returns */
	/* else: exit with the fiber still inside its call */
}

static void stuck_start(struct stuck *s, struct grt_thread *wk, gr_chan *c, int send)
{
	memset(s, 0, sizeof(*s));
	s->w = (struct waiter){ .c = c, .send = send, .deadline = GR_FOREVER };
	cr_assert_eq(pipe2(s->pipe, O_CLOEXEC), 0);
	grt_thread_start(wk, 1, stuck_thread, s);
	grt_await_flag(&s->in_read, "the thread to block in read(2)");
}

static void stuck_release(struct stuck *s, struct grt_thread *wk, char how)
{
	cr_assert_eq(write(s->pipe[1], &how, 1), 1);
	grt_thread_join(wk);
	close(s->pipe[0]);
	close(s->pipe[1]);
}

Test(chan, destroy_is_ebusy_while_a_woken_waiter_has_not_returned)
{
	gr_chan c;
	struct stuck s;
	struct grt_thread wk;

	assert_ok(gr_chan_init(&c, 1));
	stuck_start(&s, &wk, &c, 0);
	assert_err(gr_chan_destroy(&c), EBUSY);    /* parked */
	assert_ok(gr_chan_send(&c, item(3), GR_FOREVER)); /* handed over */
	assert_err(gr_chan_destroy(&c), EBUSY);    /* woken, not returned */
	stuck_release(&s, &wk, 'r');
	assert_ok(s.w.rc);
	cr_assert_eq(s.w.got, item(3));
	assert_ok(gr_chan_destroy(&c));
}

Test(chan, a_waiter_whose_thread_exits_is_counted_out)
{
	gr_chan c;
	struct stuck s;
	struct grt_thread wk;
	void *it;

	/* A receiver still waiting when its thread exits. */
	assert_ok(gr_chan_init(&c, 1));
	stuck_start(&s, &wk, &c, 0);
	stuck_release(&s, &wk, 'x');
	assert_ok(gr_chan_trysend(&c, item(1))); /* queued: nobody waits now */
	assert_ok(gr_chan_tryrecv(&c, &it));
	cr_assert_eq(it, item(1));
	assert_ok(gr_chan_destroy(&c));

	/* A sender waiting on a full channel: its item never arrives. */
	assert_ok(gr_chan_init(&c, 1));
	assert_ok(gr_chan_trysend(&c, item(1)));
	stuck_start(&s, &wk, &c, 1);
	stuck_release(&s, &wk, 'x');
	assert_ok(gr_chan_tryrecv(&c, &it));
	cr_assert_eq(it, item(1));
	assert_err(gr_chan_tryrecv(&c, &it), EAGAIN);
	assert_ok(gr_chan_destroy(&c));

	/* A receiver handed an item, whose thread exits before it runs: the
	 * item goes with the thread, and the channel is not left busy. */
	assert_ok(gr_chan_init(&c, 0));
	stuck_start(&s, &wk, &c, 0);
	assert_ok(gr_chan_trysend(&c, item(9)));
	stuck_release(&s, &wk, 'x');
	assert_err(gr_chan_tryrecv(&c, &it), EAGAIN);
	assert_ok(gr_chan_destroy(&c));
}

/* ------------------------------------------------------------ notifier */

Test(chan, notifier_coalesces_fires_until_taken)
{
	gr_notifier n;

	assert_ok(gr_notifier_init(&n));
	assert_err(gr_notifier_wait(&n, 0), ETIMEDOUT);
	for (int i = 0; i < 5; i++)
		assert_ok(gr_notifier_fire(&n));
	cr_assert_eq(gr_notifier_wait(&n, GR_FOREVER), 5, "five fires, one wake-up");
	assert_err(gr_notifier_wait(&n, 0), ETIMEDOUT);
	int64_t t0 = gr_now();
	assert_err(gr_notifier_wait(&n, t0 + 20 * GR_MSEC), ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC);
	assert_ok(gr_notifier_destroy(&n));
	assert_err(gr_notifier_fire(&n), EINVAL);
	assert_err(gr_notifier_wait(&n, 0), EINVAL);
	assert_err(gr_notifier_init(NULL), EINVAL);
}

struct firer {
	gr_notifier *n;
	int count;
	int rc;
};

static void fire_n(void *arg)
{
	struct firer *fr = arg;

	for (int i = 0; i < fr->count; i++) {
		int r = gr_notifier_fire(fr->n);

		if (r)
			fr->rc = r;
	}
}

struct nwaiter {
	gr_notifier *n;
	int64_t deadline;
	int rc;
	atomic_int started;
};

static void *nwait(void *arg)
{
	struct nwaiter *w = arg;

	atomic_store(&w->started, 1);
	w->rc = gr_notifier_wait(w->n, w->deadline);
	return NULL;
}

static void nwait_plain(void *arg)
{
	nwait(arg);
}

Test(chan, notifier_fired_from_other_threads_wakes_fibers_and_threads)
{
	gr_notifier n;
	struct firer fr;
	struct grt_thread wk;

	assert_ok(gr_notifier_init(&n));
	/* A fiber waits; a plain thread fires 1000 times: every fire is
	 * taken, in as few wake-ups as the timing allows. */
	int taken = 0, wakeups = 0;
	fr = (struct firer){ .n = &n, .count = 1000 };
	grt_thread_start(&wk, 0, fire_n, &fr);
	while (taken < 1000) {
		int r = gr_notifier_wait(&n, gr_now() + 5 * GR_SEC);

		cr_assert_gt(r, 0, "wait: %s after %d fires", strerror(-r), taken);
		taken += r;
		wakeups++;
	}
	grt_thread_join(&wk);
	assert_ok(fr.rc);
	cr_assert_eq(taken, 1000);
	cr_assert_leq(wakeups, 1000);
	assert_err(gr_notifier_wait(&n, 0), ETIMEDOUT);

	/* A plain thread waits; this fiber fires. */
	struct nwaiter w = { .n = &n, .deadline = GR_FOREVER };
	grt_thread_start(&wk, 0, nwait_plain, &w);
	grt_await_flag(&w.started, "the plain thread to wait");
	assert_ok(gr_sleep(10 * GR_MSEC));
	assert_ok(gr_notifier_fire(&n));
	grt_thread_join(&wk);
	cr_assert_eq(w.rc, 1);
	assert_ok(gr_notifier_destroy(&n));
}

Test(chan, notifier_serves_several_waiters_one_fire_each_in_order)
{
	gr_notifier n;
	struct nwaiter w[3];
	gr_fiber *f[3];

	assert_ok(gr_notifier_init(&n));
	for (int i = 0; i < 3; i++) {
		w[i] = (struct nwaiter){ .n = &n, .deadline = GR_FOREVER, .rc = -1 };
		f[i] = gr_spawn(nwait, &w[i]);
	}
	assert_ok(gr_sleep(0)); /* all three park */
	assert_err(gr_notifier_destroy(&n), EBUSY);
	assert_ok(gr_notifier_fire(&n));
	assert_ok(gr_sleep(0));
	cr_assert_eq(w[0].rc, 1);
	cr_assert_eq(w[1].rc, -1, "one fire woke two waiters");
	assert_ok(gr_kill(f[1]));
	assert_ok(gr_notifier_fire(&n));
	for (int i = 0; i < 3; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	assert_err(w[1].rc, ECANCELED);
	cr_assert_eq(w[2].rc, 1, "the fire went past the killed waiter to the next");
	assert_ok(gr_notifier_destroy(&n));
}

/* ------------------------------------------------------------ crowds */

/* Thousands of fibers of another hub wait on one channel at once: senders
 * on a full one, then receivers on an empty one, some with deadlines that
 * pass mid-crowd, some killed; the test's thread drains the senders' items
 * one by one, then closes under the receivers. Every item arrives exactly
 * once, every waiter gets an answer that matches what happened to it. */
enum { CROWD = 3000 };

struct crowd {
	gr_chan c;
	int send;
	atomic_int parked;
	int rc[CROWD];
	gr_fiber *f[CROWD];
	atomic_int ready;     /* the crowd's fibers are spawned */
};

struct crowd_member {
	struct crowd *cr;
	int i;
};

static void *crowd_wait(void *arg)
{
	struct crowd_member *m = arg;
	struct crowd *cr = m->cr;
	/* Every seventh waits only 5 ms: its deadline passes while others
	 * are handed items around it. */
	int64_t deadline = m->i % 7 == 3 ? gr_now() + 5 * GR_MSEC : gr_now() + 30 * GR_SEC;
	void *got = NULL;

	atomic_fetch_add(&cr->parked, 1);
	if (cr->send) {
		cr->rc[m->i] = gr_chan_send(&cr->c, item((uintptr_t)m->i), deadline);
	} else {
		cr->rc[m->i] = gr_chan_recv(&cr->c, &got, deadline);
		if (cr->rc[m->i] == 0)
			grt_fail("receiver %d got %p from a channel nobody sent to", m->i, got);
	}
	return NULL;
}

static void crowd_thread(void *arg)
{
	struct crowd *cr = arg;
	struct crowd_member *m = calloc(CROWD, sizeof(*m));

	for (int i = 0; i < CROWD; i++) {
		m[i] = (struct crowd_member){ .cr = cr, .i = i };
		cr->f[i] = gr_spawn(crowd_wait, &m[i]);
		if (!cr->f[i])
			grt_fail("spawn %d: %s", i, strerror(errno));
	}
	atomic_store(&cr->ready, 1);
	/* Every eleventh is killed once they all wait. */
	while (atomic_load(&cr->parked) < CROWD)
		gr_sleep(GR_MSEC);
	gr_sleep(10 * GR_MSEC);
	for (int i = 5; i < CROWD; i += 11)
		if (cr->f[i])
			gr_kill(cr->f[i]);
	for (int i = 0; i < CROWD; i++)
		if (cr->f[i] && gr_join(cr->f[i], NULL, gr_now() + 30 * GR_SEC) != 0)
			grt_fail("fiber %d never ended", i);
	free(m);
}

static void crowd_run(int send)
{
	struct crowd *cr = calloc(1, sizeof(*cr));
	struct grt_thread t;
	char *seen = calloc(CROWD, 1);
	int delivered = 0;
	void *it;

	cr->send = send;
	assert_ok(gr_chan_init(&cr->c, 1));
	if (send)
		assert_ok(gr_chan_trysend(&cr->c, item(CROWD))); /* full */
	grt_thread_start(&t, 1, crowd_thread, cr);
	grt_await_flag(&cr->ready, "the crowd to be spawned");
	while (atomic_load(&cr->parked) < CROWD)
		assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_sleep(30 * GR_MSEC)); /* they park; the short deadlines pass */
	if (send) {
		/* Drain until every sender has answered: those left waiting at
		 * the end are the killed and timed-out ones, already gone. */
		int r;
		while ((r = gr_chan_recv(&cr->c, &it, gr_now() + 300 * GR_MSEC)) == 0) {
			uintptr_t i = (uintptr_t)it - 1;

			cr_assert_leq(i, CROWD, "item %p", it);
			if (i < CROWD) {
				cr_assert_eq(seen[i], 0, "item %zu delivered twice", (size_t)i);
				seen[i] = 1;
			}
			delivered++;
		}
		cr_assert_eq(r, -ETIMEDOUT);
	} else {
		assert_ok(gr_chan_close(&cr->c));
	}
	grt_thread_join(&t);
	grt_assert_no_failures();
	int ok = 0, late = 0, killed = 0;
	for (int i = 0; i < CROWD; i++) {
		int rc = cr->rc[i];
		if (rc == 0)
			ok++;
		else if (rc == -ETIMEDOUT)
			late++;
		else if (rc == -ECANCELED)
			killed++;
		else
			cr_assert_eq(rc, send ? 0 : -EPIPE, "waiter %d: %d (%s)", i, rc, strerror(-rc));
		if (send)
			cr_assert_eq(seen[i], rc == 0, "sender %d: rc %d, item %s", i, rc,
				     seen[i] ? "delivered" : "not delivered");
		if (rc == -ETIMEDOUT)
			cr_assert_eq(i % 7, 3, "waiter %d timed out", i);
	}
	cr_assert_gt(late, 0, "no short deadline passed mid-crowd");
	cr_assert_gt(killed, 0, "no kill landed mid-wait");
	if (send)
		cr_assert_eq(delivered, ok + 1, "%d delivered, %d senders ok", delivered, ok);
	assert_ok(gr_chan_destroy(&cr->c));
	free(seen);
	free(cr);
}

Test(chan, thousands_of_senders_of_another_hub_wait_on_a_full_channel)
{
	crowd_run(1);
}

Test(chan, thousands_of_receivers_of_another_hub_are_closed_under)
{
	crowd_run(0);
}
