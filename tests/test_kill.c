/* test_kill.c — gr_kill: before start, during a sleep, during blocked I/O,
 * during a join; every later blocking call fails with ECANCELED; a kill
 * racing a completed read keeps the bytes; no write into a freed stack; and
 * cleanup after a kill (gr_kill_ack): a handler's last message, a parent
 * reaping its children, a kill during cleanup, the cleanup deadline.
 * Runs once per hub. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(kill);

static void *set_flag(void *arg)
{
	*(int *)arg = 1;
	return (void *)1;
}

Test(kill, kill_before_start_never_runs_the_body)
{
	int ran = 0;
	void *res = (void *)0x1234;
	gr_fiber *f = gr_spawn(set_flag, &ran);

	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_kill(f), 0, "a second kill is harmless");
	cr_assert_eq(gr_join(f, &res, GR_FOREVER), 0);
	cr_assert_eq(ran, 0, "the body of a fiber killed before it started ran");
	cr_assert_null(res, "a fiber killed before it ran has a NULL result");
}

static void count_up(void *arg)
{
	(*(int *)arg)++;
}

Test(kill, kill_before_start_of_a_detached_fiber)
{
	int ran = 0;
	struct gr_spawn_opts o = { .detached = 1 };
	gr_fiber *f = gr_spawn_with(&o, set_flag, &ran);

	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_hub_join(GR_FOREVER), 0);
	cr_assert_eq(ran, 0);
	(void)count_up;
}

struct sleep_result {
	int rc;
	int64_t took;
	int later[4];
};

static void *long_sleep(void *arg)
{
	struct sleep_result *r = arg;
	int64_t t0 = gr_now();
	r->rc = gr_sleep(10 * GR_SEC);
	r->took = gr_now() - t0;
	r->later[0] = gr_sleep(GR_MSEC);
	r->later[1] = gr_sleep(0);
	r->later[2] = gr_wait_fd(STDIN_FILENO, POLLIN, gr_now() + GR_SEC) == -1 ? errno : 0;
	r->later[3] = gr_sleep_until(gr_now() + GR_MSEC);
	return (void *)2;
}

Test(kill, kill_during_a_sleep)
{
	struct sleep_result r = { 0 };
	gr_fiber *f = gr_spawn(long_sleep, &r);
	void *res;

	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* f is now asleep */
	int64_t t0 = gr_now();
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, &res, GR_FOREVER), 0);
	cr_assert_lt(gr_now() - t0, GR_SEC / 2, "the killed sleeper did not wake promptly");
	cr_assert_eq(r.rc, -ECANCELED, "gr_sleep of a killed fiber: %d", r.rc);
	cr_assert_lt(r.took, 5 * GR_SEC);
	cr_assert_eq(r.later[0], -ECANCELED);
	cr_assert_eq(r.later[1], -ECANCELED, "a yield after a kill: %d", r.later[1]);
	cr_assert_eq(r.later[2], ECANCELED);
	cr_assert_eq(r.later[3], -ECANCELED);
	cr_assert_eq(res, (void *)2, "the killed fiber unwinds by returning");
	cr_assert_eq(gr_kill(f) , -EINVAL, "f was released by the join");
}

Test(kill, kill_of_an_ended_fiber_is_esrch)
{
	int ran = 0;
	gr_fiber *f = gr_spawn(set_flag, &ran);

	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(ran, 1);
	cr_assert_eq(gr_kill(f), -ESRCH);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
}

static void *kill_self(void *arg)
{
	int *rc = arg;

	rc[0] = gr_kill(gr_self());
	rc[1] = gr_sleep(0);
	rc[2] = gr_sleep(GR_MSEC);
	return NULL;
}

Test(kill, a_fiber_may_kill_itself)
{
	int rc[3] = { 1, 1, 1 };
	gr_fiber *f = gr_spawn(kill_self, rc);

	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	cr_assert_eq(rc[0], 0);
	cr_assert_eq(rc[1], -ECANCELED);
	cr_assert_eq(rc[2], -ECANCELED);
}

