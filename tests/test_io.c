/* test_io.c — the drop-in green calls: pipes, files, sockets, accept and
 * connect, gr_wait_fd, deadlines, gr_close under waiters, several waiters on
 * one fd, misuse (bad fds, NULL pointers). Runs once per hub. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(io);

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
static int running_on_valgrind(void)
{
	return RUNNING_ON_VALGRIND;
}
#else
static int running_on_valgrind(void)
{
	return 0;
}
#endif

#define SLACK (50 * GR_MSEC)

static void make_pipe(int p[2])
{
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
}

static void make_socketpair(int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void close_pair(int p[2])
{
	cr_assert_eq(close(p[0]), 0);
	cr_assert_eq(close(p[1]), 0);
}

/* An fd number that is certainly not open right now. */
static int closed_fd(void)
{
	int p[2];

	make_pipe(p);
	close_pair(p);
	return p[0];
}

/* ------------------------------------------------------------ pipes and files */

struct rw {
	int fd;
	char buf[256];
	ssize_t n;
	int err;
};

static void *reader(void *arg)
{
	struct rw *r = arg;

	r->n = gr_read(r->fd, r->buf, sizeof(r->buf));
	r->err = r->n < 0 ? errno : 0;
	return NULL;
}

Test(io, read_and_write_on_a_pipe)
{
	int p[2];
	struct rw r = { 0 };

	make_pipe(p);
	r.fd = p[0];
	gr_fiber *f = gr_spawn(reader, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(r.n, 0, "the reader did not wait for data");
	cr_assert_eq(gr_write(p[1], "hello", 5), 5);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.n, 5, "gr_read: %zd (%s)", r.n, strerror(r.err));
	cr_assert_eq(memcmp(r.buf, "hello", 5), 0);
	/* The wait left the pipe as it was: blocking (the readiness hubs try
	 * the read with RWF_NOWAIT; the flag belongs to the open file, which
	 * a shell or a child may share). */
	cr_assert_eq(fcntl(p[0], F_GETFL) & O_NONBLOCK, 0, "the read end was made O_NONBLOCK");
	/* EOF once the writer is gone. */
	cr_assert_eq(close(p[1]), 0);
	char c;
	cr_assert_eq(gr_read(p[0], &c, 1), 0);
	cr_assert_eq(close(p[0]), 0);
}

Test(io, zero_length_read_and_write)
{
	int p[2];
	char c;

	make_pipe(p);
	cr_assert_eq(gr_write(p[1], "", 0), 0);
	cr_assert_eq(gr_write(p[1], "x", 1), 1);
	cr_assert_eq(gr_read(p[0], &c, 0), 0);
	cr_assert_eq(gr_read(p[0], &c, 1), 1);
	cr_assert_eq(c, 'x');
	close_pair(p);
}

Test(io, readv_and_writev_on_a_pipe)
{
	int p[2];
	char a[3] = "abc", b[4] = "defg", x[2], y[5];
	struct iovec out[2] = { { a, 3 }, { b, 4 } };
	struct iovec in[2] = { { x, 2 }, { y, 5 } };

	make_pipe(p);
	cr_assert_eq(gr_writev(p[1], out, 2), 7);
	cr_assert_eq(gr_readv(p[0], in, 2), 7);
	cr_assert_eq(memcmp(x, "ab", 2), 0);
	cr_assert_eq(memcmp(y, "cdefg", 5), 0);
	cr_assert_eq(gr_writev(p[1], out, 0), 0);
	close_pair(p);
}

Test(io, pread_and_pwrite_on_a_file)
{
	char path[] = "/tmp/greenring-test-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	char buf[16] = { 0 };
	struct stat st;

	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(gr_pwrite(fd, "0123456789", 10, 100), 10);
	cr_assert_eq(gr_pwrite(fd, "AB", 2, 103), 2);
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_size, 110);
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), 0, "pwrite moved the file position");
	cr_assert_eq(gr_pread(fd, buf, 10, 100), 10);
	cr_assert_eq(memcmp(buf, "012AB56789", 10), 0);
	cr_assert_eq(gr_pread(fd, buf, 16, 108), 2, "short read at the end");
	cr_assert_eq(gr_pread(fd, buf, 16, 4096), 0, "read past the end");
	/* Positional calls on a file position that the plain calls use. */
	cr_assert_eq(gr_write(fd, "head", 4), 4);
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), 4);
	cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
	cr_assert_eq(gr_read(fd, buf, 4), 4);
	cr_assert_eq(memcmp(buf, "head", 4), 0);
	struct iovec iov[2] = { { buf, 2 }, { buf + 2, 2 } };
	cr_assert_eq(lseek(fd, 100, SEEK_SET), 100);
	cr_assert_eq(gr_readv(fd, iov, 2), 4);
	cr_assert_eq(memcmp(buf, "012A", 4), 0);
	/* Negative offsets are refused. */
	errno = 0;
	cr_assert_eq(gr_pread(fd, buf, 1, -1), -1);
	cr_assert_eq(errno, EINVAL);
	errno = 0;
	cr_assert_eq(gr_pwrite(fd, buf, 1, -5), -1);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_close(fd), 0);
}

/* Read fd until end of file or `max` bytes; check they are data's prefix.
 * The count read. */
static size_t drain_and_check(int fd, const unsigned char *data, size_t max)
{
	unsigned char buf[7000];
	size_t have = 0;

	while (have < max) {
		size_t want = max - have < sizeof(buf) ? max - have : sizeof(buf);
		ssize_t n = gr_read(fd, buf, want);

		cr_assert_geq(n, 0, "read at %zu: %s", have, strerror(errno));
		if (n == 0)
			break;
		cr_assert_eq(memcmp(buf, data + have, (size_t)n), 0, "the bytes at %zu differ", have);
		have += (size_t)n;
	}
	return have;
}

static unsigned char *pattern(size_t n)
{
	unsigned char *d = malloc(n);

	cr_assert(d);
	for (size_t i = 0; i < n; i++)
		d[i] = (unsigned char)(i * 131 + (i >> 9));
	return d;
}

struct bulk {
	int fd;
	size_t total;
	unsigned char *data;
	size_t done;
	int err;
};

static void *bulk_writer(void *arg)
{
	struct bulk *b = arg;

	while (b->done < b->total) {
		ssize_t n = gr_write(b->fd, b->data + b->done, b->total - b->done);

		if (n <= 0) {
			b->err = errno;
			break;
		}
		b->done += (size_t)n;
	}
	return NULL;
}

Test(io, a_large_transfer_through_a_pipe_with_partial_writes)
{
	enum { TOTAL = 1 << 20 };
	int p[2];
	struct bulk b = { .total = TOTAL };

	make_pipe(p);
	b.fd = p[1];
	b.data = pattern(TOTAL);
	gr_fiber *w = gr_spawn(bulk_writer, &b);
	cr_assert_eq(drain_and_check(p[0], b.data, TOTAL), TOTAL, "the pipe ended early");
	cr_assert_eq(gr_join(w, NULL, GR_FOREVER), 0);
	cr_assert_eq(b.err, 0, "writer: %s", strerror(b.err));
	free(b.data);
	close_pair(p);
}

/* ------------------------------------------------------------ sockets */

Test(io, recv_and_send_on_a_socketpair)
{
	int sv[2];
	char buf[16];

	make_socketpair(sv);
	cr_assert_eq(gr_send(sv[0], "ping", 4, 0), 4);
	cr_assert_eq(gr_recv(sv[1], buf, sizeof(buf), 0), 4);
	cr_assert_eq(memcmp(buf, "ping", 4), 0);
	/* Flags are passed through: MSG_PEEK leaves the data. */
	cr_assert_eq(gr_send(sv[1], "pong", 4, 0), 4);
	cr_assert_eq(gr_recv(sv[0], buf, sizeof(buf), MSG_PEEK), 4);
	cr_assert_eq(gr_recv(sv[0], buf, 2, 0), 2);
	cr_assert_eq(gr_recv(sv[0], buf + 2, 2, MSG_WAITALL), 2);
	cr_assert_eq(memcmp(buf, "pong", 4), 0);
	/* A closed peer: EOF, and send fails with EPIPE instead of a SIGPIPE. */
	cr_assert_eq(close(sv[1]), 0);
	cr_assert_eq(gr_recv(sv[0], buf, sizeof(buf), 0), 0);
	errno = 0;
	cr_assert_eq(gr_send(sv[0], "x", 1, 0), -1, "send to a closed peer");
	cr_assert_eq(errno, EPIPE, "send to a closed peer: %s", strerror(errno));
	cr_assert_eq(close(sv[0]), 0);
}

/* A send (or a write on a socket) the socket takes at once, made with
 * nothing else to run and nothing queued for the backend: on every hub
 * the call itself, with no
 * operation handed to the backend and no turn of the loop (io_uring queued
 * an SQE and entered the kernel for it alone, then switched the fiber out
 * and back). Its result and errors are the call's: EPIPE, never SIGPIPE. */
