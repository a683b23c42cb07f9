"""Mask2Former inference (tiny random-weight config built here) into COCO-format predictions, and its offline error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.evaluation import coco_case

pytest.importorskip("pycocotools")
pytest.importorskip("torchmetrics")


@pytest.fixture(scope="module")
def tiny_segmenter_dir(tmp_path_factory) -> Path:
    return coco_case.save_tiny_mask2former(tmp_path_factory.mktemp("mask2former"))


def test_predictions_are_coco_format_and_scorable(tiny_segmenter_dir: Path, tmp_path: Path):
    from pycocotools import mask as mask_utils

    from seesr.evaluation.semantic.metrics import box_mask_ap
    from seesr.evaluation.semantic.segmenter import load_segmenter

    segmenter = load_segmenter(tiny_segmenter_dir, allow_download=False)
    # random weights give weak, overlapping masks: keep every panoptic segment so that path is exercised
    segmenter.panoptic_threshold = segmenter.mask_threshold = segmenter.overlap_threshold = 0.0
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)) for _ in range(2)]
    predictions = segmenter.predict(images, [1, 2], coco_case.CATEGORIES, things={1, 18})
    assert [p.image_id for p in predictions] == [1, 2]
    for prediction in predictions:
        assert prediction.panoptic.shape == (96, 80)
        assert prediction.segments, "no panoptic segment at threshold 0"
        assert {s["category_id"] for s in prediction.segments} <= {1, 18, 187}
        assert set(np.unique(prediction.panoptic)) <= {0} | {s["id"] for s in prediction.segments}
        assert prediction.instances and {r["category_id"] for r in prediction.instances} <= {1, 18}  # no stuff
        for result in prediction.instances:
            assert tuple(result["segmentation"]["size"]) == (96, 80)
            x, y, w, h = result["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 80 and y + h <= 96
            assert mask_utils.area(result["segmentation"]) > 0 and 0 <= result["score"] <= 1
    # pycocotools accepts them as results: a dataset with one 80x96 image of a person
    gt = {
        "images": [{"id": 1, "width": 80, "height": 96, "file_name": "a.png"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 30, 40],
                "area": 1200.0,
                "iscrowd": 0,
                "segmentation": [[10, 10, 40, 10, 40, 50, 10, 50]],
            }
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    scores = box_mask_ap(gt, predictions[:1])
    assert 0.0 <= scores["ap_box"] <= 100 and 0.0 <= scores["ap_mask"] <= 100


def test_missing_checkpoint_offline_is_a_clear_error(tmp_path: Path, monkeypatch):
    from seesr.evaluation.registry import MetricUnavailableError
    from seesr.evaluation.semantic.segmenter import DEFAULT_SEGMENTER, load_segmenter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailableError, match="not in the Hugging Face cache") as caught:
        load_segmenter(allow_download=False)
    assert DEFAULT_SEGMENTER in str(caught.value) and "--segmenter" in str(caught.value)
    with pytest.raises(MetricUnavailableError, match="not a folder"):
        load_segmenter(tmp_path / "missing", allow_download=False)
