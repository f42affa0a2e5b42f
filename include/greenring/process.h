/* greenring/process.h — child processes (gevent.subprocess): start one with
 * pipes to its stdin, stdout and stderr, read and write them with the green
 * calls, wait for it with a deadline, kill it; run a command and capture
 * its output (Python's subprocess.run); wait for any child.
 *
 * How children are started: posix_spawn(3), which glibc implements with
 * clone(CLONE_VM | CLONE_VFORK): no copy of the parent's address space,
 * however big it is, and no fork handlers. The calling thread is suspended
 * until the child has exec'd (typically well under a millisecond); the call
 * does not switch. The child starts with:
 *   - an empty signal mask and every signal at its default disposition
 *     (not the parent's blocked SIGTERM, nor an ignored SIGPIPE);
 *   - fds 0, 1 and 2 as asked (struct gr_process_opts) and no other fd:
 *     everything from 3 up is closed in the child, whatever its
 *     close-on-exec flag (opts.keep_fds keeps the parent's fds that lack
 *     it). Every fd greenring itself opens is close-on-exec.
 *
 * How children are waited for: through a pidfd (pidfd_open), never a
 * SIGCHLD handler, never a pid that could be reused. On io_uring the wait
 * is an IORING_OP_WAITID SQE (Linux 6.7+); elsewhere, or on older kernels,
 * the hub polls the pidfd. The status is then collected with waitid(2). A
 * child that has ended stays a zombie only until its handle is waited for
 * or freed; gr_process_free() of a child still running kills it (SIGKILL)
 * and reaps it.
 *
 * Children the program starts by its own means (fork, posix_spawn) are
 * collected with gr_process_wait_any() (waitpid(-1) semantics). It may
 * also collect a child started here: the status is then kept for that
 * child's gr_process_wait() too. A plain wait()/waitpid(-1) by the
 * program takes statuses out from under the handles, whose waits then fail
 * with ECHILD: use gr_process_wait_any() instead. So does a program that
 * ignores SIGCHLD (SIG_IGN): the kernel then reaps every child itself and
 * keeps no status, so every wait for one that has ended, gr_process_run's
 * too, fails with ECHILD (none hangs), and a child that ends before
 * gr_process_spawn could open its pidfd makes the spawn fail so.
 *
 * Threads: a handle belongs to the thread that made it (EPERM elsewhere);
 * gr_process_wait_any() works from any thread with a hub. A handle its
 * thread never freed outlives the thread, as an unjoined pthread does: its
 * child runs on, and once ended stays a zombie until a
 * gr_process_wait_any() collects it. After fork(), the child must not use
 * its parent's handles (they name its siblings).
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_PROCESS_H
#define GREENRING_PROCESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gr_process gr_process;

/* What the child's fd 0, 1 or 2 is (struct gr_process_stdio.mode). */
enum gr_stdio_mode {
	GR_STDIO_INHERIT = 0,   /* the parent's own fd of that number (the default) */
	GR_STDIO_PIPE,          /* a pipe to the parent: gr_process_stdin/stdout/stderr */
	GR_STDIO_NULL,          /* /dev/null */
	GR_STDIO_FD,            /* a copy of the parent's fd `fd` */
	GR_STDIO_STDOUT,        /* stderr only: wherever the child's stdout goes */
};

struct gr_process_stdio {
	int mode;               /* enum gr_stdio_mode */
	int fd;                 /* GR_STDIO_FD: the parent's fd */
};

/* Options for gr_process_spawn() and gr_process_run(); zero-initialise,
 * then set what you need. NULL options: all defaults. */
struct gr_process_opts {
	char *const *envp;      /* the child's environment; NULL: the caller's (environ) */
	const char *cwd;        /* the child's working directory; NULL: the caller's */
	struct gr_process_stdio stdio[3];   /* fds 0, 1, 2 */
	int keep_fds;           /* 1: the child keeps the parent's fds that lack
				   close-on-exec, as exec would; 0: only 0, 1, 2 */
};

/* Start argv[0] with arguments argv (NULL-terminated). argv[0] without a
 * '/' is looked up in the caller's PATH. Does not switch (see above: the
 * thread waits for the exec). The handle, or NULL with errno: EINVAL (argv
 * NULL or empty, a bad stdio mode or fd); ENOENT, EACCES, ENOEXEC, ...
 * (what exec or the working directory's chdir failed with: the failed
 * child is reaped, no zombie is left); EMFILE, ENFILE, ENOMEM, EAGAIN (no
 * fds, memory or process for it); ECHILD (the child ran and was reaped
 * before it could be tracked: the program ignores SIGCHLD, or a plain
 * waitpid(-1) of its own took it; see below); EPERM (inside the hub). */
