/* pool.c — GreenPool (gr_pool) and GreenPile/imap (gr_pile).
 *
 * A pool counts its running fibers against `size`. A spawner takes a slot
 * if one is free and nobody waits before it, else parks; a fiber that ends
 * hands its slot straight to the first waiting spawner (running stays the
 * same), so spawners are served in order and a late one cannot take the
 * slot first. Each running fiber has a `struct pool_slot` (its function,
 * argument, and the fiber, so gr_pool_kill can reach it); slots are kept on
 * a spare list, so a spawn allocates only while the pool grows.
 *
 * Pool fibers are detached and run pool_main(slot). A fiber killed before it
 * starts never runs pool_main at all (the core skips the body), which would
 * leak its slot, so gr_pool_kill never kills a fiber that has not started:
 * it marks the slot, and pool_main skips the function instead.
 *
 * A pile is a list of items in spawn order, each run in a fiber of a pool
 * (the caller's, or the pile's own unlimited one). Readers wait for the
 * oldest unread item; the fiber that finishes an item hands the finished
 * items at the head of the list to waiting readers in order (the item is the
 * hand-off: a reader woken with 0 owns it). An item remembers where it came
 * from (its imap index) and whether fn ran, for gr_pile_next_item: after a
 * kill, that is how a caller learns which inputs never ran. imap is a pile fed lazily from an
 * array: items start whenever the pool has a free slot — when gr_pile_imap
 * and gr_pile_next run, and when a pile fiber ends and frees its slot.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sync_internal.h"

/* ----------------------------------------------------------------- pool */

struct pool;

struct pool_slot {
	struct pool *pool;
	void (*fn)(void *);
	void *arg;
	void (*done)(void *arg);    /* after the slot is freed, even if fn was skipped */
	gr_fiber *fiber;
	struct gr__link link;       /* on the pool's active list */
	struct gr__slink spare_link; /* on its spares */
	bool started;
	bool cancel;                /* killed before it started: skip fn */
};

struct pool {
	struct gr__sync_head h;
	struct gr__waitq spawners;  /* non-empty only while running >= size */
	struct gr__waitq idle;      /* gr_pool_wait callers */
	size_t size;
	size_t running;             /* slots taken: fibers running or being spawned */
	struct gr__list active;     /* slots whose fiber was spawned */
	struct gr__slink *spare;    /* slots to reuse, a LIFO */
};
GR__SYNC_STORAGE(gr_pool, struct pool);

static inline struct pool *PL(gr_pool *p)
{
	return (struct pool *)(void *)p;
}

static void pool_setup(struct pool *pl, size_t size)
{
	memset(pl, 0, sizeof(*pl));
	gr__sync_head_init(&pl->h, GR__MAGIC_POOL);
	pl->size = size;
}

static struct pool_slot *slot_of(struct gr__link *l)
{
	return gr__container(l, struct pool_slot, link);
}

static struct pool_slot *spare_slot_of(struct gr__slink *l)
{
	return l ? gr__container(l, struct pool_slot, spare_link) : NULL;
}

static int pool_teardown(struct pool *pl)
{
	if (pl->h.users || pl->running || !gr__waitq_empty(&pl->spawners) ||
	    !gr__waitq_empty(&pl->idle))
		return -EBUSY;
	for (struct gr__slink *l; (l = gr__lifo_pop(&pl->spare));)
		free(spare_slot_of(l));
	pl->h.magic = 0;
	return 0;
}

static struct pool_slot *slot_get(struct pool *pl)
{
	struct pool_slot *s = spare_slot_of(gr__lifo_pop(&pl->spare));

	return s ? s : malloc(sizeof(*s));
}

static void slot_put(struct pool *pl, struct pool_slot *s)
{
	gr__lifo_push(&pl->spare, &s->spare_link);
}

/* Give free slots to waiting spawners, first come first served. */
static void hand_slots(struct pool *pl)
{
	while (pl->running < pl->size && !gr__waitq_empty(&pl->spawners)) {
		pl->running++;
		gr__unpark(gr__waitq_first(&pl->spawners), 0);
	}
}

static bool pool_try_acquire(struct pool *pl)
{
	if (pl->running >= pl->size || !gr__waitq_empty(&pl->spawners))
		return false;
	pl->running++;
	return true;
}

/* Take a slot for the caller of pk (past the gate's checks), waiting for
 * one. On 0 the slot is the caller's (when woken, the fiber that freed it
 * counted it for us). */
