/* test_file.c — files without stalling the hub (greenring/file.h): a 64 MiB
 * file written and read back byte for byte, reads at offsets and at the
 * position, from the page cache and from the disk, open/stat/sync errors,
 * kills and deadlines during a blocked open (a FIFO without a writer) and
 * during queued and running reads on the pool, gr_close under a queued
 * read, fd numbers reused behind greenring's back, and gr_sendfile of a
 * 16 MiB file to a socket. Runs once per hub.
 *
 * Reads "from the disk" drop the file's pages first (fsync, then
 * posix_fadvise(DONTNEED)): on the readiness hubs that sends them to the
 * thread pool, on io_uring to the kernel's workers. A worker made to block
 * in the middle of a read uses userfaultfd: the read's buffer has no page
 * until the test supplies one, so the test decides when the read ends. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(file);

#define MIB ((size_t)1 << 20)

/* ------------------------------------------------------------ helpers */

struct tmp {
	char dir[64];
	char path[96];
};

static void tmp_make(struct tmp *t)
{
	const char *base = getenv("TMPDIR");

	snprintf(t->dir, sizeof(t->dir), "%s/grt-file-XXXXXX", base && *base ? base : "/tmp");
	cr_assert_not_null(mkdtemp(t->dir), "mkdtemp: %s", strerror(errno));
	snprintf(t->path, sizeof(t->path), "%s/f", t->dir);
}

static void tmp_remove(struct tmp *t)
{
	char p[128];

	snprintf(p, sizeof(p), "%s/f", t->dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/fifo", t->dir);
	unlink(p);
	cr_assert_eq(rmdir(t->dir), 0, "rmdir %s: %s", t->dir, strerror(errno));
}

/* A file of `size` pattern bytes, written with plain calls. */
static int pattern_file(const char *path, size_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	unsigned char *buf = malloc(MIB);

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	for (size_t at = 0; at < size; at += MIB) {
		size_t n = size - at < MIB ? size - at : MIB;

		grt_stream_fill(buf, n, at);
		cr_assert_eq(pwrite(fd, buf, n, (off_t)at), (ssize_t)n);
	}
	free(buf);
	return fd;
}

/* Whether any page of fd (size bytes) is in the page cache (mincore of a
 * mapping, which faults nothing in). */
static bool any_page_cached(int fd, size_t size)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t pages = (size + (size_t)page - 1) / (size_t)page;
	unsigned char *vec = malloc(pages);
	void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);

	cr_assert_not_null(vec);
	cr_assert_neq(map, MAP_FAILED, "mmap: %s", strerror(errno));
	cr_assert_eq(mincore(map, size, vec), 0, "mincore: %s", strerror(errno));
	munmap(map, size);
	bool cached = false;
	for (size_t i = 0; i < pages && !cached; i++)
		cached = vec[i] & 1;
	free(vec);
	return cached;
}

/* Drop fd's pages from the page cache: its next reads go to the disk.
 * DONTNEED skips pages it finds busy (a loaded machine's writeback or LRU
 * batches hold some now and then: a queued-read test saw its reads served
 * from the cache), so it is asked again until none is left. false if the
 * kernel kept some all along. */
static bool evict(int fd)
{
	struct stat sb;

	cr_assert_eq(fstat(fd, &sb), 0);
	for (int attempt = 0; attempt < 50; attempt++) {
		cr_assert_eq(fsync(fd), 0);
		cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
		if (sb.st_size == 0 || !any_page_cached(fd, (size_t)sb.st_size))
			return true;
	}
	return false;
}

static bool readiness_hub(void)
{
	return strcmp(grt_hub(), "io_uring") != 0;
}

/* Wait until the pool has nothing queued and every worker is idle: a job
 * whose caller left has run (and its cleanup, closing what it opened). */
static void pool_settle(void)
{
	struct gr_tpool_stats st;
	int64_t until = gr_now() + 10 * GR_SEC;

	for (;;) {
		assert_ok(gr_tpool_stats(&st));
		if (st.queued == 0 && st.idle == st.threads)
			return;
		cr_assert_lt(gr_now(), until, "the pool never settled: %u threads, %u idle, %zu queued",
			     st.threads, st.idle, st.queued);
		assert_ok(gr_sleep(GR_MSEC));
	}
}

/* Every worker of the pool blocked in a job until gate_release(). */
struct gate {
	int p[2];
	atomic_int started;
	unsigned n;
	gr_fiber *f[1024];
};

static void *gate_job(void *arg)
{
	struct gate *g = arg;
	char c;

	atomic_fetch_add(&g->started, 1);
	return read(g->p[0], &c, 1) == 1 ? NULL : (void *)1;
}

static void *gate_caller(void *arg)
{
	return (void *)(intptr_t)gr_tpool_run(gate_job, arg, NULL, GR_FOREVER);
}

static void pool_block(struct gate *g)
{
	struct gr_tpool_stats st;

	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(pipe2(g->p, O_CLOEXEC), 0);
	atomic_init(&g->started, 0);
	g->n = st.max;
	cr_assert_leq(g->n, 1024);
	for (unsigned i = 0; i < g->n; i++)
		g->f[i] = gr_spawn(gate_caller, g);
	int64_t until = gr_now() + 5 * GR_SEC;
	while ((unsigned)atomic_load(&g->started) < g->n) {
		cr_assert_lt(gr_now(), until, "the pool's workers did not all start");
		assert_ok(gr_sleep(GR_MSEC));
	}
}

