"""Fuzzing (kvmdev.fuzz): random attribute traffic keeps the invariants (only
KvmError, or ValueError/TypeError before any ioctl; no leaked KVM fd), and the
corpus of cases that once made the mock diverge from a real kernel is replayed:
in the arm64 guests (and the ppc64el one) on the real kernel and on the mock of
the same kernel and GIC (the book3s mock), which must answer alike.  The long runs are ``make fuzz``."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmdev
from kvmdev import fuzz

def _corpus(name: str) -> list[fuzz.Case]:
    return [fuzz.Case(d["device"], [tuple(o) for o in d["ops"]]) for d in map(
        json.loads, (Path(__file__).parent / "fuzz_corpus" / name).read_text().splitlines())]


CORPUS = _corpus("diverged.jsonl")                   # the arm64 guests'
PPC_CORPUS = _corpus("diverged_powerpc.jsonl")       # the ppc64el guest's
# those cases' outcomes on each real kernel and GIC, recorded in the guests:
# tools/guests/fuzz-guests.sh [--arch ppc64el] --record tests/fuzz_corpus/<corpus> <out>
RECORDED = [json.loads(line) for line in
            (Path(__file__).parent / "fuzz_corpus" / "recorded.jsonl").read_text().splitlines()]
SHORT = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SHORT
@given(seed=st.integers(0, 2 ** 32), n=st.integers(1, 40))
def test_invariants_x86(seed: int, n: int) -> None:
    """The host's KVM (real on x86) and its mock: VFIO and the vCPU/VM tables."""
    for backend in ("real", "mock"):
        try:
            kvm = kvmdev.open(backend, arch="x86_64")
        except kvmdev.KvmUnavailable:
            continue
        with kvm:
            for device in fuzz.devices(kvm):
                fuzz.run(kvm, fuzz.generate(kvm, device, n, random.Random(seed)))


@pytest.mark.parametrize("arch", ["powerpc", "s390", "arm64"])
@SHORT
@given(seed=st.integers(0, 2 ** 32), n=st.integers(1, 40))
def test_invariants_mock_arches(arch: str, seed: int, n: int) -> None:
    with kvmdev.open("mock", arch=arch) as kvm:
        for device in fuzz.devices(kvm):
            fuzz.run(kvm, fuzz.generate(kvm, device, n, random.Random(seed)))