static int pool_acquire(struct gr__hub *hub, struct pool *pl, struct gr__park *pk)
{
	if (pool_try_acquire(pl))
		return 0;
	return gr__sync_wait(hub, &pl->h, &pl->spawners, pk);
}

static void wake_idle(struct pool *pl)
{
	if (pl->running == 0)
		gr__sync_wake_all(&pl->idle, 0);
}

/* Give back a slot that was acquired but not used. */
static void pool_unacquire(struct pool *pl)
{
	pl->running--;
	hand_slots(pl);
	wake_idle(pl);
}

static void *pool_main(void *arg)
{
	struct pool_slot *s = arg;
	struct pool *pl = s->pool;

	s->started = true;
	if (!s->cancel)
		s->fn(s->arg);
	gr__list_remove(&pl->active, &s->link);
	void (*done)(void *) = s->done;
	void *done_arg = s->arg;
	slot_put(pl, s);
	pl->running--;
	hand_slots(pl);
	/* `done` may start more work in the slot just freed (imap); only then
	 * is it known whether the pool is idle. Nothing here switches, so the
	 * pool cannot be destroyed before this fiber ends. */
	if (done)
		done(done_arg);
	wake_idle(pl);
	return NULL;
}

/* Start fn(arg) in slot s, the caller having acquired a slot count. On
 * failure the caller still owns s and the count. */
static int pool_launch(struct pool *pl, struct pool_slot *s, void (*fn)(void *), void *arg,
		       void (*done)(void *))
{
	struct gr_spawn_opts opts = { .detached = 1 };

	s->pool = pl;
	s->fn = fn;
	s->arg = arg;
	s->done = done;
	s->started = false;
	s->cancel = false;
	s->fiber = gr_spawn_with(&opts, pool_main, s);
	if (!s->fiber)
		return -errno;
	gr__list_push_front(&pl->active, &s->link);
	return 0;
}

/* Kill the fiber of an active slot; true if it was not already dead. */
static bool slot_kill(struct pool_slot *s)
{
	if (s->started)
		return gr_kill(s->fiber) == 0;
	s->cancel = true;
	return true;
}

int gr_pool_init(gr_pool *p, size_t size)
{
	if (!p || size == 0 || size > SSIZE_MAX)
		return -EINVAL;
	pool_setup(PL(p), size);
	return 0;
}

int gr_pool_destroy(gr_pool *p)
{
	struct pool *pl = PL(p);
	int err = gr__sync_check(p ? &pl->h : NULL, GR__MAGIC_POOL);

	return err ? err : pool_teardown(pl);
}

/* gr_pool_spawn's wait for a slot: its park record is built here, only
 * when it must wait. Out of line, so that a spawn that finds a slot free
 * does not zero one (a tenth of the spawn: bench/micro's pool row). */
static __attribute__((noinline)) int pool_spawn_wait(struct gr__hub *hub, struct pool *pl,
						     int64_t deadline)
{
	struct gr__park pk = { .what = "gr_pool_spawn" };
	int err = gr__park_begin(hub, &pk, deadline);

	return err ? err : pool_acquire(hub, pl, &pk);
}

int gr_pool_spawn(gr_pool *p, void (*fn)(void *), void *arg, int64_t deadline)
{
	struct pool *pl = PL(p);
	struct gr__hub *hub = NULL;
	/* The gate's checks without a park record, as gr_mutex_lock's. */
	int err = gr__sync_pass(p ? &pl->h : NULL, GR__MAGIC_POOL, deadline, &hub);

	if (err)
		return err;
	if (!fn)
		return -EINVAL;
	if (!pool_try_acquire(pl)) {
		err = pool_spawn_wait(hub, pl, deadline);
		if (err)
			return err;
	}
	/* The slot's record is taken once the slot is ours, not before the
	 * wait: a spawner still waiting when its thread exits is discarded
	 * with its stack, and a record only that stack pointed to would leak.
	 * Without memory, the slot goes to the next spawner in line. */
	struct pool_slot *s = slot_get(pl);
	if (!s) {
		pool_unacquire(pl);
		return -ENOMEM;
	}
	err = pool_launch(pl, s, fn, arg, NULL);
	if (err) {
		slot_put(pl, s);
		pool_unacquire(pl);
	}
	return err;
}

/* Is self one of pl's fibers? */
static bool in_pool(const struct pool *pl, const gr_fiber *self)
{
	return self->fn == pool_main && ((const struct pool_slot *)self->arg)->pool == pl;
}

