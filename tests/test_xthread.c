/* test_xthread.c — across threads: gr_close of an fd that fibers of other
 * threads wait on (from a hub, from a plain thread, with waiters on several
 * hubs, with a stale record, with the closer's thread exiting mid-close),
 * and calls that name another thread's objects, which fail with EPERM and
 * disturb nothing. Runs once per hub.
 *
 * Other threads record; the test's own thread asserts. A thread whose hub
 * must not run for a while sits in a plain read(2) of a pipe the test
 * writes to. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(xthread);

/* A wake by the record, not by the hub's audit of long waits (the first
 * audit comes after 100 to 200 ms): well under that. */
#define PROMPT (80 * GR_MSEC)

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/* ------------------------------------------------------------ waiters */

/* One fiber waiting on fd: in gr_recv, or gr_accept for a listener. */
struct waiter {
	int fd;
	int accept;
	atomic_int started;
	int rc, err;
	int64_t woke_at;
};

static void *wait_on_fd(void *arg)
{
	struct waiter *w = arg;
	char c;

	atomic_store(&w->started, 1);
	if (w->accept)
		w->rc = gr_accept4(w->fd, NULL, NULL, SOCK_CLOEXEC);
	else
		w->rc = (int)gr_recv(w->fd, &c, 1, 0);
	w->err = w->rc < 0 ? errno : 0;
	w->woke_at = gr_now();
	if (w->rc >= 0 && w->accept)
		close(w->rc);
	return NULL;
}

/* A hub thread with `n` waiters; after they end it waits (a green read)
 * for `go` and then, if `reuse` >= 0, checks the fd number works again on
 * this hub: dup2 a fresh pipe onto it and read through it. */
struct hub_side {
	struct waiter w[4];
	int n;
	int go[2];                  /* the test writes a byte when the close is done */
	int reuse;                  /* -1: no check */
	int reuse_rc;               /* the green read through the reused number */
	atomic_int parked;
};

static void hub_side_run(void *arg)
{
	struct hub_side *hs = arg;
	gr_fiber *f[4];
	char c;

	for (int i = 0; i < hs->n; i++)
		f[i] = gr_spawn(wait_on_fd, &hs->w[i]);
	gr_sleep(0); /* they start, and park in their calls */
	gr_sleep(GR_MSEC);
	atomic_store(&hs->parked, 1);
	for (int i = 0; i < hs->n; i++)
		if (f[i])
			gr_join(f[i], NULL, GR_FOREVER);
	if (hs->go[0] < 0 || gr_read(hs->go[0], &c, 1) != 1 || hs->reuse < 0)
		return;
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0 || grt_move_fd(p[0], hs->reuse) < 0) {
		hs->reuse_rc = -errno;
		return;
	}
	hs->reuse_rc = write(p[1], "k", 1) == 1 && gr_read(hs->reuse, &c, 1) == 1 && c == 'k' ? 0 : -errno;
	gr_close(hs->reuse);
	close(p[1]);
}

static void hub_side_init(struct hub_side *hs, int fd, int n, int accept)
{
	memset(hs, 0, sizeof(*hs));
	hs->n = n;
	hs->reuse = -1;
	hs->go[0] = hs->go[1] = -1;
	for (int i = 0; i < n; i++)
		hs->w[i] = (struct waiter){ .fd = fd, .accept = accept, .rc = 1 };
}

static void assert_woken(const struct hub_side *hs, int64_t closed_at, const char *who)
{
	for (int i = 0; i < hs->n; i++) {
		cr_assert_eq(hs->w[i].rc, -1, "%s: waiter %d returned %d", who, i, hs->w[i].rc);
		cr_assert_eq(hs->w[i].err, EBADF, "%s: waiter %d: %s", who, i, strerror(hs->w[i].err));
		cr_assert_lt(hs->w[i].woke_at - closed_at, PROMPT,
			     "%s: waiter %d woke %lld ms after the close (the audit, not the record?)",
			     who, i, (long long)((hs->w[i].woke_at - closed_at) / GR_MSEC));
	}
}

