"""``python -m topologies``: see :mod:`choco.run.topologies_cli` (the run layer's program).

A thin entry point like ``python -m choco.train``: the package itself is graphs, mixing
rules and specs, and imports nothing of choco but :mod:`choco.errors`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m topologies``; return the exit status (0, or 2 on invalid input)."""
    from choco.run.topologies_cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
