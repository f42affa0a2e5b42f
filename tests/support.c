/* support.c — setup, teardown and socket helpers for the tests. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
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

int grt_fds_matching(const char *needle, int *first)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	if (first)
		*first = -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		char path[300], target[128];
		ssize_t len;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = '\0';
		if (strstr(target, needle)) {
			if (first && *first < 0)
				*first = atoi(e->d_name);
			n++;
		}
	}
	closedir(d);
	return n;
}

int grt_count_zombies(void)
{
	DIR *d = opendir("/proc");
	pid_t self = getpid();
	int n = 0;

	cr_assert_not_null(d, "opendir /proc: %s", strerror(errno));
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		char path[64], buf[512];
		int pid = atoi(e->d_name);

		if (pid <= 0)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/stat", pid);
		FILE *f = fopen(path, "re");
		if (!f)
			continue; /* gone since */
		size_t len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = '\0';
		/* "pid (comm) S ppid ...": comm may hold spaces and parentheses,
		 * so the state follows the last ')'. */
		char *close = strrchr(buf, ')');
		char state;
		int ppid;
		if (close && sscanf(close + 1, " %c %d", &state, &ppid) == 2 && ppid == self &&
		    state == 'Z')
			n++;
	}
	closedir(d);
	return n;
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
	int zombies = grt_count_zombies();
	cr_assert_eq(zombies, 0, "%d child processes left as zombies (ended, never reaped)", zombies);
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

void grt_enough_fds(int n)
{
	struct rlimit rl;

	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < (rlim_t)n) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
		if (rl.rlim_cur < (rlim_t)n)
			cr_skip_test("RLIMIT_NOFILE %llu is below the %d fds this test needs",
				     (unsigned long long)rl.rlim_cur, n);
	}
}

bool grt_send_all(int fd, const void *buf, size_t len)
{
	return gr_send_all(fd, buf, len, 0) == (ssize_t)len;
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

int grt_run(const char *const argv[], const char *const env[], char *out, size_t len)
{
	int p[2];
	int status;

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
	fflush(NULL); /* no buffered output duplicated into the child */
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		dup2(p[1], STDOUT_FILENO);
		dup2(p[1], STDERR_FILENO);
		for (size_t i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	size_t n = 0;
	ssize_t r;
	while (n + 1 < len && (r = read(p[0], out + n, len - 1 - n)) > 0)
		n += (size_t)r;
	out[n] = '\0';
	close(p[0]);
	cr_assert_eq(waitpid(pid, &status, 0), pid, "waitpid: %s", strerror(errno));
	return status;
}

int grt_dial(int port, int rcvbuf)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;

	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (gr_connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int err = errno;

		gr_close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

static void *grt_thread_main(void *arg)
{
	struct grt_thread *t = arg;
	struct gr_hub_stats st;

	if (t->with_hub) {
		t->hub_err = gr_hub_use(grt_hub());
		if (t->hub_err == 0 && !gr_hub_name())
			t->hub_err = -ENOTSUP;
		if (t->hub_err) {
			atomic_store(&t->done, 1);
			return NULL;
		}
	}
	t->fn(t->arg);
	t->had_hub = gr_hub_stats(&st) != -ESRCH;
	atomic_store(&t->done, 1);
	return NULL;
}

void grt_thread_start(struct grt_thread *t, int with_hub, void (*fn)(void *), void *arg)
{
	*t = (struct grt_thread){ .with_hub = with_hub, .fn = fn, .arg = arg };
	cr_assert_eq(pthread_create(&t->t, NULL, grt_thread_main, t), 0);
}

void grt_thread_join(struct grt_thread *t)
{
	while (!atomic_load(&t->done))
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(pthread_join(t->t, NULL), 0);
	cr_assert_eq(t->hub_err, 0, "the thread's hub: %s", strerror(-t->hub_err));
	if (!t->with_hub)
		cr_assert_eq(t->had_hub, 0, "a hub was made for a plain thread");
}

void grt_await_flag(atomic_int *flag, const char *what)
{
	int64_t until = gr_now() + 5 * GR_SEC;

	while (!atomic_load(flag)) {
		cr_assert_lt(gr_now(), until, "waited 5 s for %s", what);
		cr_assert_eq(gr_sleep(GR_MSEC), 0);
	}
}

int grt_move_fd(int from, int to)
{
	if (from == to)
		return 0;
	if (dup3(from, to, O_CLOEXEC) < 0)
		return -1;
	return close(from);
}

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static int fail_count;
static char fail_first[256];

void grt_fail(const char *fmt, ...)
{
	pthread_mutex_lock(&fail_lock);
	if (fail_count++ == 0) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(fail_first, sizeof(fail_first), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&fail_lock);
}

int grt_failures(const char **first)
{
	pthread_mutex_lock(&fail_lock);
	int n = fail_count;
	*first = fail_first;
	pthread_mutex_unlock(&fail_lock);
	return n;
}

void grt_fail_reset(void)
{
	pthread_mutex_lock(&fail_lock);
	fail_count = 0;
	fail_first[0] = '\0';
	pthread_mutex_unlock(&fail_lock);
}

bool grt_recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t r = gr_recv(fd, p, len, 0);

		if (r <= 0)
			return false;
		p += r;
		len -= (size_t)r;
	}
	return true;
}

size_t grt_drain_now(int fd)
{
	char buf[65536];
	size_t total = 0;
	ssize_t n;

	while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
		total += (size_t)n;
	return total;
}

int grt_report_fd = -1;

void grt_child_exit(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n > 0 && write(grt_report_fd, msg, (size_t)n) < 0)
		_exit(3);
	_exit(strcmp(msg, "ok") == 0 ? 0 : 1);
}

