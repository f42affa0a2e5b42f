/* greenring/sync.h — primitives for fibers of one thread: event, result,
 * semaphore, mutex, condition, queue, pool and pile. Included by greenring.h;
 * see docs/sync.md for the decisions behind them.
 *
 * Storage: the caller owns it. Each object is an opaque struct of fixed size
 * the caller declares (on the stack, in its own struct, static), sets up with
 * gr_<object>_init() and tears down with gr_<object>_destroy(). Do not copy or
 * move an object once initialised. A call on storage that was never
 * initialised, or was destroyed, fails with EINVAL (best effort: the object
 * carries a tag checked by every call).
 *
 * Waits: every call that may wait takes an absolute deadline (CLOCK_MONOTONIC
 * ns): GR_FOREVER for none, 0 to try once without parking. It also stops at the
 * calling fiber's own deadline (gr_deadline_set). Besides its own results, it
 * returns:
 *   -ETIMEDOUT  the deadline passed first (at once for 0, if it would wait);
 *   -ECANCELED  the caller was killed (gr_kill), before or during the wait;
 *               with deadline 0 the call is a pure try and never fails so;
 *   -EDEADLK    the wait can never end: no fiber can run and nothing is in
 *               flight (reported to the thread's main context, see gr_hub_join);
 *   -EPERM      the object belongs to another thread's hub, or the call was
 *               made where no fiber can park.
 * Waiters are served first come, first served, and what they wait for is
 * handed to them (a unit, a lock, an item): a fiber arriving later cannot
 * take it first. A waiter that was handed something returns success even if
 * it was killed or its deadline passed before it ran again; nothing handed
 * over is ever lost.
 *
 * Switching: only the calls marked "Switches" may run other fibers. Setting,
 * releasing, unlocking, signalling, putting into a queue with room and closing
 * make waiters runnable (in FIFO order, through the hub's run queue) and
 * return at once; the woken fibers run when the caller next blocks or yields,
 * as with eventlet's Event.send().
 *
 * Threads: an object belongs to the hub of the first thread that uses it
 * (any call but init/destroy, made from a thread that has a hub). Calls from
 * any other thread fail with EPERM. Nothing here is safe to call concurrently
 * from two threads; to talk across threads, use gr_chan and gr_notifier
 * (greenring/chan.h). Destroying an object while fibers are parked on it, or are
 * still inside a call on it, fails with EBUSY and changes nothing.
 *
 * Errors are returned as -errno values; 0 or a count is success.
 */
#ifndef GREENRING_SYNC_H
#define GREENRING_SYNC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque storage. The sizes leave room to grow without breaking the ABI;
 * the runtime checks with static_assert that its state fits. */
typedef struct gr_event { uint64_t opaque_[6]; } gr_event;
typedef struct gr_result { uint64_t opaque_[8]; } gr_result;
typedef struct gr_sem { uint64_t opaque_[6]; } gr_sem;
typedef struct gr_mutex { uint64_t opaque_[6]; } gr_mutex;
typedef struct gr_cond { uint64_t opaque_[6]; } gr_cond;
typedef struct gr_queue { uint64_t opaque_[14]; } gr_queue;
typedef struct gr_pool { uint64_t opaque_[14]; } gr_pool;
typedef struct gr_pile { uint64_t opaque_[32]; } gr_pile;

/* ---------------------------------------------------------------- event
 * A flag fibers wait for. Set, it stays set (every later wait returns at once)
 * until cleared. */

/* 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_event_init(gr_event *e);

/* 0; -EINVAL (not initialised); -EPERM (another thread's); -EBUSY (fibers
 * wait on it). Does not switch. */
GR_API int gr_event_destroy(gr_event *e);

/* Set the flag and wake every waiter. Returns how many were woken (>= 0);
 * -EINVAL; -EPERM. Does not switch. */
GR_API int gr_event_set(gr_event *e);

