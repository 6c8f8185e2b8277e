"""What each errno means, per ioctl, target and group: the one table of it.

Keys are (ioctl, target, group, errno name); ``None`` matches anything.  The
most specific match wins.  Targets are "system", "vm", "vcpu" or a device type
name (DeviceType member name).  Text in quotes is the kernel documentation's;
where the docs are silent the entry says what the kernel source does.
"""
from __future__ import annotations

import errno as _errno
import os

_K = tuple[str | None, str | None, str | None, str]

ERRNO_MEANINGS: dict[_K, str] = {
    # Documentation/virt/kvm/api.rst, KVM_CREATE_DEVICE / KVM_*_DEVICE_ATTR
    ("KVM_CREATE_DEVICE", None, None, "ENODEV"):
        "the device type is unknown or unsupported by this kernel (api.rst: 'The device type is unknown or unsupported')",
    ("KVM_CREATE_DEVICE", None, None, "EEXIST"):
        "device already created, and this type of device may not be instantiated multiple times",
    ("KVM_CREATE_DEVICE", "VFIO", None, "EBUSY"):
        "only one VFIO instance may be created per VM (vfio.rst); the kernel answers EBUSY",
    (None, None, None, "ENXIO"):
        "the group or attribute is unknown/unsupported for this target, or hardware support is missing",
    (None, None, None, "EPERM"):
        "the attribute cannot (currently) be accessed this way (read-only attribute, or not in this device state)",
    ("KVM_GET_DEVICE_ATTR", "VFIO", None, "EPERM"):
        "the VFIO device has no readable attributes (the kernel answers EPERM for a get on a device type without get_attr)",
    (None, None, None, "EFAULT"): "invalid user pointer for attr->addr",
    (None, None, None, "ENOTTY"): "this kind of fd does not accept this ioctl on this kernel",
    (None, None, None, "EBADF"): "the file descriptor is not open",
    (None, None, None, "EMFILE"):
        "this process has as many open files as RLIMIT_NOFILE allows: close some fds or raise the limit",
    (None, None, None, "ENOMEM"):
        "the kernel could not allocate memory for this request (system memory, or this process's memory "
        "cgroup limit); nothing was created or changed, the call can be retried",
    ("mmap", None, None, "ENOMEM"):
        "the vCPU's kvm_run page could not be mapped: the address space is full (RLIMIT_AS or "
        "vm.max_map_count); the vCPU itself is intact",
    (None, None, None, "EIO"):
        "the VM is dead (kvm_vm_dead): an earlier unrecoverable error, e.g. a failed VGIC mapping at the "
        "first KVM_RUN on arm64, makes every ioctl of the VM, its vCPUs and devices fail; close it",
    # system fd (x86: kvm_arch_dev_ioctl)
    ("KVM_SET_DEVICE_ATTR", "system", None, "EINVAL"):
        "system-fd attributes are read-only: the kernel has no KVM_SET_DEVICE_ATTR on /dev/kvm and answers EINVAL",
    # VFIO (vfio.rst; virt/kvm/vfio.c)
    ("KVM_SET_DEVICE_ATTR", "VFIO", "KVM_DEV_VFIO_FILE", "EBADF"):
        "the int32 at attr.addr is not an open file descriptor",
    ("KVM_SET_DEVICE_ATTR", "VFIO", "KVM_DEV_VFIO_FILE", "EINVAL"):
        "the file descriptor is not a VFIO group or device file",
    ("KVM_SET_DEVICE_ATTR", "VFIO", "KVM_DEV_VFIO_FILE", "ENOENT"):
        "that VFIO file was never added to this device",
    # vCPU / VM creation (api.rst)
    ("KVM_CREATE_VCPU", None, None, "EEXIST"): "a vCPU with this id already exists in the VM",
    ("KVM_CREATE_VCPU", None, None, "EINVAL"): "vCPU id out of range (>= KVM_CAP_MAX_VCPU_ID) or too many vCPUs",
    # memory slots (virt/kvm/kvm_main.c kvm_set_memory_region)
    ("KVM_SET_USER_MEMORY_REGION", None, None, "EINVAL"):
        "guest_phys_addr, memory_size or userspace_addr is not page-aligned, the range wraps or is too large, "
        "the slot id is beyond KVM_CAP_NR_MEMSLOTS, or the flags are unknown (or change an existing slot's "
        "read-only flag)",
    ("KVM_SET_USER_MEMORY_REGION", None, None, "EEXIST"):
        "the range overlaps another memory slot: pick a free guest_phys_addr range, or delete that slot first "
        "(memory_size 0)",
    ("KVM_CREATE_VM", None, None, "EINVAL"):
        "unsupported machine type (on arm64: IPA size outside what the host supports)",
    ("open", None, None, "ENOENT"):
        "/dev/kvm does not exist: KVM is not available (module not loaded, or no hardware virtualization)",
    ("open", None, None, "EACCES"):
        "no permission to open /dev/kvm: run as root or add the user to the group that owns it (usually 'kvm')",
    ("open", None, None, "ENXIO"): "/dev/kvm exists but KVM is disabled (no virtualization support in this machine)",
}


# the kernel's names where Python's errorcode picks an alias (95 is ENOTSUP there)
_KERNEL_NAMES = {_errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(errno: int) -> str:
    return _KERNEL_NAMES.get(errno) or _errno.errorcode.get(errno, str(errno))


def meaning(errno: int, ioctl: str | None, target: str | None, group: str | None) -> str:
    name = errno_name(errno)
    for key in ((ioctl, target, group, name), (ioctl, target, None, name), (ioctl, None, group, name),
                (None, target, group, name), (ioctl, None, None, name), (None, target, None, name),
                (None, None, None, name)):
        text = ERRNO_MEANINGS.get(key)
        if text is not None:
            return text
    return os.strerror(errno)


def register(entries: dict[_K, str]) -> None:
    """Device-family modules add their documented errors here."""
    ERRNO_MEANINGS.update(entries)
