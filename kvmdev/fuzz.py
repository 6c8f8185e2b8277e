"""Random device-attribute traffic, for fuzzing kvmdev and for comparing the mock
with a real kernel (``make fuzz``; tests/test_fuzz.py).

A *case* is a device type and a list of operations; each operation is one
KVM_{HAS,GET,SET}_DEVICE_ATTR on the device, the VM or vCPU 0 (mostly the
table's groups and attributes, sometimes random ones), a typed register access,
or a second KVM_CREATE_DEVICE.  Every buffer is kvmdev's own (no random
pointers: the kernel must never write where we did not ask).  ``run()`` returns
each operation's *outcome* (0 or the errno name, and what a GET read), so a
case run on the real kernel and on the mock can be compared (``differ()``), and
a diverging case shrunk to the operations that matter (``shrink()``).

Invariants checked on every operation: no exception but KvmError and, before
any ioctl, ValueError/TypeError; no KVM fd left open after the case.
"""
from __future__ import annotations

import json
import mmap
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ClosedError, KvmError
from .fd import Kvm
from .devices.xics import Xics

Op = tuple   # ("attr", target, ioctl, group, attr, value) | ("reg", frame, name, value) | ("create",)
IOCTLS = ("KVM_HAS_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR")
BUF = 4200                          # the widest table entry (s390's CPU machine model: 4112 bytes)


@dataclass
class Case:
    device: str
    ops: list[Op] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"device": self.device, "ops": self.ops})

    @classmethod
    def loads(cls, text: str) -> "Case":
        d = json.loads(text)
        return cls(d["device"], [tuple(o) for o in d["ops"]])


# the pseudo-device of the VM- and vCPU-level ioctls (x86): memslots, vCPU creation,
# CHECK_EXTENSION, ENABLE_CAP, ONE_REG, IRQ_LINE, SIGNAL_MSI with random arguments
IOCTLS_CASE = "KVM_IOCTLS"
MAP_PAGES = 16                      # the case's own memory for memslots (a mmap per run)


def _machine(kvm: Kvm, device: str) -> tuple[Any, dict[str, Any]]:
    """A VM (vCPU 0, and on arm64 and powerpc vCPU 1, initialized) with the device
    created; an XICS gets both vCPUs connected (PAPR mode, servers 0 and 1), so
    sources can reach ICPs."""
    if device == IOCTLS_CASE:
        vm = kvm.create_vm()
        return vm, {"vm": vm, "vcpu": vm.create_vcpu(0), "kvm": kvm}
    vm = kvm.create_vm()
    cpus = [vm.create_vcpu(i) for i in range(2 if kvm.arch in ("arm64", "powerpc") else 1)]
    if kvm.arch == "arm64":
        for c in cpus:
            c.vcpu_init(["PSCI_0_2", "PMU_V3"])
    dev = vm.create_device(device)
    if isinstance(dev, Xics):
        for c in cpus:
            c.enable_cap("KVM_CAP_PPC_PAPR")
            dev.connect(c)
    return vm, {"dev": dev, "vm": vm, "vcpu": cpus[0]}


# XICS "reg" operations: source words and vCPU 0's ICP state, from values that
# meet (source numbers of two ICS blocks, the connected servers, priorities
# around each other) so that deliveries, rejections and resends happen
XICS_SOURCES = [str(n) for n in (*range(16, 28), 1040, 3000)]


def _xics_value(label: str, rng: random.Random) -> int:
    if label == "icp":
        return (rng.choice([0, 3, 5, 0xFF]) << 56 | rng.choice([0, 0, 2, 16, 20, 1040, 5000]) << 32
                | rng.choice([3, 5, 0xFF, 0xFF]) << 24 | rng.choice([3, 4, 5, 0xFF, 0xFF]) << 16)
    flags = sum(1 << b for b in range(40, 45) if rng.random() < 0.3)
    return rng.choice([0, 1, 1, 7]) | rng.choice([0, 2, 4, 5, 6, 0xFF]) << 32 | flags


