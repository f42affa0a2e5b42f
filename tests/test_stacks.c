/* test_stacks.c — the pool of fiber stacks: a burst that comes again reuses
 * it, trimming gives the memory back (by gr_stacks_trim, and by itself when
 * the hub idles), fibers alive beside trimmed stacks keep their frames, fork
 * and thread exit with a big pool. Runs once per hub. (Overflow reporting on
 * slab stacks, trimmed ones included, is in test_stack.c.) */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(stacks);

/* ------------------------------------------------------------ helpers */

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, resident = -1;

	cr_assert_not_null(f);
	cr_assert_eq(fscanf(f, "%ld %ld", &size, &resident), 2);
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* The process's address space, KiB (VmSize). */
static long vm_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

static struct gr_hub_stats stats(void)
{
	struct gr_hub_stats st;

	assert_ok(gr_hub_stats(&st));
	return st;
}

/* A burst: n detached fibers that park on one event, are all woken, end. */
struct burst {
	long n, parked, left;
	gr_event all_parked, go, all_done;
};

static void burst_fiber(void *arg)
{
	struct burst *b = arg;
	volatile char frame[512]; /* a frame of some size: pages must be touched */

	memset((char *)frame, 0x5a, sizeof(frame));
	if (++b->parked == b->n)
		gr_event_set(&b->all_parked);
	cr_assert_eq(gr_event_wait(&b->go, GR_FOREVER), 0);
	cr_assert_eq(frame[7], 0x5a);
	if (--b->left == 0)
		gr_event_set(&b->all_done);
}

/* Spawn the burst, wait until all are parked, call between(), wake them all
 * and wait until all have ended (and been released). */
static void burst_run(long n, void (*between)(void *), void *arg)
{
	struct burst b = { .n = n, .left = n };

	assert_ok(gr_event_init(&b.all_parked));
	assert_ok(gr_event_init(&b.go));
	assert_ok(gr_event_init(&b.all_done));
	for (long i = 0; i < n; i++)
		assert_ok(gr_spawn_n(burst_fiber, &b));
	assert_ok(gr_event_wait(&b.all_parked, GR_FOREVER));
	if (between)
		between(arg);
	gr_event_set(&b.go);
	assert_ok(gr_event_wait(&b.all_done, GR_FOREVER));
	assert_ok(gr_hub_join(GR_FOREVER));
	assert_ok(gr_event_destroy(&b.all_parked));
	assert_ok(gr_event_destroy(&b.go));
	assert_ok(gr_event_destroy(&b.all_done));
}

static void record_stats(void *arg)
{
	*(struct gr_hub_stats *)arg = stats();
}

/* ------------------------------------------------------------ reuse */

Test(stacks, a_burst_that_comes_again_reuses_the_pool)
{
	enum { N = 3000 };
	struct gr_hub_stats during, after, again;

	burst_run(N, record_stats, &during);
	cr_assert_geq(during.stacks_mapped, N, "%zu stacks mapped for %d live fibers",
		      during.stacks_mapped, N);
	after = stats();
	/* Every stack of the burst is kept (no cap, no trim within a period). */
	cr_assert_geq(after.stacks_free, N, "the pool kept %zu of %d stacks", after.stacks_free, N);
	cr_assert_eq(after.stacks_mapped, during.stacks_mapped);
	burst_run(N, record_stats, &again);
	cr_assert_eq(again.stacks_mapped, during.stacks_mapped,
		     "the second burst mapped new stacks: %zu then %zu", during.stacks_mapped,
		     again.stacks_mapped);
	cr_assert_lt(again.stacks_free, during.stacks_free + 1);
}

static void *small(void *arg)
{
	return arg;
}

Test(stacks, other_sizes_are_not_pooled)
{
	assert_ok(gr_sleep(0)); /* the hub's own fiber takes a pooled stack first */
	struct gr_hub_stats before = stats();
	struct gr_spawn_opts o = { .stack_size = 256 * 1024 };
	void *res = NULL;

	for (int i = 0; i < 50; i++) {
		gr_fiber *f = gr_spawn_with(&o, small, &o);

		cr_assert_not_null(f);
		assert_ok(gr_join(f, &res, GR_FOREVER));
		cr_assert_eq(res, &o);
	}
	struct gr_hub_stats after = stats();
	cr_assert_eq(after.stacks_mapped, before.stacks_mapped);
}

/* ------------------------------------------------------------ trimming */