Test(xthread, a_close_from_this_hub_wakes_another_hubs_fiber_with_ebadf)
{
	int fds[2];
	struct hub_side hs;
	struct grt_thread t;

	grt_tcp_pair(fds);
	hub_side_init(&hs, fds[1], 1, 0);
	grt_thread_start(&t, 1, hub_side_run, &hs);
	grt_await_flag(&hs.parked, "the other hub's fiber to wait");
	int64_t t0 = gr_now();
	cr_assert_eq(gr_close(fds[1]), 0, "gr_close: %s", strerror(errno));
	cr_assert(!fd_open(fds[1]), "the fd is still open");
	grt_thread_join(&t);
	assert_woken(&hs, t0, "another hub");
	close(fds[0]);
}

static void close_plain(void *arg)
{
	int *fd = arg;

	fd[1] = gr_close(fd[0]) == 0 ? 0 : errno;
}

Test(xthread, a_plain_thread_closes_an_fd_a_hub_waits_on)
{
	int fds[2];
	struct hub_side hs;
	struct grt_thread t, closer;
	int args[2];

	grt_tcp_pair(fds);
	hub_side_init(&hs, fds[1], 2, 0);
	grt_thread_start(&t, 1, hub_side_run, &hs);
	grt_await_flag(&hs.parked, "the hub's fibers to wait");
	args[0] = fds[1];
	args[1] = -1;
	int64_t t0 = gr_now();
	grt_thread_start(&closer, 0, close_plain, args);
	grt_thread_join(&closer);
	cr_assert_eq(args[1], 0, "the plain thread's gr_close: %s", strerror(args[1]));
	grt_thread_join(&t);
	assert_woken(&hs, t0, "the hub");
	close(fds[0]);
}

/* A listener with accept waiters on two other hubs and on this one; the
 * close comes from here (this hub performs it, the others hold), then
 * from a plain thread (one of them performs, the other holds). After
 * each, the holders use the number again for a new file: the hold ended
 * with the close. */
static void close_shared_listener(int from_plain)
{
	int port;
	struct hub_side hs[2];
	struct grt_thread t[2];
	int lfd = grt_listener(&port);

	for (int i = 0; i < 2; i++) {
		hub_side_init(&hs[i], lfd, 2, 1);
		hs[i].reuse = lfd;
		cr_assert_eq(pipe2(hs[i].go, O_CLOEXEC), 0);
		grt_thread_start(&t[i], 1, hub_side_run, &hs[i]);
		grt_await_flag(&hs[i].parked, "a hub's fibers to wait");
	}
	struct waiter mine = { .fd = lfd, .accept = 1, .rc = 1 };
	gr_fiber *f = NULL;
	if (!from_plain) {
		f = gr_spawn(wait_on_fd, &mine);
		assert_ok(gr_sleep(GR_MSEC));
	}
	int64_t t0 = gr_now();
	if (from_plain) {
		struct grt_thread closer;
		int args[2] = { lfd, -1 };

		grt_thread_start(&closer, 0, close_plain, args);
		grt_thread_join(&closer);
		cr_assert_eq(args[1], 0, "gr_close from a plain thread: %s", strerror(args[1]));
	} else {
		cr_assert_eq(gr_close(lfd), 0, "gr_close: %s", strerror(errno));
		assert_ok(gr_join(f, NULL, GR_FOREVER));
		cr_assert_eq(mine.err, EBADF, "this hub's own waiter: %s", strerror(mine.err));
	}
	cr_assert(!fd_open(lfd), "the listener is still open");
	/* One hub at a time: both reuse the same number, and one's gr_close of
	 * it under the other's read would be a genuine EBADF. */
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(write(hs[i].go[1], "g", 1), 1);
		grt_thread_join(&t[i]);
		assert_woken(&hs[i], t0, i ? "hub 2" : "hub 1");
		cr_assert_eq(hs[i].reuse_rc, 0, "hub %d: the number, reused, still fails: %s", i + 1,
			     strerror(-hs[i].reuse_rc));
		close(hs[i].go[0]);
		close(hs[i].go[1]);
	}
}

Test(xthread, waiters_on_three_hubs_all_get_ebadf_and_the_number_is_free_after)
{
	close_shared_listener(0);
	close_shared_listener(1);
}

/* A hub used the fd and let it go with plain close(): its record is
 * stale. A later gr_close of a new file under the number asks that hub,
 * which has nothing on it, and the file is closed all the same. */
