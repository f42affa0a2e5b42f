/* hub.c — the per-thread hub: run queues, the loop, deadlock detection, a
 * backend that keeps failing, teardown at thread exit, and fork.
 *
 * The loop, one turn (hub_main):
 *   1. If nothing is runnable and nothing is in flight, the thread's main
 *      context waits on something only a fiber could provide: deadlock. Wake
 *      it with EDEADLK (it is the only fiber that can be parked then without
 *      an operation, see detect_deadlock).
 *   2. Ask the backend to submit what is batched and reap completions:
 *      without blocking when fibers are runnable, else until one completes.
 *      Completions make fibers runnable (appended to `next`).
 *   3. `next` becomes `now`: run each fiber of this turn once, in FIFO order.
 *      A fiber that parks or yields switches straight to the next one of the
 *      turn; the last switches back to the hub. A fiber made runnable during
 *      the turn (a yield included) runs in the next turn, after step 2, so a
 *      loop of gr_sleep(0) never starves I/O.
 * When nothing is in flight, a fiber at the end of a turn starts the next
 * turn itself instead of switching to the hub: step 2 would have nothing to
 * do, and a yield then costs one context switch instead of two.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* initial-exec: read from the SIGSEGV handler, where a lazy TLS allocation
 * would not be safe. */
__thread struct gr__hub *gr__tls_hub __attribute__((tls_model("initial-exec")));
#define tls_hub gr__tls_hub
static pthread_key_t hub_key;
static pthread_once_t hub_key_once = PTHREAD_ONCE_INIT;

static void hub_destroy(void *hub);

/* Every hub of the process, so that the child of a fork() can let go of the
 * rings and epoll sets of threads that do not exist in it, and so that the
 * monitor, the dump and a gr_close from another thread can reach every
 * hub (gr__hubs_visit). The lock is held across fork() (prepare/parent/
 * child), so the child finds the list whole. A hub is listed from its installation until its thread has let go
 * of its fibers, so a listed hub's thread is alive. The list itself
 * (gr__hubs) is defined in debugger.c, beside the table debuggers read it
 * through. */
static pthread_mutex_t hubs_lock = PTHREAD_MUTEX_INITIALIZER;

static void hubs_add(struct gr__hub *hub)
{
	pthread_mutex_lock(&hubs_lock);
	gr__list_push_back(&gr__hubs, &hub->proc_link);
	gr__fd_slot_take(hub);
	pthread_mutex_unlock(&hubs_lock);
}

/* A hub leaked at its thread's exit stays listed (fork still releases its
 * backend), but its thread is gone: tid 0 tells gr__hubs_visit to leave it
 * alone. */
static void hubs_orphan(struct gr__hub *hub)
{
	pthread_mutex_lock(&hubs_lock);
	hub->tid = 0;
	pthread_mutex_unlock(&hubs_lock);
}

static void hubs_remove(struct gr__hub *hub)
{
	pthread_mutex_lock(&hubs_lock);
	gr__list_remove(&gr__hubs, &hub->proc_link);
	gr__fd_slot_give(hub);
	pthread_mutex_unlock(&hubs_lock);
}

void gr__hubs_visit(void (*fn)(struct gr__hub *hub, void *arg), void *arg)
{
	pthread_mutex_lock(&hubs_lock);
	gr__list_foreach(it, &gr__hubs) {
		struct gr__hub *hub = gr__container(it, struct gr__hub, proc_link);

		if (hub->tid != 0)
			fn(hub, arg);
	}
	pthread_mutex_unlock(&hubs_lock);
}

static void fork_prepare(void)
{
	pthread_mutex_lock(&hubs_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&hubs_lock);
}

/* The child of fork() shares every parent hub's ring and epoll set through
 * the inherited fds: it must never touch them, only drop its references
 * (fini with after_fork). The child is like a process that forked from one
 * thread: only the code that called fork() goes on, as the main context of
 * a fresh hub made on first use. The parent's fibers, the forking thread's
 * other fibers included, do not exist in the child (they would resume the
 * parent's work twice: accept its connections, eat its sockets' data). Their
 * memory is left alone, since the code that forked may be running on one of
 * their stacks. A fiber that forked and then returns in the child was the
 * child's main context: fiber.c ends the child then, as a thread's return
 * ends a process it is the last thread of. */
