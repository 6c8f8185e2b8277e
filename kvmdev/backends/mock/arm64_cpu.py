"""The mock arm64 vCPU's processor: Unicorn (QEMU's TCG as a library) runs the
guest at EL1 behind KVM_RUN, on the memslots' own host memory (mem_map_ptr), so
the VMM sees the guest's stores and the guest the VMM's.

What stops the emulator is what exits to userspace, or is handled in the
kernel, on the real KVM (arch/arm64/kvm/handle_exit.c, mmio.c, psci.c):
- a data access outside the memslots, or a store to a read-only one: an
  ioeventfd's write, else KVM_EXIT_MMIO for the instructions whose syndrome is
  valid (a single general-purpose register, no writeback, not exclusive; other
  accesses are ENOSYS, as KVM without KVM_CAP_ARM_NISV_TO_USER); a read's value
  is loaded (zero- or sign-extended) at the next KVM_RUN;
- HVC/SMC #0 into the in-kernel PSCI (the caller's Arm64Vcpu._psci);
- WFI: the vCPU blocks until an interrupt is pending or a signal ends the run;
- an undefined instruction, SVC or BRK: the exception is taken by the guest at
  VBAR_EL1, as the hardware would (the syndrome the CPU gives is reproduced).
Between runs the registers live in the Arm64Vcpu (ONE_REG reads and writes them
there); each run loads them into the emulator and stores them back at the exit.

Unicorn is the optional extra `kvmdev[cpu]`: imported only when a mock arm64
vCPU first runs guest code (see README, "The mock's CPU").
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .arm64 import Arm64Vcpu

U64 = (1 << 64) - 1
PAGE = 4096
END = 0xFFFF_FFFF_FFFF_FFFC       # an 'until' address no guest reaches
TCG_BUFFER = 64 << 20             # translated code per vCPU
INSN_WFI, INSN_HVC0, INSN_SMC0 = 0xD503207F, 0xD4000002, 0xD4000003
# QEMU's exception numbers (target/arm/cpu.h) as Unicorn's interrupt hook gives them
EXCP_UDEF, EXCP_SWI, EXCP_BKPT, EXCP_HVC, EXCP_SMC = 1, 2, 7, 11, 13
# EL1 system registers that are emulator state: (op0, op1, crn, crm, op2)
CONTEXT_SYSREGS = [(3, 0, 1, 0, 0), (3, 0, 1, 0, 2), (3, 0, 2, 0, 0), (3, 0, 2, 0, 1), (3, 0, 2, 0, 2),
                   (3, 0, 5, 1, 0), (3, 0, 5, 1, 1), (3, 0, 5, 2, 0), (3, 0, 6, 0, 0), (3, 0, 7, 4, 0),
                   (3, 0, 10, 2, 0), (3, 0, 10, 3, 0), (3, 0, 12, 0, 0), (3, 0, 13, 0, 1), (3, 0, 13, 0, 4),
                   (3, 3, 13, 0, 2), (3, 3, 13, 0, 3), (3, 0, 14, 1, 0), (2, 0, 0, 2, 2)]
SPSR_EL1 = (3, 0, 4, 0, 0)
VREG0, FPSR_OFF, FPCR_OFF, SP_EL1_OFF, ELR_EL1_OFF, SPSR_EL1_OFF = 84, 212, 213, 68, 70, 72


def load_unicorn() -> Any:
    """The unicorn module, or a clear error naming the extra that brings it."""
    try:
        import unicorn
    except ImportError:
        raise ModuleNotFoundError("KVM_RUN on the arm64 mock runs guest code with Unicorn, which is not "
                                  "installed: pip install 'kvmdev[cpu]'", name="unicorn") from None
    return unicorn


def mmio_syndrome(insn: int) -> tuple[int, int, bool, bool, bool] | None:
    """(rt, len, is_write, sign_extend, sixty_four) of a load/store whose data
    abort has a valid syndrome (ESR_ELx.ISV: one general-purpose register, no
    writeback, not exclusive), else None: KVM then cannot emulate the access."""
    size = insn >> 30
    rt = insn & 31
    if insn & 0x3B000000 == 0x39000000:          # LDR/STR (immediate, unsigned offset)
        opc = insn >> 22 & 3
    elif insn & 0x3B200C00 in (0x38000000, 0x38200800):   # LDUR/STUR, LDR/STR (register offset)
        opc = insn >> 22 & 3
    elif insn & 0x3F400000 in (0x08000000, 0x08400000) and insn >> 23 & 1:  # LDAR/STLR (o2=1, o1=0)
        if insn >> 21 & 1 or insn >> 15 & 1 == 0:
            return None
        opc = insn >> 22 & 1
    else:
        return None
    if insn >> 26 & 1:
        return None                                # SIMD&FP registers: ISV 0
    n = 1 << size
    if opc == 0:
        return rt, n, True, False, False
    if opc == 1:
        return rt, n, False, False, size == 3
    if size == 3 or size == 2 and opc == 3:
        return None                                # PRFM (no access), LDRSW's opc 3 is unallocated
    return rt, n, False, True, opc == 2           # LDRS[BHW]: opc 2 to 64 bits, 3 to 32 bits


class Cpu:
    """One vCPU's Unicorn instance, its memory map and its hooks."""

    def __init__(self, part: "Arm64Vcpu") -> None:
        uc = load_unicorn()
        from unicorn import arm64_const as R
        self.uc_mod, self.R, self.part = uc, R, part
        self.uc = uc.Uc(uc.UC_ARCH_ARM64, uc.UC_MODE_ARM)
        self.uc.ctl_set_cpu_model(R.UC_CPU_ARM64_MAX)   # what QEMU's -cpu max guests have
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER)     # not Unicorn's 1 GiB per vCPU
        self.mapped: list[tuple[int, int, int, int]] = []
        self.fault: tuple[int, int, int, int] | None = None  # (kind, addr, size, value)
        self.exception: int | None = None
        self.running = False
        self.lock = threading.Lock()
        self.uc.hook_add(uc.UC_HOOK_MEM_UNMAPPED | uc.UC_HOOK_MEM_PROT, self._on_fault)
        self.uc.hook_add(uc.UC_HOOK_INTR, self._on_exception)
        self.sysregs = [e for e in CONTEXT_SYSREGS if self._cp_ok(e)]
        self.xids = [R.UC_ARM64_REG_X0 + i for i in range(29)] + [R.UC_ARM64_REG_X29, R.UC_ARM64_REG_X30]
        self.qids = [R.UC_ARM64_REG_Q0 + i for i in range(32)]
        self.shadow: dict[Any, int] = {}   # what the emulator holds, as of the last load/save
        self.stop_requested = False

    def _cp_ok(self, enc: tuple[int, int, int, int, int]) -> bool:
        try:
            self.uc.cpr_read(*enc)
            return True
        except self.uc_mod.UcError:
            return False

    # -- hooks (Unicorn's thread: record, stop) --------------------------------------
    def _on_fault(self, uc: Any, access: int, addr: int, size: int, value: int, _: Any) -> bool:
        self.fault = (access, addr, size, value & U64)
        return False

    def _on_exception(self, uc: Any, intno: int, _: Any) -> None:
        self.exception = intno
        uc.emu_stop()

    def stop(self) -> None:
        """A signal to the thread in KVM_RUN (called from any thread).  uc_emu_stop is
        lost if it comes before uc_emu_start has begun, so a helper thread repeats it
        until the run loop has seen the request."""
        with self.lock:
            if self.stop_requested:
                return
            self.stop_requested = True
            if not self.running:
                return
        threading.Thread(target=self._stopper, daemon=True).start()

    def _stopper(self) -> None:
        while True:
            with self.lock:
                if not (self.running and self.stop_requested):
                    return
                self.uc.emu_stop()
            time.sleep(0.005)

    # -- memory -----------------------------------------------------------------------
    def sync_memory(self, memslots: dict[int, tuple[int, int, int, int]], readonly: int) -> None:
        """Map the memslots' host memory at their guest addresses (again if they changed)."""
        slots = sorted(memslots.values())
        if slots != self.mapped:
            for gpa, size, _, _ in self.mapped:
                self.uc.mem_unmap(gpa, size)
            for gpa, size, uaddr, flags in slots:
                prot = self.uc_mod.UC_PROT_READ | self.uc_mod.UC_PROT_EXEC
                if not flags & readonly:
                    prot |= self.uc_mod.UC_PROT_WRITE
                self.uc.mem_map_ptr(gpa, size, prot, uaddr)
            self.mapped = slots
        # the VMM writes guest code through its own mapping, which TCG cannot see
        self.uc.ctl_flush_tb()

    # -- registers --------------------------------------------------------------------
    def _state(self) -> list[tuple[Any, int]]:
        """(Unicorn register or system register encoding, value) of Arm64Vcpu's registers."""
        p, R = self.part, self.R
        more = p.core_more
        regs: list[tuple[Any, int]] = [(x, v) for x, v in zip(self.xids, p.x)]
        regs += [(enc, p.sysregs[enc]) for enc in self.sysregs if enc in p.sysregs]
        regs += [(R.UC_ARM64_REG_PSTATE, p.pstate & 0xFFFFFFFF), (R.UC_ARM64_REG_SP_EL0, p.sp),
                 (R.UC_ARM64_REG_SP_EL1, more[SP_EL1_OFF]),
                 (R.UC_ARM64_REG_SP, more[SP_EL1_OFF] if p.pstate & 1 else p.sp),   # the live SP
                 (R.UC_ARM64_REG_ELR_EL1, more[ELR_EL1_OFF]), (SPSR_EL1, more[SPSR_EL1_OFF])]
        regs += [(R.UC_ARM64_REG_Q0 + i, more[VREG0 + 4 * i]) for i in range(32)]
        regs += [(R.UC_ARM64_REG_FPSR, more[FPSR_OFF]), (R.UC_ARM64_REG_FPCR, more[FPCR_OFF]),
                 (R.UC_ARM64_REG_PC, p.pc)]
        return regs

    def load(self) -> None:
        """Arm64Vcpu's registers into the emulator: those that changed since save()."""
        uc, shadow = self.uc, self.shadow
        for key, value in self._state():
            if shadow.get(key) != value:
                if isinstance(key, tuple):
                    uc.cpr_write(*key, value)
                else:
                    uc.reg_write(key, value)
                shadow[key] = value

    def save(self) -> None:
        """The emulator's registers back into Arm64Vcpu."""
        p, uc, R = self.part, self.uc, self.R
        p.x = [v & U64 for v in uc.reg_read_batch(self.xids)]
        p.pc = uc.reg_read(R.UC_ARM64_REG_PC)
        p.pstate = uc.reg_read(R.UC_ARM64_REG_PSTATE)
        live = uc.reg_read(R.UC_ARM64_REG_SP)
        more = p.core_more
        if p.pstate & 1:   # SP_EL1 is live, SP_EL0 banked
            more[SP_EL1_OFF], p.sp = live, uc.reg_read(R.UC_ARM64_REG_SP_EL0)
        else:
            p.sp, more[SP_EL1_OFF] = live, uc.reg_read(R.UC_ARM64_REG_SP_EL1)
        more[ELR_EL1_OFF] = uc.reg_read(R.UC_ARM64_REG_ELR_EL1)
        more[SPSR_EL1_OFF] = uc.cpr_read(*SPSR_EL1)
        for i, v in enumerate(uc.reg_read_batch(self.qids)):
            more[VREG0 + 4 * i] = v
        more[FPSR_OFF] = uc.reg_read(R.UC_ARM64_REG_FPSR)
        more[FPCR_OFF] = uc.reg_read(R.UC_ARM64_REG_FPCR)
        for enc in self.sysregs:
            if enc in p.sysregs:
                p.sysregs[enc] = uc.cpr_read(*enc)
        self.shadow = dict(self._state())

    # -- running ------------------------------------------------------------------------
    def execute(self, count: int = 0) -> tuple[str, Any]:
        """Run from the loaded state until an event: ("fault", (kind, addr, size, value)),
        ("exception", intno), ("wfi", None) or ("stopped", None) (a signal, or ``count``
        instructions run: 1 while an IRQ waits for PSTATE.I to clear).  PC is the faulting instruction's, the excepting one's (HVC/SMC: after it)."""
        uc = self.uc
        self.fault = self.exception = None
        pc = uc.reg_read(self.R.UC_ARM64_REG_PC)
        with self.lock:
            if self.stop_requested:
                self.stop_requested = False
                return "stopped", None
            self.running = True
        try:
            uc.emu_start(pc, END, count=count)
        except self.uc_mod.UcError:
            if self.fault is None:
                raise
        finally:
            with self.lock:
                self.running = self.stop_requested = False
        if self.fault is not None:
            return "fault", self.fault
        if self.exception is not None:
            return "exception", self.exception
        pc = uc.reg_read(self.R.UC_ARM64_REG_PC)
        if pc >= 4 and self.read_insn(pc - 4) == INSN_WFI:
            return "wfi", None
        return "stopped", None

    def read_insn(self, pc: int) -> int | None:
        try:
            return int.from_bytes(self.uc.mem_read(pc, 4), "little")
        except self.uc_mod.UcError:
            return None

    def take_exception(self, esr: int, return_pc: int, offset: int = 0) -> None:
        """A synchronous exception (offset 0) or IRQ (0x80) taken to EL1 at VBAR_EL1,
        from the emulator's current state (AArch64 EL0/EL1 only)."""
        uc, R = self.uc, self.R
        pstate = uc.reg_read(R.UC_ARM64_REG_PSTATE)
        el, spsel = pstate >> 2 & 3, pstate & 1
        base = 0x400 if el == 0 else (0x200 if spsel else 0)
        if not spsel or el == 0:   # SP_EL0 live until now: bank it, SP_EL1 becomes live
            uc.reg_write(R.UC_ARM64_REG_SP_EL0, uc.reg_read(R.UC_ARM64_REG_SP))
            uc.reg_write(R.UC_ARM64_REG_SP, uc.reg_read(R.UC_ARM64_REG_SP_EL1))
        if offset == 0:
            uc.cpr_write(3, 0, 5, 2, 0, esr)     # ESR_EL1
        uc.cpr_write(*SPSR_EL1, pstate)
        uc.reg_write(R.UC_ARM64_REG_ELR_EL1, return_pc)
        uc.reg_write(R.UC_ARM64_REG_PSTATE, (pstate & 0xF0000000) | 0x3C5)   # EL1h, DAIF masked, NZCV kept
        vbar = uc.cpr_read(3, 0, 12, 0, 0)
        uc.reg_write(R.UC_ARM64_REG_PC, (vbar & ~0x7FF) + base + offset)


