"""kvmdev: the Linux KVM device-control API (KVM_CREATE_DEVICE and
KVM_{SET,GET,HAS}_DEVICE_ATTR on device, VM, vCPU and system fds), typed.

    import kvmdev
    with kvmdev.open() as kvm:              # backend "auto" | "real" | "mock"
        vm = kvm.create_vm()
        vfio = vm.create_device(kvmdev.DeviceType.VFIO)
"""
from __future__ import annotations

import errno
import os
from typing import Any

from .arch import ARCH_NAMES, DeviceType, get_arch, host_arch_name
from .errors import ArchError, ClosedError, KvmError, KvmUnavailable, SequenceError, UnknownNameError
from ._version import __version__
from .fd import Device, GuestMemory, Kvm, Vcpu, Vm
# register every device family's tables and classes
from .devices import arm64_vcpu, flic, its, mpic, s390_vm, vfio, vgic, vgic_v5, x86, xics  # noqa: F401,E402

__all__ = ["open", "BACKENDS", "Kvm", "Vm", "Vcpu", "Device", "DeviceType", "GuestMemory", "KvmError",
           "KvmUnavailable", "ClosedError", "SequenceError", "UnknownNameError", "ArchError", "ARCH_NAMES", "get_arch"]

from ._ipython import load_ipython_extension, register as _register_ipython  # noqa: E402
from . import _check

_register_ipython()

BACKENDS = ("auto", "real", "mock")
# open("/dev/kvm") errnos that mean "no KVM for this process here": "auto" then uses the mock
NO_KVM_ERRNOS = frozenset({errno.ENOENT, errno.ENXIO, errno.ENODEV, errno.EACCES, errno.EPERM, errno.EROFS})


def open(backend: str | None = None, arch: str | None = None, *, guard_buffers: bool | None = None,  # noqa: A001
         **mock_host: Any) -> Kvm:
    """Open a system handle.

    ``backend``: "real" (/dev/kvm), "mock" (in-process emulator) or "auto" (real
    when /dev/kvm opens and ``arch`` is the host's; the mock when /dev/kvm is
    missing, not permitted or KVM is disabled (NO_KVM_ERRNOS), when ``arch`` is
    another, or when a mock profile (``mock_host``) is asked for; any other
    failure to open /dev/kvm is raised).  Not given (None): the environment
    variable KVMDEV_BACKEND, else "auto"; an explicit ``backend`` is never
    overridden.  ``Kvm.backend_reason`` says why this backend answers.
    ``arch`` picks the mock's architecture (x86_64, arm64, powerpc, s390);
    ``mock_host`` sets fields of the mock's HostProfile (kernel="6.1", gic=2,
    ...): an error with the real backend, or for a field of another
    architecture.  ``guard_buffers`` (or KVMDEV_GUARD_BUFFERS=1): debug mode in
    which every GET buffer sits between guard bytes and every SET buffer ends
    at a guard page (kvmdev.backends.guard.BufferOverrun if the kernel wrote or
    read past it).
    """
    chosen = "requested"
    if backend is None:
        env = os.environ.get("KVMDEV_BACKEND")
        backend, chosen = (env, f"KVMDEV_BACKEND={env}") if env else ("auto", "")
        if env and env not in BACKENDS:
            raise ValueError(f"KVMDEV_BACKEND must be one of {', '.join(BACKENDS)}, not {_check.show(env)}")
    if not isinstance(backend, str):
        raise TypeError(f"backend is a name ({', '.join(BACKENDS)}), not {type(backend).__name__} {_check.show(backend)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {_check.show(backend)}")
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"arch is a name ({', '.join(ARCH_NAMES)}), not {type(arch).__name__} {_check.show(arch)}")
    if arch is not None and arch not in ARCH_NAMES:
        from ._check import unknown
        raise unknown("architecture", arch, ARCH_NAMES, "(kvmdev.open arch=)")
    profile = ", ".join(f"{k}={_check.show(v)}" for k, v in mock_host.items())
    if mock_host and backend == "real":
        raise ValueError(f"{profile}: a mock profile; the real backend is this host's kernel "
                         f"({os.uname().release}{', ' + chosen if chosen.startswith('KVMDEV') else ''})")
    reason = ""
    if backend == "auto" and mock_host:
        reason = f"a mock profile was asked for ({profile})"
    elif backend in ("real", "auto"):
        from .backends.real import RealBackend
        if backend == "real" or arch in (None, host_arch_name()):
            try:
                kvm = Kvm(_guarded(RealBackend(arch), guard_buffers))
                kvm.backend_reason = chosen or "/dev/kvm opened"
                return kvm
            except KvmUnavailable as e:
                # "auto" takes the mock only where this host has no usable KVM;
                # a transient failure (EMFILE, ENFILE, ENOMEM, EINTR...) is raised
                if backend == "real" or e.errno not in NO_KVM_ERRNOS:
                    raise
                reason = f"/dev/kvm unusable ({e.errno_name}): {e.meaning}"
        else:
            reason = f"arch {arch} is not the host's ({host_arch_name()})"
    from .backends.mock import MockBackend
    kvm = Kvm(_guarded(MockBackend(arch, **mock_host), guard_buffers))
    kvm.backend_reason = reason or chosen
    if chosen.startswith("KVMDEV") and reason:
        kvm.backend_reason = f"{chosen}: {reason}"
    return kvm


def _guarded(backend: Any, on: bool | None) -> Any:
    if on is None:
        on = os.environ.get("KVMDEV_GUARD_BUFFERS") == "1"
    if not on:
        return backend
    from .backends.guard import GuardedBackend
    return GuardedBackend(backend)
