/* test_http.c — the HTTP/1.1 request parser of bench/http_parse.c, and
 * bench/http_server end to end as a child process: exact response bytes,
 * keep-alive, pipelining, bodies, garbage, many clients, wrk. Run once per hub
 * (the server is started with --hub of the run).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grt_child.h"
#include "http_parse.h"
#include "support.h"

/* ================================================================ parser */

TestSuite(http_parse, .timeout = 60);

static long parse(const char *s, struct http_request *req)
{
	return http_parse_request(s, strlen(s), req);
}

#define GET_ROOT "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

Test(http_parse, complete_request)
{
	static const char r[] = "GET /index.html?x=1&y=2 HTTP/1.1\r\n"
				"Host: example.com\r\n"
				"User-Agent: test/1.0\r\n"
				"Accept:   */*  \r\n"
				"X-Empty:\r\n"
				"\r\n";
	struct http_request req;

	cr_assert_eq(parse(r, &req), (long)strlen(r));
	cr_assert(http_str_eq(req.method, "GET"));
	cr_assert(http_str_eq(req.target, "/index.html?x=1&y=2"));
	cr_assert(http_str_eq(req.path, "/index.html"));
	cr_assert_eq(req.version, 11);
	cr_assert(req.keep_alive);
	cr_assert_eq(req.content_length, 0);
	cr_assert_eq(req.nheaders, 4);
	cr_assert(http_str_eq(req.headers[2].value, "*/*"), "OWS around a value is not part of it");
	cr_assert_eq(req.headers[3].value.n, 0);
	const struct http_header *h = http_find_header(&req, "USER-agent");
	cr_assert_not_null(h);
	cr_assert(http_str_eq(h->value, "test/1.0"));
	cr_assert_null(http_find_header(&req, "Cookie"));
}

Test(http_parse, every_prefix_is_incomplete)
{
	static const char r[] = "POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
				"Connection: keep-alive\r\n\r\n";
	struct http_request req;

	/* A request arriving one byte per read: never an error, never early. */
	for (size_t n = 0; n < strlen(r); n++)
		cr_assert_eq(http_parse_request(r, n, &req), 0, "prefix of %zu bytes", n);
	cr_assert_eq(http_parse_request(r, strlen(r), &req), (long)strlen(r));
	cr_assert_eq(req.content_length, 4, "the body is the caller's to skip");
}

