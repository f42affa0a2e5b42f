/* test_fd_deadline.c — per-fd read and write deadlines (gr_fd_set_deadline):
 * every green call honours its direction's; a reader and a writer on one fd
 * with different deadlines; a deadline moved later and earlier while a call
 * waits, never losing data; the fiber's own deadline (the sooner wins); what
 * resets them (gr_close, gr_accept); misuse. Runs once per hub. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(fd_deadline);

/* How late a timed-out call may return on this shared machine; never early. */
#define SLACK (100 * GR_MSEC)

static void make_socketpair(int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

/* Fill sv[0]'s way to sv[1] until a send would block. */
static void fill(int fd)
{
	int small = 4096;
	char junk[4096];

	memset(junk, 'j', sizeof(junk));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	while (send(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0)
		;
	cr_assert(errno == EAGAIN || errno == EWOULDBLOCK, "filling: %s", strerror(errno));
}

static void assert_timed(int64_t took, int64_t want)
{
	cr_assert_geq(took, want, "timed out early: %lld ms, deadline %lld ms",
		      (long long)(took / GR_MSEC), (long long)(want / GR_MSEC));
	cr_assert_lt(took, want + SLACK, "timed out late: %lld ms, deadline %lld ms",
		     (long long)(took / GR_MSEC), (long long)(want / GR_MSEC));
}

/* A green call in a fiber of its own, timed. */
struct call {
	int fd;
	int kind;            /* RECV, SEND, WAIT_IN, WAIT_OUT, READ, WRITE */
	ssize_t n;
	int err;
	int64_t took;
	int64_t end;         /* when it returned */
	char buf[64];
};

enum { RECV, SEND, WAIT_IN, WAIT_OUT, READ, WRITE };

static void *call_fn(void *arg)
{
	struct call *c = arg;
	int64_t t0 = gr_now();

	switch (c->kind) {
	case RECV:
		c->n = gr_recv(c->fd, c->buf, sizeof(c->buf), 0);
		break;
	case SEND:
		c->n = gr_send(c->fd, "payload", 7, 0);
		break;
	case WAIT_IN:
		c->n = gr_wait_fd(c->fd, POLLIN, GR_FOREVER);
		break;
	case WAIT_OUT:
		c->n = gr_wait_fd(c->fd, POLLOUT, GR_FOREVER);
		break;
	case READ:
		c->n = gr_read(c->fd, c->buf, sizeof(c->buf));
		break;
	case WRITE:
		c->n = gr_write(c->fd, "payload", 7);
		break;
	}
	c->err = c->n < 0 ? errno : 0;
	c->end = gr_now();
	c->took = c->end - t0;
	return NULL;
}

/* ------------------------------------------------------------ each call */

Test(fd_deadline, a_read_deadline_times_out_recv_read_and_wait_fd)
{
	int sv[2];

	make_socketpair(sv);
	for (int kind = RECV; kind <= READ; kind++) {
		if (kind == SEND || kind == WAIT_OUT)
			continue;
		struct call c = { .fd = sv[0], .kind = kind };
		int64_t t0 = gr_now();
		assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, t0 + 40 * GR_MSEC));
		call_fn(&c);
		cr_assert_eq(c.n, -1, "call %d returned %zd", kind, c.n);
		cr_assert_eq(c.err, ETIMEDOUT, "call %d: %s", kind, strerror(c.err));
		assert_timed(c.end - t0, 40 * GR_MSEC);
	}
	cr_assert_eq(gr_deadline_get(), GR_FOREVER, "the fiber's own deadline was touched");
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_write_deadline_times_out_send_write_and_wait_fd)
{
	int sv[2];

	make_socketpair(sv);
	fill(sv[0]);
	for (int kind = SEND; kind <= WRITE; kind++) {
		if (kind == WAIT_IN || kind == READ)
			continue;
		struct call c = { .fd = sv[0], .kind = kind };
		int64_t t0 = gr_now();
		assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, t0 + 40 * GR_MSEC));
		call_fn(&c);
		cr_assert_eq(c.n, -1, "call %d returned %zd", kind, c.n);
		cr_assert_eq(c.err, ETIMEDOUT, "call %d: %s", kind, strerror(c.err));
		assert_timed(c.end - t0, 40 * GR_MSEC);
	}
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_passed_deadline_fails_at_once_even_with_data_and_clearing_restores)
{
	int sv[2];
	char buf[8];

	make_socketpair(sv);
	cr_assert_eq(send(sv[1], "abc", 3, 0), 3);
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ | GR_FD_WRITE, 0));
	cr_assert_eq(gr_recv(sv[0], buf, sizeof(buf), 0), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	cr_assert_eq(gr_send(sv[0], "x", 1, 0), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	/* A pure try still tries. */
	cr_assert_eq(gr_wait_fd(sv[0], POLLIN, 0), 0);
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, GR_FOREVER));
	cr_assert_eq(gr_recv(sv[0], buf, sizeof(buf), 0), 3, "the data was lost");
	cr_assert_eq(memcmp(buf, "abc", 3), 0);
	cr_assert_eq(gr_send(sv[0], "x", 1, 0), -1, "clearing reads cleared writes too");
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, GR_FOREVER));
	cr_assert_eq(gr_send(sv[0], "x", 1, 0), 1);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_deadline_in_the_future_lets_ready_calls_through)
{
	int sv[2];
	char buf[8];

	make_socketpair(sv);
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ | GR_FD_WRITE, gr_now() + GR_SEC));
	cr_assert_eq(gr_send(sv[0], "ping", 4, 0), 4);
	cr_assert_eq(gr_recv(sv[1], buf, sizeof(buf), 0), 4);
	cr_assert_eq(gr_send(sv[1], "pong", 4, 0), 4);
	cr_assert_eq(gr_recv(sv[0], buf, sizeof(buf), 0), 4);
	cr_assert_eq(memcmp(buf, "pong", 4), 0);
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ two fibers, one fd */

