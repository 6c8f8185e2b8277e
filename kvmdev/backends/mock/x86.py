"""x86_64 arch hooks of the mock (arch/x86/kvm/x86.c)."""
from __future__ import annotations

import errno as E
from typing import Any

from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base
from .kernel import AttrModel, Errno, MockVcpu, MockVm
from .x86_hosts import X86Host, x86_host


class SystemAttrs(AttrModel):
    """kvm_x86_dev_has_attr / kvm_x86_dev_get_attr; there is no set on /dev/kvm."""

    def __init__(self, arch_model: "ArchModel") -> None:
        self.m = arch_model
        a = arch_model.backend.arch
        self.GRP = a.const("KVM_X86_GRP_SYSTEM")
        self.XCOMP = a.const("KVM_X86_XCOMP_GUEST_SUPP")

    def has(self, group: int, attr: int, addr: int) -> None:
        if group != self.GRP or attr != self.XCOMP:
            raise Errno(E.ENXIO)  # vendor groups (SEV) are ENXIO on this Intel-like host

    def get(self, group: int, attr: int, addr: int) -> None:
        self.has(group, attr, addr)
        self.m.backend.user.put("__u64", addr, self.m.host.xcomp_guest_supp)


class VcpuAttrs(AttrModel):
    """KVM_VCPU_TSC_CTRL (kvm_arch_tsc_{has,get,set}_attr)."""

    def __init__(self, vcpu: MockVcpu) -> None:
        self.vcpu = vcpu
        self.user = vcpu.user
        a = vcpu.backend.arch
        self.GRP = a.const("KVM_VCPU_TSC_CTRL")
        self.OFFSET = a.const("KVM_VCPU_TSC_OFFSET")
        self.tsc_offset = 0

    def has(self, group: int, attr: int, addr: int) -> None:
        if group != self.GRP or attr != self.OFFSET:
            raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        self.has(group, attr, addr)
        self.user.put("__u64", addr, self.tsc_offset)

    def set(self, group: int, attr: int, addr: int) -> None:
        self.has(group, attr, addr)
        value = self.user.get("__u64", addr)      # read (EFAULT) even where it is not kept
        if not self.vcpu.backend.host.x86_tsc_pinned:
            self.tsc_offset = value


def _enable_cap(user: Any, arg: int, accepted: frozenset[int]) -> int:
    """KVM_ENABLE_CAP as the recorded host answered it: EINVAL for flags or for a
    capability it does not enable (kvm_vm_ioctl_enable_cap / kvm_vcpu_ioctl_enable_cap
    default); a recorded one is accepted with zero args (its effects are not modelled)."""
    ec = user.read_struct("struct kvm_enable_cap", arg)
    if ec.flags or ec.cap not in accepted or any(ec.args):
        raise Errno(E.EINVAL)
    return 0


class X86Vm:
    """kvm->arch: the in-kernel irqchip (KVM_CREATE_IRQCHIP: PIC, IOAPIC, LAPICs) and
    KVM_ENABLE_CAP on the VM fd."""

    def __init__(self, vm: MockVm, host: X86Host | None = None) -> None:
        self.vm, self.host = vm, host
        self.irqchip = False

    def ioctl_KVM_CREATE_IRQCHIP(self, arg: int) -> int:
        """kvm_arch_vm_ioctl: EEXIST for a second one, EINVAL once a vCPU exists."""
        if self.irqchip:
            raise Errno(E.EEXIST)
        if self.vm.vcpus:
            raise Errno(E.EINVAL)
        self.irqchip = True
        return 0

    def ioctl_KVM_ENABLE_CAP(self, arg: int) -> int:
        ec = self.vm.user.read_struct("struct kvm_enable_cap", arg)
        if self.host and not ec.flags and self.host.caps.get(ec.cap) and ec.cap == APIC_BUS_CYCLES_NS:
            # kvm_vm_ioctl_enable_cap: a bus cycle that cannot overflow tmict_to_ns(), then an
            # in-kernel irqchip (ENXIO without), before any vCPU (EINVAL after)
            ns = int(ec.args[0])
            if not ns or ns * 0xFFFFFFFF * 128 >= 1 << 64:
                raise Errno(E.EINVAL)
            if not self.irqchip:
                raise Errno(E.ENXIO)
            if self.vm.vcpus:
                raise Errno(E.EINVAL)
            return 0
        return _enable_cap(self.vm.user, arg, self.host.enable_cap_vm if self.host else frozenset())


APIC_BUS_CYCLES_NS = 237   # KVM_CAP_X86_APIC_BUS_CYCLES_NS


# KVM_X86_REG_ID(KVM_X86_REG_TYPE_MSR, index): KVM_REG_X86 | KVM_REG_SIZE_U64 | 2 << 32 | index
X86_REG_MSR = 0x2030000200000000


# KVM_MP_STATE_*: RUNNABLE, and the LAPIC's (UNINITIALIZED, INIT_RECEIVED, HALTED,
# SIPI_RECEIVED, AP_RESET_HOLD)
MP_RUNNABLE, MP_UNINITIALIZED, MP_SIPI_RECEIVED = 0, 1, 4
MP_LAPIC_STATES = frozenset({1, 2, 3, 4, 9})


