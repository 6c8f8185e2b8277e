"""arm64 VM basics: vCPU feature bits, KVM_{GET,SET}_ONE_REG ids, the
KVM_IRQ_LINE irq encoding and MPIDR affinity.

Numbers come from cdefs/arch/arm64.h (the kernel's uapi asm/kvm.h); the
functions here only compose them, so they work on any host (the mock).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, NamedTuple

from .arch import Arch, get_arch
from .errnos import register as register_errnos

# KVM_ARM_VCPU_INIT feature bit names (KVM_ARM_VCPU_<name> in asm/kvm.h)
FEATURES = ("POWER_OFF", "EL1_32BIT", "PSCI_0_2", "PMU_V3", "SVE", "PTRAUTH_ADDRESS", "PTRAUTH_GENERIC",
            "HAS_EL2", "HAS_EL2_E2H0", "PMU_V3_STRICT")

# KVM_IRQ_LINE irq types (KVM_ARM_IRQ_TYPE_<name>)
IRQ_TYPES = ("CPU", "SPI", "PPI")

# GIC interrupt id ranges (vgic.h: VGIC_NR_SGIS, VGIC_NR_PRIVATE_IRQS)
NR_SGIS = 16
NR_PRIVATE_IRQS = 32

# PSCI function ids and return values a test guest uses (include/uapi/linux/psci.h)
PSCI_0_2_FN_PSCI_VERSION = 0x84000000
PSCI_0_2_FN_SYSTEM_OFF = 0x84000008
PSCI_RET_NOT_SUPPORTED = (1 << 64) - 1  # -1 in x0


def _a(arch: Arch | None) -> Arch:
    return arch if arch is not None else get_arch("arm64")


def feature_bits(features: Iterable[int | str], arch: Arch | None = None) -> list[int]:
    """struct kvm_vcpu_init.features[] words from feature names or bit numbers."""
    from ._check import int_list, integer, unknown
    a = _a(arch)
    words = [0] * len(a.ffi.new("struct kvm_vcpu_init *").features)
    for f in int_list("features of KVM_ARM_VCPU_INIT", features):
        if isinstance(f, str):
            name = f.upper().removeprefix("KVM_ARM_VCPU_")
            if name not in FEATURES:
                raise unknown("KVM_ARM_VCPU_INIT feature", f, FEATURES)
            bit = a.const("KVM_ARM_VCPU_" + name)
        else:
            bit = integer("a KVM_ARM_VCPU_INIT feature (a name or a bit number)", f)
        if not 0 <= bit < 32 * len(words):
            raise ValueError(f"feature bit {bit} does not fit struct kvm_vcpu_init.features")
        words[bit // 32] |= 1 << (bit % 32)
    return words


def feature_names(words: Iterable[int], arch: Arch | None = None) -> list[str | int]:
    """The inverse of feature_bits: names where known, bit numbers otherwise."""
    a = _a(arch)
    by_bit = {a.const("KVM_ARM_VCPU_" + n): n for n in FEATURES}
    out: list[str | int] = []
    for i, w in enumerate(words):
        for b in range(32):
            if w >> b & 1:
                out.append(by_bit.get(32 * i + b, 32 * i + b))
    return out


def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int, arch: Arch | None = None) -> int:
    """ONE_REG id of a 64-bit system register by its Op0/Op1/CRn/CRm/Op2 encoding."""
    a = _a(arch)
    c = a.const
    enc = 0
    for v, f in ((op0, "OP0"), (op1, "OP1"), (crn, "CRN"), (crm, "CRM"), (op2, "OP2")):
        mask, shift = c(f"KVM_REG_ARM64_SYSREG_{f}_MASK"), c(f"KVM_REG_ARM64_SYSREG_{f}_SHIFT")
        if v << shift & ~mask:
            raise ValueError(f"{f}={v} does not fit the sysreg encoding")
        enc |= v << shift
    return c("KVM_REG_ARM64") | c("KVM_REG_SIZE_U64") | c("KVM_REG_ARM64_SYSREG") | enc


# System registers by name -> (Op0, Op1, CRn, CRm, Op2)
SYSREGS: dict[str, tuple[int, int, int, int, int]] = {
    "MIDR_EL1": (3, 0, 0, 0, 0),
    "MPIDR_EL1": (3, 0, 0, 0, 5),
    "SCTLR_EL1": (3, 0, 1, 0, 0),
    "VBAR_EL1": (3, 0, 12, 0, 0),
    "TPIDR_EL1": (3, 0, 13, 0, 4),
    "CNTKCTL_EL1": (3, 0, 14, 1, 0),
}

# struct kvm_regs: struct user_pt_regs { __u64 regs[31], sp, pc, pstate; } (words 0-67),
# sp_el1, elr_el1, spsr[KVM_NR_SPSR = 5], then struct user_fpsimd_state
# { __uint128_t vregs[32]; __u32 fpsr, fpcr; } at word 84.  A core register's id
# carries its offset in 32-bit words and its size.
SPSR_NAMES = ("spsr_el1", "spsr_abt", "spsr_und", "spsr_irq", "spsr_fiq")   # KVM_SPSR_EL1.._FIQ
CORE_OFFSETS = {**{f"x{n}": 2 * n for n in range(31)}, "sp": 62, "pc": 64, "pstate": 66,
                "sp_el1": 68, "elr_el1": 70, **{n: 72 + 2 * i for i, n in enumerate(SPSR_NAMES)}}
VREG_OFFSETS = {f"v{n}": 84 + 4 * n for n in range(32)}
FP_OFFSETS = {"fpsr": 212, "fpcr": 213}
# bytes of each core register (core_reg_size_from_offset in arch/arm64/kvm/guest.c)
CORE_SIZES = {**{off: 8 for off in CORE_OFFSETS.values()}, **{off: 16 for off in VREG_OFFSETS.values()},
              **{off: 4 for off in FP_OFFSETS.values()}}


@lru_cache(maxsize=None)
def reg_id(name: str) -> int:
    """ONE_REG id by name: core registers ("x0".."x30", "sp", "pc", "pstate",
    "sp_el1", "elr_el1", "spsr_el1"...), the 128-bit FP/SIMD "v0".."v31" and the
    32-bit "fpsr", "fpcr"; the system registers in SYSREGS ("MPIDR_EL1"); and the
    uapi's names of pseudo-registers ("KVM_REG_ARM_TIMER_CNT", "KVM_REG_ARM_PSCI_VERSION")."""
    a = get_arch("arm64")
    c = a.const
    low = name.lower()
    sizes = {8: "KVM_REG_SIZE_U64", 16: "KVM_REG_SIZE_U128", 4: "KVM_REG_SIZE_U32"}
    off = CORE_OFFSETS.get(low, VREG_OFFSETS.get(low, FP_OFFSETS.get(low)))
    if off is not None:
        return c("KVM_REG_ARM64") | c(sizes[CORE_SIZES[off]]) | c("KVM_REG_ARM_CORE") | off
    if name.upper().startswith("KVM_REG_ARM") and a.has_const(name.upper()):
        return a.const(name.upper())
    enc = SYSREGS.get(name.upper())
    if enc is None:
        from ._check import unknown
        raise unknown("arm64 register", name, [*CORE_OFFSETS, *VREG_OFFSETS, *FP_OFFSETS, *SYSREGS],
                      "(KVM_{GET,SET}_ONE_REG)",
                      f"use x0..x30, sp, pc, pstate, sp_el1, elr_el1, {', '.join(SPSR_NAMES)}, v0..v31, fpsr, "
                      f"fpcr, {', '.join(SYSREGS)}, KVM_REG_ARM_TIMER_CTL/CNT/CVAL, KVM_REG_ARM_PSCI_VERSION..., "
                      "or a numeric id (kvmdev.arm64.sysreg())")
    return sysreg(*enc, arch=a)


