"""``seesr`` entry point.

Each subcommand lives in its own module under :mod:`seesr.cli` and exposes two functions:

* ``add_parser(subparsers) -> argparse.ArgumentParser`` registers the subcommand (it must stay cheap to import:
  heavy libraries are imported inside ``run``), and sets ``func=run`` as a parser default;
* ``run(args) -> int`` executes it and returns the process exit code.

``main(argv)`` returns an exit code instead of exiting so that tests can call it directly. It is also where every
command's output is kept quiet (:mod:`seesr.utils.logging`) and where errors become one line: an expected error (bad
input, a missing or corrupt file, a bad setting) is printed as ``seesr COMMAND: error: MESSAGE`` (the message names the
file and the fix); anything else as one line that points to ``--debug``, which prints the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
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
EXIT_INTERNAL = 70  # an unexpected error (a bug): BSD sysexits' EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

DEBUG_HINT = "run with --debug for the traceback"


class CLIError(Exception):
    """An error with a message meant for the user (printed without a traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


# Errors whose message is written for the user: printed as one line, without a traceback. Named by class (module and
# name) so that starting the CLI imports none of their modules; tests/cli/test_main.py checks that each one exists.
EXPECTED_ERRORS: tuple[str, ...] = (
    "seesr.cli.main.CLIError",
    "seesr.weights.resolve.MissingWeightsError",
    "seesr.weights.loading.ModelLoadError",
    "seesr.weights.reader.WeightReadError",
    "seesr.weights.download.DownloadError",
    "seesr.tagger.convert.CheckpointError",
    "seesr.utils.images.ImageReadError",
    "seesr.data.prepare.PrepareError",
    "seesr.training.common.TrainingError",
    "seesr.training.config.ConfigError",
    "seesr.evaluation.registry.MetricUnavailableError",
    "builtins.ValueError",  # bad values from the user (arguments, config files, image contents)
    "builtins.OSError",  # missing, unreadable or unwritable files
    "builtins.MemoryError",
    "torch.OutOfMemoryError",
)

# What to tell a user who pressed Ctrl-C, for the commands that can continue where they stopped.
RESUME_HINTS: dict[str, str] = {
    "upscale": "run the same command again with --skip-existing to keep the images already written",
    "prepare": "run the same command again to resume where it stopped",
    "train": "run the same command again with --resume latest to continue from the last saved checkpoint",
    "benchmark": "run the same command again to resume: the images already upscaled are kept",
    "download": "run the same command again: files already downloaded are kept and partial ones continue",
}

_OS_ERROR_HINTS: dict[int, str] = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "choose a writable location",
    errno.ENOSPC: "free some disk space or choose another location",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "remove it or choose another name",
}


def _class_names(error: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}


def _first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _torch_out_of_memory(error: BaseException) -> bool:
    """PyTorch's allocator failures that are plain RuntimeErrors ("DefaultCPUAllocator: can't allocate memory").
    Asked only when torch is loaded already: describing an error never imports it."""
    if not isinstance(error, RuntimeError) or "torch" not in sys.modules:
        return False
    from seesr.utils.device import is_out_of_memory

    return is_out_of_memory(error)


def describe_error(error: BaseException) -> tuple[str, int]:
    """The one line printed after ``seesr COMMAND: `` for ``error``, and the exit code."""
    names = _class_names(error)
    if isinstance(error, CLIError):
        return f"error: {error}", error.exit_code
    if names & {"builtins.MemoryError", "torch.OutOfMemoryError"} or _torch_out_of_memory(error):
        detail = _first_line(str(error))
        return "error: out of memory" + (f" ({detail})" if detail else "") + (
            "; try a smaller input, a smaller --latent-tile-size or --offload model"
        ), EXIT_FAILURE
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        hint = _OS_ERROR_HINTS.get(error.errno or 0)
        return f"error: {error.filename}: {error.strerror.lower()}" + (f"; {hint}" if hint else ""), EXIT_FAILURE
    if names & set(EXPECTED_ERRORS):
        return f"error: {str(error).strip() or type(error).__name__}", EXIT_FAILURE
    detail = _first_line(str(error))
    return f"internal error: {type(error).__name__}" + (f": {detail}" if detail else "") + f" ({DEBUG_HINT})", (
        EXIT_INTERNAL
    )


def interrupted_message(command: str) -> str:
    """The line printed on Ctrl-C: the command, and how to continue where it supports that."""
    hint = RESUME_HINTS.get(command.split()[0])
    return f"seesr {command}: interrupted" + (f"; {hint}" if hint else "")


def _load_subcommands() -> list:
    modules = []
    for name in SUBCOMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name != name:  # a real missing dependency inside the module: surface it
                raise
    return modules


def _add_global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``-v`` and ``--debug``, accepted before the command and after it (``seesr upscale x.png --debug``)."""
    default = argparse.SUPPRESS if suppress else False  # a subcommand must not reset a flag given before it
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show debug logging, and the other libraries' loading bars and warnings (hidden by default)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="on an error, print the Python traceback as well"
    )


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands, and stages such as ``train seesr``)."""
    found = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor for its subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += [sub, *_subcommand_parsers(sub)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seesr",
        description=(
            "SeeSR: semantics-aware real-world image super-resolution (CVPR 2024). "
            "Upscale photos with `seesr upscale photo.jpg` (the first run downloads the official weights, about "
            "12 GB; `--model FOLDER` uses files you already have), see the tags it prompts with using `seesr tag`, "
            "fetch the weights ahead of time with `seesr download`. "
            "Run `seesr COMMAND --help` for the options of a command."
        ),
        epilog="Output is quiet by default: seesr's own progress bars and messages only; -v also shows the other "
        "libraries' logs, loading bars and warnings. An error is one line naming the file and the fix (--debug adds "
        "the traceback); `seesr doctor` prints what a bug report needs.",
    )
    parser.add_argument("--version", action="version", version=f"seesr {__version__}")
    _add_global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_subcommands():
        module.add_parser(subparsers)
    for sub in _subcommand_parsers(parser):
        _add_global_flags(sub, suppress=True)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    stage = getattr(args, "stage", None)
    return f"{args.command} {stage}" if args.command == "train" and stage else str(args.command)


_depth = 0  # commands running in this process: seesr benchmark runs seesr upscale through main()


def _run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; expected errors and Ctrl-C become one line on stderr and an exit code."""
    global _depth
    command = _command_name(args)
    _depth += 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _depth > 1:  # a command run by another one: Ctrl-C stops the outer command too, which reports it
            raise
        if args.debug:
            traceback.print_exc()
        print(interrupted_message(command), file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the top of the program: nothing may escape as a raw traceback
        if args.debug:
            traceback.print_exc()
        message, code = describe_error(error)
        print(f"seesr {command}: {message}", file=sys.stderr)  # noqa: T201
        return code
    finally:
        _depth -= 1


def main(argv: Sequence[str] | None = None) -> int:
    from seesr.utils.logging import quiet_libraries

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
    with quiet_libraries(verbose=args.verbose):
        return _run_command(args)


if __name__ == "__main__":
    sys.exit(main())
