/* test_echo.c — many fibers echoing over loopback TCP in one process, byte
 * for byte; the same under a 4-entry io_uring submission queue; a bulk
 * transfer with a reader and a writer fiber on one socket. Runs once per hub.
 *
 * The echo itself (run_echo) uses no Criterion assertion: it also runs on a
 * fresh thread, and reports the first failure as a string. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(echo);

#define MAX_MSG 6000
#define ROUNDS 3

struct echo_run {
	int lfd;
	int port;
	int nclients;
	int accepted;
	int served;          /* handlers that saw EOF and closed */
	long bytes_checked;
	char error[256];     /* the first failure */
};

static void fail(struct echo_run *run, const char *fmt, ...)
{
	va_list ap;

	if (run->error[0])
		return;
	va_start(ap, fmt);
	vsnprintf(run->error, sizeof(run->error), fmt, ap);
	va_end(ap);
}

static unsigned char pattern(int client, int round, size_t k)
{
	return (unsigned char)(client * 131 + round * 17 + (int)k * 7 + (int)(k >> 8));
}

static size_t msg_len(int client, int round)
{
	return (size_t)(client * 37 + round * 1009) % MAX_MSG + 1;
}

struct handler_arg {
	struct echo_run *run;
	int fd;
};

static void echo_handler(void *arg)
{
	struct handler_arg *h = arg;
	struct echo_run *run = h->run;
	int fd = h->fd;
	char buf[4096];

	free(h);
	for (;;) {
		ssize_t n = gr_recv(fd, buf, sizeof(buf), 0);

		if (n == 0)
			break;
		if (n < 0) {
			fail(run, "server recv: %s", strerror(errno));
			break;
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = gr_send(fd, buf + off, (size_t)(n - off), 0);

			if (w <= 0) {
				fail(run, "server send: %s", strerror(errno));
				goto out;
			}
			off += w;
		}
	}
out:
	if (gr_close(fd) != 0)
		fail(run, "server close: %s", strerror(errno));
	run->served++;
}

static void *acceptor(void *arg)
{
	struct echo_run *run = arg;

	while (run->accepted < run->nclients) {
		int fd = gr_accept4(run->lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			fail(run, "accept #%d: %s", run->accepted, strerror(errno));
			return NULL;
		}
		run->accepted++;
		struct handler_arg *h = malloc(sizeof(*h));
		if (!h) {
			fail(run, "malloc");
			gr_close(fd);
			return NULL;
		}
		h->run = run;
		h->fd = fd;
		int r = gr_spawn_n(echo_handler, h);
		if (r < 0) {
			fail(run, "spawn handler: %s", strerror(-r));
			free(h);
			gr_close(fd);
			return NULL;
		}
	}
	return NULL;
}

struct client_arg {
	struct echo_run *run;
	int id;
};

static void *client(void *arg)
{
	struct client_arg *c = arg;
	struct echo_run *run = c->run;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)run->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	unsigned char out[MAX_MSG], in[MAX_MSG];
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		fail(run, "client %d socket: %s", c->id, strerror(errno));
		return NULL;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (gr_connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		fail(run, "client %d connect: %s", c->id, strerror(errno));
		gr_close(fd);
		return NULL;
	}
	for (int round = 0; round < ROUNDS && !run->error[0]; round++) {
		size_t len = msg_len(c->id, round);

		for (size_t k = 0; k < len; k++)
			out[k] = pattern(c->id, round, k);
		for (size_t off = 0; off < len;) {
			ssize_t w = gr_send(fd, out + off, len - off, 0);

			if (w <= 0) {
				fail(run, "client %d send: %s", c->id, strerror(errno));
				goto out;
			}
			off += (size_t)w;
		}
		memset(in, 0, len);
		for (size_t off = 0; off < len;) {
			ssize_t r = gr_recv(fd, in + off, len - off, 0);

			if (r <= 0) {
				fail(run, "client %d round %d recv after %zu of %zu bytes: %s", c->id,
				     round, off, len, r == 0 ? "EOF" : strerror(errno));
				goto out;
			}
			off += (size_t)r;
		}
		if (memcmp(in, out, len) != 0) {
			size_t k = 0;

			while (in[k] == out[k])
				k++;
			fail(run, "client %d round %d: byte %zu of %zu is %02x, want %02x", c->id, round,
			     k, len, in[k], out[k]);
			goto out;
		}
		run->bytes_checked += (long)len;
	}
