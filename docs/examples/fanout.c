/* fanout.c — a fan-out: 1000 jobs, at most 100 at a time, each bounded by a
 * deadline of its own, the whole batch by one more. Jobs still running when
 * the batch's time is up are killed; the ones that never got to run are
 * reported as such.
 *
 *   cc fanout.c $(pkg-config --cflags --libs greenring) -o fanout
 *   ./fanout [BATCH_MS]           # the whole batch's time (default 5000)
 *
 * It prints one line: "1000 jobs: D done, T timed out, K killed, N never ran".
 * (Tested: tests/test_examples.c runs it on every hub.)
 */
#include <errno.h>
#include <greenring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define JOBS 1000
#define AT_ONCE 100
#define JOB_MS 80               /* each job's own deadline */

enum outcome { DONE, TIMED_OUT, KILLED };

/* One job: here a wait of 10 to 100 ms standing for a request to some
 * service (a gr_connect, a gr_send, a gr_recv...). */
static void *job(void *arg)
{
	int id = *(int *)arg;

	/* The pile's deadlines bound the wait for a slot, not the job: the job
	 * sets its own, for every blocking call it makes. */
	gr_deadline_set(gr_now() + JOB_MS * GR_MSEC);
	int r = gr_sleep((10 + id * 37 % 91) * GR_MSEC);
	return (void *)(intptr_t)(r == 0 ? DONE : r == -ETIMEDOUT ? TIMED_OUT : KILLED);
}

int main(int argc, char **argv)
{
	int64_t batch = (argc > 1 ? atoll(argv[1]) : 5000) * GR_MSEC;
	static int ids[JOBS];
	static void *args[JOBS];
	gr_pool pool;
	gr_pile pile;

	for (int i = 0; i < JOBS; i++) {
		ids[i] = i;
		args[i] = &ids[i];
	}
	if (gr_pool_init(&pool, AT_ONCE) != 0 || gr_pile_init(&pile, &pool) != 0 ||
	    gr_pile_imap(&pile, job, args, JOBS) != 0) {
		fprintf(stderr, "fanout: cannot start the jobs\n");
		return 1;
	}

	int64_t deadline = gr_now() + batch;
	int count[3] = { 0 }, read_back = 0, never_ran = 0;
	struct gr_pile_item it;
	for (;;) {
		int r = gr_pile_next_item(&pile, &it, deadline);

		if (r == -ETIMEDOUT) {
			/* Time is up: kill what runs, drop what has not started, then
			 * read back what is left (killed jobs end at once). */
			gr_pile_kill(&pile);
			deadline = GR_FOREVER;
			continue;
		}
		if (r != 0)
			break; /* -ENOENT: nothing left to read */
		read_back++;
		if (it.ran)
			count[(intptr_t)it.result]++;
		else
			never_ran++; /* killed before it started */
	}
	never_ran += JOBS - read_back; /* dropped by the kill before they started */
	printf("%d jobs: %d done, %d timed out, %d killed, %d never ran\n", JOBS, count[DONE],
	       count[TIMED_OUT], count[KILLED], never_ran);
	gr_pile_destroy(&pile);
	gr_pool_destroy(&pool);
	return count[DONE] + count[TIMED_OUT] + count[KILLED] + never_ran == JOBS ? 0 : 1;
}
