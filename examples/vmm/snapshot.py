"""Save a paused Machine into a directory and build a new one from it.

    DIR/machine.json  layout, per-vCPU registers (every id KVM_GET_REG_LIST
                      lists, by ONE_REG), MP_STATE, vCPU events, timer PPIs, UART
    DIR/gic.json      kvmdev.devices.gicstate document (distributor,
                      redistributors / CPU interfaces, ICC sysregs, ITS)
    DIR/memory.bin    guest RAM, a sparse file (zero 64 KiB blocks are holes)

The kernel rules this follows are noted where they apply (Documentation/virt/kvm/
api.rst, devices/arm-vgic-v3.rst, arm-vgic-its.rst, vcpu.rst).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import kvmdev
from kvmdev import arm64
from kvmdev.devices import gicstate
from kvmdev.vcpu import Arm64VcpuEvents

FORMAT = 1
BLOCK = 64 << 10
TIMERS = ("VTIMER", "PTIMER")


def _vcpu_state(cpu: Any) -> dict[str, Any]:
    # Every register the kernel lists (core, FP/SIMD V0-V31 as 128-bit, system
    # registers, the timer's CTL/CVAL/CNT, PSCI/firmware pseudo-registers).
    regs = {f"{r:#x}": f"{cpu.get_one_reg(r):#x}" for r in cpu.get_reg_list()}
    ev = cpu.get_vcpu_events()
    timers = {}
    for t in TIMERS:
        try:
            timers[t] = cpu.timer_irq(t)
        except kvmdev.KvmError:
            pass
    return {"id": cpu.id, "features": list(cpu.features or []), "regs": regs, "mp_state": cpu.mp_state,
            "events": {"serror_pending": ev.serror_pending, "serror_has_esr": ev.serror_has_esr,
                       "serror_esr": ev.serror_esr},
            "timer_irqs": timers}


def save(m: Any, path: str) -> int:
    """Save machine ``m`` (every vCPU parked by m.pause()); returns the bytes stored."""
    os.makedirs(path, exist_ok=True)
    # gicstate.save does KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES and the ITS's
    # KVM_DEV_ARM_ITS_SAVE_TABLES first: they write into guest RAM, so RAM is saved after.
    doc = gicstate.save(m.gic, m.vcpus, [m.its] if m.its is not None else [])
    machine = {"format": FORMAT, "ncpus": m.ncpus, "ram_size": m.ram_size, "gic": m.gic_version,
               "its": m.its is not None, "kernel": m.kvm.kernel_release,
               "vcpus": [_vcpu_state(c) for c in m.vcpus], "uart": m.uart.state()}
    with open(os.path.join(path, "gic.json.tmp"), "w") as f:
        f.write(gicstate.dumps(doc))
    with open(os.path.join(path, "machine.json.tmp"), "w") as f:
        json.dump(machine, f)
    zero = bytes(BLOCK)
    with open(os.path.join(path, "memory.bin.tmp"), "wb") as f:
        base = m.ram.guest_phys_addr
        for off in range(0, m.ram_size, BLOCK):
            block = m.ram.read(base + off, BLOCK)
            if block != zero:
                f.seek(off)
                f.write(block)
        f.truncate(m.ram_size)
    for name in ("gic.json", "machine.json", "memory.bin"):
        os.replace(os.path.join(path, name + ".tmp"), os.path.join(path, name))
    return sum(os.stat(os.path.join(path, n)).st_blocks * 512 for n in ("gic.json", "machine.json", "memory.bin"))


def restore(kvm: kvmdev.Kvm, path: str, machine_class: Callable[..., Any]) -> Any:
    """A new Machine in the saved state, its vCPUs not yet started."""
    with open(os.path.join(path, "machine.json")) as f:
        st = json.load(f)
    if st.get("format") != FORMAT:
        raise ValueError(f"{path}: snapshot format {st.get('format')!r}, this VMM reads {FORMAT}")
    with open(os.path.join(path, "gic.json")) as f:
        doc = gicstate.loads(f.read())
    # 1. The VM as it was built: vCPUs created and KVM_ARM_VCPU_INIT'ed (with the
    #    same features) before the VGIC is created and initialised (arm-vgic-v3.rst:
    #    CTRL_INIT after all vCPUs exist); the ITS at the same base.
    m = machine_class(kvm, st["ncpus"], st["ram_size"] >> 20, st["gic"])
    if st["its"] and m.its is None:
        raise ValueError(f"{path}: the snapshot has an ITS and this host offers none")
    # 2. Guest RAM before the GIC: the ITS tables and LPI pending tables are read
    #    from it by KVM_DEV_ARM_ITS_RESTORE_TABLES (arm-vgic-its.rst).
    zero = bytes(BLOCK)
    base = m.ram.guest_phys_addr
    with open(os.path.join(path, "memory.bin"), "rb") as f:
        for off in range(0, m.ram_size, BLOCK):
            block = f.read(BLOCK)
            if block != zero:
                m.ram.write(base + off, block)
    # 3. vCPU registers by ONE_REG, all before the first KVM_RUN (the ID registers
    #    are writable only then).  KVM_REG_ARM_TIMER_CNT's write sets the VM's
    #    virtual counter offset (vcpu.rst / api.rst: "the virtual counter offset"),
    #    so the guest's counter carries on from the saved value, not the host's.
    for cpu, vs in zip(m.vcpus, st["vcpus"]):
        for t, ppi in vs["timer_irqs"].items():     # vcpu.rst: before the first run
            if cpu.timer_irq(t) != ppi:
                cpu.set_timer_irq(t, ppi)
        for rid, value in vs["regs"].items():
            try:
                cpu.set_one_reg(int(rid, 16), int(value, 16))
            except kvmdev.KvmError as e:
                raise RuntimeError(f"vCPU {cpu.id}: register {rid} = {value}: {e}") from e
    # 4. The whole GIC (gicstate.restore knows its order: distributor, then per-vCPU
    #    redistributor/CPU interface and ICC sysregs, GICR_PROPBASER/PENDBASER before
    #    the ITS; ITS registers, KVM_DEV_ARM_ITS_RESTORE_TABLES, GITS_CTLR last).
    #    It needs the vCPUs' MPIDRs, restored in step 3.
    gicstate.restore(m.gic, doc, m.vcpus, [m.its] if m.its is not None else [], rollback=False)
    # 4b. Stage 2 filled before the guest runs with its MMU on (see _populate_stage2).
    _populate_stage2(m, st["vcpus"])
    # 5. MP_STATE (a secondary created with POWER_OFF becomes RUNNABLE, one the
    #    guest had stopped stays STOPPED) and pending SErrors.
    for cpu, vs in zip(m.vcpus, st["vcpus"]):
        cpu.mp_state = vs["mp_state"]
        ev = vs["events"]
        if ev["serror_pending"]:
            cpu.set_vcpu_events(Arm64VcpuEvents(True, ev["serror_has_esr"], False, ev["serror_esr"]))
    # 6. The UART model, and its SPI's level (a v3 GIC document holds the level of
    #    level-triggered SPIs, a v2 one does not: KVM_IRQ_LINE sets it either way).
    m.uart.set_state(st["uart"])
    m.uart_irq(int(st["uart"]["level"]))
    return m


# ldr x3, [x0]; add x0, x0, x2; cmp x0, x1; b.lo <ldr>; str x3, [x4]; b .
TOUCH_STUB = [0xF9400003, 0x8B020000, 0xEB01001F, 0x54FFFFA3, 0xF9000083, 0x14000000]
STUB_EXIT = 0x0A00_0000      # an address with no memory and no device: the store exits as MMIO
CLOBBERED = ("pc", "pstate", "SCTLR_EL1", "x0", "x1", "x2", "x3", "x4")


def _populate_stage2(m: Any, saved: list[dict[str, Any]]) -> None:
    """Run a stub on vCPU 0 with its MMU off that reads every page of RAM, so
    KVM has mapped all of it at stage 2 before the guest resumes with its MMU on.

    Why: a restored guest's first instruction fetch walks its stage-1 tables in
    pages that the new VM has not mapped yet (a fresh boot never does: Linux
    writes its tables with the MMU off).  Under QEMU 7.2's emulated EL2 that
    stage-2 fault on the table walk (S1PTW) is reported with FSC 0x2b, which
    6.1's kvm_handle_guest_abort does not know: "Unsupported FSC", KVM_RUN
    fails with EFAULT.  6.12 takes it as a translation fault.  A fault from the
    stub (MMU off: no stage-1 walk) is an ordinary one on every kernel."""
    cpu = m.vcpus[0]
    ram = m.ram
    page = ram.guest_phys_addr + m.ram_size - 4096          # the stub's page, put back after
    keep = ram.read(page, 4096)
    ram.write(page, b"".join(i.to_bytes(4, "little") for i in TOUCH_STUB))
    try:
        for name, value in (("pc", page), ("pstate", 0x3C5), ("x0", ram.guest_phys_addr), ("x1", page),
                            ("x2", 4096), ("x4", STUB_EXIT)):
            cpu.set_one_reg(name, value)                    # EL1h, DAIF masked
        cpu.set_one_reg("SCTLR_EL1", cpu.get_one_reg("SCTLR_EL1") & ~1)   # M = 0
        while True:
            exit_ = cpu.run()
            if exit_ == "KVM_EXIT_MMIO" and cpu.mmio.phys_addr == STUB_EXIT:
                break
            if exit_ != "KVM_EXIT_INTR":
                raise RuntimeError(f"stage-2 fill stub: unexpected {exit_} at pc {cpu.get_one_reg('pc'):#x}")
        # api.rst (KVM_RUN, KVM_EXIT_MMIO): the access completes (and the pc
        # moves past the store) in the next KVM_RUN; immediate_exit completes it
        # and returns before any guest code, so the registers written below stay.
        cpu.run(immediate_exit=True)
    finally:
        ram.write(page, keep)
    regs = saved[0]["regs"]
    for name in CLOBBERED:
        rid = arm64.reg_id(name)
        cpu.set_one_reg(rid, int(regs[f"{rid:#x}"], 16))
    # The counter again, last: the guest's clock resumes from the saved value now,
    # not from when step 3 wrote it (the stub's run took time).  The offset is the
    # VM's, one for every vCPU: the latest value saved (the vCPUs were read one after
    # another), so no vCPU's counter reads less than it did before the snapshot.
    cnt = arm64.reg_id("KVM_REG_ARM_TIMER_CNT")
    cpu.set_one_reg(cnt, max(int(v["regs"][f"{cnt:#x}"], 16) for v in saved))
