"""Freescale MPIC (Documentation/virt/kvm/devices/mpic.rst; arch/powerpc/kvm/mpic.c):
KVM_DEV_TYPE_FSL_MPIC_20 and _42, one per VM.

    mpic = vm.create_device("FSL_MPIC_42")
    mpic.base = 0xE0040000                     # 256 KiB aligned; 0 unmaps the registers
    mpic.reg("IVPR", irq=3)                    # KVM_DEV_MPIC_GRP_REGISTER by name
    mpic.set_irq_active(3, 1)                  # KVM_DEV_MPIC_GRP_IRQ_ACTIVE: the input line

IRQ routing (mpic.rst): with an in-kernel MPIC, KVM_IRQ_LINE and irqfds take the
MPIC's IRQ numbers through the routing table (KVM_SET_GSI_ROUTING), which the
VM sets up; the default routes GSI n to MPIC input n.
"""
from __future__ import annotations

from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..device import DEVICE_CLASSES, Device

MPIC_SIZE = 0x40000                    # the register space; the base's alignment
MAX_SRC = 256                          # IRQ_ACTIVE's attr: 0..256 (256 is IPI0)
# Registers by name: (offset, stride per index) in the MPIC's register space
REGISTERS = {
    "FRR": (0x1000, 0), "GCR": (0x1020, 0), "VIR": (0x1080, 0), "PIR": (0x1090, 0), "SPVR": (0x10E0, 0),
    "TFRR": (0x10F0, 0),
    "IVPR": (0x10000, 0x20), "IDR": (0x10010, 0x20), "ILR": (0x10018, 0x20),      # per source
    "CTPR": (0x20080, 0x1000), "WHOAMI": (0x20090, 0x1000), "IACK": (0x200A0, 0x1000),  # per CPU
    "EOI": (0x200B0, 0x1000),
}
# the regions access_reg decodes (anything else is ENXIO)
REGIONS = {"global": (0x0, 0x10F0), "timer": (0x10F0, 0x1310), "msi": (0x1600, 0x1800),
           "summary": (0x3800, 0x4000), "source": (0x10000, 0x12000), "cpu": (0x20000, 0x3F100)}
IVPR_MASK, IVPR_ACTIVITY, IVPR_SENSE = 1 << 31, 1 << 30, 1 << 22

_MISC, _REG, _ACTIVE = "KVM_DEV_MPIC_GRP_MISC", "KVM_DEV_MPIC_GRP_REGISTER", "KVM_DEV_MPIC_GRP_IRQ_ACTIVE"
_GROUPS = [
    _attrs.Group(_MISC, attrs=(_attrs.Attr("KVM_DEV_MPIC_BASE_ADDR", "__u64", _attrs.RW,
                                           "base of the 256 KiB register space, naturally aligned; 0 disables"),)),
    _attrs.Group(_REG, (), any_attr=_attrs.Attr("offset", "__u32", _attrs.RW),
                 doc="a 32-bit MPIC register; attr: its offset (4-byte aligned)"),
    _attrs.Group(_ACTIVE, (), any_attr=_attrs.Attr("irq", "__u32", _attrs.RW),
                 doc="an IRQ input's activity (0/1); attr: the IRQ number"),
]
for _t in ("FSL_MPIC_20", "FSL_MPIC_42"):
    _attrs.register(_t, _GROUPS)
    _register_errnos({
        ("KVM_CREATE_DEVICE", _t, None, "EINVAL"): "an MPIC already exists in this VM (one per VM)",
        (None, _t, _MISC, "EINVAL"): "the base address is not aligned to the 256 KiB register space",
        (None, _t, _REG, "ENXIO"): "not a 4-byte aligned offset of an MPIC register region (or a write to PIR)",
        (None, _t, _ACTIVE, "EINVAL"): "IRQ number above 256, or a value other than 0 and 1",
    })


def offset(name: str, index: int = 0) -> int:
    """A register's offset: ``offset("IVPR", 3)`` is source 3's vector/priority."""
    base, stride = REGISTERS[name]
    if index and not stride:
        raise ValueError(f"{name} is a single register")
    return base + index * stride


class Mpic(Device):
    """KVM_DEV_TYPE_FSL_MPIC_20 / _42."""

    @property
    def base(self) -> int:
        """KVM_DEV_MPIC_BASE_ADDR (0: unmapped)."""
        return int(self.get_attr(_MISC, "KVM_DEV_MPIC_BASE_ADDR"))

    @base.setter
    def base(self, base: int) -> None:
        if base % MPIC_SIZE:
            raise ValueError(f"MPIC base {base:#x} must be aligned to its 256 KiB register space (mpic.rst)")
        self.set_attr(_MISC, "KVM_DEV_MPIC_BASE_ADDR", base)

    def reg(self, name: str | int, irq: int = 0) -> int:
        """A register by name (and source or CPU index) or by offset."""
        return int(self.get_attr(_REG, name if isinstance(name, int) else offset(name, irq)))

    def set_reg(self, name: str | int, value: int, irq: int = 0) -> None:
        self.set_attr(_REG, name if isinstance(name, int) else offset(name, irq), value)

    def irq_active(self, irq: int) -> int:
        """KVM_DEV_MPIC_GRP_IRQ_ACTIVE: the source's pending state."""
        return int(self.get_attr(_ACTIVE, irq))

    def set_irq_active(self, irq: int, active: int) -> None:
        """Drive IRQ ``irq``'s input: a level source follows it; an edge source
        is made pending by 1 and left alone by 0."""
        self.set_attr(_ACTIVE, irq, active)


DEVICE_CLASSES["FSL_MPIC_20"] = Mpic
DEVICE_CLASSES["FSL_MPIC_42"] = Mpic
