/* sleep.c — sleep, usleep, nanosleep, clock_nanosleep, made green.
 *
 * From a fiber they are gr_sleep: the fiber parks, the others run. Zero
 * yields (eventlet's sleep(0)), as gr_sleep(0) does. A kill ends the sleep
 * with ECANCELED and the fiber's deadline with ETIMEDOUT, never EINTR: the
 * usual "while (nanosleep(&t, &t) == -1 && errno == EINTR);" loop would
 * otherwise spin, since every later call of a killed fiber fails at once.
 * The time not slept is reported where the call reports it (sleep's return
 * value, nanosleep's rem).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "patch.h"

static bool valid(const struct timespec *ts)
{
	return ts->tv_sec >= 0 && ts->tv_nsec >= 0 && ts->tv_nsec < 1000000000L;
}

static int64_t to_ns(const struct timespec *ts)
{
	return patch_ns(ts->tv_sec, ts->tv_nsec);
}

/* What is left of a request after `slept` ns, computed on the request
 * itself: a request beyond 292 years (INT64_MAX ns, where the deadline
 * saturates) keeps its size in what is left. */
static void remaining(const struct timespec *req, int64_t slept, struct timespec *rem)
{
	int64_t sec = slept / GR_SEC, nsec = slept % GR_SEC;

	if (slept < 0)
		sec = nsec = 0;
	rem->tv_sec = req->tv_sec - sec;
	rem->tv_nsec = req->tv_nsec - nsec;
	if (rem->tv_nsec < 0) {
		rem->tv_nsec += GR_SEC;
		rem->tv_sec--;
	}
	if (rem->tv_sec < 0)
		rem->tv_sec = rem->tv_nsec = 0;
}

/* Sleep until `deadline` (CLOCK_MONOTONIC). 0, or -ECANCELED / -ETIMEDOUT
 * with *left the time not slept. */
static int green_sleep_until(int64_t deadline, int64_t *left)
{
	int err = patch_green_check();

	if (!err) {
		int64_t now = gr_now();

		err = deadline <= now ? gr_sleep(0) : gr_sleep_until(deadline);
	}
	*left = err ? deadline - gr_now() : 0;
	return err;
}

PATCH_API unsigned sleep(unsigned seconds)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN)) {
		struct timespec ts = { seconds, 0 };

		/* libc's sleep is nanosleep too; the stand-in covers the time
		 * before the library's constructor. */
		if (REAL(nanosleep)(&ts, &ts) < 0)
			return (unsigned)ts.tv_sec + (ts.tv_nsec > 0);
		return 0;
	}
	int64_t left;
	int saved = errno;
	int err = green_sleep_until(patch_deadline_after_ns((int64_t)seconds * GR_SEC), &left);
	(void)patch_result(err, saved);
	if (!err)
		return 0;
	return (unsigned)((left + GR_SEC - 1) / GR_SEC);
}

PATCH_API int usleep(useconds_t us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000 };

	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN))
		return REAL(nanosleep)(&ts, NULL);
	int64_t left;
	int saved = errno;
	int err = green_sleep_until(patch_deadline_after_ns(to_ns(&ts)), &left);
	return (int)patch_result(err, saved);
}

PATCH_API int nanosleep(const struct timespec *req, struct timespec *rem)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || !req || !valid(req))
		return REAL(nanosleep)(req, rem);
	int64_t left, start = gr_now();
	int saved = errno;
	int err = green_sleep_until(patch_deadline_after_ns(to_ns(req)), &left);
	if (err && rem)
		remaining(req, gr_now() - start, rem);
	return (int)patch_result(err, saved);
}

/* The CLOCK_MONOTONIC deadline of a clock_nanosleep, or -1 when the clock
 * is not one a fiber can sleep on (a CPU-time clock: the real call). */
static int64_t clock_deadline(clockid_t clk, int flags, const struct timespec *req)
{
	int64_t ns = to_ns(req);

	if (!(flags & TIMER_ABSTIME)) {
		switch (clk) {
		case CLOCK_REALTIME:
		case CLOCK_MONOTONIC:
		case CLOCK_BOOTTIME:
		case CLOCK_TAI:
			return patch_deadline_after_ns(ns);
		default:
			return -1;
		}
	}
	struct timespec now;
	switch (clk) {
	case CLOCK_MONOTONIC:
		return ns;
	case CLOCK_REALTIME:
	case CLOCK_BOOTTIME:
	case CLOCK_TAI:
		/* The distance now, on the clock asked for. A change of the
		 * wall clock while asleep is not followed (a blocking
		 * TIMER_ABSTIME sleep would follow it). */
		if (clock_gettime(clk, &now) < 0)
			return -1;
		ns -= to_ns(&now);
		/* Past already: a yield (not a negative distance, which
		 * patch_deadline_after_ns would read as "no timeout"). */
		return ns <= 0 ? gr_now() : patch_deadline_after_ns(ns);
	default:
		return -1;
	}
}

PATCH_API int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req,
			      struct timespec *rem)
{
	if (PATCH_LIKELY(PATCH_CTX() != PATCH_GREEN) || !req || !valid(req))
		return REAL(clock_nanosleep)(clk, flags, req, rem);
	int64_t deadline = clock_deadline(clk, flags, req);
	if (deadline < 0)
		return REAL(clock_nanosleep)(clk, flags, req, rem);
	int64_t left, start = gr_now();
	int saved = errno;
	int err = green_sleep_until(deadline, &left);
	if (err && rem && !(flags & TIMER_ABSTIME))
		remaining(req, gr_now() - start, rem);
	errno = saved; /* clock_nanosleep returns the error, errno untouched */
	return -err;
}
