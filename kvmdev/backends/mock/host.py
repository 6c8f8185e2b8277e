"""What the mock emulates: a host kernel of one architecture.

Defaults are what the real kernels here answer (x86_64: the 6.18 host of the
CI machines; arm64: Debian 6.12/6.1 under QEMU with GIC v3 + ITS).  Every
field can be overridden: ``kvmdev.open(backend="mock", arch="arm64", gic=2)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import kernel_facts

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
        "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_NR_VCPUS": 1, "KVM_CAP_NR_MEMSLOTS": 32767,
        "KVM_CAP_DEVICE_CTRL": 1, "KVM_CAP_SIGNAL_MSI": 1, "KVM_CAP_IRQFD": 1,
        "KVM_CAP_IRQ_ROUTING": 4096, "KVM_CAP_IOEVENTFD": 1, "KVM_CAP_ONE_REG": 1,
        "KVM_CAP_VCPU_ATTRIBUTES": 1, "KVM_CAP_ARM_PMU_V3": 1, "KVM_CAP_ARM_PSCI_0_2": 1,
        "KVM_CAP_ARM_SVE": 1, "KVM_CAP_ARM_PTRAUTH_ADDRESS": 1, "KVM_CAP_ARM_PTRAUTH_GENERIC": 1,
        "KVM_CAP_ARM_EL1_32BIT": 1, "KVM_CAP_MP_STATE": 1, "KVM_CAP_ARM_IRQ_LINE_LAYOUT_2": 1,
        # KVM_CAP_MSI_DEVID: per VM (1 once an ITS exists); EINVAL on the system fd
    },
    "powerpc": {"KVM_CAP_DEVICE_CTRL": 1, "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_IRQ_MPIC": 1,
                "KVM_CAP_IRQ_XICS": 1, "KVM_CAP_ONE_REG": 1,
                # as the ppc64el 6.1 kernel on PowerNV POWER8 reports them
                "KVM_CAP_MAX_VCPUS": 2048, "KVM_CAP_MAX_VCPU_ID": 16384},
    "s390": {"KVM_CAP_DEVICE_CTRL": 1, "KVM_CAP_USER_MEMORY": 1, "KVM_CAP_S390_IRQCHIP": 1,
             "KVM_CAP_VM_ATTRIBUTES": 1, "KVM_CAP_ONE_REG": 1, "KVM_CAP_MAX_VCPU_ID": 248},
}


# arm64 answers that depend on the kernel series and on the host GIC (QEMU's
# emulated GIC under the guest kernel): seen on Debian 6.12.117 and 6.1.0-56
# (6.18.15 and 7.3.4 from trixie-backports too).  Beyond the IPA size, the capabilities
# that differ between the four kernels (the mock answers them; it does not emulate the
# features behind them, e.g. guest_memfd or the dirty ring).
_SINCE_6_12 = {"KVM_CAP_USER_MEMORY2": 1, "KVM_CAP_COUNTER_OFFSET": 1, "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES": 1,
               "KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES": 0x40201000, "KVM_CAP_DIRTY_LOG_RING_ACQ_REL": 0x100000,
               "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP": 1}
_SINCE_6_18 = {**_SINCE_6_12, "KVM_CAP_GUEST_MEMFD": 1, "KVM_CAP_GUEST_MEMFD_FLAGS": 3,
               "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS": 1}
_ARM64_BY_KERNEL: dict[str, dict[str, int]] = {
    "6.1": {"KVM_CAP_ARM_VM_IPA_SIZE": 48},
    "6.12": {"KVM_CAP_ARM_VM_IPA_SIZE": 52, **_SINCE_6_12},
    "6.18": {"KVM_CAP_ARM_VM_IPA_SIZE": 52, **_SINCE_6_18},
    "7.3": {"KVM_CAP_ARM_VM_IPA_SIZE": 52, **_SINCE_6_18, "KVM_CAP_ARM_SEA_TO_USER": 1,
            "KVM_CAP_ARM_PMU_V3_STRICT": 1},
}
# every capability named in _ARM64_BY_KERNEL, for the tests that check them on the real kernels
ARM64_KERNEL_CAPS: frozenset[str] = frozenset(c for caps in _ARM64_BY_KERNEL.values() for c in caps)


def arm64_kernel_caps(kernel: str) -> dict[str, int]:
    """The answers of the capabilities that differ between the arm64 kernels (0: absent)."""
    return {c: _ARM64_BY_KERNEL[kernel].get(c, 0) for c in sorted(ARM64_KERNEL_CAPS)}
# kvm_arm_default_max_vcpus(): the host GIC's limit (VGIC_V3_MAX_CPUS / VGIC_V2_MAX_CPUS)
_ARM64_BY_GIC: dict[int, dict[str, int]] = {
    3: {"KVM_CAP_MAX_VCPUS": 512, "KVM_CAP_MAX_VCPU_ID": 512},
    5: {"KVM_CAP_MAX_VCPUS": 512, "KVM_CAP_MAX_VCPU_ID": 512},   # a GICv5 host: mock only
    2: {"KVM_CAP_MAX_VCPUS": 8, "KVM_CAP_MAX_VCPU_ID": 8},
}
_DEFAULT_KERNEL = {"x86_64": "6.18", "arm64": "6.12", "powerpc": "6.1", "s390": "6.12"}


@dataclass
class HostProfile:
    """The emulated host.  ``caps`` maps KVM_CAP_* names to CHECK_EXTENSION answers."""

    arch: str
    caps: dict[str, int] = field(default_factory=dict)
    # x86: KVM_X86_XCOMP_GUEST_SUPP as the CI hosts report it (x87|SSE|AVX|AVX-512 state)
    xcomp_guest_supp: int = 0xE7
    # x86: the host pins the TSC offset (the CI machines' 6.18 "-fc-" kernel accepts a
    # KVM_VCPU_TSC_OFFSET set and reads back 0); upstream reads back what was set
    x86_tsc_pinned: bool = False
    # x86: the recorded host (kvmdev.backends.mock.x86_hosts, by uname -r) whose
    # CHECK_EXTENSION, ENABLE_CAP, ONE_REG and memslot limits the mock answers with
    x86_release: str = ""
    # Device types KVM_CREATE_DEVICE knows (DeviceType names); None: the arch model's
    device_types: tuple[str, ...] | None = None
    vcpu_mmap_size: int = 12288
    # the kernel series emulated ("6.12", "6.1"): where the real kernels differ
    kernel: str = ""
    # arm64: the host GIC (3: GICv3 + ITS, VGIC_V3/ITS devices; 2: GICv2, VGIC_V2; 5: GICv5, VGIC_V5, mock only)
    gic: int = 3
    # arm64 GICv3 host: GICv2 compatibility (VGIC_V2 creatable too; QEMU's GICv3 has none)
    gicv2_compat: bool = False
    # arm64 GICv3 host CPU interface (ICH_VTR_EL2): priority bits (5..7) and ID bits (16 or 24)
    pri_bits: int = 5
    id_bits: int = 24
    # arm64: the host CPU has RAS (ARM64_HAS_RAS_EXTN; QEMU -cpu max does): an SError's
    # ESR can be given in KVM_SET_VCPU_EVENTS, and KVM_GET_VCPU_EVENTS says serror_has_esr
    ras: bool = True
    # arm64: the host PMU's perf type (KVM_ARM_VCPU_PMU_V3_SET_PMU) and its general-purpose
    # counters (PMCR_EL0.N of QEMU's -cpu max: the SET_NR_COUNTERS limit)
    pmu_type: int = 8
    pmu_counters: int = 6
    # arm64 GICv5 host (gic=5, no real counterpart here): the userspace-drivable PPIs
    v5_userspace_ppis: int = 0
    # powerpc host: "book3s" (KVM-HV: XICS, as Debian's ppc64el kernel on PowerNV POWER8)
    # or "e500" (the Freescale MPIC; no real one here)
    ppc_platform: str = "book3s"
    # s390 host (no real one here): facilities (72 AIS, 76 MSA3, 139 multiple epoch),
    # CMMA, AP instructions, the VM memory limit, the CPU model it offers
    s390_facilities: frozenset[int] = frozenset({72, 76})
    s390_cmma: bool = True
    s390_ap: bool = True
    s390_mem_limit: int = 1 << 53
    s390_cpuid: int = 0xFF00000085612000
    s390_facility_words: tuple[int, ...] = (0xFBFAFCFFF8200000, 0x2000000000000000)
    s390_machine_feat: int = 0xFFFF << (1024 - 16)   # features 0-15 (bit 0 is the MSB)

    def __post_init__(self) -> None:
        self.kernel = self.kernel or _DEFAULT_KERNEL.get(self.arch, "6.12")
        if self.arch == "arm64":
            if self.kernel not in _ARM64_BY_KERNEL or self.gic not in _ARM64_BY_GIC:
                raise ValueError(f"the arm64 mock emulates kernel {' or '.join(_ARM64_BY_KERNEL)} "
                                 f"with gic 3, 2 (or 5, mock only), not kernel {self.kernel!r} gic {self.gic!r}")
            if self.pri_bits not in (5, 6, 7) or self.id_bits not in (16, 24):
                raise ValueError(f"a GICv3 CPU interface has 5, 6 or 7 priority bits and 16 or 24 "
                                 f"ID bits, not {self.pri_bits!r} and {self.id_bits!r}")
            if self.gicv2_compat and self.gic != 3:
                raise ValueError("gicv2_compat describes a GICv3 host")
        if self.ppc_platform not in ("book3s", "e500"):
            raise ValueError(f"ppc_platform is 'book3s' or 'e500', not {self.ppc_platform!r}")
        if self.arch == "x86_64" and not self.x86_release:
            from .x86_hosts import DEFAULT_RELEASE
            self.x86_release = DEFAULT_RELEASE
        caps = dict(_CAPS.get(self.arch, {}))
        if self.arch == "powerpc":
            book3s = self.ppc_platform == "book3s"
            caps.update(KVM_CAP_IRQ_XICS=int(book3s), KVM_CAP_PPC_PAPR=int(book3s), KVM_CAP_IRQ_MPIC=int(not book3s))
        if self.arch == "arm64":
            caps.update(_ARM64_BY_KERNEL[self.kernel])
            caps.update(_ARM64_BY_GIC[self.gic])
        caps.update(self.caps)
        self.caps = caps

    def fact(self, name: str) -> object:
        """This kernel's answer where the arm64 kernels differ (kernel_facts.FACTS)."""
        return kernel_facts.fact(name, self.kernel)

    @property
    def kernel_release(self) -> str:
        return f"{self.kernel}.0-kvmdev-mock"


