"""What differs between the arm64 kernels (6.1, 6.12, 6.18.15, 7.3.4), each answer
from kvmdev.backends.mock.kernel_facts (the one table the mock profiles read too):
the new vCPU features, the VGIC v3 MAINT_IRQ group, GICD_IIDR/GICD_TYPER2 before
init, the ITS's unknown CTRL attributes, GICv2's GICC_DIR, the PMU's SET_NR_COUNTERS
and the capabilities.  Run on the real kernels in the guests and on every mock profile."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.backends.mock.host import arm64_kernel_caps

pytestmark = pytest.mark.arm64

PMU = "KVM_ARM_VCPU_PMU_V3_CTRL"
MAINT = "KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ"
DIST, CPU_REGS, CTRL = "KVM_DEV_ARM_VGIC_GRP_DIST_REGS", "KVM_DEV_ARM_VGIC_GRP_CPU_REGS", "KVM_DEV_ARM_VGIC_GRP_CTRL"
IIDR_REV3 = 0x4B00343B


def init_errno(features: list[int], kfact) -> int:
    """KVM_ARM_VCPU_INIT's answer to a feature set (0: accepted), from the facts."""
    bits = sum(1 << f for f in features)
    if bits >> kfact("vcpu_max_feature") + 1:
        return E.ENOENT
    if bits & kfact("vcpu_features_einval") or \
            any(bits >> f & 1 and not bits >> need & 1 for f, need in kfact("vcpu_feature_requires").items()):
        return E.EINVAL
    return 0


@pytest.mark.parametrize("features", [[7], [8], [9], [7, 8], [2, 9], [2, 3, 9], [10]],
                         ids=lambda f: "+".join(map(str, f)))
def test_vcpu_init_features(arm64_kvm, kfact, features) -> None:
    """HAS_EL2 (7): ENOENT before 6.18, EINVAL after (no nested virt here);
    HAS_EL2_E2H0 (8) alone accepted from 6.18; PMU_V3_STRICT (9) unknown before 7.3,
    then EINVAL without PMU_V3 (3)."""
    with arm64_kvm.create_vm() as vm:
        c = vm.create_vcpu(0)
        want = init_errno(features, kfact)
        if want:
            raises(want, c.vcpu_init, features)
        else:
            c.vcpu_init(features)
            assert c.features == [kvmdev.arm64.FEATURES[f] for f in features]


def test_vcpu_init_feature_names() -> None:
    assert kvmdev.arm64.feature_bits(["HAS_EL2", "HAS_EL2_E2H0", "PMU_V3_STRICT"])[0] == 0x380


def test_pmu_set_nr_counters(arm64_kvm, arm64_gic, kfact) -> None:
    """KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS (6.18+): write-only, up to the host PMU's
    counters (QEMU's max CPU: 5 fit, 31 do not), ENODEV without PMU_V3; ENXIO before 6.18."""
    with arm64_kvm.create_vm() as vm:
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2", "PMU_V3"])
        d = vm.create_vcpu(1)
        d.vcpu_init(["PSCI_0_2", "PMU_V3"])
        if not kfact("pmu_set_nr_counters"):
            raises(E.ENXIO, c.set_pmu_nr_counters, 1)
            return
        assert c.has_attr(PMU, "KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS")
        c.set_pmu_nr_counters(0)
        c.set_pmu_nr_counters(5)
        raises(E.EINVAL, c.set_pmu_nr_counters, 31)
        raises(E.ENXIO, c.get_attr, PMU, "KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS")
        with pytest.raises(ValueError):
            c.set_pmu_nr_counters(-1)
    with arm64_kvm.create_vm() as vm:
        e = vm.create_vcpu(0)
        e.vcpu_init(["PSCI_0_2"])
        raises(E.ENODEV, e.set_pmu_nr_counters, 1)


def _v3(arm64_kvm, arm64_gic):
    if arm64_gic != 3:
        pytest.skip("a GICv3 host")
    vm = arm64_kvm.create_vm()
    for i in range(2):
        vm.create_vcpu(i).vcpu_init(["PSCI_0_2"])
    g = vm.create_device("ARM_VGIC_V3")
    g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    return vm, g