out:
	if (gr_close(fd) != 0)
		fail(run, "client %d close: %s", c->id, strerror(errno));
	return NULL;
}

/* n clients and n handlers in this thread. NULL on success, else why. */
static const char *run_echo(struct echo_run *run, int n)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int one = 1;

	memset(run, 0, sizeof(*run));
	run->nclients = n;
	run->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (run->lfd < 0)
		return "socket";
	setsockopt(run->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(run->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(run->lfd, 4096) != 0 ||
	    getsockname(run->lfd, (struct sockaddr *)&sa, &len) != 0) {
		close(run->lfd);
		return "bind/listen";
	}
	run->port = ntohs(sa.sin_port);

	/* Everything below is bounded, so a lost wake-up fails instead of hanging. */
	int64_t limit = gr_now() + 30 * GR_SEC;
	struct client_arg *args = calloc((size_t)n, sizeof(*args));
	gr_fiber **fibers = calloc((size_t)n, sizeof(*fibers));
	gr_fiber *acc = gr_spawn(acceptor, run);

	if (!args || !fibers || !acc) {
		fail(run, "setup: %s", strerror(errno));
		goto done;
	}
	for (int i = 0; i < n; i++) {
		args[i] = (struct client_arg){ .run = run, .id = i };
		fibers[i] = gr_spawn(client, &args[i]);
		if (!fibers[i]) {
			fail(run, "spawn client %d: %s", i, strerror(errno));
			break;
		}
	}
	for (int i = 0; i < n && fibers[i]; i++) {
		int r = gr_join(fibers[i], NULL, limit);

		if (r != 0) {
			fail(run, "join client %d: %s", i, strerror(-r));
			gr_kill(fibers[i]);
			gr_join(fibers[i], NULL, GR_FOREVER);
		}
	}
	int r = gr_join(acc, NULL, limit);
	if (r != 0) {
		fail(run, "join acceptor: %s (%d accepted)", strerror(-r), run->accepted);
		gr_kill(acc);
		gr_join(acc, NULL, GR_FOREVER);
	}
	r = gr_hub_join(limit);
	if (r != 0)
		fail(run, "handlers did not finish: %s (%d of %d)", strerror(-r), run->served, n);
	if (!run->error[0] && run->served != n)
		fail(run, "%d of %d handlers served", run->served, n);
done:
	free(args);
	free(fibers);
	close(run->lfd);
	return run->error[0] ? run->error : NULL;
}

static long expected_bytes(int n)
{
	long total = 0;

	for (int i = 0; i < n; i++)
		for (int r = 0; r < ROUNDS; r++)
			total += (long)msg_len(i, r);
	return total;
}

Test(echo, a_thousand_fibers_echo_over_loopback_tcp)
{
	static struct echo_run run;

	grt_enough_fds(2 * 1000 + 64);
	const char *err = run_echo(&run, 1000);
	cr_assert_null(err, "%s", err);
	cr_assert_eq(run.accepted, 1000);
	cr_assert_eq(run.bytes_checked, expected_bytes(1000));
}

struct thread_echo {
	struct echo_run run;
	const char *err;
	const char *hub;
	int small_rings;
};

/* io_uring fds of this process whose submission queue has 4 entries. */
static int count_small_rings(void)
{
	DIR *d = opendir("/proc/self/fdinfo");
	int n = 0;

	if (!d)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		char path[300], line[128];

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%s", e->d_name);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			n += strncmp(line, "SqMask:\t0x3\n", 12) == 0;
		fclose(f);
	}
	closedir(d);
	return n;
}

static void *echo_thread(void *arg)
{
	struct thread_echo *t = arg;

	t->hub = gr_hub_name(); /* created now, with the environment as set */
	t->small_rings = count_small_rings();
	t->err = t->hub ? run_echo(&t->run, 1000) : "no hub";
	return NULL;
}

