/* test_resolve.c — names (greenring/resolve.h): lookups on the thread pool,
 * numbers answered without a thread hop, kills and deadlines during a lookup
 * that hangs, a lookup killed while queued, 1000 concurrent lookups, and
 * gr_dial trying each address in order. Runs once per hub.
 *
 * Never the network: each test runs in a child process with mount and
 * network namespaces of its own (the tests run as root; without the right
 * to make them, they are skipped). There /etc/hosts, /etc/resolv.conf and
 * /etc/nsswitch.conf are the test's, the only interface is loopback, and
 * the name server is a fiber of the test on 127.0.0.1:53 that answers when
 * the test says: a lookup hangs for as long as the test wants. (HOSTALIASES
 * cannot stand in for /etc/hosts: the C library applies it only to names it
 * asks a DNS server about, and maps a name to another name, not to an
 * address.) The child checks what the suite's teardown checks (no fiber,
 * no operation in flight, no fd left, the pool idle) and, under ASan, that
 * nothing leaked: an abandoned lookup's result must have been freed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

#if defined(__SANITIZE_ADDRESS__)
#define GRT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GRT_ASAN 1
#endif
#endif
#ifdef GRT_ASAN
#include <sanitizer/lsan_interface.h>

/* The child's leak check must not count the hub the suite's setup made in
 * the parent: a fork child leaves the parent's hubs alone on purpose (it may
 * be running on one of their fiber stacks, hub.c), so their memory is
 * unreachable there without being a leak. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:grt_setup\n";
}
#endif

GRT_SUITE(resolve);

#define HOSTS                                                                            \
	"127.0.0.1 localhost\n"                                                          \
	"::1 localhost ip6-localhost\n"                                                  \
	"10.9.8.7 one.test\n"                                                            \
	"::1 two.test\n"                                                                 \
	"127.0.0.1 two.test\n"

/* ------------------------------------------------------------ the child */

/* In the child, Criterion's assertions are not ours to use: a failed check
 * says why on stderr and fails the child. */
static int child_failed;

#define CHECK(cond, ...)                                                                 \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                    \
			fputc('\n', stderr);                                             \
			child_failed = 1;                                                \
			return;                                                          \
		}                                                                        \
	} while (0)

