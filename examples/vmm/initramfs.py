"""Build the second-level guest's initramfs: a gzipped newc cpio holding a static
busybox and an /init that mounts proc/sys/dev and runs a shell on the console
(``setsid cttyhack``: the shell gets the console as its controlling tty, so
Ctrl-C and job control work).

    python examples/vmm/initramfs.py BUSYBOX OUT.cpio.gz
"""
from __future__ import annotations

import gzip
import sys

INIT = b"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
export PS1='vmm# ' HOME=/root
echo "init: $(cat /proc/uptime)"
while true; do setsid cttyhack sh; done
"""


def _entry(name: str, mode: int, data: bytes = b"", ino: int = 1, rdev: tuple[int, int] = (0, 0)) -> bytes:
    nm = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + nm
    hdr += b"\0" * (-len(hdr) % 4)
    return hdr + data + b"\0" * (-len(data) % 4)


def build(busybox: bytes) -> bytes:
    out = []
    for i, d in enumerate(("bin", "dev", "proc", "sys", "root", "tmp")):
        out.append(_entry(d, 0o040755, ino=10 + i))
    out.append(_entry("dev/console", 0o020600, ino=20, rdev=(5, 1)))  # init's stdio before devtmpfs
    out.append(_entry("bin/busybox", 0o100755, busybox, ino=30))
    out.append(_entry("init", 0o100755, INIT, ino=31))
    out.append(_entry("TRAILER!!!", 0, ino=0))
    return gzip.compress(b"".join(out), compresslevel=6, mtime=0)


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        img = build(f.read())
    with open(sys.argv[2], "wb") as f:
        f.write(img)
