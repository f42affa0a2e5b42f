/* test_signal.c — fibers waiting for signals (gr_signal_wait, gr_signal_block):
 * one waiter, two waiters each taking one of two signals, FIFO across
 * overlapping sets, a signal sent while nobody waits, deadlines, kills, bad
 * sets, threads (process- and thread-directed signals), fork, and a thread
 * exiting mid-wait. Runs once per hub.
 *
 * Real-time signals carry a value (sigqueue) and are queued one by one, so
 * tests that send several use them: two standard signals sent before the
 * first is taken are merged into one by the kernel. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(signal);

static sigset_t set_of(int a, int b)
{
	sigset_t s;

	sigemptyset(&s);
	if (a)
		sigaddset(&s, a);
	if (b)
		sigaddset(&s, b);
	return s;
}

/* Block sigs in this thread (and the threads it creates from now on); the
 * test process has no other thread that could take them. */
static void block(int a, int b)
{
	sigset_t s = set_of(a, b);

	cr_assert_eq(gr_signal_block(&s), 0, "another thread does not block the set");
}

static void send_value(int sig, int value)
{
	union sigval v = { .sival_int = value };

	cr_assert_eq(sigqueue(getpid(), sig, v), 0, "sigqueue: %s", strerror(errno));
}

/* signalfds this process holds. */
static int count_signalfds(void)
{
	return grt_fds_matching("signalfd", NULL);
}

struct waiter {
	sigset_t set;
	int64_t deadline;
	int result;                       /* gr_signal_wait's return */
	struct signalfd_siginfo info;
};

static void *wait_one(void *arg)
{
	struct waiter *w = arg;

	w->result = gr_signal_wait(&w->set, &w->info, w->deadline);
	return NULL;
}

static gr_fiber *start_waiter(struct waiter *w, int a, int b, int64_t deadline)
{
	*w = (struct waiter){ .set = set_of(a, b), .deadline = deadline };
	gr_fiber *f = gr_spawn(wait_one, w);
	cr_assert_not_null(f);
	return f;
}

/* ------------------------------------------------------------ basics */

Test(signal, a_waiting_fiber_gets_the_signal_and_its_siginfo)
{
	struct waiter w;

	block(SIGUSR1, 0);
	gr_fiber *f = start_waiter(&w, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC)); /* it is parked now */
	send_value(SIGUSR1, 4242);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(w.result, SIGUSR1, "gr_signal_wait: %d", w.result);
	cr_assert_eq(w.info.ssi_signo, (uint32_t)SIGUSR1);
	cr_assert_eq(w.info.ssi_pid, (uint32_t)getpid());
	cr_assert_eq(w.info.ssi_code, SI_QUEUE);
	cr_assert_eq(w.info.ssi_int, 4242);
	cr_assert_eq(count_signalfds(), 0, "the last waiter closes the signalfd");
}

