/* loadgen — the echo load generator of the benchmark.
 *
 * C connections to one server, driven by one thread with edge-triggered epoll, each
 * playing ping-pong: send an S-byte message, wait until all S bytes have come back,
 * check every byte, send the next.  Connecting and the warm-up are not measured;
 * then, for D seconds, completed messages are counted and each one's round trip
 * (first byte handed to the kernel -> last byte back) goes into a log-linear
 * histogram good to 0.4%.
 *
 * Messages are windows into one random pattern table at an offset that changes with
 * every message and connection, so an echo that is stale, shifted, truncated,
 * duplicated or crossed with another connection's fails the byte check.  A mismatch
 * is fatal: it is printed with the connection, message, byte and both values, and
 * the exit status is 2.  A connection that fails (refused, reset, closed) counts as
 * an error and stops; the run goes on with the others.
 *
 * The generator's own CPU (user+sys over the measured wall time, in percent of one
 * core) is printed so that a saturated client is never mistaken for a server limit.
 * With --server-pid the server's CPU time (utime+stime from /proc/PID/stat, summed
 * over the PIDs given) is sampled at the very instants the window opens and closes,
 * which yields the server CPU per message without the driver having to guess when
 * the warm-up ended.
 *
 * Output, after the window: one human line and one machine line,
 *   RESULT msgs_per_s=.. p50_us=.. p99_us=.. client_cpu_pct=.. conns=.. size=..
 *          errors=.. msgs=.. window_s=.. [server_cpu_us=.. server_us_per_msg=..]
 * Exit status: 0 with a RESULT, 1 on a usage or setup error or if every connection
 * failed, 2 on corrupted data. */
#define _GNU_SOURCE
#include "bench_common.h"

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <time.h>

enum {
	MAX_EVENTS = 1024,
	MAX_SIZE = 1 << 20,
	MAX_CONNS = 100000,
	MAX_SERVER_PIDS = 16,
	/* Message offsets into the pattern table cycle through this many values; a
	 * prime, so consecutive messages on a connection never share an offset. */
	PATTERN_SLACK = 251,
};

#define NS_PER_S INT64_C(1000000000)
#define CONNECT_TIMEOUT_NS (5 * NS_PER_S)

/* ---- latency histogram --------------------------------------------------------
 * Values (ns) below 2*SUB are exact; above, each power of two is split into SUB
 * linear buckets, so a bucket is at most 1/SUB of its value wide.  Reporting the
 * bucket's midpoint makes the error at most 1/(2*SUB) = 0.4%. */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MAX_BIT 40 /* 2^40 ns is 18 minutes: anything longer lands in the top bucket */
#define HIST_BUCKETS ((HIST_MAX_BIT - HIST_SUB_BITS + 2) * HIST_SUB)

struct hist {
	uint64_t count;
	uint64_t bucket[HIST_BUCKETS];
};

static unsigned hist_index(uint64_t v)
{
	if (v < 2 * HIST_SUB)
		return (unsigned)v;
	if (v >= (UINT64_C(1) << HIST_MAX_BIT))
		return HIST_BUCKETS - 1;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - HIST_SUB_BITS;
	return (shift + 1) * HIST_SUB + (unsigned)(v >> shift) - HIST_SUB;
}

static double hist_value(unsigned i)
{
	if (i < 2 * HIST_SUB)
		return i;
	unsigned shift = i / HIST_SUB - 1;
	uint64_t lo = (uint64_t)(i % HIST_SUB + HIST_SUB) << shift;
	return (double)lo + (double)(UINT64_C(1) << shift) / 2.0;
}

static void hist_add(struct hist *h, uint64_t v)
{
	h->bucket[hist_index(v)]++;
	h->count++;
}

/* The smallest recorded value v such that a fraction q of all values are <= v. */
static double hist_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	uint64_t rank = (uint64_t)ceil(q * (double)h->count);
	uint64_t seen = 0;
	if (rank == 0)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank)
			return hist_value(i);
	}
	return hist_value(HIST_BUCKETS - 1);
}

