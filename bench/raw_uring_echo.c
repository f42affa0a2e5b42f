/* raw_uring_echo — the io_uring baseline: a hand-written, single-threaded liburing
 * echo server using the newer io_uring features, as fast as we honestly know how to
 * make one.  The greenring io_uring hub is judged by its server CPU per message
 * against this program.
 *
 * Shape:
 *   - one ring, SINGLE_ISSUER|DEFER_TASKRUN (falling back when refused), its fd
 *     registered;
 *   - one multishot accept on the listening socket;
 *   - per connection one multishot receive into a provided-buffer ring: one SQE
 *     per connection, not one per message; the kernel picks a buffer per
 *     completion;
 *   - the received buffers of a connection wait in order in a queue; one send is
 *     in flight per connection (resent until every byte is out, so echoes never
 *     reorder), and a buffer goes back to the ring once its bytes are sent;
 *   - every SQE produced while handling a batch of CQEs, and every buffer given
 *     back, reaches the kernel with the single io_uring_submit_and_wait() that also
 *     waits for the next batch: a loop turn costs one system call however many
 *     connections are busy.
 * The buffer pool starts small and doubles when the kernel runs out (a multishot
 * receive then ends with ENOBUFS and is re-armed once buffers are back), so the
 * buffers cycled through stay about as many as the connections in flight: the
 * ring hands buffers out in FIFO order, and a pool much larger than that would only
 * walk more memory through the cache.
 * SIGINT/SIGTERM arrive through a signalfd polled on the ring; on one, every request
 * is cancelled and reaped before the ring is torn down, and the exit status is 0.
 *
 * Usage: raw_uring_echo [--host ADDR] [--port N]   (--hub, --threads ignored) */
#define _GNU_SOURCE
#include "bench_common.h"

#include <liburing.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>

enum {
	RING_ENTRIES = 4096,   /* SQ size; the CQ gets twice as many */
	BUF_SIZE = 16384,      /* one provided buffer: a whole 4 KiB message and more */
	BUF_MAX = 4096,        /* buffers at most: the provided-buffer ring's size */
	BUF_FIRST = 64,        /* buffers at start; doubled on ENOBUFS up to BUF_MAX */
	BUF_GROUP = 0,
};

#define NO_BUF UINT16_MAX

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
	struct conn *starved_next; /* on the list of receives waiting for buffers */
	int fd;
	uint16_t head, tail;       /* received buffers not yet sent back, in order */
	bool receiving;            /* the multishot receive is armed */
	bool sending;              /* a send is in flight (for the head buffer) */
	bool starved;              /* the receive ended with ENOBUFS; re-arm later */
	bool done;                 /* EOF or an error: no more receives */
};

/* A buffer's place in its connection's queue: buf[off, len) is still to send. */
struct buf_meta {
	uint16_t next;
	uint32_t off, len;
};

