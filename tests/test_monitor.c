/* test_monitor.c — the blocking monitor (gr_monitor_start, GREENRING_MONITOR):
 * a fiber that holds its thread is reported once, with its name and a
 * backtrace taken on its own thread; a busy server that yields, a hub
 * asleep in its backend and a thread that does other things with no fiber
 * waiting are not. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

/* libunwind opens a pipe for itself on first use (it checks addresses
 * with it) and keeps it: let the monitor make that first use, as it does
 * when it starts, before the fds are counted. */
static void monitor_setup(void)
{
	assert_ok(gr_monitor_start(GR_SEC, NULL, NULL));
	assert_ok(gr_monitor_stop());
	grt_setup();
}

TestSuite(monitor, .init = monitor_setup, .fini = grt_teardown, .timeout = 60);

/* ------------------------------------------------------------ recording */

#define REPORTS_MAX 8

struct seen {
	pid_t tid;
	char hub[16];
	uint64_t fiber_id;
	char fiber_name[32];
	int64_t running_ns;
	int ended;
	size_t nframes;
	char functions[GR_MONITOR_FRAMES][96];
	char text[4096];
};

/* What the monitor thread reported; `wake` is written once per report so
 * a fiber can wait for one without sleeping and hoping. */
static struct {
	pthread_mutex_t lock;
	int n;
	struct seen r[REPORTS_MAX];
	int wake[2];
	atomic_int count;       /* = n, read by a spinning fiber without the lock */
} rec = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void record(const struct gr_monitor_report *r, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&rec.lock);
	if (rec.n < REPORTS_MAX) {
		struct seen *s = &rec.r[rec.n++];

		s->tid = r->tid;
		snprintf(s->hub, sizeof(s->hub), "%s", r->hub);
		s->fiber_id = r->fiber_id;
		snprintf(s->fiber_name, sizeof(s->fiber_name), "%s", r->fiber_name);
		s->running_ns = r->running_ns;
		s->ended = r->ended;
		s->nframes = r->nframes;
		for (size_t i = 0; i < r->nframes; i++)
			snprintf(s->functions[i], sizeof(s->functions[i]), "%s", r->frames[i].function);
		snprintf(s->text, sizeof(s->text), "%s", r->text);
	}
	atomic_store(&rec.count, rec.n);
	pthread_mutex_unlock(&rec.lock);
	if (write(rec.wake[1], "r", 1) != 1)
		abort();
}

static void recording_start(int64_t threshold)
{
	cr_assert_eq(pipe2(rec.wake, O_CLOEXEC), 0);
	assert_ok(gr_monitor_start(threshold, record, NULL));
}

static void recording_stop(void)
{
	assert_ok(gr_monitor_stop());
	close(rec.wake[0]);
	close(rec.wake[1]);
}

/* Wait (as a fiber) for the n-th report, up to 2 s. */
static void await_reports(int n)
{
	char c;

	for (;;) {
		pthread_mutex_lock(&rec.lock);
		int have = rec.n;
		pthread_mutex_unlock(&rec.lock);
		if (have >= n)
			return;
		int64_t old = gr_deadline_set(gr_now() + 2 * GR_SEC);
		ssize_t r = gr_read(rec.wake[0], &c, 1);
		gr_deadline_set(old);
		cr_assert_eq(r, 1, "waiting for report %d of the monitor: %s", n, strerror(errno));
	}
}

static int reports(void)
{
	pthread_mutex_lock(&rec.lock);
	int n = rec.n;
	pthread_mutex_unlock(&rec.lock);
	return n;
}

static bool has_function(const struct seen *s, const char *name)
{
	for (size_t i = 0; i < s->nframes; i++)
		if (strstr(s->functions[i], name))
			return true;
	return false;
}

/* ------------------------------------------------------------ spinning */

/* How long a spinner may wait for the monitor before its test fails: a
 * monitor that never reports ends the spin, it does not hang the suite. */
#define SPIN_CAP (10 * GR_SEC)

/* A spin: at least min_ns, then until done(s) says the monitor has seen it
 * (by default: a report came after the spin began). The monitor's thread
 * may start late or be kept off the CPU on a loaded machine; a spin of a
 * fixed length would then end unseen, so the test waits on what the
 * monitor publishes, not on a guess of how soon it will. */
struct spin {
	int64_t min_ns;
	bool (*done)(struct spin *s);
	int reports_before;     /* the reports there were when it began */
	int64_t spun_ns;        /* how long it held the thread */
};

static bool reported_since(struct spin *s)
{
	return atomic_load(&rec.count) > s->reports_before;
}

