/* monitor.c — the monitor thread: the blocking monitor (gevent's monitor
 * thread, max_blocking_time) and the dump on a signal.
 *
 * One thread per process, started by gr_monitor_start() (GREENRING_MONITOR
 * at the first hub's creation) or gr_dump_on_signal(), ended when neither
 * needs it. It sleeps on a semaphore, which the dump signal's handler posts
 * (sem_post is async-signal-safe: the handler does nothing else).
 *
 * Blocking. Each hub publishes one counter (gr__hub.progress: +2 per switch,
 * odd while asleep in its backend). Every threshold/4 the monitor reads them
 * all under the hubs lock; a count that is even and has not moved for the
 * threshold means one fiber has had the thread all along. The monitor then
 * sends SIGURG to that thread (tgkill, while the hub is listed and so its
 * thread alive). The handler runs on the stalled thread itself, on its
 * alternate signal stack (stack.c's, set up for every hub thread), and
 * unwinds from the interrupted context with libunwind: the stack it walks
 * is the running fiber's, since fibers run on the thread's stack pointer.
 * libunwind documents unw_init_local2 and unw_step as safe in a signal
 * handler for local unwinding, which glibc's backtrace() is not (its first
 * call loads libgcc_s, and it cannot start from a signal frame's context).
 * The handler records the frames' addresses only, in one static slot, and
 * posts a semaphore; the monitor names them (unw_get_proc_name allocates),
 * formats the report and writes it (or hands it to the program's
 * callback). Once per stall: a second line says when the fiber switched.
 *
 * SIGURG, as Go's preemption: ignored by default, so a stray one harms no
 * one, and rarely used. A handler the program had for it is called for
 * every SIGURG that is not the monitor's.
 */
#define _GNU_SOURCE
#define UNW_LOCAL_ONLY
#include <errno.h>
#include <fcntl.h>
#include <libunwind.h>
#include <pthread.h>
#include <semaphore.h>
#include <ucontext.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define CAPTURE_SIGNAL SIGURG
#define THRESHOLD_MIN GR_MSEC
#define PERIOD_MAX GR_SEC
/* How long the monitor waits for the stalled thread's handler. */
#define CAPTURE_WAIT GR_SEC
/* GREENRING_MONITOR above an hour is a typo. */
#define ENV_MS_MAX ((size_t)3600 * 1000)

/* ------------------------------------------------------------ state */

static struct {
	pthread_mutex_t lock;           /* guards the fields below */
	sem_t wake;                     /* the thread's sleep: posted to wake it */
	pthread_cond_t up;              /* signalled once a new thread has started */
	bool running;                   /* the thread exists */
	bool started;                   /* it has started (mon_update waits for that) */
	bool stopping;                  /* it should end (nothing needs it) */
	int64_t threshold;              /* 0: not watching */
	void (*fn)(const struct gr_monitor_report *report, void *arg);
	void *arg;
	int dump_sig;                   /* 0: no dump on a signal */
	int dump_fd;
	struct sigaction dump_prev;     /* what dump_sig did before us */
} mon = { .lock = PTHREAD_MUTEX_INITIALIZER, .up = PTHREAD_COND_INITIALIZER };

static atomic_bool dump_wanted;
/* A fork() child must start the thread again (read at every hub's birth). */
static atomic_bool restart_in_child;
static pthread_once_t mon_once = PTHREAD_ONCE_INIT;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static pthread_once_t unwind_once = PTHREAD_ONCE_INIT;

/* The capture slot: one backtrace at a time, armed by the monitor, filled
 * by the handler on the stalled thread. */
enum { CAP_IDLE, CAP_ARMED, CAP_BUSY, CAP_DONE };
enum { OUT_CAPTURED, OUT_MOVED_ON, OUT_NOTHING_WAITS, OUT_NO_HUB };

struct frame {
	uintptr_t ip, offset;
	char function[96];
};

