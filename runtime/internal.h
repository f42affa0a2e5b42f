/* internal.h — what the runtime's files share and users never see.
 *
 * Naming: gr_ public, gr__ internal with external linkage, statics bare.
 *
 * A fiber that blocks parks through one gate (wait.c) and is described, while
 * parked, by one record on its own stack: struct gr__park. It parks on either
 *   - an operation (gr__park_op): the backend completes it, and that
 *     completion is the only thing that makes the fiber runnable again. Early
 *     ends (kill, deadline, gr_close) ask the backend to cancel and still wait
 *     for the completion, so the kernel never writes into a stack whose fiber
 *     has moved on; or
 *   - a wait queue (gr__park_queue): a sync primitive, join, hub join. Whoever
 *     wakes it (gr__unpark) takes it off the queue and hands it a status; a
 *     deadline is a GR_OP_TIMEOUT operation raced against the wake and
 *     drained before the fiber returns.
 * Either way at most one operation of a fiber is in flight at a time, and
 * park->op names it: teardown, fork and the broken-backend path find every
 * operation in flight through the fibers.
 */
#ifndef GREENRING_INTERNAL_H
#define GREENRING_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "greenring.h"
#include "context.h"
#include "list.h"
#include "timer.h"

#define GR__NAME_MAX 32
#define GR__DEFAULT_STACK_SIZE ((size_t)64 * 1024)
#define GR__MIN_STACK_SIZE ((size_t)16 * 1024)
/* Green calls a fiber may finish in a row without a switch before it yields
 * (io.c, "Fairness"); GREENRING_IO_BUDGET. */
#define GR__IO_BUDGET_DEFAULT 64
#define GR__IO_BUDGET_MAX ((size_t)1 << 20)

#ifndef __has_feature
#define __has_feature(x) 0
#endif

struct gr__hub;
struct gr__park;
struct gr__fiber_link;
struct gr__sighub;
struct gr__laters;
struct gr__offload;

/* A drop-in call's return: r >= 0 as it is, -errno as -1 with errno set.
 * The last thing such a call does (another fiber may run, and fail,
 * between a failure and the caller's read of errno). */
static inline ssize_t gr__posix_result(int64_t r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (ssize_t)r;
}

/* The sooner of two absolute deadlines (GR_FOREVER is later than any). */
static inline int64_t gr__deadline_min(int64_t a, int64_t b)
{
	if (a == GR_FOREVER)
		return b;
	if (b == GR_FOREVER)
		return a;
	return a < b ? a : b;
}

/* ------------------------------------------------------------ operations */

/* An operation as the core knows it: the public part a backend sees, and
 * the core's own fields, which no backend can reach or depend on (the
 * backend only ever holds a pointer to `op`). */
struct gr__op {
	struct gr_op op;
	int64_t res;
	struct gr__park *park;            /* the wait it serves */
	void (*on_complete)(struct gr__op *o); /* NULL: ready park->fiber */
	struct gr__link fd_link;          /* on its fd's list while in flight */
	struct gr__fdstate *fd_st;        /* its fd's state once looked up, or NULL:
					     the table never moves, so the state
					     found once serves the whole call */
	struct gr__offload *offload;      /* not NULL: the thread pool performs it,
					     not the backend (offload.c) */
	uint8_t cancel_errno;             /* why the core cancelled it: 0, ECANCELED,
					     ETIMEDOUT, EBADF, EIO, GR__RETIME or
					     GR__REDECIDE */
	bool on_fd;                       /* linked on its fd (fd_link is live) */
	bool tries_again;                 /* a GR_OP_POLL a read or write at a stream's
					     position waits on before it tries its call
					     again: the audit of long waits may end it
					     early (GR__REDECIDE, fd.c) */
};

/* A cancel reason that is no errno: the deadline of the call moved (a per-fd
 * deadline changed while it waited, fd.c). The gate submits the operation
 * again under the new deadline if it moved no data; any other reason
 * cancelling it later overrides this one. */
#define GR__RETIME 0xff
/* Another reason that is no errno: the audit of long waits doubts how the
 * core chose to serve the call (the number may name another file now,
 * fd.c). The gate hands a call that moved no data back to its caller with
 * -EAGAIN, its deadline recomputed as for a retime, and io.c chooses again.
 * As weak as a retime, which it includes. */
#define GR__REDECIDE 0xfe

/* A reason that only asks the call to wait again (or choose again): any
 * reason to end it replaces it. */
static inline bool gr__cancel_weak(uint8_t why)
{
	return why == GR__RETIME || why == GR__REDECIDE;
}

static inline struct gr__op *gr__op_of(struct gr_op *op)
{
	return gr__container(op, struct gr__op, op);
}

/* A fresh operation of `kind` on fd, at the file's current position:
 * `struct gr__op o = gr__op_init(kind, fd);`. A macro, not a function
 * returning the struct: GCC built the returned struct (208 bytes) in a
 * temporary and copied it, on every green call (callgrind: about 90
 * instructions per call, 5% of the epoll echo server's CPU per message);
 * an initializer at the declaration is built in place. */
#define gr__op_init(kind_, fd_)                                                                   \
	((struct gr__op){ .op = { .kind = (uint8_t)(kind_), .fd = (fd_), .off = -1,               \
				  .deadline = GR_FOREVER } })

/* Does op name an fd (and so go on the fd's list, for gr_close)? */
static inline bool gr__op_names_fd(const struct gr_op *op)
{
	return op->fd >= 0 && op->kind != GR_OP_TIMEOUT && op->kind != GR_OP_NOP;
}

/* ------------------------------------------------------------ parking */

/* A FIFO of parked fibers (struct gr__park), embedded in a primitive.
 * Zero-initialised is empty. */
struct gr__waitq {
	struct gr__list parked;
};

struct gr__xq;

/* What a park waits on (struct gr__park.kind). */
enum gr__park_kind {
	GR__PARK_OP,          /* an operation: op */
	GR__PARK_QUEUE,       /* a wait queue of this hub: queue; op is its timer */
	GR__PARK_XQUEUE,      /* a cross-thread queue: xq; op is its timer */
};

/* One blocking call of one fiber (or, on a cross-thread queue, of a thread
 * with no hub), on its own stack, for as long as the call lasts. The caller
 * fills `what`, `data` and `uncancellable`; the gate fills the rest. */
struct gr__park {
	gr_fiber *fiber;                  /* NULL: a thread with no hub */
	const char *what;                 /* the call: deadlock messages */
	int64_t deadline;                 /* effective: the call's, the fiber's */
	int64_t since;                    /* when it parked, on the hub's clock
					     (hub->clock: the coarse clock, read once
					     per loop turn) */
	struct gr__waitq *queue;          /* the queue it is on; NULL once off it */
	struct gr__xq *xq;                /* the cross-thread queue it waits on */
	void *xlock;                      /* xq's lock, kept: xq may be gone once left;
					     NULL once abandoned (its thread exits) */
	struct gr__link link;             /* its place on queue or xq */
	uintptr_t data;                   /* the primitive's hand-off slot */
	int64_t limit;                    /* fd calls: the call's own deadline, before
					     the fiber's and the fd's are applied */
	int status;                       /* what the waker handed over */
	uint8_t kind;                     /* enum gr__park_kind */
	uint8_t fd_dirs;                  /* GR_FD_READ|GR_FD_WRITE: whose per-fd
					     deadlines bound it (0: none apply) */
	bool uncancellable;               /* neither kill nor deadlines stop it */
	bool xlinked;                     /* on xq (guarded by the xq's lock) */
	bool draining;                    /* woken, waiting for its timer to finish */
	struct gr__op *op;                /* in flight for this call, or NULL: the
					     operation, or a queue wait's deadline
					     timer (in the waiting frame) */
	struct gr__slink inbox_link;      /* on a hub's inbox: a fiber woken from afar,
					     or (fiber NULL) a request (fd_remote.c) */
	void *cond;                       /* pthread_cond_t of a thread with no hub */
};

static inline bool gr__waitq_empty(const struct gr__waitq *q)
{
	return gr__list_empty(&q->parked);
}

static inline struct gr__park *gr__waitq_first(const struct gr__waitq *q)
{
	return q->parked.first ? gr__container(q->parked.first, struct gr__park, link) : NULL;
}

static inline struct gr__park *gr__waitq_next(const struct gr__park *p)
{
	return p->link.next ? gr__container(p->link.next, struct gr__park, link) : NULL;
}

