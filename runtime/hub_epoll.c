/* hub_epoll.c — the epoll backend: readiness based, the fallback when
 * io_uring cannot run.
 *
 * io.c tries each non-blocking system call first and hands us a GR_OP_POLL
 * only on EAGAIN; deadlines and sleeps are GR_OP_TIMEOUTs on the shared
 * timer heap (readiness.c, timer.c).
 *
 * Registration. An fd is added to the epoll set (EPOLL_CTL_ADD,
 * edge-triggered) the first time a fiber waits on it, and removed only by
 * fd_forget (EPOLL_CTL_DEL), which gr_close() calls just before closing it:
 * never an add/delete pair per wait.
 *
 * Arming. When a fiber parks on an fd and the waiters already there do not
 * cover what it waits for, the registration is re-armed with EPOLL_CTL_MOD
 * for the union of what the waiters want. That one call does three things:
 *   - level semantics: MOD makes the kernel look at the fd again and queue
 *     an event if it is ready now. A wait that starts after its edge was
 *     consumed (gr_wait_fd on a socket whose data an earlier waiter left
 *     unread; the second of N acceptors when two connections came in one
 *     edge) is woken by the next epoll_wait instead of sleeping until a new
 *     edge. io_uring's poll completes at once on a ready fd; every hub must
 *     agree.
 *   - robustness: greenring's calls take raw fds, so a program may close()
 *     one itself and get the number back for a new file. The kernel has
 *     then dropped the old registration, MOD fails with ENOENT, and the new
 *     file is added under a new generation, where a pure register-once
 *     scheme would wait forever on a registration that no longer exists.
 *   - only what someone waited for is armed: a socket that fibers only read
 *     from is not armed for EPOLLOUT, so its (nearly permanent) writability
 *     does not make every epoll_wait return at once for nobody.
 * The cost is one epoll_ctl per such park, what a zero-timeout poll(2)
 * check of the fd would cost anyway. Two cases park with no system call:
 *   - the socket calls (recv, send, accept, connect, ...), which io.c marks
 *     GR_POLL_AFTER_EAGAIN: the caller has seen EAGAIN (or, drain.c, a
 *     short recv of a TCP socket) and no wait has run since, so the edge
 *     that ends the wait is still to come or still queued, and the
 *     registration, if it covers the events, will report it. This is Go's
 *     netpoll rule, and what keeps an echo server's park free of
 *     epoll_ctl (it was 9% of the server's CPU). Its price is the
 *     ownership rule for sockets: one closed
 *     with plain close() and whose number is reused must not be waited on
 *     under the dead registration, so io.c forgets the number's state for
 *     every fd born of gr_accept or gr_connect, and docs/hubs.md asks for
 *     gr_close() otherwise;
 *   - a fiber joining waiters that are armed for its events, when no event
 *     has arrived since they were armed (the latch is clear): N acceptors
 *     cost one MOD per edge, not N.
 * What an fd is armed for only grows (the union of what was ever waited
 * for), so the first case stays free once a socket has waited both ways.
 *
 * Waking. Every event wakes every waiter of the fd whose events match, and
 * an error or hang-up wakes them all (readiness.h explains why not one).
 * The latch records the events seen since the fd was last armed.
 *
 * Generations. The event's data is (generation << 32 | fd); the generation
 * changes at each registration, so an event still queued for a registration
 * that fd_forget removed (the number since reused) is dropped. Generation 0
 * is the wake-up eventfd.
 *
 * Timeouts are passed to epoll_pwait2 as a timespec, to the nanosecond;
 * kernels without it (before 5.11, or a seccomp policy that refuses it) get
 * epoll_wait with milliseconds rounded up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "readiness.h"

#define MIN_EVENTS 64
#define MAX_EVENTS 4096
#define WAKE_TOKEN ((uint64_t)0) /* generation 0 */

/* Event bits are handed on as poll(2) revents: Linux gives them the same
 * values, and the static asserts keep us honest. */
_Static_assert(EPOLLIN == POLLIN && EPOLLPRI == POLLPRI && EPOLLOUT == POLLOUT &&
		       EPOLLERR == POLLERR && EPOLLHUP == POLLHUP && EPOLLRDHUP == POLLRDHUP,
	       "epoll and poll event bits differ");

