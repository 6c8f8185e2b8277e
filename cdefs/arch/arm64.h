/* arm64: arch/arm64/include/uapi/asm/kvm.h */

#define KVM_ARM_TARGET_AEM_V8 0
#define KVM_ARM_TARGET_FOUNDATION_V8 1
#define KVM_ARM_TARGET_CORTEX_A57 2
#define KVM_ARM_TARGET_XGENE_POTENZA 3
#define KVM_ARM_TARGET_CORTEX_A53 4
#define KVM_ARM_TARGET_GENERIC_V8 5

/* KVM_ARM_VCPU_INIT feature bits */
#define KVM_ARM_VCPU_POWER_OFF 0
#define KVM_ARM_VCPU_EL1_32BIT 1
#define KVM_ARM_VCPU_PSCI_0_2 2
#define KVM_ARM_VCPU_PMU_V3 3
#define KVM_ARM_VCPU_SVE 4
#define KVM_ARM_VCPU_PTRAUTH_ADDRESS 5
#define KVM_ARM_VCPU_PTRAUTH_GENERIC 6

struct kvm_vcpu_init {
	__u32 target;
	__u32 features[7];
};

/* KVM_{GET,SET}_VCPU_EVENTS */
struct kvm_vcpu_events {
	struct {
		__u8 serror_pending;
		__u8 serror_has_esr;
		__u8 ext_dabt_pending;
		__u8 pad[5];
		__u64 serror_esr;
	} exception;
	__u32 reserved[12];
};

/* KVM_{GET,SET}_ONE_REG ids: core registers by struct kvm_regs offset / 4,
 * system registers by their Op0/Op1/CRn/CRm/Op2 encoding */
#define KVM_REG_ARM_COPROC_MASK 0xfff0000
#define KVM_REG_ARM_COPROC_SHIFT 16
#define KVM_REG_ARM_CORE 0x100000
#define KVM_REG_ARM_DEMUX 0x110000
#define KVM_REG_ARM64_SYSREG 0x130000
#define KVM_REG_ARM_FW 0x140000
#define KVM_REG_ARM64_SVE 0x150000
#define KVM_REG_ARM_FW_FEAT_BMAP 0x160000
/* firmware pseudo-registers and the bitmaps of the SMCCC services */
#define KVM_REG_ARM_PSCI_VERSION 0x6030000000140000
#define KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1 0x6030000000140001
#define KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2 0x6030000000140002
#define KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3 0x6030000000140003
#define KVM_REG_ARM_STD_BMAP 0x6030000000160000
#define KVM_REG_ARM_STD_HYP_BMAP 0x6030000000160001
#define KVM_REG_ARM_VENDOR_HYP_BMAP 0x6030000000160002
/* the virtual timer (CNT and CVAL have each other's encodings: the uapi keeps it) */
#define KVM_REG_ARM_TIMER_CTL 0x603000000013df19
#define KVM_REG_ARM_TIMER_CNT 0x603000000013df1a
#define KVM_REG_ARM_TIMER_CVAL 0x603000000013df02
#define KVM_REG_ARM64_SYSREG_OP0_MASK 0xc000
#define KVM_REG_ARM64_SYSREG_OP0_SHIFT 14
#define KVM_REG_ARM64_SYSREG_OP1_MASK 0x3800
#define KVM_REG_ARM64_SYSREG_OP1_SHIFT 11
#define KVM_REG_ARM64_SYSREG_CRN_MASK 0x780
#define KVM_REG_ARM64_SYSREG_CRN_SHIFT 7
#define KVM_REG_ARM64_SYSREG_CRM_MASK 0x78
#define KVM_REG_ARM64_SYSREG_CRM_SHIFT 3
#define KVM_REG_ARM64_SYSREG_OP2_MASK 0x7
#define KVM_REG_ARM64_SYSREG_OP2_SHIFT 0

/* KVM_CREATE_VM machine type: low byte is the IPA size (0 = 40 bits) */
#define KVM_VM_TYPE_ARM_IPA_SIZE_MASK 0xff

/* VGIC address types (KVM_DEV_ARM_VGIC_GRP_ADDR attributes) */
#define KVM_VGIC_V2_ADDR_TYPE_DIST 0
#define KVM_VGIC_V2_ADDR_TYPE_CPU 1
#define KVM_VGIC_V2_DIST_SIZE 0x1000
#define KVM_VGIC_V2_CPU_SIZE 0x2000
#define KVM_VGIC_V3_ADDR_TYPE_DIST 2
#define KVM_VGIC_V3_ADDR_TYPE_REDIST 3
#define KVM_VGIC_ITS_ADDR_TYPE 4
#define KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION 5
#define KVM_VGIC_V3_DIST_SIZE 0x10000
#define KVM_VGIC_V3_REDIST_SIZE 0x20000
#define KVM_VGIC_V3_ITS_SIZE 0x20000

