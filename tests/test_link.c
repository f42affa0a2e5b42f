/* test_link.c — callbacks run when a fiber ends (gr_link, gr_unlink): on a
 * normal end and on a kill (before and after the fiber ran, acknowledged or
 * not), several links in order, filters, unlink, a fiber that has ended
 * already, a callback that outlives the fiber's handle, other threads.
 * Runs once per hub. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "support.h"

GRT_SUITE(link);

struct seen {
	int calls;
	struct gr_fiber_end end;
	gr_fiber *ran_in;
	int order[8];
	int n;
};

static void record(const struct gr_fiber_end *end, void *arg)
{
	struct seen *s = arg;

	s->calls++;
	s->end = *end;
	s->ran_in = gr_self();
}

static void *returns_42(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)42;
}

static void *sleeps(void *arg)
{
	(void)arg;
	gr_sleep(10 * GR_SEC);
	return (void *)(intptr_t)7;
}

Test(link, a_link_runs_in_a_new_fiber_with_the_result)
{
	struct seen s = { 0 };
	gr_fiber *f = gr_spawn(returns_42, NULL);
	uint64_t id = gr_fiber_id(f);

	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	void *res;
	assert_ok(gr_join(f, &res, gr_now() + 5 * GR_SEC));
	/* Joined (released) before its callback ran: the link holds a copy. */
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(s.calls, 1);
	cr_assert_eq(s.end.id, id);
	cr_assert_eq((intptr_t)s.end.result, 42);
	cr_assert_eq(s.end.cancelled, 0);
	cr_assert_not_null(s.ran_in);
	cr_assert_neq(s.ran_in, f, "it ran in a fiber of its own");
	cr_assert_neq(s.ran_in, gr_self());
}

