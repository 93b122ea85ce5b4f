"""`sfmamba` console script: an argparse front end with one subcommand per module.

A subcommand module defines `HELP` (one line for `sfmamba --help`), `add_arguments(parser)` and `run(args) -> int`;
registering it is one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from . import UsageError

COMMANDS = {
    "bench": "sfmamba.cli.bench",
    "tune": "sfmamba.cli.tune",
    "train": "sfmamba.cli.train",
    "train-seg": "sfmamba.cli.train_seg",
    "train-det": "sfmamba.cli.train_det",
    "eval": "sfmamba.cli.eval",
    "demo": "sfmamba.cli.demo",
    "compress": "sfmamba.cli.compress",
    "export": "sfmamba.cli.export",
    "profile": "sfmamba.cli.profile",
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at emit time (it may be swapped, e.g. by pytest, after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_default_logging(level: int = logging.INFO) -> None:
    """Send the library's log records to stderr; only command-line entry points call this, never the library."""
    logger = logging.getLogger("sfmamba")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfmamba", description="sfmamba: fast vision state-space models.")
    parser.add_argument("--version", action="version", version=f"sfmamba {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run, _parser=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    setup_default_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args._run(args)
    except UsageError as err:
        args._parser.error(str(err))  # exits with status 2
        raise  # unreachable; keeps type checkers calm


if __name__ == "__main__":
    sys.exit(main())
