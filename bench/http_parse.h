/* http_parse.h — a small, strict HTTP/1.1 request-head parser (RFC 9112) for
 * bench/http_server. No allocation, no copies: the request points into the
 * caller's buffer. Does not depend on greenring.
 *
 * What it accepts:
 *   - request-line: method (a token), SP, request-target, SP, HTTP/1.0 or
 *     HTTP/1.1, CRLF. Targets in origin-form ("/path?query"), absolute-form
 *     ("http://host/path", for proxies), asterisk-form ("*", OPTIONS only) and
 *     authority-form ("host:port", CONNECT only). Empty lines (CRLF) before
 *     the request-line are skipped, as RFC 9112 section 2.2 asks.
 *   - header fields: token ":" OWS value OWS CRLF, values of visible ASCII,
 *     obs-text, SP and HTAB.
 *   - a body only with Content-Length (the caller skips it); identical
 *     repeated Content-Length fields are one.
 * What it refuses, with the status the server should answer (and close):
 *   - 400: any syntax error; bare LF or CR; whitespace before a header's
 *     colon; obs-fold (continuation lines); control characters; a missing
 *     or repeated Host in HTTP/1.1 (RFC 9112 section 3.2); an invalid or
 *     conflicting Content-Length.
 *   - 431: a head longer than HTTP_MAX_HEAD bytes or with more than
 *     HTTP_MAX_HEADERS fields.
 *   - 501: Transfer-Encoding (chunked bodies are not implemented).
 *   - 505: an HTTP version other than 1.0 and 1.1.
 * Errors are reported as soon as the bytes seen so far cannot begin a valid
 * request, without waiting for the end of the head.
 */
#ifndef GREENRING_BENCH_HTTP_PARSE_H
#define GREENRING_BENCH_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEAD 8192      /* request-line and header fields, bytes */
#define HTTP_MAX_HEADERS 64

/* A piece of the caller's buffer; not NUL-terminated. */
struct http_str {
	const char *p;
	size_t n;
};

struct http_header {
	struct http_str name;   /* as sent; compare case-insensitively */
	struct http_str value;  /* without surrounding whitespace */
};

struct http_request {
	struct http_str method;         /* case-sensitive: "GET" */
	struct http_str target;         /* as sent */
	struct http_str path;           /* the target's path, without the query;
					   "/" for an absolute-form target without
					   one; empty for "*" and authority-form */
	int version;                    /* 10 or 11 */
	bool keep_alive;                /* HTTP/1.1 unless "Connection: close";
					   HTTP/1.0 only with "Connection: keep-alive" */
	uint64_t content_length;        /* body bytes after the head (0 if none) */
	size_t nheaders;
	struct http_header headers[HTTP_MAX_HEADERS];
};

/* Parse the request head at the start of buf[0..len).
 * > 0: a complete head of that many bytes (through the empty line); the body,
 *      req->content_length bytes, follows it.
 *   0: a valid beginning; read more and call again with the longer buffer.
 * < 0: invalid: minus the status to answer with (-400, -431, -501, -505);
 *      the connection should close after that response.
 * *req is filled only on success. */
long http_parse_request(const char *buf, size_t len, struct http_request *req);

/* The first header named `name` (case-insensitive), or NULL. */
const struct http_header *http_find_header(const struct http_request *req, const char *name);

/* Does s equal the NUL-terminated lit, byte for byte / ignoring ASCII case? */
bool http_str_eq(struct http_str s, const char *lit);
bool http_str_ieq(struct http_str s, const char *lit);

/* The reason phrase of a status code this server uses ("OK", "Not Found"),
 * or "Unknown". */
const char *http_reason(int status);

#endif
