/* greenring/observe.h — seeing inside a running program: what each hub has
 * done (counters), what every fiber is doing (the run-info dump), and which
 * fiber holds its thread too long (the blocking monitor). The gdb commands
 * `info fibers` and `fiber bt` come with the library. docs/observing.md shows
 * each with real output.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_OBSERVE_H
#define GREENRING_OBSERVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "greenring/hub_ops.h" /* GR_API, enum gr_op_kind */

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------- counters */

/* Room for every enum gr_op_kind in the per-kind counters, with room to
 * spare: the struct's layout does not change when a kind is added. */
#define GR_HUB_COUNTERS_KINDS 32

/* What a hub has done since it was created. Every counter is a plain
 * increment on the hub's own thread: they are always on. */
struct gr_hub_counters {
	uint64_t turns;            /* loop turns (as gr_hub_stats) */
	uint64_t submitted[GR_HUB_COUNTERS_KINDS]; /* operations handed to the backend, by
					   enum gr_op_kind: on epoll and poll a call that
					   did not have to wait hands over nothing, nor
					   on io_uring a send made with nothing else to
					   run (docs/hubs.md) */
	uint64_t completed[GR_HUB_COUNTERS_KINDS]; /* of those, completed */
	uint64_t cancels;          /* cancels asked of the backend (kill, deadline, gr_close,
				      a queue wait's timer no longer needed, thread exit) */
	uint64_t deadlines;        /* blocking calls failed by a deadline (ETIMEDOUT), the
				      call's or the fiber's, whether it passed while they
				      waited or before they could; a try (deadline 0)
				      that finds nothing is not counted */
	uint64_t unparks;          /* fibers woken from a wait queue of this hub (join,
				      sync primitives, gr_close's drain) */
	uint64_t remote_wakeups;   /* fibers woken by other threads (thread pool,
				      cross-thread queues) */
	uint64_t spawned;          /* fibers spawned */
	uint64_t ended;            /* fibers whose function returned (or that were killed
				      before they ran) */
	uint64_t stacks_pooled;    /* now: free stacks kept in the hub's pool, resident or
				      trimmed (gr_hub_stats tells them apart) */
	uint64_t stacks_live;      /* now: default-size stacks in use, the hub fiber's
				      included */
	int64_t longest_run_ns;    /* the longest turn: from the loop handing the thread to
				      the fibers until it got it back, the longest that
				      I/O completions waited to be reaped; in whole
				      ticks of CLOCK_MONOTONIC_COARSE (1-4 ms) */
	/* Added in the second version of this struct (idle.c, GREENRING_SPIN_US): */
	uint64_t spins_caught;     /* idle spells where the hub spun for another thread's
				      post and got it without sleeping */
	uint64_t spins_missed;     /* spins that ended with nothing, then slept */
};

/* Fill *out with this thread's hub's counters. Pass sizeof(*out): the
 * struct only ever grows at its end, a newer library fills no more than
 * `size` bytes and an older one zeroes what it does not know, so a program
 * and a library of different versions agree. Does not switch; does not
 * create a hub. 0; -EINVAL (out NULL, or size below the first version's);
 * -ESRCH (this thread has no hub). */
GR_API int gr_hub_counters(struct gr_hub_counters *out, size_t size);

/* The name of an operation kind, as the dump prints it: "read", "recv",
 * "timeout", ...; "?" for a kind greenring does not know. */
GR_API const char *gr_op_kind_name(unsigned kind);

/* ------------------------------------------------------------- the dump */

/* gr_dump() flags. */
#define GR_DUMP_ALL_HUBS 0x1u   /* every hub of the process, not only this thread's */

