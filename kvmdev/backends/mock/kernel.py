"""The mock's kernel objects: system, VM, vCPU and device files, with the
generic semantics of virt/kvm/kvm_main.c.  Architecture and device behaviour
plug in through ArchModel and DeviceModel subclasses."""
from __future__ import annotations

import contextlib
import errno as E
import os
import struct
import threading
from collections import deque
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from ... import _forksafe
from .errno_ import Errno
from .eventfds import EventFds

if TYPE_CHECKING:
    from . import MockBackend


class UserMemory:
    """copy_from_user / copy_to_user: the mock reads and writes the caller's
    memory the way the kernel does, EFAULT on a bad pointer."""

    def __init__(self, arch: Any) -> None:
        self.ffi = arch.ffi
        self.lib = arch.lib
        # the caller's buffer of the device-attr call running in this thread: (addr, size)
        self._call = threading.local()

    @contextlib.contextmanager
    def caller_buffer(self, addr: int, size: int) -> Iterator[None]:
        """Within: a copy that starts in the caller's [addr, addr+size) and runs
        past its end raises BufferOverrun instead of touching memory the buffer
        does not own (the kernel would overwrite or leak whatever lies beyond)."""
        self._call.bounds = (addr, size)
        try:
            yield
        finally:
            self._call.bounds = None

    def _check(self, addr: int, n: int, what: str) -> None:
        b = getattr(self._call, "bounds", None)
        if b is not None and b[0] <= addr < b[0] + max(b[1], 1) and addr + n > b[0] + b[1]:
            from ..guard import BufferOverrun
            raise BufferOverrun(f"the mock kernel would {what} {addr + n - b[0]} bytes at attr.addr, "
                                f"past the caller's {b[1]}-byte buffer")

    def read(self, addr: int, size: int) -> bytes:
        self._check(addr, size, "read")
        buf = self.ffi.new("char[]", size)
        if self.lib.kvmdev_copy_from_user(buf, addr & 0xFFFFFFFFFFFFFFFF, size):
            raise Errno(E.EFAULT)
        return self.ffi.buffer(buf, size)[:]

    def write(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data), "write")
        if self.lib.kvmdev_copy_to_user(addr & 0xFFFFFFFFFFFFFFFF, data, len(data)):
            raise Errno(E.EFAULT)

    def read_struct(self, ctype: str, addr: int) -> Any:
        p = self.ffi.new(ctype + " *")
        self._check(addr, self.ffi.sizeof(ctype), "read")
        if self.lib.kvmdev_copy_from_user(p, addr & 0xFFFFFFFFFFFFFFFF, self.ffi.sizeof(ctype)):
            raise Errno(E.EFAULT)
        return p

    def write_struct(self, addr: int, p: Any) -> None:
        self.write(addr, self.ffi.buffer(p)[:])

    # get_user / put_user of the kernel's integer widths
    _FMT = {"__u8": "B", "__u16": "H", "__u32": "I", "__u64": "Q",
            "__s8": "b", "__s16": "h", "__s32": "i", "__s64": "q", "int": "i"}

    def get(self, ctype: str, addr: int) -> int:
        fmt = "=" + self._FMT[ctype]
        return int(struct.unpack(fmt, self.read(addr, struct.calcsize(fmt)))[0])

    def put(self, ctype: str, addr: int, value: int) -> None:
        fmt = "=" + self._FMT[ctype]
        bits = struct.calcsize(fmt) * 8
        if fmt[-1].isupper():
            value &= (1 << bits) - 1
        self.write(addr, struct.pack(fmt, value))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return fd >= 0


_RLOCK_IS_OWNED = type(threading.RLock())._is_owned     # type: ignore[attr-defined]
_RLOCK_ACQUIRE = type(threading.RLock()).acquire
_RLOCK_RELEASE = type(threading.RLock()).release


