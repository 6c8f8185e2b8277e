"""Bare-metal A64 programs run behind KVM_RUN: on x86 by the arm64 mock's CPU
(Unicorn) as each kernel/GIC profile, in the arm64 guests by the real kernels.
Each program reports through MMIO stores to OUT (x28); the expected exits are
computed here from what the program means, never from an earlier run, so the
same test passes unchanged on the mock and on the real kernels."""
from __future__ import annotations

import struct
import threading
from typing import Callable, Iterator

import pytest

import kvmdev
from a64 import assemble
from kvm_asserts import known_host
from kvmdev import arm64 as A

pytestmark = pytest.mark.arm64

M64 = (1 << 64) - 1
OUT = 0x10000000          # MMIO: the program's results (stores)
IN = 0x10001000           # MMIO: values the test supplies (loads)
SYSTEM_OFF = ("off",)

PRELUDE = """
    .macro out reg
    str \\reg, [x28]
    .endm
    .macro poweroff
    ldr x0, =0x84000008
    hvc #0
    .endm
    .text
    .globl _start
_start:
"""


@pytest.fixture
def vm(arm64_kvm: kvmdev.Kvm) -> Iterator[kvmdev.Vm]:
    with arm64_kvm.create_vm() as v:
        yield v


def load(vm: kvmdev.Vm, base: int, body: str, features: tuple = ("PSCI_0_2",),
         vcpu_id: int = 0) -> tuple[kvmdev.Vcpu, kvmdev.GuestMemory]:
    """The program at ``base`` (its own address: see test_arm64_basics' RAM note),
    64 KiB of RAM after it for data (x27), x28 = OUT."""
    code = assemble(PRELUDE + body + "\n    .ltorg\n")
    mem = vm.add_memory(base, 0x20000)
    mem.write(base, code)
    c = vm.create_vcpu(vcpu_id)
    c.vcpu_init(features)
    for reg, value in {"pc": base, "x27": base + 0x10000, "x28": OUT}.items():
        c.set_one_reg(reg, value)
    return c, mem


def exits(c: kvmdev.Vcpu, reads: Callable[[int, int], int] | None = None, limit: int = 500) -> list:
    """Run to the end: ("w", value) per store to OUT (other stores with their
    address), ("r", addr, len) per load (answered by ``reads``), then SYSTEM_OFF."""
    seen: list = []
    for _ in range(limit):
        why = c.run()
        if why == "KVM_EXIT_MMIO":
            m = c.mmio
            if m.is_write:
                value = int.from_bytes(m.data, "little")
                seen.append(("w", value) if m.phys_addr == OUT else ("w", m.phys_addr, len(m.data), value))
            else:
                seen.append(("r", m.phys_addr, len(m.data)))
                assert reads is not None, f"unexpected MMIO read at {m.phys_addr:#x}"
                c.complete_mmio_read((reads(m.phys_addr, len(m.data)) & ((1 << 8 * len(m.data)) - 1))
                                     .to_bytes(len(m.data), "little"))
        elif why == "KVM_EXIT_SYSTEM_EVENT":
            assert c.system_event.type == "KVM_SYSTEM_EVENT_SHUTDOWN"
            seen.append(SYSTEM_OFF)
            return seen
        elif why != "KVM_EXIT_INTR":   # a signal's exit (the suite's own timers) changes nothing
            raise AssertionError(f"unexpected exit {why} after {seen}")
    raise AssertionError(f"no SYSTEM_OFF after {limit} exits: {seen}")


def outs(*values: int) -> list:
    return [("w", v & M64) for v in values] + [SYSTEM_OFF]