static void pool_unblock(struct gate *g)
{
	for (unsigned i = 0; i < g->n; i++)
		cr_assert_eq(write(g->p[1], "x", 1), 1);
	for (unsigned i = 0; i < g->n; i++) {
		void *r;

		assert_ok(gr_join(g->f[i], &r, gr_now() + 5 * GR_SEC));
		cr_assert_null(r);
	}
	close(g->p[0]);
	close(g->p[1]);
}

/* A green call in a fiber of its own, to be killed or timed out. */
struct call {
	int fd;
	void *buf;
	size_t len;
	off_t off;
	const char *path;
	int flags;
	int64_t deadline;           /* the fiber's, through gr_deadline_set */
	ssize_t rc;
	int err;
	int64_t returned_at;
	atomic_bool done;
	int after_rc, after_err;    /* the next blocking call, after the first */
};

static void call_end(struct call *c, ssize_t rc)
{
	c->err = rc < 0 ? errno : 0;
	c->rc = rc;
	c->returned_at = gr_now();
	c->after_rc = gr_sleep(0);
	c->after_err = c->after_rc < 0 ? -c->after_rc : 0;
	if (gr_killed())
		gr_kill_ack(GR_FOREVER);
	atomic_store(&c->done, true);
}

static void *open_fn(void *arg)
{
	struct call *c = arg;

	gr_deadline_set(c->deadline);
	call_end(c, gr_open(c->path, c->flags));
	return NULL;
}

static void *pread_fn(void *arg)
{
	struct call *c = arg;

	gr_deadline_set(c->deadline);
	call_end(c, gr_pread(c->fd, c->buf, c->len, c->off));
	return NULL;
}

static void *read_fn(void *arg)
{
	struct call *c = arg;

	gr_deadline_set(c->deadline);
	call_end(c, gr_read(c->fd, c->buf, c->len));
	return NULL;
}

/* ------------------------------------------------------------ data */

Test(file, a_64_mib_file_written_and_read_back_byte_for_byte)
{
	const size_t size = 64 * MIB;
	struct tmp t;
	unsigned char *buf = malloc(MIB);
	struct stat st;

	tmp_make(&t);
	int fd = gr_open(t.path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "gr_open: %s", strerror(errno));
	for (size_t at = 0; at < size; at += MIB) {
		grt_stream_fill(buf, MIB, at);
		cr_assert_eq(gr_write(fd, buf, MIB), (ssize_t)MIB, "gr_write at %zu: %s", at,
			     strerror(errno));
	}
	cr_assert_eq(gr_fsync(fd), 0, "gr_fsync: %s", strerror(errno));
	cr_assert_eq(gr_fstat(fd, &st), 0, "gr_fstat: %s", strerror(errno));
	cr_assert_eq(st.st_size, (off_t)size);
	/* Back from the disk, then again from the page cache. */
	evict(fd);
	for (int pass = 0; pass < 2; pass++) {
		cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
		for (size_t at = 0; at < size; at += MIB) {
			memset(buf, 0, MIB);
			cr_assert_eq(gr_read(fd, buf, MIB), (ssize_t)MIB, "pass %d, gr_read at %zu: %s",
				     pass, at, strerror(errno));
			grt_stream_check(buf, MIB, at);
		}
		cr_assert_eq(gr_read(fd, buf, MIB), 0, "no end of file after 64 MiB");
	}
	cr_assert_eq(gr_close(fd), 0);
	free(buf);
	tmp_remove(&t);
}

Test(file, reads_at_offsets_and_at_the_position_from_the_disk_and_the_cache)
{
	const size_t size = 3 * MIB + 123; /* the last page is partial */
	static const off_t offs[] = { 0, 1, 4095, 4096, 4097, MIB - 1, 2 * MIB + 5000 };
	unsigned char buf[3 * 8192];
	struct tmp t;

	tmp_make(&t);
	int fd = pattern_file(t.path, size);
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 0)
			evict(fd);
		for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
			memset(buf, 0, sizeof(buf));
			cr_assert_eq(gr_pread(fd, buf, sizeof(buf), offs[i]), (ssize_t)sizeof(buf),
				     "pass %d, gr_pread at %lld: %s", pass, (long long)offs[i],
				     strerror(errno));
			grt_stream_check(buf, sizeof(buf), (uint64_t)offs[i]);
		}
		/* Across the end: the tail, whole; at and past it: 0. */
		off_t tail = (off_t)size - 1000;
		cr_assert_eq(gr_pread(fd, buf, sizeof(buf), tail), 1000);
		grt_stream_check(buf, 1000, (uint64_t)tail);
		cr_assert_eq(gr_pread(fd, buf, sizeof(buf), (off_t)size), 0);
		cr_assert_eq(gr_pread(fd, buf, sizeof(buf), (off_t)size + MIB), 0);
		/* At the position, which each read moves on. */
		cr_assert_eq(lseek(fd, 4000, SEEK_SET), 4000);
		cr_assert_eq(gr_read(fd, buf, 100), 100);
		cr_assert_eq(gr_read(fd, buf + 100, 200), 200);
		grt_stream_check(buf, 300, 4000);
		cr_assert_eq(lseek(fd, 0, SEEK_CUR), 4300, "gr_read did not move the position");
		struct iovec iov[3] = { { buf, 10 }, { buf + 10, 5000 }, { buf + 5010, 7 } };
		cr_assert_eq(gr_readv(fd, iov, 3), 5017);
		grt_stream_check(buf, 5017, 4300);
		cr_assert_eq(gr_pread(fd, buf, 10, 0), 10);
		cr_assert_eq(lseek(fd, 0, SEEK_CUR), 9317, "gr_pread moved the position");
		if (pass == 0)
			evict(fd);
	}
	/* Writes at offsets and at the position, read back through the cache. */
	unsigned char w[5000];
	memset(w, 0xa5, sizeof(w));
	cr_assert_eq(gr_pwrite(fd, w, sizeof(w), 10000), (ssize_t)sizeof(w));
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), 9317, "gr_pwrite moved the position");
	struct iovec wv[2] = { { w, 3 }, { w + 3, 4 } };
	cr_assert_eq(gr_writev(fd, wv, 2), 7);
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), 9324);
	cr_assert_eq(gr_pread(fd, buf, 20000, 9000), 20000);
	grt_stream_check(buf, 317, 9000);
	for (int i = 317; i < 324; i++)
		cr_assert_eq(buf[i], 0xa5);
	grt_stream_check(buf + 324, 10000 - 9324, 9324);
	for (int i = 1000; i < 6000; i++)
		cr_assert_eq(buf[i], 0xa5);
	grt_stream_check(buf + 6000, 14000, 15000);
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
}

