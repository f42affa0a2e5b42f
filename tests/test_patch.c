/* test_patch.c — libgreenring-patch.so: plain blocking libc calls made by
 * fibers park the fiber, not the thread; everywhere a fiber cannot park
 * they stay the real call; the program's own non-blocking fds keep their
 * semantics; poll and select of several fds, sleeps, getaddrinfo, accept,
 * connect and close are green on every hub; kills and deadlines end them.
 *
 * This binary is linked with the library and preloaded with it (ctest sets
 * LD_PRELOAD): every read(), poll(), sleep() below is the patched one.
 * Concurrency is shown, never assumed: a blocking call that parked the
 * thread would stop the fiber that must run meanwhile, and the test would
 * fail on its deadline or its counter. Runs once per hub. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(patch);

#define MS GR_MSEC

/* Counts while other fibers are blocked in patched calls: proof that the
 * thread was free. Stops when *stop is set. */
struct ticker {
	atomic_int ticks;
	atomic_bool stop;
};

static void *tick(void *arg)
{
	struct ticker *t = arg;

	while (!atomic_load(&t->stop)) {
		atomic_fetch_add(&t->ticks, 1);
		gr_sleep(MS);
	}
	return NULL;
}

static gr_fiber *ticker_start(struct ticker *t)
{
	atomic_init(&t->ticks, 0);
	atomic_init(&t->stop, false);
	gr_fiber *f = gr_spawn(tick, t);
	cr_assert_not_null(f);
	return f;
}

static int ticker_stop(struct ticker *t, gr_fiber *f)
{
	atomic_store(&t->stop, true);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	return atomic_load(&t->ticks);
}

static bool kernel_nonblocking(int fd)
{
	/* Asked with the raw system call: fcntl() shows the program's view. */
	long fl = syscall(SYS_fcntl, fd, F_GETFL);

	cr_assert_geq(fl, 0);
	return fl & O_NONBLOCK;
}

/* ------------------------------------------------------------ contexts */

Test(patch, the_main_context_counts_as_a_fiber)
{
	struct ticker t;
	gr_fiber *f = ticker_start(&t);
	int64_t t0 = gr_now();

	/* No gr_spawn'd code sleeps here: main itself, with plain usleep. */
	cr_assert_eq(usleep(60 * 1000), 0);
	cr_assert_geq(gr_now() - t0, 60 * MS);
	cr_assert_geq(ticker_stop(&t, f), 3, "the ticker did not run while main slept");
	cr_assert_eq(gr_can_park(), 1);
}

struct plain_thread {
	int fd;
	char got[8];
	ssize_t n;
	int stats;
	int can_park;
};

static void *plain_reader(void *arg)
{
	struct plain_thread *p = arg;
	struct gr_hub_stats st;

	p->can_park = gr_can_park();
	p->n = read(p->fd, p->got, sizeof(p->got)); /* blocks this thread */
	p->stats = gr_hub_stats(&st);                /* still no hub here */
	return NULL;
}

