"""The COCO segmenter of the semantic benchmark: Mask2Former (transformers), one model for all four Table 3 tasks.

The default is ``facebook/mask2former-swin-large-coco-panoptic`` from the Hugging Face Hub, fetched into the HF cache
on first use; offline (``HF_HUB_OFFLINE=1`` or ``--offline``) a missing checkpoint stops the run with a message naming
it and the ways to provide it. The paper used OpenSeeD, so absolute numbers differ from its Table 3; the GT and
zoomed-LR rows are always scored with the same segmenter, which is what makes rows comparable.

From one forward pass per image:

* panoptic map: transformers' ``post_process_panoptic_segmentation`` (Mask2Former's defaults: object threshold 0.8,
  overlap 0.8; stuff classes fused), giving PQ and, as its semantic map, mIoU;
* instances: ``post_process_instance_segmentation`` with no score threshold (the top-``num_queries`` (query, class)
  pairs, as Mask2Former's instance inference), thing classes only, box = the mask's bounding box, score = class
  probability × mean mask probability.

Model labels are matched to the dataset's categories by name (the COCO panoptic checkpoints use COCO's names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seesr.evaluation.registry import MetricUnavailableError
from seesr.evaluation.semantic.metrics import ImagePrediction

__all__ = ["DEFAULT_SEGMENTER", "Segmenter", "check_segmenter", "load_segmenter"]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENTER = "facebook/mask2former-swin-large-coco-panoptic"
PANOPTIC_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8


def _offline_message(repo: str, cache: str) -> str:
    return (
        f"the COCO segmenter {repo} (Mask2Former) is not in the Hugging Face cache ({cache}) and downloads are off "
        f"(offline). Run once with network access (it is fetched on first use), `huggingface-cli download {repo}`, "
        "or pass --segmenter FOLDER (a Mask2Former save_pretrained folder)."
    )


def _resolve(name_or_path: str, allow_download: bool) -> str:
    """A local folder as is; a Hub id checked against the cache first when downloads are off."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if Path(name_or_path).expanduser().exists() or name_or_path.count("/") != 1:
        raise MetricUnavailableError(f"--segmenter {name_or_path}: not a folder nor a Hugging Face Hub id")
    if not allow_download:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return snapshot_download(name_or_path, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise MetricUnavailableError(_offline_message(name_or_path, HF_HUB_CACHE)) from None
    return name_or_path


class Segmenter:
    """A Mask2Former model and its image processor; :meth:`predict` gives :class:`ImagePrediction` objects."""

    def __init__(self, model: Any, processor: Any, device: Any = "cpu", source: str = "") -> None:
        # Mask2Former's panoptic inference settings (object_mask_threshold, mask binarisation, overlap_threshold)
        self.panoptic_threshold = PANOPTIC_THRESHOLD
        self.mask_threshold = 0.5
        self.overlap_threshold = OVERLAP_THRESHOLD
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.source = source

    def _label_maps(self, categories: Sequence[Mapping[str, Any]]) -> tuple[dict[int, int], set[int]]:
        """Model label -> dataset category id (by name); and the model labels that are stuff (fused in panoptic)."""
        by_name = {c["name"]: c for c in categories}
        labels, stuff = {}, set()
        for label, name in self.model.config.id2label.items():
            category = by_name.get(name)
            if category is None:
                continue
            labels[int(label)] = int(category["id"])
            if not category.get("isthing", 1):
                stuff.add(int(label))
        if not labels:
            raise MetricUnavailableError(
                f"{self.source}: none of the model's class names match the dataset's categories (is it a COCO model?)"
            )
        return labels, stuff

    def predict(
        self,
        images: Sequence[Any],
        image_ids: Sequence[int],
        categories: Sequence[Mapping[str, Any]],
        things: set[int],
    ) -> list[ImagePrediction]:
        """Predictions for PIL ``images`` (one batch); ``things``: category ids scored as instances."""
        import torch

        labels, stuff = self._label_maps(categories)
        sizes = [(image.height, image.width) for image in images]
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
        panoptic = self.processor.post_process_panoptic_segmentation(
            outputs,
            self.panoptic_threshold,
            self.mask_threshold,
            self.overlap_threshold,
            label_ids_to_fuse=stuff,
            target_sizes=sizes,
        )
        instances = self.processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=sizes, return_binary_maps=True
        )
        return [
            _prediction(image_id, pan, inst, labels, things)
            for image_id, pan, inst in zip(image_ids, panoptic, instances, strict=True)
        ]


def _prediction(
    image_id: int, panoptic: dict, instances: dict, labels: dict[int, int], things: set[int]
) -> ImagePrediction:
    """transformers' post-processed outputs -> :class:`ImagePrediction`."""
    from pycocotools import mask as mask_utils

    ids = np.maximum(panoptic["segmentation"].cpu().numpy().astype(np.int64), 0)  # ids from 1; -1 or 0 = none
    segments = [
        {"id": s["id"], "category_id": labels[s["label_id"]]}
        for s in panoptic["segments_info"]
        if s["label_id"] in labels
    ]
    results = []
    maps = instances["segmentation"]
    for index, info in enumerate(instances["segments_info"]):
        category = labels.get(info["label_id"])
        if category is None or category not in things or maps is None:
            continue
        mask = maps[index].cpu().numpy().astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        box = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"category_id": category, "bbox": box, "score": float(info["score"]), "segmentation": rle})
    return ImagePrediction(image_id=image_id, instances=results, panoptic=ids, segments=segments)


def check_segmenter(name_or_path: str | Path | None = None, allow_download: bool = True) -> str:
    """Where the segmenter will be loaded from; raises :class:`MetricUnavailableError` when it cannot be (offline)."""
    return _resolve(str(name_or_path or DEFAULT_SEGMENTER), allow_download)


def load_segmenter(
    name_or_path: str | Path | None = None, device: Any = "cpu", allow_download: bool = True
) -> Segmenter:
    """Mask2Former from a Hub id (default :data:`DEFAULT_SEGMENTER`, cached on first use) or a local folder.

    Raises :class:`MetricUnavailableError` with a clear message when it cannot be found (offline) or loaded.
    """
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    name = str(name_or_path or DEFAULT_SEGMENTER)
    location = check_segmenter(name, allow_download)
    try:
        processor = AutoImageProcessor.from_pretrained(location)
        model = Mask2FormerForUniversalSegmentation.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise MetricUnavailableError(f"the COCO segmenter {name} could not be loaded: {error}") from None
    return Segmenter(model.to(device), processor, device=device, source=name)
