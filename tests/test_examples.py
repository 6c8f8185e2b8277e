"""The examples run, on every backend available here."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import kvmdev
from conftest import ONLY, REAL_UNUSABLE

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", ["real", "mock"])
def test_hello(backend: str) -> None:
    if ONLY and backend != ONLY:
        pytest.skip(f"KVMDEV_BACKEND={ONLY}")
    if backend == "real" and REAL_UNUSABLE:
        pytest.skip(f"real /dev/kvm unusable here: {REAL_UNUSABLE}")
    env = {k: v for k, v in os.environ.items() if k != "KVMDEV_BACKEND"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "hello.py"), "--backend", backend],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"backend {backend} ")
    assert "KVM API 12" in out.stdout
    assert "VFIO: KVM_DEV_VFIO_FILE/KVM_DEV_VFIO_FILE_ADD" in out.stdout


def _load_example(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.arm64
def test_arm64_guest(arm64_kvm, arm64_gic: int) -> None:
    """The example's guest prints through MMIO and powers off, on the real
    kernels (in the guests) and on every arm64 mock profile."""
    gic, text, event = _load_example("arm64_guest").run(arm64_kvm, b"kvmdev!\n")
    assert gic == ("ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2")
    assert text == b"kvmdev!\n"
    assert event == "KVM_SYSTEM_EVENT_SHUTDOWN"


def test_arm64_guest_script() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KVMDEV_BACKEND"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "arm64_guest.py"), "--backend", "mock",
                          "--kernel", "6.1", "--gic", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kernel 6.1.0-kvmdev-mock, ARM_VGIC_V2" in out.stdout
    assert "guest said: 'hello from the guest\\n', then KVM_SYSTEM_EVENT_SHUTDOWN" in out.stdout


@pytest.mark.arm64
def test_arm64_vmm(arm64_kvm, arm64_gic: int) -> None:
    """VGIC v3 with two redistributor regions (GICR_TYPER.Last on each region's
    last one), an ITS, an MSI delivered as LPI 8192 pending on vCPU 2; a GICv2
    host cannot create the VGIC v3 (ENODEV)."""
    mod = _load_example("arm64_vmm")
    if arm64_gic != 3:
        with pytest.raises(kvmdev.KvmError) as e:
            mod.bring_up(arm64_kvm)
        assert e.value.errno == 19
        return
    out = mod.bring_up(arm64_kvm)
    assert out["redistributors"] == [("0x80a0000", 2), ("0xa000000", 2)]
    assert out["last"] == [0, 1, 0, 1] and out["msi"] == 1 and out["lpi_8192_pending_on_vcpu2"] is True


@pytest.mark.arm64
def test_gic_snapshot_example(arm64_kvm) -> None:
    assert _load_example("gic_snapshot").run(arm64_kvm) == []


def test_x86_vfio_tsc_example(kvm) -> None:
    out = _load_example("x86_vfio_tsc").run(kvm)
    assert out["vfio_add_dev_null"] == "EINVAL" and out["tsc_offset_before"] == 0
    assert out["vfio_attrs"] == ["KVM_DEV_VFIO_FILE/KVM_DEV_VFIO_FILE_ADD", "KVM_DEV_VFIO_FILE/KVM_DEV_VFIO_FILE_DEL"]


pytest_plugins = ["pytester"]


def _plugin_args() -> list[str]:
    """-p kvmdev.pytest_plugin where kvmdev runs from a source tree (the arm64
    guests), not installed with its pytest11 entry point."""
    from importlib.metadata import entry_points
    installed = any(ep.value == "kvmdev.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "kvmdev.pytest_plugin"]


@pytest.mark.arm64
def test_regression_example(pytester: pytest.Pytester, arm64_kvm, arm64_gic: int) -> None:
    """The plugin-based regression test example: on the real kernel it passes
    where a VGIC v3 exists and is skipped with the reason where not; on the mock
    (an arm64 GICv3 host) it passes, on the x86 mock it is skipped."""
    pytester.copy_example(str(ROOT / "examples" / "test_regression_example.py"))
    if arm64_kvm.backend == "real":
        r = pytester.runpytest_subprocess(*_plugin_args(), "--kvmdev-backend=real", "-rs")
        if arm64_gic == 3:
            r.assert_outcomes(passed=2)
        else:
            r.assert_outcomes(skipped=2)
            assert "requires device ARM_VGIC_V3: KVM_CREATE_DEVICE_TEST fails" in r.stdout.str()
        return
    r = pytester.runpytest_subprocess(*_plugin_args(), "--kvmdev-backend=mock", "--kvmdev-arch=arm64", "-rs")
    r.assert_outcomes(passed=2)   # the plugin's mock is the default arm64 host (GICv3)


def test_regression_example_skips_off_arm64(pytester: pytest.Pytester) -> None:
    pytester.copy_example(str(ROOT / "examples" / "test_regression_example.py"))
    r = pytester.runpytest_subprocess("--kvmdev-backend=mock", "--kvmdev-arch=x86_64", "-rs")
    r.assert_outcomes(skipped=2)
    assert "requires arch arm64; this KVM (mock) is x86_64" in r.stdout.str()
