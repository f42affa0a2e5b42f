/* fiber.c — fibers: spawn, the context switch, join, detach, kill, names,
 * per-fiber deadlines and sleep.
 *
 * A fiber's struct lives at the top of its own stack, so a spawn is one pop
 * from the hub's stack pool and a parked fiber with a shallow stack costs
 * one page. A fiber that ends switches away for good; whoever it switched to
 * releases its stack (if detached) once it is no longer running on it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Tells a live fiber handle from a released one (a common misuse), so
 * gr_join/gr_kill/gr_detach can fail with EINVAL instead of corrupting. */
#define FIBER_MAGIC 0x67726662u /* "grfb" */

static atomic_ullong next_id = 1;

uint64_t gr__next_fiber_id(void)
{
	return atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------ switching */

void gr__sanitizer_fiber_init(gr_fiber *f)
{
#ifdef GR__ASAN
	f->san.stack_bottom = (char *)f->stack->base + f->stack->guard;
	f->san.stack_size = (size_t)((char *)f - (char *)f->san.stack_bottom);
	f->san.fake_stack = NULL;
#endif
#ifdef GR__TSAN
	f->san.tsan = __tsan_create_fiber(0);
#endif
	(void)f;
}

void gr__sanitizer_root_init(gr_fiber *root)
{
#ifdef GR__TSAN
	root->san.tsan = __tsan_get_current_fiber();
#endif
	/* ASan learns the thread's own stack bounds at the first switch away
	 * from it (gr__switch_arrived). */
	(void)root;
}

#ifdef GR__ASAN
void gr__switch_arrived_asan(gr_fiber *self, gr_fiber *prev)
{
	const void *bottom = NULL;
	size_t size = 0;

	__sanitizer_finish_switch_fiber(self->san.fake_stack, &bottom, &size);
	if (prev->is_root) {
		prev->san.stack_bottom = bottom;
		prev->san.stack_size = size;
	}
}
#endif

void gr__switch_left_dead(gr_fiber *prev)
{
	if (prev->detached)
		gr__fiber_release_stack(prev->hub, prev);
}

/* ------------------------------------------------------------ lifecycle */

void gr__fiber_release_stack(struct gr__hub *hub, gr_fiber *f)
{
	if (f->links)
		gr__links_drop(f); /* it never ended (thread exit): they never run */
	if (f != hub->loop)
		gr__list_remove(&hub->all, &f->all_link);
#ifdef GR__TSAN
	__tsan_destroy_fiber(f->san.tsan);
#endif
	f->magic = 0;
	gr__stack_put(hub->stacks, f->stack);
}

static _Noreturn void fiber_exit(struct gr__hub *hub, gr_fiber *self)
{
	self->state = GR__FIBER_DEAD;
	hub->nfibers--;
	hub->counters.ended++;
	if (!gr__waitq_empty(&self->joiners))
		gr__unpark(gr__waitq_first(&self->joiners), 0);
	if (!gr__waitq_empty(&hub->hub_joiners))
		gr__hub_fiber_ended(hub);
	gr__schedule(hub, true);
	__builtin_unreachable();
}

static void fiber_main(gr__transfer t)
{
	struct gr__hub *hub = gr__hub_peek();
	gr_fiber *self = hub->current;

	gr__switch_arrived(self, t);
	/* Killed before it ever ran: its body never runs. */
	if (!self->killed)
		self->result = self->fn(self->arg);
	if (hub != gr__hub_peek()) {
		/* This fiber called fork() and is returning in the child, where
		 * its hub was let go of (hub.c, fork_child): it has been the
		 * child's main context since, and its end is the child's, as a
		 * thread's return ends a process it is the last thread of. */
		exit(0);
	}
	/* Before it counts as ended: the callbacks' fibers are alive by the
	 * time gr_hub_join callers look. */
	if (self->links)
		gr__links_fire(hub, self);
	fiber_exit(hub, self);
}

static bool valid_fiber(const gr_fiber *f)
{
	return f && f->magic == FIBER_MAGIC;
}

/* gr__spawn_on's body, inlined into gr_spawn_with: a call between the two
 * was 5% of a pool spawn (callgrind). */
static inline __attribute__((always_inline)) gr_fiber *
spawn_on(struct gr__hub *hub, const struct gr_spawn_opts *opts, void *(*fn)(void *), void *arg)
{
	size_t size = opts ? opts->stack_size : 0;
	if (size > (size_t)SSIZE_MAX) {
		errno = EINVAL; /* a negative size cast to size_t: rounding it would wrap */
		return NULL;
	}
	if (size && size < GR__MIN_STACK_SIZE)
		size = GR__MIN_STACK_SIZE;
	struct gr__stack *s = gr__stack_get(hub->stacks, size);
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	/* 64-byte aligned at the top: one cache line for the hot fields. */
	gr_fiber *f = (gr_fiber *)(((uintptr_t)gr__stack_top(s) - sizeof(gr_fiber)) & ~(uintptr_t)63);
	memset(f, 0, sizeof(*f));
	f->magic = FIBER_MAGIC;
	f->hub = hub;
	f->stack = s;
	f->fn = fn;
	f->arg = arg;
	f->id = gr__next_fiber_id();
	f->deadline = GR_FOREVER;
	f->spawned = hub->clock;
	if (opts) {
		f->detached = opts->detached != 0;
		if (opts->deadline > 0)
			f->deadline = opts->deadline;
		if (opts->name)
			snprintf(f->name, sizeof(f->name), "%s", opts->name);
	}
	/* make_fcontext takes the top of the usable stack and its size; the
	 * struct above it is not part of the frames. */
	char *usable_lo = (char *)s->base + s->guard;
	f->ctx = make_fcontext(f, (size_t)((char *)f - usable_lo), fiber_main);
	gr__sanitizer_fiber_init(f);
	gr__list_push_front(&hub->all, &f->all_link);
	hub->nfibers++;
	hub->counters.spawned++;
	/* Queued in state NEW (zeroed above) until it first runs: the dump
	 * and the debugger tell a fiber that never ran from a runnable one. */
	gr__runq_push(hub, f);
	return f;
}

gr_fiber *gr__spawn_on(struct gr__hub *hub, const struct gr_spawn_opts *opts, void *(*fn)(void *),
		       void *arg)
{
	return spawn_on(hub, opts, fn, arg);
}

gr_fiber *gr_spawn_with(const struct gr_spawn_opts *opts, void *(*fn)(void *), void *arg)
{
	struct gr__hub *hub;

	if (!fn) {
		errno = EINVAL;
		return NULL;
	}
	int err = gr__hub_outside(&hub);
	if (err) {
		errno = -err;
		return NULL;
	}
	return spawn_on(hub, opts, fn, arg);
}

gr_fiber *gr_spawn(void *(*fn)(void *), void *arg)
{
	return gr_spawn_with(NULL, fn, arg);
}

/* The void-returning function runs through the same entry: calling it as
 * void *(*)(void *) would be undefined, so it is wrapped. */
static void *call_void(void *unused)
{
	gr_fiber *self = gr__self();

	(void)unused;
	self->void_fn(self->arg);
	return NULL;
}

int gr_spawn_n(void (*fn)(void *), void *arg)
{
	struct gr_spawn_opts opts = { .detached = 1 };

	if (!fn)
		return -EINVAL;
	gr_fiber *f = gr_spawn_with(&opts, call_void, NULL);
	if (!f)
		return -errno;
	f->arg = arg;
	f->void_fn = fn;
	return 0;
}

int gr__fiber_own(const gr_fiber *f, struct gr__hub **hubp)
{
	if (!valid_fiber(f))
		return -EINVAL;
	struct gr__hub *hub = gr__hub_peek();
	if (f->hub != hub)
		return -EPERM;
	*hubp = hub;
	return 0;
}

int gr_join(gr_fiber *f, void **result, int64_t deadline)
{
	struct gr__hub *hub;
	int err = gr__fiber_own(f, &hub);

	if (err)
		return err;
	gr_fiber *self = hub->current;
	if (f == self)
		return -EDEADLK; /* as pthread_join: it would wait for itself */
	/* One joiner at a time. The claim lasts from the start of a join to
	 * its release of f (or its failure): a fiber woken by f's end but not
	 * yet run still holds it, so no other join or detach can release f
	 * under it. */
	if (f->detached || f->joined_by)
		return -EINVAL;
	struct gr__park p = { .what = "gr_join" };
	if (f->state == GR__FIBER_DEAD) {
		/* Ended: nothing to wait for, but one rule for every call that
		 * may switch: a killed caller fails here too, unless it only
		 * tries (deadline 0), which always works on an ended fiber. */
		if (deadline != 0 && self->killed)
			return -ECANCELED;
	} else {
		err = gr__park_prepare(&hub, &p, deadline);
		if (err)
			return err;
		/* A join cycle can never end: refuse it at once. */
		for (const gr_fiber *g = f; g; g = g->joining) {
			if (g == self)
				return -EDEADLK;
		}
		f->joined_by = self;
		self->joining = f;
		err = gr__park_queue(hub, &p, &f->joiners);
		self->joining = NULL;
		f->joined_by = NULL;
		if (err)
			return err;
	}
	if (result)
		*result = f->result;
	gr__fiber_release_stack(hub, f);
	return 0;
}

int gr_detach(gr_fiber *f)
{
	struct gr__hub *hub;
	int err = gr__fiber_own(f, &hub);

	if (err)
		return err;
	if (f->detached || f->is_root)
		return -EINVAL;
	if (f->joined_by)
		return -EBUSY;
	if (f->state == GR__FIBER_DEAD) {
		gr__fiber_release_stack(hub, f);
		return 0;
	}
	f->detached = true;
	return 0;
}

int gr_kill(gr_fiber *f)
{
	struct gr__hub *hub;

	if (f && f->is_root) {
		hub = gr__hub_peek();
		if (f->hub != hub)
			return -EPERM;
	} else {
		int err = gr__fiber_own(f, &hub);

		if (err)
			return err;
	}
	if (f->state == GR__FIBER_DEAD)
		return -ESRCH;
	if (f->killed)
		return 0;
	f->killed = true;
	/* Runnable or running: its next blocking call fails. */
	if (f->state == GR__FIBER_PARKED)
		gr__park_interrupt(hub, f, ECANCELED, false);
	return 0;
}

int gr_kill_ack(int64_t cleanup_deadline)
{
	gr_fiber *self = gr__self();

	if (!self)
		return -ESRCH;
	if (!self->killed)
		return -ESRCH;
	self->killed = false;
	self->deadline = gr__deadline_min(self->deadline, cleanup_deadline < 0 ? GR_FOREVER
									     : cleanup_deadline);
	return 0;
}

int gr_killed(void)
{
	gr_fiber *self = gr__self();

	return self && self->killed;
}

gr_fiber *gr_self(void)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub) {
		errno = -err;
		return NULL;
	}
	return hub->current;
}

