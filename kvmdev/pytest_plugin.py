"""pytest plugin for kernel regression suites (entry point ``pytest11``: active
wherever kvmdev is installed).

Options
    --kvmdev-backend real|mock|auto  the KVM the fixtures open (default: KVMDEV_BACKEND, else auto);
                                     real fails the run at once when /dev/kvm cannot be opened
    --kvmdev-arch ARCH               the architecture (another than the host's is the mock)
    --kvmdev-kernel 6.1              the mock's kernel series  } a mock profile: with auto,
    --kvmdev-gic 2                   the arm64 mock's host GIC } they choose the mock
    --kvmdev-mock FIELD=VALUE        any other field of the mock's HostProfile (repeatable)
The header line names the backend, architecture, kernel and why that backend
(``backend_reason``: e.g. auto fell back to the mock because /dev/kvm is missing).
Fixtures
    kvm              a kvmdev.Kvm of those options
    kvm_vm           a VM of it
    kvm_arm64_gic    an arm64 VM with N vCPUs (marker kvmdev_vcpus(N), default 2) and an
                     initialized VGIC v3 + ITS (v2 on a GICv2 host): .vm .vcpus .gic .its
Markers
    requires_arch("arm64")              skip unless the KVM is of that architecture
    requires_device("ARM_VGIC_V3")      skip unless KVM_CREATE_DEVICE_TEST says it can be created
    requires_cap("KVM_CAP_...", min=1)  skip unless KVM_CHECK_EXTENSION answers at least min
    kvmdev_allow_fd_leak                no fd-leak check for this test
Leak check: a test after whose tear-down a KVM fd that kvmdev opened during it is
still open (a /dev/kvm, VM, vCPU or device object not closed) fails, naming
them.  Only kvmdev's own fds count (kvmdev._fd.OPEN_FDS: not the eventfds or
KVM fds of other code), and fds opened by the set-up of a module-, class-,
package- or session-scoped fixture belong to that fixture, not to the test.
"""
from __future__ import annotations

import ast
import inspect
import os
from dataclasses import dataclass
from typing import Any, Generator, Iterator

import pytest

import kvmdev
from kvmdev import _fd

# New-style wrappers (pluggy >= 1.1) may raise after their yield without a
# PluggyTeardownRaisedWarning; an older pluggy (Debian 12's pytest 7.2) takes the
# same generators as old-style hookwrappers, where raising there is the way.
_NEW_STYLE = "wrapper" in inspect.signature(type(pytest.hookimpl).__call__).parameters


def _wrapper(**kw: Any) -> Any:
    return pytest.hookimpl(wrapper=True, **kw) if _NEW_STYLE else pytest.hookimpl(hookwrapper=True, **kw)


_KEY = pytest.StashKey[dict]()          # an item's fds before its set-up
_SCOPED = pytest.StashKey[set]()        # (fd, serial) owned by a wider-scoped fixture


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kvmdev")
    g.addoption("--kvmdev-backend", default=None, choices=kvmdev.BACKENDS,
                help="the KVM the kvm fixtures open (default: KVMDEV_BACKEND, else auto); "
                     "real: the run fails at once if /dev/kvm cannot be opened")
    g.addoption("--kvmdev-arch", default=None, choices=kvmdev.ARCH_NAMES,
                help="the architecture (default: this host's; another one is the mock)")
    g.addoption("--kvmdev-kernel", default=None, help="the mock's kernel series (arm64: 6.12 or 6.1)")
    g.addoption("--kvmdev-gic", default=None, type=int, choices=(2, 3, 5),
                help="the arm64 mock's host GIC (3, 2; 5: mock only)")
    g.addoption("--kvmdev-mock", default=[], action="append", metavar="FIELD=VALUE",
                help="another field of the mock's HostProfile, e.g. pri_bits=7 (repeatable)")


