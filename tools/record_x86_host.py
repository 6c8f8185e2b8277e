"""Print this x86 host's record for kvmdev/backends/mock/x86_hosts.py: what the
real /dev/kvm answers to KVM_CHECK_EXTENSION of capability numbers 0-259 (system
and VM fd), KVM_ENABLE_CAP with flags 0 and zero args on a fresh VM and vCPU,
and KVM_GET_ONE_REG of the MSR ranges KVM advertises (KVM_X86_REG_MSR).
Usage: .venv/bin/python tools/record_x86_host.py  (paste the output into X86_HOSTS)."""
from __future__ import annotations

import os

import kvmdev

from kvmdev.backends.mock.x86_hosts import record


def main() -> None:
    kvm = kvmdev.open("real")
    h = record(kvm)
    print(f'    "{os.uname().release}": X86Host(')
    print(f"        caps={h.caps},")
    print(f"        vm_caps={h.vm_caps},")
    print(f"        enable_cap_vm=frozenset({sorted(h.enable_cap_vm)}),")
    print(f"        enable_cap_vcpu=frozenset({sorted(h.enable_cap_vcpu)}),")
    print(f"        one_reg_msrs=({', '.join(f'({a:#x}, {b:#x})' for a, b in h.one_reg_msrs)},),")
    print("    ),   # max_gpa_bits and user_addr_max: see test_reliability_x86.test_memslot_limits")


if __name__ == "__main__":
    main()
