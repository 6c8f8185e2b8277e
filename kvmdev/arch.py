"""Target architectures: the compiled cdefs module of each, and its ioctl encoding.

Everything architecture-specific is selected here by name, so the mock can be
any architecture on any host.
"""
from __future__ import annotations

import enum
import importlib
import platform
from . import _check
from dataclasses import dataclass
from functools import cached_property
from typing import Any

ARCH_NAMES = ("x86_64", "arm64", "powerpc", "s390")

# platform.machine() -> kvmdev architecture name
_MACHINES = {
    "x86_64": "x86_64", "amd64": "x86_64",
    "aarch64": "arm64", "arm64": "arm64",
    "ppc64": "powerpc", "ppc64le": "powerpc",
    "s390x": "s390",
}


@dataclass(frozen=True)
class IocEncoding:
    """include/uapi/asm-generic/ioctl.h, or an architecture's override of it."""

    sizebits: int
    dirbits: int
    dir_none: int
    dir_write: int
    dir_read: int
    nrbits: int = 8
    typebits: int = 8

    def encode(self, direction: int, ioc_type: int, nr: int, size: int) -> int:
        """direction: 0 none, 1 write, 2 read, 3 read|write (cdefs/helpers.h)."""
        d = self.dir_none
        if direction:
            d = (self.dir_write if direction & 1 else 0) | (self.dir_read if direction & 2 else 0)
        if size >= 1 << self.sizebits:
            raise ValueError(f"ioctl argument of {size} bytes does not fit {self.sizebits} size bits")
        shift_type = self.nrbits
        shift_size = shift_type + self.typebits
        shift_dir = shift_size + self.sizebits
        return (d << shift_dir) | (size << shift_size) | (ioc_type << shift_type) | nr


GENERIC_IOC = IocEncoding(sizebits=14, dirbits=2, dir_none=0, dir_write=1, dir_read=2)
# arch/powerpc/include/uapi/asm/ioctl.h: 13 size bits, 3 direction bits
POWERPC_IOC = IocEncoding(sizebits=13, dirbits=3, dir_none=1, dir_write=4, dir_read=2)


@dataclass(frozen=True)
class Ioctl:
    name: str
    number: int
    direction: int
    size: int


class Arch:
    """One target architecture: its constants, struct layouts and ioctl numbers."""

    def __init__(self, name: str) -> None:
        if name not in ARCH_NAMES:
            raise ValueError(f"unknown architecture {_check.show(name)}; kvmdev knows {', '.join(ARCH_NAMES)}")
        self.name = name
        self.ioc = POWERPC_IOC if name == "powerpc" else GENERIC_IOC
        mod: Any = importlib.import_module(f"kvmdev._kvm_{name}")
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib

    def __repr__(self) -> str:
        return f"<Arch {self.name}>"

    @cached_property
    def ioctls(self) -> dict[str, Ioctl]:
        n = self.ffi.new("int *")
        table = self.lib.kvmdev_ioctl_table(n)
        kvmio = self.lib.KVMIO
        out = {}
        for i in range(n[0]):
            e = table[i]
            name = self.ffi.string(e.name).decode()
            out[name] = Ioctl(name, self.ioc.encode(e.dir, kvmio, e.nr, e.size), e.dir, e.size)
        return out

    @cached_property
    def ioctl_names(self) -> dict[int, str]:
        return {io.number: name for name, io in self.ioctls.items()}

    @cached_property
    def attr_requests(self) -> tuple[int, int, int]:
        """KVM_HAS_DEVICE_ATTR, KVM_GET_DEVICE_ATTR, KVM_SET_DEVICE_ATTR."""
        return (self.request("KVM_HAS_DEVICE_ATTR"), self.request("KVM_GET_DEVICE_ATTR"),
                self.request("KVM_SET_DEVICE_ATTR"))

    def request(self, name: str) -> int:
        return self.ioctls[name].number

    def const(self, name: str) -> int:
        try:
            return int(getattr(self.lib, name))
        except AttributeError:
            raise KeyError(f"{name} is not defined for {self.name} in cdefs/") from None

    def has_const(self, name: str) -> bool:
        return hasattr(self.lib, name)

    def constants(self, prefix: str) -> dict[str, int]:
        return {n: int(getattr(self.lib, n)) for n in dir(self.lib)
                if n.startswith(prefix) and isinstance(getattr(self.lib, n), int)}


