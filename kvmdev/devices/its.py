"""ARM ITS (Documentation/virt/kvm/devices/arm-vgic-its.rst, arch/arm64/kvm/vgic/vgic-its.c).

    its = vm.create_device("ARM_VGIC_ITS")
    its.base = 0x08080000                  # KVM_VGIC_ITS_ADDR_TYPE, 64K aligned, 128K frame
    its.regs["GITS_BASER0"]                # KVM_DEV_ARM_VGIC_GRP_ITS_REGS: always a u64 buffer
    its.regs.fields("GITS_TYPER")
    its.submit(command("MAPD", DeviceID=1, Size=1, ITT_addr=itt, V=1))   # into the queue, CWRITER moved
    its.save_tables(); tables = read_tables(its.regs, mem.read)   # the ABI REV0 tables, decoded
    state = its.save(); other_its.restore(state)                 # the documented sequences, checked

The table ABI (REV0, all entries 8 bytes, little endian) is data here too:
Dte/Cte/Ite encode and decode one entry; read_tables walks the device table
(flat or two-level), every ITT and the collection table in guest memory.
Commands are data as well: COMMANDS (opcodes) and CMD_FIELDS (bit positions).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..errors import SequenceError
from ..device import DEVICE_CLASSES, Device
from .vgic import Frame, Reg, Registers, _bits
from .. import _check

# -- GITS_* registers (the ITS control frame) ------------------------------------------------
_CACHE = {"InnerCache": (59, 3), "OuterCache": (53, 3), "Shareability": (10, 2)}
GITS = Frame("GITS", [
    Reg("GITS_CTLR", 0x0000, fields=_bits(Enabled=(0, 1), Quiescent=(31, 1))),
    Reg("GITS_IIDR", 0x0004, fields=_bits(Implementer=(0, 12), Revision=(12, 4), Variant=(16, 4),
                                          ProductID=(24, 8))),
    Reg("GITS_TYPER", 0x0008, width=64, access="r",
        fields=_bits(Physical=(0, 1), ITT_entry_size=(4, 4), IDbits=(8, 5), Devbits=(13, 5), SEIS=(18, 1),
                     PTA=(19, 1), HCC=(24, 8), CIDbits=(32, 4), CIL=(36, 1))),
    Reg("GITS_CBASER", 0x0080, width=64,
        fields=_bits(Size=(0, 8), PhysicalAddress=(12, 40), Valid=(63, 1), **_CACHE)),
    Reg("GITS_CWRITER", 0x0088, width=64, fields=_bits(Retry=(0, 1), Offset=(5, 15))),
    Reg("GITS_CREADR", 0x0090, width=64, fields=_bits(Stalled=(0, 1), Offset=(5, 15))),
    Reg("GITS_BASER", 0x0100, width=64, count=8,
        fields=_bits(Size=(0, 8), PageSize=(8, 2), PhysicalAddress=(12, 36), EntrySize=(48, 5), Type=(56, 3),
                     Indirect=(62, 1), Valid=(63, 1), **_CACHE)),
    Reg("GITS_PIDR2", 0xFFE8, access="r", fields=_bits(ArchRev=(4, 4))),
])
GITS_BASER_TYPE_DEVICE, GITS_BASER_TYPE_COLLECTION = 1, 4
SZ_64K = 0x10000


def _groups() -> list[_attrs.Group]:
    _A, _G = _attrs.Attr, _attrs.Group
    return [
        _G("KVM_DEV_ARM_VGIC_GRP_ADDR",
           (_A("KVM_VGIC_ITS_ADDR_TYPE", "__u64", "rw", "ITS control frame base, 64K aligned, 128K"),),
           doc="base address"),
        _G("KVM_DEV_ARM_VGIC_GRP_CTRL",
           (_A("KVM_DEV_ARM_VGIC_CTRL_INIT", None, "w", "initialize the ITS (nothing to do)"),
            _A("KVM_DEV_ARM_ITS_CTRL_RESET", None, "w", "reset the ITS (see 'ITS Reset State')"),
            _A("KVM_DEV_ARM_ITS_SAVE_TABLES", None, "w", "write the ITS tables to guest RAM"),
            _A("KVM_DEV_ARM_ITS_RESTORE_TABLES", None, "w", "load the ITS tables from guest RAM"))),
        _G("KVM_DEV_ARM_VGIC_GRP_ITS_REGS", (), any_attr=_A("offset", "__u64", "rw"),
           doc="GITS_* registers; attr: offset; always a u64 buffer"),
    ]


_attrs.register("ARM_VGIC_ITS", _groups())

_CTRL = "KVM_DEV_ARM_VGIC_GRP_CTRL"
_REGS = "KVM_DEV_ARM_VGIC_GRP_ITS_REGS"
_register_errnos({
    (None, "ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ADDR", "E2BIG"): "address outside of the addressable IPA range",
    (None, "ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EINVAL"): "incorrectly aligned address",
    (None, "ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ADDR", "EEXIST"): "address already configured",
    (None, "ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ADDR", "ENODEV"): "incorrect attribute or the ITS is not supported",
    (None, "ARM_VGIC_ITS", _CTRL, "ENXIO"): "ITS not properly configured as required prior to setting this attribute",
    (None, "ARM_VGIC_ITS", _CTRL, "ENOMEM"): "memory shortage when allocating ITS internal data",
    (None, "ARM_VGIC_ITS", _CTRL, "EINVAL"): "inconsistent restored data",
    (None, "ARM_VGIC_ITS", _CTRL, "EFAULT"): "invalid guest RAM access",
    (None, "ARM_VGIC_ITS", _CTRL, "EBUSY"): "one or more vCPUs are running",
    (None, "ARM_VGIC_ITS", _CTRL, "EACCES"):
        "the virtual ITS is backed by a physical GICv4 ITS, and the state is not available without GICv4.1",
    (None, "ARM_VGIC_ITS", _REGS, "ENXIO"): "offset does not correspond to any supported register",
    (None, "ARM_VGIC_ITS", _REGS, "EINVAL"): "offset is not 64-bit aligned",
    (None, "ARM_VGIC_ITS", _REGS, "EBUSY"): "one or more vCPUs are running",
})


# -- ITS commands (GICv3 spec 5.13; the fields vgic-its.c reads) --------------------------------
COMMANDS = {"MOVI": 0x01, "INT": 0x03, "CLEAR": 0x04, "SYNC": 0x05, "MAPD": 0x08, "MAPC": 0x09,
            "MAPTI": 0x0A, "MAPI": 0x0B, "INV": 0x0C, "INVALL": 0x0D, "MOVALL": 0x0E, "DISCARD": 0x0F}
# field -> (doubleword, shift, width, address shift): ITT_addr is given as a byte address
CMD_FIELDS = {"DeviceID": (0, 32, 32, 0), "EventID": (1, 0, 32, 0), "Size": (1, 0, 5, 0),
              "pINTID": (1, 32, 32, 0), "ICID": (2, 0, 16, 0), "ITT_addr": (2, 8, 44, 8),
              "RDbase": (2, 16, 32, 0), "V": (2, 63, 1, 0), "RDbase2": (3, 16, 32, 0)}
CMD_SIZE = 32


def command(name: str, **fields: int) -> bytes:
    """One 32-byte ITS command, e.g. ``command("MAPTI", DeviceID=1, EventID=0,
    pINTID=8192, ICID=0)``.  Size is EventID bits - 1; RDbase is the target's
    GICR_TYPER.Processor_Number (GITS_TYPER.PTA is 0)."""
    if name not in COMMANDS:
        raise ValueError(f"unknown ITS command {_check.show(name)}; known: {', '.join(COMMANDS)}")
    dw = [COMMANDS[name], 0, 0, 0]
    for key, value in fields.items():
        if key not in CMD_FIELDS:
            raise ValueError(f"unknown ITS command field {_check.show(key)}; known: {', '.join(CMD_FIELDS)}")
        word, shift, width, scale = CMD_FIELDS[key]
        if value & ((1 << scale) - 1):
            raise ValueError(f"{key} {value:#x} is not {1 << scale}-byte aligned")
        dw[word] |= _field(value >> scale, key, width) << shift
    return b"".join(pack(w) for w in dw)


def decode_command(raw: bytes) -> tuple[str, dict[str, int]]:
    """The name and every field of a 32-byte command (fields that overlap, such
    as Size and EventID, are all given)."""
    dw = [unpack(raw[i:i + 8]) for i in range(0, CMD_SIZE, 8)]
    names = {v: k for k, v in COMMANDS.items()}
    name = names.get(dw[0] & 0xFF, f"{dw[0] & 0xFF:#04x}")
    return name, {k: (dw[w] >> s & ((1 << n) - 1)) << sc for k, (w, s, n, sc) in CMD_FIELDS.items()}


# The registers of the documented restore sequence, in its order (arm-vgic-its.rst,
# "ITS Restore Sequence"): GITS_CBASER, then the others but GITS_CTLR (GITS_CREADR
# after GITS_CBASER, GITS_IIDR before RESTORE_TABLES), RESTORE_TABLES, GITS_CTLR.
RESTORE_ORDER = ("GITS_CBASER", "GITS_CREADR", "GITS_CWRITER") + tuple(f"GITS_BASER{n}" for n in range(8)) + (
    "GITS_IIDR",)


@dataclass
class ItsState:
    """What Its.save() read: the frame address and the GITS_* registers.  The
    tables themselves are in guest RAM (see ``table_ranges``)."""

    base: int
    regs: dict[str, int]

    def table_ranges(self) -> list[tuple[str, int, int]]:
        """(what, gpa, size) of the command queue and the tables named by the
        registers; memory that has to travel with this state."""
        out = []
        cbaser = self.regs.get("GITS_CBASER", 0)
        if cbaser >> 63:
            out.append(("command queue", cbaser & 0xFFFFFFFFFF << 12, ((cbaser & 0xFF) + 1) << 12))
        for n in range(8):
            b = self.regs.get(f"GITS_BASER{n}", 0)
            if b >> 63:
                base, size, indirect = baser_table(b)
                kind = {GITS_BASER_TYPE_DEVICE: "device table", GITS_BASER_TYPE_COLLECTION: "collection table"}
                out.append((kind.get(b >> 56 & 7, f"table type {b >> 56 & 7}") + (" (level 1)" if indirect else ""),
                            base, size))
        return out


class Its(Device):
    """KVM_DEV_TYPE_ARM_VGIC_ITS: one per 128K frame; several per VM."""

    GRP_ADDR = "KVM_DEV_ARM_VGIC_GRP_ADDR"

    @property
    def base(self) -> int:
        """KVM_VGIC_ITS_ADDR_TYPE (VGIC_ADDR_UNDEF until set)."""
        return int(self.get_attr(self.GRP_ADDR, "KVM_VGIC_ITS_ADDR_TYPE"))

    @base.setter
    def base(self, base: int) -> None:
        self.set_attr(self.GRP_ADDR, "KVM_VGIC_ITS_ADDR_TYPE", base)

    # GITS_* by name, every access one u64 whatever the register's width: an
    # attribute, not a property, so IPython completes its keys (its.regs["GITS_<TAB>)
    regs: Registers

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.regs = Registers(self, GITS, _REGS, 0, halves=False, weak=True)

    def init(self) -> None:
        """KVM_DEV_ARM_VGIC_CTRL_INIT."""
        self.set_attr(_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT")

    def reset(self) -> None:
        """KVM_DEV_ARM_ITS_CTRL_RESET."""
        self.set_attr(_CTRL, "KVM_DEV_ARM_ITS_CTRL_RESET")

    def save_tables(self) -> None:
        """KVM_DEV_ARM_ITS_SAVE_TABLES: the device, ITT and collection tables to guest RAM."""
        self.set_attr(_CTRL, "KVM_DEV_ARM_ITS_SAVE_TABLES")

    def restore_tables(self) -> None:
        """KVM_DEV_ARM_ITS_RESTORE_TABLES (after every GITS_* register but GITS_CTLR).
        Refused while the ITS is enabled: GITS_CTLR is restored last."""
        if self.regs["GITS_CTLR"] & 1:
            raise SequenceError("KVM_DEV_ARM_ITS_RESTORE_TABLES on an enabled ITS: GITS_CTLR must be "
                                "restored last, after the tables (arm-vgic-its.rst, ITS Restore Sequence)")
        self.set_attr(_CTRL, "KVM_DEV_ARM_ITS_RESTORE_TABLES")

    # -- the command queue -------------------------------------------------------------------
    def submit(self, *commands: bytes) -> int:
        """Write ``commands`` into the command queue in guest RAM (at GITS_CWRITER,
        wrapping) and move GITS_CWRITER past them: an enabled ITS processes them
        at once.  Returns GITS_CREADR afterwards."""
        regs = self.regs
        cbaser = regs["GITS_CBASER"]
        if not cbaser >> 63:
            raise ValueError("GITS_CBASER is not valid: there is no command queue")
        base, size = cbaser & 0xFFFFFFFFFF << 12, ((cbaser & 0xFF) + 1) << 12
        wr, rd = regs["GITS_CWRITER"] & 0xFFFE0, regs["GITS_CREADR"] & 0xFFFE0
        if len(commands) * CMD_SIZE > (rd - wr - CMD_SIZE) % size:
            raise ValueError(f"{len(commands)} commands do not fit in the queue "
                             f"(GITS_CREADR {rd:#x}, GITS_CWRITER {wr:#x}, {size:#x} bytes)")
        for c in commands:
            if len(c) != CMD_SIZE:
                raise ValueError(f"an ITS command is {CMD_SIZE} bytes, not {len(c)}")
            self.vm.guest_memory(base + wr, CMD_SIZE).write(base + wr, c)
            wr = (wr + CMD_SIZE) % size
        regs["GITS_CWRITER"] = wr
        return int(regs["GITS_CREADR"])

    # -- the documented sequences ----------------------------------------------------------------
    def save(self) -> ItsState:
        """ITS save: KVM_DEV_ARM_ITS_SAVE_TABLES first (the tables go to guest RAM),
        then the registers."""
        self.save_tables()
        regs = self.regs
        return ItsState(self.base, {n: int(regs[n]) for n in RESTORE_ORDER + ("GITS_CTLR",)})

    def restore(self, state: ItsState | Mapping[str, int], base: int | None = None) -> None:
        """The ITS Restore Sequence in one call, after the VGIC v3 and its
        redistributors (GICR_PROPBASER/PENDBASER): the frame address,
        GITS_CBASER, the other registers, RESTORE_TABLES, GITS_CTLR last.
        Everything is checked before the first write."""
        regs_in = dict(state.regs if isinstance(state, ItsState) else state)
        base = state.base if base is None and isinstance(state, ItsState) else base
        unknown = set(regs_in) - set(RESTORE_ORDER) - {"GITS_CTLR"}
        if unknown:
            raise ValueError(f"not restorable ITS registers: {', '.join(sorted(unknown))}")
        current = self.base
        if base is None and current == (1 << 64) - 1:
            raise SequenceError("the ITS has no frame address: KVM_VGIC_ITS_ADDR_TYPE is restored first")
        if base is not None and current not in ((1 << 64) - 1, base):
            raise SequenceError(f"the ITS frame is at {current:#x}, not {base:#x} as saved")
        rev = regs_in.get("GITS_IIDR", 0) >> 12 & 0xF
        if current != (1 << 64) - 1:
            if self.regs["GITS_CTLR"] & 1:
                raise SequenceError("the ITS is enabled: restore into a disabled ITS, GITS_CTLR last "
                                    "(arm-vgic-its.rst, ITS Restore Sequence)")
            if rev > self.regs.fields("GITS_IIDR")["Revision"]:
                raise SequenceError(f"table ABI revision {rev} is newer than this kernel's")
        gics = [d for d in self.vm.devices if d.type_name == "ARM_VGIC_V3"]
        if not gics:
            raise SequenceError("no VGIC v3 on this VM: the GICv3 is restored before the ITS "
                                "(arm-vgic-its.rst, ITS Restore Sequence)")
        vcpus = self.vm.vcpus   # GICR_PROPBASER is one per VM: any vCPU's redistributor shows it
        tables = any(regs_in.get(f"GITS_BASER{n}", 0) >> 63 for n in range(8))
        if tables and vcpus and (gics[0].redist(vcpus[0])["GICR_PROPBASER"] & 0x1F) + 1 < 14:   # type: ignore[attr-defined]
            raise SequenceError("GICR_PROPBASER allows no LPI yet: the redistributors are restored before "
                                "the ITS, whose tables name LPIs (arm-vgic-its.rst, ITS Restore Sequence)")
        if current == (1 << 64) - 1:
            self.base = base   # type: ignore[assignment]
            if rev > self.regs.fields("GITS_IIDR")["Revision"]:
                raise SequenceError(f"table ABI revision {rev} is newer than this kernel's")
        regs = self.regs
        for name in RESTORE_ORDER:
            # a register already holding the value is left alone: a write can sanitise
            # (CBASER 0, its reset value, reads back RaWb) or have effects (BASER V=0 unmaps)
            if name in regs_in and regs[name] != regs_in[name]:
                regs[name] = regs_in[name]
        self.restore_tables()
        if "GITS_CTLR" in regs_in:
            regs["GITS_CTLR"] = regs_in["GITS_CTLR"]


DEVICE_CLASSES["ARM_VGIC_ITS"] = Its


# -- table ABI REV0 ---------------------------------------------------------------------------
ESZ = 8                      # every REV0 entry
DTE_NEXT_MAX = (1 << 14) - 1
ITE_NEXT_MAX = (1 << 16) - 1


def _field(value: int, name: str, width: int) -> int:
    if not 0 <= value < 1 << width:
        raise ValueError(f"{name} {value:#x} does not fit in {width} bits")
    return value


@dataclass(frozen=True)
class Dte:
    """Device Table Entry: | V 63 | next 62:49 | ITT_addr[51:8] 48:5 | Size 4:0 |."""

    itt_addr: int
    size: int                 # EventID bits - 1
    next: int = 0             # DeviceID offset to the next DTE (0: the last)
    valid: bool = True

    def encode(self) -> int:
        if self.itt_addr & 0xFF:
            raise ValueError(f"ITT address {self.itt_addr:#x} is not 256-byte aligned")
        return (int(self.valid) << 63 | _field(self.next, "next", 14) << 49
                | _field(self.itt_addr >> 8, "ITT_addr[51:8]", 44) << 5 | _field(self.size, "Size", 5))

    @classmethod
    def decode(cls, v: int) -> "Dte":
        return cls(itt_addr=(v >> 5 & (1 << 44) - 1) << 8, size=v & 0x1F, next=v >> 49 & DTE_NEXT_MAX,
                   valid=bool(v >> 63))


@dataclass(frozen=True)
class Cte:
    """Collection Table Entry: | V 63 | RES0 62:52 | RDBase 51:16 | ICID 15:0 |."""

    icid: int
    rdbase: int               # the target vCPU's GICR_TYPER.ProcessorNumber
    valid: bool = True

    def encode(self) -> int:
        return int(self.valid) << 63 | _field(self.rdbase, "RDBase", 36) << 16 | _field(self.icid, "ICID", 16)

    @classmethod
    def decode(cls, v: int) -> "Cte":
        return cls(icid=v & 0xFFFF, rdbase=v >> 16 & (1 << 36) - 1, valid=bool(v >> 63))


@dataclass(frozen=True)
class Ite:
    """Interrupt Translation Entry: | next 63:48 | pINTID 47:16 | ICID 15:0 | (pINTID 0: invalid)."""

    lpi: int
    icid: int
    next: int = 0             # EventID offset to the next ITE (0: the last)

    @property
    def valid(self) -> bool:
        return self.lpi != 0

    def encode(self) -> int:
        return _field(self.next, "next", 16) << 48 | _field(self.lpi, "pINTID", 32) << 16 | _field(self.icid, "ICID", 16)

    @classmethod
    def decode(cls, v: int) -> "Ite":
        return cls(lpi=v >> 16 & 0xFFFFFFFF, icid=v & 0xFFFF, next=v >> 48)


def pack(entry: int) -> bytes:
    return struct.pack("<Q", entry)


def unpack(data: bytes) -> int:
    return int(struct.unpack("<Q", data)[0])


@dataclass
class ItsTables:
    """What the saved tables say: devices -> events -> (LPI, ICID), collections -> target."""

    devices: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    itt_bits: dict[int, int] = field(default_factory=dict)      # DeviceID -> EventID bits
    collections: dict[int, int] = field(default_factory=dict)   # ICID -> RDBase (vCPU)


Reader = Callable[[int, int], bytes]   # (gpa, size) -> bytes, e.g. GuestMemory.read


def baser_table(baser: int) -> tuple[int, int, bool]:
    """(base gpa, size in bytes, indirect) of a GITS_BASER<n>: 64K pages as KVM has
    them, so PA[47:16] in place and PA[51:48] in bits [15:12]."""
    base = baser & 0xFFFFFFFF0000 | (baser >> 12 & 0xF) << 48
    return base, ((baser & 0xFF) + 1) * SZ_64K, bool(baser >> 62 & 1)


def _scan(read: Reader, base: int, size: int, first_id: int,
          handle: Callable[[int, int], int]) -> None:
    """scan_its_table: ``handle(id, entry)`` says how many entries to skip (0: stop)."""
    i = 0
    while i * ESZ < size:
        step = handle(first_id + i, unpack(read(base + i * ESZ, ESZ)))
        if step == 0:
            return
        i += step


def _walk_device_table(read: Reader, baser: int) -> list[tuple[int, Dte]]:
    base, size, indirect = baser_table(baser)
    found: list[tuple[int, Dte]] = []

    def dte(devid: int, v: int) -> int:
        d = Dte.decode(v)
        if not d.valid:
            return 1
        found.append((devid, d))
        return d.next

    if not indirect:
        _scan(read, base, size, 0, dte)
    else:
        per_page = SZ_64K // ESZ
        for idx in range(size // ESZ):
            l1 = unpack(read(base + idx * ESZ, ESZ))
            if l1 >> 63:
                _scan(read, l1 & 0xFFFFFFFF0000, SZ_64K, idx * per_page, dte)
    return found


def read_tables(regs: Registers, read: Reader) -> ItsTables:
    """Decode the tables an ITS saved (or that will be restored) in guest memory,
    finding them through its GITS_BASER<n> registers."""
    out = ItsTables()
    for n in range(8):
        baser = regs[f"GITS_BASER{n}"]
        if not baser >> 63:
            continue
        kind = baser >> 56 & 7
        if kind == GITS_BASER_TYPE_DEVICE:
            for devid, d in _walk_device_table(read, baser):
                events: dict[int, tuple[int, int]] = {}

                def ite(eventid: int, v: int, events: dict[int, tuple[int, int]] = events) -> int:
                    e = Ite.decode(v)
                    if not e.valid:
                        return 1
                    events[eventid] = (e.lpi, e.icid)
                    return e.next

                _scan(read, d.itt_addr, (1 << (d.size + 1)) * ESZ, 0, ite)
                out.devices[devid] = events
                out.itt_bits[devid] = d.size + 1
        elif kind == GITS_BASER_TYPE_COLLECTION:
            base, size, _ = baser_table(baser)

            def cte(_: int, v: int) -> int:
                c = Cte.decode(v)
                if not c.valid:
                    return 0   # the first invalid entry ends the list
                out.collections[c.icid] = c.rdbase
                return 1

            _scan(read, base, size, 0, cte)
    return out
