/* powerpc: arch/powerpc/include/uapi/asm/kvm.h.  Device groups and
 * attributes for MPIC and XICS arrive with their typed devices. */
#define KVM_DEV_MPIC_GRP_MISC 1
#define KVM_DEV_MPIC_BASE_ADDR 0
#define KVM_DEV_MPIC_GRP_REGISTER 2
#define KVM_DEV_MPIC_GRP_IRQ_ACTIVE 3
#define KVM_DEV_XICS_GRP_SOURCES 1
