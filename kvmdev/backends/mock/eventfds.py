"""KVM_IRQFD and KVM_IOEVENTFD of a mock VM (virt/kvm/eventfd.c).

The kernel keeps a reference to each eventfd (the caller may close its fd); the
mock keeps a dup of it, closed on deassign and when the VM file is released.

Delivery: the kernel's irqfd is woken by the eventfd write and injects from a
workqueue, so a real caller sees the interrupt pending some time after the
write.  The mock reads every assigned irqfd (poll, then read, so the caller's
file stays blocking) at the start of each ioctl of the VM, its vCPUs and its
devices, and injects then: the next VGIC register read after a write sees it.
An ioeventfd is signalled (its counter += 1) by a guest store the arch model
matches against it (kvm_io_bus_write), instead of an MMIO exit.
"""
from __future__ import annotations

import errno as E
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errno_ import Errno

if TYPE_CHECKING:
    from .kernel import MockVm

U64 = (1 << 64) - 1


def eventfd_identity(fd: int) -> str:
    """eventfd_ctx_fdget: EBADF for no such fd, EINVAL for a file that is not an
    eventfd; the identity of the eventfd (two fds of one eventfd are one)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except (FileNotFoundError, ValueError):
        raise Errno(E.EBADF) from None
    except OSError as e:
        raise Errno(e.errno or E.EBADF) from None
    if target != "anon_inode:[eventfd]":
        raise Errno(E.EINVAL)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("eventfd-id:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"fd{fd}"     # kernels before 6.0 show no eventfd-id: the fd number


@dataclass
class IoEventFd:
    fd: int          # the mock's dup
    ident: str
    addr: int
    length: int
    pio: bool
    datamatch: int | None   # None: wildcard

    def matches(self, addr: int, n: int, value: int) -> bool:
        """ioeventfd_in_range."""
        if addr != self.addr:
            return False
        if not self.length:
            return True
        return n == self.length and (self.datamatch is None or value == self.datamatch)


class EventFds:
    def __init__(self, vm: "MockVm") -> None:
        self.vm = vm
        self.irqfds: dict[str, tuple[int, int]] = {}    # identity -> (dup fd, gsi)
        self.ioeventfds: list[IoEventFd] = []

    # -- KVM_IRQFD (kvm_irqfd) --------------------------------------------------
    def irqfd(self, fd: int, gsi: int, flags: int, resamplefd: int) -> None:
        c = self.vm.backend.arch.const
        deassign, resample = c("KVM_IRQFD_FLAG_DEASSIGN"), c("KVM_IRQFD_FLAG_RESAMPLE")
        if flags & ~(deassign | resample):
            raise Errno(E.EINVAL)
        if flags & deassign:
            ident = eventfd_identity(fd)
            held = self.irqfds.get(ident)
            if held is not None and held[1] == gsi:
                del self.irqfds[ident]
                os.close(held[0])
            return
        self.vm.backend.arch_model.irqfd_allowed(self.vm, bool(flags & resample))
        ident = eventfd_identity(fd)
        if flags & resample:
            raise Errno(E.ENOSYS)    # resample (level-triggered irqfd): not modelled
        if ident in self.irqfds:
            raise Errno(E.EBUSY)     # this eventfd already signals a GSI of this VM
        self.irqfds[ident] = (os.dup(fd), gsi)

    def poll(self) -> None:
        """Deliver what was written to the irqfds since the last ioctl."""
        if not self.irqfds:
            return
        import select   # here, not at import: a process may drop the right to read the stdlib later
        fds = {dup: gsi for dup, gsi in self.irqfds.values()}
        ready, _, _ = select.select(list(fds), [], [], 0)
        for dup in ready:
            try:
                count = int.from_bytes(os.read(dup, 8), "little")
            except BlockingIOError:
                continue
            if count:
                self.vm.backend.arch_model.irqfd_inject(self.vm, fds[dup])

    # -- KVM_IOEVENTFD (kvm_ioeventfd) ----------------------------------------------
    def ioeventfd(self, datamatch: int, addr: int, length: int, fd: int, flags: int) -> None:
        c = self.vm.backend.arch.const
        dm, pio, deassign = (c("KVM_IOEVENTFD_FLAG_DATAMATCH"), c("KVM_IOEVENTFD_FLAG_PIO"),
                             c("KVM_IOEVENTFD_FLAG_DEASSIGN"))
        match = datamatch if flags & dm else None
        if flags & deassign:          # kvm_deassign_ioeventfd: checked before anything else
            ident = eventfd_identity(fd)
            for p in self.ioeventfds:
                if (p.pio, p.ident, p.addr, p.length, p.datamatch) == (bool(flags & pio), ident, addr, length, match):
                    self.ioeventfds.remove(p)
                    os.close(p.fd)
                    return
            raise Errno(E.ENOENT)
        if length not in (0, 1, 2, 4, 8) or addr + length > U64 or flags & ~0x1F:
            raise Errno(E.EINVAL)     # natural sizes, no wrap, KVM_IOEVENTFD_VALID_FLAG_MASK
        if not length and flags & dm:
            raise Errno(E.EINVAL)
        ident = eventfd_identity(fd)
        for p in self.ioeventfds:     # ioeventfd_check_collision
            if p.pio == bool(flags & pio) and p.addr == addr and (
                    not p.length or not length
                    or p.length == length and (p.datamatch is None or match is None or p.datamatch == match)):
                raise Errno(E.EEXIST)
        self.ioeventfds.append(IoEventFd(os.dup(fd), ident, addr, length, bool(flags & pio), match))

    def io_write(self, addr: int, n: int, value: int, pio: bool = False) -> bool:
        """kvm_io_bus_write: True if an ioeventfd took the guest's write."""
        for p in self.ioeventfds:
            if p.pio == pio and p.matches(addr, n, value):
                os.write(p.fd, (1).to_bytes(8, "little"))
                return True
        return False

    def release(self) -> None:
        for dup, _ in self.irqfds.values():
            os.close(dup)
        for p in self.ioeventfds:
            os.close(p.fd)
        self.irqfds.clear()
        self.ioeventfds.clear()
