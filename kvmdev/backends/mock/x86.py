"""x86_64 arch hooks of the mock (arch/x86/kvm/x86.c)."""
from __future__ import annotations

import errno as E

from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base
from .kernel import AttrModel, Errno, MockVcpu, MockVm


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


class X86Vcpu:
    """vcpu->arch: the ioctls of kvm_arch_vcpu_ioctl the mock models."""

    def __init__(self, vcpu: MockVcpu) -> None:
        self.vcpu = vcpu

    def ioctl_KVM_GET_REG_LIST(self, arg: int) -> int:
        """6.18 (kvm_get_reg_list): no register without CET in the guest's CPUID,
        so n = 0 succeeds and nothing is copied."""
        self.vcpu.user.get("__u64", arg)
        self.vcpu.user.put("__u64", arg, 0)
        return 0


class X86Vm:
    """kvm->arch: the in-kernel irqchip (KVM_CREATE_IRQCHIP: PIC, IOAPIC, LAPICs)."""

    def __init__(self, vm: MockVm) -> None:
        self.vm = vm
        self.irqchip = False

    def ioctl_KVM_CREATE_IRQCHIP(self, arg: int) -> int:
        """kvm_arch_vm_ioctl: EEXIST for a second one, EINVAL once a vCPU exists."""
        if self.irqchip:
            raise Errno(E.EEXIST)
        if self.vm.vcpus:
            raise Errno(E.EINVAL)
        self.irqchip = True
        return 0


class ArchModel(_Base):
    system_attr_errno = E.EINVAL   # kvm_arch_dev_ioctl default (SET on /dev/kvm)
    vm_attr_errno = E.ENOTTY       # kvm_arch_vm_ioctl has no device-attr ioctls here

    def system_attrs(self) -> AttrModel:
        return SystemAttrs(self)

    def vcpu_attrs(self, vcpu: MockVcpu) -> AttrModel:
        return VcpuAttrs(vcpu)

    def vcpu_part(self, vcpu: MockVcpu) -> X86Vcpu:
        return X86Vcpu(vcpu)

    def vm_part(self, vm: MockVm) -> X86Vm:
        return X86Vm(vm)

    def irqfd_allowed(self, vm: MockVm, resample: bool) -> None:
        """kvm_arch_irqfd_allowed: an in-kernel irqchip (EINVAL without)."""
        if not vm.part.irqchip:
            raise Errno(E.EINVAL)
