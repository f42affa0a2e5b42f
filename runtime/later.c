/* later.c — spawning later (greenring/later.h): gr_spawn_at, gr_spawn_after.
 *
 * Design. The obvious way, one fiber per pending spawn sleeping until its
 * time, costs a stack and an operation in flight per timer; a server that
 * arms a timeout per request and cancels nearly all of them pays that for
 * nothing. Here each hub keeps its pending spawns in one heap, the same
 * (deadline, arrival) heap the readiness hubs keep their deadlines in
 * (timer.c), so equal deadlines fire in the order they were set. One fiber
 * per hub, the server, serves it: it parks through the gate on a
 * GR_OP_TIMEOUT for the earliest deadline (the hub's own timers: an SQE on
 * io_uring, the timer heap on epoll and poll), spawns what is due, and
 * parks again. A spawn earlier than what the server sleeps for cancels its
 * timeout, so it wakes and re-arms; the server ends when the heap is empty,
 * so a hub with nothing pending has no server, and gr_hub_join, which
 * waits for it while something is pending, returns once nothing is.
 * bench/micro's "later" cases measure both designs (docs/later.md).
 *
 * Records live on the heap, listed on the hub (`all`) until their handle is
 * released, so that the hub's end frees the ones never released. The heap
 * key is a struct gr_op because timer.c orders operations; only its
 * deadline and the heap's slot are used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "timer.h"

#define LATER_MAGIC 0x67726c74u /* "grlt" */
#define RETRY_SPAWN (10 * GR_MSEC)

enum later_state { PENDING, FIRED };

struct gr_later {
	struct gr_op key;             /* deadline, heap slot */
	struct gr__link link;         /* on the hub's `all` */
	uint32_t magic;
	uint8_t state;                /* enum later_state */
	bool released;                /* detached: freed once it has fired */
	struct gr__hub *hub;
	void (*fn)(void *);
	void *arg;
};

struct gr__laters {
	struct gr__timers heap;       /* pending records, by (deadline, arrival) */
	struct gr__list all;          /* every record whose handle is not released */
	bool serving;                 /* the server fiber exists */
	struct gr__op *sleep;         /* the server's timeout while in flight */
};

static struct gr_later *later_of(struct gr_op *key)
{
	return gr__container(key, struct gr_later, key);
}

static void later_free(struct gr__laters *L, struct gr_later *t)
{
	gr__list_remove(&L->all, &t->link);
	t->magic = 0;
	free(t);
}

/* ------------------------------------------------------------ the server */

/* Spawn everything due. A spawn that fails (no memory for a stack) is
 * retried a little later, never dropped and never spun on. */
static void fire_due(struct gr__laters *L)
{
	int64_t now = gr_now();

	for (struct gr_op *key; (key = gr__timers_pop_expired(&L->heap, now)) != NULL;) {
		struct gr_later *t = later_of(key);
		int err = gr_spawn_n(t->fn, t->arg);

		if (err) {
			fprintf(stderr, "greenring: gr_spawn_at: no fiber for a spawn that is due (%s); "
					"retrying in 10 ms\n", strerror(-err));
			t->key.deadline = now + RETRY_SPAWN;
			/* Cannot fail: the heap has just given up this very slot. */
			(void)gr__timers_add(&L->heap, &t->key);
			return;
		}
		t->state = FIRED;
		if (t->released)
			later_free(L, t);
	}
}

static void *serve(void *unused)
{
	struct gr__hub *hub = gr__hub_peek();
	struct gr__laters *L = hub->laters;

	(void)unused;
	for (;;) {
		fire_due(L);
		if (L->heap.n == 0)
			break;
		struct gr__park p = { .what = "gr_spawn_at (pending spawns)" };
		struct gr__op op = gr__op_init(GR_OP_TIMEOUT, -1);
		/* Nobody holds this fiber's handle: it is never killed and has
		 * no deadline of its own, so the checks cannot fail. */
		(void)gr__park_begin(hub, &p, GR_FOREVER);
		op.op.deadline = gr__timers_next(&L->heap);
		L->sleep = &op;
		int64_t r = gr__park_op(hub, &p, &op);
		L->sleep = NULL;
		/* 0: the earliest is due; -ECANCELED: an earlier one was added
		 * or the heap emptied. Anything else is a backend in trouble:
		 * say so and let the other fibers run before trying again. */
		if (r < 0 && r != -ECANCELED) {
			fprintf(stderr, "greenring: gr_spawn_at: the hub's timer failed: %s\n",
				strerror((int)-r));
			gr_sleep(0);
		}
	}
	L->serving = false;
	return NULL;
}

