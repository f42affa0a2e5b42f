/* test_kv.c — bench/kv_server end to end as a child process: its replies as
 * Debian's real redis-cli reads them (commands, errors, binary values,
 * `redis-cli --pipe` pipelines), exact reply bytes over raw sockets (pipelined
 * batches, inline commands, split requests, protocol errors), fibers of many
 * connections sharing one table, two threads sharing it, and a clean exit on
 * SIGTERM with live connections. Run once per hub (the server is started with
 * --hub of the run).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grt_child.h"
#include "support.h"

#define REDIS_CLI "/usr/bin/redis-cli"

GRT_SUITE(kv);

static struct grt_child server;

static void start_server_args(const char *threads)
{
	const char *prog = grt_child_program("GREENRING_KV_SERVER");
	char *argv[] = { (char *)prog, "--hub", (char *)grt_hub(), "--port", "0",
			 "--threads", (char *)threads, NULL };

	grt_child_start(&server, argv);
	cr_assert_gt(server.port, 0, "expected \"listening on 127.0.0.1:PORT\", got \"%s\"",
		     server.line);
}

static void start_server(void)
{
	start_server_args("1");
}

static void stop_server(void)
{
	cr_assert_eq(grt_child_stop(&server, SIGTERM), 0, "kv_server did not exit 0 on SIGTERM");
}

/* ------------------------------------------------------------- redis-cli */

static void need_redis_cli(void)
{
	if (access(REDIS_CLI, X_OK) != 0)
		cr_skip_test("redis-cli is not installed (Debian package redis-tools)");
}

/* Run redis-cli -p PORT args... (NULL-terminated) with `in` (in_len bytes) as
 * its stdin; its stdout and stderr go to out (NUL-terminated). Returns its exit
 * status. Waits through the runtime, under a 30 s deadline. */
static int cli_in(const void *in, size_t in_len, char *out, size_t outsz, ...)
{
	char port[16];
	char *argv[32] = { REDIS_CLI, "-p", port };
	int argc = 3;
	va_list ap;

	snprintf(port, sizeof(port), "%d", server.port);
	va_start(ap, outsz);
	for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;

	/* stdin from a memfd: written in full before the child starts, so no
	 * writer has to run beside the reader below. */
	int mfd = memfd_create("redis-cli-stdin", MFD_CLOEXEC);
	cr_assert_geq(mfd, 0, "memfd_create: %s", strerror(errno));
	cr_assert_eq(write(mfd, in, in_len), (ssize_t)in_len);
	cr_assert_eq(lseek(mfd, 0, SEEK_SET), 0);
	struct grt_child c;
	grt_child_spawn(&c, argv, mfd);
	close(mfd);

	size_t n = 0;
	int64_t old = gr_deadline_set(gr_now() + 30 * GR_SEC);
	for (ssize_t r; n + 1 < outsz && (r = gr_read(c.out, out + n, outsz - 1 - n)) > 0;)
		n += (size_t)r;
	gr_deadline_set(old);
	out[n] = '\0';
	return grt_child_stop(&c, 0);
}

static int cli(char *out, size_t outsz, const char *arg0, ...)
{
	char *args[16];
	int n = 0;
	va_list ap;

	args[n++] = (char *)arg0;
	va_start(ap, arg0);
	for (char *a; (a = va_arg(ap, char *)) != NULL && n < 15;)
		args[n++] = a;
	va_end(ap);
	while (n < 16)
		args[n++] = NULL;
	return cli_in("", 0, out, outsz, args[0], args[1], args[2], args[3], args[4], args[5],
		      args[6], args[7], args[8], args[9], args[10], args[11], args[12], args[13],
		      args[14], (char *)NULL);
}

/* redis-cli ARGS must print exactly `want` (stdout is a pipe, so redis-cli
 * prints replies raw: strings as they are, integers as digits, nil as an empty
 * line, errors as "ERR ..." followed by an empty line). */