Test(signal, two_fibers_each_get_exactly_one_of_two_signals_in_fifo_order)
{
	struct waiter a, b;
	int rt = SIGRTMIN;

	block(rt, 0);
	gr_fiber *fa = start_waiter(&a, rt, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	gr_fiber *fb = start_waiter(&b, rt, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	send_value(rt, 1);
	send_value(rt, 2);
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(fb, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(a.result, rt);
	cr_assert_eq(b.result, rt);
	cr_assert_eq(a.info.ssi_int, 1, "the first waiter gets the first signal");
	cr_assert_eq(b.info.ssi_int, 2);
}

Test(signal, two_standard_signals_go_one_to_each_waiter)
{
	struct waiter a, b;

	block(SIGUSR1, SIGUSR2);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, SIGUSR2, gr_now() + 10 * GR_SEC);
	gr_fiber *fb = start_waiter(&b, SIGUSR1, SIGUSR2, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	kill(getpid(), SIGUSR2);
	kill(getpid(), SIGUSR1);
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(fb, NULL, gr_now() + 5 * GR_SEC));
	cr_assert(a.result > 0 && b.result > 0, "%d %d", a.result, b.result);
	cr_assert_neq(a.result, b.result, "each waiter gets a different one");
}

Test(signal, the_longest_waiter_whose_set_holds_the_signal_gets_it)
{
	struct waiter a, b, c;

	block(SIGUSR1, SIGUSR2);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, SIGUSR2, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	gr_fiber *fb = start_waiter(&b, SIGUSR2, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	gr_fiber *fc = start_waiter(&c, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));

	kill(getpid(), SIGUSR2); /* a waits longest and wants it */
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(a.result, SIGUSR2);
	kill(getpid(), SIGUSR1); /* b does not want it: c does */
	assert_ok(gr_join(fc, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(c.result, SIGUSR1);
	cr_assert_eq(gr_join(fb, NULL, 0), -ETIMEDOUT, "b must still wait");
	kill(getpid(), SIGUSR2);
	assert_ok(gr_join(fb, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(b.result, SIGUSR2);
}

Test(signal, a_signal_sent_while_nobody_waits_is_taken_by_the_next_wait)
{
	struct signalfd_siginfo info;
	sigset_t s = set_of(SIGUSR2, 0);

	block(SIGUSR2, 0);
	send_value(SIGUSR2, 7);
	assert_ok(gr_sleep(GR_MSEC)); /* nobody waits meanwhile */
	int64_t t0 = gr_now();
	cr_assert_eq(gr_signal_wait(&s, &info, gr_now() + 10 * GR_SEC), SIGUSR2);
	cr_assert_lt(gr_now() - t0, 100 * GR_MSEC, "it was pending: no wait");
	cr_assert_eq(info.ssi_int, 7);
	/* And a pure try takes a pending one, or says there is none. */
	send_value(SIGUSR2, 8);
	cr_assert_eq(gr_signal_wait(&s, &info, 0), SIGUSR2);
	cr_assert_eq(info.ssi_int, 8);
	cr_assert_eq(gr_signal_wait(&s, &info, 0), -ETIMEDOUT);
	cr_assert_eq(count_signalfds(), 0);
}

Test(signal, a_wait_ends_at_its_deadline_and_the_fiber_deadline)
{
	sigset_t s = set_of(SIGUSR1, 0);

	block(SIGUSR1, 0);
	int64_t t0 = gr_now();
	cr_assert_eq(gr_signal_wait(&s, NULL, t0 + 50 * GR_MSEC), -ETIMEDOUT);
	int64_t took = gr_now() - t0;
	cr_assert_geq(took, 50 * GR_MSEC, "woke early: %lld ns", (long long)took);
	cr_assert_lt(took, 500 * GR_MSEC, "woke late: %lld ns", (long long)took);

	int64_t old = gr_deadline_set(gr_now() + 30 * GR_MSEC);
	cr_assert_eq(gr_signal_wait(&s, NULL, GR_FOREVER), -ETIMEDOUT);
	gr_deadline_set(old);
	cr_assert_eq(count_signalfds(), 0);
}

Test(signal, a_killed_waiter_fails_and_the_signal_waits_for_the_next)
{
	struct waiter a;
	sigset_t s = set_of(SIGUSR1, 0);

	block(SIGUSR1, 0);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, 0, GR_FOREVER);
	assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_kill(fa));
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(a.result, -ECANCELED);
	kill(getpid(), SIGUSR1);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC), SIGUSR1);
}

Test(signal, sets_that_would_wait_for_ever_are_refused)
{
	sigset_t s;

	cr_assert_eq(gr_signal_wait(NULL, NULL, 0), -EINVAL);
	sigemptyset(&s);
	cr_assert_eq(gr_signal_wait(&s, NULL, 0), -EINVAL, "empty");
	s = set_of(SIGKILL, 0);
	cr_assert_eq(gr_signal_wait(&s, NULL, 0), -EINVAL, "SIGKILL");
	s = set_of(SIGWINCH, 0);
	cr_assert_eq(gr_signal_wait(&s, NULL, 0), -EINVAL, "not blocked");
	cr_assert_eq(gr_signal_block(NULL), -EINVAL);
	cr_assert_eq(count_signalfds(), 0);
}

static void *send_sighup(void *arg)
{
	(void)arg;
	gr_sleep(0);
	cr_assert_eq(kill(getpid(), SIGHUP), 0);
	return NULL;
}

/* nohup starts a program with SIGHUP ignored; a server that reloads on it
 * blocks it and waits. The kernel keeps an ignored signal that the thread
 * it is sent to (the main thread, for kill) blocks. */
Test(signal, an_ignored_signal_the_main_thread_blocks_is_waited_for)
{
	struct sigaction ign = { .sa_handler = SIG_IGN };
	sigset_t s = set_of(SIGHUP, 0);

	cr_assert_eq(gettid(), getpid(), "the test must run on the main thread");
	cr_assert_eq(sigaction(SIGHUP, &ign, NULL), 0);
	block(SIGHUP, 0);
	cr_assert_eq(gr_signal_wait(&s, NULL, 0), -ETIMEDOUT, "nothing pending yet");
	gr_fiber *f = gr_spawn(send_sighup, NULL);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC), SIGHUP);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

struct ignored_elsewhere {
	int result;
};

static void *wait_ignored_unblocked_in_main(void *arg)
{
	struct ignored_elsewhere *ie = arg;
	sigset_t s = set_of(SIGUSR2, 0);

	pthread_sigmask(SIG_BLOCK, &s, NULL);
	ie->result = gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC);
	return NULL;
}

