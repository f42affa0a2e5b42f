/* real.c — libc's versions of the interposed functions, and where a call
 * comes from.
 *
 * The table of libc functions is filled by the library's constructor with
 * dlsym(RTLD_NEXT). Until then each slot holds a stand-in: the raw system
 * call for the calls that are one, a lazy lookup for the rest. A call made
 * before the constructor ran (another library's constructor), or from
 * inside dlsym itself (a malloc that writes a log line while dlsym
 * allocates), therefore works and never comes back here.
 *
 * "Comes from greenring": the runtime calls libc through its PLT, so its
 * own read(), fcntl(), accept4() and close() arrive here too. The return
 * address tells them apart: it lies in the text of libgreenring.so (or in
 * this library's, when a greenring function tail-called libc for us). Under
 * a sanitizer whose interceptors sit between the program and this library,
 * the return address is the interceptor's; docs/patching.md says what that
 * changes and how the tests load the library to avoid it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "patch.h"

/* ------------------------------------------------------------ stand-ins */

static ssize_t raw_read(int fd, void *buf, size_t n)
{
	return syscall(SYS_read, fd, buf, n);
}

static ssize_t raw_write(int fd, const void *buf, size_t n)
{
	return syscall(SYS_write, fd, buf, n);
}

static ssize_t raw_readv(int fd, const struct iovec *iov, int n)
{
	return syscall(SYS_readv, fd, iov, n);
}

static ssize_t raw_writev(int fd, const struct iovec *iov, int n)
{
	return syscall(SYS_writev, fd, iov, n);
}

static ssize_t raw_recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *sa,
			    socklen_t *len)
{
	return syscall(SYS_recvfrom, fd, buf, n, flags, sa, len);
}

static ssize_t raw_recv(int fd, void *buf, size_t n, int flags)
{
	return raw_recvfrom(fd, buf, n, flags, NULL, NULL);
}

static ssize_t raw_sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *sa,
			  socklen_t len)
{
	return syscall(SYS_sendto, fd, buf, n, flags, sa, len);
}

static ssize_t raw_send(int fd, const void *buf, size_t n, int flags)
{
	return raw_sendto(fd, buf, n, flags, NULL, 0);
}

static ssize_t raw_recvmsg(int fd, struct msghdr *msg, int flags)
{
	return syscall(SYS_recvmsg, fd, msg, flags);
}

static ssize_t raw_sendmsg(int fd, const struct msghdr *msg, int flags)
{
	return syscall(SYS_sendmsg, fd, msg, flags);
}

static int raw_accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	return (int)syscall(SYS_accept4, fd, sa, len, flags);
}

static int raw_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return (int)syscall(SYS_connect, fd, sa, len);
}

static int raw_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

static int raw_ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
	return (int)syscall(SYS_ppoll, fds, n, ts, mask, _NSIG / 8);
}

static int raw_poll(struct pollfd *fds, nfds_t n, int timeout)
{
	struct timespec ts = { timeout / 1000, (long)(timeout % 1000) * 1000000 };

	return raw_ppoll(fds, n, timeout < 0 ? NULL : &ts, NULL);
}

static int raw_pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
		       const sigset_t *mask)
{
	struct { const sigset_t *set; size_t size; } sig = { mask, _NSIG / 8 };
	struct timespec copy, *t = NULL;

	if (ts) {
		copy = *ts; /* the kernel writes the time left into it */
		t = &copy;
	}
	return (int)syscall(SYS_pselect6, n, r, w, e, t, &sig);
}

static int raw_select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
	struct timespec ts;

	if (tv) {
		ts.tv_sec = tv->tv_sec;
		ts.tv_nsec = tv->tv_usec * 1000;
	}
	return raw_pselect(n, r, w, e, tv ? &ts : NULL, NULL);
}

static int raw_epoll_pwait(int ep, struct epoll_event *ev, int n, int timeout, const sigset_t *mask)
{
	return (int)syscall(SYS_epoll_pwait, ep, ev, n, timeout, mask, _NSIG / 8);
}

static int raw_epoll_wait(int ep, struct epoll_event *ev, int n, int timeout)
{
	return raw_epoll_pwait(ep, ev, n, timeout, NULL);
}

static int raw_clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
			       struct timespec *rem)
{
	/* clock_nanosleep returns the error instead of setting errno. */
	long r = syscall(SYS_clock_nanosleep, clk, flags, req, rem);

	return r < 0 ? errno : 0;
}

static int raw_nanosleep(const struct timespec *req, struct timespec *rem)
{
	return (int)syscall(SYS_clock_nanosleep, CLOCK_REALTIME, 0, req, rem);
}

