"""The pytest plugin as a user meets it: pytest run as a subprocess in a
foreign project (a temp folder with its own test file, no kvmdev conftest),
with kvmdev merely installed (entry point pytest11)."""
from __future__ import annotations

import os
import subprocess
import sys
import timeit
from pathlib import Path

import pytest

import kvmdev
from kvmdev.arch import host_arch_name

FOREIGN = '''
import os, pytest, kvmdev

KEEP = []

def test_vmm_eventfd_is_not_kvmdevs():
    KEEP.append(os.eventfd(0))          # a VMM's irqfd: not opened by kvmdev

@pytest.fixture(scope="module")
def shared_kvm():
    with kvmdev.open("mock") as k:
        yield k

def test_module_fixture_first(shared_kvm):
    assert shared_kvm.api_version == 12

def test_module_fixture_second(shared_kvm):
    vm = shared_kvm.create_vm()
    vm.close()

def test_leaks_a_vm(kvm):
    KEEP.append(kvm.create_vm())       # not closed: kvm's tear-down closes it, so no leak

def test_leaks_a_kvm():
    KEEP.append(kvmdev.open("mock"))
'''


def _pytest(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVMDEV_") and k != "PYTEST_ADDOPTS"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
                          cwd=folder, env=e, capture_output=True, text=True, timeout=120)


def test_leak_check_counts_only_kvmdev_fds_and_respects_scopes(tmp_path: Path) -> None:
    """An unrelated eventfd and a module-scoped fixture's KVM are not leaks; a
    Kvm a test opens and keeps is, named by its repr; no pluggy teardown warning
    (the check is a new-style wrapper)."""
    (tmp_path / "test_foreign.py").write_text(FOREIGN)
    import pluggy
    strict = ["-W", "error::pluggy.PluggyTeardownRaisedWarning"] if hasattr(pluggy, "PluggyTeardownRaisedWarning") else []
    r = _pytest(tmp_path, *strict, "--kvmdev-backend=mock")
    out = r.stdout + r.stderr
    assert "PluggyTeardownRaisedWarning" not in out
    assert "5 passed, 1 error" in out, out
    assert "ERROR at teardown of test_leaks_a_kvm" in out
    assert (f"test_leaks_a_kvm leaked 1 KVM file descriptor(s) opened by kvmdev: "
            f"") in out and f"<kvmdev.Kvm mock {host_arch_name()} fd=" in out
    assert "test_vmm_eventfd_is_not_kvmdevs leaked" not in out and "test_module_fixture_first leaked" not in out


def test_header_names_backend_arch_kernel_and_reason(tmp_path: Path) -> None:
    (tmp_path / "test_profile.py").write_text(
        "def test_profile(kvm):\n"
        "    assert kvm.arch == 'arm64' and kvm.kernel_release.startswith('6.1.')\n"
        "    assert kvm.check_extension('KVM_CAP_MAX_VCPUS') == 8   # a GICv2 host\n"
        "    assert not kvm.create_vm().supports_device('ARM_VGIC_V3')\n")
    r = _pytest(tmp_path, "--kvmdev-arch=arm64", "--kvmdev-kernel=6.1", "--kvmdev-gic=2",
                "--kvmdev-mock", "pmu_type=9")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("kvmdev: backend mock (a mock profile was asked for (kernel='6.1', gic=2, pmu_type=9)), "
            "arch arm64, kernel 6.1.0-kvmdev-mock") in r.stdout
    # auto where /dev/kvm cannot be opened: the header says the mock answers, and why
    r = _pytest(tmp_path, "-k", "nothing", env={"KVMDEV_DEVICE": "/nonexistent/kvm"})
    assert (f"kvmdev: backend mock (/dev/kvm unusable (ENOENT): /dev/kvm does not exist"
            in r.stdout), r.stdout
    assert f"arch {host_arch_name()}, kernel " in r.stdout


def test_real_backend_fails_loudly_when_unusable(tmp_path: Path) -> None:
    """--kvmdev-backend=real where /dev/kvm cannot be opened: the run stops with
    an error naming it (exit status 4, usage error), nothing is skipped."""
    (tmp_path / "test_real.py").write_text("def test_real(kvm):\n    assert kvm.backend == 'real'\n")
    r = _pytest(tmp_path, "--kvmdev-backend=real", env={"KVMDEV_DEVICE": "/nonexistent/kvm"})
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout + r.stderr
    assert "cannot open the KVM the options ask for: open on /nonexistent/kvm: [Errno 2] ENOENT" in r.stderr
    assert "skipped" not in r.stdout
    # KVMDEV_BACKEND=real too
    r = _pytest(tmp_path, env={"KVMDEV_DEVICE": "/nonexistent/kvm", "KVMDEV_BACKEND": "real"})
    assert r.returncode == pytest.ExitCode.USAGE_ERROR
    # a profile of another architecture is an error too, not ignored
    r = _pytest(tmp_path, "--kvmdev-backend=mock", "--kvmdev-arch=x86_64", "--kvmdev-gic=3")
    assert r.returncode == pytest.ExitCode.USAGE_ERROR and "gic=3 is an option of the arm64 mock" in r.stderr


def test_leak_check_cost_is_negligible() -> None:
    """The per-test work of the check (a copy of kvmdev's own fd table, twice) is
    a microsecond-scale dict copy, whatever else the process has open; it read
    every /proc/self/fd link before (about 90 us per call with 30 fds)."""
    from kvmdev import pytest_plugin
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(200)]
    try:
        with kvmdev.open("mock") as k, k.create_vm() as vm:
            cpus = [vm.create_vcpu(i) for i in range(4)]
            n = 2000
            t = min(timeit.repeat(pytest_plugin._open_fds, number=n, repeat=3)) / n
            assert len(pytest_plugin._open_fds()) >= 6 and cpus
    finally:
        for fd in held:
            os.close(fd)
    assert t < 20e-6, f"{t * 1e6:.1f} us per call"
