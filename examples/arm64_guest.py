"""A minimal arm64 VM: a GIC, one vCPU, 64 KiB of RAM and a guest of a few
instructions that prints through an MMIO "UART" and powers off with PSCI.

    python examples/arm64_guest.py                  # real KVM on arm64 hosts, else the arm64 mock
    python examples/arm64_guest.py --backend mock --kernel 6.1 --gic 2

The VMM side: every MMIO write exit carries one byte for the UART; the PSCI
SYSTEM_OFF call ends the run with KVM_EXIT_SYSTEM_EVENT.
"""
from __future__ import annotations

import argparse

import kvmdev
from kvmdev import arm64

RAM, UART = 0x50000000, 0x09000000
GICD, GICR, GICC = 0x08000000, 0x080A0000, 0x08010000
GRP_ADDR = "KVM_DEV_ARM_VGIC_GRP_ADDR"


def ldst(load: bool, rt: int, rn: int, offset: int = 0, size: int = 3) -> int:
    """A64 LDR/STR (immediate, unsigned offset) of 2**size bytes."""
    return size << 30 | 0x39000000 | (1 << 22 if load else 0) | (offset >> size) << 10 | rn << 5 | rt


HVC0 = 0xD4000002


def guest(text: bytes) -> bytes:
    """x4 = UART, x5 = the text, x6 = PSCI SYSTEM_OFF's id, all set by the VMM."""
    code = []
    for i in range(len(text)):
        code += [ldst(True, 1, 5, i, 0), ldst(False, 1, 4, 0, 0)]  # ldrb w1, [x5, #i]; strb w1, [x4]
    code += [ldst(True, 0, 6, 0), HVC0]                                # x0 = SYSTEM_OFF; hvc #0
    return b"".join(i.to_bytes(4, "little") for i in code)


def add_gic(vm: kvmdev.Vm) -> str:
    """The VGIC the host offers, with its addresses, initialized."""
    if vm.supports_device("ARM_VGIC_V3"):
        gic = vm.create_device("ARM_VGIC_V3")
        gic.set_attr(GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_DIST", GICD, ctype="__u64")
        gic.set_attr(GRP_ADDR, "KVM_VGIC_V3_ADDR_TYPE_REDIST", GICR, ctype="__u64")
    else:
        gic = vm.create_device("ARM_VGIC_V2")
        gic.set_attr(GRP_ADDR, "KVM_VGIC_V2_ADDR_TYPE_DIST", GICD, ctype="__u64")
        gic.set_attr(GRP_ADDR, "KVM_VGIC_V2_ADDR_TYPE_CPU", GICC, ctype="__u64")
    gic.set_attr("KVM_DEV_ARM_VGIC_GRP_CTRL", "KVM_DEV_ARM_VGIC_CTRL_INIT", ctype="void")
    return gic.type_name


def run(kvm: kvmdev.Kvm, text: bytes = b"hello from the guest\n") -> tuple[str, bytes, str]:
    """Boot the guest; returns (GIC type, what it printed, the final exit)."""
    with kvm.create_vm() as vm:
        ram = vm.add_memory(RAM, 0x10000)
        ram.write(RAM, guest(text))
        ram.write(RAM + 0x8000, text)
        ram.write(RAM + 0x9000, arm64.PSCI_0_2_FN_SYSTEM_OFF.to_bytes(8, "little"))
        cpu = vm.create_vcpu(0)
        cpu.vcpu_init(["PSCI_0_2"])
        gic = add_gic(vm)  # after the vCPUs: the redistributors follow them
        for reg, value in (("pc", RAM), ("x4", UART), ("x5", RAM + 0x8000), ("x6", RAM + 0x9000)):
            cpu.set_one_reg(reg, value)
        out = bytearray()
        while True:
            exit_ = cpu.run()
            if exit_ == "KVM_EXIT_MMIO" and cpu.mmio.phys_addr == UART and cpu.mmio.is_write:
                out += cpu.mmio.data
                continue
            if exit_ == "KVM_EXIT_SYSTEM_EVENT":
                return gic, bytes(out), cpu.system_event.type
            detail = f" {cpu.mmio}" if exit_ == "KVM_EXIT_MMIO" else ""
            raise RuntimeError(f"unexpected exit {exit_}{detail} at pc {cpu.get_one_reg('pc'):#x}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, choices=kvmdev.BACKENDS,
                    help="real, mock or auto (default: KVMDEV_BACKEND, else auto)")
    ap.add_argument("--kernel", default=None, help="the mock's kernel series (6.12, 6.1; implies the mock)")
    ap.add_argument("--gic", type=int, default=None, help="the mock's host GIC (3, 2; implies the mock)")
    args = ap.parse_args()
    mock = {k: v for k, v in (("kernel", args.kernel), ("gic", args.gic)) if v is not None}
    with kvmdev.open(args.backend, arch="arm64", **mock) as kvm:
        gic, text, event = run(kvm)
        print(f"backend {kvm.backend}, kernel {kvm.kernel_release}, {gic}")
        print(f"guest said: {text.decode()!r}, then {event}")


if __name__ == "__main__":
    main()