/* Ignored, and not blocked by the main thread: a kill() of the process is
 * discarded by the kernel whatever this thread blocks. A wait would never
 * end; it is refused instead. */
Test(signal, an_ignored_signal_the_main_thread_does_not_block_is_refused)
{
	struct sigaction ign = { .sa_handler = SIG_IGN };
	struct ignored_elsewhere ie = { 0 };
	pthread_t t;

	cr_assert_eq(sigaction(SIGUSR2, &ign, NULL), 0);
	cr_assert_eq(pthread_create(&t, NULL, wait_ignored_unblocked_in_main, &ie), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(ie.result, -EINVAL, "%s", strerror(-ie.result));
}

Test(signal, no_fd_for_the_signalfd_is_an_error_not_a_hang)
{
	struct rlimit old;
	sigset_t s = set_of(SIGUSR1, 0);
	int fill[64];

	block(SIGUSR1, 0);
	int n = grt_exhaust_fds(fill, 64, 0, &old);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + GR_SEC), -EMFILE);
	close(fill[--n]);
	kill(getpid(), SIGUSR1);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC), SIGUSR1);
	grt_restore_fds(fill, n, &old);
}

/* Many real-time signals to several waiters that each take several: every
 * signal is taken exactly once. */
#define MANY_WAITERS 8
#define MANY_EACH 16

struct taker {
	int got[MANY_EACH];
	int n;
};

static void *take_many(void *arg)
{
	struct taker *t = arg;
	sigset_t s = set_of(SIGRTMIN + 1, 0);
	struct signalfd_siginfo info;

	for (t->n = 0; t->n < MANY_EACH; t->n++) {
		int r = gr_signal_wait(&s, &info, gr_now() + 10 * GR_SEC);

		if (r < 0)
			break;
		t->got[t->n] = info.ssi_int;
	}
	return NULL;
}

Test(signal, every_queued_signal_is_taken_exactly_once)
{
	struct taker t[MANY_WAITERS];
	gr_fiber *f[MANY_WAITERS];
	int seen[MANY_WAITERS * MANY_EACH] = { 0 };

	block(SIGRTMIN + 1, 0);
	for (int i = 0; i < MANY_WAITERS; i++)
		f[i] = gr_spawn(take_many, &t[i]);
	assert_ok(gr_sleep(GR_MSEC));
	for (int v = 0; v < MANY_WAITERS * MANY_EACH; v++) {
		send_value(SIGRTMIN + 1, v);
		if (v % 5 == 0)
			assert_ok(gr_sleep(0)); /* some while waiters run, some in bursts */
	}
	for (int i = 0; i < MANY_WAITERS; i++) {
		assert_ok(gr_join(f[i], NULL, gr_now() + 10 * GR_SEC));
		cr_assert_eq(t[i].n, MANY_EACH, "waiter %d took %d", i, t[i].n);
		for (int k = 0; k < MANY_EACH; k++)
			seen[t[i].got[k]]++;
	}
	for (int v = 0; v < MANY_WAITERS * MANY_EACH; v++)
		cr_assert_eq(seen[v], 1, "signal %d taken %d times", v, seen[v]);
}

