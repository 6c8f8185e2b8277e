"""x86 system-fd and vCPU attributes (vcpu.rst 4.; api.rst KVM_GET_DEVICE_ATTR on /dev/kvm)."""
from __future__ import annotations

from ..attrs import RO, RW, Attr, Group, arch_only, attr_property, register

X86 = ("x86_64",)

register("system", [
    Group("KVM_X86_GRP_SYSTEM", arches=X86, attrs=(
        Attr("KVM_X86_XCOMP_GUEST_SUPP", "__u64", RO,
             "XSAVE components (XCR0 bits) that KVM can expose to guests"),
    )),
    Group("KVM_X86_GRP_SEV", arches=X86, doc="AMD SEV (ENXIO on hosts without SEV)", attrs=(
        Attr("KVM_X86_SEV_VMSA_FEATURES", "__u64", RO,
             "the set of all bits that are accepted in the vmsa_features of KVM_SEV_INIT2"),
    )),
])

register("vcpu", [
    Group("KVM_VCPU_TSC_CTRL", arches=X86, doc="control group for the timestamp counter (TSC)", attrs=(
        Attr("KVM_VCPU_TSC_OFFSET", "__u64", RW,
             "the TSC offset of the vCPU: guest TSC = host TSC (scaled) + offset; "
             "kvm_device_attr.addr points to a __u64"),
    )),
])


@arch_only(*X86)
class X86SystemAttrs:
    """Typed x86 attributes of the system fd (mixed into Kvm)."""

    xcomp_guest_supp = attr_property(
        "KVM_X86_GRP_SYSTEM", "KVM_X86_XCOMP_GUEST_SUPP", RO,
        "XSAVE components (XCR0 bits) that KVM can expose to guests (x86)")


@arch_only(*X86)
class X86VcpuAttrs:
    """Typed x86 vCPU attributes (mixed into Vcpu)."""

    tsc_offset = attr_property("KVM_VCPU_TSC_CTRL", "KVM_VCPU_TSC_OFFSET", RW, "the vCPU's TSC offset (x86)")
