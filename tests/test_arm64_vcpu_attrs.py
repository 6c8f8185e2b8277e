"""arm64 vCPU attributes: PMUv3, timer PPIs, PV time (vcpu.rst), on the real
6.12 and 6.1 kernels (QEMU -cpu max offers PMUv3) and on the mock."""
from __future__ import annotations

import errno as E
import os

import pytest

import kvmdev
import kvmdev.arm64 as A
from a64 import HVC0, program
from kvm_asserts import raises
from kvmdev.devices.arm64_vcpu import INVALID_GPA

pytestmark = pytest.mark.arm64

PMU, TIMER, PVTIME = "KVM_ARM_VCPU_PMU_V3_CTRL", "KVM_ARM_VCPU_TIMER_CTRL", "KVM_ARM_VCPU_PVTIME_CTRL"
PMU_IRQ, PMU_INIT = "KVM_ARM_VCPU_PMU_V3_IRQ", "KVM_ARM_VCPU_PMU_V3_INIT"
RAM = 0x40000000


def machine(kvm: kvmdev.Kvm, gic: int, n: int = 2, features: tuple[str, ...] = ("PSCI_0_2", "PMU_V3"),
            irqchip: bool = True) -> tuple[kvmdev.Vm, list[kvmdev.Vcpu], object]:
    """A VM with ``n`` vCPUs and (``irqchip``) the host's VGIC, not initialized."""
    vm = kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(n)]
    for c in cpus:
        c.vcpu_init(list(features))
    g = None
    if irqchip:
        g = vm.create_device("ARM_VGIC_V3" if gic == 3 else "ARM_VGIC_V2")
        if gic == 3:
            g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        else:
            g.dist_base, g.cpu_base = 0x08000000, 0x08010000
    return vm, cpus, g


def run_to_off(vm: kvmdev.Vm, c: kvmdev.Vcpu) -> str:
    """One KVM_RUN of a guest that calls PSCI SYSTEM_OFF at once."""
    if RAM not in {m.guest_phys_addr for m in vm.memory.values()}:
        vm.add_memory(RAM, 0x1000).write(RAM, program(HVC0))
    c.set_one_reg("pc", RAM)
    c.set_one_reg("x0", A.PSCI_0_2_FN_SYSTEM_OFF)
    return c.run()


def test_has(arm64_kvm, arm64_gic, arm64_kernel, kfact) -> None:
    """HAS: the PMU attributes only on a vCPU with PMU_V3; the EL2 timers
    (HVTIMER, HPTIMER, v6.4) on 6.12, not 6.1; PV time where the host has
    sched_info (both Debian kernels)."""
    vm, (c, _), g = machine(arm64_kvm, arm64_gic)
    for a in ("IRQ", "INIT", "FILTER", "SET_PMU"):
        assert c.has_attr(PMU, f"KVM_ARM_VCPU_PMU_V3_{a}")
    assert c.has_attr(PMU, "KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS") == kfact("pmu_set_nr_counters")  # 6.18+
    assert not c.has_attr(PMU, 5) and not c.has_attr(9, 0)
    assert [c.has_attr(TIMER, f"KVM_ARM_VCPU_TIMER_IRQ_{t}") for t in ("VTIMER", "PTIMER", "HVTIMER", "HPTIMER")] \
        == [True, True] + [arm64_kernel != "6.1"] * 2
    assert c.has_attr(PVTIME, "KVM_ARM_VCPU_PVTIME_IPA") and not c.has_attr(PVTIME, 1)
    vm2, (d, _), _ = machine(arm64_kvm, arm64_gic, features=("PSCI_0_2",))
    assert not d.has_attr(PMU, PMU_IRQ)
    raises(E.ENODEV, d.set_attr, PMU, PMU_IRQ, 23)          # no PMUv3 on this vCPU
    raises(E.ENXIO, c.set_attr, 9, 0, 0, ctype="__u64")    # unknown group
    vm.close(), vm2.close()


