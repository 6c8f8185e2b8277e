"""cdefs/ checked against the kernel's own uapi headers, one architecture at a time.

For each architecture, one generated C file includes that architecture's real
<linux/kvm.h> (linux-libc-dev 6.1: native, or Debian's -cross package) and
turns every value under test into a labelled 64-bit constant; host gcc compiles
it to assembly (-S), which is parsed back.  Nothing is compared with a copy of
kvmdev's own numbers:

* every ``#define`` of ``cdefs.build.declarations(arch)`` against the header's
  macro of the same name;
* every struct of those declarations: sizeof, and offsetof and sizeof of each
  field, against cffi's layout in the compiled ``kvmdev._kvm_<arch>``;
* every ioctl of ``get_arch(arch).ioctls`` against the header's request macro,
  which checks kvmdev's own _IOC encoding (powerpc's included).

Each check runs twice per architecture: against the host's linux-libc-dev (6.1)
and against the newest Debian uapi headers (linux-libc-dev from trixie-backports,
7.3 today), which tools/guests/uapi-headers.sh extracts to the guests' cache
(~/.cache/arm64kvm/uapi/<version>; KVMDEV_NEWEST_UAPI names another directory).
A name the 6.1 headers lack is checked against the newest ones instead.
"""
from __future__ import annotations

import importlib.util
import re
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kvmdev.arch import Arch, get_arch, host_arch_name

ROOT = Path(__file__).resolve().parent.parent
U64 = (1 << 64) - 1

# cdefs/ is the checkout's, not the installed package's
pytestmark = pytest.mark.source_tree
if not (ROOT / "cdefs" / "build.py").exists():
    pytest.skip(f"source_tree: needs the checkout's cdefs/ (not in {ROOT}); runs in the in-tree run",
                allow_module_level=True)


