"""What the mock emulates: a host kernel of one architecture.

Defaults are what the real kernels here answer (x86_64: the 6.18 host of the
CI machines; arm64: Debian 6.12/6.1 under QEMU with GIC v3 + ITS).  Every
field can be overridden: ``kvmdev.open(backend="mock", arch="arm64", gic=2)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# KVM_CHECK_EXTENSION answers by architecture (names from cdefs)
_CAPS: dict[str, dict[str, int]] = {
    "x86_64": {
        "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_NR_VCPUS": 2, "KVM_CAP_MAX_VCPUS": 1024,
        "KVM_CAP_NR_MEMSLOTS": 32764, "KVM_CAP_MAX_VCPU_ID": 4096, "KVM_CAP_DEVICE_CTRL": 1,
        "KVM_CAP_SIGNAL_MSI": 1, "KVM_CAP_IRQFD": 1, "KVM_CAP_IRQ_ROUTING": 4096,
        "KVM_CAP_IOEVENTFD": 1, "KVM_CAP_ONE_REG": 1, "KVM_CAP_VCPU_ATTRIBUTES": 1,
        "KVM_CAP_SYS_ATTRIBUTES": 1, "KVM_CAP_GET_TSC_KHZ": 1, "KVM_CAP_MP_STATE": 1,
    },
    "arm64": {
        "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_NR_VCPUS": 2, "KVM_CAP_MAX_VCPUS": 512,
        "KVM_CAP_NR_MEMSLOTS": 32767, "KVM_CAP_MAX_VCPU_ID": 512, "KVM_CAP_DEVICE_CTRL": 1,
        "KVM_CAP_SIGNAL_MSI": 1, "KVM_CAP_IRQFD": 1, "KVM_CAP_IRQ_ROUTING": 1,
        "KVM_CAP_IOEVENTFD": 1, "KVM_CAP_ONE_REG": 1, "KVM_CAP_VCPU_ATTRIBUTES": 1,
        "KVM_CAP_ARM_VM_IPA_SIZE": 48, "KVM_CAP_ARM_PMU_V3": 1, "KVM_CAP_ARM_PSCI_0_2": 1,
        "KVM_CAP_MSI_DEVID": 1, "KVM_CAP_MP_STATE": 1, "KVM_CAP_ARM_IRQ_LINE_LAYOUT_2": 1,
    },
    "powerpc": {"KVM_CAP_DEVICE_CTRL": 1, "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_IRQ_MPIC": 1,
                "KVM_CAP_IRQ_XICS": 1, "KVM_CAP_ONE_REG": 1, "KVM_CAP_MAX_VCPU_ID": 2048},
    "s390": {"KVM_CAP_DEVICE_CTRL": 1, "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_S390_IRQCHIP": 1,
             "KVM_CAP_VM_ATTRIBUTES": 1, "KVM_CAP_ONE_REG": 1, "KVM_CAP_MAX_VCPU_ID": 248},
}


@dataclass
class HostProfile:
    """The emulated host.  ``caps`` maps KVM_CAP_* names to CHECK_EXTENSION answers."""

    arch: str
    caps: dict[str, int] = field(default_factory=dict)
    # x86: KVM_X86_XCOMP_GUEST_SUPP as the CI hosts report it (x87|SSE|AVX|AVX-512 state)
    xcomp_guest_supp: int = 0xE7
    # Device types KVM_CREATE_DEVICE knows (DeviceType names); None: the arch model's
    device_types: tuple[str, ...] | None = None
    vcpu_mmap_size: int = 12288

    def __post_init__(self) -> None:
        caps = dict(_CAPS.get(self.arch, {}))
        caps.update(self.caps)
        self.caps = caps


def profile(arch: str, **overrides: object) -> HostProfile:
    return HostProfile(arch=arch, **overrides)  # type: ignore[arg-type]
