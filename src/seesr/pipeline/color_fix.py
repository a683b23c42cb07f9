"""Colour correction of the generated image towards the (upscaled) LR input (REFERENCE §1.12).

Both methods work on float tensors ``(B, 3, H, W)`` in ``[0, 1]``: ``content`` is the generated image, ``style``
is the colour reference (the bicubic-upscaled LR image, same size). The PIL-level helpers reproduce the official
conversion exactly: ``ToTensor`` in, clamp to ``[0, 1]``, then a *truncating* ``(x * 255).byte()`` back to uint8
(not rounding; this ≤1 LSB bias is official behaviour).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIX_METHODS: tuple[str, ...] = ("adain", "wavelet", "none")
ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5


def _mean_std(x: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and ``sqrt(unbiased variance + eps)``, both ``(B, C, 1, 1)``."""
    batch, channels = x.shape[:2]
    flat = x.reshape(batch, channels, -1)
    std = (flat.var(dim=2) + eps).sqrt().reshape(batch, channels, 1, 1)
    mean = flat.mean(dim=2).reshape(batch, channels, 1, 1)
    return mean, std


def adain_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation: give ``content`` the per-channel mean/std of ``style``.

    ``out = (content - μ_c) / σ_c · σ_s + μ_s`` with ``σ = sqrt(var_unbiased + 1e-5)`` over all pixels.
    Shapes ``(B, C, H, W)``; the two images may differ in size. Not clamped.
    """
    content_mean, content_std = _mean_std(content)
    style_mean, style_std = _mean_std(style)
    normalized = (content - content_mean) / content_std
    return normalized * style_std + style_mean


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise 3×3 ``[1,2,1]ᵀ[1,2,1]/16`` blur with dilation ``radius`` and replicate padding ``radius``."""
    channels = x.shape[1]
    kernel = torch.tensor(
        [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]], dtype=x.dtype, device=x.device
    )
    kernel = kernel[None, None].repeat(channels, 1, 1, 1)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` ``(B, C, H, W)`` into (high, low): ``low`` after ``levels`` blurs with radii 1, 2, 4, …;
    ``high = Σ (low_i − low_{i+1})`` accumulated level by level (so ``high + low ≈ x``)."""
    high = torch.zeros_like(x)
    current = x
    for level in range(levels):
        low = _wavelet_blur(current, 2**level)
        high = high + (current - low)
        current = low
    return high, current


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``content`` plus low frequencies of ``style`` (same ``(B, C, H, W)`` shape). Not clamped."""
    content_high, _ = wavelet_decomposition(content)
    _, style_low = wavelet_decomposition(style)
    return content_high + style_low


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``ToTensor``: 8-bit RGB PIL image → float32 ``(1, 3, H, W)`` in ``[0, 1]``."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div(255)


def tensor_to_pil_truncate(x: torch.Tensor) -> Image.Image:
    """``ToPILImage`` of a float ``(1, 3, H, W)`` or ``(3, H, W)`` tensor: ``(x * 255).byte()`` (truncation)."""
    if x.dim() == 4:
        x = x[0]
    array = x.detach().float().cpu().mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def apply_color_fix(image: Image.Image, reference: Image.Image, method: str) -> Image.Image:
    """Colour-correct the generated PIL ``image`` towards ``reference`` (same size) like the official scripts.

    ``method`` is ``"adain"``, ``"wavelet"`` or ``"none"`` (``"nofix"`` is accepted as an alias of ``"none"``).
    """
    if method in ("none", "nofix"):
        return image
    if method not in COLOR_FIX_METHODS:
        raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOR_FIX_METHODS)}")
    content = pil_to_tensor(image)
    style = pil_to_tensor(reference)
    fixed = adain_color_fix(content, style) if method == "adain" else wavelet_color_fix(content, style)
    return tensor_to_pil_truncate(fixed.clamp_(0.0, 1.0))
