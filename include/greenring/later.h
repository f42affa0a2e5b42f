/* greenring/later.h — spawning a fiber later: after a delay or at a given
 * time, with a handle that cancels it until it fires (eventlet's
 * spawn_after, gevent's spawn_later).
 *
 * Each thread's pending spawns are kept in one heap, served by one fiber of
 * the thread's hub parked on the hub's own timer until the earliest of them
 * is due; that fiber exists only while something is pending. A pending
 * spawn therefore costs a small record (no stack, no operation in flight of
 * its own), and the thousands of timeouts a server arms and cancels cost
 * no fiber each (docs/later.md has the figures). When one is due its
 * function is spawned as a detached fiber (gr_spawn_n); spawns due at the
 * same time are spawned, and so run, in the order they were made (FIFO).
 * While a spawn is pending, gr_hub_join() waits for it, as for a fiber:
 * it is work still to do.
 *
 * Handles work like joinable fibers: a handle is valid until the program
 * releases it, with gr_later_cancel() (stop it if it is still pending) or
 * gr_later_detach() (let it be). A handle that is never released keeps its
 * record (under 200 bytes) until the thread ends. Handles belong to the
 * thread that made them (EPERM elsewhere). If the thread ends, what is
 * still pending never runs.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_LATER_H
#define GREENRING_LATER_H

#include <stdint.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gr_later gr_later;

/* Spawn fn(arg) as a detached fiber at `deadline` (absolute, gr_now()
 * clock; a time already past spawns it in the next turn of the hub).
 * Does not switch. The handle, or NULL with errno: EINVAL (fn NULL,
 * deadline negative), ENOMEM, EPERM (inside the hub). */
GR_API gr_later *gr_spawn_at(int64_t deadline, void (*fn)(void *), void *arg);

/* As gr_spawn_at(gr_now() + delay, ...); EINVAL for a negative delay. */
GR_API gr_later *gr_spawn_after(int64_t delay, void (*fn)(void *), void *arg);

/* Cancel t if it is still pending, and release the handle either way.
 * Does not switch. 0: it was pending, and fn will never run; -EALREADY: it
 * had fired (fn was spawned; kill or join that work by your own means);
 * -EINVAL (NULL or released handle); -EPERM (another thread's). */
GR_API int gr_later_cancel(gr_later *t);

/* Release the handle without cancelling: a pending spawn still fires.
 * Does not switch. 0; -EINVAL; -EPERM. */
GR_API int gr_later_detach(gr_later *t);

#ifdef __cplusplus
}
#endif
#endif
