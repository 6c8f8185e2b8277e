"""Vm: a VM fd (memory slots, vCPUs, devices, interrupt lines), and GuestMemory."""
from __future__ import annotations

import errno as E
import mmap
from typing import TYPE_CHECKING, Any, Literal, overload

from . import _check
from . import arm64 as _arm64
from ._fd import _Fd, _cap, _enable_cap, _need_arch
from .arch import DeviceType, device_type, device_type_name
from .attr_target import _AttrTarget
from .device import DEVICE_CLASSES, Device
# typed VM attributes (a mixin; the module imports nothing of the fd layer)
from .devices.arm64_vcpu import Arm64VmAttrs
from .errors import ClosedError, KvmError
from .vcpu import Vcpu, VcpuInit

if TYPE_CHECKING:
    from .backends import Backend
    from .devices.flic import Flic
    from .devices.its import Its
    from .devices.mpic import Mpic
    from .devices.vfio import Vfio
    from .devices.vgic import VgicV2, VgicV3
    from .devices.vgic_v5 import VgicV5
    from .devices.xics import Xics


HUGE_ALIGN = 2 << 20   # a PMD block (4 KiB pages): the transparent huge page size


class GuestMemory:
    """Guest RAM: an anonymous mmap registered with KVM_SET_USER_MEMORY_REGION.
    Read and write it by guest physical address.

    A region of 2 MiB or more starts at an address congruent to its guest
    physical address modulo 2 MiB (``buf[offset:offset + size]`` is the guest's
    RAM): KVM maps a transparent huge page as one stage-2 / EPT block only when
    the host virtual and guest physical addresses agree within the block
    (fault_supports_stage2_huge_mapping, arm64), so RAM faults in 2 MiB at a time."""

    def __init__(self, vm: "Vm", slot: int, guest_phys_addr: int, size: int, readonly: bool) -> None:
        self.slot = slot
        self.guest_phys_addr = guest_phys_addr
        self.size = size
        self.readonly = readonly
        pad = HUGE_ALIGN if size >= HUGE_ALIGN else 0     # address space only: never touched
        try:
            self.buf = mmap.mmap(-1, size + pad, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:   # the kernel refusing the mapping (ENOMEM: address space, overcommit)
            raise KvmError(e.errno or E.ENOMEM, "mmap", f"guest RAM of {size:#x} bytes for slot {slot}",
                           target_key=None) from None
        except (OverflowError, MemoryError):
            raise ValueError(f"add_memory: {size:#x} bytes cannot be mapped in this process") from None
        self._ffi = vm._arch.ffi
        self._ptr = self._ffi.from_buffer(self.buf)
        base = int(self._ffi.cast("uintptr_t", self._ptr))
        self.offset = (guest_phys_addr - base) % HUGE_ALIGN if pad else 0
        self.userspace_addr = base + self.offset

    def __repr__(self) -> str:
        return f"<GuestMemory slot {self.slot} {self.guest_phys_addr:#x}+{self.size:#x}>"

    def _off(self, gpa: int, n: int) -> int:
        gpa, n = _check.u64("gpa", gpa), _check.u64("length", n)
        off = gpa - self.guest_phys_addr
        if off < 0 or off + n > self.size:
            raise ValueError(f"{gpa:#x}+{n:#x} is outside {_check.show(self)}")
        return off + self.offset

    def read(self, gpa: int, n: int) -> bytes:
        off = self._off(gpa, n)
        return self.buf[off:off + n]

    def write(self, gpa: int, data: bytes) -> None:
        off = self._off(gpa, len(data))
        self.buf[off:off + len(data)] = data

    def close(self) -> None:
        """Unmap it; while a memoryview of it lives, it is unmapped when the last one
        is released (mmap cannot close under an exported buffer)."""
        if not self.buf.closed:
            self._ffi.release(self._ptr)
            try:
                self.buf.close()
            except BufferError:   # a view outlives the VM: the mapping goes with it
                pass


class Vm(_AttrTarget, Arm64VmAttrs):
    """A VM fd."""

    _kind = "vm"
    machine_type = 0

    def __init__(self, backend: "Backend", fd: int, parent: "_Fd") -> None:
        self._live_children: set[int] = set()
        super().__init__(backend, fd, parent)
        self.memory: dict[int, GuestMemory] = {}

    # Guest memory is unmapped only when nothing can reach it any more: the VM fd
    # and every vCPU/device fd really closed (a KVM_RUN in flight on another thread
    # keeps its vCPU fd, and the guest keeps using the memory, until it returns).
    # Unmapping earlier would let the guest write into whatever is mapped there next.
    def _child_opened(self, key: int) -> None:
        self._live_children.add(key)

    def _child_gone(self, key: int) -> None:
        self._live_children.discard(key)
        self._free_memory_if_unreachable()

    def _after_close(self) -> None:
        super()._after_close()
        self._free_memory_if_unreachable()

    def _free_memory_if_unreachable(self) -> None:
        # the last child's and the VM's own real close may come from two threads
        with self._lock:
            if self._fd < 0 and not self._deferred and not self._live_children:
                for m in list(self.memory.values()):
                    m.close()
                self.memory.clear()

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION (raw; see add_memory)."""
        slot, flags = _check.u32("slot", slot), _check.u32("flags", flags)
        guest_phys_addr, memory_size = _check.u64("guest_phys_addr", guest_phys_addr), _check.u64("memory_size", memory_size)
        userspace_addr = _check.u64("userspace_addr", userspace_addr)
        r = self._arch.ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": memory_size, "userspace_addr": userspace_addr})
        self._ioctl("KVM_SET_USER_MEMORY_REGION", r)

    def add_memory(self, guest_phys_addr: int, size: int, *, slot: int | None = None,
                   readonly: bool = False) -> GuestMemory:
        """Map ``size`` bytes of fresh anonymous memory at ``guest_phys_addr``
        (KVM_SET_USER_MEMORY_REGION).  Both are page-aligned and the size is not 0
        (ValueError before the ioctl); a range that overlaps another slot is the
        kernel's EEXIST."""
        guest_phys_addr, size = _check.u64("guest_phys_addr", guest_phys_addr), _check.u64("size", size)
        readonly = _check.flag("readonly", readonly)
        if size == 0:
            raise ValueError("add_memory: size 0 (KVM_SET_USER_MEMORY_REGION with size 0 deletes a slot: "
                             "use set_user_memory_region for that)")
        for name, v in (("guest_phys_addr", guest_phys_addr), ("size", size)):
            if v % mmap.PAGESIZE:
                raise ValueError(f"add_memory: {name} {v:#x} is not a multiple of the {mmap.PAGESIZE}-byte page "
                                 f"(KVM_SET_USER_MEMORY_REGION answers EINVAL): round to {v & -mmap.PAGESIZE:#x} "
                                 f"or {(v + mmap.PAGESIZE - 1) & -mmap.PAGESIZE:#x}")
        if slot is not None:
            slot = _check.u32("slot", slot)
        # The mapping is in self.memory, under the VM's lock, before the ioctl: a
        # concurrent add_memory picks another slot, a concurrent close() frees it,
        # and an interrupt can never unmap RAM a registered slot points at (it stays
        # until the VM is freed).  Only the kernel's refusal unmaps it again.
        with self._lock:
            if self._fd < 0:
                self._refuse(-1)
            if slot is None:
                slot = max(self.memory, default=-1) + 1
            elif slot in self.memory:
                raise ValueError(f"add_memory: slot {slot} already holds {_check.show(self.memory[slot])}")
            mem = self.memory[slot] = GuestMemory(self, slot, guest_phys_addr, size, readonly)
        try:
            self.set_user_memory_region(slot, guest_phys_addr, size, mem.userspace_addr,
                                        self._arch.const("KVM_MEM_READONLY") if readonly else 0)
        except (KvmError, ClosedError):
            with self._lock:
                if self.memory.get(slot) is mem:
                    del self.memory[slot]
            mem.close()
            raise
        return mem

    def guest_memory(self, gpa: int, n: int = 1) -> GuestMemory:
        """The slot holding guest physical bytes gpa .. gpa + n - 1."""
        gpa, n = _check.u64("gpa of guest_memory", gpa), _check.u64("n of guest_memory", n)
        for m in list(self.memory.values()):   # one C step: add_memory may run in another thread
            if m.guest_phys_addr <= gpa and gpa + n <= m.guest_phys_addr + m.size:
                return m
        raise ValueError(f"no memory slot holds {gpa:#x}+{n:#x}")

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE (on arm64 ``irq`` is encoded: see kvmdev.arm64.irq)."""
        irq, level = _check.u32("irq of KVM_IRQ_LINE", irq), _check.u32("level of KVM_IRQ_LINE", level)
        r = self._arch.ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl("KVM_IRQ_LINE", r)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP (x86: the in-kernel PIC, IOAPIC and local APICs; before
        any vCPU).  arm64 uses the VGIC device instead (create_device)."""
        self._ioctl_val("KVM_CREATE_IRQCHIP", 0)

    def irqfd(self, fd: int | Any, gsi: int, *, resample_fd: int | Any | None = None,
              deassign: bool = False) -> None:
        """KVM_IRQFD: a write to eventfd ``fd`` (an int or an object with fileno())
        raises GSI ``gsi`` (arm64: SPI gsi + 32, the routing the VGIC's init sets
        up; x86: needs create_irqchip()).  Each write raises the line: on arm64
        (6.12, 6.1) it is not lowered again, so use edge-triggered SPIs, or
        ``resample_fd`` (KVM_IRQFD_FLAG_RESAMPLE: lowered at the guest's EOI,
        which signals that eventfd) for level ones.  ``deassign`` removes it.
        Delivery is asynchronous: poll for its effect."""
        deassign = _check.flag("deassign of KVM_IRQFD", deassign)
        flags = 0
        if deassign:
            flags |= self._arch.const("KVM_IRQFD_FLAG_DEASSIGN")
        if resample_fd is not None:
            flags |= self._arch.const("KVM_IRQFD_FLAG_RESAMPLE")
        a = self._arch.ffi.new("struct kvm_irqfd *", {
            "fd": _fileno("KVM_IRQFD", fd), "gsi": _u32("KVM_IRQFD", "gsi", gsi), "flags": flags,
            "resamplefd": 0 if resample_fd is None else _fileno("KVM_IRQFD", resample_fd)})
        self._ioctl("KVM_IRQFD", a)

    def ioeventfd(self, fd: int | Any, addr: int, length: int, *, datamatch: int | None = None,
                  mmio: bool = True, deassign: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write of ``length`` bytes (1, 2, 4 or 8; 0: any)
        to ``addr`` (MMIO, or a port with ``mmio=False``), equal to ``datamatch``
        if given, signals eventfd ``fd`` instead of exiting to userspace.
        ``deassign`` removes the one registered with the same arguments (ENOENT if none)."""
        mmio, deassign = _check.flag("mmio of KVM_IOEVENTFD", mmio), _check.flag("deassign of KVM_IOEVENTFD", deassign)
        c = self._arch.const
        flags = (0 if mmio else c("KVM_IOEVENTFD_FLAG_PIO")) | (c("KVM_IOEVENTFD_FLAG_DEASSIGN") if deassign else 0)
        if datamatch is not None:
            flags |= c("KVM_IOEVENTFD_FLAG_DATAMATCH")
        addr = _u64("KVM_IOEVENTFD", "addr", addr)
        a = self._arch.ffi.new("struct kvm_ioeventfd *", {
            "datamatch": 0 if datamatch is None else _u64("KVM_IOEVENTFD", "datamatch", datamatch),
            "addr": addr, "len": _u32("KVM_IOEVENTFD", "len", length),
            "fd": _fileno("KVM_IOEVENTFD", fd), "flags": flags})
        self._ioctl("KVM_IOEVENTFD", a)

    def signal_msi(self, address: int, data: int, devid: int | None = None) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest.  ``devid``
        (the requester ID) is required by the arm64 ITS."""
        address, data = _check.u64("address of KVM_SIGNAL_MSI", address), _check.u32("data of KVM_SIGNAL_MSI", data)
        devid = None if devid is None else _check.u32("devid of KVM_SIGNAL_MSI", devid)
        m = self._arch.ffi.new("struct kvm_msi *", {
            "address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32, "data": data,
            "flags": 0 if devid is None else self._arch.const("KVM_MSI_VALID_DEVID"),
            "devid": devid or 0})
        return self._ioctl("KVM_SIGNAL_MSI", m)

    def _target_label(self) -> str:
        return "VM"

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Vm {self.backend} {self.arch} {state} vcpus={len(self.vcpus)}>"

    @property
    def vcpus(self) -> list["Vcpu"]:
        return sorted((c for c in self._live_children_list() if isinstance(c, Vcpu)), key=lambda v: v.id)

    @property
    def devices(self) -> list["Device"]:
        return [c for c in self._live_children_list() if isinstance(c, Device)]

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (some answers depend on the VM)."""
        return self._ioctl_val("KVM_CHECK_EXTENSION", _cap(self._arch, cap))

    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the VM fd: ``cap`` by number or name, up to four args."""
        return _enable_cap(self, cap, args, flags)

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        """KVM_CREATE_VCPU."""
        vcpu_id = _check.u64("vcpu_id of KVM_CREATE_VCPU", vcpu_id)
        return Vcpu(self._backend, self._ioctl_val_fd("KVM_CREATE_VCPU", vcpu_id), self, vcpu_id)

    def preferred_target(self) -> "VcpuInit":
        """KVM_ARM_PREFERRED_TARGET (arm64): the target (and features) this host's
        KVM wants in KVM_ARM_VCPU_INIT."""
        _need_arch(self, "arm64", "KVM_ARM_PREFERRED_TARGET")
        init = self._arch.ffi.new("struct kvm_vcpu_init *")
        self._ioctl("KVM_ARM_PREFERRED_TARGET", init)
        return VcpuInit(int(init.target), _arm64.feature_names(list(init.features), self._arch))

    def _create_device_call(self, dtype: int, flags: int, cell: Any = None) -> Any:
        """KVM_CREATE_DEVICE; with ``cell``, the new fd is stored in that fd cell."""
        ffi = self._arch.ffi
        cd = ffi.new("struct kvm_create_device *")
        cd.type = dtype
        cd.fd = 0xFFFFFFFF
        cd.flags = flags
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            req = self._arch.request("KVM_CREATE_DEVICE")
            if cell is None:
                r = self._backend.ioctl(fd, req, cd)
            else:
                r = self._backend.ioctl_fd_at(fd, req, cd, ffi.offsetof("struct kvm_create_device", "fd"), cell)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise KvmError(-r, "KVM_CREATE_DEVICE", device_type_name(dtype), target_key=device_type_name(dtype))
        return cd

    def supports_device(self, dtype: int | str) -> bool:
        """KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST: can this VM create the
        type?  Creates no device and no fd.  ENODEV answers False."""
        try:
            self._create_device_call(_devtype(dtype), self._arch.const("KVM_CREATE_DEVICE_TEST"))
        except KvmError as e:
            if e.errno == E.ENODEV:
                return False
            raise
        return True

    # the typed class each device type gives (DEVICE_CLASSES at run time), for type checkers
    @overload
    def create_device(self, dtype: Literal["ARM_VGIC_V3", DeviceType.ARM_VGIC_V3]) -> VgicV3: ...
    @overload
    def create_device(self, dtype: Literal["ARM_VGIC_V2", DeviceType.ARM_VGIC_V2]) -> VgicV2: ...
    @overload
    def create_device(self, dtype: Literal["ARM_VGIC_ITS", DeviceType.ARM_VGIC_ITS]) -> Its: ...
    @overload
    def create_device(self, dtype: Literal["ARM_VGIC_V5", DeviceType.ARM_VGIC_V5]) -> VgicV5: ...
    @overload
    def create_device(self, dtype: Literal["VFIO", DeviceType.VFIO]) -> Vfio: ...
    @overload
    def create_device(self, dtype: Literal["FSL_MPIC_20", "FSL_MPIC_42", DeviceType.FSL_MPIC_20, DeviceType.FSL_MPIC_42]) -> Mpic: ...
    @overload
    def create_device(self, dtype: Literal["XICS", DeviceType.XICS]) -> Xics: ...
    @overload
    def create_device(self, dtype: Literal["FLIC", DeviceType.FLIC]) -> Flic: ...
    @overload
    def create_device(self, dtype: int | str) -> Device: ...

    def create_device(self, dtype: int | str) -> Device:
        """KVM_CREATE_DEVICE; returns the typed class of the device family
        (e.g. kvmdev.devices.vfio.Vfio) or a plain Device."""
        t = _devtype(dtype)
        cls = DEVICE_CLASSES.get(device_type_name(t), Device)
        cell = self._backend.new_cell()
        self._create_device_call(t, 0, cell)
        return cls(self._backend, cell, self, t)


def _fileno(call: str, f: int | Any) -> int:
    return _check.fileno(call, f)


def _u32(call: str, field: str, v: int) -> int:
    return _check.u32(f"{field} of {call}", v)


def _u64(call: str, field: str, v: int) -> int:
    return _check.u64(f"{field} of {call}", v)


def _devtype(dtype: int | str) -> int:
    # a DeviceType, its number, its name, or the CLI's spelling ("vgic-v3"); see arch.device_type
    return device_type(dtype)
