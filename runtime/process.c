/* process.c — child process handles (greenring/process.h): starting a child
 * with its stdio, its pipes, kill, free, and gr_process_run. Waiting and
 * reaping live in reap.c.
 *
 * Starting. posix_spawnp with:
 *   - file actions that make fds 0-2 what was asked: pipes are made
 *     close-on-exec and above 2 (so that setting up one of 0-2 can never
 *     overwrite the source of another), dup2'd onto their number in the
 *     child, then everything from 3 up is closed (closefrom), so the child
 *     holds its three fds and nothing else, close-on-exec or not;
 *   - attributes that give the child an empty signal mask and default
 *     dispositions: a server blocks SIGTERM for gr_signal_wait and often
 *     ignores SIGPIPE, and exec would pass both on.
 * The thread waits for the exec (vfork semantics), with the spawn lock of
 * reap.c shared, then holds a pidfd for the child.
 *
 * gr_process_run. The caller's fiber reads stdout; a helper fiber feeds
 * stdin, another reads stderr, so that no pipe can fill up and stall the
 * child while the caller waits on another. The caller keeps a read end of
 * the child's stdin open for the whole run: writing to it then never raises
 * SIGPIPE (which would end a program that does not ignore it) when the
 * child exits without reading everything; the writer, blocked on a pipe
 * nobody reads any more, is killed once the child has ended. On a deadline
 * or a kill, the child is killed and reaped and the helpers are killed and
 * waited for, uncancellably: nothing outlives the call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "reap.h"

#define PROCESS_MAGIC 0x67727072u /* "grpr" */

struct gr_process {
	struct gr__child child;       /* reap.c's part */
	uint32_t magic;
	struct gr__hub *hub;
	int fds[3];                   /* the parent's pipe ends; -1 */
	unsigned busy;                /* fibers inside a call on it */
};

/* ------------------------------------------------------------ handles */

static int own_process(const gr_process *p, struct gr__hub **hubp)
{
	if (!p || p->magic != PROCESS_MAGIC)
		return -EINVAL;
	struct gr__hub *hub = gr__hub_peek();
	if (p->hub != hub)
		return -EPERM;
	if (hubp)
		*hubp = hub;
	return 0;
}

pid_t gr_process_pid(const gr_process *p)
{
	int err = own_process(p, NULL);

	return err ? err : p->child.pid;
}

int gr_process_stdio_fd(const gr_process *p, int n)
{
	if (own_process(p, NULL) || n < 0 || n > 2)
		return -1;
	return p->fds[n];
}

int gr_process_close_stdio(gr_process *p, int n)
{
	int err = own_process(p, NULL);

	if (err)
		return err;
	if (n < 0 || n > 2)
		return -EINVAL;
	int fd = p->fds[n];
	if (fd < 0)
		return -EBADF;
	p->fds[n] = -1;
	return gr_close(fd) < 0 ? -errno : 0;
}

