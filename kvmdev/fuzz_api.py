"""Argument-space fuzzing of every public call (``make fuzz``; tests/test_fuzz_api.py).

Hypothesis draws a target (the system fd, a VM, a vCPU, each device kvmdev can
create there) and one of its public methods or settable properties, then arguments
of every kind: ints at and past every width, negative, bools, floats, strings
(kernel names of the right and the wrong table, near misses, junk), bytes, lists,
deep nesting, None, objects.  Each call must keep the exception policy of
kvmdev.errors:

- it returns, or raises one of the policy's exceptions (KvmError, ValueError,
  TypeError, UnknownNameError, ClosedError, ArchError, SequenceError);
- a ValueError or TypeError (an argument refused) comes before any ioctl that
  changes kernel state (a KVM_SET_*, KVM_CREATE_*, KVM_IRQ_LINE, ...: counted at
  the backend);
- no call hangs (an alarm ends one after ``timeout`` seconds) or crashes the
  process; no kvmdev fd is left open once the world is closed.

Methods that block by design (``run``) or end the world (``close``) are left out,
and so, on the real kernel, are the memory calls (a memslot of 2**40 bytes makes the
kernel allocate its rmap: the host's memory, not kvmdev's behaviour, would be tested).
"""
from __future__ import annotations

import argparse
import inspect
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ArchError, ClosedError, KvmError, SequenceError, UnknownNameError, bounded_repr

ALLOWED: tuple[type[BaseException], ...] = (KvmError, ValueError, TypeError, UnknownNameError,
                                            ArchError, SequenceError)
# reads: any other ioctl changes state, and an argument refusal must come before it
_READ_PREFIXES = ("KVM_GET_", "KVM_HAS_", "KVM_CHECK_", "KVM_ARM_PREFERRED_TARGET",
                  "KVM_GET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR")
SKIP = frozenset({"close", "run", "run_until", "request_exit", "fileno"})
REAL_SKIP = frozenset({"add_memory", "set_user_memory_region", "guest_memory", "map_memory"})


class Hang(BaseException):
    pass


@dataclass
class Violation:
    target: str
    call: str
    problem: str
    trace: str = ""

    def __str__(self) -> str:
        return f"{self.target}.{self.call}: {self.problem}\n{self.trace}"


@dataclass
class Stats:
    calls: int = 0
    ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)


