/* test_server.c — gr_server: echo through many connections, large messages,
 * the connection cap, stopping with live connections, bad arguments, fibers
 * named after their peer, and the bench/echo_server program end to end. Run
 * once per hub.
 *
 * Fibers never call cr_assert (a failed assertion must not unwind a fiber's
 * stack): they report with grt_fail (support.h), and the test body asserts
 * with grt_assert_no_failures() after joining them.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "grt_child.h"
#include "support.h"

GRT_SUITE(server);

static int last_peer_family;

static void echo_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[16384];
	ssize_t n;

	(void)arg;
	if (!peer || (peer->sa_family != AF_INET && peer->sa_family != AF_INET6))
		grt_fail("handler: peer %p family %d", (const void *)peer, peer ? peer->sa_family : -1);
	else
		last_peer_family = peer->sa_family;
	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0) {
		if (!grt_send_all(fd, buf, (size_t)n))
			return;
	}
}

static gr_server *start_echo(const struct gr_server_opts *opts, int *port)
{
	gr_server *s = gr_server_create("127.0.0.1", 0, echo_handler, NULL, opts);

	cr_assert_not_null(s, "gr_server_create: %s", strerror(errno));
	int r = gr_server_start(s);
	cr_assert_eq(r, 0, "gr_server_start: %s", strerror(-r));
	*port = gr_server_port(s);
	cr_assert_gt(*port, 0, "gr_server_port: %d", *port);
	return s;
}

static void join_all(gr_fiber **f, int n)
{
	for (int i = 0; i < n; i++) {
		int r = gr_join(f[i], NULL, gr_now() + 30 * GR_SEC);

		cr_assert_eq(r, 0, "joining client %d: %s", i, strerror(-r));
	}
}

static void stop_and_free(gr_server *s)
{
	cr_assert_eq(gr_server_stop(s, GR_SERVER_KILL), 0);
	int r = gr_server_wait(s, gr_now() + 10 * GR_SEC);
	cr_assert_eq(r, 0, "gr_server_wait: %s", strerror(-r));
	cr_assert_eq(gr_server_free(s), 0);
}

/* ------------------------------------------------------------ echo */


#define MANY 200

Test(server, echo_many_connections)
{
	int port;
	gr_server *s = start_echo(NULL, &port);
	static struct grt_echo_client cl[MANY];
	static gr_fiber *f[MANY];

	for (int i = 0; i < MANY; i++) {
		/* Sizes from 1 byte to ~6 KiB, so some messages take several reads. */
		cl[i] = (struct grt_echo_client){ .port = port, .seed = (unsigned)i,
					      .size = 1 + (size_t)(i * 31) % 6000, .rounds = 5 };
		f[i] = gr_spawn(grt_echo_client, &cl[i]);
		cr_assert_not_null(f[i]);
	}
	join_all(f, MANY);
	grt_assert_no_failures();
	/* Every client closed: the handlers end on EOF, without being killed. */
	cr_assert_eq(gr_server_stop(s, 0), 0);
	int r = gr_server_wait(s, gr_now() + 10 * GR_SEC);
	cr_assert_eq(r, 0, "handlers did not end on EOF: %s", strerror(-r));
	cr_assert_eq(gr_server_conns(s), 0);
	cr_assert_eq(gr_server_free(s), 0);
}

/* A large message needs a writer and a reader at once: the echo fills both
 * directions' socket buffers long before the message is through. */
struct big {
	int fd;
	unsigned seed;
	size_t size;
};

static void *big_writer(void *arg)
{
	struct big *b = arg;
	unsigned char chunk[8192];

	for (size_t off = 0; off < b->size;) {
		size_t n = b->size - off < sizeof(chunk) ? b->size - off : sizeof(chunk);

		for (size_t i = 0; i < n; i++)
			chunk[i] = grt_pattern(b->seed, off + i);
		if (!grt_send_all(b->fd, chunk, n)) {
			grt_fail("big writer %u: %s", b->seed, strerror(errno));
			return NULL;
		}
		off += n;
	}
	return NULL;
}

