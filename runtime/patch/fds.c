/* fds.c — what the library knows of each fd number, and the calls that
 * create, copy, configure and close fds.
 *
 * The program's view of O_NONBLOCK. A blocking call on an fd the program
 * itself made non-blocking must keep returning EAGAIN, never park. The
 * kernel's flag cannot say whose it is: greenring's readiness hubs set it on
 * fds they wait on (docs/hubs.md, "Blocking-mode fds"), and this library
 * sets it on listening sockets it accepts on. So the library keeps its own
 * byte per fd number: the program's view, recorded where the program
 * expresses it (socket/accept4/socketpair with SOCK_NONBLOCK, pipe2 with
 * O_NONBLOCK, fcntl(F_SETFL), ioctl(FIONBIO), dup*), forgotten at close(),
 * and learned from the kernel the first time a fiber blocks on an fd
 * created where the library could not see it (eventfd, open, an inherited
 * fd). fcntl(F_GETFL) answers with that view.
 *
 * The table is process-wide (fds are), indexed by fd number in page-sized
 * chunks mapped on first use and never freed, read and written with atomic
 * byte operations: any thread, and a signal handler, may use it. Numbers
 * beyond its reach (2^24) have no entry and are treated as unknown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "patch.h"

#define CHUNK 4096
#define NCHUNKS 4096 /* fds below 2^24 */

static _Atomic(_Atomic uint8_t *) chunks[NCHUNKS];

/* The byte of fd; NULL if out of reach, or (create false) never written. */
static _Atomic uint8_t *slot(int fd, bool create)
{
	if (fd < 0 || (unsigned)fd / CHUNK >= NCHUNKS)
		return NULL;
	_Atomic(_Atomic uint8_t *) *c = &chunks[(unsigned)fd / CHUNK];
	_Atomic uint8_t *p = atomic_load_explicit(c, memory_order_acquire);

	if (!p && create) {
		/* mmap, not malloc: a signal handler may create fds too. */
		void *m = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		_Atomic uint8_t *expected = NULL;

		if (m == MAP_FAILED)
			return NULL;
		if (atomic_compare_exchange_strong_explicit(c, &expected, (_Atomic uint8_t *)m,
							    memory_order_acq_rel,
							    memory_order_acquire)) {
			p = m;
		} else {
			munmap(m, CHUNK);
			p = expected;
		}
	}
	return p ? &p[(unsigned)fd % CHUNK] : NULL;
}

unsigned fdv_get(int fd)
{
	_Atomic uint8_t *s = slot(fd, false);

	return s ? atomic_load_explicit(s, memory_order_relaxed) : 0;
}

void fdv_set(int fd, unsigned v)
{
	_Atomic uint8_t *s = slot(fd, v != 0);

	if (s)
		atomic_store_explicit(s, (uint8_t)v, memory_order_relaxed);
}

void fdv_update(int fd, unsigned clear, unsigned set)
{
	_Atomic uint8_t *s = slot(fd, set != 0);

	if (!s)
		return;
	uint8_t old = atomic_load_explicit(s, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(s, &old, (uint8_t)((old & ~clear) | set),
						      memory_order_relaxed, memory_order_relaxed))
		;
}

void fdv_clear_if(int fd, unsigned bit)
{
	_Atomic uint8_t *s = slot(fd, false);

	if (!s)
		return;
	uint8_t old = atomic_load_explicit(s, memory_order_relaxed);
	while ((old & bit) && !atomic_compare_exchange_weak_explicit(s, &old, 0, memory_order_relaxed,
								      memory_order_relaxed))
		;
}

void fdv_created(int fd, bool nonblock, enum fd_kind kind)
{
	unsigned v = FDV_KNOWN | (nonblock ? FDV_NONBLOCK : 0) | ((unsigned)kind << FDV_KIND_SHIFT);

	/* A fresh socket has no SO_RCVTIMEO or SO_SNDTIMEO. */
	if (kind == FD_KIND_SOCKET)
		v |= FDV_NO_TIMEO;
	fdv_set(fd, v);
}

unsigned fdv_learn(int fd)
{
	unsigned v = fdv_get(fd);

	/* A number being closed is not learnt: what the kernel says of it now
	 * would outlive the close (patch_close_green). */
	if (v & (FDV_KNOWN | FDV_CLOSING))
		return v;
	int fl = REAL(fcntl)(fd, F_GETFL);
	if (fl < 0)
		return 0;
	unsigned add = FDV_KNOWN | (fl & O_NONBLOCK ? FDV_NONBLOCK : 0);
	fdv_update(fd, 0, add);
	return v | add;
}

