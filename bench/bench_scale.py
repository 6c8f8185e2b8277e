#!/usr/bin/env python3
"""Benchmark (`make bench`): how kvmdev's costs grow.

  gic    mock GIC save + restore (VGIC v3 + ITS, busy state as bench_gicstate.py
         sets it; restore with the default rollback read) against the number of
         vCPUs (1, 8, 64, 512) and NR_IRQS (64, 992): min of --repeats, in ms.
  live   per-call time of the hot paths against the number of live objects in
         the process (1, 10, 100, 1000): N VMs (one vCPU each), N vCPUs in one
         VM (real x86 KVM: the system attribute, vcpu.tsc_offset, vcpu.run() of
         an `out` loop), and N devices (the arm64 mock: VGIC v3 + N-1 ITS,
         gic.nr_irqs).  A cost that grows with N is a lookup that scales with
         the objects: a defect.

Text on stdout; --json FILE for the figures, --png FILE for a plot of both
(matplotlib, the optional `bench` extra: without it the plot is skipped).

    python3 bench/bench_scale.py [--json FILE] [--png FILE] [--quick]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from itertools import repeat
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gicstate as bg  # noqa: E402  (build, busy: the same GIC state)

import kvmdev  # noqa: E402
from kvmdev.devices import gicstate  # noqa: E402

RESET, IO_LOOP = 0xFFFFFFF0, bytes([0xE6, 0x10, 0xEB, 0xFC])   # out 0x10, al; jmp .-4


def per_call(fn: Callable[[], Any], n: int = 2000, samples: int = 7) -> float:
    """Min over ``samples`` of the mean ns per call of n calls, gc off."""
    best = float("inf")
    for _ in range(samples):
        gc.disable()
        t0 = time.perf_counter_ns()
        for _ in repeat(None, n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
        gc.enable()
    return best


def timed2(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Min wall ms and min CPU ms (this process's, time.process_time: what a loaded
    machine's other processes do not add) over ``repeats`` runs, gc off."""
    wall, cpu = [], []
    for _ in range(repeats):
        gc.disable()
        t0, c0 = time.perf_counter_ns(), time.process_time_ns()
        fn()
        wall.append(time.perf_counter_ns() - t0)
        cpu.append(time.process_time_ns() - c0)
        gc.enable()
    return min(wall) / 1e6, min(cpu) / 1e6


def gic_curve(vcpus: list[int], irqs: list[int], repeats: int) -> list[dict[str, Any]]:
    print("\nmock GIC save + restore (VGIC v3 + ITS, default restore: rollback read included), "
          f"min of {repeats}, ms (wall; and this process's CPU time)")
    print(f"  {'vCPUs':>6} {'NR_IRQS':>8} {'save':>9} {'restore':>9} {'total':>9} {'total CPU':>11}")
    out = []
    kvm = kvmdev.open("mock", arch="arm64")
    for ni in irqs:
        for nv in vcpus:
            vm, cpus, gic, its, mem, _ = bg.build(kvm, nv, ni)
            bg.busy(gic, its, cpus, ni)
            doc = gicstate.save(gic, cpus, its=[its])
            (s, s_cpu), (r, r_cpu) = (timed2(lambda: gicstate.save(gic, cpus, its=[its]), repeats),
                                      timed2(lambda: gicstate.restore(gic, doc, cpus, its=[its]), repeats))
            out.append({"vcpus": nv, "nr_irqs": ni, "save_ms": s, "restore_ms": r, "total_ms": s + r,
                        "save_cpu_ms": s_cpu, "restore_cpu_ms": r_cpu, "total_cpu_ms": s_cpu + r_cpu})
            print(f"  {nv:>6} {ni:>8} {s:>9.1f} {r:>9.1f} {s + r:>9.1f} {s_cpu + r_cpu:>11.1f}")
            vm.close()
    kvm.close()
    return out