static void *big_reader(void *arg)
{
	struct big *b = arg;
	unsigned char chunk[8192];

	for (size_t off = 0; off < b->size;) {
		ssize_t n = gr_recv(b->fd, chunk, sizeof(chunk), 0);

		if (n <= 0) {
			grt_fail("big reader %u: %s at %zu", b->seed, n ? strerror(errno) : "EOF", off);
			return NULL;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (chunk[i] != grt_pattern(b->seed, off + (size_t)i)) {
				grt_fail("big reader %u: byte %zu differs", b->seed, off + (size_t)i);
				return NULL;
			}
		}
		off += (size_t)n;
	}
	return NULL;
}

Test(server, echo_large_messages)
{
	enum { N = 4 };
	int port;
	gr_server *s = start_echo(NULL, &port);
	struct big b[N];
	gr_fiber *f[2 * N];

	for (int i = 0; i < N; i++) {
		b[i] = (struct big){ .fd = grt_connect_green(port), .seed = 1000u + (unsigned)i,
				     .size = (size_t)(4 << 20) + (size_t)i * 777 };
		cr_assert_geq(b[i].fd, 0, "connecting client %d", i);
		f[2 * i] = gr_spawn(big_writer, &b[i]);
		f[2 * i + 1] = gr_spawn(big_reader, &b[i]);
		cr_assert(f[2 * i] && f[2 * i + 1]);
	}
	join_all(f, 2 * N);
	for (int i = 0; i < N; i++)
		gr_close(b[i].fd);
	grt_assert_no_failures();
	stop_and_free(s);
}

/* ------------------------------------------------------------ the cap */

static int active, max_active;
static gr_server *capped;

static void counting_handler(int fd, const struct sockaddr *peer, void *arg)
{
	size_t cap = *(size_t *)arg;

	active++;
	if (active > max_active)
		max_active = active;
	if ((size_t)active > cap || gr_server_conns(capped) > (long)cap)
		grt_fail("%d handlers (%ld conns) at once, cap %zu", active, gr_server_conns(capped), cap);
	echo_handler(fd, peer, NULL);
	active--;
}

static bool cap_release;

static void *cap_client(void *arg)
{
	int port = *(int *)arg;
	int fd = grt_connect_green(port);
	char c = 'x';

	if (fd < 0)
		return NULL;
	/* One echo proves a handler is serving this connection. The first
	 * clients served hold their connection until the test has seen the
	 * cap reached; the others wait behind it in the backlog meanwhile. */
	if (!grt_send_all(fd, &c, 1) || !grt_recv_all(fd, &c, 1) || c != 'x')
		grt_fail("cap client: no echo: %s", strerror(errno));
	const char *first;
	while (!cap_release && !grt_failures(&first))
		gr_sleep(GR_MSEC);
	gr_close(fd);
	return NULL;
}

