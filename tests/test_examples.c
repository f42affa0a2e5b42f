/* test_examples.c — the drivers of docs/examples: each example is run as a
 * child process (grt_child.h) and its behaviour checked from the outside, on
 * every hub (ctest registers example_<name>.<hub>, one per example and hub,
 * tests/CMakeLists.txt). The programs are found in GREENRING_EXAMPLES_DIR;
 * without it (examples not built) the tests are skipped.
 *
 * Fibers never call cr_assert: they note failures with grt_fail (support.h),
 * and the test body asserts on them after joining. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grt_child.h"
#include "support.h"

GRT_SUITE(examples);

/* How late an idle timeout may fire on this shared machine; never early. */
#define SLACK (150 * GR_MSEC)

static void start_example(struct grt_child *c, const char *name, char *const args[])
{
	static char path[512];
	char *argv[8] = { path };
	const char *dir = getenv("GREENRING_EXAMPLES_DIR");

	if (!dir || !*dir)
		cr_skip_test("GREENRING_EXAMPLES_DIR is not set: the examples are not built");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	for (int i = 0; args && args[i] && i < 6; i++)
		argv[i + 1] = args[i];
	grt_fail_reset();
	grt_child_start(c, argv);
}

static void start_server_example(struct grt_child *c, const char *name, char *const args[])
{
	start_example(c, name, args);
	cr_assert_gt(c->port, 0, "%s did not say where it listens: \"%s\"", name, c->line);
}

/* The example ends with the signal's default action: it serves until killed. */
static void stop_example(struct grt_child *c)
{
	int status = grt_child_stop(c, SIGTERM);

	cr_assert_eq(status, 128 + SIGTERM, "the example ended with status %d, not by SIGTERM",
		     status);
}

/* ------------------------------------------------------------ echo_server */

struct echo_client {
	int port, seed;
	bool rude;         /* sends a lot, reads nothing, and leaves */
};

#define ECHO_MAX 20000

static void *echo_client(void *arg)
{
	struct echo_client *e = arg;
	char *msg = calloc(1, ECHO_MAX), *in = malloc(ECHO_MAX);
	int fd = grt_dial(e->port, 0);

	if (fd < 0 || !in || !msg) {
		grt_fail("client %d: connect: %s", e->seed, strerror(errno));
		goto out;
	}
	if (e->rude) {
		/* The server's sends to this client fail: it must not die of it. */
		for (int i = 0; i < 50 && grt_send_all(fd, msg, ECHO_MAX); i++)
			;
		goto out;
	}
	for (int r = 0; r < 50; r++) {
		size_t len = 1 + (size_t)(e->seed * 7919 + r * 104729) % ECHO_MAX;

		for (size_t i = 0; i < len; i++)
			msg[i] = (char)(e->seed + r + i);
		if (!grt_send_all(fd, msg, len) || !grt_recv_all(fd, in, len)) {
			grt_fail("client %d round %d: %s", e->seed, r, strerror(errno));
			break;
		}
		for (size_t i = 0; i < len; i++) {
			if (in[i] != (char)(e->seed + r + i)) {
				grt_fail("client %d round %d: byte %zu differs", e->seed, r, i);
				r = 50;
				break;
			}
		}
	}
out:
	if (fd >= 0)
		gr_close(fd);
	free(msg);
	free(in);
	return NULL;
}

Test(examples, echo_server)
{
	struct grt_child c;
	struct echo_client cl[21];
	gr_fiber *f[21];

	start_server_example(&c, "echo_server", (char *[]){ "0", NULL });
	for (int i = 0; i < 21; i++) {
		cl[i] = (struct echo_client){ .port = c.port, .seed = i, .rude = i == 20 };
		f[i] = gr_spawn(echo_client, &cl[i]);
	}
	for (int i = 0; i < 21; i++)
		assert_ok(gr_join(f[i], NULL, gr_now() + 30 * GR_SEC));
	grt_assert_no_failures();
	/* Still serving after the rude client. */
	cl[0].rude = false;
	echo_client(&cl[0]);
	grt_assert_no_failures();
	stop_example(&c);
}

/* ------------------------------------------------------------ proxy */

#define IDLE_MS 200

/* The upstream, in this process: echoes, except that a line "stream\n"
 * makes it send one byte every 50 ms, 12 times, then close. */
static void upstream(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[4096];
	ssize_t n;

	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0) {
		if (n == 7 && memcmp(buf, "stream\n", 7) == 0) {
			for (int i = 0; i < 12; i++) {
				if (gr_sleep(50 * GR_MSEC) != 0 || gr_send(fd, "s", 1, 0) != 1)
					return;
			}
			return;
		}
		if (!grt_send_all(fd, buf, (size_t)n))
			return;
	}
}

