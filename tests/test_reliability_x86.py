"""The x86 mock against the real x86 kernel (issue 18): memslot limits, the vCPU
limits, KVM_ENABLE_CAP and ONE_REG on VM and vCPU, KVM_CHECK_EXTENSION of every
capability number.  Host-dependent answers come from the record of the running
kernel's release (kvmdev.backends.mock.x86_hosts): the real kernel is compared
with its own record (skipped for a release without one), the mock with its."""
from __future__ import annotations

import errno as E
import mmap

import pytest

import kvmdev
from kvmdev.backends.mock.x86_hosts import DEFAULT_RELEASE, x86_host
from conftest import HOST

pytestmark = pytest.mark.skipif(HOST != "x86_64", reason="x86 host: the real x86 kernel and its mock")


def _record(kvm: kvmdev.Kvm):
    release = kvm.kernel_release if kvm.backend == "real" else DEFAULT_RELEASE
    rec = x86_host(release)
    if rec is None:
        pytest.skip(f"no x86 record for kernel {release} (tools/record_x86_host.py makes one)")
    return rec


def _errno(fn) -> int:
    try:
        fn()
    except kvmdev.KvmError as e:
        return e.errno
    return 0


def test_memslot_limits(kvm) -> None:
    rec = _record(kvm)
    vm = kvm.create_vm()
    buf = mmap.mmap(-1, 0x4000)
    import ctypes
    ua = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    top = 1 << rec.max_gpa_bits
    cases = [  # (gpa, size, uaddr, errno)
        ((1 << 64) - 0x2000, 0x1000, ua, E.EINVAL),          # beyond kvm_mmu_max_gfn
        (top, 0x1000, ua, E.EINVAL),
        (top - 0x1000, 0x1000, ua, 0),                       # the last page
        (0x100000, 0x1000, 0xFFFF800000000000, E.EINVAL),    # kernel space: access_ok
        (0x200000, 1 << 43, ua, E.EINVAL),                   # 2**31 pages > KVM_MEM_MAX_NR_PAGES
        (0x300000, 0x1000, rec.user_addr_max - 0x1000, 0),   # the last user page
        (0x400000, 0x1000, rec.user_addr_max, E.EINVAL),
    ]
    try:
        for slot, (gpa, size, uaddr, want) in enumerate(cases):
            got = _errno(lambda: vm.set_user_memory_region(slot, gpa, size, uaddr))
            assert got == want, f"slot {slot} gpa {gpa:#x} size {size:#x} uaddr {uaddr:#x}: {got} != {want}"
    finally:
        vm.close()
        del ua
        ctypes = None  # noqa: F841 - the view goes before the map
        buf.close()


def test_vcpu_limits(kvm) -> None:
    vm = kvm.create_vm()
    try:
        assert _errno(lambda: vm.create_vcpu((1 << 64) - 1)) == E.EINVAL    # create_vcpu(-1)'s ioctl argument
        assert _errno(lambda: vm.create_vcpu(kvm.check_extension("KVM_CAP_MAX_VCPU_ID"))) == E.EINVAL
        n = kvm.check_extension("KVM_CAP_MAX_VCPUS")
        for i in range(n):
            vm.create_vcpu(i).close()                  # the vCPU stays in the VM: only the fd goes
        assert _errno(lambda: vm.create_vcpu(n)) == E.EINVAL   # the (MAX_VCPUS + 1)th
    finally:
        vm.close()


def test_enable_cap(kvm) -> None:
    rec = _record(kvm)
    vm_cap, vcpu_cap = min(rec.enable_cap_vm), min(rec.enable_cap_vcpu)
    refused = next(c for c in range(1, 260) if c not in rec.enable_cap_vm)
    with kvm.create_vm() as vm:
        assert vm.enable_cap(vm_cap) == 0
    with kvm.create_vm() as vm:
        assert _errno(lambda: vm.enable_cap(vm_cap, flags=1)) == E.EINVAL
        assert _errno(lambda: vm.enable_cap(refused)) == E.EINVAL
        assert _errno(lambda: vm.enable_cap(refused, 1, 2, 3, 4)) == E.EINVAL
        cpu = vm.create_vcpu(0)
        assert cpu.enable_cap(vcpu_cap) == 0
        assert _errno(lambda: cpu.enable_cap(vcpu_cap, flags=1)) == E.EINVAL
        assert _errno(lambda: cpu.enable_cap(next(c for c in range(260) if c not in rec.enable_cap_vcpu))) == E.EINVAL


MSR = 0x2030000200000000      # KVM_X86_REG_MSR(index)


