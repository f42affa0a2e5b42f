/* grt_child.h — run a program (bench/echo_server, bench/http_server, the
 * examples of docs/examples) as a child process in a test: start it, wait
 * for its "listening on HOST:PORT" line (never a sleep), stop it with a
 * signal and collect its exit status. Header-only: the test files that run
 * programs include it.
 *
 * The child dies with the test process (PR_SET_PDEATHSIG), so a failing test
 * never leaves a server holding a port. Waiting is done through the runtime
 * (gr_read on the stdout pipe, gr_wait_fd on a pidfd), under a deadline.
 */
#ifndef GREENRING_TEST_GRT_CHILD_H
#define GREENRING_TEST_GRT_CHILD_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

struct grt_child {
	pid_t pid;
	int out;            /* read end of the child's stdout */
	int port;           /* from the "listening on" line; -1 if none came */
	char line[256];     /* that line, or what came instead */
};

/* The program named by environment variable `var` (set by tests/CMakeLists.txt);
 * the test is skipped when it is not set (benchmarks not built). */
static inline const char *grt_child_program(const char *var)
{
	const char *p = getenv(var);

	if (!p || !*p)
		cr_skip_test("%s is not set: the benchmark programs are not built", var);
	return p;
}

/* Start argv[0] with argv, its stdout on c->out. With stdin_fd >= 0 the
 * child reads that fd as its stdin, and its stderr goes to c->out too (a
 * client program's whole output); otherwise it inherits both. */
static inline void grt_child_spawn(struct grt_child *c, char *const argv[], int stdin_fd)
{
	int pfd[2];

	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0, "pipe2: %s", strerror(errno));
	fflush(NULL); /* no buffered output duplicated into the child */
	pid_t parent = getpid();
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* Die with the test, even if it fails before stopping us. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(127);
		if (dup2(pfd[1], STDOUT_FILENO) < 0)
			_exit(127);
		/* As from a shell: a program that would die of SIGPIPE must be
		 * seen to, whatever the test runner ignores. */
		signal(SIGPIPE, SIG_DFL);
		if (stdin_fd >= 0 &&
		    (dup2(stdin_fd, STDIN_FILENO) < 0 || dup2(pfd[1], STDERR_FILENO) < 0))
			_exit(127);
		execv(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	c->pid = pid;
	c->out = pfd[0];
	c->port = -1;
	c->line[0] = '\0';
}

/* Start argv[0] with argv; read its first stdout line (up to 10 s). */
static inline void grt_child_start(struct grt_child *c, char *const argv[])
{
	grt_child_spawn(c, argv, -1);

	size_t n = 0;
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	while (n + 1 < sizeof(c->line)) {
		ssize_t r = gr_read(c->out, c->line + n, 1);

		if (r <= 0 || c->line[n] == '\n')
			break;
		n++;
	}
	gr_deadline_set(old);
	c->line[n] = '\0';
	const char *colon = strrchr(c->line, ':');
	if (strncmp(c->line, "listening on ", 13) == 0 && colon)
		c->port = atoi(colon + 1);
}

/* Send sig (0: none, the child is already ending) and wait up to 10 s for
 * the exit. Returns the exit status, 128 + signal if killed by one, or -1 if
 * it did not end in time (it is then killed). Releases the fds. */
static inline int grt_child_stop(struct grt_child *c, int sig)
{
	int status = -1;
	int pidfd = (int)syscall(SYS_pidfd_open, c->pid, 0);

	cr_assert_geq(pidfd, 0, "pidfd_open: %s", strerror(errno));
	if (sig)
		kill(c->pid, sig);
	if (gr_wait_fd(pidfd, POLLIN, gr_now() + 10 * GR_SEC) < 0)
		kill(c->pid, SIGKILL);
	else
		status = 0;
	int ws;
	pid_t r;
	while ((r = waitpid(c->pid, &ws, 0)) < 0 && errno == EINTR)
		;
	if (status == 0 && r == c->pid)
		status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
	gr_close(pidfd);
	gr_close(c->out);
	return status;
}

#endif
