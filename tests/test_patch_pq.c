/* test_patch_pq.c — the patch library's proof with libpq, a client nobody
 * here wrote: 100 fibers of one thread, each with its own connection,
 * each running SELECT pg_sleep(0.2) through the unmodified blocking PQexec.
 * Serially that is 20 s; concurrently, a little over 0.2 s.
 *
 * A real PostgreSQL runs for the whole binary (tests/grt_servers.h): initdb
 * into a temporary directory and the server on a unix socket there, as the
 * user nobody. Each hub is one parameter of the test. */
#define _GNU_SOURCE
#include <libpq-fe.h>
#include <stdatomic.h>

#include "grt_servers.h"

#define FIBERS 100
#define VAR "GRT_POSTGRES"

static struct grt_server pg = { .name = "postgres" };

static bool pg_ready(void *conninfo)
{
	return PQping(conninfo) == PQPING_OK;
}

static void pg_start(void)
{
	static char conninfo[300];
	char initdb[256], postgres[256], data[200], log[200], tail[400];

	if (!grt_server_find("/usr/lib/postgresql/*/bin/postgres", postgres, sizeof(postgres)) ||
	    !grt_server_find("/usr/lib/postgresql/*/bin/initdb", initdb, sizeof(initdb))) {
		grt_server_report(VAR, "_SKIP",
				  "PostgreSQL is not installed (apt-get install postgresql)");
		return;
	}
	if (grt_server_user(&pg) < 0 || grt_server_mkdir(&pg) < 0) {
		grt_server_report(VAR, "_ERROR", "no user nobody, or no temporary directory");
		return;
	}
	snprintf(data, sizeof(data), "%s/data", pg.dir);
	snprintf(log, sizeof(log), "%s/initdb.log", pg.dir);
	char *init_argv[] = { initdb, "-D", data, "--no-sync", "-A", "trust", "-U", "postgres",
			      "--locale=C", "-E", "UTF8", NULL };
	pid_t pid = grt_server_spawn(&pg, init_argv, log);
	int st = pid > 0 ? grt_server_wait_exit(pid, 120) : -1;
	if (st != 0) {
		grt_server_log_tail(log, tail, sizeof(tail));
		char msg[600];
		snprintf(msg, sizeof(msg), "initdb failed (status %d): %s", st, tail);
		grt_server_report(VAR, "_ERROR", msg);
		return;
	}
	/* A unix socket in the directory, no TCP; room for every fiber's
	 * connection; no fsync (nothing here must survive a crash). */
	snprintf(log, sizeof(log), "%s/postgres.log", pg.dir);
	char *argv[] = { postgres, "-D", data, "-k", pg.dir, "-c", "listen_addresses=",
			 "-c", "max_connections=130", "-c", "fsync=off", "-c", "full_page_writes=off",
			 "-c", "synchronous_commit=off", NULL };
	pg.pid = grt_server_spawn(&pg, argv, log);
	snprintf(conninfo, sizeof(conninfo), "host=%s user=postgres dbname=postgres connect_timeout=2",
		 pg.dir);
	grt_server_await(&pg, VAR, pg_ready, conninfo, 30, pg.dir, log);
}

/* Once per binary; SIGINT is PostgreSQL's fast shutdown. */
ReportHook(PRE_ALL)(struct criterion_test_set *set) { (void)set; pg_start(); }
ReportHook(POST_ALL)(struct criterion_global_stats *st) { (void)st; grt_server_stop(&pg, SIGINT); }

TestSuite(pq, .timeout = 120);

struct run {
	char conninfo[300];
	atomic_int connected, correct;
	int64_t start, last_end;
	gr_event go;              /* every fiber has connected: query */
	char error[256];
};

static void *client(void *arg)
{
	struct run *r = arg;
	int id = atomic_fetch_add(&r->connected, 0);
	PGconn *c = PQconnectdb(r->conninfo);

	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(r->error, sizeof(r->error), "connect: %s", PQerrorMessage(c));
		PQfinish(c);
		atomic_fetch_add(&r->connected, 1);
		return NULL;
	}
	id = atomic_fetch_add(&r->connected, 1);
	if (atomic_load(&r->connected) == FIBERS)
		gr_event_set(&r->go);
	gr_event_wait(&r->go, GR_FOREVER);

	char sql[64];
	snprintf(sql, sizeof(sql), "SELECT pg_sleep(0.2), %d", id);
	PGresult *res = PQexec(c, sql);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
	    atoi(PQgetvalue(res, 0, 1)) == id)
		atomic_fetch_add(&r->correct, 1);
	else
		snprintf(r->error, sizeof(r->error), "query: %s", PQresultErrorMessage(res));
	PQclear(res);
	int64_t now = gr_now();
	if (now > r->last_end)
		r->last_end = now;
	PQfinish(c);
	return NULL;
}

GRT_HUB_PARAMS(pq, a_hundred_fibers_each_with_its_own_blocking_connection)

ParameterizedTest(int *hub, pq, a_hundred_fibers_each_with_its_own_blocking_connection)
{
	const char *dir = grt_server_dir(VAR);
	static struct run r;
	gr_fiber *f[FIBERS];

	grt_use_hub(*hub);
	memset(&r, 0, sizeof(r));
	snprintf(r.conninfo, sizeof(r.conninfo),
		 "host=%s user=postgres dbname=postgres sslmode=disable gssencmode=disable", dir);
	assert_ok(gr_event_init(&r.go));
	int64_t t0 = gr_now();
	for (int i = 0; i < FIBERS; i++) {
		f[i] = gr_spawn(client, &r);
		cr_assert_not_null(f[i]);
	}
	/* Once all are connected: the queries, timed from there. */
	assert_ok(gr_event_wait(&r.go, gr_now() + 60 * GR_SEC));
	int64_t t1 = gr_now();
	for (int i = 0; i < FIBERS; i++)
		assert_ok(gr_join(f[i], NULL, GR_FOREVER));
	double connect_s = (t1 - t0) / 1e9, query_s = (r.last_end - t1) / 1e9;
	cr_assert_eq(atomic_load(&r.correct), FIBERS, "%d correct of %d; last error: %s",
		     atomic_load(&r.correct), FIBERS, r.error);
	/* Serially: 100 x 0.2 s = 20 s; concurrently about 0.5 s here, with
	 * room for a loaded machine. */
	cr_assert_lt(query_s, 1.5, "the 100 queries took %.2f s", query_s);
	cr_log_info("libpq on %s: 100 connections in %.2f s, 100 x pg_sleep(0.2) in %.2f s",
		    grt_hub(), connect_s, query_s);
	assert_ok(gr_event_destroy(&r.go));
	grt_teardown();
}
