/* gdb_target.c — the program tests/test_gdb.c runs under gdb: it parks
 * fibers in known calls, at known depths, then stops in gdb_target_ready()
 * for the debugger to look. The hub is the one GREENRING_HUB names. Not a
 * Criterion test: a plain program, so that gdb sees nothing else. */
#include <greenring.h>
#include <stdio.h>
#include <unistd.h>

static gr_event never_set;
static int pipe_fds[2];

/* Three frames of our own above the wait, none a tail call (built with
 * -fno-optimize-sibling-calls): `fiber bt` must show each. */
__attribute__((noinline)) static void deep_wait_c(void)
{
	gr_event_wait(&never_set, GR_FOREVER);
	__asm__ volatile("");
}

__attribute__((noinline)) static void deep_wait_b(void)
{
	deep_wait_c();
	__asm__ volatile("");
}

__attribute__((noinline)) static void deep_wait_a(void)
{
	deep_wait_b();
	__asm__ volatile("");
}

static void *deep(void *arg)
{
	(void)arg;
	deep_wait_a();
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	gr_sleep(60 * GR_SEC);
	return NULL;
}

static void *reader(void *arg)
{
	char c;

	(void)arg;
	return gr_read(pipe_fds[0], &c, 1) == 1 ? NULL : (void *)1;
}

/* Runnable at the breakpoint: it yielded and waits for its next turn. */
static void *yielder(void *arg)
{
	(void)arg;
	while (gr_sleep(0) == 0)
		;
	return NULL;
}

static void *fresh(void *arg)
{
	return arg;
}

/* gdb stops here. */
__attribute__((noinline)) static void gdb_target_ready(void)
{
	__asm__ volatile("");
}

static gr_fiber *spawn(const char *name, void *(*fn)(void *))
{
	struct gr_spawn_opts o = { .name = name };
	gr_fiber *f = gr_spawn_with(&o, fn, NULL);

	if (!f) {
		perror("gr_spawn_with");
		_exit(2);
	}
	return f;
}

int main(void)
{
	if (gr_event_init(&never_set) != 0 || pipe(pipe_fds) != 0)
		return 2;
	gr_fiber *f[5] = { spawn("deep", deep), spawn("sleeper", sleeper), spawn("reader", reader),
			   spawn("yielder", yielder), NULL };
	if (gr_sleep(0) != 0)
		return 3;
	f[4] = spawn("fresh", fresh); /* never run yet: state new */
	gdb_target_ready();

	gr_event_set(&never_set);
	if (write(pipe_fds[1], "x", 1) != 1)
		return 4;
	gr_kill(f[1]);
	gr_kill(f[3]);
	for (int i = 0; i < 5; i++)
		if (gr_join(f[i], NULL, GR_FOREVER) != 0)
			return 5;
	puts("gdb_target: done");
	return 0;
}
