"""x86: the KVM-VFIO device and a vCPU's TSC offset.

    python examples/x86_vfio_tsc.py                  # real /dev/kvm on x86, else the mock
"""
from __future__ import annotations

import argparse
import errno

import kvmdev


def run(kvm: kvmdev.Kvm) -> dict:
    with kvm.create_vm() as vm:
        vfio = vm.create_device("VFIO")
        with open("/dev/null") as f:                    # not a VFIO file: the kernel says EINVAL
            try:
                vfio.add_file(f)
                refused = None
            except kvmdev.KvmError as e:
                refused = e.errno_name
        cpu = vm.create_vcpu(0)
        before = cpu.tsc_offset
        cpu.tsc_offset = 1 << 32
        return {"xcomp_guest_supp": hex(kvm.xcomp_guest_supp), "vfio_add_dev_null": refused,
                "tsc_offset_before": before, "tsc_offset_after": cpu.tsc_offset,
                "vfio_attrs": [f"{g}/{a}" for g, a in vfio.attributes()], "errno_check": refused == "EINVAL"
                and errno.EINVAL == 22}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, choices=kvmdev.BACKENDS,
                    help="real, mock or auto (default: KVMDEV_BACKEND, else auto)")
    args = ap.parse_args()
    with kvmdev.open(args.backend, arch="x86_64") as kvm:
        print(f"backend {kvm.backend}, kernel {kvm.kernel_release}")
        for k, v in run(kvm).items():
            print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