static void fork_child(void)
{
	gr__list_foreach(it, &gr__hubs) {
		struct gr__hub *hub = gr__container(it, struct gr__hub, proc_link);

		gr__signal_fork_child(hub);
		hub->ops->fini(hub->backend, 1);
	}
	gr__hubs.first = gr__hubs.last = NULL;
	gr__fd_slots_after_fork();
	pthread_mutex_unlock(&hubs_lock);
	gr__stack_fork_child(tls_hub ? tls_hub->current : NULL);
	tls_hub = NULL;
	pthread_setspecific(hub_key, NULL);
}

/* exit() runs no thread's key destructor: the thread that ends the
 * process says its hub's counters here instead. */
static void counters_at_exit(void)
{
	if (tls_hub)
		gr__dump_exit_line(tls_hub);
}

static void make_key(void)
{
	pthread_key_create(&hub_key, hub_destroy);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
	if (gr__env_flag("GREENRING_DEBUG"))
		atexit(counters_at_exit);
}

gr_fiber *gr__self(void)
{
	return tls_hub ? tls_hub->current : NULL;
}

static void hub_main(gr__transfer t);

gr_fiber *gr__hub_loop_fiber(struct gr__hub *hub)
{
	if (hub->loop)
		return hub->loop;
	/* The loop runs backend code only: the default stack is ample. */
	struct gr__stack *s = gr__stack_get(hub->stacks, 0);
	if (!s)
		return NULL;
	gr_fiber *f = (gr_fiber *)(((uintptr_t)gr__stack_top(s) - sizeof(gr_fiber)) & ~(uintptr_t)63);
	memset(f, 0, sizeof(*f));
	f->hub = hub;
	f->stack = s;
	f->id = 0;
	f->deadline = GR_FOREVER;
	f->state = GR__FIBER_RUNNABLE;
	strcpy(f->name, "hub");
	f->ctx = make_fcontext(f, (size_t)((char *)f - ((char *)s->base + s->guard)), hub_main);
	gr__sanitizer_fiber_init(f);
	hub->loop = f;
	return f;
}

/* ------------------------------------------------------------ the loop */

static void detect_deadlock(struct gr__hub *hub)
{
	gr_fiber *root = &hub->root;

	/* Nothing runnable, nothing in flight and no fiber waits on another
	 * thread: every fiber waits on a wait queue of this hub, so only a
	 * fiber could wake another, and none can run. The
	 * main context is parked too (it is not running: the hub is). */
	if (root->state == GR__FIBER_PARKED && root->park && root->park->queue) {
		struct gr__park *p = root->park;

		fprintf(stderr,
			"greenring: deadlock: fiber %llu \"%s\" waits in %s, but no fiber can run "
			"and nothing is in flight (%zu other fibers parked)\n",
			(unsigned long long)root->id, root->name, p->what ? p->what : "a wait",
			hub->nfibers);
		gr__unpark(p, -EDEADLK);
		return;
	}
	/* The main context can only be somewhere else if the runtime itself is
	 * broken; resuming anything could corrupt memory. */
	fprintf(stderr, "greenring: internal error: hub idle with main context in state %d\n",
		root->state);
	abort();
}

/* Call f for the thread's main context and every fiber whose stack the hub
 * holds: together, every fiber that can be parked. */
static void for_each_fiber(struct gr__hub *hub, void (*f)(struct gr__hub *, gr_fiber *, int),
			   int arg)
{
	f(hub, &hub->root, arg);
	gr__list_foreach_safe(it, &hub->all)
		f(hub, gr__container(it, gr_fiber, all_link), arg);
}

/* Cancel f's operation in flight, if any, with `why`: an operation fails
 * with it, a queue wait's deadline timer ends the wait with it (the deadline
 * could not be kept). A wait on a queue with no timer needs no backend and
 * is left alone. */
