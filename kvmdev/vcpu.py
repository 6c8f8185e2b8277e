"""Vcpu: a vCPU fd (ONE_REG, KVM_RUN and its exits, arm64 vcpu_init)."""
from __future__ import annotations

import errno as E
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, cast

from . import _check
from . import arm64 as _arm64
from ._fd import _enable_cap, _need_arch
from .arch import Arch
from .attr_target import _AttrTarget
# typed vCPU attributes (mixins; these modules import nothing of the fd layer)
from .devices.arm64_vcpu import Arm64VcpuAttrs
from .devices.x86 import X86VcpuAttrs
from .errnos import meaning
from .errors import KvmError

if TYPE_CHECKING:
    from .backends import Backend
    from .vm import Vm


class VcpuInit(NamedTuple):
    """struct kvm_vcpu_init: the target and the feature names (or bit numbers)."""

    target: int
    features: list[str | int]


class MmioExit(NamedTuple):
    """kvm_run.mmio of a KVM_EXIT_MMIO: ``data`` is the value a write stored
    (``len`` bytes, guest byte order); for a read the caller supplies it with
    Vcpu.complete_mmio_read before the next run."""

    phys_addr: int
    data: bytes
    is_write: bool


class SystemEvent(NamedTuple):
    """kvm_run.system_event of a KVM_EXIT_SYSTEM_EVENT."""

    type: str  # KVM_SYSTEM_EVENT_SHUTDOWN, ..._RESET, ..._CRASH, or the number
    data: tuple[int, ...]


@dataclass(frozen=True)
class Arm64VcpuEvents:
    """arm64 struct kvm_vcpu_events (KVM_GET/SET_VCPU_EVENTS): the exception
    fields.  On a GET, serror_has_esr says whether the host has RAS (an ESR can
    be given) and serror_esr is only meaningful with a pending SError; on a SET,
    ext_dabt_pending injects an external data abort at once (a GET never
    reports it), and serror_pending False does not clear a pending SError."""

    serror_pending: bool = False
    serror_has_esr: bool = False
    ext_dabt_pending: bool = False
    serror_esr: int = 0


