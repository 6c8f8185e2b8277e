"""The kvmdev command line (``kvmdev`` or ``python -m kvmdev``).

    kvmdev probe [--registers]           what this host's KVM supports: devices, attributes by name
    kvmdev probe --discover              the same by number: groups, attributes, capabilities kvmdev has no name for
    kvmdev decode GICD_TYPER 0x00480007  a register value, field by field
    kvmdev decode attr --device vgic-v3 --group REDIST_REGS 0x0000010000000080
    kvmdev encode attr --device vgic-v3 --group REDIST_REGS --mpidr 0x100 GICR_TYPER
    kvmdev snapshot show FILE | snapshot diff A B

Every command takes --json; --backend/--arch (and, for the mock, --kernel/--gic)
choose the KVM.  Long operations show progress on a terminal, nothing when piped.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterable, Sequence

from . import BACKENDS, DeviceType
from . import open as kvm_open
from .arch import ARCH_NAMES
from .arm64 import Affinity
from .devices import gicstate
from .devices.its import GITS
from .devices.vgic import GICC, GICD_V2, GICD_V3, GICR, ICC, Frame, decode
from .errors import KvmError
from .fd import Device, Kvm

# frames by name prefix, for "decode REGISTER VALUE" (GICD_ is the v3 distributor unless --gic 2)
FRAMES = {"GICD_V3": GICD_V3, "GICD_V2": GICD_V2, "GICR": GICR, "GICC": GICC, "GITS": GITS}
DEVICES = {"vgic-v2": "ARM_VGIC_V2", "vgic-v3": "ARM_VGIC_V3", "its": "ARM_VGIC_ITS", "vgic-v5": "ARM_VGIC_V5",
           "vfio": "VFIO", "mpic-20": "FSL_MPIC_20", "mpic-42": "FSL_MPIC_42", "xics": "XICS", "flic": "FLIC"}


class Progress:
    """A one-line counter on stderr when it is a terminal; silent when piped."""

    def __init__(self, what: str, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.on = bool(getattr(self.stream, "isatty", lambda: False)())
        self.what = what

    def __call__(self, done: int, total: int) -> None:
        if self.on:
            self.stream.write(f"\r{self.what}: {done}/{total}")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()


# -- probe --------------------------------------------------------------------------------
def _attrs(fd: Any) -> list[str]:
    return [f"{g}/{a}" for g, a in fd.attributes()]


def _register_frames(dev: Device, vcpu: Any) -> list[tuple[str, Any, Iterable[str]]]:
    """(label, registers, names) of the register groups a device reaches through tables."""
    from .devices.its import Its
    from .devices.vgic import VgicV2, VgicV3
    if isinstance(dev, VgicV3):
        icc = dev.cpu_sysreg(vcpu)
        return [("DIST_REGS", dev.dist, GICD_V3.names()), ("REDIST_REGS", dev.redist(vcpu), GICR.names()),
                ("CPU_SYSREGS", icc, list(ICC))]
    if isinstance(dev, VgicV2):
        return [("DIST_REGS", dev.dist, GICD_V2.names()), ("CPU_REGS", dev.cpu(vcpu), GICC.names())]
    if isinstance(dev, Its):
        return [("ITS_REGS", dev.regs, GITS.names())]
    return []


def _new_vcpu(vm: Any, kvm: Kvm) -> Any:
    cpu = vm.create_vcpu(0)
    if kvm.arch == "arm64":
        try:
            cpu.vcpu_init(["PSCI_0_2", "PMU_V3"])
        except KvmError:
            cpu.vcpu_init(["PSCI_0_2"])
    return cpu


def probe(kvm: Kvm, registers: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """What this KVM supports, by name: creatable device types (KVM_CREATE_DEVICE_TEST)
    and, for the system fd, a VM, a vCPU and each device, the attributes HAS says
    yes to; with ``registers``, every register of the register groups too."""
    out: dict[str, Any] = {"backend": kvm.backend, "arch": kvm.arch, "kernel": kvm.kernel_release,
                           "api_version": kvm.api_version, "caps": {}, "system": _attrs(kvm)}
    caps = ["KVM_CAP_MAX_VCPUS", "KVM_CAP_MAX_VCPU_ID", "KVM_CAP_DEVICE_CTRL", "KVM_CAP_SYS_ATTRIBUTES",
            "KVM_CAP_VCPU_ATTRIBUTES", "KVM_CAP_ARM_VM_IPA_SIZE", "KVM_CAP_MSI_DEVID"]
    a = kvm._arch
    for cap in caps:
        if a.has_const(cap) and (kvm.arch == "arm64" or "_ARM_" not in cap):
            try:
                out["caps"][cap] = kvm.check_extension(cap)
            except KvmError as e:
                out["caps"][cap] = e.errno_name
    with kvm.create_vm() as vm:
        out["vm"] = _attrs(vm)
        out["vcpu"] = _attrs(_new_vcpu(vm, kvm))
        types = [t.name for t in DeviceType if vm.supports_device(t)]
    out["device_types"] = types
    out["devices"] = {}
    jobs: list[tuple[str, str, Any, list[str]]] = []
    keep: list[Any] = []
    for t in types:
        vm = kvm.create_vm()
        keep.append(vm)
        cpu = _new_vcpu(vm, kvm)
        try:
            dev = vm.create_device(t)
        except KvmError as e:
            out["devices"][t] = {"error": str(e)}
            continue
        out["devices"][t] = {"attrs": _attrs(dev)}
        if registers:
            for label, regs, names in _register_frames(dev, cpu):
                jobs.append((t, label, regs, list(names)))
    total, done = sum(len(n) for *_, n in jobs), 0
    for t, label, regs, names in jobs:
        found = []
        for name in names:
            try:
                if regs.has(name):
                    found.append(name)
            except KvmError:
                pass
            done += 1
            if progress and (done % 64 == 0 or done == total):
                progress(done, total)
        out["devices"][t].setdefault("registers", {})[label] = found
    for vm in keep:
        vm.close()
    return out


def _print_probe(p: dict[str, Any]) -> None:
    print(f"backend {p['backend']}, arch {p['arch']}, kernel {p['kernel']}, KVM API {p['api_version']}")
    print("capabilities: " + ", ".join(f"{k.removeprefix('KVM_CAP_')}={v}" for k, v in p["caps"].items()))
    for label in ("system", "vm", "vcpu"):
        print(f"{label} attributes: {', '.join(p[label]) or '-'}")
    print(f"device types (KVM_CREATE_DEVICE_TEST): {', '.join(p['device_types']) or '-'}")
    for t, d in p["devices"].items():
        print(f"  {t}: {d.get('error') or ', '.join(d['attrs']) or '-'}")
        for label, names in d.get("registers", {}).items():
            print(f"    {label}: {len(names)} registers: {_compress(names)}")


def _compress(names: Sequence[str]) -> str:
    """GICD_IPRIORITYR8..GICD_IPRIORITYR254 rather than 247 names."""
    out: list[str] = []
    i = 0
    while i < len(names):
        j = i
        base = names[i].rstrip("0123456789")
        while j + 1 < len(names) and names[j + 1].rstrip("0123456789") == base and base != names[i]:
            j += 1
        out.append(names[i] if j == i else f"{names[i]}..{names[j]}")
        i = j + 1
    return ", ".join(out)


# -- decode / encode ------------------------------------------------------------------------------
def _frame_of(reg: str, gic: int) -> Frame | None:
    if reg.startswith("GICD_"):
        return GICD_V2 if gic == 2 else GICD_V3
    for prefix in ("GICR", "GICC", "GITS"):
        if reg.startswith(prefix + "_"):
            return FRAMES[prefix]
    return None


def decode_register(reg: str, value: int, gic: int = 3) -> dict[str, Any]:
    """A register value's named fields."""
    if reg in ICC:
        return {"register": reg, "value": value, "fields": decode(ICC[reg].fields, value)}
    frame = _frame_of(reg, gic)
    if frame is None:
        raise ValueError(f"unknown register {reg!r} (GICD_*, GICR_*, GICC_*, GITS_*, ICC_*)")
    r, _ = frame.lookup(reg)
    return {"register": reg, "frame": frame.name, "value": value, "fields": decode(r.fields, value)}


