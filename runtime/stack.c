/* stack.c — fiber stacks: slabs of guarded stacks, a per-hub pool that
 * follows the working set and gives memory back when idle, and a readable
 * report when a fiber runs off the end of its stack.
 *
 * Layout of one stack, low to high addresses:
 *
 *     [ guard (no access) | usable stack ...        | gr_fiber ]
 *       base               base+guard                 top
 *
 * and of a slab, n stacks of the default size in one mapping:
 *
 *     [ guard | stack 0 ][ guard | stack 1 ] ... [ guard | stack n-1 ]
 *
 * The descriptors (struct gr__stack) live in the slab's header, a malloc'd
 * array beside the mapping, not in the stacks: a trimmed stack's pages are
 * dropped, and its descriptor must stay to put it back in service.
 *
 * What a stack costs here (a 2-CPU paravirtualised VM, Linux 6.18, docs/stacks.md):
 * a page fault about 19 µs (the first touch of a fresh stack), an munmap or
 * MADV_DONTNEED of one stack about 6-9 µs (a TLB flush each), a system call
 * about 0.5 µs. So the pool never takes a fault or a flush per stack:
 *   - a slab is one mmap; its guards are installed and the top page of each
 *     stack (the fiber struct and the first frames) populated by one
 *     process_madvise(2) each, a vector of ranges, instead of one madvise and
 *     one fault per stack;
 *   - an ending fiber's stack goes to the pool whatever the pool holds (no
 *     cap): the pool keeps the working set, so a burst that comes again
 *     spawns without the kernel;
 *   - memory goes back lazily, in the hub's idle turns: free stacks beyond
 *     the recent peak of live ones are trimmed in batches of up to 1024, one
 *     process_madvise(MADV_DONTNEED) a batch (one TLB flush), and a slab
 *     whose stacks are all free and trimmed is unmapped (one munmap).
 * Older kernels fall back one step at a time, each found once per process:
 * process_madvise refusing these advices (before 6.13; PIDFD_SELF before
 * 6.15) -> one madvise per stack; no MADV_POPULATE_WRITE (before 5.14) ->
 * the first touch faults; no MADV_GUARD_INSTALL (before 6.13) ->
 * mprotect(PROT_NONE), which splits the slab into two mappings per stack and
 * so caps a process near 32k live fibers under the default vm.max_map_count
 * (65530): spawn then fails with ENOMEM. With guards installed by madvise a
 * slab stays one mapping (adjacent slabs even merge), so a million fibers
 * need at most a few thousand mappings.
 *
 * Only default-size stacks are pooled; another size is a slab of one, mapped
 * and unmapped per fiber.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "internal.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define VALGRIND_STACK_REGISTER(start, end) 0u
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#endif

#ifdef GR__ASAN
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
/* The calling process, for process_madvise (Linux >= 6.15). */
#ifndef PIDFD_SELF_THREAD_GROUP
#define PIDFD_SELF_THREAD_GROUP (-10001)
#endif

/* Large enough that a function with a few KiB of locals does not step over
 * the guard into the stack below; costs address space only. */
#define GUARD_BYTES ((size_t)16 * 1024)
/* Slabs grow by doubling from SLAB_FIRST stacks, so a thread with a handful
 * of fibers holds a few pages, to SLAB_MAX (a 10 MiB mapping at the default
 * size; at most IOV_MAX ranges per process_madvise). */
#define SLAB_FIRST 8
#define SLAB_MAX 128
/* Free stacks kept resident however quiet the hub is. */
#define POOL_MIN 256
/* The pool keeps as many free stacks as the peak of live ones over the last
 * one to two periods asks for; the rest is trimmed. */
#define TRIM_PERIOD GR_SEC
/* Stacks trimmed per idle turn at most: one vector of ranges, about 0.4 ms
 * here, so a hub back from a burst of a million is never stalled long. */
#define TRIM_BATCH 1024
/* Trimmed stacks brought back at once (one populate for all). */
#define REVIVE_BATCH 64