# values for the typed path: of the right kind or not (JSON data, so cases can be kept)
TYPED_VALUES: list[Any] = [0, 1, -1, 1 << 64, 1.5, "0x1", None, True, [1, 2], {"bogus": 1}, {}]


def _ioctl_ops(kvm: Kvm, n: int, rng: random.Random) -> Case:
    """Random VM/vCPU ioctls with random arguments, among values where the kernel's
    limits lie.  ENABLE_CAP: capabilities the host's record does not enable (any
    args), or flags != 0 (the enabled ones change the VM in ways the mock does not model)."""
    from .backends.mock.x86_hosts import DEFAULT_RELEASE, x86_host
    rec = x86_host(kvm.kernel_release) or x86_host(DEFAULT_RELEASE)   # fuzz main records an unknown host
    assert rec is not None
    top = rec.max_gpa_bits
    case = Case(IOCTLS_CASE)
    u64 = (1 << 64) - 1
    for _ in range(n):
        kind = rng.choice(["memslot"] * 4 + ["vcpu", "cap", "enable", "onereg", "onereg", "irq", "msi", "mp"])
        if kind == "memslot":
            gpa = rng.choice([0, 0x1000, 0x10000, 1 << 32, (1 << top) - 0x1000, 1 << top, (1 << 64) - 0x2000,
                              rng.getrandbits(40) << 12, rng.getrandbits(64), 0x800])
            # sizes the kernel accepts stay small: it allocates per-page metadata (rmap,
            # dirty bitmap) for a slot; the huge ones are refused before (KVM_MEM_MAX_NR_PAGES)
            size = rng.choice([0, 0x1000, 0x2000, MAP_PAGES * 0x1000, 1 << 43, 1 << 50, 0x800,
                               rng.getrandbits(12) << 12, rng.getrandbits(64) | 1 << 63])
            uaddr = rng.choice([("buf", rng.randrange(MAP_PAGES) * 0x1000), ("buf", 0x10), ("abs", 0),
                                ("abs", 0xFFFF800000000000), ("abs", rec.user_addr_max - 0x1000),
                                ("abs", rec.user_addr_max), ("abs", rng.getrandbits(64))])
            flags = rng.choice([0, 0, 1, 2, 3, 4, rng.getrandbits(32)])
            slot = rng.choice([0, 1, 2, 3, 0x10000, 32763, 32764, rng.getrandbits(32)])
            if rng.random() < 0.5:       # plausible: create, move, resize, flag and delete slots
                slot, flags = rng.randrange(4), rng.choice([0, 0, 1, 2, 3])
                gpa = rng.choice([0, 0x1000, 0x4000, 0x8000, 0x10000, (1 << top) - 0x2000])
                size = rng.choice([0, 0x1000, 0x2000, 0x4000])
                uaddr = ("buf", rng.choice([0, 0x1000, 0x4000, 0x8000]))
            case.ops.append(("memslot", slot, flags, gpa, size, uaddr[0], uaddr[1]))
        elif kind == "vcpu":
            case.ops.append(("vcpu", rng.choice([1, 2, 3, 4095, 4096, 1 << 31, 1 << 32 | 1, u64, rng.getrandbits(64)])))
        elif kind == "cap":
            case.ops.append(("cap", rng.choice(["kvm", "vm"]), rng.choice([rng.randrange(300), rng.getrandbits(64)])))
        elif kind == "enable":
            target = rng.choice(["vm", "vcpu"])
            enabled = rec.enable_cap_vm if target == "vm" else rec.enable_cap_vcpu
            cap = rng.choice([c for c in range(300) if c not in enabled] + [rng.getrandbits(32)])
            flags = 0
            if rng.random() < 0.2:
                cap, flags = rng.choice(sorted(enabled) or [0]), rng.choice([1, 2, 1 << 31])
            args = [rng.choice([0, 0, 1, rng.getrandbits(64)]) for _ in range(4)]
            case.ops.append(("enable", target, cap, flags, args))
        elif kind == "onereg":
            lo, hi = rng.choice(rec.one_reg_msrs)
            rid = rng.choice([0x2030000200000000 | rng.randint(lo, hi), 0x2030000200000000 | rng.getrandbits(32),
                              0x2030000300000000 | rng.getrandbits(2), 0x2020000200000000 | lo,
                              0x2030000000000000 | rng.getrandbits(32), rng.getrandbits(64) & ~(0xF << 52) | 3 << 52])
            case.ops.append(("onereg", rid))
        elif kind == "mp":    # KVM_SET_MP_STATE then KVM_GET_MP_STATE
            case.ops.append(("mp", rng.choice([0, 1, 2, 3, 4, 5, 9, 10, rng.getrandbits(32)])))
        elif kind == "irq":
            case.ops.append(("irq", rng.choice([0, 1, 15, 16, 23, 24, rng.getrandbits(32)]), rng.choice([0, 1, 2])))
        else:
            case.ops.append(("msi", rng.choice([0xFEE00000, 0, rng.getrandbits(64)]), rng.getrandbits(32),
                             rng.choice([None, 0, rng.getrandbits(32)])))
    return case


