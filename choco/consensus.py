"""``python -m choco.consensus`` (``choco-consensus``): see :mod:`choco.run.consensus`."""

import sys

from choco.run.consensus import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