Test(fd_deadline, a_reader_and_a_writer_on_one_fd_each_keep_their_own_deadline)
{
	int sv[2];

	make_socketpair(sv);
	fill(sv[0]);
	int64_t t0 = gr_now();
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, t0 + 50 * GR_MSEC));
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, t0 + 400 * GR_MSEC));
	struct call r = { .fd = sv[0], .kind = RECV }, w = { .fd = sv[0], .kind = SEND };
	gr_fiber *fr = gr_spawn(call_fn, &r), *fw = gr_spawn(call_fn, &w);

	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.err, ETIMEDOUT, "reader: %s", strerror(r.err));
	assert_timed(r.end - t0, 50 * GR_MSEC);
	cr_assert_eq(w.took, 0, "the writer ended with the reader's deadline");
	/* The writer is still waiting: make room, and its send goes through. */
	cr_assert_gt(grt_drain_now(sv[1]), 0);
	assert_ok(gr_join(fw, NULL, GR_FOREVER));
	cr_assert_eq(w.n, 7, "writer: %zd (%s)", w.n, strerror(w.err));
	cr_assert_lt(w.took, 400 * GR_MSEC);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_writer_times_out_while_the_reader_goes_on)
{
	int sv[2];
	char buf[8];

	make_socketpair(sv);
	fill(sv[0]);
	int64_t t0 = gr_now();
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, t0 + 50 * GR_MSEC));
	struct call r = { .fd = sv[0], .kind = RECV }, w = { .fd = sv[0], .kind = SEND };
	gr_fiber *fr = gr_spawn(call_fn, &r), *fw = gr_spawn(call_fn, &w);

	assert_ok(gr_join(fw, NULL, GR_FOREVER));
	cr_assert_eq(w.err, ETIMEDOUT, "writer: %s", strerror(w.err));
	assert_timed(w.end - t0, 50 * GR_MSEC);
	cr_assert_eq(send(sv[1], "late", 4, 0), 4);
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.n, 4, "reader: %zd (%s)", r.n, strerror(r.err));
	cr_assert_eq(memcmp(r.buf, "late", 4), 0);
	(void)buf;
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ moved while waiting */

/* Fibers never cr_assert (a failed assertion must not unwind a fiber's
 * stack): they record, and the test body asserts after joining them. */
struct mover {
	int fd;
	int dirs;
	int64_t after;     /* sleep this long, then set */
	int64_t deadline;  /* relative to the moment of the set */
	int rc;            /* gr_fd_set_deadline's */
};

static void *mover_fn(void *arg)
{
	struct mover *m = arg;

	gr_sleep(m->after);
	m->rc = gr_fd_set_deadline(m->fd, m->dirs, gr_now() + m->deadline);
	return NULL;
}

