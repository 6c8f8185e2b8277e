"""ARM VGIC v2 and v3 (Documentation/virt/kvm/devices/arm-vgic.rst, arm-vgic-v3.rst).

Registers are data: one table per frame (GICD, GICR RD and SGI frames, GICC,
ICC system registers) with offset, width, array size, access and named bit
fields.  ``VgicV2``/``VgicV3`` reach every group through those tables:

    gic = vm.create_device("ARM_VGIC_V3")
    gic.dist_base = 0x08000000; gic.redist_base = 0x080A0000; gic.init()
    gic.dist["GICD_CTLR"]                   # KVM_DEV_ARM_VGIC_GRP_DIST_REGS
    gic.redist(vcpu)["GICR_TYPER"]          # REDIST_REGS, by the vCPU's MPIDR, 64 bits from two halves
    gic.cpu_sysreg(vcpu)["ICC_PMR_EL1"]     # CPU_SYSREGS
    gic.dist.fields("GICD_TYPER")           # {'ITLinesNumber': 7, ...}
"""
from __future__ import annotations

import errno as _E
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .. import attrs as _attrs
from ..arm64 import Affinity
from ..errnos import register as _register_errnos
from .. import _check
from ..errors import ClosedError, KvmError, UnknownNameError
from ..device import DEVICE_CLASSES, Device

if TYPE_CHECKING:
    from ..vcpu import Vcpu


@dataclass(frozen=True)
class Reg:
    """One register (or array of registers ``name<n>``) of a frame."""

    name: str
    offset: int
    width: int = 32
    count: int = 1            # array length: GICD_ISENABLER<n>, n in first..first+count-1
    first: int = 0            # index of the first element (GICD_IROUTER starts at 32)
    access: str = "rw"
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (lsb, bits)

    @property
    def stride(self) -> int:
        return self.width // 8

    def element(self, index: int | None) -> int:
        """The byte offset of element ``index``."""
        if self.count == 1:
            if index is not None:
                raise UnknownNameError("register", f"{self.name}{index}", f"({self.name} is not an array)")
            return self.offset
        if index is None or not self.first <= index < self.first + self.count:
            raise UnknownNameError("register", f"{self.name}{'' if index is None else index}",
                                   hint=f"{self.name}<n>: n is {self.first}..{self.first + self.count - 1}")
        return self.offset + (index - self.first) * self.stride


class Frame:
    """A register frame's table, looked up by name ("GICD_ISENABLER1")."""

    def __init__(self, name: str, regs: list[Reg]) -> None:
        self.name = name
        self.regs = {r.name: r for r in regs}

    def lookup(self, name: str) -> tuple[Reg, int]:
        if not isinstance(name, str):
            raise TypeError(f"a {self.name} register is named by a str, not {type(name).__name__} {_check.show(name)}")
        r = self.regs.get(name)
        if r is not None and r.count == 1:
            return r, r.offset
        m = re.fullmatch(r"(.*?)(\d+)", name)
        if m and m.group(1) in self.regs:
            r = self.regs[m.group(1)]
            return r, r.element(int(m.group(2)))
        raise UnknownNameError("register", name, f"of the {self.name} frame", self.names())

    def name_at(self, offset: int) -> tuple[str, int] | None:
        """The register at a byte offset and the offset into it (``("GICD_IROUTER40",
        4)`` for the high half), or None."""
        for r in self.regs.values():
            span = r.count * r.stride
            if r.offset <= offset < r.offset + span:
                i, within = divmod(offset - r.offset, r.stride)
                return (r.name if r.count == 1 else f"{r.name}{r.first + i}"), within
        return None

    def names(self) -> Iterator[str]:
        """Every register name, array elements spelt out."""
        for r in self.regs.values():
            if r.count == 1:
                yield r.name
            else:
                yield from (f"{r.name}{r.first + i}" for i in range(r.count))


def _bits(**f: tuple[int, int]) -> dict[str, tuple[int, int]]:
    return f


