"""s390 FLIC, the floating interrupt controller (Documentation/virt/kvm/devices/
s390_flic.rst; arch/s390/kvm/interrupt.c).  One per VM.

    flic = vm.create_device("FLIC")
    flic.enqueue({"type": KVM_S390_INT_SERVICE, "ext": {"ext_params": 0x10}})
    flic.get_all_irqs()                         # [dict, ...], retried with a bigger buffer on ENOMEM
    flic.adapter_register(1, isc=3, maskable=True)
    flic.adapter_modify(1, "MASK", mask=1)
    flic.clear_io_irq(0x00010001)               # schid: subchannel id << 16 | subchannel nr

Quirk (s390_flic.rst): the FLIC answers an unknown group with EINVAL, not ENXIO
(a get of groups other than GET_ALL_IRQS and AISM_ALL too); HAS says ENXIO.
Several groups take a length or an id in ``attr`` rather than a name.
"""
from __future__ import annotations

from typing import Any, Mapping

from .. import _check
from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..errors import KvmError
from ..device import DEVICE_CLASSES, Device

IRQ_SIZE = 72                           # sizeof(struct kvm_s390_irq)
MAX_BUFFER = 0x2000000                  # KVM_S390_FLIC_MAX_BUFFER
AIS_MODES = {"ALL": 0, "SINGLE": 1}     # kernel-internal KVM_S390_AIS_MODE_* (not in the uapi)
ADAPTER_OPS = {"MASK": 1, "MAP": 2, "UNMAP": 3}
_G = _attrs.Group
_A = _attrs.Attr


def _groups() -> list[_attrs.Group]:
    n = "KVM_DEV_FLIC_"
    return [
        _G(n + "GET_ALL_IRQS", (), any_attr=_A("length", None, _attrs.RO),
           doc="copy every floating interrupt out; attr: the buffer's length; returns how many"),
        _G(n + "ENQUEUE", (), any_attr=_A("length", None, _attrs.WO),
           doc="inject struct kvm_s390_irq records; attr: their total length"),
        _G(n + "CLEAR_IRQS", (), any_attr=_A("none", None, _attrs.WO), doc="drop every floating interrupt"),
        _G(n + "APF_ENABLE", (), any_attr=_A("none", None, _attrs.WO), doc="enable async page faults"),
        _G(n + "APF_DISABLE_WAIT", (), any_attr=_A("none", None, _attrs.WO),
           doc="disable async page faults, waiting for the pending ones"),
        _G(n + "ADAPTER_REGISTER", (), any_attr=_A("adapter", "struct kvm_s390_io_adapter", _attrs.WO),
           doc="register an I/O adapter (id < 64)"),
        _G(n + "ADAPTER_MODIFY", (), any_attr=_A("req", "struct kvm_s390_io_adapter_req", _attrs.WO),
           doc="mask, map or unmap an I/O adapter"),
        _G(n + "CLEAR_IO_IRQ", (), any_attr=_A("size", "__u32", _attrs.WO),
           doc="drop the pending I/O interrupts of a subchannel; attr: 4 (sizeof the u32 schid)"),
        _G(n + "AISM", (), any_attr=_A("req", "struct kvm_s390_ais_req", _attrs.WO),
           doc="adapter-interruption suppression mode of an ISC"),
        _G(n + "AIRQ_INJECT", (), any_attr=_A("adapter id", None, _attrs.WO),
           doc="inject an adapter interrupt; attr: the adapter id"),
        _G(n + "AISM_ALL", (), any_attr=_A("size", "struct kvm_s390_ais_all", _attrs.RW),
           doc="every ISC's suppression mode (get: attr is the buffer size, >= 2)"),
    ]


_attrs.register("FLIC", _groups())
_register_errnos({
    ("KVM_CREATE_DEVICE", "FLIC", None, "EINVAL"): "a FLIC already exists in this VM (one per VM)",
    (None, "FLIC", None, "EINVAL"):
        "an invalid request: an unknown group (the FLIC answers EINVAL, not ENXIO: s390_flic.rst), a get "
        "of a write-only group, a bad length, id, ISC, mode, or type",
    ("KVM_GET_DEVICE_ATTR", "FLIC", "KVM_DEV_FLIC_GET_ALL_IRQS", "ENOMEM"):
        "the buffer is too small for all pending interrupts (retry with a bigger one)",
    (None, "FLIC", "KVM_DEV_FLIC_ENQUEUE", "EBUSY"): "the interrupt queue is full",
    (None, "FLIC", None, "EOPNOTSUPP"): "adapter-interruption suppression needs the AIS facility (72)",
})


