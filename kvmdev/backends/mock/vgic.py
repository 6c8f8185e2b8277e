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

from .kernel import DeviceModel, Errno, device_model

if TYPE_CHECKING:
    from .arm64 import Arm64Vm

ADDR_UNDEF = (1 << 64) - 1  # VGIC_ADDR_UNDEF
U64_END = 1 << 64
SZ_4K, SZ_64K = 0x1000, 0x10000
NR_IRQS_LEGACY = 256        # VGIC_NR_IRQS_LEGACY
NR_PRIVATE_IRQS = 32
MAX_RESERVED = 1023         # VGIC_MAX_RESERVED

# KVM_DEV_ARM_VGIC_GRP_*
ADDR, DIST_REGS, CPU_REGS, NR_IRQS, CTRL, REDIST_REGS, CPU_SYSREGS, LEVEL_INFO, ITS_REGS, MAINT_IRQ = range(10)
# KVM_VGIC_*_ADDR_TYPE_*
V2_DIST, V2_CPU, V3_DIST, V3_REDIST, ITS_ADDR, V3_REDIST_REGION = range(6)
# KVM_DEV_ARM_VGIC_GRP_CTRL attributes
CTRL_INIT, ITS_SAVE_TABLES, ITS_RESTORE_TABLES, SAVE_PENDING_TABLES, ITS_CTRL_RESET = range(5)
V2_DIST_SIZE, V2_CPU_SIZE = 0x1000, 0x2000
V3_DIST_SIZE, V3_REDIST_SIZE, ITS_SIZE = 0x10000, 0x20000, 0x20000


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

    # groups the kernel implements on this version but the mock does not model
    unmodelled: frozenset[int] = frozenset()
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

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR and attr in self.addr_types or group == NR_IRQS or \
                group == CTRL and attr in self.ctrl_attrs:
            return
        if group in self.unmodelled:
            raise Errno(E.ENOSYS)
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
        if group in self.unmodelled:
            raise Errno(E.ENOSYS)
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        self._common(group, attr, addr, False)

    def set(self, group: int, attr: int, addr: int) -> None:
        self._common(group, attr, addr, True)


@device_model
class VgicV2Model(_Vgic):
    type_name = "ARM_VGIC_V2"
    addr_types = frozenset({V2_DIST, V2_CPU})
    unmodelled = frozenset({DIST_REGS, CPU_REGS})


@device_model
class VgicV3Model(_Vgic):
    type_name = "ARM_VGIC_V3"
    addr_types = frozenset({V3_DIST, V3_REDIST, V3_REDIST_REGION})
    ctrl_attrs = frozenset({CTRL_INIT, SAVE_PENDING_TABLES})
    unmodelled = frozenset({DIST_REGS, REDIST_REGS, CPU_SYSREGS, LEVEL_INFO, MAINT_IRQ})


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

