/* clock.c — monotonic time, and the small conversions every file needs. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

int64_t gr_now(void)
{
	struct timespec ts;

	/* CLOCK_MONOTONIC cannot fail with a valid pointer; the vDSO makes it cheap. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * GR_SEC + ts.tv_nsec;
}

/* CLOCK_MONOTONIC_COARSE: the time of the kernel's last tick, on gr_now()'s
 * clock, never ahead of it. A vDSO read of one variable, about 6 ns where
 * gr_now() costs 28 (this VM, kvm-clock): the loop stamps every turn with it
 * twice. Its resolution (clock_getres: 4 ms at HZ=250) is what those stamps
 * are for: ages in a dump, a turn that held the thread for milliseconds. */
int64_t gr__coarse_now(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
		return gr_now(); /* a kernel without it (before 2.6.32) */
	return (int64_t)ts.tv_sec * GR_SEC + ts.tv_nsec;
}

void gr__ns_to_timespec(int64_t ns, struct timespec *ts)
{
	if (ns < 0)
		ns = 0;
	ts->tv_sec = ns / GR_SEC;
	ts->tv_nsec = ns % GR_SEC;
}

void gr__why(char *buf, size_t len, const char *what, int err)
{
	if (len == 0)
		return;
	if (err < 0)
		err = -err;
	snprintf(buf, len, "%s: %s", what, strerror(err));
}
