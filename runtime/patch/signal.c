/* signal.c — where a fiber must not park although it could: signal
 * handlers and vfork children.
 *
 * A signal handler runs on the stack of whatever it interrupted, maybe a
 * fiber half-way through a switch: parking there would corrupt the hub. No
 * cheap question tells a handler from its victim, so the library wraps the
 * handlers themselves: sigaction() and signal() install a trampoline that
 * counts, per thread, the handlers running, and calls the program's
 * handler. Every interposed call made while the count is positive is the
 * plain libc call. sigaction() reports the program's own handler back,
 * never the trampoline. A handler that leaves by siglongjmp() (or longjmp)
 * ends the count, since the jump ends the handler.
 *
 * Not seen, and so not guarded: handlers installed before the library was
 * loaded, or with the raw system call (docs/patching.md).
 *
 * vfork(): the child borrows the parent's memory and stack until it calls
 * exec or _exit. If it called anything else that the library defines (a
 * close, a dup2, a write of an error), the green version would run on the
 * parent's hub from another process. vfork is therefore fork here, which
 * POSIX allows: the child then has its own memory, and greenring drops its
 * hubs in it (docs/architecture.md, fork). posix_spawn, which glibc builds on
 * a vfork-like clone with its own internal calls, stays as fast as ever.
 */
#define _GNU_SOURCE
#undef _FORTIFY_SOURCE /* our longjmp must be longjmp, not __longjmp_chk */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <unistd.h>

#include "patch.h"

__thread int patch_in_signal __attribute__((tls_model("initial-exec")));

/* The program's handler per signal: the function, and in the top bit
 * whether it takes siginfo (user-space addresses never use that bit). One
 * word, so a handler that runs while another thread changes it sees either
 * the old or the new one, whole. */
#define SIGINFO_BIT ((uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1))
static _Atomic uintptr_t handlers[_NSIG];

static void trampoline(int sig, siginfo_t *si, void *uc)
{
	uintptr_t h = atomic_load_explicit(&handlers[sig], memory_order_acquire);

	patch_in_signal++;
	if (h & SIGINFO_BIT)
		((void (*)(int, siginfo_t *, void *))(h & ~SIGINFO_BIT))(sig, si, uc);
	else if (h)
		((void (*)(int))h)(sig);
	patch_in_signal--;
}

static bool is_function(void (*h)(int))
{
	return h != SIG_DFL && h != SIG_IGN && h != SIG_ERR;
}

static int do_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	if (sig <= 0 || sig >= _NSIG)
		return REAL(sigaction)(sig, act, old);
	uintptr_t prev = atomic_load_explicit(&handlers[sig], memory_order_acquire);
	struct sigaction wrapped, kold;
	const struct sigaction *k = act;
	bool wrap = act && is_function(act->sa_handler);

	if (wrap) {
		uintptr_t h = act->sa_flags & SA_SIGINFO
				      ? (uintptr_t)act->sa_sigaction | SIGINFO_BIT
				      : (uintptr_t)act->sa_handler;
		wrapped = *act;
		wrapped.sa_sigaction = trampoline;
		wrapped.sa_flags |= SA_SIGINFO;
		k = &wrapped;
		/* Before the kernel has the trampoline: it must never find an
		 * empty slot. */
		atomic_store_explicit(&handlers[sig], h, memory_order_release);
	}
	if (REAL(sigaction)(sig, k, &kold) < 0) {
		if (wrap)
			atomic_store_explicit(&handlers[sig], prev, memory_order_release);
		return -1;
	}
	if (old) {
		*old = kold;
		if (kold.sa_sigaction == trampoline) {
			/* Report the program's handler, as it installed it. */
			if (prev & SIGINFO_BIT) {
				old->sa_sigaction = (void (*)(int, siginfo_t *, void *))(prev & ~SIGINFO_BIT);
			} else {
				old->sa_handler = (void (*)(int))prev;
				old->sa_flags &= ~SA_SIGINFO;
			}
		}
	}
	return 0;
}

PATCH_API int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	return do_sigaction(sig, act, old);
}

/* signal() and its kin, as glibc builds them on sigaction (glibc's own go
 * straight to the kernel, past us). */
static void (*install(int sig, void (*h)(int), int flags))(int)
{
	struct sigaction act = { .sa_handler = h, .sa_flags = flags }, old;

	if (h == SIG_ERR) {
		errno = EINVAL;
		return SIG_ERR;
	}
	sigemptyset(&act.sa_mask);
	if (!(flags & SA_NODEFER) && sig > 0 && sig < _NSIG)
		sigaddset(&act.sa_mask, sig);
	if (do_sigaction(sig, &act, &old) < 0)
		return SIG_ERR;
	return old.sa_handler;
}

PATCH_API void (*signal(int sig, void (*h)(int)))(int)
{
	return install(sig, h, SA_RESTART);
}

/* Declared by <signal.h> only for old X/Open programs. */
void (*bsd_signal(int sig, void (*h)(int)))(int);
PATCH_API void (*bsd_signal(int sig, void (*h)(int)))(int)
{
	return install(sig, h, SA_RESTART);
}

PATCH_API void (*sysv_signal(int sig, void (*h)(int)))(int)
{
	return install(sig, h, SA_RESETHAND | SA_NODEFER);
}

/* ------------------------------------------------------------ jumps */

/* glibc's longjmp, _longjmp and siglongjmp are one function; so are ours. */
PATCH_API void siglongjmp(sigjmp_buf env, int val)
{
	patch_in_signal = 0;
	REAL(siglongjmp)(env, val);
	__builtin_unreachable();
}

PATCH_API void longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp")));
PATCH_API void _longjmp(jmp_buf env, int val) __attribute__((alias("siglongjmp")));

/* What _FORTIFY_SOURCE makes of longjmp. */
PATCH_API void __longjmp_chk(jmp_buf env, int val)
{
	patch_in_signal = 0;
	REAL(__longjmp_chk)(env, val);
	__builtin_unreachable();
}

/* ------------------------------------------------------------ vfork */

PATCH_API pid_t vfork(void)
{
	return fork();
}