static struct {
	_Atomic int state;
	sem_t done;
	pid_t tid;                      /* the thread it is for */
	uint64_t progress;              /* the count the monitor saw stalled */
	/* Filled by the handler. */
	int outcome;
	uint64_t fiber_id;
	char name[GR__NAME_MAX];
	int unwind_error;               /* a libunwind error, 0 if none */
	size_t nframes;
	struct frame frames[GR_MONITOR_FRAMES];
} cap;

static struct sigaction capture_prev;

/* ------------------------------------------------------------ the handler */

/* Walk the stack of the interrupted context: the fiber that was running. */
static void unwind_interrupted(void *uctx)
{
	unw_cursor_t cursor;
	int r = unw_init_local2(&cursor, (unw_context_t *)uctx, UNW_INIT_SIGNAL_FRAME);

	if (r < 0) {
		cap.unwind_error = r;
		return;
	}
	do {
		unw_word_t ip = 0;

		if (unw_get_reg(&cursor, UNW_REG_IP, &ip) < 0 || ip == 0)
			break;
		cap.frames[cap.nframes++].ip = ip;
	} while (cap.nframes < GR_MONITOR_FRAMES && unw_step(&cursor) > 0);
}

/* Name the frame at ip, on the monitor thread: unw_get_proc_name reads
 * the ELF file and allocates (ThreadSanitizer caught it calling malloc in
 * the handler, documented as signal-safe or not), so it runs here, on a
 * cursor made from a context of this thread whose only use is its ip.
 * Frames but the first hold return addresses, which may lie past the end
 * of their function (a call the last instruction): they are looked up one
 * byte earlier. */
static void name_frame(struct frame *f, bool return_address)
{
	unw_context_t uc;
	unw_cursor_t cursor;
	unw_word_t off = 0;
	uintptr_t at = f->ip - (return_address ? 1 : 0);

	f->function[0] = '\0';
	f->offset = 0;
	if (unw_getcontext(&uc) != 0)
		return;
	uc.uc_mcontext.gregs[REG_RIP] = (greg_t)at;
	if (unw_init_local2(&cursor, &uc, UNW_INIT_SIGNAL_FRAME) != 0)
		return;
	int r = unw_get_proc_name(&cursor, f->function, sizeof(f->function), &off);
	if (r == 0 || r == -UNW_ENOMEM) /* ENOMEM: truncated, still useful */
		f->offset = off + (f->ip - at);
	else
		f->function[0] = '\0';
}

/* On the stalled thread: only async-signal-safe work, into the slot. */
static void capture_here(void *uctx)
{
	struct gr__hub *hub = gr__tls_hub;

	cap.nframes = 0;
	cap.unwind_error = 0;
	if (!hub) {
		cap.outcome = OUT_NO_HUB;
		return;
	}
	if (atomic_load_explicit(&hub->progress, memory_order_relaxed) != cap.progress) {
		cap.outcome = OUT_MOVED_ON;
		return;
	}
	atomic_signal_fence(memory_order_seq_cst); /* progress before current: see gr__switch_to */
	gr_fiber *f = hub->current;
	if (f == &hub->root && hub->nfibers == 0 && hub->inflight == 0) {
		cap.outcome = OUT_NOTHING_WAITS; /* the thread does other things; nobody starves */
		return;
	}
	cap.fiber_id = f == hub->loop ? 0 : f->id;
	memcpy(cap.name, f->name, sizeof(cap.name));
	cap.name[sizeof(cap.name) - 1] = '\0';
	unwind_interrupted(uctx);
	cap.outcome = OUT_CAPTURED;
}

static void chain(const struct sigaction *prev, int sig, siginfo_t *si, void *uctx)
{
	if (prev->sa_flags & SA_SIGINFO) {
		if (prev->sa_sigaction)
			prev->sa_sigaction(sig, si, uctx);
	} else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
		prev->sa_handler(sig);
	}
	/* SIG_DFL of SIGURG is to ignore it. */
}