static void put_file(const char *dir, const char *name, const char *text, char *path, size_t len)
{
	snprintf(path, len, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
}

/* The child's world: the files bound over /etc, loopback up. 0, or the
 * exit status that says why not. */
static int enter_namespaces(const char *dir)
{
	static const char *const files[] = { "hosts", "resolv.conf", "nsswitch.conf", "services" };
	char from[128], to[64];

	if (unshare(CLONE_NEWNS | CLONE_NEWNET) < 0)
		return errno == EPERM ? 77 : 70;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return 71;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(from, sizeof(from), "%s/%s", dir, files[i]);
		snprintf(to, sizeof(to), "/etc/%s", files[i]);
		if (mount(from, to, NULL, MS_BIND, NULL) < 0)
			return 72;
	}
	/* A name service cache daemon of the machine would answer from the
	 * machine's files: hide its socket. */
	static const char *const nscd[] = { "/run/nscd", "/var/run/nscd" };
	for (size_t i = 0; i < 2; i++) {
		struct stat sb;

		if (stat(nscd[i], &sb) == 0 && S_ISDIR(sb.st_mode) &&
		    mount("tmpfs", nscd[i], "tmpfs", 0, NULL) < 0)
			return 73;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = { 0 };
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		return 74;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		return 75;
	close(s);
	return 0;
}

static void pool_settle_child(void)
{
	struct gr_tpool_stats st;
	int64_t until = gr_now() + 30 * GR_SEC;

	while (gr_tpool_stats(&st) == 0 && (st.queued || st.idle != st.threads) && gr_now() < until)
		gr_sleep(GR_MSEC);
}

#ifdef GRT_ASAN
/* LeakSanitizer scans thread stacks conservatively: a pointer to a leaked
 * addrinfo list left in a dead frame of a worker's stack (the lookup that
 * made it) would hide the leak. One job per worker overwrites that part of
 * each worker's stack; they wait for each other, so each worker takes one. */
static atomic_int scrubbed;
static int scrub_n;

static void *scrub_job(void *unused)
{
	char pad[256 * 1024];
	int64_t until = gr_now() + 10 * GR_SEC;

	(void)unused;
	memset(pad, 0, sizeof(pad));
	__asm__ volatile("" : : "r"(pad) : "memory"); /* keep the memset */
	atomic_fetch_add(&scrubbed, 1);
	while (atomic_load(&scrubbed) < scrub_n && gr_now() < until)
		sched_yield();
	return NULL;
}

static void *scrub_caller(void *unused)
{
	(void)unused;
	return (void *)(intptr_t)gr_tpool_run(scrub_job, NULL, NULL, GR_FOREVER);
}

static void scrub_workers(void)
{
	struct gr_tpool_stats st;
	gr_fiber *f[1024];

	gr_tpool_stats(&st);
	scrub_n = st.threads < 1024 ? (int)st.threads : 1024;
	atomic_store(&scrubbed, 0);
	for (int i = 0; i < scrub_n; i++)
		f[i] = gr_spawn(scrub_caller, NULL);
	for (int i = 0; i < scrub_n; i++)
		gr_join(f[i], NULL, gr_now() + 20 * GR_SEC);
}
#endif

/* What the suite's teardown checks, for the child's hub, and leaks. */
static void child_teardown(int fds_at_start)
{
	struct gr_hub_stats st;

	CHECK(gr_hub_join(gr_now() + 10 * GR_SEC) == 0, "fibers still running");
	pool_settle_child();
	CHECK(gr_hub_stats(&st) == 0 && st.fibers == 0 && st.unreleased == 0 && st.inflight == 0,
	      "%zu fibers, %zu unjoined, %zu in flight", st.fibers, st.unreleased, st.inflight);
	CHECK(grt_count_fds() == fds_at_start, "fd leak: %d open, %d at start", grt_count_fds(),
	      fds_at_start);
#ifdef GRT_ASAN
	scrub_workers();
	CHECK(__lsan_do_recoverable_leak_check() == 0, "memory leaked (the report is above)");
#endif
}

/* Run fn in a child inside the test's namespaces, on this run's hub. */
static void in_namespaces(void (*fn)(void *), void *arg)
{
	char dir[] = "/tmp/grt-resolve-XXXXXX";
	char path[128];

	cr_assert_not_null(mkdtemp(dir));
	put_file(dir, "hosts", HOSTS, path, sizeof(path));
	put_file(dir, "resolv.conf", "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n", path,
		 sizeof(path));
	put_file(dir, "nsswitch.conf", "hosts: files dns\nservices: files\n", path, sizeof(path));
	put_file(dir, "services", "http 80/tcp www\n", path, sizeof(path));
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int r = enter_namespaces(dir);

		if (r)
			_exit(r);
		if (gr_hub_use(grt_hub()) != 0 || !gr_hub_name())
			_exit(76); /* the hub is made now: its fds are not a leak */
		int fds = grt_count_fds();
		fn(arg);
		if (!child_failed)
			child_teardown(fds);
		_exit(child_failed);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	for (const char *f = "hosts\0resolv.conf\0nsswitch.conf\0services\0"; *f; f += strlen(f) + 1) {
		snprintf(path, sizeof(path), "%s/%s", dir, f);
		unlink(path);
	}
	rmdir(dir);
	cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
	if (WEXITSTATUS(status) == 77)
		cr_skip_test("no right to make mount and network namespaces (not root?)");
	cr_assert_eq(WEXITSTATUS(status), 0, "the child failed (%d; its messages are above)",
		     WEXITSTATUS(status));
}

/* ------------------------------------------------------------ the name server */

/* A DNS server on 127.0.0.1:53, a fiber of the child. It answers every
 * query for an A record with 10.1.1.1, names that begin with "nope" with
 * NXDOMAIN, other types with no answer; or, while `silent`, keeps the
 * queries unanswered until dns_speak(). */
#define DNS_HELD 16

struct dns {
	int fd;
	bool silent;
	atomic_int queries;
	int nheld;
	struct {
		unsigned char q[512];
		ssize_t n;
		struct sockaddr_in from;
	} held[DNS_HELD];
	gr_fiber *f;
};

static void dns_answer(struct dns *d, const unsigned char *q, ssize_t n, const struct sockaddr_in *to)
{
	unsigned char r[600];
	ssize_t qend = 12;

	if (n < 12 || n > 512)
		return;
	while (qend < n && q[qend])
		qend += q[qend] + 1; /* the name's labels */
	qend += 1 + 4;               /* its end, type and class */
	if (qend > n)
		return;
	bool nope = n > 13 && memcmp(q + 13, "nope", 4) == 0;
	bool a = q[qend - 4] == 0 && q[qend - 3] == 1;
	memcpy(r, q, (size_t)qend);
	r[2] = 0x80 | (q[2] & 0x01);     /* a response; recursion desired as asked */
	r[3] = 0x80 | (nope ? 3 : 0);    /* recursion available; NXDOMAIN or not */
	r[4] = 0, r[5] = 1;              /* one question */
	r[6] = 0, r[7] = !nope && a;     /* answers */
	r[8] = r[9] = r[10] = r[11] = 0;
	ssize_t len = qend;
	if (!nope && a) {
		static const unsigned char rr[] = { 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 1, 1 };

		memcpy(r + len, rr, sizeof(rr));
		len += (ssize_t)sizeof(rr);
	}
	(void)sendto(d->fd, r, (size_t)len, 0, (const struct sockaddr *)to, sizeof(*to));
}

static void *dns_main(void *arg)
{
	struct dns *d = arg;

	for (;;) {
		unsigned char q[512];
		struct sockaddr_in from;
		struct iovec iov = { q, sizeof(q) };
		struct msghdr msg = { .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov,
				      .msg_iovlen = 1 };
		ssize_t n = gr_recvmsg(d->fd, &msg, 0);

		if (n < 0)
			return NULL; /* closed by dns_stop */
		atomic_fetch_add(&d->queries, 1);
		if (d->silent && d->nheld < DNS_HELD) {
			memcpy(d->held[d->nheld].q, q, (size_t)n);
			d->held[d->nheld].n = n;
			d->held[d->nheld].from = from;
			d->nheld++;
			continue;
		}
		dns_answer(d, q, n, &from);
	}
}

static bool dns_start(struct dns *d, bool silent)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(53),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	memset(d, 0, sizeof(*d));
	d->silent = silent;
	d->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (d->fd < 0 || bind(d->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		fprintf(stderr, "dns: bind 127.0.0.1:53: %s\n", strerror(errno));
		return false;
	}
	d->f = gr_spawn(dns_main, d);
	return d->f != NULL;
}

/* Answer what was held, and everything from now on. */
static void dns_speak(struct dns *d)
{
	d->silent = false;
	for (int i = 0; i < d->nheld; i++)
		dns_answer(d, d->held[i].q, d->held[i].n, &d->held[i].from);
	d->nheld = 0;
}

static void dns_stop(struct dns *d)
{
	gr_close(d->fd); /* wakes the server with EBADF */
	gr_join(d->f, NULL, gr_now() + 5 * GR_SEC);
}

/* Wait (yielding) until the server has seen n queries. */
static bool dns_await(struct dns *d, int n)
{
	int64_t until = gr_now() + 10 * GR_SEC;

	while (atomic_load(&d->queries) < n) {
		if (gr_now() > until)
			return false;
		gr_sleep(GR_MSEC);
	}
	return true;
}

/* ------------------------------------------------------------ helpers */

static const struct addrinfo inet_stream = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM };

