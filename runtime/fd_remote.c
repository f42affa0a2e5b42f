/* fd_remote.c — gr_close across threads.
 *
 * A hub knows the operations its own fibers have in flight on an fd (fd.c),
 * and gr_close cancels those. Fibers of another thread waiting on the same
 * fd are in another hub's books, out of reach: closed from here, they would
 * wait on (io_uring: still hold) a file that is gone, or on whatever file
 * gets the number next. So:
 *
 * The record. One process-wide entry per fd number holds a bit per hub
 * slot: "this hub may have operations on the fd". A hub sets its bit when
 * it first lists an operation on the fd (fd.c, gr__fd_link), or starts a
 * whole write on it (io.c, move_all, whose calls may list nothing), and clears it
 * when it closes the fd. The bit outlives the operations (it is cleared by
 * a close, not when the last operation ends), so recording costs one atomic
 * operation per fd and hub, not one per operation, and a plain close()
 * behind the runtime's back leaves a stale bit that costs a useless round
 * trip at worst. Each hub has a slot (bit) of its own while at most 64
 * hubs exist; beyond that, slots are shared, and a request for a shared
 * slot goes to every hub on it.
 *
 * The close. gr_close(fd) reads the entry. No bit but its own hub's: the
 * usual close (io.c), which adds that one load to it. Other bits: the close
 * is done with those hubs, while the closer waits uncancellably (a fiber
 * parks, a plain thread blocks). Each hub gets a request in its inbox
 * (gr__fd_request); if its fibers have operations on the fd, a fiber it
 * starts serves it with the hub's own gr_close code (gr__close_here), else
 * the hub's loop serves it at once.
 *   1. Every hub on the fd but one is asked to HOLD it: cancel its
 *      operations with EBADF, wait until they drain, and fail new ones
 *      with EBADF until the close is done. The closer counts its closes
 *      per fd in the record, and a held fd is let go at the next count,
 *      read lazily when the holder next touches the fd: no third message.
 *   2. Then one hub performs the close: the closer's own if its fibers have
 *      operations on the fd, else the first other hub. Exactly a gr_close
 *      of its own: its woken fibers run before the close is done, so one
 *      that reacts to EBADF by closing the fd gets EBADF again, instead of
 *      closing a file that took the number meanwhile.
 * Requests are posted under the hub list's lock (hub.c), which a hub's
 * teardown takes to leave the list before it serves its inbox one last
 * time: a request never lands on a hub that is gone, and one a discarded
 * fiber was serving is served by the teardown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* ------------------------------------------------------------ the record */

_Atomic(struct gr__claim *) gr__claims[GR__CLAIM_CHUNKS];
atomic_bool gr__claim_slots_shared;

static struct gr__claim *claim_of(int fd, bool create)
{
	struct gr__claim *c = gr__claim_peek(fd);

	if (c || !create || fd < 0 || ((size_t)fd >> GR__CLAIM_CHUNK_SHIFT) >= GR__CLAIM_CHUNKS)
		return c;
	_Atomic(struct gr__claim *) *slot = &gr__claims[(size_t)fd >> GR__CLAIM_CHUNK_SHIFT];
	struct gr__claim *chunk = NULL;
	struct gr__claim *fresh = calloc(GR__CLAIM_CHUNK, sizeof(*fresh));
	if (!fresh)
		return NULL;
	if (atomic_compare_exchange_strong_explicit(slot, &chunk, fresh, memory_order_acq_rel,
						    memory_order_acquire))
		chunk = fresh;
	else
		free(fresh); /* another thread made it first: chunk is theirs */
	return &chunk[(size_t)fd & (GR__CLAIM_CHUNK - 1)];
}

/* Slots: guarded by the hub list's lock (hub.c calls take/give under it). */
#define SLOTS 64
static unsigned slot_users[SLOTS];
static unsigned next_shared;

void gr__fd_slot_take(struct gr__hub *hub)
{
	for (unsigned s = 0; s < SLOTS; s++) {
		if (slot_users[s] == 0) {
			slot_users[s] = 1;
			hub->fd_slot = s;
			return;
		}
	}
	/* More than 64 hubs: share. A hub can then no longer tell its own bit
	 * from another's, so every close asks (see gr__fd_close_elsewhere). */
	hub->fd_slot = next_shared++ % SLOTS;
	slot_users[hub->fd_slot]++;
	atomic_store(&gr__claim_slots_shared, true);
}