static int64_t cpu_ns(void)
{
	struct rusage ru;

	cr_assert_eq(getrusage(RUSAGE_SELF, &ru), 0);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * GR_SEC +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* Out of fds, a client waits in the listener's backlog and every accept
 * fails with EMFILE at once: the acceptor must back off, not spin on it
 * (the classic busy loop), and must serve that client once fds come back. */
Test(server, out_of_fds_the_acceptor_backs_off_and_then_serves)
{
	int port, fill[64];
	struct rlimit old;
	gr_server *s = start_echo(NULL, &port);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* before the fds run out */

	cr_assert_geq(c, 0);
	int n = grt_exhaust_fds(fill, 64, 0, &old);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(connect(c, (struct sockaddr *)&a, sizeof(a)), 0, "%s", strerror(errno));
	cr_assert_eq(send(c, "x", 1, 0), 1);
	int64_t cpu0 = cpu_ns();
	assert_ok(gr_sleep(300 * GR_MSEC)); /* the acceptor meets EMFILE meanwhile */
	int64_t cpu = cpu_ns() - cpu0;
	cr_assert_eq(gr_server_conns(s), 0, "a connection was accepted without an fd");
	cr_assert_lt(cpu, 100 * GR_MSEC, "the acceptor spun on EMFILE: %lld ms of CPU in 300 ms",
		     (long long)(cpu / GR_MSEC));
	grt_restore_fds(fill, n, &old);
	char b = 0;
	gr_deadline_set(gr_now() + 5 * GR_SEC);
	cr_assert_eq(gr_recv(c, &b, 1, 0), 1, "no echo once fds came back: %s", strerror(errno));
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(b, 'x');
	cr_assert_eq(gr_close(c), 0);
	stop_and_free(s);
}

Test(server, max_conns_is_respected)
{
	enum { CLIENTS = 24 };
	size_t cap = 3;
	struct gr_server_opts o = { .max_conns = cap };
	int port;
	gr_fiber *f[CLIENTS];

	active = max_active = 0;
	cap_release = false;
	capped = gr_server_create("127.0.0.1", 0, counting_handler, &cap, &o);
	cr_assert_not_null(capped);
	cr_assert_eq(gr_server_start(capped), 0);
	port = gr_server_port(capped);
	for (int i = 0; i < CLIENTS; i++)
		cr_assert_not_null(f[i] = gr_spawn(cap_client, &port));
	/* The cap is reached and holds: the other clients are connected (the
	 * kernel completed their handshakes) but have no handler. */
	while (active < (int)cap) {
		grt_assert_no_failures();
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	}
	for (int i = 0; i < 10; i++)
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(active, (int)cap);
	cr_assert_eq(gr_server_conns(capped), (long)cap);
	cap_release = true;
	join_all(f, CLIENTS);
	grt_assert_no_failures();
	/* Every client was served (each got its echo), never more than `cap`
	 * at once (checked by every handler as it starts). */
	cr_assert_eq(max_active, (int)cap, "at most %d handlers ran at once, cap %zu", max_active,
		     cap);
	stop_and_free(capped);
}

/* ------------------------------------------------------------ stopping */

static int handlers_started, handlers_cancelled;

/* Echo until the connection ends; record how it ended. */
static void recording_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[256];
	ssize_t n;

	(void)peer;
	(void)arg;
	handlers_started++;
	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0) {
		if (!grt_send_all(fd, buf, (size_t)n))
			return;
	}
	if (n < 0 && errno == ECANCELED)
		handlers_cancelled++;
}

struct idle_client {
	int port;
	int fd;
	bool served;
	bool go;            /* one_round_then_close: do the second round now */
	bool saw_eof;
};

/* Let the other fibers run until each of n flags (stride bytes apart) is set. */
static void wait_until(const bool *flags, size_t stride, int n)
{
	for (int i = 0; i < n; i++) {
		while (!*(const bool *)((const char *)flags + (size_t)i * stride)) {
			grt_assert_no_failures(); /* a client that failed never sets it */
			cr_assert_eq(gr_sleep(GR_MSEC), 0);
		}
	}
}

/* Connect, prove a handler serves us, then wait for the server to close. */
static void *idle_client_main(void *arg)
{
	struct idle_client *c = arg;
	char ch = 'p';

	c->fd = grt_connect_green(c->port);
	if (c->fd < 0)
		return NULL;
	c->served = grt_send_all(c->fd, &ch, 1) && grt_recv_all(c->fd, &ch, 1);
	c->saw_eof = gr_recv(c->fd, &ch, 1, 0) == 0;
	gr_close(c->fd);
	return NULL;
}

