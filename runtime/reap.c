/* reap.c — waiting for child processes and collecting their statuses:
 * gr_process_wait (through gr__child_wait) and gr_process_wait_any.
 *
 * Waiting and collecting are two steps. A fiber first waits, without
 * collecting, until a child CAN be collected, then collects it with a
 * non-blocking waitid(2) under the registry lock:
 *   - one child: on io_uring an IORING_OP_WAITID SQE on its pidfd with
 *     WNOWAIT (the hub's GR_OP_WAITID); on a readiness hub, or a kernel
 *     without the opcode, a poll of the pidfd, which turns readable when
 *     the child ends;
 *   - any child: on io_uring the same SQE for P_ALL. A readiness hub has
 *     nothing to poll for "some child ended" (no fd means that, and SIGCHLD
 *     would need every thread's mask), so one watcher thread per process,
 *     started on first need, blocks in waitid(P_ALL, WNOWAIT) and wakes the
 *     waiting fibers (cross-thread queue, wait.c) when a child can be
 *     collected.
 * Collecting ourselves, rather than letting the kernel reap in the wait,
 * is what keeps every status: whoever reaps (a child's own wait, or a wait
 * for any child on another thread) records the status in the child's
 * registry entry under the same lock, so the handle keeps it. A status the
 * kernel reaped inside an SQE would be in flight, unrecorded, while the
 * child's own wait found it gone.
 *
 * The spawn lock closes the one other gap: between posix_spawn() returning
 * a pid and the pidfd and registry entry existing, a wait for any child
 * must not reap the newborn (its pid could then be reused before
 * pidfd_open names it). Spawners hold it shared, waits for any child
 * exclusively.
 *
 * Lock order: watcher lock, then spawn lock, then registry lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "reap.h"

#define WATCHER_IDLE_EXIT (10 * GR_SEC)

static pthread_rwlock_t spawn_lock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr__list registry;          /* struct gr__child.link */

/* The watcher (readiness hubs' wait for any child). */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;                  /* waiters arrived, or one tried to collect */
	struct gr__xq waiters;                /* fibers of any hub in gr_process_wait_any */
	uint64_t attempts;                    /* collections tried by those waiters */
	bool running;
} watch = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------ fork */

static void fork_prepare(void)
{
	pthread_mutex_lock(&watch.lock);
	pthread_rwlock_wrlock(&spawn_lock);
	pthread_mutex_lock(&registry_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
	pthread_rwlock_unlock(&spawn_lock);
	pthread_mutex_unlock(&watch.lock);
}

/* The fork child has none of its parent's children (they are its
 * siblings), no watcher and none of the parent's waiters. */
static void fork_child(void)
{
	pthread_mutex_init(&registry_lock, NULL);
	pthread_rwlock_init(&spawn_lock, NULL);
	pthread_mutex_init(&watch.lock, NULL);
	gr__cond_init_monotonic(&watch.cond);
	registry.first = registry.last = NULL;
	watch.waiters.parked.first = watch.waiters.parked.last = NULL;
	watch.attempts = 0;
	watch.running = false;
}

static void init_once(void)
{
	gr__cond_init_monotonic(&watch.cond);
	watch.waiters.lock = &watch.lock;
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ------------------------------------------------------------ collecting */

/* waitid's siginfo as waitpid(2)'s status. */
static int wait_status(const siginfo_t *si)
{
	switch (si->si_code) {
	case CLD_EXITED:
		return W_EXITCODE(si->si_status & 0xff, 0);
	case CLD_DUMPED:
		return W_EXITCODE(0, si->si_status) | WCOREFLAG;
	default: /* CLD_KILLED */
		return W_EXITCODE(0, si->si_status);
	}
}

/* Registry lock held: c has been reaped with this siginfo. */
static void record(struct gr__child *c, const siginfo_t *si)
{
	c->status = wait_status(si);
	c->reaped = true;
	if (c->listed) {
		gr__list_remove(&registry, &c->link);
		c->listed = false;
	}
}

/* Registry lock held. 1: c is reaped; 0: still running; -ECHILD: its
 * status was taken by a wait the program made itself. */
static int collect(struct gr__child *c)
{
	siginfo_t si;

	if (c->reaped)
		return 1;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, (id_t)c->pidfd, &si, WEXITED | WNOHANG) < 0)
		return -errno;
	if (si.si_pid == 0)
		return 0;
	record(c, &si);
	return 1;
}