static void cancel_inflight(struct gr__hub *hub, gr_fiber *f, int why)
{
	if (f->park && f->park->op)
		gr__op_cancel(hub, f->park->op, why);
}

/* Thread exit: f will never run again. A cross-thread wait is abandoned
 * first (its object settles for it), then whatever is in flight for it is
 * cancelled. */
static void interrupt_exit(struct gr__hub *hub, gr_fiber *f, int why)
{
	gr__xpark_abandon(f);
	gr__park_interrupt(hub, f, why, true);
}

static bool transient_wait_error(int r)
{
	return r == -EINTR || r == -EAGAIN || r == -ETIME || r == -EBUSY;
}

/* Early returns this many in a row, each in less than this on average:
 * 20,000 signals a second for 50 ms, so not a signal's doing. A spinning
 * loop makes a run in a millisecond or two even under ASan on a CPU
 * shared with other work (at 2 us, a preempted spin under ASan missed it). */
#define WAIT_INTERRUPTS_RUN 1024
#define WAIT_INTERRUPT_MIN_NS 50000

/* A wait that may block came back with a transient error (EINTR: a signal
 * ended it early, and the core asks again). The built-in backends swallow
 * those, but a third party's may pass them on, and one that returns one at
 * once, every time, without waiting or reaping, had the loop spin at full
 * speed, silent, for as long as anything was in flight (25 million calls
 * in 1.6 s). Whether this one ends such a run: then the caller treats it
 * as a failing wait (said, paused, and after a few the operations in
 * flight fail). A profiled program's signals, each ending a wait that had
 * blocked a while, never make one. Two clock reads per run. */
static bool wait_spins(struct gr__hub *hub)
{
	if (hub->wait_interrupts++ == 0) {
		hub->wait_interrupts_since = gr_now();
		return false;
	}
	if (hub->wait_interrupts < WAIT_INTERRUPTS_RUN)
		return false;
	int64_t took = gr_now() - hub->wait_interrupts_since;
	hub->wait_interrupts = 0;
	return took < (int64_t)WAIT_INTERRUPTS_RUN * WAIT_INTERRUPT_MIN_NS;
}

/* A third party's wait that may block and completed nothing (r == 0) is
 * an early return too when it came back before its deadline with nothing
 * posted: no wake's or timeout's doing then. Such a backend that returned
 * 0 at once, every time, spun the loop as one returning EINTR did, and
 * held a thread's exit in that spin for ever. A wake follows a post
 * (idle.c), which the drains take only after this look. The built-in
 * backends, which block, are left out: they return 0 for a signal that
 * ended the wait, and a storm of signals would look like a spin. */
static bool returned_early(struct gr__hub *hub, int r, int64_t timeout, int64_t deadline)
{
	return r == 0 && hub->foreign && timeout != 0 && !gr__hub_posted(hub) &&
	       (deadline == GR_FOREVER || gr_now() < deadline);
}

/* Whether r, what the backend's wait(timeout) with its end `deadline`
 * returned, is a failure: a lasting error, or the early return (a
 * transient error, or returned_early) that ends a run of them faster than
 * signals (wait_spins; a wait told not to block is no such run). A wait
 * that worked ends any run, of failures and of early returns; an early
 * return leaves the count of failures as it was. For the loop and for the
 * wait at thread exit alike. */
static bool wait_broke(struct gr__hub *hub, int r, int64_t timeout, int64_t deadline)
{
	if (returned_early(hub, r, timeout, deadline))
		return wait_spins(hub);
	if (r >= 0) {
		hub->wait_failures = hub->wait_interrupts = 0;
		return false;
	}
	return !transient_wait_error(r) || (timeout != 0 && wait_spins(hub));
}

/* What to say of a wait that broke. */
static const char *wait_trouble(int r)
{
	return r == 0 ? "it returns at once, completing nothing, again and again" : strerror(-r);
}

#define WAIT_FAILURES_GIVE_UP 5
#define WAIT_RETRY_PAUSE_MAX GR_SEC

