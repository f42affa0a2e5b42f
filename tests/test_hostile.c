/* test_hostile.c — what a hostile or careless caller does to the loop's
 * coarse clock, the idle fence and the stream calls, on every hub:
 *   - the loop stamps its turns on the coarse clock (hub.c, clock.c): an
 *     idle hub with reads parked on fds does not spin, a dump's ages are
 *     never negative, a wait on an fd closed behind the runtime's back
 *     ends on time even beside a wait whose checks have backed off, and
 *     when the ring has no room for the timer that bounds the wait
 *     (io_uring keeps it in the ring, hub_uring.c), which holds no
 *     thread's exit;
 *   - a hub takes the Dekker fence before a wait only when a post may
 *     count on it, and requests wake it unasked (idle.c, wait.c): no
 *     wake-up is lost when a hub sleeps on a timer alone, waits on nothing
 *     but a channel, exits while the pool reads a file for it, or when a
 *     cross-thread wait ends at its deadline or a kill as its item comes;
 *   - the readiness hubs try a stream's read or write with RWF_NOWAIT
 *     (io.c): every kind of file still waits (or fails) as read(2) and
 *     write(2) say, without blocking the thread, and loses no byte; a
 *     refusal (a terminal, a sandbox's EPERM) falls back to O_NONBLOCK and
 *     is asked again when a new file takes the number.
 *
 * A lost wake-up must show as a failure, never as a silent hang: every
 * wait here has a deadline, and the hubs whose wake-up is under test wait
 * on nothing else that could end their sleep early (no fd to audit). A
 * green call that blocks the thread is unblocked by a watchdog thread and
 * fails its test. Fibers record, the test's own context asserts.
 *
 * Written as an adversarial review; these failed then, and were fixed:
 * the audit's late first check beside a backed-off wait (fd.c), a
 * remembered refusal making a later pipe O_NONBLOCK, and EPERM from a
 * sandbox's preadv2 (io.c); and, on io_uring, a read of a FIFO that never
 * had a writer, or of a pidfd, that waited for a readiness that never comes
 * (a file refusing RWF_NOWAIT now goes the readiness hubs' way there too). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(hostile);

#define MSEC GR_MSEC

static bool readiness_hub(void)
{
	return strcmp(grt_hub(), "io_uring") != 0;
}

/* CPU time this thread has used (user + system), in ns. */
static int64_t thread_cpu_ns(void)
{
	struct rusage ru;

	cr_assert_eq(getrusage(RUSAGE_THREAD, &ru), 0);
	return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * GR_SEC +
	       ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* ------------------------------------------------------------ fibers */

/* One green read (or readv, or write) of fd, under a deadline of the
 * fiber's own (0: none), recorded. */
struct call {
	int fd;
	size_t n;
	int vectored;
	int64_t deadline;
	ssize_t r;
	int err;
	int64_t ended_at;
	unsigned char *ext;             /* a buffer of n bytes, else buf */
	unsigned char buf[256];
};

static unsigned char *buffer_of(struct call *c)
{
	return c->ext ? c->ext : c->buf;
}

static void *read_fiber(void *arg)
{
	struct call *c = arg;

	if (c->deadline)
		gr_deadline_set(c->deadline);
	unsigned char *b = buffer_of(c);

	if (c->vectored) {
		struct iovec iov[2] = { { b, c->n / 2 }, { b + c->n / 2, c->n - c->n / 2 } };
		c->r = gr_readv(c->fd, iov, 2);
	} else {
		c->r = gr_read(c->fd, b, c->n);
	}
	c->err = c->r < 0 ? errno : 0;
	c->ended_at = gr_now();
	return NULL;
}

static void *write_fiber(void *arg)
{
	struct call *c = arg;

	if (c->deadline)
		gr_deadline_set(c->deadline);
	c->r = gr_write(c->fd, buffer_of(c), c->n);
	c->err = c->r < 0 ? errno : 0;
	c->ended_at = gr_now();
	return NULL;
}

/* Counts 1 ms naps until told to stop: proof that the thread was not
 * blocked in a system call while another fiber waited. */
struct ticker {
	atomic_int stop;
	int ticks;
};

static void *tick_fiber(void *arg)
{
	struct ticker *t = arg;

	while (!atomic_load(&t->stop) && gr_sleep(MSEC) == 0)
		t->ticks++;
	return NULL;
}

/* Start the call (read_fiber, write_fiber) in a fiber and let it park;
 * assert it did. */
static gr_fiber *parked(struct call *c, void *(*fn)(void *))
{
	c->r = 1;
	c->err = 0;
	gr_fiber *f = gr_spawn(fn, c);

	cr_assert_not_null(f);
	assert_ok(gr_sleep(0));
	assert_ok(gr_sleep(2 * MSEC));
	cr_assert_eq(c->r, 1, "the %s of %zu bytes on fd %d returned %zd (%s) instead of waiting",
		     fn == read_fiber ? "read" : "write", c->n, c->fd, c->r, strerror(c->err));
	return f;
}

static gr_fiber *parked_read(struct call *c)
{
	return parked(c, read_fiber);
}

static void join_within(gr_fiber *f, int64_t ns)
{
	int r = gr_join(f, NULL, gr_now() + ns);

	cr_assert_eq(r, 0, "gr_join: %s (the fiber still waits)", strerror(-r));
}

static void pipe_of(int p[2])
{
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
}

/* ================================================== 1. the loop's clock */

static void *nothing(void *arg)
{
	return arg;
}

/* Eight fibers wait in gr_read on eight silent pipes, under a 1 s deadline
 * of their own, while the hub has a pool of free stacks to trim: the
 * thread sleeps through it (the audit of long waits and the trim wake it a
 * few times, the coarse clock never makes it spin). */
Test(hostile, an_idle_hub_with_reads_parked_on_pipes_does_not_spin)
{
	enum { N = 8, STACKS = 300 };
	gr_fiber *warm[STACKS];
	int p[N][2];
	struct call c[N];
	gr_fiber *f[N];
	struct gr_hub_counters before, after;

	for (int i = 0; i < STACKS; i++)
		cr_assert_not_null(warm[i] = gr_spawn(nothing, NULL));
	for (int i = 0; i < STACKS; i++)
		assert_ok(gr_join(warm[i], NULL, GR_FOREVER));
	int64_t t0 = gr_now();
	for (int i = 0; i < N; i++) {
		pipe_of(p[i]);
		c[i] = (struct call){ .fd = p[i][0], .n = 1, .deadline = t0 + GR_SEC, .r = 1 };
		cr_assert_not_null(f[i] = gr_spawn(read_fiber, &c[i]));
	}
	assert_ok(gr_hub_counters(&before, sizeof(before)));
	int64_t cpu0 = thread_cpu_ns();
	for (int i = 0; i < N; i++)
		join_within(f[i], 5 * GR_SEC);
	int64_t cpu = thread_cpu_ns() - cpu0, took = gr_now() - t0;
	assert_ok(gr_hub_counters(&after, sizeof(after)));
	for (int i = 0; i < N; i++) {
		cr_assert_eq(c[i].r, -1, "read %d: %zd", i, c[i].r);
		cr_assert_eq(c[i].err, ETIMEDOUT, "read %d: %s", i, strerror(c[i].err));
		close(p[i][0]);
		close(p[i][1]);
	}
	cr_assert_geq(took, GR_SEC - 5 * MSEC, "the deadline came early: %lld ms",
		      (long long)(took / MSEC));
	/* Idle, the thread needs a few ms of CPU; a spinning loop takes it all. */
	cr_assert_lt(cpu, 150 * MSEC, "the idle hub used %lld ms of CPU in %lld ms (%llu turns)",
		     (long long)(cpu / MSEC), (long long)(took / MSEC),
		     (unsigned long long)(after.turns - before.turns));
	cr_assert_lt(after.turns - before.turns, 200, "%llu loop turns while idle",
		     (unsigned long long)(after.turns - before.turns));
}

/* The value of `key=` in a dump line, or NULL. */
static const char *field(const char *line, const char *key)
{
	size_t n = strlen(key);

	for (const char *s = strstr(line, key); s; s = strstr(s + 1, key)) {
		if ((s == line || s[-1] == ' ') && s[n] == '=')
			return s + n + 1;
	}
	return NULL;
}

/* A dump taken right after a fiber parks (and right after it was
 * spawned) says how long it has waited and how old it is: both stamps come
 * from the coarse clock, read when the turn began, and the dump's "now"
 * from the precise one; neither age may be negative. */
Test(hostile, a_dump_right_after_a_park_shows_no_negative_age)
{
	for (int round = 0; round < 30; round++) {
		int p[2];
		struct call c = { .n = 1 };

		pipe_of(p);
		c.fd = p[0];
		gr_fiber *f = gr_spawn(read_fiber, &c);
		cr_assert_not_null(f);
		assert_ok(gr_sleep(0));
		int mfd = memfd_create("dump", MFD_CLOEXEC);
		cr_assert_geq(mfd, 0);
		assert_ok(gr_dump(mfd, 0, 0));
		off_t size = lseek(mfd, 0, SEEK_END);
		cr_assert_gt(size, 0);
		char *text = calloc(1, (size_t)size + 1);
		cr_assert_eq(pread(mfd, text, (size_t)size, 0), size);
		int seen = 0;
		for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
			const char *keys[] = { "waited_ms", "age_ms" };

			for (int k = 0; k < 2; k++) {
				const char *v = field(line, keys[k]);

				if (!v)
					continue;
				seen++;
				cr_assert_neq(v[0], '-', "round %d: %s=%.12s in: %s", round, keys[k], v,
					      line);
			}
		}
		cr_assert_geq(seen, 3, "round %d: no ages in the dump", round);
		free(text);
		close(mfd);
		cr_assert_eq(write(p[1], "x", 1), 1);
		join_within(f, 5 * GR_SEC);
		cr_assert_eq(c.r, 1);
		close(p[0]);
		close(p[1]);
	}
}

