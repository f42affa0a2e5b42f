/* internal.h — what the runtime's files share and users never see.
 *
 * Naming: gr_ public, gr__ internal with external linkage, statics bare.
 *
 * Two ways for a fiber to park:
 *   - on an operation (gr__op_run): the backend completes it; the fiber is
 *     made runnable exactly once, by that completion. Early wakes (kill,
 *     deadline, gr_close) ask the backend to cancel and still wait for it.
 *   - on a wait queue (gr__wait): a sync primitive, join, hub join. Whoever
 *     wakes it (gr__wake) removes it from the queue first; a deadline is a
 *     GR_OP_TIMEOUT operation raced against the wake, drained before return.
 */
#ifndef GREENRING_INTERNAL_H
#define GREENRING_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "greenring.h"
#include "context.h"

#define GR__NAME_MAX 32
#define GR__DEFAULT_STACK_SIZE ((size_t)64 * 1024)
#define GR__MIN_STACK_SIZE ((size_t)16 * 1024)

#ifndef __has_feature
#define __has_feature(x) 0
#endif

/* ------------------------------------------------------------ wait queues */

struct gr__waiter;

/* A FIFO of parked fibers, embedded in a primitive. Zero-initialised is empty. */
struct gr__waitq {
	struct gr__waiter *head, *tail;
};

/* One fiber parked on one wait queue; lives on that fiber's stack for the
 * duration of gr__wait(). */
struct gr__waiter {
	gr_fiber *fiber;
	struct gr__waitq *queue;          /* NULL once removed */
	struct gr__waiter *next, *prev;
	const char *what;                 /* the call, for deadlock messages */
	uintptr_t data;                   /* the primitive's hand-off slot */
	int status;                       /* result handed to the woken fiber */
	bool uncancellable;               /* gr_kill does not wake it */
	bool timer_inflight;
	struct gr_op timer;               /* the deadline, when there is one */
};

void gr__waitq_push(struct gr__waitq *q, struct gr__waiter *w);
void gr__waitq_remove(struct gr__waiter *w);
static inline bool gr__waitq_empty(const struct gr__waitq *q) { return q->head == NULL; }
static inline struct gr__waiter *gr__waitq_first(const struct gr__waitq *q) { return q->head; }

/* Park the calling fiber on q until gr__wake() or the deadline (absolute;
 * GR_FOREVER; 0 = do not park). The caller fills w->what and w->data;
 * gr__wait fills the rest. Returns the status passed to gr__wake, or
 * -ETIMEDOUT, -ECANCELED (killed), -EDEADLK (nothing can ever wake it),
 * -EPERM (no fiber can park here). Never returns while a timer is in flight. */
int gr__wait(struct gr__waitq *q, struct gr__waiter *w, int64_t deadline);

/* Remove w from its queue and make its fiber runnable with `status`.
 * Does not switch. w must still be queued. */
void gr__wake(struct gr__waiter *w, int status);

/* ------------------------------------------------------------ fibers */

enum gr__fiber_state {
	GR__FIBER_NEW,        /* spawned, never run */
	GR__FIBER_RUNNABLE,   /* in a run queue */
	GR__FIBER_RUNNING,
	GR__FIBER_PARKED,
	GR__FIBER_DEAD,       /* fn returned (or killed before start) */
};

enum gr__park_kind { GR__PARK_NONE, GR__PARK_OP, GR__PARK_WAIT };

struct gr__hub;

struct gr_fiber {
	gr__fcontext ctx;                 /* saved context while not running */
	struct gr__hub *hub;
	gr_fiber *run_next;               /* run queue link */
	gr_fiber *all_next, *all_prev;    /* the hub's list of live fibers */
	uint32_t magic;                   /* FIBER_MAGIC while the handle is valid */
	void *(*fn)(void *);
	void (*void_fn)(void *);          /* gr_spawn_n's function */
	void *arg;
	void *result;
	struct gr__stack *stack;          /* NULL for a thread's main context and the hub */
	uint64_t id;
	int64_t deadline;                 /* gr_deadline_set; GR_FOREVER */
	uint8_t state;                    /* enum gr__fiber_state */
	uint8_t park_kind;                /* enum gr__park_kind */
	bool killed;
	bool detached;
	bool is_root;                     /* a thread's main context */
	void *park;                       /* struct gr_op * or struct gr__waiter * */
	struct gr__waitq joiners;         /* at most one gr_join caller */
	gr_fiber *joining;                /* the fiber this one is joining, for cycles */
	char name[GR__NAME_MAX];
	struct gr__sanitizer_fiber san;   /* ASan/TSan bookkeeping (context.h) */
};

/* The fiber running on this thread; NULL before the thread's first use. */
gr_fiber *gr__self(void);