/* The gate, in order of use (wait.c):
 *
 * gr__park_hub: may the caller park at all? 0 and *hubp, or -EPERM (inside
 * the hub), the hub creation error, -ENOMEM (no stack for the hub fiber).
 *
 * gr__park_begin: the pre-block checks (gr__park_check: a call that parks
 * nothing of its own, a yield, uses them alone) for a call with `deadline`
 * (absolute; GR_FOREVER; 0 = try once). Sets p->fiber and p->deadline to
 * the effective deadline (the sooner of the call's and the fiber's own).
 * 0; -ECANCELED (the fiber was killed); -ETIMEDOUT (the effective deadline
 * has passed). A pure try (deadline 0) and an uncancellable call never fail
 * here: a killed fiber can still take what is available, and still close.
 *
 * gr__park_op: submit o for the caller and park until it completes. Returns
 * its result, >= 0 or -errno, mapped: cancelled by gr_close -EBADF, by a
 * kill -ECANCELED, by a deadline -ETIMEDOUT. For every kind but
 * GR_OP_TIMEOUT the operation's deadline is p->deadline.
 *
 * gr__park_queue: park on q until gr__unpark() or p->deadline. Returns the
 * status handed by the waker, or -ETIMEDOUT (deadline 0 returns it without
 * parking), -ECANCELED (killed while parked), -EDEADLK (nothing can ever
 * wake it). Never returns while its deadline timer is in flight.
 *
 * gr__unpark: take p off its queue and make its fiber runnable with
 * `status`. Does not switch. p must be on a queue. */
int64_t gr__park_op(struct gr__hub *hub, struct gr__park *p, struct gr__op *o);
/* Before parking again inside the same call (a readiness retry): the
 * checks of gr__park_begin against the effective deadline already set. */
int gr__park_again(const struct gr__park *p);
int gr__park_queue(struct gr__hub *hub, struct gr__park *p, struct gr__waitq *q);
void gr__unpark(struct gr__park *p, int status);

/* Cross-thread queues (wait.c): objects that any thread may wake waiters
 * of (the thread pool's jobs, channels, notifiers). Their waiters are fibers
 * of any hub, or threads with no hub, which simply block. Every call below
 * is made with *lock held: the object's own mutex, which serialises wakers
 * against a waiter's own early end (deadline, kill, thread exit).
 *
 * gr__xpark: park the caller on xq until gr__xunpark() or p->deadline (set
 * by gr__park_begin for a fiber, by gr__xpark_thread_begin for a thread).
 * Called after the caller checked, under the lock, that it must wait; the
 * lock is released while parked and held again on return. Returns the
 * status handed over, -ETIMEDOUT, -ECANCELED (a fiber killed).
 *
 * gr__xunpark: take p off its queue and resume it with `status`, from any
 * thread. A fiber is put on its hub's inbox and the hub woken (one wake-up
 * for many completions: only the first on an empty inbox calls wake()). */
struct gr__xq {
	void *lock;                       /* the object's pthread_mutex_t */
	struct gr__list parked;           /* struct gr__park.link */
	/* Optional, called with the lock held:
	 *  - gone false: p stopped waiting without being handed anything
	 *    (deadline, kill, a timer that could not be armed). Its caller
	 *    resumes, takes the lock again and returns: the object must stay.
	 *  - gone true: p's caller will never return, because its thread is
	 *    exiting; p may still have been on the queue, or been handed
	 *    something and not have run yet. What the caller would settle on
	 *    return (a count of users, a hand-off it owns) is settled here,
	 *    and the object may go once it is. */
	void (*on_leave)(struct gr__xq *xq, struct gr__park *p, bool gone);
};
int gr__xpark(struct gr__hub *hub, struct gr__park *p, struct gr__xq *xq);
void gr__xunpark(struct gr__park *p, int status);
/* For a thread with no hub: fill p as gr__park_begin does for a fiber. */
void gr__xpark_thread_begin(struct gr__park *p, int64_t deadline);
/* A condition variable timed on CLOCK_MONOTONIC, gr_now()'s clock. */
void gr__cond_init_monotonic(pthread_cond_t *cond);
/* threadpool.c: start a detached thread of the runtime's own (a worker, the
 * child watcher, the monitor) with every signal blocked, so that a signal sent to the
 * process is never handed to it. 0 or -errno. */
int gr__thread_start(void *(*fn)(void *), void *arg);
/* notifier.c: gr_notifier_wait, uncancellable if asked (neither a kill nor
 * the fiber's own deadline end it: gr_server_free's wait). */
int gr__notifier_wait(gr_notifier *n, int64_t deadline, bool uncancellable);
/* Thread exit (hub.c): f's cross-thread wait, if any, will never return;
 * tell its object (on_leave, gone). Nothing of the object is touched after. */
void gr__xpark_abandon(gr_fiber *f);

/* Post p to hub's inbox, from any thread, and wake the hub if the inbox was
 * empty: one wake-up for any number of posts before the hub drains. p is a
 * fiber's park (woken), or the park of a request (struct gr__hub_request,
 * below): a park with no fiber (no thread's park ever goes to an inbox).
 * The caller keeps hub alive meanwhile (it holds a lock the hub's teardown
 * takes). */
void gr__hub_post(struct gr__hub *hub, struct gr__park *p);
/* idle.c: a hub's idle spells and cross-thread wake-ups.
 * gr__hub_wake: after a push that found an inbox of hub empty, from any
 * thread: wake the hub if it may be asleep in its backend.
 * gr__hub_backend_wait: the backend's wait(), which other threads' posts
 * interrupt (it does not block if one came first). timeout as for wait()
 * (hub_ops.h); deadline: when a timeout > 0 ends, on CLOCK_MONOTONIC (for
 * wait_until). 0 or -errno.
 * gr__hub_expects_post: nothing but timers in the backend, and one to a
 * few fibers wait on other threads: worth a spin before sleeping.
 * gr__hub_spin: spin for a post, unless recent spins missed; true if one
 * came. *since: when this idle spell began. Else the loop sleeps, then
 * tells gr__hub_slept, which resumes spinning if a post came soon enough. */
void gr__hub_idle_init(struct gr__hub *hub);
/* Anything posted to hub by another thread (its inbox, the thread pool's
 * finished jobs)? A relaxed look: what was posted is taken with acquire by
 * the drains. */
bool gr__hub_posted(struct gr__hub *hub);
void gr__hub_wake(struct gr__hub *hub);
/* Wake hub whether or not it says it sleeps: for a request's first post
 * (gr__hub_request), which the hub's fence does not cover. */
void gr__hub_wake_unasked(struct gr__hub *hub);
int gr__hub_backend_wait(struct gr__hub *hub, int64_t timeout, int64_t deadline);
bool gr__hub_expects_post(const struct gr__hub *hub);
bool gr__hub_spin(struct gr__hub *hub, int64_t *since);
void gr__hub_slept(struct gr__hub *hub, int64_t since);
/* The hub takes what other threads posted, in the order they posted it:
 * woken fibers become runnable, requests are run. Called through
 * gr__hub_drain_inbox (below), which asks first whether anything came. */
void gr__hub_take_inbox(struct gr__hub *hub);

/* End f's current wait early because of `why` (ECANCELED for a kill, EIO
 * for a backend that cannot wait): a queue wait is woken with -why, an
 * operation is cancelled (its completion still resumes the fiber). An
 * uncancellable wait is left alone unless `force` (thread exit). */
void gr__park_interrupt(struct gr__hub *hub, gr_fiber *f, int why, bool force);

/* Ask the backend to cancel o, recording why (the first reason wins). */
void gr__op_cancel(struct gr__hub *hub, struct gr__op *o, int why);

/* ------------------------------------------------------------ fibers */

enum gr__fiber_state {
	GR__FIBER_NEW,        /* spawned, never run */
	GR__FIBER_RUNNABLE,   /* in a run queue */
	GR__FIBER_RUNNING,
	GR__FIBER_PARKED,
	GR__FIBER_DEAD,       /* fn returned (or killed before start) */
};

/* A spawned fiber's struct is 64-byte aligned at the top of its stack
 * (fiber.c): what a switch reads and writes (the run queue link, the
 * context, the gate's kill and deadline, the state), with what a park
 * and a wake-up touch, comes first, in one cache line, so that switching
 * among many fibers costs one line of each, not two (static_assert below). */