static uint64_t pool_completed(void)
{
	struct gr_tpool_stats st;

	gr_tpool_stats(&st);
	return st.completed;
}

static bool first_address_is(const struct addrinfo *res, const char *want)
{
	char host[64];

	return res && getnameinfo(res->ai_addr, res->ai_addrlen, host, sizeof(host), NULL, 0,
				  NI_NUMERICHOST) == 0 && strcmp(host, want) == 0;
}

struct lookup {
	const char *name;
	int64_t deadline;           /* the fiber's */
	int rc, err;
	int64_t returned_at;
	struct addrinfo *res;
};

static void *lookup_fn(void *arg)
{
	struct lookup *l = arg;

	gr_deadline_set(l->deadline);
	l->res = NULL;
	l->rc = gr_getaddrinfo(l->name, "80", &inet_stream, &l->res, GR_FOREVER);
	l->err = l->rc == EAI_SYSTEM ? errno : 0;
	l->returned_at = gr_now();
	return NULL;
}

/* ------------------------------------------------------------ lookups */

static void names_and_numbers(void *unused)
{
	struct dns d;
	struct addrinfo *res = NULL;
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	(void)unused;

	CHECK(dns_start(&d, false), "no name server");
	int rc = gr_getaddrinfo("one.test", "80", &inet_stream, &res, GR_FOREVER);
	CHECK(rc == 0, "one.test: %s", gai_strerror(rc));
	CHECK(first_address_is(res, "10.9.8.7"), "one.test is not 10.9.8.7");
	CHECK(ntohs(((struct sockaddr_in *)res->ai_addr)->sin_port) == 80, "port");
	freeaddrinfo(res);
	rc = gr_getaddrinfo("localhost", "http", &inet_stream, &res, gr_now() + 10 * GR_SEC);
	CHECK(rc == 0, "localhost: %s", gai_strerror(rc));
	CHECK(first_address_is(res, "127.0.0.1"), "localhost is not 127.0.0.1");
	freeaddrinfo(res);
	/* Asked of the name server, which knows it. */
	rc = gr_getaddrinfo("dns.test", "80", &inet_stream, &res, GR_FOREVER);
	CHECK(rc == 0, "dns.test: %s", gai_strerror(rc));
	CHECK(first_address_is(res, "10.1.1.1"), "dns.test is not 10.1.1.1");
	freeaddrinfo(res);
	rc = gr_getaddrinfo("nope.test", "80", NULL, &res, GR_FOREVER);
	CHECK(rc == EAI_NONAME, "nope.test: %s", gai_strerror(rc));
	rc = gr_getaddrinfo("one.test", "no-such-service", &inet_stream, &res, GR_FOREVER);
	CHECK(rc == EAI_SERVICE, "an unknown service: %s", gai_strerror(rc));
	rc = gr_getaddrinfo("one.test", "80", &inet_stream, NULL, GR_FOREVER);
	CHECK(rc == EAI_SYSTEM && errno == EINVAL, "res NULL: %s", gai_strerror(rc));

	struct sockaddr_in one = { .sin_family = AF_INET, .sin_port = htons(80) };
	inet_pton(AF_INET, "10.9.8.7", &one.sin_addr);
	rc = gr_getnameinfo((struct sockaddr *)&one, sizeof(one), host, sizeof(host), serv,
			    sizeof(serv), NI_NAMEREQD, GR_FOREVER);
	CHECK(rc == 0, "getnameinfo 10.9.8.7: %s", gai_strerror(rc));
	CHECK(strcmp(host, "one.test") == 0 && strcmp(serv, "http") == 0, "%s %s", host, serv);
	char tiny[3];
	rc = gr_getnameinfo((struct sockaddr *)&one, sizeof(one), tiny, sizeof(tiny), NULL, 0,
			    NI_NAMEREQD, GR_FOREVER);
	CHECK(rc == EAI_OVERFLOW, "a 3-byte buffer for one.test: %s", gai_strerror(rc));

	/* Numbers are parsed on the spot: no job for the pool. */
	uint64_t jobs = pool_completed();
	rc = gr_getaddrinfo("127.0.0.1", "8080", &inet_stream, &res, 0);
	CHECK(rc == 0, "127.0.0.1: %s", gai_strerror(rc));
	CHECK(first_address_is(res, "127.0.0.1"), "127.0.0.1");
	freeaddrinfo(res);
	rc = gr_getaddrinfo("::1", "8080", NULL, &res, 0);
	CHECK(rc == 0, "::1: %s", gai_strerror(rc));
	freeaddrinfo(res);
	rc = gr_getnameinfo((struct sockaddr *)&one, sizeof(one), host, sizeof(host), serv,
			    sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV, 0);
	CHECK(rc == 0 && strcmp(host, "10.9.8.7") == 0 && strcmp(serv, "80") == 0, "numeric");
	CHECK(pool_completed() == jobs, "a number cost a thread hop");
	/* A name with deadline 0 cannot be looked up without waiting. */
	rc = gr_getaddrinfo("one.test", "80", &inet_stream, &res, 0);
	CHECK(rc == EAI_SYSTEM && errno == ETIMEDOUT, "deadline 0: %s", gai_strerror(rc));
	dns_stop(&d);
}

