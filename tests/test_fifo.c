/* test_fifo.c — files whose read(2) or write(2) answers at once although
 * poll(2) never calls them ready: a green call answers as the POSIX call
 * does, on every hub.
 *
 * io_uring performs a read itself, and for a file that cannot be tried
 * without blocking (no RWF_NOWAIT: a FIFO, a terminal, inotify) it polls
 * the file and reads once it is ready. A FIFO that has never had a writer
 * is never ready, yet read(2) says end of file; a pidfd or an epoll fd is
 * never ready for a read or a write, yet both say EINVAL; a terminal in
 * raw mode with VMIN = 0 is never ready while empty, yet read(2) says 0.
 * The runtime learns per fd which files refuse RWF_NOWAIT and serves them
 * on every hub the readiness hubs' way: the call itself, tried without
 * blocking, then a wait for readiness (io.c). What a wait on them must
 * still do: park only its fiber, wake when data comes, end on a deadline,
 * a kill, gr_close, and (through the audit of long waits) a plain close()
 * of the number, even when the number then names another file.
 *
 * Every call here runs under a deadline, so a wrongful wait fails the test
 * with ETIMEDOUT (and a "took" figure) instead of hanging it. On main, the
 * io_uring runs of these tests failed that way. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(fifo);

#define MSEC GR_MSEC

/* How soon "at once" must be: a wait for readiness that never comes ends
 * only at the call's deadline, a second away. */
#define AT_ONCE (200 * MSEC)

/* ------------------------------------------------------------ helpers */

struct fifo {
	char dir[64];
	char path[96];
};

static void fifo_make(struct fifo *f)
{
	strcpy(f->dir, "/tmp/grt-fifo-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/fifo", f->dir);
	cr_assert_eq(mkfifo(f->path, 0600), 0);
}

static void fifo_remove(struct fifo *f)
{
	cr_assert_eq(unlink(f->path), 0);
	cr_assert_eq(rmdir(f->dir), 0);
}

/* The FIFO's read end, opened before any writer came (O_NONBLOCK, or the
 * open would wait for one) and made blocking again unless `keep_nonblock`. */
static int reader_without_writer(struct fifo *f, bool keep_nonblock)
{
	int fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	cr_assert_geq(fd, 0, "open: %s", strerror(errno));
	if (!keep_nonblock)
		cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
	return fd;
}

/* The situation of the bug: a reader that came before any writer (its
 * first green read is end of file, at once), then a writer. *rfd is
 * blocking, as the program left it; *wfd is the writer. */
static void reader_then_writer(struct fifo *f, int *rfd, int *wfd)
{
	char b[4];

	*rfd = reader_without_writer(f, false);
	int64_t t0 = gr_now();
	gr_deadline_set(t0 + GR_SEC);
	ssize_t r = gr_read(*rfd, b, sizeof(b));
	int err = errno;
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(r, 0, "no writer yet: %zd (%s), where read(2) says 0", r, strerror(err));
	cr_assert_lt(gr_now() - t0, AT_ONCE, "no writer yet: answered after %lld ms",
		     (long long)((gr_now() - t0) / MSEC));
	*wfd = open(f->path, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(*wfd, 0, "open: %s", strerror(errno));
}

static bool nonblocking(int fd)
{
	return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
}

/* One green call in a fiber, recorded; the test's context asserts. */
struct call {
	int fd;
	bool write;
	bool vectored;
	size_t n;
	int64_t deadline;               /* the fiber's own, 0: none */
	ssize_t r;
	int err;
	int64_t began, ended;
	char buf[64];
};

static void *call_fiber(void *arg)
{
	struct call *c = arg;
	struct iovec iov[2] = { { c->buf, c->n / 2 }, { c->buf + c->n / 2, c->n - c->n / 2 } };

	if (c->deadline)
		gr_deadline_set(c->deadline);
	c->began = gr_now();
	if (c->write)
		c->r = c->vectored ? gr_writev(c->fd, iov, 2) : gr_write(c->fd, c->buf, c->n);
	else
		c->r = c->vectored ? gr_readv(c->fd, iov, 2) : gr_read(c->fd, c->buf, c->n);
	c->err = c->r < 0 ? errno : 0;
	c->ended = gr_now();
	return NULL;
}

/* The call made in this context (a fiber: the test's main one), under a
 * deadline a second away. */
static void call_now(struct call *c)
{
	c->deadline = gr_now() + GR_SEC;
	call_fiber(c);
	gr_deadline_set(GR_FOREVER);
}

static void assert_answered_at_once(const struct call *c, const char *what)
{
	cr_assert_lt(c->ended - c->began, AT_ONCE,
		     "%s: answered after %lld ms (%zd, %s), where the POSIX call answers at once",
		     what, (long long)((c->ended - c->began) / MSEC), c->r, strerror(c->err));
}

/* Start the call in a fiber and let it park; assert it did. */
static gr_fiber *parked(struct call *c)
{
	c->r = 1;
	c->err = 0;
	gr_fiber *f = gr_spawn(call_fiber, c);

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0));
	assert_ok(gr_sleep(2 * MSEC));
	cr_assert_eq(c->r, 1, "the %s on fd %d returned %zd (%s) instead of waiting",
		     c->write ? "write" : "read", c->fd, c->r, strerror(c->err));
	return f;
}

