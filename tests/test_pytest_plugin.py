"""The pytest plugin (kvmdev.pytest_plugin, entry point pytest11), run on small
test files through pytest's own pytester."""
from __future__ import annotations

import pytest

import kvmdev

pytest_plugins = ["pytester"]

SUITE = '''
import pytest, kvmdev

@pytest.mark.requires_arch("s390")
def test_s390_only(kvm):
    pass

@pytest.mark.requires_device("ARM_VGIC_V3")
def test_needs_vgic(kvm):
    pass

@pytest.mark.requires_cap("KVM_CAP_MAX_VCPUS", min=1 << 30)
def test_needs_many_vcpus(kvm):
    pass

@pytest.mark.kvmdev_vcpus(3)
def test_gic(kvm_arm64_gic):
    g = kvm_arm64_gic
    assert len(g.vcpus) == 3 and g.gic.nr_irqs > 32

def test_vm(kvm_vm):
    assert kvm_vm.vcpus == []

KEEP = []
def test_leaks():
    KEEP.append(kvmdev.open("mock"))

@pytest.mark.kvmdev_allow_fd_leak
def test_leaks_allowed():
    KEEP.append(kvmdev.open("mock"))
'''


def test_plugin_fixtures_markers_and_leak_check(pytester: pytest.Pytester) -> None:
    """On the arm64 mock: requires_* skip with the precise reason, the GIC
    fixture gives N vCPUs and an initialized VGIC, and the test that leaked a KVM
    fd fails at tear-down, naming it."""
    pytester.makepyfile(test_suite=SUITE)
    r = pytester.runpytest_subprocess("--kvmdev-backend=mock", "--kvmdev-arch=arm64", "-rs")
    r.assert_outcomes(passed=5, skipped=2, errors=1)   # test_leaks: passed, then an error at tear-down
    out = r.stdout.str()
    assert "requires arch s390; this KVM (mock) is arm64" in out
    assert "requires KVM_CAP_MAX_VCPUS >= 1073741824; KVM_CHECK_EXTENSION answers 512" in out
    assert "test_leaks leaked 1 KVM file descriptor(s) opened by kvmdev" in out and f"<kvmdev.Kvm mock {kvmdev.arch.host_arch_name()} fd=" in out


def test_plugin_on_x86_mock(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    r = pytester.runpytest_subprocess("--kvmdev-backend=mock", "--kvmdev-arch=x86_64", "-rs")
    out = r.stdout.str()
    assert "requires device ARM_VGIC_V3: KVM_CREATE_DEVICE_TEST fails on this KVM (mock, x86_64" in out
    assert "kvm_arm64_gic needs an arm64 KVM; this one (mock) is x86_64" in out
