"""s390 VM attributes on the VM fd (Documentation/virt/kvm/devices/vm.rst;
arch/s390/kvm/kvm-s390.c kvm_s390_vm_{set,get,has}_attr).

    vm.s390.mem_limit = 1 << 40                # KVM_S390_VM_MEM_LIMIT_SIZE (before any vCPU)
    vm.s390.tod                                # KVM_S390_VM_TOD_LOW; .tod_ext: (epoch_idx, tod)
    vm.s390.cpu_processor()                    # struct kvm_s390_vm_cpu_processor, as a cffi struct
    vm.s390.crypto("ENABLE_AES_KW")
    vm.s390.migration_start(); vm.s390.migration_status
"""
from __future__ import annotations

from typing import Any

from .. import attrs as _attrs
from ..errnos import register as _register_errnos
from ..vm import Vm
from .. import _check

S390 = ("s390",)
_A, _G, RW, RO, WO = _attrs.Attr, _attrs.Group, _attrs.RW, _attrs.RO, _attrs.WO
MEM, TOD, CRYPTO, CPU, MIG = ("KVM_S390_VM_" + n for n in ("MEM_CTRL", "TOD", "CRYPTO", "CPU_MODEL", "MIGRATION"))
CRYPTO_OPS = ("ENABLE_AES_KW", "ENABLE_DEA_KW", "DISABLE_AES_KW", "DISABLE_DEA_KW", "ENABLE_APIE", "DISABLE_APIE")

_attrs.register("vm", [
    _G(MEM, arches=S390, doc="memory control", attrs=(
        _A("KVM_S390_VM_MEM_ENABLE_CMMA", None, WO, "enable CMMA (before any vCPU)"),
        _A("KVM_S390_VM_MEM_CLR_CMMA", None, WO, "clear the CMMA state of every page"),
        _A("KVM_S390_VM_MEM_LIMIT_SIZE", "__u64", RW, "the guest memory limit (lowered only, before any vCPU)"))),
    _G(TOD, arches=S390, doc="the guest TOD clock", attrs=(
        _A("KVM_S390_VM_TOD_LOW", "__u64", RW, "the TOD clock"),
        _A("KVM_S390_VM_TOD_HIGH", "__u8", RW, "the TOD epoch extension (0 without the multiple-epoch facility)"),
        _A("KVM_S390_VM_TOD_EXT", "struct kvm_s390_vm_tod_clock", RW, "epoch index and TOD clock"))),
    _G(CRYPTO, arches=S390, doc="crypto wrapping keys and AP interpretation", attrs=tuple(
        _A("KVM_S390_VM_CRYPTO_" + op, None, WO, op.replace("_", " ").lower()) for op in CRYPTO_OPS)),
    _G(CPU, arches=S390, doc="the guest CPU model (set before any vCPU)", attrs=(
        _A("KVM_S390_VM_CPU_PROCESSOR", "struct kvm_s390_vm_cpu_processor", RW, "cpuid, ibc, facility list"),
        _A("KVM_S390_VM_CPU_MACHINE", "struct kvm_s390_vm_cpu_machine", RO, "what the host offers"),
        _A("KVM_S390_VM_CPU_PROCESSOR_FEAT", "struct kvm_s390_vm_cpu_feat", RW, "the guest's CPU features"),
        _A("KVM_S390_VM_CPU_MACHINE_FEAT", "struct kvm_s390_vm_cpu_feat", RO, "the host's CPU features"),
        _A("KVM_S390_VM_CPU_PROCESSOR_SUBFUNC", "struct kvm_s390_vm_cpu_subfunc", RW, "the guest's subfunctions"),
        _A("KVM_S390_VM_CPU_MACHINE_SUBFUNC", "struct kvm_s390_vm_cpu_subfunc", RO, "the host's subfunctions"),
        _A("KVM_S390_VM_CPU_PROCESSOR_UV_FEAT_GUEST", "__u64", RW, "the UV features the guest may use"),
        _A("KVM_S390_VM_CPU_MACHINE_UV_FEAT_GUEST", "__u64", RO, "the UV features the host offers"))),
    _G(MIG, arches=S390, doc="migration mode (CMMA dirty tracking)", attrs=(
        _A("KVM_S390_VM_MIGRATION_STOP", None, WO, "leave migration mode"),
        _A("KVM_S390_VM_MIGRATION_START", None, WO, "enter migration mode (needs memslots)"),
        _A("KVM_S390_VM_MIGRATION_STATUS", "__u64", RO, "1 in migration mode"))),
])
_register_errnos({
    (None, "vm", MEM, "EBUSY"): "a vCPU is already defined (vm.rst)",
    (None, "vm", MEM, "E2BIG"): "the limit is above the current one (it may only be lowered)",
    (None, "vm", MEM, "EINVAL"): "a zero limit, CMMA not enabled, or (ENABLE_CMMA) 1M huge pages allowed",
    (None, "vm", MEM, "ENXIO"): "the host has no CMMA, or no such attribute",
    (None, "vm", TOD, "EINVAL"): "a non-zero epoch extension without the multiple-epoch facility (139)",
    (None, "vm", CRYPTO, "EINVAL"): "the host lacks MSA extension 3 (facility 76)",
    (None, "vm", CRYPTO, "EOPNOTSUPP"): "the host has no AP instructions",
    (None, "vm", CPU, "EBUSY"): "a vCPU is already defined: the CPU model is fixed",
    (None, "vm", CPU, "EINVAL"): "features not offered by the host",
    (None, "vm", MIG, "EINVAL"): "no memslot (or one without a dirty bitmap while CMMA is in use)",
})