Test(stacks, trim_gives_the_memory_back_and_the_next_burst_still_runs)
{
	enum { N = 20000 };
	struct gr_hub_stats during;

	burst_run(N, record_stats, &during);
	long before = rss_kib();
	long trimmed = gr_stacks_trim(0);
	long after = rss_kib();
	struct gr_hub_stats st = stats();

	cr_assert_geq(trimmed, N, "trimmed %ld of %d free stacks", trimmed, N);
	cr_assert_eq(st.stacks_free, 0);
	/* Each parked fiber held at least a page; most of it must be gone. */
	cr_assert_lt(after, before - (long)N * 3, "RSS %ld KiB before the trim, %ld after", before,
		     after);
	/* Whole slabs went (unmapped), not only their pages. */
	cr_assert_lt(st.stacks_mapped, during.stacks_mapped / 2, "%zu stacks still mapped",
		     st.stacks_mapped);
	cr_assert_eq(gr_stacks_trim(0), 0, "a second trim found work");
	/* Stacks come back from the kernel as the burst returns. */
	burst_run(N, NULL, NULL);
	cr_assert_geq(stats().stacks_free, N);
}

Test(stacks, trim_keeps_what_it_is_told_to)
{
	burst_run(2000, NULL, NULL);
	size_t free_before = stats().stacks_free;
	long trimmed = gr_stacks_trim(500);

	cr_assert_eq((size_t)trimmed, free_before - 500);
	cr_assert_eq(stats().stacks_free, 500);
}

/* Fibers parked beside trimmed stacks (the same slabs: half of a burst
 * ended) keep every byte of their frames. */
/* Fill 2 KiB of the calling fiber's frame with a pattern of `seed`, wait
 * for `go`, and check the frame: NULL if it was intact, else why not. */
static __attribute__((noinline)) const char *frame_kept(gr_event *go, unsigned seed)
{
	volatile unsigned char frame[2048];

	for (size_t i = 0; i < sizeof(frame); i++)
		frame[i] = (unsigned char)(seed * 31 + i);
	if (gr_event_wait(go, GR_FOREVER) != 0)
		return "gr_event_wait";
	for (size_t i = 0; i < sizeof(frame); i++)
		if (frame[i] != (unsigned char)(seed * 31 + i))
			return "a frame changed";
	return NULL;
}

struct survivor {
	gr_event *go;
	unsigned seed;
	int ok;
};

static void *survivor_fiber(void *arg)
{
	struct survivor *s = arg;

	s->ok = frame_kept(s->go, s->seed) == NULL;
	return NULL;
}

Test(stacks, fibers_beside_trimmed_stacks_keep_their_frames)
{
	enum { N = 600 };
	static struct survivor s[N];
	static gr_fiber *f[N];
	gr_event go[2];

	assert_ok(gr_event_init(&go[0]));
	assert_ok(gr_event_init(&go[1]));
	for (int i = 0; i < N; i++) {
		s[i] = (struct survivor){ .go = &go[i % 2], .seed = (unsigned)i };
		f[i] = gr_spawn(survivor_fiber, &s[i]);
		cr_assert_not_null(f[i]);
	}
	assert_ok(gr_sleep(0)); /* all run and park */
	gr_event_set(&go[0]);
	for (int i = 0; i < N; i += 2)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	cr_assert_geq(gr_stacks_trim(0), N / 2);
	cr_assert_eq(stats().stacks_free, 0);
	gr_event_set(&go[1]);
	for (int i = 1; i < N; i += 2) {
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
		cr_assert(s[i].ok, "fiber %d's frame changed while stacks beside it were trimmed", i);
	}
	for (int i = 0; i < N; i += 2)
		cr_assert(s[i].ok);
	assert_ok(gr_event_destroy(&go[0]));
	assert_ok(gr_event_destroy(&go[1]));
}

Test(stacks, an_idle_hub_trims_by_itself_but_not_at_once)
{
	enum { N = 5000 };

	burst_run(N, NULL, NULL);
	long before = rss_kib();
	/* Within the trim period the working set stays: a burst may come again. */
	assert_ok(gr_sleep(100 * GR_MSEC));
	cr_assert_geq(stats().stacks_free, N, "trimmed within 100 ms of the burst");
	/* Two quiet periods (1 s each) later the surplus goes, idle turn by
	 * idle turn; the fiber sleeping here is the hub's only business. */
	int64_t deadline = gr_now() + 6 * GR_SEC;
	while (stats().stacks_free > 256 && gr_now() < deadline)
		assert_ok(gr_sleep(50 * GR_MSEC));
	struct gr_hub_stats st = stats();
	cr_assert_leq(st.stacks_free, 256, "%zu free stacks still resident after 6 s", st.stacks_free);
	cr_assert_lt(rss_kib(), before - (long)N * 3, "RSS did not drop: %ld KiB then %ld", before,
		     rss_kib());
}

