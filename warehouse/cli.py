"""Where ``mhw``'s command line used to live, kept for ``python -m warehouse.cli`` and ``from warehouse
import cli``: the command line is mhw/cli.py, on top of the layers it composes, not in this one."""
from __future__ import annotations

import sys

from mhw.cli import COMMANDS, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