Test(resolve, names_from_the_hosts_file_the_name_server_and_numbers)
{
	in_namespaces(names_and_numbers, NULL);
}

/* Every worker of the pool blocked until released. */
static int gate[2];

static void *gate_job(void *unused)
{
	char c;

	(void)unused;
	return read(gate[0], &c, 1) == 1 ? NULL : (void *)1;
}

static void *gate_caller(void *unused)
{
	(void)unused;
	return (void *)(intptr_t)gr_tpool_run(gate_job, NULL, NULL, GR_FOREVER);
}

static void kill_a_queued_lookup(void *unused)
{
	struct dns d;
	struct gr_tpool_stats st;
	gr_fiber *busy[1024];
	(void)unused;

	CHECK(dns_start(&d, false), "no name server");
	CHECK(pipe2(gate, O_CLOEXEC) == 0, "pipe");
	gr_tpool_stats(&st);
	unsigned n = st.max < 1024 ? st.max : 1024;
	for (unsigned i = 0; i < n; i++)
		busy[i] = gr_spawn(gate_caller, NULL);
	int64_t until = gr_now() + 10 * GR_SEC;
	while (gr_tpool_stats(&st) == 0 && (st.threads - st.idle < n || st.queued) && gr_now() < until)
		gr_sleep(GR_MSEC);
	struct lookup l = { .name = "queued.test", .deadline = GR_FOREVER };
	gr_fiber *f = gr_spawn(lookup_fn, &l);
	gr_sleep(5 * GR_MSEC);
	gr_tpool_stats(&st);
	CHECK(st.queued == 1, "%zu jobs queued, not the lookup alone", st.queued);
	CHECK(gr_kill(f) == 0, "kill");
	CHECK(gr_join(f, NULL, gr_now() + 5 * GR_SEC) == 0, "join");
	CHECK(l.rc == EAI_SYSTEM && l.err == ECANCELED, "%s, %s", gai_strerror(l.rc), strerror(l.err));
	for (unsigned i = 0; i < n; i++)
		CHECK(write(gate[1], "x", 1) == 1, "release");
	for (unsigned i = 0; i < n; i++)
		CHECK(gr_join(busy[i], NULL, gr_now() + 5 * GR_SEC) == 0, "join a blocker");
	pool_settle_child();
	/* It never ran (the server heard nothing), and its copies were freed
	 * by its cleanup all the same (the leak check). */
	CHECK(atomic_load(&d.queries) == 0, "a lookup whose caller left was made");
	close(gate[0]);
	close(gate[1]);
	dns_stop(&d);
}

