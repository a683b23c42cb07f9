"""``seesr benchmark --semantic``: the paper's Table 3 (semantic fidelity) on a ``seesr prepare --coco`` folder.

Rows: the GT images, the zoomed LR (bicubic to the GT size) and each method's outputs, all segmented by the same
COCO model (:mod:`.segmenter`) and scored with :mod:`.metrics` (PQ, box AP, mask AP, mIoU), plus RAM tag agreement
with the GT (:mod:`.tags`). The paper used OpenSeeD, so absolute numbers differ from its Table 3; the GT and
zoomed-LR rows show the range this segmenter spans, which is what a method's row is read against.

Files in ``OUT/semantic/``: ``table3.csv``, ``table3.json`` (rows, the paper's rows, settings, problems),
``table3.md``, ``table3.png`` (ours beside the paper's); ``rows/<row>.json`` caches each row's scores together
with what they were computed from (segmenter, images and their sizes and times), so a rerun only scores rows whose
inputs changed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seesr.evaluation.pairing import list_images, pair_files
from seesr.evaluation.semantic.metrics import ImagePrediction, score_predictions
from seesr.utils.files import atomic_path, write_text_atomic
from seesr.utils.images import ImageReadError, load_image, save_image_atomic

__all__ = [
    "COLUMNS",
    "NOTE",
    "PAPER_TABLE3",
    "SemanticDataset",
    "open_dataset",
    "cached_row",
    "row_key",
    "run_semantic_benchmark",
    "score_row",
    "slug",
    "write_semantic_report",
    "zoom_lr",
]

logger = logging.getLogger(__name__)

#: SeeSR, CVPR 2024, Table 3 (OpenSeeD on COCO val at 512²), in percent.
PAPER_TABLE3: dict[str, dict[str, float]] = {
    "GT": {"pq": 52.5, "ap_box": 49.1, "ap_mask": 43.8, "miou": 62.0},
    "Zoomed LR": {"pq": 9.0, "ap_box": 5.0, "ap_mask": 4.0, "miou": 12.0},
    "SeeSR": {"pq": 30.0, "ap_box": 21.1, "ap_mask": 18.5, "miou": 41.3},
}
COLUMNS = (("pq", "PQ"), ("ap_box", "AP box"), ("ap_mask", "AP mask"), ("miou", "mIoU"), ("tag_f1", "Tag F1"))
NOTE = (
    "The paper scored Table 3 with OpenSeeD; this benchmark uses Mask2Former, so absolute numbers differ from the "
    "paper's. Compare a method's row with the GT and zoomed-LR rows, which are scored by the same segmenter."
)


@dataclass
class SemanticDataset:
    """A ``seesr prepare --coco`` folder: image names (first ``limit``), their COCO ids, categories."""

    root: Path
    gt_files: list[Path]
    lr_files: list[Path]
    image_ids: dict[str, int]  # file stem -> COCO image id
    categories: list[dict[str, Any]]
    things: set[int]
    has_panoptic: bool


def open_dataset(root: str | Path, limit: int | None = None) -> SemanticDataset:
    """Read a prepared COCO folder; raises ValueError naming what is missing."""
    from seesr.data.coco import INSTANCES_NAME, PANOPTIC_NAME

    root = Path(root)
    instances_path = root / INSTANCES_NAME
    if not instances_path.is_file() or not (root / "gt").is_dir() or not (root / "lr").is_dir():
        raise ValueError(
            f"--dataset {root}: not a prepared COCO set (needs gt/, lr/ and {INSTANCES_NAME}); make one with "
            "`seesr prepare --coco VAL2017_DIR --annotations instances_val2017.json [--panoptic ...] --out DIR`"
        )
    instances = json.loads(instances_path.read_text("utf-8"))
    ids = {Path(info["file_name"]).stem: int(info["id"]) for info in instances["images"]}
    gt_files = [path for path in list_images(root / "gt") if path.stem in ids][:limit]
    if not gt_files:
        raise ValueError(f"--dataset {root}: no GT image of {INSTANCES_NAME} in gt/")
    lr_by_stem = {path.stem: path for path in list_images(root / "lr")}
    missing = [path.name for path in gt_files if path.stem not in lr_by_stem]
    if missing:
        raise ValueError(f"--dataset {root}: lr/ lacks {', '.join(missing[:3])} (rerun seesr prepare --coco)")
    has_panoptic = (root / PANOPTIC_NAME).is_file()
    source = json.loads((root / PANOPTIC_NAME).read_text("utf-8")) if has_panoptic else instances
    categories = source["categories"]
    things = {int(c["id"]) for c in instances["categories"]}
    return SemanticDataset(
        root=root,
        gt_files=gt_files,
        lr_files=[lr_by_stem[path.stem] for path in gt_files],
        image_ids={path.stem: ids[path.stem] for path in gt_files},
        categories=categories,
        things=things,
        has_panoptic=has_panoptic,
    )


def zoom_lr(dataset: SemanticDataset, out_dir: Path) -> Path:
    """The zoomed-LR row's images: each LR bicubic-upscaled to its GT size (as ``seesr prepare``'s sr_bicubic)."""
    import torch.nn.functional as F

    from seesr.data.transforms import pil_to_tensor, tensor_to_pil

    for lr_path, gt_path in zip(dataset.lr_files, dataset.gt_files, strict=True):
        target = out_dir / f"{gt_path.stem}.png"
        if target.is_file():
            continue
        lr = pil_to_tensor(load_image(lr_path).rgb)[None]
        size = load_image(gt_path).rgb.size[::-1]
        zoomed = F.interpolate(lr, size=size, mode="bicubic", align_corners=False)[0]
        save_image_atomic(tensor_to_pil(zoomed), target)
    return out_dir


@dataclass
class RowInputs:
    """The images of one row, paired with the GT, and what went wrong while reading them."""

    pairs: list[tuple[Path, Path]]
    problems: list[str] = field(default_factory=list)


def _pair_row(folder: Path, dataset: SemanticDataset) -> RowInputs:
    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: not a folder")
    pairing = pair_files(list_images(folder), dataset.gt_files)
    inputs = RowInputs(pairs=sorted(pairing.pairs, key=lambda pair: pair[1].name), problems=list(pairing.problems))
    inputs.problems += [f"{gt.name}: no image in {folder} (scored as nothing detected)" for gt in pairing.unpaired_gt]
    return inputs


def _fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in paths]


def _load_pair(pred: Path, gt: Path, problems: list[str]) -> tuple[Any, Any] | None:
    from PIL import Image

    try:
        image, truth = load_image(pred).rgb, load_image(gt).rgb
    except ImageReadError as error:
        problems.append(f"{gt.name}: {error} (scored as nothing detected)")
        return None
    if image.size != truth.size:
        problems.append(f"{pred.name}: {image.size[0]}x{image.size[1]}, GT {truth.size[0]}x{truth.size[1]}; resized")
        image = image.resize(truth.size, Image.BICUBIC)
    return image, truth


def score_row(
    folder: Path,
    dataset: SemanticDataset,
    segmenter: Any,
    tag_scorer: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None,
    batch_size: int = 4,
    progress: bool = True,
    label: str = "",
) -> dict[str, Any]:
    """Segment the images of ``folder`` (paired with the GT by name) and score them; ``{"scores", "problems"}``."""
    from tqdm.auto import tqdm

    inputs = _pair_row(folder, dataset)
    predictions = {i: ImagePrediction(image_id=i) for i in dataset.image_ids.values()}  # missing = nothing detected
    tags: list[dict[str, float]] = []
    with tqdm(total=len(inputs.pairs), desc=label or "segment", unit="img", disable=not progress) as bar:
        for start in range(0, len(inputs.pairs), batch_size):
            chunk = [
                (pred, gt, _load_pair(pred, gt, inputs.problems))
                for pred, gt in inputs.pairs[start : start + batch_size]
            ]
            chunk = [(gt, loaded) for _, gt, loaded in chunk if loaded is not None]
            if chunk:
                ids = [dataset.image_ids[gt.stem] for gt, _ in chunk]
                for prediction in segmenter.predict(
                    [image for _, (image, _) in chunk], ids, dataset.categories, dataset.things
                ):
                    predictions[prediction.image_id] = prediction
                if tag_scorer is not None:
                    tags += [tag_scorer(np.asarray(image), np.asarray(truth)) for _, (image, truth) in chunk]
            bar.update(min(batch_size, len(inputs.pairs) - start))
    scores = score_predictions(dataset.root, list(predictions.values()))
    for key in ("tag_f1", "tag_precision", "tag_recall"):
        if tags:
            scores[key] = float(np.mean([t[key] for t in tags]))
    return {"scores": scores, "problems": inputs.problems, "images": len(inputs.pairs)}


def cached_row(cache: Path, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A row's result from ``cache`` when it was computed from the same ``key``, else ``compute()`` (then stored)."""
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text("utf-8"))
            if stored.get("key") == json.loads(json.dumps(key)):
                return stored["result"]
        except (OSError, json.JSONDecodeError):
            pass
    result = compute()
    write_text_atomic(json.dumps({"key": key, "result": result}, indent=1) + "\n", cache)
    return result


