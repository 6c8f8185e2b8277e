"""Freescale MPIC and XICS (mpic.rst, xics.rst; arch/powerpc/kvm/mpic.c,
book3s_xics.c).  No powerpc KVM host runs here: these run on the powerpc mock,
whose rules come from the 6.12 source (README, support matrix)."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.devices.mpic import Mpic, offset
from kvmdev.devices.xics import IcpState, Xics, XicsSource

MISC, REG, ACTIVE = "KVM_DEV_MPIC_GRP_MISC", "KVM_DEV_MPIC_GRP_REGISTER", "KVM_DEV_MPIC_GRP_IRQ_ACTIVE"


@pytest.fixture
def ppc_vm():
    with kvmdev.open("mock", arch="powerpc") as k, k.create_vm() as vm:
        yield vm


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


def test_xics_sources(ppc_vm) -> None:
    """Source numbers 16..2^20-1 (ENOENT outside, and for a source never set);
    the state word round trip; a priority other than 0xff needs a server that is
    a vCPU (EINVAL); MASKED keeps the priority as the saved one; a pending masked
    source stays pending."""
    x = ppc_vm.create_device("XICS")
    assert isinstance(x, Xics)
    raises(E.EEXIST, ppc_vm.create_device, "XICS")
    cpu = ppc_vm.create_vcpu(0)
    raises(E.ENOENT, x.source, 20)
    raises(E.ENOENT, x.set_source, 15, XicsSource())
    raises(E.ENOENT, x.set_source, 1 << 20, XicsSource())
    assert x.has_attr("KVM_DEV_XICS_GRP_SOURCES", 16) and not x.has_attr("KVM_DEV_XICS_GRP_SOURCES", 15)
    e = raises(E.EINVAL, x.set_source, 20, XicsSource(server=7, priority=5))
    assert "server" in str(e)
    s = XicsSource(server=cpu.id, priority=5, level_sensitive=True)
    x.set_source(20, s)
    assert x.source(20) == s
    x.set_source(21, XicsSource(server=0, priority=6, masked=True, pending=True))
    assert x.source(21) == XicsSource(server=0, priority=6, masked=True, pending=True, presented=True)
    x.set_source(22, XicsSource(priority=0xFF))
    assert x.source(22) == XicsSource(priority=0xFF, masked=True)


def test_xics_words() -> None:
    """The uapi bit layout of the source word and of KVM_REG_PPC_ICP_STATE."""
    assert XicsSource(server=3, priority=5, level_sensitive=True, queued=True).encode() == \
        3 | 5 << 32 | 1 << 40 | 1 << 44
    assert XicsSource.decode((1 << 45) - 1) == XicsSource(0xFFFFFFFF, 0xFF, True, True, True, True, True)
    s = IcpState(cppr=0xFF, xisr=0x1234, mfrr=0x5, ppri=0x6)
    assert s.encode() == 0xFF << 56 | 0x1234 << 32 | 0x5 << 24 | 0x6 << 16 and IcpState.decode(s.encode()) == s
