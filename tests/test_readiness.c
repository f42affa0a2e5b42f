/* test_readiness.c — behaviour the readiness hubs (epoll, poll) must get
 * right to match io_uring: waits that start after their edge, connections
 * arriving in one edge, errors waking both directions, fd numbers reused
 * behind greenring's back, FIFO deadlines, regular files, blocking-mode fds.
 * Runs on every hub, with identical expectations unless a test says why.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(readiness);

static void socketpair_nb(int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0,
		     "socketpair: %s", strerror(errno));
}

static void close_pair(int sv[2])
{
	cr_assert_eq(gr_close(sv[0]), 0);
	cr_assert_eq(gr_close(sv[1]), 0);
}

/* Let the hub reap whatever is pending, several loop turns. */
static void turns(int n)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(gr_sleep(0), 0);
}

struct waitfd {
	int fd;
	short events;
	int64_t deadline;
	int rc, err;
	int64_t woke;
};

static void *wait_fd_fn(void *arg)
{
	struct waitfd *w = arg;

	w->rc = gr_wait_fd(w->fd, w->events, w->deadline);
	w->err = w->rc < 0 ? errno : 0;
	w->woke = gr_now();
	return NULL;
}

/* ------------------------------------------------------------ level semantics */

Test(readiness, a_wait_that_starts_after_its_edge_returns_at_once)
{
	int sv[2];
	struct waitfd w = { .events = POLLIN, .deadline = GR_FOREVER };

	socketpair_nb(sv);
	w.fd = sv[0];
	/* A first waiter takes the edge and leaves the byte unread. */
	gr_fiber *f = gr_spawn(wait_fd_fn, &w);
	turns(3);
	cr_assert_eq(write(sv[1], "x", 1), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w.rc, 0);
	turns(3);
	/* The byte is still there: a new wait must not sleep for a new edge. */
	int64_t t0 = gr_now();
	cr_assert_eq(gr_wait_fd(sv[0], POLLIN, t0 + 5 * GR_SEC), 0, "%s", strerror(errno));
	cr_assert_lt(gr_now() - t0, GR_SEC, "waited for an edge that had already come");
	/* Drained behind the hub's back (plain read), the readiness is gone. */
	char c;
	cr_assert_eq(read(sv[0], &c, 1), 1);
	turns(3);
	t0 = gr_now();
	cr_assert_eq(gr_wait_fd(sv[0], POLLIN, t0 + 30 * GR_MSEC), -1, "stale readiness reported");
	cr_assert_eq(errno, ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 30 * GR_MSEC);
	close_pair(sv);
}

