"""The kvmdev command line (``kvmdev`` or ``python -m kvmdev``).

    kvmdev probe [--registers]           what this host's KVM supports: devices, attributes by name
    kvmdev probe --discover              the same by number: groups, attributes, capabilities kvmdev has no name for
    kvmdev decode GICD_TYPER 0x00480007  a register value, field by field
    kvmdev decode attr --device vgic-v3 --group REDIST_REGS 0x0000010000000080
    kvmdev encode attr --device vgic-v3 --group REDIST_REGS --mpidr 0x100 GICR_TYPER
    kvmdev snapshot show FILE | snapshot diff A B

--json works before or after the command.  probe opens a KVM: --backend
(default: KVMDEV_BACKEND, else auto), --arch (another architecture is the mock),
and the mock's profile --kernel/--gic (which imply the mock).  decode's --gic 2
reads GICD_* as a GICv2's.  An option that does not apply to the command is an
error.  Long operations show progress on a terminal, nothing when piped.

Exit status: 0 done (snapshot diff: no difference); 1 snapshot diff: the
documents differ; 2 usage: a bad option, argument or value; 3 the kernel (KVM)
refused, or /dev/kvm could not be opened; 4 an input file cannot be read or is
not an intact kvmdev.gic document.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Iterable, Sequence

from . import BACKENDS, DeviceType
from ._version import __version__
from . import open as kvm_open
from .arch import ARCH_NAMES, DEVICE_ALIASES, host_arch_name
from .arm64 import Affinity, default_mpidr
from .devices import gicstate
from .devices.its import GITS
from .devices.vgic import GICC, GICD_V2, GICD_V3, GICR, ICC, Frame, decode
from .errors import KvmError, UnknownNameError
from .fd import Device, Kvm

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_KVM, EXIT_INPUT = 0, 1, 2, 3, 4
# snapshot files are read up to this many bytes (a 512-vCPU GICv3 document is a few MB)
MAX_DOCUMENT_BYTES = 64 << 20
MAX_JSON_DEPTH = 16

# frames by name prefix, for "decode REGISTER VALUE" (GICD_ is the v3 distributor unless --gic 2)
FRAMES = {"GICD_V3": GICD_V3, "GICD_V2": GICD_V2, "GICR": GICR, "GICC": GICC, "GITS": GITS}
# the --device spellings: the short ones (kvmdev.arch.DEVICE_ALIASES) and every kernel name
DEVICES = {a: n for a, n in DEVICE_ALIASES.items() if a != "vgic-its" and n != "XIVE"}
GIC_DEVICES = ("ARM_VGIC_V2", "ARM_VGIC_V3", "ARM_VGIC_ITS")


class UsageError(ValueError):
    """A bad option or argument: exit status 2."""


class InputError(ValueError):
    """An input file that cannot be used: exit status 4; the message names the file."""


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
    out: dict[str, Any] = {"backend": kvm.backend, "backend_reason": kvm.backend_reason, "arch": kvm.arch,
                           "kernel": kvm.kernel_release,
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
    print(f"backend {p['backend']} ({p['backend_reason']}), arch {p['arch']}, kernel {p['kernel']}, "
          f"KVM API {p['api_version']}")
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


def _lookup(frame: Frame, reg: str) -> tuple[Any, int]:
    try:
        return frame.lookup(reg)
    except KeyError:
        raise UnknownNameError("register", reg, f"of the {frame.name} frame", frame.names()) from None


def decode_register(reg: str, value: int, gic: int = 3) -> dict[str, Any]:
    """A register value's named fields; a value wider than the register, or
    negative, is a ValueError."""
    if reg in ICC:
        width, fields, out = 64, ICC[reg].fields, {"register": reg, "value": value}
    else:
        frame = _frame_of(reg, gic)
        if frame is None:
            raise UnknownNameError("register", reg, "(GICD_*, GICR_*, GICC_*, GITS_*, ICC_*)",
                                   [*GICD_V3.names(), *GICR.names(), *GICC.names(), *GITS.names(), *ICC])
        if gic == 2 and frame in (GICR, GITS):
            raise UsageError(f"{reg}: a GICv2 has no {frame.name} registers (--gic 2 reads GICD_ as a GICv2's)")
        r, _ = _lookup(frame, reg)
        width, fields, out = r.width, r.fields, {"register": reg, "frame": frame.name, "value": value}
    if not 0 <= value < 1 << width:
        raise UsageError(f"{reg} is a {width}-bit register: {value:#x} does not fit" if value >= 0 else
                         f"{reg} is a {width}-bit register: a register value is not negative ({value})")
    out["fields"] = decode(fields, value)
    return out


def _device(device: str) -> str:
    """A --device value as the kernel's device type name."""
    if device in DEVICES:
        return DEVICES[device]
    key = device.upper().replace("-", "_").removeprefix("KVM_DEV_TYPE_")
    if key in DeviceType.__members__:
        return key
    raise UnknownNameError("device", device, "(--device)", list(DEVICES) + list(DeviceType.__members__))


