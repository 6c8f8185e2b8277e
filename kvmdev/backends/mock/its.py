"""The ITS and the LPIs behind it (arch/arm64/kvm/vgic/vgic-its.c; LPI pending
state from vgic-v3.c, GICR_CTLR.EnableLPIs from vgic-mmio-v3.c).

Modelled, each checked by tests that also run on the real 6.12 and 6.1 kernels:
the GITS_* registers and their userspace rules, the command queue (processed
when GITS_CWRITER moves or the ITS is enabled, commands read from guest RAM,
bad commands consumed and ignored), KVM_SIGNAL_MSI translation, CTRL_RESET,
SAVE_TABLES / RESTORE_TABLES in the table ABI REV0 with the kernel's checks,
and the LPIs' enable/priority (property table), pending state (pending tables,
SAVE_PENDING_TABLES) and target vCPU.
"""
from __future__ import annotations

import errno as E
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...devices.its import (DTE_NEXT_MAX, ESZ, GITS_BASER_TYPE_COLLECTION, GITS_BASER_TYPE_DEVICE, ITE_NEXT_MAX,
                            Cte, Dte, Ite, baser_table, pack, unpack)
from .kernel import DeviceModel, Errno, device_model
from .vgic import (ADDR, ADDR_UNDEF, CTRL, CTRL_INIT, ITS_ADDR, ITS_CTRL_RESET, ITS_REGS, ITS_RESTORE_TABLES,
                   ITS_SAVE_TABLES, ITS_SIZE, SZ_64K, INITIAL_BASER, _sanitise_baser, check_iorange)

if TYPE_CHECKING:
    from .arm64 import Arm64Vm
    from .kernel import MockVm

# Values seen on 6.12 and 6.1 (tests/test_its.py)
GITS_IIDR = 0x4B00043B           # ProductID 'K', Implementer ARM; Revision = the table ABI (0)
GITS_TYPER = 0x1EF71             # Physical, ITT entry 8 bytes, 16 EventID bits, 16 DeviceID bits
GITS_BASER_PAGE_64K = 2 << 8
BASER_DEVICE_RESET = 1 << 56 | 7 << 48 | 3 << 59 | 1 << 10 | GITS_BASER_PAGE_64K   # type 1, 8-byte entries
BASER_COLL_RESET = 4 << 56 | 7 << 48 | 3 << 59 | 1 << 10 | GITS_BASER_PAGE_64K     # type 4
BASER_RO = 7 << 56 | 0x1F << 48 | 3 << 8    # Type, EntrySize, PageSize
VALID = 1 << 63
# vgic_mmio_read_its_idregs
ITS_IDREGS = {0xFFD0: 0x40, 0xFFE0: 0x92, 0xFFE4: 0xB4, 0xFFE8: 0x3B, 0xFFF0: 0x0D, 0xFFF4: 0xF0,
              0xFFF8: 0x05, 0xFFFC: 0xB1}
NR_ITS_ABIS = 1
GIC_LPI_OFFSET = 8192
ITS_IDBITS = 16                  # VITS_TYPER_IDBITS (EventIDs), INTERRUPT_ID_BITS_ITS (LPIs)
MAX_DEVID = (1 << 16) - 1        # GITS_TYPER.Devbits + 1 = 16 on both kernels
COLLECTION_NOT_MAPPED = 0xFFFFFFFF
CMD_SIZE = 32
# GITS command opcodes (include/linux/irqchip/arm-gic-v3.h)
MOVI, INT, CLEAR, SYNC, MAPD, MAPC, MAPTI, MAPI, INV, INVALL, MOVALL, DISCARD = (
    0x01, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)


_NONZERO = re.compile(rb"[^\x00]")   # _scan: the next non-zero byte of a table


class Lpi:
    """struct vgic_irq of an LPI: shared by every ITE (of any ITS) that maps it."""

    __slots__ = ("intid", "target", "pending", "enabled", "priority", "refs")

    def __init__(self, intid: int, target: int | None) -> None:
        self.intid, self.target = intid, target
        self.pending = self.enabled = False
        self.priority = 0
        self.refs = 1