/* Write the run-info dump to fd: for this thread's hub (or every hub, with
 * GR_DUMP_ALL_HUBS) one line with its state, one with its counters, and
 * one per fiber: id, name, state (new, runnable, running, parked, ended),
 * the call it waits in, on what (the operation and its fd, a wait queue, a
 * cross-thread queue), the time left before its deadline, how long it has
 * waited, when it was spawned, and how much of its stack it uses and has
 * touched. Line-based, key=value, one record per line; docs/observing.md
 * gives the format.
 *
 * Each hub describes itself on its own thread: another hub is asked through
 * its loop and answers at its next turn. One that has not answered by
 * `deadline` (a fiber holds its thread: see the monitor) is listed as
 * `no-answer`; deadline 0 asks nobody else. The text is written with
 * gr_write from a fiber (the call then switches), with write(2) elsewhere.
 * From a thread with no hub, GR_DUMP_ALL_HUBS works (the thread blocks
 * while the hubs answer).
 *
 * Switches (while writing, and while other hubs answer). 0; -EINVAL
 * (unknown flags); -EBADF (fd); -ESRCH (this thread has no hub and
 * GR_DUMP_ALL_HUBS is not set); -ENOMEM; -ECANCELED (a killed fiber waiting
 * for the answers or writing); -EPERM (GR_DUMP_ALL_HUBS inside the hub);
 * the error of the write. */
GR_API int gr_dump(int fd, unsigned flags, int64_t deadline);

/* Write the dump of every hub to fd whenever the process receives `sig`
 * (SIGQUIT for Go's habit, SIGUSR1, ...). The signal handler itself only
 * posts a semaphore; the monitor thread (started if need be) asks every hub
 * for its part, as gr_dump(fd, GR_DUMP_ALL_HUBS, now + 1 s) would, and
 * writes them. fd must stay open while registered. One signal at a time: a
 * new call replaces the previous registration; sig 0 removes it and puts
 * back the signal's previous disposition. Does not switch.
 * 0; -EINVAL (a signal that cannot be caught, or SIGSEGV, which reports
 * stack overflows, or the monitor's own SIGURG); -EBADF (fd not open);
 * -EAGAIN (the monitor thread could not be started). */
GR_API int gr_dump_on_signal(int sig, int fd);

/* ------------------------------------------------------------- monitor */

#define GR_MONITOR_FRAMES 32

/* One frame of a backtrace taken by the monitor. */
struct gr_monitor_frame {
	uintptr_t ip;              /* the instruction address */
	uintptr_t offset;          /* ip - the function's start, when known */
	const char *function;      /* its symbol, "" when unknown */
};

/* A report of the blocking monitor, valid during the callback only. */
struct gr_monitor_report {
	pid_t tid;                 /* the hub's thread */
	const char *hub;           /* its backend: "io_uring", "epoll", "poll" */
	uint64_t fiber_id;         /* the fiber that runs (0: the hub fiber itself) */
	const char *fiber_name;
	int64_t running_ns;        /* how long it has run without switching, to within
				      a quarter of the threshold */
	int ended;                 /* 0: it still runs (frames below); 1: it has just
				      switched, after running_ns (no frames) */
	size_t nframes;            /* 0 if no backtrace could be taken (text says why) */
	const struct gr_monitor_frame *frames; /* innermost first: the fiber's own stack */
	const char *text;          /* the report as written to stderr when no callback
				      is set: lines starting "greenring: monitor: " */
};

/* Start the blocking monitor (gevent's monitor thread, max_blocking_time),
 * or change its threshold and callback: one thread per process watches
 * every hub, and when one fiber has run for more than `threshold_ns`
 * without switching (its hub made no progress and was not asleep in its
 * backend), reports it once: thread, hub, fiber, for how long, and the
 * fiber's backtrace, taken on its own thread by a SIGURG handler with
 * libunwind (async-signal-safe, from the interrupted context). A second
 * report says when it switched. A thread whose hub holds no fiber and
 * nothing in flight is doing something else, and is not reported.
 *
 * The hub publishes one counter for this; the monitor samples it every
 * threshold/4. GREENRING_MONITOR=<ms> starts it at the first hub's
 * creation. fn(report, arg) runs on the monitor thread (NULL: write the
 * report to stderr); it must not call greenring's blocking calls (that
 * thread has no hub). A blocked system call of the reported thread may
 * return EINTR (one signal per report; SA_RESTART is set). A fork() child
 * starts its own monitor at its first hub. Does not switch.
 * 0; -EINVAL (threshold below 1 ms); -EAGAIN (the thread cannot be
 * started). */
GR_API int gr_monitor_start(int64_t threshold_ns,
			    void (*fn)(const struct gr_monitor_report *report, void *arg), void *arg);

/* Stop watching (the thread ends unless gr_dump_on_signal needs it). 0,
 * also when the monitor was not running. Does not switch. */
GR_API int gr_monitor_stop(void);

#ifdef __cplusplus
}
#endif
#endif
