"""ARM VGIC v2/v3 and ITS device models (arch/arm64/kvm/vgic/vgic-kvm-device.c,
vgic-init.c, vgic-its.c).

Modelled: creation rules, KVM_DEV_ARM_VGIC_GRP_ADDR (base addresses, the v3
legacy single redistributor region, the ITS frame), GRP_NR_IRQS, GRP_CTRL
INIT, which groups HAS_DEVICE_ATTR answers for, the VGIC checks of the first
KVM_RUN, and interrupt/MSI injection errors.  The register groups (DIST_REGS,
REDIST_REGS, CPU_REGS, CPU_SYSREGS, LEVEL_INFO, ITS_REGS), REDIST_REGION
get/set and the table save/restore controls answer ENOSYS ("not modelled")
rather than a guess.
"""
from __future__ import annotations

import errno as E
from typing import TYPE_CHECKING

from ...arch import get_arch
from ...arm64 import Affinity
from ...devices.vgic import ICC
from .kernel import DeviceModel, Errno, device_model

if TYPE_CHECKING:
    from .arm64 import Arm64Vm

ADDR_UNDEF = (1 << 64) - 1  # VGIC_ADDR_UNDEF
U64_END = 1 << 64
SZ_4K, SZ_64K = 0x1000, 0x10000
NR_IRQS_LEGACY = 256        # VGIC_NR_IRQS_LEGACY
NR_PRIVATE_IRQS = 32
MAX_RESERVED = 1023         # VGIC_MAX_RESERVED

# the uapi numbers, from cdefs/arch/arm64.h
_c = get_arch("arm64").const
ADDR, DIST_REGS, CPU_REGS, NR_IRQS, CTRL, REDIST_REGS, CPU_SYSREGS, LEVEL_INFO, ITS_REGS = (
    _c("KVM_DEV_ARM_VGIC_GRP_" + n) for n in
    ("ADDR", "DIST_REGS", "CPU_REGS", "NR_IRQS", "CTRL", "REDIST_REGS", "CPU_SYSREGS", "LEVEL_INFO", "ITS_REGS"))
V2_DIST, V2_CPU = _c("KVM_VGIC_V2_ADDR_TYPE_DIST"), _c("KVM_VGIC_V2_ADDR_TYPE_CPU")
V3_DIST, V3_REDIST = _c("KVM_VGIC_V3_ADDR_TYPE_DIST"), _c("KVM_VGIC_V3_ADDR_TYPE_REDIST")
V3_REDIST_REGION, ITS_ADDR = _c("KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION"), _c("KVM_VGIC_ITS_ADDR_TYPE")
CTRL_INIT, SAVE_PENDING_TABLES = _c("KVM_DEV_ARM_VGIC_CTRL_INIT"), _c("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES")
ITS_SAVE_TABLES, ITS_RESTORE_TABLES = _c("KVM_DEV_ARM_ITS_SAVE_TABLES"), _c("KVM_DEV_ARM_ITS_RESTORE_TABLES")
ITS_CTRL_RESET = _c("KVM_DEV_ARM_ITS_CTRL_RESET")
V2_DIST_SIZE, V2_CPU_SIZE = _c("KVM_VGIC_V2_DIST_SIZE"), _c("KVM_VGIC_V2_CPU_SIZE")
V3_DIST_SIZE, V3_REDIST_SIZE = _c("KVM_VGIC_V3_DIST_SIZE"), _c("KVM_VGIC_V3_REDIST_SIZE")
ITS_SIZE = _c("KVM_VGIC_V3_ITS_SIZE")


def check_iorange(phys_size: int, current: int, addr: int, align: int, size: int) -> None:
    """vgic_check_iorange: a base address may be set once, aligned, inside the IPA space."""
    if current != ADDR_UNDEF:
        raise Errno(E.EEXIST)
    if addr % align or size % align:
        raise Errno(E.EINVAL)
    if addr + size >= U64_END:
        raise Errno(E.EINVAL)
    if addr >= phys_size or addr + size > phys_size:
        raise Errno(E.E2BIG)