struct gr_fiber {
	struct gr__slink run_link;        /* run queue (hub->now or hub->next); first, so
					     that a link is its fiber (no offset to take) */
	gr__fcontext ctx;                 /* saved context while not running */
	struct gr__hub *hub;
	int64_t deadline;                 /* gr_deadline_set; GR_FOREVER */
	struct gr__park *park;            /* the call it is blocked in (and draining) */
	uint8_t state;                    /* enum gr__fiber_state */
	bool killed;                      /* gr_kill, not yet acknowledged */
	bool detached;
	bool is_root;                     /* a thread's main context */
	uint32_t magic;                   /* FIBER_MAGIC while the handle is valid */
	int errno_saved;                  /* its errno while another fiber runs */
	/* Second line: spawn, end, join, names. */
	struct gr__link all_link;         /* the hub's list of fibers whose stack it holds */
	void *(*fn)(void *);
	void (*void_fn)(void *);          /* gr_spawn_n's function */
	void *arg;
	void *result;
	struct gr__stack *stack;          /* NULL for a thread's main context */
	uint64_t id;
	int64_t spawned;                  /* when, on the hub's clock (hub->clock) */
	struct gr__fiber_link *links;     /* gr_link callbacks to run when it ends (link.c) */
	struct gr__waitq joiners;         /* the gr_join caller, while it waits */
	gr_fiber *joined_by;              /* whose gr_join has claimed this fiber */
	gr_fiber *joining;                /* the fiber this one is joining, for cycles */
	char name[GR__NAME_MAX];
	struct gr__sanitizer_fiber san;   /* ASan/TSan bookkeeping (context.h) */
};
_Static_assert(offsetof(gr_fiber, errno_saved) + sizeof(int) <= 64,
	       "a switch's fields of gr_fiber fit in its first cache line");

/* The fiber running on this thread; NULL before the thread's first use. */
gr_fiber *gr__self(void);

/* The fiber of a run queue link; NULL for NULL (the link is first). */
_Static_assert(offsetof(gr_fiber, run_link) == 0, "a run queue link is its fiber");
static inline gr_fiber *gr__fiber_of_run(struct gr__slink *l)
{
	return (gr_fiber *)(void *)l;
}

/* ------------------------------------------------------------ thread pool */

/* Work for the process-wide pool (threadpool.c), in memory of its owner's.
 * gr_tpool_run's jobs are one kind; operations the hub cannot perform
 * (offload.c) another. Every field but `state` is the owner's; `state` is
 * the pool's, under its lock. */
enum gr__work_state {
	GR__WORK_QUEUED,      /* in the FIFO: the owner may withdraw it */
	GR__WORK_RUNNING,     /* a worker runs it */
	GR__WORK_DONE,        /* finish() handed the outcome over */
	GR__WORK_ABANDONED,   /* its owner left while it ran: release() follows */
};

struct gr__work {
	struct gr__link link;
	/* On a worker, without the pool's lock: the work itself. */
	void (*run)(struct gr__work *w);
	/* Then, on the worker with the lock held (unless abandoned): hand the
	 * outcome to the owner. The work is the owner's again from here on:
	 * the worker never touches it afterwards. */
	void (*finish)(struct gr__work *w);
	/* For work the owner may abandon (gr__tpool_leave): let go of what it
	 * holds, on a worker without the lock, once it has run (or at once if
	 * it never started). NULL: nothing to release. */
	void (*release)(struct gr__work *w);
	uint8_t state;                    /* enum gr__work_state, the pool's lock */
};

/* Queue w (its state is set here). 0; -EAGAIN (no worker exists and none
 * could be started: w is not queued). */
int gr__tpool_submit(struct gr__work *w);
/* Take w out of the queue if no worker has taken it yet: true, and it will
 * never run; false if it runs or ran (finish() comes or came). */
bool gr__tpool_withdraw(struct gr__work *w);
/* Return once every finish() that had begun when called has returned: a
 * hub about to be freed waits out a worker still waking it. */
void gr__tpool_barrier(void);

/* ------------------------------------------------------------ offloaded ops */

/* An operation the thread pool performs instead of the backend (offload.c):
 * on a readiness hub, a read or write of a regular file that would block,
 * or a file-to-socket copy (gr_sendfile). The caller puts this record in
 * its own frame beside the operation and sets gr__op.offload; the gate
 * (op_submit, gr__op_cancel) then routes the operation here. It is an
 * operation in flight like any other: listed on its fd (gr_close waits for
 * it), counted in hub->inflight, resumed only by its completion. A cancel
 * (kill, deadline, gr_close) withdraws it if no worker has taken it yet
 * (it completes at once, -ECANCELED, mapped as usual); one already running
 * in the kernel is waited for and returns its real result, as io_uring's
 * workers do for a file read they cannot interrupt: the worker writes into
 * the caller's buffers, so the caller must not resume before it is done. */
struct gr__offload {
	struct gr__work work;
	/* The blocking system call for op, run on a worker. */
	int64_t (*perform)(const struct gr_op *op);
	struct gr__op *o;
	struct gr__hub *hub;
	int64_t res;
	struct gr__slink done_link;       /* on the hub's inbox of completed ones */
};

/* A hub's offloaded operations. */
struct gr__offloads {
	_Atomic(struct gr__slink *) done;    /* completed by workers (an inbox) */
	struct gr__timers deadlines;         /* those with a deadline (the backend
						never sees them, so cannot time them) */
	bool used;                           /* ever: hub_destroy waits out workers */
};

int gr__offload_submit(struct gr__hub *hub, struct gr__op *o);
void gr__offload_cancel(struct gr__hub *hub, struct gr__op *o);
/* The hub loop: complete what workers finished, and cancel (ETIMEDOUT)
 * those whose deadline has passed (through gr__offload_reap, below the
 * hub's struct). */
void gr__offload_reap_used(struct gr__hub *hub);
/* When the next offloaded deadline passes (GR_FOREVER: none). */
int64_t gr__offload_next_deadline(const struct gr__hub *hub);
/* Hub teardown: nothing is in flight any more; wait out workers still in
 * finish() for this hub, release the timer heap. */
void gr__offload_fini(struct gr__hub *hub);

/* io.c: the one path of every green call: the gate, then the backend's way
 * (or the pool's). Returns the result or -errno; errno untouched. */
int64_t gr__run_op(struct gr__op *o, const char *what);
/* io.c: a readiness hub's way for a stream: try, park on POLL on EAGAIN,
 * try again. p has passed the gate. */
int64_t gr__run_stream(struct gr__hub *hub, struct gr__park *p, struct gr__op *o);
/* io.c: park p until fd is ready for `events` (GR_OP_POLL; flags
 * GR_POLL_*), after the caller saw EAGAIN. With tries_again the audit of
 * long waits may end the wait before (fd.c): the caller's call must be
 * one that tries itself again and parks anew on EAGAIN. 0; -EBADF (the fd
 * was closed with gr_close meanwhile: its number may name a new file), the
 * gate's errors. */
int64_t gr__park_ready(struct gr__hub *hub, struct gr__park *p, int fd, short events, int flags,
		       bool tries_again);
/* io.c: make fd O_NONBLOCK if it is not (asked every time: a number reused
 * by plain close() and open() may name a new, blocking file). 0 or -errno. */
int gr__fd_nonblocking(int fd);
/* file.c: a readiness hub's way for a read or write of a regular file. */
int64_t gr__file_rw(struct gr__hub *hub, struct gr__park *p, struct gr__op *o);
/* file.c: a read or write (or its vector form) as one preadv2/pwritev2 with
 * `rwf` (RWF_NOWAIT or 0), at op->off or, if negative, the file position:
 * the result, or -errno. */
int64_t gr__rw_call(const struct gr_op *op, int rwf);

/* ------------------------------------------------------------ the hub */

struct gr__fdstate;

/* What a hub counts, for gr_hub_counters, the dump and GREENRING_DEBUG's
 * line at thread exit (observe.h says what each means). Plain increments:
 * only the hub's own thread touches them, and they cost one add each on the
 * paths they count (docs/observing.md, "Cost"). */
struct gr__hub_counters {
	uint64_t submitted[GR_OP_KIND_COUNT]; /* operations handed to the backend, by kind */
	uint64_t completed[GR_OP_KIND_COUNT];
	uint64_t cancels;                 /* cancels asked of the backend */
	uint64_t deadlines;               /* calls failed by a deadline (gate or timer) */
	uint64_t unparks;                 /* wait-queue wake-ups on this hub */
	uint64_t remote_wakeups;          /* fibers woken from other threads (inbox) */
	uint64_t spawned;
	uint64_t ended;
	int64_t longest_run_ns;           /* the longest the loop waited for its turn */
	uint64_t spins_caught;            /* idle.c: spins that got a post */
	uint64_t spins_missed;            /* and those that did not */
};

