"""ARM VGIC v2/v3 and ITS device models (arch/arm64/kvm/vgic/vgic-kvm-device.c,
vgic-init.c, vgic-its.c).

Modelled, each checked by tests that also run on the real 6.12 and 6.1 kernels:
creation rules (EEXIST, EBUSY, E2BIG); KVM_DEV_ARM_VGIC_GRP_ADDR (base addresses,
the legacy redistributor region and REDIST_REGION, with each vCPU's
redistributor placed in region slots as vgic_register_redist_iodev does);
NR_IRQS; CTRL INIT and SAVE_PENDING_TABLES; the DIST/REDIST/CPU/CPU_SYSREGS
register state and LEVEL_INFO, in the kernel's check order (vCPU lookup, copy-in,
every vCPU lock, init); the VGIC checks of the first KVM_RUN; injection.
The ITS and the LPIs are in its.py.
"""
from __future__ import annotations

import errno as E
import functools
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from ...arch import get_arch
from ...arm64 import NR_SGIS, Affinity
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
VGIC_V2_MAX_CPUS, VGIC_V3_MAX_CPUS = 8, 512

# the uapi numbers, from cdefs/arch/arm64.h
_c = get_arch("arm64").const
ADDR, DIST_REGS, CPU_REGS, NR_IRQS, CTRL, REDIST_REGS, CPU_SYSREGS, LEVEL_INFO, ITS_REGS = (
    _c("KVM_DEV_ARM_VGIC_GRP_" + n) for n in
    ("ADDR", "DIST_REGS", "CPU_REGS", "NR_IRQS", "CTRL", "REDIST_REGS", "CPU_SYSREGS", "LEVEL_INFO", "ITS_REGS"))
MAINT_IRQ = _c("KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ")
V2_DIST, V2_CPU = _c("KVM_VGIC_V2_ADDR_TYPE_DIST"), _c("KVM_VGIC_V2_ADDR_TYPE_CPU")
V3_DIST, V3_REDIST = _c("KVM_VGIC_V3_ADDR_TYPE_DIST"), _c("KVM_VGIC_V3_ADDR_TYPE_REDIST")
V3_REDIST_REGION, ITS_ADDR = _c("KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION"), _c("KVM_VGIC_ITS_ADDR_TYPE")
CTRL_INIT, SAVE_PENDING_TABLES = _c("KVM_DEV_ARM_VGIC_CTRL_INIT"), _c("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES")
ITS_SAVE_TABLES, ITS_RESTORE_TABLES = _c("KVM_DEV_ARM_ITS_SAVE_TABLES"), _c("KVM_DEV_ARM_ITS_RESTORE_TABLES")
ITS_CTRL_RESET = _c("KVM_DEV_ARM_ITS_CTRL_RESET")
USERSPACE_PPIS = _c("KVM_DEV_ARM_VGIC_USERSPACE_PPIS")
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


class RdRegion:
    """struct vgic_redist_region: count 0 is the legacy region sized by the vCPUs."""

    __slots__ = ("index", "base", "count", "free_index")

    def __init__(self, index: int, base: int, count: int) -> None:
        self.index, self.base, self.count, self.free_index = index, base, count, 0

    def full(self) -> bool:
        return bool(self.count) and self.free_index >= self.count