static int raw_fcntl(int fd, int cmd, ...)
{
	va_list ap;

	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

static int raw_ioctl(int fd, unsigned long req, ...)
{
	va_list ap;

	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return (int)syscall(SYS_ioctl, fd, req, arg);
}

static int raw_socket(int domain, int type, int proto)
{
	return (int)syscall(SYS_socket, domain, type, proto);
}

static int raw_socketpair(int domain, int type, int proto, int *sv)
{
	return (int)syscall(SYS_socketpair, domain, type, proto, sv);
}

static int raw_pipe2(int *fds, int flags)
{
	return (int)syscall(SYS_pipe2, fds, flags);
}

static int raw_pipe(int *fds)
{
	return raw_pipe2(fds, 0);
}

static int raw_dup(int fd)
{
	return (int)syscall(SYS_dup, fd);
}

static int raw_dup3(int fd, int to, int flags)
{
	return (int)syscall(SYS_dup3, fd, to, flags);
}

static int raw_dup2(int fd, int to)
{
	/* dup3 refuses fd == to; dup2 returns it if it is open. */
	if (fd == to)
		return raw_fcntl(fd, F_GETFD) < 0 ? -1 : to;
	return raw_dup3(fd, to, 0);
}

static int raw_setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	return (int)syscall(SYS_setsockopt, fd, level, name, val, len);
}

/* The calls that are not one system call are looked up on first use. */
static void resolve(void);

static int lazy_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			    struct addrinfo **res)
{
	resolve();
	if (REAL(getaddrinfo) == lazy_getaddrinfo) {
		errno = ENOSYS;
		return EAI_SYSTEM;
	}
	return REAL(getaddrinfo)(node, service, hints, res);
}

static int lazy_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	resolve();
	if (REAL(sigaction) == lazy_sigaction) {
		errno = ENOSYS;
		return -1;
	}
	return REAL(sigaction)(sig, act, old);
}

/* The jumps cannot fail: without libc's there is nothing sane to do. */
#define LAZY_JUMP(name)                                                  \
	static void lazy_##name(jmp_buf env, int val)                    \
	{                                                                \
		resolve();                                               \
		if (REAL(name) == lazy_##name)                           \
			__builtin_trap();                                \
		REAL(name)(env, val);                                    \
		__builtin_unreachable();                                 \
	}
LAZY_JUMP(siglongjmp)
LAZY_JUMP(__longjmp_chk)

struct patch_real patch_real = {
	.read = raw_read, .write = raw_write, .readv = raw_readv, .writev = raw_writev,
	.recv = raw_recv, .send = raw_send, .recvfrom = raw_recvfrom, .sendto = raw_sendto,
	.recvmsg = raw_recvmsg, .sendmsg = raw_sendmsg, .accept4 = raw_accept4,
	.connect = raw_connect, .close = raw_close, .poll = raw_poll, .ppoll = raw_ppoll,
	.select = raw_select, .pselect = raw_pselect, .epoll_wait = raw_epoll_wait,
	.epoll_pwait = raw_epoll_pwait, .nanosleep = raw_nanosleep,
	.clock_nanosleep = raw_clock_nanosleep, .fcntl = raw_fcntl, .ioctl = raw_ioctl,
	.socket = raw_socket, .socketpair = raw_socketpair, .pipe = raw_pipe, .pipe2 = raw_pipe2,
	.dup = raw_dup, .dup2 = raw_dup2, .dup3 = raw_dup3, .setsockopt = raw_setsockopt,
	.getaddrinfo = lazy_getaddrinfo,
	.sigaction = lazy_sigaction, .siglongjmp = lazy_siglongjmp,
	.__longjmp_chk = lazy___longjmp_chk,
};

/* ------------------------------------------------------------ resolution */

/* dlsym may allocate, and a malloc may call what we define: those calls
 * find the stand-ins, and a lookup started inside one is not started again. */
static __thread bool resolving __attribute__((tls_model("initial-exec")));

#define RESOLVE_ONE(ret, name, args)                                           \
	{                                                                      \
		void *p = dlsym(RTLD_NEXT, #name);                             \
		if (p)                                                         \
			atomic_store_explicit(&patch_real.name, (ret(*) args)p, \
					      memory_order_relaxed);           \
	}

/* ------------------------------------------------------------ callers */

/* The executable segments of libgreenring.so and of this library. */
#define MAX_RANGES 8
static _Atomic uintptr_t range_lo[MAX_RANGES], range_hi[MAX_RANGES];
static atomic_int nranges;

struct find_text {
	uintptr_t inside[2];
};

static int collect_text(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct find_text *ft = arg;
	bool mine = false;

	(void)size;
	for (int i = 0; i < info->dlpi_phnum && !mine; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

		if (ph->p_type != PT_LOAD)
			continue;
		for (int k = 0; k < 2; k++)
			mine |= ft->inside[k] >= lo && ft->inside[k] < lo + ph->p_memsz;
	}
	if (!mine)
		return 0;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		int n = atomic_load_explicit(&nranges, memory_order_relaxed);

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) || n == MAX_RANGES)
			continue;
		atomic_store_explicit(&range_lo[n], info->dlpi_addr + ph->p_vaddr, memory_order_relaxed);
		atomic_store_explicit(&range_hi[n], info->dlpi_addr + ph->p_vaddr + ph->p_memsz,
				      memory_order_relaxed);
		atomic_store_explicit(&nranges, n + 1, memory_order_release);
	}
	return 0;
}

