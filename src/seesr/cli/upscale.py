"""``seesr upscale INPUT... [-o OUTDIR]``: super-resolve images, folders or glob patterns with SeeSR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError

DEFAULT_OUTDIR = "seesr-out"
COLOR_FIXES = ("adain", "wavelet", "none")


def _tile_size(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of latent pixels or 'auto', got {value!r}") from None
    if size < 4:
        raise argparse.ArgumentTypeError(f"latent tile size must be >= 4, got {size}")
    return size


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {number}")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {number}")
    return number


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "upscale",
        help="super-resolve images (files, folders, glob patterns)",
        description=(
            "Upscale real-world low-resolution photos with SeeSR. Each INPUT is an image file, a folder (its images, "
            "not recursive) or a glob pattern. Results are written as OUTDIR/<input stem>.png with the prompt, tags, "
            "seed and every setting stored as PNG text metadata. Defaults reproduce the official test_seesr.py."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument(
        "-o",
        "--output",
        dest="outdir",
        default=DEFAULT_OUTDIR,
        metavar="OUTDIR",
        help=f"output folder (default: {DEFAULT_OUTDIR}); inputs are never overwritten, even if it is their folder",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model folder: the release layout (see `seesr download --dest`) or a converted bundle "
        "(`seesr convert`); default: the files fetched by `seesr download`",
    )
    parser.add_argument("--scale", type=_positive_int, default=4, help="upscaling factor (default: 4)")
    parser.add_argument("--steps", type=_positive_int, default=50, help="DDPM sampling steps (default: 50)")
    parser.add_argument(
        "--guidance", type=float, default=5.5, help="classifier-free guidance scale; <= 1 disables CFG (default: 5.5)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed used for every image (default: a random seed per image, recorded in the PNG metadata)",
    )
    parser.add_argument("--prompt", default="", help="your own text, inserted after the DAPE tags (default: empty)")
    parser.add_argument(
        "--added-prompt",
        default=None,
        metavar="TEXT",
        help='text appended to the prompt (default: "clean, high-resolution, 8k")',
    )
    parser.add_argument(
        "--negative-prompt",
        default=None,
        metavar="TEXT",
        help='negative prompt for classifier-free guidance (default: "dotted, noise, blur, lowres, smooth")',
    )
    parser.add_argument(
        "--no-tags",
        action="store_true",
        help="leave the DAPE tags out of the prompt (DAPE still provides the image embeddings)",
    )
    parser.add_argument(
        "--color-fix",
        choices=COLOR_FIXES,
        default="adain",
        help="colour correction towards the input: adain (official CLI default), wavelet, none",
    )
    parser.add_argument(
        "--process-size",
        type=_positive_int,
        default=512,
        help="minimum processing size in pixels: smaller inputs are enlarged so their short side reaches "
        "process-size/scale first (default: 512); larger inputs are NOT reduced",
    )
    parser.add_argument(
        "--latent-tile-size",
        type=_tile_size,
        default=96,
        metavar="N|auto",
        help="latent tile side for tiled diffusion (output pixels = 8x); 'auto' picks the largest that fits free "
        "GPU memory (default: 96)",
    )
    parser.add_argument(
        "--latent-tile-overlap",
        type=_non_negative_int,
        default=4,
        metavar="N",
        help="overlap between latent tiles in latent pixels (default: 4)",
    )
    parser.add_argument(
        "--conditioning-scale", type=float, default=1.0, help="ControlNet residual strength (default: 1.0)"
    )
    parser.add_argument(
        "--start-point",
        choices=("lr", "noise"),
        default="lr",
        help="start from the noised LR latent (lr, default) or from pure noise",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="weights/compute precision (default: fp32 on CPU, the exact mode; fp16 on GPUs)",
    )
    parser.add_argument("--skip-existing", action="store_true", help="skip inputs whose output file already exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no summary; errors only")
    parser.add_argument(
        "--max-input-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse inputs with more pixels than this (default: 64000000)",
    )
    parser.set_defaults(func=run)
    return parser


def _settings(args: argparse.Namespace):  # -> UpscaleSettings (heavy import kept out of module level)
    from seesr.pipeline.batch import UpscaleSettings
    from seesr.pipeline.preprocess import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT
    from seesr.utils.images import DEFAULT_MAX_INPUT_PIXELS

    if isinstance(args.latent_tile_size, int) and args.latent_tile_overlap >= args.latent_tile_size:
        raise CLIError(
            f"--latent-tile-overlap ({args.latent_tile_overlap}) must be smaller than --latent-tile-size "
            f"({args.latent_tile_size})",
            EXIT_USAGE,
        )
    if args.process_size < 8:
        raise CLIError("--process-size must be at least 8", EXIT_USAGE)
    return UpscaleSettings(
        scale=args.scale,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        prompt=args.prompt,
        added_prompt=DEFAULT_ADDED_PROMPT if args.added_prompt is None else args.added_prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt,
        use_tags=not args.no_tags,
        color_fix=args.color_fix,
        process_size=args.process_size,
        latent_tile_size=args.latent_tile_size,
        latent_tile_overlap=args.latent_tile_overlap,
        conditioning_scale=args.conditioning_scale,
        start_point=args.start_point,
        max_input_pixels=args.max_input_pixels or DEFAULT_MAX_INPUT_PIXELS,
    )


def _silence_loading() -> None:
    """--quiet: no INFO logs and no weight-loading progress bars from seesr, diffusers and transformers."""
    import logging

    import diffusers.utils.logging
    import transformers.utils.logging

    logging.getLogger("seesr").setLevel(logging.WARNING)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _err(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201


def run(args: argparse.Namespace) -> int:
    from seesr.utils.images import iter_image_files

    # 1. Validate settings and inputs before loading anything heavy.
    settings = _settings(args)
    files, problems = iter_image_files(args.inputs)
    if not files:
        raise CLIError("no input images: " + "; ".join(problems or ["nothing matched"]), EXIT_USAGE)

    from seesr.pipeline.batch import plan_outputs

    outdir = Path(args.outdir)
    if (
        args.skip_existing
        and not problems
        and all(out.exists() for out in plan_outputs(files, outdir, args.scale).values())
    ):
        if not args.quiet:
            print(f"0 written, {len(files)} skipped, 0 failed -> {outdir}")  # noqa: T201
        return EXIT_OK  # nothing to do: do not even load the model

    import torch

    from seesr.utils.device import resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    if device.type == "cpu" and dtype == torch.float16:
        _err("warning: fp16 on CPU is slow and not the exact mode; consider --dtype fp32")

    # 2. Load the model (clear message, no traceback, when files are missing).
    if args.quiet:
        _silence_loading()
    from seesr.pipeline.batch import upscale_files
    from seesr.weights.loading import ModelLoadError, load_pipeline
    from seesr.weights.resolve import MissingWeightsError

    try:
        pipe = load_pipeline(args.model, device=device, dtype=dtype, load_tagger=True)
    except (MissingWeightsError, ModelLoadError) as error:
        raise CLIError(str(error), EXIT_FAILURE) from None
    pipe.set_progress_bar_config(disable=args.quiet, leave=False, desc="steps")

    # 3. Upscale, reporting failures as they happen.
    for problem in problems:
        _err(f"error: {problem}")

    def report(result) -> None:
        if result.status == "failed":
            _err(f"error: {result.message}")

    extra = {
        "model": pipe.model_location.description,
        "device": str(device),
        "dtype": {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype)),
    }
    summary = upscale_files(
        pipe,
        files,
        outdir,
        settings,
        skip_existing=args.skip_existing,
        show_progress=not args.quiet,
        metadata_extra=extra,
        on_result=report,
    )
    failed = summary.count("failed") + len(problems)
    if not args.quiet:
        print(  # noqa: T201
            f"{summary.count('ok')} written, {summary.count('skipped')} skipped, {failed} failed -> {outdir}"
        )
    return EXIT_OK if failed == 0 else EXIT_FAILURE