# -- GICv2 / GICv3 distributor (GICD_*) --------------------------------------------------
_GICD_COMMON = [
    Reg("GICD_IGROUPR", 0x080, count=32),
    Reg("GICD_ISENABLER", 0x100, count=32), Reg("GICD_ICENABLER", 0x180, count=32),
    Reg("GICD_ISPENDR", 0x200, count=32), Reg("GICD_ICPENDR", 0x280, count=32),
    Reg("GICD_ISACTIVER", 0x300, count=32), Reg("GICD_ICACTIVER", 0x380, count=32),
    Reg("GICD_IPRIORITYR", 0x400, count=255),
    Reg("GICD_ICFGR", 0xC00, count=64),
]
_TYPER_FIELDS = _bits(ITLinesNumber=(0, 5), CPUNumber=(5, 3), SecurityExtn=(10, 1), MBIS=(16, 1), LPIS=(17, 1),
                      DVIS=(18, 1), IDbits=(19, 5), A3V=(24, 1), No1N=(25, 1), RSS=(26, 1))
_IIDR_FIELDS = _bits(Implementer=(0, 12), Revision=(12, 4), Variant=(16, 4), ProductID=(24, 8))
GICD_V2 = Frame("GICD (GICv2)", [
    Reg("GICD_CTLR", 0x000, fields=_bits(EnableGrp0=(0, 1), EnableGrp1=(1, 1))),
    Reg("GICD_TYPER", 0x004, access="r", fields=_TYPER_FIELDS),
    Reg("GICD_IIDR", 0x008, fields=_IIDR_FIELDS),
    *_GICD_COMMON,
    Reg("GICD_ITARGETSR", 0x800, count=255),
    Reg("GICD_SGIR", 0xF00, access="w"),
    Reg("GICD_CPENDSGIR", 0xF10, count=4), Reg("GICD_SPENDSGIR", 0xF20, count=4),
])
GICD_V3 = Frame("GICD (GICv3)", [
    Reg("GICD_CTLR", 0x000, fields=_bits(EnableGrp0=(0, 1), EnableGrp1NS=(1, 1), ARE=(4, 1), DS=(6, 1),
                                         E1NWF=(7, 1), nASSGIreq=(8, 1), RWP=(31, 1))),
    Reg("GICD_TYPER", 0x004, access="r", fields=_TYPER_FIELDS),
    Reg("GICD_IIDR", 0x008, fields=_IIDR_FIELDS),
    Reg("GICD_TYPER2", 0x00C, fields=_bits(VID=(0, 5), VIL=(7, 1), nASSGIcap=(8, 1))),
    Reg("GICD_STATUSR", 0x010),
    *_GICD_COMMON,
    Reg("GICD_IGRPMODR", 0xD00, count=32),
    Reg("GICD_IROUTER", 0x6000 + 8 * 32, width=64, count=988, first=32,
        fields=_bits(Aff0=(0, 8), Aff1=(8, 8), Aff2=(16, 8), IRM=(31, 1), Aff3=(32, 8))),
    Reg("GICD_PIDR2", 0xFFE8, access="r", fields=_bits(ArchRev=(4, 4))),
])

# -- GICv3 redistributor: RD frame and SGI frame (at +64K) ------------------------------
SGI_BASE = 0x10000
GICR = Frame("GICR", [
    Reg("GICR_CTLR", 0x0000, fields=_bits(EnableLPIs=(0, 1), CES=(1, 1), IR=(2, 1), RWP=(3, 1))),
    Reg("GICR_IIDR", 0x0004, access="r", fields=_IIDR_FIELDS),
    Reg("GICR_TYPER", 0x0008, width=64, access="r",
        fields=_bits(PLPIS=(0, 1), VLPIS=(1, 1), Dirty=(2, 1), DirectLPI=(3, 1), Last=(4, 1), DPGS=(5, 1),
                     ProcessorNumber=(8, 16), CommonLPIAff=(24, 2), Affinity=(32, 32))),
    Reg("GICR_STATUSR", 0x0010),
    Reg("GICR_WAKER", 0x0014, fields=_bits(ProcessorSleep=(1, 1), ChildrenAsleep=(2, 1))),
    Reg("GICR_PROPBASER", 0x0070, width=64, fields=_bits(IDbits=(0, 5), PhysicalAddress=(12, 40))),
    Reg("GICR_PENDBASER", 0x0078, width=64, fields=_bits(PhysicalAddress=(16, 36), PTZ=(62, 1))),
    Reg("GICR_INVLPIR", 0x00A0, width=64, fields=_bits(INTID=(0, 32))),
    Reg("GICR_INVALLR", 0x00B0, width=64),
    Reg("GICR_SYNCR", 0x00C0, access="r", fields=_bits(Busy=(0, 1))),
    Reg("GICR_PIDR2", 0xFFE8, access="r", fields=_bits(ArchRev=(4, 4))),
    Reg("GICR_IGROUPR0", SGI_BASE + 0x080),
    Reg("GICR_ISENABLER0", SGI_BASE + 0x100), Reg("GICR_ICENABLER0", SGI_BASE + 0x180),
    Reg("GICR_ISPENDR0", SGI_BASE + 0x200), Reg("GICR_ICPENDR0", SGI_BASE + 0x280),
    Reg("GICR_ISACTIVER0", SGI_BASE + 0x300), Reg("GICR_ICACTIVER0", SGI_BASE + 0x380),
    Reg("GICR_IPRIORITYR", SGI_BASE + 0x400, count=8),
    Reg("GICR_ICFGR0", SGI_BASE + 0xC00), Reg("GICR_ICFGR1", SGI_BASE + 0xC04),
    Reg("GICR_IGRPMODR0", SGI_BASE + 0xD00),
])

