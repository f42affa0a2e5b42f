/* test_kill.c — gr_kill: before start, during a sleep, during blocked I/O,
 * during a join; every later blocking call fails with ECANCELED; a kill
 * racing a completed read keeps the bytes; no write into a freed stack.
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
