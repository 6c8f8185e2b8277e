"""kvmdev.fuzz_api: argument-space fuzzing of every public call (the longer runs are
in `make fuzz`).  Each run must end with no violation of the exception policy and
no fd left open; and the fuzzer must see a violation when one is there."""
from __future__ import annotations

import subprocess
import sys

import pytest

import kvmdev
from kvmdev import fuzz_api

pytest.importorskip("hypothesis")


@pytest.mark.parametrize("arch", ["arm64", "x86_64", "s390", "powerpc"])
def test_every_public_call_keeps_the_policy_mock(arch: str) -> None:
    kvm = kvmdev.open("mock", arch=arch)
    try:
        st = fuzz_api.fuzz(kvm, 400, seed=7)
    finally:
        kvm.close()
    assert st.calls == 400
    assert st.violations == [], "\n".join(map(str, st.violations[:5]))
    assert st.ok > 0 and st.refused.get("KvmError", 0) > 0   # it reached the kernel, not only the checks


def test_every_public_call_keeps_the_policy_real() -> None:
    from conftest import REAL_UNUSABLE
    if REAL_UNUSABLE:
        pytest.skip(REAL_UNUSABLE)
    kvm = kvmdev.open("real")
    try:
        st = fuzz_api.fuzz(kvm, 300, seed=7)
    finally:
        kvm.close()
    assert st.violations == [], "\n".join(map(str, st.violations[:5]))


def test_the_fuzzer_sees_a_policy_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public call made to raise KeyError, and one made to refuse its argument
    only after a state-changing ioctl: both are reported."""
    from kvmdev.vm import Vm

    def bad_irq_line(self: Vm, irq: int, level: int = 1) -> None:
        raise KeyError("irq")

    ids = iter(range(100, 10_000))

    def late_refusal(self: Vm, *args: object, **kw: object) -> None:
        self.create_vcpu(next(ids))           # KVM_CREATE_VCPU: a state change that succeeds
        raise ValueError("refused after an ioctl")
    monkeypatch.setattr(Vm, "irq_line", bad_irq_line)
    monkeypatch.setattr(Vm, "signal_msi", late_refusal)
    kvm = kvmdev.open("mock", arch="x86_64")
    try:
        st = fuzz_api.fuzz(kvm, 600, seed=1)
    finally:
        kvm.close()
    problems = {(v.call.split("(")[0], v.problem.split(":")[0]) for v in st.violations}
    assert ("irq_line", "KeyError") in problems
    assert any(c == "signal_msi" and p.startswith("ValueError after") for c, p in problems)


def test_cli_runs_and_reports(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "kvmdev.fuzz_api", "--arch", "arm64", "--examples", "150",
                        "--seed", "3"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "fuzz_api mock arm64 seed 3: 150 calls" in r.stdout and "0 violation(s), 0 fd(s) left open" in r.stdout


@pytest.mark.arm64
def test_every_public_call_keeps_the_policy_arm64(arm64_kvm: kvmdev.Kvm) -> None:
    """On each arm64 mock profile, and in the arm64 guests on the real kernel (where
    `make fuzz` runs the longer fuzz_api too)."""
    # 15 on the real kernel: in the TCG guests hypothesis itself is ~50x slower (~20 s)
    real = arm64_kvm.backend == "real"
    st = fuzz_api.fuzz(arm64_kvm, 15 if real else 120, seed=5)
    assert st.violations == [], "\n".join(map(str, st.violations[:5]))
    assert real or st.refused.get("KvmError", 0) > 0   # 120 calls reach the kernel; 15 may not


@pytest.mark.arm64
def test_forks_with_threads_running_real_arm64(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """kvmdev.chaos forks on the real arm64 kernel (the guests): each child opens KVM
    afresh while three parent threads run VGIC v3 traffic."""
    from kvmdev import chaos
    if arm64_kvm.backend != "real" or arm64_gic != 3:
        pytest.skip("the real arm64 kernel with a GICv3 (the host runs the mock's in test_reliability_chaos)")
    out: list[str] = []
    assert chaos.forks(6, seed=5, arch="arm64", backend="real", log=out.append) == 0, out


def test_close_racing_every_call(kvm: kvmdev.Kvm) -> None:
    """--race-close: the target or its VM closed from another thread during each call."""
    st = fuzz_api.fuzz(kvm, 150, seed=9, race_close=True)
    assert st.violations == [], "\n".join(map(str, st.violations[:5]))
