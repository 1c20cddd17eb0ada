"""``python -m choco.train`` (``choco-train``): see :mod:`choco.run.train`."""

import sys

from choco.run.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