# -- GICv2 CPU interface (GICC_*) --------------------------------------------------------
GICC = Frame("GICC", [
    Reg("GICC_CTLR", 0x00, fields=_bits(EnableGrp0=(0, 1), EnableGrp1=(1, 1), AckCtl=(2, 1), FIQEn=(3, 1),
                                        CBPR=(4, 1), EOImodeNS=(9, 1))),
    # KVM's format: GICH_VMCR.VMPriMask, 5 bits in [4:0]; the priority mask is value << 3
    Reg("GICC_PMR", 0x04, fields=_bits(VMPriMask=(0, 5))),
    Reg("GICC_BPR", 0x08, fields=_bits(BinaryPoint=(0, 3))),
    Reg("GICC_ABPR", 0x1C, fields=_bits(BinaryPoint=(0, 3))),
    # KVM's fixed layout: 4 x 32 bits, bit X of the 128 set if preemption level X is active
    Reg("GICC_APR", 0xD0, count=4),
    Reg("GICC_IIDR", 0xFC, access="r", fields=_IIDR_FIELDS),
    # write-only (the INTID to deactivate); from userspace it reads 0 and a write is
    # ignored on every kernel, but HAS knows it only where KVM emulates it (6.19+)
    Reg("GICC_DIR", 0x1000, access="w", fields=_bits(InterruptID=(0, 10), CPUID=(10, 3))),
])


# -- GICv3 CPU interface system registers (ICC_*): Op0, Op1, CRn, CRm, Op2 ---------------
@dataclass(frozen=True)
class SysReg:
    name: str
    encoding: tuple[int, int, int, int, int]
    access: str = "rw"
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def instr(self) -> int:
        """The attr's low 16 bits (KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK)."""
        op0, op1, crn, crm, op2 = self.encoding
        return op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


ICC = {r.name: r for r in [
    SysReg("ICC_PMR_EL1", (3, 0, 4, 6, 0), fields=_bits(Priority=(0, 8))),
    SysReg("ICC_BPR0_EL1", (3, 0, 12, 8, 3), fields=_bits(BinaryPoint=(0, 3))),
    *(SysReg(f"ICC_AP0R{n}_EL1", (3, 0, 12, 8, 4 + n)) for n in range(4)),
    *(SysReg(f"ICC_AP1R{n}_EL1", (3, 0, 12, 9, n)) for n in range(4)),
    SysReg("ICC_BPR1_EL1", (3, 0, 12, 12, 3), fields=_bits(BinaryPoint=(0, 3))),
    SysReg("ICC_CTLR_EL1", (3, 0, 12, 12, 4),
           fields=_bits(CBPR=(0, 1), EOImode=(1, 1), PMHE=(6, 1), PRIbits=(8, 3), IDbits=(11, 3), SEIS=(14, 1),
                        A3V=(15, 1), RSS=(18, 1), ExtRange=(19, 1))),
    SysReg("ICC_SRE_EL1", (3, 0, 12, 12, 5), fields=_bits(SRE=(0, 1), DFB=(1, 1), DIB=(2, 1))),
    SysReg("ICC_IGRPEN0_EL1", (3, 0, 12, 12, 6), fields=_bits(Enable=(0, 1))),
    SysReg("ICC_IGRPEN1_EL1", (3, 0, 12, 12, 7), fields=_bits(Enable=(0, 1))),
]}


