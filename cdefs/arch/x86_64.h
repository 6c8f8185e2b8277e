/* x86_64: arch/x86/include/uapi/asm/kvm.h */

/* system fd (/dev/kvm) attributes.  KVM_X86_GRP_SYSTEM and KVM_X86_GRP_SEV
 * are named from v6.10 on; 6.1 has the value 0 only as a comment. */
#define KVM_X86_GRP_SYSTEM 0
#define KVM_X86_XCOMP_GUEST_SUPP 0
#define KVM_X86_GRP_SEV 1
#define KVM_X86_SEV_VMSA_FEATURES 0

/* vCPU attributes (Documentation/virt/kvm/devices/vcpu.rst, 4.) */
#define KVM_VCPU_TSC_CTRL 0
#define KVM_VCPU_TSC_OFFSET 0

#define KVM_CAP_TSC_CONTROL 60
#define KVM_CAP_GET_TSC_KHZ 61
#define KVM_CAP_VM_TSC_CONTROL 214
