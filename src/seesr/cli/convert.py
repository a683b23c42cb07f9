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
            "merged into the tagger, nothing unpickled at load time. Use it with `seesr upscale --model OUT`."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="[SRC] OUT", help="source folder (optional) and output folder")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="precision stored for the VAE, text encoder, UNet and ControlNet (default: fp32); the tagger stays fp32",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if len(args.paths) > 2:
        raise CLIError("expected [SRC] OUT", EXIT_USAGE)
    source, out = (None, args.paths[0]) if len(args.paths) == 1 else args.paths

    from seesr.utils.device import DTYPES
    from seesr.weights.convert import convert_model
    from seesr.weights.loading import ModelLoadError
    from seesr.weights.resolve import MissingWeightsError

    try:
        written = convert_model(source, out, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    except FileExistsError as error:
        raise CLIError(f"{error} (use --overwrite to replace it)", EXIT_USAGE) from None
    except (MissingWeightsError, ModelLoadError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    print(f"bundle written to {written}")  # noqa: T201
    return EXIT_OK