int fdv_for_call(int fd, unsigned *v)
{
	*v = fdv_learn(fd);
	return *v & FDV_CLOSING ? -EBADF : 0;
}

enum fd_kind fdv_classify(int fd)
{
	enum fd_kind kind = fdv_kind(fdv_get(fd));
	struct stat st;

	if (kind != FD_KIND_UNKNOWN)
		return kind;
	if (fstat(fd, &st) < 0)
		return FD_KIND_UNKNOWN;
	switch (st.st_mode & S_IFMT) {
	case S_IFSOCK:
		kind = FD_KIND_SOCKET;
		break;
	case S_IFREG:
	case S_IFDIR:
	case S_IFBLK:
		/* Always "ready" to poll(2): a read waits for the disk, not
		 * for readiness, as on greenring's readiness hubs. */
		kind = FD_KIND_FILE;
		break;
	default:
		/* FIFOs, character devices and anonymous inodes (eventfd,
		 * signalfd, timerfd, whose type bits are zero). */
		kind = FD_KIND_STREAM;
		break;
	}
	fdv_update(fd, FDV_KIND_MASK, (unsigned)kind << FDV_KIND_SHIFT);
	return kind;
}

/* What a copy of `from` (dup and its kin) knows: the same open file
 * description, so the same view and kind; not a close under way. Not "no
 * socket timeouts" either, on both numbers from now on: SO_RCVTIMEO set
 * through one of them is the socket's, and setsockopt() only sees the
 * number it was given, so a wait on either asks the kernel. */
static void copy_view(int from, int to)
{
	fdv_set(to, fdv_get(from) & ~(FDV_CLOSING | FDV_NO_TIMEO));
	fdv_update(from, FDV_NO_TIMEO, 0);
}

/* ------------------------------------------------------------ close */

int patch_close_green(int fd)
{
	if (fd < 0)
		return -EBADF;
	/* gr_close() calls close() itself (on the readiness hubs): that call
	 * comes back here, from greenring, and must be the real one. The mark
	 * says so even where the return address cannot (docs/patching.md). */
	fdv_set(fd, FDV_CLOSING);
	int r = gr_close(fd);
	int err = errno;
	/* Forget, unless the number was closed and already reused (a new fd
	 * is recorded afresh, without the mark). */
	fdv_clear_if(fd, FDV_CLOSING);
	return r < 0 ? -err : 0;
}

PATCH_API int close(int fd)
{
	if (PATCH_CTX() == PATCH_GREEN) {
		if (!(fdv_get(fd) & FDV_CLOSING)) {
			int saved = errno;

			return (int)patch_result(patch_close_green(fd), saved);
		}
		if (patch_callers_known()) {
			/* Not greenring's own close (the return address says so):
			 * a second close of a number another fiber is closing.
			 * The real close would free the number at once, a new fd
			 * could take it, and the first close, still draining,
			 * would then close that one. gr_close's own answer. */
			errno = EBADF;
			return -1;
		}
	}
	/* Forgotten before the close: once it is closed, the number may
	 * belong to another thread's new fd at once. */
	fdv_set(fd, 0);
	return REAL(close)(fd);
}

/* ------------------------------------------------------------ creation */

PATCH_API int socket(int domain, int type, int proto)
{
	bool ours = PATCH_CTX() != PATCH_RUNTIME;
	int fd = REAL(socket)(domain, type, proto);

	if (fd >= 0)
		fdv_created(fd, ours && (type & SOCK_NONBLOCK), FD_KIND_SOCKET);
	return fd;
}

PATCH_API int socketpair(int domain, int type, int proto, int sv[2])
{
	bool ours = PATCH_CTX() != PATCH_RUNTIME;
	int r = REAL(socketpair)(domain, type, proto, sv);

	if (r == 0) {
		fdv_created(sv[0], ours && (type & SOCK_NONBLOCK), FD_KIND_SOCKET);
		fdv_created(sv[1], ours && (type & SOCK_NONBLOCK), FD_KIND_SOCKET);
	}
	return r;
}

PATCH_API int pipe2(int fds[2], int flags)
{
	bool ours = PATCH_CTX() != PATCH_RUNTIME;
	int r = REAL(pipe2)(fds, flags);

	if (r == 0) {
		fdv_created(fds[0], ours && (flags & O_NONBLOCK), FD_KIND_STREAM);
		fdv_created(fds[1], ours && (flags & O_NONBLOCK), FD_KIND_STREAM);
	}
	return r;
}

