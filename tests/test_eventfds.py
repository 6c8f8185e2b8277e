"""KVM_IRQFD and KVM_IOEVENTFD (and x86 KVM_CREATE_IRQCHIP): on the real x86
kernel here and the x86 mock; the arm64 ones on the arm64 mock (every profile)
and the real 6.12 and 6.1 kernels in the guests, GIC v3 and v2.

The kernel injects an irqfd's interrupt from a workqueue: the tests poll the
VGIC's pending bits with a timeout (the mock delivers at the next ioctl)."""
from __future__ import annotations

import errno as E
import os
import select
import time
from typing import Iterator

import pytest

import kvmdev
from a64 import ldst, program
from kvm_asserts import raises
from kvmdev.devices.vgic import VgicV2, VgicV3
from test_vcpu_run_control import Runner

RAM = 0x40000000
MMIO = 0x10000000
IOEV = 0x10001000


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def fds() -> Iterator[list[int]]:
    held: list[int] = []
    yield held
    for fd in held:
        os.close(fd)


def _closed_fd() -> int:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


# --- x86 ---------------------------------------------------------------------------

def test_irqfd_x86(kvm: kvmdev.Kvm, fds: list[int]) -> None:
    """x86: KVM_IRQFD needs the in-kernel irqchip (EINVAL without); an eventfd
    signals one GSI (EBUSY for a second); EBADF/EINVAL for no fd / not an eventfd."""
    if kvm.arch != "x86_64":
        pytest.skip("x86 irqchip")
    efd = _eventfd()
    r, w = os.pipe()
    fds += [efd, r, w]
    with kvm.create_vm() as vm:
        raises(E.EINVAL, vm.irqfd, efd, 5)               # kvm_arch_irqfd_allowed: no irqchip
        vm.create_irqchip()
        raises(E.EEXIST, vm.create_irqchip)
        vm.irqfd(efd, 5)
        e = raises(E.EBUSY, vm.irqfd, efd, 6)
        assert "KVM_IRQFD" in str(e)
        raises(E.EBADF, vm.irqfd, _closed_fd(), 5)
        raises(E.EINVAL, vm.irqfd, r, 5)
        vm.irqfd(efd, 5, deassign=True)
        vm.irqfd(efd, 6)                                 # free again
        with pytest.raises(TypeError):
            vm.irqfd("3", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            vm.irqfd(efd, 1 << 32)
    with kvm.create_vm() as vm:
        vm.create_vcpu(0)
        raises(E.EINVAL, vm.create_irqchip)              # after a vCPU


def test_ioeventfd_registration_x86(kvm: kvmdev.Kvm, fds: list[int]) -> None:
    """kvm_ioeventfd's checks: natural lengths (0 = any), no datamatch with length
    0, one registration per address unless the datamatches differ (EEXIST),
    deassign of what is not there ENOENT."""
    if kvm.arch != "x86_64":
        pytest.skip("x86")
    a, b = _eventfd(), _eventfd()
    fds += [a, b]
    with kvm.create_vm() as vm:
        vm.ioeventfd(a, 0xE0000000, 4)
        raises(E.EEXIST, vm.ioeventfd, b, 0xE0000000, 4)
        raises(E.EEXIST, vm.ioeventfd, b, 0xE0000000, 0)
        raises(E.EINVAL, vm.ioeventfd, b, 0xE0001000, 3)
        raises(E.EINVAL, vm.ioeventfd, b, 0xE0001000, 0, datamatch=1)
        raises(E.EINVAL, vm.ioeventfd, b, (1 << 64) - 4, 8)      # wraps
        vm.ioeventfd(b, 0xE0002000, 2, datamatch=1)
        vm.ioeventfd(a, 0xE0002000, 2, datamatch=2)             # another value: no collision
        raises(E.EEXIST, vm.ioeventfd, a, 0xE0002000, 2)        # a wildcard collides
        vm.ioeventfd(a, 0x10, 1, mmio=False)                     # a port
        vm.ioeventfd(a, 0xE0000000, 4, deassign=True)
        e = raises(E.ENOENT, vm.ioeventfd, a, 0xE0000000, 4, deassign=True)
        assert "KVM_IOEVENTFD" in str(e)
        raises(E.ENOENT, vm.ioeventfd, a, 0xE0002000, 2, datamatch=3, deassign=True)
        vm.ioeventfd(b, 0xE0002000, 2, datamatch=1, deassign=True)
        raises(E.EBADF, vm.ioeventfd, _closed_fd(), 0xE0003000, 4)


def test_ioeventfd_takes_a_port_write_x86(kvm: kvmdev.Kvm, fds: list[int]) -> None:
    """A real-mode guest `mov al, 5; out 0x10, al; jmp .`: the port write signals
    the eventfd instead of a KVM_EXIT_IO, and the guest goes on spinning."""
    if kvm.arch != "x86_64" or kvm.backend == "mock":
        pytest.skip("the x86 mock runs no guest code")
    efd = _eventfd()
    fds.append(efd)
    with kvm.create_vm() as vm:
        mem = vm.add_memory(0xFFFF0000, 0x10000)
        mem.write(0xFFFFFFF0, b"\xb0\x05\xe6\x10\xeb\xfe")
        c = vm.create_vcpu(0)
        vm.ioeventfd(efd, 0x10, 1, mmio=False, datamatch=5)
        r = Runner(c)
        deadline = time.monotonic() + 10
        while not _readable(efd) and time.monotonic() < deadline:
            time.sleep(0.01)
        c.request_exit()
        assert r.result() == "KVM_EXIT_INTR"
        assert os.eventfd_read(efd) == 1


# --- arm64 -------------------------------------------------------------------------

@pytest.fixture
def gic(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> Iterator[tuple[kvmdev.Vm, VgicV2 | VgicV3, kvmdev.Vcpu]]:
    with arm64_kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        cpu.vcpu_init(["PSCI_0_2"])
        g: VgicV2 | VgicV3
        if arm64_gic == 3:
            g = vm.create_device("ARM_VGIC_V3")
            g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        else:
            g = vm.create_device("ARM_VGIC_V2")
            g.dist_base, g.cpu_base = 0x08000000, 0x08010000
        g.nr_irqs = 64
        g.init()
        yield vm, g, cpu


def _wait_pending(g: VgicV2 | VgicV3, bit: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if g.dist["GICD_ISPENDR1"] >> bit & 1:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.mark.arm64
def test_irqfd_makes_an_spi_pending(gic: tuple[kvmdev.Vm, VgicV2 | VgicV3, kvmdev.Vcpu], fds: list[int]) -> None:
    """GSI 8 is SPI 40 (the default routing of vgic_init): a write to the eventfd
    raises the line, which latches the edge-triggered SPI pending
    (GICD_ISPENDR1 bit 8) and consumes the eventfd's count; after deassign a
    write changes nothing.  A level SPI's line goes up and stays up."""
    vm, g, cpu = gic
    d = g.dist
    d["GICD_ICFGR2"] = 1 << 17                   # SPI 40: edge-triggered
    efd, other = _eventfd(), _eventfd()
    r, w = os.pipe()
    fds += [efd, other, r, w]
    vm.irqfd(efd, 8)
    raises(E.EBUSY, vm.irqfd, efd, 9)
    raises(E.EINVAL, vm.irqfd, r, 9)
    raises(E.EBADF, vm.irqfd, _closed_fd(), 9)
    assert not d["GICD_ISPENDR1"] >> 8 & 1
    os.eventfd_write(efd, 1)
    assert _wait_pending(g, 8), "SPI 40 did not become pending"
    assert not _readable(efd)                    # the kernel read the count
    vm.irqfd(efd, 8, deassign=True)
    d["GICD_ICPENDR1"] = 1 << 8                  # clears on v2 (write-1-to-clear); v3: ignored
    d["GICD_ISPENDR1"] = 0                       # clears on v3 (userspace sets the latch); v2: no-op
    assert not d["GICD_ISPENDR1"] >> 8 & 1
    os.eventfd_write(efd, 1)
    assert not _wait_pending(g, 8, timeout=0.3)
    assert _readable(efd)                        # nobody took it
    vm.irqfd(other, 9)                           # GSI 9 = SPI 41, level-triggered (ICFGR2 above)
    raises(E.EBUSY, vm.irqfd, other, 8)
    os.eventfd_write(other, 1)
    # kvm_arch_set_irq_inatomic raises the line and nothing lowers it (no
    # resamplefd): v2 reads a level SPI pending from its line; v3's ISPENDR reads
    # only the latch, LEVEL_INFO the line
    if isinstance(g, VgicV2):
        assert _wait_pending(g, 9), "SPI 41's line did not go up"
    else:
        deadline = time.monotonic() + 10
        while not g.level_info(cpu, 32) >> 9 & 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert g.level_info(cpu, 32) >> 9 & 1, "SPI 41's line did not go up"
        assert not d["GICD_ISPENDR1"] >> 9 & 1


@pytest.mark.arm64
def test_ioeventfd_takes_a_guest_store(arm64_kvm: kvmdev.Kvm, fds: list[int]) -> None:
    """A guest store to a registered address signals the eventfd and the guest
    goes on (no KVM_EXIT_MMIO); with a datamatch only that value does; after
    deassign the store exits to userspace again."""
    a, b = _eventfd(), _eventfd()
    fds += [a, b]
    with arm64_kvm.create_vm() as vm:
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2"])
        base = RAM + 0x400000
        mem = vm.add_memory(base, 0x10000)
        # str x0, [x5]; str w0, [x7]; str x0, [x6]; b base (a run after the exit
        # steps over the store it completes, kvm_handle_mmio_return, and loops)
        mem.write(base, program(ldst(False, 0, 5), ldst(False, 0, 7, size=2), ldst(False, 0, 6),
                                0x14000000 | (-3 & 0x3FFFFFF)))
        vm.ioeventfd(a, IOEV, 8)
        vm.ioeventfd(b, IOEV + 8, 4, datamatch=0x1234)
        raises(E.EEXIST, vm.ioeventfd, b, IOEV, 0)
        raises(E.EINVAL, vm.ioeventfd, b, IOEV + 16, 3)
        for reg, v in {"pc": base, "x0": 0x1234, "x5": IOEV, "x6": MMIO, "x7": IOEV + 8}.items():
            c.set_one_reg(reg, v)
        assert c.run() == "KVM_EXIT_MMIO"
        assert c.mmio.phys_addr == MMIO                  # the two stores before did not exit
        assert os.eventfd_read(a) == 1 and os.eventfd_read(b) == 1
        vm.ioeventfd(a, IOEV, 8, deassign=True)
        raises(E.ENOENT, vm.ioeventfd, a, IOEV, 8, deassign=True)
        c.set_one_reg("x0", 0x99)
        assert c.run() == "KVM_EXIT_MMIO"
        assert c.mmio.phys_addr == IOEV                  # deassigned: an exit again
