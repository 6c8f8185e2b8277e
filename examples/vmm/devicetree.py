"""The device tree the VMM hands the kernel, written with the pure-Python ``fdt``
package (PyPI; a wheel that also runs in the arm64 guests, staged there by the
harness).  Properties as QEMU's hw/arm/virt.c and kvmtool's arm/fdt.c write them
(Documentation/devicetree/bindings: arm/psci, arm/cpus, timer/arm,arch_timer,
interrupt-controller/arm,gic-v3 and arm,gic, serial/8250)."""
from __future__ import annotations

from dataclasses import dataclass

import fdt

GIC_PHANDLE, ITS_PHANDLE = 1, 2
SPI, PPI = 0, 1
LEVEL_HIGH = 4


@dataclass
class Layout:
    ram_base: int
    ram_size: int
    ncpus: int
    mpidrs: list[int]
    gic: int                     # 3 or 2
    gicd: int
    gicr: int                    # v3: the redistributor region (ncpus * 128 KiB)
    gicc: int                    # v2: the CPU interface
    its: int | None              # v3: the ITS frame, or None
    uart: int
    uart_spi: int                # SPI number (INTID - 32)
    bootargs: str
    initrd: tuple[int, int] | None


def _cells64(*values: int) -> list[int]:
    out: list[int] = []
    for v in values:
        out += [v >> 32, v & 0xFFFFFFFF]
    return out


def _node(name: str, *props: fdt.items.Property) -> fdt.Node:
    n = fdt.Node(name)
    for p in props:
        n.append(p)
    return n


def build(lay: Layout) -> bytes:
    t = fdt.FDT()
    for p in (fdt.PropStrings("compatible", "linux,dummy-virt"), fdt.PropWords("#address-cells", 2),
              fdt.PropWords("#size-cells", 2), fdt.PropWords("interrupt-parent", GIC_PHANDLE)):
        t.add_item(p)

    chosen = _node("chosen", fdt.PropStrings("bootargs", lay.bootargs),
                   fdt.PropStrings("stdout-path", f"/uart@{lay.uart:x}"))
    if lay.initrd:
        chosen.append(fdt.PropWords("linux,initrd-start", *_cells64(lay.initrd[0])))
        chosen.append(fdt.PropWords("linux,initrd-end", *_cells64(lay.initrd[1])))
    t.add_item(chosen)
    t.add_item(_node(f"memory@{lay.ram_base:x}", fdt.PropStrings("device_type", "memory"),
                     fdt.PropWords("reg", *_cells64(lay.ram_base, lay.ram_size))))

    cpus = _node("cpus", fdt.PropWords("#address-cells", 1), fdt.PropWords("#size-cells", 0))
    for i, mpidr in enumerate(lay.mpidrs):
        cpus.append(_node(f"cpu@{i}", fdt.PropStrings("device_type", "cpu"),
                          fdt.PropStrings("compatible", "arm,arm-v8"),
                          fdt.PropWords("reg", mpidr & 0xFF00FFFFFF),
                          fdt.PropStrings("enable-method", "psci")))
    t.add_item(cpus)
    # KVM's in-kernel PSCI (vcpu_init with PSCI_0_2) answers HVC calls
    t.add_item(_node("psci", fdt.PropStrings("compatible", "arm,psci-0.2"), fdt.PropStrings("method", "hvc")))

    if lay.gic == 3:
        gic = _node(f"intc@{lay.gicd:x}", fdt.PropStrings("compatible", "arm,gic-v3"),
                    fdt.PropWords("#interrupt-cells", 3), fdt.PropWords("#address-cells", 2),
                    fdt.PropWords("#size-cells", 2), fdt.Property("ranges"), fdt.Property("interrupt-controller"),
                    fdt.PropWords("#redistributor-regions", 1),
                    fdt.PropWords("reg", *_cells64(lay.gicd, 0x10000, lay.gicr, lay.ncpus * 0x20000)),
                    fdt.PropWords("phandle", GIC_PHANDLE))
        if lay.its is not None:
            gic.append(_node(f"its@{lay.its:x}", fdt.PropStrings("compatible", "arm,gic-v3-its"),
                             fdt.Property("msi-controller"), fdt.PropWords("#msi-cells", 1),
                             fdt.PropWords("reg", *_cells64(lay.its, 0x20000)),
                             fdt.PropWords("phandle", ITS_PHANDLE)))
        ppi_cpus = 0
    else:
        gic = _node(f"intc@{lay.gicd:x}", fdt.PropStrings("compatible", "arm,cortex-a15-gic"),
                    fdt.PropWords("#interrupt-cells", 3), fdt.Property("interrupt-controller"),
                    fdt.PropWords("reg", *_cells64(lay.gicd, 0x1000, lay.gicc, 0x2000)),
                    fdt.PropWords("phandle", GIC_PHANDLE))
        ppi_cpus = ((1 << lay.ncpus) - 1) << 8    # GICv2 PPIs name their target CPUs
    t.add_item(gic)

    flags = ppi_cpus | LEVEL_HIGH
    # secure phys, non-secure phys, virtual, hyp timer: PPIs 13, 14, 11, 10 (INTIDs 29, 30, 27, 26)
    t.add_item(_node("timer", fdt.PropStrings("compatible", "arm,armv8-timer"), fdt.Property("always-on"),
                     fdt.PropWords("interrupts", PPI, 13, flags, PPI, 14, flags, PPI, 11, flags, PPI, 10, flags)))
    t.add_item(_node(f"uart@{lay.uart:x}", fdt.PropStrings("compatible", "ns16550a"),
                     fdt.PropWords("reg", *_cells64(lay.uart, 0x1000)),
                     fdt.PropWords("clock-frequency", 1843200),
                     fdt.PropWords("interrupts", SPI, lay.uart_spi, LEVEL_HIGH)))
    return t.to_dtb(version=17)
