"""powerpc arch hooks of the mock, and its interrupt controllers: the Freescale
MPIC (arch/powerpc/kvm/mpic.c) and XICS (book3s_xics.c).  No powerpc KVM host
runs here: every rule below is read from the 6.12 source (README, support
matrix), and the tests run on the mock only.

Modelled: MPIC creation (one per VM: EINVAL), the base address (256 KiB
alignment, 0 unmaps), register access by offset (4-byte aligned offsets inside
the decoded regions, else ENXIO; PIR not writable; IVPR with its writable bits,
other registers stored as written, unwritten ones reading as their reset values
or 0xFFFFFFFF), IRQ_ACTIVE (0..256; a level source follows the line, an edge
source latches a 1).  XICS creation (EEXIST), source numbers 16..2^20-1 (ENOENT),
the state word round trip with the priority/server check (every vCPU id is
taken as a connected server) and masked-pending; delivery to an ICP is not
modelled (a pending unmasked source reads back as presented).
"""
from __future__ import annotations

import errno as E
from typing import ClassVar

from ...devices.mpic import IVPR_ACTIVITY, IVPR_MASK, IVPR_SENSE, MAX_SRC, MPIC_SIZE, REGIONS
from ...devices.xics import FIRST_SOURCE, LEVEL_SENSITIVE, MASKED, NR_SOURCES, PENDING, PRESENTED, QUEUED
from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base
from .kernel import DeviceModel, Errno, device_model

IVPR_WRITABLE = IVPR_MASK | 1 << 23 | IVPR_SENSE | 0xF << 16 | 0xFFFF   # mask, polarity, sense, priority, vector
# reset values openpic_reset leaves (per-source IVPR masked, IDR to CPU 0; CTPR 15)
RESET = {"IVPR": IVPR_MASK, "IDR": 1, "CTPR": 15}


class _MpicModel(DeviceModel):
    def create(self) -> None:
        if any(isinstance(d, _MpicModel) for d in self.vm.devices):
            raise Errno(E.EINVAL)   # kvm->arch.mpic already set: one MPIC of either kind
        self.base = 0
        self.regs: dict[int, int] = {}
        self.pending: dict[int, bool] = {}
        a = self.arch
        self.MISC, self.BASE = a.const("KVM_DEV_MPIC_GRP_MISC"), a.const("KVM_DEV_MPIC_BASE_ADDR")
        self.REG, self.ACTIVE = a.const("KVM_DEV_MPIC_GRP_REGISTER"), a.const("KVM_DEV_MPIC_GRP_IRQ_ACTIVE")

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE or group == self.REG or group == self.ACTIVE and attr <= MAX_SRC:
            return
        raise Errno(E.ENXIO)

    def _region(self, off: int) -> str:
        """access_reg: 4-byte aligned offsets inside a decoded region."""
        if off & 3:
            raise Errno(E.ENXIO)
        for name, (lo, hi) in REGIONS.items():
            if lo <= off < hi:
                return name
        raise Errno(E.ENXIO)

    def _reset_value(self, off: int, region: str) -> int:
        if region == "source":
            return {0x0: RESET["IVPR"], 0x10: RESET["IDR"]}.get(off & 0x1F, 0xFFFFFFFF)
        if region == "cpu" and off & 0xFFF == 0x80:
            return RESET["CTPR"]
        return 0 if region in ("msi", "summary") else 0xFFFFFFFF

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE:
            self.user.put("__u64", addr, self.base)
        elif group == self.REG:
            region = self._region(attr)
            self.user.put("__u32", addr, self.regs.get(attr, self._reset_value(attr, region)))
        elif group == self.ACTIVE:
            if attr > MAX_SRC:
                raise Errno(E.EINVAL)
            self.user.put("__u32", addr, int(self.pending.get(attr, False)))
        else:
            raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        if group == self.MISC and attr == self.BASE:
            base = self.user.get("__u64", addr)
            if base % MPIC_SIZE:
                raise Errno(E.EINVAL)
            self.base = base
        elif group == self.REG:
            value = self.user.get("__u32", addr)
            region = self._region(attr)
            if attr == 0x1090:
                raise Errno(E.ENXIO)   # PIR: not writable this way
            if region == "source" and attr & 0x1F == 0:
                old = self.regs.get(attr, RESET["IVPR"])
                value = old & IVPR_ACTIVITY | value & IVPR_WRITABLE
            self.regs[attr] = value
        elif group == self.ACTIVE:
            if attr > MAX_SRC:
                raise Errno(E.EINVAL)
            level = self.user.get("__u32", addr)
            if level not in (0, 1):
                raise Errno(E.EINVAL)
            ivpr = self.regs.get(0x10000 + attr * 0x20, RESET["IVPR"])
            if ivpr & IVPR_SENSE:      # level-sensitive: follows the line
                self.pending[attr] = bool(level)
            elif level:                # edge: a rising line latches
                self.pending[attr] = True
        else:
            raise Errno(E.ENXIO)


@device_model
class Mpic20Model(_MpicModel):
    type_name = "FSL_MPIC_20"


@device_model
class Mpic42Model(_MpicModel):
    type_name = "FSL_MPIC_42"


@device_model
class XicsModel(DeviceModel):
    type_name = "XICS"
    one_per_vm: ClassVar[int | None] = E.EEXIST

    def create(self) -> None:
        self.sources: dict[int, dict[str, object]] = {}
        self.G = self.arch.const("KVM_DEV_XICS_GRP_SOURCES")

    def has(self, group: int, attr: int, addr: int) -> None:
        if group == self.G and FIRST_SOURCE <= attr < NR_SOURCES:
            return
        raise Errno(E.ENXIO)

    def set(self, group: int, attr: int, addr: int) -> None:
        """xics_set_source."""
        if group != self.G:
            raise Errno(E.ENXIO)
        if not FIRST_SOURCE <= attr < NR_SOURCES:
            raise Errno(E.ENOENT)
        val = self.user.get("__u64", addr)
        server, prio = val & 0xFFFFFFFF, val >> 32 & 0xFF
        if prio != 0xFF and server not in self.vm.vcpus:
            raise Errno(E.EINVAL)
        masked = bool(val & MASKED)
        presented = bool(val & (PRESENTED | PENDING))
        self.sources[attr] = {
            "server": server, "priority": 0xFF if masked else prio, "saved": prio,
            "lsi": bool(val & LEVEL_SENSITIVE), "presented": presented, "queued": bool(val & QUEUED),
            # icp_deliver_irq of a pending source: a masked one stays pending at the source
            "masked_pending": bool(val & PENDING) and (masked or prio == 0xFF)}

    def get(self, group: int, attr: int, addr: int) -> None:
        """xics_get_source."""
        if group != self.G:
            raise Errno(E.ENXIO)
        s = self.sources.get(attr & 0xFFFFFFFF)
        if s is None:
            raise Errno(E.ENOENT)
        val = int(s["server"])  # type: ignore[call-overload]
        val |= (MASKED | int(s["saved"]) << 32) if s["priority"] == 0xFF else int(s["priority"]) << 32  # type: ignore[call-overload]
        if s["lsi"]:
            val |= LEVEL_SENSITIVE | (PENDING if s["presented"] else 0)
        elif s["masked_pending"]:
            val |= PENDING
        val |= PRESENTED if s["presented"] else 0
        val |= QUEUED if s["queued"] else 0
        self.user.put("__u64", addr, val)


class ArchModel(_Base):
    def device_types(self) -> list[str]:
        return ["VFIO", "FSL_MPIC_20", "FSL_MPIC_42", "XICS"]
