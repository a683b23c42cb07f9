"""Offline paired training set (what ``seesr prepare`` runs; REFERENCE.md §6.1, §6.4, §6.5).

Output layout (file names are a 1-based counter, 7 digits, epoch-major: item ``e·N + i + 1`` is source ``i`` in
epoch ``e``)::

    OUT/gt/0000001.png          size×size, USM-sharpened GT (the training target)
    OUT/lr/0000001.png          (size/scale)², the degraded LR
    OUT/sr_bicubic/0000001.png  size×size, LR bicubic-upscaled (the ControlNet condition training reads)
    OUT/tag/0000001.txt         "<tags of the GT, joined by ', '>," from the plain RAM teacher
    OUT/prepare.json            settings + source of every item (used to resume safely)

Every item has its own generator seeded by ``(seed, item number)``: crop, flip, kernels and every degradation
choice of an item depend on nothing else, so a run can be interrupted and resumed (complete items are skipped,
files are written atomically) and gives byte-identical files to an uninterrupted run on the same device.
Differences from the official scripts (documented choices): each item is degraded alone (the official batch of 10
shared its resize/noise-type choices), too-small sources are skipped with a warning instead of being replaced by a
random other image, and no image is dropped by ``drop_last``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seesr.data.datasets import MIN_FILE_BYTES, MIN_PIXELS, item_generator, list_images
from seesr.data.transforms import pil_to_tensor, random_crop_gt, resize_gt, tensor_to_pil
from seesr.degradations.config import DegradationConfig
from seesr.degradations.pipeline import synthesize_pair
from seesr.utils.files import write_text_atomic
from seesr.utils.images import ImageReadError, load_image, save_image_atomic

__all__ = [
    "MANIFEST_NAME",
    "PrepareError",
    "PrepareOptions",
    "PrepareReport",
    "PrepareWorker",
    "item_name",
    "prepare_dataset",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "prepare.json"
MANIFEST_VERSION = 1
MODES = ("crop512", "resize512")
SUBDIRS = ("gt", "lr", "sr_bicubic")


class PrepareError(RuntimeError):
    """A problem with the user's inputs or output folder (message meant for the user)."""


@dataclass
class PrepareOptions:
    """Settings of a ``seesr prepare`` run.

    ``mode``: ``"crop512"`` (stage-2 data: flip, reflect pad, random ``size`` crop) or ``"resize512"`` (DAPE data:
    the whole image LANCZOS-resized to ``size``). ``size`` is the GT side (512 officially). ``epochs`` passes over
    the sources, each with fresh random crops/degradations. Sources under ``min_pixels`` pixels or
    ``min_file_bytes`` bytes are skipped. ``tags``: write ``tag/`` with the plain RAM teacher read from ``tagger``
    (see :func:`resolve_teacher_source`; None = the RAM file in the Hugging Face cache).
    """

    gt_dirs: Sequence[Path]
    out: Path
    epochs: int = 1
    mode: str = "crop512"
    seed: int = 0
    size: int = 512
    scale: int = 4
    preset: str = "seesr"
    min_pixels: int = MIN_PIXELS
    min_file_bytes: int = MIN_FILE_BYTES
    device: str = "cpu"
    tags: bool = True
    tagger: Path | None = None
    tag_batch_size: int = 8
    progress: bool = True

    def image_settings(self) -> dict[str, Any]:
        """The settings that determine the image files (must match to resume)."""
        return {
            "mode": self.mode,
            "seed": self.seed,
            "size": self.size,
            "scale": self.scale,
            "preset": self.preset,
            "degradation": DegradationConfig.preset(self.preset).to_dict(),
        }


@dataclass
class PrepareReport:
    """What a run did: counts, and the sources that were skipped (with the reason)."""

    written: int = 0
    skipped_complete: int = 0
    tagged: int = 0
    total: int = 0
    skipped_sources: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def item_name(index: int) -> str:
    """File stem of item ``index`` (1-based): ``0000001``."""
    return f"{index:07d}"