Test(resolve, a_lookup_killed_while_queued_never_runs_and_leaks_nothing)
{
	in_namespaces(kill_a_queued_lookup, NULL);
}

static void a_thousand_lookups(void *unused)
{
	enum { N = 1000 };
	static struct lookup l[N];
	static gr_fiber *f[N];
	(void)unused;

	for (int i = 0; i < N; i++) {
		l[i] = (struct lookup){ .name = "localhost", .deadline = GR_FOREVER };
		f[i] = gr_spawn(lookup_fn, &l[i]);
		CHECK(f[i], "spawn %d", i);
	}
	for (int i = 0; i < N; i++) {
		CHECK(gr_join(f[i], NULL, gr_now() + 60 * GR_SEC) == 0, "join %d", i);
		CHECK(l[i].rc == 0, "lookup %d: %s", i, gai_strerror(l[i].rc));
		CHECK(first_address_is(l[i].res, "127.0.0.1"), "lookup %d", i);
		freeaddrinfo(l[i].res);
	}
}

Test(resolve, a_thousand_concurrent_lookups_of_localhost)
{
	in_namespaces(a_thousand_lookups, NULL);
}

/* ------------------------------------------------------------ dial */

/* A listener on addr:port (port 0: any); its port in *port. */
static int listen_on(const struct sockaddr *addr, socklen_t len, int *port, int backlog)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int one = 1;
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memcpy(&ss, addr, len);
	((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)*port); /* same offset for v6 */
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		close(fd);
		return -1;
	}
	*port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

