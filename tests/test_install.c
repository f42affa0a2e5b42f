/* test_install.c — the installed tree is usable: `cmake --install` into a
 * temporary prefix, then a tiny consumer is built against it two ways,
 * find_package(greenring) in a CMake project and a plain cc with
 * pkg-config, and run. Hub-independent: runs once (GREENRING_SOURCE_DIR and
 * GREENRING_BINARY_DIR come from ctest). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

TestSuite(install, .timeout = 240);

/* A sanitized library needs a sanitized consumer (the runtime must come
 * first); mirror this build's flags. */
#if defined(__SANITIZE_ADDRESS__)
#define SAN_FLAGS "-fsanitize=address,undefined"
#elif defined(__SANITIZE_THREAD__)
#define SAN_FLAGS "-fsanitize=thread"
#else
#define SAN_FLAGS ""
#endif

static const char consumer_c[] =
	"#include <greenring.h>\n"
	"#include <stdio.h>\n"
	"#include <stdint.h>\n"
	"static void *twice(void *arg)\n"
	"{\n"
	"\tgr_sleep(GR_MSEC);\n"
	"\treturn (void *)(2 * (intptr_t)arg);\n"
	"}\n"
	"int main(void)\n"
	"{\n"
	"\tvoid *res = NULL;\n"
	"\tgr_fiber *f = gr_spawn(twice, (void *)21);\n"
	"\tif (!f || gr_sleep(0) != 0 || gr_join(f, &res, GR_FOREVER) != 0)\n"
	"\t\treturn 1;\n"
	"\tprintf(\"result=%d hub=%s\\n\", (int)(intptr_t)res, gr_hub_name());\n"
	"\treturn 0;\n"
	"}\n";

static const char consumer_cmake[] =
	"cmake_minimum_required(VERSION 3.25)\n"
	"project(greenring_consumer C)\n"
	"find_package(greenring REQUIRED)\n"
	"add_executable(consumer main.c)\n"
	"target_link_libraries(consumer PRIVATE greenring::greenring)\n";

static char tmpdir[256];
static char log_path[300];

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");

	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fputs(text, f) >= 0, 1);
	cr_assert_eq(fclose(f), 0);
}

