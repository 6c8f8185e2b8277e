"""Drive vmm.py end to end (make test-vmm runs this inside the arm64 guests):
boot to the shell prompt, type commands, snapshot the running guest, resume it in
a new VMM process, check it is alive (the shell answers, /proc/uptime advances,
the arch timer and UART lines of /proc/interrupts keep counting), snapshot and
resume the resumed guest again, then power it off.  Prints one line:

    @@VMM boot=12.3s snapshot=41.2MiB/1.9s restore=0.8s snapshot2=41.3MiB/1.8s restore2=0.8s PASS@@

    python examples/vmm/driver.py --kernel Image --initrd initramfs.cpio.gz [--gic 3] [--smp 2]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

VMM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vmm.py")
PROMPT = b"vmm# "


class Vmm:
    """One vmm.py process; its console (stdout) and status lines (stderr) are collected."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name, self.out, self.err = name, bytearray(), bytearray()
        self.marks: dict[bytes, float] = {}
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen([sys.executable, VMM, *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pumps = [threading.Thread(target=self._pump, args=(stream, buf))
                      for stream, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.pumps:
            t.start()

    def _pump(self, stream, buf: bytearray) -> None:   # type: ignore[no-untyped-def]
        while chunk := os.read(stream.fileno(), 4096):
            with self.cond:
                buf += chunk
                for mark in (b"set up in", b"init: ", PROMPT):   # when each first appeared
                    if mark not in self.marks and mark in buf[-len(chunk) - len(mark):]:
                        self.marks[mark] = time.monotonic() - self.t0
                self.cond.notify_all()
            if buf is self.err:
                sys.stderr.write(f"[{self.name}] " + chunk.decode(errors="replace"))
        self.p.wait()
        with self.cond:                         # EOF: the process ended; waiters see it
            self.cond.notify_all()

    def wait_for(self, pattern: bytes, buf: bytearray, start: int, timeout: float) -> re.Match[bytes]:
        rx = re.compile(pattern, re.S)
        with self.cond:
            ok = self.cond.wait_for(lambda: rx.search(buf, start) or self.p.poll() is not None, timeout)
            m = rx.search(buf, start)
        if not m:
            tail = bytes(self.out[-1500:]).decode(errors="replace")
            raise AssertionError(f"{self.name}: no {pattern!r} after {timeout}s "
                                 f"({'exited ' + str(self.p.returncode) if ok else 'timeout'}); console tail:\n{tail}")
        return m

    def type(self, line: str, timeout: float = 60) -> str:
        """Type a command line; returns its output (between markers echo prints)."""
        n = len(self.out)
        tag = f"{time.monotonic_ns() % 10**8}"
        # the marker's quotes keep the typed (echoed) line from matching it
        cmd = f'echo "@@B"{tag}; {line}; echo "@@E"{tag}\n'
        self.p.stdin.write(cmd.encode())       # type: ignore[union-attr]
        self.p.stdin.flush()                   # type: ignore[union-attr]
        m = self.wait_for(rb"@@B" + tag.encode() + rb"\r?\n(.*?)@@E" + tag.encode(), self.out, n, timeout)
        return m.group(1).decode(errors="replace")

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the VMM's end; nonzero also if it left a KVM fd open."""
        rc = self.p.wait(timeout)
        self.p.stdin.close()                   # type: ignore[union-attr]
        for t in self.pumps:                   # its pipes are at EOF now
            t.join()
        if rc == 0 and b"KVM fds left open: 0\n" not in self.err:
            return -1
        return rc


def probe(vm: Vmm) -> tuple[float, int, int]:
    """(uptime, arch timer interrupts, UART interrupts), all CPUs summed."""
    text = vm.type("cat /proc/uptime; grep -E 'arch_timer|ttyS' /proc/interrupts")
    lines = text.strip().splitlines()
    uptime = float(lines[0].split()[0])
    counts = {"arch_timer": 0, "ttyS": 0}
    for ln in lines[1:]:
        f = ln.split()
        for k in counts:
            if k in ln:
                counts[k] += sum(int(x) for x in f[1:] if x.isdigit())
    return uptime, counts["arch_timer"], counts["ttyS"]


def alive(vm: Vmm, before: tuple[float, int, int], what: str) -> tuple[float, int, int]:
    ans = vm.type("echo $((6 * 7)); sleep 1").strip()
    assert ans.endswith("42"), f"{what}: the shell answered {ans!r}, not 42"
    now = probe(vm)
    assert now[0] > before[0], f"{what}: /proc/uptime did not advance ({before[0]} -> {now[0]})"
    assert now[1] > before[1], f"{what}: arch timer interrupts did not increase ({before[1]} -> {now[1]})"
    assert now[2] > before[2], f"{what}: UART interrupts did not increase ({before[2]} -> {now[2]})"
    print(f"driver: {what}: uptime {before[0]} -> {now[0]}, timer irqs {before[1]} -> {now[1]}, "
          f"uart irqs {before[2]} -> {now[2]}", file=sys.stderr, flush=True)
    return now


def snapshot(vm: Vmm) -> tuple[float, float]:
    n = len(vm.err)
    vm.signal(signal.SIGUSR1)
    m = vm.wait_for(rb"snapshot saved in \S+: ([0-9.]+) MiB in ([0-9.]+)s", vm.err, n, 300)
    return float(m.group(1)), float(m.group(2))


def restore(path: str, snap_next: str, name: str) -> tuple[Vmm, float]:
    vm = Vmm(["--restore", path, "--snapshot-dir", snap_next], name)
    m = vm.wait_for(rb"restored \S+ in ([0-9.]+)s", vm.err, 0, 300)
    return vm, float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--gic", default=None)
    ap.add_argument("--smp", default="2")
    ap.add_argument("--mem", default="256")
    ap.add_argument("--append", default="console=ttyS0 quiet")
    ap.add_argument("--boot-timeout", type=float, default=600)
    ap.add_argument("--workdir", default=None, help="snapshot directories (default: a temporary one)")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vmm-snap.")
    s1, s2, s3 = (os.path.join(work, f"snap{i}") for i in (1, 2, 3))
    res: dict[str, str] = {}
    vm = None
    try:
        boot = ["--kernel", args.kernel, "--initrd", args.initrd, "--smp", args.smp, "--mem", args.mem,
                "--append", args.append, "--snapshot-dir", s1] + (["--gic", args.gic] if args.gic else [])
        vm = Vmm(boot, "boot")
        vm.wait_for(re.escape(PROMPT), vm.out, 0, args.boot_timeout)
        res["boot"] = f"{time.monotonic() - vm.t0:.1f}s"
        # where it went (wall clock from the VMM's start): Python and kvmdev start-up
        # plus the VMM's set-up (Image and initrd into RAM, DT, VGIC), the guest kernel
        # until /init runs (which prints its uptime), /init and the shell to the prompt
        m = vm.marks
        res["boot"] += (f"(vmm-start={m[b'set up in']:.1f}s,kernel={m[b'init: '] - m[b'set up in']:.1f}s,"
                        f"init-to-prompt={m[PROMPT] - m[b'init: ']:.1f}s)")
        ncpu = vm.type("grep -c ^processor /proc/cpuinfo").strip().splitlines()[-1]
        assert ncpu == args.smp, f"the guest sees {ncpu} CPUs, not {args.smp}"
        state = alive(vm, (0.0, 0, 0), "booted")
        size, secs = snapshot(vm)
        res["snapshot"] = f"{size:.1f}MiB/{secs:.1f}s"
        after_snap = alive(vm, state, "original after its snapshot")   # the snapshot was live
        vm.signal(signal.SIGTERM)
        assert vm.finish() == 0, "the original VMM did not exit cleanly"

        vm, secs = restore(s1, s2, "resume1")
        res["restore"] = f"{secs:.1f}s"
        state = alive(vm, state, "resumed")
        del after_snap
        size, secs = snapshot(vm)
        res["snapshot2"] = f"{size:.1f}MiB/{secs:.1f}s"
        vm.signal(signal.SIGTERM)
        assert vm.finish() == 0, "the resumed VMM did not exit cleanly"

        vm, secs = restore(s2, s3, "resume2")
        res["restore2"] = f"{secs:.1f}s"
        alive(vm, state, "resumed twice")
        vm.p.stdin.write(b"poweroff -f\n")     # type: ignore[union-attr]
        vm.p.stdin.flush()                     # type: ignore[union-attr]
        assert vm.finish() == 0, "the VMM did not end cleanly on the guest's PSCI SYSTEM_OFF"
        assert b"SYSTEM_EVENT_SHUTDOWN" in vm.err, "no PSCI SYSTEM_OFF seen"
        verdict = "PASS"
    except Exception as e:                      # noqa: BLE001 - the line says FAIL, the reason goes before it
        print(f"driver: FAIL: {e}", file=sys.stderr, flush=True)
        # the host kernel's side of it (KVM's messages: "Unsupported FSC", vgic...)
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
        print("driver: host dmesg tail:\n" + "\n".join(dmesg[-25:]), file=sys.stderr, flush=True)
        verdict = "FAIL"
        if vm is not None:
            if vm.p.poll() is None:
                vm.p.kill()
            vm.finish()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("@@VMM " + " ".join(f"{k}={v}" for k, v in res.items()) + f" {verdict}@@", flush=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
