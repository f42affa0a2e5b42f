/* readiness.h — what the epoll and poll backends share.
 *
 * A readiness backend receives two kinds of operation (hub_ops.h):
 * GR_OP_POLL (wait until `fd` is ready for `events`) and GR_OP_TIMEOUT (wait
 * until `deadline`). Between submit() and its completion, each operation
 * sits in exactly one of these places, recorded in the operation itself:
 *
 *   a waiter list of its fd    a POLL op waiting for readiness; also in the
 *                              timer heap if it has a deadline
 *   the timer heap only        a TIMEOUT op
 *   the ready queue            a POLL op found ready when submitted; the
 *                              contract says completions are delivered from
 *                              wait(), so it waits there until the next one
 *
 * and leaves it by exactly one of: readiness (gr__rd_fire), its deadline
 * (gr__rd_expire), the ready queue being flushed (gr__rd_flush), or a
 * cancel (gr__rd_cancel, which completes it at once with -ECANCELED). Each
 * of these takes the operation out of every structure before calling
 * gr_hub_complete(), so it is completed exactly once.
 *
 * Each fd has three waiter lists: operations that wait to read (POLLIN,
 * POLLPRI, POLLRDHUP), to write (POLLOUT) and for either. Readiness in one
 * direction wakes every waiter of that direction whose events match, not
 * just the first: with N fibers accepting on one listening socket, all wake,
 * all retry accept(), the ones that get EAGAIN park again. Waking one would
 * strand connections whenever fewer edges arrive than connections (see
 * docs/hubs.md). An error or hang-up wakes every waiter of the fd.
 *
 * What each backend adds: how an fd is watched (epoll: registered once,
 * edge-triggered, with a readiness latch; poll: a pollfd entry per fd with
 * waiters) and the wait itself. The wake-up eventfd is shared.
 */
#ifndef GREENRING_READINESS_H
#define GREENRING_READINESS_H

#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "greenring/hub_ops.h"
#include "list.h"
#include "timer.h"

/* gr_op.backend_data as the readiness backends use it. */
#define GR__RD_LINK 0    /* [0..1]: a struct gr__link, on a waiter list or the ready queue */
/* GR__TIMER_SLOT (2): the timer heap's index, see timer.h */
#define GR__RD_STATE 3   /* enum gr__rd_where | result << 8 (ready queue) */

_Static_assert(GR__TIMER_SLOT != GR__RD_LINK && GR__TIMER_SLOT != GR__RD_LINK + 1 &&
		       GR__TIMER_SLOT != GR__RD_STATE,
	       "the timer heap has a backend_data slot of its own");
_Static_assert(sizeof(struct gr__link) == 2 * sizeof(uintptr_t), "a link takes two slots");

/* The event bits of each direction. */
#define GR__RD_IN_EVENTS (POLLIN | POLLPRI | POLLRDHUP | POLLRDNORM | POLLRDBAND)
#define GR__RD_OUT_EVENTS (POLLOUT | POLLWRNORM | POLLWRBAND)
/* Always reported, asked for or not; each makes every waiter ready. */
#define GR__RD_FAIL_EVENTS (POLLERR | POLLHUP | POLLNVAL)

enum gr__rd_list { GR__RD_IN, GR__RD_OUT, GR__RD_BOTH, GR__RD_NLISTS };

/* Per-fd state, indexed by fd, zero-initialised. */
struct gr__rd_fd {
	struct gr__list waiters[GR__RD_NLISTS];
	uint32_t gen;     /* epoll: registration generation, 0 = not registered */
	uint32_t mask;    /* epoll: the events it is armed for */
	short latch;      /* epoll: events seen since it was last armed */
	uint8_t stale;    /* poll: a waiter left, its pollfd entry needs recomputing */
	uint32_t slot;    /* poll: index + 1 in the pollfd array, 0 = none */
};

struct gr__rd {
	struct gr__rd_fd *fds;
	size_t nfds;
	struct gr__timers timers;
	struct gr__list ready;
	int wake_fd;                 /* eventfd; readable after gr__rd_wake() */
	atomic_bool wake_pending;    /* coalesces wakes until the hub drains the eventfd */
};

/* The eventfd and empty tables. 0 or -errno. */
int gr__rd_init(struct gr__rd *r);
/* Release everything: close the eventfd, free the tables. Touches no
 * operation (safe in a fork child). */
void gr__rd_fini(struct gr__rd *r);

/* The state of fd, growing the table on demand; NULL for a negative fd or
 * no memory. Pointers are invalidated by the next call that grows it. */
struct gr__rd_fd *gr__rd_fd(struct gr__rd *r, int fd);

/* 0 if op is a kind a readiness backend takes; -EINVAL (another kind),
 * -EBADF (a POLL on a negative fd). */
int gr__rd_check(const struct gr_op *op);

/* Hold op until readiness, its deadline or a cancel: a POLL op goes on its
 * fd's waiter list (gr__rd_fd(op->fd) must exist), and into the timer heap
 * if it has a deadline; a TIMEOUT op into the timer heap. 0; -ENOMEM. */
int gr__rd_park(struct gr__rd *r, struct gr_op *op);

/* op (a POLL) is ready now: complete it with `revents` (> 0) at the next
 * gr__rd_flush(). */
void gr__rd_defer(struct gr__rd *r, struct gr_op *op, short revents);

/* fd became ready for `revents`: complete each of its waiters whose events
 * (or error, hang-up, invalid fd) match, with the matching bits. Returns the
 * number completed. */
int gr__rd_fire(struct gr__rd *r, int fd, short revents);

/* Complete every operation whose deadline has passed: a TIMEOUT with 0, a
 * POLL with -ETIMEDOUT; in deadline order, FIFO for equal deadlines. */
int gr__rd_expire(struct gr__rd *r);

/* Complete what gr__rd_defer() queued, in order. */
int gr__rd_flush(struct gr__rd *r);

/* Take op out of wherever it waits and complete it with -ECANCELED, now.
 * A POLL has moved no data, so even a ready one has nothing to report. */
int gr__rd_cancel(struct gr__rd *r, struct gr_op *op);

/* How long wait() may block given what it was asked (-1 = until something
 * happens) and what is queued: 0 with a ready queue, else bounded by the
 * earliest deadline. ns, -1 for no limit. */
int64_t gr__rd_timeout(const struct gr__rd *r, int64_t timeout_ns);

/* The union of the events fd's waiters want (poll builds its pollfd from
 * it); 0 when it has none. */
short gr__rd_fd_events(const struct gr__rd_fd *fs);
static inline bool gr__rd_fd_idle(const struct gr__rd_fd *fs)
{
	return gr__list_empty(&fs->waiters[GR__RD_IN]) && gr__list_empty(&fs->waiters[GR__RD_OUT]) &&
	       gr__list_empty(&fs->waiters[GR__RD_BOTH]);
}

/* wake(): thread-safe, coalesced: one eventfd write until the hub drains. */
int gr__rd_wake(struct gr__rd *r);
/* The hub saw the eventfd readable: empty it, then accept new wakes. */
void gr__rd_wake_drain(struct gr__rd *r);

#endif