static bool same_host(const struct sockaddr *a, const struct sockaddr *b)
{
	char ha[64], hb[64];

	return getnameinfo(a, a->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						     : sizeof(struct sockaddr_in),
			   ha, sizeof(ha), NULL, 0, NI_NUMERICHOST) == 0 &&
	       getnameinfo(b, b->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						     : sizeof(struct sockaddr_in),
			   hb, sizeof(hb), NULL, 0, NI_NUMERICHOST) == 0 &&
	       strcmp(ha, hb) == 0;
}

static void dial_in_order(void *unused)
{
	struct dns d;
	struct addrinfo *res = NULL;
	const struct addrinfo stream = { .ai_socktype = SOCK_STREAM };
	char port[16];
	(void)unused;

	CHECK(dns_start(&d, false), "no name server");
	/* two.test is ::1 and 127.0.0.1, in the order the resolver sorts them:
	 * the first refuses (nothing listens there), the second accepts. */
	int rc = gr_getaddrinfo("two.test", "1", &stream, &res, GR_FOREVER);
	CHECK(rc == 0 && res && res->ai_next, "two.test has not two addresses: %s", gai_strerror(rc));
	int p = 0;
	int l = listen_on(res->ai_next->ai_addr, res->ai_next->ai_addrlen, &p, 16);
	CHECK(l >= 0, "listen on the second address: %s", strerror(errno));
	snprintf(port, sizeof(port), "%d", p);
	int64_t jobs = (int64_t)pool_completed();
	int fd = gr_dial("two.test", port, gr_now() + 10 * GR_SEC);
	CHECK(fd >= 0, "gr_dial two.test: %s", strerror(-fd));
	CHECK(pool_completed() > (uint64_t)jobs, "the name was not looked up on the pool");
	struct sockaddr_storage peer;
	socklen_t pl = sizeof(peer);
	CHECK(getpeername(fd, (struct sockaddr *)&peer, &pl) == 0, "getpeername");
	CHECK(same_host((struct sockaddr *)&peer, res->ai_next->ai_addr),
	      "connected to another address than the second");
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "not close-on-exec");
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(a >= 0, "accept: %s", strerror(errno));
	CHECK(gr_send(fd, "hi", 2, 0) == 2, "send");
	char buf[2];
	CHECK(gr_recv(a, buf, 2, MSG_WAITALL) == 2 && memcmp(buf, "hi", 2) == 0, "recv");
	gr_close(a);
	gr_close(fd);

	/* The first address drops connection requests (its listener's queue
	 * is full): with a per-attempt timeout the second is tried. */
	int q = listen_on(res->ai_addr, res->ai_addrlen, &p, 0);
	CHECK(q >= 0, "listen on the first address: %s", strerror(errno));
	int filler = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage first;
	memcpy(&first, res->ai_addr, res->ai_addrlen);
	((struct sockaddr_in *)&first)->sin_port = htons((uint16_t)p);
	CHECK(connect(filler, (struct sockaddr *)&first, res->ai_addrlen) == 0, "fill the queue");
	struct gr_dial_opts opts = { .attempt_timeout = 100 * GR_MSEC };
	int64_t t0 = gr_now();
	fd = gr_dial_with("two.test", port, &opts, gr_now() + 10 * GR_SEC);
	CHECK(fd >= 0, "gr_dial past a silent address: %s", strerror(-fd));
	CHECK(gr_now() - t0 >= 100 * GR_MSEC, "the silent address was not waited for");
	CHECK(gr_now() - t0 < 2 * GR_SEC, "the per-attempt timeout was not applied");
	pl = sizeof(peer);
	CHECK(getpeername(fd, (struct sockaddr *)&peer, &pl) == 0 &&
		      same_host((struct sockaddr *)&peer, res->ai_next->ai_addr),
	      "not connected to the second address");
	gr_close(fd);
	a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(a >= 0, "accept");
	close(a);

	/* Every address refuses: the last error. No name: EADDRNOTAVAIL. */
	close(l);
	close(q);
	close(filler);
	fd = gr_dial("two.test", port, gr_now() + 10 * GR_SEC);
	CHECK(fd == -ECONNREFUSED, "every address refuses: %d (%s)", fd, strerror(-fd));
	fd = gr_dial("nope.test", port, gr_now() + 10 * GR_SEC);
	CHECK(fd == -EADDRNOTAVAIL, "no such name: %d (%s)", fd, strerror(-fd));
	fd = gr_dial("two.test", "no-such-service", GR_FOREVER);
	CHECK(fd == -EINVAL, "an unknown port name: %d (%s)", fd, strerror(-fd));
	CHECK(gr_dial(NULL, port, GR_FOREVER) == -EINVAL, "NULL host");
	freeaddrinfo(res);
	dns_stop(&d);
}

