"""Where the arm64 kernels differ: one table, kernel version ranges to the answer.

The mock's arm64 profiles and the tests that run on the real kernels both read
it, so a test asserts exactly the answer of the kernel it runs on and the mock
of that kernel gives the same one.  Each fact lists ``(first version, answer)``
pairs in ascending order; a kernel gets the answer of the last pair at or below
its version.  The first versions are those of the kernels measured here (Debian
arm64 6.1.192, 6.12.118, 6.18.15 from trixie-backports, 7.3.4 from
trixie-backports) unless an upstream commit is named: a range says "seen from
this kernel on", not "introduced in".
"""
from __future__ import annotations

import errno as _e

# The kernel series the arm64 tests and the mock profiles know (the guests of
# tools/guests/test-guests.sh run each; run-guest.sh --kernel fetches any series).
ARM64_KERNELS: tuple[str, ...] = ("6.1", "6.12", "6.18", "7.3")


def version(series: str) -> tuple[int, int]:
    """'6.18' (or a release such as '6.18.15+deb13-arm64') as (6, 18)."""
    parts = series.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or "x")
    except (IndexError, ValueError):
        raise ValueError(f"not a kernel series: {series!r}") from None


_V0 = (0, 0)

# name -> [(first version, answer), ...]
FACTS: dict[str, list[tuple[tuple[int, int], object]]] = {
    # -- KVM_ARM_VCPU_INIT (kvm_vcpu_init_check_features) --
    # the highest feature bit known (KVM_VCPU_MAX_FEATURES - 1): an unknown one is ENOENT.
    # 6 PTRAUTH_GENERIC; 7 HAS_EL2, 8 HAS_EL2_E2H0 (nested virtualisation); 9 PMU_V3_STRICT
    "vcpu_max_feature": [(_V0, 6), ((6, 18), 8), ((7, 3), 9)],
    # known features this host cannot give, EINVAL: HAS_EL2 (7) needs nested virtualisation
    # (FEAT_NV2 and kvm-arm.mode=nested; QEMU's max CPU booted without it has none).
    # HAS_EL2_E2H0 (8) alone is accepted.
    "vcpu_features_einval": [(_V0, 0), ((6, 18), 1 << 7)],
    # feature -> the feature it needs (else EINVAL): PMU_V3_STRICT (9) needs PMU_V3 (3)
    "vcpu_feature_requires": [(_V0, {}), ((7, 3), {9: 3})],
    # -- MMIO: a sign-extending load (LDRS*) completed by KVM_RUN is sign-extended
    # (kvm_handle_mmio_return, ESR_ELx.SSE); on the QEMU TCG hosts here 6.1 and 6.12 zero-extend
    "mmio_load_sign_extends": [(_V0, False), ((7, 3), True)],
    # -- PSCI: PSCI_VERSION's answer (KVM_ARM_PSCI_LATEST): 1.1; 1.3 (SYSTEM_OFF2) --
    "psci_version": [(_V0, 0x10001), ((6, 18), 0x10003)],
    # -- VGIC v3 --
    # KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ (9): HAS yes without nested virt, GET 0, SET a PPI before init
    "vgic_v3_maint_irq_group": [(_V0, False), ((6, 18), True)],
    # GICD_IIDR and GICD_TYPER2 readable and writable through DIST_REGS before CTRL_INIT
    # (reg_allowed_pre_init); before, EBUSY like every register
    "gicd_iidr_typer2_pre_init": [(_V0, False), ((6, 18), True)],
    # a GICD_TYPER2 write that changes it, after init: EINVAL (must match); 6.18+ EBUSY
    "gicd_typer2_post_init_ebusy": [(_V0, False), ((6, 18), True)],
    # 6.18.15 only: a GICD_IIDR write (v2 and v3, before or after init) that keeps the
    # other fields is accepted whatever its Revision (1 too) and the Revision stays (3),
    # as do the GICR_CTLR bits it governs; as if the new revision were taken from the
    # current register rather than the value.  Another implementer is EINVAL still.
    # Not seen on 6.12 or 7.3.
    "gicd_iidr_writes_ignored": [(_V0, False), ((6, 18), True), ((6, 19), False)],
    # a refused duplicate vCPU id (EEXIST) uses up a redistributor slot (kvm_arch_vcpu_create
    # placing it before KVM sees the id is taken); 7.3 does not
    "dup_vcpu_id_uses_redist": [(_V0, True), ((7, 3), False)],
    # -- VGIC v2: GICC_DIR (0x1000) in KVM_DEV_ARM_VGIC_GRP_CPU_REGS: HAS yes (7.3; reads 0,
    # writes accepted on every kernel, where HAS says no) --
    "gicc_dir": [(_V0, False), ((7, 3), True)],
    # -- ITS --
    # MOVALL moves every LPI of the VM to RDbase2, not only RDbase's: the code of
    # upstream 6.12.94 (a bug, fixed upstream and by 6.12.117 and 7.3); 6.18.15 still has it
    "its_movall_moves_every_lpi": [(_V0, False), ((6, 18), True), ((6, 19), False)],
    # RESTORE_TABLES refuses a DTE with more EventID bits than MAPD takes (16): EINVAL
    # (6.1, and 6.12 since 6.12.92, 7.3); 6.18.15 accepts a 17-bit DTE (the fix not in it)
    "its_dte_eventid_bits_checked": [(_V0, True), ((6, 18), False), ((6, 19), True)],
    # SAVE_TABLES of an ITE whose collection MAPC V=0 (or a BASER1 change) took away
    # (ite->collection NULL): the stable fix in vgic_its_save_ite writes a zero ITE
    # (read back as invalid) where upstream dereferences NULL.  Debian's 6.1 and
    # 6.12.118 have the fix, 7.3.4 too; 6.18.15 predates it and oopses, so no test
    # runs the sequence there and the mock answers ENOSYS (no kernel answer to copy)
    "its_save_ite_no_collection_oopses": [(_V0, False), ((6, 18), True), ((6, 19), False)],
    # ... and the ITE before it points past it (its next-EventID offset skips the zero
    # ITE): 7.3.4; 6.1 and 6.12.118 point at the zero ITE
    "its_ite_next_skips_no_collection": [(_V0, False), ((7, 3), True)],
    # a GITS_BASER0/1 write that changes the register (Valid still set) drops every
    # device (collection) mapping, as a write clearing Valid does everywhere
    # (vgic_mmio_write_its_baser: "reg != old"); 6.1 and 6.18.15 drop them only when
    # Valid is cleared.  An unchanged rewrite keeps them on every kernel
    "its_baser_change_unmaps": [(_V0, False), ((6, 12), True), ((6, 18), False), ((6, 19), True)],
    # SAVE_TABLES skips a device whose DTE has no place in guest RAM any more (a
    # two-level L1 entry cleared) and the DTE before it points at the next saved one;
    # 6.1 and 6.18.15 stop with EINVAL there
    "its_save_skips_lost_devices": [(_V0, False), ((6, 12), True), ((6, 18), False), ((6, 19), True)],
    # an unknown KVM_DEV_ARM_VGIC_GRP_CTRL attribute: 0 (ignored) or ENXIO
    "its_ctrl_unknown_enxio": [(_V0, False), ((6, 18), True)],
    # -- PMUv3 vCPU group: attribute 4, KVM_ARM_VCPU_PMU_V3_SET_NR_COUNTERS --
    "pmu_set_nr_counters": [(_V0, False), ((6, 18), True)],
    # -- the VM's SMCCC filter: the empty range from base 0 (nr_functions 0) --
    # EINVAL as any empty range; 6.18.15 EEXIST (u32 arithmetic: base + 0 - 1 wraps to
    # 0xffffffff, a range over every id, which overlaps KVM's own ranges); other empty
    # ranges are EINVAL there too.  Not seen on 6.12 or 7.3.
    "smccc_empty_range_from_0_errno": [(_V0, _e.EINVAL), ((6, 18), _e.EEXIST), ((6, 19), _e.EINVAL)],
}


def fact(name: str, kernel: str) -> object:
    """The answer of ``kernel`` (a series such as '6.18') for fact ``name``."""
    v = version(kernel)
    answer: object = None
    for first, value in FACTS[name]:
        if first <= v:
            answer = value
    return answer