/* ---- state ------------------------------------------------------------------ */

struct conn {
	int fd;
	uint32_t id;
	bool connecting, live;
	uint64_t seq;       /* index of the message in flight on this connection */
	size_t pat;         /* its offset in the pattern table */
	size_t sent, got;   /* its bytes sent so far / echoed back so far */
	int64_t t_sent;     /* when its first byte was handed to the kernel, ns */
};

struct opts {
	const char *host;
	int port;
	int conns;
	size_t size;
	double duration, warmup;
	int server_pids[MAX_SERVER_PIDS];
	int n_server_pids;
};

enum phase { CONNECTING, WARMUP, MEASURE, DONE };

struct gen {
	struct opts o;
	int ep;
	struct conn *conns;
	int connecting, live, errors;
	enum phase phase;
	int64_t deadline;        /* when the current phase ends, ns */
	int64_t win_start, win_end;
	uint64_t msgs;           /* completed inside the window */
	unsigned char *pattern;  /* size + PATTERN_SLACK random bytes */
	unsigned char *scratch;  /* size + 1: one byte more than an echo may hold */
	struct hist hist;
	struct rusage ru_start, ru_end;
	int64_t server_start, server_end; /* server CPU, µs; -1 when not sampled */
};

static int64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		err(1, "clock_gettime");
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* ---- command line ----------------------------------------------------------- */

static void parse_pids(struct opts *o, char *list)
{
	for (char *save, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (o->n_server_pids == MAX_SERVER_PIDS)
			errx(1, "--server-pid: at most %d PIDs", MAX_SERVER_PIDS);
		o->server_pids[o->n_server_pids++] = (int)bench_parse_long("server-pid", tok, 1,
									    INT_MAX);
	}
}

static void usage(void)
{
	printf("usage: %s [--host ADDR] [--port N] [--conns C] [--size S] [--duration D]\n"
	       "       [--warmup W] [--server-pid PID[,PID...]]\n"
	       "  --host ADDR   numeric server address (default 127.0.0.1)\n"
	       "  --port N      server port (default 7000)\n"
	       "  --conns C     connections, each a ping-pong (default 50)\n"
	       "  --size S      message size in bytes (default 64)\n"
	       "  --duration D  measured seconds, fractions allowed (default 5)\n"
	       "  --warmup W    unmeasured seconds before that (default 1)\n"
	       "  --server-pid  sample these processes' CPU time over the window\n",
	       program_invocation_short_name);
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "conns", required_argument, NULL, 'c' },
		{ "size", required_argument, NULL, 's' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "server-pid", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*o = (struct opts){ .host = "127.0.0.1", .port = 7000, .conns = 50, .size = 64,
			    .duration = 5, .warmup = 1 };
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'H': o->host = optarg; break;
		case 'p': o->port = (int)bench_parse_long("port", optarg, 1, 65535); break;
		case 'c': o->conns = (int)bench_parse_long("conns", optarg, 1, MAX_CONNS); break;
		case 's': o->size = (size_t)bench_parse_long("size", optarg, 1, MAX_SIZE); break;
		case 'd': o->duration = bench_parse_seconds("duration", optarg, 0.001, 86400); break;
		case 'w': o->warmup = bench_parse_seconds("warmup", optarg, 0, 86400); break;
		case 'P': parse_pids(o, optarg); break;
		case 'h': usage(); exit(0);
		default: exit(1);
		}
	}
	if (optind != argc)
		errx(1, "unexpected argument '%s' (try --help)", argv[optind]);
}

/* ---- CPU sampling ----------------------------------------------------------- */

