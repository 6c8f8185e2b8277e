"""KVM-VFIO pseudo device (Documentation/virt/kvm/devices/vfio.rst)."""
from __future__ import annotations

from typing import IO, Union

from .. import _check
from ..attrs import WO, Attr, Group, register
from ..device import DEVICE_CLASSES, Device

_FD_DOC = "kvm_device_attr.addr points to an int32_t file descriptor for the VFIO file."

register("VFIO", [
    Group("KVM_DEV_VFIO_FILE", doc="VFIO files (groups or device cdevs) known to KVM", attrs=(
        Attr("KVM_DEV_VFIO_FILE_ADD", "__s32", WO,
             "Add a VFIO file (group/device) to VFIO-KVM device tracking. " + _FD_DOC),
        Attr("KVM_DEV_VFIO_FILE_DEL", "__s32", WO,
             "Remove a VFIO file (group/device) from VFIO-KVM device tracking. " + _FD_DOC),
        Attr("KVM_DEV_VFIO_GROUP_ADD", "__s32", WO, "Legacy name of KVM_DEV_VFIO_FILE_ADD (group fds only)."),
        Attr("KVM_DEV_VFIO_GROUP_DEL", "__s32", WO, "Legacy name of KVM_DEV_VFIO_FILE_DEL (group fds only)."),
        Attr("KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE", "struct kvm_vfio_spapr_tce", WO,
             "attaches a guest visible TCE table allocated by sPAPR KVM "
             "(addr points to struct kvm_vfio_spapr_tce {groupfd, tablefd})", arches=("powerpc",)),
    )),
])

FileLike = Union[int, IO[bytes], IO[str]]


def _fd(f: FileLike, call: str = "KVM_DEV_VFIO_FILE") -> int:
    return _check.fileno(call, f)


class Vfio(Device):
    """KVM_DEV_TYPE_VFIO: one per VM; tracks the VFIO files the VM uses.
    There is nothing to read: the kernel answers EPERM to any get."""

    def add_file(self, f: FileLike) -> None:
        """KVM_SET_DEVICE_ATTR KVM_DEV_VFIO_FILE / KVM_DEV_VFIO_FILE_ADD."""
        self.set_attr("KVM_DEV_VFIO_FILE", "KVM_DEV_VFIO_FILE_ADD", _fd(f))

    def del_file(self, f: FileLike) -> None:
        """KVM_SET_DEVICE_ATTR KVM_DEV_VFIO_FILE / KVM_DEV_VFIO_FILE_DEL."""
        self.set_attr("KVM_DEV_VFIO_FILE", "KVM_DEV_VFIO_FILE_DEL", _fd(f))

    def set_spapr_tce(self, group: FileLike, table: FileLike) -> None:
        """KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE (powerpc)."""
        self.set_attr("KVM_DEV_VFIO_FILE", "KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE",
                      {"groupfd": _fd(group), "tablefd": _fd(table)})


DEVICE_CLASSES["VFIO"] = Vfio

__all__ = ["Vfio"]
