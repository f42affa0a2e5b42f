/* test_drain.c — the drain hint (runtime/drain.c): a recv that came back
 * short on a TCP socket lets the next recv of the same wait generation park
 * without trying. Runs once per hub. Covers:
 *   - an echo ping-pong with random sizes stays byte-exact;
 *   - the hint is in use on the readiness hubs (the recv after a short read
 *     parks even though data is there: it is read a loop turn later);
 *   - data that arrives after a short read while the fiber waits on
 *     something else (a sleep, an event) is read at once: the hint dies
 *     with the wait generation (these fail when the generation check is
 *     removed: the recv parks on an edge the hub already consumed);
 *   - two fibers reading one socket lose no byte and wait for nothing;
 *   - files on which a short read does not mean "drained": UDP with
 *     several datagrams queued (buffers larger and smaller than one), a
 *     unix stream socket, a MSG_PEEK (which drains nothing);
 *   - a TCP number closed with plain close() and reused by a UDP socket:
 *     the stale hint costs at most one stall, bounded by the audit.
 * Every wait has a deadline, so a lost edge fails fast instead of hanging. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(drain);

/* How long a read of data that is there may take: a few loop turns, with
 * room for a loaded machine. A lost edge waits for the audit (100-200 ms). */
#define PROMPT (60 * GR_MSEC)

static bool readiness_hub(void)
{
	return strcmp(grt_hub(), "io_uring") != 0;
}

/* Bound fd's reads by a deadline `ns` from now (-1: none). */
static void read_deadline(int fd, int64_t ns)
{
	assert_ok(gr_fd_set_deadline(fd, GR_FD_READ, ns < 0 ? -1 : gr_now() + ns));
}

/* A recv that finds nothing parks: the hub then knows fd (its state, and on
 * epoll its registration, armed for reading), as in a server whose fiber
 * has waited once. */
static void prime(int fd)
{
	char c;

	read_deadline(fd, GR_MSEC);
	cr_assert_eq(gr_recv(fd, &c, 1, 0), -1);
	cr_assert_eq(errno, ETIMEDOUT, "prime: %s", strerror(errno));
	read_deadline(fd, -1);
}

static void send_plain(int fd, const void *buf, size_t n)
{
	cr_assert_eq(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n, "send: %s", strerror(errno));
}

/* recv on fd, bounded by PROMPT: assert it returns exactly `want` bytes
 * (the first `want` of `expect`, if given) within that. */
static void recv_promptly(int fd, size_t cap, size_t want, const char *expect, int flags)
{
	char buf[256];
	int64_t t0 = gr_now();

	cr_assert_leq(cap, sizeof(buf));
	read_deadline(fd, PROMPT);
	ssize_t n = gr_recv(fd, buf, cap, flags);
	int err = errno;
	int64_t took = gr_now() - t0;
	read_deadline(fd, -1);
	cr_assert_eq(n, (ssize_t)want, "gr_recv = %zd (%s) after %lld us, expected %zu bytes", n,
		     n < 0 ? strerror(err) : "ok", (long long)(took / 1000), want);
	if (expect)
		cr_assert_eq(memcmp(buf, expect, want), 0);
	cr_assert_lt(took, PROMPT, "gr_recv took %lld us", (long long)(took / 1000));
}

/* ------------------------------------------------------------ echo */

struct echo_server {
	int lfd;
};

static void *echo_serve(void *arg)
{
	struct echo_server *s = arg;
	char buf[16384];
	int fd = gr_accept(s->lfd, NULL, NULL);

	if (fd < 0) {
		grt_fail("gr_accept: %s", strerror(errno));
		return NULL;
	}
	for (;;) {
		ssize_t n = gr_recv(fd, buf, sizeof(buf), 0);

		if (n <= 0) {
			if (n < 0)
				grt_fail("server gr_recv: %s", strerror(errno));
			break;
		}
		if (!grt_send_all(fd, buf, (size_t)n)) {
			grt_fail("server send: %s", strerror(errno));
			break;
		}
	}
	gr_close(fd);
	return NULL;
}

Test(drain, echo_ping_pong_with_random_sizes_is_byte_exact)
{
	int port;
	struct echo_server s = { .lfd = grt_listener(&port) };

	grt_rng_seed(13);
	gr_deadline_set(gr_now() + 20 * GR_SEC);
	gr_fiber *srv = gr_spawn(echo_serve, &s);
	int fd = grt_connect_green(port);
	cr_assert_geq(fd, 0);
	static unsigned char out[12000], in[12000];
	for (int round = 0; round < 400; round++) {
		size_t size = 1 + grt_pick(round % 4 == 0 ? sizeof(out) : 600);

		for (size_t i = 0; i < size; i++)
			out[i] = grt_pattern((unsigned)round, i);
		cr_assert(grt_send_all(fd, out, size), "round %d: send: %s", round, strerror(errno));
		cr_assert(grt_recv_all(fd, in, size), "round %d (%zu bytes): recv: %s", round, size,
			  strerror(errno));
		cr_assert_eq(memcmp(in, out, size), 0, "round %d: echoed bytes differ", round);
	}
	assert_ok(gr_close(fd));
	cr_assert_eq(gr_join(srv, NULL, GR_FOREVER), 0);
	gr_deadline_set(GR_FOREVER);
	grt_assert_no_failures();
	close(s.lfd);
}

