/* test_process.c — child processes: run and capture (100 at once), a child
 * killed at its deadline, stdin fed through a pipe, a spawn that fails, waits
 * for any child (children of our own and of gr_process_spawn, from another
 * thread too), kills, no fd leaked into a child, a clean signal mask and
 * dispositions in the child. Runs once per hub; the teardown (support.c)
 * fails any test that leaves a zombie. ctest also runs it on io_uring with
 * GREENRING_URING_NO_WAITID=1, the path of kernels without IORING_OP_WAITID. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(process);

#define ARGV(...) ((char *const[]){ __VA_ARGS__, NULL })

static void run_ok(char *const argv[], const struct gr_process_opts *opts, const void *input,
		   size_t len, struct gr_process_output *out)
{
	int r = gr_process_run(argv, opts, input, len, out, gr_now() + 20 * GR_SEC);

	cr_assert_eq(r, 0, "gr_process_run(%s): %s", argv[0], strerror(-r));
}

static int exit_code(int status)
{
	cr_assert(WIFEXITED(status), "status %#x: not a normal exit", status);
	return WEXITSTATUS(status);
}

/* ------------------------------------------------------------ run */

Test(process, run_captures_stdout_stderr_and_the_exit_status)
{
	struct gr_process_output out;

	run_ok(ARGV("sh", "-c", "echo out; echo err >&2; exit 3"), NULL, NULL, 0, &out);
	cr_assert_eq(exit_code(out.status), 3);
	cr_assert_str_eq(out.out, "out\n");
	cr_assert_eq(out.out_len, 4);
	cr_assert_str_eq(out.err, "err\n");
	gr_process_output_free(&out);
	cr_assert_null(out.out);
}

struct job {
	int i;
	int result;
	struct gr_process_output out;
};

static void *run_job(void *arg)
{
	struct job *j = arg;
	char n[16];

	snprintf(n, sizeof(n), "%d", j->i);
	j->result = gr_process_run(ARGV("printf", "child %s says %s", n, "hello"), NULL, NULL, 0,
				   &j->out, gr_now() + 30 * GR_SEC);
	return NULL;
}

Test(process, a_hundred_children_run_at_once_with_their_output_captured, .timeout = 120)
{
	static struct job jobs[100];
	gr_fiber *f[100];

	for (int i = 0; i < 100; i++) {
		jobs[i] = (struct job){ .i = i };
		f[i] = gr_spawn(run_job, &jobs[i]);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < 100; i++) {
		char want[64];

		assert_ok(gr_join(f[i], NULL, gr_now() + 60 * GR_SEC));
		cr_assert_eq(jobs[i].result, 0, "child %d: %s", i, strerror(-jobs[i].result));
		snprintf(want, sizeof(want), "child %d says hello", i);
		cr_assert_str_eq(jobs[i].out.out, want);
		cr_assert_eq(exit_code(jobs[i].out.status), 0);
		gr_process_output_free(&jobs[i].out);
	}
}

Test(process, a_child_is_killed_at_its_deadline)
{
	struct gr_process_output out;
	int64_t t0 = gr_now();

	int r = gr_process_run(ARGV("sh", "-c", "echo started; exec sleep 10"), NULL, NULL, 0, &out,
			       t0 + 200 * GR_MSEC);
	int64_t took = gr_now() - t0;
	cr_assert_eq(r, -ETIMEDOUT, "%s", strerror(-r));
	cr_assert_geq(took, 200 * GR_MSEC);
	cr_assert_lt(took, 2 * GR_SEC, "took %lld ms", (long long)(took / GR_MSEC));
	cr_assert(WIFSIGNALED(out.status) && WTERMSIG(out.status) == SIGKILL, "status %#x",
		  out.status);
	cr_assert_str_eq(out.out, "started\n", "what came before the deadline is kept");
	gr_process_output_free(&out);
}

static void *run_forever(void *arg)
{
	struct job *j = arg;

	j->result = gr_process_run(ARGV("sleep", "100"), NULL, NULL, 0, &j->out, GR_FOREVER);
	return NULL;
}

