"""The paper's semantic test set (Table 3): COCO val images at 512², their LR, and the annotations rescaled to match.

What ``seesr prepare --coco VAL2017_DIR --annotations instances_val2017.json [--panoptic panoptic_val2017.json]``
writes::

    OUT/gt/<stem>.png              the COCO image resized to size×size (PIL LANCZOS, as the DAPE data); not sharpened
    OUT/lr/<stem>.png              (size/scale)²: the training degradation (USM-sharpened GT, second-order model)
    OUT/instances.json             the instance annotations rescaled to size² (boxes, polygons, RLE masks, areas)
    OUT/panoptic.json + panoptic/  the panoptic annotations and their id PNGs rescaled to size² (with --panoptic)
    OUT/prepare.json               settings and source images (used to resume safely)

Each image is degraded with its own generator seeded by ``(seed, COCO image id)``, so the LR of an image does not
depend on which other images are prepared (``--limit``), runs resume (finished images are skipped, files are
written atomically) and are deterministic on one device.

Rescaling (the image is stretched, not cropped: x by ``size/width``, y by ``size/height``): boxes and polygon
vertices are multiplied exactly; RLE masks and panoptic id PNGs are resized with nearest-neighbour; areas are
recomputed from the rescaled masks (what COCOeval's small/medium/large ranges read). Panoptic segments that no pixel
keeps after the resize are dropped (counted in the report).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from seesr.data.datasets import item_generator
from seesr.data.prepare import MANIFEST_NAME, PrepareError, _check_manifest
from seesr.data.transforms import pil_to_tensor, resize_gt, tensor_to_pil
from seesr.degradations.config import DegradationConfig
from seesr.degradations.pipeline import synthesize_pair
from seesr.utils.files import write_text_atomic
from seesr.utils.images import ImageReadError, load_image, save_image_atomic

__all__ = [
    "INSTANCES_NAME",
    "PANOPTIC_NAME",
    "CocoPrepareOptions",
    "CocoPrepareReport",
    "prepare_coco",
    "rescale_instances",
    "rescale_panoptic",
]

logger = logging.getLogger(__name__)

INSTANCES_NAME = "instances.json"
PANOPTIC_NAME = "panoptic.json"
PANOPTIC_DIR = "panoptic"


def _mask_utils() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise PrepareError("COCO annotations need pycocotools: pip install 'seesr[eval]'") from None
    return mask


# ---------------------------------------------------------------------------------------------------------------
# Annotation rescaling
# ---------------------------------------------------------------------------------------------------------------


def _scale_box(box: list[float], sx: float, sy: float) -> list[float]:
    x, y, w, h = box
    return [x * sx, y * sy, w * sx, h * sy]


def _resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST))


def _rescale_segmentation(segmentation: Any, height: int, width: int, size: int) -> tuple[Any, float]:
    """Polygons: vertices scaled; RLE: mask resized (nearest). Returns (segmentation, area at ``size``²)."""
    mask_utils = _mask_utils()
    sx, sy = size / width, size / height
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        scaled = [[value * (sx if i % 2 == 0 else sy) for i, value in enumerate(poly)] for poly in segmentation]
        rle = mask_utils.merge(mask_utils.frPyObjects(scaled, size, size)) if scaled else None
        return scaled, float(mask_utils.area(rle)) if rle is not None else 0.0
    rle = (
        mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(segmentation["counts"], list)
        else segmentation
    )
    mask = mask_utils.decode(rle)
    resized = _resize_nearest(mask.astype(np.uint8), size)
    encoded = mask_utils.encode(np.asfortranarray(resized))
    area = float(mask_utils.area(encoded))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded, area


def rescale_instances(dataset: dict[str, Any], size: int, file_names: dict[int, str] | None = None) -> dict[str, Any]:
    """COCO instance annotations (``instances_val2017.json`` as a dict) rescaled to ``size``×``size`` images.

    ``file_names`` maps image ids to the new file names (default: ``<stem>.png``); only those images (and their
    annotations) are kept when it is given.
    """
    images = {}
    for info in dataset["images"]:
        if file_names is not None and info["id"] not in file_names:
            continue
        name = file_names[info["id"]] if file_names is not None else Path(info["file_name"]).stem + ".png"
        images[info["id"]] = (info, {**info, "file_name": name, "width": size, "height": size})
    annotations = []
    for annotation in dataset.get("annotations", []):
        if annotation["image_id"] not in images:
            continue
        info = images[annotation["image_id"]][0]
        sx, sy = size / info["width"], size / info["height"]
        new = {**annotation, "bbox": _scale_box(annotation["bbox"], sx, sy)}
        if "segmentation" in annotation:
            new["segmentation"], new["area"] = _rescale_segmentation(
                annotation["segmentation"], info["height"], info["width"], size
            )
        else:
            new["area"] = annotation.get("area", 0.0) * sx * sy
        annotations.append(new)
    out = {key: value for key, value in dataset.items() if key not in ("images", "annotations")}
    out["images"] = [new for _, new in images.values()]
    out["annotations"] = annotations
    return out


def _rgb_to_id(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.int64)
    return array[..., 0] + 256 * array[..., 1] + 256 * 256 * array[..., 2]


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def _rescale_panoptic_png(source: Path, destination: Path, segments: list[dict], size: int) -> tuple[list[dict], int]:
    """Resize one panoptic id PNG (nearest) and recompute each segment's area and box; returns (segments, dropped)."""
    with Image.open(source) as image:
        ids = _rgb_to_id(np.asarray(image.convert("RGB")))
    resized = _resize_nearest(ids.astype(np.int32), size).astype(np.int64)
    save_image_atomic(Image.fromarray(_id_to_rgb(resized)), destination)
    kept, dropped = [], 0
    for segment in segments:
        where = np.nonzero(resized == segment["id"])
        if not len(where[0]):
            dropped += 1
            continue
        top, left = int(where[0].min()), int(where[1].min())
        box = [left, top, int(where[1].max()) - left + 1, int(where[0].max()) - top + 1]
        kept.append({**segment, "area": int(len(where[0])), "bbox": box})
    return kept, dropped