def test_timer_ppis(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """Defaults 27/30 (and 28/26 for the EL2 timers on 6.12); a set reaches every
    vCPU that exists; a vCPU created later gets it on 6.12 (one setting per VM)
    but the default on 6.1 (per vCPU); not a PPI: EINVAL; without an in-kernel
    irqchip: EINVAL, though a get works."""
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic)
    assert (c0.timer_irq("VTIMER"), c0.timer_irq("PTIMER")) == (27, 30)
    if arm64_kernel != "6.1":
        assert (c0.timer_irq("HVTIMER"), c0.timer_irq("HPTIMER")) == (28, 26)
    else:
        raises(E.ENXIO, c0.timer_irq, "HVTIMER")
    c1.set_timer_irq("PTIMER", 29)
    assert c0.timer_irq("PTIMER") == c1.timer_irq("PTIMER") == 29
    late = vm.create_vcpu(2)
    late.vcpu_init(["PSCI_0_2", "PMU_V3"])
    assert late.timer_irq("PTIMER") == (30 if arm64_kernel == "6.1" else 29)
    for bad in (15, 32, 100):
        raises(E.EINVAL, c0.set_attr, TIMER, "KVM_ARM_VCPU_TIMER_IRQ_VTIMER", bad)
        with pytest.raises(ValueError, match="PPI"):
            c0.set_timer_irq("VTIMER", bad)
    vm.close()
    vm, (c0, _), _ = machine(arm64_kvm, arm64_gic, irqchip=False)
    assert c0.timer_irq("VTIMER") == 27
    e = raises(E.EINVAL, c0.set_attr, TIMER, "KVM_ARM_VCPU_TIMER_IRQ_VTIMER", 20)
    assert "in-kernel irqchip" in str(e)
    vm.close()


def test_timer_same_ppi_and_run(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """vcpu.rst: "setting the same PPI for different timers will prevent the
    VCPUs from running": the kernel takes the set and fails the first KVM_RUN
    (EINVAL); the typed setter refuses it up front.  Kernel vs doc: on 6.12 the
    vCPU that failed stays unrunnable after the PPI is fixed (its first timer
    keeps the claim on the shared PPI), while a vCPU that never ran runs; 6.1
    runs it.  After a run a set is EBUSY: on 6.12 for every vCPU (the VM's PPIs
    become immutable), on 6.1 only for the vCPU that ran."""
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic, features=("PSCI_0_2",))
    g.init()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="same PPI"):
        c0.set_timer_irq("PTIMER", 27)
    c0.set_attr(TIMER, "KVM_ARM_VCPU_TIMER_IRQ_PTIMER", 27)
    raises(E.EINVAL, run_to_off, vm, c0)
    c0.set_timer_irq("PTIMER", 30)
    if arm64_kernel == "6.1":
        assert run_to_off(vm, c0) == "KVM_EXIT_SYSTEM_EVENT"
        raises(E.EBUSY, c0.set_timer_irq, "PTIMER", 29)
        c1.set_timer_irq("PTIMER", 29)     # c1 has not run; the set reaches c0 too
        assert c1.timer_irq("PTIMER") == 29 and c0.timer_irq("PTIMER") == 29
    else:
        raises(E.EINVAL, run_to_off, vm, c0)
        assert run_to_off(vm, c1) == "KVM_EXIT_SYSTEM_EVENT"
        raises(E.EBUSY, c0.set_timer_irq, "PTIMER", 29)
        raises(E.EBUSY, c1.set_timer_irq, "PTIMER", 29)
    vm.close()


def test_pmu_irq_rules(arm64_kvm, arm64_gic) -> None:
    """The overflow interrupt: a PPI the same on every vCPU or an SPI different per
    vCPU (EINVAL otherwise, ValueError from the typed setter); ENXIO before it is
    set; EBUSY to set it again; EINVAL without an in-kernel irqchip."""
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic)
    raises(E.ENXIO, lambda: c0.pmu_irq)
    c0.pmu_irq = 23
    assert c0.pmu_irq == 23
    raises(E.EINVAL, c1.set_attr, PMU, PMU_IRQ, 22)         # another PPI
    with pytest.raises(ValueError, match="same PPI"):
        c1.pmu_irq = 22
    raises(E.EINVAL, c1.set_attr, PMU, PMU_IRQ, 15)         # an SGI
    c1.pmu_irq = 23
    raises(E.EBUSY, c0.set_attr, PMU, PMU_IRQ, 23)          # already set
    vm.close()
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic)
    c0.pmu_irq = 40
    raises(E.EINVAL, c1.set_attr, PMU, PMU_IRQ, 40)         # the same SPI
    with pytest.raises(ValueError, match="different SPI"):
        c1.pmu_irq = 40
    c1.pmu_irq = 41
    vm.close()
    vm, (c0, _), _ = machine(arm64_kvm, arm64_gic, irqchip=False)
    e = raises(E.EINVAL, c0.set_attr, PMU, PMU_IRQ, 23)
    assert "irqchip" in str(e)
    raises(E.EINVAL, c0.get_attr, PMU, PMU_IRQ)
    vm.close()