struct epoll_hub {
	struct gr__rd rd;
	int epfd;
	uint32_t next_gen;
	bool has_pwait2;
	struct epoll_event *events;
	int nevents;
};

static inline uint64_t token(int fd, uint32_t gen)
{
	return (uint64_t)gen << 32 | (uint32_t)fd;
}

/* ------------------------------------------------------------ per fd */

/* The epoll events to arm for a waiter wanting `events` (poll bits). */
static uint32_t arm_mask(short events)
{
	uint32_t m = EPOLLET | EPOLLRDHUP;

	if (events & (POLLIN | POLLRDNORM | POLLRDHUP))
		m |= EPOLLIN;
	if (events & (POLLPRI | POLLRDBAND))
		m |= EPOLLPRI;
	if (events & (POLLOUT | POLLWRNORM | POLLWRBAND))
		m |= EPOLLOUT;
	return m;
}

/* Add fd to the set under a new generation. 0; -EPERM for a file epoll
 * cannot watch (a regular file, a directory); -errno otherwise. */
static int add_fd(struct epoll_hub *h, int fd, struct gr__rd_fd *fs, uint32_t mask)
{
	uint32_t gen = h->next_gen++;

	if (gen == 0) /* wrapped: 0 is the wake-up token */
		gen = h->next_gen++;
	struct epoll_event ev = { .events = mask, .data.u64 = token(fd, gen) };

	if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		/* EEXIST: this open file is in the set under this number already
		 * (its registration outlived our bookkeeping); take it over with
		 * the new generation. */
		if (errno != EEXIST || epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
			return -errno;
	}
	fs->gen = gen;
	fs->mask = mask;
	fs->latch = 0;
	return 0;
}

/* Re-arm fd's registration for `mask`: events that are ready now are
 * queued again. 0 or -errno (-EBADF: fd is closed). */