def rescale_panoptic(
    dataset: dict[str, Any], masks_dir: Path, out_dir: Path, size: int, file_names: dict[int, str]
) -> tuple[dict[str, Any], int]:
    """COCO panoptic annotations rescaled to ``size``²: id PNGs written to ``out_dir``; returns (json, dropped)."""
    images = {info["id"]: info for info in dataset["images"] if info["id"] in file_names}
    annotations, dropped = [], 0
    for annotation in dataset["annotations"]:
        if annotation["image_id"] not in images:
            continue
        name = file_names[annotation["image_id"]]
        source = Path(masks_dir) / annotation["file_name"]
        if not source.is_file():
            raise PrepareError(f"{source}: panoptic PNG missing (pass the folder with --panoptic-masks)")
        segments, lost = _rescale_panoptic_png(source, Path(out_dir) / name, annotation["segments_info"], size)
        dropped += lost
        annotations.append({**annotation, "file_name": name, "segments_info": segments})
    out = {key: value for key, value in dataset.items() if key not in ("images", "annotations")}
    out["images"] = [{**images[i], "file_name": file_names[i], "width": size, "height": size} for i in images]
    out["annotations"] = annotations
    return out, dropped


# ---------------------------------------------------------------------------------------------------------------
# The prepare run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CocoPrepareOptions:
    """Settings of ``seesr prepare --coco``; ``limit`` keeps the first N images by COCO id (None = all)."""

    images_dir: Path
    annotations: Path
    out: Path
    panoptic: Path | None = None
    panoptic_masks: Path | None = None  # default: the folder named like the panoptic json, beside it
    size: int = 512
    scale: int = 4
    seed: int = 0
    preset: str = "seesr"
    limit: int | None = None
    device: str = "cpu"
    progress: bool = True

    def image_settings(self) -> dict[str, Any]:
        return {
            "kind": "coco",
            "seed": self.seed,
            "size": self.size,
            "scale": self.scale,
            "preset": self.preset,
            "degradation": DegradationConfig.preset(self.preset).to_dict(),
            "gt": "PIL LANCZOS resize to size x size (unsharpened); LR from the USM-sharpened GT",
        }


