"""``kvmdev probe --discover``: a kernel's device-control surface by number.

``kvmdev probe`` asks only about names kvmdev knows, so what a new kernel adds is
invisible to it.  This asks KVM_HAS_DEVICE_ATTR of every group 0..``groups``-1 and,
in each group, attributes 0..``attrs``-1 (the groups whose attribute encodes an
offset or an MPIDR answer for attribute 0 at least), and KVM_CHECK_EXTENSION of
every capability number 0..``caps``-1, on the system fd, a VM, a vCPU and a fresh
device of each creatable type; each answer carries kvmdev's name where it has one
and ``"new": True`` where it has none, which is the new surface.
"""
from __future__ import annotations

from typing import Any

from .arch import DeviceType
from .errors import KvmError

GROUPS, ATTRS, CAPS = 16, 64, 320


def _has(fd: Any, group: int, attr: int) -> bool:
    try:
        return bool(fd.has_attr(group, attr))
    except KvmError:
        return False


def _surface(fd: Any, groups: int, attrs: int) -> list[dict[str, Any]]:
    """The (group, attr) pairs HAS says yes to, by number, with kvmdev's names."""
    t = fd.attr_table
    out = []
    for g in range(groups):
        for a in range(attrs):
            if not _has(fd, g, a):
                continue
            known_group = g in t.groups
            known = known_group and (a in t.attrs.get(g, {}) or t.groups[g].any_attr is not None)
            out.append({"group": g, "attr": a, "group_name": t.group_name(g) if known_group else None,
                        "attr_name": t.attrs.get(g, {})[a].name if a in t.attrs.get(g, {}) else None,
                        "new": not known})
    return out


def _caps(kvm: Any, caps: int) -> list[dict[str, Any]]:
    names = {v: n for n, v in kvm._arch.constants("KVM_CAP_").items()}
    out = []
    for n in range(caps):
        try:
            v = kvm.check_extension(n)
        except KvmError as e:
            v = e.errno_name
        if v:
            out.append({"cap": n, "name": names.get(n), "value": v, "new": n not in names})
    return out


def _new_vcpu(vm: Any, kvm: Any) -> Any:
    cpu = vm.create_vcpu(0)
    if kvm.arch == "arm64":   # with the PMU where the host has one: its group is then offered
        try:
            cpu.vcpu_init(["PSCI_0_2", "PMU_V3"])
        except KvmError:
            cpu.vcpu_init(["PSCI_0_2"])
    return cpu


def discover(kvm: Any, groups: int = GROUPS, attrs: int = ATTRS, caps: int = CAPS) -> dict[str, Any]:
    """KVM_HAS_DEVICE_ATTR by number on every target, KVM_CHECK_EXTENSION by number."""
    out: dict[str, Any] = {"backend": kvm.backend, "arch": kvm.arch, "kernel": kvm.kernel_release,
                           "caps": _caps(kvm, caps), "system": _surface(kvm, groups, attrs)}
    with kvm.create_vm() as vm:
        out["vm"] = _surface(vm, groups, attrs)
        out["vcpu"] = _surface(_new_vcpu(vm, kvm), groups, attrs)
        types = [t.name for t in DeviceType if vm.supports_device(t)]
    out["devices"] = {}
    for t in types:
        with kvm.create_vm() as vm:
            _new_vcpu(vm, kvm)
            try:
                dev = vm.create_device(t)
            except KvmError as e:
                out["devices"][t] = {"error": str(e)}
                continue
            out["devices"][t] = _surface(dev, groups, attrs)
    return out


def print_discovery(d: dict[str, Any]) -> None:
    print(f"backend {d['backend']}, arch {d['arch']}, kernel {d['kernel']} (by number; * = unknown to kvmdev)")
    print("capabilities: " + ", ".join(f"{'*' if c['new'] else ''}{c['name'] or c['cap']}={c['value']}"
                                       for c in d["caps"]))
    targets = [("system", d["system"]), ("vm", d["vm"]), ("vcpu", d["vcpu"]), *d["devices"].items()]
    for label, found in targets:
        if isinstance(found, dict):
            print(f"{label}: {found['error']}")
            continue
        by_group: dict[int, list[str]] = {}
        for f in found:
            by_group.setdefault(f["group"], []).append(("*" if f["new"] else "") + (f["attr_name"] or str(f["attr"])))
        parts = [f"{g}({next((f['group_name'] for f in found if f['group'] == g and f['group_name']), '?')}): "
                 + (",".join(a) if len(a) <= 8 else f"{a[0]}..{a[-1]} ({len(a)} attrs)") for g, a in by_group.items()]
        print(f"{label}: " + ("; ".join(parts) or "-"))
