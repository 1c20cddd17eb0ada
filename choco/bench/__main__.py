"""``python -m choco.bench``: see :mod:`choco.run.bench`."""

import sys

from choco.run.bench import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
