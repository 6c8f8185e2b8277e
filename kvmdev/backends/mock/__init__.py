"""The mock backend: an in-process emulator of the kernel at the ioctl boundary.

Every fd it gives out is a real file descriptor (an eventfd), so fd numbers,
lifetimes and leaks behave as with /dev/kvm; ioctls on them are dispatched by
kernel name to the kernel objects of kvmdev.backends.mock.kernel, which copy
from and to the caller's memory as the kernel does (EFAULT on a bad pointer).
"""
from __future__ import annotations

import errno as E
import importlib
import mmap
import os
import threading
from typing import Any

from ...arch import Arch, device_type_name, get_arch, host_arch_name
from .host import HostProfile, check_options
from .kernel import ArchModel, Errno, KernelObject, MockSystem, MockVcpu, UserMemory, fd_is_open

_ARCH_MODELS = {"x86_64": "x86", "arm64": "arm64", "powerpc": "powerpc", "s390": "s390"}


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
        self._caps = {v: n for n, v in self.arch.constants("KVM_CAP_").items()}

    def __repr__(self) -> str:
        return f"<MockBackend {self.arch.name} fds={len(self._objects)}>"

    def new_fd(self, obj: KernelObject) -> int:
        """A real fd for a kernel object (anon_inode_getfd: EMFILE when the fd
        table is full)."""
        try:
            fd = os.eventfd(0, os.EFD_CLOEXEC)
        except OSError as e:
            raise Errno(e.errno or E.ENOMEM) from None
        with self._lock:
            self._objects[fd] = obj
        return fd

    def open_system(self) -> int:
        try:
            return self.new_fd(MockSystem(self))
        except Errno as e:
            from ...errors import KvmUnavailable
            raise KvmUnavailable(e.errno, "open", "/dev/kvm (mock)", target_key=None) from None

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        return self._dispatch(fd, request, int(self.arch.ffi.cast("uintptr_t", arg)))

    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int:
        st = self.arch.ffi.new("struct kvm_device_attr *", [0, group, attr, self.arch.ffi.cast("uintptr_t", addr)])
        return self.ioctl(fd, request, st)

    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int:
        """kvmdev_attr_batch: in order, stopping at the first failure."""
        err[0] = 0
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
        with self._lock:
            obj = self._objects.pop(fd, None)
        os.close(fd)
        if obj is not None:
            obj.release()

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
