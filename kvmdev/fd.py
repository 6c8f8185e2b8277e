"""The fd layer: one type per kind of kernel fd (Kvm, Vm, Vcpu, Device).

Every ioctl goes through ``_Fd._ioctl``/``_ioctl_val``; failures become a
KvmError naming the ioctl, the target, and the group/attribute by kernel name.
Buffers handed to the kernel are allocated from the attribute tables at exactly
the width the kernel copies and live for the whole call.
"""
from __future__ import annotations

import errno as E
import mmap
import os
import re
import struct
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, NamedTuple, Sequence, overload

from . import arm64 as _arm64
from . import attrs as _attrs
from .arch import Arch, DeviceType, device_type_name
from .errnos import meaning
# per-family typed attributes of the system, VM and vCPU fds, mixed in below
# (these modules import nothing of fd at run time)
from .devices.arm64_vcpu import Arm64VcpuAttrs, Arm64VmAttrs
from .devices.x86 import X86SystemAttrs, X86VcpuAttrs
from .errors import ClosedError, KvmError, add_note

if TYPE_CHECKING:
    from .backends import Backend
    from .devices.flic import Flic
    from .devices.its import Its
    from .devices.mpic import Mpic
    from .devices.vfio import Vfio
    from .devices.vgic import VgicV2, VgicV3
    from .devices.vgic_v5 import VgicV5
    from .devices.xics import Xics

_INT_CTYPES = {"__u8", "__u16", "__u32", "__u64", "__s8", "__s16", "__s32", "__s64", "int"}


# bumped in a fork child: VM, vCPU and device fds then belong to the parent
_GENERATION = [0]


def _after_fork_in_child() -> None:
    _GENERATION[0] += 1
    _Fd._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _enable_cap(target: "_Fd", cap: int | str, args: Sequence[int], flags: int) -> int:
    if len(args) > 4:
        raise ValueError(f"KVM_ENABLE_CAP takes at most 4 args, not {len(args)}")
    number = _cap(target._arch, cap)
    ec = target._arch.ffi.new("struct kvm_enable_cap *", {"cap": number, "flags": flags, "args": list(args)})
    return target._ioctl("KVM_ENABLE_CAP", ec, attr=cap if isinstance(cap, str) else None)


