/* tinypoll.c — the third-party readiness hub of the tests (tinypoll.h). */
#define _GNU_SOURCE
#include "tinypoll.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct grt_tp_stats grt_tp_stats;

int grt_tp_probe(char *why, size_t whylen)
{
	(void)why;
	(void)whylen;
	return 0;
}

int grt_tp_init(void **state, const struct gr_hub_config *cfg)
{
	struct grt_tinypoll *t = calloc(1, sizeof(*t));

	(void)cfg;
	if (!t)
		return -ENOMEM;
	if (pipe2(t->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		int err = -errno;

		free(t);
		return err;
	}
	atomic_fetch_add(&grt_tp_stats.inits, 1);
	*state = t;
	return 0;
}

void grt_tp_fini(void *state, int after_fork)
{
	struct grt_tinypoll *t = state;

	(void)after_fork;
	close(t->wake[0]);
	close(t->wake[1]);
	free(t);
	atomic_fetch_add(&grt_tp_stats.finis, 1);
}

int grt_tp_submit(void *state, struct gr_op *op)
{
	struct grt_tinypoll *t = state;

	if (op->kind != GR_OP_POLL && op->kind != GR_OP_TIMEOUT)
		return -EINVAL;
	if (t->n == GRT_TP_MAX)
		return -ENOMEM;
	t->ops[t->n++] = op;
	atomic_fetch_add(&grt_tp_stats.submits, 1);
	return 0;
}

int grt_tp_find(const struct grt_tinypoll *t, const struct gr_op *op)
{
	for (int i = 0; i < t->n; i++) {
		if (t->ops[i] == op)
			return i;
	}
	return -1;
}

void grt_tp_complete(struct grt_tinypoll *t, int i, int64_t res)
{
	struct gr_op *op = t->ops[i];

	memmove(&t->ops[i], &t->ops[i + 1], (size_t)(t->n - i - 1) * sizeof(t->ops[0]));
	t->n--;
	gr_hub_complete(op, res);
}

int grt_tp_cancel(void *state, struct gr_op *op)
{
	struct grt_tinypoll *t = state;
	int i = grt_tp_find(t, op);

	if (i < 0)
		return -ENOENT;
	atomic_fetch_add(&grt_tp_stats.cancels, 1);
	grt_tp_complete(t, i, -ECANCELED);
	return 0;
}

int grt_tp_wait(void *state, int64_t timeout_ns)
{
	struct grt_tinypoll *t = state;
	struct pollfd p[GRT_TP_MAX + 1];
	struct gr_op *polled[GRT_TP_MAX];
	int64_t now = gr_now(), next = -1;
	int np = 1, done = 0;

	atomic_fetch_add(&grt_tp_stats.waits, 1);
	p[0] = (struct pollfd){ .fd = t->wake[0], .events = POLLIN };
	for (int i = 0; i < t->n; i++) {
		struct gr_op *op = t->ops[i];

		if (op->deadline >= 0 && (next < 0 || op->deadline < next))
			next = op->deadline;
		if (op->kind == GR_OP_POLL) {
			polled[np - 1] = op;
			p[np++] = (struct pollfd){ .fd = op->fd, .events = op->events };
		}
	}
	if (next >= 0) {
		int64_t rel = next > now ? next - now : 0;

		if (timeout_ns < 0 || rel < timeout_ns)
			timeout_ns = rel;
	}
	/* Milliseconds, rounded up: never wake before a deadline. */
	int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + GR_MSEC - 1) / GR_MSEC);
	int r = poll(p, (nfds_t)np, ms);
	if (r < 0)
		return errno == EINTR ? 0 : -errno;
	if (p[0].revents) {
		char buf[64];

		while (read(t->wake[0], buf, sizeof(buf)) > 0)
			;
		atomic_store(&t->wake_pending, false);
	}
	for (int j = 1; j < np; j++) {
		/* Completing one may have completed others (a hub built on this
		 * one may cancel greedily): look each up again. */
		int i = p[j].revents ? grt_tp_find(t, polled[j - 1]) : -1;

		if (i >= 0) {
			grt_tp_complete(t, i, p[j].revents);
			done++;
		}
	}
	now = gr_now();
	for (int i = 0; i < t->n;) {
		struct gr_op *op = t->ops[i];

		if (op->deadline >= 0 && op->deadline <= now) {
			grt_tp_complete(t, i, op->kind == GR_OP_TIMEOUT ? 0 : -ETIMEDOUT);
			done++;
		} else {
			i++;
		}
	}
	return done;
}

int grt_tp_wake(void *state)
{
	struct grt_tinypoll *t = state;

	atomic_fetch_add(&grt_tp_stats.wakes, 1);
	if (atomic_exchange(&t->wake_pending, true))
		return 0;
	return write(t->wake[1], "w", 1) < 0 && errno != EAGAIN ? -errno : 0;
}

const struct gr_hub_ops grt_tinypoll_ops = {
	GRT_TP_OPS,
	.name = "tinypoll",
	.caps = 0,
	.cancel = grt_tp_cancel,
	.wait = grt_tp_wait,
};
