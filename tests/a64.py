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


# -- bare-metal programs from assembly source -----------------------------------------
# The test suite assembles each program with the aarch64 cross toolchain (binutils-
# aarch64-linux-gnu on x86, plain binutils on arm64); the flat binary is cached by the
# source's hash in tests/.a64-build/, which tools/guests stages with tests/, so the
# arm64 guests (no assembler there) run what the host assembled.
import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

BUILD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".a64-build")


def _tool(name: str) -> str | None:
    for prefix in ("aarch64-linux-gnu-", ""):
        path = shutil.which(prefix + name)
        if path and (prefix or os.uname().machine == "aarch64"):
            return path
    return None


def assemble(source: str) -> bytes:
    """The flat binary of an A64 program (position-independent: linked at 0)."""
    import pytest
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    cached = os.path.join(BUILD_DIR, key + ".bin")
    tools = [_tool(t) for t in ("as", "ld", "objcopy")]
    if None in tools:
        if os.path.exists(cached):
            with open(cached, "rb") as f:
                return f.read()
        pytest.skip("no aarch64 assembler (apt-get install binutils-aarch64-linux-gnu) and no build of this "
                    "program in tests/.a64-build: run the test on a host with the toolchain first")
    as_, ld, objcopy = tools
    with tempfile.TemporaryDirectory() as d:
        src, obj, elf, bin_ = (os.path.join(d, n) for n in ("p.s", "p.o", "p.elf", "p.bin"))
        with open(src, "w") as f:
            f.write(source)
        for cmd in ([as_, "-march=armv8.2-a+lse", "-o", obj, src], [ld, "-Ttext=0", "-o", elf, obj],
                    [objcopy, "-O", "binary", elf, bin_]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise AssertionError(f"{os.path.basename(cmd[0])} failed:\n{r.stderr}")
        with open(bin_, "rb") as f:
            data = f.read()
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(cached + ".tmp", "wb") as f:
        f.write(data)
    os.replace(cached + ".tmp", cached)
    return data