class KernelObject:
    """One open kernel file.  ioctl_<NAME> methods handle ioctls by kernel name."""

    unknown_ioctl_errno: ClassVar[int] = E.ENOTTY
    # the architecture's part of this object (kvm_arch_vm_ioctl & co.): more ioctl_ methods
    part: Any = None

    def __init__(self, backend: "MockBackend") -> None:
        self.backend = backend
        self.user = backend.user

    def ioctl(self, name: str, arg: int) -> int:
        vm = self.owner_vm()
        if vm is not None and vm.dead:
            raise Errno(E.EIO)  # kvm_vm_dead(): every VM, vCPU and device ioctl fails
        if vm is not None and vm.eventfds.irqfds:
            with vm.lock:       # irqfd writes since the last ioctl (see eventfds.py)
                vm.eventfds.poll()
        handler = getattr(self, "ioctl_" + name, None) or getattr(self.part, "ioctl_" + name, None)
        if handler is None:
            raise Errno(self.unknown_ioctl_errno)
        return int(handler(arg) or 0)

    def owner_vm(self) -> "MockVm | None":
        return None

    def release(self) -> None:
        """The last close of this file."""

    def read_attr(self, addr: int) -> Any:
        return self.user.read_struct("struct kvm_device_attr", addr)


class AttrModel:
    """KVM_{HAS,GET,SET}_DEVICE_ATTR semantics of one target.  Leave ``get`` or
    ``set`` as None where the kernel has no such accessor (devices answer EPERM)."""

    has: Any = None
    get: Any = None
    set: Any = None


class DeviceModel(AttrModel):
    """A device type's model.  ``one_per_vm`` is the errno a second instance gets."""

    type_name: ClassVar[str] = ""
    one_per_vm: ClassVar[int | None] = None
    # ops->release: the last close of the fd destroys the device (VFIO); other
    # devices live until the VM is destroyed
    released_on_close: ClassVar[bool] = False

    def __init__(self, vm: "MockVm") -> None:
        self.vm = vm
        self.user = vm.user
        self.arch = vm.backend.arch

    def create(self) -> None:
        """ops->create: may raise Errno (after the TEST flag check, before an fd exists)."""

    def release(self) -> None:
        """ops->release / destroy."""


# type name -> model class; kvmdev.backends.mock.models register theirs
DEVICE_MODELS: dict[str, type[DeviceModel]] = {}


def device_model(cls: type[DeviceModel]) -> type[DeviceModel]:
    DEVICE_MODELS[cls.type_name] = cls
    return cls


