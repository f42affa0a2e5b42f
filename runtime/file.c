/* file.c — files without stalling the hub (greenring/file.h): open, stat,
 * sync and sendfile, and the readiness hubs' way of reading and writing a
 * regular file (io.c sends gr_read and friends here for one).
 *
 * Each call has a hub's way and the pool's way:
 *   - a completion hub (io_uring) performs the call itself (GR_OP_OPENAT,
 *     GR_OP_STATX, GR_OP_FSYNC, GR_OP_SPLICE) through the one path of io.c;
 *     if it refuses one (a kernel without the opcode: -EOPNOTSUPP), the
 *     pool's way is taken;
 *   - a readiness hub (epoll, poll) never sees them: open, stat and sync
 *     are jobs on the thread pool that work on copies (detached calls
 *     below), and reads, writes and the file side of sendfile are tried
 *     from the page cache first, then made on the pool as operations of
 *     the caller (offload.c).
 * docs/files.md tells why each is made the way it is, with the costs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

static inline int64_t partial(size_t done, int64_t r)
{
	/* Bytes moved before an error (or a kill) are the caller's: the error
	 * is reported by the next call, as read(2) does. */
	return done ? (int64_t)done : r;
}

/* ------------------------------------------------------- regular files */

static bool writes(const struct gr_op *op)
{
	return op->kind == GR_OP_WRITE || op->kind == GR_OP_WRITEV;
}

static bool vectored(const struct gr_op *op)
{
	return op->kind == GR_OP_READV || op->kind == GR_OP_WRITEV;
}

/* A read or write as one preadv2/pwritev2 with `rwf`: RWF_NOWAIT (only what
 * needs no disk, or for a stream only what is there: io.c), or 0 (whatever
 * it takes). */
int64_t gr__rw_call(const struct gr_op *op, int rwf)
{
	struct iovec one = { .iov_base = op->buf, .iov_len = op->len };
	const struct iovec *iov = vectored(op) ? op->iov : &one;
	int cnt = vectored(op) ? op->iovcnt : 1;
	off_t off = op->off < 0 ? -1 : op->off; /* -1: at the file's position */
	ssize_t r;

	do
		r = writes(op) ? pwritev2(op->fd, iov, cnt, off, rwf)
			       : preadv2(op->fd, iov, cnt, off, rwf);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -(int64_t)errno : (int64_t)r;
}

/* A worker's call: it may wait for the disk. */
static int64_t rw_blocking(const struct gr_op *op)
{
	return gr__rw_call(op, 0);
}

static size_t wanted(const struct gr_op *op)
{
	if (!vectored(op))
		return op->len;
	size_t n = 0;
	for (int i = 0; i < op->iovcnt; i++)
		n += op->iov[i].iov_len;
	return n;
}

/* What is left of `o` after `done` bytes, as a fresh operation `r`. A vector
 * cut inside an iovec needs a trimmed copy of its array: *heap, which the
 * caller frees (NULL otherwise). 0 or -ENOMEM. */
static int rest_of(const struct gr__op *o, size_t done, struct gr__op *r, struct iovec **heap)
{
	const struct gr_op *op = &o->op;

	*r = gr__op_init(op->kind, op->fd);
	r->op.off = op->off < 0 ? -1 : op->off + (off_t)done;
	*heap = NULL;
	if (!vectored(op)) {
		r->op.buf = (char *)op->buf + done;
		r->op.len = op->len - done;
		return 0;
	}
	int i = 0;
	while (i < op->iovcnt && done >= op->iov[i].iov_len)
		done -= op->iov[i++].iov_len;
	r->op.iov = op->iov + i;
	r->op.iovcnt = op->iovcnt - i;
	if (done == 0)
		return 0;
	struct iovec *v = malloc((size_t)r->op.iovcnt * sizeof(*v));
	if (!v)
		return -ENOMEM;
	memcpy(v, r->op.iov, (size_t)r->op.iovcnt * sizeof(*v));
	v[0].iov_base = (char *)v[0].iov_base + done;
	v[0].iov_len -= done;
	r->op.iov = v;
	*heap = v;
	return 0;
}

/* A regular file on a readiness hub. First from the page cache, at once:
 * preadv2/pwritev2 with RWF_NOWAIT moves what needs no disk, so a hit costs
 * what a plain read(2) costs and no thread hop. A short result is tried
 * again (0 then says end of file): a read of a file is whole unless it ends,
 * as io_uring's are. What needs the disk goes to a worker, as an operation
 * of this caller (offload.c). A filesystem that refuses RWF_NOWAIT (ext4 for
 * buffered writes, on the kernels we measured) goes straight to the pool
 * from then on. */
