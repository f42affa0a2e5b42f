/* test_server_threads.c — gr_server on several hubs (opts.threads) and
 * graceful shutdown: echo under load on two hubs with every byte checked and
 * both hubs serving, a graceful shutdown with connections in flight that
 * loses no byte the server answered (and counts what finished and what was
 * killed), shutdown and free of idle and busy servers, a failed start that
 * leaves nothing behind, and the owner-only API. Runs once per hub.
 *
 * The clients run on a thread of their own (with its own hub), so that the
 * server's hubs only serve. Fibers and other threads never assert: they
 * record failures (thread-safe), and the test body asserts after joining. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(server_threads);

/* ------------------------------------------------------------ helpers */

/* Which threads served: each handler notes its thread. */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t seen[8];
static int nseen;

static void note_thread(void)
{
	pthread_t me = pthread_self();

	pthread_mutex_lock(&seen_lock);
	int known = 0;
	for (int i = 0; i < nseen; i++)
		known |= pthread_equal(seen[i], me);
	if (!known && nseen < 8)
		seen[nseen++] = me;
	pthread_mutex_unlock(&seen_lock);
}

static void echo_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[16384];
	ssize_t n;

	(void)peer;
	(void)arg;
	note_thread();
	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0)
		if (!grt_send_all(fd, buf, (size_t)n))
			return;
}

static gr_server *start_server(gr_server_handler h, void *arg, unsigned threads, int *port)
{
	struct gr_server_opts o = { .threads = threads };
	gr_server *s = gr_server_create("127.0.0.1", 0, h, arg, &o);

	cr_assert_not_null(s, "gr_server_create: %s", strerror(errno));
	int r = gr_server_start(s);
	cr_assert_eq(r, 0, "gr_server_start: %s", strerror(-r));
	*port = gr_server_port(s);
	cr_assert_gt(*port, 0);
	return s;
}

/* Run `n` client fibers fn(&args[i]) on a thread of their own. */
struct clients {
	void *(*fn)(void *);
	char *args;
	size_t size;
	int n;
};

static void clients_run(void *arg)
{
	struct clients *c = arg;
	gr_fiber **f = calloc((size_t)c->n, sizeof(*f));

	if (!f) {
		grt_fail("calloc");
		return;
	}
	for (int i = 0; i < c->n; i++)
		if (!(f[i] = gr_spawn(c->fn, c->args + (size_t)i * c->size)))
			grt_fail("spawn client %d: %s", i, strerror(errno));
	for (int i = 0; i < c->n; i++)
		if (f[i] && gr_join(f[i], NULL, gr_now() + 60 * GR_SEC) != 0)
			grt_fail("client %d did not end", i);
	free(f);
}

/* ------------------------------------------------------------ echo under load */


#define LOAD_CLIENTS 120

Test(server_threads, echo_under_load_on_two_hubs_checks_every_byte)
{
	static struct grt_echo_client cl[LOAD_CLIENTS];
	struct clients cs = { .fn = grt_echo_client, .args = (char *)cl, .size = sizeof(cl[0]),
			      .n = LOAD_CLIENTS };
	struct grt_thread t;
	int port;

	nseen = 0;
	gr_server *s = start_server(echo_handler, NULL, 2, &port);
	for (int i = 0; i < LOAD_CLIENTS; i++)
		cl[i] = (struct grt_echo_client){ .port = port, .seed = (unsigned)i,
					      .size = i % 10 == 0 ? 256 * 1024 : 1 + (size_t)i * 37,
					      .rounds = i % 10 == 0 ? 3 : 20 };
	grt_thread_start(&t, 1, clients_run, &cs);
	grt_thread_join(&t);
	grt_assert_no_failures();
	cr_assert_eq(nseen, 2, "connections were served on %d threads, not 2", nseen);
	assert_ok(gr_server_stop(s, 0));
	assert_ok(gr_server_wait(s, gr_now() + 10 * GR_SEC));
	cr_assert_eq(gr_server_conns(s), 0);
	assert_ok(gr_server_free(s));
}

/* ------------------------------------------------------------ graceful shutdown */

enum { SHORT_CLIENTS = 8, ENDLESS_CLIENTS = 8, NCLIENTS = SHORT_CLIENTS + ENDLESS_CLIENTS,
       CHUNK = 700 };

/* The server side counts, per client, the bytes it answered (its sends
 * that succeeded): the client must receive exactly those. */
static atomic_long answered[NCLIENTS];

static void counting_echo(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[4096];
	uint32_t id;
	ssize_t n;

	(void)peer;
	(void)arg;
	note_thread();
	if (!grt_recv_all(fd, &id, sizeof(id)) || id >= NCLIENTS)
		return;
	while ((n = gr_recv(fd, buf, sizeof(buf), 0)) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = gr_send(fd, buf + off, (size_t)(n - off), 0);

			if (w < 0)
				return;
			atomic_fetch_add(&answered[id], w);
			off += w;
		}
	}
}

