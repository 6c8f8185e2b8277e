"""The fd base: one kernel fd owned by a Python object (lifetime, ioctls).

Every ioctl goes through ``_Fd._ioctl``/``_ioctl_val``; failures become a
KvmError naming the ioctl and the target.  Lifetime: calls in flight hold the
fd (_acquire/_release), close() defers the real close to the last of them, and
a fork child's VM/vCPU/device fds are refused (the kernel would answer EIO).
"""
from __future__ import annotations

import errno as E
import itertools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Sequence

from . import _check, _forksafe
from .arch import Arch, capability
from .errors import ClosedError, KvmError

if TYPE_CHECKING:
    from .backends import Backend

# bumped in a fork child: VM, vCPU and device fds then belong to the parent
_GENERATION = [0]


# Every fd a kvmdev object holds, by number: (serial, the object).  The pytest
# plugin's leak check reads it (only kvmdev's fds, not a VMM's own eventfds);
# the serial tells a reused number apart.
OPEN_FDS: dict[int, tuple[int, "weakref.ref[_Fd]"]] = {}
_SERIAL = itertools.count()


def _after_fork_in_child() -> None:
    _GENERATION[0] += 1
    _Fd._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _enable_cap(target: "_Fd", cap: int | str, args: Sequence[int], flags: int) -> int:
    if len(args) > 4:
        raise ValueError(f"KVM_ENABLE_CAP takes at most 4 args, not {len(args)}")
    args = [_check.u64(f"args[{i}] of KVM_ENABLE_CAP", a) for i, a in enumerate(args)]
    flags = _check.u32("flags of KVM_ENABLE_CAP", flags)
    number = _cap(target._arch, cap)
    if number >= 1 << 32:   # struct kvm_enable_cap.cap is a __u32 (KVM_CHECK_EXTENSION takes a long)
        raise ValueError(f"KVM_ENABLE_CAP: capability {number:#x} does not fit struct kvm_enable_cap.cap (__u32)")
    ec = target._arch.ffi.new("struct kvm_enable_cap *", {"cap": number, "flags": flags, "args": list(args)})
    return target._ioctl("KVM_ENABLE_CAP", ec, attr=cap if isinstance(cap, str) else None)