def irq(irq_type: int | str, num: int, vcpu: int = 0, arch: Arch | None = None) -> int:
    """The KVM_IRQ_LINE ``irq`` field: type, vCPU index (with the vcpu2 high bits
    of KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 for indexes above 255) and number.
    SPIs take the INTID (>= 32), PPIs the INTID 16..31, CPU lines 0 (IRQ) or 1 (FIQ)."""
    a = _a(arch)
    c = a.const
    if isinstance(irq_type, str):
        name = irq_type.upper().removeprefix("KVM_ARM_IRQ_TYPE_")
        if name not in IRQ_TYPES:
            from ._check import unknown
            raise unknown("KVM_IRQ_LINE type", irq_type, IRQ_TYPES)
        irq_type = c("KVM_ARM_IRQ_TYPE_" + name)
    from ._check import integer
    irq_type, num, vcpu = integer("irq_type", irq_type), integer("num", num), integer("vcpu", vcpu)
    if not 0 <= num <= c("KVM_ARM_IRQ_NUM_MASK"):
        raise ValueError(f"irq number {num} does not fit KVM_ARM_IRQ_NUM_MASK")
    vcpu_lo = c("KVM_ARM_IRQ_VCPU_MASK")
    if not 0 <= vcpu <= (c("KVM_ARM_IRQ_VCPU2_MASK") + 1) * (vcpu_lo + 1) - 1:
        raise ValueError(f"vCPU index {vcpu} does not fit the KVM_IRQ_LINE layout")
    return ((irq_type & c("KVM_ARM_IRQ_TYPE_MASK")) << c("KVM_ARM_IRQ_TYPE_SHIFT")
            | (vcpu >> 8) << c("KVM_ARM_IRQ_VCPU2_SHIFT")
            | (vcpu & vcpu_lo) << c("KVM_ARM_IRQ_VCPU_SHIFT")
            | num << c("KVM_ARM_IRQ_NUM_SHIFT"))


