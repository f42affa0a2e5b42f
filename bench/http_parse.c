/* http_parse.c — the strict HTTP/1.1 request-head parser (see http_parse.h).
 *
 * One pass over the bytes, left to right. Running out of bytes at any point
 * means "incomplete" (the prefix seen so far is valid), so a caller may feed
 * a growing buffer and an invalid byte is reported as soon as it arrives.
 * Re-parsing from the start on each call costs at most HTTP_MAX_HEAD bytes per
 * read, and keeps the parser free of state between calls.
 */
#define _GNU_SOURCE
#include "http_parse.h"

#include <string.h>
#include <strings.h>

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* tchar (RFC 9110 section 5.6.2): what methods and field names are made of. */
static bool is_tchar(unsigned char c)
{
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
	case '-': case '.': case '^': case '_': case '`': case '|': case '~':
		return true;
	default:
		return is_digit(c) || is_alpha(c);
	}
}

/* VCHAR: visible ASCII, what a request-target is made of. */
static bool is_vchar(unsigned char c)
{
	return c >= 0x21 && c <= 0x7e;
}

/* field-vchar, SP and HTAB: what a field value is made of (obs-text too). */
static bool is_field_char(unsigned char c)
{
	return is_vchar(c) || c >= 0x80 || c == ' ' || c == '\t';
}

static bool is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

bool http_str_eq(struct http_str s, const char *lit)
{
	size_t n = strlen(lit);

	return s.n == n && memcmp(s.p, lit, n) == 0;
}

bool http_str_ieq(struct http_str s, const char *lit)
{
	size_t n = strlen(lit);

	return s.n == n && strncasecmp(s.p, lit, n) == 0;
}

const struct http_header *http_find_header(const struct http_request *req, const char *name)
{
	for (size_t i = 0; i < req->nheaders; i++) {
		if (http_str_ieq(req->headers[i].name, name))
			return &req->headers[i];
	}
	return NULL;
}

const char *http_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

/* Check the request-target's form against the method and find its path.
 * 0 or -400. */
static int parse_target(struct http_request *req)
{
	const char *t = req->target.p;
	size_t n = req->target.n;

	req->path.p = t;
	req->path.n = 0;
	if (http_str_eq(req->method, "CONNECT")) {
		/* authority-form, host:port; only its shape matters to us. */
		return t[0] == '/' ? -400 : 0;
	}
	if (n == 1 && t[0] == '*')
		return http_str_eq(req->method, "OPTIONS") ? 0 : -400;
	if (memchr(t, '#', n))
		return -400; /* fragments are never sent to a server */

	size_t start = 0;
	if (t[0] != '/') {
		/* absolute-form: scheme "://" authority [path-abempty] [? query] */
		size_t skip;

		if (n > 7 && strncasecmp(t, "http://", 7) == 0)
			skip = 7;
		else if (n > 8 && strncasecmp(t, "https://", 8) == 0)
			skip = 8;
		else
			return -400;
		size_t a = skip;
		while (a < n && t[a] != '/' && t[a] != '?')
			a++;
		if (a == skip)
			return -400; /* no authority */
		if (a == n || t[a] == '?') {
			/* No path: it means "/". */
			static const char root[] = "/";

			req->path.p = root;
			req->path.n = 1;
			return 0;
		}
		start = a;
	}
	size_t end = start;
	while (end < n && t[end] != '?')
		end++;
	req->path.p = t + start;
	req->path.n = end - start;
	return 0;
}

/* Can t[0..n) (maybe cut short) begin a target this method allows? Lets
 * garbage such as "hello world" be refused before its line ends. */
static bool target_start_ok(struct http_str method, const char *t, size_t n)
{
	if (n == 0 || t[0] == '/' || t[0] == '*' || http_str_eq(method, "CONNECT"))
		return true;
	size_t k7 = n < 7 ? n : 7, k8 = n < 8 ? n : 8;
	return strncasecmp(t, "http://", k7) == 0 || strncasecmp(t, "https://", k8) == 0;
}

