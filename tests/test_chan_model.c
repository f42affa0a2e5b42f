/* test_chan_model.c — randomized, model-checked senders and receivers on a
 * gr_chan shared by three threads: this test's hub, a second hub, and a
 * plain thread without one.
 *
 * Each round picks a capacity (rendezvous, small, unbounded), puts sender
 * and receiver fibers on both hubs and one sender or receiver on the plain
 * thread, with random deadlines (forever, try, past, within 300 us, the
 * fiber's own), try calls, and on each hub a killer fiber that kills that
 * hub's senders and receivers at random moments: while they wait, while a
 * wake from the other thread is on its way, after a hand-off.
 *
 * The model: an item whose send returned 0 was delivered, any other result
 * means it was not. At the end (channel closed and drained) every delivered
 * item was received exactly once and no other item was received at all.
 * Every fiber and thread must end: the last receiver to end closes the
 * channel (senders must not wait for receivers that are gone), and so does
 * the last sender (receivers must not wait for items that will not come).
 *
 * The seed is printed; GRT_SEED=<n> replays the random choices (not the
 * interleaving, which timing decides). GRT_ROUNDS=<n> sets the rounds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(chan_model);

enum {
	HUBS = 2,                       /* this thread's and one more */
	MAX_SENDERS = 3,                /* per hub */
	MAX_RECEIVERS = 3,              /* per hub */
	MAX_PER_SENDER = 40,
	MAX_ITEMS = (HUBS * MAX_SENDERS + 1) * MAX_PER_SENDER,
};

/* A plain thread has no fibers to let run: it pauses in the kernel. */
static int random_pause(int plain)
{
	if (plain) {
		if (grt_pick(4) == 0)
			usleep(grt_pick(50));
		return 0;
	}
	return grt_random_pause();
}

/* ------------------------------------------------------------ the world */

struct world {
	gr_chan c;
	atomic_int senders_left, receivers_left;
	int nitems;
	uint8_t delivered[MAX_ITEMS];   /* written only by the item's sender */
	atomic_uchar received[MAX_ITEMS];
	atomic_int bogus;
	atomic_long sends_ok, sends_failed, recvs_ok, kills, timeouts, cancels;
};

struct role {
	struct world *w;
	int sender;
	int plain;
	int first, count;               /* a sender's items */
};

static void count_error(struct world *w, int r)
{
	if (r == -ETIMEDOUT)
		atomic_fetch_add(&w->timeouts, 1);
	else if (r == -ECANCELED)
		atomic_fetch_add(&w->cancels, 1);
}

static void *item_ptr(int id)
{
	return (void *)(uintptr_t)(id + 1);
}

static void send_role(struct role *ro)
{
	struct world *w = ro->w;

	for (int id = ro->first; id < ro->first + ro->count; id++) {
		int r;

		if (grt_pick(5) == 0) {
			r = gr_chan_trysend(&w->c, item_ptr(id));
		} else if (!ro->plain && grt_pick(6) == 0) {
			int64_t old = gr_deadline_set(gr_now() + (int64_t)grt_pick(200) * 1000);
			r = gr_chan_send(&w->c, item_ptr(id), grt_random_deadline());
			gr_deadline_set(old);
		} else {
			r = gr_chan_send(&w->c, item_ptr(id), grt_random_deadline());
		}
		if (r == 0) {
			w->delivered[id] = 1;
			atomic_fetch_add(&w->sends_ok, 1);
		} else {
			atomic_fetch_add(&w->sends_failed, 1);
			count_error(w, r);
		}
		if (r == -ECANCELED || r == -EPIPE)
			break;
		if (random_pause(ro->plain) == -ECANCELED)
			break;
	}
	if (atomic_fetch_sub(&w->senders_left, 1) == 1)
		gr_chan_close(&w->c); /* nothing more will come */
}