struct stale {
	int fd;
	int go[2];
	atomic_int ready;
};

static void *read_one(void *arg)
{
	char c;

	return gr_read(*(int *)arg, &c, 1) == 1 ? arg : NULL;
}

static void use_then_close_plainly(void *arg)
{
	struct stale *st = arg;
	int p[2];
	char c;
	void *res = NULL;

	if (pipe2(p, O_CLOEXEC) != 0)
		return;
	/* A read that parks: the fd is recorded as this hub's. */
	gr_fiber *f = gr_spawn(read_one, &p[0]);
	gr_sleep(GR_MSEC);
	if (write(p[1], "x", 1) == 1 && f && gr_join(f, &res, GR_FOREVER) == 0 && res)
		st->fd = p[0];
	close(p[1]);
	close(p[0]); /* behind the runtime's back */
	atomic_store(&st->ready, 1);
	(void)gr_read(st->go[0], &c, 1); /* the hub runs, and serves, until told */
}

Test(xthread, a_stale_record_costs_a_round_trip_and_nothing_else)
{
	struct stale st = { .fd = -1 };
	struct grt_thread t;

	cr_assert_eq(pipe2(st.go, O_CLOEXEC), 0);
	grt_thread_start(&t, 1, use_then_close_plainly, &st);
	grt_await_flag(&st.ready, "the other hub to use the fd");
	cr_assert_geq(st.fd, 0);
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(grt_move_fd(p[0], st.fd), 0);
	cr_assert_eq(gr_close(st.fd), 0, "gr_close: %s", strerror(errno));
	cr_assert(!fd_open(st.fd));
	cr_assert_eq(write(st.go[1], "g", 1), 1);
	grt_thread_join(&t);
	close(p[1]);
	close(st.go[0]);
	close(st.go[1]);
}

/* ------------------------------------------------------------ the closer's thread exits */

/* D waits on the fd and keeps its loop running; B waits on it and then
 * sits in read(2), so a HOLD for it stays unanswered; C asks for the
 * close (D performs, B holds) and its thread exits while it waits. When
 * B runs again, it answers into a call nobody waits for: the call is
 * freed and B's hold released (B's next wait on the fd is a wait, not
 * EBADF); the fd was never closed, and D's fiber still waits on it. */
struct exiting_close {
	int fd;
	struct hub_side d, b;
	int stuck[2];               /* B reads it: its hub stops meanwhile */
	int b_after;                /* B's gr_wait_fd on the fd afterwards */
	atomic_int b_parked, c_asked;
};

static void b_run(void *arg)
{
	struct exiting_close *ec = arg;
	char c;

	gr_fiber *f = gr_spawn(wait_on_fd, &ec->b.w[0]);
	gr_sleep(0);
	gr_sleep(GR_MSEC);
	atomic_store(&ec->b_parked, 1);
	if (read(ec->stuck[0], &c, 1) != 1)
		return;
	if (f)
		gr_join(f, NULL, GR_FOREVER); /* served the HOLD: EBADF */
	int r = gr_wait_fd(ec->fd, POLLIN, gr_now() + 10 * GR_MSEC);
	ec->b_after = r < 0 ? errno : 0;
}

static void *close_it(void *arg)
{
	gr_close(*(int *)arg);
	return NULL; /* never reached: the thread exits first */
}

static void c_run(void *arg)
{
	struct exiting_close *ec = arg;

	gr_spawn(close_it, &ec->fd);
	gr_sleep(0);                 /* it posts the HOLD and parks */
	gr_sleep(5 * GR_MSEC);
	atomic_store(&ec->c_asked, 1);
	/* Return: the thread exits with its fiber inside gr_close. */
}

