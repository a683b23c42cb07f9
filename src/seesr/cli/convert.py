"""``seesr convert [SRC] OUT``: write a converted bundle (safetensors only, no pickle when loading)."""

from __future__ import annotations

import argparse

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert the official files into a fast-loading bundle",
        description=(
            "Convert a release-layout folder SRC (or, when only OUT is given, the files fetched by "
            "`seesr download`) into a bundle OUT: diffusers-style folders, safetensors only, the DAPE LoRA "
            "merged into the tagger, nothing unpickled at load time, and a manifest of every file's sha256 that is "
            "checked whenever the bundle loads (--no-verify skips the hashing). Use it with `seesr upscale --model "
            "OUT`. OUT must lie outside SRC; it is written to a temporary folder and renamed at the end."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="[SRC] OUT", help="source folder (optional) and output folder")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="precision stored for the VAE, text encoder, UNet and ControlNet (default: fp32); the tagger stays fp32",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it is an existing converted bundle (nothing else)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if len(args.paths) > 2:
        raise CLIError("expected [SRC] OUT", EXIT_USAGE)
    source, out = (None, args.paths[0]) if len(args.paths) == 1 else args.paths

    from seesr.utils.device import DTYPES
    from seesr.weights.convert import ConvertError, convert_model
    from seesr.weights.loading import ModelLoadError
    from seesr.weights.resolve import MissingWeightsError

    try:
        written = convert_model(source, out, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    except FileExistsError as error:
        raise CLIError(f"{error} (use --overwrite to replace it)", EXIT_USAGE) from None
    except ConvertError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    except (MissingWeightsError, ModelLoadError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    print(f"bundle written to {written}")  # noqa: T201
    return EXIT_OK


def add_no_verify_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: load a converted bundle without hashing its files against its manifest."""
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="load a converted bundle without checking every file's sha256 against its manifest.json (faster, "
        "for trusted disks; the file list and sizes are still checked)",
    )


def resolve_for_loading(args: argparse.Namespace):
    """``--model`` (or the default location) resolved, honouring ``--no-verify``; errors become :class:`CLIError`."""
    from seesr.weights.resolve import MissingWeightsError, resolve_model

    try:
        return resolve_model(args.model, verify=not getattr(args, "no_verify", False))
    except MissingWeightsError as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
