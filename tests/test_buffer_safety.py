"""Buffer safety: kvmdev never hands the kernel a buffer narrower than what it
copies.  (1) The guard mode (open(..., guard_buffers=True)) catches a kernel
writing past a GET buffer (guard bytes) or reading past a SET buffer (a guard
page).  (2) Every attribute of every table this KVM answers for is read in
guard mode, and (3) the bytes the kernel really writes are measured (a buffer
pre-filled with two patterns) and must equal the table's width.  (4) Every
settable attribute is written from a buffer that ends at a guard page: one
byte short of the table's width faults (the kernel reads all of it), the full
width does not (it reads no more).  On the real x86 kernel and, for arm64,
inside the real 6.12 and 6.1 guests."""
from __future__ import annotations

import errno as E

import pytest
from typing import Any

import kvmdev
from kvmdev.backends.guard import BufferOverrun, GuardPage

SET = "KVM_SET_DEVICE_ATTR"

GET = "KVM_GET_DEVICE_ATTR"


def written(target, group, attr, value_in=None) -> int:
    """How many bytes the kernel writes for a GET (0 if it fails): the furthest
    byte that differs from what the buffer held, over two fill patterns.
    ``value_in(pattern)``: bytes the call takes as input, put first."""
    ffi = target._arch.ffi
    extent = 0
    for pattern in (0xA5, 0x5A):
        before = bytearray([pattern]) * 64
        if value_in is not None:
            head = value_in(pattern)
            before[:len(head)] = head
        buf = ffi.new("unsigned char[]", 64)
        ffi.memmove(buf, bytes(before), 64)
        try:
            target.attr_ioctl(GET, group, attr, int(ffi.cast("uintptr_t", buf)))
        except kvmdev.KvmError:
            return 0
        data = bytes(ffi.buffer(buf, 64))
        extent = max(extent, max((i + 1 for i in range(64) if data[i] != before[i]), default=0))
    return extent


def _readable(target) -> list[tuple[int, int, str]]:
    """(group, attr, ctype) of table attributes that HAS says yes to and can be read."""
    t = target.attr_table
    out = []
    for g, attrs in t.attrs.items():
        for a, spec in attrs.items():
            if spec.ctype and "r" in spec.access and target.has_attr(g, a):
                out.append((g, a, spec.ctype))
    return out


def _settable(target) -> list[tuple[int, int, str]]:
    """(group, attr, ctype) of table attributes with a payload that can be set and
    that HAS says yes to ([] where the fd has no attribute ioctls at all)."""
    t = target.attr_table
    out = []
    for g, attrs in t.attrs.items():
        for a, spec in attrs.items():
            if spec.ctype and "w" in spec.access:
                try:
                    if target.has_attr(g, a):
                        out.append((g, a, spec.ctype))
                except kvmdev.KvmError:
                    return []
    return out


def read_extent(target, group: int, attr: int, width: int, page: GuardPage) -> tuple[int, int]:
    """SET from ``width - 1`` bytes, then ``width`` bytes, each ending at the guard
    page (the value: what GET reads where it can, else zeros); the two errnos
    (0 for success).  EFAULT, then anything else: the kernel reads exactly ``width``."""
    ffi = target._arch.ffi
    try:
        value = bytes(target.get_attr(group, attr, ctype=f"unsigned char[{width}]"))
    except kvmdev.KvmError:
        value = bytes(width)
    out = []
    for n in (width - 1, width):
        at = page.at_end(n)
        ffi.memmove(ffi.cast("void *", at), value[:n], n)
        try:
            target.attr_ioctl(SET, group, attr, at)
            out.append(0)
        except kvmdev.KvmError as e:
            out.append(-1 if e.errno is None else e.errno)
    return out[0], out[1]


def _check_set_widths(targets, registers=()) -> list[str]:
    """read_extent over every settable table attribute of ``targets`` and over
    ``registers``: (target, group, attr, width, label) of register accesses."""
    page, checked = GuardPage(), []
    items = [(t, g, a, _width(t, c), t.attr_table.attr_name(g, a)) for t in targets for g, a, c in _settable(t)]
    for target, group, attr, width, name in [*items, *registers]:
        short, full = read_extent(target, group, attr, width, page)
        assert (short, full != E.EFAULT) == (E.EFAULT, True), (target, name, short, full)
        checked.append(name)
    return checked