Test(link, a_killed_fiber_is_seen_cancelled)
{
	struct seen parked = { 0 }, unstarted = { 0 };
	gr_fiber *a = gr_spawn(sleeps, NULL);
	gr_fiber *b = gr_spawn(returns_42, NULL);

	assert_ok(gr_link(a, GR_LINK_ANY, record, &parked));
	assert_ok(gr_link(b, GR_LINK_ANY, record, &unstarted));
	assert_ok(gr_kill(b)); /* before it ever ran: its body never runs */
	assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_kill(a));
	assert_ok(gr_join(a, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_join(b, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(parked.calls, 1);
	cr_assert_eq(parked.end.cancelled, 1);
	cr_assert_eq((intptr_t)parked.end.result, 7, "it returned after its sleep failed");
	cr_assert_eq(unstarted.calls, 1);
	cr_assert_eq(unstarted.end.cancelled, 1);
	cr_assert_null(unstarted.end.result);
}

static void *acknowledges(void *arg)
{
	(void)arg;
	if (gr_sleep(10 * GR_SEC) == -ECANCELED)
		gr_kill_ack(GR_FOREVER);
	return (void *)(intptr_t)3;
}

Test(link, a_fiber_that_acknowledged_its_kill_ends_with_its_value)
{
	struct seen s = { 0 };
	gr_fiber *f = gr_spawn(acknowledges, NULL);

	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	assert_ok(gr_sleep(GR_MSEC));
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(s.end.cancelled, 0);
	cr_assert_eq((intptr_t)s.end.result, 3);
}

struct ordered {
	int *log;
	int *n;
	int id;
};

static void in_order(const struct gr_fiber_end *end, void *arg)
{
	struct ordered *o = arg;

	(void)end;
	o->log[(*o->n)++] = o->id;
}

Test(link, several_links_run_in_the_order_they_were_made_and_filters_apply)
{
	int log[8], n = 0;
	struct ordered o[5];
	gr_fiber *f = gr_spawn(returns_42, NULL);

	for (int i = 0; i < 5; i++)
		o[i] = (struct ordered){ .log = log, .n = &n, .id = i };
	assert_ok(gr_link(f, GR_LINK_ANY, in_order, &o[0]));
	assert_ok(gr_link(f, GR_LINK_CANCELLED, in_order, &o[1])); /* not for a value */
	assert_ok(gr_link(f, GR_LINK_VALUE, in_order, &o[2]));
	assert_ok(gr_link(f, GR_LINK_ANY, in_order, &o[3]));
	assert_ok(gr_link(f, GR_LINK_VALUE, in_order, &o[4]));
	assert_ok(gr_unlink(f, in_order, &o[3]));
	cr_assert_eq(gr_unlink(f, in_order, &o[3]), -ENOENT);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(n, 3);
	cr_assert_eq(log[0], 0);
	cr_assert_eq(log[1], 2);
	cr_assert_eq(log[2], 4);
}

Test(link, the_same_callback_linked_twice_runs_twice_and_unlink_takes_one)
{
	struct seen s = { 0 };
	gr_fiber *f = gr_spawn(returns_42, NULL);

	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	assert_ok(gr_unlink(f, record, &s));
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(s.calls, 2);
}

Test(link, a_link_to_a_fiber_that_has_ended_runs_at_once)
{
	struct seen value = { 0 }, cancelled = { 0 };
	gr_fiber *f = gr_spawn(returns_42, NULL);

	assert_ok(gr_sleep(GR_MSEC)); /* it has ended, not been joined */
	assert_ok(gr_link(f, GR_LINK_VALUE, record, &value));
	assert_ok(gr_link(f, GR_LINK_CANCELLED, record, &cancelled));
	cr_assert_eq(gr_unlink(f, record, &value), -ENOENT, "it has fired already");
	assert_ok(gr_join(f, NULL, 0));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(value.calls, 1);
	cr_assert_eq((intptr_t)value.end.result, 42);
	cr_assert_eq(cancelled.calls, 0);
}

Test(link, a_detached_fiber_links_too_and_the_hub_join_waits_for_the_callbacks)
{
	struct seen s = { 0 };
	struct gr_spawn_opts o = { .detached = 1 };
	gr_fiber *f = gr_spawn_with(&o, returns_42, NULL);

	assert_ok(gr_link(f, GR_LINK_ANY, record, &s));
	assert_ok(gr_hub_join(gr_now() + 5 * GR_SEC));
	cr_assert_eq(s.calls, 1);
	cr_assert_eq((intptr_t)s.end.result, 42);
}

static void nothing(const struct gr_fiber_end *end, void *arg)
{
	(void)end;
	(void)arg;
}

static void *link_from_other_thread(void *arg)
{
	return (void *)(intptr_t)gr_link(arg, GR_LINK_ANY, nothing, NULL);
}

Test(link, bad_links_are_refused)
{
	gr_fiber *f = gr_spawn(returns_42, NULL);
	pthread_t th;
	void *r;

	cr_assert_eq(gr_link(NULL, GR_LINK_ANY, nothing, NULL), -EINVAL);
	cr_assert_eq(gr_link(f, GR_LINK_ANY, NULL, NULL), -EINVAL);
	cr_assert_eq(gr_link(f, 0, nothing, NULL), -EINVAL);
	cr_assert_eq(gr_link(f, 0x10, nothing, NULL), -EINVAL);
	cr_assert_eq(gr_link(gr_self(), GR_LINK_ANY, nothing, NULL), -EINVAL, "the main context");
	cr_assert_eq(gr_unlink(NULL, nothing, NULL), -EINVAL);
	cr_assert_eq(pthread_create(&th, NULL, link_from_other_thread, f), 0);
	cr_assert_eq(pthread_join(th, &r), 0);
	cr_assert_eq((int)(intptr_t)r, -EPERM);
	assert_ok(gr_join(f, NULL, gr_now() + 5 * GR_SEC));
}

static void *links_then_thread_exits(void *arg)
{
	struct seen *s = arg;

	if (gr_hub_use(grt_hub()) < 0)
		return (void *)"hub";
	gr_fiber *f = gr_spawn(sleeps, NULL);
	if (!f || gr_link(f, GR_LINK_ANY, record, s) < 0)
		return (void *)"link";
	gr_sleep(GR_MSEC);
	return NULL; /* f is discarded: it never ends, its link never runs */
}

Test(link, the_links_of_fibers_discarded_at_thread_exit_never_run)
{
	struct seen s = { 0 };
	pthread_t th;
	void *why;

	cr_assert_eq(pthread_create(&th, NULL, links_then_thread_exits, &s), 0);
	cr_assert_eq(pthread_join(th, &why), 0);
	cr_assert_null(why);
	cr_assert_eq(s.calls, 0);
}
