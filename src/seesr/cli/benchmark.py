"""``seesr benchmark``: upscale a test set's LR images (resumable), then ``seesr eval`` them against its HR images.

See :mod:`seesr.evaluation.benchmark` for the dataset layouts and the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from seesr.cli.eval import add_eval_arguments
from seesr.cli.upscale import DTYPE_DEFAULT
from seesr.evaluation.benchmark import PAPER_ROW_NAMES, PAPER_TABLE2, DatasetLayout, paper_table_text

EPILOG = f"""SeeSR's rows of Table 2 (x4, 50 DDPM steps); (*) = not legible in the paper text this package used:
{paper_table_text()}

Datasets: DIV2K-Val = 3,000 random 512x512 DIV2K-validation crops degraded like the training data;
RealSR / DRealSR = the StableSR test sets (LR 128x128 centre crops, HR 512x512; Hugging Face dataset
Iceclear/StableSR-TestSets); RealLR200 = real LR photos without ground truth (no-reference metrics only).
Sampling is stochastic: expect agreement within a few percent.

layouts detected under --dataset: LR/+HR/, lr/+gt/, LQ/+GT/, lq/+hq/, test_LR/+test_HR/, input/+target/,
RealSR names (*_LR4.png beside *_HR.png, searched recursively), or a folder of LR images (no reference).

output (--out): sr/ (the upscaled images), upscale-settings.json (the settings they were made with),
report/ (seesr eval's per_image.csv, summary.json, summary.md with the paper's row beside ours, per_image.png),
benchmark.json (the dataset, the upscale command and settings, exit codes).

rerunning: with the same options, the images already in sr/ are kept and only the missing ones are upscaled
(an interrupted run resumes). With other upscaling options (model, scale, steps, guidance, seed, colour fix,
sizes, device, dtype) or other LR images, the run is refused before any work, naming the changed settings: use a
new --out folder, or delete OUT/sr to redo the images. --eval-only evaluates sr/ as it is.

example:
  seesr benchmark --dataset StableSR-TestSets/RealSRVal_crop128 --out runs/realsr --seed 0
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark",
        help="reproduce a row of the paper's Table 2: upscale a dataset's LR images, then evaluate against HR",
        description=(
            "Run SeeSR on the LR images of a test set (resumable: existing outputs are kept) and evaluate the results "
            "against its HR images with seesr eval, next to the paper's numbers."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, metavar="DIR", help="test-set folder (see the layouts below)")
    parser.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="output folder (sr/, report/, benchmark.json)"
    )
    parser.add_argument(
        "--lr-dir", metavar="DIR", help="LR folder, overriding the detection (relative to --dataset or not)"
    )
    parser.add_argument("--hr-dir", metavar="DIR", help="HR folder, overriding the detection (may equal --lr-dir)")
    parser.add_argument(
        "--paper-row",
        choices=[*PAPER_TABLE2, "none"],
        default=None,
        help="which row of Table 2 to compare with (default: guessed from the dataset folder name)",
    )
    upscale = parser.add_argument_group("upscaling (passed to seesr upscale; unset = its defaults)")
    upscale.add_argument("--model", metavar="PATH", help="model folder (default: the files fetched by seesr download)")
    upscale.add_argument("--scale", type=int, help="upscaling factor (seesr upscale default: 4)")
    upscale.add_argument("--steps", type=int, help="sampling steps (default: 50, as the paper)")
    upscale.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: 5.5)")
    upscale.add_argument(
        "--seed", type=int, default=0, help="seed for every image, for reproducible runs (default: 0)"
    )
    upscale.add_argument("--color-fix", choices=("adain", "wavelet", "none"), help="colour fix (default: adain)")
    upscale.add_argument("--process-size", type=int, help="minimum processing size in pixels (default: 512)")
    upscale.add_argument("--latent-tile-size", help="latent tile side or 'auto' (default: 96)")
    upscale.add_argument("--device", default=None, help="device for upscaling and learned metrics (default: best)")
    upscale.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help=f"precision (default: {DTYPE_DEFAULT})")
    upscale.add_argument("--eval-only", action="store_true", help="do not upscale; evaluate what is already in OUT/sr")
    evaluation = parser.add_argument_group("evaluation (as seesr eval)")
    add_eval_arguments(evaluation, with_folders=False, with_device=False)
    _add_semantic_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_semantic_arguments(parser: argparse.ArgumentParser) -> None:
    semantic = parser.add_argument_group(
        "semantic fidelity (the paper's Table 3; --dataset is a `seesr prepare --coco` folder)",
        "Segments the GT images, the zoomed LR and the method's outputs with one COCO model (Mask2Former; the "
        "paper used OpenSeeD, so absolute numbers differ) and writes PQ, AP box, AP mask, mIoU and RAM tag F1 per "
        "row to OUT/semantic/table3.{csv,json,md,png}. Resumable: rows whose images did not change are reused.",
    )
    semantic.add_argument("--semantic", action="store_true", help="run the semantic benchmark instead of Table 2")
    semantic.add_argument(
        "--pred", metavar="DIR", help="score this folder of outputs (any method) instead of upscaling"
    )
    semantic.add_argument("--label", help="name of the method's row (default: SeeSR, or the --pred folder's name)")
    semantic.add_argument("--limit", type=int, metavar="N", help="only the first N images (a quick subset)")
    semantic.add_argument(
        "--segmenter",
        metavar="ID_OR_DIR",
        help="Mask2Former Hub id or folder (default: facebook/mask2former-swin-large-coco-panoptic, fetched into "
        "the Hugging Face cache on first use)",
    )
    semantic.add_argument("--segmenter-batch-size", type=int, default=4, help="images per segmenter call (default 4)")
    semantic.add_argument("--no-tag-f1", action="store_true", help="leave out RAM tag agreement (needs no RAM file)")