/* A fiber's wait on an fd closed behind the runtime's back (plain close())
 * ends with EBADF at the audit, "within two epochs" (fd.c: 100 ms each),
 * even when another fiber of the hub has waited on another fd for long,
 * so long that the audit has backed off its checks of that one. */
Test(hostile, a_wait_on_an_fd_closed_behind_the_back_ends_on_time_beside_a_long_wait)
{
	int quiet[2], victim[2];
	struct call longer = { .n = 1 }, c = { .n = 1 };

	pipe_of(quiet);
	pipe_of(victim);
	longer.fd = quiet[0];
	gr_fiber *lf = parked_read(&longer);
	/* Long enough for the audit to check the quiet read after 1, 2, 4
	 * and 8 epochs: its next check is 16 epochs (1.6 s) away. */
	assert_ok(gr_sleep(1700 * MSEC));
	c.fd = victim[0];
	gr_fiber *f = parked_read(&c);
	int64_t t0 = gr_now();
	cr_assert_eq(close(victim[0]), 0); /* behind the runtime's back */
	join_within(f, 5 * GR_SEC);
	int64_t took = c.ended_at - t0;
	cr_assert_eq(write(quiet[1], "x", 1), 1);
	join_within(lf, 5 * GR_SEC);
	close(victim[1]);
	close(quiet[0]);
	close(quiet[1]);
	cr_assert_eq(c.r, -1);
	cr_assert_eq(c.err, EBADF, "%s", strerror(c.err));
	cr_assert_lt(took, 400 * MSEC,
		     "the wait on the closed fd ended %lld ms after the close, not within the two "
		     "epochs fd.c promises",
		     (long long)(took / MSEC));
}

/* The same audit when the wait that must be bounded by it finds the
 * submission queue full. On io_uring the bound is a timer the ring keeps
 * across waits (hub_uring.c), armed with an SQE of its own; with no room
 * for it, that wait must be timed the usual way, not left untimed. A hub
 * with a two-entry ring: the readers' reads are in the kernel, their fds
 * are closed behind the runtime's back, and the hub's last call before it
 * sleeps is a read with a deadline, an operation and its linked timeout,
 * which fill the queue. Nothing completes before that deadline (5 s) but
 * what the audit ends. Other hubs ignore the ring's size and run the same
 * scenario. */
enum { TINY_RING_READERS = 4 };

struct tiny_ring {
	struct call c[TINY_RING_READERS];
	int victim[TINY_RING_READERS][2];
	int quiet[2];
	atomic_int left;
	int64_t closed_at;
	ssize_t quiet_r;
	int quiet_err;
	int joined;
};

static struct tiny_ring *tiny_ring_of_reader;

/* A victim's read; the last to end frees the thread's main read. */
static void *tiny_ring_reader(void *arg)
{
	struct tiny_ring *t = tiny_ring_of_reader;

	read_fiber(arg);
	if (atomic_fetch_sub(&t->left, 1) == 1 && write(t->quiet[1], "x", 1) != 1)
		grt_fail("write to the quiet pipe: %s", strerror(errno));
	return NULL;
}

static void tiny_ring_run(void *arg)
{
	struct tiny_ring *t = arg;
	gr_fiber *f[TINY_RING_READERS];
	unsigned char ch;

	tiny_ring_of_reader = t;
	for (int i = 0; i < TINY_RING_READERS; i++) {
		t->c[i] = (struct call){ .fd = t->victim[i][0], .n = 1, .r = 1 };
		f[i] = gr_spawn(tiny_ring_reader, &t->c[i]);
		if (!f[i]) {
			grt_fail("gr_spawn: %s", strerror(errno));
			return;
		}
	}
	/* The readers park; the loop hands their reads to the kernel in the
	 * wait that ends this sleep (a yield would not need the loop). */
	if (gr_sleep(MSEC) != 0)
		grt_fail("gr_sleep: %s", strerror(errno));
	t->closed_at = gr_now();
	for (int i = 0; i < TINY_RING_READERS; i++)
		close(t->victim[i][0]);
	gr_deadline_set(gr_now() + 5 * GR_SEC);
	t->quiet_r = gr_read(t->quiet[0], &ch, 1);
	t->quiet_err = t->quiet_r < 0 ? errno : 0;
	gr_deadline_set(GR_FOREVER);
	t->joined = 1;
	for (int i = 0; i < TINY_RING_READERS; i++)
		t->joined &= gr_join(f[i], NULL, gr_now() + 5 * GR_SEC) == 0;
}

Test(hostile, a_wait_on_an_fd_closed_behind_the_back_ends_on_time_when_the_ring_is_full)
{
	static struct tiny_ring t;
	struct grt_thread th;

	atomic_store(&t.left, TINY_RING_READERS);
	for (int i = 0; i < TINY_RING_READERS; i++)
		pipe_of(t.victim[i]);
	pipe_of(t.quiet);
	/* Read when a hub is made: the new thread's hub gets two entries. */
	cr_assert_eq(setenv("GREENRING_URING_ENTRIES", "2", 1), 0);
	grt_thread_start(&th, 1, tiny_ring_run, &t);
	grt_thread_join(&th);
	unsetenv("GREENRING_URING_ENTRIES");
	grt_assert_no_failures();
	cr_assert(t.joined, "a reader was still parked 5 s after its fd was closed");
	for (int i = 0; i < TINY_RING_READERS; i++) {
		cr_assert_eq(t.c[i].r, -1, "reader %d: %zd", i, t.c[i].r);
		cr_assert_eq(t.c[i].err, EBADF, "reader %d: %s", i, strerror(t.c[i].err));
		int64_t took = t.c[i].ended_at - t.closed_at;
		cr_assert_lt(took, 1500 * MSEC,
			     "reader %d ended %lld ms after its fd was closed, not at the audit "
			     "(within two epochs of 100 ms)",
			     i, (long long)(took / MSEC));
		close(t.victim[i][1]);
	}
	cr_assert_eq(t.quiet_r, 1, "the main read: %zd (%s)", t.quiet_r, strerror(t.quiet_err));
	close(t.quiet[0]);
	close(t.quiet[1]);
}

/* A thread whose hub has waited with an fd busy (so the ring holds the
 * audit's timer, on io_uring) returns with a reader still parked: its exit
 * discards the reader and is not held until any timer fires. */
struct timer_at_exit {
	int p[2];
	struct call c;
	int64_t returned_at;
};

static void timer_at_exit_run(void *arg)
{
	struct timer_at_exit *t = arg;

	t->c = (struct call){ .fd = t->p[0], .n = 1, .r = 1 };
	if (!gr_spawn(read_fiber, &t->c))
		grt_fail("gr_spawn: %s", strerror(errno));
	/* Waits bounded by the audit, which the ring's timer then ends: the
	 * first at about 100 ms, the next an epoch or more later, armed at
	 * the exit. */
	if (gr_sleep(110 * MSEC) != 0)
		grt_fail("gr_sleep: %s", strerror(errno));
	if (t->c.r != 1)
		grt_fail("the read returned %zd before the thread's exit", t->c.r);
	t->returned_at = gr_now();
}

Test(hostile, a_thread_whose_ring_holds_the_audits_timer_exits_at_once)
{
	static struct timer_at_exit t;
	struct grt_thread th;

	pipe_of(t.p);
	grt_thread_start(&th, 1, timer_at_exit_run, &t);
	grt_thread_join(&th);
	int64_t took = gr_now() - t.returned_at;
	grt_assert_no_failures();
	cr_assert_gt(t.returned_at, 0);
	cr_assert_lt(took, 50 * MSEC, "the thread took %lld ms to exit after its function returned",
		     (long long)(took / MSEC));
	close(t.p[0]);
	close(t.p[1]);
}

