#!/usr/bin/env python3
"""Benchmark (`make bench`): GIC state save and restore with kvmdev.devices.gicstate
against a baseline issuing the very same ioctls, measured in the same run.

Shape: a VGIC v3 with NR_IRQS (default 992) and an ITS, N vCPUs (default 64),
registers set to a busy state (enables, priorities, routing, configuration,
ICC state, LPI tables, ITS tables valid), the ITS left disabled so that a
document restores onto the same VM again and again.

kvmdev rows:   gicstate.save(gic, vcpus, its=[its]) and gicstate.restore(...), with
               rollback=False and with the default rollback (the state read first).
Baseline rows: the ioctls kvmdev issued for one save and one restore, recorded
               at the backend boundary (every KVM_{HAS,GET,SET}_DEVICE_ATTR with
               its group, attr and value; every KVM_GET_ONE_REG) and replayed:
  real  by bench/gic_replay.c (``--c-replay LIB``, built as a shared object):
        a C loop over the recorded ioctls on this VM's own fds, called through
        ctypes in this process (KVM answers EIO to any other process), timing
        itself; its rounds alternate with kvmdev's (a save and a restore each,
        the same document, so the state is the same before every round);
  mock  by the thinnest Python loop over the mock backend's attr() (no C
        program can call into the in-process mock): one full mock ioctl per
        op, where kvmdev's attr batches take the mock's batch path (dispatch
        and locks once per batch), so kvmdev is well under 1x there.
Each figure is the minimum over --repeats runs (the median is printed next to
it); ratios are kvmdev / baseline.  Target on the real kernel: <= 1.10x.
Nothing is asserted; the exit status is 0 whatever the figures.

    python3 bench/bench_gicstate.py [--backend mock|real] [--vcpus N] [--irqs N]
                                    [--repeats N] [--c-replay BINARY] [--json FILE]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kvmdev.devices import gicstate  # noqa: E402
from kvmdev.fd import Kvm  # noqa: E402

DIST, REDIST, ITS_BASE = 0x08000000, 0x080A0000, 0x08080000
RAM_GPA = 0x40000000
PROP, CT, DT, CMDQ, PEND0 = RAM_GPA, RAM_GPA + 0x10000, RAM_GPA + 0x20000, RAM_GPA + 0x30000, RAM_GPA + 0x100000


class Recorder:
    """A backend that records the ioctls going through it (when ``phase`` is set)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.phase: str | None = None
        self.ops: list[tuple[str, int, str, int, int, int]] = []   # phase, fd, op, group, attr, value
        a = inner.arch
        self.ffi = a.ffi
        self.reqs = dict(zip(a.attr_requests, ("has", "get", "set")))
        self.one_reg = a.request("KVM_GET_ONE_REG")

    # the real backend's C fast path of typed attributes would bypass the recording
    attr_int_get = attr_int_set = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _value(self, op: str, addr: int) -> int:
        return int(self.ffi.cast("uint64_t *", addr)[0]) if op == "set" and addr else 0

    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int:
        if self.phase:
            op = self.reqs[request]
            self.ops.append((self.phase, fd, op, group, attr, self._value(op, int(self.ffi.cast("uintptr_t", addr)))))
        return int(self.inner.attr(fd, request, group, attr, addr))

    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int:
        if self.phase:
            op = self.reqs[request]
            for i in range(count):
                s = attrs[i]
                self.ops.append((self.phase, fd, op, s.group, s.attr, self._value(op, s.addr)))
        return int(self.inner.attr_batch(fd, request, attrs, count, err))

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        if self.phase and request == self.one_reg:
            self.ops.append((self.phase, fd, "onereg", 0, int(arg.id), 0))
        return int(self.inner.ioctl(fd, request, arg))


def build(kvm: Kvm, nvcpus: int, nr_irqs: int) -> tuple[Any, ...]:
    vm = kvm.create_vm()
    vcpus = [vm.create_vcpu(i) for i in range(nvcpus)]
    for c in vcpus:
        c.vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    its = vm.create_device("ARM_VGIC_ITS")
    its.base = ITS_BASE
    gic.dist_base, gic.redist_base = DIST, REDIST
    gic.nr_irqs = nr_irqs
    gic.init()
    ram_size = PEND0 - RAM_GPA + nvcpus * 0x10000
    mem = vm.add_memory(RAM_GPA, ram_size)
    return vm, vcpus, gic, its, mem, ram_size


