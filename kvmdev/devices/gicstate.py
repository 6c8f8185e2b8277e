"""GIC state as a document: save, restore, diff (VGIC v2, VGIC v3, ITS).

    doc = gicstate.save(gic, vcpus, its=[its])     # JSON-serialisable, versioned
    gicstate.restore(new_gic, doc, new_vcpus, its=[new_its])
    print("\\n".join(gicstate.diff(doc, gicstate.save(new_gic, new_vcpus, its=[new_its]))))

The document is keyed by register names and by each vCPU's MPIDR, never by
position, and sized from NR_IRQS.  What is saved, and in which order it is
written back, is one table per frame (the ``*_PLAN`` lists) walked by one loop:
the order is the one the kernel docs require (GICD_IIDR first; configuration,
routing and line levels before pending state; enable/pending/active restored
as clear-then-set; GICR_PROPBASER/PENDBASER before GICR_CTLR; ICC_CTLR_EL1
before the APnR it sizes; the ITS last, after the redistributors).
``restore`` checks the whole document against the device first and writes
nothing if anything is wrong.
"""
from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..arm64 import Affinity
from ..errors import SequenceError, add_note
from .its import GITS, RESTORE_ORDER, Its, ItsState
from .vgic import Registers, Vgic, VgicV2, VgicV3
from .. import _check

# version 2: GICv2 documents keep each SGI's source vCPUs (GICD_SPENDSGIRn)
FORMAT, VERSION = "kvmdev.gic", 2


class GicDocument(dict):   # type: ignore[type-arg]
    """A saved GIC state: a plain dict (JSON as it is) that shows a summary."""

    def __repr__(self) -> str:
        return (f"<GicDocument {self.get('format')} v{self.get('version')}: GICv{self.get('gic')}, "
                f"NR_IRQS {self.get('nr_irqs')}, {len(self.get('vcpus', {}))} vCPUs, "
                f"{len(self.get('its', []))} ITS, {len(self.get('memory', []))} memory ranges>")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
        nonzero = {k: v for k, v in self.get("dist", {}).items() if v}
        p.break_()
        p.text(f"  dist: {len(nonzero)} of {len(self.get('dist', {}))} registers non-zero")
        for key, entry in self.get("vcpus", {}).items():
            p.break_()
            p.text(f"  vCPU {key}: " + ", ".join(f"{part} {len(v)}" for part, v in entry.items() if isinstance(v, dict)))


class SnapshotError(ValueError):
    """A GIC document that cannot be restored here; nothing was written."""


@dataclass(frozen=True)
class Step:
    """One register (array) of a plan.  ``span``: which elements NR_IRQS gives it
    ("one", "spi-bits", "spi-cfg", "spi-bytes", "spi-each", "private");
    ``clear``: the register that clears what ``name`` sets (written first with
    the complement, so a set-only write cannot leave stale bits); ``level``: the
    line levels (LEVEL_INFO) go here, before pending state."""

    name: str
    span: str = "one"
    clear: str | None = None
    level: bool = False


# Restore order (save reads the same registers).  v3: GICD_ICPENDR is RAZ/WI for
# userspace and a GICD_ISPENDR write sets the latches to the value.
V3_DIST_PLAN = [
    Step("GICD_IIDR"), Step("GICD_CTLR"), Step("GICD_IGROUPR", "spi-bits"), Step("GICD_ICFGR", "spi-cfg"),
    Step("GICD_IPRIORITYR", "spi-bytes"), Step("GICD_IROUTER", "spi-each"),
    Step("GICD_ISENABLER", "spi-bits", clear="GICD_ICENABLER"), Step("LEVEL_INFO", "spi-bits", level=True),
    Step("GICD_ISPENDR", "spi-bits"), Step("GICD_ISACTIVER", "spi-bits", clear="GICD_ICACTIVER"),
]
V3_REDIST_PLAN = [
    Step("GICR_PROPBASER"), Step("GICR_PENDBASER"), Step("GICR_CTLR"),
    Step("GICR_IGROUPR0"), Step("GICR_ICFGR1"), *(Step(f"GICR_IPRIORITYR{n}") for n in range(8)),
    Step("GICR_ISENABLER0", clear="GICR_ICENABLER0"), Step("LEVEL_INFO0", level=True),
    Step("GICR_ISPENDR0"), Step("GICR_ISACTIVER0", clear="GICR_ICACTIVER0"),
]
ICC_PLAN = ["ICC_SRE_EL1", "ICC_CTLR_EL1", "ICC_PMR_EL1", "ICC_BPR0_EL1", "ICC_BPR1_EL1",
            *(f"ICC_AP{g}R{n}_EL1" for g in (0, 1) for n in range(4)), "ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1"]