/* ================================================== 2. wake-ups */

/* A hub that used fd (a read that parked on it: the fd is recorded as
 * this hub's, fd_remote.c) and then sleeps on a timer alone: no fd to
 * audit, no fiber waiting on another thread, no pool job. Only a
 * request's own wake-up can make it answer before the sleep ends. */
struct sleepy {
	int fd, feed;
	int64_t until;
	atomic_int ready;
	int slept;
	int used;
};

static void *read_one(void *arg)
{
	char ch;

	return gr_read(*(int *)arg, &ch, 1) == 1 ? arg : NULL;
}

static void sleepy_run(void *arg)
{
	struct sleepy *s = arg;
	void *res = NULL;

	gr_fiber *f = gr_spawn(read_one, &s->fd);
	gr_sleep(2 * MSEC);
	if (f && write(s->feed, "x", 1) == 1 && gr_join(f, &res, GR_FOREVER) == 0 && res)
		s->used = 1;
	s->until = gr_now() + 1500 * MSEC;
	atomic_store(&s->ready, 1);
	s->slept = gr_sleep_until(s->until);
}

static void close_from_plain(void *arg)
{
	int *fd = arg;

	fd[1] = gr_close(fd[0]) == 0 ? 0 : errno;
}

static void close_on_a_sleeping_hub(int from_plain)
{
	struct sleepy s = { 0 };
	struct grt_thread t;
	int p[2];

	pipe_of(p);
	s.fd = p[0];
	s.feed = p[1];
	grt_thread_start(&t, 1, sleepy_run, &s);
	grt_await_flag(&s.ready, "the other hub to use the fd and sleep");
	cr_assert_eq(s.used, 1, "the other hub's read failed");
	assert_ok(gr_sleep(20 * MSEC)); /* it is asleep now */
	int64_t t0 = gr_now();
	if (from_plain) {
		struct grt_thread closer;
		int args[2] = { p[0], -1 };

		grt_thread_start(&closer, 0, close_from_plain, args);
		grt_thread_join(&closer);
		cr_assert_eq(args[1], 0, "gr_close: %s", strerror(args[1]));
	} else {
		cr_assert_eq(gr_close(p[0]), 0, "gr_close: %s", strerror(errno));
	}
	int64_t done = gr_now();
	cr_assert_eq(fcntl(p[0], F_GETFD), -1, "the fd is still open");
	cr_assert_lt(done, s.until - 500 * MSEC,
		     "gr_close took %lld ms: the sleeping hub answered only when its sleep ended",
		     (long long)((done - t0) / MSEC));
	grt_thread_join(&t);
	cr_assert_eq(s.slept, 0, "the other hub's sleep: %s", strerror(-s.slept));
	close(p[1]);
}

/* Readers on a two-entry ring, each under a deadline of its own, sooner
 * and later mixed (so the ring's timer for the audit is replaced by sooner
 * bounds and armed again for later ones, with the SQ mostly full of linked
 * timeouts), and some with none that data ends: each timed one ends at
 * its deadline, never early, at most 60 ms late; each fed one reads. */
#define TINY_TIMED_READERS 48

struct tiny_timed {
	int p[TINY_TIMED_READERS][2];
	struct call c[TINY_TIMED_READERS];
	int joined;
};

static void tiny_timed_run(void *arg)
{
	struct tiny_timed *t = arg;
	gr_fiber *f[TINY_TIMED_READERS];
	int64_t now = gr_now();

	for (int i = 0; i < TINY_TIMED_READERS; i++) {
		int64_t d = i % 4 == 3 ? 0 : now + (int64_t)((i * 37) % 23 + 5) * 10 * MSEC;

		t->c[i] = (struct call){ .fd = t->p[i][0], .n = 1, .deadline = d };
		if (!(f[i] = gr_spawn(read_fiber, &t->c[i])))
			grt_fail("gr_spawn: %s", strerror(errno));
	}
	if (gr_sleep(300 * MSEC) != 0)
		grt_fail("gr_sleep: %s", strerror(errno));
	for (int i = 3; i < TINY_TIMED_READERS; i += 4)
		if (write(t->p[i][1], "x", 1) != 1)
			grt_fail("write: %s", strerror(errno));
	t->joined = 1;
	for (int i = 0; i < TINY_TIMED_READERS; i++)
		t->joined &= gr_join(f[i], NULL, gr_now() + 5 * GR_SEC) == 0;
}

Test(hostile, readers_with_deadlines_sooner_and_later_on_a_two_entry_ring_end_on_time)
{
	static struct tiny_timed t;
	struct grt_thread th;

	for (int i = 0; i < TINY_TIMED_READERS; i++)
		pipe_of(t.p[i]);
	/* Read when a hub is made: the new thread's hub gets two entries. */
	cr_assert_eq(setenv("GREENRING_URING_ENTRIES", "2", 1), 0);
	grt_thread_start(&th, 1, tiny_timed_run, &t);
	grt_thread_join(&th);
	unsetenv("GREENRING_URING_ENTRIES");
	grt_assert_no_failures();
	cr_assert(t.joined, "a reader was still parked 5 s after the others");
	for (int i = 0; i < TINY_TIMED_READERS; i++) {
		struct call *c = &t.c[i];

		if (i % 4 == 3) {
			cr_assert_eq(c->r, 1, "fed reader %d: %zd (%s)", i, c->r, strerror(c->err));
		} else {
			int64_t late = c->ended_at - c->deadline;

			cr_assert_eq(c->err, ETIMEDOUT, "reader %d: %zd (%s)", i, c->r, strerror(c->err));
			cr_assert(late >= 0 && late < 60 * MSEC, "reader %d ended %lld us after its deadline",
				  i, (long long)(late / 1000));
		}
		close(t.p[i][0]);
		close(t.p[i][1]);
	}
}

/* gr_hub_use switching the thread's backend while the io_uring ring still
 * holds the audit's timer (a timed read has just ended), back and forth:
 * the ring goes with its timer pending, and each new hub serves. */
Test(hostile, switching_backends_while_the_rings_timer_is_pending)
{
	const char *me = grt_hub(), *other = strcmp(me, "epoll") == 0 ? "io_uring" : "epoll";
	int p[2];

	for (int round = 0; round < 4; round++) {
		pipe_of(p);
		struct call c = { .fd = p[0], .n = 1, .deadline = gr_now() + 150 * MSEC };
		gr_fiber *f = gr_spawn(read_fiber, &c);

		cr_assert_eq(gr_join(f, NULL, gr_now() + 2 * GR_SEC), 0);
		cr_assert_eq(c.err, ETIMEDOUT, "round %d: %zd (%s)", round, c.r, strerror(c.err));
		cr_assert_eq(gr_close(p[0]), 0);
		cr_assert_eq(close(p[1]), 0);
		int r = gr_hub_use(round % 2 == 0 ? other : me);
		if (r == -ENOTSUP)
			cr_skip_test("%s cannot run here: %s", other, gr_hub_why());
		cr_assert_eq(r, 0, "gr_hub_use: %s", strerror(-r));
	}
	cr_assert_str_eq(gr_hub_name(), me);
}

Test(hostile, a_plain_threads_close_wakes_a_hub_asleep_on_a_timer)
{
	close_on_a_sleeping_hub(1);
}

Test(hostile, a_fibers_close_wakes_another_hub_asleep_on_a_timer)
{
	close_on_a_sleeping_hub(0);
}

/* A receiver on a hub takes items from a sender on a plain thread: with
 * deadlines so short that they often end as the item is handed over
 * (xpark_end_early racing the waker, wait.c), killed as it comes, or with
 * no deadline at all, its hub then waiting on nothing but the channel.
 * Every item arrives once, in order. A delivery lost on the way (a post
 * to a hub asleep without the fence) leaves the receiver parked for ever
 * when nothing else is timed (the deadlines' timers would mask it): the
 * test gives up after 10 s. */
#define ITEMS 3000

enum { DEADLINES, KILLS, FOREVER };

struct race {
	gr_chan chan;
	int mode;                       /* DEADLINES, KILLS, or FOREVER: no timer at all */
	atomic_int done;
	int received, timeouts, cancels, out_of_order;
	int bad;                        /* an unexpected result */
	atomic_int sent;
};

struct receiver {
	struct race *rc;
	int64_t deadline;
	int r;
	void *item;
};

static void *recv_fiber(void *arg)
{
	struct receiver *rv = arg;

	rv->r = gr_chan_recv(&rv->rc->chan, &rv->item, rv->deadline);
	return NULL;
}

static void note(struct race *rc, int r, void *item)
{
	if (r == 0) {
		if ((intptr_t)item != rc->received + 1)
			rc->out_of_order++;
		rc->received++;
	} else if (r == -ETIMEDOUT) {
		rc->timeouts++;
	} else if (r == -ECANCELED) {
		rc->cancels++;
	} else {
		rc->bad = r;
	}
}

