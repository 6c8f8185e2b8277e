#!/usr/bin/env python3
"""Write docs/API.md, the API reference, from the docstrings (``make docs``);
tests/test_readme.py fails when it is out of date."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import FunctionType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmdev  # noqa: E402
from kvmdev import cli, pytest_plugin  # noqa: E402
from kvmdev.attrs import attr_property  # noqa: E402
from kvmdev.devices import (arm64_vcpu, flic, gicstate, its, mpic, s390_vm, vfio, vgic, vgic_v5,  # noqa: E402
                            x86, xics)

from kvmdev import attr_target, device, kvm, vcpu, vm  # noqa: E402  (the fd layer; kvmdev.fd re-exports it)

MODULES = [kvmdev, kvm, vm, vcpu, device, attr_target, vgic, its, gicstate, vgic_v5, arm64_vcpu, x86, vfio, mpic,
           xics, flic, s390_vm, cli, pytest_plugin]


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def render() -> str:
    out = ["# kvmdev API reference", "", "Generated from the docstrings by `make docs` (tools/api_doc.py).", ""]
    for mod in MODULES:
        out += [f"## `{mod.__name__}`", "", _doc(mod), ""]
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                sig = "" if inspect.isclass(obj) else str(inspect.signature(obj))
                out += [f"### `{name}{sig}`", "", _doc(obj) or "(no docstring)", ""]
                if inspect.isclass(obj):
                    mixins = [b for b in obj.__bases__ if b.__module__.startswith("kvmdev.devices.")]
                    if mixins:
                        out += ["Also: " + ", ".join(f"`{b.__name__}` ({b.__module__})" for b in mixins), ""]
                    for mname, m in vars(obj).items():
                        if mname.startswith("_") or not isinstance(m, (FunctionType, property, attr_property)):
                            continue
                        target = m.fget if isinstance(m, property) else m
                        doc = _doc(target)
                        if doc:
                            out += [f"- `{mname}`: {doc.splitlines()[0]}"]
                    out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "API.md"
    target.write_text(render())
    print(f"wrote {target}")