SEMANTIC_ONLY = (
    ("--pred", "pred"),
    ("--label", "label"),
    ("--limit", "limit"),
    ("--segmenter", "segmenter"),
    ("--no-tag-f1", "no_tag_f1"),
)


def _tag_judge(args: argparse.Namespace, device: Any, allow_download: bool) -> Any:
    """The RAM tag judge, or None when --skip-unavailable and no RAM checkpoint can be found."""
    from seesr.evaluation.registry import MetricUnavailableError
    from seesr.evaluation.semantic.tags import load_tag_agreement

    try:
        return load_tag_agreement(None if args.tagger is None else Path(args.tagger), device, allow_download)
    except MetricUnavailableError as error:
        if not args.skip_unavailable:
            raise
        print(f"tag F1 skipped: {str(error).splitlines()[0]}", file=sys.stderr)  # noqa: T201
        return None


def _run_semantic(args: argparse.Namespace) -> int:
    import functools

    from seesr.cli.main import CLIError
    from seesr.evaluation.benchmark import DatasetLayout
    from seesr.evaluation.registry import MetricUnavailableError, is_offline
    from seesr.evaluation.semantic import benchmark as semantic
    from seesr.evaluation.semantic.segmenter import DEFAULT_SEGMENTER, check_segmenter, load_segmenter
    from seesr.utils.device import resolve_device

    # 1. the prepared set, the zoomed LR, and the method's outputs (upscaled here, resumable, unless --pred)
    try:
        dataset = semantic.open_dataset(args.dataset, args.limit)
        device = resolve_device(args.device or "auto")
    except ValueError as error:
        raise CLIError(str(error), 2) from None
    allow_download = not is_offline(args.offline)
    try:  # before any upscaling: a missing segmenter offline is reported at once
        check_segmenter(args.segmenter, allow_download)
    except MetricUnavailableError as error:
        raise CLIError(str(error), 1) from None
    out = Path(args.out)
    rows = [("GT", dataset.root / "gt"), ("Zoomed LR", semantic.zoom_lr(dataset, out / "lr_zoom"))]
    upscale_code = 0
    if args.pred is not None:
        rows.append((args.label or Path(args.pred).name, Path(args.pred)))
    else:
        layout = DatasetLayout(dataset.root, "seesr prepare --coco", dataset.lr_files, dataset.gt_files)
        _, upscale_code, _ = _upscale_step(args, layout, out)
        rows.append((args.label or "SeeSR", out / "sr"))
    # 2. the models, built on first need
    segmenter = functools.cache(lambda: load_segmenter(args.segmenter, device, allow_download))
    tags = None if args.no_tag_f1 else functools.cache(lambda: _tag_judge(args, device, allow_download))
    settings = {
        "segmenter": args.segmenter or DEFAULT_SEGMENTER,
        "images": len(dataset.gt_files),
        "tagger": None if args.no_tag_f1 else str(args.tagger or "default RAM file (HF cache)"),
    }
    # 3. score every row and write the report
    try:
        results, paths = semantic.run_semantic_benchmark(
            dataset, rows, out / "semantic", segmenter, tags, settings, args.segmenter_batch_size, not args.quiet
        )
    except (MetricUnavailableError, ValueError) as error:
        raise CLIError(str(error), 1) from None
    if not args.quiet:
        print(paths["md"].read_text(encoding="utf-8"))  # noqa: T201
    print(f"report: {paths['md'].parent}")  # noqa: T201
    problems = sum(len(row["problems"]) for row in results)
    return 1 if upscale_code or problems else 0