static void *trim_in_a_thread(void *arg)
{
	*(long *)arg = gr_stacks_trim(0);
	return NULL;
}

Test(stacks, trim_without_a_hub_says_so)
{
	pthread_t th;
	long r = 0;

	cr_assert_eq(pthread_create(&th, NULL, trim_in_a_thread, &r), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(r, -ESRCH);
}

/* ------------------------------------------------------------ fork, threads */

static void *child_burst(void *arg)
{
	(void)arg;
	burst_run(1000, NULL, NULL);
	return NULL;
}

Test(stacks, a_fork_child_of_a_process_with_a_big_pool_spawns_and_trims)
{
	enum { N = 20000 };

	burst_run(N, NULL, NULL);
	size_t mapped = stats().stacks_mapped;
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* A fresh hub: the parent's pool is not the child's. */
		struct gr_hub_stats st;
		gr_fiber *f = gr_spawn(child_burst, NULL);

		if (!f || gr_join(f, NULL, GR_FOREVER) != 0)
			_exit(2);
		if (gr_hub_stats(&st) != 0 || st.stacks_mapped >= mapped)
			_exit(3);
		if (gr_stacks_trim(0) < 1000)
			_exit(4);
		_exit(0);
	}
	int status = 0;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %#x", status);
	/* The parent's pool is untouched and serves the next burst. */
	burst_run(N, NULL, NULL);
	cr_assert_eq(stats().stacks_mapped, mapped);
}

static void *thread_with_a_burst(void *arg)
{
	long n = (long)(intptr_t)arg;
	gr_fiber *f = gr_spawn(small, NULL);

	(void)f;
	burst_run(n, NULL, NULL);
	/* f is left unjoined on purpose: the hub's exit releases it too. */
	return NULL;
}