def row_key(folder: Path, dataset: SemanticDataset, settings: dict[str, Any]) -> dict[str, Any]:
    """What a row's scores depend on (cache key of :func:`cached_row`)."""
    return {"settings": settings, "images": _fingerprint(list_images(folder)), "gt": _fingerprint(dataset.gt_files)}


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "row"


def _format(key: str, value: Any) -> str:
    """Percentages with one decimal (as the paper); tag agreement (0-1) with three."""
    if value is None:
        return "-"
    return f"{value:.3f}" if key.startswith("tag_") else f"{value:.1f}"


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        "# seesr benchmark --semantic (Table 3)",
        "",
        NOTE,
        "",
        "| row | " + " | ".join(t for _, t in COLUMNS) + " |",
    ]
    lines.append("|" + "---|" * (len(COLUMNS) + 1))
    for row in rows:
        cells = [_format(key, row["scores"].get(key)) for key, _ in COLUMNS]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    for label, values in PAPER_TABLE3.items():
        cells = [_format(key, values.get(key)) for key, _ in COLUMNS]
        lines.append(f"| paper (OpenSeeD): {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Segmenter: {settings.get('segmenter')}; images: {settings.get('images')}.", ""]
    problems = [f"- {row['label']}: {problem}" for row in rows for problem in row.get("problems", [])]
    if problems:
        lines += ["## Problems", "", *problems, ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path.name)
        return
    keys = [key for key, _ in COLUMNS[:4]]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, (title, table) in zip(
        axes,
        (("this run (Mask2Former)", {r["label"]: r["scores"] for r in rows}), ("paper (OpenSeeD)", PAPER_TABLE3)),
        strict=True,
    ):
        width = 0.8 / max(len(table), 1)
        for position, (label, scores) in enumerate(table.items()):
            values = [scores.get(key) or 0.0 for key in keys]
            axis.bar(np.arange(len(keys)) + position * width, values, width, label=label)
        axis.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [t for _, t in COLUMNS[:4]])
        axis.set_title(title)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("%")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(buffer.getvalue())