Test(process, a_kill_of_the_caller_kills_and_reaps_the_child)
{
	struct job j = { 0 };
	gr_fiber *f = gr_spawn(run_forever, &j);

	assert_ok(gr_sleep(50 * GR_MSEC));
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(j.result, -ECANCELED);
	cr_assert(WIFSIGNALED(j.out.status) && WTERMSIG(j.out.status) == SIGKILL);
	gr_process_output_free(&j.out);
}

Test(process, stdin_is_fed_through_a_pipe_while_the_output_is_read)
{
	size_t n = 1 << 20; /* far more than a pipe holds */
	char *in = malloc(n);
	struct gr_process_output out;

	for (size_t i = 0; i < n; i++)
		in[i] = (char)('a' + i % 26);
	run_ok(ARGV("cat"), NULL, in, n, &out);
	cr_assert_eq(exit_code(out.status), 0);
	cr_assert_eq(out.out_len, n);
	cr_assert(memcmp(out.out, in, n) == 0);
	gr_process_output_free(&out);
	free(in);
}

Test(process, a_child_that_reads_nothing_of_its_input_is_no_error)
{
	size_t n = 1 << 20;
	char *in = calloc(1, n);
	struct gr_process_output out;

	/* No SIGPIPE may end the test process here (it does not ignore it). */
	run_ok(ARGV("true"), NULL, in, n, &out);
	cr_assert_eq(exit_code(out.status), 0);
	gr_process_output_free(&out);
	free(in);
}

Test(process, stderr_can_follow_stdout_and_opts_are_honoured)
{
	struct gr_process_output out;
	char *envp[] = { "GREETING=bonjour", "PATH=/usr/bin:/bin", NULL };
	struct gr_process_opts o = { .envp = envp, .cwd = "/" };

	o.stdio[2].mode = GR_STDIO_STDOUT;
	run_ok(ARGV("sh", "-c", "echo $GREETING; pwd; echo oops >&2"), &o, NULL, 0, &out);
	cr_assert_str_eq(out.out, "bonjour\n/\noops\n");
	cr_assert_null(out.err, "stderr went to stdout: nothing captured apart");
	gr_process_output_free(&out);

	o.stdio[1].mode = GR_STDIO_NULL;
	o.stdio[2].mode = GR_STDIO_PIPE;
	run_ok(ARGV("sh", "-c", "echo gone; echo kept >&2"), &o, NULL, 0, &out);
	cr_assert_null(out.out);
	cr_assert_str_eq(out.err, "kept\n");
	gr_process_output_free(&out);
}

/* ------------------------------------------------------------ failures */

