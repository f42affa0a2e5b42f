/* hub.c — the per-thread hub: run queues, the loop, wait queues, deadlock
 * detection, per-fd bookkeeping, teardown at thread exit, and fork.
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
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
 * rings and epoll sets of threads that do not exist in it. The lock is held
 * across fork() (prepare/parent/child), so the child finds the list whole. */
static pthread_mutex_t hubs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr__hub *hubs;

static void hubs_add(struct gr__hub *hub)
{
	pthread_mutex_lock(&hubs_lock);
	hub->proc_prev = NULL;
	hub->proc_next = hubs;
	if (hubs)
		hubs->proc_prev = hub;
	hubs = hub;
	pthread_mutex_unlock(&hubs_lock);
}

static void hubs_remove(struct gr__hub *hub)
{
	pthread_mutex_lock(&hubs_lock);
	if (hub->proc_prev)
		hub->proc_prev->proc_next = hub->proc_next;
	else if (hubs == hub)
		hubs = hub->proc_next;
	if (hub->proc_next)
		hub->proc_next->proc_prev = hub->proc_prev;
	hub->proc_next = hub->proc_prev = NULL;
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
 * the inherited fds: it must never touch them, only drop its references.
 * Each hub's backend is released that way (fini with after_fork); the rest
 * of their memory is left alone, since the forking thread may be running on
 * one of their fiber stacks. The child's next use creates a fresh hub. */
static void fork_child(void)
{
	for (struct gr__hub *hub = hubs; hub; hub = hub->proc_next)
		hub->ops->fini(hub->backend, 1);
	hubs = NULL;
	pthread_mutex_unlock(&hubs_lock);
	tls_hub = NULL;
	pthread_setspecific(hub_key, NULL);
}

static void make_key(void)
{
	pthread_key_create(&hub_key, hub_destroy);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

struct gr__hub *gr__hub_peek(void)
{
	return tls_hub;
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
	gr_fiber *f = (gr_fiber *)((uintptr_t)gr__stack_top(s) - sizeof(gr_fiber)) ;
	f = (gr_fiber *)((uintptr_t)f & ~(uintptr_t)63);
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

	/* Nothing runnable and nothing in flight: every fiber waits on a wait
	 * queue, so only a fiber could wake another, and none can run. The
	 * main context is parked too (it is not running: the hub is). */
	if (root->state == GR__FIBER_PARKED && root->park_kind == GR__PARK_WAIT) {
		struct gr__waiter *w = root->park;

		fprintf(stderr,
			"greenring: deadlock: fiber %llu \"%s\" waits in %s, but no fiber can run "
			"and nothing is in flight (%zu other fibers parked)\n",
			(unsigned long long)root->id, root->name, w->what ? w->what : "a wait",
			hub->nfibers);
		if (w->queue)
			gr__wake(w, -EDEADLK);
		return;
	}
	/* The main context can only be somewhere else if the runtime itself is
	 * broken; resuming anything could corrupt memory. */
	fprintf(stderr, "greenring: internal error: hub idle with main context in state %d\n",
		root->state);
	abort();
}

static void hub_main(gr__transfer t)
{
	struct gr__hub *hub = tls_hub;

	gr__switch_arrived(hub, hub->loop, t);
	for (;;) {
		if (!hub->next.head && hub->inflight == 0)
			detect_deadlock(hub);
		if (hub->inflight > 0) {
			hub->in_loop = true;
			int r = hub->ops->wait(hub->backend, hub->next.head ? 0 : -1);
			hub->in_loop = false;
			if (r < 0 && r != -EINTR && r != -EAGAIN && r != -ETIME) {
				/* The backend could not wait: report it and try again
				 * next turn rather than lose track of what is in flight. */
				fprintf(stderr, "greenring: %s hub: wait failed: %s\n", hub->ops->name,
					strerror(-r));
			}
		}
		if (!hub->next.head)
			continue;
		hub->now = hub->next;
		hub->next.head = hub->next.tail = NULL;
		hub->turns++;
		gr_fiber *f = gr__runq_pop(&hub->now);
		gr__switch_to(hub, hub->loop, f, false);
	}
}

/* ------------------------------------------------------------ wait queues */

void gr__waitq_push(struct gr__waitq *q, struct gr__waiter *w)
{
	w->queue = q;
	w->next = NULL;
	w->prev = q->tail;
	if (q->tail)
		q->tail->next = w;
	else
		q->head = w;
	q->tail = w;
}

void gr__waitq_remove(struct gr__waiter *w)
{
	struct gr__waitq *q = w->queue;

	if (!q)
		return;
	if (w->prev)
		w->prev->next = w->next;
	else
		q->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		q->tail = w->prev;
	w->next = w->prev = NULL;
	w->queue = NULL;
}

void gr__wake(struct gr__waiter *w, int status)
{
	gr__waitq_remove(w);
	w->status = status;
	gr__ready(w->fiber);
}

/* The deadline of a parked waiter passed (or its timer was cancelled). */
static void waiter_timer_done(struct gr_op *op)
{
	struct gr__waiter *w = op->owner;

	w->timer_inflight = false;
	if (w->queue)
		gr__wake(w, -ETIMEDOUT);
	else if (w->fiber->state == GR__FIBER_PARKED)
		gr__ready(w->fiber); /* it was draining this timer */
}

int gr__wait(struct gr__waitq *q, struct gr__waiter *w, int64_t deadline)
{
	struct gr__hub *hub = NULL;
	int err = gr__check_can_park(&hub);

	if (err)
		return err;
	gr_fiber *self = hub->current;
	if (!w->uncancellable) {
		if (self->killed)
			return -ECANCELED;
		deadline = gr__effective_deadline(self, deadline);
	}
	if (deadline != GR_FOREVER && deadline <= gr_now())
		return -ETIMEDOUT;

	w->fiber = self;
	w->status = 0;
	w->timer_inflight = false;
	gr__waitq_push(q, w);
	if (deadline != GR_FOREVER) {
		memset(&w->timer, 0, sizeof(w->timer));
		w->timer.kind = GR_OP_TIMEOUT;
		w->timer.fd = -1;
		w->timer.deadline = deadline;
		w->timer.on_complete = waiter_timer_done;
		w->timer.owner = w;
		w->timer_inflight = true;
		hub->inflight++;
		err = hub->ops->submit(hub->backend, &w->timer);
		if (err < 0) {
			hub->inflight--;
			w->timer_inflight = false;
			gr__waitq_remove(w);
			return err;
		}
	}
	self->state = GR__FIBER_PARKED;
	self->park_kind = GR__PARK_WAIT;
	self->park = w;
	gr__switch_out(hub);
	if (w->timer_inflight) {
		/* Woken before the deadline: the timer names this stack, so it
		 * must complete before we return. */
		hub->ops->cancel(hub->backend, &w->timer);
		while (w->timer_inflight) {
			self->state = GR__FIBER_PARKED;
			gr__switch_out(hub);
		}
	}
	self->park_kind = GR__PARK_NONE;
	self->park = NULL;
	return w->status;
}

int gr__check_can_park_slow(struct gr__hub **hubp)
{
	int err = 0;
	struct gr__hub *hub = gr__hub_get(&err);

	if (!hub)
		return err;
	if (hub->current == hub->loop)
		return -EPERM;
	/* The first park needs the hub's fiber. Created here, before anything
	 * is queued, so that failing to map its stack is this call's ENOMEM
	 * rather than a scheduler with nowhere to switch to. */
	if (!gr__hub_loop_fiber(hub))
		return -ENOMEM;
	*hubp = hub;
	return 0;
}

/* ------------------------------------------------------------ operations */

/* Operations on an fd are listed on it, so gr_close() can cancel them. */
static inline bool op_names_fd(const struct gr_op *op)
{
	return op->fd >= 0 && op->kind != GR_OP_TIMEOUT && op->kind != GR_OP_NOP;
}

static void fd_unlink(struct gr__hub *hub, struct gr_op *op)
{
	if (!op_names_fd(op) || (size_t)op->fd >= hub->nfds)
		return;
	struct gr__fdstate *st = &hub->fds[op->fd];

	if (op->fd_prev)
		op->fd_prev->fd_next = op->fd_next;
	else if (st->ops == op)
		st->ops = op->fd_next;
	else
		return; /* not linked */
	if (op->fd_next)
		op->fd_next->fd_prev = op->fd_prev;
	op->fd_next = op->fd_prev = NULL;
	if (!st->ops && st->closing && !gr__waitq_empty(&st->closers))
		gr__wake(gr__waitq_first(&st->closers), 0);
}

void gr_hub_complete(struct gr_op *op, int64_t res)
{
	struct gr__hub *hub = tls_hub;

	op->res = res;
	fd_unlink(hub, op);
	hub->inflight--;
	op->on_complete(op);
}

static void op_wake_owner(struct gr_op *op)
{
	gr__ready(op->owner);
}

/* NULL with errno EBADF (a negative fd, or an unopened one beyond the table)
 * or ENOMEM. */
struct gr__fdstate *gr__fd_state(struct gr__hub *hub, int fd)
{
	if (fd < 0) {
		errno = EBADF;
		return NULL;
	}
	if ((size_t)fd >= hub->nfds) {
		size_t n = hub->nfds ? hub->nfds : 256;

		/* Grow only for an open fd: a bad number (100000, INT_MAX) must
		 * be EBADF, not a table of 2^31 entries. */
		if (fcntl(fd, F_GETFD) < 0)
			return NULL; /* errno EBADF */

		while (n <= (size_t)fd)
			n *= 2;
		struct gr__fdstate *fds = realloc(hub->fds, n * sizeof(*fds));
		if (!fds) {
			errno = ENOMEM;
			return NULL;
		}
		memset(fds + hub->nfds, 0, (n - hub->nfds) * sizeof(*fds));
		/* Wait queues point back at their head: fix up what moved. */
		for (size_t i = 0; i < hub->nfds; i++) {
			for (struct gr__waiter *w = fds[i].closers.head; w; w = w->next)
				w->queue = &fds[i].closers;
		}
		hub->fds = fds;
		hub->nfds = n;
	}
	return &hub->fds[fd];
}

int64_t gr__op_run(struct gr__hub *hub, struct gr_op *op)
{
	gr_fiber *self = hub->current;

	if (!op->uncancellable) {
		if (self->killed)
			return -ECANCELED;
		op->deadline = gr__effective_deadline(self, op->deadline);
		/* An operation past its deadline fails without starting; a
		 * timeout (a sleep) is submitted anyway and completes at once,
		 * so that sleeping always switches. */
		if (op->kind != GR_OP_TIMEOUT && op->deadline != GR_FOREVER && op->deadline <= gr_now())
			return -ETIMEDOUT;
	}
	op->res = 0;
	op->cancel_errno = 0;
	op->on_complete = op_wake_owner;
	op->owner = self;
	op->fd_next = op->fd_prev = NULL;

	struct gr__fdstate *st = NULL;
	if (op_names_fd(op)) {
		st = gr__fd_state(hub, op->fd);
		if (!st)
			return errno == EBADF ? -EBADF : -ENOMEM;
		if (st->closing && op->kind != GR_OP_CLOSE)
			return -EBADF;
		op->fd_next = st->ops;
		if (st->ops)
			st->ops->fd_prev = op;
		st->ops = op;
	}
	/* In flight and parked before submit(), so that a backend completing
	 * it at once finds the books in order. */
	hub->inflight++;
	self->state = GR__FIBER_PARKED;
	self->park_kind = GR__PARK_OP;
	self->park = op;
	int err = hub->ops->submit(hub->backend, op);
	if (err < 0) {
		hub->inflight--;
		fd_unlink(hub, op);
		self->state = GR__FIBER_RUNNING;
		self->park_kind = GR__PARK_NONE;
		self->park = NULL;
		return err;
	}
	gr__switch_out(hub);
	self->park_kind = GR__PARK_NONE;
	self->park = NULL;

	int64_t res = op->res;
	if (res == -ECANCELED || res == -EINTR) {
		if (op->cancel_errno)
			res = -op->cancel_errno;
		else if (op->deadline != GR_FOREVER)
			res = -ETIMEDOUT; /* the backend's own deadline (a linked timeout) */
	}
	return res;
}

void gr__op_cancel(struct gr__hub *hub, struct gr_op *op, int why)
{
	if (op->uncancellable && why != EBADF)
		return;
	if (!op->cancel_errno)
		op->cancel_errno = why;
	hub->ops->cancel(hub->backend, op);
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

int gr__hub_install(struct gr__hub *hub)
{
	pthread_once(&hub_key_once, make_key);
	if (pthread_setspecific(hub_key, hub) != 0)
		return -ENOMEM;
	hubs_add(hub);
	tls_hub = hub;
	gr__stack_overflow_guard_thread_init();
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
	gr_fiber *root = &hub->root;
	root->hub = hub;
	root->is_root = true;
	root->state = GR__FIBER_RUNNING;
	root->deadline = GR_FOREVER;
	root->id = gr__next_fiber_id();
	strcpy(root->name, "main");
	gr__sanitizer_root_init(root);
	hub->current = root;
	return hub;
}

/* Thread exit: whatever fibers are left are discarded without running (as
 * gevent drops greenlets nobody joined). Their operations are cancelled and
 * reaped first: the kernel must never write into a stack we unmap. */
static void hub_destroy(void *arg)
{
	struct gr__hub *hub = arg;

	if (!hub)
		return;
	tls_hub = hub;
	for (gr_fiber *f = hub->all; f; f = f->all_next) {
		if (f->state != GR__FIBER_PARKED)
			continue;
		if (f->park_kind == GR__PARK_OP)
			gr__op_cancel(hub, f->park, ECANCELED);
		else if (f->park_kind == GR__PARK_WAIT) {
			struct gr__waiter *w = f->park;

			gr__waitq_remove(w);
			if (w->timer_inflight)
				hub->ops->cancel(hub->backend, &w->timer);
		}
	}
	while (hub->inflight > 0) {
		hub->in_loop = true;
		int r = hub->ops->wait(hub->backend, -1);
		hub->in_loop = false;
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -ETIME) {
			/* Leaking the stacks is safe; unmapping them is not. */
			fprintf(stderr, "greenring: %s hub: cannot reap at thread exit: %s\n",
				hub->ops->name, strerror(-r));
			tls_hub = NULL;
			return;
		}
	}
	while (hub->all) {
		gr_fiber *f = hub->all;

		hub->all = f->all_next;
		gr__fiber_release_stack(hub, f);
	}
	if (hub->loop)
		gr__fiber_release_stack(hub, hub->loop);
	hubs_remove(hub);
	hub->ops->fini(hub->backend, 0);
	gr__stack_pool_free(hub->stacks);
	free(hub->fds);
	gr__stack_overflow_guard_thread_fini();
	tls_hub = NULL;
	free(hub);
}

/* The thread's hub ends here without waiting for its thread to exit, if it
 * has no fiber: gr_hub_use() switching backends, and tests. */
int gr__hub_destroy_idle(void)
{
	struct gr__hub *hub = tls_hub;

	if (!hub)
		return 0;
	if (hub->nfibers || hub->current != &hub->root)
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
	for (const gr_fiber *f = hub->all; f; f = f->all_next)
		out->unreleased += f->state == GR__FIBER_DEAD;
	out->inflight = hub->inflight;
	out->turns = hub->turns;
	out->loop_started = hub->loop != NULL;
	return 0;
}

/* ------------------------------------------------------------ hub join */

int gr_hub_join(int64_t deadline)
{
	struct gr__hub *hub = NULL;
	int err = gr__check_can_park(&hub);

	if (err)
		return err;
	gr_fiber *self = hub->current;
	size_t others_end = self->is_root ? 0 : 1; /* the caller counts itself */

	if (hub->nfibers <= others_end)
		return 0;
	struct gr__waiter w = { .what = "gr_hub_join", .data = others_end };
	return gr__wait(&hub->hub_joiners, &w, deadline);
}

/* A fiber ended: wake gr_hub_join callers whose wait is over. */
void gr__hub_fiber_ended(struct gr__hub *hub)
{
	struct gr__waiter *w = hub->hub_joiners.head;

	while (w) {
		struct gr__waiter *next = w->next;

		if (hub->nfibers <= w->data)
			gr__wake(w, 0);
		w = next;
	}
}
