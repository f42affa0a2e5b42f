/* context.h — the context switch, and telling sanitizers about it.
 *
 * boost.context's fcontext is a few lines of assembly with C linkage inside
 * libboost_context; we declare it here ourselves (boost ships only a C++
 * header for it). jump_fcontext saves the callee-saved registers on the
 * current stack, switches stacks and returns, in the target, a transfer_t
 * holding the context we came from and the pointer passed along.
 *
 * ASan and TSan must be told about every switch, or ASan reports false
 * stack-buffer overflows (it tracks one stack per thread) and TSan loses
 * happens-before across fibers. Valgrind must be told where stacks are, or
 * it mistakes a switch for a huge stack-pointer change.
 */
#ifndef GREENRING_CONTEXT_H
#define GREENRING_CONTEXT_H

#include <stddef.h>

typedef void *gr__fcontext;

typedef struct {
	gr__fcontext fctx;
	void *data;
} gr__transfer;

/* Declared with boost's own names: they are the symbols in libboost_context. */
extern gr__transfer jump_fcontext(gr__fcontext const to, void *vp);
extern gr__fcontext make_fcontext(void *sp, size_t size, void (*fn)(gr__transfer));

#if defined(__SANITIZE_ADDRESS__)
#define GR__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GR__ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define GR__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GR__TSAN 1
#endif
#endif

/* Per-fiber sanitizer state, kept in struct gr_fiber. */
struct gr__sanitizer_fiber {
#ifdef GR__ASAN
	void *fake_stack;        /* ASan's detect_stack_use_after_return frames */
	const void *stack_bottom;
	size_t stack_size;
#endif
#ifdef GR__TSAN
	void *tsan;              /* __tsan_create_fiber handle */
#endif
	char unused;             /* keeps the struct non-empty without sanitizers */
};

#ifdef GR__ASAN
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
				     size_t *size_old);
#endif
#ifdef GR__TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

#endif