int gr_process_kill(gr_process *p, int sig)
{
	int err = own_process(p, NULL);

	if (err)
		return err;
	if (sig < 0 || sig >= NSIG)
		return -EINVAL;
	/* Collected: the pidfd would still work (ESRCH), but say so plainly. */
	if (gr__child_reaped(&p->child))
		return -ESRCH;
	return pidfd_send_signal(p->child.pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

int gr_process_wait(gr_process *p, int *status, int64_t deadline)
{
	int err = own_process(p, NULL);

	if (err)
		return err;
	p->busy++;
	err = gr__child_wait(&p->child, status, deadline, false, "gr_process_wait");
	p->busy--;
	return err;
}

/* Kill the child if it is still running, and reap it, whatever the caller's
 * kill or deadline: nothing may leave a zombie. */
static int kill_and_reap(gr_process *p, int *status)
{
	if (!gr__child_reaped(&p->child))
		(void)pidfd_send_signal(p->child.pidfd, SIGKILL, NULL, 0);
	return gr__child_wait(&p->child, status, GR_FOREVER, true, "gr_process_free");
}

static void release(gr_process *p)
{
	gr__child_forget(&p->child);
	for (int n = 0; n < 3; n++) {
		if (p->fds[n] >= 0)
			(void)gr_close(p->fds[n]);
	}
	if (p->child.pidfd >= 0)
		(void)gr_close(p->child.pidfd);
	p->magic = 0;
	free(p);
}

int gr_process_free(gr_process *p)
{
	int err = own_process(p, NULL);

	if (err)
		return err;
	if (p->busy)
		return -EBUSY;
	p->busy++;
	err = kill_and_reap(p, NULL);
	p->busy--;
	/* -ECHILD: reaped behind our back; there is nothing left to wait for. */
	if (err && err != -ECHILD)
		return err;
	release(p);
	return 0;
}

/* ------------------------------------------------------------ spawning */

/* fd moved above 2 (close-on-exec), so that the dup2s onto 0-2 in the child
 * never overwrite one another's source. -1 with errno on failure (fd is
 * closed either way if `owned`). */
static int above_stdio(int fd, bool owned)
{
	if (fd > 2)
		return fd;
	int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (owned) {
		int e = errno;

		close(fd);
		errno = e;
	}
	return high;
}

/* What start() made that the parent closes once the child runs. */
struct stdio_plan {
	int child_end[3];             /* to close in the parent after the spawn */
	int keep_reader;              /* run(): our read end of the child's stdin */
};

static void plan_close(struct stdio_plan *sp)
{
	for (int n = 0; n < 3; n++) {
		if (sp->child_end[n] >= 0)
			close(sp->child_end[n]);
		sp->child_end[n] = -1;
	}
}

/* File action for the child's fd n. 0 or -errno. */
static int plan_fd(gr_process *p, const struct gr_process_stdio *io, int n,
		   posix_spawn_file_actions_t *fa, struct stdio_plan *sp, bool keep_reader)
{
	int pfd[2];

	switch (io->mode) {
	case GR_STDIO_INHERIT:
		return 0;
	case GR_STDIO_NULL:
		return -posix_spawn_file_actions_addopen(fa, n, "/dev/null", n == 0 ? O_RDONLY : O_WRONLY,
							  0);
	case GR_STDIO_STDOUT:
		if (n != 2)
			return -EINVAL;
		return -posix_spawn_file_actions_adddup2(fa, 1, 2);
	case GR_STDIO_FD:
		if (io->fd < 0 || fcntl(io->fd, F_GETFD) < 0)
			return -EINVAL;
		sp->child_end[n] = above_stdio(io->fd, false);
		if (sp->child_end[n] < 0)
			return -errno;
		if (sp->child_end[n] == io->fd)
			sp->child_end[n] = -1; /* the caller's own fd: not ours to close */
		return -posix_spawn_file_actions_adddup2(fa, sp->child_end[n] >= 0 ? sp->child_end[n]
										  : io->fd, n);
	case GR_STDIO_PIPE:
		if (pipe2(pfd, O_CLOEXEC) < 0)
			return -errno;
		int mine = n == 0 ? 1 : 0;
		pfd[0] = above_stdio(pfd[0], true);
		pfd[1] = above_stdio(pfd[1], true);
		if (pfd[0] < 0 || pfd[1] < 0) {
			int e = errno;

			if (pfd[0] >= 0)
				close(pfd[0]);
			if (pfd[1] >= 0)
				close(pfd[1]);
			return -e;
		}
		p->fds[n] = pfd[mine];
		sp->child_end[n] = pfd[1 - mine];
		if (n == 0 && keep_reader) {
			sp->keep_reader = fcntl(pfd[0], F_DUPFD_CLOEXEC, 3);
			if (sp->keep_reader < 0)
				return -errno;
		}
		return -posix_spawn_file_actions_adddup2(fa, sp->child_end[n], n);
	default:
		return -EINVAL;
	}
}

static int start(gr_process *p, char *const argv[], const struct gr_process_opts *opts,
		 struct stdio_plan *sp, bool keep_reader)
{
	static const struct gr_process_opts defaults;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	int err;

	if (!opts)
		opts = &defaults;
	if (posix_spawn_file_actions_init(&fa) != 0)
		return -ENOMEM;
	if (posix_spawnattr_init(&attr) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		return -ENOMEM;
	}
	err = 0;
	/* In fd order: a stderr that follows stdout is set up after stdout. */
	for (int n = 0; n < 3 && !err; n++)
		err = plan_fd(p, &opts->stdio[n], n, &fa, sp, keep_reader);
	if (!err && !opts->keep_fds)
		err = -posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (!err && opts->cwd)
		err = -posix_spawn_file_actions_addchdir_np(&fa, opts->cwd);
	sigemptyset(&none);
	sigfillset(&all);
	if (!err)
		err = -posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	if (!err)
		err = -posix_spawnattr_setsigmask(&attr, &none);
	if (!err)
		err = -posix_spawnattr_setsigdefault(&attr, &all);
	if (!err)
		err = gr__child_spawn(&p->child, argv[0], &fa, &attr, argv,
				      opts->envp ? opts->envp : environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	plan_close(sp);
	return err;
}

static void discard(gr_process *p, struct stdio_plan *sp)
{
	for (int n = 0; n < 3; n++) {
		if (p->fds[n] >= 0)
			close(p->fds[n]);
	}
	if (sp->keep_reader >= 0)
		close(sp->keep_reader);
	free(p);
}

/* A handle for a new child, or NULL with errno. */
static gr_process *spawn(char *const argv[], const struct gr_process_opts *opts,
			 struct stdio_plan *sp, bool keep_reader)
{
	struct gr__hub *hub;
	int err = gr__hub_outside(&hub);

	*sp = (struct stdio_plan){ .child_end = { -1, -1, -1 }, .keep_reader = -1 };
	if (err) {
		errno = -err;
		return NULL;
	}
	if (!argv || !argv[0]) {
		errno = EINVAL;
		return NULL;
	}
	gr_process *p = calloc(1, sizeof(*p));
	if (!p) {
		errno = ENOMEM;
		return NULL;
	}
	p->fds[0] = p->fds[1] = p->fds[2] = -1;
	p->child.pidfd = -1;
	err = start(p, argv, opts, sp, keep_reader);
	if (err) {
		discard(p, sp);
		errno = -err;
		return NULL;
	}
	p->magic = PROCESS_MAGIC;
	p->hub = hub;
	return p;
}

gr_process *gr_process_spawn(char *const argv[], const struct gr_process_opts *opts)
{
	struct stdio_plan sp;

	return spawn(argv, opts, &sp, false);
}

/* ------------------------------------------------------------ run */

struct buf {
	char *data;
	size_t len, cap;
};

struct run {
	gr_process *p;
	const char *input;
	size_t input_len;
	struct buf out, err;
	int64_t deadline;
	int error;                    /* a helper's failure (ENOMEM) */
	unsigned helpers;             /* helper fibers alive */
	gr_fiber *writer, *err_reader;
	struct gr__waitq done;        /* the caller, waiting for the helpers */
};

/* Read *fdp to its end (or an error) into b. 0, or -errno. The fd is read
 * from *fdp before each read: the caller may close it (and set it to -1)
 * to stop a helper, and the number may be reused at once. */
static int read_all(const int *fdp, struct buf *b)
{
	for (;;) {
		if (b->cap - b->len < 4096) {
			size_t cap = b->cap ? b->cap * 2 : 16384;
			char *d = realloc(b->data, cap);

			if (!d)
				return -ENOMEM;
			b->data = d;
			b->cap = cap;
		}
		/* One byte is kept for the terminating NUL. */
		ssize_t n = gr_read(*fdp, b->data + b->len, b->cap - b->len - 1);
		if (n == 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0)
			b->len += (size_t)n;
	}
}

static void helper_done(struct run *r, gr_fiber **self)
{
	*self = NULL;
	if (--r->helpers == 0 && !gr__waitq_empty(&r->done))
		gr__unpark(gr__waitq_first(&r->done), 0);
}

static void *feed_stdin(void *arg)
{
	struct run *r = arg;
	size_t off = 0;

	gr_deadline_set(r->deadline);
	while (off < r->input_len) {
		/* fds[0] is read each time: the caller closes it to stop us. */
		ssize_t n = gr_write(r->p->fds[0], r->input + off, r->input_len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break; /* stopped, or the deadline: the caller handles it */
		off += (size_t)n;
	}
	(void)gr_process_close_stdio(r->p, 0); /* end-of-file for the child */
	helper_done(r, &r->writer);
	return NULL;
}

static void *read_stderr(void *arg)
{
	struct run *r = arg;

	gr_deadline_set(r->deadline);
	if (read_all(&r->p->fds[2], &r->err) == -ENOMEM && !r->error)
		r->error = ENOMEM;
	helper_done(r, &r->err_reader);
	return NULL;
}

static int start_helper(struct run *r, void *(*fn)(void *), gr_fiber **slot)
{
	struct gr_spawn_opts o = { .detached = 1, .name = "gr_process_run" };

	*slot = gr_spawn_with(&o, fn, r);
	if (!*slot)
		return -errno;
	r->helpers++;
	return 0;
}

/* Wait until the helpers have ended. */
static int join_helpers(struct run *r, int64_t deadline, bool uncancellable)
{
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_process_run", .uncancellable = uncancellable };
	int err = gr__park_prepare(&hub, &p, deadline);

	while (!err && r->helpers)
		err = gr__park_queue(hub, &p, &r->done);
	return err;
}

static char *finished(struct buf *b, size_t *len)
{
	*len = b->len;
	if (b->data)
		b->data[b->len] = '\0';
	return b->data;
}

void gr_process_output_free(struct gr_process_output *out)
{
	if (!out)
		return;
	free(out->out);
	free(out->err);
	out->out = out->err = NULL;
	out->out_len = out->err_len = 0;
}

int gr_process_run(char *const argv[], const struct gr_process_opts *opts, const void *input,
		   size_t input_len, struct gr_process_output *out, int64_t deadline)
{
	struct gr__hub *hub = NULL;
	struct gr__park check = { .what = "gr_process_run" };
	struct gr_process_opts o = { 0 };
	struct stdio_plan sp;
	int err;

	if (!argv || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->status = -1;
	/* A killed caller or a past deadline starts nothing. */
	err = gr__park_prepare(&hub, &check, deadline);
	if (err)
		return err;
	if (opts)
		o = *opts;
	for (int n = 1; n <= 2; n++) {
		if (o.stdio[n].mode == GR_STDIO_INHERIT)
			o.stdio[n].mode = GR_STDIO_PIPE;
	}
	if (input)
		o.stdio[0].mode = GR_STDIO_PIPE;
	struct run r = { .input = input, .input_len = input_len, .deadline = check.deadline };
	r.p = spawn(argv, &o, &sp, input != NULL);
	if (!r.p)
		return -errno;

	if (input)
		err = start_helper(&r, feed_stdin, &r.writer);
	if (!err && r.p->fds[2] >= 0)
		err = start_helper(&r, read_stderr, &r.err_reader);
	if (!err && r.p->fds[1] >= 0) {
		int64_t old = gr_deadline_set(gr__deadline_min(r.deadline, gr_deadline_get()));

		err = read_all(&r.p->fds[1], &r.out);
		gr_deadline_set(old);
	}
	if (!err)
		err = gr_process_wait(r.p, &out->status, r.deadline);
	/* The child has ended: a writer still running is blocked on a pipe
	 * nobody reads any more, and what it had left is dropped. The stderr
	 * reader goes on to the end of the pipe. A helper is stopped by closing
	 * its pipe (EBADF), not killed: one killed before it first ran would
	 * never run its body, and so never say it has ended. */
	if (r.writer)
		(void)gr_process_close_stdio(r.p, 0);
	if (!err)
		err = join_helpers(&r, r.deadline, false);
	if (!err)
		err = -r.error;
	/* From here nothing may be cut short. */
	if (err) {
		(void)pidfd_send_signal(r.p->child.pidfd, SIGKILL, NULL, 0);
		if (r.err_reader)
			(void)gr_process_close_stdio(r.p, 2);
	}
	(void)join_helpers(&r, GR_FOREVER, true);
	(void)kill_and_reap(r.p, &out->status);
	if (sp.keep_reader >= 0)
		close(sp.keep_reader);
	release(r.p);
	out->out = finished(&r.out, &out->out_len);
	out->err = finished(&r.err, &out->err_len);
	return err;
}
