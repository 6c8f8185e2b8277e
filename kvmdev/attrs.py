"""Attribute tables: for each target, its groups and attributes by kernel name,
and what the kernel copies at ``attr.addr`` for each (its C type).

One table per target kind ("system", "vm", "vcpu") and per device type.  The
fd layer sizes every buffer from here, error messages take names from here,
and the mock's models copy exactly these widths.  Device-family modules in
kvmdev.devices register their tables on import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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
        if isinstance(group, int):
            return group
        try:
            return self.group_values[group]
        except KeyError:
            if self.arch.has_const(group):
                return self.arch.const(group)
            raise ValueError(f"{group} is not a group of {self.target} on {self.arch.name}") from None

    def attr_value(self, group: int, attr: int | str) -> int:
        if isinstance(attr, int):
            return attr
        named = self.attr_values.get(group, {})
        if attr in named:
            return named[attr]
        # any kernel name is taken as given (raw access, e.g. another device's
        # attribute to see what the kernel answers); unknown names are errors
        if self.arch.has_const(attr) and attr not in self.other_arch:
            return self.arch.const(attr)
        raise ValueError(f"{attr} is not an attribute of group {self.group_name(group)} "
                         f"of {self.target} on {self.arch.name}")

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

    def __init__(self, group: str, attr: str, access: str = "rw", doc: str = "") -> None:
        self.key = (group, attr)
        self.access = access
        self.__doc__ = f"KVM_{{GET,SET}}_DEVICE_ATTR {group}/{attr}" + (f": {doc}" if doc else "")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: _AttrTarget | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if "r" not in self.access:
            raise AttributeError(f"{self.key[1]} is write-only")
        spec = obj._specs.get(self.key) or obj._spec(*self.key, None)
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
        if "w" not in self.access:
            raise AttributeError(f"{self.key[1]} is read-only")
        obj.set_attr(*self.key, value)