int64_t gr__file_rw(struct gr__hub *hub, struct gr__park *p, struct gr__op *o)
{
	struct gr__fdstate *st = gr__fd_peek(hub, o->op.fd); /* made by gr__fd_kind */
	uint8_t dir = writes(&o->op) ? GR__NOWAIT_WRITE : GR__NOWAIT_READ;
	size_t want = wanted(&o->op), done = 0;
	struct gr__op rest;
	struct iovec *heap;
	int64_t r;

	while (!(st->nowait_refused & dir)) {
		r = rest_of(o, done, &rest, &heap);
		if (r < 0)
			return partial(done, r);
		r = gr__rw_call(&rest.op, RWF_NOWAIT);
		free(heap);
		if (r > 0) {
			done += (size_t)r;
			if (done == want)
				return (int64_t)done;
			continue;
		}
		if (r == 0)
			return (int64_t)done; /* end of file, or nothing asked */
		if (r == -EOPNOTSUPP || r == -ENOSYS)
			st->nowait_refused |= dir;
		else if (r != -EAGAIN)
			return partial(done, r);
		break;
	}
	/* A worker is about to block in the call: make sure the number still
	 * names a file. A stale hint would block a worker on a socket or a pipe
	 * with nobody to wake it; this fstat is what makes the hint safe. */
	int kind = gr__fd_kind_check(hub, o->op.fd);
	if (kind < 0)
		return partial(done, kind);
	if (kind != GR__FD_FILE)
		return done ? (int64_t)done : gr__run_stream(hub, p, o);
	r = gr__park_again(p);
	if (r < 0)
		return partial(done, r);
	r = rest_of(o, done, &rest, &heap);
	if (r < 0)
		return partial(done, r);
	struct gr__offload off = { .perform = rw_blocking };
	rest.offload = &off;
	r = gr__park_op(hub, p, &rest);
	free(heap);
	return r < 0 ? partial(done, r) : (int64_t)done + r;
}

/* ------------------------------------------------------- detached calls */

/* open, stat or sync on the pool. The worker works on a copy of the
 * arguments and results in this record, never in the caller's memory, so a
 * caller that stops waiting (kill, deadline) leaves at once; the record is
 * then the cleanup's, which closes an fd opened for nobody. The calls name
 * a path or only read an fd's metadata: one that a worker makes after its
 * caller left, or on a number reused meanwhile, changes nothing the caller
 * could see. (Reads and writes move data through the caller's buffers and
 * into files: they are operations of their caller instead, see above.) */
struct detached {
	uint8_t kind;                  /* GR_OP_OPENAT, GR_OP_STATX, GR_OP_FSYNC */
	int fd;
	int flags;
	unsigned mode;
	int64_t res;
	uint8_t new_kind;              /* OPENAT: what the new fd names */
	struct statx stx;
	char path[];
};

static void *detached_run(void *arg)
{
	struct detached *d = arg;
	long r;
	struct stat sb;

	switch (d->kind) {
	case GR_OP_OPENAT:
		r = openat(d->fd, d->path, d->flags, (mode_t)d->mode);
		/* The hint for the new number, learnt here where it costs the
		 * hub nothing. */
		if (r >= 0)
			d->new_kind = fstat((int)r, &sb) == 0 ? gr__fd_kind_of_mode(sb.st_mode)
							      : GR__FD_UNKNOWN;
		break;
	case GR_OP_STATX:
		r = statx(d->fd, d->path, d->flags, d->mode, &d->stx);
		break;
	default:
		r = (d->flags & GR_FSYNC_DATASYNC) ? fdatasync(d->fd) : fsync(d->fd);
		break;
	}
	d->res = r < 0 ? -(int64_t)errno : r;
	return NULL;
}

/* The caller left: what the call made is nobody's. */
static void detached_cleanup(void *result, void *arg)
{
	struct detached *d = arg;

	(void)result;
	if (d->kind == GR_OP_OPENAT && d->res >= 0)
		close((int)d->res);
	free(d);
}

