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


def _public(mod: object) -> list[tuple[str, object]]:
    return [(name, obj) for name, obj in vars(mod).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == mod.__name__  # type: ignore[attr-defined]
            and (inspect.isclass(obj) or inspect.isfunction(obj))]


def _private_bases(cls: type) -> list[type]:
    """kvmdev's private base classes of cls (such as the one holding has_attr/get_attr for every
    fd class), found by class, wherever the module split puts them."""
    return [b for b in cls.__mro__[1:] if b.__name__.startswith("_") and b.__module__.split(".")[0] == "kvmdev"]


def _shared_calls(classes: list[type]) -> list[str]:
    """A section per private base class with public methods: each method with its signature and
    whole docstring, and the public classes that have it."""
    users: dict[type, list[str]] = {}
    for cls in classes:
        for b in _private_bases(cls):
            users.setdefault(b, []).append(cls.__name__)
    out: list[str] = []
    for base, names in users.items():
        methods = [(n, m) for n, m in vars(base).items() if not n.startswith("_") and isinstance(m, FunctionType)]
        if not methods:
            continue
        on = ", ".join(f"`{n}`" for n in sorted(set(names)))
        out += [f"## Calls shared by {on}", "", f"Defined once on `{base.__name__}`, a private base class of each of them.",
                "", _doc(base), ""]
        for n, m in methods:
            out += [f"### `{base.__name__}.{n}{inspect.signature(m)}`", "", _doc(m) or "(no docstring)", ""]
    return out


def render() -> str:
    out = ["# kvmdev API reference", "", "Generated from the docstrings by `make docs` (tools/api_doc.py).", ""]
    classes = [obj for mod in MODULES for _, obj in _public(mod) if inspect.isclass(obj)]
    for i, mod in enumerate(MODULES):
        out += [f"## `{mod.__name__}`", "", _doc(mod), ""]
        for name, obj in _public(mod):
            sig = "" if inspect.isclass(obj) else str(inspect.signature(obj))
            out += [f"### `{name}{sig}`", "", _doc(obj) or "(no docstring)", ""]
            if inspect.isclass(obj):
                mixins = [b for b in obj.__bases__ if b.__module__.startswith("kvmdev.devices.")]
                if mixins:
                    out += ["Also: " + ", ".join(f"`{b.__name__}` ({b.__module__})" for b in mixins), ""]
                shared = [b.__name__ for b in _private_bases(obj)
                          if any(not n.startswith("_") and isinstance(m, FunctionType) for n, m in vars(b).items())]
                if shared:
                    out += ["And the calls shared with the other fd classes: " + ", ".join(f"`{n}`" for n in shared)
                            + " (below the `kvmdev` section).", ""]
                for mname, m in vars(obj).items():
                    if mname.startswith("_") or not isinstance(m, (FunctionType, property, attr_property)):
                        continue
                    target = m.fget if isinstance(m, property) else m
                    doc = _doc(target)
                    if doc:
                        out += [f"- `{mname}`: {doc.splitlines()[0]}"]
                out.append("")
        if i == 0:   # the generic calls right after the entry point
            out += _shared_calls(classes)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "API.md"
    target.write_text(render())
    print(f"wrote {target}")
