/* kv_server.c — a RESP key-value server on greenring: the benchmark's second
 * real workload, served under Debian's redis-benchmark beside redis-server.
 *
 *   kv_server [--hub NAME] [--host ADDR] [--port N] [--threads T] [--max-conns N]
 *
 * One fiber per connection (gr_server), one hash table (kv_table.h) shared by
 * every fiber.  It speaks RESP2 as Redis does and answers, byte for byte as Redis
 * 7.0 would for string keys:
 *
 *   PING [message]      +PONG, or the message as a bulk string
 *   ECHO message        the message (redis-cli --pipe ends its stream with one)
 *   GET key             the value, or the null bulk string
 *   SET key value       +OK (no options: any further argument is a syntax error)
 *   DEL key [key ...]   how many of the keys existed
 *   INCR key            the new value; the value must be a 64-bit decimal integer
 *   CONFIG GET pattern [pattern ...]
 *                       "save" "" and "appendonly" "no" where the glob pattern
 *                       matches (redis-benchmark asks for both at start-up)
 *   QUIT                +OK, then the connection closes
 *
 * Anything else gets Redis's "-ERR unknown command" error; wrong arities get its
 * "-ERR wrong number of arguments" error.  Requests are RESP arrays of bulk
 * strings (what every client sends) or inline commands (words separated by
 * spaces, for telnet; no quoting).  Pipelining: every request parsed from one read
 * is answered, in order, and the answers go out together in one send before the
 * next read.  A malformed request gets Redis's "-ERR Protocol error: ..." and the
 * connection closes, as in Redis.
 *
 * Same command line, "listening on HOST:PORT" line and SIGINT/SIGTERM behaviour as
 * the other bench servers (server_main.h, docs/servers.md).  No persistence, no
 * expiry, no memory cap: it is a yardstick for the runtime, not a database. */
#define _GNU_SOURCE
#include "server_main.h"

#include "kv_table.h"

#include <fnmatch.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/random.h>

enum {
	KV_BUF = 16 * 1024,            /* first input and output buffers, on the stack */
	KV_FLUSH_AT = 256 * 1024,      /* send what a long pipeline has produced so far */
	KV_MAX_BULK = 64 * 1024 * 1024, /* longest argument (Redis: 512 MiB) */
	KV_MAX_ARGS = 1024 * 1024,     /* most arguments in one request (as Redis) */
	KV_MAX_INLINE = 64 * 1024,     /* longest inline request (as Redis) */
	KV_MAX_QUERY = 1024 * 1024 * 1024, /* input buffered for one request (as Redis's
					      client-query-buffer-limit) */
	KV_ARGS_STACK = 16,
};

/* ---------------------------------------------------------------- the store */

static struct kv_table table;
/* Only with --threads > 1: fibers of one thread never interleave inside a
 * command (nothing in one switches), threads do. */
static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;
static bool table_shared;

/* ---------------------------------------------------------------- buffers */

/* A byte buffer that starts in caller storage (the fiber's stack) and moves to
 * the heap when it must grow. */
struct kv_buf {
	char *p;
	size_t len, cap;
	char *heap;                    /* p when it is on the heap, else NULL */
};

static void buf_init(struct kv_buf *b, char *storage, size_t cap)
{
	*b = (struct kv_buf){ .p = storage, .cap = cap };
}

static void buf_free(struct kv_buf *b)
{
	free(b->heap);
	b->heap = NULL;
}

/* Room for `extra` more bytes; false (nothing changed) if memory or `limit`
 * runs out. */
static bool buf_reserve(struct kv_buf *b, size_t extra, size_t limit)
{
	if (b->cap - b->len >= extra)
		return true;
	if (extra > limit - b->len)
		return false;
	size_t cap = b->cap * 2;
	while (cap - b->len < extra)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	char *n = realloc(b->heap, cap);
	if (!n)
		return false;
	if (!b->heap)
		memcpy(n, b->p, b->len);
	b->p = b->heap = n;
	b->cap = cap;
	return true;
}

/* ---------------------------------------------------------------- requests */

struct kv_arg {
	const char *p;
	size_t n;
};

/* The arguments of one request, pointing into the input buffer. */
struct kv_args {
	struct kv_arg *v;
	size_t argc, cap;
	struct kv_arg stack[KV_ARGS_STACK];
};

