"""Signals and forks at random points (kvmdev.chaos, which `make fuzz` runs
longer), and the fd-layer bugs they found: an interrupt between an ioctl's new fd
and its object, a fork while other threads hold kvmdev's or the mock's locks."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import kvmdev
from kvmdev import chaos
from test_reliability_signals import _interrupt_at, _Interrupt


def test_signals_at_random_points() -> None:
    out: list[str] = []
    assert chaos.signals(300, seed=11, vcpus=8, log=out.append) == 0, out


def test_forks_with_threads_running() -> None:
    out: list[str] = []
    assert chaos.forks(25, seed=5, log=out.append) == 0, out


def test_forks_with_threads_running_real_x86() -> None:
    from conftest import HOST, REAL_UNUSABLE
    if HOST != "x86_64" or REAL_UNUSABLE:
        pytest.skip("the real x86 kernel")
    out: list[str] = []
    assert chaos.forks(25, seed=5, arch="x86_64", backend="real", log=out.append) == 0, out


def _child_hangs(fn, timeout: float = 5.0) -> bool:
    """Run ``fn`` in a fork child; whether it was still running after ``timeout``."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return True


def test_interrupt_in_the_fd_layer_leaks_no_fd() -> None:
    before = chaos._kvm_fds()
    kvm = kvmdev.open("mock", arch="arm64")
    vm = kvm.create_vm()
    vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    where = ("kvmdev/vm.py", "kvmdev/_fd.py", "kvmdev/device.py", "kvmdev/attr_target.py")
    for at in range(120):
        _interrupt_at(lambda: vm.create_device("ARM_VGIC_ITS").close(), _Interrupt(at, where=where))
    vm.close()
    kvm.close()
    assert chaos._kvm_fds() - before == set()


def test_interrupt_anywhere_in_create_and_close_leaks_no_fd_real_x86() -> None:
    """The same on the real kernel, over every point of KVM_CREATE_VM, KVM_CREATE_VCPU,
    KVM_CREATE_DEVICE and the closes, until a run goes through uninterrupted."""
    from conftest import HOST, REAL_UNUSABLE
    if HOST != "x86_64" or REAL_UNUSABLE:
        pytest.skip("the real x86 kernel")
    before = chaos._kvm_fds()
    kvm = kvmdev.open("real")
    where = ("kvmdev/kvm.py", "kvmdev/vm.py", "kvmdev/vcpu.py", "kvmdev/_fd.py", "kvmdev/device.py",
             "kvmdev/attr_target.py", "kvmdev/backends/real.py")

    def cycle() -> None:
        vm = kvm.create_vm()
        vm.create_vcpu(0)
        vm.create_device("VFIO").close()
        vm.close()
    at = 0
    while _interrupt_at(cycle, _Interrupt(at, where=where)):
        at += 1
        assert at < 2000
    kvm.close()
    import gc
    gc.collect()
    assert at > 20                      # it did land in many places
    assert chaos._kvm_fds() - before == set()


def test_fork_while_a_thread_runs_an_attr_program() -> None:
    kvm = kvmdev.open("mock", arch="arm64")
    vm = kvm.create_vm()
    vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
    gic.init()
    prog = gic.attr_program("KVM_GET_DEVICE_ATTR", [("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", 0x100 + 4 * i)
                                                    for i in range(64)])
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            prog.run()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        hung = any(_child_hangs(lambda: _swallow(prog.run), 3.0) for _ in range(5))
    finally:
        stop.set()
        t.join(10)
        vm.close()
        kvm.close()
    assert not hung, "the child's attr_program().run() hung"


def test_fork_while_a_thread_runs_an_attr_program_real_x86() -> None:
    """The same on the real x86 kernel, with a program of the system fd (which, unlike
    a VM's, a fork child may still use: it runs there)."""
    from conftest import HOST, REAL_UNUSABLE
    if HOST != "x86_64" or REAL_UNUSABLE:
        pytest.skip("the real x86 kernel")
    kvm = kvmdev.open("real")
    prog = kvm.attr_program("KVM_GET_DEVICE_ATTR", [("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP")] * 32)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            prog.run()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        hung = any(_child_hangs(lambda: prog.run(), 3.0) for _ in range(10))
    finally:
        stop.set()
        t.join(10)
        kvm.close()
    assert not hung, "the child's attr_program().run() hung"


def test_fork_while_a_thread_closes_the_vm() -> None:
    hung = False
    for _ in range(5):
        kvm = kvmdev.open("mock", arch="arm64")
        vm = kvm.create_vm()
        for i in range(500):
            vm.create_vcpu(i)
        t = threading.Thread(target=vm.close, daemon=True)
        t.start()
        while not vm.closed and t.is_alive():   # close() marks it closed first, then closes children
            pass
        hung = _child_hangs(lambda: _swallow(vm.close), 3.0) or hung
        t.join(10)
        kvm.close()
        if hung:
            break
    assert not hung, "the child's vm.close() hung"


def _swallow(fn) -> None:
    try:
        fn()
    except Exception:   # noqa: BLE001 - a clear error in the child is fine; only a hang is not
        pass


def test_fork_while_a_thread_creates_vms_on_the_mock() -> None:
    """The mock's own locks (its fd table, a VM's kvm->lock) held by a parent thread
    at fork: the child's system fd (not process-bound) still creates a VM and a vCPU."""
    kvm = kvmdev.open("mock", arch="arm64")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with kvm.create_vm() as vm:
                vm.create_vcpu(0)
    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def child() -> None:
        with kvm.create_vm() as vm:
            vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    try:
        hung = any(_child_hangs(child, 3.0) for _ in range(10))
    finally:
        stop.set()
        t.join(10)
        kvm.close()
    assert not hung, "the child's create_vm()/create_vcpu() hung on a lock the parent's thread held"
