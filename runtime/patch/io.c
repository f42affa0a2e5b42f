/* io.c — the blocking data calls, accept and connect, made green.
 *
 * From a fiber, on an fd the program did not make non-blocking, a call is
 * tried without blocking and, if it would block, the fiber parks on the
 * fd's readiness (gr_wait_fd) and tries again. How it is tried depends on
 * the file (fds.c classifies it once):
 *   socket      the call's MSG_DONTWAIT twin (read is recv, readv recvmsg,
 *               ...): no flag of the file is touched;
 *   stream      a pipe, FIFO or eventfd: preadv2/pwritev2 with RWF_NOWAIT,
 *               again without touching the file's flags;
 *   poll-first  a file without RWF_NOWAIT (a tty, a FIFO): the plain call
 *               once poll(2) says the fd is ready now, writes in pieces of
 *               PIPE_BUF (try_pollfirst). A reader in another thread or
 *               process may still win the race and block the thread
 *               (docs/patching.md);
 *   file        regular files, directories, block devices: the plain call.
 *               Never "not ready", so nothing to wait for; a cold read
 *               blocks the thread (greenring's own gr_read does not: it
 *               hands what would wait for the disk to the thread pool).
 * accept needs the listening socket non-blocking in the kernel (accept has
 * no per-call flag, and N fibers accepting on one socket is the usual
 * server); the library sets it, hides it (fds.c), and makes a plain accept
 * on it (a thread with no hub) block as before. connect sets it only for
 * the instant of the call.
 *
 * Blocking semantics kept: a write or send returns when everything is
 * written (the kernel's blocking send does that), a recv with MSG_WAITALL
 * when everything is read, SO_RCVTIMEO / SO_SNDTIMEO end a wait with EAGAIN
 * (EINPROGRESS for connect). What is added: a kill fails the call with
 * ECANCELED and the fiber's deadline with ETIMEDOUT (greenring.h's rule);
 * bytes already moved are returned instead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "patch.h"

enum io_op { IO_READ, IO_WRITE, IO_READV, IO_WRITEV, IO_RECV, IO_SEND, IO_RECVFROM, IO_SENDTO,
	     IO_RECVMSG, IO_SENDMSG };

/* One blocking call, as the program made it. */
struct io {
	enum io_op op;
	int fd;
	void *buf;
	size_t len;
	const struct iovec *iov;
	int iovcnt;
	int flags;
	struct sockaddr *from;          /* recvfrom */
	socklen_t *fromlen;
	const struct sockaddr *to;      /* sendto */
	socklen_t tolen;
	struct msghdr *msg;
	int64_t timeo_deadline;         /* SO_*TIMEO's end; 0 = not asked yet */
};

static bool is_output(enum io_op op)
{
	return op == IO_WRITE || op == IO_WRITEV || op == IO_SEND || op == IO_SENDTO ||
	       op == IO_SENDMSG;
}

/* The socket calls: their fd can only be a socket, and they take flags. */
static bool is_socket_call(enum io_op op)
{
	return op >= IO_RECV;
}

static ssize_t neg_errno(ssize_t r)
{
	return r < 0 ? -errno : r;
}

/* The call exactly as the program made it. -errno on failure. */
static ssize_t io_plain(const struct io *io)
{
	switch (io->op) {
	case IO_READ: return neg_errno(REAL(read)(io->fd, io->buf, io->len));
	case IO_WRITE: return neg_errno(REAL(write)(io->fd, io->buf, io->len));
	case IO_READV: return neg_errno(REAL(readv)(io->fd, io->iov, io->iovcnt));
	case IO_WRITEV: return neg_errno(REAL(writev)(io->fd, io->iov, io->iovcnt));
	case IO_RECV: return neg_errno(REAL(recv)(io->fd, io->buf, io->len, io->flags));
	case IO_SEND: return neg_errno(REAL(send)(io->fd, io->buf, io->len, io->flags));
	case IO_RECVFROM:
		return neg_errno(REAL(recvfrom)(io->fd, io->buf, io->len, io->flags, io->from,
						io->fromlen));
	case IO_SENDTO:
		return neg_errno(REAL(sendto)(io->fd, io->buf, io->len, io->flags, io->to, io->tolen));
	case IO_RECVMSG: return neg_errno(REAL(recvmsg)(io->fd, io->msg, io->flags));
	case IO_SENDMSG: return neg_errno(REAL(sendmsg)(io->fd, io->msg, io->flags));
	}
	return -EINVAL;
}