def test_pmu_init(arm64_kvm, arm64_gic) -> None:
    """INIT: ENODEV before the VGIC is initialized, ENXIO without the interrupt,
    EBUSY once done (and for any PMU set after it); a vCPU with PMUv3 cannot run
    without it (EINVAL)."""
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic)
    c0.pmu_irq = c1.pmu_irq = 23
    e = raises(E.ENODEV, c0.pmu_init)
    assert "VGIC is not initialized" in str(e)
    g.init()  # type: ignore[attr-defined]
    c0.pmu_init()
    raises(E.EBUSY, c0.pmu_init)
    raises(E.EBUSY, c0.set_attr, PMU, PMU_IRQ, 23)
    raises(E.EINVAL, run_to_off, vm, c1)                    # c1's PMU was never initialized
    assert run_to_off(vm, c0) == "KVM_EXIT_SYSTEM_EVENT"
    vm.close()
    vm, (c0, _), g = machine(arm64_kvm, arm64_gic)
    g.init()  # type: ignore[attr-defined]
    raises(E.ENXIO, c0.pmu_init)                            # no interrupt set
    vm.close()


def _host_pmu_type(kvm: kvmdev.Kvm) -> int:
    """The host PMU's perf type: sysfs on a real arm64 host, the mock's profile."""
    if kvm.backend == "mock":
        return int(kvm._backend.host.pmu_type)  # type: ignore[attr-defined]
    base = "/sys/bus/event_source/devices"
    for name in sorted(os.listdir(base)):
        if name.startswith("armv8"):
            with open(f"{base}/{name}/type") as f:
                return int(f.read())
    pytest.fail("no armv8 PMU under /sys/bus/event_source/devices")


def test_pmu_filter_and_set_pmu(arm64_kvm, arm64_gic) -> None:
    """FILTER: EINVAL for an action other than ALLOW/DENY or events past the PMU's
    event space, EBUSY once the VM has run; SET_PMU: ENXIO for a type that is no
    host PMU, 0 for the host's."""
    vm, (c0, c1), g = machine(arm64_kvm, arm64_gic)
    raises(E.EINVAL, c0.set_attr, PMU, "KVM_ARM_VCPU_PMU_V3_FILTER",
           {"base_event": 0, "nevents": 1, "action": 2})
    raises(E.EINVAL, c0.pmu_filter, 0xFFFF, 2)
    c0.pmu_filter(0x11, 1, "deny")
    c0.pmu_filter(0, 1024, "allow")
    raises(E.ENXIO, c0.set_pmu, 0x7FFF)
    c0.set_pmu(_host_pmu_type(arm64_kvm))
    c0.pmu_irq = c1.pmu_irq = 23
    g.init()  # type: ignore[attr-defined]
    c0.pmu_init()
    c1.pmu_init()
    assert run_to_off(vm, c0) == "KVM_EXIT_SYSTEM_EVENT"
    raises(E.EBUSY, c1.pmu_filter, 0x11, 1, "deny")
    vm.close()


def test_pvtime(arm64_kvm, arm64_gic) -> None:
    """The stolen-time IPA: all ones until set; 64-byte aligned (EINVAL), inside
    a memslot (EINVAL), set once (EEXIST)."""
    vm, (c0, c1), _ = machine(arm64_kvm, arm64_gic)
    assert c0.pvtime_ipa == INVALID_GPA
    raises(E.EINVAL, c0.set_attr, PVTIME, "KVM_ARM_VCPU_PVTIME_IPA", RAM + 8)
    with pytest.raises(ValueError, match="64-byte"):
        c0.pvtime_ipa = RAM + 8
    raises(E.EINVAL, c0.set_attr, PVTIME, "KVM_ARM_VCPU_PVTIME_IPA", RAM)   # no memslot yet
    vm.add_memory(RAM, 0x10000)
    c0.pvtime_ipa = RAM + 0x40
    c1.pvtime_ipa = RAM + 0x80
    assert (c0.pvtime_ipa, c1.pvtime_ipa) == (RAM + 0x40, RAM + 0x80)
    e = raises(E.EEXIST, c0.set_attr, PVTIME, "KVM_ARM_VCPU_PVTIME_IPA", RAM + 0x100)
    assert "already set" in str(e)
    vm.close()