Test(xthread, the_closers_thread_exits_mid_close)
{
	static struct exiting_close ec;
	struct grt_thread d, b, c;
	int port;

	memset(&ec, 0, sizeof(ec));
	ec.fd = grt_listener(&port);
	cr_assert_eq(pipe2(ec.stuck, O_CLOEXEC), 0);
	hub_side_init(&ec.d, ec.fd, 1, 1);
	hub_side_init(&ec.b, ec.fd, 1, 1);
	/* D first: the first hub on the fd performs the close. */
	grt_thread_start(&d, 1, hub_side_run, &ec.d);
	grt_await_flag(&ec.d.parked, "D's fiber to wait");
	grt_thread_start(&b, 1, b_run, &ec);
	grt_await_flag(&ec.b_parked, "B's fiber to wait");
	grt_thread_start(&c, 1, c_run, &ec);
	grt_thread_join(&c);
	cr_assert(atomic_load(&ec.c_asked));
	cr_assert(fd_open(ec.fd), "closed, though the close never got past the hold");

	cr_assert_eq(write(ec.stuck[1], "g", 1), 1);
	grt_thread_join(&b);
	cr_assert_eq(ec.b.w[0].err, EBADF, "B's waiter: %s", strerror(ec.b.w[0].err));
	cr_assert_eq(ec.b_after, ETIMEDOUT, "B after the abandoned close: %s (still held?)",
		     strerror(ec.b_after));
	/* D still waits on the open fd; a close from here reaches it. */
	int64_t t0 = gr_now();
	cr_assert_eq(gr_close(ec.fd), 0, "gr_close: %s", strerror(errno));
	grt_thread_join(&d);
	assert_woken(&ec.d, t0, "D");
	close(ec.stuck[0]);
	close(ec.stuck[1]);
}

/* ------------------------------------------------------------ another thread's objects */

struct owned {
	gr_event ev;
	gr_queue q;
	gr_mutex mx;
	gr_sem sem;
	int go[2];
	atomic_int bound;
	int waiter_rc, got, owner_rc;
};

static void *wait_event(void *arg)
{
	struct owned *o = arg;

	o->waiter_rc = gr_event_wait(&o->ev, GR_FOREVER);
	return NULL;
}

static void owner_run(void *arg)
{
	struct owned *o = arg;
	void *it = NULL;
	char c;

	/* First use from this hub binds each object to it. */
	if (gr_queue_tryput(&o->q, (void *)1) || gr_mutex_lock(&o->mx, GR_FOREVER) ||
	    gr_sem_acquire(&o->sem, GR_FOREVER)) {
		o->owner_rc = -1;
		return;
	}
	gr_fiber *f = gr_spawn(wait_event, o);
	gr_sleep(0);                 /* it waits on the event */
	atomic_store(&o->bound, 1);
	if (gr_read(o->go[0], &c, 1) != 1) {
		o->owner_rc = -2;
		return;
	}
	/* After the other thread's attempts, everything works as before. */
	o->owner_rc = gr_event_set(&o->ev) == 1 && gr_join(f, NULL, GR_FOREVER) == 0 &&
				      gr_queue_tryget(&o->q, &it) == 0 && it == (void *)1 &&
				      gr_mutex_unlock(&o->mx) == 0 && gr_sem_release(&o->sem) == 0 &&
				      gr_event_destroy(&o->ev) == 0 && gr_queue_destroy(&o->q) == 0 &&
				      gr_mutex_destroy(&o->mx) == 0 && gr_sem_destroy(&o->sem) == 0
			      ? 0
			      : -3;
}

Test(xthread, another_threads_objects_are_eperm_and_untouched)
{
	static struct owned o;
	struct grt_thread t;
	void *it;

	memset(&o, 0, sizeof(o));
	assert_ok(gr_event_init(&o.ev));
	assert_ok(gr_queue_init(&o.q, 4));
	assert_ok(gr_mutex_init(&o.mx));
	assert_ok(gr_sem_init(&o.sem, 1, 1));
	cr_assert_eq(pipe2(o.go, O_CLOEXEC), 0);
	grt_thread_start(&t, 1, owner_run, &o);
	grt_await_flag(&o.bound, "the owner to use its objects");

	assert_err(gr_event_set(&o.ev), EPERM);
	assert_err(gr_event_wait(&o.ev, 0), EPERM);
	assert_err(gr_event_destroy(&o.ev), EPERM);
	assert_err(gr_queue_tryput(&o.q, (void *)2), EPERM);
	assert_err(gr_queue_tryget(&o.q, &it), EPERM);
	assert_err(gr_queue_get(&o.q, &it, GR_FOREVER), EPERM);
	assert_err(gr_queue_close(&o.q), EPERM);
	assert_err(gr_mutex_unlock(&o.mx), EPERM);
	assert_err(gr_mutex_trylock(&o.mx), EPERM);
	assert_err(gr_sem_release(&o.sem), EPERM);
	assert_err(gr_sem_acquire(&o.sem, GR_FOREVER), EPERM);

	cr_assert_eq(write(o.go[1], "g", 1), 1);
	grt_thread_join(&t);
	cr_assert_eq(o.owner_rc, 0, "the owner's objects were disturbed (%d)", o.owner_rc);
	assert_ok(o.waiter_rc);
	close(o.go[0]);
	close(o.go[1]);
}