/* ------------------------------------------------------------ threads */

struct thread_waiter {
	const char *hub;
	int sig;
	int64_t deadline;
	int result;
	int value;
	int ready_fd;                     /* written once the waiter is parked */
};

static void *thread_wait(void *arg)
{
	struct thread_waiter *tw = arg;
	struct waiter w;

	if (gr_hub_use(tw->hub) < 0) {
		tw->result = -ENOTSUP;
		return NULL;
	}
	gr_fiber *f = start_waiter(&w, tw->sig, 0, tw->deadline);
	gr_sleep(GR_MSEC);
	if (write(tw->ready_fd, "r", 1) != 1)
		tw->result = -EIO;
	gr_join(f, NULL, GR_FOREVER);
	tw->result = w.result;
	tw->value = w.info.ssi_int;
	return NULL;
}

static void wait_ready(int fd, int n)
{
	char c;

	for (int i = 0; i < n; i++)
		cr_assert_eq(gr_read(fd, &c, 1), 1);
}

Test(signal, each_thread_hub_takes_one_of_two_signals_sent_to_the_process)
{
	struct thread_waiter tw[2];
	pthread_t t[2];
	int pfd[2];
	int rt = SIGRTMIN + 2;

	block(rt, 0); /* before the threads: they inherit the mask */
	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
	for (int i = 0; i < 2; i++) {
		tw[i] = (struct thread_waiter){ .hub = grt_hub(), .sig = rt,
						.deadline = gr_now() + 10 * GR_SEC, .ready_fd = pfd[1] };
		cr_assert_eq(pthread_create(&t[i], NULL, thread_wait, &tw[i]), 0);
	}
	wait_ready(pfd[0], 2);
	send_value(rt, 1);
	send_value(rt, 2);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_join(t[i], NULL), 0);
	cr_assert_eq(tw[0].result, rt, "thread 0: %d", tw[0].result);
	cr_assert_eq(tw[1].result, rt, "thread 1: %d", tw[1].result);
	cr_assert_eq(tw[0].value + tw[1].value, 3, "each took one: %d and %d", tw[0].value,
		     tw[1].value);
	gr_close(pfd[0]);
	gr_close(pfd[1]);
}

Test(signal, a_signal_sent_to_one_thread_goes_to_its_hub_only)
{
	struct thread_waiter tw;
	pthread_t t;
	int pfd[2];
	sigset_t s = set_of(SIGUSR1, 0);

	block(SIGUSR1, 0);
	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
	tw = (struct thread_waiter){ .hub = grt_hub(), .sig = SIGUSR1,
				     .deadline = gr_now() + 10 * GR_SEC, .ready_fd = pfd[1] };
	cr_assert_eq(pthread_create(&t, NULL, thread_wait, &tw), 0);
	wait_ready(pfd[0], 1);
	cr_assert_eq(pthread_kill(t, SIGUSR1), 0);
	/* Ours is not the thread it was sent to: we never see it. */
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 100 * GR_MSEC), -ETIMEDOUT);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(tw.result, SIGUSR1);
	gr_close(pfd[0]);
	gr_close(pfd[1]);
}

static void *idle_thread(void *arg)
{
	int *fds = arg;
	char c;

	/* Running: glibc starts a thread with every signal blocked and only
	 * then sets the mask it inherits, so it is counted after this. */
	if (write(fds[3], "r", 1) != 1)
		return NULL;
	/* A plain blocking read: this thread never blocks anything. */
	if (read(fds[0], &c, 1) < 0)
		return NULL;
	return NULL;
}