class ArchModel:
    """Architecture hooks of the mock kernel (kvm_arch_* in the real one)."""

    # errno of the device-attr ioctls on fds whose arch code has none
    system_attr_errno: ClassVar[int] = E.EINVAL
    vm_attr_errno: ClassVar[int] = E.ENOTTY
    vcpu_attr_errno: ClassVar[int] = E.ENOTTY

    def __init__(self, backend: "MockBackend") -> None:
        self.backend = backend
        self.host = backend.host

    def device_types(self) -> list[str]:
        """Device types this architecture's KVM registers (kvm_device_ops_table)."""
        return ["VFIO"]

    def system_attrs(self) -> AttrModel | None:
        return None

    def vm_attrs(self, vm: "MockVm") -> AttrModel | None:
        return None

    def vcpu_attrs(self, vcpu: "MockVcpu") -> AttrModel | None:
        return None

    def check_vm_type(self, machine_type: int) -> None:
        if machine_type != 0:
            raise Errno(E.EINVAL)

    def check_extension(self, vm: "MockVm | None", cap: str) -> int:
        """KVM_CHECK_EXTENSION on the system fd (vm None) or a VM fd."""
        return int(self.host.caps.get(cap, 0))

    def check_extension_number(self, vm: "MockVm | None", number: int) -> int:
        """KVM_CHECK_EXTENSION of a capability number (unnamed ones too)."""
        return self.check_extension(vm, self.backend.cap_name(number))

    # TASK_SIZE_MAX where the mock knows the host's (access_ok of a memslot), else None
    user_addr_max: int | None = None

    def vm_part(self, vm: "MockVm") -> Any:
        """Per-VM architecture state; its ioctl_<NAME> methods add VM ioctls."""
        return None

    def vcpu_part(self, vcpu: "MockVcpu") -> Any:
        """Per-vCPU architecture state; its ioctl_<NAME> methods add vCPU ioctls."""
        return None

    def vcpu_precreate(self, vm: "MockVm", vcpu_id: int) -> None:
        """kvm_arch_vcpu_precreate."""
        if vcpu_id >= self.host.caps.get("KVM_CAP_MAX_VCPU_ID", 1024):
            raise Errno(E.EINVAL)

    def check_memory_region(self, vm: "MockVm", gpa: int, size: int) -> None:
        """kvm_arch_prepare_memory_region."""

    def irq_line(self, vm: "MockVm", irq: int, level: int) -> int:
        raise Errno(E.ENXIO)  # no in-kernel irqchip

    def irqfd_allowed(self, vm: "MockVm", resample: bool) -> None:
        """kvm_arch_irqfd_allowed (generic: always)."""

    def irqfd_inject(self, vm: "MockVm", gsi: int) -> None:
        """irqfd_inject through the GSI routing: nothing modelled here."""

    def signal_msi(self, vm: "MockVm", msi: Any) -> int:
        raise Errno(E.EINVAL)  # kvm_set_msi without an in-kernel irqchip

    def vcpu_run(self, vcpu: "MockVcpu", immediate_exit: bool) -> int:
        """First-run checks, then run.  The mock executes no guest code: only
        an immediate exit (EINTR) is modelled."""
        if immediate_exit:
            raise Errno(E.EINTR)
        raise Errno(E.ENOSYS)


def _attr_ioctl(obj: KernelObject, model: AttrModel | None, which: str, arg: int, missing: int) -> int:
    if model is None:
        raise Errno(missing)
    a = obj.read_attr(arg)
    fn = getattr(model, which)
    if fn is None:
        raise Errno(E.ENXIO)
    return int(fn(a.group, a.attr, a.addr) or 0)   # a few accessors return a count


class MockSystem(KernelObject):
    """/dev/kvm (virt/kvm/kvm_main.c kvm_dev_ioctl)."""

    unknown_ioctl_errno = E.EINVAL  # kvm_arch_dev_ioctl's default

    def __init__(self, backend: "MockBackend") -> None:
        super().__init__(backend)
        self.attrs = backend.arch_model.system_attrs()

    def ioctl_KVM_GET_API_VERSION(self, arg: int) -> int:
        return self.backend.arch.const("KVM_API_VERSION")

    def ioctl_KVM_CHECK_EXTENSION(self, arg: int) -> int:
        return self.backend.arch_model.check_extension_number(None, arg & 0xFFFFFFFFFFFFFFFF)

    def ioctl_KVM_GET_VCPU_MMAP_SIZE(self, arg: int) -> int:
        return self.backend.host.vcpu_mmap_size

    def ioctl_KVM_CREATE_VM(self, arg: int) -> int:
        self.backend.arch_model.check_vm_type(arg)
        return self.backend.new_fd(MockVm(self.backend, arg))

    def ioctl_KVM_HAS_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "has", arg, self.backend.arch_model.system_attr_errno)

    def ioctl_KVM_GET_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "get", arg, self.backend.arch_model.system_attr_errno)


