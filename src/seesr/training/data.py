"""Training inputs: datasets from the config, the DataLoader, and the per-batch tensors each stage consumes.

Datasets come from :mod:`seesr.data` (``seesr prepare`` folders paired by stem, or HR images degraded on the fly
with :func:`seesr.data.datasets.degrade_batch`); this module only selects and adapts them:

* stage 2 (:func:`stage2_inputs`): GT in [-1, 1] (VAE input), the LR bicubic-upscaled to the GT size in [0, 1]
  (ControlNet condition, and the source of the tagger input), and the caption (tag file text);
* stage 1 (:func:`dape_inputs`): the HR and LR tagger inputs, 384x384, ImageNet-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from seesr.training.common import TrainingError, step_seed
from seesr.training.config import DataConfig

__all__ = [
    "DAPEInputs",
    "Stage2Inputs",
    "build_dataset",
    "build_loader",
    "dape_inputs",
    "dape_ram_input",
    "fill_missing_tags",
    "first_items",
    "stage2_inputs",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAM_INPUT_SIZE = 384


@dataclass
class Stage2Inputs:
    """One stage-2 batch on the training device.

    Attributes:
        gt: (B, 3, H, W) float32 in [-1, 1], the VAE input.
        control: (B, 3, H, W) float32 in [0, 1], the LR upscaled to H x W (ControlNet condition).
        tags: the caption of each image (tag-file text such as ``"cat, sofa,"``), or None when the data carry no
            tags (on-the-fly degradation); see :func:`fill_missing_tags`.
    """

    gt: torch.Tensor
    control: torch.Tensor
    tags: list[str] | None


@dataclass
class DAPEInputs:
    """One stage-1 batch on the training device: ``hr_ram`` / ``lr_ram`` (B, 3, 384, 384), ImageNet-normalised."""

    hr_ram: torch.Tensor
    lr_ram: torch.Tensor


def build_dataset(data: DataConfig, with_tags: bool, seed: int, online_mode: str = "crop") -> Dataset:
    """The dataset ``data`` describes.

    Args:
        data: the data section of the config.
        with_tags: require a ``tag/<stem>.txt`` per GT (stage 2 with prepared data).
        seed: seeds the per-item randomness (crops, flips, degradation kernels) with (seed, epoch, index).
        online_mode: on-the-fly HR preparation: "crop" (stage 2, official random 512 crop + flip) or "resize"
            (stage 1, the whole image resized, as the official DAPE data).
    """
    from seesr.data.datasets import OnlineDegradationDataset, PairedImageFolder

    try:
        if data.mode == "prepared":
            return PairedImageFolder(
                data.root_folders,
                crop_size=data.resolution,
                hflip=False,
                null_text_ratio=0.0,  # the training loop drops captions with its own per-step generator
                return_ram_values=False,  # computed on the training device
                require_tags=with_tags,
                seed=seed,
            )
        from seesr.degradations.config import DegradationConfig

        return OnlineDegradationDataset(
            data.root_folders,
            size=data.resolution,
            mode=online_mode,
            config=DegradationConfig.preset(data.degradation),
            return_kernels=True,
            min_pixels=data.min_pixels,
            min_file_bytes=data.min_file_bytes,
            seed=seed,
        )
    except (FileNotFoundError, ValueError) as error:
        raise TrainingError(f"training data: {error}") from None


def build_loader(dataset: Dataset, sampler: Sampler, batch_size: int, num_workers: int) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler`` order; the last incomplete batch is kept (as the official)."""
    if len(dataset) == 0:
        raise TrainingError("the training dataset is empty")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # workers must see dataset.set_epoch() of every epoch
    )


def first_items(dataset: Dataset, count: int) -> dict[str, Any]:
    """The first ``count`` items of ``dataset`` (epoch 0 randomness) collated into one batch."""
    from torch.utils.data import default_collate

    count = min(count, len(dataset))
    return default_collate([dataset[index] for index in range(count)])