struct slab {
	struct gr__link link;  /* the pool's slabs (default size only) */
	char *base;
	size_t n;              /* stacks */
	size_t stride;         /* guard + usable bytes */
	size_t trimmed;        /* stacks of this slab that are free and trimmed */
	bool unmapping;        /* all trimmed: trim_batch unmaps it (next_gone links those) */
	struct slab *next_gone;
	struct gr__stack stacks[];
};

struct gr__stack_pool {
	struct gr__list warm;      /* free stacks, resident; most recently freed first */
	struct gr__list trimmed;   /* free stacks whose pages went back to the kernel */
	struct gr__list slabs;
	size_t nwarm, ntrimmed;
	size_t mapped;             /* default-size stacks in the slabs */
	size_t live;               /* default-size stacks handed out */
	size_t period_peak;        /* peak of live in the current trim period */
	size_t last_period_peak;   /* and in the one before */
	size_t keep;               /* free stacks the trim in progress keeps */
	int64_t trim_at;           /* next trim decision; 0: not yet scheduled */
	bool trimming;             /* a trim is under way, batch by batch */
	size_t next_slab;          /* stacks in the next slab */
	size_t default_size;
	/* Scratch for the vectors of ranges: too big for the caller's stack
	 * (a fiber's may be 16 KiB; the trim runs on the hub's). */
	struct iovec scratch_iov[TRIM_BATCH];
	struct gr__stack *scratch_stacks[TRIM_BATCH];
};

/* The caches below are filled by whichever thread gets there first: atomics,
 * so two hubs starting at once do not race (every thread computes the same
 * value). */
static size_t page_size(void)
{
	static atomic_size_t cached;
	size_t p = atomic_load_explicit(&cached, memory_order_relaxed);

	if (p == 0) {
		p = (size_t)sysconf(_SC_PAGESIZE);
		atomic_store_explicit(&cached, p, memory_order_relaxed);
	}
	return p;
}

static size_t round_to_pages(size_t n)
{
	size_t p = page_size();

	return (n + p - 1) / p * p;
}

/* GREENRING_STACK_SIZE above this is a typo, not a stack. */
#define STACK_SIZE_ENV_MAX ((size_t)1 << 32)

size_t gr__stack_default_size(void)
{
	static atomic_size_t cached;
	size_t got = atomic_load_explicit(&cached, memory_order_relaxed);

	if (got)
		return got;
	/* Below 16 KiB a fiber cannot even call printf safely. */
	size_t size = gr__env_size("GREENRING_STACK_SIZE", GR__DEFAULT_STACK_SIZE,
				   GR__MIN_STACK_SIZE, STACK_SIZE_ENV_MAX, true);
	size = round_to_pages(size);
	/* Two threads may get here at once: the first store wins, the other's
	 * (equal) value and its stderr line are the only waste. */
	size_t expected = 0;
	if (!atomic_compare_exchange_strong_explicit(&cached, &expected, size, memory_order_relaxed,
						     memory_order_relaxed))
		return expected;
	return size;
}

/* ------------------------------------------------- advice on many ranges */

/* What this kernel accepts, learnt once per process: 0 unknown, 1 yes, 2 no. */
static atomic_int vector_ok;   /* process_madvise on ourselves with this advice */
static atomic_int guard_ok;    /* MADV_GUARD_INSTALL (else mprotect) */
static atomic_int populate_ok; /* MADV_POPULATE_WRITE (else the first touch faults) */

static bool known_no(atomic_int *flag)
{
	return atomic_load_explicit(flag, memory_order_relaxed) == 2;
}

static void learn(atomic_int *flag, bool yes)
{
	atomic_store_explicit(flag, yes ? 1 : 2, memory_order_relaxed);
}

/* madvise(advice) on every range of v[0..n): one process_madvise where the
 * kernel takes it (one system call, and for MADV_DONTNEED one TLB flush),
 * else one madvise per range. 0 or -errno of the first failure; -EINVAL
 * means the kernel does not know the advice. */
