/* proxy.c — a TCP proxy with an idle timeout: each client is connected to
 * the upstream server, and the connection is closed once neither side has
 * sent anything for IDLE_MS.
 *
 *   cc proxy.c $(pkg-config --cflags --libs greenring) -o proxy
 *   ./proxy PORT UPSTREAM_IP UPSTREAM_PORT IDLE_MS
 *
 * It prints "listening on 127.0.0.1:PORT" (PORT 0: any free port) and serves
 * until killed. What it shows:
 *   - per-fd deadlines (gr_fd_set_deadline), Go's SetReadDeadline and
 *     SetWriteDeadline: two fibers use one socket, one reading and one
 *     writing, each with its own direction's deadline;
 *   - cleaning up after a kill (gr_kill_ack): when the server is stopped,
 *     the handler still joins its second fiber.
 * (Tested: tests/test_examples.c runs it on every hub.)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <greenring.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

static struct sockaddr_in upstream;
static int64_t idle;

/* One direction of a connection: copy from `from` to `to`. `last` is when
 * either direction last moved data, shared by the two. */
struct pump {
	int from, to;
	int64_t *last;
};

/* Until end of file, an error, or idleness: returns 1 for a clean end of
 * file (passed on as a half-close), 0 otherwise. */
static void *pump(void *arg)
{
	struct pump *p = arg;
	char buf[16384];

	for (;;) {
		/* Idle means neither direction moved data: wait at most until the
		 * shared `last` plus the idle time. */
		gr_fd_set_deadline(p->from, GR_FD_READ, *p->last + idle);
		ssize_t n = gr_recv(p->from, buf, sizeof buf, 0);

		if (n < 0 && errno == ETIMEDOUT && gr_now() < *p->last + idle)
			continue; /* the other direction was busy meanwhile */
		if (n == 0) {
			shutdown(p->to, SHUT_WR); /* pass the end of file on */
			return (void *)1;
		}
		if (n < 0)
			return NULL; /* idle, reset, or killed */
		*p->last = gr_now();
		/* A peer that stops reading must not hold us forever either. */
		gr_fd_set_deadline(p->to, GR_FD_WRITE, *p->last + idle);
		if (gr_send_all(p->to, buf, (size_t)n, 0) != n)
			return NULL;
	}
}

static void proxy(int client, const struct sockaddr *peer, void *arg)
{
	(void)peer;
	(void)arg;
	int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (up < 0)
		return;
	/* The write deadline bounds the connect too. */
	gr_fd_set_deadline(up, GR_FD_WRITE, gr_now() + idle);
	if (gr_connect(up, (struct sockaddr *)&upstream, sizeof upstream) < 0) {
		gr_close(up);
		return;
	}
	int64_t last = gr_now();
	struct pump to_up = { client, up, &last }, to_client = { up, client, &last };
	gr_fiber *back = gr_spawn(pump, &to_client);

	if (!back) {
		gr_close(up);
		return;
	}
	if (!pump(&to_up))
		gr_kill(back); /* this direction failed: end the other one too */
	/* Killed (the server is stopping)? Acknowledge, so that the cleanup's
	 * calls work again, for at most a second. */
	if (gr_killed())
		gr_kill_ack(gr_now() + GR_SEC);
	gr_join(back, NULL, GR_FOREVER);
	gr_close(up); /* the server closes `client` when we return */
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: proxy PORT UPSTREAM_IP UPSTREAM_PORT IDLE_MS\n");
		return 2;
	}
	upstream.sin_family = AF_INET;
	upstream.sin_port = htons((uint16_t)atoi(argv[3]));
	if (inet_pton(AF_INET, argv[2], &upstream.sin_addr) != 1) {
		fprintf(stderr, "proxy: %s is not an IPv4 address\n", argv[2]);
		return 2;
	}
	idle = atoll(argv[4]) * GR_MSEC;

	gr_server *srv = gr_server_create("127.0.0.1", atoi(argv[1]), proxy, NULL, NULL);
	if (!srv || gr_server_start(srv) < 0) {
		fprintf(stderr, "proxy: cannot listen on port %s\n", argv[1]);
		return 1;
	}
	printf("listening on 127.0.0.1:%d\n", gr_server_port(srv));
	fflush(stdout);
	return gr_server_wait(srv, GR_FOREVER) < 0;
}