struct server {
	struct io_uring ring;
	int lfd, sfd;
	unsigned inflight;         /* requests whose last CQE is not reaped yet */
	bool stopping;
	struct conn *conns;
	struct conn *starved;      /* receives that ran out of buffers */
	unsigned nstarved;
	/* The provided buffers: BUF_MAX slots of virtual memory, of which the first
	 * nbufs are in use; pages appear when the kernel first writes into them. */
	struct io_uring_buf_ring *br;
	char *bufs;
	unsigned nbufs;
	unsigned returned;         /* buffers added to the ring, not yet published */
	struct buf_meta meta[BUF_MAX];
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

/* ---- provided buffers ---------------------------------------------------------- */

static char *buf_addr(struct server *s, uint16_t bid)
{
	return s->bufs + (size_t)bid * BUF_SIZE;
}

/* Hand buffer bid back to the kernel.  The ring's tail is published once per turn
 * (buf_publish), not once per buffer. */
static void buf_return(struct server *s, uint16_t bid)
{
	io_uring_buf_ring_add(s->br, buf_addr(s, bid), BUF_SIZE, bid,
			      io_uring_buf_ring_mask(BUF_MAX), (int)s->returned);
	s->returned++;
}

static void buf_publish(struct server *s)
{
	if (s->returned) {
		io_uring_buf_ring_advance(s->br, (int)s->returned);
		s->returned = 0;
	}
}

/* Add buffers [nbufs, want) to the ring; false when the pool is at its largest. */
static bool buf_grow(struct server *s, unsigned want)
{
	if (want > BUF_MAX)
		want = BUF_MAX;
	if (want <= s->nbufs)
		return false;
	for (unsigned bid = s->nbufs; bid < want; bid++)
		buf_return(s, (uint16_t)bid);
	s->nbufs = want;
	return true;
}

/* liburing 2.3 (Debian bookworm) has io_uring_register_buf_ring but not
 * io_uring_setup_buf_ring: the ring's memory is mapped here.  It must be
 * page-aligned, which mmap guarantees. */
static void buf_init(struct server *s)
{
	size_t ring_bytes = BUF_MAX * sizeof(struct io_uring_buf);

	s->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->br == MAP_FAILED)
		err(1, "mmap (buffer ring)");
	io_uring_buf_ring_init(s->br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)s->br,
		.ring_entries = BUF_MAX,
		.bgid = BUF_GROUP,
	};
	int ret = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (ret < 0) {
		/* Provided-buffer rings came with 5.19: this baseline needs them. */
		errno = -ret;
		err(1, "io_uring_register_buf_ring");
	}
	/* Reserved, not committed: only the buffers ever used get pages. */
	s->bufs = mmap(NULL, (size_t)BUF_MAX * BUF_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->bufs == MAP_FAILED)
		err(1, "mmap (buffers)");
	buf_grow(s, BUF_FIRST);
	buf_publish(s);
}

/* ---- requests ------------------------------------------------------------------ */

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

/* One SQE for every message the connection will ever receive.  POLL_FIRST: a
 * connection just accepted (or just out of buffers) rarely has data waiting, so
 * the kernel goes straight to waiting instead of trying a receive first. */
static void arm_recv(struct server *s, struct conn *c)
{
	struct io_uring_sqe *sqe = sqe_get(s, c, OP_RECV);

	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	c->receiving = true;
}

static void arm_send(struct server *s, struct conn *c)
{
	struct buf_meta *m = &s->meta[c->head];

	io_uring_prep_send(sqe_get(s, c, OP_SEND), c->fd, buf_addr(s, c->head) + m->off,
			   m->len - m->off, MSG_NOSIGNAL);
	c->sending = true;
}

/* ---- connections --------------------------------------------------------------- */

static void queue_push(struct server *s, struct conn *c, uint16_t bid, unsigned len)
{
	s->meta[bid] = (struct buf_meta){ .next = NO_BUF, .off = 0, .len = len };
	if (c->head == NO_BUF)
		c->head = bid;
	else
		s->meta[c->tail].next = bid;
	c->tail = bid;
}

static void queue_pop(struct server *s, struct conn *c)
{
	uint16_t bid = c->head;

	c->head = s->meta[bid].next;
	buf_return(s, bid);
}

/* Close once nothing of the connection is in flight; until then the CQEs still
 * to come name it. */