/* The backend's wait() failed with a lasting error. Nothing in flight can
 * complete without it, so the fibers waiting on it would hang: say so once,
 * retry with a growing pause (never a spin), and after a few failures
 * cancel every operation in flight with EIO. A backend that completes
 * cancels at once (the readiness ones) thereby frees its fibers with a clear
 * error; one that cannot (io_uring: the kernel may still write into their
 * stacks) keeps them parked, but the hub no longer spins. */
static void wait_failed(struct gr__hub *hub, int r)
{
	unsigned n = ++hub->wait_failures;

	if (n == 1)
		fprintf(stderr, "greenring: %s hub: wait failed: %s; retrying\n", hub->ops->name,
			wait_trouble(r));
	if (n == WAIT_FAILURES_GIVE_UP) {
		fprintf(stderr,
			"greenring: %s hub: wait failed %u times in a row (%s): failing the %zu "
			"operations in flight with EIO\n",
			hub->ops->name, n, wait_trouble(r), hub->inflight);
		for_each_fiber(hub, cancel_inflight, EIO);
	}
	if (!gr__fifo_empty(&hub->next))
		return; /* fibers can run meanwhile */
	int64_t pause = GR_MSEC << (n < 10 ? n : 10);
	struct timespec ts;
	gr__ns_to_timespec(pause < WAIT_RETRY_PAUSE_MAX ? pause : WAIT_RETRY_PAUSE_MAX, &ts);
	nanosleep(&ts, NULL);
}

/* How long the next wait() may block: not at all when fibers are runnable,
 * else until something completes, but no later than the next audit of long
 * waits on fds (fd.c), the next deadline of an operation on the thread
 * pool (offload.c: no backend times those) or the next trim of free stacks
 * (stack.c: an idle hub gives their memory back). The audit runs first: one that
 * finds a closed fd completes its operations (a readiness backend at once),
 * and their fibers are runnable before the wait, which must then not block.
 *
 * `seen` is the coarse clock as the loop last read it, when the turn just
 * run gave it the thread back (0: a wait came since, so it is stale). The
 * audit and the trim are coarse (epochs of 100 ms, seconds): that reading,
 * at most a tick behind, serves them, and a loop turn reads no precise
 * clock at all (gr_now() is a vDSO call, slow on some VMs). An offload
 * deadline is not coarse: with one pending, the clock is read afresh.
 * *deadline: when the bound falls, absolute (GR_FOREVER: none), for a
 * backend that keeps the timer itself (hub_ops.h, wait_until). */
static int64_t wait_timeout(struct gr__hub *hub, int64_t seen, int64_t *deadline)
{
	int64_t now = 0, due = hub->offload.used ? gr__offload_next_deadline(hub) : GR_FOREVER;
	int64_t trim = gr__stack_pool_trim_due(hub->stacks);

	if (hub->fds_busy != 0 || hub->audit_due != 0 || due != GR_FOREVER || trim != GR_FOREVER) {
		now = seen != 0 && due == GR_FOREVER ? seen : gr_now();
		due = gr__deadline_min(gr__deadline_min(gr__fd_audit_next(hub, now), due), trim);
	}
	*deadline = due;
	if (!gr__fifo_empty(&hub->next))
		return 0;
	if (due == GR_FOREVER)
		return -1;
	return due > now ? due - now : 0;
}