Test(fd_deadline, a_deadline_moved_later_while_a_recv_waits_lets_it_get_the_data)
{
	int sv[2];

	make_socketpair(sv);
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, gr_now() + 60 * GR_MSEC));
	struct call r = { .fd = sv[0], .kind = RECV };
	/* At 20 ms the deadline moves from 60 ms to 520 ms; the data comes
	 * at about 100 ms: after the old deadline, well before the new one. */
	struct mover m = { .fd = sv[0], .dirs = GR_FD_READ, .after = 20 * GR_MSEC,
			   .deadline = 500 * GR_MSEC, .rc = 1 };
	gr_fiber *fr = gr_spawn(call_fn, &r), *fm = gr_spawn(mover_fn, &m);

	assert_ok(gr_join(fm, NULL, GR_FOREVER));
	assert_ok(m.rc);
	/* Past the first deadline, the reader must still be waiting. */
	cr_assert_eq(gr_sleep(80 * GR_MSEC), 0);
	cr_assert_eq(r.took, 0, "the reader ended at the old deadline: %s", strerror(r.err));
	cr_assert_eq(send(sv[1], "moved", 5, 0), 5);
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.n, 5, "reader: %zd (%s)", r.n, strerror(r.err));
	cr_assert_eq(memcmp(r.buf, "moved", 5), 0);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_deadline_moved_earlier_while_a_recv_waits_ends_it_then)
{
	int sv[2];

	make_socketpair(sv);
	struct call r = { .fd = sv[0], .kind = RECV };
	struct mover m = { .fd = sv[0], .dirs = GR_FD_READ, .after = 20 * GR_MSEC,
			   .deadline = 40 * GR_MSEC, .rc = 1 };
	gr_fiber *fr = gr_spawn(call_fn, &r), *fm = gr_spawn(mover_fn, &m);

	assert_ok(gr_join(fm, NULL, GR_FOREVER));
	assert_ok(m.rc);
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.err, ETIMEDOUT, "reader: %zd (%s)", r.n, strerror(r.err));
	assert_timed(r.took, 60 * GR_MSEC);
	/* Nothing was consumed: data sent now is all there. */
	cr_assert_eq(send(sv[1], "intact", 6, 0), 6);
	char buf[8];
	cr_assert_eq(recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT), 6);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, a_passed_deadline_set_while_a_send_waits_ends_it_at_once)
{
	int sv[2];

	make_socketpair(sv);
	fill(sv[0]);
	struct call w = { .fd = sv[0], .kind = SEND };
	gr_fiber *fw = gr_spawn(call_fn, &w);

	cr_assert_eq(gr_sleep(20 * GR_MSEC), 0);
	int64_t t0 = gr_now();
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, 1));
	assert_ok(gr_join(fw, NULL, GR_FOREVER));
	cr_assert_eq(w.err, ETIMEDOUT, "writer: %zd (%s)", w.n, strerror(w.err));
	cr_assert_lt(gr_now() - t0, SLACK);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, the_other_direction_moving_leaves_a_waiting_call_alone)
{
	int sv[2];

	make_socketpair(sv);
	struct call r = { .fd = sv[0], .kind = RECV };
	gr_fiber *fr = gr_spawn(call_fn, &r);

	cr_assert_eq(gr_sleep(10 * GR_MSEC), 0);
	/* Writes get a passed deadline: the waiting read is not theirs. */
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_WRITE, 1));
	cr_assert_eq(gr_sleep(20 * GR_MSEC), 0);
	cr_assert_eq(r.took, 0, "the reader ended: %s", strerror(r.err));
	cr_assert_eq(send(sv[1], "r", 1, 0), 1);
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.n, 1);
	close(sv[0]);
	close(sv[1]);
}

Test(fd_deadline, deadlines_moving_while_data_arrives_never_lose_a_byte)
{
	/* A reader waits; in one turn data arrives and its deadline moves (later,
	 * earlier, or to the past). Whatever wins, each byte is read exactly
	 * once: by the call (it returns it) or later (it stayed in the socket). */
	for (int round = 0; round < 200; round++) {
		int sv[2];

		make_socketpair(sv);
		struct call r = { .fd = sv[0], .kind = RECV };
		gr_fiber *fr = gr_spawn(call_fn, &r);
		for (int i = 0; i < 1 + round % 3; i++)
			cr_assert_eq(gr_sleep(0), 0);
		cr_assert_eq(send(sv[1], "xyz", 3, 0), 3);
		int64_t d = round % 4 == 0 ? 1 : gr_now() + (round % 4) * 20 * GR_MSEC;
		assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, d));
		if (round % 2)
			assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, GR_FOREVER));
		assert_ok(gr_join(fr, NULL, GR_FOREVER));
		char left[8];
		ssize_t rest = recv(sv[0], left, sizeof(left), MSG_DONTWAIT);
		if (r.n == 3) {
			cr_assert_eq(memcmp(r.buf, "xyz", 3), 0);
			cr_assert_eq(rest, -1, "round %d: bytes read twice", round);
		} else {
			cr_assert_eq(r.err, ETIMEDOUT, "round %d: %zd (%s)", round, r.n, strerror(r.err));
			cr_assert_eq(rest, 3, "round %d: the moved read dropped the bytes", round);
		}
		close(sv[0]);
		close(sv[1]);
	}
}

