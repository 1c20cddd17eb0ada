"""What every command-line program shares: errors, options, warnings, help.

A user error (any :class:`choco.errors.ChocoError`: bad spec, wrong rank count, missing
file) is printed as one paragraph on stderr, ``error: ...``, and the program exits with
status 2 having written nothing; a bad command line too (:class:`ArgumentParser`). Python
warnings are printed as ``warning: ...``, once each, by rank 0. How a program starts and
ends under each launcher (backends, abort on error, exit codes) is :mod:`choco.run.launch`;
its names used by every program are re-exported here.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from typing import NoReturn

from .. import __version__
from ..errors import UsageError
from .launch import (
    BACKENDS,
    DIVERGED_EXIT,
    USAGE_EXIT,
    launched_by_mpi,
    launched_by_torchrun,
    launcher_rank,
    refuse_local_under_mpi,
    resolve_backend,
    run,
    run_local,
    run_mpi,
)

__all__ = [
    "BACKENDS",
    "DIVERGED_EXIT",
    "USAGE_EXIT",
    "ArgumentParser",
    "HelpFormatter",
    "UsageError",
    "add_backend_argument",
    "add_gossip_arguments",
    "add_version_argument",
    "launched_by_mpi",
    "launched_by_torchrun",
    "launcher_rank",
    "prog_name",
    "refuse_local_under_mpi",
    "resolve_backend",
    "run",
    "run_local",
    "run_mpi",
    "setup_output",
]


def prog_name(script: str, module: str) -> str:
    """The name the user typed: the console script (``choco-train``) or ``python -m module``."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if argv0 == script else f"python -m {module}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default shown (``(default: ...)``)."""


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program name and choco's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (choco {__version__})")


def add_gossip_arguments(parser: argparse.ArgumentParser) -> None:
    """``--topology``, ``--mixing`` and ``--compressor``, the same in every program."""
    parser.add_argument("--topology", default="ring:8",
                        help="ring:8, torus:4x4, social, er:16:0.3, ...; time-varying: "
                        "onepeer:16, base:12[:K], matching:16[:seed=S], SPEC+pga:H")
    parser.add_argument("--mixing", default="metropolis", help="metropolis | maxdegree | uniform")
    parser.add_argument("--compressor", default="sign",
                        help="compressor spec: identity, sign, topk:0.01, ...")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend auto|local|mpi`` with the same meaning in every program."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto: mpi when started by mpiexec/srun with more than one rank, "
                        "torch when started by torchrun, else local (every node in this "
                        "process)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as ``warning: message``, without file and source line, on rank 0."""
    if launcher_rank() != 0:
        return
    print(f"warning: {message}", file=sys.stderr, flush=True)


def setup_output() -> None:
    """Logging to stderr, and warnings as one clean line each, printed once, by rank 0."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    warnings.simplefilter("once")  # the same text from two places is printed once


_INVALID_VALUE = re.compile(r"argument (?P<opt>[^:]+): invalid (?P<kind>\w+) value: (?P<got>.*)")
_INVALID_CHOICE = re.compile(
    r"argument (?P<opt>[^:]+): invalid choice: (?P<got>.*?) \(choose from (?P<choices>.*)\)")
_EXPECTED = re.compile(r"argument (?P<opt>[^:]+): expected (?P<what>.*)")
_REQUIRED = re.compile(r"the following arguments are required: (?P<names>.*)")
_UNKNOWN = re.compile(r"unrecognized arguments: (?P<got>.*)")
_AMBIGUOUS = re.compile(r"ambiguous option: (?P<got>\S+) could match (?P<options>.*)")
_KINDS = {"int": "an integer", "float": "a number"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-paragraph errors on stderr and exit status 2, without the usage.

    ``--dim abc`` gives ``error: --dim must be an integer, got 'abc'; write e.g. --dim 1000
    (python -m choco.tuning --help lists every option)``. Subcommand parsers made by
    ``add_subparsers`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"error: {self.explain(message)}\n")

    def _default(self, option: str) -> str | None:
        for action in self._actions:
            if option in action.option_strings or option == action.dest:
                default = action.default
                if default is not None and default is not argparse.SUPPRESS and \
                        not isinstance(default, bool):
                    return str(default)
        return None

    def explain(self, message: str) -> str:
        """An argparse message rewritten as requirement, value received and fix."""
        help_hint = f"{self.prog} --help lists every option"
        if m := _INVALID_VALUE.fullmatch(message):
            opt = m["opt"].split("/")[0]
            kind = _KINDS.get(m["kind"], f"a valid {m['kind']}")
            default = self._default(opt)
            example = f"write e.g. {opt} {default} ({help_hint})" if default else help_hint
            return f"{opt} must be {kind}, got {m['got']}; {example}"
        if m := _INVALID_CHOICE.fullmatch(message):
            opt = m["opt"].split("/")[0]
            return (f"{opt} must be one of {m['choices']}, got {m['got']}; pick one of them "
                    f"({help_hint})")
        if m := _EXPECTED.fullmatch(message):
            opt = m["opt"].split("/")[0]
            default = self._default(opt)
            example = f"write e.g. {opt} {default}" if default else help_hint
            return f"{opt} takes {m['what'].removesuffix('s')}, got none; {example}"
        if m := _REQUIRED.fullmatch(message):
            names = m["names"]
            verb = "are" if "," in names else "is"
            return (f"{names} {verb} required, got a command line without "
                    f"{'them' if verb == 'are' else 'it'}; add {'them' if verb == 'are' else 'it'}"
                    f" ({help_hint})")
        if m := _UNKNOWN.fullmatch(message):
            return (f"every argument must be an option of {self.prog}, got the unknown "
                    f"{m['got']!r}; check the spelling ({help_hint})")
        if m := _AMBIGUOUS.fullmatch(message):
            return (f"an abbreviated option must match one option, got {m['got']}, which "
                    f"could be {m['options']}; write the option in full")
        return f"the command line must follow {help_hint}, got: {message}; see --help"