class S390VmAttrs:
    """The s390 VM attributes of one VM (``vm.s390``)."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm

    # memory
    @property
    def mem_limit(self) -> int:
        return int(self.vm.get_attr(MEM, "KVM_S390_VM_MEM_LIMIT_SIZE"))

    @mem_limit.setter
    def mem_limit(self, limit: int) -> None:
        self.vm.set_attr(MEM, "KVM_S390_VM_MEM_LIMIT_SIZE", limit)

    def enable_cmma(self) -> None:
        self.vm.set_attr(MEM, "KVM_S390_VM_MEM_ENABLE_CMMA")

    def clear_cmma(self) -> None:
        self.vm.set_attr(MEM, "KVM_S390_VM_MEM_CLR_CMMA")

    # TOD
    @property
    def tod(self) -> int:
        return int(self.vm.get_attr(TOD, "KVM_S390_VM_TOD_LOW"))

    @tod.setter
    def tod(self, value: int) -> None:
        self.vm.set_attr(TOD, "KVM_S390_VM_TOD_LOW", value)

    @property
    def tod_high(self) -> int:
        return int(self.vm.get_attr(TOD, "KVM_S390_VM_TOD_HIGH"))

    @tod_high.setter
    def tod_high(self, value: int) -> None:
        self.vm.set_attr(TOD, "KVM_S390_VM_TOD_HIGH", value)

    @property
    def tod_ext(self) -> tuple[int, int]:
        v = self.vm.get_attr(TOD, "KVM_S390_VM_TOD_EXT")
        return int(v.epoch_idx), int(v.tod)

    @tod_ext.setter
    def tod_ext(self, value: tuple[int, int]) -> None:
        self.vm.set_attr(TOD, "KVM_S390_VM_TOD_EXT", {"epoch_idx": value[0], "tod": value[1]})

    # crypto
    def crypto(self, op: str) -> None:
        if op not in CRYPTO_OPS:
            raise ValueError(f"op is one of {', '.join(CRYPTO_OPS)}, not {_check.show(op)}")
        self.vm.set_attr(CRYPTO, "KVM_S390_VM_CRYPTO_" + op)

    # CPU model: cffi structs in and out
    def cpu_processor(self) -> Any:
        return self.vm.get_attr(CPU, "KVM_S390_VM_CPU_PROCESSOR")

    def set_cpu_processor(self, value: Any) -> None:
        self.vm.set_attr(CPU, "KVM_S390_VM_CPU_PROCESSOR", value)

    def cpu_machine(self) -> Any:
        return self.vm.get_attr(CPU, "KVM_S390_VM_CPU_MACHINE")

    def cpu_feat(self, machine: bool = False) -> Any:
        return self.vm.get_attr(CPU, "KVM_S390_VM_CPU_" + ("MACHINE" if machine else "PROCESSOR") + "_FEAT")

    def set_cpu_feat(self, value: Any) -> None:
        self.vm.set_attr(CPU, "KVM_S390_VM_CPU_PROCESSOR_FEAT", value)

    def cpu_subfunc(self, machine: bool = False) -> Any:
        return self.vm.get_attr(CPU, "KVM_S390_VM_CPU_" + ("MACHINE" if machine else "PROCESSOR") + "_SUBFUNC")

    def set_cpu_subfunc(self, value: Any) -> None:
        self.vm.set_attr(CPU, "KVM_S390_VM_CPU_PROCESSOR_SUBFUNC", value)

    # migration
    def migration_start(self) -> None:
        self.vm.set_attr(MIG, "KVM_S390_VM_MIGRATION_START")

    def migration_stop(self) -> None:
        self.vm.set_attr(MIG, "KVM_S390_VM_MIGRATION_STOP")

    @property
    def migration_status(self) -> int:
        return int(self.vm.get_attr(MIG, "KVM_S390_VM_MIGRATION_STATUS"))


_attrs.add_arch_member(Vm, "s390", ("s390",), property(lambda self: S390VmAttrs(self), doc="s390 VM attributes"))
