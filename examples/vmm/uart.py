"""A 16550A UART over MMIO (one byte per register, reg-shift 0), enough for
Linux's 8250 driver: the transmitter is always empty (bytes go out at once), the
receiver has a FIFO fed from the host, and the interrupt line (an SPI, raised and
lowered with KVM_IRQ_LINE by the ``set_irq`` callback) follows IIR like a real
16550: receive-data-available before transmitter-holding-register-empty.
Everything the guest can see is in ``state()`` so a snapshot can carry it."""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

# register offsets and bits (include/uapi/linux/serial_reg.h)
RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
IER_RDI, IER_THRI = 0x01, 0x02
IIR_NO_INT, IIR_THRI, IIR_RDI, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
MSR_DCD_DSR_CTS = 0xB0
FIFO_SIZE = 64


class Uart16550:
    SIZE = 0x1000     # the MMIO window the VMM routes here

    def __init__(self, out: Callable[[bytes], None], set_irq: Callable[[int], None]) -> None:
        self.out, self.set_irq = out, set_irq
        self.lock = threading.Lock()   # vCPU threads (MMIO) and the input thread (receive)
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = self.dll = self.dlm = 0
        self.thri_pending = False      # THRE interrupt: armed by THR writes/IER, cleared by reading IIR
        self.rx: deque[int] = deque()
        self.level = 0

    # -- what the guest sees
    def _iir(self) -> int:
        fifo = IIR_FIFO if self.fcr & 1 else 0
        if self.ier & IER_RDI and self.rx:
            return IIR_RDI | fifo
        if self.ier & IER_THRI and self.thri_pending:
            return IIR_THRI | fifo
        return IIR_NO_INT | fifo

    def _update(self) -> None:
        level = 0 if self._iir() & IIR_NO_INT else 1
        if level != self.level:
            self.level = level
            self.set_irq(level)

    def read(self, off: int) -> int:
        with self.lock:
            dlab = self.lcr & LCR_DLAB
            if off == RBR_THR:
                v = self.dll if dlab else (self.rx.popleft() if self.rx else 0)
            elif off == IER:
                v = self.dlm if dlab else self.ier
            elif off == IIR_FCR:
                v = self._iir()
                if v & 0x0F == IIR_THRI:   # reading IIR that reports THRE clears it
                    self.thri_pending = False
            elif off == LCR:
                v = self.lcr
            elif off == MCR:
                v = self.mcr
            elif off == LSR:
                v = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
            elif off == MSR:
                v = MSR_DCD_DSR_CTS
            elif off == SCR:
                v = self.scr
            else:
                v = 0
            self._update()
            return v

    def write(self, off: int, v: int) -> None:
        with self.lock:
            dlab = self.lcr & LCR_DLAB
            if off == RBR_THR and dlab:
                self.dll = v
            elif off == RBR_THR:
                self.out(bytes([v]))
                self.thri_pending = True     # sent at once: the holding register is empty again
            elif off == IER and dlab:
                self.dlm = v
            elif off == IER:
                if v & IER_THRI and not self.ier & IER_THRI:
                    self.thri_pending = True # enabling THRE with an empty THR interrupts at once
                self.ier = v & 0x0F
            elif off == IIR_FCR:
                self.fcr = v & 0xC9          # FIFO enable, DMA mode, trigger level
                if v & 0x02:
                    self.rx.clear()
            elif off == LCR:
                self.lcr = v
            elif off == MCR:
                self.mcr = v & 0x1F
            elif off == SCR:
                self.scr = v
            self._update()

    # -- the host side
    def receive(self, data: bytes) -> int:
        """Queue what fits of ``data`` in the receive FIFO; returns how many bytes."""
        with self.lock:
            n = min(len(data), FIFO_SIZE - len(self.rx))
            self.rx.extend(data[:n])
            self._update()
            return n

    def state(self) -> dict[str, object]:
        with self.lock:
            return {k: getattr(self, k) for k in ("ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm",
                                                   "thri_pending", "level")} | {"rx": list(self.rx)}

    def set_state(self, st: dict[str, object]) -> None:
        """Load a saved state; the caller raises the line again if ``level`` says so
        (the GIC snapshot already holds the SPI's level)."""
        with self.lock:
            for k, v in st.items():
                if k == "rx":
                    self.rx = deque(v)       # type: ignore[arg-type]
                else:
                    setattr(self, k, v)
