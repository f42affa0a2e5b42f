/* hub_poll.c — the poll(2) backend: readiness based, the lowest common
 * denominator, chosen when neither io_uring nor epoll can run.
 *
 * As with epoll, io.c tries each non-blocking system call first and hands
 * us a GR_OP_POLL only on EAGAIN; waiter lists, deadlines and wake-ups are
 * the shared ones (readiness.c).
 *
 * The pollfd array holds the wake-up eventfd at index 0 and one entry per
 * fd that has waiters, whose events are the union of what they wait for.
 * It is maintained incrementally: a new waiter adds its events to its fd's
 * entry (appending one if the fd had none); a waiter that leaves only marks
 * the fd stale, and the next wait() recomputes stale entries, removing those
 * with no waiter left by moving the last entry into the hole. So the array
 * never holds an fd nobody waits for, and a wait never rebuilds it whole.
 *
 * poll(2) is level-triggered, so it needs no latch: an fd ready when a
 * fiber starts waiting is reported by the very next poll. Every waiter
 * whose events match is completed, as on the other hubs. ppoll() takes the
 * timeout as a timespec, to the nanosecond.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "readiness.h"

#define MIN_ENTRIES 64

struct poll_hub {
	struct gr__rd rd;
	struct pollfd *pfd;    /* [0]: the wake-up eventfd */
	uint32_t n, cap;
};

/* ------------------------------------------------------------ the array */

static int add_entry(struct poll_hub *h, int fd, struct gr__rd_fd *fs)
{
	if (h->n == h->cap) {
		uint32_t cap = h->cap * 2;
		struct pollfd *pfd = realloc(h->pfd, (size_t)cap * sizeof(*pfd));

		if (!pfd)
			return -ENOMEM;
		h->pfd = pfd;
		h->cap = cap;
	}
	h->pfd[h->n] = (struct pollfd){ .fd = fd, .events = 0 };
	fs->slot = ++h->n; /* index + 1 */
	return 0;
}

static void remove_entry(struct poll_hub *h, uint32_t i)
{
	h->rd.fds[h->pfd[i].fd].slot = 0;
	h->n--;
	if (i != h->n) {
		h->pfd[i] = h->pfd[h->n];
		h->rd.fds[h->pfd[i].fd].slot = i + 1;
	}
}

/* Bring the entries of fds whose waiters changed up to date. From the end
 * down, so an entry moved into a hole has been looked at already. */
static void sweep(struct poll_hub *h)
{
	for (uint32_t i = h->n; i-- > 1;) {
		struct gr__rd_fd *fs = &h->rd.fds[h->pfd[i].fd];

		if (!fs->stale)
			continue;
		fs->stale = 0;
		if (gr__rd_fd_idle(fs))
			remove_entry(h, i);
		else
			h->pfd[i].events = gr__rd_fd_events(fs);
	}
}

/* ------------------------------------------------------------ the ops */

static int poll_submit(void *state, struct gr_op *op)
{
	struct poll_hub *h = state;
	int r = gr__rd_check(op);

	if (r < 0)
		return r;
	if (op->kind == GR_OP_TIMEOUT)
		return gr__rd_park(&h->rd, op);

	struct gr__rd_fd *fs = gr__rd_fd(&h->rd, op->fd);
	if (!fs)
		return -ENOMEM;
	if (!fs->slot) {
		r = add_entry(h, op->fd, fs);
		if (r < 0)
			return r;
	}
	r = gr__rd_park(&h->rd, op);
	if (r < 0) {
		fs->stale = 1; /* the entry may now be unused: the sweep decides */
		return r;
	}
	h->pfd[fs->slot - 1].events |= op->events;
	return 0;
}

static int poll_cancel(void *state, struct gr_op *op)
{
	struct poll_hub *h = state;

	return gr__rd_cancel(&h->rd, op);
}