static int advise_ranges(struct iovec *v, size_t n, int advice)
{
	if (n == 0)
		return 0;
	if (!known_no(&vector_ok)) {
		size_t want = 0;
		for (size_t i = 0; i < n; i++)
			want += v[i].iov_len;
		long done = syscall(SYS_process_madvise, PIDFD_SELF_THREAD_GROUP, v, n, advice, 0u);
		if (done >= 0 && (size_t)done == want) {
			learn(&vector_ok, true);
			return 0;
		}
		/* EBADF: no PIDFD_SELF; EINVAL: an advice process_madvise
		 * refuses (or one the kernel lacks, which madvise then tells);
		 * ENOSYS, EPERM: no process_madvise for us. Ranges it did
		 * before failing are done again below, which these advices
		 * allow. Any other error is the caller's to hear. */
		if (done >= 0 || (errno != EBADF && errno != EINVAL && errno != ENOSYS &&
				  errno != EPERM))
			return done >= 0 ? -EIO : -errno;
		if (errno != EINVAL)
			learn(&vector_ok, false);
	}
	for (size_t i = 0; i < n; i++)
		if (madvise(v[i].iov_base, v[i].iov_len, advice) != 0)
			return -errno;
	return 0;
}

/* Guards at the bottom of n stacks of `stride` bytes from base. */
static int install_guards(struct iovec *v, char *base, size_t n, size_t stride, size_t guard)
{

	if (!known_no(&guard_ok)) {
		for (size_t i = 0; i < n; i++)
			v[i] = (struct iovec){ base + i * stride, guard };
		int r = advise_ranges(v, n, MADV_GUARD_INSTALL);
		if (r != -EINVAL) {
			if (r == 0)
				learn(&guard_ok, true);
			return r;
		}
		learn(&guard_ok, false);
	}
	for (size_t i = 0; i < n; i++)
		if (mprotect(base + i * stride, guard, PROT_NONE) != 0)
			return -errno;
	return 0;
}

/* Fault in the top page of each stack in s[0..n), where the fiber struct and
 * the first frames go: a populate is a fraction of a fault's cost. Best
 * effort: a stack left out faults at its first touch, as any deeper page. */
static void populate_tops(struct iovec *v, struct gr__stack *const *s, size_t n)
{
	size_t page = page_size();

	if (known_no(&populate_ok))
		return;
	for (size_t i = 0; i < n; i++)
		v[i] = (struct iovec){ (char *)gr__stack_top(s[i]) - page, page };
	int r = advise_ranges(v, n, MADV_POPULATE_WRITE);
	if (r == -EINVAL)
		learn(&populate_ok, false);
}

/* ------------------------------------------------------------ slabs */

/* A fiber discarded while parked (thread exit) never unwound its frames, so
 * ASan's poison of their redzones is still on the stack. Lift it before the
 * stack serves another fiber, or is unmapped (ASan keeps the shadow of an
 * unmapped range, and the next mapping there would inherit it): otherwise
 * later fibers get false stack-buffer-overflow reports. */
static void stack_unpoison(struct gr__stack *s)
{
#ifdef GR__ASAN
	__asan_unpoison_memory_region((char *)s->base + s->guard, s->size);
#else
	(void)s;
#endif
}

static struct slab *slab_map(struct gr__stack_pool *pool, size_t n, size_t size)
{
	size_t guard = round_to_pages(GUARD_BYTES);
	size_t stride = guard + size;
	struct slab *slab = malloc(sizeof(*slab) + n * sizeof(slab->stacks[0]));

	if (!slab)
		return NULL;
	void *base = mmap(NULL, n * stride, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
	if (base == MAP_FAILED) {
		free(slab);
		return NULL;
	}
	int err = install_guards(pool->scratch_iov, base, n, stride, guard);
	if (err < 0) {
		munmap(base, n * stride);
		free(slab);
		errno = -err;
		return NULL;
	}
	*slab = (struct slab){ .base = base, .n = n, .stride = stride };
	for (size_t i = 0; i < n; i++) {
		struct gr__stack *s = &slab->stacks[i];
		char *lo = slab->base + i * stride;

		*s = (struct gr__stack){ .base = lo, .size = size, .guard = guard, .slab = slab };
		s->valgrind_id = VALGRIND_STACK_REGISTER(lo + guard, lo + stride);
		pool->scratch_stacks[i] = s;
	}
	populate_tops(pool->scratch_iov, pool->scratch_stacks, n);
	return slab;
}

static void slab_unmap(struct slab *slab)
{
	for (size_t i = 0; i < slab->n; i++) {
		stack_unpoison(&slab->stacks[i]);
		VALGRIND_STACK_DEREGISTER(slab->stacks[i].valgrind_id);
	}
	munmap(slab->base, slab->n * slab->stride);
	free(slab);
}

/* ------------------------------------------------------------ the pool */

struct gr__stack_pool *gr__stack_pool_create(void)
{
	struct gr__stack_pool *pool = calloc(1, sizeof(*pool));

