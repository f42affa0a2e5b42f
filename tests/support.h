/* support.h — what every behaviour test shares.
 *
 * Each test binary runs once per hub (ctest sets GREENRING_HUB). A suite
 * declared with GRT_SUITE(name) gets:
 *   - setup: the hub named by GREENRING_HUB is created; if it cannot run on
 *     this machine the test is skipped with the reason, unless
 *     GREENRING_REQUIRE_HUBS names it (CI names all three): then it fails.
 *   - teardown: every fiber must have ended and been released, nothing may
 *     be in flight, and the process must hold exactly the fds it held after
 *     the hub was created.
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

/* A connected pair of loopback TCP sockets (fds[0] client, fds[1] server side). */
void grt_tcp_pair(int fds[2]);

/* A listening loopback TCP socket on an ephemeral port; *port gets it. */
int grt_listener(int *port);

/* Connect a new (blocking) TCP socket to 127.0.0.1:port with plain connect(). */
int grt_connect_plain(int port);

/* Write all of buf with gr_send (which may write less). Switches. true when
 * all is written; false (errno set) if the connection failed first. */
bool grt_send_all(int fd, const void *buf, size_t len);

#endif