class MockVm(KernelObject):
    """A VM file (kvm_vm_ioctl)."""

    def __init__(self, backend: "MockBackend", machine_type: int) -> None:
        super().__init__(backend)
        self.machine_type = machine_type
        self.vcpus: dict[int, MockVcpu] = {}
        # bumped on each vCPU creation and MPIDR_EL1 write (the VGIC caches MPIDR -> vCPU)
        self.mpidr_gen = 0
        # the thread holding every vCPU mutex for a whole attr batch (batch_locked)
        self._batch_owner: int | None = None
        self.devices: list[DeviceModel] = []
        self.memslots: dict[int, tuple[int, int, int, int]] = {}  # slot -> gpa, size, uaddr, flags
        self.dead = False  # kvm_vm_dead(): an unrecoverable error; ioctls answer EIO
        self.attrs = backend.arch_model.vm_attrs(self)
        self.part = backend.arch_model.vm_part(self)
        self.eventfds = EventFds(self)
        # kvm->lock: the kernel takes it for vCPU/device creation and device
        # attribute access, so threads racing these see one at a time (and a
        # register access trylocks the vCPUs only under it: no EBUSY between two).
        self.lock = threading.RLock()
        _forksafe.register(self)

    def _after_fork(self) -> None:
        self.lock = threading.RLock()

    def owner_vm(self) -> "MockVm":
        return self

    def ioctl(self, name: str, arg: int) -> int:
        with self.lock:
            return super().ioctl(name, arg)

    def release(self) -> None:
        self.eventfds.release()

    def ioctl_KVM_IRQFD(self, arg: int) -> int:
        a = self.user.read_struct("struct kvm_irqfd", arg)
        if any(a.pad):
            raise Errno(E.EINVAL)
        self.eventfds.irqfd(int(a.fd), int(a.gsi), int(a.flags), int(a.resamplefd))
        return 0

    def ioctl_KVM_IOEVENTFD(self, arg: int) -> int:
        a = self.user.read_struct("struct kvm_ioeventfd", arg)
        self.eventfds.ioeventfd(int(a.datamatch), int(a.addr), int(a.len), int(a.fd), int(a.flags))
        return 0

    def memslot_uaddr(self, gpa: int, n: int, write: bool) -> int | None:
        """The user address of guest RAM [gpa, gpa+n), or None outside the memslots
        (and for a write to a read-only slot: a guest's becomes MMIO, KVM's EFAULT)."""
        for gpa0, size, uaddr, flags in self.memslots.values():
            if gpa0 <= gpa and gpa + n <= gpa0 + size:
                if write and flags & self.backend.arch.const("KVM_MEM_READONLY"):
                    return None
                return uaddr + gpa - gpa0
        return None

    def guest_uaddr(self, gpa: int, n: int, write: bool) -> int:
        """kvm_{read,write}_guest's translation: EFAULT where there is no RAM."""
        uaddr = self.memslot_uaddr(gpa, n, write)
        if uaddr is None:
            raise Errno(E.EFAULT)
        return uaddr

    def read_guest(self, gpa: int, n: int) -> bytes:
        return self.user.read(self.guest_uaddr(gpa, n, False), n)

    def write_guest(self, gpa: int, data: bytes) -> None:
        self.user.write(self.guest_uaddr(gpa, len(data), True), data)

    def with_all_vcpus_locked(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` under lock_all_vcpus: a vCPU inside an ioctl (KVM_RUN) holds its
        mutex, and the caller gets EBUSY instead of waiting.  A callback, not a
        context manager: acquisition and release are in this one frame, so an
        exception at any point (a KeyboardInterrupt from a signal handler, which
        CPython raises at a function's entry too, e.g. a Python __exit__'s) cannot
        leave a mutex held; which are held is asked of the locks (RLock._is_owned)."""
        if self._batch_owner is not None and self._batch_owner == threading.get_ident():
            return fn()      # this thread's batch_locked holds them all already
        mine = [c.mutex for c in list(self.vcpus.values())]
        # (map over the C methods: no Python frame per vCPU, as this is O(vCPUs) per call)
        # mutex_trylock fails on a mutex this thread holds too: those are not ours
        if any(map(_RLOCK_IS_OWNED, mine)):
            raise Errno(E.EBUSY)
        try:
            if not all(map(_RLOCK_ACQUIRE, mine, repeat(False))):
                raise Errno(E.EBUSY)
            return fn()
        finally:
            err: BaseException | None = None
            while True:    # an interrupt inside the loop: go round again (idempotent)
                try:
                    deque(map(_RLOCK_RELEASE, filter(_RLOCK_IS_OWNED, mine)), maxlen=0)
                    break
                except BaseException as e:   # noqa: BLE001 - re-raised once every mutex is free
                    err = err or e
            if err is not None:
                raise err

    def batch_locked(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` (a kvmdev_attr_batch of device ioctls) with every vCPU mutex
        taken once for the whole batch instead of once per ioctl (lock_all_vcpus is
        O(vCPUs) per call: O(vCPUs^2) for a GIC save).  The kernel may let a vCPU
        ioctl in between two of the batch's ioctls; here it waits for the batch,
        an interleaving no caller can rely on either way.  If a vCPU is busy,
        each ioctl meets that on its own, as in the kernel."""
        me = threading.get_ident()

        def hoisted() -> Any:
            self._batch_owner = me
            try:
                return fn()
            finally:
                self._batch_owner = None
        try:
            return self.with_all_vcpus_locked(hoisted)
        except Errno:           # EBUSY from the locking (fn reports errors as values)
            if self._batch_owner == me:
                self._batch_owner = None
            return fn()

    def ioctl_KVM_CHECK_EXTENSION(self, arg: int) -> int:
        return self.backend.arch_model.check_extension_number(self, arg & 0xFFFFFFFFFFFFFFFF)

    def ioctl_KVM_CREATE_VCPU(self, arg: int) -> int:
        arg &= 0xFFFFFFFFFFFFFFFF      # an unsigned long: -1 is 2**64-1 (>= KVM_MAX_VCPU_IDS: EINVAL)
        if len(self.vcpus) >= self.backend.host.caps.get("KVM_CAP_MAX_VCPUS", 1 << 32):
            raise Errno(E.EINVAL)      # kvm->created_vcpus >= kvm->max_vcpus
        self.backend.arch_model.vcpu_precreate(self, arg)
        vcpu = MockVcpu(self.backend, self, arg)  # kvm_arch_vcpu_create runs before the id check
        if arg in self.vcpus:
            raise Errno(E.EEXIST)
        self.vcpus[arg] = vcpu
        self.mpidr_gen += 1
        try:
            return self.backend.new_fd(vcpu)
        except BaseException:     # create_vcpu_fd failed (or an interrupt): the vCPU goes again
            self.vcpus.pop(arg, None)
            raise

    def ioctl_KVM_CREATE_DEVICE(self, arg: int) -> int:
        cd = self.user.read_struct("struct kvm_create_device", arg)
        name = self.backend.device_type_name(cd.type)
        cls = DEVICE_MODELS.get(name) if name in (self.backend.host.device_types or ()) else None
        if cls is None:
            raise Errno(E.ENODEV)
        if cd.flags & self.backend.arch.const("KVM_CREATE_DEVICE_TEST"):
            return 0
        if cls.one_per_vm is not None and any(type(d) is cls for d in self.devices):
            raise Errno(cls.one_per_vm)
        model = cls(self)
        model.create()
        self.devices.append(model)
        fd = -1
        try:
            fd = self.backend.new_fd(MockDevice(self.backend, model))
            cd.fd = fd
            self.user.write_struct(arg, cd)
        except Errno:             # EMFILE: the device goes; EFAULT on the copy back: the
            if fd < 0:            # kernel keeps device and fd (kvm_vm_ioctl), so does the mock
                self.devices.remove(model)
            raise
        except BaseException:     # an interrupt (KeyboardInterrupt): the kernel's C code is
            if fd >= 0:           # one step, so nothing of it stays
                self.backend.forget_fd(fd)
            if model in self.devices:
                self.devices.remove(model)
            raise
        return 0

    PAGE = 4096

    def ioctl_KVM_SET_USER_MEMORY_REGION(self, arg: int) -> int:
        # __kvm_set_memory_region's checks, in its order
        m = self.user.read_struct("struct kvm_userspace_memory_region", arg)
        a = self.backend.arch
        valid_flags = a.const("KVM_MEM_LOG_DIRTY_PAGES") | a.const("KVM_MEM_READONLY")
        if m.flags & ~valid_flags:
            raise Errno(E.EINVAL)
        if m.memory_size % self.PAGE or m.guest_phys_addr % self.PAGE or m.userspace_addr % self.PAGE:
            raise Errno(E.EINVAL)
        top = self.backend.arch_model.user_addr_max       # access_ok(userspace_addr, memory_size)
        if top is not None and m.userspace_addr + m.memory_size > top:
            raise Errno(E.EINVAL)
        if (m.slot & 0xFFFF) >= self.backend.host.caps.get("KVM_CAP_NR_MEMSLOTS", 32764) or m.slot >> 16:
            raise Errno(E.EINVAL)
        if m.guest_phys_addr + m.memory_size >= 1 << 64:
            raise Errno(E.EINVAL)
        if m.memory_size // self.PAGE > (1 << 31) - 1:     # KVM_MEM_MAX_NR_PAGES
            raise Errno(E.EINVAL)
        old = self.memslots.get(m.slot)
        if m.memory_size == 0:
            if old is None:
                raise Errno(E.EINVAL)
            del self.memslots[m.slot]
            return 0
        new = (m.guest_phys_addr, m.memory_size, m.userspace_addr, m.flags)
        if old is not None:
            gpa, size, uaddr, flags = old
            if (m.userspace_addr, m.memory_size) != (uaddr, size) or (m.flags ^ flags) & a.const("KVM_MEM_READONLY"):
                raise Errno(E.EINVAL)
            if gpa == m.guest_phys_addr:
                self.memslots[m.slot] = new
                return 0
        for slot, (gpa, size, _, _) in self.memslots.items():
            if slot != m.slot and gpa < m.guest_phys_addr + m.memory_size and m.guest_phys_addr < gpa + size:
                raise Errno(E.EEXIST)
        self.backend.arch_model.check_memory_region(self, m.guest_phys_addr, m.memory_size)
        self.memslots[m.slot] = new
        return 0

    def ioctl_KVM_IRQ_LINE(self, arg: int) -> int:
        lvl = self.user.read_struct("struct kvm_irq_level", arg)
        return self.backend.arch_model.irq_line(self, lvl.irq, lvl.level)

    def ioctl_KVM_SIGNAL_MSI(self, arg: int) -> int:
        msi = self.user.read_struct("struct kvm_msi", arg)
        if msi.flags & ~self.backend.arch.const("KVM_MSI_VALID_DEVID"):
            raise Errno(E.EINVAL)
        return self.backend.arch_model.signal_msi(self, msi)

    def ioctl_KVM_HAS_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "has", arg, self.backend.arch_model.vm_attr_errno)

    def ioctl_KVM_GET_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "get", arg, self.backend.arch_model.vm_attr_errno)

    def ioctl_KVM_SET_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "set", arg, self.backend.arch_model.vm_attr_errno)


class MockVcpu(KernelObject):
    """A vCPU file (kvm_vcpu_ioctl)."""

    def __init__(self, backend: "MockBackend", vm: MockVm, vcpu_id: int) -> None:
        super().__init__(backend)
        self.vm = vm
        self.id = vcpu_id
        self.attrs = backend.arch_model.vcpu_attrs(self)
        self.run_map: Any = None  # the mmap of struct kvm_run the caller made
        # vcpu->mutex, held for the length of each vCPU ioctl (a `with` on the C lock:
        # no Python frame between acquire and release); an RLock for its owner
        # check (MockVm.with_all_vcpus_locked), never taken twice by one thread
        self.mutex = threading.RLock()
        # a signal to the thread in KVM_RUN (MockBackend.kick): checked by the run loop
        self.kicked = threading.Event()
        self.part = backend.arch_model.vcpu_part(self)
        _forksafe.register(self)

    def _after_fork(self) -> None:
        # the parent's thread in an ioctl of this vCPU is not in the child
        self.mutex = threading.RLock()
        kicked = self.kicked.is_set()
        self.kicked = threading.Event()
        if kicked:
            self.kicked.set()

    def kick(self) -> None:
        self.kicked.set()
        wake = getattr(self.part, "wake", None)
        if wake is not None:
            wake()

    def signal_pending(self) -> bool:
        """signal_pending(current) in the run loop: consumes the kick."""
        if self.kicked.is_set():
            self.kicked.clear()
            return True
        return False

    def ioctl(self, name: str, arg: int) -> int:
        with self.mutex:
            return super().ioctl(name, arg)

    def owner_vm(self) -> MockVm:
        return self.vm

    @property
    def run(self) -> Any:
        """The caller's struct kvm_run (a mock vCPU without one has never been mmapped)."""
        if self.run_map is None:
            raise Errno(E.EFAULT)
        return self.backend.arch.ffi.from_buffer("struct kvm_run *", self.run_map)

    def ioctl_KVM_RUN(self, arg: int) -> int:
        if arg:
            raise Errno(E.EINVAL)
        # a kick before this point is seen through immediate_exit (set before the signal),
        # as a signal that lands before the ioctl is lost
        self.kicked.clear()
        immediate = bool(self.run_map is not None and self.run_map[1])  # kvm_run.immediate_exit
        return self.backend.arch_model.vcpu_run(self, immediate)

    def ioctl_KVM_HAS_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "has", arg, self.backend.arch_model.vcpu_attr_errno)

    def ioctl_KVM_GET_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "get", arg, self.backend.arch_model.vcpu_attr_errno)

    def ioctl_KVM_SET_DEVICE_ATTR(self, arg: int) -> int:
        return _attr_ioctl(self, self.attrs, "set", arg, self.backend.arch_model.vcpu_attr_errno)


