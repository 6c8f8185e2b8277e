"""ARM VGIC v5 (Documentation/virt/kvm/devices/arm-vgic-v5.rst): only PPIs, no
register groups; CTRL_INIT after every vCPU exists, and the mask of the PPIs
userspace may drive with KVM_IRQ_LINE.

    gic = vm.create_device("ARM_VGIC_V5")      # needs a GICv5 host (else ENODEV)
    gic.init()                                 # KVM_DEV_ARM_VGIC_CTRL_INIT
    gic.userspace_ppis                         # frozenset of PPI numbers (0..127)

The doc spells the attribute KVM_DEV_ARM_VGIC_USERPSPACE_PPIs; the kernel's
uapi name, used here, is KVM_DEV_ARM_VGIC_USERSPACE_PPIS.
"""
from __future__ import annotations

import struct

from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..device import DEVICE_CLASSES
from .vgic import Vgic

_CTRL = "KVM_DEV_ARM_VGIC_GRP_CTRL"
_attrs.register("ARM_VGIC_V5", [
    _attrs.Group(_CTRL, doc="the only group of a VGIC v5", attrs=(
        _attrs.Attr("KVM_DEV_ARM_VGIC_CTRL_INIT", None, _attrs.WO,
                    "initialize the VGIC; after all vCPUs have been created"),
        _attrs.Attr("KVM_DEV_ARM_VGIC_USERSPACE_PPIS", "__u64[2]", _attrs.RO,
                    "the PPIs userspace may drive (KVM_IRQ_LINE): PPIs 0-63 in the first __u64, "
                    "64-127 in the second; read-only"),
    )),
])
_register_errnos({
    (None, "ARM_VGIC_V5", _CTRL, "ENXIO"):
        "VGIC not properly configured as required prior to calling this attribute (a set of the "
        "read-only USERSPACE_PPIS, or an attribute the VGIC v5 does not have)",
    (None, "ARM_VGIC_V5", _CTRL, "ENODEV"): "no online VCPU",
    (None, "ARM_VGIC_V5", _CTRL, "EBUSY"): "one or more VCPUS are running",
    ("KVM_CREATE_DEVICE", "ARM_VGIC_V5", None, "ENODEV"):
        "this kernel has no VGIC v5 (it needs a GICv5 host and a kernel that knows the type)",
})


class VgicV5(Vgic):
    """KVM_DEV_TYPE_ARM_VGIC_V5."""

    @property
    def userspace_ppis(self) -> frozenset[int]:
        """KVM_DEV_ARM_VGIC_USERSPACE_PPIS as the set of PPI numbers."""
        raw = self.get_attr(_CTRL, "KVM_DEV_ARM_VGIC_USERSPACE_PPIS")
        return ppis_from_mask(raw)


def ppis_from_mask(raw: bytes) -> frozenset[int]:
    """The __u64[2] mask (native byte order) as PPI numbers."""
    lo, hi = struct.unpack("=QQ", raw)
    mask = lo | hi << 64
    return frozenset(i for i in range(128) if mask >> i & 1)


DEVICE_CLASSES["ARM_VGIC_V5"] = VgicV5