/* A killed fiber's socket calls that would not have to wait (data there,
 * room to send) fail all the same, and move nothing: the readiness hubs try
 * these calls before building a park record, after the gate's checks. */
struct ready_calls {
	int fd;
	ssize_t r[4];
	int e[4];
	ssize_t after_ack;
};

static void *ready_calls_after_a_kill(void *arg)
{
	struct ready_calls *s = arg;
	char buf[8];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	gr_kill(gr_self());
	s->r[0] = gr_recv(s->fd, buf, sizeof(buf), 0);
	s->e[0] = errno;
	s->r[1] = gr_recvmsg(s->fd, &msg, 0);
	s->e[1] = errno;
	s->r[2] = gr_send(s->fd, "y", 1, 0);
	s->e[2] = errno;
	iov.iov_len = 1;
	s->r[3] = gr_sendmsg(s->fd, &msg, 0);
	s->e[3] = errno;
	cr_assert_eq(gr_kill_ack(GR_FOREVER), 0);
	s->after_ack = gr_recv(s->fd, buf, sizeof(buf), 0);
	return NULL;
}

Test(kill, a_killed_fibers_ready_socket_calls_fail_and_move_nothing)
{
	int sv[2];
	struct ready_calls s = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(write(sv[0], "x", 1), 1);
	s.fd = sv[1];
	gr_fiber *f = gr_spawn(ready_calls_after_a_kill, &s);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(s.r[i], -1, "call %d went through after the kill", i);
		cr_assert_eq(s.e[i], ECANCELED, "call %d: %s", i, strerror(s.e[i]));
	}
	cr_assert_eq(s.after_ack, 1, "the byte waiting before the kill was lost");
	char c;
	cr_assert_eq(recv(sv[0], &c, 1, MSG_DONTWAIT), -1, "a send after the kill went through");
	cr_assert_eq(errno, EAGAIN);
	close(sv[0]);
	gr_close(sv[1]);
}

/* ------------------------------------------------------------ blocked I/O */

struct recv_state {
	int fd;
	ssize_t n1, n2, n3;
	int e1, e2, e3;
	int wait_rc, wait_errno;
	int close_rc;
	char buf[64];
};

static void *recv_until_killed(void *arg)
{
	struct recv_state *s = arg;
	char more[8];

	s->n1 = gr_recv(s->fd, s->buf, sizeof(s->buf), 0);
	s->e1 = errno;
	s->n2 = gr_recv(s->fd, more, sizeof(more), 0);
	s->e2 = errno;
	s->n3 = gr_read(s->fd, more, sizeof(more));
	s->e3 = errno;
	s->wait_rc = gr_wait_fd(s->fd, POLLIN, GR_FOREVER);
	s->wait_errno = errno;
	return NULL;
}

Test(kill, kill_during_a_blocked_recv)
{
	int sv[2];
	struct recv_state s = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	s.fd = sv[0];
	gr_fiber *f = gr_spawn(recv_until_killed, &s);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* f blocks in recv */
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(s.n1, -1);
	cr_assert_eq(s.e1, ECANCELED, "blocked recv of a killed fiber: %s", strerror(s.e1));
	cr_assert_eq(s.n2, -1);
	cr_assert_eq(s.e2, ECANCELED, "recv after the kill: %s", strerror(s.e2));
	cr_assert_eq(s.n3, -1);
	cr_assert_eq(s.e3, ECANCELED, "read after the kill: %s", strerror(s.e3));
	cr_assert_eq(s.wait_rc, -1);
	cr_assert_eq(s.wait_errno, ECANCELED);
	/* The socket is intact: data sent now is all there for the next reader. */
	cr_assert_eq(send(sv[1], "hello", 5, 0), 5);
	char buf[8];
	cr_assert_eq(recv(sv[0], buf, sizeof(buf), MSG_DONTWAIT), 5);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	close(sv[0]);
	close(sv[1]);
}

static void *wait_fd_until_killed(void *arg)
{
	struct recv_state *s = arg;

	s->wait_rc = gr_wait_fd(s->fd, POLLIN, GR_FOREVER);
	s->wait_errno = errno;
	return NULL;
}