static int arm_fd(struct epoll_hub *h, int fd, struct gr__rd_fd *fs, uint32_t mask)
{
	struct epoll_event ev = { .events = mask, .data.u64 = token(fd, fs->gen) };

	if (epoll_ctl(h->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
		if (errno != ENOENT)
			return -errno;
		/* The file we registered was closed without gr_close() and the
		 * number now names another one: register that (it may be one
		 * epoll cannot watch: -EPERM, and no registration). */
		fs->gen = 0;
		return add_fd(h, fd, fs, mask);
	}
	fs->mask = mask;
	fs->latch = 0;
	return 0;
}

/* A file epoll cannot watch (regular file, directory): poll(2) calls it
 * always ready, as io_uring's poll does. */
static int submit_unwatchable(struct epoll_hub *h, struct gr_op *op)
{
	struct pollfd p = { .fd = op->fd, .events = op->events };
	int n;

	do
		n = poll(&p, 1, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	short res = (short)(p.revents & (op->events | GR__RD_FAIL_EVENTS));
	if (res) {
		gr__rd_defer(&h->rd, op, res);
		return 0;
	}
	/* Asked for something such a file never reports (POLLPRI): it waits
	 * for its deadline or a cancel, as on io_uring. */
	return gr__rd_park(&h->rd, op);
}

/* ------------------------------------------------------------ the ops */

static int epoll_submit(void *state, struct gr_op *op)
{
	struct epoll_hub *h = state;
	int r = gr__rd_check(op);

	if (r < 0)
		return r;
	if (op->kind == GR_OP_TIMEOUT)
		return gr__rd_park(&h->rd, op);

	struct gr__rd_fd *fs = gr__rd_fd(&h->rd, op->fd);
	if (!fs)
		return -ENOMEM;
	uint32_t want = arm_mask(op->events);
	if (fs->gen == 0) {
		r = add_fd(h, op->fd, fs, want | fs->mask);
	} else if ((op->flags & GR_POLL_AFTER_EAGAIN) && (fs->mask & want) == want) {
		/* The caller saw the fd not ready since the last wait (EAGAIN,
		 * or a short TCP read: drain.c): the edge that makes it ready
		 * will be reported to the registration that covers these
		 * events. Go's netpoll rule; no system call. */
		r = 0;
	} else if (gr__rd_fd_idle(fs)) {
		r = arm_fd(h, op->fd, fs, fs->mask | want);
	} else if ((fs->mask & want) != want || (fs->latch & (op->events | POLLERR | POLLHUP))) {
			r = arm_fd(h, op->fd, fs, fs->mask | want);
	} else {
		r = 0; /* armed for this already, and no event since */
	}
	if (r == -EPERM)
		return submit_unwatchable(h, op);
	if (r < 0)
		return r;
	return gr__rd_park(&h->rd, op);
}

static int epoll_cancel(void *state, struct gr_op *op)
{
	struct epoll_hub *h = state;

	return gr__rd_cancel(&h->rd, op);
}

static void handle_event(struct epoll_hub *h, const struct epoll_event *ev, int *done)
{
	uint64_t data = ev->data.u64;

	if (data == WAKE_TOKEN) {
		gr__rd_wake_drain(&h->rd);
		return;
	}
	uint32_t gen = (uint32_t)(data >> 32);
	int fd = (int)(uint32_t)data;
	if ((size_t)fd >= h->rd.nfds || h->rd.fds[fd].gen != gen)
		return; /* for a registration replaced since: dropped */
	short revents = (short)(ev->events & (EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP |
					      EPOLLERR | EPOLLHUP));

	/* A poll(2) caller may ask for the _NORM spellings. */
	if (revents & POLLIN)
		revents |= POLLRDNORM;
	if (revents & POLLOUT)
		revents |= POLLWRNORM;
	h->rd.fds[fd].latch |= revents;
	*done += gr__rd_fire(&h->rd, fd, revents);
}

static int epoll_wait_events(struct epoll_hub *h, int64_t timeout_ns)
{
	if (h->has_pwait2) {
		struct timespec ts;

		if (timeout_ns >= 0)
			gr__ns_to_timespec(timeout_ns, &ts);
		return epoll_pwait2(h->epfd, h->events, h->nevents, timeout_ns >= 0 ? &ts : NULL,
				    NULL);
	}
	return epoll_wait(h->epfd, h->events, h->nevents, gr__timeout_ms(timeout_ns));
}

static int epoll_hub_wait(void *state, int64_t timeout_ns)
{
	struct epoll_hub *h = state;
	int done = gr__rd_flush(&h->rd);
	int64_t timeout = gr__rd_timeout(&h->rd, done ? 0 : timeout_ns);
	int n = epoll_wait_events(h, timeout);

	if (n < 0) {
		if (errno != EINTR)
			return done ? done : -errno;
		n = 0;
	}
	for (int i = 0; i < n; i++)
		handle_event(h, &h->events[i], &done);
	if (n == h->nevents && h->nevents < MAX_EVENTS) {
		/* A full batch: more events are likely waiting. A bigger array
		 * takes them in fewer calls; without memory, the next wait()
		 * takes them instead. */
		struct epoll_event *ev = realloc(h->events, (size_t)h->nevents * 2 * sizeof(*ev));

		if (ev) {
			h->events = ev;
			h->nevents *= 2;
		}
	}
	done += gr__rd_expire(&h->rd);
	return done;
}

static int epoll_wake(void *state)
{
	struct epoll_hub *h = state;

	return gr__rd_wake(&h->rd);
}

static void epoll_fd_forget(void *state, int fd)
{
	struct epoll_hub *h = state;

	if (fd < 0 || (size_t)fd >= h->rd.nfds)
		return;
	struct gr__rd_fd *fs = &h->rd.fds[fd];
	if (fs->gen == 0)
		return;
	/* ENOENT or EBADF: the registration is gone already (the file was
	 * closed behind our back); EPERM: the number names a file epoll
	 * cannot watch now (a regular file took it), so nothing of ours is
	 * registered under it either. Nothing is left to remove. */
	if (epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 && errno != ENOENT && errno != EBADF &&
	    errno != EPERM)
		fprintf(stderr, "greenring: epoll hub: EPOLL_CTL_DEL %d: %s\n", fd, strerror(errno));
	fs->gen = 0;
	fs->mask = 0;
	fs->latch = 0;
}

/* The core's audit of a long wait on fd (fd.c): re-arm the registration.
 * MOD answers the question: it succeeds while the file we registered is
 * still behind the number (and queues an event if it is ready, which is
 * harmless); ENOENT says the number was closed with close() and now names
 * another file, which is then registered under a new generation, so its
 * waiters see its readiness; EBADF says the number is closed. */
static int epoll_fd_audit(void *state, int fd)
{
	struct epoll_hub *h = state;
	struct gr__rd_fd *fs = (size_t)fd < h->rd.nfds ? &h->rd.fds[fd] : NULL;

	if (!fs || fs->gen == 0)
		return fcntl(fd, F_GETFD) < 0 && errno == EBADF ? -EBADF : 0;
	int r = arm_fd(h, fd, fs, fs->mask);
	if (r == -EPERM) {
		/* The number now names a file epoll cannot watch (a regular
		 * file): always ready, as poll(2) says. */
		gr__rd_fire(&h->rd, fd, POLLIN | POLLOUT);
		return 0;
	}
	return r == -EBADF ? -EBADF : 0;
}

/* epoll_pwait2 exists from Linux 5.11; a seccomp policy may also refuse it. */
static bool probe_pwait2(int epfd)
{
	struct epoll_event ev;
	struct timespec zero = { 0, 0 };

	return epoll_pwait2(epfd, &ev, 1, &zero, NULL) >= 0 || (errno != ENOSYS && errno != EPERM);
}

static int epoll_init(void **state, const struct gr_hub_config *cfg)
{
	(void)cfg;
	struct epoll_hub *h = calloc(1, sizeof(*h));
	int r;

	if (!h)
		return -ENOMEM;
	h->epfd = -1;
	r = gr__rd_init(&h->rd);
	if (r < 0)
		goto fail;
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (h->epfd < 0) {
		r = -errno;
		goto fail;
	}
	/* Level-triggered: it stays readable until drained, so a wake that
	 * arrives while the hub is busy is seen at the next wait. */
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = WAKE_TOKEN };
	if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->rd.wake_fd, &ev) < 0) {
		r = -errno;
		goto fail;
	}
	h->nevents = MIN_EVENTS;
	h->events = calloc((size_t)h->nevents, sizeof(*h->events));
	if (!h->events) {
		r = -ENOMEM;
		goto fail;
	}
	h->next_gen = 1;
	h->has_pwait2 = probe_pwait2(h->epfd);
	*state = h;
	return 0;