class VgicDist:
    """kvm->arch.vgic: the VM's one in-kernel GIC, shared by its device fd."""

    def __init__(self, part: "Arm64Vm", model: str) -> None:
        self.part = part
        self.model = model  # "ARM_VGIC_V2" or "ARM_VGIC_V3"
        self.dist_base = self.cpu_base = ADDR_UNDEF
        self.regions: list[RdRegion] = []                 # by index, as the kernel's list
        self.rdist: dict[int, tuple[RdRegion, int]] = {}  # vcpu id -> (region, slot)
        self.nr_spis = 0
        self.initialized = False
        self.ready = False
        self.mi_intid = 0              # vgic.mi_intid (KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ, 6.18+)
        self.implementation_rev = 3    # vgic.implementation_rev (GICD_IIDR.Revision)

    @property
    def v3(self) -> bool:
        return self.model == "ARM_VGIC_V3"

    @property
    def max_vcpus(self) -> int:
        return VGIC_V3_MAX_CPUS if self.v3 else VGIC_V2_MAX_CPUS

    def check_iorange(self, current: int, addr: int, align: int, size: int) -> None:
        check_iorange(self.part.phys_size, current, addr, align, size)

    def region_size(self, r: RdRegion) -> int:
        """vgic_v3_rd_region_size: the legacy region grows with the vCPUs online."""
        return (r.count or len(self.part.vm.vcpus)) * V3_REDIST_SIZE

    def rdist_overlap(self, base: int, size: int) -> bool:
        return any(_overlap(r.base, self.region_size(r), base, size) for r in self.regions)

    def check_base(self) -> bool:
        """vgic_v3_check_base."""
        if self.dist_base != ADDR_UNDEF and self.dist_base + V3_DIST_SIZE >= U64_END:
            return False
        for r in self.regions:
            try:
                self.check_iorange(ADDR_UNDEF, r.base, SZ_64K, self.region_size(r))
            except Errno:
                return False
        return self.dist_base == ADDR_UNDEF or not self.rdist_overlap(self.dist_base, V3_DIST_SIZE)

    def addr(self, attr: int, addr: int | None) -> int:
        """kvm_vgic_addr: set (addr given) or read one base address."""
        v2 = attr in (V2_DIST, V2_CPU)
        if attr not in (V2_DIST, V2_CPU, V3_DIST, V3_REDIST) or v2 == self.v3:
            raise Errno(E.ENODEV)  # unknown type, or the other GIC version's
        if attr == V3_REDIST:
            if addr is None:
                return self.regions[0].base if self.regions else ADDR_UNDEF
            self.set_redist_base(0, addr, 0)
            return addr
        name = {V2_DIST: "dist_base", V2_CPU: "cpu_base", V3_DIST: "dist_base"}[attr]
        if addr is None:
            return int(getattr(self, name))
        align = SZ_4K if v2 else SZ_64K
        size = {V2_DIST: V2_DIST_SIZE, V2_CPU: V2_CPU_SIZE, V3_DIST: V3_DIST_SIZE}[attr]
        self.check_iorange(getattr(self, name), addr, align, size)
        setattr(self, name, addr)
        return addr

    def redist_region(self, value: int, write: bool) -> int:
        """KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION: index [11:0] (kept as a u8, as the
        kernel does), flags [15:12], base [51:16], count [63:52]."""
        index = value & 0xFFF & 0xFF
        if write:
            count, flags = value >> 52, value >> 12 & 0xF
            if not count or flags:
                raise Errno(E.EINVAL)
            self.set_redist_base(index, value & 0x000FFFFFFFFF0000, count)
            return value
        for r in self.regions:
            if r.index == index:
                return index | r.base | r.count << 52
        raise Errno(E.ENOENT)

    def set_redist_base(self, index: int, base: int, count: int) -> None:
        """vgic_v3_set_redist_base: add a region, then place the waiting vCPUs in it."""
        self._alloc_region(index, base, count)
        try:
            for vid in self.part.vm.vcpus:
                self.register_redist(vid)
        except Errno:
            self.regions = [r for r in self.regions if r.index != index]
            raise

    def _alloc_region(self, index: int, base: int, count: int) -> None:
        """vgic_v3_alloc_redist_region."""
        size = (count or len(self.part.vm.vcpus)) * V3_REDIST_SIZE
        if base + size >= U64_END:
            raise Errno(E.EINVAL)
        if not self.regions:
            if index != 0:
                raise Errno(E.EINVAL)
        else:
            last = self.regions[-1]
            if not count and last.count:
                raise Errno(E.EINVAL)  # no mixing of the legacy and counted regions
            if not count:
                raise Errno(E.EEXIST)
            if index != last.index + 1:
                raise Errno(E.EINVAL)
        if not count and self.dist_base != ADDR_UNDEF and _overlap(self.dist_base, V3_DIST_SIZE, base, size):
            raise Errno(E.EINVAL)
        if self.rdist_overlap(base, size):
            raise Errno(E.EINVAL)
        self.check_iorange(ADDR_UNDEF, base, SZ_64K, size)
        self.regions.append(RdRegion(index, base, count))

    def register_redist(self, vid: int, duplicate: bool = False) -> None:
        """vgic_register_redist_iodev: the next free slot, if any, for vCPU ``vid``
        (``duplicate``: a second vCPU struct with that id, destroyed right after)."""
        if vid in self.rdist and not duplicate:
            return
        r = next((r for r in self.regions if not r.full()), None)
        if r is None:
            return  # placed later, when a region with room is added
        if not self.check_base():
            raise Errno(E.EINVAL)
        if not duplicate:
            self.rdist[vid] = (r, r.free_index)
        r.free_index += 1

    def rdist_is_last(self, vid: int) -> bool:
        """vgic_mmio_vcpu_rdist_is_last: GICR_TYPER.Last."""
        if vid not in self.rdist:
            return False
        r, slot = self.rdist[vid]
        if slot < r.free_index - 1:
            return False
        if r.count and slot == r.count - 1:
            end = r.base + r.count * V3_REDIST_SIZE
            return not any(o.base == end and o.free_index > 0 for o in self.regions)
        return True

    def init(self) -> None:
        """vgic_init: freezes the number of SPIs."""
        if self.initialized:
            return
        if not self.nr_spis:
            self.nr_spis = NR_IRQS_LEGACY - NR_PRIVATE_IRQS
        self.initialized = True
        self.regs = GicRegs(self)

    regs: "GicRegs | None" = None

    def inject(self, intid: int, vcpu: int, level: bool) -> int:
        """kvm_vgic_inject_irq: vgic_lazy_init (only GICv2 initializes itself)."""
        if not self.initialized:
            if self.v3:
                raise Errno(E.EBUSY)
            self.init()
        if intid >= NR_PRIVATE_IRQS + self.nr_spis:
            raise Errno(E.EINVAL)
        assert self.regs is not None
        self.regs.inject(vcpu, intid, level)
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
            if any(vid not in self.rdist for vid in self.part.vm.vcpus):
                raise Errno(E.ENXIO)  # a vCPU without a redistributor
            if self.dist_base == ADDR_UNDEF:
                raise Errno(E.ENXIO)
            if not self.check_base():
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

        def _locked() -> Any:
            if part.vgic is not None or part.vgic_v5 is not None:
                raise Errno(E.EEXIST)
            if part.any_vcpu_ran():
                raise Errno(E.EBUSY)
            d = VgicDist(part, self.type_name)
            if len(self.vm.vcpus) > d.max_vcpus:
                raise Errno(E.E2BIG)
            part.vgic = self.dist = d
        self.vm.with_all_vcpus_locked(_locked)

    def _maint_irq(self) -> bool:
        """vgic_v3_has_attr: the MAINT_IRQ group, any attr, with or without nested virt."""
        return self.dist.v3 and bool(self.vm.backend.host.fact("vgic_v3_maint_irq_group"))

    def _has_common(self, group: int, attr: int) -> None:
        if group == ADDR and attr in self.addr_types or group == NR_IRQS or \
                group == CTRL and attr in self.ctrl_attrs or group == MAINT_IRQ and self._maint_irq():
            return
        raise Errno(E.ENXIO)

    def _common(self, group: int, attr: int, addr: int, write: bool) -> None:
        d = self.dist
        if group == ADDR:
            # reading a region takes its index from the buffer
            value = self.user.get("__u64", addr) if write or attr == V3_REDIST_REGION else None
            try:
                if attr == V3_REDIST_REGION:
                    if not d.v3:
                        raise Errno(E.ENODEV)
                    out = d.redist_region(value or 0, write)
                else:
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
        if group == MAINT_IRQ and self._maint_irq():
            if not write:   # the attr number is not looked at
                self.user.put("__u32", addr, d.mi_intid)
                return
            val = self.user.get("__u32", addr)
            with self.vm.lock:   # config_lock
                if d.initialized:
                    raise Errno(E.EBUSY)
                if not NR_SGIS <= val < NR_PRIVATE_IRQS:
                    raise Errno(E.EINVAL)   # irq_is_ppi
                d.mi_intid = val
            return
        if group == CTRL and write:
            if attr == CTRL_INIT:
                d.init()
                return
            if attr == SAVE_PENDING_TABLES and d.v3:
                def _locked() -> Any:
                    if not d.initialized:
                        raise Errno(E.ENXIO)  # vgic_v3_save_pending_tables
                    d.part.lpis.save_pending_tables()
                self.vm.with_all_vcpus_locked(_locked)
                return

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
        """vgic_v{2,3}_parse_attr: the vCPU an attr addresses (v2 by vcpu id, v3 by
        MPIDR affinity, v3 DIST_REGS the first vCPU); EINVAL when there is none."""
        vcpus = self.vm.vcpus
        if self.dist.v3:
            if group == DIST_REGS:
                vid = next(iter(vcpus), None)
            else:
                want = attr >> 32 & 0xFFFFFFFF
                vid = self._mpidr_map().get(want)
        else:
            vid = attr >> 32 & 0xFF
            vid = vid if vid in vcpus else None
        if vid is None:
            raise Errno(E.EINVAL)
        return vid

    def _mpidr_map(self) -> dict[int, int]:
        """Packed affinity -> the first vCPU id with it (kvm_mpidr_to_vcpu), kept
        until a vCPU is created or an MPIDR_EL1 written (vm.mpidr_gen)."""
        vm = self.vm
        key = (vm.mpidr_gen, len(vm.vcpus))
        cached = getattr(self, "_mpidr_cache", None)
        if cached is None or cached[0] != key:
            m: dict[int, int] = {}
            for v, c in vm.vcpus.items():
                m.setdefault(Affinity.of(c.part.mpidr).packed(), v)
            cached = self._mpidr_cache = (key, m)
        return cached[1]

    def _access(self, regs: "GicRegs", group: int, vcpu: int, attr: int, value: int | None) -> int | None:
        off = attr & 0xFFFFFFFF
        if group in (DIST_REGS, REDIST_REGS, CPU_REGS) and off & 3:
            return None   # check_region: a 32-bit access is 4-byte aligned, else there is no region
        if group == DIST_REGS:
            return regs.dist(vcpu, off, value)
        if group == REDIST_REGS:
            return regs.redist(vcpu, off, value)
        if group == CPU_REGS:
            return regs.cpu_reg(vcpu, off, value)
        if group == CPU_SYSREGS:
            return regs.sysreg(vcpu, attr & 0xFFFF, value)
        # LEVEL_INFO: only the line-level info type, 32 lines from a multiple of 32
        intid = attr & 0x3FF
        if attr >> 10 & 0x3FFFFF or intid % 32:
            raise Errno(E.EINVAL)
        return regs.line_level(vcpu, intid, value)

    def _regs(self, group: int, attr: int, addr: int, write: bool) -> None:
        """vgic_v{2,3}_attr_regs_access, in its order: vCPU, copy-in, every vCPU
        lock, init (v2 initializes itself; v3 must be initialized)."""
        d = self.dist
        vcpu = self._vcpu(group, attr)
        width = "__u64" if group == CPU_SYSREGS else "__u32"
        value = self.user.get(width, addr) if write and group != CPU_SYSREGS else None

        def _locked() -> Any:
            if not d.initialized:
                if d.v3 and group == DIST_REGS and attr & 0xFFFFFFFF in (0x008, 0x00C) \
                        and self.vm.backend.host.fact("gicd_iidr_typer2_pre_init"):
                    # reg_allowed_pre_init: GICD_IIDR and GICD_TYPER2 (6.18+)
                    return GicRegs.pre_init_dist(d, attr & 0xFFFFFFFF, value)
                if d.v3:
                    raise Errno(E.EBUSY)
                d.init()
            assert d.regs is not None
            v = self.user.get(width, addr) if write and group == CPU_SYSREGS else value
            return self._access(d.regs, group, vcpu, attr, v)
        out = self.vm.with_all_vcpus_locked(_locked)
        if not write:
            self.user.put(width, addr, out or 0)

    _shape: tuple[tuple[int, ...], "GicRegs"] | None = None

    def _shape_regs(self) -> "GicRegs":
        """Before init, HAS answers from a GicRegs of the current shape (SPIs and
        vCPUs), built once per shape rather than on every call."""
        key = (self.dist.nr_spis, *self.vm.vcpus)
        if self._shape is None or self._shape[0] != key:
            self._shape = (key, GicRegs(self.dist))
        return self._shape[1]

    def has(self, group: int, attr: int, addr: int) -> None:
        if group in self.reg_groups:
            if group == LEVEL_INFO:
                if attr >> 10 & 0x3FFFFF:
                    raise Errno(E.ENXIO)
                return
            vcpu = self._vcpu(group, attr)
            regs = self.dist.regs or self._shape_regs()
            try:
                ok = self._access(regs, group, vcpu, attr, None) is not None
            except Errno as e:
                if group == CPU_SYSREGS and e.errno == E.EINVAL and attr & 0xFFFF in ICC_APR:
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


