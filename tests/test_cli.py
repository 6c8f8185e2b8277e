"""The command line (kvmdev.cli): probe, decode, encode, snapshot; --json."""
from __future__ import annotations

import io
import json

import pytest

import kvmdev
from kvmdev import cli
from kvmdev.devices import gicstate


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_probe_json(kvm: kvmdev.Kvm, capsys) -> None:
    """probe on this backend: the API version, the device types TEST says can be
    created, and the attributes HAS answers yes to, by name."""
    rc, out, err = run(capsys, "--json", "--backend", kvm.backend, "probe")
    p = json.loads(out)
    assert rc == 0 and err == ""
    assert p["api_version"] == 12 and p["arch"] == kvm.arch and "VFIO" in p["device_types"]
    assert p["devices"]["VFIO"]["attrs"] == ["KVM_DEV_VFIO_FILE/KVM_DEV_VFIO_FILE_ADD",
                                             "KVM_DEV_VFIO_FILE/KVM_DEV_VFIO_FILE_DEL"]
    if kvm.arch == "x86_64":
        assert p["vcpu"] == ["KVM_VCPU_TSC_CTRL/KVM_VCPU_TSC_OFFSET"]


@pytest.mark.arm64
def test_probe_arm64(arm64_kvm, arm64_gic, capsys) -> None:
    """probe of an arm64 KVM (in the guests: the real kernel), registers included."""
    p = cli.probe(arm64_kvm, registers=True)
    want = {"VFIO", "ARM_VGIC_V3", "ARM_VGIC_ITS"} if arm64_gic == 3 else {"VFIO", "ARM_VGIC_V2"}
    assert set(p["device_types"]) == want
    assert "KVM_ARM_VCPU_TIMER_CTRL/KVM_ARM_VCPU_TIMER_IRQ_VTIMER" in p["vcpu"]
    if arm64_gic == 3:
        regs = p["devices"]["ARM_VGIC_V3"]["registers"]
        # no NR_IRQS set: per-IRQ registers reach the private IRQs only (no SPI is allocated)
        assert {"GICD_TYPER", "GICD_ISENABLER0", "GICD_IPRIORITYR7"} <= set(regs["DIST_REGS"])
        assert not {"GICD_ISENABLER1", "GICD_IPRIORITYR8", "GICD_IROUTER32"} & set(regs["DIST_REGS"])
        assert "GICR_TYPER" in regs["REDIST_REGS"] and "ICC_PMR_EL1" in regs["CPU_SYSREGS"]
        assert "GITS_CBASER" in p["devices"]["ARM_VGIC_ITS"]["registers"]["ITS_REGS"]
    else:
        assert "GICC_PMR" in p["devices"]["ARM_VGIC_V2"]["registers"]["CPU_REGS"]


def test_probe_text_and_progress(capsys) -> None:
    rc, out, err = run(capsys, "--backend", "mock", "--arch", "arm64", "probe", "--registers")
    assert rc == 0 and "device types (KVM_CREATE_DEVICE_TEST): VFIO, ARM_VGIC_V3, ARM_VGIC_ITS" in out
    assert "DIST_REGS: 24 registers" in out and "GICD_IPRIORITYR0..GICD_IPRIORITYR7" in out
    assert err == ""                                   # piped: no progress
    tty = io.StringIO()
    tty.isatty = lambda: True                          # type: ignore[method-assign]
    p = cli.Progress("probing", tty)
    p(64, 128)
    p(128, 128)
    assert tty.getvalue() == "\rprobing: 64/128\rprobing: 128/128\n"


def test_decode_encode(capsys) -> None:
    rc, out, _ = run(capsys, "--json", "decode", "GICD_TYPER", "0x00480007")
    assert rc == 0 and json.loads(out)["fields"]["ITLinesNumber"] == 7 and json.loads(out)["fields"]["IDbits"] == 9
    rc, out, _ = run(capsys, "--json", "decode", "attr", "--device", "vgic-v3", "--group", "REDIST_REGS",
                     "0x0000010000010100")
    d = json.loads(out)
    assert (d["mpidr_affinity"], d["register"]) == ("0.0.1.0", "GICR_ISENABLER0")
    rc, out, _ = run(capsys, "encode", "attr", "--device", "vgic-v3", "--group", "REDIST_REGS", "--mpidr",
                     "0x100", "GICR_ISENABLER0")
    assert out.strip() == "0x0000010000010100"
    rc, out, _ = run(capsys, "--json", "decode", "attr", "--device", "vgic-v3", "--group", "CPU_SYSREGS",
                     hex(cli.encode_attr("vgic-v3", "CPU_SYSREGS", "ICC_PMR_EL1", mpidr=0x80000003)))
    assert json.loads(out)["register"] == "ICC_PMR_EL1" and json.loads(out)["mpidr_affinity"] == "0.0.0.3"
    rc, out, _ = run(capsys, "--gic", "2", "decode", "GICD_CTLR", "1")
    assert "EnableGrp0       0x1" in out
    rc, _, err = run(capsys, "decode", "GICX_FOO", "1")
    assert rc == 2 and "unknown register" in err


def test_snapshot_show_diff(tmp_path, capsys) -> None:
    with kvmdev.open("mock", arch="arm64") as k, k.create_vm() as vm:
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2"])
        g = vm.create_device("ARM_VGIC_V3")
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        a = gicstate.save(g, [c])
        g.dist["GICD_ISENABLER1"] = 0x3
        b = gicstate.save(g, [c])
    (tmp_path / "a.json").write_text(gicstate.dumps(a))
    (tmp_path / "b.json").write_text(gicstate.dumps(b))
    rc, out, _ = run(capsys, "snapshot", "diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert rc == 1 and out.strip() == "dist GICD_ISENABLER1: 0x0 -> 0x3"
    rc, out, _ = run(capsys, "snapshot", "show", str(tmp_path / "b.json"))
    assert rc == 0 and "GICv3, NR_IRQS 256, 1 vCPUs" in out and "dist GICD_ISENABLER1" in out
