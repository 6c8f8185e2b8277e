"""kvmdev objects shared between threads (the guarantees in the README's
"Threads and processes"), on the real kernel and the mock (x86 here; arm64 and
powerpc in their guests): creation races
resolve as the kernel's kvm->lock makes them, each thread sees its own writes,
and a VGIC register access never fails because another thread is making one."""
from __future__ import annotations

import errno as E
import os
import sys
import threading
from typing import Any, Callable

import pytest

import kvmdev
from kvmdev.devices.vgic import VgicV2, VgicV3

N = 8


def race(fn: Callable[[int], Any]) -> list[Any]:
    """fn(i) on N threads released together; each result or the exception raised."""
    start = threading.Barrier(N)
    out: list[Any] = [None] * N

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except BaseException as e:   # noqa: BLE001 - returned for the test to judge
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)      # switch threads as often as CPython allows: races show
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    return out


@pytest.mark.powerpc
@pytest.mark.arm64
def test_vcpu_creation_races(kvm: kvmdev.Kvm) -> None:
    """Distinct ids created at once all succeed with distinct fds; eight threads
    creating one id (in a new VM: a GICv2 arm64 host allows 8 vCPUs): exactly
    one gets it, the others EEXIST, no fd left behind."""
    with kvm.create_vm() as vm:
        got = race(vm.create_vcpu)
        assert all(isinstance(c, kvmdev.Vcpu) for c in got), got
        assert sorted(c.id for c in got) == list(range(N))
        assert len({c.fileno() for c in got}) == N
    with kvm.create_vm() as vm:
        same = race(lambda i: vm.create_vcpu(1))
        won = [c for c in same if isinstance(c, kvmdev.Vcpu)]
        lost = [e for e in same if isinstance(e, kvmdev.KvmError)]
        assert len(won) == 1 and len(lost) == N - 1, same
        assert {e.errno for e in lost} == {E.EEXIST} and all(e.ioctl == "KVM_CREATE_VCPU" for e in lost)


@pytest.mark.powerpc
@pytest.mark.arm64
def test_vfio_creation_race(kvm: kvmdev.Kvm) -> None:
    """One VFIO device per VM: of eight threads creating it, one wins, the rest
    get EBUSY (kvm_vfio_create under kvm->lock)."""
    with kvm.create_vm() as vm:
        if not vm.supports_device("VFIO"):
            pytest.skip(f"no VFIO device on this {kvm.backend} KVM")
        got = race(lambda i: vm.create_device("VFIO"))
        won = [d for d in got if not isinstance(d, BaseException)]
        lost = [e for e in got if isinstance(e, kvmdev.KvmError)]
        assert len(won) == 1 and len(lost) == N - 1, got
        assert {e.errno for e in lost} == {E.EBUSY}


@pytest.mark.powerpc
@pytest.mark.arm64
def test_each_thread_its_own_vcpu(kvm: kvmdev.Kvm) -> None:
    """A vCPU per thread, a per-vCPU value written and read back 200 times: every
    thread reads only its own.  x86: the TSC offset (the "-fc-" hosts here pin it
    at 0, see test_x86_attrs, so there every call must still succeed); powerpc:
    the CPPR of the vCPU's XICS presentation controller; arm64: register x0."""
    if kvm.arch not in ("x86_64", "powerpc", "arm64"):
        pytest.skip("the per-vCPU values used are x86's TSC offset, powerpc's ICP and arm64's x0")
    pinned = "-fc-" in os.uname().release and kvm.backend == "real"
    with kvm.create_vm() as vm:
        cpus = [vm.create_vcpu(i) for i in range(N)]
        if kvm.arch == "arm64":
            for c in cpus:
                c.vcpu_init(["PSCI_0_2"])

            def work(i: int) -> int:
                bad = 0
                for r in range(200):
                    v = (i << 32) | r
                    cpus[i].set_one_reg("x0", v)
                    bad += cpus[i].get_one_reg("x0") != v
                return bad
        elif kvm.arch == "powerpc":
            from kvmdev.devices.xics import IcpState
            xics = vm.create_device("XICS")
            for c in cpus:
                c.enable_cap("KVM_CAP_PPC_PAPR")
                xics.connect(c)

            def work(i: int) -> int:
                bad = 0
                for r in range(200):
                    v = (i * 31 + r) & 0xFF
                    xics.set_icp(cpus[i], IcpState(cppr=v))
                    bad += xics.icp(cpus[i]).cppr != v
                return bad
        else:
            def work(i: int) -> int:
                bad = 0
                for r in range(200):
                    v = (i << 40) | r
                    cpus[i].tsc_offset = v
                    bad += cpus[i].tsc_offset != (0 if pinned else v)
                return bad
        assert race(work) == [0] * N


