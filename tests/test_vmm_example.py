"""examples/vmm: public API only, its device tree, UART model and snapshot
round trip (the boot and live snapshot of Linux run nested in make test-vmm)."""
from __future__ import annotations

import ast
import json
import os
import importlib
import pathlib
import struct
import sys
import threading

import pytest

import kvmdev
from kvmdev import arm64

fdt = pytest.importorskip("fdt")

VMM_DIR = pathlib.Path(__file__).resolve().parent.parent / "examples" / "vmm"
sys.path.insert(0, str(VMM_DIR))
devicetree = importlib.import_module("devicetree")
uart = importlib.import_module("uart")
vmm = importlib.import_module("vmm")
snapshot = importlib.import_module("snapshot")
initramfs = importlib.import_module("initramfs")


# -- the example uses kvmdev's public API only ---------------------------------
def private_uses(source: str) -> list[str]:
    """Private names a module uses: an import of a kvmdev module or name spelt
    with a leading underscore, or a ``_name`` attribute of anything but ``self``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kvmdev":
            parts = (node.module or "").split(".") + [a.name for a in node.names]
            found += [f"from {node.module} import {a.name}" for a in node.names if any(p.startswith("_") for p in parts)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "kvmdev"
                      and any(p.startswith("_") for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(ast.unparse(node))
    return found


def test_private_name_check_catches_them() -> None:
    bad = ("from kvmdev._fd import Fd\nimport kvmdev._fd\nfrom kvmdev.vcpu import _reg_label\n"
           "vcpu._ioctl('KVM_RUN', 0)\nkvm._backend.host\n")
    assert private_uses(bad) == ["from kvmdev._fd import Fd", "kvmdev._fd", "from kvmdev.vcpu import _reg_label",
                                 "vcpu._ioctl", "kvm._backend"]
    assert private_uses("self._lock\nvcpu.run()\nx.__class__\n") == []


@pytest.mark.parametrize("path", sorted(VMM_DIR.glob("*.py")), ids=lambda p: p.name)
def test_vmm_uses_public_api_only(path: pathlib.Path) -> None:
    assert private_uses(path.read_text()) == []


def test_vmm_is_small() -> None:
    lines = sum(len(p.read_text().splitlines()) for p in VMM_DIR.glob("*.py") if p.name != "driver.py")
    assert lines < 1000, f"examples/vmm is {lines} lines (the VMM itself, without its test driver)"


# -- device tree ------------------------------------------------------------------
def layout(gic: int) -> devicetree.Layout:
    return devicetree.Layout(0x40000000, 256 << 20, 2, [0x80000000, 0x80000001], gic, 0x08000000, 0x080A0000,
                             0x08010000, 0x08080000 if gic == 3 else None, 0x09000000, 1, "console=ttyS0",
                             (0x4E000000, 0x4E100000))


def words(tree, path: str, prop: str) -> list[int]:
    return list(tree.get_property(prop, path).data)


@pytest.mark.parametrize("gic", [3, 2])
def test_device_tree(gic: int) -> None:
    tree = fdt.parse_dtb(devicetree.build(layout(gic)))
    assert tree.get_property("bootargs", "/chosen").value == "console=ttyS0"
    assert words(tree, "/chosen", "linux,initrd-start") == [0, 0x4E000000]
    assert words(tree, "/memory@40000000", "reg") == [0, 0x40000000, 0, 256 << 20]
    assert tree.get_property("method", "/psci").value == "hvc"
    assert [words(tree, f"/cpus/cpu@{i}", "reg") for i in (0, 1)] == [[0], [1]]   # MPIDR affinity bits only
    assert tree.get_property("enable-method", "/cpus/cpu@1").value == "psci"
    ppi = 4 | (0x300 if gic == 2 else 0)       # level-high, and on v2 the CPU mask of both CPUs
    assert words(tree, "/timer", "interrupts") == [1, 13, ppi, 1, 14, ppi, 1, 11, ppi, 1, 10, ppi]
    assert words(tree, "/uart@9000000", "interrupts") == [0, 1, 4]
    intc = "/intc@8000000"
    if gic == 3:
        assert tree.get_property("compatible", intc).value == "arm,gic-v3"
        assert words(tree, intc, "reg") == [0, 0x08000000, 0, 0x10000, 0, 0x080A0000, 0, 2 * 0x20000]
        assert tree.exist_property("msi-controller", intc + "/its@8080000")
    else:
        assert tree.get_property("compatible", intc).value == "arm,cortex-a15-gic"
        assert words(tree, intc, "reg") == [0, 0x08000000, 0, 0x1000, 0, 0x08010000, 0, 0x2000]


# -- UART -------------------------------------------------------------------------
def test_uart_interrupts() -> None:
    out, lines = bytearray(), []
    u = uart.Uart16550(out.extend, lines.append)
    assert u.read(uart.IIR_FCR) & 0x0F == uart.IIR_NO_INT
    u.write(uart.IER, uart.IER_THRI)                 # THRE with an empty THR: at once
    assert lines == [1] and u.read(uart.IIR_FCR) & 0x0F == uart.IIR_THRI
    assert lines == [1, 0]                           # reading IIR that says THRE clears it
    u.write(uart.RBR_THR, ord("a"))
    assert out == b"a" and lines == [1, 0, 1]
    u.write(uart.IER, uart.IER_RDI)                  # TX done: the driver stops THRE
    assert lines[-1] == 0
    assert u.receive(b"xy") == 2 and lines[-1] == 1
    assert u.read(uart.LSR) & uart.LSR_DR and u.read(uart.IIR_FCR) & 0x0F == uart.IIR_RDI
    assert bytes([u.read(uart.RBR_THR), u.read(uart.RBR_THR)]) == b"xy" and lines[-1] == 0
    assert u.receive(bytes(100)) == uart.FIFO_SIZE   # a full FIFO takes no more
    u.write(uart.LCR, uart.LCR_DLAB)
    u.write(uart.RBR_THR, 12)                        # the divisor latch, not THR
    assert u.read(uart.RBR_THR) == 12 and out == b"a"
    st = u.state()
    v = uart.Uart16550(out.extend, lines.append)
    v.set_state(st)
    assert v.state() == st


# -- image, initramfs -------------------------------------------------------------
def fake_image(size: int = 0x10000) -> bytes:
    hdr = struct.pack("<IIQQQQQQ", 0, 0, 0, size * 2, 0xA, 0, 0, 0) + b"ARM\x64" + bytes(4)
    return hdr + bytes(size - len(hdr))


def test_image_header() -> None:
    assert vmm.image_header(fake_image()) == (0, 0x20000)
    with pytest.raises(ValueError, match="not an arm64 Linux Image"):
        vmm.image_header(b"\x1f\x8b" + bytes(100))


def test_initramfs_is_newc() -> None:
    import gzip
    data = gzip.decompress(initramfs.build(b"\x7fELF busybox"))
    assert data.startswith(b"070701") and b"TRAILER!!!" in data and b"cttyhack" in data
    i = data.index(b"dev/console\0")    # a character device 5:1 (init's stdio before devtmpfs)
    hdr = data[i - 110:i]
    assert int(hdr[14:22], 16) == 0o020600 and (int(hdr[78:86], 16), int(hdr[86:94], 16)) == (5, 1)


# -- the machine and its snapshot, on the real kernels (guests) and the mocks --------
@pytest.mark.arm64
def test_power_off_secondary(arm64_kvm: kvmdev.Kvm) -> None:
    """The VMM's secondaries: KVM_ARM_VCPU_INIT with POWER_OFF next to a vCPU
    without it (6.12 keeps one feature set per VM, POWER_OFF not part of it)."""
    with arm64_kvm.create_vm() as vm:
        a, b = vm.create_vcpu(0), vm.create_vcpu(1)
        a.vcpu_init(["PSCI_0_2"])
        b.vcpu_init(["PSCI_0_2", "POWER_OFF"])
        assert (a.mp_state, b.mp_state) == ("KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_STOPPED")


@pytest.mark.arm64
def test_machine_snapshot_round_trip(arm64_kvm: kvmdev.Kvm, arm64_gic: int, tmp_path: pathlib.Path) -> None:
    """Boot set-up, a short run of vCPU 0, snapshot.save, and restore into a
    new VM: every listed register, MP_STATE and the GIC come back."""
    m = vmm.Machine(arm64_kvm, 2, 64, arm64_gic)
    try:
        m.boot(_spin_image(), b"initrd", "console=ttyS0")
        m.uart.receive(b"q")
        m.vcpus[1].set_one_reg("x7", 0x1234)
        # vCPU 0 runs (b .) until request_exit, like the restore's stub does on the
        # copy: registers the CPU keeps fewer bits of than KVM's UNKNOWN reset values
        # (QEMU: AFSR0/1_EL1 RAZ/WI; 6.1: CSSELR_EL1) then read the same on both sides
        threading.Timer(0.5, m.vcpus[0].request_exit).start()
        assert m.vcpus[0].run() == "KVM_EXIT_INTR"
        snapshot.save(m, str(tmp_path))
        regs = [{r: c.get_one_reg(r) for r in c.get_reg_list()} for c in m.vcpus]
    finally:
        m.vm.close()
    n = snapshot.restore(arm64_kvm, str(tmp_path), vmm.Machine)
    try:
        # the counters run on between save and read-back: KVM_REG_ARM_TIMER_CNT
        # (CNTVCT_EL0) and CNTPCT_EL0 (3, 3, 14, 0, 1), where listed
        counters = {arm64.reg_id("KVM_REG_ARM_TIMER_CNT"), arm64.reg_id("KVM_REG_ARM_TIMER_CNT") & ~0xFFFF | 0xDF01}
        for c, want in zip(n.vcpus, regs):
            got = {r: c.get_one_reg(r) for r in want}
            diff = {hex(r): (hex(want[r]), hex(got[r])) for r in want if got[r] != want[r] and r not in counters}
            assert diff == {}
            # the counter goes on from the saved value (regs above were read after the save)
            cnt = arm64.reg_id("KVM_REG_ARM_TIMER_CNT")
            saved = int(json.loads((tmp_path / "machine.json").read_text())["vcpus"][c.id]["regs"][f"{cnt:#x}"], 16)
            assert saved <= c.get_one_reg(cnt) < saved + 3600 * 10**9     # not the new VM's own count
        assert n.vcpus[1].get_one_reg("x7") == 0x1234
        assert n.vcpus[0].get_one_reg("pc") == 0x40000000      # at its b .
        assert [c.mp_state for c in n.vcpus] == ["KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_STOPPED"]
        assert n.uart.state()["rx"] == [ord("q")] and n.uart.level == 0
        assert (n.its is not None) == (arm64_gic == 3 and m.its is not None)
    finally:
        n.vm.close()


@pytest.mark.arm64
@pytest.mark.parametrize("start,end,step,want", [(0, 10, 1, 10), (0, 4096 * 3, 4096, 4096 * 3), (8, 9, 16, 24)])
def test_touch_stub_loop(arm64_kvm: kvmdev.Kvm, start: int, end: int, step: int, want: int) -> None:
    """snapshot.TOUCH_STUB's instructions (LDR, ADD, CMP, B.LO, STR to MMIO), run
    at EL1 with the MMU off: the loop ends with x0 = the first start + n*step >= end."""
    with arm64_kvm.create_vm() as vm:
        ram = vm.add_memory(0x40000000, 0x10000)
        ram.write(0x40008000, b"".join(i.to_bytes(4, "little") for i in snapshot.TOUCH_STUB))
        cpu = vm.create_vcpu(0)
        cpu.vcpu_init(["PSCI_0_2"])
        # x0..x1 are offsets into RAM: the loads read RAM
        for name, value in (("pc", 0x40008000), ("x0", 0x40000000 + start), ("x1", 0x40000000 + end),
                            ("x2", step), ("x4", snapshot.STUB_EXIT)):
            cpu.set_one_reg(name, value)
        assert cpu.run() == "KVM_EXIT_MMIO"
        assert cpu.mmio.phys_addr == snapshot.STUB_EXIT and cpu.mmio.is_write
        assert cpu.get_one_reg("x0") == 0x40000000 + want


def test_guest_memory_huge_page_congruent(kvm: kvmdev.Kvm) -> None:
    """Guest RAM of 2 MiB or more sits at a host address congruent to its guest
    address modulo 2 MiB (stage-2/EPT block mappings of transparent huge pages
    need it), and reads and writes land at the guest address on both sides."""
    with kvm.create_vm() as vm:
        for gpa, size in ((0x4000_0000, 4 << 20), (0x8030_0000, 2 << 20), (0x10_0000, 0x10000)):
            mem = vm.add_memory(gpa, size)
            if size >= 2 << 20:
                assert (mem.userspace_addr - gpa) % (2 << 20) == 0
            mem.write(gpa + size - 8, b"lastword")
            assert mem.read(gpa + size - 8, 8) == b"lastword"
            assert mem.buf[mem.offset + size - 8:mem.offset + size] == b"lastword"


def _spin_image() -> bytes:
    img = bytearray(fake_image())
    img[0:4] = (0x14000000).to_bytes(4, "little")       # b . : the boot CPU spins
    return bytes(img)


def _wait_line(p, pattern: str, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    import re
    import select
    import time
    buf, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        if select.select([p.stderr], [], [], 0.5)[0]:
            chunk = os.read(p.stderr.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            if re.search(pattern.encode(), buf):
                return buf.decode()
    raise AssertionError(f"no {pattern!r} in {buf.decode()!r}")


def test_vmm_process_snapshot_restore_and_ctrl_c(tmp_path: pathlib.Path) -> None:
    """vmm.py as a process on the arm64 mock: SIGUSR1 snapshots the running
    (spinning) guest, SIGINT ends it cleanly with no KVM fd left; a new process
    resumes the snapshot (and its stage-2 stub runs) and ends the same way."""
    import signal
    import subprocess
    image = tmp_path / "Image"
    image.write_bytes(_spin_image())
    env = {k: v for k, v in os.environ.items() if k != "KVMDEV_BACKEND"}
    snap = tmp_path / "snap"
    for args in (["--kernel", str(image), "--mem", "16"], ["--restore", str(snap)]):
        p = subprocess.Popen([sys.executable, str(VMM_DIR / "vmm.py"), "--backend", "mock", *args,
                              "--snapshot-dir", str(snap)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        try:
            _wait_line(p, r"booting|restored")
            p.send_signal(signal.SIGUSR1)
            _wait_line(p, r"snapshot saved in")
            p.send_signal(signal.SIGINT)
            rest = p.stderr.read().decode()
            assert p.wait(30) == 0
            assert "stopped: SIGINT; KVM fds left open: 0" in rest
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
    saved = json.loads((snap / "machine.json").read_text())
    assert saved["vcpus"][0]["regs"][f"{arm64.reg_id('pc'):#x}"] == "0x40000000"   # still spinning at b .
    assert [v["mp_state"] for v in saved["vcpus"]] == ["KVM_MP_STATE_RUNNABLE", "KVM_MP_STATE_STOPPED"]
