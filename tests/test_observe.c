/* test_observe.c — the run-info dump and the counters (greenring/observe.h):
 * the dump is parsed as a program would (one record per line, key=value),
 * every hub answers for itself, one that cannot is named, a signal asks for
 * it through the hubs, and the counters add up after a known workload. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(observe);

/* ------------------------------------------------------------ parsing */

#define KEYS_MAX 32

/* One line of the dump: its record type and its key=value pairs, values
 * unquoted and unescaped. */
struct rec {
	char type[16];
	int n;
	char key[KEYS_MAX][32];
	char val[KEYS_MAX][160];
};

static void parse_line(const char *line, struct rec *r)
{
	const char *p = line;
	size_t n = strcspn(p, " \n");

	memset(r, 0, sizeof(*r));
	cr_assert_lt(n, sizeof(r->type), "record type too long: %s", line);
	memcpy(r->type, p, n);
	p += n;
	while (*p == ' ') {
		p++;
		const char *eq = strchr(p, '=');
		cr_assert_not_null(eq, "no '=' in \"%s\" (line: %s)", p, line);
		cr_assert_lt(r->n, KEYS_MAX, "too many keys: %s", line);
		cr_assert_lt((size_t)(eq - p), sizeof(r->key[0]));
		memcpy(r->key[r->n], p, (size_t)(eq - p));
		p = eq + 1;
		char *out = r->val[r->n];
		size_t o = 0;
		if (*p == '"') {
			for (p++; *p && *p != '"'; p++) {
				char c = *p;

				if (c == '\\' && p[1] == 'x') {
					unsigned v = 0;

					cr_assert_eq(sscanf(p + 2, "%2x", &v), 1, "bad escape: %s", line);
					c = (char)v;
					p += 3;
				} else if (c == '\\') {
					c = *++p;
				}
				cr_assert_lt(o + 1, sizeof(r->val[0]));
				out[o++] = c;
			}
			cr_assert_eq(*p, '"', "unterminated quote: %s", line);
			p++;
		} else {
			while (*p && *p != ' ' && *p != '\n') {
				cr_assert_lt(o + 1, sizeof(r->val[0]));
				out[o++] = *p++;
			}
		}
		r->n++;
	}
	cr_assert(*p == '\n' || *p == '\0', "junk after the pairs: %s", line);
}

static const char *get(const struct rec *r, const char *key)
{
	for (int i = 0; i < r->n; i++)
		if (strcmp(r->key[i], key) == 0)
			return r->val[i];
	return NULL;
}

static const char *must(const struct rec *r, const char *key)
{
	const char *v = get(r, key);

	cr_assert_not_null(v, "%s record without %s", r->type, key);
	return v;
}

/* The whole dump written to a memfd, and its lines. */
struct dump {
	char *text;
	size_t nlines;
	struct rec *lines;
};

static void dump_read(int fd, struct dump *d)
{
	off_t size = lseek(fd, 0, SEEK_END);

	cr_assert_geq(size, 0);
	d->text = malloc((size_t)size + 1);
	cr_assert_not_null(d->text);
	cr_assert_eq(pread(fd, d->text, (size_t)size, 0), size);
	d->text[size] = '\0';
	d->nlines = 0;
	for (char *p = d->text; *p; p++)
		d->nlines += *p == '\n';
	d->lines = calloc(d->nlines, sizeof(struct rec));
	cr_assert_not_null(d->lines);
	size_t i = 0;
	for (char *line = d->text; *line; i++) {
		char *nl = strchr(line, '\n');

		cr_assert_not_null(nl, "last line without a newline");
		parse_line(line, &d->lines[i]);
		line = nl + 1;
	}
}

static void dump_free(struct dump *d)
{
	free(d->text);
	free(d->lines);
}

static int memfd(void)
{
	int fd = memfd_create("dump", MFD_CLOEXEC);

	cr_assert_geq(fd, 0, "memfd_create: %s", strerror(errno));
	return fd;
}

/* Dump into a fresh memfd and parse it. */
static void dump_take(unsigned flags, int64_t deadline, struct dump *d)
{
	int fd = memfd();

	assert_ok(gr_dump(fd, flags, deadline));
	dump_read(fd, d);
	close(fd);
}

static size_t count_type(const struct dump *d, const char *type)
{
	size_t n = 0;

	for (size_t i = 0; i < d->nlines; i++)
		n += strcmp(d->lines[i].type, type) == 0;
	return n;
}

static const struct rec *find_fiber(const struct dump *d, const char *name)
{
	for (size_t i = 0; i < d->nlines; i++) {
		const char *n = get(&d->lines[i], "name");

		if (strcmp(d->lines[i].type, "fiber") == 0 && n && strcmp(n, name) == 0)
			return &d->lines[i];
	}
	return NULL;
}

/* ------------------------------------------------------------ 1000 fibers */

#define EACH 250