def _group_name(group: str) -> str:
    g = group.upper()
    return g if g.startswith("KVM_") else "KVM_DEV_ARM_VGIC_GRP_" + g


def _affinity(packed: int) -> str:
    return f"{packed >> 24 & 0xFF}.{packed >> 16 & 0xFF}.{packed >> 8 & 0xFF}.{packed & 0xFF}"


_ATTR_FRAMES = {("ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"): GICD_V3,
                ("ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_DIST_REGS"): GICD_V2,
                ("ARM_VGIC_V3", "KVM_DEV_ARM_VGIC_GRP_REDIST_REGS"): GICR,
                ("ARM_VGIC_V2", "KVM_DEV_ARM_VGIC_GRP_CPU_REGS"): GICC,
                ("ARM_VGIC_ITS", "KVM_DEV_ARM_VGIC_GRP_ITS_REGS"): GITS}
_ATTR_GROUPS = {"ARM_VGIC_V3": ["DIST_REGS", "REDIST_REGS", "CPU_SYSREGS", "LEVEL_INFO"],
                "ARM_VGIC_V2": ["DIST_REGS", "CPU_REGS"], "ARM_VGIC_ITS": ["ITS_REGS"]}


def _attr_group(dev: str, group: str) -> str:
    if dev not in _ATTR_GROUPS:
        raise UsageError(f"--device {dev}: attr encodings are known for the VGIC devices "
                         f"({', '.join(a for a, n in DEVICES.items() if n in GIC_DEVICES)})")
    g = _group_name(group)
    if g.removeprefix("KVM_DEV_ARM_VGIC_GRP_") not in _ATTR_GROUPS[dev]:
        raise UnknownNameError("register group", group, f"of {dev} (--group)", _ATTR_GROUPS[dev])
    return g


def decode_attr(device: str, group: str, value: int) -> dict[str, Any]:
    """What an attr value of a register group means: the vCPU (index or MPIDR
    affinity) and the register."""
    dev = _device(device)
    g = _attr_group(dev, group)
    if not 0 <= value < 1 << 64:
        raise UsageError(f"attr is a __u64: {value:#x} does not fit" if value >= 0 else
                         f"attr is a __u64, not negative ({value})")
    out: dict[str, Any] = {"device": dev, "group": g, "attr": value}
    lo, hi = value & 0xFFFFFFFF, value >> 32
    if (dev, g) in _ATTR_FRAMES:
        frame = _ATTR_FRAMES[(dev, g)]
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
    else:   # LEVEL_INFO
        out.update(mpidr_affinity=_affinity(hi), info=lo >> 10 & 0x3FFFFF, intid=lo & 0x3FF)
    return out