def irq_fields(value: int, arch: Arch | None = None) -> tuple[int, int, int]:
    """The inverse of irq(): (type, vCPU index, number) of a KVM_IRQ_LINE irq field."""
    c = _a(arch).const
    vcpu = (value >> c("KVM_ARM_IRQ_VCPU_SHIFT") & c("KVM_ARM_IRQ_VCPU_MASK")) + \
        (value >> c("KVM_ARM_IRQ_VCPU2_SHIFT") & c("KVM_ARM_IRQ_VCPU2_MASK")) * (c("KVM_ARM_IRQ_VCPU_MASK") + 1)
    return (value >> c("KVM_ARM_IRQ_TYPE_SHIFT") & c("KVM_ARM_IRQ_TYPE_MASK"), vcpu,
            value >> c("KVM_ARM_IRQ_NUM_SHIFT") & c("KVM_ARM_IRQ_NUM_MASK"))


class Affinity(NamedTuple):
    aff3: int
    aff2: int
    aff1: int
    aff0: int

    @classmethod
    def of(cls, mpidr: int) -> "Affinity":
        """MPIDR_EL1's affinity fields (Aff3 is bits 39:32)."""
        return cls(mpidr >> 32 & 0xFF, mpidr >> 16 & 0xFF, mpidr >> 8 & 0xFF, mpidr & 0xFF)

    def packed(self) -> int:
        """Aff3.Aff2.Aff1.Aff0 in 32 bits: the form KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
        and CPU_SYSREGS take in their mpidr field."""
        return self.aff3 << 24 | self.aff2 << 16 | self.aff1 << 8 | self.aff0


def default_mpidr(vcpu_id: int) -> int:
    """The MPIDR_EL1 KVM gives a vCPU (reset_mpidr in sys_regs.c): bit 31 (RES1),
    Aff0 = id bits 3:0, Aff1 = id bits 11:4, Aff2 = id bits 19:12."""
    return (1 << 31) | (vcpu_id & 0xF) | ((vcpu_id >> 4) & 0xFF) << 8 | ((vcpu_id >> 12) & 0xFF) << 16


