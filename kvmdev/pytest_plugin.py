"""pytest plugin for kernel regression suites (entry point ``pytest11``: active
wherever kvmdev is installed).

Fixtures
    kvm              a kvmdev.Kvm of --kvmdev-backend (real | mock | auto) and --kvmdev-arch
    kvm_vm           a VM of it
    kvm_arm64_gic    an arm64 VM with N vCPUs (marker kvmdev_vcpus(N), default 2) and an
                     initialized VGIC v3 + ITS (v2 on a GICv2 host): .vm .vcpus .gic .its
Markers
    requires_arch("arm64")              skip unless the KVM is of that architecture
    requires_device("ARM_VGIC_V3")      skip unless KVM_CREATE_DEVICE_TEST says it can be created
    requires_cap("KVM_CAP_...", min=1)  skip unless KVM_CHECK_EXTENSION answers at least min
    kvmdev_allow_fd_leak                no fd-leak check for this test
Every test is checked for leaked KVM file descriptors (psutil): a test whose
set-up, call and tear-down leave a /dev/kvm, VM, vCPU, device or eventfd open
fails at tear-down, naming them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import psutil  # type: ignore[import-untyped]  # no stubs in the dependency set
import pytest

import kvmdev

_FD_KINDS = ("anon_inode:kvm", "/dev/kvm", "anon_inode:[eventfd]")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kvmdev")
    g.addoption("--kvmdev-backend", default=os.environ.get("KVMDEV_BACKEND", "auto"), choices=kvmdev.BACKENDS,
                help="the KVM the kvm fixtures open (default: auto, or KVMDEV_BACKEND)")
    g.addoption("--kvmdev-arch", default=None, choices=kvmdev.ARCH_NAMES,
                help="the mock's architecture (default: this host's)")


def pytest_configure(config: pytest.Config) -> None:
    for line in ("requires_arch(arch): skip unless the KVM is of this architecture",
                 "requires_device(type): skip unless this KVM can create the device type",
                 "requires_cap(cap, min=1): skip unless KVM_CHECK_EXTENSION(cap) >= min",
                 "kvmdev_vcpus(n): vCPUs of the kvm_arm64_gic fixture",
                 "kvmdev_allow_fd_leak: no fd-leak check"):
        config.addinivalue_line("markers", line)


def _kvm_fds() -> dict[int, str]:
    """The KVM-ish fds this process has open, by number (psutil's fd count, then
    /proc for what each one is)."""
    out: dict[int, str] = {}
    if psutil.Process().num_fds() == 0:
        return out
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(_FD_KINDS):
            out[int(fd)] = target
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item._kvmdev_fds = _kvm_fds()  # type: ignore[attr-defined]
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    before = getattr(item, "_kvmdev_fds", None)
    if before is None or item.get_closest_marker("kvmdev_allow_fd_leak"):
        return
    leaked = {fd: t for fd, t in _kvm_fds().items() if before.get(fd) != t}
    if leaked:
        pytest.fail(f"{item.nodeid} leaked {len(leaked)} KVM file descriptor(s): "
                    + ", ".join(f"{fd} -> {t}" for fd, t in sorted(leaked.items())), pytrace=False)


def open_kvm(config: pytest.Config) -> kvmdev.Kvm:
    return kvmdev.open(config.getoption("--kvmdev-backend"), arch=config.getoption("--kvmdev-arch"))


def _requirements(item: pytest.Item, kvm: kvmdev.Kvm) -> str | None:
    """Why this test cannot run on this KVM (None: it can)."""
    for m in item.iter_markers("requires_arch"):
        if kvm.arch not in m.args:
            return f"requires arch {' or '.join(m.args)}; this KVM ({kvm.backend}) is {kvm.arch}"
    for m in item.iter_markers("requires_cap"):
        cap, least = m.args[0], m.kwargs.get("min", 1)
        try:
            got = kvm.check_extension(cap)
        except (kvmdev.KvmError, ValueError) as e:
            return f"requires {cap}: {e}"
        if got < least:
            return f"requires {cap} >= {least}; KVM_CHECK_EXTENSION answers {got} ({kvm.backend}, {kvm.kernel_release})"
    devices = [t for m in item.iter_markers("requires_device") for t in m.args]
    if devices:
        with kvm.create_vm() as vm:
            for t in devices:
                if not vm.supports_device(t):
                    return (f"requires device {t}: KVM_CREATE_DEVICE_TEST fails on this KVM "
                            f"({kvm.backend}, {kvm.arch}, {kvm.kernel_release})")
    return None


@pytest.fixture
def kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    """A kvmdev.Kvm of --kvmdev-backend; tests with requires_* markers it cannot
    meet are skipped with the reason."""
    k = open_kvm(request.config)
    why = _requirements(request.node, k)
    if why:
        k.close()
        pytest.skip(why)
    with k:
        yield k


@pytest.fixture
def kvm_vm(kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vm]:
    with kvm.create_vm() as vm:
        yield vm


@dataclass
class Arm64Gic:
    vm: kvmdev.Vm
    vcpus: list[kvmdev.Vcpu]
    gic: Any
    its: Any | None


@pytest.fixture
def kvm_arm64_gic(kvm: kvmdev.Kvm, request: pytest.FixtureRequest) -> Iterator[Arm64Gic]:
    """An arm64 VM, N vCPUs (marker kvmdev_vcpus(N), default 2), a VGIC v3 with an
    ITS at 0x08080000 (a VGIC v2 on a GICv2 host), initialized."""
    if kvm.arch != "arm64":
        pytest.skip(f"kvm_arm64_gic needs an arm64 KVM; this one ({kvm.backend}) is {kvm.arch}")
    m = request.node.get_closest_marker("kvmdev_vcpus")
    n = m.args[0] if m else 2
    with kvm.create_vm() as vm:
        cpus = [vm.create_vcpu(i) for i in range(n)]
        for c in cpus:
            c.vcpu_init(["PSCI_0_2"])
        its = None
        if vm.supports_device("ARM_VGIC_V3"):
            gic = vm.create_device("ARM_VGIC_V3")
            its = vm.create_device("ARM_VGIC_ITS")
            its.base = 0x08080000
            gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
        else:
            gic = vm.create_device("ARM_VGIC_V2")
            gic.dist_base, gic.cpu_base = 0x08000000, 0x08010000
        gic.init()
        yield Arm64Gic(vm, cpus, gic, its)