/* Reap any child that has ended. Its pid (> 0) and *status; 0 if children
 * exist but none has ended; -ECHILD if there is no child at all. */
static pid_t collect_any(int *status)
{
	siginfo_t si;
	pid_t pid = 0;

	memset(&si, 0, sizeof(si));
	pthread_rwlock_wrlock(&spawn_lock);
	pthread_mutex_lock(&registry_lock);
	if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG) < 0) {
		pid = -errno;
	} else if (si.si_pid != 0) {
		pid = si.si_pid;
		*status = wait_status(&si);
		gr__list_foreach(it, &registry) {
			struct gr__child *c = gr__container(it, struct gr__child, link);

			if (c->pid == pid) {
				record(c, &si);
				break;
			}
		}
	}
	pthread_mutex_unlock(&registry_lock);
	pthread_rwlock_unlock(&spawn_lock);
	return pid;
}

/* ------------------------------------------------------------ spawning */

int gr__child_spawn(struct gr__child *c, const char *file, const posix_spawn_file_actions_t *fa,
		    const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	pid_t pid;
	int err;

	pthread_once(&once, init_once);
	/* A number for the pidfd, held across the spawn and given back just
	 * before pidfd_open, which then has a free one: with no fd free the
	 * spawn fails here, before any child exists, rather than after, when
	 * the child can only be killed and waited for by its bare pid (which
	 * a waitpid(-1) of the program's own could reap first, freeing the pid
	 * for another process). Only another thread opening an fd between the
	 * close and pidfd_open can still take it. A failure for any other
	 * reason (a sandbox that denies the open) reserves nothing. */
	int slot = open("/", O_PATH | O_CLOEXEC);

	if (slot < 0 && (errno == EMFILE || errno == ENFILE))
		return -errno;
	pthread_rwlock_rdlock(&spawn_lock);
	err = posix_spawnp(&pid, file, fa, attr, argv, envp);
	if (slot >= 0)
		close(slot);
	if (err == 0) {
		c->pidfd = pidfd_open(pid, 0);
		if (c->pidfd < 0 && errno == ESRCH) {
			/* It has ended and was reaped already, not by us: by the
			 * kernel if the program ignores SIGCHLD, or by a waitpid(-1)
			 * of its own. Its status is gone, as for a wait that finds
			 * it so later; and its pid may name another process by
			 * now, which nothing here may signal or wait for. */
			err = ECHILD;
		} else if (c->pidfd < 0) {
			/* Untrackable: it must not outlive this call as a zombie
			 * nobody knows of. It dies at once; the wait is short. */
			err = errno;
			kill(pid, SIGKILL);
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
				;
		} else {
			c->pid = pid;
			pthread_mutex_lock(&registry_lock);
			gr__list_push_back(&registry, &c->link);
			c->listed = true;
			pthread_mutex_unlock(&registry_lock);
		}
	}
	pthread_rwlock_unlock(&spawn_lock);
	return -err;
}

bool gr__child_reaped(struct gr__child *c)
{
	pthread_mutex_lock(&registry_lock);
	bool r = c->reaped;
	pthread_mutex_unlock(&registry_lock);
	return r;
}

void gr__child_forget(struct gr__child *c)
{
	pthread_mutex_lock(&registry_lock);
	if (c->listed) {
		gr__list_remove(&registry, &c->link);
		c->listed = false;
	}
	pthread_mutex_unlock(&registry_lock);
}

/* ------------------------------------------------------------ waiting */

/* Park until the child behind pidfd (or any child: pidfd -1) can be
 * collected, on a hub whose backend takes GR_OP_WAITID. -EOPNOTSUPP if it
 * does not; else 0 or the gate's errors (-ECHILD: nothing to wait for,
 * which the caller's next collection reports properly). */
static int64_t park_waitid(struct gr__hub *hub, struct gr__park *p, int pidfd)
{
	siginfo_t si; /* the kernel writes it before the completion */

	if (!(hub->ops->caps & GR_HUB_CAP_COMPLETION))
		return -EOPNOTSUPP;
	struct gr__op o = gr__op_init(GR_OP_WAITID, pidfd);
	o.op.flags = WEXITED | WNOWAIT;
	o.op.buf = &si;
	return gr__park_op(hub, p, &o);
}