/* ------------------------------------------------------------ metadata */

Test(file, open_stat_statx_sync_and_openat)
{
	struct tmp t;
	struct stat a, b;
	struct statx x;

	tmp_make(&t);
	int fd = gr_open(t.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	cr_assert_geq(fd, 0, "gr_open: %s", strerror(errno));
	cr_assert_eq(gr_write(fd, "hello", 5), 5);
	cr_assert_eq(gr_fsync(fd), 0);
	cr_assert_eq(gr_fdatasync(fd), 0);
	cr_assert_eq(gr_fstat(fd, &a), 0, "gr_fstat: %s", strerror(errno));
	cr_assert_eq(fstat(fd, &b), 0);
	cr_assert_eq(a.st_ino, b.st_ino);
	cr_assert_eq(a.st_dev, b.st_dev);
	cr_assert_eq(a.st_mode, b.st_mode);
	cr_assert_eq(a.st_mode & 0777, 0640);
	cr_assert_eq(a.st_size, 5);
	cr_assert_eq(a.st_nlink, b.st_nlink);
	cr_assert_eq(a.st_mtim.tv_sec, b.st_mtim.tv_sec);
	cr_assert_eq(a.st_mtim.tv_nsec, b.st_mtim.tv_nsec);
	cr_assert_eq(gr_close(fd), 0);

	cr_assert_eq(gr_statx(AT_FDCWD, t.path, 0, STATX_SIZE | STATX_MODE, &x), 0, "%s",
		     strerror(errno));
	cr_assert(x.stx_mask & STATX_SIZE);
	cr_assert_eq(x.stx_size, 5);
	cr_assert(S_ISREG(x.stx_mode));

	int dir = gr_open(t.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(dir, 0, "gr_open of a directory: %s", strerror(errno));
	cr_assert_eq(gr_statx(dir, "f", AT_SYMLINK_NOFOLLOW, STATX_SIZE, &x), 0);
	cr_assert_eq(x.stx_size, 5);
	fd = gr_openat(dir, "f", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0, "gr_openat: %s", strerror(errno));
	char buf[8];
	cr_assert_eq(gr_read(fd, buf, sizeof(buf)), 5);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	cr_assert_eq(gr_close(fd), 0);
	cr_assert_eq(gr_close(dir), 0);
	tmp_remove(&t);
}

Test(file, errors_are_those_of_the_system_calls)
{
	struct tmp t;
	struct stat st;
	struct statx x;
	char buf[16];
	int p[2];

	tmp_make(&t);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0); /* before `closed`: it must not take that number */
	int fd = pattern_file(t.path, 100);
	char sub[128];
	snprintf(sub, sizeof(sub), "%s/x", t.path);

	cr_assert_eq(gr_open("/nonexistent/greenring", O_RDONLY), -1);
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(gr_open(t.dir, O_WRONLY), -1);
	cr_assert_eq(errno, EISDIR);
	cr_assert_eq(gr_open(sub, O_RDONLY), -1);
	cr_assert_eq(errno, ENOTDIR);
	cr_assert_eq(gr_open(t.path, O_RDWR | O_CREAT | O_EXCL, 0600), -1);
	cr_assert_eq(errno, EEXIST);
	cr_assert_eq(gr_open(NULL, O_RDONLY), -1);
	cr_assert_eq(errno, EFAULT);
	cr_assert_eq(gr_openat(-5, "f", O_RDONLY), -1);
	cr_assert_eq(errno, EBADF);

	int dir = gr_open(t.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(dir, 0);
	cr_assert_eq(gr_read(dir, buf, sizeof(buf)), -1);
	cr_assert_eq(errno, EISDIR);
	cr_assert_eq(gr_close(dir), 0);

	int closed = dup(fd);
	cr_assert_eq(close(closed), 0);
	cr_assert_eq(gr_fstat(-1, &st), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_fstat(AT_FDCWD, &st), -1, "fstat(AT_FDCWD) is EBADF, not the cwd");
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_fstat(closed, &st), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_fstat(fd, NULL), -1);
	cr_assert_eq(errno, EFAULT);
	cr_assert_eq(gr_fsync(-1), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_fsync(closed), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_pread(closed, buf, sizeof(buf), 0), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_statx(closed, "", AT_EMPTY_PATH, STATX_SIZE, &x), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_statx(AT_FDCWD, "/nonexistent/greenring", 0, STATX_SIZE, &x), -1);
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(gr_statx(AT_FDCWD, t.path, 0x40000000, STATX_SIZE, &x), -1, "a bad flag");
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_statx(AT_FDCWD, t.path, 0, STATX__RESERVED, &x), -1, "a reserved mask bit");
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_statx(AT_FDCWD, t.path, 0, STATX_SIZE, NULL), -1);
	cr_assert_eq(errno, EFAULT);
	cr_assert_eq(gr_pread(fd, buf, sizeof(buf), -1), -1);
	cr_assert_eq(errno, EINVAL);

	cr_assert_eq(gr_fsync(p[0]), -1, "fsync of a pipe");
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_sendfile(p[1], p[0], NULL, 10), -1, "sendfile from a pipe");
	cr_assert_eq(errno, EINVAL);
	off_t neg = -1;
	cr_assert_eq(gr_sendfile(p[1], fd, &neg, 10), -1);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(gr_sendfile(p[1], closed, NULL, 10), -1);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(gr_close(p[1]), 0);
	cr_assert_eq(gr_close(fd), 0);
	cr_assert_eq(gr_close(fd), -1);
	cr_assert_eq(errno, EBADF);
	tmp_remove(&t);
}