#define EXPECT_CLI(want, ...)                                                            \
	do {                                                                             \
		char out_[4096];                                                         \
		int st_ = cli(out_, sizeof(out_), __VA_ARGS__, (char *)NULL);            \
		cr_assert_eq(st_, 0, "redis-cli " #__VA_ARGS__ ": exit %d: %s", st_, out_); \
		cr_assert_str_eq(out_, want, "redis-cli " #__VA_ARGS__ ": got \"%s\"", out_); \
	} while (0)

Test(kv, commands_as_redis_cli_sees_them)
{
	need_redis_cli();
	start_server();
	EXPECT_CLI("PONG\n", "PING");
	EXPECT_CLI("hello there\n", "PING", "hello there");
	EXPECT_CLI("hi\n", "ECHO", "hi");
	EXPECT_CLI("\n", "GET", "missing");
	EXPECT_CLI("OK\n", "SET", "k", "v1");
	EXPECT_CLI("v1\n", "GET", "k");
	EXPECT_CLI("OK\n", "set", "k", "a longer value than before");
	EXPECT_CLI("a longer value than before\n", "get", "k");
	EXPECT_CLI("OK\n", "SET", "k", "");
	EXPECT_CLI("\n", "GET", "k");
	EXPECT_CLI("1\n", "INCR", "n");
	EXPECT_CLI("2\n", "incr", "n");
	EXPECT_CLI("2\n", "GET", "n");
	EXPECT_CLI("OK\n", "SET", "neg", "-10");
	EXPECT_CLI("-9\n", "INCR", "neg");
	EXPECT_CLI("OK\n", "SET", "top", "9223372036854775806");
	EXPECT_CLI("9223372036854775807\n", "INCR", "top");
	EXPECT_CLI("ERR increment or decrement would overflow\n\n", "INCR", "top");
	EXPECT_CLI("ERR value is not an integer or out of range\n\n", "INCR", "k");
	EXPECT_CLI("OK\n", "SET", "z", "007");
	EXPECT_CLI("ERR value is not an integer or out of range\n\n", "INCR", "z");
	EXPECT_CLI("2\n", "DEL", "n", "missing", "neg", "n");
	EXPECT_CLI("\n", "GET", "n");
	EXPECT_CLI("0\n", "DEL", "n");
	EXPECT_CLI("save\n\nappendonly\nno\n", "CONFIG", "GET", "*");
	EXPECT_CLI("appendonly\nno\n", "config", "get", "APPEND*");
	EXPECT_CLI("\n", "CONFIG", "GET", "maxmemory");
	stop_server();
}

Test(kv, errors_as_redis_answers_them)
{
	need_redis_cli();
	start_server();
	EXPECT_CLI("ERR unknown command 'FLUSHALL', with args beginning with: \n\n", "FLUSHALL");
	EXPECT_CLI("ERR unknown command 'hset', with args beginning with: 'h' 'f' 'v' \n\n", "hset",
		   "h", "f", "v");
	EXPECT_CLI("ERR wrong number of arguments for 'get' command\n\n", "GET");
	EXPECT_CLI("ERR wrong number of arguments for 'get' command\n\n", "GET", "a", "b");
	EXPECT_CLI("ERR wrong number of arguments for 'set' command\n\n", "SET", "a");
	EXPECT_CLI("ERR syntax error\n\n", "SET", "a", "b", "NX");
	EXPECT_CLI("ERR wrong number of arguments for 'del' command\n\n", "DEL");
	EXPECT_CLI("ERR wrong number of arguments for 'incr' command\n\n", "INCR");
	EXPECT_CLI("ERR wrong number of arguments for 'ping' command\n\n", "PING", "a", "b");
	EXPECT_CLI("ERR wrong number of arguments for 'config' command\n\n", "CONFIG");
	EXPECT_CLI("ERR wrong number of arguments for 'config|get' command\n\n", "CONFIG", "GET");
	EXPECT_CLI("ERR unknown subcommand 'SET'. Try CONFIG HELP.\n\n", "CONFIG", "SET", "a", "b");
	/* Errors leave the connection and the table alone. */
	EXPECT_CLI("OK\n", "SET", "a", "b");
	EXPECT_CLI("b\n", "GET", "a");
	stop_server();
}

/* ------------------------------------------------------------- raw sockets */

/* A new connection to the server (TCP_NODELAY: requests go out at once). */
static int connect_server(void)
{
	return grt_connect_plain(server.port);
}

/* Read exactly n bytes within 10 s; the count read (short on EOF or error). */
static size_t recv_exact(int fd, void *buf, size_t n)
{
	size_t got = 0;
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);

	while (got < n) {
		ssize_t r = gr_recv(fd, (char *)buf + got, n - got, 0);

		if (r <= 0)
			break;
		got += (size_t)r;
	}
	gr_deadline_set(old);
	return got;
}

/* The next bytes from fd must be exactly `want`. */
static void expect_bytes(int fd, const char *want, size_t n, const char *what)
{
	char *got = malloc(n + 1);

	cr_assert_not_null(got);
	size_t r = recv_exact(fd, got, n);
	got[r] = '\0';
	cr_assert_eq(r, n, "%s: %zu of %zu bytes, then EOF or error; got \"%s\"", what, r, n, got);
	cr_assert(memcmp(got, want, n) == 0, "%s: got \"%s\", want \"%s\"", what, got, want);
	free(got);
}

#define EXPECT_REPLY(fd, want) expect_bytes((fd), (want), sizeof(want) - 1, #want)

/* The server closed the connection: EOF, with nothing before it. */
static bool closed_by_server(int fd)
{
	char c;
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	ssize_t n = gr_recv(fd, &c, 1, 0);

	gr_deadline_set(old);
	return n == 0;
}

static void send_str(int fd, const char *s)
{
	cr_assert(grt_send_all(fd, s, strlen(s)), "send: %s", strerror(errno));
}

/* ------------------------------------------------------------- the tests */

/* A value larger than the server's first buffers, with every byte value in it
 * (NUL, CR, LF): redis-cli -x sends stdin as the last argument, a raw GET
 * must return it byte for byte. */
Test(kv, binary_value_larger_than_the_buffers)
{
	enum { SIZE = 1 << 20 };
	static char value[SIZE], got[SIZE];
	char out[4096], head[32];

	need_redis_cli();
	for (size_t i = 0; i < SIZE; i++)
		value[i] = (char)((i * 131 + i / 251) & 0xff);
	start_server();
	int st = cli_in(value, SIZE, out, sizeof(out), "-x", "SET", "blob", (char *)NULL);
	cr_assert_eq(st, 0, "redis-cli -x SET: %s", out);
	cr_assert_str_eq(out, "OK\n");

	int fd = connect_server();
	send_str(fd, "*2\r\n$3\r\nGET\r\n$4\r\nblob\r\n");
	snprintf(head, sizeof(head), "$%d\r\n", SIZE);
	expect_bytes(fd, head, strlen(head), "bulk length");
	cr_assert_eq(recv_exact(fd, got, SIZE), SIZE);
	cr_assert(memcmp(got, value, SIZE) == 0, "the value came back changed");
	EXPECT_REPLY(fd, "\r\n");
	gr_close(fd);
	stop_server();
}

/* redis-cli --pipe: thousands of requests streamed without waiting, the
 * replies counted (and any error reply reported) by redis-cli itself. */
Test(kv, redis_cli_pipe)
{
	enum { N = 5000 };
	size_t cap = (size_t)N * 80 + 64, len = 0;
	char *stream = malloc(cap), out[8192], want[64];

	need_redis_cli();
	cr_assert_not_null(stream);
	for (int i = 0; i < N; i++) {
		char key[32], val[32];
		int kl = snprintf(key, sizeof(key), "key:%d", i);
		int vl = snprintf(val, sizeof(val), "value-%d", i * 7);

		len += (size_t)snprintf(stream + len, cap - len,
					"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
					"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n",
					kl, key, vl, val);
	}
	start_server();
	int st = cli_in(stream, len, out, sizeof(out), "--pipe", (char *)NULL);
	snprintf(want, sizeof(want), "errors: 0, replies: %d", 2 * N);
	cr_assert_eq(st, 0, "redis-cli --pipe: exit %d: %s", st, out);
	cr_assert_not_null(strstr(out, want), "%s", out);
	EXPECT_CLI("5000\n", "GET", "counter");
	EXPECT_CLI("value-5439\n", "GET", "key:777");

	/* An unknown command in the stream is one error reply, not a lost
	 * connection: the requests after it are still answered. */
	len = (size_t)snprintf(stream, cap,
			       "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n*1\r\n$4\r\nNOPE\r\n"
			       "*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n");
	st = cli_in(stream, len, out, sizeof(out), "--pipe", (char *)NULL);
	cr_assert_eq(st, 1, "redis-cli --pipe exits 1 after an error reply: %s", out);
	cr_assert_not_null(strstr(out, "errors: 1, replies: 3"), "%s", out);
	cr_assert_not_null(strstr(out, "ERR unknown command 'NOPE'"), "%s", out);
	EXPECT_CLI("5002\n", "GET", "counter");
	free(stream);
	stop_server();
}

/* One write holding many requests, errors among them: one reply each, in
 * order, byte for byte. */
Test(kv, pipelined_replies_in_order)
{
	start_server();
	int fd = connect_server();
	send_str(fd, "*1\r\n$4\r\nPING\r\n"
		     "*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2\r\n41\r\n"
		     "*2\r\n$4\r\nINCR\r\n$1\r\nx\r\n"
		     "*2\r\n$3\r\nGET\r\n$1\r\nx\r\n"
		     "*2\r\n$4\r\nNOPE\r\n$3\r\narg\r\n"
		     "*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n"
		     "*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n"
		     "*0\r\n"
		     "*3\r\n$3\r\nDEL\r\n$1\r\nx\r\n$1\r\nx\r\n"
		     "*1\r\n$3\r\nGET\r\n"
		     "PING\r\n");
	EXPECT_REPLY(fd, "+PONG\r\n"
			 "+OK\r\n"
			 ":42\r\n"
			 "$2\r\n42\r\n"
			 "-ERR unknown command 'NOPE', with args beginning with: 'arg' \r\n"
			 "$-1\r\n"
			 "$4\r\na\r\nb\r\n"
			 ":1\r\n"
			 "-ERR wrong number of arguments for 'get' command\r\n"
			 "+PONG\r\n");
	gr_close(fd);
	stop_server();
}

/* A pipeline several times the server's input buffer, sent before any reply
 * is read: every reply, in order. */
Test(kv, deep_pipeline)
{
	enum { N = 20000 };
	static const char req[] = "*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n";
	size_t len = (sizeof(req) - 1) * N;
	char *batch = malloc(len), want[32], got[32];

	cr_assert_not_null(batch);
	for (int i = 0; i < N; i++)
		memcpy(batch + (size_t)i * (sizeof(req) - 1), req, sizeof(req) - 1);
	start_server();
	int fd = connect_server();
	cr_assert(grt_send_all(fd, batch, len));
	for (int i = 1; i <= N; i++) {
		int n = snprintf(want, sizeof(want), ":%d\r\n", i);

		cr_assert_eq(recv_exact(fd, got, (size_t)n), (size_t)n, "reply %d", i);
		cr_assert(memcmp(got, want, (size_t)n) == 0, "reply %d: %.*s", i, n, got);
	}
	free(batch);
	gr_close(fd);
	stop_server();
}

/* A request arriving one byte per send still gets one reply. */
Test(kv, request_split_byte_by_byte)
{
	static const char req[] = "*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$11\r\nhello world\r\n"
				  "GET split\r\n";

	start_server();
	int fd = connect_server();
	for (size_t i = 0; i < sizeof(req) - 1; i++)
		cr_assert(grt_send_all(fd, req + i, 1));
	EXPECT_REPLY(fd, "+OK\r\n$11\r\nhello world\r\n");
	gr_close(fd);
	stop_server();
}

/* Inline commands (telnet style): words separated by spaces, CRLF or LF. */
Test(kv, inline_commands)
{
	start_server();
	int fd = connect_server();
	send_str(fd, "PING\r\nSET a  b\nGET a\r\n   ECHO   x   \r\n\r\nINCR a\r\n");
	EXPECT_REPLY(fd, "+PONG\r\n+OK\r\n$1\r\nb\r\n$1\r\nx\r\n"
			 "-ERR value is not an integer or out of range\r\n");
	gr_close(fd);
	stop_server();
}

/* A malformed request: the replies before it, Redis's protocol error, and the
 * connection closes. */
Test(kv, protocol_errors_close_the_connection)
{
	static const struct {
		const char *req, *reply;
	} cases[] = {
		{ "*1\r\nx4\r\nPING\r\n", "-ERR Protocol error: expected '$', got 'x'\r\n" },
		{ "*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n" },
		{ "*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n" },
		{ "*1\r\n$67108865\r\n", "-ERR Protocol error: invalid bulk length\r\n" },
		{ "*9999999\r\n", "-ERR Protocol error: invalid multibulk length\r\n" },
		{ "PING\r\n*2\r\n$3\r\nGET\r\n:1\r\n",
		  "+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n" },
	};

	start_server();
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int fd = connect_server();

		send_str(fd, cases[i].req);
		expect_bytes(fd, cases[i].reply, strlen(cases[i].reply), cases[i].req);
		cr_assert(closed_by_server(fd), "case %zu: the connection stayed open", i);
		gr_close(fd);
	}

	/* An inline request that never ends: refused at 64 KiB. */
	static char line[70000];
	memset(line, 'a', sizeof(line));
	int fd = connect_server();
	cr_assert(grt_send_all(fd, line, sizeof(line)));
	EXPECT_REPLY(fd, "-ERR Protocol error: too big inline request\r\n");
	cr_assert(closed_by_server(fd));
	gr_close(fd);
	stop_server();
}

