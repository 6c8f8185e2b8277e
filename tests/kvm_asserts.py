"""Assertion helpers shared by the test modules."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev


def raises(errno: int, fn, *args, **kw) -> kvmdev.KvmError:
    """Call fn and assert it fails with KvmError(errno); return the error for more checks."""
    with pytest.raises(kvmdev.KvmError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == errno, f"{ei.value} (wanted {E.errorcode[errno]})"
    return ei.value


def python_child(code: str, *args: str, timeout: float, **kw) -> "subprocess.CompletedProcess[str]":
    """Run ``python -c code args...`` in a child that imports the kvmdev this process
    imported: its working directory (sys.path[0] for -c) is the directory holding that
    kvmdev package, so neither a checkout's cwd (whose kvmdev/ lacks the compiled modules
    when kvmdev is installed from a wheel) nor anything else shadows it."""
    import pathlib
    import subprocess
    import sys
    cwd = pathlib.Path(kvmdev.__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, **kw)


def known_host(kvm: kvmdev.Kvm) -> bool:
    """The QEMU -cpu max guests of tools/guests (or their mock): exact values hold."""
    import os
    return kvm.backend == "mock" or "KVMDEV_ARM64_GIC" in os.environ
