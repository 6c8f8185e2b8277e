"""arm64 vCPU attributes (Documentation/virt/kvm/devices/vcpu.rst; arch/arm64/kvm/
guest.c, pmu-emul.c, arch_timer.c, pvtime.c): the PMUv3, the timers' PPIs and
the stolen-time (PV time) structure, on the vCPU fd; and the one arm64 VM
attribute, the SMCCC filter (v6.4, hypercalls.c), on the VM fd.

    cpu.pmu_irq = 23; cpu.pmu_init()            # after gic.init()
    cpu.pmu_filter(0x11, 1, "deny")            # KVM_ARM_VCPU_PMU_V3_FILTER
    cpu.timer_irq("VTIMER")                    # 27 unless set
    cpu.set_timer_irq("PTIMER", 29)
    cpu.pvtime_ipa = 0x40001000                # 64-byte aligned, in a memslot
    vm.smccc_filter(0x84000000, 0x20, "DENY")  # KVM_ARM_VM_SMCCC_FILTER (6.4+)

The typed setters check the doc's rules before the ioctl (a timer PPI is 16..31
and differs from the other timers'; a PMU interrupt is a PPI or an SPI, the same
PPI on every vCPU or a different SPI per vCPU) and raise ValueError quoting the
rule; set_attr() is the raw path, for what the kernel itself answers.
"""
from __future__ import annotations

from ..attrs import RW, WO, AttrOps, Attr, Group, VcpuOps, arch_only, register
from ..errnos import register as _register_errnos
from ..errors import KvmError
from .. import _check

ARM64 = ("arm64",)
PMU, TIMER, PVTIME = "KVM_ARM_VCPU_PMU_V3_CTRL", "KVM_ARM_VCPU_TIMER_CTRL", "KVM_ARM_VCPU_PVTIME_CTRL"
# the timers, their attributes and default PPIs (arch_timer.c default_ppi)
TIMERS = {"VTIMER": 27, "PTIMER": 30, "HVTIMER": 28, "HPTIMER": 26}
PMU_EVENT_ACTIONS = {"allow": 0, "deny": 1}     # KVM_PMU_EVENT_ALLOW / _DENY
SMCCC = "KVM_ARM_VM_SMCCC_CTRL"
SMCCC_FILTER_ACTIONS = ("HANDLE", "DENY", "FWD_TO_USER")   # KVM_SMCCC_FILTER_<action>
# the SMCCC architecture calls KVM keeps for itself (SMC32/SMC64 arch ranges)
SMCCC_RESERVED = ((0x80000000, 0x8000FFFF), (0xC0000000, 0xC000FFFF))

register("vcpu", [
    Group(PMU, arches=ARM64, doc="PMUv3 emulation (vCPUs created with the PMU_V3 feature)", attrs=(
        Attr("KVM_ARM_VCPU_PMU_V3_IRQ", "int", RW,
             "the PMU overflow interrupt: a PPI (16..31) the same on every vCPU, or an SPI "
             "(32..1019) different per vCPU"),
        Attr("KVM_ARM_VCPU_PMU_V3_INIT", None, WO,
             "initialize the PMUv3; with an in-kernel VGIC, after it is initialized"),
        Attr("KVM_ARM_VCPU_PMU_V3_FILTER", "struct kvm_pmu_event_filter", WO,
             "allow or deny a range of PMU events for the VM (before any vCPU runs)"),
        Attr("KVM_ARM_VCPU_PMU_V3_SET_PMU", "int", WO,
             "the host PMU (its perf event source type) backing the VM's PMU"),
        Attr("KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS", "unsigned int", WO,
             "the number of general-purpose counters (PMCR_EL0.N) of the VM's PMU, at most the "
             "host PMU's (6.18 and later)"),
    )),
    Group(TIMER, arches=ARM64, doc="the architected timers' interrupts (PPIs)", attrs=tuple(
        Attr(f"KVM_ARM_VCPU_TIMER_IRQ_{t}", "int", RW, f"the {t} interrupt, a PPI (default {ppi})")
        for t, ppi in TIMERS.items())),
    Group(PVTIME, arches=ARM64, doc="paravirtualized stolen time", attrs=(
        Attr("KVM_ARM_VCPU_PVTIME_IPA", "__u64", RW,
             "the IPA of the vCPU's stolen-time structure: 64-byte aligned, in a memslot, set once"),
    )),
])

register("vm", [
    Group(SMCCC, arches=ARM64, doc="the SMCCC filter (v6.4; absent on 6.1, where every VM attribute is EINVAL)",
          attrs=(Attr("KVM_ARM_VM_SMCCC_FILTER", "struct kvm_smccc_filter", WO,
                      "handle, deny or forward to userspace the SMCCC calls base..base+nr_functions-1"),)),
])