/* What of a writev is left after `done` bytes: a window of at most
 * IOV_WINDOW entries copied into win, the first one advanced past what was
 * written, their total cut to `cap` bytes (0: no cap). The program's iovec
 * is never touched; a window written whole is followed by the next one.
 * Its count. */
#define IOV_WINDOW 32
static int iov_rest(const struct io *io, size_t done, struct iovec *win, size_t cap)
{
	size_t room = cap ? cap : SIZE_MAX;
	int k = 0, n = 0;

	while (k < io->iovcnt && done >= io->iov[k].iov_len) {
		done -= io->iov[k].iov_len;
		k++;
	}
	for (; k < io->iovcnt && n < IOV_WINDOW && room; k++, n++) {
		win[n] = io->iov[k];
		if (n == 0) {
			win[0].iov_base = (char *)win[0].iov_base + done;
			win[0].iov_len -= done;
		}
		if (win[n].iov_len > room)
			win[n].iov_len = room;
		room -= win[n].iov_len;
	}
	return n;
}

/* The bytes a writev asks for, once the kernel has read its iovec (a
 * first call that wrote something): saturated at SSIZE_MAX, the most one
 * call moves. */
static size_t iov_total(const struct io *io)
{
	size_t total = 0;

	for (int k = 0; k < io->iovcnt; k++) {
		if (io->iov[k].iov_len > (size_t)SSIZE_MAX - total)
			return (size_t)SSIZE_MAX;
		total += io->iov[k].iov_len;
	}
	return total;
}

/* On a socket, never blocking; `done` bytes of a full write or a
 * MSG_WAITALL read are behind us. */
static ssize_t try_socket(const struct io *io, size_t done)
{
	int fl = (io->flags & ~MSG_WAITALL) | MSG_DONTWAIT;
	char *buf = (char *)io->buf + done;
	size_t len = io->len - done;

	switch (io->op) {
	case IO_READ:
		/* read(2) of nothing returns 0 at once on a socket; recv of
		 * nothing would say EAGAIN, and the call would wait. */
		if (!len)
			return neg_errno(REAL(read)(io->fd, buf, 0));
		return neg_errno(REAL(recv)(io->fd, buf, len, MSG_DONTWAIT));
	case IO_WRITE:
		return neg_errno(REAL(send)(io->fd, buf, len, MSG_DONTWAIT));
	case IO_READV:
	case IO_WRITEV: {
		struct iovec win[IOV_WINDOW];
		struct msghdr m = { .msg_iov = (struct iovec *)io->iov, .msg_iovlen = (size_t)io->iovcnt };

		if (done) {
			m.msg_iov = win;
			m.msg_iovlen = (size_t)iov_rest(io, done, win, 0);
		}

		return io->op == IO_READV ? neg_errno(REAL(recvmsg)(io->fd, &m, MSG_DONTWAIT))
					  : neg_errno(REAL(sendmsg)(io->fd, &m, MSG_DONTWAIT));
	}
	case IO_RECV: return neg_errno(REAL(recv)(io->fd, buf, len, fl));
	case IO_SEND: return neg_errno(REAL(send)(io->fd, buf, len, fl));
	case IO_RECVFROM:
		return neg_errno(REAL(recvfrom)(io->fd, buf, len, fl, io->from, io->fromlen));
	case IO_SENDTO:
		return neg_errno(REAL(sendto)(io->fd, buf, len, fl, io->to, io->tolen));
	case IO_RECVMSG: return neg_errno(REAL(recvmsg)(io->fd, io->msg, fl));
	case IO_SENDMSG: {
		if (!done)
			return neg_errno(REAL(sendmsg)(io->fd, io->msg, fl));
		/* The rest of a stream socket's message: its data only, the
		 * ancillary part (SCM_RIGHTS, ...) went with the first bytes. */
		struct iovec win[IOV_WINDOW];
		struct msghdr m = { .msg_iov = win };

		m.msg_iovlen = (size_t)iov_rest(io, done, win, 0);
		return neg_errno(REAL(sendmsg)(io->fd, &m, fl));
	}
	}
	return -EINVAL;
}

