/* test_patch_hostile.c — libgreenring-patch.so against careless programs and
 * the unmodified libraries it serves: two fibers on one fd, closes behind a
 * waiter's back, the program's own fcntl games, fds the library never saw
 * created, awkward timeouts, calls from places that must not park (a
 * thread-pool worker, a fork child, a signal handler), kills and deadlines
 * at every patched call, errno across switches.
 *
 * Like test_patch.c, the binary is linked with the library and preloaded
 * with it (ctest sets LD_PRELOAD): every read(), poll(), sleep() below is the
 * patched one. A scenario whose failure would block the whole thread (a
 * real blocking call no fiber can end) runs under a watchdog thread, which
 * unblocks it after a while and makes the test fail with a clear message
 * instead of hanging. Runs once per hub. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(patch_hostile);

#define MS GR_MSEC

static bool kernel_nonblocking(int fd)
{
	/* The raw system call: fcntl() shows the program's view. */
	long fl = syscall(SYS_fcntl, fd, F_GETFL);

	cr_assert_geq(fl, 0);
	return fl & O_NONBLOCK;
}

static bool fd_open(int fd)
{
	return syscall(SYS_fcntl, fd, F_GETFD) >= 0;
}

/* ------------------------------------------------------------ watchdog */

/* A plain thread (no hub) that, unless stopped within `after`, calls
 * rescue(arg) — which must unblock whatever real call holds the test's
 * thread — and records that it had to. */
struct watchdog {
	pthread_t t;
	int64_t after;
	void (*rescue)(void *arg);
	void *arg;
	atomic_bool stop;
	atomic_bool fired;
};

static void *watchdog_run(void *arg)
{
	struct watchdog *w = arg;
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		if (atomic_load(&w->stop))
			return NULL;
		clock_gettime(CLOCK_MONOTONIC, &now);
		int64_t el = (now.tv_sec - start.tv_sec) * GR_SEC + (now.tv_nsec - start.tv_nsec);
		if (el >= w->after)
			break;
		usleep(5000); /* no hub here: the real usleep */
	}
	atomic_store(&w->fired, true);
	w->rescue(w->arg);
	return NULL;
}

static void watchdog_start(struct watchdog *w, int64_t after, void (*rescue)(void *), void *arg)
{
	w->after = after;
	w->rescue = rescue;
	w->arg = arg;
	atomic_init(&w->stop, false);
	atomic_init(&w->fired, false);
	cr_assert_eq(pthread_create(&w->t, NULL, watchdog_run, w), 0);
}

/* Whether it had to rescue the thread. */
static bool watchdog_stop(struct watchdog *w)
{
	atomic_store(&w->stop, true);
	cr_assert_eq(pthread_join(w->t, NULL), 0);
	return atomic_load(&w->fired);
}

static void rescue_eventfd(void *arg)
{
	uint64_t one = 1;

	(void)!write(*(int *)arg, &one, sizeof(one));
}

/* ------------------------------------------------------------ helpers */

struct rd {
	int fd;
	ssize_t n;
	int err;
	char buf[64];
	size_t want;
};

static void *read_into(void *arg)
{
	struct rd *r = arg;

	r->n = read(r->fd, r->buf, r->want ? r->want : sizeof(r->buf));
	r->err = errno;
	return NULL;
}

static void *recv_into(void *arg)
{
	struct rd *r = arg;

	r->n = recv(r->fd, r->buf, r->want ? r->want : sizeof(r->buf), 0);
	r->err = errno;
	return NULL;
}

static void *accept_into(void *arg)
{
	struct rd *r = arg;

	r->n = accept(r->fd, NULL, NULL);
	r->err = errno;
	return NULL;
}

/* ------------------------------------------------------------ two fibers, one fd */

Test(patch_hostile, two_readers_on_one_socket_each_get_their_own_bytes)
{
	int s[2];
	struct rd a = { .want = 1 }, b = { .want = 1 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	a.fd = b.fd = s[0];
	gr_fiber *fa = gr_spawn(recv_into, &a);
	gr_fiber *fb = gr_spawn(read_into, &b);
	gr_sleep(10 * MS);
	cr_assert_eq(write(s[1], "x", 1), 1);
	gr_sleep(10 * MS);
	cr_assert_eq(write(s[1], "y", 1), 1);
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert_eq(a.n, 1, "a: %zd %s", a.n, strerror(a.err));
	cr_assert_eq(b.n, 1, "b: %zd %s", b.n, strerror(b.err));
	cr_assert(a.buf[0] != b.buf[0], "both got '%c'", a.buf[0]);
	close(s[0]);
	close(s[1]);
}

struct closer {
	int fd;
	int r;
	int err;
	int reused;          /* the second closer's new fd, if it got one */
};

static void *close_it(void *arg)
{
	struct closer *c = arg;

	c->r = close(c->fd);
	c->err = errno;
	return NULL;
}

/* The second closer closes the same number, then makes a new fd, which
 * gets the lowest free number: the one just closed, if it is free. */
static void *close_it_and_reuse(void *arg)
{
	struct closer *c = arg;
	int s[2];

	c->r = close(c->fd);
	c->err = errno;
	c->reused = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0) {
		if (s[0] == c->fd) {
			c->reused = s[0];
			close(s[1]);
		} else if (s[1] == c->fd) {
			c->reused = s[1];
			close(s[0]);
		} else {
			close(s[0]);
			close(s[1]);
		}
	}
	return NULL;
}

Test(patch_hostile, two_closers_and_a_reader_never_close_a_reused_number)
{
	int s[2];
	struct rd r = { 0 };
	struct closer c1 = { 0 }, c2 = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	r.fd = c1.fd = c2.fd = s[0];
	gr_fiber *fr = gr_spawn(read_into, &r);
	gr_sleep(10 * MS);
	/* c1 closes (gr_close: wakes the reader, may wait for the backend to
	 * let go); c2, a careless second close of the same number, runs while
	 * c1 is still inside, then creates an fd. */
	gr_fiber *f1 = gr_spawn(close_it, &c1);
	gr_fiber *f2 = gr_spawn(close_it_and_reuse, &c2);
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	assert_ok(gr_join(f1, NULL, GR_FOREVER));
	assert_ok(gr_join(f2, NULL, GR_FOREVER));
	cr_assert_eq(r.n, -1);
	cr_assert_eq(r.err, EBADF, "reader: %s", strerror(r.err));
	cr_assert_eq(c1.r, 0, "first close: %s", strerror(c1.err));
	bool reused_alive = c2.reused < 0 || fd_open(c2.reused);
	if (c2.reused >= 0 && reused_alive)
		close(c2.reused);
	cr_assert(reused_alive,
		  "the number %d, closed twice and reused by a new socket in between, was closed "
		  "under the new socket (second close returned %d %s)",
		  c2.reused, c2.r, c2.r ? strerror(c2.err) : "");
	close(s[1]);
}

Test(patch_hostile, close_wakes_every_fiber_in_a_patched_call_on_the_fd)
{
	int port, s[2];
	int l = grt_listener(&port);
	struct rd a1 = { .fd = l }, a2 = { .fd = l }, rr = { 0 }, rv = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	rr.fd = rv.fd = s[0];
	gr_fiber *f[4] = { gr_spawn(accept_into, &a1), gr_spawn(accept_into, &a2),
			   gr_spawn(read_into, &rr), gr_spawn(recv_into, &rv) };
	gr_sleep(10 * MS);
	int64_t t0 = gr_now();
	cr_assert_eq(close(l), 0);
	cr_assert_eq(close(s[0]), 0);
	for (int i = 0; i < 4; i++)
		assert_ok(gr_join(f[i], NULL, gr_now() + 2 * GR_SEC));
	cr_assert_lt(gr_now() - t0, GR_SEC);
	struct rd *all[4] = { &a1, &a2, &rr, &rv };
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(all[i]->n, -1, "%d: %zd", i, all[i]->n);
		cr_assert_eq(all[i]->err, EBADF, "%d: %s", i, strerror(all[i]->err));
	}
	close(s[1]);
}