def encode_attr(device: str, group: str, register: str, mpidr: int | None = None, vcpu: int | None = None) -> int:
    """The attr value that reaches ``register`` of the vCPU ``mpidr`` (GICv3
    REDIST_REGS, CPU_SYSREGS) or index ``vcpu`` (GICv2 DIST_REGS, CPU_REGS).
    A vCPU selector the group does not take is a ValueError, not ignored."""
    dev = _device(device)
    g = _attr_group(dev, group)
    by_mpidr = dev == "ARM_VGIC_V3" and g in ("KVM_DEV_ARM_VGIC_GRP_REDIST_REGS", "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS")
    by_index = dev == "ARM_VGIC_V2"
    short = g.removeprefix("KVM_DEV_ARM_VGIC_GRP_")
    if vcpu is not None and not by_index:
        hint = (f"; vCPU {vcpu}'s default MPIDR is {default_mpidr(vcpu):#x} (--mpidr {default_mpidr(vcpu):#x})"
                if by_mpidr and 0 <= vcpu < 1 << 16 else "")
        raise UsageError(f"--vcpu: {dev} {short} " + ("addresses a vCPU by its MPIDR, not its index (--mpidr)" + hint
                                                      if by_mpidr else "is not per vCPU"))
    if mpidr is not None and not by_mpidr:
        raise UsageError(f"--mpidr: {dev} {short} " + ("addresses a vCPU by its index (--vcpu)" if by_index
                                                       else "is not per vCPU"))
    if mpidr is not None and not 0 <= mpidr < 1 << 64:
        raise UsageError(f"--mpidr is a 64-bit MPIDR_EL1 value, not {mpidr}")
    if vcpu is not None and not 0 <= vcpu < 0xFF:
        raise UsageError(f"--vcpu: a GICv2 attr takes a vCPU index 0..254, not {vcpu}")
    if g == "KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS":
        if register not in ICC:
            raise UnknownNameError("ICC register", register, "(CPU_SYSREGS)", ICC)
        return Affinity.of(mpidr or 0).packed() << 32 | ICC[register].instr
    if g == "KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO":
        raise UsageError("LEVEL_INFO attrs name an INTID, not a register: nothing to encode")
    frame = _ATTR_FRAMES[(dev, g)]
    _, off = _lookup(frame, register)
    if by_mpidr:
        return Affinity.of(mpidr or 0).packed() << 32 | off
    if by_index:
        return (vcpu or 0) << 32 | off
    return off


# -- main ---------------------------------------------------------------------------------------
def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r} (decimal, 0x hex, 0o, 0b)") from None


_GLOBAL = ("json", "backend", "arch", "kernel", "gic")


def _global_options(p: argparse.ArgumentParser, sub: bool) -> None:
    """The options every command takes, before or after the command's name (a
    command's own copy sets nothing unless given)."""
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)", **d)
    p.add_argument("--backend", choices=BACKENDS, help="probe: the KVM to open (default: KVMDEV_BACKEND, else "
                   "auto: the real /dev/kvm, or the mock where it cannot be opened)", **d)
    p.add_argument("--arch", choices=ARCH_NAMES, help="probe: the architecture (another than this host's "
                   f"{host_arch_name()} is the mock)", **d)
    p.add_argument("--kernel", help="probe, mock: the emulated kernel series (arm64: 6.1, 6.12, 6.18, 7.3)", **d)
    p.add_argument("--gic", type=int, choices=(2, 3, 5), help="probe, arm64 mock: the host GIC; "
                   "decode: 2 reads GICD_* as a GICv2's", **d)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmdev", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--version", action="version", version=f"kvmdev {__version__}")
    _global_options(p, False)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        _global_options(c, True)
        return c

    pr = command("probe", "what this KVM supports: device types, attributes (and registers) by name")
    pr.add_argument("--registers", action="store_true", help="also HAS every register of the register groups")
    pr.add_argument("--discover", action="store_true",
                    help="HAS every group/attribute and CHECK_EXTENSION every capability by number (kvmdev.discover)")
    de = command("decode", "a register value field by field, or (decode attr ...) an attribute encoding")
    de.add_argument("what", metavar="REGISTER|attr", help="a register name (GICD_*, GICR_*, GICC_*, GITS_*, "
                    "ICC_*), or 'attr' to decode a device-attribute attr value")
    de.add_argument("value", type=_int, metavar="VALUE", help="the value (decimal or 0x hex; a negative one "
                    "after --)")
    de.add_argument("--device", help=f"decode attr: the device ({', '.join(DEVICES)}; default vgic-v3)")
    de.add_argument("--group", help="decode attr: the register group (e.g. DIST_REGS, REDIST_REGS, "
                    "CPU_SYSREGS, CPU_REGS, ITS_REGS, LEVEL_INFO; default DIST_REGS)")
    en = command("encode", "the attr value that reaches a register: encode attr --device D --group G "
                 "[--mpidr M | --vcpu N] REGISTER")
    en.add_argument("what", choices=["attr"], help="what to encode (attr: a device-attribute attr value)")
    en.add_argument("register", metavar="REGISTER", help="the register name (GICD_*, GICR_*, GICC_*, GITS_*, ICC_*)")
    en.add_argument("--device", default="vgic-v3", help=f"the device ({', '.join(DEVICES)}; default vgic-v3)")
    en.add_argument("--group", default="DIST_REGS", help="the register group (default DIST_REGS)")
    en.add_argument("--mpidr", type=_int, help="GICv3 REDIST_REGS/CPU_SYSREGS: the vCPU's MPIDR_EL1")
    en.add_argument("--vcpu", type=_int, help="GICv2 DIST_REGS/CPU_REGS: the vCPU index")
    sn = command("snapshot", "show or diff saved GIC documents (kvmdev.devices.gicstate)")
    sn.add_argument("action", choices=["show", "diff"], help="show FILE...: the registers; diff A B: what differs")
    sn.add_argument("files", nargs="+", metavar="FILE", help="kvmdev.gic JSON documents (- for stdin)")
    sn.add_argument("--ignore-checksum", action="store_true",
                    help="show or diff a document whose sha256 does not match (an edited one); warns on stderr")
    return p