/* Whether ra lies in one of the collected text segments; its [lo, hi). */
static bool in_text(uintptr_t a, uintptr_t *lo, uintptr_t *hi)
{
	int n = atomic_load_explicit(&nranges, memory_order_acquire);

	for (int i = 0; i < n; i++) {
		*lo = atomic_load_explicit(&range_lo[i], memory_order_relaxed);
		*hi = atomic_load_explicit(&range_hi[i], memory_order_relaxed);
		if (a >= *lo && a < *hi)
			return true;
	}
	return false;
}

static bool in_own_text(uintptr_t a)
{
	uintptr_t lo, hi;

	return in_text(a, &lo, &hi);
}

/* Was the call that returns to ra a call to a libc function through the
 * caller's PLT or GOT, i.e. greenring's code calling libc itself? The
 * other way greenring's text can be the return address is a fiber's entry
 * function (or a server handler) called through a pointer that then
 * tail-called libc: `void entry(void *a) { sleep(1); }` compiles to a jump,
 * and sleep() returns straight into fiber.c. That call is the program's.
 * On x86-64 the two differ by the call instruction before ra. Elsewhere
 * the segment alone decides (docs/patching.md). */
static bool libc_call_site(uintptr_t ra, uintptr_t lo, uintptr_t hi)
{
#if defined(__x86_64__)
	const uint8_t *p = (const uint8_t *)ra;

	if (ra - lo >= 5 && p[-5] == 0xE8) {
		/* call rel32: its target must be a PLT stub, jmp *GOT(%rip),
		 * maybe after endbr64 and a bnd prefix. */
		int32_t rel;
		memcpy(&rel, p - 4, sizeof(rel));
		uintptr_t t = ra + (uintptr_t)(intptr_t)rel;
		if (t < lo || t + 8 > hi)
			return false;
		const uint8_t *q = (const uint8_t *)t;
		if (q[0] == 0xF3 && q[1] == 0x0F && q[2] == 0x1E && q[3] == 0xFA)
			q += 4;
		if (q[0] == 0xF2)
			q++;
		return q[0] == 0xFF && q[1] == 0x25;
	}
	if (ra - lo >= 6 && p[-6] == 0xFF && p[-5] == 0x15) {
		/* call *disp32(%rip) (-fno-plt): the GOT slot holds one of
		 * this library's definitions. */
		int32_t rel;
		uintptr_t target;
		memcpy(&rel, p - 4, sizeof(rel));
		memcpy(&target, (const void *)(ra + (uintptr_t)(intptr_t)rel), sizeof(target));
		return in_own_text(target);
	}
	return false;
#else
	(void)ra;
	(void)lo;
	(void)hi;
	return true;
#endif
}

bool patch_runtime_caller(const void *ra)
{
	uintptr_t lo, hi;

	return in_text((uintptr_t)ra, &lo, &hi) && libc_call_site((uintptr_t)ra, lo, hi);
}

static atomic_bool callers_known;

bool patch_callers_known(void)
{
	return atomic_load_explicit(&callers_known, memory_order_relaxed);
}

/* Whether the program's close() is this library's: nothing is interposed
 * before it. */
static bool first_in_lookup(void)
{
	Dl_info found, mine;
	void *p = dlsym(RTLD_DEFAULT, "close");

	return p && dladdr(p, &found) && dladdr((void *)&patch_runtime_caller, &mine) &&
	       found.dli_fbase == mine.dli_fbase;
}

static void resolve(void)
{
	static atomic_bool done;

	if (atomic_load_explicit(&done, memory_order_acquire) || resolving)
		return;
	resolving = true;
	PATCH_REAL_FUNCS(RESOLVE_ONE)
	if (atomic_load_explicit(&nranges, memory_order_relaxed) == 0) {
		struct find_text ft = { { (uintptr_t)&gr_now, (uintptr_t)&patch_runtime_caller } };

		dl_iterate_phdr(collect_text, &ft);
	}
	atomic_store_explicit(&callers_known, first_in_lookup(), memory_order_relaxed);
	resolving = false;
	atomic_store_explicit(&done, true, memory_order_release);
}

/* Early: before the program's own constructors, after our dependencies'. */
__attribute__((constructor(101))) static void patch_init(void)
{
	resolve();
}

/* ------------------------------------------------------------ green calls */

int patch_green_check(void)
{
	if (gr_killed())
		return -ECANCELED;
	int64_t d = gr_deadline_get();
	if (d != GR_FOREVER && d <= gr_now())
		return -ETIMEDOUT;
	return 0;
}

int64_t patch_ns(int64_t sec, int64_t nsec)
{
	return sec > INT64_MAX / GR_SEC - 1 ? INT64_MAX : sec * GR_SEC + nsec;
}

int64_t patch_deadline_after_ns(int64_t ns)
{
	if (ns < 0)
		return GR_FOREVER;
	int64_t now = gr_now();
	return ns > INT64_MAX - now ? INT64_MAX : now + ns;
}