def _group_name(group: str) -> str:
    g = group.upper()
    return g if g.startswith("KVM_") else "KVM_DEV_ARM_VGIC_GRP_" + g


def _affinity(packed: int) -> str:
    return f"{packed >> 24 & 0xFF}.{packed >> 16 & 0xFF}.{packed >> 8 & 0xFF}.{packed & 0xFF}"


def decode_attr(device: str, group: str, value: int) -> dict[str, Any]:
    """What an attr value of a register group means: the vCPU (index or MPIDR
    affinity) and the register."""
    dev, g = DEVICES.get(device, device.upper()), _group_name(group)
    out: dict[str, Any] = {"device": dev, "group": g, "attr": value}
    lo, hi = value & 0xFFFFFFFF, value >> 32
    frames = {("ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"): GICD_V3,
              ("ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"): GICD_V2,
              ("ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS"): GICR,
              ("ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_CPU_REGS"): GICC,
              ("ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ITS_REGS"): GITS}
    if (dev, g) in frames:
        frame = frames[(dev, g)]
        if g in ("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS",):
            out["mpidr_affinity"] = _affinity(hi)
        elif dev == "ARM_VGIC_V2":
            out["vcpu_index"] = hi
        at = frame.name_at(lo if dev != "ARM_VGIC_ITS" else value)
        out["offset"] = lo
        out["register"] = None if at is None else at[0] + (f" (+{at[1]})" if at[1] else "")
    elif g == "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS":
        names = {r.instr: n for n, r in ICC.items()}
        out.update(mpidr_affinity=_affinity(hi), register=names.get(lo & 0xFFFF))
    elif g == "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO":
        out.update(mpidr_affinity=_affinity(hi), info=lo >> 10 & 0x3FFFFF, intid=lo & 0x3FF)
    else:
        raise ValueError(f"no decoding for group {g} of {dev}")
    return out