Test(signal, block_counts_the_threads_that_do_not_block_the_set)
{
	int fds[4];
	pthread_t t;
	char c;

	cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(fds + 2, O_CLOEXEC), 0);
	cr_assert_eq(pthread_create(&t, NULL, idle_thread, fds), 0);
	cr_assert_eq(read(fds[2], &c, 1), 1);
	sigset_t s = set_of(SIGUSR2, 0);
	int n = gr_signal_block(&s);
	cr_assert_eq(n, 1, "the thread made before does not block it: %d", n);
	cr_assert_eq(write(fds[1], "x", 1), 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(gr_signal_block(&s), 0);
	for (int i = 0; i < 4; i++)
		close(fds[i]);
}

static void *job(void *arg)
{
	return arg;
}

Test(signal, the_runtimes_own_threads_never_take_a_signal)
{
	struct waiter w;

	/* A worker thread made before the mask is set blocks everything. */
	assert_ok(gr_tpool_run(job, NULL, NULL, gr_now() + 5 * GR_SEC));
	struct gr_tpool_stats st;
	assert_ok(gr_tpool_stats(&st));
	cr_assert_geq(st.threads, 1);
	block(SIGUSR1, 0);
	gr_fiber *f = start_waiter(&w, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	kill(getpid(), SIGUSR1);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(w.result, SIGUSR1);
}

static void *waits_then_thread_exits(void *arg)
{
	struct thread_waiter *tw = arg;
	struct waiter w;

	if (gr_hub_use(tw->hub) < 0)
		return NULL;
	/* Parked, never joined: the thread ends under it. */
	start_waiter(&w, SIGUSR1, 0, GR_FOREVER);
	gr_sleep(GR_MSEC);
	tw->result = count_signalfds();
	return NULL;
}

Test(signal, a_thread_exiting_while_a_fiber_waits_lets_go_of_everything)
{
	struct thread_waiter tw = { .hub = grt_hub() };
	pthread_t t;
	int before = grt_count_fds();

	block(SIGUSR1, 0);
	cr_assert_eq(pthread_create(&t, NULL, waits_then_thread_exits, &tw), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(tw.result, 1, "the waiting thread held a signalfd");
	cr_assert_eq(grt_count_fds(), before, "the thread's hub and signalfd are gone");
	/* The signal was never taken: still ours. */
	sigset_t s = set_of(SIGUSR1, 0);
	kill(getpid(), SIGUSR1);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC), SIGUSR1);
}

/* The number of the signalfd this process holds (-1 if none). */
static int find_signalfd(void)
{
	int fd;

	grt_fds_matching("signalfd", &fd);
	return fd;
}

Test(signal, a_signalfd_closed_behind_the_runtimes_back_fails_the_wait_not_hangs)
{
	struct waiter a;
	sigset_t s = set_of(SIGUSR1, 0);

	block(SIGUSR1, 0);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	int fd = find_signalfd();
	cr_assert_geq(fd, 0);
	close(fd);
	int64_t t0 = gr_now();
	assert_ok(gr_join(fa, NULL, gr_now() + 10 * GR_SEC));
	cr_assert_eq(a.result, -EBADF, "%d", a.result);
	cr_assert_lt(gr_now() - t0, 5 * GR_SEC, "found within the hub's audit of long waits");
	/* The next wait starts afresh. */
	kill(getpid(), SIGUSR1);
	cr_assert_eq(gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC), SIGUSR1);
}

/* ------------------------------------------------------------ fork */

