/* raw_epoll_echo — the readiness baseline: a hand-written, single-threaded,
 * non-blocking epoll echo server.  The greenring epoll hub is judged by its server
 * CPU per message against this program.
 *
 * Shape: every descriptor is registered once, edge-triggered, for input and output
 * together, and never modified afterwards (no epoll_ctl per message).  On an event a
 * connection first flushes output still pending, then reads until EAGAIN, writing
 * back each chunk as it is read.  When the socket's send buffer is full the rest of
 * the chunk stays in the connection's buffer and reading pauses; the EPOLLOUT edge
 * that follows resumes both.  So the buffer never holds more than one read's worth.
 * SIGINT/SIGTERM arrive through a signalfd in the same epoll set and end the loop;
 * the exit status is then 0.
 *
 * Usage: raw_epoll_echo [--host ADDR] [--port N]   (--hub, --threads ignored) */
#define _GNU_SOURCE
#include "bench_common.h"

#include <sys/epoll.h>

enum {
	CONN_BUF = 16384, /* per connection; the same size as raw_uring_echo's */
	MAX_EVENTS = 512,
};

struct conn {
	struct conn *prev, *next; /* the live list, walked only at shutdown */
	int fd;
	size_t off, len;          /* buf[off, len) is read and not yet written back */
	char buf[CONN_BUF];
};

struct server {
	int ep, lfd, sfd;
	bool stopping;
	struct conn *conns;
};

/* epoll_event.data for the two descriptors that are not connections. */
static char listener_tag, signal_tag;

static void conn_close(struct server *s, struct conn *c)
{
	/* close() also removes the descriptor from the epoll set. */
	if (close(c->fd) != 0)
		warn("close");
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

/* Write buf[off, len).  Returns 1 when all is written, 0 when the socket is full
 * (the EPOLLOUT edge will call back), -1 when the connection is broken. */
static int conn_flush(struct conn *c)
{
	while (c->off < c->len) {
		ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
		if (n > 0)
			c->off += (size_t)n;
		else if (n < 0 && errno == EAGAIN)
			return 0;
		else if (n < 0 && errno != EINTR)
			return -1;
	}
	c->off = c->len = 0;
	return 1;
}

/* Handle any event on a connection: which bits were set does not matter, since
 * the flush and the reads below find out for themselves (EOF and errors included). */
static void conn_serve(struct server *s, struct conn *c)
{
	int flushed = conn_flush(c);
	while (flushed == 1) {
		ssize_t n = recv(c->fd, c->buf, CONN_BUF, 0);
		if (n > 0) {
			c->len = (size_t)n;
			flushed = conn_flush(c);
		} else if (n < 0 && errno == EAGAIN) {
			return; /* drained: the next arrival raises a new edge */
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			break; /* EOF or an error */
		}
	}
	if (flushed == 0)
		return; /* paused until EPOLLOUT; unread input stays in the kernel */
	conn_close(s, c);
}

static void accept_all(struct server *s)
{
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN)
				return; /* edge-triggered: drained, wait for the next edge */
			if (bench_accept_error_is_transient(errno))
				continue;
			/* Out of descriptors or memory: the pending connection would keep
			 * the listener readable without a new edge; die loudly instead of
			 * reporting a figure for a server that stopped accepting. */
			err(1, "accept4");
		}
		if (bench_set_nodelay(fd) != 0) {
			warn("setsockopt(TCP_NODELAY)");
			if (close(fd) != 0)
				warn("close");
			continue;
		}
		struct conn *c = malloc(sizeof(*c));
		if (c == NULL)
			err(1, "malloc");
		c->fd = fd;
		c->off = c->len = 0;
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
			err(1, "epoll_ctl(ADD connection)");
		c->prev = NULL;
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
	}
}

static void watch(struct server *s, int fd, void *tag)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.ptr = tag };
	if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		err(1, "epoll_ctl(ADD)");
}

int main(int argc, char **argv)
{
	struct bench_server_opts opts;
	struct server s = { 0 };
	struct epoll_event evs[MAX_EVENTS];

	bench_server_parse(argc, argv, &opts);
	bench_raise_nofile();
	s.sfd = bench_signalfd();
	s.ep = epoll_create1(EPOLL_CLOEXEC);
	if (s.ep < 0)
		err(1, "epoll_create1");
	s.lfd = bench_listen(&opts, true);
	watch(&s, s.lfd, &listener_tag);
	watch(&s, s.sfd, &signal_tag);

	while (!s.stopping) {
		int n = epoll_wait(s.ep, evs, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err(1, "epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &listener_tag)
				accept_all(&s);
			else if (p == &signal_tag)
				s.stopping = true;
			else
				conn_serve(&s, p);
		}
	}

	while (s.conns)
		conn_close(&s, s.conns);
	if (close(s.lfd) != 0 || close(s.sfd) != 0 || close(s.ep) != 0)
		err(1, "close");
	return 0;
}