def _ioctl_op(targets: dict[str, Any], op: Op, mem: int) -> str:
    """One operation of an IOCTLS_CASE; its outcome (errors are the caller's)."""
    vm, cpu = targets["vm"], targets["vcpu"]
    if op[0] == "memslot":
        _, slot, flags, gpa, size, where, uaddr = op
        vm.set_user_memory_region(slot, gpa, size, (mem + uaddr) if where == "buf" else uaddr, flags)
        return "ok"
    if op[0] == "vcpu":
        vm.create_vcpu(op[1]).close()         # the vCPU stays in the VM, its fd goes
        return "ok"
    if op[0] == "cap":
        return f"ok {(targets[op[1]]).check_extension(op[2])}"
    if op[0] == "enable":
        _, target, cap, flags, args = op
        return f"ok {targets[target].enable_cap(cap, *args, flags=flags)}"
    if op[0] == "onereg":
        cpu.get_one_reg(op[1])                # the value is vCPU state (a TSC...): the answer only
        return "ok"
    if op[0] == "irq":
        vm.irq_line(op[1], op[2])
        return "ok"
    if op[0] == "mp":
        cpu.mp_state = op[1]
        return f"ok {cpu.mp_state}"
    _, address, data, devid = op
    return f"ok {vm.signal_msi(address, data, devid)}"


def _oopses_on_save(kvm: Kvm, device: str) -> bool:
    """Whether this kernel oopses on ITS SAVE_TABLES of an ITE whose collection is
    gone (6.18.15: vgic_its_save_ite dereferences NULL; kernel_facts).  Its ITS cases
    then never ask for SAVE_TABLES at all: a case cannot tell whether its commands
    left such an ITE, and the oops would kill the fuzzer and taint the kernel."""
    if device != "ARM_VGIC_ITS" or kvm.arch != "arm64":
        return False
    from .backends.mock.kernel_facts import fact   # data only; imported here to keep fuzz light
    try:
        return bool(fact("its_save_ite_no_collection_oopses", record_key(kvm)))
    except ValueError:      # a release that names no series: assume the worst
        return True


def _is_save_tables(op: Op) -> bool:
    """An op asking an ITS for KVM_DEV_ARM_ITS_SAVE_TABLES (CTRL group 4, attr 1)."""
    if op[0] == "typed":
        return op[2] == "KVM_DEV_ARM_VGIC_GRP_CTRL" and op[3] == "KVM_DEV_ARM_ITS_SAVE_TABLES" and op[5] == "set"
    return op[0] == "attr" and op[1] == "dev" and op[2] == "KVM_SET_DEVICE_ATTR" and op[3] == 4 and op[4] == 1


