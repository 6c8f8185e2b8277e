"""XICS and the Freescale MPIC (xics.rst, mpic.rst; arch/powerpc/kvm/
book3s_xics.c, mpic.c).  The XICS tests (marked powerpc) run unchanged on the
real book3s kernel, Debian's ppc64el 6.1 with KVM-HV on an emulated PowerNV
POWER8 (make test-ppc64), and on the book3s mock.  A book3s KVM has no MPIC
(ENODEV, tested there); the MPIC tests run on the e500 mock only, whose rules
come from the 6.12 source (no e500 KVM host here)."""
from __future__ import annotations

import errno as E
import os

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.devices.mpic import Mpic, offset
from kvmdev.devices.xics import IcpState, Xics, XicsSource

MISC, REG, ACTIVE = "KVM_DEV_MPIC_GRP_MISC", "KVM_DEV_MPIC_GRP_REGISTER", "KVM_DEV_MPIC_GRP_IRQ_ACTIVE"
SOURCES = "KVM_DEV_XICS_GRP_SOURCES"
S, I = XicsSource, IcpState


@pytest.fixture
def ppc_vm():
    """A VM of the e500 mock (the MPIC's platform)."""
    with kvmdev.open("mock", arch="powerpc", ppc_platform="e500") as k, k.create_vm() as vm:
        yield vm


def papr_xics(kvm: kvmdev.Kvm, n: int = 2) -> tuple[kvmdev.Vm, Xics, list[kvmdev.Vcpu]]:
    """A VM with an XICS and ``n`` vCPUs in PAPR mode, each connected as server = its id."""
    vm = kvm.create_vm()
    x = vm.create_device("XICS")
    assert isinstance(x, Xics)
    cpus = [vm.create_vcpu(i) for i in range(n)]
    for c in cpus:
        c.enable_cap("KVM_CAP_PPC_PAPR")
        x.connect(c)
    return vm, x, cpus


@pytest.mark.parametrize("kind", ["FSL_MPIC_20", "FSL_MPIC_42"])
def test_mpic(ppc_vm, kind: str) -> None:
    """One per VM (EINVAL, either kind); the base 256 KiB aligned (EINVAL), 0
    unmaps; registers at 4-byte aligned offsets of its regions (else ENXIO),
    PIR not writable, IVPR keeping its activity bit; HAS for every register offset."""
    m = ppc_vm.create_device(kind)
    assert isinstance(m, Mpic)
    raises(E.EINVAL, ppc_vm.create_device, "FSL_MPIC_42" if kind == "FSL_MPIC_20" else "FSL_MPIC_20")
    assert m.base == 0
    m.base = 0xE0040000
    assert m.base == 0xE0040000
    e = raises(E.EINVAL, m.set_attr, MISC, "KVM_DEV_MPIC_BASE_ADDR", 0xE0041000)
    assert "256 KiB" in str(e)
    with pytest.raises(ValueError, match="256 KiB"):
        m.base = 0x1000
    m.base = 0
    assert m.reg("IVPR", irq=3) == 0x80000000 and m.reg("CTPR") == 15
    m.set_reg("IVPR", 0xFFFFFFFF, irq=3)
    assert m.reg("IVPR", irq=3) == 0x80CFFFFF          # activity and reserved bits stay clear
    m.set_reg("IDR", 0x2, irq=3)
    assert m.reg(offset("IDR", 3)) == 0x2
    for bad in (0x10002, 0x5000, 0x40000):
        e = raises(E.ENXIO, m.get_attr, REG, bad)
        assert "4-byte aligned offset" in str(e)
    raises(E.ENXIO, m.set_reg, "PIR", 1)
    assert m.has_attr(REG, 0x3) and m.has_attr(ACTIVE, 256) and not m.has_attr(ACTIVE, 257)
    raises(E.ENXIO, m.get_attr, MISC, 1, ctype="__u64")


def test_mpic_irq_active(ppc_vm) -> None:
    """IRQ_ACTIVE: 0..256 (EINVAL above), values 0/1 (EINVAL else); a level source
    follows the line, an edge source latches a 1 and ignores a 0."""
    m = ppc_vm.create_device("FSL_MPIC_42")
    assert m.irq_active(5) == 0
    m.set_irq_active(5, 1)
    m.set_irq_active(5, 0)
    assert m.irq_active(5) == 1                         # edge (IVPR sense 0): latched
    m.set_reg("IVPR", 1 << 22, irq=6)                   # level-sensitive
    m.set_irq_active(6, 1)
    assert m.irq_active(6) == 1
    m.set_irq_active(6, 0)
    assert m.irq_active(6) == 0
    raises(E.EINVAL, m.set_irq_active, 7, 2)
    raises(E.EINVAL, m.irq_active, 257)
    m.set_irq_active(256, 1)                            # IPI0: accepted (the check is "> 256")


