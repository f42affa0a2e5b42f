/* signal.c — fibers that wait for signals (greenring/signal.h).
 *
 * Each hub that has fibers waiting for signals holds one signalfd, opened by
 * the first waiter and closed when the last one leaves, so a thread that
 * never waits for a signal pays nothing, and a test or program that stops
 * waiting holds no extra fd. The waiters are a FIFO list on the hub (each
 * record on its fiber's stack, for as long as the call lasts).
 *
 * Why the waiters poll and then read, rather than each reading: a read in
 * flight takes a signal out of the kernel the moment it completes, and
 * the fiber it was meant for may have left by then (its deadline, a kill,
 * completed in the same batch): the signal would be lost, or have to be
 * queued again by hand, losing its place. Instead every waiter parks on a
 * POLLIN of the shared signalfd (one operation each, through the gate: on
 * io_uring an SQE), and whichever waiter runs first after the fd becomes
 * readable does the reading for all of them (dispatch), synchronously:
 *   - the signalfd's mask is set to the union of the sets of the waiters not
 *     yet served, so the kernel only ever hands over a signal somebody waits
 *     for, and a pending signal nobody waits for never makes the fd
 *     readable (no spinning on it);
 *   - each signal read goes to the first waiter in FIFO order whose set
 *     holds it. That waiter is marked served and its POLL cancelled, so it
 *     wakes at once and returns the signal even if it was killed or timed
 *     out in the meantime: nothing taken is ever dropped;
 *   - reading stops when the kernel has nothing more for the waiters.
 * A signal sent while nobody waits stays pending in the kernel (it is
 * blocked), and the next waiter's first dispatch, before it parks, takes it.
 *
 * Signals sent to the process are visible to the signalfd of every thread;
 * the hubs' reads race and one wins. Signals sent to one thread are seen
 * only by that thread's signalfd (signalfd reads the reader's pending set).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "internal.h"

struct gr__sighub {
	int fd;                       /* the signalfd; -1 while nobody waits */
	sigset_t mask;                /* what fd reports */
	struct gr__list waiters;      /* struct sigwaiter.link, FIFO */
};

/* One gr_signal_wait call, on its fiber's stack. */
struct sigwaiter {
	struct gr__link link;
	sigset_t set;
	int signo;                    /* handed over (> 0); 0 while waiting */
	struct signalfd_siginfo info;
	struct gr__op *op;            /* its POLL while in flight */
};

static struct sigwaiter *waiter_of(struct gr__link *l)
{
	return gr__container(l, struct sigwaiter, link);
}

/* ------------------------------------------------------------ the mask */

/* The set as the kernel's 64-bit mask (bit n-1 for signal n), leaving out
 * what no thread can block (SIGKILL, SIGSTOP) and glibc's internal signals,
 * which pthread_sigmask never blocks. */
static uint64_t kernel_mask(const sigset_t *set)
{
	uint64_t m = 0;

	for (int sig = 1; sig <= 64 && sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP || (sig > SIGSYS && sig < SIGRTMIN))
			continue;
		if (sigismember(set, sig) == 1)
			m |= (uint64_t)1 << (sig - 1);
	}
	return m;
}

/* The signals thread tid blocks (its SigBlk line in /proc/self/task), in
 * kernel_mask's form; false if it cannot be read (the thread has exited,
 * no /proc). */
static bool thread_blocked(pid_t tid, uint64_t *blk)
{
	char path[64], line[256];
	bool found = false;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "SigBlk:", 7) == 0) {
			*blk = strtoull(line + 7, NULL, 16);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* How many threads other than the caller do not block all of `want`, from
 * their SigBlk lines in /proc/self/task (0 if /proc cannot be read). */
static int threads_not_blocking(uint64_t want)
{
	DIR *d = opendir("/proc/self/task");
	pid_t self = gettid();
	int n = 0;

	if (!d)
		return 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		int tid = atoi(e->d_name);
		uint64_t blk;

		if (tid > 0 && tid != self && thread_blocked(tid, &blk))
			n += (blk & want) != want;
	}
	closedir(d);
	return n;
}

