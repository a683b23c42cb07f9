"""Batched tensor operations of the Real-ESRGAN degradation model (CPU or GPU).

Every image tensor is float (B, C, H, W) in [0, 1] (C = 3 unless stated). Random operations take an explicit
:class:`torch.Generator`. Noise is drawn on the generator's device and moved to the image's device, so a CPU
generator gives the same noise whether the image is on the CPU or a GPU (pass a CUDA generator to draw on the GPU).

Numerics follow BasicSR's ``filter2D``, ``USMSharp``, ``generate_*_noise_pt`` and ``DiffJPEG`` (non-differentiable
rounding) as pinned down in ADDENDUM.md "Check 2".
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "add_gaussian_noise",
    "add_poisson_noise",
    "filter2d",
    "gaussian_noise",
    "jpeg_compress",
    "jpeg_quality_to_factor",
    "poisson_noise",
    "reflect_pad",
    "resize",
    "usm_kernel",
    "usm_sharp",
]


# --------------------------------------------------------------------------------------------------------------
# Filtering
# --------------------------------------------------------------------------------------------------------------


def reflect_pad(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by ``pad`` on every side with reflect-101 (no edge repeat, OpenCV BORDER_REFLECT_101).

    Uses ``F.pad(mode="reflect")`` when it can; images smaller than ``pad + 1`` are padded by index arithmetic
    (repeated reflection), which ``F.pad`` refuses.
    """
    if pad == 0:
        return image
    height, width = image.shape[-2:]
    if pad < height and pad < width:
        return F.pad(image, (pad, pad, pad, pad), mode="reflect")

    def indices(length: int) -> torch.Tensor:
        positions = torch.arange(-pad, length + pad, device=image.device)
        if length == 1:
            return torch.zeros_like(positions)
        period = 2 * (length - 1)
        positions = torch.remainder(positions, period)
        return torch.where(positions >= length, period - positions, positions)

    return image.index_select(-2, indices(height)).index_select(-1, indices(width))


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Cross-correlate every channel with a kernel after reflect-101 padding of ``k // 2``.

    Args:
        image: (B, C, H, W).
        kernel: (k, k) or (1, k, k) shared by the batch, or (B, k, k), one kernel per image (all channels); k odd.

    Returns:
        (B, C, H, W), same dtype as ``image``.
    """
    if kernel.dim() == 2:
        kernel = kernel.unsqueeze(0)
    size = kernel.shape[-1]
    if size % 2 != 1 or kernel.shape[-2] != size:
        raise ValueError(f"kernel must be square with an odd size, got {tuple(kernel.shape[-2:])}")
    batch, channels, height, width = image.shape
    kernel = kernel.to(device=image.device, dtype=image.dtype)
    padded = reflect_pad(image, size // 2)
    padded_h, padded_w = padded.shape[-2:]
    if kernel.shape[0] == 1:
        weight = kernel.view(1, 1, size, size).expand(batch * channels, 1, size, size)
    elif kernel.shape[0] == batch:
        weight = kernel.view(batch, 1, size, size).repeat(1, channels, 1, 1).view(batch * channels, 1, size, size)
    else:
        raise ValueError(f"got {kernel.shape[0]} kernels for a batch of {batch} images")
    # One depthwise convolution over all B·C planes (several times faster on CPU than a batch of 1-channel
    # convolutions, and bit-identical to it).
    out = F.conv2d(
        padded.reshape(1, batch * channels, padded_h, padded_w), weight.contiguous(), groups=batch * channels
    )
    return out.view(batch, channels, height, width)


@lru_cache(maxsize=8)
def _usm_column_numpy(radius: int) -> np.ndarray:
    """OpenCV ``getGaussianKernel(radius, 0)``: σ = 0.3·((radius − 1)·0.5 − 1) + 0.8, float64, sums to 1."""
    sigma = 0.3 * ((radius - 1) * 0.5 - 1) + 0.8
    x = np.arange(radius, dtype=np.float64) - (radius - 1) / 2
    column = np.exp(-0.5 / (sigma * sigma) * x * x)
    return column * (1.0 / column.sum())


@lru_cache(maxsize=8)
def _usm_kernel_numpy(radius: int) -> np.ndarray:
    column = _usm_column_numpy(radius).reshape(radius, 1)
    return np.dot(column, column.T).astype(np.float32)


def usm_kernel(radius: int = 51) -> torch.Tensor:
    """The USM blur kernel: outer product of OpenCV's 1-D Gaussian of size ``radius`` (made odd), float32 (r, r)."""
    if radius % 2 == 0:
        radius += 1
    return torch.from_numpy(_usm_kernel_numpy(radius).copy())


