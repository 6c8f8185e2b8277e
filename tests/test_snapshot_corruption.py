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
