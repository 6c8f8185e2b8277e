"""Stopping a vCPU in KVM_RUN from another thread (Vcpu.request_exit), and the
vCPU power states (KVM_{GET,SET}_MP_STATE, PSCI CPU_ON).  The x86 tests run a
real-mode guest spinning at the reset vector (`jmp .`) on the real x86 kernel
(the x86 mock runs no guest code); the arm64 ones on the arm64 mock (every
profile) and on the real 6.12 and 6.1 kernels in the guests.

Every run happens in a thread joined with a timeout: a run that does not stop
fails the test (and is kicked until it does) instead of hanging it."""
from __future__ import annotations

import errno as E
import os
import random
import threading
import time
from typing import Any, Iterator

import pytest

import kvmdev
from a64 import HVC0, ldst, program, spin_guest
from kvm_asserts import raises
from kvmdev.arm64 import default_mpidr

RAM = 0x40000000
MMIO = 0x10000000
STOP_WITHIN_S = 10.0          # TCG-emulated arm64 hosts are slow; x86 stops in microseconds
CPU_ON = 0xC4000003           # PSCI_0_2_FN64_CPU_ON


class Runner:
    """vcpu.run() in a daemon thread; result() waits a bounded time."""

    def __init__(self, vcpu: kvmdev.Vcpu, **kw: Any) -> None:
        self.vcpu = vcpu
        self.out: list[Any] = []
        self.started = threading.Event()
        self.t = threading.Thread(target=self._run, kwargs=kw, daemon=True)
        self.t.start()

    def _run(self, **kw: Any) -> None:
        self.started.set()
        try:
            self.out.append(self.vcpu.run(**kw))
        except BaseException as e:   # noqa: BLE001 - reported by result()
            self.out.append(e)

    def result(self, timeout: float = STOP_WITHIN_S) -> Any:
        self.t.join(timeout)
        if self.t.is_alive():
            for _ in range(100):         # free the thread before failing
                self.vcpu.request_exit()
                self.t.join(0.1)
                if not self.t.is_alive():
                    break
            pytest.fail(f"vCPU {self.vcpu.id}'s run did not return within {timeout} s")
        r = self.out[0]
        if isinstance(r, BaseException):
            raise r
        return r


def _still_running(r: Runner, seconds: float) -> bool:
    r.t.join(seconds)
    return r.t.is_alive()


# --- x86: the real kernel --------------------------------------------------------

@pytest.fixture
def x86_spin(kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vcpu]:
    if kvm.arch != "x86_64":
        pytest.skip("the x86 guest needs an x86 host")
    if kvm.backend == "mock":
        pytest.skip("the x86 mock runs no guest code (only immediate_exit is modelled)")
    with kvm.create_vm() as vm:
        # reset state: CS base 0xffff0000, IP 0xfff0 -> `jmp .` at 0xfffffff0
        mem = vm.add_memory(0xFFFF0000, 0x10000)
        mem.write(0xFFFFFFF0, b"\xeb\xfe")
        yield vm.create_vcpu(0)


def test_request_exit_stops_a_spinning_x86_guest(x86_spin: kvmdev.Vcpu) -> None:
    c = x86_spin
    r = Runner(c)
    assert _still_running(r, 0.2)                 # the guest really spins
    t0 = time.monotonic()
    c.request_exit()
    assert r.result() == "KVM_EXIT_INTR"
    assert time.monotonic() - t0 < 1.0
    assert c.kvm_run.immediate_exit == 0          # cleared: the next run runs
    r = Runner(c)
    assert _still_running(r, 0.2)
    c.request_exit()
    assert r.result() == "KVM_EXIT_INTR"