/* QUIT answers +OK and closes; what follows it in the same write is not run. */
Test(kv, quit_closes_after_its_reply)
{
	start_server();
	int fd = connect_server();
	send_str(fd, "*1\r\n$4\r\nQUIT\r\n*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$1\r\n1\r\n");
	EXPECT_REPLY(fd, "+OK\r\n");
	cr_assert(closed_by_server(fd));
	gr_close(fd);
	fd = connect_server();
	send_str(fd, "GET q\r\n");
	EXPECT_REPLY(fd, "$-1\r\n");
	gr_close(fd);
	stop_server();
}

/* Many connections (one server fiber each) incrementing one key and writing
 * their own: one table, no update lost. */
struct incr_client {
	int id, rounds, fd;
	bool ok;
};

static void *incr_client_main(void *arg)
{
	struct incr_client *c = arg;
	char req[128], want[64], got[64];
	int fd = c->fd;

	c->ok = true;
	for (int i = 0; i < c->rounds && c->ok; i++) {
		int n = snprintf(req, sizeof(req),
				 "*2\r\n$4\r\nINCR\r\n$6\r\nshared\r\nSET own:%d %d\r\nGET own:%d\r\n",
				 c->id, i, c->id);
		int digits = snprintf(want, sizeof(want), "%d", i);
		int wl = snprintf(want, sizeof(want), "+OK\r\n$%d\r\n%d\r\n", digits, i);
		char num[32];
		size_t k = 0;

		if (!grt_send_all(fd, req, (size_t)n)) {
			c->ok = false;
			break;
		}
		/* ":<n>\r\n" of unknown width, then the fixed part. */
		while (k < sizeof(num) - 1 && recv_exact(fd, num + k, 1) == 1 && num[k] != '\n')
			k++;
		if (k < 3 || num[0] != ':' || num[k] != '\n' ||
		    recv_exact(fd, got, (size_t)wl) != (size_t)wl || memcmp(got, want, (size_t)wl) != 0)
			c->ok = false;
	}
	gr_close(fd);
	return NULL;
}

