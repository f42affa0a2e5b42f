/* test_idle.c — how a hub with nothing to run waits for other threads
 * (runtime/idle.c): a post from another thread is never lost, whether the
 * hub spins for it or sleeps (only a sleeping hub is woken: the two sides
 * must never both miss each other), a spin does not hold up the hub's own
 * timers, and a spin that keeps missing stops. Runs once per hub.
 *
 * Every wait here has a deadline, so a lost wake-up fails the test with
 * ETIMEDOUT instead of hanging it. The spin is tuned per thread through
 * GREENRING_SPIN_US, which a hub reads when it is made: the tests run their
 * hubs on threads of their own, made after setting it. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"
#include "tinypoll.h"

GRT_SUITE(idle);

#define LONG_ENOUGH (10 * GR_SEC) /* a wait that takes this long lost its wake-up */

static int64_t within(int64_t ns)
{
	return gr_now() + ns;
}

/* May this process's threads run on two CPUs at once? Else no hub spins. */
static bool two_cpus(void)
{
	cpu_set_t cpus;

	return sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) >= 2;
}

static struct gr_hub_counters counters_now(void)
{
	struct gr_hub_counters c;

	if (gr_hub_counters(&c, sizeof(c)) != 0)
		memset(&c, 0, sizeof(c));
	return c;
}

/* ------------------------------------------------ a ping-pong of two hubs */

struct pingpong {
	gr_chan there, back;
	long rounds;
	struct gr_hub_counters side[2]; /* each thread's own, at its end */
};

static void ponger(void *arg)
{
	struct pingpong *pp = arg;

	for (long i = 0; i < pp->rounds; i++) {
		void *it;
		int rc = gr_chan_recv(&pp->there, &it, within(LONG_ENOUGH));

		if (rc == 0)
			rc = gr_chan_send(&pp->back, it, within(LONG_ENOUGH));
		if (rc != 0) {
			grt_fail("ponger, round %ld: %s", i, strerror(-rc));
			break;
		}
	}
	pp->side[1] = counters_now();
}

static void pinger(void *arg)
{
	struct pingpong *pp = arg;

	for (long i = 0; i < pp->rounds; i++) {
		void *it = NULL;
		int rc = gr_chan_send(&pp->there, (void *)(uintptr_t)(i + 1), within(LONG_ENOUGH));

		if (rc == 0)
			rc = gr_chan_recv(&pp->back, &it, within(LONG_ENOUGH));
		if (rc != 0 || it != (void *)(uintptr_t)(i + 1)) {
			grt_fail("pinger, round %ld: %s (got %p)", i, strerror(-rc), it);
			break;
		}
	}
	pp->side[0] = counters_now();
}

static void ping_pong(const char *spin_us, long rounds, struct pingpong *pp)
{
	struct grt_thread a, b;

	cr_assert_eq(setenv("GREENRING_SPIN_US", spin_us, 1), 0);
	memset(pp, 0, sizeof(*pp));
	pp->rounds = rounds;
	cr_assert_eq(gr_chan_init(&pp->there, 0), 0);
	cr_assert_eq(gr_chan_init(&pp->back, 0), 0);
	grt_fail_reset();
	grt_thread_start(&b, 1, ponger, pp);
	grt_thread_start(&a, 1, pinger, pp);
	grt_thread_join(&a);
	grt_thread_join(&b);
	unsetenv("GREENRING_SPIN_US");
	grt_assert_no_failures();
	cr_assert_eq(gr_chan_destroy(&pp->there), 0);
	cr_assert_eq(gr_chan_destroy(&pp->back), 0);
}

/* Every round trip is two posts to a hub that has just gone idle: the
 * window where the hub decides to sleep while a post lands is crossed
 * tens of thousands of times. */