struct sd_client {
	int port;
	uint32_t id;
	int endless;                /* sends until the server goes away */
	int fd;
	atomic_int writing_done;
	atomic_long sent;
	long received;
	int bad_byte;               /* received something not sent */
	atomic_int connected;
};

static atomic_int clients_connected;

/* Writes CHUNK-byte pieces of its stream: a few with pauses (short), or
 * until the connection fails or the reader says the server has gone. */
static void *sd_writer(void *arg)
{
	struct sd_client *c = arg;
	unsigned char buf[CHUNK];
	long off = 0;
	int pieces = c->endless ? 1 << 30 : 10;

	for (int p = 0; p < pieces && !atomic_load(&c->writing_done); p++) {
		for (int i = 0; i < CHUNK; i++)
			buf[i] = grt_pattern(c->id, (size_t)(off + i));
		ssize_t w = gr_send(c->fd, buf, CHUNK, 0);
		if (w < 0)
			break;
		off += w;
		atomic_store(&c->sent, off);
		gr_sleep((c->endless ? 2 : 30) * GR_MSEC);
	}
	if (!c->endless)
		shutdown(c->fd, SHUT_WR); /* done: the server's recv sees EOF */
	return NULL;
}

static void *sd_client_main(void *arg)
{
	struct sd_client *c = arg;
	unsigned char buf[4096];

	c->fd = grt_connect_green(c->port);
	if (c->fd < 0)
		return NULL;
	if (!grt_send_all(c->fd, &c->id, sizeof(c->id))) {
		grt_fail("client %u: sending its id", c->id);
		gr_close(c->fd);
		return NULL;
	}
	atomic_store(&c->connected, 1);
	atomic_fetch_add(&clients_connected, 1);
	gr_fiber *w = gr_spawn(sd_writer, c);
	/* Read the echo until EOF (the server closed) or an error. */
	for (;;) {
		ssize_t n = gr_recv(c->fd, buf, sizeof(buf), 0);

		if (n <= 0) {
			if (n < 0)
				grt_fail("client %u: recv: %s after %ld bytes", c->id, strerror(errno),
				     c->received);
			break;
		}
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != grt_pattern(c->id, (size_t)(c->received + i)))
				c->bad_byte = 1;
		c->received += n;
	}
	atomic_store(&c->writing_done, 1);
	if (w)
		gr_join(w, NULL, GR_FOREVER);
	gr_close(c->fd);
	return NULL;
}

Test(server_threads, graceful_shutdown_with_connections_in_flight_loses_no_answered_byte)
{
	static struct sd_client cl[NCLIENTS];
	struct clients cs = { .fn = sd_client_main, .args = (char *)cl, .size = sizeof(cl[0]),
			      .n = NCLIENTS };
	struct grt_thread t;
	struct gr_server_shutdown_stats st = { 99, 99 };
	int port;

	nseen = 0;
	atomic_store(&clients_connected, 0);
	for (int i = 0; i < NCLIENTS; i++)
		atomic_store(&answered[i], 0);
	gr_server *s = start_server(counting_echo, NULL, 2, &port);
	for (int i = 0; i < NCLIENTS; i++)
		cl[i] = (struct sd_client){ .port = port, .id = (uint32_t)i,
					    .endless = i >= SHORT_CLIENTS };
	grt_thread_start(&t, 1, clients_run, &cs);
	/* Every connection is live and has had some traffic. */
	int64_t until = gr_now() + 10 * GR_SEC;
	while (atomic_load(&clients_connected) < NCLIENTS || gr_server_conns(s) < NCLIENTS) {
		cr_assert_lt(gr_now(), until, "%d clients connected, %ld served",
			     atomic_load(&clients_connected), gr_server_conns(s));
		assert_ok(gr_sleep(GR_MSEC));
	}
	assert_ok(gr_sleep(20 * GR_MSEC));
	/* The short clients end within ~300 ms; the endless ones never do. */
	int64_t t0 = gr_now();
	int r = gr_server_shutdown(s, t0 + 2 * GR_SEC, &st);
	int64_t took = gr_now() - t0;
	cr_assert_eq(r, 0, "gr_server_shutdown: %s", strerror(-r));
	grt_thread_join(&t);
	grt_assert_no_failures();

	cr_assert_eq(st.finished, SHORT_CLIENTS, "%zu finished", st.finished);
	cr_assert_eq(st.killed, ENDLESS_CLIENTS, "%zu killed", st.killed);
	cr_assert_geq(took, 2 * GR_SEC, "the deadline was not waited for");
	cr_assert_lt(took, 5 * GR_SEC, "killing and lingering took %lld ms",
		     (long long)(took / GR_MSEC));
	cr_assert_eq(nseen, 2, "connections were served on %d threads, not 2", nseen);
	for (int i = 0; i < NCLIENTS; i++) {
		cr_assert_eq(cl[i].bad_byte, 0, "client %d received bytes it never sent", i);
		cr_assert_eq(cl[i].received, atomic_load(&answered[i]),
			     "client %d (%s): the server answered %ld bytes, the client got %ld", i,
			     cl[i].endless ? "killed" : "finished", atomic_load(&answered[i]),
			     cl[i].received);
		if (!cl[i].endless)
			cr_assert_eq(cl[i].received, 10 * CHUNK, "finished client %d", i);
	}
	cr_assert_eq(gr_server_conns(s), 0);
	assert_ok(gr_server_free(s));
}

