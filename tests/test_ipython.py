"""IPython as a user meets it: a stock InteractiveShell in a fresh interpreter
(kvmdev imported into the running shell, as a user types it), its own
completer (jedi off and on) and its own display formatter."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("IPython")

SESSION = r'''
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.completer import provisionalcompleter
shell = InteractiveShell.instance()
r = shell.run_cell("""
import kvmdev
kvm = kvmdev.open("mock", arch="ARCH")
vm = kvm.create_vm()
cpu = vm.create_vcpu(0)
if kvm.arch == "arm64":
    cpu.vcpu_init(["PSCI_0_2"])
    gic = vm.create_device("ARM_VGIC_V3")
    its = vm.create_device("ARM_VGIC_ITS")
    gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
    gic.init()
""")
assert r.success, r.error_in_exec
out = {"complete": {}, "display": {}, "dir": {}}
for jedi in (False, True):
    shell.Completer.use_jedi = jedi
    for text in sys.argv[1:]:
        with provisionalcompleter():
            got = [c.text.lstrip(".").rsplit(".", 1)[-1] for c in shell.Completer.completions(text, len(text))]
        out["complete"][f"{jedi} {text}"] = got
fmt = shell.display_formatter.formatters["text/plain"]
for name in ("kvm", "vm", "cpu", "gic", "its"):
    if name in shell.user_ns:
        out["display"][name] = fmt(shell.user_ns[name])
        out["dir"][name] = dir(shell.user_ns[name])
print(json.dumps(out))
'''


ASKED = {"arm64": ('gic.dist["GICD_ISENABLER1', "its.regs['GITS_CB", "cpu.tsc", "vm.s39", "kvm.xcomp", "cpu.pmu_",
                   "vm.smccc"),
         "x86_64": ("cpu.tsc", "cpu.pmu_", "vm.smccc")}


@functools.lru_cache(maxsize=None)
def session(arch: str) -> dict:
    """One IPython session per architecture, asked every completion of ASKED."""
    completions = ASKED[arch]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMDEV_")}
    env["IPYTHONDIR"] = env.get("IPYTHONDIR", "/tmp/kvmdev-test-ipython")
    r = subprocess.run([sys.executable, "-c", SESSION.replace("ARCH", arch), *completions],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_register_names_complete_through_the_device_attribute() -> None:
    """gic.dist["GICD_IS<TAB>: IPython evaluates no property while completing,
    so dist (and its.regs) are attributes of the device."""
    s = session("arm64")
    for jedi in (False, True):
        assert "GICD_ISENABLER1" in s["complete"][f'{jedi} gic.dist["GICD_ISENABLER1'], jedi
        assert "GICD_ISENABLER10" in s["complete"][f'{jedi} gic.dist["GICD_ISENABLER1'], jedi
        assert s["complete"][f"{jedi} its.regs['GITS_CB"] == ["GITS_CBASER"], jedi


def test_attribute_tables_in_the_display() -> None:
    s = session("arm64")
    assert s["display"]["gic"].splitlines()[0].startswith("<kvmdev.devices.vgic.VgicV3 ARM_VGIC_V3 mock arm64 fd=")
    assert "    KVM_VGIC_V3_ADDR_TYPE_DIST  [__u64, rw]  distributor base" in s["display"]["gic"]
    assert s["display"]["vm"].splitlines()[0].startswith("<kvmdev.Vm mock arm64 fd=")
    assert "  KVM_ARM_VM_SMCCC_CTRL (0): the SMCCC filter" in s["display"]["vm"]
    assert "    KVM_ARM_VCPU_TIMER_IRQ_VTIMER  [int, rw]" in s["display"]["cpu"]
    assert s["display"]["its"].startswith("<kvmdev.devices.its.Its ARM_VGIC_ITS mock arm64 fd=")
    s = session("x86_64")
    assert "    KVM_X86_XCOMP_GUEST_SUPP  [__u64, r]" in s["display"]["kvm"]
    assert "    KVM_VCPU_TSC_OFFSET  [__u64, rw]" in s["display"]["cpu"]


def test_reprs_name_importable_classes() -> None:
    import importlib

    import kvmdev
    with kvmdev.open("mock", arch="arm64") as k, k.create_vm() as vm:
        objs = [k, vm, vm.create_vcpu(0), vm.create_device("ARM_VGIC_V3"), vm.create_device("ARM_VGIC_ITS"),
                vm.create_device("VFIO")]
        for o in objs:
            path = repr(o)[1:].split(" ")[0]
            module, _, name = path.rpartition(".")
            assert getattr(importlib.import_module(module), name) is type(o), repr(o)


def test_other_architectures_members_are_not_offered() -> None:
    s = session("arm64")
    for jedi in (False, True):
        assert s["complete"][f"{jedi} cpu.tsc"] == [], jedi
        assert s["complete"][f"{jedi} vm.s39"] == [], jedi
        assert s["complete"][f"{jedi} kvm.xcomp"] == [], jedi
        assert {"pmu_irq", "pmu_init", "pmu_filter"} <= set(s["complete"][f"{jedi} cpu.pmu_"]), jedi
        assert "smccc_filter" in s["complete"][f"{jedi} vm.smccc"], jedi
    assert "tsc_offset" not in s["dir"]["cpu"] and "s390" not in s["dir"]["vm"]
    assert "xcomp_guest_supp" not in s["dir"]["kvm"] and "pmu_irq" in s["dir"]["cpu"]
    s = session("x86_64")
    for jedi in (False, True):
        assert s["complete"][f"{jedi} cpu.tsc"] == ["tsc_offset"], jedi
        assert s["complete"][f"{jedi} cpu.pmu_"] == [] and s["complete"][f"{jedi} vm.smccc"] == [], jedi


def test_other_architectures_members_raise_naming_both() -> None:
    import kvmdev
    with kvmdev.open("mock", arch="arm64") as k, k.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        with pytest.raises(kvmdev.ArchError, match=r"tsc_offset \(KVM_VCPU_TSC_CTRL/KVM_VCPU_TSC_OFFSET\) exists "
                                                   r"on x86_64 only; this vCPU 0 is arm64"):
            cpu.tsc_offset
        with pytest.raises(kvmdev.ArchError, match="s390 exists on s390 only; this VM is arm64"):
            vm.s390
        with pytest.raises(kvmdev.ArchError, match="xcomp_guest_supp .* exists on x86_64 only; this system is arm64"):
            k.xcomp_guest_supp
        assert not hasattr(cpu, "tsc_offset")       # an AttributeError, as dir() says
    with kvmdev.open("mock", arch="x86_64") as k, k.create_vm() as vm:
        with pytest.raises(kvmdev.ArchError, match="pmu_init exists on arm64 only; this vCPU 0 is x86_64"):
            vm.create_vcpu(0).pmu_init()