def _overlap(a: int, asz: int, b: int, bsz: int) -> bool:
    return a < b + bsz and b < a + asz


class VgicDist:
    """kvm->arch.vgic: the VM's one in-kernel GIC, shared by its device fd."""

    def __init__(self, part: "Arm64Vm", model: str) -> None:
        self.part = part
        self.model = model  # "ARM_VGIC_V2" or "ARM_VGIC_V3"
        self.dist_base = self.cpu_base = self.rdist_base = ADDR_UNDEF
        self.nr_spis = 0
        self.initialized = False
        self.ready = False

    @property
    def v3(self) -> bool:
        return self.model == "ARM_VGIC_V3"

    def check_iorange(self, current: int, addr: int, align: int, size: int) -> None:
        check_iorange(self.part.phys_size, current, addr, align, size)

    def rdist_size(self) -> int:
        return len(self.part.vm.vcpus) * V3_REDIST_SIZE  # the legacy region grows with the vCPUs

    def addr(self, attr: int, addr: int | None) -> int:
        """kvm_vgic_addr: set (addr given) or read one base address."""
        v2 = attr in (V2_DIST, V2_CPU)
        if attr not in (V2_DIST, V2_CPU, V3_DIST, V3_REDIST) or v2 == self.v3:
            raise Errno(E.ENODEV)  # unknown type, or the other GIC version's
        name = {V2_DIST: "dist_base", V2_CPU: "cpu_base", V3_DIST: "dist_base", V3_REDIST: "rdist_base"}[attr]
        if addr is None:
            return int(getattr(self, name))
        if attr == V3_REDIST:
            self._set_legacy_redist(addr)
            return addr
        align = SZ_4K if v2 else SZ_64K
        size = {V2_DIST: V2_DIST_SIZE, V2_CPU: V2_CPU_SIZE, V3_DIST: V3_DIST_SIZE}[attr]
        self.check_iorange(getattr(self, name), addr, align, size)
        setattr(self, name, addr)
        return addr

    def _set_legacy_redist(self, base: int) -> None:
        """vgic_v3_alloc_redist_region(kvm, 0, base, 0)."""
        size = self.rdist_size()
        if base + size >= U64_END:
            raise Errno(E.EINVAL)
        if self.rdist_base != ADDR_UNDEF:
            raise Errno(E.EEXIST)
        if self.dist_base != ADDR_UNDEF and _overlap(self.dist_base, V3_DIST_SIZE, base, size):
            raise Errno(E.EINVAL)
        self.check_iorange(ADDR_UNDEF, base, SZ_64K, size)
        self.rdist_base = base

    def init(self) -> None:
        """vgic_init: freezes the number of SPIs."""
        if self.initialized:
            return
        if not self.nr_spis:
            self.nr_spis = NR_IRQS_LEGACY - NR_PRIVATE_IRQS
        self.initialized = True
        self.regs = GicRegs(self)

    regs: "GicRegs | None" = None

    def inject(self, intid: int) -> int:
        """kvm_vgic_inject_irq: vgic_lazy_init (only GICv2 initializes itself)."""
        if not self.initialized:
            if self.v3:
                raise Errno(E.EBUSY)
            self.init()
        if intid >= NR_PRIVATE_IRQS + self.nr_spis:
            raise Errno(E.EINVAL)
        return 0

    def map_resources(self) -> None:
        """kvm_vgic_map_resources, at a vCPU's first KVM_RUN: any failure kills
        the VM (kvm_vm_dead), so every later ioctl of it answers EIO."""
        if self.ready:
            return
        try:
            self._map_resources()
        except Errno:
            self.part.vm.dead = True
            raise
        self.ready = True

    def _map_resources(self) -> None:
        if not self.v3:
            if ADDR_UNDEF in (self.dist_base, self.cpu_base):
                raise Errno(E.ENXIO)
            if _overlap(self.dist_base, V2_DIST_SIZE, self.cpu_base, V2_CPU_SIZE):
                raise Errno(E.EINVAL)
            self.init()
        else:
            if self.part.vm.vcpus and self.rdist_base == ADDR_UNDEF:
                raise Errno(E.ENXIO)  # a vCPU without a redistributor
            if self.dist_base == ADDR_UNDEF:
                raise Errno(E.ENXIO)
            if self.rdist_base != ADDR_UNDEF:
                try:
                    self.check_iorange(ADDR_UNDEF, self.rdist_base, SZ_64K, self.rdist_size())
                except Errno:
                    raise Errno(E.EINVAL) from None
                if _overlap(self.dist_base, V3_DIST_SIZE, self.rdist_base, self.rdist_size()):
                    raise Errno(E.EINVAL)
            if not self.initialized:
                raise Errno(E.EBUSY)  # GICv3 needs KVM_DEV_ARM_VGIC_CTRL_INIT