def test_one_reg_msrs(kvm) -> None:
    rec = _record(kvm)
    lo = rec.one_reg_msrs[0][0]
    absent = next(i for i in range(0x1000) if not any(a <= i <= b for a, b in rec.one_reg_msrs))
    with kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        cpu.get_one_reg(MSR | lo)
        assert _errno(lambda: cpu.get_one_reg(MSR | absent)) == E.EINVAL
        assert _errno(lambda: cpu.get_one_reg(0x2030000000000000)) == E.EINVAL   # register type 0
        assert _errno(lambda: cpu.get_one_reg(0x2030000300000000)) == E.EINVAL   # KVM_REG_GUEST_SSP: no CET
        cpu.set_one_reg(MSR | 0x174, 0x10)                                     # IA32_SYSENTER_CS
        assert cpu.get_one_reg(MSR | 0x174) == 0x10


def test_check_extension_of_every_number(kvm) -> None:
    rec = _record(kvm)
    with kvm.create_vm() as vm:
        sys_answers = {c: kvm.check_extension(c) for c in range(260)}
        vm_answers = {c: vm.check_extension(c) for c in range(260)}
    assert {c: v for c, v in sys_answers.items() if v} == rec.caps
    assert {c: v for c, v in vm_answers.items() if v != rec.caps.get(c, 0)} == rec.vm_caps


def _x86_corpus() -> list[dict]:
    import json
    from pathlib import Path
    path = Path(__file__).parent / "fuzz_corpus" / "x86_ioctls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("entry", _x86_corpus(), ids=lambda e: e["ops"][0][0])
def test_ioctl_corpus(kvm, entry) -> None:
    """Cases where the x86 mock diverged from the real kernel (the issue's and the
    differential fuzzer's, kvmdev.fuzz --only KVM_IOCTLS): each backend answers as
    the kernel that recorded them (the real one: when it is that release)."""
    from kvmdev import fuzz
    if kvm.backend == "real" and kvm.kernel_release != entry["release"]:
        pytest.skip(f"recorded on {entry['release']}, this kernel is {kvm.kernel_release}")
    case = fuzz.Case(entry["device"], [tuple(o) for o in entry["ops"]])
    assert fuzz.run(kvm, case) == entry["real"]


def test_differential_on_an_unrecorded_host_records_it(kvm, monkeypatch, capsys) -> None:
    """A host whose release x86_hosts does not know (every new CI machine may be one):
    `kvmdev.fuzz --differential` records its answers first, so the mock answers as
    this host and the run finds no divergence (before, the default record's
    capabilities were compared with this host's: 4 divergences on 6.18.44-fc-v1300)."""
    from kvmdev import fuzz
    from kvmdev.backends.mock import x86_hosts
    if kvm.backend != "real":
        pytest.skip("the real x86 kernel")
    monkeypatch.setattr(x86_hosts, "X86_HOSTS", {k: v for k, v in x86_hosts.X86_HOSTS.items()
                                                  if k != kvm.kernel_release})
    assert fuzz.main(["--backend", "real", "--ops", "600", "--differential", "--only", "KVM_IOCTLS",
                      "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "has no record in x86_hosts: recorded now" in out and "divergences from the mock: 0" in out
    assert x86_hosts.X86_HOSTS[kvm.kernel_release].caps == {c: v for c in range(260)
                                                           if (v := kvm.check_extension(c))}


@pytest.mark.parametrize("irqchip", [False, True])
def test_mp_state(kvm, irqchip: bool) -> None:
    """KVM_GET/SET_MP_STATE on x86 (the review found the mock answering ENOTTY while
    advertising KVM_CAP_MP_STATE): RUNNABLE at creation, except for APs with the
    in-kernel irqchip (UNINITIALIZED); RUNNABLE always settable, the LAPIC states only
    with the irqchip; SIPI_RECEIVED reads back RUNNABLE (the pending SIPI is taken)."""
    if kvm.arch != "x86_64":
        pytest.skip("x86")
    assert kvm.check_extension("KVM_CAP_MP_STATE") == 1
    with kvm.create_vm() as vm:
        if irqchip:
            vm.create_irqchip()
        bsp, ap = vm.create_vcpu(0), vm.create_vcpu(1)
        assert bsp.mp_state == "KVM_MP_STATE_RUNNABLE"
        assert ap.mp_state == ("KVM_MP_STATE_UNINITIALIZED" if irqchip else "KVM_MP_STATE_RUNNABLE")
        got = {}
        for st in range(12):
            try:
                ap.mp_state = st
                got[st] = ap.mp_state
            except kvmdev.KvmError as e:
                assert e.errno == E.EINVAL
                got[st] = "EINVAL"
        lapic = {1: "KVM_MP_STATE_UNINITIALIZED", 2: "KVM_MP_STATE_INIT_RECEIVED", 3: "KVM_MP_STATE_HALTED",
                 4: "KVM_MP_STATE_RUNNABLE", 9: "KVM_MP_STATE_AP_RESET_HOLD"}
        want = {st: "EINVAL" for st in range(12)}
        want[0] = "KVM_MP_STATE_RUNNABLE"
        if irqchip:
            want.update(lapic)
        assert got == want
