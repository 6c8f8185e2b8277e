"""Signals at any point: a KeyboardInterrupt (what any signal handler that raises
delivers) inside gicstate.save/restore or attribute traffic on the mocks leaves
no lock held and no fd open: every later call completes.  Points are chosen by a
trace hook that raises at the n-th line the mock executes, so each case is
reproducible (``_interrupt_at``); the fuzzer (kvmdev.fuzz --signals) adds real
SIGALRMs at random times."""
from __future__ import annotations

import random
import sys
import threading
from typing import Any, Callable

import pytest

import kvmdev
from kvmdev.devices import gicstate

MOCK_DIR = "kvmdev/backends/mock/"


class _Interrupt:
    """A profile hook raising KeyboardInterrupt at the ``at``-th point where CPython
    runs a pending signal handler (its eval breaker: a Python function's entry,
    just after a call returns) in code under ``where``; with ``line``, only at
    points on that (file suffix, line number)."""

    EVENTS = frozenset({"call", "return", "c_return"})

    def __init__(self, at: int, where: tuple[str, ...] = (MOCK_DIR,),
                 line: tuple[str, int] | None = None) -> None:
        self.at, self.where, self.line, self.n, self.fired = at, where, line, 0, False

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if self.fired or event not in self.EVENTS:
            return
        co = frame.f_code
        if not any(w in co.co_filename for w in self.where):
            return
        if self.line is not None and not (co.co_filename.endswith(self.line[0]) and frame.f_lineno == self.line[1]):
            return
        self.n += 1
        if self.n > self.at:
            self.fired = True
            sys.setprofile(None)
            raise KeyboardInterrupt(f"test interrupt at {co.co_filename}:{frame.f_lineno} ({event})")


def _interrupt_at(fn: Callable[[], Any], hook: _Interrupt) -> bool:
    """Run ``fn`` with the hook; whether it was interrupted (KeyboardInterrupt)."""
    sys.setprofile(hook)
    try:
        fn()
    except KeyboardInterrupt:
        return True
    finally:
        sys.setprofile(None)
    return False


def _completes(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``fn()`` in a thread; fails the test if it does not return within ``timeout``."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:   # noqa: BLE001 - reported below
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} hung (a lock left held)"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _gic_vm(kvm: kvmdev.Kvm, n: int) -> tuple[Any, list[Any], list[Any]]:
    vm = kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(n)]
    for c in cpus:
        c.vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    its = vm.create_device("ARM_VGIC_ITS")
    its.base = 0x08080000
    gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
    gic.init()
    return gic, cpus, [its]


def _all_usable(gic: Any, cpus: list[Any], its: list[Any]) -> None:
    """Every vCPU ioctl completes, the VGIC answers without EBUSY, a save works."""
    for c in cpus:
        _completes(lambda c=c: c.get_one_reg("pc"))
    _completes(lambda: gic.dist["GICD_CTLR"])
    _completes(lambda: gicstate.save(gic, cpus, its=its))


# the lines of the mock's vCPU locking, hit at several of their occurrences
def _lock_lines() -> list[tuple[str, int]]:
    import inspect

    from kvmdev.backends.mock import kernel
    out = []
    fns = [getattr(kernel.MockVm, "with_all_vcpus_locked", None) or kernel.MockVm.all_vcpus_locked,
           kernel.MockVcpu.ioctl]
    for fn in fns:
        fn = getattr(fn, "__wrapped__", fn)
        lines, first = inspect.getsourcelines(fn)
        out += [("backends/mock/kernel.py", first + i) for i in range(1, len(lines))]
    return out


@pytest.mark.parametrize("line", _lock_lines(), ids=lambda x: f"kernel.py:{x[1]}")
def test_interrupt_in_vcpu_locking(line: tuple[str, int]) -> None:
    with kvmdev.open("mock", arch="arm64") as kvm:
        gic, cpus, its = _gic_vm(kvm, 8)
        for at in (0, 3, 9):
            if not _interrupt_at(lambda: gicstate.save(gic, cpus, its=its), _Interrupt(at, line=line)):
                break
            _all_usable(gic, cpus, its)


def test_interrupt_at_random_points_of_save_and_restore() -> None:
    rng = random.Random(20261204)
    with kvmdev.open("mock", arch="arm64") as kvm:
        gic, cpus, its = _gic_vm(kvm, 64)
        doc = gicstate.save(gic, cpus, its=its)
        for i in range(8):
            fn = (lambda: gicstate.save(gic, cpus, its=its)) if i % 2 else \
                (lambda: gicstate.restore(gic, doc, cpus, its=its))
            assert _interrupt_at(fn, _Interrupt(rng.randrange(100_000)))
            _all_usable(gic, cpus, its)
