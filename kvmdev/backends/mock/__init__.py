"""The mock backend: an in-process emulator of the kernel at the ioctl boundary.

Every fd it gives out is a real file descriptor (an eventfd), so fd numbers,
lifetimes and leaks behave as with /dev/kvm; ioctls on them are dispatched by
kernel name to the kernel objects of kvmdev.backends.mock.kernel, which copy
from and to the caller's memory as the kernel does (EFAULT on a bad pointer).
"""
from __future__ import annotations

import errno as E
import importlib
import itertools
import mmap
import os
import threading
from typing import Any

from ... import _forksafe
from ...arch import Arch, device_type_name, get_arch, host_arch_name
from .host import HostProfile, check_options
from .kernel import ArchModel, Errno, KernelObject, MockSystem, MockVcpu, MockVm, UserMemory, fd_is_open

_TAG = 0x6B760000          # "kv": the eventfd count of a mock fd
_BACKEND_IDS = itertools.count(1)
_ARCH_MODELS = {"x86_64": "x86", "arm64": "arm64", "powerpc": "powerpc", "s390": "s390"}


def _extent(ffi: Any, p: Any) -> int | None:
    """The size of a cffi array the caller passes as attr.addr (its whole memory);
    None for pointers (their extent is not known: an element of a larger buffer,
    a guard page's end) and plain integers."""
    try:
        t = ffi.typeof(p)
    except TypeError:
        return None
    return int(ffi.sizeof(p)) if t.kind == "array" else None


_ATTR_ACCESSORS = {"KVM_HAS_DEVICE_ATTR": "has", "KVM_GET_DEVICE_ATTR": "get", "KVM_SET_DEVICE_ATTR": "set"}