/* VGIC device groups */
#define KVM_DEV_ARM_VGIC_GRP_ADDR 0
#define KVM_DEV_ARM_VGIC_GRP_DIST_REGS 1
#define KVM_DEV_ARM_VGIC_GRP_CPU_REGS 2
#define KVM_DEV_ARM_VGIC_CPUID_SHIFT 32
#define KVM_DEV_ARM_VGIC_CPUID_MASK 0xff00000000
#define KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT 32
#define KVM_DEV_ARM_VGIC_V3_MPIDR_MASK 0xffffffff00000000
#define KVM_DEV_ARM_VGIC_OFFSET_SHIFT 0
#define KVM_DEV_ARM_VGIC_OFFSET_MASK 0xffffffff
#define KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK 0xffff
#define KVM_DEV_ARM_VGIC_GRP_NR_IRQS 3
#define KVM_DEV_ARM_VGIC_GRP_CTRL 4
#define KVM_DEV_ARM_VGIC_GRP_REDIST_REGS 5
#define KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS 6
#define KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO 7
#define KVM_DEV_ARM_VGIC_GRP_ITS_REGS 8
#define KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT 10
#define KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_MASK 0xfffffc00
#define KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK 0x3ff
#define VGIC_LEVEL_INFO_LINE_LEVEL 0

/* KVM_DEV_ARM_VGIC_GRP_CTRL attributes */
#define KVM_DEV_ARM_VGIC_CTRL_INIT 0
#define KVM_DEV_ARM_ITS_SAVE_TABLES 1
#define KVM_DEV_ARM_ITS_RESTORE_TABLES 2
#define KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES 3
#define KVM_DEV_ARM_ITS_CTRL_RESET 4
/* VGIC v5 (arm-vgic-v5.rst; newest arch/arm64/include/uapi/asm/kvm.h): a
 * KVM_DEV_ARM_VGIC_GRP_CTRL attr, get-only, two __u64 (PPIs 0-63, 64-127).
 * The doc spells it KVM_DEV_ARM_VGIC_USERPSPACE_PPIS; this is the code's name. */
#define KVM_DEV_ARM_VGIC_USERSPACE_PPIS 5

/* vCPU attribute groups (Documentation/virt/kvm/devices/vcpu.rst) */
#define KVM_ARM_VCPU_PMU_V3_CTRL 0
#define KVM_ARM_VCPU_PMU_V3_IRQ 0
#define KVM_ARM_VCPU_PMU_V3_INIT 1
#define KVM_ARM_VCPU_PMU_V3_FILTER 2
#define KVM_ARM_VCPU_PMU_V3_SET_PMU 3
#define KVM_ARM_VCPU_TIMER_CTRL 1
#define KVM_ARM_VCPU_TIMER_IRQ_VTIMER 0
#define KVM_ARM_VCPU_TIMER_IRQ_PTIMER 1
/* the EL2 timers of nested virt (v6.4 arch/arm64/include/uapi/asm/kvm.h) */
#define KVM_ARM_VCPU_TIMER_IRQ_HVTIMER 2
#define KVM_ARM_VCPU_TIMER_IRQ_HPTIMER 3
#define KVM_ARM_VCPU_PVTIME_CTRL 2
#define KVM_ARM_VCPU_PVTIME_IPA 0
/* KVM_ARM_VCPU_PMU_V3_FILTER's payload */
struct kvm_pmu_event_filter {
	__u16 base_event;
	__u16 nevents;
	__u8 action;
	__u8 pad[3];
};
#define KVM_PMU_EVENT_ALLOW 0
#define KVM_PMU_EVENT_DENY 1

/* VM attributes (v6.4): the SMCCC filter, set on the VM fd */
#define KVM_ARM_VM_SMCCC_CTRL 0
#define KVM_ARM_VM_SMCCC_FILTER 0
struct kvm_smccc_filter {
	__u32 base;
	__u32 nr_functions;
	__u8 action;
	__u8 pad[15];
};
#define KVM_SMCCC_FILTER_HANDLE 0
#define KVM_SMCCC_FILTER_DENY 1
#define KVM_SMCCC_FILTER_FWD_TO_USER 2

/* KVM_IRQ_LINE irq field layout */
#define KVM_ARM_IRQ_VCPU2_SHIFT 28
#define KVM_ARM_IRQ_VCPU2_MASK 0xf
#define KVM_ARM_IRQ_TYPE_SHIFT 24
#define KVM_ARM_IRQ_TYPE_MASK 0xf
#define KVM_ARM_IRQ_VCPU_SHIFT 16
#define KVM_ARM_IRQ_VCPU_MASK 0xff
#define KVM_ARM_IRQ_NUM_SHIFT 0
#define KVM_ARM_IRQ_NUM_MASK 0xffff
#define KVM_ARM_IRQ_TYPE_CPU 0
#define KVM_ARM_IRQ_TYPE_SPI 1
#define KVM_ARM_IRQ_TYPE_PPI 2
#define KVM_ARM_IRQ_CPU_IRQ 0
#define KVM_ARM_IRQ_CPU_FIQ 1
#define KVM_ARM_IRQ_GIC_MAX 127