Test(fd_deadline, setting_the_same_deadline_again_does_not_disturb_a_waiting_call)
{
	int sv[2];

	make_socketpair(sv);
	int64_t d = gr_now() + 60 * GR_MSEC;
	assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, d));
	struct call r = { .fd = sv[0], .kind = RECV };
	gr_fiber *fr = gr_spawn(call_fn, &r);
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(gr_sleep(0), 0);
		assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, d));
	}
	assert_ok(gr_join(fr, NULL, GR_FOREVER));
	cr_assert_eq(r.err, ETIMEDOUT);
	cr_assert_lt(r.took, 60 * GR_MSEC + SLACK);
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ the fiber's deadline */

struct both {
	int fd;
	int64_t fiber_in, fd_in;   /* relative deadlines */
	int err;
	int64_t took;
	int64_t fiber_after;       /* the fiber's deadline once the call returned */
	int64_t fiber_set;
	int set_rc;                /* gr_fd_set_deadline's */
};

static void *both_fn(void *arg)
{
	struct both *b = arg;
	char c;
	int64_t t0 = gr_now();

	b->fiber_set = t0 + b->fiber_in;
	gr_deadline_set(b->fiber_set);
	b->set_rc = gr_fd_set_deadline(b->fd, GR_FD_READ, t0 + b->fd_in);
	ssize_t n = gr_recv(b->fd, &c, 1, 0);
	b->err = n < 0 ? errno : 0;
	b->took = gr_now() - t0;
	b->fiber_after = gr_deadline_get();
	return NULL;
}

