/* greenring/stacks.h — the memory of fiber stacks: giving it back now.
 *
 * Each hub keeps the stacks of ended fibers (of the default size) for its
 * next spawns, as many as were live at once lately: a burst of a million
 * connections that comes again spawns without the kernel. When the hub has
 * been idle through a quieter second or two it gives the pages of the
 * surplus back by itself, a batch per idle turn (docs/stacks.md). A program
 * that knows a burst is over for good can give them back at once with
 * gr_stacks_trim. gr_hub_stats reports the counts (stacks_free,
 * stacks_trimmed, stacks_mapped).
 *
 * Included by greenring.h.
 */
#ifndef GREENRING_STACKS_H
#define GREENRING_STACKS_H

#include <stddef.h>

#include "greenring/hub_ops.h" /* GR_API */

#ifdef __cplusplus
extern "C" {
#endif

/* Give back to the kernel, now, the pages of this thread's free fiber stacks
 * beyond the `keep` most recently freed. Trimmed stacks stay reserved and
 * serve later spawns (their pages come back then); a mapping whose stacks
 * are all free and trimmed is unmapped. Never touches a stack in use.
 * Does not switch; may be called from any context of the thread, the hub's
 * callbacks included. The number of stacks trimmed (>= 0), or -ESRCH (this
 * thread has no hub; nothing to trim). */
GR_API long gr_stacks_trim(size_t keep);

#ifdef __cplusplus
}
#endif
#endif
