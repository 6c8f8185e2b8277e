"""s390 arch hooks of the mock: the FLIC (arch/s390/kvm/interrupt.c) and the VM
attributes (kvm-s390.c).  No s390 KVM host runs here: every rule below is read
from the 6.12 source (README, support matrix), and the tests run on the mock.

FLIC: one per VM (EINVAL); unknown groups EINVAL for set and get (ENXIO for
HAS); GET_ALL_IRQS returns the count (ENOMEM for a short buffer, EINVAL for 0 or
past KVM_S390_FLIC_MAX_BUFFER), in the kernel's order (adapter I/O, I/O, other
floating, service, machine check); ENQUEUE of whole records of the injectable
types; adapters (id < 64, maskable), CLEAR_IO_IRQ, AISM/AISM_ALL (AIS facility),
AIRQ_INJECT (a masked adapter's interrupt is suppressed).  The VM attributes:
MEM_CTRL, TOD (a clock running with the host's), CRYPTO, CPU_MODEL and
MIGRATION with their EBUSY-once-a-vCPU-exists rules and HAS answers.
"""
from __future__ import annotations

import errno as E
import struct
import time
from typing import Any, ClassVar

from ...devices.flic import IRQ_SIZE, MAX_BUFFER
from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base
from .kernel import AttrModel, DeviceModel, Errno, MockVm, device_model

IO_MAX, MCHK, SERVICE, PFAULT_INIT, PFAULT_DONE, VIRTIO = (0xFFFDFFFF, 0xFFFE1000, 0xFFFF2401, 0xFFFE0004,
                                                           0xFFFE0005, 0xFFFF2603)
ENQUEUABLE = {PFAULT_DONE, VIRTIO, SERVICE, MCHK, PFAULT_INIT}
MAX_FLOAT = 2 ** 16              # per queue before EBUSY (KVM_S390_MAX_FLOAT_IRQS)
U64 = (1 << 64) - 1


def feat_mask(raw: bytes) -> int:
    """struct kvm_s390_vm_cpu_feat as one 1024-bit number, feature 0 its top bit
    (the kernel's set_bit_inv numbering over the __u64 words)."""
    words = struct.unpack("=16Q", raw)
    return sum(w << 64 * (15 - i) for i, w in enumerate(words))


def feat_bytes(mask: int) -> bytes:
    return struct.pack("=16Q", *(mask >> 64 * (15 - i) & U64 for i in range(16)))


def _isc(io_int_word: int) -> int:
    return io_int_word >> 27 & 7