static gr_event never;
static gr_queue empty_queue;
static int pipe_fds[2];

static void *wait_event(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_event_wait(&never, GR_FOREVER);
}

static void *sleep_long(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_sleep(30 * GR_SEC);
}

static void *read_pipe(void *a)
{
	char c;

	(void)a;
	return (void *)(intptr_t)gr_read(pipe_fds[0], &c, 1);
}

static void *get_queue(void *a)
{
	void *item;

	(void)a;
	return (void *)(intptr_t)gr_queue_get(&empty_queue, &item, gr_now() + 30 * GR_SEC);
}

static void check_wait(const struct rec *r, const char *call, const char *wait)
{
	cr_assert_str_eq(must(r, "state"), "parked", "%s: %s", must(r, "name"), must(r, "state"));
	cr_assert_str_eq(must(r, "call"), call, "%s", must(r, "name"));
	cr_assert_str_eq(must(r, "wait"), wait, "%s", must(r, "name"));
	double waited = atof(must(r, "waited_ms")), age = atof(must(r, "age_ms"));
	cr_assert(waited >= 0 && waited < 10000, "%s waited %f ms", must(r, "name"), waited);
	cr_assert_geq(age, waited, "%s: spawned after it began waiting?", must(r, "name"));
	size_t used = strtoul(must(r, "stack_used"), NULL, 10);
	size_t touched = strtoul(must(r, "stack_touched"), NULL, 10);
	size_t size = strtoul(must(r, "stack_size"), NULL, 10);
	cr_assert(used > 0 && used < size, "%s uses %zu of %zu", must(r, "name"), used, size);
	cr_assert(touched >= used && touched <= size, "%s touched %zu, uses %zu", must(r, "name"),
		  touched, used);
}

static void check_remaining(const struct rec *r, double lo, double hi)
{
	const char *v = must(r, "remaining_ms");

	if (lo < 0) {
		cr_assert_str_eq(v, "-", "%s: remaining %s", must(r, "name"), v);
		return;
	}
	double left = atof(v);
	cr_assert(left > lo && left <= hi, "%s: %f ms left", must(r, "name"), left);
}

Test(observe, dump_lists_1000_parked_fibers_with_their_waits)
{
	void *(*fns[4])(void *) = { wait_event, sleep_long, read_pipe, get_queue };
	const char *prefix[4] = { "event", "sleep", "read", "queue" };
	gr_fiber *f[4 * EACH];
	char name[32];

	assert_ok(gr_event_init(&never));
	assert_ok(gr_queue_init(&empty_queue, 4));
	cr_assert_eq(pipe2(pipe_fds, O_CLOEXEC), 0);
	for (int i = 0; i < 4 * EACH; i++) {
		snprintf(name, sizeof(name), "%s-%d", prefix[i / EACH], i % EACH);
		struct gr_spawn_opts o = { .name = name };
		f[i] = gr_spawn_with(&o, fns[i / EACH], NULL);
		cr_assert_not_null(f[i]);
	}
	assert_ok(gr_sleep(0));

	struct dump d;
	dump_take(0, GR_FOREVER, &d);
	cr_assert_str_eq(d.lines[0].type, "dump");
	cr_assert_str_eq(must(&d.lines[0], "hubs"), "1");
	cr_assert_str_eq(d.lines[d.nlines - 1].type, "dump-end");
	cr_assert_eq(count_type(&d, "hub"), 1);
	cr_assert_eq(count_type(&d, "counters"), 1);
	cr_assert_eq(count_type(&d, "fiber"), 4 * EACH + 1, "%zu fiber lines", count_type(&d, "fiber"));
	const struct rec *hub = &d.lines[1];
	cr_assert_str_eq(hub->type, "hub");
	cr_assert_str_eq(must(hub, "backend"), grt_hub());
	cr_assert_eq(atoi(must(hub, "fibers")), 4 * EACH);
	/* In flight: the sleeps, the reads (or their polls) and the queue
	 * waits' deadline timers; event waits cost nothing. */
	cr_assert_eq(atoi(must(hub, "inflight")), 3 * EACH, "inflight=%s", must(hub, "inflight"));
	cr_assert_eq(strtoull(must(hub, "running"), NULL, 10), gr_fiber_id(gr_self()));

	const struct rec *main_rec = find_fiber(&d, "main");
	cr_assert_not_null(main_rec);
	cr_assert_str_eq(must(main_rec, "state"), "running");
	cr_assert_str_eq(must(main_rec, "stack"), "thread");
	const char *read_op = strcmp(grt_hub(), "io_uring") == 0 ? "read" : "poll";
	char fd_text[16];
	snprintf(fd_text, sizeof(fd_text), "%d", pipe_fds[0]);
	for (int i = 0; i < 4 * EACH; i++) {
		snprintf(name, sizeof(name), "%s-%d", prefix[i / EACH], i % EACH);
		const struct rec *r = find_fiber(&d, name);
		cr_assert_not_null(r, "%s missing from the dump", name);
		cr_assert_eq(strtoull(must(r, "id"), NULL, 10), gr_fiber_id(f[i]), "%s", name);
		switch (i / EACH) {
		case 0:
			check_wait(r, "gr_event_wait", "queue");
			check_remaining(r, -1, 0);
			break;
		case 1:
			check_wait(r, "gr_sleep", "op");
			cr_assert_str_eq(must(r, "op"), "timeout");
			check_remaining(r, 25000, 30000);
			break;
		case 2:
			check_wait(r, "gr_read", "op");
			cr_assert_str_eq(must(r, "op"), read_op, "%s: op=%s", name, must(r, "op"));
			cr_assert_str_eq(must(r, "fd"), fd_text);
			check_remaining(r, -1, 0);
			break;
		default:
			check_wait(r, "gr_queue_get", "queue");
			check_remaining(r, 25000, 30000);
			break;
		}
	}
	/* Every event waiter waits on the same object, every queue waiter on
	 * the other one. */
	const char *ev_obj = must(find_fiber(&d, "event-0"), "object");
	const char *q_obj = must(find_fiber(&d, "queue-0"), "object");
	cr_assert_str_neq(ev_obj, q_obj);
	cr_assert_str_eq(must(find_fiber(&d, "event-249"), "object"), ev_obj);
	cr_assert_str_eq(must(find_fiber(&d, "queue-249"), "object"), q_obj);
	dump_free(&d);

	for (int i = 0; i < 4 * EACH; i++)
		assert_ok(gr_kill(f[i]));
	for (int i = 0; i < 4 * EACH; i++) {
		void *res = NULL;

		assert_ok(gr_join(f[i], &res, GR_FOREVER));
		cr_assert_lt((intptr_t)res, 0, "fiber %d ended with %ld, not an error", i, (long)(intptr_t)res);
	}
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	assert_ok(gr_queue_destroy(&empty_queue));
	assert_ok(gr_event_destroy(&never));
}

