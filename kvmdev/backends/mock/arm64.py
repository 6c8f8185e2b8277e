"""arm64 arch hooks of the mock (arch/arm64/kvm/arm.c, guest.c, mmio.c, psci.c).

What is modelled, each from the kernel source and checked by tests that also
run on Debian's 6.12 and 6.1 arm64 kernels (tools/guests/test-guests.sh):
- KVM_CREATE_VM's IPA size, the memslot IPA limit (EFAULT);
- KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT (target, feature bits, re-init);
- KVM_GET_REG_LIST and KVM_{GET,SET}_ONE_REG of every register the real
  kernel lists for this profile (arm64_reglist: core, V0-V31, FPSR/FPCR,
  firmware pseudo-registers, timers, system registers, CCSIDR demux), with the
  values the real vCPU 0 had after init (MIDR/MPIDR/SCTLR_EL1 per vCPU);
  registers the kernel validates on a set other than the core ones and PSTATE
  take any value only if they are plain system registers, else only their
  own value back (ENOSYS otherwise: not modelled);
- KVM_{GET,SET}_MP_STATE (RUNNABLE, STOPPED, SUSPENDED; POWER_OFF at init)
  and a STOPPED vCPU's KVM_RUN sleeping until PSCI CPU_ON or a signal;
- KVM_IRQFD into SPIs (GSI n = SPI n + 32) and KVM_IOEVENTFD on guest stores
  (eventfds.py);
- KVM_{GET,SET}_VCPU_EVENTS: a pending SError and its ESR (external data
  aborts, injected at once by the kernel, are not modelled: ENOSYS);
- KVM_IRQ_LINE and KVM_SIGNAL_MSI routing and errors;
- KVM_RUN: the first-run checks (vCPU init, SVE finalization, VGIC mapping,
  PMU), MMIO completion (zero/sign extension), immediate_exit and signals, and
  guest code run by a real AArch64 CPU (arm64_cpu: Unicorn) at EL1: MMIO exits,
  ioeventfd writes, HVC/SMC into the in-kernel SMCCC/PSCI (VERSION, CPU_ON/OFF,
  AFFINITY_INFO, SYSTEM_OFF/RESET, FEATURES), WFI blocking until an interrupt
  is pending, and the exceptions a guest takes itself (UNDEF, SVC, BRK).
What the mock does not model stops the run with ENOSYS ("not emulated").
"""
from __future__ import annotations

import errno as E
import threading
from typing import Any

from ...arm64 import (CORE_OFFSETS, CORE_SIZES, SYSREGS, NR_PRIVATE_IRQS, NR_SGIS, PSCI_0_2_FN_PSCI_VERSION, PSCI_0_2_FN_SYSTEM_OFF,
                      PSCI_RET_NOT_SUPPORTED, default_mpidr, irq_fields)
from ...devices.arm64_vcpu import SMCCC_FILTER_ACTIONS, SMCCC_RESERVED
from . import vfio  # noqa: F401  (registers the VFIO model)
from . import arm64_cpu, arm64_reglist, arm64_vcpu, its, vgic
from .kernel import ArchModel as _Base
from .kernel import Errno, MockVcpu, MockVm

U64 = (1 << 64) - 1
MIN_IPA_BITS = 32          # ARM64_MIN_PARANGE_BITS
DEFAULT_IPA_BITS = 40      # KVM_PHYS_SHIFT, machine type 0
TARGET = 5                 # KVM_ARM_TARGET_GENERIC_V8: what the guests' KVM prefers
PSTATE_RESET = 0x3C5       # EL1h, DAIF masked
# QEMU's -cpu max as the guest kernels see it, and KVM's reset SCTLR_EL1
MIDR = 0xF0510
SCTLR_RESET = 0xC50078
# struct kvm_regs in 32-bit words (864 bytes); user_pt_regs (x0..x30, sp, pc, pstate) is words 0..67
KVM_REGS_WORDS = 216
CORE_NAMES = {off: name for name, off in CORE_OFFSETS.items() if off < 68}   # user_pt_regs
MP_RUNNABLE, MP_STOPPED, MP_SUSPENDED = 0, 5, 10    # KVM_MP_STATE_*: what arm64 takes
PSCI_0_2_FN64_CPU_ON = 0xC4000003
PSCI_RET_SUCCESS, PSCI_RET_INVALID_PARAMS, PSCI_RET_ALREADY_ON = 0, (1 << 64) - 2, (1 << 64) - 4
ESR_ELX_ISV = 1 << 24              # the ESR kvm_inject_vabt gives an SError
ESR_ELX_ISS_MASK = (1 << 25) - 1
COPROC_SYSREG, COPROC_FW, COPROC_DEMUX, COPROC_BMAP = 0x13, 0x14, 0x11, 0x16
# PSCI / SMCCC function ids (include/uapi/linux/psci.h, arm-smccc.h)
PSCI_0_2_FN_CPU_OFF, PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN_AFFINITY_INFO = 0x84000002, 0x84000003, 0x84000004
PSCI_0_2_FN64_AFFINITY_INFO, PSCI_0_2_FN_MIGRATE_INFO_TYPE = 0xC4000004, 0x84000006
PSCI_0_2_FN_SYSTEM_RESET, PSCI_1_0_FN_PSCI_FEATURES = 0x84000009, 0x8400000A
SMCCC_VERSION, SMCCC_VERSION_1_1 = 0x80000000, 0x10001
# kvm_psci_1_x_call's PSCI_FEATURES: the ids it answers 0 for, every PSCI 1.x here
PSCI_FEATURES_LISTED = {0x84000000, 0x84000001, 0xC4000001, 0x84000002, 0x84000003, 0xC4000003, 0x84000004,
                        0xC4000004, 0x84000006, 0x84000008, 0x84000009, 0x8400000A, SMCCC_VERSION}