static int64_t run_detached(struct gr__hub *hub, const struct gr_op *op)
{
	size_t plen = op->path ? strlen(op->path) + 1 : 0;
	struct detached *d = malloc(sizeof(*d) + plen);

	if (!d)
		return -ENOMEM;
	d->kind = op->kind;
	d->fd = op->fd;
	d->flags = op->flags;
	d->mode = op->mode;
	d->res = -ECANCELED; /* what a job that never ran made: nothing */
	d->new_kind = GR__FD_UNKNOWN;
	if (plen)
		memcpy(d->path, op->path, plen);
	int err = gr_tpool_run_cleanup(detached_run, d, detached_cleanup, NULL, op->deadline);
	if (err == -ECANCELED || err == -ETIMEDOUT)
		return err; /* the record is the cleanup's now */
	if (err) {
		free(d);
		return err;
	}
	int64_t r = d->res;
	if (op->kind == GR_OP_STATX && r == 0)
		memcpy(op->buf, &d->stx, sizeof(d->stx));
	if (op->kind == GR_OP_OPENAT && r >= 0)
		gr__fd_born(hub, (int)r, d->new_kind);
	free(d);
	return r;
}

/* An open, stat or sync: the hub's way, else the pool's. */
static int64_t file_call(struct gr__op *o, const char *what)
{
	struct gr__hub *hub = NULL;
	int err = gr__park_hub(&hub);

	if (err)
		return err;
	if (hub->ops->caps & GR_HUB_CAP_COMPLETION) {
		int64_t r = gr__run_op(o, what);

		/* -EOPNOTSUPP: the backend refused the kind (a kernel without
		 * the opcode), or it is the call's own result, which the pool's
		 * call then reports again. */
		if (r != -EOPNOTSUPP) {
			if (o->op.kind == GR_OP_OPENAT && r >= 0)
				gr__fd_born(hub, (int)r, GR__FD_UNKNOWN);
			return r;
		}
	}
	return run_detached(hub, &o->op);
}

/* ------------------------------------------------------- open, stat, sync */

static int open_call(int dirfd, const char *path, int flags, unsigned mode)
{
	if (!path)
		return (int)gr__posix_result(-EFAULT);
	struct gr__op o = gr__op_init(GR_OP_OPENAT, dirfd);
	o.op.path = path;
	o.op.flags = flags;
	o.op.mode = mode;

	return (int)gr__posix_result(file_call(&o, "gr_open"));
}

/* open(2)'s mode argument: passed only with O_CREAT or O_TMPFILE (reading
 * it otherwise would read what is not there). */
static unsigned mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, unsigned) : 0;
}

int gr_open(const char *path, int flags, ...)
{
	va_list ap;

	va_start(ap, flags);
	unsigned mode = mode_arg(flags, ap);
	va_end(ap);
	return open_call(AT_FDCWD, path, flags, mode);
}

int gr_openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;

	va_start(ap, flags);
	unsigned mode = mode_arg(flags, ap);
	va_end(ap);
	return open_call(dirfd, path, flags, mode);
}

static int64_t statx_call(int dirfd, const char *path, int flags, unsigned mask,
			  struct statx *stx, const char *what)
{
	if (!path || !stx)
		return -EFAULT;
	struct gr__op o = gr__op_init(GR_OP_STATX, dirfd);
	o.op.path = path;
	o.op.flags = flags;
	o.op.mode = mask;
	o.op.buf = stx;

	return file_call(&o, what);
}

int gr_statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx)
{
	return (int)gr__posix_result(statx_call(dirfd, path, flags, mask, stx, "gr_statx"));
}

/* struct stat from struct statx, as the C library's own statx-based fstat
 * fills it. */
static void stat_of_statx(struct stat *st, const struct statx *x)
{
	memset(st, 0, sizeof(*st));
	st->st_dev = makedev(x->stx_dev_major, x->stx_dev_minor);
	st->st_ino = x->stx_ino;
	st->st_mode = x->stx_mode;
	st->st_nlink = x->stx_nlink;
	st->st_uid = x->stx_uid;
	st->st_gid = x->stx_gid;
	st->st_rdev = makedev(x->stx_rdev_major, x->stx_rdev_minor);
	st->st_size = (off_t)x->stx_size;
	st->st_blksize = x->stx_blksize;
	st->st_blocks = (blkcnt_t)x->stx_blocks;
	st->st_atim = (struct timespec){ x->stx_atime.tv_sec, x->stx_atime.tv_nsec };
	st->st_mtim = (struct timespec){ x->stx_mtime.tv_sec, x->stx_mtime.tv_nsec };
	st->st_ctim = (struct timespec){ x->stx_ctime.tv_sec, x->stx_ctime.tv_nsec };
}

int gr_fstat(int fd, struct stat *st)
{
	struct statx x;

	if (!st)
		return (int)gr__posix_result(-EFAULT);
	/* AT_FDCWD and other negative numbers would stat the working
	 * directory with AT_EMPTY_PATH: fstat(2) says EBADF. */
	if (fd < 0)
		return (int)gr__posix_result(-EBADF);
	int64_t r = statx_call(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &x, "gr_fstat");
	if (r == 0)
		stat_of_statx(st, &x);
	return (int)gr__posix_result(r);
}

