"""A64 instruction encodings for the test guests (the few the mock guest runs)."""
from __future__ import annotations

HVC0 = 0xD4000002


def ldst(load: bool, rt: int, rn: int, offset: int = 0, size: int = 3) -> int:
    """LDR/STR (immediate, unsigned offset) of 2**size bytes."""
    assert offset % (1 << size) == 0
    return size << 30 | 0x39000000 | (1 << 22 if load else 0) | (offset >> size) << 10 | rn << 5 | rt


def cbz(rt: int, insns: int) -> int:
    """CBZ (64-bit) to ``insns`` instructions from here (negative: backwards)."""
    return 0xB4000000 | (insns & 0x7FFFF) << 5 | rt


def program(*insns: int) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in insns)


def spin_guest(vm, cpu, ram: int, mmio: int = 0x10000000):  # type: ignore[no-untyped-def]
    """A guest at ``ram`` that marks ram+0x1000 when it runs, spins until
    ram+0x2000 is non-zero, then stores x0 to ``mmio`` (a KVM_EXIT_MMIO).
    Returns the GuestMemory."""
    mem = vm.add_memory(ram, 0x10000)
    mem.write(ram, program(ldst(False, 1, 2), ldst(True, 3, 4), cbz(3, -1), ldst(False, 0, 5)))
    for r, v in {"pc": ram, "x1": 1, "x2": ram + 0x1000, "x4": ram + 0x2000, "x5": mmio}.items():
        cpu.set_one_reg(r, v)
    return mem