Test(process, a_spawn_that_fails_is_an_error_and_leaves_no_zombie)
{
	struct gr_process_output out;

	errno = 0;
	cr_assert_null(gr_process_spawn(ARGV("/nonexistent/program"), NULL));
	cr_assert_eq(errno, ENOENT, "%s", strerror(errno));
	cr_assert_null(gr_process_spawn(ARGV("no-such-program-anywhere-in-path"), NULL));
	cr_assert_eq(errno, ENOENT);
	struct gr_process_opts o = { .cwd = "/nonexistent/directory" };
	cr_assert_null(gr_process_spawn(ARGV("true"), &o));
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(gr_process_run(ARGV("/nonexistent/program"), NULL, "x", 1, &out, GR_FOREVER),
		     -ENOENT);
	cr_assert_eq(out.status, -1);
	cr_assert_null(out.out);
	cr_assert_eq(grt_count_zombies(), 0);

	cr_assert_null(gr_process_spawn(NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	o = (struct gr_process_opts){ 0 };
	o.stdio[0].mode = GR_STDIO_STDOUT;
	cr_assert_null(gr_process_spawn(ARGV("true"), &o));
	cr_assert_eq(errno, EINVAL);
	o.stdio[0] = (struct gr_process_stdio){ .mode = GR_STDIO_FD, .fd = 12345 };
	cr_assert_null(gr_process_spawn(ARGV("true"), &o));
	cr_assert_eq(errno, EINVAL);
}

Test(process, running_out_of_fds_fails_cleanly_at_every_step)
{
	int fill[64];
	struct rlimit old;
	struct gr_process_opts o = { 0 };

	for (int n = 0; n < 3; n++)
		o.stdio[n].mode = GR_STDIO_PIPE;
	int before = grt_count_fds();
	int n = grt_exhaust_fds(fill, 64, 16, &old);
	/* Give back one fd at a time: the spawn fails at the first pipe, at the
	 * second, ..., at the number held for the pidfd (before any child
	 * exists), until it has all it needs. */
	int ok = 0;
	for (int k = 0; k <= 8 && k <= n; k++) {
		if (k > 0)
			close(fill[n - k]);
		gr_process *p = gr_process_spawn(ARGV("true"), &o);
		if (!p) {
			/* A child left behind would still be a zombie at the end. */
			cr_assert_eq(errno, EMFILE, "with %d fds free: %s", k, strerror(errno));
			continue;
		}
		ok++;
		assert_ok(gr_process_wait(p, NULL, gr_now() + 5 * GR_SEC));
		assert_ok(gr_process_free(p));
	}
	cr_assert_gt(ok, 0, "it never had enough fds");
	for (int i = 0; i < n - 8 && i < n; i++)
		close(fill[i]);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	cr_assert_eq(grt_count_fds(), before);
	cr_assert_eq(grt_count_zombies(), 0);
}

/* An executable of our own, watched for the open that exec makes of it:
 * whether a child ever started, told without racing the child. */
static void copy_executable(const char *from, const char *to)
{
	char buf[65536];
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ssize_t n;

	cr_assert(in >= 0 && out >= 0, "%s", strerror(errno));
	while ((n = read(in, buf, sizeof(buf))) > 0)
		cr_assert_eq(write(out, buf, (size_t)n), n);
	cr_assert_eq(n, 0);
	close(in);
	close(out);
}

static bool exec_seen(int watch)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n = read(watch, buf, sizeof(buf));

	if (n < 0) {
		cr_assert_eq(errno, EAGAIN, "%s", strerror(errno));
		return false;
	}
	for (char *at = buf; at < buf + n;) {
		const struct inotify_event *ev = (const struct inotify_event *)(void *)at;

		if (ev->mask & IN_OPEN)
			return true;
		at += sizeof(*ev) + ev->len;
	}
	return false;
}

Test(process, with_no_fd_left_for_its_pidfd_no_child_is_started)
{
	char dir[] = "/tmp/grt-spawn-XXXXXX", prog[64];
	int fill[64];
	struct rlimit old;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(prog, sizeof(prog), "%s/true", dir);
	copy_executable("/bin/true", prog);
	int watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	cr_assert_geq(watch, 0, "%s", strerror(errno));
	cr_assert_geq(inotify_add_watch(watch, prog, IN_OPEN), 0, "%s", strerror(errno));

	/* The watch sees a spawn that starts the program. */
	gr_process *p = gr_process_spawn(ARGV(prog), NULL);
	cr_assert_not_null(p, "%s", strerror(errno));
	assert_ok(gr_process_wait(p, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_process_free(p));
	cr_assert(exec_seen(watch), "the watch did not see the program start");

	/* With no fd free, the spawn fails before the child exists: it would
	 * otherwise run, and then be killed by its bare pid. */
	int before = grt_count_fds();
	int n = grt_exhaust_fds(fill, 64, 0, &old);
	p = gr_process_spawn(ARGV(prog), NULL);
	int err = errno;
	grt_restore_fds(fill, n, &old);
	cr_assert_null(p);
	cr_assert_eq(err, EMFILE, "%s", strerror(err));
	cr_assert_not(exec_seen(watch), "the program ran although its spawn failed");
	cr_assert_eq(grt_count_fds(), before);
	cr_assert_eq(grt_count_zombies(), 0);

	close(watch);
	cr_assert_eq(unlink(prog), 0);
	cr_assert_eq(rmdir(dir), 0);
}

/* ------------------------------------------------------------ handles */

Test(process, pipes_are_read_and_written_with_the_green_calls)
{
	struct gr_process_opts o = { 0 };
	char buf[64];
	int st;

	o.stdio[0].mode = GR_STDIO_PIPE;
	o.stdio[1].mode = GR_STDIO_PIPE;
	gr_process *p = gr_process_spawn(ARGV("cat"), &o);
	cr_assert_not_null(p, "%s", strerror(errno));
	cr_assert_gt(gr_process_pid(p), 0);
	cr_assert_eq(gr_process_stdio_fd(p, 2), -1);
	int in = gr_process_stdio_fd(p, 0), outfd = gr_process_stdio_fd(p, 1);
	cr_assert_eq(gr_write(in, "hello", 5), 5);
	cr_assert_eq(gr_read(outfd, buf, sizeof(buf)), 5);
	cr_assert(memcmp(buf, "hello", 5) == 0);
	assert_ok(gr_process_close_stdio(p, 0));
	cr_assert_eq(gr_process_close_stdio(p, 0), -EBADF);
	cr_assert_eq(gr_read(outfd, buf, sizeof(buf)), 0, "cat saw end-of-file and ended");
	assert_ok(gr_process_wait(p, &st, gr_now() + 5 * GR_SEC));
	cr_assert_eq(exit_code(st), 0);
	assert_ok(gr_process_wait(p, &st, 0)); /* again: the same status */
	cr_assert_eq(gr_process_kill(p, SIGTERM), -ESRCH);
	assert_ok(gr_process_free(p));
}

Test(process, a_wait_has_a_deadline_and_a_kill_ends_the_child)
{
	struct gr_process_opts o = { 0 };
	int st;

	o.stdio[1].mode = GR_STDIO_NULL;
	gr_process *p = gr_process_spawn(ARGV("sleep", "100"), &o);
	cr_assert_not_null(p);
	int64_t t0 = gr_now();
	cr_assert_eq(gr_process_wait(p, &st, t0 + 50 * GR_MSEC), -ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 50 * GR_MSEC);
	cr_assert_eq(gr_process_wait(p, &st, 0), -ETIMEDOUT);
	assert_ok(gr_process_kill(p, SIGTERM));
	assert_ok(gr_process_wait(p, &st, gr_now() + 5 * GR_SEC));
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "status %#x", st);
	assert_ok(gr_process_free(p));
}

struct waiter {
	gr_process *p;
	int result, status;
};

static void *wait_proc(void *arg)
{
	struct waiter *w = arg;

	w->result = gr_process_wait(w->p, &w->status, GR_FOREVER);
	return NULL;
}

Test(process, several_fibers_wait_for_one_child_and_a_killed_one_lets_go)
{
	struct gr_process_opts o = { 0 };
	struct waiter w[3];
	gr_fiber *f[3];

	o.stdio[0].mode = GR_STDIO_PIPE;
	gr_process *p = gr_process_spawn(ARGV("sh", "-c", "read x; exit 9"), &o);
	cr_assert_not_null(p);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct waiter){ .p = p };
		f[i] = gr_spawn(wait_proc, &w[i]);
	}
	assert_ok(gr_sleep(10 * GR_MSEC));
	cr_assert_eq(gr_process_free(p), -EBUSY, "fibers are waiting on it");
	assert_ok(gr_kill(f[1]));
	assert_ok(gr_join(f[1], NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(w[1].result, -ECANCELED);
	cr_assert_eq(gr_write(gr_process_stdio_fd(p, 0), "go\n", 3), 3);
	for (int i = 0; i < 3; i += 2) {
		assert_ok(gr_join(f[i], NULL, gr_now() + 5 * GR_SEC));
		cr_assert_eq(w[i].result, 0);
		cr_assert_eq(exit_code(w[i].status), 9);
	}
	assert_ok(gr_process_free(p));
}

Test(process, freeing_a_running_child_kills_and_reaps_it)
{
	gr_process *p = gr_process_spawn(ARGV("sleep", "100"), NULL);

	cr_assert_not_null(p);
	pid_t pid = gr_process_pid(p);
	assert_ok(gr_process_free(p));
	cr_assert_eq(kill(pid, 0), -1, "the child is gone");
	cr_assert_eq(errno, ESRCH);
}

static void *other_thread_uses(void *arg)
{
	gr_process *p = arg;

	return (void *)(intptr_t)gr_process_wait(p, NULL, 0);
}

Test(process, a_handle_belongs_to_its_thread)
{
	gr_process *p = gr_process_spawn(ARGV("true"), NULL);
	pthread_t t;
	void *r;

	cr_assert_not_null(p);
	cr_assert_eq(pthread_create(&t, NULL, other_thread_uses, p), 0);
	cr_assert_eq(pthread_join(t, &r), 0);
	cr_assert_eq((int)(intptr_t)r, -EPERM);
	assert_ok(gr_process_wait(p, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_process_free(p));
	cr_assert_eq(gr_process_pid(NULL), -EINVAL);
	cr_assert_eq(gr_process_wait(NULL, NULL, 0), -EINVAL);
}

/* ------------------------------------------------------------ any child */

Test(process, wait_any_collects_children_the_program_started_itself)
{
	pid_t a = fork();

	cr_assert_geq(a, 0);
	if (a == 0)
		_exit(5);
	pid_t b;
	cr_assert_eq(posix_spawnp(&b, "sh", NULL, NULL, ARGV("sh", "-c", "exit 6"), environ), 0);
	int got5 = 0, got6 = 0;
	for (int i = 0; i < 2; i++) {
		int st;
		pid_t pid = gr_process_wait_any(&st, gr_now() + 5 * GR_SEC);

		cr_assert(pid == a || pid == b, "pid %d (%s)", pid, pid < 0 ? strerror(-pid) : "");
		if (pid == a) {
			cr_assert_eq(exit_code(st), 5);
			got5++;
		} else {
			cr_assert_eq(exit_code(st), 6);
			got6++;
		}
	}
	cr_assert(got5 == 1 && got6 == 1);
	cr_assert_eq(gr_process_wait_any(NULL, gr_now() + GR_SEC), -ECHILD);
	cr_assert_eq(gr_process_wait_any(NULL, 0), -ECHILD);
}

Test(process, wait_any_has_a_deadline)
{
	gr_process *p = gr_process_spawn(ARGV("sleep", "100"), NULL);
	int64_t t0 = gr_now();

	cr_assert_not_null(p);
	cr_assert_eq(gr_process_wait_any(NULL, t0 + 50 * GR_MSEC), -ETIMEDOUT);
	cr_assert_geq(gr_now() - t0, 50 * GR_MSEC);
	cr_assert_eq(gr_process_wait_any(NULL, 0), -ETIMEDOUT);
	assert_ok(gr_process_free(p));
}

Test(process, a_handle_keeps_the_status_wait_any_collected)
{
	gr_process *p = gr_process_spawn(ARGV("sh", "-c", "exit 7"), NULL);
	int st = -1;

	cr_assert_not_null(p);
	pid_t pid = gr_process_wait_any(&st, gr_now() + 5 * GR_SEC);
	cr_assert_eq(pid, gr_process_pid(p));
	cr_assert_eq(exit_code(st), 7);
	st = -1;
	assert_ok(gr_process_wait(p, &st, 0));
	cr_assert_eq(exit_code(st), 7);
	assert_ok(gr_process_free(p));
}

struct any_thread {
	const char *hub;
	pid_t pid;
	int status;
};

static void *wait_any_thread(void *arg)
{
	struct any_thread *a = arg;

	if (gr_hub_use(a->hub) < 0)
		return NULL;
	a->pid = gr_process_wait_any(&a->status, gr_now() + 10 * GR_SEC);
	return NULL;
}

/* A child that ends when told to (a line on its stdin), with exit code 11. */
static gr_process *spawn_on_cue(void)
{
	struct gr_process_opts o = { 0 };

	o.stdio[0].mode = GR_STDIO_PIPE;
	gr_process *p = gr_process_spawn(ARGV("sh", "-c", "read x; exit 11"), &o);
	cr_assert_not_null(p, "%s", strerror(errno));
	return p;
}

static void cue(gr_process *p)
{
	cr_assert_eq(gr_write(gr_process_stdio_fd(p, 0), "go\n", 3), 3);
}

Test(process, a_wait_any_on_another_thread_collects_and_the_handle_keeps_the_status)
{
	struct any_thread a = { .hub = grt_hub() };
	pthread_t t;
	int st = -1;

	gr_process *p = spawn_on_cue();
	cr_assert_eq(pthread_create(&t, NULL, wait_any_thread, &a), 0);
	assert_ok(gr_sleep(20 * GR_MSEC));
	cue(p);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(a.pid, gr_process_pid(p), "wait_any: %d", a.pid);
	cr_assert_eq(exit_code(a.status), 11);
	assert_ok(gr_process_wait(p, &st, 0));
	cr_assert_eq(exit_code(st), 11);
	assert_ok(gr_process_free(p));
}

Test(process, a_handle_and_a_wait_any_racing_for_a_child_both_see_it_right)
{
	for (int round = 0; round < 20; round++) {
		struct any_thread a = { .hub = grt_hub() };
		struct waiter w;
		pthread_t t;

		gr_process *p = spawn_on_cue();
		w = (struct waiter){ .p = p };
		gr_fiber *f = gr_spawn(wait_proc, &w);
		cr_assert_eq(pthread_create(&t, NULL, wait_any_thread, &a), 0);
		assert_ok(gr_sleep(round % 4 * GR_MSEC));
		cue(p);
		assert_ok(gr_join(f, NULL, gr_now() + 10 * GR_SEC));
		cr_assert_eq(pthread_join(t, NULL), 0);
		/* The handle always gets the status, whoever reaped. The wait for
		 * any child got the child, or, if the handle reaped it first,
		 * found no child left at all. */
		cr_assert_eq(w.result, 0, "%s", strerror(-w.result));
		cr_assert_eq(exit_code(w.status), 11);
		cr_assert(a.pid == gr_process_pid(p) || a.pid == -ECHILD, "wait_any: %d", a.pid);
		if (a.pid > 0)
			cr_assert_eq(exit_code(a.status), 11);
		assert_ok(gr_process_free(p));
	}
}

/* ------------------------------------------------------------ the child's world */

/* The fd numbers listed in `text` (one per line). */
static int parse_fds(const char *text, int *fds, int max)
{
	int n = 0;

	for (const char *s = text; s && *s && n < max;) {
		fds[n++] = atoi(s);
		s = strchr(s, '\n');
		if (s)
			s++;
	}
	return n;
}

/* Our fds that lack close-on-exec (the test framework's own). */
static int inheritable_fds(int *fds, int max)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	for (struct dirent *e; d && (e = readdir(d)) != NULL && n < max;) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		int fl = fcntl(fd, F_GETFD);
		if (fl >= 0 && !(fl & FD_CLOEXEC) && fd > 2)
			fds[n++] = fd;
	}
	if (d)
		closedir(d);
	return n;
}