Test(echo, a_four_entry_ring_under_a_thousand_fibers)
{
	/* GREENRING_URING_ENTRIES is read when a hub is created; this test's
	 * hub exists already, so a fresh thread gets a hub of its own with a
	 * 4-entry submission queue (16-entry completion queue): every turn
	 * overflows both, and no completion may be lost. Other hubs ignore
	 * the variable and run the same echo. */
	static struct thread_echo t;
	pthread_t th;

	grt_enough_fds(2 * 1000 + 64);
	cr_assert_eq(setenv("GREENRING_URING_ENTRIES", "4", 1), 0);
	cr_assert_eq(pthread_create(&th, NULL, echo_thread, &t), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	unsetenv("GREENRING_URING_ENTRIES");
	cr_assert_str_eq(t.hub, grt_hub());
	if (strcmp(t.hub, "io_uring") == 0)
		cr_assert_eq(t.small_rings, 1, "GREENRING_URING_ENTRIES=4 not honoured (%d rings with SqMask 0x3)",
			     t.small_rings);
	cr_assert_null(t.err, "%s", t.err);
	cr_assert_eq(t.run.bytes_checked, expected_bytes(1000));
}

/* ------------------------------------------------------------ bulk, full duplex */

struct bulk {
	int fd;
	size_t total;
	int err;
	size_t done;
	unsigned char *buf;
};

static void *bulk_send(void *arg)
{
	struct bulk *b = arg;

	while (b->done < b->total) {
		ssize_t w = gr_send(b->fd, b->buf + b->done, b->total - b->done, 0);

		if (w <= 0) {
			b->err = errno;
			break;
		}
		b->done += (size_t)w;
	}
	return NULL;
}

static void *bulk_recv(void *arg)
{
	struct bulk *b = arg;

	while (b->done < b->total) {
		size_t want = b->total - b->done;
		ssize_t r = gr_recv(b->fd, b->buf + b->done, want > 65536 ? 65536 : want, 0);

		if (r <= 0) {
			b->err = r == 0 ? EPIPE : errno;
			break;
		}
		b->done += (size_t)r;
	}
	return NULL;
}

static void *bulk_echo(void *arg)
{
	int fd = *(int *)arg;
	char buf[16384];

	for (;;) {
		ssize_t n = gr_recv(fd, buf, sizeof(buf), 0);

		if (n <= 0)
			return (void *)(intptr_t)(n == 0 ? 0 : errno);
		for (ssize_t off = 0; off < n;) {
			ssize_t w = gr_send(fd, buf + off, (size_t)(n - off), 0);

			if (w <= 0)
				return (void *)(intptr_t)errno;
			off += w;
		}
	}
}

Test(echo, full_duplex_bulk_transfer_on_one_socket)
{
	/* 8 MiB through an echo server, with a sender and a receiver fiber on
	 * the same client socket: neither alone could finish (the socket
	 * buffers fill), so the two must really run concurrently. */
	enum { TOTAL = 8 << 20 };
	int fds[2];
	struct bulk tx = { .total = TOTAL }, rx = { .total = TOTAL };
	void *echo_err;

	grt_tcp_pair(fds);
	tx.fd = rx.fd = fds[0];
	tx.buf = malloc(TOTAL);
	rx.buf = malloc(TOTAL);
	cr_assert(tx.buf && rx.buf);
	for (size_t i = 0; i < TOTAL; i++)
		tx.buf[i] = (unsigned char)(i * 2654435761u >> 24);
	gr_fiber *e = gr_spawn(bulk_echo, &fds[1]);
	gr_fiber *s = gr_spawn(bulk_send, &tx);
	gr_fiber *r = gr_spawn(bulk_recv, &rx);
	int64_t limit = gr_now() + 30 * GR_SEC;
	cr_assert_eq(gr_join(s, NULL, limit), 0);
	cr_assert_eq(tx.err, 0, "send: %s", strerror(tx.err));
	cr_assert_eq(gr_join(r, NULL, limit), 0);
	cr_assert_eq(rx.err, 0, "recv: %s", strerror(rx.err));
	cr_assert_eq(memcmp(tx.buf, rx.buf, TOTAL), 0, "the echoed bytes differ");
	cr_assert_eq(shutdown(fds[0], SHUT_WR), 0);
	cr_assert_eq(gr_join(e, &echo_err, limit), 0);
	cr_assert_eq((intptr_t)echo_err, 0, "echo: %s", strerror((int)(intptr_t)echo_err));
	free(tx.buf);
	free(rx.buf);
	cr_assert_eq(gr_close(fds[0]), 0);
	cr_assert_eq(gr_close(fds[1]), 0);
}