class _Vgic(DeviceModel):
    """What VGIC v2 and v3 share (vgic_{set,get}_common_attr)."""

    addr_types: frozenset[int] = frozenset()
    ctrl_attrs: frozenset[int] = frozenset({CTRL_INIT})

    def create(self) -> None:
        """kvm_vgic_create."""
        part = self.vm.part
        if part.vgic is not None:
            raise Errno(E.EEXIST)
        if part.any_vcpu_ran():
            raise Errno(E.EBUSY)
        part.vgic = self.dist = VgicDist(part, self.type_name)

    def _has_common(self, group: int, attr: int) -> None:
        if group == ADDR and attr in self.addr_types or group == NR_IRQS or \
                group == CTRL and attr in self.ctrl_attrs:
            return
        raise Errno(E.ENXIO)

    def _common(self, group: int, attr: int, addr: int, write: bool) -> None:
        d = self.dist
        if group == ADDR:
            if attr == V3_REDIST_REGION and d.v3:
                raise Errno(E.ENOSYS)
            value = self.user.get("__u64", addr) if write else None
            try:
                out = d.addr(attr, value)
            except Errno as e:
                raise Errno(E.ENXIO if e.errno == E.ENODEV else e.errno) from None
            if not write:
                self.user.put("__u64", addr, out)
            return
        if group == NR_IRQS:
            if not write:
                self.user.put("__u32", addr, d.nr_spis + NR_PRIVATE_IRQS)
                return
            val = self.user.get("__u32", addr)
            if val < NR_PRIVATE_IRQS + 32 or val > MAX_RESERVED or val & 31:
                raise Errno(E.EINVAL)
            if d.nr_spis:
                raise Errno(E.EBUSY)  # already set, or frozen by vgic_init
            d.nr_spis = val - NR_PRIVATE_IRQS
            return
        if group == CTRL and write:
            if attr == CTRL_INIT:
                d.init()
                return
            if attr == SAVE_PENDING_TABLES and d.v3:
                raise Errno(E.ENOSYS)
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        if group in self.reg_groups:
            self._regs(group, attr, addr, False)
            return
        self._common(group, attr, addr, False)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group in self.reg_groups:
            self._regs(group, attr, addr, True)
            return
        self._common(group, attr, addr, True)

    reg_groups: frozenset[int] = frozenset()

    def _vcpu(self, group: int, attr: int) -> int:
        """The vCPU an attr addresses: v2 by index, v3 by MPIDR affinity."""
        vcpus = self.vm.vcpus
        if self.dist.v3:
            if group == DIST_REGS:
                return next(iter(vcpus), 0)
            want = attr >> 32 & 0xFFFFFFFF
            for vid, c in vcpus.items():
                if Affinity.of(c.part.mpidr).packed() == want:
                    return vid
            raise Errno(E.EINVAL)
        idx = attr >> 32 & 0xFF
        ids = list(vcpus)
        if idx >= len(ids):
            raise Errno(E.EINVAL)
        return ids[idx]

    def _access(self, regs: "GicRegs", group: int, attr: int, value: int | None) -> int | None:
        vcpu = self._vcpu(group, attr)
        off = attr & 0xFFFFFFFF
        if group == DIST_REGS:
            return regs.dist(vcpu, off, value)
        if group == REDIST_REGS:
            return regs.redist(vcpu, off, value)
        if group == CPU_REGS:
            return regs.cpu_reg(vcpu, off, value)
        if group == CPU_SYSREGS:
            return regs.sysreg(vcpu, attr & 0xFFFF, value)
        # LEVEL_INFO: only the line-level info type; no line is high here
        if attr >> 10 & 0x3FFFFF:
            raise Errno(E.EINVAL)
        return 0

    def _regs(self, group: int, attr: int, addr: int, write: bool) -> None:
        d = self.dist
        if not d.initialized:
            if d.v3:
                raise Errno(E.EBUSY)
            d.init()  # GICv2 initializes on first register access
        assert d.regs is not None
        width = "__u64" if group == CPU_SYSREGS else "__u32"
        value = self.user.get(width, addr) if write else None
        out = self._access(d.regs, group, attr, value)
        if not write:
            self.user.put(width, addr, out or 0)

    def has(self, group: int, attr: int, addr: int) -> None:
        if group in self.reg_groups:
            regs = self.dist.regs or GicRegs(self.dist)
            try:
                ok = self._access(regs, group, attr, None) is not None
            except Errno as e:
                if group == CPU_SYSREGS and e.errno == E.EINVAL and self._vcpu(group, attr) is not None:
                    return  # AP0R1-3/AP1R1-3: HAS says yes though GET/SET answer EINVAL
                raise Errno(E.ENXIO if e.errno == E.ENOENT else e.errno) from None
            if not ok:
                raise Errno(E.ENXIO)
            return
        self._has_common(group, attr)