/* ------------------------------------------------------------ poll, select */

struct poller {
	struct pollfd pfd[3];
	nfds_t n;
	int timeout;
	int r;
	int err;
};

static void *poll_it(void *arg)
{
	struct poller *p = arg;

	p->r = poll(p->pfd, p->n, p->timeout);
	p->err = errno;
	return NULL;
}

Test(patch_hostile, a_poll_whose_fds_are_closed_behind_its_back_ends_as_poll_would)
{
	int a[2], b[2];

	cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(b, O_CLOEXEC), 0);

	/* One fd: the wait is on the fd itself. */
	struct poller one = { .pfd = { { .fd = a[0], .events = POLLIN } }, .n = 1, .timeout = 3000 };
	gr_fiber *f = gr_spawn(poll_it, &one);
	gr_sleep(10 * MS);
	cr_assert_eq(close(a[0]), 0);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	/* poll(2) never fails with EBADF: a closed fd is POLLNVAL. */
	cr_assert(one.r == 1 && one.pfd[0].revents == POLLNVAL,
		  "poll of an fd closed while it waited: %d (%s), revents %#x", one.r,
		  one.r < 0 ? strerror(one.err) : "", (unsigned)one.pfd[0].revents);
	close(a[1]);
	close(b[0]);
	close(b[1]);
}

/* ------------------------------------------------------------ non-blocking games */

