/* micro_later.c — micro-benchmark cases of spawning later: the runtime's
 * design (gr_spawn_after: one heap and one server fiber per hub) beside
 * the obvious one (a fiber per timer, sleeping until its time), with 10k
 * timers pending: what a timer costs to arm and cancel (a server's
 * timeouts, nearly all cancelled), to fire, and in memory.
 */
#define _GNU_SOURCE
#include <stdio.h>

#include <greenring.h>

#include "micro.h"

#define PENDING 10000

static gr_later *laters[PENDING];
static gr_fiber *fibers[PENDING];

static void nothing(void *arg)
{
	(void)arg;
}

/* The fiber-per-timer design: sleep until the time, then do the work. */
static void *sleeper(void *arg)
{
	if (gr_sleep_until((int64_t)(intptr_t)arg) == 0)
		nothing(NULL);
	return NULL;
}

static int64_t far_deadline(int i)
{
	return gr_now() + 100 * GR_SEC + i;
}

static void arm_laters(int64_t (*when)(int))
{
	for (int i = 0; i < PENDING; i++)
		laters[i] = gr_spawn_at(when(i), nothing, NULL);
}

static void arm_fibers(int64_t (*when)(int))
{
	for (int i = 0; i < PENDING; i++)
		fibers[i] = gr_spawn(sleeper, (void *)(intptr_t)when(i));
	gr_sleep(0); /* each runs up to its park on the hub's timer */
}

static void cancel_laters(void)
{
	for (int i = 0; i < PENDING; i++)
		gr_later_cancel(laters[i]);
	gr_hub_join(GR_FOREVER); /* the server ends */
}

static void cancel_fibers(void)
{
	for (int i = 0; i < PENDING; i++)
		gr_kill(fibers[i]);
	for (int i = 0; i < PENDING; i++)
		gr_join(fibers[i], NULL, GR_FOREVER);
}

/* ns per timer of `round` (10k timers each), repeated for the budget. */
static double per_timer(int64_t budget_ns, void (*round)(void))
{
	int64_t start = gr_now(), elapsed;
	long n = 0;

	gr_sleep(0);
	do {
		round();
		n += PENDING;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	return (double)elapsed / (double)n;
}

static int64_t due_now(int i)
{
	(void)i;
	return gr_now();
}

/* Arm 10k due far away, then cancel them all: a server's timeouts. */
static void later_arm_cancel_round(void)
{
	arm_laters(far_deadline);
	gr_sleep(0); /* the server parks on the earliest */
	cancel_laters();
}

static void fiber_arm_cancel_round(void)
{
	arm_fibers(far_deadline);
	cancel_fibers();
}

/* Arm 10k due at once, until all have run. */
static void later_fire_round(void)
{
	arm_laters(due_now);
	gr_hub_join(GR_FOREVER);
	for (int i = 0; i < PENDING; i++)
		gr_later_detach(laters[i]);
}

static void fiber_fire_round(void)
{
	arm_fibers(due_now);
	for (int i = 0; i < PENDING; i++)
		gr_join(fibers[i], NULL, GR_FOREVER);
}

static double later_arm_cancel(int64_t budget_ns)
{
	return per_timer(budget_ns, later_arm_cancel_round);
}

static double fiber_arm_cancel(int64_t budget_ns)
{
	return per_timer(budget_ns, fiber_arm_cancel_round);
}

static double later_fire(int64_t budget_ns)
{
	return per_timer(budget_ns, later_fire_round);
}

static double fiber_fire(int64_t budget_ns)
{
	return per_timer(budget_ns, fiber_fire_round);
}

/* KiB of RSS per pending timer, 10k pending. */
static double rss(bool fiber_each)
{
	gr_sleep(0);
	long before = micro_rss_kib();
	if (fiber_each)
		arm_fibers(far_deadline);
	else
		arm_laters(far_deadline);
	gr_sleep(0);
	long after = micro_rss_kib();
	if (fiber_each)
		cancel_fibers();
	else
		cancel_laters();
	return (double)(after - before) / PENDING;
}

static double later_rss(int64_t budget_ns)
{
	(void)budget_ns;
	return rss(false);
}

static double fiber_rss(int64_t budget_ns)
{
	(void)budget_ns;
	return rss(true);
}

const struct micro_case micro_later_cases[] = {
	{ "later: arm+cancel, 10k pending", "ns", false, false, later_arm_cancel },
	{ "  fiber per timer: arm+cancel", "ns", false, false, fiber_arm_cancel },
	{ "later: fire 10k due at once", "ns", false, false, later_fire },
	{ "  fiber per timer: fire 10k", "ns", false, false, fiber_fire },
	{ "later: RSS per pending (10k)", "KiB", false, false, later_rss },
	{ "  fiber per timer: RSS (10k)", "KiB", false, false, fiber_rss },
	{ 0 },
};