int gr_signal_block(const sigset_t *set)
{
	if (!set)
		return -EINVAL;
	int r = pthread_sigmask(SIG_BLOCK, set, NULL);
	if (r)
		return -r;
	return threads_not_blocking(kernel_mask(set));
}

/* Whether an ignored signal (SIG_IGN) still reaches a signalfd. The kernel
 * discards an ignored signal when it is sent unless the thread it is sent
 * to blocks it: for one sent to the process (kill, a terminal, systemd),
 * the main thread, whatever thread then takes it. (Setting SIG_IGN also
 * discards the instances pending then.) So an ignored signal may be waited
 * for when the main thread blocks it, as gr_signal_block in main() does;
 * a program started by nohup has SIGHUP ignored, and a server waiting for
 * it to reload must work. */
static bool ignored_yet_kept(int sig)
{
	uint64_t blk;

	if (gettid() == getpid())
		return true; /* the caller is the main thread, and blocks it */
	return thread_blocked(getpid(), &blk) && (blk >> (sig - 1) & 1);
}

/* A set a fiber may wait for: not empty, nothing that cannot be caught,
 * and every signal blocked here and, if ignored, in the main thread too;
 * otherwise the signal would run its handler or default action, or be
 * discarded, and the fiber would wait for ever without a word. */
static int check_set(const sigset_t *set)
{
	sigset_t blocked;
	bool any = false;

	if (!set || sigismember(set, SIGKILL) == 1 || sigismember(set, SIGSTOP) == 1)
		return -EINVAL;
	pthread_sigmask(SIG_BLOCK, NULL, &blocked);
	for (int sig = 1; sig < NSIG; sig++) {
		struct sigaction sa;

		if (sigismember(set, sig) != 1)
			continue;
		any = true;
		if (sigismember(&blocked, sig) != 1)
			return -EINVAL;
		if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN && !ignored_yet_kept(sig))
			return -EINVAL;
	}
	return any ? 0 : -EINVAL;
}

/* ------------------------------------------------------------ dispatch */

/* The union of the sets of the waiters not served yet; false if none is. */
static bool unserved_union(const struct gr__sighub *sh, sigset_t *out)
{
	bool any = false;

	sigemptyset(out);
	gr__list_foreach(it, &sh->waiters) {
		struct sigwaiter *w = waiter_of(it);

		if (!w->signo) {
			sigorset(out, out, &w->set);
			any = true;
		}
	}
	return any;
}

static struct sigwaiter *first_unserved_for(const struct gr__sighub *sh, int signo)
{
	gr__list_foreach(it, &sh->waiters) {
		struct sigwaiter *w = waiter_of(it);

		if (!w->signo && sigismember(&w->set, signo) == 1)
			return w;
	}
	return NULL;
}

/* Take every pending signal some waiter of this hub wants and hand each to
 * the first such waiter. Runs in a fiber, synchronously: the list of
 * waiters cannot change under it. 0; -errno if the signalfd fails. */