#: (flag of seesr upscale, attribute of args): the options passed on, which are also the recorded settings.
UPSCALE_OPTIONS = (
    ("--model", "model"),
    ("--scale", "scale"),
    ("--steps", "steps"),
    ("--guidance", "guidance"),
    ("--seed", "seed"),
    ("--color-fix", "color_fix"),
    ("--process-size", "process_size"),
    ("--latent-tile-size", "latent_tile_size"),
    ("--device", "device"),
    ("--dtype", "dtype"),
)


def _upscale_argv(args: argparse.Namespace, inputs: list[str], sr_dir: Path) -> list[str]:
    argv = ["upscale", *inputs, "-o", str(sr_dir), "--skip-existing"]
    for flag, name in UPSCALE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            argv += [flag, str(value)]
    if args.quiet:
        argv.append("--quiet")
    return argv


def _upscale_settings(args: argparse.Namespace, lr_files: list[Path]) -> dict[str, Any]:
    """What determines the images in OUT/sr: every option passed to seesr upscale (None = its default), the
    model folder as an absolute path, and the LR files."""
    settings: dict[str, Any] = {name: getattr(args, name) for _, name in UPSCALE_OPTIONS}
    if args.model is not None:
        settings["model"] = str(Path(args.model).resolve())
    settings["inputs"] = [str(path.resolve()) for path in lr_files]
    return settings


def _upscale_step(
    args: argparse.Namespace, layout: DatasetLayout, out: Path
) -> tuple[list[str], int, dict[str, Any] | None]:
    """Check the settings of the images already in OUT/sr, record ours, run seesr upscale (unless --eval-only).

    Returns the upscale argv (empty with --eval-only), its exit code and the settings the images were made with.
    """
    from seesr.cli.main import CLIError, main
    from seesr.evaluation.benchmark import (
        SettingsMismatchError,
        check_upscale_settings,
        read_upscale_settings,
        write_upscale_settings,
    )
    from seesr.evaluation.pairing import list_images

    sr_dir = out / "sr"
    try:
        if args.eval_only:
            return [], 0, read_upscale_settings(out)
        settings = _upscale_settings(args, layout.lr_files)
        check_upscale_settings(out, settings, list_images(sr_dir) if sr_dir.is_dir() else [])
        write_upscale_settings(out, settings)
    except SettingsMismatchError as error:
        raise CLIError(str(error), 2) from None
    inputs = [str(layout.lr_dir)] if layout.lr_dir is not None else [str(path) for path in layout.lr_files]
    argv = _upscale_argv(args, inputs, sr_dir)
    code = main(argv)
    if code == 2:
        raise CLIError("seesr upscale rejected the settings (see above)", 2)
    return argv, code, settings


