"""Score a folder of predictions, against a folder of ground truths or on their own (no-reference mode).

One bad file never stops the run: unreadable images, size mismatches and unpaired files are recorded as problems
(per image, and in the report) and the rest of the folder is still evaluated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from seesr.evaluation.pairing import list_images, pair_files
from seesr.evaluation.registry import (
    METRICS,
    PYIQA_VERSION,
    TAG_METRICS,
    MetricUnavailableError,
    Scorer,
    build_scorer,
    check_weights,
    compute_fid,
    format_missing_weights,
    metric_package_versions,
    parse_metric_list,
)
from seesr.utils.images import ImageReadError, load_image

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "ImageRecord", "evaluate_files", "evaluate_folders"]

COLOUR_SETTING = "PSNR/SSIM on the Y channel of BT.601 YCbCr (Y in [16, 235], float64, unrounded)"


@dataclass
class ImageRecord:
    """Scores of one prediction; ``scores`` holds only the metrics that could be computed for it."""

    name: str
    pred: Path
    gt: Path | None
    scores: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (width, height) of the prediction


@dataclass
class EvaluationResult:
    """Everything a report needs: per-image records, FID, problems, settings and package versions."""

    pred_dir: Path
    gt_dir: Path | None
    metrics: list[str]
    records: list[ImageRecord]
    fid: float | None = None
    fid_count: int = 0  # images per set that FID was computed on
    problems: list[str] = field(default_factory=list)
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "full-reference" if self.gt_dir is not None else "no-reference"

    @property
    def all_problems(self) -> list[str]:
        """Every problem of the run, set-level first, then per image as ``"<name>: <problem>"``."""
        return list(self.problems) + [f"{r.name}: {problem}" for r in self.records for problem in r.problems]

    @property
    def computed_metrics(self) -> list[str]:
        return [name for name in self.metrics if name not in self.skipped_metrics]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: ``mean`` over the images it was computed on (FID: the set value) and ``count``."""
        table: dict[str, dict[str, Any]] = {}
        for name in self.computed_metrics:
            info = METRICS[name]
            if name == "fid":
                table[name] = {"mean": self.fid, "count": self.fid_count if self.fid is not None else 0}
            else:
                values = [r.scores[name] for r in self.records if name in r.scores]
                table[name] = {"mean": float(np.mean(values)) if values else None, "count": len(values)}
            table[name].update(
                label=info.label, lower_better=info.lower_better, kind=info.kind, implementation=info.implementation
            )
        return table