def sx(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def rbit(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2)


def ror(value: int, n: int, bits: int = 64) -> int:
    return (value >> n | value << (bits - n)) & ((1 << bits) - 1)


# -- data processing -------------------------------------------------------------------

def test_data_processing(vm: kvmdev.Vm) -> None:
    c, _ = load(vm, 0x50000000, """
    movz x0, #0x1234
    movk x0, #0x5678, lsl #16
    out x0
    mov x1, #-2
    out x1
    add x2, x0, #0x10, lsl #12
    out x2
    subs x3, x1, #1
    cset x4, mi
    out x4
    and x5, x0, #0xffff0000
    out x5
    orr x6, xzr, #0x5555555555555555
    out x6
    eor w7, w0, #0xffff
    out x7
    add x8, x0, x1, lsl #4
    out x8
    sub w9, w0, w1, uxtb
    out x9
    neg x10, x0
    out x10
    adds x11, x1, #3
    adc x12, xzr, xzr
    out x12
    bic x14, x0, x5
    out x14
    lsl x15, x0, #8
    out x15
    lsr x16, x1, #60
    out x16
    asr x17, x1, #1
    out x17
    ror x18, x0, #4
    out x18
    ubfx x19, x0, #8, #12
    out x19
    sbfx x20, x0, #12, #8
    out x20
    mov x21, #0
    bfi x21, x0, #32, #16
    out x21
    clz x22, x0
    out x22
    rbit w23, w0
    out x23
    rev x24, x0
    out x24
    rev16 w25, w0
    out x25
    mov x9, #7
    lslv x10, x0, x9
    out x10
    extr x11, x0, x1, #16
    out x11
    sxtw x12, w1
    out x12
    uxth w13, w1
    out x13
    poweroff
""")
    x0, x1 = 0x56781234, M64 - 1
    x5 = x0 & 0xFFFF0000
    assert exits(c) == outs(
        x0, x1, x0 + 0x10000, 1, x5, 0x5555555555555555, (x0 ^ 0xFFFF) & 0xFFFFFFFF,
        x0 - 32, (x0 - 0xFE) & 0xFFFFFFFF, -x0, 1, x0 & ~x5, x0 << 8, 0xF, M64, ror(x0, 4),
        x0 >> 8 & 0xFFF, sx(x0 >> 12, 8), 0x1234 << 32, 33, rbit(x0, 32), int.from_bytes(x0.to_bytes(8, "little"), "big"),
        0x78563412, x0 << 7, (x0 << 48 | x1 >> 16) & M64, M64 - 1, 0xFFFE)


def test_multiply_divide_and_conditionals(vm: kvmdev.Vm) -> None:
    c, _ = load(vm, 0x50100000, """
    ldr x0, =0x123456789abcdef0
    ldr x1, =0xfedcba9876543210
    mov x2, #1000
    mov x3, #-7
    mul x4, x0, x1
    out x4
    madd x5, x2, x2, x0
    out x5
    msub x6, x2, x3, x2
    out x6
    umulh x7, x0, x1
    out x7
    smulh x8, x0, x1
    out x8
    smull x9, w2, w3
    out x9
    udiv x10, x0, x2
    out x10
    sdiv x11, x2, x3
    out x11
    udiv x12, x0, xzr
    out x12
    cmp x2, x3
    csel x13, x2, x3, gt
    out x13
    csinc x14, x2, x3, lt
    out x14
    csinv x15, x2, x3, lo
    out x15
    csneg x16, x2, x3, hs
    out x16
    cmp x2, #1000
    ccmp x3, #7, #4, eq
    cset x17, eq
    out x17
    ccmp x2, x2, #0, ne
    cset x18, eq
    out x18
    cmn x3, #7
    cset x19, eq
    out x19
    tst x2, #8
    cset x20, ne
    out x20
    poweroff
""")
    x0, x1, x2, x3 = 0x123456789ABCDEF0, 0xFEDCBA9876543210, 1000, -7
    prod = sx(x0, 64) * sx(x1, 64)
    assert exits(c) == outs(
        x0 * x1, x2 * x2 + x0, x2 - x2 * x3, (x0 * x1) >> 64, prod >> 64, x2 * x3, x0 // x2,
        -(x2 // 7), 0, x2, x3 + 1, x2, -x3, 0, 1, 1, 1)


# -- loads and stores ------------------------------------------------------------------

def test_loads_and_stores(vm: kvmdev.Vm) -> None:
    base = 0x50200000
    c, mem = load(vm, base, """
    mov x26, x27
    ldr x0, =0x1122334455667788
    str x0, [x27]
    ldr x1, [x27]
    out x1
    str x0, [x27, #8]!
    sub x2, x27, x26
    out x2
    ldr x3, [x27], #-8
    out x3
    sub x2, x27, x26
    out x2
    ldrb w4, [x27, #1]
    out x4
    ldrh w5, [x27, #2]
    out x5
    ldrsb x6, [x27]
    out x6
    ldrsh x7, [x27, #6]
    out x7
    ldrsw x8, [x27, #4]
    out x8
    ldrsb w9, [x27]
    out x9
    mov x9, #1
    ldr x10, [x27, x9, lsl #3]
    out x10
    mov w9, #-8
    add x11, x27, #16
    ldr x10, [x11, w9, sxtw]
    out x10
    ldur w12, [x27, #4]
    out x12
    ldr x13, lit
    out x13
    adr x14, lit
    ldr x15, [x14]
    out x15
    stp x0, x13, [x27, #16]
    ldp x16, x17, [x27, #16]
    out x16
    out x17
    stp w13, w0, [x27, #32]!
    ldp w18, w19, [x27], #8
    out x18
    out x19
    sub x2, x27, x26
    out x2
    mov x27, x26
    ldpsw x20, x21, [x27, #32]
    out x20
    out x21
    strb w13, [x27, #40]
    strh w13, [x27, #42]
    str w13, [x27, #44]
    ldr x22, [x27, #40]
    out x22
    ldr x23, [x27, #0x800]
    out x23
    b done
    .balign 8
lit: .quad 0xcafef00dd00dfeed
done:
    poweroff
""")
    mem.write(base + 0x10800, (0x0BADC0DE).to_bytes(8, "little"))   # data the VMM put there
    x0, lit = 0x1122334455667788, 0xCAFEF00DD00DFEED
    b = x0.to_bytes(8, "little")
    assert exits(c) == outs(
        x0, 8, x0, 0, b[1], 0x5566, sx(0x88, 8), 0x1122, 0x11223344, 0xFFFFFF88, x0, x0, 0x11223344,
        lit, lit, x0, lit, lit & 0xFFFFFFFF, x0 & 0xFFFFFFFF, 40, sx(lit, 32), sx(x0, 32),
        (lit & 0xFFFFFFFF) << 32 | (lit & 0xFFFF) << 16 | (lit & 0xFF), 0x0BADC0DE)
    assert mem.read(base + 0x10000, 8) == b                      # the guest's stores, seen by the VMM


def test_exclusives_acquire_release_and_atomics(vm: kvmdev.Vm) -> None:
    c, _ = load(vm, 0x50300000, """
    mov x0, #5
    str x0, [x27]
1:  ldxr x1, [x27]
    add x1, x1, #1
    stxr w2, x1, [x27]
    cbnz w2, 1b
    ldr x3, [x27]
    out x3
2:  ldaxr w4, [x27]
    add w4, w4, #10
    stlxr w5, w4, [x27]
    cbnz w5, 2b
    ldar x6, [x27]
    out x6
    mov x7, #99
    add x8, x27, #8
    stlr x7, [x8]
    ldar x9, [x8]
    out x9
    clrex
    ldxr x10, [x27]
    clrex
    stxr w11, x10, [x27]
    out x11
    mov x12, #3
    ldadd x12, x13, [x27]
    out x13
    ldr x14, [x27]
    out x14
    mov x15, #19
    mov x16, #77
    cas x15, x16, [x27]
    out x15
    ldr x17, [x27]
    out x17
    swp x12, x18, [x27]
    out x18
    ldr x19, [x27]
    out x19
    poweroff
""")
    assert exits(c) == outs(6, 16, 99, 1, 16, 19, 19, 77, 77, 3)


# -- branches, system instructions, exceptions ------------------------------------------

def test_branches_and_calls(vm: kvmdev.Vm) -> None:
    c, _ = load(vm, 0x50400000, """
    mov x0, #0
    mov x1, #10
1:  add x0, x0, x1
    subs x1, x1, #1
    b.ne 1b
    out x0
    mov x0, #6
    bl fact
    out x1
    adr x2, fact
    mov x0, #5
    blr x2
    out x1
    mov x3, #0b100
    tbz x3, #2, 2f
    mov x4, #1
    b 3f
2:  mov x4, #2
3:  out x4
    tbnz x3, #1, 4f
    mov x5, #7
    b 5f
4:  mov x5, #8
5:  out x5
    cbz x5, 6f
    adr x6, 6f
    br x6
    mov x5, #0
6:  out x5
    mov x7, #0
    cmp x7, #0
    b.eq 7f
    mov x7, #1
7:  out x7
    poweroff
fact:
    mov x1, #1
8:  cbz x0, 9f
    mul x1, x1, x0
    sub x0, x0, #1
    b 8b
9:  ret
""")
    assert exits(c) == outs(55, 720, 120, 1, 7, 7, 0)


def test_el1_system_instructions_and_exceptions(vm: kvmdev.Vm) -> None:
    """MRS/MSR of EL1 registers, barriers, DAIF, and SVC/BRK/UNDEF taken by the
    guest at VBAR_EL1 (ESR_EL1's class, ELR_EL1 back to the program)."""
    c, _ = load(vm, 0x50500000, """
    mrs x0, CurrentEL
    out x0
    ldr x1, =0x1234abcd
    msr tpidr_el1, x1
    isb
    mrs x2, tpidr_el1
    out x2
    mrs x3, daif
    out x3
    msr daifclr, #2
    mrs x3, daif
    out x3
    msr daifset, #2
    dsb sy
    dmb ish
    nop
    adr x6, vectors
    msr vbar_el1, x6
    isb
    mrs x7, vbar_el1
    sub x7, x7, x6
    out x7
    svc #0x42
    out x9
    out x10
    brk #0x7
    out x9
    udf #0
    out x9
    out x10
    poweroff

    .balign 2048
vectors:
    .balign 0x200
    .skip 0x200
    // current EL, SP_ELx: synchronous
    mrs x9, esr_el1
    mrs x10, elr_el1
    adr x11, _start
    sub x10, x10, x11
    lsr x12, x9, #26
    cmp x12, #0x15
    b.eq 1f
    mrs x13, elr_el1
    add x13, x13, #4
    msr elr_el1, x13
1:  eret
""")
    # ESR: EC 0x15 SVC64 (ISS imm16), 0x3c BRK64, 0 unknown; IL set.  ELR: after
    # SVC, at BRK and UDF (the handler steps over those)
    exits_seen = exits(c)
    svc_off = exits_seen[6][1]
    assert exits_seen == outs(4, 0x1234ABCD, 0x3C0, 0x340, 0, 0x15 << 26 | 1 << 25 | 0x42, svc_off,
                              0x3C << 26 | 1 << 25 | 7, 1 << 25, svc_off + 16)


def test_fp_and_simd(vm: kvmdev.Vm) -> None:
    c, _ = load(vm, 0x50600000, """
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    fmov d0, #1.5
    fmov d1, #2.5
    fadd d2, d0, d1
    fmul d3, d2, d1
    fcvtzs x1, d3
    out x1
    scvtf d4, x1
    fdiv d5, d4, d0
    fmov x2, d5
    out x2
    fsqrt d6, d2
    fcvtzs x3, d6
    out x3
    fcmp d0, d1
    cset x4, lt
    out x4
    ldr x5, =0x0000000400000003
    ldr x6, =0x0000000200000001
    stp x6, x5, [x27]
    ld1 {v7.4s}, [x27]
    add v8.4s, v7.4s, v7.4s
    mul v9.4s, v8.4s, v7.4s
    st1 {v9.4s}, [x27]
    ldp x7, x8, [x27]
    out x7
    out x8
    umov w9, v8.s[3]
    out x9
    dup v10.8h, w9
    addv h11, v10.8h
    umov w10, v11.h[0]
    out x10
    ldr q12, [x27]
    str q12, [x27, #16]
    ldr x11, [x27, #24]
    out x11
    mrs x12, fpcr
    out x12
    poweroff
""")
    assert exits(c) == outs(
        10, struct.unpack("<Q", struct.pack("<d", 10 / 1.5))[0], 2, 1,
        8 << 32 | 2, 32 << 32 | 18, 8, 64, 32 << 32 | 18, 0)


# -- MMIO ------------------------------------------------------------------------------

def test_mmio_every_width(vm: kvmdev.Vm, arm64_kvm: kvmdev.Kvm, kfact) -> None:
    """Loads of 1, 2, 4 and 8 bytes (zero- and sign-extending, to W and X
    registers) and stores of each width, with the data the kernel's mmio
    fields carry.  kvm_handle_mmio_return sign-extends an LDRS* load when the data
    abort's ESR_ELx.SSE says so: 7.3 does, 6.1 and 6.12 zero-extend on the QEMU TCG
    hosts here (kernel_facts: mmio_load_sign_extends)."""
    sext = kfact("mmio_load_sign_extends") if known_host(arm64_kvm) else True
    c, _ = load(vm, 0x50700000, f"""
    ldr x1, ={IN}
    ldrb w2, [x1]
    out x2
    ldrh w3, [x1, #2]
    out x3
    ldr w4, [x1, #4]
    out x4
    ldr x5, [x1, #8]
    out x5
    ldrsb x6, [x1, #16]
    out x6
    ldrsh w7, [x1, #18]
    out x7
    ldrsw x8, [x1, #20]
    out x8
    ldur x9, [x1, #24]
    out x9
    mov x10, #32
    ldr w11, [x1, x10]
    out x11
    ldar x12, [x1]
    out x12
    ldr x13, =0x8877665544332211
    strb w13, [x1, #1]
    strh w13, [x1, #2]
    str w13, [x1, #4]
    str x13, [x1, #8]
    add x14, x1, #12
    stlr w13, [x14]
    str xzr, [x1, #16]
    poweroff
""")

    def reads(addr: int, n: int) -> int:
        return {1: 0xF1, 2: 0xF2F3, 4: 0xF4F5F6F7, 8: 0xF8F9FAFBFCFDFEFF}[n] ^ (addr - IN)

    v = 0x8877665544332211
    r = [(IN, 1), (IN + 2, 2), (IN + 4, 4), (IN + 8, 8), (IN + 16, 1), (IN + 18, 2), (IN + 20, 4), (IN + 24, 8),
         (IN + 32, 4), (IN, 8)]
    vals = [reads(a, n) for a, n in r]
    ext = sx if sext else (lambda v, bits: v)
    loaded = [vals[0], vals[1], vals[2], vals[3], ext(vals[4], 8), ext(vals[5], 16) & 0xFFFFFFFF, ext(vals[6], 32),
              vals[7], vals[8], vals[9]]
    want: list = []
    for (a, n), x in zip(r, loaded):
        want += [("r", a, n), ("w", x & M64)]
    want += [("w", IN + 1, 1, v & 0xFF), ("w", IN + 2, 2, v & 0xFFFF), ("w", IN + 4, 4, v & 0xFFFFFFFF),
             ("w", IN + 8, 8, v), ("w", IN + 12, 4, v & 0xFFFFFFFF), ("w", IN + 16, 8, 0), SYSTEM_OFF]
    got = exits(c, reads)
    assert got == want, f"{[tuple(hex(x) for x in e[1:]) for e in got]}"


# -- PSCI and WFI --------------------------------------------------------------------------

def test_psci_calls(vm: kvmdev.Vm, kfact) -> None:
    c, _ = load(vm, 0x50800000, """
    ldr x0, =0x84000000
    hvc #0
    out x0
    ldr x0, =0x8400000a
    ldr x1, =0x84000000
    hvc #0
    out x0
    ldr x0, =0x8400000a
    ldr x1, =0x8400dead
    hvc #0
    out x0
    ldr x0, =0x8400dead
    hvc #0
    out x0
    ldr x0, =0x84000006
    hvc #0
    out x0
    ldr x0, =0x84000004
    mrs x1, mpidr_el1
    and x1, x1, #0xffffff
    mov x2, #0
    hvc #0
    out x0
    ldr x0, =0x80000000
    hvc #0
    out x0
    poweroff
""")
    nsup = A.PSCI_RET_NOT_SUPPORTED
    assert exits(c) == outs(kfact("psci_version"), 0, nsup, nsup, 2, 0, 0x10001)


def test_psci_cpu_on_and_off(vm: kvmdev.Vm) -> None:
    """vCPU 0 starts vCPU 1 (powered off at init) with PSCI CPU_ON; vCPU 1
    reports its context id and turns itself off; vCPU 0 waits for it to be off
    (AFFINITY_INFO), then powers the system off."""
    base = 0x50900000
    c0, mem = load(vm, base, """
    ldr x0, =0xc4000003
    mov x1, #1
    adr x2, secondary
    ldr x3, =0xc0ffee
    hvc #0
    out x0
1:  ldr x0, =0x84000004
    mov x1, #1
    mov x2, #0
    hvc #0
    cbz x0, 1b
    out x0
    ldr x6, [x27]
    out x6
    poweroff
secondary:
    mov x1, x0
    adr x27, _start
    add x27, x27, #0x10, lsl #12
    str x1, [x27]
    ldr x28, =0x10000100
    out x1
    ldr x0, =0x84000002
    hvc #0
    b .
""")
    c1 = vm.create_vcpu(1)
    c1.vcpu_init(("PSCI_0_2", "POWER_OFF"))
    seen1: list = []

    def secondary() -> None:
        why = c1.run()
        seen1.append((why, c1.mmio if why == "KVM_EXIT_MMIO" else None))
        seen1.append(c1.run())   # CPU_OFF: asleep in the kernel until the request below

    t = threading.Thread(target=secondary)
    t.start()
    try:
        got = exits(c0)
    finally:
        c1.request_exit()
        t.join(60)
    assert not t.is_alive()
    assert seen1[0] == ("KVM_EXIT_MMIO", (0x10000100, (0xC0FFEE).to_bytes(8, "little"), True))
    assert seen1[1] == "KVM_EXIT_INTR"
    assert got == outs(0, 1, 0xC0FFEE)


def test_wfi_until_a_signal(vm: kvmdev.Vm) -> None:
    """WFI with nothing pending: the vCPU waits in the kernel; request_exit ends
    the run with KVM_EXIT_INTR, and the next run goes on after the WFI."""
    base = 0x50A00000
    c, mem = load(vm, base, """
1:  wfi
    ldr x0, [x27]
    cbz x0, 1b
    out x0
    poweroff
""")
    seen: list = []
    t = threading.Thread(target=lambda: seen.append(c.run()))
    t.start()
    t.join(0.5)
    assert t.is_alive()     # blocked in WFI (or spinning on it), not exited
    mem.write(base + 0x10000, (0x5EED).to_bytes(8, "little"))
    c.request_exit()
    t.join(60)
    assert seen in (["KVM_EXIT_INTR"], ["KVM_EXIT_MMIO"])
    if seen == ["KVM_EXIT_INTR"]:
        assert c.run() == "KVM_EXIT_MMIO"
    assert c.mmio == (OUT, (0x5EED).to_bytes(8, "little"), True)


def test_without_unicorn_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unicorn is an extra: a mock run of guest code without it says how to get it;
    what needs no guest code (the first-run checks, immediate_exit) still works."""
    import sys
    monkeypatch.setitem(sys.modules, "unicorn", None)   # import unicorn -> ImportError
    with kvmdev.open("mock", arch="arm64") as kvm, kvm.create_vm() as vm:
        vm.add_memory(0x50B00000, 0x10000)
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2"])
        c.set_one_reg("pc", 0x50B00000)
        assert c.run(immediate_exit=True) == "KVM_EXIT_INTR"
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'kvmdev\[cpu\]'"):
            c.run()


# -- interrupts (GICv3: the CPU interface is system registers) ----------------------------

IRQ_PROGRAM = """
    adr x0, vectors
    msr vbar_el1, x0
    mov x1, #0xf0
    msr S3_0_C4_C6_0, x1          // ICC_PMR_EL1
    mov x1, #1
    msr S3_0_C12_C12_7, x1        // ICC_IGRPEN1_EL1
    isb
    mov x1, #0xaa
    out x1                        // ready: the test injects now
1:  msr daifset, #2
    ldr x2, [x27]
    cbnz x2, 2f
    wfi                           // wakes on a pending interrupt, masked or not
    msr daifclr, #2               // taken here
    isb
    b 1b
2:  out x2
    mrs x4, S3_0_C12_C12_0        // ICC_IAR1_EL1: nothing left (1023)
    out x4
    poweroff

    .balign 2048
vectors:
    .skip 0x280                   // current EL, SP_ELx: IRQ
    mrs x3, S3_0_C12_C12_0        // ICC_IAR1_EL1
    out x3
    mrs x5, S3_0_C12_C11_3        // ICC_RPR_EL1: the running priority
    out x5
    msr S3_0_C12_C12_1, x3        // ICC_EOIR1_EL1: drop and deactivate
    str x3, [x27]
    eret
"""


def gicv3(vm: kvmdev.Vm) -> kvmdev.Device:
    g = vm.create_device("ARM_VGIC_V3")
    g.dist_base, g.redist_base = 0x08000000, 0x080A0000
    g.init()
    g.dist["GICD_CTLR"] = 0x52    # EnableGrp1A (ARE and DS are fixed)
    return g


def test_spi_taken_by_the_guest(vm: kvmdev.Vm, arm64_gic: int) -> None:
    """An SPI raised with KVM_IRQ_LINE while the guest waits in WFI is taken as an
    IRQ exception at VBAR_EL1 + 0x280, acknowledged (ICC_IAR1_EL1: its INTID, the
    running priority its priority), and deactivated by ICC_EOIR1_EL1."""
    if arm64_gic != 3:
        pytest.skip("GICv2: the guest's GICC (MMIO) CPU interface is not modelled by the mock yet")
    c, _ = load(vm, 0x50C00000, IRQ_PROGRAM)
    g = gicv3(vm)
    g.dist["GICD_ISENABLER1"] = 1 << 8          # SPI 40
    g.dist["GICD_IPRIORITYR10"] = 0x80          # INTID 40's priority (byte 0 of IPRIORITYR10)
    assert c.run() == "KVM_EXIT_MMIO" and c.mmio.data == (0xAA).to_bytes(8, "little")
    vm.irq_line(A.irq("SPI", 40), 1)
    assert exits(c) == outs(40, 0x80, 40, 1023)
    assert not g.dist["GICD_ISACTIVER1"] and not g.dist["GICD_ISPENDR1"]


def test_sgi_between_vcpus(vm: kvmdev.Vm, arm64_gic: int) -> None:
    """vCPU 1 sends SGI 3 to vCPU 0 with ICC_SGI1R_EL1; vCPU 0 takes it."""
    if arm64_gic != 3:
        pytest.skip("GICv2: the guest's GICC/GICD (MMIO) interface is not modelled by the mock yet")
    base = 0x50D00000
    c0, mem = load(vm, base, IRQ_PROGRAM)
    c1 = vm.create_vcpu(1)
    c1.vcpu_init(("PSCI_0_2",))
    sender = assemble(PRELUDE + """
    ldr x0, =(3 << 24) | 1        // INTID 3, Aff1.Aff2.Aff3 0, target list: vCPU 0
    msr S3_0_C12_C11_5, x0        // ICC_SGI1R_EL1
    isb
    poweroff
    .ltorg
""")
    mem.write(base + 0x8000, sender)
    c1.set_one_reg("pc", base + 0x8000)
    gicv3(vm)
    assert c0.run() == "KVM_EXIT_MMIO" and c0.mmio.data == (0xAA).to_bytes(8, "little")
    assert c1.run() == "KVM_EXIT_SYSTEM_EVENT"   # SGI sent, then SYSTEM_OFF: every vCPU STOPPED
    # vCPU 0 was stopped by vCPU 1's SYSTEM_OFF: make it runnable again
    c0.mp_state = "KVM_MP_STATE_RUNNABLE"
    assert exits(c0) == outs(3, 0, 3, 1023)
