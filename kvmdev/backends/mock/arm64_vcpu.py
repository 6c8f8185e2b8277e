"""arm64 vCPU attributes of the mock (arch/arm64/kvm/guest.c, pmu-emul.c,
arch_timer.c, pvtime.c) and the first-run checks they feed (kvm_timer_enable,
kvm_arm_pmu_v3_enable).  Each rule is checked by tests/test_arm64_vcpu_attrs.py
on the real 6.12 and 6.1 kernels too.

Where the kernels differ: 6.12 keeps the timer PPIs per VM (a set reaches later
vCPUs too) and makes them immutable once any vCPU passes its first run; 6.1
keeps them per vCPU (a set writes every existing vCPU) and refuses a set only on
a vCPU that ran.  At the first run, 6.12 claims the PPIs physical timer first,
6.1 virtual timer first; a claim is never released, so on 6.12 a vCPU that
failed for two timers on one PPI stays unrunnable (as seen on 6.12.117).
"""
from __future__ import annotations

import errno as E
from typing import TYPE_CHECKING

from .kernel import AttrModel, Errno

if TYPE_CHECKING:
    from .arm64 import Arm64Vcpu
    from .kernel import MockVcpu

# attr value -> default PPI (arch_timer.c default_ppi): VTIMER, PTIMER, HVTIMER, HPTIMER
TIMER_DEFAULTS = {0: 27, 1: 30, 2: 28, 3: 26}
PMU_NR_EVENTS = 65536          # PMUv3p1 and later (QEMU -cpu max)
INVALID_GPA = (1 << 64) - 1
PMU_GRP, TIMER_GRP, PVTIME_GRP = 0, 1, 2
PMU_IRQ, PMU_INIT, PMU_FILTER, PMU_SET_PMU, PMU_SET_NR_COUNTERS = 0, 1, 2, 3, 4


def timer_ppis(cpu: "Arm64Vcpu") -> dict[int, int]:
    """The PPIs this vCPU's timers use: the VM's (6.12) or its own (6.1)."""
    return cpu.timer_ppi if cpu.k61 else cpu.vm.timer_ppi


def set_owner(cpu: "Arm64Vcpu", intid: int, owner: str) -> None:
    """kvm_vgic_set_owner: a PPI per vCPU, an SPI per VM; EEXIST if another has it,
    EINVAL for an SPI the VGIC does not have."""
    if intid < 32:
        owners = cpu.ppi_owner
    else:
        d = cpu.vm.vgic
        if d is None or intid >= 32 + d.nr_spis:
            raise Errno(E.EINVAL)
        owners = cpu.vm.spi_owner
    if owners.get(intid, owner) != owner:
        raise Errno(E.EEXIST)
    owners[intid] = owner


def timer_enable(cpu: "Arm64Vcpu") -> None:
    """kvm_timer_enable at the first run: the PPIs are claimed (6.12: physical
    timer first; 6.1: virtual first, and every vCPU must use the same ones)."""
    if cpu.timer_enabled:
        return
    if cpu.vm.vgic is not None:
        if not cpu.vm.vgic.initialized:
            raise Errno(E.ENODEV)
        ppis = timer_ppis(cpu)
        order = (0, 1) if cpu.k61 else (1, 0)
        try:
            for t in order:
                set_owner(cpu, ppis[t], f"timer{t}")
        except Errno:
            raise Errno(E.EINVAL) from None
        if cpu.k61:
            if any((c.part.timer_ppi[0], c.part.timer_ppi[1]) != (ppis[0], ppis[1])
                   for c in cpu.vcpu.vm.vcpus.values()):
                raise Errno(E.EINVAL)
        else:
            cpu.vm.timers_immutable = True
    cpu.timer_enabled = True


def pmu_enable(cpu: "Arm64Vcpu") -> None:
    """kvm_arm_pmu_v3_enable at the first run."""
    if not cpu.has("PMU_V3"):
        return
    if not cpu.pmu_created or (cpu.vm.vgic is None and cpu.pmu_irq is not None):
        raise Errno(E.EINVAL)


def _nr_counters(c: "Arm64Vcpu") -> bool:
    """KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS exists (6.18 and later)."""
    return bool(c.vcpu.backend.host.fact("pmu_set_nr_counters"))


