/* test_gdb.c — the gdb commands that come with the library: gdb (batch
 * mode) runs tests/gdb_target to its breakpoint, with nothing loaded by
 * hand: the script must come from the library's .debug_gdb_scripts
 * section. `info fibers` must list every fiber with its state and wait,
 * `fiber bt ID` must unwind a parked and a runnable fiber from their saved
 * contexts, and the thread's own registers must be back afterwards. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"

GRT_SUITE(gdb);

static char out[65536];

static bool gdb_installed(void)
{
	return system("gdb --version >/dev/null 2>&1") == 0;
}

/* Run gdb with these commands after the program stopped at the
 * breakpoint; its stdout and stderr into `out`. */
static void run_gdb(const char *const *commands, size_t n)
{
	const char *target = getenv("GREENRING_GDB_TARGET");
	const char *libdir = getenv("GREENRING_LIBRARY_DIR");
	char safe_path[4200];
	const char *argv[64];
	size_t a = 0;

	if (!target || !libdir)
		cr_skip_test("GREENRING_GDB_TARGET/GREENRING_LIBRARY_DIR not set (run through ctest)");
	if (!gdb_installed())
		cr_skip_test("gdb is not installed (tools/test installs it)");
	snprintf(safe_path, sizeof(safe_path), "add-auto-load-safe-path %s", libdir);
	argv[a++] = "gdb";
	argv[a++] = "-nx";
	argv[a++] = "-batch";
	argv[a++] = "-iex";
	argv[a++] = safe_path;
	argv[a++] = "-ex";
	argv[a++] = "break gdb_target_ready";
	argv[a++] = "-ex";
	argv[a++] = "run";
	for (size_t i = 0; i < n; i++) {
		argv[a++] = "-ex";
		argv[a++] = commands[i];
	}
	argv[a++] = target;
	argv[a] = NULL;

	int status = grt_run(argv, NULL, out, sizeof(out));
	cr_assert(WIFEXITED(status), "gdb died: %d\n%s", status, out);
	if (strstr(out, "ptrace: Operation not permitted") ||
	    strstr(out, "Could not trace the inferior process"))
		cr_skip_test("ptrace is not permitted here: %s", out);
}

/* The first match of pattern (extended regex, multi-line) in out, with
 * sub-match 1 copied into sub (if not NULL). */
static bool find(const char *pattern, char *sub, size_t sublen)
{
	regex_t re;
	regmatch_t m[2];

	cr_assert_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE), 0, "bad regex %s", pattern);
	bool found = regexec(&re, out, 2, m, 0) == 0;
	if (found && sub) {
		size_t n = (size_t)(m[1].rm_eo - m[1].rm_so);

		cr_assert_lt(n, sublen);
		memcpy(sub, out + m[1].rm_so, n);
		sub[n] = '\0';
	}
	regfree(&re);
	return found;
}

#define expect(pattern) cr_assert(find(pattern, NULL, 0), "no match for /%s/ in gdb's output:\n%s", pattern, out)

/* From info fibers to fiber bt: the ids come from the listing, found with
 * Python inside the same gdb session. */
static const char *const session[] = {
	"info fibers",
	"python import re; "
	"t = gdb.execute('info fibers', to_string=True); "
	"ids = dict((m.group(2), m.group(1)) for m in re.finditer(r'^[ *]\\s*(\\d+)\\s+\\S+\\s+\"([^\"]*)\"', t, re.M)); "
	"print('ids: deep=%s yielder=%s main=%s' % (ids['deep'], ids['yielder'], ids['main'])); "
	"gdb.execute('fiber bt ' + ids['deep']); "
	"gdb.execute('fiber bt ' + ids['yielder'])",
	"python gdb.execute('fiber bt ' + ids['main'])",
	"fiber bt 999999",
	"bt",
};

Test(gdb, info_fibers_and_fiber_bt_from_the_librarys_own_script)
{
	char id[32], op[32];

	run_gdb(session, sizeof(session) / sizeof(session[0]));
	cr_assert_null(strstr(out, "Undefined info command"),
		       "the script was not loaded from the library:\n%s", out);
	cr_assert_null(strstr(out, "Python Exception"), "%s", out);
	/* info fibers: the hub, then every fiber with its state and wait. */
	char want[128];
	snprintf(want, sizeof(want), "^greenring hub %s on thread [0-9]+: 5 fibers", grt_hub());
	expect(want);
	expect("^\\*[ ]+[0-9]+  running +\"main\"");
	expect("^ +[0-9]+  parked +\"deep\" +gr_event_wait: queue 0x[0-9a-f]+$");
	expect("^ +[0-9]+  parked +\"sleeper\" +gr_sleep: op timeout fd -1, deadline \\+(59|60)\\.[0-9]+ s$");
	/* io_uring reads; epoll and poll wait for readiness. */
	cr_assert(find("^ +[0-9]+  parked +\"reader\" +gr_read: op ([a-z]+) fd [0-9]+$", op,
		       sizeof(op)), "%s", out);
	cr_assert_str_eq(op, strcmp(grt_hub(), "io_uring") == 0 ? "read" : "poll");
	expect("^ +[0-9]+  runnable +\"yielder\" *$");
	expect("^ +[0-9]+  new +\"fresh\" *$");

	/* fiber bt of the parked fiber: its frames, innermost first, down to
	 * the runtime's entry. */
	cr_assert(find("ids: deep=([0-9]+)", id, sizeof(id)), "%s", out);
	snprintf(want, sizeof(want), "^fiber %s \"deep\" \\(parked, in gr_event_wait: queue", id);
	expect(want);
	/* "#5  0x... in gr_event_wait () from ..." without debug information,
	 * "#5  gr_event_wait (e=..., deadline=-1) at sync.c:103" with it. */
	expect("^#[0-9]+ +(0x[0-9a-f]+ in )?gr_event_wait \\(");
	const char *c = strstr(out, " deep_wait_c ("), *b = strstr(out, " deep_wait_b (");
	const char *a = strstr(out, " deep_wait_a ("), *entry = strstr(out, " fiber_main (");
	cr_assert(c && b && a && entry, "frames missing from fiber bt:\n%s", out);
	cr_assert(c < b && b < a && a < entry, "frames out of order:\n%s", out);
	/* The runnable one too: it switched away in its yield. */
	cr_assert(find("ids: deep=[0-9]+ yielder=([0-9]+)", id, sizeof(id)), "%s", out);
	snprintf(want, sizeof(want), "^fiber %s \"yielder\" \\(runnable\\)", id);
	expect(want);
	expect("^#[0-9]+ +(0x[0-9a-f]+ in )?yielder \\(");
	/* The running fiber has no saved context; an unknown id is said so. */
	expect("greenring: fiber [0-9]+ is running on thread [0-9]+: use `bt` there");
	expect("greenring: no fiber 999999");
	/* And the thread's registers are its own again: bt is main's. */
	const char *last = strstr(out, "greenring: no fiber 999999");
	cr_assert_not_null(strstr(last, "#0  "), "no bt after the fibers':\n%s", last);
	cr_assert_not_null(strstr(strstr(last, "#0  "), " gdb_target_ready ("),
			   "registers not restored:\n%s", last);
	cr_assert_not_null(strstr(last, " main ("), "%s", last);
}
