"""arm64 arch hooks of the mock.  Device and attribute models of this
architecture are added by the issues that type them."""
from __future__ import annotations

from . import vfio  # noqa: F401  (registers the VFIO model)
from .kernel import ArchModel as _Base


class ArchModel(_Base):
    pass