MIDR_EL1, MPIDR_EL1, SCTLR_EL1 = (SYSREGS[n] for n in ("MIDR_EL1", "MPIDR_EL1", "SCTLR_EL1"))


class Arm64Vm:
    """kvm->arch: IPA size, the in-kernel VGIC, ITSs."""

    def __init__(self, vm: MockVm, ipa_bits: int) -> None:
        self.vm = vm
        self.ipa_bits = ipa_bits
        self.vgic: vgic.VgicDist | None = None
        self.its: list[its.ItsModel] = []
        self.vgic_v5: vgic.VgicV5Model | None = None
        self.lpis = its.Lpis(self)
        self.msis_require_devid = False
        self.propbaser = 0  # kvm->arch.vgic.propbaser: GICR_PROPBASER of every redistributor
        self.features: int | None = None  # kvm->arch.vcpu_features once configured (6.12)
        self.timer_ppi = dict(arm64_vcpu.TIMER_DEFAULTS)   # 6.12: kvm->arch.timer_data.ppi
        self.timers_immutable = False                      # KVM_ARCH_FLAG_TIMER_PPIS_IMMUTABLE
        self.spi_owner: dict[int, str] = {}
        self.pmu_filters: list[tuple[int, int, int]] = []
        self.pmu_type: int | None = None
        self.pmu_nr_counters: int | None = None   # KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS (6.18+)

    @property
    def phys_size(self) -> int:
        return 1 << self.ipa_bits

    def ioctl_KVM_ARM_PREFERRED_TARGET(self, arg: int) -> int:
        init = self.vm.backend.arch.ffi.new("struct kvm_vcpu_init *", {"target": TARGET})
        self.vm.user.write_struct(arg, init)
        return 0

    def any_vcpu_ran(self) -> bool:
        return any(c.part.has_run_once for c in self.vm.vcpus.values())