def _separable_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The USM Gaussian as two 1-D passes (reflect-101 padding); equal to the 2-D filter up to ~2e-6."""
    column = torch.from_numpy(_usm_column_numpy(radius).copy()).to(device=image.device, dtype=image.dtype)
    batch, channels, height, width = image.shape
    padded = reflect_pad(image, radius // 2).reshape(batch * channels, 1, height + radius - 1, width + radius - 1)
    out = F.conv2d(padded, column.view(1, 1, radius, 1))
    out = F.conv2d(out, column.view(1, 1, 1, radius))
    return out.view(batch, channels, height, width)


def usm_sharp(
    image: torch.Tensor,
    weight: float = 0.5,
    threshold: float = 10.0,
    radius: int = 51,
    separable: bool = False,
) -> torch.Tensor:
    """Unsharp masking as BasicSR ``USMSharp`` (the SeeSR GT sharpening).

    ``residual = I - blur(I)``; ``mask = |residual|·255 > threshold``; ``soft = blur(mask)``;
    ``out = soft·clip(I + weight·residual, 0, 1) + (1 - soft)·I``. Input/output (B, C, H, W) in [0, 1].
    ``separable=True`` blurs with two 1-D passes: ~12x faster on CPU, within ~2e-6 of the exact 2-D filter
    (a mask pixel can flip where ``|residual|·255`` is within that of ``threshold``).
    """
    if radius % 2 == 0:
        radius += 1
    blur_fn = partial(_separable_blur, radius=radius) if separable else partial(filter2d, kernel=usm_kernel(radius))
    blur = blur_fn(image)
    residual = image - blur
    mask = (torch.abs(residual) * 255 > threshold).to(image.dtype)
    soft_mask = blur_fn(mask)
    sharp = torch.clamp(image + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * image


def resize(
    image: torch.Tensor,
    mode: str,
    scale_factor: float | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``F.interpolate`` as the official code calls it: ``area``/``bilinear``/``bicubic``, align_corners False,
    no antialias; with ``scale_factor`` the output is ``floor(H·s)`` and ``s`` maps the coordinates directly."""
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"unknown resize mode {mode!r}")
    align = None if mode == "area" else False
    if size is not None:
        return F.interpolate(image, size=size, mode=mode, align_corners=align)
    if scale_factor is None:
        raise ValueError("give scale_factor or size")
    return F.interpolate(image, scale_factor=scale_factor, mode=mode, align_corners=align)


# --------------------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------------------