@device_model
class FlicModel(DeviceModel):
    type_name = "FLIC"
    one_per_vm: ClassVar[int | None] = E.EINVAL

    def create(self) -> None:
        c = self.arch.const
        self.G = {n: c("KVM_DEV_FLIC_" + n) for n in (
            "GET_ALL_IRQS", "ENQUEUE", "CLEAR_IRQS", "APF_ENABLE", "APF_DISABLE_WAIT", "ADAPTER_REGISTER",
            "ADAPTER_MODIFY", "CLEAR_IO_IRQ", "AISM", "AIRQ_INJECT", "AISM_ALL")}
        self.irqs: list[bytes] = []                     # pending floating interrupts, raw records
        self.adapters: dict[int, dict[str, int]] = {}
        self.simm = self.nimm = 0
        self.ais = 72 in self.vm.backend.host.s390_facilities

    def has(self, group: int, attr: int, addr: int) -> None:
        if group not in self.G.values():
            raise Errno(E.ENXIO)

    # -- get --------------------------------------------------------------------------------
    def get(self, group: int, attr: int, addr: int) -> int:
        if group == self.G["GET_ALL_IRQS"]:
            if attr == 0 or attr > MAX_BUFFER:
                raise Errno(E.EINVAL)
            out = self._ordered()
            if len(out) > attr // IRQ_SIZE:
                raise Errno(E.ENOMEM)
            self.user.write(addr, b"".join(out))
            return len(out)
        if group == self.G["AISM_ALL"]:
            if attr < 2:
                raise Errno(E.EINVAL)
            if not self.ais:
                raise Errno(E.EOPNOTSUPP)
            self.user.write(addr, bytes([self.simm, self.nimm]))
            return 0
        raise Errno(E.EINVAL)   # the FLIC's answer to everything else, unknown groups too

    def _ordered(self) -> list[bytes]:
        """get_all_floating_irqs' order: I/O by ISC, then the other floating ones,
        then service, then machine checks."""
        def rank(raw: bytes) -> tuple[int, int]:
            t = int.from_bytes(raw[:8], "little")
            if t <= IO_MAX:
                return 0, _isc(int.from_bytes(raw[16:20], "little"))
            return {SERVICE: 2, MCHK: 3}.get(t, 1), 0
        return sorted(self.irqs, key=rank)

    # -- set --------------------------------------------------------------------------------
    def set(self, group: int, attr: int, addr: int) -> None:
        g = {v: k for k, v in self.G.items()}.get(group)
        if g is None or g == "GET_ALL_IRQS":   # flic_set_attr's default: EINVAL
            raise Errno(E.EINVAL)
        getattr(self, "_" + g.lower())(attr, addr)

    def _enqueue(self, attr: int, addr: int) -> None:
        length = attr & 0xFFFFFFFF
        if length % IRQ_SIZE or length > MAX_BUFFER:
            raise Errno(E.EINVAL)
        for off in range(0, length, IRQ_SIZE):   # each record injected as read: earlier ones stay
            raw = self.user.read(addr + off, IRQ_SIZE)
            t = int.from_bytes(raw[:8], "little")
            if t > IO_MAX and t not in ENQUEUABLE or t == PFAULT_INIT:
                raise Errno(E.EINVAL)
            if len(self.irqs) >= MAX_FLOAT:
                raise Errno(E.EBUSY)
            if t == SERVICE and any(int.from_bytes(r[:8], "little") == SERVICE for r in self.irqs):
                continue   # one service interrupt pending at most (its parameters merge)
            self.irqs.append(raw)

    def _clear_irqs(self, attr: int, addr: int) -> None:
        self.irqs.clear()

    def _apf_enable(self, attr: int, addr: int) -> None:
        pass

    def _apf_disable_wait(self, attr: int, addr: int) -> None:
        pass

    def _adapter_register(self, attr: int, addr: int) -> None:
        a = self.user.read_struct("struct kvm_s390_io_adapter", addr)
        if a.id >= 64 or a.id in self.adapters:
            raise Errno(E.EINVAL)
        self.adapters[int(a.id)] = {"isc": int(a.isc), "maskable": int(a.maskable), "masked": 0}

    def _adapter_modify(self, attr: int, addr: int) -> None:
        r = self.user.read_struct("struct kvm_s390_io_adapter_req", addr)
        ad = self.adapters.get(int(r.id))
        if ad is None:
            raise Errno(E.EINVAL)
        if r.type == 1:      # MASK
            if not ad["maskable"]:
                raise Errno(E.EINVAL)
            ad["masked"] = int(r.mask)
        elif r.type not in (2, 3):   # MAP, UNMAP: nothing to do
            raise Errno(E.EINVAL)

    def _clear_io_irq(self, attr: int, addr: int) -> None:
        if attr != 4:
            raise Errno(E.EINVAL)
        schid = self.user.get("__u32", addr)
        if schid == 0:
            raise Errno(E.EINVAL)
        self.irqs = [r for r in self.irqs if int.from_bytes(r[:8], "little") > IO_MAX
                     or (int.from_bytes(r[8:10], "little") << 16 | int.from_bytes(r[10:12], "little")) != schid]

    def _aism(self, attr: int, addr: int) -> None:
        if not self.ais:
            raise Errno(E.EOPNOTSUPP)
        r = self.user.read_struct("struct kvm_s390_ais_req", addr)
        if r.isc > 7 or r.mode not in (0, 1):
            raise Errno(E.EINVAL)
        bit = 0x80 >> r.isc
        self.simm = self.simm | bit if r.mode == 1 else self.simm & ~bit
        if r.mode == 0:
            self.nimm &= ~bit

    def _airq_inject(self, attr: int, addr: int) -> None:
        ad = self.adapters.get(attr)
        if ad is None:
            raise Errno(E.EINVAL)
        if ad["masked"]:
            return   # suppressed
        bit = 0x80 >> ad["isc"]
        if self.simm & bit:
            if self.nimm & bit:
                return   # single mode: one interrupt until the guest re-enables
            self.nimm |= bit
        word = 1 << 31 | ad["isc"] << 27   # adapter interruption, ISC
        raw = (0x04000000).to_bytes(8, "little") + bytes(4) + bytes(4) + word.to_bytes(4, "little")
        self.irqs.append(raw + bytes(IRQ_SIZE - len(raw)))

    def _aism_all(self, attr: int, addr: int) -> None:
        if not self.ais:
            raise Errno(E.EOPNOTSUPP)
        self.simm, self.nimm = self.user.read(addr, 2)


