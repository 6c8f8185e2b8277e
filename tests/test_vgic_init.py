"""VGIC set-up rules, ported case by case from the kernel selftest
tools/testing/selftests/kvm/arm64/vgic_init.c (our own code, same checks),
plus the line-level, routing and busy rules of vgic-kvm-device.c and
vgic-mmio-v3.c.  Each runs unchanged on the arm64 mock profiles and on the real
6.12 and 6.1 kernels.  On a host with the other GIC the test asserts that the
device cannot be created there instead of skipping."""
from __future__ import annotations

import errno as E
import threading
import time

import pytest

import kvmdev
from a64 import spin_guest
from kvm_asserts import raises
from kvmdev.devices.vgic import RedistRegion, VgicV2, VgicV3

pytestmark = pytest.mark.arm64

NR_VCPUS = 4
ADDR = "KVM_DEV_ARM_VGIC_GRP_ADDR"
REGION = "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION"
MAX_PHYS = 1 << 40          # the default IPA size of a VM (KVM_PHYS_SHIFT)
RAM = 0x60000000            # guest code here (distinct from the other tests' addresses)


def add_vcpus(vm: kvmdev.Vm, ids) -> list[kvmdev.Vcpu]:
    out = []
    for i in ids:
        c = vm.create_vcpu(i)
        c.vcpu_init(["PSCI_0_2"])
        out.append(c)
    return out


def other_gic_absent(kvm: kvmdev.Kvm, host_gic: int, want: int) -> bool:
    """True when the host's GIC cannot offer VGIC v``want`` (asserted, not assumed)."""
    if host_gic == want:
        return False
    with kvm.create_vm() as vm:
        raises(E.ENODEV, vm.create_device, f"ARM_VGIC_V{want}")
    return True


def region(count: int, base: int, flags: int, index: int) -> int:
    """REDIST_REGION_ATTR_ADDR of the selftest, built independently of RedistRegion."""
    return count << 52 | base | flags << 12 | index


def set_region(g: kvmdev.Device, value: int) -> None:
    g.set_attr(ADDR, REGION, value)


# -- subtest_dist_rdist, test_vgic_then_vcpus, test_vcpus_then_vgic -----------------