/* ------------------------------------------------------------ every hub */

/* A thread with its own hub and one fiber, named after it, parked on a
 * pipe until the test writes to it. */
struct other {
	pthread_t thread;
	int release[2];         /* the fiber reads, the test writes */
	int ready;              /* written to once the fiber is parked */
	pid_t tid;
	bool spin;              /* hold the thread, without switching, until released */
	atomic_bool released;   /* other_stop's word to a spinning fiber */
	char name[32];
};

static void *other_fiber(void *arg)
{
	struct other *o = arg;
	char c;

	if (o->spin) {
		/* Say so from inside: the test asks while this fiber holds the
		 * thread, so the hub's loop cannot answer until the test lets
		 * go (at most a minute: a test that fails does not hang). */
		int64_t end = gr_now() + 60 * GR_SEC;

		if (write(o->ready, "r", 1) != 1)
			return (void *)-1;
		while (!atomic_load(&o->released) && gr_now() < end)
			;
	}
	return (void *)(intptr_t)gr_read(o->release[0], &c, 1);
}

static void *other_main(void *arg)
{
	struct other *o = arg;

	if (gr_hub_use(grt_hub()) != 0)
		return (void *)1;
	o->tid = gettid();
	struct gr_spawn_opts opts = { .name = o->name };
	gr_fiber *f = gr_spawn_with(&opts, other_fiber, o);
	if (!f)
		return (void *)2;
	gr_sleep(0);
	if (!o->spin && write(o->ready, "r", 1) != 1)
		return (void *)3;
	void *res = NULL;
	if (gr_join(f, &res, GR_FOREVER) != 0 || (intptr_t)res != 1)
		return (void *)4;
	return NULL;
}

static void other_start(struct other *o, const char *name, bool spin, int ready_fd)
{
	memset(o, 0, sizeof(*o));
	atomic_init(&o->released, false);
	snprintf(o->name, sizeof(o->name), "%s", name);
	o->spin = spin;
	o->ready = ready_fd;
	cr_assert_eq(pipe2(o->release, O_CLOEXEC), 0);
	cr_assert_eq(pthread_create(&o->thread, NULL, other_main, o), 0);
}

static void other_stop(struct other *o)
{
	void *res = (void *)-1;

	atomic_store(&o->released, true);
	cr_assert_eq(write(o->release[1], "x", 1), 1);
	/* The thread ends promptly once released; joining blocks this hub
	 * for that long only. */
	cr_assert_eq(pthread_join(o->thread, &res), 0);
	cr_assert_null(res, "thread %s failed at step %ld", o->name, (long)(intptr_t)res);
	close(o->release[0]);
	close(o->release[1]);
}

static void wait_ready(int fd, int n)
{
	char c;

	for (int i = 0; i < n; i++)
		cr_assert_eq(gr_read(fd, &c, 1), 1, "gr_read: %s", strerror(errno));
}