static void on_capture_signal(int sig, siginfo_t *si, void *uctx)
{
	int saved_errno = errno;
	int armed = CAP_ARMED;

	if (atomic_load_explicit(&cap.state, memory_order_acquire) == CAP_ARMED &&
	    cap.tid == gettid() &&
	    atomic_compare_exchange_strong_explicit(&cap.state, &armed, CAP_BUSY,
						    memory_order_acquire, memory_order_relaxed)) {
		capture_here(uctx);
		atomic_store_explicit(&cap.state, CAP_DONE, memory_order_release);
		sem_post(&cap.done);
	} else {
		chain(&capture_prev, sig, si, uctx);
	}
	errno = saved_errno;
}

static void on_dump_signal(int sig)
{
	int saved_errno = errno;

	(void)sig;
	atomic_store_explicit(&dump_wanted, true, memory_order_relaxed);
	sem_post(&mon.wake);
	errno = saved_errno;
}

/* ------------------------------------------------------------ reports */

struct report_text {
	char buf[GR_MONITOR_FRAMES * 160 + 512];
	size_t len;
};

static void __attribute__((format(printf, 2, 3))) say(struct report_text *t, const char *fmt, ...)
{
	va_list ap;

	if (t->len >= sizeof(t->buf))
		return;
	va_start(ap, fmt);
	int n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len += (size_t)n < sizeof(t->buf) - t->len ? (size_t)n : sizeof(t->buf) - t->len - 1;
}

static void deliver(struct gr_monitor_report *r, struct report_text *t)
{
	void (*fn)(const struct gr_monitor_report *, void *);
	void *arg;

	r->text = t->buf;
	pthread_mutex_lock(&mon.lock);
	fn = mon.fn;
	arg = mon.arg;
	pthread_mutex_unlock(&mon.lock);
	if (fn) {
		fn(r, arg);
		return;
	}
	/* One write, so the report's lines stay together. */
	ssize_t ignored = write(STDERR_FILENO, t->buf, t->len);
	(void)ignored;
}

/* What the monitor knows of a stall when it decides to report it. */
struct stall {
	struct gr__hub *hub;
	pid_t tid;
	const char *backend;
	uint64_t progress;
	int64_t since;
};

static void report_stall(const struct stall *s, int64_t threshold, bool answered)
{
	struct gr_monitor_frame frames[GR_MONITOR_FRAMES];
	struct gr_monitor_report r = { .tid = s->tid, .hub = s->backend };
	struct report_text t = { .len = 0 };

	r.running_ns = gr_now() - s->since;
	r.fiber_id = answered ? cap.fiber_id : 0;
	r.fiber_name = answered ? cap.name : "?";
	say(&t, "greenring: monitor: thread %d (%s hub): ", (int)s->tid, s->backend);
	if (answered)
		say(&t, "fiber %llu \"%s\"", (unsigned long long)cap.fiber_id, cap.name);
	else
		say(&t, "a fiber");
	say(&t, " has run %.1f ms without switching (threshold %.1f ms)\n",
	    (double)r.running_ns / 1e6, (double)threshold / 1e6);
	if (!answered) {
		say(&t, "greenring: monitor:   (no backtrace: the thread did not run the SIGURG "
			"handler within %d ms; does it block SIGURG?)\n", (int)(CAPTURE_WAIT / GR_MSEC));
	} else if (cap.nframes == 0) {
		say(&t, "greenring: monitor:   (no backtrace: libunwind: %s)\n",
		    unw_strerror(cap.unwind_error));
	}
	for (size_t i = 0; answered && i < cap.nframes; i++) {
		struct frame *f = &cap.frames[i];

		name_frame(f, i > 0);

		frames[i] = (struct gr_monitor_frame){ .ip = f->ip, .offset = f->offset,
						       .function = f->function };
		if (f->function[0])
			say(&t, "greenring: monitor:   #%-2zu 0x%016llx %s+0x%llx\n", i,
			    (unsigned long long)f->ip, f->function, (unsigned long long)f->offset);
		else
			say(&t, "greenring: monitor:   #%-2zu 0x%016llx ?\n", i,
			    (unsigned long long)f->ip);
	}
	r.nframes = answered ? cap.nframes : 0;
	r.frames = frames;
	deliver(&r, &t);
}

