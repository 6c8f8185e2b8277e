"""Typed device families: one module each, mostly tables.  Importing this
package registers every family's attribute tables and classes."""
from . import arm64_vcpu, flic, its, mpic, s390_vm, vfio, vgic, vgic_v5, x86, xics  # noqa: F401
