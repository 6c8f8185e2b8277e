"""Saved GIC documents under random corruption and truncation: always refused
(SnapshotError) before any state is written, checked by reading the state back.
Seeded, so a failure names the case that shows it; runs on every arm64 backend
(in the guests: the real kernels)."""
from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from kvmdev.devices import gicstate
from kvmdev.devices.gicstate import SnapshotError
from test_gicstate import busy_state, machine

pytestmark = pytest.mark.arm64
ROUNDS = 120


def _leaves(doc: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaves(v, path + (k,))] or [path]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaves(v, path + (i,))] or [path]
    return [path]


def _parent(doc: Any, path: tuple) -> tuple[Any, Any]:
    for k in path[:-1]:
        doc = doc[k]
    return doc, path[-1]


def corrupt(doc: dict, rng: random.Random, sealed: bool) -> tuple[dict, str]:
    """One random corruption.  Unsealed: anything (the sha256 no longer matches).
    Sealed: only what the validation must catch by itself (a changed register
    value of the right width would be a valid document)."""
    d = copy.deepcopy(doc)
    registers = [p for p in _leaves(d) if p[0] in ("dist", "vcpus", "its") and p[-1] not in ("id", "base")]
    path = rng.choice(registers if sealed else _leaves(d))
    parent, key = _parent(d, path)
    ops = ["type", "range", "delete", "rename", "add"] + ([] if sealed else ["flip", "plus"])
    op = rng.choice(ops)
    if op == "type":
        parent[key] = rng.choice(["0x1", None, 1.5, [1], {"a": 1}, True])
    elif op == "range":
        parent[key] = rng.choice([-1, 1 << 64, 1 << 70])
    elif op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        parent[f"{key}X"] = parent.pop(key)
    elif op == "add" and isinstance(parent, dict):
        parent[f"GICX_BOGUS{rng.randrange(99)}"] = 0
    elif op == "flip" and isinstance(parent[key], int):
        parent[key] ^= 1 << rng.randrange(32)
    else:
        parent[key] = 0xDEAD if parent[key] != 0xDEAD else 0xBEEF
    if sealed:
        gicstate.seal(d)
    return d, f"{op} at {'/'.join(map(str, path))}"


def test_random_corruption_is_refused(arm64_kvm, arm64_gic) -> None:
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    b = machine(arm64_kvm, arm64_gic)
    b.gic.dist["GICD_ISENABLER1"] = 0x5
    before = b.save()
    rng = random.Random(20261121)
    for i in range(ROUNDS):
        bad, what = corrupt(doc, rng, sealed=bool(i % 2))
        with pytest.raises(SnapshotError):
            b.restore(bad)
            pytest.fail(f"round {i}: {what} was restored")
        if i % 40 == 39:
            assert gicstate.diff(before, b.save()) == [], f"round {i} ({what}) wrote state"
    text = gicstate.dumps(doc)
    for cut in sorted(rng.sample(range(1, len(text)), 20)):
        with pytest.raises(SnapshotError):
            gicstate.loads(text[:cut])
    assert gicstate.diff(before, b.save()) == []
    b.restore(gicstate.loads(text))                     # the intact document still restores
    assert gicstate.diff(doc, b.save()) == []


SEMANTIC_ROUNDS = 60


def _state(m) -> tuple:
    """What a refused restore must leave as it was: the GIC's registers and the
    ITS registers, read without side effects (an ITS save writes guest RAM)."""
    its = [{n: int(i.regs[n]) for n in gicstate.ITS_REGS} for i in m.its]
    return gicstate.save(m.gic, m.vcpus), its


def _reg_width(name: str) -> int:
    """A document key's register width, from the register frames (LEVEL_INFO<n>: 32)."""
    from kvmdev.devices.its import GITS
    from kvmdev.devices.vgic import GICC, GICD_V3, GICR
    if name.startswith("ICC_"):
        return 64                                   # CPU_SYSREGS: every ICC_* is a u64
    for frame in (GICD_V3, GICR, GICC, GITS):
        try:
            return frame.lookup(name)[0].width
        except KeyError:
            pass
    return 32


def semantic(doc: dict, rng: random.Random) -> tuple[dict, str]:
    """A sealed document with one register changed to another value of its
    width: mostly the ITS's and the LPI tables' bases, the values the kernel
    itself may refuse part-way.  Half the time doc["memory"] is made to match."""
    d = copy.deepcopy(doc)
    leaves = [p for p in _leaves(d) if isinstance(p[-1], str) and type(_parent(d, p)[0][p[-1]]) is int]
    hot = [p for p in leaves if p[0] == "its" and p[-1] != "base"
           or p[-1] in ("GICR_PROPBASER", "GICR_PENDBASER", "GICR_CTLR")]
    regs = [p for p in leaves if p[0] in ("dist", "vcpus") and p[-1] != "id"]
    path = rng.choice(hot if hot and rng.random() < 0.8 else regs)
    parent, key = _parent(d, path)
    width = _reg_width(key)
    old = parent[key]
    parent[key] = rng.choice([old ^ 1 << rng.randrange(width), rng.getrandbits(width), 0])
    if rng.random() < 0.5:
        d["memory"] = gicstate._memory(d, [gicstate.ItsState(s["base"], s["regs"]) for s in d["its"]])
    gicstate.seal(d)
    return d, f"{'/'.join(map(str, path))}: {old:#x} -> {parent[key]:#x}"


def test_values_the_kernel_refuses_leave_no_trace(arm64_kvm, arm64_gic) -> None:
    """Sealed, well-formed documents with one value changed: each either
    restores, or is refused (by the validation, or by the kernel part-way, when
    the registers already written are put back), and then the state read back
    is what it was before, on the real kernels as on the mock."""
    from kvmdev import KvmError, SequenceError
    a = machine(arm64_kvm, arm64_gic)
    busy_state(a)
    doc = a.save()
    rng = random.Random(1121)
    b = machine(arm64_kvm, arm64_gic)
    outcomes: dict[str, int] = {}
    try:
        for i in range(SEMANTIC_ROUNDS):
            bad, what = semantic(doc, rng)
            before = _state(b)
            try:
                b.restore(bad)
            except (SnapshotError, KvmError, SequenceError, ValueError) as e:
                kind = type(e).__name__
                outcomes[kind] = outcomes.get(kind, 0) + 1
                assert gicstate.diff(before[0], _state(b)[0]) == [] and before[1] == _state(b)[1], \
                    f"round {i}: {what}: {kind} {e} {getattr(e, '__notes__', '')}"
                if not isinstance(e, SnapshotError):
                    assert "were put back" in " ".join(getattr(e, "__notes__", [])), (what, e)
                continue
            outcomes["restored"] = outcomes.get("restored", 0) + 1
            b.vm.close()                        # restored: the next round starts afresh
            b = machine(arm64_kvm, arm64_gic)
    finally:
        b.vm.close()
    print(outcomes)
    assert outcomes.get("SnapshotError", 0) > 0 and outcomes.get("restored", 0) > 0
    if arm64_gic == 3:          # the kernel itself refused some part-way, and they were rolled back
        assert outcomes.get("KvmError", 0) + outcomes.get("SequenceError", 0) > 0, outcomes