_ARCHES: dict[str, Arch] = {}


def get_arch(name: str | None = None) -> Arch:
    name = name or host_arch_name()
    if name not in _ARCHES:
        _ARCHES[name] = Arch(name)
    return _ARCHES[name]


def host_arch_name() -> str:
    m = platform.machine()
    return _MACHINES.get(m, m)


class DeviceType(enum.IntEnum):
    """linux/kvm.h enum kvm_device_type (KVM_DEV_TYPE_<name>), the same on every
    architecture.  Spelt out so type checkers know the members;
    tests/test_cdefs_headers.py checks it against the compiled kvm.h."""

    FSL_MPIC_20 = 1
    FSL_MPIC_42 = 2
    XICS = 3
    VFIO = 4
    ARM_VGIC_V2 = 5
    FLIC = 6
    ARM_VGIC_V3 = 7
    ARM_VGIC_ITS = 8
    XIVE = 9
    ARM_PV_TIME = 10
    RISCV_AIA = 11
    LOONGARCH_IPI = 12
    LOONGARCH_EIOINTC = 13
    LOONGARCH_PCHPIC = 14
    LOONGARCH_DMSINTC = 15
    ARM_VGIC_V5 = 16


def device_type_name(t: int) -> str:
    try:
        return DeviceType(t).name
    except ValueError:
        return f"device type {t}"


# the command line's short spellings (kvmdev --device), accepted wherever a device type is
DEVICE_ALIASES = {"vgic-v2": "ARM_VGIC_V2", "vgic-v3": "ARM_VGIC_V3", "its": "ARM_VGIC_ITS",
                  "vgic-its": "ARM_VGIC_ITS", "vgic-v5": "ARM_VGIC_V5", "vfio": "VFIO",
                  "mpic-20": "FSL_MPIC_20", "mpic-42": "FSL_MPIC_42", "xics": "XICS", "xive": "XIVE",
                  "flic": "FLIC"}


def device_type(dtype: Any) -> int:
    """A KVM_CREATE_DEVICE type from a DeviceType, its number, its name
    ("ARM_VGIC_V3", "KVM_DEV_TYPE_ARM_VGIC_V3") or the CLI's spelling ("vgic-v3").
    UnknownNameError (with the nearest names) for another name, TypeError for a
    float/bool, ValueError for a number outside __u32."""
    from ._check import name_lookup, uint
    if isinstance(dtype, str):
        key = dtype.upper().replace("-", "_")
        key = key[len("KVM_DEV_TYPE_"):] if key.startswith("KVM_DEV_TYPE_") else key
        table = {n: int(v) for n, v in DeviceType.__members__.items()}
        if key in table:
            return table[key]
        return name_lookup("device type", dtype, table, "(enum kvm_device_type)", aliases=DEVICE_ALIASES)
    return uint("device type of KVM_CREATE_DEVICE", dtype, 32)


def capability(arch: "Arch", cap: Any) -> int:
    """A KVM_CAP_* number from its name (with or without the prefix) or number."""
    from ._check import integer, unknown
    if isinstance(cap, str):
        name = cap.upper()
        name = name if name.startswith("KVM_CAP_") else "KVM_CAP_" + name
        if arch.has_const(name):
            return arch.const(name)
        raise unknown("capability", cap, arch.constants("KVM_CAP_"), f"on {arch.name} (linux/kvm.h KVM_CAP_*)")
    v = integer("capability", cap)
    if not 0 <= v < 1 << 64:   # the ioctl's unsigned long; a number no kernel knows answers 0
        raise ValueError(f"capability is a non-negative int below 2**64 (KVM_CAP_*), not {v}")
    return v