static const struct rec *find_hub(const struct dump *d, pid_t tid)
{
	char want[16];

	snprintf(want, sizeof(want), "%d", (int)tid);
	for (size_t i = 0; i < d->nlines; i++)
		if (strcmp(d->lines[i].type, "hub") == 0 && strcmp(must(&d->lines[i], "tid"), want) == 0)
			return &d->lines[i];
	return NULL;
}

Test(observe, every_hub_answers_for_itself_on_its_own_thread)
{
	struct other a, b;
	int ready[2];

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	other_start(&a, "parked-in-a", false, ready[1]);
	other_start(&b, "parked-in-b", false, ready[1]);
	wait_ready(ready[0], 2);

	struct dump d;
	dump_take(GR_DUMP_ALL_HUBS, gr_now() + 5 * GR_SEC, &d);
	cr_assert_str_eq(must(&d.lines[0], "hubs"), "3");
	const struct rec *end = &d.lines[d.nlines - 1];
	cr_assert_str_eq(end->type, "dump-end");
	cr_assert_str_eq(must(end, "answered"), "3");
	cr_assert_eq(count_type(&d, "no-answer"), 0);
	cr_assert_not_null(find_hub(&d, gettid()));
	cr_assert_not_null(find_hub(&d, a.tid));
	cr_assert_not_null(find_hub(&d, b.tid));
	/* Each fiber is listed under its own thread, parked in its read. */
	const struct rec *fa = find_fiber(&d, "parked-in-a"), *fb = find_fiber(&d, "parked-in-b");
	cr_assert_not_null(fa);
	cr_assert_not_null(fb);
	cr_assert_eq(atoi(must(fa, "tid")), a.tid);
	cr_assert_eq(atoi(must(fb, "tid")), b.tid);
	cr_assert_str_eq(must(fa, "call"), "gr_read");
	cr_assert_str_eq(must(fa, "state"), "parked");
	/* The caller is running; the other threads' main contexts are parked
	 * in their joins (their loops answered). */
	cr_assert_str_eq(must(find_fiber(&d, "main"), "state"), "running");
	size_t parked_mains = 0;
	for (size_t i = 0; i < d.nlines; i++) {
		const char *n = get(&d.lines[i], "name");

		if (n && strcmp(n, "main") == 0 && strcmp(must(&d.lines[i], "state"), "parked") == 0) {
			cr_assert_str_eq(must(&d.lines[i], "call"), "gr_join");
			parked_mains++;
		}
	}
	cr_assert_eq(parked_mains, 2);
	dump_free(&d);

	other_stop(&a);
	other_stop(&b);
	close(ready[0]);
	close(ready[1]);
}

/* A thread with no hub of its own asks, and blocks while the hubs answer. */
struct asker {
	int fd;
	int done;
	int err;
};

static void *ask_from_plain_thread(void *arg)
{
	struct asker *k = arg;

	k->err = gr_dump(k->fd, GR_DUMP_ALL_HUBS, gr_now() + 5 * GR_SEC);
	if (write(k->done, "d", 1) != 1)
		k->err = -EIO;
	return NULL;
}

Test(observe, a_thread_with_no_hub_gets_every_hub)
{
	struct other a;
	int ready[2];
	struct asker k = { .fd = memfd() };
	pthread_t t;

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	k.done = ready[1];
	other_start(&a, "parked-in-a", false, ready[1]);
	wait_ready(ready[0], 1);
	cr_assert_eq(pthread_create(&t, NULL, ask_from_plain_thread, &k), 0);
	wait_ready(ready[0], 1); /* parked here, so this hub can answer */
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_ok(k.err);

	struct dump d;
	dump_read(k.fd, &d);
	cr_assert_str_eq(must(&d.lines[d.nlines - 1], "answered"), "2");
	cr_assert_not_null(find_hub(&d, gettid()));
	cr_assert_not_null(find_hub(&d, a.tid));
	/* This thread's main context was parked in gr_read when its hub answered. */
	const struct rec *main_here = NULL;
	char tid[16];
	snprintf(tid, sizeof(tid), "%d", (int)gettid());
	for (size_t i = 0; i < d.nlines; i++)
		if (strcmp(d.lines[i].type, "fiber") == 0 && strcmp(must(&d.lines[i], "tid"), tid) == 0)
			main_here = &d.lines[i];
	cr_assert_not_null(main_here);
	cr_assert_str_eq(must(main_here, "state"), "parked");
	cr_assert_str_eq(must(main_here, "call"), "gr_read");
	dump_free(&d);
	close(k.fd);
	other_stop(&a);
	close(ready[0]);
	close(ready[1]);
}

/* A thread whose only fiber sleeps: its hub has no fd to audit, no fiber
 * waiting on another thread, no thread-pool job, so nothing but the
 * request's own wake-up can make it answer before the sleep ends. */
