/* idle.c — how a hub with nothing to run waits for work, and how another
 * thread that hands it work wakes it.
 *
 * Other threads hand a hub work through its two inboxes: fibers woken from
 * afar and requests (gr__hub_post), completions of the thread pool
 * (offload.c). Waking a hub asleep in its backend costs a system call on
 * each side (an eventfd write, and the read that re-arms it) and the
 * sleep's return; a hub that is running needs none of it, because it looks
 * at its inboxes on every loop turn. So:
 *
 * Only a sleeping hub is woken. Before a wait() that may block, the hub
 * sets `sleeping` and looks at its inboxes one last time; a poster pushes,
 * then looks at `sleeping`, and calls the backend's wake() only if it is
 * set. A full fence on each side between its write and its read (Dekker)
 * makes at least one of them see the other: either the hub finds the post
 * and does not block, or the poster wakes it. A poster that sees a stale
 * `sleeping` wakes a hub that is already awake: harmless (wake() makes the
 * next wait return at once).
 *
 * A hub that expects a post spins before it sleeps (Go's spinning threads,
 * glibc's adaptive mutexes). When nothing is runnable, nothing but timers
 * is in flight in the backend and a few fibers wait on other threads (a
 * channel, a notifier, a pool job), the post they wait for often comes
 * within microseconds: a channel ping-pong between two hubs then costs no
 * system call at all. The spin lasts at most GREENRING_SPIN_US (default
 * 20 us), and lets the scheduler run another thread of its CPU every 2 us
 * (sched_yield): on CPUs shared with other work the poster may be waiting
 * for this very CPU, and without the yield a spin holds it off until the
 * spin ends (a ping-pong of two hubs under a parallel build went from 9.6
 * to 40 us per round trip without it). A spin that misses is a bet lost:
 * the hub sleeps through the next 16 idle spells without spinning, twice as
 * many after each further miss (up to 4096). A catch resets that, and so
 * does a sleep that a post ended within a spin's reach of the spell's
 * start: the partner answers promptly after all (it was asleep itself, or
 * starting up), and without this two hubs that both began by missing
 * would keep sleeping in turn, each too late for the other's spin.
 *
 * The fence costs a locked instruction on every wait that may block, so a
 * hub takes it only when a post may come that counts on it: one for a fiber
 * of its own waiting on another thread (remote_waiting, counted by this
 * thread before the fiber is on the other thread's queue) or for a job on
 * the thread pool (offload.used, from the first). Requests (a dump, a
 * cross-thread gr_close) are rare, and their poster wakes the hub whether
 * or not it sleeps (gr__hub_request).
 *
 * Not spun for: many waiters (more than SPIN_WAITERS_MAX), whose sleep
 * gathers their posts into one wake-up where a spin would take them one
 * by one; operations in flight in the backend, whose completions the spin
 * would not see (a timer's is only late by the spin); a thread allowed one
 * CPU, whose partner could not run meanwhile.
 *
 * Every backend wait() is made here, and counted (hub->waits): drain.c's
 * hints hold only until the next one.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>

#include "internal.h"

#define SPIN_US_DEFAULT 20
#define SPIN_US_MAX 10000
/* Idle spells slept through after a spin that caught nothing: doubling
 * from MIN to MAX while spins keep failing. */
#define SPIN_BACKOFF_MIN 16u
#define SPIN_BACKOFF_MAX 4096u
/* A hub whose fibers wait on more posts than this sleeps: its sleep gathers
 * a batch of them (one wake-up for many), where a spin would take them one
 * by one, each a cache-line round trip between the two CPUs. */
#define SPIN_WAITERS_MAX 4u
/* A spinning hub lets the scheduler run another thread of its CPU this
 * often: its poster may be waiting for that CPU. */
#define SPIN_YIELD_NS 2000

void gr__hub_idle_init(struct gr__hub *hub)
{
	size_t us = gr__env_size("GREENRING_SPIN_US", SPIN_US_DEFAULT, 0, SPIN_US_MAX, false);
	cpu_set_t cpus;

	if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) < 2)
		us = 0;
	hub->spin_max = (int64_t)us * 1000;
	hub->spin_backoff = SPIN_BACKOFF_MIN;
	hub->waits = 1;
}

bool gr__hub_posted(struct gr__hub *hub)
{
	return atomic_load_explicit(&hub->inbox, memory_order_relaxed) ||
	       atomic_load_explicit(&hub->offload.done, memory_order_relaxed);
}