class MockDevice(KernelObject):
    """A device file (kvm_device_ioctl): a missing accessor is EPERM, checked
    before the attr struct is copied, as kvm_device_ioctl_attr does."""

    def __init__(self, backend: "MockBackend", model: DeviceModel) -> None:
        super().__init__(backend)
        self.model = model

    def owner_vm(self) -> MockVm:
        return self.model.vm

    def ioctl(self, name: str, arg: int) -> int:
        with self.model.vm.lock:
            return super().ioctl(name, arg)

    def _accessor(self, which: str, arg: int) -> int:
        fn = getattr(self.model, which)
        if fn is None:
            raise Errno(E.EPERM)
        a = self.read_attr(arg)
        return int(fn(a.group, a.attr, a.addr) or 0)   # a few accessors return a count

    def attr_batch(self, which: str, attrs: Any, count: int, err: Any) -> int:
        """kvmdev_attr_batch of ``which`` ("get", "set", "has") on this device: each
        ioctl's checks as in ioctl() and _accessor, the dispatch resolved once, the
        locks taken once for the batch (kvm->lock, then every vCPU mutex: see
        MockVm.batch_locked), the structs read from kvmdev's own array (valid
        memory: copy_from_user could not fault).  Returns how many succeeded;
        err[0] = the failure's -errno."""
        vm, model = self.model.vm, self.model

        def loop() -> int:
            for i in range(count):
                try:
                    if vm.dead:
                        raise Errno(E.EIO)
                    if vm.eventfds.irqfds:
                        vm.eventfds.poll()
                    fn = getattr(model, which)
                    if fn is None:
                        raise Errno(E.EPERM)
                    a = attrs[i]
                    fn(a.group, a.attr, a.addr)
                except Errno as e:
                    err[0] = -e.errno
                    return i
            return count
        with vm.lock:
            return int(vm.batch_locked(loop))

    def ioctl_KVM_HAS_DEVICE_ATTR(self, arg: int) -> int:
        return self._accessor("has", arg)

    def ioctl_KVM_GET_DEVICE_ATTR(self, arg: int) -> int:
        return self._accessor("get", arg)

    def ioctl_KVM_SET_DEVICE_ATTR(self, arg: int) -> int:
        return self._accessor("set", arg)

    def release(self) -> None:
        if self.model.released_on_close:
            self.model.release()
            self.model.vm.devices.remove(self.model)