Test(kill, kill_during_wait_fd)
{
	int p[2];
	struct recv_state s = { 0 };

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	s.fd = p[0];
	gr_fiber *f = gr_spawn(wait_fd_until_killed, &s);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(s.wait_rc, -1);
	cr_assert_eq(s.wait_errno, ECANCELED);
	close(p[0]);
	close(p[1]);
}

static void *sleep_long(void *arg)
{
	return (void *)(intptr_t)gr_sleep(10 * GR_SEC);
}

static void *join_arg(void *arg)
{
	return (void *)(intptr_t)gr_join(arg, NULL, GR_FOREVER);
}

Test(kill, kill_during_a_join_leaves_the_target_joinable)
{
	gr_fiber *target = gr_spawn(sleep_long, NULL);
	gr_fiber *joiner = gr_spawn(join_arg, target);
	void *rc;

	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(joiner), 0);
	cr_assert_eq(gr_join(joiner, &rc, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)rc, -ECANCELED);
	cr_assert_eq(gr_kill(target), 0);
	cr_assert_eq(gr_join(target, &rc, gr_now() + 5 * GR_SEC), 0, "target not joinable");
	cr_assert_eq((intptr_t)rc, -ECANCELED);
}

static void *hub_join_until_killed(void *arg)
{
	return (void *)(intptr_t)gr_hub_join(GR_FOREVER);
}

Test(kill, kill_during_hub_join)
{
	gr_fiber *sleeper = gr_spawn(sleep_long, NULL);
	gr_fiber *j = gr_spawn(hub_join_until_killed, NULL);
	void *rc;

	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(j), 0);
	cr_assert_eq(gr_join(j, &rc, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)rc, -ECANCELED);
	gr_kill(sleeper);
	cr_assert_eq(gr_join(sleeper, NULL, GR_FOREVER), 0);
}

static void *close_after_kill(void *arg)
{
	struct recv_state *s = arg;
	char c;

	s->n1 = gr_recv(s->fd, &c, 1, 0);
	s->e1 = errno;
	/* A killed fiber must still be able to release what it holds. */
	s->close_rc = gr_close(s->fd);
	return NULL;
}

Test(kill, a_killed_fiber_can_still_close_its_fd)
{
	int sv[2];
	struct recv_state s = { 0 };

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	s.fd = sv[0];
	gr_fiber *f = gr_spawn(close_after_kill, &s);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(s.e1, ECANCELED);
	cr_assert_eq(s.close_rc, 0, "gr_close in a killed fiber failed");
	cr_assert_eq(fcntl(sv[0], F_GETFD), -1, "the fd is still open");
	close(sv[1]);
}

/* ------------------------------------------------------------ kill vs completion */

static void *read_twice(void *arg)
{
	struct recv_state *s = arg;
	char more[8];

	s->n1 = gr_read(s->fd, s->buf, sizeof(s->buf));
	s->e1 = errno;
	s->n2 = gr_read(s->fd, more, sizeof(more));
	s->e2 = errno;
	return NULL;
}

Test(kill, a_kill_after_the_read_completed_returns_the_bytes_then_ecanceled)
{
	int p[2];
	struct recv_state s = { 0 };

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	s.fd = p[0];
	gr_fiber *f = gr_spawn(read_twice, &s);
	/* f parks in read; main runs on in the same turn. */
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(write(p[1], "data", 4), 4);
	/* This yield reaps f's completion and queues f behind main: main runs
	 * first, so the kill lands after the kernel finished the read but
	 * before f resumed. */
	cr_assert_eq(gr_sleep(0), 0);
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(s.n1, 4, "the completed read must return its bytes: %zd (%s)", s.n1,
		     strerror(s.e1));
	cr_assert_eq(memcmp(s.buf, "data", 4), 0);
	cr_assert_eq(s.n2, -1);
	cr_assert_eq(s.e2, ECANCELED, "the call after: %s", strerror(s.e2));
	close(p[0]);
	close(p[1]);
}

