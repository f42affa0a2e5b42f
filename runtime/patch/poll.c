/* poll.c — waiting on several fds: poll, ppoll, select, pselect,
 * epoll_wait, made green (eventlet's green.select).
 *
 * Every one of them works the same way: ask the kernel without waiting (the
 * real call with a zero timeout); if something is ready, that is the
 * answer, with the kernel's exact semantics (revents, POLLNVAL, EBADF,
 * select's fd_set rewriting). Otherwise park until one fd may be ready or
 * the timeout passes (patch_wait_any), and ask again.
 *
 * patch_wait_any parks on ONE fd through the public gr_wait_fd, on every
 * hub. With one fd that is the fd itself. With several it is a temporary
 * epoll set holding them all: an epoll fd is readable while any fd in it is
 * ready, and every hub can wait on a readable fd. No helper fiber, no
 * thread, and kills and deadlines are gr_wait_fd's own. The cost, paid only
 * when the call would block: epoll_create1, one epoll_ctl per fd, and the
 * close, plus the second zero-timeout poll.
 *
 * A call with a signal mask (ppoll, pselect, epoll_pwait with a mask) stays
 * the real one: the mask belongs to the thread, and a fiber cannot install
 * it for the time it is parked without imposing it on every other fiber.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include "patch.h"

/* ------------------------------------------------------------ waiting */

int patch_wait_fd(int fd, short events, int64_t deadline)
{
	/* deadline 0 would make gr_wait_fd a pure try. */
	if (gr_wait_fd(fd, events, deadline == 0 ? 1 : deadline) == 0)
		return 0;
	return -errno;
}

/* The events epoll and poll share (Linux gives them the same values). */
static uint32_t epoll_events(short events)
{
	return (uint32_t)(events & (POLLIN | POLLOUT | POLLPRI | POLLRDHUP | POLLRDNORM | POLLRDBAND |
				    POLLWRNORM | POLLWRBAND));
}

/* Several fds: one epoll set holding them, waited on as one fd. */
static int wait_set(const struct pollfd *fds, nfds_t n, int64_t deadline)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep < 0)
		return -errno;
	int err = 0;
	for (nfds_t i = 0; i < n && !err; i++) {
		struct epoll_event ev = { .events = epoll_events(fds[i].events), .data.fd = fds[i].fd };

		if (fds[i].fd < 0)
			continue;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i].fd, &ev) == 0)
			continue;
		if (errno == EEXIST) {
			/* The same fd twice: wait for the union of their events. */
			for (nfds_t k = 0; k < i; k++) {
				if (fds[k].fd == fds[i].fd)
					ev.events |= epoll_events(fds[k].events);
			}
			if (epoll_ctl(ep, EPOLL_CTL_MOD, fds[i].fd, &ev) < 0)
				err = -errno;
		} else if (errno != EPERM) {
			/* EPERM: a regular file, never "not ready" for IN/OUT
			 * (poll said so already), never ready for the rest. An
			 * fd closed meanwhile: the caller's next poll says
			 * POLLNVAL. */
			err = errno == EBADF ? 1 : -errno;
		}
	}
	if (!err)
		err = patch_wait_fd(ep, POLLIN, deadline);
	/* Through gr_close: the hub may remember the number (epoll). */
	int closed = patch_close_green(ep);
	(void)closed;
	return err > 0 ? 0 : err;
}

int patch_wait_any(const struct pollfd *fds, nfds_t n, int64_t deadline)
{
	nfds_t valid = 0, only = 0;

	for (nfds_t i = 0; i < n; i++) {
		if (fds[i].fd >= 0 && valid++ == 0)
			only = i;
	}
	if (valid == 0) {
		/* poll with no fd is a sleep. */
		int r = gr_sleep_until(deadline == GR_FOREVER ? INT64_MAX : deadline);
		return r < 0 ? r : -ETIMEDOUT;
	}
	if (valid == 1 && (fds[only].events & (POLLIN | POLLOUT | POLLPRI | POLLRDHUP)))
		return patch_wait_fd(fds[only].fd, fds[only].events, deadline);
	return wait_set(fds, n, deadline);
}

/* A wait ended with ETIMEDOUT: the call's own timeout (its normal end,
 * "nothing ready") or the fiber's deadline (an error). */
static bool own_timeout(int64_t deadline)
{
	return deadline != GR_FOREVER && gr_now() >= deadline;
}