def encode_attr(device: str, group: str, register: str, mpidr: int = 0, vcpu: int = 0) -> int:
    """The attr value that reaches ``register`` (of the vCPU ``mpidr`` or index ``vcpu``)."""
    dev, g = DEVICES.get(device, device.upper()), _group_name(group)
    if g == "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS":
        return Affinity.of(mpidr).packed() << 32 | ICC[register].instr
    frame = _frame_of(register, 2 if dev == "ARM_VGIC_V2" else 3)
    if frame is None:
        raise ValueError(f"unknown register {register!r}")
    _, off = frame.lookup(register)
    if g == "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS":
        return Affinity.of(mpidr).packed() << 32 | off
    if dev == "ARM_VGIC_V2":
        return vcpu << 32 | off
    return off


# -- main ---------------------------------------------------------------------------------------
def _int(text: str) -> int:
    return int(text, 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmdev", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--arch", choices=ARCH_NAMES, help="the mock's architecture (default: this host's)")
    p.add_argument("--kernel", help="mock: the kernel series (arm64: 6.1, 6.12, 6.18, 7.3)")
    p.add_argument("--gic", type=int, help="mock arm64: the host GIC (3, 2 or 5); decode: GICD_ of a GICv2 with 2")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="what this KVM supports")
    pr.add_argument("--registers", action="store_true", help="also HAS every register of the register groups")
    pr.add_argument("--discover", action="store_true",
                    help="HAS every group/attribute and CHECK_EXTENSION every capability by number (kvmdev.discover)")
    de = sub.add_parser("decode", help="a register value, or (decode attr ...) an attribute encoding")
    de.add_argument("what", help="a register name, or 'attr'")
    de.add_argument("value", type=_int)
    de.add_argument("--device", default="vgic-v3", help=", ".join(DEVICES))
    de.add_argument("--group", default="DIST_REGS")
    en = sub.add_parser("encode", help="encode attr --device D --group G [--mpidr M|--vcpu N] REGISTER")
    en.add_argument("what", choices=["attr"])
    en.add_argument("register")
    en.add_argument("--device", default="vgic-v3")
    en.add_argument("--group", default="DIST_REGS")
    en.add_argument("--mpidr", type=_int, default=0)
    en.add_argument("--vcpu", type=int, default=0)
    sn = sub.add_parser("snapshot", help="show or diff saved GIC documents (kvmdev.devices.gicstate)")
    sn.add_argument("action", choices=["show", "diff"])
    sn.add_argument("files", nargs="+")
    return p


