"""Which backend answers is always visible, and no option is silently ignored
(kvmdev.open, the CLI's probe)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kvmdev
from kvmdev.arch import host_arch_name

HOST = host_arch_name()


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVMDEV_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kvmdev", *argv], env=e, capture_output=True, text=True,
                          timeout=120)


def test_env_chooses_only_what_the_caller_left_unchosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMDEV_BACKEND", "real")
    with kvmdev.open("mock", arch="arm64", kernel="6.1", gic=2) as k:
        assert (k.backend, k.kernel_release, k.backend_reason) == ("mock", "6.1.0-kvmdev-mock", "requested")
        assert k.check_extension("KVM_CAP_MAX_VCPUS") == 8
    monkeypatch.setenv("KVMDEV_BACKEND", "mock")
    with kvmdev.open() as k:
        assert k.backend == "mock" and k.backend_reason == "KVMDEV_BACKEND=mock"


def test_mock_profile_options_that_do_not_apply_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMDEV_BACKEND", raising=False)
    with pytest.raises(ValueError, match=r"kernel='6.1': a mock profile; the real backend is this host's kernel"):
        kvmdev.open("real", kernel="6.1")
    with pytest.raises(ValueError, match=r"gic=3 is an option of the arm64 mock; this mock is x86_64"):
        kvmdev.open("mock", arch="x86_64", gic=3)
    with pytest.raises(ValueError, match=r"ppc_platform='e500' is an option of the powerpc mock; this mock is arm64"):
        kvmdev.open("mock", arch="arm64", ppc_platform="e500")
    with pytest.raises(kvmdev.UnknownNameError, match=r"unknown mock profile option 'pribits'.*did you mean pri_bits"):
        kvmdev.open("mock", arch="arm64", pribits=6)
    # auto with a profile: the mock of that profile, saying so (never the real kernel with it dropped)
    with kvmdev.open(kernel="6.1", arch="arm64") as k:
        assert k.backend == "mock" and k.kernel_release.startswith("6.1.")
    with kvmdev.open(x86_tsc_pinned=True, arch="x86_64") as k:
        assert k.backend == "mock" and k.backend_reason == "a mock profile was asked for (x86_tsc_pinned=True)"


def test_probe_says_when_auto_fell_back_and_why() -> None:
    r = cli("probe", env={"KVMDEV_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(
        "backend mock (/dev/kvm unusable (ENOENT): /dev/kvm does not exist: KVM is not available")
    r = cli("probe", "--json", env={"KVMDEV_DEVICE": "/nonexistent/kvm"})
    p = json.loads(r.stdout)
    assert p["backend"] == "mock" and p["backend_reason"].startswith("/dev/kvm unusable (ENOENT)")
    r = cli("--backend", "real", "probe", env={"KVMDEV_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == 3 and "open on /nonexistent/kvm: [Errno 2] ENOENT" in r.stderr


def test_probe_profile_options_reach_the_mock() -> None:
    r = cli("--arch", "arm64", "--kernel", "6.1", "--gic", "2", "probe")
    assert r.returncode == 0, r.stderr
    assert "kernel 6.1.0-kvmdev-mock" in r.stdout and "MAX_VCPUS=8" in r.stdout
    assert "device types (KVM_CREATE_DEVICE_TEST): VFIO, ARM_VGIC_V2\n" in r.stdout
    # the options after the command too, --json included
    r = cli("probe", "--json", "--arch", "arm64", "--kernel", "6.1", "--gic", "2")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["kernel"] == "6.1.0-kvmdev-mock" and p["device_types"] == ["VFIO", "ARM_VGIC_V2"]


def test_cli_options_that_do_not_apply_are_usage_errors() -> None:
    r = cli("--backend", "real", "--kernel", "6.1", "probe")
    assert r.returncode == 2 and "--kernel: choose a mock profile; the real backend is this host's kernel" in r.stderr
    r = cli("--arch", "x86_64", "--gic", "3", "probe")
    assert r.returncode == 2 and "gic=3 is an option of the arm64 mock" in r.stderr
    r = cli("encode", "attr", "--group", "REDIST_REGS", "--vcpu", "17", "GICR_TYPER")
    assert r.returncode == 2 and "--vcpu: ARM_VGIC_V3 REDIST_REGS addresses a vCPU by its MPIDR" in r.stderr
    assert "vCPU 17's default MPIDR is 0x80000101" in r.stderr
    r = cli("encode", "attr", "--device", "vgic-v2", "--group", "CPU_REGS", "--mpidr", "1", "GICC_PMR")
    assert r.returncode == 2 and "--mpidr: ARM_VGIC_V2 CPU_REGS addresses a vCPU by its index" in r.stderr
    r = cli("encode", "attr", "--device", "vgic-v2", "--group", "CPU_REGS", "--vcpu", "3", "GICC_PMR")
    assert r.returncode == 0 and r.stdout.strip() == "0x0000000300000004"
    r = cli("decode", "GICD_CTLR", "1", "--gic", "2")
    assert r.returncode == 0 and "frame=GICD (GICv2)" in r.stdout
    r = cli("decode", "GICD_CTLR", "1", "--backend", "mock")
    assert r.returncode == 2 and "--backend: decode does not open a KVM" in r.stderr
    r = cli("decode", "GICD_CTLR", "1", "--device", "vgic-v2")
    assert r.returncode == 2 and "--device: only for 'decode attr'" in r.stderr