Test(kill, a_kill_racing_a_read_never_drops_bytes)
{
	/* Data arrives and the kill follows at once, in the same turn: either
	 * the read won (it returns the bytes) or the cancel did (the bytes are
	 * still in the pipe). Never both lost. Repeated for a spread of timing. */
	for (int round = 0; round < 200; round++) {
		int p[2];
		struct recv_state s = { 0 };

		cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
		s.fd = p[0];
		gr_fiber *f = gr_spawn(read_twice, &s);
		for (int i = 0; i < 1 + round % 3; i++)
			cr_assert_eq(gr_sleep(0), 0);
		cr_assert_eq(write(p[1], "xyz", 3), 3);
		cr_assert_eq(gr_kill(f), 0);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(s.n2, -1);
		cr_assert_eq(s.e2, ECANCELED);
		char left[8];
		int fl = fcntl(p[0], F_GETFL);
		fcntl(p[0], F_SETFL, fl | O_NONBLOCK);
		ssize_t rest = read(p[0], left, sizeof(left));
		if (s.n1 == 3) {
			cr_assert_eq(memcmp(s.buf, "xyz", 3), 0);
			cr_assert_eq(rest, -1, "round %d: bytes read twice", round);
		} else {
			cr_assert_eq(s.n1, -1, "round %d: read returned %zd", round, s.n1);
			cr_assert_eq(s.e1, ECANCELED, "round %d: %s", round, strerror(s.e1));
			cr_assert_eq(rest, 3, "round %d: the cancelled read dropped the bytes", round);
		}
		close(p[0]);
		close(p[1]);
	}
}

/* ------------------------------------------------------------ freed stacks
 *
 * The same function runs twice on what should be the same pooled stack:
 * first as a fiber blocked in recv into a stack buffer, killed and joined;
 * then as a fiber that fills the same buffer with a canary and waits while
 * data is sent to the socket. If the cancelled recv were still live in the
 * kernel, it would land in the new fiber's buffer. */

enum { RECV_MODE, CANARY_MODE };
static char *recv_buf_addr, *canary_buf_addr;
static int canary_fd;
static volatile int canary_go;

static void *stack_user(void *arg)
{
	char buf[4096];

	if ((intptr_t)arg == RECV_MODE) {
		recv_buf_addr = buf;
		memset(buf, 0x5a, sizeof(buf));
		ssize_t n = gr_recv(canary_fd, buf, sizeof(buf), 0);
		return (void *)(intptr_t)(n < 0 ? -errno : n);
	}
	canary_buf_addr = buf;
	memset(buf, 0xc3, sizeof(buf));
	while (!canary_go)
		gr_sleep(GR_MSEC / 2);
	for (size_t i = 0; i < sizeof(buf); i++) {
		if ((unsigned char)buf[i] != 0xc3)
			return (void *)(intptr_t)(i + 1);
	}
	return NULL;
}

Test(kill, a_killed_recv_never_writes_into_a_reused_stack)
{
	int sv[2];
	void *rc;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	canary_fd = sv[0];
	gr_fiber *r = gr_spawn(stack_user, (void *)(intptr_t)RECV_MODE);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(r), 0);
	cr_assert_eq(gr_join(r, &rc, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)rc, -ECANCELED);
	/* r's stack is back in the pool (or unmapped): take it again. */
	gr_fiber *c = gr_spawn(stack_user, (void *)(intptr_t)CANARY_MODE);
	cr_assert_eq(gr_sleep(0), 0);
	char data[4096];
	memset(data, 'D', sizeof(data));
	cr_assert_eq(send(sv[1], data, sizeof(data), 0), (ssize_t)sizeof(data));
	/* Give a stray completion every chance to land. */
	for (int i = 0; i < 5; i++)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	canary_go = 1;
	cr_assert_eq(gr_join(c, &rc, gr_now() + 5 * GR_SEC), 0);
	/* The check is only sharp if the stack (and so the buffer) was reused,
	 * which the pool does for a default-size stack. */
	cr_assert_eq(canary_buf_addr, recv_buf_addr, "the pooled stack was not reused");
	cr_assert_null(rc, "the canary was overwritten at byte %zd (stack %s)",
		       (intptr_t)rc - 1, canary_buf_addr == recv_buf_addr ? "reused" : "not reused");
	/* Nothing was consumed from the socket by the dead recv. */
	char got[4096];
	ssize_t n = recv(sv[0], got, sizeof(got), MSG_DONTWAIT);
	cr_assert_eq(n, (ssize_t)sizeof(got), "the socket lost data: %zd", n);
	close(sv[0]);
	close(sv[1]);
}