Test(http_parse, pipelined_requests)
{
	static const char r[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
				"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
				"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
				"GET /d HT";
	const char *expect[] = { "/a", "/b", "/c" };
	struct http_request req;
	size_t pos = 0, len = strlen(r);

	for (int i = 0; i < 3; i++) {
		long n = http_parse_request(r + pos, len - pos, &req);

		cr_assert_gt(n, 0, "request %d: %ld", i, n);
		cr_assert(http_str_eq(req.path, expect[i]), "request %d: %.*s", i, (int)req.path.n,
			  req.path.p);
		cr_assert_eq(req.keep_alive, i != 2);
		pos += (size_t)n + req.content_length;
	}
	cr_assert_eq(http_parse_request(r + pos, len - pos, &req), 0, "the fourth is partial");
}

Test(http_parse, leading_empty_lines_are_skipped)
{
	struct http_request req;

	cr_assert_eq(parse("\r\n\r\n" GET_ROOT, &req), (long)strlen("\r\n\r\n" GET_ROOT));
	cr_assert(http_str_eq(req.path, "/"));
}

Test(http_parse, keep_alive_rules)
{
	struct http_request req;

	cr_assert_gt(parse("GET / HTTP/1.0\r\n\r\n", &req), 0, "HTTP/1.0 needs no Host");
	cr_assert_not(req.keep_alive, "HTTP/1.0 closes by default");
	cr_assert_gt(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &req), 0);
	cr_assert(req.keep_alive);
	cr_assert_eq(req.version, 10);
	cr_assert_gt(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, close\r\n\r\n", &req),
		     0);
	cr_assert_not(req.keep_alive);
	cr_assert_gt(parse("GET / HTTP/1.1\r\nHost: h\r\nconnection:CLOSE\r\n\r\n", &req), 0);
	cr_assert_not(req.keep_alive);
	cr_assert_gt(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", &req), 0);
	cr_assert(req.keep_alive);
}

Test(http_parse, target_forms)
{
	struct http_request req;

	cr_assert_gt(parse("GET http://example.com/x/y?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
			   &req),
		     0);
	cr_assert(http_str_eq(req.path, "/x/y"));
	cr_assert_gt(parse("GET HTTP://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", &req), 0);
	cr_assert(http_str_eq(req.path, "/"));
	cr_assert_gt(parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &req), 0);
	cr_assert_eq(req.path.n, 0);
	cr_assert_gt(parse("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &req),
		     0);
	cr_assert_eq(parse("GET * HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
	cr_assert_eq(parse("GET example.com/ HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
	cr_assert_eq(parse("GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
	cr_assert_eq(parse("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
	cr_assert_eq(parse("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
}

Test(http_parse, methods_are_tokens)
{
	struct http_request req;

	/* Case-sensitive: "get" is a valid, different method (the server
	 * answers 405). */
	cr_assert_gt(parse("get / HTTP/1.1\r\nHost: h\r\n\r\n", &req), 0);
	cr_assert(http_str_eq(req.method, "get"));
	cr_assert_gt(parse("M-SEARCH / HTTP/1.1\r\nHost: h\r\n\r\n", &req), 0);
	cr_assert_eq(parse("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
	cr_assert_eq(parse(" GET / HTTP/1.1\r\nHost: h\r\n\r\n", &req), -400);
}

Test(http_parse, bad_request_lines)
{
	static const char *bad[] = {
		"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",        /* two spaces */
		"GET /\tHTTP/1.1\r\nHost: h\r\n\r\n",        /* a tab */
		"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",        /* trailing space */
		"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",      /* space in the target */
		"GET / http/1.1\r\nHost: h\r\n\r\n",         /* lowercase protocol */
		"GET / HTTPS/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/11.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\nHost: h\r\n\r\n",           /* bare LF */
		"GET / HTTP/1.1\r\rHost: h\r\n\r\n",         /* bare CR */
		"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",     /* control character */
		"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",     /* not ASCII */
		"GET / \r\n\r\n",
		"GET\r\n\r\n",
		"\r\n\n",
	};
	struct http_request req;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse(bad[i], &req), -400, "bad[%zu] = \"%s\"", i, bad[i]);
}

Test(http_parse, unsupported_versions)
{
	struct http_request req;

	cr_assert_eq(parse("GET / HTTP/2.0\r\nHost: h\r\n\r\n", &req), -505);
	cr_assert_eq(parse("GET / HTTP/1.2\r\nHost: h\r\n\r\n", &req), -505);
	cr_assert_eq(parse("GET / HTTP/0.9\r\n\r\n", &req), -505);
}

Test(http_parse, bad_header_fields)
{
	static const char *bad[] = {
		"GET / HTTP/1.1\r\nHost : h\r\n\r\n",                    /* space before colon */
		"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n", /* obs-fold */
		"GET / HTTP/1.1\r\nHost: h\r\n\tX: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01z\r\n\r\n",       /* control in value */
		"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nB: c\r\n\r\n",      /* bare LF in value */
		"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\n\n",
	};
	struct http_request req;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse(bad[i], &req), -400, "bad[%zu] = \"%s\"", i, bad[i]);
	/* obs-text in a value is allowed. */
	cr_assert_gt(parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9\r\n\r\n", &req), 0);
}

Test(http_parse, host_rules)
{
	struct http_request req;

	cr_assert_eq(parse("GET / HTTP/1.1\r\n\r\n", &req), -400, "HTTP/1.1 needs Host");
	cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", &req), -400);
	cr_assert_eq(parse("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", &req), -400);
	cr_assert_gt(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n", &req), 0, "an empty Host is valid");
}

Test(http_parse, content_length_rules)
{
	struct http_request req;

	cr_assert_gt(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", &req), 0);
	cr_assert_gt(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
			   "content-length: 12\r\n\r\n",
			   &req),
		     0, "identical repeats are one");
	cr_assert_eq(req.content_length, 12);
	cr_assert_gt(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n",
			   &req),
		     0);
	cr_assert_eq(req.content_length, UINT64_MAX);
	static const char *bad[] = {
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(parse(bad[i], &req), -400, "bad[%zu] = \"%s\"", i, bad[i]);
}

Test(http_parse, chunked_is_not_implemented)
{
	struct http_request req;

	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", &req),
		     -501);
	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
			   "Transfer-Encoding: chunked\r\n\r\n",
			   &req),
		     -501);
}

Test(http_parse, size_limits)
{
	static char buf[HTTP_MAX_HEAD + 4096];
	struct http_request req;

	/* A target that alone exceeds the limit: refused once the limit is
	 * reached, without waiting for the end of the line. */
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "GET /", 5);
	cr_assert_eq(http_parse_request(buf, HTTP_MAX_HEAD - 1, &req), 0);
	cr_assert_eq(http_parse_request(buf, HTTP_MAX_HEAD, &req), -431);
	cr_assert_eq(http_parse_request(buf, sizeof(buf), &req), -431);

	/* A complete head just over the limit. */
	size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
	size_t pad = HTTP_MAX_HEAD - n - 4 + 1;
	memset(buf + n, 'b', pad);
	memcpy(buf + n + pad, "\r\n\r\n", 4);
	cr_assert_eq(http_parse_request(buf, n + pad + 4, &req), -431);
	/* One byte shorter: exactly the limit, accepted. */
	memcpy(buf + n + pad - 1, "\r\n\r\n", 4);
	cr_assert_eq(http_parse_request(buf, n + pad + 3, &req), (long)HTTP_MAX_HEAD);

	/* Too many fields. */
	size_t len = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\n");
	for (int i = 1; i < HTTP_MAX_HEADERS; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "X-%d: v\r\n", i);
	memcpy(buf + len, "\r\n", 2);
	cr_assert_gt(http_parse_request(buf, len + 2, &req), 0, "exactly HTTP_MAX_HEADERS");
	len += (size_t)snprintf(buf + len, sizeof(buf) - len, "X-last: v\r\n\r\n");
	cr_assert_eq(http_parse_request(buf, len, &req), -431);
}

Test(http_parse, garbage_is_refused_early)
{
	struct http_request req;

	/* Refused as soon as the bytes cannot start a request, not after
	 * HTTP_MAX_HEAD bytes of waiting. */
	cr_assert_eq(http_parse_request("\x16\x03\x01\x02\x00", 5, &req), -400, "a TLS hello");
	cr_assert_eq(parse("hello world", &req), -400);
	cr_assert_eq(parse("GARBAGE\r", &req), -400);
	cr_assert_eq(parse("GET / HTTP/1.1\r\nBad Header", &req), -400);
	cr_assert_eq(http_parse_request("GET /\0", 6, &req), -400);
	cr_assert_eq(parse("", &req), 0);
	cr_assert_eq(http_parse_request("anything", 0, &req), 0);
}

Test(http_parse, reasons)
{
	cr_assert_str_eq(http_reason(200), "OK");
	cr_assert_str_eq(http_reason(400), "Bad Request");
	cr_assert_str_eq(http_reason(431), "Request Header Fields Too Large");
	cr_assert_str_eq(http_reason(999), "Unknown");
}

/* ================================================================ server */

GRT_SUITE(http_server);

static struct grt_child server;

static void start_server(void)
{
	const char *prog = grt_child_program("GREENRING_HTTP_SERVER");
	char *argv[] = { (char *)prog, "--hub", (char *)grt_hub(), "--port", "0", NULL };

	grt_child_start(&server, argv);
	cr_assert_gt(server.port, 0, "expected \"listening on 127.0.0.1:PORT\", got \"%s\"",
		     server.line);
}

static void stop_server(void)
{
	cr_assert_eq(grt_child_stop(&server, SIGTERM), 0, "http_server did not exit 0 on SIGTERM");
}

static int connect_server(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)server.port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;

	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (gr_connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		gr_close(fd);
		return -1;
	}
	return fd;
}

static bool send_str(int fd, const char *s)
{
	return grt_send_all(fd, s, strlen(s));
}

/* One response read from a connection, with a buffer that keeps what came
 * after it (the next pipelined response). */
struct conn {
	int fd;
	char buf[16384];
	size_t have;
	bool eof;
};

struct response {
	int status;
	char head[2048];      /* NUL-terminated, through the empty line */
	char body[256];
	size_t body_len;
	bool closes;          /* Connection: close */
};

/* Read one response (deadline 10 s). false on EOF/error/garbage. */
static bool read_response(struct conn *c, struct response *r)
{
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	bool ok = false;

	for (;;) {
		char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);

		if (end) {
			size_t hlen = (size_t)(end - c->buf) + 4;
			const char *cl;
			size_t blen;

			if (hlen >= sizeof(r->head))
				break;
			memcpy(r->head, c->buf, hlen);
			r->head[hlen] = '\0';
			cl = strcasestr(r->head, "\r\nContent-Length: ");
			if (!cl || sscanf(r->head, "HTTP/1.1 %d ", &r->status) != 1)
				break;
			blen = strtoul(cl + 18, NULL, 10);
			if (blen >= sizeof(r->body))
				break;
			if (c->have >= hlen + blen) {
				memcpy(r->body, c->buf + hlen, blen);
				r->body[blen] = '\0';
				r->body_len = blen;
				r->closes = strcasestr(r->head, "\r\nConnection: close\r\n") != NULL;
				memmove(c->buf, c->buf + hlen + blen, c->have - hlen - blen);
				c->have -= hlen + blen;
				ok = true;
				break;
			}
		}
		if (c->have == sizeof(c->buf))
			break;
		ssize_t n = gr_recv(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, 0);
		if (n <= 0) {
			c->eof = n == 0;
			break;
		}
		c->have += (size_t)n;
	}
	gr_deadline_set(old);
	return ok;
}

/* After the last response: the server closes (EOF, nothing more). */
static bool closed_by_server(struct conn *c)
{
	char ch;
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	ssize_t n = c->have ? 1 : gr_recv(c->fd, &ch, 1, 0);

	gr_deadline_set(old);
	return n == 0;
}

static void open_conn(struct conn *c)
{
	c->fd = connect_server();
	c->have = 0;
	c->eof = false;
	cr_assert_geq(c->fd, 0, "connect to http_server: %s", strerror(errno));
}

static void expect_hello(struct conn *c, const char *what)
{
	struct response r;

	cr_assert(read_response(c, &r), "%s: no complete response (eof %d)", what, c->eof);
	cr_assert_eq(r.status, 200, "%s: %s", what, r.head);
	cr_assert_eq(r.body_len, 13);
	cr_assert_str_eq(r.body, "Hello, World!");
}

Test(http_server, get_root_exact_bytes)
{
	struct conn c;
	struct response r;

	start_server();
	open_conn(&c);
	cr_assert(send_str(c.fd, GET_ROOT));
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 200);
	/* Every byte but the Date's value, which changes each second. */
	char *date = strstr(r.head, "\r\nDate: ");
	cr_assert_not_null(date, "%s", r.head);
	char *eol = strstr(date + 2, "\r\n");
	cr_assert_eq(eol - (date + 8), 29, "an IMF-fixdate is 29 characters: %s", r.head);
	memmove(date + 8, eol, strlen(eol) + 1);
	cr_assert_str_eq(r.head, "HTTP/1.1 200 OK\r\n"
				 "Server: greenring\r\n"
				 "Date: \r\n"
				 "Content-Type: text/plain\r\n"
				 "Content-Length: 13\r\n"
				 "\r\n");
	cr_assert_str_eq(r.body, "Hello, World!");
	cr_assert_eq(c.have, 0, "nothing after the body");
	gr_close(c.fd);
	stop_server();
}

Test(http_server, keep_alive_reuses_the_connection)
{
	struct conn c;

	start_server();
	open_conn(&c);
	for (int i = 0; i < 20; i++) {
		cr_assert(send_str(c.fd, GET_ROOT));
		expect_hello(&c, "keep-alive request");
	}
	gr_close(c.fd);
	stop_server();
}

Test(http_server, pipelined_requests_in_order)
{
	struct conn c;
	struct response r;

	start_server();
	open_conn(&c);
	/* Three requests in one write; the second has a body to skip. */
	cr_assert(send_str(c.fd, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"
				 "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
				 "GET /missing HTTP/1.1\r\nHost: h\r\n\r\n"));
	expect_hello(&c, "first");
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 405, "%s", r.head);
	cr_assert_not_null(strstr(r.head, "\r\nAllow: GET, HEAD\r\n"));
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 404, "%s", r.head);
	cr_assert_not(r.closes);
	/* Still open. */
	cr_assert(send_str(c.fd, GET_ROOT));
	expect_hello(&c, "after the pipeline");
	gr_close(c.fd);
	stop_server();
}

Test(http_server, deep_pipeline)
{
	enum { DEPTH = 200 }; /* more responses than fit in one output buffer */
	static char req[DEPTH * sizeof(GET_ROOT)];
	struct conn c;

	start_server();
	open_conn(&c);
	req[0] = '\0';
	for (int i = 0; i < DEPTH; i++)
		strcat(req, GET_ROOT);
	cr_assert(send_str(c.fd, req));
	for (int i = 0; i < DEPTH; i++)
		expect_hello(&c, "deep pipeline");
	gr_close(c.fd);
	stop_server();
}

Test(http_server, request_split_across_writes)
{
	struct conn c;

	start_server();
	open_conn(&c);
	cr_assert(send_str(c.fd, "GET / HT"));
	/* Not needed for correctness: makes it likely the server reads the
	 * first part on its own. */
	gr_sleep(10 * GR_MSEC);
	cr_assert(send_str(c.fd, "TP/1.1\r\nHos"));
	gr_sleep(10 * GR_MSEC);
	cr_assert(send_str(c.fd, "t: h\r\n\r\n"));
	expect_hello(&c, "split request");
	gr_close(c.fd);
	stop_server();
}

Test(http_server, garbage_gets_400_and_close)
{
	struct conn c;
	struct response r;

	start_server();
	open_conn(&c);
	cr_assert(send_str(c.fd, "THIS IS NOT HTTP\r\n\r\n"));
	cr_assert(read_response(&c, &r), "no 400 response");
	cr_assert_eq(r.status, 400, "%s", r.head);
	cr_assert(r.closes, "a 400 announces the close: %s", r.head);
	cr_assert(closed_by_server(&c), "the connection stays open after a 400");
	gr_close(c.fd);

	/* A valid request, then garbage, in one write: answered in order. */
	open_conn(&c);
	cr_assert(send_str(c.fd, GET_ROOT "\x16\x03\x01 not http"));
	expect_hello(&c, "before the garbage");
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 400);
	cr_assert(closed_by_server(&c));
	gr_close(c.fd);
	stop_server();
}

Test(http_server, errors_close_the_connection)
{
	static const struct {
		const char *req;
		int status;
	} cases[] = {
		{ "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505 },
		{ "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501 },
		{ "GET / HTTP/1.1\r\n\r\n", 400 },
	};

	start_server();
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct conn c;
		struct response r;

		open_conn(&c);
		cr_assert(send_str(c.fd, cases[i].req));
		cr_assert(read_response(&c, &r), "case %zu: no response", i);
		cr_assert_eq(r.status, cases[i].status, "case %zu: %s", i, r.head);
		cr_assert(r.closes);
		cr_assert(closed_by_server(&c), "case %zu: not closed", i);
		gr_close(c.fd);
	}
	stop_server();
}

Test(http_server, connection_close_and_http10)
{
	struct conn c;
	struct response r;

	start_server();

	open_conn(&c);
	cr_assert(send_str(c.fd, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 200);
	cr_assert(r.closes);
	cr_assert(closed_by_server(&c));
	gr_close(c.fd);

	open_conn(&c);
	cr_assert(send_str(c.fd, "GET / HTTP/1.0\r\n\r\n"));
	cr_assert(read_response(&c, &r));
	cr_assert_eq(r.status, 200);
	cr_assert(closed_by_server(&c), "HTTP/1.0 without keep-alive closes");
	gr_close(c.fd);

	open_conn(&c);
	for (int i = 0; i < 3; i++) {
		cr_assert(send_str(c.fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
		cr_assert(read_response(&c, &r));
		cr_assert_eq(r.status, 200);
		cr_assert_not_null(strcasestr(r.head, "\r\nConnection: keep-alive\r\n"), "%s", r.head);
	}
	gr_close(c.fd);

	/* HEAD: the headers of GET, no body. */
	open_conn(&c);
	cr_assert(send_str(c.fd, "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n" GET_ROOT));
	char *want = "Content-Length: 13\r\n\r\nHTTP/1.1 200 OK";
	for (;;) {
		ssize_t n = gr_recv(c.fd, c.buf + c.have, sizeof(c.buf) - c.have - 1, 0);

		cr_assert_gt(n, 0);
		c.have += (size_t)n;
		c.buf[c.have] = '\0';
		if (strstr(c.buf, "Hello, World!"))
			break;
	}
	cr_assert_not_null(strstr(c.buf, want), "HEAD sent a body: %s", c.buf);
	gr_close(c.fd);
	stop_server();
}

/* Many clients at once, each several keep-alive requests. */
static int client_failures;

static void *many_client(void *arg)
{
	struct conn *c = arg;
	struct response r;

	c->fd = connect_server();
	if (c->fd < 0) {
		client_failures++;
		return NULL;
	}
	for (int i = 0; i < 10; i++) {
		if (!send_str(c->fd, GET_ROOT) || !read_response(c, &r) || r.status != 200 ||
		    strcmp(r.body, "Hello, World!") != 0) {
			client_failures++;
			break;
		}
	}
	gr_close(c->fd);
	return NULL;
}

Test(http_server, many_clients)
{
	enum { N = 100 };
	static struct conn c[N];
	gr_fiber *f[N];

	start_server();
	client_failures = 0;
	for (int i = 0; i < N; i++) {
		c[i].have = 0;
		cr_assert_not_null(f[i] = gr_spawn(many_client, &c[i]));
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_join(f[i], NULL, gr_now() + 30 * GR_SEC), 0);
	cr_assert_eq(client_failures, 0);
	stop_server();
}

/* wrk, the benchmark's HTTP load generator: every response must be a valid
 * 200 (wrk counts parse errors, resets and non-2xx). */
Test(http_server, serves_wrk)
{
	char url[64], out[8192];
	size_t n = 0;

	if (access("/usr/bin/wrk", X_OK) != 0)
		cr_skip_test("wrk is not installed");
	start_server();
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", server.port);
	char *argv[] = { "/usr/bin/wrk", "-t1", "-c20", "-d1s", url, NULL };
	struct grt_child w;

	/* grt_child_start reads a first line; wrk's is "Running 1s test @ ...". */
	grt_child_start(&w, argv);
	cr_assert_not_null(strstr(w.line, "Running"), "wrk: %s", w.line);
	int64_t old = gr_deadline_set(gr_now() + 20 * GR_SEC);
	for (ssize_t r; n + 1 < sizeof(out) && (r = gr_read(w.out, out + n, sizeof(out) - 1 - n)) > 0;)
		n += (size_t)r;
	gr_deadline_set(old);
	out[n] = '\0';
	cr_assert_eq(grt_child_stop(&w, 0), 0, "wrk failed: %s", out);
	cr_assert_not_null(strstr(out, "requests in"), "%s", out);
	cr_assert_null(strstr(out, "Socket errors"), "%s", out);
	cr_assert_null(strstr(out, "Non-2xx"), "%s", out);
	stop_server();
}
