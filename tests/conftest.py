"""Backend fixtures: every test runs on each backend that can run it here.

- ``kvm``: the host's architecture, on the real kernel (skipped, with the
  reason, only where /dev/kvm cannot be opened) and on the mock.
- ``arm64_kvm`` (tests marked ``arm64``): the arm64 mock on x86; the real
  kernel inside the arm64 guests (tools/arm64/test-arm64.sh).

KVMDEV_BACKEND=real|mock limits the run to one backend (the guests use it).
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

import kvmdev
from kvmdev.arch import host_arch_name

# kvmdev.open() honours KVMDEV_BACKEND; here it selects which params run instead.
ONLY = os.environ.pop("KVMDEV_BACKEND", None)
HOST = host_arch_name()


def _real_unusable() -> str | None:
    try:
        kvmdev.open("real").close()
    except kvmdev.KvmError as e:
        return str(e)
    except ValueError as e:
        return str(e)
    return None


REAL_UNUSABLE = _real_unusable()


def _open(backend: str, arch: str) -> kvmdev.Kvm:
    if ONLY and backend != ONLY:
        pytest.skip(f"KVMDEV_BACKEND={ONLY} selects only that backend")
    if backend == "real":
        if arch != HOST:
            pytest.skip(f"the real backend is {HOST}; {arch} runs on the mock here "
                        f"and on the real kernel in its own guest")
        if REAL_UNUSABLE:
            pytest.skip(f"real /dev/kvm unusable here: {REAL_UNUSABLE}")
        return kvmdev.open("real")
    return kvmdev.open("mock", arch=arch)


@pytest.fixture(params=["real", "mock"])
def kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    k = _open(request.param, HOST)
    with k:
        yield k


@pytest.fixture(params=["real", "mock"])
def arm64_kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    k = _open(request.param, "arm64")
    with k:
        yield k


@pytest.fixture
def vm(kvm: kvmdev.Kvm) -> kvmdev.Vm:
    return kvm.create_vm()


def pytest_report_header(config: pytest.Config) -> list[str]:
    real = "usable" if not REAL_UNUSABLE else f"UNUSABLE ({REAL_UNUSABLE})"
    return [f"kvmdev: host arch {HOST}; real /dev/kvm {real}; backends: {ONLY or 'real+mock'}"]
