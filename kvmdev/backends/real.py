"""The real backend: /dev/kvm through the compiled module's ioctl wrappers."""
from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
from typing import Any
from ..arch import Arch, get_arch, host_arch_name
from .. import _forksafe
from ..errors import KvmUnavailable

KVM_PATH = "/dev/kvm"
# Vcpu.request_exit's signal: a real-time one (SIGRTMIN + 2; None: not chosen yet)
# with an empty C handler installed without SA_RESTART on the first kick
KICK_SIGNAL: int | None = None
_kick_installed: list[int] = []
_kick_lock = threading.Lock()
_forksafe.register_module_lock(sys.modules[__name__], "_kick_lock")


class RealBackend:
    name = "real"

    def __init__(self, arch: str | None = None, path: str | None = None) -> None:
        host = host_arch_name()
        if arch is not None and arch != host:
            raise ValueError(f"the real backend runs the host's architecture ({host}), not {arch}; "
                             f"use backend='mock' for {arch}")
        self.arch: Arch = get_arch(host)
        # KVMDEV_DEVICE: another device node (a container's, or a missing one in tests)
        self.path = path or os.environ.get("KVMDEV_DEVICE", KVM_PATH)
        # Bound C functions: the hot path is one Python-to-C call.
        self.ioctl = self.arch.lib.kvmdev_ioctl
        self.ioctl_val = self.arch.lib.kvmdev_ioctl_val
        self.attr = self.arch.lib.kvmdev_attr
        self.attr_batch = self.arch.lib.kvmdev_attr_batch
        self.ioctl_val_fd = self.arch.lib.kvmdev_ioctl_val_fd
        self.ioctl_fd_at = self.arch.lib.kvmdev_ioctl_fd_at
        self.cell_close = self.arch.lib.kvmdev_cell_close
        # the hot paths in C (cdefs/helpers.c): typed integer attributes, and
        # KVM_RUN with request_exit's protocol (Vcpu.run); backends without them
        # (the mock, the buffer guard) take the Python paths
        self.attr_int_get = self.arch.lib.kvmdev_attr_get_int
        self.attr_int_set = self.arch.lib.kvmdev_attr_set_int
        self.vcpu_run = self.arch.lib.kvmdev_vcpu_run
        self.kernel_release = os.uname().release

    def open_system(self, cell: Any) -> int:
        r = self.arch.lib.kvmdev_open_fd(os.fsencode(self.path), os.O_RDWR | os.O_CLOEXEC, cell)
        if r < 0:
            raise KvmUnavailable(-r, "open", self.path, target_key=None)
        return r

    def close(self, fd: int) -> None:
        os.close(fd)

    def new_cell(self) -> Any:
        """An fd cell (cdefs/helpers.c): -1 until an ioctl stores a new fd in it; its
        fd is closed by cell_close() or, at the latest, when the cell is freed."""
        ffi = self.arch.ffi
        return ffi.gc(ffi.new("int[1]", [-1]), self.arch.lib.kvmdev_cell_free)

    def mmap(self, fd: int, length: int) -> Any:
        """mmap(2) of the fd, shared, read-write; unmapped when the last reference
        goes.  Not Python's mmap.mmap: before 3.13 (trackfd=False) it dup()s the fd,
        so a vCPU's first run() failed with EMFILE in a full fd table."""
        return _map_fd(self.arch, fd, length)


    def kick(self, fd: int, thread_ident: int) -> None:
        """KICK_SIGNAL to the thread in (or entering) KVM_RUN: EINTR in the ioctl."""
        import signal   # here: a process that dropped privileges may not read the stdlib later
        signal.pthread_kill(thread_ident, self.kick_signal())

    def kick_signal(self) -> int:
        """KICK_SIGNAL, its empty C handler installed on first use."""
        import signal   # here: a process that dropped privileges may not read the stdlib later
        global KICK_SIGNAL
        if not _kick_installed:
            with _kick_lock:
                if not _kick_installed:
                    sig = KICK_SIGNAL if KICK_SIGNAL is not None else signal.SIGRTMIN + 2
                    r = self.arch.lib.kvmdev_install_kick_handler(sig)
                    if r < 0:
                        raise OSError(-r, f"kvmdev: cannot install the vCPU kick handler for signal {sig}: "
                                          + (os.strerror(-r) if r != -errno.EBUSY else "another handler owns it"))
                    KICK_SIGNAL = sig
                    _kick_installed.append(sig)
        return _kick_installed[0]


_MAP_TYPES: dict[int, type] = {}


def _map_fd(arch: Arch, fd: int, length: int) -> Any:
    """A ctypes char array over mmap(fd), holding the C map cell (kvmdev_map_fd)
    that unmaps it when freed; cffi's from_buffer keeps it alive as long as a view
    of it is.  The address is in the cell before any Python step: an exception
    cannot leak the mapping."""
    ffi, lib = arch.ffi, arch.lib
    cell = ffi.gc(ffi.new("struct kvmdev_map *"), lib.kvmdev_map_free)
    r = lib.kvmdev_map_fd(fd, length, cell)
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    t = _MAP_TYPES.get(length)
    if t is None:
        t = _MAP_TYPES[length] = type("kvm_run_map", (ctypes.c_char * length,), {})
    m = t.from_address(int(ffi.cast("uintptr_t", cell.addr)))
    m._cell = cell
    return m