_register_errnos({
    ("KVM_SET_DEVICE_ATTR", "vm", SMCCC, "EEXIST"):
        "the range overlaps one already in the filter, or the SMCCC architecture ranges KVM keeps "
        "for itself (0x80000000-0x8000ffff, 0xc0000000-0xc000ffff)",
    ("KVM_SET_DEVICE_ATTR", "vm", SMCCC, "EINVAL"):
        "non-zero padding, an empty range (nr_functions 0) or one past 0xffffffff, or an action "
        "other than HANDLE, DENY, FWD_TO_USER",
    ("KVM_SET_DEVICE_ATTR", "vm", SMCCC, "EBUSY"): "a vCPU of the VM has run: the filter is fixed",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PMU, "ENODEV"):
        "the vCPU has no PMUv3 (feature PMU_V3), no host PMU, or (INIT) the VGIC is not initialized",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PMU, "EBUSY"):
        "the PMU is already initialized, the interrupt already set, or (FILTER, SET_PMU) the VM has run",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PMU, "EINVAL"):
        "no in-kernel irqchip, an interrupt that is no PPI/SPI or breaks the PPI/SPI rule, a bad filter, "
        "or (SET_NR_COUNTERS) more counters than the host PMU has",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PMU, "ENXIO"):
        "(INIT) the interrupt is not set; (SET_PMU) no host PMU of that type; or no such attribute",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PMU, "EEXIST"): "(INIT) the interrupt is owned by another device (a timer)",
    ("KVM_GET_DEVICE_ATTR", "vcpu", PMU, "ENXIO"): "the overflow interrupt is not set",
    ("KVM_GET_DEVICE_ATTR", "vcpu", PMU, "ENODEV"): "the vCPU has no PMUv3",
    ("KVM_GET_DEVICE_ATTR", "vcpu", PMU, "EINVAL"): "no in-kernel irqchip",
    ("KVM_SET_DEVICE_ATTR", "vcpu", TIMER, "EINVAL"): "no in-kernel irqchip, or not a PPI (16 <= intid < 32)",
    ("KVM_SET_DEVICE_ATTR", "vcpu", TIMER, "EBUSY"): "one or more vCPUs have already run",
    ("KVM_SET_DEVICE_ATTR", "vcpu", TIMER, "ENXIO"): "no such timer on this kernel",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PVTIME, "EINVAL"): "not 64-byte aligned, or not in a memslot",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PVTIME, "EEXIST"): "the stolen-time IPA is already set",
    ("KVM_SET_DEVICE_ATTR", "vcpu", PVTIME, "ENXIO"): "stolen time is not supported by this host",
    ("KVM_GET_DEVICE_ATTR", "vcpu", PVTIME, "ENXIO"): "stolen time is not supported by this host",
})

INVALID_GPA = (1 << 64) - 1


def _pmu_irq_rule(vcpu: VcpuOps, irq: int) -> None:
    """vcpu.rst: "a PPI or SPI, but the interrupt type must be same for each vcpu.
    As a PPI, the interrupt number is the same for all vcpus, while as an SPI it
    must be a separate number per vcpu"."""
    irq = _check.integer("PMU overflow interrupt", irq)
    if not 16 <= irq <= 1019:
        raise ValueError(f"PMU overflow interrupt {irq}: a PPI (16..31) or an SPI (32..1019)")
    for other in vcpu.vm.vcpus:
        if other is vcpu:
            continue
        try:
            theirs = int(other.get_attr(PMU, "KVM_ARM_VCPU_PMU_V3_IRQ"))
        except KvmError:   # not set there (ENXIO), or that vCPU has no PMU
            continue
        if (theirs < 32) != (irq < 32) or (irq < 32 and theirs != irq) or (irq >= 32 and theirs == irq):
            raise ValueError(f"PMU overflow interrupt {irq} on vCPU {vcpu.id}, {theirs} on vCPU {other.id}: "
                             "the same PPI on every vCPU, or a different SPI per vCPU (vcpu.rst)")


