"""The package as installed (these run against the wheel too, tools/test-wheel.sh) and, in the
checkout, the sdist: it carries what the wheel build needs, and the wheel built from it is
abi3 with the metadata below."""
from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import kvmdev

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")


def _installed() -> md.Distribution:
    """kvmdev's installed distribution (pip wrote INSTALLER), not an egg-info a build left in
    a checkout on sys.path."""
    dists = [d for d in md.distributions(name="kvmdev") if d.read_text("INSTALLER") is not None]
    assert dists, "kvmdev is not installed"
    return dists[0]


def test_version_has_one_source() -> None:
    """kvmdev.__version__, the installed metadata and `kvmdev --version` are kvmdev/_version.py's."""
    from kvmdev import _version
    assert kvmdev.__version__ == _version.__version__ == _installed().version
    for argv in ([sys.executable, "-m", "kvmdev", "--version"],):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"kvmdev {kvmdev.__version__}"


def test_licence_metadata_matches_the_licence_file() -> None:
    """PEP 639: a licence expression (no deprecated License field or licence classifier), and
    the LICENSE file it names is installed and is the MIT licence of the kvmdev authors."""
    dist = _installed()
    meta = dist.metadata
    assert meta["License-Expression"] == "MIT"
    assert meta.get("License") is None, "the deprecated License field is set"
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    assert meta.get_all("License-File") == ["LICENSE"]
    text = dist.read_text("licenses/LICENSE")
    assert text is not None, "the installed dist-info has no licenses/LICENSE"
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the kvmdev authors" in text
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    if (ROOT / "LICENSE").exists():
        assert (ROOT / "LICENSE").read_text() == text


def test_classifiers_name_the_supported_pythons() -> None:
    meta = _installed().metadata
    classifiers = meta.get_all("Classifier") or []
    for v in SUPPORTED:
        assert f"Programming Language :: Python :: {v}" in classifiers
    assert meta["Requires-Python"] == f">={SUPPORTED[0]}"
    assert "Operating System :: POSIX :: Linux" in classifiers and "Typing :: Typed" in classifiers


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` of a copy of the checkout (the sdist step writes an egg-info into the
    tree it builds): the sdist, then the wheel built from that sdist."""
    import shutil
    pytest.importorskip("build", reason="the test extra brings `build`: pip install -e '.[test]'")
    src = tmp_path_factory.mktemp("src") / "kvmdev"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "*.so",
                                                             "__pycache__", ".pytest_cache", ".hypothesis", "_kvm_*.c"))
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "-o", str(out), str(src)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    return out


@pytest.mark.source_tree
def test_sdist_builds_an_abi3_wheel(built: Path) -> None:
    """The sdist holds cdefs/ (setup.py's cffi_modules) and the licence; the wheel built from
    it is tagged cp310-abi3 and holds abi3 modules for every architecture."""
    v = kvmdev.__version__
    with tarfile.open(built / f"kvmdev-{v}.tar.gz") as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("cdefs/build.py", "cdefs/kvm_common.h", "cdefs/helpers.c", "cdefs/arch/arm64.h", "LICENSE",
              "CHANGELOG.md", "kvmdev/_version.py", "setup.py", "pyproject.toml"):
        assert f in names, f"the sdist lacks {f}"
    wheels = list(built.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.startswith(f"kvmdev-{v}-cp310-abi3-linux_"), wheels
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
        wheel_meta = z.read(f"kvmdev-{v}.dist-info/WHEEL").decode()
    assert "\nTag: cp310-abi3-" in wheel_meta
    for arch in ("x86_64", "arm64", "powerpc", "s390"):
        assert f"kvmdev/_kvm_{arch}.abi3.so" in names
    assert f"kvmdev-{v}.dist-info/licenses/LICENSE" in names


def test_installed_check_stops_a_run_importing_kvmdev_elsewhere(tmp_path: Path) -> None:
    """KVMDEV_EXPECT_FROM (tools/test-wheel.sh, test-guests.sh --wheel) is a real check: naming
    a directory kvmdev was not imported from stops pytest with a usage error before any test."""
    import os
    here = Path(__file__).resolve()
    env = dict(os.environ, KVMDEV_EXPECT_FROM=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{here}::test_classifiers_name_the_supported_pythons"],
                       cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, (p.stdout[-2000:], p.stderr[-2000:])
    assert f"KVMDEV_EXPECT_FROM={tmp_path}: imported kvmdev from" in p.stderr
