/* test_fork.c — after fork() the child gets a fresh hub on first use and
 * can do I/O, never touching the parent's ring or epoll set nor running the
 * parent's fibers; the parent's hub keeps working. Runs once per hub.
 *
 * A child reports through a pipe ("ok" or what went wrong) and _exits:
 * it never returns into Criterion. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(fork);

/* ------------------------------------------------------------ child side */

/* The anon-inode fds (io_uring rings, epoll sets, eventfds) of this process. */
static int count_anon_fds(void)
{
	return grt_fds_matching("anon_inode:", NULL);
}

static void *child_echo(void *arg)
{
	int *p = arg;
	char buf[8];

	if (gr_sleep(GR_MSEC) != 0)
		return (void *)"sleep";
	if (gr_write(p[1], "kid", 3) != 3)
		return (void *)"write";
	if (gr_read(p[0], buf, sizeof(buf)) != 3 || memcmp(buf, "kid", 3) != 0)
		return (void *)"read";
	return NULL;
}

/* What every child does: a fresh hub of the same kind, fibers, I/O. */
static void child_work(const char *hub, int parent_anon_fds)
{
	struct gr_hub_stats st;

	if (gr_hub_stats(&st) != -ESRCH)
		grt_child_exit("the child has a hub before using greenring (%zu fibers, %zu in flight)",
			   st.fibers, st.inflight);
	const char *name = gr_hub_name();
	if (!name || strcmp(name, hub) != 0)
		grt_child_exit("child hub: %s (%s)", name ? name : "none", gr_hub_why());
	if (gr_hub_stats(&st) != 0 || st.fibers != 0 || st.inflight != 0)
		grt_child_exit("the child's hub is not fresh: %zu fibers, %zu in flight", st.fibers,
			   st.inflight);
	int anon = count_anon_fds();
	if (parent_anon_fds >= 0 && anon != parent_anon_fds)
		grt_child_exit("the child holds %d anon-inode fds, the parent %d: the parent's hub fds "
			   "were kept (or new ones leaked)",
			   anon, parent_anon_fds);
	int p[4][2];
	gr_fiber *f[4];
	for (int i = 0; i < 4; i++) {
		if (pipe2(p[i], O_CLOEXEC) != 0)
			grt_child_exit("pipe: %s", strerror(errno));
		f[i] = gr_spawn(child_echo, p[i]);
	}
	for (int i = 0; i < 4; i++) {
		void *why = NULL;

		if (!f[i] || gr_join(f[i], &why, gr_now() + 10 * GR_SEC) != 0)
			grt_child_exit("child fiber %d did not finish", i);
		if (why)
			grt_child_exit("child fiber %d: %s failed", i, (const char *)why);
	}
	if (gr_hub_join(gr_now() + 10 * GR_SEC) != 0)
		grt_child_exit("the child's gr_hub_join failed: the parent's fibers came along?");
	for (int i = 0; i < 4; i++) {
		gr_close(p[i][0]);
		gr_close(p[i][1]);
	}
}

/* ------------------------------------------------------------ parent side */

struct child {
	pid_t pid;
	int rd;
};

static void expect_child_ok(struct child *c)
{
	grt_child_expect_ok(c->pid, c->rd);
}

struct rw {
	int fd;
	char buf[16];
	ssize_t n;
};

static void *recv_fn(void *arg)
{
	struct rw *r = arg;

	r->n = gr_recv(r->fd, r->buf, sizeof(r->buf), 0);
	return NULL;
}

static void *mark(void *arg)
{
	int fd = *(int *)arg;

	/* Runs in whichever process runs this fiber: once, in the parent. */
	if (write(fd, "F", 1) != 1)
		return (void *)1;
	return NULL;
}