/* ------------------------------------------------------------ accept vs kill */

struct acc {
	int lfd;
	int fd;
	int err;
};

static void *accept_until_killed(void *arg)
{
	struct acc *a = arg;

	a->fd = gr_accept4(a->lfd, NULL, NULL, SOCK_CLOEXEC);
	a->err = a->fd < 0 ? errno : 0;
	return NULL;
}

Test(kill, a_kill_racing_an_accept_never_leaks_or_loses_the_connection)
{
	/* A connection arrives and the acceptor is killed in the same turn:
	 * either the accept won (the fiber gets the fd and closes it) or the
	 * cancel did (the connection waits in the listener). An fd accepted by
	 * the kernel but dropped by the runtime would show as a leak in the
	 * teardown check, a lost connection as an empty backlog here. */
	int port, lfd = grt_listener(&port);
	int accepted = 0, cancelled = 0;

	for (int round = 0; round < 60; round++) {
		struct acc a = { .lfd = lfd, .fd = -2 };
		gr_fiber *f = gr_spawn(accept_until_killed, &a);

		for (int i = 0; i < 1 + round % 3; i++)
			cr_assert_eq(gr_sleep(0), 0);
		int c = grt_connect_plain(port);
		if (round % 2)
			cr_assert_eq(gr_sleep(0), 0);
		cr_assert_eq(gr_kill(f), 0);
		cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
		if (a.fd >= 0) {
			accepted++;
			cr_assert_eq(gr_close(a.fd), 0);
		} else {
			cancelled++;
			cr_assert_eq(a.err, ECANCELED, "round %d: %s", round, strerror(a.err));
			int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
			cr_assert_geq(s, 0, "round %d: the cancelled accept lost the connection (%s)", round,
				      strerror(errno));
			close(s);
		}
		cr_assert_eq(close(c), 0);
	}
	cr_assert_eq(gr_close(lfd), 0);
	cr_assert_eq(accepted + cancelled, 60);
}

static void *connect_until_killed(void *arg)
{
	struct acc *a = arg;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)a->lfd),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	a->fd = gr_connect(a->fd, (struct sockaddr *)&sa, sizeof(sa));
	a->err = a->fd < 0 ? errno : 0;
	return NULL;
}

Test(kill, kill_during_a_blocked_connect)
{
	/* A listener with a full accept queue drops SYNs: connect hangs. */
	int port, lfd = grt_listener(&port);
	int queued[8], nq = 0;

	cr_assert_eq(listen(lfd, 0), 0);
	for (; nq < 8; nq++) {
		queued[nq] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		connect(queued[nq], (struct sockaddr *)&sa, sizeof(sa));
	}
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct acc a = { .lfd = port, .fd = s };
	gr_fiber *f = gr_spawn(connect_until_killed, &a);
	cr_assert_eq(gr_sleep(20 * GR_MSEC), 0);
	if (a.fd != s)
		cr_skip_test("connect to a full listener did not block here (%s)", strerror(a.err));
	cr_assert_eq(gr_kill(f), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(a.fd, -1);
	cr_assert_eq(a.err, ECANCELED, "connect of a killed fiber: %s", strerror(a.err));
	cr_assert_eq(gr_close(s), 0);
	for (int i = 0; i < nq; i++)
		close(queued[i]);
	cr_assert_eq(gr_close(lfd), 0);
}

/* ------------------------------------------------------------ cleanup after a kill
 *
 * The user stories of the kill rule (docs/api.md, "Kills"): a killed fiber
 * acknowledges the kill with gr_kill_ack(cleanup_deadline), then its calls
 * work again, bounded by that deadline, so it can say goodbye, reap its
 * children and release what it holds. Fibers record; the test body asserts. */

struct goodbye {
	ssize_t first;            /* the recv the kill interrupts */
	int first_err;
	int killed_seen;          /* gr_killed() right after */
	ssize_t before_ack;       /* a send before acknowledging */
	int before_ack_err;
	int ack;
	int killed_after;         /* gr_killed() after the ack */
	ssize_t last;             /* the goodbye */
	int last_err;
	int handlers;
};

static struct goodbye bye;

static void goodbye_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[16];

	(void)peer;
	(void)arg;
	bye.handlers++;
	bye.first = gr_recv(fd, buf, sizeof(buf), 0);
	bye.first_err = errno;
	bye.killed_seen = gr_killed();
	bye.before_ack = gr_send(fd, "no", 2, 0);
	bye.before_ack_err = errno;
	bye.ack = gr_kill_ack(gr_now() + GR_SEC);
	bye.killed_after = gr_killed();
	bye.last = gr_send(fd, "bye\n", 4, 0);
	bye.last_err = errno;
}