static bool contains(const int *fds, int n, int fd)
{
	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return true;
	return false;
}

static void *sleeper(void *arg)
{
	struct gr_process_output out;

	(void)arg;
	gr_process_run(ARGV("sleep", "100"), NULL, "x", 1, &out, gr_now() + 300 * GR_MSEC);
	gr_process_output_free(&out);
	return NULL;
}

static void *signal_waiter(void *arg)
{
	sigset_t s;

	(void)arg;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	gr_signal_wait(&s, NULL, gr_now() + 300 * GR_MSEC);
	return NULL;
}

Test(process, no_fd_of_ours_leaks_into_a_child)
{
	struct gr_process_output out;
	int fds[64], inherit[64];
	sigset_t s;

	/* The runtime holds what it can: a ring or epoll set, another child's
	 * pipes and pidfd, a signalfd, a socket pair. */
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	gr_signal_block(&s);
	gr_fiber *busy[2] = { gr_spawn(sleeper, NULL), gr_spawn(signal_waiter, NULL) };
	int sp[2];
	grt_tcp_pair(sp);
	assert_ok(gr_sleep(10 * GR_MSEC));

	run_ok(ARGV("ls", "/proc/self/fd"), NULL, NULL, 0, &out);
	int n = parse_fds(out.out, fds, 64);
	/* 0, 1, 2 and the directory ls reads. */
	cr_assert_eq(n, 4, "the child holds: %s", out.out);
	gr_process_output_free(&out);

	/* Even when the child keeps what lacks close-on-exec, nothing of ours
	 * is there: only the test framework's own fds. */
	struct gr_process_opts o = { .keep_fds = 1 };
	int k = inheritable_fds(inherit, 64);
	run_ok(ARGV("ls", "/proc/self/fd"), &o, NULL, 0, &out);
	n = parse_fds(out.out, fds, 64);
	int extra = 0;
	for (int i = 0; i < n; i++)
		extra += fds[i] > 2 && !contains(inherit, k, fds[i]);
	cr_assert_eq(extra, 1, "only ls's own directory fd is new: %s", out.out);
	gr_process_output_free(&out);

	for (int i = 0; i < 2; i++)
		assert_ok(gr_join(busy[i], NULL, gr_now() + 5 * GR_SEC));
	gr_close(sp[0]);
	gr_close(sp[1]);
}