Test(fork, the_child_gets_a_fresh_hub_and_the_parent_keeps_its_own)
{
	int sv[2], marks[2], rep[2];
	struct rw r = { 0 };
	struct child c;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(pipe2(marks, O_CLOEXEC | O_NONBLOCK), 0);
	r.fd = sv[0];
	/* The parent has an operation in flight and a fiber not yet run. */
	gr_fiber *blocked = gr_spawn(recv_fn, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	gr_fiber *pending = gr_spawn(mark, &marks[1]);
	int parent_anon = count_anon_fds();

	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0);
	fflush(NULL);
	c.pid = fork();
	cr_assert_geq(c.pid, 0);
	if (c.pid == 0) {
		grt_report_fd = rep[1];
		child_work(grt_hub(), parent_anon);
		char m;
		if (read(marks[0], &m, 1) == 1)
			grt_child_exit("the child ran a fiber the parent had spawned");
		/* The parent's socket is shared: the child's hub must not have
		 * taken the parent's recv along (it would eat the data). */
		grt_child_exit("ok");
	}
	close(rep[1]);
	c.rd = rep[0];
	expect_child_ok(&c);
	/* The parent's hub is intact: its blocked recv completes, its pending
	 * fiber runs (once), new work runs. */
	cr_assert_eq(send(sv[1], "parent", 6, 0), 6);
	cr_assert_eq(gr_join(blocked, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.n, 6, "the parent's recv: %zd", r.n);
	cr_assert_eq(memcmp(r.buf, "parent", 6), 0);
	cr_assert_eq(gr_join(pending, NULL, gr_now() + 5 * GR_SEC), 0);
	char m[4];
	cr_assert_eq(read(marks[0], m, sizeof(m)), 1, "the parent's pending fiber ran %s",
		     "a wrong number of times");
	int64_t t0 = gr_now();
	cr_assert_eq(gr_sleep(2 * GR_MSEC), 0);
	cr_assert_geq(gr_now() - t0, 2 * GR_MSEC);
	cr_assert_eq(count_anon_fds(), parent_anon, "the parent's hub fds changed");
	close(marks[0]);
	close(marks[1]);
	close(sv[0]);
	close(sv[1]);
}

Test(fork, a_child_that_never_uses_greenring_leaves_the_parent_alone)
{
	int sv[2];
	struct rw r = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(recv_fn, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	for (int i = 0; i < 5; i++) {
		pid_t pid = fork();
		int status;

		cr_assert_geq(pid, 0);
		if (pid == 0)
			_exit(0);
		cr_assert_eq(waitpid(pid, &status, 0), pid);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	cr_assert_eq(send(sv[1], "x", 1, 0), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.n, 1);
	close(sv[0]);
	close(sv[1]);
}

struct forker {
	const char *hub;
	int anon;
	struct child c;
	int err;
};

static void *fork_in_fiber(void *arg)
{
	struct forker *fk = arg;
	int rep[2];

	if (pipe2(rep, O_CLOEXEC) != 0) {
		fk->err = errno;
		return NULL;
	}
	fflush(NULL);
	fk->c.pid = fork();
	if (fk->c.pid == 0) {
		/* The child runs on what was a fiber's stack of the parent. */
		grt_report_fd = rep[1];
		child_work(fk->hub, fk->anon);
		grt_child_exit("ok");
	}
	close(rep[1]);
	fk->c.rd = rep[0];
	if (fk->c.pid < 0) {
		fk->err = errno;
		close(rep[0]);
	}
	return NULL;
}

Test(fork, fork_from_inside_a_fiber)
{
	struct forker fk = { .hub = grt_hub(), .anon = count_anon_fds() };
	gr_fiber *f = gr_spawn(fork_in_fiber, &fk);

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(fk.err, 0, "fork: %s", strerror(fk.err));
	expect_child_ok(&fk.c);
	cr_assert_eq(gr_sleep(GR_MSEC), 0, "the parent's hub after the fork");
}

/* A fiber forks mid-turn, with fibers queued behind it in this turn and the
 * next and a timer in flight (the loop started the turn): none of them runs
 * in the child, where the forking fiber's yields find a fresh, empty run
 * queue; each runs once in the parent (review s20a: the singly linked run
 * queue and the yield that takes the next fiber first). */
static void *sleep_ms(void *arg)
{
	gr_sleep((int64_t)(intptr_t)arg * GR_MSEC);
	return NULL;
}

struct queued_fork {
	struct forker fk;
	int ran; /* queued fibers that ran, in this process's copy */
};

static void *count_run(void *arg)
{
	((struct queued_fork *)arg)->ran++;
	return NULL;
}

static void *fork_with_others_queued(void *arg)
{
	struct queued_fork *q = arg;
	int rep[2];

	if (pipe2(rep, O_CLOEXEC) != 0) {
		q->fk.err = errno;
		return NULL;
	}
	int ran_at_fork = q->ran;
	fflush(NULL);
	q->fk.c.pid = fork();
	if (q->fk.c.pid == 0) {
		grt_report_fd = rep[1];
		child_work(q->fk.hub, -1);
		for (int i = 0; i < 8; i++) {
			if (gr_sleep(0) != 0)
				grt_child_exit("a yield in the child failed");
		}
		if (q->ran != ran_at_fork)
			grt_child_exit("the child ran %d fibers queued in the parent's run queue",
				       q->ran - ran_at_fork);
		grt_child_exit("ok");
	}
	close(rep[1]);
	q->fk.c.rd = rep[0];
	if (q->fk.c.pid < 0) {
		q->fk.err = errno;
		close(rep[0]);
	}
	return NULL;
}

Test(fork, a_fiber_forks_with_others_queued_behind_it)
{
	struct queued_fork q = { .fk = { .hub = grt_hub() } };
	gr_fiber *m[4];

	gr_fiber *sleeper = gr_spawn(sleep_ms, (void *)(intptr_t)50);
	cr_assert_eq(gr_sleep(0), 0); /* the sleeper's timer is in flight */
	m[0] = gr_spawn(count_run, &q);
	gr_fiber *f = gr_spawn(fork_with_others_queued, &q);
	m[1] = gr_spawn(count_run, &q);
	m[2] = gr_spawn(count_run, &q);
	cr_assert_eq(gr_sleep(0), 0);
	m[3] = gr_spawn(count_run, &q); /* queued in the next turn */
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(q.fk.err, 0, "fork: %s", strerror(q.fk.err));
	expect_child_ok(&q.fk.c);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(gr_join(m[i], NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(sleeper, NULL, GR_FOREVER), 0);
	cr_assert_eq(q.ran, 4, "the parent's queued fibers ran %d times, not once each", q.ran);
}

Test(fork, a_grandchild_gets_its_own_hub_too)
{
	int rep[2];
	struct child c;
	int anon = count_anon_fds();

	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0);
	fflush(NULL);
	c.pid = fork();
	cr_assert_geq(c.pid, 0);
	if (c.pid == 0) {
		grt_report_fd = rep[1];
		child_work(grt_hub(), anon);
		/* Fork again from a child whose hub is in use. */
		int rep2[2];
		if (pipe2(rep2, O_CLOEXEC) != 0)
			grt_child_exit("pipe");
		pid_t g = fork();
		if (g == 0) {
			grt_report_fd = rep2[1];
			child_work(grt_hub(), anon);
			grt_child_exit("ok");
		}
		close(rep2[1]);
		char msg[256];
		ssize_t n = read(rep2[0], msg, sizeof(msg) - 1);
		int status;
		waitpid(g, &status, 0);
		msg[n > 0 ? n : 0] = '\0';
		if (strcmp(msg, "ok") != 0)
			grt_child_exit("grandchild: %s", msg);
		grt_child_exit("ok");
	}
	close(rep[1]);
	c.rd = rep[0];
	expect_child_ok(&c);
}

/* ------------------------------------------------------------ other threads */

struct held_hub {
	int ready[2], release[2];
	int ok;
};

static void *hold_a_hub(void *arg)
{
	struct held_hub *h = arg;
	char c = 1;

	h->ok = gr_hub_use(grt_hub()) == 0 && gr_hub_name() != NULL;
	if (write(h->ready[1], &c, 1) != 1)
		h->ok = 0;
	/* Alive, with its hub, until the parent is done forking. */
	if (read(h->release[0], &c, 1) != 1)
		h->ok = 0;
	return NULL;
}

/* Only the forking thread exists in the child, but every thread's hub fds
 * came along: the child must let go of them all, not just its own thread's
 * (each ring or epoll set it keeps open stays alive with the parent's
 * registrations in it). After its first use the child holds exactly one
 * hub's fds, as the parent did before the other thread started. */
Test(fork, the_child_lets_go_of_every_threads_hub)
{
	struct held_hub h = { .ok = 0 };
	pthread_t t;
	char c = 1;
	int one_hub = count_anon_fds();

	cr_assert_eq(pipe2(h.ready, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(h.release, O_CLOEXEC), 0);
	cr_assert_eq(pthread_create(&t, NULL, hold_a_hub, &h), 0);
	cr_assert_eq(read(h.ready[0], &c, 1), 1);
	cr_assert(h.ok, "the other thread could not create its hub");
	cr_assert_gt(count_anon_fds(), one_hub, "the other thread's hub holds no fd?");

	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (!gr_hub_name())
			_exit(2);
		int n = count_anon_fds();
		_exit(n == one_hub ? 0 : 100 + (n < 100 ? n : 99));
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
	cr_assert_eq(WEXITSTATUS(status), 0, "the child holds %d anon-inode fds, one hub is %d",
		     WEXITSTATUS(status) - 100, one_hub);
	cr_assert_eq(write(h.release[1], &c, 1), 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	for (int i = 0; i < 2; i++) {
		close(h.ready[i]);
		close(h.release[i]);
	}
}

/* A fiber forks while another waits on a pipe, so that on io_uring the
 * parent's ring holds the audit's timer: the child's fresh hub times its
 * own read to its deadline (the child's own timer) and does I/O; the
 * parent's timer and reader go on as before. Found nothing (adversarial
 * review). */
struct parked_read {
	int fd;
	int64_t deadline;
	ssize_t r;
	int err;
	int64_t ended;
};

static void *parked_reader(void *arg)
{
	struct parked_read *c = arg;
	char ch;

	if (c->deadline)
		gr_deadline_set(c->deadline);
	c->r = gr_read(c->fd, &ch, 1);
	c->err = c->r < 0 ? errno : 0;
	c->ended = gr_now();
	return NULL;
}

static void child_after_a_pending_timer(int q[2])
{
	struct parked_read c = { .fd = q[0], .deadline = gr_now() + 250 * GR_MSEC };
	gr_fiber *g = gr_spawn(parked_reader, &c);
	char ch;

	if (!g)
		grt_child_exit("gr_spawn: %s", strerror(errno));
	if (gr_join(g, NULL, gr_now() + 2 * GR_SEC) != 0)
		grt_child_exit("the child's reader did not end");
	if (c.r != -1 || c.err != ETIMEDOUT)
		grt_child_exit("the child's read: %zd (%s)", c.r, strerror(c.err));
	int64_t late = c.ended - c.deadline;
	if (late < 0 || late > 100 * GR_MSEC)
		grt_child_exit("the child's read ended %lld us from its deadline", (long long)(late / 1000));
	if (gr_write(q[1], "c", 1) != 1 || gr_read(q[0], &ch, 1) != 1)
		grt_child_exit("the child's pipe: %s", strerror(errno));
	grt_child_exit("ok");
}

Test(fork, a_fork_while_the_rings_timer_is_pending_leaves_both_sides_working)
{
	int p[2], q[2], report;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(q, O_CLOEXEC), 0);
	struct parked_read c = { .fd = p[0] };
	gr_fiber *f = gr_spawn(parked_reader, &c);
	/* Waits bounded by the audit (100 ms epochs): the timer is armed. */
	cr_assert_eq(gr_sleep(130 * GR_MSEC), 0);
	pid_t pid = grt_fork_reporting(&report);
	if (pid == 0)
		child_after_a_pending_timer(q);
	grt_child_expect_ok(pid, report);
	cr_assert_eq(gr_sleep(120 * GR_MSEC), 0);
	cr_assert_eq(c.ended, 0, "the parent's read ended: %zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_write(p[1], "p", 1), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 2 * GR_SEC), 0);
	cr_assert_eq(c.r, 1, "the parent's read: %zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(close(p[0]), 0);
	cr_assert_eq(close(p[1]), 0);
	cr_assert_eq(close(q[0]), 0);
	cr_assert_eq(close(q[1]), 0);
}
