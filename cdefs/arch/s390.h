/* s390: arch/s390/include/uapi/asm/kvm.h.  FLIC and VM attribute groups. */
#define KVM_DEV_FLIC_GET_ALL_IRQS 1
#define KVM_DEV_FLIC_ENQUEUE 2
#define KVM_DEV_FLIC_CLEAR_IRQS 3
#define KVM_DEV_FLIC_APF_ENABLE 4
#define KVM_DEV_FLIC_APF_DISABLE_WAIT 5
#define KVM_DEV_FLIC_ADAPTER_REGISTER 6
#define KVM_DEV_FLIC_ADAPTER_MODIFY 7
#define KVM_DEV_FLIC_CLEAR_IO_IRQ 8
#define KVM_DEV_FLIC_AISM 9
#define KVM_DEV_FLIC_AIRQ_INJECT 10
#define KVM_DEV_FLIC_AISM_ALL 11
#define KVM_S390_VM_MEM_CTRL 0
#define KVM_S390_VM_TOD 1
#define KVM_S390_VM_CRYPTO 2
#define KVM_S390_VM_CPU_MODEL 3
#define KVM_S390_VM_MIGRATION 4

/* FLIC payloads (include/uapi/linux/kvm.h) */
struct kvm_s390_io_info {
	__u16 subchannel_id;
	__u16 subchannel_nr;
	__u32 io_int_parm;
	__u32 io_int_word;
};
struct kvm_s390_ext_info {
	__u32 ext_params;
	__u32 pad;
	__u64 ext_params2;
};
struct kvm_s390_pgm_info {
	__u64 trans_exc_code;
	__u64 mon_code;
	__u64 per_address;
	__u32 data_exc_code;
	__u16 code;
	__u16 mon_class_nr;
	__u8 per_code;
	__u8 per_atmid;
	__u8 exc_access_id;
	__u8 per_access_id;
	__u8 op_access_id;
	__u8 flags;
	__u8 pad[2];
};
struct kvm_s390_prefix_info {
	__u32 address;
};
struct kvm_s390_extcall_info {
	__u16 code;
};
struct kvm_s390_emerg_info {
	__u16 code;
};
struct kvm_s390_stop_info {
	__u32 flags;
};
struct kvm_s390_mchk_info {
	__u64 cr14;
	__u64 mcic;
	__u64 failing_storage_address;
	__u32 ext_damage_code;
	__u32 pad;
	__u8 fixed_logout[16];
};
struct kvm_s390_irq {
	__u64 type;
	union {
		struct kvm_s390_io_info io;
		struct kvm_s390_ext_info ext;
		struct kvm_s390_pgm_info pgm;
		struct kvm_s390_emerg_info emerg;
		struct kvm_s390_extcall_info extcall;
		struct kvm_s390_prefix_info prefix;
		struct kvm_s390_stop_info stop;
		struct kvm_s390_mchk_info mchk;
		char reserved[64];
	} u;
};
struct kvm_s390_io_adapter {
	__u32 id;
	__u8 isc;
	__u8 maskable;
	__u8 swap;
	__u8 flags;
};
#define KVM_S390_ADAPTER_SUPPRESSIBLE 0x01
#define KVM_S390_IO_ADAPTER_MASK 1
#define KVM_S390_IO_ADAPTER_MAP 2
#define KVM_S390_IO_ADAPTER_UNMAP 3
struct kvm_s390_io_adapter_req {
	__u32 id;
	__u8 type;
	__u8 mask;
	__u16 pad0;
	__u64 addr;
};
struct kvm_s390_ais_req {
	__u8 isc;
	__u16 mode;
};
struct kvm_s390_ais_all {
	__u8 simm;
	__u8 nimm;
};
/* interrupt types (struct kvm_s390_irq.type) */
#define KVM_S390_SIGP_STOP 0xfffe0000
#define KVM_S390_PROGRAM_INT 0xfffe0001
#define KVM_S390_SIGP_SET_PREFIX 0xfffe0002
#define KVM_S390_RESTART 0xfffe0003
#define KVM_S390_INT_PFAULT_INIT 0xfffe0004
#define KVM_S390_INT_PFAULT_DONE 0xfffe0005
#define KVM_S390_MCHK 0xfffe1000
#define KVM_S390_INT_CLOCK_COMP 0xffff1004
#define KVM_S390_INT_CPU_TIMER 0xffff1005
#define KVM_S390_INT_VIRTIO 0xffff2603
#define KVM_S390_INT_SERVICE 0xffff2401
#define KVM_S390_INT_EMERGENCY 0xffff1201
#define KVM_S390_INT_EXTERNAL_CALL 0xffff1202
#define KVM_S390_INT_IO_MIN 0x00000000
#define KVM_S390_INT_IO_MAX 0xfffdffff
#define KVM_S390_INT_IO_AI_MASK 0x04000000

