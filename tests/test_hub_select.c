/* test_hub_select.c — which hub a thread runs, and why. Hub-independent: it
 * runs once and chooses hubs itself.
 *
 * Anything that depends on the environment or on a seccomp policy runs in a
 * forked child, so neither leaks into other tests: the child sets the
 * environment (and installs the filter) before greenring's first use, does
 * its checks with plain code (no Criterion in a child), writes "ok" or what
 * went wrong to a pipe, and _exits. Its stderr is captured too, for the
 * messages greenring prints. The parent checks all three.
 *
 * The seccomp filters are hand-written BPF (no libseccomp): io_uring_setup
 * fails with EPERM or ENOSYS, as under Docker's default profile or an old
 * kernel; the child must then choose epoll, say why, and serve an echo over
 * loopback TCP between two fibers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"
#include "tinypoll.h"

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#endif

static const char *const builtin[] = { "io_uring", "epoll", "poll" };

/* Every test starts from the default order, whatever the caller's shell set. */
static void clean_env(void)
{
	unsetenv("GREENRING_HUB");
	unsetenv("GREENRING_DEBUG");
}

TestSuite(hub_select, .init = clean_env, .timeout = 60);

/* The first built-in hub gr_hub_use() accepts: what the default order picks. */
static const char *first_usable(void)
{
	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++) {
		if (gr_hub_use(builtin[i]) == 0)
			return builtin[i];
	}
	return NULL;
}

/* ------------------------------------------------------------ workloads
 * Plain functions returning NULL on success or what failed; usable both in
 * a test (checked with cr_assert) and in a child (reported through a pipe). */

static void *sleeper(void *arg)
{
	int64_t ns = *(int64_t *)arg, t0 = gr_now();

	if (gr_sleep(ns) != 0)
		return "gr_sleep failed";
	return gr_now() - t0 >= ns ? NULL : "gr_sleep returned early";
}

#define ECHO_BYTES (256 * 1024) /* more than a socket buffer: writers must park */

struct echo {
	int listener;
	int port;
	const char *err;
};

static void *echo_server(void *arg)
{
	struct echo *e = arg;
	static char buf[16384];
	int c = gr_accept(e->listener, NULL, NULL);

	if (c < 0)
		return "accept failed";
	for (;;) {
		ssize_t n = gr_read(c, buf, sizeof(buf));

		if (n == 0)
			break;
		if (n < 0) {
			gr_close(c);
			return "server read failed";
		}
		for (ssize_t off = 0; off < n;) {
			ssize_t w = gr_write(c, buf + off, (size_t)(n - off));

			if (w <= 0) {
				gr_close(c);
				return "server write failed";
			}
			off += w;
		}
	}
	gr_close(c);
	return NULL;
}

static void *echo_writer(void *arg)
{
	int fd = *(int *)arg;
	static char out[ECHO_BYTES];

	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (char)(i * 7 + i / 251);
	for (size_t off = 0; off < sizeof(out);) {
		ssize_t w = gr_write(fd, out + off, sizeof(out) - off);

		if (w <= 0)
			return "client write failed";
		off += (size_t)w;
	}
	return shutdown(fd, SHUT_WR) == 0 ? NULL : "shutdown failed";
}

/* Echo ECHO_BYTES over loopback TCP: a server fiber, a writer fiber, and the
 * caller reading back and comparing. */
