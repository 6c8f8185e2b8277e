"""arm64 VM basics, written once: on x86 they run on the arm64 mock (as each of
the four kernel/GIC profiles), inside the arm64 guests on the real 6.12 and 6.1
kernels (make test-arm64).  Where 6.12 and 6.1 differ, the test says so."""
from __future__ import annotations

import errno as E
from typing import Iterator

import pytest

import kvmdev
from a64 import HVC0, ldst, program
from kvm_asserts import known_host, raises
from kvmdev import arm64 as A
from kvmdev.arm64 import Affinity, default_mpidr

pytestmark = pytest.mark.arm64

UNDEF = (1 << 64) - 1         # VGIC_ADDR_UNDEF: a base address never set
# Guest RAM of the test guests.  Each guest program has its own code address:
# under the QEMU-emulated hosts a new VM can run stale code that a destroyed VM
# had at the same guest address, when a run resumes after an exit (see README,
# "emulation artifacts"); distinct addresses keep the tests independent of it.
RAM = 0x40000000
RAM_RO_TEST = 0x48000000
MMIO = 0x10000000             # an address no memslot holds
GRP_ADDR = "KVM_DEV_ARM_VGIC_GRP_ADDR"
GRP_NR_IRQS = "KVM_DEV_ARM_VGIC_GRP_NR_IRQS"
GRP_CTRL = "KVM_DEV_ARM_VGIC_GRP_CTRL"


@pytest.fixture
def vm(arm64_kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vm]:
    with arm64_kvm.create_vm() as v:
        yield v


def vcpu(vm: kvmdev.Vm, vcpu_id: int = 0, features: tuple = ("PSCI_0_2",)) -> kvmdev.Vcpu:
    c = vm.create_vcpu(vcpu_id)
    c.vcpu_init(features)
    return c


def u64(dev: kvmdev.Device, group: str, attr: str | int) -> int:
    return dev.get_attr(group, attr, ctype="__u64")


def set_u64(dev: kvmdev.Device, group: str, attr: str | int, value: int) -> None:
    dev.set_attr(group, attr, value, ctype="__u64")


# -- capabilities, VM creation and the IPA size ------------------------------------

def test_ipa_size_and_vm_types(arm64_kvm: kvmdev.Kvm) -> None:
    cap = arm64_kvm.check_extension("KVM_CAP_ARM_VM_IPA_SIZE")
    assert 40 <= cap <= 52
    if known_host(arm64_kvm):
        # 6.12 offers 52-bit IPAs on QEMU's max CPU (LPA2 stage 2, new in 6.9);
        # 6.1 stops at 48.
        assert cap == (52 if arm64_kvm.kernel_version >= (6, 12) else 48)
    for bits in (32, cap):
        arm64_kvm.create_vm(ipa_bits=bits).close()
    for bits in (31, cap + 1):
        e = raises(E.EINVAL, arm64_kvm.create_vm, ipa_bits=bits)
        assert "KVM_CREATE_VM" in str(e) and "IPA" in str(e)
    raises(E.EINVAL, arm64_kvm.create_vm, 0x100)  # bits outside the IPA-size byte
    with pytest.raises(ValueError):
        arm64_kvm.create_vm(ipa_bits=0)


def test_memslots_end_at_the_ipa_size(arm64_kvm: kvmdev.Kvm) -> None:
    for bits, machine in ((32, dict(ipa_bits=32)), (40, {})):
        with arm64_kvm.create_vm(**machine) as vm:
            top = 1 << bits
            mem = vm.add_memory(top - 0x10000, 0x10000)
            assert mem.size == 0x10000
            e = raises(E.EFAULT, vm.add_memory, top, 0x1000)
            assert "KVM_SET_USER_MEMORY_REGION" in str(e) and "IPA" in str(e)