/* ------------------------------------------------------------ poll */

/* The wait ended with EBADF: the one fd it was on was closed meanwhile
 * (close() from another fiber is gr_close, which wakes it so). poll(2)
 * never fails with EBADF: a closed fd is POLLNVAL. The kernel is not asked
 * again: the close may still be under way (gr_close holds the number until
 * the backend lets go of it), and the number is not the caller's anyway.
 * Several fds are waited on through an epoll set of the library's own,
 * which no close of theirs ends with EBADF: EBADF then stays an error. */
static int closed_while_waiting(struct pollfd *fds, nfds_t n)
{
	nfds_t only = n;

	for (nfds_t i = 0; i < n; i++) {
		if (fds[i].fd < 0)
			continue;
		if (only != n)
			return -EBADF;
		only = i;
	}
	if (only == n)
		return -EBADF;
	for (nfds_t i = 0; i < n; i++)
		fds[i].revents = i == only ? POLLNVAL : 0;
	return 1;
}

static int green_poll(struct pollfd *fds, nfds_t n, int64_t deadline)
{
	int err = patch_green_check();

	if (err)
		return err;
	for (;;) {
		int r = REAL(poll)(fds, n, 0);

		if (r != 0)
			return r < 0 ? -errno : r;
		err = patch_wait_any(fds, n, deadline);
		if (err == -ETIMEDOUT && own_timeout(deadline))
			return 0;
		if (err == -EBADF)
			return closed_while_waiting(fds, n);
		if (err)
			return err;
	}
}

static int64_t poll_deadline(int timeout_ms)
{
	return timeout_ms < 0 ? GR_FOREVER : patch_deadline_after_ns((int64_t)timeout_ms * GR_MSEC);
}

static int64_t timespec_deadline(const struct timespec *ts)
{
	if (!ts)
		return GR_FOREVER;
	return patch_deadline_after_ns(patch_ns(ts->tv_sec, ts->tv_nsec));
}

PATCH_API int poll(struct pollfd *fds, nfds_t n, int timeout)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || timeout == 0)
		return REAL(poll)(fds, n, timeout);
	int saved = errno;

	return (int)patch_result(green_poll(fds, n, poll_deadline(timeout)), saved);
}

PATCH_API int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		__chk_fail();
	if (PATCH_CTX() != PATCH_GREEN || timeout == 0)
		return REAL(poll)(fds, n, timeout);
	int saved = errno;

	return (int)patch_result(green_poll(fds, n, poll_deadline(timeout)), saved);
}

static bool zero_timespec(const struct timespec *ts)
{
	return ts && ts->tv_sec == 0 && ts->tv_nsec == 0;
}

static bool bad_timespec(const struct timespec *ts)
{
	return ts && (ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000L);
}

PATCH_API int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || mask || zero_timespec(ts) || bad_timespec(ts))
		return REAL(ppoll)(fds, n, ts, mask);
	int saved = errno;

	return (int)patch_result(green_poll(fds, n, timespec_deadline(ts)), saved);
}

PATCH_API int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
			  const sigset_t *mask, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		__chk_fail();
	if (PATCH_CTX() != PATCH_GREEN || mask || zero_timespec(ts) || bad_timespec(ts))
		return REAL(ppoll)(fds, n, ts, mask);
	int saved = errno;

	return (int)patch_result(green_poll(fds, n, timespec_deadline(ts)), saved);
}

/* ------------------------------------------------------------ select */

/* The fds of select's sets as pollfds (what patch_wait_any waits on), in
 * `local` when they fit, else on the heap. NULL with ENOMEM. */
#define SELECT_LOCAL 16
static struct pollfd *select_pollfds(int nfds, const fd_set *r, const fd_set *w, const fd_set *e,
				     struct pollfd *local, nfds_t *n)
{
	nfds_t count = 0;
	struct pollfd *p = local;

	for (int pass = 0; pass < 2; pass++) {
		count = 0;
		for (int fd = 0; fd < nfds; fd++) {
			short ev = (short)((r && FD_ISSET(fd, r) ? POLLIN : 0) |
					   (w && FD_ISSET(fd, w) ? POLLOUT : 0) |
					   (e && FD_ISSET(fd, e) ? POLLPRI : 0));
			if (!ev)
				continue;
			if (pass == 1)
				p[count] = (struct pollfd){ .fd = fd, .events = ev };
			count++;
		}
		if (pass == 0 && count > SELECT_LOCAL && !(p = malloc(count * sizeof(*p))))
			return NULL;
	}
	*n = count;
	return p;
}