def decode(fields: dict[str, tuple[int, int]], value: int) -> dict[str, int]:
    return {n: value >> lsb & ((1 << bits) - 1) for n, (lsb, bits) in fields.items()}


class RegValue(int):
    """A register's value: an int that shows its name and decoded fields."""

    name: str
    fields: dict[str, int]

    def __new__(cls, value: int, name: str, fields: dict[str, tuple[int, int]]) -> "RegValue":
        v = super().__new__(cls, value)
        v.name, v.fields = name, decode(fields, value)
        return v

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:#x}" for k, v in self.fields.items() if v)
        return f"{self.name}={int(self):#x}" + (f" ({shown})" if shown else "")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(f"{self.name} = {int(self):#x}")
        for k, v in self.fields.items():
            p.break_()
            p.text(f"  {k:16s} {v:#x}")


# -- KVM_DEV_ARM_VGIC_GRP_ADDR REDIST_REGION --------------------------------------------
@dataclass(frozen=True)
class RedistRegion:
    """A KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION value: ``count`` redistributors
    (128K each) from ``base``; region ``index`` (regions are added 0, 1, ...)."""

    index: int
    base: int
    count: int
    flags: int = 0

    def encode(self) -> int:
        if self.base & 0xFFFF or not 0 <= self.base < 1 << 52:
            raise ValueError(f"redistributor region base {self.base:#x} must be 64K aligned, below 2**52")
        if not 0 <= self.index < 1 << 12 or not 0 <= self.count < 1 << 12 or not 0 <= self.flags < 1 << 4:
            raise ValueError("index and count take 12 bits, flags 4")
        return self.count << 52 | self.base | self.flags << 12 | self.index

    @classmethod
    def decode(cls, value: int) -> "RedistRegion":
        return cls(value & 0xFFF, value & 0x000FFFFFFFFF0000, value >> 52, value >> 12 & 0xF)

    def placement(self, n: int) -> int:
        """The base of the n-th redistributor of this region."""
        if not 0 <= n < self.count:
            raise IndexError(f"region {self.index} holds {self.count} redistributors")
        return self.base + n * 0x20000


# -- attribute tables --------------------------------------------------------------------
_A = _attrs.Attr
_G = _attrs.Group


def _groups(v3: bool) -> list[_attrs.Group]:
    addr = ([_A("KVM_VGIC_V3_ADDR_TYPE_DIST", "__u64", "rw", "distributor base, 64K aligned, 64K"),
             _A("KVM_VGIC_V3_ADDR_TYPE_REDIST", "__u64", "rw", "single redistributor region (legacy)"),
             _A("KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION", "__u64", "rw", "count/base/flags/index encoded")]
            if v3 else
            [_A("KVM_VGIC_V2_ADDR_TYPE_DIST", "__u64", "rw", "distributor base, 4K aligned, 4K"),
             _A("KVM_VGIC_V2_ADDR_TYPE_CPU", "__u64", "rw", "CPU interface base, 4K aligned, 8K")])
    groups = [
        _G("KVM_DEV_ARM_VGIC_GRP_ADDR", tuple(addr), doc="base addresses"),
        _G("KVM_DEV_ARM_VGIC_GRP_DIST_REGS", (), any_attr=_A("offset", "__u32", "rw"),
           doc="distributor registers; attr: vcpu_index (v2) << 32 | offset"),
        _G("KVM_DEV_ARM_VGIC_GRP_NR_IRQS", (), any_attr=_A("nr_irqs", "__u32", "rw"), doc="number of IRQs"),
        _G("KVM_DEV_ARM_VGIC_GRP_CTRL",
           (_A("KVM_DEV_ARM_VGIC_CTRL_INIT", None, "w", "initialize the VGIC"),)
           + ((_A("KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES", None, "w", "flush LPI pending bits to guest RAM"),)
              if v3 else ())),
    ]
    if v3:
        groups += [
            _G("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", (), any_attr=_A("mpidr_offset", "__u32", "rw"),
               doc="redistributor registers; attr: affinity << 32 | offset"),
            _G("KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", (), any_attr=_A("mpidr_sysreg", "__u64", "rw"),
               doc="ICC_* registers; attr: affinity << 32 | Op0:Op1:CRn:CRm:Op2"),
            _G("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", (), any_attr=_A("mpidr_info_intid", "__u32", "rw"),
               doc="line levels, 32 IRQs per access"),
            _G("KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", (), any_attr=_A("intid", "__u32", "rw"),
               doc="the maintenance interrupt (a PPI) of nested virtualisation; set before init "
                   "(6.18 and later; the attribute number is not looked at)"),
        ]
    else:
        groups.append(_G("KVM_DEV_ARM_VGIC_GRP_CPU_REGS", (), any_attr=_A("vcpu_offset", "__u32", "rw"),
                         doc="GICC registers; attr: vcpu_index << 32 | offset"))
    return groups


