"""Device: a device fd from KVM_CREATE_DEVICE, and DEVICE_CLASSES, the typed
class of each device type (filled by the kvmdev.devices modules)."""
from __future__ import annotations

from typing import TYPE_CHECKING, cast

from .arch import device_type_name
from .attr_target import _AttrTarget

if TYPE_CHECKING:
    from .backends import Backend
    from .vm import Vm


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
        return f"<{class_path(type(self))} {self.type_name} {self.backend} {self.arch} {state}>"

    @property
    def vm(self) -> Vm:
        return cast("Vm", self._parent)   # created by a Vm (not imported: it imports this module)


def class_path(cls: type) -> str:
    """The name a class is imported by: kvmdev.Device, kvmdev.devices.vgic.VgicV3."""
    import kvmdev
    if getattr(kvmdev, cls.__name__, None) is cls:
        return f"kvmdev.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# device type name -> typed class; kvmdev.devices modules register theirs
DEVICE_CLASSES: dict[str, type[Device]] = {}