def test_request_exit_before_the_run_is_kept_for_it(x86_spin: kvmdev.Vcpu) -> None:
    """A request with no run in progress makes the next run return at once, once."""
    c = x86_spin
    c.request_exit()
    c.request_exit()                              # two requests before a run are one
    assert c.kvm_run.immediate_exit == 1
    assert Runner(c).result() == "KVM_EXIT_INTR"
    r = Runner(c)
    assert _still_running(r, 0.2)
    c.request_exit()
    assert r.result() == "KVM_EXIT_INTR"


def test_request_exit_at_random_moments_never_hangs(x86_spin: kvmdev.Vcpu) -> None:
    """200 runs, each stopped by a request at a random moment: before the thread
    starts, while it enters KVM_RUN, or while the guest runs."""
    c = x86_spin
    rng = random.Random(18)
    for i in range(200):
        delay = rng.choice([0.0, 0.0, 1e-5, 1e-4, 1e-3, 5e-3])
        if rng.random() < 0.2:
            c.request_exit()
            r = Runner(c)
        else:
            r = Runner(c)
            if delay:
                time.sleep(delay)
            c.request_exit()
        assert r.result() == "KVM_EXIT_INTR", i
        assert c.kvm_run.immediate_exit == 0


def test_immediate_exit_runs_from_several_threads_never_enter_the_guest(x86_spin: kvmdev.Vcpu) -> None:
    """Issue 18: run(immediate_exit=True) from several threads on one vCPU: each
    returns KVM_EXIT_INTR without entering the spinning guest (kvmdev runs one
    KVM_RUN per vCPU at a time; immediate_exit is set under that).  Before, one of
    8 x 2000 runs entered the guest on every try here."""
    c = x86_spin
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(2000):
            r = c.run(immediate_exit=True)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = any(t.is_alive() for t in threads)
    while any(t.is_alive() for t in threads):     # a thread in the guest: get it out, then fail
        c.request_exit()
        time.sleep(0.01)
    assert not hung, "a run(immediate_exit=True) entered the guest"
    assert results == ["KVM_EXIT_INTR"] * 16000


# --- arm64: the mock and the real kernels ------------------------------------------

@pytest.fixture
def vm(arm64_kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vm]:
    with arm64_kvm.create_vm() as v:
        yield v


@pytest.mark.arm64
def test_request_exit_stops_a_spinning_arm64_guest(vm: kvmdev.Vm) -> None:
    """The guest spins until RAM+0x2000 is set; a request stops it (KVM_EXIT_INTR),
    the next run continues the loop, and the guest then leaves it."""
    c = vm.create_vcpu(0)
    c.vcpu_init(["PSCI_0_2"])
    mem = spin_guest(vm, c, RAM, MMIO)
    c.set_one_reg("x0", 0x5A)
    r = Runner(c)
    assert _still_running(r, 0.5)
    c.request_exit()
    assert r.result() == "KVM_EXIT_INTR"
    assert mem.read(RAM + 0x1000, 8) == (1).to_bytes(8, "little")    # it did run
    for _ in range(3):
        r = Runner(c)
        assert _still_running(r, 0.3)                              # cleared: it runs again
        c.request_exit()
        assert r.result() == "KVM_EXIT_INTR"
    mem.write(RAM + 0x2000, (1).to_bytes(8, "little"))
    assert Runner(c).result() == "KVM_EXIT_MMIO"
    assert c.mmio.phys_addr == MMIO and c.mmio.data == (0x5A).to_bytes(8, "little")


@pytest.mark.arm64
def test_request_exit_at_random_moments_arm64(vm: kvmdev.Vm) -> None:
    c = vm.create_vcpu(0)
    c.vcpu_init(["PSCI_0_2"])
    spin_guest(vm, c, RAM + 0x100000, MMIO)
    rng = random.Random(6)
    for i in range(40):
        r = Runner(c)
        time.sleep(rng.choice([0.0, 1e-4, 1e-3, 1e-2]))
        c.request_exit()
        assert r.result() == "KVM_EXIT_INTR", i