static const char *tcp_echo(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	struct echo e = { .listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
	static char in[ECHO_BYTES];

	if (e.listener < 0 || bind(e.listener, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(e.listener, 16) < 0 || getsockname(e.listener, (struct sockaddr *)&sa, &len) < 0)
		return "listener setup failed";
	gr_fiber *server = gr_spawn(echo_server, &e);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (!server || c < 0)
		return "spawn or socket failed";
	if (gr_connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return "connect failed";
	gr_fiber *writer = gr_spawn(echo_writer, &c);
	if (!writer)
		return "spawn failed";
	size_t got = 0;
	for (;;) {
		ssize_t n = gr_read(c, in + got, sizeof(in) - got);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	void *r1 = "join", *r2 = "join";
	if (gr_join(writer, &r1, gr_now() + 10 * GR_SEC) != 0 ||
	    gr_join(server, &r2, gr_now() + 10 * GR_SEC) != 0)
		return "join failed";
	if (r1 || r2)
		return r1 ? r1 : r2;
	if (got != sizeof(in))
		return "short echo";
	for (size_t i = 0; i < sizeof(in); i++) {
		if (in[i] != (char)(i * 7 + i / 251))
			return "echo corrupted";
	}
	if (gr_close(c) != 0 || gr_close(e.listener) != 0)
		return "close failed";
	return NULL;
}

/* Fibers sleeping side by side, then the echo. */
static const char *workload(void)
{
	int64_t d[3] = { 2 * GR_MSEC, 5 * GR_MSEC, 1 * GR_MSEC };
	gr_fiber *f[3];

	for (int i = 0; i < 3; i++) {
		f[i] = gr_spawn(sleeper, &d[i]);
		if (!f[i])
			return "spawn failed";
	}
	for (int i = 0; i < 3; i++) {
		void *r = "join";

		if (gr_join(f[i], &r, gr_now() + 5 * GR_SEC) != 0)
			return "join failed";
		if (r)
			return r;
	}
	return tcp_echo();
}

/* ------------------------------------------------------------ children */

struct child_result {
	int status;          /* exit code (0 = "ok"), or 128 + signal */
	char report[512];    /* what the child wrote: "ok" or its complaint */
	char err[4096];      /* its stderr */
};

static void read_all(int fd, char *buf, size_t len)
{
	size_t used = 0;
	ssize_t n;

	while (used + 1 < len && ((n = read(fd, buf + used, len - 1 - used)) > 0 ||
				  (n < 0 && errno == EINTR)))
		used += n > 0 ? (size_t)n : 0;
	buf[used] = '\0';
	close(fd);
}

/* Fork; the child sets `env` ("NAME=value" pairs, NULL-terminated), then
 * runs fn, which ends with grt_child_exit(). */
static void run_child(void (*fn)(void *), void *arg, const char *const env[], struct child_result *res)
{
	int rep[2], err[2];

	cr_assert_eq(pipe2(rep, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(rep[0]);
		close(err[0]);
		grt_report_fd = rep[1];
		if (dup2(err[1], STDERR_FILENO) < 0)
			grt_child_exit("dup2: %s", strerror(errno));
		for (size_t i = 0; env && env[i]; i++) {
			if (putenv((char *)env[i]) != 0)
				grt_child_exit("putenv: %s", strerror(errno));
		}
		fn(arg);
		grt_child_exit("the child function returned");
	}
	close(rep[1]);
	close(err[1]);
	/* Both pipes are small and the child writes little: read one to EOF,
	 * then the other, then reap. */
	read_all(rep[0], res->report, sizeof(res->report));
	read_all(err[0], res->err, sizeof(res->err));
	int ws;
	pid_t r;
	while ((r = waitpid(pid, &ws, 0)) < 0 && errno == EINTR)
		;
	cr_assert_eq(r, pid, "waitpid: %s", strerror(errno));
	res->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void expect_ok(const struct child_result *res)
{
	cr_assert_eq(res->status, 0, "child failed (status %d): %s\nits stderr: %s", res->status,
		     res->report, res->err);
	cr_assert_str_eq(res->report, "ok");
}

/* ------------------------------------------------------------ seccomp */

struct policy {
	int nrs[8];          /* system calls that fail; 0-terminated */
	int err;             /* with this errno */
};

/* Make each of p->nrs fail with p->err for this thread and its children.
 * Other architectures' calls (a 32-bit syscall ABI) are let through: the
 * numbers differ there, and greenring does not use them. */
static const char *install_policy(const struct policy *p)
{
#ifdef NATIVE_ARCH
	struct sock_filter f[4 + 2 * 8 + 1];
	unsigned n = 0;

	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, arch));
	f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
					      offsetof(struct seccomp_data, nr));
	for (int i = 0; i < 8 && p->nrs[i]; i++) {
		f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)p->nrs[i], 0, 1);
		f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
						      SECCOMP_RET_ERRNO | ((unsigned)p->err & SECCOMP_RET_DATA));
	}
	f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = { .len = (unsigned short)n, .filter = f };

	/* NO_NEW_PRIVS lets an unprivileged process install a filter. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return "prctl(PR_SET_NO_NEW_PRIVS) failed";
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		return "prctl(PR_SET_SECCOMP) failed";
	return NULL;
#else
	(void)p;
	return "no seccomp architecture constant for this machine";
#endif
}

static void skip_without_seccomp(void)
{
#ifndef NATIVE_ARCH
	cr_skip_test("the seccomp tests know x86_64 and aarch64 only");
#endif
}

/* What a child under a policy must see. */
struct expect {
	struct policy policy;
	const char *hub;          /* the hub chosen; NULL: none can run */
	const char *why[3];       /* substrings of gr_hub_why() */
};

static void child_under_policy(void *arg)
{
	const struct expect *x = arg;
	const char *e = install_policy(&x->policy);

	if (e)
		grt_child_exit("%s: %s", e, strerror(errno));
	const char *name = gr_hub_name();
	if (!x->hub) {
		if (name)
			grt_child_exit("expected no hub, got %s", name);
	} else if (!name || strcmp(name, x->hub) != 0) {
		grt_child_exit("expected hub %s, got %s (%s); why: %s", x->hub, name ? name : "none",
			   name ? "" : strerror(errno), gr_hub_why());
	}
	for (int i = 0; i < 3 && x->why[i]; i++) {
		if (!strstr(gr_hub_why(), x->why[i]))
			grt_child_exit("gr_hub_why() lacks \"%s\": \"%s\"", x->why[i], gr_hub_why());
	}
	if (x->hub && (e = workload()) != NULL)
		grt_child_exit("on %s: %s", x->hub, e);
	grt_child_exit("ok");
}

static void run_policy(const struct expect *x, struct child_result *res)
{
	static const char *const env[] = { "GREENRING_DEBUG=1", NULL };

	skip_without_seccomp();
	run_child(child_under_policy, (void *)x, env, res);
	expect_ok(res);
}

Test(hub_select, io_uring_setup_eperm_falls_back_to_epoll)
{
	struct expect x = {
		.policy = { .nrs = { __NR_io_uring_setup }, .err = EPERM },
		.hub = "epoll",
		.why = { "io_uring: io_uring_setup: Operation not permitted" },
	};
	struct child_result res;

	run_policy(&x, &res);
	/* GREENRING_DEBUG=1 says which hub and why the better one was refused. */
	cr_assert(strstr(res.err, "greenring: hub epoll; refused: io_uring: io_uring_setup: "
				  "Operation not permitted"),
		  "stderr: %s", res.err);
}

Test(hub_select, io_uring_setup_enosys_falls_back_to_epoll)
{
	struct expect x = {
		.policy = { .nrs = { __NR_io_uring_setup }, .err = ENOSYS },
		.hub = "epoll",
		.why = { "io_uring: io_uring_setup: Function not implemented" },
	};
	struct child_result res;

	run_policy(&x, &res);
}

Test(hub_select, io_uring_enter_refused_falls_back_to_epoll)
{
	/* A policy may allow creating a ring and refuse using it: the probe's
	 * NOP round trip catches that. */
	struct expect x = {
		.policy = { .nrs = { __NR_io_uring_enter }, .err = EPERM },
		.hub = "epoll",
		.why = { "io_uring: io_uring_enter: Operation not permitted" },
	};
	struct child_result res;

	run_policy(&x, &res);
}

Test(hub_select, without_io_uring_and_epoll_poll_runs)
{
	struct expect x = {
		.policy = { .nrs = { __NR_io_uring_setup, __NR_epoll_create1,
#ifdef __NR_epoll_create
				     __NR_epoll_create,
#endif
				   },
			    .err = EPERM },
		.hub = "poll",
		.why = { "io_uring: io_uring_setup: Operation not permitted",
			 "epoll: epoll_create1: Operation not permitted" },
	};
	struct child_result res;

	run_policy(&x, &res);
	cr_assert(strstr(res.err, "greenring: hub poll; refused: io_uring: "), "stderr: %s", res.err);
}

Test(hub_select, when_no_hub_can_run_first_use_fails_and_says_why)
{
	struct expect x = {
		.policy = { .nrs = { __NR_io_uring_setup, __NR_epoll_create1,
#ifdef __NR_epoll_create
				     __NR_epoll_create,
#endif
				     __NR_ppoll },
			    .err = ENOSYS },
		.hub = NULL,
		.why = { "io_uring: io_uring_setup: Function not implemented",
			 "epoll: epoll_create1: Function not implemented",
			 "poll: ppoll: Function not implemented" },
	};
	struct child_result res;

	run_policy(&x, &res);
	cr_assert(strstr(res.err, "greenring: no hub can run: io_uring: "), "stderr: %s", res.err);
}

/* ------------------------------------------------------------ environment */

static void child_env_hub(void *arg)
{
	const char *want = arg;
	const char *name = gr_hub_name();

	if (!name || strcmp(name, want) != 0)
		grt_child_exit("GREENRING_HUB=%s gave %s", want, name ? name : strerror(errno));
	const char *e = workload();
	if (e)
		grt_child_exit("on %s: %s", want, e);
	/* gr_hub_use(NULL) overrides the environment: the default order. */
	const char *best = first_usable();
	if (gr_hub_use(NULL) != 0)
		grt_child_exit("gr_hub_use(NULL) failed");
	name = gr_hub_name();
	if (!name || !best || strcmp(name, best) != 0)
		grt_child_exit("gr_hub_use(NULL) under GREENRING_HUB=%s gave %s, not %s", want,
			   name ? name : "none", best ? best : "none");
	grt_child_exit("ok");
}

Test(hub_select, the_environment_names_the_hub)
{
	static const char *const env_epoll[] = { "GREENRING_HUB=epoll", NULL };
	static const char *const env_poll[] = { "GREENRING_HUB=poll", NULL };
	struct child_result res;

	run_child(child_env_hub, "epoll", env_epoll, &res);
	expect_ok(&res);
	run_child(child_env_hub, "poll", env_poll, &res);
	expect_ok(&res);
}

static void child_unknown_env(void *arg)
{
	(void)arg;
	if (gr_hub_name() != NULL)
		grt_child_exit("GREENRING_HUB=nope gave a hub: %s", gr_hub_name());
	if (errno != ENOENT)
		grt_child_exit("errno %s, not ENOENT", strerror(errno));
	if (!strstr(gr_hub_why(), "GREENRING_HUB=nope: no such hub (have: io_uring, epoll, poll)"))
		grt_child_exit("gr_hub_why(): %s", gr_hub_why());
	/* Everything that needs the hub fails the same way, nothing falls back. */
	if (gr_sleep(GR_MSEC) != -ENOENT)
		grt_child_exit("gr_sleep did not fail with ENOENT");
	if (gr_spawn(sleeper, NULL) != NULL || errno != ENOENT)
		grt_child_exit("gr_spawn did not fail with ENOENT");
	/* An explicit choice on the thread still works. */
	if (gr_hub_use("poll") != 0 || !gr_hub_name() || strcmp(gr_hub_name(), "poll") != 0)
		grt_child_exit("gr_hub_use(poll) after a bad GREENRING_HUB failed");
	grt_child_exit("ok");
}

Test(hub_select, an_unknown_name_in_the_environment_is_an_error_at_first_use)
{
	static const char *const env[] = { "GREENRING_HUB=nope", NULL };
	struct child_result res;

	run_child(child_unknown_env, NULL, env, &res);
	expect_ok(&res);
	cr_assert(strstr(res.err, "greenring: no hub can run: GREENRING_HUB=nope: no such hub"),
		  "stderr: %s", res.err);
}

static void child_unusable_env(void *arg)
{
	struct policy p = { .nrs = { __NR_io_uring_setup }, .err = EPERM };
	const char *e = install_policy(&p);

	(void)arg;
	if (e)
		grt_child_exit("%s: %s", e, strerror(errno));
	if (gr_hub_name() != NULL)
		grt_child_exit("GREENRING_HUB=io_uring under seccomp fell back to %s", gr_hub_name());
	if (errno != EPERM)
		grt_child_exit("errno %s, not EPERM", strerror(errno));
	if (!strstr(gr_hub_why(), "io_uring: io_uring_setup: Operation not permitted"))
		grt_child_exit("gr_hub_why(): %s", gr_hub_why());
	/* gr_hub_use says the same: it cannot run here. */
	if (gr_hub_use("io_uring") != -ENOTSUP)
		grt_child_exit("gr_hub_use(io_uring) under seccomp did not fail with ENOTSUP");
	if (!strstr(gr_hub_why(), "io_uring_setup: Operation not permitted"))
		grt_child_exit("gr_hub_why() after gr_hub_use: %s", gr_hub_why());
	grt_child_exit("ok");
}

Test(hub_select, an_unusable_name_in_the_environment_is_an_error_not_a_fallback)
{
	static const char *const env[] = { "GREENRING_HUB=io_uring", NULL };
	struct child_result res;

	skip_without_seccomp();
	run_child(child_unusable_env, NULL, env, &res);
	expect_ok(&res);
	cr_assert(strstr(res.err, "greenring: the hub chosen by GREENRING_HUB cannot run: "
				  "io_uring: io_uring_setup: Operation not permitted"),
		  "stderr: %s", res.err);
}

/* ------------------------------------------------------------ gr_hub_use */

Test(hub_select, the_default_order_takes_the_best_hub_that_runs)
{
	const char *best = first_usable();

	cr_assert_not_null(best, "no built-in hub runs here: %s", gr_hub_why());
	cr_assert_eq(gr_hub_use(NULL), 0);
	cr_assert_str_eq(gr_hub_name(), best);
	if (strcmp(best, "io_uring") == 0)
		cr_assert_str_eq(gr_hub_why(), "", "nothing was refused, yet: %s", gr_hub_why());
	else
		cr_assert(strstr(gr_hub_why(), "io_uring: "), "why: %s", gr_hub_why());
}

Test(hub_select, every_builtin_hub_can_be_chosen_in_turn_on_one_thread)
{
	int fds = grt_count_fds(); /* no hub yet */

	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++) {
		int r = gr_hub_use(builtin[i]);

		if (r == -ENOTSUP)
			continue; /* cannot run here; the per-hub suites say so */
		cr_assert_eq(r, 0, "gr_hub_use(%s): %s", builtin[i], strerror(-r));
		cr_assert_str_eq(gr_hub_name(), builtin[i]);
		const char *e = workload();
		cr_assert_null(e, "on %s: %s", builtin[i], e);
	}
	/* Switching ends the last hub: its ring, epoll set, eventfd are closed. */
	cr_assert_eq(gr_hub_use(NULL), 0);
	cr_assert_eq(grt_count_fds(), fds, "a hub left fds open");
}