GR_API gr_process *gr_process_spawn(char *const argv[], const struct gr_process_opts *opts);

/* The child's pid (valid while the handle lives; once the child has been
 * reaped, the number may name another process). -EINVAL for NULL. */
GR_API pid_t gr_process_pid(const gr_process *p);

/* The parent's end of the pipe to the child's fd 0, 1 or 2 (close-on-exec):
 * write its stdin and read its stdout and stderr with gr_write, gr_read.
 * -1 if that fd is not a pipe (or was closed with gr_process_close_stdio).
 * The handle owns these fds: close one early only with
 * gr_process_close_stdio. Writing to a child that has exited raises
 * SIGPIPE, as for any pipe, unless the program ignores SIGPIPE. */
GR_API int gr_process_stdio_fd(const gr_process *p, int n);

/* Close the parent's end of the pipe to the child's fd n (gr_close): for
 * stdin, the child then reads end-of-file. 0; -EBADF (no such pipe, or
 * closed already); -EINVAL; -EPERM. May switch (gr_close). */
GR_API int gr_process_close_stdio(gr_process *p, int n);

/* Wait until the child has ended and collect its status: *status (if not
 * NULL) gets it in waitpid(2)'s form (WIFEXITED, WEXITSTATUS, WIFSIGNALED,
 * WTERMSIG). Any number of calls, from any fibers of the thread, all get
 * the same status. Switches. 0; -ETIMEDOUT (deadline passed; 0 tries once);
 * -ECANCELED (killed); -ECHILD (the status was taken by a wait()/waitpid()
 * the program made itself); -EINVAL; -EPERM. */
GR_API int gr_process_wait(gr_process *p, int *status, int64_t deadline);

/* Send signal sig to the child (pidfd_send_signal: never another process
 * that reused its pid). 0; -ESRCH (it has been reaped); -EINVAL (a bad
 * sig, or p); -EPERM (another thread's handle, or the kernel's EPERM). Does
 * not switch. */
GR_API int gr_process_kill(gr_process *p, int sig);

/* Release the handle and its fds; p must not be used afterwards. A child
 * that is still running is killed (SIGKILL) and reaped first, so no zombie
 * is ever left behind; that wait cannot be cancelled (as gr_close).
 * Switches. 0; -EINVAL; -EPERM; -EBUSY (another fiber is inside a call on
 * this handle). */
GR_API int gr_process_free(gr_process *p);

/* Wait for any child of the process to end, reap it, and return its pid;
 * *status (if not NULL) gets its status in waitpid(2)'s form. Children
 * started with gr_process_spawn are included (their handles keep the
 * status). Switches. The pid (> 0); -ECHILD (no child at all); -ETIMEDOUT;
 * -ECANCELED; -EPERM (inside the hub). */
GR_API pid_t gr_process_wait_any(int *status, int64_t deadline);

/* What gr_process_run() collected. */
struct gr_process_output {
	int status;             /* the child's status, waitpid(2)'s form; -1 if it never ran */
	char *out;              /* what it wrote to stdout (malloc'd, NUL-terminated), or NULL */
	size_t out_len;
	char *err;              /* what it wrote to stderr, or NULL */
	size_t err_len;
};

/* Run argv (as gr_process_spawn) to its end, feeding it `input` and
 * capturing its output, until `deadline`: Python's
 * subprocess.run(argv, input=..., capture_output=True, timeout=...).
 * stdout and stderr are captured into out->out and out->err, except where
 * opts gives them another mode than GR_STDIO_INHERIT or GR_STDIO_PIPE
 * (GR_STDIO_NULL, GR_STDIO_FD, GR_STDIO_STDOUT are honoured). If input is
 * not NULL, the child's stdin is a pipe fed with input_len bytes of it and
 * then closed (a child that exits without reading it all is fine); else
 * stdin is as opts says. The output is collected as it comes, so a child
 * writing much never blocks on a full pipe.
 * At the deadline, or if the caller is killed, the child is killed
 * (SIGKILL) and reaped, and the call fails with what was captured so far
 * in *out. Release out->out and out->err with free() (or
 * gr_process_output_free) whatever the call returned.
 * Switches. 0 (the child ran to its end: look at out->status);
 * -ETIMEDOUT; -ECANCELED; -ENOMEM; what gr_process_spawn fails with;
 * -EINVAL (argv or out NULL). */
GR_API int gr_process_run(char *const argv[], const struct gr_process_opts *opts, const void *input,
			  size_t input_len, struct gr_process_output *out, int64_t deadline);

/* free() out->out and out->err and clear them. Does not switch. */
GR_API void gr_process_output_free(struct gr_process_output *out);

#ifdef __cplusplus
}
#endif
#endif