class S390VmAttrs(AttrModel):
    """kvm_s390_vm_{has,get,set}_attr."""

    def __init__(self, vm: MockVm) -> None:
        self.vm = vm
        self.user = vm.user
        self.host = vm.backend.host
        c = vm.backend.arch.const
        self.MEM, self.TOD, self.CRYPTO, self.CPU, self.MIG = (
            c("KVM_S390_VM_" + n) for n in ("MEM_CTRL", "TOD", "CRYPTO", "CPU_MODEL", "MIGRATION"))
        self.cmma = False
        self.mem_limit = self.host.s390_mem_limit
        self.epoch = 0
        self.processor = bytes(vm.backend.arch.ffi.sizeof("struct kvm_s390_vm_cpu_processor"))
        self.feat = bytes(128)
        self.subfunc = bytes(2048)
        self.migrating = False

    def _host_tod(self) -> int:
        return time.monotonic_ns() * 4096 // 1000 & U64   # TOD units: bit 51 is a microsecond

    def has(self, group: int, attr: int, addr: int) -> None:
        ok = {self.MEM: {0, 1} if self.host.s390_cmma else set(), self.TOD: {0, 1},
              self.CRYPTO: {0, 1, 2, 3} | ({4, 5} if self.host.s390_ap else set()),
              self.CPU: set(range(8))}.get(group)
        if group == self.MEM:
            ok = (ok or set()) | {2}
        if group == self.MIG or ok is not None and attr in ok:
            return
        raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        if group == self.MEM and attr == 2:
            self.user.put("__u64", addr, self.mem_limit)
        elif group == self.TOD and attr in (0, 1, 2):
            tod = (self._host_tod() + self.epoch) & U64
            if attr == 0:
                self.user.put("__u64", addr, tod)
            elif attr == 1:
                self.user.put("__u8", addr, 0)
            else:
                self.user.write(addr, bytes(8) + tod.to_bytes(8, "little"))
        elif group == self.CPU and attr in range(8):
            self.user.write(addr, self._cpu(attr))
        elif group == self.MIG and attr == 2:
            self.user.put("__u64", addr, int(self.migrating))
        else:
            raise Errno(E.ENXIO)

    def _cpu(self, attr: int) -> bytes:
        h = self.host
        ffi = self.vm.backend.arch.ffi
        if attr == 0:
            return self.processor
        if attr == 1:
            m = ffi.new("struct kvm_s390_vm_cpu_machine *", {"cpuid": h.s390_cpuid, "ibc": 0})
            for i, f in enumerate(h.s390_facility_words):
                m.fac_mask[i] = m.fac_list[i] = f
            return bytes(ffi.buffer(m))
        if attr == 2:
            return self.feat
        if attr == 3:
            return feat_bytes(h.s390_machine_feat)
        if attr in (4, 5):
            return self.subfunc if attr == 4 else bytes(2048)
        return bytes(8)   # UV features: none on this host

    def set(self, group: int, attr: int, addr: int) -> None:
        has_vcpus = bool(self.vm.vcpus)
        if group == self.MEM:
            if attr == 0:
                if not self.host.s390_cmma:
                    raise Errno(E.ENXIO)
                if has_vcpus:
                    raise Errno(E.EBUSY)
                self.cmma = True
            elif attr == 1:
                if not self.host.s390_cmma:
                    raise Errno(E.ENXIO)
                if not self.cmma:
                    raise Errno(E.EINVAL)
            elif attr == 2:
                limit = self.user.get("__u64", addr)
                if self.mem_limit != U64 and limit > self.mem_limit:
                    raise Errno(E.E2BIG)
                if limit == 0:
                    raise Errno(E.EINVAL)
                if has_vcpus:
                    raise Errno(E.EBUSY)
                self.mem_limit = limit
            else:
                raise Errno(E.ENXIO)
        elif group == self.TOD:
            if attr == 0:
                self.epoch = (self.user.get("__u64", addr) - self._host_tod()) & U64
            elif attr == 1:
                if self.user.get("__u8", addr):
                    raise Errno(E.EINVAL)
            elif attr == 2:
                raw = self.user.read(addr, 16)
                if raw[0] and 139 not in self.host.s390_facilities:
                    raise Errno(E.EINVAL)
                self.epoch = (int.from_bytes(raw[8:], "little") - self._host_tod()) & U64
            else:
                raise Errno(E.ENXIO)
        elif group == self.CRYPTO:
            if attr in (0, 1, 2, 3):
                if 76 not in self.host.s390_facilities:
                    raise Errno(E.EINVAL)
            elif attr in (4, 5):
                if not self.host.s390_ap:
                    raise Errno(E.EOPNOTSUPP)
            else:
                raise Errno(E.ENXIO)
        elif group == self.CPU:
            self._set_cpu(attr, addr, has_vcpus)
        elif group == self.MIG:
            if attr == 1:
                if not self.vm.memslots:
                    raise Errno(E.EINVAL)
                self.migrating = True
            elif attr == 0:
                self.migrating = False
            else:
                raise Errno(E.ENXIO)
        else:
            raise Errno(E.ENXIO)

    def _set_cpu(self, attr: int, addr: int, has_vcpus: bool) -> None:
        if attr == 0:
            if has_vcpus:
                raise Errno(E.EBUSY)
            self.processor = self.user.read(addr, len(self.processor))
        elif attr == 2:
            raw = self.user.read(addr, 128)
            if feat_mask(raw) & ~self.host.s390_machine_feat:
                raise Errno(E.EINVAL)
            if has_vcpus:
                raise Errno(E.EBUSY)
            self.feat = raw
        elif attr == 4:
            if has_vcpus:
                raise Errno(E.EBUSY)
            self.subfunc = self.user.read(addr, 2048)
        elif attr == 6:
            if self.user.get("__u64", addr):
                raise Errno(E.EINVAL)   # no UV feature on this host
            if has_vcpus:
                raise Errno(E.EBUSY)
        else:
            raise Errno(E.ENXIO)


class ArchModel(_Base):
    vm_attr_errno = E.ENXIO

    def device_types(self) -> list[str]:
        return ["VFIO", "FLIC"]

    def vm_attrs(self, vm: MockVm) -> Any:
        return S390VmAttrs(vm)