def write_semantic_report(rows: list[dict[str, Any]], out: Path, settings: dict[str, Any]) -> dict[str, Path]:
    """table3.csv / .json / .md / .png in ``out``; returns their paths."""
    paths = {ext: Path(out) / f"table3.{ext}" for ext in ("csv", "json", "md", "png")}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [key for key, _ in COLUMNS] + ["tag_precision", "tag_recall", "sq", "rq"]
    writer.writerow(["row", "folder", "images", *keys])
    for row in rows:
        values = [row["scores"].get(key) for key in keys]
        writer.writerow([row["label"], row["folder"], row["images"], *("" if v is None else repr(v) for v in values)])
    write_text_atomic(buffer.getvalue(), paths["csv"])
    document = {"note": NOTE, "rows": rows, "paper": PAPER_TABLE3, "settings": settings}
    write_text_atomic(json.dumps(document, indent=2) + "\n", paths["json"])
    write_text_atomic(_markdown(rows, settings), paths["md"])
    _plot(rows, paths["png"])
    return paths


def run_semantic_benchmark(
    dataset: SemanticDataset,
    rows: Sequence[tuple[str, Path]],
    out: Path,
    get_segmenter: Callable[[], Any],
    get_tags: Callable[[], Any] | None,
    settings: dict[str, Any],
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Score every ``(label, folder)`` row (cached in ``out/rows/``) and write the report into ``out``.

    ``get_segmenter`` / ``get_tags`` build the models on first need (not at all when every row is cached);
    ``get_tags`` None leaves the tag columns empty.
    """
    results = []
    for label, folder in rows:

        def compute(folder: Path = Path(folder), label: str = label) -> dict[str, Any]:
            judge = get_tags() if get_tags is not None else None
            scorer = judge.scores if judge is not None else None
            return score_row(folder, dataset, get_segmenter(), scorer, batch_size, progress, label)

        key = row_key(Path(folder), dataset, settings)
        result = cached_row(Path(out) / "rows" / f"{slug(label)}.json", key, compute)
        results.append({"label": label, "folder": str(folder), **result})
    return results, write_semantic_report(results, Path(out), settings)