@device_model
class VgicV2Model(_Vgic):
    type_name = "ARM_VGIC_V2"
    addr_types = frozenset({V2_DIST, V2_CPU})
    reg_groups = frozenset({DIST_REGS, CPU_REGS})


@device_model
class VgicV3Model(_Vgic):
    type_name = "ARM_VGIC_V3"
    addr_types = frozenset({V3_DIST, V3_REDIST, V3_REDIST_REGION})
    ctrl_attrs = frozenset({CTRL_INIT, SAVE_PENDING_TABLES})
    reg_groups = frozenset({DIST_REGS, REDIST_REGS, CPU_SYSREGS, LEVEL_INFO})


@device_model
class ItsModel(DeviceModel):
    """One ITS (several per VM are allowed; it needs no VGIC to be created)."""

    type_name = "ARM_VGIC_ITS"
    SIZE = ITS_SIZE

    def create(self) -> None:
        """vgic_its_create."""
        self.base = ADDR_UNDEF
        self.enabled = False  # GITS_CTLR.Enabled
        part = self.vm.part
        part.its.append(self)
        part.msis_require_devid = True

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR and attr == ITS_ADDR or group == CTRL and attr in (
                CTRL_INIT, ITS_SAVE_TABLES, ITS_RESTORE_TABLES, ITS_CTRL_RESET):
            return
        if group == ITS_REGS:
            raise Errno(E.ENOSYS)
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR:
            if attr != ITS_ADDR:
                raise Errno(E.ENODEV)
            self.user.put("__u64", addr, self.base)
            return
        if group == ITS_REGS:
            raise Errno(E.ENOSYS)
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR:
            if attr != ITS_ADDR:
                raise Errno(E.ENODEV)
            value = self.user.get("__u64", addr)
            check_iorange(self.vm.part.phys_size, self.base, value, SZ_64K, ITS_SIZE)
            self.base = value
            return
        if group == CTRL:
            if attr == CTRL_INIT:
                return  # nothing to do
            if attr in (ITS_SAVE_TABLES, ITS_RESTORE_TABLES, ITS_CTRL_RESET):
                raise Errno(E.ENOSYS)
        if group == ITS_REGS:
            raise Errno(E.ENOSYS)
        raise Errno(E.ENXIO)

    def inject(self, devid: int, eventid: int) -> int:
        """vgic_its_inject_msi: a disabled ITS is EBUSY; translation is not modelled."""
        if not self.enabled:
            raise Errno(E.EBUSY)
        raise Errno(E.ENOSYS)



