"""The C fast paths of the hot calls (issue 20) keep the library's guarantees:
the buffer guard still sees every typed attribute (the fast path would bypass
it), a failing typed GET/SET still raises the named KvmError, and the exit
reason and MMIO exit decoding read what the kernel wrote."""
from __future__ import annotations

import struct

import pytest

import kvmdev
from kvmdev.backends.guard import GuardedBackend


def _open(kvm: kvmdev.Kvm, **kw: object) -> kvmdev.Kvm:
    return kvmdev.open(kvm.backend, arch=kvm.arch, **kw)


def test_the_buffer_guard_sees_every_typed_attribute(kvm: kvmdev.Kvm, monkeypatch: pytest.MonkeyPatch) -> None:
    if kvm.arch != "x86_64":
        pytest.skip("the x86 system attribute")
    seen: list[int] = []
    inner = GuardedBackend.attr

    def counting(self: GuardedBackend, fd: int, request: int, group: int, attr: int, addr: object) -> int:
        seen.append(attr)
        return inner(self, fd, request, group, attr, addr)
    monkeypatch.setattr(GuardedBackend, "attr", counting)
    with _open(kvm, guard_buffers=True) as g:
        values = [g.xcomp_guest_supp for _ in range(3)]
        values.append(g.get_attr("KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP"))
    assert len(seen) == 4
    assert values == [kvm.xcomp_guest_supp] * 4


def test_a_refused_typed_attribute_raises_the_named_error(kvm: kvmdev.Kvm) -> None:
    if kvm.arch != "x86_64":
        pytest.skip("the x86 system attribute")
    for _ in range(2):    # the first call resolves and caches, the second takes the fast path
        with pytest.raises(AttributeError):
            kvm.xcomp_guest_supp = 1      # read-only: refused before any ioctl
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        vcpu.tsc_offset = 0
        vcpu.tsc_offset = 0               # cached set path
        for bad in (-1, 1 << 64):
            with pytest.raises(ValueError, match="KVM_VCPU_TSC_OFFSET"):
                vcpu.tsc_offset = bad
        with pytest.raises(TypeError, match="KVM_VCPU_TSC_OFFSET"):
            vcpu.tsc_offset = True
        vcpu.close()
        with pytest.raises(kvmdev.ClosedError):
            vcpu.tsc_offset
        with pytest.raises(kvmdev.ClosedError):
            vcpu.get_attr("KVM_VCPU_TSC_CTRL", "KVM_VCPU_TSC_OFFSET")


def test_the_x86_run_loop_decodes_io_and_mmio_exits(kvm: kvmdev.Kvm) -> None:
    if kvm.arch != "x86_64" or kvm.backend == "mock":
        pytest.skip("runs real-mode guest code on the real x86 kernel")
    code = {"io": b"\xe6\x10\xeb\xfc", "write": b"\xb0\x5a\xa2\x00\x10\xeb\xf9",   # mov al,0x5a; mov [0x1000],al
            "read": b"\xa0\x00\x10\xe6\x10\xeb\xf8"}                              # mov al,[0x1000]; out 0x10,al
    for kind, text in code.items():
        with kvm.create_vm() as vm:
            vm.add_memory(0xFFFF0000, 0x10000).write(0xFFFFFFF0, text)
            vcpu = vm.create_vcpu(0)
            if kind == "io":
                assert [vcpu.run() for _ in range(3)] == ["KVM_EXIT_IO"] * 3
                with pytest.raises(ValueError, match="KVM_EXIT_IO, not KVM_EXIT_MMIO"):
                    vcpu.mmio
            elif kind == "write":
                assert vcpu.run() == "KVM_EXIT_MMIO"
                assert vcpu.mmio == (0x1000, b"\x5a", True)
                with pytest.raises(ValueError, match="write"):
                    vcpu.complete_mmio_read(b"\0")
            else:
                assert vcpu.run() == "KVM_EXIT_MMIO"
                assert vcpu.mmio == (0x1000, b"\0", False)
                with pytest.raises(ValueError, match="reads 1 bytes"):
                    vcpu.complete_mmio_read(b"\0\0")
                vcpu.complete_mmio_read(b"\xa7")
                assert vcpu.run() == "KVM_EXIT_IO"
                # the value the guest loaded is what `out` wrote: kvm_run.io data
                # (kvm_run.io: direction, size, port, count, data_offset, in the exit union)
                ffi = vcpu._arch.ffi
                raw = bytes(ffi.buffer(vcpu.kvm_run, kvm.vcpu_mmap_size))
                direction, size, port, count, data_offset = struct.unpack_from(
                    "=BBHIQ", raw, ffi.offsetof("struct kvm_run", "mmio"))
                assert (direction, size, port, count) == (1, 1, 0x10, 1)    # KVM_EXIT_IO_OUT
                assert raw[data_offset] == 0xA7
            assert vcpu.run(immediate_exit=True) == "KVM_EXIT_INTR"
            vcpu.close()
            with pytest.raises(kvmdev.ClosedError):
                vcpu.run()