struct sleeper {
	pthread_t thread;
	pid_t tid;
	int ready;
	int64_t until;
};

static void *sleep_until_fiber(void *arg)
{
	return (void *)(intptr_t)gr_sleep_until(((struct sleeper *)arg)->until);
}

static void *sleeper_main(void *arg)
{
	struct sleeper *s = arg;

	if (gr_hub_use(grt_hub()) != 0)
		return (void *)1;
	s->tid = gettid();
	struct gr_spawn_opts opts = { .name = "asleep" };
	gr_fiber *f = gr_spawn_with(&opts, sleep_until_fiber, s);
	if (!f)
		return (void *)2;
	gr_sleep(0);
	if (write(s->ready, "r", 1) != 1)
		return (void *)3;
	void *res = (void *)-1;
	if (gr_join(f, &res, GR_FOREVER) != 0 || res != NULL)
		return (void *)4;
	return NULL;
}

Test(observe, a_hub_asleep_with_nothing_else_to_wake_it_answers)
{
	struct sleeper s = { .until = gr_now() + 2 * GR_SEC };
	int ready[2];

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	s.ready = ready[1];
	cr_assert_eq(pthread_create(&s.thread, NULL, sleeper_main, &s), 0);
	wait_ready(ready[0], 1);

	struct dump d;
	dump_take(GR_DUMP_ALL_HUBS, s.until + 5 * GR_SEC, &d);
	/* Answered while its fiber still slept: woken by the request, not by
	 * the end of the sleep. */
	cr_assert_lt(gr_now(), s.until, "the sleeping hub answered only when its sleep ended");
	cr_assert_str_eq(must(&d.lines[d.nlines - 1], "answered"), "2");
	cr_assert_not_null(find_hub(&d, s.tid));
	const struct rec *f = find_fiber(&d, "asleep");
	cr_assert_not_null(f);
	cr_assert_str_eq(must(f, "state"), "parked");
	cr_assert_eq(atoi(must(f, "tid")), s.tid);
	dump_free(&d);

	void *res = (void *)-1;
	cr_assert_eq(pthread_join(s.thread, &res), 0);
	cr_assert_null(res, "the sleeping thread failed at step %ld", (long)(intptr_t)res);
	close(ready[0]);
	close(ready[1]);
}

Test(observe, a_hub_held_by_a_fiber_is_listed_as_not_answering)
{
	struct other a;
	int ready[2];

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	/* Its fiber holds its thread until other_stop; we wait 50 ms for it. */
	other_start(&a, "spinning-in-a", true, ready[1]);
	wait_ready(ready[0], 1);
	int64_t t0 = gr_now();
	struct dump d;
	dump_take(GR_DUMP_ALL_HUBS, gr_now() + 50 * GR_MSEC, &d);
	int64_t took = gr_now() - t0;
	/* 50 ms, and time for a loaded machine to let this thread run. */
	cr_assert_lt(took, GR_SEC, "waited %lld ms for a hub that cannot answer",
		     (long long)(took / GR_MSEC));
	cr_assert_eq(count_type(&d, "no-answer"), 1);
	cr_assert_eq(atoi(must(&d.lines[1], "tid")), gettid()); /* ours first: it was made first */
	const struct rec *silent = NULL;
	for (size_t i = 0; i < d.nlines; i++)
		if (strcmp(d.lines[i].type, "no-answer") == 0)
			silent = &d.lines[i];
	cr_assert_eq(atoi(must(silent, "tid")), a.tid);
	cr_assert_str_eq(must(silent, "backend"), grt_hub());
	cr_assert_str_eq(must(&d.lines[d.nlines - 1], "answered"), "1");
	dump_free(&d);
	/* Its late answer finds the gathering still there (and ASan finds no
	 * use after free): the thread must end cleanly. */
	other_stop(&a);
	close(ready[0]);
	close(ready[1]);
}

/* A thread whose main context holds it, with no fiber and no loop, and then
 * exits: its hub can only answer on its way out, and does. */
struct leaver {
	int ready;
	pid_t tid;
	int err;
	atomic_bool go;         /* set once the dump's request is on its way */
};

static void *leave_after_spinning(void *arg)
{
	struct leaver *l = arg;

	l->err = gr_hub_use(grt_hub());
	if (!l->err && !gr_hub_name()) /* makes the hub */
		l->err = -errno;
	l->tid = gettid();
	if (write(l->ready, "r", 1) != 1)
		l->err = -EIO;
	int64_t end = gr_now() + 60 * GR_SEC; /* a failing test does not hang */
	while (!atomic_load(&l->go) && gr_now() < end)
		;
	return NULL; /* the hub goes with the thread */
}

/* Runs once the dump's caller parks: its requests are out by then. */
static void *let_the_leaver_go(void *arg)
{
	atomic_store(&((struct leaver *)arg)->go, true);
	return NULL;
}

