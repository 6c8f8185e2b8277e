"""The command line as a Unix tool, run as a subprocess: quiet on a closed
pipe, documented exit codes, help on every option, errors naming the file and
what is wrong with it, values checked against their width."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvmdev
from kvmdev import cli as kcli
from kvmdev.devices import gicstate


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMDEV_")}
    return subprocess.run([sys.executable, "-m", "kvmdev", *argv], env=env, capture_output=True, text=True,
                          input=stdin, timeout=120)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("docs")
    with kvmdev.open("mock", arch="arm64") as k, k.create_vm() as vm:
        cpus = [vm.create_vcpu(i) for i in range(8)]
        for c in cpus:
            c.vcpu_init(["PSCI_0_2"])
        g = vm.create_device("ARM_VGIC_V3")
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        a = gicstate.save(g, cpus)
        g.dist["GICD_ISENABLER1"] = 0x3
        b = gicstate.save(g, cpus)
    out = {"a": d / "a.json", "b": d / "b.json"}
    out["a"].write_text(gicstate.dumps(a))
    out["b"].write_text(gicstate.dumps(b))
    text = gicstate.dumps(a)
    out["truncated"] = d / "truncated.json"
    out["truncated"].write_text(text[:len(text) // 2])
    edited = json.loads(text)
    edited["dist"]["GICD_CTLR"] ^= 1
    out["edited"] = d / "edited.json"
    out["edited"].write_text(json.dumps(edited))
    for name, value in (("list", "[1, 2]"), ("number", "42"), ("nulls", json.dumps({k: None for k in a})),
                        ("deep", "[" * 100000 + "]" * 100000), ("binary", "\udcff")):
        out[name] = d / f"{name}.json"
        out[name].write_bytes(value.encode("utf-8", "surrogateescape"))
    return out


def test_closed_pipe_ends_quietly(docs: dict[str, Path]) -> None:
    """| head: no BrokenPipeError traceback, the status of a tool ended by SIGPIPE."""
    many = " ".join([str(docs["a"])] * 100)       # megabytes: far past the pipe's buffer
    p = subprocess.run(f"{sys.executable} -m kvmdev snapshot show {many} | head -n 1; "
                       "echo \"status ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                       capture_output=True, text=True, timeout=120)
    assert p.stderr == "" and p.stdout.startswith("kvmdev.gic v2: GICv3")
    assert p.stdout.splitlines()[-1] == "status 141"


def test_exit_codes(docs: dict[str, Path]) -> None:
    assert cli("snapshot", "diff", str(docs["a"]), str(docs["a"])).returncode == kcli.EXIT_OK == 0
    r = cli("snapshot", "diff", str(docs["a"]), str(docs["b"]))
    assert r.returncode == kcli.EXIT_DIFFERENT == 1 and "dist GICD_ISENABLER1: 0x0 -> 0x3" in r.stdout
    assert cli("probe", "--bogus").returncode == kcli.EXIT_USAGE == 2
    assert cli("decode", "GICD_NOPE", "1").returncode == 2
    r = cli("--backend", "mock", "--arch", "arm64", "snapshot", "show", str(docs["a"]))
    assert r.returncode == 2
    assert cli("snapshot", "show", str(docs["truncated"])).returncode == kcli.EXIT_INPUT == 4
    assert kcli.EXIT_KVM == 3   # a KVM refusal: test_backend_choice (real backend, /dev/kvm missing)
    assert all(f"{n} " in kcli.__doc__ for n in range(5))


def test_every_option_has_help() -> None:
    p = kcli._parser()
    subs = [a for a in p._actions if isinstance(a, type(p._subparsers._group_actions[0]))][0]  # type: ignore
    for parser in [p, *subs.choices.values()]:
        for action in parser._actions:
            if action.option_strings and action.dest != "help" or action.dest not in ("help", "cmd"):
                assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("name, message", [
    ("truncated", "truncated.json: not valid JSON (truncated?)"),
    ("list", "list.json: not a kvmdev.gic document: the top level is a JSON array, not an object"),
    ("number", "number.json: not a kvmdev.gic document: the top level is a JSON number, not an object"),
    ("nulls", "nulls.json: not a kvmdev.gic document: format is None"),
    ("deep", "deep.json: JSON nested too deeply"),
    ("binary", "binary.json: not text (UTF-8)"),
])
def test_bad_documents_name_the_file_and_the_problem(docs: dict[str, Path], name: str, message: str) -> None:
    for action in (("show", str(docs[name])), ("diff", str(docs["a"]), str(docs[name]))):
        r = cli("snapshot", *action)
        assert r.returncode == 4, (action, r.stdout, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_altered_document_is_reported_not_shown(docs: dict[str, Path]) -> None:
    r = cli("snapshot", "show", str(docs["edited"]))
    assert r.returncode == 4 and r.stdout == ""
    assert "edited.json: the sha256 does not match the content: the document was altered or corrupted" in r.stderr
    r = cli("snapshot", "show", "--ignore-checksum", str(docs["edited"]))
    assert r.returncode == 0 and "warning: " in r.stderr and "dist GICD_CTLR" in r.stdout


def test_input_is_read_with_a_bound(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(kcli.MAX_DOCUMENT_BYTES + 10)
    r = cli("snapshot", "show", str(big))
    assert r.returncode == 4 and "big.json: larger than 64 MiB" in r.stderr
    r = cli("snapshot", "show", "-", stdin="[]")
    assert r.returncode == 4 and "-: not a kvmdev.gic document" in r.stderr


def test_out_of_range_values_are_refused() -> None:
    r = cli("decode", "GICD_TYPER", "--", "-1")
    assert r.returncode == 2 and "GICD_TYPER is a 32-bit register: a register value is not negative (-1)" in r.stderr
    r = cli("decode", "GICD_TYPER", "0x1ffffffff")
    assert r.returncode == 2 and "GICD_TYPER is a 32-bit register: 0x1ffffffff does not fit" in r.stderr
    r = cli("decode", "GICD_TYPER", "0xffffffff")
    assert r.returncode == 0
    r = cli("decode", "attr", "--group", "REDIST_REGS", str(1 << 64))
    assert r.returncode == 2 and "attr is a __u64" in r.stderr
    r = cli("decode", "GICD_TYPER", "zz")
    assert r.returncode == 2 and "not an integer: 'zz'" in r.stderr


def test_unknown_device_names_the_nearest() -> None:
    r = cli("decode", "attr", "--device", "vgic-v9", "--group", "DIST_REGS", "0")
    assert r.returncode == 2 and "unknown device 'vgic-v9' (--device); did you mean vgic-v5 or vgic-v3" in r.stderr


def test_gicstate_loads_refuses_deep_nesting() -> None:
    with pytest.raises(gicstate.SnapshotError, match="nested too deeply"):
        gicstate.loads("[" * 100000 + "]" * 100000)