/* Clear the flag; waiters already woken still return 0. 0; -EINVAL; -EPERM.
 * Does not switch. */
GR_API int gr_event_clear(gr_event *e);

/* 1 if set, 0 if not; -EINVAL; -EPERM. Does not switch. */
GR_API int gr_event_is_set(gr_event *e);

/* Wait until the flag is set. 0 (at once if it is set); -ETIMEDOUT,
 * -ECANCELED, -EDEADLK, -EPERM, -EINVAL. Switches. */
GR_API int gr_event_wait(gr_event *e, int64_t deadline);

/* --------------------------------------------------------------- result
 * eventlet's AsyncResult: set once, to a value or an error; any number of
 * fibers wait for it. */

/* 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_result_init(gr_result *r);

/* 0; -EINVAL; -EPERM; -EBUSY (fibers wait on it). Does not switch. */
GR_API int gr_result_destroy(gr_result *r);

/* Set the value and wake every waiter. Returns how many were woken (>= 0);
 * -EALREADY (already set: the first value stays); -EINVAL; -EPERM.
 * Does not switch. */
GR_API int gr_result_set(gr_result *r, void *value);

/* Set an error (a positive errno value) instead of a value. As
 * gr_result_set; also -EINVAL when err <= 0. Does not switch. */
GR_API int gr_result_set_error(gr_result *r, int err);

/* 1 if set (value or error), 0 if not; -EINVAL; -EPERM. Does not switch. */
GR_API int gr_result_ready(gr_result *r);

/* Wait until the result is set. 0 and *value (if value is not NULL) for a
 * value; -err for an error set with gr_result_set_error (gr_result_ready()
 * tells such an error from a failed wait); else -ETIMEDOUT, -ECANCELED,
 * -EDEADLK, -EPERM, -EINVAL. Switches. */
GR_API int gr_result_wait(gr_result *r, void **value, int64_t deadline);

/* ------------------------------------------------------------ semaphore
 * A counting semaphore. A release while fibers wait hands the unit to the
 * first of them; the count only grows when nobody waits. */

/* Start with `value` units. `max` bounds the count (a release beyond it
 * fails: a BoundedSemaphore); 0 for no bound other than INT_MAX.
 * 0; -EINVAL (NULL, value > INT_MAX or max > INT_MAX, value > max > 0).
 * Does not switch. */
GR_API int gr_sem_init(gr_sem *s, unsigned value, unsigned max);

/* 0; -EINVAL; -EPERM; -EBUSY (fibers wait on it). Does not switch. */
GR_API int gr_sem_destroy(gr_sem *s);

/* Take one unit, waiting for one. 0; -ETIMEDOUT, -ECANCELED, -EDEADLK,
 * -EPERM, -EINVAL. Switches. */
GR_API int gr_sem_acquire(gr_sem *s, int64_t deadline);

/* Take one unit if one is free now. 0; -EAGAIN (none, or fibers are already
 * waiting for one); -EINVAL; -EPERM. Does not switch. */
GR_API int gr_sem_tryacquire(gr_sem *s);

/* Give one unit back: to the first waiter if any, else to the count.
 * 0; -EOVERFLOW (the count is at its bound); -EINVAL; -EPERM.
 * Does not switch. */
GR_API int gr_sem_release(gr_sem *s);

/* The free units now (>= 0); -EINVAL; -EPERM. Does not switch. */
GR_API int gr_sem_value(gr_sem *s);

/* ---------------------------------------------------------------- mutex
 * A lock owned by one fiber (the thread's main context counts as a fiber).
 * Unlocking with waiters hands the lock to the first of them. Not recursive.
 * A fiber that ends while holding it leaves it locked. */

/* 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_mutex_init(gr_mutex *m);

/* 0; -EINVAL; -EPERM; -EBUSY (locked, or fibers wait on it). Does not switch. */
GR_API int gr_mutex_destroy(gr_mutex *m);

