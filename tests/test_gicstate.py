"""GIC snapshots: a non-trivial state survives save -> new VM -> restore -> save
with equal documents (VGIC v3 with an ITS and LPIs, VGIC v2), also across
backends (real -> mock -> real); a bad document is refused with nothing written.
Runs on the real 6.12 and 6.1 kernels (gic 3 and gic 2) and on the mock."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest

import kvmdev
from kvmdev.arm64 import irq
from kvmdev.devices import gicstate
from kvmdev.devices.gicstate import SnapshotError
from kvmdev.devices.its import Its, command

pytestmark = pytest.mark.arm64

T, RAM = 0x70000000, 0x200000
CMDQ, CT, DT, ITT, PROP = T, T + 0x10000, T + 0x20000, T + 0x40000, T + 0x50000
PEND = [T + 0x60000 + i * 0x10000 for i in range(4)]
ITS_BASE, LPI = 0x08080000, 8192
NR_IRQS = 96


@dataclass
class Machine:
    vm: kvmdev.Vm
    gic: Any
    vcpus: list[kvmdev.Vcpu]
    its: list[Its]
    mem: kvmdev.GuestMemory

    def save(self) -> dict[str, Any]:
        return gicstate.save(self.gic, self.vcpus, its=self.its)

    def restore(self, doc: dict[str, Any]) -> None:
        gicstate.restore(self.gic, doc, self.vcpus, its=self.its)


def machine(kvm: kvmdev.Kvm, gic: int, ids: tuple[int, ...] = (0, 1), nr_irqs: int = NR_IRQS) -> Machine:
    """vCPUs, a VGIC of the host's version with ``nr_irqs``, on v3 an ITS; RAM for
    the LPI and ITS tables; initialized, no state yet."""
    vm = kvm.create_vm()
    vcpus = [vm.create_vcpu(i) for i in ids]
    for c in vcpus:
        c.vcpu_init(["PSCI_0_2"])
    g = vm.create_device("ARM_VGIC_V3" if gic == 3 else "ARM_VGIC_V2")
    its = []
    if gic == 3:
        its = [vm.create_device("ARM_VGIC_ITS")]
        its[0].base = ITS_BASE
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    else:
        g.dist_base, g.cpu_base = 0x08000000, 0x08010000
    g.nr_irqs = nr_irqs
    g.init()
    return Machine(vm, g, vcpus, its, vm.add_memory(T, RAM))


def busy_state(m: Machine) -> None:
    """Enabled, pending and active interrupts, priorities, routing/targets,
    configuration, line levels, per-vCPU CPU interface state; on v3 LPIs mapped
    through the ITS, one of them pending."""
    v3 = m.its != []
    d = m.gic.dist
    if not v3:
        d["GICD_IIDR"] = d["GICD_IIDR"]                  # v2: makes IGROUPR writable
    d["GICD_CTLR"] = 2 if v3 else 1
    d["GICD_IGROUPR1"] = 0xF0F0F0F0
    d["GICD_ICFGR2"] = 0xAAAAAAAA & ~(1 << 17)          # SPI 40 level, the rest edge
    d["GICD_IPRIORITYR8"], d["GICD_IPRIORITYR13"] = 0x10203040, 0xF8E0A080
    d["GICD_ISENABLER1"], d["GICD_ISENABLER2"] = 0x0000FF0F, 0x80000001
    d["GICD_ISACTIVER2"] = 0x3
    m.vm.irq_line(irq("SPI", 40), 1)                   # a level line, held high
    m.vm.irq_line(irq("SPI", 34), 1)                   # an edge: latched pending
    if v3:
        d["GICD_ISPENDR2"] = 0x10
        d["GICD_IROUTER33"] = m.vcpus[1].mpidr & 0xFFFFFF
        for n, c in enumerate(m.vcpus):
            r = m.gic.redist(c)
            r["GICR_ISENABLER0"] = 1 << (24 + n)
            r["GICR_IPRIORITYR7"] = 0x10101010 * (n + 1)
            r["GICR_ISACTIVER0"] = 1 << (20 + n)
            m.vm.irq_line(irq("PPI", 27, vcpu=c.id), 1)   # the timer PPI's line, level
            icc = m.gic.cpu_sysreg(c)
            icc["ICC_PMR_EL1"] = 0xF0 - 0x10 * n
            icc["ICC_BPR0_EL1"], icc["ICC_IGRPEN1_EL1"], icc["ICC_AP1R0_EL1"] = 2, 1, 1 << n
            r["GICR_PROPBASER"], r["GICR_PENDBASER"] = PROP | 15, PEND[n]
            r["GICR_CTLR"] = 1
        m.mem.write(PROP, bytes([0xA1]) * 0x1000)
        r = m.its[0].regs
        r["GITS_CBASER"], r["GITS_BASER0"], r["GITS_BASER1"] = 1 << 63 | CMDQ, 1 << 63 | DT | 1, 1 << 63 | CT
        r["GITS_CTLR"] = 1
        m.its[0].submit(command("MAPD", DeviceID=1, Size=1, ITT_addr=ITT, V=1),
                        command("MAPC", ICID=0, RDbase=0, V=1), command("MAPC", ICID=1, RDbase=1, V=1),
                        command("MAPTI", DeviceID=1, EventID=0, pINTID=LPI, ICID=0),
                        command("MAPTI", DeviceID=1, EventID=1, pINTID=LPI + 1, ICID=1))
        assert m.vm.signal_msi(ITS_BASE + 0x10040, 1, 1) == 1
    else:
        d["GICD_ITARGETSR8"] = 0x01020102
        for n, c in enumerate(m.vcpus):
            b = m.gic.dist_as(c)
            b["GICD_ISENABLER0"] = 1 << (24 + n)
            b["GICD_IPRIORITYR7"] = 0x10101010 * (n + 1)
            b["GICD_ISACTIVER0"] = 1 << (20 + n)
            cpu = m.gic.cpu(c)
            cpu["GICC_PMR"], cpu["GICC_CTLR"], cpu["GICC_BPR"] = 0x1E - n, 1, 3
        # SGIs pending from other vCPUs: SGI 5 on vCPU 0 from vCPU 1, SGI 2 from both
        m.gic.dist_as(m.vcpus[0])["GICD_SPENDSGIR1"] = 0x02 << 8
        m.gic.dist_as(m.vcpus[0])["GICD_SPENDSGIR0"] = 0x03 << 16


def _copy_ram(src: Machine, dst: Machine) -> None:
    dst.mem.write(T, src.mem.read(T, RAM))


def test_round_trip(arm64_kvm, arm64_gic) -> None:
    """save -> a new VM -> restore -> save gives the same document, which is
    JSON text, keyed by MPIDR, sized from NR_IRQS, and shows the state set up."""
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    assert json.loads(gicstate.dumps(doc)) == doc
    assert doc["nr_irqs"] == NR_IRQS and "GICD_ISENABLER2" in doc["dist"] and "GICD_ISENABLER3" not in doc["dist"]
    keys = [f"{c.mpidr:#x}" for c in a.vcpus]
    assert list(doc["vcpus"]) == keys and keys[0] != keys[1]
    if arm64_gic == 3:
        r0, r1 = (doc["vcpus"][k]["redist"] for k in keys)
        assert (r0["GICR_ISENABLER0"], r1["GICR_ISENABLER0"]) == (0x100FFFF, 0x200FFFF)   # not vCPU 0's twice
        assert [doc["vcpus"][k]["icc"]["ICC_PMR_EL1"] for k in keys] == [0xF0, 0xE0]
        assert doc["dist"]["LEVEL_INFO1"] == 1 << 8 and r0["LEVEL_INFO0"] == 1 << 27   # lines, apart
        assert doc["dist"]["GICD_ISPENDR1"] & 1 << 2 and not doc["dist"]["GICD_ISPENDR1"] & 1 << 8  # latches
        assert doc["its"][0]["regs"]["GITS_CTLR"] & 1
        assert {m["what"] for m in doc["memory"]} >= {"LPI property table", "ITS 0 device table"}
    else:
        assert [doc["vcpus"][k]["gicc"]["GICC_PMR"] for k in keys] == [0x1E, 0x1D]
        d0 = doc["vcpus"][keys[0]]["dist"]
        assert (d0["GICD_SPENDSGIR0"], d0["GICD_SPENDSGIR1"], d0["GICD_ISPENDR0"] & 0xFFFF) == \
            (0x03 << 16, 0x02 << 8, 1 << 2 | 1 << 5)
    b = machine(arm64_kvm, arm64_gic)
    _copy_ram(a, b)
    b.restore(doc)
    again = b.save()
    assert gicstate.diff(doc, again) == []
    if arm64_gic == 3:   # the LPIs came back mapped, LPI 8193 pending
        assert b.vm.signal_msi(ITS_BASE + 0x10040, 0, 1) == 1
        b.mem.write(PEND[1], bytes(0x2000))
        b.gic.save_pending_tables()
        assert b.mem.read(PEND[1] + 1024, 1) == b"\x02"


def test_across_backends(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """A document saved here restores into the mock of the same kernel and GIC and
    back: both saves equal the first."""
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    with kvmdev.open("mock", arch="arm64", kernel=arm64_kernel, gic=arm64_gic) as mk:
        m = machine(mk, arm64_gic)
        _copy_ram(a, m)
        m.restore(json.loads(gicstate.dumps(doc)))
        doc_m = m.save()
        assert gicstate.diff(doc, doc_m) == []
        c = machine(arm64_kvm, arm64_gic)
        _copy_ram(m, c)
        c.restore(doc_m)
        assert gicstate.diff(doc, c.save()) == []


def _bad(doc: dict[str, Any], case: str) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    first = next(iter(d["vcpus"]))
    if case == "version":
        d["version"] = 99
    elif case == "gic":
        d["gic"] = 5 - d["gic"]
    elif case == "nr_irqs":
        d["nr_irqs"] = 128
    elif case == "mpidr":
        d["vcpus"]["0x80000009"] = d["vcpus"].pop(first)
    elif case == "value":
        d["dist"]["GICD_ISENABLER1"] = 1 << 32
    elif case == "register":
        d["dist"]["GICD_ISENABLER7"] = 1
    elif case == "iidr":
        d["dist"]["GICD_IIDR"] ^= 1
    elif case == "missing":
        del d["vcpus"][first]["redist" if "redist" in d["vcpus"][first] else "gicc"]
    elif case == "its":
        d["its"] = [] if d["its"] else [{"base": ITS_BASE, "regs": {}}]
    elif case == "tampered":                            # a valid-looking value, not re-sealed
        d["dist"]["GICD_ISENABLER1"] ^= 1
        return d
    return gicstate.seal(d)                             # past the integrity check: each rule on its own


@pytest.mark.parametrize("case", ["version", "gic", "nr_irqs", "mpidr", "value", "register", "iidr", "missing",
                                  "its", "tampered"])
def test_bad_document_writes_nothing(arm64_kvm, arm64_gic, case: str) -> None:
    """A mismatched or corrupted document is refused with a SnapshotError that
    says why, and the target's state reads back unchanged."""
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    b = machine(arm64_kvm, arm64_gic)
    b.gic.dist["GICD_ISENABLER1"] = 0x5
    before = b.save()
    with pytest.raises(SnapshotError) as ei:
        b.restore(_bad(doc, case))
    assert str(ei.value)
    assert gicstate.diff(before, b.save()) == []


