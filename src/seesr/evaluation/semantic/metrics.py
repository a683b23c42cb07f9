"""Table 3's four numbers from a segmenter's predictions, each computed by a well-kept library.

* box AP and mask AP: ``pycocotools.cocoeval.COCOeval`` (``stats[0]``: AP at IoU .50:.05:.95, all areas, 100 dets);
* PQ: ``torchmetrics.detection.PanopticQuality`` (things and stuff of the panoptic categories; averaged over the
  categories present in the GT or the predictions);
* mIoU: ``torchmetrics.classification.MulticlassJaccardIndex`` on the semantic maps derived from the panoptic maps
  (one class per panoptic category), averaged over the categories present in the GT or the predictions.

All values are percentages (0-100), as the paper reports them. Differences from panopticapi, documented: COCO
"crowd" segments and unlabelled GT pixels are void (ignored) for PQ and mIoU; panopticapi instead removes only the
crowd pixels a predicted segment of the same class covers before counting it as a false positive.

Predictions (:class:`ImagePrediction`) hold, per image, COCO "results" dicts for detection/instance segmentation
(``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` as RLE) and a panoptic id map with its segments.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImagePrediction",
    "PanopticGT",
    "box_mask_ap",
    "load_panoptic_gt",
    "panoptic_and_miou",
    "score_predictions",
]

logger = logging.getLogger(__name__)

VOID = -1  # category of pixels nobody labelled (or crowd): ignored by PQ and mIoU


@dataclass
class ImagePrediction:
    """A segmenter's output on one image: COCO results (instances) and a panoptic map (``segment ids``, 0 = none)."""

    image_id: int
    instances: list[dict[str, Any]] = field(default_factory=list)
    panoptic: np.ndarray | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # {"id", "category_id"}


@dataclass
class PanopticGT:
    """The panoptic ground truth of a prepared set: categories and, per image id, (id map, segments)."""

    categories: list[dict[str, Any]]
    images: dict[int, tuple[np.ndarray, list[dict[str, Any]]]]


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())  # COCOeval prints its tables; the report has the numbers


