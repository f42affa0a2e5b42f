/* test_patch_redis.c — the patch library's proof with hiredis: 200 fibers
 * of one thread, each with its own blocking redisContext. 100 wait in
 * BLPOP (with a 5 s timeout) for a list that only another fiber's RPUSH
 * fills, after its own SET and GET. If a blocking call held the thread, the
 * first BLPOP would sit out its 5 s and come back empty, and every pusher
 * would wait behind it.
 *
 * A real redis-server runs for the whole binary (tests/grt_servers.h), as
 * the user nobody, on a unix socket in a temporary directory, with no
 * persistence. Each hub is one parameter of the test. */
#define _GNU_SOURCE
#include <hiredis.h>
#include <stdatomic.h>

#include "grt_servers.h"

#define PAIRS 100
#define VAR "GRT_REDIS"

static struct grt_server rs = { .name = "redis" };

static bool redis_ready(void *sock)
{
	redisContext *c = redisConnectUnix(sock);
	redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
	bool up = r && r->type == REDIS_REPLY_STATUS;

	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
	return up;
}

static void redis_start(void)
{
	static char sock[200];
	char bin[256], log[200];

	if (!grt_server_find("/usr/bin/redis-server", bin, sizeof(bin))) {
		grt_server_report(VAR, "_SKIP", "redis-server is not installed (apt-get install redis-server)");
		return;
	}
	if (grt_server_user(&rs) < 0 || grt_server_mkdir(&rs) < 0) {
		grt_server_report(VAR, "_ERROR", "no user nobody, or no temporary directory");
		return;
	}
	snprintf(sock, sizeof(sock), "%s/redis.sock", rs.dir);
	snprintf(log, sizeof(log), "%s/redis.log", rs.dir);
	char *argv[] = { bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "777",
			 "--dir", rs.dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
			 "--maxclients", "1000", NULL };
	rs.pid = grt_server_spawn(&rs, argv, log);
	grt_server_await(&rs, VAR, redis_ready, sock, 10, sock, log);
}

/* Once per binary. */
ReportHook(PRE_ALL)(struct criterion_test_set *set) { (void)set; redis_start(); }
ReportHook(POST_ALL)(struct criterion_global_stats *st) { (void)st; grt_server_stop(&rs, SIGTERM); }

TestSuite(redis, .timeout = 60);

struct run {
	const char *sock;
	char prefix[64];          /* keys of this run only: the server is shared */
	atomic_int popped, set_got, pushed;
	char error[256];
};

struct job {
	struct run *r;
	int i;
};

static redisContext *connect_or_note(struct run *r)
{
	redisContext *c = redisConnectUnix(r->sock);

	if (!c || c->err) {
		snprintf(r->error, sizeof(r->error), "connect: %s", c ? c->errstr : "no memory");
		if (c)
			redisFree(c);
		return NULL;
	}
	return c;
}

static void *popper(void *arg)
{
	struct job *j = arg;
	redisContext *c = connect_or_note(j->r);

	if (!c)
		return NULL;
	redisReply *rep = redisCommand(c, "BLPOP %s:list:%d 5", j->r->prefix, j->i);
	char want[64];
	snprintf(want, sizeof(want), "v%d", j->i);
	if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    strcmp(rep->element[1]->str, want) == 0)
		atomic_fetch_add(&j->r->popped, 1);
	else
		snprintf(j->r->error, sizeof(j->r->error), "BLPOP %d: %s", j->i,
			 !rep ? c->errstr : rep->type == REDIS_REPLY_NIL ? "timed out" : "wrong reply");
	if (rep)
		freeReplyObject(rep);
	redisFree(c);
	return NULL;
}

static void *pusher(void *arg)
{
	struct job *j = arg;
	redisContext *c = connect_or_note(j->r);

	if (!c)
		return NULL;
	redisReply *rep = redisCommand(c, "SET %s:key:%d value%d", j->r->prefix, j->i, j->i);
	if (rep)
		freeReplyObject(rep);
	rep = redisCommand(c, "GET %s:key:%d", j->r->prefix, j->i);
	char want[64];
	snprintf(want, sizeof(want), "value%d", j->i);
	if (rep && rep->type == REDIS_REPLY_STRING && strcmp(rep->str, want) == 0)
		atomic_fetch_add(&j->r->set_got, 1);
	if (rep)
		freeReplyObject(rep);
	rep = redisCommand(c, "RPUSH %s:list:%d v%d", j->r->prefix, j->i, j->i);
	if (rep && rep->type == REDIS_REPLY_INTEGER)
		atomic_fetch_add(&j->r->pushed, 1);
	if (rep)
		freeReplyObject(rep);
	redisFree(c);
	return NULL;
}

GRT_HUB_PARAMS(redis, two_hundred_fibers_with_blocking_contexts)

ParameterizedTest(int *hub, redis, two_hundred_fibers_with_blocking_contexts)
{
	const char *sock = grt_server_dir(VAR);
	static struct run r;
	static struct job jobs[PAIRS];
	gr_fiber *f[2 * PAIRS];

	grt_use_hub(*hub);
	memset(&r, 0, sizeof(r));
	r.sock = sock;
	snprintf(r.prefix, sizeof(r.prefix), "grt:%s:%d", grt_hub(), (int)getpid());
	int64_t t0 = gr_now();
	/* The poppers first: they are in BLPOP before any pusher runs. */
	for (int i = 0; i < PAIRS; i++) {
		jobs[i] = (struct job){ &r, i };
		f[i] = gr_spawn(popper, &jobs[i]);
		cr_assert_not_null(f[i]);
	}
	for (int i = 0; i < PAIRS; i++) {
		f[PAIRS + i] = gr_spawn(pusher, &jobs[i]);
		cr_assert_not_null(f[PAIRS + i]);
	}
	for (int i = 0; i < 2 * PAIRS; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	double took = (gr_now() - t0) / 1e9;
	cr_assert_eq(atomic_load(&r.set_got), PAIRS, "SET/GET: %d of %d; %s", atomic_load(&r.set_got),
		     PAIRS, r.error);
	cr_assert_eq(atomic_load(&r.pushed), PAIRS, "RPUSH: %d of %d; %s", atomic_load(&r.pushed), PAIRS,
		     r.error);
	cr_assert_eq(atomic_load(&r.popped), PAIRS, "BLPOP: %d of %d; %s", atomic_load(&r.popped), PAIRS,
		     r.error);
	/* A BLPOP that held the thread would have waited its 5 s. */
	cr_assert_lt(took, 4.0, "took %.2f s", took);
	cr_log_info("hiredis on %s: 200 fibers (100 BLPOP, 100 SET/GET/RPUSH) in %.3f s", grt_hub(),
		    took);
	grt_teardown();
}