/* ------------------------------------------------------------ the hub */

struct gr__runq {
	gr_fiber *head, *tail;
};

struct gr__fdstate {
	struct gr_op *ops;                /* in-flight operations on this fd */
	uint8_t closing;                  /* gr_close in progress */
	uint32_t closes;                  /* gr_close calls so far: a readiness retry
					     that waited across one must not touch
					     the number again (it may be a new file) */
	struct gr__waitq closers;         /* gr_close waiting for ops to drain */
};

struct gr__hub {
	const struct gr_hub_ops *ops;
	void *backend;
	struct gr__hub *proc_next, *proc_prev; /* every hub of the process (fork) */
	gr_fiber root;                    /* the thread's main context */
	gr_fiber *loop;                   /* the hub fiber; NULL until something blocks */
	gr_fiber *current;
	struct gr__runq now;              /* runs in this turn */
	struct gr__runq next;             /* runs in the next turn */
	gr_fiber *all;                    /* spawned fibers whose stack we hold */
	size_t nfibers;                   /* live spawned fibers (not root) */
	size_t inflight;                  /* operations submitted and not completed */
	struct gr__waitq hub_joiners;     /* gr_hub_join callers */
	struct gr__fdstate *fds;
	size_t nfds;
	struct gr__stack_pool *stacks;
	bool in_loop;                     /* the hub fiber is running backend code */
	unsigned long turns;
};

/* This thread's hub, created (and its backend chosen) on first use;
 * NULL with *err = -errno if no backend can run. */
struct gr__hub *gr__hub_get(int *err);
/* This thread's hub if it exists, else NULL. */
struct gr__hub *gr__hub_peek(void);

/* fiber.c: switching and fiber bookkeeping the hub needs. */
/* First thing a context does after a jump: finish the switch (sanitizers,
 * saving the context of the fiber we came from, releasing it if it died). */
void gr__switch_arrived(struct gr__hub *hub, gr_fiber *self, gr__transfer t);
void gr__sanitizer_fiber_init(gr_fiber *f);
void gr__sanitizer_root_init(gr_fiber *root);
void gr__fiber_release_stack(struct gr__hub *hub, gr_fiber *f);
uint64_t gr__next_fiber_id(void);
void *gr__call_void(void *unused);
/* hub.c: a fiber ended; wake gr_hub_join callers whose wait is over. */
void gr__hub_fiber_ended(struct gr__hub *hub);
/* hub.c: lifecycle, used by hub_select.c. */
struct gr__hub *gr__hub_alloc(const struct gr_hub_ops *ops, void *backend);
int gr__hub_install(struct gr__hub *hub);
int gr__hub_destroy_idle(void);
/* hub_select.c: create and install this thread's hub (ops NULL: the usual choice). */
int gr__hub_create_with(const struct gr_hub_ops *ops, struct gr__hub **out);

static inline void gr__runq_push(struct gr__runq *q, gr_fiber *f)
{
	f->run_next = NULL;
	if (q->tail)
		q->tail->run_next = f;
	else
		q->head = f;
	q->tail = f;
}

static inline gr_fiber *gr__runq_pop(struct gr__runq *q)
{
	gr_fiber *f = q->head;

	if (f) {
		q->head = f->run_next;
		if (!q->head)
			q->tail = NULL;
	}
	return f;
}

/* Make a parked or new fiber runnable (next turn, FIFO). Does not switch. */
static inline void gr__ready(gr_fiber *f)
{
	f->state = GR__FIBER_RUNNABLE;
	gr__runq_push(&f->hub->next, f);
}

/* Jump from `from` to `to`, telling the sanitizers. */
static inline __attribute__((always_inline)) void gr__switch_to(struct gr__hub *hub, gr_fiber *from,
								gr_fiber *to, bool dying)
{
	hub->current = to;
	to->state = GR__FIBER_RUNNING;
#ifdef GR__ASAN
	__sanitizer_start_switch_fiber(dying ? NULL : &from->san.fake_stack, to->san.stack_bottom,
				       to->san.stack_size);
#else
	(void)dying;
#endif
#ifdef GR__TSAN
	__tsan_switch_to_fiber(to->san.tsan, 0);
#endif
	gr__transfer t = jump_fcontext(to->ctx, from);
	gr__switch_arrived(hub, from, t);
}

/* The hub fiber, created by the first park check (gr__check_can_park);
 * NULL if its stack cannot be mapped. */
gr_fiber *gr__hub_loop_fiber(struct gr__hub *hub);

