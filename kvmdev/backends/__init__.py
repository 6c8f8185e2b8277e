"""Backends below the fd layer: ``real`` issues the syscall, ``mock`` hands the
same request to an in-process emulator.  Both have this contract:

- ``open_system(cell)`` returns the fd of a new system (/dev/kvm) handle, stored in
  the fd cell ``cell`` as well;
- ``new_cell()``: an fd cell, a cffi ``int[1]`` holding -1 until a call stores a new fd
  in it; ``cell_close(cell)`` takes the fd out and closes it in one atomic step
  (1 if it did, 0 if the cell was empty); freeing the cell closes what it holds.
  ``ioctl_val_fd(fd, request, value, cell)`` and ``ioctl_fd_at(fd, request, arg,
  offset, cell)`` are ioctls that create an fd (the result, or the int at ``offset``
  of ``arg``) and store it in ``cell`` before returning: no fd is ever only a
  Python value that an exception could drop;
- ``ioctl(fd, request, arg)`` takes a cffi pointer to the argument struct
  (or NULL) and returns the ioctl's result, or -errno;
- ``ioctl_val(fd, request, value)`` passes an integer argument;
- ``attr(fd, request, group, attr, addr)``: a device-attr ioctl with a
  struct kvm_device_attr made from the arguments (``addr`` a cffi pointer);
- ``attr_batch(fd, request, attrs, count, err)``: the device-attr ioctl on
  each of ``count`` structs of the cffi array ``attrs`` in order, stopping at
  the first failure; returns how many succeeded, ``err[0]`` its -errno or 0;
- ``close(fd)`` closes an fd the backend gave out;
- ``mmap(fd, length)`` maps an fd the way mmap(2) on a vCPU fd does;
- ``kick(fd, thread_ident)``: interrupt the KVM_RUN of vCPU ``fd`` that thread
  ``thread_ident`` is in or about to enter (real: the kick signal to that
  thread; mock: a flag its run loop checks);
- ``kernel_release``: the release of the kernel behind it (uname -r).
"""
from __future__ import annotations

from typing import Any, Protocol

from ..arch import Arch


class Backend(Protocol):
    name: str
    arch: Arch
    kernel_release: str

    def open_system(self, cell: Any) -> int: ...
    def new_cell(self) -> Any: ...
    def cell_close(self, cell: Any) -> int: ...
    def ioctl_val_fd(self, fd: int, request: int, value: int, cell: Any) -> int: ...
    def ioctl_fd_at(self, fd: int, request: int, arg: Any, off: int, cell: Any) -> int: ...
    def ioctl(self, fd: int, request: int, arg: Any) -> int: ...
    def ioctl_val(self, fd: int, request: int, value: int) -> int: ...
    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int: ...
    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int: ...
    def close(self, fd: int) -> None: ...
    def mmap(self, fd: int, length: int) -> Any: ...
    def kick(self, fd: int, thread_ident: int) -> None: ...
