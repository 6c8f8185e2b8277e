# Metadata lives in pyproject.toml; setup.py only names the cffi builders,
# which setuptools has no pyproject key for.
from setuptools import setup

setup(
    cffi_modules=[
        "cdefs/build.py:ffi_x86_64",
        "cdefs/build.py:ffi_arm64",
        "cdefs/build.py:ffi_powerpc",
        "cdefs/build.py:ffi_s390",
    ]
)