Test(resolve, dial_tries_each_address_in_order_and_reports_the_last_error)
{
	in_namespaces(dial_in_order, NULL);
}

/* A lookup or a dial of a name the server does not answer, in a fiber of
 * its own; its outcome as -errno (a lookup's EAI_SYSTEM is -errno). */
struct hung {
	bool dial;
	const char *name;
	int64_t deadline;           /* the fiber's; GR_FOREVER: it is killed */
	int outcome;
	int64_t returned_at;
	gr_fiber *f;
};

static void *hung_fn(void *arg)
{
	struct hung *h = arg;
	struct addrinfo *res = NULL;

	gr_deadline_set(h->deadline);
	if (h->dial) {
		h->outcome = gr_dial(h->name, "80", GR_FOREVER);
	} else {
		int rc = gr_getaddrinfo(h->name, "80", &inet_stream, &res, GR_FOREVER);

		h->outcome = rc == EAI_SYSTEM ? -errno : rc == 0 ? 0 : 1000 + rc;
		if (rc == 0)
			freeaddrinfo(res);
	}
	h->returned_at = gr_now();
	return NULL;
}

static void kill_and_deadline_in_hung_lookups(void *unused)
{
	struct dns d;
	int64_t deadline = gr_now() + 300 * GR_MSEC;
	struct hung h[4] = {
		{ .dial = false, .name = "hang1.test", .deadline = GR_FOREVER },
		{ .dial = false, .name = "hang2.test", .deadline = deadline },
		{ .dial = true, .name = "hang3.test", .deadline = GR_FOREVER },
		{ .dial = true, .name = "hang4.test", .deadline = deadline },
	};
	(void)unused;

	CHECK(dns_start(&d, true), "no name server");
	for (int i = 0; i < 4; i++)
		h[i].f = gr_spawn(hung_fn, &h[i]);
	/* Every lookup is inside the resolver, on a worker: its queries (one
	 * for a lookup of IPv4 addresses, two for a dial: A and AAAA)
	 * reached the server, which does not answer. */
	CHECK(dns_await(&d, 6), "the lookups never asked the name server");
	int64_t t0 = gr_now();
	for (int i = 0; i < 4; i += 2)
		CHECK(gr_kill(h[i].f) == 0, "kill");
	for (int i = 0; i < 4; i++) {
		const char *what = h[i].dial ? "gr_dial" : "gr_getaddrinfo";

		CHECK(gr_join(h[i].f, NULL, gr_now() + 5 * GR_SEC) == 0, "join");
		if (h[i].deadline == GR_FOREVER) {
			CHECK(h[i].outcome == -ECANCELED, "killed %s: %d", what, h[i].outcome);
			CHECK(h[i].returned_at - t0 < GR_SEC / 2, "the killed %s did not return at once",
			      what);
		} else {
			CHECK(h[i].outcome == -ETIMEDOUT, "timed %s: %d", what, h[i].outcome);
			CHECK(h[i].returned_at >= deadline, "%s returned before its deadline", what);
			CHECK(h[i].returned_at - deadline < GR_SEC / 2, "%s returned late", what);
		}
	}
	/* The workers' lookups now get their answers and make addrinfo lists
	 * nobody waits for: their cleanups free them (the child's leak check
	 * says so). */
	dns_speak(&d);
	pool_settle_child();
	dns_stop(&d);
}