int gr_pool_wait(gr_pool *p, int64_t deadline)
{
	struct pool *pl = PL(p);
	struct gr__hub *hub = NULL;
	struct gr__park pk = { .what = "gr_pool_wait" };
	int err = gr__sync_enter(p ? &pl->h : NULL, GR__MAGIC_POOL, deadline, &pk, &hub);

	if (err)
		return err;
	if (pl->running == 0)
		return 0;
	if (in_pool(pl, pk.fiber))
		return -EDEADLK; /* it would wait for itself */
	return gr__sync_wait(hub, &pl->h, &pl->idle, &pk);
}

ssize_t gr_pool_running(gr_pool *p)
{
	struct pool *pl = PL(p);
	int err = gr__sync_check(p ? &pl->h : NULL, GR__MAGIC_POOL);

	return err ? err : (ssize_t)pl->running;
}

ssize_t gr_pool_free_slots(gr_pool *p)
{
	struct pool *pl = PL(p);
	int err = gr__sync_check(p ? &pl->h : NULL, GR__MAGIC_POOL);

	if (err)
		return err;
	return pl->running >= pl->size ? 0 : (ssize_t)(pl->size - pl->running);
}

int gr_pool_resize(gr_pool *p, size_t size)
{
	struct pool *pl = PL(p);
	int err = gr__sync_check(p ? &pl->h : NULL, GR__MAGIC_POOL);

	if (err)
		return err;
	if (size == 0 || size > SSIZE_MAX)
		return -EINVAL;
	pl->size = size;
	hand_slots(pl);
	return 0;
}

ssize_t gr_pool_kill(gr_pool *p)
{
	struct pool *pl = PL(p);
	int err = gr__sync_check(p ? &pl->h : NULL, GR__MAGIC_POOL);

	if (err)
		return err;
	ssize_t n = 0;
	gr__list_foreach(l, &pl->active)
		n += slot_kill(slot_of(l));
	return n;
}

/* ----------------------------------------------------------------- pile */

struct pile;

struct pile_item {
	struct pile *pile;
	void *(*fn)(void *);
	void *arg;
	void *value;
	size_t index;               /* in the imap's args, or GR_PILE_SPAWNED */
	struct pool_slot *slot;     /* while its fiber runs */
	struct gr__slink link;      /* on the pile's unread FIFO, or its spares */
	bool done;
	bool ran;                   /* fn was called (killed before it started: not) */
};

struct pile {
	struct gr__sync_head h;
	struct pool *pool;          /* the caller's, or &own */
	struct gr__waitq readers;   /* each holds a claim on one unread item */
	struct gr__fifo unread_items;   /* spawned and unread, oldest first */
	struct gr__slink *spare;        /* items to reuse, a LIFO */
	size_t unread;
	size_t running;             /* items whose fiber has not finished */
	void *(*feed_fn)(void *);   /* gr_pile_imap: args[feed_next..feed_n) to start */
	void *const *feed_args;
	size_t feed_n, feed_next;
	struct pool own;            /* no limit; used when no pool was given */
};
GR__SYNC_STORAGE(gr_pile, struct pile);

static inline struct pile *PI(gr_pile *p)
{
	return (struct pile *)(void *)p;
}

static struct pile_item *item_of(struct gr__slink *l)
{
	return l ? gr__container(l, struct pile_item, link) : NULL;
}

/* The oldest unread item, or NULL. */
static struct pile_item *pile_head(const struct pile *pi)
{
	return item_of(pi->unread_items.first);
}

static struct pile_item *item_get(struct pile *pi)
{
	struct pile_item *it = item_of(gr__lifo_pop(&pi->spare));

	return it ? it : malloc(sizeof(*it));
}

static void item_put(struct pile *pi, struct pile_item *it)
{
	gr__lifo_push(&pi->spare, &it->link);
}

/* Take the oldest unread item, finished, off the pile. */
static struct pile_item *pile_take_head(struct pile *pi)
{
	pi->unread--;
	return item_of(gr__fifo_pop_front(&pi->unread_items));
}

static void pile_run(void *arg)
{
	struct pile_item *it = arg;

	it->ran = true;
	it->value = it->fn(it->arg);
}

static int pile_feed(struct pile *pi);

/* Readers parked in gr_pile_next: each has a claim on one unread item, in
 * order. Counted from the queue rather than kept in a counter, because the
 * core unlinks a reader whose deadline passes or who is killed, and the
 * reader itself may only run much later. */
static size_t pile_claims(const struct pile *pi)
{
	size_t n = 0;

	for (const struct gr__park *w = gr__waitq_first(&pi->readers); w; w = gr__waitq_next(w))
		n++;
	return n;
}

