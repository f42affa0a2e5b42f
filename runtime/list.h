/* list.h — the runtime's intrusive lists: the list (below), for anything
 * that may leave from the middle; and two singly linked kinds for what
 * never does: the inbox stack other threads push onto, and the FIFO of the
 * run queues (at the end), where a second pointer per node would be stores
 * on every switch for nothing.
 *
 * The list: doubly linked, its head two pointers, {first, last}, and its
 * ends NULL rather than the head itself. That choice is what lets one list
 * type serve everywhere a node may leave from the middle:
 *   - zero-initialised memory (a calloc'd hub, a memset sync object) is an
 *     empty list, with no init call to forget;
 *   - a head may be moved (a realloc'd table), since
 *     no node points back at it.
 * The price is that removing a node needs its list, which every user has at
 * hand (a waiter records its queue; an operation its fd).
 *
 * Nodes (struct gr__link) are embedded in the objects listed; gr__container
 * gets the object back. Removing a node that is not in the list is a bug the
 * callers prevent by their own state (a waiter's `queue` is NULL once it has
 * been removed), not something the list checks.
 */
#ifndef GREENRING_LIST_H
#define GREENRING_LIST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* may_alias: the readiness backends keep a link inside gr_op.backend_data,
 * an array of uintptr_t, and reach it through a pointer of this type. */
struct __attribute__((may_alias)) gr__link {
	struct gr__link *next, *prev;
};

struct gr__list {
	struct gr__link *first, *last;
};

#define gr__container(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

static inline bool gr__list_empty(const struct gr__list *l)
{
	return l->first == NULL;
}

static inline void gr__list_push_back(struct gr__list *l, struct gr__link *n)
{
	n->next = NULL;
	n->prev = l->last;
	if (l->last)
		l->last->next = n;
	else
		l->first = n;
	l->last = n;
}

static inline void gr__list_push_front(struct gr__list *l, struct gr__link *n)
{
	n->prev = NULL;
	n->next = l->first;
	if (l->first)
		l->first->prev = n;
	else
		l->last = n;
	l->first = n;
}

static inline void gr__list_remove(struct gr__list *l, struct gr__link *n)
{
	if (n->prev)
		n->prev->next = n->next;
	else
		l->first = n->next;
	if (n->next)
		n->next->prev = n->prev;
	else
		l->last = n->prev;
	n->next = n->prev = NULL;
}

/* The first node, removed; NULL when the list is empty. */
static inline struct gr__link *gr__list_pop_front(struct gr__list *l)
{
	struct gr__link *n = l->first;

	if (n) {
		l->first = n->next;
		if (l->first)
			l->first->prev = NULL;
		else
			l->last = NULL;
		n->next = NULL;
	}
	return n;
}

/* Move every node of `from` to the end of `to`; `from` is left empty. */
static inline void gr__list_splice_back(struct gr__list *to, struct gr__list *from)
{
	if (!from->first)
		return;
	if (to->last) {
		to->last->next = from->first;
		from->first->prev = to->last;
	} else {
		to->first = from->first;
	}
	to->last = from->last;
	from->first = from->last = NULL;
}

/* Walk l; `it` is a struct gr__link *. The body must not remove `it`: use
 * gr__list_foreach_safe for that. */
#define gr__list_foreach(it, l) for (struct gr__link *it = (l)->first; it; it = it->next)

/* Walk l while the body may remove `it` (but no other node). */
#define gr__list_foreach_safe(it, l)                                                      \
	for (struct gr__link *it = (l)->first, *it##_next_ = it ? it->next : NULL; it;    \
	     it = it##_next_, it##_next_ = it ? it->next : NULL)

/* ------------------------------------------------------------ inboxes */

/* A stack that any thread may push onto and one thread takes whole: how
 * other threads hand a hub what they finished (fibers they woke, wait.c;
 * operations the thread pool made, offload.c). Lock-free; a push says when
 * it found the inbox empty, so that of many completions arriving before the
 * hub looks, only the first wakes it. Zero-initialised is empty. */
struct gr__slink {
	struct gr__slink *next;
};

/* Push l; true if the inbox was empty. Release: what the pusher wrote
 * before the push is visible to the thread that takes l. */
static inline bool gr__inbox_push(_Atomic(struct gr__slink *) *inbox, struct gr__slink *l)
{
	struct gr__slink *old = atomic_load_explicit(inbox, memory_order_relaxed);

	do
		l->next = old;
	while (!atomic_compare_exchange_weak_explicit(inbox, &old, l, memory_order_release,
						      memory_order_relaxed));
	return old == NULL;
}

/* Take everything, in the order it was pushed (the stack reversed). */
static inline struct gr__slink *gr__inbox_take(_Atomic(struct gr__slink *) *inbox)
{
	/* Asked every loop turn: an empty inbox costs no locked instruction.
	 * A push that lands just after this look found the inbox empty, so it
	 * wakes the hub, which looks again. */
	if (!atomic_load_explicit(inbox, memory_order_relaxed))
		return NULL;
	struct gr__slink *l = atomic_exchange_explicit(inbox, NULL, memory_order_acquire);
	struct gr__slink *fifo = NULL;

	while (l) {
		struct gr__slink *next = l->next;

		l->next = fifo;
		fifo = l;
		l = next;
	}
	return fifo;
}

/* ------------------------------------------------------------ FIFOs */

/* A queue singly linked through struct gr__slink, for nodes that are only
 * ever appended and taken from the front: the run queues (internal.h), a
 * pile's unread items (pool.c). A node needs one pointer, not two, and
 * taking the front writes nothing into the node behind it, which on a run
 * queue is another fiber's struct, a cache line the switch would not touch
 * otherwise. Zero-initialised is empty. */
struct gr__fifo {
	struct gr__slink *first, *last;
};

static inline bool gr__fifo_empty(const struct gr__fifo *q)
{
	return q->first == NULL;
}

static inline void gr__fifo_push_back(struct gr__fifo *q, struct gr__slink *n)
{
	n->next = NULL;
	if (q->last)
		q->last->next = n;
	else
		q->first = n;
	q->last = n;
}

/* The first node, removed (its `next` is left as it was: a push sets it);
 * NULL when q is empty. */
static inline struct gr__slink *gr__fifo_pop_front(struct gr__fifo *q)
{
	struct gr__slink *n = q->first;

	if (n) {
		q->first = n->next;
		if (!q->first)
			q->last = NULL;
	}
	return n;
}

/* Every node, as a chain in order that ends with NULL; q is left empty. */
static inline struct gr__slink *gr__fifo_take_all(struct gr__fifo *q)
{
	struct gr__slink *chain = q->first;

	q->first = q->last = NULL;
	return chain;
}

/* ------------------------------------------------------------ LIFOs */

/* A stack singly linked through struct gr__slink, `*top` its newest node
 * (NULL: empty): records kept for reuse, where the most recently freed is
 * the warmest to hand out again (pool.c's spare slots and pile items). */
static inline void gr__lifo_push(struct gr__slink **top, struct gr__slink *n)
{
	n->next = *top;
	*top = n;
}

/* The newest node, removed; NULL when the stack is empty. */
static inline struct gr__slink *gr__lifo_pop(struct gr__slink **top)
{
	struct gr__slink *n = *top;

	if (n)
		*top = n->next;
	return n;
}

#endif