static void incr_clients(int nclients, int rounds)
{
	struct incr_client *c = calloc((size_t)nclients, sizeof(*c));
	gr_fiber **f = calloc((size_t)nclients, sizeof(*f));
	char want[32];

	cr_assert(c && f);
	/* Connected here: a failed assertion inside a client fiber could not
	 * unwind the test. */
	for (int i = 0; i < nclients; i++) {
		c[i] = (struct incr_client){ .id = i, .rounds = rounds, .fd = connect_server() };
		cr_assert_not_null(f[i] = gr_spawn(incr_client_main, &c[i]));
	}
	for (int i = 0; i < nclients; i++) {
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 30 * GR_SEC), 0);
		cr_assert(c[i].ok, "client %d got a wrong reply", i);
	}
	int fd = connect_server();
	int n = nclients * rounds, digits = snprintf(want, sizeof(want), "%d", n);
	snprintf(want, sizeof(want), "$%d\r\n%d\r\n", digits, n);
	send_str(fd, "GET shared\r\n");
	expect_bytes(fd, want, strlen(want), "the shared counter");
	gr_close(fd);
	free(c);
	free(f);
}

Test(kv, connections_share_one_table)
{
	start_server();
	incr_clients(50, 100);
	stop_server();
}

/* --threads 2: two hubs, connections spread by SO_REUSEPORT, one table. */
Test(kv, threads_share_one_table)
{
	start_server_args("2");
	incr_clients(32, 100);
	stop_server();
}

/* SIGTERM with connections open: exit 0, and every client sees its
 * connection closed. */
Test(kv, sigterm_with_live_connections)
{
	int fd[8];

	start_server();
	for (int i = 0; i < 8; i++) {
		fd[i] = connect_server();
		send_str(fd[i], "PING\r\n");
		EXPECT_REPLY(fd[i], "+PONG\r\n");
	}
	stop_server();
	for (int i = 0; i < 8; i++) {
		cr_assert(closed_by_server(fd[i]), "connection %d not closed at shutdown", i);
		gr_close(fd[i]);
	}
}