class Vcpu(_AttrTarget, Arm64VcpuAttrs, X86VcpuAttrs):
    """A vCPU fd."""

    _kind = "vcpu"

    def __init__(self, backend: "Backend", fd: int, parent: Vm, vcpu_id: int) -> None:
        super().__init__(backend, fd, parent)
        self.id = vcpu_id
        self._run: Any = None
        self._run_map: Any = None
        # request_exit: a kick stays pending (kvm_run.immediate_exit = 1) until a
        # run returns KVM_EXIT_INTR; _run_thread is the thread in KVM_RUN
        self._kick_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._kick_pending = False
        self._run_thread: int | None = None
        # the real backend's KVM_RUN in C (kvmdev_vcpu_run: the same protocol under
        # a pthread mutex, see cdefs/helpers.c); None: the Python protocol above
        self._crun = getattr(backend, "vcpu_run", None)
        self._ctl: Any = None                 # its struct kvmdev_runctl, made with the map
        self._run_buf: Any = None             # ffi.buffer over kvm_run (mmio, complete_mmio_read)
        self._layout = _run_layout(self._arch)

    def _after_fork(self) -> None:
        super()._after_fork()
        self._kick_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._kick_pending = False
        self._run_thread = None

    def _target_label(self) -> str:
        return f"vCPU {self.id}"

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Vcpu {self.id} {self.backend} {self.arch} {state}>"

    @property
    def vm(self) -> Vm:
        return cast("Vm", self._parent)   # created by a Vm (not imported: it imports this module)

    def _reg_id(self, reg: int | str) -> int:
        if not isinstance(reg, str):
            return _check.u64("register id of KVM_{GET,SET}_ONE_REG", reg)
        if self._arch.name == "arm64":
            return _arm64.reg_id(reg)
        raise ValueError(f"kvmdev names no {self._arch.name} registers: pass a numeric ONE_REG id")

    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the vCPU fd (e.g. KVM_CAP_IRQ_XICS: connect the vCPU to
        an interrupt controller device, see Xics.connect)."""
        return _enable_cap(self, cap, args, flags)

    def get_one_reg(self, reg: int | str) -> int:
        """KVM_GET_ONE_REG of a register of any size the id encodes (KVM_REG_SIZE_U8
        .. U2048), by id or (arm64) name ("pc", "x0", "v0", "fpsr", "MPIDR_EL1",
        "KVM_REG_ARM_TIMER_CNT"; see kvmdev.arm64.reg_id).  Returns an int; wider
        than 64 bits (V0-V31 are 128) in the host's byte order, as the kernel
        copies a __uint128_t (little-endian on arm64 and x86)."""
        ffi = self._arch.ffi
        reg_id = self._reg_id(reg)
        size = one_reg_size(self._arch, reg_id)
        buf = ffi.new("uint8_t[]", size)          # exactly the register's size
        r = ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buf))})
        self._ioctl("KVM_GET_ONE_REG", r, register=_reg_label(reg))
        return int.from_bytes(ffi.buffer(buf), sys.byteorder)

    def set_one_reg(self, reg: int | str, value: int) -> None:
        """KVM_SET_ONE_REG of a register of any size, by id or (arm64) name:
        ``value`` an int from 0 to 2**bits - 1 (ValueError before the ioctl otherwise)."""
        ffi = self._arch.ffi
        reg_id = self._reg_id(reg)
        size = one_reg_size(self._arch, reg_id)
        value = _check.uint(f"the value of register {_reg_label(reg)} ({8 * size} bits)", value, 8 * size)
        buf = ffi.new("uint8_t[]", value.to_bytes(size, sys.byteorder))
        r = ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buf))})
        self._ioctl("KVM_SET_ONE_REG", r, register=_reg_label(reg))

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the ONE_REG ids of every register this vCPU has, in
        the kernel's order (arm64: after KVM_ARM_VCPU_INIT, else ENOEXEC).  The
        first call, with n = 0, learns the count (E2BIG); the second gets exactly
        that many (again if the list grew meanwhile)."""
        ffi = self._arch.ffi
        n = 0
        while True:
            buf = ffi.new("uint64_t[]", n + 1)    # struct kvm_reg_list: n, then reg[n]
            buf[0] = n
            try:
                self._ioctl("KVM_GET_REG_LIST", ffi.cast("struct kvm_reg_list *", buf))
            except KvmError as e:
                if e.errno != E.E2BIG or int(buf[0]) <= n:
                    raise
                n = int(buf[0])
                continue
            return [int(buf[1 + i]) for i in range(int(buf[0]))]

    # -- KVM_{GET,SET}_MP_STATE --------------------------------------------------
    @property
    def mp_state(self) -> str:
        """KVM_GET_MP_STATE: the kernel's name (KVM_MP_STATE_RUNNABLE, _STOPPED,
        _SUSPENDED, ...).  Assigning a name or number does KVM_SET_MP_STATE (arm64
        takes RUNNABLE, STOPPED and SUSPENDED, EINVAL for the rest; a STOPPED vCPU's
        KVM_RUN sleeps until PSCI CPU_ON or a signal, see request_exit)."""
        st = self._arch.ffi.new("struct kvm_mp_state *")
        self._ioctl("KVM_GET_MP_STATE", st)
        return _mp_state_names(self._arch).get(int(st.mp_state), str(int(st.mp_state)))

    @mp_state.setter
    def mp_state(self, state: int | str) -> None:
        if isinstance(state, str):
            name = state.upper()
            name = name if name.startswith("KVM_MP_STATE_") else "KVM_MP_STATE_" + name
            if not self._arch.has_const(name):
                raise ValueError(f"KVM_SET_MP_STATE: unknown state {_check.show(state)}; known: "
                                 f"{', '.join(_mp_state_names(self._arch).values())}")
            value = self._arch.const(name)
        elif isinstance(state, int) and not isinstance(state, bool):
            if not 0 <= state <= 0xFFFFFFFF:
                raise ValueError(f"KVM_SET_MP_STATE: {state} does not fit struct kvm_mp_state (__u32)")
            value = state
        else:
            raise TypeError(f"KVM_SET_MP_STATE takes a state name or number, not {type(state).__name__}")
        st = self._arch.ffi.new("struct kvm_mp_state *", {"mp_state": value})
        self._ioctl("KVM_SET_MP_STATE", st)

    # -- KVM_{GET,SET}_VCPU_EVENTS (arm64) -------------------------------------------
    def get_vcpu_events(self) -> Arm64VcpuEvents:
        """KVM_GET_VCPU_EVENTS (arm64): pending SError and its ESR (see Arm64VcpuEvents)."""
        _need_arch(self, "arm64", "KVM_GET_VCPU_EVENTS (typed)")
        ev = self._arch.ffi.new("struct kvm_vcpu_events *")
        self._ioctl("KVM_GET_VCPU_EVENTS", ev)
        x = ev.exception
        return Arm64VcpuEvents(bool(x.serror_pending), bool(x.serror_has_esr), bool(x.ext_dabt_pending),
                               int(x.serror_esr))

    def set_vcpu_events(self, events: Arm64VcpuEvents) -> None:
        """KVM_SET_VCPU_EVENTS (arm64): make an SError pending (with serror_esr when
        serror_has_esr: EINVAL without RAS or with bits outside the ISS) and/or
        inject an external data abort.  pad and reserved are sent as zeros."""
        _need_arch(self, "arm64", "KVM_SET_VCPU_EVENTS (typed)")
        if not isinstance(events, Arm64VcpuEvents):
            raise TypeError(f"KVM_SET_VCPU_EVENTS takes an Arm64VcpuEvents, not {type(events).__name__}")
        if not isinstance(events.serror_esr, int) or not 0 <= events.serror_esr < 1 << 64:
            raise ValueError(f"KVM_SET_VCPU_EVENTS: serror_esr {_check.show(events.serror_esr)} does not fit __u64")
        ev = self._arch.ffi.new("struct kvm_vcpu_events *")
        x = ev.exception
        x.serror_pending, x.serror_has_esr = bool(events.serror_pending), bool(events.serror_has_esr)
        x.ext_dabt_pending, x.serror_esr = bool(events.ext_dabt_pending), events.serror_esr
        self._ioctl("KVM_SET_VCPU_EVENTS", ev)

    # -- arm64 ---------------------------------------------------------------
    features: list[str | int] | None = None  # as given to vcpu_init

    def vcpu_init(self, features: Iterable[int | str] = (), target: int | None = None) -> None:
        """KVM_ARM_VCPU_INIT (arm64) with feature names or bits (kvmdev.arm64.FEATURES,
        e.g. "PSCI_0_2", "PMU_V3"); the target defaults to KVM_ARM_PREFERRED_TARGET's.
        Required before KVM_RUN and ONE_REG on arm64."""
        _need_arch(self, "arm64", "KVM_ARM_VCPU_INIT")
        words = _arm64.feature_bits(features, self._arch)
        if target is None:
            target = self.vm.preferred_target().target
        target = _check.u32("target of KVM_ARM_VCPU_INIT", target)
        init = self._arch.ffi.new("struct kvm_vcpu_init *", {"target": target, "features": words})
        self._ioctl("KVM_ARM_VCPU_INIT", init)
        self.features = _arm64.feature_names(words, self._arch)

    @property
    def mpidr(self) -> int:
        """MPIDR_EL1 (arm64, KVM_GET_ONE_REG; needs vcpu_init): the id the VGIC
        REDIST_REGS and CPU_SYSREGS groups address this vCPU by."""
        return self.get_one_reg("MPIDR_EL1")

    @property
    def kvm_run(self) -> Any:
        """The shared struct kvm_run (mmap of the vCPU fd), mapped on first use."""
        if self._run is None:
            with self._lock:        # two threads' first use: one map
                if self._run is None:
                    size = self.vm._parent.vcpu_mmap_size  # type: ignore[union-attr]
                    tok = object()   # this call's hold (see _Fd._acquire)
                    try:
                        fd = self._acquire(tok)
                        run_map = self._backend.mmap(fd, size)
                        ffi = self._arch.ffi
                        run = ffi.from_buffer("struct kvm_run *", run_map)
                        if self._crun is not None:
                            lib = self._arch.lib
                            ctl = lib.kvmdev_runctl_new(run)
                            if ctl == ffi.NULL:
                                raise MemoryError("kvmdev_runctl_new")
                            self._ctl = ffi.gc(ctl, lib.kvmdev_runctl_free)
                        self._run_map, self._run_buf = run_map, ffi.buffer(run)
                        self._run = run
                    except KvmError:
                        raise                   # the refusal of _acquire (closed, fork child)
                    except OSError as e:
                        raise KvmError(e.errno or E.ENOMEM, "mmap", self._target_label(),
                                       target_key=self._target_key(),
                                       detail=meaning(e.errno or E.ENOMEM, "mmap", None, None)
                                       + f" (struct kvm_run, {size} bytes)") from None
                    finally:   # inline, not _release(): no call (no pending-signal check) before the discard
                        self._users.discard(tok)     # a close meanwhile drops the map again
                        if self._deferred and not self._users:
                            self._close_deferred()
        run = self._run
        if run is None or self._fd < 0:     # closed (meanwhile)
            self._refuse(-1)
        return run

    def run(self, *, immediate_exit: bool = False) -> str:
        """KVM_RUN; returns the exit reason's kernel name.  With
        ``immediate_exit`` the kernel does its first-run checks and returns at
        once (EINTR), reported as KVM_EXIT_INTR; so does a run that
        request_exit() stopped.  One run per vCPU at a time: a second thread's
        run() waits for the first to return (the kernel serialises KVM_RUN on
        vcpu->mutex too).  The fd and the kvm_run map stay until this returns,
        even if another thread closes the vCPU meanwhile."""
        if immediate_exit is not False and immediate_exit is not True:
            immediate_exit = _check.flag("immediate_exit", immediate_exit)
        crun = self._crun
        if crun is None:
            return self._run_py(immediate_exit)
        # The hot path: one C call does the locking, the kick protocol and the
        # ioctl, and returns the exit reason (see kvmdev_vcpu_run).
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            ctl = self._ctl
            if ctl is None:
                self.kvm_run          # the first run maps kvm_run (and makes ctl)
                ctl = self._ctl
            layout = self._layout
            r = crun(fd, layout.run_req, ctl, immediate_exit)
            if r == layout.busy:
                r = self._run_wait(fd, ctl, immediate_exit)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r >= 0:
            names = layout.exit_names
            return names[r] if r < len(names) else f"exit reason {r}"
        if r == -E.EINTR:
            return "KVM_EXIT_INTR"
        raise KvmError(-r, "KVM_RUN", self._target_label(), target_key=self._target_key())

    def _run_wait(self, fd: int, ctl: Any, immediate_exit: bool) -> int:
        """Another thread's KVM_RUN is in flight: wait for it here, in Python, where
        a signal (Ctrl-C) can interrupt the wait; polls at most every millisecond."""
        delay = 1e-5
        while True:
            time.sleep(delay)
            r = self._crun(fd, self._layout.run_req, ctl, immediate_exit)
            if r != self._layout.busy:
                return int(r)
            delay = min(2 * delay, 1e-3)

    def _run_py(self, immediate_exit: bool) -> str:
        """run() on a backend without the C helper (the mock): the same protocol
        under _run_lock and _kick_lock."""
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            run = self.kvm_run
            with self._run_lock:
                with self._kick_lock:
                    if immediate_exit:
                        run.immediate_exit = 1
                    self._run_thread = threading.get_ident()
                r = -E.EINTR
                try:
                    r = self._backend.ioctl_val(fd, self._layout.run_req, 0)
                finally:
                    with self._kick_lock:
                        self._run_thread = None
                        if r == -E.EINTR:         # this run is what the kick stopped
                            self._kick_pending = False
                        # a kick that came after the exit stays for the next run
                        run.immediate_exit = 1 if self._kick_pending else 0
            if r == -E.EINTR:
                return "KVM_EXIT_INTR"
            if r < 0:
                raise KvmError(-r, "KVM_RUN", self._target_label(), target_key=self._target_key())
            return exit_reason_name(self._arch, run.exit_reason)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()

    def request_exit(self) -> None:
        """Stop this vCPU's KVM_RUN from any thread: sets kvm_run.immediate_exit
        and sends the thread in KVM_RUN a signal (the real backend's KICK_SIGNAL,
        a real-time signal whose handler is an empty C function installed without
        SA_RESTART), so run() returns KVM_EXIT_INTR whether the request lands
        before the ioctl, during it (the guest running, or a STOPPED vCPU asleep)
        or after it (then the next run() returns KVM_EXIT_INTR at once).  Requests
        before that return are one: the run that returns KVM_EXIT_INTR clears it."""
        run = self.kvm_run
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            ctl = self._ctl
            if ctl is not None:                  # the C protocol (kvmdev_vcpu_kick)
                r = self._arch.lib.kvmdev_vcpu_kick(ctl, self._backend.kick_signal())
                if r < 0:
                    raise OSError(-r, f"kvmdev: pthread_kill of vCPU {self.id}'s thread: {os.strerror(-r)}")
                return
            with self._kick_lock:
                self._kick_pending = True
                run.immediate_exit = 1
                if self._run_thread is not None:      # alive: it clears this under the lock first
                    self._backend.kick(fd, self._run_thread)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()

    def _run_view(self) -> Any:
        buf = self._run_buf
        if buf is None or self._fd < 0:
            self.kvm_run                  # maps it, or refuses (closed)
            buf = self._run_buf
        return buf

    @property
    def mmio(self) -> MmioExit:
        """kvm_run.mmio after a KVM_EXIT_MMIO."""
        layout = self._layout
        buf = self._run_buf
        if buf is None or self._fd < 0:
            buf = self._run_view()
        reason, addr, data, n, w = layout.mmio.unpack_from(buf, layout.off_exit)
        if reason != layout.exit_mmio:
            raise ValueError(f"vCPU {self.id}'s last exit is {exit_reason_name(self._arch, reason)}, "
                             f"not KVM_EXIT_MMIO")
        return _tuple_new(MmioExit, (addr, data[:n] if n < 8 else data, w != 0))

    def complete_mmio_read(self, data: bytes) -> None:
        """Supply the value of the guest's MMIO read (exactly kvm_run.mmio.len
        bytes); the next run() loads it into the guest register."""
        layout = self._layout
        buf = self._run_buf
        if buf is None or self._fd < 0:
            buf = self._run_view()
        reason, addr, _, n, w = layout.mmio.unpack_from(buf, layout.off_exit)
        if reason != layout.exit_mmio:
            raise ValueError(f"vCPU {self.id}'s last exit is {exit_reason_name(self._arch, reason)}, "
                             f"not KVM_EXIT_MMIO")
        if w:
            raise ValueError("the pending KVM_EXIT_MMIO is a write; there is nothing to complete")
        if len(data) != n:
            raise ValueError(f"the guest reads {n} bytes at {addr:#x}, not {len(data)}")
        buf[layout.off_data:layout.off_data + n] = data

    @property
    def system_event(self) -> SystemEvent:
        """kvm_run.system_event after a KVM_EXIT_SYSTEM_EVENT."""
        e = self._exit("KVM_EXIT_SYSTEM_EVENT").system_event
        names = {v: n for n, v in self._arch.constants("KVM_SYSTEM_EVENT_").items()}
        return SystemEvent(names.get(int(e.type), str(int(e.type))),
                           tuple(int(e.data[i]) for i in range(min(int(e.ndata), 16))))

    def _exit(self, name: str) -> Any:
        run = self.kvm_run
        if run.exit_reason != self._arch.const(name):
            raise ValueError(f"vCPU {self.id}'s last exit is {exit_reason_name(self._arch, run.exit_reason)}, not {name}")
        return run

    def _after_close(self) -> None:
        # Dropped, not unmapped: a kvm_run view still held elsewhere (another
        # thread's mmio read) keeps the mapping valid; it goes with the last one.
        self._run = self._run_map = self._run_buf = self._ctl = None
        super()._after_close()


