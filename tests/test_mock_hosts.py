"""Mock host configurations that the real arm64 guests here cannot show; their
rules come from the kernel source alone (see README, "mock provenance")."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvmdev.devices.vgic import VgicV2, VgicV3

from kvm_asserts import raises
from test_vgic_init import add_vcpus


@pytest.mark.parametrize("kernel", ["6.12", "6.1"])
def test_mock_host_cpu_interface_and_gicv2_compat(kernel: str) -> None:
    """Host configurations the real guests here cannot show (QEMU's GICv3 has 5
    priority bits, 24 ID bits, no GICv2 compatibility), so the mock's rules for them
    come from the kernel source alone: vgic_v3_max_apr_idx, ICC_CTLR_EL1 from
    ICH_VTR_EL2, and kvm_vgic_create's E2BIG for a GICv2 over 8 vCPUs."""
    with kvmdev.open("mock", arch="arm64", kernel=kernel, gic=3, gicv2_compat=True,
                     pri_bits=7, id_bits=16) as k, k.create_vm() as vm:
        cpus = add_vcpus(vm, range(9))
        raises(E.E2BIG, vm.create_device, "ARM_VGIC_V2")
        g = vm.create_device("ARM_VGIC_V3")
        assert isinstance(g, VgicV3)
        raises(E.EEXIST, vm.create_device, "ARM_VGIC_V2")
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        s = g.cpu_sysreg(cpus[0])
        assert (s.fields("ICC_CTLR_EL1")["PRIbits"], s.fields("ICC_CTLR_EL1")["IDbits"]) == (6, 0)
        s["ICC_AP1R3_EL1"] = 5
        assert s["ICC_AP1R3_EL1"] == 5
        s["ICC_CTLR_EL1"] = s["ICC_CTLR_EL1"] - (1 << 8)   # 6 bits: AP*R0-1 remain
        assert s["ICC_AP1R1_EL1"] == 0
        raises(E.EINVAL, s.__getitem__, "ICC_AP1R3_EL1")
    with kvmdev.open("mock", arch="arm64", kernel=kernel, gic=3, gicv2_compat=True) as k, k.create_vm() as vm:
        add_vcpus(vm, range(8))
        g2 = vm.create_device("ARM_VGIC_V2")
        raises(E.EINVAL, vm.create_vcpu, 8)   # kvm->max_vcpus is now VGIC_V2_MAX_CPUS
        assert isinstance(g2, VgicV2) and g2.dist.fields("GICD_TYPER")["CPUNumber"] == 7
    with pytest.raises(ValueError, match="priority bits"):
        kvmdev.open("mock", arch="arm64", pri_bits=8)


@pytest.mark.arm64
def test_vgic_v5_absent_on_these_kernels(arm64_kvm) -> None:
    """No real kernel here knows KVM_DEV_TYPE_ARM_VGIC_V5 (16, newest uapi), and
    no host has a GICv5: KVM_CREATE_DEVICE answers ENODEV (the mock's GICv3 and
    GICv2 hosts likewise)."""
    with arm64_kvm.create_vm() as vm:
        e = raises(E.ENODEV, vm.create_device, "ARM_VGIC_V5")
        assert "no VGIC v5" in str(e)


@pytest.mark.parametrize("kernel", ["6.12", "6.1"])
def test_mock_gicv5_host(kernel: str) -> None:
    """A GICv5 host (mock only; arm-vgic-v5.rst and the kernel's v5 device ops):
    GRP_CTRL alone; CTRL_INIT with vCPUs (ENODEV without) and no vCPU after it
    (EBUSY); USERSPACE_PPIS read-only (a set is ENXIO), a __u64[2] mask; one
    VGIC per VM."""
    from kvmdev.devices.vgic_v5 import VgicV5
    mask = 1 << 5 | 1 << 23 | 1 << 100
    with kvmdev.open("mock", arch="arm64", kernel=kernel, gic=5, v5_userspace_ppis=mask) as k, k.create_vm() as vm:
        raises(E.ENODEV, vm.create_device, "ARM_VGIC_V3")
        g = vm.create_device("ARM_VGIC_V5")
        assert isinstance(g, VgicV5)
        raises(E.EEXIST, vm.create_device, "ARM_VGIC_V5")
        assert g.has_attr("KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_VGIC_CTRL_INIT")
        assert g.has_attr("KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_VGIC_USERSPACE_PPIS")
        assert not g.has_attr("KVM_DEV_ARM_VGIC_GRP_ADDR", 0) and not g.has_attr("KVM_DEV_ARM_VGIC_GRP_NR_IRQS", 0)
        assert g.userspace_ppis == {5, 23, 100}
        e = raises(E.ENXIO, g.attr_ioctl, "KVM_SET_DEVICE_ATTR", "KVM_DEV_ARM_VGIC_GRP_CTRL",
                   "KVM_DEV_ARM_VGIC_USERSPACE_PPIS", 0)
        assert "read-only" in str(e)
        raises(E.ENODEV, g.init)
        add_vcpus(vm, range(2))
        g.init()
        raises(E.EBUSY, vm.create_vcpu, 2)
