"""kvmdev's exceptions, and its one exception policy.

What a public kvmdev call raises, by cause (kvmdev._check holds the argument
checks that enforce the first three, at the public boundary, before any ioctl):

- a wrong *type* of argument: ``TypeError``.  An int parameter takes an int
  (an IntEnum or anything with ``__index__``); a bool, a float or a str is not
  one (``vcpu_init([1.5])``, ``create_device(4.0)``, ``regs["X"] = "1"``).
- a wrong *value*: ``ValueError`` naming the parameter, the allowed range and
  the call (a negative or over-wide int is refused here, never reaching cffi's
  OverflowError; a misaligned address, a string where a list was meant).
- an unknown *name* (device type, capability, register, attribute, feature):
  ``UnknownNameError``, both a ``KeyError`` and a ``ValueError``, naming what
  was looked up, where, and the nearest known names.
- the kernel refusing the ioctl: ``KvmError`` (an ``OSError``) naming the
  ioctl, the target, the group/attribute or register by kernel name, the
  errno and its documented meaning.  ``KvmUnavailable`` for /dev/kvm itself.
- use of a closed object: ``ClosedError`` (a ``ValueError``, as for a closed
  Python file).
- a save/restore step out of order: ``SequenceError`` (a ``RuntimeError``).
- a name that exists on another architecture only (``vcpu.tsc_offset`` on
  arm64): ``ArchError``, an ``AttributeError`` naming both architectures.

Anything else escaping a public call is a bug.
"""
from __future__ import annotations

import difflib
import reprlib
from typing import Iterable, Mapping

from .errnos import errno_name, meaning


class KvmError(OSError):
    """A failed KVM ioctl.

    ``str()`` reads like ``KVM_SET_DEVICE_ATTR on ARM_VGIC_V3 (group
    KVM_DEV_ARM_VGIC_GRP_ADDR, attr KVM_VGIC_V3_ADDR_TYPE_DIST): [Errno 17]
    EEXIST: address already configured``.
    """

    def __init__(self, errno: int, ioctl: str, target: str, *, group: str | None = None,
                 attr: str | None = None, target_key: str | None = None, detail: str | None = None,
                 register: str | None = None) -> None:
        self.ioctl = ioctl
        self.register = register
        self.target = target
        self.group = group
        self.attr = attr
        self.meaning = detail or meaning(errno, ioctl, target_key, group)
        super().__init__(errno, self.meaning)

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno or 0)

    def __str__(self) -> str:
        where = f"{self.ioctl} on {self.target}"
        parts = [f"register {self.register}"] if self.register is not None else []
        if self.group is not None:
            parts.append(f"group {self.group}")
        if self.attr is not None:
            parts.append(f"attr {self.attr}")
        if parts:
            where += f" ({', '.join(parts)})"
        return f"{where}: [Errno {self.errno}] {self.errno_name}: {self.meaning}"

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (_rebuild, (self.errno, self.ioctl, self.target, self.group, self.attr, self.meaning))


def _rebuild(errno: int, ioctl: str, target: str, group: str | None, attr: str | None, text: str) -> KvmError:
    return KvmError(errno, ioctl, target, group=group, attr=attr, detail=text)


class KvmUnavailable(KvmError):
    """/dev/kvm cannot be opened (missing, no permission, KVM disabled)."""


class ClosedError(ValueError):
    """An operation on a kvmdev object whose fd was already closed."""


class UnknownNameError(KeyError, ValueError):
    """A name kvmdev does not know (a device type, capability, register,
    attribute, feature): a KeyError for mapping-style callers, a ValueError for
    the rest.  ``name``, ``kind``, ``where`` and ``suggestions`` are kept."""

    def __init__(self, kind: str, name: object, where: str = "", known: Iterable[str] = (),
                 hint: str = "", aliases: Mapping[str, str] | None = None) -> None:
        self.kind, self.name, self.where = kind, name, where
        known = list(known)
        # candidates compared upper-case with "-" as "_"; an alias suggests the name it stands for
        canon = {_norm(k): k for k in known}
        canon.update({_norm(a): k for a, k in (aliases or {}).items()})
        self.suggestions: list[str] = []
        if isinstance(name, str):
            for m in difflib.get_close_matches(_norm(name), list(canon), n=6, cutoff=0.5):
                if canon[m] not in self.suggestions and len(self.suggestions) < 3:
                    self.suggestions.append(canon[m])
        msg = f"unknown {kind} {bounded_repr(name)}" + (f" {where}" if where else "")
        if self.suggestions:
            msg += f"; did you mean {' or '.join(self.suggestions)}?"
        elif known and len(known) <= 12:
            msg += f"; known: {', '.join(known)}"
        if hint:
            msg += f" ({hint})"
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:   # KeyError would repr() the message
        return self.message

    def __reduce__(self):
        return (_rebuild_unknown, (self.kind, self.name, self.where, self.message))


def _rebuild_unknown(kind: str, name: object, where: str, message: str) -> "UnknownNameError":
    e = UnknownNameError(kind, name, where)
    e.message = message
    return e


def _norm(name: str) -> str:
    return name.upper().replace("-", "_")


class ArchError(AttributeError):
    """An attribute or call of another architecture (``vcpu.tsc_offset`` on an
    arm64 vCPU): names both architectures."""


class SequenceError(RuntimeError):
    """A step of a documented save/restore sequence taken out of order; the
    message quotes the rule."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 60


def bounded_repr(v: object) -> str:
    """An argument as an error message shows it: bounded (a 2,000-deep list or a
    million-digit int must not make the message itself fail)."""
    try:
        return _REPR.repr(v)
    except Exception:   # noqa: BLE001 - a failing __repr__ is the caller's object's problem
        return f"<{type(v).__name__} object>"


def add_note(e: BaseException, text: str) -> None:
    """BaseException.add_note (3.11+), or its __notes__ list on 3.10."""
    if hasattr(e, "add_note"):
        e.add_note(text)
    else:
        e.__notes__ = [*getattr(e, "__notes__", []), text]   # type: ignore[attr-defined]