/* Holds the thread without switching. noinline and not static-inlined into
 * its caller: a frame of its own in the backtrace (static: the symbol
 * table, not the dynamic one, names it, which libunwind reads). */
__attribute__((noinline)) static void grt_spin_for(struct spin *s)
{
	int64_t start = gr_now(), now;

	s->reports_before = atomic_load(&rec.count);
	if (!s->done)
		s->done = reported_since;
	do {
		__asm__ volatile("" ::: "memory");
		now = gr_now();
	} while (now - start < s->min_ns || (!s->done(s) && now - start < SPIN_CAP));
	s->spun_ns = now - start;
}

static void *spinner(void *arg)
{
	grt_spin_for(arg);
	return NULL;
}

static gr_fiber *spawn_named(const char *name, void *(*fn)(void *), void *arg)
{
	struct gr_spawn_opts o = { .name = name };
	gr_fiber *f = gr_spawn_with(&o, fn, arg);

	cr_assert_not_null(f);
	return f;
}

static void check_stall_report(const struct seen *s, pid_t tid, const gr_fiber *f,
			       const char *name, int64_t threshold)
{
	cr_assert_eq(s->ended, 0, "first report: %s", s->text);
	cr_assert_eq(s->tid, tid);
	cr_assert_str_eq(s->hub, grt_hub());
	cr_assert_eq(s->fiber_id, gr_fiber_id(f), "%s", s->text);
	cr_assert_str_eq(s->fiber_name, name);
	cr_assert_geq(s->running_ns, threshold, "%s", s->text);
	/* Sampled every threshold/4; a loaded machine may delay the monitor,
	 * and the handler waits for the stalled thread's next time slice. */
	cr_assert_lt(s->running_ns, threshold + GR_SEC, "reported late: %s", s->text);
	cr_assert(has_function(s, "grt_spin_for"), "no grt_spin_for in the backtrace:\n%s", s->text);
	cr_assert(has_function(s, "spinner"), "no spinner in the backtrace:\n%s", s->text);
	cr_assert_not_null(strstr(s->text, "greenring: monitor: thread "), "%s", s->text);
	cr_assert_not_null(strstr(s->text, name), "%s", s->text);
}

Test(monitor, a_fiber_spinning_200ms_is_reported_with_its_backtrace)
{
	struct spin spin = { .min_ns = 200 * GR_MSEC };

	recording_start(50 * GR_MSEC);
	gr_fiber *f = spawn_named("spinner", spinner, &spin);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	await_reports(2);
	cr_assert_eq(reports(), 2, "one report and its end, got %d", reports());
	check_stall_report(&rec.r[0], gettid(), f, "spinner", 50 * GR_MSEC);
	/* Then the line saying it switched, and how long it ran in all. */
	const struct seen *end = &rec.r[1];
	cr_assert_eq(end->ended, 1);
	cr_assert_str_eq(end->fiber_name, "spinner");
	cr_assert_eq(end->nframes, 0);
	/* The monitor measures from the sample that first saw the stall, to
	 * within threshold/4 (and its own delays) of the spin's true length. */
	cr_assert_geq(end->running_ns, rec.r[0].running_ns, "%s", end->text);
	cr_assert_geq(end->running_ns, spin.spun_ns - 50 * GR_MSEC, "spun %lld ms: %s",
		      (long long)(spin.spun_ns / GR_MSEC), end->text);
	cr_assert_leq(end->running_ns, spin.spun_ns + GR_SEC, "spun %lld ms: %s",
		      (long long)(spin.spun_ns / GR_MSEC), end->text);
	recording_stop();
}

Test(monitor, each_stall_is_reported_once)
{
	/* 150 ms: five thresholds, one report and one end. */
	struct spin first = { .min_ns = 150 * GR_MSEC }, second = { .min_ns = 150 * GR_MSEC };

	recording_start(30 * GR_MSEC);
	gr_fiber *f = spawn_named("first", spinner, &first);
	assert_ok(gr_join(f, NULL, GR_FOREVER));
	await_reports(2);
	gr_fiber *g = spawn_named("second", spinner, &second);
	assert_ok(gr_join(g, NULL, GR_FOREVER));
	await_reports(4);
	cr_assert_eq(reports(), 4);
	cr_assert_str_eq(rec.r[0].fiber_name, "first");
	cr_assert_eq(rec.r[1].ended, 1);
	cr_assert_str_eq(rec.r[2].fiber_name, "second");
	cr_assert_eq(rec.r[2].ended, 0);
	cr_assert_eq(rec.r[3].ended, 1);
	recording_stop();
}