fail:
	if (h->epfd >= 0)
		close(h->epfd);
	gr__rd_fini(&h->rd);
	free(h->events);
	free(h);
	return r;
}

static void epoll_fini(void *state, int after_fork)
{
	struct epoll_hub *h = state;

	/* After fork the epoll set is shared with the parent: closing our fd
	 * drops only our reference to it. No EPOLL_CTL_DEL here, ever: it
	 * would remove the parent's registrations. The memory is the child's
	 * own copy and freeing it touches nothing of the parent's. */
	(void)after_fork;
	close(h->epfd);
	gr__rd_fini(&h->rd);
	free(h->events);
	free(h);
}

static int epoll_probe(char *why, size_t whylen)
{
	int epfd = epoll_create1(EPOLL_CLOEXEC);

	if (epfd < 0) {
		int err = -errno;

		gr__why(why, whylen, "epoll_create1", err);
		return err;
	}
	struct gr__rd rd;
	int r = gr__rd_init(&rd);
	if (r < 0) {
		gr__why(why, whylen, "eventfd", r);
		close(epfd);
		return r;
	}
	/* A round trip, as the io_uring probe does: a seccomp policy may allow
	 * creating the set and still refuse to wait on it. */
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = WAKE_TOKEN };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, rd.wake_fd, &ev) < 0) {
		r = -errno;
		gr__why(why, whylen, "epoll_ctl", r);
	} else if ((r = gr__rd_wake(&rd)) < 0) {
		gr__why(why, whylen, "eventfd write", r);
	} else {
		int n = epoll_wait(epfd, &ev, 1, 0);

		/* The eventfd was just made readable: anything but one event
		 * means waiting does not work here. */
		r = n == 1 ? 0 : n < 0 ? -errno : -EIO;
		if (r < 0)
			gr__why(why, whylen, "epoll_wait", r);
	}
	gr__rd_fini(&rd);
	close(epfd);
	return r;
}

const struct gr_hub_ops gr__hub_epoll_ops = {
	.name = "epoll",
	.caps = 0,
	.probe = epoll_probe,
	.init = epoll_init,
	.fini = epoll_fini,
	.submit = epoll_submit,
	.cancel = epoll_cancel,
	.wait = epoll_hub_wait,
	.wake = epoll_wake,
	.fd_forget = epoll_fd_forget,
	.fd_audit = epoll_fd_audit,
};