def test_diff_names_registers(arm64_kvm, arm64_gic) -> None:
    a = machine(arm64_kvm, arm64_gic)
    doc = a.save()
    a.gic.dist["GICD_IPRIORITYR9"] = 0x80
    lines = gicstate.diff(doc, a.save())
    assert lines == ["dist GICD_IPRIORITYR9: 0x0 -> 0x80"]


def test_nr_irqs_sizes_the_document(arm64_kvm, arm64_gic) -> None:
    """No flat vectors: a 64-IRQ and a 256-IRQ VGIC save registers by name up to
    their own NR_IRQS, and neither document restores into the other."""
    small, big = machine(arm64_kvm, arm64_gic, nr_irqs=64), machine(arm64_kvm, arm64_gic, nr_irqs=256)
    ds, db = small.save(), big.save()
    assert "GICD_IPRIORITYR15" in ds["dist"] and "GICD_IPRIORITYR16" not in ds["dist"]
    assert "GICD_IPRIORITYR63" in db["dist"]
    with pytest.raises(SnapshotError, match="NR_IRQS"):
        small.restore(db)


def test_icc_buffers_are_64_bits(arm64_kvm, arm64_gic) -> None:
    """A pitfall of other VMMs: ICC_* read through a u32 where the kernel copies a
    u64.  kvmdev's table says u64 for CPU_SYSREGS (every batch slot is a u64), and
    restore checks ICC values as 64-bit ones."""
    if arm64_gic != 3:
        return
    m = machine(arm64_kvm, arm64_gic)
    t = m.gic.attr_table
    g = t.group_value("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS")
    assert t.spec(g, 0).ctype == "__u64"
    doc = m.save()
    assert all(isinstance(v, int) for e in doc["vcpus"].values() for v in e["icc"].values())
    bad = copy.deepcopy(doc)
    next(iter(bad["vcpus"].values()))["icc"]["ICC_PMR_EL1"] = 1 << 64
    gicstate.seal(bad)
    with pytest.raises(SnapshotError, match="ICC_PMR_EL1: .* is not a 64-bit value"):
        m.restore(bad)
