/* dump.c — the run-info dump (gevent's print_run_info, Go's goroutine dump):
 * every hub's state and counters, and every fiber, what it waits in, since
 * when, and how much stack it uses; one record per line, key=value.
 *
 * A hub describes itself on its own thread, where reading its fibers races
 * nothing. gr_dump() of this thread's hub does so at once; for every hub it
 * sends each other hub a request (gr__hub_request: through the hub's inbox,
 * answered by its loop at the next turn) and waits for the answers on a
 * cross-thread queue of the gate, so a fiber caller parks and a thread with
 * no hub blocks. A hub that does not answer by the deadline is listed as
 * `no-answer`: the usual reason is a fiber holding its thread, which is the
 * monitor's business (monitor.c). The gathering is reference-counted: a hub
 * that answers after the caller gave up finds it still there.
 *
 * Times come from the hub's clock (hub->clock, the coarse clock read once
 * per loop turn, see hub.c): a wait's start and a spawn are known to within
 * one turn and one tick, which costs the switch path nothing. How much stack a fiber has touched is
 * asked of the kernel (mincore) at dump time, free on the hot path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

/* ------------------------------------------------------------ text */

/* A growing buffer of text. A failed allocation is remembered and
 * reported once, at the end, as ENOMEM. */
struct text {
	char *buf;
	size_t len, cap;
	bool failed;
};

