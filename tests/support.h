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
#include <stdbool.h>
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

/* Green: send, or receive, exactly len bytes on fd (looping on short calls).
 * false on an error or end of file first (errno says which). Switches. */
bool grt_send_all(int fd, const void *buf, size_t len);
bool grt_recv_all(int fd, void *buf, size_t len);

/* Fibers never cr_assert (a failed assertion must not unwind a fiber's
 * stack): they note failures with grt_fail(), and the test body checks with
 * grt_assert_no_failures() after joining them. */
extern int grt_failures;
extern char grt_first_failure[256];
void grt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define grt_assert_no_failures()                                                          \
	cr_assert_eq(grt_failures, 0, "%d failures in fibers; first: %s", grt_failures,   \
		     grt_first_failure)

/* A forked child reports through grt_report_fd (the write end of a pipe the
 * parent reads): grt_child_exit() writes the formatted report and _exits,
 * 0 if the report is "ok", else 1. It never returns into Criterion. */
extern int grt_report_fd;
_Noreturn void grt_child_exit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