static void receiver_run(void *arg)
{
	struct race *rc = arg;
	uint64_t seed = 0x5eed;

	while (rc->received < ITEMS && !rc->bad) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		int64_t wait = (int64_t)((seed >> 33) % 200) * 1000; /* 0 to 200 us */

		if (rc->mode != KILLS) {
			void *item = NULL;
			int r = gr_chan_recv(&rc->chan, &item,
					     rc->mode == FOREVER ? GR_FOREVER : gr_now() + wait);

			note(rc, r, item);
			continue;
		}
		struct receiver rv = { .rc = rc, .deadline = GR_FOREVER };
		gr_fiber *f = gr_spawn(recv_fiber, &rv);
		if (!f) {
			rc->bad = -ENOMEM;
			break;
		}
		gr_sleep(wait);
		gr_kill(f);
		gr_join(f, NULL, GR_FOREVER);
		note(rc, rv.r, rv.item);
	}
	atomic_store(&rc->done, 1);
}

static void sender_run(void *arg)
{
	struct race *rc = arg;
	uint64_t seed = 0xfeed;

	for (intptr_t i = 1; i <= ITEMS; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		/* 0 to 100 us apart (300 with no deadline): often right at a
		 * receiver's deadline, or as its hub goes to sleep. */
		unsigned gap_us = rc->mode == FOREVER ? 300 : 100;
		int64_t until = gr_now() + (int64_t)((seed >> 33) % gap_us) * 1000;
		while (gr_now() < until)
			;
		if (gr_chan_send(&rc->chan, (void *)i, gr_now() + 10 * GR_SEC) != 0)
			return;
		atomic_store(&rc->sent, (int)i);
	}
}

static void race_items(size_t capacity, int mode)
{
	struct race rc = { .mode = mode };
	struct grt_thread recv_t, send_t;

	assert_ok(gr_chan_init(&rc.chan, capacity));
	grt_thread_start(&recv_t, 1, receiver_run, &rc);
	grt_thread_start(&send_t, 0, sender_run, &rc);
	int64_t until = gr_now() + 10 * GR_SEC;
	while (!atomic_load(&rc.done) && gr_now() < until)
		assert_ok(gr_sleep(MSEC));
	cr_assert(atomic_load(&rc.done),
		  "the receiver still waits after 10 s: %d received, %d sent (a wake-up lost?)",
		  rc.received, atomic_load(&rc.sent));
	grt_thread_join(&recv_t);
	grt_thread_join(&send_t);
	cr_assert_eq(rc.bad, 0, "gr_chan_recv: %s", strerror(-rc.bad));
	cr_assert_eq(rc.received, ITEMS, "%d items of %d", rc.received, ITEMS);
	cr_assert_eq(rc.out_of_order, 0, "%d items out of order", rc.out_of_order);
	cr_assert_eq(gr_chan_len(&rc.chan), 0);
	assert_ok(gr_chan_destroy(&rc.chan));
	cr_log_info("mode %d capacity %zu: %d timeouts, %d cancels", mode, capacity, rc.timeouts,
		    rc.cancels);
}

Test(hostile, items_handed_over_as_a_receivers_deadline_passes_all_arrive)
{
	race_items(0, DEADLINES);
	race_items(GR_CHAN_UNBOUNDED, DEADLINES);
}

Test(hostile, items_handed_over_as_a_receiver_is_killed_all_arrive)
{
	race_items(0, KILLS);
}

/* The receiver's hub waits on nothing but the channel: each item's post
 * is all that can wake it, and the sender's pauses (up to 300 us) let it
 * go to sleep, spin or be running when the item comes. */
Test(hostile, items_sent_to_a_hub_that_waits_on_nothing_else_all_arrive)
{
	race_items(0, FOREVER);
	race_items(GR_CHAN_UNBOUNDED, FOREVER);
}

/* ================================================== 3. RWF_NOWAIT */

/* If a green call blocks the thread in the system call (a file that takes
 * RWF_NOWAIT and waits all the same), nothing the test does next can
 * run: a watchdog thread then does what unblocks it (feeds the file) and
 * the test fails, saying so, instead of hanging. */
struct watchdog {
	pthread_t t;
	int64_t at;
	void (*unblock)(void *arg);
	void *arg;
	atomic_int stop, fired;
};

static void *watchdog_main(void *arg)
{
	struct watchdog *w = arg;

	while (!atomic_load(&w->stop) && gr_now() < w->at)
		usleep(1000);
	if (!atomic_load(&w->stop)) {
		atomic_store(&w->fired, 1);
		w->unblock(w->arg);
	}
	return NULL;
}

static void watchdog_start(struct watchdog *w, void (*unblock)(void *), void *arg)
{
	*w = (struct watchdog){ .at = gr_now() + 3 * GR_SEC, .unblock = unblock, .arg = arg };
	cr_assert_eq(pthread_create(&w->t, NULL, watchdog_main, w), 0);
}

static void watchdog_stop(struct watchdog *w)
{
	atomic_store(&w->stop, 1);
	cr_assert_eq(pthread_join(w->t, NULL), 0);
	cr_assert_eq(atomic_load(&w->fired), 0,
		     "a green call blocked the thread until the watchdog fed its file");
}

/* Start a read that must park, under a watchdog feeding it with unblock(arg). */
static gr_fiber *guarded_read(struct call *c, struct watchdog *w, void (*unblock)(void *),
			      void *arg)
{
	watchdog_start(w, unblock, arg);
	gr_fiber *f = parked_read(c);
	return f;
}

static void write_byte(void *arg)
{
	ssize_t r = write(*(int *)arg, "x", 1);
	(void)r;
}

static void add_one(void *arg)
{
	uint64_t v = 1;
	ssize_t r = write(*(int *)arg, &v, sizeof(v));
	(void)r;
}

static uint64_t eventfd_value(int efd)
{
	uint64_t v = 0;

	cr_assert_eq(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v));
	return v;
}

Test(hostile, an_eventfd_read_waits_for_a_write)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	struct watchdog w;
	struct call c = { .fd = efd, .n = 8, .deadline = gr_now() + 10 * GR_SEC };

	cr_assert_geq(efd, 0);
	gr_fiber *f = guarded_read(&c, &w, add_one, &efd);
	uint64_t five = 5;
	cr_assert_eq(gr_write(efd, &five, 8), 8, "gr_write: %s", strerror(errno));
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 8, "%zd (%s)", c.r, strerror(c.err));
	uint64_t got;
	memcpy(&got, c.buf, 8);
	cr_assert_eq(got, 5);
	/* A read under a deadline that passes: ETIMEDOUT, the counter as it was. */
	c = (struct call){ .fd = efd, .n = 8, .deadline = gr_now() + 30 * MSEC };
	read_fiber(&c);
	cr_assert_eq(c.err, ETIMEDOUT, "%zd (%s)", c.r, strerror(c.err));
	gr_deadline_set(GR_FOREVER);
	/* Fewer than 8 bytes: EINVAL at once, as read(2). */
	c = (struct call){ .fd = efd, .n = 4, .deadline = gr_now() + 2 * GR_SEC };
	read_fiber(&c);
	cr_assert_eq(c.err, EINVAL, "%zd (%s)", c.r, strerror(c.err));
	gr_deadline_set(GR_FOREVER);
	close(efd);
}

Test(hostile, a_semaphore_eventfd_hands_out_ones_then_waits)
{
	int efd = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
	struct watchdog w;
	uint64_t three = 3, v;

	cr_assert_geq(efd, 0);
	cr_assert_eq(gr_write(efd, &three, 8), 8);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(gr_read(efd, &v, 8), 8, "read %d: %s", i, strerror(errno));
		cr_assert_eq(v, 1, "read %d: %llu", i, (unsigned long long)v);
	}
	struct call c = { .fd = efd, .n = 8, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, add_one, &efd);
	uint64_t two = 2;
	cr_assert_eq(gr_write(efd, &two, 8), 8);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 8, "%zd (%s)", c.r, strerror(c.err));
	memcpy(&v, c.buf, 8);
	cr_assert_eq(v, 1);
	cr_assert_eq(eventfd_value(efd), 1, "one of the two left");
	close(efd);
}

static void drain_eventfd(void *arg)
{
	uint64_t v;
	ssize_t r = read(*(int *)arg, &v, sizeof(v));
	(void)r;
}

/* An eventfd one short of its maximum takes no more: a green write of 1
 * waits until a read empties it, and one under a passing deadline fails
 * with ETIMEDOUT and adds nothing. */