static void *try_use(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)gr_hub_use("poll");
}

Test(hub_select, gr_hub_use_refuses_unknown_names_and_busy_threads)
{
	cr_assert_eq(gr_hub_use("nope"), -ENOENT);
	cr_assert(strstr(gr_hub_why(), "nope: no such hub"), "why: %s", gr_hub_why());
	cr_assert_eq(gr_hub_use("io_uring "), -ENOENT, "names match exactly");

	/* A fiber that exists, even one not started, pins the hub. */
	gr_fiber *f = gr_spawn(try_use, NULL);
	cr_assert_not_null(f);
	const char *before = gr_hub_name();
	cr_assert_eq(gr_hub_use("poll"), -EBUSY);
	cr_assert_str_eq(gr_hub_name(), before, "a refused gr_hub_use changed the hub");
	/* So does calling it from a fiber. */
	void *r;
	cr_assert_eq(gr_join(f, &r, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)r, -EBUSY, "gr_hub_use inside a fiber: %s", strerror(-(int)(intptr_t)r));
	/* Once every fiber is gone, the thread may switch. */
	cr_assert_eq(gr_hub_use("poll"), 0);
	cr_assert_str_eq(gr_hub_name(), "poll");
}

struct thread_choice {
	const char *use;     /* NULL: the default order */
	const char *got;
	const char *err;
};

