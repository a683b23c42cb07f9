"""Table 3 metrics from predictions: GT-equal predictions score 100; a shifted box costs what COCOeval's definition
says; PQ and mIoU drop when a segment changes class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.evaluation import coco_case

pytest.importorskip("pycocotools")
pytest.importorskip("torchmetrics")

SIZE = 512


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A prepared-like folder: instances.json + panoptic.json + panoptic/ at 512² (no images needed here)."""
    from seesr.data.coco import INSTANCES_NAME, PANOPTIC_DIR, PANOPTIC_NAME, rescale_instances, rescale_panoptic

    root = tmp_path_factory.mktemp("coco_metrics")
    source = coco_case.panoptic(root / "src_panoptic")
    names = {i: f"{i:012d}.png" for i in coco_case.IMAGES}
    (root / INSTANCES_NAME).write_text(json.dumps(rescale_instances(coco_case.instances(), SIZE, names)))
    panoptic, _ = rescale_panoptic(source, root / "src_panoptic", root / PANOPTIC_DIR, SIZE, names)
    (root / PANOPTIC_NAME).write_text(json.dumps(panoptic))
    return root


def _gt_predictions(dataset: Path):
    """Predictions equal to the ground truth (non-crowd instances with score 1; the panoptic maps as they are)."""
    from pycocotools import mask as mask_utils

    from seesr.evaluation.semantic.metrics import ImagePrediction, load_panoptic_gt

    instances = json.loads((dataset / "instances.json").read_text())
    panoptic = load_panoptic_gt(dataset / "panoptic.json", dataset / "panoptic")
    predictions = {i: ImagePrediction(image_id=i) for i in coco_case.IMAGES}
    for annotation in instances["annotations"]:
        if annotation["iscrowd"]:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], SIZE, SIZE))
        predictions[annotation["image_id"]].instances.append(
            {
                "id": annotation["id"],
                "category_id": annotation["category_id"],
                "bbox": list(annotation["bbox"]),
                "score": 1.0,
                "segmentation": rle,
            }
        )
    for image_id, (ids, segments) in panoptic.images.items():
        predictions[image_id].panoptic = ids.copy()
        predictions[image_id].segments = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
    return predictions


def test_predictions_equal_to_gt_score_100(dataset: Path):
    from seesr.evaluation.semantic.metrics import score_predictions

    scores = score_predictions(dataset, list(_gt_predictions(dataset).values()))
    for key in ("ap_box", "ap_mask", "pq", "miou"):
        assert scores[key] == pytest.approx(100.0, abs=1e-6), key


def test_shifted_box_lowers_ap_as_cocoeval_defines_it(dataset: Path):
    from seesr.evaluation.semantic.metrics import box_mask_ap

    predictions = _gt_predictions(dataset)
    dog = next(r for r in predictions[3].instances if r["category_id"] == 18)
    x, y, w, h = dog["bbox"]  # 256 wide at 512²
    shift = 60.0
    dog["bbox"], dog["score"] = [x + shift, y, w, h], 0.9  # IoU (256-60)/(256+60) = 0.620; ranked after the exact dog
    ap = box_mask_ap(dataset / "instances.json", list(predictions.values()))["ap_box"]
    # person: AP 1. dog (2 GT): IoU thresholds .50/.55/.60 both match (AP 1); the 7 others: one TP ranked first,
    # recall 0.5 at precision 1, so 51 of COCO's 101 recall points -> 51/101.
    dog_ap = (3 * 1.0 + 7 * 51 / 101) / 10
    assert ap == pytest.approx(100 * (1.0 + dog_ap) / 2, abs=1e-9)
    assert ap < 100


def test_nothing_detected_scores_zero(dataset: Path):
    from seesr.evaluation.semantic.metrics import ImagePrediction, box_mask_ap

    scores = box_mask_ap(dataset / "instances.json", [ImagePrediction(image_id=i) for i in coco_case.IMAGES])
    assert scores == {"ap_box": 0.0, "ap_mask": 0.0}


def test_relabelled_segment_lowers_pq_and_miou(dataset: Path):
    from seesr.evaluation.semantic.metrics import load_panoptic_gt, panoptic_and_miou

    gt = load_panoptic_gt(dataset / "panoptic.json", dataset / "panoptic")
    predictions = _gt_predictions(dataset)
    for segment in predictions[3].segments:  # the dog of image 3 seen as a person
        if segment["category_id"] == 18:
            segment["category_id"] = 1
    scores = panoptic_and_miou(gt, list(predictions.values()))
    assert 0 < scores["pq"] < 100 and 0 < scores["miou"] < 100
    # PQ per class: sky 1; person TP 2 (IoU 1), FP 1 -> 2/2.5; dog TP 1, FN 1 -> 1/1.5
    assert scores["pq"] == pytest.approx(100 * (1 + 2 / 2.5 + 1 / 1.5) / 3, abs=1e-4)
    predictions[1].panoptic = np.zeros_like(predictions[1].panoptic)  # image 1: nothing predicted
    assert panoptic_and_miou(gt, list(predictions.values()))["pq"] < scores["pq"]


def test_unpredicted_segments_are_false_negatives(dataset: Path):
    """panopticapi's rule: a GT segment the segmenter leaves unlabelled is a false negative (torchmetrics alone would
    call it void and leave it out, giving PQ 100 here and NaN when nothing at all is predicted)."""
    from seesr.evaluation.semantic.metrics import ImagePrediction, load_panoptic_gt, panoptic_and_miou

    gt = load_panoptic_gt(dataset / "panoptic.json", dataset / "panoptic")
    predictions = _gt_predictions(dataset)
    predictions[3] = ImagePrediction(image_id=3)  # image 3 (sky + a dog): nothing predicted
    scores = panoptic_and_miou(gt, list(predictions.values()))
    # sky: TP 2, FN 1 -> 2/2.5; person: 1; dog: TP 1, FN 1 -> 1/1.5
    assert scores["pq"] == pytest.approx(100 * (2 / 2.5 + 1 + 1 / 1.5) / 3, abs=1e-4)
    nothing = panoptic_and_miou(gt, [ImagePrediction(image_id=i) for i in coco_case.IMAGES])
    assert nothing["pq"] == 0.0 and nothing["miou"] == 0.0