static void hub_main(gr__transfer t)
{
	struct gr__hub *hub = tls_hub;

	gr__switch_arrived(hub->loop, t);
	int64_t seen = 0; /* the clock when the last turn ended; 0 once a wait came */
	for (;;) {
		gr__hub_drain_inbox(hub);
		gr__offload_reap(hub);
		bool idle = gr__fifo_empty(&hub->next);
		if (idle)
			gr__stack_pool_idle(hub->stacks);
		if (idle && hub->inflight == 0 && hub->remote_waiting == 0)
			detect_deadlock(hub);
		/* Fibers waiting on other threads need the backend's wait() only
		 * to sleep until a wake(); with fibers runnable, the inbox is
		 * enough. */
		if (hub->inflight > 0 || (idle && hub->remote_waiting > 0)) {
			/* Only another thread can end this idle spell: spin
			 * for its post first (idle.c). Asked only when a fiber
			 * waits on another thread, without a call otherwise. */
			bool spell = idle && hub->remote_waiting > 0 && gr__hub_expects_post(hub);
			int64_t since = 0;

			if (!spell || !gr__hub_spin(hub, &since)) {
				int64_t deadline;
				int64_t timeout = wait_timeout(hub, seen, &deadline);
				int r = gr__hub_backend_wait(hub, timeout, deadline);

				if (wait_broke(hub, r, timeout, deadline))
					wait_failed(hub, r);
				if (spell)
					gr__hub_slept(hub, since);
			}
			seen = 0; /* time passed: spinning or asleep */
			gr__hub_drain_inbox(hub);
			gr__offload_reap(hub);
		}
		if (gr__fifo_empty(&hub->next))
			continue;
		/* The hub's clock, read when the loop starts a turn: parks and
		 * spawns copy it (a read each would cost a yield half again).
		 * A second read when the loop gets the thread back measures the
		 * turn: the longest the loop has waited to reap. Turns the
		 * fibers start themselves (nothing in flight) read nothing.
		 * The coarse clock: what the stamps are for (ages in a dump, a
		 * turn that held the thread for milliseconds) needs no finer,
		 * and two precise reads were 2% of a pipe round trip between
		 * two fibers (bench/micro; docs/observing.md). */
		int64_t start = gr__coarse_now();
		hub->clock = start;
		gr_fiber *f = gr__runq_next_turn(hub);
		gr__switch_to(hub, hub->loop, f, false);
		seen = gr__coarse_now();
		int64_t ran = seen - start;
		if (ran > hub->counters.longest_run_ns)
			hub->counters.longest_run_ns = ran;
	}
}

/* ------------------------------------------------------------ lifecycle */

struct gr__hub *gr__hub_get(int *err)
{
	if (tls_hub)
		return tls_hub;
	struct gr__hub *hub = NULL;
	int r = gr__hub_create_with(NULL, &hub);
	if (r < 0) {
		*err = r;
		return NULL;
	}
	return hub;
}

int gr__hub_outside_slow(struct gr__hub **hubp)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub)
		return err;
	if (hub->current == hub->loop)
		return -EPERM;
	*hubp = hub;
	return 0;
}

int gr__hub_install(struct gr__hub *hub)
{
	pthread_once(&hub_key_once, make_key);
	if (pthread_setspecific(hub_key, hub) != 0)
		return -ENOMEM;
	hub->tid = gettid();
	hub->errno_at = &errno;
	hubs_add(hub);
	tls_hub = hub;
	gr__stack_overflow_guard_thread_init();
	gr__monitor_hub_installed();
	return 0;
}

struct gr__hub *gr__hub_alloc(const struct gr_hub_ops *ops, void *backend)
{
	struct gr__hub *hub = calloc(1, sizeof(*hub));

	if (!hub)
		return NULL;
	hub->stacks = gr__stack_pool_create();
	if (!hub->stacks) {
		free(hub);
		return NULL;
	}
	hub->ops = ops;
	hub->backend = backend;
	hub->foreign = true;
	for (size_t i = 0; gr__builtin_hubs[i]; i++)
		hub->foreign &= ops != gr__builtin_hubs[i];
	hub->io_budget = (unsigned)gr__env_size("GREENRING_IO_BUDGET", GR__IO_BUDGET_DEFAULT, 1,
						GR__IO_BUDGET_MAX, false);
	gr__hub_idle_init(hub);
	gr_fiber *root = &hub->root;
	root->hub = hub;
	root->is_root = true;
	root->state = GR__FIBER_RUNNING;
	root->deadline = GR_FOREVER;
	root->id = gr__next_fiber_id();
	hub->clock = gr__coarse_now();
	root->spawned = hub->clock;
	strcpy(root->name, "main");
	gr__sanitizer_root_init(root);
	hub->current = root;
	return hub;
}

/* A thread's exit waits for every operation in flight to be reaped, and
 * nothing bounds that wait: a backend whose cancel never completes held
 * the exit for ever, silent. It cannot give up (the kernel or a worker may
 * still write into the stacks), but it says so: after a second, then each
 * time the wait has doubled. Returns when to say it next. */
