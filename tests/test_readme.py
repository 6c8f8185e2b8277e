"""Every snippet of README.md and of each docs/*.md page runs: ``python`` blocks are
executed (a block that starts ``# file: NAME`` is a test file, run with pytest as its
console block says), ``pycon`` blocks are doctests, ``$ kvmdev`` and ``$ pytest`` lines of
``console`` blocks are run and must succeed.  A block that must not run (it needs hardware
this machine lacks, or shows output) uses another fence (``text``, ``sh``).  docs/API.md
must be what tools/api_doc.py renders today, and no page may point to a file that is not
in the repository."""
from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.source_tree
if not (ROOT / "README.md").exists() or not (ROOT / "docs").is_dir():
    pytest.skip(f"source_tree: needs the checkout's README.md and docs/ (not in {ROOT}); runs in the in-tree run",
                allow_module_level=True)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(python|pycon|console)\n(.*?)^```", re.M | re.S)


def _blocks(kind: str) -> list[tuple[str, str]]:
    """(id, text) of every block of that kind: id is 'page:line'."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == kind:
                out.append((f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(2)))
    return out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KVMDEV_BACKEND"}


@pytest.mark.parametrize("where,code", [b for b in _blocks("python") if not b[1].startswith("# file:")],
                         ids=lambda v: v if ":" in v and "\n" not in v else "")
def test_python_block(where: str, code: str, capsys) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("where,text", _blocks("pycon"), ids=lambda v: v if ":" in v and "\n" not in v else "")
def test_pycon_block(where: str, text: str) -> None:
    test = doctest.DocTestParser().get_doctest(text, {}, where, where.split(":")[0], 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"pycon block {where} failed"


def test_console_lines(tmp_path: Path) -> None:
    """Each ``$ kvmdev`` / ``$ pytest`` line exits 0; the pages' test files are written
    first, so the pytest lines run them."""
    for _, code in _blocks("python"):
        if code.startswith("# file:"):
            (tmp_path / code.split("\n", 1)[0].split(":", 1)[1].strip()).write_text(code)
    ran = 0
    for where, text in _blocks("console"):
        for line in text.splitlines():
            if not line.startswith("$ "):
                continue
            argv = shlex.split(line[2:])
            cmd = [sys.executable, "-m", "kvmdev" if argv[0] == "kvmdev" else "pytest", *argv[1:]]
            out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
            assert out.returncode == 0, f"{where}: {line}\n{out.stdout}\n{out.stderr}"
            ran += 1
    assert ran >= 7


def test_every_docs_page_is_run_and_linked() -> None:
    """The README links every docs/ page, and the pages hold runnable blocks between them
    (so moving text out of the README did not move it out of the tests)."""
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    assert len(_blocks("python")) + len(_blocks("pycon")) >= 7   # the README had 7 before the move


def test_no_link_to_a_missing_file() -> None:
    """Every relative link and every `path/like/this.ext` a page names exists in the repository
    (the README once pointed to notes outside it)."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not (page.parent / target).resolve().exists():
                missing.append(f"{page.name}: link {target}")
        for path in re.findall(r"`((?:kvmdev|tests|tools|examples|bench|cdefs|docs)/[\w./-]+\.(?:py|sh|md|c|h))`", text):
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, missing


def test_no_reference_to_notes_outside_the_repository() -> None:
    """Issue notes and closing notes are not shipped: a page may not send the reader there."""
    for page in PAGES:
        found = re.findall(r"(?i)closing notes|notes of issue|\bnotes/", page.read_text())
        assert not found, f"{page.name} points to notes outside the repository: {found}"


def test_readme_is_the_entry_page() -> None:
    """Short, one section per kind of user (other sections merge in beside them), the support
    matrix, the make targets with their CI cost, and the links to docs/."""
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 260, f"README.md has {text.count(chr(10))} lines; move detail to docs/"
    heads = re.findall(r"^## (.+)$", text, re.M)
    for h in ("Set-up on a fresh machine: two commands", "For VMM authors", "For kernel regression testers",
              "For explorers", "Support matrix", "Documentation", "Make targets", "Dependencies"):
        assert h in heads, f"README.md lacks the section '{h}'"
    table = text[text.index("## Make targets"):]
    assert "| target | what | CI cost |" in table
    for target in ("test", "dist", "test-wheel", "test-arm64-wheel"):
        assert f"| `make {target}` |" in table, f"the make targets table lacks make {target}"


def _api_doc():
    import importlib.util
    spec = importlib.util.spec_from_file_location("api_doc", ROOT / "tools" / "api_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_reference_is_current() -> None:
    """docs/API.md is what tools/api_doc.py renders from today's docstrings."""
    assert (ROOT / "docs" / "API.md").read_text() == _api_doc().render(), "run `make docs`"


@pytest.mark.parametrize("call", ["has_attr", "get_attr", "set_attr", "attr_ioctl", "attr_batch"])
def test_api_reference_has_the_generic_calls(call: str) -> None:
    """The generic attribute calls live on a private base class shared by Kvm, Vm, Vcpu and
    Device; the reference documents them (with their signature and docstring), wherever the
    class is defined."""
    import kvmdev
    api = (ROOT / "docs" / "API.md").read_text()
    doc = (getattr(kvmdev.Device, call).__doc__ or "").strip().splitlines()[0]
    assert re.search(rf"^### `\w+\.{call}\(self, ", api, re.M), f"docs/API.md lacks {call}'s signature"
    assert doc in api, f"docs/API.md lacks {call}'s docstring"