/* Room for one more argument, keeping those parsed so far; false without memory.
 * Grown as arguments arrive, not from the count a request announces, so that a
 * header alone cannot make the server allocate. */
static bool args_push(struct kv_args *a, const char *p, size_t n)
{
	if (a->argc == a->cap) {
		struct kv_arg *v = malloc(a->cap * 2 * sizeof(*v));

		if (!v)
			return false;
		memcpy(v, a->v, a->argc * sizeof(*v));
		if (a->v != a->stack)
			free(a->v);
		a->v = v;
		a->cap *= 2;
	}
	a->v[a->argc++] = (struct kv_arg){ p, n };
	return true;
}

/* A RESP header line "<c><integer>\r\n" at p (p[0] already checked): *value
 * gets the integer.  The length of the line, 0 if it is not complete yet, -1 if
 * it is not an integer (or a complete line longer than Redis allows). */
static ssize_t parse_header(const char *p, size_t n, long long *value)
{
	const char *cr = memchr(p, '\r', n < KV_MAX_INLINE ? n : KV_MAX_INLINE);

	if (!cr || (size_t)(cr - p) + 1 >= n)
		return n >= KV_MAX_INLINE ? -1 : 0;
	if (cr[1] != '\n')
		return -1;
	const char *d = p + 1;
	bool neg = d < cr && *d == '-';
	long long v = 0;

	d += neg;
	if (d == cr || cr - d > 18)
		return -1;
	for (; d < cr; d++) {
		if (*d < '0' || *d > '9')
			return -1;
		v = v * 10 + (*d - '0');
	}
	*value = neg ? -v : v;
	return cr + 2 - p;
}

/* Parse one request at p[0, n).  Returns the bytes it takes (a->argc 0 for an
 * empty one, which is skipped), 0 if it is not complete yet, -1 if it is
 * malformed (err gets Redis's message). */
static ssize_t parse_multibulk(const char *p, size_t n, struct kv_args *a, char *err, size_t errsz)
{
	long long count, len;
	ssize_t h = parse_header(p, n, &count);
	size_t off;

	if (h == 0)
		return 0;
	if (h < 0 || count > KV_MAX_ARGS) {
		snprintf(err, errsz, "Protocol error: invalid multibulk length");
		return -1;
	}
	off = (size_t)h;
	a->argc = 0;
	if (count <= 0)
		return (ssize_t)off;
	for (long long i = 0; i < count; i++) {
		if (off >= n)
			return 0;
		if (p[off] != '$') {
			snprintf(err, errsz, "Protocol error: expected '$', got '%c'",
				 p[off] == '\r' || p[off] == '\n' ? ' ' : p[off]);
			return -1;
		}
		h = parse_header(p + off, n - off, &len);
		if (h == 0)
			return 0;
		if (h < 0 || len < 0 || len > KV_MAX_BULK) {
			snprintf(err, errsz, "Protocol error: invalid bulk length");
			return -1;
		}
		off += (size_t)h;
		/* The payload and its CRLF, which Redis skips without looking. */
		if (n - off < (size_t)len + 2)
			return 0;
		if (!args_push(a, p + off, (size_t)len)) {
			snprintf(err, errsz, "Protocol error: out of memory");
			return -1;
		}
		off += (size_t)len + 2;
	}
	return (ssize_t)off;
}

/* An inline request: one line, words separated by spaces or tabs. */
static ssize_t parse_inline(const char *p, size_t n, struct kv_args *a, char *err, size_t errsz)
{
	const char *nl = memchr(p, '\n', n);

	if (!nl) {
		if (n < KV_MAX_INLINE)
			return 0;
		snprintf(err, errsz, "Protocol error: too big inline request");
		return -1;
	}
	const char *end = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
	a->argc = 0;
	for (const char *s = p; s < end;) {
		while (s < end && (*s == ' ' || *s == '\t'))
			s++;
		const char *w = s;
		while (s < end && *s != ' ' && *s != '\t')
			s++;
		if (s == w)
			break;
		if (!args_push(a, w, (size_t)(s - w))) {
			snprintf(err, errsz, "Protocol error: out of memory");
			return -1;
		}
	}
	return nl + 1 - p;
}