pid_t grt_fork_reporting(int *report)
{
	int rep[2];

	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
	fflush(NULL); /* no buffered output duplicated into the child */
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(rep[0]);
		grt_report_fd = rep[1];
		return 0;
	}
	close(rep[1]);
	*report = rep[0];
	return pid;
}

void grt_child_expect_ok(pid_t pid, int report)
{
	char msg[512];
	ssize_t n, total = 0;
	int ws;

	while ((n = read(report, msg + total, sizeof(msg) - 1 - (size_t)total)) > 0)
		total += n;
	msg[total] = '\0';
	close(report);
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws), "the child died of signal %d (%s)", WTERMSIG(ws), msg);
	cr_assert_str_eq(msg, "ok", "child: %s (exit %d)", msg, WEXITSTATUS(ws));
	cr_assert_eq(WEXITSTATUS(ws), 0);
}

int grt_connect_green(int port)
{
	int fd = grt_dial(port, 0);

	if (fd < 0)
		grt_fail("connect to %d: %s", port, strerror(errno));
	return fd;
}

static __thread uint64_t rng_state;

void grt_rng_seed(uint64_t seed)
{
	rng_state = seed;
}

uint64_t grt_rng(void)
{
	/* splitmix64: small, good enough, and the same everywhere. */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

unsigned grt_pick(unsigned n)
{
	return (unsigned)(grt_rng() % n);
}

int64_t grt_random_deadline(void)
{
	switch (grt_pick(8)) {
	case 0:
	case 1:
	case 2:
		return GR_FOREVER;
	case 3:
		return 0;
	case 4:
		return gr_now() - 1;
	default:
		return gr_now() + (int64_t)grt_pick(300) * 1000; /* up to 300 us */
	}
}

int grt_random_pause(void)
{
	switch (grt_pick(6)) {
	case 0:
		return 0;
	case 1:
		return gr_sleep((int64_t)grt_pick(100) * 1000);
	default:
		return gr_sleep(0);
	}
}

void *grt_echo_client(void *arg)
{
	struct grt_echo_client *c = arg;
	unsigned char *out = malloc(c->size), *in = malloc(c->size);
	int fd = grt_connect_green(c->port);

	if (!out || !in)
		grt_fail("malloc");
	for (int r = 0; out && in && fd >= 0 && r < c->rounds; r++) {
		for (size_t i = 0; i < c->size; i++)
			out[i] = grt_pattern(c->seed + (unsigned)r, i);
		if (!grt_send_all(fd, out, c->size) || !grt_recv_all(fd, in, c->size)) {
			grt_fail("client %u round %d: %s", c->seed, r, strerror(errno));
			break;
		}
		if (memcmp(in, out, c->size) != 0) {
			grt_fail("client %u round %d: echoed bytes differ", c->seed, r);
			break;
		}
	}
	if (fd >= 0)
		gr_close(fd);
	free(out);
	free(in);
	return NULL;
}

void grt_stream_fill(unsigned char *buf, size_t n, uint64_t pos)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = grt_stream_byte(pos + i);
}