@pytest.mark.powerpc
@pytest.mark.arm64
def test_kvm_run_is_mapped_once(kvm: kvmdev.Kvm) -> None:
    """The lazily mapped struct kvm_run: eight threads' first use get one map."""
    with kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        ffi = cpu._arch.ffi
        addrs = race(lambda i: int(ffi.cast("uintptr_t", cpu.kvm_run)))
        assert all(isinstance(a, int) for a in addrs), addrs
        assert len(set(addrs)) == 1


@pytest.mark.arm64
def test_vgic_registers_from_threads(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """Eight threads, each owning one GICD_IPRIORITYR (SPIs 32..63), write and
    read it 100 times: no EBUSY (the kernel serializes register accesses on
    kvm->lock before it trylocks the vCPUs) and every read is the thread's own."""
    with arm64_kvm.create_vm() as vm:
        cpus = [vm.create_vcpu(i) for i in range(2)]
        for c in cpus:
            c.vcpu_init(["PSCI_0_2"])
        if arm64_gic == 3:
            g: Any = vm.create_device("ARM_VGIC_V3")
            assert isinstance(g, VgicV3)
            g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        else:
            g = vm.create_device("ARM_VGIC_V2")
            assert isinstance(g, VgicV2)
            g.dist_base, g.cpu_base = 0x08000000, 0x08010000
        g.init()

        def work(i: int) -> int:
            name, bad = f"GICD_IPRIORITYR{8 + i}", 0
            for r in range(100):
                v = ((i * 0x20 + r) & 0xF8) * 0x01010101
                g.dist[name] = v
                bad += g.dist[name] != v
            return bad
        assert race(work) == [0] * N
        assert [g.dist[f"GICD_IPRIORITYR{8 + i}"] for i in range(N)] == \
            [((i * 0x20 + 99) & 0xF8) * 0x01010101 for i in range(N)]


def test_listing_while_another_thread_creates(kvm: kvmdev.Kvm) -> None:
    """Issue 18: vm.vcpus, vm.devices and vm.guest_memory() while another thread creates
    vCPUs and adds memory raised "dictionary changed size during iteration"."""
    with kvm.create_vm() as vm:
        vm.add_memory(0x100000, 4096)
        stop = threading.Event()
        errors: list[BaseException] = []

        def lister() -> None:
            try:
                while not stop.is_set():   # the last slot: the lookup walks every slot
                    last = max(vm.memory)
                    vm.vcpus, vm.devices, vm.guest_memory(vm.memory[last].guest_phys_addr)
            except BaseException as e:   # noqa: BLE001 - reported below
                errors.append(e)
        ts = [threading.Thread(target=lister) for _ in range(2)]
        for t in ts:
            t.start()
        kept = []   # vm.vcpus lists live vCPUs (kvmdev holds them weakly)
        try:
            for i in range(200):
                kept.append(vm.create_vcpu(i))
                vm.add_memory(0x10000000 + i * 0x10000, 4096)
        finally:
            stop.set()
            for t in ts:
                t.join(10)
        assert errors == []
        assert [c.id for c in vm.vcpus] == list(range(200))