void gr__fd_slot_give(struct gr__hub *hub)
{
	slot_users[hub->fd_slot]--;
}

void gr__fd_slots_after_fork(void)
{
	/* The child's hubs are all new; bits left in the record by the
	 * parent's cost a round trip at most (a request nobody needs). */
	for (unsigned s = 0; s < SLOTS; s++)
		slot_users[s] = 0;
}

static uint64_t bit_of(const struct gr__hub *hub)
{
	return (uint64_t)1 << hub->fd_slot;
}

void gr__fd_claim(struct gr__hub *hub, int fd, struct gr__fdstate *st)
{
	struct gr__claim *c = claim_of(fd, true);

	/* Not recorded (no memory, or a number beyond the record): marked
	 * claimed all the same, so that it is not tried per operation. */
	st->claimed = true;
	if (c)
		atomic_fetch_or_explicit(&c->hubs, bit_of(hub), memory_order_seq_cst);
}

void gr__fd_unclaim_slow(struct gr__hub *hub, int fd, struct gr__fdstate *st)
{
	st->claimed = false;
	struct gr__claim *c = claim_of(fd, false);
	if (c && !atomic_load_explicit(&gr__claim_slots_shared, memory_order_relaxed))
		atomic_fetch_and_explicit(&c->hubs, ~bit_of(hub), memory_order_release);
	/* A shared slot's bit stays: another hub on it may still use fd. */
}

static uint32_t closes_of(int fd)
{
	struct gr__claim *c = claim_of(fd, false);

	return c ? atomic_load_explicit(&c->closes, memory_order_acquire) : 0;
}

bool gr__fd_hold_goes_on(int fd, struct gr__fdstate *st)
{
	if (closes_of(fd) == st->held_at)
		return true;
	st->closing = 0; /* the closer has closed it: the number is free */
	return false;
}

/* ------------------------------------------------------------ requests */

enum { HOLD, CLOSE };

/* What one hub is asked to do for one cross-thread close. */
struct request {
	struct gr__hub_request post;    /* in the hub's inbox */
	struct gr__link link;           /* on hub->fd_requests while it drains */
	struct call *call;
	struct gr__hub *hub;            /* the hub asked, valid while listed */
	uint64_t hub_id;                /* its main context's id: never reused */
	int fd;
	uint8_t what;                   /* HOLD or CLOSE */
};

/* One gr_close that needs other hubs. On the heap: if the closer's thread
 * exits while it waits, the answers still arrive (the last frees it). */
struct call {
	struct gr__xq done;             /* the closer waits here */
	int fd;
	unsigned pending;               /* requests posted and not answered */
	int result;                     /* the CLOSE's answer */
	bool held;                      /* HOLD requests were sent */
	bool gone;                      /* the closer will never take the answers */
	size_t nreq;
	struct request req[];
};

/* Guards every call's counts and its waiter. */
static pthread_mutex_t calls_lock = PTHREAD_MUTEX_INITIALIZER;

/* Release the holders of the call's fd: the close is done (or, for a
 * closer that is gone, will not be). */
static void release_holds(struct call *call)
{
	struct gr__claim *c = claim_of(call->fd, false);

	if (call->held && c)
		atomic_fetch_add_explicit(&c->closes, 1, memory_order_release);
}

/* The closer stopped waiting; only its thread's exit can make it (the wait
 * is uncancellable and has no deadline). */
static void call_left(struct gr__xq *xq, struct gr__park *p, bool gone)
{
	struct call *call = gr__container(xq, struct call, done);

	(void)p;
	if (!gone)
		return;
	call->gone = true;
	if (call->pending == 0) {
		release_holds(call);
		free(call);
	}
	/* Else the last answer releases and frees it. */
}