Test(server, stop_kills_live_connections)
{
	enum { N = 10 };
	struct idle_client c[N];
	gr_fiber *f[N];
	gr_server *s = gr_server_create("127.0.0.1", 0, recording_handler, NULL, NULL);

	handlers_started = handlers_cancelled = 0;
	cr_assert_not_null(s);
	cr_assert_eq(gr_server_start(s), 0);
	int port = gr_server_port(s);
	for (int i = 0; i < N; i++) {
		c[i] = (struct idle_client){ .port = port };
		cr_assert_not_null(f[i] = gr_spawn(idle_client_main, &c[i]));
	}
	/* Until every client has its echo: then all N handlers are parked in
	 * gr_recv. */
	wait_until(&c[0].served, sizeof(c[0]), N);
	cr_assert_eq(gr_server_conns(s), N);
	cr_assert_eq(gr_server_stop(s, GR_SERVER_KILL), 0);
	cr_assert_eq(gr_server_stop(s, GR_SERVER_KILL), 0, "stop is idempotent");
	int r = gr_server_wait(s, gr_now() + 10 * GR_SEC);
	cr_assert_eq(r, 0, "gr_server_wait: %s", strerror(-r));
	cr_assert_eq(handlers_cancelled, N, "%d of %d handlers saw ECANCELED", handlers_cancelled, N);
	cr_assert_eq(gr_server_fd(s), -ENOTCONN, "the listener is closed once stopped");
	cr_assert_eq(gr_server_port(s), port, "the port stays readable");
	join_all(f, N);
	for (int i = 0; i < N; i++)
		cr_assert(c[i].saw_eof, "client %d did not see the server close", i);

	/* The port is free again: a new server binds it. */
	gr_server *again = gr_server_create("127.0.0.1", port, recording_handler, NULL, NULL);
	cr_assert_not_null(again);
	r = gr_server_start(again);
	cr_assert_eq(r, 0, "restarting on port %d: %s", port, strerror(-r));
	cr_assert_eq(gr_server_free(again), 0);
	cr_assert_eq(gr_server_free(s), 0);
}

static void *one_round_then_close(void *arg)
{
	struct idle_client *c = arg;
	char ch = 'q';

	c->fd = grt_connect_green(c->port);
	if (c->fd < 0)
		return NULL;
	c->served = grt_send_all(c->fd, &ch, 1) && grt_recv_all(c->fd, &ch, 1);
	/* Wait (through the runtime) until main has stopped the server, then
	 * check the connection still works. */
	while (!c->go)
		gr_sleep(GR_MSEC);
	c->served = c->served && grt_send_all(c->fd, &ch, 1) && grt_recv_all(c->fd, &ch, 1);
	gr_close(c->fd);
	return NULL;
}

Test(server, stop_without_kill_lets_handlers_finish)
{
	gr_server *s = gr_server_create("127.0.0.1", 0, recording_handler, NULL, NULL);
	struct idle_client c;

	handlers_started = handlers_cancelled = 0;
	cr_assert_not_null(s);
	cr_assert_eq(gr_server_start(s), 0);
	c = (struct idle_client){ .port = gr_server_port(s) };
	gr_fiber *f = gr_spawn(one_round_then_close, &c);
	cr_assert_not_null(f);
	wait_until(&c.served, 0, 1);
	cr_assert_eq(gr_server_stop(s, 0), 0);
	/* Not done while the handler runs. */
	cr_assert_eq(gr_server_wait(s, gr_now() + 20 * GR_MSEC), -ETIMEDOUT);
	cr_assert_eq(gr_server_conns(s), 1);
	c.go = true; /* the server is stopped: the client does one more round */
	cr_assert_eq(gr_join(f, NULL, gr_now() + 10 * GR_SEC), 0);
	cr_assert(c.served, "the connection stopped working after gr_server_stop(s, 0)");
	cr_assert_eq(gr_server_wait(s, gr_now() + 10 * GR_SEC), 0);
	cr_assert_eq(handlers_cancelled, 0);
	cr_assert_eq(gr_server_free(s), 0);
}

Test(server, stop_before_anything_ran)
{
	gr_server *s = gr_server_create("127.0.0.1", 0, echo_handler, NULL, NULL);

	cr_assert_not_null(s);
	cr_assert_eq(gr_server_start(s), 0);
	/* The acceptor has not run yet; a client queued in the backlog too. */
	int fd = grt_connect_plain(gr_server_port(s));
	cr_assert_eq(gr_server_stop(s, GR_SERVER_KILL), 0);
	cr_assert_eq(gr_server_wait(s, gr_now() + 10 * GR_SEC), 0);
	cr_assert_eq(gr_server_start(s), -EALREADY, "a stopped server does not restart");
	cr_assert_eq(gr_server_free(s), 0);
	close(fd);
}

