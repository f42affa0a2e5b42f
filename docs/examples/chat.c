/* chat.c — a broadcast (chat) server: every line a client sends goes to all
 * the other clients, prefixed with the sender's address. Each client has a
 * bounded queue of lines waiting to be sent to it: a client that reads too
 * slowly to keep up is disconnected, rather than slowing everyone down or
 * making the server buffer without limit.
 *
 *   cc chat.c $(pkg-config --cflags --libs greenring) -o chat
 *   ./chat [PORT]                 # 0 or none: any free port
 *
 * It prints "listening on 127.0.0.1:PORT" and serves until killed. Try it
 * with two or three `nc 127.0.0.1 PORT`. (Tested: tests/test_examples.c runs
 * it on every hub.)
 */
#include <greenring.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define QUEUE_LINES 64          /* lines a client may lag behind before it is dropped */
#define LINE_MAX 1024           /* longer lines are cut into pieces of this size */
#define SEND_BUFFER (64 * 1024) /* the kernel's buffer per client: bounded too */

/* A line to send, shared by every queue it is in (one thread: no locks). */
struct line {
	int refs;
	size_t len;
	char text[];
};

struct client {
	int fd;
	gr_queue out;               /* struct line *, to send to this client */
	struct client *prev, *next; /* everyone connected */
};

static struct client *clients;

static void line_put(struct line *l)
{
	if (--l->refs == 0)
		free(l);
}

/* Give each other client the line, or drop the clients that cannot take it. */
static void broadcast(struct client *from, const char *text, size_t len)
{
	const char *who = gr_fiber_name(gr_self()); /* gr_server names it after the peer */
	size_t wlen = strlen(who);
	struct line *l = malloc(sizeof *l + wlen + 2 + len);

	if (!l)
		return;
	l->refs = 1;
	l->len = wlen + 2 + len;
	memcpy(l->text, who, wlen);
	memcpy(l->text + wlen, ": ", 2);
	memcpy(l->text + wlen + 2, text, len);
	for (struct client *c = clients; c; c = c->next) {
		if (c == from)
			continue;
		l->refs++;
		if (gr_queue_tryput(&c->out, l) != 0) {
			/* Full (or already closed): too slow. Closing the queue ends
			 * its sender, and shutdown() ends its reader. */
			l->refs--;
			gr_queue_close(&c->out);
			shutdown(c->fd, SHUT_RDWR);
		}
	}
	line_put(l);
}

/* The client's second fiber: send what its queue holds, in order. */
static void *sender(void *arg)
{
	struct client *c = arg;
	void *item;

	while (gr_queue_get(&c->out, &item, GR_FOREVER) == 0) {
		struct line *l = item;
		bool sent = gr_send_all(c->fd, l->text, l->len, 0) == (ssize_t)l->len;

		line_put(l);
		if (!sent)
			break; /* the client went away, or it was dropped */
	}
	return NULL;
}

static void chat(int fd, const struct sockaddr *peer, void *arg)
{
	struct client me = { .fd = fd, .next = clients };
	char buf[LINE_MAX];
	size_t have = 0;
	ssize_t n;
	int size = SEND_BUFFER;

	(void)peer;
	(void)arg;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	if (gr_queue_init(&me.out, QUEUE_LINES) != 0)
		return;
	gr_fiber *send_fiber = gr_spawn(sender, &me);
	if (!send_fiber) {
		gr_queue_destroy(&me.out);
		return;
	}
	if (clients)
		clients->prev = &me;
	clients = &me;

	while ((n = gr_recv(fd, buf + have, sizeof buf - have, 0)) > 0) {
		have += (size_t)n;
		char *start = buf, *nl;
		while ((nl = memchr(start, '\n', have - (size_t)(start - buf))) != NULL) {
			broadcast(&me, start, (size_t)(nl + 1 - start));
			start = nl + 1;
		}
		have -= (size_t)(start - buf);
		memmove(buf, start, have);
		if (have == sizeof buf) { /* a line too long: send it in pieces */
			broadcast(&me, buf, have);
			have = 0;
		}
	}

	/* Gone (or dropped, or the server is stopping): leave the list, stop the
	 * sender, and give back the lines it did not send. */
	if (me.prev)
		me.prev->next = me.next;
	else
		clients = me.next;
	if (me.next)
		me.next->prev = me.prev;
	gr_queue_close(&me.out);
	if (gr_killed())
		gr_kill_ack(gr_now() + GR_SEC); /* killed: clean up anyway, within a second */
	gr_kill(send_fiber); /* it may be blocked sending to a client that went away */
	gr_join(send_fiber, NULL, GR_FOREVER);
	for (void *item; gr_queue_tryget(&me.out, &item) == 0;)
		line_put(item);
	gr_queue_destroy(&me.out);
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 0;
	gr_server *srv = gr_server_create("127.0.0.1", port, chat, NULL, NULL);

	if (!srv || gr_server_start(srv) < 0) {
		fprintf(stderr, "chat: cannot listen on port %d\n", port);
		return 1;
	}
	printf("listening on 127.0.0.1:%d\n", gr_server_port(srv));
	fflush(stdout);
	return gr_server_wait(srv, GR_FOREVER) < 0;
}