class X86Vcpu:
    """vcpu->arch: the ioctls of kvm_arch_vcpu_ioctl the mock models."""

    def __init__(self, vcpu: MockVcpu, host: X86Host | None = None) -> None:
        self.vcpu = vcpu
        self.host = host
        self.msrs: dict[int, int] = {}     # what SET_ONE_REG wrote (0 until then)
        # kvm_arch_vcpu_create: RUNNABLE without an in-kernel irqchip and for the BSP
        # (vcpu_id 0), UNINITIALIZED (waiting for INIT/SIPI) for the others
        irqchip = getattr(vcpu.vm.part, "irqchip", False)
        self.mp_state = MP_RUNNABLE if not irqchip or vcpu.id == 0 else MP_UNINITIALIZED

    def ioctl_KVM_GET_MP_STATE(self, arg: int) -> int:
        self.vcpu.user.put("__u32", arg, self.mp_state)
        return 0

    def ioctl_KVM_SET_MP_STATE(self, arg: int) -> int:
        """kvm_arch_vcpu_ioctl_set_mpstate: RUNNABLE always; the LAPIC states only with
        the in-kernel irqchip; SIPI_RECEIVED is taken as INIT_RECEIVED with the SIPI
        pending, which the next GET (kvm_apic_accept_events) delivers: RUNNABLE."""
        state = self.vcpu.user.get("__u32", arg)
        if state != MP_RUNNABLE:
            if state not in MP_LAPIC_STATES or not getattr(self.vcpu.vm.part, "irqchip", False):
                raise Errno(E.EINVAL)
        self.mp_state = MP_RUNNABLE if state == MP_SIPI_RECEIVED else state
        return 0

    def ioctl_KVM_GET_REG_LIST(self, arg: int) -> int:
        """6.18 (kvm_get_reg_list): no register without CET in the guest's CPUID,
        so n = 0 succeeds and nothing is copied."""
        self.vcpu.user.get("__u64", arg)
        self.vcpu.user.put("__u64", arg, 0)
        return 0

    def ioctl_KVM_ENABLE_CAP(self, arg: int) -> int:
        return _enable_cap(self.vcpu.user, arg, self.host.enable_cap_vcpu if self.host else frozenset())

    def _msr(self, arg: int) -> tuple[int, int]:
        """kvm_get_set_one_reg: only advertised MSRs (the recorded ranges), as u64."""
        r = self.vcpu.user.read_struct("struct kvm_one_reg", arg)
        index = int(r.id) - X86_REG_MSR
        if self.host is None or not 0 <= index <= 0xFFFFFFFF or \
                not any(lo <= index <= hi for lo, hi in self.host.one_reg_msrs):
            raise Errno(E.EINVAL)
        return index, int(r.addr)

    def ioctl_KVM_GET_ONE_REG(self, arg: int) -> int:
        index, addr = self._msr(arg)
        self.vcpu.user.put("__u64", addr, self.msrs.get(index, 0))
        return 0

    def ioctl_KVM_SET_ONE_REG(self, arg: int) -> int:
        index, addr = self._msr(arg)
        self.msrs[index] = self.vcpu.user.get("__u64", addr)
        return 0


class ArchModel(_Base):
    system_attr_errno = E.EINVAL   # kvm_arch_dev_ioctl default (SET on /dev/kvm)
    vm_attr_errno = E.ENOTTY       # kvm_arch_vm_ioctl has no device-attr ioctls here

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.record = x86_host(self.host.x86_release)
        if self.record is not None:
            self.user_addr_max = self.record.user_addr_max
            for name, number in backend.arch.constants("KVM_CAP_").items():
                if number in self.record.caps:   # named answers (explicit overrides kept)
                    self.host.caps.setdefault(name, self.record.caps[number])

    def check_extension_number(self, vm: MockVm | None, number: int) -> int:
        name = self.backend.cap_name(number)
        if self.record is not None and vm is not None and number in self.record.vm_caps:
            return self.record.vm_caps[number]     # the VM fd's own answer, named or not
        if self.record is None or (name and name in self.host.caps):
            return self.check_extension(vm, name)
        return self.record.caps.get(number, 0)

    def check_memory_region(self, vm: MockVm, gpa: int, size: int) -> None:
        """kvm_arch_prepare_memory_region: the slot's last gfn within kvm_mmu_max_gfn()."""
        bits = self.record.max_gpa_bits if self.record else 52
        if gpa + size > 1 << bits:
            raise Errno(E.EINVAL)

    def vm_part(self, vm: MockVm) -> X86Vm:
        return X86Vm(vm, self.record)

    def vcpu_part(self, vcpu: MockVcpu) -> X86Vcpu:
        return X86Vcpu(vcpu, self.record)

    def system_attrs(self) -> AttrModel:
        return SystemAttrs(self)

    def vcpu_attrs(self, vcpu: MockVcpu) -> AttrModel:
        return VcpuAttrs(vcpu)

    def irqfd_allowed(self, vm: MockVm, resample: bool) -> None:
        """kvm_arch_irqfd_allowed: an in-kernel irqchip (EINVAL without)."""
        if not vm.part.irqchip:
            raise Errno(E.EINVAL)
