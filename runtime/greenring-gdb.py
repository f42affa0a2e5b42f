# greenring-gdb.py — gdb commands for programs built on greenring.
#
#   info fibers [all]      the fibers of the selected thread's hub (all: of
#                          every hub): id, state, name, and what each waits in
#   fiber bt ID [ARGS]     the backtrace of a fiber that is not running,
#                          unwound from its saved context (ARGS go to `bt`)
#
# gdb loads this file by itself: from the library's .debug_gdb_scripts
# section (once the library's directory is in `auto-load safe-path`), or
# from <gdb data directory>/auto-load/<library path>-gdb.py where
# `cmake --install` puts it. It needs no debug information: where things
# lie in the runtime's structs is read from the table the library exports,
# gr__debug_layout (runtime/debugger.c). x86_64 only, like the runtime.
#
# A parked fiber's registers: boost.context's jump_fcontext pushes the
# callee-saved registers below the return address and leaves the stack
# pointer, which greenring keeps as the fiber's saved context, pointing at
# them. The offsets differ between boost versions (<= 1.80: r12..rbp at
# 0x08..0x30, return address at 0x38; >= 1.81 adds a stack-guard slot:
# 0x10..0x38 and 0x40; a shadow-stack build adds one more slot in front),
# so they are read from jump_fcontext's own instructions here rather than
# assumed. `fiber bt` sets the selected thread's registers to the fiber's
# for the length of one `bt` and puts them back: a live process only.

import re
import struct

import gdb

LAYOUT_FIELDS = (
    "magic", "version", "hubs", "op_kind_names", "op_kinds", "link_next",
    "hub_proc_link", "hub_ops", "hub_tid", "hub_root", "hub_loop", "hub_current",
    "hub_all", "hub_nfibers", "hub_inflight", "hub_clock", "ops_name",
    "fiber_ctx", "fiber_all_link", "fiber_id", "fiber_state", "fiber_killed",
    "fiber_park", "fiber_name", "fiber_stack", "name_max",
    "park_what", "park_deadline", "park_kind", "park_queue", "park_xq", "park_op",
    "op_kind", "op_fd", "op_deadline",
    "stack_base", "stack_size", "stack_guard",
)
LAYOUT_MAGIC = 0x0067756265647267  # "grdebug"
LAYOUT_VERSION = 1
STATES = ("new", "runnable", "running", "parked", "ended")
PARK_OP, PARK_QUEUE, PARK_XQUEUE = 0, 1, 2
FOREVER = -1
SAVED_REGISTERS = ("r12", "r13", "r14", "r15", "rbx", "rbp")


def _memory(addr, size):
    return bytes(gdb.selected_inferior().read_memory(addr, size))


def _u64(addr):
    return struct.unpack("<Q", _memory(addr, 8))[0]


def _i64(addr):
    return struct.unpack("<q", _memory(addr, 8))[0]


def _i32(addr):
    return struct.unpack("<i", _memory(addr, 4))[0]


def _u8(addr):
    return _memory(addr, 1)[0]


def _string(addr, limit=256):
    if not addr:
        return None
    out = b""
    while len(out) < limit:
        chunk = _memory(addr + len(out), 16)
        end = chunk.find(b"\0")
        if end >= 0:
            return (out + chunk[:end]).decode("utf-8", "replace")
        out += chunk
    return out.decode("utf-8", "replace")


def _address_of(symbol):
    try:
        return int(gdb.parse_and_eval("(unsigned long)&%s" % symbol))
    except gdb.error:
        return None


class Layout:
    """gr__debug_layout, read from the program."""

    def __init__(self):
        addr = _address_of("gr__debug_layout")
        if addr is None:
            raise gdb.GdbError("greenring: no gr__debug_layout in this program: is it "
                               "linked with greenring, and is the library loaded yet?")
        values = struct.unpack("<%dQ" % len(LAYOUT_FIELDS),
                               _memory(addr, 8 * len(LAYOUT_FIELDS)))
        self.__dict__.update(zip(LAYOUT_FIELDS, values))
        if self.magic != LAYOUT_MAGIC or self.version != LAYOUT_VERSION:
            raise gdb.GdbError("greenring: gr__debug_layout version %d, this script reads "
                               "version %d" % (self.version, LAYOUT_VERSION))

    def op_kind_name(self, kind):
        if kind < self.op_kinds:
            name = _string(_u64(self.op_kind_names + 8 * kind))
            if name:
                return name
        return "?"