/* The monitor's notes on one hub (monitor.c): only the monitor thread
 * touches them, with the hubs lock held. */
struct gr__hub_watch {
	uint64_t progress;                /* hub->progress as last seen */
	int64_t since;                    /* when that value was first seen */
	bool reported;                    /* this stall has been reported */
	uint64_t fiber_id;                /* who was running, for the line at its end */
	char fiber_name[GR__NAME_MAX];
};

struct gr__hub {
	const struct gr_hub_ops *ops;
	void *backend;
	struct gr__link proc_link;        /* every hub of the process (gr__hubs) */
	gr_fiber root;                    /* the thread's main context */
	gr_fiber *loop;                   /* the hub fiber; NULL until something blocks */
	gr_fiber *current;
	int *errno_at;                    /* this thread's errno (gr__switch_to) */
	/* The one field another thread (the monitor) reads while the hub runs:
	 * +2 at every switch and every turn a lone fiber starts for itself, +1
	 * on entering and again on leaving a wait() that may block, so an odd
	 * value means "idle in the backend", and an even value that stays put
	 * means one fiber has been running all along. Written by this thread
	 * only: a relaxed load and store, no locked instruction. */
	_Atomic uint64_t progress;
	/* The run queue, singly linked (list.h, "FIFOs"): `now`, the rest of
	 * this turn, is `next` taken whole when the loop starts a turn, which
	 * it does only once `now` is empty (gr__schedule goes to the loop
	 * only then); a fiber made runnable goes to the back of `next`. */
	struct gr__slink *now;            /* runs in this turn, in order */
	struct gr__fifo next;             /* runs in the next turn */
	struct gr__list all;              /* spawned fibers whose stack we hold */
	size_t nfibers;                   /* live spawned fibers (not root) */
	size_t inflight;                  /* operations submitted and not completed */
	struct gr__waitq hub_joiners;     /* gr_hub_join callers */
	_Atomic(struct gr__slink *) inbox; /* posted by other threads (gr__hub_post) */
	struct gr__offloads offload;      /* operations the thread pool performs */
	size_t remote_waiting;            /* fibers parked on cross-thread queues */
	struct gr__list fd_requests;      /* other threads' gr_close, served by fibers here */
	unsigned fd_slot;                 /* its bit in the fd claims (fd_remote.c) */
	struct gr__fdstate **fd_chunks;   /* per-fd state (fd.c), in chunks that never move */
	size_t fd_nchunks;
	size_t fds_busy;                  /* fds with operations in flight */
	int64_t audit_due;                /* when the next audit runs; 0 = not planned */
	unsigned wait_failures;           /* backend wait() failures in a row */
	unsigned wait_interrupts;         /* early returns (EINTR...) in a row, since */
	int64_t wait_interrupts_since;    /* the first of them (hub.c, wait_spins) */
	bool foreign;                     /* ops are a third party's (not gr__builtin_hubs) */
	struct gr__stack_pool *stacks;
	struct gr__sighub *signals;       /* signal.c: NULL until a fiber waits for a signal */
	struct gr__laters *laters;        /* later.c: NULL until something is spawned later */
	unsigned long turns;
	unsigned queued;                  /* operations submitted since the last wait():
					     a completion backend has them queued for it */
	int64_t clock;                    /* gr__coarse_now() when the loop last started
					     a turn: parks and spawns copy it instead of
					     reading the clock (docs/observing.md: how
					     stale, how coarse) */
	struct gr__hub_counters counters;
	pid_t tid;                        /* its thread, for the monitor and the dump */
	struct gr__hub_watch watch;
	uint64_t streak_at;               /* `progress` when the streak began */
	unsigned streak;                  /* green calls the running fiber finished
					     without a switch (io.c's budget): counted
					     while progress stays streak_at */
	unsigned io_budget;               /* GREENRING_IO_BUDGET */
	/* idle.c: set while the loop may block in wait(), so that other
	 * threads' posts wake it only then; the spin for a post. */
	atomic_bool sleeping;
	int64_t spin_max;                 /* GREENRING_SPIN_US, 0: never spin */
	unsigned spin_skip;               /* idle spells to sleep through unspun */
	unsigned spin_backoff;            /* the next skip if a spin fails */
	uint32_t waits;                   /* 2 x backend wait() calls so far + 1:
					     the "wait generation" of drain.c's
					     hints; odd, so never 0 (no hint) */
};

/* offload.c's reap (gr__offload_reap_used, above), called twice per loop
 * turn: a hub that never offloaded anything (no worker can have finished
 * one for it, no deadline of one is pending) asks nothing more. */
static inline void gr__offload_reap(struct gr__hub *hub)
{
	if (__builtin_expect(hub->offload.used, 0))
		gr__offload_reap_used(hub);
}

/* The loop asks twice per turn, and an inbox is nearly always empty: a
 * load, without a call (gr__hub_take_inbox, above). */
static inline void gr__hub_drain_inbox(struct gr__hub *hub)
{
	if (atomic_load_explicit(&hub->inbox, memory_order_relaxed))
		gr__hub_take_inbox(hub);
}