_attrs.register("ARM_VGIC_V2", _groups(False))
_attrs.register("ARM_VGIC_V3", _groups(True))

_register_errnos({
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_ADDR", "E2BIG"): "address outside of the addressable IPA range",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_ADDR", "E2BIG"): "address outside of the addressable IPA range",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EINVAL"): "incorrectly aligned address",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EINVAL"):
        "incorrectly aligned address, or a redistributor region that overlaps another or breaks the region rules",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EEXIST"): "address already configured",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EEXIST"): "address already configured",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_ADDR", "ENOENT"): "no redistributor region with that index",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_ADDR", "ENOENT"): "no redistributor region with that index",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "EINVAL"):
        "the value must be 64..1023 and a multiple of 32",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "EINVAL"):
        "the value must be 64..1023 and a multiple of 32",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "EBUSY"): "already set, or the VGIC is initialized",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", "EBUSY"): "already set, or the VGIC is initialized",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS", "EBUSY"):
        "the VGIC is not initialized (KVM_DEV_ARM_VGIC_CTRL_INIT; 6.18+: except for the IIDR and "
        "TYPER2 registers), a vCPU is running, or (6.18+) a TYPER2 change after init",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", "EBUSY"): "the VGIC is already initialized",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", "EINVAL"): "not a PPI (16..31)",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", "EBUSY"):
        "the VGIC is not initialized (KVM_DEV_ARM_VGIC_CTRL_INIT), or a vCPU is running",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", "EBUSY"):
        "the VGIC is not initialized (KVM_DEV_ARM_VGIC_CTRL_INIT), or a vCPU is running",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS", "EBUSY"): "one or more vCPUs are running",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_CPU_REGS", "EBUSY"): "one or more vCPUs are running",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS", "EINVAL"): "invalid vcpu_index supplied",
    (None, "ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_CPU_REGS", "EINVAL"): "invalid vcpu_index supplied",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", "EINVAL"): "no vCPU has that MPIDR",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", "EINVAL"):
        "no vCPU has that MPIDR, or the register is not implemented at this priority-bit count",
    (None, "ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS", "ENOENT"): "no such ICC_* register",
})