/* On a pipe, FIFO, eventfd...: never blocking, flags untouched. Offset -1
 * is the file position, as read() and write() use. */
static ssize_t try_stream(const struct io *io, size_t done)
{
	struct iovec one = { (char *)io->buf + done, io->len - done }, win[IOV_WINDOW];
	const struct iovec *iov = &one;
	int n = 1;

	if (io->op == IO_READV || io->op == IO_WRITEV) {
		iov = done ? win : io->iov;
		n = done ? iov_rest(io, done, win, 0) : io->iovcnt;
	}
	return is_output(io->op) ? neg_errno(pwritev2(io->fd, iov, n, -1, RWF_NOWAIT))
				 : neg_errno(preadv2(io->fd, iov, n, -1, RWF_NOWAIT));
}

/* On a file without RWF_NOWAIT (a tty, a FIFO, an eventfd's write): the
 * plain call, made only if the kernel says the fd is ready now. A wake-up
 * only says it was: a second fiber woken by the same event finds it taken
 * by the first, and its plain read would block the thread until a writer
 * comes — maybe a fiber of this very thread. Between this poll and the call
 * no other fiber of the thread runs. A write goes in pieces of PIPE_BUF: a
 * writable pipe has room for that much, while a larger blocking write
 * waits for a reader; a full write loops over the pieces. Another thread or
 * process reading the same fd can still win the race (docs/patching.md). */
static ssize_t try_pollfirst(const struct io *io, size_t done)
{
	bool out = is_output(io->op);
	struct pollfd p = { .fd = io->fd, .events = out ? POLLOUT : POLLIN };
	int ready = REAL(poll)(&p, 1, 0);

	if (ready <= 0)
		return ready < 0 ? -errno : -EAGAIN;
	struct io part = *io;
	struct iovec win[IOV_WINDOW];
	if (io->op == IO_READ || io->op == IO_WRITE) {
		part.buf = (char *)io->buf + done;
		part.len = io->len - done;
		if (out && part.len > PIPE_BUF)
			part.len = PIPE_BUF;
	} else if (io->op == IO_WRITEV) {
		part.iov = win;
		part.iovcnt = iov_rest(io, done, win, PIPE_BUF);
	}
	return io_plain(&part);
}

/* The end of the wait SO_RCVTIMEO or SO_SNDTIMEO allow, asked of the
 * kernel at the first wait of a call (none: GR_FOREVER). */
static int64_t socket_timeout(struct io *io, int option)
{
	if (io->timeo_deadline)
		return io->timeo_deadline;
	io->timeo_deadline = GR_FOREVER;
	if (fdv_get(io->fd) & FDV_NO_TIMEO)
		return GR_FOREVER;
	struct timeval tv = { 0 };
	socklen_t len = sizeof(tv);
	if (getsockopt(io->fd, SOL_SOCKET, option, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec))
		io->timeo_deadline = patch_deadline_after_ns(tv.tv_sec * GR_SEC + tv.tv_usec * 1000);
	else
		fdv_update(io->fd, 0, FDV_NO_TIMEO);
	return io->timeo_deadline;
}

/* Park until fd is ready for the call; a socket's own timeout ends the
 * wait with EAGAIN, as it ends the blocking call. */
static int wait_for(int fd, short events, int64_t deadline)
{
	int r = patch_wait_fd(fd, events, deadline);

	if (r == -ETIMEDOUT && deadline != GR_FOREVER && gr_now() >= deadline)
		return -EAGAIN;
	return r;
}

static int wait_io(struct io *io, enum fd_kind kind)
{
	bool out = is_output(io->op);
	int64_t deadline = kind == FD_KIND_SOCKET ? socket_timeout(io, out ? SO_SNDTIMEO : SO_RCVTIMEO)
						  : GR_FOREVER;

	return wait_for(io->fd, out ? POLLOUT : POLLIN, deadline);
}

/* Does the blocking call move everything before it returns? A write,
 * writev, send, sendto or sendmsg does (the kernel's blocking send loops;
 * a socket of messages sends one whole or not at all, so only a stream
 * socket ever comes back short, and no socket type need be asked); a recv
 * with MSG_WAITALL does on a stream socket (a datagram is one message). */