def irq_pending(part: "Arm64Vcpu") -> bool:
    """kvm_vgic_vcpu_pending_irq: an interrupt for this vCPU that is pending,
    enabled, not active and of higher priority than its PMR, with the
    distributor enabled: what ends a WFI."""
    d = part.vm.vgic
    regs = d.regs if d is not None and d.initialized else None
    if regs is None or not regs.enabled:
        return False
    vid = part.vcpu.id
    pmr = regs.icc[vid].get("ICC_PMR_EL1", 0) if regs.v3 else regs.gicc[vid].get(0x4, 0)
    mine = [*regs.private.get(vid, ()),
            *(i for i in regs.spis if (i.mpidr & 0xFF00FFFFFF == part.mpidr & 0xFF00FFFFFF if regs.v3
                                       else i.targets >> vid & 1))]
    return any((i.pending or not i.edge and i.line_level) and i.enabled and not i.active and i.priority < pmr
               for i in mine)


# -- the GICv3 CPU interface (vgic-v3 emulates it for the guest; here ICC_* accesses are
# UNDEF in the emulator and land in icc_access, on the VGIC state userspace sees too)
ICC = {(3, 0, 4, 6, 0): "ICC_PMR_EL1", (3, 0, 12, 12, 0): "ICC_IAR1_EL1", (3, 0, 12, 12, 1): "ICC_EOIR1_EL1",
       (3, 0, 12, 12, 2): "ICC_HPPIR1_EL1", (3, 0, 12, 12, 3): "ICC_BPR1_EL1", (3, 0, 12, 12, 4): "ICC_CTLR_EL1",
       (3, 0, 12, 12, 5): "ICC_SRE_EL1", (3, 0, 12, 12, 7): "ICC_IGRPEN1_EL1", (3, 0, 12, 11, 1): "ICC_DIR_EL1",
       (3, 0, 12, 11, 3): "ICC_RPR_EL1", (3, 0, 12, 11, 5): "ICC_SGI1R_EL1"}
