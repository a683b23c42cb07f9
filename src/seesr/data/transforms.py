"""Image ↔ tensor conversions and the GT preparation of the official data scripts (REFERENCE.md §6.1, §4.3).

Conventions: image tensors are float32 (3, H, W) or (B, 3, H, W), RGB, in [0, 1] unless a name says otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RAM_INPUT_SIZE",
    "pil_to_tensor",
    "pad_reflect101_bottom_right",
    "random_crop_gt",
    "ram_values_from_lr",
    "resize_gt",
    "tensor_to_pil",
    "to_uint8",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAM_INPUT_SIZE = 384


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image → float32 (3, H, W) in [0, 1] (``ToTensor``)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float (3, H, W) → uint8 (H, W, 3), as OpenCV writes ``255·x``: round half to even, saturate to [0, 255]."""
    scaled = (image.detach().float().cpu() * 255).numpy()
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """float (3, H, W) in [0, 1] (values outside saturate) → 8-bit RGB PIL image (see :func:`to_uint8`)."""
    return Image.fromarray(to_uint8(image), mode="RGB")


def _reflect101_indices(length: int, total: int) -> torch.Tensor:
    positions = torch.arange(total)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    positions = torch.remainder(positions, period)
    return torch.where(positions >= length, period - positions, positions)


def pad_reflect101_bottom_right(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (…, H, W) to at least (height, width) at the bottom/right with reflect-101 (OpenCV BORDER_REFLECT_101)."""
    h, w = image.shape[-2:]
    if h < height:
        image = image.index_select(-2, _reflect101_indices(h, height).to(image.device))
    if w < width:
        image = image.index_select(-1, _reflect101_indices(w, width).to(image.device))
    return image


def random_crop_gt(image: torch.Tensor, size: int, generator: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """The official stage-2 GT preparation (``RealESRGANDataset``): flip, pad, crop.

    Horizontal flip with p = 0.5 (when ``hflip``), reflect-101 pad at the bottom/right to at least ``size``, then a
    uniformly random ``size``×``size`` crop. Draw order: flip coin, top, left. (3, H, W) → (3, size, size).
    """
    if hflip and torch.rand((), generator=generator).item() < 0.5:
        image = image.flip(-1)
    image = pad_reflect101_bottom_right(image, size, size)
    height, width = image.shape[-2:]
    top = int(torch.randint(0, height - size + 1, (), generator=generator))
    left = int(torch.randint(0, width - size + 1, (), generator=generator))
    return image[..., top : top + size, left : left + size]


def resize_gt(image: Image.Image, size: int) -> Image.Image:
    """The DAPE data preparation (``SimpleDataset``): the whole image to ``size``×``size`` with PIL LANCZOS."""
    return image.convert("RGB").resize((size, size), Image.LANCZOS)


def ram_values_from_lr(lr: torch.Tensor) -> torch.Tensor:
    """Stage-2 training input of the tagger (``PairedCaptionDataset``): bicubic (no antialias) to 384×384, clamp to
    [0, 1], ImageNet normalisation. (3, H, W) or (B, 3, H, W) in [0, 1] → same rank, spatial 384×384."""
    single = lr.dim() == 3
    batch = lr.unsqueeze(0) if single else lr
    resized = F.interpolate(batch.float(), size=(RAM_INPUT_SIZE, RAM_INPUT_SIZE), mode="bicubic", align_corners=False)
    resized = resized.clamp(0, 1)
    mean = resized.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = resized.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = (resized - mean) / std
    return out[0] if single else out
