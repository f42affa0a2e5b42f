/* greenring/caller.h — what the calling context may do, asked without side
 * effects.
 *
 * Code that sits between a program and libc (an interposer such as the
 * patch library, docs/patching.md; a logging or tracing layer) must decide on
 * every call, cheaply, whether it may go green (park the caller and let other
 * fibers run) or must make the plain blocking call. gr_self() cannot answer
 * that: it creates a hub on a thread that has none, which a thread that never
 * used greenring must not get. The question below never creates anything.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_CALLER_H
#define GREENRING_CALLER_H

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if the caller may park: this thread has a hub and the caller is one of
 * its fibers, the thread's main context included (it counts as a fiber from
 * the moment the thread has a hub, before anything was spawned). 0 on a
 * thread that has no hub (one that never used greenring, the thread pool's
 * workers, a fork() child before its first greenring call) and inside the
 * hub itself (backend code, gr_hub_complete callers).
 *
 * A "1" says where the caller runs, not that parking is wise: a signal
 * handler that interrupted a fiber, or the child of a vfork() of a fiber,
 * also gets 1 and must not park; code that can run there has to know it by
 * other means.
 *
 * Never creates a hub, never switches, never fails, sets no errno; reads one
 * thread-local variable, so it is async-signal-safe and costs about a
 * function call. */
GR_API int gr_can_park(void);

#ifdef __cplusplus
}
#endif
#endif
