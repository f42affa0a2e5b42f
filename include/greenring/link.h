/* greenring/link.h — callbacks run when a fiber ends (gevent's
 * Greenlet.link, link_value, link_exception): supervisors, fan-in of
 * results, cleanup that must follow a fiber wherever it ends.
 *
 * A link runs its callback in a NEW fiber once the linked fiber has ended,
 * with a copy of how it ended (struct gr_fiber_end). It holds nothing of
 * the ended fiber: joining or detaching works as without links, and the
 * ended fiber's stack is released as usual (by gr_join, or at its end if
 * detached), whether or not the callbacks have run yet. Links are run in
 * the order they were made, each callback in a fiber of its own, spawned
 * (detached) when the linked fiber ends: they run once the fiber that
 * ended has switched away, as any fiber spawned then would.
 *
 * "Cancelled" means the fiber was killed (gr_kill) and had not acknowledged
 * the kill (gr_kill_ack) when it ended, or was killed before it ever ran
 * (its body never ran: result NULL): gevent's link_exception. A fiber that
 * acknowledged a kill, cleaned up and returned ended with its value.
 *
 * Threads: a fiber can be linked only from its own thread (EPERM
 * otherwise), and its links' callbacks run there. Fibers discarded because
 * their thread exits never end: their links are dropped without running.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_LINK_H
#define GREENRING_LINK_H

#include <stdint.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gr_fiber gr_fiber;

/* How a fiber ended, as a link's callback sees it. */
struct gr_fiber_end {
	uint64_t id;            /* gr_fiber_id() of the fiber that ended */
	void *result;           /* what its function returned; NULL if cancelled before it ran */
	int cancelled;          /* 1: killed, and the kill not acknowledged; else 0 */
};

/* When a link fires (gr_link's `when`). */
#define GR_LINK_VALUE 0x1u      /* the fiber ended normally (link_value) */
#define GR_LINK_CANCELLED 0x2u  /* the fiber was cancelled (link_exception) */
#define GR_LINK_ANY (GR_LINK_VALUE | GR_LINK_CANCELLED)   /* link */

typedef void (*gr_link_fn)(const struct gr_fiber_end *end, void *arg);

/* Run fn(end, arg) in a new fiber when f ends, if how it ended matches
 * `when`. If f has ended already (joinable, not yet joined), the callback's
 * fiber is spawned now. A fiber may have any number of links; the same
 * (fn, arg) may be linked more than once (it then runs once per link).
 * Does not switch. 0; -EINVAL (f NULL or released, the thread's main
 * context, fn NULL, `when` 0 or with unknown bits); -EPERM (another
 * thread's fiber); -ENOMEM; for an ended f, what gr_spawn fails with.
 * If no fiber can be spawned for a callback when f ends (no memory), one
 * line goes to stderr and the callback runs in f itself, as its last act,
 * with f's kill (if any) set aside for the callback's duration. */
GR_API int gr_link(gr_fiber *f, unsigned when, gr_link_fn fn, void *arg);

/* Remove the earliest link of f made with this fn and arg, before it
 * fires. Does not switch. 0; -ENOENT (no such link: never made, removed,
 * or fired already because f has ended); -EINVAL (f NULL or released);
 * -EPERM (another thread's fiber). */
GR_API int gr_unlink(gr_fiber *f, gr_link_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
