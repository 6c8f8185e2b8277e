"""First contact: open KVM (real /dev/kvm when it works, else the mock), list the
device types this kernel can create, and the attributes each fd answers yes to.

    python examples/hello.py            # auto backend
    KVMDEV_BACKEND=mock python examples/hello.py
    python examples/hello.py --arch arm64   # the arm64 mock on any host
"""
from __future__ import annotations

import argparse

import kvmdev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, choices=kvmdev.BACKENDS,
                    help="real, mock or auto (default: KVMDEV_BACKEND, else auto)")
    ap.add_argument("--arch", default=None, choices=kvmdev.ARCH_NAMES)
    args = ap.parse_args()

    with kvmdev.open(args.backend, arch=args.arch) as kvm:
        print(f"backend {kvm.backend} ({kvm.backend_reason}), arch {kvm.arch}, KVM API {kvm.api_version}")
        with kvm.create_vm() as vm:
            types = [t.name for t in kvmdev.DeviceType if vm.supports_device(t)]
            print("device types (KVM_CREATE_DEVICE_TEST):", ", ".join(types) or "none")
            vcpu = vm.create_vcpu(0)
            targets: list[tuple[str, kvmdev.fd._AttrTarget]] = [("system", kvm), ("vCPU 0", vcpu)]
            targets += [(t, vm.create_device(t)) for t in types if t == "VFIO"]
            for label, fd in targets:
                names = [f"{g}/{a}" for g, a in fd.attributes()]
                print(f"  {label}: {', '.join(names) or 'no attributes in kvmdev tables'}")
            if kvm.arch == "x86_64":
                print(f"  KVM_X86_XCOMP_GUEST_SUPP = {kvm.xcomp_guest_supp:#x}, "
                      f"vCPU 0 TSC offset = {vcpu.tsc_offset}")


if __name__ == "__main__":
    main()