/* ------------------------------------------------------------ the waiter's thread exits */

/* A's fiber waits in gr_recv on fd; a plain thread gr_closes fd while A's
 * thread exits (A sits in read(2), so the close's request waits in its
 * inbox, then A returns at a time the test varies: before, while or after
 * the request lands). The close must return 0 at once or as A goes, never
 * hang; the fd is closed exactly once: a file that takes the number after
 * the close must still be open once A is gone. */
struct exit_during_close {
	int fd;
	int go[2];                  /* A reads it, then exits */
	struct waiter w;
	atomic_int parked;
	int close_rc, close_err;
};

static void exiting_waiter_run(void *arg)
{
	struct exit_during_close *e = arg;
	char c;

	gr_spawn(wait_on_fd, &e->w);
	gr_sleep(0);
	gr_sleep(GR_MSEC);
	atomic_store(&e->parked, 1);
	if (read(e->go[0], &c, 1) != 1)
		grt_fail("A's read: %s", strerror(errno));
	/* Return: the thread exits with its fiber inside gr_recv. */
}

static void plain_closer_run(void *arg)
{
	struct exit_during_close *e = arg;

	e->close_rc = gr_close(e->fd);
	e->close_err = e->close_rc < 0 ? errno : 0;
}

/* grt_thread_join, but a thread that does not end within 10 s fails the
 * test with `what` instead of hanging it. */
static void join_within(struct grt_thread *t, const char *what)
{
	int64_t until = gr_now() + 10 * GR_SEC;

	while (!atomic_load(&t->done)) {
		cr_assert_lt(gr_now(), until, "%s did not end within 10 s", what);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	}
	grt_thread_join(t);
}

Test(xthread, a_close_while_the_waiters_thread_exits_closes_once_and_never_hangs)
{
	for (int round = 0; round < 12; round++) {
		struct exit_during_close e = { 0 };
		struct grt_thread a, closer;
		int sv[2], p[2];

		cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		cr_assert_eq(pipe2(e.go, O_CLOEXEC), 0);
		e.fd = sv[0];
		e.w = (struct waiter){ .fd = sv[0], .rc = 1 };
		grt_thread_start(&a, 1, exiting_waiter_run, &e);
		grt_await_flag(&e.parked, "A's fiber to wait");
		/* Rounds 0-3: A exits first; 4-11: the close first, A exiting
		 * 0 to 700 us later. */
		if (round < 4) {
			cr_assert_eq(write(e.go[1], "g", 1), 1);
			if (round & 1)
				join_within(&a, "A");
		}
		grt_thread_start(&closer, 0, plain_closer_run, &e);
		if (round >= 4) {
			int64_t until = gr_now() + (round - 4) * 100 * 1000;
			while (gr_now() < until)
				;
			cr_assert_eq(write(e.go[1], "g", 1), 1);
		}
		join_within(&closer, "the close");
		cr_assert_eq(e.close_rc, 0, "round %d: gr_close: %s", round, strerror(e.close_err));
		cr_assert(!fd_open(sv[0]), "round %d: the fd is open after its close", round);
		/* A new file on the number, before A is surely gone. */
		cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
		cr_assert_eq(grt_move_fd(p[0], sv[0]), 0);
		if (!(round < 4 && (round & 1)))
			join_within(&a, "A");
		cr_assert(fd_open(sv[0]), "round %d: the new file on the number was closed", round);
		cr_assert_eq(write(p[1], "k", 1), 1);
		char c = 0;
		cr_assert_eq(read(sv[0], &c, 1), 1, "round %d: the number names another file", round);
		close(sv[0]);
		close(p[1]);
		close(sv[1]);
		close(e.go[0]);
		close(e.go[1]);
		grt_assert_no_failures();
	}
}
