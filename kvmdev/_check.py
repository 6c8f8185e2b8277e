"""Argument checks of the public boundary (the policy is in kvmdev.errors).

Each returns the checked value or raises, before any ioctl: TypeError for a
wrong type, ValueError for a wrong value, UnknownNameError for an unknown name.
``name`` is how the message names the argument (``"vcpu_id of KVM_CREATE_VCPU"``).
"""
from __future__ import annotations

import operator
from typing import Any, Iterable, Mapping, TypeVar

from .errors import UnknownNameError, bounded_repr

T = TypeVar("T")


def integer(name: str, value: Any) -> int:
    """An int (or an object with __index__, e.g. an IntEnum); bools, floats and
    strings are not ints here."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} takes an int, not {type(value).__name__} {show(value)}")
    try:
        return operator.index(value)
    except TypeError:
        hint = ""
        if isinstance(value, str):
            hint = f" (for a number written as text use int({show(value)}, 0))"
        raise TypeError(f"{name} takes an int, not {type(value).__name__} {show(value)}{hint}") from None


def uint(name: str, value: Any, bits: int) -> int:
    """An int in 0 .. 2**bits - 1."""
    v = integer(name, value)
    if not 0 <= v < 1 << bits:
        raise ValueError(f"{name}: {_show(v)} does not fit an unsigned {bits}-bit value (0..{(1 << bits) - 1:#x})")
    return v


def sint(name: str, value: Any, bits: int) -> int:
    """An int in -2**(bits-1) .. 2**(bits-1) - 1."""
    v = integer(name, value)
    if not -(1 << bits - 1) <= v < 1 << bits - 1:
        raise ValueError(f"{name}: {_show(v)} does not fit a signed {bits}-bit value")
    return v


def u64(name: str, value: Any) -> int:
    return uint(name, value, 64)


def u32(name: str, value: Any) -> int:
    return uint(name, value, 32)


def flag(name: str, value: Any) -> bool:
    """A bool (0 and 1 too, as the kernel's __u8/int flags are written)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} takes a bool, not {type(value).__name__} {show(value)}")


def int_list(name: str, values: Any) -> list[Any]:
    """A list of items (a str is one item's worth, not a list of characters)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} takes a list, not the {type(values).__name__} {show(values)}: "
                        f"write [{show(values)}]")
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{name} takes a list, not {type(values).__name__} {show(values)}") from None


def name_lookup(kind: str, name: Any, table: Mapping[str, T], where: str = "", hint: str = "",
                aliases: Mapping[str, str] | None = None) -> T:
    """``table[name]`` (also upper-cased, ``-`` as ``_``, or through ``aliases``),
    or UnknownNameError with the nearest names."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} takes a name (str), not {type(name).__name__} {show(name)}")
    for key in (name, name.upper(), name.upper().replace("-", "_")):
        if key in table:
            return table[key]
    for alias, target in (aliases or {}).items():
        if alias.upper().replace("-", "_") == name.upper().replace("-", "_") and target in table:
            return table[target]
    raise unknown(kind, name, table, where, hint, aliases)


def unknown(kind: str, name: Any, known: Iterable[str], where: str = "", hint: str = "",
            aliases: Mapping[str, str] | None = None) -> UnknownNameError:
    return UnknownNameError(kind, name, where, known, hint, aliases)


# an argument as an error message shows it, bounded (kvmdev.errors.bounded_repr)
show = bounded_repr


def _show(v: int) -> str:
    if v.bit_length() > 256:
        return f"an int of {v.bit_length()} bits"
    return f"{v} ({v:#x})" if v >= 0 else str(v)


def fileno(call: str, f: Any) -> int:
    """An fd: an int, or an object with fileno() (a file, a socket, an os.eventfd wrapper)."""
    fd = f if isinstance(f, int) and not isinstance(f, bool) else None
    if fd is None:
        get = getattr(f, "fileno", None)
        if not callable(get):
            raise TypeError(f"{call}: an fd is an int or has fileno(), not {type(f).__name__} {show(f)}")
        fd = get()
    if not isinstance(fd, int) or isinstance(fd, bool) or not 0 <= fd < 1 << 31:
        raise ValueError(f"{call}: {show(fd)} is not an fd number")
    return fd


def instance(call: str, name: str, value: Any, cls: type, what: str = "") -> Any:
    """``value`` if it is a ``cls`` (TypeError naming the call otherwise)."""
    if not isinstance(value, cls):
        raise TypeError(f"{call}: {name} takes {what or cls.__name__}, not {type(value).__name__} {show(value)}")
    return value