def generate(kvm: Kvm, device: str, n: int, rng: random.Random) -> Case:
    """A random case of ``n`` operations against this KVM's tables (never an ITS
    SAVE_TABLES on a kernel where it can oops)."""
    case = _generate(kvm, device, n, rng)
    if _oopses_on_save(kvm, device):
        case.ops = [op for op in case.ops if not _is_save_tables(op)]
    return case


def _generate(kvm: Kvm, device: str, n: int, rng: random.Random) -> Case:
    if device == IOCTLS_CASE:
        return _ioctl_ops(kvm, n, rng)
    vm, targets = _machine(kvm, device)
    tables = {name: t.attr_table for name, t in targets.items()}
    frames = _frames(targets["dev"], targets["vcpu"])
    vm.close()
    case = Case(device)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.02:
            case.ops.append(("create",))
            continue
        if roll < 0.10:     # the typed path: a named attribute, a value of any kind
            target = rng.choices(["dev", "vm", "vcpu"], [6, 1, 2])[0]
            by_name = [(t.group_name(g), spec.name) for t in [tables[target]] for g, attrs in t.attrs.items()
                       for spec in attrs.values()]
            if by_name:
                g_name, a_name = rng.choice(by_name)
                how = rng.choice(["get", "set", "set"])
                tv = rng.choice(TYPED_VALUES + [rng.getrandbits(rng.choice([8, 32, 64]))])
                case.ops.append(("typed", target, g_name, a_name, tv, how))
                continue
        if frames and roll < 0.35:
            label = rng.choice(sorted(frames))
            names = frames[label]
            name = rng.choice(names)
            if device == "XICS":
                value = _xics_value(label, rng)
            else:
                value = rng.choice([0, 1, 0xFFFFFFFF, rng.getrandbits(32), rng.getrandbits(64)])
            case.ops.append(("reg", label, name, value if rng.random() < 0.6 else None))
            continue
        target = rng.choices(["dev", "vm", "vcpu"], [6, 1, 2])[0]
        t = tables[target]
        groups = list(t.groups)
        if groups and rng.random() < 0.8:
            g = rng.choice(groups)
            named = list(t.attrs.get(g, {}))
            if named and rng.random() < 0.8:
                a = rng.choice(named)
            else:
                a = rng.choice([0, 1, 2, 8, 0x80, 0x100, 0x10000, rng.getrandbits(16), rng.getrandbits(64)])
        else:
            g, a = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99, rng.getrandbits(32)]), rng.getrandbits(8)
        ioctl = rng.choice(IOCTLS)
        value = rng.getrandbits(64) if rng.random() < 0.7 else rng.choice([0, 1, 0x8000000000000000])
        case.ops.append(("attr", target, ioctl, g, a, value))
    return case


def _frames(dev: Any, vcpu: Any) -> dict[str, list[str]]:
    """Typed register frames of the device (names per frame), for "reg" operations."""
    from .devices.its import Its
    from .devices.vgic import VgicV2, VgicV3
    from .devices.xics import Xics
    out: dict[str, list[str]] = {}
    if isinstance(dev, Xics):
        out = {"source": XICS_SOURCES, "icp": ["ICP_STATE"]}
    elif isinstance(dev, VgicV3):
        out = {"dist": list(dev.dist.frame.names()), "redist": list(dev.redist(vcpu).frame.names())}
    elif isinstance(dev, VgicV2):
        out = {"dist": list(dev.dist.frame.names()), "cpu": list(dev.cpu(vcpu).frame.names())}
    elif isinstance(dev, Its):
        out = {"its": list(dev.regs.frame.names())}
    return out


def _regs(dev: Any, vcpu: Any, label: str) -> Any:
    return {"dist": lambda: dev.dist, "redist": lambda: dev.redist(vcpu), "cpu": lambda: dev.cpu(vcpu),
            "its": lambda: dev.regs}[label]()