/* ------------------------------------------------------------ blocked opens */

/* A FIFO in a new temporary directory, and a fiber opening it with
 * `flags` under the fiber deadline `deadline`: the open waits for the other
 * end. */
static gr_fiber *open_a_fifo(struct tmp *t, char *path, size_t len, struct call *c, int flags,
			     int64_t deadline)
{
	tmp_make(t);
	snprintf(path, len, "%s/fifo", t->dir);
	cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
	*c = (struct call){ .path = path, .flags = flags | O_CLOEXEC, .deadline = deadline };
	return gr_spawn(open_fn, c);
}

/* A reader's open of a FIFO waits for a writer: end it from outside. */
static void fifo_unblock(const char *path)
{
	int w = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);

	/* ENXIO: no reader is waiting any more (io_uring cancelled it). */
	cr_assert(w >= 0 || errno == ENXIO, "open for writing: %s", strerror(errno));
	if (w >= 0)
		close(w);
}

Test(file, the_hub_runs_other_fibers_while_an_open_of_a_fifo_waits)
{
	struct tmp t;
	char fifo[128];
	struct call c;
	gr_fiber *f = open_a_fifo(&t, fifo, sizeof(fifo), &c, O_RDONLY, GR_FOREVER);

	/* 20 turns of 1 ms sleeps: the hub is free while the open waits. */
	int64_t t0 = gr_now();
	for (int i = 0; i < 20; i++)
		assert_ok(gr_sleep(GR_MSEC));
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC);
	cr_assert(!atomic_load(&c.done), "the open of a FIFO did not wait for a writer");
	/* A green writer's open meets it. */
	int w = gr_open(fifo, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(w, 0, "gr_open for writing: %s", strerror(errno));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_geq(c.rc, 0, "the reader's open: %s", strerror(c.err));
	cr_assert_eq(gr_write(w, "x", 1), 1);
	char b = 0;
	cr_assert_eq(gr_read((int)c.rc, &b, 1), 1);
	cr_assert_eq(b, 'x');
	cr_assert_eq(gr_close(w), 0);
	cr_assert_eq(gr_read((int)c.rc, &b, 1), 0, "no end of file after the writer left");
	cr_assert_eq(gr_close((int)c.rc), 0);
	tmp_remove(&t);
}

Test(file, a_kill_during_a_blocked_open_returns_at_once)
{
	struct tmp t;
	char fifo[128];
	struct call c;
	gr_fiber *f = open_a_fifo(&t, fifo, sizeof(fifo), &c, O_RDONLY, GR_FOREVER);

	assert_ok(gr_sleep(20 * GR_MSEC));
	cr_assert(!atomic_load(&c.done));
	int64_t t0 = gr_now();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(c.rc, -1);
	cr_assert_eq(c.err, ECANCELED, "%s", strerror(c.err));
	cr_assert_lt(c.returned_at - t0, GR_SEC / 2, "the killed open did not return at once");
	/* The pool's open still waits: a writer ends it, and the fd it opened
	 * for nobody is closed (the teardown counts fds). */
	fifo_unblock(fifo);
	pool_settle();
	tmp_remove(&t);
}

Test(file, a_deadline_during_a_blocked_open_is_etimedout)
{
	struct tmp t;
	char fifo[128];
	struct call c;
	gr_fiber *f = open_a_fifo(&t, fifo, sizeof(fifo), &c, O_WRONLY, gr_now() + 50 * GR_MSEC);

	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(c.rc, -1);
	cr_assert_eq(c.err, ETIMEDOUT, "%s", strerror(c.err));
	cr_assert_geq(c.returned_at, c.deadline, "returned before its deadline");
	cr_assert_lt(c.returned_at - c.deadline, GR_SEC / 2);
	/* A writer's open waits for a reader: a reader ends it. */
	int r = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	cr_assert_geq(r, 0);
	pool_settle();
	close(r);
	tmp_remove(&t);
}

/* ------------------------------------------------------------ reads on the pool */

/* A file out of the page cache, and every worker of the pool busy: a read
 * of it waits in the pool's queue. (On io_uring, skipped: its reads are the
 * kernel's, nothing is queued on the pool.) */