Test(resolve, a_kill_or_a_deadline_during_a_hung_lookup_or_dial_returns_at_once_and_frees_its_result)
{
	in_namespaces(kill_and_deadline_in_hung_lookups, NULL);
}

/* ------------------------------------------------------------ no fd left */

/* Out of fds, a lookup (the hosts file cannot be opened, nor a socket to
 * the name server) and a dial (no socket) fail with a clear answer, within
 * their deadline; once fds are back they work. */
static void lookups_with_no_fd_left(void *unused)
{
	struct dns d;
	int fill[64];
	struct rlimit old;
	struct addrinfo *res = NULL;
	(void)unused;

	CHECK(dns_start(&d, false), "no name server");
	int n = grt_exhaust_fds(fill, 64, 0, &old);
	int64_t t0 = gr_now();
	errno = 0;
	int rc = gr_getaddrinfo("localhost", "80", &inet_stream, &res, t0 + 5 * GR_SEC);
	int err = errno;
	int dialled = gr_dial("127.0.0.1", "80", gr_now() + 5 * GR_SEC);
	int64_t took = gr_now() - t0;
	grt_restore_fds(fill, n, &old);
	if (rc == 0)
		freeaddrinfo(res);
	if (dialled >= 0)
		close(dialled);
	CHECK(took < 4 * GR_SEC, "out of fds, the lookup and dial took %lld ms", (long long)(took / GR_MSEC));
	CHECK(rc == EAI_SYSTEM && err == EMFILE, "a lookup out of fds: %s (errno %s)", gai_strerror(rc),
	      strerror(err));
	CHECK(dialled == -EMFILE, "a dial out of fds: %d (%s)", dialled, strerror(-dialled));
	rc = gr_getaddrinfo("localhost", "80", &inet_stream, &res, gr_now() + 5 * GR_SEC);
	CHECK(rc == 0, "localhost once fds are back: %s", gai_strerror(rc));
	freeaddrinfo(res);
	pool_settle_child();
	dns_stop(&d);
}

Test(resolve, a_lookup_and_a_dial_with_no_fd_left_fail_clearly_and_work_after)
{
	in_namespaces(lookups_with_no_fd_left, NULL);
}