Test(kill, a_killed_handler_sends_a_last_message_after_acknowledging)
{
	memset(&bye, 0, sizeof(bye));
	gr_server *s = gr_server_create("127.0.0.1", 0, goodbye_handler, NULL, NULL);
	cr_assert_not_null(s);
	assert_ok(gr_server_start(s));
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)gr_server_port(s)),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(gr_connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
	while (bye.handlers == 0)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* the handler waits in recv */
	assert_ok(gr_server_stop(s, GR_SERVER_KILL));
	char got[16];
	ssize_t n = 0, r;
	while ((r = gr_recv(c, got + n, sizeof(got) - (size_t)n, 0)) > 0)
		n += r;
	cr_assert_eq(r, 0, "the connection did not end cleanly: %s", strerror(errno));
	assert_ok(gr_server_wait(s, gr_now() + 5 * GR_SEC));
	assert_ok(gr_server_free(s));
	gr_close(c);
	cr_assert_eq(bye.first, -1);
	cr_assert_eq(bye.first_err, ECANCELED);
	cr_assert_eq(bye.killed_seen, 1);
	cr_assert_eq(bye.before_ack, -1, "a send before the ack went through");
	cr_assert_eq(bye.before_ack_err, ECANCELED);
	cr_assert_eq(bye.ack, 0);
	cr_assert_eq(bye.killed_after, 0);
	cr_assert_eq(bye.last, 4, "the goodbye: %s", strerror(bye.last_err));
	cr_assert_eq(n, 4, "the client got %zd bytes", n);
	cr_assert_eq(memcmp(got, "bye\n", 4), 0);
}

/* A parent with children: two have ended, one is still working. */
struct parent {
	gr_fiber *done[2], *busy;
	int wait_rc;              /* the wait the kill interrupts */
	int reap_done[2];         /* gr_join(ended, 0) while still killed */
	void *done_result[2];
	int try_busy;             /* gr_join(busy, 0): a try, still killed */
	int join_busy_killed;     /* gr_join(busy, FOREVER) before the ack */
	int ack;
	int join_busy;            /* and after */
	void *busy_result;
	int64_t busy_waited;
};

static void *child_value(void *arg)
{
	return arg;
}

static void *child_busy(void *arg)
{
	gr_sleep(30 * GR_MSEC);
	return arg;
}

static void *reaping_parent(void *arg)
{
	struct parent *p = arg;
	gr_event never;

	p->done[0] = gr_spawn(child_value, (void *)11);
	p->done[1] = gr_spawn(child_value, (void *)12);
	p->busy = gr_spawn(child_busy, (void *)13);
	gr_event_init(&never);
	p->wait_rc = gr_event_wait(&never, GR_FOREVER);
	gr_event_destroy(&never);
	for (int i = 0; i < 2; i++)
		p->reap_done[i] = gr_join(p->done[i], &p->done_result[i], 0);
	p->try_busy = gr_join(p->busy, NULL, 0);
	p->join_busy_killed = gr_join(p->busy, NULL, GR_FOREVER);
	p->ack = gr_kill_ack(gr_now() + GR_SEC);
	int64_t t0 = gr_now();
	p->join_busy = gr_join(p->busy, &p->busy_result, GR_FOREVER);
	p->busy_waited = gr_now() - t0;
	return NULL;
}