@dataclass
class CocoPrepareReport:
    written: int = 0
    skipped_complete: int = 0
    total: int = 0
    dropped_segments: int = 0
    failed: list[str] = field(default_factory=list)


def _read_json(path: Path, option: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PrepareError(f"{option} {path}: unreadable ({error})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise PrepareError(f"{option} {path}: not a COCO annotation file (no 'images'/'annotations')")
    return data


def _make_pair(source: Path, info: dict, options: CocoPrepareOptions, device: torch.device) -> tuple[Image.Image, Any]:
    image = load_image(source).rgb
    if image.size != (info["width"], info["height"]):
        raise ImageReadError(
            f"{source}: {image.size[0]}x{image.size[1]} but the annotations say {info['width']}x{info['height']}"
        )
    gt = resize_gt(image, options.size)
    generator = item_generator(options.seed, int(info["id"]))
    config = DegradationConfig.preset(options.preset)
    _, lr = synthesize_pair(pil_to_tensor(gt)[None].to(device), config, generator, scale=options.scale)
    return gt, tensor_to_pil(lr[0].cpu())


def _check_options(options: CocoPrepareOptions) -> None:
    if not Path(options.images_dir).is_dir():
        raise PrepareError(f"--coco {options.images_dir}: not a folder")
    if options.size < 16 or options.size % options.scale:
        raise PrepareError(f"--size must be >= 16 and a multiple of --scale ({options.scale}), got {options.size}")
    if options.limit is not None and options.limit < 1:
        raise PrepareError("--limit must be at least 1")
    try:
        DegradationConfig.preset(options.preset)
    except ValueError as error:
        raise PrepareError(str(error)) from None


def prepare_coco(
    options: CocoPrepareOptions, on_item_written: Callable[[str], None] | None = None
) -> CocoPrepareReport:
    """Build (or resume) the 512² COCO set described by ``options``; see the module docstring."""
    from seesr.utils.device import resolve_device

    # 1. inputs and the image list (sorted by COCO id, first --limit)
    _check_options(options)
    device = resolve_device(options.device)
    instances = _read_json(options.annotations, "--annotations")
    panoptic = _read_json(options.panoptic, "--panoptic") if options.panoptic is not None else None
    infos = sorted(instances["images"], key=lambda info: info["id"])[: options.limit]
    names = {info["id"]: Path(info["file_name"]).stem + ".png" for info in infos}
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    # 2. the manifest (refuses to mix settings or image lists)
    sources = [info["file_name"] for info in infos]
    _check_manifest(out, options.image_settings(), sources)
    manifest = {"version": 1, "settings": options.image_settings(), "sources": sources}
    write_text_atomic(json.dumps(manifest, indent=1) + "\n", out / MANIFEST_NAME)
    # 3. the annotations (cheap and deterministic: rewritten on every run)
    report = CocoPrepareReport(total=len(infos))
    write_text_atomic(json.dumps(rescale_instances(instances, options.size, names)), out / INSTANCES_NAME)
    if panoptic is not None:
        masks = options.panoptic_masks or Path(options.panoptic).with_suffix("")
        rescaled, report.dropped_segments = rescale_panoptic(panoptic, masks, out / PANOPTIC_DIR, options.size, names)
        write_text_atomic(json.dumps(rescaled), out / PANOPTIC_NAME)
    # 4. the images (GT last: an image counts as done once both files exist)
    for info in tqdm(infos, desc="coco", unit="img", disable=not options.progress):
        name = names[info["id"]]
        if (out / "lr" / name).is_file() and (out / "gt" / name).is_file():
            report.skipped_complete += 1
            continue
        try:
            gt, lr = _make_pair(Path(options.images_dir) / info["file_name"], info, options, device)
        except ImageReadError as error:
            report.failed.append(str(error))
            logger.error("%s", error)
            continue
        save_image_atomic(lr, out / "lr" / name)
        save_image_atomic(gt, out / "gt" / name)
        report.written += 1
        if on_item_written is not None:
            on_item_written(name)
    return report
