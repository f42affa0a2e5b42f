/* test_fairness.c — a fiber whose green calls keep finding data (a burst
 * read, a file read, sends with room) lets the other fibers run at least
 * every GREENRING_IO_BUDGET calls (64 by default), on every hub; a call that
 * had to wait refills the budget. Runs once per hub. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(fairness);

#define READS 2000

static volatile long ticks;
static volatile int stop;

static void *ticker(void *arg)
{
	(void)arg;
	while (!stop) {
		ticks++;
		if (gr_sleep(0) != 0)
			break;
	}
	return NULL;
}

/* Read one byte at a time from fd, which holds READS bytes, with gr_recv
 * (a socket) or gr_read; return the longest run of reads during which the
 * ticker did not run. */
static long longest_unfair_run(int fd, bool socket)
{
	long longest = 0, run = 0, seen = ticks;

	for (int i = 0; i < READS; i++) {
		char c;
		ssize_t r = socket ? gr_recv(fd, &c, 1, 0) : gr_read(fd, &c, 1);

		cr_assert_eq(r, 1, "read %d: %s", i, strerror(errno));
		if (ticks == seen) {
			run++;
		} else {
			seen = ticks;
			run = 1;
		}
		if (run > longest)
			longest = run;
	}
	return longest;
}

static void fill_with(int fd, size_t n)
{
	char buf[READS];

	memset(buf, 'b', sizeof(buf));
	cr_assert_leq(n, sizeof(buf));
	cr_assert_eq(send(fd, buf, n, 0), (ssize_t)n);
}

Test(fairness, a_fiber_reading_a_burst_lets_the_others_run_within_the_budget)
{
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	fill_with(sv[1], READS);
	stop = 0;
	ticks = 0;
	gr_fiber *t = gr_spawn(ticker, NULL);
	cr_assert_eq(gr_sleep(0), 0); /* the ticker is running */
	long longest = longest_unfair_run(sv[0], true);
	stop = 1;
	cr_assert_eq(gr_join(t, NULL, GR_FOREVER), 0);
	cr_assert_leq(longest, 64, "the reader ran %ld calls without letting the ticker run", longest);
	cr_assert_geq(ticks, READS / 64 - 1, "the ticker ran %ld times in %d reads", ticks, READS);
	close(sv[0]);
	close(sv[1]);
}

/* A FIFO cannot be tried with RWF_NOWAIT: every hub, io_uring included,
 * serves it with a try that finds its data without a switch, and so must
 * count it against the budget. */
Test(fairness, a_fifo_read_in_a_loop_yields_too)
{
	char dir[] = "/tmp/greenring-fairness-XXXXXX", path[64];
	char buf[READS];

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/fifo", dir);
	cr_assert_eq(mkfifo(path, 0600), 0);
	int fd = open(path, O_RDWR | O_CLOEXEC); /* its own writer: never EOF */
	cr_assert_geq(fd, 0);
	memset(buf, 'f', sizeof(buf));
	cr_assert_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	stop = 0;
	ticks = 0;
	gr_fiber *t = gr_spawn(ticker, NULL);
	cr_assert_eq(gr_sleep(0), 0);
	long longest = longest_unfair_run(fd, false);
	stop = 1;
	cr_assert_eq(gr_join(t, NULL, GR_FOREVER), 0);
	cr_assert_leq(longest, 64, "the reader ran %ld FIFO reads without letting the ticker run",
		      longest);
	cr_assert_eq(gr_close(fd), 0);
	unlink(path);
	rmdir(dir);
}

Test(fairness, a_regular_file_read_in_a_loop_yields_too)
{
	char path[] = "/tmp/greenring-fairness-XXXXXX";
	int fd = mkstemp(path);
	char block[4096] = { 0 };

	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(write(fd, block, sizeof(block)), (ssize_t)sizeof(block));
	stop = 0;
	ticks = 0;
	gr_fiber *t = gr_spawn(ticker, NULL);
	cr_assert_eq(gr_sleep(0), 0);
	long seen = ticks, run = 0, longest = 0;
	for (int i = 0; i < 1000; i++) {
		char c;

		cr_assert_eq(gr_pread(fd, &c, 1, i % 4096), 1);
		run = ticks == seen ? run + 1 : 1;
		seen = ticks;
		longest = run > longest ? run : longest;
	}
	stop = 1;
	cr_assert_eq(gr_join(t, NULL, GR_FOREVER), 0);
	cr_assert_leq(longest, 64, "%ld file reads in a row without a switch", longest);
	cr_assert_eq(gr_close(fd), 0);
}

Test(fairness, ready_calls_yield_once_per_budget_not_once_per_call)
{
	int a[2];
	struct gr_hub_stats s0, s1;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
	cr_assert_eq(gr_hub_stats(&s0), 0);
	for (int i = 0; i < 200; i++) {
		char c = 'p';

		cr_assert_eq(gr_send(a[0], &c, 1, 0), 1);
		cr_assert_eq(gr_recv(a[1], &c, 1, 0), 1);
	}
	cr_assert_eq(gr_hub_stats(&s1), 0);
	/* 400 calls that each found room or data: on a readiness hub none
	 * waits, and the budget adds a turn every 64 of them; on io_uring each
	 * call waits for its completion (a turn each) and never yields on top. */
	uint64_t turns = s1.turns - s0.turns;
	if (strcmp(grt_hub(), "io_uring") == 0)
		cr_assert_leq(turns, 400 + 2, "%llu turns for 400 calls", (unsigned long long)turns);
	else
		cr_assert_leq(turns, 400 / 64 + 2, "%llu turns for 400 ready calls",
			      (unsigned long long)turns);
	close(a[0]);
	close(a[1]);
}

/* GREENRING_IO_BUDGET is read when a hub is made: a child makes its own. */
Test(fairness, the_budget_is_a_tunable)
{
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	fill_with(sv[1], READS);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		setenv("GREENRING_IO_BUDGET", "8", 1);
		if (gr_hub_use(grt_hub()) < 0)
			_exit(2);
		stop = 0;
		ticks = 0;
		gr_fiber *t = gr_spawn(ticker, NULL);
		gr_sleep(0);
		long longest = 0, run = 0, seen = ticks;
		for (int i = 0; i < READS; i++) {
			char c;

			if (gr_recv(sv[0], &c, 1, 0) != 1)
				_exit(3);
			run = ticks == seen ? run + 1 : 1;
			seen = ticks;
			longest = run > longest ? run : longest;
		}
		stop = 1;
		gr_join(t, NULL, GR_FOREVER);
		_exit(longest <= 8 ? 0 : 4);
	}
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFEXITED(ws), "the child died of signal %d", WTERMSIG(ws));
	cr_assert_eq(WEXITSTATUS(ws), 0, "child status %d (4: a run longer than the budget of 8)",
		     WEXITSTATUS(ws));
	close(sv[0]);
	close(sv[1]);
}