Test(patch_hostile, fcntl_games_between_calls_keep_the_programs_view)
{
	int s[2];
	char c;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	int fl = fcntl(s[0], F_GETFL);
	cr_assert_eq(fl & O_NONBLOCK, 0);
	/* Non-blocking, then another flag set the usual way (GETFL | x). */
	cr_assert_eq(fcntl(s[0], F_SETFL, fl | O_NONBLOCK), 0);
	cr_assert_eq(fcntl(s[0], F_SETFL, fcntl(s[0], F_GETFL) | O_ASYNC), 0);
	cr_assert_eq(fcntl(s[0], F_SETFL, fcntl(s[0], F_GETFL) & ~O_ASYNC), 0);
	cr_assert_eq(read(s[0], &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);
	/* A dup2 of the non-blocking fd over a number, a dup3 with O_CLOEXEC. */
	int hi = dup2(s[0], 900);
	cr_assert_eq(hi, 900);
	cr_assert_eq(recv(hi, &c, 1, 0), -1);
	cr_assert_eq(errno, EAGAIN);
	int hi3 = dup3(s[0], 901, O_CLOEXEC);
	cr_assert_eq(hi3, 901);
	cr_assert(fcntl(hi3, F_GETFL) & O_NONBLOCK);
	/* Blocking again through the dup: the kernel's flag (one per open
	 * file description) is cleared. The library's view is kept per fd
	 * number (docs/patching.md, a known limit): s[0] keeps its own. */
	cr_assert_eq(fcntl(hi, F_SETFL, fl), 0);
	cr_assert(!kernel_nonblocking(s[0]));
	cr_assert_eq(fcntl(hi, F_GETFL) & O_NONBLOCK, 0);
	struct rd r = { .fd = hi, .want = 1 };
	gr_fiber *f = gr_spawn(read_into, &r);
	gr_sleep(10 * MS);
	cr_assert_eq(write(s[1], "z", 1), 1);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(r.n, 1, "read: %zd %s", r.n, strerror(r.err));
	close(hi);
	close(hi3);
	close(s[0]);
	close(s[1]);
}

/* An fd the library never saw created (eventfd), on which greenring's own
 * call set O_NONBLOCK (an eventfd's write refuses RWF_NOWAIT, so the
 * readiness hubs set the flag): the program's view is still blocking. */
Test(patch_hostile, greenrings_flag_on_an_fd_the_library_never_saw_is_not_the_programs)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	uint64_t one = 1, got = 0;

	cr_assert_geq(efd, 0);
	cr_assert_eq(gr_write(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
	cr_assert_eq(gr_read(efd, &got, sizeof(got)), (ssize_t)sizeof(got));
	cr_assert_eq(fcntl(efd, F_GETFL) & O_NONBLOCK, 0,
		     "fcntl(F_GETFL) shows greenring's O_NONBLOCK as the program's");
	struct rd r = { .fd = efd, .want = sizeof(uint64_t) };
	gr_fiber *f = gr_spawn(read_into, &r);
	gr_sleep(20 * MS);
	cr_assert_eq(write(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(r.n, (ssize_t)sizeof(uint64_t),
		     "a blocking read of an eventfd got %zd (%s): greenring's O_NONBLOCK was "
		     "learned as the program's",
		     r.n, strerror(r.err));
	close(efd);
}

/* Two fibers blocked in read() on an fd whose reads are made green by
 * "wait for readiness, then the plain call": one event wakes both. The
 * loser must go back to waiting, not block the thread in a real read that
 * only a fiber of this thread could end. */
static void two_readers_one_event(int rfd, int wfd, size_t sz, const char *what)
{
	struct rd a = { .fd = rfd, .want = sz }, b = { .fd = rfd, .want = sz };
	struct watchdog w;
	int wfd_copy = wfd;
	uint64_t one = 1;

	gr_fiber *fa = gr_spawn(read_into, &a);
	gr_fiber *fb = gr_spawn(read_into, &b);
	gr_sleep(10 * MS);
	watchdog_start(&w, 2 * GR_SEC, rescue_eventfd, &wfd_copy);
	cr_assert_eq(write(wfd, &one, sz), (ssize_t)sz);
	gr_sleep(50 * MS); /* the loser must park again, and let this run */
	bool fired = watchdog_stop(&w);
	if (!fired)
		cr_assert_eq(write(wfd, &one, sz), (ssize_t)sz);
	assert_ok(gr_join(fa, NULL, GR_FOREVER));
	assert_ok(gr_join(fb, NULL, GR_FOREVER));
	cr_assert(!fired, "%s: the second reader blocked the thread in a real read()", what);
	cr_assert_eq(a.n, (ssize_t)sz);
	cr_assert_eq(b.n, (ssize_t)sz);
}

Test(patch_hostile, two_readers_of_an_eventfd_never_block_the_thread)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	uint64_t one = 1;

	cr_assert_geq(efd, 0);
	/* A write first: an eventfd's write refuses RWF_NOWAIT, which may
	 * change how the library treats every call on the fd. */
	cr_assert_eq(write(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
	cr_assert_eq(read(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
	two_readers_one_event(efd, efd, sizeof(uint64_t), "eventfd");
	close(efd);
}

Test(patch_hostile, two_readers_of_a_fifo_never_block_the_thread)
{
	char path[64];

	snprintf(path, sizeof(path), "/tmp/grt-fifo-%d", (int)getpid());
	unlink(path);
	cr_assert_eq(mkfifo(path, 0600), 0);
	int fd = open(path, O_RDWR | O_CLOEXEC); /* unseen by the library */
	unlink(path);
	cr_assert_geq(fd, 0);
	two_readers_one_event(fd, fd, 1, "FIFO");
	close(fd);
}

struct big_write {
	int fd;
	size_t len;
	ssize_t n;
	int err;
};

static void *write_it_all(void *arg)
{
	struct big_write *w = arg;
	char *buf = malloc(w->len);

	memset(buf, 'w', w->len);
	w->n = write(w->fd, buf, w->len);
	w->err = errno;
	free(buf);
	return NULL;
}

static void rescue_drain(void *arg)
{
	int fd = *(int *)arg;
	char buf[65536];
	struct pollfd p = { .fd = fd, .events = POLLIN };

	/* Drain until the writer is through: no fiber can read meanwhile. */
	while (poll(&p, 1, 200) == 1 && read(fd, buf, sizeof(buf)) > 0)
		;
}

Test(patch_hostile, a_large_write_to_a_fifo_read_by_a_fiber_of_the_same_thread)
{
	char path[64];
	char buf[65536];

	snprintf(path, sizeof(path), "/tmp/grt-fifo-w-%d", (int)getpid());
	unlink(path);
	cr_assert_eq(mkfifo(path, 0600), 0);
	int rfd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	cr_assert_geq(rfd, 0);
	int wfd = open(path, O_WRONLY | O_CLOEXEC);
	unlink(path);
	cr_assert_geq(wfd, 0);
	/* The program's reader is blocking (it opened it non-blocking only
	 * so that the open would not wait for a writer). */
	cr_assert_eq(fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) & ~O_NONBLOCK), 0);

	struct big_write w = { .fd = wfd, .len = 1 << 20 };
	struct watchdog dog;
	int rfd_copy = rfd;
	watchdog_start(&dog, 3 * GR_SEC, rescue_drain, &rfd_copy);
	gr_fiber *f = gr_spawn(write_it_all, &w);
	size_t got = 0;
	/* If the watchdog had to drain the FIFO, this read would wait for
	 * bytes that never come: the deadline ends it. */
	int64_t old = gr_deadline_set(gr_now() + 5 * GR_SEC);
	while (got < w.len) {
		ssize_t n = read(rfd, buf, sizeof(buf));
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	gr_deadline_set(old);
	bool fired = watchdog_stop(&dog);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert(!fired, "a blocking write() of 1 MiB to a FIFO blocked the thread (read %zu)", got);
	cr_assert_eq(w.n, (ssize_t)w.len, "write: %zd (%s)", w.n, strerror(w.err));
	cr_assert_eq(got, w.len);
	close(rfd);
	close(wfd);
}

/* ------------------------------------------------------------ awkward waits */

static void *write_one_later(void *arg)
{
	int fd = *(int *)arg;

	gr_sleep(400 * MS);
	if (write(fd, "!", 1) != 1)
		grt_fail("write: %s", strerror(errno));
	return NULL;
}

Test(patch_hostile, select_with_a_huge_timeout_waits_as_long_as_it_must)
{
	int p[2];
	fd_set rs;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	/* tv_sec * 10^9 wraps to about 0.29 s in 64 bits: a select that
	 * computed it so would return 0 long before the write. */
	struct timeval tv = { .tv_sec = 18446744074LL, .tv_usec = 0 };
	gr_fiber *w = gr_spawn(write_one_later, &p[1]);
	FD_ZERO(&rs);
	FD_SET(p[0], &rs);
	int r = select(p[0] + 1, &rs, NULL, NULL, &tv);
	assert_ok(gr_join(w, NULL, GR_FOREVER));
	cr_assert_eq(r, 1, "select with a timeout of 584 years returned %d (%s) before the fd was ready",
		     r, r < 0 ? strerror(errno) : "timed out");
	cr_assert(FD_ISSET(p[0], &rs));
	grt_assert_no_failures();

	/* pselect and ppoll with the largest timespec: the same. */
	char c;
	cr_assert_eq(read(p[0], &c, 1), 1);
	struct timespec big = { .tv_sec = LONG_MAX, .tv_nsec = 999999999 };
	w = gr_spawn(write_one_later, &p[1]);
	FD_ZERO(&rs);
	FD_SET(p[0], &rs);
	cr_assert_eq(pselect(p[0] + 1, &rs, NULL, NULL, &big, NULL), 1);
	assert_ok(gr_join(w, NULL, GR_FOREVER));
	cr_assert_eq(read(p[0], &c, 1), 1);
	w = gr_spawn(write_one_later, &p[1]);
	struct pollfd pf = { .fd = p[0], .events = POLLIN };
	cr_assert_eq(ppoll(&pf, 1, &big, NULL), 1);
	assert_ok(gr_join(w, NULL, GR_FOREVER));
	grt_assert_no_failures();
	close(p[0]);
	close(p[1]);
}

Test(patch_hostile, poll_and_select_at_the_edges)
{
	int p[2];

	grt_enough_fds(5100);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	/* An fd beyond FD_SETSIZE in poll, and FD_SETSIZE - 1 in select. */
	int hi = dup3(p[0], 5000, O_CLOEXEC);
	int top = dup3(p[0], FD_SETSIZE - 1, O_CLOEXEC);
	cr_assert_eq(hi, 5000);
	cr_assert_eq(top, FD_SETSIZE - 1);
	gr_fiber *w = gr_spawn(write_one_later, &p[1]);
	struct pollfd pf[3] = { { .fd = -1, .events = POLLIN },
				{ .fd = hi, .events = POLLIN },
				{ .fd = -7, .events = POLLOUT } };
	int64_t t0 = gr_now();
	cr_assert_eq(poll(pf, 3, -1), 1);
	cr_assert_geq(gr_now() - t0, 300 * MS);
	cr_assert_eq(pf[1].revents, POLLIN);
	cr_assert_eq(pf[0].revents | pf[2].revents, 0);
	assert_ok(gr_join(w, NULL, GR_FOREVER));
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(top, &rs);
	struct timeval tv = { 1, 0 };
	cr_assert_eq(select(FD_SETSIZE, &rs, NULL, NULL, &tv), 1);
	cr_assert(FD_ISSET(top, &rs));
	char c;
	cr_assert_eq(read(p[0], &c, 1), 1);

	/* Only negative fds: a sleep; nfds 0 with a NULL array: the same. */
	struct pollfd none[2] = { { .fd = -1 }, { .fd = -2 } };
	t0 = gr_now();
	cr_assert_eq(poll(none, 2, 30), 0);
	cr_assert_geq(gr_now() - t0, 30 * MS);
	cr_assert_eq(poll(NULL, 0, 0), 0);
	/* A closed number among open ones: POLLNVAL at once, timeout or not. */
	struct pollfd mixed[2] = { { .fd = p[0], .events = POLLIN }, { .fd = 4999, .events = POLLIN } };
	t0 = gr_now();
	cr_assert_eq(poll(mixed, 2, 5000), 1);
	cr_assert_eq(mixed[1].revents, POLLNVAL);
	cr_assert_lt(gr_now() - t0, GR_SEC);
	/* select of a closed fd: EBADF, as select(2). */
	FD_ZERO(&rs);
	FD_SET(4000 % FD_SETSIZE, &rs);
	FD_SET(p[0], &rs);
	tv = (struct timeval){ 5, 0 };
	cr_assert(!fd_open(4000 % FD_SETSIZE));
	cr_assert_eq(select(FD_SETSIZE, &rs, NULL, NULL, &tv), -1);
	cr_assert_eq(errno, EBADF);
	/* Bad timeouts are the kernel's to refuse. */
	struct timespec bad = { 0, -1 };
	cr_assert_eq(ppoll(pf, 1, &bad, NULL), -1);
	cr_assert_eq(errno, EINVAL);
	tv = (struct timeval){ -1, 0 };
	FD_ZERO(&rs);
	FD_SET(p[0], &rs);
	cr_assert_eq(select(p[0] + 1, &rs, NULL, NULL, &tv), -1);
	cr_assert_eq(errno, EINVAL);
	/* A signal mask: the real call (it blocks the thread, briefly). */
	sigset_t mask;
	sigemptyset(&mask);
	struct timespec ms20 = { 0, 20 * 1000 * 1000 };
	pf[1].revents = 0;
	cr_assert_eq(ppoll(&pf[1], 1, &ms20, &mask), 0);
	close(hi);
	close(top);
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------------------ sleeps */

struct sleeper {
	int which;
	int r;
	int err;
	struct timespec rem;
	unsigned left;
};

static void *sleep_long(void *arg)
{
	struct sleeper *s = arg;
	struct timespec req = { .tv_sec = LONG_MAX / 2, .tv_nsec = 0 };

	s->rem = (struct timespec){ -1, -1 };
	errno = 0;
	switch (s->which) {
	case 0:
		s->r = nanosleep(&req, &s->rem);
		break;
	case 1:
		s->r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &s->rem);
		break;
	case 2:
		s->left = sleep(UINT_MAX);
		s->r = s->left ? -1 : 0;
		break;
	case 3:
		s->r = usleep(999999);
		break;
	}
	s->err = errno;
	return NULL;
}

Test(patch_hostile, sleeps_killed_or_timed_out_report_what_is_left)
{
	for (int which = 0; which < 4; which++) {
		struct sleeper s = { .which = which };
		gr_fiber *f = gr_spawn(sleep_long, &s);

		gr_sleep(5 * MS);
		assert_ok(gr_kill(f));
		int64_t t0 = gr_now();
		assert_ok(gr_join(f, NULL, gr_now() + 2 * GR_SEC));
		cr_assert_lt(gr_now() - t0, GR_SEC);
		if (which == 1) {
			/* clock_nanosleep returns the error, errno untouched. */
			cr_assert_eq(s.r, ECANCELED, "clock_nanosleep: %d", s.r);
		} else {
			cr_assert_eq(s.r, -1, "sleep %d returned %d", which, s.r);
			cr_assert_eq(s.err, ECANCELED, "sleep %d: %s", which, strerror(s.err));
		}
		if (which <= 1)
			cr_assert_gt(s.rem.tv_sec, LONG_MAX / 4, "rem: %lld", (long long)s.rem.tv_sec);
		if (which == 2)
			cr_assert_gt(s.left, UINT_MAX - 10);
	}

	/* Invalid requests: EINVAL, as the real ones. */
	struct timespec neg = { -1, 0 }, nsec = { 0, 1000000000L };
	cr_assert_eq(nanosleep(&neg, NULL), -1);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(nanosleep(&nsec, NULL), -1);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(clock_nanosleep(CLOCK_MONOTONIC, 0, &neg, NULL), EINVAL);
	/* An absolute time already past, on every clock: at once. */
	clockid_t clocks[] = { CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_TAI };
	for (size_t i = 0; i < sizeof(clocks) / sizeof(clocks[0]); i++) {
		struct timespec now;
		cr_assert_eq(clock_gettime(clocks[i], &now), 0);
		now.tv_sec -= 5;
		int64_t t0 = gr_now();
		int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
		int r = clock_nanosleep(clocks[i], TIMER_ABSTIME, &now, NULL);
		gr_deadline_set(old);
		cr_assert_eq(r, 0, "clock %d: %s", (int)clocks[i], strerror(r));
		cr_assert_lt(gr_now() - t0, 100 * MS);
	}
	/* A deadline: ETIMEDOUT, never EINTR. */
	int64_t old = gr_deadline_set(gr_now() + 20 * MS);
	struct timespec sec = { 1, 0 }, rem = { 0, 0 };
	cr_assert_eq(nanosleep(&sec, &rem), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	gr_deadline_set(old);
	cr_assert(rem.tv_sec == 0 && rem.tv_nsec > 500 * 1000 * 1000, "rem %ld.%09ld",
		  (long)rem.tv_sec, rem.tv_nsec);
}

/* ------------------------------------------------------------ kills at every call */

enum call { C_WRITE, C_SEND, C_ACCEPT, C_CONNECT, C_EPOLL, C_SELECT, C_POLL2, C_RECVFROM, C_NCALLS };

struct victim {
	enum call call;
	int fd;
	int fd2;
	const struct sockaddr *sa;
	socklen_t salen;
	ssize_t r;
	int err;
	size_t len;
};

static void *be_a_victim(void *arg)
{
	struct victim *v = arg;
	char *big = NULL;

	errno = 0;
	switch (v->call) {
	case C_WRITE:
	case C_SEND:
		big = calloc(1, v->len);
		v->r = v->call == C_WRITE ? write(v->fd, big, v->len) : send(v->fd, big, v->len, 0);
		break;
	case C_ACCEPT:
		v->r = accept(v->fd, NULL, NULL);
		break;
	case C_CONNECT:
		v->r = connect(v->fd, v->sa, v->salen);
		break;
	case C_EPOLL: {
		struct epoll_event ev;
		v->r = epoll_wait(v->fd, &ev, 1, -1);
		break;
	}
	case C_SELECT: {
		fd_set rs;
		FD_ZERO(&rs);
		FD_SET(v->fd, &rs);
		FD_SET(v->fd2, &rs);
		v->r = select((v->fd > v->fd2 ? v->fd : v->fd2) + 1, &rs, NULL, NULL, NULL);
		break;
	}
	case C_POLL2: {
		struct pollfd pf[2] = { { .fd = v->fd, .events = POLLIN }, { .fd = v->fd2, .events = POLLIN } };
		v->r = poll(pf, 2, -1);
		break;
	}
	case C_RECVFROM: {
		char buf[16];
		struct sockaddr_storage from;
		socklen_t fl = sizeof(from);
		v->r = recvfrom(v->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
		break;
	}
	default:
		break;
	}
	v->err = errno;
	free(big);
	return NULL;
}

/* Everything a victim needs, made afresh, and closed with close_world. */
struct world {
	int s[2];        /* a stream socketpair (write, send: its buffer fills) */
	int u[2];        /* a datagram pair (recvfrom) */
	int ul;          /* a unix listener with a full backlog (connect), or accept */
	int uc[2];       /* connecting sockets that fill that backlog */
	struct sockaddr_un addr;
	int ep;
};

static void make_world(struct world *w)
{
	memset(w, 0, sizeof(*w));
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, w->s), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, w->u), 0);
	w->ul = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(w->ul, 0);
	w->addr.sun_family = AF_UNIX;
	/* Abstract: nothing left in the file system. */
	snprintf(w->addr.sun_path + 1, sizeof(w->addr.sun_path) - 1, "grt-hostile-%d-%lld",
		 (int)getpid(), (long long)gr_now());
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
				    strlen(w->addr.sun_path + 1));
	cr_assert_eq(bind(w->ul, (struct sockaddr *)&w->addr, len), 0);
	cr_assert_eq(listen(w->ul, 0), 0);
	/* Backlog 0 takes one connection; the next connect waits. */
	for (int i = 0; i < 2; i++) {
		w->uc[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		cr_assert_geq(w->uc[i], 0);
		(void)connect(w->uc[i], (struct sockaddr *)&w->addr, len);
	}
	w->ep = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(w->ep, 0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = w->s[1] };
	cr_assert_eq(epoll_ctl(w->ep, EPOLL_CTL_ADD, w->s[1], &ev), 0);
}

static socklen_t world_addrlen(const struct world *w)
{
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(w->addr.sun_path + 1));
}

static void close_world(struct world *w)
{
	int fds[] = { w->s[0], w->s[1], w->u[0], w->u[1], w->ul, w->uc[0], w->uc[1], w->ep };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		close(fds[i]);
}

static void aim(struct victim *v, enum call c, struct world *w, int *extra)
{
	*v = (struct victim){ .call = c, .len = 8 << 20 };
	*extra = -1;
	switch (c) {
	case C_WRITE:
	case C_SEND:
		v->fd = w->s[0];
		break;
	case C_ACCEPT: {
		/* A listener with nothing pending. */
		int port;
		*extra = grt_listener(&port);
		v->fd = *extra;
		break;
	}
	case C_CONNECT:
		*extra = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		v->fd = *extra;
		v->sa = (const struct sockaddr *)&w->addr;
		v->salen = world_addrlen(w);
		break;
	case C_EPOLL:
		v->fd = w->ep;
		break;
	case C_SELECT:
	case C_POLL2:
		v->fd = w->s[1];
		v->fd2 = w->u[1];
		break;
	case C_RECVFROM:
		v->fd = w->u[1];
		break;
	default:
		break;
	}
}

static const char *call_name(enum call c)
{
	static const char *names[] = { "write", "send", "accept", "connect", "epoll_wait",
				       "select", "poll", "recvfrom" };
	return names[c];
}

Test(patch_hostile, a_kill_or_a_deadline_ends_every_patched_call_and_moved_bytes_are_returned,
     .timeout = 60)
{
	for (enum call c = 0; c < C_NCALLS; c++) {
		for (int how = 0; how < 2; how++) {
			struct world w;
			struct victim v;
			int extra;

			make_world(&w);
			aim(&v, c, &w, &extra);
			gr_fiber *f;
			if (how == 0) {
				f = gr_spawn(be_a_victim, &v);
				gr_sleep(20 * MS);
				assert_ok(gr_kill(f));
			} else {
				struct gr_spawn_opts o = { .deadline = gr_now() + 30 * MS };
				f = gr_spawn_with(&o, be_a_victim, &v);
			}
			cr_assert_not_null(f);
			int jr = gr_join(f, NULL, gr_now() + 3 * GR_SEC);
			if (jr != 0) {
				(void)gr_kill(f);
				(void)gr_join(f, NULL, GR_FOREVER);
			}
			cr_assert_eq(jr, 0, "%s: the %s did not end it", call_name(c),
				     how ? "deadline" : "kill");
			int want = how ? ETIMEDOUT : ECANCELED;
			if (c == C_WRITE || c == C_SEND) {
				/* The socket buffer took part of it: those bytes
				 * are the caller's answer. */
				cr_assert(v.r > 0 && (size_t)v.r < v.len, "%s: %zd (%s)", call_name(c),
					  v.r, strerror(v.err));
			} else {
				cr_assert_eq(v.r, -1, "%s: %zd", call_name(c), v.r);
				cr_assert_eq(v.err, want, "%s by %s: %s", call_name(c),
					     how ? "deadline" : "kill", strerror(v.err));
			}
			if (extra >= 0)
				close(extra);
			close_world(&w);
		}
	}
}

/* ------------------------------------------------------------ where a fiber cannot park */

struct worker_job {
	int fd;
	ssize_t n;
	int can_park;
	int stats;
	int slept;
};

static void *on_a_worker(void *arg)
{
	struct worker_job *j = arg;
	char c;
	struct gr_hub_stats st;

	j->can_park = gr_can_park();
	j->slept = usleep(1000);
	j->n = read(j->fd, &c, 1);                    /* data is there: the real read */
	j->stats = gr_hub_stats(&st);                 /* still no hub on the worker */
	return NULL;
}

Test(patch_hostile, patched_calls_on_a_thread_pool_worker_are_the_real_ones)
{
	int p[2];
	struct worker_job j = { 0 };

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(write(p[1], "w", 1), 1);
	j.fd = p[0];
	assert_ok(gr_tpool_run(on_a_worker, &j, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(j.can_park, 0);
	cr_assert_eq(j.slept, 0);
	cr_assert_eq(j.n, 1);
	cr_assert_eq(j.stats, -ESRCH, "a patched call made a hub on a pool worker");
	close(p[0]);
	close(p[1]);
}

static void *fork_from_a_fiber(void *arg)
{
	int *status = arg;
	int p[2], back[2];

	if (pipe2(p, O_CLOEXEC) < 0 || pipe2(back, O_CLOEXEC) < 0) {
		grt_fail("pipe: %s", strerror(errno));
		return NULL;
	}
	pid_t pid = fork();
	if (pid == 0) {
		/* The child: no hub, every patched call is the real one, and
		 * the library's records (inherited) must not mislead them. */
		char c;
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		int ok = gr_can_park() == 0 && usleep(1000) == 0 && poll(&pf, 1, 2000) == 1 &&
			 read(p[0], &c, 1) == 1 && c == 'p' && close(p[0]) == 0 &&
			 write(back[1], "k", 1) == 1;
		_exit(ok ? 0 : 1);
	}
	if (pid < 0) {
		grt_fail("fork: %s", strerror(errno));
		return NULL;
	}
	char c = 0;
	close(p[0]);
	close(back[1]);
	if (write(p[1], "p", 1) != 1 || read(back[0], &c, 1) != 1 || c != 'k')
		grt_fail("the child did not answer");
	close(p[1]);
	close(back[0]);
	if (waitpid(pid, status, 0) != pid)
		grt_fail("waitpid: %s", strerror(errno));
	return NULL;
}

Test(patch_hostile, patched_calls_in_a_fork_child_of_a_fiber)
{
	int status = -1;
	gr_fiber *f = gr_spawn(fork_from_a_fiber, &status);

	assert_ok(gr_join(f, NULL, gr_now() + 10 * GR_SEC));
	grt_assert_no_failures();
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}

/* A handler that writes into a pipe while the fiber it interrupted is in
 * the middle of a patched write: no deadlock, no byte lost or doubled. */
static int handler_pipe = -1;
static atomic_int handler_runs;

static void write_from_handler(int sig)
{
	int saved = errno;

	(void)sig;
	if (write(handler_pipe, "h", 1) == 1)
		atomic_fetch_add(&handler_runs, 1);
	errno = saved;
}

struct storm {
	pthread_t target;
	atomic_bool stop;
	int sent;
};

static void *signal_storm(void *arg)
{
	struct storm *s = arg;

	while (!atomic_load(&s->stop)) {
		pthread_kill(s->target, SIGUSR2);
		s->sent++;
		usleep(200); /* a plain thread: the real usleep */
	}
	return NULL;
}

struct drain {
	int fd;
	size_t want;
	size_t got;
	bool pattern_ok;
};

static void *drain_all(void *arg)
{
	struct drain *d = arg;
	char buf[8192];

	d->pattern_ok = true;
	while (d->got < d->want) {
		ssize_t n = read(d->fd, buf, sizeof(buf));
		if (n <= 0) {
			grt_fail("drain: %zd %s", n, strerror(errno));
			break;
		}
		for (ssize_t i = 0; i < n; i++)
			if ((unsigned char)buf[i] != grt_pattern(7, d->got + (size_t)i))
				d->pattern_ok = false;
		d->got += (size_t)n;
	}
	return NULL;
}

Test(patch_hostile, a_signal_handler_writes_while_a_fiber_is_inside_a_patched_write)
{
	int s[2], hp[2];
	struct sigaction sa = { .sa_handler = write_from_handler, .sa_flags = SA_RESTART }, old;
	size_t len = 8 << 20;
	char *buf = malloc(len);

	for (size_t i = 0; i < len; i++)
		buf[i] = (char)grt_pattern(7, i);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	/* The program's own non-blocking pipe: a full pipe drops marks, never
	 * blocks the handler. */
	cr_assert_eq(pipe2(hp, O_CLOEXEC | O_NONBLOCK), 0);
	handler_pipe = hp[1];
	atomic_store(&handler_runs, 0);
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGUSR2, &sa, &old), 0);

	struct drain d = { .fd = s[1], .want = len };
	gr_fiber *df = gr_spawn(drain_all, &d);
	struct storm st = { .target = pthread_self() };
	atomic_init(&st.stop, false);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, signal_storm, &st), 0);
	ssize_t n = write(s[0], buf, len);
	int err = errno;
	atomic_store(&st.stop, true);
	pthread_join(t, NULL);
	assert_ok(gr_join(df, NULL, gr_now() + 10 * GR_SEC));
	cr_assert_eq(sigaction(SIGUSR2, &old, NULL), 0);
	cr_assert_eq(n, (ssize_t)len, "write: %zd %s", n, strerror(err));
	cr_assert_eq(d.got, len);
	cr_assert(d.pattern_ok, "bytes corrupted");
	grt_assert_no_failures();
	cr_assert_gt(atomic_load(&handler_runs), 0, "the handler never ran (%d signals)", st.sent);
	close(s[0]);
	close(s[1]);
	close(hp[0]);
	close(hp[1]);
	free(buf);
}

/* ------------------------------------------------------------ getaddrinfo */

struct lookup {
	int kind;
	int r;
	int err;
};

static void *look_up(void *arg)
{
	struct lookup *l = arg;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;

	errno = 0;
	switch (l->kind) {
	case 0:
		l->r = getaddrinfo("localhost", "http", &hints, &res);
		break;
	case 1:
		l->r = getaddrinfo(NULL, NULL, &hints, &res);
		break;
	case 2:
		l->r = getaddrinfo("127.0.0.1", "8080", &hints, &res);
		break;
	case 3:
		l->r = getaddrinfo("localhost", "no-such-service-grt", &hints, &res);
		break;
	case 4:
		l->r = getaddrinfo("", NULL, NULL, &res);
		break;
	}
	l->err = errno;
	if (l->r == 0)
		freeaddrinfo(res);
	return NULL;
}

Test(patch_hostile, getaddrinfo_from_many_fibers_with_bad_inputs_and_kills, .timeout = 60)
{
	enum { N = 60 };
	struct lookup l[N];
	gr_fiber *f[N];

	for (int i = 0; i < N; i++) {
		l[i] = (struct lookup){ .kind = i % 5, .r = 12345 };
		f[i] = gr_spawn(look_up, &l[i]);
		cr_assert_not_null(f[i]);
	}
	gr_sleep(0);
	for (int i = 0; i < N; i += 7) {
		int kr = gr_kill(f[i]);
		cr_assert(kr == 0 || kr == -ESRCH, "gr_kill: %s", strerror(-kr)); /* ESRCH: done already */
	}
	for (int i = 0; i < N; i++)
		assert_ok(gr_join(f[i], NULL, gr_now() + 20 * GR_SEC));
	for (int i = 0; i < N; i++) {
		bool killed = i % 7 == 0;
		int want[] = { 0, EAI_NONAME, 0, EAI_SERVICE, EAI_NONAME };

		if (killed && (l[i].r == 12345 || (l[i].r == EAI_SYSTEM && l[i].err == ECANCELED)))
			continue; /* killed before it ran, or while it waited */
		cr_assert_eq(l[i].r, want[l[i].kind], "%d (kind %d): %d %s", i, l[i].kind, l[i].r,
			     l[i].r == EAI_SYSTEM ? strerror(l[i].err) : gai_strerror(l[i].r));
	}
}

/* ------------------------------------------------------------ errno */

struct errno_check {
	int mine;
	int after_fail;
	int after_ok;
	bool core;       /* switch with gr_sleep instead of a patched usleep */
};

static void pause_a_while(const struct errno_check *e)
{
	if (e->core)
		gr_sleep(5 * MS);
	else
		usleep(5000);
}

static void *keep_my_errno(void *arg)
{
	struct errno_check *e = arg;
	char c;

	/* A failing call, then a successful call that switches (another
	 * fiber sets errno meanwhile): errno is still this fiber's failure,
	 * as a thread's would be. */
	if (read(-1, &c, 1) == -1) {
		pause_a_while(e);
		e->after_fail = errno;
	}
	errno = e->mine;
	pause_a_while(e);
	e->after_ok = errno;
	return NULL;
}

static void *clobber_errno(void *arg)
{
	(void)arg;
	for (int i = 0; i < 20; i++) {
		errno = 77;
		gr_sleep(MS);
		errno = 77;
		usleep(1000);
	}
	return NULL;
}

static void errno_run(bool core)
{
	struct errno_check a = { .mine = 1234, .core = core }, b = { .mine = 4321, .core = core };
	gr_fiber *f[3] = { gr_spawn(keep_my_errno, &a), gr_spawn(clobber_errno, NULL),
			   gr_spawn(keep_my_errno, &b) };

	for (int i = 0; i < 3; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	const char *how = core ? "gr_sleep" : "a patched usleep";
	cr_assert_eq(a.after_fail, EBADF, "a's errno after %s: %d", how, a.after_fail);
	cr_assert_eq(b.after_fail, EBADF, "b's errno after %s: %d", how, b.after_fail);
	cr_assert_eq(a.after_ok, 1234, "a's errno after %s: %d", how, a.after_ok);
	cr_assert_eq(b.after_ok, 4321, "b's errno after %s: %d", how, b.after_ok);
}

Test(patch_hostile, errno_is_each_fibers_own_across_patched_calls)
{
	errno_run(false);
}

/* The same with greenring's own gr_sleep as the switch: a core matter
 * (runtime/fiber.c), not the library's. A fiber that failed a call, then
 * made any call that switched, reads another fiber's errno: the switch does
 * not keep errno per fiber, and gr_sleep's success does not put it back. */
Test(patch_hostile, errno_is_each_fibers_own_across_greenrings_own_calls)
{
	errno_run(true);
}

/* ------------------------------------------------------------ dup2 over a waited fd */

Test(patch_hostile, dup2_over_an_fd_a_fiber_waits_on)
{
	int s[2], p[2];
	struct rd r = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	r.fd = s[0];
	gr_fiber *f = gr_spawn(read_into, &r);
	gr_sleep(10 * MS);
	/* The number now names the pipe. The waiter is on a file the
	 * program replaced: a kill must still end it, promptly. */
	cr_assert_eq(dup2(p[0], s[0]), s[0]);
	gr_sleep(10 * MS);
	assert_ok(gr_kill(f));
	int64_t t0 = gr_now();
	assert_ok(gr_join(f, NULL, gr_now() + 2 * GR_SEC));
	cr_assert_lt(gr_now() - t0, GR_SEC);
	cr_assert_eq(r.n, -1);
	cr_assert(r.err == ECANCELED || r.err == EBADF, "%s", strerror(r.err));
	/* And the number works as the pipe it now is, blocking. */
	struct rd r2 = { .fd = s[0], .want = 1 };
	f = gr_spawn(read_into, &r2);
	gr_sleep(10 * MS);
	cr_assert_eq(write(p[1], "d", 1), 1);
	assert_ok(gr_join(f, NULL, gr_now() + 2 * GR_SEC));
	cr_assert_eq(r2.n, 1, "read of the dup2'd number: %zd %s", r2.n, strerror(r2.err));
	cr_assert_eq(r2.buf[0], 'd');
	close(s[0]);
	close(s[1]);
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------------------ the number, not the file */

struct connecting {
	int fd;
	struct sockaddr_un addr;
	socklen_t len;
	int r;
	int err;
};

static void *connect_it(void *arg)
{
	struct connecting *c = arg;

	c->r = connect(c->fd, (struct sockaddr *)&c->addr, c->len);
	c->err = errno;
	return NULL;
}

/* A connect waiting for room in a unix listener's backlog (the kernel says
 * EAGAIN; the library retries) when another fiber closes its fd and a new
 * socket takes the number: the retry must not connect the new socket. */
Test(patch_hostile, a_connect_whose_fd_is_closed_and_reused_never_touches_the_new_socket)
{
	struct world w;
	struct connecting c;

	make_world(&w);
	c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(c.fd, 0);
	c.addr = w.addr;
	c.len = world_addrlen(&w);
	gr_fiber *f = gr_spawn(connect_it, &c);
	gr_sleep(10 * MS);
	cr_assert_eq(close(c.fd), 0);
	int fresh = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(fresh, c.fd, "the number was not reused (%d, %d): the test proves nothing",
		     fresh, c.fd);
	gr_sleep(20 * MS);
	struct sockaddr_un peer;
	socklen_t pl = sizeof(peer);
	bool connected = getpeername(fresh, (struct sockaddr *)&peer, &pl) == 0;
	/* Room in the backlog, in case the connect still waits for it. */
	int extra = accept4(w.ul, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	int jr = gr_join(f, NULL, gr_now() + 2 * GR_SEC);
	if (jr) {
		(void)gr_kill(f);
		(void)gr_join(f, NULL, GR_FOREVER);
	}
	pl = sizeof(peer);
	connected |= getpeername(fresh, (struct sockaddr *)&peer, &pl) == 0;
	close(fresh);
	if (extra >= 0)
		close(extra);
	close_world(&w);
	cr_assert(!connected, "the connect of a closed fd connected the new socket that took its "
			      "number (connect returned %d)", c.r);
	cr_assert_eq(jr, 0, "the connect did not end after its fd was closed");
	cr_assert_eq(c.r, -1);
	cr_assert_eq(c.err, EBADF, "%s", strerror(c.err));
}

/* SO_RCVTIMEO belongs to the socket, whatever number sets it: set through a
 * dup, it ends a read through the original number too. */
Test(patch_hostile, a_receive_timeout_set_through_a_dup_ends_reads_on_the_original)
{
	int s[2];
	struct timeval tv = { 0, 50 * 1000 };
	char c;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	int d = dup(s[0]);
	cr_assert_geq(d, 0);
	cr_assert_eq(setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
	int64_t t0 = gr_now();
	ssize_t n = read(s[0], &c, 1);
	int err = errno;
	gr_deadline_set(old);
	cr_assert_eq(n, -1);
	cr_assert_eq(err, EAGAIN, "read: %s after %lld ms (SO_RCVTIMEO is 50 ms)", strerror(err),
		     (long long)((gr_now() - t0) / MS));
	close(d);
	close(s[0]);
	close(s[1]);
}

/* A poll of several fds, one of them closed behind its back: poll(2) in a
 * thread would not notice either (it holds the file). It must end as the
 * call ends — another fd ready, or its timeout — and leave nothing open. */
Test(patch_hostile, a_poll_of_several_fds_one_closed_behind_its_back_ends_by_the_others)
{
	int a[2], b[2];

	cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(b, O_CLOEXEC), 0);
	struct poller pl = { .pfd = { { .fd = a[0], .events = POLLIN }, { .fd = b[0], .events = POLLIN } },
			     .n = 2, .timeout = 5000 };
	gr_fiber *f = gr_spawn(poll_it, &pl);
	gr_sleep(10 * MS);
	cr_assert_eq(close(a[0]), 0);
	gr_sleep(10 * MS);
	cr_assert_eq(write(b[1], "b", 1), 1);
	assert_ok(gr_join(f, NULL, gr_now() + 2 * GR_SEC));
	cr_assert_geq(pl.r, 1, "poll: %d %s", pl.r, strerror(pl.err));
	cr_assert_eq(pl.pfd[1].revents, POLLIN);
	close(a[1]);
	close(b[0]);
	close(b[1]);
}

/* ------------------------------------------------------------ bad input */

#define EXPECT_ERR(call, e)                                                                   \
	do {                                                                                  \
		errno = 0;                                                                    \
		long r_ = (long)(call);                                                       \
		int e_ = errno;                                                               \
		cr_assert(r_ == -1 && e_ == (e), "%s = %ld (%s), expected -1 %s", #call, r_,  \
			  strerror(e_), #e);                                                  \
	} while (0)

Test(patch_hostile, bad_input_gets_the_errno_libc_gives)
{
	int s[2], p[2], port;
	char c;
	struct iovec iov = { &c, 1 };
	/* Volatile: the compiler must not see (and refuse) what is wrong. */
	void *volatile null = NULL;
	volatile int negative = -1, too_many = IOV_MAX + 1;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	int l = grt_listener(&port);
	cr_assert_eq(write(s[1], "xx", 2), 2);
	cr_assert_eq(write(p[1], "xx", 2), 2);

	EXPECT_ERR(read(-1, &c, 1), EBADF);
	EXPECT_ERR(read(123456, &c, 1), EBADF);
	EXPECT_ERR(write(-5, "x", 1), EBADF);
	EXPECT_ERR(read(s[0], null, 1), EFAULT);
	EXPECT_ERR(read(p[0], null, 1), EFAULT);
	EXPECT_ERR(readv(s[0], &iov, negative), EINVAL);
	EXPECT_ERR(readv(p[0], &iov, negative), EINVAL);
	EXPECT_ERR(writev(s[0], &iov, too_many), EINVAL);
	EXPECT_ERR(recv(p[0], &c, 1, 0), ENOTSOCK);
	EXPECT_ERR(send(p[1], "x", 1, 0), ENOTSOCK);
	EXPECT_ERR(read(l, &c, 1), ENOTCONN);
	EXPECT_ERR(accept(s[0], NULL, NULL), EINVAL);
	EXPECT_ERR(accept(p[0], NULL, NULL), ENOTSOCK);
	EXPECT_ERR(connect(s[0], NULL, 0), EINVAL);
	EXPECT_ERR(connect(p[0], NULL, 0), ENOTSOCK);
	EXPECT_ERR(poll(null, 1, 10), EFAULT);
	EXPECT_ERR(select(-1, NULL, NULL, NULL, NULL), EINVAL);
	EXPECT_ERR(epoll_wait(p[0], null, 1, 10), EINVAL);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev;
	EXPECT_ERR(epoll_wait(ep, &ev, 0, 10), EINVAL);
	EXPECT_ERR(nanosleep(NULL, NULL), EFAULT);
	cr_assert_eq(clock_nanosleep(CLOCK_MONOTONIC, 0, NULL, NULL), EFAULT);
	cr_assert_eq(clock_nanosleep((clockid_t)12345, 0, &(struct timespec){ 0, 1000 }, NULL), EINVAL);
	EXPECT_ERR(close(-1), EBADF);
	EXPECT_ERR(close(123456), EBADF);
	EXPECT_ERR(fcntl(-1, F_GETFL), EBADF);
	EXPECT_ERR(dup2(-1, 900), EBADF);
	cr_assert_eq(getaddrinfo(NULL, NULL, NULL, &(struct addrinfo *){ NULL }), EAI_NONAME);
	close(ep);
	close(l);
	close(s[0]);
	close(s[1]);
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------------------ threads */

struct remote_reader {
	int fd;
	atomic_int parked;
	ssize_t n;
	int err;
};

static void read_on_another_hub(void *arg)
{
	struct remote_reader *r = arg;
	char c;

	atomic_store(&r->parked, 1);
	r->n = read(r->fd, &c, 1); /* that thread's main context: a fiber */
	r->err = errno;
}

/* close() from a fiber of this thread while a fiber of another thread's hub
 * is in a patched read on the fd: gr_close reaches it through its hub; it
 * wakes with EBADF, and the fd is closed exactly once. */
Test(patch_hostile, close_wakes_a_patched_read_on_another_threads_hub)
{
	int s[2];
	struct remote_reader r = { 0 };
	struct grt_thread t;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	r.fd = s[0];
	grt_thread_start(&t, 1, read_on_another_hub, &r);
	while (!atomic_load(&r.parked))
		gr_sleep(MS);
	gr_sleep(20 * MS); /* inside the read by now */
	int64_t t0 = gr_now();
	cr_assert_eq(close(s[0]), 0, "close: %s", strerror(errno));
	grt_thread_join(&t);
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC);
	cr_assert_eq(r.n, -1);
	cr_assert_eq(r.err, EBADF, "%s", strerror(r.err));
	cr_assert(!fd_open(s[0]), "the fd is still open after close");
	close(s[1]);
}

static void rescue_socket(void *arg)
{
	(void)!send(*(int *)arg, "r", 1, MSG_NOSIGNAL);
}

/* A fiber's read() on a number another fiber is closing (gr_close still
 * waiting for the backend to let go): EBADF at once, as the fibers the close
 * woke get; never the real read, which would block the thread that must
 * finish the close. */
Test(patch_hostile, a_read_on_an_fd_being_closed_fails_at_once)
{
	int s[2];
	struct rd waiting = { 0 }, late = { .want = 1 };
	struct closer c = { 0 };
	struct watchdog w;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	waiting.fd = late.fd = c.fd = s[0];
	gr_fiber *fw = gr_spawn(read_into, &waiting);
	gr_sleep(10 * MS);
	int peer = s[1];
	watchdog_start(&w, 2 * GR_SEC, rescue_socket, &peer);
	struct poller pl = { .pfd = { { .fd = s[0], .events = POLLIN } }, .n = 1, .timeout = 5000 };
	gr_fiber *fc = gr_spawn(close_it, &c);
	gr_fiber *fl = gr_spawn(read_into, &late);
	gr_fiber *fp = gr_spawn(poll_it, &pl);
	int64_t t0 = gr_now();
	assert_ok(gr_join(fw, NULL, GR_FOREVER));
	assert_ok(gr_join(fc, NULL, GR_FOREVER));
	assert_ok(gr_join(fl, NULL, GR_FOREVER));
	assert_ok(gr_join(fp, NULL, GR_FOREVER));
	bool fired = watchdog_stop(&w);
	cr_assert(!fired, "a read() of an fd being closed blocked the thread");
	cr_assert_eq(c.r, 0);
	cr_assert_eq(late.n, -1);
	cr_assert_eq(late.err, EBADF, "%s", strerror(late.err));
	cr_assert_lt(gr_now() - t0, GR_SEC, "a poll of an fd being closed waited");
	cr_assert(pl.r == 1 && pl.pfd[0].revents == POLLNVAL, "poll: %d (%s) revents %#x", pl.r,
		  pl.r < 0 ? strerror(pl.err) : "", (unsigned)pl.pfd[0].revents);
	close(s[1]);
}

/* ------------------------------------------------------------ blocking semantics at the edges */

struct big_writev {
	int fd;
	size_t each;
	bool as_sendmsg;
	ssize_t n;
	int err;
};

static void *writev_it_all(void *arg)
{
	struct big_writev *w = arg;
	char *a = malloc(w->each), *b = malloc(w->each);

	memset(a, 'a', w->each);
	memset(b, 'b', w->each);
	struct iovec iov[2] = { { a, w->each }, { b, w->each } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
	w->n = w->as_sendmsg ? sendmsg(w->fd, &m, 0) : writev(w->fd, iov, 2);
	w->err = errno;
	free(a);
	free(b);
	return NULL;
}

/* A blocking writev on a stream socket, a pipe or a FIFO returns when
 * everything is written, as write does, and so does a sendmsg on a stream
 * socket: code that does not loop on them (it never had to) would lose the
 * rest. */
static void writev_all_through(int wfd, int rfd, const char *what, bool as_sendmsg)
{
	struct big_writev w = { .fd = wfd, .each = 1 << 20, .as_sendmsg = as_sendmsg };
	char buf[65536];
	size_t got = 0;

	gr_fiber *f = gr_spawn(writev_it_all, &w);
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	while (got < 2 * w.each) {
		ssize_t n = read(rfd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != (got + (size_t)i < w.each ? 'a' : 'b'))
				grt_fail("%s: byte %zu is '%c'", what, got + (size_t)i, buf[i]);
		got += (size_t)n;
		if (w.n != 0)
			break; /* the writev returned: nothing more will come */
	}
	gr_deadline_set(old);
	(void)gr_kill(f);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.n, (ssize_t)(2 * w.each), "%s: a write of %zu bytes returned %zd (%s)", what,
		     2 * w.each, w.n, w.n < 0 ? strerror(w.err) : "a short count");
	grt_assert_no_failures();
}

Test(patch_hostile, a_blocking_writev_writes_everything)
{
	int s[2], p[2];
	char path[64];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	writev_all_through(s[0], s[1], "socket", false);
	close(s[0]);
	close(s[1]);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	writev_all_through(s[0], s[1], "socket, sendmsg", true);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	writev_all_through(p[1], p[0], "pipe", false);
	snprintf(path, sizeof(path), "/tmp/grt-fifo-v-%d", (int)getpid());
	unlink(path);
	cr_assert_eq(mkfifo(path, 0600), 0);
	int fifo = open(path, O_RDWR | O_CLOEXEC);
	unlink(path);
	cr_assert_geq(fifo, 0);
	writev_all_through(fifo, fifo, "FIFO", false);
	close(fifo);
	close(p[0]);
	close(p[1]);
	close(s[0]);
	close(s[1]);
}

/* read() of 0 bytes returns 0 at once, whatever the file; so does a
 * read on a FIFO with bytes in it. */
Test(patch_hostile, a_zero_length_read_never_waits)
{
	char path[64], c;
	int s[2], p[2];

	snprintf(path, sizeof(path), "/tmp/grt-fifo-z-%d", (int)getpid());
	unlink(path);
	cr_assert_eq(mkfifo(path, 0600), 0);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	unlink(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
	int fds[] = { fd, s[0], p[0] };
	ssize_t n[3];
	int err[3];
	int64_t took[3];
	for (int i = 0; i < 3; i++) {
		int64_t t0 = gr_now();
		n[i] = read(fds[i], &c, 0);
		err[i] = errno;
		took[i] = gr_now() - t0;
	}
	/* Asserted with the deadline gone: Criterion's own reporting runs in
	 * this context, through the patched calls. */
	gr_deadline_set(old);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(n[i], 0, "read(%d, 0): %zd %s", i, n[i], strerror(err[i]));
		cr_assert_lt(took[i], 500 * MS);
	}
	close(fd);
	close(s[0]);
	close(s[1]);
	close(p[0]);
	close(p[1]);
}