class Arm64Vcpu:
    """vcpu->arch: init state, registers, and the pending MMIO of a guest exit."""

    def __init__(self, vcpu: MockVcpu) -> None:
        self.vcpu = vcpu
        self.vm: Arm64Vm = vcpu.vm.part
        self.a = vcpu.backend.arch
        self.target = -1
        self.features = 0
        self.has_run_once = False
        self.k61 = vcpu.backend.host.kernel == "6.1"
        self.timer_ppi = dict(arm64_vcpu.TIMER_DEFAULTS)   # 6.1: per vCPU
        self.timer_enabled = False
        self.ppi_owner: dict[int, str] = {}
        self.pmu_created = False
        self.pmu_irq: int | None = None
        self.pvtime = arm64_vcpu.INVALID_GPA
        self.x = [0] * 31
        self.sp = self.pc = 0
        self.pstate = PSTATE_RESET
        self.sysregs: dict[tuple[int, int, int, int, int], int] = {}
        self.core_more: dict[int, int] = {}   # sp_el1 .. fpcr by word offset
        self.pseudo: dict[int, int] = {}      # firmware, bitmap and demux registers by id
        self.reg_list: list[int] = []
        self.mp_state = MP_RUNNABLE
        self.pending_reset: tuple[int, int] | None = None   # (pc, x0) from PSCI CPU_ON
        self.serror: int | None = None        # the pending SError's ESR (HCR_EL2.VSE set)
        self.wakeup = threading.Condition()   # a STOPPED vCPU sleeps on it (kvm_vcpu_sleep)
        self.mmio: tuple[int, int, bool, bool, bool] | None = None  # the access's syndrome until completed
        self.cpu: arm64_cpu.Cpu | None = None    # the emulator, made at the first run of guest code
        self.cpu_owns = False   # the registers above are stale: the emulator holds them (fresh())
        self.gic_active: list[tuple[int, int]] = []   # (INTID, priority) acknowledged, not yet dropped

    @property
    def mpidr(self) -> int:
        return self.sysregs.get(MPIDR_EL1, 0)

    def fresh(self) -> None:
        """Bring the registers back from the emulator, where a run left them (they stay
        there between runs until something outside the guest reads or writes them)."""
        if self.cpu is not None and self.cpu_owns:
            self.cpu.save()
            self.cpu_owns = False

    def has(self, feature: str) -> bool:
        return bool(self.features >> self.a.const("KVM_ARM_VCPU_" + feature) & 1)

    # -- KVM_ARM_VCPU_INIT (kvm_vcpu_set_target) ---------------------------------
    def ioctl_KVM_ARM_VCPU_INIT(self, arg: int) -> int:
        init = self.vcpu.user.read_struct("struct kvm_vcpu_init", arg)
        if init.target != TARGET:
            raise Errno(E.EINVAL)
        host = self.vcpu.backend.host
        valid = (1 << int(host.fact("vcpu_max_feature")) + 1) - 1   # KVM_VCPU_VALID_FEATURES
        if init.features[0] & ~valid or any(init.features[i] for i in range(1, 7)):
            raise Errno(E.ENOENT)
        features = int(init.features[0])
        # kvm_vcpu_init_check_features: EL2 (nested virtualisation) needs FEAT_NV2 and
        # kvm-arm.mode=nested, which no host here has
        needs: dict[int, int] = host.fact("vcpu_feature_requires")  # type: ignore[assignment]
        if features & int(host.fact("vcpu_features_einval")) or \
                any(features >> f & 1 and not features >> need & 1 for f, need in needs.items()):
            raise Errno(E.EINVAL)
        power_off = bool(features >> self.a.const("KVM_ARM_VCPU_POWER_OFF") & 1)
        if not self.k61:   # 6.12: POWER_OFF is ephemeral, not part of the VM's feature set
            features &= ~(1 << self.a.const("KVM_ARM_VCPU_POWER_OFF"))
        if self.target >= 0:
            if features != self.features:  # secondary calls must be identical
                raise Errno(E.EINVAL)
        elif self.vm.features is not None and features != self.vm.features:
            raise Errno(E.EINVAL)  # 6.12: one feature set per VM (6.1 allows a mix)
        if self.vcpu.backend.host.kernel != "6.1":
            self.vm.features = features
        self.target, self.features = TARGET, features
        self._reset()
        # kvm_arch_vcpu_ioctl_vcpu_init: POWER_OFF -> STOPPED, else RUNNABLE
        self.set_mp_state(MP_STOPPED if power_off else MP_RUNNABLE)
        return 0

    def _reset(self) -> None:
        self.fresh()
        self.x = [0] * 31
        self.sp = self.pc = 0
        self.pstate = PSTATE_RESET
        kernel = self.vcpu.backend.host.kernel
        regs = list(arm64_reglist.REGS[kernel])
        if self.has("PMU_V3"):
            regs += arm64_reglist.PMU_REGS[kernel]
        c = self.a.const
        sysregs: dict[tuple[int, int, int, int, int], tuple[int, int]] = {}
        self.core_more, self.pseudo = {}, {}
        for rid, value in regs:
            coproc = (rid & c("KVM_REG_ARM_COPROC_MASK")) >> c("KVM_REG_ARM_COPROC_SHIFT")
            if coproc == 0x10:
                if rid & 0xFFFF not in CORE_NAMES:
                    self.core_more[rid & 0xFFFF] = value
            elif coproc == COPROC_SYSREG:
                sysregs[_sysreg_enc(self.a, rid)] = (rid, value)
            else:
                self.pseudo[rid] = value
        sysregs_ids = {rid for rid, _ in sysregs.values()}
        self.pseudo[c("KVM_REG_ARM_PSCI_VERSION")] = int(self.vcpu.backend.host.fact("psci_version")) if self.has("PSCI_0_2") else 0
        self.sysregs = {enc: v for enc, (_, v) in sysregs.items()}
        self.sysregs.update({MIDR_EL1: MIDR, MPIDR_EL1: default_mpidr(self.vcpu.id), SCTLR_EL1: SCTLR_RESET})
        self.vcpu.vm.mpidr_gen += 1           # the VGIC's MPIDR -> vCPU map is stale
        # kvm_arm_copy_reg_indices' order, as captured: the PMU registers go into the
        # final run of system registers, which sys_reg_descs keeps sorted by encoding
        ids = [rid for rid, _ in arm64_reglist.REGS[kernel]]
        extra = sorted(rid for rid, _ in arm64_reglist.PMU_REGS[kernel]) if self.has("PMU_V3") else []
        if extra:
            sys_pos = [i for i, rid in enumerate(ids) if rid in sysregs_ids]
            start = max((b for a, b in zip(sys_pos, sys_pos[1:]) if ids[a] > ids[b]), default=sys_pos[0])
            end = sys_pos[-1] + 1
            ids[start:end] = sorted(ids[start:end] + extra)
        self.reg_list = ids
        self.serror = None

    # -- KVM_GET_REG_LIST (kvm_arm_copy_reg_indices) ----------------------------------
    def ioctl_KVM_GET_REG_LIST(self, arg: int) -> int:
        if self.target < 0:
            raise Errno(E.ENOEXEC)
        user = self.vcpu.user
        n = user.get("__u64", arg)
        user.put("__u64", arg, len(self.reg_list))
        if n < len(self.reg_list):
            raise Errno(E.E2BIG)
        user.write(arg + 8, b"".join(r.to_bytes(8, "little") for r in self.reg_list))
        return 0

    # -- KVM_{GET,SET}_MP_STATE ---------------------------------------------------------
    def set_mp_state(self, state: int) -> None:
        with self.wakeup:
            self.mp_state = state
            self.wakeup.notify_all()

    def ioctl_KVM_GET_MP_STATE(self, arg: int) -> int:
        self.vcpu.user.put("__u32", arg, self.mp_state)
        return 0

    def ioctl_KVM_SET_MP_STATE(self, arg: int) -> int:
        state = self.vcpu.user.get("__u32", arg)
        if state not in (MP_RUNNABLE, MP_STOPPED, MP_SUSPENDED):
            raise Errno(E.EINVAL)
        self.set_mp_state(state)
        return 0

    # -- KVM_{GET,SET}_VCPU_EVENTS (__kvm_arm_vcpu_{get,set}_events) ------------------------
    def ioctl_KVM_GET_VCPU_EVENTS(self, arg: int) -> int:
        if self.target < 0:
            raise Errno(E.ENOEXEC)
        ev = self.a.ffi.new("struct kvm_vcpu_events *")
        ev.exception.serror_has_esr = int(self.vcpu.backend.host.ras)
        if self.serror is not None:
            ev.exception.serror_pending = 1
            if self.vcpu.backend.host.ras:
                ev.exception.serror_esr = self.serror
        self.vcpu.user.write_struct(arg, ev)
        return 0

    def ioctl_KVM_SET_VCPU_EVENTS(self, arg: int) -> int:
        if self.target < 0:
            raise Errno(E.ENOEXEC)
        ev = self.vcpu.user.read_struct("struct kvm_vcpu_events", arg)
        x = ev.exception
        if any(x.pad) or any(ev.reserved):
            raise Errno(E.EINVAL)
        if x.serror_pending and x.serror_has_esr:
            if not self.vcpu.backend.host.ras or x.serror_esr & ~ESR_ELX_ISS_MASK:
                raise Errno(E.EINVAL)
            esr = int(x.serror_esr)
        else:
            esr = ESR_ELX_ISV
        if x.ext_dabt_pending:
            raise Errno(E.ENOSYS)   # kvm_inject_dabt changes PC, ELR, ESR, FAR: not modelled
        if x.serror_pending:
            self.serror = esr
        return 0

    # -- KVM_{GET,SET}_ONE_REG (guest.c, sys_regs.c) --------------------------------
    def _reg(self, arg: int) -> tuple[str, Any, int, int]:
        """(kind, key, addr, size) of the register whose id kvm_one_reg names."""
        if self.target < 0:
            raise Errno(E.ENOEXEC)
        self.fresh()
        r = self.vcpu.user.read_struct("struct kvm_one_reg", arg)
        c = self.a.const
        rid = int(r.id)
        if rid & c("KVM_REG_ARCH_MASK") != c("KVM_REG_ARM64"):
            raise Errno(E.EINVAL)
        size = 1 << ((rid & c("KVM_REG_SIZE_MASK")) >> c("KVM_REG_SIZE_SHIFT"))
        coproc = (rid & c("KVM_REG_ARM_COPROC_MASK")) >> c("KVM_REG_ARM_COPROC_SHIFT")
        if coproc == 0x10:      # get/set_core_reg: ENOENT past struct kvm_regs, then validate_core_offset
            off = rid & 0xFFFF
            if off >= KVM_REGS_WORDS or off + size // 4 >= KVM_REGS_WORDS:
                raise Errno(E.ENOENT)
            if CORE_SIZES.get(off) != size:
                raise Errno(E.EINVAL)
            return ("core", CORE_NAMES[off], int(r.addr), size) if off in CORE_NAMES \
                else ("core_more", off, int(r.addr), size)
        if coproc == COPROC_SYSREG:
            if size != 8:
                raise Errno(E.ENOENT)
            enc = _sysreg_enc(self.a, rid)
            if enc in self.sysregs:
                return "sys", enc, int(r.addr), size
            raise Errno(E.ENOENT)   # not a register KVM lists for this vCPU
        if rid in self.pseudo:
            return "pseudo", rid, int(r.addr), size
        raise Errno(E.ENOENT)

    def _core(self, name: str) -> int:
        if name.startswith("x"):
            return self.x[int(name[1:])]
        return int(getattr(self, name))

    def ioctl_KVM_GET_ONE_REG(self, arg: int) -> int:
        kind, key, addr, size = self._reg(arg)
        value = {"core": lambda: self._core(key), "core_more": lambda: self.core_more[key],
                 "sys": lambda: self.sysregs[key], "pseudo": lambda: self.pseudo[key]}[kind]()
        self.vcpu.user.write(addr, value.to_bytes(size, "little"))
        return 0

    def ioctl_KVM_SET_ONE_REG(self, arg: int) -> int:
        kind, key, addr, size = self._reg(arg)
        value = int.from_bytes(self.vcpu.user.read(addr, size), "little")
        if kind == "sys":
            self.sysregs[key] = value
            if key == MPIDR_EL1:
                self.vcpu.vm.mpidr_gen += 1   # the VGIC's MPIDR -> vCPU map is stale
        elif kind == "core_more":
            self.core_more[key] = value
        elif kind == "pseudo":
            if value != self.pseudo[key]:
                raise Errno(E.ENOSYS)   # the kernel checks firmware/bitmap/demux values: not modelled
        elif key == "pstate":
            mode = value & 0x1F
            if mode & 0x10:
                raise Errno(E.ENOSYS)  # AArch32 modes: not modelled
            if mode not in (0x0, 0x4, 0x5):  # EL0t, EL1t, EL1h; EL2 needs nested virt
                raise Errno(E.EINVAL)
            self.pstate = value
        elif key.startswith("x"):
            self.x[int(key[1:])] = value
        else:
            setattr(self, key, value)
        return 0

    # -- KVM_RUN ---------------------------------------------------------------------
    def run(self, immediate: bool) -> int:
        if self.target < 0:
            raise Errno(E.ENOEXEC)
        if self.has("SVE"):
            raise Errno(E.EPERM)  # needs KVM_ARM_VCPU_FINALIZE, which the mock does not model
        if not self.has_run_once:
            self._first_run()
        run = self.vcpu.run
        if run.exit_reason == self.a.const("KVM_EXIT_MMIO") and self.mmio is not None:
            self._complete_mmio(run)
        if immediate:
            raise Errno(E.EINTR)
        run.exit_reason = self.a.const("KVM_EXIT_UNKNOWN")
        self._power_state(run)
        if self.cpu is None:
            self.cpu = arm64_cpu.Cpu(self)
        self.cpu.sync_memory(self.vcpu.vm.memslots, self.a.const("KVM_MEM_READONLY"))
        if not self.cpu_owns:
            self.cpu.load()
            self.cpu_owns = True
        return self._execute(run)

    def _power_state(self, run: Any) -> None:
        """A STOPPED vCPU sleeps until PSCI CPU_ON (then resets to its entry point),
        a SUSPENDED one until an interrupt (kvm_arch_vcpu_runnable)."""
        if self.mp_state == MP_STOPPED:
            self._sleep(run)
        elif self.mp_state == MP_SUSPENDED:
            self._block(run)
            self.set_mp_state(MP_RUNNABLE)
        if self.pending_reset is not None:  # KVM_REQ_VCPU_RESET from PSCI CPU_ON
            self.fresh()
            pc, context = self.pending_reset
            self.pending_reset = None
            self.x = [0] * 31
            self.sp, self.pstate = 0, PSTATE_RESET
            self.pc, self.x[0] = pc, context

    def _signal_exit(self, run: Any) -> None:
        """kvm_handle_signal_exit: a signal (request_exit's) stops the run."""
        if self.vcpu.signal_pending():
            run.exit_reason = self.a.const("KVM_EXIT_INTR")
            raise Errno(E.EINTR)

    def _sleep(self, run: Any) -> None:
        """kvm_vcpu_sleep: a STOPPED vCPU waits (interruptibly) for PSCI CPU_ON."""
        with self.wakeup:
            while self.mp_state == MP_STOPPED:
                self._signal_exit(run)
                self.wakeup.wait(1.0)

    def _block(self, run: Any) -> None:
        """kvm_vcpu_block (WFI, CPU_SUSPEND): until an interrupt is pending or a signal."""
        with self.wakeup:
            while not arm64_cpu.irq_pending(self):
                self._signal_exit(run)
                self.wakeup.wait(1.0)

    def wake(self) -> None:
        """A signal (MockBackend.kick) or an interrupt wakes a sleeping or running vCPU."""
        with self.wakeup:
            self.wakeup.notify_all()
        if self.cpu is not None:
            self.cpu.stop()

    def _first_run(self) -> None:
        """kvm_arch_vcpu_run_pid_change: nothing is recorded until every check passes."""
        d = self.vm.vgic
        if d is not None:
            d.map_resources()
        arm64_vcpu.timer_enable(self)
        arm64_vcpu.pmu_enable(self)
        self.has_run_once = True

    def _complete_mmio(self, run: Any) -> None:
        """kvm_handle_mmio_return: load the read value (sign-extended for LDRS*,
        32 bits for a W register), step over the instruction."""
        rt, n, is_write, sign, sixty_four = self.mmio  # type: ignore[misc]
        self.mmio = None
        if not is_write and rt != 31:
            value = int.from_bytes(bytes(self.a.ffi.buffer(run.mmio.data))[:n], "little")
            if sign and value >> (8 * n - 1) and self.vcpu.backend.host.fact("mmio_load_sign_extends"):
                value -= 1 << 8 * n
            value &= U64 if sixty_four else 0xFFFFFFFF
            if self.cpu_owns:
                self.cpu.uc.reg_write(self.cpu.xids[rt], value)   # type: ignore[union-attr]
            else:
                self.x[rt] = value
        if self.cpu_owns:
            cpu = self.cpu
            assert cpu is not None
            cpu.uc.reg_write(cpu.R.UC_ARM64_REG_PC, (cpu.uc.reg_read(cpu.R.UC_ARM64_REG_PC) + 4) & U64)
        else:
            self.pc = (self.pc + 4) & U64

    # -- the guest ------------------------------------------------------------------
    def _execute(self, run: Any) -> int:
        """Run guest code until an exit to userspace; what the kernel handles
        itself (ioeventfd writes, PSCI, WFI, exceptions the guest takes) goes on."""
        cpu = self.cpu
        assert cpu is not None
        uc, R = cpu.uc, cpu.R
        while True:
            self._signal_exit(run)
            step = 0
            if arm64_cpu.irq_ready(self):
                if uc.reg_read(R.UC_ARM64_REG_PSTATE) & 0x80:
                    step = 1   # masked: one instruction at a time until the guest unmasks IRQs
                else:
                    cpu.take_exception(0, uc.reg_read(R.UC_ARM64_REG_PC), 0x80)   # IRQ at VBAR_EL1 + 0x80
            kind, info = cpu.execute(step)
            if kind == "fault":
                access, addr, _, value = info
                pc = uc.reg_read(R.UC_ARM64_REG_PC)
                insn = cpu.read_insn(pc)
                if access == cpu.uc_mod.UC_MEM_FETCH_UNMAPPED or insn is None:
                    raise Errno(E.ENOSYS)   # the kernel injects a prefetch abort: not modelled
                syn = arm64_cpu.mmio_syndrome(insn)
                if syn is None:
                    raise Errno(E.ENOSYS)   # io_mem_abort without a valid syndrome (no NISV exit)
                rt, n, is_write, _, _ = syn
                value &= (1 << 8 * n) - 1
                if is_write and self.vcpu.vm.eventfds.io_write(addr, n, value):
                    uc.reg_write(R.UC_ARM64_REG_PC, pc + 4)   # an ioeventfd took it
                    continue
                run.exit_reason = self.a.const("KVM_EXIT_MMIO")
                m = run.mmio
                m.phys_addr, m.len, m.is_write = addr, n, is_write
                self.a.ffi.memmove(m.data, value.to_bytes(8, "little") if is_write else bytes(8), 8)
                self.mmio = syn
                return 0
            if kind == "wfi":
                self._block(run)
                continue
            if kind == "exception":
                if self._exception(run, info):
                    return 0

    def _exception(self, run: Any, intno: int) -> bool:
        """An exception Unicorn raised: HVC/SMC into the SMCCC handler (True when
        that exits to userspace), else taken by the guest at VBAR_EL1."""
        cpu = self.cpu
        assert cpu is not None
        uc, R = cpu.uc, cpu.R
        pc = uc.reg_read(R.UC_ARM64_REG_PC)
        after = intno in (arm64_cpu.EXCP_HVC, arm64_cpu.EXCP_SMC, arm64_cpu.EXCP_SWI)
        at = pc - 4 if after else pc
        insn = cpu.read_insn(at) or 0
        if insn & 0xFFE0001E == 0xD4000002:   # HVC/SMC #imm (SMC traps to KVM: HCR_EL2.TSC)
            uc.reg_write(R.UC_ARM64_REG_PC, at + 4)
            self.fresh()
            if insn >> 5 & 0xFFFF:
                self.x[0] = U64    # SMCCC_RET_NOT_SUPPORTED for an immediate other than 0
                done = False
            else:
                done = self._psci(run)
            cpu.load()
            self.cpu_owns = True
            return done
        if intno == arm64_cpu.EXCP_SWI:
            cpu.take_exception(0x15 << 26 | 1 << 25 | insn >> 5 & 0xFFFF, pc)
        elif intno == arm64_cpu.EXCP_BKPT:
            cpu.take_exception(0x3C << 26 | 1 << 25 | insn >> 5 & 0xFFFF, pc)
        elif intno == arm64_cpu.EXCP_UDEF:
            sysreg = arm64_cpu.sysreg_insn(insn)
            if sysreg is not None:   # the GICv3 CPU interface: vgic-v3's, on the VGIC state
                enc, rt, read = sysreg
                with self.vcpu.vm.lock:
                    arg = None if read else (0 if rt == 31 else uc.reg_read(cpu.xids[rt]))
                    result = arm64_cpu.icc_access(self, enc, arg)
                if result is not None:
                    if read and rt != 31:
                        uc.reg_write(cpu.xids[rt], result)
                    uc.reg_write(R.UC_ARM64_REG_PC, pc + 4)
                    if enc == (3, 0, 12, 11, 5):
                        _kicked(self.vcpu.vm, 0)   # an SGI: its targets look again
                    return False
            cpu.take_exception(1 << 25, pc)   # EC 0: unknown reason
        else:
            raise Errno(E.ENOSYS)   # aborts of the guest's own translations etc.: not modelled
        return False

    def _cpu_on(self, mpidr: int, pc: int, context: int) -> int:
        """kvm_psci_vcpu_on: the target (by MPIDR affinity) resets at its next run
        to ``pc`` with x0 = ``context`` and becomes RUNNABLE, woken if asleep."""
        target = self._by_mpidr(mpidr)
        if target is None:
            return PSCI_RET_INVALID_PARAMS
        with target.wakeup:
            if target.mp_state != MP_STOPPED:
                return PSCI_RET_ALREADY_ON
            target.pending_reset = (pc, context)
            target.mp_state = MP_RUNNABLE
            target.wakeup.notify_all()
        return PSCI_RET_SUCCESS

    def _by_mpidr(self, mpidr: int) -> "Arm64Vcpu | None":
        mask = 0xFF00FFFFFF   # MPIDR_HWID_BITMASK
        if mpidr & ~mask:     # kvm_psci_valid_affinity: affinity bits only (not MPIDR's bit 31)
            return None
        return next((c.part for c in self.vcpu.vm.vcpus.values() if c.part.mpidr & mask == mpidr & mask), None)

    def _system_event(self, run: Any, kind: str) -> bool:
        """kvm_prepare_system_event: every vCPU is STOPPED, then the exit."""
        for c in self.vcpu.vm.vcpus.values():
            c.part.set_mp_state(MP_STOPPED)
        run.exit_reason = self.a.const("KVM_EXIT_SYSTEM_EVENT")
        e = run.system_event
        e.type, e.ndata, e.data[0] = self.a.const(kind), 1, 0
        return True

    def _psci(self, run: Any) -> bool:
        """kvm_smccc_call_handler / kvm_psci_call; True when the call exits to userspace."""
        fn = self.x[0] & 0xFFFFFFFF
        attrs = self.vcpu.vm.attrs
        if isinstance(attrs, VmAttrs) and attrs.filtered(fn):
            raise Errno(E.ENOSYS)   # the SMCCC filter's DENY / FWD_TO_USER: not emulated
        version = int(self.vcpu.backend.host.fact("psci_version"))
        ret = PSCI_RET_NOT_SUPPORTED
        if fn == SMCCC_VERSION:
            ret = SMCCC_VERSION_1_1
        elif not self.has("PSCI_0_2"):
            pass   # PSCI 0.1 has only KVM's own function ids
        elif fn == PSCI_0_2_FN_PSCI_VERSION:
            ret = version
        elif fn in (PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN64_CPU_ON):
            ret = self._cpu_on(self.x[1] if fn >> 30 & 1 else self.x[1] & 0xFFFFFFFF, self.x[2], self.x[3])
        elif fn == PSCI_0_2_FN_CPU_OFF:
            self.set_mp_state(MP_STOPPED)   # kvm_arm_vcpu_power_off: asleep until CPU_ON
            self._power_state(run)
            return False
        elif fn in (PSCI_0_2_FN_AFFINITY_INFO, PSCI_0_2_FN64_AFFINITY_INFO):
            target = self._by_mpidr(self.x[1])
            if self.x[2] != 0 or target is None:
                ret = PSCI_RET_INVALID_PARAMS
            else:
                ret = 1 if target.mp_state == MP_STOPPED else 0   # PSCI_0_2_AFFINITY_LEVEL_OFF/ON
        elif fn == PSCI_0_2_FN_MIGRATE_INFO_TYPE:
            ret = 2   # PSCI_0_2_TOS_MP: no trusted OS to migrate
        elif fn == PSCI_0_2_FN_SYSTEM_OFF:
            return self._system_event(run, "KVM_SYSTEM_EVENT_SHUTDOWN")
        elif fn == PSCI_0_2_FN_SYSTEM_RESET:
            return self._system_event(run, "KVM_SYSTEM_EVENT_RESET")
        elif fn == PSCI_1_0_FN_PSCI_FEATURES and version >= 0x10000:
            ret = 0 if self.x[1] & 0xFFFFFFFF in PSCI_FEATURES_LISTED else PSCI_RET_NOT_SUPPORTED
        self.x[0:4] = [ret, 0, 0, 0]  # smccc_set_retval
        return False