static unsigned long long status_mask(const char *status, const char *key)
{
	const char *p = strstr(status, key);

	cr_assert_not_null(p, "no %s in %s", key, status);
	return strtoull(p + strlen(key), NULL, 16);
}

Test(process, the_child_starts_with_an_empty_mask_and_default_dispositions)
{
	struct gr_process_output out;
	struct sigaction ign = { .sa_handler = SIG_IGN }, old;
	sigset_t s;

	sigemptyset(&s);
	sigaddset(&s, SIGTERM);
	sigaddset(&s, SIGCHLD);
	gr_signal_block(&s);
	sigaction(SIGPIPE, &ign, &old);
	run_ok(ARGV("cat", "/proc/self/status"), NULL, NULL, 0, &out);
	sigaction(SIGPIPE, &old, NULL);
	cr_assert_eq(status_mask(out.out, "SigBlk:"), 0, "the child blocks signals");
	/* glibc's posix_spawn sets its two internal signals (32, 33: thread
	 * cancellation and set*id) to SIG_IGN in the child, past the reach of
	 * POSIX_SPAWN_SETSIGDEF, and exec keeps them so; a program that uses
	 * them installs its handlers anyway. Every other signal is default. */
	unsigned long long internal = 3ULL << 31;
	unsigned long long ignored = status_mask(out.out, "SigIgn:");
	cr_assert_eq(ignored & ~internal, 0, "the child ignores signals: %llx", ignored);
	gr_process_output_free(&out);
}