class VcpuAttrs(AttrModel):
    """kvm_arm_vcpu_arch_{has,get,set}_attr."""

    def __init__(self, vcpu: "MockVcpu") -> None:
        self.vcpu = vcpu
        self.user = vcpu.user

    @property
    def cpu(self) -> "Arm64Vcpu":
        return self.vcpu.part   # type: ignore[no-any-return]

    def has(self, group: int, attr: int, addr: int) -> None:
        c = self.cpu
        if group == PMU_GRP and c.has("PMU_V3") and (attr in (PMU_IRQ, PMU_INIT, PMU_FILTER, PMU_SET_PMU) or
                                                    attr == PMU_SET_NR_COUNTERS and _nr_counters(c)):
            return
        if group == TIMER_GRP and attr in ((0, 1) if c.k61 else (0, 1, 2, 3)):
            return
        if group == PVTIME_GRP and attr == 0:
            return
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        c = self.cpu
        if group == PMU_GRP:   # kvm_arm_pmu_v3_get_attr switches on the attr first
            if attr != PMU_IRQ:
                raise Errno(E.ENXIO)
            if c.vm.vgic is None:
                raise Errno(E.EINVAL)
            if not c.has("PMU_V3"):
                raise Errno(E.ENODEV)
            if c.pmu_irq is None:
                raise Errno(E.ENXIO)
            self.user.put("int", addr, c.pmu_irq)
        elif group == TIMER_GRP:
            if attr not in ((0, 1) if c.k61 else (0, 1, 2, 3)):
                raise Errno(E.ENXIO)
            self.user.put("int", addr, timer_ppis(c)[attr])
        elif group == PVTIME_GRP:
            if attr != 0:
                raise Errno(E.ENXIO)
            self.user.put("__u64", addr, c.pvtime)
        else:
            raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        {PMU_GRP: self._pmu, TIMER_GRP: self._timer, PVTIME_GRP: self._pvtime}.get(group, self._none)(attr, addr)

    def _none(self, attr: int, addr: int) -> None:
        raise Errno(E.ENXIO)

    # -- KVM_ARM_VCPU_TIMER_CTRL (kvm_arm_timer_set_attr) ----------------------------
    def _timer(self, attr: int, addr: int) -> None:
        c = self.cpu
        if c.vm.vgic is None:
            raise Errno(E.EINVAL)
        ppi = self.user.get("int", addr)
        if not 16 <= ppi < 32:
            raise Errno(E.EINVAL)
        if c.timer_enabled if c.k61 else c.vm.timers_immutable:
            raise Errno(E.EBUSY)
        if attr not in ((0, 1) if c.k61 else (0, 1, 2, 3)):
            raise Errno(E.ENXIO)
        if c.k61:   # set_timer_irqs: every vCPU that exists now
            for other in c.vcpu.vm.vcpus.values():
                other.part.timer_ppi[attr] = ppi
        else:
            c.vm.timer_ppi[attr] = ppi

    # -- KVM_ARM_VCPU_PMU_V3_CTRL (kvm_arm_pmu_v3_set_attr) --------------------------
    def _pmu(self, attr: int, addr: int) -> None:
        c = self.cpu
        if not c.has("PMU_V3"):
            raise Errno(E.ENODEV)
        if c.pmu_created:
            raise Errno(E.EBUSY)
        if attr == PMU_IRQ:
            if c.vm.vgic is None:
                raise Errno(E.EINVAL)
            irq = self.user.get("int", addr)
            if not 16 <= irq <= 1019:
                raise Errno(E.EINVAL)
            for other in c.vcpu.vm.vcpus.values():   # pmu_irq_is_valid
                theirs = other.part.pmu_irq if other.part.has("PMU_V3") else None
                if theirs is None:
                    continue
                if irq < 32 and theirs != irq or irq >= 32 and theirs == irq:
                    raise Errno(E.EINVAL)
            if c.pmu_irq is not None:
                raise Errno(E.EBUSY)
            c.pmu_irq = irq
        elif attr == PMU_FILTER:
            f = self.user.read_struct("struct kvm_pmu_event_filter", addr)
            if f.base_event + f.nevents > PMU_NR_EVENTS or f.action not in (0, 1):
                raise Errno(E.EINVAL)
            if c.vm.any_vcpu_ran():
                raise Errno(E.EBUSY)
            c.vm.pmu_filters.append((int(f.base_event), int(f.nevents), int(f.action)))
        elif attr == PMU_SET_PMU:
            pmu = self.user.get("int", addr)
            if pmu != c.vcpu.backend.host.pmu_type:
                raise Errno(E.ENXIO)
            if c.vm.any_vcpu_ran() or c.vm.pmu_filters and c.vm.pmu_type not in (None, pmu):
                raise Errno(E.EBUSY)
            c.vm.pmu_type = pmu
        elif attr == PMU_SET_NR_COUNTERS and _nr_counters(c):
            n = self.user.get("__u32", addr)   # unsigned int
            if n > c.vcpu.backend.host.pmu_counters:   # kvm_arm_pmu_get_max_counters
                raise Errno(E.EINVAL)
            if c.vm.any_vcpu_ran():
                raise Errno(E.EBUSY)
            c.vm.pmu_nr_counters = n
        elif attr == PMU_INIT:
            if c.vm.vgic is not None:
                if not c.vm.vgic.initialized:
                    raise Errno(E.ENODEV)
                if c.pmu_irq is None:
                    raise Errno(E.ENXIO)
                set_owner(c, c.pmu_irq, "pmu")
            c.pmu_created = True
        else:
            raise Errno(E.ENXIO)

    # -- KVM_ARM_VCPU_PVTIME_CTRL (kvm_arm_pvtime_set_attr) ---------------------------
    def _pvtime(self, attr: int, addr: int) -> None:
        c = self.cpu
        if attr != 0:
            raise Errno(E.ENXIO)
        ipa = self.user.get("__u64", addr)
        if ipa % 64:
            raise Errno(E.EINVAL)
        if c.pvtime != INVALID_GPA:
            raise Errno(E.EEXIST)
        if c.vcpu.vm.memslot_uaddr(ipa, 1, False) is None:
            raise Errno(E.EINVAL)
        c.pvtime = ipa
