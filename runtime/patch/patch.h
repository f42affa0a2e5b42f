/* patch.h — what the patch library's files share (libgreenring-patch.so,
 * docs/patching.md).
 *
 * The library defines libc's blocking calls (read, poll, sleep, ...) so that
 * a program that links or preloads it sees them first. Each definition
 * decides, per call, where it runs (patch_ctx below):
 *   PATCH_PLAIN    a thread with no hub, the hub itself, a signal handler:
 *                  the real libc call, unchanged;
 *   PATCH_RUNTIME  greenring itself calling libc (its readiness hubs try
 *                  read() after making an fd non-blocking, gr_close() calls
 *                  close()): the real call, and nothing is recorded as the
 *                  program's doing;
 *   PATCH_GREEN    a fiber (a thread's main context included): the green
 *                  version, which parks the fiber instead of the thread.
 * The green versions use greenring's public API only (gr_wait_fd, gr_sleep,
 * gr_close, gr_tpool_run, the sync primitives) and never call gr_read and
 * its kin: those call read() themselves on the readiness hubs, which would
 * come back here. Every libc function the library needs is called through
 * REAL(), never by its plain name, for the same reason.
 */
#ifndef GREENRING_PATCH_H
#define GREENRING_PATCH_H

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/select.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <greenring.h>

/* The interposed definitions are the library's only exports. */
#define PATCH_API __attribute__((visibility("default")))

#define PATCH_LIKELY(x) __builtin_expect(!!(x), 1)

/* ------------------------------------------------------------ real calls */

struct addrinfo;
struct epoll_event;
struct msghdr;
struct sockaddr;

/* Every libc function the library defines, with its type. The table holds
 * libc's versions (dlsym(RTLD_NEXT)) once the library's constructor ran;
 * before that, raw system calls (or a lazy lookup) stand in, so a call made
 * by another library's constructor, or from inside dlsym's own allocations,
 * never recurses and never finds an empty slot. */
#define PATCH_REAL_FUNCS(X)                                                                   \
	X(ssize_t, read, (int, void *, size_t))                                               \
	X(ssize_t, write, (int, const void *, size_t))                                        \
	X(ssize_t, readv, (int, const struct iovec *, int))                                   \
	X(ssize_t, writev, (int, const struct iovec *, int))                                  \
	X(ssize_t, recv, (int, void *, size_t, int))                                          \
	X(ssize_t, send, (int, const void *, size_t, int))                                    \
	X(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *, socklen_t *))      \
	X(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
	X(ssize_t, recvmsg, (int, struct msghdr *, int))                                      \
	X(ssize_t, sendmsg, (int, const struct msghdr *, int))                                \
	X(int, accept4, (int, struct sockaddr *, socklen_t *, int))                           \
	X(int, connect, (int, const struct sockaddr *, socklen_t))                            \
	X(int, close, (int))                                                                  \
	X(int, poll, (struct pollfd *, nfds_t, int))                                          \
	X(int, ppoll, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *))   \
	X(int, select, (int, fd_set *, fd_set *, fd_set *, struct timeval *))                 \
	X(int, pselect, (int, fd_set *, fd_set *, fd_set *, const struct timespec *,          \
			 const sigset_t *))                                                   \
	X(int, epoll_wait, (int, struct epoll_event *, int, int))                             \
	X(int, epoll_pwait, (int, struct epoll_event *, int, int, const sigset_t *))          \
	X(int, nanosleep, (const struct timespec *, struct timespec *))                       \
	X(int, clock_nanosleep, (clockid_t, int, const struct timespec *, struct timespec *)) \
	X(int, fcntl, (int, int, ...))                                                        \
	X(int, ioctl, (int, unsigned long, ...))                                              \
	X(int, socket, (int, int, int))                                                       \
	X(int, socketpair, (int, int, int, int *))                                            \
	X(int, pipe, (int *))                                                                 \
	X(int, pipe2, (int *, int))                                                           \
	X(int, dup, (int))                                                                    \
	X(int, dup2, (int, int))                                                              \
	X(int, dup3, (int, int, int))                                                         \
	X(int, setsockopt, (int, int, int, const void *, socklen_t))                          \
	X(int, getaddrinfo, (const char *, const char *, const struct addrinfo *,             \
			     struct addrinfo **))                                             \
	X(int, sigaction, (int, const struct sigaction *, struct sigaction *))                \
	X(void, siglongjmp, (jmp_buf, int))                                             \
	X(void, __longjmp_chk, (jmp_buf, int))

#define PATCH_REAL_FIELD(ret, name, args) _Atomic(ret(*) args) name;
struct patch_real {
	PATCH_REAL_FUNCS(PATCH_REAL_FIELD)
};
extern struct patch_real patch_real;

/* libc's `name`. Relaxed: the slots only ever go from a stand-in to libc's
 * function, and either is correct to call. */
#define REAL(name) atomic_load_explicit(&patch_real.name, memory_order_relaxed)

/* glibc's _FORTIFY_SOURCE entry points, which no header declares: a
 * fortified program calls these instead of read, recv, recvfrom, poll and
 * ppoll. __chk_fail ends the program on an overflow, as glibc's do. */
void __chk_fail(void) __attribute__((noreturn));
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
		       struct sockaddr *from, socklen_t *fromlen);
int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask,
		size_t fdslen);
void __longjmp_chk(jmp_buf env, int val);

/* ------------------------------------------------------------ contexts */

enum patch_ctx { PATCH_PLAIN, PATCH_RUNTIME, PATCH_GREEN };

/* > 0 while this thread runs a signal handler installed through the
 * library's sigaction() (signal.c). */
