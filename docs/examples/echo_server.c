/* echo_server.c — the smallest useful greenring server: each client gets its
 * own fiber, which writes back whatever the client sends.
 *
 *   cc echo_server.c $(pkg-config --cflags --libs greenring) -o echo_server
 *   ./echo_server [PORT]          # 0 or none: any free port
 *
 * It prints "listening on 127.0.0.1:PORT" and serves until killed. Try it
 * with `nc 127.0.0.1 PORT`. (Tested: tests/test_examples.c runs it on every hub.)
 */
#include <greenring.h>
#include <stdio.h>
#include <stdlib.h>

/* Runs on the connection's own fiber: blocking calls here only block this
 * client. Returning ends the connection (the server closes fd). */
static void echo(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[16384];
	ssize_t n;

	(void)peer;
	(void)arg;
	while ((n = gr_recv(fd, buf, sizeof buf, 0)) > 0) {
		/* All n bytes, however many sends that takes; short only if
		 * the client went away (EPIPE, not a SIGPIPE). */
		if (gr_send_all(fd, buf, (size_t)n, 0) != n)
			return;
	}
	/* n == 0: the client closed; n < 0: an error (or the server is stopping). */
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 0;
	gr_server *srv = gr_server_create("127.0.0.1", port, echo, NULL, NULL);
	int err = srv ? gr_server_start(srv) : 0;

	if (!srv || err < 0) {
		fprintf(stderr, "echo_server: cannot listen on port %d\n", port);
		return 1;
	}
	printf("listening on 127.0.0.1:%d\n", gr_server_port(srv));
	fflush(stdout);
	/* Blocks this (main) fiber; the acceptor and the clients' fibers run. */
	return gr_server_wait(srv, GR_FOREVER) < 0;
}
