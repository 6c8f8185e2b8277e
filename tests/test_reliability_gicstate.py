"""gicstate.restore refuses before its first write whatever the kernel would
refuse part-way (value types, the ITS's state and frame address, ICC_CTLR_EL1,
MPIDRs), restores a VM's own snapshot into that live VM (the ITS is reset
first), and a rollback says exactly what it could not put back.  Each case
checks the ITS's translations by an MSI (signal_msi answers 1 while the LPI is
mapped).  On every arm64 backend (in the guests: the real kernels)."""
from __future__ import annotations

import copy

import pytest

from kvmdev import KvmError, SequenceError
from kvmdev.devices import gicstate
from kvmdev.devices.gicstate import SnapshotError
from test_gicstate import CT, ITS_BASE, busy_state, machine

pytestmark = pytest.mark.arm64


def _msi(m) -> int:
    return m.vm.signal_msi(ITS_BASE + 0x10040, 1, 1)       # DeviceID 1, EventID 1: LPI 8193


def _disabled_msi(m) -> int:
    """The MSI through the ITS after re-enabling it (restores need it disabled)."""
    m.its[0].regs["GITS_CTLR"] = 1
    try:
        return _msi(m)
    finally:
        m.its[0].regs["GITS_CTLR"] = 0


def _v3(arm64_gic: int) -> None:
    if arm64_gic != 3:
        pytest.skip("an ITS needs a GICv3 host")


def test_non_integer_value_touches_nothing(arm64_kvm, arm64_gic) -> None:
    """issue 18: the rollback's ITS CTRL_RESET ran before 'nothing was written'."""
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    a.its[0].regs["GITS_CTLR"] = 0
    now = a.save()
    for value in ("0x1", 1.5, None, True, [1]):
        bad = copy.deepcopy(doc)
        bad["dist"]["GICD_ISENABLER1"] = value
        with pytest.raises(SnapshotError, match="GICD_ISENABLER1"):
            a.restore(gicstate.seal(bad))
        assert _disabled_msi(a) == 1, f"{value!r}: the ITS lost its translations"
    assert gicstate.diff(now, a.save()) == []


def test_enabled_its_is_refused_before_any_write(arm64_kvm, arm64_gic) -> None:
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    bad = copy.deepcopy(doc)
    bad["dist"]["GICD_ISENABLER1"] = 0x1           # would be written first
    with pytest.raises(SequenceError, match="enabled"):
        a.restore(gicstate.seal(bad))
    assert a.gic.dist["GICD_ISENABLER1"] == doc["dist"]["GICD_ISENABLER1"]
    assert _msi(a) == 1
    assert gicstate.diff(doc, a.save()) == []


@pytest.mark.parametrize("base", [True, 2 ** 70, -65536, ITS_BASE + 0x1000, 1.0 * ITS_BASE])
def test_its_base_is_checked_first(arm64_kvm, arm64_gic, base) -> None:
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    b = machine(arm64_kvm, arm64_gic)
    fresh = b.vm.create_device("ARM_VGIC_ITS")     # no frame address yet: the document's is taken
    before = gicstate.save(b.gic, b.vcpus)
    bad = copy.deepcopy(doc)
    bad["its"][0]["base"] = base
    with pytest.raises(SnapshotError, match="ITS 0"):
        gicstate.restore(b.gic, gicstate.seal(bad), b.vcpus, its=[fresh])
    assert gicstate.diff(before, gicstate.save(b.gic, b.vcpus)) == []
    assert fresh.base == (1 << 64) - 1


def test_duplicate_mpidr_is_refused(arm64_kvm, arm64_gic) -> None:
    """Two vCPUs with one MPIDR (here the same vCPU twice) would make a document
    of one: refused by save and restore."""
    a = machine(arm64_kvm, arm64_gic)
    doc = a.save()
    with pytest.raises(ValueError, match="same MPIDR"):
        gicstate.save(a.gic, [a.vcpus[0], a.vcpus[1], a.vcpus[0]], its=a.its)
    with pytest.raises(ValueError, match="same MPIDR"):
        gicstate.restore(a.gic, doc, [a.vcpus[0], a.vcpus[1], a.vcpus[1]], its=a.its)


def test_two_vcpus_sharing_an_mpidr_are_refused(arm64_kvm, arm64_gic) -> None:
    """Two distinct vCPUs whose MPIDR_EL1 userspace made equal: save and restore
    refuse it, given the vCPUs or taking the VM's (vcpus=None), before any write."""
    a = machine(arm64_kvm, arm64_gic)
    doc = a.save()
    a.vcpus[1].set_one_reg("MPIDR_EL1", a.vcpus[0].get_one_reg("MPIDR_EL1"))
    for vcpus in (None, a.vcpus):
        with pytest.raises(ValueError, match="same MPIDR"):
            gicstate.save(a.gic, vcpus, its=a.its)
        with pytest.raises(ValueError, match="same MPIDR"):
            gicstate.restore(a.gic, doc, vcpus, its=a.its)


def test_own_snapshot_into_the_same_live_vm(arm64_kvm, arm64_gic) -> None:
    """issue 18: RESTORE_TABLES answered EEXIST (the collections exist) and the
    rollback dropped the translations.  The ITS is reset first now: it works."""
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    a.its[0].regs["GITS_CTLR"] = 0                # the documented precondition: a disabled ITS
    a.gic.dist["GICD_ISENABLER1"] = 0xFFFF          # something to put back
    a.restore(doc)
    assert _msi(a) == 1
    assert gicstate.diff(doc, a.save()) == []


def test_icc_ctlr_raising_pribits_is_refused_first(arm64_kvm, arm64_gic) -> None:
    """set_gic_ctlr refuses PRIbits/IDbits above the vCPU's (EINVAL part-way,
    after the distributor's registers): now a SnapshotError before any write."""
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    icc = a.gic.cpu_sysreg(a.vcpus[0])
    icc["ICC_CTLR_EL1"] = icc["ICC_CTLR_EL1"] & ~(7 << 8)     # PRIbits down to 1 bit
    a.its[0].regs["GITS_CTLR"] = 0
    now = a.save()
    with pytest.raises(SnapshotError, match="ICC_CTLR_EL1"):
        a.restore(doc)                                         # the document's PRIbits are higher
    assert _disabled_msi(a) == 1
    assert gicstate.diff(now, a.save()) == []


def test_part_way_refusal_names_what_it_could_not_put_back(arm64_kvm, arm64_gic) -> None:
    """RESTORE_TABLES refusing a collection entry (a target vCPU the VM does not
    have: vgic_its_restore_cte EINVAL) after the ITS reset: the registers are put
    back and the note says the mappings were dropped, not 'as before'."""
    _v3(arm64_gic)
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    a.its[0].regs["GITS_CTLR"] = 0
    before = a.save()
    a.mem.write(CT, (1 << 63 | 7 << 16 | 0).to_bytes(8, "little"))   # ICID 0 -> RDbase 7 (2 vCPUs)
    with pytest.raises(KvmError) as e:
        a.restore(doc)
    note = " ".join(getattr(e.value, "__notes__", []))
    assert "mappings it held were dropped" in note and "as before" not in note, note
    after = a.save()
    assert [d for d in gicstate.diff(before, after) if not d.startswith("memory")] == []