# profile fields that describe one architecture's host; the rest apply to every one
FIELD_ARCH = {"xcomp_guest_supp": "x86_64", "x86_tsc_pinned": "x86_64",
              "gic": "arm64", "gicv2_compat": "arm64", "pri_bits": "arm64", "id_bits": "arm64",
              "pmu_type": "arm64", "v5_userspace_ppis": "arm64", "ppc_platform": "powerpc",
              **{f: "s390" for f in ("s390_facilities", "s390_cmma", "s390_ap", "s390_mem_limit", "s390_cpuid",
                                     "s390_facility_words", "s390_machine_feat")}}


def check_options(arch: str, given: dict[str, object]) -> None:
    """Profile options given for ``arch``: an unknown name, or one of another
    architecture (gic=3 on the x86 mock), is an error rather than ignored."""
    from dataclasses import fields
    from ...errors import UnknownNameError
    known = [f.name for f in fields(HostProfile) if f.name != "arch"]
    for name in given:
        if name not in known:
            raise UnknownNameError("mock profile option", name, "(kvmdev.open(\"mock\", ...), HostProfile)", known)
        if FIELD_ARCH.get(name, arch) != arch:
            raise ValueError(f"{name}={given[name]!r} is an option of the {FIELD_ARCH[name]} mock; "
                             f"this mock is {arch} (arch={FIELD_ARCH[name]!r} for that one)")


def x86_tsc_pinned(release: str) -> bool:
    """Whether an x86 kernel release pins the TSC offset: the CI machines' 6.18
    "-fc-" kernels accept a KVM_VCPU_TSC_OFFSET set and read back 0."""
    return "-fc-" in release


def profile(arch: str, **overrides: object) -> HostProfile:
    return HostProfile(arch=arch, **overrides)  # type: ignore[arg-type]