def run(args: argparse.Namespace) -> int:
    from seesr.cli.eval import evaluate_to_report
    from seesr.cli.main import CLIError
    from seesr.evaluation.benchmark import detect_layout, guess_paper_row
    from seesr.evaluation.pairing import list_images
    from seesr.utils.files import write_text_atomic

    if args.semantic:
        return _run_semantic(args)
    semantic_only = [flag for flag, name in SEMANTIC_ONLY if getattr(args, name) not in (None, False)]
    if semantic_only:
        raise CLIError(f"{', '.join(semantic_only)}: only with --semantic", 2)
    # 1. Find the LR inputs and HR references.
    try:
        layout = detect_layout(args.dataset, args.lr_dir, args.hr_dir)
    except ValueError as error:
        raise CLIError(str(error), 2) from None
    row_key = guess_paper_row(args.dataset) if args.paper_row is None else args.paper_row
    paper = {k: v for k, v in PAPER_TABLE2.get(row_key or "", {}).items() if v is not None} or None
    out = Path(args.out)
    sr_dir, report_dir = out / "sr", out / "report"
    hr_note = f"{len(layout.hr_files)} HR" if layout.hr_files is not None else "no HR (no-reference)"
    if not args.quiet:
        print(f"dataset: {layout.description}: {len(layout.lr_files)} LR, {hr_note}")  # noqa: T201
        for note in layout.notes:
            print(f"note: {note}")  # noqa: T201

    # 2. Upscale (resumable: --skip-existing keeps outputs from an interrupted run made with the same settings).
    argv, upscale_code, used_settings = _upscale_step(args, layout, out)
    if not sr_dir.is_dir() or not list_images(sr_dir):
        raise CLIError(
            f"no upscaled images in {sr_dir}" + (" (run without --eval-only first)" if args.eval_only else ""), 1
        )
    if upscale_code != 0:
        message = f"warning: some images could not be upscaled (exit {upscale_code}); evaluating the others"
        print(message, file=sys.stderr)  # noqa: T201

    # 3. Evaluate against HR (or with no-reference metrics only).
    metrics_given = args.metrics is not None
    if layout.hr_files is None and not metrics_given:
        args.metrics = "niqe,maniqa,musiq,clipiqa"
    title = f"seesr benchmark: {PAPER_ROW_NAMES.get(row_key or '', Path(args.dataset).name)}"
    failure: CLIError | None = None
    try:
        code = evaluate_to_report(
            args,
            str(sr_dir),
            None,
            str(report_dir),
            paper=paper,
            title=title,
            pred_files=list_images(sr_dir),
            gt_files=layout.hr_files,
            gt_label=layout.hr_dir or layout.root,
        )
    except CLIError as error:  # the report is written (or not) by now; benchmark.json still records the run
        failure, code = error, error.exit_code
    record = {
        "dataset": str(Path(args.dataset).resolve()),
        "layout": layout.description,
        "lr_images": len(layout.lr_files),
        "hr_images": len(layout.hr_files) if layout.hr_files is not None else None,
        "paper_row": row_key,
        "paper": PAPER_TABLE2.get(row_key or ""),
        "upscale_command": ["seesr", *argv] if argv else None,
        "upscale_settings": used_settings,
        "upscale_exit_code": upscale_code,
        "eval_exit_code": code,
        "report": str(report_dir / "summary.json"),
    }
    write_text_atomic(json.dumps(record, indent=2) + "\n", out / "benchmark.json")
    if failure is not None:
        raise failure
    return code if upscale_code == 0 else 1
