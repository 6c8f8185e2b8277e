"""Assertion helpers shared by the test modules."""
from __future__ import annotations

import errno as E

import pytest

import kvmdev


def raises(errno: int, fn, *args, **kw) -> kvmdev.KvmError:
    """Call fn and assert it fails with KvmError(errno); return the error for more checks."""
    with pytest.raises(kvmdev.KvmError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == errno, f"{ei.value} (wanted {E.errorcode[errno]})"
    return ei.value
