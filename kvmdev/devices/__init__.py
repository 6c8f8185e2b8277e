"""Typed device families: one module each, mostly tables.  Importing this
package registers every family's attribute tables and classes."""
from . import arm64_vcpu, its, mpic, vfio, vgic, vgic_v5, x86, xics  # noqa: F401