static void join_within(gr_fiber *f, int64_t ns)
{
	int r = gr_join(f, NULL, gr_now() + ns);

	cr_assert_eq(r, 0, "gr_join: %s (the fiber still waits)", strerror(-r));
}

/* ------------------------------------------------------------ FIFOs */

/* read(2) of a FIFO no writer has opened is end of file at once; so is
 * every green read of it, blocking or not, plain or vectored. */
Test(fifo, a_read_before_any_writer_is_end_of_file_at_once)
{
	struct fifo f;
	char b;

	fifo_make(&f);
	for (int keep = 0; keep < 2; keep++) {
		int rfd = reader_without_writer(&f, keep);

		cr_assert_eq(read(rfd, &b, 1), 0, "read(2) itself");
		for (int vectored = 0; vectored < 2; vectored++) {
			struct call c = { .fd = rfd, .n = 16, .vectored = vectored };

			call_now(&c);
			cr_assert_eq(c.r, 0, "%s%s: %zd (%s), where read(2) says 0",
				     vectored ? "gr_readv" : "gr_read",
				     keep ? " (O_NONBLOCK)" : "", c.r, strerror(c.err));
			assert_answered_at_once(&c, "a FIFO without a writer");
		}
		assert_ok(gr_close(rfd));
	}
	fifo_remove(&f);
}

/* A writer comes after the reader: a read parked in gr_read gets the
 * writer's bytes; the writer gone, end of file. That the test's own
 * context runs on while the read waits (parked() returns, the write is
 * made) is the proof that only the reader's fiber waits, not the thread. */
