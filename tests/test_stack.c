/* test_stack.c — stack overflow is reported, not a silent segfault; stack
 * sizes (per spawn, GREENRING_STACK_SIZE) are honoured. Runs once per hub.
 *
 * Death tests run in a fresh process: the test binary re-executes itself
 * with GRT_STACK_CHILD set, and a constructor runs the child's part before
 * Criterion's main. A fresh process also reads GREENRING_STACK_SIZE anew
 * (the runtime reads it once per process). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(stack);

/* ------------------------------------------------------------ the child */

static volatile int recursion_limit = 1 << 30;

static __attribute__((noinline)) int recurse(int depth)
{
	volatile char pad[256];

	pad[0] = (char)depth;
	if (depth > recursion_limit)
		return pad[0];
	return recurse(depth + 1) + pad[0];
}

static void *deep(void *arg)
{
	return (void *)(intptr_t)recurse(0);
}

/* Use about `bytes` of stack in 2 KiB frames: each frame is far smaller
 * than the guard, so running off the end always lands in the guard (one
 * huge frame could jump over it, and under ASan the call right after an
 * alloca would fault below the guard). */
static __attribute__((noinline)) int use_stack(size_t bytes)
{
	volatile char frame[2048];

	frame[0] = (char)bytes;
	frame[sizeof(frame) - 1] = (char)(bytes >> 8);
	if (bytes <= sizeof(frame))
		return frame[0];
	return use_stack(bytes - sizeof(frame)) + frame[sizeof(frame) - 1];
}

static void *use_stack_fiber(void *arg)
{
	use_stack((size_t)(uintptr_t)arg);
	return arg;
}

/* Spawn a fiber that runs fn(arg) (overflowing its stack), print its id for
 * the parent, join. */
static void overflow_with(const struct gr_spawn_opts *o, void *(*fn)(void *), void *arg)
{
	gr_fiber *f = gr_spawn_with(o, fn, arg);

	if (!f)
		_exit(10);
	printf("id=%llu\n", (unsigned long long)gr_fiber_id(f));
	fflush(stdout);
	gr_join(f, NULL, GR_FOREVER);
}

static void *overflow_thread(void *arg)
{
	struct gr_spawn_opts o = { .name = "in-thread" };

	(void)arg;
	overflow_with(&o, deep, NULL);
	return NULL;
}

static void *wait_go(void *arg)
{
	gr_event_wait(arg, GR_FOREVER);
	return NULL;
}

static int *volatile wild_pointer;

static void *wild_write(void *arg)
{
	*wild_pointer = 1;
	return arg;
}

/* Fork `forks` times, each child forking again, and let the last child
 * overflow the stack they all go on running on; each process then dies as
 * its child did. */
static void fork_and_overflow(int forks)
{
	for (; forks > 0; forks--) {
		int st;

		fflush(NULL);
		pid_t pid = fork();
		if (pid < 0)
			_exit(10);
		if (pid == 0)
			continue; /* the child forks again, or overflows */
		if (waitpid(pid, &st, 0) != pid)
			_exit(10);
		if (WIFSIGNALED(st)) {
			signal(WTERMSIG(st), SIG_DFL);
			raise(WTERMSIG(st));
		}
		_exit(WIFEXITED(st) && WEXITSTATUS(st) != 0 ? WEXITSTATUS(st) : 11);
	}
	_exit(recurse(0)); /* no greenring call: the child has no hub yet */
}

/* In a fiber: fork (once, or twice: the child forks again, from no fiber
 * of its own but still on the fiber's stack), and let the last child
 * overflow that stack. */
static void *fork_then_overflow(void *arg)
{
	fork_and_overflow((int)(intptr_t)arg);
	return NULL;
}

/* GRT_STACK_CHILD is "overflow:<stack_size>:<name>", "use:<bytes>", "forked:<forks>" or "null".
 * Prints what the parent needs on stdout; exit status tells the rest. */