/* select and pselect from a fiber. The kernel answers each zero-timeout
 * try on copies of the program's sets; they are written back only with
 * the answer. */
static int green_select(int nfds, fd_set *r, fd_set *w, fd_set *e, int64_t deadline)
{
	int err = patch_green_check();

	if (err)
		return err;
	struct pollfd local[SELECT_LOCAL], *p = NULL;
	nfds_t n = 0;
	for (;;) {
		fd_set rc, wc, ec;
		struct timeval zero = { 0, 0 };

		if (r)
			rc = *r;
		if (w)
			wc = *w;
		if (e)
			ec = *e;
		int ready = REAL(select)(nfds, r ? &rc : NULL, w ? &wc : NULL, e ? &ec : NULL, &zero);
		if (ready != 0) {
			err = ready < 0 ? -errno : ready;
			if (ready > 0) {
				if (r)
					*r = rc;
				if (w)
					*w = wc;
				if (e)
					*e = ec;
			}
			break;
		}
		if (!p && !(p = select_pollfds(nfds, r, w, e, local, &n))) {
			err = -ENOMEM;
			break;
		}
		err = patch_wait_any(p, n, deadline);
		if (err == -ETIMEDOUT && own_timeout(deadline)) {
			/* Timed out: the sets come back empty, as select's do. */
			if (r)
				FD_ZERO(r);
			if (w)
				FD_ZERO(w);
			if (e)
				FD_ZERO(e);
			err = 0;
			break;
		}
		if (err)
			break;
	}
	if (p != local)
		free(p);
	return err;
}

static bool select_passes_through(int nfds, bool zero)
{
	return zero || nfds < 0 || nfds > FD_SETSIZE;
}

PATCH_API int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) ||
	    select_passes_through(nfds, tv && !tv->tv_sec && !tv->tv_usec) ||
	    (tv && (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000)))
		return REAL(select)(nfds, r, w, e, tv);
	int64_t deadline = tv ? patch_deadline_after_ns(patch_ns(tv->tv_sec, (int64_t)tv->tv_usec * 1000))
			      : GR_FOREVER;
	int saved = errno;
	int res = green_select(nfds, r, w, e, deadline);
	if (tv) {
		/* Linux's select leaves the time not slept in *tv. */
		int64_t left = deadline - gr_now();

		if (left < 0)
			left = 0;
		tv->tv_sec = left / GR_SEC;
		tv->tv_usec = (left % GR_SEC) / 1000;
	}
	return (int)patch_result(res, saved);
}

PATCH_API int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
		      const sigset_t *mask)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || mask || bad_timespec(ts) ||
	    select_passes_through(nfds, zero_timespec(ts)))
		return REAL(pselect)(nfds, r, w, e, ts, mask);
	int saved = errno;

	return (int)patch_result(green_select(nfds, r, w, e, timespec_deadline(ts)), saved);
}

/* ------------------------------------------------------------ epoll */

static int green_epoll_wait(int ep, struct epoll_event *ev, int max, int timeout)
{
	int err = patch_green_check();
	int64_t deadline = poll_deadline(timeout);

	if (err)
		return err;
	for (;;) {
		int r = REAL(epoll_wait)(ep, ev, max, 0);

		if (r != 0)
			return r < 0 ? -errno : r;
		err = patch_wait_fd(ep, POLLIN, deadline);
		if (err == -ETIMEDOUT && own_timeout(deadline))
			return 0;
		if (err)
			return err;
	}
}

PATCH_API int epoll_wait(int ep, struct epoll_event *ev, int max, int timeout)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || timeout == 0)
		return REAL(epoll_wait)(ep, ev, max, timeout);
	int saved = errno;

	return (int)patch_result(green_epoll_wait(ep, ev, max, timeout), saved);
}

PATCH_API int epoll_pwait(int ep, struct epoll_event *ev, int max, int timeout, const sigset_t *mask)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || timeout == 0 || mask)
		return REAL(epoll_pwait)(ep, ev, max, timeout, mask);
	int saved = errno;

	return (int)patch_result(green_epoll_wait(ep, ev, max, timeout), saved);
}