static void report_end(pid_t tid, const char *backend, const struct gr__hub_watch *w, int64_t ran)
{
	struct gr_monitor_report r = { .tid = tid, .hub = backend, .fiber_id = w->fiber_id,
				       .fiber_name = w->fiber_name, .running_ns = ran, .ended = 1 };
	struct report_text t = { .len = 0 };

	say(&t, "greenring: monitor: thread %d (%s hub): fiber %llu \"%s\" switched after %.1f ms\n",
	    (int)tid, backend, (unsigned long long)w->fiber_id, w->fiber_name, (double)ran / 1e6);
	deliver(&r, &t);
}

/* ------------------------------------------------------------ watching */

#define ENDS_MAX 16

struct scan {
	int64_t now, threshold;
	struct stall stall;             /* hub NULL: none found */
	bool armed;                     /* the signal went out */
	size_t nends;                   /* stalls that ended, reported after the lock */
	struct {
		pid_t tid;
		const char *backend;
		struct gr__hub_watch w;
		int64_t ran;
	} ends[ENDS_MAX];
};

/* Hubs lock held: the hub is alive, its thread too. */
static void watch_hub(struct gr__hub *hub, void *arg)
{
	struct scan *s = arg;
	struct gr__hub_watch *w = &hub->watch;
	uint64_t p = atomic_load_explicit(&hub->progress, memory_order_relaxed);

	if (w->since == 0 || p != w->progress || (p & 1)) {
		if (w->reported && w->fiber_id != UINT64_MAX && s->nends < ENDS_MAX) {
			s->ends[s->nends].tid = hub->tid;
			s->ends[s->nends].backend = hub->ops->name;
			s->ends[s->nends].w = *w;
			s->ends[s->nends].ran = s->now - w->since;
			s->nends++;
		}
		w->progress = p;
		w->since = s->now;
		w->reported = false;
		return;
	}
	if (w->reported || s->stall.hub || s->now - w->since < s->threshold)
		return;
	/* Once per stall, whatever the capture gives. */
	w->reported = true;
	w->fiber_id = UINT64_MAX; /* known once the handler answers */
	s->stall = (struct stall){ .hub = hub, .tid = hub->tid, .backend = hub->ops->name,
				   .progress = p, .since = w->since };
	cap.tid = hub->tid;
	cap.progress = p;
	atomic_store_explicit(&cap.state, CAP_ARMED, memory_order_release);
	if (tgkill(getpid(), hub->tid, CAPTURE_SIGNAL) == 0)
		s->armed = true;
	else
		atomic_store_explicit(&cap.state, CAP_IDLE, memory_order_relaxed);
}

/* Hubs lock held: remember who stalled, for the line at the stall's end,
 * if the hub is still there and still stalled. */
static void note_stall(struct gr__hub *hub, void *arg)
{
	const struct stall *s = arg;

	if (hub != s->hub || hub->tid != s->tid || hub->watch.progress != s->progress)
		return;
	hub->watch.fiber_id = cap.fiber_id;
	memcpy(hub->watch.fiber_name, cap.name, sizeof(cap.name));
}

/* Wait for the handler. True if it filled the slot. */
static bool capture_wait(void)
{
	struct timespec ts;

	gr__ns_to_timespec(gr_now() + CAPTURE_WAIT, &ts);
	while (sem_clockwait(&cap.done, CLOCK_MONOTONIC, &ts) != 0) {
		if (errno == EINTR)
			continue;
		/* Too late: take the slot back, unless the handler is in it now. */
		int armed = CAP_ARMED;
		if (atomic_compare_exchange_strong(&cap.state, &armed, CAP_IDLE))
			return false;
		while (sem_wait(&cap.done) != 0)
			;
		break;
	}
	/* Acquire, pairing with the handler's release of CAP_DONE: what it
	 * wrote into the slot is visible from here. */
	bool done = atomic_load_explicit(&cap.state, memory_order_acquire) == CAP_DONE;
	atomic_store_explicit(&cap.state, CAP_IDLE, memory_order_relaxed);
	return done;
}