/* ------------------------------------------------------------ the API */

static int own_later(gr_later *t, struct gr__laters **Lp)
{
	if (!t || t->magic != LATER_MAGIC)
		return -EINVAL;
	struct gr__hub *hub = gr__hub_peek();
	if (t->hub != hub)
		return -EPERM;
	*Lp = hub->laters;
	return 0;
}

gr_later *gr_spawn_at(int64_t deadline, void (*fn)(void *), void *arg)
{
	struct gr__hub *hub;

	if (!fn || deadline < 0) {
		errno = EINVAL;
		return NULL;
	}
	int err = gr__hub_outside(&hub);
	if (err) {
		errno = -err;
		return NULL;
	}
	if (!hub->laters) {
		hub->laters = calloc(1, sizeof(*hub->laters));
		if (!hub->laters) {
			errno = ENOMEM;
			return NULL;
		}
		gr__timers_init(&hub->laters->heap);
	}
	struct gr__laters *L = hub->laters;
	struct gr_later *t = calloc(1, sizeof(*t));
	if (!t) {
		errno = ENOMEM;
		return NULL;
	}
	t->key.kind = GR_OP_TIMEOUT;
	t->key.fd = -1;
	t->key.deadline = deadline;
	t->magic = LATER_MAGIC;
	t->state = PENDING;
	t->hub = hub;
	t->fn = fn;
	t->arg = arg;
	if (gr__timers_add(&L->heap, &t->key) < 0) {
		free(t);
		errno = ENOMEM;
		return NULL;
	}
	gr__list_push_back(&L->all, &t->link);
	if (!L->serving) {
		struct gr_spawn_opts opts = { .stack_size = GR__MIN_STACK_SIZE, .name = "gr_later",
					      .detached = 1 };

		if (!gr_spawn_with(&opts, serve, NULL)) {
			err = errno;
			gr__timers_remove(&L->heap, &t->key);
			later_free(L, t);
			errno = err;
			return NULL;
		}
		L->serving = true;
	} else if (L->sleep && deadline < L->sleep->op.deadline) {
		/* The server sleeps past this one: wake it to re-arm. */
		gr__op_cancel(hub, L->sleep, ECANCELED);
		L->sleep = NULL;
	}
	return t;
}

gr_later *gr_spawn_after(int64_t delay, void (*fn)(void *), void *arg)
{
	if (delay < 0) {
		errno = EINVAL;
		return NULL;
	}
	int64_t now = gr_now();
	return gr_spawn_at(delay > INT64_MAX - now ? INT64_MAX : now + delay, fn, arg);
}

int gr_later_cancel(gr_later *t)
{
	struct gr__laters *L;
	int err = own_later(t, &L);

	if (err)
		return err;
	int r = t->state == PENDING ? 0 : -EALREADY;
	if (t->state == PENDING) {
		gr__timers_remove(&L->heap, &t->key);
		/* Nothing left to wait for: let the server end now rather than
		 * at a deadline that no longer matters (gr_hub_join waits for
		 * it). */
		if (L->heap.n == 0 && L->sleep) {
			gr__op_cancel(t->hub, L->sleep, ECANCELED);
			L->sleep = NULL;
		}
	}
	later_free(L, t);
	return r;
}

int gr_later_detach(gr_later *t)
{
	struct gr__laters *L;
	int err = own_later(t, &L);

	if (err)
		return err;
	if (t->state == FIRED)
		later_free(L, t);
	else
		t->released = true;
	return 0;
}

void gr__laters_free(struct gr__hub *hub)
{
	struct gr__laters *L = hub->laters;

	if (!L)
		return;
	while (!gr__list_empty(&L->all))
		later_free(L, gr__container(L->all.first, struct gr_later, link));
	gr__timers_fini(&L->heap);
	free(L);
	hub->laters = NULL;
}