static int dispatch(struct gr__hub *hub, struct gr__sighub *sh)
{
	for (;;) {
		sigset_t want;

		if (!unserved_union(sh, &want))
			return 0;
		/* Only what a waiter wants: the kernel keeps the rest pending,
		 * and the fd is not readable for it. (Compared as the kernel's
		 * mask: glibc leaves the words of a sigset_t past the first
		 * uninitialised, so the structs cannot be compared whole.) */
		if (kernel_mask(&want) != kernel_mask(&sh->mask)) {
			if (signalfd(sh->fd, &want, 0) < 0)
				return -errno;
			sh->mask = want;
		}
		struct signalfd_siginfo si;
		ssize_t n = read(sh->fd, &si, sizeof(si));
		if (n < 0)
			return errno == EAGAIN ? 0 : -errno;
		if (n != (ssize_t)sizeof(si))
			return -EIO;
		struct sigwaiter *w = first_unserved_for(sh, (int)si.ssi_signo);
		if (!w) {
			/* The fd reports only what the waiters want, so this is a
			 * kernel we do not understand: say so, never hang quietly. */
			fprintf(stderr, "greenring: signalfd returned signal %u, which no fiber waits for\n",
				si.ssi_signo);
			continue;
		}
		w->signo = (int)si.ssi_signo;
		w->info = si;
		/* Its POLL may still be in flight: end it, so the fiber runs and
		 * returns the signal now. */
		if (w->op)
			gr__op_cancel(hub, w->op, ECANCELED);
	}
}

/* ------------------------------------------------------------ the wait */

static struct gr__sighub *sighub_get(struct gr__hub *hub)
{
	if (!hub->signals) {
		hub->signals = calloc(1, sizeof(*hub->signals));
		if (!hub->signals)
			return NULL;
		hub->signals->fd = -1;
	}
	return hub->signals;
}

static int wait_loop(struct gr__hub *hub, struct gr__sighub *sh, struct gr__park *p,
		     struct sigwaiter *w)
{
	for (;;) {
		int err = dispatch(hub, sh);

		if (w->signo)
			return 0;
		if (err)
			return err;
		if (p->deadline == 0)
			return -ETIMEDOUT; /* a pure try takes only what is pending */
		err = gr__park_again(p);
		if (err)
			return err;
		struct gr__op op = gr__op_init(GR_OP_POLL, sh->fd);
		op.op.events = POLLIN;
		w->op = &op;
		int64_t r = gr__park_op(hub, p, &op);
		w->op = NULL;
		if (w->signo)
			return 0; /* served by another waiter's dispatch */
		if (r < 0)
			return (int)r;
		if (r & POLLNVAL)
			return -EBADF; /* the program closed our signalfd's number */
	}
}

int gr_signal_wait(const sigset_t *set, struct signalfd_siginfo *info, int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_signal_wait" };
	int err = check_set(set);

	if (err)
		return err;
	err = gr__park_prepare(&hub, &p, deadline);
	if (err)
		return err;
	struct gr__sighub *sh = sighub_get(hub);
	if (!sh)
		return -ENOMEM;
	if (sh->fd < 0) {
		sh->fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
		if (sh->fd < 0)
			return -errno;
		sh->mask = *set;
	}
	struct sigwaiter w = { .set = *set };
	gr__list_push_back(&sh->waiters, &w.link);
	err = wait_loop(hub, sh, &p, &w);
	gr__list_remove(&sh->waiters, &w.link);
	if (gr__list_empty(&sh->waiters)) {
		/* The last waiter closes the fd; a signal sent from now on stays
		 * pending in the kernel for the next one. A fiber that starts
		 * waiting while this close is under way opens a new one. */
		int fd = sh->fd;

		sh->fd = -1;
		(void)gr_close(fd);
	}
	if (!w.signo)
		return err;
	if (info)
		*info = w.info;
	return w.signo;
}

/* ------------------------------------------------------------ lifecycle */

void gr__signal_hub_free(struct gr__hub *hub)
{
	struct gr__sighub *sh = hub->signals;

	if (!sh)
		return;
	/* Fibers still listed were discarded with the thread; nothing is in
	 * flight on the fd any more. */
	if (sh->fd >= 0)
		close(sh->fd);
	free(sh);
	hub->signals = NULL;
}

void gr__signal_fork_child(struct gr__hub *hub)
{
	struct gr__sighub *sh = hub->signals;

	/* The child's reference to the inherited signalfd is its own to drop;
	 * its fresh hub opens another when one of its fibers waits. */
	if (sh && sh->fd >= 0)
		close(sh->fd);
}