V2_DIST_PLAN = [
    Step("GICD_IIDR"), Step("GICD_CTLR"), Step("GICD_IGROUPR", "spi-bits"), Step("GICD_ICFGR", "spi-cfg"),
    Step("GICD_IPRIORITYR", "spi-bytes"), Step("GICD_ITARGETSR", "spi-bytes"),
    Step("GICD_ISENABLER", "spi-bits", clear="GICD_ICENABLER"),
    Step("GICD_ISPENDR", "spi-bits", clear="GICD_ICPENDR"),
    Step("GICD_ISACTIVER", "spi-bits", clear="GICD_ICACTIVER"),
]
# v2: each vCPU's banked view of the distributor (its SGIs and PPIs), then its GICC.
# A userspace GICD_ISPENDR0 write makes a pending SGI's source the vCPU itself;
# GICD_SPENDSGIRn, after it, puts back the real sources (as QEMU's arm_gic_kvm).
V2_BANKED_PLAN = [
    Step("GICD_IGROUPR0"), Step("GICD_ICFGR1"), *(Step(f"GICD_IPRIORITYR{n}") for n in range(8)),
    Step("GICD_ISENABLER0", clear="GICD_ICENABLER0"), Step("GICD_ISPENDR0", clear="GICD_ICPENDR0"),
    *(Step(f"GICD_SPENDSGIR{n}", clear=f"GICD_CPENDSGIR{n}") for n in range(4)),
    Step("GICD_ISACTIVER0", clear="GICD_ICACTIVER0"),
]
GICC_PLAN = ["GICC_CTLR", "GICC_PMR", "GICC_BPR", "GICC_ABPR", "GICC_APR0", "GICC_APR1", "GICC_APR2", "GICC_APR3"]


