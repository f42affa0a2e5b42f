/* reap.h — who collects which child's status (reap.c), as process.c uses it.
 *
 * Every reap greenring makes happens in reap.c, under one lock, and records
 * the status of a child started by gr_process_spawn in that child's entry
 * at the moment it is reaped: whichever wait collects it (the child's own,
 * or a wait for any child on another thread), the handle keeps it.
 */
#ifndef GREENRING_REAP_H
#define GREENRING_REAP_H

#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "list.h"

/* A child started here; embedded in its handle. The fields below `link`
 * are guarded by the registry lock once the child is registered. */
struct gr__child {
	pid_t pid;
	int pidfd;                    /* close-on-exec; -1 once closed */
	struct gr__link link;         /* on the registry while not reaped */
	bool listed;
	bool reaped;
	int status;                   /* waitpid(2) form, once reaped */
};

/* posix_spawnp(file, fa, attr, argv, envp), then a pidfd for the child and
 * its entry in the registry, with no reap of ours in between (a wait for
 * any child could otherwise take it before the pidfd names it). Blocks the
 * thread until the child has exec'd. 0, or -errno (the child, if one was
 * made and cannot be tracked, is killed and reaped). */
int gr__child_spawn(struct gr__child *c, const char *file, const posix_spawn_file_actions_t *fa,
		    const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);

/* Wait until c has ended and collect it (gr_process_wait). `what` names the
 * call in deadlock messages; an uncancellable wait ignores kills and
 * deadlines (the caller passes GR_FOREVER). Switches. 0 and *status; the
 * gate's errors; -ECHILD (reaped behind our back). */
int gr__child_wait(struct gr__child *c, int *status, int64_t deadline, bool uncancellable,
		   const char *what);

/* c is reaped (its status is collected): 1, else 0. Does not switch. */
bool gr__child_reaped(struct gr__child *c);

/* Take c off the registry (its handle is going away). */
void gr__child_forget(struct gr__child *c);

#endif
