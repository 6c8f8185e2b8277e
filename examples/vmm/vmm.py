"""An arm64 VMM on kvmdev's public API: boots a Linux Image with an initramfs on
N vCPUs (one thread each), the in-kernel VGIC (v3 + ITS, or v2), arch timer and
PSCI, and a 16550 UART whose receive interrupt is an SPI driven with
KVM_IRQ_LINE; takes live snapshots (SIGUSR1) that a new process resumes.

    python examples/vmm/vmm.py --kernel Image --initrd initramfs.cpio.gz --smp 2
    python examples/vmm/vmm.py ... --snapshot-dir /tmp/snap   # kill -USR1 <pid> saves there
    python examples/vmm/vmm.py --restore /tmp/snap            # resume it in this new process

The console is stdin/stdout (bytes as they are; the shell's echo comes from the
guest).  Ctrl-C (SIGINT) or SIGTERM, and the guest's PSCI SYSTEM_OFF/RESET, end
the VMM: vCPUs are stopped with Vcpu.request_exit, threads joined, fds closed.
Status lines go to stderr, prefixed "vmm:".
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time
from typing import Any

import kvmdev

if __package__ in (None, ""):          # run as a script: its modules sit beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import devicetree                       # noqa: E402
import snapshot                         # noqa: E402
from uart import Uart16550              # noqa: E402

# the guest-physical map (QEMU virt's addresses)
GICD, GICC, ITS, GICR = 0x0800_0000, 0x0801_0000, 0x0808_0000, 0x080A_0000
UART, UART_SPI = 0x0900_0000, 1
RAM = 0x4000_0000
CONTROL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def log(msg: str) -> None:
    print(f"vmm: {msg}", file=sys.stderr, flush=True)


def image_header(image: bytes) -> tuple[int, int]:
    """(text_offset, image_size) of an arm64 Image (Documentation/arch/arm64/booting.rst)."""
    if image[56:60] != b"ARM\x64":
        raise ValueError("not an arm64 Linux Image (no 'ARM\\x64' magic at offset 56): pass the uncompressed Image")
    text_offset = int.from_bytes(image[8:16], "little")
    image_size = int.from_bytes(image[16:24], "little") or len(image)
    return text_offset, image_size


class Machine:
    """One VM: memory, vCPUs, the GIC and the UART; boot() or snapshot.restore() fills it."""

    def __init__(self, kvm: kvmdev.Kvm, ncpus: int, mem_mib: int, gic: int) -> None:
        self.kvm, self.ncpus, self.ram_size, self.gic_version = kvm, ncpus, mem_mib << 20, gic
        self.vm = kvm.create_vm()
        self.ram = self.vm.add_memory(RAM, self.ram_size)
        self.vcpus = [self.vm.create_vcpu(i) for i in range(ncpus)]
        for i, c in enumerate(self.vcpus):
            # secondaries start powered off; the boot CPU's PSCI CPU_ON (in KVM) starts them
            c.vcpu_init(["PSCI_0_2"] + (["POWER_OFF"] if i else []))
        # the VGIC after the vCPUs: its redistributors / CPU interfaces follow them
        self.its: Any = None
        if gic == 3:
            self.gic: Any = self.vm.create_device("ARM_VGIC_V3")
            self.gic.dist_base, self.gic.redist_base = GICD, GICR
            if self.vm.supports_device("ARM_VGIC_ITS"):
                self.its = self.vm.create_device("ARM_VGIC_ITS")
                self.its.base = ITS
        else:
            self.gic = self.vm.create_device("ARM_VGIC_V2")
            self.gic.dist_base, self.gic.cpu_base = GICD, GICC
        self.gic.init()
        if self.its is not None:
            self.its.init()
        self.uart = Uart16550(self._console_out, self.uart_irq)
        self.stop = threading.Event()
        self.exit_reason = ""
        self.pause_req = False
        self.parked = 0
        self.cond = threading.Condition()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    # -- devices
    def _console_out(self, data: bytes) -> None:
        os.write(1, data)

    def uart_irq(self, level: int) -> None:
        # KVM_IRQ_LINE: irq_type SPI (1) << 24 | INTID (32 + SPI number)
        self.vm.irq_line(1 << 24 | (32 + UART_SPI), level)

    def layout(self, bootargs: str = "", initrd: tuple[int, int] | None = None) -> devicetree.Layout:
        return devicetree.Layout(RAM, self.ram_size, self.ncpus, [c.mpidr for c in self.vcpus], self.gic_version,
                                 GICD, GICR, GICC, ITS if self.its is not None else None, UART, UART_SPI,
                                 bootargs, initrd)

    # -- boot
    def boot(self, image: bytes, initrd: bytes, bootargs: str) -> None:
        text_offset, image_size = image_header(image)
        kernel = RAM + text_offset                 # RAM is 2 MiB aligned
        self.ram.write(kernel, image)
        # the DTB in the last 2 MiB, the initrd below it (both past the kernel's image_size)
        dtb_addr = RAM + self.ram_size - (2 << 20)
        initrd_addr = (dtb_addr - len(initrd)) & ~0xFFFF
        if initrd_addr < kernel + image_size:
            raise ValueError(f"{self.ram_size >> 20} MiB is too small for the kernel and initrd")
        self.ram.write(initrd_addr, initrd)
        dtb = devicetree.build(self.layout(bootargs, (initrd_addr, initrd_addr + len(initrd))))
        self.ram.write(dtb_addr, dtb)
        # booting.rst: x0 = the DTB's physical address, x1-x3 = 0, MMU off, DAIF
        # masked (KVM's vCPU reset state is EL1h with DAIF masked), at the Image's start
        self.vcpus[0].set_one_reg("pc", kernel)
        self.vcpus[0].set_one_reg("x0", dtb_addr)

    # -- running
    def start(self) -> None:
        for c in self.vcpus:
            t = threading.Thread(target=self._vcpu_thread, args=(c,), name=f"vcpu{c.id}")
            t.start()
            self.threads.append(t)

    def _vcpu_thread(self, cpu: Any) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)   # they go to the main thread
        try:
            self._run_loop(cpu)
        except BaseException as e:      # noqa: BLE001 - reported by the main thread
            self.errors.append(e)
            try:
                where = f" (pc {cpu.get_one_reg('pc'):#x}, pstate {cpu.get_one_reg('pstate'):#x})"
            except kvmdev.KvmError:
                where = ""
            self.shutdown(f"vCPU {cpu.id} failed: {e}{where}")

    def _run_loop(self, cpu: Any) -> None:
        uart_end = UART + Uart16550.SIZE
        while not self.stop.is_set():
            exit_ = cpu.run()
            if exit_ == "KVM_EXIT_MMIO":
                addr, data, is_write = cpu.mmio
                if UART <= addr < uart_end:
                    if is_write:
                        self.uart.write(addr - UART, data[0])
                    else:
                        cpu.complete_mmio_read(bytes([self.uart.read(addr - UART)]) + bytes(len(data) - 1))
                elif not is_write:      # no device there: reads as zeros
                    cpu.complete_mmio_read(bytes(len(data)))
                # The access completes inside the next KVM_RUN (api.rst, KVM_EXIT_MMIO):
                # a pause request only takes effect at that run's KVM_EXIT_INTR, so a
                # parked vCPU never has a half-done MMIO access in its saved state.
            elif exit_ == "KVM_EXIT_INTR":  # request_exit (pause or stop), or a stray signal
                with self.cond:
                    if self.pause_req:
                        self.parked += 1
                        self.cond.notify_all()
                        self.cond.wait_for(lambda: not self.pause_req)
                        self.parked -= 1
            elif exit_ == "KVM_EXIT_SYSTEM_EVENT":
                self.shutdown(f"guest {cpu.system_event.type} (vCPU {cpu.id})")
            else:
                raise RuntimeError(f"unexpected {exit_} on vCPU {cpu.id} at pc {cpu.get_one_reg('pc'):#x}")

    def pause(self) -> None:
        """Stop every vCPU at a clean point: each returns from KVM_RUN with
        KVM_EXIT_INTR (request_exit = immediate_exit + a signal) and waits."""
        with self.cond:
            self.pause_req = True
        for c in self.vcpus:
            c.request_exit()
        with self.cond:
            self.cond.wait_for(lambda: self.parked == len(self.threads) or self.stop.is_set())

    def resume(self) -> None:
        with self.cond:
            self.pause_req = False
            self.cond.notify_all()

    def shutdown(self, why: str) -> None:
        if not self.stop.is_set():
            self.exit_reason = why
            self.stop.set()
            self.resume()
            for c in self.vcpus:
                try:
                    c.request_exit()
                except kvmdev.ClosedError:
                    pass

    def input_loop(self) -> None:
        """stdin -> the UART's receive FIFO (it raises the SPI); waits while the FIFO is full."""
        pending = b""
        while not self.stop.is_set():
            if not pending:
                r, _, _ = select.select([0], [], [], 0.2)
                if not r:
                    continue
                pending = os.read(0, 256)
                if not pending:         # EOF: the guest keeps running
                    return
            n = self.uart.receive(pending)
            pending = pending[n:]
            if pending:
                time.sleep(0.01)

    def close(self) -> None:
        for t in self.threads:
            t.join()
        self.vm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="arm64 Linux Image (uncompressed)")
    ap.add_argument("--initrd", help="initramfs (cpio, may be gzipped)")
    ap.add_argument("--append", default="console=ttyS0 quiet", help="kernel command line")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--mem", type=int, default=256, help="guest RAM in MiB")
    ap.add_argument("--gic", type=int, choices=(2, 3), default=None, help="VGIC version (default: what the host offers)")
    ap.add_argument("--snapshot-dir", help="where SIGUSR1 saves a snapshot (then the guest runs on)")
    ap.add_argument("--restore", help="resume the snapshot in this directory")
    ap.add_argument("--backend", default="auto", choices=kvmdev.BACKENDS)
    args = ap.parse_args()

    requests: list[int] = []
    wake = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        requests.append(signum)
        wake.set()
    for s in CONTROL_SIGNALS:
        signal.signal(s, on_signal)

    with kvmdev.open(args.backend, arch="arm64") as kvm:
        t0 = time.monotonic()
        if args.restore:
            m = snapshot.restore(kvm, args.restore, Machine)
            log(f"restored {args.restore} in {time.monotonic() - t0:.2f}s")
        else:
            if not args.kernel:
                ap.error("--kernel is required (or --restore)")
            if args.gic is None:
                with kvm.create_vm() as probe:
                    args.gic = 3 if probe.supports_device("ARM_VGIC_V3") else 2
            gic = args.gic
            m = Machine(kvm, args.smp, args.mem, gic)
            with open(args.kernel, "rb") as f:
                image = f.read()
            initrd = open(args.initrd, "rb").read() if args.initrd else b""
            m.boot(image, initrd, args.append)
            log(f"booting {os.path.basename(args.kernel)}: {args.smp} vCPUs, {args.mem} MiB, "
                f"GICv{m.gic_version}{' + ITS' if m.its is not None else ''}, kernel {kvm.kernel_release}; "
                f"set up in {time.monotonic() - t0:.2f}s")
        m.start()
        # not a daemon: a daemon thread that wakes during interpreter shutdown is
        # ended with pthread_exit, which aborts where libgcc_s is missing (the guests)
        console = threading.Thread(target=m.input_loop, name="console")
        console.start()
        snaps = 0
        while not m.stop.is_set():
            wake.wait(0.5)
            wake.clear()
            while requests:
                s = requests.pop(0)
                if s == signal.SIGUSR1 and args.snapshot_dir:
                    t1 = time.monotonic()
                    m.pause()
                    try:
                        size = snapshot.save(m, args.snapshot_dir)
                    finally:
                        m.resume()
                    snaps += 1
                    log(f"snapshot saved in {args.snapshot_dir}: {size / 2**20:.1f} MiB in "
                        f"{time.monotonic() - t1:.2f}s")
                elif s == signal.SIGUSR1:
                    log("SIGUSR1 ignored: no --snapshot-dir")
                else:
                    m.shutdown(signal.Signals(s).name)
        m.close()
        console.join()
        why = m.exit_reason
    log(f"stopped: {why}; KVM fds left open: {len(kvm_fds())}")
    return 1 if m.errors else 0


def kvm_fds() -> list[str]:
    """This process's fds on /dev/kvm or KVM anon inodes (kvm-vm, kvm-vcpu:N, kvm-arm-vgic-v3...)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target == "/dev/kvm" or target.startswith("anon_inode:kvm"):
            out.append(target)
    return out


if __name__ == "__main__":
    sys.exit(main())
