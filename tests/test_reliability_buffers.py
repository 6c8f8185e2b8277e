"""Buffers the kernel copies are never narrower than what it copies, and the mock
never copies past the buffer its caller gave (it raises BufferOverrun where the
kernel would overwrite memory).  Crash-prone cases run in a subprocess, so a
SIGSEGV or abort fails the test instead of killing pytest."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import kvmdev
from kvmdev.backends.guard import BufferOverrun
from kvmdev.devices.flic import IRQ_SIZE


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


FLIC_2000 = """
    import kvmdev
    kvm = kvmdev.open("mock", arch="s390")
    vm = kvm.create_vm()
    flic = vm.create_device("FLIC")
    flic.enqueue(*[{"type": i + 1, "io": {"subchannel_nr": i}} for i in range(2000)])
"""


def test_flic_get_all_irqs_with_a_narrow_ctype_does_not_crash() -> None:
    """issue 18: attr says 144000 bytes, ctype 72: the kernel copies attr bytes."""
    r = _run(FLIC_2000 + """
    try:
        flic.get_attr("KVM_DEV_FLIC_GET_ALL_IRQS", 72 * 2000, ctype="__u8[72]")
    except ValueError as e:
        print("ValueError", e)
    """)
    assert r.returncode == 0, f"crashed: rc {r.returncode}\n{r.stderr[-2000:]}"
    assert r.stdout.startswith("ValueError") and "144000" in r.stdout, r.stdout + r.stderr


def test_flic_length_in_attr_sizes_the_buffer() -> None:
    r = _run(FLIC_2000 + """
    raw = flic.get_attr("KVM_DEV_FLIC_GET_ALL_IRQS", 72 * 2000)          # no ctype: attr bytes
    assert len(raw) == 72 * 2000 and raw[-72] != 0, raw[-72:]
    raw = flic.get_attr("KVM_DEV_FLIC_GET_ALL_IRQS", 72 * 2000, ctype="__u8[144000]")
    assert len(raw) == 72 * 2000
    try:
        flic.get_attr("KVM_DEV_FLIC_GET_ALL_IRQS", 72 * 10)
    except kvmdev.KvmError as e:
        assert e.errno == 12, e                                           # ENOMEM: too small, nothing copied
    try:
        flic.set_attr("KVM_DEV_FLIC_ENQUEUE", 72 * 100, b"\\0" * 72, ctype="__u8[72]")
    except ValueError as e:
        print("ok", e)
    """)
    assert r.returncode == 0 and r.stdout.startswith("ok"), f"rc {r.returncode}\n{r.stdout}{r.stderr[-2000:]}"


def test_mock_never_writes_past_the_callers_buffer() -> None:
    """A raw call with a short buffer (below the typed path): BufferOverrun, memory intact."""
    with kvmdev.open("mock", arch="s390", guard_buffers=False) as kvm, kvm.create_vm() as vm:
        flic = vm.create_device("FLIC")
        flic.enqueue(*[{"type": i + 1, "io": {"subchannel_nr": i}} for i in range(4)])
        be = kvm._backend
        ffi = be.arch.ffi
        block = ffi.new("unsigned char[]", IRQ_SIZE * 8)      # a short buffer inside a larger block
        short = ffi.from_buffer("unsigned char[72]", ffi.buffer(block, IRQ_SIZE))
        be = kvm._backend
        g = be.arch.const("KVM_DEV_FLIC_GET_ALL_IRQS")
        with pytest.raises(BufferOverrun):
            be.attr(flic.fileno(), be.arch.request("KVM_GET_DEVICE_ATTR"), g, IRQ_SIZE * 4, short)
        assert bytes(ffi.buffer(block))[IRQ_SIZE:] == bytes(IRQ_SIZE * 7)


def test_mock_x86_narrow_ctype_is_caught() -> None:
    """The fd layer's ``ctype`` narrower than the table (its fix is the fd layer's):
    below it, the mock no longer writes 8 bytes into a 0-byte buffer."""
    r = _run("""
    import kvmdev
    from kvmdev.backends.guard import BufferOverrun
    kvm = kvmdev.open("mock", arch="x86_64", guard_buffers=False)
    try:
        kvm.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype="__u8[0]")
    except (BufferOverrun, ValueError, TypeError) as e:
        print("refused", type(e).__name__)
    """)
    assert r.returncode == 0 and r.stdout.startswith("refused"), f"rc {r.returncode}\n{r.stdout}{r.stderr[-2000:]}"


def test_run_with_a_full_fd_table(kvm) -> None:
    """issue 18: the real backend's kvm_run mmap dup()ed the vCPU fd (Python's
    mmap.mmap), so the first run() failed with EMFILE once the table was full."""
    code = """
    import errno, os, resource, kvmdev
    kvm = kvmdev.open(%r, arch=%r)
    vm = kvm.create_vm()
    cpu = vm.create_vcpu(0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
    try:
        cpu.kvm_run
        print("mapped")
    except kvmdev.KvmError as e:
        print("error", e)
    """ % (kvm.backend, kvm.arch)
    r = _run(code)
    assert r.returncode == 0 and r.stdout.startswith("mapped"), f"rc {r.returncode}\n{r.stdout}{r.stderr[-2000:]}"


def test_ctype_narrower_than_the_table_is_refused(kvm) -> None:
    """The kernel copies the table's 8 bytes into a 0-byte buffer; guard mode sees it
    on the real kernel, the mock refuses (BufferOverrun): it must be a ValueError
    before the ioctl."""
    guarded = kvmdev.open(kvm.backend, arch=kvm.arch, guard_buffers=True)
    try:
        with pytest.raises(ValueError):
            guarded.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype="__u8[0]")
    finally:
        guarded.close()


@pytest.mark.parametrize("ctype", ["__u8[0]", "__u32", "__u8[7]", "void"])
def test_every_narrower_ctype_is_refused_before_the_ioctl(kvm, ctype: str) -> None:
    """Not only the zero-width array: any ctype narrower than the 8 bytes the kernel
    copies (an int type, a short array, void) is a ValueError naming both widths,
    raised before the ioctl (the guarded backend would see the overrun)."""
    guarded = kvmdev.open(kvm.backend, arch=kvm.arch, guard_buffers=True)
    try:
        with pytest.raises(ValueError, match=r"KVM_X86_XCOMP_GUEST_SUPP.*copies 8 bytes"):
            guarded.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype=ctype)
        # as wide or wider is the caller's choice, and reads the same value
        v = guarded.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP")
        wide = guarded.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype="__u8[16]")
        assert int.from_bytes(wide[:8], "little") == v
    finally:
        guarded.close()


@pytest.mark.parametrize("ctype", ["garbage", "__u64 *", "struct nosuch", "__u8[-1]", "__u8[99999999999999999999]"])
def test_a_malformed_ctype_is_a_value_error(kvm, ctype: str) -> None:
    with pytest.raises(ValueError, match="ctype"):
        kvm.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype=ctype)
    with pytest.raises(TypeError, match="ctype"):
        kvm.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", ctype=8)  # type: ignore[arg-type]


def test_a_struct_attribute_refuses_none() -> None:
    """Issue 18: set_attr(<struct attribute>, None) sent an all-zero struct (the s390
    guest CPU features wiped).  Now a TypeError, and the features are as before."""
    with kvmdev.open("mock", arch="s390") as kvm, kvm.create_vm() as vm:
        def feat() -> list[int]:
            return list(vm.get_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT").feat)
        machine = list(vm.get_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_MACHINE_FEAT").feat)
        vm.set_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT", {"feat": machine})
        before = feat()
        assert any(before) and before == machine
        for call in (lambda: vm.set_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT", None),
                     lambda: vm.set_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT")):
            with pytest.raises(TypeError, match="not None"):
                call()
        assert feat() == before


@pytest.mark.parametrize("value, exc", [
    ({}, ValueError), ({"feat": [0] * 15}, ValueError), ({"feat": [True] + [0] * 15}, TypeError),
    ({"feat": [2 ** 70] + [0] * 15}, ValueError), ({"feat": [-1] + [0] * 15}, ValueError),
    ({"feat": "x"}, TypeError), ({"feat": [0] * 16, "bogus": 1}, ValueError), ([1, 2], TypeError)])
def test_struct_dicts_are_checked_whole_before_the_ioctl(value, exc) -> None:
    """Issue 18 review: a dict missing fields (cffi zero-fills them: `{}` wiped the s390
    CPU features like None did), short arrays, bools, out-of-range and negative ints
    in struct fields are refused before the ioctl with the field's name."""
    with kvmdev.open("mock", arch="s390") as kvm, kvm.create_vm() as vm:
        machine = list(vm.get_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_MACHINE_FEAT").feat)
        vm.set_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT", {"feat": machine})
        with pytest.raises(exc, match="KVM_S390_VM_CPU_PROCESSOR_FEAT"):
            vm.set_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT", value)
        assert list(vm.get_attr("KVM_S390_VM_CPU_MODEL", "KVM_S390_VM_CPU_PROCESSOR_FEAT").feat) == machine
