/* greenring/signal.h — fibers that wait for signals (gevent's signal
 * watchers, Go's signal.Notify), with no signal handler anywhere.
 *
 * A signal a fiber waits for must be *blocked*: a blocked signal stays
 * pending in the kernel until something takes it, and gr_signal_wait takes
 * it (through a signalfd; on io_uring the wait is an SQE). A signal that is
 * not blocked runs its handler, or its default action (SIGTERM, SIGINT:
 * the process ends), and no fiber ever sees it.
 *
 * Masks are per thread, and the kernel hands a signal sent to the process
 * (kill(2), a terminal's ^C) to any one thread that does not block it. So
 * the whole process must block the set: call gr_signal_block() in main()
 * before any other thread is created (threads inherit their creator's
 * mask). Threads created before that keep their masks; gr_signal_block()
 * says how many of them do not block the set, because any one of them may
 * be handed a process-directed signal instead of the waiting fiber. The
 * runtime's own threads (the thread pool, the child watcher) block every
 * signal, so they never take one. A signal sent to one thread
 * (pthread_kill, tgkill) is seen only by fibers of that thread.
 *
 * Delivery: each signal goes to exactly one waiting fiber. Among the fibers
 * of one thread, the one that has waited longest among those whose set
 * contains the signal gets it (FIFO), whatever the other waiters' sets
 * are. Fibers of different threads waiting for the same signal sent to the
 * process race for it: one of them gets it. A signal sent while no fiber
 * waits for it stays pending (blocked) and goes to the next fiber that
 * waits for it; standard signals (1-31) that are already pending are merged
 * by the kernel (one delivery for several sends), real-time signals
 * (SIGRTMIN..SIGRTMAX) are queued one by one with their values.
 *
 * Cost: nothing until a fiber waits. A thread with fibers waiting for
 * signals holds one signalfd, closed when the last of them stops waiting.
 *
 * fork(): the child's hub starts afresh (it inherits the mask, not the
 * waiters). exec: the mask is inherited by a program exec'd from this
 * process; children started with gr_process_spawn() get an empty mask and
 * default dispositions instead.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_SIGNAL_H
#define GREENRING_SIGNAL_H

#include <signal.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Block the signals of `set` in the calling thread (pthread_sigmask), so
 * that they stay pending for gr_signal_wait(). Threads this thread creates
 * afterwards inherit the mask: call it in main() before creating threads.
 * Returns the number of OTHER threads of the process that do not block
 * every signal of the set (0: the whole process blocks it, as it must for
 * signals sent to the process), read from /proc/self/task (0 if /proc
 * cannot be read); -EINVAL (set is NULL). Does not switch. */
GR_API int gr_signal_block(const sigset_t *set);

/* Wait until one of the signals of `set` is delivered to this fiber (see
 * "Delivery" above) and take it: its number is returned and, if info is
 * not NULL, what the kernel knows of it (sender, value, ...) is stored in
 * *info. Every signal of the set must be blocked in the calling thread
 * (gr_signal_block); one ignored (SIG_IGN, as nohup leaves SIGHUP) also in
 * the main thread, since the kernel discards an ignored signal that the
 * thread it is sent to (the main thread, for one sent to the process) does
 * not block.
 * Switches. The signal number (> 0); -ETIMEDOUT (deadline passed; with
 * deadline 0 the call only takes a signal already pending); -ECANCELED
 * (killed); -EINVAL (set NULL or empty, holds SIGKILL or SIGSTOP, a signal
 * not blocked in this thread, or one ignored that the main thread does
 * not block);
 * -EPERM (inside the hub); -EMFILE, -ENFILE, -ENOMEM (no signalfd). A
 * signal handed to a fiber is returned even if the fiber was killed or its
 * deadline passed before it ran again: a signal taken is never lost. */
GR_API int gr_signal_wait(const sigset_t *set, struct signalfd_siginfo *info, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