static int64_t tv_us(struct timeval tv)
{
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* utime+stime of the given processes, in µs.  Field 2 of /proc/PID/stat, the
 * command name, may contain spaces and parentheses, so parsing starts after the
 * last ')'. */
static int64_t server_cpu_us(const struct opts *o)
{
	static long ticks_per_s;
	int64_t total = 0;

	if (ticks_per_s == 0 && (ticks_per_s = sysconf(_SC_CLK_TCK)) <= 0)
		err(1, "sysconf(_SC_CLK_TCK)");
	for (int i = 0; i < o->n_server_pids; i++) {
		char path[64], buf[1024];
		snprintf(path, sizeof(path), "/proc/%d/stat", o->server_pids[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			err(1, "server process %d", o->server_pids[i]);
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		if (n < 0)
			err(1, "read %s", path);
		if (close(fd) != 0)
			err(1, "close %s", path);
		buf[n] = '\0';
		char *p = strrchr(buf, ')');
		unsigned long long ut, st;
		/* After ")": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt
		 * majflt cmajflt utime(14) stime(15). */
		if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
					&ut, &st) != 2)
			errx(1, "%s: unexpected format", path);
		total += (int64_t)((ut + st) * 1000000ull / (unsigned long long)ticks_per_s);
	}
	return total;
}

/* Take every sample that brackets the window at the same instant: the rusage, the
 * server's CPU time, then the clock. */
static void sample(struct gen *g, struct rusage *ru, int64_t *server, int64_t *t)
{
	if (getrusage(RUSAGE_SELF, ru) != 0)
		err(1, "getrusage");
	*server = g->o.n_server_pids ? server_cpu_us(&g->o) : -1;
	*t = now_ns();
}

/* ---- connections ------------------------------------------------------------ */

static void conn_fail(struct gen *g, struct conn *c, const char *what, int e)
{
	fprintf(stderr, "loadgen: connection %" PRIu32 ": %s%s%s\n", c->id, what,
		e ? ": " : "", e ? strerror(e) : "");
	if (close(c->fd) != 0)
		warn("close");
	if (c->connecting)
		g->connecting--;
	else
		g->live--;
	c->connecting = c->live = false;
	g->errors++;
}

/* Start message number c->seq: its bytes are a window into the pattern table at an
 * offset that differs from the previous message's and from the neighbours'. */
static void msg_start(struct conn *c, int64_t now)
{
	c->pat = (size_t)((c->seq * 97 + c->id * 31) % PATTERN_SLACK);
	c->sent = c->got = 0;
	c->t_sent = now;
}

/* Send what is left of the message; on EAGAIN the EPOLLOUT edge calls back. */
static void conn_push(struct gen *g, struct conn *c)
{
	while (c->sent < g->o.size) {
		ssize_t n = send(c->fd, g->pattern + c->pat + c->sent, g->o.size - c->sent,
				 MSG_NOSIGNAL);
		if (n > 0) {
			c->sent += (size_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			return;
		} else if (n < 0 && errno != EINTR) {
			conn_fail(g, c, "send", errno);
			return;
		}
	}
}

static void corrupt(const struct gen *g, const struct conn *c, const unsigned char *got,
		    size_t n)
{
	const unsigned char *want = g->pattern + c->pat + c->got;
	size_t i = 0;
	while (i < n && got[i] == want[i])
		i++;
	fprintf(stderr,
		"loadgen: DATA MISMATCH on connection %" PRIu32 ", message %" PRIu64
		" (size %zu): byte %zu is 0x%02x, expected 0x%02x (%zu of the message's bytes"
		" were already verified, %zu sent)\n",
		c->id, c->seq, g->o.size, c->got + i, got[i], want[i], c->got, c->sent);
	exit(2);
}

/* A message came back whole: account for it and send the next one. */
static void msg_done(struct gen *g, struct conn *c)
{
	int64_t t = now_ns();
	if (g->phase == MEASURE) {
		hist_add(&g->hist, (uint64_t)(t - c->t_sent));
		g->msgs++;
	}
	c->seq++;
	msg_start(c, t);
	conn_push(g, c);
}

/* Read the echo.  One recv per readiness edge is enough: a TCP receive that
 * returns less than asked for has emptied the socket, and data that arrives
 * afterwards raises a new edge.  Asking for one byte more than the message still
 * lacks catches a server that sends too much. */
static void conn_pull(struct gen *g, struct conn *c)
{
	size_t want = g->o.size - c->got;
	ssize_t n;

	do
		n = recv(c->fd, g->scratch, want + 1, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno != EAGAIN)
			conn_fail(g, c, "recv", errno);
		return;
	}
	if (n == 0) {
		conn_fail(g, c, "server closed the connection", 0);
		return;
	}
	if ((size_t)n > want || c->got + (size_t)n > c->sent) {
		fprintf(stderr,
			"loadgen: DATA MISMATCH on connection %" PRIu32 ", message %" PRIu64
			": %zu bytes echoed back but only %zu of %zu sent\n",
			c->id, c->seq, c->got + (size_t)n, c->sent, g->o.size);
		exit(2);
	}
	if (memcmp(g->scratch, g->pattern + c->pat + c->got, (size_t)n) != 0)
		corrupt(g, c, g->scratch, (size_t)n);
	c->got += (size_t)n;
	if (c->got == g->o.size)
		msg_done(g, c);
}

static void connect_all(struct gen *g)
{
	struct sockaddr_storage ss;
	socklen_t len;

	bench_resolve(g->o.host, g->o.port, &ss, &len);
	g->conns = calloc((size_t)g->o.conns, sizeof(*g->conns));
	if (g->conns == NULL)
		err(1, "calloc");
	for (int i = 0; i < g->o.conns; i++) {
		struct conn *c = &g->conns[i];
		c->id = (uint32_t)i;
		c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (c->fd < 0)
			err(1, "socket");
		if (bench_set_nodelay(c->fd) != 0)
			err(1, "setsockopt(TCP_NODELAY)");
		/* Registered once for both directions, edge-triggered: no epoll_ctl per
		 * message, and no extra wake-ups, since TCP only signals EPOLLOUT after a
		 * send found the buffer full. */
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
		if (epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
			err(1, "epoll_ctl(ADD)");
		c->connecting = true;
		g->connecting++;
		if (connect(c->fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS)
			conn_fail(g, c, "connect", errno);
	}
}

/* A connecting socket became writable (or failed): find out which. */
static void conn_connected(struct gen *g, struct conn *c)
{
	int e = 0;
	socklen_t len = sizeof(e);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
		err(1, "getsockopt(SO_ERROR)");
	if (e != 0) {
		conn_fail(g, c, "connect", e);
		return;
	}
	c->connecting = false;
	c->live = true;
	g->connecting--;
	g->live++;
}

/* ---- phases ----------------------------------------------------------------- */

/* Advance the phase when its deadline has passed; connecting also ends when every
 * connection has either connected or failed. */
static void advance(struct gen *g)
{
	int64_t t = now_ns();

	if (g->phase == CONNECTING && (g->connecting == 0 || t >= g->deadline)) {
		for (int i = 0; i < g->o.conns; i++)
			if (g->conns[i].connecting)
				conn_fail(g, &g->conns[i], "connect", ETIMEDOUT);
		if (g->live == 0)
			errx(1, "no connection to %s:%d could be made", g->o.host, g->o.port);
		g->phase = WARMUP;
		g->deadline = t + (int64_t)(g->o.warmup * 1e9);
		for (int i = 0; i < g->o.conns; i++) {
			struct conn *c = &g->conns[i];
			if (c->live) {
				msg_start(c, t);
				conn_push(g, c);
			}
		}
	}
	if (g->phase == WARMUP && t >= g->deadline) {
		sample(g, &g->ru_start, &g->server_start, &g->win_start);
		g->phase = MEASURE;
		g->deadline = g->win_start + (int64_t)(g->o.duration * 1e9);
	}
	if (g->phase == MEASURE && t >= g->deadline) {
		sample(g, &g->ru_end, &g->server_end, &g->win_end);
		g->phase = DONE;
	}
}

static void report(const struct gen *g)
{
	double wall_s = (double)(g->win_end - g->win_start) / 1e9;
	double cpu_s = (double)(tv_us(g->ru_end.ru_utime) - tv_us(g->ru_start.ru_utime) +
				tv_us(g->ru_end.ru_stime) - tv_us(g->ru_start.ru_stime)) / 1e6;
	double rate = (double)g->msgs / wall_s;
	double p50 = hist_quantile(&g->hist, 0.50) / 1e3;
	double p99 = hist_quantile(&g->hist, 0.99) / 1e3;
	double client_cpu = 100.0 * cpu_s / wall_s;

	printf("loadgen: %d conns x %zu B for %.2f s: %.0f msgs/s, p50 %.1f us, p99 %.1f us,"
	       " client CPU %.1f%%, errors %d",
	       g->o.conns, g->o.size, wall_s, rate, p50, p99, client_cpu, g->errors);
	if (g->server_start >= 0) {
		int64_t server_us = g->server_end - g->server_start;
		printf(", server %.3f CPU-us/msg\n",
		       g->msgs ? (double)server_us / (double)g->msgs : 0.0);
	} else {
		printf("\n");
	}
	printf("RESULT msgs_per_s=%.0f p50_us=%.1f p99_us=%.1f client_cpu_pct=%.1f conns=%d"
	       " size=%zu errors=%d msgs=%" PRIu64 " window_s=%.3f",
	       rate, p50, p99, client_cpu, g->o.conns, g->o.size, g->errors, g->msgs, wall_s);
	if (g->server_start >= 0) {
		int64_t server_us = g->server_end - g->server_start;
		printf(" server_cpu_us=%" PRId64 " server_us_per_msg=%.3f", server_us,
		       g->msgs ? (double)server_us / (double)g->msgs : 0.0);
	}
	printf("\n");
	if (fflush(stdout) != 0)
		err(1, "stdout");
}

static void fill_pattern(unsigned char *p, size_t n)
{
	/* xorshift64*, fixed seed: reproducible runs, and no byte value or period
	 * the server could echo back by accident. */
	uint64_t x = UINT64_C(0x9E3779B97F4A7C15);
	for (size_t i = 0; i < n; i++) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		p[i] = (unsigned char)((x * UINT64_C(0x2545F4914F6CDD1D)) >> 56);
	}
}

int main(int argc, char **argv)
{
	static struct gen g; /* static: the histogram is 35 KiB */
	struct epoll_event evs[MAX_EVENTS];

	parse(argc, argv, &g.o);
	bench_raise_nofile();
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		err(1, "signal(SIGPIPE)");
	g.pattern = malloc(g.o.size + PATTERN_SLACK);
	g.scratch = malloc(g.o.size + 1);
	if (g.pattern == NULL || g.scratch == NULL)
		err(1, "malloc");
	fill_pattern(g.pattern, g.o.size + PATTERN_SLACK);
	g.ep = epoll_create1(EPOLL_CLOEXEC);
	if (g.ep < 0)
		err(1, "epoll_create1");

	g.phase = CONNECTING;
	g.deadline = now_ns() + CONNECT_TIMEOUT_NS;
	connect_all(&g);
	advance(&g);
	while (g.phase != DONE) {
		/* Round the wait up to whole milliseconds so it never ends early and spins. */
		int64_t left = g.deadline - now_ns();
		int timeout = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
		int n = epoll_wait(g.ep, evs, MAX_EVENTS, timeout);
		if (n < 0 && errno != EINTR)
			err(1, "epoll_wait");
		advance(&g);
		if (g.phase == DONE)
			break;
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->connecting) {
				conn_connected(&g, c);
			} else if (c->live && g.phase != CONNECTING) {
				conn_push(&g, c);
				if (c->live)
					conn_pull(&g, c);
			}
		}
		if (g.phase == CONNECTING && g.connecting == 0)
			advance(&g);
		if (g.live == 0 && g.phase != CONNECTING)
			errx(1, "every connection failed");
	}
	report(&g);

	for (int i = 0; i < g.o.conns; i++)
		if (g.conns[i].live && close(g.conns[i].fd) != 0)
			warn("close");
	if (close(g.ep) != 0)
		warn("close");
	free(g.conns);
	free(g.pattern);
	free(g.scratch);
	return 0;
}
