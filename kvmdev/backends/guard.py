"""A debug wrapper of any backend that checks every device-attribute buffer
against what the kernel really copies, instead of corrupting memory:

- a GET's buffer sits between guard bytes, checked after the ioctl (the kernel
  wrote past it);
- a SET's buffer ends exactly where a PROT_NONE guard page begins, so a kernel
  that reads past it faults (EFAULT) at the page.

Either raises BufferOverrun naming the attribute.  ``kvmdev.open(...,
guard_buffers=True)`` or KVMDEV_GUARD_BUFFERS=1 turns it on; it costs a copy
per call.
"""
from __future__ import annotations

import ctypes
import errno as E
import mmap
import threading
from typing import Any

PAD = 64
PATTERN = 0xA5
PAGE = mmap.PAGESIZE


class GuardPage:
    """A page of memory followed by a PROT_NONE page: ``at_end(n)`` is the
    address of n bytes that end where the guard page begins."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._buf = (ctypes.c_char * (2 * PAGE)).from_buffer(self._map)
        self.base = ctypes.addressof(self._buf)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mprotect(ctypes.c_void_p(self.base + PAGE), ctypes.c_size_t(PAGE), 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect of the guard page")

    def at_end(self, n: int) -> int:
        if not 0 <= n <= PAGE:
            raise ValueError(f"{n} bytes do not fit in a page")
        return self.base + PAGE - n


class BufferOverrun(RuntimeError):
    """The kernel wrote outside an attribute buffer (kvmdev's table is too narrow)."""


class GuardedBackend:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.arch = inner.arch
        self.ffi = inner.arch.ffi
        self.name = inner.name
        self.kernel_release = inner.kernel_release
        self._set = inner.arch.request("KVM_SET_DEVICE_ATTR")
        self._pages = threading.local()    # a guard page per thread: calls run concurrently

    # the inner backend's C fast paths of typed attributes would bypass the guard
    attr_int_get = attr_int_set = None

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
        if request == self._set and size <= PAGE:
            page = getattr(self._pages, "page", None)
            if page is None:
                page = self._pages.page = GuardPage()
            at = page.at_end(size)
            ffi.memmove(ffi.cast("void *", at), addr, size)
            r = int(self.inner.attr(fd, request, group, attr, ffi.cast("void *", at)))
            if r == -E.EFAULT:   # kvmdev's own buffer is valid: only the guard page can fault
                raise BufferOverrun(f"group {group:#x} attr {attr:#x}: the kernel read past the {size}-byte "
                                    "buffer kvmdev's table gives it (EFAULT at the guard page)")
            return r
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