static void *thread_main(void *arg)
{
	struct thread_choice *t = arg;

	if (t->use && gr_hub_use(t->use) != 0) {
		t->err = "gr_hub_use failed";
		return NULL;
	}
	t->got = gr_hub_name();
	t->err = workload();
	return NULL;
}

Test(hub_select, the_choice_is_per_thread)
{
	struct thread_choice a = { .use = "poll" }, b = { .use = NULL };
	pthread_t ta, tb;
	const char *best = first_usable();

	cr_assert_eq(gr_hub_use(NULL), 0);
	cr_assert_eq(pthread_create(&ta, NULL, thread_main, &a), 0);
	cr_assert_eq(pthread_join(ta, NULL), 0);
	cr_assert_eq(pthread_create(&tb, NULL, thread_main, &b), 0);
	cr_assert_eq(pthread_join(tb, NULL), 0);
	cr_assert_null(a.err, "thread a: %s", a.err);
	cr_assert_null(b.err, "thread b: %s", b.err);
	cr_assert_str_eq(a.got, "poll");
	cr_assert_str_eq(b.got, best, "another thread's gr_hub_use leaked into this one");
	cr_assert_str_eq(gr_hub_name(), best);
}

/* ------------------------------------------------------------ third party
 * "tinypoll" (tinypoll.c): a complete readiness hub in a page, written only
 * against the public greenring/hub_ops.h, as a third party would. */