static ssize_t parse_request(const char *p, size_t n, struct kv_args *a, char *err, size_t errsz)
{
	if (n == 0)
		return 0;
	return p[0] == '*' ? parse_multibulk(p, n, a, err, errsz)
			   : parse_inline(p, n, a, err, errsz);
}

/* ---------------------------------------------------------------- replies */

struct kv_conn {
	int fd;
	struct kv_buf in, out;
	struct kv_args args;
	bool oom;                      /* a reply could not be buffered: close */
};

static bool reserve_out(struct kv_conn *c, size_t n)
{
	if (buf_reserve(&c->out, n, SIZE_MAX))
		return true;
	c->oom = true;
	return false;
}

static void reply_raw(struct kv_conn *c, const char *s, size_t n)
{
	if (reserve_out(c, n)) {
		memcpy(c->out.p + c->out.len, s, n);
		c->out.len += n;
	}
}

#define REPLY_LIT(c, lit) reply_raw((c), (lit), sizeof(lit) - 1)

/* "<prefix><v>\r\n": integers and the length line of a bulk string. */
static void reply_number(struct kv_conn *c, char prefix, long long v)
{
	char tmp[24];
	int n = snprintf(tmp, sizeof(tmp), "%c%lld\r\n", prefix, v);

	reply_raw(c, tmp, (size_t)n);
}

static void reply_bulk(struct kv_conn *c, const char *s, size_t n)
{
	reply_number(c, '$', (long long)n);
	if (reserve_out(c, n + 2)) {
		memcpy(c->out.p + c->out.len, s, n);
		memcpy(c->out.p + c->out.len + n, "\r\n", 2);
		c->out.len += n + 2;
	}
}

/* "-ERR ...\r\n".  As Redis does, line breaks inside become spaces, so that a
 * client's bytes echoed in an error cannot break the protocol. */