def _xics_op(dev: Any, vcpu: Any, label: str, name: str, value: int | None) -> str:
    """A typed XICS access: a source word (Xics.source/set_source) or vCPU 0's
    ICP state (Xics.icp/set_icp); the outcome as run() reports it."""
    from .devices.xics import IcpState, XicsSource
    if label == "icp":
        if value is None:
            return f"ok {dev.icp(vcpu).encode():#x}"
        dev.set_icp(vcpu, IcpState.decode(value))
        return "ok"
    if value is None:
        return f"ok {dev.source(int(name)).encode():#x}"
    dev.set_source(int(name), XicsSource.decode(value))
    return "ok"


def _typed_op(t: Any, group: str, attr: str, value: Any, how: str) -> str:
    """get_attr/set_attr by name; a ValueError or TypeError must come before any
    ioctl (counted at the target's one C entry point) and say what is wrong."""
    calls: list[int] = []
    entry = t._attr_fn

    def counted(*a: Any) -> Any:
        calls.append(1)
        return entry(*a)

    t._attr_fn = counted
    try:
        r = t.get_attr(group, attr) if how == "get" else t.set_attr(group, attr, value)
    except (ValueError, TypeError) as e:
        if calls and not isinstance(e, ClosedError):
            raise InvariantBroken(f"{type(e).__name__} after the ioctl: {e}") from e
        if not str(e):
            raise InvariantBroken(f"{type(e).__name__} without a message") from e
        raise
    finally:
        t._attr_fn = entry
    if isinstance(r, int):
        return f"ok {r:#x}"
    if isinstance(r, (bytes, bytearray)):
        return f"ok {bytes(r).hex()}"
    return "ok"         # a struct (or no payload): its address would differ between runs