def _given(args: argparse.Namespace, *names: str) -> list[str]:
    return [f"--{n}" for n in names if getattr(args, n, None) not in (None, False)]


def _check_applies(args: argparse.Namespace) -> None:
    """An option given to a command it does not apply to is a usage error."""
    if args.cmd != "probe":
        extra = _given(args, "backend", "arch", "kernel") + ([] if args.cmd == "decode" else _given(args, "gic"))
        if extra:
            raise UsageError(f"{' '.join(extra)}: {args.cmd} does not open a KVM (only probe does)")
    if args.cmd == "decode":
        if args.what == "attr":
            if args.gic is not None:
                raise UsageError("--gic: decode attr takes the GIC from --device (vgic-v2, vgic-v3)")
        elif _given(args, "device", "group"):
            raise UsageError(f"{' '.join(_given(args, 'device', 'group'))}: only for 'decode attr' "
                             f"(decode {args.what} names the register)")
    if args.cmd == "probe" and (args.kernel is not None or args.gic is not None):
        backend = args.backend or os.environ.get("KVMDEV_BACKEND") or "auto"
        if backend == "real":
            raise UsageError(f"{' '.join(_given(args, 'kernel', 'gic'))}: choose a mock profile; the real "
                             f"backend is this host's kernel ({os.uname().release})")


def _open(args: argparse.Namespace) -> Kvm:
    host = {k: v for k, v in (("kernel", args.kernel), ("gic", args.gic)) if v is not None}
    return kvm_open(args.backend, arch=args.arch, **host)