def _per_image(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as a (B, 1, 1, 1) tensor on ``like``'s device and dtype."""
    tensor = torch.as_tensor(value, dtype=like.dtype).to(like.device)
    if tensor.dim() == 0:
        tensor = tensor.expand(batch)
    return tensor.reshape(batch, 1, 1, 1)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def gaussian_noise(
    image: torch.Tensor,
    sigma: float | torch.Tensor,
    gray: float | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise ``N(0, 1)·σ/255`` shaped like ``image`` (B, C, H, W).

    ``sigma`` and ``gray`` are scalars or (B,) tensors; ``gray`` ∈ {0, 1} selects channel-shared noise per image.
    Draw order (matches the fixture): if any image is gray, first (B, 1, H, W) gray values, then the colour noise
    (B, C, H, W); the result is ``colour·(1-g) + gray·g``.
    """
    batch, channels, height, width = image.shape
    sigma = _per_image(sigma, batch, image)
    gray = _per_image(gray, batch, image)
    any_gray = bool((gray > 0).any())
    if any_gray:
        gray_noise = _randn((batch, 1, height, width), generator, image) * sigma / 255.0
    noise = _randn((batch, channels, height, width), generator, image) * sigma / 255.0
    if any_gray:
        noise = noise * (1 - gray) + gray_noise * gray
    return noise


def add_gaussian_noise(
    image: torch.Tensor,
    sigma: float | torch.Tensor,
    gray: float | torch.Tensor = 0,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """``image + gaussian_noise(...)``, clamped to [0, 1] when ``clip``."""
    out = image + gaussian_noise(image, sigma, gray, generator)
    return torch.clamp(out, 0, 1) if clip else out


def _quantise(image: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(image * 255), 0, 255) / 255


def _poisson_draw(image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``Poisson(q·v)/v - q`` per image with ``v = 2^ceil(log2(#unique(q)))``; ``image`` is already quantised."""
    batch = image.shape[0]
    levels = [2 ** math.ceil(math.log2(len(torch.unique(image[index])))) for index in range(batch)]
    values = image.new_tensor(levels).view(batch, 1, 1, 1)
    rate = image * values
    if generator is not None and generator.device != image.device:
        draw = torch.poisson(rate.to(generator.device), generator=generator).to(image.device)
    else:
        draw = torch.poisson(rate, generator=generator)
    return draw / values - image


def poisson_noise(
    image: torch.Tensor,
    scale: float | torch.Tensor,
    gray: float | torch.Tensor = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Signal-dependent Poisson noise shaped like ``image`` (B, 3, H, W), multiplied by ``scale`` (scalar or (B,)).

    The image is quantised to 8 bit (``q``) and the noise is ``Poisson(q·v)/v − q``. For gray images the noise is
    computed on the quantised luminance (0.2989 R + 0.587 G + 0.114 B) and shared by the channels; it is drawn
    first, only if some image is gray.
    """
    batch, channels, height, width = image.shape
    gray = _per_image(gray, batch, image)
    any_gray = bool((gray > 0).any())
    if any_gray:
        weights = image.new_tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
        luminance = _quantise((image * weights).sum(dim=1, keepdim=True))
        gray_noise = _poisson_draw(luminance, generator).expand(batch, channels, height, width)
    noise = _poisson_draw(_quantise(image), generator)
    if any_gray:
        noise = noise * (1 - gray) + gray_noise * gray
    return noise * _per_image(scale, batch, image)


def add_poisson_noise(
    image: torch.Tensor,
    scale: float | torch.Tensor,
    gray: float | torch.Tensor = 0,
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """``image + poisson_noise(...)`` (added to the *unquantised* image), clamped to [0, 1] when ``clip``."""
    out = image + poisson_noise(image, scale, gray, generator)
    return torch.clamp(out, 0, 1) if clip else out


# --------------------------------------------------------------------------------------------------------------
# JPEG (equivalent to BasicSR's DiffJPEG with hard rounding)
# --------------------------------------------------------------------------------------------------------------

# ITU-T T.81 Annex K tables in natural (row = vertical frequency) order.
_STANDARD_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMINANCE_TOP_LEFT = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))

_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


def _jpeg_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # DiffJPEG's luminance table is the transpose of the standard one (ADDENDUM gap 10, item 8).
    luminance = torch.tensor(_STANDARD_LUMINANCE, dtype=torch.float32, device=device).t().contiguous()
    chrominance = torch.full((8, 8), 99.0, dtype=torch.float32, device=device)
    chrominance[:4, :4] = torch.tensor(_CHROMINANCE_TOP_LEFT, dtype=torch.float32, device=device)
    return luminance, chrominance


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix ``C[u, x] = ½·α(u)·cos((2x+1)uπ/16)`` (α(0) = 1/√2)."""
    index = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * index[None, :] + 1) * index[:, None] * math.pi / 16)
    alpha = torch.ones(8, dtype=torch.float64)
    alpha[0] = 1 / math.sqrt(2)
    return (0.5 * alpha[:, None] * basis).to(device=device, dtype=dtype)


def jpeg_quality_to_factor(quality: float | torch.Tensor) -> float | torch.Tensor:
    """Scale of the quantisation tables: ``(5000/q if q < 50 else 200 - 2q) / 100`` (float, unrounded)."""
    if isinstance(quality, torch.Tensor):
        quality = quality.float()
        return torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0
    return (5000.0 / quality if quality < 50 else 200.0 - quality * 2) / 100.0


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B, H/8·W/8, 8, 8), row-major block order."""
    batch, height, width = plane.shape
    return plane.view(batch, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4).reshape(batch, -1, 8, 8)


def _from_blocks(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    batch = blocks.shape[0]
    return blocks.view(batch, height // 8, width // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(batch, height, width)


def _jpeg_plane(plane: torch.Tensor, table: torch.Tensor, factor: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Encode and decode one 0-255 plane (B, H, W) (H, W multiples of 8) with per-image table scale ``factor``."""
    height, width = plane.shape[-2:]
    blocks = _to_blocks(plane) - 128
    coefficients = dct @ blocks @ dct.t()
    divisor = table * factor.view(-1, 1, 1, 1)
    quantised = torch.round(coefficients / divisor)
    restored = dct.t() @ (quantised * divisor) @ dct + 128
    return _from_blocks(restored, height, width)