class MockBackend:
    name = "mock"

    def __init__(self, arch: str | None = None, **host: Any) -> None:
        self.arch: Arch = get_arch(arch or host_arch_name())
        check_options(self.arch.name, host)
        self.host = HostProfile(arch=self.arch.name, **host)
        self.kernel_release = self.host.kernel_release
        self.user = UserMemory(self.arch)
        mod = importlib.import_module(f"{__name__}.{_ARCH_MODELS[self.arch.name]}")
        self.arch_model: ArchModel = mod.ArchModel(self)
        if self.host.device_types is None:
            self.host.device_types = tuple(self.arch_model.device_types())
        self._objects: dict[int, KernelObject] = {}
        self._lock = threading.Lock()
        self._cell_lock = threading.Lock()
        _forksafe.register(self)
        # every eventfd of this backend starts with this count: an fd an interrupt
        # (KeyboardInterrupt) caught between its creation and its registration is
        # found by it and closed (_sweep); in the kernel that step is one C call
        self._tag = _TAG | next(_BACKEND_IDS) & 0xFFFF
        self._caps = {v: n for n, v in self.arch.constants("KVM_CAP_").items()}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._cell_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MockBackend {self.arch.name} fds={len(self._objects)}>"

    def new_fd(self, obj: KernelObject) -> int:
        """A real fd for a kernel object (anon_inode_getfd: EMFILE when the fd
        table is full)."""
        with self._lock:     # creation and registration as one step for _sweep
            try:
                fd = os.eventfd(self._tag, os.EFD_CLOEXEC)
            except OSError as e:
                raise Errno(e.errno or E.ENOMEM) from None
            self._objects[fd] = obj
        return fd

    def forget_fd(self, fd: int) -> None:
        """Undo new_fd: the kernel object's creation did not complete."""
        with self._lock:
            if self._objects.pop(fd, None) is not None:
                os.close(fd)

    def _sweep(self) -> None:
        """Close this backend's eventfds that are registered to no object (left by
        an interrupt inside new_fd)."""
        tag = f"eventfd-count: {self._tag:16x}"
        with self._lock:
            for name in os.listdir("/proc/self/fd"):
                fd = int(name)
                if fd in self._objects:
                    continue
                try:
                    with open(f"/proc/self/fdinfo/{fd}") as f:
                        info = f.read()
                except OSError:
                    continue
                if tag in info:
                    os.close(fd)

    def open_system(self, cell: Any) -> int:
        try:
            fd = cell[0] = self.new_fd(MockSystem(self))
            return fd
        except Errno as e:
            from ...errors import KvmUnavailable
            raise KvmUnavailable(e.errno, "open", "/dev/kvm (mock)", target_key=None) from None

    # fd cells (see RealBackend.new_cell); the mock is the kernel here: its steps
    # between the "syscall" and the store are not interruptible kvmdev code
    def new_cell(self) -> Any:
        ffi = self.arch.ffi
        return ffi.gc(ffi.new("int[1]", [-1]), self._cell_free)

    def ioctl_val_fd(self, fd: int, request: int, value: int, cell: Any) -> int:
        r = self.ioctl_val(fd, request, value)
        if r >= 0:
            cell[0] = r
        return r

    def ioctl_fd_at(self, fd: int, request: int, arg: Any, off: int, cell: Any) -> int:
        r = self.ioctl(fd, request, arg)
        if r >= 0:
            cell[0] = self.arch.ffi.cast("int *", self.arch.ffi.cast("char *", arg) + off)[0]
        return r

    def cell_close(self, cell: Any) -> int:
        with self._cell_lock:   # the exchange of kvmdev_cell_close
            fd, cell[0] = cell[0], -1
        if fd < 0:
            return 0
        self.close(fd)
        return 1

    def _cell_free(self, cell: Any) -> None:
        try:
            self.cell_close(cell)
        except Exception:
            pass

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        return self._dispatch(fd, request, int(self.arch.ffi.cast("uintptr_t", arg)))

    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int:
        ffi = self.arch.ffi
        st = ffi.new("struct kvm_device_attr *", [0, group, attr, ffi.cast("uintptr_t", addr)])
        size = _extent(ffi, addr)
        if size is None:
            return self.ioctl(fd, request, st)
        with self.user.caller_buffer(int(st.addr), size):   # never a copy past the caller's buffer
            return self.ioctl(fd, request, st)

    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int:
        """kvmdev_attr_batch: in order, stopping at the first failure (a device's
        batch under one lock_all_vcpus, see MockVm.batch_locked)."""
        err[0] = 0
        batch = getattr(self._objects.get(fd), "attr_batch", None)
        name = self.arch.ioctl_names.get(request)
        if batch is not None and count > 1 and name in _ATTR_ACCESSORS:
            return int(batch(_ATTR_ACCESSORS[name], attrs, count, err))
        for i in range(count):
            r = self.ioctl(fd, request, attrs + i)
            if r < 0:
                err[0] = r
                return i
        return count

    def ioctl_val(self, fd: int, request: int, value: int) -> int:
        return self._dispatch(fd, request, value)

    def _dispatch(self, fd: int, request: int, arg: int) -> int:
        obj = self._objects.get(fd)
        if obj is None:
            return -(E.ENOTTY if fd_is_open(fd) else E.EBADF)
        name = self.arch.ioctl_names.get(request)
        try:
            if name is None:
                raise Errno(obj.unknown_ioctl_errno)
            return obj.ioctl(name, arg)
        except Errno as e:
            return -e.errno

    def close(self, fd: int) -> None:
        with self._lock:      # unregistered and closed in one step for _sweep
            obj = self._objects.pop(fd, None)
            os.close(fd)
        if obj is not None:
            obj.release()
        if isinstance(obj, (MockSystem, MockVm)):
            self._sweep()

    def mmap(self, fd: int, length: int) -> Any:
        """mmap of a vCPU fd: an anonymous page the mock vCPU shares with the caller."""
        obj = self._objects.get(fd)
        if not isinstance(obj, MockVcpu):
            raise OSError(E.ENODEV, "mmap of a mock fd that is not a vCPU")
        obj.run_map = mmap.mmap(-1, length)
        return obj.run_map

    def kick(self, fd: int, thread_ident: int) -> None:
        """What the kick signal does to a thread in KVM_RUN: the mock vCPU's run
        loop sees the flag between guest instructions and while it sleeps."""
        obj = self._objects.get(fd)
        if isinstance(obj, MockVcpu):
            obj.kick()

    # -- helpers for the kernel objects ----------------------------------------
    def cap_name(self, cap: int) -> str:
        return self._caps.get(cap, "")

    def device_type_name(self, t: int) -> str:
        return device_type_name(t)

    def object(self, fd: int) -> KernelObject:
        """The kernel object behind one of our fds (for tests of the mock itself)."""
        return self._objects[fd]
