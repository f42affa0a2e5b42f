/* echo_server.c — the benchmark's echo server on greenring: one fiber per
 * connection (gr_server), reading whatever arrives and writing it all back.
 *
 *   echo_server [--hub NAME] [--host ADDR] [--port N] [--threads T] [--max-conns N]
 *
 * Same command line, "listening on HOST:PORT" line and SIGINT/SIGTERM
 * behaviour as the raw baselines (see server_main.h and docs/servers.md).
 */
#define _GNU_SOURCE
#include "server_main.h"

/* Large enough that a 4 KiB message (the benchmark's big size) is one read,
 * small enough for the default 64 KiB fiber stack. */
#define ECHO_BUF (16 * 1024)

static void echo_conn(int fd, const struct sockaddr *peer, void *arg)
{
	char buf[ECHO_BUF];

	(void)peer;
	(void)arg;
	for (;;) {
		ssize_t n = gr_recv(fd, buf, sizeof(buf), 0);

		/* EOF, a reset, or ECANCELED at shutdown: the connection is over
		 * either way, and the server closes fd. */
		if (n <= 0)
			return;
		if (gr_send_all(fd, buf, (size_t)n, 0) != n)
			return;
	}
}

int main(int argc, char **argv)
{
	struct srv_opts o;

	srv_parse(argc, argv, &o, "Echo server: writes back whatever each connection sends.");
	return srv_main(&o, echo_conn);
}