@pytest.mark.powerpc
def test_book3s_devices_and_caps(ppc_kvm) -> None:
    """A book3s KVM: XICS (one per VM, EEXIST), no MPIC (ENODEV); KVM_CAP_IRQ_XICS
    and KVM_CAP_PPC_PAPR yes, KVM_CAP_IRQ_MPIC no; HAS for source numbers
    16..2^20-1 only."""
    assert [ppc_kvm.check_extension(c) for c in ("MAX_VCPUS", "MAX_VCPU_ID")] == [2048, 16384]   # POWER8
    with ppc_kvm.create_vm() as vm:
        assert [vm.check_extension(c) for c in ("IRQ_XICS", "PPC_PAPR", "IRQ_MPIC")] == [1, 1, 0]
        raises(E.ENODEV, vm.create_device, "FSL_MPIC_20")
        raises(E.ENODEV, vm.create_device, "FSL_MPIC_42")
        x = vm.create_device("XICS")
        raises(E.EEXIST, vm.create_device, "XICS")
        assert [x.has_attr(SOURCES, n) for n in (0, 15, 16, 4096, (1 << 20) - 1, 1 << 20)] == \
            [False, False, True, True, True, False]
        assert not x.has_attr(2, 1)                       # no control group on native XICS


@pytest.mark.powerpc
def test_xics_connect(ppc_kvm) -> None:
    """KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) gives a vCPU its ICP (MFRR and PPRI 0xff).
    Kernel quirk: on KVM-HV a vCPU not in PAPR mode is connected, but the call
    answers EINVAL (kvmppc_sanity_check runs after the capability took effect).
    Then: EBUSY for a second connect, EEXIST for a taken server number, EBADF,
    EPERM for an fd that is no XICS, EINVAL for flags; ONE_REG ICP: ENXIO unconnected."""
    with ppc_kvm.create_vm() as vm:
        x = vm.create_device("XICS")
        c0, c1, c2 = (vm.create_vcpu(i) for i in range(3))
        raises(E.ENXIO, x.icp, c0)
        e = raises(E.EINVAL, x.connect, c0)               # not PAPR: connected all the same
        assert e.ioctl == "KVM_ENABLE_CAP" and e.target == "vCPU 0"
        assert x.icp(c0) == I(cppr=0, xisr=0, mfrr=0xFF, ppri=0xFF)
        raises(E.EBUSY, x.connect, c0)
        assert c1.enable_cap("KVM_CAP_PPC_PAPR") == 0
        raises(E.EEXIST, x.connect, c1, 0)                # server 0 is vCPU 0's
        x.connect(c1, 7)
        assert x.icp(c1) == I(0, 0, 0xFF, 0xFF)
        c2.enable_cap("KVM_CAP_PPC_PAPR")
        raises(E.EINVAL, c2.enable_cap, "KVM_CAP_IRQ_XICS", x.fileno(), 9, flags=1)
        raises(E.EBADF, c2.enable_cap, "KVM_CAP_IRQ_XICS", 999, 9)
        fd = os.open("/dev/null", os.O_RDONLY)
        try:
            raises(E.EPERM, c2.enable_cap, "KVM_CAP_IRQ_XICS", fd, 9)
        finally:
            os.close(fd)
        raises(E.EPERM, c2.enable_cap, "KVM_CAP_IRQ_XICS", vm.fileno(), 9)
        raises(E.EINVAL, c2.enable_cap, 9999)
        raises(E.ENXIO, x.icp, c2)


@pytest.mark.powerpc
def test_xics_sources(ppc_kvm) -> None:
    """Source numbers 16..2^20-1 (ENOENT outside, and for a source never set); a
    priority other than 0xff needs a connected server (EINVAL, masked or not);
    the state word round trip; MASKED keeps the priority as the saved one; a
    pending masked source stays pending (masked-pending); P, Q and an LSI's
    pending bit.  The first set in an ICS block of 1024 creates the block, even
    when the set itself fails: an ICP may then name a source in it."""
    vm, x, (c0, c1) = papr_xics(ppc_kvm)
    raises(E.ENOENT, x.source, 20)
    raises(E.ENOENT, x.set_source, 15, S())
    raises(E.ENOENT, x.set_source, 1 << 20, S())
    e = raises(E.EINVAL, x.set_source, 20, S(server=7, priority=5))
    assert "connected" in str(e)
    raises(E.EINVAL, x.set_source, 21, S(server=7, priority=6, masked=True))
    x.set_source(21, S(server=7, priority=0xFF, masked=True))
    assert x.source(21) == S(server=7, priority=0xFF, masked=True)
    x.set_source(20, S(server=1, priority=5, level_sensitive=True))
    assert x.source(20) == S(server=1, priority=5, level_sensitive=True)
    x.set_source(22, S(server=0, priority=6, masked=True, pending=True))
    assert x.source(22) == S(server=0, priority=6, masked=True, pending=True, presented=True)
    x.set_source(22, S(server=0, priority=4))              # a set clears the masked-pending state
    assert x.source(22) == S(server=0, priority=4)
    x.set_source(23, S(priority=0xFF, queued=True, presented=True))
    assert x.source(23) == S(priority=0xFF, masked=True, presented=True, queued=True)
    x.set_source(24, S(priority=0xFF, level_sensitive=True, presented=True))
    assert x.source(24) == S(priority=0xFF, masked=True, level_sensitive=True, pending=True, presented=True)
    raises(E.EINVAL, x.set_source, 3000, S(server=99, priority=5))
    raises(E.ENOENT, x.source, 3000)
    x.set_icp(c0, I(cppr=0xFF, xisr=3000, mfrr=0xFF, ppri=5))   # ICS 2 exists now
    raises(E.EINVAL, x.set_icp, c0, I(cppr=0xFF, xisr=5000, mfrr=0xFF, ppri=5))
    vm.close()