static void *blocked_reader(void *arg)
{
	int fd = *(int *)arg;
	char c;

	return (void *)(intptr_t)(gr_read(fd, &c, 1) < 0 ? errno : 0);
}

static void *socketpair_echo(void *arg)
{
	int fd = *(int *)arg;
	char buf[64];
	ssize_t n;

	while ((n = gr_read(fd, buf, sizeof(buf))) > 0) {
		if (gr_write(fd, buf, (size_t)n) != n)
			return "echo write failed";
	}
	return n == 0 ? NULL : "echo read failed";
}

Test(hub_select, a_third_party_hub_runs_fibers_sleeps_and_io)
{
	int fds = grt_count_fds(); /* no hub yet */

	cr_assert_eq(gr_hub_use_ops(&grt_tinypoll_ops), 0);
	cr_assert_str_eq(gr_hub_name(), "tinypoll");
	cr_assert_eq(atomic_load(&grt_tp_stats.inits), 1);

	/* Sleeps, and the echo over TCP. */
	const char *e = workload();
	cr_assert_null(e, "on tinypoll: %s", e);

	/* An echo over a socketpair, a fiber at each end. */
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	gr_fiber *echo = gr_spawn(socketpair_echo, &sv[1]);
	for (int i = 0; i < 100; i++) {
		char msg[32], back[32];
		int len = snprintf(msg, sizeof(msg), "message %d", i);

		cr_assert_eq(gr_write(sv[0], msg, (size_t)len), len);
		cr_assert_eq(gr_read(sv[0], back, sizeof(back)), len);
		cr_assert_eq(memcmp(msg, back, (size_t)len), 0);
	}
	shutdown(sv[0], SHUT_WR);
	void *r;
	cr_assert_eq(gr_join(echo, &r, gr_now() + 5 * GR_SEC), 0);
	cr_assert_null(r, "%s", (const char *)r);

	/* Kill and deadlines go through its cancel() and its deadlines. */
	gr_fiber *blocked = gr_spawn(blocked_reader, &sv[0]);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(gr_kill(blocked), 0);
	cr_assert_eq(gr_join(blocked, &r, gr_now() + 5 * GR_SEC), 0);
	cr_assert_eq((intptr_t)r, ECANCELED);
	cr_assert_gt(atomic_load(&grt_tp_stats.cancels), 0);
	int64_t t0 = gr_now();
	cr_assert_eq(gr_wait_fd(sv[0], POLLIN, t0 + 20 * GR_MSEC), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 20 * GR_MSEC, "woke before the deadline");

	cr_assert_eq(gr_close(sv[0]), 0);
	cr_assert_eq(gr_close(sv[1]), 0);
	cr_assert_gt(atomic_load(&grt_tp_stats.submits), 0);
	cr_assert_gt(atomic_load(&grt_tp_stats.waits), 0);
	/* Switching back to a built-in hub ends it. */
	cr_assert_eq(gr_hub_use(NULL), 0);
	cr_assert_eq(atomic_load(&grt_tp_stats.finis), 1);
	cr_assert_eq(grt_count_fds(), fds, "fds left open");
	cr_assert_str_eq(gr_hub_name(), first_usable());
}