ICC_NAMES = ("ICC_PMR_EL1", "ICC_BPR0_EL1", "ICC_AP0R0_EL1", "ICC_AP1R0_EL1", "ICC_BPR1_EL1",
             "ICC_CTLR_EL1", "ICC_SRE_EL1", "ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1")


def _frame_extents(regs) -> list[str]:
    """Every register kind of a typed frame (its first element; both 32-bit halves
    of a 64-bit register where the group splits them) whose GET succeeds: the
    bytes the kernel writes must equal the width of the group's table entry."""
    t = regs.dev.attr_table
    g = t.group_value(regs.group)
    out = []
    for r in regs.frame.regs.values():
        offs = [r.offset] + ([r.offset + 4] if r.width == 64 and regs.halves else [])
        for off in offs:
            attr = regs.prefix | off
            want = _group_width(regs.dev, g, attr)
            try:
                regs.dev.get_attr(g, attr)
            except kvmdev.KvmError:
                continue        # write-only, or not there on this kernel
            assert written(regs.dev, g, attr) == want, (regs.group, r.name, off)
            out.append(r.name)
    return out


def _group_width(target, group: int | str, attr: int) -> int:
    """The width the table gives an attribute of ``group`` (a register offset, an MPIDR...)."""
    t = target.attr_table
    spec = t.spec(t.group_value(group), attr)
    assert spec is not None and spec.ctype, (group, attr)
    return _width(target, spec.ctype)


def _width(target, ctype: str) -> int:
    ffi = target._arch.ffi
    return int(ffi.sizeof(ctype))


def _narrow_table_entry(monkeypatch: pytest.MonkeyPatch, cpu: Any) -> None:
    """Make the vCPU table say u32 for the kernel's u64 KVM_VCPU_TSC_OFFSET: the
    kind of table bug guard mode exists to catch (a caller's narrower ctype= is
    refused before the ioctl, so only a wrong table can reach the kernel)."""
    import dataclasses
    t = cpu.attr_table
    g = t.group_value("KVM_VCPU_TSC_CTRL")
    a = t.attr_value(g, "KVM_VCPU_TSC_OFFSET")
    monkeypatch.setitem(t.attrs[g], a, dataclasses.replace(t.attrs[g][a], ctype="__u32"))
    monkeypatch.setattr(cpu, "_specs", {})   # resolved entries are cached per fd


