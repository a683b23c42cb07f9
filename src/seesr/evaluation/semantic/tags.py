"""Tag agreement (beyond the paper): RAM tags of a prediction against RAM tags of its ground truth.

The judge is plain RAM (the teacher, no DAPE LoRA), so it is not the model that produced SeeSR's prompts. Per image,
with P the tags of the prediction and G those of the ground truth (RAM's per-class thresholds, "pipeline" input
preprocessing as ``seesr tag``):

* precision = |P ∩ G| / |P|, recall = |P ∩ G| / |G| (an empty set counts as 1 when the other one is empty too,
  as 0 otherwise), F1 = their harmonic mean (0 when both are 0).

The three metrics share one tagger and one forward pass per pair (``tag_f1``, ``tag_precision``, ``tag_recall``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TagAgreement", "build_tag_scorers", "load_tag_agreement", "tag_agreement"]

logger = logging.getLogger(__name__)

RAM_ROUTE = (
    "or pass `--tagger PATH`, PATH being ram_swin_large_14m.pth (xinyu1205/recognize_anything_model) or a folder "
    "holding it, or leave tag F1 out (seesr eval: drop tag_f1 from --metrics; seesr benchmark --semantic: "
    "--no-tag-f1 or --skip-unavailable)"
)


def tag_agreement(pred_tags: Sequence[str], gt_tags: Sequence[str]) -> dict[str, float]:
    """``{"tag_precision", "tag_recall", "tag_f1"}`` of two tag lists (see the module docstring)."""
    predicted, truth = set(pred_tags), set(gt_tags)
    common = len(predicted & truth)
    precision = common / len(predicted) if predicted else float(not truth)
    recall = common / len(truth) if truth else float(not predicted)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tag_precision": precision, "tag_recall": recall, "tag_f1": f1}


class TagAgreement:
    """Tags a (prediction, ground truth) pair once and answers the three metrics for it."""

    def __init__(self, tagger: Any) -> None:
        self.tagger = tagger
        self._last: tuple[np.ndarray, np.ndarray, dict[str, float]] | None = None

    def scores(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        from PIL import Image

        if self._last is not None and self._last[0] is pred and self._last[1] is gt:
            return self._last[2]  # the same arrays: evaluate_files asks for the three metrics in a row
        results = self.tagger.tag([Image.fromarray(pred), Image.fromarray(gt)], mode="pipeline")
        values = tag_agreement(results[0].names, results[1].names)
        self._last = (pred, gt, values)
        return values


def _load_teacher(tagger: Path | None, device: Any, allow_download: bool, progress: bool) -> Any:
    import torch

    from seesr.data.prepare import PrepareError, load_teacher_tagger, resolve_teacher_source
    from seesr.evaluation.registry import MetricUnavailableError

    if tagger is None:
        from seesr.weights.download import DownloadError, ensure_default_weights
        from seesr.weights.resolve import MissingWeightsError

        try:
            ensure_default_weights("ram", download=allow_download, progress=progress, route=RAM_ROUTE)
        except (MissingWeightsError, DownloadError, ValueError) as error:
            raise MetricUnavailableError(f"tag_f1 needs the RAM checkpoint: {error}") from None
    try:
        source = resolve_teacher_source(None if tagger is None else Path(tagger))
    except PrepareError as error:
        raise MetricUnavailableError(f"tag_f1: {str(error).replace(' (or pass --no-tags)', '')}") from None
    from seesr.weights.tagger import load_ram_tagger

    try:
        if source.pretrained_dir is not None:
            return load_teacher_tagger(source, device)
        # plain RAM is the intent here: loaded directly, without the "DAPE.pth not found" warning
        return load_ram_tagger(source.ram_path, None, source.config_dir, dtype=torch.float32, device=device)
    except (OSError, ValueError) as error:  # unreadable or mismatched checkpoint (WeightReadError, CheckpointError)
        raise MetricUnavailableError(f"tag_f1: the RAM checkpoint could not be loaded: {error}") from None


def load_tag_agreement(
    tagger: Path | None = None, device: Any = "cpu", allow_download: bool = True, progress: bool = True
) -> TagAgreement:
    """A :class:`TagAgreement` judge with the plain RAM teacher (see :func:`build_tag_scorers` for ``tagger``)."""
    import torch

    return TagAgreement(_load_teacher(tagger, torch.device(device), allow_download, progress))


def build_tag_scorers(
    names: Sequence[str],
    device: Any = "cpu",
    tagger: Path | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Scorers ``scorer(pred, gt) -> float`` of the requested tag metrics, sharing one plain-RAM tagger.

    ``tagger``: a RAM checkpoint or a folder holding one (see :func:`seesr.data.prepare.resolve_teacher_source`);
    None = the official RAM file in the Hugging Face cache, fetched on first use when ``allow_download``.
    Raises :class:`seesr.evaluation.registry.MetricUnavailableError` when no RAM checkpoint can be found.
    """
    judge = load_tag_agreement(tagger, device, allow_download, progress)

    def scorer(name: str) -> Any:
        def score(pred: np.ndarray, gt: np.ndarray | None) -> float:
            if gt is None:
                raise ValueError("tag agreement needs a ground-truth image")
            return judge.scores(pred, gt)[name]

        return score

    return {name: scorer(name) for name in names}