# -- register state (vgic-mmio.c, vgic-mmio-v2.c, vgic-mmio-v3.c, uaccess paths) ----------
# Values seen on Debian 6.12 and 6.1 under QEMU -cpu max (tests/test_vgic.py)
IIDR_DIST = 0x4B00343B      # ProductID 'K', Revision 3, Implementer ARM
IIDR_GICC = 0x04B2043B
IIDR_GICR = 0x4B00043B
PIDR2_V3 = 0x3B
ICC_CTLR_RESET = 0x8C00     # PRIbits 4 (5 bits), IDbits 1 (24), A3V
ICC_SRE_RESET = 0x7
PRI_MASK = 0xF8             # VGIC_PRI_BITS = 5
V3_IDBITS = 9               # INTERRUPT_ID_BITS_SPIS - 1, no ITS


class IrqState:
    __slots__ = ("enabled", "pending", "active", "priority", "edge", "group", "targets", "mpidr")

    def __init__(self, intid: int, v3: bool) -> None:
        self.enabled = intid < 16                 # SGIs are always enabled
        self.pending = self.active = False
        self.priority = 0
        self.edge = intid < 16 or intid >= 32     # SGIs and (as seen) SPIs edge, PPIs level
        self.group = v3                           # v3: group 1 by default; v2: group 0
        self.targets = 0
        self.mpidr = 0