static bool moves_all(const struct io *io)
{
	if (io->op == IO_WRITE || io->op == IO_WRITEV || io->op == IO_SEND || io->op == IO_SENDTO ||
	    io->op == IO_SENDMSG)
		return true;
	if ((io->op != IO_RECV && io->op != IO_RECVFROM) || !(io->flags & MSG_WAITALL))
		return false;
	int type = 0;
	socklen_t len = sizeof(type);
	return getsockopt(io->fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

static ssize_t green_io(struct io *io)
{
	int err = patch_green_check();

	if (err)
		return err;
	unsigned v;
	if ((err = fdv_for_call(io->fd, &v)))
		return err;
	if (!(v & FDV_KNOWN) || (v & FDV_NONBLOCK))
		return io_plain(io); /* not open (the plain call says so), or the program's own EAGAIN */
	if (is_socket_call(io->op) && (io->flags & MSG_DONTWAIT))
		return io_plain(io);
	/* readv's own answer (recvmsg would say EMSGSIZE, and a pipe's
	 * EINVAL would be taken for a refusal of RWF_NOWAIT). */
	if ((io->op == IO_READV || io->op == IO_WRITEV) && (io->iovcnt < 0 || io->iovcnt > IOV_MAX))
		return -EINVAL;
	if (io->op == IO_RECVMSG && (io->flags & MSG_WAITALL)) {
		/* A partial recvmsg cannot be resumed without rewriting the
		 * program's iovec: wait for data, then let the kernel wait
		 * for the rest (docs/patching.md). */
		err = wait_io(io, FD_KIND_SOCKET);
		return err ? err : io_plain(io);
	}
	enum fd_kind kind = is_socket_call(io->op) ? FD_KIND_SOCKET : fdv_classify(io->fd);
	bool all = moves_all(io);
	size_t done = 0;

	for (;;) {
		ssize_t r;

		switch (kind) {
		case FD_KIND_SOCKET:
			r = try_socket(io, done);
			if (r == -ENOTSOCK && !is_socket_call(io->op)) {
				/* The number now names another kind of file. */
				fdv_update(io->fd, FDV_KIND_MASK, 0);
				kind = fdv_classify(io->fd);
				continue;
			}
			break;
		case FD_KIND_STREAM:
			r = try_stream(io, done);
			if (r == -EOPNOTSUPP || r == -EINVAL) {
				fdv_update(io->fd, FDV_KIND_MASK,
					   (unsigned)FD_KIND_POLLFIRST << FDV_KIND_SHIFT);
				kind = FD_KIND_POLLFIRST;
				continue;
			}
			break;
		case FD_KIND_POLLFIRST:
			r = try_pollfirst(io, done);
			break;
		default:
			return io_plain(io);
		}
		if (r > 0 && all && done == 0 && (io->op == IO_WRITEV || io->op == IO_SENDMSG)) {
			/* The kernel has read the message and its iovec: both are
			 * valid (a sendmsg's is at most UIO_MAXIOV long). */
			if (io->op == IO_SENDMSG) {
				io->iov = io->msg->msg_iov;
				io->iovcnt = (int)io->msg->msg_iovlen;
			}
			io->len = iov_total(io);
		}
		if (r > 0 && all && done + (size_t)r < io->len) {
			done += (size_t)r;
			continue;
		}
		if (r >= 0)
			return all ? (ssize_t)done + r : r;
		if (r != -EAGAIN)
			return done ? (ssize_t)done : r;
		err = wait_io(io, kind);
		if (err)
			return done ? (ssize_t)done : err; /* bytes moved are the caller's */
	}
}

static ssize_t do_io(enum patch_ctx ctx, struct io *io)
{
	int saved = errno;

	return patch_result(ctx != PATCH_GREEN ? io_plain(io) : green_io(io), saved);
}

/* ------------------------------------------------------------ the calls */

#define CTX() PATCH_CTX()

PATCH_API ssize_t read(int fd, void *buf, size_t n)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(read)(fd, buf, n);
	struct io io = { .op = IO_READ, .fd = fd, .buf = buf, .len = n };
	return do_io(ctx, &io);
}

PATCH_API ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
	if (n > buflen)
		__chk_fail();
	enum patch_ctx ctx = CTX();
	struct io io = { .op = IO_READ, .fd = fd, .buf = buf, .len = n };
	return do_io(ctx, &io);
}

