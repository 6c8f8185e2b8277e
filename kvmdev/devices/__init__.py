"""Typed device families: one module each, mostly tables.  Importing a module
registers its attribute tables and classes; ``import kvmdev`` imports them all.
This package imports nothing itself: the fd layer imports the vCPU/VM mixins
(arm64_vcpu, x86) from here, and the device modules import the fd layer."""