/* ------------------------------------------------------------ behind our back */

/* The program reaps with a plain waitpid(-1) on a thread of its own while
 * fibers wait for the same child: the waits fail with ECHILD (process.h),
 * they never hang. */
struct stealer {
	pid_t pid;
	int status;
};

static void *steal_any(void *arg)
{
	struct stealer *s = arg;

	do
		s->pid = waitpid(-1, &s->status, 0);
	while (s->pid < 0 && errno == EINTR);
	return NULL;
}

struct any_waiter {
	pid_t pid;
};

static void *wait_any_fiber(void *arg)
{
	struct any_waiter *a = arg;

	a->pid = gr_process_wait_any(NULL, gr_now() + 5 * GR_SEC);
	return NULL;
}

Test(process, a_waitpid_behind_our_back_fails_parked_waits_with_echild)
{
	for (int round = 0; round < 5; round++) {
		gr_process *p = spawn_on_cue();
		struct waiter w = { .p = p };
		struct any_waiter a = { 0 };
		struct stealer s = { 0 };
		pthread_t t;

		gr_fiber *f = gr_spawn(wait_proc, &w);
		gr_fiber *g = gr_spawn(wait_any_fiber, &a);
		cr_assert(f && g);
		assert_ok(gr_sleep(5 * GR_MSEC)); /* both park */
		cr_assert_eq(pthread_create(&t, NULL, steal_any, &s), 0);
		assert_ok(gr_sleep(round * GR_MSEC));
		cue(p);
		cr_assert_eq(pthread_join(t, NULL), 0);
		int64_t t0 = gr_now();
		assert_ok(gr_join(f, NULL, t0 + 5 * GR_SEC));
		assert_ok(gr_join(g, NULL, t0 + 5 * GR_SEC));
		cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the waits hung on a child reaped elsewhere");
		/* Whoever got there first: the plain waitpid, or our waits. */
		if (s.pid == gr_process_pid(p)) {
			cr_assert_eq(exit_code(s.status), 11);
			cr_assert_eq(w.result, -ECHILD, "%d (%s)", w.result, strerror(-w.result));
			cr_assert_eq(a.pid, -ECHILD, "%d", a.pid);
		} else {
			cr_assert_eq(s.pid, -1, "waitpid: %d", s.pid);
			cr_assert_eq(w.result, 0, "%s", strerror(-w.result));
		}
		assert_ok(gr_process_free(p));
	}
}