Test(idle, a_ping_pong_of_two_sleeping_hubs_loses_no_wake_up)
{
	struct pingpong pp;

	ping_pong("0", 20000, &pp);
	for (int s = 0; s < 2; s++) {
		cr_assert_eq(pp.side[s].spins_caught + pp.side[s].spins_missed, 0,
			     "side %d spun with GREENRING_SPIN_US=0", s);
		/* The hubs did park and were woken from afar (how many times
		 * depends on who gets to the channel first). */
		cr_assert_gt(pp.side[s].remote_wakeups, 0, "side %d", s);
	}
}

Test(idle, a_ping_pong_of_two_spinning_hubs_loses_no_wake_up)
{
	struct pingpong pp;

	ping_pong("20", 20000, &pp);
	if (!two_cpus())
		return; /* no hub spins on one CPU: the first test's case */
	/* Both sides spin and catch: a partner that answers promptly is
	 * caught, even after both began by missing (the other thread not
	 * started yet). Before a sleep that a quick post ended could resume
	 * spinning, both backed off for ever and caught none of 20000. */
	for (int s = 0; s < 2; s++)
		cr_assert_geq(pp.side[s].spins_caught, 2000,
			      "side %d caught %llu posts by spinning (missed %llu) in 20000 rounds", s,
			      (unsigned long long)pp.side[s].spins_caught,
			      (unsigned long long)pp.side[s].spins_missed);
}

/* Posts from several plain threads at once, each hammering trysend: a
 * post lands at every moment of the receiving hub's loop, including the
 * one between its last look at its inbox and its sleep. With a long spin
 * (10 ms, the maximum) and with none. */
struct fan_in {
	gr_chan ch;
	atomic_long received;
	long per_sender;
};

static void *sender(void *arg)
{
	struct fan_in *fi = arg;
	int64_t give_up = within(LONG_ENOUGH);

	for (long i = 0; i < fi->per_sender;) {
		int rc = gr_chan_trysend(&fi->ch, (void *)1);

		if (rc == 0) {
			i++;
			give_up = within(LONG_ENOUGH); /* stuck only without progress */
		} else if (rc != -EAGAIN || gr_now() > give_up) {
			grt_fail("sender, item %ld: %s", i, strerror(-rc));
			break;
		}
	}
	return NULL;
}

static void receiver(void *arg)
{
	struct fan_in *fi = arg;
	long total = 4 * fi->per_sender;

	while (atomic_load(&fi->received) < total) {
		void *it;
		int rc = gr_chan_recv(&fi->ch, &it, within(LONG_ENOUGH));

		if (rc != 0) {
			grt_fail("receiver, after %ld: %s", atomic_load(&fi->received), strerror(-rc));
			return;
		}
		atomic_fetch_add(&fi->received, 1);
	}
}

Test(idle, posts_from_four_plain_threads_all_arrive)
{
	static const char *spins[] = { "0", "10000" };

	for (size_t k = 0; k < 2; k++) {
		struct fan_in fi = { .per_sender = 1000 };
		struct grt_thread hub;
		pthread_t plain[4];

		cr_assert_eq(setenv("GREENRING_SPIN_US", spins[k], 1), 0);
		cr_assert_eq(gr_chan_init(&fi.ch, 1), 0);
		grt_fail_reset();
		grt_thread_start(&hub, 1, receiver, &fi);
		for (int i = 0; i < 4; i++)
			cr_assert_eq(pthread_create(&plain[i], NULL, sender, &fi), 0);
		for (int i = 0; i < 4; i++)
			cr_assert_eq(pthread_join(plain[i], NULL), 0);
		grt_thread_join(&hub);
		unsetenv("GREENRING_SPIN_US");
		grt_assert_no_failures();
		cr_assert_eq(atomic_load(&fi.received), 4 * fi.per_sender, "spin %s us", spins[k]);
		cr_assert_eq(gr_chan_destroy(&fi.ch), 0);
	}
}

/* ------------------------------------------ the hub's own work goes on */

/* While the hub's one fiber waits on another thread (so the hub spins
 * whenever it goes idle), its other fibers' timers still fire on time,
 * and a deadline on that very wait still ends it. */