Test(server, free_without_stop_kills_everything)
{
	int port;
	gr_server *s = start_echo(NULL, &port);
	struct idle_client c = { .port = port };
	gr_fiber *f = gr_spawn(idle_client_main, &c);

	wait_until(&c.served, 0, 1);
	cr_assert_eq(gr_server_free(s), 0);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 10 * GR_SEC), 0);
	cr_assert(c.saw_eof);
}

/* A handler stops its own server: the usual "shutdown" command. */
static gr_server *self_stopping;
static int inside_wait, inside_free;

static void stopping_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char ch;

	(void)peer;
	(void)arg;
	if (gr_recv(fd, &ch, 1, 0) != 1)
		return;
	inside_wait = gr_server_wait(self_stopping, GR_FOREVER);
	inside_free = gr_server_free(self_stopping);
	gr_server_stop(self_stopping, GR_SERVER_KILL);
	/* Not killed itself: it can still answer. */
	if (!grt_send_all(fd, &ch, 1))
		grt_fail("the stopping handler could not answer: %s", strerror(errno));
}

static void *poke(void *arg)
{
	int fd = grt_connect_green(*(int *)arg);
	char ch = 's';

	if (fd < 0)
		return NULL;
	if (!grt_send_all(fd, &ch, 1) || !grt_recv_all(fd, &ch, 1))
		grt_fail("poke: %s", strerror(errno));
	gr_close(fd);
	return NULL;
}

Test(server, handler_stops_its_own_server)
{
	self_stopping = gr_server_create("127.0.0.1", 0, stopping_handler, NULL, NULL);
	cr_assert_not_null(self_stopping);
	cr_assert_eq(gr_server_start(self_stopping), 0);
	int port = gr_server_port(self_stopping);
	gr_fiber *f = gr_spawn(poke, &port);
	cr_assert_not_null(f);
	int r = gr_server_wait(self_stopping, gr_now() + 10 * GR_SEC);
	cr_assert_eq(r, 0, "gr_server_wait: %s", strerror(-r));
	cr_assert_eq(inside_wait, -EDEADLK, "a handler waiting for its own server");
	cr_assert_eq(inside_free, -EPERM, "a handler freeing its own server");
	cr_assert_eq(gr_join(f, NULL, gr_now() + 10 * GR_SEC), 0);
	grt_assert_no_failures();
	cr_assert_eq(gr_server_free(self_stopping), 0);
}

/* ------------------------------------------------------------ arguments */

