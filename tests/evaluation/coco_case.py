"""A hand-written COCO-format case (3 images, instances + panoptic) shared by the COCO data and semantic tests.

Shapes are rectangles (original pixel coordinates, ``[x, y, w, h]``), so every rescaled box, mask and area can be
worked out by hand. Categories use COCO's real ids and names (person 1, dog 18; stuff "sky-other-merged" 187).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person", "isthing": 1},
    {"id": 18, "name": "dog", "supercategory": "animal", "isthing": 1},
    {"id": 187, "name": "sky-other-merged", "supercategory": "sky", "isthing": 0},
]
# image id -> (width, height, [(annotation id, category, box, iscrowd)])
IMAGES = {
    1: (640, 480, [(11, 1, [100, 80, 200, 240], 0), (12, 18, [400, 240, 160, 160], 0)]),
    2: (320, 320, [(21, 1, [40, 40, 120, 200], 0), (22, 1, [200, 200, 80, 80], 1)]),
    3: (400, 600, [(31, 18, [50, 300, 200, 200], 0)]),
}
SKY_SEGMENT = 1000  # panoptic id of the background (sky) segment of every image


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def _rect_polygon(box: list[int]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _rect_mask(box: list[int], width: int, height: int) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def instances() -> dict:
    """The instance annotation file (polygons; the crowd region as RLE)."""
    images, annotations = [], []
    for image_id, (width, height, shapes) in IMAGES.items():
        images.append({"id": image_id, "file_name": file_name(image_id), "width": width, "height": height})
        for annotation_id, category, box, crowd in shapes:
            segmentation = _rle(_rect_mask(box, width, height)) if crowd else _rect_polygon(box)
            annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": crowd,
                    "segmentation": segmentation,
                }
            )
    things = [{k: v for k, v in c.items() if k != "isthing"} for c in CATEGORIES if c["isthing"]]
    return {"images": images, "annotations": annotations, "categories": things}


def panoptic_id_map(image_id: int) -> np.ndarray:
    """(H, W) segment ids: sky everywhere, then each shape (annotation id) painted over it."""
    width, height, shapes = IMAGES[image_id]
    ids = np.full((height, width), SKY_SEGMENT, dtype=np.int64)
    for annotation_id, _, box, _ in shapes:
        ids[_rect_mask(box, width, height).astype(bool)] = annotation_id
    return ids


def panoptic(masks_dir: Path) -> dict:
    """The panoptic annotation file; writes its id PNGs (R + 256 G + 256² B) into ``masks_dir``."""
    masks_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (width, height, shapes) in IMAGES.items():
        ids = panoptic_id_map(image_id)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        png = f"{image_id:012d}.png"
        Image.fromarray(rgb).save(masks_dir / png)
        segments = [{"id": SKY_SEGMENT, "category_id": 187, "iscrowd": 0}]
        segments += [{"id": a, "category_id": c, "iscrowd": crowd} for a, c, _, crowd in shapes]
        for segment in segments:
            where = np.nonzero(ids == segment["id"])
            segment["area"] = int(len(where[0]))
            top, left = int(where[0].min()), int(where[1].min())
            segment["bbox"] = [left, top, int(where[1].max()) - left + 1, int(where[0].max()) - top + 1]
        images.append({"id": image_id, "file_name": file_name(image_id), "width": width, "height": height})
        annotations.append({"image_id": image_id, "file_name": png, "segments_info": segments})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_case(root: Path) -> dict[str, Path]:
    """Photos (scikit-image samples resized to each image's size) + both annotation files under ``root``."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    images_dir = root / "val2017"
    images_dir.mkdir(parents=True, exist_ok=True)
    for (image_id, (width, height, _)), photo in zip(IMAGES.items(), photos, strict=True):
        Image.fromarray(photo).resize((width, height), Image.BICUBIC).save(
            images_dir / file_name(image_id), quality=95
        )
    paths = {"images": images_dir, "instances": root / "instances_val2017.json"}
    paths["instances"].write_text(json.dumps(instances()), encoding="utf-8")
    paths["panoptic"] = root / "panoptic_val2017.json"
    paths["panoptic"].write_text(json.dumps(panoptic(root / "panoptic_val2017")), encoding="utf-8")
    return paths


def save_tiny_mask2former(folder: Path) -> Path:
    """A random 0.35M-parameter Mask2Former (Swin backbone) whose labels carry COCO names, saved with its processor."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    names = [c["name"] for c in CATEGORIES]
    config = Mask2FormerConfig(
        backbone_config=backbone,
        hidden_dim=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        mask_feature_size=32,
        feature_size=32,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        use_pretrained_backbone=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Mask2FormerForUniversalSegmentation(config)
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}, size_divisor=32).save_pretrained(folder)
    return folder
