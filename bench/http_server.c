/* http_server.c — the benchmark's minimal HTTP/1.1 server on greenring.
 *
 *   http_server [--hub NAME] [--host ADDR] [--port N] [--threads T] [--max-conns N]
 *
 *   GET / (or HEAD /)  200, "Hello, World!" (13 bytes, text/plain)
 *   other paths        404
 *   other methods      405 (Allow: GET, HEAD)
 *   invalid requests   400, 431, 501 (Transfer-Encoding) or 505, then close
 *
 * Keep-alive as HTTP/1.1 says (HTTP/1.0 only with "Connection: keep-alive";
 * "Connection: close" honoured) and pipelining: every request parsed from one
 * read is answered in one write, and a response is never split across writes
 * (a split header/body would wait for the client's delayed ACK, ~40 ms).
 *
 * Command line, "listening on HOST:PORT" and SIGINT/SIGTERM: server_main.h.
 */
#define _GNU_SOURCE
#include "server_main.h"
#include "http_parse.h"

#include <time.h>

#define IN_BUF (16 * 1024)
#define OUT_BUF (8 * 1024)
/* The largest response this server writes (headers and body), with room to
 * spare: responses are appended to the out buffer only when this fits. */
#define MAX_RESPONSE 512

_Static_assert(IN_BUF >= HTTP_MAX_HEAD, "a maximal head must fit in the input buffer");
_Static_assert(OUT_BUF >= 2 * MAX_RESPONSE, "the output buffer holds several responses");

static const char hello[] = "Hello, World!";

/* The Date header (RFC 9110 section 6.6.1 asks an origin server with a clock
 * to send it), formatted once a second per thread. */
struct date_cache {
	time_t sec;
	char text[40];
	size_t len;
};

static __thread struct date_cache date_cache;

static const struct date_cache *http_date(void)
{
	time_t now = time(NULL);

	if (now != date_cache.sec || !date_cache.len) {
		struct tm tm;

		date_cache.len = 0;
		if (gmtime_r(&now, &tm))
			date_cache.len = strftime(date_cache.text, sizeof(date_cache.text),
						  "%a, %d %b %Y %H:%M:%S GMT", &tm);
		date_cache.sec = now;
	}
	return &date_cache;
}

static size_t format_response(char *out, int status, bool keep_alive, bool http10, bool head);

/* The response to nearly every request of a benchmark (200, keep-alive,
 * HTTP/1.1), formatted once per Date second and then copied. */
static __thread struct {
	time_t sec;
	size_t len;
	char text[MAX_RESPONSE];
} hello_cache;

/* Append one complete response to out (which has MAX_RESPONSE bytes free);
 * returns its length, 0 if it could not be formatted. head: no body (HEAD
 * request). */
static size_t respond(char *out, int status, bool keep_alive, bool http10, bool head)
{
	if (status != 200 || !keep_alive || http10 || head)
		return format_response(out, status, keep_alive, http10, head);
	const struct date_cache *d = http_date();
	if (hello_cache.sec != d->sec || !hello_cache.len) {
		hello_cache.len = format_response(hello_cache.text, 200, true, false, false);
		hello_cache.sec = d->sec;
	}
	memcpy(out, hello_cache.text, hello_cache.len);
	return hello_cache.len;
}

static size_t format_response(char *out, int status, bool keep_alive, bool http10, bool head)
{
	const struct date_cache *d = http_date();
	const char *body;
	char extra[64] = "";

	switch (status) {
	case 200:
		body = hello;
		break;
	case 404:
		body = "Not Found\n";
		break;
	case 405:
		body = "Method Not Allowed\n";
		snprintf(extra, sizeof(extra), "Allow: GET, HEAD\r\n");
		break;
	default:
		body = http_reason(status);
		break;
	}
	size_t blen = strlen(body);
	/* Keep-alive is the default in HTTP/1.1 and must be asked for in 1.0;
	 * a close is always announced. */
	const char *conn = !keep_alive ? "Connection: close\r\n"
			 : http10     ? "Connection: keep-alive\r\n"
				      : "";
	int n = snprintf(out, MAX_RESPONSE,
			 "HTTP/1.1 %d %s\r\n"
			 "Server: greenring\r\n"
			 "Date: %.*s\r\n"
			 "Content-Type: text/plain\r\n"
			 "Content-Length: %zu\r\n"
			 "%s%s\r\n"
			 "%s",
			 status, http_reason(status), (int)d->len, d->text, blen, extra, conn,
			 head ? "" : body);
	/* Every response above is far below the limit; a truncated one would
	 * corrupt the stream, so this is checked rather than assumed. */
	if (n < 0 || n >= MAX_RESPONSE)
		return 0;
	return (size_t)n;
}

/* The answer to one parsed request. */
static int route(const struct http_request *req, bool *head)
{
	*head = http_str_eq(req->method, "HEAD");
	if (!*head && !http_str_eq(req->method, "GET"))
		return 405;
	return http_str_eq(req->path, "/") ? 200 : 404;
}

static void http_conn(int fd, const struct sockaddr *peer, void *arg)
{
	char in[IN_BUF];
	char out[OUT_BUF];
	size_t have = 0;          /* bytes in `in` */
	uint64_t skip = 0;        /* body bytes of the last request still to drop */
	bool closing = false;     /* the last response said Connection: close */
	struct http_request req;

	(void)peer;
	(void)arg;
	while (!closing) {
		ssize_t n = gr_recv(fd, in + have, sizeof(in) - have, 0);

		if (n <= 0)
			return; /* EOF (maybe mid-request), reset, or shutdown */
		have += (size_t)n;

		size_t pos = 0, outlen = 0;
		while (!closing) {
			if (skip) {
				size_t k = have - pos < skip ? have - pos : (size_t)skip;

				pos += k;
				skip -= k;
				if (skip)
					break;
			}
			if (pos == have)
				break;
			long r = http_parse_request(in + pos, have - pos, &req);
			if (r == 0)
				break; /* the rest of this request is still on its way */

			int status;
			bool keep = false, head = false;
			if (r < 0) {
				status = (int)-r;
			} else {
				status = route(&req, &head);
				keep = req.keep_alive;
				pos += (size_t)r;
				skip = req.content_length;
			}
			if (outlen + MAX_RESPONSE > sizeof(out)) {
				/* A deep pipeline: flush whole responses so far. */
				if (gr_send_all(fd, out, outlen, 0) != (ssize_t)outlen)
					return;
				outlen = 0;
			}
			size_t len = respond(out + outlen, status, keep,
					     r > 0 && req.version == 10, head);
			if (!len)
				return;
			outlen += len;
			closing = !keep;
		}
		if (outlen && gr_send_all(fd, out, outlen, 0) != (ssize_t)outlen)
			return;
		memmove(in, in + pos, have - pos);
		have -= pos;
	}
	srv_linger_close(fd);
}

int main(int argc, char **argv)
{
	struct srv_opts o;

	srv_parse(argc, argv, &o,
		  "Minimal HTTP/1.1 server: GET / answers 200 \"Hello, World!\"; keep-alive and"
		  " pipelining.");
	return srv_main(&o, http_conn);
}
