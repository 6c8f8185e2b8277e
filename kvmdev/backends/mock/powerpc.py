"""powerpc arch hooks of the mock, and its interrupt controllers: XICS
(book3s_xics.c) on a book3s host, and the Freescale MPIC (mpic.c) on an e500 one
(HostProfile.ppc_platform; a KVM registers one or the other).

XICS, checked against Debian's ppc64el 6.1 kernel (KVM-HV on an emulated PowerNV
POWER8, tools/guests/run-guest.sh --arch ppc64el): creation (EEXIST; the last close
of its fd releases it and every vCPU's ICP), sources in ICS blocks of 1024 created
by the first set in the block, the state word (server check against connected
ICPs, masked/saved priority, P and Q bits, masked-pending and resend), delivery
to the ICPs with rejection and resend (icp_deliver_irq), KVM_IRQ_LINE into a
source, the vCPU side (KVM_ENABLE_CAP: KVM_CAP_PPC_PAPR, KVM_CAP_IRQ_XICS and
kvmppc_sanity_check; ONE_REG KVM_REG_PPC_ICP_STATE with its consistency rules).

MPIC (no e500 KVM host here: from the 6.12 source): creation (one per VM:
EINVAL), the base address (256 KiB alignment, 0 unmaps), register access by
offset (4-byte aligned offsets inside the decoded regions, else ENXIO; PIR not
writable; IVPR with its writable bits, other registers stored as written,
unwritten ones reading as their reset values or 0xFFFFFFFF), IRQ_ACTIVE
(0..256; a level source follows the line, an edge source latches a 1).
"""
from __future__ import annotations

import errno as E
from typing import ClassVar

from ...devices.mpic import IVPR_ACTIVITY, IVPR_MASK, IVPR_SENSE, MAX_SRC, MPIC_SIZE, REGIONS
from ...devices.xics import FIRST_SOURCE, LEVEL_SENSITIVE, MASKED, NR_SOURCES, PENDING, PRESENTED, QUEUED
from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base
from .kernel import DeviceModel, Errno, MockVcpu, MockVm, device_model, fd_is_open

IVPR_WRITABLE = IVPR_MASK | 1 << 23 | IVPR_SENSE | 0xF << 16 | 0xFFFF   # mask, polarity, sense, priority, vector
# reset values openpic_reset leaves (per-source IVPR masked, IDR to CPU 0; CTPR 15)
RESET = {"IVPR": IVPR_MASK, "IDR": 1, "CTPR": 15}


class _MpicModel(DeviceModel):
    def create(self) -> None:
        if any(isinstance(d, _MpicModel) for d in self.vm.devices):
            raise Errno(E.EINVAL)   # kvm->arch.mpic already set: one MPIC of either kind
        self.base = 0
        self.regs: dict[int, int] = {}
        self.pending: dict[int, bool] = {}
        a = self.arch
        self.MISC, self.BASE = a.const("KVM_DEV_MPIC_GRP_MISC"), a.const("KVM_DEV_MPIC_BASE_ADDR")
        self.REG, self.ACTIVE = a.const("KVM_DEV_MPIC_GRP_REGISTER"), a.const("KVM_DEV_MPIC_GRP_IRQ_ACTIVE")

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE or group == self.REG or group == self.ACTIVE and attr <= MAX_SRC:
            return
        raise Errno(E.ENXIO)

    def _region(self, off: int) -> str:
        """access_reg: 4-byte aligned offsets inside a decoded region."""
        if off & 3:
            raise Errno(E.ENXIO)
        for name, (lo, hi) in REGIONS.items():
            if lo <= off < hi:
                return name
        raise Errno(E.ENXIO)

    def _reset_value(self, off: int, region: str) -> int:
        if region == "source":
            return {0x0: RESET["IVPR"], 0x10: RESET["IDR"]}.get(off & 0x1F, 0xFFFFFFFF)
        if region == "cpu" and off & 0xFFF == 0x80:
            return RESET["CTPR"]
        return 0 if region in ("msi", "summary") else 0xFFFFFFFF

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE:
            self.user.put("__u64", addr, self.base)
        elif group == self.REG:
            region = self._region(attr)
            self.user.put("__u32", addr, self.regs.get(attr, self._reset_value(attr, region)))
        elif group == self.ACTIVE:
            if attr > MAX_SRC:
                raise Errno(E.EINVAL)
            self.user.put("__u32", addr, int(self.pending.get(attr, False)))
        else:
            raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE:
            base = self.user.get("__u64", addr)
            if base % MPIC_SIZE:
                raise Errno(E.EINVAL)
            self.base = base
        elif group == self.REG:
            value = self.user.get("__u32", addr)
            region = self._region(attr)
            if attr == 0x1090:
                raise Errno(E.ENXIO)   # PIR: not writable this way
            if region == "source" and attr & 0x1F == 0:
                old = self.regs.get(attr, RESET["IVPR"])
                value = old & IVPR_ACTIVITY | value & IVPR_WRITABLE
            self.regs[attr] = value
        elif group == self.ACTIVE:
            if attr > MAX_SRC:
                raise Errno(E.EINVAL)
            level = self.user.get("__u32", addr)
            if level not in (0, 1):
                raise Errno(E.EINVAL)
            ivpr = self.regs.get(0x10000 + attr * 0x20, RESET["IVPR"])
            if ivpr & IVPR_SENSE:      # level-sensitive: follows the line
                self.pending[attr] = bool(level)
            elif level:                # edge: a rising line latches
                self.pending[attr] = True
        else:
            raise Errno(E.ENXIO)