Test(observe, a_hub_whose_thread_exits_answers_on_its_way_out)
{
	struct leaver l = { .tid = 0 };
	int ready[2];
	pthread_t t;

	atomic_init(&l.go, false);
	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	l.ready = ready[1];
	cr_assert_eq(pthread_create(&t, NULL, leave_after_spinning, &l), 0);
	wait_ready(ready[0], 1);
	gr_fiber *go = gr_spawn(let_the_leaver_go, &l);
	cr_assert_not_null(go);
	struct dump d;
	dump_take(GR_DUMP_ALL_HUBS, gr_now() + 30 * GR_SEC, &d);
	assert_ok(gr_join(go, NULL, GR_FOREVER));
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_ok(l.err);
	cr_assert_str_eq(must(&d.lines[d.nlines - 1], "answered"), "2", "%s", d.text);
	const struct rec *gone = find_hub(&d, l.tid);
	cr_assert_not_null(gone, "%s", d.text);
	cr_assert_str_eq(must(gone, "fibers"), "0");
	dump_free(&d);
	close(ready[0]);
	close(ready[1]);
}

/* A fiber waiting for the answers is killed: it stops waiting at once,
 * writes nothing, and the late answer lands in a gathering still alive. */
struct dumper {
	int fd;
	int err;
};

static void *dump_every_hub(void *arg)
{
	struct dumper *d = arg;

	d->err = gr_dump(d->fd, GR_DUMP_ALL_HUBS, GR_FOREVER);
	return NULL;
}

Test(observe, a_killed_caller_stops_waiting_for_the_answers)
{
	struct other a;
	int ready[2];
	struct dumper d = { .fd = memfd(), .err = 1 };

	cr_assert_eq(pipe2(ready, O_CLOEXEC), 0);
	other_start(&a, "spinning-in-a", true, ready[1]);
	wait_ready(ready[0], 1);
	gr_fiber *f = gr_spawn(dump_every_hub, &d);
	cr_assert_not_null(f);
	/* It runs while this fiber sleeps, asks, and waits for a hub that
	 * cannot answer before other_stop. */
	assert_ok(gr_sleep(20 * GR_MSEC));
	cr_assert_eq(d.err, 1, "gr_dump returned early: %d", d.err);
	int64_t t0 = gr_now();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	/* Not the hub's minute (nor forever): a loaded machine's delay at most. */
	cr_assert_lt(gr_now() - t0, GR_SEC, "the kill took %lld ms",
		     (long long)((gr_now() - t0) / GR_MSEC));
	assert_err(d.err, ECANCELED);
	cr_assert_eq(lseek(d.fd, 0, SEEK_END), 0, "a cancelled dump wrote something");
	/* Killed before it asks: the gate's rule, nothing sent. */
	d.err = 1;
	f = gr_spawn(dump_every_hub, &d);
	cr_assert_not_null(f);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	cr_assert_eq(d.err, 1, "a fiber killed before it ran ran its body");
	other_stop(&a);
	close(d.fd);
	close(ready[0]);
	close(ready[1]);
}

/* ------------------------------------------------------------ on a signal */

Test(observe, a_signal_asks_every_hub_through_its_loop)
{
	int p[2];
	char buf[65536];
	size_t n = 0;
	struct gr_spawn_opts o = { .name = "bystander" };
	gr_fiber *f = gr_spawn_with(&o, sleep_long, NULL);

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0)); /* parked in its sleep before anyone asks */
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	assert_ok(gr_dump_on_signal(SIGUSR1, p[1]));
	cr_assert_eq(raise(SIGUSR1), 0);
	/* The dump arrives through the pipe; this thread's hub answers while
	 * this fiber waits for it. */
	int64_t old = gr_deadline_set(gr_now() + 10 * GR_SEC);
	while (n + 1 < sizeof(buf) && !strstr(buf, "dump-end")) {
		ssize_t r = gr_read(p[0], buf + n, sizeof(buf) - 1 - n);

		cr_assert_gt(r, 0, "gr_read: %s", r < 0 ? strerror(errno) : "end of file");
		n += (size_t)r;
		buf[n] = '\0';
	}
	gr_deadline_set(old);
	struct rec r;
	char *line = strstr(buf, "\nfiber ");
	bool saw_bystander = false, saw_main = false;
	for (; line; line = strstr(line + 1, "\nfiber ")) {
		parse_line(line + 1, &r);
		if (strcmp(must(&r, "name"), "bystander") == 0) {
			saw_bystander = true;
			cr_assert_str_eq(must(&r, "call"), "gr_sleep");
		}
		if (strcmp(must(&r, "name"), "main") == 0) {
			saw_main = true;
			cr_assert_str_eq(must(&r, "call"), "gr_read");
		}
	}
	cr_assert(saw_bystander && saw_main, "dump without our fibers:\n%s", buf);
	assert_ok(gr_dump_on_signal(0, -1));
	/* Back to what SIGUSR1 did before: Criterion's default, ignored here. */
	struct sigaction now;
	cr_assert_eq(sigaction(SIGUSR1, NULL, &now), 0);
	cr_assert(now.sa_handler == SIG_DFL || now.sa_handler == SIG_IGN);
	assert_ok(gr_kill(f));
	cr_assert_eq(gr_join(f, NULL, GR_FOREVER), 0);
	close(p[0]);
	close(p[1]);
}