/* 1*DIGIT without overflow. 0 or -400. */
static int parse_length(struct http_str v, uint64_t *out)
{
	uint64_t x = 0;

	if (v.n == 0)
		return -400;
	for (size_t i = 0; i < v.n; i++) {
		unsigned char c = (unsigned char)v.p[i];

		if (!is_digit(c) || x > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
			return -400;
		x = x * 10 + (uint64_t)(c - '0');
	}
	*out = x;
	return 0;
}

/* The Connection field is a comma-separated list of tokens: look for
 * "close" and "keep-alive" (case-insensitive). */
static void connection_options(struct http_str v, bool *close, bool *keep)
{
	size_t i = 0;

	while (i < v.n) {
		while (i < v.n && (is_ows((unsigned char)v.p[i]) || v.p[i] == ','))
			i++;
		size_t s = i;
		while (i < v.n && v.p[i] != ',')
			i++;
		size_t e = i;
		while (e > s && is_ows((unsigned char)v.p[e - 1]))
			e--;
		struct http_str tok = { v.p + s, e - s };
		if (http_str_ieq(tok, "close"))
			*close = true;
		else if (http_str_ieq(tok, "keep-alive"))
			*keep = true;
	}
}

/* The head is syntactically complete: apply the rules that need all of it. */
static long check_fields(struct http_request *req, size_t head_len)
{
	int hosts = 0;
	bool have_length = false, close = false, keep = false;

	req->content_length = 0;
	for (size_t i = 0; i < req->nheaders; i++) {
		const struct http_header *h = &req->headers[i];

		if (http_str_ieq(h->name, "host")) {
			hosts++;
		} else if (http_str_ieq(h->name, "content-length")) {
			uint64_t v;

			if (parse_length(h->value, &v) < 0)
				return -400;
			/* Two different lengths: which one a proxy in front
			 * believed is unknowable (request smuggling). */
			if (have_length && v != req->content_length)
				return -400;
			req->content_length = v;
			have_length = true;
		} else if (http_str_ieq(h->name, "transfer-encoding")) {
			return -501;
		} else if (http_str_ieq(h->name, "connection")) {
			connection_options(h->value, &close, &keep);
		}
	}
	if (hosts > 1 || (req->version == 11 && hosts == 0))
		return -400;
	req->keep_alive = req->version == 11 ? !close : keep && !close;
	return (long)head_len;
}

long http_parse_request(const char *buf, size_t len, struct http_request *req)
{
	const unsigned char *u = (const unsigned char *)buf;
	/* Never look past the limit: a head that has not ended by then is too
	 * large whatever follows. */
	size_t n = len < HTTP_MAX_HEAD ? len : HTTP_MAX_HEAD;
	size_t i = 0;

#define MORE() return len >= HTTP_MAX_HEAD ? -431 : 0

	/* Empty lines before the request-line. */
	while (i < n && u[i] == '\r') {
		if (i + 1 >= n)
			MORE();
		if (u[i + 1] != '\n')
			return -400;
		i += 2;
	}

	/* method SP */
	size_t m0 = i;
	while (i < n && is_tchar(u[i]))
		i++;
	if (i >= n)
		MORE();
	if (i == m0 || u[i] != ' ')
		return -400;
	req->method = (struct http_str){ buf + m0, i - m0 };
	i++;

	/* request-target SP */
	size_t t0 = i;
	while (i < n && is_vchar(u[i]))
		i++;
	if (!target_start_ok(req->method, buf + t0, i - t0))
		return -400;
	if (i >= n)
		MORE();
	if (i == t0 || u[i] != ' ')
		return -400;
	req->target = (struct http_str){ buf + t0, i - t0 };
	i++;

	/* HTTP-version CRLF: "HTTP/" DIGIT "." DIGIT, case-sensitive. */
	static const char proto[] = "HTTP/d.d\r\n";
	for (size_t k = 0; k < sizeof(proto) - 1; k++, i++) {
		if (i >= n)
			MORE();
		if (proto[k] == 'd' ? !is_digit(u[i]) : u[i] != (unsigned char)proto[k])
			return -400;
	}
	int major = u[i - 5] - '0', minor = u[i - 3] - '0';
	if (major != 1 || minor > 1)
		return -505;
	req->version = 10 + minor;
	if (parse_target(req) < 0)
		return -400;

	/* *( field-name ":" OWS field-value OWS CRLF ) CRLF */
	req->nheaders = 0;
	for (;;) {
		if (i >= n)
			MORE();
		if (u[i] == '\r') {
			if (i + 1 >= n)
				MORE();
			if (u[i + 1] != '\n')
				return -400;
			i += 2;
			break;
		}
		size_t f0 = i;
		while (i < n && is_tchar(u[i]))
			i++;
		if (i >= n)
			MORE();
		/* Also refuses obs-fold (a line starting with whitespace) and
		 * whitespace between the name and the colon (RFC 9112 5.1). */
		if (i == f0 || u[i] != ':')
			return -400;
		size_t f1 = i++;
		while (i < n && is_ows(u[i]))
			i++;
		size_t v0 = i;
		while (i < n && is_field_char(u[i]))
			i++;
		if (i >= n)
			MORE();
		if (u[i] != '\r')
			return -400; /* a control character, or a bare LF */
		if (i + 1 >= n)
			MORE();
		if (u[i + 1] != '\n')
			return -400;
		size_t v1 = i;
		while (v1 > v0 && is_ows(u[v1 - 1]))
			v1--;
		i += 2;
		if (req->nheaders == HTTP_MAX_HEADERS)
			return -431;
		req->headers[req->nheaders++] = (struct http_header){
			.name = { buf + f0, f1 - f0 },
			.value = { buf + v0, v1 - v0 },
		};
	}
#undef MORE
	return check_fields(req, i);
}
