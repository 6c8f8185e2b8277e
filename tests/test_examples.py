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
