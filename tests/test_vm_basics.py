"""Guest memory, KVM_IRQ_LINE, KVM_SIGNAL_MSI and KVM_RUN's first-run path,
on the real kernel and the mock (host architecture, no in-kernel irqchip):
x86 here, and powerpc in the ppc64el guest (marked powerpc)."""
from __future__ import annotations

import errno
import mmap

import pytest

import kvmdev
from kvmdev import KvmError

pytestmark = pytest.mark.powerpc
PAGE = mmap.PAGESIZE     # memslots are in host pages: 4 KiB on x86, 64 KiB on Debian's ppc64el


def errno_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(KvmError) as ei:
        fn()
    return ei.value.errno_name


def test_guest_memory(vm: kvmdev.Vm) -> None:
    mem = vm.add_memory(0x100000, 16 * PAGE)
    assert vm.memory == {0: mem} and mem.slot == 0
    mem.write(0x100010, b"kvmdev")
    assert mem.read(0x100010, 6) == b"kvmdev"
    assert vm.guest_memory(0x100010, 6) is mem
    with pytest.raises(ValueError):
        mem.read(0x100000 + 16 * PAGE, 1)
    u = mem.userspace_addr
    # __kvm_set_memory_region's checks, as the real kernel answers them
    assert errno_of(lambda: vm.set_user_memory_region(1, 0x100000, PAGE, u)) == "EEXIST"  # overlap
    assert errno_of(lambda: vm.set_user_memory_region(1, 0x200800, PAGE, u)) == "EINVAL"  # gpa alignment
    assert errno_of(lambda: vm.set_user_memory_region(1, 0x200000, PAGE + 1, u)) == "EINVAL"  # size
    assert errno_of(lambda: vm.set_user_memory_region(1, 0x200000, PAGE, u + 1)) == "EINVAL"  # uaddr
    assert errno_of(lambda: vm.set_user_memory_region(40000, 0x200000, PAGE, u)) == "EINVAL"  # slot id
    assert errno_of(lambda: vm.set_user_memory_region(5, 0, 0, 0)) == "EINVAL"  # delete of no slot
    assert errno_of(lambda: vm.set_user_memory_region(0, 0x100000, 16 * PAGE, u, 1 << 7)) == "EINVAL"  # flags
    assert errno_of(lambda: vm.set_user_memory_region(0, 0x100000, 8 * PAGE, u)) == "EINVAL"  # resize
    vm.set_user_memory_region(0, 0x300000, 16 * PAGE, u)  # a move is allowed
    vm.set_user_memory_region(0, 0, 0, 0)  # delete
    vm.set_user_memory_region(0, 0x100000, 16 * PAGE, u)
    second = vm.add_memory(0x400000, PAGE)
    assert second.slot == 1
    vm.close()
    assert mem.buf.closed and second.buf.closed


def test_irq_line_without_irqchip(vm: kvmdev.Vm) -> None:
    with pytest.raises(KvmError) as ei:
        vm.irq_line(5, 1)
    assert ei.value.errno == errno.ENXIO and ei.value.ioctl == "KVM_IRQ_LINE"


def test_signal_msi_without_irqchip(vm: kvmdev.Vm) -> None:
    """EINVAL (kvm_send_userspace_msi without an irqchip); powerpc has no
    KVM_SIGNAL_MSI at all (ENOTTY, seen on ppc64el 6.1)."""
    want = errno.ENOTTY if vm.arch == "powerpc" else errno.EINVAL
    for devid in (None, 1):
        with pytest.raises(KvmError) as ei:
            vm.signal_msi(0xFEE00000, 0x30, devid=devid)
        assert ei.value.errno == want and ei.value.ioctl == "KVM_SIGNAL_MSI"


def test_run_immediate_exit(vm: kvmdev.Vm) -> None:
    vcpu = vm.create_vcpu(0)
    assert vcpu.run(immediate_exit=True) == "KVM_EXIT_INTR"
    assert vcpu.kvm_run.immediate_exit == 0  # reset after the call
    vcpu.close()
    assert vcpu.closed


def test_create_device_overloads_match_the_classes() -> None:
    """Vm.create_device's overloads (what type checkers see) give, for every
    device type with a typed class, that class, by name and by DeviceType
    member: read from vm.py's source, compared with DEVICE_CLASSES (what the
    call returns at run time)."""
    import ast
    import inspect
    from kvmdev import fd, vm
    tree = ast.parse(inspect.getsource(vm))
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and node.name == "create_device" and node.decorator_list):
            continue
        ann, ret = node.args.args[1].annotation, node.returns
        assert isinstance(ret, ast.Name)
        if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Literal":
            elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            names = {e.value for e in elts if isinstance(e, ast.Constant)}
            members = {e.attr for e in elts if isinstance(e, ast.Attribute)}
            assert names == members, (names, members)          # both spellings, the same set
            typed.update({n: ret.id for n in names})
    assert typed == {n: c.__name__ for n, c in fd.DEVICE_CLASSES.items()}
