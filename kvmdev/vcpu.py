"""Vcpu: a vCPU fd (ONE_REG, KVM_RUN and its exits, arm64 vcpu_init)."""
from __future__ import annotations

import errno as E
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

class Vcpu(_AttrTarget, Arm64VcpuAttrs, X86VcpuAttrs):
    """A vCPU fd."""

    _kind = "vcpu"

    def __init__(self, backend: "Backend", fd: int, parent: Vm, vcpu_id: int) -> None:
        super().__init__(backend, fd, parent)
        self.id = vcpu_id
        self._run: Any = None
        self._run_map: Any = None

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
        """KVM_GET_ONE_REG of a 32- or 64-bit register, by id or (arm64) name
        ("pc", "x0", "MPIDR_EL1"; see kvmdev.arm64.reg_id)."""
        ffi = self._arch.ffi
        reg_id = self._reg_id(reg)
        buf = ffi.new(_one_reg_ctype(self._arch, reg_id) + " *")
        r = ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buf))})
        self._ioctl("KVM_GET_ONE_REG", r, register=_reg_label(reg))
        return int(buf[0])

    def set_one_reg(self, reg: int | str, value: int) -> None:
        """KVM_SET_ONE_REG of a 32- or 64-bit register, by id or (arm64) name."""
        ffi = self._arch.ffi
        reg_id = self._reg_id(reg)
        ct = _one_reg_ctype(self._arch, reg_id)
        buf = ffi.new(ct + " *", _check.uint(f"the value of register {_reg_label(reg)} ({ct})", value,
                                             64 if ct == "__u64" else 32))
        r = ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buf))})
        self._ioctl("KVM_SET_ONE_REG", r, register=_reg_label(reg))

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
                    fd = self._acquire()
                    try:
                        self._run_map = self._backend.mmap(fd, size)
                        self._run = self._arch.ffi.from_buffer("struct kvm_run *", self._run_map)
                    except OSError as e:
                        raise KvmError(e.errno or E.ENOMEM, "mmap", self._target_label(),
                                       target_key=self._target_key(),
                                       detail=meaning(e.errno or E.ENOMEM, "mmap", None, None)
                                       + f" (struct kvm_run, {size} bytes)") from None
                    finally:
                        self._release()     # a close meanwhile drops the map again
        run = self._run
        if run is None or self._fd < 0:     # closed (meanwhile)
            self._refuse(-1)
        return run

    def run(self, *, immediate_exit: bool = False) -> str:
        """KVM_RUN; returns the exit reason's kernel name.  With
        ``immediate_exit`` the kernel does its first-run checks and returns at
        once (EINTR), reported as KVM_EXIT_INTR.  The fd and the kvm_run map stay
        until this returns, even if another thread closes the vCPU meanwhile."""
        immediate_exit = _check.flag("immediate_exit", immediate_exit)
        fd = self._acquire()
        try:
            run = self.kvm_run
            run.immediate_exit = 1 if immediate_exit else 0
            try:
                r = self._backend.ioctl_val(fd, self._arch.request("KVM_RUN"), 0)
            finally:
                run.immediate_exit = 0
            if r == -E.EINTR:
                return "KVM_EXIT_INTR"
            if r < 0:
                raise KvmError(-r, "KVM_RUN", self._target_label(), target_key=self._target_key())
            return exit_reason_name(self._arch, run.exit_reason)
        finally:
            self._release()

    @property
    def mmio(self) -> MmioExit:
        """kvm_run.mmio after a KVM_EXIT_MMIO."""
        m = self._exit("KVM_EXIT_MMIO").mmio
        n = min(int(m.len), 8)
        return MmioExit(int(m.phys_addr), bytes(self._arch.ffi.buffer(m.data))[:n], bool(m.is_write))

    def complete_mmio_read(self, data: bytes) -> None:
        """Supply the value of the guest's MMIO read (exactly kvm_run.mmio.len
        bytes); the next run() loads it into the guest register."""
        m = self._exit("KVM_EXIT_MMIO").mmio
        if m.is_write:
            raise ValueError("the pending KVM_EXIT_MMIO is a write; there is nothing to complete")
        if len(data) != m.len:
            raise ValueError(f"the guest reads {m.len} bytes at {m.phys_addr:#x}, not {len(data)}")
        self._arch.ffi.memmove(m.data, data, len(data))

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
        self._run = self._run_map = None
        super()._after_close()


def _one_reg_ctype(arch: Arch, reg_id: int) -> str:
    size = reg_id & arch.const("KVM_REG_SIZE_MASK")
    if size == arch.const("KVM_REG_SIZE_U64"):
        return "__u64"
    if size == arch.const("KVM_REG_SIZE_U32"):
        return "__u32"
    raise ValueError(f"register id {reg_id:#x}: only 32- and 64-bit registers are supported")


def _reg_label(reg: int | str) -> str:
    return reg if isinstance(reg, str) else f"{reg:#x}"


def exit_reason_name(arch: Arch, reason: int) -> str:
    for name, v in arch.constants("KVM_EXIT_").items():
        if v == reason and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"):
            return name
    return f"exit reason {reason}"
