"""Locks that a fork child must not inherit held.

fork() copies a lock in whatever state another thread of the parent left it;
that thread does not exist in the child, so a lock it held is held forever there
(a kept attr program, a vm.close() in progress, a mock vCPU mutex).  Objects with
locks register here; in the child each gets new ones.  Only the forking thread
runs in the child, so no lock is in use there while they are replaced."""
from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol


class ForkReset(Protocol):
    def _after_fork(self) -> None: ...


_OBJECTS: "weakref.WeakSet[ForkReset]" = weakref.WeakSet()
_MODULE_LOCKS: list[tuple[object, str]] = []   # (module or class, attribute name) of a module-level Lock


def register(obj: ForkReset) -> None:
    _OBJECTS.add(obj)


def register_module_lock(owner: object, name: str) -> None:
    _MODULE_LOCKS.append((owner, name))


def _after_fork_in_child() -> None:
    for owner, name in _MODULE_LOCKS:
        setattr(owner, name, threading.Lock())
    # the set of weak references itself: a copy of it is one atomic step even if a
    # parent thread was adding to the WeakSet when the fork happened
    for ref in list(_OBJECTS.data):
        obj = ref()
        if obj is not None:
            try:
                obj._after_fork()
            except Exception:   # a half-built object: its own code never ran past __init__
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
