"""Save an arm64 VM's GIC (VGIC v3 + ITS, or v2) and bring it back in a new VM:
the document is JSON, keyed by register names and MPIDRs; the guest RAM it names
(LPI and ITS tables) travels with it.

    python examples/gic_snapshot.py                  # real KVM on arm64 hosts, else the mock
    python examples/gic_snapshot.py --backend mock --gic 2
"""
from __future__ import annotations

import argparse
import json

import kvmdev
from kvmdev.devices import gicstate

RAM = 0x40000000


def machine(kvm: kvmdev.Kvm, nvcpus: int = 2):
    vm = kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(nvcpus)]
    for c in cpus:
        c.vcpu_init(["PSCI_0_2"])
    its = []
    if vm.supports_device("ARM_VGIC_V3"):
        gic = vm.create_device("ARM_VGIC_V3")
        its = [vm.create_device("ARM_VGIC_ITS")]
        its[0].base = 0x08080000
        gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
    else:
        gic = vm.create_device("ARM_VGIC_V2")
        gic.dist_base, gic.cpu_base = 0x08000000, 0x08010000
    gic.nr_irqs = 128
    gic.init()
    return vm, cpus, gic, its, vm.add_memory(RAM, 0x10000)


def run(kvm: kvmdev.Kvm) -> list[str]:
    vm, cpus, gic, its, ram = machine(kvm)
    gic.dist["GICD_CTLR"] = gic.dist["GICD_CTLR"] | 1 << (1 if its else 0)   # enable the distributor
    gic.dist["GICD_ISENABLER1"] = 0x00FF00FF
    gic.dist["GICD_IPRIORITYR10"] = 0x80604020
    vm.irq_line(kvmdev.arm64.irq("SPI", 40), 1)                        # an SPI made pending
    doc = gicstate.save(gic, cpus, its=its)
    text = json.dumps(doc)                                             # e.g. into a snapshot file
    vm2, cpus2, gic2, its2, ram2 = machine(kvm)
    ram2.write(RAM, ram.read(RAM, 0x10000))                            # the memory it names
    gicstate.restore(gic2, json.loads(text), cpus2, its=its2)
    again = gicstate.save(gic2, cpus2, its=its2)
    vm.close(), vm2.close()
    return gicstate.diff(doc, again)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, choices=kvmdev.BACKENDS,
                    help="real, mock or auto (default: KVMDEV_BACKEND, else auto)")
    ap.add_argument("--gic", type=int, default=None, help="mock: the host GIC, 3 or 2")
    args = ap.parse_args()
    host = {"gic": args.gic} if args.gic else {}   # a mock profile (implies the mock)
    with kvmdev.open(args.backend, arch="arm64", **host) as kvm:
        diff = run(kvm)
        print("restored into a new VM:", "equal documents" if not diff else "\n".join(diff))


if __name__ == "__main__":
    main()