def _irq_dict(ffi: Any, irq: Any) -> dict[str, Any]:
    """A struct kvm_s390_irq as {type, <payload by type>}."""
    t = int(irq.type)
    out: dict[str, Any] = {"type": t}
    if t <= 0xFFFDFFFF:
        out["io"] = {f: int(getattr(irq.u.io, f)) for f in ("subchannel_id", "subchannel_nr", "io_int_parm",
                                                               "io_int_word")}
    elif t == 0xFFFE1000:
        out["mchk"] = {"cr14": int(irq.u.mchk.cr14), "mcic": int(irq.u.mchk.mcic)}
    else:
        out["ext"] = {"ext_params": int(irq.u.ext.ext_params), "ext_params2": int(irq.u.ext.ext_params2)}
    return out


# groups whose attr is the byte length the kernel copies at attr.addr
# (get_all_floating_irqs copies up to attr bytes; enqueue_floating_irqs reads attr bytes)
LENGTH_IN_ATTR = frozenset({"KVM_DEV_FLIC_GET_ALL_IRQS", "KVM_DEV_FLIC_ENQUEUE"})


class Flic(Device):
    """KVM_DEV_TYPE_FLIC."""

    def _length_ctype(self, group: int | str, attr: int | str, ctype: str | None) -> str | None:
        """For a group whose attr is a length, the buffer the kernel copies:
        ``__u8[attr]`` whatever ``ctype`` says (a ``ctype`` of another size is a
        ValueError before the ioctl); no buffer where the kernel refuses the length
        before copying (0, or above KVM_S390_FLIC_MAX_BUFFER: EINVAL)."""
        g, a, _ = self._resolve(group, attr)
        if self.attr_table.group_name(g) not in LENGTH_IN_ATTR:
            return ctype
        if ctype is not None and ctype != "void" and ctype != f"__u8[{a}]":
            try:
                size = self._arch.ffi.sizeof(ctype)
            except Exception:   # noqa: BLE001 - cffi's parse errors: not a C type
                size = -1
            if size != a:
                raise ValueError(f"FLIC {self.attr_table.group_name(g)}: the kernel copies attr = {a} bytes at "
                                 f"attr.addr; ctype {_check.show(ctype)} is {size if size >= 0 else 'no C type'} "
                                 "(leave ctype out: the buffer is sized from attr)")
        return f"__u8[{a}]" if 0 < a <= MAX_BUFFER else "void"

    def get_attr(self, group: int | str, attr: int | str, *, ctype: str | None = None,
                 value_in: Any = None) -> Any:
        """KVM_GET_DEVICE_ATTR; for KVM_DEV_FLIC_GET_ALL_IRQS the buffer has attr bytes."""
        return super().get_attr(group, attr, ctype=self._length_ctype(group, attr, ctype), value_in=value_in)

    def set_attr(self, group: int | str, attr: int | str, value: Any = None, *, ctype: str | None = None) -> None:
        """KVM_SET_DEVICE_ATTR; for KVM_DEV_FLIC_ENQUEUE ``value`` is attr bytes."""
        ct = self._length_ctype(group, attr, ctype)
        if ct == "void" and value is not None:
            ct = ctype   # the kernel refuses the length first; the fd layer checks value against ctype
        super().set_attr(group, attr, value, ctype=ct)

    def _raw(self, ioctl: str, group: str, attr: int, addr: int = 0) -> int:
        return self.attr_ioctl(ioctl, group, attr, addr)

    def enqueue(self, *irqs: dict[str, Any]) -> None:
        """KVM_DEV_FLIC_ENQUEUE: inject records ({"type": ..., "io"/"ext"/"mchk": {...}})."""
        ffi = self._arch.ffi
        buf = ffi.new("struct kvm_s390_irq[]", max(len(irqs), 1))
        for i, irq in enumerate(irqs):       # every record checked before the ioctl
            where = f"KVM_DEV_FLIC_ENQUEUE record {i}"
            if not isinstance(irq, Mapping):
                raise TypeError(f"{where}: a dict {{'type': ..., 'io'/'ext'/'mchk'/'pgm': {{...}}}}, "
                                f"not {type(irq).__name__} {_check.show(irq)}")
            if "type" not in irq:
                raise ValueError(f"{where}: no 'type' (the kernel's KVM_S390_* interrupt type)")
            extra = set(irq) - {"type", "io", "ext", "mchk", "pgm"}
            if extra:
                raise ValueError(f"{where}: unknown keys {sorted(map(str, extra))}")
            buf[i].type = _check.u64(f"{where} type", irq["type"])
            for part in ("io", "ext", "mchk", "pgm"):
                fields = irq.get(part, {})
                if not isinstance(fields, Mapping):
                    raise TypeError(f"{where}: {_check.show(part)} is a dict of fields, not {type(fields).__name__}")
                st = getattr(buf[i].u, part)
                types = {f: t.type for f, t in ffi.typeof(st).fields}
                for k, v in fields.items():
                    if k not in types:
                        raise ValueError(f"{where}: struct kvm_s390_{part}_info has no field "
                                         f"{_check.show(k)} ({', '.join(sorted(types))})")
                    t = types[k]
                    if t.kind == "primitive":
                        setattr(st, k, _check.uint(f"{where} {part}.{k}", v, 8 * ffi.sizeof(t)))
                    elif isinstance(v, (bytes, bytearray)) and len(v) == ffi.sizeof(t):
                        ffi.memmove(getattr(st, k), bytes(v), len(v))
                    else:
                        raise TypeError(f"{where} {part}.{k}: {ffi.sizeof(t)} bytes, not {_check.show(v)}")
        self._raw("KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_ENQUEUE", len(irqs) * IRQ_SIZE,
                  int(ffi.cast("uintptr_t", buf)))

    def get_all_irqs(self, start: int = 16) -> list[dict[str, Any]]:
        """KVM_DEV_FLIC_GET_ALL_IRQS, doubling the buffer while the kernel says
        ENOMEM (up to KVM_S390_FLIC_MAX_BUFFER)."""
        ffi = self._arch.ffi
        n = _check.uint("start of KVM_DEV_FLIC_GET_ALL_IRQS", start, 32)
        if not 0 < n * IRQ_SIZE <= MAX_BUFFER:
            raise ValueError(f"get_all_irqs: start {n} records is outside 1..{MAX_BUFFER // IRQ_SIZE} "
                             f"(KVM_S390_FLIC_MAX_BUFFER {MAX_BUFFER} bytes)")
        while True:
            buf = ffi.new("struct kvm_s390_irq[]", n)
            try:
                got = self._raw("KVM_GET_DEVICE_ATTR", "KVM_DEV_FLIC_GET_ALL_IRQS", n * IRQ_SIZE,
                                int(ffi.cast("uintptr_t", buf)))
            except KvmError as e:
                if e.errno == 12 and (n * 2) * IRQ_SIZE <= MAX_BUFFER:   # ENOMEM
                    n *= 2
                    continue
                raise
            return [_irq_dict(ffi, buf[i]) for i in range(got)]

    def clear_irqs(self) -> None:
        self._raw("KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_CLEAR_IRQS", 0)

    def apf_enable(self) -> None:
        self._raw("KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_APF_ENABLE", 0)

    def apf_disable_wait(self) -> None:
        self._raw("KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_APF_DISABLE_WAIT", 0)

    def adapter_register(self, adapter_id: int, isc: int, maskable: bool = False, swap: bool = False,
                         flags: int = 0) -> None:
        self.set_attr("KVM_DEV_FLIC_ADAPTER_REGISTER", 0, {"id": adapter_id, "isc": isc, "maskable": int(maskable),
                                                          "swap": int(swap), "flags": flags})

    def adapter_modify(self, adapter_id: int, op: str, mask: int = 0, addr: int = 0) -> None:
        """KVM_S390_IO_ADAPTER_MASK / _MAP / _UNMAP."""
        if op not in ADAPTER_OPS:
            raise ValueError(f"op is one of {', '.join(ADAPTER_OPS)}, not {_check.show(op)}")
        self.set_attr("KVM_DEV_FLIC_ADAPTER_MODIFY", 0,
                      {"id": adapter_id, "type": ADAPTER_OPS[op], "mask": mask, "addr": addr})

    def clear_io_irq(self, schid: int) -> None:
        """KVM_DEV_FLIC_CLEAR_IO_IRQ (attr = 4, the size of the u32 schid)."""
        self.set_attr("KVM_DEV_FLIC_CLEAR_IO_IRQ", 4, schid)

    def aism(self, isc: int, mode: str) -> None:
        if mode not in AIS_MODES:
            raise ValueError(f"mode is one of {', '.join(AIS_MODES)}, not {_check.show(mode)}")
        self.set_attr("KVM_DEV_FLIC_AISM", 0, {"isc": isc, "mode": AIS_MODES[mode]})

    def airq_inject(self, adapter_id: int) -> None:
        self._raw("KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_AIRQ_INJECT", adapter_id)

    def aism_all(self) -> tuple[int, int]:
        """(simm, nimm): the ISCs in single (suppression) mode and with a suppressed interrupt."""
        v = self.get_attr("KVM_DEV_FLIC_AISM_ALL", 2)
        return int(v.simm), int(v.nimm)

    def set_aism_all(self, simm: int, nimm: int) -> None:
        self.set_attr("KVM_DEV_FLIC_AISM_ALL", 0, {"simm": simm, "nimm": nimm})


DEVICE_CLASSES["FLIC"] = Flic