static void conn_maybe_close(struct server *s, struct conn *c)
{
	if (c->receiving || c->sending || c->starved)
		return;
	while (c->head != NO_BUF)
		queue_pop(s, c);
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

/* The connection is over (EOF, reset, failed send, shutdown).  Its receive, if
 * still armed, is ended by shutting the socket down: it then completes with 0. */
static void conn_end(struct server *s, struct conn *c)
{
	if (!c->done) {
		c->done = true;
		if (c->receiving && shutdown(c->fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
			warn("shutdown");
	}
	conn_maybe_close(s, c);
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
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		err(1, "malloc");
	c->fd = fd;
	c->head = c->tail = NO_BUF;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	arm_recv(s, c);
}

static void on_recv(struct server *s, struct conn *c, const struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->receiving = false;
	if (cqe->res > 0) {
		/* With F_BUFFER the kernel names the buffer it filled. */
		uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);

		if (c->done || s->stopping) {
			buf_return(s, bid);
		} else {
			queue_push(s, c, bid, (unsigned)cqe->res);
			if (!c->sending)
				arm_send(s, c);
		}
		/* A multishot receive may also end after data (e.g. the CQ overflowed). */
		if (c->receiving)
			return;
		if (!c->done && !s->stopping) {
			arm_recv(s, c);
		} else {
			c->done = true;
			conn_maybe_close(s, c);
		}
	} else if (cqe->res == -ENOBUFS && !c->done && !s->stopping) {
		/* Out of buffers: wait for some to come back (see turn()). */
		c->starved = true;
		c->starved_next = s->starved;
		s->starved = c;
		s->nstarved++;
	} else if ((cqe->res == -EINTR || cqe->res == -EAGAIN) && !c->receiving && !c->done &&
		   !s->stopping) {
		arm_recv(s, c);
	} else if (!c->receiving) {
		/* EOF, a reset, or cancelled at shutdown: what is queued is still sent
		 * back (unless stopping), then the connection closes. */
		c->done = true;
		if (s->stopping)
			while (c->head != NO_BUF && !c->sending)
				queue_pop(s, c);
		conn_maybe_close(s, c);
	}
}

static void on_send(struct server *s, struct conn *c, int res)
{
	c->sending = false;
	if (res < 0 && res != -EINTR && res != -EAGAIN) {
		conn_end(s, c);
		return;
	}
	struct buf_meta *m = &s->meta[c->head];
	if (res > 0)
		m->off += (unsigned)res;
	if (m->off == m->len)
		queue_pop(s, c);
	/* A short send leaves the rest of the buffer at the head of the queue: it goes
	 * out before anything received later, or the echo would come back out of
	 * order. */
	if (s->stopping) {
		conn_end(s, c);
	} else if (c->head != NO_BUF) {
		arm_send(s, c);
	} else if (c->done) {
		conn_maybe_close(s, c);
	}
}

static void stop(struct server *s)
{
	s->stopping = true;
	/* Cancel every request on the ring (accept, receives, sends); each still posts
	 * its CQE, and the handlers close the connections as those arrive. */
	io_uring_prep_cancel64(sqe_get(s, NULL, OP_CANCEL), 0, IORING_ASYNC_CANCEL_ANY);
	/* Receives waiting for buffers have nothing in flight: close them now. */
	while (s->starved) {
		struct conn *c = s->starved;

		s->starved = c->starved_next;
		c->starved = false;
		c->done = true;
		conn_maybe_close(s, c);
	}
	s->nstarved = 0;
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
		on_recv(s, c, cqe);
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

/* Receives that ran out of buffers are re-armed once there are buffers again.
 * The pool grows first (doubling, and by at least one buffer per starved
 * receive), so that after a few turns of ramp-up it holds about as many buffers
 * as connections in flight.  At its largest, re-arming waits for buffers to come
 * back: with none back, every buffer is waiting on a send, and re-arming now
 * would only fail again. */
static void rearm_starved(struct server *s)
{
	if (!s->starved || s->stopping)
		return;
	unsigned want = s->nbufs * 2;
	if (want < s->nbufs + s->nstarved)
		want = s->nbufs + s->nstarved;
	if (!buf_grow(s, want) && !s->returned)
		return;
	while (s->starved) {
		struct conn *c = s->starved;

		s->starved = c->starved_next;
		c->starved = false;
		if (c->done)
			conn_maybe_close(s, c); /* its send failed meanwhile */
		else
			arm_recv(s, c);
	}
	s->nstarved = 0;
}

/* One loop turn: hand the kernel every buffer given back and every SQE queued,
 * wait for at least one completion, and handle every completion that is there. */
static void turn(struct server *s)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	rearm_starved(s);
	buf_publish(s);
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
	static struct server s;

	bench_server_parse(argc, argv, &opts);
	bench_raise_nofile();
	s.sfd = bench_signalfd();
	ring_init(&s.ring);
	buf_init(&s);
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
	/* How far the pool grew: the buffers every receive cycled through. */
	fprintf(stderr, "raw_uring_echo: %u provided buffers of %d bytes in the pool\n", s.nbufs,
		BUF_SIZE);
	return 0;
}