#define EXIT_WAIT_SAY_FIRST GR_SEC

static int64_t exit_waits(struct gr__hub *hub, int64_t now, int64_t began)
{
	fprintf(stderr,
		"greenring: %s hub: thread exit has waited %lld s for %zu operation%s in flight to end "
		"(cancelled; their stacks cannot be freed before)\n",
		hub->ops->name, (long long)((now - began) / GR_SEC), hub->inflight,
		hub->inflight == 1 ? "" : "s");
	return now + (now - began);
}

/* Thread exit: whatever fibers are left are discarded without running (as
 * gevent drops greenlets nobody joined). Every operation in flight is
 * cancelled and reaped first, whatever state its fiber is in (parked, or
 * woken with a deadline timer still to drain): the kernel must never write
 * into a stack we unmap, and nothing may make the thread wait out a timer. */
static void hub_destroy(void *arg)
{
	struct gr__hub *hub = arg;

	if (!hub)
		return;
	tls_hub = hub;
	if (hub->current != &hub->root) {
		/* pthread_exit() from a fiber: we run on its stack, which we
		 * cannot free; leak the hub rather than pull the floor away. */
		fprintf(stderr, "greenring: thread exited from fiber %llu \"%s\": its hub (%zu fibers) "
				"is leaked\n", (unsigned long long)hub->current->id, hub->current->name,
			hub->nfibers);
		hubs_orphan(hub);
		tls_hub = NULL;
		return;
	}
	for_each_fiber(hub, interrupt_exit, ECANCELED);
	gr__hub_drain_inbox(hub); /* wakes from other threads that came first */
	gr__offload_reap(hub);    /* file operations the pool finished */
	int64_t began = gr_now(), say_at = began + EXIT_WAIT_SAY_FIRST;

	while (hub->inflight > 0) {
		/* Bounded, so that an exit that waits long is said (exit_waits). */
		int64_t now = gr_now();

		if (now >= say_at)
			say_at = exit_waits(hub, now, began);
		int64_t timeout = say_at - now;
		int r = gr__hub_backend_wait(hub, timeout, say_at);

		/* A file operation a worker still runs cannot be interrupted:
		 * its buffers are in a stack we are about to unmap. */
		gr__offload_reap(hub);
		/* A run of early returns faster than signals (wait_spins) is
		 * a backend that will never reap: spinning here held the
		 * thread's exit for ever, silent. */
		if (wait_broke(hub, r, timeout, say_at)) {
			/* Leaking the stacks is safe; unmapping them is not. */
			fprintf(stderr, "greenring: %s hub: cannot reap at thread exit: %s\n",
				hub->ops->name, wait_trouble(r));
			hubs_orphan(hub);
			tls_hub = NULL;
			return;
		}
	}
	/* Other threads' closes its fibers were serving: done here instead. */
	gr__fd_requests_at_exit(hub);
	while (!gr__list_empty(&hub->all))
		gr__fiber_release_stack(hub, gr__container(hub->all.first, gr_fiber, all_link));
	if (hub->loop)
		gr__fiber_release_stack(hub, hub->loop);
	gr__laters_free(hub);
	gr__signal_hub_free(hub);
	hubs_remove(hub);
	gr__offload_fini(hub); /* no worker is still waking this hub */
	/* Off the list, nothing more can be posted here; serve what other
	 * threads posted meanwhile: their gr_close (nothing of ours is in
	 * flight: their fds are simply closed), a dump (answered). */
	gr__hub_drain_inbox(hub);
	if (gr__env_flag("GREENRING_DEBUG"))
		gr__dump_exit_line(hub);
	hub->ops->fini(hub->backend, 0);
	gr__stack_pool_free(hub->stacks);
	gr__fd_table_free(hub);
	gr__stack_overflow_guard_thread_fini();
	tls_hub = NULL;
	free(hub);
}

