"""Kvm: the system fd (/dev/kvm)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import _check
from ._fd import _cap
from .attr_target import _AttrTarget
from .devices.x86 import X86SystemAttrs
from .vm import Vm

if TYPE_CHECKING:
    from .backends import Backend


class Kvm(_AttrTarget, X86SystemAttrs):
    """The system fd (/dev/kvm)."""

    _kind = "system"
    _process_bound = False   # /dev/kvm ioctls work from a fork child too

    def __init__(self, backend: "Backend") -> None:
        cell = backend.new_cell()
        backend.open_system(cell)
        super().__init__(backend, cell, None)
        self.backend_reason = ""

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kvmdev.Kvm {self.backend} {self.arch} {state}>"

    @property
    def kernel_release(self) -> str:
        """The release of the kernel answering (uname -r; the mock's emulated one)."""
        return self._backend.kernel_release

    @property
    def kernel_version(self) -> tuple[int, int]:
        """(major, minor) of kernel_release, for behaviour that differs by kernel."""
        m = re.match(r"(\d+)\.(\d+)", self.kernel_release)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        return self._ioctl_val("KVM_GET_API_VERSION", 0)

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the system fd."""
        return self._ioctl_val("KVM_CHECK_EXTENSION", _cap(self._arch, cap))

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd for struct kvm_run."""
        return self._ioctl_val("KVM_GET_VCPU_MMAP_SIZE", 0)

    def create_vm(self, machine_type: int = 0, *, ipa_bits: int | None = None) -> "Vm":
        """KVM_CREATE_VM.  ``ipa_bits`` (arm64, KVM_CAP_ARM_VM_IPA_SIZE) sets the
        guest physical address size in the machine type's low byte."""
        machine_type = _check.u64("machine_type of KVM_CREATE_VM", machine_type)
        if ipa_bits is not None:
            ipa_bits = _check.integer("ipa_bits", ipa_bits)
            if self.arch != "arm64":
                raise ValueError("ipa_bits is an arm64 machine type (KVM_VM_TYPE_ARM_IPA_SIZE)")
            mask = self._arch.const("KVM_VM_TYPE_ARM_IPA_SIZE_MASK")
            if not 0 < ipa_bits <= mask:
                raise ValueError(f"ipa_bits must be 1..{mask}, not {ipa_bits}")
            machine_type = (machine_type & ~mask) | ipa_bits
        vm = Vm(self._backend, self._ioctl_val_fd("KVM_CREATE_VM", machine_type), self)
        vm.machine_type = machine_type
        return vm