static void run_child(const char *mode)
{
	size_t size = 0;
	char name[64] = "";
	int forks;

	if (sscanf(mode, "overflow:%zu:%63s", &size, name) >= 1) {
		struct gr_spawn_opts o = { .stack_size = size, .name = strcmp(name, "-") ? name : NULL };

		overflow_with(&o, deep, NULL);
		_exit(11); /* survived an infinite recursion: wrong */
	}
	if (strcmp(mode, "slab") == 0 || strcmp(mode, "trimmed") == 0) {
		/* The overflowing fiber's stack lies inside a slab, between
		 * others (parked ones here); or was trimmed and brought back. */
		gr_event go;
		gr_fiber *parked[40];

		if (gr_event_init(&go) != 0)
			_exit(10);
		for (int i = 0; i < 40; i++)
			if (!(parked[i] = gr_spawn(wait_go, &go)))
				_exit(10);
		gr_sleep(0);
		if (strcmp(mode, "trimmed") == 0) {
			gr_event_set(&go);
			for (int i = 0; i < 40; i++)
				gr_join(parked[i], NULL, GR_FOREVER);
			if (gr_stacks_trim(0) < 40)
				_exit(10);
		}
		struct gr_spawn_opts o = { .name = mode };

		overflow_with(&o, deep, NULL);
		_exit(11);
	}
	if (sscanf(mode, "use:%zu", &size) == 1) {
		void *res = NULL;
		gr_fiber *f = gr_spawn(use_stack_fiber, (void *)(uintptr_t)size);

		if (!f || gr_join(f, &res, GR_FOREVER) != 0)
			_exit(12);
		_exit(res == (void *)(uintptr_t)size ? 0 : 13);
	}
	if (strcmp(mode, "thread") == 0) {
		/* The overflow happens on another thread, which has its own
		 * alternate signal stack. */
		pthread_t th;

		if (pthread_create(&th, NULL, overflow_thread, NULL) != 0)
			_exit(10);
		pthread_join(th, NULL);
		_exit(11);
	}
	if (sscanf(mode, "forked:%d", &forks) == 1) {
		struct gr_spawn_opts o = { .name = "forker" };

		overflow_with(&o, fork_then_overflow, (void *)(intptr_t)forks);
		_exit(11);
	}
	if (strcmp(mode, "null") == 0) {
		gr_fiber *f = gr_spawn(wild_write, NULL);

		if (!f)
			_exit(10);
		gr_join(f, NULL, GR_FOREVER);
		_exit(11);
	}
	_exit(14);
}

__attribute__((constructor)) static void child_entry(void)
{
	const char *mode = getenv("GRT_STACK_CHILD");

	if (mode)
		run_child(mode);
}

/* ------------------------------------------------------------ the parent */

struct child_result {
	int status;
	char out[4096];
	char err[8192];
};

static void read_all(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < len && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
}

/* Run this binary as a child with GRT_STACK_CHILD=mode and, if not NULL,
 * GREENRING_STACK_SIZE=stack_env. */
