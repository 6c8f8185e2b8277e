"""Every snippet of README.md runs: ``python`` blocks are executed (a block that
starts ``# file: NAME`` is a test file, run with pytest as its console block
says), ``pycon`` blocks are doctests, ``$ kvmdev`` and ``$ pytest`` lines of
``console`` blocks are run and must succeed."""
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
BLOCKS = re.findall(r"^```(python|pycon|console)\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)


def _ids(kind: str) -> list[tuple[int, str]]:
    return [(i, text) for i, (k, text) in enumerate(BLOCKS) if k == kind]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KVMDEV_BACKEND"}


@pytest.mark.parametrize("index,code", [b for b in _ids("python") if not b[1].startswith("# file:")],
                         ids=lambda v: str(v) if isinstance(v, int) else "")
def test_python_block(index: int, code: str, capsys) -> None:
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})


def test_pycon_blocks() -> None:
    for index, text in _ids("pycon"):
        test = doctest.DocTestParser().get_doctest(text, {}, f"README block {index}", "README.md", 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test)
        assert runner.failures == 0, f"README pycon block {index} failed"


def test_console_lines(tmp_path: Path) -> None:
    """Each ``$ kvmdev`` / ``$ pytest`` line exits 0; the README's test files are
    written first, so the pytest lines run them."""
    for _, code in _ids("python"):
        if code.startswith("# file:"):
            (tmp_path / code.split("\n", 1)[0].split(":", 1)[1].strip()).write_text(code)
    ran = 0
    for _, text in _ids("console"):
        for line in text.splitlines():
            if not line.startswith("$ "):
                continue
            argv = shlex.split(line[2:])
            cmd = [sys.executable, "-m", "kvmdev" if argv[0] == "kvmdev" else "pytest", *argv[1:]]
            out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
            assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
            ran += 1
    assert ran >= 7


def test_api_reference_is_current() -> None:
    """docs/API.md is what tools/api_doc.py renders from today's docstrings."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("api_doc", ROOT / "tools" / "api_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "API.md").read_text() == mod.render(), "run `make docs`"
