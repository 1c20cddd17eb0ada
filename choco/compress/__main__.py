"""``python -m choco.compress``: see :mod:`choco.run.compress_cli`."""

import sys

from choco.run.compress_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
