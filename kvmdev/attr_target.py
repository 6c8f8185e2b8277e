"""The device-attribute target: KVM_{HAS,GET,SET}_DEVICE_ATTR on any fd kind,
driven by its attribute table (kvmdev.attrs), and AttrProgram (a compiled batch).

Buffers handed to the kernel are allocated from the attribute tables at exactly
the width the kernel copies and live for the whole call.
"""
from __future__ import annotations

import errno as E
import struct
import threading
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from . import _check, _forksafe
from . import attrs as _attrs
from ._fd import _Fd
from .errors import KvmError, add_note

if TYPE_CHECKING:
    from .backends import Backend

_INT_CTYPES = {"__u8", "__u16", "__u32", "__u64", "__s8", "__s16", "__s32", "__s64", "int"}

class _AttrTarget(_Fd):
    """KVM_{HAS,GET,SET}_DEVICE_ATTR on this fd, driven by its attribute table."""

    _IOCTLS = ("KVM_HAS_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR")

    def __init__(self, backend: "Backend", fd: int, parent: "_Fd | None") -> None:
        super().__init__(backend, fd, parent)
        self._has_req, self._get_req, self._set_req = backend.arch.attr_requests
        self._attr_fn = backend.attr
        self._null = backend.arch.ffi.NULL
        # the real backend's C fast path of unsigned integer attributes (one call,
        # the buffer on the C stack); None: every call takes the buffer path
        self._int_get = getattr(backend, "attr_int_get", None)
        self._int_set = getattr(backend, "attr_int_set", None)
        # (group, attr) as the caller names them -> resolved values and buffer type
        self._specs: dict[tuple[int | str, int | str], _Spec] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        # IPython's pretty printer takes the first of __repr__/_repr_pretty_ along
        # the MRO: a class with its own __repr__ keeps the attribute table display
        super().__init_subclass__(**kw)
        if "__repr__" in vars(cls) and "_repr_pretty_" not in vars(cls):
            cls._repr_pretty_ = _AttrTarget._repr_pretty_   # type: ignore[method-assign]

    def __dir__(self) -> list[str]:
        """Without the members of other architectures (vcpu.tsc_offset on arm64),
        so completion (IPython, jedi) offers only what exists here."""
        other = _attrs.other_arch_names(type(self), self._arch.name)
        return [n for n in super().__dir__() if n not in other]

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
            if ctype is not None:
                self._check_ctype(g, a, ct, aspec, (group, attr))
            spec = _Spec(self._arch.ffi, g, a, ct, (group, attr))
            if ctype is None:
                self._specs[(group, attr)] = spec
        return spec

    def _check_ctype(self, g: int, a: int, ct: str | None, aspec: Any,
                     given: tuple[int | str, int | str]) -> None:
        """A caller's ctype= must name a C type, and for an attribute the table knows,
        be at least as wide as what the kernel copies (else it writes past the buffer)."""
        ffi = self._arch.ffi
        size = 0
        if ct is not None:
            if not isinstance(ct, str):
                raise TypeError(f"ctype must be a str naming a C type, not {type(ct).__name__}")
            try:
                t = ffi.typeof(ct)
                size = ffi.sizeof(t)
            except (ffi.error, TypeError, ValueError, OverflowError, MemoryError) as e:
                raise ValueError(f"ctype {_check.show(ct)} is not a C type kvmdev's cdefs know: {e}") from None
            if size > _MAX_CTYPE:
                raise ValueError(f"ctype {_check.show(ct)} is {size} bytes: no attribute copies more than "
                                 f"{_MAX_CTYPE}")
            while t.kind == "array":
                t = t.item
            if t.kind not in ("primitive", "struct", "union"):   # a pointer is not what the kernel copies
                raise ValueError(f"ctype {_check.show(ct)} is a {t.kind} type: name the data the kernel copies "
                                 f"(an integer, an array of bytes, a struct)")
        if aspec is None or aspec.ctype is None:
            return
        need = ffi.sizeof(aspec.ctype)
        if size < need:
            gn, an = self._names(g, a, given)
            raise ValueError(f"{self._target_label()} group {gn} attr {an}: the kernel copies {need} bytes "
                             f"({aspec.ctype}); ctype {ct or 'void'!r} is {size} bytes, narrower than that")

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

    # The C fast path (kvmdev_attr_{get,set}_int) of an unsigned integer attribute
    # whose spec is resolved: the fd held as in _ioctl, the error built only on failure.
    def _get_int(self, spec: "_Spec") -> int:
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._int_get(fd, self._get_req, spec.group, spec.attr, spec.width)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r.err:
            raise self._attr_error(-r.err, 1, spec.group, spec.attr, spec.given)
        return int(r.val)

    def _set_int(self, spec: "_Spec", value: int) -> None:
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._int_set(fd, self._set_req, spec.group, spec.attr, spec.width, value)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise self._attr_error(-r, 2, spec.group, spec.attr, spec.given)

    def has_attr(self, group: int | str, attr: int | str) -> bool:
        """KVM_HAS_DEVICE_ATTR: True if the kernel implements (group, attr) here.

        ENXIO answers False; any other error is raised."""
        g, a, _ = self._resolve(group, attr)
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._attr_fn(fd, self._has_req, g, a, self._null)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
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
        if ctype is None and value_in is None:
            spec = self._specs.get((group, attr))
            if spec is not None and spec.width and self._int_get is not None:
                return self._get_int(spec)
        spec = self._spec(group, attr, ctype)
        if value_in is not None and spec.ctype is not None:
            buf = _pack(self._arch.ffi, spec.ctype, value_in, self._names(spec.group, spec.attr, spec.given))
        else:
            buf = spec.new() if spec.ctype is not None else self._null
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._attr_fn(fd, self._get_req, spec.group, spec.attr, buf)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise self._attr_error(-r, 1, spec.group, spec.attr, spec.given)
        return spec.decode(buf) if spec.ctype is not None else None

    def set_attr(self, group: int | str, attr: int | str, value: Any = None, *, ctype: str | None = None) -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` is an int, bytes (exactly the attribute's
        width), a dict of struct fields, or None for attributes without payload."""
        if ctype is None:
            spec = self._specs.get((group, attr))
            if (spec is not None and spec.width and value.__class__ is int and 0 <= value < spec.limit
                    and self._int_set is not None):
                return self._set_int(spec, value)
        spec = self._spec(group, attr, ctype)
        if spec.ctype is None:
            if value is not None:
                gn, an = self._names(spec.group, spec.attr, spec.given)
                raise ValueError(f"{gn}/{an} takes no value (the kernel ignores attr.addr)")
            buf = self._null
        else:
            buf = _pack(self._arch.ffi, spec.ctype, value, self._names(spec.group, spec.attr, spec.given))
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._attr_fn(fd, self._set_req, spec.group, spec.attr, buf)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
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
            raise ValueError(f"attr_ioctl: {_check.show(ioctl)} is not a device-attribute ioctl "
                             f"(one of {', '.join(self._IOCTLS)})")
        which = self._IOCTLS.index(ioctl)
        g, a, _ = self._resolve(group, attr)
        req = (self._has_req, self._get_req, self._set_req)[which]
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._attr_fn(fd, req, g, a, self._arch.ffi.cast("void *", addr))
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
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
        if not isinstance(ioctl, str) or ioctl not in target._IOCTLS[1:]:
            raise ValueError(f"an attr program does KVM_GET_DEVICE_ATTR or KVM_SET_DEVICE_ATTR, "
                             f"not {_check.show(ioctl)}")
        which = target._IOCTLS.index(ioctl)
        items = _check.int_list("items of an attr batch", items)
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) != 2:
                raise TypeError(f"attr batch item {i}: a (group, attr) pair, not {_check.show(it)}")
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
        _forksafe.register(self)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def run(self, values: Sequence[int] | None = None) -> tuple[int, ...]:
        """Get: the values read.  Set: ``values``, one per attribute, checked
        against their widths before any ioctl."""
        if values is not None:
            values = _check.int_list("values of an attr batch", values)
        if (values is None) != (self.which == 1) or values is not None and len(values) != self.n:
            raise ValueError("KVM_SET_DEVICE_ATTR takes one value per attribute; KVM_GET_DEVICE_ATTR none")
        t = self.target
        with self.lock:
            if values is not None:
                try:
                    if True in map(_not_int, values):   # struct packs bools as ints: the policy does not
                        raise struct.error
                    self.layout.pack_into(self.buf, 0, *values)
                except struct.error:
                    i = next(i for i, (v, lim) in enumerate(zip(values, self.limits))
                             if _not_int(v) or not 0 <= v < lim)
                    s = self.specs[i]
                    gn, an = t._names(s.group, s.attr, s.given)
                    if _not_int(values[i]):
                        raise TypeError(f"{gn}/{an} takes an int ({s.ctype}), not {type(values[i]).__name__} "
                                        f"{_check.show(values[i])} (nothing was written)") from None
                    raise ValueError(f"{gn}/{an}: {_check.show(values[i])} does not fit {s.ctype} (nothing was written)") from None
            tok = object()   # this call's hold (see _Fd._acquire)
            try:
                fd = t._acquire(tok)
                done = t._backend.attr_batch(fd, self.request, self.attrs, self.n, self.err)
            finally:   # inline, not _release(): no call (no pending-signal check) before the discard
                t._users.discard(tok)
                if t._deferred and not t._users:
                    t._close_deferred()
            if done < self.n:
                s = self.specs[done]
                e = t._attr_error(-self.err[0], self.which, s.group, s.attr, s.given)
                add_note(e, f"attr_batch: {done} of {self.n} done before this one")
                raise e
            if values is not None:
                return tuple(values)
            return self.layout.unpack_from(self.buf)


_MAX_CTYPE = 1 << 24    # 16 MiB: far above any attribute (the largest, s390's CPU model, is 4 KiB)


def _padding(field: str) -> bool:
    return field.startswith(("pad", "reserved", "__pad", "_pad", "unused"))


def _checked_fields(ffi: Any, t: Any, value: Any, where: str) -> Any:
    """A dict (or list) initialiser of C type ``t`` checked as the policy says, before
    cffi sees it: every field of a struct named (padding aside: cffi would zero-fill
    the rest, and the kernel reads them all), ints in their field's range, no bools."""
    if t.kind in ("struct", "union"):
        if not isinstance(value, dict):
            if isinstance(value, ffi.CData):   # a struct get_attr returned
                return value
            raise TypeError(f"{where}: a dict of fields, not {type(value).__name__} {_check.show(value)}")
        fields = dict(t.fields)
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise ValueError(f"{where}: no field {_check.show(unknown[0])} (fields: {', '.join(fields)})")
        if t.kind == "struct":
            missing = [f for f in fields if f not in value and not _padding(f)]
            if missing:
                raise ValueError(f"{where}: fields {', '.join(missing)} not given (the kernel reads every "
                                 f"field; nothing was written)")
        elif len(value) != 1:
            raise ValueError(f"{where}: a union takes one member, not {len(value)}")
        return {k: _checked_fields(ffi, fields[k].type, v, f"{where}.{k}") for k, v in value.items()}
    if t.kind == "array":
        n = t.length
        if isinstance(value, (bytes, bytearray)) and t.item.kind == "primitive" and ffi.sizeof(t.item) == 1:
            if len(value) != n:
                raise ValueError(f"{where}: {n} bytes, not {len(value)}")
            return bytes(value)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: a list of {n}, not {type(value).__name__} {_check.show(value)}")
        if len(value) != n:   # cffi would zero-fill a short list
            raise ValueError(f"{where}: {n} items, not {len(value)}")
        return [_checked_fields(ffi, t.item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if t.kind == "primitive" and t.cname not in ("float", "double", "char"):
        bits = 8 * ffi.sizeof(t)
        signed = ffi.cast(t, -1) < 0
        return (_check.sint if signed else _check.uint)(where, value, bits)
    return value


_UINT_WIDTHS = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}


def _not_int(v: Any) -> bool:
    return not isinstance(v, int) or isinstance(v, bool)


class _Spec:
    """A resolved (group, attr): its values and how to allocate and read its buffer."""

    __slots__ = ("group", "attr", "ctype", "given", "new", "decode", "width", "limit")

    def __init__(self, ffi: Any, group: int, attr: int, ctype: str | None,
                 given: tuple[int | str, int | str] | None = None) -> None:
        self.group = group
        self.attr = attr
        self.ctype = ctype
        self.given = given  # the caller's names, for messages
        # an unsigned integer: the C fast path's width in bytes (0: none) and bound
        self.width = _UINT_WIDTHS.get(ctype or "", 0)
        self.limit = 1 << 8 * self.width
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
    if value is None:   # cffi would make it an all-zero struct: never what a caller meant
        raise TypeError(f"{names[0]}/{names[1]} takes {ct} (a dict of its fields, {ffi.sizeof(ct)} bytes, "
                        f"or the struct get_attr returned), not None (nothing was written)")
    if isinstance(value, dict):
        value = _checked_fields(ffi, ffi.typeof(ct), value, f"{names[0]}/{names[1]} {ct}")
    try:
        return ffi.new(ct + " *", value)
    except (TypeError, KeyError, IndexError, OverflowError, ValueError) as e:
        raise TypeError(f"{names[0]}/{names[1]} takes {ct}: {e}") from None
