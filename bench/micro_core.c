/* micro_core.c — micro-benchmark cases of the core: switches, spawns,
 * memory per parked fiber, an I/O round trip and a burst of ready reads. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <greenring.h>

#include "../runtime/context.h"
#include "micro.h"

/* ---------------------------------------------------- raw fcontext */

static void raw_partner(gr__transfer t)
{
	/* Bounce straight back, forever: each jump here is half a round trip. */
	for (;;)
		t = jump_fcontext(t.fctx, NULL);
}

static double raw_fcontext_round_trip(int64_t budget_ns)
{
	size_t size = 64 * 1024;
	char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (stack == MAP_FAILED)
		return -1;
	gr__fcontext partner = make_fcontext(stack + size, size, raw_partner);
	long iters = 0, batch = 100000;
	int64_t start = gr_now(), elapsed;

	do {
		for (long i = 0; i < batch; i++) {
			gr__transfer t = jump_fcontext(partner, NULL);

			partner = t.fctx;
		}
		iters += batch;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	munmap(stack, size);
	return (double)elapsed / (double)iters;
}

/* The same ping-pong, but each side switches from inside a function that
 * then returns, as any yield must: this costs several times the bare loop
 * on this machine, so it is the floor a fiber yield can be held to. */
struct raw_fiber {
	gr__fcontext ctx;
	struct raw_fiber *other;
};

static struct raw_fiber raw_a, raw_b;
static struct raw_fiber *raw_current;

__attribute__((noinline)) static void raw_switch(void)
{
	struct raw_fiber *self = raw_current, *to = self->other;

	raw_current = to;
	gr__transfer t = jump_fcontext(to->ctx, self);
	((struct raw_fiber *)t.data)->ctx = t.fctx;
}

static void raw_switch_partner(gr__transfer t)
{
	((struct raw_fiber *)t.data)->ctx = t.fctx;
	for (;;)
		raw_switch();
}

/* The partner's stack; NULL if it cannot be mapped. */
static char *raw_switch_begin(size_t size)
{
	char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (stack == MAP_FAILED)
		return NULL;
	raw_a.other = &raw_b;
	raw_b.other = &raw_a;
	raw_b.ctx = make_fcontext(stack + size, size, raw_switch_partner);
	raw_current = &raw_a;
	return stack;
}

/* ns for `iters` round trips of the floor's loop. */
static double timed_raw_switches(long iters)
{
	int64_t start = gr_now();

	for (long i = 0; i < iters; i++)
		raw_switch();
	return (double)(gr_now() - start);
}

static double raw_switch_function_round_trip(int64_t budget_ns)
{
	size_t size = 64 * 1024;
	char *stack = raw_switch_begin(size);

	if (!stack)
		return -1;
	long iters = 0, batch = 100000;
	double elapsed = 0;

	do {
		elapsed += timed_raw_switches(batch);
		iters += batch;
	} while (elapsed < (double)budget_ns);
	/* The partner is left parked on its stack; nothing refers to it. */
	munmap(stack, size);
	return elapsed / (double)iters;
}

/* ---------------------------------------------------- yield */

struct yield_arg {
	long iters;
};

static void *yielder(void *p)
{
	struct yield_arg *a = p;

	for (long i = 0; i < a->iters; i++)
		gr_sleep(0);
	return NULL;
}

static double timed_yields(long iters)
{
	struct yield_arg a = { .iters = iters };
	int64_t start = gr_now();
	gr_fiber *x = gr_spawn(yielder, &a), *y = gr_spawn(yielder, &a);

	gr_join(x, NULL, GR_FOREVER);
	gr_join(y, NULL, GR_FOREVER);
	return (double)(gr_now() - start);
}

/* Two fibers yielding to each other: one round trip is A→B→A. */
static double yield_round_trip(int64_t budget_ns)
{
	long iters = 10000;
	double elapsed = timed_yields(iters); /* warm-up and calibration */

	iters = (long)((double)iters * (double)budget_ns / (elapsed + 1));
	if (iters < 1000)
		iters = 1000;
	return timed_yields(iters) / (double)iters;
}

/* The yield against the floor, in one process: the host runs this VM's CPUs
 * at speeds that differ from one process to the next by more than the gap
 * being measured, so the two rows above, each from its own runs, can put
 * the same code at 1.15 or 1.30 times the floor. Here short slices of each
 * alternate (yield, floor, yield, ...), each slice's ratio is taken against
 * the floor slices on either side of it, and the median ratio is the
 * figure. */
static double yield_over_floor(int64_t budget_ns)
{
	enum { SLICES = 21 };
	size_t size = 64 * 1024;
	char *stack = raw_switch_begin(size);

	if (!stack)
		return -1;
	/* Slices of about budget / (2 * SLICES) each, sized by the yield. */
	long iters = 20000;
	double per = timed_yields(iters) / (double)iters;
	iters = (long)((double)budget_ns / (2.0 * SLICES) / (per + 0.001));
	if (iters < 1000)
		iters = 1000;
	double floor_ns[SLICES + 1], ratio[SLICES];

	floor_ns[0] = timed_raw_switches(iters);
	for (int i = 0; i < SLICES; i++) {
		double yield_ns = timed_yields(iters);

		floor_ns[i + 1] = timed_raw_switches(iters);
		ratio[i] = 2.0 * yield_ns / (floor_ns[i] + floor_ns[i + 1]);
	}
	munmap(stack, size);
	return micro_median(ratio, SLICES);
}

/* ---------------------------------------------------- spawn */

static void *nothing(void *p)
{
	return p;
}

static double spawn_join_rate(int64_t budget_ns)
{
	long n = 0;
	int64_t start = gr_now(), elapsed;

	do {
		for (int i = 0; i < 10000; i++) {
			gr_fiber *f = gr_spawn(nothing, NULL);

			if (!f || gr_join(f, NULL, GR_FOREVER) != 0)
				return -1;
		}
		n += 10000;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	return (double)n / ((double)elapsed / 1e9) / 1e6;
}

static void nothing_n(void *p)
{
	(void)p;
}

static double spawn_n_burst_rate(int64_t budget_ns)
{
	long n = 0;
	int64_t start = gr_now(), elapsed;

	do {
		for (int i = 0; i < 10000; i++) {
			if (gr_spawn_n(nothing_n, NULL) != 0)
				return -1;
		}
		gr_hub_join(GR_FOREVER);
		n += 10000;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	return (double)n / ((double)elapsed / 1e9) / 1e6;
}

/* ---------------------------------------------------- memory */

long micro_rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, resident = 0;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *parked_reader(void *p)
{
	int fd = *(int *)p;

	/* Parked in I/O, as a server's idle connection would be. */
	gr_wait_fd(fd, POLLIN, GR_FOREVER);
	return NULL;
}

#define PARKED_FIBERS 100000

/* RSS added per fiber parked on I/O, for 100k fibers. */
static double rss_per_parked_fiber(int64_t budget_ns)
{
	static gr_fiber *fibers[PARKED_FIBERS];
	int p[2];

	(void)budget_ns;
	if (pipe(p) != 0)
		return -1;
	gr_sleep(0); /* the hub and its loop exist before the baseline */
	long before = micro_rss_kib();
	int n = 0;
	for (; n < PARKED_FIBERS; n++) {
		fibers[n] = gr_spawn(parked_reader, &p[0]);
		if (!fibers[n]) {
			fprintf(stderr, "micro: spawn %d failed: %m\n", n);
			break;
		}
	}
	gr_sleep(0); /* every fiber runs up to its park */
	long after = micro_rss_kib();
	char c = 1;
	if (write(p[1], &c, 1) != 1)
		return -1;
	for (int i = 0; i < n; i++)
		gr_join(fibers[i], NULL, GR_FOREVER);
	gr_close(p[0]);
	close(p[1]);
	return n ? (double)(after - before) / n : -1;
}

/* ---------------------------------------------------- I/O */

struct pingpong {
	int in, out;
	long iters;
};

static void *ponger(void *p)
{
	struct pingpong *pp = p;
	char c;

	for (long i = 0; i < pp->iters; i++) {
		if (gr_read(pp->in, &c, 1) != 1 || gr_write(pp->out, &c, 1) != 1)
			break;
	}
	return NULL;
}

/* One byte there and back between two fibers over two pipes: the cost of a
 * green read+write pair through the hub, per round trip. */
static double pipe_round_trip(int64_t budget_ns)
{
	int a[2], b[2];
	long iters = 20000;

	if (pipe(a) || pipe(b))
		return -1;
	for (int pass = 0; pass < 2; pass++) {
		struct pingpong pp = { .in = a[0], .out = b[1], .iters = iters };
		int64_t start = gr_now();
		gr_fiber *f = gr_spawn(ponger, &pp);
		char c = 'x';

		for (long i = 0; i < iters; i++) {
			if (gr_write(a[1], &c, 1) != 1 || gr_read(b[0], &c, 1) != 1)
				return -1;
		}
		gr_join(f, NULL, GR_FOREVER);
		double elapsed = (double)(gr_now() - start);
		if (pass == 0) {
			iters = (long)((double)iters * (double)budget_ns / (elapsed + 1));
			if (iters < 1000)
				iters = 1000;
			continue;
		}
		gr_close(a[0]);
		gr_close(a[1]);
		gr_close(b[0]);
		gr_close(b[1]);
		return elapsed / (double)iters;
	}
	return -1;
}

/* gr_recv that finds its data every time (a burst already in the socket):
 * the cost of a green call that does not wait, per call, with the fairness
 * budget's yield every GREENRING_IO_BUDGET calls included (another fiber
 * exists, so the yield is a real switch). */
static void *idle_fiber(void *p)
{
	volatile int *stop = p;

	while (!*stop)
		gr_sleep(0);
	return NULL;
}

static double ready_recv(int64_t budget_ns)
{
	int sv[2];
	char buf[4096];
	long calls = 0;
	volatile int stop = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	gr_fiber *other = gr_spawn(idle_fiber, (void *)&stop);
	int64_t start = gr_now(), elapsed = 0;
	do {
		/* Refill outside the timed part: 4 KiB, read 16 bytes a call. */
		int64_t t = gr_now();
		if (send(sv[1], buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
			return -1;
		start += gr_now() - t;
		for (int i = 0; i < 256; i++) {
			if (gr_recv(sv[0], buf, 16, 0) != 16)
				return -1;
		}
		calls += 256;
		elapsed = gr_now() - start;
	} while (elapsed < budget_ns);
	stop = 1;
	gr_join(other, NULL, GR_FOREVER);
	gr_close(sv[0]);
	gr_close(sv[1]);
	return (double)elapsed / (double)calls;
}

const struct micro_case micro_core_cases[] = {
	{ "raw jump_fcontext round trip", "ns", false, true, raw_fcontext_round_trip },
	{ "raw switch-in-a-function round trip", "ns", false, true, raw_switch_function_round_trip },
	{ "yield round trip (2 fibers)", "ns", false, false, yield_round_trip },
	{ "yield / floor, slices in turns (2 fibers)", "x", false, false, yield_over_floor },
	{ "spawn + join", "M/s", true, false, spawn_join_rate },
	{ "spawn_n burst of 10k + hub_join", "M/s", true, false, spawn_n_burst_rate },
	{ "RSS per parked fiber (100k)", "KiB", false, false, rss_per_parked_fiber },
	{ "pipe round trip between 2 fibers", "ns", false, false, pipe_round_trip },
	{ "gr_recv finding data (a burst), per call", "ns", false, false, ready_recv },
	{ 0 },
};