/* Lock, waiting while another fiber holds it. 0; -EDEADLK (the caller
 * already holds it, or nothing can ever unlock it); -ETIMEDOUT, -ECANCELED,
 * -EPERM, -EINVAL. Switches. */
GR_API int gr_mutex_lock(gr_mutex *m, int64_t deadline);

/* Lock if free now. 0; -EBUSY (held, the caller included, or fibers are
 * already waiting for it); -EINVAL; -EPERM. Does not switch. */
GR_API int gr_mutex_trylock(gr_mutex *m);

/* Unlock; the first waiter, if any, now holds it. 0; -EPERM (the caller does
 * not hold it, or another thread's); -EINVAL. Does not switch. */
GR_API int gr_mutex_unlock(gr_mutex *m);

/* ------------------------------------------------------------ condition
 * A condition variable used with a gr_mutex, as pthread_cond_t. */

/* 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_cond_init(gr_cond *c);

/* 0; -EINVAL; -EPERM; -EBUSY (fibers wait on it). Does not switch. */
GR_API int gr_cond_destroy(gr_cond *c);

/* Unlock m, wait for a signal, then lock m again. The caller must hold m,
 * and every fiber waiting at once must use the same m. Returns with m held
 * (the re-lock waits for m whatever the deadline or a kill) except when the
 * re-lock itself fails with -EDEADLK. As with pthreads, a wake may find the
 * awaited state already changed: wait in a loop that checks it.
 * 0 (signalled); -ETIMEDOUT, -ECANCELED, -EDEADLK; -EPERM (m not held by the
 * caller; another thread's); -EINVAL (bad objects, another mutex than the
 * other waiters'). Switches. */
GR_API int gr_cond_wait(gr_cond *c, gr_mutex *m, int64_t deadline);

/* Wake the first waiter. Returns how many were woken (0 or 1); -EINVAL;
 * -EPERM. Does not switch. */
GR_API int gr_cond_signal(gr_cond *c);

/* Wake every waiter. Returns how many were woken; -EINVAL; -EPERM.
 * Does not switch. */
GR_API int gr_cond_broadcast(gr_cond *c);

/* ---------------------------------------------------------------- queue
 * A FIFO of pointers (store integers with (void *)(uintptr_t)). An item put
 * while a getter waits goes straight to that getter; an item a getter takes
 * from a full queue makes room for the first waiting putter's item. */

/* No bound: a put never waits (it may fail with ENOMEM). */
#define GR_QUEUE_UNBOUNDED ((size_t)-1)

/* Hold at most `capacity` items: 0 makes a rendezvous channel (a put waits
 * until a getter takes the item, as Go's unbuffered channel), and
 * GR_QUEUE_UNBOUNDED no bound. A bounded queue allocates its storage here.
 * 0; -EINVAL (NULL); -ENOMEM. Does not switch. */
GR_API int gr_queue_init(gr_queue *q, size_t capacity);

/* Free the storage; items still queued are dropped (they are the caller's
 * pointers). 0; -EINVAL; -EPERM; -EBUSY (fibers wait on it). Does not switch. */
GR_API int gr_queue_destroy(gr_queue *q);

/* Append item, waiting for room (for a getter, at capacity 0). 0 (the item
 * is queued or handed to a getter); -EPIPE (closed, before or during the
 * wait: the item was not queued); -ENOMEM (unbounded, no memory); -ETIMEDOUT,
 * -ECANCELED, -EDEADLK, -EPERM, -EINVAL. Switches. */
GR_API int gr_queue_put(gr_queue *q, void *item, int64_t deadline);

/* Append item if there is room now. 0; -EAGAIN (full, or no getter waits at
 * capacity 0); -EPIPE (closed); -ENOMEM; -EINVAL; -EPERM. Does not switch. */
GR_API int gr_queue_tryput(gr_queue *q, void *item);

