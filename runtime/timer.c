/* timer.c — the deadline heap of the readiness backends (see timer.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"

#define GR__TIMERS_MIN_CAP 64

void gr__timers_init(struct gr__timers *t)
{
	memset(t, 0, sizeof(*t));
}

void gr__timers_fini(struct gr__timers *t)
{
	free(t->heap);
	memset(t, 0, sizeof(*t));
}

static inline bool before(const struct gr__timer_entry *a, const struct gr__timer_entry *b)
{
	return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static inline void place(struct gr__timers *t, size_t i, struct gr__timer_entry e)
{
	t->heap[i] = e;
	e.op->backend_data[GR__TIMER_SLOT] = (uintptr_t)(i + 1);
}

static void sift_up(struct gr__timers *t, size_t i)
{
	struct gr__timer_entry e = t->heap[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (!before(&e, &t->heap[parent]))
			break;
		place(t, i, t->heap[parent]);
		i = parent;
	}
	place(t, i, e);
}

static void sift_down(struct gr__timers *t, size_t i)
{
	struct gr__timer_entry e = t->heap[i];

	for (;;) {
		size_t child = 2 * i + 1;

		if (child >= t->n)
			break;
		if (child + 1 < t->n && before(&t->heap[child + 1], &t->heap[child]))
			child++;
		if (!before(&t->heap[child], &e))
			break;
		place(t, i, t->heap[child]);
		i = child;
	}
	place(t, i, e);
}

int gr__timers_add(struct gr__timers *t, struct gr_op *op)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : GR__TIMERS_MIN_CAP;
		struct gr__timer_entry *heap = realloc(t->heap, cap * sizeof(*heap));

		if (!heap)
			return -ENOMEM;
		t->heap = heap;
		t->cap = cap;
	}
	struct gr__timer_entry e = { .deadline = op->deadline, .seq = t->seq++, .op = op };

	t->heap[t->n] = e;
	sift_up(t, t->n++);
	return 0;
}

void gr__timers_remove(struct gr__timers *t, struct gr_op *op)
{
	uintptr_t slot = op->backend_data[GR__TIMER_SLOT];

	if (slot == 0 || slot > t->n || t->heap[slot - 1].op != op)
		return;
	size_t i = (size_t)slot - 1;

	op->backend_data[GR__TIMER_SLOT] = 0;
	t->n--;
	if (i == t->n)
		return;
	/* The last entry fills the hole; it may belong above or below it. */
	struct gr__timer_entry last = t->heap[t->n];

	place(t, i, last);
	if (i > 0 && before(&last, &t->heap[(i - 1) / 2]))
		sift_up(t, i);
	else
		sift_down(t, i);
}

int64_t gr__timers_next(const struct gr__timers *t)
{
	return t->n ? t->heap[0].deadline : -1;
}

struct gr_op *gr__timers_pop_expired(struct gr__timers *t, int64_t now)
{
	if (t->n == 0 || t->heap[0].deadline > now)
		return NULL;
	struct gr_op *op = t->heap[0].op;

	gr__timers_remove(t, op);
	return op;
}

int64_t gr__timers_timeout(const struct gr__timers *t, int64_t timeout_ns, int64_t now)
{
	int64_t next = gr__timers_next(t);

	if (next < 0)
		return timeout_ns;
	int64_t rel = next > now ? next - now : 0;

	return timeout_ns < 0 || rel < timeout_ns ? rel : timeout_ns;
}

int gr__timeout_ms(int64_t ns)
{
	if (ns < 0)
		return -1;
	int64_t ms = ns / 1000000 + (ns % 1000000 != 0);

	return ms > INT_MAX ? INT_MAX : (int)ms;
}