def _names(step: Step, nr_irqs: int) -> list[str]:
    """The register names a step covers for NR_IRQS interrupts."""
    first, per = {"one": (0, 0), "spi-bits": (1, 32), "spi-cfg": (2, 16), "spi-bytes": (8, 4),
                  "spi-each": (32, 1)}[step.span]
    if not per:
        return [step.name]
    return [f"{step.name}{n}" for n in range(first, nr_irqs // per)]


def _level_intids(step: Step, nr_irqs: int) -> list[int]:
    return [0] if step.span == "one" else list(range(32, nr_irqs, 32))


def _mpidr_key(mpidr: int) -> str:
    return f"{mpidr:#x}"


def _apr_count(icc_ctlr: int) -> int:
    """APnR registers implemented at ICC_CTLR_EL1.PRIbits (vgic_v3_max_apr_idx)."""
    return {7: 4, 6: 2}.get((icc_ctlr >> 8 & 7) + 1, 1)


# -- compiled walks ------------------------------------------------------------------------
GRP_LEVEL = "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO"
ITS_REGS = frozenset(RESTORE_ORDER) | {"GITS_CTLR"}
PLAIN, COMPLEMENT, LOW, HIGH = range(4)


class _Walk:
    """The registers of one save (or restore) of one shape, compiled into one
    AttrProgram: ``items`` the (group, attr) accesses in order; ``where`` for
    each register its section of the document, its name and its item indexes
    (save), or for each item where its value comes from (restore)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []
        self.where: list[tuple[int, str, int, int]] = []

    def get(self, sec: int, group: str, attrs: list[int], name: str) -> None:
        i = len(self.items)
        self.items += [(group, a) for a in attrs]
        self.where.append((sec, name, i, i + 1 if len(attrs) == 2 else -1))

    def set(self, sec: int, group: str, attrs: list[int], name: str, kind: int = PLAIN, width: int = 32) -> None:
        if len(attrs) == 2:   # a 64-bit register as two 32-bit halves, low first
            self.items += [(group, attrs[0]), (group, attrs[1])]
            self.where += [(sec, name, LOW, 0), (sec, name, HIGH, 0)]
        else:
            self.items.append((group, attrs[0]))
            self.where.append((sec, name, kind, (1 << width) - 1))


def _level_attr(mpidr: int, intid: int) -> int:
    return Affinity.of(mpidr).packed() << 32 | intid   # VGIC_LEVEL_INFO_LINE_LEVEL (0)


def _walk_plan(w: _Walk, sec: int, regs: Registers, plan: list[Step], nr: int, mpidr: int, write: bool) -> None:
    """One frame's plan, in order; for a write, a ``clear`` register first takes
    the complement of the value."""
    for step in plan:
        if step.level:
            for intid in _level_intids(step, nr):
                key = f"LEVEL_INFO{intid // 32}"
                (w.set if write else w.get)(sec, GRP_LEVEL, [_level_attr(mpidr, intid)], key)
            continue
        for name in _names(step, nr):
            if not write:
                w.get(sec, regs.group, regs.attrs_of(name), name)
                continue
            if step.clear is not None:
                width = regs.frame.lookup(name)[0].width
                w.set(sec, regs.group, regs.attrs_of(step.clear + name[len(step.name):]), name, COMPLEMENT, width)
            w.set(sec, regs.group, regs.attrs_of(name), name)


def _v3_walk(gic: VgicV3, nr: int, mpidrs: list[int], iccs: Sequence[Iterable[str]], write: bool) -> Any:
    """A builder of the VGIC v3 walk: the distributor, then per vCPU its
    redistributor and the ICC registers named in ``iccs[k]``."""
    def build(w: _Walk) -> None:
        _walk_plan(w, 0, gic.dist, V3_DIST_PLAN, nr, mpidrs[0] if mpidrs else 0, write)
        for k, mp in enumerate(mpidrs):
            _walk_plan(w, 1 + 2 * k, gic.redist(mp), V3_REDIST_PLAN, nr, mp, write)
            icc, names = gic.cpu_sysreg(mp), set(iccs[k])
            for n in ICC_PLAN:
                if n in names:
                    if write:
                        w.set(2 + 2 * k, icc.group, icc.attrs_of(n), n, width=64)
                    else:
                        w.get(2 + 2 * k, icc.group, icc.attrs_of(n), n)
    return build


def _v2_walk(gic: VgicV2, nr: int, vcpus: list[Any], giccs: Sequence[Iterable[str]], write: bool) -> Any:
    """A builder of the VGIC v2 walk: the distributor, then per vCPU its banked
    view of it and the GICC registers named in ``giccs[k]``."""
    def build(w: _Walk) -> None:
        _walk_plan(w, 0, gic.dist, V2_DIST_PLAN, nr, 0, write)
        for k, c in enumerate(vcpus):
            _walk_plan(w, 1 + 2 * k, gic.dist_as(c), V2_BANKED_PLAN, nr, 0, write)
            cpu, names = gic.cpu(c), set(giccs[k])
            for n in GICC_PLAN:
                if n in names:
                    (w.set if write else w.get)(2 + 2 * k, cpu.group, cpu.attrs_of(n), n)
    return build


def _cached(gic: Vgic, key: tuple[Any, ...], build: Any) -> tuple[Any, _Walk]:
    """The compiled walk for ``key`` on this device (built on first use)."""
    cache: dict[tuple[Any, ...], tuple[Any, _Walk]] = gic.__dict__.setdefault("_gicstate_walks", {})
    hit = cache.get(key)
    if hit is None:
        w = _Walk()
        build(w)
        hit = cache[key] = (gic.attr_program("KVM_SET_DEVICE_ATTR" if key[0] == "restore" else
                                             "KVM_GET_DEVICE_ATTR", w.items), w)
    return hit


def _read(gic: Vgic, key: tuple[Any, ...], build: Any, sections: list[dict[str, int]]) -> None:
    prog, w = _cached(gic, key, build)
    vals = prog.run()
    for sec, name, i, j in w.where:
        sections[sec][name] = vals[i] if j < 0 else vals[i] | vals[j] << 32


def _runs(w: _Walk) -> list[tuple[int, int, int, Any]]:
    """A restore walk as runs of one section and one kind, for bulk lookups:
    (section, kind, mask, itemgetter of the names); HIGH items fold into LOW."""
    runs: list[tuple[int, int, int, list[str]]] = []
    for sec, name, kind, mask in w.where:
        if kind == HIGH:
            continue
        if runs and runs[-1][0] == sec and runs[-1][1] == kind and runs[-1][2] == mask:
            runs[-1][3].append(name)
        else:
            runs.append((sec, kind, mask, [name]))
    return [(sec, kind, mask, operator.itemgetter(*names) if len(names) > 1 else
             (lambda d, n=names[0]: (d[n],))) for sec, kind, mask, names in runs]


def _pack(gic: Vgic, key: tuple[Any, ...], build: Any, sections: list[dict[str, int]],
          labels: list[str]) -> tuple[Any, list[int]]:
    """The values of every section for the compiled batch, and the batch.  A
    value that is no integer of its register's width is a SnapshotError here:
    no ioctl has been issued."""
    prog, w = _cached(gic, key, build)
    runs = w.__dict__.get("runs")
    if runs is None:
        runs = w.__dict__["runs"] = _runs(w)
    values: list[int] = []
    try:
        for sec, kind, mask, get in runs:
            vs = get(sections[sec])
            if set(map(type, vs)) != {int}:
                raise TypeError("not an int")   # bool, str, float, None...: named by _bad_value
            if kind == PLAIN:
                values += vs
            elif kind == COMPLEMENT:
                values += [~v & mask for v in vs]
            else:   # LOW: each 64-bit value as its two halves
                for v in vs:
                    values += (v & 0xFFFFFFFF, v >> 32)
        if any(not 0 <= v < lim for v, lim in zip(values, prog.limits)):
            raise ValueError("out of range")
    except (TypeError, ValueError):
        _bad_value(prog, w, sections, labels)
        raise
    return prog, values


def _bad_value(prog: Any, w: _Walk, sections: list[dict[str, int]], labels: list[str]) -> None:
    """Name the register whose value cannot be written (SnapshotError)."""
    for i, (sec, name, kind, mask) in enumerate(w.where):
        v = sections[sec][name]
        lim = prog.limits[i] if kind == PLAIN else 1 << 64 if kind in (LOW, HIGH) else mask + 1
        if type(v) is not int or not 0 <= v < lim:
            raise SnapshotError(f"the GIC document cannot be restored here (nothing was written):\n  "
                                f"{labels[sec]} {name}: {_check.show(v)} is not a {lim.bit_length() - 1}-bit value") from None


# -- save -----------------------------------------------------------------------------------
def save(gic: Vgic, vcpus: Sequence[Any] | None = None, its: Iterable[Its] = ()) -> dict[str, Any]:
    """The GIC's whole state as a document.  For an ITS (and LPIs) the
    KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES and KVM_DEV_ARM_ITS_SAVE_TABLES come
    first; ``doc["memory"]`` names the guest RAM that must travel with it.
    The registers are read by compiled batches, one C call each (two on v3:
    the ICC APnR set depends on ICC_CTLR_EL1.PRIbits)."""
    vcpus, its = _targets(gic, vcpus, its)
    nr = gic.nr_irqs
    if isinstance(gic, VgicV2) and its:
        raise ValueError("an ITS goes with a VGIC v3")
    doc: dict[str, Any] = GicDocument(format=FORMAT, version=VERSION, gic=3 if isinstance(gic, VgicV3) else 2,
                                      nr_irqs=nr, dist={}, vcpus={})
    if isinstance(gic, VgicV3) and its:
        gic.save_pending_tables()
    its_states = [i.save() for i in its]
    mpidrs = [c.mpidr for c in vcpus]
    _by_mpidr(vcpus, mpidrs)
    if isinstance(gic, VgicV3):
        g3 = gic
        entries = [{"id": c.id, "redist": {}, "icc": {}} for c in vcpus]
        sections = [doc["dist"]] + [d for e in entries for d in (e["redist"], e["icc"])]
        plain = [n for n in ICC_PLAN if n[:7] not in ("ICC_AP0", "ICC_AP1")]
        _read(g3, ("save", nr, tuple(mpidrs)), _v3_walk(g3, nr, mpidrs, [plain] * len(mpidrs), False), sections)
        aprs = tuple(_apr_count(e["icc"]["ICC_CTLR_EL1"]) for e in entries)

        def apr(w: _Walk) -> None:   # the APnR each vCPU's priority bits implement
            for k, mp in enumerate(mpidrs):
                icc = g3.cpu_sysreg(mp)
                for n in ICC_PLAN:
                    if n[:7] in ("ICC_AP0", "ICC_AP1") and int(n[8]) < aprs[k]:
                        w.get(2 + 2 * k, icc.group, icc.attrs_of(n), n)

        _read(g3, ("save-apr", tuple(mpidrs), aprs), apr, sections)
        for e in entries:   # the plan's order, for reading and for diff
            e["icc"] = {n: e["icc"][n] for n in ICC_PLAN if n in e["icc"]}
    elif isinstance(gic, VgicV2):
        g2 = gic
        gicc = _gicc_names(g2, vcpus[0]) if vcpus else []
        entries = [{"id": c.id, "dist": {}, "gicc": {}} for c in vcpus]
        sections = [doc["dist"]] + [d for e in entries for d in (e["dist"], e["gicc"])]
        regs = _v2_walk(g2, nr, vcpus, [gicc] * len(vcpus), False)
        _read(g2, ("save", nr, tuple(c.id for c in vcpus)), regs, sections)
    for mp, e in zip(mpidrs, entries):
        doc["vcpus"][_mpidr_key(mp)] = e
    doc["its"] = [{"base": s.base, "regs": s.regs} for s in its_states]
    doc["memory"] = _memory(doc, its_states)
    return seal(doc)


def _by_mpidr(vcpus: list[Any], mpidrs: list[int] | None = None) -> dict[str, Any]:
    """The vCPUs by MPIDR key; two with one MPIDR are a ValueError (a document is
    keyed by MPIDR: one of them would be lost)."""
    mpidrs = [c.mpidr for c in vcpus] if mpidrs is None else mpidrs
    out = {_mpidr_key(m): c for m, c in zip(mpidrs, vcpus)}
    if len(out) != len(vcpus):
        seen: dict[str, Any] = {}
        for m, c in zip(mpidrs, vcpus):
            if _mpidr_key(m) in seen:
                raise SnapshotError(f"vCPUs {seen[_mpidr_key(m)].id} and {c.id} have the same MPIDR {m:#x}: "
                                    "a GIC document is keyed by MPIDR")
            seen[_mpidr_key(m)] = c
    return out


def _digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _targets(gic: Any, vcpus: Any, its: Any) -> tuple[list[Any], list[Its]]:
    """The vCPU and ITS lists of save/restore, checked (TypeError before any ioctl)."""
    from ..vcpu import Vcpu
    _check.instance("gicstate", "gic", gic, Vgic, "a VgicV3 or VgicV2")
    if vcpus is None:
        vcpus = gic.vm.vcpus
    vcpus = _check.int_list("vcpus of gicstate", vcpus)
    for v in vcpus:
        _check.instance("gicstate", "each of vcpus", v, Vcpu, "a kvmdev Vcpu")
    its = _check.int_list("its of gicstate", its)
    for i in its:
        _check.instance("gicstate", "each of its", i, Its, "a kvmdev Its")
    return vcpus, its


def _document(name: str, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TypeError(f"gicstate.{name} takes a document (a dict, as save() or loads() gives), "
                        f"not {type(doc).__name__} {_check.show(doc)}")
    return doc


def _json(name: str, fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except RecursionError:
        raise SnapshotError(f"gicstate.{name}: the document is nested too deeply to be one") from None


def seal(doc: dict[str, Any]) -> dict[str, Any]:
    """Set the document's sha256 (save() does; call it after a deliberate edit).
    restore() refuses a document whose content no longer matches it."""
    _document("seal", doc)
    doc["sha256"] = _json("seal", _digest, doc)
    return doc


def loads(text: str) -> dict[str, Any]:
    """A document from JSON text; truncated or malformed text is a SnapshotError."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a register value")
    try:
        doc = json.loads(text, parse_constant=constant)
    except RecursionError:
        raise SnapshotError(f"not a {FORMAT} document: JSON nested too deeply") from None
    except ValueError as e:
        raise SnapshotError(f"not a {FORMAT} document: {e}") from None
    return GicDocument(doc) if isinstance(doc, dict) else doc


def _gicc_names(gic: VgicV2, vcpu: Any) -> list[str]:
    """The GICC registers this kernel implements (HAS, asked once per device)."""
    names: list[str] | None = gic.__dict__.get("_gicc_names")
    if names is None:
        cpu = gic.cpu(vcpu)
        names = gic.__dict__["_gicc_names"] = [n for n in GICC_PLAN if cpu.has(n)]
    return names


_ICC_NAMES: dict[int, set[str]] = {}


def _icc_names(icc_ctlr: int) -> set[str]:
    """The ICC registers a document holds for a vCPU with this ICC_CTLR_EL1."""
    n = _apr_count(icc_ctlr)
    out = _ICC_NAMES.get(n)
    if out is None:
        out = _ICC_NAMES[n] = {r for r in ICC_PLAN if not _apr_skip(r, icc_ctlr)}
    return out


def _apr_skip(name: str, icc_ctlr: int) -> bool:
    return name[:7] in ("ICC_AP0", "ICC_AP1") and int(name[8]) >= _apr_count(icc_ctlr)


def _memory(doc: dict[str, Any], its_states: list[ItsState]) -> list[dict[str, Any]]:
    """Guest RAM the state refers to: the LPI property and pending tables, the
    ITS command queues and tables."""
    out: list[dict[str, Any]] = []
    if its_states and doc["vcpus"]:
        first = next(iter(doc["vcpus"].values()))["redist"]
        prop = first["GICR_PROPBASER"]
        ids = (prop & 0x1F) + 1
        out.append({"what": "LPI property table", "gpa": prop & 0xFFFFFFFFFF << 12,
                    "size": max(0, (1 << ids) - 8192)})
        for key, v in doc["vcpus"].items():
            out.append({"what": f"LPI pending table of vCPU {key}",
                        "gpa": v["redist"]["GICR_PENDBASER"] & 0xFFFFFFFFF << 16, "size": (1 << ids) // 8})
    for n, s in enumerate(its_states):
        out += [{"what": f"ITS {n} {what}", "gpa": gpa, "size": size} for what, gpa, size in s.table_ranges()]
    return out


# -- restore ----------------------------------------------------------------------------------
def restore(gic: Vgic, doc: dict[str, Any], vcpus: Sequence[Any] | None = None, its: Iterable[Its] = (), *,
            rollback: bool = True) -> None:
    """Write a saved document back: validated whole first (nothing is written if
    any check fails), then in the kernel's order, the GIC's registers in one
    compiled batch, then each ITS's sequence.  The VGIC must have the document's
    NR_IRQS and vCPUs (by MPIDR); the guest RAM of ``doc["memory"]`` must be in
    place before (the ITS and LPI tables are read from it).

    If the kernel still refuses a step (an ITS table it cannot read...), the
    registers already written are put back as they were read before the first
    write, and the error's note says so, or names what could not be put back.
    That read costs about a save; ``rollback=False`` skips it (a restore into a
    fresh VM that is discarded on failure)."""
    vcpus, its = _targets(gic, vcpus, its)
    by_mpidr = _by_mpidr(vcpus)
    _validate(gic, doc, by_mpidr, its)
    packed = _pack_doc(gic, doc, vcpus, by_mpidr)     # every value checked: still nothing written
    if not rollback:
        _write_doc(gic, doc, its, packed, [])
        return
    before = _registers(gic, vcpus, its)
    touched: list[int] = []
    try:
        _write_doc(gic, doc, its, packed, touched)
    except BaseException as e:
        add_note(e, _roll_back(gic, vcpus, its, by_mpidr, before, touched))
        raise


def _write_doc(gic: Vgic, doc: dict[str, Any], its: list[Its], packed: tuple[Any, list[int]],
               touched: list[int]) -> None:
    """The GIC batch, then each ITS: reset first where it has a frame (a live
    ITS: RESTORE_TABLES adds to what the ITS holds, and answers EEXIST for a
    collection it has, vgic_its_restore_cte; CTRL_RESET empties it, vgic_its_reset,
    as arm-vgic-its.rst's ITS Reset State says), then the documented sequence.
    ``touched`` gets the index of each ITS before its first write."""
    prog, values = packed
    prog.run(values)
    for n, (dev, st) in enumerate(zip(its, doc.get("its", []))):
        touched.append(n)
        if dev.base != UNDEF:
            dev.reset()
        dev.restore(ItsState(st["base"], dict(st["regs"])))


UNDEF = (1 << 64) - 1   # VGIC_ADDR_UNDEF


def _pack_doc(gic: Vgic, doc: dict[str, Any], vcpus: list[Any], by_mpidr: dict[str, Any]) -> tuple[Any, list[int]]:
    """The GIC registers' batch and values (SnapshotError for a value that is
    not an integer of its register's width)."""
    nr = doc["nr_irqs"]
    keys = list(doc["vcpus"])
    entries = [doc["vcpus"][k] for k in keys]
    if isinstance(gic, VgicV3):
        g3 = gic
        mps = [int(k, 16) for k in keys]
        iccs = tuple(tuple(e["icc"]) for e in entries)
        sections = [doc["dist"]] + [d for e in entries for d in (e["redist"], e["icc"])]
        regs = _v3_walk(g3, nr, mps, iccs, True)
        labels = ["dist"] + [f"vCPU {k} {part}" for k in keys for part in ("redist", "icc")]
        return _pack(g3, ("restore", nr, tuple(mps), iccs), regs, sections, labels)
    if isinstance(gic, VgicV2):
        g2 = gic
        cs = [by_mpidr[k] for k in keys]
        gicc = tuple(tuple(e["gicc"]) for e in entries)
        sections = [doc["dist"]] + [d for e in entries for d in (e["dist"], e["gicc"])]
        regs = _v2_walk(g2, nr, cs, gicc, True)
        labels = ["dist"] + [f"vCPU {k} {part}" for k in keys for part in ("dist", "gicc")]
        return _pack(g2, ("restore", nr, tuple(c.id for c in cs), gicc), regs, sections, labels)
    raise TypeError(f"gicstate restores a VGIC v2 or v3, not {type(gic).__name__}")


def _registers(gic: Vgic, vcpus: list[Any], its: list[Its]) -> tuple[dict[str, Any], list[dict[str, int] | None]]:
    """The GIC's and each ITS's registers, by reads only (an ITS save would write
    its tables to guest RAM): what a failed restore is rolled back to."""
    regs = [None if dev.base == (1 << 64) - 1 else {n: int(dev.regs[n]) for n in RESTORE_ORDER + ("GITS_CTLR",)}
            for dev in its]
    return save(gic, vcpus), regs


def _roll_back(gic: Vgic, vcpus: list[Any], its: list[Its], by_mpidr: dict[str, Any],
               before: tuple[dict[str, Any], list[dict[str, int] | None]], touched: list[int]) -> str:
    """Put the registers back as ``before`` (an ITS only if the restore reached
    it); say what is still different."""
    doc, its_regs = before
    failed: list[str] = []
    for n, (dev, regs) in enumerate(zip(its, its_regs)):
        if regs is None or n not in touched:
            continue
        if any(regs[f"GITS_BASER{i}"] >> 63 for i in range(8)):
            # its mappings are gone with the reset: KVM shows them only through
            # SAVE_TABLES, which writes guest RAM the document's own tables may occupy
            failed.append(f"ITS {n}: the device, event and collection mappings it held were dropped by "
                          "KVM_DEV_ARM_ITS_CTRL_RESET and are not put back (its registers are)")
        try:        # CTRL_RESET: disabled, the tables unmapped, GITS_CBASER/CREADR/CWRITER 0
            dev.reset()
            for name in RESTORE_ORDER:
                if dev.regs[name] != regs[name]:
                    dev.regs[name] = regs[name]
            dev.regs["GITS_CTLR"] = regs["GITS_CTLR"]
        except Exception as e:  # noqa: BLE001 - reported in the note
            failed.append(f"ITS {n}: {e}")
    # twice: the first pass also clears GICR_CTLR.EnableLPIs, which keeps
    # GICR_PROPBASER/PENDBASER fixed while it is set; they go back on the second
    for _ in range(2):
        try:
            _write_doc(gic, doc, [], _pack_doc(gic, doc, vcpus, by_mpidr), [])
        except Exception as e:      # noqa: BLE001
            failed.append(f"the GIC registers: {e}")
            break
        if not diff(doc, save(gic, vcpus)):
            break
    now_doc, now_its = _registers(gic, vcpus, its)
    left = diff(doc, now_doc)
    left += [f"ITS {n} {k}: {a[k]:#x} -> {b[k]:#x}" for n, (a, b) in enumerate(zip(its_regs, now_its))
             if a and b for k in a if a[k] != b[k]]
    if not left and not failed:
        return ("gicstate.restore: the registers written before this failure were put back "
                "(read back: the GIC and ITS registers are as before the restore)")
    return ("gicstate.restore: the registers written before this failure could not all be put back: "
            + "; ".join(failed + left[:8]) + (" ..." if len(left) > 8 else ""))


_PLAN_NAMES: dict[tuple[int, int], set[str]] = {}


def _plan_names(plan: list[Step], nr: int) -> set[str]:
    """Every key a plan gives a document section at NR_IRQS ``nr`` (cached)."""
    out = _PLAN_NAMES.get((id(plan), nr))
    if out is None:
        out = set()
        for step in plan:
            if step.level:
                out |= {f"LEVEL_INFO{i // 32}" for i in _level_intids(step, nr)}
            else:
                out |= set(_names(step, nr))
        _PLAN_NAMES[(id(plan), nr)] = out
    return out


def _check_regs(problems: list[str], where: str, values: Any, want: set[str]) -> None:
    """The register names of one section.  Their values are checked as they are
    packed for the one batch that writes them, still before any ioctl (_write)."""
    if not isinstance(values, dict):
        problems.append(f"{where}: not a register table")
        return
    have = values.keys()
    if have != want:
        missing, extra = want - set(have), set(have) - want
        if missing:
            problems.append(f"{where}: missing {', '.join(sorted(missing)[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            problems.append(f"{where}: unknown {', '.join(sorted(extra)[:6])}{' ...' if len(extra) > 6 else ''}")


def _validate(gic: Vgic, doc: Any, by_mpidr: dict[str, Any], its: list[Its]) -> None:
    """Every problem at once, before any write."""
    problems: list[str] = []
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotError(f"not a {FORMAT} document")
    try:
        intact = doc.get("sha256") == _json("restore", _digest, doc)
    except (TypeError, ValueError):   # not JSON data any more
        intact = False
    if not intact:
        raise SnapshotError("the document was altered or corrupted: its sha256 does not match its content "
                            "(gicstate.seal() re-signs a deliberate edit)")
    if doc.get("version") != VERSION:
        raise SnapshotError(f"{FORMAT} version {doc.get('version')!r}: this kvmdev reads version {VERSION}")
    v3 = isinstance(gic, VgicV3)
    if doc.get("gic") != (3 if v3 else 2):
        raise SnapshotError(f"the document is of a GICv{doc.get('gic')}, the device a {gic.type_name}")
    nr = doc.get("nr_irqs")
    if nr != gic.nr_irqs:
        raise SnapshotError(f"NR_IRQS: the document has {nr}, the VGIC {gic.nr_irqs} "
                            "(set nr_irqs before KVM_DEV_ARM_VGIC_CTRL_INIT)")
    vc = doc.get("vcpus")
    if not isinstance(vc, dict) or set(vc) != set(by_mpidr):
        have = sorted(vc) if isinstance(vc, dict) else vc
        raise SnapshotError(f"vCPUs by MPIDR: the document has {have}, the VM {sorted(by_mpidr)}")
    dist_plan = V3_DIST_PLAN if v3 else V2_DIST_PLAN
    _check_regs(problems, "dist", doc.get("dist"), _plan_names(dist_plan, nr))
    iidr_doc = doc.get("dist", {}).get("GICD_IIDR") if isinstance(doc.get("dist"), dict) else None
    if isinstance(iidr_doc, int):
        iidr = gic.get_attr(gic.GRP_DIST, 0x8)
        if (iidr_doc ^ iidr) & ~0xF000 or not 2 <= iidr_doc >> 12 & 0xF <= iidr >> 12 & 0xF:
            problems.append(f"GICD_IIDR {iidr_doc:#x} cannot be restored on this kernel's {iidr:#x} "
                            "(same implementer and product, revision 2..current)")
    for key, entry in vc.items():
        if not isinstance(entry, dict):
            problems.append(f"vCPU {key}: not a table")
            continue
        if v3:
            _check_regs(problems, f"vCPU {key} redist", entry.get("redist"), _plan_names(V3_REDIST_PLAN, nr))
            icc = entry.get("icc")
            ctlr = icc.get("ICC_CTLR_EL1") if isinstance(icc, dict) else None
            _check_regs(problems, f"vCPU {key} icc", icc, _icc_names(ctlr if isinstance(ctlr, int) else 0))
        else:
            _check_regs(problems, f"vCPU {key} dist", entry.get("dist"), _plan_names(V2_BANKED_PLAN, nr))
            # the GICC registers this kernel implements (HAS), as a save here would have them
            _check_regs(problems, f"vCPU {key} gicc", entry.get("gicc"),
                        set(_gicc_names(gic, by_mpidr[key])) if isinstance(gic, VgicV2) else set())
    for n, dev in enumerate(its):
        if dev.base != UNDEF and dev.regs["GITS_CTLR"] & 1:
            raise SequenceError(f"ITS {n} is enabled: restore into a disabled ITS, GITS_CTLR last "
                                "(arm-vgic-its.rst, ITS Restore Sequence); nothing was written")
    if v3 and not problems:
        _check_icc_ctlr(problems, gic, vc)
    saved_its = doc.get("its", [])
    if not isinstance(saved_its, list) or len(saved_its) != len(its):
        n = len(saved_its) if isinstance(saved_its, list) else saved_its
        problems.append(f"ITS: the document has {n}, {len(its)} given to restore into")
    else:
        for n, (dev, st) in enumerate(zip(its, saved_its)):
            if not isinstance(st, dict) or not isinstance(st.get("regs"), dict):
                problems.append(f"ITS {n}: not an ITS state")
                continue
            bad = [k for k, v in st["regs"].items()
                   if k not in ITS_REGS or type(v) is not int or not 0 <= v < 1 << GITS.lookup(k)[0].width]
            bad += sorted(ITS_REGS - set(st["regs"]))   # every GITS_* register is in a saved ITS
            b = st.get("base")
            if bad or type(b) is not int or not 0 <= b < UNDEF or b % 0x10000:
                problems.append(f"ITS {n}: bad registers {', '.join(map(str, bad[:6]))}" if bad else
                                f"ITS {n}: base {_check.show(b)} is not a 64K-aligned guest physical address")
                continue
            rev = st["regs"].get("GITS_IIDR", 0) >> 12 & 0xF
            base = dev.base
            if base != (1 << 64) - 1 and base != st.get("base"):
                problems.append(f"ITS {n}: its frame is at {base:#x}, the document's at {st.get('base')!r}")
            elif base != (1 << 64) - 1 and rev > dev.regs.fields("GITS_IIDR")["Revision"]:
                problems.append(f"ITS {n}: table ABI revision {rev} is newer than this kernel's")
    if not problems:
        _check_memory(problems, gic, doc)
    if problems:
        raise SnapshotError("the GIC document cannot be restored here (nothing was written):\n  "
                            + "\n  ".join(problems))


def _check_icc_ctlr(problems: list[str], gic: Vgic, vc: dict[str, Any]) -> None:
    """ICC_CTLR_EL1 as set_gic_ctlr checks it against the vCPU's current value:
    PRIbits and IDbits no higher, SEIS and A3V equal (else EINVAL part-way)."""
    for key, entry in vc.items():
        want = entry["icc"]["ICC_CTLR_EL1"]
        if type(want) is not int:
            continue                     # named by the value check (_pack)
        have = int(gic.cpu_sysreg(int(key, 16))["ICC_CTLR_EL1"])   # type: ignore[attr-defined]
        f = {"PRIbits": (8, 7), "IDbits": (11, 7), "SEIS": (14, 1), "A3V": (15, 1)}
        w, h = ({k: v >> sh & m for k, (sh, m) in f.items()} for v in (want, have))
        if w["PRIbits"] > h["PRIbits"] or w["IDbits"] > h["IDbits"] or (w["SEIS"], w["A3V"]) != (h["SEIS"], h["A3V"]):
            problems.append(f"vCPU {key} icc ICC_CTLR_EL1 {want:#x}: this vCPU has {have:#x} (PRIbits and IDbits "
                            "cannot grow, SEIS and A3V are the host's)")


def _check_memory(problems: list[str], gic: Vgic, doc: dict[str, Any]) -> None:
    """doc["memory"] is what the document's own registers name (the LPI and ITS
    tables), and, where the VM's memory slots are kvmdev's (Vm.add_memory), each
    range lies in one: the kernel would fail the restore part-way (EFAULT)."""
    states = [ItsState(st["base"], st["regs"]) for st in doc.get("its", [])]
    want = _memory(doc, states)
    if doc.get("memory") != want:
        problems.append("memory: the guest RAM ranges do not match the document's GICR_PROPBASER/PENDBASER "
                        "and GITS_CBASER/BASER<n>")
        return
    if not gic.vm.memory:
        return
    for r in want:
        if r["size"]:
            try:
                gic.vm.guest_memory(r["gpa"], r["size"])
            except ValueError:
                problems.append(f"memory: the {r['what']} ({r['gpa']:#x}+{r['size']:#x}) is in no memory slot "
                                "of the VM")


# -- diff ---------------------------------------------------------------------------------------
def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Register-level differences, one line each: ``where NAME: a -> b``."""
    out: list[str] = []

    def walk(path: str, x: Any, y: Any) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                p = f"{path} {k}".strip()
                if k not in y:
                    out.append(f"{p}: only in a ({_fmt(x[k])})")
                elif k not in x:
                    out.append(f"{p}: only in b ({_fmt(y[k])})")
                else:
                    walk(p, x[k], y[k])
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (p, q) in enumerate(zip(x, y)):
                walk(f"{path}[{i}]", p, q)
        elif x != y:
            out.append(f"{path}: {_fmt(x)} -> {_fmt(y)}")

    a, b = _document("diff", a), _document("diff", b)
    _json("diff", walk, "", {k: v for k, v in a.items() if k != "sha256"}, {k: v for k, v in b.items() if k != "sha256"})
    return out


def _fmt(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else json.dumps(v)


def dumps(doc: dict[str, Any]) -> str:
    """JSON text of a document (registers as numbers)."""
    return _json("dumps", json.dumps, _document("dumps", doc), indent=1, sort_keys=False)


__all__ = ["save", "restore", "diff", "dumps", "loads", "seal", "SnapshotError", "SequenceError", "FORMAT",
           "VERSION"]
