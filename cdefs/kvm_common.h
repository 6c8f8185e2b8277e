/*
 * Architecture-independent subset of <linux/kvm.h> that kvmdev binds.
 * This file is both a cffi cdef and the C source of every compiled module,
 * so it holds only what cffi's parser accepts: integer #defines and plain
 * structs.  tests/test_cdefs_headers.py checks every value, size and field
 * offset here against the kernel's own uapi headers.
 */

#define KVMIO 0xAE
#define KVM_API_VERSION 12

/* KVM_CHECK_EXTENSION capabilities */
#define KVM_CAP_USER_MEMORY 3
#define KVM_CAP_NR_VCPUS 9
#define KVM_CAP_NR_MEMSLOTS 10
#define KVM_CAP_MP_STATE 14
#define KVM_CAP_IRQ_ROUTING 25
#define KVM_CAP_IRQFD 32
#define KVM_CAP_IOEVENTFD 36
#define KVM_CAP_MAX_VCPUS 66
#define KVM_CAP_ONE_REG 70
#define KVM_CAP_SIGNAL_MSI 77
#define KVM_CAP_DEVICE_CTRL 89
#define KVM_CAP_IRQ_MPIC 90
#define KVM_CAP_IRQ_XICS 92
#define KVM_CAP_PPC_PAPR 68
#define KVM_CAP_ARM_EL1_32BIT 93
#define KVM_CAP_S390_IRQCHIP 99
#define KVM_CAP_VM_ATTRIBUTES 101
#define KVM_CAP_ARM_PSCI_0_2 102
#define KVM_CAP_ARM_PMU_V3 126
#define KVM_CAP_VCPU_ATTRIBUTES 127
#define KVM_CAP_MAX_VCPU_ID 128
#define KVM_CAP_MSI_DEVID 131
#define KVM_CAP_ARM_VM_IPA_SIZE 165
#define KVM_CAP_ARM_SVE 170
#define KVM_CAP_ARM_PTRAUTH_ADDRESS 171
#define KVM_CAP_ARM_PTRAUTH_GENERIC 172
#define KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 174
#define KVM_CAP_SYS_ATTRIBUTES 209

/* KVM_RUN exit reasons */
#define KVM_EXIT_UNKNOWN 0
#define KVM_EXIT_EXCEPTION 1
#define KVM_EXIT_IO 2
#define KVM_EXIT_HYPERCALL 3
#define KVM_EXIT_DEBUG 4
#define KVM_EXIT_HLT 5
#define KVM_EXIT_MMIO 6
#define KVM_EXIT_IRQ_WINDOW_OPEN 7
#define KVM_EXIT_SHUTDOWN 8
#define KVM_EXIT_FAIL_ENTRY 9
#define KVM_EXIT_INTR 10
#define KVM_EXIT_SET_TPR 11
#define KVM_EXIT_TPR_ACCESS 12
#define KVM_EXIT_S390_SIEIC 13
#define KVM_EXIT_S390_RESET 14
#define KVM_EXIT_DCR 15
#define KVM_EXIT_NMI 16
#define KVM_EXIT_INTERNAL_ERROR 17
#define KVM_EXIT_OSI 18
#define KVM_EXIT_PAPR_HCALL 19
#define KVM_EXIT_S390_UCONTROL 20
#define KVM_EXIT_WATCHDOG 21
#define KVM_EXIT_S390_TSCH 22
#define KVM_EXIT_EPR 23
#define KVM_EXIT_SYSTEM_EVENT 24
#define KVM_EXIT_S390_STSI 25
#define KVM_EXIT_IOAPIC_EOI 26
#define KVM_EXIT_HYPERV 27
#define KVM_EXIT_ARM_NISV 28

/* KVM_CREATE_DEVICE */
#define KVM_CREATE_DEVICE_TEST 1

/* enum kvm_device_type; values after ARM_PV_TIME are newer than 6.1: RISCV_AIA
 * (11, v6.5), the LoongArch IPI/EIOINTC/PCHPIC (12-14, v6.15), then, in the
 * newest include/uapi/linux/kvm.h (its exported copies list the enum as
 * ... PCHPIC, LOONGARCH_DMSINTC, ARM_VGIC_V5, MAX), DMSINTC 15 and VGIC_V5 16. */
#define KVM_DEV_TYPE_FSL_MPIC_20 1
#define KVM_DEV_TYPE_FSL_MPIC_42 2
#define KVM_DEV_TYPE_XICS 3
#define KVM_DEV_TYPE_VFIO 4
#define KVM_DEV_TYPE_ARM_VGIC_V2 5
#define KVM_DEV_TYPE_FLIC 6
#define KVM_DEV_TYPE_ARM_VGIC_V3 7
#define KVM_DEV_TYPE_ARM_VGIC_ITS 8
#define KVM_DEV_TYPE_XIVE 9
#define KVM_DEV_TYPE_ARM_PV_TIME 10
#define KVM_DEV_TYPE_RISCV_AIA 11
#define KVM_DEV_TYPE_LOONGARCH_IPI 12
#define KVM_DEV_TYPE_LOONGARCH_EIOINTC 13
#define KVM_DEV_TYPE_LOONGARCH_PCHPIC 14
#define KVM_DEV_TYPE_LOONGARCH_DMSINTC 15
#define KVM_DEV_TYPE_ARM_VGIC_V5 16

