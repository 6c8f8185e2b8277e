"""Typed device families: one module each, mostly tables.  Importing this
package registers every family's attribute tables and classes."""
from . import arm64_vcpu, its, vfio, vgic, x86  # noqa: F401