# -- register state (vgic-mmio.c, vgic-mmio-v2.c, vgic-mmio-v3.c, uaccess paths) ----------
# Values seen on Debian 6.12 and 6.1 under QEMU -cpu max (tests/test_vgic.py)
IIDR_DIST = 0x4B00343B      # ProductID 'K', Revision 3, Implementer ARM
IIDR_GICC = 0x04B2043B
IIDR_GICR = 0x4B00043B
PIDR2_V3 = 0x3B
ICC_SRE_RESET = 0x7
PRI_MASK = 0xF8             # VGIC_PRI_BITS = 5
SPI_IDBITS, ITS_IDBITS = 10, 16   # INTERRUPT_ID_BITS_SPIS, INTERRUPT_ID_BITS_ITS


# GICR_{PROP,PEND}BASER (vgic-mmio-v3.c): inner RaWb, outer SameAsInner, InnerShareable
INITIAL_BASER = 3 << 7 | 1 << 10
PROPBASER_RES0 = 0x1F << 59 | 0xF << 52 | 0x3 << 5
PENDBASER_RES0 = 1 << 63 | 0x7 << 59 | 0xF << 52 | 0xF << 12 | 0x7F


def _sanitise_baser(reg: int, res0: int = 0, inner: int = 7, outer: int = 56) -> int:
    """vgic_sanitise_{prop,pend}baser and vgic_sanitise_its_{baser,cbaser}: no outer
    shareability, no inner non-cacheable, outer only SameAsInner or nC; RES0 bits
    cleared.  ``inner``/``outer``: the cacheability fields' shifts (GITS: 59, 53)."""
    share, icache, ocache = reg >> 10 & 3, reg >> inner & 7, reg >> outer & 7
    share = 1 if share == 2 else share
    icache = 3 if icache in (0, 1) else icache
    ocache = ocache if ocache in (0, 1) else 0
    reg = (reg & ~(3 << 10 | 7 << inner | 7 << outer)) | share << 10 | icache << inner | ocache << outer
    return reg & ~res0