def _load_build() -> ModuleType:
    # cdefs/ is not a package; load build.py by path so this works from any cwd.
    spec = importlib.util.spec_from_file_location("_kvmdev_cdefs_build", ROOT / "cdefs" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _load_build()
ARCHES: tuple[str, ...] = tuple(BUILD.ARCHES)

# Names in cdefs/ that linux-libc-dev 6.1 does not define yet, with where they
# come from.  Their values cannot be checked here.  So that the list cannot go
# stale, test_allow_listed_names_are_absent fails once the headers define one
# of them, and test_allow_list_is_current once cdefs/ no longer declares it.
NEWER_THAN_HEADERS: dict[str, str] = {
    "KVM_DEV_TYPE_RISCV_AIA": "v6.5, include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_DEV_TYPE_LOONGARCH_IPI": "v6.15, include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_DEV_TYPE_LOONGARCH_EIOINTC": "v6.15, include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_DEV_TYPE_LOONGARCH_PCHPIC": "v6.15, include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_DEV_TYPE_LOONGARCH_DMSINTC": "newest include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_S390_VM_CPU_PROCESSOR_UV_FEAT_GUEST": "v6.6, arch/s390/include/uapi/asm/kvm.h",
    "KVM_S390_VM_CPU_MACHINE_UV_FEAT_GUEST": "v6.6, arch/s390/include/uapi/asm/kvm.h",
    "KVM_DEV_ARM_VGIC_USERSPACE_PPIS": "newest arch/arm64/include/uapi/asm/kvm.h (VGIC v5)",
    "KVM_ARM_VCPU_TIMER_IRQ_HVTIMER": "v6.4, arch/arm64/include/uapi/asm/kvm.h",
    "KVM_ARM_VCPU_TIMER_IRQ_HPTIMER": "v6.4, arch/arm64/include/uapi/asm/kvm.h",
    "KVM_DEV_TYPE_ARM_VGIC_V5": "KVM arm64 vGICv5 (newest, per cdefs/kvm_common.h), "
                                "include/uapi/linux/kvm.h enum kvm_device_type",
    "KVM_DEV_VFIO_FILE": "v6.6, include/uapi/linux/kvm.h (renames KVM_DEV_VFIO_GROUP)",
    "KVM_DEV_VFIO_FILE_ADD": "v6.6, include/uapi/linux/kvm.h (renames KVM_DEV_VFIO_GROUP_ADD)",
    "KVM_DEV_VFIO_FILE_DEL": "v6.6, include/uapi/linux/kvm.h (renames KVM_DEV_VFIO_GROUP_DEL)",
    "KVM_X86_GRP_SYSTEM": "v6.10, arch/x86/include/uapi/asm/kvm.h (SEV VMSA features series)",
    "KVM_X86_GRP_SEV": "v6.10, arch/x86/include/uapi/asm/kvm.h (SEV VMSA features series)",
    "KVM_X86_SEV_VMSA_FEATURES": "v6.10, arch/x86/include/uapi/asm/kvm.h (SEV VMSA features series)",
    # the arm64 SMCCC filter on the VM fd (v6.4, arch/arm64/include/uapi/asm/kvm.h);
    # the actions are an enum there, so never a macro the probe could see
    "KVM_ARM_VM_SMCCC_CTRL": "v6.4, arch/arm64/include/uapi/asm/kvm.h",
    "KVM_ARM_VM_SMCCC_FILTER": "v6.4, arch/arm64/include/uapi/asm/kvm.h",
    "KVM_SMCCC_FILTER_HANDLE": "v6.4, arch/arm64/include/uapi/asm/kvm.h enum kvm_smccc_filter_action",
    "KVM_SMCCC_FILTER_DENY": "v6.4, arch/arm64/include/uapi/asm/kvm.h enum kvm_smccc_filter_action",
    "KVM_SMCCC_FILTER_FWD_TO_USER": "v6.4, arch/arm64/include/uapi/asm/kvm.h enum kvm_smccc_filter_action",
    "struct kvm_smccc_filter": "v6.4, arch/arm64/include/uapi/asm/kvm.h",
}

# Names in cdefs/ that even the newest headers (NEWEST_UAPI) do not define.
NEWER_THAN_NEWEST: dict[str, str] = {
    # enum kvm_smccc_filter_action in asm/kvm.h: never a macro the probe could see
    "KVM_SMCCC_FILTER_HANDLE": "an enum constant in arch/arm64/include/uapi/asm/kvm.h",
    "KVM_SMCCC_FILTER_DENY": "an enum constant in arch/arm64/include/uapi/asm/kvm.h",
    "KVM_SMCCC_FILTER_FWD_TO_USER": "an enum constant in arch/arm64/include/uapi/asm/kvm.h",
}
# Structs whose newest layout differs from 6.1's, which cdefs/ keeps (the 6.1 headers
# are checked field by field); against the newest headers only the size is compared.
NEWEST_LAYOUT_DIFFERS: dict[str, str] = {
    "kvm_s390_vm_cpu_subfunc": "pfcr[16] (STFLE.201) inserted before reserved[], which shrinks to 1712: "
                               "the size (2048) is unchanged",
}


@dataclass(frozen=True)
class Target:
    """Where one architecture's uapi headers live and how to compile against them."""

    triple: str  # Debian multiarch triple of the -cross headers
    cross_package: str
    # The cross headers are compiled with host gcc, which lacks the target's
    # predefines; pass the ones the uapi headers test so they take the 64-bit
    # target's paths (asm/bitsperlong.h, asm/posix_types.h, powerpc asm/types.h).
    # arm64's headers test none.  Layouts come from host gcc's LP64 ABI, which
    # aligns the fixed-width types as all four targets do (see cdefs/build.py).
    defines: tuple[str, ...]


TARGETS: dict[str, Target] = {
    "x86_64": Target("x86_64-linux-gnu", "linux-libc-dev-amd64-cross", ("__x86_64__",)),
    "arm64": Target("aarch64-linux-gnu", "linux-libc-dev-arm64-cross", ()),
    "powerpc": Target("powerpc64-linux-gnu", "linux-libc-dev-ppc64-cross", ("__powerpc64__",)),
    "s390": Target("s390x-linux-gnu", "linux-libc-dev-s390x-cross", ("__s390x__",)),
}


SOURCES = ("libc-dev", "newest")


def _version_key(v: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", v)]


def _newest_uapi() -> Path | None:
    """The newest extracted linux-libc-dev (tools/guests/uapi-headers.sh), or None."""
    env = os.environ.get("KVMDEV_NEWEST_UAPI")
    if env:
        return Path(env)
    cache = Path(os.environ.get("ARM64KVM_CACHE") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arm64kvm")
    found = [d for d in (cache / "uapi").glob("*") if (d / ".complete").is_file()]
    if not found:
        return None
    return max(found, key=lambda d: _version_key((d / "version").read_text()))


def _gcc_flags(arch: str, source: str = "libc-dev") -> tuple[Path, list[str], str]:
    """(include dir, gcc flags, Debian package) for arch's <linux/kvm.h>."""
    if source == "newest":
        root = _newest_uapi()
        inc = (root or Path("/nonexistent")) / "usr" / "include"
        t = TARGETS[arch]
        # linux-libc-dev (all architectures): asm/ under <triple>/, the rest shared
        return inc, ["-nostdinc", "-isystem", str(inc / t.triple), "-isystem", str(inc),
                     *(f"-D{d}" for d in t.defines)], "linux-libc-dev (trixie-backports; tools/guests/uapi-headers.sh)"
    if arch == host_arch_name():
        return Path("/usr/include"), [], "linux-libc-dev"
    t = TARGETS[arch]
    include = Path("/usr") / t.triple / "include"
    # -nostdinc keeps the host's asm/ headers out; the uapi headers need no libc.
    return include, ["-nostdinc", "-isystem", str(include), *(f"-D{d}" for d in t.defines)], t.cross_package


# --- what cdefs/ declares --------------------------------------------------

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+\S", re.M)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{")
_PREFIX_STRUCT = re.compile(r"/\*(?:(?!\*/).)*?kvmdev:prefix(?:(?!\*/).)*?\*/\s*struct\s+(\w+)\s*\{", re.S)


def _declarations(arch: str) -> str:
    return str(BUILD.declarations(arch))


def _define_names(arch: str) -> list[str]:
    return list(dict.fromkeys(_DEFINE.findall(_declarations(arch))))


@dataclass(frozen=True)
class StructDecl:
    name: str
    size: int
    fields: tuple[tuple[str, int, int], ...]  # (name, offset, size) per cffi
    prefix: bool  # kvmdev:prefix: only the head of the kernel's struct is declared


def _struct_decls(arch: Arch) -> list[StructDecl]:
    text = _declarations(arch.name)
    declared = list(dict.fromkeys(_STRUCT.findall(text)))
    prefixes = set(_PREFIX_STRUCT.findall(text))
    in_ffi = set(arch.ffi.list_types()[1])
    missing = [s for s in declared if s not in in_ffi]
    assert not missing, f"{arch.name}: structs in cdefs/ but not in ffi.list_types(): {missing}"
    out = []
    for name in declared:
        ctype: Any = arch.ffi.typeof(f"struct {name}")
        fields = []
        for fname, field in ctype.fields:
            assert fname and field.bitsize == -1, f"{arch.name}: struct {name}: anonymous or bit-field member"
            fields.append((fname, int(field.offset), int(arch.ffi.sizeof(field.type))))
        out.append(StructDecl(name, int(arch.ffi.sizeof(ctype)), tuple(fields), name in prefixes))
    return out


# --- what the kernel headers say ------------------------------------------

def _macro_label(name: str) -> str:
    return f"kvmdev_v_{name}"


def _size_label(struct: str) -> str:
    return f"kvmdev_s_{struct}"


def _offset_label(struct: str, field: str) -> str:
    return f"kvmdev_o_{struct}__{field}"


def _field_size_label(struct: str, field: str) -> str:
    return f"kvmdev_z_{struct}__{field}"


def _probe_source(macros: list[str], structs: list[StructDecl]) -> tuple[str, list[str]]:
    """The C file, and the labels it must always produce (the unguarded ones)."""
    lines = [
        # arm64's uapi asm/kvm.h (6.1) uses the kernel-internal SZ_64K of
        # include/vdso/sizes.h for KVM_VGIC_V3_*_SIZE without defining it.
        "#ifndef SZ_64K",
        "#define SZ_64K 0x00010000",
        "#endif",
        # s390's KVM_S390_NO_MEM_LIMIT is the kernel-internal U64_MAX, likewise.
        "#ifndef U64_MAX",
        "#define U64_MAX (~0ULL)",
        "#endif",
        "#include <linux/kvm.h>",
        "",
    ]
    for m in macros:
        lines += [f"#ifdef {m}",
                  f"const unsigned long long {_macro_label(m)} = (unsigned long long)({m});",
                  "#endif"]
    required = []
    for s in structs:
        items = [(_size_label(s.name), f"sizeof(struct {s.name})")]
        for f, _, _ in s.fields:
            items.append((_offset_label(s.name, f), f"__builtin_offsetof(struct {s.name}, {f})"))
            items.append((_field_size_label(s.name, f), f"sizeof(((struct {s.name} *)0)->{f})"))
        for label, expr in items:
            lines.append(f"const unsigned long long {label} = {expr};")
            required.append(label)
    return "\n".join(lines) + "\n", required


# A label, then its 8-byte value: .quad (x86_64, ppc64, s390x), .xword
# (aarch64), or .zero for a value of 0.
_ASM_VALUE = re.compile(r"^(kvmdev_\w+):[ \t]*\n[ \t]*\.(quad|xword|8byte|zero)[ \t]+(-?\w+)", re.M)


def _parse_asm(asm: str) -> dict[str, int]:
    out = {}
    for label, directive, value in _ASM_VALUE.findall(asm):
        out[label] = 0 if directive == "zero" else int(value, 0) & U64
    return out


@dataclass(frozen=True)
class ArchProbe:
    arch: Arch
    source: str   # "libc-dev" (the host's headers) or "newest"
    header: Path  # the <linux/kvm.h> compiled against, for messages
    defines: list[str]
    structs: list[StructDecl]
    kernel: dict[str, int]  # label -> value from the header

    def macro(self, name: str) -> int | None:
        return self.kernel.get(_macro_label(name))


_PROBES: dict[tuple[str, str], "ArchProbe | str"] = {}


def _compile(name: str, source: str, tmp: Path) -> "ArchProbe | str":
    """The probe of one architecture's headers, or why there is none (cached: the
    host-header checks consult the newest headers' probe too)."""
    if (name, source) in _PROBES:
        return _PROBES[(name, source)]
    include, flags, package = _gcc_flags(name, source)
    header = include / "linux" / "kvm.h"
    result: ArchProbe | str
    gcc = shutil.which("gcc")
    if not header.is_file():
        result = f"{name}: {header} is missing; install the Debian package {package}"
    elif gcc is None:
        result = f"{name}: gcc is not on PATH; it is needed to evaluate {header}"
    else:
        arch = get_arch(name)
        defines = _define_names(name)
        skip = NEWER_THAN_NEWEST if source == "newest" else NEWER_THAN_HEADERS
        structs = [st for st in _struct_decls(arch) if f"struct {st.name}" not in skip]
        macros = list(dict.fromkeys([*defines, *arch.ioctls]))
        code, required = _probe_source(macros, structs)
        c_file = tmp / f"probe-{name}-{source}.c"
        c_file.write_text(code)
        proc = subprocess.run([gcc, "-S", "-O0", "-o", "-", *flags, str(c_file)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{name}: gcc could not evaluate cdefs/ against {header} "
                        f"(a struct or field the header lacks?):\n{proc.stderr}")
        kernel = _parse_asm(proc.stdout)
        unparsed = [label for label in required if label not in kernel]
        assert not unparsed, f"{name}: no value found in gcc's assembly for {len(unparsed)} labels, e.g. {unparsed[:5]}"
        result = ArchProbe(arch, source, header, defines, structs, kernel)
    _PROBES[(name, source)] = result
    return result


def _need(result: "ArchProbe | str") -> ArchProbe:
    if isinstance(result, str):
        # .ci/run installs every header package and runs uapi-headers.sh: a missing one there is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)(result)
    assert isinstance(result, ArchProbe)
    return result


@pytest.fixture(scope="module", params=[(a, src) for src in SOURCES for a in ARCHES],
                ids=[f"{a}-{src}" for src in SOURCES for a in ARCHES])
def probe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ArchProbe:
    """Compile every probe of one architecture and header set in a single gcc run
    (module-scoped, so the checks of that architecture share it; hence tmp_path_factory)."""
    name, source = request.param
    return _need(_compile(name, source, tmp_path_factory.mktemp(f"headers-{name}-{source}")))


def _newest_probe(name: str, tmp_path_factory: pytest.TempPathFactory) -> "ArchProbe | str":
    return _compile(name, "newest", tmp_path_factory.mktemp(f"headers-{name}-newest"))


def _fmt(v: int) -> str:
    return f"{v:#x} ({v})"


# --- the checks --------------------------------------------------------------

def test_defines_match_kernel(probe: ArchProbe, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every #define against the headers; one the 6.1 headers lack must be in the
    newest headers (whose run checks its value) or allow-listed."""
    a = probe.arch.name
    stale = [n for n in probe.defines if not probe.arch.has_const(n)]
    assert not stale, (f"{a}: kvmdev._kvm_{a} predates cdefs/, which declares {stale}; "
                       "rebuild it (make install, or pip install -e .)")
    problems = []
    allowed = NEWER_THAN_NEWEST if probe.source == "newest" else NEWER_THAN_HEADERS
    newest: ArchProbe | str | None = None
    for name in probe.defines:
        ours = probe.arch.const(name) & U64  # the probe casts to unsigned long long too
        kernel = probe.macro(name)
        if kernel is None:
            if name in allowed:
                continue
            if probe.source == "libc-dev":
                newest = newest or _newest_probe(a, tmp_path_factory)
                if isinstance(newest, ArchProbe) and newest.macro(name) is not None:
                    continue   # newer than 6.1: checked in the newest headers' run
                if isinstance(newest, str):
                    problems.append(f"{a}: {name}: not defined in {probe.header}, and the newest "
                                    f"headers are unavailable ({newest}; run tools/guests/uapi-headers.sh)")
                    continue
            problems.append(f"{a}: {name}: ours {_fmt(ours)}, kernel: not defined in {probe.header}")
        elif ours != kernel:
            problems.append(f"{a}: {name}: ours {_fmt(ours)}, kernel {_fmt(kernel)}")
    assert not problems, "\n".join(problems)


def test_allow_listed_names_are_absent(probe: ArchProbe) -> None:
    a = probe.arch.name
    allowed, listname = ((NEWER_THAN_NEWEST, "NEWER_THAN_NEWEST") if probe.source == "newest"
                         else (NEWER_THAN_HEADERS, "NEWER_THAN_HEADERS"))
    present = [f"{a}: {n} is allow-listed ({allowed[n]}) but {probe.header} defines it "
               f"as {_fmt(v)}; drop it from {listname} so its value is checked"
               for n in probe.defines if n in allowed and (v := probe.macro(n)) is not None]
    headers = [probe.header, probe.header.parent.parent / "asm" / "kvm.h"]
    text = "".join(h.read_text() for h in headers if h.is_file())
    present += [f"{a}: {n} is allow-listed ({allowed[n]}) but {probe.header} declares it; "
                f"drop it from {listname} so its layout is checked"
                for n in allowed if n.startswith("struct ")
                and f"{n} {{" in _declarations(a) and re.search(rf"\b{n}\s*\{{", text)]
    assert not present, "\n".join(present)


def test_allow_list_is_current() -> None:
    declared = {n for a in ARCHES for n in _define_names(a)}
    declared |= {f"struct {n}" for a in ARCHES for n in _STRUCT.findall(_declarations(a))}
    unused = sorted((set(NEWER_THAN_HEADERS) | set(NEWER_THAN_NEWEST)) - declared)
    assert not unused, f"NEWER_THAN_HEADERS names no longer in cdefs/: {unused}"


def test_struct_layouts_match_kernel(probe: ArchProbe) -> None:
    a = probe.arch.name
    k = probe.kernel
    problems = []
    for s in probe.structs:
        size = k[_size_label(s.name)]
        if s.prefix:
            if s.size > size:
                problems.append(f"{a}: sizeof(struct {s.name}) (kvmdev:prefix): ours {s.size}, "
                                f"larger than the kernel's {size}")
        elif s.size != size:
            problems.append(f"{a}: sizeof(struct {s.name}): ours {s.size}, kernel {size}")
        if probe.source == "newest" and s.name in NEWEST_LAYOUT_DIFFERS:
            continue
        for field, offset, fsize in s.fields:
            k_offset = k[_offset_label(s.name, field)]
            k_fsize = k[_field_size_label(s.name, field)]
            if offset != k_offset:
                problems.append(f"{a}: offsetof(struct {s.name}, {field}): ours {offset}, kernel {k_offset}")
            if fsize != k_fsize:
                problems.append(f"{a}: sizeof(struct {s.name}.{field}): ours {fsize}, kernel {k_fsize}")
    assert not problems, "\n".join(problems)


def test_ioctl_numbers_match_kernel(probe: ArchProbe) -> None:
    a = probe.arch.name
    problems = []
    for name, ioctl in probe.arch.ioctls.items():
        kernel = probe.macro(name)
        if kernel is None:
            problems.append(f"{a}: {name}: ours {ioctl.number:#010x}, kernel: not defined in {probe.header}")
        elif ioctl.number != kernel:
            problems.append(f"{a}: {name}: ours {ioctl.number:#010x} (dir {ioctl.direction}, size {ioctl.size}), "
                            f"kernel {kernel:#010x}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "powerpc", "s390"])
def test_device_type_enum_is_kvm_h(arch: str) -> None:
    """kvmdev.DeviceType, spelt out for type checkers, is enum kvm_device_type as
    compiled from cdefs for every architecture: the same names and values."""
    from kvmdev.arch import DeviceType
    consts = get_arch(arch).constants("KVM_DEV_TYPE_")
    assert {f"KVM_DEV_TYPE_{m.name}": int(m) for m in DeviceType} == consts