void gr__hub_wake(struct gr__hub *hub)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&hub->sleeping, memory_order_relaxed))
		(void)hub->ops->wake(hub->backend);
}

void gr__hub_wake_unasked(struct gr__hub *hub)
{
	(void)hub->ops->wake(hub->backend);
}

/* Could a post come that wakes this hub only if it sees `sleeping`? */
static bool posts_count_on_sleeping(const struct gr__hub *hub)
{
	return hub->remote_waiting > 0 || hub->offload.used;
}

int gr__hub_backend_wait(struct gr__hub *hub, int64_t timeout, int64_t deadline)
{
	bool may_block = timeout != 0;

	if (may_block && posts_count_on_sleeping(hub)) {
		atomic_store_explicit(&hub->sleeping, true, memory_order_relaxed);
		atomic_thread_fence(memory_order_seq_cst);
		if (gr__hub_posted(hub)) {
			/* Posted before the poster could see us asleep. */
			atomic_store_explicit(&hub->sleeping, false, memory_order_relaxed);
			may_block = false;
			timeout = 0;
		}
	}
	/* One that may block marks the hub idle for the monitor (an odd
	 * progress count): a hub asleep in its backend is waiting for work,
	 * not stuck behind a fiber. */
	if (may_block)
		gr__hub_progress(hub, 1);
	/* A new wait generation: whatever a fiber learnt of an fd's readiness
	 * before this harvest is stale after it (drain.c). Counted in twos
	 * from 1: odd, never the 0 that means "no hint", with no test. */
	hub->waits += 2;
	hub->queued = 0;
	int r = (hub->ops->caps & GR_HUB_CAP_WAIT_UNTIL) && timeout > 0
			? hub->ops->wait_until(hub->backend, timeout, deadline)
			: hub->ops->wait(hub->backend, timeout);
	if (may_block) {
		gr__hub_progress(hub, 1);
		atomic_store_explicit(&hub->sleeping, false, memory_order_relaxed);
	}
	return r;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

bool gr__hub_expects_post(const struct gr__hub *hub)
{
	/* Timers may be in flight (a deadline of the very wait on the other
	 * thread, a sleep): one that expires meanwhile is reaped when the spin
	 * ends, late by no more than the spin. */
	uint64_t timers = hub->counters.submitted[GR_OP_TIMEOUT] - hub->counters.completed[GR_OP_TIMEOUT];

	return hub->spin_max > 0 && hub->inflight == timers && hub->remote_waiting > 0 &&
	       hub->remote_waiting <= SPIN_WAITERS_MAX;
}

bool gr__hub_spin(struct gr__hub *hub, int64_t *since)
{
	int64_t start = gr_now();

	*since = start;
	if (hub->spin_skip > 0) {
		hub->spin_skip--;
		return false;
	}
	int64_t end = start + hub->spin_max, next_yield = start + SPIN_YIELD_NS;
	bool got = false;

	/* Idle for the monitor, as a wait() is. */
	gr__hub_progress(hub, 1);
	for (unsigned i = 1;; i++) {
		if (gr__hub_posted(hub)) {
			got = true;
			break;
		}
		cpu_relax();
		if (i % 64 != 0)
			continue;
		int64_t now = gr_now();
		if (now >= end)
			break;
		if (now >= next_yield) {
			/* The poster may be waiting for this very CPU. */
			sched_yield();
			next_yield = now + SPIN_YIELD_NS;
		}
	}
	gr__hub_progress(hub, 1);
	if (got) {
		hub->counters.spins_caught++;
		hub->spin_backoff = SPIN_BACKOFF_MIN;
	} else {
		/* The post comes late: sleep through the next spells, more of
		 * them each time the bet fails again. */
		hub->counters.spins_missed++;
		hub->spin_skip = hub->spin_backoff;
		if (hub->spin_backoff < SPIN_BACKOFF_MAX)
			hub->spin_backoff *= 2;
	}
	return got;
}

void gr__hub_slept(struct gr__hub *hub, int64_t since)
{
	/* A post that came within a spin's reach of the spell's start: the
	 * partner answers promptly (it was asleep itself, or starting up),
	 * and a spin next time would catch it. Spinning resumes at once, on
	 * both sides of a ping-pong, rather than after the backoff. */
	if (hub->spin_skip > 0 && gr__hub_posted(hub) && gr_now() - since <= hub->spin_max) {
		hub->spin_skip = 0;
		hub->spin_backoff = SPIN_BACKOFF_MIN;
	}
}