Test(kill, a_killed_parent_reaps_ended_children_and_waits_for_live_ones_after_the_ack)
{
	struct parent p = { 0 };
	gr_fiber *f = gr_spawn(reaping_parent, &p);

	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* the children ended but one; the parent waits */
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(p.wait_rc, -ECANCELED);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(p.reap_done[i], 0, "reaping ended child %d: %s", i, strerror(-p.reap_done[i]));
		cr_assert_eq((intptr_t)p.done_result[i], 11 + i);
	}
	cr_assert_eq(p.try_busy, -ETIMEDOUT, "a try on a live child: %d", p.try_busy);
	cr_assert_eq(p.join_busy_killed, -ECANCELED);
	cr_assert_eq(p.ack, 0);
	cr_assert_eq(p.join_busy, 0, "waiting for the live child after the ack: %s",
		     strerror(-p.join_busy));
	cr_assert_eq((intptr_t)p.busy_result, 13);
	cr_assert_gt(p.busy_waited, 0);
	/* Everything is reaped: the teardown finds no unreleased fiber. */
}

/* A kill during the cleanup cancels the cleanup in turn. */
struct cleanup {
	gr_fiber *child;
	int first, ack1, in_cleanup, killed_in_cleanup, ack2, kill_child, reap;
};

static void *cleanup_killed_again(void *arg)
{
	struct cleanup *c = arg;

	c->child = gr_spawn(sleep_long, NULL);
	c->first = gr_sleep(10 * GR_SEC);
	c->ack1 = gr_kill_ack(GR_FOREVER);
	/* Cleanup: wait for the child, which will not end by itself. */
	c->in_cleanup = gr_join(c->child, NULL, GR_FOREVER);
	c->killed_in_cleanup = gr_killed();
	c->ack2 = gr_kill_ack(gr_now() + GR_SEC);
	c->kill_child = gr_kill(c->child);
	c->reap = gr_join(c->child, NULL, GR_FOREVER);
	return NULL;
}

Test(kill, a_kill_during_cleanup_cancels_the_cleanup_call)
{
	struct cleanup c = { 0 };
	gr_fiber *f = gr_spawn(cleanup_killed_again, &c);

	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	assert_ok(gr_kill(f));
	cr_assert_eq(gr_sleep(GR_MSEC), 0); /* it acknowledged and waits for its child */
	cr_assert_eq(c.ack1, 0);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(c.first, -ECANCELED);
	cr_assert_eq(c.in_cleanup, -ECANCELED, "the cleanup's join: %d", c.in_cleanup);
	cr_assert_eq(c.killed_in_cleanup, 1);
	cr_assert_eq(c.ack2, 0);
	cr_assert_eq(c.kill_child, 0);
	cr_assert_eq(c.reap, 0);
}

/* The cleanup deadline bounds every call of the cleanup, and never
 * lengthens an earlier deadline of the fiber. */
struct bounded {
	int fd;
	int64_t own;              /* the fiber's deadline before the kill, relative; 0: none */
	int64_t cleanup;          /* the ack's, relative; GR_FOREVER: none */
	int first;
	ssize_t n;
	int err;
	int64_t took;
	int64_t deadline_after;   /* gr_deadline_get() after the ack */
	int64_t ack_at;
};

static void *bounded_cleanup(void *arg)
{
	struct bounded *b = arg;
	char c;

	if (b->own)
		gr_deadline_set(gr_now() + b->own);
	b->first = gr_sleep(10 * GR_SEC);
	b->ack_at = gr_now();
	gr_kill_ack(b->cleanup == GR_FOREVER ? GR_FOREVER : b->ack_at + b->cleanup);
	b->deadline_after = gr_deadline_get();
	b->n = gr_recv(b->fd, &c, 1, 0);
	b->err = errno;
	b->took = gr_now() - b->ack_at;
	return NULL;
}