def _kicked(vm: MockVm, ret: int) -> int:
    """kvm_vcpu_kick after an injection: a vCPU blocked in WFI looks again."""
    for c in list(vm.vcpus.values()):
        with c.part.wakeup:
            c.part.wakeup.notify_all()
        if c.part.cpu is not None:
            c.part.cpu.stop()   # a running guest stops to take it
    return ret


def _sysreg_enc(a: Any, rid: int) -> tuple[int, int, int, int, int]:
    return tuple((rid & a.const(f"KVM_REG_ARM64_SYSREG_{f}_MASK")) >> a.const(f"KVM_REG_ARM64_SYSREG_{f}_SHIFT")
                 for f in ("OP0", "OP1", "CRN", "CRM", "OP2"))  # type: ignore[return-value]


class VmAttrs:
    """kvm_vm_{has,set}_attr (6.12): the SMCCC filter (KVM_ARM_VM_SMCCC_CTRL 0 /
    KVM_ARM_VM_SMCCC_FILTER 0, set-only) and ENXIO for everything else; a GET is
    EINVAL (no such VM ioctl).  Seen by the differential fuzzer on 6.12.117.
    The filter is kvm_smccc_set_filter's ranges; a guest call it filters stops
    the mock guest with ENOSYS (DENY and FWD_TO_USER are not emulated)."""

    def __init__(self, vm: MockVm) -> None:
        self.vm = vm
        self.ranges: list[tuple[int, int, int]] = []   # (start, end, action)

    def has(self, group: int, attr: int, addr: int) -> None:
        if (group, attr) != (0, 0):
            raise Errno(E.ENXIO)

    def get(self, group: int, attr: int, addr: int) -> None:
        raise Errno(E.EINVAL)   # no KVM_GET_DEVICE_ATTR on the VM: kvm_arch_vm_ioctl's default

    def set(self, group: int, attr: int, addr: int) -> None:
        if (group, attr) != (0, 0):
            raise Errno(E.ENXIO)
        f = self.vm.user.read_struct("struct kvm_smccc_filter", addr)
        if any(f.pad):
            raise Errno(E.EINVAL)
        # an empty range, or one past 0xffffffff, is EINVAL: nr_functions 0 from base 0 too
        # (u32 arithmetic in the source would make that every id; 6.12.117 refuses it)
        start, end = f.base, f.base + f.nr_functions - 1
        if (f.base, f.nr_functions) == (0, 0) and \
                self.vm.backend.host.fact("smccc_empty_range_from_0_errno") == E.EEXIST:
            start, end = 0, 0xFFFFFFFF   # 6.18.15: the wrapped u32 range, every id
        elif not f.nr_functions or end > 0xFFFFFFFF or f.action >= len(SMCCC_FILTER_ACTIONS):
            raise Errno(E.EINVAL)
        if self.vm.part.any_vcpu_ran():
            raise Errno(E.EBUSY)
        for s, e in [*SMCCC_RESERVED, *((s, e) for s, e, _ in self.ranges)]:
            if start <= e and s <= end:
                raise Errno(E.EEXIST)   # mtree_insert_range: no overlap
        self.ranges.append((start, end, f.action))

    def filtered(self, fn: int) -> bool:
        """A guest call a non-HANDLE range covers."""
        return any(s <= fn <= e and a for s, e, a in self.ranges)


