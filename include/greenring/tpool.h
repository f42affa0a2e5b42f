/* greenring/tpool.h — blocking work off the hub: the process-wide thread pool
 * (eventlet's tpool.execute, gevent's hub.threadpool).
 *
 * A call greenring cannot make green (a library that blocks, a CPU-heavy
 * function, a read of a cold file on a readiness hub) would stall every fiber
 * of its thread. gr_tpool_run() runs it on a worker thread instead and parks
 * the calling fiber until it returns; the other fibers keep running.
 *
 * The pool is started lazily and grows on demand, one worker per job waiting
 * while no worker is idle, up to GREENRING_THREADS workers (default 10, as
 * gevent's; 1 to 1024), not counting workers that wait in a gr_tpool_run
 * of their own (a job that runs a job): the pool grows by one for each, so
 * such jobs never starve it. Jobs run first come, first served, except
 * that a job a worker waits for goes ahead of the others. A worker idle for
 * 10 s exits. A fork() child starts with an empty pool of its own. Workers
 * run with every signal blocked: a signal sent to the process never lands
 * on one (see greenring/signal.h).
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_TPOOL_H
#define GREENRING_TPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Run fn(arg) on a worker thread and wait for it; what fn returned goes to
 * *result (if result is not NULL). From a fiber, the fiber parks and its
 * hub keeps running; from a thread that has no hub, the thread blocks.
 * fn must not call greenring's blocking calls (it runs on a thread of its
 * own, with no hub: they would create one there).
 * Switches. 0; -ECANCELED (the caller was killed) or -ETIMEDOUT (the
 * deadline passed): the call returns at once; a job that had not started is
 * never run, one that had runs to its end and its result is dropped (see
 * gr_tpool_run_cleanup), and nothing is written into the caller's memory
 * afterwards; -ETIMEDOUT also for deadline 0, which work on another thread
 * can never meet (nothing is queued); -EINVAL (fn NULL); -ENOMEM; -EAGAIN
 * (no worker thread exists and none could be started); -EPERM (called
 * inside the hub). */
GR_API int gr_tpool_run(void *(*fn)(void *), void *arg, void **result, int64_t deadline);

/* As gr_tpool_run, and when the caller stops waiting (the call returns
 * -ECANCELED or -ETIMEDOUT, or its thread exits while it waits), cleanup runs
 * exactly once: if fn had started, as cleanup(fn's result, arg) on the
 * worker when fn returns, so that what fn made (an fd, a buffer, a
 * connection) is not lost; if not, as cleanup(NULL, arg), fn never running,
 * so that arg itself can be freed there (on a worker, or in the call itself
 * when it failed before queueing). arg must stay valid until cleanup has
 * run. With any other return (0, -EINVAL, -ENOMEM, -EAGAIN, -EPERM) cleanup
 * never runs and arg is the caller's again. cleanup may be NULL. */
GR_API int gr_tpool_run_cleanup(void *(*fn)(void *), void *arg,
				void (*cleanup)(void *result, void *arg), void **result,
				int64_t deadline);

/* The pool now. */
struct gr_tpool_stats {
	unsigned threads;       /* workers alive */
	unsigned idle;          /* of which waiting for a job */
	unsigned max;           /* GREENRING_THREADS */
	size_t queued;          /* jobs (and file operations) waiting for a worker */
	uint64_t completed;     /* jobs (and file operations the pool made for
				   the readiness hubs) run to their end so far */
};

/* Fill *out. 0; -EINVAL (NULL). Does not switch. */
GR_API int gr_tpool_stats(struct gr_tpool_stats *out);

#ifdef __cplusplus
}
#endif
#endif