Test(kill, the_cleanup_deadline_bounds_the_cleanups_calls_and_the_sooner_deadline_wins)
{
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	/* The ack's deadline applies; the fiber's own later one does not. */
	struct bounded cases[] = {
		{ .fd = sv[0], .own = 0, .cleanup = 40 * GR_MSEC },
		{ .fd = sv[0], .own = 10 * GR_SEC, .cleanup = 40 * GR_MSEC },
	};
	for (size_t i = 0; i < 2; i++) {
		gr_fiber *f = gr_spawn(bounded_cleanup, &cases[i]);

		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		assert_ok(gr_kill(f));
		assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
		cr_assert_eq(cases[i].first, -ECANCELED);
		cr_assert_eq(cases[i].deadline_after, cases[i].ack_at + 40 * GR_MSEC);
		cr_assert_eq(cases[i].n, -1);
		cr_assert_eq(cases[i].err, ETIMEDOUT, "case %zu: %s", i, strerror(cases[i].err));
		cr_assert_geq(cases[i].took, 40 * GR_MSEC);
		cr_assert_lt(cases[i].took, 40 * GR_MSEC + 100 * GR_MSEC);
	}
	/* An earlier deadline of the fiber stays: the ack never lengthens it. */
	struct bounded sooner = { .fd = sv[0], .own = 60 * GR_MSEC, .cleanup = 10 * GR_SEC };
	int64_t t0 = gr_now();
	gr_fiber *f = gr_spawn(bounded_cleanup, &sooner);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(sooner.err, ETIMEDOUT);
	cr_assert_lt(sooner.deadline_after, t0 + 60 * GR_MSEC + 50 * GR_MSEC,
		     "the cleanup deadline replaced a sooner one");
	cr_assert_lt(sooner.ack_at + sooner.took - t0, 60 * GR_MSEC + 100 * GR_MSEC);
	/* GR_FOREVER adds no bound: the recv waits until data comes. */
	struct bounded open = { .fd = sv[0], .own = 0, .cleanup = GR_FOREVER };
	f = gr_spawn(bounded_cleanup, &open);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	assert_ok(gr_kill(f));
	cr_assert_eq(gr_sleep(50 * GR_MSEC), 0);
	cr_assert_eq(open.took, 0, "a cleanup without a bound ended: %s", strerror(open.err));
	cr_assert_eq(send(sv[1], "!", 1, 0), 1);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(open.n, 1);
	cr_assert_eq(open.deadline_after, GR_FOREVER);
	close(sv[0]);
	close(sv[1]);
}

static void *ack_edges(void *arg)
{
	int *rc = arg;

	rc[0] = gr_kill_ack(GR_FOREVER);     /* not killed */
	rc[1] = gr_killed();
	gr_kill(gr_self());
	gr_kill(gr_self());                  /* twice: still one kill to acknowledge */
	rc[2] = gr_killed();
	rc[3] = gr_sleep(0);
	rc[4] = gr_kill_ack(GR_FOREVER);
	rc[5] = gr_kill_ack(GR_FOREVER);     /* acknowledged already */
	rc[6] = gr_sleep(0);
	rc[7] = gr_killed();
	return NULL;
}

Test(kill, ack_without_a_kill_and_twice_is_esrch_and_two_kills_need_one_ack)
{
	int rc[8];
	gr_fiber *f = gr_spawn(ack_edges, rc);

	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(rc[0], -ESRCH);
	cr_assert_eq(rc[1], 0);
	cr_assert_eq(rc[2], 1);
	cr_assert_eq(rc[3], -ECANCELED);
	cr_assert_eq(rc[4], 0);
	cr_assert_eq(rc[5], -ESRCH);
	cr_assert_eq(rc[6], 0);
	cr_assert_eq(rc[7], 0);
}

Test(kill, main_can_be_killed_and_acknowledge_too)
{
	assert_ok(gr_kill(gr_self()));
	cr_assert_eq(gr_killed(), 1);
	assert_err(gr_sleep(0), ECANCELED);
	assert_ok(gr_kill_ack(GR_FOREVER));
	assert_ok(gr_sleep(0));
	cr_assert_eq(gr_deadline_get(), GR_FOREVER);
}