def live_curve(counts: list[int]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        kvm = kvmdev.open("real")
        if kvm.arch != "x86_64":
            raise kvmdev.KvmUnavailable(0, "open", "x86 guest code only")
    except (kvmdev.KvmUnavailable, OSError) as e:
        print(f"\nlive objects on real KVM: skipped ({e})")
        kvm = None
    if kvm is not None:
        for kind in ("vms", "vcpus"):
            print(f"\nper-call ns against live {'VMs (one vCPU each)' if kind == 'vms' else 'vCPUs in one VM'} "
                  "(real x86 KVM)")
            print(f"  {'N':>6} {'kvm.xcomp_guest_supp':>22} {'vcpu.tsc_offset':>16} {'vcpu.run()':>11}")
            vm0 = kvm.create_vm()
            vm0.add_memory(0xFFFF0000, 0x10000).write(RESET, IO_LOOP)
            cpu0 = vm0.create_vcpu(0)
            held: list[Any] = []
            rows = out[kind] = []
            for n in counts:
                while 1 + len(held) < n:
                    if kind == "vms":
                        v = kvm.create_vm()
                        held += [v, v.create_vcpu(0)]
                        n_now = 1 + len(held) // 2
                    else:
                        held.append(vm0.create_vcpu(len(held) + 1))
                        n_now = 1 + len(held)
                    if n_now >= n:
                        break
                row = {"n": n, "system_attr_ns": per_call(lambda: kvm.xcomp_guest_supp),
                       "vcpu_attr_ns": per_call(lambda: cpu0.tsc_offset),
                       "run_ns": per_call(cpu0.run, 500)}
                rows.append(row)
                print(f"  {n:>6} {row['system_attr_ns']:>22,.0f} {row['vcpu_attr_ns']:>16,.0f} {row['run_ns']:>11,.0f}")
            for o in reversed(held):
                o.close()
            cpu0.close()
            vm0.close()
        kvm.close()
    print("\nper-call ns against live devices (arm64 mock: VGIC v3 + N-1 ITS; gic.nr_irqs)")
    print(f"  {'N':>6} {'gic.nr_irqs':>12}")
    mk = kvmdev.open("mock", arch="arm64")
    vm = mk.create_vm()
    vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    gic.nr_irqs = 128
    its: list[Any] = []
    rows = out["devices"] = []
    for n in counts:
        its += [vm.create_device("ARM_VGIC_ITS") for _ in range(n - 1 - len(its))]
        row = {"n": n, "mock_gic_attr_ns": per_call(lambda: gic.nr_irqs, 300)}
        rows.append(row)
        print(f"  {n:>6} {row['mock_gic_attr_ns']:>12,.0f}")
    mk.close()
    return out


def plot(path: str, gic: list[dict[str, Any]], live: dict[str, list[dict[str, Any]]]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nplot skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for ni in sorted({r["nr_irqs"] for r in gic}):
        rows = [r for r in gic if r["nr_irqs"] == ni]
        for key, style in (("save_ms", "--"), ("restore_ms", ":"), ("total_ms", "-"), ("total_cpu_ms", "-.")):
            a.plot([r["vcpus"] for r in rows], [r[key] for r in rows], style, marker="o",
                   label=f"{key[:-3].replace('_', ' ')}, NR_IRQS {ni}")
    a.axhline(100, color="grey", lw=0.8)
    a.set(xscale="log", yscale="log", xlabel="vCPUs", ylabel="ms",
          title="mock GIC save + restore (VGIC v3 + ITS)")
    a.legend(fontsize=7)
    labels = {"system_attr_ns": "kvm.xcomp_guest_supp", "vcpu_attr_ns": "vcpu.tsc_offset",
              "run_ns": "vcpu.run()", "mock_gic_attr_ns": "mock gic.nr_irqs"}
    for kind, rows in live.items():
        for key in rows[0]:
            if key != "n":
                b.plot([r["n"] for r in rows], [r[key] for r in rows], marker="o", label=f"{labels[key]} ({kind})")
    b.set(xscale="log", yscale="log", xlabel="live objects in the process", ylabel="ns per call",
          title="hot paths against live VMs / vCPUs / devices")
    b.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--png")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args(argv)
    vcpus = [1, 8] if args.quick else [1, 8, 64, 512]
    counts = [1, 10] if args.quick else [1, 10, 100, 1000]
    print(f"kvmdev bench: scale curves (load average {os.getloadavg()[0]:.2f})")
    gic = gic_curve(vcpus, [64, 992], args.repeats)
    live = live_curve(counts)
    data = {"gic": gic, "live": live, "loadavg": os.getloadavg()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"figures written to {args.json}")
    if args.png:
        plot(args.png, gic, live)
    return 0


if __name__ == "__main__":
    sys.exit(main())
