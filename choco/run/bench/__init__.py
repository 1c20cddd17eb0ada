"""Benchmarks, as subcommands of ``python -m choco.bench``.

``python -m choco.bench compressors [--numel 11000000] [--device cpu|cuda]`` times every
compressor's encode and decode against a plain fp32 copy of the same tensor
(:mod:`choco.run.bench.compressors`). Further subcommands (e.g. a gossip benchmark) register in
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..cli import HelpFormatter, add_version_argument, run_local, setup_output
from ..files import ArgumentParser
from . import compressors, delta, gossip, scaling, simnet, train, whatif

#: subcommand -> (help, add_arguments(parser), run(args) -> exit status)
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], int]]] = {
    "compressors": (compressors.HELP, compressors.add_arguments, compressors.run),
    "delta": (delta.HELP, delta.add_arguments, delta.run),
    "gossip": (gossip.HELP, gossip.add_arguments, gossip.run),
    "train": (train.HELP, train.add_arguments, train.run),
    "scaling": (scaling.HELP, scaling.add_arguments, scaling.run),
    "simnet": (simnet.HELP, simnet.add_arguments, simnet.run),
    "whatif": (whatif.HELP, whatif.add_arguments, whatif.run),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m choco.bench``."""
    parser = ArgumentParser(prog="python -m choco.bench", description=__doc__.split(
        "\n")[0], formatter_class=HelpFormatter)
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=HelpFormatter))
    setup_output()
    args = parser.parse_args(argv)

    return run_local(lambda: SUBCOMMANDS[args.command][2](args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