static void __attribute__((format(printf, 2, 3))) text_printf(struct text *t, const char *fmt, ...)
{
	va_list ap;

	for (int pass = 0; pass < 2 && !t->failed; pass++) {
		size_t room = t->cap - t->len;

		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if ((size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap ? t->cap : 4096;
		while (cap - t->len <= (size_t)n)
			cap *= 2;
		char *buf = realloc(t->buf, cap);
		if (!buf) {
			t->failed = true;
			return;
		}
		t->buf = buf;
		t->cap = cap;
	}
}

static void text_append(struct text *t, const struct text *more)
{
	if (more->failed)
		t->failed = true;
	if (more->len)
		text_printf(t, "%.*s", (int)more->len, more->buf);
}

static void text_free(struct text *t)
{
	free(t->buf);
	*t = (struct text){ 0 };
}

/* A string as a quoted value: what could break the line or the quoting is
 * escaped, so every record stays on one line and parses. */
static void text_quoted(struct text *t, const char *s)
{
	text_printf(t, "\"");
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			text_printf(t, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			text_printf(t, "\\x%02x", c);
		else
			text_printf(t, "%c", c);
	}
	text_printf(t, "\"");
}

/* ------------------------------------------------------------ one hub */

const char *const gr__op_kind_names[GR_OP_KIND_COUNT] = {
	[GR_OP_NOP] = "nop",         [GR_OP_READ] = "read",       [GR_OP_WRITE] = "write",
	[GR_OP_READV] = "readv",     [GR_OP_WRITEV] = "writev",   [GR_OP_RECV] = "recv",
	[GR_OP_SEND] = "send",       [GR_OP_RECVMSG] = "recvmsg", [GR_OP_SENDMSG] = "sendmsg",
	[GR_OP_ACCEPT] = "accept",   [GR_OP_CONNECT] = "connect", [GR_OP_POLL] = "poll",
	[GR_OP_TIMEOUT] = "timeout", [GR_OP_CLOSE] = "close",     [GR_OP_WAITID] = "waitid",
	[GR_OP_OPENAT] = "openat",   [GR_OP_STATX] = "statx",     [GR_OP_FSYNC] = "fsync",
	[GR_OP_SPLICE] = "splice",
};
/* A kind added without its name here would print "?". */
_Static_assert(GR_OP_SPLICE == GR_OP_KIND_COUNT - 1, "gr__op_kind_names: name the new kind");

const char *gr_op_kind_name(unsigned kind)
{
	return kind < GR_OP_KIND_COUNT && gr__op_kind_names[kind] ? gr__op_kind_names[kind] : "?";
}

static const char *state_name(const struct gr__hub *hub, const gr_fiber *f)
{
	if (f == hub->current)
		return "running";
	switch (f->state) {
	case GR__FIBER_NEW:
		return "new";
	case GR__FIBER_RUNNABLE:
		return "runnable";
	case GR__FIBER_RUNNING:
		return "running";
	case GR__FIBER_PARKED:
		return "parked";
	default:
		return "ended";
	}
}

static double ms(int64_t ns)
{
	return (double)ns / 1e6;
}

/* Bytes of [lo, lo + len) the kernel holds in memory: the pages the stack
 * has touched (a pooled stack keeps the pages of the fibers it served
 * before). -1 if mincore fails. */
static long resident_bytes(char *lo, size_t len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	unsigned char vec[256];
	long bytes = 0;

	for (size_t off = 0; off < len;) {
		size_t chunk = len - off;

		if (chunk > sizeof(vec) * page)
			chunk = sizeof(vec) * page;
		if (mincore(lo + off, chunk, vec) != 0)
			return -1;
		for (size_t i = 0; i < (chunk + page - 1) / page; i++)
			bytes += (vec[i] & 1) ? (long)page : 0;
		off += chunk;
	}
	return bytes;
}

static void dump_wait(struct text *t, const struct gr__park *p, int64_t now)
{
	int64_t deadline = p->deadline;

	text_printf(t, " call=");
	text_quoted(t, p->what ? p->what : "?");
	switch (p->kind) {
	case GR__PARK_OP:
		if (p->op)
			text_printf(t, " wait=op op=%s fd=%d", gr_op_kind_name(p->op->op.kind),
				    p->op->op.fd);
		else
			text_printf(t, " wait=op op=-");
		break;
	case GR__PARK_QUEUE:
		if (p->queue)
			text_printf(t, " wait=queue object=%p", (void *)p->queue);
		else
			text_printf(t, " wait=timer-drain"); /* woken; its timer is finishing */
		break;
	case GR__PARK_XQUEUE:
		text_printf(t, " wait=xqueue object=%p", (void *)p->xq);
		break;
	default:
		text_printf(t, " wait=?");
	}
	/* A sleep's end is its operation's deadline, a queue wait's its timer's. */
	if (p->op)
		deadline = gr__deadline_min(deadline, p->op->op.deadline);
	if (deadline == GR_FOREVER)
		text_printf(t, " remaining_ms=-");
	else
		text_printf(t, " remaining_ms=%.1f", ms(deadline - now));
	text_printf(t, " waited_ms=%.1f", ms(now - p->since));
}

static void dump_fiber(struct text *t, const struct gr__hub *hub, const gr_fiber *f, int64_t now)
{
	text_printf(t, "fiber tid=%d id=%llu name=", (int)hub->tid, (unsigned long long)f->id);
	text_quoted(t, f->name);
	text_printf(t, " state=%s", state_name(hub, f));
	if (f->killed)
		text_printf(t, " killed=1");
	if (f != hub->current && f->state == GR__FIBER_PARKED && f->park)
		dump_wait(t, f->park, now);
	text_printf(t, " age_ms=%.1f", ms(now - f->spawned));
	if (!f->stack) {
		text_printf(t, " stack=thread\n"); /* a main context runs on its thread's stack */
		return;
	}
	char *lo = (char *)f->stack->base + f->stack->guard;
	char *sp = NULL;
	char here;
	if (f == hub->current)
		sp = &here;
	else if (f->state != GR__FIBER_DEAD)
		sp = f->ctx; /* the saved context sits at the stack pointer */
	if (sp)
		text_printf(t, " stack_used=%zu", (size_t)((const char *)f - sp));
	else
		text_printf(t, " stack_used=-");
	text_printf(t, " stack_touched=%ld stack_size=%zu\n", resident_bytes(lo, f->stack->size),
		    f->stack->size);
}

static void dump_counters(struct text *t, struct gr__hub *hub)
{
	struct gr_hub_counters c;

	gr__hub_counters_get(hub, &c);
	text_printf(t,
		    "counters tid=%d turns=%llu spawned=%llu ended=%llu cancels=%llu "
		    "deadlines=%llu unparks=%llu remote_wakeups=%llu stacks_pooled=%llu "
		    "stacks_live=%llu longest_run_us=%.1f spins_caught=%llu spins_missed=%llu",
		    (int)hub->tid, (unsigned long long)c.turns, (unsigned long long)c.spawned,
		    (unsigned long long)c.ended, (unsigned long long)c.cancels,
		    (unsigned long long)c.deadlines, (unsigned long long)c.unparks,
		    (unsigned long long)c.remote_wakeups, (unsigned long long)c.stacks_pooled,
		    (unsigned long long)c.stacks_live, (double)c.longest_run_ns / 1e3,
		    (unsigned long long)c.spins_caught, (unsigned long long)c.spins_missed);
	for (unsigned k = 0; k < GR_OP_KIND_COUNT; k++) {
		if (c.submitted[k])
			text_printf(t, " submitted.%s=%llu", gr_op_kind_name(k),
				    (unsigned long long)c.submitted[k]);
	}
	for (unsigned k = 0; k < GR_OP_KIND_COUNT; k++) {
		if (c.completed[k])
			text_printf(t, " completed.%s=%llu", gr_op_kind_name(k),
				    (unsigned long long)c.completed[k]);
	}
	text_printf(t, "\n");
}

/* The hub's part of the dump, on its own thread. */
static void dump_hub(struct gr__hub *hub, struct text *t)
{
	int64_t now = gr_now();
	size_t runnable = 0;

	for (struct gr__slink *l = hub->now; l; l = l->next)
		runnable++;
	for (struct gr__slink *l = hub->next.first; l; l = l->next)
		runnable++;
	text_printf(t,
		    "hub tid=%d backend=%s fibers=%zu runnable=%zu inflight=%zu remote_waiting=%zu "
		    "running=%llu turns=%lu loop_ago_ms=%.1f\n",
		    (int)hub->tid, hub->ops->name, hub->nfibers, runnable, hub->inflight,
		    hub->remote_waiting,
		    (unsigned long long)(hub->current == hub->loop ? 0 : hub->current->id), hub->turns,
		    ms(now - hub->clock));
	dump_counters(t, hub);
	dump_fiber(t, hub, &hub->root, now);
	/* Spawn order: the list takes new fibers at its front. */
	for (struct gr__link *l = hub->all.last; l; l = l->prev)
		dump_fiber(t, hub, gr__container(l, gr_fiber, all_link), now);
}

void gr__dump_exit_line(struct gr__hub *hub)
{
	struct text t = { 0 };

	dump_counters(&t, hub);
	if (!t.failed)
		fprintf(stderr, "greenring: %.*s", (int)t.len, t.buf);
	text_free(&t);
}

/* ------------------------------------------------------------ every hub */

struct gathering;

/* One hub's part: a request to it, and then its answer. */
struct part {
	struct gr__hub_request rq;
	struct gathering *g;
	pid_t tid;
	const char *backend;
	bool own;                 /* the caller's hub: written by the caller itself */
	bool answered;
	struct text text;
};

struct gathering {
	pthread_mutex_t lock;     /* guards everything below, and is the xq's lock */
	struct gr__xq caller;     /* the caller waits here for the last answer */
	unsigned pending;         /* requests sent, not yet answered */
	unsigned refs;            /* the caller, and each request not yet answered */
	bool closed;              /* the caller has stopped waiting */
	unsigned nparts, cap;
	struct gr__hub *own;
	struct part parts[];
};

static void gathering_unref(struct gathering *g)
{
	pthread_mutex_lock(&g->lock);
	bool last = --g->refs == 0;
	pthread_mutex_unlock(&g->lock);
	if (!last)
		return;
	for (unsigned i = 0; i < g->nparts; i++)
		text_free(&g->parts[i].text);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

/* Run by the asked hub's loop, on its thread. */
static void answer(struct gr__hub *hub, struct gr__hub_request *rq)
{
	struct part *part = gr__container(rq, struct part, rq);
	struct gathering *g = part->g;
	struct text t = { 0 };

	pthread_mutex_lock(&g->lock);
	bool wanted = !g->closed;
	pthread_mutex_unlock(&g->lock);
	if (wanted)
		dump_hub(hub, &t);
	pthread_mutex_lock(&g->lock);
	if (!g->closed) {
		part->text = t;
		part->answered = true;
		t = (struct text){ 0 };
		if (--g->pending == 0 && !gr__list_empty(&g->caller.parked))
			gr__xunpark(gr__container(g->caller.parked.first, struct gr__park, link), 0);
	}
	pthread_mutex_unlock(&g->lock);
	text_free(&t);
	gathering_unref(g);
}

static void count_hub(struct gr__hub *hub, void *arg)
{
	(void)hub;
	++*(unsigned *)arg;
}

/* With the hubs lock held: ask every hub but the caller's for its part. */
static void ask_hub(struct gr__hub *hub, void *arg)
{
	struct gathering *g = arg;

	if (g->nparts == g->cap)
		return; /* born since we counted: the next dump will have it */
	struct part *part = &g->parts[g->nparts++];
	part->g = g;
	part->tid = hub->tid;
	part->backend = hub->ops->name;
	if (hub == g->own) {
		part->own = true;
		return;
	}
	part->rq.run = answer;
	g->pending++;
	g->refs++;
	gr__hub_request(hub, &part->rq);
}

/* Wait, as a fiber of `hub` or as a thread with no hub, until every hub has
 * answered or the deadline passed. 0, or -ECANCELED/-ENOMEM from the gate;
 * a deadline that passes is not an error: the hubs that answered are
 * written, the others listed as not answering. */
static int await_answers(struct gr__hub *hub, struct gathering *g, int64_t deadline)
{
	struct gr__park p = { .what = "gr_dump" };
	int err = 0;

	if (hub)
		err = gr__park_prepare(&hub, &p, deadline);
	else
		gr__xpark_thread_begin(&p, deadline);
	pthread_mutex_lock(&g->lock);
	if (!err && g->pending > 0)
		err = gr__xpark(hub, &p, &g->caller);
	g->closed = true; /* late answers are dropped from here on */
	pthread_mutex_unlock(&g->lock);
	return err == -ETIMEDOUT ? 0 : err;
}

static int gather(struct gr__hub *own, struct text *t, int64_t deadline)
{
	unsigned n = 0;

	gr__hubs_visit(count_hub, &n);
	n += 4; /* room for a few hubs born meanwhile */
	struct gathering *g = calloc(1, sizeof(*g) + n * sizeof(struct part));
	if (!g)
		return -ENOMEM;
	pthread_mutex_init(&g->lock, NULL);
	g->caller.lock = &g->lock;
	g->cap = n;
	g->own = own;
	g->refs = 1;
	/* Asking costs the other hubs a turn; a caller that only tries
	 * (deadline 0) would not wait for the answers anyway. */
	if (deadline != 0) {
		pthread_mutex_lock(&g->lock); /* answers wait until every request is out */
		gr__hubs_visit(ask_hub, g);
		pthread_mutex_unlock(&g->lock);
	} else {
		g->cap = 0;
	}
	int err = await_answers(own, g, deadline);
	if (!err) {
		unsigned answered = 0;

		text_printf(t, "dump pid=%d tid=%d hubs=%u\n", (int)getpid(), (int)gettid(), g->nparts);
		for (unsigned i = 0; i < g->nparts; i++) {
			struct part *part = &g->parts[i];

			if (part->own) {
				dump_hub(g->own, t);
				answered++;
			} else if (part->answered) {
				text_append(t, &part->text);
				answered++;
			} else {
				text_printf(t, "no-answer tid=%d backend=%s\n", (int)part->tid,
					    part->backend);
			}
		}
		text_printf(t, "dump-end hubs=%u answered=%u\n", g->nparts, answered);
	}
	gathering_unref(g);
	return err;
}

/* ------------------------------------------------------------ writing */

/* All of t to fd: green from a fiber (other fibers run meanwhile), else
 * write(2), waiting out a full non-blocking fd with poll(). */
static int write_all(int fd, const struct text *t)
{
	struct gr__hub *hub = gr__hub_peek();
	/* Peek first: a thread with no hub (the monitor's) must not get one. */
	bool green = hub && gr__park_hub(&hub) == 0;

	for (size_t off = 0; off < t->len;) {
		ssize_t n = green ? gr_write(fd, t->buf + off, t->len - off)
				  : write(fd, t->buf + off, t->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !green) {
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };

			(void)poll(&pfd, 1, -1);
			continue;
		}
		if (n < 0)
			return -errno;
		off += (size_t)n;
	}
	return 0;
}

int gr_dump(int fd, unsigned flags, int64_t deadline)
{
	struct gr__hub *hub = gr__hub_peek();
	struct text t = { 0 };
	int err = 0;

	if (flags & ~GR_DUMP_ALL_HUBS)
		return -EINVAL;
	if (fd < 0 || fcntl(fd, F_GETFL) < 0)
		return -EBADF;
	if (flags & GR_DUMP_ALL_HUBS) {
		if (hub && hub->current == hub->loop)
			return -EPERM; /* the loop cannot wait for the answers */
		err = gather(hub, &t, deadline);
	} else if (!hub) {
		return -ESRCH;
	} else {
		text_printf(&t, "dump pid=%d tid=%d hubs=1\n", (int)getpid(), (int)hub->tid);
		dump_hub(hub, &t);
		text_printf(&t, "dump-end hubs=1 answered=1\n");
	}
	if (!err && t.failed)
		err = -ENOMEM;
	if (!err)
		err = write_all(fd, &t);
	text_free(&t);
	return err;
}
