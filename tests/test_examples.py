"""The examples run, on every backend available here."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

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
