/* timer.h — deadlines for the readiness backends (epoll, poll), and the
 * pending spawns of later.c.
 *
 * A completion backend hands deadlines to the kernel (io_uring timeouts); a
 * readiness backend must keep them itself. later.c keeps each hub's pending
 * gr_spawn_at records here too, keyed by a struct gr_op of their own. This is a binary min-heap of
 * operations keyed by (deadline, arrival order), so two operations with the
 * same deadline expire in the order they were added (FIFO, as libuv does):
 * fibers sleeping until the same instant wake in the order they slept.
 *
 * The heap stores each operation's position in the operation itself
 * (backend_data[GR__TIMER_SLOT]), so removing one (a cancel, or readiness
 * arriving before the deadline) is O(log n) without a search.
 */
#ifndef GREENRING_TIMER_H
#define GREENRING_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "greenring/hub_ops.h"

/* The backend_data slot the heap owns: index + 1, 0 when not in a heap. */
#define GR__TIMER_SLOT 2

struct gr__timer_entry {
	int64_t deadline;       /* copied from the op: the hot comparisons stay in the array */
	uint64_t seq;           /* arrival order, the tie-break for equal deadlines */
	struct gr_op *op;
};

struct gr__timers {
	struct gr__timer_entry *heap;
	size_t n, cap;
	uint64_t seq;
};

void gr__timers_init(struct gr__timers *t);
void gr__timers_fini(struct gr__timers *t);

/* Queue op until op->deadline (which must not be GR_FOREVER). 0; -ENOMEM. */
int gr__timers_add(struct gr__timers *t, struct gr_op *op);

/* Take op out of the heap if it is in it. */
void gr__timers_remove(struct gr__timers *t, struct gr_op *op);

/* The earliest deadline queued, or GR_FOREVER (-1) when none is. */
int64_t gr__timers_next(const struct gr__timers *t);

/* Remove and return the earliest operation whose deadline is <= now, or
 * NULL. Call in a loop: equal deadlines come out in arrival order. */
struct gr_op *gr__timers_pop_expired(struct gr__timers *t, int64_t now);

/* How long a backend may block: the sooner of `timeout_ns` (-1 = no limit
 * of its own) and the earliest deadline, relative to `now`; -1 for no limit
 * at all, 0 if a deadline has already passed. Exact to the nanosecond: a
 * backend with a coarser clock rounds up (gr__timeout_ms). */
int64_t gr__timers_timeout(const struct gr__timers *t, int64_t timeout_ns, int64_t now);

/* ns to whole milliseconds for poll(2)/epoll_wait, rounded up so a wait
 * never ends before the deadline (which would make the loop spin), capped
 * at INT_MAX; -1 stays -1 (forever). */
int gr__timeout_ms(int64_t ns);

#endif
