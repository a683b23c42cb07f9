"""Training datasets: pre-made pairs (``seesr prepare`` output) and HR crops degraded on the fly.

Item dictionaries (per sample; a DataLoader with the default collate stacks tensors and lists strings):

=================  ===================================  ======================================================
key                shape / type                         meaning
=================  ===================================  ======================================================
``"gt"``           float32 (3, H, W) in **[-1, 1]**     target (USM-sharpened GT); the VAE input (``2x - 1``)
``"lr"``           float32 (3, H, W) in **[0, 1]**      ControlNet condition: the LR bicubic-upscaled to H×W
``"ram_values"``   float32 (3, 384, 384), normalised    tagger input: ``lr`` bicubic to 384, clamp, ImageNet
``"tags"``         ``str``                              caption (tag-file text, e.g. ``"cat, sofa,"``) or ``""``
``"stem"``         ``str``                              file stem shared by gt/, sr_bicubic/, lr/ and tag/
``"hr"``           float32 (3, S, S) in [0, 1]          :class:`OnlineDegradationDataset` only: un-degraded crop
``"kernel1"`` …    float32 (21, 21)                     online only: ``kernel1``, ``kernel2``, ``sinc_kernel``
=================  ===================================  ======================================================

:func:`degrade_batch` turns a collated online batch (``"hr"`` + kernels) into the same keys as
:class:`PairedImageFolder` (``"gt"``, ``"lr"``, optional ``"ram_values"``) plus ``"lr_small"``, on the batch's device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from seesr.data.transforms import pil_to_tensor, ram_values_from_lr, random_crop_gt, resize_gt
from seesr.degradations.config import DegradationConfig
from seesr.degradations.kernels import DegradationKernels, sample_degradation_kernels
from seesr.degradations.pipeline import as_generator, degrade, sharpen_gt
from seesr.utils.images import IMAGE_EXTENSIONS, load_image

__all__ = [
    "MIN_FILE_BYTES",
    "MIN_PIXELS",
    "OnlineDegradationDataset",
    "PairedImageFolder",
    "degrade_batch",
    "item_generator",
    "list_images",
]

logger = logging.getLogger(__name__)

MIN_PIXELS = 384 * 384  # official RealESRGANDataset: smaller images are replaced by another one
MIN_FILE_BYTES = 100 * 1024  # official: files under 100 KiB are replaced as well


def item_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, *keys)`` through NumPy's SeedSequence (well-mixed, order-sensitive)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(key) for key in keys)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def list_images(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files of each folder (non-recursive), sorted by name within a folder, folders in the given order."""
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        files.extend(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
    return files


def _stems(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


class PairedImageFolder(Dataset):
    """Pairs written by ``seesr prepare`` (or the official scripts), matched **by file stem** (sorted).

    Each root holds ``gt/`` (H×W GT PNGs), ``sr_bicubic/`` (the LR bicubic-upscaled to H×W; what stage-2 training
    reads) and/or ``lr/`` (the small LR, bicubic-upscaled here when ``sr_bicubic/`` is absent), and ``tag/``
    (``<stem>.txt`` captions; optional with ``require_tags=False``). A GT without its LR (or tag) is an error.

    Official behaviour (REFERENCE.md §4.3) is the default: no crop, no flip, the raw tag text, images used as
    stored. Options: ``crop_size`` (same random window in GT and LR), ``hflip`` (p = 0.5), ``null_text_ratio``
    (caption replaced by ``""``; the official training used 0.5, often applied in the training loop instead),
    ``return_ram_values``. Randomness is drawn from a generator seeded by ``(seed, epoch, index)``: call
    :meth:`set_epoch` each epoch for fresh draws; items are reproducible in any worker.

    ``dataset[i]`` → ``{"gt": (3,H,W) [-1,1], "lr": (3,H,W) [0,1], "ram_values": (3,384,384), "tags": str,
    "stem": str}`` (see the module docstring).
    """

    def __init__(
        self,
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        crop_size: int | None = None,
        hflip: bool = False,
        null_text_ratio: float = 0.0,
        return_ram_values: bool = True,
        require_tags: bool = True,
        seed: int = 0,
    ) -> None:
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        self.crop_size = crop_size
        self.hflip = hflip
        self.null_text_ratio = float(null_text_ratio)
        self.return_ram_values = return_ram_values
        self.seed = seed
        self.epoch = 0
        self.items: list[dict[str, Any]] = []
        image_suffixes = tuple(IMAGE_EXTENSIONS)
        for root in map(Path, roots):
            gt = _stems(root / "gt", image_suffixes)
            if not gt:
                raise FileNotFoundError(f"{root}: no images in {root / 'gt'}")
            sr_bicubic = _stems(root / "sr_bicubic", image_suffixes)
            small = _stems(root / "lr", image_suffixes)
            tags = _stems(root / "tag", (".txt",))
            lr_source, lr_is_small = (sr_bicubic, False) if sr_bicubic else (small, True)
            missing_lr = sorted(set(gt) - set(lr_source))
            if missing_lr:
                raise FileNotFoundError(
                    f"{root}: {len(missing_lr)} GT images have no LR partner, e.g. {missing_lr[:3]}"
                )
            missing_tags = sorted(set(gt) - set(tags))
            if require_tags and missing_tags:
                raise FileNotFoundError(
                    f"{root}: {len(missing_tags)} GT images have no tag/<stem>.txt, e.g. {missing_tags[:3]} "
                    "(run `seesr prepare` with a tagger, or pass require_tags=False)"
                )
            for stem in sorted(gt):
                self.items.append(
                    {
                        "stem": stem,
                        "gt": gt[stem],
                        "lr": lr_source[stem],
                        "lr_is_small": lr_is_small,
                        "tag": tags.get(stem),
                        "root": str(root),
                    }
                )

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream (crops, flips, caption dropout) for the next pass."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        generator = item_generator(self.seed, self.epoch, index)
        gt = pil_to_tensor(load_image(item["gt"]).rgb)
        lr = pil_to_tensor(load_image(item["lr"]).rgb)
        if item["lr_is_small"] or lr.shape[-2:] != gt.shape[-2:]:
            lr = F.interpolate(lr[None], size=gt.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(0, 1)
        if self.crop_size is not None:
            size = self.crop_size
            height, width = gt.shape[-2:]
            if height < size or width < size:
                raise ValueError(f"{item['gt']}: {width}x{height} is smaller than crop_size {size}")
            top = int(torch.randint(0, height - size + 1, (), generator=generator))
            left = int(torch.randint(0, width - size + 1, (), generator=generator))
            gt = gt[:, top : top + size, left : left + size]
            lr = lr[:, top : top + size, left : left + size]
        if self.hflip and torch.rand((), generator=generator).item() < 0.5:
            gt, lr = gt.flip(-1), lr.flip(-1)
        tags = item["tag"].read_text(encoding="utf-8") if item["tag"] is not None else ""
        if self.null_text_ratio > 0 and torch.rand((), generator=generator).item() < self.null_text_ratio:
            tags = ""
        sample: dict[str, Any] = {"gt": gt * 2 - 1, "lr": lr, "tags": tags, "stem": item["stem"]}
        if self.return_ram_values:
            sample["ram_values"] = ram_values_from_lr(lr)
        return sample


class OnlineDegradationDataset(Dataset):
    """HR images for on-the-fly degradation (use :func:`degrade_batch` on each collated batch, e.g. on the GPU).

    ``mode="crop"`` (official stage-2 data, ``RealESRGANDataset``): horizontal flip p = 0.5, reflect-101 pad to
    ``size``, random ``size``×``size`` crop. ``mode="resize"`` (official DAPE data, ``SimpleDataset``): the whole
    image resized to ``size``×``size`` with LANCZOS. Images under ``min_pixels`` pixels or ``min_file_bytes`` bytes
    are replaced by a randomly chosen other image (official behaviour; set both to 0 to disable).

    Per-item randomness (crop, flip, replacement, kernels) comes from a generator seeded by
    ``(seed, epoch, index)``; call :meth:`set_epoch` each epoch.

    ``dataset[i]`` → ``{"hr": (3,size,size) [0,1], "kernel1", "kernel2", "sinc_kernel": (21,21) float32,
    "stem": str}`` (kernels only when ``return_kernels``).
    """

    def __init__(
        self,
        folders: str | os.PathLike | Sequence[str | os.PathLike],
        size: int = 512,
        mode: str = "crop",
        config: DegradationConfig = DegradationConfig.SEESR,
        return_kernels: bool = True,
        min_pixels: int = MIN_PIXELS,
        min_file_bytes: int = MIN_FILE_BYTES,
        seed: int = 0,
        max_replacements: int = 100,
    ) -> None:
        if mode not in ("crop", "resize"):
            raise ValueError(f"mode must be 'crop' or 'resize', got {mode!r}")
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        self.files = list_images(folders)
        if not self.files:
            raise FileNotFoundError(f"no images in {', '.join(map(str, folders))}")
        self.size = int(size)
        self.mode = mode
        self.config = config
        self.return_kernels = return_kernels
        self.min_pixels = int(min_pixels)
        self.min_file_bytes = int(min_file_bytes)
        self.seed = seed
        self.epoch = 0
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream for the next pass."""
        self.epoch = int(epoch)

    def _acceptable(self, path: Path, image_size: tuple[int, int]) -> bool:
        return image_size[0] * image_size[1] >= self.min_pixels and path.stat().st_size >= self.min_file_bytes

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = item_generator(self.seed, self.epoch, index)
        path = self.files[index]
        for _ in range(self.max_replacements + 1):
            loaded = load_image(path)
            if self._acceptable(path, loaded.size):
                break
            logger.debug("%s is below the size limits; drawing another image", path)
            path = self.files[int(torch.randint(0, len(self.files), (), generator=generator))]
        else:
            raise ValueError(
                f"no image meeting min_pixels={self.min_pixels} / min_file_bytes={self.min_file_bytes} found "
                f"after {self.max_replacements} draws"
            )
        if self.mode == "resize":
            hr = pil_to_tensor(resize_gt(loaded.rgb, self.size))
        else:
            hr = random_crop_gt(pil_to_tensor(loaded.rgb), self.size, generator, hflip=True)
        sample: dict[str, Any] = {"hr": hr.contiguous(), "stem": path.stem}
        if self.return_kernels:
            kernels = sample_degradation_kernels(self.config, generator, 1)
            sample.update(kernel1=kernels.blur1[0], kernel2=kernels.blur2[0], sinc_kernel=kernels.sinc[0])
        return sample


def _quantise(image: torch.Tensor) -> torch.Tensor:
    """What writing an 8-bit PNG and reading it back does: round half to even, saturate."""
    return torch.clamp(torch.round(image * 255), 0, 255) / 255


@torch.no_grad()
def degrade_batch(
    batch: dict[str, Any],
    config: DegradationConfig = DegradationConfig.SEESR,
    generator: torch.Generator | int | None = None,
    scale: int = 4,
    quantize: bool = True,
    return_ram_values: bool = False,
) -> dict[str, Any]:
    """Degrade a collated :class:`OnlineDegradationDataset` batch where it lives (move it to the GPU first).

    Args:
        batch: ``{"hr": (B,3,H,W) [0,1], optional "kernel1"/"kernel2"/"sinc_kernel": (B,21,21), ...}``; kernels
            missing from the batch are drawn from ``generator``.
        config: degradation model (GT sharpening included).
        generator: the randomness of the batch-level choices and noise (see :func:`seesr.degradations.degrade`).
        scale: LR down-scaling factor.
        quantize: round GT and the upscaled LR to 8-bit levels, as the offline PNG round trip does.
        return_ram_values: also compute ``"ram_values"`` from the upscaled LR.

    Returns:
        A new dict with the other keys of ``batch`` passed through and ``"gt"`` (B,3,H,W) in [-1,1], ``"lr"``
        (B,3,H,W) in [0,1] (bicubic-upscaled condition image), ``"lr_small"`` (B,3,H/scale,W/scale) in [0,1] and,
        if asked, ``"ram_values"`` (B,3,384,384).
    """
    generator = as_generator(generator)
    hr = batch["hr"]
    kernel_keys = ("kernel1", "kernel2", "sinc_kernel")
    kernels = None
    if all(key in batch for key in kernel_keys):
        kernels = DegradationKernels(batch["kernel1"], batch["kernel2"], batch["sinc_kernel"])
    gt = sharpen_gt(hr.float(), config)
    lr_small = degrade(gt, config, generator, scale=scale, kernels=kernels)
    lr = F.interpolate(lr_small, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    if quantize:
        gt, lr, lr_small = _quantise(gt), _quantise(lr), _quantise(lr_small)
    else:
        lr = lr.clamp(0, 1)
    out = {key: value for key, value in batch.items() if key not in ("hr", *kernel_keys)}
    out.update(gt=gt * 2 - 1, lr=lr, lr_small=lr_small)
    if return_ram_values:
        out["ram_values"] = ram_values_from_lr(lr)
    return out