/* ------------------------------------------------------------ lifecycle */

Test(server_threads, idle_servers_shut_down_and_free_on_any_number_of_threads)
{
	struct gr_server_shutdown_stats st = { 5, 5 };
	int port;

	for (unsigned threads = 1; threads <= 4; threads++) {
		gr_server *s = start_server(echo_handler, NULL, threads, &port);
		assert_ok(gr_server_shutdown(s, gr_now() + GR_SEC, &st));
		cr_assert_eq(st.finished + st.killed, 0);
		assert_ok(gr_server_wait(s, 0));
		assert_ok(gr_server_free(s));
	}
	/* Freed while running, without a stop first. */
	gr_server *s = start_server(echo_handler, NULL, 3, &port);
	assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_server_free(s));
	/* Never started. */
	struct gr_server_opts o = { .threads = 2 };
	s = gr_server_create("127.0.0.1", 0, echo_handler, NULL, &o);
	cr_assert_not_null(s);
	assert_ok(gr_server_shutdown(s, gr_now() + GR_SEC, NULL));
	assert_ok(gr_server_free(s));
	o.threads = GR_SERVER_THREADS_MAX + 1;
	cr_assert_null(gr_server_create("127.0.0.1", 0, echo_handler, NULL, &o));
	cr_assert_eq(errno, EINVAL);
}

Test(server_threads, a_failed_start_leaves_nothing_and_may_be_retried)
{
	int port;
	int busy = grt_listener(&port); /* no SO_REUSEPORT: the port is taken */
	struct gr_server_opts o = { .threads = 3 };
	gr_server *s = gr_server_create("127.0.0.1", port, echo_handler, NULL, &o);

	cr_assert_not_null(s);
	assert_err(gr_server_start(s), EADDRINUSE);
	assert_err(gr_server_port(s), ENOTCONN);
	close(busy);
	assert_ok(gr_server_start(s));
	cr_assert_eq(gr_server_port(s), port);
	assert_ok(gr_server_free(s));
}

/* A handler on another hub of the server may not drive it. */
static atomic_int other_hub_rc;
static gr_server *the_server;

static void meddling_handler(int fd, const struct sockaddr *peer, void *arg)
{
	char c;

	(void)peer;
	(void)arg;
	if (!pthread_equal(pthread_self(), *(pthread_t *)arg))
		atomic_store(&other_hub_rc, gr_server_stop(the_server, GR_SERVER_KILL));
	while (gr_recv(fd, &c, 1, 0) > 0)
		; /* until the client closes, or the handler is killed */
}

struct tap {
	int port, n;
};

static void *connect_and_wait(void *arg)
{
	struct tap *tp = arg;
	int fd = grt_connect_green(tp->port);
	char c;

	if (fd >= 0) {
		(void)grt_send_all(fd, "x", 1);
		(void)gr_recv(fd, &c, 1, 0); /* until the server closes */
		gr_close(fd);
	}
	return NULL;
}

static void tap_run(void *arg)
{
	struct tap *tp = arg;
	gr_fiber *f[32];

	for (int i = 0; i < tp->n; i++)
		f[i] = gr_spawn(connect_and_wait, tp);
	for (int i = 0; i < tp->n; i++)
		if (f[i])
			gr_join(f[i], NULL, GR_FOREVER);
}

Test(server_threads, handlers_on_other_hubs_are_refused_the_api)
{
	pthread_t owner = pthread_self();
	struct tap tp = { .n = 32 };
	struct grt_thread t;
	struct gr_server_opts o = { .threads = 2 };

	atomic_store(&other_hub_rc, 1);
	the_server = gr_server_create("127.0.0.1", 0, meddling_handler, &owner, &o);
	cr_assert_not_null(the_server);
	assert_ok(gr_server_start(the_server));
	tp.port = gr_server_port(the_server);
	grt_thread_start(&t, 1, tap_run, &tp);
	int64_t until = gr_now() + 10 * GR_SEC;
	while (gr_server_conns(the_server) < tp.n) {
		cr_assert_lt(gr_now(), until, "%ld of %d connected", gr_server_conns(the_server), tp.n);
		assert_ok(gr_sleep(GR_MSEC));
	}
	cr_assert_eq(atomic_load(&other_hub_rc), -EPERM,
		     "a handler on the other hub could stop the server (%d)", atomic_load(&other_hub_rc));
	assert_ok(gr_server_free(the_server)); /* kills the handlers: the clients see EOF */
	grt_thread_join(&t);
}
