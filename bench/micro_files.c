/* micro_files.c — bench/micro cases for names and files: a lookup of
 * localhost through the thread pool, 4 KiB reads (at the position) and writes
 * (at offsets) of a file in the page cache, an open and close, each beside the plain system call on the
 * same machine (the hub-independent rows). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <greenring.h>

#include "micro.h"

#define FILE_SIZE (1 << 20)
#define IO_SIZE 4096

/* The time of one op(arg), calibrated on a short run to last ~budget_ns. */
static double ns_per(void (*op)(void *), void *arg, int64_t budget_ns)
{
	long n = 200;

	for (int pass = 0; pass < 2; pass++) {
		int64_t start = gr_now();

		for (long i = 0; i < n; i++)
			op(arg);
		double elapsed = (double)(gr_now() - start);
		if (pass == 1)
			return elapsed / (double)n;
		n = (long)((double)n * (double)budget_ns / (elapsed + 1));
		if (n < 100)
			n = 100;
	}
	return 0;
}

/* ---------------------------------------------------- names */

static const struct addrinfo stream = { .ai_socktype = SOCK_STREAM };

static void lookup(void *green)
{
	struct addrinfo *res;
	int rc = green ? gr_getaddrinfo("localhost", "80", &stream, &res, GR_FOREVER)
		       : getaddrinfo("localhost", "80", &stream, &res);

	if (rc == 0)
		freeaddrinfo(res);
}

static double gr_getaddrinfo_localhost(int64_t budget_ns)
{
	return ns_per(lookup, (void *)1, budget_ns);
}

static double getaddrinfo_localhost(int64_t budget_ns)
{
	return ns_per(lookup, NULL, budget_ns);
}

/* ---------------------------------------------------- files */

/* A case on a file: the calls it makes, green or plain. */
struct file {
	char path[64];
	int fd;
	char buf[IO_SIZE];
	unsigned page;
	ssize_t (*read)(int, void *, size_t);
	ssize_t (*pwrite)(int, const void *, size_t, off_t);
	int (*open)(const char *, int, ...);
	int (*close)(int);
};

/* A 1 MiB file, in the page cache (just written), under TMPDIR or /tmp. */
static bool file_open(struct file *f)
{
	const char *dir = getenv("TMPDIR");

	snprintf(f->path, sizeof(f->path), "%s/grmicro-XXXXXX", dir && *dir ? dir : "/tmp");
	f->fd = mkstemp(f->path);
	if (f->fd < 0)
		return false;
	memset(f->buf, 'x', sizeof(f->buf));
	for (int at = 0; at < FILE_SIZE; at += IO_SIZE)
		if (pwrite(f->fd, f->buf, IO_SIZE, at) != IO_SIZE)
			return false;
	f->page = 0;
	return true;
}

/* Page by page through the file, so every call is on another page. */
static off_t next_page(struct file *f)
{
	return (off_t)(f->page++ % (FILE_SIZE / IO_SIZE)) * IO_SIZE;
}

/* Through the file at its position, back to the start after the last page
 * (one lseek in 256 reads). */
static void read_page(void *p)
{
	struct file *f = p;

	if (next_page(f) == 0)
		(void)lseek(f->fd, 0, SEEK_SET);
	(void)f->read(f->fd, f->buf, IO_SIZE);
}

static void write_page(void *p)
{
	struct file *f = p;

	(void)f->pwrite(f->fd, f->buf, IO_SIZE, next_page(f));
}

static void open_close(void *p)
{
	struct file *f = p;
	int fd = f->open(f->path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0)
		f->close(fd);
}

static double on_a_file(void (*op)(void *), bool green, int64_t budget_ns)
{
	struct file f = {
		.read = green ? gr_read : read,
		.pwrite = green ? gr_pwrite : pwrite,
		.open = green ? gr_open : open,
		.close = green ? gr_close : close,
	};

	if (!file_open(&f))
		return 0;
	double ns = ns_per(op, &f, budget_ns);
	close(f.fd);
	unlink(f.path);
	return ns;
}

static double gr_read_4k(int64_t budget_ns)
{
	return on_a_file(read_page, true, budget_ns);
}

static double read_4k(int64_t budget_ns)
{
	return on_a_file(read_page, false, budget_ns);
}

static double gr_pwrite_4k(int64_t budget_ns)
{
	return on_a_file(write_page, true, budget_ns);
}

static double pwrite_4k(int64_t budget_ns)
{
	return on_a_file(write_page, false, budget_ns);
}

static double gr_open_and_close(int64_t budget_ns)
{
	return on_a_file(open_close, true, budget_ns);
}

static double open_and_close(int64_t budget_ns)
{
	return on_a_file(open_close, false, budget_ns);
}

const struct micro_case micro_files_cases[] = {
	{ "getaddrinfo localhost (plain)", "ns", false, true, getaddrinfo_localhost },
	{ "gr_getaddrinfo localhost (pool)", "ns", false, false, gr_getaddrinfo_localhost },
	{ "read(2) 4 KiB, page cache", "ns", false, true, read_4k },
	{ "gr_read 4 KiB, page cache", "ns", false, false, gr_read_4k },
	{ "pwrite(2) 4 KiB, page cache", "ns", false, true, pwrite_4k },
	{ "gr_pwrite 4 KiB, page cache", "ns", false, false, gr_pwrite_4k },
	{ "open+close (plain)", "ns", false, true, open_and_close },
	{ "gr_open+gr_close", "ns", false, false, gr_open_and_close },
	{ 0 },
};
