/* test_patch_curl.c — the patch library's proof with libcurl's easy
 * interface: 100 fibers of one thread, each in a blocking
 * curl_easy_perform. libcurl waits inside with poll() on its socket and
 * its wake-up socketpair: the patched poll carries it.
 *   - against the project's bench/http_server (a child process): every
 *     body checked, and the transfers overlap;
 *   - against a server of fibers in this very thread that answers each
 *     request after 200 ms: the 100 transfers take about 0.2 s, not 20 s,
 *     and could not end at all if a transfer held the thread.
 * Runs once per hub. */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdatomic.h>

#include "grt_child.h"
#include "support.h"

GRT_SUITE(curl);

#define FIBERS 100

struct run {
	char url[64];
	atomic_int ok, inflight, max_inflight;
	char error[CURL_ERROR_SIZE + 64];
};

struct body {
	char data[256];
	size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t len = size * n;

	if (b->len + len >= sizeof(b->data))
		return 0; /* too long: curl fails the transfer */
	memcpy(b->data + b->len, p, len);
	b->len += len;
	return len;
}

static void *fetch(void *arg)
{
	struct run *r = arg;
	struct body b = { .len = 0 };
	char err[CURL_ERROR_SIZE] = "";
	CURL *c = curl_easy_init();
	long status = 0;

	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_URL, r->url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	int now = atomic_fetch_add(&r->inflight, 1) + 1;
	for (int m = atomic_load(&r->max_inflight); now > m;)
		if (atomic_compare_exchange_weak(&r->max_inflight, &m, now))
			break;
	CURLcode rc = curl_easy_perform(c);
	atomic_fetch_sub(&r->inflight, 1);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (rc == CURLE_OK && status == 200 && b.len == 13 && memcmp(b.data, "Hello, World!", 13) == 0)
		atomic_fetch_add(&r->ok, 1);
	else
		snprintf(r->error, sizeof(r->error), "curl: %s (%s), status %ld, %zu bytes",
			 curl_easy_strerror(rc), err, status, b.len);
	curl_easy_cleanup(c);
	return NULL;
}

static double fetch_all(struct run *r)
{
	gr_fiber *f[FIBERS];
	int64_t t0 = gr_now();

	for (int i = 0; i < FIBERS; i++) {
		f[i] = gr_spawn(fetch, r);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < FIBERS; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	cr_assert_eq(atomic_load(&r->ok), FIBERS, "%d of %d transfers good; last: %s",
		     atomic_load(&r->ok), FIBERS, r->error);
	return (gr_now() - t0) / 1e9;
}

Test(curl, a_hundred_blocking_transfers_from_bench_http_server)
{
	const char *prog = grt_child_program("GREENRING_HTTP_SERVER");
	struct grt_child srv;
	char *argv[] = { (char *)prog, "--hub", (char *)grt_hub(), "--port", "0", NULL };
	static struct run r;

	cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
	grt_child_start(&srv, argv);
	cr_assert_gt(srv.port, 0, "http_server said: %s", srv.line);
	memset(&r, 0, sizeof(r));
	snprintf(r.url, sizeof(r.url), "http://127.0.0.1:%d/", srv.port);
	double took = fetch_all(&r);
	cr_assert_gt(atomic_load(&r.max_inflight), 1, "the transfers never overlapped");
	cr_log_info("libcurl on %s: 100 transfers from http_server in %.3f s, up to %d at once",
		    grt_hub(), took, atomic_load(&r.max_inflight));
	cr_assert_eq(grt_child_stop(&srv, SIGTERM), 0);
	curl_global_cleanup();
}

/* A slow HTTP server of fibers in this thread: each response after 200 ms. */
static void slow_hello(int fd, const struct sockaddr *peer, void *arg)
{
	static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n"
				   "Connection: close\r\n\r\nHello, World!";
	char buf[1024];
	size_t have = 0;

	(void)peer;
	(void)arg;
	while (have < sizeof(buf) && !memmem(buf, have, "\r\n\r\n", 4)) {
		ssize_t n = gr_recv(fd, buf + have, sizeof(buf) - have, 0);

		if (n <= 0)
			return;
		have += (size_t)n;
	}
	gr_sleep(200 * GR_MSEC);
	gr_send(fd, resp, sizeof(resp) - 1, 0);
}

Test(curl, a_hundred_slow_transfers_overlap_in_one_thread)
{
	static struct run r;
	struct gr_server_opts opts = { 0 };
	gr_server *s = gr_server_create("127.0.0.1", 0, slow_hello, NULL, &opts);

	cr_assert_eq(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
	cr_assert_not_null(s);
	assert_ok(gr_server_start(s));
	memset(&r, 0, sizeof(r));
	snprintf(r.url, sizeof(r.url), "http://127.0.0.1:%d/", gr_server_port(s));
	double took = fetch_all(&r);
	/* Serially: 100 x 0.2 s = 20 s. */
	cr_assert_lt(took, 3.0, "took %.2f s", took);
	cr_log_info("libcurl on %s: 100 transfers of 200 ms each in %.3f s", grt_hub(), took);
	assert_ok(gr_server_stop(s, 0));
	assert_ok(gr_server_wait(s, GR_FOREVER));
	gr_server_free(s);
	curl_global_cleanup();
}