/* Hand finished items at the head to waiting readers, in order. */
static void pile_deliver(struct pile *pi)
{
	while (pile_head(pi) && pile_head(pi)->done && !gr__waitq_empty(&pi->readers)) {
		struct gr__park *w = gr__waitq_first(&pi->readers);

		w->data = (uintptr_t)pile_take_head(pi);
		gr__unpark(w, 0);
	}
}

/* An item's fiber is done (its slot already freed): record it, serve
 * readers, and start the next imap item in the slot it left. */
static void pile_done(void *arg)
{
	struct pile_item *it = arg;
	struct pile *pi = it->pile;

	it->done = true;
	it->slot = NULL;
	pi->running--;
	pile_deliver(pi);
	/* An allocation failure here is reported by the next gr_pile_next,
	 * which feeds again. */
	(void)pile_feed(pi);
}

/* Start fn(arg) as the newest item (`index`: its place in the imap's args,
 * or GR_PILE_SPAWNED), the caller having acquired a pool slot count. On
 * failure the caller still owns the count. */
static int pile_launch(struct pile *pi, void *(*fn)(void *), void *arg, size_t index)
{
	struct pile_item *it = item_get(pi);
	struct pool_slot *s = it ? slot_get(pi->pool) : NULL;

	if (!s) {
		if (it)
			item_put(pi, it);
		return -ENOMEM;
	}
	it->pile = pi;
	it->fn = fn;
	it->arg = arg;
	it->value = NULL; /* stays NULL if killed before it starts */
	it->index = index;
	it->ran = false;
	it->done = false;
	int err = pool_launch(pi->pool, s, pile_run, it, pile_done);
	if (err) {
		slot_put(pi->pool, s);
		item_put(pi, it);
		return err;
	}
	it->slot = s;
	gr__fifo_push_back(&pi->unread_items, &it->link);
	pi->unread++;
	pi->running++;
	return 0;
}

/* Start imap items while the pool has free slots. Does not switch. */
static int pile_feed(struct pile *pi)
{
	while (pi->feed_next < pi->feed_n && pool_try_acquire(pi->pool)) {
		int err = pile_launch(pi, pi->feed_fn, pi->feed_args[pi->feed_next], pi->feed_next);

		if (err) {
			pool_unacquire(pi->pool);
			return err;
		}
		pi->feed_next++;
	}
	return 0;
}

int gr_pile_init(gr_pile *pile, gr_pool *pool)
{
	if (!pile)
		return -EINVAL;
	struct pile *pi = PI(pile);
	if (pool) {
		int err = gr__sync_check(&PL(pool)->h, GR__MAGIC_POOL);
		if (err)
			return err;
	}
	memset(pi, 0, sizeof(*pi));
	pool_setup(&pi->own, SSIZE_MAX);
	pi->pool = pool ? PL(pool) : &pi->own;
	gr__sync_head_init(&pi->h, GR__MAGIC_PILE);
	return 0;
}

int gr_pile_destroy(gr_pile *pile)
{
	struct pile *pi = PI(pile);
	int err = gr__sync_destroy_check(pile ? &pi->h : NULL, GR__MAGIC_PILE);

	if (err)
		return err;
	if (pi->running || !gr__waitq_empty(&pi->readers))
		return -EBUSY;
	/* Idle, as every pile fiber has ended. */
	err = pool_teardown(&pi->own);
	if (err)
		return err;
	for (struct gr__slink *l; (l = gr__fifo_pop_front(&pi->unread_items));)
		free(item_of(l));
	for (struct gr__slink *l; (l = gr__lifo_pop(&pi->spare));)
		free(item_of(l));
	pi->h.magic = 0;
	return 0;
}

/* The pile's pool is checked on every call: it is the caller's object and
 * may have been destroyed (EINVAL) or bound elsewhere (EPERM). */
static int pile_pool_check(struct pile *pi)
{
	return pi->pool == &pi->own ? 0 : gr__sync_check(&pi->pool->h, GR__MAGIC_POOL);
}

