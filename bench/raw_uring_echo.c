/* raw_uring_echo — the io_uring baseline: a hand-written, single-threaded liburing
 * echo server, as fast as we honestly know how to make one.  The greenring io_uring
 * hub is judged by its server CPU per message against this program.
 *
 * Shape: one ring; a multishot accept on the listening socket; per connection one
 * buffer and exactly one operation in flight, alternating recv -> send (resent until
 * every byte is out) -> recv; every SQE produced while handling a batch of CQEs is
 * submitted by the single io_uring_submit_and_wait() that also waits for the next
 * batch, so a loop turn costs one system call however many connections are busy.
 * SIGINT/SIGTERM arrive through a signalfd polled on the ring; on one, every request
 * is cancelled and reaped before the ring is torn down, and the exit status is 0.
 *
 * Usage: raw_uring_echo [--host ADDR] [--port N]   (--hub, --threads ignored) */
#define _GNU_SOURCE
#include "bench_common.h"

#include <liburing.h>
#include <poll.h>
#include <stdint.h>

enum {
	RING_ENTRIES = 4096,   /* SQ size; the CQ gets twice as many */
	CONN_BUF = 16384,      /* per connection; a ping-pong has one message in flight */
};

/* What a CQE completes, kept in the low bits of user_data beside the connection
 * pointer (malloc returns memory aligned to at least 8). */
enum op {
	OP_ACCEPT = 1,
	OP_RECV,
	OP_SEND,
	OP_SIGNAL,
	OP_CANCEL,
};
#define OP_MASK ((uint64_t)7)

struct conn {
	struct conn *prev, *next;  /* the live list, walked only at shutdown */
	int fd;
	unsigned off, len;         /* buf[off, len) is received and not yet sent back */
	char buf[CONN_BUF];
};

struct server {
	struct io_uring ring;
	int lfd, sfd;
	unsigned inflight;         /* requests whose last CQE is not reaped yet */
	bool stopping;
	struct conn *conns;
};

/* Set the ring up with the cheapest completion mode the kernel accepts.
 * SINGLE_ISSUER|DEFER_TASKRUN (6.1) runs completion work only inside our own
 * io_uring_enter, in batches, and never interrupts the loop; COOP_TASKRUN (5.19)
 * avoids the inter-processor interrupt; older kernels reject either with EINVAL. */
static void ring_init(struct io_uring *ring)
{
	static const struct {
		unsigned flags;
		const char *name;
	} modes[] = {
		{ IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		  "single-issuer+defer-taskrun" },
		{ IORING_SETUP_COOP_TASKRUN, "coop-taskrun" },
		{ 0, "plain" },
	};
	int ret = -EINVAL;

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct io_uring_params p = { .flags = modes[i].flags };
		ret = io_uring_queue_init_params(RING_ENTRIES, ring, &p);
		if (ret == 0) {
			fprintf(stderr, "raw_uring_echo: ring mode %s\n", modes[i].name);
			break;
		}
		if (ret != -EINVAL)
			break;
	}
	if (ret < 0) {
		errno = -ret;
		err(1, "io_uring_queue_init_params");
	}
	/* Registering the ring fd saves an fd lookup on every io_uring_enter; a kernel
	 * without it (< 5.18) only loses that saving, so failure is not an error. */
	ret = io_uring_register_ring_fd(ring);
	if (ret < 0)
		fprintf(stderr, "raw_uring_echo: io_uring_register_ring_fd: %s (continuing)\n",
			strerror(-ret));
}

/* Take an SQE and tag it.  A full SQ is normal when many connections complete in
 * one turn: submit what is queued to make room, then retry. */
static struct io_uring_sqe *sqe_get(struct server *s, struct conn *c, enum op op)
{
	struct io_uring_sqe *sqe;

	while ((sqe = io_uring_get_sqe(&s->ring)) == NULL) {
		int ret = io_uring_submit(&s->ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			errno = -ret;
			err(1, "io_uring_submit");
		}
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | op);
	s->inflight++;
	return sqe;
}

static void arm_accept(struct server *s)
{
	io_uring_prep_multishot_accept(sqe_get(s, NULL, OP_ACCEPT), s->lfd, NULL, NULL,
				       SOCK_CLOEXEC);
}

static void arm_recv(struct server *s, struct conn *c)
{
	io_uring_prep_recv(sqe_get(s, c, OP_RECV), c->fd, c->buf, CONN_BUF, 0);
}

static void arm_send(struct server *s, struct conn *c)
{
	io_uring_prep_send(sqe_get(s, c, OP_SEND), c->fd, c->buf + c->off, c->len - c->off,
			   MSG_NOSIGNAL);
}

/* Only called when the connection has no request in flight, so the descriptor can
 * be closed and the buffer freed at once. */