/* Take the oldest item into *item (if item is not NULL), waiting for one.
 * Once the queue is closed, items still queued are returned, then -EPIPE.
 * 0; -EPIPE; -ETIMEDOUT, -ECANCELED, -EDEADLK, -EPERM, -EINVAL. Switches. */
GR_API int gr_queue_get(gr_queue *q, void **item, int64_t deadline);

/* Take the oldest item if there is one now. 0; -EAGAIN (empty); -EPIPE
 * (empty and closed); -EINVAL; -EPERM. Does not switch. */
GR_API int gr_queue_tryget(gr_queue *q, void **item);

/* Close: later puts fail with EPIPE; waiting putters are woken with EPIPE
 * (their items were not queued); getters take what is left, then get EPIPE
 * (waiting getters at once: a getter waits only on an empty queue).
 * Closing twice is harmless. 0; -EINVAL; -EPERM. Does not switch. */
GR_API int gr_queue_close(gr_queue *q);

/* Items queued now (not counting waiting putters' items); -EINVAL; -EPERM.
 * Does not switch. */
GR_API ssize_t gr_queue_len(gr_queue *q);

/* ----------------------------------------------------------------- pool
 * eventlet's GreenPool: runs functions in fibers, at most `size` at once. */

/* At most `size` fibers at once, 1 <= size <= SSIZE_MAX. 0; -EINVAL.
 * Does not switch. */
GR_API int gr_pool_init(gr_pool *p, size_t size);

/* 0; -EINVAL; -EPERM; -EBUSY (fibers still run in it, or wait on it).
 * Does not switch. */
GR_API int gr_pool_destroy(gr_pool *p);

/* Run fn(arg) in a new detached fiber of the pool, first waiting for a free
 * slot (first come, first served). The fiber is scheduled, not run (as
 * gr_spawn_n). `deadline` bounds the wait for a slot only, never the job:
 * once fn runs, it runs with no deadline until it sets one itself
 * (gr_deadline_set as its first act bounds the whole job).
 * 0; -ETIMEDOUT (no slot in time); -ENOMEM; -ECANCELED, -EDEADLK,
 * -EPERM, -EINVAL. Switches (only to wait for a slot). */
GR_API int gr_pool_spawn(gr_pool *p, void (*fn)(void *), void *arg, int64_t deadline);

/* Wait until no fiber runs in the pool (waiting spawners get slots first, so
 * their fibers are waited for too). 0; -EDEADLK (called from one of the
 * pool's own fibers, or nothing can ever end them); -ETIMEDOUT, -ECANCELED,
 * -EPERM, -EINVAL. Switches. */
GR_API int gr_pool_wait(gr_pool *p, int64_t deadline);

/* Fibers running in the pool now (>= 0); -EINVAL; -EPERM. Does not switch. */
GR_API ssize_t gr_pool_running(gr_pool *p);

/* Free slots now: size - running, 0 after a shrink below running (>= 0);
 * -EINVAL; -EPERM. Does not switch. */
GR_API ssize_t gr_pool_free_slots(gr_pool *p);

/* Change the size. Growing gives slots to waiting spawners at once; shrinking
 * lets running fibers finish and holds new ones back until running < size.
 * 0; -EINVAL (size 0 or > SSIZE_MAX); -EPERM. Does not switch. */
GR_API int gr_pool_resize(gr_pool *p, size_t size);

/* Kill every fiber of the pool (gr_kill: their blocking calls fail with
 * ECANCELED; one that has not started never runs fn). Returns how many were
 * killed; -EINVAL; -EPERM. Does not switch. */
GR_API ssize_t gr_pool_kill(gr_pool *p);

/* ----------------------------------------------------------------- pile
 * eventlet's GreenPile and imap: spawn work, read the results back in the
 * order it was spawned, whatever order it finishes in. */

/* Run work in `pool` (shared with other users of it), or with no limit when
 * pool is NULL. The pool must outlive the pile. 0; -EINVAL; -EPERM (a pool
 * of another thread). Does not switch. */