def _fds(kinds: tuple[str, ...] = ("anon_inode:kvm", "anon_inode:[eventfd]")) -> set[str]:
    """This process's fds of the given kinds (readlink prefixes), as "fd:target"."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if t.startswith(kinds):
            out.add(f"{fd}:{t}")
    return out


class InvariantBroken(AssertionError):
    pass


def run(kvm: Kvm, case: Case) -> list[str]:
    """Run a case on a fresh VM; each operation's outcome as text ("ok", "ok <hex>",
    an errno name, "refused: <ValueError/TypeError>").  Raises InvariantBroken if
    anything else goes wrong or a KVM fd outlives the case."""
    before = _fds()
    vm, targets = _machine(kvm, case.device)
    out: list[str] = []
    ffi = kvm._arch.ffi
    buf = ffi.new("unsigned char[]", BUF)
    addr = int(ffi.cast("uintptr_t", buf))
    mem_map = mmap.mmap(-1, MAP_PAGES * 0x1000) if case.device == IOCTLS_CASE else None
    mem = int(ffi.cast("uintptr_t", ffi.from_buffer(mem_map))) if mem_map is not None else 0
    no_save = _oopses_on_save(kvm, case.device)
    try:
        for i, op in enumerate(case.ops):
            try:
                if no_save and _is_save_tables(op):   # a replayed case: never on a kernel it can oops
                    out.append("not run: SAVE_TABLES can oops this kernel")
                elif case.device == IOCTLS_CASE:
                    out.append(_ioctl_op(targets, op, mem))
                elif op[0] == "create":
                    vm.create_device(case.device).close()
                    out.append("ok")
                elif op[0] == "typed":
                    out.append(_typed_op(targets[op[1]], op[2], op[3], op[4], op[5]))
                elif op[0] == "reg" and case.device == "XICS":
                    _, label, name, value = op
                    out.append(_xics_op(targets["dev"], targets["vcpu"], label, name, value))
                elif op[0] == "reg":
                    _, label, name, value = op
                    regs = _regs(targets["dev"], targets["vcpu"], label)
                    if value is None:
                        out.append(f"ok {int(regs[name]):#x}")
                    else:
                        width = regs.frame.lookup(name)[0].width
                        regs[name] = value & ((1 << width) - 1)
                        out.append("ok")
                else:
                    _, target, ioctl, g, a, value = op
                    ffi.memmove(buf, int(value).to_bytes(8, "little") + bytes(BUF - 8), BUF)
                    r = targets[target].attr_ioctl(ioctl, g, a, addr)
                    got = bytes(ffi.buffer(buf, 8)) if ioctl == "KVM_GET_DEVICE_ATTR" else b""
                    out.append(f"ok {r} {got.hex()}".rstrip())
            except KvmError as e:
                out.append(e.errno_name)
            except ClosedError:             # before ValueError: it is one
                out.append("closed")
            except (ValueError, TypeError) as e:
                out.append(f"refused: {type(e).__name__}")
            except Exception as e:   # noqa: BLE001 - the invariant under test
                raise InvariantBroken(f"op {i} {op!r}: {type(e).__name__}: {e}") from e
    finally:
        vm.close()
    leaked = _fds() - before
    if leaked:
        raise InvariantBroken(f"{case.device}: KVM fds left open after the case: {sorted(leaked)}")
    return out


def differ(real: Kvm, mock: Kvm, case: Case) -> int | None:
    """The index of the first operation whose outcome differs, or None."""
    a, b = run(real, case), run(mock, case)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def shrink(case: Case, still_fails: Callable[[Case], bool]) -> Case:
    """Fewer operations that still fail: cut after the failing one, then drop
    earlier operations one at a time while it still fails."""
    ops = list(case.ops)
    i = 0
    while i < len(ops):
        trial = Case(case.device, ops[:i] + ops[i + 1:])
        if trial.ops and still_fails(trial):
            ops = trial.ops
        else:
            i += 1
    return Case(case.device, ops)


def devices(kvm: Kvm) -> list[str]:
    """The device types this KVM can create (one VM asked with the TEST flag)."""
    from .arch import DeviceType
    vm = kvm.create_vm()
    if kvm.arch == "arm64":   # a VGIC may need vCPUs to exist
        vm.create_vcpu(0).vcpu_init(["PSCI_0_2"])
    types = [t.name for t in DeviceType if vm.supports_device(t)]
    vm.close()
    return types


def record_key(kvm: Kvm) -> str:
    """The kernel series a recorded outcome belongs to ("6.12", "6.1")."""
    return ".".join(kvm.kernel_release.split(".")[:2])


def _record(kvm: Kvm, path: str, gic: int | None) -> int:
    types = set(devices(kvm))
    with open(path) as f:
        cases = [Case.loads(line) for line in f if line.strip()]
    for case in cases:
        if case.device in types:
            print("RECORD " + json.dumps({"device": case.device, "ops": case.ops, "arch": kvm.arch,
                                          "kernel": record_key(kvm), "gic": gic, "release": kvm.kernel_release,
                                          "outcomes": run(kvm, case)}))
    kvm.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """python -m kvmdev.fuzz: OPS random operations per device type (cases of
    --case-len), on one backend; --differential also runs every case on the mock
    of the same kernel and GIC and reports each divergence, shrunk, as JSON."""
    import argparse
    import time

    from . import open as kvm_open
    ap = argparse.ArgumentParser(prog="python -m kvmdev.fuzz", description=main.__doc__)
    ap.add_argument("--backend", default="mock")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--kernel", default=None, help="mock (and --differential's mock): kernel series")
    ap.add_argument("--gic", type=int, default=None, help="mock (and --differential's mock): host GIC")
    ap.add_argument("--ppc-platform", default=None, help="powerpc mock: book3s (XICS) or e500 (MPIC)")
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--case-len", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--differential", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated device types (KVM_IOCTLS: the x86 VM/vCPU ioctls)")
    ap.add_argument("--corpus", default=None,
                    help="write each diverging case, with the real kernel's outcomes, to this directory (- : stdout)")
    ap.add_argument("--record", default=None, metavar="JSONL",
                    help="no fuzzing: run each case of this corpus file this KVM can run and print it, "
                         "tagged with the kernel and GIC, with its outcomes, as a RECORD line")
    args = ap.parse_args(argv)
    if args.record:
        return _record(kvm_open(args.backend, arch=args.arch), args.record, args.gic)
    host: dict[str, Any] = {k: v for k, v in (("kernel", args.kernel), ("gic", args.gic), ("ppc_platform", args.ppc_platform))
            if v is not None}
    kvm = kvm_open(args.backend, arch=args.arch, **(host if args.backend == "mock" else {}))
    if kvm.arch == "x86_64" and args.backend == "real":     # the mock of this x86 host
        from .backends.mock.host import x86_tsc_pinned
        from .backends.mock.x86_hosts import X86_HOSTS, ensure
        host["x86_tsc_pinned"] = x86_tsc_pinned(kvm.kernel_release)
        if args.differential:
            if kvm.kernel_release not in X86_HOSTS:
                print(f"x86 host {kvm.kernel_release} has no record in x86_hosts: recorded now "
                      f"(tools/record_x86_host.py prints it for the table)")
            host["x86_release"] = ensure(kvm)
    mock = kvm_open("mock", arch=kvm.arch, **host) if args.differential else None
    rng = random.Random(args.seed)
    failures, divergences = 0, 0
    kinds = devices(kvm) + ([IOCTLS_CASE] if kvm.arch == "x86_64" else [])
    if args.only:
        kinds = [k for k in kinds if k in args.only.split(",")]
    for device in kinds:
        t0, done, cases = time.monotonic(), 0, 0
        seen: set[tuple[str, str, str, str]] = set()
        while done < args.ops:
            case = generate(kvm, device, min(args.case_len, args.ops - done), rng)
            try:
                run(kvm, case)
            except InvariantBroken as e:
                failures += 1
                print(f"INVARIANT {device}: {e}\n  case: {case.dumps()}")
            if mock is not None:
                i = differ(kvm, mock, case)
                if i is not None:
                    small = shrink(Case(device, case.ops[:i + 1]), lambda c: differ(kvm, mock, c) is not None)
                    j = differ(kvm, mock, small) or 0
                    ra, rb = run(kvm, small), run(mock, small)
                    last = small.ops[j]
                    # one report per kind: where (target, ioctl or frame) and the two answers
                    key = (device, json.dumps(last[1:3]), ra[j].split()[0], rb[j].split()[0])
                    if key not in seen:
                        seen.add(key)
                        divergences += 1
                        print(f"DIVERGENCE {device}: real {ra[j]!r} mock {rb[j]!r} at op {small.ops[j]!r}\n"
                              f"  case: {small.dumps()}")
                        if args.corpus:
                            series = ".".join(kvm.kernel_release.split(".")[:2])
                            record = json.dumps({"device": device, "ops": small.ops, "kernel": series,
                                                 "gic": args.gic, "release": kvm.kernel_release, "real": ra})
                            if args.corpus == "-":
                                print("CORPUS " + record)
                            else:
                                os.makedirs(args.corpus, exist_ok=True)
                                name = f"{series}-gic{args.gic}-{device}-{len(seen)}-{args.seed}.json"
                                with open(os.path.join(args.corpus, name), "w") as f:
                                    f.write(record)
            done += len(case.ops)
            cases += 1
        print(f"{kvm.backend} {kvm.arch} {kvm.kernel_release} {device}: {done} operations in {cases} cases, "
              f"{time.monotonic() - t0:.1f} s")
    print(f"invariant failures: {failures}" + (f", divergences from the mock: {divergences}" if mock else ""))
    kvm.close()
    if mock is not None:
        mock.close()
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