	if (pool) {
		pool->default_size = gr__stack_default_size();
		pool->next_slab = SLAB_FIRST;
	}
	return pool;
}

/* Every stack is free by now (hub_destroy released every fiber's). */
void gr__stack_pool_free(struct gr__stack_pool *pool)
{
	if (!pool)
		return;
	gr__list_foreach_safe(it, &pool->slabs) {
		slab_unmap(gr__container(it, struct slab, link));
	}
	free(pool);
}

static struct gr__stack *stack_of(struct gr__link *l)
{
	return gr__container(l, struct gr__stack, link);
}

/* Trimmed stacks back in service, up to REVIVE_BATCH at once. */
static void revive(struct gr__stack_pool *pool)
{
	struct gr__stack **s = pool->scratch_stacks;
	size_t n = 0;

	while (n < REVIVE_BATCH && !gr__list_empty(&pool->trimmed)) {
		s[n] = stack_of(gr__list_pop_front(&pool->trimmed));
		s[n]->trimmed = false;
		s[n]->slab->trimmed--;
		n++;
	}
	pool->ntrimmed -= n;
	populate_tops(pool->scratch_iov, s, n);
	for (size_t i = n; i-- > 0;)
		gr__list_push_front(&pool->warm, &s[i]->link);
	pool->nwarm += n;
}

static int grow(struct gr__stack_pool *pool)
{
	size_t n = pool->next_slab;
	struct slab *slab = slab_map(pool, n, pool->default_size);

	if (!slab)
		return -1;
	if (pool->next_slab < SLAB_MAX)
		pool->next_slab *= 2;
	gr__list_push_back(&pool->slabs, &slab->link);
	for (size_t i = n; i-- > 0;)
		gr__list_push_front(&pool->warm, &slab->stacks[i].link);
	pool->nwarm += n;
	pool->mapped += n;
	return 0;
}

/* gr__stack_get's other ways, out of line: inlined, they made every get
 * save and restore six registers (a tenth of a pool spawn, callgrind).
 * A stack of another size: a slab of one. */
static __attribute__((noinline)) struct gr__stack *get_sized(struct gr__stack_pool *pool,
							     size_t size)
{
	struct slab *slab = slab_map(pool, 1, size);

	return slab ? &slab->stacks[0] : NULL;
}

/* No free stack is resident: revive trimmed ones, or map a new slab.
 * 0, or -errno. */
static __attribute__((noinline)) int refill(struct gr__stack_pool *pool)
{
	if (!gr__list_empty(&pool->trimmed)) {
		revive(pool);
		return 0;
	}
	return grow(pool);
}

struct gr__stack *gr__stack_get(struct gr__stack_pool *pool, size_t size)
{
	if (size) {
		size = round_to_pages(size);
		if (size != pool->default_size)
			return get_sized(pool, size);
	}
	if (gr__list_empty(&pool->warm) && refill(pool) < 0)
		return NULL;
	struct gr__stack *s = stack_of(gr__list_pop_front(&pool->warm));
	pool->nwarm--;
	if (++pool->live > pool->period_peak)
		pool->period_peak = pool->live;
	return s;
}

void gr__stack_put(struct gr__stack_pool *pool, struct gr__stack *s)
{
	if (s->size != pool->default_size) {
		slab_unmap(s->slab);
		return;
	}
	pool->live--;
	stack_unpoison(s);
	gr__list_push_front(&pool->warm, &s->link);
	pool->nwarm++;
}

/* Give back the pages of up to TRIM_BATCH free stacks beyond `keep`, the
 * least recently used first, and unmap the slabs left with nothing else in
 * use. The number of stacks trimmed. */
static size_t trim_batch(struct gr__stack_pool *pool, size_t keep)
{
	struct gr__stack **batch = pool->scratch_stacks;
	struct iovec *v = pool->scratch_iov;
	struct slab *gone = NULL;
	size_t n = 0, nv = 0;

	while (n < TRIM_BATCH && pool->nwarm > keep) {
		struct gr__stack *s = stack_of(pool->warm.last);

		gr__list_remove(&pool->warm, &s->link);
		pool->nwarm--;
		gr__list_push_back(&pool->trimmed, &s->link);
		pool->ntrimmed++;
		s->trimmed = true;
		s->slab->trimmed++;
		batch[n++] = s;
	}
	/* A slab all trimmed goes as a whole: one munmap rather than its
	 * stacks' MADV_DONTNEED, and its page tables and mapping go too. */
	for (size_t i = 0; i < n; i++) {
		struct slab *slab = batch[i]->slab;

		if (slab->trimmed != slab->n)
			v[nv++] = (struct iovec){ (char *)batch[i]->base + batch[i]->guard,
						  batch[i]->size };
		else if (!slab->unmapping) { /* the first of its stacks in the batch */
			for (size_t j = 0; j < slab->n; j++)
				gr__list_remove(&pool->trimmed, &slab->stacks[j].link);
			pool->ntrimmed -= slab->n;
			pool->mapped -= slab->n;
			gr__list_remove(&pool->slabs, &slab->link);
			slab->unmapping = true;
			slab->next_gone = gone;
			gone = slab;
		}
	}
	/* Best effort: a range not dropped stays resident, nothing worse. */
	(void)advise_ranges(v, nv, MADV_DONTNEED);
	while (gone) {
		struct slab *next = gone->next_gone;

		slab_unmap(gone);
		gone = next;
	}
	return n;
}
/* Trim in the hub's idle turns. A period's decision keeps the free stacks
 * that the peak of live ones over this period and the one before asks for
 * (a burst that came within the last one to two seconds may come again),
 * at least POOL_MIN; the rest goes a batch per idle turn. */
void gr__stack_pool_idle(struct gr__stack_pool *pool)
{
	if (pool->nwarm <= POOL_MIN)
		return;
	int64_t now = gr_now();
	if (pool->trim_at == 0)
		pool->trim_at = now + TRIM_PERIOD;
	if (now < pool->trim_at)
		return;
	if (!pool->trimming) {
		size_t peak = pool->period_peak > pool->last_period_peak ? pool->period_peak
									 : pool->last_period_peak;
		pool->last_period_peak = pool->period_peak;
		pool->period_peak = pool->live;
		pool->keep = peak > pool->live ? peak - pool->live : 0;
		if (pool->keep < POOL_MIN)
			pool->keep = POOL_MIN;
	}
	trim_batch(pool, pool->keep);
	pool->trimming = pool->nwarm > pool->keep;
	pool->trim_at = pool->trimming ? now : now + TRIM_PERIOD;
}

int64_t gr__stack_pool_trim_due(const struct gr__stack_pool *pool)
{
	return pool->nwarm > POOL_MIN ? pool->trim_at : GR_FOREVER;
}

size_t gr__stack_pool_trim(struct gr__stack_pool *pool, size_t keep)
{
	size_t total = 0, n;

	while ((n = trim_batch(pool, keep)) > 0)
		total += n;
	return total;
}

long gr_stacks_trim(size_t keep)
{
	struct gr__hub *hub = gr__hub_peek();

	if (!hub)
		return -ESRCH;
	return (long)gr__stack_pool_trim(hub->stacks, keep);
}

void gr__stack_pool_stats(const struct gr__stack_pool *pool, struct gr_hub_stats *out)
{
	out->stacks_free = pool->nwarm;
	out->stacks_trimmed = pool->ntrimmed;
	out->stacks_mapped = pool->mapped;
}

/* ---------------------------------------------------- overflow reporting
 *
 * A fiber that overflows touches its guard and gets SIGSEGV on a stack that
 * is unusable, so the handler runs on a per-thread alternate stack. It writes
 * one line naming the fiber, puts back the previous disposition and returns:
 * the faulting instruction runs again and the process dies with the usual
 * signal (or the previous handler gets it). Only async-signal-safe calls. */

static struct sigaction previous_segv;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static __thread void *altstack_mem;
/* The fiber a fork() child goes on running on (its struct and stack
 * descriptor are still there: the child leaves the parent's fibers'
 * memory alone); the child's own thread is the one that forked. */
static const gr_fiber *forked_on;

void gr__stack_fork_child(const gr_fiber *f)
{
	/* A fork from a context with no fiber stack of its own (a thread's
	 * main context, or a child with no hub yet, which may itself be
	 * running on the stack an earlier fork left it) keeps that one. */
	if (f && f->stack)
		forked_on = f;
}

static size_t fmt_u64(char *out, uint64_t v)
{
	char tmp[24];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

static void report_overflow(const gr_fiber *f)
{
	char line[160];
	size_t n = 0;
	const char *parts[] = { "greenring: fiber ", NULL };

	for (const char *p = parts[0]; *p; p++)
		line[n++] = *p;
	n += fmt_u64(line + n, f->id);
	if (f->name[0]) {
		line[n++] = ' ';
		line[n++] = '"';
		for (const char *p = f->name; *p && n < 100; p++)
			line[n++] = *p;
		line[n++] = '"';
	}
	static const char mid[] = " overflowed its ";
	memcpy(line + n, mid, sizeof(mid) - 1);
	n += sizeof(mid) - 1;
	n += fmt_u64(line + n, f->stack->size);
	static const char tail[] = "-byte stack\n";
	memcpy(line + n, tail, sizeof(tail) - 1);
	n += sizeof(tail) - 1;
	ssize_t ignored = write(STDERR_FILENO, line, n);
	(void)ignored;
}

static void on_segv(int sig, siginfo_t *si, void *uctx)
{
	struct gr__hub *hub = gr__hub_peek();
	const gr_fiber *f = hub ? hub->current : NULL;

	/* The main context of a fork child's hub (or a child with no hub yet)
	 * may be running on the stack of the fiber that forked. */
	if (!f || !f->stack)
		f = forked_on;
	if (f && f->stack) {
		const char *addr = si->si_addr;
		const char *guard_lo = f->stack->base;
		const char *guard_hi = guard_lo + f->stack->guard;

		if (addr >= guard_lo && addr < guard_hi)
			report_overflow(f);
	}
	if ((previous_segv.sa_flags & SA_SIGINFO) && previous_segv.sa_sigaction) {
		previous_segv.sa_sigaction(sig, si, uctx);
		return;
	}
	if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN &&
	    !(previous_segv.sa_flags & SA_SIGINFO)) {
		previous_segv.sa_handler(sig);
		return;
	}
	/* Returning re-runs the faulting access under the default action. */
	signal(sig, SIG_DFL);
}

static void install_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &previous_segv);
}

void gr__stack_overflow_guard_thread_init(void)
{
	stack_t current;

	pthread_once(&handler_once, install_handler);
	/* Keep an alternate stack the thread already has. */
	if (sigaltstack(NULL, &current) == 0 && !(current.ss_flags & SS_DISABLE))
		return;
	size_t size = (size_t)SIGSTKSZ < 32768 ? 32768 : (size_t)SIGSTKSZ;
	void *mem = malloc(size);
	if (!mem)
		return; /* overflows then die without the message; nothing else changes */
	stack_t ss = { .ss_sp = mem, .ss_size = size, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL) != 0) {
		free(mem);
		return;
	}
	altstack_mem = mem;
}

void gr__stack_overflow_guard_thread_fini(void)
{
	if (!altstack_mem)
		return;
	stack_t ss = { .ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE };
	sigaltstack(&ss, NULL);
	free(altstack_mem);
	altstack_mem = NULL;
}