Test(observe, bad_arguments_are_refused)
{
	int fd = memfd();

	assert_err(gr_dump(fd, 0x80, GR_FOREVER), EINVAL);
	assert_err(gr_dump(-1, 0, GR_FOREVER), EBADF);
	assert_err(gr_dump(1000, 0, GR_FOREVER), EBADF);
	assert_err(gr_dump_on_signal(SIGKILL, fd), EINVAL);
	assert_err(gr_dump_on_signal(SIGURG, fd), EINVAL);
	assert_err(gr_dump_on_signal(SIGSEGV, fd), EINVAL);
	assert_err(gr_dump_on_signal(-3, fd), EINVAL);
	assert_err(gr_dump_on_signal(SIGUSR2, -1), EBADF);
	assert_err(gr_dump_on_signal(SIGUSR2, 1000), EBADF);
	assert_err(gr_hub_counters(NULL, sizeof(struct gr_hub_counters)), EINVAL);
	struct gr_hub_counters c;
	assert_err(gr_hub_counters(&c, 8), EINVAL);
	cr_assert_str_eq(gr_op_kind_name(GR_OP_RECV), "recv");
	cr_assert_str_eq(gr_op_kind_name(200), "?");
	close(fd);
}

static void *no_hub_calls(void *arg)
{
	struct gr_hub_counters c;
	int *errs = arg;

	errs[0] = gr_dump(STDERR_FILENO, 0, GR_FOREVER);
	errs[1] = gr_hub_counters(&c, sizeof(c));
	return NULL;
}

Test(observe, a_thread_without_a_hub_has_no_dump_of_its_own)
{
	int errs[2];
	pthread_t t;

	cr_assert_eq(pthread_create(&t, NULL, no_hub_calls, errs), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_err(errs[0], ESRCH);
	assert_err(errs[1], ESRCH);
}

Test(observe, names_that_could_break_a_line_are_escaped)
{
	struct gr_spawn_opts o = { .name = "a \"b\"\n\\c" };
	gr_fiber *f = gr_spawn_with(&o, sleep_long, NULL);
	struct dump d;

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0));
	dump_take(0, GR_FOREVER, &d); /* parse_line fails on a broken line */
	cr_assert_not_null(find_fiber(&d, "a \"b\"\n\\c"));
	dump_free(&d);
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
}

/* ------------------------------------------------------------ counters */

static gr_event gate;

static void *sleep_1ms(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_sleep(GR_MSEC);
}

static void *wait_gate(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_event_wait(&gate, GR_FOREVER);
}

static void *wait_gate_20ms(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_event_wait(&gate, gr_now() + 20 * GR_MSEC);
}

static void *read_with_deadline(void *a)
{
	char c;

	(void)a;
	gr_deadline_set(gr_now() + 20 * GR_MSEC);
	return (void *)(intptr_t)gr_read(pipe_fds[0], &c, 1);
}

static void *nothing(void *a)
{
	return a;
}

static void *in_pool(void *a)
{
	(void)a;
	return (void *)(intptr_t)gr_tpool_run(nothing, NULL, NULL, GR_FOREVER);
}

static void *spin_20ms(void *a)
{
	int64_t end = gr_now() + 20 * GR_MSEC;

	(void)a;
	while (gr_now() < end)
		;
	return NULL;
}

static uint64_t sum(const uint64_t *v)
{
	uint64_t s = 0;

	for (int k = 0; k < GR_HUB_COUNTERS_KINDS; k++)
		s += v[k];
	return s;
}

static gr_fiber *spawn_ok(void *(*fn)(void *))
{
	gr_fiber *f = gr_spawn(fn, NULL);

	cr_assert_not_null(f);
	return f;
}

/* Wait for every fiber with one gr_hub_join (one wake-up of this hub),
 * then release them: joins of ended fibers do not wait. */
static void join_all(gr_fiber **f, int n)
{
	assert_ok(gr_hub_join(GR_FOREVER));
	for (int i = 0; i < n; i++)
		assert_ok(gr_join(f[i], NULL, 0));
}