class _Fd:
    """A kernel fd owned by this object; closes deterministically, children first.

    Threads: every ioctl holds the fd for its duration (_acquire/_release).  A
    close() from another thread marks the object closed at once (later calls get
    ClosedError) and the fd is closed when the last call in flight returns, so no
    ioctl ever reaches a reused fd number.  Concurrent calls on one object are
    allowed; the kernel serializes what it must (a vCPU's ioctls, a VM's config)."""

    _kind = "fd"
    _process_bound = True   # KVM answers EIO to VM, vCPU and device ioctls from another process
    _forked = False         # set in a fork child

    def __init__(self, backend: "Backend", fd: "int | Any", parent: "_Fd | None") -> None:
        # ``fd``: the fd cell (backend.new_cell()) the creating ioctl stored the new fd
        # in, so that no exception between the ioctl and this object can lose it
        # (the cell closes what it holds when freed); a plain int is wrapped
        if isinstance(fd, int):
            cell = backend.new_cell()
            cell[0] = fd
        else:
            cell = fd
        self._cell = cell
        fd = int(cell[0])
        self._backend = backend
        self._arch: Arch = backend.arch
        self._fd = fd
        self._serial = next(_SERIAL)
        self._users: set[object] = set()   # one token per call in flight
        self._deferred: list[int] = []    # the fd close() left to the last of them
        self._generation = _GENERATION[0]
        self._pid = os.getpid()
        self._parent = parent
        # Weak: an object nobody references closes its fd like a Python file does;
        # close() still reaches every live child first.
        self._children: weakref.WeakValueDictionary[int, _Fd] = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        _forksafe.register(self)
        if parent is not None:
            # under the parent's lock, which close() holds: a parent closed while this
            # fd was being created (another thread) does not leave it open behind it
            with parent._lock:
                if parent._fd < 0:
                    self._fd = -1
                    backend.cell_close(cell)
                    raise ClosedError(f"{parent._target_label()} was closed while this {self._kind} "
                                      f"was being created (its fd is closed again)")
                OPEN_FDS[fd] = (self._serial, weakref.ref(self))
                parent._children[id(self)] = self
                parent._child_opened(id(self))
        else:
            OPEN_FDS[fd] = (self._serial, weakref.ref(self))

    def _after_fork(self) -> None:
        """In a fork child: the parent's threads (and the calls they had in flight)
        are gone; their locks and tokens must not outlive them."""
        self._lock = threading.RLock()
        self._users = set()

    # -- lifetime --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ClosedError(f"{self._target_label()} is closed")
        return fd

    # The hand-over between calls in flight and close() uses set add/discard,
    # each atomic in CPython, rather than a lock: it is on every ioctl's path.
    # Each call holds the fd with its own token, acquired inside its try:
    #     tok = object()
    #     try:
    #         fd = self._acquire(tok)
    #         ...
    #     finally:
    #         self._users.discard(tok)
    #         if self._deferred and not self._users:
    #             self._close_deferred()
    # An asynchronous exception (KeyboardInterrupt from a signal handler) can land
    # wherever CPython checks for pending signals: at a function's entry and after
    # each call.  One after the add is released by the finally, whose discard runs
    # before any such check (no Python call precedes it); one before the add
    # leaves nothing to discard.
    def _acquire(self, token: object) -> int:
        """The fd, held for one ioctl by ``token`` (see above)."""
        fd = self._fd
        if fd < 0 or self._forked and self._process_bound and self._generation != _GENERATION[0]:
            self._refuse(fd)
        self._users.add(token)
        if self._fd < 0:           # closed meanwhile: not this fd any more
            self._release(token)
            self._refuse(-1)
        return fd

    def _release(self, token: object) -> None:
        self._users.discard(token)
        if self._deferred and not self._users:
            self._close_deferred()

    def _close_deferred(self) -> None:
        """Close the fd close() left.  The cell's atomic exchange closes it once
        whoever gets there first (and whatever interrupts whom); the registry entry
        goes before the number can be reused."""
        d = self._deferred
        try:
            fd = d[0]
        except IndexError:
            return
        self._unregister(fd)
        self._backend.cell_close(self._cell)
        try:
            d.pop()
        except IndexError:   # another thread's close finished it
            return
        self._after_close()

    def _unregister(self, fd: int) -> None:
        entry = OPEN_FDS.get(fd)
        if entry is not None and entry[0] == self._serial:
            OPEN_FDS.pop(fd, None)

    def _after_close(self) -> None:
        """What goes with the fd once it is really closed (a vCPU's kvm_run map)."""
        if self._parent is not None:
            self._parent._child_gone(id(self))

    def _live_children_list(self) -> "list[_Fd]":
        """The children alive now.  The underlying dict is copied in one C step:
        iterating the WeakValueDictionary itself while another thread creates a
        child raises "dictionary changed size during iteration"."""
        return [c for c in (r() for r in list(self._children.data.values())) if c is not None]

    def _child_opened(self, key: int) -> None:
        """A child fd exists (the VM keeps its guest memory until none is left)."""

    def _child_gone(self, key: int) -> None:
        """A child's fd is really closed: no call of it is in flight any more."""

    def _refuse(self, fd: int) -> None:
        if fd < 0:
            raise ClosedError(f"{self._target_label()} is closed")
        raise KvmError(E.EIO, "ioctl", self._target_label(), detail=(
            f"this {self._kind} belongs to process {self._pid}, which created its VM; KVM answers EIO "
            "to any other process, a fork child included (open KVM again in the child)"))

    def close(self) -> None:
        """Close this fd, after closing every object created from it.  Calls in
        flight on other threads finish first; the fd closes after the last."""
        with self._lock:
            if self._fd < 0:
                return
            for child in self._live_children_list():
                child.close()
            self._deferred.append(self._fd)
            self._fd = -1
            if self._parent is not None:
                self._parent._children.pop(id(self), None)
            if not self._users:
                self._close_deferred()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Unreferenced objects still close their fd; the kernel keeps a VM alive
        # while its vCPU and device fds are open, so the order does not matter.
        try:
            fd = self._fd
            if fd < 0 and self._deferred:   # a close() whose deferred close was interrupted
                fd = self._deferred[0]
            self._fd = -1
            if fd >= 0:
                self._unregister(fd)
            if self._backend.cell_close(self._cell) and self._parent is not None:
                self._parent._child_gone(id(self))
        except Exception:
            pass

    # -- naming ------------------------------------------------------------
    def _target_label(self) -> str:
        return self._kind

    def _target_key(self) -> str:
        return self._kind

    # -- ioctls ------------------------------------------------------------
    def _ioctl(self, name: str, arg: Any, *, group: str | None = None, attr: str | None = None,
               register: str | None = None) -> int:
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._backend.ioctl(fd, self._arch.request(name), arg)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise KvmError(-r, name, self._target_label(), group=group, attr=attr, target_key=self._target_key(),
                           register=register)
        return int(r)

    def _ioctl_val_fd(self, name: str, value: int) -> Any:
        """An ioctl that creates an fd (KVM_CREATE_VM, KVM_CREATE_VCPU): its fd
        cell, holding the new fd, for the new object's __init__."""
        cell = self._backend.new_cell()
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._backend.ioctl_val_fd(fd, self._arch.request(name), value, cell)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise KvmError(-r, name, self._target_label(), target_key=self._target_key())
        return cell

    def _ioctl_val(self, name: str, value: int) -> int:
        tok = object()   # this call's hold (see _Fd._acquire)
        try:
            fd = self._acquire(tok)
            r = self._backend.ioctl_val(fd, self._arch.request(name), value)
        finally:   # inline, not _release(): no call (no pending-signal check) before the discard
            self._users.discard(tok)
            if self._deferred and not self._users:
                self._close_deferred()
        if r < 0:
            raise KvmError(-r, name, self._target_label(), target_key=self._target_key())
        return int(r)

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def arch(self) -> str:
        return self._arch.name


def _cap(arch: Arch, cap: int | str) -> int:
    # by name (UnknownNameError with the nearest ones) or number; see arch.capability
    return capability(arch, cap)


def _need_arch(obj: _Fd, arch: str, ioctl: str) -> None:
    if obj._arch.name != arch:
        raise ValueError(f"{ioctl} is an {arch} ioctl; this {obj._target_label()} is {obj._arch.name}")