def test_vgic_v3_maint_irq(arm64_kvm, arm64_gic, kfact) -> None:
    """KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ (6.18+, with or without nested virt): HAS for
    any attr; GET 0 until set; SET a PPI (16..31, else EINVAL) before init, EBUSY after
    (before the value is looked at); the attr number is not looked at."""
    vm, g = _v3(arm64_kvm, arm64_gic)
    with vm:
        if not kfact("vgic_v3_maint_irq_group"):
            assert not g.has_attr(MAINT, 0)
            raises(E.ENXIO, lambda: g.maint_irq)
            raises(E.ENXIO, g.set_attr, MAINT, 0, 25, ctype="__u32")
            return
        assert g.has_attr(MAINT, 0) and g.has_attr(MAINT, 5)
        assert g.maint_irq == 0
        for bad in (5, 32, 100):
            raises(E.EINVAL, g.set_attr, MAINT, 0, bad, ctype="__u32")
        with pytest.raises(ValueError):
            g.maint_irq = 32
        g.maint_irq = 25
        assert g.maint_irq == 25
        g.set_attr(MAINT, 7, 16, ctype="__u32")
        assert g.get_attr(MAINT, 3, ctype="__u32") == 16
        g.init()
        raises(E.EBUSY, g.set_attr, MAINT, 0, 25, ctype="__u32")
        raises(E.EBUSY, g.set_attr, MAINT, 0, 5, ctype="__u32")
        assert g.maint_irq == 16


def test_gicd_iidr_typer2_before_init(arm64_kvm, arm64_gic, kfact) -> None:
    """GICD_IIDR and GICD_TYPER2 through DIST_REGS before CTRL_INIT: EBUSY like every
    register on 6.1 and 6.12; readable and writable on 6.18 and 7.3 (TYPER2 0: no
    GICv4.1 here, any other value EINVAL; IIDR's revision 2 taken, but 6.18.15 ignores
    IIDR writes).  After init a TYPER2 change is EBUSY there, EINVAL before."""
    vm, g = _v3(arm64_kvm, arm64_gic)
    with vm:
        d = g.dist
        if not kfact("gicd_iidr_typer2_pre_init"):
            raises(E.EBUSY, d.__getitem__, "GICD_TYPER2")
            raises(E.EBUSY, d.__setitem__, "GICD_IIDR", IIDR_REV3)
        else:
            assert d["GICD_TYPER2"] == 0
            d["GICD_TYPER2"] = 0
            raises(E.EINVAL, d.__setitem__, "GICD_TYPER2", 1 << 8)   # nASSGIcap
            raises(E.EINVAL, d.__setitem__, "GICD_TYPER2", 1)
            assert d["GICD_IIDR"] == IIDR_REV3
            d["GICD_IIDR"] = IIDR_REV3 & ~0xF000 | 0x2000
            assert d.fields("GICD_IIDR")["Revision"] == (3 if kfact("gicd_iidr_writes_ignored") else 2)
            raises(E.EBUSY, d.__getitem__, "GICD_CTLR")               # the others still need init
        g.init()
        assert d["GICD_TYPER2"] == 0
        d["GICD_TYPER2"] = 0
        raises(E.EBUSY if kfact("gicd_typer2_post_init_ebusy") else E.EINVAL, d.__setitem__, "GICD_TYPER2", 1)