static void answer(struct request *r, int result)
{
	struct call *call = r->call;

	pthread_mutex_lock(&calls_lock);
	if (r->what == CLOSE)
		call->result = result;
	if (--call->pending == 0) {
		if (call->gone) {
			release_holds(call);
			pthread_mutex_unlock(&calls_lock);
			free(call);
			return;
		}
		if (!gr__list_empty(&call->done.parked))
			gr__xunpark(gr__container(call->done.parked.first, struct gr__park, link), 0);
	}
	pthread_mutex_unlock(&calls_lock);
}

void gr__fd_hold(int fd, struct gr__fdstate *st)
{
	st->closing = GR__FD_HELD;
	st->held_at = closes_of(fd);
}

/* Serve r in the hub's loop (or its teardown), without waiting: when none
 * of its fibers has an operation on the fd, or none ever will again. */
static void serve_now(struct gr__hub *hub, struct request *r)
{
	struct gr__fdstate *st = gr__fd_peek(hub, r->fd);

	if (st && gr__fd_still_held(r->fd, st)) {
		/* A close is under way here already (this hub's own, or another
		 * thread's holding it): two closes of one fd, as with close(2);
		 * the other one closes it. */
		answer(r, r->what == CLOSE ? -EBADF : 0);
		return;
	}
	if (st) {
		gr__fd_unclaim(hub, r->fd, st);
		st->closes++; /* a readiness retry across this must not touch fd */
	}
	if (hub->ops->fd_forget)
		hub->ops->fd_forget(hub->backend, r->fd);
	if (r->what == HOLD) {
		if (st)
			gr__fd_hold(r->fd, st);
		answer(r, 0);
		return;
	}
	answer(r, close(r->fd) < 0 ? -errno : 0);
}

/* A fiber of the hub serves a request for an fd its fibers wait on: the
 * hub's own gr_close (or, to hold, all of it but the close). Its one wait is
 * for the drain; the close and the answer follow without one, so a thread
 * exiting meanwhile leaves the request either not begun (its teardown
 * serves it: gr__fd_requests_at_exit) or answered. */
static void *serve_fiber(void *arg)
{
	struct request *r = arg;
	struct gr__hub *hub = gr__hub_peek();

	int res = gr__close_here(hub, r->fd, r->what == HOLD ? GR__CLOSE_HOLD : GR__CLOSE_NOW);
	gr__list_remove(&hub->fd_requests, &r->link);
	answer(r, res);
	return NULL;
}

/* Run by the hub's loop, the request taken from its inbox. */
static void serve_request(struct gr__hub *hub, struct gr__hub_request *rq)
{
	struct request *r = gr__container(rq, struct request, post);
	struct gr__fdstate *st = gr__fd_peek(hub, r->fd);

	if (st && !gr__list_empty(&st->ops) && !st->closing) {
		struct gr_spawn_opts so = { .stack_size = GR__MIN_STACK_SIZE, .detached = 1,
					    .name = "gr_close from another thread" };

		gr__list_push_back(&hub->fd_requests, &r->link);
		if (gr__spawn_on(hub, &so, serve_fiber, r))
			return;
		gr__list_remove(&hub->fd_requests, &r->link);
		/* No stack for it: the fibers waiting here would hang on a
		 * closed fd. Refuse the close instead (the closer sees it). */
		answer(r, r->what == CLOSE ? -ENOMEM : 0);
		return;
	}
	serve_now(hub, r);
}

void gr__fd_requests_at_exit(struct gr__hub *hub)
{
	/* Their fibers will never run, and every operation is reaped. */
	while (!gr__list_empty(&hub->fd_requests)) {
		struct request *r = gr__container(hub->fd_requests.first, struct request, link);

		gr__list_remove(&hub->fd_requests, &r->link);
		struct gr__fdstate *st = gr__fd_peek(hub, r->fd);
		if (st)
			st->closing = 0; /* the discarded fiber's close, undone */
		serve_now(hub, r);
	}
}

/* ------------------------------------------------------------ the closer */

struct targets {
	struct gr__hub *self;
	uint64_t bits;
	struct call *call;              /* NULL: only count */
	size_t n;
};

static void count_target(struct gr__hub *hub, void *arg)
{
	struct targets *t = arg;

	if (hub != t->self && (bit_of(hub) & t->bits))
		t->n++;
}