uint64_t gr_fiber_id(const gr_fiber *f)
{
	return f ? f->id : 0;
}

const char *gr_fiber_name(const gr_fiber *f)
{
	return f ? f->name : NULL;
}

int gr_fiber_set_name(gr_fiber *f, const char *name)
{
	if (!f || !name)
		return -EINVAL;
	snprintf(f->name, sizeof(f->name), "%s", name);
	return 0;
}

/* ------------------------------------------------------------ time */

int64_t gr_deadline_set(int64_t deadline)
{
	gr_fiber *self = gr_self();

	if (!self)
		return GR_FOREVER;
	int64_t old = self->deadline;
	self->deadline = deadline < 0 ? GR_FOREVER : deadline;
	return old;
}

int64_t gr_deadline_get(void)
{
	gr_fiber *self = gr__self();

	return self ? self->deadline : GR_FOREVER;
}

/* Let every other runnable fiber run once, and the hub reap. It parks on
 * nothing (the run queue is all), so the gate's checks alone apply. */
static __attribute__((noinline)) int yield_gated(void)
{
	struct gr__hub *hub = NULL;
	int64_t deadline;
	int err = gr__park_hub(&hub);

	if (!err)
		err = gr__park_check(hub->current, GR_FOREVER, false, &deadline);
	if (err)
		return err;
	gr__yield(hub);
	return 0;
}

