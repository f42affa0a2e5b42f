/* grt_servers.h — real servers (PostgreSQL, redis) for the patch library's
 * proofs. Header-only, as grt_child.h.
 *
 * A server starts once per test binary, in Criterion's runner process
 * (ReportHook(PRE_ALL)), before any test runs, and stops in
 * ReportHook(POST_ALL) by its PID; the tests, which Criterion runs in child
 * processes, find it through an environment variable the hook sets. Each
 * server runs as the unprivileged user `nobody` (PostgreSQL refuses root),
 * in a private temporary directory, and listens on a unix socket there
 * only: nothing listens on a network address. It dies with the runner
 * (PR_SET_PDEATHSIG), so a crash leaves nothing behind.
 *
 * A server that is not installed is a skip with the reason, unless
 * GREENRING_REQUIRE_HUBS is set (CI): then every test fails with it. A
 * server that is installed but does not start is always a failure.
 */
#ifndef GREENRING_TEST_GRT_SERVERS_H
#define GREENRING_TEST_GRT_SERVERS_H

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

struct grt_server {
	const char *name;           /* "postgres", "redis" */
	pid_t pid;
	char dir[128];              /* private, owned by the server's user */
	uid_t uid;
	gid_t gid;
};

/* What the tests read: VAR (set by the hook) names the server's socket
 * directory, VAR_SKIP a reason it is not installed, VAR_ERROR why it did
 * not start. */
static inline void grt_server_report(const char *var, const char *what, const char *text)
{
	char name[64];

	snprintf(name, sizeof(name), "%s%s", var, what);
	setenv(name, text, 1);
	fprintf(stderr, "%s: %s\n", name, text);
}

/* In a test: the server's directory, or a skip/failure saying why there is
 * none. */
static inline const char *grt_server_dir(const char *var)
{
	char name[64];
	const char *v;

	snprintf(name, sizeof(name), "%s_ERROR", var);
	if ((v = getenv(name)))
		cr_assert_fail("%s", v);
	snprintf(name, sizeof(name), "%s_SKIP", var);
	if ((v = getenv(name))) {
		if (getenv("GREENRING_REQUIRE_HUBS"))
			cr_assert_fail("%s, and GREENRING_REQUIRE_HUBS says every test must run", v);
		cr_skip_test("%s", v);
	}
	v = getenv(var);
	cr_assert_not_null(v, "%s is not set: the server hook did not run", var);
	return v;
}

/* The user the servers run as. */
static inline int grt_server_user(struct grt_server *s)
{
	struct passwd *pw = getpwnam("nobody");

	if (!pw)
		return -1;
	s->uid = pw->pw_uid;
	s->gid = pw->pw_gid;
	return 0;
}

/* Make the private directory. 0, or -1 with errno. */
static inline int grt_server_mkdir(struct grt_server *s)
{
	snprintf(s->dir, sizeof(s->dir), "/tmp/greenring-%s.XXXXXX", s->name);
	if (!mkdtemp(s->dir))
		return -1;
	if (geteuid() == 0 && chown(s->dir, s->uid, s->gid) < 0)
		return -1;
	return 0;
}

/* Run argv as the server's user, output to `log` (a file in its
 * directory). Returns the PID, or -1. */
static inline pid_t grt_server_spawn(struct grt_server *s, char *const argv[], const char *log)
{
	pid_t parent = getpid();
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	if (geteuid() == 0 &&
	    (setgroups(0, NULL) < 0 || setgid(s->gid) < 0 || setuid(s->uid) < 0))
		_exit(126);
	/* After the change of user, which clears it. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(126);
	int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		_exit(126);
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0)
		dup2(null, 0);
	/* The server is the packaged one, unpatched, whatever this build is
	 * (a sanitizer's library preloaded into it would not even load). */
	unsetenv("LD_PRELOAD");
	unsetenv("ASAN_OPTIONS");
	execv(argv[0], argv);
	_exit(127);
}

/* Wait up to `seconds` for pid to exit; its status, or -1 (still running). */
static inline int grt_server_wait_exit(pid_t pid, int seconds)
{
	for (int i = 0; i < seconds * 100; i++) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		if (r < 0 && errno != EINTR)
			return -1;
		usleep(10 * 1000);
	}
	return -1;
}

/* The last bytes of a log, for a failure message. */
static inline void grt_server_log_tail(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;

	out[0] = '\0';
	if (!f)
		return;
	if (fseek(f, -(long)(len - 1), SEEK_END) < 0)
		rewind(f);
	n = fread(out, 1, len - 1, f);
	out[n] = '\0';
	fclose(f);
	for (char *p = out; *p; p++)
		if (*p == '\n')
			*p = ' ';
}

static inline int grt_server_rm_one(const char *path, const struct stat *st, int type,
				    struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	return remove(path);
}

/* Stop the server by its PID (sig, then SIGKILL after 10 s) and remove
 * its directory. */
static inline void grt_server_stop(struct grt_server *s, int sig)
{
	if (s->pid > 0) {
		kill(s->pid, sig);
		if (grt_server_wait_exit(s->pid, 10) < 0) {
			kill(s->pid, SIGKILL);
			waitpid(s->pid, NULL, 0);
		}
		s->pid = 0;
	}
	if (s->dir[0])
		nftw(s->dir, grt_server_rm_one, 16, FTW_DEPTH | FTW_PHYS);
	s->dir[0] = '\0';
}

/* Wait up to `seconds` until ready(arg) says the server answers, then
 * publish `value` as VAR for the tests; else report VAR_ERROR with the end
 * of the server's log. */
static inline void grt_server_await(struct grt_server *s, const char *var, bool (*ready)(void *),
				    void *arg, int seconds, const char *value, const char *log)
{
	for (int i = 0; i < seconds * 100 && s->pid > 0; i++) {
		if (ready(arg)) {
			setenv(var, value, 1);
			return;
		}
		if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
			s->pid = 0;
			break;
		}
		usleep(10 * 1000);
	}
	char tail[400], msg[600];
	grt_server_log_tail(log, tail, sizeof(tail));
	snprintf(msg, sizeof(msg), "%s did not start within %d s: %s", s->name, seconds, tail);
	grt_server_report(var, "_ERROR", msg);
}

/* The newest installed binary matching a glob pattern, or NULL. */
static inline const char *grt_server_find(const char *pattern, char *out, size_t len)
{
	glob_t g;

	if (glob(pattern, 0, NULL, &g) != 0 || g.gl_pathc == 0)
		return NULL;
	snprintf(out, len, "%s", g.gl_pathv[g.gl_pathc - 1]);
	globfree(&g);
	return out;
}

/* The hubs, for ParameterizedTest: every test below runs on each. */
static const char *const grt_hubs[] = { "io_uring", "epoll", "poll" };

/* In a parameterized test: make hub `i` this test's hub, as GRT_SUITE's
 * setup does for GREENRING_HUB (skip or fail if it cannot run). */
static inline void grt_use_hub(int i)
{
	setenv("GREENRING_HUB", grt_hubs[i], 1);
	grt_setup();
}

#define GRT_HUB_PARAMS(suite, test)                                            \
	ParameterizedTestParameters(suite, test)                               \
	{                                                                      \
		static int hubs[] = { 0, 1, 2 };                               \
		return cr_make_param_array(int, hubs, 3);                      \
	}

#endif
