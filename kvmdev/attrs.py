"""Attribute tables: for each target, its groups and attributes by kernel name,
and what the kernel copies at ``attr.addr`` for each (its C type).

One table per target kind ("system", "vm", "vcpu") and per device type.  The
fd layer sizes every buffer from here, error messages take names from here,
and the mock's models copy exactly these widths.  Device-family modules in
kvmdev.devices register their tables on import.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from .errors import ArchError

if TYPE_CHECKING:
    from .arch import Arch
    from .attr_target import _AttrTarget

RW, RO, WO = "rw", "r", "w"


@dataclass(frozen=True)
class Attr:
    """One attribute.  ``ctype`` is what the kernel copies at attr.addr
    (``None``: the kernel ignores addr)."""

    name: str
    ctype: str | None
    access: str = RW
    doc: str = ""
    arches: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Group:
    """One group.  ``any_attr`` describes every attribute of a group whose
    attribute field is an encoding (a register offset, an MPIDR) rather than
    a list of names."""

    name: str
    attrs: tuple[Attr, ...] = ()
    any_attr: Attr | None = None
    doc: str = ""
    arches: tuple[str, ...] | None = None


@dataclass
class AttrTable:
    """The groups of one target, resolved to values for one architecture."""

    target: str
    arch: "Arch"
    groups: dict[int, Group] = field(default_factory=dict)
    group_values: dict[str, int] = field(default_factory=dict)
    attrs: dict[int, dict[int, Attr]] = field(default_factory=dict)
    attr_values: dict[int, dict[str, int]] = field(default_factory=dict)
    # attributes the table lists only for other architectures
    other_arch: set[str] = field(default_factory=set)

    def group_value(self, group: int | str) -> int:
        from ._check import uint, unknown
        if not isinstance(group, str):
            return uint("group of struct kvm_device_attr", group, 32)
        try:
            return self.group_values[group]
        except KeyError:
            if self.arch.has_const(group):
                v = self.arch.const(group)
                if 0 <= v < 1 << 32:
                    return v
                raise ValueError(f"{group} is {v:#x}, not a device-attribute group: "
                                 f"struct kvm_device_attr.group is a __u32") from None
            raise unknown("group", group, self.group_values, f"of {self.target} on {self.arch.name}") from None

    def attr_value(self, group: int, attr: int | str) -> int:
        if not isinstance(attr, str):
            from ._check import u64
            return u64("attr of struct kvm_device_attr", attr)
        named = self.attr_values.get(group, {})
        if attr in named:
            return named[attr]
        # any kernel name is taken as given (raw access, e.g. another device's
        # attribute to see what the kernel answers); unknown names are errors
        if self.arch.has_const(attr) and attr not in self.other_arch:
            v = self.arch.const(attr)
            if 0 <= v < 1 << 64:
                return v
            raise ValueError(f"{attr} is {v}, not a device attribute: struct kvm_device_attr.attr is a __u64")
        from ._check import unknown
        raise unknown("attribute", attr, named, f"of group {self.group_name(group)} of {self.target} "
                      f"on {self.arch.name}")

    def group_name(self, group: int) -> str:
        g = self.groups.get(group)
        return g.name if g else f"{group:#x}"

    def spec(self, group: int, attr: int) -> Attr | None:
        a = self.attrs.get(group, {}).get(attr)
        if a is not None:
            return a
        g = self.groups.get(group)
        return g.any_attr if g else None

    def attr_name(self, group: int, attr: int) -> str:
        a = self.attrs.get(group, {}).get(attr)
        return a.name if a else f"{attr:#x}"


_TABLES: dict[str, list[Group]] = {}
_RESOLVED: dict[tuple[str, str], AttrTable] = {}


def register(target: str, groups: list[Group]) -> None:
    _TABLES.setdefault(target, []).extend(groups)
    for key in [k for k in _RESOLVED if k[1] == target]:
        del _RESOLVED[key]


def table(arch: "Arch", target: str) -> AttrTable:
    key = (arch.name, target)
    t = _RESOLVED.get(key)
    if t is None:
        t = _RESOLVED[key] = _resolve(arch, target)
    return t


def _resolve(arch: "Arch", target: str) -> AttrTable:
    t = AttrTable(target, arch)
    for g in _TABLES.get(target, []):
        if (g.arches and arch.name not in g.arches) or not arch.has_const(g.name):
            continue
        gv = arch.const(g.name)
        t.groups.setdefault(gv, g)
        t.group_values[g.name] = gv
        for a in g.attrs:
            if (a.arches and arch.name not in a.arches) or not arch.has_const(a.name):
                t.other_arch.add(a.name)
                continue
            av = arch.const(a.name)
            t.attrs.setdefault(gv, {}).setdefault(av, a)
            t.attr_values.setdefault(gv, {})[a.name] = av
    return t


class AttrOps(Protocol):
    """What an fd class gives the per-family attribute mixins (Arm64VcpuAttrs,
    X86VcpuAttrs...): they are methods of Kvm, Vm and Vcpu, typed against this."""

    def get_attr(self, group: int | str, attr: int | str, *, ctype: str | None = None,
                 value_in: Any = None) -> Any: ...

    def set_attr(self, group: int | str, attr: int | str, value: Any = None, *,
                 ctype: str | None = None) -> None: ...


class VcpuOps(AttrOps, Protocol):
    id: int

    @property
    def vm(self) -> Any: ...


class attr_property:
    """A typed attribute as a Python property: KVM_GET_DEVICE_ATTR on read,
    KVM_SET_DEVICE_ATTR on assignment (read-only/write-only per ``access``).
    The fast path is one dict lookup, one buffer and one C call."""

    arches: tuple[str, ...] = ()   # set by arch_only: the architectures it exists on

    def __init__(self, group: str, attr: str, access: str = "rw", doc: str = "") -> None:
        self.key = (group, attr)
        self.set_key = object()   # obj._specs key of the checked set path
        self.access = access
        self.__doc__ = f"KVM_{{GET,SET}}_DEVICE_ATTR {group}/{attr}" + (f": {doc}" if doc else "")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: _AttrTarget | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        # the C fast path, once the first call has checked arch and access and
        # resolved the spec (kept in obj._specs under this descriptor)
        spec = obj._specs.get(self)
        if spec is not None:     # _AttrTarget._get_int, inline: one Python frame less per call
            tok = object()   # this call's hold (see _Fd._acquire)
            try:
                fd = obj._acquire(tok)
                r = obj._int_get(fd, obj._get_req, spec.group, spec.attr, spec.width)
            finally:   # inline, not _release(): no call (no pending-signal check) before the discard
                obj._users.discard(tok)
                if obj._deferred and not obj._users:
                    obj._close_deferred()
            if r.err:
                raise obj._attr_error(-r.err, 1, spec.group, spec.attr, spec.given)
            return r.val
        if self.arches and obj._arch.name not in self.arches:
            raise _arch_error(obj, self.name, self.arches, f" ({self.key[0]}/{self.key[1]})")
        if "r" not in self.access:
            raise AttributeError(f"{self.key[1]} is write-only")
        spec = obj._specs.get(self.key) or obj._spec(*self.key, None)
        if spec.width and obj._int_get is not None:
            obj._specs[self] = spec
            return obj._get_int(spec)
        buf = spec.new()
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = obj._acquire(tok)
            r = obj._attr_fn(fd, obj._get_req, spec.group, spec.attr, buf)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            obj._users.discard(tok)
            if obj._deferred and not obj._users:
                obj._close_deferred()
        if r < 0:
            raise obj._attr_error(-r, 1, spec.group, spec.attr, spec.given)
        return spec.decode(buf)

    def __set__(self, obj: _AttrTarget, value: Any) -> None:
        spec = obj._specs.get(self.set_key)
        if spec is not None and value.__class__ is int and 0 <= value < spec.limit:
            return obj._set_int(spec, value)
        if self.arches and obj._arch.name not in self.arches:
            raise _arch_error(obj, self.name, self.arches, f" ({self.key[0]}/{self.key[1]})")
        if "w" not in self.access:
            raise AttributeError(f"{self.key[1]} is read-only")
        obj.set_attr(*self.key, value)
        spec = obj._specs.get(self.key)
        if spec is not None and spec.width and obj._int_set is not None:
            obj._specs[self.set_key] = spec     # checked: later sets take the fast path



# -- members of one architecture ----------------------------------------------------------
C = TypeVar("C", bound=type)
ARCH_NAMES_ATTR = "_kvmdev_arch_names"   # per class: member name -> the architectures it exists on


def _arch_error(obj: Any, name: str, arches: tuple[str, ...], what: str = "") -> ArchError:
    return ArchError(f"{name}{what} exists on {' and '.join(arches)} only; this {obj._target_label()} is "
                     f"{obj._arch.name}")


def arch_member(arches: tuple[str, ...], name: str, member: Any) -> Any:
    """``member`` (a function, property or attr_property) checking, when reached,
    that its object is of one of ``arches`` (ArchError otherwise)."""
    if isinstance(member, attr_property):
        member.arches = arches
        return member
    if isinstance(member, property):
        def wrap(f: Callable[..., Any] | None) -> Callable[..., Any] | None:
            return None if f is None else arch_member(arches, name, f)
        return property(wrap(member.fget), wrap(member.fset), wrap(member.fdel), member.__doc__)
    if callable(member):
        @functools.wraps(member)
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._arch.name not in arches:
                raise _arch_error(self, name, arches)
            return member(self, *args, **kwargs)
        return checked
    return member


def arch_only(*arches: str) -> Callable[[C], C]:
    """Class decorator for a mixin of Kvm/Vm/Vcpu whose members exist on
    ``arches`` only: on another architecture they are left out of dir() (so
    IPython and jedi do not offer them) and reaching one raises ArchError
    naming both architectures.  Type checkers still see them."""
    def deco(cls: C) -> C:
        names = {}
        for name, member in list(vars(cls).items()):
            if name.startswith("__") or not (callable(member) or isinstance(member, (property, attr_property))):
                continue
            setattr(cls, name, arch_member(arches, name, member))
            names[name] = arches
        setattr(cls, ARCH_NAMES_ATTR, names)
        return cls
    return deco


def add_arch_member(cls: type, name: str, arches: tuple[str, ...], member: Any) -> None:
    """Attach one member of ``arches`` to an fd class (as arch_only does for a mixin)."""
    setattr(cls, name, arch_member(arches, name, member))
    names = dict(vars(cls).get(ARCH_NAMES_ATTR, {}))
    names[name] = arches
    setattr(cls, ARCH_NAMES_ATTR, names)


def other_arch_names(cls: type, arch: str) -> frozenset[str]:
    """The members of ``cls`` that do not exist on ``arch`` (for __dir__)."""
    key = (cls, arch)
    hit = _OTHER_ARCH.get(key)
    if hit is None:
        out: set[str] = set()
        for c in cls.__mro__:
            out |= {n for n, a in vars(c).get(ARCH_NAMES_ATTR, {}).items() if arch not in a}
        hit = _OTHER_ARCH[key] = frozenset(out)
    return hit


_OTHER_ARCH: dict[tuple[type, str], frozenset[str]] = {}