@pytest.mark.arm64
def test_mp_state(vm: kvmdev.Vm) -> None:
    """KVM_{GET,SET}_MP_STATE on arm64 (6.12 and 6.1 alike): a vCPU initialised with
    POWER_OFF is STOPPED, others RUNNABLE; RUNNABLE, STOPPED and SUSPENDED can
    be set, every other state is EINVAL and changes nothing."""
    a = vm.create_vcpu(0)
    a.vcpu_init(["PSCI_0_2"])
    b = vm.create_vcpu(1)
    b.vcpu_init(["PSCI_0_2", "POWER_OFF"])
    assert a.mp_state == "KVM_MP_STATE_RUNNABLE"
    assert b.mp_state == "KVM_MP_STATE_STOPPED"
    for state, name in (("RUNNABLE", "RUNNABLE"), ("KVM_MP_STATE_SUSPENDED", "SUSPENDED"), (5, "STOPPED"),
                        ("runnable", "RUNNABLE")):
        b.mp_state = state
        assert b.mp_state == "KVM_MP_STATE_" + name
    for bad in (1, 2, 3, 4, 6, 7, 8, 9, 11, "HALTED", "AP_RESET_HOLD"):
        e = raises(E.EINVAL, setattr, b, "mp_state", bad)
        assert "KVM_SET_MP_STATE" in str(e)
        assert b.mp_state == "KVM_MP_STATE_RUNNABLE"
    with pytest.raises(ValueError, match="unknown state"):
        b.mp_state = "ASLEEP"
    with pytest.raises(ValueError):
        b.mp_state = 1 << 32
    with pytest.raises(TypeError):
        b.mp_state = True


@pytest.mark.arm64
def test_a_stopped_vcpu_sleeps_in_kvm_run_until_kicked(vm: kvmdev.Vm) -> None:
    """A STOPPED vCPU's KVM_RUN sleeps (kvm_vcpu_sleep) instead of running its
    guest; request_exit's signal wakes it with KVM_EXIT_INTR, and it stays STOPPED."""
    c = vm.create_vcpu(0)
    c.vcpu_init(["PSCI_0_2", "POWER_OFF"])
    mem = vm.add_memory(RAM + 0x200000, 0x10000)
    mem.write(RAM + 0x200000, program(ldst(False, 0, 5)))     # str x0, [x5]: would exit at once
    c.set_one_reg("pc", RAM + 0x200000)
    c.set_one_reg("x5", MMIO)
    r = Runner(c)
    assert _still_running(r, 0.5)
    c.request_exit()
    assert r.result() == "KVM_EXIT_INTR"
    assert c.mp_state == "KVM_MP_STATE_STOPPED"
    c.mp_state = "RUNNABLE"
    assert Runner(c).result() == "KVM_EXIT_MMIO"