Test(stacks, thread_exit_unmaps_every_slab)
{
	enum { N = 5000 };
	pthread_t th;
	long before = vm_kib();

	cr_assert_eq(pthread_create(&th, NULL, thread_with_a_burst, (void *)(intptr_t)N), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	long after = vm_kib();
	/* N stacks are 400 MiB of address space; what may stay is glibc's:
	 * the thread's malloc arena (64 MiB reserved) and its cached 8 MiB
	 * thread stack. */
	cr_assert_lt(after - before, 100 * 1024, "address space grew by %ld KiB", after - before);
}

/* ------------------------------------------------------------ careless callers */

/* A fiber whose frame, marked with its argument, must survive a wait on
 * `go` (frame_kept): NULL if it did, else why not. */
static gr_event go;

static void *marked_frame(void *arg)
{
	return (void *)frame_kept(&go, (unsigned)(uintptr_t)arg);
}

static void marked_frame_n(void *arg)
{
	const char *why = marked_frame(arg);

	if (why)
		grt_fail("%s", why);
}

/* In a fork child whose address space is capped (RLIMIT_AS) a little above
 * what it uses: spawns fail with ENOMEM once no slab can be mapped, never
 * an abort; a stack size that cannot be mapped too; the fibers that got a
 * stack keep their frames, and once the cap is lifted spawns work again. */
static void spawn_under_a_cap(void)
{
	enum { MAX = 100000 };
	static gr_fiber *f[MAX];
	struct rlimit old, cap;
	long vm = vm_kib();
	int n = 0;

	if (gr_event_init(&go) != 0 || getrlimit(RLIMIT_AS, &old) != 0)
		grt_child_exit("setup: %s", strerror(errno));
	cap = (struct rlimit){ (rlim_t)(vm + 48 * 1024) * 1024, old.rlim_max };
	if (setrlimit(RLIMIT_AS, &cap) != 0)
		grt_child_exit("setrlimit: %s", strerror(errno));
	errno = 0;
	for (; n < MAX; n++) {
		if (!(f[n] = gr_spawn(marked_frame, (void *)(uintptr_t)(n & 0x7f))))
			break;
		if (n % 64 == 63 && gr_sleep(0) != 0)
			grt_child_exit("gr_sleep: %s", strerror(errno));
	}
	int err = errno;
	if (n == 0 || n == MAX || err != ENOMEM)
		grt_child_exit("%d spawns, then %s", n, strerror(err));
	struct gr_spawn_opts big = { .stack_size = (size_t)1 << 30 };
	errno = 0;
	if (gr_spawn_with(&big, marked_frame, NULL) || errno != ENOMEM)
		grt_child_exit("a 1 GiB stack under the cap: %s", strerror(errno));
	(void)gr_sleep(0);
	gr_event_set(&go);
	for (int i = 0; i < n; i++) {
		void *why = NULL;

		if (gr_join(f[i], &why, GR_FOREVER) != 0 || why)
			grt_child_exit("fiber %d: %s", i, why ? (const char *)why : "join");
	}
	if (setrlimit(RLIMIT_AS, &old) != 0)
		grt_child_exit("setrlimit: %s", strerror(errno));
	gr_event_clear(&go);
	gr_fiber *g = gr_spawn_with(&big, marked_frame, (void *)3);
	if (!g)
		grt_child_exit("a spawn after the cap: %s", strerror(errno));
	gr_event_set(&go);
	if (gr_join(g, NULL, GR_FOREVER) != 0)
		grt_child_exit("join after the cap");
	grt_child_exit("ok");
}

Test(stacks, spawns_up_to_an_address_space_cap_fail_with_enomem_and_recover)
{
	int report;

	/* A sanitizer reserves terabytes of shadow: no cap fits above it. */
	if (vm_kib() > (1L << 30))
		cr_skip_test("the address space is a sanitizer's (%ld KiB)", vm_kib());
	pid_t pid = grt_fork_reporting(&report);
	if (pid == 0)
		spawn_under_a_cap();
	grt_child_expect_ok(pid, report);
}

/* Stacks of three sizes (16 KiB and 256 KiB, each a slab of one, beside
 * the pooled default) spawned while fibers trim the pool every few spawns
 * and joins: every frame survives, three rounds over stacks trimmed and
 * brought back. */
Test(stacks, trims_between_spawns_of_mixed_sizes_keep_every_frame)
{
	enum { N = 600 };
	static gr_fiber *f[N];

	assert_ok(gr_event_init(&go));
	for (int round = 0; round < 3; round++) {
		gr_event_clear(&go);
		for (int i = 0; i < N; i++) {
			struct gr_spawn_opts o = { .stack_size = i % 3 == 0 ? 16384 : i % 3 == 1 ? 0 : 256 * 1024 };

			cr_assert_not_null(f[i] = gr_spawn_with(&o, marked_frame, (void *)(uintptr_t)(i & 0x7f)));
			if (i % 50 == 0) {
				cr_assert_eq(gr_sleep(0), 0);
				cr_assert_geq(gr_stacks_trim(0), 0);
			}
		}
		cr_assert_eq(gr_sleep(0), 0);
		cr_assert_geq(gr_stacks_trim(0), 0);
		gr_event_set(&go);
		for (int i = 0; i < N; i++) {
			void *why = NULL;

			cr_assert_eq(gr_join(f[i], &why, GR_FOREVER), 0);
			cr_assert_null(why, "fiber %d, round %d: %s", i, round, (const char *)why);
			if (i % 100 == 0)
				cr_assert_geq(gr_stacks_trim((size_t)(i % 7)), 0);
		}
	}
	assert_ok(gr_event_destroy(&go));
}

/* A link callback (a fiber of its own) that trims, spawns, and trims
 * again, for each of 300 fibers that trim as they end. */
static void trim_spawn_trim(const struct gr_fiber_end *end, void *arg)
{
	atomic_int *spawned = arg;

	(void)end;
	(void)gr_stacks_trim(0);
	if (gr_spawn_n(marked_frame_n, (void *)5) == 0)
		atomic_fetch_add(spawned, 1);
	(void)gr_stacks_trim(0);
}

static void *trim_and_end(void *arg)
{
	(void)arg;
	(void)gr_stacks_trim(0);
	return NULL;
}

Test(stacks, link_callbacks_that_trim_and_spawn_keep_every_frame)
{
	enum { N = 300 };
	static atomic_int spawned;
	gr_fiber *f[N];

	assert_ok(gr_event_init(&go));
	for (int i = 0; i < N; i++) {
		cr_assert_not_null(f[i] = gr_spawn(trim_and_end, NULL));
		assert_ok(gr_link(f[i], GR_LINK_ANY, trim_spawn_trim, &spawned));
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(gr_join(f[i], NULL, GR_FOREVER), 0);
	cr_assert_eq(gr_sleep(GR_MSEC), 0);
	cr_assert_eq(atomic_load(&spawned), N);
	gr_event_set(&go);
	assert_ok(gr_hub_join(GR_FOREVER));
	grt_assert_no_failures();
	assert_ok(gr_event_destroy(&go));
}