Test(io, a_send_with_nothing_else_to_run_is_the_call_itself_on_every_hub)
{
	int sv[2];
	char buf[12];
	struct gr_hub_counters before, after;

	make_socketpair(sv);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* the hub, and a wait since anything was queued */
	cr_assert_eq(gr_hub_counters(&before, sizeof(before)), 0);
	cr_assert_eq(gr_send(sv[0], "ping", 4, 0), 4);
	struct msghdr m = { .msg_iov = &(struct iovec){ "pong", 4 }, .msg_iovlen = 1 };
	cr_assert_eq(gr_sendmsg(sv[0], &m, 0), 4);
	cr_assert_eq(gr_write(sv[0], "ping", 4), 4); /* a write on a socket is a send */
	cr_assert_eq(gr_hub_counters(&after, sizeof(after)), 0);
	cr_assert_eq(after.submitted[GR_OP_SEND], before.submitted[GR_OP_SEND],
		     "the send was handed to the %s backend", grt_hub());
	cr_assert_eq(after.submitted[GR_OP_SENDMSG], before.submitted[GR_OP_SENDMSG],
		     "the sendmsg was handed to the %s backend", grt_hub());
	cr_assert_eq(after.submitted[GR_OP_WRITE], before.submitted[GR_OP_WRITE],
		     "the write was handed to the %s backend", grt_hub());
	cr_assert_eq(after.turns, before.turns, "the sends took %llu turns of the loop",
		     (unsigned long long)(after.turns - before.turns));
	cr_assert_eq(gr_recv(sv[1], buf, sizeof(buf), MSG_WAITALL), 12);
	cr_assert_eq(memcmp(buf, "pingpongping", 12), 0);
	cr_assert_eq(close(sv[1]), 0);
	errno = 0;
	cr_assert_eq(gr_send(sv[0], "x", 1, 0), -1, "send to a closed peer");
	cr_assert_eq(errno, EPIPE, "send to a closed peer: %s", strerror(errno));
	cr_assert_eq(close(sv[0]), 0);
}

/* A number known as a socket, closed with plain close() and reused by a
 * pipe: a gr_write on it, made with nothing else to run (on io_uring a
 * send tried at once, which the pipe answers with ENOTSOCK), writes the
 * pipe. */
Test(io, a_write_on_a_socket_number_reused_by_a_pipe_writes_the_pipe)
{
	int sv[2], p[2];
	char buf[8];

	make_socketpair(sv);
	cr_assert_eq(gr_write(sv[0], "old", 3), 3); /* the number is a socket */
	cr_assert_eq(gr_recv(sv[1], buf, sizeof(buf), 0), 3);
	int num = sv[0];
	make_pipe(p);
	cr_assert_eq(close(num), 0); /* behind the runtime's back */
	cr_assert_eq(dup3(p[1], num, O_CLOEXEC), num);
	cr_assert_eq(close(p[1]), 0);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* nothing queued, nothing else runnable */
	cr_assert_eq(gr_write(num, "NEW", 3), 3, "gr_write: %s", strerror(errno));
	cr_assert_eq(read(p[0], buf, sizeof(buf)), 3);
	cr_assert_eq(memcmp(buf, "NEW", 3), 0);
	cr_assert_eq(gr_close(num), 0);
	cr_assert_eq(close(p[0]), 0);
	cr_assert_eq(close(sv[1]), 0);
}

/* A send made by a fiber alone (on io_uring, tried at once, before any
 * park), after its kill, past its own deadline (1, and 0) or past the
 * fd's write deadline. */
struct gated_send {
	int fd;
	int how;                    /* 0 killed, 1 and 2 the fiber's deadline, 3 the fd's */
	ssize_t r;
	int err;
};

static void *gated_sender(void *arg)
{
	struct gated_send *g = arg;

	(void)gr_sleep(g->how == 0 ? 5 * GR_SEC : GR_MSEC); /* killed in it: how 0 */
	if (g->how == 1 || g->how == 2)
		gr_deadline_set(g->how == 1 ? 1 : 0);
	if (g->how == 3)
		gr_fd_set_deadline(g->fd, GR_FD_WRITE, 0);
	errno = 0;
	g->r = gr_send(g->fd, "x", 1, 0);
	g->err = errno;
	gr_deadline_set(GR_FOREVER);
	return NULL;
}

/* The send tried at once is made behind the gate: a killed fiber's, or
 * one past its deadline or its fd's, fails and sends nothing, as a send
 * that parks does. Found nothing (adversarial review). */
Test(io, a_send_tried_at_once_honours_kills_and_deadlines_and_sends_nothing)
{
	static const int want[] = { ECANCELED, ETIMEDOUT, ETIMEDOUT, ETIMEDOUT };

	for (int how = 0; how < 4; how++) {
		int sv[2];

		make_socketpair(sv);
		struct gated_send g = { .fd = sv[0], .how = how };
		gr_fiber *f = gr_spawn(gated_sender, &g);
		cr_assert_eq(gr_sleep(0), 0); /* f sleeps */
		if (how == 0)
			cr_assert_eq(gr_kill(f), 0);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(g.r, -1, "case %d: gr_send returned %zd", how, g.r);
		cr_assert_eq(g.err, want[how], "case %d: %s", how, strerror(g.err));
		cr_assert_eq(grt_drain_now(sv[1]), 0, "case %d: the byte went out", how);
		cr_assert_eq(gr_close(sv[0]), 0);
		cr_assert_eq(close(sv[1]), 0);
	}
}

/* Sends that succeed at once leave errno as their caller had it, and a
 * socket shut down for writing answers every kind of write with EPIPE,
 * never SIGPIPE (at its default disposition here: it would kill the
 * test). Found nothing (adversarial review). */
Test(io, sends_at_once_keep_errno_and_a_shut_down_socket_is_epipe)
{
	int sv[2];
	struct msghdr m = { .msg_iov = &(struct iovec){ "cd", 2 }, .msg_iovlen = 1 };
	struct iovec iv = { "gh", 2 };

	signal(SIGPIPE, SIG_DFL);
	make_socketpair(sv);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* nothing queued, nothing else runnable */
	errno = 4242;
	cr_assert_eq(gr_send(sv[0], "ab", 2, 0), 2);
	cr_assert_eq(gr_sendmsg(sv[0], &m, 0), 2);
	cr_assert_eq(gr_write(sv[0], "ef", 2), 2);
	cr_assert_eq(gr_writev(sv[0], &iv, 1), 2);
	cr_assert_eq(errno, 4242, "errno: %s", strerror(errno));
	cr_assert_eq(grt_drain_now(sv[1]), 8);
	cr_assert_eq(shutdown(sv[0], SHUT_WR), 0);
	errno = 0;
	cr_assert_eq(gr_send(sv[0], "ab", 2, 0), -1);
	cr_assert_eq(errno, EPIPE, "gr_send: %s", strerror(errno));
	cr_assert_eq(gr_sendmsg(sv[0], &m, 0), -1);
	cr_assert_eq(errno, EPIPE, "gr_sendmsg: %s", strerror(errno));
	cr_assert_eq(gr_write(sv[0], "ef", 2), -1);
	cr_assert_eq(errno, EPIPE, "gr_write: %s", strerror(errno));
	cr_assert_eq(gr_writev(sv[0], &iv, 1), -1);
	cr_assert_eq(errno, EPIPE, "gr_writev: %s", strerror(errno));
	cr_assert_eq(gr_send_all(sv[0], "ij", 2, 0), -1);
	cr_assert_eq(errno, EPIPE, "gr_send_all: %s", strerror(errno));
	cr_assert_eq(gr_write_all(sv[0], "kl", 2), -1);
	cr_assert_eq(errno, EPIPE, "gr_write_all: %s", strerror(errno));
	close_pair(sv);
}

/* A reader that starts after 30 ms and reads `want` bytes. */
struct late_reader {
	int fd;
	size_t want, got;
};

static void *read_later(void *arg)
{
	struct late_reader *l = arg;
	static char buf[16384]; /* one fiber at a time: static, off the stack */

	(void)gr_sleep(30 * GR_MSEC);
	while (l->got < l->want) {
		ssize_t r = gr_recv(l->fd, buf, sizeof(buf), 0);

		if (r <= 0)
			break;
		l->got += (size_t)r;
	}
	return NULL;
}

/* A socket the program made O_NONBLOCK, its buffer full: a send from a
 * fiber alone (on io_uring, tried at once, EAGAIN, then an SQE that the
 * kernel answers EAGAIN too) waits until the reader makes room, on every
 * hub, and leaves the flag alone. Found nothing (adversarial review). */