/* A hub on another thread: the report names that thread, and the
 * backtrace is that thread's fiber's. */
struct worker {
	pid_t tid;
	uint64_t fiber_id;
	int done;               /* written when the spinner has ended */
	int release[2];         /* then the thread waits here, its hub alive */
	int err;
	struct spin spin;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	w->err = gr_hub_use(grt_hub());
	w->tid = gettid();
	struct gr_spawn_opts o = { .name = "far-spinner" };
	gr_fiber *f = gr_spawn_with(&o, spinner, &w->spin);
	if (!w->err && !f)
		w->err = -errno;
	if (!w->err) {
		w->fiber_id = gr_fiber_id(f);
		w->err = gr_join(f, NULL, GR_FOREVER);
	}
	if (write(w->done, "d", 1) != 1)
		w->err = -EIO;
	/* Asleep in its backend until released: the monitor sees the stall
	 * end before the hub goes away with the thread. */
	char c;
	if (gr_read(w->release[0], &c, 1) != 1 && !w->err)
		w->err = -errno;
	return NULL;
}

Test(monitor, a_fiber_of_another_thread_is_reported_from_that_thread)
{
	int done[2];
	struct worker w = { .spin = { .min_ns = 200 * GR_MSEC } };
	pthread_t t;
	char c;

	cr_assert_eq(pipe2(done, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(w.release, O_CLOEXEC), 0);
	w.done = done[1];
	recording_start(50 * GR_MSEC);
	cr_assert_eq(pthread_create(&t, NULL, worker_main, &w), 0);
	cr_assert_eq(gr_read(done[0], &c, 1), 1); /* this hub sleeps meanwhile: not reported */
	await_reports(2);
	cr_assert_eq(write(w.release[1], "r", 1), 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	assert_ok(w.err);
	cr_assert_eq(reports(), 2, "%d reports", reports());
	const struct seen *s = &rec.r[0];
	cr_assert_eq(s->tid, w.tid, "%s", s->text);
	cr_assert_eq(s->fiber_id, w.fiber_id);
	cr_assert_str_eq(s->fiber_name, "far-spinner");
	cr_assert(has_function(s, "grt_spin_for"), "%s", s->text);
	cr_assert(has_function(s, "spinner"), "%s", s->text);
	cr_assert_eq(rec.r[1].ended, 1);
	recording_stop();
	close(done[0]);
	close(done[1]);
	close(w.release[0]);
	close(w.release[1]);
}

/* ------------------------------------------------------------ no report */

struct echo {
	int fd;
	int64_t until;
	long rounds;
};

/* A client and an echo server over a socket pair, with a little CPU and a
 * yield per round: busy, never holding the thread. The client ends the
 * exchange by shutting its side down. */
static void *echo_client(void *arg)
{
	struct echo *e = arg;
	char buf[64] = { 0 };

	while (gr_now() < e->until) {
		if (!grt_send_all(e->fd, buf, sizeof(buf)))
			return (void *)1;
		if (!grt_recv_all(e->fd, buf, sizeof(buf)))
			return (void *)2;
		int64_t work_until = gr_now() + 20 * 1000; /* 20 µs of work */
		while (gr_now() < work_until)
			;
		if (gr_sleep(0) != 0)
			return (void *)3;
		e->rounds++;
	}
	return shutdown(e->fd, SHUT_WR) == 0 ? NULL : (void *)4;
}

static void *echo_server(void *arg)
{
	struct echo *e = arg;
	char buf[64];
	ssize_t r;

	while ((r = gr_recv(e->fd, buf, sizeof(buf), 0)) > 0) {
		if (!grt_send_all(e->fd, buf, (size_t)r))
			return (void *)5;
	}
	return r == 0 ? NULL : (void *)6;
}

static void *yielder(void *arg)
{
	int64_t until = *(int64_t *)arg;

	while (gr_now() < until) {
		int64_t work_until = gr_now() + GR_MSEC;

		while (gr_now() < work_until)
			;
		if (gr_sleep(0) != 0)
			return (void *)1;
	}
	return NULL;
}

Test(monitor, a_busy_server_that_yields_is_not_reported)
{
	int sv[2];
	int64_t until = gr_now() + GR_SEC;
	struct echo a = { .until = until }, b = { .until = until };

	/* 250 ms, 250 times the longest CPU burst here, for four thresholds: a
	 * loaded machine that keeps this thread off the CPU for that long (the
	 * monitor cannot tell it from a fiber that holds it) is not the point. */
	recording_start(250 * GR_MSEC);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	a.fd = sv[0];
	b.fd = sv[1];
	gr_fiber *f[4] = {
		spawn_named("client", echo_client, &a), spawn_named("server", echo_server, &b),
		spawn_named("cpu-1", yielder, &until), spawn_named("cpu-2", yielder, &until),
	};
	for (int i = 0; i < 4; i++) {
		void *res = (void *)-1;

		assert_ok(gr_join(f[i], &res, GR_FOREVER));
		cr_assert_null(res, "fiber %d failed at step %ld", i, (long)(intptr_t)res);
	}
	cr_assert_gt(a.rounds, 0, "the server never ran");
	/* Idle: the hub asleep in its backend is waiting, not stuck. */
	assert_ok(gr_sleep(200 * GR_MSEC));
	cr_assert_eq(reports(), 0, "reported:\n%s", rec.r[0].text);
	recording_stop();
	gr_close(sv[0]);
	gr_close(sv[1]);
}

/* A plain blocking call in the main context: poll(2) on the recorder's
 * pipe, for up to ns or until the monitor reports (the pipe is not read:
 * await_reports still finds the report). The time a signal cut short is
 * given back. noinline: a frame of its own to look for. */
__attribute__((noinline)) static void block_thread(int64_t ns)
{
	int64_t end = gr_now() + ns;
	struct pollfd pfd = { .fd = rec.wake[0], .events = POLLIN };

	for (int64_t left; (left = end - gr_now()) > 0;) {
		int ms = (int)((left + GR_MSEC - 1) / GR_MSEC);

		if (poll(&pfd, 1, ms) > 0)
			return; /* a report; EINTR from the monitor's signal: go on */
	}
}

Test(monitor, a_thread_blocked_with_nothing_waiting_is_not_reported)
{
	recording_start(30 * GR_MSEC);
	/* No fiber, nothing in flight: the thread does something else and
	 * nobody starves. Five thresholds, and any report ends the wait. */
	block_thread(150 * GR_MSEC);
	assert_ok(gr_sleep(0));
	cr_assert_eq(reports(), 0, "reported:\n%s", rec.r[0].text);
	recording_stop();
}

static void *sleeper(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)gr_sleep(10 * GR_SEC);
}

Test(monitor, a_blocking_call_that_starves_fibers_is_reported)
{
	recording_start(30 * GR_MSEC);
	gr_fiber *f = spawn_named("starved", sleeper, NULL);
	assert_ok(gr_sleep(0));
	/* gevent's classic: a call that blocks the thread while fibers wait,
	 * here until the monitor says so (at most SPIN_CAP). */
	block_thread(SPIN_CAP);
	await_reports(2);
	const struct seen *s = &rec.r[0];
	cr_assert_str_eq(s->fiber_name, "main");
	cr_assert_eq(s->fiber_id, gr_fiber_id(gr_self()));
	cr_assert(has_function(s, "poll"), "no poll in:\n%s", s->text);
	cr_assert(has_function(s, "block_thread"), "no block_thread in:\n%s", s->text);
	recording_stop();
	assert_ok(gr_kill(f));
	assert_ok(gr_join(f, NULL, GR_FOREVER));
}

/* A fork() child has no monitor thread of its own until its first hub,
 * which starts one again: its stalls are reported, and name the child.
 * That thread starts while the child's fiber already spins: the spin lasts
 * until the child's monitor reports it, however late it starts. */
Test(monitor, a_forked_child_is_watched_too)
{
	recording_start(50 * GR_MSEC);
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* The child's first greenring call makes its hub. */
		struct gr_spawn_opts o = { .name = "child-spinner" };
		struct spin spin = { .min_ns = 200 * GR_MSEC };
		gr_fiber *f = gr_spawn_with(&o, spinner, &spin);

		if (!f || gr_join(f, NULL, GR_FOREVER) != 0)
			_exit(10);
		if (reports() < 1)
			_exit(11); /* the spin gave up after SPIN_CAP */
		if (strcmp(rec.r[0].fiber_name, "child-spinner") != 0 || rec.r[0].tid != getpid())
			_exit(12);
		_exit(0);
	}
	int status;
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %d", status);
	cr_assert_eq(reports(), 0, "the parent was reported:\n%s", rec.r[0].text);
	recording_stop();
}