Test(fifo, a_parked_reader_gets_a_later_writers_bytes_then_end_of_file)
{
	struct fifo f;

	fifo_make(&f);
	int rfd = reader_without_writer(&f, false);
	struct call first = { .fd = rfd, .n = 16 };
	call_now(&first);
	cr_assert_eq(first.r, 0, "no writer yet: %zd (%s)", first.r, strerror(first.err));

	int wfd = open(f.path, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(wfd, 0);
	struct call c = { .fd = rfd, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *rf = parked(&c);
	assert_ok(gr_sleep(20 * MSEC));
	cr_assert_eq(c.r, 1, "the read returned %zd (%s) with no data written", c.r,
		     strerror(c.err));
	cr_assert_eq(gr_write(wfd, "fifo", 4), 4, "gr_write: %s", strerror(errno));
	join_within(rf, 5 * GR_SEC);
	cr_assert_eq(c.r, 4, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(memcmp(c.buf, "fifo", 4), 0);

	/* The writer leaves while a reader waits: it wakes with end of file. */
	c = (struct call){ .fd = rfd, .n = 16, .vectored = true,
			   .deadline = gr_now() + 10 * GR_SEC };
	rf = parked(&c);
	assert_ok(gr_close(wfd));
	join_within(rf, 5 * GR_SEC);
	cr_assert_eq(c.r, 0, "the writer gone: %zd (%s)", c.r, strerror(c.err));
	assert_ok(gr_close(rfd));
	fifo_remove(&f);
}

/* A writer present and no data: a read waits, and its deadline (the
 * fiber's, or the fd's) ends it on time. */
Test(fifo, a_waiting_read_ends_at_its_deadline_on_time)
{
	struct fifo f;
	int rw, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	struct call c = { .fd = rw, .n = 16 };
	int64_t t0 = gr_now();
	c.deadline = t0 + 100 * MSEC;
	call_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(c.r, -1, "%zd", c.r);
	cr_assert_eq(c.err, ETIMEDOUT, "%s", strerror(c.err));
	cr_assert_geq(c.ended, t0 + 100 * MSEC, "ended %lld ms early",
		      (long long)((t0 + 100 * MSEC - c.ended) / MSEC));
	cr_assert_lt(c.ended, t0 + 300 * MSEC, "ended %lld ms late",
		     (long long)((c.ended - t0 - 100 * MSEC) / MSEC));
	/* A per-fd deadline, the same way. */
	t0 = gr_now();
	assert_ok(gr_fd_set_deadline(rw, GR_FD_READ, t0 + 50 * MSEC));
	c = (struct call){ .fd = rw, .n = 16 };
	call_fiber(&c);
	cr_assert_eq(c.err, ETIMEDOUT, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_lt(c.ended, t0 + 250 * MSEC);
	assert_ok(gr_close(rw));
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

/* What ends a parked reader (a writer present, no data), as for a pipe:
 * a kill (ECANCELED), gr_close (EBADF at once), or a plain close(), which
 * the audit of long waits finds and fails with EBADF within the two epochs
 * (100 ms each) fd.c promises. */
enum ending { KILL, GR_CLOSE, PLAIN_CLOSE };

static void end_a_parked_reader(enum ending how)
{
	static const int expected[] = { [KILL] = ECANCELED, [GR_CLOSE] = EBADF,
					[PLAIN_CLOSE] = EBADF };
	struct fifo f;
	int rw, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	struct call c = { .fd = rw, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *rf = parked(&c);
	int64_t t0 = gr_now();
	if (how == KILL)
		assert_ok(gr_kill(rf));
	else if (how == GR_CLOSE)
		assert_ok(gr_close(rw));
	else
		cr_assert_eq(close(rw), 0); /* behind the runtime's back */
	join_within(rf, 5 * GR_SEC);
	cr_assert_eq(c.r, -1, "%zd", c.r);
	cr_assert_eq(c.err, expected[how], "%s", strerror(c.err));
	cr_assert_lt(c.ended - t0, how == PLAIN_CLOSE ? 400 * MSEC : 100 * MSEC,
		     "ended %lld ms after it was asked to", (long long)((c.ended - t0) / MSEC));
	if (how == KILL)
		assert_ok(gr_close(rw));
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

Test(fifo, a_killed_reader_ends_with_ecanceled)
{
	end_a_parked_reader(KILL);
}

Test(fifo, gr_close_under_a_parked_reader_wakes_it_with_ebadf)
{
	end_a_parked_reader(GR_CLOSE);
}

Test(fifo, a_plain_close_under_a_parked_reader_ends_it_with_ebadf)
{
	end_a_parked_reader(PLAIN_CLOSE);
}

/* The same, and the number is reused at once by a pipe: the read waits on
 * what the number names now and gets its bytes (never a silent hang on
 * the file that is gone). */
Test(fifo, a_plain_close_then_the_number_reused_by_a_pipe_serves_the_pipe)
{
	struct fifo f;
	int rw, wfd;
	int p[2];

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	struct call c = { .fd = rw, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *rf = parked(&c);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(grt_move_fd(p[0], rw), 0); /* closes the FIFO behind our back */
	cr_assert_eq(write(p[1], "pipe", 4), 4);
	int64_t t0 = gr_now();
	join_within(rf, 5 * GR_SEC);
	cr_assert_eq(c.r, 4, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(memcmp(c.buf, "pipe", 4), 0);
	cr_assert_lt(c.ended - t0, 400 * MSEC, "served %lld ms after the bytes came",
		     (long long)((c.ended - t0) / MSEC));
	assert_ok(gr_close(rw));
	assert_ok(gr_close(p[1]));
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

/* The other way round: a pipe the runtime has read (and learnt) is closed
 * with close(), and a FIFO without a writer takes its number. A new read
 * answers as read(2) does, not as the pipe's reads did. */
Test(fifo, a_pipes_number_reused_by_a_fifo_without_writer_reads_end_of_file)
{
	struct fifo f;
	int p[2];

	fifo_make(&f);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	for (int i = 0; i < 3; i++) {
		struct call c = { .fd = p[0], .n = 16 };

		cr_assert_eq(gr_write(p[1], "ab", 2), 2);
		call_now(&c);
		cr_assert_eq(c.r, 2, "%zd (%s)", c.r, strerror(c.err));
	}
	/* Parked once on the pipe, so the runtime has waited on it. */
	struct call w = { .fd = p[0], .n = 16, .deadline = gr_now() + 5 * GR_SEC };
	gr_fiber *wf = parked(&w);
	cr_assert_eq(gr_write(p[1], "c", 1), 1);
	join_within(wf, 5 * GR_SEC);
	cr_assert_eq(w.r, 1);
	cr_assert_eq(grt_move_fd(reader_without_writer(&f, false), p[0]), 0);
	struct call c = { .fd = p[0], .n = 16 };
	call_now(&c);
	cr_assert_eq(c.r, 0, "%zd (%s), where read(2) says 0", c.r, strerror(c.err));
	cr_assert_lt(c.ended - c.began, 500 * MSEC, "answered after %lld ms",
		     (long long)((c.ended - c.began) / MSEC));
	assert_ok(gr_close(p[0]));
	assert_ok(gr_close(p[1]));
	fifo_remove(&f);
}

/* Writes: a full FIFO parks the writer until the reader makes room; the
 * reader gone, a write is EPIPE (SIGPIPE ignored here: a FIFO is not a
 * socket, and write(2) raises it). */
Test(fifo, a_writer_waits_for_room_and_sees_epipe_once_the_reader_left)
{
	struct fifo f;
	static char big[1 << 16];

	cr_assert_neq(signal(SIGPIPE, SIG_IGN), SIG_ERR);
	int rfd, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rfd, &wfd);
	/* Fill it. */
	size_t filled = 0;
	for (;;) {
		struct call c = { .fd = wfd, .write = true, .n = 1 };

		memset(c.buf, 'f', sizeof(c.buf));
		c.n = sizeof(c.buf);
		c.deadline = gr_now() + 50 * MSEC;
		call_fiber(&c);
		gr_deadline_set(GR_FOREVER);
		if (c.r < 0) {
			cr_assert_eq(c.err, ETIMEDOUT, "%s", strerror(c.err));
			break;
		}
		filled += (size_t)c.r;
		cr_assert_lt(filled, (size_t)16 << 20, "the FIFO never filled");
	}
	struct call c = { .fd = wfd, .write = true, .n = 8, .deadline = gr_now() + 10 * GR_SEC };
	memcpy(c.buf, "12345678", 8);
	gr_fiber *wf = parked(&c);
	ssize_t n = gr_read(rfd, big, sizeof(big));
	cr_assert_gt(n, 0, "%s", strerror(errno));
	join_within(wf, 5 * GR_SEC);
	cr_assert_eq(c.r, 8, "%zd (%s)", c.r, strerror(c.err));

	assert_ok(gr_close(rfd));
	c = (struct call){ .fd = wfd, .write = true, .n = 8 };
	call_now(&c);
	cr_assert_eq(c.r, -1);
	cr_assert_eq(c.err, EPIPE, "%s", strerror(c.err));
	assert_answered_at_once(&c, "a FIFO whose reader left");
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

/* What a FIFO's flags become (docs/hubs.md, "Blocking-mode fds"): a FIFO
 * refuses RWF_NOWAIT, so a green call made it O_NONBLOCK, on every hub
 * alike; one the program made non-blocking stays so. */
Test(fifo, a_blocking_fifo_is_made_nonblocking_on_every_hub)
{
	struct fifo f;

	fifo_make(&f);
	int rw = open(f.path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(rw, 0);
	cr_assert(!nonblocking(rw));
	cr_assert_eq(gr_write(rw, "x", 1), 1);
	char b;
	cr_assert_eq(gr_read(rw, &b, 1), 1);
	cr_assert(nonblocking(rw), "a blocking FIFO read through greenring kept blocking");
	assert_ok(gr_close(rw));
	fifo_remove(&f);
}

/* ------------------------------------------------------------ pidfds */

static int pidfd_open_or_skip(pid_t pid)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);

	if (fd < 0)
		cr_skip_test("no pidfd_open here: %s", strerror(errno));
	return fd;
}

/* A pidfd has neither read nor write: both are EINVAL at once, as read(2)
 * and write(2) say, not a wait for the process to end. */
Test(fifo, a_pidfd_read_or_write_fails_at_once_with_einval)
{
	int pfd = pidfd_open_or_skip(getpid());
	char b[8];

	cr_assert_eq(read(pfd, b, 8), -1);
	cr_assert_eq(errno, EINVAL);
	for (int i = 0; i < 4; i++) {
		struct call c = { .fd = pfd, .n = 8, .write = i >= 2, .vectored = i & 1 };

		call_now(&c);
		cr_assert_eq(c.r, -1, "%zd", c.r);
		cr_assert_eq(c.err, EINVAL, "%s %s: %s, where the POSIX call says EINVAL",
			     c.write ? "write" : "read", c.vectored ? "vectored" : "plain",
			     strerror(c.err));
		assert_answered_at_once(&c, "a pidfd");
	}
	assert_ok(gr_close(pfd));
}

/* And a wait for readiness on a pidfd still reports the child's exit. */
Test(fifo, gr_wait_fd_on_a_pidfd_reports_the_childs_exit)
{
	int go[2];
	char b[8];

	cr_assert_eq(pipe2(go, O_CLOEXEC), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char c;

		/* Its own copy of the write end closed: a parent that fails
		 * before its write ends this read with end of file. */
		close(go[1]);
		_exit(read(go[0], &c, 1) == 1 ? 0 : 1);
	}
	int pfd = pidfd_open_or_skip(pid);
	struct call c = { .fd = pfd, .n = 8 };
	call_now(&c);
	cr_assert_eq(c.err, EINVAL, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_wait_fd(pfd, POLLIN, gr_now() + 20 * MSEC), -1, "ready before the exit");
	cr_assert_eq(errno, ETIMEDOUT, "%s", strerror(errno));
	cr_assert_eq(write(go[1], "x", 1), 1);
	cr_assert_eq(gr_wait_fd(pfd, POLLIN, gr_now() + 5 * GR_SEC), 0, "%s", strerror(errno));
	cr_assert_eq(gr_read(pfd, b, 8), -1, "a read after the exit");
	cr_assert_eq(errno, EINVAL);
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child status %d", ws);
	assert_ok(gr_close(pfd));
	close(go[0]);
	close(go[1]);
}

/* ------------------------------------------------------------ others */

/* An epoll fd has neither read nor write either. */
Test(fifo, an_epoll_fd_read_or_write_fails_at_once_with_einval)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);

	cr_assert_geq(ep, 0);
	for (int i = 0; i < 2; i++) {
		struct call c = { .fd = ep, .n = 8, .write = i };

		call_now(&c);
		cr_assert_eq(c.err, EINVAL, "%s: %zd (%s)", i ? "write" : "read", c.r,
			     strerror(c.err));
		assert_answered_at_once(&c, "an epoll fd");
	}
	assert_ok(gr_close(ep));
}

/* A terminal in raw mode with VMIN = VTIME = 0: read(2) of it with no
 * input says 0 at once, though poll(2) does not call it readable. */
Test(fifo, a_terminal_with_vmin_0_reads_0_at_once_and_waits_with_vmin_1)
{
	int m, s;
	struct termios t;

	grt_raw_pty(&m, &s);
	cr_assert_eq(tcgetattr(s, &t), 0);
	t.c_cc[VMIN] = 0;
	t.c_cc[VTIME] = 0;
	cr_assert_eq(tcsetattr(s, TCSANOW, &t), 0);
	struct call c = { .fd = s, .n = 8 };
	call_now(&c);
	cr_assert_eq(c.r, 0, "%zd (%s), where read(2) says 0", c.r, strerror(c.err));
	assert_answered_at_once(&c, "a terminal with VMIN 0");

	/* VMIN = 1: the read waits for a byte, and gets it. */
	t.c_cc[VMIN] = 1;
	cr_assert_eq(tcsetattr(s, TCSANOW, &t), 0);
	c = (struct call){ .fd = s, .n = 8, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *rf = parked(&c);
	cr_assert_eq(gr_write(m, "t", 1), 1);
	join_within(rf, 5 * GR_SEC);
	cr_assert_eq(c.r, 1, "%zd (%s)", c.r, strerror(c.err));
	assert_ok(gr_close(s));
	assert_ok(gr_close(m));
}

/* ------------------------------------------------------------ hostile */

/* Two fibers read one FIFO, and the program clears the O_NONBLOCK the
 * runtime set (a library that "fixes" its fd, fcntl behind the runtime's
 * back). One byte comes: both readers wake, one takes it, and the other
 * must park again, not call a read(2) that now blocks the thread (and
 * every fiber on it) until the next byte. */
Test(fifo, two_readers_and_o_nonblock_cleared_behind_the_back_block_no_thread)
{
	struct fifo f;
	int rw, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	cr_assert(nonblocking(rw), "the runtime did not make the FIFO O_NONBLOCK");
	struct call c1 = { .fd = rw, .n = 1, .deadline = gr_now() + 10 * GR_SEC };
	struct call c2 = c1;
	gr_fiber *f1 = parked(&c1);
	gr_fiber *f2 = parked(&c2);
	cr_assert_eq(fcntl(rw, F_SETFL, fcntl(rw, F_GETFL) & ~O_NONBLOCK), 0);

	struct grt_watchdog w;
	grt_watchdog_start(&w, 2 * GR_SEC, wfd, -1);
	cr_assert_eq(write(wfd, "a", 1), 1);
	int64_t until = gr_now() + 5 * GR_SEC;
	while (!c1.ended && !c2.ended) {
		cr_assert_lt(gr_now(), until, "neither reader got the byte");
		assert_ok(gr_sleep(GR_MSEC));
	}
	/* The test's own fiber runs again with one reader still waiting. */
	bool rescued = grt_watchdog_stop(&w);
	cr_assert(!rescued, "a reader blocked the hub's thread in read(2) for 2 s "
			    "(the FIFO made blocking again behind the runtime's back)");
	cr_assert_eq(gr_write(wfd, "b", 1), 1);
	join_within(f1, 5 * GR_SEC);
	join_within(f2, 5 * GR_SEC);
	cr_assert(c1.r == 1 && c2.r == 1, "%zd (%s), %zd (%s)", c1.r, strerror(c1.err), c2.r,
		  strerror(c2.err));
	assert_ok(gr_close(rw));
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

struct big_write {
	int fd;
	const char *buf;
	size_t n;
	ssize_t r;
	int err;
};

static void *big_write_fiber(void *arg)
{
	struct big_write *bw = arg;

	gr_deadline_set(gr_now() + 10 * GR_SEC);
	bw->r = gr_write(bw->fd, bw->buf, bw->n);
	bw->err = bw->r < 0 ? errno : 0;
	return NULL;
}

/* A write parked on a full FIFO, and the number is reused (dup2) by a
 * blocking pipe's write end with room for less than the write: the write
 * goes on on the pipe (the audit of long waits), and takes what the pipe
 * takes, as gr_write on a blocking pipe does; it must not become a
 * write(2) that blocks the thread until a reader takes it all. */
Test(fifo, a_parked_write_whose_number_is_reused_by_a_blocking_pipe_blocks_no_thread)
{
	static char big[256 << 10];
	struct fifo f;
	int rfd, wfd;
	int p[2];

	cr_assert_neq(signal(SIGPIPE, SIG_IGN), SIG_ERR);
	fifo_make(&f);
	reader_then_writer(&f, &rfd, &wfd);
	for (;;) {
		int64_t d = gr_now() + 50 * MSEC;

		gr_deadline_set(d);
		ssize_t n = gr_write(wfd, big, sizeof(big));
		int err = errno;
		gr_deadline_set(GR_FOREVER);
		if (n < 0) {
			cr_assert_eq(err, ETIMEDOUT, "%s", strerror(err));
			break;
		}
	}
	struct big_write bw = { .fd = wfd, .buf = big, .n = sizeof(big), .r = 1 };
	gr_fiber *wf = gr_spawn(big_write_fiber, &bw);
	cr_assert_not_null(wf);
	assert_ok(gr_sleep(2 * MSEC));
	cr_assert_eq(bw.r, 1, "the write returned %zd (%s) instead of waiting", bw.r,
		     strerror(bw.err));
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(grt_move_fd(p[1], wfd), 0);
	struct grt_watchdog w;
	grt_watchdog_start(&w, 3 * GR_SEC, -1, p[0]);
	join_within(wf, 5 * GR_SEC);
	bool rescued = grt_watchdog_stop(&w);
	cr_assert(!rescued, "the write blocked the hub's thread in write(2) for 3 s "
			    "(the number now names a blocking pipe)");
	cr_assert_gt(bw.r, 0, "%zd (%s)", bw.r, strerror(bw.err));
	cr_assert_lt(bw.r, (ssize_t)sizeof(big), "the pipe took all %zd bytes", bw.r);
	assert_ok(gr_close(rfd));
	assert_ok(gr_close(wfd));
	assert_ok(gr_close(p[0]));
	fifo_remove(&f);
}

/* A read parked on `fd` (a FIFO with a writer, or a pipe), and the number
 * reused behind the runtime's back (dup2) by a FIFO no writer has opened:
 * the read, which waits on what the number names now, must find what
 * read(2) says of it, end of file, within the audit of long waits, not
 * wait for a readiness that never comes. */
static void parked_read_then_reused_by_a_fifo_without_writer(int fd)
{
	struct fifo g;

	fifo_make(&g);
	struct call c = { .fd = fd, .n = 16, .deadline = gr_now() + 5 * GR_SEC };
	gr_fiber *rf = parked(&c);
	int64_t t0 = gr_now();
	cr_assert_eq(grt_move_fd(reader_without_writer(&g, false), fd), 0);
	join_within(rf, 6 * GR_SEC);
	cr_assert_eq(c.r, 0, "%zd (%s) after %lld ms, where read(2) says 0 at once", c.r,
		     strerror(c.err), (long long)((c.ended - t0) / MSEC));
	cr_assert_lt(c.ended - t0, GR_SEC, "end of file after %lld ms",
		     (long long)((c.ended - t0) / MSEC));
	assert_ok(gr_close(fd));
	fifo_remove(&g);
}

Test(fifo, a_parked_fifo_read_whose_number_is_reused_by_a_fifo_without_writer_ends)
{
	struct fifo f;
	int rw, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	parked_read_then_reused_by_a_fifo_without_writer(rw);
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}

/* A pipe the runtime has written and read: it has learnt that the pipe
 * takes RWF_NOWAIT both ways (on io_uring its calls go to the ring). */
static void learnt_pipe(int p[2])
{
	char b[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(gr_write(p[1], "ab", 2), 2);
	cr_assert_eq(gr_read(p[0], b, 2), 2);
}

Test(fifo, a_parked_pipe_read_whose_number_is_reused_by_a_fifo_without_writer_ends)
{
	int p[2];

	learnt_pipe(p);
	parked_read_then_reused_by_a_fifo_without_writer(p[0]);
	assert_ok(gr_close(p[1]));
}

/* A learnt pipe's number reused by a pidfd with no call parked: a read
 * and a write say EINVAL, as read(2) and write(2) do, within the audit. */
Test(fifo, a_learnt_pipes_number_reused_by_a_pidfd_fails_with_einval)
{
	int p[2];

	learnt_pipe(p);
	cr_assert_eq(grt_move_fd(pidfd_open_or_skip(getpid()), p[0]), 0);
	cr_assert_eq(grt_move_fd(dup(p[0]), p[1]), 0);
	for (int i = 0; i < 2; i++) {
		struct call c = { .fd = p[i], .n = 2, .write = i == 1 };

		call_now(&c);
		cr_assert_eq(c.err, EINVAL, "%s: %zd (%s)", i ? "write" : "read", c.r,
			     strerror(c.err));
		cr_assert_lt(c.ended - c.began, 500 * MSEC, "answered after %lld ms",
			     (long long)((c.ended - c.began) / MSEC));
	}
	assert_ok(gr_close(p[0]));
	assert_ok(gr_close(p[1]));
}

/* The same with an eventfd (whose read takes RWF_NOWAIT, and whose write
 * refuses it): a write of a count adds it, a read takes it back. */
Test(fifo, a_learnt_pipes_number_reused_by_an_eventfd_counts)
{
	int p[2];

	learnt_pipe(p);
	int ev = eventfd(0, EFD_CLOEXEC);
	cr_assert_geq(ev, 0);
	cr_assert_eq(grt_move_fd(dup(ev), p[0]), 0);
	cr_assert_eq(grt_move_fd(ev, p[1]), 0);
	uint64_t v = 5;
	int64_t t0 = gr_now();
	gr_deadline_set(t0 + GR_SEC);
	cr_assert_eq(gr_write(p[1], &v, sizeof(v)), (ssize_t)sizeof(v), "%s", strerror(errno));
	v = 0;
	cr_assert_eq(gr_read(p[0], &v, sizeof(v)), (ssize_t)sizeof(v), "%s", strerror(errno));
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(v, 5);
	cr_assert_lt(gr_now() - t0, 500 * MSEC);
	assert_ok(gr_close(p[0]));
	assert_ok(gr_close(p[1]));
}

/* Two readers of one FIFO: one killed, the other's deadline passes; each
 * ends as asked, on time, and the byte written next goes to the next
 * read whole (neither ended reader took it). */
Test(fifo, two_readers_one_killed_one_timed_out_lose_no_byte)
{
	struct fifo f;
	int rw, wfd;

	fifo_make(&f);
	reader_then_writer(&f, &rw, &wfd);
	struct call k = { .fd = rw, .n = 4, .deadline = gr_now() + 10 * GR_SEC };
	struct call t = { .fd = rw, .n = 4, .deadline = gr_now() + 100 * MSEC };
	gr_fiber *kf = parked(&k);
	gr_fiber *tf = parked(&t);
	assert_ok(gr_kill(kf));
	join_within(kf, GR_SEC);
	join_within(tf, GR_SEC);
	cr_assert_eq(k.err, ECANCELED, "%zd (%s)", k.r, strerror(k.err));
	cr_assert_eq(t.err, ETIMEDOUT, "%zd (%s)", t.r, strerror(t.err));
	cr_assert_lt(t.ended - t.began, 400 * MSEC);
	cr_assert_eq(write(wfd, "abcd", 4), 4);
	struct call c = { .fd = rw, .n = 4 };
	call_now(&c);
	cr_assert_eq(c.r, 4, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(memcmp(c.buf, "abcd", 4), 0);
	assert_ok(gr_close(rw));
	assert_ok(gr_close(wfd));
	fifo_remove(&f);
}