# -- the typed devices --------------------------------------------------------------------
class Registers:
    """One frame of registers as seen through one group and address prefix.
    ``halves``: 64-bit registers go as two 32-bit accesses (the VGIC groups);
    otherwise every access is one u64 (the ITS group)."""

    def __init__(self, dev: Device, frame: Frame, group: str, prefix: int, halves: bool = True,
                 weak: bool = False) -> None:
        self.frame, self.group, self.prefix, self.halves = frame, group, prefix, halves
        # weak: the device's own attribute (gic.dist), which must not keep it alive in a cycle
        self._dev: Device | None = None if weak else dev
        self._ref = weakref.ref(dev) if weak else None

    @property
    def dev(self) -> Device:
        d = self._dev if self._ref is None else self._ref()
        if d is None:
            raise ClosedError(f"the device of these {self.frame.name} registers is gone (closed and collected)")
        return d

    def _word(self, offset: int) -> int:
        return int(self.dev.get_attr(self.group, self.prefix | offset))

    def __getitem__(self, name: str) -> int:
        r, off = self.frame.lookup(name)
        if r.width == 64 and self.halves:  # the docs demand 32-bit accesses: low half, then high half
            return RegValue(self._word(off) | self._word(off + 4) << 32, name, r.fields)
        return RegValue(self._word(off), name, r.fields)

    def __repr__(self) -> str:
        return (f"<kvmdev.devices.vgic.Registers {self.frame.name} of {_check.show(self.dev)} via {self.group}"
                f"{f' (prefix {self.prefix:#x})' if self.prefix else ''}: {len(self.frame.regs)} kinds>")

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
        for r in self.frame.regs.values():
            p.break_()
            p.text(f"  {r.name}{'<n>' if r.count > 1 else ''}  +{r.offset:#x}  {r.width} bits  {r.access}")

    def _ipython_key_completions_(self) -> list[str]:
        return list(self.frame.names())

    def __setitem__(self, name: str, value: int) -> None:
        r, off = self.frame.lookup(name)
        value = _check.uint(f"{name} ({r.width} bits)", value, r.width)
        if r.width == 64 and self.halves:
            self.dev.set_attr(self.group, self.prefix | off, value & 0xFFFFFFFF)
            self.dev.set_attr(self.group, self.prefix | (off + 4), value >> 32)
        else:
            self.dev.set_attr(self.group, self.prefix | off, value)

    def fields(self, name: str) -> dict[str, int]:
        """The register's named bit fields, decoded."""
        r, _ = self.frame.lookup(name)
        return decode(r.fields, self[name])

    def attrs_of(self, name: str) -> list[int]:
        """The attr value(s) that reach ``name``: a 64-bit register accessed in
        halves is two (low half first)."""
        r, off = self.frame.lookup(name)
        if r.width == 64 and self.halves:
            return [self.prefix | off, self.prefix | (off + 4)]
        return [self.prefix | off]

    def read(self, names: Iterable[str]) -> dict[str, int]:
        """Many registers in one batch (Device.attr_batch)."""
        b = Batch(self.dev)
        out: dict[str, int] = {}
        for n in names:
            b.get(self.group, self.attrs_of(n), out, n)
        b.run()
        return out

    def write(self, values: dict[str, int]) -> None:
        """Many registers in one batch, in the dict's order."""
        b = Batch(self.dev)
        for n, v in values.items():
            r, _ = self.frame.lookup(n)
            v = _check.uint(f"{n} ({r.width} bits)", v, r.width)
            b.set(self.group, self.attrs_of(n), v)
        b.run()

    def has(self, name: str) -> bool:
        """KVM_HAS_DEVICE_ATTR for this register: implemented by this kernel."""
        _, off = self.frame.lookup(name)
        return self.dev.has_attr(self.group, self.prefix | off)

    def __iter__(self) -> Iterator[str]:
        return iter(self.frame.regs)