static void receive(struct world *w, void *it)
{
	uintptr_t id = (uintptr_t)it - 1;

	if (!it || id >= (uintptr_t)w->nitems) {
		atomic_fetch_add(&w->bogus, 1);
		return;
	}
	atomic_fetch_add(&w->received[id], 1);
	atomic_fetch_add(&w->recvs_ok, 1);
}

static void recv_role(struct role *ro)
{
	struct world *w = ro->w;

	for (;;) {
		void *it = NULL;
		int r = grt_pick(5) == 0 ? gr_chan_tryrecv(&w->c, &it) : gr_chan_recv(&w->c, &it, grt_random_deadline());

		if (r == 0)
			receive(w, it);
		else
			count_error(w, r);
		if (r == -ECANCELED || r == -EPIPE)
			break;
		if (random_pause(ro->plain) == -ECANCELED)
			break;
	}
	if (atomic_fetch_sub(&w->receivers_left, 1) == 1)
		gr_chan_close(&w->c); /* nobody will take what is sent */
}

static void *role_fiber(void *arg)
{
	struct role *ro = arg;

	if (ro->sender)
		send_role(ro);
	else
		recv_role(ro);
	return NULL;
}

/* One hub's part: its senders and receivers, and a killer among them. */
struct side {
	struct world *w;
	uint64_t seed;
	int ns, nr, kills;
	struct role roles[MAX_SENDERS + MAX_RECEIVERS];
	gr_fiber *f[MAX_SENDERS + MAX_RECEIVERS];
	int errors;
};

static void *killer(void *arg)
{
	struct side *sd = arg;
	int n = sd->ns + sd->nr;

	for (int i = 0; i < sd->kills; i++) {
		if (grt_pick(3))
			gr_sleep(grt_pick(2) ? 0 : (int64_t)grt_pick(400) * 1000);
		if (gr_kill(sd->f[grt_pick((unsigned)n)]) == 0)
			atomic_fetch_add(&sd->w->kills, 1);
	}
	return NULL;
}

static void side_run(struct side *sd)
{
	int n = sd->ns + sd->nr;

	grt_rng_seed(sd->seed);
	for (int i = 0; i < n; i++) {
		sd->f[i] = gr_spawn(role_fiber, &sd->roles[i]);
		if (!sd->f[i])
			sd->errors++;
	}
	gr_fiber *k = gr_spawn(killer, sd);
	if (!k || gr_join(k, NULL, GR_FOREVER) != 0)
		sd->errors++;
	for (int i = 0; i < n; i++)
		if (sd->f[i] && gr_join(sd->f[i], NULL, gr_now() + 30 * GR_SEC) != 0)
			sd->errors++;
}

static void *hub_thread(void *arg)
{
	struct side *sd = arg;

	if (gr_hub_use(grt_hub()) != 0 || !gr_hub_name()) {
		sd->errors++;
		return NULL;
	}
	side_run(sd);
	return NULL;
}

struct plain {
	struct role ro;
	uint64_t seed;
};

static void *plain_thread(void *arg)
{
	struct plain *pl = arg;

	grt_rng_seed(pl->seed);
	role_fiber(&pl->ro);
	return NULL;
}

static const size_t capacities[] = { 0, 1, 2, 5, GR_CHAN_UNBOUNDED };

