"""s390: the FLIC (s390_flic.rst) and the VM attributes (vm.rst).  No s390 KVM
host runs here: these run on the s390 mock, whose rules come from the 6.12
source (arch/s390/kvm/interrupt.c, kvm-s390.c; README, support matrix)."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev
from kvm_asserts import raises
from kvmdev.devices.flic import Flic

SERVICE, VIRTIO, PFAULT_INIT, MCHK = 0xFFFF2401, 0xFFFF2603, 0xFFFE0004, 0xFFFE1000


@pytest.fixture
def s390_vm():
    with kvmdev.open("mock", arch="s390") as k, k.create_vm() as vm:
        yield vm


def io_irq(schid: int, isc: int) -> dict:
    return {"type": schid, "io": {"subchannel_id": schid >> 16, "subchannel_nr": schid & 0xFFFF,
                                  "io_int_parm": 0x1234, "io_int_word": isc << 27}}


def test_flic_enqueue_and_get(s390_vm) -> None:
    """ENQUEUE whole records of injectable types (EINVAL otherwise, PFAULT_INIT
    too); GET_ALL_IRQS returns them I/O first (by ISC), then other floating, then
    service, then machine check, retrying on ENOMEM; CLEAR_IO_IRQ drops one
    subchannel's (EINVAL for schid 0); CLEAR_IRQS drops all."""
    f = s390_vm.create_device("FLIC")
    assert isinstance(f, Flic)
    raises(E.EINVAL, s390_vm.create_device, "FLIC")
    f.enqueue({"type": MCHK, "mchk": {"mcic": 7}}, {"type": SERVICE, "ext": {"ext_params": 0x10}},
              {"type": VIRTIO}, io_irq(0x00010002, 5), io_irq(0x00010001, 2))
    for _ in range(20):
        f.enqueue({"type": VIRTIO})
    got = f.get_all_irqs(start=1)                      # 1 record at first: ENOMEM, retried
    assert [g["type"] for g in got[:2]] == [0x00010001, 0x00010002]
    assert got[-2]["type"] == SERVICE and got[-1]["type"] == MCHK and len(got) == 25
    assert got[0]["io"]["io_int_parm"] == 0x1234
    raises(E.ENOMEM, f.attr_ioctl, "KVM_GET_DEVICE_ATTR", "KVM_DEV_FLIC_GET_ALL_IRQS", 72, 0)
    raises(E.EINVAL, f.attr_ioctl, "KVM_GET_DEVICE_ATTR", "KVM_DEV_FLIC_GET_ALL_IRQS", 0, 0)
    raises(E.EINVAL, f.enqueue, {"type": PFAULT_INIT})
    raises(E.EINVAL, f.enqueue, {"type": 0xFFFE0003})   # RESTART: not a floating interrupt
    raises(E.EINVAL, f.attr_ioctl, "KVM_SET_DEVICE_ATTR", "KVM_DEV_FLIC_ENQUEUE", 71, 0)
    raises(E.EINVAL, f.clear_io_irq, 0)
    f.clear_io_irq(0x00010001)
    assert 0x00010001 not in [g["type"] for g in f.get_all_irqs()]
    f.clear_irqs()
    assert f.get_all_irqs() == []
    f.apf_enable()
    f.apf_disable_wait()


def test_flic_quirk_unknown_group(s390_vm) -> None:
    """s390_flic.rst: an unknown group is EINVAL (not ENXIO) for set and get; HAS
    answers ENXIO; a get of a write-only group is EINVAL too."""
    f = s390_vm.create_device("FLIC")
    e = raises(E.EINVAL, f.attr_ioctl, "KVM_SET_DEVICE_ATTR", 99, 0, 0)
    assert "not ENXIO" in str(e)
    raises(E.EINVAL, f.attr_ioctl, "KVM_GET_DEVICE_ATTR", 99, 0, 0)
    assert not f.has_attr(99, 0) and f.has_attr("KVM_DEV_FLIC_AISM", 0)
    raises(E.EINVAL, f.attr_ioctl, "KVM_GET_DEVICE_ATTR", "KVM_DEV_FLIC_CLEAR_IRQS", 0, 0)


def test_flic_adapters_and_ais(s390_vm) -> None:
    """Adapters: id < 64, once (EINVAL); MASK only on a maskable one; MAP/UNMAP
    accepted; AIRQ_INJECT of an unknown adapter EINVAL, of a masked one
    suppressed; AISM: ISC 0..7, mode ALL/SINGLE (single: one interrupt until
    reset), AISM_ALL reads both masks (attr >= 2)."""
    f = s390_vm.create_device("FLIC")
    f.adapter_register(1, isc=3, maskable=True)
    f.adapter_register(2, isc=4)
    raises(E.EINVAL, f.adapter_register, 1, 3)
    raises(E.EINVAL, f.adapter_register, 64, 3)
    raises(E.EINVAL, f.adapter_modify, 2, "MASK", mask=1)
    raises(E.EINVAL, f.adapter_modify, 9, "MAP")
    f.adapter_modify(1, "MAP", addr=0x1000)
    f.adapter_modify(1, "MASK", mask=1)
    f.airq_inject(1)                                    # masked: suppressed
    assert f.get_all_irqs() == []
    raises(E.EINVAL, f.airq_inject, 9)
    f.aism(4, "SINGLE")
    f.airq_inject(2)
    f.airq_inject(2)                                    # single mode: the second is suppressed
    assert len(f.get_all_irqs()) == 1 and f.aism_all() == (0x80 >> 4, 0x80 >> 4)
    raises(E.EINVAL, f.set_attr, "KVM_DEV_FLIC_AISM", 0, {"isc": 8, "mode": 0})
    raises(E.EINVAL, f.set_attr, "KVM_DEV_FLIC_AISM", 0, {"isc": 1, "mode": 2})
    raises(E.EINVAL, f.get_attr, "KVM_DEV_FLIC_AISM_ALL", 1)
    f.set_aism_all(0x01, 0)
    assert f.aism_all() == (0x01, 0)