static void conn_close(struct server *s, struct conn *c)
{
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

static void on_accept(struct server *s, const struct io_uring_cqe *cqe)
{
	/* Without F_MORE the kernel has ended the multishot request; ask again. */
	if (!(cqe->flags & IORING_CQE_F_MORE) && !s->stopping)
		arm_accept(s);
	if (cqe->res < 0) {
		if (cqe->res == -ECANCELED || bench_accept_error_is_transient(-cqe->res))
			return;
		/* Re-arming would fail the same way forever (EINVAL here also means a
		 * kernel without multishot accept, < 5.19): die loudly rather than spin
		 * and report a meaningless figure. */
		errno = -cqe->res;
		err(1, "accept");
	}

	int fd = cqe->res;
	if (s->stopping) {
		if (close(fd) != 0)
			warn("close");
		return;
	}
	if (bench_set_nodelay(fd) != 0) {
		warn("setsockopt(TCP_NODELAY)");
		if (close(fd) != 0)
			warn("close");
		return;
	}
	struct conn *c = malloc(sizeof(*c));
	if (c == NULL)
		err(1, "malloc");
	c->fd = fd;
	c->off = c->len = 0;
	c->prev = NULL;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	arm_recv(s, c);
}

static void on_recv(struct server *s, struct conn *c, int res)
{
	if (res > 0 && !s->stopping) {
		c->off = 0;
		c->len = (unsigned)res;
		arm_send(s, c);
	} else if ((res == -EINTR || res == -EAGAIN) && !s->stopping) {
		arm_recv(s, c);
	} else {
		/* EOF, a reset, or cancelled at shutdown. */
		conn_close(s, c);
	}
}

static void on_send(struct server *s, struct conn *c, int res)
{
	if (res < 0 && res != -EINTR && res != -EAGAIN) {
		conn_close(s, c);
		return;
	}
	if (s->stopping) {
		conn_close(s, c);
		return;
	}
	if (res > 0)
		c->off += (unsigned)res;
	/* A short send leaves the rest of the message in buf; send it before reading
	 * more, or the echo would come back out of order. */
	if (c->off < c->len)
		arm_send(s, c);
	else
		arm_recv(s, c);
}

static void stop(struct server *s)
{
	s->stopping = true;
	/* Cancel every request on the ring (accept, receives, sends); each still posts
	 * its CQE, and the handlers close the connections as those arrive. */
	io_uring_prep_cancel64(sqe_get(s, NULL, OP_CANCEL), 0, IORING_ASYNC_CANCEL_ANY);
}

static void on_cqe(struct server *s, const struct io_uring_cqe *cqe)
{
	enum op op = (enum op)(cqe->user_data & OP_MASK);
	struct conn *c = (struct conn *)(uintptr_t)(cqe->user_data & ~OP_MASK);

	if (!(cqe->flags & IORING_CQE_F_MORE))
		s->inflight--;
	switch (op) {
	case OP_ACCEPT:
		on_accept(s, cqe);
		break;
	case OP_RECV:
		on_recv(s, c, cqe->res);
		break;
	case OP_SEND:
		on_send(s, c, cqe->res);
		break;
	case OP_SIGNAL:
		if (!s->stopping)
			stop(s);
		break;
	case OP_CANCEL:
		/* res is the number of requests cancelled, or -ENOENT for none. */
		if (cqe->res < 0 && cqe->res != -ENOENT)
			errx(1, "cancel at shutdown: %s", strerror(-cqe->res));
		break;
	}
}

/* One loop turn: submit everything queued, wait for at least one completion, and
 * handle every completion that is there. */
static void turn(struct server *s)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	int ret = io_uring_submit_and_wait(&s->ring, 1);
	/* EINTR: a debugger or stop signal; EAGAIN/EBUSY: the kernel is short of
	 * memory for the CQ overflow list, which reaping below relieves. */
	if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
		errno = -ret;
		err(1, "io_uring_submit_and_wait");
	}
	io_uring_for_each_cqe(&s->ring, head, cqe) {
		on_cqe(s, cqe);
		seen++;
	}
	io_uring_cq_advance(&s->ring, seen);
}

int main(int argc, char **argv)
{
	struct bench_server_opts opts;
	struct server s = { 0 };

	bench_server_parse(argc, argv, &opts);
	bench_raise_nofile();
	s.sfd = bench_signalfd();
	ring_init(&s.ring);
	s.lfd = bench_listen(&opts, false);

	arm_accept(&s);
	io_uring_prep_poll_add(sqe_get(&s, NULL, OP_SIGNAL), s.sfd, POLLIN);
	while (!s.stopping)
		turn(&s);
	/* Drain: nothing may still point into a buffer when the ring goes away. */
	while (s.inflight > 0)
		turn(&s);

	io_uring_queue_exit(&s.ring);
	if (close(s.lfd) != 0 || close(s.sfd) != 0)
		err(1, "close");
	return 0;
}