Test(monitor, bad_arguments_are_refused)
{
	assert_err(gr_monitor_start(0, NULL, NULL), EINVAL);
	assert_err(gr_monitor_start(GR_MSEC - 1, NULL, NULL), EINVAL);
	assert_err(gr_monitor_start(-5, NULL, NULL), EINVAL);
	assert_ok(gr_monitor_stop()); /* not running: nothing to do */
}

/* ------------------------------------------------------------ environment */

/* The child: GREENRING_MONITOR and GREENRING_DEBUG set, one spinning
 * fiber, a thread with a hub of its own that ends, then exit() (not
 * _exit: the counters line of the thread that ends the process is an
 * atexit job). The monitor's reports go to stderr, where no callback sees
 * them: the child reads them itself, through a pipe in place of its
 * stderr, to know when to stop spinning, and passes them on. */
static struct {
	int fd;                 /* the pipe's read end (non-blocking) */
	char text[8192];
	size_t len;
} err_in;

static bool err_read(void)
{
	ssize_t r;

	while (err_in.len + 1 < sizeof(err_in.text) &&
	       (r = read(err_in.fd, err_in.text + err_in.len, sizeof(err_in.text) - 1 - err_in.len)) > 0)
		err_in.len += (size_t)r;
	err_in.text[err_in.len] = '\0';
	return true;
}