PATCH_API ssize_t write(int fd, const void *buf, size_t n)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(write)(fd, buf, n);
	struct io io = { .op = IO_WRITE, .fd = fd, .buf = (void *)buf, .len = n };
	return do_io(ctx, &io);
}

PATCH_API ssize_t readv(int fd, const struct iovec *iov, int n)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(readv)(fd, iov, n);
	struct io io = { .op = IO_READV, .fd = fd, .iov = iov, .iovcnt = n };
	return do_io(ctx, &io);
}

PATCH_API ssize_t writev(int fd, const struct iovec *iov, int n)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(writev)(fd, iov, n);
	struct io io = { .op = IO_WRITEV, .fd = fd, .iov = iov, .iovcnt = n };
	return do_io(ctx, &io);
}

PATCH_API ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(recv)(fd, buf, n, flags);
	struct io io = { .op = IO_RECV, .fd = fd, .buf = buf, .len = n, .flags = flags };
	return do_io(ctx, &io);
}

PATCH_API ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
	if (n > buflen)
		__chk_fail();
	enum patch_ctx ctx = CTX();
	struct io io = { .op = IO_RECV, .fd = fd, .buf = buf, .len = n, .flags = flags };
	return do_io(ctx, &io);
}

PATCH_API ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(send)(fd, buf, n, flags);
	struct io io = { .op = IO_SEND, .fd = fd, .buf = (void *)buf, .len = n, .flags = flags };
	return do_io(ctx, &io);
}

PATCH_API ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from,
			   socklen_t *fromlen)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(recvfrom)(fd, buf, n, flags, from, fromlen);
	struct io io = { .op = IO_RECVFROM, .fd = fd, .buf = buf, .len = n, .flags = flags,
			 .from = from, .fromlen = fromlen };
	return do_io(ctx, &io);
}

PATCH_API ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
				 struct sockaddr *from, socklen_t *fromlen)
{
	if (n > buflen)
		__chk_fail();
	enum patch_ctx ctx = CTX();
	struct io io = { .op = IO_RECVFROM, .fd = fd, .buf = buf, .len = n, .flags = flags,
			 .from = from, .fromlen = fromlen };
	return do_io(ctx, &io);
}

PATCH_API ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
			 socklen_t tolen)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(sendto)(fd, buf, n, flags, to, tolen);
	struct io io = { .op = IO_SENDTO, .fd = fd, .buf = (void *)buf, .len = n, .flags = flags,
			 .to = to, .tolen = tolen };
	return do_io(ctx, &io);
}

PATCH_API ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(recvmsg)(fd, msg, flags);
	struct io io = { .op = IO_RECVMSG, .fd = fd, .msg = msg, .flags = flags };
	return do_io(ctx, &io);
}

PATCH_API ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	enum patch_ctx ctx = CTX();

	if (PATCH_LIKELY(ctx == PATCH_PLAIN))
		return REAL(sendmsg)(fd, msg, flags);
	struct io io = { .op = IO_SENDMSG, .fd = fd, .msg = (struct msghdr *)msg, .flags = flags };
	return do_io(ctx, &io);
}

/* ------------------------------------------------------------ accept */

/* An accepted socket: what the program asked for, and the listener's
 * timeouts, which it inherits. */
static void accepted(int listener, int fd, bool nonblock)
{
	fdv_created(fd, nonblock, FD_KIND_SOCKET);
	if (!(fdv_get(listener) & FDV_NO_TIMEO))
		fdv_update(fd, FDV_NO_TIMEO, 0);
}

/* A plain accept on a listener the library made non-blocking underneath
 * (a thread with no hub, a signal handler): block as the program expects,
 * in poll(2). */
static int accept_blocking(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	for (;;) {
		int r = REAL(accept4)(fd, sa, len, flags);

		if (r >= 0 || errno != EAGAIN)
			return r;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (REAL(poll)(&p, 1, -1) < 0)
			return -1;
	}
}