int gr__child_wait(struct gr__child *c, int *status, int64_t deadline, bool uncancellable,
		   const char *what)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = what, .uncancellable = uncancellable };
	int err = gr__park_prepare(&hub, &p, deadline);

	if (err)
		return err;
	for (;;) {
		pthread_mutex_lock(&registry_lock);
		int r = collect(c);
		pthread_mutex_unlock(&registry_lock);
		if (r == 1) {
			if (status)
				*status = c->status;
			return 0;
		}
		if (r < 0)
			return r;
		if (p.deadline == 0)
			return -ETIMEDOUT;
		err = gr__park_again(&p);
		if (err)
			return err;
		int64_t w = park_waitid(hub, &p, c->pidfd);
		if (w == -EOPNOTSUPP) {
			struct gr__op o = gr__op_init(GR_OP_POLL, c->pidfd);

			o.op.events = POLLIN;
			w = gr__park_op(hub, &p, &o);
			if (w > 0 && (w & POLLNVAL))
				w = -EBADF;
		}
		if (w < 0 && w != -ECHILD)
			return (int)w;
	}
}

/* ------------------------------------------------------------ any child */

static void *watcher_main(void *unused)
{
	struct timespec ts;

	(void)unused;
	pthread_mutex_lock(&watch.lock);
	for (;;) {
		while (gr__list_empty(&watch.waiters.parked)) {
			gr__ns_to_timespec(gr_now() + WATCHER_IDLE_EXIT, &ts);
			if (pthread_cond_timedwait(&watch.cond, &watch.lock, &ts) == ETIMEDOUT &&
			    gr__list_empty(&watch.waiters.parked)) {
				watch.running = false;
				pthread_mutex_unlock(&watch.lock);
				return NULL;
			}
		}
		uint64_t seen = watch.attempts;
		pthread_mutex_unlock(&watch.lock);

		siginfo_t si;
		int r;
		do
			r = waitid(P_ALL, 0, &si, WEXITED | WNOWAIT);
		while (r < 0 && errno == EINTR);

		pthread_mutex_lock(&watch.lock);
		/* A child can be collected (or there is none: ECHILD): every
		 * waiter tries, and those that find nothing park again. */
		while (!gr__list_empty(&watch.waiters.parked))
			gr__xunpark(gr__container(watch.waiters.parked.first, struct gr__park, link), 0);
		/* Do not look again before one of them has tried: a child that
		 * can be collected makes waitid return at once, for ever, until
		 * somebody collects it. A waiter arriving tries first, so this
		 * never waits for a fiber that will not come. */
		while (watch.attempts == seen)
			pthread_cond_wait(&watch.cond, &watch.lock);
	}
}

/* Watcher lock held: make sure the watcher runs (and hears of a waiter). */
static int watcher_wanted(void)
{
	if (watch.running) {
		pthread_cond_signal(&watch.cond);
		return 0;
	}
	int r = gr__thread_start(watcher_main, NULL);
	if (r)
		return r;
	watch.running = true;
	return 0;
}

/* Wait for any child with the watcher's help. */
static pid_t wait_any_watched(struct gr__hub *hub, struct gr__park *p, int *status)
{
	pid_t pid;

	pthread_mutex_lock(&watch.lock);
	for (;;) {
		/* Tried under the watcher's lock: a child that ends after this
		 * try is seen by the watcher's next waitid, whose wake-up finds
		 * us parked. */
		pid = collect_any(status);
		watch.attempts++;
		pthread_cond_signal(&watch.cond);
		if (pid != 0)
			break;
		if (p->deadline == 0) {
			pid = -ETIMEDOUT;
			break;
		}
		int err = gr__park_again(p);
		if (!err)
			err = watcher_wanted();
		if (!err)
			err = gr__xpark(hub, p, &watch.waiters);
		if (err) {
			pid = err;
			break;
		}
	}
	pthread_mutex_unlock(&watch.lock);
	return pid;
}

pid_t gr_process_wait_any(int *status, int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_process_wait_any" };
	int st = 0;
	pid_t pid;
	int err = gr__park_prepare(&hub, &p, deadline);

	if (err)
		return err;
	pthread_once(&once, init_once);
	for (;;) {
		pid = collect_any(&st);
		if (pid != 0)
			break;
		if (p.deadline == 0)
			return -ETIMEDOUT;
		err = gr__park_again(&p);
		if (err)
			return err;
		int64_t w = park_waitid(hub, &p, -1);
		if (w == -EOPNOTSUPP) {
			pid = wait_any_watched(hub, &p, &st);
			break;
		}
		if (w < 0 && w != -ECHILD)
			return (pid_t)w;
	}
	if (pid > 0 && status)
		*status = st;
	return pid;
}
