"""The fd layer: one type per kind of kernel fd (Kvm, Vm, Vcpu, Device).

Every ioctl goes through ``_Fd._ioctl``/``_ioctl_val``; failures become a
KvmError naming the ioctl, the target, and the group/attribute by kernel name.
Buffers handed to the kernel are allocated from the attribute tables at exactly
the width the kernel copies and live for the whole call.
"""
from __future__ import annotations

import errno as E
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterator

from . import attrs as _attrs
from .arch import Arch, DeviceType, device_type_name
from .errors import ClosedError, KvmError

if TYPE_CHECKING:
    from .backends import Backend

_INT_CTYPES = {"__u8", "__u16", "__u32", "__u64", "__s8", "__s16", "__s32", "__s64", "int"}


class _Fd:
    """A kernel fd owned by this object; closes deterministically, children first."""

    _kind = "fd"

    def __init__(self, backend: "Backend", fd: int, parent: "_Fd | None") -> None:
        self._backend = backend
        self._arch: Arch = backend.arch
        self._fd = fd
        self._parent = parent
        # Weak: an object nobody references closes its fd like a Python file does;
        # close() still reaches every live child first.
        self._children: weakref.WeakValueDictionary[int, _Fd] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        if parent is not None:
            parent._children[id(self)] = self

    # -- lifetime --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ClosedError(f"{self._target_label()} is closed")
        return fd

    def close(self) -> None:
        """Close this fd, after closing every object created from it."""
        with self._lock:
            if self._fd < 0:
                return
            for child in list(self._children.values()):
                child.close()
            fd, self._fd = self._fd, -1
            if self._parent is not None:
                self._parent._children.pop(id(self), None)
            self._backend.close(fd)

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
        except Exception:
            pass

    # -- naming ------------------------------------------------------------
    def _target_label(self) -> str:
        return self._kind

    def _target_key(self) -> str:
        return self._kind

    # -- ioctls ------------------------------------------------------------
    def _ioctl(self, name: str, arg: Any, *, group: str | None = None, attr: str | None = None) -> int:
        r = self._backend.ioctl(self.fileno(), self._arch.request(name), arg)
        if r < 0:
            raise KvmError(-r, name, self._target_label(), group=group, attr=attr, target_key=self._target_key())
        return int(r)

    def _ioctl_val(self, name: str, value: int) -> int:
        r = self._backend.ioctl_val(self.fileno(), self._arch.request(name), value)
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

    @property
    def attr_table(self) -> _attrs.AttrTable:
        return _attrs.table(self._arch, self._target_key())

    def _resolve(self, group: int | str, attr: int | str) -> tuple[int, int, _attrs.Attr | None]:
        t = self.attr_table
        g = t.group_value(group)
        a = t.attr_value(g, attr)
        return g, a, t.spec(g, a)

    def _names(self, g: int, a: int) -> tuple[str, str]:
        t = self.attr_table
        return t.group_name(g), t.attr_name(g, a)

    def _attr_call(self, ioctl: str, g: int, a: int, addr: int) -> int:
        ffi = self._arch.ffi
        st = ffi.new("struct kvm_device_attr *")
        st.group = g
        st.attr = a
        st.addr = addr
        r = self._backend.ioctl(self.fileno(), self._arch.request(ioctl), st)
        if r < 0:
            gn, an = self._names(g, a)
            raise KvmError(-r, ioctl, self._target_label(), group=gn, attr=an, target_key=self._target_key())
        return int(r)

    def has_attr(self, group: int | str, attr: int | str) -> bool:
        """KVM_HAS_DEVICE_ATTR: True if the kernel implements (group, attr) here.

        ENXIO answers False; any other error is raised."""
        g, a, _ = self._resolve(group, attr)
        try:
            self._attr_call("KVM_HAS_DEVICE_ATTR", g, a, 0)
        except KvmError as e:
            if e.errno == E.ENXIO:
                return False
            raise
        return True

    def _ctype_for(self, g: int, a: int, spec: _attrs.Attr | None, ctype: str | None) -> str | None:
        if ctype is not None:
            return ctype
        if spec is not None:
            return spec.ctype
        gn, an = self._names(g, a)
        raise ValueError(f"kvmdev has no table entry for {self._target_label()} group {gn} attr {an}: "
                         f"pass ctype= (e.g. '__u64', '__u8[16]') to say what the kernel copies")

    def get_attr(self, group: int | str, attr: int | str, *, ctype: str | None = None) -> Any:
        """KVM_GET_DEVICE_ATTR: returns an int for integer attributes, bytes for
        byte arrays, a cffi struct copy for structs, None for no payload."""
        g, a, spec = self._resolve(group, attr)
        ct = self._ctype_for(g, a, spec, ctype)
        ffi = self._arch.ffi
        if ct is None:
            self._attr_call("KVM_GET_DEVICE_ATTR", g, a, 0)
            return None
        buf = ffi.new(ct if ct.endswith("]") else ct + " *")
        self._attr_call("KVM_GET_DEVICE_ATTR", g, a, int(ffi.cast("uintptr_t", buf)))
        if ct in _INT_CTYPES:
            return int(buf[0])
        if ct.endswith("]"):
            return bytes(ffi.buffer(buf))
        return buf[0]

    def set_attr(self, group: int | str, attr: int | str, value: Any = None, *, ctype: str | None = None) -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` is an int, bytes (exactly the attribute's
        width), a dict of struct fields, or None for attributes without payload."""
        g, a, spec = self._resolve(group, attr)
        ct = self._ctype_for(g, a, spec, ctype)
        ffi = self._arch.ffi
        if ct is None:
            if value is not None:
                gn, an = self._names(g, a)
                raise ValueError(f"{gn}/{an} takes no value (the kernel ignores attr.addr)")
            self._attr_call("KVM_SET_DEVICE_ATTR", g, a, 0)
            return
        buf = _pack(ffi, ct, value, self._names(g, a))
        self._attr_call("KVM_SET_DEVICE_ATTR", g, a, int(ffi.cast("uintptr_t", buf)))

    def attr_ioctl(self, ioctl: str, group: int | str, attr: int | str, addr: int = 0) -> int:
        """The raw ioctl with a caller-chosen ``attr.addr`` (for exploring and for
        regression tests of the kernel's own pointer checks)."""
        if ioctl not in ("KVM_HAS_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR"):
            raise ValueError(f"{ioctl} is not a device-attribute ioctl")
        g, a, _ = self._resolve(group, attr)
        return self._attr_call(ioctl, g, a, addr)

    def attributes(self) -> Iterator[tuple[str, str]]:
        """(group, attr) names from this target's table that HAS_DEVICE_ATTR answers yes to."""
        t = self.attr_table
        for g, names in t.attr_values.items():
            for an, a in names.items():
                if t.attrs[g][a].name == an and self.has_attr(g, a):
                    yield t.group_name(g), an


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


class Kvm(_AttrTarget):
    """The system fd (/dev/kvm)."""

    _kind = "system"

    def __init__(self, backend: "Backend") -> None:
        super().__init__(backend, backend.open_system(), None)
        self.backend_reason = ""

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Kvm {self.backend} {self.arch} {state}>"

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

    def create_vm(self, machine_type: int = 0) -> "Vm":
        """KVM_CREATE_VM with the given machine type."""
        fd = self._ioctl_val("KVM_CREATE_VM", machine_type)
        return Vm(self._backend, fd, self)


def _cap(arch: Arch, cap: int | str) -> int:
    if isinstance(cap, str):
        return arch.const(cap if cap.startswith("KVM_CAP_") else "KVM_CAP_" + cap)
    return cap


class Vm(_AttrTarget):
    """A VM fd."""

    _kind = "vm"

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

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        """KVM_CREATE_VCPU."""
        fd = self._ioctl_val("KVM_CREATE_VCPU", vcpu_id)
        return Vcpu(self._backend, fd, self, vcpu_id)

    def _create_device_call(self, dtype: int, flags: int) -> Any:
        cd = self._arch.ffi.new("struct kvm_create_device *")
        cd.type = dtype
        cd.fd = 0xFFFFFFFF
        cd.flags = flags
        r = self._backend.ioctl(self.fileno(), self._arch.request("KVM_CREATE_DEVICE"), cd)
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

    def create_device(self, dtype: int | str) -> "Device":
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


class Vcpu(_AttrTarget):
    """A vCPU fd."""

    _kind = "vcpu"

    def __init__(self, backend: "Backend", fd: int, parent: Vm, vcpu_id: int) -> None:
        super().__init__(backend, fd, parent)
        self.id = vcpu_id

    def _target_label(self) -> str:
        return f"vCPU {self.id}"

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Vcpu {self.id} {self.backend} {self.arch} {state}>"

    @property
    def vm(self) -> Vm:
        assert isinstance(self._parent, Vm)
        return self._parent


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