def _image_size(path: Path) -> tuple[int, int]:
    """Pixel size from the header only (no full decode); raises :class:`ImageReadError` for unreadable files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from None


def _usable_sources(options: PrepareOptions, report: PrepareReport) -> list[Path]:
    try:
        files = list_images(options.gt_dirs)
    except FileNotFoundError as error:
        raise PrepareError(str(error)) from None
    usable: list[Path] = []
    for path in files:
        try:
            width, height = _image_size(path)
        except ImageReadError as error:
            report.skipped_sources.append(str(error))
            continue
        if width * height < options.min_pixels:
            report.skipped_sources.append(f"{path}: {width}x{height} has fewer than {options.min_pixels} pixels")
        elif path.stat().st_size < options.min_file_bytes:
            report.skipped_sources.append(f"{path}: file smaller than {options.min_file_bytes} bytes")
        else:
            usable.append(path)
    if not usable:
        raise PrepareError("no usable GT images (see the skipped files above, or lower --min-pixels/--min-file-kib)")
    return usable


def _check_manifest(out: Path, settings: dict[str, Any], sources: list[str]) -> None:
    path = out / MANIFEST_NAME
    if not path.exists():
        if any((out / sub).is_dir() and any((out / sub).iterdir()) for sub in SUBDIRS):
            raise PrepareError(f"{out} already holds images but no {MANIFEST_NAME}; use an empty or new --out folder")
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PrepareError(f"{path}: unreadable ({error}); remove it or use a new --out folder") from None
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    if previous.get("settings") != settings:
        old = previous.get("settings", {})
        changed = sorted(key for key in set(old) | set(settings) if old.get(key) != settings.get(key))
        raise PrepareError(
            f"{out} was prepared with different settings ({', '.join(changed)}); "
            "rerun with the same options to resume, or use a new --out folder"
        )
    if previous.get("sources") != sources:
        raise PrepareError(
            f"the GT images differ from those {out} was prepared from; resume with the same --gt folders and files, "
            "or use a new --out folder"
        )


def _write_manifest(out: Path, options: PrepareOptions, sources: list[str]) -> None:
    manifest = {
        "version": MANIFEST_VERSION,
        "settings": options.image_settings(),
        "epochs": options.epochs,
        "sources": sources,
        "items": {
            item_name(epoch * len(sources) + position + 1): source
            for epoch in range(options.epochs)
            for position, source in enumerate(sources)
        },
    }
    write_text_atomic(json.dumps(manifest, indent=1) + "\n", out / MANIFEST_NAME)


def _make_item(
    source: Path, index: int, options: PrepareOptions, config: DegradationConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """GT preparation + degradation of one item (its own generator): gt, lr, sr_bicubic, each (3, h, w) on the CPU."""
    generator = item_generator(options.seed, index)
    image = load_image(source).rgb
    if options.mode == "resize512":
        hr = pil_to_tensor(resize_gt(image, options.size))
    else:
        hr = random_crop_gt(pil_to_tensor(image), options.size, generator, hflip=True)
    gt, lr = synthesize_pair(hr[None].to(device), config, generator, scale=options.scale)
    sr_bicubic = F.interpolate(lr, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    return {"gt": gt[0].cpu(), "lr": lr[0].cpu(), "sr_bicubic": sr_bicubic[0].cpu()}


def _item_complete(out: Path, name: str) -> bool:
    return all((out / sub / f"{name}.png").is_file() for sub in SUBDIRS)


def _tag_missing(out: Path, options: PrepareOptions, report: PrepareReport, load_tagger: Callable[[], Any]) -> None:
    """Write ``tag/<stem>.txt`` for every GT that lacks one (tags are a function of the saved GT PNG)."""
    pending = [path for path in sorted((out / "gt").glob("*.png")) if not (out / "tag" / f"{path.stem}.txt").is_file()]
    if not pending:
        return
    tagger = load_tagger()
    batch_size = max(1, options.tag_batch_size)
    with tqdm(total=len(pending), desc="tags", unit="img", disable=not options.progress) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            images = [load_image(path).rgb for path in chunk]
            results = tagger.tag(images, mode="pipeline")
            for path, result in zip(chunk, results, strict=True):
                write_text_atomic(f"{result.prompt},", out / "tag" / f"{path.stem}.txt")
                report.tagged += 1
            bar.update(len(chunk))


def resolve_teacher_source(path: Path | None) -> Any:
    """Where the plain RAM teacher comes from, as a :class:`seesr.weights.tagger.TaggerSource` with no DAPE LoRA.

    ``path``: ``ram_swin_large_14m.pth`` itself (a ``configs/`` folder beside it marks a non-standard size, e.g. the
    tiny test RAM), any folder :func:`seesr.weights.tagger.resolve_tagger_source` understands (release bundle,
    folder holding the checkpoint, converted tagger folder), or None for the RAM file in the Hugging Face cache.
    Raises :class:`PrepareError` when nothing is found.
    """
    from seesr.weights.tagger import TaggerNotFoundError, TaggerSource, default_tagger_source, resolve_tagger_source

    try:
        if path is None:
            source = default_tagger_source()
        elif Path(path).is_file():
            configs = Path(path).parent / "configs"
            source = TaggerSource(ram_path=Path(path), config_dir=configs if configs.is_dir() else None)
        else:
            source = resolve_tagger_source(path)
    except TaggerNotFoundError as error:
        raise PrepareError(f"no RAM checkpoint for the tags: {error} (or pass --no-tags)") from None
    if source.pretrained_dir is not None:
        logger.warning(
            "%s is a converted tagger folder: it is used as is; the official tags come from plain RAM (no DAPE "
            "LoRA), so prefer ram_swin_large_14m.pth",
            source.pretrained_dir,
        )
        return source
    return TaggerSource(ram_path=source.ram_path, dape_path=None, config_dir=source.config_dir)


def load_teacher_tagger(source: Any, device: torch.device) -> Any:
    """The teacher tagger (float32, eval) from a source given by :func:`resolve_teacher_source`."""
    from seesr.weights.tagger import load_tagger_source

    return load_tagger_source(source, dtype=torch.float32, device=device, plain_ram=True)


@dataclass
class _Plan:
    """What :func:`prepare_dataset` settles before writing any item (every check done, manifest written)."""

    out: Path
    sources: list[Path]
    config: DegradationConfig
    device: torch.device
    teacher: Any
    report: PrepareReport

    def items(self, options: PrepareOptions) -> list[tuple[int, Path]]:
        """``(item number, source)`` of every item, epoch-major (see the module docstring)."""
        count = len(self.sources)
        return [
            (epoch * count + position + 1, source)
            for epoch in range(options.epochs)
            for position, source in enumerate(self.sources)
        ]


def _plan(options: PrepareOptions) -> _Plan:
    """Check the options, the sources and the output folder (resume only with the same settings); write the
    manifest. Everything that can refuse the run happens here, before the long part."""
    from seesr.utils.device import resolve_device

    if options.mode not in MODES:
        raise PrepareError(f"unknown mode {options.mode!r}; choose one of {', '.join(MODES)}")
    if options.epochs < 1:
        raise PrepareError("--epochs must be at least 1")
    if options.size < 16 or options.size % options.scale:
        raise PrepareError(f"--size must be >= 16 and a multiple of --scale ({options.scale}), got {options.size}")
    try:
        config = DegradationConfig.preset(options.preset)
        device = resolve_device(options.device)
    except ValueError as error:
        raise PrepareError(str(error)) from None
    teacher = resolve_teacher_source(options.tagger) if options.tags else None
    out = Path(options.out)
    report = PrepareReport()
    sources = _usable_sources(options, report)
    for message in report.skipped_sources:
        logger.warning("skipped %s", message)
    names = [str(path.resolve()) for path in sources]
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, options.image_settings(), names)
    _write_manifest(out, options, names)
    report.total = options.epochs * len(sources)
    return _Plan(out, sources, config, device, teacher, report)


def _write_item(out: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    # gt last: an item counts as complete once all three files exist.
    for sub in ("lr", "sr_bicubic", "gt"):
        save_image_atomic(tensor_to_pil(tensors[sub]), out / sub / f"{name}.png")


def prepare_dataset(
    options: PrepareOptions,
    on_item_written: Callable[[str], None] | None = None,
    *,
    runner: Callable[..., list[dict[str, str]]] | None = None,
) -> PrepareReport:
    """Build (or resume) the paired training set described by ``options``; see the module docstring.

    ``on_item_written(name)`` is called after each new item (used by tests to simulate an interruption).
    ``runner``: run the items elsewhere instead of in this process: ``runner(items, worker_class, worker_args,
    description)`` returning one result per item (``seesr prepare --ray``: :class:`PrepareWorker` on Ray actors).
    """
    plan = _plan(options)
    if runner is not None:
        return _prepare_with_runner(options, plan, runner)
    report = plan.report
    with tqdm(total=report.total, desc="pairs", unit="img", disable=not options.progress) as bar:
        for index, source in plan.items(options):
            name = item_name(index)
            bar.update(1)
            if _item_complete(plan.out, name):
                report.skipped_complete += 1
                continue
            try:
                tensors = _make_item(source, index, options, plan.config, plan.device)
            except ImageReadError as error:
                report.failed.append(f"{name}: {error}")
                logger.error("item %s failed: %s", name, error)
                continue
            _write_item(plan.out, name, tensors)
            report.written += 1
            if on_item_written is not None:
                on_item_written(name)
    if options.tags:
        _tag_missing(plan.out, options, report, lambda: load_teacher_tagger(plan.teacher, plan.device))
    return report


class PrepareWorker:
    """One worker of a distributed ``seesr prepare`` (a Ray actor): makes, saves and tags one item per call.

    The item is the one a local run makes (its generator depends on the seed and item number alone); its tags come
    from the same teacher, run on one image at a time instead of batches of ``--tag-batch-size``.
    """

    def __init__(self, options: PrepareOptions) -> None:
        from seesr.utils.device import resolve_device

        self.options = options
        self.out = Path(options.out)
        self.config = DegradationConfig.preset(options.preset)
        self.device = resolve_device(options.device)
        self.tagger = None
        if options.tags:
            self.tagger = load_teacher_tagger(resolve_teacher_source(options.tagger), self.device)

    def process(self, item: dict[str, str]) -> dict[str, str]:
        name, index, source = item["key"], int(item["index"]), Path(item["source"])
        status = "skipped"
        if not _item_complete(self.out, name):
            try:
                tensors = _make_item(source, index, self.options, self.config, self.device)
            except ImageReadError as error:
                return {"status": "failed", "message": f"{name}: {error}", "tagged": "0"}
            _write_item(self.out, name, tensors)
            status = "ok"
        tag_file = self.out / "tag" / f"{name}.txt"
        if self.tagger is None or tag_file.is_file():
            return {"status": status, "message": "", "tagged": "0"}
        result = self.tagger.tag([load_image(self.out / "gt" / f"{name}.png").rgb], mode="pipeline")[0]
        write_text_atomic(f"{result.prompt},", tag_file)
        return {"status": status, "message": "", "tagged": "1"}


def _prepare_with_runner(options: PrepareOptions, plan: _Plan, runner: Callable[..., Any]) -> PrepareReport:
    items = [
        {"key": item_name(index), "index": str(index), "source": str(source.resolve())}
        for index, source in plan.items(options)
    ]
    report = plan.report
    # absolute paths: an actor may run in another folder, or on another machine that mounts the same share
    options = replace(
        options, out=options.out.resolve(), tagger=None if options.tagger is None else options.tagger.resolve()
    )
    for result in runner(items, PrepareWorker, (options,), "pairs"):
        if result["status"] == "failed":
            report.failed.append(result["message"])
            continue
        report.written += result["status"] == "ok"
        report.skipped_complete += result["status"] == "skipped"
        report.tagged += result.get("tagged") == "1"
    return report
