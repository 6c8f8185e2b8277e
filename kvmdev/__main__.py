"""python -m kvmdev: the command line (kvmdev.cli)."""
import sys

from .cli import main

sys.exit(main())