Test(server, bad_arguments)
{
	struct gr_server_opts bad_backlog = { .backlog = -1 };

	errno = 0;
	cr_assert_null(gr_server_create("127.0.0.1", 0, NULL, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	const char *bad_hosts[] = { "localhost", "not an address", "127.0.0.256", "1.2.3",
				    "[::1", "::1]", "[]", "1.2.3.4:80", "::g" };
	for (size_t i = 0; i < sizeof(bad_hosts) / sizeof(bad_hosts[0]); i++) {
		errno = 0;
		cr_assert_null(gr_server_create(bad_hosts[i], 0, echo_handler, NULL, NULL),
			       "host '%s' accepted", bad_hosts[i]);
		cr_assert_eq(errno, EINVAL, "host '%s'", bad_hosts[i]);
	}
	cr_assert_null(gr_server_create("127.0.0.1", -1, echo_handler, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_null(gr_server_create("127.0.0.1", 65536, echo_handler, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_null(gr_server_create("127.0.0.1", 0, echo_handler, NULL, &bad_backlog));
	cr_assert_eq(errno, EINVAL);

	cr_assert_eq(gr_server_start(NULL), -EINVAL);
	cr_assert_eq(gr_server_port(NULL), -EINVAL);
	cr_assert_eq(gr_server_fd(NULL), -EINVAL);
	cr_assert_eq(gr_server_conns(NULL), -EINVAL);
	cr_assert_eq(gr_server_stop(NULL, 0), -EINVAL);
	cr_assert_eq(gr_server_wait(NULL, 0), -EINVAL);
	cr_assert_eq(gr_server_free(NULL), 0);

	gr_server *s = gr_server_create(NULL, 0, echo_handler, NULL, NULL);
	cr_assert_not_null(s, "NULL host is the wildcard address");
	cr_assert_eq(gr_server_port(s), -ENOTCONN);
	cr_assert_eq(gr_server_fd(s), -ENOTCONN);
	cr_assert_eq(gr_server_stop(s, 0x100), -EINVAL);
	cr_assert_eq(gr_server_wait(s, 0), 0, "a server never started has nothing to wait for");
	cr_assert_eq(gr_server_free(s), 0);
}

Test(server, port_in_use)
{
	int port;
	int busy = grt_listener(&port);
	gr_server *s = gr_server_create("127.0.0.1", port, echo_handler, NULL, NULL);

	cr_assert_not_null(s);
	cr_assert_eq(gr_server_start(s), -EADDRINUSE);
	cr_assert_eq(gr_server_port(s), -ENOTCONN);
	cr_assert_eq(gr_server_free(s), 0);
	close(busy);
}

Test(server, start_twice)
{
	int port;
	gr_server *s = start_echo(NULL, &port);

	cr_assert_eq(gr_server_start(s), -EALREADY);
	cr_assert_geq(gr_server_fd(s), 0);
	stop_and_free(s);
}

Test(server, reuseport_shares_a_port)
{
	struct gr_server_opts o = { .reuseport = 1 };
	int port;
	gr_server *a = start_echo(&o, &port);
	gr_server *b = gr_server_create("127.0.0.1", port, echo_handler, NULL, &o);

	cr_assert_not_null(b);
	int r = gr_server_start(b);
	cr_assert_eq(r, 0, "second SO_REUSEPORT server on %d: %s", port, strerror(-r));
	struct grt_echo_client c = { .port = port, .seed = 7, .size = 100, .rounds = 3 };
	gr_fiber *f = gr_spawn(grt_echo_client, &c);
	cr_assert_eq(gr_join(f, NULL, gr_now() + 10 * GR_SEC), 0);
	grt_assert_no_failures();
	stop_and_free(a);
	stop_and_free(b);
}

Test(server, ipv6_loopback)
{
	int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in6 lo = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };

	if (probe < 0 || bind(probe, (struct sockaddr *)&lo, sizeof(lo)) < 0) {
		if (probe >= 0)
			close(probe);
		cr_skip_test("no IPv6 loopback here");
	}
	close(probe);
	gr_server *s = gr_server_create("[::1]", 0, echo_handler, NULL, NULL);
	cr_assert_not_null(s, "[::1]: %s", strerror(errno));
	cr_assert_eq(gr_server_start(s), 0);
	int port = gr_server_port(s);
	cr_assert_gt(port, 0);
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	lo.sin6_port = htons((uint16_t)port);
	cr_assert_eq(gr_connect(fd, (struct sockaddr *)&lo, sizeof(lo)), 0, "%s", strerror(errno));
	char ch = 'v';
	last_peer_family = 0;
	cr_assert(grt_send_all(fd, &ch, 1) && grt_recv_all(fd, &ch, 1) && ch == 'v');
	gr_close(fd);
	grt_assert_no_failures();
	cr_assert_eq(last_peer_family, AF_INET6);
	stop_and_free(s);
}

/* ------------------------------------------------------------ fiber names */

static char handler_name[64];

static void naming_handler(int fd, const struct sockaddr *peer, void *arg)
{
	(void)peer;
	(void)arg;
	snprintf(handler_name, sizeof(handler_name), "%s", gr_fiber_name(gr_self()));
	(void)gr_send(fd, "n", 1, 0);
}

Test(server, connection_fibers_are_named_after_the_peer)
{
	gr_server *s = gr_server_create("127.0.0.1", 0, naming_handler, NULL, NULL);

	cr_assert_not_null(s);
	cr_assert_eq(gr_server_start(s), 0);
	handler_name[0] = '\0';
	int fd = grt_dial(gr_server_port(s), 0);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	char ch;
	cr_assert(grt_recv_all(fd, &ch, 1));
	struct sockaddr_in me;
	socklen_t len = sizeof(me);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&me, &len), 0);
	char want[64];
	snprintf(want, sizeof(want), "127.0.0.1:%d", ntohs(me.sin_port));
	cr_assert_str_eq(handler_name, want, "the handler's fiber is named \"%s\"", handler_name);
	gr_close(fd);
	stop_and_free(s);
}

static void *stop_from_other_thread(void *arg)
{
	return (void *)(intptr_t)gr_server_stop(arg, 0);
}

Test(server, other_threads_are_refused)
{
	int port;
	gr_server *s = start_echo(NULL, &port);
	pthread_t t;
	void *res;

	cr_assert_eq(pthread_create(&t, NULL, stop_from_other_thread, s), 0);
	cr_assert_eq(pthread_join(t, &res), 0);
	cr_assert_eq((intptr_t)res, -EPERM);
	stop_and_free(s);
}

/* ------------------------------------------------------------ echo_server */

static void *program_client(void *arg)
{
	struct grt_echo_client *c = arg;

	return grt_echo_client(c);
}

Test(server, echo_server_program)
{
	const char *prog = grt_child_program("GREENRING_ECHO_SERVER");
	char *argv[] = { (char *)prog, "--hub", (char *)grt_hub(), "--port", "0", NULL };
	struct grt_child c;
	static struct grt_echo_client cl[50];
	gr_fiber *f[50];

	grt_child_start(&c, argv);
	cr_assert_gt(c.port, 0, "expected \"listening on 127.0.0.1:PORT\", got \"%s\"", c.line);
	cr_assert(strncmp(c.line, "listening on 127.0.0.1:", 23) == 0, "%s", c.line);
	for (int i = 0; i < 50; i++) {
		cl[i] = (struct grt_echo_client){ .port = c.port, .seed = 50u + (unsigned)i,
					      .size = 64 + (size_t)i * 100, .rounds = 10 };
		cr_assert_not_null(f[i] = gr_spawn(program_client, &cl[i]));
	}
	join_all(f, 50);
	grt_assert_no_failures();
	cr_assert_eq(grt_child_stop(&c, SIGTERM), 0, "echo_server did not exit 0 on SIGTERM");
}

Test(server, echo_server_program_stops_with_live_connections)
{
	const char *prog = grt_child_program("GREENRING_ECHO_SERVER");
	char *argv[] = { (char *)prog, "--hub", (char *)grt_hub(), "--port", "0",
			 "--threads", "2", NULL };
	struct grt_child c;
	struct idle_client ic[8];
	gr_fiber *f[8];

	grt_child_start(&c, argv);
	cr_assert_gt(c.port, 0, "got \"%s\"", c.line);
	for (int i = 0; i < 8; i++) {
		ic[i] = (struct idle_client){ .port = c.port };
		cr_assert_not_null(f[i] = gr_spawn(idle_client_main, &ic[i]));
	}
	wait_until(&ic[0].served, sizeof(ic[0]), 8);
	cr_assert_eq(grt_child_stop(&c, SIGINT), 0, "echo_server did not exit 0 on SIGINT");
	join_all(f, 8);
	for (int i = 0; i < 8; i++)
		cr_assert(ic[i].saw_eof, "client %d: connection not closed at shutdown", i);
}

Test(server, echo_server_program_refuses_unknown_hub)
{
	const char *prog = grt_child_program("GREENRING_ECHO_SERVER");
	char *argv[] = { (char *)prog, "--hub", "no-such-hub", "--port", "0", NULL };
	struct grt_child c;

	grt_child_start(&c, argv);
	cr_assert_eq(c.port, -1, "started anyway: %s", c.line);
	cr_assert_eq(grt_child_stop(&c, 0), 1);
}