def _load_rgb(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        loaded = load_image(path)
    except ImageReadError as error:
        return None, f"unreadable: {error}"
    return np.asarray(loaded.rgb, dtype=np.uint8), None


def _preflight(
    metrics: Sequence[str], allow_download: bool, skip_unavailable: bool, skipped: dict[str, str]
) -> list[str]:
    """Check the weight files of all learned metrics before building anything; returns the metrics to build."""
    missing = check_weights(metrics)
    if missing and not allow_download:
        if not skip_unavailable:
            offline_ok = ",".join(n for n in metrics if not METRICS[n].weights)
            raise MetricUnavailableError(
                "offline, and these metric weights are not in the caches:\n"
                f"{format_missing_weights(missing)}\n"
                "Run once with network access (they are fetched on first use), copy the files to those paths, "
                "or evaluate without them: --skip-unavailable, or --metrics "
                f"{offline_ok or 'psnr,ssim,niqe'}."
            )
        for name in missing:
            skipped[name] = "weights missing (offline): " + ", ".join(w.filename for w in missing[name])
            # reported once, by the caller (seesr eval prints "<metric>: skipped (...)" with the summary)
            logger.debug("skipping %s: %s", METRICS[name].label, skipped[name])
    return [name for name in metrics if name not in skipped]


def _build_tag_scorers(
    names: Sequence[str],
    scorers: dict[str, Scorer],
    result: EvaluationResult,
    device: Any,
    tagger: Path | None,
    allow_download: bool,
    skip_unavailable: bool,
    progress: bool,
) -> None:
    """The tag metrics share one tagger: build them together (or record them as skipped)."""
    wanted = [name for name in names if name in TAG_METRICS]
    if not wanted:
        return
    from seesr.evaluation.semantic.tags import build_tag_scorers

    try:
        scorers.update(build_tag_scorers(wanted, device, tagger, allow_download, progress))
    except MetricUnavailableError as error:
        if not skip_unavailable:
            raise
        for name in wanted:
            result.skipped_metrics[name] = str(error)
        logger.warning("skipping the tag metrics: %s", error)
        return
    result.settings["tagger"] = "default RAM file (HF cache)" if tagger is None else str(tagger)


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path | None = None,
    metrics: str | Sequence[str] | None = None,
    crop_border: int = 0,
    device: Any = "cpu",
    allow_download: bool = True,
    trust_weights: bool = False,
    skip_unavailable: bool = False,
    progress: bool = True,
    tagger: Path | None = None,
) -> EvaluationResult:
    """Score every image of ``pred_dir`` (paired by stem with ``gt_dir`` when given).

    Args:
        pred_dir: folder of predictions (super-resolved images).
        gt_dir: folder of ground truths of the same size; None for no-reference mode.
        metrics: names (or ``"psnr,ssim"``); None = all of Table 2 that the mode allows.
        crop_border: pixels removed from each edge for PSNR and SSIM.
        device: torch device for the learned metrics.
        allow_download: fetch missing weights; False fails fast listing the missing files.
        trust_weights: allow full unpickling of metric weight files.
        skip_unavailable: leave out metrics that cannot be built instead of failing.
        progress: show a tqdm progress bar.
        tagger: RAM checkpoint or folder for the tag metrics (None = the official RAM file in the HF cache).

    Raises:
        ValueError: bad folders or metric names.
        MetricUnavailableError: a metric cannot be built and ``skip_unavailable`` is False.
    """
    pred_dir = Path(pred_dir)
    gt_path = Path(gt_dir) if gt_dir is not None else None
    for folder, role in ((pred_dir, "--pred"), (gt_path, "--gt")):
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{role} {folder}: not a folder")
    pred_files = list_images(pred_dir)
    if not pred_files:
        raise ValueError(f"--pred {pred_dir}: no images found")
    gt_files = list_images(gt_path) if gt_path is not None else None
    if gt_files is not None and not gt_files:
        raise ValueError(f"--gt {gt_path}: no images found")
    return evaluate_files(
        pred_files,
        gt_files,
        pred_label=pred_dir,
        gt_label=gt_path,
        metrics=metrics,
        crop_border=crop_border,
        device=device,
        allow_download=allow_download,
        trust_weights=trust_weights,
        skip_unavailable=skip_unavailable,
        progress=progress,
        tagger=tagger,
    )


def evaluate_files(
    pred_files: Sequence[Path],
    gt_files: Sequence[Path] | None,
    pred_label: Path,
    gt_label: Path | None,
    metrics: str | Sequence[str] | None = None,
    crop_border: int = 0,
    device: Any = "cpu",
    allow_download: bool = True,
    trust_weights: bool = False,
    skip_unavailable: bool = False,
    progress: bool = True,
    tagger: Path | None = None,
) -> EvaluationResult:
    """:func:`evaluate_folders` on explicit file lists (e.g. a dataset whose LR and HR images share a folder).

    ``pred_label`` / ``gt_label`` name the sources in the report; ``gt_files=None`` is no-reference mode.
    1. check the arguments and pair the files; 2. build the scorers (a metric that cannot be built is skipped or
    raised, per ``skip_unavailable``); 3. score every image, a failure recorded on that image only; 4. FID over the
    readable pairs.
    """
    from tqdm.auto import tqdm

    names = parse_metric_list(metrics, has_gt=gt_files is not None)
    if crop_border < 0:
        raise ValueError(f"--crop-border must be >= 0, got {crop_border}")
    pred_dir, gt_path = Path(pred_label), (Path(gt_label) if gt_label is not None else None)
    if gt_files is not None and gt_path is None:
        raise ValueError("gt_label is required with gt_files")
    pairing = pair_files(pred_files, gt_files)
    result = EvaluationResult(pred_dir=pred_dir, gt_dir=gt_path, metrics=names, records=[])
    result.problems.extend(pairing.problems)
    result.problems.extend(f"{g.name}: ground truth without a prediction (not evaluated)" for g in pairing.unpaired_gt)
    result.settings = _settings_record(crop_border, device)
    result.versions = metric_package_versions()

    to_build = _preflight(names, allow_download, skip_unavailable, result.skipped_metrics)
    scorers: dict[str, Scorer] = {}
    _build_tag_scorers(to_build, scorers, result, device, tagger, allow_download, skip_unavailable, progress)
    options = {"device": device, "allow_download": allow_download, "trust_weights": trust_weights}
    _build_image_scorers(to_build, scorers, result, skip_unavailable, crop_border=crop_border, **options)
    per_image = [name for name in names if name != "fid" and name in scorers]

    unpaired = set(pairing.unpaired_pred)
    items: list[tuple[Path, Path | None]] = list(pairing.pairs) + [(p, None) for p in pairing.unpaired_pred]
    items.sort(key=lambda pair: pair[0].name)
    fid_pairs: list[tuple[Path, Path]] = []
    for pred_path, gt_file in tqdm(items, desc="seesr eval", unit="img", disable=not progress):
        record = ImageRecord(name=pred_path.name, pred=pred_path, gt=gt_file)
        result.records.append(record)
        if pred_path in unpaired:
            record.problems.append("no ground truth with a matching name (no-reference metrics only)")
        _score_image(record, scorers, per_image, fid_pairs)

    if "fid" in to_build:
        _add_fid(result, fid_pairs, skip_unavailable, **options)
    for problem in result.all_problems:  # the caller reports them (seesr eval prints the first few)
        logger.debug("%s", problem)
    return result