def busy(gic: Any, its: Any, vcpus: list[Any], nr_irqs: int) -> None:
    d = gic.dist
    d["GICD_CTLR"] = 2
    for n in range(1, nr_irqs // 32):
        d[f"GICD_IGROUPR{n}"] = 0xFFFFFFFF
        d[f"GICD_ISENABLER{n}"] = 0x5555AAAA ^ n
    for n in range(8, nr_irqs // 4):
        d[f"GICD_IPRIORITYR{n}"] = 0x80A0C0E0 ^ (n & 7) << 3
    for i in range(32, nr_irqs):
        d[f"GICD_IROUTER{i}"] = vcpus[i % len(vcpus)].mpidr & 0xFFFFFF
    for n, c in enumerate(vcpus):
        r = gic.redist(c)
        r["GICR_PROPBASER"], r["GICR_PENDBASER"] = PROP | 15, PEND0 + n * 0x10000
        r["GICR_ISENABLER0"] = 1 << (16 + n % 16)
        icc = gic.cpu_sysreg(c)
        icc["ICC_PMR_EL1"], icc["ICC_IGRPEN1_EL1"] = 0xF0, 1
    r = its.regs
    r["GITS_CBASER"], r["GITS_BASER0"], r["GITS_BASER1"] = 1 << 63 | CMDQ, 1 << 63 | DT, 1 << 63 | CT


class GicOp(ctypes.Structure):
    """struct gic_op of bench/gic_replay.c."""
    _fields_ = [("fd", ctypes.c_int32), ("kind", ctypes.c_int32), ("group", ctypes.c_uint64),
                ("attr", ctypes.c_uint64), ("value", ctypes.c_uint64)]


def timed(fn: Any, repeats: int) -> list[int]:
    out = []
    for _ in range(repeats):
        gc.disable()
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
        gc.enable()
    return out


def python_replay(backend: Any, ops: list[tuple[int, str, int, int, int]]) -> None:
    """The mock baseline: each recorded op through backend.attr / ioctl, nothing else."""
    ffi, a = backend.arch.ffi, backend.arch
    reqs = dict(zip(("has", "get", "set"), a.attr_requests))
    one_reg = a.request("KVM_GET_ONE_REG")
    buf = ffi.new("uint64_t *")
    reg = ffi.new("struct kvm_one_reg *", {"addr": int(ffi.cast("uintptr_t", buf))})
    attr = backend.attr
    for fd, op, g, at, v in ops:
        if op == "onereg":
            reg.id = at
            backend.ioctl(fd, one_reg, reg)
        else:
            buf[0] = v
            attr(fd, reqs[op], g, at, buf)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("mock", "real"), default="mock")
    p.add_argument("--vcpus", type=int, default=64)
    p.add_argument("--irqs", type=int, default=992)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--c-replay", help="bench/gic_replay.c built as a shared object (real backend)")
    p.add_argument("--json")
    args = p.parse_args()

    if args.backend == "real":
        from kvmdev.backends.real import RealBackend
        inner: Any = RealBackend()
    else:
        from kvmdev.backends.mock import MockBackend
        inner = MockBackend("arm64", kernel="6.12", gic=3)
    rec = Recorder(inner)
    kvm = Kvm(rec)   # type: ignore[arg-type]
    vm, vcpus, gic, its, mem, ram_size = build(kvm, args.vcpus, args.irqs)
    rec.phase = "setup"
    busy(gic, its, vcpus, args.irqs)
    rec.phase = None

    def save() -> Any:
        return gicstate.save(gic, vcpus, its=[its])

    doc = save()
    gicstate.restore(gic, doc, vcpus, its=[its])          # warm caches, check it restores
    rec.phase = "save"
    doc = save()
    rec.phase = "restore"       # the baseline: the restore's own ioctls, no read-back for a rollback
    gicstate.restore(gic, doc, vcpus, its=[its], rollback=False)
    rec.phase = None
    assert gicstate.diff(doc, save()) == [], "the restored state differs"
    n_save = sum(1 for o in rec.ops if o[0] == "save")
    n_restore = sum(1 for o in rec.ops if o[0] == "restore")

    def restore() -> None:
        gicstate.restore(gic, doc, vcpus, its=[its], rollback=False)

    def restore_rb() -> None:       # the default: reads the state first, to put it back on a failure
        gicstate.restore(gic, doc, vcpus, its=[its])

    base_label = ""
    k_save: list[int] = []
    k_restore: list[int] = []
    k_restore_rb: list[int] = []
    b_save: list[int] = []
    b_restore: list[int] = []
    replay: Any = None
    ops = {ph: [(fd, op, g, a, v) for p_, fd, op, g, a, v in rec.ops if p_ == ph] for ph in ("save", "restore")}
    if args.backend == "real" and args.c_replay:
        lib = ctypes.CDLL(os.path.abspath(args.c_replay), use_errno=True)
        lib.gic_replay.restype = ctypes.c_long
        kinds = {"get": 0, "set": 1, "has": 2, "onereg": 3}
        arrays = {ph: (GicOp * len(o))(*[GicOp(fd, kinds[op], g, a, v) for fd, op, g, a, v in o])
                  for ph, o in ops.items()}

        def c_replay(ph: str) -> int:
            t = int(lib.gic_replay(arrays[ph], len(arrays[ph])))
            if t < 0:
                fd, op, g, a, _ = ops[ph][-1 - t]
                raise SystemExit(f"gic_replay: {ph} op {-1 - t} ({op} fd {fd} group {g:#x} attr {a:#x}) failed: "
                                 f"{os.strerror(ctypes.get_errno() or 0)}")
            return t
        replay = c_replay
        base_label = "C (bench/gic_replay.c, via ctypes): the same ioctls on the same VM, rounds interleaved"
    for _ in range(args.repeats):   # interleaved rounds: kvmdev, then the baseline
        k_save += timed(save, 1)
        k_restore += timed(restore, 1)
        k_restore_rb += timed(restore_rb, 1)
        if replay is not None:
            b_save.append(replay("save"))
            b_restore.append(replay("restore"))
        elif args.backend == "mock":
            b_save += timed(lambda: python_replay(inner, ops["save"]), 1)
            b_restore += timed(lambda: python_replay(inner, ops["restore"]), 1)
            base_label = "Python loop over the mock backend's attr()"
    kernel = platform.release() if args.backend == "real" else "mock 6.12"
    results: dict[str, Any] = {
        "backend": args.backend, "kernel": kernel, "vcpus": args.vcpus, "nr_irqs": args.irqs,
        "ioctls": {"save": n_save, "restore": n_restore},
        "kvmdev": {"save_ns": k_save, "restore_ns": k_restore, "restore_rollback_ns": k_restore_rb}}
    if b_save:
        results["baseline"] = {"what": base_label, "save_ns": b_save, "restore_ns": b_restore}

    print(f"GIC save/restore: VGIC v3 + ITS, {args.vcpus} vCPUs, NR_IRQS {args.irqs}, backend {args.backend} "
          f"(kernel {kernel}); ioctls per save {n_save}, per restore {n_restore}; "
          f"min (median) of {args.repeats}")
    rows = [("save", k_save, b_save), ("restore, rollback=False", k_restore, b_restore),
            ("restore (default: state read first for a rollback)", k_restore_rb, b_restore)]
    for name, k, b in rows:
        line = f"  {name}\n    kvmdev {min(k) / 1e6:9.2f} ms ({statistics.median(k) / 1e6:.2f})"
        if b:
            line += (f"   baseline {min(b) / 1e6:9.2f} ms ({statistics.median(b) / 1e6:.2f})"
                     f"   ratio {min(k) / min(b):5.2f}x")
        print(line)
    if base_label:
        print(f"  baseline: {base_label}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    vm.close()
    kvm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