static int green_accept(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	int err = patch_green_check();

	if (err)
		return err;
	unsigned v;
	if ((err = fdv_for_call(fd, &v)))
		return err;
	if (!(v & FDV_KNOWN) || (v & FDV_NONBLOCK)) {
		int r = REAL(accept4)(fd, sa, len, flags);
		return r < 0 ? -errno : r;
	}
	if (!(v & FDV_GREEN_NB)) {
		int fl = REAL(fcntl)(fd, F_GETFL);

		if (fl < 0 || (!(fl & O_NONBLOCK) && REAL(fcntl)(fd, F_SETFL, fl | O_NONBLOCK) < 0))
			return -errno;
		fdv_update(fd, 0, FDV_GREEN_NB);
	}
	struct io io = { .fd = fd };
	for (;;) {
		int r = REAL(accept4)(fd, sa, len, flags);

		if (r >= 0)
			return r;
		if (errno != EAGAIN)
			return -errno;
		err = wait_for(fd, POLLIN, socket_timeout(&io, SO_RCVTIMEO));
		if (err)
			return err;
	}
}

static int do_accept(enum patch_ctx ctx, int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	int r, saved = errno;

	if (ctx == PATCH_GREEN) {
		r = (int)patch_result(green_accept(fd, sa, len, flags), saved);
	} else if ((fdv_get(fd) & (FDV_GREEN_NB | FDV_NONBLOCK)) == FDV_GREEN_NB && ctx == PATCH_PLAIN) {
		r = accept_blocking(fd, sa, len, flags);
	} else {
		r = REAL(accept4)(fd, sa, len, flags);
	}
	/* greenring's own accept4 (its readiness hubs add SOCK_NONBLOCK) gives
	 * a socket the program will use as a blocking one (gr_server's
	 * handlers): the flag is not the program's wish. */
	if (r >= 0)
		accepted(fd, r, ctx != PATCH_RUNTIME && (flags & SOCK_NONBLOCK));
	return r;
}

PATCH_API int accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	return do_accept(CTX(), fd, sa, len, flags);
}

PATCH_API int accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	return do_accept(CTX(), fd, sa, len, 0);
}

/* ------------------------------------------------------------ connect */

static int green_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	int err = patch_green_check();

	if (err)
		return err;
	unsigned v;
	if ((err = fdv_for_call(fd, &v)))
		return err;
	if (!(v & FDV_KNOWN) || (v & FDV_NONBLOCK))
		return REAL(connect)(fd, sa, len) < 0 ? -errno : 0;
	struct stat mine = { 0 };
	for (;;) {
		/* Non-blocking for the instant of the call only: the connection
		 * goes on in the kernel, and the file keeps the flags a stdio
		 * stream or a thread with no hub expects. */
		int fl = REAL(fcntl)(fd, F_GETFL);
		if (fl < 0)
			return -errno;
		bool set = !(fl & O_NONBLOCK);
		if (set && REAL(fcntl)(fd, F_SETFL, fl | O_NONBLOCK) < 0)
			return -errno;
		int r = REAL(connect)(fd, sa, len);
		err = r < 0 ? errno : 0;
		if (set)
			REAL(fcntl)(fd, F_SETFL, fl);
		if (r == 0)
			return 0;
		if (err == EAGAIN) {
			/* A unix socket whose listener's backlog is full: a blocking
			 * connect waits for room, and poll says nothing about it. */
			if (!mine.st_ino && fstat(fd, &mine) < 0)
				return -errno;
			int s = gr_sleep(GR_MSEC);
			if (s < 0)
				return s;
			/* A close of fd does not end a sleep as it ends a wait on
			 * fd: another fiber may have closed it meanwhile, and a
			 * new socket taken the number. Never connect that one. */
			struct stat now;
			if (fstat(fd, &now) < 0 || now.st_ino != mine.st_ino || now.st_dev != mine.st_dev)
				return -EBADF;
			continue;
		}
		if (err != EINPROGRESS)
			return -err;
		struct io io = { .fd = fd };
		err = wait_for(fd, POLLOUT, socket_timeout(&io, SO_SNDTIMEO));
		if (err)
			return err == -EAGAIN ? -EINPROGRESS : err;
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			return -errno;
		return -soerr;
	}
}

PATCH_API int connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (PATCH_LIKELY(CTX() != PATCH_GREEN))
		return REAL(connect)(fd, sa, len);
	int saved = errno;

	return (int)patch_result(green_connect(fd, sa, len), saved);
}
