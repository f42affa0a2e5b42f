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

void gr__switch_arrived(struct gr__hub *hub, gr_fiber *self, gr__transfer t)
{
	gr_fiber *prev = t.data;

#ifdef GR__ASAN
	const void *bottom = NULL;
	size_t size = 0;

	__sanitizer_finish_switch_fiber(self->san.fake_stack, &bottom, &size);
	if (prev->is_root) {
		prev->san.stack_bottom = bottom;
		prev->san.stack_size = size;
	}
#else
	(void)self;
#endif
	if (prev->state != GR__FIBER_DEAD)
		prev->ctx = t.fctx;
	else if (prev->detached)
		gr__fiber_release_stack(hub, prev); /* we are off its stack now */
}

/* ------------------------------------------------------------ lifecycle */

void gr__fiber_release_stack(struct gr__hub *hub, gr_fiber *f)
{
	if (f->all_prev)
		f->all_prev->all_next = f->all_next;
	else if (hub->all == f)
		hub->all = f->all_next;
	if (f->all_next)
		f->all_next->all_prev = f->all_prev;
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
	if (!gr__waitq_empty(&self->joiners))
		gr__wake(gr__waitq_first(&self->joiners), 0);
	gr__hub_fiber_ended(hub);
	gr__schedule(hub, true);
	__builtin_unreachable();
}

static void fiber_main(gr__transfer t)
{
	struct gr__hub *hub = gr__hub_peek();
	gr_fiber *self = hub->current;

	gr__switch_arrived(hub, self, t);
	/* Killed before it ever ran: its body never runs. */
	if (!self->killed)
		self->result = self->fn(self->arg);
	fiber_exit(hub, self);
}

static bool valid_fiber(const gr_fiber *f)
{
	return f && f->magic == FIBER_MAGIC;
}

gr_fiber *gr_spawn_with(const struct gr_spawn_opts *opts, void *(*fn)(void *), void *arg)
{
	int err = 0;
	struct gr__hub *hub;

	if (!fn) {
		errno = EINVAL;
		return NULL;
	}
	hub = gr__hub_get(&err);
	if (!hub) {
		errno = -err;
		return NULL;
	}
	if (hub->current == hub->loop) {
		errno = EPERM;
		return NULL;
	}
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
	if (opts) {
		f->detached = opts->detached != 0;
		if (opts->name)
			snprintf(f->name, sizeof(f->name), "%s", opts->name);
	}
	/* make_fcontext takes the top of the usable stack and its size; the
	 * struct above it is not part of the frames. */
	char *usable_lo = (char *)s->base + s->guard;
	f->ctx = make_fcontext(f, (size_t)((char *)f - usable_lo), fiber_main);
	gr__sanitizer_fiber_init(f);
	f->all_next = hub->all;
	if (hub->all)
		hub->all->all_prev = f;
	hub->all = f;
	hub->nfibers++;
	gr__ready(f);
	return f;
}

gr_fiber *gr_spawn(void *(*fn)(void *), void *arg)
{
	return gr_spawn_with(NULL, fn, arg);
}

int gr_spawn_n(void (*fn)(void *), void *arg)
{
	struct gr_spawn_opts opts = { .detached = 1 };
	/* The void-returning function runs through the same entry: calling it
	 * as void *(*)(void *) would be undefined, so it is wrapped. */
	if (!fn)
		return -EINVAL;
	gr_fiber *f = gr_spawn_with(&opts, gr__call_void, NULL);
	if (!f)
		return -errno;
	f->arg = arg;
	f->void_fn = fn;
	return 0;
}

void *gr__call_void(void *unused)
{
	gr_fiber *self = gr__self();

	(void)unused;
	self->void_fn(self->arg);
	return NULL;
}

/* Check f is a live fiber of this thread. */
static int own_fiber(const gr_fiber *f, struct gr__hub **hubp)
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
	int err = own_fiber(f, &hub);

	if (err)
		return err;
	gr_fiber *self = hub->current;
	if (f == self)
		return -EINVAL; /* greenring.h: "the caller itself"; main's own handle too */
	if (f->detached || !gr__waitq_empty(&f->joiners))
		return -EINVAL;
	/* One rule for every call that may switch: once killed it fails, even
	 * when it would not have had to wait (f stays joinable). */
	if (self->killed)
		return -ECANCELED;
	if (f->state != GR__FIBER_DEAD) {
		/* A join cycle can never end: refuse it at once. */
		for (const gr_fiber *g = f; g; g = g->joining) {
			if (g == self)
				return -EDEADLK;
		}
		struct gr__waiter w = { .what = "gr_join" };
		self->joining = f;
		err = gr__wait(&f->joiners, &w, deadline);
		self->joining = NULL;
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
	int err = own_fiber(f, &hub);

	if (err)
		return err;
	if (f->detached || f->is_root)
		return -EINVAL;
	if (!gr__waitq_empty(&f->joiners))
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
		int err = own_fiber(f, &hub);

		if (err)
			return err;
	}
	if (f->state == GR__FIBER_DEAD)
		return -ESRCH;
	if (f->killed)
		return 0;
	f->killed = true;
	if (f->state != GR__FIBER_PARKED)
		return 0; /* runnable or running: its next blocking call fails */
	if (f->park_kind == GR__PARK_OP) {
		gr__op_cancel(hub, f->park, ECANCELED);
	} else if (f->park_kind == GR__PARK_WAIT) {
		struct gr__waiter *w = f->park;

		if (w->queue && !w->uncancellable)
			gr__wake(w, -ECANCELED);
	}
	return 0;
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

static bool own_deadline_passed(const gr_fiber *self)
{
	return self->deadline != GR_FOREVER && self->deadline <= gr_now();
}

static int yield(void)
{
	struct gr__hub *hub = NULL;
	int err = gr__check_can_park(&hub);

	if (err)
		return err;
	gr_fiber *self = hub->current;
	if (self->killed)
		return -ECANCELED;
	if (own_deadline_passed(self))
		return -ETIMEDOUT;
	gr__ready(self);
	gr__switch_out(hub);
	return 0;
}

int gr_sleep_until(int64_t deadline)
{
	struct gr__hub *hub = NULL;
	int err = gr__check_can_park(&hub);

	if (err)
		return err;
	if (deadline < 0)
		return -EINVAL;
	gr_fiber *self = hub->current;
	if (self->killed)
		return -ECANCELED;
	if (own_deadline_passed(self))
		return -ETIMEDOUT;
	if (deadline <= gr_now())
		return yield();
	/* From here the fiber parks on a timeout even if the deadline passes
	 * before the backend sees it (gr__op_run submits it anyway): a sleep
	 * always lets the other fibers run, so a loop of tiny sleeps never
	 * spins alone. */
	struct gr_op op = { .kind = GR_OP_TIMEOUT, .fd = -1, .deadline = deadline };
	int64_t r = gr__op_run(hub, &op);
	/* A timeout succeeds by expiring; it is an error only if it was the
	 * fiber's own deadline that ended the sleep. */
	if ((r == 0 || r == -ETIMEDOUT) && self->deadline != GR_FOREVER && self->deadline < deadline)
		return -ETIMEDOUT;
	if (r == -ETIMEDOUT)
		return 0;
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
