/* micro_patch.c — what the patch library (libgreenring-patch.so,
 * docs/patching.md) adds to a libc call.
 *
 * The library is loaded here with dlopen(RTLD_LOCAL), so it interposes
 * nothing in this program: its definitions are called through pointers
 * side by side with libc's own, in the same loop. Two calls:
 *   - clock_nanosleep on CLOCK_THREAD_CPUTIME_ID, which glibc refuses
 *     (EINVAL) without entering the kernel: the library's added cost alone,
 *     on a call that costs a few ns;
 *   - read(-1), a real system call (EBADF), for scale.
 * "no hub" runs on a thread that never used greenring: the cost every
 * thread of a patched program pays (the goal: <= 5 ns added). The
 * last pair runs in a fiber, reading one ready byte from a socketpair: the
 * green path when nothing has to wait (learn the fd, recv MSG_DONTWAIT). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <greenring.h>

#include "micro.h"

typedef int (*cns_fn)(clockid_t, int, const struct timespec *, struct timespec *);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);

static void *patch_lib(void)
{
	static void *h;

	if (!h && !(h = dlopen(GREENRING_PATCH_LIBRARY, RTLD_NOW | RTLD_LOCAL)))
		fprintf(stderr, "micro: %s\n", dlerror());
	return h;
}

static void *patched(const char *name)
{
	void *h = patch_lib();

	return h ? dlsym(h, name) : NULL;
}

/* ns per call of f, over about budget_ns. */
#define TIME_CALLS(budget_ns, call)                                       \
	({                                                                \
		long iters_ = 0;                                          \
		int64_t start_ = gr_now(), elapsed_;                      \
		do {                                                      \
			for (int i_ = 0; i_ < 10000; i_++) {              \
				call;                                     \
			}                                                 \
			iters_ += 10000;                                  \
			elapsed_ = gr_now() - start_;                     \
		} while (elapsed_ < (budget_ns));                         \
		(double)elapsed_ / (double)iters_;                        \
	})

static const struct timespec one_ns = { 0, 1 };

static double cns_with(cns_fn volatile f, int64_t budget_ns)
{
	if (!f)
		return -1;
	return TIME_CALLS(budget_ns, f(CLOCK_THREAD_CPUTIME_ID, 0, &one_ns, NULL));
}

static double cns_libc(int64_t budget_ns)
{
	return cns_with(clock_nanosleep, budget_ns);
}

static double cns_patched(int64_t budget_ns)
{
	return cns_with((cns_fn)patched("clock_nanosleep"), budget_ns);
}

/* The added cost itself, on a shared machine whose speed drifts: batches
 * of libc's and the library's calls alternate, and the median of the
 * per-batch differences is kept. */
static double cns_added(int64_t budget_ns)
{
	cns_fn volatile mine = (cns_fn)patched("clock_nanosleep"), libc = clock_nanosleep;
	enum { BATCH = 2000, MAX_BATCHES = 4096 };
	static double diff[MAX_BATCHES];
	int n = 0;
	int64_t end = gr_now() + budget_ns;

	if (!mine)
		return -1;
	while (n < MAX_BATCHES && gr_now() < end) {
		int64_t t0 = gr_now();
		for (int i = 0; i < BATCH; i++)
			libc(CLOCK_THREAD_CPUTIME_ID, 0, &one_ns, NULL);
		int64_t t1 = gr_now();
		for (int i = 0; i < BATCH; i++)
			mine(CLOCK_THREAD_CPUTIME_ID, 0, &one_ns, NULL);
		int64_t t2 = gr_now();
		diff[n++] = (double)((t2 - t1) - (t1 - t0)) / BATCH;
	}
	return micro_median(diff, (size_t)n);
}

static double badread_with(read_fn volatile f, int64_t budget_ns)
{
	char c;

	if (!f)
		return -1;
	return TIME_CALLS(budget_ns, f(-1, &c, 1));
}

static double badread_libc(int64_t budget_ns)
{
	return badread_with(read, budget_ns);
}

static double badread_patched(int64_t budget_ns)
{
	return badread_with((read_fn)patched("read"), budget_ns);
}

/* In a fiber (this thread's main context, with a hub): write one byte,
 * read it back, both through f. */
static double ready_read_with(read_fn volatile rf, write_fn volatile wf, int64_t budget_ns)
{
	int s[2];
	char c = 'x';

	if (!rf || !wf || gr_hub_name() == NULL || socketpair(AF_UNIX, SOCK_STREAM, 0, s) < 0)
		return -1;
	double ns = TIME_CALLS(budget_ns, (wf(s[0], &c, 1), rf(s[1], &c, 1)));
	close(s[0]);
	close(s[1]);
	return ns;
}

static double ready_read_libc(int64_t budget_ns)
{
	return ready_read_with(read, write, budget_ns);
}

static double ready_read_patched(int64_t budget_ns)
{
	return ready_read_with((read_fn)patched("read"), (write_fn)patched("write"), budget_ns);
}

const struct micro_case micro_patch_cases[] = {
	{ "libc clock_nanosleep EINVAL, no hub", "ns", false, true, cns_libc },
	{ "patched clock_nanosleep, no hub", "ns", false, true, cns_patched },
	{ "patched - libc, interleaved, no hub", "ns", false, true, cns_added },
	{ "libc read(-1) EBADF, no hub", "ns", false, true, badread_libc },
	{ "patched read(-1), no hub", "ns", false, true, badread_patched },
	{ "libc write+read 1 B, fiber", "ns", false, false, ready_read_libc },
	{ "patched write+read 1 B, fiber", "ns", false, false, ready_read_patched },
	{ 0 },
};