class Batch:
    """Device-attribute reads or writes gathered, then done in one attr_batch
    call; a register of several attrs (32-bit halves) is split and joined here."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.items: list[tuple[str, int]] = []
        self.values: list[int] = []
        self.sinks: list[tuple[dict[str, int], str, int, int]] = []

    def get(self, group: str, attrs: list[int], sink: dict[str, int], key: str) -> None:
        if self.values:
            raise ValueError("a Batch either reads or writes")
        self.sinks.append((sink, key, len(self.items), len(attrs)))
        self.items += [(group, a) for a in attrs]

    def set(self, group: str, attrs: list[int], value: int) -> None:
        if self.sinks:
            raise ValueError("a Batch either reads or writes")
        for i, a in enumerate(attrs):
            self.items.append((group, a))
            self.values.append(value >> 32 * i & 0xFFFFFFFF if len(attrs) > 1 else value)

    def run(self) -> None:
        if not self.items:
            return
        if self.sinks:
            vals = self.dev.attr_batch("KVM_GET_DEVICE_ATTR", self.items)
            for sink, key, start, count in self.sinks:
                sink[key] = sum(vals[start + i] << 32 * i for i in range(count))
        else:
            self.dev.attr_batch("KVM_SET_DEVICE_ATTR", self.items, self.values)
        self.items, self.values, self.sinks = [], [], []


class SysRegisters:
    """ICC_* registers of one vCPU (KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, always 64 bits)."""

    def __init__(self, dev: "Vgic", prefix: int) -> None:
        self.dev, self.prefix = dev, prefix
        self.group = "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS"

    def _attr(self, name: str) -> int:
        r = ICC.get(name)
        if r is None:
            raise UnknownNameError("ICC register", name, "(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS)", ICC)
        return self.prefix | r.instr

    def __getitem__(self, name: str) -> int:
        return RegValue(int(self.dev.get_attr(self.group, self._attr(name))), name, ICC[name].fields)

    def __repr__(self) -> str:
        return f"<kvmdev.devices.vgic.SysRegisters ICC_* of {_check.show(self.dev)} (mpidr prefix {self.prefix:#x})>"

    def _ipython_key_completions_(self) -> list[str]:
        return list(ICC)

    def __setitem__(self, name: str, value: int) -> None:
        attr = self._attr(name)
        self.dev.set_attr(self.group, attr, _check.u64(f"{name} (64 bits)", value))

    def fields(self, name: str) -> dict[str, int]:
        return decode(ICC[name].fields, self[name])

    def has(self, name: str) -> bool:
        return self.dev.has_attr(self.group, self._attr(name))

    def attrs_of(self, name: str) -> list[int]:
        return [self._attr(name)]


class Vgic(Device):
    """What VgicV2 and VgicV3 share: NR_IRQS, CTRL, base addresses."""

    GRP_ADDR = "KVM_DEV_ARM_VGIC_GRP_ADDR"
    GRP_CTRL = "KVM_DEV_ARM_VGIC_GRP_CTRL"
    GRP_NR_IRQS = "KVM_DEV_ARM_VGIC_GRP_NR_IRQS"
    GRP_DIST = "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"

    @property
    def nr_irqs(self) -> int:
        """KVM_DEV_ARM_VGIC_GRP_NR_IRQS: SGIs+PPIs+SPIs (32 until chosen or initialized)."""
        return int(self.get_attr(self.GRP_NR_IRQS, 0))

    @nr_irqs.setter
    def nr_irqs(self, n: int) -> None:
        self.set_attr(self.GRP_NR_IRQS, 0, n)

    def init(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT."""
        self.set_attr(self.GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT")

    def _addr(self, kind: str) -> int:
        return int(self.get_attr(self.GRP_ADDR, kind))

    def _set_addr(self, kind: str, base: int) -> None:
        self.set_attr(self.GRP_ADDR, kind, base)


class VgicV2(Vgic):
    """KVM_DEV_TYPE_ARM_VGIC_V2."""

    @property
    def dist_base(self) -> int:
        return self._addr("KVM_VGIC_V2_ADDR_TYPE_DIST")

    @dist_base.setter
    def dist_base(self, base: int) -> None:
        self._set_addr("KVM_VGIC_V2_ADDR_TYPE_DIST", base)

    @property
    def cpu_base(self) -> int:
        return self._addr("KVM_VGIC_V2_ADDR_TYPE_CPU")

    @cpu_base.setter
    def cpu_base(self, base: int) -> None:
        self._set_addr("KVM_VGIC_V2_ADDR_TYPE_CPU", base)

    def dist_as(self, vcpu: "Vcpu | int") -> Registers:
        """GICD_* as vCPU ``vcpu`` sees them (the banked ITARGETSR0-7, private IRQ state)."""
        return Registers(self, GICD_V2, self.GRP_DIST, _index(vcpu) << 32)

    # GICD_* as vCPU 0 sees them: an attribute, not a property, so that IPython's
    # completer (which evaluates no property) reaches its keys: gic.dist["GICD_IS<TAB>
    dist: Registers

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.dist = Registers(self, GICD_V2, self.GRP_DIST, 0, weak=True)

    def cpu(self, vcpu: "Vcpu | int") -> Registers:
        """GICC_* of one vCPU (KVM_DEV_ARM_VGIC_GRP_CPU_REGS, by vCPU index)."""
        return Registers(self, GICC, "KVM_DEV_ARM_VGIC_GRP_CPU_REGS", _index(vcpu) << 32)


class VgicV3(Vgic):
    """KVM_DEV_TYPE_ARM_VGIC_V3."""

    @property
    def dist_base(self) -> int:
        return self._addr("KVM_VGIC_V3_ADDR_TYPE_DIST")

    @dist_base.setter
    def dist_base(self, base: int) -> None:
        self._set_addr("KVM_VGIC_V3_ADDR_TYPE_DIST", base)

    @property
    def redist_base(self) -> int:
        """KVM_VGIC_V3_ADDR_TYPE_REDIST: the legacy single region (all vCPUs)."""
        return self._addr("KVM_VGIC_V3_ADDR_TYPE_REDIST")

    @redist_base.setter
    def redist_base(self, base: int) -> None:
        self._set_addr("KVM_VGIC_V3_ADDR_TYPE_REDIST", base)

    def add_redist_region(self, base: int, count: int, index: int | None = None) -> RedistRegion:
        """KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION: regions are added with index 0, 1, ..."""
        if index is None:
            index = len(self.redist_regions())
        region = RedistRegion(index, base, count)
        self._set_addr("KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION", region.encode())
        return region

    def redist_region(self, index: int) -> RedistRegion:
        """Read region ``index`` back (the kernel takes the index in the value it overwrites)."""
        value = self.get_attr(self.GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION", value_in=index)
        return RedistRegion.decode(value)

    def redist_regions(self) -> list[RedistRegion]:
        out: list[RedistRegion] = []
        while True:
            try:
                out.append(self.redist_region(len(out)))
            except KvmError as e:
                if e.errno == _E.ENOENT:
                    return out
                raise

    # GICD_*: an attribute, not a property (see VgicV2.dist)
    dist: Registers

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.dist = Registers(self, GICD_V3, self.GRP_DIST, 0, weak=True)

    def redist(self, vcpu: "Vcpu | int") -> Registers:
        """GICR_* of one vCPU (RD and SGI frames), addressed by its MPIDR affinity."""
        return Registers(self, GICR, "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", _affinity(vcpu) << 32)

    def cpu_sysreg(self, vcpu: "Vcpu | int") -> SysRegisters:
        """ICC_* of one vCPU, addressed by its MPIDR affinity."""
        return SysRegisters(self, _affinity(vcpu) << 32)

    @property
    def maint_irq(self) -> int:
        """KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ: the maintenance interrupt of a nested
        guest's virtual GIC (0 until set; 6.18 and later, ENXIO before)."""
        return int(self.get_attr("KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", 0))

    @maint_irq.setter
    def maint_irq(self, intid: int) -> None:
        if not 16 <= intid < 32:
            raise ValueError(f"the maintenance interrupt is a PPI (16..31), not {intid}")
        self.set_attr("KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ", 0, intid)

    def save_pending_tables(self) -> None:
        """KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES."""
        self.set_attr(self.GRP_CTRL, "KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES")

    def level_info(self, vcpu: "Vcpu | int", intid: int) -> int:
        """KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO: the line levels of INTIDs intid..intid+31
        (intid a multiple of 32) as a bitmap.  The kernel reports only the lines of
        level-sensitive interrupts; SGIs and INTIDs past NR_IRQS read 0."""
        return int(self.get_attr("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", _level_attr(vcpu, intid)))

    def set_level_info(self, vcpu: "Vcpu | int", intid: int, levels: int) -> None:
        """Restore line levels (set for every interrupt whatever its configuration,
        so ICFGR need not be restored first)."""
        self.set_attr("KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO", _level_attr(vcpu, intid), levels)


def _level_attr(vcpu: "Vcpu | int", intid: int) -> int:
    if intid % 32 or not 0 <= intid < 1024:
        raise ValueError(f"LEVEL_INFO covers 32 interrupts from a multiple of 32 below 1024, not {intid}")
    return _affinity(vcpu) << 32 | 0 << 10 | intid  # VGIC_LEVEL_INFO_LINE_LEVEL


def _index(vcpu: "Vcpu | int") -> int:
    if hasattr(vcpu, "id") and not isinstance(vcpu, (int, str)):
        return vcpu.id
    return _check.uint("vCPU (a Vcpu, or its index)", _vcpu_arg(vcpu, "its index"), 8)


def _affinity(vcpu: "Vcpu | int") -> int:
    """The packed Aff3.Aff2.Aff1.Aff0 of a vCPU (its MPIDR) or of an MPIDR value."""
    if hasattr(vcpu, "mpidr") and not isinstance(vcpu, (int, str)):
        return Affinity.of(vcpu.mpidr).packed()
    return Affinity.of(_check.u64("vCPU (a Vcpu, or its MPIDR_EL1 value)", _vcpu_arg(vcpu, "its MPIDR"))).packed()


def _vcpu_arg(vcpu: Any, what: str) -> Any:
    if isinstance(vcpu, str):
        raise TypeError(f"a vCPU is given as a kvmdev Vcpu (vm.vcpus[0]) or {what} (an int), not the str {_check.show(vcpu)}")
    return vcpu


DEVICE_CLASSES["ARM_VGIC_V2"] = VgicV2
DEVICE_CLASSES["ARM_VGIC_V3"] = VgicV3