@pytest.mark.arm64
def test_psci_cpu_on_wakes_a_stopped_vcpu(vm: kvmdev.Vm) -> None:
    """PSCI CPU_ON from vCPU 0 (HVC) makes the STOPPED vCPU 1 RUNNABLE and wakes
    its sleeping KVM_RUN, which resets it to the entry point with x0 = context;
    a second CPU_ON answers ALREADY_ON; INVALID_PARAMS for no such vCPU, and for
    an MPIDR with bits outside the affinity fields (the real kernels did so to
    a first version of this test that passed MPIDR_EL1 as read, bit 31 set)."""
    base = RAM + 0x300000
    mem = vm.add_memory(base, 0x10000)
    a = vm.create_vcpu(0)
    a.vcpu_init(["PSCI_0_2"])
    b = vm.create_vcpu(1)
    b.vcpu_init(["PSCI_0_2", "POWER_OFF"])
    entry = base + 0x1000
    # hvc #0; str x0, [x5]; b .-8: each run after the MMIO exit steps over the
    # store (kvm_handle_mmio_return) and calls again with the x0-x3 set meanwhile
    mem.write(base, program(HVC0, ldst(False, 0, 5), 0x14000000 | (-2 & 0x3FFFFFF)))
    mem.write(entry, program(ldst(False, 0, 6)))             # str x0, [x6]: x6 is 0 after reset
    b.set_one_reg("x6", MMIO)                                # (reset by CPU_ON: the store goes to 0)
    sleeper = Runner(b)
    assert _still_running(sleeper, 0.3)
    a.set_one_reg("pc", base)
    a.set_one_reg("x5", MMIO)
    aff = default_mpidr(1) & 0xFF00FFFFFF       # the affinity fields (MPIDR_HWID_BITMASK)
    invalid, already_on = (1 << 64) - 2, (1 << 64) - 4
    # MPIDR's RES1 bit 31 is not an affinity bit: kvm_psci_valid_affinity refuses it
    for target, expect in ((default_mpidr(1), invalid), (aff, 0), (aff, already_on), (0xFF, invalid)):
        for reg, v in {"x0": CPU_ON, "x1": target, "x2": entry, "x3": 0xC0FFEE}.items():
            a.set_one_reg(reg, v)
        assert a.run() == "KVM_EXIT_MMIO"
        assert a.mmio.phys_addr == MMIO and int.from_bytes(a.mmio.data, "little") == expect
    assert sleeper.result() == "KVM_EXIT_MMIO"
    assert b.mp_state == "KVM_MP_STATE_RUNNABLE"
    assert b.mmio.phys_addr == 0 and int.from_bytes(b.mmio.data, "little") == 0xC0FFEE
    assert b.get_one_reg("pc") == entry


@pytest.mark.arm64
def test_vcpu_events_serror(arm64_kvm: kvmdev.Kvm, vm: kvmdev.Vm) -> None:
    """KVM_{GET,SET}_VCPU_EVENTS on arm64 (6.12 and 6.1 alike, QEMU -cpu max has
    RAS): a GET says serror_has_esr (the host can take an ESR) and no SError
    pending; a pending SError without ESR reads back with ESR_ELx_ISV (the ESR
    kvm_inject_vabt gives), one with an ESR with that ESR; serror_pending False
    does not clear it; an ESR outside the ISS is EINVAL; before
    KVM_ARM_VCPU_INIT both are ENOEXEC."""
    from kvmdev.vcpu import Arm64VcpuEvents as Ev
    c = vm.create_vcpu(0)
    raises(E.ENOEXEC, c.get_vcpu_events)
    raises(E.ENOEXEC, c.set_vcpu_events, Ev())
    c.vcpu_init(["PSCI_0_2"])
    ras = c.get_vcpu_events().serror_has_esr
    if arm64_kvm.backend == "mock" or "KVMDEV_ARM64_GIC" in os.environ:
        assert ras                                   # the guests' -cpu max has RAS
    assert c.get_vcpu_events() == Ev(serror_has_esr=ras)
    c.set_vcpu_events(Ev())                          # nothing pending: accepted, no change
    assert c.get_vcpu_events() == Ev(serror_has_esr=ras)
    if ras:
        raises(E.EINVAL, c.set_vcpu_events, Ev(serror_pending=True, serror_has_esr=True, serror_esr=1 << 25))
        assert not c.get_vcpu_events().serror_pending
    c.set_vcpu_events(Ev(serror_pending=True))
    assert c.get_vcpu_events() == Ev(True, ras, False, 1 << 24 if ras else 0)
    if ras:
        c.set_vcpu_events(Ev(serror_pending=True, serror_has_esr=True, serror_esr=0x1234))
        assert c.get_vcpu_events() == Ev(True, True, False, 0x1234)
    c.set_vcpu_events(Ev(serror_pending=False))      # does not clear a pending SError
    assert c.get_vcpu_events().serror_pending
    with pytest.raises(ValueError):
        c.set_vcpu_events(Ev(serror_esr=1 << 64))
    with pytest.raises(TypeError):
        c.set_vcpu_events({"serror_pending": 1})  # type: ignore[arg-type]