/* A program that ignores SIGCHLD: the kernel reaps its children itself and
 * no status is kept for anyone. Every wait ends with ECHILD once the child
 * is gone, gr_process_run too; none hangs, and nothing is left behind. */
Test(process, sigchld_ignored_makes_waits_fail_with_echild_not_hang)
{
	struct sigaction ign = { .sa_handler = SIG_IGN }, old;
	cr_assert_eq(sigaction(SIGCHLD, &ign, &old), 0);

	gr_process *p = spawn_on_cue();
	struct waiter w = { .p = p };
	struct any_waiter a = { 0 };
	gr_fiber *f = gr_spawn(wait_proc, &w);
	gr_fiber *g = gr_spawn(wait_any_fiber, &a);
	cr_assert(f && g);
	assert_ok(gr_sleep(5 * GR_MSEC));
	cue(p);
	int64_t t0 = gr_now();
	assert_ok(gr_join(f, NULL, t0 + 5 * GR_SEC));
	assert_ok(gr_join(g, NULL, t0 + 5 * GR_SEC));
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the waits hung");
	cr_assert_eq(w.result, -ECHILD, "%d (%s)", w.result, strerror(-w.result));
	cr_assert_eq(a.pid, -ECHILD, "%d", a.pid);
	assert_ok(gr_process_free(p));

	/* The child may end before its pidfd is opened (the spawn fails, and
	 * nothing may signal its pid: it may name another process by now),
	 * or after (the wait fails): ECHILD either way. A child that exits at
	 * once makes the first case common. */
	for (int i = 0; i < 30; i++) {
		struct gr_process_output out;
		int r = gr_process_run(ARGV("true"), NULL, NULL, 0, &out, gr_now() + 5 * GR_SEC);

		cr_assert_eq(r, -ECHILD, "gr_process_run #%d: %d (%s)", i, r, strerror(-r));
		gr_process_output_free(&out);
	}
	cr_assert_lt(gr_now() - t0, 4 * GR_SEC, "gr_process_run hung");
	cr_assert_eq(sigaction(SIGCHLD, &old, NULL), 0);
}
