/* debugger.c — what a debugger needs to find fibers: the list of hubs, a
 * table of where things lie in the runtime's structs, and the gdb script
 * itself (runtime/greenring-gdb.py) embedded in the library.
 *
 * The table (gr__debug_layout) lets the gdb commands work on a release
 * build with no debug information: they read it instead of DWARF types. It
 * is exported (default visibility) so that it survives `strip`, which keeps
 * the dynamic symbols only. Change it only by appending, and bump the
 * version the script checks when a field changes meaning.
 *
 * The script rides in the .debug_gdb_scripts section as an inline Python
 * entry (gdb's auto-load: "SECTION_SCRIPT_ID_PYTHON_TEXT"), so gdb loads it
 * from the library wherever it lies, once the library's directory is in
 * gdb's auto-load safe-path. `cmake --install` also puts it where gdb looks
 * for a library's script without any setting (docs/observing.md).
 *
 * The list of hubs is defined here, not in hub.c which keeps it: hub.c
 * refers to it, so a static link that has hubs also pulls in this file,
 * and with it the table and the script.
 */
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

struct gr__list gr__hubs;

/* Every field is a uint64_t: the script reads an array. Offsets are bytes
 * from the start of the struct named; the sizes of the fields they point at
 * are fixed by this version (noted after each). */
struct gr__debug_layout {
	uint64_t magic;                   /* "grdebug\0" little-endian */
	uint64_t version;
	uint64_t hubs;                    /* &gr__hubs: a struct gr__list (first, last) */
	uint64_t op_kind_names;           /* gr__op_kind_names: const char *[op_kinds] */
	uint64_t op_kinds;
	uint64_t link_next;               /* struct gr__link: pointer */
	uint64_t hub_proc_link;           /* struct gr__hub: a struct gr__link */
	uint64_t hub_ops;                 /* pointer to struct gr_hub_ops */
	uint64_t hub_tid;                 /* int32 */
	uint64_t hub_root;                /* an embedded gr_fiber */
	uint64_t hub_loop;                /* pointer */
	uint64_t hub_current;             /* pointer */
	uint64_t hub_all;                 /* a struct gr__list */
	uint64_t hub_nfibers;             /* size_t */
	uint64_t hub_inflight;            /* size_t */
	uint64_t hub_clock;               /* int64 ns */
	uint64_t ops_name;                /* struct gr_hub_ops: const char * */
	uint64_t fiber_ctx;               /* gr_fiber: the saved stack pointer */
	uint64_t fiber_all_link;          /* a struct gr__link */
	uint64_t fiber_id;                /* uint64 */
	uint64_t fiber_state;             /* uint8: enum gr__fiber_state */
	uint64_t fiber_killed;            /* uint8 */
	uint64_t fiber_park;              /* pointer to struct gr__park */
	uint64_t fiber_name;              /* char[name_max] */
	uint64_t fiber_stack;             /* pointer to struct gr__stack */
	uint64_t name_max;
	uint64_t park_what;               /* struct gr__park: const char * */
	uint64_t park_deadline;           /* int64 */
	uint64_t park_kind;               /* uint8: enum gr__park_kind */
	uint64_t park_queue;              /* pointer */
	uint64_t park_xq;                 /* pointer */
	uint64_t park_op;                 /* pointer to struct gr__op */
	uint64_t op_kind;                 /* struct gr__op: uint8 */
	uint64_t op_fd;                   /* int32 */
	uint64_t op_deadline;             /* int64 */
	uint64_t stack_base;              /* struct gr__stack: pointer */
	uint64_t stack_size;              /* size_t */
	uint64_t stack_guard;             /* size_t */
};

#define OFF(type, field) ((uint64_t)offsetof(type, field))
#define OP_FIELD(field) ((uint64_t)(offsetof(struct gr__op, op) + offsetof(struct gr_op, field)))

__attribute__((visibility("default"), used)) const struct gr__debug_layout gr__debug_layout = {
	.magic = 0x0067756265647267ull, /* "grdebug" */
	.version = 1,
	.hubs = (uint64_t)(uintptr_t)&gr__hubs,
	.op_kind_names = (uint64_t)(uintptr_t)gr__op_kind_names,
	.op_kinds = GR_OP_KIND_COUNT,
	.link_next = OFF(struct gr__link, next),
	.hub_proc_link = OFF(struct gr__hub, proc_link),
	.hub_ops = OFF(struct gr__hub, ops),
	.hub_tid = OFF(struct gr__hub, tid),
	.hub_root = OFF(struct gr__hub, root),
	.hub_loop = OFF(struct gr__hub, loop),
	.hub_current = OFF(struct gr__hub, current),
	.hub_all = OFF(struct gr__hub, all),
	.hub_nfibers = OFF(struct gr__hub, nfibers),
	.hub_inflight = OFF(struct gr__hub, inflight),
	.hub_clock = OFF(struct gr__hub, clock),
	.ops_name = OFF(struct gr_hub_ops, name),
	.fiber_ctx = OFF(gr_fiber, ctx),
	.fiber_all_link = OFF(gr_fiber, all_link),
	.fiber_id = OFF(gr_fiber, id),
	.fiber_state = OFF(gr_fiber, state),
	.fiber_killed = OFF(gr_fiber, killed),
	.fiber_park = OFF(gr_fiber, park),
	.fiber_name = OFF(gr_fiber, name),
	.fiber_stack = OFF(gr_fiber, stack),
	.name_max = GR__NAME_MAX,
	.park_what = OFF(struct gr__park, what),
	.park_deadline = OFF(struct gr__park, deadline),
	.park_kind = OFF(struct gr__park, kind),
	.park_queue = OFF(struct gr__park, queue),
	.park_xq = OFF(struct gr__park, xq),
	.park_op = OFF(struct gr__park, op),
	.op_kind = OP_FIELD(kind),
	.op_fd = OP_FIELD(fd),
	.op_deadline = OP_FIELD(deadline),
	.stack_base = OFF(struct gr__stack, base),
	.stack_size = OFF(struct gr__stack, size),
	.stack_guard = OFF(struct gr__stack, guard),
};

_Static_assert(sizeof(pid_t) == 4 && sizeof(int) == 4 && sizeof(size_t) == 8 && sizeof(void *) == 8,
	       "the layout's field sizes (and the gdb script) assume LP64 with 32-bit pids");

/* The script, inline: prefix byte 4 (Python text), a name line, the text,
 * a NUL. "MS": identical entries from two copies of the library merge. */
__asm__(".pushsection .debug_gdb_scripts, \"MS\", @progbits, 1\n"
	".byte 4\n"
	".ascii \"greenring-gdb.py\\n\"\n"
	".incbin \"" GR__GDB_SCRIPT "\"\n"
	".byte 0\n"
	".popsection\n");