PATCH_API int pipe(int fds[2])
{
	int r = REAL(pipe)(fds);

	if (r == 0) {
		fdv_created(fds[0], false, FD_KIND_STREAM);
		fdv_created(fds[1], false, FD_KIND_STREAM);
	}
	return r;
}

PATCH_API int dup(int fd)
{
	int r = REAL(dup)(fd);

	if (r >= 0)
		copy_view(fd, r);
	return r;
}

PATCH_API int dup2(int fd, int to)
{
	int r = REAL(dup2)(fd, to);

	if (r >= 0 && fd != to)
		copy_view(fd, r);
	return r;
}

PATCH_API int dup3(int fd, int to, int flags)
{
	int r = REAL(dup3)(fd, to, flags);

	if (r >= 0)
		copy_view(fd, r);
	return r;
}

/* ------------------------------------------------------------ configuration */

static int fcntl_view(const void *ra, int fd, int cmd, void *arg)
{
	if (patch_ctx(ra) == PATCH_RUNTIME) {
		/* greenring making an fd O_NONBLOCK (a file that refuses
		 * RWF_NOWAIT, docs/hubs.md): on a number the library never saw
		 * created, learn the program's view first, or the flag would
		 * later be learnt as the program's and its blocking calls would
		 * fail with EAGAIN. */
		if (cmd == F_SETFL)
			fdv_learn(fd);
		return REAL(fcntl)(fd, cmd, arg); /* greenring needs the kernel's truth */
	}
	switch (cmd) {
	case F_GETFL: {
		int fl = REAL(fcntl)(fd, cmd);
		unsigned v = fdv_get(fd);

		if (fl >= 0 && (v & FDV_KNOWN))
			fl = (fl & ~O_NONBLOCK) | (v & FDV_NONBLOCK ? O_NONBLOCK : 0);
		return fl;
	}
	case F_SETFL: {
		int fl = (int)(intptr_t)arg;
		unsigned v = fdv_get(fd);
		/* A listening socket the library accepts on stays non-blocking
		 * underneath; the program's own wish is recorded and shown. */
		int r = REAL(fcntl)(fd, cmd, fl | (v & FDV_GREEN_NB ? O_NONBLOCK : 0));

		if (r == 0)
			fdv_update(fd, FDV_NONBLOCK, FDV_KNOWN | (fl & O_NONBLOCK ? FDV_NONBLOCK : 0));
		return r;
	}
	case F_DUPFD:
	case F_DUPFD_CLOEXEC: {
		int r = REAL(fcntl)(fd, cmd, arg);

		if (r >= 0)
			copy_view(fd, r);
		return r;
	}
	default:
		return REAL(fcntl)(fd, cmd, arg);
	}
}

/* As glibc's own, the third argument is read as a pointer whatever cmd
 * says: an int passed there occupies the same register or slot. */
PATCH_API int fcntl(int fd, int cmd, ...)
{
	va_list ap;

	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl_view(__builtin_return_address(0), fd, cmd, arg);
}

/* What a program built with _FILE_OFFSET_BITS=64 calls. */
PATCH_API int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

PATCH_API int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;

	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (req != FIONBIO || !arg || PATCH_CTX() == PATCH_RUNTIME)
		return REAL(ioctl)(fd, req, arg);
	bool on = *(const int *)arg != 0;
	unsigned v = fdv_get(fd);
	int r;
	if (!on && (v & FDV_GREEN_NB))
		r = REAL(fcntl)(fd, F_GETFD) < 0 ? -1 : 0; /* stays non-blocking underneath */
	else
		r = REAL(ioctl)(fd, req, arg);
	if (r == 0)
		fdv_update(fd, FDV_NONBLOCK, FDV_KNOWN | (on ? FDV_NONBLOCK : 0));
	return r;
}

PATCH_API int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	int r = REAL(setsockopt)(fd, level, name, val, len);

	/* Blocking calls on a socket with these options give up with EAGAIN
	 * (EINPROGRESS for connect): the green versions must know to. */
	if (r == 0 && level == SOL_SOCKET &&
	    (name == SO_RCVTIMEO || name == SO_SNDTIMEO
#ifdef SO_RCVTIMEO_NEW
	     || name == SO_RCVTIMEO_NEW || name == SO_SNDTIMEO_NEW
#endif
	     ))
		fdv_update(fd, FDV_NO_TIMEO, 0);
	return r;
}
