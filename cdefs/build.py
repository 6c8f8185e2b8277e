"""cffi builders: one compiled module per target architecture.

Each module ``kvmdev._kvm_<arch>`` is compiled from cdefs/kvm_common.h plus
cdefs/arch/<arch>.h (declarations written once, used both as the cffi cdef and
as the C source), the ioctl X-macro lists, and cdefs/helpers.c.  Every module
is built on every host: struct layouts are fixed-width LP64, so the arm64
module on x86 gives the mock the arm64 constants and layouts.
"""
from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
ARCHES = ("x86_64", "arm64", "powerpc", "s390")
LIMITED_API = 0x030A0000   # Py_LIMITED_API: CPython 3.10, the oldest supported (the wheel is cp310-abi3)

_PRELUDE = """
#include <stdint.h>
#include <linux/types.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
"""

_IOCTL_TABLE = """
#define KVM_IO(n, nr) { #n, 0, nr, 0 },
#define KVM_IOW(n, nr, t) { #n, 1, nr, sizeof(t) },
#define KVM_IOR(n, nr, t) { #n, 2, nr, sizeof(t) },
#define KVM_IOWR(n, nr, t) { #n, 3, nr, sizeof(t) },
static const struct kvmdev_ioctl_desc kvmdev_ioctls_[] = {
%s
};
const struct kvmdev_ioctl_desc *kvmdev_ioctl_table(int *count)
{
	*count = (int)(sizeof(kvmdev_ioctls_) / sizeof(kvmdev_ioctls_[0]));
	return kvmdev_ioctls_;
}
"""


def _read(name: str) -> str:
    return (HERE / name).read_text()


_RUN_FIELDS = "\t/* kvmdev:arch-run-fields"


def declarations(arch: str) -> str:
    """The cdef text of one architecture (also used by the header test).
    struct kvm_run gets the arch's own fields from arch/<arch>.run.h, if any."""
    common = _read("kvm_common.h")
    run = HERE / "arch" / f"{arch}.run.h"
    if run.exists():
        i = common.index(_RUN_FIELDS)
        common = common[:i] + run.read_text() + common[i:]
    return common + _read(f"arch/{arch}.h")


def make_ffi(arch: str) -> FFI:
    decls = declarations(arch)
    helpers = _read("helpers.h")
    ioctls = _read("kvm_common.ioctls") + _read(f"arch/{arch}.ioctls")
    ffi = FFI()
    ffi.cdef(_read("types.h") + decls + helpers)
    ffi.set_source(
        f"kvmdev._kvm_{arch}",
        _PRELUDE + decls + helpers + _read("helpers.c") + _IOCTL_TABLE % ioctls,
        # the limited API of CPython 3.10 (cffi would define a bare Py_LIMITED_API
        # itself): the modules are abi3, one build for 3.10 and every later 3.x
        extra_compile_args=["-O2", "-std=gnu11", f"-DPy_LIMITED_API=0x{LIMITED_API:08X}"],
    )
    return ffi


ffi_x86_64 = make_ffi("x86_64")
ffi_arm64 = make_ffi("arm64")
ffi_powerpc = make_ffi("powerpc")
ffi_s390 = make_ffi("s390")

if __name__ == "__main__":  # python cdefs/build.py: build in place for development
    for a in ARCHES:
        make_ffi(a).compile(tmpdir=str(HERE.parent), verbose=False)
