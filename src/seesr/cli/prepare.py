"""``seesr prepare``: build the paired training set (gt/, lr/, sr_bicubic/, tag/) from HR photos.

Resumable: re-run the same command after an interruption; finished items are kept and the result is identical
to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seesr.cli.download import add_no_download_argument, fetch_missing
from seesr.cli.main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CLIError

#: what prepare needs when no --tagger is given, and the ways to provide it offline (issue 19 D10)
TAGGER_ROUTE = (
    "or pass `--tagger PATH`, PATH being ram_swin_large_14m.pth (xinyu1205/recognize_anything_model; plain RAM, "
    "no DAPE) or a folder holding it, or pass `--no-tags` to write no tags"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare",
        help="make a paired training set (GT crops, degraded LR, tags) from HR photos",
        description=(
            "Crop (or resize) HR photos, sharpen them (USM), degrade them with the Real-ESRGAN second-order model "
            "and write OUT/gt, OUT/lr, OUT/sr_bicubic (LR bicubic-upscaled, what stage-2 training reads) and "
            "OUT/tag/<name>.txt (tags of the GT from the plain RAM model, unless --no-tags). Files are named 0000001.png, ... "
            "Interrupted runs resume where they stopped when re-run with the same options."
        ),
    )
    parser.add_argument("--gt", nargs="+", metavar="DIR", help="folders of HR images (not recursive)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    coco = parser.add_argument_group(
        "COCO semantic test set (the paper's Table 3; instead of --gt)",
        "writes OUT/gt (each image resized to --size²), OUT/lr (training degradation, seed per COCO image id), "
        "OUT/instances.json and OUT/panoptic.json + OUT/panoptic/ (annotations rescaled to --size²); "
        "score it with `seesr benchmark --semantic --dataset OUT`",
    )
    coco.add_argument("--coco", metavar="VAL2017_DIR", help="folder of the COCO images (e.g. val2017/)")
    coco.add_argument("--annotations", metavar="JSON", help="COCO instance annotations (instances_val2017.json)")
    coco.add_argument("--panoptic", metavar="JSON", help="COCO panoptic annotations (panoptic_val2017.json)")
    coco.add_argument(
        "--panoptic-masks", metavar="DIR", help="the panoptic PNG folder (default: the json path without .json)"
    )
    coco.add_argument("--limit", type=int, metavar="N", help="only the first N images by COCO id")
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="passes over the images, each with new crops and degradations (default: 1)",
    )
    parser.add_argument(
        "--mode",
        default="crop512",
        choices=("crop512", "resize512"),
        help="crop512: random flip + crop, as for SeeSR (stage 2) training (default); "
        "resize512: resize the whole image, as for DAPE (stage 1) training",
    )
    parser.add_argument("--size", type=int, default=512, help="GT size in pixels, the 512 of the modes (default: 512)")
    parser.add_argument("--scale", type=int, default=4, help="LR down-scaling factor (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; each item gets its own stream (default: 0)")
    parser.add_argument(
        "--preset", default="seesr", choices=("seesr", "realesrgan"), help="degradation settings (default: seesr)"
    )
    parser.add_argument(
        "--tagger",
        metavar="PATH",
        help="RAM checkpoint ram_swin_large_14m.pth, or a folder holding it (a release bundle works), used to tag "
        "the GT images as the official make_tags.py does (plain RAM, no DAPE LoRA); default: the RAM file in the "
        "Hugging Face cache (`seesr download`; downloaded on first use unless --no-download)",
    )
    add_no_download_argument(parser)
    parser.add_argument("--no-tags", action="store_true", help="do not write tag/ (training then needs tags later)")
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=384 * 384,
        help="skip images with fewer pixels (official: 147456 = 384x384)",
    )
    parser.add_argument(
        "--min-file-kib", type=float, default=100, help="skip files smaller than this many KiB (official: 100)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    parser.add_argument("--tag-batch-size", type=int, default=8, help="images per tagger call (default: 8)")
    from seesr.cli.scaleout import add_ray_arguments

    add_ray_arguments(
        parser,
        "pairs and their tags (--gt only)",
        "The actors write the same files as a local run (on a multi-machine cluster --out must be a folder every "
        "machine sees); running the same command again resumes.",
    )
    parser.set_defaults(func=run)
    return parser


def _require_scipy() -> None:
    try:
        import scipy.special  # noqa: F401  (Bessel J1 of the sinc kernels)
    except ImportError:
        raise CLIError(
            "the degradation needs scipy; install the training extra: pip install 'seesr[train]'", EXIT_FAILURE
        ) from None


def _run_coco(args: argparse.Namespace) -> int:
    from seesr.data.coco import CocoPrepareOptions, prepare_coco
    from seesr.data.prepare import PrepareError

    if args.gt or args.annotations is None:
        raise CLIError("--coco needs --annotations (and takes no --gt)", EXIT_USAGE)
    options = CocoPrepareOptions(
        images_dir=Path(args.coco),
        annotations=Path(args.annotations),
        out=Path(args.out),
        panoptic=None if args.panoptic is None else Path(args.panoptic),
        panoptic_masks=None if args.panoptic_masks is None else Path(args.panoptic_masks),
        size=args.size,
        scale=args.scale,
        seed=args.seed,
        preset=args.preset,
        limit=args.limit,
        device=args.device,
    )
    try:
        report = prepare_coco(options)
    except PrepareError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    for message in report.failed:
        print(f"seesr prepare: failed {message}", file=sys.stderr)  # noqa: T201
    dropped = f", {report.dropped_segments} panoptic segment(s) lost in the resize" if report.dropped_segments else ""
    print(  # noqa: T201
        f"{report.total} COCO image(s) in {options.out}: {report.written} written, "
        f"{report.skipped_complete} already done"
        + (f", {len(report.failed)} failed" if report.failed else "")
        + dropped
    )
    return EXIT_FAILURE if report.failed else EXIT_OK


def _ray_runner(args: argparse.Namespace):
    """``prepare_dataset``'s runner for --ray: the items on the cluster's actors."""
    from seesr.cli.scaleout import run_on_cluster

    def runner(items, worker_class, worker_args, description):
        def report(result: dict[str, str]) -> None:
            if result["status"] == "failed":
                print(f"seesr prepare: failed {result['message']}", file=sys.stderr)  # noqa: T201

        return run_on_cluster(args, items, worker_class, worker_args, description=description, on_result=report)

    return runner


def run(args: argparse.Namespace) -> int:
    _require_scipy()
    from seesr.cli.scaleout import check_ray_arguments, refuse_remote_inputs

    check_ray_arguments(args)
    refuse_remote_inputs(args.gt)
    if args.coco is not None:
        if args.ray is not None:
            raise CLIError("--ray prepares --gt folders; --coco runs locally", EXIT_USAGE)
        return _run_coco(args)
    if not args.gt:
        raise CLIError("pass --gt DIR [DIR ...] (HR photos) or --coco VAL2017_DIR --annotations JSON", EXIT_USAGE)
    from seesr.data.prepare import PrepareError, PrepareOptions, prepare_dataset

    if args.tagger is not None and args.no_tags:
        raise CLIError("--tagger and --no-tags contradict each other", EXIT_USAGE)
    if args.tagger is not None and not Path(args.tagger).exists():
        raise CLIError(f"--tagger {args.tagger}: no such file or folder", EXIT_USAGE)
    if args.tagger is None and not args.no_tags:
        fetch_missing(args, need="ram", route=TAGGER_ROUTE, exit_code=EXIT_USAGE)
    options = PrepareOptions(
        gt_dirs=[Path(folder) for folder in args.gt],
        out=Path(args.out),
        epochs=args.epochs,
        mode=args.mode,
        seed=args.seed,
        size=args.size,
        scale=args.scale,
        preset=args.preset,
        min_pixels=args.min_pixels,
        min_file_bytes=int(args.min_file_kib * 1024),
        device=args.device,
        tags=not args.no_tags,
        tagger=None if args.tagger is None else Path(args.tagger),
        tag_batch_size=args.tag_batch_size,
    )
    try:
        report = prepare_dataset(options, runner=None if args.ray is None else _ray_runner(args))
    except PrepareError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    # Ctrl-C: seesr.cli.main prints "seesr prepare: interrupted; run the same command again to resume ..."
    for message in report.skipped_sources:
        print(f"seesr prepare: skipped {message}", file=sys.stderr)  # noqa: T201
    if args.ray is None:  # a Ray run printed them as they came
        for message in report.failed:
            print(f"seesr prepare: failed {message}", file=sys.stderr)  # noqa: T201
    print(  # noqa: T201
        f"{report.total} item(s) in {options.out}: {report.written} written, {report.skipped_complete} already done, "
        f"{report.tagged} tagged" + (f", {len(report.failed)} failed" if report.failed else "")
    )
    return EXIT_FAILURE if report.failed else EXIT_OK