class CountingBackend:
    """The backend, counting state-changing ioctls (by request name)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.writes = 0
        names = inner.arch.ioctl_names
        self._write_req = {r for r, n in names.items() if not n.startswith(_READ_PREFIXES)}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _count(self, request: int) -> None:
        if request in self._write_req:
            self.writes += 1

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        self._count(request)
        return self._inner.ioctl(fd, request, arg)

    def ioctl_val(self, fd: int, request: int, value: int) -> int:
        self._count(request)
        return self._inner.ioctl_val(fd, request, value)

    def ioctl_val_fd(self, fd: int, request: int, value: int, cell: Any) -> int:
        self._count(request)
        return self._inner.ioctl_val_fd(fd, request, value, cell)

    def ioctl_fd_at(self, fd: int, request: int, arg: Any, off: int, cell: Any) -> int:
        self._count(request)
        return self._inner.ioctl_fd_at(fd, request, arg, off, cell)

    def attr(self, fd: int, request: int, group: int, attr: int, addr: Any) -> int:
        self._count(request)
        return self._inner.attr(fd, request, group, attr, addr)

    def attr_batch(self, fd: int, request: int, attrs: Any, count: int, err: Any) -> int:
        self._count(request)
        return self._inner.attr_batch(fd, request, attrs, count, err)


def _names(kvm: Any) -> list[str]:
    """Kernel names kvmdev knows for this arch (and some of other arches)."""
    a = kvm._arch
    out: set[str] = set()
    for prefix in ("KVM_CAP_", "KVM_DEV_", "KVM_REG_", "KVM_ARM_", "KVM_X86_", "KVM_S390_", "KVM_VGIC_"):
        out.update(list(a.constants(prefix))[:200])
    out.update(["ARM_VGIC_V3", "ARM_VGIC_ITS", "VFIO", "FLIC", "XICS", "PSCI_0_2", "X0", "PC", "SP_EL1",
                "GICD_CTLR", "ICC_CTLR_EL1", "vgic-v3", "", " ", "\x00", "KVM_", "kvm_run"])
    return sorted(out)


def _strategies(names: list[str]) -> Any:
    from hypothesis import strategies as st
    widths = [0, 1, 7, 8, 15, 16, 31, 32, 63, 64, 65, 128]
    edge = st.sampled_from([v for w in widths for v in (1 << w, (1 << w) - 1, -(1 << w))] + [-1, 0, 1, 2, 3])
    scalar = st.one_of(edge, st.integers(), st.booleans(), st.none(),
                       st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(names), st.text(max_size=12), st.binary(max_size=64),
                       st.just(object()), st.just(float("nan")))
    deep = st.just(None).map(lambda _: _nest(2000))
    value = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=6),
                                                     st.dictionaries(st.text(max_size=6), c, max_size=4),
                                                     st.tuples(c, c)), max_leaves=12)
    return st.one_of(value, deep)


_WORLD: dict[str, Any] = {}   # the running fuzz's world, for parameters that take its objects


def _plausible(names: list[str], annotation: str) -> Any:
    """Values of the kind a parameter's annotation names, mostly in range, so calls
    get past the first check into the deeper paths."""
    from hypothesis import strategies as st
    g = _WORLD.get("gicstate")
    if g is not None and annotation in ("dict", "'dict'"):
        return st.one_of(st.just(g.doc), _mutated(g.doc, _strategies(names)))
    if g is not None and "list[Any]" in annotation:
        objs = [*g.vcpus, g.its, g.gic, _WORLD.get("vcpu")]
        return st.one_of(st.none(), st.lists(st.sampled_from(objs), max_size=3),
                         st.just(list(g.vcpus)), st.just([g.its]))
    small = st.one_of(st.integers(0, 64), st.sampled_from([0x8000000, 0x8010000, 0x80A0000, 1 << 32, 4096]))
    out = []
    a = annotation or ""
    if "bool" in a:
        out.append(st.booleans())
    if "int" in a:
        out.append(small)
    if "str" in a:
        out.append(st.sampled_from(names))
    if "bytes" in a:
        out.append(st.binary(max_size=64))
    if "Sequence" in a or "list" in a or "Iterable" in a:
        out.append(st.lists(st.one_of(small, st.sampled_from(names)), max_size=8))
    if not out:
        out = [small, st.sampled_from(names), st.booleans(), st.none()]
    return st.one_of(*out)


def _nest(n: int) -> Any:
    v: Any = 0
    for _ in range(n):
        v = [v]
    return v


def _members(obj: Any, real: bool) -> list[tuple[str, str]]:
    """(kind, name): 'call' for public methods, 'set' for settable properties."""
    out = []
    skip = SKIP | (REAL_SKIP if real else frozenset())
    for name in sorted(dir(type(obj))):
        if name.startswith("_") or name in skip:
            continue
        attr = inspect.getattr_static(type(obj), name)
        if isinstance(attr, property):
            if attr.fset is not None:
                out.append(("set", name))
            continue
        if callable(attr) and not isinstance(attr, type):
            out.append(("call", name))
        elif hasattr(attr, "__set__") and "w" in getattr(attr, "access", "w"):   # typed attributes
            out.append(("set", name))           # (a read-only one's AttributeError is Python's own)
    return out


def _world(kvm: Any) -> dict[str, Any]:
    """The system fd, a VM, a vCPU and each device kvmdev can create on this VM."""
    from .errors import KvmError as KE
    from .arch import device_type_name
    w: dict[str, Any] = {"kvm": kvm}
    vm = kvm.create_vm()
    w["vm"] = vm
    cpu = vm.create_vcpu(0)
    if kvm.arch == "arm64":
        cpu.vcpu_init(["PSCI_0_2"])
    w["vcpu"] = cpu
    if kvm.arch == "arm64":   # a second VM with a working VGIC v3 + ITS, for the snapshot calls
        vm2 = kvm.create_vm()
        w["vm2"] = vm2
        cpus = [vm2.create_vcpu(i) for i in range(2)]
        for c in cpus:
            c.vcpu_init(["PSCI_0_2"])
        try:
            gic = vm2.create_device("ARM_VGIC_V3")
            gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
            its = vm2.create_device("ARM_VGIC_ITS")
            its.base = 0x08080000
            gic.init()
            its.init()
            w["gic_ready"], w["its_ready"] = gic, its
            w["gicstate"] = GicstateTarget(gic, its, cpus)
        except (KE, ValueError):
            pass
    for t in sorted(set(getattr(kvm._backend, "host", None) and kvm._backend.host.device_types or ())
                    or ("VFIO",)):
        name = device_type_name(t) if isinstance(t, int) else t
        try:
            w[name] = vm.create_device(name)
        except (KE, ValueError):
            pass
    return w


class GicstateTarget:
    """kvmdev.devices.gicstate's calls on the world's initialised VGIC v3 (+ ITS), so
    that their documents and vCPU lists are fuzzed (``doc``: a real saved document,
    mutated at one random place)."""

    def __init__(self, gic: Any, its: Any, vcpus: list[Any]) -> None:
        from .devices import gicstate
        self._g, self.gic, self.its, self.vcpus = gicstate, gic, its, vcpus
        self.doc = gicstate.save(gic, vcpus, [its] if its is not None else [])

    def save(self, vcpus: "list[Any] | None" = None, its: "list[Any]" = ()) -> Any:   # type: ignore[assignment]
        return self._g.save(self.gic, vcpus, its)

    def restore(self, doc: "dict", vcpus: "list[Any] | None" = None, its: "list[Any]" = (),  # type: ignore[assignment]
                *, rollback: bool = True) -> None:
        self._g.restore(self.gic, doc, vcpus, its, rollback=rollback)

    def loads(self, text: str) -> Any:
        return self._g.loads(text)

    def dumps(self, doc: "dict") -> str:
        return self._g.dumps(doc)

    def diff(self, a: "dict", b: "dict") -> Any:
        return self._g.diff(a, b)

    def seal(self, doc: "dict") -> Any:
        return self._g.seal(doc)


def _mutated(doc: Any, value: Any) -> Any:
    """A copy of ``doc`` with one random place replaced by a drawn value (or removed)."""
    from hypothesis import strategies as st
    import copy
    import json

    def places(d: Any, path: tuple = ()) -> list[tuple]:
        out = [path]
        if isinstance(d, dict):
            for k, v in d.items():
                out += places(v, path + (k,))
        elif isinstance(d, list):
            for i, v in enumerate(d):
                out += places(v, path + (i,))
        return out
    paths = places(doc)

    @st.composite
    def gen(draw: Any) -> Any:
        d = copy.deepcopy(doc)
        path = draw(st.sampled_from(paths[1:] or paths))
        how = draw(st.sampled_from(["set", "set", "del", "json"]))
        if how == "json":
            return json.dumps(d) if draw(st.booleans()) else json.dumps(d)[: draw(st.integers(0, 200))]
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if how == "del" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(value)
        return d
    return gen()


def fuzz(kvm: Any, examples: int, seed: int = 0, timeout: float = 10.0,
         log: Callable[[str], None] = print, race_close: bool = False) -> Stats:
    """``examples`` calls drawn by hypothesis on a world built on ``kvm``.  With
    ``race_close``, another thread closes the call's target (or its VM) at a random
    moment of each call; the world is built again after each close."""
    from hypothesis import HealthCheck, given, settings, strategies as st
    real = kvm.backend == "real"
    counting = CountingBackend(kvm._backend)
    kvm._backend = counting
    world = _world(kvm)
    _WORLD.clear()
    _WORLD.update(world)
    targets = [(label, obj, _members(obj, real)) for label, obj in world.items()]
    targets = [t for t in targets if t[2]]
    current = [world]                # race_close: the world the next call uses
    names = _names(kvm)
    for _, obj in world.items():     # the targets' own group and attribute names
        t = getattr(obj, "attr_table", None)
        if t is not None:
            names += list(t.group_values)[:40] + [a for g in list(t.attr_values.values())[:40] for a in list(g)[:20]]
    args_st = _strategies(names)
    stats = Stats()

    def on_alarm(sig: int, frame: Any) -> None:
        raise Hang()
    old = signal.signal(signal.SIGALRM, on_alarm)

    import hypothesis

    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[__import__("hypothesis").Phase.generate])
    @given(data=st.data())
    def one(data: Any) -> None:
        label, obj, members = data.draw(st.sampled_from(targets))
        obj = current[0].get(label, obj)
        closer = None
        if race_close:
            # never the system fd: the world is rebuilt on it
            victim = current[0].get(data.draw(st.sampled_from([label if label != "kvm" else "vm", "vm", "vm2"])),
                                    current[0]["vm"])
            delay = data.draw(st.sampled_from([0.0, 1e-5, 1e-4, 1e-3]))
            closer = threading.Thread(target=lambda: (time.sleep(delay), victim.close()) if hasattr(victim, "close")
                                      else None, daemon=True)
        kind, name = data.draw(st.sampled_from(members))
        if kind == "set":
            args: list[Any] = [data.draw(st.one_of(args_st, _plausible(names, "int bool")))]
            kwargs: dict[str, Any] = {}
        else:
            fn = getattr(obj, name)
            try:
                params = [p for p in inspect.signature(fn).parameters.values()
                          if p.kind not in (p.VAR_KEYWORD,)]
            except (TypeError, ValueError):
                params = []
            required = sum(1 for p in params if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD)
            n = data.draw(st.one_of(st.just(required), st.integers(0, len(params) + 1)))
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]

            def arg(p: Any) -> Any:
                wild = data.draw(st.integers(0, 9)) < 3
                return data.draw(args_st if wild or p is None else _plausible(names, str(p.annotation)))
            args = [arg(positional[i] if i < len(positional) else (positional[-1] if positional and
                    positional[-1].kind == positional[-1].VAR_POSITIONAL else None)) for i in range(n)]
            kw = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            kwargs = {p.name: arg(p) for p in kw if p.name not in [q.name for q in positional[:n]]
                      and data.draw(st.integers(0, 3)) == 0}
        call = f"{name}({', '.join(map(_short, args))}{', ' if args and kwargs else ''}" \
               f"{', '.join(f'{k}={_short(v)}' for k, v in kwargs.items())})"
        stats.calls += 1
        before = counting.writes
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if closer is not None:
                closer.start()
            if kind == "set":
                setattr(obj, name, args[0])
            else:
                r = getattr(obj, name)(*args, **kwargs)
                if inspect.isgenerator(r):
                    for _ in zip(range(1000), r):
                        pass
            stats.ok += 1
        except Hang:
            stats.violations.append(Violation(label, call, f"no answer in {timeout} s"))
        except ALLOWED as e:
            kind_name = type(e).__name__
            stats.refused[kind_name] = stats.refused.get(kind_name, 0) + 1
            if isinstance(e, (ValueError, TypeError)) and not isinstance(e, (KvmError, ClosedError)) \
                    and counting.writes != before and not _kernel_caused(e):
                stats.violations.append(Violation(label, call, f"{kind_name} after {counting.writes - before} "
                                                  f"state-changing ioctl(s): {e}", _tb(e)))
        except RecursionError as e:
            stats.violations.append(Violation(label, call, f"RecursionError: {str(e)[:200]}", _tb(e)))
        except Exception as e:   # noqa: BLE001 - anything else is the bug this looks for
            stats.violations.append(Violation(label, call, f"{type(e).__name__}: {str(e)[:300]}", _tb(e)))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if closer is not None:
                closer.join(timeout)
                if closer.is_alive():
                    stats.violations.append(Violation(label, call, f"close() racing it hung {timeout} s"))
                elif any(getattr(o, "closed", False) for o in current[0].values()):
                    _close_world(current[0], kvm)
                    current[0] = _world(kvm)
                    _WORLD.clear()
                    _WORLD.update(current[0])

    try:
        one()
    finally:
        signal.signal(signal.SIGALRM, old)
        _WORLD.clear()
        _close_world(world, kvm)
        _close_world(current[0], kvm)
        kvm._backend = counting._inner
    return stats


def _close_world(world: dict[str, Any], kvm: Any) -> None:
    for obj in reversed(list(world.values())):
        if obj is not kvm and hasattr(obj, "close"):
            try:
                obj.close()
            except Exception:   # noqa: BLE001 - teardown: each object is closed whatever the others do
                pass


def _kernel_caused(e: BaseException) -> bool:
    # a ValueError raised from a KvmError (e.g. a typed helper's decode of what the
    # kernel answered) is the kernel's refusal, re-labelled: not an argument refusal
    return isinstance(e.__cause__, KvmError) or isinstance(e.__context__, KvmError)


def _short(v: Any) -> str:
    return bounded_repr(v)


def _tb(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)[-4:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvmdev.fuzz_api", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="mock")
    p.add_argument("--arch", default=None)
    p.add_argument("--kernel", default=None, help="mock kernel profile (arm64)")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one call may take")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--race-close", action="store_true", help="close the target or its VM from another thread "
                   "at a random moment of each call")
    a = p.parse_args(argv)
    import kvmdev
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print("kvmdev.fuzz_api needs hypothesis (pip install 'kvmdev[test]')", file=sys.stderr)
        return 2
    opts: dict[str, Any] = {}
    if a.kernel:
        opts["kernel"] = a.kernel
    kvm = kvmdev.open(a.backend, arch=a.arch, **opts)
    from .chaos import _kvm_fds
    fds = _kvm_fds()
    t0 = time.monotonic()
    st = fuzz(kvm, a.examples, seed=a.seed, timeout=a.timeout, race_close=a.race_close)
    import gc
    gc.collect()
    leaked = _kvm_fds() - fds
    kvm.close()
    label = f"{kvm.backend} {kvm.arch}" + (f" {a.kernel}" if a.kernel else "") + f" seed {a.seed}" + (" race-close" if a.race_close else "")
    print(f"fuzz_api {label}: {st.calls} calls in {time.monotonic() - t0:.1f}s: {st.ok} returned, "
          f"refused {dict(sorted(st.refused.items()))}; {len(st.violations)} violation(s), "
          f"{len(leaked)} fd(s) left open")
    for v in st.violations[:50]:
        print(v)
    return 1 if st.violations or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