def mock_profile(config: pytest.Config) -> dict[str, Any]:
    """The mock profile the options ask for."""
    out: dict[str, Any] = {}
    if config.getoption("--kvmdev-kernel") is not None:
        out["kernel"] = config.getoption("--kvmdev-kernel")
    if config.getoption("--kvmdev-gic") is not None:
        out["gic"] = config.getoption("--kvmdev-gic")
    for item in config.getoption("--kvmdev-mock"):
        name, eq, text = item.partition("=")
        if not eq or not name:
            raise pytest.UsageError(f"--kvmdev-mock {item!r}: write FIELD=VALUE (e.g. pri_bits=7)")
        try:
            out[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[name.strip()] = text     # a bare word: a string (ppc_platform=e500)
    return out


def pytest_configure(config: pytest.Config) -> None:
    for line in ("requires_arch(arch): skip unless the KVM is of this architecture",
                 "requires_device(type): skip unless this KVM can create the device type",
                 "requires_cap(cap, min=1): skip unless KVM_CHECK_EXTENSION(cap) >= min",
                 "kvmdev_vcpus(n): vCPUs of the kvm_arm64_gic fixture",
                 "kvmdev_allow_fd_leak: no fd-leak check"):
        config.addinivalue_line("markers", line)
    config.stash[_SCOPED] = set()
    if config.getoption("--kvmdev-backend") is None and not os.environ.get("KVMDEV_BACKEND"):
        return   # auto: nothing to insist on
    # an explicit backend (option or KVMDEV_BACKEND), and a bad profile, fail the run at once
    try:
        open_kvm(config).close()
    except (kvmdev.KvmError, ValueError, TypeError) as e:
        raise pytest.UsageError(f"kvmdev: cannot open the KVM the options ask for: {e}") from None


def pytest_report_header(config: pytest.Config) -> str:
    try:
        with open_kvm(config) as k:
            return (f"kvmdev: backend {k.backend} ({k.backend_reason}), arch {k.arch}, "
                    f"kernel {k.kernel_release}")
    except (kvmdev.KvmError, ValueError, TypeError) as e:
        return f"kvmdev: no KVM: {e}"


def open_kvm(config: pytest.Config) -> kvmdev.Kvm:
    return kvmdev.open(config.getoption("--kvmdev-backend"), arch=config.getoption("--kvmdev-arch"),
                       **mock_profile(config))


# -- the fd-leak check ------------------------------------------------------------------
def _open_fds() -> dict[int, int]:
    """kvmdev's open fds: number -> serial (a cheap copy of kvmdev._fd.OPEN_FDS)."""
    return {fd: entry[0] for fd, entry in list(_fd.OPEN_FDS.items())}


@_wrapper()
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    """fds a wider-scoped fixture's set-up opens are that fixture's, not a leak of
    the test that happened to set it up."""
    if fixturedef.scope == "function":
        return (yield)
    before = _open_fds()
    try:
        return (yield)
    finally:
        request.config.stash[_SCOPED].update((fd, s) for fd, s in _open_fds().items() if before.get(fd) != s)


@_wrapper(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_KEY] = _open_fds()
    return (yield)


@_wrapper(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    result = yield
    before = item.stash.get(_KEY, None)
    if before is None or item.get_closest_marker("kvmdev_allow_fd_leak") or not _fd.OPEN_FDS:
        return result
    scoped = item.config.stash[_SCOPED]
    leaked = {fd: s for fd, s in _open_fds().items() if before.get(fd) != s and (fd, s) not in scoped}
    if leaked:
        names = []
        for fd in sorted(leaked):
            entry = _fd.OPEN_FDS.get(fd)
            obj = entry[1]() if entry else None
            names.append(f"{fd} -> {obj!r}" if obj is not None else str(fd))
        pytest.fail(f"{item.nodeid} leaked {len(leaked)} KVM file descriptor(s) opened by kvmdev: "
                    + ", ".join(names) + " (close them, use `with`, or mark the test kvmdev_allow_fd_leak)",
                    pytrace=False)
    return result


# -- fixtures -------------------------------------------------------------------------------
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
    """A kvmdev.Kvm of the --kvmdev-* options; tests with requires_* markers it
    cannot meet are skipped with the reason."""
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