def _dist_rdist(g: kvmdev.Device, v3: bool) -> None:
    """Alignment, IPA range, double set, mixing; leaves DIST overlapping the
    redistributors (or the CPU interface) of 4 vCPUs, which only KVM_RUN sees."""
    if v3:
        dist, rdist = "KVM_VGIC_V3_ADDR_TYPE_DIST", "KVM_VGIC_V3_ADDR_TYPE_REDIST"
        dist_align, rdist_align, rdist_size = 0x10000, 0x10000, NR_VCPUS * 0x20000
    else:
        dist, rdist = "KVM_VGIC_V2_ADDR_TYPE_DIST", "KVM_VGIC_V2_ADDR_TYPE_CPU"
        dist_align, rdist_align, rdist_size = 0x1000, 0x1000, 0x2000
    assert g.has_attr(ADDR, dist) and g.has_attr(ADDR, rdist)
    assert not g.has_attr(ADDR, (1 << 64) - 1)
    raises(E.EINVAL, g.set_attr, ADDR, dist, dist_align // 0x10)
    raises(E.EINVAL, g.set_attr, ADDR, rdist, rdist_align // 0x10)
    raises(E.E2BIG, g.set_attr, ADDR, dist, MAX_PHYS)
    raises(E.E2BIG, g.set_attr, ADDR, rdist, MAX_PHYS)
    raises(E.E2BIG, g.set_attr, ADDR, rdist, MAX_PHYS - dist_align)  # half of it beyond the IPA space
    g.set_attr(ADDR, rdist, 0)
    raises(E.EEXIST, g.set_attr, ADDR, rdist, 0xE0000)
    if v3:
        raises(E.EINVAL, set_region, g, region(NR_VCPUS, 0x100000, 0, 0))  # mixing REDIST and regions
    g.set_attr(ADDR, dist, rdist_size - rdist_align)


@pytest.mark.parametrize("order", ["vgic_then_vcpus", "vcpus_then_vgic"])
def test_dist_rdist_overlap_found_at_first_run(arm64_kvm: kvmdev.Kvm, arm64_gic: int, order: str) -> None:
    v3 = arm64_gic == 3
    with arm64_kvm.create_vm() as vm:
        first = 1 if order == "vgic_then_vcpus" else NR_VCPUS
        cpus = add_vcpus(vm, range(first))
        g = vm.create_device(f"ARM_VGIC_V{arm64_gic}")
        _dist_rdist(g, v3)
        cpus += add_vcpus(vm, range(first, NR_VCPUS))
        e = raises(E.EINVAL, cpus[3].run, immediate_exit=True)
        assert "KVM_RUN on vCPU 3" in str(e)


def test_v2_cpu_interface_without_vcpus(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """test_v2_uaccess_cpuif_no_vcpus: a CPU interface of no vCPU is EINVAL for all three ioctls."""
    if other_gic_absent(arm64_kvm, arm64_gic, 2):
        return
    with arm64_kvm.create_vm() as vm:
        g = vm.create_device("ARM_VGIC_V2")
        _dist_rdist(g, False)
        grp = "KVM_DEV_ARM_VGIC_GRP_CPU_REGS"
        raises(E.EINVAL, g.has_attr, grp, 0)
        raises(E.EINVAL, g.get_attr, grp, 0)
        e = raises(E.EINVAL, g.set_attr, grp, 0, 0)
        assert "KVM_DEV_ARM_VGIC_GRP_CPU_REGS" in str(e) and "EINVAL" in str(e)


# -- subtest_v3_redist_regions, test_v3_new_redist_regions ---------------------------

def _v3_redist_regions(g: VgicV3) -> None:
    """Two regions (0: 2 redistributors at 0x200000, 1: 1 at 0x240000) after every
    rule of vgic_v3_alloc_redist_region; DIST at 0x260000."""
    assert g.has_attr(ADDR, "KVM_VGIC_V3_ADDR_TYPE_REDIST")
    raises(E.EINVAL, set_region, g, region(NR_VCPUS, 0x100000, 2, 0))   # flags != 0
    raises(E.EINVAL, set_region, g, region(0, 0x100000, 0, 0))          # count 0
    raises(E.EINVAL, set_region, g, region(2, 0x200000, 0, 1))          # first index != 0
    raises(E.EINVAL, set_region, g, region(2, 0x201000, 0, 1))          # misaligned
    set_region(g, region(2, 0x200000, 0, 0))
    raises(E.EINVAL, set_region, g, region(2, 0x200000, 0, 1))          # overlaps region 0
    raises(E.EINVAL, set_region, g, region(1, 0x210000, 0, 2))          # overlap, and index not +1
    raises(E.EINVAL, set_region, g, region(1, 0x240000, 0, 2))          # index not +1
    set_region(g, region(1, 0x240000, 0, 1))
    raises(E.E2BIG, set_region, g, region(1, MAX_PHYS, 0, 2))
    raises(E.E2BIG, set_region, g, region(2, MAX_PHYS - 0x30000, 0, 2))  # its top is beyond
    raises(E.EINVAL, g.set_attr, ADDR, "KVM_VGIC_V3_ADDR_TYPE_REDIST", 0x260000)  # mixing
    # read back by index (the index goes in, the whole encoding comes out)
    assert g.get_attr(ADDR, REGION, value_in=region(0, 0, 0, 0)) == region(2, 0x200000, 0, 0)
    assert g.get_attr(ADDR, REGION, value_in=region(0, 0, 0, 1)) == region(1, 0x240000, 0, 1)
    raises(E.ENOENT, g.get_attr, ADDR, REGION, value_in=region(0, 0, 0, 2))
    assert g.redist_regions() == [RedistRegion(0, 0x200000, 2), RedistRegion(1, 0x240000, 1)]
    assert g.redist_base == 0x200000     # the legacy attribute reads region 0
    g.dist_base = 0x260000
    raises(E.EINVAL, set_region, g, region(1, 0x260000, 0, 2))          # on the distributor


@pytest.mark.parametrize("step", [1, 2, 3])
def test_v3_new_redist_regions(arm64_kvm: kvmdev.Kvm, arm64_gic: int, step: int) -> None:
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        cpus = add_vcpus(vm, range(NR_VCPUS))
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        _v3_redist_regions(g)
        if step == 1:   # three redistributors for four vCPUs
            g.init()
            raises(E.ENXIO, cpus[3].run, immediate_exit=True)
            return
        if step == 3:   # the region value is read from user memory first
            raises(E.EFAULT, g.attr_ioctl, "KVM_SET_DEVICE_ATTR", ADDR, REGION, 0)
        assert g.add_redist_region(0x280000, 2) == RedistRegion(2, 0x280000, 2)
        if step == 2:   # complete, but never initialized
            raises(E.EBUSY, cpus[3].run, immediate_exit=True)
            return
        g.init()
        assert cpus[3].run(immediate_exit=True) == "KVM_EXIT_INTR"


# -- test_v3_typer_accesses, test_v3_last_bit_* ------------------------------------

def typer(g: VgicV3, vcpu_id: int) -> int:
    """The low word of GICR_TYPER, as the selftest reads it (mpidr = vcpu id here)."""
    return int(g.get_attr("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", vcpu_id << 32 | 0x8))


def test_v3_typer_accesses(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        add_vcpus(vm, [0])
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        add_vcpus(vm, [3])
        raises(E.EINVAL, typer, g, 1)     # no vCPU with that MPIDR: found before EBUSY
        add_vcpus(vm, [1])
        raises(E.EBUSY, typer, g, 1)      # not initialized
        add_vcpus(vm, [2])
        g.init()
        assert [typer(g, i) for i in range(NR_VCPUS)] == [0x000, 0x100, 0x200, 0x300]  # none placed: no Last
        set_region(g, region(2, 0x200000, 0, 0))
        assert (typer(g, 0), typer(g, 3)) == (0x000, 0x310)  # vCPUs 0 and 3, in creation order
        raises(E.EINVAL, set_region, g, region(10, 0x100000, 0, 1))  # collides with region 0
        assert (typer(g, 1), typer(g, 2)) == (0x100, 0x200)  # still unplaced
        set_region(g, region(10, 0x20000, 0, 1))
        assert (typer(g, 1), typer(g, 2)) == (0x100, 0x210)
        # the typed view: ProcessorNumber is the vcpu id, Last marks the end of the frames
        f = g.redist(2).fields("GICR_TYPER")
        assert (f["ProcessorNumber"], f["Last"], f["Affinity"]) == (2, 1, 2)


VCPU_IDS = [0, 3, 5, 4, 1, 2]


def _last_bits(kvm: kvmdev.Kvm, place) -> dict[int, int]:
    """GICR_TYPER of six vCPUs created as VCPU_IDS, after ``place(gic)`` set the frames."""
    with kvm.create_vm() as vm:
        add_vcpus(vm, VCPU_IDS)
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        g.init()
        place(g)
        return {i: typer(g, i) for i in VCPU_IDS}


def test_v3_last_bit_redist_regions(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """Regions 1 and 2 are contiguous, so the last redistributor of region 2 is not Last."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return

    def place(g: VgicV3) -> None:
        g.add_redist_region(0x100000, 2)   # vCPUs 0, 3
        g.add_redist_region(0x240000, 2)   # vCPUs 5, 4
        g.add_redist_region(0x200000, 2)   # vCPUs 1, 2 (ends where region 1 starts)
    got = _last_bits(arm64_kvm, place)
    assert got == {0: 0x000, 1: 0x100, 2: 0x200, 3: 0x310, 5: 0x500, 4: 0x410}


def test_v3_last_bit_single_rdist(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    got = _last_bits(arm64_kvm, lambda g: setattr(g, "redist_base", 0x10000))
    assert got == {0: 0x000, 3: 0x300, 5: 0x500, 4: 0x400, 1: 0x100, 2: 0x210}  # last created is Last


def test_v3_redist_ipa_range_checked_at_first_run(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """The legacy region grows with the vCPUs: room for 3 was enough when set, not for 4."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        cpus = add_vcpus(vm, [0])
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        g.redist_base = MAX_PHYS - 3 * 0x20000
        g.dist_base = 0
        cpus += add_vcpus(vm, range(1, NR_VCPUS))
        g.init()
        raises(E.EINVAL, cpus[2].run, immediate_exit=True)


def test_v3_its_region(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        add_vcpus(vm, range(NR_VCPUS))
        vm.create_device("ARM_VGIC_V3")
        its = vm.create_device("ARM_VGIC_ITS")
        t = "KVM_VGIC_ITS_ADDR_TYPE"
        raises(E.EINVAL, its.set_attr, ADDR, t, 0x401000, ctype="__u64")
        raises(E.E2BIG, its.set_attr, ADDR, t, MAX_PHYS, ctype="__u64")
        raises(E.E2BIG, its.set_attr, ADDR, t, MAX_PHYS - 0x10000, ctype="__u64")  # half of its 128K frame beyond
        its.set_attr(ADDR, t, 0x400000, ctype="__u64")
        raises(E.EEXIST, its.set_attr, ADDR, t, 0x300000, ctype="__u64")


def test_v3_typer2_writes_must_match(arm64_kvm: kvmdev.Kvm, arm64_gic: int, kfact) -> None:
    """test_v3_nassgicap, as far as these kernels go: without GICv4.1 GICD_TYPER2
    reads 0 and a write of anything else is EINVAL; after init, 6.18 and 7.3 answer
    EBUSY (a change after init is refused before the value is looked at)."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        add_vcpus(vm, range(NR_VCPUS))
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        assert g.dist["GICD_TYPER2"] == 0
        e = raises(E.EBUSY if kfact("gicd_typer2_post_init_ebusy") else E.EINVAL,
                   g.dist.__setitem__, "GICD_TYPER2", 1 << 8)  # nASSGIcap
        if e.errno == E.EBUSY:
            assert "TYPER2 change after init" in str(e)
        g.dist["GICD_TYPER2"] = 0


def test_duplicate_vcpu_id_uses_up_a_redistributor(arm64_kvm: kvmdev.Kvm, arm64_gic: int, kfact) -> None:
    """kvm_arch_vcpu_create places a redistributor before KVM sees the id is taken:
    the refused duplicate keeps its slot, so a later vCPU finds the region full
    (6.1, 6.12, 6.18).  7.3 refuses the id first: vCPU 1 gets the last slot."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        g.add_redist_region(0x200000, 2)
        g.dist_base = 0x100000
        c0, = add_vcpus(vm, [0])
        raises(E.EEXIST, vm.create_vcpu, 0)
        c1, = add_vcpus(vm, [1])
        g.init()
        if kfact("dup_vcpu_id_uses_redist"):
            assert typer(g, 0) == 0x000 and typer(g, 1) == 0x100  # neither is Last: slot 1 went to the duplicate
            raises(E.ENXIO, c1.run, immediate_exit=True)           # vCPU 1 has no redistributor
        else:
            assert typer(g, 0) == 0x000 and typer(g, 1) == 0x110  # vCPU 1 in slot 1, the Last


# -- interrupt lines, routing, the busy rule ------------------------------------------

@pytest.fixture
def ready(arm64_kvm: kvmdev.Kvm, arm64_gic: int):
    """Two initialized vCPUs and the host's VGIC, addressed and initialized."""
    vm = arm64_kvm.create_vm()
    cpus = add_vcpus(vm, range(2))
    g = vm.create_device(f"ARM_VGIC_V{arm64_gic}")
    if isinstance(g, VgicV3):
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    else:
        assert isinstance(g, VgicV2)
        g.dist_base, g.cpu_base = 0x08000000, 0x08010000
    g.init()
    yield vm, cpus, g
    vm.close()


def test_irq_line_latch_and_level(ready) -> None:
    """KVM_IRQ_LINE: an edge SPI latches pending on a rising line; a level SPI
    follows the line.  Userspace sees the latch in ISPENDR on v3 (doc: pending
    latch vs line level) and latch-or-level on v2; LEVEL_INFO (v3) shows the
    line of level-sensitive interrupts only, and a write sets every line."""
    vm, cpus, g = ready
    d = g.dist
    d["GICD_ICFGR2"] = 0xAAAAAAAA & ~(0x2 << 2)   # INTID 33 level, the rest of 32..47 edge
    vm.irq_line(kvmdev.arm64.irq("SPI", 32), 1)
    vm.irq_line(kvmdev.arm64.irq("SPI", 32), 0)
    vm.irq_line(kvmdev.arm64.irq("SPI", 33), 1)
    if isinstance(g, VgicV3):
        assert d["GICD_ISPENDR1"] == 0x1            # the edge's latch only
        assert g.level_info(cpus[0], 32) == 0x2     # the level line
        g.set_level_info(cpus[0], 32, 0x5)          # lines 32 and 34 high, 33 low
        assert g.level_info(cpus[0], 32) == 0x0     # both are edge-triggered: not reported
        d["GICD_ICFGR2"] = 0                        # all level now
        assert g.level_info(cpus[0], 32) == 0x5
        raises(E.EINVAL, g.get_attr, "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", 33)       # not a multiple of 32
        raises(E.EINVAL, g.get_attr, "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", 1 << 10)  # info type 1
        assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", 1 << 10)
        assert g.level_info(cpus[0], 0) == 0 and g.level_info(cpus[0], 256) == 0  # SGIs; past NR_IRQS
    else:
        assert d["GICD_ISPENDR1"] == 0x3            # latch of 32, level of 33
        vm.irq_line(kvmdev.arm64.irq("SPI", 33), 0)
        assert d["GICD_ISPENDR1"] == 0x1
        assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", 32)


def test_distributor_enable_and_routing(ready) -> None:
    vm, cpus, g = ready
    d = g.dist
    if isinstance(g, VgicV3):
        d["GICD_CTLR"] = 0x3                 # EnableGrp0 is not kept (single security state)
        assert d["GICD_CTLR"] == 0x52
        d["GICD_CTLR"] = 0
        assert d["GICD_CTLR"] == 0x50
        d["GICD_IROUTER40"] = 0xFF_8001_0203  # Aff3 and IRM are dropped
        assert d["GICD_IROUTER40"] == 0x01_0203
        assert d.fields("GICD_IROUTER40")["Aff1"] == 2
        assert d["GICD_IROUTER41"] == 0
    else:
        d["GICD_CTLR"] = 0x3
        assert d["GICD_CTLR"] == 0x1


def test_save_pending_tables(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    if arm64_gic != 3:
        with arm64_kvm.create_vm() as vm:
            g = vm.create_device("ARM_VGIC_V2")
            raises(E.ENXIO, g.set_attr, "KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES",
                   ctype="void")
        return
    with arm64_kvm.create_vm() as vm:
        add_vcpus(vm, [0])
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        raises(E.ENXIO, g.save_pending_tables)   # nothing to save before init
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        g.save_pending_tables()                  # no LPIs without an ITS: nothing written


def test_registers_busy_while_a_vcpu_runs(ready, arm64_gic: int) -> None:
    """Register access takes every vCPU's mutex with a trylock: while one vCPU is
    inside KVM_RUN the access fails with EBUSY rather than waiting, and works again
    once it is out.  The guest marks RAM when it runs, spins until the test writes
    a flag, then stores to MMIO."""
    vm, cpus, g = ready
    c = cpus[0]
    mem = spin_guest(vm, c, RAM)
    c.set_one_reg("x0", 7)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("exit", c.run()))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while mem.read(RAM + 0x1000, 8) != (1).to_bytes(8, "little"):
            assert time.monotonic() < deadline and t.is_alive(), "the guest never started"
            time.sleep(0.01)
        e = raises(E.EBUSY, lambda: g.dist["GICD_CTLR"])
        assert "EBUSY" in str(e)
        if isinstance(g, VgicV3):
            raises(E.EBUSY, g.save_pending_tables)
            raises(E.EBUSY, lambda: g.cpu_sysreg(cpus[1])["ICC_PMR_EL1"])
        assert g.nr_irqs == 256       # NR_IRQS takes no vCPU lock
    finally:
        mem.write(RAM + 0x2000, (1).to_bytes(8, "little"))
        t.join(60)
    assert out.get("exit") == "KVM_EXIT_MMIO" and c.mmio.phys_addr == 0x10000000 and c.mmio.data[:8] == (7).to_bytes(8, "little")
    assert g.dist["GICD_CTLR"] in (0, 0x50)


def test_lpi_registers(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """GICR_PROPBASER/PENDBASER keep what is written after the kernel's
    sanitising (no outer shareability, no inner non-cacheable, RES0 cleared; PTZ
    reads 0); an ITS turns on LPIs in GICD_TYPER and GICR_TYPER and resets
    PROPBASER to the kernel's initial attributes."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    for with_its in (False, True):
        with arm64_kvm.create_vm() as vm:
            cpus = add_vcpus(vm, range(2))
            g = vm.create_device("ARM_VGIC_V3")
            assert isinstance(g, VgicV3)
            if with_its:
                vm.create_device("ARM_VGIC_ITS")
            g.dist_base, g.redist_base = 0x08000000, 0x080A0000
            g.init()
            t = g.dist.fields("GICD_TYPER")
            assert (t["LPIS"], t["IDbits"]) == ((1, 15) if with_its else (0, 9))
            r0, r1 = g.redist(cpus[0]), g.redist(cpus[1])
            assert r0.fields("GICR_TYPER")["PLPIS"] == int(with_its)
            assert r0["GICR_PROPBASER"] == (0x580 if with_its else 0)
            assert r0["GICR_PENDBASER"] == 0x580
            # IDbits 15, PA 0x40000000, inner nC -> RaWb, outer shareable -> inner
            r0["GICR_PROPBASER"] = 0x40000000 | 2 << 10 | 1 << 7 | 0xF
            assert r1["GICR_PROPBASER"] == 0x40000000 | 1 << 10 | 3 << 7 | 0xF  # one for the VM
            r0["GICR_PROPBASER"] = (1 << 64) - 1
            assert r0["GICR_PROPBASER"] == 0x000FFFFF_FFFFFF9F
            r1["GICR_PENDBASER"] = (1 << 64) - 1
            assert r1["GICR_PENDBASER"] == 0x000FFFFF_FFFF0F80 and r0["GICR_PENDBASER"] == 0x580


def test_refused_ctlr_still_lowers_priority_and_id_bits(ready, arm64_gic: int) -> None:
    """set_gic_ctlr checks and stores PRIbits, then IDbits, and only then checks SEIS
    and A3V: a value refused for SEIS (EINVAL) has already lowered the other two (seen
    on 6.1, 6.12, 6.18 and 7.3; the docs say nothing)."""
    vm, cpus, g = ready
    if not isinstance(g, VgicV3):
        return
    s = g.cpu_sysreg(cpus[0])
    assert s["ICC_CTLR_EL1"] == 0x8C00                           # A3V, IDbits 1 (24), 5 priority bits
    raises(E.EINVAL, s.__setitem__, "ICC_CTLR_EL1", 1 << 14 | 2 << 8)   # SEIS, 3 priority bits, IDbits 0
    assert s["ICC_CTLR_EL1"] == 0x8200                           # lowered all the same
    assert g.cpu_sysreg(cpus[1])["ICC_CTLR_EL1"] == 0x8C00
    raises(E.EINVAL, s.__setitem__, "ICC_CTLR_EL1", 0x8C00)      # and no way back up


def test_cpu_interface_restore_rules(ready, arm64_gic: int) -> None:
    """ICC_CTLR_EL1 restores only what this host's CPU interface supports: no more
    priority or ID bits than the vCPU has now (so lowering is one-way), the host's
    SEIS and A3V; the writable bits are CBPR and EOImode.  APnR beyond the priority
    bits are EINVAL; SRE cannot be cleared; PMR keeps 8 bits; with CBPR set BPR1
    reads BPR0+1."""
    vm, cpus, g = ready
    if not isinstance(g, VgicV3):
        assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", 0)
        return
    s = g.cpu_sysreg(cpus[0])
    ctlr = s["ICC_CTLR_EL1"]
    assert ctlr == 0x8C00
    for bad in (ctlr + (1 << 8),        # 6 priority bits: more than the vCPU has
                ctlr + (1 << 11),       # IDbits 2
                ctlr | 1 << 14,         # SEIS
                ctlr & ~(1 << 15)):     # A3V
        raises(E.EINVAL, s.__setitem__, "ICC_CTLR_EL1", bad)
    s["ICC_CTLR_EL1"] = ctlr | 0x3
    assert s["ICC_CTLR_EL1"] == ctlr | 0x3 and s.fields("ICC_CTLR_EL1")["CBPR"] == 1
    s["ICC_BPR0_EL1"] = 0xFF
    assert s["ICC_BPR0_EL1"] == 0x7 and s["ICC_BPR1_EL1"] == 0x7
    s["ICC_BPR0_EL1"] = 2
    assert s["ICC_BPR1_EL1"] == 3
    s["ICC_CTLR_EL1"] = ctlr - (1 << 8) - (1 << 11)   # 4 priority bits, 16 ID bits
    assert s["ICC_CTLR_EL1"] == ctlr - (1 << 8) - (1 << 11)
    raises(E.EINVAL, s.__setitem__, "ICC_CTLR_EL1", ctlr)  # cannot go back up
    assert g.cpu_sysreg(cpus[1])["ICC_CTLR_EL1"] == ctlr   # per vCPU
    s["ICC_AP1R0_EL1"] = 0x80000001
    assert s["ICC_AP1R0_EL1"] == 0x80000001
    raises(E.EINVAL, s.__setitem__, "ICC_AP0R1_EL1", 0)
    raises(E.EINVAL, s.__setitem__, "ICC_SRE_EL1", 0x6)
    s["ICC_SRE_EL1"] = 0x1
    assert s["ICC_SRE_EL1"] == 0x7
    s["ICC_PMR_EL1"] = 0xFF
    assert s["ICC_PMR_EL1"] == 0xFF
    s["ICC_IGRPEN1_EL1"] = 0xFF
    assert s["ICC_IGRPEN1_EL1"] == 1



def test_v3_region_index_is_eight_bits(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """The uapi index field is 12 bits wide, but kvm_vgic_addr keeps it in a u8:
    index 0x100 is index 0 (doc vs kernel)."""
    if other_gic_absent(arm64_kvm, arm64_gic, 3):
        return
    with arm64_kvm.create_vm() as vm:
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        set_region(g, region(2, 0x200000, 0, 0x100))
        assert g.get_attr(ADDR, REGION, value_in=0x100) == region(2, 0x200000, 0, 0)
        assert g.redist_regions() == [RedistRegion(0, 0x200000, 2)]
