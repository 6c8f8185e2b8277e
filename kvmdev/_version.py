"""The package version: the one place it is written (pyproject.toml reads it as
``[tool.setuptools.dynamic] version``; ``kvmdev.__version__`` and ``kvmdev --version``
show it)."""
__version__ = "0.1.0"
