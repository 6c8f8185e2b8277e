"""A kernel regression test written with the kvmdev pytest plugin: run it with
    pytest examples/test_regression_example.py --kvmdev-backend=real   (on an arm64 host)
    pytest examples/test_regression_example.py --kvmdev-backend=mock --kvmdev-arch=arm64

It pins down two facts of the running kernel: GICD_TYPER's ITLinesNumber follows
NR_IRQS, and a second VGIC in the same VM is refused with EEXIST."""
import errno

import pytest

import kvmdev


@pytest.mark.requires_arch("arm64")
@pytest.mark.requires_device("ARM_VGIC_V3")
@pytest.mark.kvmdev_vcpus(2)
def test_typer_follows_nr_irqs(kvm_arm64_gic):
    g = kvm_arm64_gic.gic
    assert g.dist.fields("GICD_TYPER")["ITLinesNumber"] == g.nr_irqs // 32 - 1


@pytest.mark.requires_arch("arm64")
@pytest.mark.requires_device("ARM_VGIC_V3")
def test_one_vgic_per_vm(kvm_arm64_gic):
    with pytest.raises(kvmdev.KvmError) as e:
        kvm_arm64_gic.vm.create_device("ARM_VGIC_V3")
    assert e.value.errno == errno.EEXIST
