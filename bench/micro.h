/* micro.h — the micro-benchmark's cases. bench/micro runs every case once per
 * hub, several times, and prints medians side by side. A case measures one
 * thing and returns its figure in `unit` (lower is better unless `higher`). */
#ifndef GREENRING_BENCH_MICRO_H
#define GREENRING_BENCH_MICRO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct micro_case {
	const char *name;     /* e.g. "yield round trip" */
	const char *unit;     /* e.g. "ns", "M/s", "KiB" */
	bool higher;          /* true if a larger figure is better */
	bool hub_independent; /* run once, not per hub (e.g. raw fcontext) */
	/* Run the measurement (about `budget_ns` long) and return the figure. */
	double (*run)(int64_t budget_ns);
};

/* Each file of cases exports a table ending with { 0 }. */
extern const struct micro_case micro_core_cases[];
extern const struct micro_case micro_sync_cases[];
extern const struct micro_case micro_threads_cases[];
extern const struct micro_case micro_patch_cases[];
extern const struct micro_case micro_later_cases[];
extern const struct micro_case micro_files_cases[];

/* The median of v[0..n-1], n > 0, the upper one for an even n; sorts v. */
double micro_median(double *v, size_t n);

/* The process's resident set now, in KiB (-1 if unknown). */
long micro_rss_kib(void);

#endif
