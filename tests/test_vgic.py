"""VGIC v2/v3 through the typed classes: register groups by name, reset values
and GIC semantics, on the arm64 mock profiles and the real 6.12/6.1 kernels."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.devices.vgic import GICC, GICD_V2, GICD_V3, GICR, ICC, RedistRegion, VgicV2, VgicV3

pytestmark = pytest.mark.arm64


@pytest.fixture
def gic(arm64_kvm: kvmdev.Kvm, arm64_gic: int):
    """A VM with two initialized vCPUs and the host's VGIC, addresses set, initialized."""
    vm = arm64_kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(2)]
    for c in cpus:
        c.vcpu_init(["PSCI_0_2"])
    if arm64_gic == 3:
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    else:
        g = vm.create_device("ARM_VGIC_V2")
        assert isinstance(g, VgicV2)
        g.dist_base, g.cpu_base = 0x08000000, 0x08010000
    g.init()
    yield g, cpus
    vm.close()


def test_spi_registers_follow_nr_irqs(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """Per-IRQ distributor registers exist (HAS) only for allocated IRQs: the
    private ones before NR_IRQS is chosen, then up to NR_IRQS; past it a get reads
    0 and a set is ignored (vgic_get_mmio_region's check of the IRQ number)."""
    with arm64_kvm.create_vm() as vm:
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2"])
        g = vm.create_device("ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2")
        d = g.dist
        assert d.has("GICD_IPRIORITYR7") and not d.has("GICD_IPRIORITYR8") and not d.has("GICD_ISENABLER1")
        g.nr_irqs = 64
        assert d.has("GICD_ISENABLER1") and not d.has("GICD_ISENABLER2")
        assert d.has("GICD_IPRIORITYR15") and not d.has("GICD_IPRIORITYR16")
        assert d.has("GICD_ICFGR3") and not d.has("GICD_ICFGR4")
        if arm64_gic == 3:
            assert d.has("GICD_IROUTER63") and not d.has("GICD_IROUTER64")
        if arm64_gic == 3:
            g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        else:
            g.dist_base, g.cpu_base = 0x08000000, 0x08010000
        g.init()
        d["GICD_ISENABLER2"] = 0xFFFFFFFF                 # IRQs 64..95: none here, ignored
        assert d["GICD_ISENABLER2"] == 0 and d["GICD_IPRIORITYR20"] == 0


def test_v3_maintenance_and_id_registers(gic, arm64_gic: int) -> None:
    """The LPI maintenance registers of the RD frame (GICR_INVLPIR, INVALLR,
    SYNCR: read as zero) and the ID register blocks of GICD and GICR (PIDR2 says
    GICv3, the others read zero) exist; found by the differential fuzzer."""
    g, cpus = gic
    if arm64_gic != 3:
        return
    r = g.redist(cpus[0])
    assert (r["GICR_INVLPIR"], r["GICR_INVALLR"], r["GICR_SYNCR"]) == (0, 0, 0)
    assert r.has("GICR_SYNCR") and not g.has_attr("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", r.prefix | 0xC4)
    for dev_regs, group in ((g.dist, "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"), (r, "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS")):
        for off in (0xFFD0, 0xFFE0, 0xFFFC):
            assert g.has_attr(group, dev_regs.prefix | off) and g.get_attr(group, dev_regs.prefix | off) == 0
        assert g.get_attr(group, dev_regs.prefix | 0xFFE8) == 0x3B


def test_typed_addresses_and_nr_irqs(gic) -> None:
    g, _ = gic
    assert g.dist_base == 0x08000000
    assert g.nr_irqs == 256
    with pytest.raises(kvmdev.KvmError) as ei:
        g.nr_irqs = 128  # frozen by init
    assert ei.value.errno == E.EBUSY and "NR_IRQS" in str(ei.value)
    if isinstance(g, VgicV3):
        assert g.redist_base == 0x080A0000
        # the legacy REDIST address reads back as region 0 of REDIST_REGION
    else:
        assert g.cpu_base == 0x08010000


def test_distributor_identity(gic, arm64_gic: int) -> None:
    g, _ = gic
    d = g.dist
    iidr = d.fields("GICD_IIDR")
    assert iidr == {"Implementer": 0x43B, "Revision": 3, "Variant": 0, "ProductID": 0x4B}  # 'K', ARM
    typer = d.fields("GICD_TYPER")
    assert typer["ITLinesNumber"] == 256 // 32 - 1
    if arm64_gic == 3:
        assert d["GICD_CTLR"] == 0x50  # ARE and DS: affinity routing, single security state
        assert typer["IDbits"] == 9 and typer["LPIS"] == 0  # 10 ID bits without an ITS
        assert d["GICD_PIDR2"] >> 4 & 0xF == 3
        assert d.has("GICD_TYPER2")
        assert d["GICD_STATUSR"] == 0xFFFFFFFF  # read-as-ones for userspace (doc: STATUSR quirk)
    else:
        assert d["GICD_CTLR"] == 0
        assert typer["CPUNumber"] == 1  # two vCPUs


def test_unimplemented_offset_has_enxio_get_zero(gic, arm64_gic: int) -> None:
    g, _ = gic
    d = g.dist
    off = 0xE00 if arm64_gic == 3 else 0xD00  # GICD_NSACR (v3) / GICD_IGRPMODR (v2): not implemented
    assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", off)
    assert g.get_attr("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", off) == 0
    assert d.has("GICD_CTLR") and d.has("GICD_ISENABLER1")


def test_enable_set_clear_and_sgis(gic, arm64_gic: int) -> None:
    g, cpus = gic
    d = g.dist
    d["GICD_ISENABLER1"] = 0x0000_0101  # SPIs 32 and 40
    assert d["GICD_ISENABLER1"] == 0x101 and d["GICD_ICENABLER1"] == 0x101
    d["GICD_ISENABLER1"] = 0x0001_0000
    assert d["GICD_ISENABLER1"] == 0x10101      # set-enable only sets
    d["GICD_ICENABLER1"] = 0x0000_0001
    assert d["GICD_ISENABLER1"] == 0x10100      # clear-enable only clears
    if arm64_gic == 3:
        assert d["GICD_ISENABLER0"] == 0         # private interrupts live in the redistributors
        private = g.redist(cpus[0])
        prefix = "GICR"
    else:
        private = g.dist_as(cpus[0])
        prefix = "GICD"
    assert private[f"{prefix}_ISENABLER0"] == 0xFFFF      # SGIs start enabled,
    private[f"{prefix}_ICENABLER0"] = 0x1F5D8650          # and userspace may disable them (found
    assert private[f"{prefix}_ISENABLER0"] == 0x79AF      # by the differential fuzzer)


def test_priorities_keep_five_bits(gic) -> None:
    g, _ = gic
    d = g.dist
    d["GICD_IPRIORITYR8"] = 0xFFA05008  # INTIDs 32..35
    assert d["GICD_IPRIORITYR8"] == 0xF8A05008 & 0xF8F8F8F8


def test_config_and_pending_latch(gic, arm64_gic: int) -> None:
    g, _ = gic
    d = g.dist
    assert d["GICD_ICFGR2"] == 0xAAAAAAAA      # SPIs 32..47 read as edge-triggered
    d["GICD_ICFGR2"] = 0
    assert d["GICD_ICFGR2"] == 0
    d["GICD_ISPENDR1"] = 0x4
    assert d["GICD_ISPENDR1"] == 0x4
    if arm64_gic == 3:
        # v3 doc: ICPENDR is RAZ/WI for userspace; ISPENDR writes set the latch to the value
        assert d["GICD_ICPENDR1"] == 0
        d["GICD_ICPENDR1"] = 0x4
        assert d["GICD_ISPENDR1"] == 0x4
        d["GICD_ISPENDR1"] = 0x1
        assert d["GICD_ISPENDR1"] == 0x1
    else:
        # v2: the architectural set/clear pair
        assert d["GICD_ICPENDR1"] == 0x4
        d["GICD_ICPENDR1"] = 0x4
        assert d["GICD_ISPENDR1"] == 0


def test_groups_need_iidr_write_back(gic, arm64_gic: int, kfact) -> None:
    """Docs (v2 and v3): unless GICD_IIDR was written by userspace, GICD_IGROUPR
    writes are ignored.  The kernel applies this to GICv2 only: on v3 (6.12
    and 6.1) the write takes effect at once."""
    g, _ = gic
    d = g.dist
    before = d["GICD_IGROUPR1"]
    assert before == (0xFFFFFFFF if arm64_gic == 3 else 0)
    d["GICD_IGROUPR1"] = before ^ 0xFFFFFFFF
    if arm64_gic == 3:
        assert d["GICD_IGROUPR1"] == before ^ 0xFFFFFFFF  # doc vs kernel: not ignored
        d["GICD_IGROUPR1"] = before
    else:
        assert d["GICD_IGROUPR1"] == before   # ignored
    iidr = d["GICD_IIDR"]
    raises(E.EINVAL, d.__setitem__, "GICD_IIDR", iidr ^ 0x1)            # other implementer
    if kfact("gicd_iidr_writes_ignored"):                               # 6.18.15: accepted, ignored
        d["GICD_IIDR"] = (iidr & ~0xF000) | 0x1000                      # revision 1
        assert d["GICD_IIDR"] == iidr
    else:
        raises(E.EINVAL, d.__setitem__, "GICD_IIDR", (iidr & ~0xF000) | 0x1000)  # revision 1
    d["GICD_IIDR"] = iidr                        # write back what was read
    d["GICD_IGROUPR1"] = before ^ 0xFFFFFFFF
    assert d["GICD_IGROUPR1"] == before ^ 0xFFFFFFFF


def test_v2_banked_targets_and_cpu_interface(gic, arm64_gic: int) -> None:
    if arm64_gic != 2:
        raises(E.ENXIO, gic[0].get_attr, "KVM_DEV_ARM_VGIC_GRP_CPU_REGS", 0, ctype="__u32")
        return
    g, cpus = gic
    assert g.dist_as(0)["GICD_ITARGETSR0"] == 0x01010101  # private: the CPU itself
    assert g.dist_as(1)["GICD_ITARGETSR0"] == 0x02020202
    g.dist["GICD_ITARGETSR8"] = 0x03020101
    assert g.dist_as(1)["GICD_ITARGETSR8"] == 0x03020101
    raises(E.EINVAL, lambda: g.dist_as(7)["GICD_CTLR"])  # no vCPU 7
    c = g.cpu(cpus[1])
    assert c.fields("GICC_IIDR")["ProductID"] == 0x04 and c["GICC_IIDR"] == 0x04B2043B
    c["GICC_PMR"] = 0x1F        # KVM's 5-bit VMPriMask format: mask 0xF8
    assert c["GICC_PMR"] == 0x1F and g.cpu(cpus[0])["GICC_PMR"] == 0
    c["GICC_CTLR"] = 0x1
    assert c.fields("GICC_CTLR")["EnableGrp0"] == 1
    assert c.has("GICC_APR0") and not g.has_attr("KVM_DEV_ARM_VGIC_GRP_CPU_REGS", (1 << 32) | 0x0C)


def test_v3_redistributors(gic, arm64_gic: int) -> None:
    if arm64_gic != 3:
        raises(E.ENXIO, gic[0].get_attr, "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", 0, ctype="__u32")
        return
    g, cpus = gic
    r0, r1 = g.redist(cpus[0]), g.redist(cpus[1])
    assert r0["GICR_IIDR"] == 0x4B00043B
    t0, t1 = r0.fields("GICR_TYPER"), r1.fields("GICR_TYPER")
    assert (t0["ProcessorNumber"], t0["Last"], t0["Affinity"]) == (0, 0, 0)
    assert (t1["ProcessorNumber"], t1["Last"], t1["Affinity"]) == (1, 1, 1)  # the last redistributor
    assert r0["GICR_TYPER"] == 0 and r1["GICR_TYPER"] == 1 << 32 | 0x110  # 64 bits from two halves
    assert r0["GICR_IGROUPR0"] == 0xFFFFFFFF and r0["GICR_ICFGR0"] == 0xAAAAAAAA
    r1["GICR_IPRIORITYR4"] = 0x80808080   # PPIs 16..19 of vCPU 1 only
    assert r1["GICR_IPRIORITYR4"] == 0x80808080 and r0["GICR_IPRIORITYR4"] == 0
    raises(E.EINVAL, lambda: g.redist(7)["GICR_CTLR"])  # no vCPU with affinity 7


def test_v3_cpu_sysregs(gic, arm64_gic: int, kfact) -> None:
    if arm64_gic != 3:
        raises(E.ENXIO, gic[0].get_attr, "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", 0, ctype="__u64")
        return
    g, cpus = gic
    s = g.cpu_sysreg(cpus[0])
    ctlr = s.fields("ICC_CTLR_EL1")
    assert (ctlr["PRIbits"], ctlr["IDbits"], ctlr["A3V"]) == (4, 1, 1)  # 5 priority bits
    assert s["ICC_SRE_EL1"] == 0x7
    s["ICC_PMR_EL1"] = 0xF0
    assert s["ICC_PMR_EL1"] == 0xF0 and g.cpu_sysreg(cpus[1])["ICC_PMR_EL1"] == 0
    assert s.has("ICC_AP0R0_EL1") and s["ICC_AP0R0_EL1"] == 0
    # with 5 priority bits only AP*R0 exist: HAS still says yes for AP*R1-3, GET says EINVAL
    assert s.has("ICC_AP0R1_EL1") and s.has("ICC_AP1R1_EL1")
    raises(E.EINVAL, s.__getitem__, "ICC_AP1R1_EL1")
    raises(E.ENOENT, g.get_attr, "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", 3 << 14 | 1 << 7 | 1 << 3 | 1)
    assert g.level_info(cpus[0], 32) == 0
    # MAINT_IRQ: unknown to 6.1 and 6.12; 6.18 and 7.3 offer it without nested virt too
    assert g.has_attr("KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", 0) == kfact("vgic_v3_maint_irq_group")


def test_v3_registers_need_init(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    vm = arm64_kvm.create_vm()
    vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    if arm64_gic == 3:
        g = vm.create_device("ARM_VGIC_V3")
        e = raises(E.EBUSY, lambda: g.dist["GICD_CTLR"])
        assert "GICD" not in str(e) and "KVM_DEV_ARM_VGIC_GRP_DIST_REGS" in str(e)
    else:
        g = vm.create_device("ARM_VGIC_V2")
        assert g.dist["GICD_TYPER"] == 0x7  # GICv2 initializes itself on register access
        assert g.nr_irqs == 256


def test_tables_and_region_encoding() -> None:
    assert GICD_V3.lookup("GICD_IROUTER32") == (GICD_V3.regs["GICD_IROUTER"], 0x6100)
    assert GICD_V2.lookup("GICD_ITARGETSR8")[1] == 0x820
    assert GICR.lookup("GICR_IPRIORITYR4")[1] == 0x10410
    assert GICC.lookup("GICC_APR3")[1] == 0xDC
    assert ICC["ICC_PMR_EL1"].instr == 0xC230
    with pytest.raises(KeyError):
        GICD_V3.lookup("GICD_ITARGETSR0")
    r = RedistRegion(index=1, base=0x080A0000, count=4)
    assert RedistRegion.decode(r.encode()) == r and r.placement(3) == 0x080A0000 + 3 * 0x20000
    assert r.encode() == 4 << 52 | 0x080A0000 | 1


def test_v2_sgi_sources(gic, arm64_gic: int) -> None:
    """GICv2 SGIs carry their source vCPUs (found by the differential fuzzer).
    GICD_SPENDSGIR/CPENDSGIR set and clear a byte of sources per SGI; the SGI is
    pending while any source is left.  From userspace, GICD_ISPENDR0 makes the
    vCPU itself the source, GICD_ICPENDR0 clears every source (vgic-mmio.c:
    "GICv2 SGIs are terribly broken"), and a GICD_SGIR write sends the SGI with
    the accessing vCPU as the source.  GICv3 has none of these registers."""
    g, cpus = gic
    if arm64_gic != 2:
        assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", 0xF20)
        return
    d0, d1 = g.dist_as(0), g.dist_as(1)
    d0["GICD_SPENDSGIR2"] = 0x300                        # SGI 9 from vCPUs 0 and 1
    assert (d0["GICD_SPENDSGIR2"], d0["GICD_ISPENDR0"], d1["GICD_ISPENDR0"]) == (0x300, 1 << 9, 0)
    d0["GICD_CPENDSGIR2"] = 0x100                        # vCPU 1 is still a source
    assert (d0["GICD_SPENDSGIR2"], d0["GICD_ISPENDR0"]) == (0x200, 1 << 9)
    d0["GICD_CPENDSGIR2"] = 0x200
    assert (d0["GICD_SPENDSGIR2"], d0["GICD_ISPENDR0"]) == (0, 0)
    d1["GICD_ISPENDR0"] = 1 << 3                         # source: vCPU 1 itself
    assert d1["GICD_SPENDSGIR0"] == 0x02 << 24
    d1["GICD_SPENDSGIR0"] = 0x01 << 24                   # and vCPU 0
    assert d1["GICD_SPENDSGIR0"] == 0x03 << 24
    d1["GICD_ICPENDR0"] = 1 << 3                         # clears both sources
    assert (d1["GICD_SPENDSGIR0"], d1["GICD_ISPENDR0"]) == (0, 0)
    d0["GICD_SGIR"] = 0x2 << 16 | 5                      # SGI 5 to the list {vCPU 1}, from vCPU 0
    assert (d1["GICD_SPENDSGIR1"], d0["GICD_SPENDSGIR1"]) == (0x01 << 8, 0)
    d1["GICD_SGIR"] = 1 << 24 | 6                        # all but self
    assert (d0["GICD_SPENDSGIR1"], d1["GICD_SPENDSGIR1"] >> 16 & 0xFF) == (0x02 << 16, 0)
    d1["GICD_SGIR"] = 2 << 24 | 0xFF << 16 | 7           # self only, whatever the list
    assert (d1["GICD_SPENDSGIR1"] >> 24, d0["GICD_SPENDSGIR1"] >> 24) == (0x02, 0)
    d0["GICD_SGIR"] = 3 << 24 | 0xFF << 16 | 4           # the reserved filter: nothing
    assert d0["GICD_SPENDSGIR1"] & 0xFF == 0 and d1["GICD_SPENDSGIR1"] & 0xFF == 0
    assert d0["GICD_ISPENDR0"] == 1 << 6 and d1["GICD_ISPENDR0"] == (1 << 5 | 1 << 7)
    assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", 0xF04)   # past GICD_SGIR: no register
