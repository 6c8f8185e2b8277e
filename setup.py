# Metadata lives in pyproject.toml; setup.py only names the cffi builders, which
# setuptools has no pyproject key for, and tags the wheel abi3: cffi compiles the
# modules against the limited API (Py_LIMITED_API, see cdefs/build.py), so one
# wheel per platform serves CPython 3.10 and every later 3.x.
from setuptools import setup

setup(
    cffi_modules=[
        "cdefs/build.py:ffi_x86_64",
        "cdefs/build.py:ffi_arm64",
        "cdefs/build.py:ffi_powerpc",
        "cdefs/build.py:ffi_s390",
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