static void round_run(uint64_t seed, uint64_t round, struct world *w, struct side sd[HUBS])
{
	struct plain pl;

	grt_rng_seed(seed ^ (round * 0x51ed27u));
	memset(w, 0, sizeof(*w));
	assert_ok(gr_chan_init(&w->c, capacities[grt_pick(5)]));
	int senders = 0, receivers = 0;
	for (int h = 0; h < HUBS; h++) {
		sd[h] = (struct side){ .w = w, .seed = grt_rng(), .ns = 1 + (int)grt_pick(MAX_SENDERS),
				       .nr = 1 + (int)grt_pick(MAX_RECEIVERS), .kills = (int)grt_pick(6) };
		for (int i = 0; i < sd[h].ns; i++) {
			int count = 1 + (int)grt_pick(MAX_PER_SENDER);

			sd[h].roles[i] = (struct role){ .w = w, .sender = 1, .first = w->nitems, .count = count };
			w->nitems += count;
		}
		for (int i = 0; i < sd[h].nr; i++)
			sd[h].roles[sd[h].ns + i] = (struct role){ .w = w };
		senders += sd[h].ns;
		receivers += sd[h].nr;
	}
	pl = (struct plain){ .seed = grt_rng(), .ro = { .w = w, .plain = 1, .sender = (int)grt_pick(2) } };
	if (pl.ro.sender) {
		pl.ro.first = w->nitems;
		pl.ro.count = 1 + (int)grt_pick(MAX_PER_SENDER);
		w->nitems += pl.ro.count;
		senders++;
	} else {
		receivers++;
	}
	atomic_store(&w->senders_left, senders);
	atomic_store(&w->receivers_left, receivers);

	pthread_t th, tp;
	cr_assert_eq(pthread_create(&th, NULL, hub_thread, &sd[1]), 0);
	cr_assert_eq(pthread_create(&tp, NULL, plain_thread, &pl), 0);
	side_run(&sd[0]);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(pthread_join(tp, NULL), 0);
	for (int h = 0; h < HUBS; h++)
		cr_assert_eq(sd[h].errors, 0, "seed %llu round %llu: hub %d: a fiber did not end",
			     (unsigned long long)seed, (unsigned long long)round, h);

	/* Closed by the last sender or receiver: drain what is left. */
	void *it;
	int r;
	while ((r = gr_chan_tryrecv(&w->c, &it)) == 0)
		receive(w, it);
	cr_assert_eq(r, -EPIPE, "seed %llu round %llu: draining: %s", (unsigned long long)seed,
		     (unsigned long long)round, strerror(-r));
	assert_ok(gr_chan_destroy(&w->c));

	cr_assert_eq(atomic_load(&w->bogus), 0, "seed %llu: items received that were never sent",
		     (unsigned long long)seed);
	for (int id = 0; id < w->nitems; id++) {
		int got = atomic_load(&w->received[id]);

		cr_assert_eq(got, w->delivered[id],
			     "seed %llu round %llu: item %d: send %s but received %d times",
			     (unsigned long long)seed, (unsigned long long)round, id,
			     w->delivered[id] ? "succeeded" : "failed", got);
	}
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

Test(chan_model, items_across_threads_are_received_exactly_once_under_kills_and_deadlines)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t seed = env_u64("GRT_SEED", (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32));
	uint64_t rounds = env_u64("GRT_ROUNDS", 400);
	static struct world w;
	static struct side sd[HUBS];
	long totals[6] = { 0 };

	fprintf(stderr, "test_chan_model (%s hub): seed %llu, %llu rounds (GRT_SEED, GRT_ROUNDS)\n",
		grt_hub(), (unsigned long long)seed, (unsigned long long)rounds);
	for (uint64_t i = 0; i < rounds; i++) {
		round_run(seed, i, &w, sd);
		totals[0] += atomic_load(&w.sends_ok);
		totals[1] += atomic_load(&w.sends_failed);
		totals[2] += atomic_load(&w.recvs_ok);
		totals[3] += atomic_load(&w.kills);
		totals[4] += atomic_load(&w.timeouts);
		totals[5] += atomic_load(&w.cancels);
	}
	fprintf(stderr, "test_chan_model: %ld sends ok, %ld failed, %ld receives, %ld kills, "
			"%ld timeouts, %ld cancelled calls\n",
		totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]);
	cr_assert_gt(totals[0], 0);
	cr_assert_gt(totals[3], 0, "no kill ever landed");
	cr_assert_gt(totals[4], 0, "no deadline ever expired");
}