def _settings_record(crop_border: int, device: Any) -> dict[str, Any]:
    """How the scores were computed, for the report."""
    return {
        "crop_border": crop_border,
        "crop_border_applies_to": ["psnr", "ssim"],
        "colour": COLOUR_SETTING,
        "ssim": "11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, valid positions only",
        "niqe": "pyiqa NIQE (Y of YIQ, rounded; 96x96 blocks), pristine parameters from BasicSR 1.4.2",
        "fid": "pyiqa clean mode; prediction set vs ground-truth set (pairs whose two images were readable)",
        "maniqa_seed": 123,
        "pyiqa_pinned": PYIQA_VERSION,
        "device": str(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _build_image_scorers(
    to_build: Sequence[str],
    scorers: dict[str, Scorer],
    result: EvaluationResult,
    skip_unavailable: bool,
    **options: Any,
) -> None:
    """The per-image scorers (not FID, not the tag metrics) into ``scorers``; one that cannot be built is skipped
    (with ``skip_unavailable``, noted in ``result``) or raised."""
    for name in to_build:
        if name == "fid" or name in TAG_METRICS:
            continue
        try:
            scorers[name] = build_scorer(name, **options)
        except MetricUnavailableError as error:
            if not skip_unavailable:
                raise
            result.skipped_metrics[name] = str(error)
            logger.warning("skipping %s: %s", METRICS[name].label, error)


def _score_image(
    record: ImageRecord, scorers: dict[str, Scorer], per_image: Sequence[str], fid_pairs: list[tuple[Path, Path]]
) -> None:
    """Read the prediction (and its ground truth) of ``record`` and score it; problems go to the record, and a pair
    whose two images were readable joins ``fid_pairs``."""
    pred, problem = _load_rgb(record.pred)
    if problem:
        record.problems.append(f"prediction {problem}")
        return
    record.size = (pred.shape[1], pred.shape[0])
    gt = None
    if record.gt is not None:
        gt, problem = _load_rgb(record.gt)
        if problem:
            record.problems.append(f"ground truth {problem}")
        else:
            fid_pairs.append((record.pred, record.gt))
            if gt.shape != pred.shape:
                record.problems.append(
                    f"size mismatch: prediction {pred.shape[1]}x{pred.shape[0]}, ground truth "
                    f"{gt.shape[1]}x{gt.shape[0]} ({record.gt.name}); full-reference metrics skipped"
                )
                gt = None
    for name in per_image:
        info = METRICS[name]
        if info.needs_gt and gt is None:
            continue
        try:
            record.scores[name] = scorers[name](pred, gt if info.needs_gt else None)
        except Exception as error:  # one image must not stop the folder
            record.problems.append(f"{name}: {type(error).__name__}: {error}")
            logger.debug("%s failed on %s", name, record.pred, exc_info=True)


def _add_fid(
    result: EvaluationResult, fid_pairs: list[tuple[Path, Path]], skip_unavailable: bool, **options: Any
) -> None:
    """FID of the predictions against the ground truths of ``fid_pairs`` into ``result``."""
    try:
        result.fid_count = len(fid_pairs)
        result.fid = compute_fid([p for p, _ in fid_pairs], [g for _, g in fid_pairs], **options)
    except MetricUnavailableError as error:
        if not skip_unavailable:
            raise
        result.skipped_metrics["fid"] = str(error)
    except ValueError as error:
        result.problems.append(f"FID not computed: {error}")
        result.fid = None
    if result.fid is not None and not math.isfinite(result.fid):
        result.problems.append("FID is not finite (too few images for a covariance estimate?)")
