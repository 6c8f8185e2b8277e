"""XICS (Documentation/virt/kvm/devices/xics.rst; arch/powerpc/kvm/book3s_xics.c):
the interrupt sources' state as 64-bit words, and the ICP state word each vCPU
has as the ONE_REG KVM_REG_PPC_ICP_STATE.

    xics = vm.create_device("XICS")
    xics.connect(cpu)                          # KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS): server = vcpu id
    xics.set_source(0x1000, XicsSource(server=0, priority=5, level_sensitive=True))
    xics.source(0x1000)                        # XicsSource(...)
    xics.icp(cpu)                              # IcpState from ONE_REG KVM_REG_PPC_ICP_STATE
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _check
from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..device import DEVICE_CLASSES, Device
from ..vcpu import Vcpu

_SOURCES = "KVM_DEV_XICS_GRP_SOURCES"
FIRST_SOURCE, NR_SOURCES = 16, 1 << 20     # source numbers 16 .. 2^20-1 (KVMPPC_XICS_NR_IRQS)
KVM_REG_PPC_ICP_STATE = 0x103000000000008C

_attrs.register("XICS", [
    _attrs.Group(_SOURCES, (), any_attr=_attrs.Attr("source", "__u64", _attrs.RW),
                 doc="an interrupt source's state word; attr: the source number"),
])
_register_errnos({
    ("KVM_CREATE_DEVICE", "XICS", None, "EEXIST"): "an XICS already exists in this VM",
    (None, "XICS", _SOURCES, "ENOENT"): "no such source: out of range (16..2^20-1) or never set",
    ("KVM_SET_DEVICE_ATTR", "XICS", _SOURCES, "EINVAL"):
        "a priority other than 0xff for a server no connected vCPU has (Xics.connect)",
    # KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) on a vCPU (powerpc.c, kvmppc_xics_connect_vcpu)
    ("KVM_ENABLE_CAP", "vcpu", None, "EBUSY"): "the vCPU is already connected to an interrupt controller",
    ("KVM_ENABLE_CAP", "vcpu", None, "EEXIST"): "another vCPU already has this server number",
    ("KVM_ENABLE_CAP", "vcpu", None, "EPERM"): "the fd is not an interrupt controller device (of this VM)",
    ("KVM_ENABLE_CAP", "vcpu", None, "EBADF"): "args[0] is not an open file descriptor",
    ("KVM_ENABLE_CAP", "vcpu", None, "EINVAL"): "flags are not 0, or this vCPU cannot enable the capability",
})

# the state word's fields (arch/powerpc/include/uapi/asm/kvm.h): bit positions
LEVEL_SENSITIVE, MASKED, PENDING, PRESENTED, QUEUED = (1 << b for b in range(40, 45))


@dataclass(frozen=True)
class XicsSource:
    """One source's state word."""

    server: int = 0                 # KVM_XICS_DESTINATION: the server (vCPU) number
    priority: int = 0xFF            # KVM_XICS_PRIORITY (0xff: none)
    level_sensitive: bool = False
    masked: bool = False
    pending: bool = False
    presented: bool = False
    queued: bool = False

    def encode(self) -> int:
        if not 0 <= self.server < 1 << 32 or not 0 <= self.priority <= 0xFF:
            raise ValueError("server is 32 bits, priority 8")
        return (self.server | self.priority << 32 | LEVEL_SENSITIVE * self.level_sensitive
                | MASKED * self.masked | PENDING * self.pending | PRESENTED * self.presented | QUEUED * self.queued)

    @classmethod
    def decode(cls, v: int) -> "XicsSource":
        return cls(v & 0xFFFFFFFF, v >> 32 & 0xFF, bool(v & LEVEL_SENSITIVE), bool(v & MASKED),
                   bool(v & PENDING), bool(v & PRESENTED), bool(v & QUEUED))


@dataclass(frozen=True)
class IcpState:
    """KVM_REG_PPC_ICP_STATE: CPPR 63:56, XISR 55:32, MFRR 31:24, PPRI 23:16."""

    cppr: int = 0
    xisr: int = 0
    mfrr: int = 0xFF
    ppri: int = 0xFF

    def encode(self) -> int:
        return self.cppr << 56 | self.xisr << 32 | self.mfrr << 24 | self.ppri << 16

    @classmethod
    def decode(cls, v: int) -> "IcpState":
        return cls(v >> 56 & 0xFF, v >> 32 & 0xFFFFFF, v >> 24 & 0xFF, v >> 16 & 0xFF)


class Xics(Device):
    """KVM_DEV_TYPE_XICS (one per VM)."""

    def source(self, number: int) -> XicsSource:
        return XicsSource.decode(int(self.get_attr(_SOURCES, number)))

    def set_source(self, number: int, state: XicsSource) -> None:
        _check.instance("Xics.set_source", "state", state, XicsSource)
        self.set_attr(_SOURCES, number, state.encode())

    def connect(self, vcpu: Vcpu, server: int | None = None) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_IRQ_XICS) on ``vcpu``: give it an ICP with this
        server number (default: its vcpu id), once per vCPU."""
        _check.instance("Xics.connect", "vcpu", vcpu, Vcpu, "a kvmdev Vcpu")
        vcpu.enable_cap("KVM_CAP_IRQ_XICS", self.fileno(), vcpu.id if server is None else server)

    def icp(self, vcpu: Vcpu) -> IcpState:
        """The vCPU's ICP (KVM_GET_ONE_REG KVM_REG_PPC_ICP_STATE; ENXIO unconnected)."""
        _check.instance("Xics.icp", "vcpu", vcpu, Vcpu, "a kvmdev Vcpu")
        return IcpState.decode(vcpu.get_one_reg(KVM_REG_PPC_ICP_STATE))

    def set_icp(self, vcpu: Vcpu, state: IcpState) -> None:
        _check.instance("Xics.set_icp", "vcpu", vcpu, Vcpu, "a kvmdev Vcpu")
        _check.instance("Xics.set_icp", "state", state, IcpState)
        vcpu.set_one_reg(KVM_REG_PPC_ICP_STATE, state.encode())


DEVICE_CLASSES["XICS"] = Xics