Test(observe, counters_add_up_after_a_known_workload)
{
	struct gr_hub_counters a, b;
	gr_fiber *f[8];

	assert_ok(gr_event_init(&gate));
	cr_assert_eq(pipe2(pipe_fds, O_CLOEXEC), 0);
	assert_ok(gr_hub_counters(&a, sizeof(a)));

	/* 8 sleeps of 1 ms: 8 timeouts handed over and completed. */
	for (int i = 0; i < 8; i++)
		f[i] = spawn_ok(sleep_1ms);
	join_all(f, 8);
	/* 5 fibers woken from an event: 5 wake-ups from a wait queue. */
	for (int i = 0; i < 5; i++)
		f[i] = spawn_ok(wait_gate);
	assert_ok(gr_sleep(0));
	cr_assert_eq(gr_event_set(&gate), 5);
	join_all(f, 5);
	assert_ok(gr_event_clear(&gate));
	/* 3 event waits and 2 reads that time out: 5 deadlines; the event
	 * waits are woken from their queue by their timers. */
	for (int i = 0; i < 3; i++)
		f[i] = spawn_ok(wait_gate_20ms);
	for (int i = 3; i < 5; i++)
		f[i] = spawn_ok(read_with_deadline);
	join_all(f, 5);
	/* 4 reads killed: 4 cancels. */
	for (int i = 0; i < 4; i++)
		f[i] = spawn_ok(read_pipe);
	assert_ok(gr_sleep(0));
	for (int i = 0; i < 4; i++)
		assert_ok(gr_kill(f[i]));
	join_all(f, 4);
	/* 3 calls to the thread pool: 3 wake-ups from other threads. */
	for (int i = 0; i < 3; i++)
		f[i] = spawn_ok(in_pool);
	join_all(f, 3);
	/* A fiber holds the thread 20 ms while a sleep is in flight, so the
	 * loop waits that long for its turn. */
	f[0] = spawn_ok(sleep_1ms);
	assert_ok(gr_sleep(0));
	f[1] = spawn_ok(spin_20ms);
	join_all(f, 2);

	assert_ok(gr_hub_counters(&b, sizeof(b)));
	cr_assert_eq(b.spawned - a.spawned, 8 + 5 + 5 + 4 + 3 + 2);
	cr_assert_eq(b.ended - a.ended, 8 + 5 + 5 + 4 + 3 + 2);
	cr_assert_eq(b.deadlines - a.deadlines, 5, "deadlines: %llu",
		     (unsigned long long)(b.deadlines - a.deadlines));
	cr_assert_eq(b.cancels - a.cancels, 4, "cancels: %llu",
		     (unsigned long long)(b.cancels - a.cancels));
	/* The event, the timers of the waits on it, and one gr_hub_join per phase. */
	cr_assert_eq(b.unparks - a.unparks, 5 + 3 + 6, "unparks: %llu",
		     (unsigned long long)(b.unparks - a.unparks));
	cr_assert_eq(b.remote_wakeups - a.remote_wakeups, 3);
	/* Timeouts: 8 + 1 sleeps, and one timer per gate wait with a deadline. */
	cr_assert_eq(b.submitted[GR_OP_TIMEOUT] - a.submitted[GR_OP_TIMEOUT], 8 + 1 + 3);
	/* The reads: on io_uring the read itself, elsewhere its readiness wait. */
	cr_assert_eq(b.submitted[GR_OP_READ] + b.submitted[GR_OP_POLL] -
		     a.submitted[GR_OP_READ] - a.submitted[GR_OP_POLL], 2 + 4);
	/* Everything handed over came back. */
	cr_assert_eq(sum(b.submitted) - sum(a.submitted), sum(b.completed) - sum(a.completed));
	cr_assert_gt(b.turns, a.turns);
	/* Measured on the coarse clock: a 20 ms turn reads at least 20 ms
	 * less one tick. */
	struct timespec tick;
	cr_assert_eq(clock_getres(CLOCK_MONOTONIC_COARSE, &tick), 0);
	cr_assert_geq(b.longest_run_ns, 20 * GR_MSEC - (tick.tv_sec * GR_SEC + tick.tv_nsec),
		      "longest run %lld ns", (long long)b.longest_run_ns);
	cr_assert_geq(b.stacks_pooled, 8, "%llu pooled", (unsigned long long)b.stacks_pooled);
	cr_assert_eq(b.stacks_live, 1, "%llu live (the hub fiber's only)",
		     (unsigned long long)b.stacks_live);

	/* A caller built against a larger struct gets its tail zeroed; a
	 * smaller size (v1 is the whole struct today) would be refused. */
	unsigned char big[sizeof(struct gr_hub_counters) + 16];
	memset(big, 0xa5, sizeof(big));
	assert_ok(gr_hub_counters((struct gr_hub_counters *)(void *)big, sizeof(big)));
	for (size_t i = sizeof(struct gr_hub_counters); i < sizeof(big); i++)
		cr_assert_eq(big[i], 0);

	close(pipe_fds[0]);
	close(pipe_fds[1]);
	assert_ok(gr_event_destroy(&gate));
}
