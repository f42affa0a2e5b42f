/* support.h — what every behaviour test shares.
 *
 * Each test binary runs once per hub (ctest sets GREENRING_HUB). A suite
 * declared with GRT_SUITE(name) gets:
 *   - setup: the hub named by GREENRING_HUB is created; if it cannot run on
 *     this machine the test is skipped with the reason, unless
 *     GREENRING_REQUIRE_HUBS names it (CI names all three): then it fails.
 *   - teardown: every fiber must have ended and been released, nothing may
 *     be in flight, the process must hold exactly the fds it held after
 *     the hub was created, and no child of it may be left a zombie.
 */
#ifndef GREENRING_TEST_SUPPORT_H
#define GREENRING_TEST_SUPPORT_H

#include <criterion/criterion.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <greenring.h>

void grt_setup(void);
void grt_teardown(void);

#define GRT_SUITE(name) TestSuite(name, .init = grt_setup, .fini = grt_teardown, .timeout = 60)

/* The hub this run is for ("io_uring", "epoll", "poll"). */
const char *grt_hub(void);

/* A call returning 0 or -errno: assert it succeeded, or failed with e. */
#define assert_ok(expr)                                                                  \
	do {                                                                             \
		int r_ = (int)(expr);                                                    \
		cr_assert_eq(r_, 0, "%s: %s", #expr, strerror(-r_));                     \
	} while (0)

#define assert_err(expr, e)                                                              \
	do {                                                                             \
		int r_ = (int)(expr);                                                    \
		cr_assert_eq(r_, -(e), "%s = %d (%s), expected -%s", #expr, r_,          \
			     r_ < 0 ? strerror(-r_) : "ok", #e);                          \
	} while (0)

/* Open fds of this process, counted from /proc/self/fd. */
int grt_count_fds(void);

/* Open fds whose /proc/self/fd link holds `needle` ("anon_inode:",
 * "signalfd"), and the lowest-listed such fd in *first (-1: none; first may
 * be NULL). -1 if /proc cannot be read. No assertion: fork children use it. */
int grt_fds_matching(const char *needle, int *first);

/* Children of this process that have ended and were never reaped (state Z
 * in /proc/PID/stat): the teardown fails a test that leaves one. */
int grt_count_zombies(void);

/* A connected pair of loopback TCP sockets (fds[0] client, fds[1] server side). */
void grt_tcp_pair(int fds[2]);
/* A connected pair of UDP sockets on loopback: fds[0] sends to fds[1]. */
void grt_udp_pair(int fds[2]);
/* A pseudo-terminal in raw mode (bytes pass at once, unechoed), both ends
 * close-on-exec; skips the test where there is none. */
void grt_raw_pty(int *master, int *slave);

/* A listening loopback TCP socket on an ephemeral port; *port gets it. */
int grt_listener(int *port);

/* Connect a new (blocking) TCP socket to 127.0.0.1:port with plain connect(). */
int grt_connect_plain(int port);

/* Run argv (argv[0] a path, or a name looked up in PATH) in a child with
 * the NAME=value strings of env (NULL-terminated; env itself may be NULL)
 * added to its environment, its stdout and stderr read into out
 * (NUL-terminated, cut at len - 1). Returns its wait status. */
int grt_run(const char *const argv[], const char *const env[], char *out, size_t len);

/* A green TCP client (TCP_NODELAY) connected to 127.0.0.1:port with
 * gr_connect; rcvbuf > 0 sets SO_RCVBUF first. The fd, or -1 with errno. */
int grt_dial(int port, int rcvbuf);

/* A forked child reports through grt_report_fd (the write end of a pipe the
 * parent reads): grt_child_exit() writes the formatted report and _exits,
 * 0 if the report is "ok", else 1. It never returns into Criterion. */
extern int grt_report_fd;
_Noreturn void grt_child_exit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Fork such a child: 0 in the child (grt_report_fd set), its pid in the
 * parent, with the report's read end in *report. grt_child_expect_ok reads
 * the report, reaps the child and fails the test unless it said "ok" and
 * exited 0 (a child killed by a signal is named). */
pid_t grt_fork_reporting(int *report);
void grt_child_expect_ok(pid_t pid, int report);

/* A thread running fn(arg), on a hub of this run's kind (with_hub) or with
 * no hub at all. The thread only records; grt_thread_join asserts: the hub
 * could be made, and nothing made one for a plain thread. grt_thread_join
 * keeps the caller's hub running while it waits (1 ms naps), so that the
 * caller's fibers, and what other threads ask of its hub, go on. */
struct grt_thread {
	pthread_t t;
	int with_hub;
	void (*fn)(void *arg);
	void *arg;
	int hub_err;
	int had_hub;
	atomic_int done;
};
void grt_thread_start(struct grt_thread *t, int with_hub, void (*fn)(void *), void *arg);
void grt_thread_join(struct grt_thread *t);

/* Failures seen where cr_assert must not run (fibers: an assertion must not
 * unwind a fiber's stack; other threads): counted, the first one's message
 * kept. Thread-safe. The test body asserts with grt_assert_no_failures()
 * after joining. grt_fail_reset() starts a count afresh. */
void grt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int grt_failures(const char **first);
void grt_fail_reset(void);
#define grt_assert_no_failures()                                                          \
	do {                                                                              \
		const char *first_ = "";                                                  \
		int n_ = grt_failures(&first_);                                           \
		cr_assert_eq(n_, 0, "%d failures in fibers; first: %s", n_, first_);      \
	} while (0)

/* Make sure this process may open n fds (raising the soft limit to the
 * hard one if need be); skips the test when it cannot. */
void grt_enough_fds(int n);

/* Green: send all of buf / receive exactly len bytes; false on an error (or
 * EOF) first. */
bool grt_send_all(int fd, const void *buf, size_t len);
bool grt_recv_all(int fd, void *buf, size_t len);
/* Plain: read and discard what a socket holds now, without waiting; how
 * many bytes that was. */
size_t grt_drain_now(int fd);

/* A TCP socket connected to 127.0.0.1:port with gr_connect (TCP_NODELAY), or
 * -1 with the failure noted (grt_fail). */
int grt_connect_green(int port);

/* Randomized tests: a splitmix64 per thread, seeded with grt_rng_seed. */
void grt_rng_seed(uint64_t seed);
uint64_t grt_rng(void);
unsigned grt_pick(unsigned n);
/* A random deadline for one call: forever, try once, already past, or within
 * 300 us. */
int64_t grt_random_deadline(void);

/* Let other fibers run for a random while (none, a yield, up to 100 us);
 * -ECANCELED tells a killed fiber to stop. */
int grt_random_pause(void);

/* The byte at offset i of stream `seed`: echoed messages are checked byte
 * by byte. */
static inline unsigned char grt_pattern(unsigned seed, size_t i)
{
	return (unsigned char)(seed * 131u + i * 7u + (i >> 8));
}

/* The byte at position `pos` of the one test stream that files and long
 * socket streams carry: a hash of the position, so no period a misplaced
 * read could hide in. grt_stream_check fails the test at the first byte
 * that differs. */
static inline unsigned char grt_stream_byte(uint64_t pos)
{
	uint64_t x = pos * 0x9e3779b97f4a7c15ull;

	x ^= x >> 29;
	return (unsigned char)(x ^ (x >> 17) ^ (pos >> 12));
}
void grt_stream_fill(unsigned char *buf, size_t n, uint64_t pos);
void grt_stream_check(const unsigned char *buf, size_t n, uint64_t pos);

/* An echo client fiber (gr_spawn(grt_echo_client, &c)): connects to port,
 * sends `rounds` messages of `size` bytes of stream seed + round, checks
 * each echo; failures go to grt_fail. */
struct grt_echo_client {
	int port;
	unsigned seed;
	size_t size;
	int rounds;
};
void *grt_echo_client(void *arg);

/* Make the number `to` name the file `from` names, and close `from` (unless
 * it is `to` already). 0, or -1 with errno. */
int grt_move_fd(int from, int to);

/* Yield (1 ms naps) until *flag is nonzero; fails the test after 5 s. */
void grt_await_flag(atomic_int *flag, const char *what);

/* Run out of fds: lower RLIMIT_NOFILE to `room` numbers above the highest
 * open fd and take every free number below it with dup(0) (at most `max`,
 * into fill[]); *old keeps the limit. How many fillers: every call that
 * makes an fd fails with EMFILE until some are closed. */
int grt_exhaust_fds(int *fill, int max, int room, struct rlimit *old);
/* Close fill[0..n) and restore the limit. */
void grt_restore_fds(const int *fill, int n, const struct rlimit *old);

/* A watchdog for a wait that would block the hub's thread, which no green
 * deadline can end: a plain thread that, unless told the call returned
 * within `after`, frees the blocked system call itself (writes a byte to
 * `feed`, or drains `drain`) and says so. The test then fails with that
 * message instead of hanging. */
struct grt_watchdog {
	pthread_t t;
	int64_t after;
	int feed;                       /* >= 0: write a byte here to rescue */
	int drain;                      /* >= 0: read everything here to rescue */
	atomic_int done;                /* the test: the call returned */
	atomic_int rescued;             /* the watchdog had to free the thread */
};
void grt_watchdog_start(struct grt_watchdog *w, int64_t after, int feed, int drain);
/* Stops the watchdog; whether it had to free the thread. */
bool grt_watchdog_stop(struct grt_watchdog *w);

#endif
