"""The fd layer on every backend: Kvm, Vm, Vcpu, Device, errors and lifetimes."""
from __future__ import annotations

import errno
import os
import pickle

import psutil
import pytest

import kvmdev
from kvmdev import ClosedError, DeviceType, KvmError
from kvm_asserts import python_child


def nfds() -> int:
    return psutil.Process().num_fds()


def test_system_fd_basics(kvm: kvmdev.Kvm) -> None:
    assert kvm.api_version == 12
    assert kvm.arch == kvmdev.arch.host_arch_name()
    assert kvm.check_extension("KVM_CAP_DEVICE_CTRL") == 1
    assert kvm.check_extension("DEVICE_CTRL") == 1  # prefix optional
    assert kvm.check_extension(0x7FFFFFFF) == 0  # unknown capability: 0, not an error
    assert kvm.vcpu_mmap_size >= 4096
    assert kvm.vcpu_mmap_size % 4096 == 0


def test_vm_and_vcpu_creation(kvm: kvmdev.Kvm) -> None:
    with kvm.create_vm() as vm:
        assert vm.check_extension("KVM_CAP_DEVICE_CTRL") == 1
        v0 = vm.create_vcpu(0)
        v3 = vm.create_vcpu(3)
        assert (v0.id, v3.id) == (0, 3)
        assert [v.id for v in vm.vcpus] == [0, 3]
        assert v0.vm is vm
        with pytest.raises(KvmError) as ei:
            vm.create_vcpu(3)
        e = ei.value
        assert e.errno == errno.EEXIST and e.ioctl == "KVM_CREATE_VCPU" and e.target == "VM"
        assert "already exists" in str(e)
        max_id = kvm.check_extension("KVM_CAP_MAX_VCPU_ID")
        assert max_id > 3
        with pytest.raises(KvmError) as ei:
            vm.create_vcpu(max_id)
        assert ei.value.errno == errno.EINVAL


def test_create_vm_rejects_unknown_machine_type(kvm: kvmdev.Kvm) -> None:
    with pytest.raises(KvmError) as ei:
        kvm.create_vm(99)
    assert ei.value.errno == errno.EINVAL
    assert str(ei.value).startswith("KVM_CREATE_VM on system: [Errno 22] EINVAL: ")


def test_supports_device_creates_nothing(kvm: kvmdev.Kvm) -> None:
    vm = kvm.create_vm()
    before = nfds()
    assert vm.supports_device(DeviceType.VFIO) is True
    assert vm.supports_device("vfio") is True
    assert nfds() == before
    assert vm.devices == []
    # the TEST call left no VFIO instance behind: a real create still succeeds
    dev = vm.create_device(DeviceType.VFIO)
    assert nfds() == before + 1
    dev.close()


@pytest.mark.skipif(kvmdev.arch.host_arch_name() != "x86_64", reason="x86 host device set")
def test_supports_device_on_x86(kvm: kvmdev.Kvm) -> None:
    vm = kvm.create_vm()
    present = {t.name for t in DeviceType if vm.supports_device(t)}
    # The x86 kernel registers only the VFIO device type.
    assert present == {"VFIO"}
    assert vm.supports_device(9999) is False


def test_unsupported_device_type_error(kvm: kvmdev.Kvm) -> None:
    vm = kvm.create_vm()
    before = nfds()
    with pytest.raises(KvmError) as ei:
        vm.create_device(9999)
    assert ei.value.errno == errno.ENODEV
    assert str(ei.value) == ("KVM_CREATE_DEVICE on device type 9999: [Errno 19] ENODEV: the device type is "
                             "unknown or unsupported by this kernel (api.rst: 'The device type is unknown or "
                             "unsupported')")
    assert nfds() == before
    with pytest.raises(ValueError, match="unknown device type 'NOPE'"):
        vm.create_device("NOPE")


def test_closing_vm_closes_children(kvm: kvmdev.Kvm) -> None:
    before = nfds()
    vm = kvm.create_vm()
    v = vm.create_vcpu(0)
    d = vm.create_device("VFIO")
    assert nfds() == before + 3
    vm.close()
    assert vm.closed and v.closed and d.closed
    assert nfds() == before
    with pytest.raises(ClosedError, match="vCPU 0 is closed"):
        v.fileno()
    with pytest.raises(ClosedError):
        d.has_attr("KVM_DEV_VFIO_FILE", "KVM_DEV_VFIO_FILE_ADD")
    vm.close()  # idempotent


def test_children_survive_closing_each_other(kvm: kvmdev.Kvm) -> None:
    vm = kvm.create_vm()
    v = vm.create_vcpu(0)
    d = vm.create_device("VFIO")
    d.close()
    assert not v.closed and vm.devices == []
    # a closed VFIO device is destroyed (ops->release): another may be created
    vm.create_device("VFIO").close()
    vm.close()


def test_context_managers(kvm: kvmdev.Kvm) -> None:
    before = nfds()
    with kvm.create_vm() as vm:
        with vm.create_vcpu(0) as v:
            assert not v.closed
        assert v.closed
        with vm.create_device("VFIO") as d:
            assert d.type == DeviceType.VFIO and d.type_name == "VFIO"
        assert d.closed
    assert nfds() == before


def test_kernel_closes_fds_of_unreferenced_objects(kvm: kvmdev.Kvm) -> None:
    import gc
    before = nfds()
    vm = kvm.create_vm()
    vm.create_vcpu(0)
    del vm
    gc.collect()
    assert nfds() == before


