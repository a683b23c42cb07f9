"""``seesr eval``: score super-resolved images with the metrics of SeeSR's Table 2 and write a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

PROBLEMS_SHOWN = 5  # problems printed on stderr; the report lists all of them
METRIC_HELP = """metrics (Table 2 of the paper; default: all that the mode allows):
  psnr, ssim     Y channel of BT.601 YCbCr, peak 255, --crop-border pixels removed from each edge (no weights)
  lpips          pyiqa 'lpips' (AlexNet, v0.1)            full-reference, lower is better
  dists          pyiqa 'dists'                            full-reference, lower is better
  fid            pyiqa 'fid' (clean), predictions vs GT   set-level, lower is better
  niqe           pyiqa NIQE + shipped pristine params     no-reference, lower is better (no weights)
  maniqa         pyiqa 'maniqa' (KonIQ-10k)               no-reference, higher is better
  musiq          pyiqa 'musiq' (KonIQ-10k)                no-reference, higher is better
  clipiqa        pyiqa 'clipiqa' (CLIP RN50)              no-reference, higher is better
  tag_f1         plain RAM tags of prediction vs GT: F1 (and tag_precision, tag_recall)   not in the default;
                 RAM from --tagger, else the official RAM file in the Hugging Face cache (fetched on first use)
Learned metrics use pyiqa 0.1.16 (pip install --no-deps pyiqa==0.1.16). Their weights are fetched on first use
into $TORCH_HOME/hub (checkpoints/, pyiqa/, clip/); offline (HF_HUB_OFFLINE=1 or --offline) the command lists
the missing files and stops, unless --skip-unavailable.

report (in --out): per_image.csv, summary.json (means, settings, package versions), summary.md, per_image.png

exit status: 0 when every image was scored; 1 when some pair was missing (a prediction without ground truth or
the reverse), unreadable or not scored: the report is still written for the others, and the first problems are
printed; 2 for usage errors.

examples:
  seesr eval --pred results/ --gt RealSR/test_HR --out report/
  seesr eval --pred results/ --metrics niqe,musiq,maniqa,clipiqa --out report/   # no ground truth
  seesr eval --pred results/ --gt HR/ --metrics psnr,ssim --crop-border 4 --out report/
  seesr eval --pred results/ --gt HR/ --metrics tag_f1 --out report/   # RAM tag agreement with the GT
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="score super-resolved images (PSNR, SSIM, LPIPS, DISTS, FID, NIQE, MANIQA, MUSIQ, CLIP-IQA)",
        description=(
            "Score a folder of predictions against a folder of ground truths (files paired by name; suffixes such "
            "as _LR4, _HR, _gt, _out, x4 are ignored when pairing) or, without --gt, with no-reference metrics only."
        ),
        epilog=METRIC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_eval_arguments(parser, with_folders=True)
    parser.set_defaults(func=run)
    return parser