def jpeg_compress(image: torch.Tensor, quality: float | torch.Tensor) -> torch.Tensor:
    """JPEG round trip (4:2:0, standard tables scaled by quality) as BasicSR ``DiffJPEG(differentiable=False)``.

    Args:
        image: (B, 3, H, W) RGB in [0, 1] (any size: zero-padded bottom/right to multiples of 16, cropped back).
        quality: a Python number for the whole batch, or a (B,) tensor, one quality per image; continuous
            values are used as they are (no rounding), valid range (0, 100).

    Returns:
        (B, 3, H, W) float in [0, 1], not quantised to 8 bit.
    """
    batch, _, height, width = image.shape
    device = image.device
    pad_h, pad_w = (-height) % 16, (-width) % 16
    x = F.pad(image, (0, pad_w, 0, pad_h), mode="constant", value=0) * 255
    forward = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=device)
    ycbcr = torch.einsum("cd,bdhw->bchw", forward, x)
    ycbcr = ycbcr + torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=device).view(1, 3, 1, 1)

    if isinstance(quality, torch.Tensor) and quality.dim() > 0:
        if quality.numel() != batch:
            raise ValueError(f"got {quality.numel()} JPEG qualities for a batch of {batch} images")
        factor = jpeg_quality_to_factor(quality.to(device)).to(x.dtype)
    else:
        factor = torch.full((batch,), float(jpeg_quality_to_factor(float(quality))), dtype=x.dtype, device=device)
    luminance_table, chrominance_table = _jpeg_tables(device)
    dct = _dct_matrix(device, x.dtype)

    y = _jpeg_plane(ycbcr[:, 0], luminance_table.to(x.dtype), factor, dct)
    chroma = F.avg_pool2d(ycbcr[:, 1:], kernel_size=2, stride=2)
    cb = _jpeg_plane(chroma[:, 0], chrominance_table.to(x.dtype), factor, dct)
    cr = _jpeg_plane(chroma[:, 1], chrominance_table.to(x.dtype), factor, dct)
    chroma = torch.stack([cb, cr], dim=1).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    ycbcr = torch.cat([y.unsqueeze(1), chroma], dim=1)
    ycbcr = ycbcr - torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=device).view(1, 3, 1, 1)
    inverse = torch.tensor(_YCBCR_TO_RGB, dtype=x.dtype, device=device)
    rgb = torch.einsum("cd,bdhw->bchw", inverse, ycbcr)
    rgb = torch.clamp(rgb, 0, 255) / 255
    return rgb[..., :height, :width].contiguous()