SMCCC, FILTER = "KVM_ARM_VM_SMCCC_CTRL", "KVM_ARM_VM_SMCCC_FILTER"
PSCI_BASE = 0x84000000


def test_vm_smccc_filter(arm64_kvm, arm64_gic, arm64_kernel, kfact) -> None:
    """The VM's SMCCC filter (v6.4): on 6.1 every VM attribute is EINVAL.  On 6.12:
    HAS yes, GET EINVAL; ranges may overlap neither each other nor KVM's SMCCC
    architecture ranges (EEXIST); an empty range or one past 0xffffffff, a bad
    action or padding is EINVAL; HANDLE keeps KVM's PSCI working; after a run
    the filter is fixed (EBUSY).  Source vs kernel: hypercalls.c's u32
    arithmetic makes nr_functions 0 from base 0 every id (then EEXIST), as
    6.18.15 answers; 6.12 and 7.3 answer EINVAL, as for any empty range."""
    vm, (c, _), _ = machine(arm64_kvm, arm64_gic, n=2, features=("PSCI_0_2",), irqchip=False)
    if arm64_kernel == "6.1":
        raises(E.EINVAL, vm.has_attr, SMCCC, FILTER)
        raises(E.EINVAL, vm.smccc_filter, 0x86000000, 1, "DENY")
        return
    assert vm.has_attr(SMCCC, FILTER) and not vm.has_attr(SMCCC, 1) and not vm.has_attr(1, 0)
    raises(E.EINVAL, vm.get_attr, SMCCC, FILTER)
    vm.smccc_filter(PSCI_BASE, 0x20, "HANDLE")
    vm.smccc_filter(0x86000000, 0x100, "DENY")
    e = raises(E.EEXIST, vm.smccc_filter, 0x860000FF, 2, "FWD_TO_USER")     # overlaps the DENY range
    assert "overlaps" in str(e) and e.group == SMCCC and e.attr == FILTER
    raises(E.EEXIST, vm.smccc_filter, 0x8000FFFF, 1, "DENY")                # KVM's own SMC32 arch range
    raises(E.EEXIST, vm.smccc_filter, 0xC0000000, 1, "DENY")                # and SMC64's
    raises(E.EEXIST, vm.smccc_filter, 0, (1 << 32) - 1, "HANDLE")           # 0..0xfffffffe
    raises(kfact("smccc_empty_range_from_0_errno"), vm.smccc_filter, 0, 0, "HANDLE")  # empty (see above; 6.18.15: EEXIST)
    raises(E.EINVAL, vm.smccc_filter, 5, 0, "HANDLE")
    raises(E.EINVAL, vm.smccc_filter, 0xFFFFFFFF, 2, "HANDLE")               # past 0xffffffff
    vm.smccc_filter(0xFFFFFF00, 0x100, "DENY")                              # up to 0xffffffff
    raises(E.EINVAL, vm.set_attr, SMCCC, FILTER, {"base": 0x87000000, "nr_functions": 1, "action": 3})
    raises(E.EINVAL, vm.set_attr, SMCCC, FILTER,
           {"base": 0x87000000, "nr_functions": 1, "action": 1, "pad": [0] * 14 + [1]})
    with pytest.raises(ValueError, match="HANDLE, DENY, FWD_TO_USER"):
        vm.smccc_filter(0x87000000, 1, "allow")
    vm.smccc_filter(0x87000000, 1, "FWD_TO_USER")                           # adjacent ranges are fine
    assert run_to_off(vm, c) == "KVM_EXIT_SYSTEM_EVENT"                     # PSCI still KVM's (HANDLE)
    raises(E.EBUSY, vm.smccc_filter, 0x88000000, 1, "DENY")
    vm.close()