def _degradation_generator(generator_seed: int) -> torch.Generator:
    # The degradation draws from a CPU generator (identical results on CPU and GPU, see seesr.degradations).
    return torch.Generator().manual_seed(generator_seed)


def _online_pairs(batch: dict[str, Any], data: DataConfig, seed: int, device: torch.device) -> dict[str, Any]:
    from seesr.data.datasets import degrade_batch
    from seesr.degradations.config import DegradationConfig

    moved = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    return degrade_batch(
        moved,
        DegradationConfig.preset(data.degradation),
        _degradation_generator(seed),
        scale=data.scale,
        quantize=True,
    )


def stage2_inputs(batch: dict[str, Any], data: DataConfig, seed: int, device: torch.device) -> Stage2Inputs:
    """Adapt a collated batch (prepared or online) to :class:`Stage2Inputs` on ``device``.

    ``seed`` drives the on-the-fly degradation of this batch (online mode only).
    """
    if data.mode == "online":
        batch = _online_pairs(batch, data, seed, device)
        tags = None
    else:
        tags = list(batch["tags"])
    return Stage2Inputs(gt=batch["gt"].to(device).float(), control=batch["lr"].to(device).float(), tags=tags)


def dape_ram_input(images: torch.Tensor) -> torch.Tensor:
    """DAPE training input of the tagger (official ``DAPEDataset``): tensor bilinear resize to 384x384 without
    antialiasing, then ImageNet normalisation. (B, 3, H, W) in [0, 1] -> (B, 3, 384, 384)."""
    resized = images.float()
    if resized.shape[-2:] != (RAM_INPUT_SIZE, RAM_INPUT_SIZE):
        resized = F.interpolate(
            resized, size=(RAM_INPUT_SIZE, RAM_INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False
        )
    mean = resized.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = resized.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


def stage2_ram_input(control: torch.Tensor) -> torch.Tensor:
    """Stage-2 training input of the tagger (official ``PairedCaptionDataset``): the upscaled LR, bicubic (no
    antialias) to 384x384, clamped to [0, 1], ImageNet-normalised. (B, 3, H, W) in [0, 1] -> (B, 3, 384, 384)."""
    from seesr.data.transforms import ram_values_from_lr

    return ram_values_from_lr(control)


def dape_inputs(batch: dict[str, Any], data: DataConfig, seed: int, device: torch.device) -> DAPEInputs:
    """Adapt a collated batch to the teacher (HR) and student (LR) tagger inputs on ``device``."""
    if data.mode == "online":
        batch = _online_pairs(batch, data, seed, device)
    hr = (batch["gt"].to(device).float() + 1) / 2
    lr = batch["lr"].to(device).float()
    return DAPEInputs(hr_ram=dape_ram_input(hr), lr_ram=dape_ram_input(lr))


def fill_missing_tags(
    tags: list[str] | None, gt: torch.Tensor, tagger: torch.nn.Module, threshold: float | None = None
) -> list[str]:
    """Captions for the batch: ``tags`` as given, or (online data) the tagger's tags of the GT in the format the
    official ``make_tags.py`` writes: ``"tag1, tag2,"`` (tensor bilinear 384 input, no antialias).

    Args:
        tags: captions from tag files, or None.
        gt: (B, 3, H, W) in [-1, 1].
        tagger: a frozen :class:`seesr.tagger.DAPETagger`.
    """
    if tags is not None:
        return tags
    pixel_values = dape_ram_input((gt.float() + 1) / 2).to(dtype=next(tagger.parameters()).dtype)
    with torch.no_grad():
        probs = tagger(pixel_values).probs
    # "," when the tagger finds nothing, as seesr prepare writes it
    return [f"{result.prompt}," for result in tagger.decode_tags(probs.float(), threshold)]


def micro_step_seed(seed: int, step: int, micro_index: int, accumulation: int, process_index: int) -> int:
    """Seed of the on-the-fly degradation of one micro-batch (independent of the step generator's stream)."""
    return step_seed(seed + 1, step * accumulation + micro_index, process_index)