class Lpis:
    """dist->lpi_xa and the redistributors' LPI state (GICR_CTLR.EnableLPIs,
    GICR_PENDBASER), for one VM.  vCPUs are named by vcpu_id."""

    def __init__(self, part: "Arm64Vm") -> None:
        self.part = part
        self.irqs: dict[int, Lpi] = {}
        self.enabled_on: set[int] = set()          # vCPUs with GICR_CTLR.EnableLPIs
        self.pendbaser: dict[int, int] = {}

    @property
    def vm(self) -> "MockVm":
        return self.part.vm

    def pendbase(self, vid: int) -> int:
        return self.pendbaser.get(vid, INITIAL_BASER) & 0xFFFFFFFFF << 16   # GICR_PENDBASER_ADDRESS

    def vcpu_by_rdbase(self, rdbase: int) -> int | None:
        """What a collection's RDbase names.  6.12: the vcpu_id (kvm_get_vcpu_by_id);
        6.1: the vCPU index, below online_vcpus (kvm_get_vcpu)."""
        ids = list(self.vm.vcpus)
        if self.vm.backend.host.kernel == "6.1":
            return ids[rdbase] if rdbase < len(ids) else None
        return rdbase if rdbase in self.vm.vcpus else None

    def rdbase_of(self, vid: int) -> int:
        """The RDbase a MAPC stores for vCPU ``vid`` (6.12: vcpu_id; 6.1: its index)."""
        return list(self.vm.vcpus).index(vid) if self.vm.backend.host.kernel == "6.1" else vid

    # -- struct vgic_irq lifetime (vgic_add_lpi / vgic_put_irq) ----------------------------
    def add(self, intid: int, target: int | None) -> Lpi:
        """vgic_add_lpi: an LPI already mapped elsewhere is shared as it is; a new
        one reads its property byte and its pending bit (consuming it)."""
        lpi = self.irqs.get(intid)
        if lpi is not None:
            lpi.refs += 1
            return lpi
        lpi = self.irqs[intid] = Lpi(intid, target)
        try:
            self.update_config(lpi)
            self._sync_pending_status(lpi)
        except Errno:
            self.put(lpi)
            raise
        return lpi

    def put(self, lpi: Lpi) -> None:
        lpi.refs -= 1
        if lpi.refs == 0:
            del self.irqs[lpi.intid]

    def update_config(self, lpi: Lpi, only_for: int | None = None) -> None:
        """update_lpi_config: enable bit and priority from the property table."""
        prop = self.part.propbaser & 0xFFFFFFFFFF << 12   # GICR_PROPBASER_ADDRESS
        byte = self.vm.read_guest(prop + lpi.intid - GIC_LPI_OFFSET, 1)[0]
        if only_for is None or only_for == lpi.target:
            lpi.priority, lpi.enabled = byte & 0xFC, bool(byte & 1)

    def _sync_pending_status(self, lpi: Lpi) -> None:
        """vgic_v3_lpi_sync_pending_status: the target's pending bit becomes the
        latch, and a set bit is cleared in guest RAM."""
        if lpi.target is None:
            return
        ptr = self.pendbase(lpi.target) + lpi.intid // 8
        val, bit = self.vm.read_guest(ptr, 1)[0], 1 << lpi.intid % 8
        lpi.pending = bool(val & bit)
        if lpi.pending:
            self.vm.write_guest(ptr, bytes([val & ~bit]))

    # -- the redistributor side ---------------------------------------------------------------
    def enabled(self, vid: int) -> bool:
        return vid in self.enabled_on

    def set_enable(self, vid: int, enable: bool) -> None:
        """vgic_mmio_write_v3r_ctlr (only with an ITS)."""
        if not self.part.its or enable == (vid in self.enabled_on):
            return
        if enable:
            self.enabled_on.add(vid)
            if not self.pendbaser.get(vid, INITIAL_BASER) >> 62 & 1:   # PTZ: nothing to read
                try:
                    self._sync_pending_table(vid)
                except Errno:
                    pass   # vgic_enable_lpis ignores a failed read
            return
        # vgic_flush_pending_lpis only takes them off the vCPU's list: the latches stay
        self.enabled_on.discard(vid)

    def _sync_pending_table(self, vid: int) -> None:
        """its_sync_lpi_pending_table: every LPI targeting ``vid`` takes its bit."""
        base = self.pendbase(vid)
        for intid in sorted(self.irqs):
            lpi = self.irqs[intid]
            byte = self.vm.read_guest(base + intid // 8, 1)[0]
            if lpi.target == vid:
                lpi.pending = bool(byte >> intid % 8 & 1)

    def save_pending_tables(self) -> None:
        """vgic_v3_save_pending_tables: each targeted LPI's latch into its target's
        pending table, writing only bytes that change; 6.12 goes in intid order
        (an xarray), 6.1 in the order the LPIs were made (a list)."""
        last_ptr, val = -1, 0
        order = list(self.irqs) if self.vm.backend.host.kernel == "6.1" else sorted(self.irqs)
        for intid in order:
            lpi = self.irqs[intid]
            if lpi.target is None:
                continue
            ptr = self.pendbase(lpi.target) + intid // 8
            if ptr != last_ptr:
                val, last_ptr = self.vm.read_guest(ptr, 1)[0], ptr
            bit = 1 << intid % 8
            if bool(val & bit) == lpi.pending:
                continue
            val = val | bit if lpi.pending else val & ~bit
            self.vm.write_guest(ptr, bytes([val]))


@dataclass(eq=False)
class Coll:
    icid: int
    target: int = COLLECTION_NOT_MAPPED    # RDbase

    @property
    def mapped(self) -> bool:
        return self.target != COLLECTION_NOT_MAPPED


@dataclass(eq=False)
class ItsIte:
    lpi: Lpi
    coll: Coll | None


@dataclass(eq=False)
class ItsDevice:
    itt_addr: int
    bits: int                                   # EventID bits
    ites: dict[int, ItsIte] = field(default_factory=dict)


def _cmd_field(cmd: list[int], word: int, shift: int, size: int) -> int:
    return cmd[word] >> shift & ((1 << size) - 1)


class _CmdError(Exception):
    """A command the ITS ignores (the kernel's positive E_ITS_* codes)."""


@device_model
class ItsModel(DeviceModel):
    """One ITS (several per VM are allowed; it needs no VGIC to be created)."""

    type_name = "ARM_VGIC_ITS"
    SIZE = ITS_SIZE

    def create(self) -> None:
        """vgic_its_create."""
        self.base = ADDR_UNDEF
        self.enabled = False  # GITS_CTLR.Enabled
        self.abi = 0
        self.cbaser = self.creadr = self.cwriter = 0
        self.baser_device, self.baser_coll = BASER_DEVICE_RESET, BASER_COLL_RESET
        self.devices: dict[int, ItsDevice] = {}
        self.collections: dict[int, Coll] = {}    # in list order (list_add_tail)
        part = self.vm.part
        part.its.append(self)
        part.msis_require_devid = True
        part.propbaser = INITIAL_BASER  # vgic_its_create: INITIAL_PROPBASER_VALUE

    @property
    def lpis(self) -> Lpis:
        return self.vm.part.lpis

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR and attr == ITS_ADDR or group == CTRL and attr in (
                CTRL_INIT, ITS_SAVE_TABLES, ITS_RESTORE_TABLES, ITS_CTRL_RESET):
            return
        if group == ITS_REGS:
            self._check_offset(attr)
            if self._reg(attr) is None:
                raise Errno(E.ENXIO)
            return
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR:
            if attr != ITS_ADDR:
                raise Errno(E.ENODEV)
            self.user.put("__u64", addr, self.base)
            return
        if group == ITS_REGS:
            self.user.put("__u64", addr, self._regs_access(attr, None))
            return
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group == ADDR:
            if attr != ITS_ADDR:
                raise Errno(E.ENODEV)
            value = self.user.get("__u64", addr)
            check_iorange(self.vm.part.phys_size, self.base, value, SZ_64K, ITS_SIZE)
            self.base = value
            return
        if group == CTRL:
            if attr == CTRL_INIT:
                return  # nothing to do
            # vgic_its_ctrl: an unknown attr does nothing, 0 (6.18+: ENXIO)
            op = {ITS_CTRL_RESET: self._reset, ITS_SAVE_TABLES: self._save_tables,
                  ITS_RESTORE_TABLES: self._restore_tables}.get(attr)
            if op is None and self.vm.backend.host.fact("its_ctrl_unknown_enxio"):
                raise Errno(E.ENXIO)
            self.vm.with_all_vcpus_locked(op or (lambda: None))
            return
        if group == ITS_REGS:
            self._regs_access(attr, self.user.get("__u64", addr))
            return
        raise Errno(E.ENXIO)

    # -- GRP_ITS_REGS (vgic_its_attr_regs_access) -----------------------------------------
    @staticmethod
    def _check_offset(off: int) -> None:
        """Only GITS_CTLR, GITS_IIDR and the ID registers take 32-bit aligned offsets."""
        if off & (3 if off < 0x8 or off >= 0xFFD0 else 7):
            raise Errno(E.EINVAL)

    def _reg(self, off: int) -> str | None:
        if off in (0x0, 0x4, 0x8, 0x80, 0x88, 0x90):
            return {0x0: "ctlr", 0x4: "iidr", 0x8: "typer", 0x80: "cbaser", 0x88: "cwriter", 0x90: "creadr"}[off]
        if 0x100 <= off < 0x140:
            return "baser"
        if 0xFFD0 <= off < 0x10000:
            return "idregs"
        return None

    def _regs_access(self, off: int, value: int | None) -> int:
        self._check_offset(off)

        def _locked() -> Any:
            if self.base == ADDR_UNDEF:
                raise Errno(E.ENXIO)
            reg = self._reg(off)
            if reg is None:
                raise Errno(E.ENXIO)
            if value is not None:
                getattr(self, "_write_" + reg, lambda o, v: None)(off, value)
                return 0
            return int(self._read(reg, off))
        return int(self.vm.with_all_vcpus_locked(_locked))

    def _cmd_queue_size(self) -> int:
        return ((self.cbaser & 0xFF) + 1) << 12

    def _read(self, reg: str, off: int) -> int:
        if reg == "ctlr":  # Quiescent: no command in flight
            return int(self.enabled) | (1 << 31 if self.creadr == self.cwriter else 0)
        if reg == "iidr":
            return GITS_IIDR | self.abi << 12
        if reg == "baser":
            return {0x100: self.baser_device, 0x108: self.baser_coll}.get(off, 0)
        if reg == "idregs":
            return ITS_IDREGS.get(off, 0)
        return int({"typer": GITS_TYPER, "cbaser": self.cbaser, "cwriter": self.cwriter,
                    "creadr": self.creadr}[reg])

    def _write_ctlr(self, off: int, value: int) -> None:
        """Enabling needs valid CBASER and device/collection BASERs (else ignored)."""
        if not self.enabled and value & 1 and not (
                self.baser_device & VALID and self.baser_coll & VALID and self.cbaser & VALID):
            return
        self.enabled = bool(value & 1)
        self._process_commands()

    def _write_iidr(self, off: int, value: int) -> None:
        rev = value >> 12 & 0xF
        if rev >= NR_ITS_ABIS:
            raise Errno(E.EINVAL)  # no such table ABI
        self.abi = rev

    def _write_cbaser(self, off: int, value: int) -> None:
        if self.enabled:
            return  # ignored while the ITS is enabled
        self.cbaser = _sanitise_baser(value, 0xF << 12, inner=59, outer=53)
        self.creadr = self.cwriter = 0

    def _write_cwriter(self, off: int, value: int) -> None:
        """CWRITER inside the queue (else ignored); an enabled ITS processes commands."""
        reg = value & 0xFFFE0
        if reg < self._cmd_queue_size():
            self.cwriter = reg
            self._process_commands()

    def _write_creadr(self, off: int, value: int) -> None:
        if self.enabled:
            raise Errno(E.EBUSY)
        reg = value & 0xFFFE0
        if reg >= self._cmd_queue_size():
            raise Errno(E.EINVAL)
        self.creadr = reg

    def _write_baser(self, off: int, value: int) -> None:
        """A write with Valid clear drops every device (or collection) mapping."""
        if self.enabled or off not in (0x100, 0x108):
            return
        ro = BASER_DEVICE_RESET if off == 0x100 else BASER_COLL_RESET
        reg = _sanitise_baser((value & ~BASER_RO) | (ro & BASER_RO), inner=59, outer=53)
        if off == 0x108:
            reg &= ~(1 << 62)  # no two-level collection table
        # 6.12/7.3 (its_baser_change_unmaps): any change drops the mappings, not only Valid clear
        drop = not reg & VALID or reg != (self.baser_device if off == 0x100 else self.baser_coll) \
            and bool(self.vm.backend.host.fact("its_baser_change_unmaps"))
        if off == 0x100:
            self.baser_device = reg
            if drop:
                self._free_devices()
        else:
            self.baser_coll = reg
            if drop:
                self._free_collections()

    # -- mappings --------------------------------------------------------------------------
    def _free_device(self, devid: int) -> None:
        for ite in self.devices.pop(devid).ites.values():
            self.lpis.put(ite.lpi)

    def _free_devices(self) -> None:
        for devid in list(self.devices):
            self._free_device(devid)

    def _free_collection(self, icid: int) -> None:
        coll = self.collections.pop(icid, None)
        if coll is None:
            return
        for dev in self.devices.values():
            for ite in dev.ites.values():
                if ite.coll is coll:
                    ite.coll = None

    def _free_collections(self) -> None:
        for icid in list(self.collections):
            self._free_collection(icid)

    def _visible(self, gpa: int) -> bool:
        return self.vm.memslot_uaddr(gpa, 1, False) is not None   # kvm_is_visible_gfn

    def _check_id(self, baser: int, ident: int) -> int | None:
        """vgic_its_check_id: the gpa of the entry for ``ident`` (walking a two-level
        device table), or None when it has no place in guest RAM."""
        kind, esz = baser >> 56 & 7, (baser >> 48 & 0x1F) + 1
        if kind not in (GITS_BASER_TYPE_DEVICE, GITS_BASER_TYPE_COLLECTION) or ident > MAX_DEVID:
            return None   # device IDs: 16 bits (GITS_TYPER.Devbits); collection IDs: 16 bits
        base, size, indirect = baser_table(baser)
        if not indirect:
            if ident >= size // esz:
                return None
            addr = base + ident * esz
        else:
            index = ident // (SZ_64K // esz)
            if index >= size // 8:
                return None
            try:
                l1 = unpack(self.vm.read_guest(base + index * 8, 8))
            except Errno:
                return None
            if not l1 >> 63:
                return None
            addr = (l1 & 0xFFFFFFFFF << 16) + ident % (SZ_64K // esz) * esz
        return addr if self._visible(addr) else None

    def _check_event(self, dev: ItsDevice, event: int) -> bool:
        """vgic_its_check_event_id."""
        return event < 1 << dev.bits and self._visible(dev.itt_addr + event * ESZ)

    def _vcpu(self, coll: Coll | None) -> int | None:
        return self.lpis.vcpu_by_rdbase(coll.target) if coll is not None and coll.mapped else None

    def _find_ite(self, devid: int, event: int) -> ItsIte | None:
        dev = self.devices.get(devid)
        return dev.ites.get(event) if dev is not None else None

    # -- the command queue (vgic_its_process_commands) ------------------------------------------
    def _process_commands(self) -> None:
        """Only while enabled; a command whose read fails is skipped (GICv3 spec 6.3.2)."""
        if not self.enabled:
            return
        base = self.cbaser & 0xFFFFFFFFFF << 12   # GITS_CBASER_ADDRESS
        while self.cwriter != self.creadr:
            try:
                raw = self.vm.read_guest(base + self.creadr, CMD_SIZE)
            except Errno:
                raw = None
            if raw is not None:
                cmd = [unpack(raw[i:i + 8]) for i in range(0, CMD_SIZE, 8)]
                handler = self._COMMANDS.get(cmd[0] & 0xFF)
                if handler is not None:
                    try:
                        handler(self, cmd)
                    except (_CmdError, Errno):
                        pass   # E_ITS_* and failed guest accesses: the command is dropped
            self.creadr += CMD_SIZE
            if self.creadr == self._cmd_queue_size():
                self.creadr = 0

    def _cmd_mapd(self, cmd: list[int]) -> None:
        devid, valid = _cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 2, 63, 1)
        bits, itt = _cmd_field(cmd, 1, 0, 5) + 1, _cmd_field(cmd, 2, 8, 44) << 8
        gpa = self._check_id(self.baser_device, devid)
        if gpa is None or valid and bits > ITS_IDBITS:
            raise _CmdError("E_ITS_MAPD_DEVICE_OOR / E_ITS_MAPD_ITTSIZE_OOR")
        if devid in self.devices:
            self._free_device(devid)
        if not valid:
            self.vm.write_guest(gpa, bytes(ESZ))   # the DTE is cleared
            return
        self.devices[devid] = ItsDevice(itt, bits)

    def _cmd_mapc(self, cmd: list[int]) -> None:
        """6.1 checks RDbase (a vCPU index) even to unmap; 6.12 (a vcpu_id) only to map."""
        icid, rdbase = _cmd_field(cmd, 2, 0, 16), _cmd_field(cmd, 2, 16, 32)
        vid = self.lpis.vcpu_by_rdbase(rdbase)
        if vid is None and (_cmd_field(cmd, 2, 63, 1) or self.vm.backend.host.kernel == "6.1"):
            raise _CmdError("E_ITS_MAPC_PROCNUM_OOR")
        if not _cmd_field(cmd, 2, 63, 1):
            self._free_collection(icid)
            return
        assert vid is not None
        coll = self.collections.get(icid)
        if coll is None:
            if self._check_id(self.baser_coll, icid) is None:
                raise _CmdError("E_ITS_MAPC_COLLECTION_OOR")
            self.collections[icid] = Coll(icid, rdbase)
            return
        coll.target = rdbase
        for dev in self.devices.values():   # update_affinity_collection
            for ite in dev.ites.values():
                if ite.coll is coll:
                    ite.lpi.target = vid

    def _cmd_mapi(self, cmd: list[int]) -> None:
        devid, event, icid = _cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32), _cmd_field(cmd, 2, 0, 16)
        dev = self.devices.get(devid)
        if dev is None:
            raise _CmdError("E_ITS_MAPTI_UNMAPPED_DEVICE")
        if not self._check_event(dev, event):
            raise _CmdError("E_ITS_MAPTI_ID_OOR")
        intid = _cmd_field(cmd, 1, 32, 32) if cmd[0] & 0xFF == MAPTI else event
        idbits = (self.vm.part.propbaser & 0x1F) + 1
        if intid < GIC_LPI_OFFSET or intid >= 1 << min(idbits, ITS_IDBITS):
            raise _CmdError("E_ITS_MAPTI_PHYSICALID_OOR")
        if event in dev.ites:
            return   # an existing mapping: UNPREDICTABLE, left alone
        coll = self.collections.get(icid)
        new = coll is None
        if coll is None:
            if self._check_id(self.baser_coll, icid) is None:
                raise _CmdError("E_ITS_MAPC_COLLECTION_OOR")
            coll = self.collections[icid] = Coll(icid)   # an unmapped collection
        try:
            lpi = self.lpis.add(intid, self._vcpu(coll))
        except Errno:
            if new:
                self._free_collection(icid)
            raise
        dev.ites[event] = ItsIte(lpi, coll)

    def _cmd_movi(self, cmd: list[int]) -> None:
        ite = self._find_ite(_cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32))
        if ite is None or ite.coll is None or not ite.coll.mapped:
            raise _CmdError("E_ITS_MOVI_UNMAPPED_INTERRUPT / _COLLECTION")
        coll = self.collections.get(_cmd_field(cmd, 2, 0, 16))
        if coll is None or not coll.mapped:
            raise _CmdError("E_ITS_MOVI_UNMAPPED_COLLECTION")
        ite.coll = coll
        ite.lpi.target = self._vcpu(coll)

    def _cmd_discard(self, cmd: list[int]) -> None:
        devid, event = _cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32)
        ite = self._find_ite(devid, event)
        if ite is None or ite.coll is None or not ite.coll.mapped:
            raise _CmdError("E_ITS_DISCARD_UNMAPPED_INTERRUPT")
        dev = self.devices[devid]
        del dev.ites[event]
        self.lpis.put(ite.lpi)
        self.vm.write_guest(dev.itt_addr + event * ESZ, bytes(ESZ))   # the ITE is cleared

    def _cmd_clear(self, cmd: list[int]) -> None:
        ite = self._find_ite(_cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32))
        if ite is None:
            raise _CmdError("E_ITS_CLEAR_UNMAPPED_INTERRUPT")
        ite.lpi.pending = False

    def _cmd_inv(self, cmd: list[int]) -> None:
        ite = self._find_ite(_cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32))
        if ite is None:
            raise _CmdError("E_ITS_INV_UNMAPPED_INTERRUPT")
        self.lpis.update_config(ite.lpi)

    def _cmd_invall(self, cmd: list[int]) -> None:
        vid = self._vcpu(self.collections.get(_cmd_field(cmd, 2, 0, 16)))
        if vid is None:
            raise _CmdError("E_ITS_INVALL_UNMAPPED_COLLECTION")
        for intid in sorted(self.lpis.irqs):
            try:
                self.lpis.update_config(self.lpis.irqs[intid], only_for=vid)
            except Errno:
                pass

    def _cmd_movall(self, cmd: list[int]) -> None:
        """The LPIs targeting RDbase move to RDbase2 (their ITEs keep their collections).
        Seen so on Debian 6.12.117 too, though 6.12.94's code moved every LPI."""
        v1 = self.lpis.vcpu_by_rdbase(_cmd_field(cmd, 2, 16, 32))
        v2 = self.lpis.vcpu_by_rdbase(_cmd_field(cmd, 3, 16, 32))
        if v1 is None or v2 is None:
            raise _CmdError("E_ITS_MOVALL_PROCNUM_OOR")
        every = self.vm.backend.host.fact("its_movall_moves_every_lpi")   # 6.18.15
        for lpi in self.lpis.irqs.values():
            if lpi.target == v1 or every:
                lpi.target = v2

    def _cmd_int(self, cmd: list[int]) -> None:
        self._trigger(_cmd_field(cmd, 0, 32, 32), _cmd_field(cmd, 1, 0, 32))

    _COMMANDS: dict[int, Callable[["ItsModel", list[int]], None]] = {
        MAPD: _cmd_mapd, MAPC: _cmd_mapc, MAPI: _cmd_mapi, MAPTI: _cmd_mapi, MOVI: _cmd_movi,
        DISCARD: _cmd_discard, CLEAR: _cmd_clear, MOVALL: _cmd_movall, INT: _cmd_int, INV: _cmd_inv,
        INVALL: _cmd_invall, SYNC: lambda self, cmd: None}

    # -- MSIs (vgic_its_trigger_msi) ----------------------------------------------------------
    def _trigger(self, devid: int, event: int) -> None:
        if not self.enabled:
            raise Errno(E.EBUSY)
        ite = self._find_ite(devid, event)
        vid = self._vcpu(ite.coll) if ite is not None else None
        if ite is None or vid is None:
            raise _CmdError("E_ITS_INT_UNMAPPED_INTERRUPT")
        if not self.lpis.enabled(vid):
            raise Errno(E.EBUSY)   # LPIs disabled at the target redistributor
        ite.lpi.pending = True

    def inject(self, devid: int, eventid: int) -> int:
        """vgic_its_inject_msi: 1 delivered, 0 not mapped; EBUSY: ITS or LPIs off."""
        try:
            self._trigger(devid, eventid)
        except _CmdError:
            return 0
        return 1

    # -- CTRL ---------------------------------------------------------------------------------
    def _reset(self) -> None:
        """vgic_its_reset ("ITS Reset State"): the ABI fields of the BASERs are kept."""
        self.baser_device &= ~VALID
        self.baser_coll &= ~VALID
        self.cbaser = self.creadr = self.cwriter = 0
        self.enabled = False
        self._free_devices()
        self._free_collections()

    def _save_tables(self) -> None:
        """vgic_its_save_tables_v0: devices in DeviceID order (each ITT, then its DTE),
        then the collection list in order, ended by an invalid entry if room remains."""
        vm = self.vm
        fact = vm.backend.host.fact
        if self.baser_device & VALID:
            ids = sorted(self.devices)
            if fact("its_save_skips_lost_devices"):   # 6.12/7.3: a device with no DTE slot is left out
                ids = [d for d in ids if self._check_id(self.baser_device, d) is not None]
            for i, devid in enumerate(ids):
                gpa = self._check_id(self.baser_device, devid)
                if gpa is None:
                    raise Errno(E.EINVAL)
                dev = self.devices[devid]
                events = sorted(dev.ites)
                if fact("its_ite_next_skips_no_collection"):   # 7.3: next offsets skip the zero ITEs
                    linked = [e for e in events if dev.ites[e].coll is not None]
                for j, event in enumerate(events):
                    ite = dev.ites[event]
                    if ite.coll is None:
                        # its collection was unmapped (MAPC V=0): 6.18.15's vgic_its_save_ite
                        # dereferences NULL (no kernel answer to copy); the others write a zero ITE
                        if fact("its_save_ite_no_collection_oopses"):
                            raise Errno(E.ENOSYS)
                        vm.write_guest(dev.itt_addr + event * ESZ, bytes(ESZ))
                        continue
                    if fact("its_ite_next_skips_no_collection"):
                        k = linked.index(event)
                        nxt = min(linked[k + 1] - event, ITE_NEXT_MAX) if k + 1 < len(linked) else 0
                    else:
                        nxt = min(events[j + 1] - event, ITE_NEXT_MAX) if j + 1 < len(events) else 0
                    vm.write_guest(dev.itt_addr + event * ESZ, pack(Ite(ite.lpi.intid, ite.coll.icid, nxt).encode()))
                nxt = min(ids[i + 1] - devid, DTE_NEXT_MAX) if i + 1 < len(ids) else 0
                vm.write_guest(gpa, pack(Dte(dev.itt_addr, dev.bits - 1, nxt).encode()))
        if self.baser_coll & VALID:
            gpa, size, _ = baser_table(self.baser_coll)
            end = gpa + size
            for coll in self.collections.values():
                vm.write_guest(gpa, pack(Cte(coll.icid, coll.target).encode()))
                gpa += ESZ
            if gpa != end:
                vm.write_guest(gpa, bytes(ESZ))

    def _restore_tables(self) -> None:
        """vgic_its_restore_tables_v0: collections, then devices; on any error
        every mapping made so far is dropped again."""
        try:
            self._restore_collections()
        except Errno:
            self._free_collections()
            raise
        try:
            self._restore_devices()
        except Errno:
            self._free_devices()
            self._free_collections()
            raise

    def _restore_collections(self) -> None:
        if not self.baser_coll & VALID:
            return
        base, size, _ = baser_table(self.baser_coll)
        for gpa in range(base, base + size, ESZ):
            v = unpack(self.vm.read_guest(gpa, ESZ))
            if not v >> 63:
                return   # the end of the list
            target, icid = v >> 16 & 0xFFFFFFFF, v & 0xFFFF
            if target != COLLECTION_NOT_MAPPED and self.lpis.vcpu_by_rdbase(target) is None:
                raise Errno(E.EINVAL)
            if icid in self.collections:
                raise Errno(E.EEXIST)
            if self._check_id(self.baser_coll, icid) is None:
                raise Errno(E.EINVAL)
            self.collections[icid] = Coll(icid, target)

    def _scan(self, base: int, size: int, first: int, fn: Callable[[int, int], int]) -> int:
        """scan_its_table: ``fn(id, entry)`` gives the ID offset to the next entry
        (0: that was the last); 1 when the table ends first."""
        ident, gpa, left = first, base, size
        # one copy of the table when all of it is RAM (the kernel reads entry by
        # entry: where part of it is not, entry by entry here too, faulting where it does)
        try:
            table = self.vm.read_guest(base, size)
        except Errno:
            table = None
        while True:
            if table is not None and not any(table[gpa - base:gpa - base + ESZ]):
                # a run of zero entries at once: every fn here (L1 entry, DTE, ITE)
                # answers 1 to a zero (invalid) entry, so the kernel steps over each
                m = _NONZERO.search(table, gpa - base)
                k = ((m.start() if m else len(table)) - (gpa - base)) // ESZ
                if k * ESZ >= left:
                    return 1
                ident, gpa, left = ident + k, gpa + k * ESZ, left - k * ESZ
            raw = table[gpa - base:gpa - base + ESZ] if table is not None else self.vm.read_guest(gpa, ESZ)
            step = fn(ident, unpack(raw))
            if step <= 0:
                return step
            if step * ESZ >= left:
                return 1
            ident, gpa, left = ident + step, gpa + step * ESZ, left - step * ESZ

    def _restore_devices(self) -> None:
        baser = self.baser_device
        if not baser & VALID:
            return
        base, size, indirect = baser_table(baser)
        if not indirect:
            self._scan(base, size, 0, self._restore_dte)
            return
        per_page = SZ_64K // ESZ

        def l1(index: int, entry: int) -> int:
            if not entry >> 63:
                return 1
            return self._scan(entry & 0xFFFFFFFFF << 16, SZ_64K, index * per_page, self._restore_dte)

        self._scan(base, size, 0, l1)

    def _restore_dte(self, devid: int, v: int) -> int:
        d = Dte.decode(v)
        if not d.valid:
            return 1
        # more EventID bits than MAPD takes: refused (6.12.92+; Debian's 6.1 too)
        if d.size + 1 > ITS_IDBITS and self.vm.backend.host.fact("its_dte_eventid_bits_checked") or \
                self._check_id(self.baser_device, devid) is None:
            raise Errno(E.EINVAL)
        dev = self.devices[devid] = ItsDevice(d.itt_addr, d.size + 1)
        try:
            self._scan(d.itt_addr, (1 << dev.bits) * ESZ, 0, lambda event, e: self._restore_ite(dev, event, e))
        except Errno:
            self._free_device(devid)
            raise
        return d.next

    def _restore_ite(self, dev: ItsDevice, event: int, v: int) -> int:
        e = Ite.decode(v)
        if not e.valid:
            return 1
        coll = self.collections.get(e.icid)
        if (e.lpi < GIC_LPI_OFFSET or event + e.next >= 1 << dev.bits or coll is None
                or not self._check_event(dev, event)):
            raise Errno(E.EINVAL)
        dev.ites[event] = ItsIte(self.lpis.add(e.lpi, self._vcpu(coll)), coll)
        return e.next
