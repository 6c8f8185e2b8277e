""".ci/run's step wrapper and closing summary: its exit status is the steps' status.

The summary runs from an EXIT trap under `set -euo pipefail`; a grep that finds no
"failed" in a green log once turned a green CI run into exit 1.  These tests run the
script's own preamble (everything before its first step) with stand-in steps.
"""
from __future__ import annotations

import pathlib
import subprocess

import pytest

pytestmark = pytest.mark.source_tree
ROOT = pathlib.Path(__file__).resolve().parent.parent
CI = ROOT / ".ci" / "run"
if not CI.exists():
    pytest.skip("source_tree: needs the checkout's .ci/run", allow_module_level=True)


def _run(tmp_path: pathlib.Path, steps: str) -> subprocess.CompletedProcess[str]:
    text = CI.read_text()
    head = text[: text.index("\nstep ")]   # the preamble: options, step(), summary, trap
    script = tmp_path / "ci"
    script.write_text(head.replace('cd "$(dirname "$0")/.."', f"cd {tmp_path}") + "\n" + steps + "\n")
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})


def test_green_run_exits_0_with_host_counts(tmp_path: pathlib.Path) -> None:
    r = _run(tmp_path, 'step test bash -c \'echo "1732 passed, 61 skipped in 1s" > "$0"\' "$HOSTLOG"\nstep other true')
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "host: 1732 passed, 0 failed, 61 skipped"
    assert any(line.split()[:1] == ["other"] and "FAILED" not in line for line in lines)


def test_failed_step_exits_nonzero_and_is_marked(tmp_path: pathlib.Path) -> None:
    r = _run(tmp_path, "step ok true\nstep bad false\nstep never true")
    assert r.returncode == 1
    assert "bad" in r.stdout and "FAILED (exit 1)" in r.stdout
    assert "=== CI step: never" not in r.stdout        # set -e: the run stops at the failure
    assert "CI wall time:" in r.stdout


def test_no_host_log_still_green(tmp_path: pathlib.Path) -> None:
    r = _run(tmp_path, "step ok true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host:" not in r.stdout