Test(io, a_send_on_a_full_socket_the_program_made_nonblocking_waits)
{
	int sv[2];
	char chunk[4096];
	size_t filled = 0;
	ssize_t r;

	memset(chunk, 'z', sizeof(chunk));
	make_socketpair(sv);
	cr_assert_eq(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK), 0);
	while ((r = send(sv[0], chunk, sizeof(chunk), MSG_DONTWAIT)) > 0)
		filled += (size_t)r;
	struct late_reader l = { .fd = sv[1], .want = filled + 3 * sizeof(chunk) };
	gr_fiber *f = gr_spawn(read_later, &l);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* the reader sleeps; nothing queued */
	int64_t t0 = gr_now();
	errno = 0;
	cr_assert_eq(gr_send(sv[0], chunk, sizeof(chunk), 0), (ssize_t)sizeof(chunk), "gr_send: %s",
		     strerror(errno));
	cr_assert_geq(gr_now() - t0, 10 * GR_MSEC, "the send did not wait for room");
	cr_assert_eq(gr_write_all(sv[0], chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
	struct msghdr m = { .msg_iov = &(struct iovec){ chunk, sizeof(chunk) }, .msg_iovlen = 1 };
	cr_assert_eq(gr_sendmsg(sv[0], &m, 0), (ssize_t)sizeof(chunk));
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(l.got, l.want);
	cr_assert(fcntl(sv[0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK was cleared");
	close_pair(sv);
}

/* ------------------------------------------------------------ whole writes */

/* gr_send_all or gr_write_all of `total` bytes, from a fiber. */
struct whole {
	int fd;
	bool send;                  /* gr_send_all, else gr_write_all */
	const unsigned char *data;
	size_t total;
	int64_t deadline;           /* the writer's own, through gr_deadline_set */
	ssize_t rc;
	int err;
};

static void *whole_writer(void *arg)
{
	struct whole *w = arg;

	if (w->deadline)
		gr_deadline_set(w->deadline);
	errno = 0;
	w->rc = w->send ? gr_send_all(w->fd, w->data, w->total, 0) : gr_write_all(w->fd, w->data, w->total);
	w->err = errno;
	return NULL;
}

/* A pipe, and a socket pair whose sv[0] sends through a small buffer. */
static void make_small_buffers(int p[2], int sv[2])
{
	int small = 4096;

	make_pipe(p);
	make_socketpair(sv);
	cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
}

/* Far more than the pipe or a small socket buffer holds: each whole write
 * takes many turns and returns every byte, where one gr_send or gr_write
 * returns what the buffer took. */
Test(io, send_all_and_write_all_move_every_byte_past_full_buffers)
{
	enum { TOTAL = 1 << 20 };
	unsigned char *data = pattern(TOTAL);
	int p[2], sv[2];

	make_small_buffers(p, sv);
	struct whole wp = { .fd = p[1], .data = data, .total = TOTAL };
	struct whole ws = { .fd = sv[0], .send = true, .data = data, .total = TOTAL };
	gr_fiber *fp = gr_spawn(whole_writer, &wp), *fs = gr_spawn(whole_writer, &ws);
	cr_assert_eq(drain_and_check(p[0], data, TOTAL), TOTAL);
	cr_assert_eq(drain_and_check(sv[1], data, TOTAL), TOTAL);
	cr_assert_eq(gr_join(fp, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(fs, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(wp.rc, TOTAL, "gr_write_all: %zd (%s)", wp.rc, strerror(wp.err));
	cr_assert_eq(ws.rc, TOTAL, "gr_send_all: %zd (%s)", ws.rc, strerror(ws.err));
	close_pair(p);
	close_pair(sv);
	free(data);
}

/* A whole write that a kill or a deadline stops returns the bytes that went
 * out, errno saying why: the reader gets exactly that many, nothing is lost
 * or counted twice. */
Test(io, a_whole_write_stopped_by_a_kill_or_a_deadline_returns_what_went_out)
{
	enum { TOTAL = 1 << 20 };
	unsigned char *data = pattern(TOTAL);
	int p[2], sv[2];

	make_small_buffers(p, sv);
	struct whole killed = { .fd = p[1], .data = data, .total = TOTAL };
	struct whole timed = { .fd = sv[0], .send = true, .data = data, .total = TOTAL,
			       .deadline = gr_now() + 100 * GR_MSEC };
	gr_fiber *fk = gr_spawn(whole_writer, &killed), *ft = gr_spawn(whole_writer, &timed);
	/* Both fill their buffer and park: nobody reads yet. */
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(gr_kill(fk), 0);
	cr_assert_eq(gr_join(fk, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(ft, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(killed.err, ECANCELED, "killed: %s", strerror(killed.err));
	cr_assert_eq(timed.err, ETIMEDOUT, "timed: %s", strerror(timed.err));
	cr_assert(killed.rc > 0 && killed.rc < TOTAL, "killed: %zd (the pipe took some, not all)", killed.rc);
	cr_assert(timed.rc > 0 && timed.rc < TOTAL, "timed: %zd (the socket took some, not all)", timed.rc);
	cr_assert_eq(close(p[1]), 0);
	cr_assert_eq(close(sv[0]), 0);
	cr_assert_eq(drain_and_check(p[0], data, TOTAL), (size_t)killed.rc);
	cr_assert_eq(drain_and_check(sv[1], data, TOTAL), (size_t)timed.rc);
	cr_assert_eq(close(p[0]), 0);
	cr_assert_eq(close(sv[1]), 0);
	free(data);
}

/* The peer goes away mid-way: EPIPE or ECONNRESET, never SIGPIPE, and the
 * count says what went out before. */
Test(io, a_whole_send_to_a_peer_that_goes_away_fails_without_sigpipe)
{
	enum { TOTAL = 1 << 20, TAKEN = 10000 };
	unsigned char *data = pattern(TOTAL);
	int sv[2], small = 4096;

	make_socketpair(sv);
	cr_assert_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	struct whole w = { .fd = sv[0], .send = true, .data = data, .total = TOTAL };
	gr_fiber *f = gr_spawn(whole_writer, &w);
	cr_assert_eq(drain_and_check(sv[1], data, TAKEN), TAKEN);
	cr_assert_eq(close(sv[1]), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert(w.err == EPIPE || w.err == ECONNRESET, "%s", strerror(w.err));
	cr_assert(w.rc >= TAKEN && w.rc < TOTAL, "%zd", w.rc);
	cr_assert_eq(close(sv[0]), 0);
	free(data);
}

/* Between two calls of a whole write another fiber gr_closes the fd and a
 * new file takes the number. The whole write must stop there (EBADF, the
 * count of what reached the first file), never send the rest into the new
 * file. The window is a yield between two calls: with GREENRING_IO_BUDGET=1
 * every call ends with one, so the test runs in a fork child whose fresh hub
 * reads that budget. */
struct reuse {
	int fd;                     /* the number the whole write uses */
	int old_peer;               /* reads the first file: FIONREAD > 0 once a call moved bytes */
	bool send;                  /* the new file is a socket (else a pipe) */
	int new_peer;               /* reads the file that took the number */
	int closed;                 /* gr_close's result */
	const char *failed;         /* why the closer gave up, NULL if it did its part */
};

static void *close_and_reuse(void *arg)
{
	struct reuse *r = arg;
	int queued = 0;

	/* Until the writer's first call has moved bytes: the writer runs
	 * first, and a call that moved them ends with a yield (the budget of
	 * 1), so this runs between its two calls. */
	for (int i = 0; i < 100000; i++) {
		if (ioctl(r->old_peer, FIONREAD, &queued) == 0 && queued > 0)
			break;
		gr_sleep(0);
	}
	if (queued == 0) {
		r->failed = "the whole write never moved a byte";
		return NULL;
	}
	/* The new file is made first, so that none of its numbers is the one
	 * closed: its writing end then takes that number, its reader stays. */
	int pair[2];
	if (r->send ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) : pipe2(pair, O_CLOEXEC)) {
		r->failed = "no new file";
		return NULL;
	}
	r->closed = gr_close(r->fd);
	/* A pipe's write end is pair[1]; either end of a socket pair writes. */
	if (grt_move_fd(r->send ? pair[0] : pair[1], r->fd) != 0) {
		r->failed = "the new file could not take the number";
		return NULL;
	}
	r->new_peer = r->send ? pair[1] : pair[0];
	return NULL;
}

static void whole_write_across_a_reuse(bool send)
{
	enum { TOTAL = 96 * 1024 };
	unsigned char *data = pattern(TOTAL);
	int old[2], small = 4096;

	if (send ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, old) : pipe2(old, O_CLOEXEC))
		grt_child_exit("pair: %s", strerror(errno));
	if (send && setsockopt(old[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)))
		grt_child_exit("SO_SNDBUF: %s", strerror(errno));
	int wfd = send ? old[0] : old[1], rfd = send ? old[1] : old[0];
	struct whole w = { .fd = wfd, .send = send, .data = data, .total = TOTAL,
			   .deadline = gr_now() + 5 * GR_SEC };
	struct reuse r = { .fd = wfd, .old_peer = rfd, .send = send, .new_peer = -1 };
	gr_fiber *fw = gr_spawn(whole_writer, &w), *fr = gr_spawn(close_and_reuse, &r);
	if (!fw || !fr || gr_join(fw, NULL, gr_now() + 10 * GR_SEC) || gr_join(fr, NULL, gr_now() + 10 * GR_SEC))
		grt_child_exit("%s: the fibers did not end", send ? "send" : "write");
	if (r.failed)
		grt_child_exit("%s: %s", send ? "send" : "write", r.failed);
	int old_bytes = -1, new_bytes = -1;
	ioctl(rfd, FIONREAD, &old_bytes);
	ioctl(r.new_peer, FIONREAD, &new_bytes);
	if (r.closed != 0)
		grt_child_exit("%s: gr_close: %s", send ? "send" : "write", strerror(errno));
	if (new_bytes != 0)
		grt_child_exit("%s: %d bytes went into the file that took the number (returned %zd, %s)",
			       send ? "gr_send_all" : "gr_write_all", new_bytes, w.rc, strerror(w.err));
	if (w.rc != old_bytes || w.err != EBADF)
		grt_child_exit("%s: returned %zd (%s), the first file got %d",
			       send ? "gr_send_all" : "gr_write_all", w.rc, strerror(w.err), old_bytes);
	close(wfd);
	close(rfd);
	close(r.new_peer);
	free(data);
}

/* The same across threads: thread A's fiber is between two calls of a
 * whole write (A's thread held in read(2) by another of its fibers), and
 * this thread gr_closes the fd and puts a new file on the number. A call
 * that never waited has listed nothing on the fd, so unless the whole write
 * told the record it uses the fd, the close would not reach A's hub. */
struct remote_reuse {
	int fd, old_peer;
	int go[2];                  /* A's blocker reads it */
	atomic_int between, closed;
	int close_rc;
	struct whole w;
	const char *failed;
};

static void *block_between_calls(void *arg)
{
	struct remote_reuse *rr = arg;
	int queued = 0;
	char c;

	for (int i = 0; i < 100000; i++) {
		if (ioctl(rr->old_peer, FIONREAD, &queued) == 0 && queued > 0)
			break;
		gr_sleep(0);
	}
	atomic_store(&rr->between, queued > 0 ? 1 : -1);
	if (read(rr->go[0], &c, 1) != 1)
		rr->failed = "the blocker's read";
	return NULL;
}

static void *remote_writer_thread(void *arg)
{
	struct remote_reuse *rr = arg;

	if (gr_hub_use(grt_hub()) < 0) {
		rr->failed = "A's hub";
		atomic_store(&rr->between, -1);
		return NULL;
	}
	gr_fiber *fw = gr_spawn(whole_writer, &rr->w), *fb = gr_spawn(block_between_calls, rr);
	if (!fw || !fb || gr_join(fw, NULL, gr_now() + 10 * GR_SEC) || gr_join(fb, NULL, gr_now() + 10 * GR_SEC))
		rr->failed = "A's fibers did not end";
	return NULL;
}

static void *remote_closer_thread(void *arg)
{
	struct remote_reuse *rr = arg;

	rr->close_rc = gr_close(rr->fd);
	atomic_store(&rr->closed, 1);
	return NULL;
}

/* Plain waits (1 ms naps) for *flag, at most `ms`: whether it came. */
static bool flag_within(atomic_int *flag, int ms)
{
	for (int i = 0; i < ms && !atomic_load(flag); i++)
		usleep(1000);
	return atomic_load(flag) != 0;
}

static void whole_write_across_a_remote_reuse(void)
{
	enum { TOTAL = 96 * 1024 };
	unsigned char *data = pattern(TOTAL);
	static struct remote_reuse rr;
	int old[2], fresh[2];
	pthread_t a, closer;

	memset(&rr, 0, sizeof(rr));
	if (pipe2(old, O_CLOEXEC) || pipe2(rr.go, O_CLOEXEC) || pipe2(fresh, O_CLOEXEC))
		grt_child_exit("pipes: %s", strerror(errno));
	rr.fd = old[1];
	rr.old_peer = old[0];
	rr.w = (struct whole){ .fd = old[1], .data = data, .total = TOTAL, .deadline = gr_now() + 5 * GR_SEC };
	if (pthread_create(&a, NULL, remote_writer_thread, &rr))
		grt_child_exit("thread A");
	if (!flag_within(&rr.between, 5000) || atomic_load(&rr.between) < 0)
		grt_child_exit("remote: A's whole write never got between two calls (%s)",
			       rr.failed ? rr.failed : "");
	if (pthread_create(&closer, NULL, remote_closer_thread, &rr))
		grt_child_exit("the closer thread");
	/* A close that does not wait for A's hub is done by now: the new file
	 * takes the number before A runs again. One that waits is answered by
	 * A's hub once A runs. */
	bool at_once = flag_within(&rr.closed, 200);
	if (at_once && grt_move_fd(fresh[1], rr.fd))
		grt_child_exit("move: %s", strerror(errno));
	if (write(rr.go[1], "g", 1) != 1)
		grt_child_exit("go");
	if (!flag_within(&rr.closed, 5000))
		grt_child_exit("remote: the close never returned");
	if (!at_once && grt_move_fd(fresh[1], rr.fd))
		grt_child_exit("move: %s", strerror(errno));
	pthread_join(a, NULL);
	pthread_join(closer, NULL);
	if (rr.failed)
		grt_child_exit("remote: %s", rr.failed);
	int old_bytes = -1, new_bytes = -1;
	ioctl(old[0], FIONREAD, &old_bytes);
	ioctl(fresh[0], FIONREAD, &new_bytes);
	if (rr.close_rc != 0)
		grt_child_exit("remote: gr_close: %d", rr.close_rc);
	if (new_bytes != 0)
		grt_child_exit("remote: %d bytes went into the file that took the number (returned %zd, %s)",
			       new_bytes, rr.w.rc, strerror(rr.w.err));
	if (rr.w.rc != old_bytes || rr.w.err != EBADF)
		grt_child_exit("remote: returned %zd (%s), the first file got %d", rr.w.rc,
			       strerror(rr.w.err), old_bytes);
	close(old[0]);
	close(rr.fd);
	close(fresh[0]);
	close(rr.go[0]);
	close(rr.go[1]);
	free(data);
}

Test(io, a_whole_write_stops_when_its_fd_is_closed_and_reused_between_two_calls)
{
	int report;
	pid_t pid = grt_fork_reporting(&report);

	if (pid == 0) {
		alarm(20); /* a hang ends as a death by SIGALRM, reported */
		setenv("GREENRING_IO_BUDGET", "1", 1);
		if (gr_hub_use(grt_hub()) < 0)
			grt_child_exit("the child's hub: %s", gr_hub_why());
		whole_write_across_a_reuse(false);
		whole_write_across_a_reuse(true);
		whole_write_across_a_remote_reuse();
		grt_child_exit("ok");
	}
	grt_child_expect_ok(pid, report);
}

Test(io, whole_writes_of_nothing_and_to_bad_fds)
{
	int p[2];

	make_pipe(p);
	cr_assert_eq(gr_write_all(p[1], "x", 0), 0);
	cr_assert_eq(gr_write_all(p[1], NULL, 0), 0);
	errno = 0;
	cr_assert_eq(gr_write_all(closed_fd(), "x", 1), -1);
	cr_assert_eq(errno, EBADF);
	errno = 0;
	cr_assert_eq(gr_send_all(closed_fd(), "x", 1, 0), -1);
	cr_assert_eq(errno, EBADF);
	errno = 0;
	cr_assert_eq(gr_send_all(p[1], "x", 1, 0), -1, "a send on a pipe");
	cr_assert_eq(errno, ENOTSOCK);
	errno = 0;
	cr_assert_eq(gr_write_all(p[1], NULL, 1), -1);
	cr_assert_eq(errno, EFAULT);
	close_pair(p);
}

Test(io, recvmsg_and_sendmsg_with_fd_passing)
{
	int sv[2], p[2];
	char data[] = "payload";
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = { data, sizeof(data) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			      .msg_controllen = sizeof(ctl.b) };

	make_socketpair(sv);
	make_pipe(p);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &p[1], sizeof(int));
	cr_assert_eq(gr_sendmsg(sv[0], &msg, 0), (ssize_t)sizeof(data));

	char got[32];
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} rctl;
	struct iovec riov = { got, sizeof(got) };
	struct msghdr rmsg = { .msg_iov = &riov, .msg_iovlen = 1, .msg_control = rctl.b,
			       .msg_controllen = sizeof(rctl.b) };
	cr_assert_eq(gr_recvmsg(sv[1], &rmsg, MSG_CMSG_CLOEXEC), (ssize_t)sizeof(data));
	cr_assert_str_eq(got, "payload");
	struct cmsghdr *rc = CMSG_FIRSTHDR(&rmsg);
	cr_assert_not_null(rc, "no control message received");
	cr_assert_eq(rc->cmsg_type, SCM_RIGHTS);
	int passed;
	memcpy(&passed, CMSG_DATA(rc), sizeof(int));
	/* The passed fd is the pipe's write end. */
	cr_assert_eq(gr_write(passed, "!", 1), 1);
	char x;
	cr_assert_eq(gr_read(p[0], &x, 1), 1);
	cr_assert_eq(x, '!');
	cr_assert_eq(close(passed), 0);
	close_pair(p);
	close_pair(sv);
}

Test(io, recvmsg_waits_for_data)
{
	int sv[2];
	char got[8];
	struct iovec iov = { got, sizeof(got) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	make_socketpair(sv);
	struct rw r = { .fd = sv[1] };
	gr_fiber *f = gr_spawn(reader, &r); /* a plain read on the other end */
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	struct msghdr out = { .msg_iov = &(struct iovec){ "ab", 2 }, .msg_iovlen = 1 };
	cr_assert_eq(gr_sendmsg(sv[0], &out, 0), 2);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.n, 2);
	cr_assert_eq(gr_send(sv[1], "cd", 2, 0), 2);
	cr_assert_eq(gr_recvmsg(sv[0], &msg, 0), 2);
	cr_assert_eq(memcmp(got, "cd", 2), 0);
	close_pair(sv);
}

struct acceptor {
	int lfd;
	int fd;
	int err;
	struct sockaddr_in peer;
	socklen_t len;
};

static void *accept_one(void *arg)
{
	struct acceptor *a = arg;

	a->len = sizeof(a->peer);
	a->fd = gr_accept(a->lfd, (struct sockaddr *)&a->peer, &a->len);
	a->err = a->fd < 0 ? errno : 0;
	return NULL;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	return sa;
}

Test(io, accept_and_connect_over_loopback_tcp)
{
	int port, lfd = grt_listener(&port);
	struct acceptor a = { .lfd = lfd };
	gr_fiber *f = gr_spawn(accept_one, &a);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = loopback(port);

	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(a.fd, 0, "accept did not wait for a client");
	cr_assert_eq(gr_connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0, "gr_connect: %s",
		     strerror(errno));
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_geq(a.fd, 0, "gr_accept: %s", strerror(a.err));
	cr_assert_eq(a.len, sizeof(struct sockaddr_in));
	cr_assert_eq(a.peer.sin_family, AF_INET);
	cr_assert_eq(a.peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	struct sockaddr_in local;
	socklen_t llen = sizeof(local);
	cr_assert_eq(getsockname(c, (struct sockaddr *)&local, &llen), 0);
	cr_assert_eq(a.peer.sin_port, local.sin_port, "accept reported the wrong peer");
	char buf[8];
	cr_assert_eq(gr_send(c, "tcp", 3, 0), 3);
	cr_assert_eq(gr_recv(a.fd, buf, sizeof(buf), 0), 3);
	cr_assert_eq(memcmp(buf, "tcp", 3), 0);
	/* accept with no address wanted. */
	int c2 = grt_connect_plain(port);
	int s2 = gr_accept(lfd, NULL, NULL);
	cr_assert_geq(s2, 0, "gr_accept(NULL, NULL): %s", strerror(errno));
	/* accept4 flags are honoured. */
	int c3 = grt_connect_plain(port);
	int s3 = gr_accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(s3, 0);
	cr_assert(fcntl(s3, F_GETFD) & FD_CLOEXEC, "SOCK_CLOEXEC not applied");
	cr_assert_eq(gr_close(a.fd), 0);
	cr_assert_eq(gr_close(s2), 0);
	cr_assert_eq(gr_close(s3), 0);
	cr_assert_eq(gr_close(c), 0);
	cr_assert_eq(gr_close(c2), 0);
	cr_assert_eq(gr_close(c3), 0);
	cr_assert_eq(gr_close(lfd), 0);
}

Test(io, connect_to_a_closed_port_is_econnrefused)
{
	int port, lfd = grt_listener(&port);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = loopback(port);

	cr_assert_eq(close(lfd), 0); /* nobody listens there now */
	errno = 0;
	cr_assert_eq(gr_connect(c, (struct sockaddr *)&sa, sizeof(sa)), -1);
	cr_assert_eq(errno, ECONNREFUSED, "gr_connect: %s", strerror(errno));
	cr_assert_eq(gr_close(c), 0);
}

Test(io, unix_stream_accept_and_connect)
{
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	/* An abstract address: nothing to clean up in the file system. */
	int len = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "greenring-test-%d", getpid());
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);

	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, salen), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(lfd, 16), 0);
	struct acceptor a = { .lfd = lfd };
	gr_fiber *f = gr_spawn(accept_one, &a);
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(gr_connect(c, (struct sockaddr *)&sa, salen), 0, "%s", strerror(errno));
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_geq(a.fd, 0, "%s", strerror(a.err));
	cr_assert_eq(gr_close(a.fd), 0);
	cr_assert_eq(gr_close(c), 0);
	cr_assert_eq(gr_close(lfd), 0);
}

Test(io, n_acceptors_on_one_listener_all_get_a_connection)
{
	enum { N = 16 };
	int port, lfd = grt_listener(&port);
	struct acceptor a[N];
	gr_fiber *f[N];
	int c[N];

	for (int i = 0; i < N; i++) {
		a[i] = (struct acceptor){ .lfd = lfd, .fd = -2 };
		f[i] = gr_spawn(accept_one, &a[i]);
	}
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* all N wait on the listener */
	for (int i = 0; i < N; i++) {
		struct sockaddr_in sa = loopback(port);

		c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_eq(gr_connect(c[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0,
			     "acceptor %d never got a connection", i);
	for (int i = 0; i < N; i++) {
		cr_assert_geq(a[i].fd, 0, "acceptor %d: %s", i, strerror(a[i].err));
		for (int j = 0; j < i; j++)
			cr_assert_neq(a[i].fd, a[j].fd);
		cr_assert_eq(gr_close(a[i].fd), 0);
		cr_assert_eq(gr_close(c[i]), 0);
	}
	cr_assert_eq(gr_close(lfd), 0);
}

/* Several fibers blocked on one fd all get served. */
Test(io, several_readers_on_one_pipe_each_get_a_byte)
{
	enum { N = 5 };
	int p[2];
	struct rw r[N];
	gr_fiber *f[N];

	make_pipe(p);
	for (int i = 0; i < N; i++) {
		r[i] = (struct rw){ .fd = p[0] };
		f[i] = gr_spawn(reader, &r[i]);
	}
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	/* One byte at a time, each written once the previous one was taken,
	 * so each read gets exactly one. */
	for (int i = 0; i < N; i++) {
		int64_t limit = gr_now() + 5 * GR_SEC;
		int served;

		cr_assert_eq(write(p[1], "abcde" + i, 1), 1);
		do {
			cr_assert_eq(gr_sleep(GR_MSEC / 10), 0);
			served = 0;
			for (int j = 0; j < N; j++)
				served += r[j].n != 0;
		} while (served < i + 1 && gr_now() < limit);
		cr_assert_eq(served, i + 1, "byte %d: %d readers served", i, served);
	}
	char seen[N + 1] = { 0 };
	for (int i = 0; i < N; i++) {
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0,
			     "reader %d still blocked: a wake-up was lost", i);
		cr_assert_eq(r[i].n, 1, "reader %d: %zd (%s)", i, r[i].n, strerror(r[i].err));
		seen[i] = r[i].buf[0];
	}
	/* Every byte went to exactly one reader. */
	for (int i = 0; i < N; i++)
		cr_assert_not_null(memchr(seen, "abcde"[i], N), "byte %c lost (%s)", "abcde"[i], seen);
	close_pair(p);
}

struct waiter {
	int fd;
	short events;
	int64_t deadline;
	int rc;
	int err;
	int64_t took;
};

static void *wait_fd_fn(void *arg)
{
	struct waiter *w = arg;
	int64_t t0 = gr_now();

	w->rc = gr_wait_fd(w->fd, w->events, w->deadline);
	w->err = w->rc < 0 ? errno : 0;
	w->took = gr_now() - t0;
	return NULL;
}

Test(io, several_wait_fd_on_one_fd_all_wake)
{
	enum { N = 4 };
	int p[2];
	struct waiter w[N];
	gr_fiber *f[N];

	make_pipe(p);
	for (int i = 0; i < N; i++) {
		w[i] = (struct waiter){ .fd = p[0], .events = POLLIN, .deadline = GR_FOREVER, .rc = 7 };
		f[i] = gr_spawn(wait_fd_fn, &w[i]);
	}
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	for (int i = 0; i < N; i++)
		cr_assert_eq(w[i].rc, 7, "waiter %d returned before the fd was ready", i);
	cr_assert_eq(write(p[1], "z", 1), 1);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0,
			     "waiter %d was not woken: readiness reported to one waiter only", i);
		cr_assert_eq(w[i].rc, 0, "waiter %d: %s", i, strerror(w[i].err));
	}
	close_pair(p);
}

Test(io, a_reader_and_a_writer_on_one_socket)
{
	int sv[2];
	struct rw r = { 0 };

	make_socketpair(sv);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(reader, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	/* While a reader waits on sv[0], a write through sv[0] goes out. */
	cr_assert_eq(gr_write(sv[0], "out", 3), 3);
	char buf[4];
	cr_assert_eq(gr_read(sv[1], buf, sizeof(buf)), 3);
	cr_assert_eq(gr_write(sv[1], "in", 2), 2);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.n, 2);
	close_pair(sv);
}

/* ------------------------------------------------------------ gr_wait_fd */

Test(io, wait_fd_ready_timeout_and_try_once)
{
	int p[2];

	make_pipe(p);
	/* Writable at once; not readable. */
	cr_assert_eq(gr_wait_fd(p[1], POLLOUT, GR_FOREVER), 0);
	cr_assert_eq(gr_wait_fd(p[1], POLLOUT, 0), 0);
	errno = 0;
	cr_assert_eq(gr_wait_fd(p[0], POLLIN, 0), -1, "deadline 0 on an idle fd");
	cr_assert_eq(errno, ETIMEDOUT);
	int64_t t0 = gr_now();
	errno = 0;
	cr_assert_eq(gr_wait_fd(p[0], POLLIN, t0 + 20 * GR_MSEC), -1);
	cr_assert_eq(errno, ETIMEDOUT, "gr_wait_fd timeout: %s", strerror(errno));
	int64_t took = gr_now() - t0;
	cr_assert_geq(took, 20 * GR_MSEC, "timed out early: %lld ns", (long long)took);
	cr_assert_lt(took, 20 * GR_MSEC + SLACK, "timed out late: %lld ns", (long long)took);
	cr_assert_eq(write(p[1], "r", 1), 1);
	cr_assert_eq(gr_wait_fd(p[0], POLLIN, 0), 0);
	cr_assert_eq(gr_wait_fd(p[0], POLLIN, gr_now() + GR_SEC), 0);
	/* Readiness does not consume: the byte is still there. */
	char c;
	cr_assert_eq(gr_read(p[0], &c, 1), 1);
	/* A deadline in the past behaves as "try once". */
	errno = 0;
	cr_assert_eq(gr_wait_fd(p[0], POLLIN, gr_now() - GR_SEC), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	close_pair(p);
}

Test(io, wait_fd_wakes_when_data_arrives)
{
	int sv[2];
	struct waiter w = { .events = POLLIN, .deadline = GR_FOREVER, .rc = 7 };

	make_socketpair(sv);
	w.fd = sv[0];
	gr_fiber *f = gr_spawn(wait_fd_fn, &w);
	cr_assert_eq(gr_sleep(2 * GR_MSEC), 0);
	cr_assert_eq(w.rc, 7);
	cr_assert_eq(send(sv[1], "x", 1, 0), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w.rc, 0);
	close_pair(sv);
}

Test(io, wait_fd_hangup_counts_as_ready)
{
	int sv[2];
	struct waiter w = { .events = POLLIN, .deadline = gr_now() + 5 * GR_SEC, .rc = 7 };

	make_socketpair(sv);
	w.fd = sv[0];
	gr_fiber *f = gr_spawn(wait_fd_fn, &w);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(close(sv[1]), 0);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(w.rc, 0, "hang-up: %s", strerror(w.err));
	cr_assert_lt(w.took, GR_SEC);
	cr_assert_eq(close(sv[0]), 0);
}

Test(io, wait_fd_misuse)
{
	int p[2];

	make_pipe(p);
	errno = 0;
	cr_assert_eq(gr_wait_fd(p[0], 0, GR_FOREVER), -1, "no events asked");
	cr_assert_eq(errno, EINVAL);
	errno = 0;
	cr_assert_eq(gr_wait_fd(-1, POLLIN, GR_FOREVER), -1);
	cr_assert_eq(errno, EBADF);
	int bad = closed_fd();
	errno = 0;
	cr_assert_eq(gr_wait_fd(bad, POLLIN, gr_now() + GR_SEC), -1, "a closed fd");
	cr_assert_eq(errno, EBADF, "a closed fd: %s", strerror(errno));
	errno = 0;
	cr_assert_eq(gr_wait_fd(bad, POLLIN, 0), -1);
	cr_assert_eq(errno, EBADF);
	errno = 0;
	cr_assert_eq(gr_wait_fd(100000, POLLIN, gr_now() + GR_SEC), -1);
	cr_assert_eq(errno, EBADF, "fd 100000: %s", strerror(errno));
	close_pair(p);
}

/* ------------------------------------------------------------ deadlines */

static void *recv_with_deadline(void *arg)
{
	struct rw *r = arg;
	int64_t t0 = gr_now();

	gr_deadline_set(t0 + 20 * GR_MSEC);
	r->n = gr_recv(r->fd, r->buf, sizeof(r->buf), 0);
	r->err = errno;
	gr_deadline_set(GR_FOREVER);
	return (void *)(intptr_t)(gr_now() - t0);
}

Test(io, deadline_on_recv_is_etimedout)
{
	int sv[2];
	struct rw r = { 0 };
	void *took;

	make_socketpair(sv);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(recv_with_deadline, &r);
	cr_assert_eq(gr_join(f, &took, GR_FOREVER), 0);
	cr_assert_eq(r.n, -1);
	cr_assert_eq(r.err, ETIMEDOUT, "recv past the deadline: %s", strerror(r.err));
	cr_assert_geq((intptr_t)took, 20 * GR_MSEC);
	cr_assert_lt((intptr_t)took, 20 * GR_MSEC + SLACK);
	/* Nothing was left behind: the socket works normally afterwards. */
	cr_assert_eq(send(sv[1], "after", 5, 0), 5);
	cr_assert_eq(gr_recv(sv[0], r.buf, sizeof(r.buf), 0), 5);
	close_pair(sv);
}

static void *accept_with_deadline(void *arg)
{
	struct acceptor *a = arg;

	gr_deadline_set(gr_now() + 10 * GR_MSEC);
	a->fd = gr_accept(a->lfd, NULL, NULL);
	a->err = errno;
	gr_deadline_set(GR_FOREVER);
	return NULL;
}

Test(io, deadline_on_accept_is_etimedout_and_the_listener_still_works)
{
	int port, lfd = grt_listener(&port);
	struct acceptor a = { .lfd = lfd };
	gr_fiber *f = gr_spawn(accept_with_deadline, &a);

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(a.fd, -1);
	cr_assert_eq(a.err, ETIMEDOUT, "%s", strerror(a.err));
	int c = grt_connect_plain(port);
	int s = gr_accept(lfd, NULL, NULL);
	cr_assert_geq(s, 0, "accept after a timed-out accept: %s", strerror(errno));
	cr_assert_eq(gr_close(s), 0);
	cr_assert_eq(gr_close(c), 0);
	cr_assert_eq(gr_close(lfd), 0);
}

static void *connect_with_deadline(void *arg)
{
	struct acceptor *a = arg; /* lfd: the port; fd: the socket */
	struct sockaddr_in sa = loopback(a->lfd);
	int64_t t0 = gr_now();

	gr_deadline_set(t0 + 30 * GR_MSEC);
	int r = gr_connect(a->fd, (struct sockaddr *)&sa, sizeof(sa));
	a->err = r < 0 ? errno : 0;
	gr_deadline_set(GR_FOREVER);
	return (void *)(intptr_t)(gr_now() - t0);
}

Test(io, deadline_on_connect_is_etimedout)
{
	/* A listener with a full accept queue drops SYNs: connect hangs. */
	int port, lfd = grt_listener(&port);
	int queued[8];
	void *took;

	cr_assert_eq(listen(lfd, 0), 0);
	for (int i = 0; i < 8; i++) {
		struct sockaddr_in sa = loopback(port);

		queued[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		connect(queued[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	struct acceptor a = { .lfd = port, .fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
	gr_fiber *f = gr_spawn(connect_with_deadline, &a);
	cr_assert_eq(gr_join(f, &took, GR_FOREVER), 0);
	if (a.err == 0)
		cr_skip_test("connect to a full listener did not block here");
	cr_assert_eq(a.err, ETIMEDOUT, "connect past the deadline: %s", strerror(a.err));
	cr_assert_geq((intptr_t)took, 30 * GR_MSEC);
	cr_assert_lt((intptr_t)took, 30 * GR_MSEC + SLACK);
	cr_assert_eq(gr_close(a.fd), 0);
	for (int i = 0; i < 8; i++)
		close(queued[i]);
	cr_assert_eq(gr_close(lfd), 0);
}

/* ------------------------------------------------------------ gr_close under waiters */

static void *recv_fn(void *arg)
{
	struct rw *r = arg;

	r->n = gr_recv(r->fd, r->buf, sizeof(r->buf), 0);
	r->err = r->n < 0 ? errno : 0;
	return NULL;
}

Test(io, close_under_a_waiting_fiber_is_ebadf_and_closes)
{
	enum { N = 3 };
	int sv[2];
	struct rw r[N];
	struct waiter w = { .events = POLLIN, .deadline = GR_FOREVER, .rc = 7 };
	gr_fiber *f[N], *fw;

	make_socketpair(sv);
	for (int i = 0; i < N; i++) {
		r[i] = (struct rw){ .fd = sv[0] };
		f[i] = gr_spawn(recv_fn, &r[i]);
	}
	w.fd = sv[0];
	fw = gr_spawn(wait_fd_fn, &w);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_close(sv[0]), 0, "gr_close: %s", strerror(errno));
	/* Really closed, at once. */
	cr_assert_eq(fcntl(sv[0], F_GETFD), -1, "the fd is still open after gr_close");
	cr_assert_eq(errno, EBADF);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(r[i].n, -1);
		cr_assert_eq(r[i].err, EBADF, "waiter %d: %s", i, strerror(r[i].err));
	}
	cr_assert_eq(gr_join(fw, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w.rc, -1);
	cr_assert_eq(w.err, EBADF, "gr_wait_fd: %s", strerror(w.err));
	/* The peer sees the close. */
	char c;
	cr_assert_eq(recv(sv[1], &c, 1, MSG_DONTWAIT), 0, "the peer did not see EOF");
	cr_assert_eq(close(sv[1]), 0);
}

static void *recv_then_record(void *arg)
{
	struct rw *r = arg;

	r->n = gr_recv(r->fd, r->buf, sizeof(r->buf), 0);
	r->err = r->n < 0 ? errno : 0;
	return NULL;
}

Test(io, a_reused_fd_number_is_not_hit_by_a_stale_operation)
{
	int sv[2], p[2];
	struct rw r = { 0 };

	make_socketpair(sv);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(recv_then_record, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_close(sv[0]), 0);
	/* The number is free again: a new pipe may well get it. */
	make_pipe(p);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.err, EBADF, "the recv under gr_close: %zd (%s)", r.n, strerror(r.err));
	cr_assert_eq(write(p[1], "new", 3), 3);
	char buf[4];
	cr_assert_eq(gr_read(p[0], buf, sizeof(buf)), 3, "the stale recv consumed the new fd's data");
	cr_assert_eq(memcmp(buf, "new", 3), 0);
	close_pair(p);
	cr_assert_eq(close(sv[1]), 0);
}

Test(io, a_read_woken_just_before_gr_close_never_reads_the_next_file)
{
	/* The reader's wait ends (data arrived), then, before it runs again,
	 * another fiber gr_closes the fd and opens a new pipe, which gets the
	 * same number. The reader may return the first pipe's data (its read
	 * finished before the close) or EBADF, but never the new pipe's bytes:
	 * an fd number is not reused under an operation that still names it. */
	int p[2], q[2];
	struct rw r = { 0 };

	make_pipe(p);
	r.fd = p[0];
	gr_fiber *f = gr_spawn(reader, &r);
	cr_assert_eq(gr_sleep(0), 0); /* f waits for data */
	cr_assert_eq(write(p[1], "old", 3), 3);
	/* This yield ends f's wait; main is ahead of f in the next turn. */
	cr_assert_eq(gr_sleep(0), 0);
	int old_fd = p[0];
	cr_assert_eq(gr_close(p[0]), 0);
	make_pipe(q);
	if (q[0] != old_fd) {
		/* Make the new pipe's read end take the old number. */
		cr_assert_eq(dup2(q[0], old_fd), old_fd);
		close(q[0]);
		q[0] = old_fd;
	}
	cr_assert_eq(write(q[1], "NEW", 3), 3);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	if (r.n == 3)
		cr_assert_eq(memcmp(r.buf, "old", 3), 0, "the reader got the new file's bytes: %.3s", r.buf);
	else
		cr_assert(r.n == -1 && r.err == EBADF, "reader: %zd (%s)", r.n, strerror(r.err));
	char buf[4];
	cr_assert_eq(read(q[0], buf, sizeof(buf)), 3, "the new pipe lost its data to a stale read");
	close_pair(q);
	cr_assert_eq(close(p[1]), 0);
}

Test(io, a_number_closed_with_plain_close_and_reused_still_works)
{
	/* Programs mix gr_* calls with plain close(). A number the hub has
	 * seen, closed behind its back and handed out again for a new file,
	 * must work like any new fd: waits on it complete. */
	for (int round = 0; round < 3; round++) {
		int p[2], q[2];
		struct rw r = { 0 };

		make_pipe(p);
		/* The hub learns p[0]: a wait on it, satisfied. */
		struct rw first = { .fd = p[0] };
		gr_fiber *f = gr_spawn(reader, &first);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		cr_assert_eq(write(p[1], "1", 1), 1);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(first.n, 1);
		int num = p[0];
		cr_assert_eq(close(p[0]), 0);
		cr_assert_eq(close(p[1]), 0);
		make_pipe(q);
		if (q[0] != num) {
			cr_assert_eq(dup2(q[0], num), num);
			close(q[0]);
			q[0] = num;
		}
		/* Round 1: a blocking pipe; round 2: a socket under the number. */
		if (round == 2) {
			int sv[2];

			close_pair(q);
			make_socketpair(sv);
			if (sv[0] != num) {
				cr_assert_eq(dup2(sv[0], num), num);
				close(sv[0]);
				sv[0] = num;
			}
			q[0] = sv[0];
			q[1] = sv[1];
		}
		r.fd = q[0];
		f = gr_spawn(reader, &r);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		cr_assert_eq(r.n, 0, "round %d: the reader did not wait", round);
		cr_assert_eq(write(q[1], "2", 1), 1);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0,
			     "round %d: a wait on a reused number never completed", round);
		cr_assert_eq(r.n, 1, "round %d: %zd (%s)", round, r.n, strerror(r.err));
		/* And with gr_wait_fd. */
		struct waiter w = { .fd = q[0], .events = POLLIN, .deadline = gr_now() + 5 * GR_SEC, .rc = 7 };
		f = gr_spawn(wait_fd_fn, &w);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		cr_assert_eq(write(q[1], "3", 1), 1);
		cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
		cr_assert_eq(w.rc, 0, "round %d: gr_wait_fd on a reused number: %s", round, strerror(w.err));
		close_pair(q);
	}
}

static void *close_it(void *arg)
{
	return (void *)(intptr_t)(gr_close(*(int *)arg) == 0 ? 0 : errno);
}

Test(io, two_fibers_closing_one_fd)
{
	int sv[2];
	struct rw r = { 0 };

	make_socketpair(sv);
	r.fd = sv[0];
	gr_fiber *f = gr_spawn(recv_fn, &r);
	gr_fiber *c1 = gr_spawn(close_it, &sv[0]);
	gr_fiber *c2 = gr_spawn(close_it, &sv[0]);
	void *e1, *e2;

	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(c1, &e1, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(c2, &e2, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.err, EBADF);
	/* Exactly one close succeeds; the other is EBADF. */
	cr_assert((e1 == NULL) != (e2 == NULL), "close results: %s / %s",
		  strerror((int)(intptr_t)e1), strerror((int)(intptr_t)e2));
	cr_assert_eq((intptr_t)(e1 ? e1 : e2), EBADF);
	cr_assert_eq(fcntl(sv[0], F_GETFD), -1);
	cr_assert_eq(close(sv[1]), 0);
}

Test(io, gr_close_of_bad_fds)
{
	errno = 0;
	cr_assert_eq(gr_close(-1), -1);
	cr_assert_eq(errno, EBADF);
	int bad = closed_fd();
	errno = 0;
	cr_assert_eq(gr_close(bad), -1);
	cr_assert_eq(errno, EBADF);
	errno = 0;
	cr_assert_eq(gr_close(100000), -1);
	cr_assert_eq(errno, EBADF);
	/* gr_close of an fd never used with greenring is a plain close. */
	int p[2];
	make_pipe(p);
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(gr_close(p[1]), 0);
	cr_assert_eq(fcntl(p[0], F_GETFD), -1);
	/* A second close of a used fd is EBADF too. */
	make_pipe(p);
	cr_assert_eq(gr_write(p[1], "x", 1), 1);
	cr_assert_eq(gr_close(p[1]), 0);
	errno = 0;
	cr_assert_eq(gr_close(p[1]), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_close(p[0]), 0);
}

/* ------------------------------------------------------------ misuse */

static void expect_err(ssize_t r, int want, const char *what)
{
	int err = errno;

	cr_assert_eq(r, -1, "%s returned %zd, want -1/%s", what, r, strerror(want));
	cr_assert_eq(err, want, "%s: errno %s, want %s", what, strerror(err), strerror(want));
}

#define EXPECT_ERR(call, want)                       \
	do {                                         \
		errno = 0;                           \
		expect_err((ssize_t)(call), want, #call); \
	} while (0)

static void check_bad_fd(int fd)
{
	char buf[4] = "abc";
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct sockaddr_in sa = loopback(1);
	socklen_t len = sizeof(sa);

	EXPECT_ERR(gr_read(fd, buf, sizeof(buf)), EBADF);
	EXPECT_ERR(gr_write(fd, buf, sizeof(buf)), EBADF);
	EXPECT_ERR(gr_readv(fd, &iov, 1), EBADF);
	EXPECT_ERR(gr_writev(fd, &iov, 1), EBADF);
	EXPECT_ERR(gr_pread(fd, buf, sizeof(buf), 0), EBADF);
	EXPECT_ERR(gr_pwrite(fd, buf, sizeof(buf), 0), EBADF);
	EXPECT_ERR(gr_recv(fd, buf, sizeof(buf), 0), EBADF);
	EXPECT_ERR(gr_send(fd, buf, sizeof(buf), 0), EBADF);
	EXPECT_ERR(gr_recvmsg(fd, &msg, 0), EBADF);
	EXPECT_ERR(gr_sendmsg(fd, &msg, 0), EBADF);
	EXPECT_ERR(gr_accept(fd, (struct sockaddr *)&sa, &len), EBADF);
	EXPECT_ERR(gr_connect(fd, (struct sockaddr *)&sa, sizeof(sa)), EBADF);
}

Test(io, bad_fds_fail_with_ebadf)
{
	check_bad_fd(-1);
	check_bad_fd(-12345);
	check_bad_fd(closed_fd());
	check_bad_fd(100000);
	check_bad_fd(INT_MAX);
}

Test(io, calls_on_the_wrong_kind_of_fd_fail_cleanly)
{
	int p[2];
	char buf[4];

	make_pipe(p);
	EXPECT_ERR(gr_recv(p[0], buf, sizeof(buf), MSG_DONTWAIT), ENOTSOCK);
	EXPECT_ERR(gr_accept(p[0], NULL, NULL), ENOTSOCK);
	EXPECT_ERR(gr_read(p[1], buf, sizeof(buf)), EBADF);   /* write end */
	EXPECT_ERR(gr_write(p[0], "x", 1), EBADF);            /* read end */
	EXPECT_ERR(gr_pread(p[0], buf, 1, 0), ESPIPE);
	EXPECT_ERR(gr_pwrite(p[1], "x", 1, 0), ESPIPE);
	/* The pipe is untouched: nothing was written by the refused pwrite. */
	EXPECT_ERR(gr_wait_fd(p[0], POLLIN, 0), ETIMEDOUT);
	close_pair(p);
}

Test(io, null_pointers_fail_with_errors_not_crashes)
{
	int p[2], sv[2];
	struct iovec iov = { NULL, 4 };

	/* Memcheck rightly reports each NULL handed to a syscall. */
	if (running_on_valgrind())
		cr_skip_test("passes NULL buffers to syscalls on purpose");

	make_pipe(p);
	make_socketpair(sv);
	cr_assert_eq(write(p[1], "data", 4), 4);
	cr_assert_eq(write(sv[1], "data", 4), 4);
	EXPECT_ERR(gr_read(p[0], NULL, 4), EFAULT);
	EXPECT_ERR(gr_write(p[1], NULL, 4), EFAULT);
	EXPECT_ERR(gr_recv(sv[0], NULL, 4, 0), EFAULT);
	EXPECT_ERR(gr_send(sv[0], NULL, 4, 0), EFAULT);
	EXPECT_ERR(gr_readv(p[0], NULL, 1), EINVAL);
	EXPECT_ERR(gr_writev(p[1], NULL, 1), EINVAL);
	EXPECT_ERR(gr_readv(p[0], &iov, -1), EINVAL);
	EXPECT_ERR(gr_readv(p[0], &iov, IOV_MAX + 1), EINVAL);
	EXPECT_ERR(gr_recvmsg(sv[0], NULL, 0), EINVAL);
	EXPECT_ERR(gr_sendmsg(sv[0], NULL, 0), EINVAL);
	EXPECT_ERR(gr_connect(sv[0], NULL, 16), EFAULT);
	struct sockaddr_in sa;
	EXPECT_ERR(gr_accept(sv[0], (struct sockaddr *)&sa, NULL), EINVAL);
	/* The fds are unharmed: the data is still there. */
	char buf[4];
	cr_assert_eq(gr_read(p[0], buf, 4), 4);
	cr_assert_eq(gr_recv(sv[0], buf, 4, 0), 4);
	close_pair(p);
	close_pair(sv);
}

/* ------------------------------------------------------------ blocking-mode fds */

struct ticker {
	volatile int *stop;
	int ticks;
};

static void *tick(void *arg)
{
	struct ticker *t = arg;

	while (!*t->stop && t->ticks < 10000) {
		gr_sleep(GR_MSEC / 2);
		t->ticks++;
	}
	return NULL;
}

Test(io, blocking_mode_fds_do_not_block_the_thread)
{
	int sv[2];
	volatile int stop = 0;
	struct ticker t = { .stop = &stop };
	struct rw r = { 0 };

	make_socketpair(sv); /* blocking mode */
	r.fd = sv[0];
	gr_fiber *rf = gr_spawn(recv_fn, &r);
	gr_fiber *tf = gr_spawn(tick, &t);
	/* While the recv waits, other fibers keep running. */
	while (t.ticks < 5)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(r.n, 0);
	cr_assert_eq(send(sv[1], "late", 4, 0), 4);
	cr_assert_eq(gr_join(rf, NULL, gr_now() + 5 * GR_SEC), 0);
	stop = 1;
	cr_assert_eq(gr_join(tf, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.n, 4, "%s", strerror(r.err));
	/* The fd is still usable as a blocking fd by plain calls. */
	cr_assert_eq(send(sv[0], "plain", 5, 0), 5);
	char buf[8];
	cr_assert_eq(recv(sv[1], buf, sizeof(buf), 0), 5);
	/* A pipe in blocking mode, read by a green call. */
	int p[2];
	make_pipe(p);
	struct rw pr = { .fd = p[0] };
	gr_fiber *pf = gr_spawn(reader, &pr);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_write(p[1], "pp", 2), 2);
	cr_assert_eq(gr_join(pf, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(pr.n, 2);
	close_pair(p);
	close_pair(sv);
}

Test(io, nonblocking_fds_stay_nonblocking_and_work)
{
	int sv[2];
	char buf[8];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	struct rw r = { .fd = sv[0] };
	gr_fiber *f = gr_spawn(recv_fn, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(r.n, 0, "a green recv on an O_NONBLOCK fd must wait, not fail with EAGAIN");
	cr_assert_eq(gr_send(sv[1], "nb", 2, 0), 2);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.n, 2, "%s", strerror(r.err));
	cr_assert(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
	cr_assert_eq(recv(sv[0], buf, sizeof(buf), 0), -1);
	cr_assert_eq(errno, EAGAIN);
	close_pair(sv);
}

/* A writer of `total` bytes to a blocking pipe: more than it holds, so it
 * parks with part written, on every hub. */
struct pipe_fill {
	int fd;
	size_t total;
	size_t written;
	int err;
};

static void *fill_pipe(void *arg)
{
	struct pipe_fill *w = arg;
	static const char chunk[4096];

	while (w->written < w->total) {
		ssize_t n = gr_write(w->fd, chunk, sizeof(chunk));

		if (n <= 0) {
			w->err = n < 0 ? errno : EIO;
			return NULL;
		}
		w->written += (size_t)n;
	}
	return NULL;
}

/* A green write to a full blocking pipe waits, and leaves the pipe
 * blocking, as the read does (read_and_write_on_a_pipe). */
Test(io, a_writer_waits_on_a_full_blocking_pipe_and_leaves_its_flags_alone)
{
	int p[2];

	make_pipe(p);
	/* Four times what the pipe holds: the writer parks on a full pipe. */
	struct pipe_fill w = { .fd = p[1], .total = 4 * (size_t)fcntl(p[1], F_GETPIPE_SZ) };
	gr_fiber *f = gr_spawn(fill_pipe, &w);
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_lt(w.written, w.total, "a full pipe took every byte at once");
	size_t got = 0;
	char buf[8192];
	while (got < w.total) {
		ssize_t n = gr_read(p[0], buf, sizeof(buf));

		cr_assert_gt(n, 0, "gr_read: %zd (%s)", n, strerror(errno));
		got += (size_t)n;
	}
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w.err, 0, "%s", strerror(w.err));
	cr_assert_eq(w.written, w.total);
	cr_assert_eq(fcntl(p[0], F_GETFL) & O_NONBLOCK, 0, "the read end was made O_NONBLOCK");
	cr_assert_eq(fcntl(p[1], F_GETFL) & O_NONBLOCK, 0, "the write end was made O_NONBLOCK");
	close_pair(p);
}

/* A terminal refuses RWF_NOWAIT (EOPNOTSUPP): a green read of it still
 * waits, and keeps waiting once the refusal is remembered. */
Test(io, a_terminal_that_refuses_rwf_nowait_still_waits)
{
	int master, slave;

	grt_raw_pty(&master, &slave);

	for (int round = 0; round < 2; round++) {
		struct rw r = { .fd = master };
		gr_fiber *f = gr_spawn(reader, &r);

		cr_assert_eq(gr_sleep(0), 0);
		cr_assert_eq(r.n, 0, "round %d: gr_read of a silent terminal returned %zd (%s)", round,
			     r.n, strerror(r.err));
		cr_assert_eq(write(slave, "hi", 2), 2);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(r.n, 2, "round %d: %zd (%s)", round, r.n, strerror(r.err));
		cr_assert_eq(memcmp(r.buf, "hi", 2), 0);
	}
	cr_assert_eq(gr_write(master, "yo", 2), 2);
	char buf[2];
	cr_assert_eq(read(slave, buf, 2), 2);
	cr_assert_eq(memcmp(buf, "yo", 2), 0);
	close(slave);
	close(master);
}

static void *accept_fn(void *arg)
{
	struct rw *r = arg;

	r->n = gr_accept(r->fd, NULL, NULL);
	r->err = r->n < 0 ? errno : 0;
	return NULL;
}

/* Every green call waits on every hub, whatever O_NONBLOCK the program set
 * on the fd itself. io_uring honours a file's own O_NONBLOCK and answers
 * EAGAIN (EINPROGRESS for connect); the runtime then waits for readiness and
 * tries again, as the readiness hubs do. */
Test(io, green_calls_wait_on_fds_the_program_made_nonblocking)
{
	int p[2];
	struct rw r = { 0 };

	/* read of a non-blocking pipe */
	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	r.fd = p[0];
	gr_fiber *f = gr_spawn(reader, &r);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(r.n, 0, "gr_read of an O_NONBLOCK pipe returned %zd (%s)", r.n, strerror(r.err));
	cr_assert_eq(gr_write(p[1], "nb", 2), 2);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.n, 2, "%s", strerror(r.err));
	close_pair(p);

	/* accept on a non-blocking listener */
	int port;
	int l = grt_listener(&port);
	cr_assert_eq(fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK), 0);
	struct rw a = { .fd = l };
	f = gr_spawn(accept_fn, &a);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(a.n, 0, "gr_accept on an O_NONBLOCK listener returned %zd (%s)", a.n,
		     strerror(a.err));

	/* connect from a non-blocking socket */
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(gr_connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0, "gr_connect: %s",
		     strerror(errno));
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_geq(a.n, 0, "gr_accept: %s", strerror(a.err));
	cr_assert_eq(gr_send(c, "x", 1, 0), 1);
	char b;
	cr_assert_eq(gr_recv((int)a.n, &b, 1, 0), 1);
	cr_assert_eq(close((int)a.n), 0);
	cr_assert_eq(close(c), 0);
	cr_assert_eq(close(l), 0);
}

Test(io, main_can_do_green_io_without_any_fiber)
{
	int p[2];
	char buf[4];

	make_pipe(p);
	cr_assert_eq(gr_write(p[1], "main", 4), 4);
	cr_assert_eq(gr_read(p[0], buf, 4), 4);
	cr_assert_eq(memcmp(buf, "main", 4), 0);
	close_pair(p);
}

Test(io, errno_survives_other_fibers_running)
{
	/* errno is per thread, shared by its fibers: it must be set as the
	 * last act before a call returns, so a fiber that failed differently
	 * while main waited cannot leave its errno in main's. */
	int a[2], b[2];
	struct rw r = { 0 };
	char c;

	make_socketpair(a);
	make_socketpair(b);
	r.fd = b[0];
	gr_fiber *f = gr_spawn(recv_fn, &r);
	gr_fiber *closer = gr_spawn(close_it, &b[0]); /* f's recv fails with EBADF */
	gr_deadline_set(gr_now() + 10 * GR_MSEC);
	ssize_t n = gr_recv(a[0], &c, 1, 0);
	int err = errno;
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(n, -1);
	cr_assert_eq(err, ETIMEDOUT, "main's errno: %s", strerror(err));
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(closer, NULL, GR_FOREVER), 0);
	cr_assert_eq(r.err, EBADF, "the fiber saw %s", strerror(r.err));
	close_pair(a);
	cr_assert_eq(close(b[1]), 0);
}