/* ------------------------------------------------------------ the hint */

static void *set_flag(void *arg)
{
	*(int *)arg = 1;
	return NULL;
}

/* Not a test that cannot fail: without the hint, the second recv finds its
 * data and returns without switching, before the other fiber runs. */
Test(drain, a_recv_after_a_short_read_parks_at_once_on_readiness_hubs)
{
	int fds[2];
	int ran = 0;

	grt_tcp_pair(fds);
	prime(fds[1]);
	send_plain(fds[0], "0123456789", 10);
	recv_promptly(fds[1], 100, 10, "0123456789", 0);
	send_plain(fds[0], "abcde", 5);
	gr_fiber *f = gr_spawn(set_flag, &ran);
	recv_promptly(fds[1], 100, 5, "abcde", 0);
	if (readiness_hub())
		cr_assert_eq(ran, 1, "the recv after a short read did not park");
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* `rounds` times: a short read, then more data from the peer, then
 * (pause > 0) a sleep, then a recv that must find that data at once. */
static void short_read_then_more(int rounds, int64_t pause, const char *more)
{
	int fds[2];
	size_t n = strlen(more);

	grt_tcp_pair(fds);
	prime(fds[1]);
	for (int i = 0; i < rounds; i++) {
		send_plain(fds[0], "0123456789", 10);
		recv_promptly(fds[1], 100, 10, "0123456789", 0);
		send_plain(fds[0], more, n);
		if (pause > 0)
			cr_assert_eq(gr_sleep(pause), 0);
		recv_promptly(fds[1], 100, n, more, 0);
	}
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* A short read, then the peer's data arrives while the reader sleeps: the
 * hub's wait during the sleep consumes the socket's edge, so the hint must
 * be dead by then. */
Test(drain, data_arriving_during_a_sleep_after_a_short_read_is_read_promptly)
{
	short_read_then_more(5, 2 * GR_MSEC, "abcdefg");
}

struct sender {
	int fd;
	gr_event *go;
};

/* Sends, lets the hub wait (so it harvests the reader's edge), then wakes
 * the reader. */
static void *send_then_set(void *arg)
{
	struct sender *s = arg;

	if (send(s->fd, "abcdefg", 7, MSG_NOSIGNAL) != 7)
		grt_fail("send: %s", strerror(errno));
	if (gr_sleep(2 * GR_MSEC) != 0)
		grt_fail("gr_sleep: %s", strerror(errno));
	gr_event_set(s->go);
	return NULL;
}

Test(drain, data_arriving_during_an_event_wait_after_a_short_read_is_read_promptly)
{
	int fds[2];
	gr_event go;

	grt_tcp_pair(fds);
	assert_ok(gr_event_init(&go));
	prime(fds[1]);
	send_plain(fds[0], "0123456789", 10);
	recv_promptly(fds[1], 100, 10, "0123456789", 0);
	struct sender s = { .fd = fds[0], .go = &go };
	gr_fiber *f = gr_spawn(send_then_set, &s);
	assert_ok(gr_event_wait(&go, gr_now() + GR_SEC));
	recv_promptly(fds[1], 100, 7, "abcdefg", 0);
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	grt_assert_no_failures();
	assert_ok(gr_event_destroy(&go));
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* Data that arrives between the short read and the hinted park, with no
 * wait in between: the edge it raised is still queued for the next wait. */
Test(drain, data_arriving_before_the_hinted_park_is_reported)
{
	short_read_then_more(50, 0, "xy");
}

/* ------------------------------------------------------------ two readers */

struct shared_reader {
	int fd;
	size_t *total;
	unsigned char *seen;
	size_t size;
};

static void *read_until_eof(void *arg)
{
	struct shared_reader *r = arg;
	unsigned char buf[97];

	for (;;) {
		ssize_t n = gr_recv(r->fd, buf, sizeof(buf), 0);

		if (n <= 0) {
			if (n < 0)
				grt_fail("reader gr_recv: %s", strerror(errno));
			return NULL;
		}
		*r->total += (size_t)n;
		if (*r->total > r->size) {
			grt_fail("read %zu bytes of %zu", *r->total, r->size);
			return NULL;
		}
		if (grt_pick(3) == 0 && grt_random_pause() < 0)
			return NULL;
	}
}

Test(drain, two_fibers_reading_one_socket_lose_nothing)
{
	int fds[2];
	size_t total = 0, size = 200000;
	struct shared_reader r = { .total = &total, .size = size };

	grt_tcp_pair(fds);
	grt_rng_seed(7);
	r.fd = fds[1];
	gr_deadline_set(gr_now() + 20 * GR_SEC);
	gr_fiber *a = gr_spawn(read_until_eof, &r), *b = gr_spawn(read_until_eof, &r);
	static unsigned char out[4096];
	for (size_t sent = 0; sent < size;) {
		size_t n = 1 + grt_pick(sizeof(out));

		if (n > size - sent)
			n = size - sent;
		send_plain(fds[0], out, n);
		sent += n;
		cr_assert_geq(grt_random_pause(), 0);
		if (grt_pick(8) == 0)
			cr_assert_eq(gr_sleep(100000), 0);
	}
	/* Everything sent reaches one reader or the other before the EOF. */
	while (total < size)
		cr_assert_eq(gr_sleep(GR_MSEC), 0, "read %zu of %zu bytes", total, size);
	cr_assert_eq(shutdown(fds[0], SHUT_WR), 0);
	cr_assert_eq(gr_join(a, NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_join(b, NULL, GR_FOREVER), 0);
	gr_deadline_set(GR_FOREVER);
	grt_assert_no_failures();
	cr_assert_eq(total, size);
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* ------------------------------------------------------------ other files */

/* Datagrams queued together raise one edge: a short read of one leaves the
 * others queued, with no edge to come for them. */
Test(drain, udp_datagrams_queued_together_are_all_read_without_stall)
{
	int fds[2];

	grt_udp_pair(fds);
	prime(fds[1]);
	for (int round = 0; round < 2; round++) {
		/* Round 0: a buffer larger than each datagram (short reads);
		 * round 1: smaller (truncated, full reads). */
		size_t cap = round == 0 ? 100 : 4;

		for (int i = 0; i < 5; i++)
			send_plain(fds[0], "datagram-0", 10);
		cr_assert_eq(gr_sleep(2 * GR_MSEC), 0);
		for (int i = 0; i < 5; i++)
			recv_promptly(fds[1], cap, cap < 10 ? cap : 10, "datagram-0", 0);
	}
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

Test(drain, a_unix_stream_socket_is_read_without_stall)
{
	int fds[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
	prime(fds[1]);
	for (int i = 0; i < 5; i++) {
		send_plain(fds[0], "01234", 5);
		send_plain(fds[0], "56789", 5);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
		recv_promptly(fds[1], 100, 10, "0123456789", 0);
		send_plain(fds[0], "abc", 3);
		recv_promptly(fds[1], 100, 3, "abc", 0);
	}
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* A peek drains nothing: the recv after a short peek must find the data,
 * whose edge the hub consumed before the peek. */
Test(drain, a_short_peek_leaves_no_hint)
{
	int fds[2];

	grt_tcp_pair(fds);
	prime(fds[1]);
	send_plain(fds[0], "0123456789", 10);
	cr_assert_eq(gr_sleep(2 * GR_MSEC), 0);
	recv_promptly(fds[1], 100, 10, "0123456789", MSG_PEEK);
	recv_promptly(fds[1], 100, 10, "0123456789", 0);
	close(fds[0]);
	assert_ok(gr_close(fds[1]));
}

/* A TCP socket read short, closed with plain close(), its number taken by a
 * UDP socket with datagrams queued: the stale "drains" hint may park one
 * recv on a wait that no edge ends, until the audit (1-2 epochs of 100 ms)
 * re-arms it; that recv then doubts the hint, and the rest are prompt. */
Test(drain, a_tcp_number_reused_by_udp_after_plain_close_stalls_at_most_once)
{
	int tcp[2], udp[2];

	grt_tcp_pair(tcp);
	prime(tcp[1]);
	send_plain(tcp[0], "0123456789", 10);
	recv_promptly(tcp[1], 100, 10, "0123456789", 0);
	grt_udp_pair(udp);
	int num = tcp[1];
	cr_assert_eq(close(num), 0);
	cr_assert_eq(dup2(udp[1], num), num);
	cr_assert_eq(close(udp[1]), 0);
	for (int i = 0; i < 5; i++)
		send_plain(udp[0], "datagram-0", 10);
	int stalls = 0;
	int64_t t0 = gr_now();
	for (int i = 0; i < 5; i++) {
		char buf[100];
		int64_t t = gr_now();

		read_deadline(num, GR_SEC);
		cr_assert_eq(gr_recv(num, buf, sizeof(buf), 0), 10, "datagram %d: %s", i,
			     strerror(errno));
		if (gr_now() - t >= PROMPT)
			stalls++;
	}
	int64_t took = gr_now() - t0;
	cr_assert_leq(stalls, 1, "%d recvs stalled (%lld ms in all)", stalls,
		      (long long)(took / GR_MSEC));
	cr_assert_lt(took, 400 * GR_MSEC, "%lld ms", (long long)(took / GR_MSEC));
	read_deadline(num, -1);
	close(tcp[0]);
	close(udp[0]);
	assert_ok(gr_close(num));
}