static void reply_error(struct kv_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void reply_error(struct kv_conn *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	for (int i = 0; i < n; i++)
		if (msg[i] == '\r' || msg[i] == '\n')
			msg[i] = ' ';
	REPLY_LIT(c, "-ERR ");
	reply_raw(c, msg, (size_t)n);
	REPLY_LIT(c, "\r\n");
}

/* Send everything buffered.  Switches.  false if the connection is broken (or
 * the fiber was killed). */
static bool flush(struct kv_conn *c)
{
	if (gr_send_all(c->fd, c->out.p, c->out.len, 0) != (ssize_t)c->out.len)
		return false;
	c->out.len = 0;
	return true;
}

/* ---------------------------------------------------------------- commands */

static bool arg_is(const struct kv_arg *a, const char *word)
{
	size_t n = strlen(word);

	return a->n == n && strncasecmp(a->p, word, n) == 0;
}

/* A value as Redis's string2ll takes it: an optional '-', then digits without a
 * leading zero (or "0" alone), within int64_t. */
static bool parse_int64(const char *p, size_t n, long long *out)
{
	bool neg = n > 0 && p[0] == '-';
	unsigned long long v = 0;
	size_t i = neg;

	if (n == i || n - i > 19 || (p[i] == '0' && n - i > 1))
		return false;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	if (neg ? v > (unsigned long long)INT64_MAX + 1 : v > INT64_MAX)
		return false;
	if (neg && v == 0)
		return false; /* "-0" is not an integer to Redis either */
	*out = neg ? (long long)(0 - v) : (long long)v;
	return true;
}

static void wrong_arity(struct kv_conn *c, const char *name)
{
	reply_error(c, "wrong number of arguments for '%s' command", name);
}

static void cmd_ping(struct kv_conn *c, const struct kv_args *a)
{
	if (a->argc == 1)
		REPLY_LIT(c, "+PONG\r\n");
	else if (a->argc == 2)
		reply_bulk(c, a->v[1].p, a->v[1].n);
	else
		wrong_arity(c, "ping");
}

static void cmd_echo(struct kv_conn *c, const struct kv_args *a)
{
	if (a->argc != 2) {
		wrong_arity(c, "echo");
		return;
	}
	reply_bulk(c, a->v[1].p, a->v[1].n);
}

static void cmd_get(struct kv_conn *c, const struct kv_args *a)
{
	if (a->argc != 2) {
		wrong_arity(c, "get");
		return;
	}
	struct kv_entry *e = kv_table_get(&table, a->v[1].p, a->v[1].n);
	if (e)
		reply_bulk(c, kv_entry_value(e), e->vlen);
	else
		REPLY_LIT(c, "$-1\r\n");
}

static void cmd_set(struct kv_conn *c, const struct kv_args *a)
{
	if (a->argc < 3) {
		wrong_arity(c, "set");
		return;
	}
	if (a->argc > 3) {
		/* NX, XX, EX, GET, ...: not implemented, and Redis says this for
		 * an option it does not know. */
		reply_error(c, "syntax error");
		return;
	}
	if (kv_table_set(&table, a->v[1].p, a->v[1].n, a->v[2].p, a->v[2].n, NULL) < 0)
		reply_error(c, "out of memory");
	else
		REPLY_LIT(c, "+OK\r\n");
}

static void cmd_del(struct kv_conn *c, const struct kv_args *a)
{
	long long n = 0;

	if (a->argc < 2) {
		wrong_arity(c, "del");
		return;
	}
	for (size_t i = 1; i < a->argc; i++)
		n += kv_table_del(&table, a->v[i].p, a->v[i].n);
	reply_number(c, ':', n);
}

static void cmd_incr(struct kv_conn *c, const struct kv_args *a)
{
	long long v = 0;
	char digits[24];

	if (a->argc != 2) {
		wrong_arity(c, "incr");
		return;
	}
	struct kv_entry *e = kv_table_get(&table, a->v[1].p, a->v[1].n);
	if (e && !parse_int64(kv_entry_value(e), e->vlen, &v)) {
		reply_error(c, "value is not an integer or out of range");
		return;
	}
	if (v == INT64_MAX) {
		reply_error(c, "increment or decrement would overflow");
		return;
	}
	v++;
	int n = snprintf(digits, sizeof(digits), "%lld", v);
	if (kv_table_set(&table, a->v[1].p, a->v[1].n, digits, (size_t)n, NULL) < 0)
		reply_error(c, "out of memory");
	else
		reply_number(c, ':', v);
}

/* What CONFIG GET reports: the two parameters redis-benchmark prints at
 * start-up, with the values that say what this server does (no persistence). */
static const struct {
	const char *name, *value;
} config_params[] = {
	{ "save", "" },
	{ "appendonly", "no" },
};
#define CONFIG_PARAMS (sizeof(config_params) / sizeof(config_params[0]))

static void cmd_config(struct kv_conn *c, const struct kv_args *a)
{
	bool matched[CONFIG_PARAMS] = { false };
	size_t count = 0;

	if (a->argc < 2) {
		wrong_arity(c, "config");
		return;
	}
	if (!arg_is(&a->v[1], "get")) {
		reply_error(c, "unknown subcommand '%.*s'. Try CONFIG HELP.",
			    (int)(a->v[1].n > 128 ? 128 : a->v[1].n), a->v[1].p);
		return;
	}
	if (a->argc < 3) {
		wrong_arity(c, "config|get");
		return;
	}
	for (size_t i = 2; i < a->argc; i++) {
		char pattern[256];

		/* A longer pattern cannot match a name this short anyway. */
		if (a->v[i].n >= sizeof(pattern))
			continue;
		memcpy(pattern, a->v[i].p, a->v[i].n);
		pattern[a->v[i].n] = '\0';
		for (size_t k = 0; k < CONFIG_PARAMS; k++) {
			if (!matched[k] && fnmatch(pattern, config_params[k].name, FNM_CASEFOLD) == 0) {
				matched[k] = true;
				count++;
			}
		}
	}
	reply_number(c, '*', (long long)count * 2);
	for (size_t k = 0; k < CONFIG_PARAMS; k++) {
		if (matched[k]) {
			reply_bulk(c, config_params[k].name, strlen(config_params[k].name));
			reply_bulk(c, config_params[k].value, strlen(config_params[k].value));
		}
	}
}

/* Redis's wording: the name and the first arguments, each quoted and followed
 * by a space, while the list is under 128 bytes. */
static void unknown_command(struct kv_conn *c, const struct kv_args *a)
{
	char args[256];
	size_t len = 0;

	args[0] = '\0';
	for (size_t i = 1; i < a->argc && len < 128; i++) {
		int w = snprintf(args + len, sizeof(args) - len, "'%.*s' ",
				 (int)(a->v[i].n > 128 - len ? 128 - len : a->v[i].n), a->v[i].p);
		if (w < 0)
			break;
		len += (size_t)w;
	}
	reply_error(c, "unknown command '%.*s', with args beginning with: %s",
		    (int)(a->v[0].n > 128 ? 128 : a->v[0].n), a->v[0].p, args);
}

/* Execute one request; false if the connection must close after the replies
 * buffered so far (QUIT). */
static bool execute(struct kv_conn *c, const struct kv_args *a)
{
	static const struct {
		const char *name;
		void (*fn)(struct kv_conn *, const struct kv_args *);
	} commands[] = {
		{ "get", cmd_get },   { "set", cmd_set },   { "del", cmd_del },
		{ "incr", cmd_incr }, { "ping", cmd_ping }, { "echo", cmd_echo },
		{ "config", cmd_config },
	};
	const struct kv_arg *name = &a->v[0];

	if (arg_is(name, "quit")) {
		REPLY_LIT(c, "+OK\r\n");
		return false;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (arg_is(name, commands[i].name)) {
			if (table_shared)
				pthread_mutex_lock(&table_mu);
			commands[i].fn(c, a);
			if (table_shared)
				pthread_mutex_unlock(&table_mu);
			return true;
		}
	}
	unknown_command(c, a);
	return true;
}

/* ---------------------------------------------------------------- connections */

/* Answer every complete request in the input buffer and drop them from it;
 * false if the connection must close (QUIT, a malformed request). */
static bool serve_input(struct kv_conn *c)
{
	char err[128];
	size_t off = 0;
	bool open = true;

	while (open) {
		ssize_t r = parse_request(c->in.p + off, c->in.len - off, &c->args, err, sizeof(err));

		if (r == 0)
			break;
		if (r < 0) {
			reply_error(c, "%s", err);
			open = false;
			break;
		}
		off += (size_t)r;
		if (c->args.argc > 0)
			open = execute(c, &c->args);
		/* A very long pipeline: let the client start reading.  The arguments
		 * point into the input buffer, which only this fiber changes. */
		if (c->out.len >= KV_FLUSH_AT && !flush(c))
			return false;
		if (c->oom)
			return false;
	}
	c->in.len -= off;
	memmove(c->in.p, c->in.p + off, c->in.len);
	return open;
}

static void kv_conn(int fd, const struct sockaddr *peer, void *arg)
{
	char in[KV_BUF], out[KV_BUF];
	struct kv_conn c = { .fd = fd };

	(void)peer;
	(void)arg;
	buf_init(&c.in, in, sizeof(in));
	buf_init(&c.out, out, sizeof(out));
	c.args.v = c.args.stack;
	c.args.cap = KV_ARGS_STACK;
	for (;;) {
		/* A request larger than the buffer: grow it (parsing has already
		 * refused anything over the limits). */
		if (c.in.len == c.in.cap && !buf_reserve(&c.in, c.in.cap, KV_MAX_QUERY))
			break;
		ssize_t n = gr_recv(fd, c.in.p + c.in.len, c.in.cap - c.in.len, 0);

		/* EOF, a reset, or ECANCELED at shutdown: the server closes fd. */
		if (n <= 0)
			break;
		c.in.len += (size_t)n;
		bool open = serve_input(&c);
		if (!flush(&c))
			break;
		if (!open) {
			/* QUIT or a malformed request: the client may have sent more,
			 * which must not turn the close into a reset that destroys the
			 * last reply. */
			srv_linger_close(fd);
			break;
		}
	}
	buf_free(&c.in);
	buf_free(&c.out);
	if (c.args.v != c.args.stack)
		free(c.args.v);
}

int main(int argc, char **argv)
{
	struct srv_opts o;
	uint64_t seed;

	srv_parse(argc, argv, &o,
		  "RESP key-value server: GET, SET, DEL, INCR, PING, ECHO, CONFIG GET, QUIT;\n"
		  "pipelining.");
	if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
		err(1, "getrandom");
	if (kv_table_init(&table, seed) < 0)
		errx(1, "out of memory");
	table_shared = o.threads > 1;
	int status = srv_main(&o, kv_conn);
	kv_table_destroy(&table);
	return status;
}