class Fiber:
    def __init__(self, L, hub, addr):
        self.hub = hub
        self.addr = addr
        self.id = _u64(addr + L.fiber_id)
        self.state = _u8(addr + L.fiber_state)
        self.killed = _u8(addr + L.fiber_killed) != 0
        self.name = _string(addr + L.fiber_name, L.name_max) or ""
        self.ctx = _u64(addr + L.fiber_ctx)
        self.park = _u64(addr + L.fiber_park)
        self.running = addr == hub.current

    def state_name(self):
        if self.running:
            return "running"
        return STATES[self.state] if self.state < len(STATES) else "?"

    def wait(self, L):
        """What the fiber waits in, one line."""
        if self.running or self.state != 3 or not self.park:
            return ""
        p = self.park
        what = _string(_u64(p + L.park_what)) or "?"
        kind = _u8(p + L.park_kind)
        op = _u64(p + L.park_op)
        deadline = _i64(p + L.park_deadline)
        if kind == PARK_OP and op:
            on = "op %s fd %d" % (L.op_kind_name(_u8(op + L.op_kind)), _i32(op + L.op_fd))
        elif kind == PARK_QUEUE:
            queue = _u64(p + L.park_queue)
            on = "queue 0x%x" % queue if queue else "woken, its timer finishing"
        elif kind == PARK_XQUEUE:
            on = "cross-thread queue 0x%x" % _u64(p + L.park_xq)
        else:
            on = "?"
        if op:
            op_deadline = _i64(op + L.op_deadline)
            if deadline == FOREVER or (op_deadline != FOREVER and op_deadline < deadline):
                deadline = op_deadline
        text = "%s: %s" % (what, on)
        if deadline != FOREVER:
            text += ", deadline %+.3f s" % ((deadline - self.hub.clock) / 1e9)
        return text


class Hub:
    def __init__(self, L, addr):
        self.addr = addr
        self.tid = _i32(addr + L.hub_tid)
        self.backend = _string(_u64(_u64(addr + L.hub_ops) + L.ops_name)) or "?"
        self.loop = _u64(addr + L.hub_loop)
        self.current = _u64(addr + L.hub_current)
        self.nfibers = _u64(addr + L.hub_nfibers)
        self.inflight = _u64(addr + L.hub_inflight)
        self.clock = _i64(addr + L.hub_clock)

    def fibers(self, L):
        """The main context, then spawned fibers in spawn order."""
        spawned = []
        link = _u64(self.addr + L.hub_all)
        while link:
            spawned.append(Fiber(L, self, link - L.fiber_all_link))
            link = _u64(link + L.link_next)
        return [Fiber(L, self, self.addr + L.hub_root)] + spawned[::-1]


def _hubs(L):
    hubs = []
    link = _u64(L.hubs)
    while link:
        hubs.append(Hub(L, link - L.hub_proc_link))
        link = _u64(link + L.link_next)
    return hubs


def _selected_tid():
    thread = gdb.selected_thread()
    if thread is None:
        raise gdb.GdbError("greenring: no thread selected (is the program running?)")
    return thread.ptid[1]


def _hubs_in_view(L, everything):
    hubs = _hubs(L)
    if everything:
        return hubs
    tid = _selected_tid()
    return [h for h in hubs if h.tid == tid]


class InfoFibers(gdb.Command):
    """List the fibers of the selected thread's hub: info fibers [all]
With "all", the fibers of every hub. For each fiber: its id (* marks the one
running), state, name, and for a parked fiber the call it waits in, on what
(an operation and its fd, a wait queue, a cross-thread queue), and its
deadline relative to the hub's last turn."""

    def __init__(self):
        super().__init__("info fibers", gdb.COMMAND_STATUS)

    def invoke(self, arg, from_tty):
        L = Layout()
        everything = arg.strip() == "all"
        hubs = _hubs_in_view(L, everything)
        if not hubs:
            print("greenring: thread %d has no hub (\"info fibers all\" lists every hub)"
                  % _selected_tid())
            return
        for hub in hubs:
            print("greenring hub %s on thread %d: %d fiber%s, %d operation%s in flight%s"
                  % (hub.backend, hub.tid, hub.nfibers, "" if hub.nfibers == 1 else "s",
                     hub.inflight, "" if hub.inflight == 1 else "s",
                     "; the hub's loop is running" if hub.current == hub.loop else ""))
            print("  %6s  %-9s %-20s %s" % ("ID", "STATE", "NAME", "WAIT"))
            for f in hub.fibers(L):
                state = f.state_name() + ("*" if f.killed else "")
                print("%s %6d  %-9s %-20s %s" % ("*" if f.running else " ", f.id, state,
                                                 '"%s"' % f.name, f.wait(L)))


class FiberPrefix(gdb.Command):
    """Commands on greenring fibers: fiber bt ID."""

    def __init__(self):
        super().__init__("fiber", gdb.COMMAND_STACK, prefix=True)