static int queued_reads_ahead(struct tmp *t, struct gate *g)
{
	if (!readiness_hub())
		cr_skip_test("io_uring reads files itself: nothing is queued on the pool");
	tmp_make(t);
	int fd = pattern_file(t->path, 64 * 1024);
	if (!evict(fd))
		cr_skip_test("the kernel kept the file's pages cached: no read would queue");
	/* No readahead: a read's no-wait attempt fetches its own pages only,
	 * so the next read (of other pages) finds nothing in the cache. */
	cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
	pool_block(g);
	return fd;
}

/* Wait until the n calls wait in the pool's queue: true; false if one of
 * them ended first, served from the page cache (a page came back after
 * evict(): loaded machines see it, as a_thread_exits_while_its_fiber_waits_
 * for_a_read_on_the_pool notes), so there is nothing queued to test. */
static bool await_queued(struct call *const *calls, size_t n)
{
	struct gr_tpool_stats st;
	int64_t until = gr_now() + 5 * GR_SEC;

	for (;;) {
		assert_ok(gr_tpool_stats(&st));
		if (st.queued == n)
			return true;
		for (size_t i = 0; i < n; i++) {
			if (atomic_load(&calls[i]->done))
				return false;
		}
		cr_assert_lt(gr_now(), until, "%zu operations queued, not %zu", st.queued, n);
		assert_ok(gr_sleep(GR_MSEC));
	}
}

/* A read was served from the cache before it queued (await_queued): let
 * the rest finish, clean up, and skip. */
static void skip_served(struct gate *g, gr_fiber *const *fibers, size_t n, int fd, struct tmp *t)
{
	pool_unblock(g);
	for (size_t i = 0; i < n; i++)
		assert_ok(gr_join(fibers[i], NULL, gr_now() + 5 * GR_SEC));
	pool_settle();
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(t);
	cr_skip_test("a read was served from the cache: nothing was queued");
}

/* On the readiness hubs a read from the disk is an operation on the pool:
 * queued behind busy workers, a kill or a deadline drops it at once, and it
 * never touches the buffer. */
