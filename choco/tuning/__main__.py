"""``python -m choco.tuning``: see :mod:`choco.run.tuning_cli`."""

import sys

from choco.run.tuning_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