GR_API int gr_pile_init(gr_pile *pile, gr_pool *pool);

/* Results not yet read are dropped. 0; -EINVAL; -EPERM; -EBUSY (work still
 * runs, or fibers are inside a call on the pile). Does not switch. */
GR_API int gr_pile_destroy(gr_pile *pile);

/* Run fn(arg) in a fiber of the pool (waiting for a slot, as gr_pool_spawn);
 * its return value is read back with gr_pile_next. As for gr_pool_spawn,
 * `deadline` bounds the wait for a slot, not the job: bound the job with
 * gr_deadline_set in fn, or all the work with gr_pile_next's deadline and
 * gr_pile_kill. 0; -EBUSY (a gr_pile_imap is still being fed); -ETIMEDOUT,
 * -ENOMEM, -ECANCELED, -EDEADLK, -EPERM, -EINVAL. Switches (only to wait
 * for a slot). */
GR_API int gr_pile_spawn(gr_pile *pile, void *(*fn)(void *), void *arg, int64_t deadline);

/* imap: run fn(args[0]) ... fn(args[n-1]), their results read back in that
 * order with gr_pile_next. The work is started lazily, in the pool's free
 * slots: here, in gr_pile_next, and whenever one of the pile's fibers ends,
 * so that at most the pool's size runs and results wait unread only for a
 * slower earlier item. args must stay valid until every result is read (or
 * gr_pile_kill). 0; -EBUSY (the previous imap is still being fed); -EINVAL;
 * -EPERM. A failure to start an item (ENOMEM) is reported by gr_pile_next.
 * Does not switch. */
GR_API int gr_pile_imap(gr_pile *pile, void *(*fn)(void *), void *const *args, size_t n);

/* Read the result of the oldest unread work, waiting for it to finish, into
 * *result (if not NULL; NULL for work killed before it started). Several
 * readers take results in the order they asked. 0; -ENOENT (nothing left to
 * read: all spawned work was read, or is being waited for by earlier
 * readers); -ENOMEM (could not spawn the next imap item); -ETIMEDOUT,
 * -ECANCELED, -EDEADLK, -EPERM, -EINVAL. Switches. */
GR_API int gr_pile_next(gr_pile *pile, void **result, int64_t deadline);

/* One result of a pile, with where it came from (gr_pile_next_item). */
struct gr_pile_item {
	void *result;           /* what fn returned; NULL if it never ran */
	void *arg;              /* the argument fn was (or would have been) given */
	size_t index;           /* imap work: its index in args (arg == args[index]);
				   gr_pile_spawn work: GR_PILE_SPAWNED */
	int ran;                /* 1: fn ran (it may have been killed while it ran:
				   result is what it returned); 0: the work was
				   killed before it started and fn never ran */
};
#define GR_PILE_SPAWNED ((size_t)-1)

/* As gr_pile_next, with the item's origin: which input it was and whether
 * fn ran at all. After gr_pile_kill, the imap inputs that never ran are
 * those read back with ran == 0, and those never read back at all (the
 * ones not yet started, which gr_pile_kill dropped: with one reader, every
 * index after the last one read). Same returns as gr_pile_next; -EINVAL
 * also for a NULL item. Switches. */
GR_API int gr_pile_next_item(gr_pile *pile, struct gr_pile_item *item, int64_t deadline);

/* Results still to read: spawned and unread, plus imap items not spawned yet.
 * -EINVAL; -EPERM. Does not switch. */
GR_API ssize_t gr_pile_len(gr_pile *pile);

/* Kill the pile's running work (as gr_pool_kill), and drop imap items not yet
 * spawned (they never run, and leave no result: gr_pile_next_item tells
 * which inputs never ran). Killed work still leaves a result to read.
 * Returns how many fibers were killed; -EINVAL; -EPERM. Does not switch. */
GR_API ssize_t gr_pile_kill(gr_pile *pile);

#ifdef __cplusplus
}
#endif
#endif