void grt_stream_check(const unsigned char *buf, size_t n, uint64_t pos)
{
	for (size_t i = 0; i < n; i++) {
		if (buf[i] != grt_stream_byte(pos + i))
			cr_assert_fail("byte %llu: %#x, expected %#x", (unsigned long long)(pos + i),
				       buf[i], grt_stream_byte(pos + i));
	}
}

void grt_udp_pair(int fds[2])
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);

	fds[1] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	fds[0] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert(fds[0] >= 0 && fds[1] >= 0);
	cr_assert_eq(bind(fds[1], (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(getsockname(fds[1], (struct sockaddr *)&sa, &len), 0);
	cr_assert_eq(connect(fds[0], (struct sockaddr *)&sa, sizeof(sa)), 0);
}

void grt_raw_pty(int *master, int *slave)
{
	struct termios raw;

	if (openpty(master, slave, NULL, NULL, NULL) != 0)
		cr_skip_test("no pseudo-terminal here: %s", strerror(errno));
	cr_assert_eq(tcgetattr(*slave, &raw), 0);
	cfmakeraw(&raw);
	cr_assert_eq(tcsetattr(*slave, TCSANOW, &raw), 0);
	cr_assert_eq(fcntl(*master, F_SETFD, FD_CLOEXEC), 0);
	cr_assert_eq(fcntl(*slave, F_SETFD, FD_CLOEXEC), 0);
}

static void *watchdog_main(void *arg)
{
	struct grt_watchdog *w = arg;
	int64_t until = gr_now() + w->after;

	while (!atomic_load(&w->done) && gr_now() < until) {
		struct timespec ts = { 0, 2 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	if (atomic_load(&w->done))
		return NULL;
	atomic_store(&w->rescued, 1);
	if (w->feed >= 0)
		(void)!write(w->feed, "!", 1);
	while (w->drain >= 0 && !atomic_load(&w->done)) {
		static char sink[1 << 16];
		struct pollfd pfd = { .fd = w->drain, .events = POLLIN };

		if (poll(&pfd, 1, 10) > 0)
			(void)!read(w->drain, sink, sizeof(sink));
	}
	return NULL;
}

void grt_watchdog_start(struct grt_watchdog *w, int64_t after, int feed, int drain)
{
	w->after = after;
	w->feed = feed;
	w->drain = drain;
	atomic_init(&w->done, 0);
	atomic_init(&w->rescued, 0);
	cr_assert_eq(pthread_create(&w->t, NULL, watchdog_main, w), 0);
}

bool grt_watchdog_stop(struct grt_watchdog *w)
{
	atomic_store(&w->done, 1);
	cr_assert_eq(pthread_join(w->t, NULL), 0);
	return atomic_load(&w->rescued) != 0;
}

int grt_exhaust_fds(int *fill, int max, int room, struct rlimit *old)
{
	int high = 0, n = 0;

	for (int fd = 0; fd < 4096; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			high = fd;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, old), 0);
	struct rlimit low = { .rlim_cur = (rlim_t)(high + 1 + room), .rlim_max = old->rlim_max };
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	while (n < max && (fill[n] = dup(0)) >= 0)
		n++;
	cr_assert_eq(errno, EMFILE, "%d fillers were not enough", max);
	return n;
}

void grt_restore_fds(const int *fill, int n, const struct rlimit *old)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(close(fill[i]), 0);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, old), 0);
}