int gr_pile_spawn(gr_pile *pile, void *(*fn)(void *), void *arg, int64_t deadline)
{
	struct pile *pi = PI(pile);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_pile_spawn" };
	int err = gr__sync_enter(pile ? &pi->h : NULL, GR__MAGIC_PILE, deadline, &p, &hub);

	if (err)
		return err;
	if (!fn)
		return -EINVAL;
	err = pile_pool_check(pi);
	if (err)
		return err;
	if (pi->feed_next < pi->feed_n)
		return -EBUSY;
	pi->h.users++;
	err = pool_acquire(hub, pi->pool, &p);
	pi->h.users--;
	if (err)
		return err;
	err = pile_launch(pi, fn, arg, GR_PILE_SPAWNED);
	if (err)
		pool_unacquire(pi->pool);
	return err;
}

int gr_pile_imap(gr_pile *pile, void *(*fn)(void *), void *const *args, size_t n)
{
	struct pile *pi = PI(pile);
	int err = gr__sync_check(pile ? &pi->h : NULL, GR__MAGIC_PILE);

	if (err)
		return err;
	if (!fn || (!args && n))
		return -EINVAL;
	err = pile_pool_check(pi);
	if (err)
		return err;
	if (pi->feed_next < pi->feed_n)
		return -EBUSY;
	pi->feed_fn = fn;
	pi->feed_args = args;
	pi->feed_n = n;
	pi->feed_next = 0;
	/* Start what fits now; gr_pile_next reports a failure to start. */
	(void)pile_feed(pi);
	return 0;
}

/* Hand a read item to the reader, and keep its record for reuse. */
static void item_read(struct pile *pi, struct pile_item *it, struct gr_pile_item *out)
{
	out->result = it->value;
	out->arg = it->arg;
	out->index = it->index;
	out->ran = it->ran;
	item_put(pi, it);
}

int gr_pile_next_item(gr_pile *pile, struct gr_pile_item *out, int64_t deadline)
{
	struct pile *pi = PI(pile);
	struct gr__hub *hub = NULL;
	struct gr__park p = { .what = "gr_pile_next" };
	int err = gr__sync_enter(pile ? &pi->h : NULL, GR__MAGIC_PILE, deadline, &p, &hub);

	if (err)
		return err;
	if (!out)
		return -EINVAL;
	err = pile_pool_check(pi);
	if (err)
		return err;
	pi->h.users++;
	for (;;) {
		err = pile_feed(pi);
		/* Readers parked before us have claims on the oldest items. */
		size_t claims = pile_claims(pi);
		if (claims == 0 && pile_head(pi) && pile_head(pi)->done) {
			item_read(pi, pile_take_head(pi), out);
			pi->h.users--;
			return 0;
		}
		if (pi->unread > claims)
			break;
		if (err || pi->feed_next >= pi->feed_n) {
			pi->h.users--;
			return err ? err : -ENOENT;
		}
		/* Every unread item is claimed and the next imap item needs a
		 * slot the pool does not have: wait for one, in line with the
		 * pool's other spawners. */
		err = pool_acquire(hub, pi->pool, &p);
		if (err) {
			pi->h.users--;
			return err;
		}
		if (pi->feed_next < pi->feed_n) {
			err = pile_launch(pi, pi->feed_fn, pi->feed_args[pi->feed_next],
					  pi->feed_next);
			if (err) {
				pool_unacquire(pi->pool);
				pi->h.users--;
				return err;
			}
			pi->feed_next++;
		} else {
			pool_unacquire(pi->pool); /* another reader started the rest */
		}
	}
	err = gr__sync_wait(hub, &pi->h, &pi->readers, &p);
	pi->h.users--;
	if (err)
		return err; /* not served: deadline, kill, deadlock */
	item_read(pi, (struct pile_item *)p.data, out);
	return 0;
}

int gr_pile_next(gr_pile *pile, void **result, int64_t deadline)
{
	struct gr_pile_item item;
	int err = gr_pile_next_item(pile, &item, deadline);

	if (!err && result)
		*result = item.result;
	return err;
}

ssize_t gr_pile_len(gr_pile *pile)
{
	struct pile *pi = PI(pile);
	int err = gr__sync_check(pile ? &pi->h : NULL, GR__MAGIC_PILE);

	if (err)
		return err;
	return (ssize_t)(pi->unread + (pi->feed_n - pi->feed_next));
}

ssize_t gr_pile_kill(gr_pile *pile)
{
	struct pile *pi = PI(pile);
	int err = gr__sync_check(pile ? &pi->h : NULL, GR__MAGIC_PILE);

	if (err)
		return err;
	pi->feed_n = pi->feed_next;
	ssize_t n = 0;
	for (struct gr__slink *l = pi->unread_items.first; l; l = l->next) {
		struct pile_item *it = item_of(l);

		if (it->slot)
			n += slot_kill(it->slot);
	}
	return n;
}