Test(hostile, a_write_to_a_full_eventfd_waits_for_room)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	uint64_t max = 0xfffffffffffffffeull, one = 1;
	struct watchdog w;

	cr_assert_geq(efd, 0);
	cr_assert_eq(write(efd, &max, 8), 8);
	struct call c = { .fd = efd, .n = 8, .deadline = gr_now() + 30 * MSEC };
	memcpy(c.buf, &one, 8);
	watchdog_start(&w, drain_eventfd, &efd);
	write_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(c.err, ETIMEDOUT, "%zd (%s)", c.r, strerror(c.err));
	c = (struct call){ .fd = efd, .n = 8, .deadline = gr_now() + 10 * GR_SEC };
	memcpy(c.buf, &one, 8);
	gr_fiber *f = parked(&c, write_fiber);
	cr_assert_eq(eventfd_value(efd), max, "the timed-out write added to the counter");
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 8, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(eventfd_value(efd), 1);
	close(efd);
}

static void arm_soon(void *arg)
{
	struct itimerspec its = { .it_value = { .tv_nsec = 1000 } };

	timerfd_settime(*(int *)arg, 0, &its, NULL);
}

Test(hostile, a_timerfd_read_waits_for_its_expiry_without_blocking_the_thread)
{
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct watchdog w;
	struct ticker tk = { 0 };

	cr_assert_geq(tfd, 0);
	/* Unarmed: a read waits; its deadline ends it. */
	struct call c = { .fd = tfd, .n = 8, .deadline = gr_now() + 30 * MSEC };
	watchdog_start(&w, arm_soon, &tfd);
	read_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(c.err, ETIMEDOUT, "%zd (%s)", c.r, strerror(c.err));
	watchdog_stop(&w);
	/* Armed for 60 ms: the read waits that long while others run. */
	gr_fiber *t = gr_spawn(tick_fiber, &tk);
	struct itimerspec its = { .it_value = { .tv_nsec = 60 * MSEC } };
	int64_t t0 = gr_now();
	cr_assert_eq(timerfd_settime(tfd, 0, &its, NULL), 0);
	watchdog_start(&w, arm_soon, &tfd);
	c = (struct call){ .fd = tfd, .n = 8, .deadline = gr_now() + 5 * GR_SEC };
	read_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	watchdog_stop(&w);
	int64_t took = gr_now() - t0;
	atomic_store(&tk.stop, 1);
	join_within(t, GR_SEC);
	cr_assert_eq(c.r, 8, "%zd (%s)", c.r, strerror(c.err));
	uint64_t expirations;
	memcpy(&expirations, c.buf, 8);
	cr_assert_geq(expirations, 1);
	cr_assert_geq(took, 55 * MSEC, "the read returned after %lld ms", (long long)(took / MSEC));
	cr_assert_geq(tk.ticks, 10, "the thread was blocked: %d ticks in %lld ms", tk.ticks,
		      (long long)(took / MSEC));
	close(tfd);
}

static pthread_t test_thread;

static void send_usr2(void *arg)
{
	(void)arg;
	pthread_kill(test_thread, SIGUSR2);
}

Test(hostile, a_signalfd_read_waits_for_the_signal)
{
	sigset_t set, old;
	struct watchdog w;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	cr_assert_eq(pthread_sigmask(SIG_BLOCK, &set, &old), 0);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC);
	cr_assert_geq(sfd, 0);
	test_thread = pthread_self();
	struct call c = { .fd = sfd, .n = sizeof(struct signalfd_siginfo),
			  .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, send_usr2, NULL);
	cr_assert_eq(pthread_kill(pthread_self(), SIGUSR2), 0);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, (ssize_t)sizeof(struct signalfd_siginfo), "%zd (%s)", c.r, strerror(c.err));
	struct signalfd_siginfo si;
	memcpy(&si, c.buf, sizeof(si));
	cr_assert_eq(si.ssi_signo, SIGUSR2);
	/* A buffer too small for one record: EINVAL at once, as read(2). */
	c = (struct call){ .fd = sfd, .n = 100, .deadline = gr_now() + 2 * GR_SEC };
	read_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(c.err, EINVAL, "%zd (%s)", c.r, strerror(c.err));
	close(sfd);
	cr_assert_eq(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
}

struct tmpdir {
	char path[64];
};

static void tmpdir_make(struct tmpdir *d)
{
	strcpy(d->path, "/tmp/grt-s18-XXXXXX");
	cr_assert_not_null(mkdtemp(d->path));
}