Test(fd_deadline, the_sooner_of_the_fibers_and_the_fds_deadline_wins)
{
	int sv[2];

	make_socketpair(sv);
	struct both fiber_first = { .fd = sv[0], .fiber_in = 30 * GR_MSEC, .fd_in = 300 * GR_MSEC };
	struct both fd_first = { .fd = sv[0], .fiber_in = 300 * GR_MSEC, .fd_in = 30 * GR_MSEC };
	struct both *cases[] = { &fiber_first, &fd_first };

	for (int i = 0; i < 2; i++) {
		gr_fiber *f = gr_spawn(both_fn, cases[i]);

		assert_ok(gr_join(f, NULL, GR_FOREVER));
		assert_ok(cases[i]->set_rc);
		cr_assert_eq(cases[i]->err, ETIMEDOUT, "case %d: %s", i, strerror(cases[i]->err));
		assert_timed(cases[i]->took, 30 * GR_MSEC);
		cr_assert_eq(cases[i]->fiber_after, cases[i]->fiber_set,
			     "the fd's deadline changed the fiber's");
	}
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ what resets them */

Test(fd_deadline, gr_close_clears_the_deadlines_of_the_number)
{
	int p[2], q[2];
	char c;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	assert_ok(gr_fd_set_deadline(p[0], GR_FD_READ, 1));
	cr_assert_eq(gr_read(p[0], &c, 1), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	int num = p[0];
	cr_assert_eq(gr_close(p[0]), 0);
	close(p[1]);
	cr_assert_eq(pipe2(q, O_CLOEXEC), 0);
	cr_assert_eq(q[0], num, "the number was not reused; the test needs it");
	cr_assert_eq(write(q[1], "n", 1), 1);
	cr_assert_eq(gr_read(q[0], &c, 1), 1, "the new file inherited the deadline: %s",
		     strerror(errno));
	close(q[0]);
	close(q[1]);
}

Test(fd_deadline, an_accepted_socket_starts_with_no_deadline)
{
	int port, lfd = grt_listener(&port);
	int c = grt_connect_plain(port);
	int p[2];

	/* A number that had a deadline, closed with plain close() ... */
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	assert_ok(gr_fd_set_deadline(p[0], GR_FD_READ | GR_FD_WRITE, 1));
	int num = p[0];
	close(p[0]);
	close(p[1]);
	/* ... and reused by gr_accept: the socket is a new file. */
	int s = gr_accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(s, 0, "accept: %s", strerror(errno));
	if (s != num)
		cr_skip_test("the number was not reused (%d, %d)", s, num);
	cr_assert_eq(send(c, "hi", 2, 0), 2);
	char buf[4];
	cr_assert_eq(gr_recv(s, buf, sizeof(buf), 0), 2, "the accepted socket kept a deadline: %s",
		     strerror(errno));
	cr_assert_eq(gr_send(s, "ok", 2, 0), 2);
	cr_assert_eq(gr_close(s), 0);
	close(c);
	cr_assert_eq(gr_close(lfd), 0);
}

Test(fd_deadline, a_listeners_read_deadline_bounds_accept)
{
	int port, lfd = grt_listener(&port);

	int64_t t0 = gr_now();
	assert_ok(gr_fd_set_deadline(lfd, GR_FD_READ, t0 + 40 * GR_MSEC));
	cr_assert_eq(gr_accept4(lfd, NULL, NULL, SOCK_CLOEXEC), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	assert_timed(gr_now() - t0, 40 * GR_MSEC);
	cr_assert_eq(gr_close(lfd), 0);
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	return sa;
}

struct conn_call {
	int fd, port;
	int r, err;
	int64_t took;
};

static void *connect_fn(void *arg)
{
	struct conn_call *c = arg;
	struct sockaddr_in sa = loopback(c->port);
	int64_t t0 = gr_now();

	c->r = gr_connect(c->fd, (struct sockaddr *)&sa, sizeof(sa));
	c->err = c->r < 0 ? errno : 0;
	c->took = gr_now() - t0;
	return NULL;
}

Test(fd_deadline, a_write_deadline_bounds_connect_even_when_moved_while_it_waits)
{
	/* A listener with a full accept queue drops SYNs: connect hangs. */
	int port, lfd = grt_listener(&port);
	int queued[8];

	cr_assert_eq(listen(lfd, 0), 0);
	for (int i = 0; i < 8; i++) {
		struct sockaddr_in sa = loopback(port);

		queued[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		connect(queued[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	struct conn_call c = { .fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), .port = port };
	assert_ok(gr_fd_set_deadline(c.fd, GR_FD_WRITE, gr_now() + 2 * GR_SEC));
	gr_fiber *f = gr_spawn(connect_fn, &c);
	cr_assert_eq(gr_sleep(20 * GR_MSEC), 0);
	if (c.took)
		cr_skip_test("connect to a full listener did not block here (%s)", strerror(c.err));
	/* Moved earlier while the connect waits: it ends 30 ms from now. */
	int64_t t0 = gr_now();
	assert_ok(gr_fd_set_deadline(c.fd, GR_FD_WRITE, t0 + 30 * GR_MSEC));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(c.err, ETIMEDOUT, "connect: %d (%s)", c.r, strerror(c.err));
	assert_timed(gr_now() - t0, 30 * GR_MSEC);
	cr_assert_eq(gr_close(c.fd), 0);
	for (int i = 0; i < 8; i++)
		close(queued[i]);
	cr_assert_eq(gr_close(lfd), 0);
}

/* ------------------------------------------------------------ kills and closes */

Test(fd_deadline, a_kill_or_a_close_after_a_move_still_ends_the_call)
{
	for (int how = 0; how < 2; how++) {
		int sv[2];

		make_socketpair(sv);
		struct call r = { .fd = sv[0], .kind = RECV };
		gr_fiber *fr = gr_spawn(call_fn, &r);
		cr_assert_eq(gr_sleep(0), 0);
		/* The move and the end in one turn: the end must win. */
		assert_ok(gr_fd_set_deadline(sv[0], GR_FD_READ, gr_now() + GR_SEC));
		if (how == 0)
			assert_ok(gr_kill(fr));
		else
			cr_assert_eq(gr_close(sv[0]), 0);
		assert_ok(gr_join(fr, NULL, GR_FOREVER));
		cr_assert_eq(r.err, how == 0 ? ECANCELED : EBADF, "how %d: %zd (%s)", how, r.n,
			     strerror(r.err));
		cr_assert_lt(r.took, GR_SEC / 2);
		if (how == 0)
			close(sv[0]);
		close(sv[1]);
	}
}

/* ------------------------------------------------------------ misuse */

Test(fd_deadline, bad_arguments_are_refused)
{
	int p[2];

	assert_err(gr_fd_set_deadline(-1, GR_FD_READ, GR_FOREVER), EBADF);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	assert_err(gr_fd_set_deadline(p[0], 0, GR_FOREVER), EINVAL);
	assert_err(gr_fd_set_deadline(p[0], 4, GR_FOREVER), EINVAL);
	assert_err(gr_fd_set_deadline(p[0], GR_FD_READ | 8, GR_FOREVER), EINVAL);
	int num = p[0];
	close(p[0]);
	close(p[1]);
	assert_err(gr_fd_set_deadline(num, GR_FD_READ, gr_now() + GR_SEC), EBADF);
	assert_err(gr_fd_set_deadline(1 << 20, GR_FD_READ, gr_now() + GR_SEC), EBADF);
}
