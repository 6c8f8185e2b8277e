"""What the REPL and IPython show: reprs with decoded fields, pretty printers,
TAB completion of register names."""
from __future__ import annotations

import kvmdev
from kvmdev.devices import gicstate


class Pretty:
    """The two methods of IPython's pretty printer that _repr_pretty_ uses."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def text(self, s: str) -> None:
        self.out.append(s)

    def break_(self) -> None:
        self.out.append("\n")


def pretty(obj: object) -> str:
    p = Pretty()
    obj._repr_pretty_(p, False)  # type: ignore[attr-defined]
    return "".join(p.out)


def test_register_values_and_frames() -> None:
    with kvmdev.open("mock", arch="arm64") as k, k.create_vm() as vm:
        c = vm.create_vcpu(0)
        c.vcpu_init(["PSCI_0_2"])
        g = vm.create_device("ARM_VGIC_V3")
        g.dist_base, g.redist_base = 0x08000000, 0x080A0000
        g.init()
        typer = g.dist["GICD_TYPER"]
        assert typer == 0x480007 and repr(typer) == "GICD_TYPER=0x480007 (ITLinesNumber=0x7, IDbits=0x9)"
        assert "  ITLinesNumber    0x7" in pretty(typer)
        assert repr(g.dist).startswith("<kvmdev.devices.vgic.Registers GICD (GICv3) of <kvmdev.devices.vgic.VgicV3")
        assert "GICD_IROUTER<n>  +0x6100  64 bits" in pretty(g.dist)
        assert "GICD_IROUTER40" in g.dist._ipython_key_completions_()
        assert "ICC_PMR_EL1" in g.cpu_sysreg(c)._ipython_key_completions_()
        assert repr(g.cpu_sysreg(c)["ICC_SRE_EL1"]) == "ICC_SRE_EL1=0x7 (SRE=0x1, DFB=0x1, DIB=0x1)"
        text = pretty(g)
        assert "KVM_DEV_ARM_VGIC_GRP_ADDR (0)" in text and "KVM_VGIC_V3_ADDR_TYPE_DIST  [__u64, rw]" in text
        doc = gicstate.save(g, [c])
        assert repr(doc) == "<GicDocument kvmdev.gic v2: GICv3, NR_IRQS 256, 1 vCPUs, 0 ITS, 0 memory ranges>"
        assert "vCPU 0x80000000: redist 17, icc 9" in pretty(doc)


def test_vcpu_attr_docs() -> None:
    """Typed attributes carry the doc's words."""
    assert "PPI" in kvmdev.Vcpu.set_timer_irq.__doc__  # type: ignore[attr-defined]
    assert "ENXIO until set" in kvmdev.Vcpu.pmu_irq.__doc__  # type: ignore[attr-defined]