/* The hub moved along (see gr__hub.progress). */
static inline void gr__hub_progress(struct gr__hub *hub, unsigned n)
{
	atomic_store_explicit(&hub->progress,
			      atomic_load_explicit(&hub->progress, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* Every hub of the process, in creation order (kept by hub.c). A hub stays
 * on the list until its thread has let go of every fiber, so its thread is
 * alive as long as it is listed, unless the hub was leaked at thread exit
 * (then its tid is 0). Walk it only through gr__hubs_visit (below);
 * debuggers read it directly (debugger.c). */
extern struct gr__list gr__hubs;

/* A request another thread makes of a hub (the dump, a gr_close from
 * another thread). It rides the hub's inbox as a park with no fiber, so it
 * reaches a hub blocked in its backend (the post wakes it) and one whose
 * fibers start turns by themselves (a non-empty inbox sends them to the
 * loop); the loop runs it on the hub's thread, no fiber running. A hub
 * being torn down runs the requests still queued. Send it only while the
 * hub is listed (inside gr__hubs_visit), and keep rq valid until run has
 * been called. The caller fills run (and park.what). */
struct gr__hub_request {
	struct gr__park park;
	void (*run)(struct gr__hub *hub, struct gr__hub_request *rq);
};
void gr__hub_request(struct gr__hub *hub, struct gr__hub_request *rq);

/* fd_remote.c: the bit of the fd record a gr_close on this hub needs no
 * request for: the hub's own (none while slots are shared, when the bit may
 * be another hub's too). */
extern atomic_bool gr__claim_slots_shared;
static inline uint64_t gr__claim_mine(const struct gr__hub *hub)
{
	if (!hub || atomic_load_explicit(&gr__claim_slots_shared, memory_order_relaxed))
		return 0;
	return (uint64_t)1 << hub->fd_slot;
}

/* This thread's hub; read by the SIGSEGV handler too, hence initial-exec
 * (no lazy allocation on first access). */
extern __thread struct gr__hub *gr__tls_hub __attribute__((tls_model("initial-exec")));

/* This thread's hub, created (and its backend chosen) on first use;
 * NULL with *err = -errno if no backend can run. */
struct gr__hub *gr__hub_get(int *err);
/* gr__hub_outside when the hub may not exist yet: it is made here. */
int gr__hub_outside_slow(struct gr__hub **hubp);
/* The same for a call that does not block but must be made outside the
 * hub (it spawns fibers or starts work for them): 0 and *hubp; the
 * creation error; -EPERM inside the hub. Inline while the hub exists:
 * every spawn asks (a call each was 4% of a pool spawn, callgrind). */
static inline int gr__hub_outside(struct gr__hub **hubp)
{
	struct gr__hub *hub = gr__tls_hub;

	if (hub && hub->current != hub->loop) {
		*hubp = hub;
		return 0;
	}
	return gr__hub_outside_slow(hubp);
}
/* This thread's hub if it exists, else NULL. */
static inline struct gr__hub *gr__hub_peek(void)
{
	return gr__tls_hub;
}

/* fiber.c: switching and fiber bookkeeping the hub needs. */
/* The parts of gr__switch_arrived (below) that a release build's common
 * switch does not run, out of line so that a switch keeps nothing alive
 * across the jump (no register to save and restore around it): telling
 * ASan the switch is over, and releasing the stack of a detached fiber
 * that switched away for good. */
void gr__switch_arrived_asan(gr_fiber *self, gr_fiber *prev);
__attribute__((cold, noinline)) void gr__switch_left_dead(gr_fiber *prev);
/* First thing a context does after a jump: finish the switch (sanitizers,
 * saving the context of the fiber we came from, releasing it if it died:
 * we are off its stack now). */
static inline __attribute__((always_inline)) void gr__switch_arrived(gr_fiber *self, gr__transfer t)
{
	gr_fiber *prev = t.data;

#ifdef GR__ASAN
	gr__switch_arrived_asan(self, prev);
#else
	(void)self;
#endif
	if (__builtin_expect(prev->state != GR__FIBER_DEAD, 1))
		prev->ctx = t.fctx;
	else
		gr__switch_left_dead(prev);
}
void gr__sanitizer_fiber_init(gr_fiber *f);
void gr__sanitizer_root_init(gr_fiber *root);
/* Give f's stack back (f must not be running on it). */
void gr__fiber_release_stack(struct gr__hub *hub, gr_fiber *f);
uint64_t gr__next_fiber_id(void);
/* fiber.c: 0 and *hubp if f is a live fiber handle of this thread; -EINVAL
 * (NULL, released), -EPERM (another thread's). */
int gr__fiber_own(const gr_fiber *f, struct gr__hub **hubp);
/* link.c: f ended (its result and kill state are final): spawn its links'
 * callbacks. Called by f itself, still running on its stack. */
void gr__links_fire(struct gr__hub *hub, gr_fiber *f);
/* link.c: f is released without having ended (thread exit): drop its links. */
void gr__links_drop(gr_fiber *f);
/* signal.c: the hub goes away (nothing in flight any more): close the
 * signalfd, free the state. */
void gr__signal_hub_free(struct gr__hub *hub);
/* signal.c: in a fork child, drop the hub's signalfd (ours to close: the
 * parent keeps its own reference). */
void gr__signal_fork_child(struct gr__hub *hub);
/* later.c: the hub goes away: free what is still pending (it never runs). */
void gr__laters_free(struct gr__hub *hub);
/* fiber.c: gr_spawn_with on hub without its checks, so that the hub
 * itself may start a fiber (fd_remote.c); NULL with errno. */
gr_fiber *gr__spawn_on(struct gr__hub *hub, const struct gr_spawn_opts *opts, void *(*fn)(void *),
		       void *arg);
/* hub.c: a fiber ended; wake gr_hub_join callers whose wait is over. */
void gr__hub_fiber_ended(struct gr__hub *hub);
/* hub.c: call fn(hub, arg) for every hub of the process whose thread is
 * alive, under the lock that a hub's teardown takes to leave the list (so
 * each is alive, and may be posted to, for the duration of the call). A
 * hub leaked at its thread's exit is left out: nothing would ever drain
 * its inbox. fn must not block: hub creation, teardown and fork wait. */
void gr__hubs_visit(void (*fn)(struct gr__hub *hub, void *arg), void *arg);
/* io.c: gr_close's own work on this hub: cancel, drain, close (how). 0 or
 * -errno. */
enum gr__close_how {
	GR__CLOSE,            /* gr_close: on a completion hub, by the backend */
	GR__CLOSE_NOW,        /* close(2) once drained, with no wait after it: a
				 thread exiting in between finds it either not
				 begun or done (fd_remote.c serves requests so) */
	GR__CLOSE_HOLD,       /* all but the close: the fd is held for another
				 thread's close (fd_remote.c) */
};
int gr__close_here(struct gr__hub *hub, int fd, enum gr__close_how how);
/* hub.c: lifecycle, used by hub_select.c. */
struct gr__hub *gr__hub_alloc(const struct gr_hub_ops *ops, void *backend);
int gr__hub_install(struct gr__hub *hub);
int gr__hub_destroy_idle(void);
/* hub_select.c: create and install this thread's hub (ops NULL: the usual choice). */
int gr__hub_create_with(const struct gr_hub_ops *ops, struct gr__hub **out);

/* Run queues. */
static inline void gr__runq_push(struct gr__hub *hub, gr_fiber *f)
{
	gr__fifo_push_back(&hub->next, &f->run_link);
}

/* The hub loop starts the next turn, which must have a fiber: what was
 * made runnable during this one (in `next`) becomes `now`, which is empty,
 * and its first fiber is returned, taken off. (A turn a fiber starts
 * itself, gr__runq_take, is served from `next` in place instead.) */
static inline gr_fiber *gr__runq_next_turn(struct gr__hub *hub)
{
	struct gr__slink *first = gr__fifo_take_all(&hub->next);

	hub->now = first->next;
	hub->turns++;
	return gr__fiber_of_run(first);
}

/* Make a parked or new fiber runnable (next turn, FIFO). Does not switch. */
static inline void gr__ready(gr_fiber *f)
{
	f->state = GR__FIBER_RUNNABLE;
	gr__runq_push(f->hub, f);
}

/* Jump from `from` to `to`, telling the sanitizers. */
static inline __attribute__((always_inline)) void gr__switch_to(struct gr__hub *hub, gr_fiber *from,
								gr_fiber *to, bool dying)
{
	/* Progress first (a compiler barrier keeps the order; the CPU keeps
	 * it for a handler on this thread): the monitor's signal handler,
	 * finding the count it saw stalled, can trust `current`. */
	gr__hub_progress(hub, 2);
	atomic_signal_fence(memory_order_seq_cst);
	hub->current = to;
	to->state = GR__FIBER_RUNNING;
	/* errno is each fiber's own, as each thread's is: what another fiber
	 * leaves in it must not be what this one finds after a call that
	 * switched and succeeded (a read, then gr_mutex_lock, then a test of
	 * errno, in code written for threads). Kept by the side that jumps,
	 * for both: nothing is needed after the jump. */
	from->errno_saved = *hub->errno_at;
	*hub->errno_at = to->errno_saved;
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
	gr__switch_arrived(from, t);
}

/* The hub fiber, created by the first park check (gr__park_hub); NULL if
 * its stack cannot be mapped. */
gr_fiber *gr__hub_loop_fiber(struct gr__hub *hub);

/* The fiber to run after the current one, taken off the run queue: the
 * next of this turn; once the turn is over and the hub has nothing to reap
 * (nothing in flight, nothing posted), the first of the next turn, which
 * starts here rather than in the hub loop (the loop's step 2 would have
 * nothing to do). It is served from `next` where it stands: moving it to
 * `now` first would keep the order and cost a splice per yield of two
 * ping-ponging fibers; what such a turn makes runnable queues behind it,
 * as it would behind `now`. NULL: the hub loop must run (*reap true), or
 * nothing else is runnable and nothing is there to reap (*reap false). */
static inline __attribute__((always_inline)) gr_fiber *gr__runq_take(struct gr__hub *hub, bool *reap)
{
	struct gr__slink *next = hub->now;

	*reap = false;
	if (next) {
		hub->now = next->next;
		return gr__fiber_of_run(next);
	}
	/* Anything in flight, anything posted? One test for both. */
	if ((hub->inflight | (uintptr_t)atomic_load_explicit(&hub->inbox, memory_order_relaxed)) != 0) {
		*reap = true;
		return NULL;
	}
	next = gr__fifo_pop_front(&hub->next);
	if (next)
		hub->turns++;
	return gr__fiber_of_run(next);
}

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
	bool reap;
	gr_fiber *next = gr__runq_take(hub, &reap);

	if (!next) {
		/* Made by the gate's first check: no call out of line. */
		next = hub->loop ? hub->loop : gr__hub_loop_fiber(hub);
	}
	if (next == self) {
		/* A lone fiber yielding goes on without a switch: still progress. */
		self->state = GR__FIBER_RUNNING;
		gr__hub_progress(hub, 2);
		return;
	}
	gr__switch_to(hub, self, next, dying);
}

/* The current fiber yields: it runs again in the next turn, behind every
 * fiber runnable now, after the hub has reaped if anything is in flight.
 * The same as gr__ready(self) and gr__switch_out, but the next fiber is
 * taken before the current one is queued, which is the same order (the
 * current one goes to the back) without the push and pop of a lone fiber,
 * and without reading back, in the pop, the link the push just wrote
 * (bench/micro's yield). The caller has passed the gate (gr__park_hub,
 * gr__park_check). */
static inline __attribute__((always_inline)) void gr__yield(struct gr__hub *hub)
{
	gr_fiber *self = hub->current;
	bool reap;
	gr_fiber *next = gr__runq_take(hub, &reap);

	if (!next) {
		if (!reap) {
			/* Alone, nothing to reap: a turn of one, without a switch. */
			hub->turns++;
			gr__hub_progress(hub, 2);
			return;
		}
		next = hub->loop; /* made by gr__park_hub */
	}
	self->state = GR__FIBER_RUNNABLE;
	gr__runq_push(hub, self);
	gr__switch_to(hub, self, next, false);
}

static inline __attribute__((always_inline)) void gr__switch_out(struct gr__hub *hub)
{
	gr__schedule(hub, false);
}

/* The slow half of gr__park_hub (the gate's first check, see above): the
 * hub, or NULL with *err set. It returns the hub rather than storing it
 * through the caller's pointer: a caller's `hub` whose address reached an
 * out-of-line call lived on the stack, and every blocking call reloaded it
 * from there after each store through a pointer (bench/micro's yield). */
struct gr__hub *gr__park_hub_slow(int *err);
/* gr__park_hub's answer when it needs no call: this thread's hub if the
 * caller may park there, else NULL (ask the slow path). The loop fiber runs
 * backend code: parking it would leave nobody to reap completions. Before
 * the loop fiber exists, the slow path makes it (every switch starts with
 * this check, so it exists by then). */
static inline struct gr__hub *gr__park_hub_quick(void)
{
	struct gr__hub *hub = gr__tls_hub;

	return hub && hub->loop && hub->current != hub->loop ? hub : NULL;
}

static inline int gr__park_hub(struct gr__hub **hubp)
{
	struct gr__hub *hub = gr__park_hub_quick();

	if (hub) {
		*hubp = hub;
		return 0;
	}
	int err = 0;

	hub = gr__park_hub_slow(&err);
	if (hub)
		*hubp = hub;
	return err;
}

/* A deadline failed a call at the gate: counted (on this thread's hub),
 * -ETIMEDOUT. Out of line, cold, and with no argument, so that counting
 * keeps nothing alive across the inlined check's clock read: a register
 * saved per yield showed in bench/micro. */
__attribute__((cold, noinline)) int gr__deadline_passed(void);

/* The gate's pre-block checks (see "The gate" above). Inline: every
 * blocking call passes here, yields included. */
static inline int gr__park_check(const gr_fiber *self, int64_t deadline, bool uncancellable,
				 int64_t *effective)
{
	if (deadline == 0 || uncancellable) {
		*effective = deadline;
		return 0;
	}
	if (self->killed)
		return -ECANCELED;
	*effective = gr__deadline_min(deadline, self->deadline);
	if (*effective != GR_FOREVER && *effective <= gr_now())
		return gr__deadline_passed();
	return 0;
}

/* The gate's part of the record, but for the deadline: gr__park_begin's
 * first half, alone for a call that ran gr__park_check before it knew it
 * would park (io.c's first try of a socket call). */
static inline void gr__park_fill(struct gr__hub *hub, struct gr__park *p)
{
	p->fiber = hub->current;
	p->queue = NULL;
	p->xq = NULL;
	p->op = NULL;
	p->status = 0;
	p->kind = GR__PARK_OP;
	p->cond = NULL;
}

static inline int gr__park_begin(struct gr__hub *hub, struct gr__park *p, int64_t deadline)
{
	gr__park_fill(hub, p);
	return gr__park_check(p->fiber, deadline, p->uncancellable, &p->deadline);
}

/* Both halves of gr__park_hub + gr__park_begin, for the common case. */
static inline int gr__park_prepare(struct gr__hub **hubp, struct gr__park *p, int64_t deadline)
{
	int err = gr__park_hub(hubp);

	return err ? err : gr__park_begin(*hubp, p, deadline);
}

/* ------------------------------------------------------------ fds (fd.c) */

struct gr__fdstate {
	struct gr__list ops;              /* gr__op.fd_link: in flight naming this fd */
	struct gr__waitq closers;         /* gr_close waiting for ops to drain */
	uint32_t closes;                  /* gr_close calls so far: a readiness retry
					     that waited across one must not touch
					     the number again (it may be a new file) */
	uint32_t audit_at;                /* the audit epoch of the next check; 0 = none */
	uint32_t held_at;                 /* GR__FD_HELD: the fd's close count then */
	uint8_t audit_gap;                /* epochs between checks, doubling */
	uint8_t closing;                  /* 0, GR__FD_CLOSING, GR__FD_HELD */
	bool claimed;                     /* this hub's claim on the fd is recorded */
	/* What belongs to the file behind the number, not to one call: all
	 * forgotten by gr_close and set afresh when the runtime makes a file
	 * under the number (gr__fd_born). A number closed with plain close()
	 * keeps them for its next file (docs/api.md says so). */
	uint8_t kind;                     /* enum gr__fd_kind: a hint, see below */
	uint8_t nowait_refused;           /* GR__NOWAIT_*: this file refused RWF_NOWAIT */
	uint8_t nowait_taken;             /* GR__NOWAIT_*: this file took RWF_NOWAIT, so
					     a completion backend may perform its reads
					     (writes) itself (io.c, completes_in_backend) */
	uint8_t drains;                   /* enum gr__drains (drain.c): whether a short
					     recv empties this file's receive queue */
	uint32_t drained_at;              /* drain.c: hub->waits when a recv came back
					     short, 0 = no such hint */
	int64_t deadline[2];              /* gr_fd_set_deadline: [0] reads, [1] writes;
					     absolute, 0 = none (a past one is kept as 1,
					     never the 0 of a pure try) */
};

/* What an fd number names, as far as the core cares:
 *   a socket   a write is a send with MSG_NOSIGNAL (never SIGPIPE);
 *   a stream   (pipe, tty, eventfd...) poll(2) says when it is ready;
 *   a file     (a regular file or block device) always "ready", its reads
 *              and writes may wait for a disk: on a readiness hub they go
 *              to the thread pool when they would block.
 * A hint cached per number: learned with fstat the first time, set at birth
 * by gr_accept and gr_connect (sockets) and gr_open (files), forgotten by
 * gr_close. A number closed with plain close() and reused keeps a stale
 * hint, so it is trusted only where a wrong guess costs time, never a wrong
 * result: before a worker is handed an fd (it would block on a stream),
 * gr__fd_kind_check() asks fstat again, and a send to a "socket" that is
 * not one fails with ENOTSOCK and is redone as a write. */
enum gr__fd_kind {
	GR__FD_UNKNOWN = 0,
	GR__FD_SOCKET,
	GR__FD_STREAM,
	GR__FD_FILE,
};
#define GR__NOWAIT_READ 0x1
#define GR__NOWAIT_WRITE 0x2

/* What a file of this st_mode is. */
enum gr__fd_kind gr__fd_kind_of_mode(unsigned mode);
/* Sockets and streams say when they are ready; files do not. */
static inline bool gr__fd_kind_polls(int kind)
{
	return kind == GR__FD_SOCKET || kind == GR__FD_STREAM;
}
/* The kind of fd from the hint, or fstat when there is none (then cached).
 * GR__FD_*, or -EBADF, -ENOMEM. */
int gr__fd_kind(struct gr__hub *hub, int fd);
/* The kind of fd asked of the kernel now, the hint updated. GR__FD_*, or
 * -errno from fstat. */
int gr__fd_kind_check(struct gr__hub *hub, int fd);
/* Set the hint (a call just learnt what fd is). */
void gr__fd_set_kind(struct gr__hub *hub, int fd, enum gr__fd_kind kind);
/* A new file was made under fd by the runtime (kind: what it is): forget
 * what belonged to the number's earlier file (deadlines, kind). */
void gr__fd_born(struct gr__hub *hub, int fd, enum gr__fd_kind kind);
/* gr_close is closing st's fd: the same forgetting. */
void gr__fd_forget(struct gr__fdstate *st);
/* The number may name another file than the one the hints were learnt of
 * (the audit of a long wait on a completion hub): forget the kind and the
 * RWF_NOWAIT answers, which the next calls learn again. */
void gr__fd_doubt(struct gr__fdstate *st);

/* gr__fdstate.closing: a gr_close of this hub is under way; or another
 * thread's gr_close is, and holds the fd here until it has closed it
 * (fd_remote.c). Either way, new operations on the fd fail with EBADF. */
#define GR__FD_CLOSING 1
#define GR__FD_HELD 2

/* fd's state, made on first use for an open fd. NULL with errno: EBADF (a
 * negative or unopened fd), ENOMEM. The address is stable for the hub's
 * life. gr__fd_state_make is the first use (out of line). */
struct gr__fdstate *gr__fd_state_make(struct gr__hub *hub, int fd);
#define GR__FD_CHUNK 256

/* fd's state if it was ever made, else NULL. Inline: every green call
 * looks up its fd's deadlines. */
static inline struct gr__fdstate *gr__fd_peek(struct gr__hub *hub, int fd)
{
	size_t c = (size_t)fd / GR__FD_CHUNK;

	if (fd < 0 || c >= hub->fd_nchunks || !hub->fd_chunks[c])
		return NULL;
	return &hub->fd_chunks[c][(size_t)fd % GR__FD_CHUNK];
}

static inline struct gr__fdstate *gr__fd_state(struct gr__hub *hub, int fd)
{
	struct gr__fdstate *st = gr__fd_peek(hub, fd);

	return __builtin_expect(st != NULL, 1) ? st : gr__fd_state_make(hub, fd);
}

/* List o on its fd (before submit). 0; -EBADF (a gr_close of fd is under
 * way, or fd is not open); -ENOMEM. Inline for the common case (the fd's
 * state exists, no close is under way, this hub's claim on the fd is
 * recorded); gr__fd_link_slow does the rest: every operation passes here,
 * and the call out of line with a second lookup cost ~50 instructions. */
/* How often the audit runs: a wait on an fd is first checked after one to
 * two epochs. */
#define GR__FD_AUDIT_EPOCH (100 * GR_MSEC)
int gr__fd_link_slow(struct gr__hub *hub, struct gr__op *o, struct gr__fdstate *st);
/* An fd gets its first operation in flight. The audit planned may be far
 * off, behind fds whose checks have backed off: this fd's wait must be seen
 * by the walk an epoch from now, to be checked an epoch after (fd.c). */
static inline void gr__fd_busy(struct gr__hub *hub)
{
	hub->fds_busy++;
	if (hub->audit_due > hub->clock + GR__FD_AUDIT_EPOCH)
		hub->audit_due = hub->clock + GR__FD_AUDIT_EPOCH;
}
static inline int gr__fd_link(struct gr__hub *hub, struct gr__op *o)
{
	struct gr__fdstate *st = o->fd_st ? o->fd_st : gr__fd_peek(hub, o->op.fd);

	if (__builtin_expect(!st || st->closing || !st->claimed, 0))
		return gr__fd_link_slow(hub, o, st);
	if (gr__list_empty(&st->ops))
		gr__fd_busy(hub);
	gr__list_push_back(&st->ops, &o->fd_link);
	o->fd_st = st;
	o->on_fd = true;
	return 0;
}

/* Take o off its fd's list (at completion, or a failed submit). Inline
 * but for what a close needs (a gr_close of the fd under way, or its own
 * close operation): gr__fd_unlink_close. */
void gr__fd_unlink_close(struct gr__hub *hub, struct gr__op *o, struct gr__fdstate *st);
static inline void gr__fd_unlink(struct gr__hub *hub, struct gr__op *o)
{
	struct gr__fdstate *st = o->fd_st;

	gr__list_remove(&st->ops, &o->fd_link);
	o->on_fd = false;
	if (__builtin_expect(st->closing != 0 || o->op.kind == GR_OP_CLOSE, 0)) {
		gr__fd_unlink_close(hub, o, st);
		return;
	}
	if (gr__list_empty(&st->ops)) {
		hub->fds_busy--;
		/* A retime goes on waiting: its audits keep backing off (the
		 * audit's own resubmission on io_uring would otherwise come
		 * again every other epoch, for ever). */
		if (!gr__cancel_weak(o->cancel_errno))
			st->audit_at = 0;
	}
}
/* Cancel every operation on st with `why`. Safe when a cancel completes
 * other operations of the fd synchronously. */
void gr__fd_cancel_all(struct gr__hub *hub, struct gr__fdstate *st, int why);
/* The hub loop's check of long waits on fds closed behind the runtime's
 * back: runs the audits due at `now`, returns when the next is due
 * (GR_FOREVER: nothing to audit). */
int64_t gr__fd_audit(struct gr__hub *hub, int64_t now);
/* The same, asked every loop turn while fds wait: inline when the audit
 * planned is not due yet, which is nearly always. */
static inline int64_t gr__fd_audit_next(struct gr__hub *hub, int64_t now)
{
	if (hub->fds_busy != 0 && hub->audit_due != 0 && now < hub->audit_due)
		return hub->audit_due;
	return gr__fd_audit(hub, now);
}
/* Release the table (hub teardown). */
void gr__fd_table_free(struct gr__hub *hub);

/* The sooner per-fd deadline of the directions in `dirs` (GR_FD_READ,
 * GR_FD_WRITE) for calls on the fd whose state is st (NULL: none made yet,
 * so none set), GR_FOREVER if none is set. */
static inline int64_t gr__fd_deadline_of(const struct gr__fdstate *st, unsigned dirs)
{
	int64_t d = GR_FOREVER;

	if (!st)
		return d;
	if ((dirs & GR_FD_READ) && st->deadline[0])
		d = st->deadline[0];
	if ((dirs & GR_FD_WRITE) && st->deadline[1])
		d = gr__deadline_min(d, st->deadline[1]);
	return d;
}

/* The same, for fd on this hub. */
static inline int64_t gr__fd_deadline(struct gr__hub *hub, int fd, unsigned dirs)
{
	return gr__fd_deadline_of(gr__fd_peek(hub, fd), dirs);
}

/* ------------------------------------------------------------ drain hints (drain.c) */

/* Whether a short recv on a file means its receive queue is empty
 * (gr__fdstate.drains): learnt once per file, forgotten with its kind. */
enum gr__drains {
	GR__DRAINS_UNKNOWN = 0,
	GR__DRAINS_YES, /* a TCP stream socket */
	GR__DRAINS_NO,  /* anything else: datagrams, unix sockets, pipes... */
};

/* The recv flags under which a short read still means "drained": none that
 * peeks, reads urgent data or reads the error queue. */
#define GR__DRAIN_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL | MSG_WAITALL | MSG_CMSG_CLOEXEC)

/* The largest recv whose short read still means "drained": the kernel
 * cuts a call to MAX_RW_COUNT (2 GiB less a page) whatever is queued. */
#define GR__DRAIN_MAX_LEN ((size_t)1 << 30)

/* Whether o (a recv) may be the drain hint's subject: 1 byte to
 * GR__DRAIN_MAX_LEN asked (one compare: len - 1 wraps for 0), only flags
 * that keep a short read meaningful. */
static inline bool gr__drain_subject(const struct gr__op *o)
{
	return o->op.kind == GR_OP_RECV && o->op.len - 1 < GR__DRAIN_MAX_LEN &&
	       !(o->op.flags & ~GR__DRAIN_FLAGS);
}

/* Learn whether st's file (fd) drains on a short read (getsockopt, once per
 * file): sets st->drains. */
void gr__drain_learn(int fd, struct gr__fdstate *st);

/* A readiness hub: o, a recv about to be tried with `deadline`, may skip
 * the try and park at once (GR_POLL_AFTER_EAGAIN), because the last recv
 * on its fd came back short and the hub has not waited since. The hint is
 * used up. Never for a pure try (deadline 0): a try must try. */
static inline bool gr__drain_hinted(const struct gr__hub *hub, const struct gr__op *o,
				    int64_t deadline)
{
	struct gr__fdstate *st = o->fd_st;

	if (__builtin_expect(!st || st->drained_at != hub->waits, 1) || deadline == 0 ||
	    !gr__drain_subject(o))
		return false;
	st->drained_at = 0;
	return true;
}

/* o (a recv) returned r: a short read of a file that drains leaves the
 * hint for the next recv of the same wait generation. */
static inline void gr__drain_note(struct gr__hub *hub, struct gr__op *o, int64_t r)
{
	struct gr__fdstate *st = o->fd_st;

	if (r <= 0 || (size_t)r >= o->op.len || !st || !gr__drain_subject(o))
		return;
	if (__builtin_expect(st->drains == GR__DRAINS_UNKNOWN, 0))
		gr__drain_learn(o->op.fd, st);
	if (st->drains == GR__DRAINS_YES)
		st->drained_at = hub->waits;
}

/* A hinted park that lasted an audit epoch (fd.c) or more may have been
 * ended by the audit rather than by data: the hint may be stale (the number
 * closed with close() and reused by a file that does not drain). The file
 * is learnt afresh at its next short read: two getsockopt calls after a
 * wait this long cost nothing, and a stale hint costs one stall, not one
 * per message. Half an epoch: the park is measured on the hub's coarse
 * clock (hub->clock), which may read up to a tick (1-10 ms) short. */
#define GR__DRAIN_DOUBT_NS (GR__FD_AUDIT_EPOCH / 2)
static inline void gr__drain_doubt(struct gr__fdstate *st)
{
	if (st)
		st->drains = GR__DRAINS_UNKNOWN;
}

/* fds across threads (fd_remote.c). A process-wide record says, per fd,
 * which hubs may have operations on it (a bit per hub slot), so that a
 * gr_close from another thread reaches their fibers.
 *
 * gr__fd_claim: record this hub on fd (st->claimed was false); called when
 * an operation is first listed on the fd since this hub last closed it.
 * gr__fd_unclaim: drop it again (this hub closed the fd).
 * gr__fd_elsewhere: gr_close's first question, inline because every close
 * asks it: may hubs other than `hub` (NULL: a thread without one) have
 * operations on fd? If so gr__fd_close_elsewhere does the whole close with
 * them: 0 or -errno.
 * gr__fd_requests_at_exit: the hub's thread exits while its fibers serve
 * such requests: serve them now (hub.c, once nothing is in flight).
 * gr__fd_hold: the fd is drained here for another thread's close: hold it.
 * gr__fd_still_held: the fd is closing here (true), or was held and the
 * closer has closed it since (false, and the hold is over). */
struct gr__claim {
	_Atomic uint64_t hubs;            /* bit s: a hub of slot s may use the fd */
	_Atomic uint32_t closes;          /* closes done while other hubs held it */
};
#define GR__CLAIM_CHUNK_SHIFT 12
#define GR__CLAIM_CHUNK ((size_t)1 << GR__CLAIM_CHUNK_SHIFT)
/* fds below 2^26 are recorded (the kernel's default fs.nr_open is 2^20); a
 * number above is closed as if no other thread used it. */
#define GR__CLAIM_CHUNKS ((size_t)1 << (26 - GR__CLAIM_CHUNK_SHIFT))
extern _Atomic(struct gr__claim *) gr__claims[GR__CLAIM_CHUNKS];

static inline struct gr__claim *gr__claim_peek(int fd)
{
	size_t c = (size_t)(unsigned)fd >> GR__CLAIM_CHUNK_SHIFT;

	if (c >= GR__CLAIM_CHUNKS)
		return NULL; /* a negative fd lands here too */
	struct gr__claim *chunk = atomic_load_explicit(&gr__claims[c], memory_order_acquire);
	return chunk ? &chunk[(size_t)fd & (GR__CLAIM_CHUNK - 1)] : NULL;
}

static inline bool gr__fd_elsewhere(const struct gr__hub *hub, int fd)
{
	struct gr__claim *c = gr__claim_peek(fd);

	/* seq_cst pairs with the claim's: an operation listed before this
	 * close began is seen. (On x86 a plain load either way.) */
	return c && (atomic_load_explicit(&c->hubs, memory_order_seq_cst) & ~gr__claim_mine(hub));
}

void gr__fd_claim(struct gr__hub *hub, int fd, struct gr__fdstate *st);
void gr__fd_unclaim_slow(struct gr__hub *hub, int fd, struct gr__fdstate *st);
static inline void gr__fd_unclaim(struct gr__hub *hub, int fd, struct gr__fdstate *st)
{
	if (st->claimed)
		gr__fd_unclaim_slow(hub, fd, st);
}
int gr__fd_close_elsewhere(struct gr__hub *hub, int fd);
void gr__fd_requests_at_exit(struct gr__hub *hub);
void gr__fd_hold(int fd, struct gr__fdstate *st);
bool gr__fd_hold_goes_on(int fd, struct gr__fdstate *st);

static inline bool gr__fd_still_held(int fd, struct gr__fdstate *st)
{
	if (__builtin_expect(st->closing != GR__FD_HELD, 1))
		return st->closing != 0;
	return gr__fd_hold_goes_on(fd, st);
}
/* A hub's slot in the record, taken when it is installed, given back when
 * it goes; every slot is free again in a fork() child. */
void gr__fd_slot_take(struct gr__hub *hub);
void gr__fd_slot_give(struct gr__hub *hub);
void gr__fd_slots_after_fork(void);

/* ------------------------------------------------------------ stacks */

struct gr__stack {
	void *base;                       /* lowest address of the stack (guard) */
	size_t size;                      /* usable bytes above the guard */
	size_t guard;
	struct slab *slab;                /* the mapping it is part of (stack.c) */
	struct gr__link link;             /* the pool's free or trimmed list */
	unsigned valgrind_id;
	bool trimmed;                     /* free, and its pages given back */
};

struct gr__stack_pool *gr__stack_pool_create(void);
/* Unmap every slab: all stacks must be free. */
void gr__stack_pool_free(struct gr__stack_pool *pool);
/* A stack of at least `size` usable bytes, from the pool when it fits. */
struct gr__stack *gr__stack_get(struct gr__stack_pool *pool, size_t size);
void gr__stack_put(struct gr__stack_pool *pool, struct gr__stack *s);
/* The hub has nothing to run: time to give back free stacks beyond the
 * recent working set, a batch at a time. Cheap when there is nothing to do. */
void gr__stack_pool_idle(struct gr__stack_pool *pool);
/* When gr__stack_pool_idle next has work: the hub's wait ends by then. */
int64_t gr__stack_pool_trim_due(const struct gr__stack_pool *pool);
/* Trim now every free stack beyond `keep`; the number given back. */
size_t gr__stack_pool_trim(struct gr__stack_pool *pool, size_t keep);
struct gr_hub_stats;
void gr__stack_pool_stats(const struct gr__stack_pool *pool, struct gr_hub_stats *out);
/* The highest usable address: the fiber struct goes right below it. */
static inline void *gr__stack_top(struct gr__stack *s)
{
	return (char *)s->base + s->guard + s->size;
}
/* Stacks of the default size: free in the pool, and handed out. */
/* GREENRING_STACK_SIZE, else the built-in default, rounded to pages. */
size_t gr__stack_default_size(void);
/* Install the overflow reporter (sigaltstack per thread, handler once). */
void gr__stack_overflow_guard_thread_init(void);
void gr__stack_overflow_guard_thread_fini(void);
/* In a fork() child: the code that forked goes on on f's stack, which the
 * child's fresh hub does not know; the reporter still names f for an
 * overflow into its guard. f NULL or without a stack of its own: the code
 * runs where it ran before the fork, which an earlier fork may have set. */
void gr__stack_fork_child(const gr_fiber *f);

/* ------------------------------------------------------------ observing */

/* hub.c: the hub's counters as gr_hub_counters gives them (hub's thread). */
void gr__hub_counters_get(struct gr__hub *hub, struct gr_hub_counters *out);
/* dump.c: each operation kind's name ("read", "timeout"), for the dump and
 * for debuggers (debugger.c). */
extern const char *const gr__op_kind_names[GR_OP_KIND_COUNT];
/* dump.c: at thread exit with GREENRING_DEBUG=1, the hub's counters on one
 * stderr line. */
void gr__dump_exit_line(struct gr__hub *hub);
/* monitor.c: a hub was installed on this thread: the first one reads
 * GREENRING_MONITOR; in a fork() child, the monitor thread is started again. */
void gr__monitor_hub_installed(void);

/* ------------------------------------------------------------ tunables */

/* Read the environment variable `name` as a size: a decimal number,
 * optionally followed by k or m when `units`. Absent or empty: `dflt`.
 * Below `min`: min; above `max` or not a number: dflt; either with one line
 * on stderr: a tunable is never silently wrong, and never makes the runtime
 * spin (config.c). */
size_t gr__env_size(const char *name, size_t dflt, size_t min, size_t max, bool units);
/* A boolean: unset, empty or "0" is false. */
bool gr__env_flag(const char *name);

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
int64_t gr__coarse_now(void); /* clock.c: the last tick's time, cheap */

#endif
