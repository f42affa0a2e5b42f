/* config.c — the runtime's tunables, read from the environment.
 *
 * One rule for all of them: a value that does not parse, or lies outside
 * what works, is never used as it is. Below the minimum it is raised to the
 * minimum (someone asked for small: the smallest that works is closest);
 * above the maximum, or not a number, it gets the default. Either way one
 * line on stderr says what was asked and what is used instead. Before this, GREENRING_URING_ENTRIES=1
 * made the io_uring hub spin for ever (an operation with a deadline needs
 * two submission entries), and a bad GREENRING_STACK_SIZE was silently
 * ignored.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

size_t gr__env_size(const char *name, size_t dflt, size_t min, size_t max, bool units)
{
	const char *v = getenv(name);

	if (!v || !*v)
		return dflt;
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	unsigned long long unit = 1;
	if (units && (*end == 'k' || *end == 'K'))
		unit = 1024, end++;
	else if (units && (*end == 'm' || *end == 'M'))
		unit = 1024 * 1024, end++;
	/* strtoull accepts "-5" as a huge number: a sign is refused here. */
	if (end == v || *end || errno || strchr(v, '-')) {
		fprintf(stderr, "greenring: %s=%s is not a number%s; using %zu\n", name, v,
			units ? " (optionally followed by k or m)" : "", dflt);
		return dflt;
	}
	if (n > max / unit) {
		fprintf(stderr, "greenring: %s=%s is above the maximum %zu; using the default %zu\n",
			name, v, max, dflt);
		return dflt;
	}
	n *= unit;
	if (n < min) {
		fprintf(stderr, "greenring: %s=%s is below the minimum %zu; using %zu\n", name, v, min,
			min);
		return min;
	}
	return (size_t)n;
}

bool gr__env_flag(const char *name)
{
	const char *v = getenv(name);

	return v && *v && strcmp(v, "0") != 0;
}
