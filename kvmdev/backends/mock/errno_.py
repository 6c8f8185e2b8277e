"""The mock's -errno (its own module: kernel.py and the models it imports both raise it)."""
from __future__ import annotations


class Errno(Exception):
    """Raised inside the mock where the kernel returns -errno."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno
