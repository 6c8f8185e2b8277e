"""Print this x86 host's record for kvmdev/backends/mock/x86_hosts.py: what the
real /dev/kvm answers to KVM_CHECK_EXTENSION of capability numbers 0-259 (system
and VM fd), KVM_ENABLE_CAP with flags 0 and zero args on a fresh VM and vCPU,
and KVM_GET_ONE_REG of the MSR ranges KVM advertises (KVM_X86_REG_MSR).
Usage: .venv/bin/python tools/record_x86_host.py  (paste the output into X86_HOSTS)."""
from __future__ import annotations

import os

import kvmdev

MSR = 0x2030000200000000
SCAN = ((0, 0x2000), (0xC0000000, 0x2000), (0x40000000, 0x200), (0x4B564D00, 0x100), (0xC0010000, 0x400))


def _answer(fn) -> int:
    try:
        return fn()
    except kvmdev.KvmError as e:
        return -e.errno


def main() -> None:
    kvm = kvmdev.open("real")
    caps, vm_caps, on_vm, on_vcpu, msrs = {}, {}, [], [], []
    with kvm.create_vm() as vm:
        for c in range(260):
            caps[c] = kvm.check_extension(c)
            if vm.check_extension(c) != caps[c]:
                vm_caps[c] = vm.check_extension(c)
        cpu = vm.create_vcpu(0)
        for lo, n in SCAN:
            msrs += [i for i in range(lo, lo + n) if _answer(lambda i=i: cpu.get_one_reg(MSR | i) * 0) == 0]
    for c in range(260):
        with kvm.create_vm() as vm:
            if _answer(lambda: vm.enable_cap(c)) == 0:
                on_vm.append(c)
            cpu = vm.create_vcpu(0)
            if _answer(lambda: cpu.enable_cap(c)) == 0:
                on_vcpu.append(c)
    ranges: list[list[int]] = []
    for i in msrs:
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    print(f'    "{os.uname().release}": X86Host(')
    print(f"        caps={ {c: v for c, v in caps.items() if v} },")
    print(f"        vm_caps={vm_caps},")
    print(f"        enable_cap_vm=frozenset({on_vm}),")
    print(f"        enable_cap_vcpu=frozenset({on_vcpu}),")
    print(f"        one_reg_msrs=({', '.join(f'({a:#x}, {b:#x})' for a, b in ranges)},),")
    print("    ),   # max_gpa_bits and user_addr_max: see test_reliability_x86.test_memslot_limits")


if __name__ == "__main__":
    main()