def test_msi_devid_capability(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    # system fd: the kernel needs a VM to answer
    raises(E.EINVAL, arm64_kvm.check_extension, "KVM_CAP_MSI_DEVID")
    assert vm.check_extension("KVM_CAP_MSI_DEVID") == 0
    if arm64_gic == 3:
        vm.create_device("ARM_VGIC_ITS")  # an ITS makes MSIs need a device id
        assert vm.check_extension("KVM_CAP_MSI_DEVID") == 1


def test_max_vcpus_follow_the_host_gic(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    limit = {3: 512, 2: 8}[arm64_gic]  # VGIC_V3_MAX_CPUS / VGIC_V2_MAX_CPUS
    assert arm64_kvm.check_extension("KVM_CAP_MAX_VCPUS") == limit
    assert vm.check_extension("KVM_CAP_MAX_VCPU_ID") == limit
    vm.create_vcpu(limit - 1)
    raises(E.EINVAL, vm.create_vcpu, limit)


# -- vCPU init, registers, MPIDR -----------------------------------------------------

def test_preferred_target(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm) -> None:
    init = vm.preferred_target()
    targets = kvmdev.get_arch("arm64").constants("KVM_ARM_TARGET_")
    assert init.target in targets.values()
    assert init.features == []
    if known_host(arm64_kvm):
        assert init.target == targets["KVM_ARM_TARGET_GENERIC_V8"]


def test_vcpu_init_rules(vm: kvmdev.Vm, kfact) -> None:
    c = vm.create_vcpu(0)
    raises(E.ENOENT, c.vcpu_init, [31])      # no such feature
    # KVM_ARM_VCPU_HAS_EL2: unknown (ENOENT) before 6.18; known, but no nested virt here (EINVAL)
    raises(E.EINVAL if kfact("vcpu_features_einval") >> 7 & 1 else E.ENOENT, c.vcpu_init, ["HAS_EL2"])
    wrong = 0 if vm.preferred_target().target != 0 else 1
    raises(E.EINVAL, c.vcpu_init, [], target=wrong)
    assert c.features is None
    c.vcpu_init(["PSCI_0_2", "PMU_V3"])
    assert c.features == ["PSCI_0_2", "PMU_V3"]
    c.vcpu_init(["PMU_V3", "PSCI_0_2"])      # again, same features: a reset
    e = raises(E.EINVAL, c.vcpu_init, ["PSCI_0_2"])  # different features
    assert "KVM_ARM_VCPU_INIT on vCPU 0" in str(e)
    with pytest.raises(ValueError, match="NO_SUCH"):
        c.vcpu_init(["NO_SUCH"])


def test_uninitialized_vcpu(vm: kvmdev.Vm) -> None:
    c = vm.create_vcpu(0)
    e = raises(E.ENOEXEC, lambda: c.mpidr)
    assert "KVM_GET_ONE_REG on vCPU 0 (register MPIDR_EL1)" in str(e) and "KVM_ARM_VCPU_INIT" in str(e)
    raises(E.ENOEXEC, c.set_one_reg, "pc", 0)
    e = raises(E.ENOEXEC, c.run, immediate_exit=True)
    assert "KVM_RUN on vCPU 0" in str(e)


def test_reset_state(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm) -> None:
    c = vcpu(vm)
    assert c.get_one_reg("pc") == 0
    assert c.get_one_reg("sp") == 0
    assert [c.get_one_reg(f"x{i}") for i in (0, 1, 30)] == [0, 0, 0]
    assert c.get_one_reg("pstate") == 0x3C5  # EL1h, D, A, I, F masked
    if known_host(arm64_kvm):
        assert c.get_one_reg("MIDR_EL1") == 0xF0510  # QEMU's max CPU
        assert c.get_one_reg("SCTLR_EL1") == 0xC50078


def test_mpidr_of_each_vcpu(vm: kvmdev.Vm) -> None:
    limit = vm.check_extension("KVM_CAP_MAX_VCPU_ID")
    ids = [i for i in (0, 1, 7, 15, 16, 17, 255, 256, 511) if i < limit]
    cpus = [vcpu(vm, i) for i in ids]
    for c in cpus:
        assert c.mpidr == default_mpidr(c.id), c
    a = Affinity.of(cpus[-1].mpidr)
    assert (a.aff1 << 4 | a.aff0) == ids[-1] and a.aff2 == a.aff3 == 0
    if 17 in ids:
        assert Affinity.of(vm.vcpus[ids.index(17)].mpidr) == (0, 0, 1, 1)
        assert Affinity.of(vm.vcpus[ids.index(17)].mpidr).packed() == 0x101


def test_one_reg_set_get(vm: kvmdev.Vm) -> None:
    c = vcpu(vm)
    for name, value in (("x5", 0x1122334455667788), ("sp", 0x4000), ("pc", RAM), ("x30", UNDEF)):
        c.set_one_reg(name, value)
        assert c.get_one_reg(name) == value
    c.set_one_reg("MPIDR_EL1", default_mpidr(3))  # userspace may renumber a vCPU
    assert c.mpidr == default_mpidr(3)
    c.set_one_reg("pstate", 0x3C4)  # EL1t
    assert c.get_one_reg("pstate") == 0x3C4
    raises(E.EINVAL, c.set_one_reg, "pstate", 0x3C9)  # EL2h: no nested virt
    e = raises(E.ENOENT, c.get_one_reg, A.reg_id("pc") + 1000)  # past struct kvm_regs
    assert "register 0x" in str(e)
    raises(E.ENOENT, c.get_one_reg, A.sysreg(3, 7, 15, 15, 7))  # IMPLEMENTATION DEFINED
    with pytest.raises(ValueError):
        c.set_one_reg("x0", 1 << 64)
    with pytest.raises(ValueError):
        c.get_one_reg("x31")


# -- KVM_RUN -----------------------------------------------------------------------

def test_run_immediate_exit_and_what_a_run_freezes(vm: kvmdev.Vm, arm64_gic: int) -> None:
    c = vcpu(vm)
    assert c.run(immediate_exit=True) == "KVM_EXIT_INTR"
    assert c.run(immediate_exit=True) == "KVM_EXIT_INTR"
    vgic = "ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2"
    e = raises(E.EBUSY, vm.create_device, vgic)  # no VGIC once a vCPU has run
    assert f"KVM_CREATE_DEVICE on {vgic}" in str(e)
    if arm64_gic == 3:
        vm.create_device("ARM_VGIC_ITS")  # an ITS may still come


def test_first_run_checks_vcpu_features(arm64_kvm: kvmdev.Kvm) -> None:
    if arm64_kvm.check_extension("KVM_CAP_ARM_PMU_V3"):
        c = vcpu(arm64_kvm.create_vm(), 0, ("PSCI_0_2", "PMU_V3"))
        # a PMU vCPU runs only after KVM_ARM_VCPU_PMU_V3_INIT; the VM survives
        raises(E.EINVAL, c.run, immediate_exit=True)
        raises(E.EINVAL, c.run, immediate_exit=True)
        assert c.mpidr == default_mpidr(0)
    if arm64_kvm.check_extension("KVM_CAP_ARM_SVE"):
        c = vcpu(arm64_kvm.create_vm(), 0, ("PSCI_0_2", "SVE"))
        raises(E.EPERM, c.run, immediate_exit=True)  # SVE needs KVM_ARM_VCPU_FINALIZE
    assert vcpu(arm64_kvm.create_vm()).run(immediate_exit=True) == "KVM_EXIT_INTR"


def test_vcpu_features_per_vm(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm) -> None:
    vcpu(vm, 0, ("PSCI_0_2",))
    other = vm.create_vcpu(1)
    if arm64_kvm.kernel_version >= (6, 12):
        # 6.12 keeps one feature set per VM (KVM_ARCH_FLAG_VCPU_FEATURES_CONFIGURED)
        e = raises(E.EINVAL, other.vcpu_init, ["PSCI_0_2", "PMU_V3"])
        assert "another vCPU" in str(e)
        other.vcpu_init(["PSCI_0_2"])
    else:
        other.vcpu_init(["PSCI_0_2", "PMU_V3"])  # 6.1 lets each vCPU choose
        assert other.features == ["PSCI_0_2", "PMU_V3"]


@pytest.mark.parametrize("psci_0_2", [True, False], ids=["psci0.2", "psci0.1"])
def test_guest_mmio_ram_and_psci(vm: kvmdev.Vm, psci_0_2: bool, kfact) -> None:
    """A few guest instructions from RAM the test wrote through its mmap: MMIO
    exits in both directions, a store to RAM the test reads back, and PSCI
    calls whose result depends on the KVM_ARM_VCPU_PSCI_0_2 feature."""
    mem = vm.add_memory(RAM, 0x10000)
    data = RAM + 0x100
    # x4: MMIO base, x5: RAM data, x6: a value; PSCI calls return in x0-x3 (SMCCC)
    mem.write(RAM, program(
        ldst(True, 6, 4),              # 0x00 ldr x6, [x4]        -> MMIO read
        ldst(False, 6, 4, 8),          # 0x04 str x6, [x4, #8]    -> MMIO write
        ldst(False, 6, 5),             # 0x08 str x6, [x5]        -> RAM
        ldst(False, 6, 4, 32, 2),      # 0x0c str w6, [x4, #32]   -> 4-byte MMIO write
        HVC0,                           # 0x10 PSCI_VERSION
        ldst(False, 0, 4, 16),         # 0x14 str x0, [x4, #16]   -> MMIO write
        ldst(True, 0, 5, 8),           # 0x18 ldr x0, [x5, #8]    (SYSTEM_OFF id)
        HVC0,                           # 0x1c PSCI SYSTEM_OFF
        ldst(False, 0, 4, 24),         # 0x20 str x0, [x4, #24]   -> MMIO write
    ))
    mem.write(data + 8, A.PSCI_0_2_FN_SYSTEM_OFF.to_bytes(8, "little"))
    c = vcpu(vm, 0, ("PSCI_0_2",) if psci_0_2 else ())
    regs = {"pc": RAM, "x0": A.PSCI_0_2_FN_PSCI_VERSION, "x1": 1, "x2": 2, "x3": 3, "x4": MMIO, "x5": data}
    for reg, value in regs.items():
        c.set_one_reg(reg, value)

    assert c.run() == "KVM_EXIT_MMIO"
    assert c.mmio == (MMIO, bytes(8), False)
    assert c.get_one_reg("pc") == RAM  # the PC stays on the access until the exit completes
    with pytest.raises(ValueError):
        c.complete_mmio_read(b"\x01")  # the guest reads 8 bytes
    value = 0x0123456789ABCDEF
    c.complete_mmio_read(value.to_bytes(8, "little"))

    assert c.run() == "KVM_EXIT_MMIO"
    assert c.mmio == (MMIO + 8, value.to_bytes(8, "little"), True)
    assert c.get_one_reg("x6") == value
    with pytest.raises(ValueError):
        c.complete_mmio_read(bytes(8))  # a write has nothing to complete

    assert c.run() == "KVM_EXIT_MMIO"
    assert c.mmio == (MMIO + 32, (value & 0xFFFFFFFF).to_bytes(4, "little"), True)
    assert mem.read(data, 8) == value.to_bytes(8, "little")  # the guest's RAM store

    assert c.run() == "KVM_EXIT_MMIO"
    version = int.from_bytes(c.mmio.data, "little")
    assert [c.get_one_reg(f"x{i}") for i in (1, 2, 3)] == [0, 0, 0]  # smccc_set_retval
    if psci_0_2:
        assert version == kfact("psci_version")  # PSCI 1.1 on 6.1 and 6.12, 1.3 on 6.18 and 7.3
    else:
        assert version == A.PSCI_RET_NOT_SUPPORTED  # PSCI 0.1 knows no standard ids

    if psci_0_2:
        assert c.run() == "KVM_EXIT_SYSTEM_EVENT"
        ev = c.system_event
        assert ev.type == "KVM_SYSTEM_EVENT_SHUTDOWN" and ev.data == (0,)
        with pytest.raises(ValueError, match="KVM_EXIT_SYSTEM_EVENT, not KVM_EXIT_MMIO"):
            c.mmio
    else:
        assert c.run() == "KVM_EXIT_MMIO"
        assert c.mmio == (MMIO + 24, A.PSCI_RET_NOT_SUPPORTED.to_bytes(8, "little"), True)


def test_guest_store_to_readonly_memory_exits(vm: kvmdev.Vm) -> None:
    code = vm.add_memory(RAM_RO_TEST, 0x10000)
    vm.add_memory(RAM_RO_TEST + 0x10000, 0x10000, readonly=True)
    code.write(RAM_RO_TEST, program(ldst(False, 2, 1)))
    c = vcpu(vm)
    c.set_one_reg("pc", RAM_RO_TEST)
    c.set_one_reg("x1", RAM_RO_TEST + 0x10000)
    c.set_one_reg("x2", 0x55)
    assert c.run() == "KVM_EXIT_MMIO"  # writes to a read-only slot are MMIO
    assert c.mmio == (RAM_RO_TEST + 0x10000, (0x55).to_bytes(8, "little"), True)


# -- KVM_IRQ_LINE ----------------------------------------------------------------------

def test_irq_line_without_vgic(vm: kvmdev.Vm) -> None:
    vcpu(vm)
    vm.irq_line(A.irq("CPU", 0), 1)   # IRQ line of vCPU 0
    vm.irq_line(A.irq("CPU", 1), 1)   # FIQ
    vm.irq_line(A.irq("CPU", 0), 0)
    raises(E.EINVAL, vm.irq_line, A.irq("CPU", 2), 1)
    raises(E.EINVAL, vm.irq_line, A.irq("CPU", 0, vcpu=1), 1)  # no vCPU 1
    e = raises(E.ENXIO, vm.irq_line, A.irq("SPI", 40), 1)
    assert "KVM_IRQ_LINE on VM" in str(e) and "irqchip" in str(e)
    raises(E.ENXIO, vm.irq_line, A.irq("PPI", 20), 1)
    raises(E.EINVAL, vm.irq_line, A.irq(3, 40), 1)


def test_irq_encoding() -> None:
    assert A.irq("SPI", 40) == 1 << 24 | 40
    assert A.irq("PPI", 27, vcpu=3) == 2 << 24 | 3 << 16 | 27
    assert A.irq("CPU", 1, vcpu=0x1FF) == 1 << 28 | 0xFF << 16 | 1  # vcpu2 bits above 255
    for itype, num, vcpu in ((1, 40, 0), (2, 27, 3), (0, 1, 0x1FF)):
        assert A.irq_fields(A.irq(itype, num, vcpu=vcpu)) == (itype, vcpu, num)
    with pytest.raises(ValueError):
        A.irq("SPI", 1 << 16)
    with pytest.raises(ValueError):
        A.irq("LPI", 8192)


def test_irq_line_with_vgic(vm: kvmdev.Vm, arm64_gic: int) -> None:
    vcpu(vm)
    if arm64_gic == 3:
        dev = vm.create_device("ARM_VGIC_V3")
        raises(E.EBUSY, vm.irq_line, A.irq("SPI", 40), 1)  # GICv3 must be initialized first
        dev.set_attr(GRP_NR_IRQS, 0, 64, ctype="__u32")
        dev.set_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="void")
    else:
        dev = vm.create_device("ARM_VGIC_V2")
        dev.set_attr(GRP_NR_IRQS, 0, 64, ctype="__u32")
        # GICv2 initializes itself on first use (vgic_lazy_init)
    vm.irq_line(A.irq("SPI", 32), 1)
    vm.irq_line(A.irq("SPI", 63), 1)
    raises(E.EINVAL, vm.irq_line, A.irq("SPI", 64), 1)   # NR_IRQS is 64
    raises(E.EINVAL, vm.irq_line, A.irq("SPI", 31), 1)   # not an SPI
    vm.irq_line(A.irq("PPI", 16), 1)
    raises(E.EINVAL, vm.irq_line, A.irq("PPI", 15), 1)   # SGIs are not lines
    raises(E.EINVAL, vm.irq_line, A.irq("PPI", 16, vcpu=1), 1)
    raises(E.ENXIO, vm.irq_line, A.irq("CPU", 0), 1)     # the VGIC owns the CPU lines
    # an initialized VGIC freezes the vCPU set
    e = raises(E.EBUSY, vm.create_vcpu, 1)
    assert "KVM_CREATE_VCPU" in str(e)


# -- KVM_SIGNAL_MSI ----------------------------------------------------------------------

def test_signal_msi(vm: kvmdev.Vm, arm64_gic: int) -> None:
    e = raises(E.EINVAL, vm.signal_msi, 0x08080040, 0, devid=0)  # no in-kernel irqchip
    assert "KVM_SIGNAL_MSI on VM" in str(e)
    vcpu(vm)
    if arm64_gic == 2:
        vm.create_device("ARM_VGIC_V2")
        raises(E.ENODEV, vm.signal_msi, 0x08080040, 0, devid=0)  # GICv2 has no ITS
        return
    vm.create_device("ARM_VGIC_V3")
    raises(E.ENODEV, vm.signal_msi, 0x08080040, 0, devid=0)
    its = vm.create_device("ARM_VGIC_ITS")
    raises(E.EINVAL, vm.signal_msi, 0x08080040, 0, devid=0)  # no ITS frame there yet
    set_u64(its, GRP_ADDR, "KVM_VGIC_ITS_ADDR_TYPE", 0x08080000)
    e = raises(E.EBUSY, vm.signal_msi, 0x08090040, 0, devid=0)  # GITS_TRANSLATER; ITS disabled
    assert "ITS" in str(e)
    raises(E.EINVAL, vm.signal_msi, 0x08090040, 0)               # MSIs need a device id now
    raises(E.EINVAL, vm.signal_msi, 0x080A0040, 0, devid=0)      # past the ITS frame


# -- devices: the TEST flag, creation rules, raw groups -----------------------------------

def test_device_types_per_host_gic(vm: kvmdev.Vm, arm64_gic: int) -> None:
    answers = {t: vm.supports_device(t) for t in kvmdev.DeviceType.__members__}
    expected = {"VFIO"} | ({"ARM_VGIC_V3", "ARM_VGIC_ITS"} if arm64_gic == 3 else {"ARM_VGIC_V2"})
    assert {t for t, yes in answers.items() if yes} == expected
    assert vm.devices == []  # the TEST flag creates nothing
    other = "ARM_VGIC_V2" if arm64_gic == 3 else "ARM_VGIC_V3"
    e = raises(E.ENODEV, vm.create_device, other)
    assert f"KVM_CREATE_DEVICE on {other}" in str(e)


def test_one_vgic_per_vm(vm: kvmdev.Vm, arm64_gic: int) -> None:
    t = "ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2"
    first = vm.create_device(t)
    raises(E.EEXIST, vm.create_device, t)
    first.close()
    raises(E.EEXIST, vm.create_device, t)  # the VGIC lives as long as the VM


def test_its_needs_no_vgic_and_may_repeat(vm: kvmdev.Vm, arm64_gic: int) -> None:
    if arm64_gic != 3:
        raises(E.ENODEV, vm.create_device, "ARM_VGIC_ITS")  # no ITS on a GICv2 host
        return
    a, b = vm.create_device("ARM_VGIC_ITS"), vm.create_device("ARM_VGIC_ITS")
    assert a.fileno() != b.fileno()
    assert vm.create_device("ARM_VGIC_V3").type_name == "ARM_VGIC_V3"


@pytest.fixture
def gic(vm: kvmdev.Vm, arm64_gic: int) -> kvmdev.Device:
    return vm.create_device("ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2")


def test_vgic_has_attr_raw(gic: kvmdev.Device, arm64_gic: int) -> None:
    v3 = arm64_gic == 3
    addr = {"KVM_VGIC_V2_ADDR_TYPE_DIST": not v3, "KVM_VGIC_V2_ADDR_TYPE_CPU": not v3,
            "KVM_VGIC_V3_ADDR_TYPE_DIST": v3, "KVM_VGIC_V3_ADDR_TYPE_REDIST": v3,
            "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION": v3, "KVM_VGIC_ITS_ADDR_TYPE": False}
    for name, yes in addr.items():
        assert gic.has_attr(GRP_ADDR, name) == yes, name
    assert gic.has_attr(0, 99) is False
    assert gic.has_attr(GRP_NR_IRQS, 0)
    assert gic.has_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT")
    assert gic.has_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES") == v3
    assert gic.has_attr(GRP_CTRL, "KVM_DEV_ARM_ITS_SAVE_TABLES") is False
    assert gic.has_attr("KVM_DEV_ARM_VGIC_GRP_ITS_REGS", 0) is False
    assert gic.has_attr(0x7F, 0) is False


def test_vgic_addresses_raw(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    vm = arm64_kvm.create_vm(ipa_bits=32)
    vcpu(vm)
    v3 = arm64_gic == 3
    gic = vm.create_device("ARM_VGIC_V3" if v3 else "ARM_VGIC_V2")
    dist, other = ("KVM_VGIC_V3_ADDR_TYPE_DIST", "KVM_VGIC_V2_ADDR_TYPE_DIST") if v3 else \
        ("KVM_VGIC_V2_ADDR_TYPE_DIST", "KVM_VGIC_V3_ADDR_TYPE_DIST")
    assert u64(gic, GRP_ADDR, dist) == UNDEF
    raises(E.EINVAL, set_u64, gic, GRP_ADDR, dist, 0x08000000 + 0x800)  # misaligned
    e = raises(E.E2BIG, set_u64, gic, GRP_ADDR, dist, 1 << 32)        # beyond the 32-bit IPA space
    assert f"KVM_SET_DEVICE_ATTR on {gic.type_name} (group {GRP_ADDR}, attr {dist})" in str(e)
    set_u64(gic, GRP_ADDR, dist, 0x08000000)
    assert u64(gic, GRP_ADDR, dist) == 0x08000000
    e = raises(E.EEXIST, set_u64, gic, GRP_ADDR, dist, 0x09000000)
    assert u64(gic, GRP_ADDR, dist) == 0x08000000
    raises(E.ENXIO, u64, gic, GRP_ADDR, other)         # the other GIC version's type
    raises(E.ENXIO, set_u64, gic, GRP_ADDR, 0x99, 0)   # no such type
    raises(E.EFAULT, gic.attr_ioctl, "KVM_GET_DEVICE_ATTR", GRP_ADDR, dist, 8)
    if v3:
        redist = "KVM_VGIC_V3_ADDR_TYPE_REDIST"
        assert u64(gic, GRP_ADDR, redist) == UNDEF
        raises(E.EINVAL, set_u64, gic, GRP_ADDR, redist, 0x08000000)  # on the distributor
        set_u64(gic, GRP_ADDR, redist, 0x080A0000)
        assert u64(gic, GRP_ADDR, redist) == 0x080A0000
        raises(E.EEXIST, set_u64, gic, GRP_ADDR, redist, 0x090A0000)
    else:
        cpu = "KVM_VGIC_V2_ADDR_TYPE_CPU"
        set_u64(gic, GRP_ADDR, cpu, 0x08010000)
        assert u64(gic, GRP_ADDR, cpu) == 0x08010000


def test_vgic_nr_irqs_raw(gic: kvmdev.Device) -> None:
    assert gic.get_attr(GRP_NR_IRQS, 0, ctype="__u32") == 32  # no SPIs chosen yet
    for bad in (63, 32, 1024, 2048):
        raises(E.EINVAL, gic.set_attr, GRP_NR_IRQS, 0, bad, ctype="__u32")
    gic.set_attr(GRP_NR_IRQS, 0, 128, ctype="__u32")
    assert gic.get_attr(GRP_NR_IRQS, 0, ctype="__u32") == 128
    raises(E.EBUSY, gic.set_attr, GRP_NR_IRQS, 0, 256, ctype="__u32")


def test_vgic_init_freezes_nr_irqs(gic: kvmdev.Device) -> None:
    gic.set_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="void")
    assert gic.get_attr(GRP_NR_IRQS, 0, ctype="__u32") == 256  # vgic_init's legacy default
    raises(E.EBUSY, gic.set_attr, GRP_NR_IRQS, 0, 128, ctype="__u32")
    raises(E.ENXIO, gic.get_attr, GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="__u64")


def _vgic_vm(kvm: kvmdev.Kvm, gic: int, **addrs: int) -> tuple[kvmdev.Vm, kvmdev.Vcpu, kvmdev.Device]:
    vm = kvm.create_vm()
    c = vcpu(vm)
    dev = vm.create_device("ARM_VGIC_V3" if gic == 3 else "ARM_VGIC_V2")
    for t, base in addrs.items():
        set_u64(dev, GRP_ADDR, f"KVM_VGIC_{t}", base)
    return vm, c, dev


def _assert_dead(vm: kvmdev.Vm, c: kvmdev.Vcpu, dev: kvmdev.Device) -> None:
    """kvm_vm_dead(): the VM, its vCPUs and devices answer EIO to everything."""
    e = raises(E.EIO, c.run, immediate_exit=True)
    assert "dead" in str(e)
    raises(E.EIO, lambda: c.mpidr)
    raises(E.EIO, vm.check_extension, "KVM_CAP_MAX_VCPUS")
    raises(E.EIO, vm.create_vcpu, 1)
    raises(E.EIO, dev.has_attr, GRP_NR_IRQS, 0)
    raises(E.EIO, vm.supports_device, "VFIO")


def test_first_run_vgic_failure_kills_the_vm(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    """The VGIC is mapped at the first KVM_RUN; a VGIC that cannot be mapped
    fails that run and KVM marks the whole VM dead (6.12 and 6.1 alike)."""
    if arm64_gic == 3:
        cases = [({}, E.ENXIO),                                         # no addresses
                 ({"V3_ADDR_TYPE_DIST": 0x08000000}, E.ENXIO),          # vCPU 0 has no redistributor
                 ({"V3_ADDR_TYPE_DIST": 0x08000000, "V3_ADDR_TYPE_REDIST": 0x080A0000}, E.EBUSY)]  # no CTRL_INIT
    else:
        cases = [({}, E.ENXIO),
                 ({"V2_ADDR_TYPE_DIST": 0x08000000}, E.ENXIO),          # no CPU interface
                 ({"V2_ADDR_TYPE_DIST": 0x08000000, "V2_ADDR_TYPE_CPU": 0x08000000}, E.EINVAL)]  # overlap
    for addrs, errno in cases:
        vm, c, dev = _vgic_vm(arm64_kvm, arm64_gic, **addrs)
        e = raises(errno, c.run, immediate_exit=True)
        assert "KVM_RUN on vCPU 0" in str(e) and "VGIC" in str(e)
        _assert_dead(vm, c, dev)
        vm.close()


def test_first_run_maps_a_complete_vgic(arm64_kvm: kvmdev.Kvm, arm64_gic: int) -> None:
    if arm64_gic == 3:
        vm, c, gic = _vgic_vm(arm64_kvm, 3, V3_ADDR_TYPE_DIST=0x08000000, V3_ADDR_TYPE_REDIST=0x080A0000)
        gic.set_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="void")
    else:
        # GICv2 initializes itself at the first run
        vm, c, gic = _vgic_vm(arm64_kvm, 2, V2_ADDR_TYPE_DIST=0x08000000, V2_ADDR_TYPE_CPU=0x08010000)
    assert c.run(immediate_exit=True) == "KVM_EXIT_INTR"
    assert c.run(immediate_exit=True) == "KVM_EXIT_INTR"
    assert gic.get_attr(GRP_NR_IRQS, 0, ctype="__u32") == 256
    raises(E.EBUSY, vm.create_vcpu, 1)


def test_its_addresses_raw(vm: kvmdev.Vm, arm64_gic: int) -> None:
    if arm64_gic != 3:
        raises(E.ENODEV, vm.create_device, "ARM_VGIC_ITS")
        return
    its = vm.create_device("ARM_VGIC_ITS")
    t = "KVM_VGIC_ITS_ADDR_TYPE"
    assert its.has_attr(GRP_ADDR, t)
    assert not its.has_attr(GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_DIST")
    for ctrl in ("KVM_DEV_ARM_VGIC_CTRL_INIT", "KVM_DEV_ARM_ITS_SAVE_TABLES",
                 "KVM_DEV_ARM_ITS_RESTORE_TABLES", "KVM_DEV_ARM_ITS_CTRL_RESET"):
        assert its.has_attr(GRP_CTRL, ctrl), ctrl
    assert not its.has_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES")
    assert not its.has_attr(GRP_NR_IRQS, 0)
    assert u64(its, GRP_ADDR, t) == UNDEF
    raises(E.EINVAL, set_u64, its, GRP_ADDR, t, 0x08081000)
    set_u64(its, GRP_ADDR, t, 0x08080000)
    assert u64(its, GRP_ADDR, t) == 0x08080000
    raises(E.EEXIST, set_u64, its, GRP_ADDR, t, 0x08100000)
    # the ITS answers ENODEV, not ENXIO, for another address type (vgic_its_{get,set}_attr)
    raises(E.ENODEV, u64, its, GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_DIST")
    raises(E.ENODEV, set_u64, its, GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_DIST", 0)
    its.set_attr(GRP_CTRL, "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="void")  # nothing to do, but accepted
    raises(E.ENXIO, its.set_attr, GRP_NR_IRQS, 0, 64, ctype="__u32")