/* The thread's hub ends here without waiting for its thread to exit, if it
 * holds no fiber at all (gr_hub_use() switching backends, and tests). An
 * ended fiber nobody joined counts: its handle must stay valid. */
int gr__hub_destroy_idle(void)
{
	struct gr__hub *hub = tls_hub;

	if (!hub)
		return 0;
	if (hub->nfibers || !gr__list_empty(&hub->all) || hub->current != &hub->root)
		return -EBUSY;
	pthread_setspecific(hub_key, NULL);
	hub_destroy(hub);
	return 0;
}

int gr_hub_stats(struct gr_hub_stats *out)
{
	struct gr__hub *hub = tls_hub;

	if (!out)
		return -EINVAL;
	if (!hub)
		return -ESRCH;
	memset(out, 0, sizeof(*out));
	out->fibers = hub->nfibers;
	gr__list_foreach(it, &hub->all)
		out->unreleased += gr__container(it, gr_fiber, all_link)->state == GR__FIBER_DEAD;
	out->inflight = hub->inflight;
	out->turns = hub->turns;
	out->loop_started = hub->loop != NULL;
	gr__stack_pool_stats(hub->stacks, out);
	return 0;
}

_Static_assert(GR_OP_KIND_COUNT <= GR_HUB_COUNTERS_KINDS,
	       "struct gr_hub_counters has no room for every operation kind");

/* The first version of struct gr_hub_counters ends after longest_run_ns:
 * nothing shorter was ever public. */
#define COUNTERS_V1_SIZE (offsetof(struct gr_hub_counters, longest_run_ns) + sizeof(int64_t))

void gr__hub_counters_get(struct gr__hub *hub, struct gr_hub_counters *out)
{
	struct gr_hub_counters c;

	memset(&c, 0, sizeof(c));
	c.turns = hub->turns;
	memcpy(c.submitted, hub->counters.submitted, sizeof(hub->counters.submitted));
	memcpy(c.completed, hub->counters.completed, sizeof(hub->counters.completed));
	c.cancels = hub->counters.cancels;
	c.deadlines = hub->counters.deadlines;
	c.unparks = hub->counters.unparks;
	c.remote_wakeups = hub->counters.remote_wakeups;
	c.spawned = hub->counters.spawned;
	c.ended = hub->counters.ended;
	struct gr_hub_stats st;
	gr__stack_pool_stats(hub->stacks, &st);
	c.stacks_pooled = st.stacks_free + st.stacks_trimmed;
	c.stacks_live = st.stacks_mapped - c.stacks_pooled;
	c.longest_run_ns = hub->counters.longest_run_ns;
	c.spins_caught = hub->counters.spins_caught;
	c.spins_missed = hub->counters.spins_missed;
	*out = c;
}

int gr_hub_counters(struct gr_hub_counters *out, size_t size)
{
	struct gr__hub *hub = tls_hub;
	struct gr_hub_counters c;

	if (!out || size < COUNTERS_V1_SIZE)
		return -EINVAL;
	if (!hub)
		return -ESRCH;
	gr__hub_counters_get(hub, &c);
	/* A caller built against a later, larger struct: zero its tail. */
	if (size > sizeof(c)) {
		memset((char *)out + sizeof(c), 0, size - sizeof(c));
		size = sizeof(c);
	}
	memcpy(out, &c, size);
	return 0;
}

/* ------------------------------------------------------------ hub join */

int gr_hub_join(int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_hub_join" };
	int err = gr__park_prepare(&hub, &p, deadline);

	if (err)
		return err;
	size_t others_end = p.fiber->is_root ? 0 : 1; /* the caller counts itself */
	if (hub->nfibers <= others_end)
		return 0;
	p.data = others_end;
	return gr__park_queue(hub, &p, &hub->hub_joiners);
}

/* A fiber ended: wake gr_hub_join callers whose wait is over. */
void gr__hub_fiber_ended(struct gr__hub *hub)
{
	for (struct gr__park *p = gr__waitq_first(&hub->hub_joiners), *next; p; p = next) {
		next = gr__waitq_next(p);
		if (hub->nfibers <= p->data)
			gr__unpark(p, 0);
	}
}