def _open(args: argparse.Namespace) -> Kvm:
    host = {k: v for k, v in (("kernel", args.kernel), ("gic", args.gic)) if v is not None}
    return kvm_open(args.backend, arch=args.arch, **(host if args.backend == "mock" else {}))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    emit: Callable[[Any], None] = (lambda o: print(json.dumps(o, indent=1))) if args.json else (lambda o: None)
    try:
        if args.cmd == "probe" and args.discover:
            from .discover import discover, print_discovery
            with _open(args) as kvm:
                emit(discover(kvm)) if args.json else print_discovery(discover(kvm))
        elif args.cmd == "probe":
            with _open(args) as kvm:
                p = probe(kvm, args.registers, None if args.json else Progress("probing registers"))
            emit(p) if args.json else _print_probe(p)
        elif args.cmd == "decode":
            if args.what == "attr":
                d = decode_attr(args.device, args.group, args.value)
            else:
                d = decode_register(args.what, args.value, args.gic or 3)
            if args.json:
                emit(d)
            else:
                print("  ".join(f"{k}={v:#x}" if isinstance(v, int) and k in ("attr", "value", "offset") else
                                f"{k}={v}" for k, v in d.items() if k != "fields"))
                for k, v in d.get("fields", {}).items():
                    print(f"  {k:16s} {v:#x} ({v})")
        elif args.cmd == "encode":
            v = encode_attr(args.device, args.group, args.register, args.mpidr, args.vcpu)
            emit({"attr": v}) if args.json else print(f"{v:#018x}")
        elif args.cmd == "snapshot":
            docs = []
            for f in args.files:
                with open(f) as fh:
                    docs.append(json.load(fh))
            if args.action == "show":
                for doc in docs:
                    emit(doc) if args.json else _show(doc)
            else:
                if len(docs) != 2:
                    raise ValueError("snapshot diff takes two files")
                lines = gicstate.diff(docs[0], docs[1])
                emit(lines) if args.json else print("\n".join(lines) or "no difference")
                return 1 if lines else 0
    except (ValueError, KeyError, KvmError, OSError) as e:
        print(f"kvmdev: {e}", file=sys.stderr)
        return 2
    return 0


def _show(doc: dict[str, Any]) -> None:
    print(f"{doc.get('format')} v{doc.get('version')}: GICv{doc.get('gic')}, NR_IRQS {doc.get('nr_irqs')}, "
          f"{len(doc.get('vcpus', {}))} vCPUs, {len(doc.get('its', []))} ITS")
    for name, v in doc.get("dist", {}).items():
        print(f"  dist {name:22s} {v:#x}")
    for key, entry in doc.get("vcpus", {}).items():
        for part, regs in entry.items():
            if isinstance(regs, dict):
                for name, v in regs.items():
                    print(f"  vCPU {key} {part} {name:18s} {v:#x}")
    for n, st in enumerate(doc.get("its", [])):
        for name, v in st.get("regs", {}).items():
            print(f"  ITS {n} {name:18s} {v:#x}")
    for m in doc.get("memory", []):
        print(f"  memory: {m['what']} at {m['gpa']:#x}, {m['size']:#x} bytes")


if __name__ == "__main__":
    sys.exit(main())