def add_eval_arguments(parser: Any, with_folders: bool, with_device: bool = True) -> None:
    """Options shared by ``seesr eval`` and ``seesr benchmark``."""
    if with_folders:
        parser.add_argument("--pred", required=True, metavar="DIR", help="folder of super-resolved images")
        parser.add_argument(
            "--gt", metavar="DIR", help="folder of ground-truth images (same sizes); omit for no-reference mode"
        )
        parser.add_argument("--out", "-o", required=True, metavar="REPORT_DIR", help="folder for the report files")
    parser.add_argument(
        "--metrics",
        metavar="LIST",
        help="comma-separated metric names (psnr,ssim,lpips,dists,fid,niqe,maniqa,musiq,clipiqa); default: all",
    )
    parser.add_argument(
        "--crop-border",
        type=int,
        default=0,
        metavar="N",
        help="pixels removed from each edge before PSNR/SSIM (default 0, as pyiqa and the paper's tables)",
    )
    if with_device:
        parser.add_argument(
            "--device", default="auto", help="device for learned metrics: auto, cpu, cuda, cuda:1, mps"
        )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never download metric weights (also implied by HF_HUB_OFFLINE=1); missing files are listed",
    )
    parser.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="leave out metrics whose weights or packages are missing instead of stopping",
    )
    parser.add_argument(
        "--trust-metric-weights",
        action="store_true",
        help="load metric weight files with full unpickling (only for files you trust; default is weights-only)",
    )
    parser.add_argument(
        "--tagger",
        metavar="PATH",
        help="RAM checkpoint ram_swin_large_14m.pth, or a folder holding it (a model folder with ram/ works), for "
        "tag_f1 (plain RAM, no DAPE LoRA); default: the RAM file in the Hugging Face cache",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary table")


def evaluate_to_report(
    args: argparse.Namespace,
    pred: str,
    gt: str | None,
    out: str,
    paper: Any = None,
    title: str = "seesr eval",
    pred_files: list[Path] | None = None,
    gt_files: list[Path] | None = None,
    gt_label: Path | None = None,
) -> int:
    """Run the evaluation described by ``args`` and write its report; returns the exit code.

    Folders ``pred``/``gt`` are listed unless explicit ``pred_files`` (and ``gt_files``, labelled ``gt_label``) are
    given, as ``seesr benchmark`` does for datasets whose LR and HR images share a folder.
    """
    from seesr.cli.main import CLIError
    from seesr.evaluation.evaluate import evaluate_files, evaluate_folders
    from seesr.evaluation.registry import MetricUnavailableError, is_offline
    from seesr.evaluation.report import format_value, write_report
    from seesr.utils.device import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        raise CLIError(str(error), 2) from None
    options = dict(
        metrics=args.metrics,
        crop_border=args.crop_border,
        device=device,
        allow_download=not is_offline(args.offline),
        trust_weights=args.trust_metric_weights,
        skip_unavailable=args.skip_unavailable,
        progress=not args.quiet,
        tagger=None if getattr(args, "tagger", None) is None else Path(args.tagger),
    )
    try:
        if pred_files is not None:
            result = evaluate_files(pred_files, gt_files, pred_label=Path(pred), gt_label=gt_label, **options)
        else:
            result = evaluate_folders(pred, gt, **options)
    except ValueError as error:
        raise CLIError(str(error), 2) from None
    except MetricUnavailableError as error:
        raise CLIError(str(error), 1) from None
    written = write_report(result, out, paper=paper, title=title)
    scored = sum(1 for record in result.records if record.scores) or (1 if result.fid is not None else 0)
    if not args.quiet:
        summary = result.summary()
        width = max((len(entry["label"]) for entry in summary.values()), default=6) + 2
        for name, entry in summary.items():
            reference = f"   (paper {format_value(name, paper[name])})" if paper and name in paper else ""
            line = f"  {entry['label'] + ' ' + ('↓' if entry['lower_better'] else '↑'):<{width + 2}}"
            print(f"{line}{format_value(name, entry['mean']):>10}  [{entry['count']} images]{reference}")  # noqa: T201
        for name, reason in result.skipped_metrics.items():
            print(f"  {name}: skipped ({reason.splitlines()[0]})")  # noqa: T201
    problems = result.all_problems
    _print_problems(problems, written["markdown"])
    print(f"report: {written['markdown'].parent}")  # noqa: T201
    if not scored:
        raise CLIError("no image could be scored; see the problems listed in the report", 1)
    if problems:
        raise CLIError(
            f"{len(problems)} problem(s), listed above and in the report: the means cover only the images "
            "that could be scored",
            1,
        )
    return 0


def _print_problems(problems: list[str], report: Path) -> None:
    """The first :data:`PROBLEMS_SHOWN` problems on stderr, then how many more the report lists."""
    for problem in problems[:PROBLEMS_SHOWN]:
        print(f"problem: {problem}", file=sys.stderr)  # noqa: T201
    if len(problems) > PROBLEMS_SHOWN:
        print(f"... and {len(problems) - PROBLEMS_SHOWN} more in {report}", file=sys.stderr)  # noqa: T201


def run(args: argparse.Namespace) -> int:
    return evaluate_to_report(args, args.pred, args.gt, args.out)