class _Fd:
    """A kernel fd owned by this object; closes deterministically, children first.

    Threads: every ioctl holds the fd for its duration (_acquire/_release).  A
    close() from another thread marks the object closed at once (later calls get
    ClosedError) and the fd is closed when the last call in flight returns, so no
    ioctl ever reaches a reused fd number.  Concurrent calls on one object are
    allowed; the kernel serializes what it must (a vCPU's ioctls, a VM's config)."""

    _kind = "fd"
    _process_bound = True   # KVM answers EIO to VM, vCPU and device ioctls from another process
    _forked = False         # set in a fork child

    def __init__(self, backend: "Backend", fd: int, parent: "_Fd | None") -> None:
        self._backend = backend
        self._arch: Arch = backend.arch
        self._fd = fd
        self._users: list[None] = []      # one entry per call in flight
        self._deferred: list[int] = []    # the fd close() left to the last of them
        self._generation = _GENERATION[0]
        self._pid = os.getpid()
        self._parent = parent
        # Weak: an object nobody references closes its fd like a Python file does;
        # close() still reaches every live child first.
        self._children: weakref.WeakValueDictionary[int, _Fd] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        if parent is not None:
            parent._children[id(self)] = self
            parent._child_opened(id(self))

    # -- lifetime --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ClosedError(f"{self._target_label()} is closed")
        return fd

    # The hand-over between calls in flight and close() uses list append/pop, each
    # atomic in CPython, rather than a lock: it is on every ioctl's path.
    def _acquire(self) -> int:
        """The fd, held for one ioctl (see the class doc); _release() after it."""
        fd = self._fd
        if fd < 0 or self._forked and self._process_bound and self._generation != _GENERATION[0]:
            self._refuse(fd)
        self._users.append(None)
        if self._fd < 0:           # closed meanwhile: not this fd any more
            self._release()
            self._refuse(-1)
        return fd

    def _release(self) -> None:
        self._users.pop()
        if not self._users and self._deferred:
            self._close_deferred()

    def _close_deferred(self) -> None:
        """Close the fd close() left, if no one else took it first (atomic pop)."""
        try:
            fd = self._deferred.pop()
        except IndexError:
            return
        self._backend.close(fd)
        self._after_close()

    def _after_close(self) -> None:
        """What goes with the fd once it is really closed (a vCPU's kvm_run map)."""
        if self._parent is not None:
            self._parent._child_gone(id(self))

    def _child_opened(self, key: int) -> None:
        """A child fd exists (the VM keeps its guest memory until none is left)."""

    def _child_gone(self, key: int) -> None:
        """A child's fd is really closed: no call of it is in flight any more."""

    def _refuse(self, fd: int) -> None:
        if fd < 0:
            raise ClosedError(f"{self._target_label()} is closed")
        raise KvmError(E.EIO, "ioctl", self._target_label(), detail=(
            f"this {self._kind} belongs to process {self._pid}, which created its VM; KVM answers EIO "
            "to any other process, a fork child included (open KVM again in the child)"))

    def close(self) -> None:
        """Close this fd, after closing every object created from it.  Calls in
        flight on other threads finish first; the fd closes after the last."""
        with self._lock:
            if self._fd < 0:
                return
            for child in list(self._children.values()):
                child.close()
            self._deferred.append(self._fd)
            self._fd = -1
            if self._parent is not None:
                self._parent._children.pop(id(self), None)
            if not self._users:
                self._close_deferred()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Unreferenced objects still close their fd; the kernel keeps a VM alive
        # while its vCPU and device fds are open, so the order does not matter.
        try:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                self._backend.close(fd)
                if self._parent is not None:
                    self._parent._child_gone(id(self))
        except Exception:
            pass

    # -- naming ------------------------------------------------------------
    def _target_label(self) -> str:
        return self._kind

    def _target_key(self) -> str:
        return self._kind

    # -- ioctls ------------------------------------------------------------
    def _ioctl(self, name: str, arg: Any, *, group: str | None = None, attr: str | None = None,
               register: str | None = None) -> int:
        fd = self._acquire()
        try:
            r = self._backend.ioctl(fd, self._arch.request(name), arg)
        finally:
            self._release()
        if r < 0:
            raise KvmError(-r, name, self._target_label(), group=group, attr=attr, target_key=self._target_key(),
                           register=register)
        return int(r)

    def _ioctl_val(self, name: str, value: int) -> int:
        fd = self._acquire()
        try:
            r = self._backend.ioctl_val(fd, self._arch.request(name), value)
        finally:
            self._release()
        if r < 0:
            raise KvmError(-r, name, self._target_label(), target_key=self._target_key())
        return int(r)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def arch(self) -> str:
        return self._arch.name