@pytest.mark.powerpc
def test_xics_delivery(ppc_kvm) -> None:
    """A pending source goes to its server's ICP when its priority beats CPPR,
    MFRR and the pending priority; otherwise it waits for a resend (PENDING).  A
    more favoured interrupt rejects the one presented, which then waits; a less
    favoured MFRR written to the ICP triggers the resends.  KVM_IRQ_LINE into a
    masked MSI source leaves it masked-pending; into no source, nothing."""
    vm, x, (c0, _) = papr_xics(ppc_kvm)
    x.set_source(30, S(server=0, priority=5, pending=True))     # CPPR 0: nothing beats it
    assert x.source(30) == S(server=0, priority=5, pending=True, presented=True)
    assert x.icp(c0) == I(0, 0, 0xFF, 0xFF)
    x.set_icp(c0, I(cppr=0xFF))                                 # MFRR unchanged: no resend
    assert x.source(30).pending
    x.set_source(31, S(server=0, priority=5, pending=True))
    assert x.icp(c0) == I(cppr=0xFF, xisr=31, mfrr=0xFF, ppri=5)
    assert x.source(31) == S(server=0, priority=5, presented=True)
    x.set_source(32, S(server=0, priority=4, pending=True, level_sensitive=True))
    assert x.icp(c0) == I(cppr=0xFF, xisr=32, mfrr=0xFF, ppri=4)
    assert x.source(31) == S(server=0, priority=5, pending=True, presented=True)    # rejected
    # MFRR 3 blocks priority 5; raising MFRR back resends what waits
    x.set_icp(c0, I(cppr=0xFF, xisr=0, mfrr=3, ppri=0xFF))
    x.set_source(33, S(server=0, priority=5, pending=True))
    assert x.source(33).pending and x.icp(c0) == I(cppr=0xFF, xisr=0, mfrr=3, ppri=0xFF)
    x.set_icp(c0, I(cppr=0xFF, xisr=0, mfrr=0xFF, ppri=0xFF))
    assert x.icp(c0) == I(cppr=0xFF, xisr=30, mfrr=0xFF, ppri=5)   # the first waiting, in ICS order
    assert [x.source(n).pending for n in (30, 31, 33)] == [False, True, True]
    # the ICP state's consistency rules
    raises(E.EINVAL, x.set_icp, c0, I(cppr=0xFF, xisr=0, mfrr=0xFF, ppri=5))      # nothing pending, PPRI set
    raises(E.EINVAL, x.set_icp, c0, I(cppr=0xFF, xisr=2, mfrr=3, ppri=4))        # an IPI at MFRR's priority
    x.set_icp(c0, I(cppr=0xFF, xisr=2, mfrr=3, ppri=3))
    raises(E.EINVAL, x.set_icp, c0, I(cppr=1, xisr=31, mfrr=0xFF, ppri=5))       # PPRI must beat CPPR
    raises(E.EINVAL, x.set_icp, c0, I(cppr=0xFF, xisr=0x20, mfrr=0xFF, ppri=0xFF))
    x.set_source(40, S(server=0, priority=0xFF, masked=True))
    vm.irq_line(40, 1)
    assert x.source(40) == S(server=0, priority=0xFF, masked=True, pending=True, presented=True)
    vm.irq_line(41, 1)                                         # no such source: ignored
    vm.close()


@pytest.mark.powerpc
def test_xics_release(ppc_kvm) -> None:
    """The last close of the XICS fd releases it: every vCPU's ICP goes (ENXIO)
    and the VM may create a new XICS."""
    vm, x, (c0, _) = papr_xics(ppc_kvm)
    x.close()
    raises(E.ENXIO, vm.vcpus[0].get_one_reg, 0x103000000000008C)
    y = vm.create_device("XICS")
    raises(E.ENOENT, y.source, 20)
    vm.close()


def test_xics_words() -> None:
    """The uapi bit layout of the source word and of KVM_REG_PPC_ICP_STATE."""
    assert XicsSource(server=3, priority=5, level_sensitive=True, queued=True).encode() == \
        3 | 5 << 32 | 1 << 40 | 1 << 44
    assert XicsSource.decode((1 << 45) - 1) == XicsSource(0xFFFFFFFF, 0xFF, True, True, True, True, True)
    s = IcpState(cppr=0xFF, xisr=0x1234, mfrr=0x5, ppri=0x6)
    assert s.encode() == 0xFF << 56 | 0x1234 << 32 | 0x5 << 24 | 0x6 << 16 and IcpState.decode(s.encode()) == s