SPURIOUS = 1023
AFF_MASK = 0xFF00FFFFFF


def sysreg_insn(insn: int) -> tuple[tuple[int, int, int, int, int], int, bool] | None:
    """(encoding, Rt, is_read) of an MRS/MSR (register), else None."""
    if insn & 0xFFD00000 != 0xD5100000:
        return None
    enc = (2 + (insn >> 19 & 1), insn >> 16 & 7, insn >> 12 & 15, insn >> 8 & 15, insn >> 5 & 7)
    return enc, insn & 31, bool(insn >> 21 & 1)


def _mine(part: "Arm64Vcpu", regs: Any) -> list[tuple[int, Any]]:
    """(intid, state) of the interrupts that target this vCPU."""
    vid = part.vcpu.id
    out = list(enumerate(regs.private.get(vid, ())))
    for i, irq in enumerate(regs.spis):
        if (irq.mpidr & AFF_MASK == part.mpidr & AFF_MASK & 0xFFFFFF) if regs.v3 else irq.targets >> vid & 1:
            out.append((32 + i, irq))
    return out


def _running(part: "Arm64Vcpu") -> int:
    return min((p for _, p in part.gic_active), default=0x100)


def _candidate(part: "Arm64Vcpu") -> tuple[int, Any] | None:
    """The highest-priority pending, enabled, inactive group-1 interrupt of this vCPU
    above its PMR and running priority (vgic_v3's list registers, as the guest sees them)."""
    d = part.vm.vgic
    regs = d.regs if d is not None and d.initialized else None
    if regs is None or not regs.enabled:
        return None
    icc = regs.icc[part.vcpu.id]
    limit = min(icc.get("ICC_PMR_EL1", 0), _running(part))
    best = None
    for intid, irq in _mine(part, regs):
        if (irq.pending or not irq.edge and irq.line_level) and irq.enabled and not irq.active and irq.group \
                and irq.priority < limit and (best is None or irq.priority < best[1].priority):
            best = (intid, irq)
    return best


