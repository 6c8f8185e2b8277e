"""The real backend: /dev/kvm through the compiled module's ioctl wrappers."""
from __future__ import annotations

import errno
import mmap
import os
from ..arch import Arch, get_arch, host_arch_name
from ..errors import KvmUnavailable

KVM_PATH = "/dev/kvm"


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
        self.kernel_release = os.uname().release

    def open_system(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(e.errno or errno.EIO, "open", self.path,
                                 target_key=None) from None

    def close(self, fd: int) -> None:
        os.close(fd)

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