static void create_in(void *arg)
{
	char name[96];

	snprintf(name, sizeof(name), "%s/made", (const char *)arg);
	int fd = open(name, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
}

Test(hostile, an_inotify_read_waits_for_an_event)
{
	struct tmpdir d;
	struct watchdog w;
	char name[96];

	tmpdir_make(&d);
	int ifd = inotify_init1(IN_CLOEXEC);
	cr_assert_geq(ifd, 0);
	cr_assert_geq(inotify_add_watch(ifd, d.path, IN_CREATE), 0);
	struct call c = { .fd = ifd, .n = sizeof(c.buf), .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, create_in, d.path);
	create_in(d.path);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_geq(c.r, (ssize_t)sizeof(struct inotify_event), "%zd (%s)", c.r, strerror(c.err));
	struct inotify_event ev;
	memcpy(&ev, c.buf, sizeof(ev));
	cr_assert(ev.mask & IN_CREATE);
	close(ifd);
	snprintf(name, sizeof(name), "%s/made", d.path);
	cr_assert_eq(unlink(name), 0);
	cr_assert_eq(rmdir(d.path), 0);
}

static int set_blocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

static void fifo_make(struct tmpdir *d, char *path, size_t len)
{
	tmpdir_make(d);
	snprintf(path, len, "%s/fifo", d->path);
	cr_assert_eq(mkfifo(path, 0600), 0);
}

static void fifo_remove(struct tmpdir *d, const char *path)
{
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(rmdir(d->path), 0);
}

/* A FIFO no writer has opened yet: read(2) of it is end of file at once
 * (its open did not wait: O_NONBLOCK, cleared since), not a wait for a
 * writer. */
Test(hostile, a_fifo_read_before_any_writer_is_end_of_file_at_once)
{
	struct tmpdir d;
	char path[96], b;

	fifo_make(&d, path, sizeof(path));
	int rfd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	cr_assert_geq(rfd, 0);
	cr_assert_eq(set_blocking(rfd), 0);
	cr_assert_eq(read(rfd, &b, 1), 0, "read(2) itself");
	struct call c = { .fd = rfd, .n = 16, .deadline = gr_now() + GR_SEC };
	read_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(gr_close(rfd), 0);
	fifo_remove(&d, path);
	cr_assert_eq(c.r, 0, "gr_read: %zd (%s), where read(2) says 0", c.r, strerror(c.err));
}

/* A FIFO with a writer: a read waits for its data, then, the writer
 * gone, is end of file; opened for both, a read waits for another fd's
 * data. */
Test(hostile, a_fifo_read_waits_for_its_writer_then_sees_end_of_file)
{
	struct tmpdir d;
	struct watchdog w;
	char path[96];

	fifo_make(&d, path, sizeof(path));
	int rfd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	cr_assert_geq(rfd, 0);
	cr_assert_eq(set_blocking(rfd), 0);
	int wfd = open(path, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(wfd, 0);
	struct call c = { .fd = rfd, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, write_byte, &wfd);
	cr_assert_eq(gr_write(wfd, "ab", 2), 2, "gr_write: %s", strerror(errno));
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 2, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(memcmp(c.buf, "ab", 2), 0);

	cr_assert_eq(gr_close(wfd), 0);
	c = (struct call){ .fd = rfd, .n = 16, .deadline = gr_now() + 2 * GR_SEC };
	read_fiber(&c);
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(c.r, 0, "the writer gone: %zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_close(rfd), 0);

	int rw = open(path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(rw, 0);
	wfd = open(path, O_WRONLY | O_CLOEXEC);
	cr_assert_geq(wfd, 0);
	c = (struct call){ .fd = rw, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	f = guarded_read(&c, &w, write_byte, &wfd);
	cr_assert_eq(gr_write(wfd, "cd", 2), 2);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 2, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_close(wfd), 0);
	cr_assert_eq(gr_close(rw), 0);
	fifo_remove(&d, path);
}

/* Files that never make a read or write wait answer at once, as read(2)
 * and write(2) do. The fiber's deadline turns a wrongful wait into
 * ETIMEDOUT. */
Test(hostile, files_that_never_wait_answer_at_once)
{
	unsigned char buf[64];
	int rnd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	int zero = open("/dev/zero", O_RDWR | O_CLOEXEC);
	int full = open("/dev/full", O_WRONLY | O_CLOEXEC);

	cr_assert(rnd >= 0 && nul >= 0 && zero >= 0 && full >= 0);
	gr_deadline_set(gr_now() + 2 * GR_SEC);
	cr_assert_eq(gr_read(rnd, buf, sizeof(buf)), (ssize_t)sizeof(buf), "urandom: %s",
		     strerror(errno));
	cr_assert_eq(gr_read(nul, buf, sizeof(buf)), 0, "/dev/null: %s", strerror(errno));
	cr_assert_eq(gr_write(nul, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	memset(buf, 0xff, sizeof(buf));
	struct iovec iov[2] = { { buf, 10 }, { buf + 10, 20 } };
	cr_assert_eq(gr_readv(zero, iov, 2), 30, "/dev/zero: %s", strerror(errno));
	for (int i = 0; i < 30; i++)
		cr_assert_eq(buf[i], 0);
	cr_assert_eq(buf[30], 0xff);
	cr_assert_eq(gr_write(zero, buf, 16), 16);
	cr_assert_eq(gr_write(full, buf, 16), -1);
	cr_assert_eq(errno, ENOSPC, "/dev/full: %s", strerror(errno));
	cr_assert_eq(gr_writev(full, iov, 2), -1);
	cr_assert_eq(errno, ENOSPC, "/dev/full: %s", strerror(errno));
	gr_deadline_set(GR_FOREVER);
	close(rnd);
	close(nul);
	close(zero);
	close(full);
}

/* A pidfd has no read: read(2) of it is EINVAL at once, not a wait for
 * the process to end. */
Test(hostile, a_pidfd_read_fails_at_once_as_read_does)
{
	int pfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	char buf[8];

	if (pfd < 0)
		cr_skip_test("no pidfd_open here: %s", strerror(errno));
	cr_assert_eq(read(pfd, buf, 8), -1);
	cr_assert_eq(errno, EINVAL);
	gr_deadline_set(gr_now() + GR_SEC);
	ssize_t r = gr_read(pfd, buf, 8);
	int err = errno;
	gr_deadline_set(GR_FOREVER);
	cr_assert_eq(gr_close(pfd), 0);
	cr_assert_eq(r, -1);
	cr_assert_eq(err, EINVAL, "gr_read of a pidfd: %s, where read(2) says EINVAL", strerror(err));
}

/* A stream socket through the file calls: gr_readv waits for gr_writev's
 * bytes; a gr_writev to a socket whose peer is gone is EPIPE and raises
 * no SIGPIPE (the header's promise for a write on a socket). */
Test(hostile, a_socket_through_readv_and_writev_waits_and_never_raises_sigpipe)
{
	int sv[2];
	struct watchdog w;
	sigset_t pipe_set, old, pending;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct call c = { .fd = sv[0], .n = 10, .vectored = 1, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, write_byte, &sv[1]);
	struct iovec out[2] = { { "hel", 3 }, { "lo", 2 } };
	cr_assert_eq(gr_writev(sv[1], out, 2), 5, "gr_writev: %s", strerror(errno));
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 5, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(memcmp(c.buf, "hello", 5), 0);

	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	cr_assert_eq(pthread_sigmask(SIG_BLOCK, &pipe_set, &old), 0);
	cr_assert_eq(close(sv[0]), 0);
	cr_assert_eq(gr_writev(sv[1], out, 2), -1);
	int err = errno;
	cr_assert_eq(gr_write(sv[1], "x", 1), -1);
	int err1 = errno;
	cr_assert_eq(sigpending(&pending), 0);
	int raised = sigismember(&pending, SIGPIPE);
	if (raised) {
		struct timespec zero = { 0 };
		sigtimedwait(&pipe_set, NULL, &zero);
	}
	cr_assert_eq(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
	cr_assert_eq(err, EPIPE, "gr_writev: %s", strerror(err));
	cr_assert_eq(err1, EPIPE, "gr_write: %s", strerror(err1));
	cr_assert_eq(raised, 0, "a write on a socket raised SIGPIPE");
	close(sv[1]);
}

static void send_datagram(void *arg)
{
	int *fds = arg;
	ssize_t r = send(fds[0], "w", 1, 0);
	(void)r;
}

/* A UDP socket through gr_read and gr_readv: each waits for a datagram,
 * and gets one, whole, however much more is queued (a zero-length one
 * included: 0, not end of anything). */
Test(hostile, a_udp_socket_through_read_gets_one_datagram_a_call)
{
	int fds[2];
	struct watchdog w;

	grt_udp_pair(fds);
	for (int vectored = 0; vectored < 2; vectored++) {
		struct call c = { .fd = fds[1], .n = 64, .vectored = vectored,
				  .deadline = gr_now() + 10 * GR_SEC };
		gr_fiber *f = guarded_read(&c, &w, send_datagram, fds);
		cr_assert_eq(send(fds[0], "one", 3, 0), 3);
		cr_assert_eq(send(fds[0], "three", 5, 0), 5);
		cr_assert_eq(send(fds[0], "", 0, 0), 0);
		join_within(f, 5 * GR_SEC);
		watchdog_stop(&w);
		cr_assert_eq(c.r, 3, "%zd (%s)", c.r, strerror(c.err));
		cr_assert_eq(memcmp(c.buf, "one", 3), 0);
		char buf[64];
		cr_assert_eq(gr_read(fds[1], buf, sizeof(buf)), 5);
		cr_assert_eq(memcmp(buf, "three", 5), 0);
		cr_assert_eq(gr_read(fds[1], buf, sizeof(buf)), 0, "the empty datagram: %s",
			     strerror(errno));
	}
	close(fds[0]);
	close(fds[1]);
}

/* The slave side of a terminal (test_io covers the master's read). */
Test(hostile, a_terminal_slave_read_waits_and_its_write_arrives)
{
	int m, s;
	struct watchdog w;

	grt_raw_pty(&m, &s);
	struct call c = { .fd = s, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, write_byte, &m);
	cr_assert_eq(write(m, "hi", 2), 2);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 2, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_write(s, "yo", 2), 2, "gr_write: %s", strerror(errno));
	char buf[2];
	cr_assert_eq(read(m, buf, 2), 2);
	cr_assert_eq(memcmp(buf, "yo", 2), 0);
	close(s);
	close(m);
}

/* One number, two files, closed with plain close() between two green
 * reads: a pipe (which takes RWF_NOWAIT) then a terminal (which refuses
 * it), and the other way round. The second read waits on the new file,
 * without blocking the thread, and gets its bytes. */
static void read_through_pipe(int fd_no, int *feed)
{
	int p[2];

	pipe_of(p);
	cr_assert_eq(grt_move_fd(p[0], fd_no), 0);
	*feed = p[1];
}

static void read_through_pty(int fd_no, int *feed)
{
	int m, s;

	grt_raw_pty(&m, &s);
	cr_assert_eq(grt_move_fd(m, fd_no), 0);
	*feed = s;
}

static void two_files_under_one_number(void (*first)(int, int *), void (*second)(int, int *))
{
	int spare[2];
	struct watchdog w;

	pipe_of(spare); /* the number the two files take in turn */
	int no = spare[0];
	close(spare[1]);
	for (int round = 0; round < 2; round++) {
		int feed;

		(round == 0 ? first : second)(no, &feed);
		struct call c = { .fd = no, .n = 16, .deadline = gr_now() + 10 * GR_SEC };
		gr_fiber *f = guarded_read(&c, &w, write_byte, &feed);
		cr_assert_eq(write(feed, "ok", 2), 2);
		join_within(f, 5 * GR_SEC);
		watchdog_stop(&w);
		cr_assert_eq(c.r, 2, "round %d: %zd (%s)", round, c.r, strerror(c.err));
		cr_assert_eq(memcmp(c.buf, "ok", 2), 0);
		int nonblock = fcntl(no, F_GETFL) & O_NONBLOCK;
		/* Not gr_close: behind the runtime's back. */
		cr_assert_eq(close(no), 0);
		close(feed);
		/* A pipe keeps its flags (docs/hubs.md: a refusal remembered
		 * for a number reused since costs "that F_GETFL" at worst). */
		if ((round == 0 ? first : second) == read_through_pipe)
			cr_assert_eq(nonblock, 0, "round %d: the pipe was made O_NONBLOCK", round);
	}
}

Test(hostile, a_pipe_number_reused_by_a_terminal_between_two_reads_still_waits)
{
	two_files_under_one_number(read_through_pipe, read_through_pty);
}

Test(hostile, a_terminal_number_reused_by_a_pipe_between_two_reads_still_waits)
{
	two_files_under_one_number(read_through_pty, read_through_pipe);
}

/* A pipe the program made non-blocking itself: a green read still waits
 * (it never says EAGAIN), and the flag stays as the program set it. */
Test(hostile, a_pipe_made_nonblocking_by_the_program_still_waits_and_stays_so)
{
	int p[2];
	struct watchdog w;

	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	struct call c = { .fd = p[0], .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, write_byte, &p[1]);
	cr_assert_eq(gr_write(p[1], "z", 1), 1);
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, 1, "%zd (%s)", c.r, strerror(c.err));
	cr_assert(fcntl(p[0], F_GETFL) & O_NONBLOCK, "the program's O_NONBLOCK was cleared");
	cr_assert(fcntl(p[1], F_GETFL) & O_NONBLOCK, "the program's O_NONBLOCK was cleared");
	close(p[0]);
	close(p[1]);
}

static void read_some(void *arg)
{
	char buf[4096];
	ssize_t r = read(*(int *)arg, buf, sizeof(buf));
	(void)r;
}

/* Start a write that must park (the watchdog reads to unblock it). */
static gr_fiber *parked_write(struct call *c, struct watchdog *w, int read_fd)
{
	static int rfd;

	rfd = read_fd;
	watchdog_start(w, read_some, &rfd);
	return parked(c, write_fiber);
}

/* A pipe of one page (F_SETPIPE_SZ 4096) holding a byte: a green write of
 * exactly PIPE_BUF bytes waits until it fits whole, and arrives whole. */
Test(hostile, a_pipe_buf_write_to_a_one_page_pipe_waits_and_arrives_whole)
{
	int p[2];
	struct watchdog w;
	static unsigned char big[PIPE_BUF], got[2 * PIPE_BUF];

	pipe_of(p);
	cr_assert_eq(fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
	cr_assert_eq(write(p[1], "<", 1), 1);
	grt_stream_fill(big, sizeof(big), 0);
	struct call c = { .fd = p[1], .n = sizeof(big), .ext = big,
			  .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = parked_write(&c, &w, p[0]);
	cr_assert_eq(gr_read(p[0], got, sizeof(got)), 1, "the byte before");
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, (ssize_t)PIPE_BUF, "%zd (%s)", c.r, strerror(c.err));
	cr_assert_eq(gr_read(p[0], got, sizeof(got)), (ssize_t)PIPE_BUF, "not whole");
	grt_stream_check(got, PIPE_BUF, 0);
	close(p[0]);
	close(p[1]);
}

/* Two fibers write records of at most PIPE_BUF bytes to one pipe at once,
 * often finding it full: as with write(2), no record is interleaved with
 * another (POSIX: writes of up to PIPE_BUF bytes are atomic), whatever
 * size the reader reads in. Records of exactly PIPE_BUF on a one-page
 * pipe, and of 1000 bytes on a default one. */
struct rec_writer {
	int fd, id, count;
	size_t size;
	int err;
};

static void rec_fill(unsigned char *b, size_t size, int id, int seq)
{
	for (size_t i = 0; i < size; i++)
		b[i] = (unsigned char)(id * 64 + (seq + (int)i) % 61);
	b[0] = (unsigned char)id;
	b[1] = (unsigned char)seq;
}

static void *write_records(void *arg)
{
	struct rec_writer *rw = arg;
	unsigned char *b = malloc(rw->size);

	for (int seq = 0; b && seq < rw->count; seq++) {
		rec_fill(b, rw->size, rw->id, seq);
		ssize_t r = gr_write(rw->fd, b, rw->size);
		if (r != (ssize_t)rw->size) {
			rw->err = r < 0 ? errno : EMSGSIZE;
			break;
		}
	}
	free(b);
	return NULL;
}

static void records_stay_whole(size_t size, int pipe_size)
{
	enum { COUNT = 60 };
	int p[2];
	struct rec_writer rw[2];
	gr_fiber *f[2];
	size_t total = 2 * COUNT * size;
	unsigned char *all = malloc(total), *want = malloc(size);
	uint64_t seed = size;

	pipe_of(p);
	if (pipe_size)
		cr_assert_eq(fcntl(p[1], F_SETPIPE_SZ, pipe_size), pipe_size);
	for (int i = 0; i < 2; i++) {
		rw[i] = (struct rec_writer){ .fd = p[1], .id = i + 1, .count = COUNT, .size = size };
		cr_assert_not_null(f[i] = gr_spawn(write_records, &rw[i]));
	}
	size_t got = 0;
	gr_deadline_set(gr_now() + 10 * GR_SEC);
	while (got < total) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		size_t n = (size_t)(seed >> 33) % 3000 + 1;
		ssize_t r = gr_read(p[0], all + got, n < total - got ? n : total - got);

		cr_assert_gt(r, 0, "gr_read at %zu: %s", got, r < 0 ? strerror(errno) : "EOF");
		got += (size_t)r;
		if ((seed >> 20) % 4 == 0)
			assert_ok(gr_sleep(0));
	}
	gr_deadline_set(GR_FOREVER);
	for (int i = 0; i < 2; i++) {
		join_within(f[i], 5 * GR_SEC);
		cr_assert_eq(rw[i].err, 0, "writer %d: %s", i + 1, strerror(rw[i].err));
	}
	int next[3] = { 0, 0, 0 };
	for (size_t at = 0; at < total; at += size) {
		int id = all[at], seq = all[at + 1];

		cr_assert(id == 1 || id == 2, "record at %zu: writer %d", at, id);
		cr_assert_eq(seq, next[id] % 256, "record at %zu: writer %d's %d, expected %d", at, id,
			     seq, next[id]);
		rec_fill(want, size, id, next[id]);
		cr_assert_eq(memcmp(all + at, want, size), 0,
			     "record at %zu (writer %d's %d) is not whole: interleaved", at, id, seq);
		next[id]++;
	}
	free(all);
	free(want);
	close(p[0]);
	close(p[1]);
}

Test(hostile, two_writers_records_of_pipe_buf_stay_whole)
{
	records_stay_whole(PIPE_BUF, 4096);
	records_stay_whole(1000, 0);
	records_stay_whole(1000, 4096);
}

/* Kills and deadlines at every wait of a writer and a reader of one small
 * pipe: each call either moves bytes and says how many, or fails with
 * ETIMEDOUT/ECANCELED having moved none; the reader gets exactly the
 * stream the writer says it wrote. */
struct churn {
	int fd;
	size_t total, done;
	int err;
	int timeouts, cancels;
	bool reader;
};

static void *churn_fiber(void *arg)
{
	struct churn *ch = arg;
	unsigned char buf[9000];

	while (ch->done < ch->total) {
		size_t n = grt_pick(sizeof(buf)) + 1;
		if (n > ch->total - ch->done)
			n = ch->total - ch->done;
		if (!ch->reader)
			grt_stream_fill(buf, n, ch->done);
		gr_deadline_set(grt_random_deadline());
		ssize_t r = ch->reader ? gr_read(ch->fd, buf, n) : gr_write(ch->fd, buf, n);
		int err = errno;
		gr_deadline_set(GR_FOREVER);
		if (r < 0 && err == ECANCELED) {
			ch->cancels++;
			gr_kill_ack(GR_FOREVER);
			continue;
		}
		if (r < 0 && err == ETIMEDOUT) {
			ch->timeouts++;
			continue;
		}
		if (r <= 0) {
			ch->err = r < 0 ? err : EIO;
			return NULL;
		}
		if (ch->reader) {
			for (ssize_t i = 0; i < r; i++)
				if (buf[i] != grt_stream_byte(ch->done + (size_t)i)) {
					ch->err = EILSEQ;
					return NULL;
				}
		}
		ch->done += (size_t)r;
	}
	return NULL;
}

Test(hostile, kills_and_deadlines_at_every_pipe_wait_lose_no_byte)
{
	enum { TOTAL = 2 * 1024 * 1024 };
	int p[2];

	grt_rng_seed(18);
	pipe_of(p);
	cr_assert_eq(fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
	struct churn w = { .fd = p[1], .total = TOTAL };
	struct churn r = { .fd = p[0], .total = TOTAL, .reader = true };
	gr_fiber *fw = gr_spawn(churn_fiber, &w), *fr = gr_spawn(churn_fiber, &r);
	cr_assert(fw && fr);
	int64_t until = gr_now() + 15 * GR_SEC;
	while ((w.done < TOTAL || r.done < TOTAL) && !w.err && !r.err && gr_now() < until) {
		assert_ok(gr_sleep(grt_pick(300) * 1000));
		gr_kill(grt_pick(2) ? fw : fr);
	}
	join_within(fw, 5 * GR_SEC);
	join_within(fr, 5 * GR_SEC);
	cr_assert_eq(w.err, 0, "writer: %s", strerror(w.err));
	cr_assert_eq(r.err, 0, "reader at %zu: %s", r.done, strerror(r.err));
	cr_assert_eq(r.done, (size_t)TOTAL);
	cr_log_info("writer %d timeouts %d cancels, reader %d timeouts %d cancels", w.timeouts,
		    w.cancels, r.timeouts, r.cancels);
	cr_assert_gt(w.timeouts + w.cancels + r.timeouts + r.cancels, 0, "no call was interrupted");
	close(p[0]);
	close(p[1]);
}

/* gr_close of a blocking pipe from another fiber while a reader waits on
 * it: the reader fails with EBADF at once, the number is closed. */
Test(hostile, a_gr_close_from_another_fiber_ends_a_pipe_read_with_ebadf)
{
	int p[2];
	struct watchdog w;

	pipe_of(p);
	struct call c = { .fd = p[0], .n = 16, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = guarded_read(&c, &w, write_byte, &p[1]);
	int64_t t0 = gr_now();
	cr_assert_eq(gr_close(p[0]), 0, "gr_close: %s", strerror(errno));
	join_within(f, 5 * GR_SEC);
	watchdog_stop(&w);
	cr_assert_eq(c.r, -1);
	cr_assert_eq(c.err, EBADF, "%s", strerror(c.err));
	cr_assert_lt(c.ended_at - t0, 50 * MSEC);
	cr_assert_eq(fcntl(p[0], F_GETFD), -1);
	close(p[1]);
}

/* A number a green read knew as a pipe, closed with plain close() and
 * reused by a regular file whose pages are not cached: the next gr_read
 * gets the file's bytes (it neither fails with EAGAIN nor waits for ever
 * for a readiness a regular file never reports). */
Test(hostile, a_pipe_number_reused_by_an_uncached_regular_file_reads_its_bytes)
{
	enum { SIZE = 256 * 1024 };
	struct tmpdir d;
	char path[96];
	int p[2];
	static unsigned char data[SIZE], got[SIZE];

	tmpdir_make(&d);
	snprintf(path, sizeof(path), "%s/file", d.path);
	int ffd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	cr_assert_geq(ffd, 0);
	grt_stream_fill(data, SIZE, 0);
	cr_assert_eq(pwrite(ffd, data, SIZE, 0), SIZE);
	cr_assert_eq(fsync(ffd), 0);

	pipe_of(p);
	struct call c = { .fd = p[0], .n = 1, .deadline = gr_now() + 10 * GR_SEC };
	gr_fiber *f = parked_read(&c);
	cr_assert_eq(write(p[1], "x", 1), 1);
	join_within(f, 5 * GR_SEC);
	cr_assert_eq(c.r, 1);
	close(p[1]);
	cr_assert_eq(grt_move_fd(ffd, p[0]), 0); /* close() of the pipe, behind the back */
	ffd = p[0];
	for (int i = 0; i < 20; i++)
		cr_assert_eq(posix_fadvise(ffd, 0, 0, POSIX_FADV_DONTNEED), 0);
	size_t done = 0;
	gr_deadline_set(gr_now() + 10 * GR_SEC);
	while (done < SIZE) {
		ssize_t r = gr_read(ffd, got + done, SIZE - done);

		cr_assert_gt(r, 0, "gr_read at %zu: %s", done, r < 0 ? strerror(errno) : "EOF");
		done += (size_t)r;
	}
	gr_deadline_set(GR_FOREVER);
	grt_stream_check(got, SIZE, 0);
	cr_assert_eq(gr_close(ffd), 0);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(rmdir(d.path), 0);
}

/* A thread whose seccomp policy answers preadv2 and pwritev2 with ENOSYS
 * (a kernel before 4.6, a sandbox that lists the system calls it allows):
 * a green read and write of a pipe still work, as they did with read(2)
 * and write(2), and as file.c's own RWF_NOWAIT try already allows
 * (EOPNOTSUPP or ENOSYS: refused). */
#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#endif

struct sandboxed {
	int deny;                       /* what preadv2 and pwritev2 fail with */
	int policy;                     /* 0: installed; else the errno */
	ssize_t rd, wr;
	int rd_err, wr_err;
	char got[4];
};

static int deny_rw2(int err)
{
#ifdef NATIVE_ARCH
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_preadv2, 1, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pwritev2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	/* Both for this thread only: it ends with the test. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		return errno;
	return 0;
#else
	(void)err;
	return ENOTSUP;
#endif
}

static void *write_later(void *arg)
{
	int *fd = arg;

	gr_sleep(2 * MSEC);
	return gr_write(*fd, "ok", 2) == 2 ? NULL : arg;
}

static void sandboxed_run(void *arg)
{
	struct sandboxed *sb = arg;
	int p[2];

	sb->policy = deny_rw2(sb->deny);
	if (sb->policy || pipe2(p, O_CLOEXEC) != 0)
		return;
	gr_fiber *f = gr_spawn(write_later, &p[1]);
	gr_deadline_set(gr_now() + 2 * GR_SEC);
	sb->rd = gr_read(p[0], sb->got, sizeof(sb->got));
	sb->rd_err = errno;
	gr_deadline_set(GR_FOREVER);
	void *res = &res;
	if (f)
		gr_join(f, &res, GR_FOREVER);
	sb->wr = res == NULL ? 2 : -1;
	gr_close(p[0]);
	gr_close(p[1]);
}

static void sandboxed_pipe(int deny)
{
	struct sandboxed sb = { .deny = deny };
	struct grt_thread t;

	grt_thread_start(&t, 1, sandboxed_run, &sb);
	grt_thread_join(&t);
	if (sb.policy)
		cr_skip_test("no seccomp filter here: %s", strerror(sb.policy));
	cr_assert_eq(sb.rd, 2, "preadv2 denied with %s: gr_read: %zd (%s)", strerror(deny), sb.rd,
		     strerror(sb.rd_err));
	cr_assert_eq(memcmp(sb.got, "ok", 2), 0);
	cr_assert_eq(sb.wr, 2, "pwritev2 denied with %s: gr_write failed", strerror(deny));
}

/* glibc turns ENOSYS with flags into EOPNOTSUPP: refused, as a tty. */
Test(hostile, a_sandbox_without_preadv2_enosys_still_reads_and_writes_pipes)
{
	sandboxed_pipe(ENOSYS);
}

/* A policy written before preadv2 existed, whose default answer is EPERM
 * (container runtimes' default action): read(2) and write(2) are allowed,
 * so a green read and write of a pipe must work too. */
Test(hostile, a_sandbox_without_preadv2_eperm_still_reads_and_writes_pipes)
{
	sandboxed_pipe(EPERM);
}

/* A thread exits while its fiber's read of a cold regular file runs on
 * the thread pool (epoll, poll; on io_uring, the kernel's read): the exit
 * waits for it, and the worker's completion, posted to a hub that has
 * nothing else to wake it, ends that wait. */
struct cold_read {
	int fd;
	size_t size;
	unsigned char *buf;
	atomic_int parked, returned;
	int64_t exit_began;
};

static void *read_cold(void *arg)
{
	struct cold_read *cr = arg;

	(void)gr_read(cr->fd, cr->buf, cr->size);
	atomic_store(&cr->returned, 1); /* never, if the thread exits first */
	return NULL;
}

static void exit_mid_read(void *arg)
{
	struct cold_read *cr = arg;
	struct gr_spawn_opts so = { .detached = 1 };

	if (!gr_spawn_with(&so, read_cold, cr))
		return;
	gr_sleep(0);
	atomic_store(&cr->parked, 1);
	/* On the pool, a worker in the read: exit now (a queued one would
	 * just be withdrawn). */
	struct gr_tpool_stats st;
	int64_t until = gr_now() + 2 * GR_SEC;
	while (readiness_hub() && gr_now() < until && !atomic_load(&cr->returned) &&
	       gr_tpool_stats(&st) == 0 && (st.queued > 0 || st.idle == st.threads))
		usleep(50);
	cr->exit_began = gr_now();
}

Test(hostile, a_thread_exiting_mid_file_read_waits_for_it_and_ends)
{
	enum { SIZE = 16 * 1024 * 1024 };
	struct tmpdir d;
	char path[96];
	struct cold_read cr = { .size = SIZE, .buf = malloc(SIZE) };
	struct grt_thread t;

	cr_assert_not_null(cr.buf);
	tmpdir_make(&d);
	snprintf(path, sizeof(path), "%s/cold", d.path);
	cr.fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	cr_assert_geq(cr.fd, 0);
	grt_stream_fill(cr.buf, SIZE, 0);
	cr_assert_eq(pwrite(cr.fd, cr.buf, SIZE, 0), SIZE);
	cr_assert_eq(fsync(cr.fd), 0);
	cr_assert_eq(posix_fadvise(cr.fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	memset(cr.buf, 0, SIZE);
	grt_thread_start(&t, 1, exit_mid_read, &cr);
	int64_t until = gr_now() + 10 * GR_SEC;
	while (!atomic_load(&t.done) && gr_now() < until)
		assert_ok(gr_sleep(MSEC));
	cr_assert(atomic_load(&t.done), "the thread's exit still waits after 10 s (a wake-up lost?)");
	grt_thread_join(&t);
	cr_assert_eq(atomic_load(&cr.parked), 1);
	cr_assert_eq(atomic_load(&cr.returned), 0, "the read was over before the thread exited");
	cr_assert_eq(gr_close(cr.fd), 0);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(rmdir(d.path), 0);
	free(cr.buf);
}
