/* test_sigpipe.c — servers do not die of SIGPIPE: every green send on a
 * socket whose peer went away (gr_write, gr_writev, gr_send, gr_sendmsg, on
 * TCP and Unix stream sockets) returns EPIPE in a process whose SIGPIPE is at
 * its default disposition, and the disposition is left alone. A number that
 * named a socket and names a pipe now is still written as a pipe. Runs once
 * per hub.
 *
 * The checks run in a child process (fork): a SIGPIPE there kills only the
 * child, and the parent reports how it died. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(sigpipe);

/* Run body in a child with SIGPIPE at SIG_DFL and unblocked, on this run's
 * hub; assert the child exited 0 and said "ok". */
static void in_child(void (*body)(void))
{
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		sigset_t set;

		close(p[0]);
		grt_report_fd = p[1];
		signal(SIGPIPE, SIG_DFL);
		sigemptyset(&set);
		sigaddset(&set, SIGPIPE);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		if (gr_hub_use(grt_hub()) < 0)
			grt_child_exit("gr_hub_use(%s) failed", grt_hub());
		body();
		grt_child_exit("ok");
	}
	close(p[1]);
	char msg[256] = "";
	ssize_t n = read(p[0], msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = '\0';
	close(p[0]);
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(!WIFSIGNALED(ws), "the child died of signal %d (%s)%s%s", WTERMSIG(ws),
		  strsignal(WTERMSIG(ws)), msg[0] ? " after: " : "", msg);
	cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child: %s", msg[0] ? msg : "no report");
	cr_assert_str_eq(msg, "ok");
}

enum { WRITE, WRITEV, SEND, SENDMSG, NCALLS };
static const char *const call_names[] = { "gr_write", "gr_writev", "gr_send", "gr_sendmsg" };

static ssize_t green_send(int call, int fd)
{
	static char data[4096];
	struct iovec iov[2] = { { data, 100 }, { data + 100, sizeof(data) - 100 } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };

	switch (call) {
	case WRITE:
		return gr_write(fd, data, sizeof(data));
	case WRITEV:
		return gr_writev(fd, iov, 2);
	case SEND:
		return gr_send(fd, data, sizeof(data), 0);
	default:
		return gr_sendmsg(fd, &msg, 0);
	}
}

/* Send on fd until the call fails: a TCP peer's reset comes back only after
 * a first send, and only then does the kernel answer EPIPE (and raise
 * SIGPIPE, for a write without MSG_NOSIGNAL). */
static void expect_epipe(int call, int fd, const char *what)
{
	for (int i = 0; i < 1000; i++) {
		ssize_t n = green_send(call, fd);

		if (n >= 0) {
			gr_sleep(GR_MSEC); /* the reset is on its way */
			continue;
		}
		if (errno == EPIPE)
			return;
		if (errno != ECONNRESET)
			grt_child_exit("%s on %s: %s, expected EPIPE", call_names[call], what,
				   strerror(errno));
	}
	grt_child_exit("%s on %s never failed", call_names[call], what);
}

static void peer_gone_on_every_call(void)
{
	for (int call = 0; call < NCALLS; call++) {
		int sv[2], tcp[2];

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
			grt_child_exit("socketpair: %s", strerror(errno));
		close(sv[1]);
		expect_epipe(call, sv[0], "a unix socket");
		gr_close(sv[0]);

		grt_tcp_pair(tcp);
		close(tcp[1]);
		expect_epipe(call, tcp[0], "a TCP socket");
		gr_close(tcp[0]);
	}
	struct sigaction sa;
	sigaction(SIGPIPE, NULL, &sa);
	if (sa.sa_handler != SIG_DFL)
		grt_child_exit("the SIGPIPE disposition was changed");
}

Test(sigpipe, green_sends_to_a_gone_peer_return_epipe_with_sigpipe_at_its_default)
{
	in_child(peer_gone_on_every_call);
}

/* The test is sharp: the same write, plain, kills the child. */
static void plain_write_dies(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		grt_child_exit("socketpair: %s", strerror(errno));
	close(sv[1]);
	if (write(sv[0], "x", 1) < 0)
		grt_child_exit("write: %s (no SIGPIPE)", strerror(errno));
	grt_child_exit("write succeeded");
}

Test(sigpipe, a_plain_write_in_the_same_child_does_die_of_sigpipe)
{
	int p[2];

	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(p[0]);
		grt_report_fd = p[1];
		signal(SIGPIPE, SIG_DFL);
		plain_write_dies();
	}
	close(p[1]);
	close(p[0]);
	int ws;
	cr_assert_eq(waitpid(pid, &ws, 0), pid);
	cr_assert(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGPIPE,
		  "a plain write to a gone peer did not raise SIGPIPE: the test above proves nothing");
}

/* ------------------------------------------------------------ a number changing kind */

static void number_reused_by_a_pipe(void)
{
	int sv[2], p[2];
	char buf[16];
	struct iovec iov = { (void *)"writev", 6 };

	if (pipe2(p, O_CLOEXEC) != 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		grt_child_exit("pipe2/socketpair: %s", strerror(errno));
	/* A socket written once (so remembered as one), then its number made
	 * the pipe's write end behind the runtime's back (dup3 closes the
	 * socket, as a plain close() and a reuse would). */
	if (gr_write(sv[0], "s", 1) != 1)
		grt_child_exit("gr_write on the socket: %s", strerror(errno));
	close(sv[1]);
	if (dup3(p[1], sv[0], O_CLOEXEC) != sv[0])
		grt_child_exit("dup3: %s", strerror(errno));
	if (gr_write(sv[0], "pipe", 4) != 4)
		grt_child_exit("gr_write on a pipe under a socket's number: %s", strerror(errno));
	if (gr_writev(sv[0], &iov, 1) != 6)
		grt_child_exit("gr_writev on the pipe: %s", strerror(errno));
	if (gr_read(p[0], buf, sizeof(buf)) != 10 || memcmp(buf, "pipewritev", 10) != 0)
		grt_child_exit("the pipe did not get what was written");
	gr_close(sv[0]);
	gr_close(p[0]);
	gr_close(p[1]);
}

Test(sigpipe, a_socket_number_reused_by_a_pipe_is_written_as_a_pipe)
{
	in_child(number_reused_by_a_pipe);
}

/* gr_write on a socket still writes: the same bytes arrive as with write(). */
Test(sigpipe, gr_write_and_gr_writev_on_a_live_socket_deliver_everything)
{
	int sv[2];
	char big[100000], got[100000];
	struct iovec iov[3] = { { big, 10 }, { big + 10, 50000 }, { big + 50010, 49990 } };

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	for (int call = 0; call < 2; call++) {
		size_t have = 0;
		ssize_t n = call ? gr_writev(sv[0], iov, 3) : gr_write(sv[0], big, sizeof(big));

		cr_assert_gt(n, 0, "%s: %s", call ? "gr_writev" : "gr_write", strerror(errno));
		while (have < (size_t)n) {
			ssize_t r = gr_read(sv[1], got + have, (size_t)n - have);
			cr_assert_gt(r, 0);
			have += (size_t)r;
		}
		cr_assert_eq(memcmp(got, big, (size_t)n), 0);
	}
	cr_assert_eq(gr_close(sv[0]), 0);
	cr_assert_eq(gr_close(sv[1]), 0);
}