static const char *log_tail(void)
{
	static char buf[3000];
	FILE *f = fopen(log_path, "re");
	size_t n = 0;

	buf[0] = '\0';
	if (!f)
		return buf;
	fseek(f, 0, SEEK_END);
	long size = ftell(f);
	fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Run a shell command, output appended to the log; its exit status. */
static int sh(const char *fmt, ...)
{
	char cmd[4096], full[4500];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	FILE *log = fopen(log_path, "ae");
	if (log) {
		fprintf(log, "$ %s\n", cmd);
		fclose(log);
	}
	snprintf(full, sizeof(full), "{ %s; } >>'%s' 2>&1 </dev/null", cmd, log_path);
	int st = system(full);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Run a command and capture its stdout. */
static int capture(char *out, size_t len, const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	FILE *p = popen(cmd, "re");
	cr_assert_not_null(p);
	size_t n = fread(out, 1, len - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int have(const char *tool)
{
	return sh("command -v %s", tool) == 0;
}

static void setup_install(void)
{
	const char *bin = getenv("GREENRING_BINARY_DIR");

	if (!bin || !*bin)
		cr_skip_test("GREENRING_BINARY_DIR is not set (run through ctest)");
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/greenring-install-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
	snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
	if (!have("cmake"))
		cr_skip_test("cmake is not installed");
	cr_assert_eq(sh("cmake --install '%s' --prefix '%s/prefix'", bin, tmpdir), 0,
		     "cmake --install failed:\n%s", log_tail());
	char src[400];
	snprintf(src, sizeof(src), "%s/src", tmpdir);
	cr_assert_eq(mkdir(src, 0700), 0);
	char path[500];
	snprintf(path, sizeof(path), "%s/main.c", src);
	write_file(path, consumer_c);
	snprintf(path, sizeof(path), "%s/CMakeLists.txt", src);
	write_file(path, consumer_cmake);
}

static void cleanup(void)
{
	if (tmpdir[0])
		sh("rm -rf '%s'", tmpdir);
}

static void expect_runs(const char *exe)
{
	char out[512];
	int rc = capture(out, sizeof(out), "env -u GREENRING_HUB '%s' 2>&1", exe);

	cr_assert_eq(rc, 0, "%s exited with %d: %s", exe, rc, out);
	cr_assert_eq(strncmp(out, "result=42 hub=", 14), 0, "%s printed: %s", exe, out);
}

Test(install, find_package_consumer_builds_and_runs)
{
	setup_install();
	int rc = sh("cmake -S '%s/src' -B '%s/build' -DCMAKE_PREFIX_PATH='%s/prefix' "
		    "-DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS='%s' -DCMAKE_EXE_LINKER_FLAGS='%s'",
		    tmpdir, tmpdir, tmpdir, SAN_FLAGS, SAN_FLAGS);
	cr_assert_eq(rc, 0, "configuring a find_package(greenring) consumer failed:\n%s", log_tail());
	cr_assert_eq(sh("cmake --build '%s/build'", tmpdir), 0, "building the consumer failed:\n%s",
		     log_tail());
	char exe[400];
	snprintf(exe, sizeof(exe), "%s/build/consumer", tmpdir);
	expect_runs(exe);
	cleanup();
}

Test(install, pkg_config_consumer_builds_and_runs)
{
	setup_install();
	if (!have("pkg-config")) {
		cleanup();
		cr_skip_test("pkg-config is not installed");
	}
	char pcdir[600], flags[2048];
	/* Wherever the library directory is (lib, lib64, lib/<multiarch>). */
	int rc = capture(pcdir, sizeof(pcdir), "dirname \"$(find '%s/prefix' -name greenring.pc | head -n1)\"",
			 tmpdir);
	pcdir[strcspn(pcdir, "\n")] = '\0';
	cr_assert(rc == 0 && strcmp(pcdir, ".") != 0, "no greenring.pc installed under %s/prefix", tmpdir);
	rc = capture(flags, sizeof(flags), "PKG_CONFIG_PATH='%s' pkg-config --cflags --libs greenring",
		     pcdir);
	flags[strcspn(flags, "\n")] = '\0';
	cr_assert_eq(rc, 0, "pkg-config --cflags --libs greenring failed");
	cr_assert_not_null(strstr(flags, tmpdir),
			   "pkg-config points outside the install prefix %s/prefix: %s", tmpdir, flags);
	char libdir[700];
	rc = capture(libdir, sizeof(libdir), "PKG_CONFIG_PATH='%s' pkg-config --variable=libdir greenring",
		     pcdir);
	libdir[strcspn(libdir, "\n")] = '\0';
	rc = sh("cc %s -o '%s/consumer_pc' '%s/src/main.c' %s -Wl,-rpath,'%s'", SAN_FLAGS, tmpdir, tmpdir,
		flags, libdir);
	cr_assert_eq(rc, 0, "cc with pkg-config flags failed:\n%s", log_tail());
	char exe[400];
	snprintf(exe, sizeof(exe), "%s/consumer_pc", tmpdir);
	expect_runs(exe);
	cleanup();
}

/* The gdb script is installed where gdb looks for a library's own script,
 * and gdb loads it from there by itself: the library's embedded copy is
 * declined here (its directory is not in the safe-path), so what answers
 * `info fibers` is the installed file. */
Test(install, gdb_loads_the_installed_script_by_itself)
{
	setup_install();
	if (!have("gdb")) {
		cleanup();
		cr_skip_test("gdb is not installed (tools/test installs it)");
	}
	char script[700];
	int rc = capture(script, sizeof(script), "find '%s/prefix/share/gdb/auto-load' -name 'libgreenring.so.*-gdb.py'",
			 tmpdir);
	script[strcspn(script, "\n")] = '\0';
	cr_assert(rc == 0 && script[0], "no gdb script installed under %s/prefix/share/gdb/auto-load",
		  tmpdir);
	rc = sh("cmake -S '%s/src' -B '%s/build' -DCMAKE_PREFIX_PATH='%s/prefix' "
		"-DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS='%s' -DCMAKE_EXE_LINKER_FLAGS='%s' && "
		"cmake --build '%s/build'",
		tmpdir, tmpdir, tmpdir, SAN_FLAGS, SAN_FLAGS, tmpdir);
	cr_assert_eq(rc, 0, "building the consumer failed:\n%s", log_tail());
	static char out[16384];
	rc = capture(out, sizeof(out),
		     "env -u GREENRING_HUB gdb -nx -batch "
		     "-iex 'set auto-load scripts-directory %s/prefix/share/gdb/auto-load' "
		     "-iex 'set auto-load safe-path %s/prefix/share/gdb/auto-load' "
		     "-ex 'break gr_join' -ex run -ex 'info auto-load python-scripts' -ex 'info fibers' "
		     "'%s/build/consumer' 2>&1",
		     tmpdir, tmpdir, tmpdir);
	if (strstr(out, "ptrace: Operation not permitted")) {
		cleanup();
		cr_skip_test("ptrace is not permitted here");
	}
	cr_assert_not_null(strstr(out, script), "gdb did not load %s:\n%s", script, out);
	cr_assert_not_null(strstr(out, "greenring hub "), "info fibers did not answer:\n%s", out);
	cr_assert_not_null(strstr(out, "\"main\""), "%s", out);
	cleanup();
}