/* VM attributes (arch/s390/include/uapi/asm/kvm.h) */
#define KVM_S390_VM_MEM_ENABLE_CMMA 0
#define KVM_S390_VM_MEM_CLR_CMMA 1
#define KVM_S390_VM_MEM_LIMIT_SIZE 2
#define KVM_S390_NO_MEM_LIMIT 0xffffffffffffffff
#define KVM_S390_VM_TOD_LOW 0
#define KVM_S390_VM_TOD_HIGH 1
#define KVM_S390_VM_TOD_EXT 2
struct kvm_s390_vm_tod_clock {
	__u8 epoch_idx;
	__u64 tod;
};
#define KVM_S390_VM_CPU_PROCESSOR 0
#define KVM_S390_VM_CPU_MACHINE 1
#define KVM_S390_VM_CPU_PROCESSOR_FEAT 2
#define KVM_S390_VM_CPU_MACHINE_FEAT 3
#define KVM_S390_VM_CPU_PROCESSOR_SUBFUNC 4
#define KVM_S390_VM_CPU_MACHINE_SUBFUNC 5
/* v6.6 arch/s390/include/uapi/asm/kvm.h: the UV features a guest may use */
#define KVM_S390_VM_CPU_PROCESSOR_UV_FEAT_GUEST 6
#define KVM_S390_VM_CPU_MACHINE_UV_FEAT_GUEST 7
#define KVM_S390_FLIC_MAX_BUFFER 0x2000000
struct kvm_s390_vm_cpu_processor {
	__u64 cpuid;
	__u16 ibc;
	__u8 pad[6];
	__u64 fac_list[256];
};
struct kvm_s390_vm_cpu_machine {
	__u64 cpuid;
	__u32 ibc;
	__u8 pad[4];
	__u64 fac_mask[256];
	__u64 fac_list[256];
};
#define KVM_S390_VM_CPU_FEAT_NR_BITS 1024
struct kvm_s390_vm_cpu_feat {
	__u64 feat[16];
};
struct kvm_s390_vm_cpu_subfunc {
	__u8 plo[32];
	__u8 ptff[16];
	__u8 kmac[16];
	__u8 kmc[16];
	__u8 km[16];
	__u8 kimd[16];
	__u8 klmd[16];
	__u8 pckmo[16];
	__u8 kmctr[16];
	__u8 kmf[16];
	__u8 kmo[16];
	__u8 pcc[16];
	__u8 ppno[16];
	__u8 kma[16];
	__u8 kdsa[16];
	__u8 sortl[32];
	__u8 dfltcc[32];
	__u8 reserved[1728];
};
#define KVM_S390_VM_CRYPTO_ENABLE_AES_KW 0
#define KVM_S390_VM_CRYPTO_ENABLE_DEA_KW 1
#define KVM_S390_VM_CRYPTO_DISABLE_AES_KW 2
#define KVM_S390_VM_CRYPTO_DISABLE_DEA_KW 3
#define KVM_S390_VM_CRYPTO_ENABLE_APIE 4
#define KVM_S390_VM_CRYPTO_DISABLE_APIE 5
#define KVM_S390_VM_MIGRATION_STOP 0
#define KVM_S390_VM_MIGRATION_START 1
#define KVM_S390_VM_MIGRATION_STATUS 2