Test(readiness, a_writable_socket_is_ready_for_a_late_pollout_waiter)
{
	int sv[2];

	socketpair_nb(sv);
	/* Park a reader first so the fd is known to the hub, then ask for
	 * POLLOUT, which was true all along and never produced an edge. */
	struct waitfd r = { .fd = sv[0], .events = POLLIN, .deadline = GR_FOREVER };
	gr_fiber *f = gr_spawn(wait_fd_fn, &r);
	turns(3);
	int64_t t0 = gr_now();
	cr_assert_eq(gr_wait_fd(sv[0], POLLOUT, t0 + 5 * GR_SEC), 0);
	cr_assert_lt(gr_now() - t0, GR_SEC);
	cr_assert_eq(gr_wait_fd(sv[0], POLLIN | POLLOUT, t0 + 5 * GR_SEC), 0);
	cr_assert_eq(write(sv[1], "x", 1), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(r.rc, 0);
	close_pair(sv);
}

/* ------------------------------------------------------------ acceptors */

struct acceptor {
	int listener;
	int conn;
	int err;
	int use_wait_fd;
};

static void *accept_once(void *arg)
{
	struct acceptor *a = arg;

	if (a->use_wait_fd) {
		/* eventlet's style: trampoline, then a plain non-blocking accept. */
		if (gr_wait_fd(a->listener, POLLIN, gr_now() + 5 * GR_SEC) != 0) {
			a->err = errno;
			return NULL;
		}
		a->conn = accept4(a->listener, NULL, NULL, SOCK_CLOEXEC);
	} else {
		a->conn = gr_accept(a->listener, NULL, NULL);
	}
	a->err = a->conn < 0 ? errno : 0;
	return NULL;
}

static void run_acceptors(int use_wait_fd, int early)
{
	enum { N = 4 };
	int port, l = grt_listener(&port), clients[N];
	struct acceptor a[N];
	gr_fiber *f[N];

	cr_assert_eq(fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK), 0);
	/* Make the hub know the listener (one accept that parks, then gets a
	 * connection) so the burst below is an edge on a registered fd. */
	struct acceptor first = { .listener = l, .use_wait_fd = use_wait_fd };
	gr_fiber *ff = gr_spawn(accept_once, &first);
	turns(3);
	int c0 = grt_connect_plain(port);
	cr_assert_eq(gr_join(ff, NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_geq(first.conn, 0, "%s", strerror(first.err));

	for (int i = 0; i < N; i++)
		a[i] = (struct acceptor){ .listener = l, .conn = -1, .use_wait_fd = use_wait_fd };
	if (early) {
		/* Every acceptor parked, then N connections at once: typically
		 * one edge for all of them. Each acceptor accepts exactly once. */
		for (int i = 0; i < N; i++)
			f[i] = gr_spawn(accept_once, &a[i]);
		turns(3);
		for (int i = 0; i < N; i++)
			clients[i] = grt_connect_plain(port);
	} else {
		/* N connections queued and their edge consumed by the hub with
		 * nobody waiting; then the acceptors arrive. */
		for (int i = 0; i < N; i++)
			clients[i] = grt_connect_plain(port);
		turns(3);
		for (int i = 0; i < N; i++)
			f[i] = gr_spawn(accept_once, &a[i]);
	}
	for (int i = 0; i < N; i++) {
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0,
			     "acceptor %d stranded with a connection waiting", i);
		cr_assert_geq(a[i].conn, 0, "acceptor %d: %s", i, strerror(a[i].err));
		cr_assert_eq(gr_close(a[i].conn), 0);
		cr_assert_eq(close(clients[i]), 0);
	}
	cr_assert_eq(gr_close(first.conn), 0);
	cr_assert_eq(close(c0), 0);
	cr_assert_eq(gr_close(l), 0);
}

Test(readiness, parked_acceptors_each_get_one_of_a_burst_of_connections)
{
	run_acceptors(0, 1);
}

Test(readiness, acceptors_arriving_after_the_edge_find_the_queued_connections)
{
	run_acceptors(0, 0);
}

Test(readiness, wait_fd_acceptors_each_get_one_of_a_burst_of_connections)
{
	run_acceptors(1, 1);
}

Test(readiness, wait_fd_acceptors_arriving_after_the_edge_find_the_connections)
{
	run_acceptors(1, 0);
}

/* ------------------------------------------------------------ errors */

static void *write_until_error(void *arg)
{
	int fd = *(int *)arg;
	static char buf[65536];

	for (;;) {
		/* gr_send: a write() to a reset socket would raise SIGPIPE. */
		ssize_t n = gr_send(fd, buf, sizeof(buf), 0);

		if (n < 0)
			return (void *)(intptr_t)errno;
	}
}

static void *read_until_end(void *arg)
{
	int fd = *(int *)arg;
	char buf[4096];
	ssize_t n;

	while ((n = gr_read(fd, buf, sizeof(buf))) > 0)
		;
	return (void *)(intptr_t)(n == 0 ? 0 : errno);
}

Test(readiness, a_reset_wakes_a_reader_and_a_blocked_writer_of_one_socket)
{
	int fds[2];
	struct linger lin = { .l_onoff = 1, .l_linger = 0 };

	grt_tcp_pair(fds);
	/* Small buffers so the writer blocks quickly. */
	int small = 4096;
	setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	gr_fiber *w = gr_spawn(write_until_error, &fds[0]);
	gr_fiber *r = gr_spawn(read_until_end, &fds[0]);
	turns(5);
	/* A reset: the peer closes with unread data and SO_LINGER 0. */
	cr_assert_eq(setsockopt(fds[1], SOL_SOCKET, SO_LINGER, &lin, sizeof(lin)), 0);
	cr_assert_eq(close(fds[1]), 0);
	void *we, *re;
	cr_assert_eq(gr_join(w, &we, gr_now() + 5 * GR_SEC), 0, "the blocked writer never woke");
	cr_assert_eq(gr_join(r, &re, gr_now() + 5 * GR_SEC), 0, "the reader never woke");
	int werr = (int)(intptr_t)we, rerr = (int)(intptr_t)re;
	cr_assert(werr == ECONNRESET || werr == EPIPE, "writer: %s", strerror(werr));
	cr_assert(rerr == ECONNRESET || rerr == 0, "reader: %s", strerror(rerr));
	cr_assert_eq(gr_close(fds[0]), 0);
}

/* ------------------------------------------------------------ fd reuse */

static void *read_one(void *arg)
{
	int fd = *(int *)arg;
	char c;
	ssize_t n = gr_read(fd, &c, 1);

	return (void *)(intptr_t)(n == 1 ? c : -errno);
}

/* Wait on fd until a deadline passes (no event ever came), then close it the
 * way `closer` says and reuse the number for a new socket: the new one must
 * be watched, not the dead registration of the old. */
static void reuse_after(int (*closer)(int))
{
	for (int round = 0; round < 3; round++) {
		int a[2], b[2];

		socketpair_nb(a);
		cr_assert_eq(gr_wait_fd(a[0], POLLIN, gr_now() + 5 * GR_MSEC), -1);
		cr_assert_eq(errno, ETIMEDOUT);
		int num = a[0];
		cr_assert_eq(closer(a[0]), 0);
		socketpair_nb(b);
		cr_assert_eq(b[0], num, "the fd number was not reused; the test needs it");
		gr_fiber *f = gr_spawn(read_one, &b[0]);
		turns(3);
		cr_assert_eq(write(b[1], "k", 1), 1);
		void *r;
		cr_assert_eq(gr_join(f, &r, gr_now() + 5 * GR_SEC), 0,
			     "a read on the reused fd number never woke");
		cr_assert_eq((intptr_t)r, 'k');
		cr_assert_eq(gr_close(a[1]), 0);
		close_pair(b);
	}
}

Test(readiness, a_number_closed_with_plain_close_and_reused_is_watched_afresh)
{
	reuse_after(close);
}

Test(readiness, a_number_closed_with_gr_close_and_reused_is_watched_afresh)
{
	reuse_after(gr_close);
}

static void *recv_one(void *arg)
{
	int fd = *(int *)arg;
	char c;
	ssize_t n = gr_recv(fd, &c, 1, 0);

	return (void *)(intptr_t)(n == 1 ? c : -errno);
}

/* The usual server: accept, gr_recv (which parks after EAGAIN), then a plain
 * close() of the connection; the next accept gets the same number. Its
 * gr_recv must be watched afresh, not under the registration the kernel
 * dropped with the old socket (the epoll hub trusts a registration after
 * EAGAIN; accept is where the number's old state is forgotten). */
Test(readiness, an_accepted_socket_reusing_a_plainly_closed_number_is_watched_afresh)
{
	int port;
	int l = grt_listener(&port);
	int num = -1;

	for (int round = 0; round < 3; round++) {
		int client = grt_connect_plain(port);
		int fd = gr_accept4(l, NULL, NULL, SOCK_CLOEXEC);

		cr_assert_geq(fd, 0, "gr_accept4: %s", strerror(errno));
		if (round > 0)
			cr_assert_eq(fd, num, "the fd number was not reused; the test needs it");
		num = fd;
		gr_fiber *f = gr_spawn(recv_one, &fd);
		turns(3); /* it tried, got EAGAIN and parked */
		cr_assert_eq(write(client, "a", 1), 1);
		void *r;
		cr_assert_eq(gr_join(f, &r, gr_now() + 5 * GR_SEC), 0,
			     "round %d: gr_recv on an accepted socket never woke", round);
		cr_assert_eq((intptr_t)r, 'a');
		cr_assert_eq(close(fd), 0); /* plain close, behind the hub's back */
		close(client);
	}
	cr_assert_eq(gr_close(l), 0);
}

/* ------------------------------------------------------------ deadlines */

struct sleeper {
	int64_t deadline;
	int *order;
	int *next;
	int id;
	bool parked;     /* its deadline was still ahead when it went to sleep */
};

static void *sleep_until_fn(void *arg)
{
	struct sleeper *s = arg;

	s->parked = gr_now() < s->deadline;
	if (gr_sleep_until(s->deadline) != 0)
		return (void *)"sleep failed";
	if (gr_now() < s->deadline)
		return (void *)"woke early";
	s->order[(*s->next)++] = s->id;
	return NULL;
}

/* The wake order of the sleepers that really slept (one whose deadline had
 * passed before it first ran only yields, in spawn order, and says nothing
 * about the timer heap; on a slow machine, valgrind, that can happen). */
static int parked_order(const struct sleeper *s, int n, const int *order, int *out)
{
	int m = 0;

	for (int i = 0; i < n; i++) {
		for (int j = 0; j < n; j++) {
			if (s[j].id == order[i] && s[j].parked)
				out[m++] = order[i];
		}
	}
	return m;
}

Test(readiness, equal_deadlines_wake_in_the_order_they_were_set)
{
	enum { N = 16 };
	struct sleeper s[N];
	gr_fiber *f[N];
	int order[N], parked[N], next = 0;
	int64_t d = gr_now() + 50 * GR_MSEC;

	for (int i = 0; i < N; i++) {
		s[i] = (struct sleeper){ .deadline = d, .order = order, .next = &next, .id = i };
		f[i] = gr_spawn(sleep_until_fn, &s[i]);
	}
	for (int i = 0; i < N; i++) {
		void *r;

		cr_assert_eq(gr_join(f[i], &r, gr_now() + 5 * GR_SEC), 0);
		cr_assert_null(r, "%s", (char *)r);
	}
	int m = parked_order(s, N, order, parked);
	cr_assert_geq(m, N / 2, "too few sleepers reached their sleep in time to judge");
	for (int i = 1; i < m; i++)
		cr_assert_lt(parked[i - 1], parked[i], "sleeper %d woke before sleeper %d",
			     parked[i], parked[i - 1]);
}

Test(readiness, distinct_deadlines_wake_in_deadline_order)
{
	enum { N = 64 };
	struct sleeper s[N];
	gr_fiber *f[N];
	int order[N], parked[N], next = 0;
	int64_t base = gr_now() + 50 * GR_MSEC;

	/* Spawned in a scrambled order; 2 ms apart, well above timer slack. */
	for (int i = 0; i < N; i++) {
		int k = (i * 37) % N;

		s[i] = (struct sleeper){ .deadline = base + k * 2 * GR_MSEC, .order = order,
					 .next = &next, .id = k };
		f[i] = gr_spawn(sleep_until_fn, &s[i]);
	}
	for (int i = 0; i < N; i++) {
		void *r;

		cr_assert_eq(gr_join(f[i], &r, gr_now() + 5 * GR_SEC), 0);
		cr_assert_null(r, "%s", (char *)r);
	}
	int m = parked_order(s, N, order, parked);
	cr_assert_geq(m, N / 2, "too few sleepers reached their sleep in time to judge");
	for (int i = 1; i < m; i++)
		cr_assert_lt(parked[i - 1], parked[i], "deadline %d fired before deadline %d",
			     parked[i], parked[i - 1]);
}

Test(readiness, a_waiter_timing_out_leaves_the_others_on_its_fd_waiting)
{
	enum { N = 5 };
	int sv[2];
	struct waitfd w[N];
	gr_fiber *f[N];

	socketpair_nb(sv);
	for (int i = 0; i < N; i++) {
		/* The middle one has a short deadline; the rest wait for data. */
		w[i] = (struct waitfd){ .fd = sv[0], .events = POLLIN,
					.deadline = i == N / 2 ? gr_now() + 10 * GR_MSEC : GR_FOREVER };
		f[i] = gr_spawn(wait_fd_fn, &w[i]);
	}
	cr_assert_eq(gr_join(f[N / 2], NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w[N / 2].rc, -1);
	cr_assert_eq(w[N / 2].err, ETIMEDOUT);
	turns(3);
	for (int i = 0; i < N; i++)
		cr_assert(i == N / 2 || w[i].woke == 0, "waiter %d woke with no data", i);
	cr_assert_eq(write(sv[1], "x", 1), 1);
	for (int i = 0; i < N; i++) {
		if (i == N / 2)
			continue;
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(w[i].rc, 0, "waiter %d: %s", i, strerror(w[i].err));
	}
	close_pair(sv);
}

Test(readiness, a_killed_waiter_leaves_the_others_on_its_fd_waiting)
{
	enum { N = 5 };
	int sv[2];
	struct waitfd w[N];
	gr_fiber *f[N];

	socketpair_nb(sv);
	for (int i = 0; i < N; i++) {
		w[i] = (struct waitfd){ .fd = sv[0], .events = i % 2 ? POLLIN : POLLIN | POLLPRI,
					.deadline = GR_FOREVER };
		f[i] = gr_spawn(wait_fd_fn, &w[i]);
	}
	turns(3);
	cr_assert_eq(gr_kill(f[0]), 0);
	cr_assert_eq(gr_kill(f[3]), 0);
	cr_assert_eq(gr_join(f[0], NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_join(f[3], NULL, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(w[0].err, ECANCELED);
	cr_assert_eq(w[3].err, ECANCELED);
	cr_assert_eq(write(sv[1], "x", 1), 1);
	for (int i = 0; i < N; i++) {
		if (i == 0 || i == 3)
			continue;
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(w[i].rc, 0, "waiter %d: %s", i, strerror(w[i].err));
	}
	close_pair(sv);
}

/* Many fds, several waiters each, random deadlines; data arrives on some.
 * Every waiter ends exactly as its own deadline and its fd dictate. */
Test(readiness, random_waiters_and_deadlines_over_many_fds)
{
	enum { FDS = 64, PER = 4 };
	int sv[FDS][2];
	struct waitfd w[FDS][PER];
	gr_fiber *f[FDS][PER];
	unsigned seed = 12345;
	int64_t start = gr_now();

	for (int i = 0; i < FDS; i++) {
		socketpair_nb(sv[i]);
		for (int j = 0; j < PER; j++) {
			seed = seed * 1103515245u + 12345u;
			int64_t d = (int64_t)(seed >> 16) % 40 * GR_MSEC;

			/* One in four waits forever; fds with an odd index get data
			 * at 60 ms, after every finite deadline here. */
			w[i][j] = (struct waitfd){ .fd = sv[i][0], .events = POLLIN,
						   .deadline = j == 0 ? GR_FOREVER : start + 5 * GR_MSEC + d };
			f[i][j] = gr_spawn(wait_fd_fn, &w[i][j]);
		}
	}
	cr_assert_eq(gr_sleep_until(start + 60 * GR_MSEC), 0);
	for (int i = 1; i < FDS; i += 2)
		cr_assert_eq(write(sv[i][1], "x", 1), 1);
	for (int i = 1; i < FDS; i += 2) {
		cr_assert_eq(gr_join(f[i][0], NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(w[i][0].rc, 0);
	}
	for (int i = 0; i < FDS; i += 2) {
		cr_assert_eq(gr_kill(f[i][0]), 0);
		cr_assert_eq(gr_join(f[i][0], NULL, gr_now() + 5 * GR_SEC), 0);
		cr_assert_eq(w[i][0].err, ECANCELED);
	}
	for (int i = 0; i < FDS; i++) {
		for (int j = 1; j < PER; j++) {
			cr_assert_eq(gr_join(f[i][j], NULL, gr_now() + 5 * GR_SEC), 0);
			cr_assert_eq(w[i][j].rc, -1, "fd %d waiter %d did not time out", i, j);
			cr_assert_eq(w[i][j].err, ETIMEDOUT);
			cr_assert_geq(w[i][j].woke, w[i][j].deadline, "woke before its deadline");
		}
		close_pair(sv[i]);
	}
}

/* ------------------------------------------------------------ files */

Test(readiness, regular_files_are_read_and_written_and_always_ready)
{
	char path[] = "/tmp/greenring-readiness-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	static char out[1 << 20], in[1 << 20];

	cr_assert_geq(fd, 0, "mkostemp: %s", strerror(errno));
	cr_assert_eq(unlink(path), 0);
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (char)(i % 253);
	cr_assert_eq(gr_write(fd, out, sizeof(out)), (ssize_t)sizeof(out));
	cr_assert_eq(gr_pread(fd, in, sizeof(in), 0), (ssize_t)sizeof(in));
	cr_assert_eq(memcmp(in, out, sizeof(in)), 0);
	cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
	cr_assert_eq(gr_read(fd, in, 100), 100);
	cr_assert_eq(memcmp(in, out, 100), 0);
	/* A regular file cannot be watched: it is always ready, as poll(2)
	 * and io_uring say. */
	int64_t t0 = gr_now();
	cr_assert_eq(gr_wait_fd(fd, POLLIN, t0 + 5 * GR_SEC), 0);
	cr_assert_eq(gr_wait_fd(fd, POLLOUT, t0 + 5 * GR_SEC), 0);
	cr_assert_eq(gr_wait_fd(fd, POLLIN | POLLOUT, GR_FOREVER), 0);
	cr_assert_lt(gr_now() - t0, GR_SEC);
	cr_assert_eq(gr_close(fd), 0);
}

Test(readiness, character_devices_work_too)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	char buf[16];

	cr_assert_geq(fd, 0);
	cr_assert_eq(gr_write(fd, "abc", 3), 3);
	cr_assert_eq(gr_read(fd, buf, sizeof(buf)), 0);
	cr_assert_eq(gr_wait_fd(fd, POLLIN, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq(gr_close(fd), 0);
}

/* ------------------------------------------------------------ blocking mode */

static void *tick(void *arg)
{
	int *ticks = arg;

	while (*ticks < 1000) {
		(*ticks)++;
		if (gr_sleep(GR_MSEC) != 0)
			break;
	}
	return NULL;
}

Test(readiness, a_blocking_mode_pipe_parks_only_its_fiber)
{
	int p[2], ticks = 0;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	gr_fiber *r = gr_spawn(read_one, &p[0]);
	gr_fiber *t = gr_spawn(tick, &ticks);
	/* The reader runs first. Had it blocked the thread in read(), nothing
	 * below would run: the ticker ticking while it waits is the proof. */
	int64_t until = gr_now() + 5 * GR_SEC;
	while (ticks < 5 && gr_now() < until)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_geq(ticks, 5, "the ticker stopped while the reader waited");
	struct gr_hub_stats st;
	cr_assert_eq(gr_hub_stats(&st), 0);
	cr_assert_eq(st.fibers, 2, "the reader returned without data");
	cr_assert_eq(gr_write(p[1], "z", 1), 1);
	void *res;
	cr_assert_eq(gr_join(r, &res, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)res, 'z');
	ticks = 1000;
	cr_assert_eq(gr_join(t, NULL, gr_now() + 5 * GR_SEC), 0);
	/* What it means for the caller (docs/hubs.md): no hub made the pipe
	 * non-blocking, for any holder of the open file (the readiness hubs
	 * try the read with RWF_NOWAIT; io_uring never touches the flags). */
	cr_assert_eq(fcntl(p[0], F_GETFL) & O_NONBLOCK, 0, "the pipe was made O_NONBLOCK");
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(gr_close(p[1]), 0);
}

/* ------------------------------------------------------------ fork */

Test(readiness, a_child_closing_a_watched_fd_leaves_the_parent_watching_it)
{
	int sv[2];
	struct waitfd w = { .events = POLLIN, .deadline = GR_FOREVER };

	socketpair_nb(sv);
	w.fd = sv[0];
	gr_fiber *f = gr_spawn(wait_fd_fn, &w);
	turns(3); /* the parent's hub watches sv[0] now */
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* A fresh hub: closing sv[0] here must only drop the child's
		 * reference, never the parent's registration. */
		int p[2];
		char c;

		if (gr_close(sv[0]) != 0 || pipe2(p, O_CLOEXEC) != 0)
			_exit(1);
		if (gr_write(p[1], "c", 1) != 1 || gr_read(p[0], &c, 1) != 1 || c != 'c')
			_exit(2);
		_exit(0);
	}
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child status %d", ws);
	cr_assert_eq(write(sv[1], "p", 1), 1);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 5 * GR_SEC), 0, "the parent stopped watching");
	cr_assert_eq(w.rc, 0);
	close_pair(sv);
}