Test(patch, a_thread_without_a_hub_gets_the_real_blocking_call)
{
	int p[2];
	struct plain_thread pt = { 0 };
	pthread_t th;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pt.fd = p[0];
	cr_assert_eq(pthread_create(&th, NULL, plain_reader, &pt), 0);
	gr_sleep(30 * MS); /* the thread is blocked in read() meanwhile */
	cr_assert_eq(write(p[1], "abc", 3), 3);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(pt.n, 3);
	cr_assert_eq(memcmp(pt.got, "abc", 3), 0);
	cr_assert_eq(pt.stats, -ESRCH, "the patched read created a hub on a plain thread");
	cr_assert_eq(pt.can_park, 0);
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------------------ data calls */

struct pipe_io {
	int fd;
	ssize_t n;
	int err;
	char buf[64];
};

static void *pipe_reader(void *arg)
{
	struct pipe_io *io = arg;

	io->n = read(io->fd, io->buf, sizeof(io->buf));
	io->err = errno;
	return NULL;
}

Test(patch, read_on_a_blocking_pipe_parks_the_fiber_and_leaves_the_flags_alone)
{
	int p[2];
	struct pipe_io io = { 0 };
	struct ticker t;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	io.fd = p[0];
	gr_fiber *r = gr_spawn(pipe_reader, &io);
	gr_fiber *f = ticker_start(&t);
	gr_sleep(40 * MS);
	cr_assert_eq(write(p[1], "hello", 5), 5);
	assert_ok(gr_join(r, NULL, GR_FOREVER));
	cr_assert_eq(io.n, 5, "read: %zd (%s)", io.n, strerror(io.err));
	cr_assert_geq(ticker_stop(&t, f), 2);
	cr_assert(!kernel_nonblocking(p[0]), "the pipe was made O_NONBLOCK");
	close(p[0]);
	close(p[1]);
}

Test(patch, an_fd_the_program_made_nonblocking_gets_eagain_not_a_park)
{
	int p[2], s[2];
	char c;
	int on = 1, off = 0;

	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	cr_assert_eq(read(p[0], &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	int fl = fcntl(s[0], F_GETFL);
	cr_assert_eq(fcntl(s[0], F_SETFL, fl | O_NONBLOCK), 0);
	cr_assert_eq(recv(s[0], &c, 1, 0), -1);
	cr_assert_eq(errno, EAGAIN);
	cr_assert_eq(read(s[0], &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);
	cr_assert(fcntl(s[0], F_GETFL) & O_NONBLOCK);

	/* FIONBIO is the same wish. */
	cr_assert_eq(ioctl(s[1], FIONBIO, &on), 0);
	cr_assert_eq(read(s[1], &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);
	cr_assert_eq(ioctl(s[1], FIONBIO, &off), 0);
	cr_assert_eq(fcntl(s[1], F_GETFL) & O_NONBLOCK, 0);

	/* MSG_DONTWAIT on a blocking socket, too. */
	cr_assert_eq(recv(s[1], &c, 1, MSG_DONTWAIT), -1);
	cr_assert_eq(errno, EAGAIN);

	/* A dup shares the open file description, and so the view. */
	int d = dup(s[0]);
	cr_assert_geq(d, 0);
	cr_assert_eq(read(d, &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);
	close(d);

	/* And blocking again: the read parks until the peer writes. */
	cr_assert_eq(fcntl(s[0], F_SETFL, fl), 0);
	struct pipe_io io = { .fd = s[0] };
	gr_fiber *r = gr_spawn(pipe_reader, &io);
	gr_sleep(20 * MS);
	cr_assert_eq(write(s[1], "x", 1), 1);
	assert_ok(gr_join(r, NULL, GR_FOREVER));
	cr_assert_eq(io.n, 1);
	close(p[0]);
	close(p[1]);
	close(s[0]);
	close(s[1]);
}

Test(patch, greenrings_own_nonblocking_flag_is_not_the_programs)
{
	int p[2];
	char c;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	/* gr_read itself may make the pipe O_NONBLOCK (the readiness hubs
	 * do): the program asked for nothing of the kind. */
	cr_assert_eq(write(p[1], "a", 1), 1);
	cr_assert_eq(gr_read(p[0], &c, 1), 1);
	cr_assert_eq(fcntl(p[0], F_GETFL) & O_NONBLOCK, 0, "greenring's flag shown to the program");
	struct pipe_io io = { .fd = p[0] };
	gr_fiber *r = gr_spawn(pipe_reader, &io);
	gr_sleep(20 * MS);
	cr_assert_eq(write(p[1], "b", 1), 1);
	assert_ok(gr_join(r, NULL, GR_FOREVER));
	cr_assert_eq(io.n, 1, "read: %zd (%s): the program's blocking read failed", io.n,
		     strerror(io.err));
	close(p[0]);
	close(p[1]);
}

struct big_write {
	int fd;
	size_t len;
	ssize_t n;
};

static void *write_all_of_it(void *arg)
{
	struct big_write *w = arg;
	char *buf = calloc(1, w->len);

	w->n = write(w->fd, buf, w->len);
	free(buf);
	return NULL;
}

Test(patch, a_blocking_write_returns_when_everything_is_written)
{
	int s[2];
	struct big_write w = { .len = 4 << 20 };
	char buf[65536];
	size_t got = 0;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	w.fd = s[0];
	gr_fiber *f = gr_spawn(write_all_of_it, &w);
	while (got < w.len) {
		ssize_t n = recv(s[1], buf, sizeof(buf), 0);

		cr_assert_gt(n, 0);
		got += (size_t)n;
	}
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(w.n, (ssize_t)w.len);

	/* recv with MSG_WAITALL on a stream socket: everything, too. */
	cr_assert_eq(send(s[0], "12345678", 8, 0), 8);
	cr_assert_eq(recv(s[1], buf, 8, MSG_WAITALL), 8);
	close(s[0]);
	close(s[1]);
}

Test(patch, so_rcvtimeo_ends_a_blocking_read_with_eagain)
{
	int s[2];
	char c;
	struct timeval tv = { 0, 50 * 1000 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	cr_assert_eq(setsockopt(s[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	int64_t t0 = gr_now();
	cr_assert_eq(read(s[0], &c, 1), -1);
	cr_assert_eq(errno, EAGAIN);
	int64_t took = gr_now() - t0;
	cr_assert(took >= 50 * MS && took < 500 * MS, "took %lld ns", (long long)took);
	close(s[0]);
	close(s[1]);
}

/* ------------------------------------------------------------ kills, deadlines, close */

/* A fiber blocked in read() on s[0] of a new socketpair, nothing to read. */
static gr_fiber *blocked_reader(int s[2], struct pipe_io *io)
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
	io->fd = s[0];
	gr_fiber *f = gr_spawn(pipe_reader, io);
	cr_assert_not_null(f);
	gr_sleep(10 * MS);
	return f;
}

Test(patch, a_kill_or_a_deadline_ends_a_blocking_read)
{
	int s[2];
	struct pipe_io io = { 0 };
	gr_fiber *f = blocked_reader(s, &io);

	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(io.n, -1);
	cr_assert_eq(io.err, ECANCELED);

	int64_t old = gr_deadline_set(gr_now() + 30 * MS);
	char c;
	cr_assert_eq(read(s[0], &c, 1), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	gr_deadline_set(old);
	close(s[0]);
	close(s[1]);
}

Test(patch, close_wakes_a_fiber_blocked_on_the_fd)
{
	int s[2];
	struct pipe_io io = { 0 };
	gr_fiber *f = blocked_reader(s, &io);

	cr_assert_eq(close(s[0]), 0);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(io.n, -1);
	cr_assert_eq(io.err, EBADF);
	cr_assert_eq(close(s[0]), -1);
	cr_assert_eq(errno, EBADF);
	close(s[1]);
}

/* ------------------------------------------------------------ poll, select */

struct late_write {
	int fd;
	int64_t after;
};

static void *write_later(void *arg)
{
	struct late_write *w = arg;

	gr_sleep(w->after);
	cr_assert_eq(write(w->fd, "!", 1), 1);
	return NULL;
}

Test(patch, poll_of_several_fds_parks_until_one_is_ready)
{
	int p[3][2];
	struct pollfd pfd[3];
	struct ticker t;

	for (int i = 0; i < 3; i++) {
		cr_assert_eq(pipe2(p[i], O_CLOEXEC), 0);
		pfd[i] = (struct pollfd){ .fd = p[i][0], .events = POLLIN };
	}
	struct late_write w = { .fd = p[1][1], .after = 50 * MS };
	gr_fiber *wf = gr_spawn(write_later, &w);
	gr_fiber *f = ticker_start(&t);
	int64_t t0 = gr_now();
	int r = poll(pfd, 3, 5000);
	int64_t took = gr_now() - t0;
	cr_assert_eq(r, 1, "poll: %d (%s)", r, strerror(errno));
	cr_assert_eq(pfd[0].revents, 0);
	cr_assert_eq(pfd[1].revents, POLLIN);
	cr_assert_eq(pfd[2].revents, 0);
	cr_assert(took >= 45 * MS && took < 2000 * MS, "took %lld ns", (long long)took);
	cr_assert_geq(ticker_stop(&t, f), 2);
	assert_ok(gr_join(wf, NULL, GR_FOREVER));

	/* Timeout, and the same fd twice with different events. */
	char c;
	cr_assert_eq(read(p[1][0], &c, 1), 1);
	struct pollfd twice[2] = { { .fd = p[0][0], .events = POLLIN },
				   { .fd = p[0][0], .events = POLLPRI } };
	t0 = gr_now();
	cr_assert_eq(poll(twice, 2, 60), 0);
	took = gr_now() - t0;
	cr_assert(took >= 60 * MS && took < 1000 * MS, "took %lld ns", (long long)took);

	/* A closed fd is POLLNVAL at once; no fd at all is a sleep. */
	struct pollfd bad = { .fd = 1000000, .events = POLLIN };
	cr_assert_eq(poll(&bad, 1, 1000), 1);
	cr_assert_eq(bad.revents, POLLNVAL);
	t0 = gr_now();
	cr_assert_eq(poll(NULL, 0, 30), 0);
	cr_assert_geq(gr_now() - t0, 30 * MS);
	for (int i = 0; i < 3; i++) {
		close(p[i][0]);
		close(p[i][1]);
	}
}

struct poller {
	struct pollfd pfd[2];
	int r;
	int err;
};

static void *poll_forever(void *arg)
{
	struct poller *pl = arg;

	pl->r = poll(pl->pfd, 2, -1);
	pl->err = errno;
	return NULL;
}

Test(patch, a_kill_or_a_deadline_ends_a_poll_and_nothing_is_left_open)
{
	int a[2], b[2];
	struct poller pl = { 0 };

	cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(b, O_CLOEXEC), 0);
	pl.pfd[0] = (struct pollfd){ .fd = a[0], .events = POLLIN };
	pl.pfd[1] = (struct pollfd){ .fd = b[0], .events = POLLIN };
	gr_fiber *f = gr_spawn(poll_forever, &pl);
	gr_sleep(10 * MS);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(pl.r, -1);
	cr_assert_eq(pl.err, ECANCELED);

	int64_t old = gr_deadline_set(gr_now() + 30 * MS);
	cr_assert_eq(poll(pl.pfd, 2, -1), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(a[0], &rs);
	FD_SET(b[0], &rs);
	cr_assert_eq(select(b[0] + 1, &rs, NULL, NULL, NULL), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	gr_deadline_set(old);
	close(a[0]);
	close(a[1]);
	close(b[0]);
	close(b[1]);
	/* The teardown checks that no temporary epoll fd was left open. */
}

Test(patch, select_waits_like_select)
{
	int a[2], b[2];
	fd_set rs;

	cr_assert_eq(pipe2(a, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(b, O_CLOEXEC), 0);
	struct late_write w = { .fd = b[1], .after = 30 * MS };
	gr_fiber *wf = gr_spawn(write_later, &w);
	FD_ZERO(&rs);
	FD_SET(a[0], &rs);
	FD_SET(b[0], &rs);
	struct timeval tv = { 5, 0 };
	int n = a[0] > b[0] ? a[0] + 1 : b[0] + 1;
	cr_assert_eq(select(n, &rs, NULL, NULL, &tv), 1);
	cr_assert(!FD_ISSET(a[0], &rs));
	cr_assert(FD_ISSET(b[0], &rs));
	cr_assert(tv.tv_sec < 5 || tv.tv_usec < 1000000, "the time left is written back");
	assert_ok(gr_join(wf, NULL, GR_FOREVER));

	/* Timeout: 0 and empty sets. */
	char c;
	cr_assert_eq(read(b[0], &c, 1), 1);
	FD_ZERO(&rs);
	FD_SET(a[0], &rs);
	FD_SET(b[0], &rs);
	tv = (struct timeval){ 0, 40 * 1000 };
	int64_t t0 = gr_now();
	cr_assert_eq(select(n, &rs, NULL, NULL, &tv), 0);
	cr_assert_geq(gr_now() - t0, 40 * MS);
	cr_assert(!FD_ISSET(a[0], &rs) && !FD_ISSET(b[0], &rs));

	/* pselect with no signal mask is green too. */
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	FD_SET(a[0], &rs);
	cr_assert_eq(pselect(n, &rs, NULL, NULL, &ts, NULL), 0);
	close(a[0]);
	close(a[1]);
	close(b[0]);
	close(b[1]);
}

/* ------------------------------------------------------------ sleeps */

Test(patch, the_sleeps_park_the_fiber)
{
	struct ticker t;
	gr_fiber *f = ticker_start(&t);
	int64_t t0 = gr_now();
	struct timespec ts = { 0, 20 * 1000 * 1000 }, rem;

	cr_assert_eq(nanosleep(&ts, &rem), 0);
	cr_assert_eq(usleep(20 * 1000), 0);
	cr_assert_eq(clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL), 0);
	struct timespec abs;
	clock_gettime(CLOCK_REALTIME, &abs);
	abs.tv_nsec += 20 * 1000 * 1000;
	if (abs.tv_nsec >= 1000000000L) {
		abs.tv_sec++;
		abs.tv_nsec -= 1000000000L;
	}
	cr_assert_eq(clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &abs, NULL), 0);
	cr_assert_eq(sleep(0), 0);
	cr_assert_geq(gr_now() - t0, 80 * MS);
	cr_assert_geq(ticker_stop(&t, f), 5);
	ts.tv_nsec = 2000000000L;
	cr_assert_eq(nanosleep(&ts, NULL), -1);
	cr_assert_eq(errno, EINVAL);
}

struct sleeper {
	int r;
	int err;
	struct timespec rem;
	int cr;
};

static void *sleep_long(void *arg)
{
	struct sleeper *s = arg;
	struct timespec ts = { 10, 0 };

	s->r = nanosleep(&ts, &s->rem);
	s->err = errno;
	s->cr = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
	return NULL;
}

Test(patch, a_killed_sleeper_gets_ecanceled_not_eintr)
{
	struct sleeper s = { 0 };
	gr_fiber *f = gr_spawn(sleep_long, &s);

	gr_sleep(10 * MS);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(s.r, -1);
	cr_assert_eq(s.err, ECANCELED);
	cr_assert(s.rem.tv_sec >= 9, "rem %ld s", (long)s.rem.tv_sec);
	cr_assert_eq(s.cr, ECANCELED, "a killed fiber's next call fails at once too");
}

/* ------------------------------------------------------------ signals, vfork */

static atomic_int handler_can_park = -1;
static atomic_int handler_ticks_moved = -1;
static struct ticker *handler_ticker;

static void on_usr1(int sig)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };
	int before = atomic_load(&handler_ticker->ticks);

	(void)sig;
	atomic_store(&handler_can_park, gr_can_park());
	nanosleep(&ts, NULL); /* must block right here, never park */
	atomic_store(&handler_ticks_moved, atomic_load(&handler_ticker->ticks) != before);
}

Test(patch, a_signal_handler_gets_the_real_calls)
{
	struct ticker t;
	struct sigaction sa = { .sa_handler = on_usr1 }, old, back;

	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGUSR1, &sa, &old), 0);
	cr_assert_eq(sigaction(SIGUSR1, NULL, &back), 0);
	cr_assert_eq(back.sa_handler, on_usr1, "sigaction reports the trampoline, not the handler");
	cr_assert_eq(back.sa_flags & SA_SIGINFO, 0);
	handler_ticker = &t;
	gr_fiber *f = ticker_start(&t);
	gr_sleep(5 * MS);
	cr_assert_eq(raise(SIGUSR1), 0);
	cr_assert_eq(atomic_load(&handler_can_park), 1);
	cr_assert_eq(atomic_load(&handler_ticks_moved), 0, "a fiber ran inside the signal handler");
	ticker_stop(&t, f);

	/* signal() returns the program's previous handler. */
	cr_assert_eq(signal(SIGUSR1, SIG_DFL), on_usr1);
	cr_assert_eq(sigaction(SIGUSR1, &old, NULL), 0);

	/* Calls after the handler returned are green again. */
	f = ticker_start(&t);
	cr_assert_eq(usleep(20 * 1000), 0);
	cr_assert_gt(ticker_stop(&t, f), 0);
}

Test(patch, a_vfork_child_never_touches_the_parents_hub)
{
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	pid_t pid = vfork();
	if (pid == 0) {
		/* Patched calls in the child: the real ones. */
		close(p[0]);
		ssize_t n = write(p[1], "c", 1);
		_exit(n == 1 ? 0 : 1);
	}
	cr_assert_gt(pid, 0);
	close(p[1]);
	char c;
	cr_assert_eq(read(p[0], &c, 1), 1);
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(p[0]);
	cr_assert_eq(usleep(1000), 0, "the parent's hub still works");
}

/* ------------------------------------------------------------ sockets */

#define CLIENTS 50

struct echo_ctx {
	int port;
	atomic_int ok;
};

static void *echo_once(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[16];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n > 0)
		write(fd, buf, (size_t)n);
	close(fd);
	return NULL;
}

static void *client(void *arg)
{
	struct echo_ctx *e = arg;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)e->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char buf[4];

	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    write(fd, "ping", 4) == 4 && read(fd, buf, 4) == 4 && memcmp(buf, "ping", 4) == 0)
		atomic_fetch_add(&e->ok, 1);
	close(fd);
	return NULL;
}

struct plain_acceptor {
	int listener;
	int fd;
};

static void *accept_on_a_plain_thread(void *arg)
{
	struct plain_acceptor *a = arg;

	a->fd = accept(a->listener, NULL, NULL);
	return NULL;
}

Test(patch, accept_and_connect_from_fibers_on_a_blocking_listener)
{
	int port;
	int l = grt_listener(&port);
	struct echo_ctx e = { .port = port };
	gr_fiber *c[CLIENTS];

	for (int i = 0; i < CLIENTS; i++)
		c[i] = gr_spawn(client, &e);
	for (int i = 0; i < CLIENTS; i++) {
		int fd = accept(l, NULL, NULL);

		cr_assert_geq(fd, 0, "accept: %s", strerror(errno));
		cr_assert_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
		cr_assert_eq(gr_spawn_n((void (*)(void *))(void *)echo_once, (void *)(intptr_t)fd), 0);
	}
	for (int i = 0; i < CLIENTS; i++)
		assert_ok(gr_join(c[i], NULL, GR_FOREVER));
	cr_assert_eq(atomic_load(&e.ok), CLIENTS);
	/* The listener is non-blocking underneath, blocking to the program,
	 * and a thread with no hub still blocks in accept() on it. */
	cr_assert(kernel_nonblocking(l));
	cr_assert_eq(fcntl(l, F_GETFL) & O_NONBLOCK, 0);
	struct plain_acceptor pa = { .listener = l, .fd = -1 };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, accept_on_a_plain_thread, &pa), 0);
	gr_sleep(20 * MS);
	int cfd = grt_connect_plain(port);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_geq(pa.fd, 0, "plain accept: %s", strerror(errno));
	close(pa.fd);
	close(cfd);
	close(l);
}

/* ------------------------------------------------------------ getaddrinfo */

#define LOOKUPS 1000

struct lookups {
	atomic_int ok;
	atomic_int slept;
};

static void *sleep_and_lookup(void *arg)
{
	struct lookups *l = arg;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;

	if (sleep(1) == 0)
		atomic_fetch_add(&l->slept, 1);
	int r = getaddrinfo("localhost", "80", &hints, &res);
	if (r == 0) {
		bool loopback = false;

		for (struct addrinfo *a = res; a; a = a->ai_next) {
			if (a->ai_family == AF_INET)
				loopback |= ((struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr ==
					    htonl(INADDR_LOOPBACK);
			if (a->ai_family == AF_INET6)
				loopback |= IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr);
		}
		freeaddrinfo(res);
		if (loopback)
			atomic_fetch_add(&l->ok, 1);
	}
	return NULL;
}

/* The "plain program": sleep() and getaddrinfo("localhost") in 1000
 * fibers of one thread. Serially that is 1000 s of sleeping. */
Test(patch, sleep_and_getaddrinfo_in_1000_fibers, .timeout = 60)
{
	static gr_fiber *f[LOOKUPS];
	struct lookups l = { 0 };
	int64_t t0 = gr_now();

	for (int i = 0; i < LOOKUPS; i++) {
		f[i] = gr_spawn(sleep_and_lookup, &l);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < LOOKUPS; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	int64_t took = gr_now() - t0;
	cr_assert_eq(atomic_load(&l.slept), LOOKUPS);
	cr_assert_eq(atomic_load(&l.ok), LOOKUPS);
	cr_assert_lt(took, 10 * GR_SEC, "took %.2f s", took / 1e9);
	cr_log_info("1000 x (sleep(1) + getaddrinfo(localhost)) on %s: %.2f s", grt_hub(), took / 1e9);
}

static void *lookup_forever(void *arg)
{
	int *ret = arg;
	struct addrinfo *res = NULL;

	*ret = getaddrinfo("localhost", "http", NULL, &res);
	if (*ret == 0)
		freeaddrinfo(res);
	else if (*ret == EAI_SYSTEM)
		*ret = -errno;
	return NULL;
}

Test(patch, a_killed_getaddrinfo_returns_at_once_and_frees_its_result)
{
	int ret[8];
	gr_fiber *f[8];

	/* Some are killed queued, some running: both must end cleanly (the
	 * teardown waits for the lookups still running; ASan's leak check
	 * sees what a dropped result would leak). */
	for (int i = 0; i < 8; i++)
		f[i] = gr_spawn(lookup_forever, &ret[i]);
	gr_sleep(0);
	for (int i = 0; i < 8; i += 2)
		assert_ok(gr_kill(f[i]));
	for (int i = 0; i < 8; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	for (int i = 0; i < 8; i++) {
		if (i % 2 == 0)
			cr_assert(ret[i] == -ECANCELED || ret[i] == 0, "ret %d", ret[i]);
		else
			cr_assert_eq(ret[i], 0, "getaddrinfo: %s", gai_strerror(ret[i]));
	}
}

/* ------------------------------------------------------------ gr_server */

/* A gr_server handler written as plain blocking code. On the readiness
 * hubs greenring accepts the socket O_NONBLOCK for itself: the handler
 * must still see a blocking socket. */
static void blocking_echo(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[64];
	ssize_t n;

	(void)peer;
	(void)arg;
	if (fcntl(fd, F_GETFL) & O_NONBLOCK)
		return; /* the client sees no echo and fails */
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (write(fd, buf, (size_t)n) != n)
			break;
}

Test(patch, a_gr_server_handler_in_plain_blocking_code)
{
	gr_server *s = gr_server_create("127.0.0.1", 0, blocking_echo, NULL, NULL);
	struct echo_ctx e = { 0 };
	gr_fiber *c[CLIENTS];

	cr_assert_not_null(s);
	assert_ok(gr_server_start(s));
	e.port = gr_server_port(s);
	for (int i = 0; i < CLIENTS; i++)
		c[i] = gr_spawn(client, &e);
	for (int i = 0; i < CLIENTS; i++)
		assert_ok(gr_join(c[i], NULL, GR_FOREVER));
	cr_assert_eq(atomic_load(&e.ok), CLIENTS);
	assert_ok(gr_server_stop(s, 0));
	assert_ok(gr_server_wait(s, GR_FOREVER));
	gr_server_free(s);
}