static bool err_says_has_run(struct spin *s)
{
	(void)s;
	return err_read() && strstr(err_in.text, "\"env-spinner\" has run ");
}

static void *env_thread_main(void *arg)
{
	/* Its hub prints its counters when the thread ends. */
	*(pid_t *)arg = gettid();
	return gr_hub_name() ? NULL : (void *)1;
}

__attribute__((constructor)) static void child_entry(void)
{
	if (!getenv("GRT_MONITOR_CHILD"))
		return;
	int p[2], real_stderr = dup(STDERR_FILENO);

	if (real_stderr < 0 || pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0 || dup2(p[1], STDERR_FILENO) < 0)
		_exit(9);
	err_in.fd = p[0];
	struct gr_spawn_opts o = { .name = "env-spinner" };
	struct spin spin = { .min_ns = 200 * GR_MSEC, .done = err_says_has_run };
	gr_fiber *f = gr_spawn_with(&o, spinner, &spin);
	if (!f || gr_join(f, NULL, GR_FOREVER) != 0)
		_exit(10);
	/* The line saying it switched: the monitor's next sample. */
	int64_t until = gr_now() + SPIN_CAP;
	while (err_read() && !strstr(err_in.text, "\"env-spinner\" switched after ") &&
	       gr_now() < until) {
		if (gr_wait_fd(p[0], POLLIN, until) < 0 && errno != ETIMEDOUT)
			_exit(11);
	}
	if (dup2(real_stderr, STDERR_FILENO) < 0 ||
	    write(STDERR_FILENO, err_in.text, err_in.len) != (ssize_t)err_in.len)
		_exit(12);
	pthread_t t;
	pid_t tid = 0;
	void *res = (void *)1;
	if (pthread_create(&t, NULL, env_thread_main, &tid) != 0 || pthread_join(t, &res) != 0 || res)
		_exit(13);
	printf("thread-with-a-hub=%d\n", (int)tid);
	exit(0);
}

Test(monitor, environment_starts_it_and_debug_prints_counters_at_exit)
{
	static char text[16384];
	const char *argv[] = { "/proc/self/exe", NULL };
	const char *env[] = { "GRT_MONITOR_CHILD=1", "GREENRING_MONITOR=50", "GREENRING_DEBUG=1", NULL };

	int status = grt_run(argv, env, text, sizeof(text));
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d:\n%s", status,
		  text);
	cr_assert_not_null(strstr(text, "greenring: monitor: thread "), "%s", text);
	cr_assert_not_null(strstr(text, "\"env-spinner\" has run "), "%s", text);
	cr_assert_not_null(strstr(text, " grt_spin_for+0x"), "%s", text);
	cr_assert_not_null(strstr(text, "\"env-spinner\" switched after "), "%s", text);
	/* A counters line from each hub: the thread's when it ended, the
	 * main thread's (the spinner's) at exit. */
	const char *t = strstr(text, "thread-with-a-hub=");
	cr_assert_not_null(t, "%s", text);
	char want[64];
	snprintf(want, sizeof(want), "greenring: counters tid=%d ", atoi(t + strlen("thread-with-a-hub=")));
	const char *thread_line = strstr(text, want);
	cr_assert_not_null(thread_line, "no counters line at the thread's end:\n%s", text);
	cr_assert_not_null(strstr(thread_line, " spawned=0 ended=0 "), "%s", thread_line);
	const char *counters = strstr(text, "greenring: counters tid=");
	if (counters == thread_line)
		counters = strstr(counters + 1, "greenring: counters tid=");
	cr_assert_not_null(counters, "no counters line at exit:\n%s", text);
	cr_assert_not_null(strstr(counters, " spawned=1 ended=1 "), "%s", counters);
}
