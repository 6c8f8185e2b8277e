"""KvmError: an OSError naming the ioctl, the target, the group and attribute."""
from __future__ import annotations

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


class SequenceError(RuntimeError):
    """A step of a documented save/restore sequence taken out of order; the
    message quotes the rule."""


def add_note(e: BaseException, text: str) -> None:
    """BaseException.add_note (3.11+), or its __notes__ list on 3.10."""
    if hasattr(e, "add_note"):
        e.add_note(text)
    else:
        e.__notes__ = [*getattr(e, "__notes__", []), text]   # type: ignore[attr-defined]
