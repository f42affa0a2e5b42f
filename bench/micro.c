/* micro.c — the micro-benchmark driver: every case of every table, on every
 * hub, several runs each, medians side by side in one run.
 *
 *   micro [--hubs io_uring,epoll,poll] [--runs N] [--budget-ms MS] [--filter TEXT]
 *
 * Each (case, hub) run happens in a fresh thread, so it starts with a fresh
 * hub of that kind and nothing left over from the previous case.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <greenring.h>

#include "micro.h"

#define MAX_HUBS 8
#define MAX_RUNS 31

struct run_args {
	const struct micro_case *c;
	const char *hub;
	int64_t budget_ns;
	double figure;
	int error;
};

static void *run_thread(void *p)
{
	struct run_args *a = p;

	if (a->hub) {
		int r = gr_hub_use(a->hub);

		if (r < 0) {
			a->error = r;
			return NULL;
		}
	}
	a->figure = a->c->run(a->budget_ns);
	return NULL;
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return (a > b) - (a < b);
}

double micro_median(double *v, size_t n)
{
	qsort(v, n, sizeof(v[0]), cmp_double);
	return v[n / 2];
}

/* The median of `runs` runs of c on hub (NULL: hub-independent); NaN-free:
 * returns a negative errno if the hub cannot run. */
static double measure(const struct micro_case *c, const char *hub, int runs, int64_t budget_ns,
		      int *error)
{
	double figures[MAX_RUNS];

	for (int i = 0; i < runs; i++) {
		struct run_args a = { .c = c, .hub = hub, .budget_ns = budget_ns };
		pthread_t t;

		if (pthread_create(&t, NULL, run_thread, &a) != 0) {
			*error = -EAGAIN;
			return 0;
		}
		pthread_join(t, NULL);
		if (a.error) {
			*error = a.error;
			return 0;
		}
		figures[i] = a.figure;
	}
	*error = 0;
	return micro_median(figures, (size_t)runs);
}

static void print_figure(double v, int error)
{
	if (error)
		printf(" %14s |", "n/a");
	else if (v >= 100)
		printf(" %14.0f |", v);
	else
		printf(" %14.2f |", v);
}

int main(int argc, char **argv)
{
	const char *hubs_arg = "io_uring,epoll,poll";
	const char *filter = NULL;
	int runs = 5;
	long budget_ms = 300;
	static const struct option longopts[] = {
		{ "hubs", required_argument, NULL, 'h' },
		{ "runs", required_argument, NULL, 'r' },
		{ "budget-ms", required_argument, NULL, 'b' },
		{ "filter", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	for (int ch; (ch = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
		switch (ch) {
		case 'h': hubs_arg = optarg; break;
		case 'r': runs = atoi(optarg); break;
		case 'b': budget_ms = atol(optarg); break;
		case 'f': filter = optarg; break;
		default:
			fprintf(stderr, "usage: micro [--hubs a,b] [--runs N] [--budget-ms MS] [--filter TEXT]\n");
			return 2;
		}
	}
	if (runs < 1 || runs > MAX_RUNS || budget_ms < 1) {
		fprintf(stderr, "micro: --runs must be 1..%d and --budget-ms positive\n", MAX_RUNS);
		return 2;
	}
	char *hubs_copy = strdup(hubs_arg);
	const char *hubs[MAX_HUBS];
	int nhubs = 0;
	for (char *save, *tok = strtok_r(hubs_copy, ",", &save); tok && nhubs < MAX_HUBS;
	     tok = strtok_r(NULL, ",", &save))
		hubs[nhubs++] = tok;

	const struct micro_case *tables[] = { micro_core_cases, micro_sync_cases,
					       micro_threads_cases, micro_patch_cases, micro_later_cases,
					       micro_files_cases };
	int64_t budget_ns = budget_ms * GR_MSEC;

	printf("greenring micro-benchmarks: median of %d runs, ~%ld ms each\n\n", runs, budget_ms);
	printf("| %-36s | %-5s |", "case", "unit");
	for (int h = 0; h < nhubs; h++)
		printf(" %14s |", hubs[h]);
	printf("\n|%s|%s|", "--------------------------------------", "-------");
	for (int h = 0; h < nhubs; h++)
		printf("%s|", "----------------");
	printf("\n");
	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
		for (const struct micro_case *c = tables[t]; c->name; c++) {
			if (filter && !strstr(c->name, filter))
				continue;
			printf("| %-36s | %-5s |", c->name, c->unit);
			fflush(stdout);
			for (int h = 0; h < nhubs; h++) {
				int error = 0;
				double v;

				if (c->hub_independent && h > 0) {
					printf(" %14s |", "\"");
					continue;
				}
				v = measure(c, c->hub_independent ? NULL : hubs[h], runs, budget_ns, &error);
				print_figure(v, error);
				fflush(stdout);
			}
			printf("\n");
		}
	}
	free(hubs_copy);
	return 0;
}