# What these errnos mean on the arm64 VM and vCPU ioctls (api.rst, arch/arm64/kvm)
register_errnos({
    ("KVM_ARM_VCPU_INIT", "vcpu", None, "EINVAL"):
        "the target is not KVM_ARM_PREFERRED_TARGET's, the feature combination is invalid, "
        "or the vCPU (6.12: or another vCPU of the VM) was initialized with other features",
    ("KVM_ARM_VCPU_INIT", "vcpu", None, "ENOENT"):
        "a feature bit this kernel does not know or support (api.rst: 'features not supported')",
    ("KVM_GET_ONE_REG", "vcpu", None, "ENOEXEC"): "the vCPU is not initialized yet (KVM_ARM_VCPU_INIT first)",
    ("KVM_SET_ONE_REG", "vcpu", None, "ENOEXEC"): "the vCPU is not initialized yet (KVM_ARM_VCPU_INIT first)",
    ("KVM_GET_ONE_REG", "vcpu", None, "ENOENT"): "no such register for this vCPU",
    ("KVM_SET_ONE_REG", "vcpu", None, "ENOENT"): "no such register for this vCPU",
    ("KVM_SET_ONE_REG", "vcpu", None, "EINVAL"): "the value is invalid for this register (e.g. a PSTATE mode "
                                                 "the vCPU cannot run in)",
    ("KVM_RUN", "vcpu", None, "ENOEXEC"): "the vCPU is not initialized yet (KVM_ARM_VCPU_INIT first)",
    ("KVM_RUN", "vcpu", None, "EPERM"): "the vCPU's features are not finalized (SVE: KVM_ARM_VCPU_FINALIZE first)",
    ("KVM_RUN", "vcpu", None, "ENXIO"):
        "arm64 first run: a VGIC base address is not set (distributor, CPU interface or this vCPU's "
        "redistributor); the VM is dead afterwards (EIO)",
    ("KVM_RUN", "vcpu", None, "EBUSY"):
        "arm64 first run: the VGICv3 is not initialized (KVM_DEV_ARM_VGIC_GRP_CTRL / KVM_DEV_ARM_VGIC_CTRL_INIT); "
        "the VM is dead afterwards (EIO)",
    ("KVM_RUN", "vcpu", None, "EINVAL"):
        "arm64 first run: the VGIC regions overlap or leave the IPA space (the VM is dead afterwards), "
        "or a PMUv3 vCPU was not initialized (KVM_ARM_VCPU_PMU_V3_INIT)",
    ("KVM_RUN", "vcpu", None, "ENOSYS"):
        "the guest accessed an address outside the memslots with an instruction KVM cannot emulate (no valid "
        "syndrome: a pair, writeback, SIMD&FP or exclusive access); on the mock, or something it does not model",
    ("KVM_RUN", "vcpu", None, "EINTR"): "a signal or immediate_exit stopped the run before the guest ran",
    ("KVM_SET_USER_MEMORY_REGION", "vm", None, "EFAULT"):
        "the region is beyond the VM's IPA size (arm64), or userspace_addr is not accessible",
    ("KVM_IRQ_LINE", "vm", None, "ENXIO"):
        "no in-kernel irqchip for SPI/PPI lines, or (arm64) the CPU lines belong to the in-kernel VGIC",
    ("KVM_IRQ_LINE", "vm", None, "EINVAL"): "no such vCPU, or the interrupt number is out of range for its type",
    ("KVM_IRQ_LINE", "vm", None, "EBUSY"): "the VGICv3 is not initialized yet (KVM_DEV_ARM_VGIC_CTRL_INIT)",
    ("KVM_SIGNAL_MSI", "vm", None, "EINVAL"):
        "no in-kernel irqchip, no ITS frame at the address, or a device id is required (KVM_MSI_VALID_DEVID)",
    ("KVM_SIGNAL_MSI", "vm", None, "ENODEV"): "the VM's interrupt controller has no ITS to translate MSIs",
    ("KVM_SIGNAL_MSI", "vm", None, "EBUSY"): "the ITS is not enabled (GITS_CTLR.Enabled is 0)",
    ("KVM_CREATE_VCPU", "vm", None, "EBUSY"): "the VGIC is already initialized: the vCPU set is frozen",
    ("KVM_CREATE_DEVICE", None, None, "EBUSY"):
        "the VM cannot take this device now (e.g. a VGIC after a vCPU has run; a second VFIO device)",
    ("KVM_CHECK_EXTENSION", "system", None, "EINVAL"): "this capability can only be asked of a VM fd",
})
