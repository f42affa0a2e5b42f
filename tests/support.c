/* support.c — setup, teardown and socket helpers for the tests. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

static int baseline_fds;

const char *grt_hub(void)
{
	const char *hub = getenv("GREENRING_HUB");

	return hub && *hub ? hub : "io_uring";
}

static int required(const char *hub)
{
	const char *list = getenv("GREENRING_REQUIRE_HUBS");
	size_t n = strlen(hub);

	if (!list)
		return 0;
	for (const char *p = list; (p = strstr(p, hub)) != NULL; p += n) {
		int starts = p == list || p[-1] == ',' || p[-1] == ' ';
		int ends = p[n] == '\0' || p[n] == ',' || p[n] == ' ';

		if (starts && ends)
			return 1;
	}
	return 0;
}

int grt_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	cr_assert_not_null(d, "opendir /proc/self/fd: %s", strerror(errno));
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the directory stream's own fd */
}

void grt_setup(void)
{
	const char *hub = grt_hub();
	int r = gr_hub_use(hub);

	if (r == -ENOTSUP || r == -ENOENT) {
		if (required(hub))
			cr_assert_fail("hub %s is required (GREENRING_REQUIRE_HUBS) but cannot run: %s", hub,
				 gr_hub_why());
		cr_skip_test("hub %s cannot run on this machine: %s", hub, gr_hub_why());
	}
	cr_assert_eq(r, 0, "gr_hub_use(%s): %s", hub, strerror(-r));
	const char *name = gr_hub_name();
	cr_assert_not_null(name, "creating the %s hub: %s", hub, gr_hub_why());
	cr_assert_str_eq(name, hub);
	baseline_fds = grt_count_fds();
}

void grt_teardown(void)
{
	struct gr_hub_stats st;

	if (gr_hub_stats(&st) == -ESRCH)
		return; /* skipped before the hub existed */
	int r = gr_hub_join(gr_now() + 10 * GR_SEC);
	cr_assert_eq(r, 0, "fibers still running at teardown: gr_hub_join: %s", strerror(-r));
	cr_assert_eq(gr_hub_stats(&st), 0);
	cr_assert_eq(st.fibers, 0, "%zu fibers alive at teardown", st.fibers);
	cr_assert_eq(st.unreleased, 0, "%zu ended fibers never joined or detached", st.unreleased);
	cr_assert_eq(st.inflight, 0, "%zu operations in flight at teardown", st.inflight);
	cr_assert_eq(grt_count_fds(), baseline_fds, "fd leak: %d open, %d at start",
		     grt_count_fds(), baseline_fds);
}

static int tcp_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

int grt_listener(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int one = 1;

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(fd, 4096), 0, "listen: %s", strerror(errno));
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

int grt_connect_plain(int port)
{
	int fd = tcp_socket();
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
		     strerror(errno));
	return fd;
}

bool grt_send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t w = gr_send(fd, p, len, 0);

		if (w < 0)
			return false;
		p += w;
		len -= (size_t)w;
	}
	return true;
}

void grt_tcp_pair(int fds[2])
{
	int port;
	int l = grt_listener(&port);

	fds[0] = grt_connect_plain(port);
	fds[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(fds[1], 0, "accept: %s", strerror(errno));
	close(l);
}