static int poll_hub_wait(void *state, int64_t timeout_ns)
{
	struct poll_hub *h = state;
	int done = gr__rd_flush(&h->rd);

	sweep(h);
	int64_t timeout = gr__rd_timeout(&h->rd, done ? 0 : timeout_ns);
	struct timespec ts;
	if (timeout >= 0)
		gr__ns_to_timespec(timeout, &ts);
	int n = ppoll(h->pfd, h->n, timeout >= 0 ? &ts : NULL, NULL);
	if (n < 0) {
		if (errno != EINTR)
			return done ? done : -errno;
		n = 0;
	}
	if (n > 0 && h->pfd[0].revents) {
		gr__rd_wake_drain(&h->rd);
		n--;
	}
	/* Completing waiters only marks entries stale; the array itself
	 * changes at the next sweep, so this walk sees a stable array. */
	for (uint32_t i = 1; i < h->n && n > 0; i++) {
		if (!h->pfd[i].revents)
			continue;
		n--;
		done += gr__rd_fire(&h->rd, h->pfd[i].fd, h->pfd[i].revents);
	}
	done += gr__rd_expire(&h->rd);
	return done;
}

static int poll_wake(void *state)
{
	struct poll_hub *h = state;

	return gr__rd_wake(&h->rd);
}

static void poll_fd_forget(void *state, int fd)
{
	struct poll_hub *h = state;

	if (fd < 0 || (size_t)fd >= h->rd.nfds)
		return;
	struct gr__rd_fd *fs = &h->rd.fds[fd];
	/* No waiter is left (the contract), so the entry, if any, is unused:
	 * drop it now rather than poll a closed fd until the next sweep. */
	if (fs->slot)
		remove_entry(h, fs->slot - 1);
	fs->stale = 0;
}

static int poll_init(void **state, const struct gr_hub_config *cfg)
{
	(void)cfg;
	struct poll_hub *h = calloc(1, sizeof(*h));
	int r;

	if (!h)
		return -ENOMEM;
	r = gr__rd_init(&h->rd);
	if (r < 0) {
		free(h);
		return r;
	}
	h->cap = MIN_ENTRIES;
	h->pfd = calloc(h->cap, sizeof(*h->pfd));
	if (!h->pfd) {
		gr__rd_fini(&h->rd);
		free(h);
		return -ENOMEM;
	}
	h->pfd[0] = (struct pollfd){ .fd = h->rd.wake_fd, .events = POLLIN };
	h->n = 1;
	*state = h;
	return 0;
}

static void poll_fini(void *state, int after_fork)
{
	struct poll_hub *h = state;

	/* Nothing here is shared with a parent after fork: the eventfd is
	 * our own reference, the memory our own copy. */
	(void)after_fork;
	gr__rd_fini(&h->rd);
	free(h->pfd);
	free(h);
}

static int poll_probe(char *why, size_t whylen)
{
	struct gr__rd rd;
	int r = gr__rd_init(&rd);

	if (r < 0) {
		gr__why(why, whylen, "eventfd", r);
		return r;
	}
	/* A round trip: a seccomp policy may refuse ppoll. */
	struct pollfd p = { .fd = rd.wake_fd, .events = POLLIN };
	struct timespec zero = { 0, 0 };
	r = gr__rd_wake(&rd);
	if (r < 0) {
		gr__why(why, whylen, "eventfd write", r);
	} else {
		int n = ppoll(&p, 1, &zero, NULL);

		r = n == 1 ? 0 : n < 0 ? -errno : -EIO;
		if (r < 0)
			gr__why(why, whylen, "ppoll", r);
	}
	gr__rd_fini(&rd);
	return r;
}

const struct gr_hub_ops gr__hub_poll_ops = {
	.name = "poll",
	.caps = 0,
	.probe = poll_probe,
	.init = poll_init,
	.fini = poll_fini,
	.submit = poll_submit,
	.cancel = poll_cancel,
	.wait = poll_hub_wait,
	.wake = poll_wake,
	.fd_forget = poll_fd_forget,
};
