"""KVM_GET_REG_LIST and KVM_{GET,SET}_ONE_REG of every register size, written
once: on x86 the arm64 tests run on the arm64 mock (each kernel/GIC profile),
in the arm64 guests on the real 6.12 and 6.1 kernels; the x86 ones on the real
x86 kernel here and the x86 mock."""
from __future__ import annotations

import errno as E
from typing import Iterator

import pytest

import kvmdev
from kvm_asserts import known_host, raises
from kvmdev import arm64 as A
from kvmdev.backends.mock import arm64_reglist

V0_VALUE = 0x0123456789ABCDEF_FEDCBA9876543210     # both halves differ: byte order shows


@pytest.fixture
def vm(arm64_kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vm]:
    with arm64_kvm.create_vm() as v:
        yield v


def _coproc(rid: int) -> int:
    return (rid & 0x0FFF0000) >> 16


@pytest.mark.arm64
@pytest.mark.parametrize("features", [[], ["PSCI_0_2"], ["PSCI_0_2", "PMU_V3"]])
def test_reg_list_is_the_kernels(arm64_kvm: kvmdev.Kvm, vm: kvmdev.Vm, arm64_kernel: str,
                                 features: list[str]) -> None:
    """KVM_GET_REG_LIST lists every register once, core registers first (x0..fpcr:
    V0-V31 128-bit, FPSR/FPCR 32-bit), the firmware pseudo-registers and the
    timer registers; on the guests' profile it is exactly the list the mock
    holds (arm64_reglist, in the kernel's order), which differs by kernel."""
    c = vm.create_vcpu(0)
    raises(E.ENOEXEC, c.get_reg_list)              # before KVM_ARM_VCPU_INIT
    c.vcpu_init(features)
    ids = c.get_reg_list()
    assert len(ids) == len(set(ids))
    core = [A.reg_id(n) for n in [*A.CORE_OFFSETS, *A.VREG_OFFSETS, *A.FP_OFFSETS]]
    assert ids[:len(core)] == core                 # struct kvm_regs order
    a = vm._arch
    for name in ("KVM_REG_ARM_PSCI_VERSION", "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1", "KVM_REG_ARM_TIMER_CTL",
                 "KVM_REG_ARM_TIMER_CNT", "KVM_REG_ARM_TIMER_CVAL", "KVM_REG_ARM_STD_BMAP"):
        assert a.const(name) in ids, name
    assert A.reg_id("MPIDR_EL1") in ids
    if known_host(arm64_kvm):
        expected = [r for r, _ in arm64_reglist.REGS[arm64_kernel]]
        if "PMU_V3" in features:
            pmu = {r for r, _ in arm64_reglist.PMU_REGS[arm64_kernel]}
            assert pmu <= set(ids) and set(ids) - pmu == set(expected)
        else:
            assert ids == expected
        assert len(ids) == {"6.12": 259, "6.1": 242, "6.18": 257, "7.3": 257}[arm64_kernel] + \
            ({"7.3": 75}.get(arm64_kernel, 74) if "PMU_V3" in features else 0)


@pytest.mark.arm64
def test_every_listed_register_reads_and_takes_its_value_back(vm: kvmdev.Vm, kfact) -> None:
    """ONE_REG of every listed id, of whatever size (32, 64 and 128 bits here), with
    a buffer of exactly that size; setting the value read back is accepted."""
    c = vm.create_vcpu(0)
    c.vcpu_init(["PSCI_0_2"])
    sizes = set()
    for rid in c.get_reg_list():
        v = c.get_one_reg(rid)
        size = 1 << ((rid >> 52) & 0xF)
        sizes.add(size)
        assert 0 <= v < 1 << 8 * size
        c.set_one_reg(rid, v)
    assert sizes == {4, 8, 16}
    # PSCI 1.1 with PSCI_0_2 (6.1, 6.12), 1.3 from 6.18 (kernel_facts)
    assert c.get_one_reg("KVM_REG_ARM_PSCI_VERSION") == kfact("psci_version")


@pytest.mark.arm64
def test_128_bit_vregs_round_trip(vm: kvmdev.Vm) -> None:
    """V0-V31 are KVM_REG_SIZE_U128 core registers: a 128-bit int in and out,
    little-endian (the kernel's __uint128_t); FPSR/FPCR are 32-bit."""
    c = vm.create_vcpu(0)
    c.vcpu_init()
    assert A.reg_id("v0") == 0x6040000000100054 and A.reg_id("v31") == 0x60400000001000D0
    assert A.reg_id("fpsr") == 0x60200000001000D4 and A.reg_id("fpcr") == 0x60200000001000D5
    c.set_one_reg("v0", V0_VALUE)
    c.set_one_reg("v31", (1 << 128) - 1)
    assert c.get_one_reg("v0") == V0_VALUE
    assert c.get_one_reg("v31") == (1 << 128) - 1
    assert c.get_one_reg("v1") == 0
    c.set_one_reg("fpsr", 0x08000000)            # QC
    assert c.get_one_reg("fpsr") == 0x08000000
    c.set_one_reg("x1", 7)
    assert c.get_one_reg("v0") == V0_VALUE and c.get_one_reg("x1") == 7


@pytest.mark.arm64
def test_one_reg_bad_values_and_sizes(vm: kvmdev.Vm) -> None:
    """Out-of-range values are ValueError before any ioctl; a core register asked
    with another size is the kernel's EINVAL (validate_core_offset); a size
    field beyond U2048 is ValueError."""
    c = vm.create_vcpu(0)
    c.vcpu_init()
    c.set_one_reg("v0", 5)
    for bad in (1 << 128, -1):
        with pytest.raises(ValueError, match="does not fit"):
            c.set_one_reg("v0", bad)
    with pytest.raises(TypeError):
        c.set_one_reg("v0", True)
    with pytest.raises(TypeError):
        c.set_one_reg("fpsr", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit"):
        c.set_one_reg("fpsr", 1 << 32)
    assert c.get_one_reg("v0") == 5
    v0_as_u64 = A.reg_id("v0") & ~vm._arch.const("KVM_REG_SIZE_MASK") | vm._arch.const("KVM_REG_SIZE_U64")
    raises(E.EINVAL, c.get_one_reg, v0_as_u64)
    x0_as_u128 = A.reg_id("x0") & ~vm._arch.const("KVM_REG_SIZE_MASK") | vm._arch.const("KVM_REG_SIZE_U128")
    raises(E.EINVAL, c.get_one_reg, x0_as_u128)
    with pytest.raises(ValueError, match="U2048"):
        c.get_one_reg(A.reg_id("x0") | 0x00F0000000000000)
    with pytest.raises(ValueError):
        c.get_one_reg(1 << 64)


def test_reg_list_x86(kvm: kvmdev.Kvm) -> None:
    """x86: KVM_GET_REG_LIST exists from 6.18 on (KVM_X86_REG_MSR & co. for
    ONE_REG); a vCPU without CPUID (no CET) lists no register: n = 0 succeeds.
    Earlier kernels answer EINVAL (kvm_arch_vcpu_ioctl's default)."""
    with kvm.create_vm() as vm:
        c = vm.create_vcpu(0)
        if kvm.backend == "real" and kvm.kernel_version < (6, 18):
            raises(E.EINVAL, c.get_reg_list)
        else:
            assert c.get_reg_list() == []
