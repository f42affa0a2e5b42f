/* link.c — callbacks run when a fiber ends (greenring/link.h).
 *
 * A fiber's links are a singly linked list of heap records hanging off the
 * fiber (gr_fiber.links), in the order they were made. When the fiber ends,
 * it fires them itself, as the last thing it does on its own stack: each
 * record whose `when` matches gets a copy of how the fiber ended and is
 * handed to a new detached fiber that runs the callback and frees it; the
 * others are freed. From then on nothing refers to the ended fiber, so its
 * stack goes back to the pool on gr_join (or at once if detached), as
 * without links. A fiber released without ending (its thread exiting)
 * frees its records unrun.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct gr__fiber_link {
	struct gr__fiber_link *next;
	unsigned when;                /* GR_LINK_* */
	gr_link_fn fn;
	void *arg;
	struct gr_fiber_end end;      /* filled when the fiber ends */
};

static void run_link(void *arg)
{
	struct gr__fiber_link *l = arg;

	l->fn(&l->end, l->arg);
	free(l);
}

static struct gr_fiber_end end_of(const gr_fiber *f)
{
	struct gr_fiber_end e = { .id = f->id, .result = f->result, .cancelled = f->killed };

	return e;
}

/* Spawn l's callback; if no fiber can be had, run it here, in the fiber
 * that ended (never dropped: a supervisor that is not told would wait for
 * ever). Its kill is set aside meanwhile, so the callback's own calls work. */
static void start(gr_fiber *ended, struct gr__fiber_link *l)
{
	int err = gr_spawn_n(run_link, l);

	if (err == 0)
		return;
	fprintf(stderr,
		"greenring: no fiber for a link of fiber %llu \"%s\" (%s): its callback runs in "
		"the ending fiber\n",
		(unsigned long long)ended->id, ended->name, strerror(-err));
	bool killed = ended->killed;

	ended->killed = false;
	run_link(l);
	ended->killed = killed;
}

void gr__links_fire(struct gr__hub *hub, gr_fiber *f)
{
	struct gr_fiber_end end = end_of(f);
	unsigned how = end.cancelled ? GR_LINK_CANCELLED : GR_LINK_VALUE;
	struct gr__fiber_link *l = f->links;

	(void)hub;
	f->links = NULL;
	while (l) {
		struct gr__fiber_link *next = l->next;

		if (l->when & how) {
			l->end = end;
			start(f, l);
		} else {
			free(l);
		}
		l = next;
	}
}

void gr__links_drop(gr_fiber *f)
{
	while (f->links) {
		struct gr__fiber_link *l = f->links;

		f->links = l->next;
		free(l);
	}
}

int gr_link(gr_fiber *f, unsigned when, gr_link_fn fn, void *arg)
{
	struct gr__hub *hub;
	int err = gr__fiber_own(f, &hub);

	if (err)
		return err;
	if (f->is_root || !fn || when == 0 || (when & ~GR_LINK_ANY))
		return -EINVAL;
	struct gr__fiber_link *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->when = when;
	l->fn = fn;
	l->arg = arg;
	if (f->state == GR__FIBER_DEAD) {
		/* Ended, not yet joined: how it ended is still on its stack. */
		l->end = end_of(f);
		if (!(when & (l->end.cancelled ? GR_LINK_CANCELLED : GR_LINK_VALUE))) {
			free(l);
			return 0;
		}
		err = gr_spawn_n(run_link, l);
		if (err)
			free(l);
		return err;
	}
	struct gr__fiber_link **tail = &f->links;
	while (*tail)
		tail = &(*tail)->next;
	*tail = l;
	return 0;
}

int gr_unlink(gr_fiber *f, gr_link_fn fn, void *arg)
{
	struct gr__hub *hub;
	int err = gr__fiber_own(f, &hub);

	if (err)
		return err;
	for (struct gr__fiber_link **p = &f->links; *p; p = &(*p)->next) {
		struct gr__fiber_link *l = *p;

		if (l->fn == fn && l->arg == arg) {
			*p = l->next;
			free(l);
			return 0;
		}
	}
	return -ENOENT;
}