def _coco_from(annotations: dict[str, Any] | str | Path, image_ids: Iterable[int] | None = None) -> Any:
    from pycocotools.coco import COCO

    data = annotations if isinstance(annotations, dict) else json.loads(Path(annotations).read_text("utf-8"))
    if image_ids is not None:
        keep = set(image_ids)
        data = {
            **data,
            "images": [i for i in data["images"] if i["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def box_mask_ap(annotations: dict[str, Any] | str | Path, predictions: Sequence[ImagePrediction]) -> dict[str, float]:
    """``{"ap_box", "ap_mask"}`` in percent over the images of ``predictions`` (pycocotools COCOeval)."""
    from pycocotools.cocoeval import COCOeval

    image_ids = [p.image_id for p in predictions]
    gt = _coco_from(annotations, image_ids)
    results = [{**r, "image_id": p.image_id} for p in predictions for r in p.instances]
    scores = {}
    for iou_type, key in (("bbox", "ap_box"), ("segm", "ap_mask")):
        if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0
            scores[key] = 0.0
            continue
        with _quiet():
            detections = gt.loadRes([dict(r) for r in results])
            evaluator = COCOeval(gt, detections, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        value = float(evaluator.stats[0])
        scores[key] = max(value, 0.0) * 100  # -1 = no GT of any category: 0
    return scores


def load_panoptic_gt(panoptic_json: Path, masks_dir: Path, image_ids: Iterable[int] | None = None) -> PanopticGT:
    """Read a panoptic annotation file and its id PNGs (R + 256 G + 256² B)."""
    from PIL import Image

    data = json.loads(Path(panoptic_json).read_text("utf-8"))
    keep = None if image_ids is None else set(image_ids)
    images = {}
    for annotation in data["annotations"]:
        if keep is not None and annotation["image_id"] not in keep:
            continue
        with Image.open(Path(masks_dir) / annotation["file_name"]) as image:
            rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        images[annotation["image_id"]] = (ids, annotation["segments_info"])
    return PanopticGT(categories=data["categories"], images=images)


def _category_map(ids: np.ndarray, segments: Sequence[dict[str, Any]], ignore_crowd: bool) -> np.ndarray:
    """(H, W) category id of every pixel (``VOID`` for unlabelled pixels and, when asked, crowd segments)."""
    categories = np.full(ids.shape, VOID, dtype=np.int64)
    for segment in segments:
        if ignore_crowd and segment.get("iscrowd", 0):
            continue
        categories[ids == segment["id"]] = segment["category_id"]
    return categories


def _pq_from_states(metric: Any, classes: int) -> tuple[float, float, float]:
    """PQ, SQ, RQ (percent) averaged over the first ``classes`` categories that occur (TP + FP + FN > 0)."""
    pq, sq, rq = metric.compute()[:classes].T  # (C, 3) per class: PQ, SQ, RQ
    tp, fp, fn = (getattr(metric, name)[:classes] for name in ("true_positives", "false_positives", "false_negatives"))
    present = (tp + fp + fn) > 0
    if not bool(present.any()):
        return 0.0, 0.0, 0.0
    return tuple(float(values[present].mean()) * 100 for values in (pq, sq, rq))  # type: ignore[return-value]


def panoptic_and_miou(gt: PanopticGT, predictions: Sequence[ImagePrediction]) -> dict[str, float]:
    """``{"pq", "sq", "rq", "miou"}`` in percent over the images of ``predictions`` (no panoptic map = nothing seen).

    Pixels the segmenter leaves unlabelled (or gives a category the GT does not have) get a category of their own,
    "unpredicted", that is never averaged: torchmetrics would treat them as void and drop a GT segment that is
    mostly unpredicted instead of counting it as a false negative (panopticapi counts it).
    """
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex
    from torchmetrics.detection import PanopticQuality

    ordered = sorted(gt.categories, key=lambda c: (not c.get("isthing", 1), c["id"]))  # torchmetrics' class order
    unpredicted = max(c["id"] for c in ordered) + 1
    things = {c["id"] for c in ordered if c.get("isthing", 1)}
    stuffs = {c["id"] for c in ordered if not c.get("isthing", 1)} | {unpredicted}
    pq_metric = PanopticQuality(things=things, stuffs=stuffs, return_sq_and_rq=True, return_per_class=True)
    iou_metric = MulticlassJaccardIndex(num_classes=len(ordered) + 1, average="none", ignore_index=255)
    lookup = np.full(unpredicted + 2, len(ordered), dtype=np.int64)  # category id -> class; unknown -> last class
    for position, category in enumerate(ordered):
        lookup[category["id"]] = position
    for prediction in predictions:
        if prediction.image_id not in gt.images:
            continue
        gt_ids, gt_segments = gt.images[prediction.image_id]
        pred_ids = prediction.panoptic if prediction.panoptic is not None else np.zeros_like(gt_ids)
        gt_categories = _category_map(gt_ids, gt_segments, ignore_crowd=True)
        pred_categories = _category_map(pred_ids, prediction.segments, ignore_crowd=False)
        pred_categories[~np.isin(pred_categories, [c["id"] for c in ordered])] = unpredicted
        preds = np.stack([pred_categories, np.where(pred_categories == unpredicted, 0, pred_ids)], axis=-1)
        target = np.stack([gt_categories, np.where(gt_categories == VOID, 0, gt_ids)], axis=-1)
        pq_metric.update(torch.from_numpy(preds)[None], torch.from_numpy(target)[None])
        labels = torch.from_numpy(np.where(gt_categories == VOID, 255, lookup[np.maximum(gt_categories, 0)]))
        iou_metric.update(torch.from_numpy(lookup[pred_categories])[None], labels[None])
    pq, sq, rq = _pq_from_states(pq_metric, len(ordered))
    per_class = iou_metric.compute()[: len(ordered)]
    confusion = iou_metric.confmat.double()
    union = (confusion.sum(0) + confusion.sum(1) - confusion.diagonal())[: len(ordered)]
    present = union > 0
    miou = float(per_class[present].mean()) * 100 if bool(present.any()) else 0.0
    return {"pq": pq, "sq": sq, "rq": rq, "miou": miou}


def score_predictions(dataset: Path, predictions: Sequence[ImagePrediction]) -> dict[str, float]:
    """All Table 3 numbers of ``predictions`` on a ``seesr prepare --coco`` folder (PQ/mIoU need its panoptic.json)."""
    from seesr.data.coco import INSTANCES_NAME, PANOPTIC_DIR, PANOPTIC_NAME

    scores = box_mask_ap(Path(dataset) / INSTANCES_NAME, predictions)
    if (Path(dataset) / PANOPTIC_NAME).is_file():
        gt = load_panoptic_gt(
            Path(dataset) / PANOPTIC_NAME, Path(dataset) / PANOPTIC_DIR, [p.image_id for p in predictions]
        )
        scores.update(panoptic_and_miou(gt, predictions))
    return scores