static void note_target(struct gr__hub *hub, void *arg)
{
	struct targets *t = arg;

	if (hub == t->self || !(bit_of(hub) & t->bits) || t->n == t->call->nreq)
		return;
	struct request *r = &t->call->req[t->n++];
	r->call = t->call;
	r->hub = hub;
	r->hub_id = hub->root.id;
	r->fd = t->call->fd;
	r->post.park.what = "gr_close from another thread";
	r->post.run = serve_request;
}

struct posting {
	struct call *call;
	size_t first, count;            /* the requests to post */
};

/* Post the requests whose hubs are still alive (a hub is recognised by
 * its id: another may have been made at the same address). Those whose
 * hub has gone need nothing: its fibers' operations went with it. */
static void post_alive(struct gr__hub *hub, void *arg)
{
	struct posting *ps = arg;

	for (size_t i = ps->first; i < ps->first + ps->count; i++) {
		struct request *r = &ps->call->req[i];

		if (r->hub == hub && r->hub_id == hub->root.id) {
			pthread_mutex_lock(&calls_lock);
			ps->call->pending++;
			pthread_mutex_unlock(&calls_lock);
			gr__hub_request(hub, &r->post);
		}
	}
}

/* Post requests [first, first+count) and wait for their answers. */
static int ask(struct gr__hub *hub, struct gr__park *p, struct call *call, size_t first,
	       size_t count, uint8_t what)
{
	struct posting ps = { .call = call, .first = first, .count = count };

	for (size_t i = first; i < first + count; i++)
		call->req[i].what = what;
	gr__hubs_visit(post_alive, &ps);
	int err = 0;
	pthread_mutex_lock(&calls_lock);
	while (call->pending && !err)
		err = gr__xpark(hub, p, &call->done);
	pthread_mutex_unlock(&calls_lock);
	return err;
}

int gr__fd_close_elsewhere(struct gr__hub *hub, int fd)
{
	struct gr__claim *c = gr__claim_peek(fd);
	uint64_t bits = atomic_load_explicit(&c->hubs, memory_order_seq_cst) & ~gr__claim_mine(hub);
	int result = 0;

	struct gr__park p = { .what = "gr_close (fd used by another thread)", .uncancellable = true };
	struct gr__fdstate *st = hub ? gr__fd_peek(hub, fd) : NULL;
	bool self_performs = st && !gr__list_empty(&st->ops);

	if (hub) {
		/* Waiting is needed: inside the hub nothing can (EPERM, as a
		 * gr_close there of an fd with operations in flight). */
		int err = gr__park_prepare(&hub, &p, GR_FOREVER);
		if (err)
			return err;
	} else {
		gr__xpark_thread_begin(&p, GR_FOREVER);
	}

	struct targets t = { .self = hub, .bits = bits };
	gr__hubs_visit(count_target, &t);
	if (t.n == 0)
		return gr__close_here(hub, fd, GR__CLOSE); /* stale bits only: the usual close */
	struct call *call = calloc(1, sizeof(*call) + t.n * sizeof(struct request));
	if (!call)
		return -ENOMEM;
	call->fd = fd;
	call->nreq = t.n;
	call->done.lock = &calls_lock;
	call->done.on_leave = call_left;
	t.call = call;
	t.n = 0;
	gr__hubs_visit(note_target, &t); /* hubs made since the count are new to fd */
	call->nreq = t.n;

	size_t nhold = self_performs ? call->nreq : call->nreq - 1;
	int err = 0;
	if (nhold) {
		call->held = true;
		err = ask(hub, &p, call, self_performs ? 0 : 1, nhold, HOLD);
	}
	if (!err && self_performs) {
		result = gr__close_here(hub, fd, GR__CLOSE);
	} else if (!err && call->nreq) {
		call->result = 1; /* unanswered: its hub went away meanwhile */
		err = ask(hub, &p, call, 0, 1, CLOSE);
		if (!err && call->result == 1) {
			/* Nothing of that hub waits on fd any more: close it here. */
			result = close(fd) < 0 ? -errno : 0;
		} else {
			result = call->result;
		}
	} else if (!err) {
		result = close(fd) < 0 ? -errno : 0;
	}
	if (err)
		result = err;
	release_holds(call);
	free(call);
	if (st)
		gr__fd_unclaim(hub, fd, st);
	return result;
}

