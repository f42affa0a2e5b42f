/* million.c — a million fibers: spawn N that each park on one event, wake them
 * all, wait until all have ended; the time of each phase and the memory a parked
 * fiber holds.  bench/go/million.go does exactly the same with goroutines
 * (GOMAXPROCS=1), and `tools/bench --million` prints the two side by side.
 *
 *   million [--fibers N] [--rounds R] [--hub NAME]
 *
 * What each fiber does, and its Go twin:
 *
 *     greenring                               Go
 *     parked++; if last: event_set(parked)    ready.Done()      (a sync.WaitGroup)
 *     event_wait(start)                       <-start           (a channel)
 *     left--; if last: event_set(done)        done.Done()       (a sync.WaitGroup)
 *
 * and the main fiber: spawn N detached fibers, wait for `parked` (phase 1:
 * spawn + park; RSS is read here), set `start`, wait for `done` (phase 2: wake +
 * end).  A fiber ends right after its decrement, and the main fiber runs only
 * after the last one has ended, so phase 2 includes every fiber's end, as Go's
 * includes every goroutine's exit.
 *
 * The cycle runs R times in the process (default 2).  Round 1 starts from
 * nothing: every stack is mapped and first touched.  Later rounds find what
 * the runtime kept from the one before (greenring's stack pool, Go's free
 * goroutines and their stacks): that is the steady state of a server whose
 * connections come in bursts.
 *
 * Not a bench/micro case: micro runs each case several times in fresh threads
 * within a time budget, and one run of this takes seconds and gigabytes.
 *
 * Output: per round one human line, then
 *   RESULT impl=greenring hub=.. fibers=.. round=.. spawn_park_us=.. wake_end_us=..
 *          total_us=.. spawn_park_cpu_us=.. wake_end_cpu_us=.. total_cpu_us=..
 *          rss_kib=..
 * where the _us figures are wall time per fiber, the _cpu_us ones the process's
 * CPU time (user + system) per fiber, which a shared machine disturbs less, and
 * rss_kib is the resident memory added per parked fiber in that round.  Exit
 * status 0, or 1 with a message. */
#define _GNU_SOURCE
#include <err.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <greenring.h>

struct million {
	long fibers;
	long parked, left;
	gr_event all_parked, start, all_done;
};

static void waiter(void *arg)
{
	struct million *m = arg;

	if (++m->parked == m->fibers)
		gr_event_set(&m->all_parked);
	int r = gr_event_wait(&m->start, GR_FOREVER);
	if (r < 0)
		errx(1, "gr_event_wait: %s", strerror(-r));
	if (--m->left == 0)
		gr_event_set(&m->all_done);
}

/* Resident memory of the process, KiB. */
static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, resident = -1;

	if (!f)
		err(1, "/proc/self/statm");
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		errx(1, "/proc/self/statm: unexpected format");
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* CPU time (user + system) of the process so far, ns: on a shared machine the
 * wall time of a phase also counts the time others held the CPU. */
static int64_t cpu_ns(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		err(1, "getrusage");
	return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * GR_SEC +
	       ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static void wait_event(gr_event *e)
{
	int r = gr_event_wait(e, GR_FOREVER);

	if (r < 0)
		errx(1, "gr_event_wait: %s", strerror(-r));
}

static void init_event(gr_event *e)
{
	int r = gr_event_init(e);

	if (r < 0)
		errx(1, "gr_event_init: %s", strerror(-r));
}

static void destroy_event(gr_event *e)
{
	int r = gr_event_destroy(e);

	if (r < 0)
		errx(1, "gr_event_destroy: %s", strerror(-r));
}

/* One cycle: spawn, park, wake, end; prints its figures. */
static void cycle(long fibers, int round)
{
	static struct million m;

	m = (struct million){ .fibers = fibers, .left = fibers };
	init_event(&m.all_parked);
	init_event(&m.start);
	init_event(&m.all_done);
	long rss0 = rss_kib();

	int64_t t0 = gr_now(), c0 = cpu_ns();
	for (long i = 0; i < fibers; i++) {
		int r = gr_spawn_n(waiter, &m);

		if (r < 0)
			errx(1, "gr_spawn_n, fiber %ld: %s", i, strerror(-r));
	}
	wait_event(&m.all_parked);
	int64_t t1 = gr_now(), c1 = cpu_ns();
	long rss1 = rss_kib();

	int64_t t1b = gr_now(), c1b = cpu_ns(); /* reading RSS is not a phase */
	gr_event_set(&m.start);
	wait_event(&m.all_done);
	int64_t t2 = gr_now(), c2 = cpu_ns();
	int r = gr_hub_join(GR_FOREVER);
	if (r < 0)
		errx(1, "gr_hub_join: %s", strerror(-r));
	destroy_event(&m.all_parked);
	destroy_event(&m.start);
	destroy_event(&m.all_done);

	double n = (double)fibers;
	double spawn_park = (double)(t1 - t0) / 1e3 / n, wake_end = (double)(t2 - t1b) / 1e3 / n;
	double spawn_park_cpu = (double)(c1 - c0) / 1e3 / n;
	double wake_end_cpu = (double)(c2 - c1b) / 1e3 / n;
	double rss = (double)(rss1 - rss0) / n;
	printf("million: greenring (%s), %ld fibers, round %d: spawn+park %.3f s (%.3f us/fiber, "
	       "CPU %.3f), wake+end %.3f s (%.3f us/fiber, CPU %.3f), %.2f KiB RSS per parked "
	       "fiber\n",
	       gr_hub_name(), fibers, round, (double)(t1 - t0) / 1e9, spawn_park, spawn_park_cpu,
	       (double)(t2 - t1b) / 1e9, wake_end, wake_end_cpu, rss);
	printf("RESULT impl=greenring hub=%s fibers=%ld round=%d spawn_park_us=%.3f wake_end_us=%.3f "
	       "total_us=%.3f spawn_park_cpu_us=%.3f wake_end_cpu_us=%.3f total_cpu_us=%.3f "
	       "rss_kib=%.2f\n",
	       gr_hub_name(), fibers, round, spawn_park, wake_end, spawn_park + wake_end,
	       spawn_park_cpu, wake_end_cpu, spawn_park_cpu + wake_end_cpu, rss);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "fibers", required_argument, NULL, 'n' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "hub", required_argument, NULL, 'u' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *hub = NULL;
	long fibers = 1000000, rounds = 2;
	char *end;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
		case 'r': {
			errno = 0;
			long v = strtol(optarg, &end, 10);
			if (errno || *end || v < 1 || v > 100000000)
				errx(1, "--%s: expected an integer in [1, 100000000], got '%s'",
				     c == 'n' ? "fibers" : "rounds", optarg);
			*(c == 'n' ? &fibers : &rounds) = v;
			break;
		}
		case 'u':
			hub = optarg;
			break;
		case 'h':
			printf("usage: million [--fibers N] [--rounds R] [--hub NAME]\n"
			       "  R times (default 2): spawn N fibers (default 1000000) that each\n"
			       "  park on one event, wake them all, wait until all have ended;\n"
			       "  print each phase's time and the RSS per parked fiber\n");
			return 0;
		default:
			return 1;
		}
	}
	if (optind != argc)
		errx(1, "unexpected argument '%s' (try --help)", argv[optind]);
	int r = gr_hub_use(hub);
	if (r < 0)
		errx(1, "hub %s: %s %s", hub ? hub : "(default)", strerror(-r), gr_hub_why());
	/* The hub and its loop exist before the first baseline is read. */
	gr_sleep(0);
	for (int i = 1; i <= rounds; i++)
		cycle(fibers, i);
	return 0;
}