def irq_ready(part: "Arm64Vcpu") -> bool:
    """An IRQ the guest would take now (PSTATE.I aside): group 1 enabled and a candidate."""
    d = part.vm.vgic
    if d is None or not d.v3 or d.regs is None:
        return False
    return bool(d.regs.icc[part.vcpu.id].get("ICC_IGRPEN1_EL1", 0)) and _candidate(part) is not None


def icc_access(part: "Arm64Vcpu", enc: tuple[int, int, int, int, int], value: int | None) -> int | None:
    """A guest's MRS (value None) or MSR of an ICC_* register; None: not one (UNDEF)."""
    name = ICC.get(enc)
    d = part.vm.vgic
    if name is None or d is None or not d.v3 or d.regs is None:
        return None
    regs = d.regs
    icc = regs.icc[part.vcpu.id]
    if name in ("ICC_PMR_EL1", "ICC_BPR1_EL1", "ICC_IGRPEN1_EL1"):
        if value is not None:
            icc[name] = value & {"ICC_PMR_EL1": 0xF8, "ICC_BPR1_EL1": 7, "ICC_IGRPEN1_EL1": 1}[name]
        return icc.get(name, 0)
    if name == "ICC_CTLR_EL1":
        if value is not None:
            icc["ctlr"] = value & 0x3
        return 1 << 15 | icc["id_bits"] << 11 | (icc["pri_bits"] - 1) << 8 | icc["ctlr"]
    if name == "ICC_SRE_EL1":
        return 0x7
    if name in ("ICC_IAR1_EL1", "ICC_HPPIR1_EL1"):
        best = _candidate(part) if icc.get("ICC_IGRPEN1_EL1", 0) else None
        if best is None:
            return SPURIOUS
        intid, irq = best
        if name == "ICC_IAR1_EL1":   # acknowledge: active, an edge's latch cleared
            irq.active = True
            if irq.edge:
                irq.pending = False
            part.gic_active.append((intid, irq.priority))
        return intid
    if name == "ICC_RPR_EL1":
        return _running(part) & 0xFF
    if value is None:
        return 0   # write-only registers read as 0 here
    if name in ("ICC_EOIR1_EL1", "ICC_DIR_EL1"):
        intid = value & 0xFFFFFF
        if name == "ICC_EOIR1_EL1":   # priority drop of the most recent acknowledge of intid
            for i in range(len(part.gic_active) - 1, -1, -1):
                if part.gic_active[i][0] == intid:
                    del part.gic_active[i]
                    break
        if name == "ICC_DIR_EL1" or not icc["ctlr"] & 2:   # EOImode 0: EOIR deactivates too
            irq = regs.irq(part.vcpu.id, intid) if intid < 32 + len(regs.spis) else None
            if irq is not None:
                irq.active = False
        return 0
    if name == "ICC_SGI1R_EL1":
        intid, irm = value >> 24 & 15, value >> 40 & 1
        aff = (value >> 48 & 0xFF) << 32 | (value >> 32 & 0xFF) << 16 | (value >> 16 & 0xFF) << 8
        for c in list(part.vcpu.vm.vcpus.values()):
            m = c.part.mpidr & AFF_MASK
            if c.part is part and irm or not irm and not (m & ~0xFF == aff and value >> (m & 0xF) & 1 and m & 0xFF < 16):
                continue
            regs.private[c.id][intid].pending = True
        return 0
    return 0