def test_guard_mode_catches_a_narrow_buffer(kvm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same kernel, a table with a wrong width (a u32 for the kernel's u64):
    guard mode raises BufferOverrun naming the attribute; nothing is corrupted."""
    with kvmdev.open(kvm.backend, arch=kvm.arch, guard_buffers=True) as g:
        if g.arch != "x86_64":
            pytest.skip("the x86 vCPU TSC attribute is the u64 used here")
        with g.create_vm() as vm:
            cpu = vm.create_vcpu(0)
            assert cpu.tsc_offset == 0                           # the table's u64: fine
            _narrow_table_entry(monkeypatch, cpu)
            with pytest.raises(BufferOverrun, match=r"wrote 4 byte\(s\) past the 4-byte buffer"):
                cpu.get_attr("KVM_VCPU_TSC_CTRL", "KVM_VCPU_TSC_OFFSET")


def test_guard_page_catches_a_narrow_set_buffer(kvm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SET buffer narrower than what the kernel reads (a table's u32 for the
    kernel's u64): guard mode raises BufferOverrun, and nothing was set."""
    with kvmdev.open(kvm.backend, arch=kvm.arch, guard_buffers=True) as g:
        if g.arch != "x86_64":
            pytest.skip("the x86 vCPU TSC attribute is the u64 used here")
        with g.create_vm() as vm:
            cpu = vm.create_vcpu(0)
            cpu.tsc_offset = 0
            _narrow_table_entry(monkeypatch, cpu)
            with pytest.raises(BufferOverrun, match=r"read past the 4-byte buffer"):
                cpu.set_attr("KVM_VCPU_TSC_CTRL", "KVM_VCPU_TSC_OFFSET", 7)
            monkeypatch.undo()
            assert cpu.tsc_offset == 0


def test_x86_set_widths_match_the_kernel(kvm) -> None:
    """Every settable attribute of the vCPU and VFIO tables: the kernel reads
    exactly the table's width (guard page one byte short: EFAULT)."""
    with kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        targets = [kvm, vm, cpu] + [vm.create_device(t) for t in ("VFIO",) if vm.supports_device(t)]
        checked = _check_set_widths(targets)
    if kvm.arch == "x86_64":
        assert {"KVM_VCPU_TSC_OFFSET", "KVM_DEV_VFIO_FILE_ADD", "KVM_DEV_VFIO_FILE_DEL"} <= set(checked)


def test_x86_tables_match_the_kernel(kvm) -> None:
    """Every readable attribute of the system, VM, vCPU and device tables: read in
    guard mode, and the kernel writes exactly the table's width."""
    with kvmdev.open(kvm.backend, arch=kvm.arch, guard_buffers=True) as g, g.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        targets = [g, vm, cpu] + [vm.create_device(t) for t in ("VFIO",) if vm.supports_device(t)]
        checked = 0
        for target in targets:
            for group, attr, ctype in _readable(target):
                target.get_attr(group, attr)
                assert written(target, group, attr) == _width(target, ctype), (target, group, attr)
                checked += 1
        assert checked >= (2 if g.arch == "x86_64" else 0)


@pytest.mark.arm64
def test_arm64_tables_match_the_kernel(arm64_kvm, arm64_gic) -> None:
    """The VGIC, ITS and vCPU tables of an arm64 KVM: every named attribute and a
    register of every register group, in guard mode, and the kernel's write
    width against the table's."""
    backend, host = arm64_kvm.backend, {}
    if backend == "mock":
        host = {"kernel": arm64_kvm._backend.host.kernel, "gic": arm64_gic}   # type: ignore[attr-defined]
    with kvmdev.open(backend, arch="arm64", guard_buffers=True, **host) as k, k.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        cpu.vcpu_init(["PSCI_0_2", "PMU_V3"])
        gic = vm.create_device("ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2")
        devs = [gic] + ([vm.create_device("ARM_VGIC_ITS")] if arm64_gic == 3 else [])
        if arm64_gic == 3:
            devs[1].base = 0x08080000
            gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
        else:
            gic.dist_base, gic.cpu_base = 0x08000000, 0x08010000
        gic.init()
        cpu.pmu_irq = 23
        checked = []
        for target in [cpu] + devs:
            for group, attr, ctype in _readable(target):
                target.get_attr(group, attr)
                want = _width(target, ctype)
                value_in = None
                if target.attr_table.attr_name(group, attr) == "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION":
                    # the region index (bits 11:0) goes in the buffer: index 0, the rest the pattern
                    value_in = lambda p: (int.from_bytes(bytes([p]) * 8, "little") & ~0xFFF).to_bytes(8, "little")  # noqa: E731
                assert written(target, group, attr, value_in) == want, (target, group, attr)
                checked.append(target.attr_table.attr_name(group, attr))
        # register groups: every register kind of every typed frame (both halves of a
        # 64-bit register the docs split), against the width the group's table entry gives
        from kvmdev.devices.vgic import VgicV3
        frames = ([gic.dist, gic.redist(cpu), devs[1].regs] if isinstance(gic, VgicV3) else [gic.dist, gic.cpu(cpu)])
        for regs in frames:
            measured = _frame_extents(regs)
            # every kind reads on 6.12 and 6.1 (write-only ones read as zero)
            assert len(measured) == sum(1 + (r.width == 64 and regs.halves) for r in regs.frame.regs.values()), \
                (regs.group, measured)
            checked.extend(measured)
        if isinstance(gic, VgicV3):
            icc = gic.cpu_sysreg(cpu)
            g = gic.attr_table.group_value(icc.group)
            for name in ICC_NAMES:
                attr = icc.attrs_of(name)[0]
                assert written(gic, g, attr) == _group_width(gic, g, attr), name
                checked.append(name)
        assert "KVM_ARM_VCPU_TIMER_IRQ_VTIMER" in checked and "KVM_ARM_VCPU_PMU_V3_IRQ" in checked


@pytest.mark.arm64
def test_arm64_set_widths_match_the_kernel(arm64_kvm, arm64_gic, arm64_kernel) -> None:
    """Every settable attribute of the vCPU, VM, VGIC and ITS tables, NR_IRQS, and a
    register of every register group (after CTRL_INIT, before the PMU is
    initialized, so each reaches its copy): the kernel reads exactly the
    table's width.  6.1 has no VM attributes at all."""
    from kvmdev.devices.vgic import VgicV3
    with arm64_kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        cpu.vcpu_init(["PSCI_0_2", "PMU_V3"])
        gic = vm.create_device("ARM_VGIC_V3" if arm64_gic == 3 else "ARM_VGIC_V2")
        devs = [gic] + ([vm.create_device("ARM_VGIC_ITS")] if arm64_gic == 3 else [])
        if isinstance(gic, VgicV3):
            devs[1].base = 0x08080000
            gic.dist_base, gic.redist_base = 0x08000000, 0x080A0000
            frames = [gic.dist, gic.redist(cpu), devs[1].regs]
        else:
            gic.dist_base, gic.cpu_base = 0x08000000, 0x08010000
            frames = [gic.dist, gic.cpu(cpu)]
        gic.init()
        registers = [(gic, "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", 0, _group_width(gic, "KVM_DEV_ARM_VGIC_GRP_NR_IRQS", 0),
                      "NR_IRQS")]
        for regs in frames:     # one register per group, at the width its table entry gives
            name = next(iter(regs.frame.regs))
            attr = regs.prefix | regs.frame.lookup(name)[1]
            registers.append((regs.dev, regs.group, attr, _group_width(regs.dev, regs.group, attr), name))
        if isinstance(gic, VgicV3):
            icc = gic.cpu_sysreg(cpu)
            attr = icc.attrs_of("ICC_PMR_EL1")[0]
            registers.append((gic, icc.group, attr, _group_width(gic, icc.group, attr), "ICC_PMR_EL1"))
        checked = set(_check_set_widths([cpu, vm, *devs], registers))
    want = {"KVM_ARM_VCPU_PMU_V3_IRQ", "KVM_ARM_VCPU_PMU_V3_FILTER", "KVM_ARM_VCPU_PMU_V3_SET_PMU",
            "KVM_ARM_VCPU_TIMER_IRQ_VTIMER", "KVM_ARM_VCPU_TIMER_IRQ_PTIMER", "KVM_ARM_VCPU_PVTIME_IPA",
            "NR_IRQS", "GICD_CTLR"}
    if arm64_kernel != "6.1":
        want |= {"KVM_ARM_VM_SMCCC_FILTER", "KVM_ARM_VCPU_TIMER_IRQ_HVTIMER", "KVM_ARM_VCPU_TIMER_IRQ_HPTIMER"}
    if arm64_gic == 3:
        want |= {"KVM_VGIC_ITS_ADDR_TYPE", "KVM_VGIC_V3_ADDR_TYPE_DIST", "KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION",
                 "GICR_CTLR", "GITS_CTLR", "ICC_PMR_EL1"}
    else:
        want |= {"KVM_VGIC_V2_ADDR_TYPE_DIST", "KVM_VGIC_V2_ADDR_TYPE_CPU", "GICC_CTLR"}
    assert want <= checked, want - checked


@pytest.mark.powerpc
def test_powerpc_tables_match_the_kernel(ppc_kvm) -> None:
    """XICS sources and VFIO on a book3s KVM: a source word is written as 8 bytes
    and read as exactly 8 (guard page), VFIO's SET_SPAPR_TCE struct and FILE_ADD
    int read at their widths; the same again in guard mode."""
    from kvmdev.devices.xics import XicsSource
    with ppc_kvm.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        x = vm.create_device("XICS")
        cpu.enable_cap("KVM_CAP_PPC_PAPR")
        x.connect(cpu)
        x.set_source(20, XicsSource(server=0, priority=5))
        assert written(x, x.attr_table.group_value("KVM_DEV_XICS_GRP_SOURCES"), 20) == 8
        vfio = vm.create_device("VFIO")
        checked = _check_set_widths([vfio], [(x, "KVM_DEV_XICS_GRP_SOURCES", 20, 8, "source 20")])
        assert {"source 20", "KVM_DEV_VFIO_FILE_ADD", "KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE"} <= set(checked)
    backend, host = ppc_kvm.backend, ({"ppc_platform": "book3s"} if ppc_kvm.backend == "mock" else {})
    with kvmdev.open(backend, arch="powerpc", guard_buffers=True, **host) as g, g.create_vm() as vm:
        cpu = vm.create_vcpu(0)
        x = vm.create_device("XICS")
        cpu.enable_cap("KVM_CAP_PPC_PAPR")
        x.connect(cpu)
        x.set_source(21, XicsSource(server=0, priority=6, level_sensitive=True))
        assert x.source(21) == XicsSource(server=0, priority=6, level_sensitive=True)
        assert x.icp(cpu).mfrr == 0xFF
