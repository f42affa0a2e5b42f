/* greenring/file.h — files without stalling the hub: open, stat, sync, and
 * sendfile for servers that send files.
 *
 * A read of a file that is not in the page cache, an open on a slow
 * filesystem, an fsync: each may wait for a disk for milliseconds, and on a
 * thread that runs fibers every fiber would wait with it. These calls, and
 * gr_read, gr_write, gr_pread, gr_pwrite, gr_readv and gr_writev on a regular
 * file, park the calling fiber instead while the work is done elsewhere:
 *   - io_uring hub: by the kernel (IORING_OP_OPENAT, STATX, FSYNC, SPLICE,
 *     READ, WRITE), in its own workers when it must wait;
 *   - epoll and poll hubs: on greenring's thread pool (greenring/tpool.h),
 *     except reads served from the page cache, which are made at once
 *     (preadv2 with RWF_NOWAIT) and cost no thread hop.
 * docs/files.md has the details and the measured costs.
 *
 * Kills and deadlines: open, stat and sync work on copies of their
 * arguments, so on the pool a caller that is killed or whose deadline
 * passes returns at once (an fd opened for nobody is closed). A read or
 * write moves data through the caller's own buffer: one that a worker (or
 * io_uring) has started is waited for and returns its real result, the kill
 * or deadline failing the next call, as for any operation the kernel could
 * not stop; one still queued is dropped at once.
 *
 * Like the other drop-in calls (greenring.h), these take the POSIX
 * arguments and return -1 with errno set; extra errno values: ECANCELED
 * (killed), ETIMEDOUT (the fiber's deadline passed), EPERM (called inside
 * the hub), EAGAIN (the thread pool could not start a worker). All switch.
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_FILE_H
#define GREENRING_FILE_H

#include <stddef.h>
#include <sys/types.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

struct stat;
struct statx;

/* open(2) and openat(2): the new fd, or -1 with errno as open(2) (ENOENT,
 * EISDIR, EACCES, ...; EFAULT for a NULL path). An open of a FIFO waits for
 * its other end, as open(2) does, and that wait is killable. The mode
 * argument is read when flags has O_CREAT or O_TMPFILE. */
GR_API int gr_open(const char *path, int flags, ...);
GR_API int gr_openat(int dirfd, const char *path, int flags, ...);

/* fstat(2): 0, or -1 with errno (EBADF, ...). Made with statx(2). */
GR_API int gr_fstat(int fd, struct stat *st);

/* statx(2): 0, or -1 with errno (ENOENT, EBADF, EINVAL for bad flags or
 * mask, EFAULT for a NULL path or buffer, ...). */
GR_API int gr_statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *stx);

/* fsync(2), fdatasync(2): 0, or -1 with errno (EBADF; EINVAL for an fd
 * that cannot be synced, such as a pipe; EIO, ...). */
GR_API int gr_fsync(int fd);
GR_API int gr_fdatasync(int fd);

/* Send count bytes of in_fd (a regular file or block device) to out_fd (a
 * socket, a pipe, or a file), as sendfile(2): from *offset when offset is
 * not NULL (*offset is then advanced and in_fd's position left alone), else
 * from in_fd's position (which is advanced). Unlike sendfile(2) on a
 * non-blocking socket, it waits until count bytes are sent, in_fd ends, or
 * an error: the bytes sent, 0 at end of file, or -1 with errno (EINVAL:
 * in_fd is not a regular file or block device, or *offset < 0; EBADF; EPIPE
 * and the other errors of writing to out_fd). If some bytes were sent
 * before an error, a kill or a deadline, their count is returned and the
 * next call reports the error. io_uring moves the data with splice(2)
 * through a pipe; epoll and poll with sendfile(2), on the thread pool for
 * the parts of the file not in the page cache. */
GR_API ssize_t gr_sendfile(int out_fd, int in_fd, off_t *offset, size_t count);

#ifdef __cplusplus
}
#endif
#endif
