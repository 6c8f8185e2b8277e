"""What real x86 hosts answered, recorded per kernel release (uname -r), for the
x86 mock to answer the same and for the tests to compare a real host with its
own record rather than expect every host to match one.  Recorded with
tools/record_x86_host.py on the host named; a host without a record runs the
mock with the "6.18" default and skips the real-versus-record comparisons."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class X86Host:
    """One host's answers.  ``caps``: KVM_CHECK_EXTENSION on /dev/kvm by capability
    number (0 where absent); ``vm_caps``: the VM fd's answers where they differ;
    ``enable_cap_vm``/``enable_cap_vcpu``: the capabilities KVM_ENABLE_CAP accepts
    with flags 0 and zero args on a fresh VM / vCPU (the rest: EINVAL);
    ``one_reg_msrs``: the MSR ranges KVM_GET_ONE_REG answers (KVM_X86_REG_MSR,
    kvm_is_advertised_msr); ``max_gpa_bits``: the guest physical bits a memslot
    may reach (kvm_mmu_max_gfn); ``user_addr_max``: TASK_SIZE_MAX, the end of
    user space (access_ok of a memslot's userspace_addr + size)."""

    caps: dict[int, int]
    vm_caps: dict[int, int]
    enable_cap_vm: frozenset[int]
    enable_cap_vcpu: frozenset[int]
    one_reg_msrs: tuple[tuple[int, int], ...]
    max_gpa_bits: int = 52
    user_addr_max: int = (1 << 47) - 4096


X86_HOSTS: dict[str, X86Host] = {
    # the CI machines' nested 6.18 "-fc-" kernel (Intel, 4-level paging)
    "6.18.44-fc-v1147": X86Host(
        caps={
            0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 6: 1, 7: 1, 8: 1, 9: 2, 10: 32764, 11: 1, 12: 1, 14: 1,
            15: 2, 16: 1, 21: 1, 22: 1, 23: 1, 24: 1, 25: 4096, 26: 1, 30: 1, 31: 32, 32: 1, 33: 1,
            34: 1, 35: 1, 36: 1, 37: 1, 39: 14, 40: 1, 41: 1, 47: 1, 50: 1, 51: 1, 54: 1, 55: 1, 56: 1,
            59: 1, 61: 1, 66: 1024, 70: 1, 72: 1, 74: 7, 76: 1, 77: 1, 81: 1, 82: 1, 89: 1, 95: 1,
            97: 1, 98: 1, 100: 1, 105: 1, 116: 1, 121: 1, 122: 1, 127: 1, 128: 4096, 129: 15, 136: 1,
            143: 14, 153: 1, 159: 1, 162: 1, 164: 1, 168: 3, 173: 1, 182: 1, 183: 1, 184: 1, 185: 1,
            187: 1, 188: 1, 189: 1, 190: 1, 192: 1048576, 195: 2031619, 197: 1, 200: 1, 201: 4096,
            203: 1, 204: 1, 206: 1, 208: 4096, 209: 1, 213: 1535, 215: 1, 218: 1, 220: 1, 223: 1048576,
            226: 1, 231: 1, 232: 1, 234: 1, 235: 1, 237: 1, 238: 1, 244: 3,
            },
        vm_caps={129: 11},
        enable_cap_vm=frozenset([116, 121, 128, 129, 143, 159, 164, 168, 182, 188, 193, 201, 204, 213, 218, 220]),
        enable_cap_vcpu=frozenset([190]),
        one_reg_msrs=(
            (0x0, 0x1), (0x10, 0x12), (0x17, 0x17), (0x1b, 0x1b), (0x2a, 0x2a), (0x2c, 0x2c), (0x34,
            0x34), (0x3a, 0x3b), (0x48, 0x48), (0x8b, 0x8b), (0xc1, 0xc2), (0xcd, 0xce), (0xfe,
            0xfe), (0x10a, 0x10a), (0x11e, 0x11e), (0x122, 0x122), (0x140, 0x140), (0x174, 0x176),
            (0x179, 0x17b), (0x186, 0x187), (0x198, 0x199), (0x1a0, 0x1a0), (0x1c4, 0x1c5), (0x1d9,
            0x1d9), (0x1db, 0x1de), (0x1fc, 0x1fc), (0x200, 0x20f), (0x250, 0x250), (0x258, 0x259),
            (0x268, 0x26f), (0x277, 0x277), (0x280, 0x29f), (0x2ff, 0x2ff), (0x345, 0x345), (0x400,
            0x47f), (0x606, 0x606), (0x611, 0x611), (0x619, 0x619), (0x639, 0x639), (0x641, 0x641),
            (0x6e0, 0x6e0), (0xda0, 0xda0), (0x4b564d00, 0x4b564d07), (0x4b564d10, 0x4b564d13),
            (0xc0000080, 0xc0000084), (0xc0000100, 0xc0000104), (0xc0010000, 0xc0010007),
            (0xc0010010, 0xc0010010), (0xc0010015, 0xc0010015), (0xc001001b, 0xc001001b),
            (0xc001001f, 0xc001001f), (0xc0010055, 0xc0010055), (0xc0010058, 0xc0010058),
            (0xc0010112, 0xc0010113), (0xc0010117, 0xc0010117), (0xc001011f, 0xc001011f)
        ),
    ),
    # a later build of the same kernel (machines of 2026-12-08): no caps 234 and 244, other MSRs
    "6.18.44-fc-v1300": X86Host(
        caps={0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 6: 1, 7: 1, 8: 1, 9: 2, 10: 32764, 11: 1, 12: 1, 14: 1,
            15: 2, 16: 1, 21: 1, 22: 1, 23: 1, 24: 1, 25: 4096, 26: 1, 30: 1, 31: 32, 32: 1, 33: 1,
            34: 1, 35: 1, 36: 1, 37: 1, 39: 14, 40: 1, 41: 1, 47: 1, 50: 1, 51: 1, 54: 1, 55: 1, 56:
            1, 59: 1, 61: 1, 66: 1024, 70: 1, 72: 1, 74: 7, 76: 1, 77: 1, 81: 1, 82: 1, 89: 1, 95:
            1, 97: 1, 98: 1, 100: 1, 105: 1, 116: 1, 121: 1, 122: 1, 127: 1, 128: 4096, 129: 15,
            136: 1, 143: 14, 153: 1, 159: 1, 162: 1, 164: 1, 168: 3, 173: 1, 182: 1, 183: 1, 184: 1,
            185: 1, 187: 1, 188: 1, 189: 1, 190: 1, 192: 1048576, 195: 2031619, 197: 1, 200: 1, 201:
            4096, 203: 1, 204: 1, 206: 1, 208: 4096, 209: 1, 213: 1535, 215: 1, 218: 1, 220: 1, 223:
            1048576, 226: 1, 231: 1, 232: 1, 235: 1, 237: 1, 238: 1},
        vm_caps={129: 11},
        enable_cap_vm=frozenset([116, 121, 128, 129, 143, 159, 164, 168, 182, 188, 193, 201, 204, 213, 218, 220]),
        enable_cap_vcpu=frozenset([190]),
        one_reg_msrs=((0x0, 0x1), (0x10, 0x12), (0x17, 0x17), (0x1b, 0x1b), (0x2a, 0x2a), (0x2c,
            0x2c), (0x34, 0x34), (0x3b, 0x3b), (0x48, 0x48), (0x8b, 0x8b), (0xc1, 0xc2), (0xcd,
            0xce), (0xfe, 0xfe), (0x10a, 0x10a), (0x11e, 0x11e), (0x122, 0x122), (0x140, 0x140),
            (0x174, 0x176), (0x179, 0x17b), (0x186, 0x187), (0x198, 0x199), (0x1a0, 0x1a0), (0x1c4,
            0x1c5), (0x1d9, 0x1d9), (0x1db, 0x1de), (0x1fc, 0x1fc), (0x200, 0x20f), (0x250, 0x250),
            (0x258, 0x259), (0x268, 0x26f), (0x277, 0x277), (0x280, 0x29f), (0x2ff, 0x2ff), (0x345,
            0x345), (0x400, 0x47f), (0x606, 0x606), (0x611, 0x611), (0x619, 0x619), (0x639, 0x639),
            (0x641, 0x641), (0x6e0, 0x6e0), (0xda0, 0xda0), (0xc0000080, 0xc0000084), (0xc0000100,
            0xc0000104), (0x4b564d00, 0x4b564d07), (0x4b564d10, 0x4b564d13), (0xc0010000,
            0xc0010007), (0xc0010010, 0xc0010010), (0xc0010015, 0xc0010015), (0xc001001b,
            0xc001001b), (0xc001001f, 0xc001001f), (0xc0010055, 0xc0010055), (0xc0010058,
            0xc0010058), (0xc0010112, 0xc0010113), (0xc0010117, 0xc0010117), (0xc001011f,
            0xc001011f),),
    ),   # max_gpa_bits and user_addr_max: see test_reliability_x86.test_memslot_limits
}
DEFAULT_RELEASE = "6.18.44-fc-v1147"


_MSR = 0x2030000200000000       # KVM_REG_X86 | KVM_REG_SIZE_U64 | KVM_X86_REG_TYPE_MSR
_MSR_SCAN = ((0, 0x2000), (0xC0000000, 0x2000), (0x40000000, 0x200), (0x4B564D00, 0x100), (0xC0010000, 0x400))


def record(kvm: Any) -> X86Host:
    """This host's answers, asked of the real kernel behind ``kvm`` (about 2 s):
    KVM_CHECK_EXTENSION of 0-259 on the system and a VM fd, KVM_ENABLE_CAP with
    flags 0 and no args on a fresh VM and vCPU, KVM_GET_ONE_REG of the MSR ranges.
    tools/record_x86_host.py prints it for X86_HOSTS; fuzz --differential records an
    unknown host this way so that its mock answers as it does."""
    from ...errors import KvmError

    def answer(fn: Any) -> int:
        try:
            return int(fn())
        except KvmError as e:
            return -e.errno
    caps: dict[int, int] = {}
    vm_caps: dict[int, int] = {}
    on_vm: list[int] = []
    on_vcpu: list[int] = []
    msrs: list[int] = []
    with kvm.create_vm() as vm:
        for c in range(260):
            caps[c] = kvm.check_extension(c)
            v = vm.check_extension(c)
            if v != caps[c]:
                vm_caps[c] = v
        cpu = vm.create_vcpu(0)
        for lo, n in _MSR_SCAN:
            msrs += [i for i in range(lo, lo + n) if answer(lambda i=i: cpu.get_one_reg(_MSR | i) * 0) == 0]
    for c in range(260):
        with kvm.create_vm() as vm:
            if answer(lambda: vm.enable_cap(c)) == 0:
                on_vm.append(c)
            cpu = vm.create_vcpu(0)
            if answer(lambda: cpu.enable_cap(c)) == 0:
                on_vcpu.append(c)
    ranges: list[list[int]] = []
    for i in msrs:
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return X86Host(caps={c: v for c, v in caps.items() if v}, vm_caps=vm_caps, enable_cap_vm=frozenset(on_vm),
                   enable_cap_vcpu=frozenset(on_vcpu), one_reg_msrs=tuple((a, b) for a, b in ranges))


def ensure(kvm: Any) -> str:
    """The release of the real x86 kernel behind ``kvm``, its record made now if
    X86_HOSTS has none (kept for this process), so a mock opened with
    ``x86_release=`` that release answers as this host."""
    release = kvm.kernel_release
    if release not in X86_HOSTS:
        X86_HOSTS[release] = record(kvm)
    return release


def x86_host(release: str) -> X86Host | None:
    """The record of a kernel release, or None."""
    return X86_HOSTS.get(release)