struct proxy_case {
	int port;
	int kind;          /* ECHO, IDLE, TALKER, LISTENER */
	int64_t took;      /* until the connection ended */
	ssize_t got;       /* bytes received */
};

enum { ECHO, IDLE, TALKER, LISTENER };

static void *proxy_client(void *arg)
{
	struct proxy_case *pc = arg;
	/* The clock starts before the connect: the proxy's idle clock starts at
	 * its accept, which may come before this fiber runs again after the
	 * handshake, so a clock started after the connect could read 199 ms. */
	int64_t t0 = gr_now();
	int fd = grt_dial(pc->port, 0);
	char buf[64];
	ssize_t n;

	if (fd < 0) {
		grt_fail("proxy client %d: connect: %s", pc->kind, strerror(errno));
		return NULL;
	}
	switch (pc->kind) {
	case ECHO:
		if (!grt_send_all(fd, "hello", 5) || !grt_recv_all(fd, buf, 5) || memcmp(buf, "hello", 5))
			grt_fail("echo through the proxy: %s", strerror(errno));
		break;
	case IDLE:
		break;
	case TALKER:
		/* Traffic every 60 ms for 600 ms: never idle for 200 ms. */
		for (int i = 0; i < 10; i++) {
			if (gr_sleep(60 * GR_MSEC) != 0 || !grt_send_all(fd, "t", 1) || !grt_recv_all(fd, buf, 1)) {
				grt_fail("talker cut off after %lld ms: %s",
				     (long long)((gr_now() - t0) / GR_MSEC), strerror(errno));
				break;
			}
		}
		break;
	case LISTENER:
		/* Silent, while the other side streams: not idle either. */
		if (!grt_send_all(fd, "stream\n", 7))
			grt_fail("listener: %s", strerror(errno));
		break;
	}
	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0)
		pc->got += n;
	pc->took = gr_now() - t0;
	gr_close(fd);
	return NULL;
}

Test(examples, proxy)
{
	struct grt_child c;
	gr_server *up = gr_server_create("127.0.0.1", 0, upstream, NULL, NULL);
	char up_port[16], idle[16];

	cr_assert_not_null(up);
	assert_ok(gr_server_start(up));
	snprintf(up_port, sizeof(up_port), "%d", gr_server_port(up));
	snprintf(idle, sizeof(idle), "%d", IDLE_MS);
	start_server_example(&c, "proxy", (char *[]){ "0", "127.0.0.1", up_port, idle, NULL });

	struct proxy_case pc[4];
	gr_fiber *f[4];
	for (int k = 0; k < 4; k++) {
		pc[k] = (struct proxy_case){ .port = c.port, .kind = k };
		f[k] = gr_spawn(proxy_client, &pc[k]);
	}
	for (int k = 0; k < 4; k++)
		assert_ok(gr_join(f[k], NULL, gr_now() + 10 * GR_SEC));
	grt_assert_no_failures();
	/* Each ended when it had been idle for IDLE_MS, not sooner. */
	cr_assert_geq(pc[IDLE].took, IDLE_MS * GR_MSEC, "an idle connection closed after %lld ms",
		      (long long)(pc[IDLE].took / GR_MSEC));
	cr_assert_lt(pc[IDLE].took, IDLE_MS * GR_MSEC + SLACK, "an idle connection lasted %lld ms",
		     (long long)(pc[IDLE].took / GR_MSEC));
	cr_assert_eq(pc[TALKER].got, 0);
	cr_assert_geq(pc[TALKER].took, 600 * GR_MSEC + IDLE_MS * GR_MSEC);
	cr_assert_eq(pc[LISTENER].got, 12, "the streamed bytes: %zd (cut after %lld ms?)",
		     pc[LISTENER].got, (long long)(pc[LISTENER].took / GR_MSEC));
	cr_assert_geq(pc[LISTENER].took, 600 * GR_MSEC);
	stop_example(&c);
	assert_ok(gr_server_free(up));
}

/* ------------------------------------------------------------ chat */

#define LINES 2000
#define ROUND 40           /* lines per round: within the example's queue of 64 */
#define LINE_LEN 1000

/* Lines received on one connection, split as they come. */
struct reader {
	int fd;
	char buf[8192];
	size_t have;
};

/* The next line (without '\n') into out; false on end of file or error. */
static bool next_line(struct reader *r, char *out, size_t cap)
{
	for (;;) {
		char *nl = memchr(r->buf, '\n', r->have);

		if (nl) {
			size_t len = (size_t)(nl - r->buf);

			if (len >= cap)
				len = cap - 1;
			memcpy(out, r->buf, len);
			out[len] = '\0';
			r->have -= (size_t)(nl + 1 - r->buf);
			memmove(r->buf, nl + 1, r->have);
			return true;
		}
		if (r->have == sizeof(r->buf))
			return false;
		ssize_t n = gr_recv(r->fd, r->buf + r->have, sizeof(r->buf) - r->have, 0);
		if (n <= 0)
			return false;
		r->have += (size_t)n;
	}
}