/* A third-party hub that announces GR_HUB_CAP_WAIT_UNTIL: every bounded
 * wait comes through wait_until, with the bound's end, absolute, matching
 * the timeout (the core's clock may be a tick behind the call, never
 * ahead); wait() gets only the unbounded and the non-blocking ones. */
static atomic_int until_calls, until_wrong, plain_bounded;
static int64_t until_skew_worst;

static int until_wait(void *state, int64_t timeout_ns, int64_t deadline)
{
	int64_t skew = gr_now() - (deadline - timeout_ns);

	atomic_fetch_add(&until_calls, 1);
	if (timeout_ns <= 0 || deadline == GR_FOREVER || skew < 0 || skew > 50 * GR_MSEC)
		atomic_fetch_add(&until_wrong, 1);
	if (skew > until_skew_worst)
		until_skew_worst = skew;
	return grt_tinypoll_ops.wait(state, timeout_ns);
}

static int plain_wait(void *state, int64_t timeout_ns)
{
	if (timeout_ns > 0)
		atomic_fetch_add(&plain_bounded, 1);
	return grt_tinypoll_ops.wait(state, timeout_ns);
}

Test(hub_select, a_third_party_hub_with_wait_until_gets_every_bounded_wait_and_its_end)
{
	static struct gr_hub_ops ops;
	int p[2];
	char ch;

	ops = grt_tinypoll_ops;
	ops.caps |= GR_HUB_CAP_WAIT_UNTIL;
	ops.wait = plain_wait;
	ops.wait_until = until_wait;
	cr_assert_eq(gr_hub_use_ops(&ops), 0);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	/* A read parked for 350 ms: the core bounds its waits by the audit
	 * of long waits (100 ms epochs). */
	int64_t t0 = gr_now();
	gr_deadline_set(t0 + 350 * GR_MSEC);
	cr_assert_eq(gr_read(p[0], &ch, 1), -1);
	cr_assert_eq(errno, ETIMEDOUT);
	gr_deadline_set(GR_FOREVER);
	cr_assert_geq(atomic_load(&until_calls), 1, "no bounded wait in 350 ms with an fd busy");
	cr_assert_eq(atomic_load(&until_wrong), 0,
		     "%d of %d calls to wait_until had a wrong bound (worst skew %lld us)",
		     atomic_load(&until_wrong), atomic_load(&until_calls),
		     (long long)(until_skew_worst / 1000));
	cr_assert_eq(atomic_load(&plain_bounded), 0, "wait() got %d bounded waits",
		     atomic_load(&plain_bounded));
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(gr_close(p[1]), 0);
	cr_assert_eq(gr_hub_use(NULL), 0);
}

