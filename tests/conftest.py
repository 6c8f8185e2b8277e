"""Backend fixtures: every test runs on each backend that can run it here.

- ``kvm``: the host's architecture, on the real kernel (skipped, with the
  reason, only where /dev/kvm cannot be opened) and on the mock.
- ``arm64_kvm`` (tests marked ``arm64``): the arm64 mock, as each of the four
  kernel/GIC combinations of the guests, where the mock runs; the real kernel
  where the host is arm64 (inside the guests of tools/guests/test-guests.sh).
- ``ppc_kvm`` (tests marked ``powerpc``): the book3s powerpc mock, and the real
  kernel where the host is powerpc (the ppc64el guest, test-guests.sh --arch ppc64el).

KVMDEV_BACKEND=real|mock limits the run to one backend (the guests use it).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

import kvmdev
from kvmdev.arch import host_arch_name
from kvmdev.backends.mock import kernel_facts
from kvmdev.backends.mock.kernel_facts import ARM64_KERNELS

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


@pytest.fixture
def kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    k = _open(request.param, HOST)
    with k:
        yield k


# The arm64 mock emulates every kernel series and both host GICs of the guests.
ARM64_MOCKS = {f"mock-{k}-gic{g}": {"kernel": k, "gic": g} for k in ARM64_KERNELS for g in (3, 2)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """kvm runs on the host's real kernel and its mock; arm64_kvm on the real
    kernel where the host is arm64 (the guests) and on the four arm64 mock
    profiles where the mock may run; ppc_kvm likewise on the real powerpc kernel
    (its guest) and the book3s mock.  KVMDEV_BACKEND=real|mock keeps one side."""
    for name, host, mocks in (("kvm", HOST, ["mock"]), ("arm64_kvm", "arm64", list(ARM64_MOCKS)),
                              ("ppc_kvm", "powerpc", ["mock-book3s"])):
        if name not in metafunc.fixturenames:
            continue
        params = []
        if HOST == host and ONLY != "mock":
            params.append("real")
        if ONLY != "real":
            params += mocks
        metafunc.parametrize(name, params, indirect=True)


@pytest.fixture
def arm64_kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    if request.param == "real":
        k = _open("real", "arm64")
    else:
        k = kvmdev.open("mock", arch="arm64", **ARM64_MOCKS[request.param])
    with k:
        yield k


@pytest.fixture
def ppc_kvm(request: pytest.FixtureRequest) -> Iterator[kvmdev.Kvm]:
    """A book3s powerpc KVM (XICS): the real one in the ppc64el guest (KVM-HV on
    an emulated PowerNV POWER8), the mock's book3s profile elsewhere."""
    k = _open("real", "powerpc") if request.param == "real" else \
        kvmdev.open("mock", arch="powerpc", ppc_platform="book3s")
    with k:
        yield k


@pytest.fixture
def arm64_gic(arm64_kvm: kvmdev.Kvm) -> int:
    """The host GIC version, known independently of what is under test: the
    harness's --gic in the guests (KVMDEV_ARM64_GIC), the mock's profile."""
    if arm64_kvm.backend == "mock":
        return int(arm64_kvm._backend.host.gic)  # type: ignore[attr-defined]
    gic = os.environ.get("KVMDEV_ARM64_GIC")
    if gic is None:
        pytest.fail("KVMDEV_ARM64_GIC (3 or 2) must name the host GIC for the real arm64 tests")
    return int(gic)


@pytest.fixture
def arm64_kernel(arm64_kvm: kvmdev.Kvm) -> str:
    """The kernel series (one of kernel_facts.ARM64_KERNELS) where the real kernels differ: the
    running kernel's release, the mock's profile."""
    if arm64_kvm.backend == "mock":
        return str(arm64_kvm._backend.host.kernel)  # type: ignore[attr-defined]
    release = os.uname().release
    series = ".".join(release.split(".")[:2])
    if series not in ARM64_KERNELS:
        pytest.fail(f"kernel {release}: the arm64 tests know the {', '.join(ARM64_KERNELS)} series "
                    f"(kvmdev.backends.mock.kernel_facts)")
    return series


@pytest.fixture
def kfact(arm64_kernel: str) -> Callable[[str], Any]:
    """kernel_facts.fact for the arm64 kernel under test (the real one's series, the
    mock's profile): where the kernels differ, the one answer this kernel gives."""
    return lambda name: kernel_facts.fact(name, arm64_kernel)


@pytest.fixture
def vm(kvm: kvmdev.Kvm) -> kvmdev.Vm:
    return kvm.create_vm()


def pytest_report_header(config: pytest.Config) -> list[str]:
    real = "usable" if not REAL_UNUSABLE else f"UNUSABLE ({REAL_UNUSABLE})"
    return [f"kvmdev: host arch {HOST}; real /dev/kvm {real}; backends: {ONLY or 'real+mock'}"]


# --- the checkout, and runs against an installed kvmdev (tools/test-wheel.sh, --wheel of
# tools/guests/test-guests.sh), where tests/ is a copy beside the installed package
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests marked source_tree read the checkout itself (cdefs/ against kernel headers, README
# and docs/ execution, tools/, packaging): they run in the in-tree run and skip elsewhere
SOURCE_TREE = all(os.path.exists(os.path.join(ROOT, p))
                  for p in ("pyproject.toml", "cdefs/build.py", "README.md", "docs", "tools/api_doc.py"))


class _InstalledCheck:
    """KVMDEV_EXPECT_FROM=DIR: kvmdev (and its compiled modules) must have been imported from
    under DIR (the wheel's install), or the run stops before any test."""

    def __init__(self, where: str) -> None:
        import importlib
        base = os.path.realpath(where) + os.sep
        mods = [kvmdev, importlib.import_module(f"kvmdev._kvm_{HOST}")]
        bad = [f"{m.__name__} from {m.__file__}" for m in mods if not os.path.realpath(m.__file__ or "").startswith(base)]
        if bad:
            raise pytest.UsageError(f"KVMDEV_EXPECT_FROM={where}: imported {', '.join(bad)}")
        self.line = f"kvmdev {kvmdev.__version__} imported from {os.path.dirname(kvmdev.__file__ or '')} " \
                    f"(KVMDEV_EXPECT_FROM checked; {os.path.basename(mods[1].__file__ or '')})"

    def pytest_report_header(self) -> str:
        return self.line

    def pytest_terminal_summary(self, terminalreporter) -> None:   # also under -q (no header there)
        terminalreporter.write_line(self.line)


def pytest_configure(config: pytest.Config) -> None:
    where = os.environ.get("KVMDEV_EXPECT_FROM")
    if where:
        config.pluginmanager.register(_InstalledCheck(where), "kvmdev-installed-check")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SOURCE_TREE:
        return
    skip = pytest.mark.skip(reason=f"source_tree: needs the checkout (cdefs/, README.md, docs/, tools/); {ROOT} "
                                   f"holds a copy of the tests beside an installed kvmdev; runs in the in-tree run")
    for item in items:
        if item.get_closest_marker("source_tree"):
            item.add_marker(skip)