Test(file, a_queued_read_on_the_pool_is_dropped_by_a_kill_or_a_deadline)
{
	struct tmp t;
	struct gate g;
	unsigned char buf[4096];
	int fd = queued_reads_ahead(&t, &g);

	memset(buf, 0xee, sizeof(buf));
	struct call killed = { .fd = fd, .buf = buf, .len = sizeof(buf), .deadline = GR_FOREVER };
	/* Two seconds: both must be seen queued before the deadline drops
	 * one, which a loaded machine may take long to show (500 ms before;
	 * the failure that prompted it may as well have been a read served
	 * from the cache, which await_queued now tells apart). */
	struct call timed = { .fd = fd, .buf = buf, .len = sizeof(buf), .off = 32768,
			      .deadline = gr_now() + 2 * GR_SEC };
	gr_fiber *fk = gr_spawn(pread_fn, &killed);
	gr_fiber *ft = gr_spawn(pread_fn, &timed);
	if (!await_queued((struct call *[]){ &killed, &timed }, 2))
		skip_served(&g, (gr_fiber *[]){ fk, ft }, 2, fd, &t);
	struct gr_tpool_stats st;
	int64_t t0 = gr_now();
	assert_ok(gr_kill(fk));
	assert_ok(gr_join(fk, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(killed.err, ECANCELED, "%zd, %s", killed.rc, strerror(killed.err));
	cr_assert_lt(killed.returned_at - t0, GR_SEC / 2);
	assert_ok(gr_join(ft, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(timed.err, ETIMEDOUT, "%zd, %s", timed.rc, strerror(timed.err));
	cr_assert_geq(timed.returned_at, timed.deadline);
	cr_assert_lt(timed.returned_at - timed.deadline, GR_SEC / 2);
	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.queued, 0, "a dropped read is still queued");
	pool_unblock(&g);
	pool_settle();
	for (size_t i = 0; i < sizeof(buf); i++)
		cr_assert_eq(buf[i], 0xee, "a dropped read wrote into its buffer");
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
}

struct closer {
	int fd;
	int rc;
};

static void *close_fn(void *arg)
{
	struct closer *c = arg;

	c->rc = gr_close(c->fd);
	return NULL;
}

Test(file, gr_close_under_a_queued_read_wakes_it_with_ebadf)
{
	struct tmp t;
	struct gate g;
	unsigned char buf[4096];
	int fd = queued_reads_ahead(&t, &g);
	struct call r = { .fd = fd, .buf = buf, .len = sizeof(buf), .deadline = GR_FOREVER };
	gr_fiber *fr = gr_spawn(pread_fn, &r);
	if (!await_queued((struct call *[]){ &r }, 1))
		skip_served(&g, &fr, 1, fd, &t);
	struct closer c = { .fd = fd };
	gr_fiber *fc = gr_spawn(close_fn, &c);
	assert_ok(gr_join(fr, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(fc, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(r.err, EBADF, "%zd, %s", r.rc, strerror(r.err));
	cr_assert_eq(c.rc, 0);
	cr_assert_eq(fcntl(fd, F_GETFD), -1, "gr_close did not close");
	pool_unblock(&g);
	pool_settle();
	tmp_remove(&t);
}

struct exiting {
	int fd;
	unsigned char buf[4096];
	struct call r;
	bool ok;
	bool served;                 /* the read ended before it was seen queued */
};

static void *exit_mid_read(void *arg)
{
	struct exiting *e = arg;

	if (gr_hub_use(grt_hub()) != 0)
		return NULL;
	e->r = (struct call){ .fd = e->fd, .buf = e->buf, .len = sizeof(e->buf),
			      .deadline = GR_FOREVER };
	gr_spawn(pread_fn, &e->r);
	/* Wait until the read is queued on the pool, then leave. */
	int64_t until = gr_now() + 5 * GR_SEC;
	struct gr_tpool_stats st;
	while (gr_tpool_stats(&st) == 0 && st.queued == 0 && !atomic_load(&e->r.done) &&
	       gr_now() < until)
		gr_sleep(GR_MSEC);
	e->ok = st.queued == 1;
	e->served = atomic_load(&e->r.done);
	return NULL; /* the fiber is still waiting for its read */
}

/* A thread that exits while a fiber of its waits for a read on the pool:
 * the read is withdrawn and the thread's end does not wait for the pool. */
Test(file, a_thread_exits_while_its_fiber_waits_for_a_read_on_the_pool)
{
	struct tmp t;
	struct gate g;
	struct exiting e;
	pthread_t th;

	e.fd = queued_reads_ahead(&t, &g);
	int64_t t0 = gr_now();
	cr_assert_eq(pthread_create(&th, NULL, exit_mid_read, &e), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	if (e.served && !e.ok) {
		/* The page came into the cache after evict() (a loaded machine
		 * saw it once in about ten runs): the read needed no worker. */
		pool_unblock(&g);
		pool_settle();
		cr_assert_eq(gr_close(e.fd), 0);
		tmp_remove(&t);
		cr_skip_test("the read was served from the cache: nothing to withdraw");
	}
	cr_assert(e.ok, "the read was never queued");
	cr_assert_lt(gr_now() - t0, 2 * GR_SEC, "the thread's exit waited for the pool");
	struct gr_tpool_stats st;
	assert_ok(gr_tpool_stats(&st));
	cr_assert_eq(st.queued, 0, "the read of a gone thread is still queued");
	pool_unblock(&g);
	pool_settle();
	cr_assert_eq(gr_close(e.fd), 0);
	tmp_remove(&t);
}

/* A worker blocked in the middle of a read: the buffer is registered with
 * userfaultfd, so copying the file's bytes into it waits until the fault
 * handler (a plain thread here) supplies the page. A fault taken by the
 * hub's own thread (the page arrived in the cache before the first, no-wait
 * attempt: readahead can be that fast) is resolved at once and the test
 * tries again; a fault taken by a worker waits for the test's word. */
struct uffd_handler {
	int uffd;
	pid_t hub_tid;
	int told[2];     /* the handler says: 'h' (the hub faulted), 'w' (a worker) */
	int go[2];       /* the test says: 'g' resolve the worker's fault, 'q' quit */
	void *page;
	size_t page_size;
};

static int uffd_resolve(struct uffd_handler *h)
{
	struct uffdio_zeropage z = {
		.range = { .start = (uintptr_t)h->page, .len = h->page_size },
	};

	return ioctl(h->uffd, UFFDIO_ZEROPAGE, &z);
}

static void *uffd_main(void *arg)
{
	struct uffd_handler *h = arg;
	struct pollfd pfd[2] = { { .fd = h->uffd, .events = POLLIN }, { .fd = h->go[0], .events = POLLIN } };
	struct uffd_msg msg;
	char c;

	for (;;) {
		if (poll(pfd, 2, 20000) <= 0)
			return (void *)1;
		if (pfd[1].revents)
			return read(h->go[0], &c, 1) == 1 && c == 'q' ? NULL : (void *)2;
		if (read(h->uffd, &msg, sizeof(msg)) != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		bool hub = (pid_t)msg.arg.pagefault.feat.ptid == h->hub_tid;
		if (write(h->told[1], hub ? "h" : "w", 1) != 1)
			return (void *)3;
		if (!hub && (read(h->go[0], &c, 1) != 1 || c != 'g'))
			return (void *)4;
		if (uffd_resolve(h) != 0)
			return (void *)5;
	}
}

Test(file, a_running_read_on_the_pool_is_waited_for_and_keeps_its_bytes)
{
	struct tmp t;
	struct uffd_handler h = { .page_size = (size_t)sysconf(_SC_PAGESIZE), .hub_tid = gettid() };
	pthread_t th;

	if (!readiness_hub())
		cr_skip_test("io_uring reads files itself: no read runs on the pool");
	h.uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (h.uffd < 0)
		cr_skip_test("userfaultfd: %s", strerror(errno));
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_THREAD_ID };
	cr_assert_eq(ioctl(h.uffd, UFFDIO_API, &api), 0, "UFFDIO_API: %s", strerror(errno));
	h.page = mmap(NULL, h.page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(h.page, MAP_FAILED);
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)h.page, .len = h.page_size },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	cr_assert_eq(ioctl(h.uffd, UFFDIO_REGISTER, &reg), 0, "UFFDIO_REGISTER: %s", strerror(errno));
	cr_assert_eq(pipe2(h.told, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(h.go, O_CLOEXEC), 0);
	cr_assert_eq(pthread_create(&th, NULL, uffd_main, &h), 0);

	tmp_make(&t);
	int fd = pattern_file(t.path, 64 * 1024);
	bool on_a_worker = false;
	for (int attempt = 0; attempt < 10 && !on_a_worker; attempt++) {
		evict(fd);
		cr_assert_eq(madvise(h.page, h.page_size, MADV_DONTNEED), 0); /* missing again */
		struct call r = { .fd = fd, .buf = h.page, .len = h.page_size, .off = 8192,
				  .deadline = GR_FOREVER };
		gr_fiber *f = gr_spawn(pread_fn, &r);
		char who;
		int64_t old = gr_deadline_set(gr_now() + 5 * GR_SEC);
		cr_assert_eq(gr_read(h.told[0], &who, 1), 1, "no fault: %s", strerror(errno));
		gr_deadline_set(old);
		on_a_worker = who == 'w';
		if (on_a_worker) {
			/* The worker is inside the read: a kill cannot take it
			 * back, and the caller must not leave before it ends. */
			assert_ok(gr_kill(f));
			assert_ok(gr_sleep(50 * GR_MSEC));
			cr_assert(!atomic_load(&r.done),
				  "the killed caller left while a worker wrote into its buffer");
			cr_assert_eq(write(h.go[1], "g", 1), 1);
		}
		assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
		cr_assert_eq(r.rc, (ssize_t)h.page_size, "the read's real result: %zd, %s", r.rc,
			     strerror(r.err));
		grt_stream_check(h.page, h.page_size, 8192);
		if (on_a_worker)
			cr_assert_eq(r.after_rc, -ECANCELED, "the kill did not fail the next call");
	}
	cr_assert_eq(write(h.go[1], "q", 1), 1);
	void *hr;
	cr_assert_eq(pthread_join(th, &hr), 0);
	cr_assert_null(hr, "the fault handler failed: %p", hr);
	munmap(h.page, h.page_size);
	close(h.uffd);
	close(h.told[0]);
	close(h.told[1]);
	close(h.go[0]);
	close(h.go[1]);
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
	if (!on_a_worker)
		cr_skip_test("the page cache was faster than the pool 10 times: nothing to test");
}

/* ------------------------------------------------------------ reused numbers */

/* greenring remembers what a number names (a hint); a program that closes
 * it with plain close() and gets the number back for another kind of file
 * must still get right answers: a socket's number reused by a file reads
 * the file, a file's number reused by a pipe waits for the pipe (and never
 * blocks a worker on it). */
Test(file, a_number_reused_behind_our_back_for_another_kind_of_file)
{
	struct tmp t;
	int sv[2], p[2];
	unsigned char buf[4096];

	tmp_make(&t);
	int fd = pattern_file(t.path, 64 * 1024);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(write(sv[1], "s", 1), 1);
	cr_assert_eq(gr_read(sv[0], buf, 1), 1); /* the hint: a stream */
	cr_assert_eq(dup3(fd, sv[0], O_CLOEXEC), sv[0]); /* now a file */
	evict(fd);
	cr_assert_eq(gr_pread(sv[0], buf, sizeof(buf), 4096), (ssize_t)sizeof(buf), "%s",
		     strerror(errno));
	grt_stream_check(buf, sizeof(buf), 4096);

	cr_assert_eq(gr_pread(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf)); /* the hint: a file */
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(dup3(p[0], fd, O_CLOEXEC), fd); /* now an empty pipe */
	struct call r = { .fd = fd, .buf = buf, .len = sizeof(buf),
			  .deadline = gr_now() + 50 * GR_MSEC };
	gr_fiber *f = gr_spawn(read_fn, &r);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(r.err, ETIMEDOUT, "a read of an empty pipe: %zd, %s", r.rc, strerror(r.err));
	r = (struct call){ .fd = fd, .buf = buf, .len = sizeof(buf), .deadline = GR_FOREVER };
	f = gr_spawn(read_fn, &r);
	assert_ok(gr_sleep(5 * GR_MSEC));
	cr_assert_eq(gr_write(p[1], "pipe", 4), 4);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_eq(r.rc, 4, "%zd, %s", r.rc, strerror(r.err));
	cr_assert_eq(memcmp(buf, "pipe", 4), 0);
	pool_settle(); /* no worker is stuck on the pipe */
	cr_assert_eq(gr_close(fd), 0);
	cr_assert_eq(gr_close(p[0]), 0);
	cr_assert_eq(gr_close(p[1]), 0);
	cr_assert_eq(gr_close(sv[0]), 0);
	cr_assert_eq(gr_close(sv[1]), 0);
	tmp_remove(&t);
}

/* ------------------------------------------------------------ sendfile */

struct drain {
	int fd;
	size_t want;
	size_t got;
	uint64_t from;   /* the file offset of the first byte */
	bool ok;
};

static void *drain_fn(void *arg)
{
	struct drain *d = arg;
	unsigned char *buf = malloc(256 * 1024);

	d->ok = true;
	while (d->got < d->want) {
		ssize_t n = gr_recv(d->fd, buf, 256 * 1024, 0);

		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n && d->ok; i++)
			d->ok = buf[i] == grt_stream_byte(d->from + d->got + (size_t)i);
		d->got += (size_t)n;
	}
	free(buf);
	return NULL;
}

static void sendfile_and_check(int sock[2], int fd, off_t *offset, size_t count, off_t from,
			       ssize_t expect)
{
	struct drain d = { .fd = sock[1], .want = (size_t)expect, .from = (uint64_t)from };
	gr_fiber *f = gr_spawn(drain_fn, &d);

	ssize_t n = gr_sendfile(sock[0], fd, offset, count);
	cr_assert_eq(n, expect, "gr_sendfile: %zd (%s), expected %zd", n, n < 0 ? strerror(errno) : "",
		     expect);
	assert_ok(gr_join(f, NULL, gr_now() + 20 * GR_SEC));
	cr_assert_eq(d.got, (size_t)expect);
	cr_assert(d.ok, "the bytes received are not the file's");
}

Test(file, sendfile_of_a_16_mib_file_to_a_socket_byte_for_byte)
{
	const size_t size = 16 * MIB;
	struct tmp t;
	int sock[2];

	tmp_make(&t);
	int fd = pattern_file(t.path, size);
	grt_tcp_pair(sock);
	for (int pass = 0; pass < 2; pass++) {
		/* From the disk (the pool's sendfile on epoll and poll), then
		 * from the page cache (sent at once). */
		if (pass == 0)
			evict(fd);
		off_t off = 0;
		cr_assert_eq(lseek(fd, 5, SEEK_SET), 5);
		sendfile_and_check(sock, fd, &off, size, 0, (ssize_t)size);
		cr_assert_eq(off, (off_t)size, "*offset not advanced");
		cr_assert_eq(lseek(fd, 0, SEEK_CUR), 5, "the position moved with an offset given");
	}
	/* From the position, which moves; past the end: up to it. */
	cr_assert_eq(lseek(fd, (off_t)(size - 3 * MIB - 7), SEEK_SET), (off_t)(size - 3 * MIB - 7));
	sendfile_and_check(sock, fd, NULL, 2 * MIB, (off_t)(size - 3 * MIB - 7), (ssize_t)(2 * MIB));
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), (off_t)(size - MIB - 7));
	sendfile_and_check(sock, fd, NULL, 4 * MIB, (off_t)(size - MIB - 7), (ssize_t)(MIB + 7));
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), (off_t)size);
	cr_assert_eq(gr_sendfile(sock[0], fd, NULL, MIB), 0, "no end of file");
	cr_assert_eq(gr_sendfile(sock[0], fd, NULL, 0), 0);
	cr_assert_eq(gr_close(sock[0]), 0);
	cr_assert_eq(gr_close(sock[1]), 0);
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
}

struct sender {
	int out, in;
	size_t count;
	ssize_t rc;
	int err;
};

static void *send_fn(void *arg)
{
	struct sender *s = arg;

	s->rc = gr_sendfile(s->out, s->in, NULL, s->count);
	s->err = s->rc < 0 ? errno : 0;
	return NULL;
}

/* The program clears the O_NONBLOCK the runtime set on the socket while a
 * gr_sendfile waits for room in it (fcntl behind the runtime's back). When
 * room comes, the next chunk must not be a sendfile(2) that blocks the
 * hub's thread, and every fiber on it, until the whole chunk is sent. */
Test(file, sendfile_to_a_socket_made_blocking_behind_the_back_blocks_no_thread)
{
	const size_t size = 4 * MIB;
	struct tmp t;
	int sock[2], small = 64 * 1024;

	tmp_make(&t);
	int fd = pattern_file(t.path, size); /* in the page cache: sent at once */
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock), 0);
	cr_assert_eq(setsockopt(sock[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
	struct sender s = { .out = sock[0], .in = fd, .count = size };
	gr_fiber *fs = gr_spawn(send_fn, &s);
	assert_ok(gr_sleep(0)); /* it fills the socket and waits for room */
	cr_assert_eq(s.rc, 0, "gr_sendfile returned %zd before anyone read", s.rc);
	int fl = fcntl(sock[0], F_GETFL);
	cr_assert_eq(fcntl(sock[0], F_SETFL, fl & ~O_NONBLOCK), 0);

	struct grt_watchdog w;
	grt_watchdog_start(&w, 2 * GR_SEC, -1, sock[1]);
	struct drain d = { .fd = sock[1], .want = size };
	struct gr_spawn_opts opts = { .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *fd_drain = gr_spawn_with(&opts, drain_fn, &d);
	assert_ok(gr_join(fd_drain, NULL, gr_now() + 20 * GR_SEC));
	assert_ok(gr_join(fs, NULL, gr_now() + 20 * GR_SEC));
	bool rescued = grt_watchdog_stop(&w);
	cr_assert(!rescued, "gr_sendfile blocked the hub's thread in sendfile(2) for 2 s "
			    "(the socket made blocking again behind the runtime's back)");
	cr_assert_eq(s.rc, (ssize_t)size, "gr_sendfile: %zd (%s)", s.rc, strerror(s.err));
	cr_assert_eq(d.got, size);
	cr_assert(d.ok, "the bytes received are not the file's");
	cr_assert_eq(gr_close(sock[0]), 0);
	cr_assert_eq(gr_close(sock[1]), 0);
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
}

/* Nobody reads the socket: the sender parks until it is killed, and
 * reports what it sent; the file's position says the same. */
Test(file, a_kill_during_sendfile_returns_what_was_sent)
{
	struct tmp t;
	int sock[2];

	tmp_make(&t);
	int fd = pattern_file(t.path, 16 * MIB);
	grt_tcp_pair(sock);
	struct sender s = { .out = sock[0], .in = fd, .count = 16 * MIB };
	gr_fiber *f = gr_spawn(send_fn, &s);
	assert_ok(gr_sleep(50 * GR_MSEC));
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	cr_assert_gt(s.rc, 0, "nothing sent: %s", strerror(s.err));
	cr_assert_lt(s.rc, (ssize_t)(16 * MIB), "a socket nobody reads took 16 MiB");
	cr_assert_eq(lseek(fd, 0, SEEK_CUR), (off_t)s.rc, "the position is not what was sent");
	struct drain d = { .fd = sock[1], .want = (size_t)s.rc };
	drain_fn(&d);
	cr_assert_eq(d.got, (size_t)s.rc);
	cr_assert(d.ok);
	cr_assert_eq(gr_close(sock[0]), 0);
	cr_assert_eq(gr_close(sock[1]), 0);
	cr_assert_eq(gr_close(fd), 0);
	tmp_remove(&t);
}
