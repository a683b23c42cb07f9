"""Pair prediction files with ground-truth files by file stem.

Super-resolution datasets name the two sides of a pair differently: RealSR uses ``Canon_001_LR4.png`` /
``Canon_001_HR.png``, DIV2K ``0801x4.png`` / ``0801.png``, others ``*_lq`` / ``*_gt``, and upscalers append
``_out`` or ``_sr``. A file is paired by its exact stem first and, failing that, by its stem with one such suffix
removed (:func:`pair_key`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seesr.utils.images import IMAGE_EXTENSIONS

__all__ = ["PairingResult", "list_images", "pair_files", "pair_key"]

# A role suffix at the end of a stem: "_LR4", "-hr", "_gt", "_sr", "_out", ... or "x4" right after a digit (DIV2K).
_SUFFIX = re.compile(
    r"(?:[_\-.](?:lr|hr|lq|hq|gt|sr|out|output|pred|seesr|restored)\d*|(?<=\d)x[1-8])$", re.IGNORECASE
)


def pair_key(stem: str) -> str:
    """``stem`` without trailing role suffixes (at most two, e.g. ``img_LR4_out`` -> ``img``); never empty."""
    key = stem
    for _ in range(2):
        stripped = _SUFFIX.sub("", key)
        if not stripped or stripped == key:
            break
        key = stripped
    return key


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (sorted; hidden and partial files skipped)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


@dataclass
class PairingResult:
    """Pairs ``(pred, gt)`` (``gt`` None in no-reference mode) plus what could not be paired."""

    pairs: list[tuple[Path, Path | None]] = field(default_factory=list)
    unpaired_pred: list[Path] = field(default_factory=list)
    unpaired_gt: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _index(files: Iterable[Path], side: str, problems: list[str]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    exact: dict[str, Path] = {}
    by_key: dict[str, list[Path]] = {}
    for path in files:
        if path.stem in exact:
            problems.append(
                f"{side}: {path.name} and {exact[path.stem].name} share the stem {path.stem!r}; using {exact[path.stem].name}"
            )
            continue
        exact[path.stem] = path
        by_key.setdefault(pair_key(path.stem), []).append(path)
    return exact, by_key


def pair_files(pred_files: Sequence[Path], gt_files: Sequence[Path] | None) -> PairingResult:
    """Pair predictions with ground truths by exact stem, then by :func:`pair_key`.

    With ``gt_files=None`` every prediction is returned with ``gt=None``. Ambiguous matches (two ground truths
    with the same key) are reported and left unpaired rather than guessed.
    """
    result = PairingResult()
    pred_exact, _ = _index(pred_files, "predictions", result.problems)
    if gt_files is None:
        result.pairs = [(path, None) for path in pred_exact.values()]
        return result
    gt_exact, gt_by_key = _index(gt_files, "ground truth", result.problems)
    used: set[Path] = set()
    for stem, pred in pred_exact.items():
        gt = gt_exact.get(stem)
        if gt is None or gt in used:
            candidates = [path for path in gt_by_key.get(pair_key(stem), []) if path not in used]
            if len(candidates) > 1:
                names = ", ".join(path.name for path in candidates)
                result.problems.append(
                    f"{pred.name}: several ground truths match ({names}); not evaluated against any"
                )
                result.unpaired_pred.append(pred)
                continue
            gt = candidates[0] if candidates else None
        if gt is None:
            result.unpaired_pred.append(pred)
            continue
        used.add(gt)
        result.pairs.append((pred, gt))
    result.unpaired_gt = [path for path in gt_exact.values() if path not in used]
    return result