def test_flic_without_ais() -> None:
    with kvmdev.open("mock", arch="s390", s390_facilities=frozenset({76})) as k, k.create_vm() as vm:
        f = vm.create_device("FLIC")
        e = raises(E.EOPNOTSUPP, f.aism, 1, "ALL")
        assert "AIS facility" in str(e)
        raises(E.EOPNOTSUPP, f.aism_all)


def test_vm_mem_ctrl_and_tod(s390_vm) -> None:
    """MEM_CTRL: the limit may only be lowered (E2BIG), not to 0 (EINVAL), and not
    once a vCPU exists (EBUSY, as ENABLE_CMMA); CLR_CMMA needs CMMA enabled.
    TOD: LOW runs with the host clock from what was set; HIGH only 0; HAS says no
    to EXT though get and set take it."""
    s = s390_vm.s390
    limit = s.mem_limit
    raises(E.E2BIG, setattr, s, "mem_limit", limit + 1)
    raises(E.EINVAL, setattr, s, "mem_limit", 0)
    s.mem_limit = 1 << 40
    assert s.mem_limit == 1 << 40
    raises(E.EINVAL, s.clear_cmma)
    s.enable_cmma()
    s.clear_cmma()
    s.tod = 1 << 60
    assert 1 << 60 <= s.tod < (1 << 60) + (4096 << 20)
    raises(E.EINVAL, setattr, s, "tod_high", 1)
    s.tod_high = 0
    assert s.tod_high == 0
    assert s390_vm.has_attr("KVM_S390_VM_TOD", "KVM_S390_VM_TOD_LOW")
    assert not s390_vm.has_attr("KVM_S390_VM_TOD", "KVM_S390_VM_TOD_EXT")
    raises(E.EINVAL, setattr, s, "tod_ext", (1, 5))    # no multiple-epoch facility (139)
    s.tod_ext = (0, 5 << 40)
    assert s.tod_ext[0] == 0 and s.tod_ext[1] >= 5 << 40
    s390_vm.create_vcpu(0)
    e = raises(E.EBUSY, setattr, s, "mem_limit", 1 << 30)
    assert "vCPU is already defined" in str(e)
    raises(E.EBUSY, s.enable_cmma)
    raises(E.ENXIO, s390_vm.get_attr, "KVM_S390_VM_MEM_CTRL", "KVM_S390_VM_MEM_ENABLE_CMMA", ctype="__u64")
    raises(E.ENXIO, s390_vm.get_attr, 99, 0, ctype="__u64")


def test_vm_cpu_model_crypto_migration(s390_vm) -> None:
    """CPU model: the structs of their exact sizes; features must be the host's
    (EINVAL); fixed once a vCPU exists (EBUSY).  CRYPTO: set-only.  MIGRATION:
    START needs a memslot (EINVAL); STATUS reads it back."""
    s = s390_vm.s390
    ffi = s390_vm._arch.ffi
    assert ffi.sizeof("struct kvm_s390_vm_cpu_processor") == 2064
    assert ffi.sizeof("struct kvm_s390_vm_cpu_machine") == 4112 and ffi.sizeof("struct kvm_s390_vm_cpu_subfunc") == 2048
    m = s.cpu_machine()
    p = {"cpuid": m.cpuid, "ibc": 0, "fac_list": list(m.fac_list)}
    s.set_cpu_processor(p)
    assert s.cpu_processor().cpuid == m.cpuid
    raises(E.EINVAL, s.set_cpu_feat, {"feat": [0, 1] + [0] * 14})   # feature 127: not offered
    s.set_cpu_feat({"feat": [1 << 63] + [0] * 15})                  # feature 0
    assert s.cpu_feat().feat[0] == 1 << 63
    for op in ("ENABLE_AES_KW", "DISABLE_DEA_KW", "ENABLE_APIE"):
        s.crypto(op)
    raises(E.ENXIO, s390_vm.get_attr, "KVM_S390_VM_CRYPTO", "KVM_S390_VM_CRYPTO_ENABLE_AES_KW", ctype="__u64")
    raises(E.EINVAL, s.migration_start)
    s390_vm.add_memory(0, 0x10000)
    s.migration_start()
    assert s.migration_status == 1
    s.migration_stop()
    assert s.migration_status == 0
    s390_vm.create_vcpu(0)
    raises(E.EBUSY, s.set_cpu_processor, p)