static int sync_call(int fd, int flags, const char *what)
{
	struct gr__op o = gr__op_init(GR_OP_FSYNC, fd);
	o.op.flags = flags;

	if (fd < 0)
		return (int)gr__posix_result(-EBADF);
	return (int)gr__posix_result(file_call(&o, what));
}

int gr_fsync(int fd)
{
	return sync_call(fd, 0, "gr_fsync");
}

int gr_fdatasync(int fd)
{
	return sync_call(fd, GR_FSYNC_DATASYNC, "gr_fdatasync");
}

/* ------------------------------------------------------- sendfile */

#define SENDFILE_CHUNK ((size_t)1 << 20)
#define SPLICE_PIPE_SIZE (1 << 20)

/* io_uring: splice(2) file -> pipe -> out, both halves as SQEs. The pipe is
 * this call's own, and emptied before it is filled again, so bytes stuck in
 * it after an error are never counted as sent. */
static int64_t splice_through_pipe(int out, int in, off_t off, size_t count)
{
	int pfd[2];

	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	/* A bigger pipe moves more per round trip; the default (64 KiB) is
	 * fine too, and the size may be refused (pipe-user-pages-soft). */
	(void)fcntl(pfd[1], F_SETPIPE_SZ, SPLICE_PIPE_SIZE);
	int cap = fcntl(pfd[1], F_GETPIPE_SZ);
	size_t sent = 0;
	int64_t r = 0;

	if (cap <= 0)
		cap = 65536;
	while (sent < count) {
		struct gr__op fill = gr__op_init(GR_OP_SPLICE, pfd[1]);
		fill.op.fd_in = in;
		fill.op.off_in = off + (off_t)sent;
		fill.op.len = count - sent < (size_t)cap ? count - sent : (size_t)cap;
		fill.op.flags = SPLICE_F_MOVE;
		r = gr__run_op(&fill, "gr_sendfile");
		if (r <= 0)
			break; /* 0: end of file */
		for (size_t n = (size_t)r; n > 0;) {
			struct gr__op drain = gr__op_init(GR_OP_SPLICE, out);
			drain.op.fd_in = pfd[0];
			drain.op.off_in = -1;
			drain.op.len = n;
			drain.op.flags = SPLICE_F_MOVE;
			r = gr__run_op(&drain, "gr_sendfile");
			if (r <= 0) {
				r = r ? r : -EIO; /* a splice out of a full pipe moves something */
				goto out;
			}
			n -= (size_t)r;
			sent += (size_t)r;
		}
	}
out:
	/* Plain close: the pipe is ours, and nothing waits on it now. */
	close(pfd[0]);
	close(pfd[1]);
	return partial(sent, r);
}

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* every architecture's number (unified table), Linux 6.5 */
#endif