static void scan(int64_t threshold)
{
	struct scan s = { .now = gr_now(), .threshold = threshold };

	gr__hubs_visit(watch_hub, &s);
	for (size_t i = 0; i < s.nends; i++)
		report_end(s.ends[i].tid, s.ends[i].backend, &s.ends[i].w, s.ends[i].ran);
	if (!s.stall.hub)
		return;
	bool answered = s.armed && capture_wait();
	if (answered && cap.outcome != OUT_CAPTURED)
		return; /* it moved on meanwhile, or nothing waits on it */
	if (answered)
		gr__hubs_visit(note_stall, &s.stall);
	report_stall(&s.stall, threshold, answered);
}

/* ------------------------------------------------------------ the thread */

/* Started by gr__thread_start: every signal blocked, so those meant for
 * the program go to its own threads. */
static void *monitor_main(void *unused)
{
	(void)unused;
	pthread_setname_np(pthread_self(), "gr-monitor");
	pthread_mutex_lock(&mon.lock);
	mon.started = true;
	pthread_cond_broadcast(&mon.up);
	pthread_mutex_unlock(&mon.lock);
	for (;;) {
		pthread_mutex_lock(&mon.lock);
		if (mon.stopping) {
			mon.running = false;
			mon.stopping = false;
			pthread_mutex_unlock(&mon.lock);
			return NULL;
		}
		int64_t threshold = mon.threshold;
		int fd = mon.dump_sig > 0 ? mon.dump_fd : -1;
		pthread_mutex_unlock(&mon.lock);

		if (threshold) {
			int64_t period = threshold / 4 < PERIOD_MAX ? threshold / 4 : PERIOD_MAX;
			struct timespec ts;

			gr__ns_to_timespec(gr_now() + period, &ts);
			(void)sem_clockwait(&mon.wake, CLOCK_MONOTONIC, &ts);
		} else {
			(void)sem_wait(&mon.wake);
		}
		if (atomic_exchange_explicit(&dump_wanted, false, memory_order_relaxed) && fd >= 0)
			(void)gr_dump(fd, GR_DUMP_ALL_HUBS, gr_now() + GR_SEC);
		if (threshold)
			scan(threshold);
	}
}

/* mon.lock held: run the thread if something needs it, else let it end.
 * A new thread has started when this returns (the lock is let go while it
 * starts): the caller may fork() or start spinning at once, and neither a
 * thread still being set up by the C library (or a sanitizer) at the fork
 * nor a first sample taken late leaves the stall unwatched. */
static int mon_update(void)
{
	bool needed = mon.threshold > 0 || mon.dump_sig > 0;

	if (!needed) {
		if (mon.running) {
			mon.stopping = true;
			sem_post(&mon.wake);
		}
		return 0;
	}
	mon.stopping = false;
	if (mon.running) {
		sem_post(&mon.wake); /* re-read the settings now */
		return 0;
	}
	mon.started = false;
	if (gr__thread_start(monitor_main, NULL) != 0)
		return -EAGAIN;
	mon.running = true;
	while (!mon.started)
		pthread_cond_wait(&mon.up, &mon.lock);
	return 0;
}

static void fork_prepare(void)
{
	pthread_mutex_lock(&mon.lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&mon.lock);
}

/* The child has no monitor thread: it is started again at the child's
 * first hub (gr__monitor_hub_installed), not here, where starting a thread
 * is not allowed. The handlers are inherited. */
static void fork_child(void)
{
	pthread_mutex_init(&mon.lock, NULL);
	pthread_cond_init(&mon.up, NULL);
	sem_destroy(&mon.wake);
	sem_init(&mon.wake, 0, 0);
	sem_destroy(&cap.done);
	sem_init(&cap.done, 0, 0);
	atomic_store(&cap.state, CAP_IDLE);
	atomic_store(&restart_in_child, mon.running && !mon.stopping);
	mon.running = false;
	mon.stopping = false;
}

