"""Mock of the KVM-VFIO pseudo device (virt/kvm/vfio.c)."""
from __future__ import annotations

import errno as E
import os
from typing import ClassVar

from .kernel import DeviceModel, Errno, device_model, fd_is_open


def _is_vfio_file(fd: int) -> bool:
    # vfio_file_is_valid(): a VFIO group or device cdev file
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return path.startswith("/dev/vfio/") and path != "/dev/vfio/vfio"


@device_model
class VfioModel(DeviceModel):
    type_name = "VFIO"
    one_per_vm: ClassVar[int | None] = E.EBUSY  # kvm_vfio_create
    released_on_close = True  # kvm_vfio_release

    def __init__(self, vm) -> None:  # type: ignore[no-untyped-def]
        super().__init__(vm)
        self.files: set[tuple[int, int]] = set()  # (st_dev, st_ino) of added files
        a = self.arch
        self.G = a.const("KVM_DEV_VFIO_FILE")
        self.ADD = a.const("KVM_DEV_VFIO_FILE_ADD")
        self.DEL = a.const("KVM_DEV_VFIO_FILE_DEL")
        self.TCE = a.const("KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE")
        self.spapr = a.name == "powerpc"  # CONFIG_SPAPR_TCE_IOMMU

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == self.G and (attr in (self.ADD, self.DEL) or (self.spapr and attr == self.TCE)):
            return
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group != self.G:
            raise Errno(E.ENXIO)
        if attr == self.ADD or attr == self.DEL:
            fd = self.user.get("__s32", addr)
            if not fd_is_open(fd):
                raise Errno(E.EBADF)
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if attr == self.ADD:
                if not _is_vfio_file(fd):
                    raise Errno(E.EINVAL)
                if key in self.files:
                    raise Errno(E.EEXIST)
                self.files.add(key)
            else:
                if key not in self.files:
                    raise Errno(E.ENOENT)
                self.files.discard(key)
            return
        if self.spapr and attr == self.TCE:
            p = self.user.read_struct("struct kvm_vfio_spapr_tce", addr)
            if not fd_is_open(p.groupfd):
                raise Errno(E.EBADF)
            # any other fd is looked up among the added files: ENOENT (seen on the
            # real ppc64el 6.1 kernel, for /dev/null as much as for a VFIO group)
            raise Errno(E.ENOENT)
        raise Errno(E.ENXIO)

    def release(self) -> None:
        self.files.clear()