/* Switch away from the current fiber, which must already be queued
 * somewhere (a run queue, a wait queue, or an operation in flight), to the
 * next fiber of this turn, or the hub. `dying`: the caller never returns.
 *
 * Inlined into every blocking call, to keep the path from the user's call
 * to jump_fcontext as short as it can be: a switch made from inside a
 * function that then returns already costs several times a bare jump loop
 * on the machines we measured (bench/micro shows both floors). */
static inline __attribute__((always_inline)) void gr__schedule(struct gr__hub *hub, bool dying)
{
	gr_fiber *self = hub->current;
	gr_fiber *next = gr__runq_pop(&hub->now);

	if (!next) {
		if (hub->inflight == 0 && hub->next.head) {
			/* Nothing to reap: start the next turn here. */
			hub->now = hub->next;
			hub->next.head = hub->next.tail = NULL;
			hub->turns++;
			next = gr__runq_pop(&hub->now);
		} else {
			next = gr__hub_loop_fiber(hub);
		}
	}
	if (next == self) {
		self->state = GR__FIBER_RUNNING;
		return;
	}
	gr__switch_to(hub, self, next, dying);
}

static inline __attribute__((always_inline)) void gr__switch_out(struct gr__hub *hub)
{
	gr__schedule(hub, false);
}

/* This thread's hub; read by the SIGSEGV handler too, hence initial-exec
 * (no lazy allocation on first access). */
extern __thread struct gr__hub *gr__tls_hub __attribute__((tls_model("initial-exec")));

/* 0 if the caller may park (it is a fiber, not the hub, with a hub);
 * otherwise -EPERM or the hub creation error. */
int gr__check_can_park_slow(struct gr__hub **hubp);
static inline int gr__check_can_park(struct gr__hub **hubp)
{
	struct gr__hub *hub = gr__tls_hub;

	/* The loop fiber runs backend code: parking it would leave nobody to
	 * reap completions. Before the loop fiber exists, the slow path makes
	 * it (every switch starts with this check, so it exists by then). */
	if (hub && hub->loop && hub->current != hub->loop) {
		*hubp = hub;
		return 0;
	}
	return gr__check_can_park_slow(hubp);
}

/* The effective deadline of a blocking call: the sooner of `deadline` and
 * the calling fiber's own. */
int64_t gr__effective_deadline(const gr_fiber *f, int64_t deadline);

/* ------------------------------------------------------------ operations */

/* Submit op for the calling fiber and park until it completes. Applies kill
 * and the fiber deadline. Returns the result (>= 0 or -errno; a cancel by
 * gr_close reads -EBADF, by a deadline -ETIMEDOUT, by kill -ECANCELED). */
int64_t gr__op_run(struct gr__hub *hub, struct gr_op *op);

/* Ask the backend to cancel op, recording why (ECANCELED/ETIMEDOUT/EBADF). */
void gr__op_cancel(struct gr__hub *hub, struct gr_op *op, int why);

/* Per-fd bookkeeping, grown on demand; NULL for a negative fd or no memory. */
struct gr__fdstate *gr__fd_state(struct gr__hub *hub, int fd);

/* ------------------------------------------------------------ stacks */

struct gr__stack {
	void *base;                       /* lowest address of the mapping (guard) */
	size_t size;                      /* usable bytes above the guard */
	size_t guard;
	unsigned valgrind_id;
	struct gr__stack *next;           /* pool link */
};

struct gr__stack_pool *gr__stack_pool_create(void);
void gr__stack_pool_free(struct gr__stack_pool *pool);
/* A stack of at least `size` usable bytes, from the pool when it fits. */
struct gr__stack *gr__stack_get(struct gr__stack_pool *pool, size_t size);
void gr__stack_put(struct gr__stack_pool *pool, struct gr__stack *s);
/* The highest usable address: the descriptor itself sits above it. */
static inline void *gr__stack_top(struct gr__stack *s)
{
	return (void *)s;
}
/* GREENRING_STACK_SIZE, else the built-in default, rounded to pages. */
size_t gr__stack_default_size(void);
/* Install the overflow reporter (sigaltstack per thread, handler once). */
void gr__stack_overflow_guard_thread_init(void);
void gr__stack_overflow_guard_thread_fini(void);

/* ------------------------------------------------------------ backends */

extern const struct gr_hub_ops gr__hub_uring_ops;
extern const struct gr_hub_ops gr__hub_epoll_ops;
extern const struct gr_hub_ops gr__hub_poll_ops;

/* Backends in the default order, NULL-terminated. */
extern const struct gr_hub_ops *const gr__builtin_hubs[];

/* Write a message like perror's into buf: "what: strerror(err)". */
void gr__why(char *buf, size_t len, const char *what, int err);

/* Monotonic ns <-> timespec, rounding never shortens a wait. */
struct timespec;
void gr__ns_to_timespec(int64_t ns, struct timespec *ts);

#endif