static void run_self(const char *mode, const char *stack_env, struct child_result *res)
{
	int out[2], err[2];

	cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(err, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(out[1], STDOUT_FILENO);
		dup2(err[1], STDERR_FILENO);
		setenv("GRT_STACK_CHILD", mode, 1);
		if (stack_env)
			setenv("GREENRING_STACK_SIZE", stack_env, 1);
		else
			unsetenv("GREENRING_STACK_SIZE");
		/* Core dumps of an expected crash are noise. */
		signal(SIGSEGV, SIG_DFL);
		execl("/proc/self/exe", "test_stack", (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	read_all(out[0], res->out, sizeof(res->out));
	read_all(err[0], res->err, sizeof(res->err));
	close(out[0]);
	close(err[0]);
	cr_assert_eq(waitpid(pid, &res->status, 0), pid);
}

static void describe(const struct child_result *r, char *buf, size_t len)
{
	if (WIFSIGNALED(r->status))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(r->status));
	else
		snprintf(buf, len, "exit status %d", WEXITSTATUS(r->status));
}

/* The child must die of the overflow (SIGSEGV; under ASan, ASan's own
 * report and exit follow ours) and say which fiber and how big its stack. */
static void expect_overflow(const struct child_result *r, const char *name, size_t stack_bytes)
{
	char how[64], want[160];
	unsigned long long id = 0;

	describe(r, how, sizeof(how));
	cr_assert_eq(sscanf(r->out, "id=%llu", &id), 1, "the child did not start the fiber (%s): %s",
		     how, r->err);
#if defined(__SANITIZE_ADDRESS__)
	cr_assert(WIFSIGNALED(r->status) || (WIFEXITED(r->status) && WEXITSTATUS(r->status) != 0 &&
					     WEXITSTATUS(r->status) < 10),
		  "the overflowing child: %s", how);
#else
	cr_assert(WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGSEGV,
		  "the overflowing child should die of SIGSEGV: %s; stderr: %s", how, r->err);
#endif
	if (name)
		snprintf(want, sizeof(want), "greenring: fiber %llu \"%s\" overflowed its %zu-byte stack",
			 id, name, stack_bytes);
	else
		snprintf(want, sizeof(want), "greenring: fiber %llu overflowed its %zu-byte stack", id,
			 stack_bytes);
	cr_assert_not_null(strstr(r->err, want), "stderr lacks \"%s\":\n%s", want, r->err);
}

/* Run this binary in `mode`, GREENRING_STACK_SIZE unset, and expect the
 * overflow report of expect_overflow. */
static void expect_child_overflows(const char *mode, const char *name, size_t stack_bytes)
{
	struct child_result r;

	run_self(mode, NULL, &r);
	expect_overflow(&r, name, stack_bytes);
}

Test(stack, overflow_of_a_default_stack_is_reported_and_dies_with_sigsegv)
{
	expect_child_overflows("overflow:0:-", NULL, 64 * 1024);
}

Test(stack, overflow_message_names_the_fiber)
{
	expect_child_overflows("overflow:0:recurser", "recurser", 64 * 1024);
}

Test(stack, overflow_of_a_stack_inside_a_slab_or_trimmed_and_reused_is_reported)
{
	/* A stack between others of its slab (parked ones), and one whose
	 * pages were trimmed and came back: trimming drops pages, not guards. */
	static const char *const modes[] = { "slab", "trimmed" };

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		expect_child_overflows(modes[i], modes[i], 64 * 1024);
}

Test(stack, overflow_in_another_thread_is_reported_too)
{
	expect_child_overflows("thread", "in-thread", 64 * 1024);
}

/* The child of a fork() made in a fiber goes on running on that fiber's
 * stack (hub.c, fork_child), with a fresh hub that does not know it: an
 * overflow there is reported all the same, naming the fiber that forked. */
Test(stack, overflow_in_a_fork_child_on_the_stack_it_forked_on_is_reported)
{
	expect_child_overflows("forked:1", "forker", 64 * 1024);
}

/* The same in the child of that child, which forked from no fiber of its
 * own (it has no hub) but still on the stack of the fiber that forked
 * first. */
Test(stack, overflow_in_a_fork_childs_own_child_is_reported_too)
{
	expect_child_overflows("forked:2", "forker", 64 * 1024);
}

Test(stack, overflow_of_a_spawn_option_stack_reports_its_size)
{
	expect_child_overflows("overflow:262144:big", "big", 256 * 1024);
}

Test(stack, greenring_stack_size_sets_the_default)
{
	struct child_result r;
	char how[64];

	/* 160 KiB of locals: an overflow on the 64 KiB default, fine on 256 KiB. */
	run_self("use:163840", "256k", &r);
	describe(&r, how, sizeof(how));
	cr_assert(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
		  "a fiber using 160 KiB with GREENRING_STACK_SIZE=256k: %s; stderr: %s", how, r.err);
	run_self("overflow:0:-", "256k", &r);
	expect_overflow(&r, NULL, 256 * 1024);
	run_self("overflow:0:-", "131072", &r);
	expect_overflow(&r, NULL, 128 * 1024);
}

Test(stack, the_default_stack_is_64_kib_without_the_variable)
{
	struct child_result r;
	char how[64];

	run_self("use:163840", NULL, &r);
	describe(&r, how, sizeof(how));
	cr_assert(!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0),
		  "160 KiB of locals fit a default stack: it is not 64 KiB (%s)", how);
	cr_assert_not_null(strstr(r.err, "overflowed its 65536-byte stack"), "stderr: %s", r.err);
}

Test(stack, an_unusable_greenring_stack_size_is_replaced_and_said)
{
	struct child_result r;

	/* Below the minimum: the minimum, 16 KiB. */
	run_self("overflow:0:-", "1k", &r);
	expect_overflow(&r, NULL, 16 * 1024);
	cr_assert_not_null(strstr(r.err, "GREENRING_STACK_SIZE=1k is below the minimum"), "%s", r.err);
	/* Not a number, or absurd: the default, and a line that says so. */
	run_self("overflow:0:-", "lots", &r);
	expect_overflow(&r, NULL, 64 * 1024);
	cr_assert_not_null(strstr(r.err, "GREENRING_STACK_SIZE=lots is not a number"), "%s", r.err);
	/* Values that overflow when parsed or rounded are refused too. */
	run_self("overflow:0:-", "99999999999999999999", &r);
	expect_overflow(&r, NULL, 64 * 1024);
	run_self("overflow:0:-", "18446744073709551615", &r);
	expect_overflow(&r, NULL, 64 * 1024);
	run_self("overflow:0:-", "36028797018963968k", &r);
	expect_overflow(&r, NULL, 64 * 1024);
}

Test(stack, a_fault_outside_any_guard_is_not_called_an_overflow)
{
	/* A wild write in a fiber is an ordinary crash: the handler must not
	 * blame the stack, and the process still dies of the signal. */
	struct child_result r;
	char how[64];

	run_self("null", NULL, &r);
	describe(&r, how, sizeof(how));
#if !defined(__SANITIZE_ADDRESS__)
	cr_assert(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGSEGV, "%s; stderr: %s", how, r.err);
#endif
	cr_assert_null(strstr(r.err, "overflowed"), "a NULL write reported as an overflow: %s", r.err);
}