/* The body of a line, after the "HOST:PORT: " the server puts in front. */
static const char *body(const char *line)
{
	const char *p = strstr(line, ": ");

	return p ? p + 2 : line;
}

static void make_line(char *line, int i)
{
	int n = snprintf(line, LINE_LEN, "%06d ", i);

	memset(line + n, 'a' + i % 26, LINE_LEN - 1 - (size_t)n);
	line[LINE_LEN - 1] = '\n';
}

Test(examples, chat)
{
	struct grt_child c;
	static char line[LINE_LEN], got[2 * LINE_LEN];

	start_server_example(&c, "chat", (char *[]){ "0", NULL });
	/* The slow client connects first, so its handler has joined the room
	 * once a and b can hear each other. It never reads. */
	int slow = grt_dial(c.port, 4096);
	int a = grt_dial(c.port, 0), b = grt_dial(c.port, 0);
	cr_assert(slow >= 0 && a >= 0 && b >= 0, "connect: %s", strerror(errno));
	struct reader rb = { .fd = b }, ra = { .fd = a };
	bool heard = false;
	for (int i = 0; i < 50 && !heard; i++) {
		cr_assert(grt_send_all(a, "sync\n", 5));
		assert_ok(gr_fd_set_deadline(b, GR_FD_READ, gr_now() + 100 * GR_MSEC));
		heard = next_line(&rb, got, sizeof(got));
	}
	cr_assert(heard, "b never heard a");
	/* Drop whatever syncs are still on their way to b: read until quiet. */
	for (;;) {
		assert_ok(gr_fd_set_deadline(b, GR_FD_READ, gr_now() + 50 * GR_MSEC));
		if (!next_line(&rb, got, sizeof(got)))
			break;
	}
	cr_assert_eq(errno, ETIMEDOUT);
	assert_ok(gr_fd_set_deadline(b, GR_FD_READ, GR_FOREVER));

	/* a talks; b keeps up, round by round; the slow one falls behind. */
	for (int i = 0; i < LINES; i += ROUND) {
		for (int j = i; j < i + ROUND; j++) {
			make_line(line, j);
			cr_assert(grt_send_all(a, line, LINE_LEN), "a: %s", strerror(errno));
		}
		for (int j = i; j < i + ROUND; j++) {
			cr_assert(next_line(&rb, got, sizeof(got)), "b lost the connection at line %d", j);
			make_line(line, j);
			line[LINE_LEN - 1] = '\0';
			cr_assert_str_eq(body(got), line, "b's line %d", j);
		}
	}
	/* The slow client was dropped: it reads what was buffered, then the end. */
	int lines = 0;
	struct reader rs = { .fd = slow };
	assert_ok(gr_fd_set_deadline(slow, GR_FD_READ, gr_now() + 10 * GR_SEC));
	errno = 0;
	while (next_line(&rs, got, sizeof(got)))
		lines++;
	cr_assert_neq(errno, ETIMEDOUT, "the slow client was never dropped");
	cr_assert_lt(lines, LINES, "the slow client got every line");
	/* The room goes on without it, both ways. */
	cr_assert(grt_send_all(b, "still here\n", 11));
	cr_assert(next_line(&ra, got, sizeof(got)));
	cr_assert_str_eq(body(got), "still here");
	gr_close(slow);
	gr_close(a);
	gr_close(b);
	stop_example(&c);
}

/* ------------------------------------------------------------ fanout */

static void run_fanout(const char *batch_ms, int counts[4])
{
	struct grt_child c;

	start_example(&c, "fanout", (char *[]){ (char *)batch_ms, NULL });
	int total;
	int n = sscanf(c.line, "%d jobs: %d done, %d timed out, %d killed, %d never ran", &total,
		       &counts[0], &counts[1], &counts[2], &counts[3]);
	cr_assert_eq(n, 5, "fanout said \"%s\"", c.line);
	cr_assert_eq(grt_child_stop(&c, 0), 0, "fanout failed: \"%s\"", c.line);
	cr_assert_eq(total, 1000);
	cr_assert_eq(counts[0] + counts[1] + counts[2] + counts[3], 1000, "\"%s\"", c.line);
}

Test(examples, fanout)
{
	int counts[4];

	/* Time enough: every job runs, each done or past its own deadline. */
	run_fanout("10000", counts);
	cr_assert_gt(counts[0], 0);
	cr_assert_gt(counts[1], 0, "no job hit its own deadline");
	cr_assert_eq(counts[2] + counts[3], 0);
	/* 150 ms for the batch: what runs is killed, the rest never runs. */
	run_fanout("150", counts);
	cr_assert_gt(counts[2], 0, "nothing was killed");
	cr_assert_gt(counts[3], 0, "every job ran");
}