def one_reg_size(arch: Arch, reg_id: int) -> int:
    """Bytes of the ONE_REG register ``reg_id`` (its KVM_REG_SIZE field: U8 .. U2048)."""
    if not isinstance(reg_id, int) or isinstance(reg_id, bool):
        raise TypeError(f"a ONE_REG id is an int, not {type(reg_id).__name__}")
    if not 0 <= reg_id < 1 << 64:
        raise ValueError(f"ONE_REG id {reg_id:#x} does not fit __u64")
    shift = (reg_id & arch.const("KVM_REG_SIZE_MASK")) >> arch.const("KVM_REG_SIZE_SHIFT")
    if shift > 8:        # KVM_REG_SIZE_U2048
        raise ValueError(f"ONE_REG id {reg_id:#x}: size field {shift} is beyond KVM_REG_SIZE_U2048")
    return 1 << shift


def _reg_label(reg: int | str) -> str:
    return reg if isinstance(reg, str) else f"{reg:#x}"


@lru_cache(maxsize=None)
def _mp_state_names(arch: Arch) -> dict[int, str]:
    return {v: n for n, v in arch.constants("KVM_MP_STATE_").items()}


@lru_cache(maxsize=None)
def _exit_names(arch: Arch) -> dict[int, str]:
    """KVM_EXIT_* by value, built once per Arch (the first name of each value;
    KVM_EXIT_IO_IN/OUT are KVM_EXIT_IO's direction, not exit reasons)."""
    names: dict[int, str] = {}
    for name, v in arch.constants("KVM_EXIT_").items():
        if name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"):
            names.setdefault(v, name)
    return names