def _read_document(path: str, ignore_checksum: bool) -> dict[str, Any]:
    """A kvmdev.gic document from a file (bounded read, checked shape and
    sha256); InputError naming the file otherwise."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InputError(f"{path}: larger than {MAX_DOCUMENT_BYTES >> 20} MiB: not a kvmdev.gic document")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply: not a {gicstate.FORMAT} document") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not text (UTF-8): {e.reason} at byte {e.start}") from None
    except ValueError as e:
        ended = getattr(e, "pos", -1) >= len(data.rstrip()) or str(getattr(e, "msg", "")).startswith("Unterminated")
        truncated = " (truncated?)" if ended else ""
        raise InputError(f"{path}: not valid JSON{truncated}: {e}") from None
    problem = _document_problem(doc)
    if problem:
        raise InputError(f"{path}: not a {gicstate.FORMAT} document: {problem}")
    if doc.get("sha256") != gicstate._digest(doc):
        msg = (f"{path}: the sha256 does not match the content: the document was altered or corrupted "
               "(gicstate.seal() re-signs a deliberate edit)")
        if not ignore_checksum:
            raise InputError(msg + "; --ignore-checksum shows it anyway")
        print(f"kvmdev: warning: {msg}", file=sys.stderr)
    return gicstate.GicDocument(doc)


def _is_regs(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                       for k, v in x.items())


def _document_problem(doc: Any) -> str | None:
    """What makes ``doc`` not a document shown/diffed here (None: fine)."""
    if not isinstance(doc, dict):
        return f"the top level is a JSON {_json_kind(doc)}, not an object"
    if doc.get("format") != gicstate.FORMAT:
        return f"format is {doc.get('format')!r}, not {gicstate.FORMAT!r}"
    for key in ("version", "gic", "nr_irqs"):
        if not isinstance(doc.get(key), int) or isinstance(doc.get(key), bool):
            return f"{key} is {_json_kind(doc.get(key))}, not an integer"
    if not isinstance(doc.get("sha256"), str):
        return "no sha256"
    if not _is_regs(doc.get("dist")):
        return "dist is not an object of register: integer"
    vcpus = doc.get("vcpus")
    if not isinstance(vcpus, dict):
        return "vcpus is not an object"
    for key, entry in vcpus.items():
        if not isinstance(entry, dict):
            return f"vcpus[{key!r}] is not an object"
        for part, v in entry.items():
            if not (_is_regs(v) or isinstance(v, int) and not isinstance(v, bool)):
                return f"vcpus[{key!r}].{part} is neither an integer nor an object of register: integer"
    its = doc.get("its", [])
    if not isinstance(its, list) or not all(isinstance(i, dict) and _is_regs(i.get("regs", {}))
                                            and all(_scalar(v) for k, v in i.items() if k != "regs")
                                            for i in its):
        return "its is not a list of ITS states"
    memory = doc.get("memory", [])
    if not isinstance(memory, list) or not all(
            isinstance(m, dict) and isinstance(m.get("what"), str) and isinstance(m.get("gpa"), int)
            and isinstance(m.get("size"), int) for m in memory):
        return "memory is not a list of {what, gpa, size}"
    other = [k for k, v in doc.items() if k not in ("dist", "vcpus", "its", "memory") and not _scalar(v)]
    if other:
        return f"{other[0]} is not a plain value"
    return None


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float))


def _json_kind(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (see the module doc)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name in _GLOBAL:
        if not hasattr(args, name):
            setattr(args, name, None if name != "json" else False)
    try:
        rc = _run(args)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, as a tool killed by SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    except InputError as e:
        return _fail(str(e), EXIT_INPUT)
    except KvmError as e:
        return _fail(str(e), EXIT_KVM)
    except (ValueError, KeyError, TypeError) as e:   # a bad argument value (UnknownNameError included)
        return _fail(str(e) if not isinstance(e, KeyError) or isinstance(e, UnknownNameError)
                     else str(e.args[0]), EXIT_USAGE)


def _fail(msg: str, rc: int) -> int:
    print(f"kvmdev: {msg}", file=sys.stderr)
    return rc


def _run(args: argparse.Namespace) -> int:
    _check_applies(args)
    emit: Callable[[Any], None] = (lambda o: print(json.dumps(o, indent=1))) if args.json else (lambda o: None)
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
            d = decode_attr(args.device or "vgic-v3", args.group or "DIST_REGS", args.value)
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
        if args.action == "diff" and len(args.files) != 2:
            raise UsageError(f"snapshot diff takes two files, not {len(args.files)}")
        docs = [_read_document(f, args.ignore_checksum) for f in args.files]
        if args.action == "show":
            for doc in docs:
                emit(doc) if args.json else _show(doc)
        else:
            lines = gicstate.diff(docs[0], docs[1])
            emit(lines) if args.json else print("\n".join(lines) or "no difference")
            return EXIT_DIFFERENT if lines else EXIT_OK
    return EXIT_OK


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