static int refusing_probe(char *why, size_t whylen)
{
	snprintf(why, whylen, "frobnicator: No such device");
	return -ENODEV;
}

Test(hub_select, gr_hub_use_ops_checks_the_table_and_its_probe)
{
	struct gr_hub_ops incomplete = grt_tinypoll_ops, refusing = grt_tinypoll_ops;
	const char *best = first_usable();

	cr_assert_eq(gr_hub_use(NULL), 0);
	cr_assert_eq(gr_hub_use_ops(NULL), -EINVAL);
	incomplete.wait = NULL;
	cr_assert_eq(gr_hub_use_ops(&incomplete), -EINVAL);
	incomplete = grt_tinypoll_ops;
	incomplete.name = NULL;
	cr_assert_eq(gr_hub_use_ops(&incomplete), -EINVAL);
	/* A capability announced without the member that serves it. */
	incomplete = grt_tinypoll_ops;
	incomplete.caps |= GR_HUB_CAP_WAIT_UNTIL;
	cr_assert_eq(gr_hub_use_ops(&incomplete), -EINVAL);

	refusing.name = "refusing";
	refusing.probe = refusing_probe;
	cr_assert_eq(gr_hub_use_ops(&refusing), -ENOTSUP);
	cr_assert(strstr(gr_hub_why(), "refusing: frobnicator: No such device"), "why: %s",
		  gr_hub_why());
	/* The thread keeps its previous choice. */
	cr_assert_str_eq(gr_hub_name(), best);
}