extern __thread int patch_in_signal __attribute__((tls_model("initial-exec")));

/* Whether a call returning to `ra` comes from greenring's own code (or
 * from this library's, through a greenring function that tail-called
 * libc). */
bool patch_runtime_caller(const void *ra);

/* Whether patch_runtime_caller can be trusted to recognise greenring's own
 * calls: the library comes first in symbol lookup, so nothing (a
 * sanitizer's interceptor) sits between greenring's call and the library
 * and hides the return address. Known from the constructor on. */
bool patch_callers_known(void);

/* Where the calling interposed function runs. A thread that never used
 * greenring pays for one call that reads one thread-local variable. */
static inline __attribute__((always_inline)) enum patch_ctx patch_ctx(const void *ra)
{
	if (PATCH_LIKELY(!gr_can_park()))
		return PATCH_PLAIN;
	if (patch_in_signal)
		return PATCH_PLAIN;
	return patch_runtime_caller(ra) ? PATCH_RUNTIME : PATCH_GREEN;
}

/* Must be expanded in the interposed function itself: the return address
 * is its caller's. */
#define PATCH_CTX() patch_ctx(__builtin_return_address(0))

/* A green call's answer as libc gives it: r, or -1 with errno. errno is the
 * thread's, not the fiber's, and the call may have switched to fibers that
 * set it: a failure's errno is written last, and a success puts back
 * `saved`, the caller's errno read before the call began (libc's calls
 * leave it alone when they succeed). */
static inline ssize_t patch_result(ssize_t r, int saved)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	errno = saved;
	return r;
}

/* The pre-block checks every green call makes before it even tries, as
 * greenring's own calls do (the kill rule, greenring.h): -ECANCELED for a
 * killed fiber, -ETIMEDOUT once the fiber's deadline has passed, else 0. */
int patch_green_check(void);

/* ------------------------------------------------------------ fds */

/* What the library knows of an fd number (fds.c), one byte per fd. */
#define FDV_KNOWN       0x01u  /* the rest is valid: seen created, or learned */
#define FDV_NONBLOCK    0x02u  /* the program's own view: it made the fd O_NONBLOCK */
#define FDV_GREEN_NB    0x04u  /* the library set O_NONBLOCK in the kernel (a
				  listening socket it accepts on) and hides it */
#define FDV_CLOSING     0x08u  /* close() handed the fd to gr_close() */
#define FDV_NO_TIMEO    0x10u  /* a socket known to have no SO_RCVTIMEO/SNDTIMEO */
#define FDV_KIND_SHIFT  5
#define FDV_KIND_MASK   (7u << FDV_KIND_SHIFT)

/* How a blocking call on an fd is made green (fds.c classifies). */
enum fd_kind {
	FD_KIND_UNKNOWN = 0,
	FD_KIND_SOCKET,     /* the MSG_DONTWAIT calls: no flag is changed */
	FD_KIND_STREAM,     /* pipe, FIFO, eventfd...: preadv2/pwritev2(RWF_NOWAIT) */
	FD_KIND_POLLFIRST,  /* a device without RWF_NOWAIT (a tty): wait, then call */
	FD_KIND_FILE,       /* regular file, directory, block device: never waits */
};

static inline enum fd_kind fdv_kind(unsigned v)
{
	return (enum fd_kind)((v & FDV_KIND_MASK) >> FDV_KIND_SHIFT);
}

unsigned fdv_get(int fd);
void fdv_set(int fd, unsigned v);
/* Clear then set bits, atomically. */
void fdv_update(int fd, unsigned clear, unsigned set);
/* Forget fd's record if it holds `bit` (whatever else was added to it
 * meanwhile); a record without it is another fd's, and stays. */
void fdv_clear_if(int fd, unsigned bit);
/* A new fd: the program asked for `nonblock`. */
void fdv_created(int fd, bool nonblock, enum fd_kind kind);
/* The state of fd, learning the program's view from the kernel the first
 * time (an fd created where the library could not see it). A number being
 * closed is not learnt. */
unsigned fdv_learn(int fd);
/* fdv_learn for a green call on fd: 0 and the state in *v, or -EBADF while
 * a fiber's close() of fd is under way: the real call would block the
 * thread on a number gr_close still holds, and a wait on it would end so
 * anyway. */
int fdv_for_call(int fd, unsigned *v);
/* fd's kind, found with fstat() the first time. FD_KIND_UNKNOWN with
 * errno set if fd is not open. */
enum fd_kind fdv_classify(int fd);

/* Close fd from a fiber: through gr_close(), which wakes the fibers waiting
 * on it with EBADF and waits until nothing in flight names it. 0 or
 * -errno. */
int patch_close_green(int fd);

/* ------------------------------------------------------------ waiting */

/* Park until fd is ready for `events` or `deadline` (absolute, GR_FOREVER)
 * passes. 0 when ready; -ETIMEDOUT, -ECANCELED, -EBADF, ... (poll.c). */
int patch_wait_fd(int fd, short events, int64_t deadline);

/* Park until one of fds may be ready (none was when the caller tried), or
 * deadline passes: 0 (the caller polls again to see which), -ETIMEDOUT,
 * -ECANCELED, or another -errno. */
int patch_wait_any(const struct pollfd *fds, nfds_t n, int64_t deadline);

/* A valid (non-negative) timespec or timeval, in ns, saturating at
 * INT64_MAX: a timeout of centuries is a wait without end, never one that
 * wrapped to a short one. */
int64_t patch_ns(int64_t sec, int64_t nsec);

/* Absolute deadline of a relative timeout; GR_FOREVER for none. */
int64_t patch_deadline_after_ns(int64_t ns);

#endif