struct timers_side {
	gr_chan ch;
	int64_t slept_ns;
	int recv_rc;
	int64_t recv_took_ns;
};

static void *sleeper(void *arg)
{
	struct timers_side *ts = arg;

	for (int i = 0; i < 5; i++) {
		int64_t t0 = gr_now();

		if (gr_sleep(10 * GR_MSEC) != 0)
			grt_fail("gr_sleep failed");
		ts->slept_ns += gr_now() - t0;
	}
	return NULL;
}

static void timers_main(void *arg)
{
	struct timers_side *ts = arg;
	gr_fiber *f = gr_spawn(sleeper, ts);
	void *it;
	int64_t t0 = gr_now();

	if (!f) {
		grt_fail("gr_spawn: %s", strerror(errno));
		return;
	}
	/* Nobody ever sends: only the deadline ends it, after the sleeper. */
	ts->recv_rc = gr_chan_recv(&ts->ch, &it, within(100 * GR_MSEC));
	ts->recv_took_ns = gr_now() - t0;
	gr_join(f, NULL, GR_FOREVER);
}

Test(idle, timers_fire_while_the_hub_waits_on_another_thread)
{
	struct timers_side ts = { 0 };
	struct grt_thread t;

	cr_assert_eq(setenv("GREENRING_SPIN_US", "10000", 1), 0);
	cr_assert_eq(gr_chan_init(&ts.ch, 0), 0);
	grt_fail_reset();
	grt_thread_start(&t, 1, timers_main, &ts);
	grt_thread_join(&t);
	unsetenv("GREENRING_SPIN_US");
	grt_assert_no_failures();
	/* Five 10 ms sleeps: each late by at most one spin (10 ms here) and
	 * the machine's noise. */
	cr_assert_geq(ts.slept_ns, 50 * GR_MSEC);
	cr_assert_lt(ts.slept_ns, 50 * GR_MSEC + 5 * 10 * GR_MSEC + 200 * GR_MSEC, "slept %lld ms",
		     (long long)(ts.slept_ns / GR_MSEC));
	cr_assert_eq(ts.recv_rc, -ETIMEDOUT);
	cr_assert_geq(ts.recv_took_ns, 100 * GR_MSEC);
	cr_assert_lt(ts.recv_took_ns, 400 * GR_MSEC, "the deadline ended the wait after %lld ms",
		     (long long)(ts.recv_took_ns / GR_MSEC));
	cr_assert_eq(gr_chan_destroy(&ts.ch), 0);
}

/* ------------------------------------------------ a spin that misses stops */

/* Posts that come 5 ms apart: a 20 us spin misses every one of them. After
 * the first miss the hub sleeps through the spells that follow (16, then
 * 32, ...), so ten posts cost one or two missed spins, not ten. */
struct late_posts {
	gr_chan ch;
	struct gr_hub_counters c;
};

static void late_receiver(void *arg)
{
	struct late_posts *lp = arg;

	for (int i = 0; i < 10; i++) {
		void *it;
		int rc = gr_chan_recv(&lp->ch, &it, within(LONG_ENOUGH));

		if (rc != 0) {
			grt_fail("receiver, post %d: %s", i, strerror(-rc));
			return;
		}
	}
	lp->c = counters_now();
}