class _AttrTarget(_Fd):
    """KVM_{HAS,GET,SET}_DEVICE_ATTR on this fd, driven by its attribute table."""

    _IOCTLS = ("KVM_HAS_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR")

    def __init__(self, backend: "Backend", fd: int, parent: "_Fd | None") -> None:
        super().__init__(backend, fd, parent)
        self._has_req, self._get_req, self._set_req = backend.arch.attr_requests
        self._attr_fn = backend.attr
        self._null = backend.arch.ffi.NULL
        # (group, attr) as the caller names them -> resolved values and buffer type
        self._specs: dict[tuple[int | str, int | str], _Spec] = {}

    @property
    def attr_table(self) -> _attrs.AttrTable:
        return _attrs.table(self._arch, self._target_key())

    def _resolve(self, group: int | str, attr: int | str) -> tuple[int, int, _attrs.Attr | None]:
        t = self.attr_table
        g = t.group_value(group)
        a = t.attr_value(g, attr)
        return g, a, t.spec(g, a)

    def _spec(self, group: int | str, attr: int | str, ctype: str | None) -> "_Spec":
        spec = self._specs.get((group, attr)) if ctype is None else None
        if spec is None:
            g, a, aspec = self._resolve(group, attr)
            if ctype is None and aspec is None:
                gn, an = self._names(g, a, (group, attr))
                raise ValueError(f"kvmdev has no table entry for {self._target_label()} group {gn} attr {an}: "
                                 f"pass ctype= (e.g. '__u64', '__u8[16]', or 'void' for no payload) "
                                 f"to say what the kernel copies")
            ct = aspec.ctype if ctype is None else (None if ctype == "void" else ctype)  # type: ignore[union-attr]
            spec = _Spec(self._arch.ffi, g, a, ct, (group, attr))
            if ctype is None:
                self._specs[(group, attr)] = spec
        return spec

    def _names(self, g: int, a: int, given: tuple[int | str, int | str] | None = None) -> tuple[str, str]:
        """Kernel names from the table; for values it lacks, the names the caller used."""
        t = self.attr_table
        gn, an = t.group_name(g), t.attr_name(g, a)
        if given is not None:
            if gn.startswith("0x") and isinstance(given[0], str):
                gn = given[0]
            if an.startswith("0x") and isinstance(given[1], str):
                an = given[1]
        return gn, an

    def _attr_error(self, err: int, which: int, g: int, a: int,
                    given: tuple[int | str, int | str] | None = None) -> KvmError:
        gn, an = self._names(g, a, given)
        return KvmError(err, self._IOCTLS[which], self._target_label(), group=gn, attr=an,
                        target_key=self._target_key())

    def has_attr(self, group: int | str, attr: int | str) -> bool:
        """KVM_HAS_DEVICE_ATTR: True if the kernel implements (group, attr) here.

        ENXIO answers False; any other error is raised."""
        g, a, _ = self._resolve(group, attr)
        fd = self._acquire()
        try:
            r = self._attr_fn(fd, self._has_req, g, a, self._null)
        finally:
            self._release()
        if r == 0:
            return True
        if r == -E.ENXIO:
            return False
        raise self._attr_error(-r, 0, g, a, (group, attr))

    def get_attr(self, group: int | str, attr: int | str, *, ctype: str | None = None,
                 value_in: Any = None) -> Any:
        """KVM_GET_DEVICE_ATTR: returns an int for integer attributes, bytes for
        byte arrays, a cffi struct for structs, None for no payload.  ``ctype``
        names what the kernel copies for attributes kvmdev has no table entry for.
        ``value_in`` fills the buffer first, for reads that take an input
        (e.g. the index of KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION)."""
        spec = self._spec(group, attr, ctype)
        if value_in is not None and spec.ctype is not None:
            buf = _pack(self._arch.ffi, spec.ctype, value_in, self._names(spec.group, spec.attr, spec.given))
        else:
            buf = spec.new() if spec.ctype is not None else self._null
        fd = self._acquire()
        try:
            r = self._attr_fn(fd, self._get_req, spec.group, spec.attr, buf)
        finally:
            self._release()
        if r < 0:
            raise self._attr_error(-r, 1, spec.group, spec.attr, spec.given)
        return spec.decode(buf) if spec.ctype is not None else None

    def set_attr(self, group: int | str, attr: int | str, value: Any = None, *, ctype: str | None = None) -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` is an int, bytes (exactly the attribute's
        width), a dict of struct fields, or None for attributes without payload."""
        spec = self._spec(group, attr, ctype)
        if spec.ctype is None:
            if value is not None:
                gn, an = self._names(spec.group, spec.attr, spec.given)
                raise ValueError(f"{gn}/{an} takes no value (the kernel ignores attr.addr)")
            buf = self._null
        else:
            buf = _pack(self._arch.ffi, spec.ctype, value, self._names(spec.group, spec.attr, spec.given))
        fd = self._acquire()
        try:
            r = self._attr_fn(fd, self._set_req, spec.group, spec.attr, buf)
        finally:
            self._release()
        if r < 0:
            raise self._attr_error(-r, 2, spec.group, spec.attr, spec.given)

    def attr_batch(self, ioctl: str, items: Sequence[tuple[int | str, int | str]],
                   values: Sequence[int] | None = None) -> list[int]:
        """Many KVM_GET_DEVICE_ATTR (or KVM_SET_DEVICE_ATTR, with ``values``) of
        integer attributes in one C call (kvmdev_attr_batch), in order.  Every
        buffer is a u64 slot, at least what the kernel copies.  Values are checked
        against each attribute's width before any ioctl; the first failing ioctl
        stops the batch and raises its KvmError (noting how many were done).
        Returns the values read (for a set: ``values``).  For the same list again
        and again, keep an attr_program()."""
        prog = self.attr_program(ioctl, items)
        return list(prog.run(values))

    def attr_program(self, ioctl: str, items: Sequence[tuple[int | str, int | str]]) -> "AttrProgram":
        """A fixed batch compiled once (see AttrProgram)."""
        return AttrProgram(self, ioctl, items)

    def attr_ioctl(self, ioctl: str, group: int | str, attr: int | str, addr: int = 0) -> int:
        """The raw ioctl with a caller-chosen ``attr.addr`` (for exploring and for
        regression tests of the kernel's own pointer checks)."""
        if ioctl not in self._IOCTLS:
            raise ValueError(f"{ioctl} is not a device-attribute ioctl")
        which = self._IOCTLS.index(ioctl)
        g, a, _ = self._resolve(group, attr)
        req = (self._has_req, self._get_req, self._set_req)[which]
        fd = self._acquire()
        try:
            r = self._attr_fn(fd, req, g, a, self._arch.ffi.cast("void *", addr))
        finally:
            self._release()
        if r < 0:
            raise self._attr_error(-r, which, g, a, (group, attr))
        return int(r)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython: the object, then its attribute table (groups, attributes, what
        the kernel copies, the doc's words)."""
        p.text(repr(self))
        t = self.attr_table
        for gv, g in sorted(t.groups.items()):
            p.break_()
            p.text(f"  {g.name} ({gv}){': ' + g.doc if g.doc else ''}")
            for a in t.attrs.get(gv, {}).values():
                p.break_()
                p.text(f"    {a.name}  [{a.ctype or 'no payload'}, {a.access}]  {a.doc}")

    def attributes(self) -> Iterator[tuple[str, str]]:
        """(group, attr) names from this target's table that HAS_DEVICE_ATTR answers yes to.
        None where the fd has no device-attr ioctls at all (HAS answers EINVAL or
        ENOTTY, as an arm64 VM does on 6.1)."""
        t = self.attr_table
        for g, names in t.attr_values.items():
            for an, a in names.items():
                try:
                    yes = t.attrs[g][a].name == an and self.has_attr(g, a)
                except KvmError as e:
                    if e.errno in (E.EINVAL, E.ENOTTY):
                        return
                    raise
                if yes:
                    yield t.group_name(g), an


# attr_batch: struct kvm_device_attr (flags, group, attr, addr) and the native
# layout of each integer type at the start of its u64 slot
_ATTR_STRUCT = struct.Struct("=IIQQ")
_BATCH_FORMATS = {"__u8": "B7x", "__u16": "H6x", "__u32": "I4x", "__u64": "Q"}


class AttrProgram:
    """A fixed list of integer device attributes to get (or set) in order, in one
    C call (kvmdev_attr_batch).  Compiled once: the struct kvm_device_attr array
    and the u64 slots it points at live as long as the program, so a run is one
    struct (un)pack and one call, whatever the number of attributes."""

    def __init__(self, target: _AttrTarget, ioctl: str, items: Sequence[tuple[int | str, int | str]]) -> None:
        which = target._IOCTLS.index(ioctl)
        if which == 0:
            raise ValueError("an attr program does KVM_GET_DEVICE_ATTR or KVM_SET_DEVICE_ATTR")
        self.target, self.which, self.n = target, which, len(items)
        self.specs = [target._spec(g, a, None) for g, a in items]
        fmts = []
        for spec in self.specs:
            f = _BATCH_FORMATS.get(spec.ctype or "")
            if f is None:
                gn, an = target._names(spec.group, spec.attr, spec.given)
                raise ValueError(f"{gn}/{an} copies {spec.ctype}: attr batches take integer attributes")
            fmts.append(f)
        self.limits = [1 << 8 * struct.calcsize("=" + f.rstrip("x0123456789")) for f in fmts]
        self.layout = struct.Struct("=" + "".join(fmts))
        ffi = target._arch.ffi
        self.slots = ffi.new("uint64_t[]", max(self.n, 1))
        base = int(ffi.cast("uintptr_t", self.slots))
        self.attrs = ffi.new("struct kvm_device_attr[]", max(self.n, 1))
        packed = b"".join(_ATTR_STRUCT.pack(0, s.group, s.attr, base + 8 * i) for i, s in enumerate(self.specs))
        ffi.memmove(self.attrs, packed, len(packed))
        self.buf = ffi.buffer(self.slots)
        self.err = ffi.new("int *")
        self.request = (target._get_req, target._set_req)[which - 1]
        self.lock = threading.Lock()

    def run(self, values: Sequence[int] | None = None) -> tuple[int, ...]:
        """Get: the values read.  Set: ``values``, one per attribute, checked
        against their widths before any ioctl."""
        if (values is None) != (self.which == 1) or values is not None and len(values) != self.n:
            raise ValueError("KVM_SET_DEVICE_ATTR takes one value per attribute; KVM_GET_DEVICE_ATTR none")
        t = self.target
        with self.lock:
            if values is not None:
                try:
                    self.layout.pack_into(self.buf, 0, *values)
                except struct.error:
                    i = next(i for i, (v, lim) in enumerate(zip(values, self.limits))
                             if not isinstance(v, int) or not 0 <= v < lim)
                    s = self.specs[i]
                    gn, an = t._names(s.group, s.attr, s.given)
                    raise ValueError(f"{gn}/{an}: {values[i]!r} does not fit {s.ctype} (nothing was written)") from None
            fd = t._acquire()
            try:
                done = t._backend.attr_batch(fd, self.request, self.attrs, self.n, self.err)
            finally:
                t._release()
            if done < self.n:
                s = self.specs[done]
                e = t._attr_error(-self.err[0], self.which, s.group, s.attr, s.given)
                add_note(e, f"attr_batch: {done} of {self.n} done before this one")
                raise e
            if values is not None:
                return tuple(values)
            return self.layout.unpack_from(self.buf)


class _Spec:
    """A resolved (group, attr): its values and how to allocate and read its buffer."""

    __slots__ = ("group", "attr", "ctype", "given", "new", "decode")

    def __init__(self, ffi: Any, group: int, attr: int, ctype: str | None,
                 given: tuple[int | str, int | str] | None = None) -> None:
        self.group = group
        self.attr = attr
        self.ctype = ctype
        self.given = given  # the caller's names, for messages
        if ctype is None:
            return
        t = ffi.typeof(ctype if ctype.endswith("]") else ctype + " *")
        self.new = lambda: ffi.new(t)
        if ctype in _INT_CTYPES:
            self.decode = _first
        elif ctype.endswith("]"):
            self.decode = lambda b: bytes(ffi.buffer(b))
        else:
            self.decode = _first


def _first(b: Any) -> Any:
    return b[0]


def _pack(ffi: Any, ct: str, value: Any, names: tuple[str, str]) -> Any:
    if ct.endswith("]"):
        buf = ffi.new(ct)
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != ffi.sizeof(buf):
            raise ValueError(f"{names[0]}/{names[1]} takes {ffi.sizeof(buf)} bytes ({ct})")
        ffi.memmove(buf, bytes(value), len(value))
        return buf
    if ct in _INT_CTYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{names[0]}/{names[1]} takes an int ({ct}), not {type(value).__name__}")
        try:
            return ffi.new(ct + " *", value)
        except OverflowError:
            raise ValueError(f"{value} does not fit {names[0]}/{names[1]} ({ct})") from None
    if isinstance(value, (bytes, bytearray)):
        size = ffi.sizeof(ct)
        if len(value) != size:
            raise ValueError(f"{names[0]}/{names[1]} takes {size} bytes ({ct})")
        buf = ffi.new(ct + " *")
        ffi.memmove(buf, bytes(value), size)
        return buf
    try:
        return ffi.new(ct + " *", value)
    except (TypeError, KeyError, OverflowError) as e:
        raise TypeError(f"{names[0]}/{names[1]} takes {ct}: {e}") from None


class Kvm(_AttrTarget, X86SystemAttrs):
    """The system fd (/dev/kvm)."""

    _kind = "system"
    _process_bound = False   # /dev/kvm ioctls work from a fork child too

    def __init__(self, backend: "Backend") -> None:
        super().__init__(backend, backend.open_system(), None)
        self.backend_reason = ""

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Kvm {self.backend} {self.arch} {state}>"

    @property
    def kernel_release(self) -> str:
        """The release of the kernel answering (uname -r; the mock's emulated one)."""
        return self._backend.kernel_release

    @property
    def kernel_version(self) -> tuple[int, int]:
        """(major, minor) of kernel_release, for behaviour that differs by kernel."""
        m = re.match(r"(\d+)\.(\d+)", self.kernel_release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return self._ioctl_val("KVM_GET_API_VERSION", 0)

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        return self._ioctl_val("KVM_CHECK_EXTENSION", _cap(self._arch, cap))

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd for struct kvm_run."""
        return self._ioctl_val("KVM_GET_VCPU_MMAP_SIZE", 0)

    def create_vm(self, machine_type: int = 0, *, ipa_bits: int | None = None) -> "Vm":
        """KVM_CREATE_VM.  ``ipa_bits`` (arm64, KVM_CAP_ARM_VM_IPA_SIZE) sets the
        guest physical address size in the machine type's low byte."""
        if ipa_bits is not None:
            if self.arch != "arm64":
                raise ValueError("ipa_bits is an arm64 machine type (KVM_VM_TYPE_ARM_IPA_SIZE)")
            mask = self._arch.const("KVM_VM_TYPE_ARM_IPA_SIZE_MASK")
            if not 0 < ipa_bits <= mask:
                raise ValueError(f"ipa_bits must be 1..{mask}, not {ipa_bits}")
            machine_type = (machine_type & ~mask) | ipa_bits
        fd = self._ioctl_val("KVM_CREATE_VM", machine_type)
        vm = Vm(self._backend, fd, self)
        vm.machine_type = machine_type
        return vm


def _cap(arch: Arch, cap: int | str) -> int:
    if isinstance(cap, str):
        return arch.const(cap if cap.startswith("KVM_CAP_") else "KVM_CAP_" + cap)
    return cap


class GuestMemory:
    """Guest RAM: an anonymous mmap registered with KVM_SET_USER_MEMORY_REGION.
    Read and write it by guest physical address."""

    def __init__(self, vm: "Vm", slot: int, guest_phys_addr: int, size: int, readonly: bool) -> None:
        self.slot = slot
        self.guest_phys_addr = guest_phys_addr
        self.size = size
        self.readonly = readonly
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._ffi = vm._arch.ffi
        self._ptr = self._ffi.from_buffer(self.buf)
        self.userspace_addr = int(self._ffi.cast("uintptr_t", self._ptr))

    def __repr__(self) -> str:
        return f"<GuestMemory slot {self.slot} {self.guest_phys_addr:#x}+{self.size:#x}>"

    def _off(self, gpa: int, n: int) -> int:
        off = gpa - self.guest_phys_addr
        if off < 0 or off + n > self.size:
            raise ValueError(f"{gpa:#x}+{n:#x} is outside {self!r}")
        return off

    def read(self, gpa: int, n: int) -> bytes:
        off = self._off(gpa, n)
        return self.buf[off:off + n]

    def write(self, gpa: int, data: bytes) -> None:
        off = self._off(gpa, len(data))
        self.buf[off:off + len(data)] = data

    def close(self) -> None:
        if not self.buf.closed:
            self._ffi.release(self._ptr)
            self.buf.close()


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
                for m in self.memory.values():
                    m.close()
                self.memory.clear()

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION (raw; see add_memory)."""
        r = self._arch.ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": memory_size, "userspace_addr": userspace_addr})
        self._ioctl("KVM_SET_USER_MEMORY_REGION", r)

    def add_memory(self, guest_phys_addr: int, size: int, *, slot: int | None = None,
                   readonly: bool = False) -> GuestMemory:
        """Map ``size`` bytes of fresh anonymous memory at ``guest_phys_addr``."""
        if slot is None:
            slot = max(self.memory, default=-1) + 1
        mem = GuestMemory(self, slot, guest_phys_addr, size, readonly)
        try:
            self.set_user_memory_region(slot, guest_phys_addr, size, mem.userspace_addr,
                                        self._arch.const("KVM_MEM_READONLY") if readonly else 0)
        except BaseException:
            mem.close()
            raise
        self.memory[slot] = mem
        return mem

    def guest_memory(self, gpa: int, n: int = 1) -> GuestMemory:
        for m in self.memory.values():
            if m.guest_phys_addr <= gpa and gpa + n <= m.guest_phys_addr + m.size:
                return m
        raise ValueError(f"no memory slot holds {gpa:#x}+{n:#x}")

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE (on arm64 ``irq`` is encoded: see kvmdev.arm64.irq)."""
        r = self._arch.ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl("KVM_IRQ_LINE", r)

    def signal_msi(self, address: int, data: int, devid: int | None = None) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest.  ``devid``
        (the requester ID) is required by the arm64 ITS."""
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
        return sorted((c for c in self._children.values() if isinstance(c, Vcpu)), key=lambda v: v.id)

    @property
    def devices(self) -> list["Device"]:
        return [c for c in self._children.values() if isinstance(c, Device)]

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (some answers depend on the VM)."""
        return self._ioctl_val("KVM_CHECK_EXTENSION", _cap(self._arch, cap))

    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the VM fd: ``cap`` by number or name, up to four args."""
        return _enable_cap(self, cap, args, flags)

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        """KVM_CREATE_VCPU."""
        fd = self._ioctl_val("KVM_CREATE_VCPU", vcpu_id)
        return Vcpu(self._backend, fd, self, vcpu_id)

    def preferred_target(self) -> "VcpuInit":
        """KVM_ARM_PREFERRED_TARGET (arm64): the target (and features) this host's
        KVM wants in KVM_ARM_VCPU_INIT."""
        _need_arch(self, "arm64", "KVM_ARM_PREFERRED_TARGET")
        init = self._arch.ffi.new("struct kvm_vcpu_init *")
        self._ioctl("KVM_ARM_PREFERRED_TARGET", init)
        return VcpuInit(int(init.target), _arm64.feature_names(list(init.features), self._arch))

    def _create_device_call(self, dtype: int, flags: int) -> Any:
        cd = self._arch.ffi.new("struct kvm_create_device *")
        cd.type = dtype
        cd.fd = 0xFFFFFFFF
        cd.flags = flags
        fd = self._acquire()
        try:
            r = self._backend.ioctl(fd, self._arch.request("KVM_CREATE_DEVICE"), cd)
        finally:
            self._release()
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
        cd = self._create_device_call(t, 0)
        cls = DEVICE_CLASSES.get(device_type_name(t), Device)
        return cls(self._backend, int(cd.fd), self, t)


def _devtype(dtype: int | str) -> int:
    if isinstance(dtype, str):
        name = dtype.upper().replace("-", "_")
        name = name[len("KVM_DEV_TYPE_"):] if name.startswith("KVM_DEV_TYPE_") else name
        try:
            return int(DeviceType[name])
        except KeyError:
            raise ValueError(f"unknown device type {dtype!r}; known: {', '.join(DeviceType.__members__)}") from None
    return int(dtype)


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


def _need_arch(obj: _Fd, arch: str, ioctl: str) -> None:
    if obj._arch.name != arch:
        raise ValueError(f"{ioctl} is an {arch} ioctl; this {obj._target_label()} is {obj._arch.name}")


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
        assert isinstance(self._parent, Vm)
        return self._parent

    def _reg_id(self, reg: int | str) -> int:
        if isinstance(reg, int):
            return reg
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
        try:
            buf = ffi.new(ct + " *", value)
        except OverflowError:
            raise ValueError(f"{value} does not fit register {_reg_label(reg)} ({ct})") from None
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


class Device(_AttrTarget):
    """A device fd from KVM_CREATE_DEVICE."""

    _kind = "device"

    def __init__(self, backend: "Backend", fd: int, parent: Vm, dtype: int) -> None:
        super().__init__(backend, fd, parent)
        self.type = dtype

    @property
    def type_name(self) -> str:
        return device_type_name(self.type)

    def _target_label(self) -> str:
        return self.type_name

    def _target_key(self) -> str:
        return self.type_name

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.{type(self).__name__} {self.type_name} {self.backend} {self.arch} {state}>"

    @property
    def vm(self) -> Vm:
        assert isinstance(self._parent, Vm)
        return self._parent


# device type name -> typed class; kvmdev.devices modules register theirs
DEVICE_CLASSES: dict[str, type[Device]] = {}
