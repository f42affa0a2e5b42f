/* redis_api.c — the patch library's benchmark: a small HTTP API whose every
 * request is one redis command, written as a blocking program with the
 * unmodified hiredis.
 *
 *   redis_api --redis SOCKET [--mode fibers|threads] [--host ADDR] [--port N]
 *
 *   GET /   runs INCR on a counter in redis and answers 200 with its value
 *
 * One program, two ways to serve a connection, the handler code the same:
 *   --mode threads  one thread per connection, plain blocking calls: what a
 *                   C programmer does without greenring;
 *   --mode fibers   one fiber per connection on one thread, the same
 *                   blocking calls (recv, send, hiredis's read and write)
 *                   made green by libgreenring-patch.so, which must be
 *                   preloaded (LD_PRELOAD): the program checks.
 * Each connection has its own blocking redisContext, on the unix socket
 * SOCKET. Prints "listening on HOST:PORT"; SIGINT/SIGTERM end it with
 * status 0. tools/bench runs both under wrk (docs/patching.md).
 */
#define _GNU_SOURCE
#include "bench_common.h"
#include "http_parse.h"

#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>

#include <greenring.h>
#include <hiredis.h>

#define IN_BUF 16384
#define OUT_BUF 8192
#define MAX_RESPONSE 256

static const char *redis_socket;

/* Write all of buf; false if the connection failed. */
static bool send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);

		if (w < 0)
			return false;
		buf += w;
		len -= (size_t)w;
	}
	return true;
}

/* One request's answer: INCR's value, or 502 if redis failed. */
static size_t respond(char *out, redisContext *rc, const struct http_request *req)
{
	int status = 200;
	char body[160];

	if (!http_str_eq(req->method, "GET")) {
		status = 405;
		snprintf(body, sizeof(body), "GET only\n");
	} else {
		redisReply *r = redisCommand(rc, "INCR hits");

		if (r && r->type == REDIS_REPLY_INTEGER)
			snprintf(body, sizeof(body), "%lld\n", r->integer);
		else {
			status = 502;
			snprintf(body, sizeof(body), "redis: %s\n", rc->err ? rc->errstr : "bad reply");
		}
		if (r)
			freeReplyObject(r);
	}
	int n = snprintf(out, MAX_RESPONSE,
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
			 status, http_reason(status), strlen(body),
			 req->keep_alive ? "" : "Connection: close\r\n", body);
	return n > 0 && n < MAX_RESPONSE ? (size_t)n : 0;
}

/* A connection: requests in, one INCR each, responses out, until the
 * client closes. Blocking code from end to end. */
static void serve(int fd)
{
	char in[IN_BUF], out[OUT_BUF];
	/* Both buffers on the connection's stack: fibers get 64 KiB. */
	size_t have = 0;
	bool closing = false;
	struct http_request req;
	redisContext *rc = redisConnectUnix(redis_socket);

	if (!rc || rc->err) {
		fprintf(stderr, "redis_api: redis %s: %s\n", redis_socket, rc ? rc->errstr : "no memory");
		goto out;
	}
	while (!closing) {
		ssize_t n = recv(fd, in + have, sizeof(in) - have, 0);

		if (n <= 0)
			break;
		have += (size_t)n;
		size_t pos = 0, outlen = 0;
		for (;;) {
			long r = http_parse_request(in + pos, have - pos, &req);

			if (r == 0)
				break;
			if (r < 0 || outlen + MAX_RESPONSE > sizeof(out)) {
				closing = true;
				break;
			}
			pos += (size_t)r;
			size_t len = respond(out + outlen, rc, &req);
			if (!len) {
				closing = true;
				break;
			}
			outlen += len;
			closing = !req.keep_alive;
		}
		if (outlen && !send_all(fd, out, outlen))
			break;
		memmove(in, in + pos, have - pos);
		have -= pos;
		if (have == sizeof(in))
			break; /* a head that does not fit */
	}
out:
	if (rc)
		redisFree(rc);
	close(fd);
}

static void serve_fiber(void *arg)
{
	serve((int)(intptr_t)arg);
}

static void *serve_thread(void *arg)
{
	serve((int)(intptr_t)arg);
	return NULL;
}

/* Is read() the patch library's? Fibers without it would block each other. */
static bool patched(void)
{
	Dl_info info;

	return dladdr((void *)dlsym(RTLD_DEFAULT, "read"), &info) && info.dli_fname &&
	       strstr(info.dli_fname, "greenring-patch");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' }, { "port", required_argument, NULL, 'p' },
		{ "mode", required_argument, NULL, 'm' }, { "redis", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },       { NULL, 0, NULL, 0 },
	};
	struct bench_server_opts o = { .host = "127.0.0.1", .port = 7000 };
	bool fibers = true;

	for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
		switch (c) {
		case 'H': o.host = optarg; break;
		case 'p': o.port = (int)bench_parse_long("port", optarg, 0, 65535); break;
		case 'r': redis_socket = optarg; break;
		case 'm':
			if (strcmp(optarg, "fibers") && strcmp(optarg, "threads"))
				errx(1, "--mode: fibers or threads, not '%s'", optarg);
			fibers = strcmp(optarg, "fibers") == 0;
			break;
		case 'h':
			printf("usage: %s --redis SOCKET [--mode fibers|threads] [--host ADDR] [--port N]\n",
			       program_invocation_short_name);
			return 0;
		default:
			return 1;
		}
	}
	if (!redis_socket)
		errx(1, "--redis SOCKET is required (redis-server's unix socket)");
	if (fibers && !patched())
		errx(1, "--mode fibers needs libgreenring-patch.so preloaded (LD_PRELOAD)");
	bench_raise_nofile();
	int sig = bench_signalfd();
	int l = bench_listen(&o, false);

	/* The main loop is blocking code too: in fibers mode this poll is the
	 * patched one, and the thread's main context parks in it. */
	for (;;) {
		struct pollfd p[2] = { { .fd = l, .events = POLLIN }, { .fd = sig, .events = POLLIN } };

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			err(1, "poll");
		}
		if (p[1].revents)
			return 0;
		int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (bench_accept_error_is_transient(errno))
				continue;
			err(1, "accept");
		}
		bench_set_nodelay(fd);
		if (fibers) {
			if (gr_spawn_n(serve_fiber, (void *)(intptr_t)fd) < 0)
				close(fd);
		} else {
			pthread_t t;
			pthread_attr_t attr;

			pthread_attr_init(&attr);
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			if (pthread_create(&t, &attr, serve_thread, (void *)(intptr_t)fd) != 0)
				close(fd);
			pthread_attr_destroy(&attr);
		}
	}
}
