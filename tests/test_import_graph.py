"""No import cycles among kvmdev's modules (the developers' guide).

The graph is what runs at import time: module-level imports (class bodies and
module-level if/try included; function bodies and ``if TYPE_CHECKING:`` blocks
left out).  Importing ``a.b.c`` also runs the ``__init__`` of each package on
the way (``a.b``) that is not already being imported as an ancestor of the
importer; ``from pkg import name`` depends on ``pkg.name`` when that is a
module, else on ``pkg`` itself.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

# the kvmdev package this run imports (the checkout's, or an installed wheel's), found
# without importing it
_SPEC = importlib.util.find_spec("kvmdev")
assert _SPEC is not None and _SPEC.origin is not None
ROOT = Path(_SPEC.origin).resolve().parent


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = ["kvmdev", *p.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue                                    # runs when called, not at import
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out += _import_nodes(node.body)
            out += _import_nodes(node.orelse)
        elif isinstance(node, ast.ClassDef):
            out += _import_nodes(node.body)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    stmts = [s for s in sub if isinstance(s, ast.stmt)]
                    stmts += [s for h in sub if isinstance(h, ast.ExceptHandler) for s in h.body]
                    out += _import_nodes(stmts)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        ancestors = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}

        def depend(target: str) -> None:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in mods and name not in ancestors and name != mod:
                    graph[mod].add(name)

        for node in _import_nodes(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    depend(alias.name)
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if not src.startswith("kvmdev"):
                continue
            for alias in node.names:
                sub = f"{src}.{alias.name}"
                if sub in mods:
                    depend(sub)
                else:
                    depend(src)
                    if src in ancestors:                # a name from a package being imported
                        graph[mod].add(src)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_graph_sees_the_imports() -> None:
    """The parser finds edges we know exist (so an empty graph cannot pass)."""
    g = import_graph()
    assert "kvmdev.errnos" in g["kvmdev.errors"]
    assert "kvmdev.attrs" in g["kvmdev.devices.x86"]
    assert "kvmdev.devices" in g["kvmdev"]


def test_cycle_detector_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