def test_its_unknown_ctrl_attr(arm64_kvm, arm64_gic, kfact) -> None:
    """An ITS CTRL attribute the ITS does not know (SAVE_PENDING_TABLES is the
    VGIC's, USERSPACE_PPIS the v5's): ignored, 0, before 6.18; ENXIO from 6.18."""
    vm, g = _v3(arm64_kvm, arm64_gic)
    with vm:
        its = vm.create_device("ARM_VGIC_ITS")
        its.set_attr("KVM_DEV_ARM_VGIC_GRP_ADDR", "KVM_VGIC_ITS_ADDR_TYPE", 0x08080000, ctype="__u64")
        its.set_attr(CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT")
        for attr in (3, 5, 116):
            assert not its.has_attr(CTRL, attr)
            if kfact("its_ctrl_unknown_enxio"):
                raises(E.ENXIO, its.set_attr, CTRL, attr, 0, ctype="__u64")
            else:
                its.set_attr(CTRL, attr, 0, ctype="__u64")


def test_gicv2_gicc_dir(arm64_kvm, arm64_gic, kfact) -> None:
    """GICC_DIR (0x1000) in CPU_REGS: HAS yes on 7.3 only; a GET reads 0 and a SET
    is taken on every kernel."""
    if arm64_gic != 2:
        pytest.skip("a GICv2 host")
    with arm64_kvm.create_vm() as vm:
        vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
        g = vm.create_device("ARM_VGIC_V2")
        g.dist_base, g.cpu_base = 0x08000000, 0x08010000
        assert g.has_attr(CPU_REGS, 0x1000) == kfact("gicc_dir")
        assert not g.has_attr(CPU_REGS, 0x1004)
        assert g.get_attr(CPU_REGS, 0x1000, ctype="__u32") == 0
        g.set_attr(CPU_REGS, 0x1000, 0, ctype="__u32")
        # the typed table: GICC_DIR at 0x1000, HAS as the kernel says; a write of an
        # INTID (SPI 40, CPUID 1) is ignored from userspace (uaccess write-ignore on 7.3,
        # no region before) and the register still reads 0; GICC_CTLR is untouched
        cpu = g.cpu(0)
        assert cpu.attrs_of("GICC_DIR") == [0x1000]
        assert cpu.has("GICC_DIR") == kfact("gicc_dir")
        ctlr = cpu["GICC_CTLR"]
        cpu["GICC_DIR"] = 1 << 10 | 40
        assert cpu["GICC_DIR"] == 0 and cpu["GICC_CTLR"] == ctlr


def test_capabilities_of_the_kernel(arm64_kvm, arm64_kernel) -> None:
    """The capabilities that differ between the four kernels, by name."""
    assert {c: arm64_kvm.check_extension(c) for c in arm64_kernel_caps(arm64_kernel)} \
        == arm64_kernel_caps(arm64_kernel)


def test_probe_discover_lists_the_surface_by_number(monkeypatch) -> None:
    """kvmdev probe --discover: groups, attributes and capabilities by number, with
    kvmdev's names where it has them and "new" where it has none."""
    from kvmdev.discover import discover
    with kvmdev.open("mock", arch="arm64", kernel="7.3") as k:
        d = discover(k, groups=10, attrs=8)
        vcpu = {(f["group"], f["attr"]): f for f in d["vcpu"]}
        assert vcpu[(0, 4)]["attr_name"] == "KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS" and not vcpu[(0, 4)]["new"]
        v3 = {(f["group"], f["attr"]): f for f in d["devices"]["ARM_VGIC_V3"]}
        assert v3[(9, 0)]["group_name"] == "KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ" and not v3[(9, 0)]["new"]
        caps = {c["cap"]: c for c in d["caps"]}
        assert caps[251]["name"] == "KVM_CAP_ARM_PMU_V3_STRICT" and not caps[251]["new"]
        # a kernel's capability kvmdev has no name for is listed by number
        names = k._arch.constants("KVM_CAP_")
        monkeypatch.setattr(k._arch, "constants", lambda prefix: {n: v for n, v in names.items()
                                                                  if n != "KVM_CAP_ARM_PMU_V3_STRICT"})
        caps = {c["cap"]: c for c in discover(k, groups=0, attrs=0)["caps"]}
        assert caps[251] == {"cap": 251, "name": None, "value": 1, "new": True}
    with kvmdev.open("mock", arch="arm64", kernel="6.12") as k:
        v3 = {(f["group"], f["attr"]) for f in discover(k, groups=10, attrs=2)["devices"]["ARM_VGIC_V3"]}
        assert (9, 0) not in v3