class _RunLayout(NamedTuple):
    """Per-Arch constants of the run path, computed once."""

    run_req: int
    exit_names: tuple[str, ...]     # by exit reason (gaps: "exit reason N")
    exit_mmio: int
    off_exit: int                   # offsetof(struct kvm_run, exit_reason)
    off_data: int                   # offsetof(struct kvm_run, mmio.data)
    mmio: struct.Struct             # exit_reason .. mmio.is_write, from off_exit
    busy: int                       # -KVMDEV_RUN_BUSY: another thread's KVM_RUN is in flight


_tuple_new = tuple.__new__


@lru_cache(maxsize=None)
def _run_layout(arch: Arch) -> _RunLayout:
    ffi = arch.ffi
    names = _exit_names(arch)
    table = tuple(names.get(i, f"exit reason {i}") for i in range(max(names) + 1))
    off_exit = ffi.offsetof("struct kvm_run", "exit_reason")
    off_mmio = ffi.offsetof("struct kvm_run", "mmio")
    gap = off_mmio - off_exit - 4
    # mmio: __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write
    return _RunLayout(arch.request("KVM_RUN"), table, arch.const("KVM_EXIT_MMIO"), off_exit, off_mmio + 8,
                      struct.Struct(f"=I{gap}xQ8sIB"), -arch.lib.KVMDEV_RUN_BUSY)


def exit_reason_name(arch: Arch, reason: int) -> str:
    """The KVM_EXIT_* name of kvm_run.exit_reason (a table per Arch)."""
    name = _exit_names(arch).get(reason)
    return name if name is not None else f"exit reason {reason}"