def _fcontext_layout():
    """Offsets from a saved fcontext, read from jump_fcontext's prologue:
    {register: offset}, the return address's offset, and the stack pointer
    after the jump returns (as an offset)."""
    addr = _address_of("jump_fcontext")
    if addr is None:
        raise gdb.GdbError("greenring: jump_fcontext not found (boost.context not loaded?)")
    arch = gdb.newest_frame().architecture()
    depth = 0
    found = {}
    for insn in arch.disassemble(addr, count=48):
        asm = re.sub(r"\s+", " ", insn["asm"].strip())
        m = (re.match(r"lea -0x([0-9a-f]+)\(%rsp\), ?%rsp", asm)
             or re.match(r"lea rsp, ?\[rsp-0x([0-9a-f]+)\]", asm))
        if m:
            depth += int(m.group(1), 16)
            continue
        m = re.match(r"mov %(r\w+), ?(?:0x([0-9a-f]+))?\(%rsp\)", asm)
        if m:
            found[m.group(1)] = depth, int(m.group(2) or "0", 16)
            continue
        m = re.match(r"mov (?:QWORD PTR )?\[rsp(?:\+0x([0-9a-f]+))?\], ?(r\w+)", asm)
        if m:
            found[m.group(2)] = depth, int(m.group(1) or "0", 16)
            continue
        if re.match(r"mov (%rsp, ?%rax|rax, ?rsp)", asm):
            break
    else:
        raise gdb.GdbError("greenring: cannot read jump_fcontext's saving of registers")
    missing = [r for r in SAVED_REGISTERS if r not in found]
    if missing or depth == 0:
        raise gdb.GdbError("greenring: jump_fcontext saves no %s where expected"
                           % ", ".join(missing or ["stack frame"]))
    # A store at depth d, offset o lies at entry_sp - d + o; the saved
    # context is entry_sp - depth; the return address lies at entry_sp.
    offsets = {r: depth - d + o for r, (d, o) in found.items() if r in SAVED_REGISTERS}
    return offsets, depth, depth + 8


def _frames_to_fiber_main():
    """Frames down to the runtime's fiber entry: below it lies
    make_fcontext's trampoline, with nothing to unwind."""
    n, frame = 0, gdb.newest_frame()
    while frame is not None and n < 10000:
        n += 1
        if frame.name() == "fiber_main":
            break
        frame = frame.older()
    return n


def _find_fiber(L, wanted):
    tid = _selected_tid()
    hubs = sorted(_hubs(L), key=lambda h: h.tid != tid)  # the selected thread's first
    for hub in hubs:
        for f in hub.fibers(L):
            if f.id == wanted:
                return f
    return None


class FiberBacktrace(gdb.Command):
    """Backtrace of a fiber that is not running: fiber bt ID [bt arguments]
The fiber's registers are taken from the context it saved when it last
switched away, set on the selected thread for the length of one `bt`, and
put back. Needs a live process (a core file's registers cannot be set)."""

    def __init__(self):
        super().__init__("fiber bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        args = arg.split(None, 1)
        if not args or not args[0].isdigit():
            raise gdb.GdbError("usage: fiber bt ID [bt arguments]")
        L = Layout()
        f = _find_fiber(L, int(args[0]))
        if f is None:
            raise gdb.GdbError("greenring: no fiber %s (info fibers all lists them)" % args[0])
        if f.running:
            raise gdb.GdbError("greenring: fiber %d is running on thread %d: use `bt` there"
                               % (f.id, f.hub.tid))
        if f.state == 0:
            raise gdb.GdbError("greenring: fiber %d has not started: it has no frames" % f.id)
        if f.state == 4:
            raise gdb.GdbError("greenring: fiber %d has ended" % f.id)
        offsets, rip_at, rsp_after = _fcontext_layout()
        regs = {r: _u64(f.ctx + off) for r, off in offsets.items()}
        regs["rip"] = _u64(f.ctx + rip_at)
        regs["rsp"] = f.ctx + rsp_after
        wait = f.wait(L)
        print('fiber %d "%s" (%s%s), from its saved context:'
              % (f.id, f.name, f.state_name(), ", in " + wait if wait else ""))
        gdb.newest_frame().select()
        names = ("rip", "rsp") + SAVED_REGISTERS
        saved = {r: int(gdb.parse_and_eval("$" + r)) & 0xFFFFFFFFFFFFFFFF for r in names}
        try:
            for r in names:
                gdb.execute("set $%s = %d" % (r, regs[r]))
        except gdb.error as e:
            self._restore(saved, names)
            raise gdb.GdbError("greenring: cannot set the registers (%s): fiber bt needs "
                               "a live process" % e)
        try:
            gdb.execute("bt " + (args[1] if len(args) > 1 else str(_frames_to_fiber_main())))
        finally:
            self._restore(saved, names)

    @staticmethod
    def _restore(saved, names):
        for r in names:
            try:
                gdb.execute("set $%s = %d" % (r, saved[r]))
            except gdb.error:
                pass
        gdb.newest_frame().select()


InfoFibers()
FiberPrefix()
FiberBacktrace()
