"""The fd layer: one type per kind of kernel fd (Kvm, Vm, Vcpu, Device).

This module re-exports them; they live in kvmdev._fd (the fd base: lifetime and
ioctls), kvmdev.attr_target (device attributes), kvmdev.kvm, kvmdev.vm,
kvmdev.vcpu and kvmdev.device.
"""
from __future__ import annotations

from ._fd import _Fd
from .attr_target import AttrProgram, _AttrTarget
from .device import DEVICE_CLASSES, Device
from .kvm import Kvm
from .vcpu import MmioExit, SystemEvent, Vcpu, VcpuInit, exit_reason_name
from .vm import GuestMemory, Vm

__all__ = ["Kvm", "Vm", "Vcpu", "Device", "DEVICE_CLASSES", "GuestMemory", "AttrProgram", "VcpuInit", "MmioExit",
           "SystemEvent", "exit_reason_name", "_Fd", "_AttrTarget"]
