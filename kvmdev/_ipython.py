"""IPython integration: attribute completion of kvmdev objects leaves out the
members of other architectures.  IPython completes attributes from dir(obj)
*and* dir(type(obj)); the second cannot know the instance's architecture, so
kvmdev filters through IPython's own hook (IPython.utils.generics.complete_object).
Registered when kvmdev is imported into a running IPython, or by
``%load_ext kvmdev``."""
from __future__ import annotations

import sys
from typing import Any

_done = [False]


def register() -> None:
    if _done[0] or "IPython" not in sys.modules:
        return
    try:
        from IPython.utils.generics import complete_object
    except ImportError:      # an IPython without the hook
        return
    from . import attrs
    from .attr_target import _AttrTarget

    @complete_object.register(_AttrTarget)
    def _complete(obj: Any, prev: list[str]) -> list[str]:
        other = attrs.other_arch_names(type(obj), obj._arch.name)
        return [w for w in prev if w not in other]

    _done[0] = True


def load_ipython_extension(ipython: Any) -> None:   # %load_ext kvmdev
    register()
