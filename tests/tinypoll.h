/* tinypoll.h — "tinypoll": a complete readiness hub in a page, written only
 * against the public greenring/hub_ops.h, as a third party would. The tests
 * plug it in with gr_hub_use_ops(&grt_tinypoll_ops) (test_hub_select.c), or
 * build misbehaving hubs from its parts (test_trust.c: a cancel that
 * completes other operations, a wait that fails).
 *
 * Operations wait in an array, oldest first; wait() builds a pollfd array
 * from it and completes what is ready or past its deadline. It serves
 * GR_OP_POLL and GR_OP_TIMEOUT only, at most GRT_TP_MAX at once. */
#ifndef GREENRING_TESTS_TINYPOLL_H
#define GREENRING_TESTS_TINYPOLL_H

#include <greenring.h>
#include <stdatomic.h>
#include <stdbool.h>

#define GRT_TP_MAX 256

struct grt_tinypoll {
	struct gr_op *ops[GRT_TP_MAX];
	int n;
	int wake[2];              /* a pipe */
	atomic_bool wake_pending;
};

/* What every tinypoll-based hub of the process did, for the tests to check. */
extern struct grt_tp_stats {
	atomic_int inits, finis;
	atomic_long submits, waits, cancels;
	atomic_long wakes;        /* wake() calls, from any thread */
} grt_tp_stats;

/* The hub_ops functions (see greenring/hub_ops.h for their contracts). */
int grt_tp_probe(char *why, size_t whylen);
int grt_tp_init(void **state, const struct gr_hub_config *cfg);
void grt_tp_fini(void *state, int after_fork);
int grt_tp_submit(void *state, struct gr_op *op);
int grt_tp_cancel(void *state, struct gr_op *op);
int grt_tp_wait(void *state, int64_t timeout_ns);
int grt_tp_wake(void *state);

/* Parts for hubs built on it: the index of op in t (-1 if absent); take
 * ops[i] out, keeping the others' order, and complete it with res. */
int grt_tp_find(const struct grt_tinypoll *t, const struct gr_op *op);
void grt_tp_complete(struct grt_tinypoll *t, int i, int64_t res);

extern const struct gr_hub_ops grt_tinypoll_ops;

/* The members a hub built from tinypoll's parts takes as they are; it names
 * its own name, cancel and wait (tinypoll's or its own) beside them:
 * `{ GRT_TP_OPS, .name = "failing", .cancel = grt_tp_cancel, .wait = failing_wait }`. */
#define GRT_TP_OPS                                                        \
	.probe = grt_tp_probe, .init = grt_tp_init, .fini = grt_tp_fini, \
	.submit = grt_tp_submit, .wake = grt_tp_wake

#endif