struct cachestat_range {
	uint64_t off, len;
};
struct cachestat {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

static atomic_bool no_cachestat; /* the kernel (or seccomp) refuses it */

/* Is [off, off + len) of a regular file of `size` bytes all in the page
 * cache, so that sendfile(2) of it reads no disk? cachestat(2) counts the
 * pages; without it (Linux < 6.5), every chunk goes to the pool. */
static bool in_page_cache(int fd, off_t off, size_t len, off_t size)
{
	long page = sysconf(_SC_PAGESIZE);

	if (size < 0 || atomic_load_explicit(&no_cachestat, memory_order_relaxed))
		return false;
	if (off >= size)
		return true; /* nothing to read: sendfile says end of file */
	off_t end = (size - off) < (off_t)len ? size : off + (off_t)len;
	struct cachestat_range range = { (uint64_t)off, (uint64_t)(end - off) };
	struct cachestat cs;
	if (syscall(__NR_cachestat, fd, &range, &cs, 0) < 0) {
		if (errno == ENOSYS || errno == EPERM)
			atomic_store_explicit(&no_cachestat, true, memory_order_relaxed);
		return false;
	}
	uint64_t pages = (uint64_t)((end - 1) / page - off / page + 1);
	return cs.nr_cache >= pages;
}

/* A worker's sendfile(2): it may wait for the disk; out is non-blocking
 * (or a file), so it never waits for a peer. */
static int64_t sendfile_blocking(const struct gr_op *op)
{
	off_t off = op->off_in;
	ssize_t r;

	do
		r = sendfile(op->fd, op->fd_in, &off, op->len);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -(int64_t)errno : (int64_t)r;
}

/* epoll and poll (and io_uring without SPLICE): sendfile(2) a chunk at a
 * time. A chunk in the page cache going to a stream is sent at once (out is
 * non-blocking: EAGAIN parks until it is writable); any other chunk is sent
 * by a worker, as an operation of this caller on out. size < 0: unknown
 * (a block device): every chunk on the pool. */
static int64_t sendfile_by_chunks(struct gr__hub *hub, int out, int in, off_t off, size_t count,
				  off_t size)
{
	struct gr__park p = { .what = "gr_sendfile" };
	int64_t r = gr__park_begin(hub, &p, GR_FOREVER);
	size_t sent = 0;

	if (r < 0)
		return r;
	/* Asked of the kernel, not the hint: a stale "file" would have a
	 * worker block on a socket (and io_uring keeps no hints up to date). */
	int kind = gr__fd_kind_check(hub, out);
	if (kind < 0)
		return kind;
	bool stream = gr__fd_kind_polls(kind);
	/* A stream out is made O_NONBLOCK before the first chunk and again
	 * after every park, not once: while this fiber waited, the program may
	 * have cleared the flag (fcntl) or reused the number for a blocking
	 * file, and a chunk sent here would then block the thread, one sent by
	 * a worker the worker for as long as nobody reads (as io.c's streams). */
	bool checked = false;
	while (sent < count) {
		struct gr__op o = gr__op_init(GR_OP_SPLICE, out);
		size_t chunk = count - sent < SENDFILE_CHUNK ? count - sent : SENDFILE_CHUNK;

		o.op.fd_in = in;
		o.op.off_in = off + (off_t)sent;
		o.op.len = chunk;
		/* A killed caller stops between chunks, even when none waits. */
		r = gr__park_again(&p);
		if (r == 0 && !checked && stream) {
			if ((r = gr__fd_nonblocking(out)) < 0)
				return partial(sent, r);
			checked = true;
		}
		if (r == 0 && stream && in_page_cache(in, o.op.off_in, chunk, size)) {
			r = sendfile_blocking(&o.op); /* nothing in it waits */
		} else if (r == 0) {
			struct gr__offload work = { .perform = sendfile_blocking };

			o.offload = &work;
			r = gr__park_op(hub, &p, &o);
			checked = false;
		}
		if (r == -EAGAIN) {
			r = gr__park_ready(hub, &p, out, POLLOUT, 0, false);
			checked = false;
			if (r == 0)
				continue;
		}
		if (r <= 0)
			return partial(sent, r); /* 0: end of file */
		sent += (size_t)r;
	}
	return (int64_t)sent;
}

ssize_t gr_sendfile(int out_fd, int in_fd, off_t *offset, size_t count)
{
	struct gr__hub *hub = NULL;
	int64_t r = gr__park_hub(&hub);

	if (r < 0)
		return gr__posix_result(r);
	if (out_fd < 0 || in_fd < 0)
		return gr__posix_result(-EBADF);
	if (offset && *offset < 0)
		return gr__posix_result(-EINVAL);
	/* The call's own reference to in_fd's file: a gr_close of in_fd while
	 * it runs cannot make a later chunk read whatever file gets the number
	 * next (io_uring and the pool look the number up when they start each
	 * chunk, not when it is queued). */
	int in = fcntl(in_fd, F_DUPFD_CLOEXEC, 0);
	if (in < 0)
		return gr__posix_result(-errno);
	struct stat sb;
	off_t start = 0;
	if (count > SSIZE_MAX)
		count = SSIZE_MAX;
	if (fstat(in, &sb) < 0)
		r = -errno;
	else if (gr__fd_kind_of_mode(sb.st_mode) != GR__FD_FILE)
		r = -EINVAL; /* a pipe or socket to read from: use splice(2) */
	else if ((start = offset ? *offset : lseek(in, 0, SEEK_CUR)) < 0)
		r = -errno;
	else if (count == 0)
		r = 0;
	else {
		r = -EOPNOTSUPP;
		if (hub->ops->caps & GR_HUB_CAP_COMPLETION)
			r = splice_through_pipe(out_fd, in, start, count);
		/* A readiness hub, or a kernel whose io_uring lacks SPLICE. */
		if (r == -EOPNOTSUPP)
			r = sendfile_by_chunks(hub, out_fd, in, start, count,
					       S_ISREG(sb.st_mode) ? sb.st_size : -1);
		if (r > 0) {
			if (offset)
				*offset = start + (off_t)r;
			else
				(void)lseek(in, start + (off_t)r, SEEK_SET);
		}
	}
	close(in);
	return gr__posix_result(r);
}