@arch_only(*ARM64)
class Arm64VcpuAttrs:
    """Typed arm64 vCPU attributes (mixed into Vcpu)."""

    @property
    def pmu_irq(self: VcpuOps) -> int:
        """KVM_ARM_VCPU_PMU_V3_IRQ (ENXIO until set)."""
        return int(self.get_attr(PMU, "KVM_ARM_VCPU_PMU_V3_IRQ"))

    @pmu_irq.setter
    def pmu_irq(self: VcpuOps, irq: int) -> None:
        _pmu_irq_rule(self, irq)
        self.set_attr(PMU, "KVM_ARM_VCPU_PMU_V3_IRQ", irq)

    def pmu_init(self: AttrOps) -> None:
        """KVM_ARM_VCPU_PMU_V3_INIT (after the VGIC's CTRL_INIT, with the IRQ set)."""
        self.set_attr(PMU, "KVM_ARM_VCPU_PMU_V3_INIT")

    def pmu_filter(self: AttrOps, base_event: int, nevents: int, action: str = "allow") -> None:
        """KVM_ARM_VCPU_PMU_V3_FILTER: allow or deny events base_event..+nevents-1
        (VM-wide; the first filter makes the rest denied (allow) or allowed (deny))."""
        if action not in PMU_EVENT_ACTIONS:
            raise ValueError(f"action is one of {', '.join(PMU_EVENT_ACTIONS)}, not {_check.show(action)}")
        self.set_attr(PMU, "KVM_ARM_VCPU_PMU_V3_FILTER",
                      {"base_event": base_event, "nevents": nevents, "action": PMU_EVENT_ACTIONS[action]})

    def set_pmu(self: AttrOps, pmu_type: int) -> None:
        """KVM_ARM_VCPU_PMU_V3_SET_PMU: the host PMU by its perf type
        (/sys/bus/event_source/devices/<pmu>/type)."""
        self.set_attr(PMU, "KVM_ARM_VCPU_PMU_V3_SET_PMU", pmu_type)

    def set_pmu_nr_counters(self: AttrOps, n: int) -> None:
        """KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS: the PMU's general-purpose counters
        (PMCR_EL0.N), VM-wide, before any vCPU runs (6.18 and later)."""
        if not 0 <= n < 1 << 32:
            raise ValueError(f"the counter count is an unsigned int, not {n}")
        self.set_attr(PMU, "KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS", n)

    def timer_irq(self: AttrOps, timer: str) -> int:
        """KVM_ARM_VCPU_TIMER_IRQ_<timer>: VTIMER, PTIMER, HVTIMER, HPTIMER."""
        if timer not in TIMERS:
            raise ValueError(f"timer is one of {', '.join(TIMERS)}, not {_check.show(timer)}")
        return int(self.get_attr(TIMER, f"KVM_ARM_VCPU_TIMER_IRQ_{timer}"))

    def set_timer_irq(self: AttrOps, timer: str, ppi: int) -> None:
        """Set a timer's PPI: on 6.12 for the whole VM, on 6.1 for every vCPU that
        exists now.  Refused here (ValueError) if it breaks vcpu.rst: a PPI (16..31),
        and "setting the same PPI for different timers will prevent the VCPUs from
        running" (the kernel accepts it and fails the first KVM_RUN)."""
        if timer not in TIMERS:
            raise ValueError(f"timer is one of {', '.join(TIMERS)}, not {_check.show(timer)}")
        if not 16 <= ppi < 32:
            raise ValueError(f"timer interrupt {ppi}: it must be a PPI (16 <= intid < 32) (vcpu.rst)")
        for other in TIMERS:
            if other == timer:
                continue
            try:
                theirs = int(self.get_attr(TIMER, f"KVM_ARM_VCPU_TIMER_IRQ_{other}"))
            except KvmError:   # a timer this kernel lacks (ENXIO on 6.1)
                continue
            if theirs == ppi:
                raise ValueError(f"PPI {ppi} is the {other}'s: setting the same PPI for different timers will "
                                 "prevent the VCPUs from running (vcpu.rst)")
        self.set_attr(TIMER, f"KVM_ARM_VCPU_TIMER_IRQ_{timer}", ppi)

    @property
    def pvtime_ipa(self: AttrOps) -> int:
        """KVM_ARM_VCPU_PVTIME_IPA (INVALID_GPA, all ones, until set)."""
        return int(self.get_attr(PVTIME, "KVM_ARM_VCPU_PVTIME_IPA"))

    @pvtime_ipa.setter
    def pvtime_ipa(self: AttrOps, ipa: int) -> None:
        if ipa % 64:
            raise ValueError(f"stolen-time IPA {ipa:#x} is not 64-byte aligned (vcpu.rst)")
        self.set_attr(PVTIME, "KVM_ARM_VCPU_PVTIME_IPA", ipa)


@arch_only(*ARM64)
class Arm64VmAttrs:
    """Typed arm64 VM attributes (mixed into Vm)."""

    def smccc_filter(self: AttrOps, base: int, nr_functions: int, action: str = "HANDLE") -> None:
        """KVM_ARM_VM_SMCCC_FILTER: apply ``action`` (HANDLE, DENY, FWD_TO_USER) to
        the SMCCC function ids base..base+nr_functions-1, before any vCPU runs.
        Ranges may not overlap each other or KVM's own SMCCC architecture ranges."""
        if action not in SMCCC_FILTER_ACTIONS:
            raise ValueError(f"action is one of {', '.join(SMCCC_FILTER_ACTIONS)}, not {_check.show(action)}")
        self.set_attr(SMCCC, "KVM_ARM_VM_SMCCC_FILTER", {"base": base, "nr_functions": nr_functions,
                                                          "action": SMCCC_FILTER_ACTIONS.index(action)})
