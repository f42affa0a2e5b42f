/* drain.c — the drain hint: a recv that came back short on a TCP socket
 * lets the next recv on it skip its try and park at once.
 *
 * A fiber serving a connection makes, per message: recv (data), send, recv
 * (EAGAIN), park. The last recv is bound to fail when the one before it
 * came back with fewer bytes than asked: TCP's recvmsg returns short only
 * once the receive queue is empty (it copies while data is queued, and
 * stops early only at urgent data). If no backend wait() has run since
 * that short read (the hub's wait generation, idle.c, is unchanged), any
 * data that arrived since then made the socket call its wake-up callback,
 * which queued an event on the epoll registration that the next wait()
 * reports; so the recv can park with GR_POLL_AFTER_EAGAIN, as it would
 * after EAGAIN, and one system call per message is saved (docs/drain.md has
 * the argument and its hazards). The poll hub is level-triggered: parking
 * is always safe there.
 *
 * What the core keeps, per fd (gr__fdstate): `drains`, whether the file is
 * a TCP stream socket, learnt here with getsockopt at its first short read
 * and forgotten whenever the file's other hints are (gr_close, a file born
 * of the runtime, gr_connect); and `drained_at`, the wait generation of the
 * last short read (internal.h: gr__drain_note, gr__drain_hinted). A hint is
 * used once, never by a pure try, and is worthless after the next wait().
 *
 * A stale "TCP" hint (a number closed with plain close() and reused by a
 * file that does not drain) can make one recv park while data is queued:
 * fd.c's audit ends that wait within two epochs, and a hinted park that
 * lasted an epoch makes the file learnt afresh, so a stale hint costs one
 * such stall, not one per message.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

/* A TCP stream socket? SO_PROTOCOL alone would also say TCP for a raw
 * socket opened with IPPROTO_TCP, which reads whole packets. MPTCP and SCTP
 * have protocols of their own and are not trusted. */
static bool is_tcp_stream(int fd)
{
	int v = 0;
	socklen_t len = sizeof(v);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0 || v != SOCK_STREAM)
		return false;
	len = sizeof(v);
	return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) == 0 && v == IPPROTO_TCP;
}

void gr__drain_learn(int fd, struct gr__fdstate *st)
{
	st->drains = is_tcp_stream(fd) ? GR__DRAINS_YES : GR__DRAINS_NO;
}