def test_kvm_error_is_an_oserror_and_pickles(kvm: kvmdev.Kvm) -> None:
    vm = kvm.create_vm()
    first = vm.create_device("VFIO")
    with pytest.raises(OSError) as ei:
        vm.create_device("VFIO")
    e = ei.value
    assert isinstance(e, KvmError) and e.errno == errno.EBUSY and e.errno_name == "EBUSY"
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.errno == e.errno and e2.ioctl == e.ioctl
    first.close()


def test_unreferenced_device_is_closed(kvm: kvmdev.Kvm) -> None:
    import gc
    vm = kvm.create_vm()
    vm.create_device("VFIO")  # dropped at once: its fd closes, the kernel releases it
    gc.collect()
    assert vm.devices == []
    vm.create_device("VFIO").close()


def test_fd_count_stable_over_1000_cycles(kvm: kvmdev.Kvm) -> None:
    before = nfds()
    for _ in range(1000):
        with kvm.create_vm() as vm:
            vm.create_vcpu(0)
            vm.create_device(DeviceType.VFIO)
    assert nfds() == before


def test_real_backend_refuses_foreign_arch() -> None:
    other = "arm64" if kvmdev.arch.host_arch_name() != "arm64" else "x86_64"
    with pytest.raises(ValueError, match="backend='mock'"):
        kvmdev.open("real", arch=other)


def test_mock_can_be_any_arch() -> None:
    for arch in kvmdev.ARCH_NAMES:
        with kvmdev.open("mock", arch=arch) as k:
            assert k.arch == arch and k.backend == "mock"
            assert k.api_version == 12
            vm = k.create_vm()
            assert vm.supports_device("VFIO")


def test_backend_env_chooses_only_the_unchosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """KVMDEV_BACKEND picks the backend of open() without one; an explicit
    backend argument is never overridden."""
    monkeypatch.setenv("KVMDEV_BACKEND", "mock")
    with kvmdev.open() as k:
        assert k.backend == "mock" and k.backend_reason == "KVMDEV_BACKEND=mock"
    with kvmdev.open("mock", arch="arm64", gic=2) as k:
        assert k.backend == "mock" and k.backend_reason == "requested"
    monkeypatch.setenv("KVMDEV_BACKEND", "bogus")
    with pytest.raises(ValueError, match="KVMDEV_BACKEND must be one of"):
        kvmdev.open()


def test_auto_falls_back_to_mock_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMDEV_BACKEND", raising=False)
    monkeypatch.setenv("KVMDEV_DEVICE", "/nonexistent/kvm")
    with kvmdev.open("auto") as k:
        assert k.backend == "mock"
        assert "/dev/kvm does not exist" in k.backend_reason
    with pytest.raises(kvmdev.KvmUnavailable) as ei:
        kvmdev.open("real")
    assert ei.value.errno == errno.ENOENT
    assert str(ei.value).startswith("open on /nonexistent/kvm: [Errno 2] ENOENT: /dev/kvm does not exist")


def test_kvm_disabled_message(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A device node whose driver is absent (open: ENXIO), as /dev/kvm is where KVM
    is disabled: one clear message from "real", the mock with that reason from
    "auto".  (A character node of an unused major number stands in for it.)"""
    import stat
    node = tmp_path / "kvm"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(240, 77))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    monkeypatch.delenv("KVMDEV_BACKEND", raising=False)
    monkeypatch.setenv("KVMDEV_DEVICE", str(node))
    with pytest.raises(kvmdev.KvmUnavailable) as ei:
        kvmdev.open("real")
    assert ei.value.errno == errno.ENXIO
    assert "KVM is disabled" in str(ei.value)
    with kvmdev.open("auto") as k:
        assert k.backend == "mock" and "KVM is disabled" in k.backend_reason


def test_auto_raises_transient_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fd table full (EMFILE) /dev/kvm cannot open: "auto" raises that
    (naming /dev/kvm) rather than silently handing out a mock."""
    import resource
    monkeypatch.delenv("KVMDEV_BACKEND", raising=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        for backend in ("auto", "real"):
            with pytest.raises(kvmdev.KvmUnavailable) as ei:
                kvmdev.open(backend)
            assert ei.value.errno == errno.EMFILE and ei.value.ioctl == "open"
            assert "kvm" in ei.value.target and "mock" not in str(ei.value)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_auto_with_foreign_arch_is_mock() -> None:
    other = "arm64" if kvmdev.arch.host_arch_name() != "arm64" else "x86_64"
    with kvmdev.open("auto", arch=other) as k:
        assert k.backend == "mock" and k.arch == other
        assert "not the host's" in k.backend_reason


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/kvm"), reason="needs root to drop to nobody")
def test_no_permission_message() -> None:
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible here")
    # Import as root, then drop to nobody: the interpreter's own files may not be
    # readable by nobody, /dev/kvm is what must refuse.
    code = ("import os, pwd, kvmdev, kvmdev.backends.guard\nkvmdev.get_arch()   # loads the cffi extension\n"
            "pw = pwd.getpwnam('nobody'); os.setgroups([]); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)\n"
            "with kvmdev.open('auto') as k:\n    print(k.backend, k.backend_reason)\n"
            "try:\n    kvmdev.open('real')\n"
            "except kvmdev.KvmUnavailable as e:\n    print(e.errno_name, e)\n")
    out = python_child(code, timeout=60)
    assert out.returncode == 0, out.stderr
    auto, real = out.stdout.splitlines()[:2]
    assert auto.startswith("mock /dev/kvm unusable (EACCES): no permission to open /dev/kvm")   # auto's choice
    assert real.startswith("EACCES open on /dev/kvm: [Errno 13] EACCES: no permission to open /dev/kvm")
