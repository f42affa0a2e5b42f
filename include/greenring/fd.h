/* greenring/fd.h — deadlines per fd, as Go's SetReadDeadline/SetWriteDeadline
 * and gevent's socket timeout. Included by greenring.h.
 *
 * An idle timeout on a connection is one call per direction, with no
 * bookkeeping shared between the fiber that reads and the one that writes:
 *
 *     gr_fd_set_deadline(fd, GR_FD_READ, gr_now() + 30 * GR_SEC);
 *     n = gr_recv(fd, buf, sizeof buf, 0);      // -1/ETIMEDOUT after 30 s of silence
 *
 * Rules (docs/api.md, "Deadlines per fd", has the why):
 *   - Every green call on fd honours the deadline of its direction: reads
 *     (gr_read, gr_readv, gr_pread, gr_recv, gr_recvmsg, gr_accept, gr_accept4,
 *     gr_wait_fd for POLLIN/POLLPRI/POLLRDHUP) and writes (gr_write, gr_writev,
 *     gr_pwrite, gr_send, gr_sendmsg, gr_connect, gr_wait_fd for POLLOUT). Once
 *     it has passed they fail with ETIMEDOUT at once, as Go's calls do, even if
 *     data is there; a pure try (gr_wait_fd with deadline 0) still tries.
 *   - The call's own deadline, the fiber's (gr_deadline_set) and the fd's
 *     bound the call together: the sooner wins. The fiber's is not changed.
 *   - A deadline set while a call waits applies to that call, earlier or
 *     later, as in Go: the call goes on waiting under the new deadline, and
 *     nothing it had read or written is lost.
 *   - It stays until changed, cleared (GR_FOREVER) or the fd is closed with
 *     gr_close(). A socket returned by gr_accept starts with none. A number
 *     closed with plain close() keeps its deadlines for the next file that
 *     gets the number: close fds that have deadlines with gr_close().
 *   - Per thread: it is kept by the calling thread's hub and bounds the calls
 *     of that thread's fibers only.
 */
#ifndef GREENRING_FD_H
#define GREENRING_FD_H

#include <stdint.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Directions, for gr_fd_set_deadline(); both at once is Go's SetDeadline. */
#define GR_FD_READ 0x1
#define GR_FD_WRITE 0x2

/* Set the deadline (absolute, CLOCK_MONOTONIC ns; GR_FOREVER clears it; one
 * already past, 0 included, fails every call at once) of the directions in
 * `dirs` for fd, and apply it to the calls on fd already waiting in those
 * directions. Cheap enough to call before every read (no system call once
 * the fd has a deadline). Does not switch. 0; -EBADF (fd negative, or not
 * open when it gets its first deadline); -EINVAL (dirs empty or with other
 * bits); -ENOMEM; or the error of creating this thread's hub. */
GR_API int gr_fd_set_deadline(int fd, int dirs, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