Test(signal, a_fork_child_starts_afresh_and_waits_for_its_own_signals)
{
	struct waiter a;
	int pfd[2];

	block(SIGUSR1, SIGUSR2);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	cr_assert_eq(count_signalfds(), 1);
	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		sigset_t s = set_of(SIGUSR2, 0);
		const char *why = "ok";

		if (count_signalfds() != 0)
			why = "the child kept the parent's signalfd";
		else if (kill(getpid(), SIGUSR2) != 0 ||
			 gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC) != SIGUSR2)
			why = "the child could not wait for its own signal";
		else if (count_signalfds() != 0)
			why = "the child's signalfd was not closed";
		if (write(pfd[1], why, strlen(why)) < 0)
			_exit(3);
		_exit(strcmp(why, "ok") == 0 ? 0 : 1);
	}
	close(pfd[1]);
	char msg[128] = "";
	ssize_t n = gr_read(pfd[0], msg, sizeof(msg) - 1);
	cr_assert_gt(n, 0);
	msg[n] = '\0';
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert_str_eq(msg, "ok");
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* The parent's waiter is untouched by the child. */
	kill(getpid(), SIGUSR1);
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(a.result, SIGUSR1);
	gr_close(pfd[0]);
}

/* ------------------------------------------------------------ behind the runtime's back */

static atomic_int handled;

static void count_handled(int sig)
{
	(void)sig;
	atomic_fetch_add(&handled, 1);
}

/* The program installs a handler for a signal a fiber waits for. The
 * signal is blocked, so the handler never runs: the waiter gets it. */
Test(signal, a_handler_installed_while_a_fiber_waits_never_steals_the_signal)
{
	struct waiter w;
	struct sigaction sa = { .sa_handler = count_handled }, old;

	block(SIGUSR1, 0);
	gr_fiber *f = start_waiter(&w, SIGUSR1, 0, gr_now() + 5 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGUSR1, &sa, &old), 0);
	send_value(SIGUSR1, 7);
	assert_ok(gr_join(f, NULL, gr_now() + 10 * GR_SEC));
	cr_assert_eq(sigaction(SIGUSR1, &old, NULL), 0);
	cr_assert_eq(w.result, SIGUSR1, "gr_signal_wait: %d", w.result);
	cr_assert_eq(w.info.ssi_int, 7);
	cr_assert_eq(atomic_load(&handled), 0, "the handler ran");
}

/* fork() in a fiber while another fiber of the thread waits for a signal:
 * the child has no waiter and no signalfd, and waits for its own; the
 * parent's waiter still gets the parent's. */
struct forker {
	int rep[2];
	pid_t pid;
};

static void *fork_in_a_fiber(void *arg)
{
	struct forker *fk = arg;

	fflush(NULL);
	fk->pid = fork();
	if (fk->pid != 0)
		return NULL;
	sigset_t s = set_of(SIGUSR2, 0);
	grt_report_fd = fk->rep[1];
	if (count_signalfds() != 0)
		grt_child_exit("the child kept the parent's signalfd");
	if (kill(getpid(), SIGUSR2) != 0 || gr_signal_wait(&s, NULL, gr_now() + 5 * GR_SEC) != SIGUSR2)
		grt_child_exit("the child could not wait for its own signal");
	grt_child_exit("ok");
}

Test(signal, a_fork_in_a_fiber_while_another_waits_leaves_both_sides_working)
{
	struct waiter a;
	struct forker fk = { 0 };

	block(SIGUSR1, SIGUSR2);
	gr_fiber *fa = start_waiter(&a, SIGUSR1, 0, gr_now() + 10 * GR_SEC);
	assert_ok(gr_sleep(GR_MSEC));
	cr_assert_eq(pipe2(fk.rep, O_CLOEXEC), 0);
	gr_fiber *ff = gr_spawn(fork_in_a_fiber, &fk);
	assert_ok(gr_join(ff, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_geq(fk.pid, 0, "fork: %s", strerror(errno));
	close(fk.rep[1]);
	char msg[128] = "";
	ssize_t n = gr_read(fk.rep[0], msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = '\0';
	int st;
	cr_assert_eq(waitpid(fk.pid, &st, 0), fk.pid);
	cr_assert_str_eq(msg, "ok", "child: %s", msg);
	kill(getpid(), SIGUSR1);
	assert_ok(gr_join(fa, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(a.result, SIGUSR1);
	gr_close(fk.rep[0]);
}