class GicRegs:
    """The interrupt state behind the DIST/REDIST/CPU register groups."""

    # (offset, count) of the bitmap registers: name -> attribute of IrqState and set/clear role
    BITMAPS = {0x080: ("group", None), 0x100: ("enabled", True), 0x180: ("enabled", False),
               0x200: ("pending", True), 0x280: ("pending", False), 0x300: ("active", True),
               0x380: ("active", False)}

    def __init__(self, d: VgicDist) -> None:
        self.d = d
        self.v3 = d.v3
        self.ctlr = 0x50 if d.v3 else 0        # v3: ARE | DS
        # v2: IGROUPR writes are ignored until GICD_IIDR is written back; v3 always
        # takes them (the v3 doc repeats the v2 rule; the kernel does not apply it)
        self.groups_writable = d.v3
        self.spis = [IrqState(i, d.v3) for i in range(NR_PRIVATE_IRQS, NR_PRIVATE_IRQS + d.nr_spis)]
        self.private = {idx: [IrqState(i, d.v3) for i in range(NR_PRIVATE_IRQS)] for idx in d.part.vm.vcpus}
        self.gicc: dict[int, dict[int, int]] = {idx: {} for idx in d.part.vm.vcpus}   # by offset
        self.icc: dict[int, dict[str, int]] = {idx: {} for idx in d.part.vm.vcpus}    # by ICC name

    def irq(self, vcpu: int, intid: int) -> IrqState | None:
        if intid < NR_PRIVATE_IRQS:
            return self.private[vcpu][intid]
        i = intid - NR_PRIVATE_IRQS
        return self.spis[i] if i < len(self.spis) else None

    def _bitmap(self, vcpu: int, base: int, which: str, write: bool | None, value: int | None) -> int:
        if self.v3 and which == "pending":
            if write is False:
                return 0      # v3 ICPENDR: RAZ/WI for userspace
            write = None      # v3 ISPENDR: a userspace write sets the latch to the value
        out = 0
        for bit in range(32):
            irq = self.irq(vcpu, base + bit)
            if irq is None:
                continue
            if value is not None and (write is None or value >> bit & 1):
                if which == "group" and not self.groups_writable:
                    continue
                if which == "enabled" and base + bit < 16:
                    continue  # SGIs stay enabled
                setattr(irq, which, bool(value >> bit & 1) if write is None else write)
            out |= int(getattr(irq, which)) << bit
        return out

    def _priorities(self, vcpu: int, first: int, value: int | None) -> int:
        """An IPRIORITYR word: four byte-wide priorities, VGIC_PRI_BITS kept."""
        out = 0
        for i in range(4):
            irq = self.irq(vcpu, first + i)
            if irq is None:
                continue
            if value is not None:
                irq.priority = value >> 8 * i & PRI_MASK
            out |= irq.priority << 8 * i
        return out

    def dist(self, vcpu: int, off: int, value: int | None) -> int | None:
        """A GICD access; None: not implemented (HAS ENXIO, GET 0, SET ignored)."""
        d = self.d
        ncpus = len(d.part.vm.vcpus)
        if off == 0x000:
            if value is not None:
                self.ctlr = (self.ctlr & ~0x3) | (value & 0x3)
            return self.ctlr
        if off == 0x004:
            typer = (d.nr_spis + NR_PRIVATE_IRQS) // 32 - 1
            return typer | (V3_IDBITS << 19 if self.v3 else (ncpus - 1) << 5)
        if off == 0x008:
            if value is not None:
                if (value ^ IIDR_DIST) & ~0xF000 or (value >> 12 & 0xF) not in (2, 3):
                    raise Errno(E.EINVAL)
                self.groups_writable = True
            return IIDR_DIST
        if self.v3 and off == 0x00C:
            return 0
        if self.v3 and off == 0x010:
            return 0xFFFFFFFF  # GICD_STATUSR: read-as-ones, writes ignored
        for base, (which, write) in self.BITMAPS.items():
            if base <= off < base + 0x80:
                first = (off - base) * 8
                if self.v3 and first < NR_PRIVATE_IRQS:
                    return 0  # private IRQs live in the redistributors (ARE)
                return self._bitmap(vcpu, first, which, write, value)
        if 0x400 <= off < 0x7FC:
            first = off - 0x400
            if self.v3 and first < NR_PRIVATE_IRQS:
                return 0
            return self._priorities(vcpu, first, value)
        if not self.v3 and 0x800 <= off < 0xBFC:
            first = off - 0x800
            out = 0
            for i in range(4):
                irq = self.irq(vcpu, first + i)
                if irq is None:
                    continue
                if first + i < NR_PRIVATE_IRQS:
                    out |= (1 << vcpu) << 8 * i  # banked: the CPU itself
                    continue
                if value is not None:
                    irq.targets = value >> 8 * i & ((1 << ncpus) - 1)
                out |= irq.targets << 8 * i
            return out
        if 0xC00 <= off < 0xD00:
            first = (off - 0xC00) * 4
            if self.v3 and first < NR_PRIVATE_IRQS:
                return 0
            out = 0
            for i in range(16):
                irq = self.irq(vcpu, first + i)
                if irq is None:
                    continue
                if value is not None and first + i >= NR_PRIVATE_IRQS:
                    irq.edge = bool(value >> (2 * i + 1) & 1)
                out |= int(irq.edge) << (2 * i + 1)
            return out
        if self.v3 and 0xD00 <= off < 0xD80:
            return 0  # GICD_IGRPMODR: RAZ/WI without security
        if not self.v3 and 0xF00 <= off < 0xF30:
            return 0  # SGIR, CPENDSGIR, SPENDSGIR: no SGI pending here
        if self.v3 and 0x6100 <= off < 0x6000 + 8 * 1020:
            irq = self.irq(0, (off - 0x6000) // 8)
            if irq is None:
                return 0
            if value is not None:
                if off & 4:
                    irq.mpidr = (irq.mpidr & 0xFFFFFFFF) | (value & 0xFF) << 32
                else:
                    irq.mpidr = (irq.mpidr & ~0xFFFFFFFF) | (value & 0x80FFFFFF)
            return irq.mpidr >> 32 if off & 4 else irq.mpidr & 0xFFFFFFFF
        if self.v3 and off == 0xFFE8:
            return PIDR2_V3
        return None

    def redist(self, vcpu: int, off: int, value: int | None) -> int | None:
        """A GICR access of vCPU ``vcpu`` (RD frame, then SGI frame at +64K)."""
        ids = sorted(self.d.part.vm.vcpus)
        if off == 0x0:
            return 0x6
        if off == 0x4:
            return IIDR_GICR
        if off in (0x8, 0xC):
            if off == 0xC:
                return Affinity.of(self.d.part.vm.vcpus[vcpu].part.mpidr).packed()
            return ids.index(vcpu) << 8 | (0x10 if vcpu == ids[-1] else 0)
        if off == 0x14:
            return 0
        if off in (0x70, 0x74, 0x7C):
            return 0
        if off == 0x78:
            return 0x580
        if off == 0xFFE8:
            return PIDR2_V3
        sgi = off - 0x10000
        for base, (which, write) in self.BITMAPS.items():
            if sgi == base:
                return self._bitmap(vcpu, 0, which, write, value)
        if 0x400 <= sgi < 0x420:
            return self._priorities(vcpu, sgi - 0x400, value)
        if sgi == 0xC00:
            return 0xAAAAAAAA
        if sgi in (0xC04, 0xD00, 0xE00):
            return 0
        return None

    # GICC offsets KVM implements for userspace -> writable bits
    GICC_MASKS = {0x00: 0x21F, 0x04: 0x1F, 0x08: 0x7, 0x1C: 0x7,
                  0xD0: 0xFFFFFFFF, 0xD4: 0xFFFFFFFF, 0xD8: 0xFFFFFFFF, 0xDC: 0xFFFFFFFF}

    def cpu_reg(self, vcpu: int, off: int, value: int | None) -> int | None:
        """A GICC access (GICv2)."""
        if off == 0xFC:
            return IIDR_GICC
        mask = self.GICC_MASKS.get(off)
        if mask is None:
            return None
        regs = self.gicc[vcpu]
        if value is not None:
            regs[off] = value & mask
        return regs.get(off, 0)

    def sysreg(self, vcpu: int, instr: int, value: int | None) -> int:
        """An ICC_* access (GICv3), by the attr's Op0:Op1:CRn:CRm:Op2."""
        name = ICC_BY_INSTR.get(instr)
        if name is None:
            raise Errno(E.ENOENT)
        if name not in ICC_RESETS:
            raise Errno(E.EINVAL)  # AP0R1-3/AP1R1-3: not at 5 priority bits
        regs = self.icc[vcpu]
        if value is not None and name != "ICC_SRE_EL1":
            regs[name] = value & (PRI_MASK if name == "ICC_PMR_EL1" else 0xFFFFFFFF)
        return regs.get(name, ICC_RESETS[name])


ICC_BY_INSTR = {r.instr: r.name for r in ICC.values()}
# the ICC registers at this VGIC's 5 priority bits, and their reset values
ICC_RESETS = {"ICC_PMR_EL1": 0, "ICC_BPR0_EL1": 0, "ICC_AP0R0_EL1": 0, "ICC_AP1R0_EL1": 0, "ICC_BPR1_EL1": 0,
              "ICC_CTLR_EL1": ICC_CTLR_RESET, "ICC_SRE_EL1": ICC_SRE_RESET, "ICC_IGRPEN0_EL1": 0,
              "ICC_IGRPEN1_EL1": 0}