@pytest.mark.arm64
def test_arm64_invariants_and_differential(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """On this arm64 KVM: 6 random cases of 25 operations per device keep the
    invariants; on the real kernel each also answers as the mock does."""
    mock = kvmdev.open("mock", arch="arm64", kernel=arm64_kernel, gic=arm64_gic)
    rng = random.Random(arm64_gic * 100 + len(arm64_kernel))
    try:
        for device in fuzz.devices(arm64_kvm):
            for _ in range(6):
                case = fuzz.generate(arm64_kvm, device, 25, rng)
                if arm64_kvm.backend == "real":
                    i = fuzz.differ(arm64_kvm, mock, case)
                    assert i is None, f"{device} diverges at {case.ops[i]!r}: {case.dumps()}"
                else:
                    fuzz.run(arm64_kvm, case)
    finally:
        mock.close()


@pytest.mark.arm64
def test_corpus_of_past_divergences(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """Every case that once made the mock diverge from a real kernel: on the real
    kernel (in the guests) it answers as the mock of the same kernel and GIC."""
    mock = kvmdev.open("mock", arch="arm64", kernel=arm64_kernel, gic=arm64_gic)
    types = set(fuzz.devices(arm64_kvm))
    ran = 0
    try:
        for case in CORPUS:
            if case.device not in types:
                continue
            if arm64_kvm.backend == "real":
                assert fuzz.run(arm64_kvm, case) == fuzz.run(mock, case), case.dumps()
            else:
                fuzz.run(arm64_kvm, case)
            ran += 1
    finally:
        mock.close()
    assert ran >= 3


def test_shrink() -> None:
    """shrink() keeps only the operations the failure needs."""
    case = fuzz.Case("VFIO", [("create",), ("attr", "dev", "KVM_HAS_DEVICE_ATTR", 1, 1, 0), ("create",),
                              ("attr", "vm", "KVM_GET_DEVICE_ATTR", 5, 1, 0)])
    small = fuzz.shrink(case, lambda c: any(o[0] == "attr" and o[1] == "vm" for o in c.ops))
    assert small.ops == [("attr", "vm", "KVM_GET_DEVICE_ATTR", 5, 1, 0)]


@pytest.mark.powerpc
def test_powerpc_invariants_and_differential(ppc_kvm) -> None:
    """On this book3s KVM: 6 random cases of 25 operations per device keep the
    invariants; on the real kernel each also answers as the book3s mock does;
    and the past divergences of the ppc64el guest answer alike."""
    mock = kvmdev.open("mock", arch="powerpc", ppc_platform="book3s")
    rng = random.Random(64)
    try:
        for device in fuzz.devices(ppc_kvm):
            for _ in range(6):
                case = fuzz.generate(ppc_kvm, device, 25, rng)
                if ppc_kvm.backend == "real":
                    i = fuzz.differ(ppc_kvm, mock, case)
                    assert i is None, f"{device} diverges at {case.ops[i]!r}: {case.dumps()}"
                else:
                    fuzz.run(ppc_kvm, case)
        assert PPC_CORPUS
        for case in PPC_CORPUS:
            if ppc_kvm.backend == "real":
                assert fuzz.run(ppc_kvm, case) == fuzz.run(mock, case), case.dumps()
            else:
                fuzz.run(ppc_kvm, case)
    finally:
        mock.close()


def test_recorded_real_outcomes_replay_on_the_mock() -> None:
    """Every past divergence, replayed on the mock of the kernel and GIC it was
    recorded on, gives the outcomes the real kernel gave (return values, errnos
    and bytes read back): the corpus guards the mock on any host, without guests."""
    by_profile: dict[tuple, list[dict]] = {}
    for r in RECORDED:
        by_profile.setdefault((r["arch"], r["kernel"], r["gic"]), []).append(r)
    assert {p[:2] for p in by_profile} >= {("arm64", "6.12"), ("arm64", "6.1"), ("arm64", "6.18"), ("arm64", "7.3"),
                                           ("powerpc", "6.1")}
    assert len(RECORDED) >= len(CORPUS) + len(PPC_CORPUS)   # each case on at least one kernel
    for (arch, kernel, gic), records in by_profile.items():
        host = {"gic": gic} if arch == "arm64" else {"ppc_platform": "book3s"}
        with kvmdev.open("mock", arch=arch, kernel=kernel, **host) as mock:
            for r in records:
                case = fuzz.Case(r["device"], [tuple(o) for o in r["ops"]])
                assert fuzz.run(mock, case) == r["outcomes"], (arch, kernel, gic, r["release"], case.dumps())


def test_no_its_save_tables_where_it_can_oops() -> None:
    """6.18.15 oopses on SAVE_TABLES of an ITE without a collection (kernel_facts):
    the fuzzer's ITS cases for it never ask for SAVE_TABLES, and a replayed case's
    SAVE_TABLES is not run there; other kernels get it."""
    save_typed = ("typed", "dev", "KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_ITS_SAVE_TABLES", 0, "set")
    save_raw = ("attr", "dev", "KVM_SET_DEVICE_ATTR", 4, 1, 0)
    for kernel, oopses in (("6.18", True), ("6.12", False), ("7.3", False)):
        with kvmdev.open("mock", arch="arm64", kernel=kernel, gic=3) as k:
            case = fuzz.generate(k, "ARM_VGIC_ITS", 3000, random.Random(1))
            saves = [op for op in case.ops if op in (save_typed, save_raw) or fuzz._is_save_tables(op)]
            assert bool(saves) != oopses, kernel
            out = fuzz.run(k, fuzz.Case("ARM_VGIC_ITS", [save_typed, save_raw]))
            assert (out == ["not run: SAVE_TABLES can oops this kernel"] * 2) == oopses, (kernel, out)