/* VFIO device (Documentation/virt/kvm/devices/vfio.rst).  KVM_DEV_VFIO_FILE
 * (v6.6) renamed KVM_DEV_VFIO_GROUP; both names have the same values. */
#define KVM_DEV_VFIO_FILE 1
#define KVM_DEV_VFIO_FILE_ADD 1
#define KVM_DEV_VFIO_FILE_DEL 2
#define KVM_DEV_VFIO_GROUP 1
#define KVM_DEV_VFIO_GROUP_ADD 1
#define KVM_DEV_VFIO_GROUP_DEL 2
#define KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE 3

struct kvm_create_device {
	__u32 type;
	__u32 fd;
	__u32 flags;
};

struct kvm_device_attr {
	__u32 flags;
	__u32 group;
	__u64 attr;
	__u64 addr;
};

struct kvm_vfio_spapr_tce {
	__s32 groupfd;
	__s32 tablefd;
};

struct kvm_userspace_memory_region {
	__u32 slot;
	__u32 flags;
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
};

#define KVM_MEM_LOG_DIRTY_PAGES 1
#define KVM_MEM_READONLY 2

struct kvm_irq_level {
	__u32 irq;
	__u32 level;
};

struct kvm_msi {
	__u32 address_lo;
	__u32 address_hi;
	__u32 data;
	__u32 flags;
	__u32 devid;
	__u8  pad[12];
};

#define KVM_MSI_VALID_DEVID 1

struct kvm_enable_cap {
	__u32 cap;
	__u32 flags;
	__u64 args[4];
	__u8  pad[64];
};

/* KVM_{GET,SET}_ONE_REG register ids */
#define KVM_REG_ARCH_MASK 0xff00000000000000
#define KVM_REG_ARM64 0x6000000000000000
#define KVM_REG_SIZE_SHIFT 52
#define KVM_REG_SIZE_MASK 0x00f0000000000000
#define KVM_REG_SIZE_U8 0x0000000000000000
#define KVM_REG_SIZE_U16 0x0010000000000000
#define KVM_REG_SIZE_U32 0x0020000000000000
#define KVM_REG_SIZE_U64 0x0030000000000000
#define KVM_REG_SIZE_U128 0x0040000000000000
#define KVM_REG_SIZE_U256 0x0050000000000000
#define KVM_REG_SIZE_U512 0x0060000000000000
#define KVM_REG_SIZE_U1024 0x0070000000000000
#define KVM_REG_SIZE_U2048 0x0080000000000000

struct kvm_one_reg {
	__u64 id;
	__u64 addr;
};

/* KVM_GET_REG_LIST: the kernel's struct ends in __u64 reg[] (a flexible array,
 * declared here as the n it starts with; kvmdev allocates n + 1 __u64s). */
struct kvm_reg_list {
	__u64 n;
};

/* KVM_{GET,SET}_MP_STATE */
#define KVM_MP_STATE_RUNNABLE 0
#define KVM_MP_STATE_UNINITIALIZED 1
#define KVM_MP_STATE_INIT_RECEIVED 2
#define KVM_MP_STATE_HALTED 3
#define KVM_MP_STATE_SIPI_RECEIVED 4
#define KVM_MP_STATE_STOPPED 5
#define KVM_MP_STATE_CHECK_STOP 6
#define KVM_MP_STATE_OPERATING 7
#define KVM_MP_STATE_LOAD 8
#define KVM_MP_STATE_AP_RESET_HOLD 9
#define KVM_MP_STATE_SUSPENDED 10

struct kvm_mp_state {
	__u32 mp_state;
};

/* KVM_IRQFD */
#define KVM_IRQFD_FLAG_DEASSIGN 1
#define KVM_IRQFD_FLAG_RESAMPLE 2

struct kvm_irqfd {
	__u32 fd;
	__u32 gsi;
	__u32 flags;
	__u32 resamplefd;
	__u8  pad[16];
};

/* KVM_IOEVENTFD */
#define KVM_IOEVENTFD_FLAG_DATAMATCH 1
#define KVM_IOEVENTFD_FLAG_PIO 2
#define KVM_IOEVENTFD_FLAG_DEASSIGN 4

struct kvm_ioeventfd {
	__u64 datamatch;
	__u64 addr;
	__u32 len;
	__s32 fd;
	__u32 flags;
	__u8  pad[36];
};

/* kvmdev:prefix - the fixed head of the shared kvm_run page and the exit
 * union members kvmdev reads; the rest of the page is not declared. */
struct kvm_run {
	__u8  request_interrupt_window;
	__u8  immediate_exit;
	__u8  padding1[6];
	__u32 exit_reason;
	__u8  ready_for_interrupt_injection;
	__u8  if_flag;
	__u16 flags;
	__u64 cr8;
	__u64 apic_base;
	/* kvmdev:arch-run-fields (cdefs/arch/<arch>.run.h, s390's PSW) */
	union {
		/* KVM_EXIT_MMIO */
		struct {
			__u64 phys_addr;
			__u8  data[8];
			__u32 len;
			__u8  is_write;
		} mmio;
		/* KVM_EXIT_SYSTEM_EVENT (data[] is a union with the older 'flags') */
		struct {
			__u32 type;
			__u32 ndata;
			__u64 data[16];
		} system_event;
		char padding[256];
	};
};

#define KVM_SYSTEM_EVENT_SHUTDOWN 1
#define KVM_SYSTEM_EVENT_RESET 2
#define KVM_SYSTEM_EVENT_CRASH 3
