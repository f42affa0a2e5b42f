/* stack.c — fiber stacks: mmap with a guard, a per-hub pool, and a readable
 * report when a fiber runs off the end of its stack.
 *
 * Layout of one stack, low to high addresses:
 *
 *     [ guard (no access) | usable stack ... | gr_fiber | gr__stack ]
 *       base               base+guard                    descriptor
 *
 * A spawn takes a stack from the hub's pool: mmap + guard + munmap costs
 * about 8 µs here, a pooled stack nothing. Only stacks of the default size
 * are pooled; other sizes are mapped and unmapped per fiber. Pooled stacks
 * keep the pages they touched (a few KiB each): that memory is the price
 * of spawning a burst again without the kernel.
 *
 * Guards: on Linux ≥ 6.13, madvise(MADV_GUARD_INSTALL) marks the guard
 * without splitting the mapping, so 100k fibers stay within the default
 * vm.max_map_count (65530) — adjacent stacks even merge into one mapping.
 * Older kernels get mprotect(PROT_NONE), which costs one extra mapping per
 * stack and so caps a process near 32k live fibers (spawn fails with ENOMEM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* Large enough that a function with a few KiB of locals does not step over
 * the guard into the stack below; costs address space only. */
#define GUARD_BYTES ((size_t)16 * 1024)
/* The pool keeps as many free stacks as were ever live at once (a server's
 * working set: a burst of N connections will come again), at least
 * POOL_MIN and at most POOL_MAX. Beyond that, stacks go back to the kernel. */
#define POOL_MIN 256
#define POOL_MAX 65536

struct gr__stack_pool {
	struct gr__stack *free;
	size_t count;         /* stacks in the free list */
	size_t live;          /* default-size stacks handed out */
	size_t peak_live;
	size_t default_size;
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

static atomic_int guard_kind; /* 0 unknown, 1 madvise, 2 mprotect */

static int install_guard(void *base, size_t len)
{
	if (atomic_load_explicit(&guard_kind, memory_order_relaxed) != 2) {
		if (madvise(base, len, MADV_GUARD_INSTALL) == 0) {
			atomic_store_explicit(&guard_kind, 1, memory_order_relaxed);
			return 0;
		}
		if (errno != EINVAL)
			return -errno;
		atomic_store_explicit(&guard_kind, 2, memory_order_relaxed);
	}
	return mprotect(base, len, PROT_NONE) == 0 ? 0 : -errno;
}

static struct gr__stack *stack_map(size_t size)
{
	size_t guard = round_to_pages(GUARD_BYTES);
	size_t total = guard + size;
	void *base = mmap(NULL, total, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);

	if (base == MAP_FAILED)
		return NULL;
	int err = install_guard(base, guard);
	if (err < 0) {
		munmap(base, total);
		errno = -err;
		return NULL;
	}
	/* The descriptor sits at the very top, beside the fiber struct and the
	 * first frames, so a parked fiber with a shallow stack touches one page. */
	struct gr__stack *s = (struct gr__stack *)((char *)base + total) - 1;
	s->base = base;
	s->size = size;
	s->guard = guard;
	s->next = NULL;
	s->valgrind_id = VALGRIND_STACK_REGISTER((char *)base + guard, (char *)base + total);
	return s;
}

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

static void stack_unmap(struct gr__stack *s)
{
	void *base = s->base;
	size_t total = s->guard + s->size;

	stack_unpoison(s);
	VALGRIND_STACK_DEREGISTER(s->valgrind_id);
	munmap(base, total);
}

struct gr__stack_pool *gr__stack_pool_create(void)
{
	struct gr__stack_pool *pool = calloc(1, sizeof(*pool));

	if (pool)
		pool->default_size = gr__stack_default_size();
	return pool;
}

void gr__stack_pool_free(struct gr__stack_pool *pool)
{
	if (!pool)
		return;
	while (pool->free) {
		struct gr__stack *s = pool->free;

		pool->free = s->next;
		stack_unmap(s);
	}
	free(pool);
}

size_t gr__stack_pool_count(const struct gr__stack_pool *pool, size_t *live)
{
	*live = pool->live;
	return pool->count;
}

struct gr__stack *gr__stack_get(struct gr__stack_pool *pool, size_t size)
{
	size = size ? round_to_pages(size) : pool->default_size;
	if (size != pool->default_size)
		return stack_map(size);
	struct gr__stack *s = pool->free;
	if (s) {
		pool->free = s->next;
		pool->count--;
	} else if ((s = stack_map(size)) == NULL) {
		return NULL;
	}
	if (++pool->live > pool->peak_live)
		pool->peak_live = pool->live;
	return s;
}

void gr__stack_put(struct gr__stack_pool *pool, struct gr__stack *s)
{
	if (s->size != pool->default_size) {
		stack_unmap(s);
		return;
	}
	pool->live--;
	size_t keep = pool->peak_live < POOL_MIN ? POOL_MIN : pool->peak_live;
	if (keep > POOL_MAX)
		keep = POOL_MAX;
	if (pool->count < keep) {
		stack_unpoison(s);
		s->next = pool->free;
		pool->free = s;
		pool->count++;
		return;
	}
	stack_unmap(s);
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
	gr_fiber *f = hub ? hub->current : NULL;

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