Test(idle, a_spin_that_keeps_missing_stops)
{
	struct late_posts lp;
	struct grt_thread t;

	memset(&lp, 0, sizeof(lp));
	cr_assert_eq(setenv("GREENRING_SPIN_US", "20", 1), 0);
	cr_assert_eq(gr_chan_init(&lp.ch, 16), 0);
	grt_fail_reset();
	grt_thread_start(&t, 1, late_receiver, &lp);
	for (int i = 0; i < 10; i++) {
		cr_assert_eq(gr_sleep(5 * GR_MSEC), 0);
		cr_assert_eq(gr_chan_send(&lp.ch, (void *)1, within(LONG_ENOUGH)), 0);
	}
	grt_thread_join(&t);
	unsetenv("GREENRING_SPIN_US");
	grt_assert_no_failures();
	/* A spin may catch a post when its thread was held up 5 ms in the
	 * middle of it; it may not keep spinning after misses. */
	cr_assert_leq(lp.c.spins_missed, 2, "%llu spins missed out of 10 posts",
		      (unsigned long long)lp.c.spins_missed);
	/* (Whether it spun at all depends on the receiver's thread being
	 * parked before the first post, which a loaded machine may delay:
	 * the ping-pong tests above assert that spins happen.) */
	cr_assert_eq(gr_chan_destroy(&lp.ch), 0);
}

/* ------------------------------------------------ only a sleeper is woken */

/* Another thread posts to a hub that never sleeps (a fiber of it yields
 * all along): the hub finds every post on its own loop turns, and nobody
 * calls its backend's wake(). Counted on tinypoll, the third-party hub of
 * the tests, whatever hub this run is for: before idle.c every post that
 * found the inbox empty called wake(). */
struct busy_hub {
	gr_chan ch;
	long items;
	atomic_int busy;            /* the yielding fiber runs */
	atomic_int stop;
	long received;
	int use_rc;
};

static void *yielder(void *arg)
{
	struct busy_hub *bh = arg;

	atomic_store(&bh->busy, 1);
	while (!atomic_load(&bh->stop))
		if (gr_sleep(0) != 0) {
			grt_fail("gr_sleep(0) failed");
			break;
		}
	return NULL;
}

static void *busy_receiver(void *arg)
{
	struct busy_hub *bh = arg;

	for (long i = 0; i < bh->items; i++) {
		void *it;
		int rc = gr_chan_recv(&bh->ch, &it, within(LONG_ENOUGH));

		if (rc != 0) {
			grt_fail("receiver, item %ld: %s", i, strerror(-rc));
			break;
		}
		bh->received++;
	}
	return NULL;
}

static void busy_hub_main(void *arg)
{
	struct busy_hub *bh = arg;

	bh->use_rc = gr_hub_use_ops(&grt_tinypoll_ops);
	if (bh->use_rc != 0)
		return;
	gr_fiber *r = gr_spawn(busy_receiver, bh);
	gr_fiber *y = gr_spawn(yielder, bh);

	if (!r || !y) {
		grt_fail("gr_spawn: %s", strerror(errno));
		atomic_store(&bh->stop, 1);
	}
	if (r)
		gr_join(r, NULL, GR_FOREVER);
	atomic_store(&bh->stop, 1);
	if (y)
		gr_join(y, NULL, GR_FOREVER);
}

Test(idle, a_hub_that_is_running_is_not_woken)
{
	struct busy_hub bh = { .items = 2000 };
	struct grt_thread t;

	cr_assert_eq(gr_chan_init(&bh.ch, 0), 0);
	grt_fail_reset();
	grt_thread_start(&t, 1, busy_hub_main, &bh);
	grt_await_flag(&bh.busy, "the hub's yielding fiber");
	long wakes = atomic_load(&grt_tp_stats.wakes);
	for (long i = 0; i < bh.items; i++)
		cr_assert_eq(gr_chan_send(&bh.ch, (void *)1, within(LONG_ENOUGH)), 0, "item %ld", i);
	long during = atomic_load(&grt_tp_stats.wakes) - wakes;
	grt_thread_join(&t);
	cr_assert_eq(bh.use_rc, 0, "gr_hub_use_ops: %s", strerror(-bh.use_rc));
	grt_assert_no_failures();
	cr_assert_eq(bh.received, bh.items);
	cr_assert_eq(during, 0, "%ld wake() calls for %ld posts to a hub that never slept", during,
		     bh.items);
	cr_assert_eq(gr_chan_destroy(&bh.ch), 0);
}
