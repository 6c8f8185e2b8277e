"""A debug wrapper of any backend: every device-attribute buffer is copied into a
scratch buffer between guard bytes, and the guards are checked after the ioctl.
A kernel that copies more than kvmdev's table says raises BufferOverrun, naming
the attribute, instead of corrupting memory.  ``kvmdev.open(..., guard_buffers=True)``
or KVMDEV_GUARD_BUFFERS=1 turns it on; it costs a copy per call."""
from __future__ import annotations

from typing import Any

PAD = 64
PATTERN = 0xA5


class BufferOverrun(RuntimeError):
    """The kernel wrote outside an attribute buffer (kvmdev's table is too narrow)."""


class GuardedBackend:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.arch = inner.arch
        self.ffi = inner.arch.ffi
        self.name = inner.name
        self.kernel_release = inner.kernel_release

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _size(self, addr: Any) -> int:
        t = self.ffi.typeof(addr)
        if t.kind == "array":
            return int(self.ffi.sizeof(addr))
        if t.kind == "pointer" and t.item.kind != "void":
            return int(self.ffi.sizeof(t.item))
        return 0

    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int:
        size = self._size(addr) if addr != self.ffi.NULL else 0
        if not size:
            return int(self.inner.attr(fd, request, group, attr, addr))
        ffi = self.ffi
        total = 2 * PAD + size
        scratch = ffi.new("unsigned char[]", total)
        ffi.memmove(scratch, bytes([PATTERN]) * total, total)
        ffi.memmove(scratch + PAD, addr, size)
        r = int(self.inner.attr(fd, request, group, attr, scratch + PAD))
        raw = bytes(ffi.buffer(scratch, total))
        before, after = raw[:PAD], raw[PAD + size:]
        if before != bytes([PATTERN]) * PAD or after != bytes([PATTERN]) * PAD:
            past = max((i + 1 for i, b in enumerate(after) if b != PATTERN), default=0)
            raise BufferOverrun(f"group {group:#x} attr {attr:#x}: the kernel wrote {past} byte(s) past the "
                                f"{size}-byte buffer kvmdev's table gives it" if past else
                                f"group {group:#x} attr {attr:#x}: the kernel wrote before the buffer")
        ffi.memmove(addr, scratch + PAD, size)
        return r

    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int:
        """One guarded call per entry (each slot is a u64)."""
        ffi = self.ffi
        err[0] = 0
        for i in range(count):
            slot = ffi.cast("uint64_t *", attrs[i].addr)
            r = self.attr(fd, request, attrs[i].group, attrs[i].attr, slot)
            if r < 0:
                err[0] = r
                return i
        return count
