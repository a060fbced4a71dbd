"""The ``tusss`` console command, one module per group of subcommands.

Subcommands (``tusss COMMAND --help`` for the options of each)::

    tusss masks        IMAGE_OR_DIR... | --dataset NAME --root DIR     --cache-dir DIR     (tusss.cli.ov)
    tusss segment      IMAGE_OR_DIR... | --dataset NAME --root DIR     --out DIR           (tusss.cli.ov)
    tusss eval         --dataset NAME --root DIR --pred DIR [--mask-cache DIR]             (tusss.cli.ov)
    tusss embed        --dataset NAME --root DIR --mask-cache DIR --out STORE              (tusss.cli.glcc)
    tusss fit          --store STORE --supervision full|semi|weak --out MODEL             (tusss.cli.glcc)
    tusss predict      --model MODEL --store STORE --mask-cache DIR --out DIR              (tusss.cli.glcc)
    tusss pseudo-label --model MODEL --store STORE --mask-cache DIR --out DIR              (tusss.cli.glcc)
    tusss run          --recipe NAME --root DIR --work DIR [--set KEY=VALUE]             (tusss.cli.run)
    tusss tune         --recipe NAME --root DIR --work DIR [--field KEY]                 (tusss.cli.run)
    tusss recipes      [list | show NAME]                                                (tusss.cli.run)
    tusss serve        --classes a,b | --vocabulary V | --glcc DIR  [--engine DIR]         (tusss.cli.serve)

Adding a command: write a module ``tusss/cli/NAME.py`` with ``register(subparsers)`` (it adds its parsers
with ``subparsers.add_parser`` and sets ``func`` to a function ``(args) -> exit status``; shared options
come from :mod:`tusss.cli.common`) and add its name to :data:`COMMAND_MODULES`. The CLI is glue only:
library modules never import ``tusss.cli``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tusss.errors import TusssError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules that add subcommands, in the order they appear in ``tusss --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "tusss.cli.ov",
    "tusss.cli.glcc",
    "tusss.cli.run",
    "tusss.cli.serve",
    "tusss.cli.ray_options",  # adds --ray to masks/embed/serve (must follow the modules that define them)
)


def build_parser() -> argparse.ArgumentParser:
    """The ``tusss`` argument parser: every module of :data:`COMMAND_MODULES` registers its subcommands."""
    from tusss import __version__

    parser = argparse.ArgumentParser(prog="tusss", description="Tuning-free universally-supervised semantic "
                                     "segmentation: SAM masks + DBA-CLIP + GLCC.")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"tusss {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (may be given anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tusss`` command; returns the exit status.

    0: success; 1: a tusss error (bad input, damaged file, full disk, bad items skipped) reported on one line
    of stderr; 2: bad usage (argparse) or an unexpected internal error (one line, the traceback only with
    ``--debug`` (anywhere on the command line) or ``TUSSS_DEBUG=1``); 130: interrupted (Ctrl-C).
    """
    import os

    from tusss.persist import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("TUSSS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TusssError as e:
        if debug:
            raise
        print(f"tusss {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tusss {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"tusss {args.command}: internal error: {type(e).__name__}: {one_line(e)} "
              "(re-run with --debug for the traceback)", file=sys.stderr)
        return 2