@device_model
class Mpic20Model(_MpicModel):
    type_name = "FSL_MPIC_20"


@device_model
class Mpic42Model(_MpicModel):
    type_name = "FSL_MPIC_42"


MASKED_PRI, XICS_IPI = 0xFF, 2
ICS_SHIFT = 10                       # KVMPPC_XICS_ICS_SHIFT: 1024 sources per ICS


class _Source:
    """struct ics_irq_state."""

    __slots__ = ("exists", "server", "priority", "saved_priority", "resend", "masked_pending", "lsi", "p", "q")

    def __init__(self) -> None:
        self.exists = self.resend = self.masked_pending = self.lsi = self.p = self.q = False
        self.server, self.priority, self.saved_priority = 0, MASKED_PRI, MASKED_PRI


class Icp:
    """struct kvmppc_icp: a connected vCPU's presentation controller."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.cppr, self.xisr, self.mfrr, self.ppri = 0, 0, MASKED_PRI, MASKED_PRI
        self.need_resend = False


@device_model
class XicsModel(DeviceModel):
    type_name = "XICS"
    one_per_vm: ClassVar[int | None] = E.EEXIST
    released_on_close = True            # kvmppc_xics_release

    def create(self) -> None:
        self.ics: dict[int, list[_Source]] = {}      # icsid -> its 1024 sources
        self.G = self.arch.const("KVM_DEV_XICS_GRP_SOURCES")

    def release(self) -> None:
        for c in self.vm.vcpus.values():            # kvmppc_xics_free_icp
            c.part.icp = None

    # -- lookups
    def _source(self, irq: int) -> _Source | None:
        block = self.ics.get(irq >> ICS_SHIFT)
        return None if block is None else block[irq & ((1 << ICS_SHIFT) - 1)]

    def _server(self, server: int) -> Icp | None:
        for c in self.vm.vcpus.values():
            if c.part.icp is not None and c.part.icp.server == server:
                return c.part.icp
        return None

    # -- the attribute group
    def has(self, group: int, attr: int, addr: int) -> None:
        if group == self.G and FIRST_SOURCE <= attr < NR_SOURCES:
            return
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        """xics_set_source: the ICS block exists from here on, even if the
        server check below fails."""
        if group != self.G:
            raise Errno(E.ENXIO)
        if not FIRST_SOURCE <= attr < NR_SOURCES:
            raise Errno(E.ENOENT)
        block = self.ics.setdefault(attr >> ICS_SHIFT, [_Source() for _ in range(1 << ICS_SHIFT)])
        s = block[attr & ((1 << ICS_SHIFT) - 1)]
        val = self.user.get("__u64", addr)
        server, prio = val & 0xFFFFFFFF, val >> 32 & 0xFF
        if prio != MASKED_PRI and self._server(server) is None:
            raise Errno(E.EINVAL)
        s.server, s.saved_priority = server, prio
        s.priority = MASKED_PRI if val & MASKED else prio
        s.resend = s.masked_pending = False
        s.lsi = bool(val & LEVEL_SENSITIVE)
        s.p = bool(val & (PRESENTED | PENDING))
        s.q = bool(val & QUEUED)
        s.exists = True
        if val & PENDING:
            self.deliver(None, attr, False)

    def get(self, group: int, attr: int, addr: int) -> None:
        """xics_get_source."""
        if group != self.G:
            raise Errno(E.ENXIO)
        s = self._source(attr & 0xFFFFFFFF)
        if s is None or not s.exists:
            raise Errno(E.ENOENT)
        prio = s.priority
        val = s.server
        if prio == MASKED_PRI:
            val |= MASKED
            prio = s.saved_priority
        val |= prio << 32
        if s.lsi:
            val |= LEVEL_SENSITIVE | (PENDING if s.p else 0)
        elif s.masked_pending or s.resend:
            val |= PENDING
        val |= (PRESENTED if s.p else 0) | (QUEUED if s.q else 0)
        self.user.put("__u64", addr, val)

    # -- delivery (icp_deliver_irq, icp_try_to_deliver, ics_deliver_irq)
    def deliver(self, icp: Icp | None, irq: int, check_resend: bool) -> None:
        while True:
            s = self._source(irq)
            if s is None:
                return
            if icp is None or s.server != icp.server:
                icp = self._server(s.server)
                if icp is None:
                    return                      # "server not found": the interrupt is dropped
            if check_resend and not s.resend:
                return
            s.resend = False
            if s.priority == MASKED_PRI:
                s.masked_pending = True
                return
            prio = s.priority
            if icp.cppr > prio and icp.mfrr > prio and icp.ppri > prio:
                reject, icp.xisr, icp.ppri = icp.xisr, irq, prio
                if reject and reject != XICS_IPI:
                    irq, check_resend = reject, False
                    continue
                return
            icp.need_resend = True
            s.resend = True
            return

    def check_resend(self, icp: Icp) -> None:
        """icp_check_resend: every source waiting for a resend, in ICS order."""
        for icsid in sorted(self.ics):
            for i, s in enumerate(self.ics[icsid]):
                if s.resend:
                    self.deliver(icp, icsid << ICS_SHIFT | i, True)

    def line(self, irq: int, level: int) -> None:
        """ics_deliver_irq (KVM_IRQ_LINE): an unknown source is ignored."""
        s = self._source(irq)
        if s is None or not s.exists:
            return
        level = 0 if level == KVM_INTERRUPT_UNSET else 1
        if not s.lsi and level == 0:
            return
        if s.lsi:
            if level and s.p:
                return
            s.p, s.q = bool(level), False
        else:
            s.p, s.q = True, s.p
        if s.p and not s.q:
            self.deliver(None, irq, False)


# KVM_IRQ_LINE levels (arch/powerpc/include/uapi/asm/kvm.h)
KVM_INTERRUPT_SET, KVM_INTERRUPT_UNSET = 0xFFFFFFFF, 0xFFFFFFFE
KVM_REG_PPC_ICP_STATE = 0x103000000000008C


class PpcVcpu:
    """vcpu->arch: PAPR mode and the ICP (KVM_ENABLE_CAP, ONE_REG ICP state)."""

    def __init__(self, vcpu: MockVcpu) -> None:
        self.vcpu = vcpu
        self.papr = False
        self.icp: Icp | None = None

    def _xics(self) -> XicsModel | None:
        return next((d for d in self.vcpu.vm.devices if isinstance(d, XicsModel)), None)

    def ioctl_KVM_ENABLE_CAP(self, arg: int) -> int:
        """kvm_vcpu_ioctl_enable_cap, then kvmppc_sanity_check: on a book3s HV
        host a vCPU not in PAPR mode fails it (EINVAL) after the cap took effect."""
        b = self.vcpu.backend
        ec = self.vcpu.user.read_struct("struct kvm_enable_cap", arg)
        if ec.flags:
            raise Errno(E.EINVAL)
        cap = b.cap_name(ec.cap)
        if cap == "KVM_CAP_PPC_PAPR" and b.host.ppc_platform == "book3s":
            self.papr = True
        elif cap == "KVM_CAP_IRQ_XICS" and b.host.ppc_platform == "book3s":
            fd = int(ec.args[0]) & 0xFFFFFFFF
            obj = b._objects.get(fd)
            if obj is None and not fd_is_open(fd):
                raise Errno(E.EBADF)
            model = getattr(obj, "model", None)
            if not isinstance(model, XicsModel) or model.vm is not self.vcpu.vm:
                raise Errno(E.EPERM)
            if self.icp is not None:
                raise Errno(E.EBUSY)
            server = int(ec.args[1]) & 0xFFFFFFFF
            if model._server(server) is not None:
                raise Errno(E.EEXIST)
            self.icp = Icp(server)
        else:
            raise Errno(E.EINVAL)
        if b.host.ppc_platform == "book3s" and not self.papr:
            raise Errno(E.EINVAL)    # kvmppc_sanity_check: "HV KVM can only do PAPR mode"
        return 0

    def _one_reg(self, arg: int) -> tuple[int, int]:
        r = self.vcpu.user.read_struct("struct kvm_one_reg", arg)
        if r.id != KVM_REG_PPC_ICP_STATE:
            raise Errno(E.ENOSYS)    # other powerpc registers: not modelled
        if self.icp is None:
            raise Errno(E.ENXIO)
        return int(r.id), int(r.addr)

    def ioctl_KVM_GET_ONE_REG(self, arg: int) -> int:
        _, addr = self._one_reg(arg)
        i = self.icp
        assert i is not None
        self.vcpu.user.put("__u64", addr, i.cppr << 56 | i.xisr << 32 | i.mfrr << 24 | i.ppri << 16)
        return 0

    def ioctl_KVM_SET_ONE_REG(self, arg: int) -> int:
        """kvmppc_xics_set_icp: the new state must be consistent; a less favoured
        MFRR triggers the resends the ICP was waiting for."""
        _, addr = self._one_reg(arg)
        icp, xics = self.icp, self._xics()
        assert icp is not None and xics is not None
        v = self.vcpu.user.get("__u64", addr)
        cppr, xisr, mfrr, ppri = v >> 56 & 0xFF, v >> 32 & 0xFFFFFF, v >> 24 & 0xFF, v >> 16 & 0xFF
        if xisr == 0:
            ok = ppri == MASKED_PRI
        elif xisr == XICS_IPI:
            ok = ppri == mfrr and ppri < cppr
        else:
            ok = ppri < mfrr and ppri < cppr and xics.ics.get(xisr >> ICS_SHIFT) is not None
        if not ok:
            raise Errno(E.EINVAL)
        resend = mfrr > icp.mfrr and icp.need_resend
        if mfrr > icp.mfrr:
            icp.need_resend = False
        icp.cppr, icp.xisr, icp.mfrr, icp.ppri = cppr, xisr, mfrr, ppri
        if resend:
            xics.check_resend(icp)
        return 0


class ArchModel(_Base):
    vcpu_attr_errno = E.EINVAL   # kvm_arch_vcpu_ioctl's default (seen on ppc64el 6.1)

    def device_types(self) -> list[str]:
        """A book3s KVM registers XICS, an e500 one the MPIC (both VFIO)."""
        if self.host.ppc_platform == "book3s":
            return ["VFIO", "XICS"]
        return ["VFIO", "FSL_MPIC_20", "FSL_MPIC_42"]

    def vcpu_part(self, vcpu: MockVcpu) -> PpcVcpu:
        return PpcVcpu(vcpu)

    def signal_msi(self, vm: MockVm, msi: object) -> int:
        raise Errno(E.ENOTTY)        # no KVM_SIGNAL_MSI on powerpc (no CONFIG_HAVE_KVM_MSI)

    def irq_line(self, vm: MockVm, irq: int, level: int) -> int:
        """kvm_vm_ioctl_irq_line: ENXIO without an in-kernel irqchip."""
        xics = next((d for d in vm.devices if isinstance(d, XicsModel)), None)
        if xics is None:
            raise Errno(E.ENXIO)
        xics.line(irq, level)
        return 0