/* libunwind initialises itself on first use (it reads the memory map,
 * opens a pipe it keeps for checking addresses, takes a lock): done here,
 * in an ordinary context, so the signal handler only ever walks. */
static void unwind_warm_up(void)
{
	unw_context_t uc;
	unw_cursor_t cursor;
	char name[64];
	unw_word_t off;

	if (unw_getcontext(&uc) == 0 && unw_init_local(&cursor, &uc) == 0) {
		(void)unw_get_proc_name(&cursor, name, sizeof(name), &off);
		(void)unw_step(&cursor);
	}
}

static void mon_init(void)
{
	struct sigaction sa;

	sem_init(&mon.wake, 0, 0);
	sem_init(&cap.done, 0, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_capture_signal;
	/* The alternate stack: the fiber's own may be nearly full. Restart the
	 * system call the signal interrupted where the kernel can. */
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(CAPTURE_SIGNAL, &sa, &capture_prev);
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int gr_monitor_start(int64_t threshold_ns,
		     void (*fn)(const struct gr_monitor_report *report, void *arg), void *arg)
{
	if (threshold_ns < THRESHOLD_MIN)
		return -EINVAL;
	pthread_once(&mon_once, mon_init);
	pthread_once(&unwind_once, unwind_warm_up);
	pthread_mutex_lock(&mon.lock);
	int64_t old_threshold = mon.threshold;
	mon.threshold = threshold_ns;
	mon.fn = fn;
	mon.arg = arg;
	int err = mon_update();
	if (err)
		mon.threshold = old_threshold;
	pthread_mutex_unlock(&mon.lock);
	return err;
}

int gr_monitor_stop(void)
{
	pthread_once(&mon_once, mon_init);
	pthread_mutex_lock(&mon.lock);
	mon.threshold = 0;
	mon.fn = NULL;
	mon.arg = NULL;
	(void)mon_update();
	pthread_mutex_unlock(&mon.lock);
	return 0;
}

int gr_dump_on_signal(int sig, int fd)
{
	if (sig < 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP || sig == SIGSEGV ||
	    sig == CAPTURE_SIGNAL)
		return -EINVAL;
	if (sig > 0 && (fd < 0 || fcntl(fd, F_GETFD) < 0))
		return -EBADF;
	pthread_once(&mon_once, mon_init);
	pthread_mutex_lock(&mon.lock);
	if (mon.dump_sig > 0) {
		sigaction(mon.dump_sig, &mon.dump_prev, NULL);
		mon.dump_sig = 0;
		mon.dump_fd = -1;
	}
	int err = 0;
	if (sig > 0) {
		struct sigaction sa;

		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_dump_signal;
		sa.sa_flags = SA_RESTART | SA_ONSTACK;
		sigemptyset(&sa.sa_mask);
		if (sigaction(sig, &sa, &mon.dump_prev) != 0) {
			err = -errno;
		} else {
			mon.dump_sig = sig;
			mon.dump_fd = fd;
		}
	}
	int r = mon_update();
	if (r && !err) {
		sigaction(sig, &mon.dump_prev, NULL);
		mon.dump_sig = 0;
		mon.dump_fd = -1;
		err = r;
	}
	pthread_mutex_unlock(&mon.lock);
	return err;
}

/* ------------------------------------------------------------ hub hook */

static void read_env(void)
{
	size_t ms = gr__env_size("GREENRING_MONITOR", 0, 0, ENV_MS_MAX, false);

	if (ms > 0 && gr_monitor_start((int64_t)ms * GR_MSEC, NULL, NULL) < 0)
		fprintf(stderr, "greenring: GREENRING_MONITOR=%zu: cannot start the monitor thread\n",
			ms);
}

void gr__monitor_hub_installed(void)
{
	pthread_once(&env_once, read_env);
	if (!atomic_exchange(&restart_in_child, false))
		return;
	pthread_mutex_lock(&mon.lock);
	(void)mon_update();
	pthread_mutex_unlock(&mon.lock);
}