class ArchModel(_Base):
    system_attr_errno = E.EINVAL   # kvm_arch_dev_ioctl: -EINVAL for everything
    # the VM fd's device-attr ioctls: 6.12 has the SMCCC filter group, 6.1 none
    # (kvm_arch_vm_ioctl default: -EINVAL); modelled by the issue that types VM attributes
    vm_attr_errno = E.EINVAL

    def device_types(self) -> list[str]:
        if self.host.gic == 5:
            return ["VFIO", "ARM_VGIC_V5"]
        if self.host.gic == 3:
            return ["VFIO", "ARM_VGIC_V3", "ARM_VGIC_ITS"] + (["ARM_VGIC_V2"] if self.host.gicv2_compat else [])
        return ["VFIO", "ARM_VGIC_V2"]

    def check_extension(self, vm: MockVm | None, cap: str) -> int:
        if cap == "KVM_CAP_MSI_DEVID":
            if vm is None:
                raise Errno(E.EINVAL)
            return int(vm.part.msis_require_devid)
        return super().check_extension(vm, cap)

    def check_vm_type(self, machine_type: int) -> None:
        """kvm_init_stage2_mmu's IPA checks."""
        mask = self.backend.arch.const("KVM_VM_TYPE_ARM_IPA_SIZE_MASK")
        if machine_type & ~mask:
            raise Errno(E.EINVAL)
        bits = machine_type & mask
        if bits and not MIN_IPA_BITS <= bits <= self.host.caps["KVM_CAP_ARM_VM_IPA_SIZE"]:
            raise Errno(E.EINVAL)

    def vm_part(self, vm: MockVm) -> Arm64Vm:
        mask = self.backend.arch.const("KVM_VM_TYPE_ARM_IPA_SIZE_MASK")
        return Arm64Vm(vm, vm.machine_type & mask or DEFAULT_IPA_BITS)

    def vcpu_part(self, vcpu: MockVcpu) -> Arm64Vcpu:
        """kvm_arch_vcpu_create: with a GICv3, kvm_vgic_vcpu_init places the new
        vCPU's redistributor (a duplicate id, refused after this, still uses up a slot,
        before 7.3)."""
        part = Arm64Vcpu(vcpu)
        d = vcpu.vm.part.vgic
        dup = vcpu.id in vcpu.vm.vcpus
        if d is not None and d.v3 and (not dup or self.host.fact("dup_vcpu_id_uses_redist")):
            d.register_redist(vcpu.id, duplicate=dup)
        return part

    def vm_attrs(self, vm: MockVm) -> Any:
        """6.12 has VM attributes (the SMCCC filter group, 0); 6.1 none (EINVAL)."""
        return None if self.host.kernel == "6.1" else VmAttrs(vm)

    def vcpu_attrs(self, vcpu: MockVcpu) -> arm64_vcpu.VcpuAttrs:
        return arm64_vcpu.VcpuAttrs(vcpu)

    def vcpu_precreate(self, vm: MockVm, vcpu_id: int) -> None:
        """kvm_vm_ioctl_create_vcpu's limits, then kvm_arch_vcpu_precreate."""
        if vcpu_id >= self.host.caps["KVM_CAP_MAX_VCPUS"]:
            raise Errno(E.EINVAL)
        d = vm.part.vgic
        if d is not None and len(vm.vcpus) >= d.max_vcpus:
            raise Errno(E.EINVAL)  # kvm->max_vcpus, set by the VGIC's creation
        if d is not None and d.initialized or vm.part.vgic_v5 is not None and vm.part.vgic_v5.initialized:
            raise Errno(E.EBUSY)

    def check_memory_region(self, vm: MockVm, gpa: int, size: int) -> None:
        if gpa + size > vm.part.phys_size:
            raise Errno(E.EFAULT)

    def irq_line(self, vm: MockVm, irq: int, level: int) -> int:
        """kvm_vm_ioctl_irq_line."""
        c = self.backend.arch.const
        itype, vcpu_id, num = irq_fields(irq, self.backend.arch)
        d = vm.part.vgic
        if itype == c("KVM_ARM_IRQ_TYPE_CPU"):
            if d is not None:
                raise Errno(E.ENXIO)
            if vcpu_id not in vm.vcpus or num > c("KVM_ARM_IRQ_CPU_FIQ"):
                raise Errno(E.EINVAL)
            return 0
        if itype == c("KVM_ARM_IRQ_TYPE_PPI"):
            if d is None:
                raise Errno(E.ENXIO)
            if vcpu_id not in vm.vcpus or not NR_SGIS <= num < NR_PRIVATE_IRQS:
                raise Errno(E.EINVAL)
            return _kicked(vm, d.inject(num, vcpu_id, bool(level)))
        if itype == c("KVM_ARM_IRQ_TYPE_SPI"):
            if d is None:
                raise Errno(E.ENXIO)
            if num < NR_PRIVATE_IRQS:
                raise Errno(E.EINVAL)
            return _kicked(vm, d.inject(num, 0, bool(level)))
        raise Errno(E.EINVAL)

    def irqfd_inject(self, vm: MockVm, gsi: int) -> None:
        """irqfd_wakeup -> kvm_arch_set_irq_inatomic: with the VGIC initialised an
        SPI is injected at once, level 1 only (the workqueue's 1-then-0 of
        irqfd_inject is not reached): an edge SPI latches pending, a level SPI's
        line stays high (no resamplefd lowers it).  Seen on the real 6.12 and 6.1
        kernels (GICv3 LEVEL_INFO, GICv2 ISPENDR).  Routing: vgic_init's default,
        GSI n = SPI n + 32; before it there is none and nothing happens."""
        d = vm.part.vgic
        if d is None or not d.initialized or not 0 <= gsi < d.nr_spis:
            return
        _kicked(vm, d.inject(gsi + NR_PRIVATE_IRQS, 0, True))

    def signal_msi(self, vm: MockVm, msi: Any) -> int:
        """kvm_send_userspace_msi -> kvm_set_msi -> vgic_its_inject_msi."""
        d = vm.part.vgic
        if d is None:
            raise Errno(E.EINVAL)
        if not (d.model == "ARM_VGIC_V3" and vm.part.its):
            raise Errno(E.ENODEV)
        if not msi.flags & self.backend.arch.const("KVM_MSI_VALID_DEVID"):
            raise Errno(E.EINVAL)
        addr = msi.address_hi << 32 | msi.address_lo
        for dev in vm.part.its:
            if dev.base != vgic.ADDR_UNDEF and dev.base <= addr < dev.base + dev.SIZE:
                return _kicked(vm, dev.inject(msi.devid, msi.data))
        raise Errno(E.EINVAL)

    def vcpu_run(self, vcpu: MockVcpu, immediate_exit: bool) -> int:
        return vcpu.part.run(immediate_exit)
