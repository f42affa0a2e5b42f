/* greenring/chan.h — talking across threads: channels and notifiers.
 *
 * Everything in greenring/sync.h belongs to one thread's hub. The two
 * objects here are for the boundary between threads (Go's channels,
 * gevent's async watcher with a queue): any thread may call them at the
 * same time. A caller that waits parks if it is a fiber of a thread with a
 * hub, of any thread, while that hub runs its other fibers; a plain thread
 * that has no hub simply blocks (no hub is made for it). Wake-ups across
 * threads go through the woken fiber's hub: many in a row cost that hub one
 * wake-up (docs/threads.md).
 *
 * Storage: the caller's, as for sync.h (init/destroy, do not copy or move
 * an initialised object); see docs/threads.md for why. destroy refuses
 * with EBUSY while anyone waits on the object or is still inside a call on
 * it (a waiter that was woken and has not returned yet); the caller must
 * make sure nobody will start a call on it afterwards, as with
 * pthread_mutex_destroy.
 *
 * Waits: every call that may wait takes an absolute deadline
 * (CLOCK_MONOTONIC ns; GR_FOREVER; 0 tries once without waiting) and stops
 * at the calling fiber's own deadline too (gr_deadline_set). Besides its
 * own results it returns:
 *   -ETIMEDOUT  the deadline passed first (at once for 0, if it would wait);
 *   -ECANCELED  the calling fiber was killed (gr_kill), before or during the
 *               wait; deadline 0 is a pure try and never fails so;
 *   -EPERM      the call was made inside the hub.
 * Waiters are served first come, first served, and what they wait for is
 * handed to them: a waiter that was handed something returns success even
 * if it was killed, or its deadline passed, before it ran again. Nothing is
 * ever lost or delivered twice, except that what was handed to a fiber
 * whose thread then exits before that fiber runs goes with the thread (as
 * everything else its fibers held).
 *
 * Switching: only the calls marked "Switches" may run other fibers of the
 * caller's thread; the others take the object's lock briefly and never
 * wait. No call here is async-signal-safe.
 *
 * Errors are -errno; 0 or a count is success. Included by greenring.h.
 */
#ifndef GREENRING_CHAN_H
#define GREENRING_CHAN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque storage, with room to grow; the runtime checks with static_assert
 * that its state fits. */
typedef struct gr_chan { uint64_t opaque_[24]; } gr_chan;
typedef struct gr_notifier { uint64_t opaque_[14]; } gr_notifier;

/* ---------------------------------------------------------------- channel
 * A FIFO of pointers between threads. Capacity n > 0 holds up to n items;
 * GR_CHAN_UNBOUNDED never makes a sender wait; 0 is a rendezvous: a send
 * waits until a receiver takes the item (Go's unbuffered channel). */

#define GR_CHAN_UNBOUNDED ((size_t)-1)

/* 0; -EINVAL (NULL); -ENOMEM (a bounded channel takes its ring now, so that
 * a send can fail only for a reason the caller asked about). Does not switch. */
GR_API int gr_chan_init(gr_chan *c, size_t capacity);

/* 0; -EINVAL (not initialised, destroyed); -EBUSY (someone waits on it or
 * is inside a call on it: nothing changed). Items still queued are dropped
 * (they are the caller's pointers). Does not switch. */
GR_API int gr_chan_destroy(gr_chan *c);

/* Send item: to the first waiting receiver, else into the queue, else wait
 * for room (a rendezvous always waits for a receiver). Switches.
 * 0 (the item was taken by a receiver or queued); -EPIPE (the channel is
 * closed, before or during the wait: the item was not sent); -ENOMEM (an
 * unbounded channel could not grow); -ETIMEDOUT; -ECANCELED; -EPERM;
 * -EINVAL. */
GR_API int gr_chan_send(gr_chan *c, void *item, int64_t deadline);

/* Send without waiting. 0; -EAGAIN (full; for a rendezvous: no receiver
 * waiting); -EPIPE; -ENOMEM; -EINVAL. Does not switch. */
GR_API int gr_chan_trysend(gr_chan *c, void *item);

/* Receive the oldest item into *item (if item is not NULL), waiting for
 * one. Switches. 0; -EPIPE (closed and nothing left); -ETIMEDOUT;
 * -ECANCELED; -EPERM; -EINVAL. */
GR_API int gr_chan_recv(gr_chan *c, void **item, int64_t deadline);

/* Receive without waiting. 0; -EAGAIN (empty); -EPIPE (closed and empty);
 * -EINVAL. Does not switch. */
GR_API int gr_chan_tryrecv(gr_chan *c, void **item);

/* Close: later sends, and senders waiting, get -EPIPE (their items were
 * not sent); receivers take what is queued, then get -EPIPE, waiting ones
 * at once (they wait only on an empty channel). Closing twice is harmless.
 * 0; -EINVAL. Does not switch. */
GR_API int gr_chan_close(gr_chan *c);

/* Items queued now (not counting waiting senders' items), or -EINVAL.
 * Another thread may change it at once: for statistics only. */
GR_API ssize_t gr_chan_len(gr_chan *c);

/* ---------------------------------------------------------------- notifier
 * Any thread fires it; a fiber (or a thread) waiting on it wakes: gevent's
 * async watcher. Fires are coalesced until a waiter takes them: a fire with
 * nobody waiting stays pending, and the next wait returns at once with it,
 * however many fires came meanwhile. Several waiters are served one fire
 * each, first come first served. */

/* 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_notifier_init(gr_notifier *n);

/* 0; -EINVAL; -EBUSY (someone waits on it or is inside a call on it). A
 * pending fire is dropped. Does not switch. */
GR_API int gr_notifier_destroy(gr_notifier *n);

/* Fire: wake the first waiter, or, with none, leave the fire pending (a
 * fire while one is pending only adds to its count). From any thread, a
 * fiber or not, inside the hub too. Never waits and does not switch; a fire
 * that finds one pending already takes no lock. 0; -EINVAL. */
GR_API int gr_notifier_fire(gr_notifier *n);

/* Wait for a fire; a pending one is taken at once. Switches. The number of
 * fires coalesced into this wake-up (>= 1); -ETIMEDOUT; -ECANCELED;
 * -EPERM; -EINVAL. */
GR_API int gr_notifier_wait(gr_notifier *n, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
