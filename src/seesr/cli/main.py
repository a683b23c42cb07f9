"""``seesr`` entry point.

Each subcommand lives in its own module under :mod:`seesr.cli` and exposes two functions:

* ``add_parser(subparsers) -> argparse.ArgumentParser`` registers the subcommand (it must stay cheap to import:
  heavy libraries are imported inside ``run``), and sets ``func=run`` as a parser default;
* ``run(args) -> int`` executes it and returns the process exit code.

``main(argv)`` returns an exit code instead of exiting so that tests can call it directly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from seesr import __version__

# Order is the order shown in ``seesr --help``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "seesr.cli.upscale",
    "seesr.cli.tag",
    "seesr.cli.download",
    "seesr.cli.convert",
    "seesr.cli.degrade",
    "seesr.cli.prepare",
    "seesr.cli.train",
    "seesr.cli.eval",
    "seesr.cli.benchmark",
    "seesr.cli.serve",
    "seesr.cli.doctor",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """An error with a message meant for the user (printed without a traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def _load_subcommands() -> list:
    modules = []
    for name in SUBCOMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name != name:  # a real missing dependency inside the module: surface it
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seesr",
        description=(
            "SeeSR: semantics-aware real-world image super-resolution (CVPR 2024). "
            "Upscale photos with `seesr upscale`, look at the DAPE tags with `seesr tag`, "
            "fetch weights with `seesr download`. Run `seesr COMMAND --help` for the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"seesr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_subcommands():
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:  # argparse exits 2 on usage errors and 0 on --help/--version
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE if args.command is None else EXIT_OK
    try:
        return int(args.func(args) or 0)
    except CLIError as error:
        print(f"seesr {args.command}: error: {error}", file=sys.stderr)  # noqa: T201
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


if __name__ == "__main__":
    sys.exit(main())