/* The same; inline, and when the gate has nothing to check (no kill, no
 * deadline of the fiber's own, the hub ready) without a call but the
 * switch: then nothing lives across the jump, so the function saves no
 * register and builds no frame (bench/micro's yield). */
static inline __attribute__((always_inline)) int yield(void)
{
	struct gr__hub *hub = gr__park_hub_quick();

	if (__builtin_expect(!hub || hub->current->killed || hub->current->deadline != GR_FOREVER, 0))
		return yield_gated();
	gr__yield(hub);
	return 0;
}

int gr_sleep_until(int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_sleep" };
	int err = gr__park_hub(&hub);

	if (err)
		return err;
	if (deadline < 0)
		return -EINVAL;
	/* The sleep's own deadline is its goal, not a failure: only the
	 * fiber's deadline can fail it. */
	err = gr__park_begin(hub, &p, GR_FOREVER);
	if (err)
		return err;
	if (deadline <= gr_now())
		return yield();
	/* From here the fiber parks on a timeout even if the deadline passes
	 * before the backend sees it: a sleep always lets the other fibers
	 * run, so a loop of tiny sleeps never spins alone. */
	struct gr__op op = gr__op_init(GR_OP_TIMEOUT, -1);
	op.op.deadline = gr__deadline_min(deadline, p.deadline);
	int64_t r = gr__park_op(hub, &p, &op);
	/* A timeout succeeds by expiring; it is an error only if it was the
	 * fiber's own deadline that ended the sleep. */
	if (r == 0 || r == -ETIMEDOUT) {
		if (op.op.deadline >= deadline)
			return 0;
		if (r == 0)
			hub->counters.deadlines++; /* the gate counted only a timeout it mapped */
		return -ETIMEDOUT;
	}
	return (int)r;
}

int gr_sleep(int64_t ns)
{
	if (ns < 0)
		return -EINVAL;
	if (ns == 0)
		return yield();
	/* Saturate: gr_sleep(INT64_MAX) is "forever", not an overflow into
	 * the past (undefined, and it came back as -EINVAL). */
	int64_t now = gr_now();
	return gr_sleep_until(ns > INT64_MAX - now ? INT64_MAX : now + ns);
}