class IrqState:
    __slots__ = ("enabled", "pending", "active", "priority", "edge", "group", "targets", "mpidr", "line_level",
                 "source")

    def __init__(self, intid: int, v3: bool) -> None:
        self.enabled = intid < 16                 # SGIs start enabled (userspace may disable them)
        self.pending = self.active = False        # pending: the latch
        self.line_level = False
        self.priority = 0
        self.edge = intid < 16 or intid >= 32     # SGIs and (as seen) SPIs edge, PPIs level
        self.group = v3                           # v3: group 1 by default; v2: group 0
        self.targets = 0
        self.mpidr = 0
        self.source = 0                           # a GICv2 SGI's source vCPUs (a bit per vcpu_id)


_FLAG_GETTERS = {w: attrgetter(w) for w in ("group", "enabled", "pending", "active")}


class GicRegs:
    """The interrupt state behind the DIST/REDIST/CPU register groups."""

    # (offset, count) of the bitmap registers: name -> attribute of IrqState and set/clear role
    BITMAPS = {0x080: ("group", None), 0x100: ("enabled", True), 0x180: ("enabled", False),
               0x200: ("pending", True), 0x280: ("pending", False), 0x300: ("active", True),
               0x380: ("active", False)}

    def __init__(self, d: VgicDist) -> None:
        self.d = d
        self.v3 = d.v3
        self.enabled = False                    # GICD_CTLR: EnableGrp1 (v3), Enable (v2)
        self.implementation_rev = d.implementation_rev   # GICD_IIDR.Revision: 2 or 3, restorable
        # v2: IGROUPR writes are ignored until GICD_IIDR is written back; v3 always
        # takes them (the v3 doc repeats the v2 rule; the kernel does not apply it)
        self.groups_writable = d.v3
        self.spis = [IrqState(i, d.v3) for i in range(NR_PRIVATE_IRQS, NR_PRIVATE_IRQS + d.nr_spis)]
        self.private = {idx: [IrqState(i, d.v3) for i in range(NR_PRIVATE_IRQS)] for idx in d.part.vm.vcpus}
        self.gicc: dict[int, dict[int, int]] = {idx: {} for idx in d.part.vm.vcpus}   # by offset
        self.icc: dict[int, dict[str, int]] = {idx: self._icc_state() for idx in d.part.vm.vcpus}

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
        if value is None and (self.v3 or which != "pending"):
            # a read (the bulk of a save): the 32 IRQs' flags straight off their list
            lo = base - NR_PRIVATE_IRQS
            irqs = self.private[vcpu][base:base + 32] if lo < 0 else self.spis[lo:lo + 32]
            for bit, flag in enumerate(map(_FLAG_GETTERS[which], irqs)):
                if flag:
                    out |= 1 << bit
            return out
        for bit in range(32):
            irq = self.irq(vcpu, base + bit)
            if irq is None:
                continue
            if value is not None and (write is None or value >> bit & 1):
                if which == "group" and not self.groups_writable:
                    continue
                if which == "pending" and not self.v3 and base + bit < NR_SGIS:
                    # v2 SGIs (vgic_uaccess_write_[sc]pending): set makes the vCPU
                    # itself the source; clear "blows the whole set"
                    irq.source = irq.source | 1 << vcpu if write else 0
                setattr(irq, which, bool(value >> bit & 1) if write is None else write)
            bit_value = getattr(irq, which)
            if which == "pending" and not self.v3:
                bit_value = bit_value or (not irq.edge and irq.line_level)  # v2: irq_is_pending
            out |= int(bit_value) << bit
        return out

    def line_level(self, vcpu: int, intid: int, value: int | None) -> int:
        """vgic_{read,write}_irq_line_level_info: writes set every line, reads
        report only level-configured ones; SGIs and absent SPIs are skipped."""
        out = 0
        for bit in range(32):
            irq = self.irq(vcpu, intid + bit)
            if irq is None or intid + bit < 16:
                continue
            if value is not None:
                irq.line_level = bool(value >> bit & 1)
            out |= int(not irq.edge and irq.line_level) << bit
        return out

    def inject(self, vcpu: int, intid: int, level: bool) -> None:
        """kvm_vgic_inject_irq after vgic_validate_injection: an edge IRQ latches
        on a rising line; a level IRQ follows the line."""
        irq = self.irq(vcpu, intid)
        if irq is None:
            return
        if irq.edge:
            irq.pending = irq.pending or level
        else:
            irq.line_level = level

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

    # per-IRQ GICD registers: (first offset, end, bits per IRQ)
    PER_IRQ = tuple((b, b + 0x80, 1) for b in range(0x080, 0x400, 0x80)) + (
        (0x400, 0x800, 8), (0x800, 0xC00, 8), (0xC00, 0xD00, 2), (0xD00, 0xD80, 1), (0x6000, 0x8000, 64))

    @classmethod
    @functools.lru_cache(maxsize=None)
    def _no_region(cls, nr_spis: int) -> bytes:
        """By GICD word offset: 1 where a per-IRQ register covers only IRQs past
        NR_IRQS (computed once per NR_IRQS, not on every access)."""
        out = bytearray(0x8000 >> 2)
        for off in range(0, 0x8000, 4):
            for lo, hi, bits in cls.PER_IRQ:
                if lo <= off < hi and (off - lo) * 8 // bits >= NR_PRIVATE_IRQS + nr_spis:
                    out[off >> 2] = 1
        return bytes(out)

    def dist(self, vcpu: int, off: int, value: int | None) -> int | None:
        """A GICD access; None: not implemented (HAS ENXIO, GET 0, SET ignored).
        A per-IRQ register of IRQs past NR_IRQS (SPIs not allocated: none before
        NR_IRQS or CTRL_INIT) has no region either (vgic_get_mmio_region)."""
        d = self.d
        ncpus = len(d.part.vm.vcpus)
        if off < 0x8000 and self._no_region(d.nr_spis)[off >> 2]:
            return None
        if off == 0x000:
            if value is not None:
                self.enabled = bool(value & 0x2 if self.v3 else value & 0x1)
            return (0x50 | int(self.enabled) << 1) if self.v3 else int(self.enabled)  # v3: ARE_NS | DS
        if off == 0x004:
            typer = (d.nr_spis + NR_PRIVATE_IRQS) // 32 - 1
            if not self.v3:
                return typer | (ncpus - 1) << 5
            if d.part.its:
                return typer | (ITS_IDBITS - 1) << 19 | 1 << 17  # IDbits 16, LPIS
            return typer | (SPI_IDBITS - 1) << 19
        if self.v3 and off in (0x008, 0x00C):
            return self.pre_init_dist(d, off, value, self)
        if off == 0x008:
            if value is not None:
                ignored = d.part.vm.backend.host.fact("gicd_iidr_writes_ignored")   # 6.18.15
                if (value ^ IIDR_DIST) & ~0xF000 or not ignored and (value >> 12 & 0xF) not in (2, 3):
                    raise Errno(E.EINVAL)
                self.groups_writable = True
                if not ignored:
                    self.implementation_rev = value >> 12 & 0xF
            return IIDR_DIST & ~0xF000 | self.implementation_rev << 12
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
        if not self.v3 and off == 0xF00:   # GICD_SGIR: RAZ; a write sends the SGI from this vCPU
            if value is not None:
                self._sgir(vcpu, value)
            return 0
        if not self.v3 and 0xF10 <= off < 0xF30:   # GICD_CPENDSGIR / GICD_SPENDSGIR: a source byte per SGI
            out = 0
            for i in range(4):
                irq = self.private[vcpu][(off & 0xF) + i]
                byte = (value or 0) >> 8 * i & 0xFF
                if value is not None and off >= 0xF20:
                    irq.source |= byte
                    irq.pending = irq.pending or bool(irq.source)
                elif value is not None:
                    irq.source &= ~byte
                    irq.pending = irq.pending and bool(irq.source)
                out |= irq.source << 8 * i
            return out
        if self.v3 and 0x6000 <= off < 0x6000 + 8 * 1020:
            irq = self.irq(0, (off - 0x6000) // 8) if off >= 0x6100 else None
            if irq is None or off & 4:
                return 0  # the upper word (Aff3), and the private IRQs' routes, RAZ/WI
            if value is not None:
                irq.mpidr = value & 0xFFFFFF  # only Aff2..Aff0 are kept (not IRM)
            return irq.mpidr
        if self.v3 and 0xFFD0 <= off < 0x10000:   # GICD_IDREGS: PIDR2 says GICv3, the rest RAZ
            return PIDR2_V3 if off == 0xFFE8 else 0
        return None

    @staticmethod
    def pre_init_dist(d: VgicDist, off: int, value: int | None, regs: "GicRegs | None" = None) -> int:
        """GICD_IIDR (0x008) and GICD_TYPER2 (0x00C) of a GICv3 (vgic_mmio_uaccess_write_v3_misc),
        before init (6.18 and later) or after (``regs``).  No host here has GICv4.1:
        TYPER2 reads 0 and nASSGIcap cannot be set."""
        host = d.part.vm.backend.host
        if off == 0x00C:
            if value is not None and value != 0:
                # 6.12 and older: a write must match (EINVAL); 6.18+: a change after init
                # is EBUSY (checked before the host's support)
                raise Errno(E.EBUSY if regs is not None and host.fact("gicd_typer2_post_init_ebusy") else E.EINVAL)
            return 0
        if value is not None:
            if (value ^ IIDR_DIST) & ~0xF000:
                raise Errno(E.EINVAL)
            if not host.fact("gicd_iidr_writes_ignored"):   # 6.18.15: any revision, none taken
                if (value >> 12 & 0xF) not in (2, 3):
                    raise Errno(E.EINVAL)
                d.implementation_rev = value >> 12 & 0xF
            if regs is not None:
                regs.groups_writable = True
                regs.implementation_rev = d.implementation_rev
        rev = regs.implementation_rev if regs is not None else d.implementation_rev
        return IIDR_DIST & ~0xF000 | rev << 12

    def _sgir(self, source: int, value: int) -> None:
        """vgic_mmio_write_sgir: TargetListFilter 0 the list (a bit per vCPU
        index), 1 all but the source, 2 the source (its vcpu_id as the bit), 3 none."""
        ids = list(self.d.part.vm.vcpus)     # creation order: kvm_for_each_vcpu's index
        targets, mode = value >> 16 & 0xFF, value >> 24 & 3
        if mode == 1:
            targets = ((1 << len(ids)) - 1) & ~(1 << source)
        elif mode == 2:
            targets = 1 << source
        elif mode == 3:
            return
        for c, vid in enumerate(ids):
            if targets >> c & 1:
                irq = self.private[vid][value & 0xF]
                irq.pending = True
                irq.source |= 1 << source

    def redist(self, vcpu: int, off: int, value: int | None) -> int | None:
        """A GICR access of vCPU ``vcpu`` (RD frame, then SGI frame at +64K)."""
        lpis = self.d.part.lpis
        if off == 0x0:  # GICR_CTLR: EnableLPIs; revision 3 adds CES and IR (read-only)
            if value is not None:
                lpis.set_enable(vcpu, bool(value & 1))
            return int(lpis.enabled(vcpu)) | (0x6 if self.implementation_rev >= 3 else 0)
        if off == 0x4:
            return IIDR_GICR
        if off == 0x8:  # GICR_TYPER: vcpu id, PLPIS with an ITS, Last by region placement
            return vcpu << 8 | int(bool(self.d.part.its)) | int(self.d.rdist_is_last(vcpu)) << 4
        if off == 0xC:
            return Affinity.of(self.d.part.vm.vcpus[vcpu].part.mpidr).packed()
        if off == 0x14:
            return 0
        if 0x70 <= off < 0x80:  # GICR_PROPBASER (one for the VM), GICR_PENDBASER (per vCPU)
            prop = off < 0x78
            reg = self.d.part.propbaser if prop else lpis.pendbaser.get(vcpu, INITIAL_BASER)
            if value is not None and not lpis.enabled(vcpu):  # fixed while LPIs are enabled
                shift = 32 if off & 4 else 0
                reg = (reg & ~(0xFFFFFFFF << shift)) | (value & 0xFFFFFFFF) << shift
                reg = _sanitise_baser(reg, PROPBASER_RES0 if prop else PENDBASER_RES0)
                if prop:
                    self.d.part.propbaser = reg
                else:
                    lpis.pendbaser[vcpu] = reg
            if not prop:
                reg &= ~(1 << 62)  # PTZ reads as 0
            return reg >> 32 if off & 4 else reg & 0xFFFFFFFF
        if 0xFFD0 <= off < 0x10000:   # GICR_IDREGS
            return PIDR2_V3 if off == 0xFFE8 else 0
        if 0xA0 <= off < 0xA8 or 0xB0 <= off < 0xB8 or off == 0xC0:
            return 0   # GICR_INVLPIR, GICR_INVALLR (RAZ; a write invalidates), GICR_SYNCR (never busy)
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
        if off == 0x1000 and self.d.part.vm.backend.host.fact("gicc_dir"):
            return 0   # GICC_DIR (7.3): reads 0; a write deactivates nothing here (none active)
        mask = self.GICC_MASKS.get(off)
        if mask is None:
            return None
        if 0xD0 <= off < 0xE0:   # vgic_mmio_{read,write}_apr: APRn past what the host has is RAZ/WI
            host = self.d.part.vm.backend.host
            top = 0 if host.gic == 2 else {7: 3, 6: 1}.get(host.pri_bits, 0)
            if (off - 0xD0) // 4 > top:
                return 0
        regs = self.gicc[vcpu]
        if value is not None:
            regs[off] = value & mask
        return regs.get(off, 0)

    def sysreg(self, vcpu: int, instr: int, value: int | None) -> int:
        """An ICC_* access (GICv3, vgic-sys-reg-v3.c), by the attr's Op0:Op1:CRn:CRm:Op2."""
        name = ICC_BY_INSTR.get(instr)
        if name is None:
            raise Errno(E.ENOENT)
        st = self.icc[vcpu]
        if name == "ICC_CTLR_EL1":
            if value is not None:
                # restoring needs this host's support: no more priority or ID bits than
                # the vCPU has now (so they can be lowered, never raised), same SEIS and A3V.
                # set_gic_ctlr checks and stores PRIbits, then IDbits, then checks SEIS and
                # A3V: a refused value may have lowered the first two (every kernel here)
                pri, idb = (value >> 8 & 7) + 1, value >> 11 & 7
                if pri > st["pri_bits"]:
                    raise Errno(E.EINVAL)
                st["pri_bits"] = pri
                if idb > st["id_bits"]:
                    raise Errno(E.EINVAL)
                st["id_bits"] = idb
                if value >> 14 & 1 or not value >> 15 & 1:
                    raise Errno(E.EINVAL)
                st["ctlr"] = value & 0x3  # CBPR, EOImode
            return 1 << 15 | st["id_bits"] << 11 | (st["pri_bits"] - 1) << 8 | st["ctlr"]
        if name == "ICC_SRE_EL1":
            if value is not None and not value & 1:
                raise Errno(E.EINVAL)  # SRE cannot be cleared
            return ICC_SRE_RESET
        if name[:7] in ("ICC_AP0", "ICC_AP1"):
            if int(name[8]) > {7: 3, 6: 1}.get(st["pri_bits"], 0):
                raise Errno(E.EINVAL)  # vgic_v3_max_apr_idx: no such APnR at these priority bits
            mask = 0xFFFFFFFF
        elif name == "ICC_BPR1_EL1" and st["ctlr"] & 1:  # CBPR: BPR1 follows BPR0, writes ignored
            return min(st.get("ICC_BPR0_EL1", 0) + 1, 7)
        else:
            mask = {"ICC_PMR_EL1": 0xFF, "ICC_BPR0_EL1": 0x7, "ICC_BPR1_EL1": 0x7,
                    "ICC_IGRPEN0_EL1": 0x1, "ICC_IGRPEN1_EL1": 0x1}[name]
        if value is not None:
            st[name] = value & mask
        return st.get(name, 0)

    def _icc_state(self) -> dict[str, int]:
        host = self.d.part.vm.backend.host
        return {"pri_bits": host.pri_bits, "id_bits": int(host.id_bits == 24), "ctlr": 0}


ICC_BY_INSTR = {r.instr: r.name for r in ICC.values()}
ICC_APR = {r.instr for r in ICC.values() if r.name[:7] in ("ICC_AP0", "ICC_AP1")}


@device_model
class VgicV5Model(DeviceModel):
    """KVM_DEV_TYPE_ARM_VGIC_V5 (vgic-kvm-device.c's v5 ops, from the kernel patches:
    no host here has a GICv5).  Only GRP_CTRL: CTRL_INIT and the read-only
    USERSPACE_PPIS mask (the host profile's ``v5_userspace_ppis``)."""

    type_name = "ARM_VGIC_V5"

    def create(self) -> None:
        part = self.vm.part

        def _locked() -> Any:
            if part.vgic is not None or part.vgic_v5 is not None:
                raise Errno(E.EEXIST)
            if part.any_vcpu_ran():
                raise Errno(E.EBUSY)
            self.initialized = False
            part.vgic_v5 = self
        self.vm.with_all_vcpus_locked(_locked)

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == CTRL and attr in (CTRL_INIT, USERSPACE_PPIS):
            return
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == CTRL and attr == USERSPACE_PPIS:
            mask = self.vm.backend.host.v5_userspace_ppis
            self.user.put("__u64", addr, mask & (1 << 64) - 1)
            self.user.put("__u64", addr + 8, mask >> 64)
            return
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group == CTRL and attr == CTRL_INIT:

            def _locked() -> Any:
                if not self.vm.vcpus:
                    raise Errno(E.ENODEV)
                self.initialized = True
            self.vm.with_all_vcpus_locked(_locked)
            return
        raise Errno(E.ENXIO)   # USERSPACE_PPIS is read-only; no other group
