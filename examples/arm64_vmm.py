"""arm64 VMM bring-up: a VM, vCPUs, a VGIC v3 with two redistributor regions, an
ITS, CTRL_INIT, LPI tables, then an MSI through the ITS arriving as a pending LPI.

    python examples/arm64_vmm.py                     # real KVM on a GICv3 arm64 host, else the mock
    python examples/arm64_vmm.py --backend mock --kernel 6.1
"""
from __future__ import annotations

import argparse

import kvmdev
from kvmdev.devices.its import command

GICD, ITS_BASE = 0x08000000, 0x08080000
REGIONS = [(0x080A0000, 2), (0x0A000000, 2)]          # (base, redistributors)
RAM = 0x40000000
QUEUE, DEVTAB, COLLTAB, ITT, PROP, PEND = (RAM + n * 0x10000 for n in range(6))


def bring_up(kvm: kvmdev.Kvm, nvcpus: int = 4) -> dict:
    vm = kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(nvcpus)]
    for c in cpus:
        c.vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    its = vm.create_device("ARM_VGIC_ITS")
    gic.dist_base = GICD
    for base, count in REGIONS:                       # KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION
        gic.add_redist_region(base, count)
    its.base = ITS_BASE
    gic.init()
    ram = vm.add_memory(RAM, 0x10000 * (6 + nvcpus))
    ram.write(PROP, bytes([0xA1]) * 0x1000)           # LPIs 8192.. enabled, priority 0xa0
    for n, c in enumerate(cpus):
        r = gic.redist(c)
        r["GICR_PROPBASER"], r["GICR_PENDBASER"] = PROP | 15, PEND + n * 0x10000
        r["GICR_CTLR"] = 1                            # EnableLPIs
    regs = its.regs
    regs["GITS_CBASER"] = 1 << 63 | QUEUE
    regs["GITS_BASER0"], regs["GITS_BASER1"] = 1 << 63 | DEVTAB, 1 << 63 | COLLTAB
    regs["GITS_CTLR"] = 1
    its.submit(command("MAPD", DeviceID=7, Size=1, ITT_addr=ITT, V=1),
               command("MAPC", ICID=0, RDbase=2, V=1),
               command("MAPTI", DeviceID=7, EventID=0, pINTID=8192, ICID=0))
    delivered = vm.signal_msi(its.base + 0x10040, data=0, devid=7)
    gic.save_pending_tables()                         # pending LPIs into each vCPU's table
    pending = bool(ram.read(PEND + 2 * 0x10000 + 8192 // 8, 1)[0] & 1)
    out = {"kernel": kvm.kernel_release, "redistributors": [(hex(r.base), r.count) for r in gic.redist_regions()],
           "last": [gic.redist(c).fields("GICR_TYPER")["Last"] for c in cpus],
           "msi": delivered, "lpi_8192_pending_on_vcpu2": pending}
    vm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, choices=kvmdev.BACKENDS,
                    help="real, mock or auto (default: KVMDEV_BACKEND, else auto)")
    ap.add_argument("--kernel", default=None, help="mock: 6.12 or 6.1")
    args = ap.parse_args()
    host = {"kernel": args.kernel} if args.kernel else {}   # a mock profile (implies the mock)
    with kvmdev.open(args.backend, arch="arm64", **host) as kvm:
        for k, v in bring_up(kvm).items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
