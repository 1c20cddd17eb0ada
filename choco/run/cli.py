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
import difflib
import logging
import os
import re
import sys
import warnings
from typing import Any, NoReturn

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


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` in the one style of every program: each option's default shown once, as
    ``(default: X)``, and only where there is one to show.

    Nothing is added when the help text already names its default (``default``
    appears in it), for a required option or a positional, for a flag (``store_true``),
    or when the default is ``None``, ``False``, empty text or an empty list.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or action.required or not action.option_strings
                or default is None or default is False or default is argparse.SUPPRESS
                or default in ("", []) or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program name and choco's version (once per parser)."""
    if "--version" in parser._option_string_actions:
        return
    parser.add_argument("--version", action="version", version=f"%(prog)s (choco {__version__})",
                        help="print the program name and choco's version, then exit")


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
    """The parser of every choco program: one style of ``--help`` (:class:`HelpFormatter`),
    ``--version``, and one-paragraph errors on stderr with exit status 2, without the usage.

    ``--dim abc`` gives ``error: --dim must be an integer, got 'abc'; write e.g. --dim 1000
    (python -m choco.tuning --help lists every option)``; a misspelt option gives ``error:
    every argument must be an option of choco-train, got the unknown '--topolgy ring:8';
    did you mean --topology? (...)``. Subcommand
    parsers made by ``add_subparsers`` are of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        add_version_argument(self)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"error: {self.explain(message)}\n")

    def _option_names(self) -> list[str]:
        """Every ``--option`` of this parser and of its subcommands' parsers (argparse
        reports a subcommand's unknown option from the main parser)."""
        names = []
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if isinstance(sub, ArgumentParser):
                        names += sub._option_names()
            elif action.help is not argparse.SUPPRESS:
                names += [o for o in action.option_strings if o.startswith("--")]
        return list(dict.fromkeys(names))

    def _unknown(self, got: str, help_hint: str) -> str:
        """The unknown arguments, with the closest option for each misspelt one."""
        options = [t.split("=", 1)[0] for t in got.split() if t.startswith("-")]
        guesses = []
        for name in options:
            close = difflib.get_close_matches(name, self._option_names(), n=1)
            if close:
                prefix = f"for {name} " if len(options) > 1 else ""
                guesses.append(f"{prefix}did you mean {close[0]}?")
        fix = " ".join(guesses) if guesses else "check the spelling"
        return (f"every argument must be an option of {self.prog}, got the unknown "
                f"{got!r}; {fix} ({help_hint})")

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
            choices = [c.strip(" '") for c in m["choices"].split(",")]
            close = difflib.get_close_matches(m["got"].strip("'"), choices, n=1)
            pick = f"did you mean {close[0]}?" if close else "pick one of them"
            return f"{opt} must be one of {m['choices']}, got {m['got']}; {pick} ({help_hint})"
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
            return self._unknown(m["got"], help_hint)
        if m := _AMBIGUOUS.fullmatch(message):
            return (f"an abbreviated option must match one option, got {m['got']}, which "
                    f"could be {m['options']}; write the option in full")
        return f"the command line must follow {help_hint}, got: {message}; see --help"
