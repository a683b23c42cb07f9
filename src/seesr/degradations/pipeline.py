"""Second-order Real-ESRGAN degradation: HR batch → LR batch (REFERENCE.md §6.3).

``degrade(hr, config, generator)`` is batched and runs wherever ``hr`` lives (CPU or GPU). Randomness comes only
from the ``generator`` you pass, so the same (seed, batch) always gives the same LR. As in the official
``realesrgan_degradation``, some choices are made **once per batch** (blur coin of stage 2, up/down/keep,
scale, interpolation mode, Gaussian-vs-Poisson, the order of the last step) and the rest **per image** (kernels,
noise σ / Poisson scale, gray flag, JPEG quality). Degrade one image per call if every image must get its own
choices (this is what ``seesr prepare`` does).

Draw order (one generator): kernels (image by image: blur 1, blur 2, final sinc) unless given → stage 1 → stage 2
→ last step; inside a stage: blur coin, resize type, scale, mode, noise-type coin, per-image σ (or Poisson scale),
per-image gray flags, noise tensors, per-image JPEG qualities.
"""

from __future__ import annotations

import torch

from seesr.degradations import ops
from seesr.degradations.config import DegradationConfig, DegradationStage
from seesr.degradations.kernels import DegradationKernels, _choice, _uniform, sample_degradation_kernels

__all__ = ["MIN_HR_SIZE", "as_generator", "degrade", "sharpen_gt", "synthesize_pair"]

MIN_HR_SIZE = 16  # smaller inputs can shrink to zero pixels under the random down-scaling


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """Accept a :class:`torch.Generator` or an integer seed (a fresh CPU generator); ``None`` is refused."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError("pass an explicit torch.Generator (or an int seed) so that the degradation is reproducible")


def _rand(generator: torch.Generator, count: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """``count`` float32 draws from U[low, high) on the generator's device, returned on ``device``."""
    values = torch.rand(count, generator=generator, device=generator.device)
    return (values * (high - low) + low).to(device)


def _resize_scale(stage: DegradationStage, generator: torch.Generator) -> float:
    kind = _choice(generator, ("up", "down", "keep"), stage.resize_probs)
    if kind == "up":
        return _uniform(generator, 1.0, stage.resize_range[1])
    if kind == "down":
        return _uniform(generator, stage.resize_range[0], 1.0)
    return 1.0


def _add_noise(x: torch.Tensor, stage: DegradationStage, generator: torch.Generator) -> torch.Tensor:
    batch = x.shape[0]
    if _uniform(generator, 0.0, 1.0) < stage.gaussian_noise_prob:
        sigma = _rand(generator, batch, *stage.noise_range, device=x.device)
        gray = (_rand(generator, batch, 0.0, 1.0, device=x.device) < stage.gray_noise_prob).to(x.dtype)
        return ops.add_gaussian_noise(x, sigma, gray, generator, clip=True)
    scale = _rand(generator, batch, *stage.poisson_scale_range, device=x.device)
    gray = (_rand(generator, batch, 0.0, 1.0, device=x.device) < stage.gray_noise_prob).to(x.dtype)
    return ops.add_poisson_noise(x, scale, gray, generator, clip=True)


def _jpeg(x: torch.Tensor, stage: DegradationStage, generator: torch.Generator) -> torch.Tensor:
    quality = _rand(generator, x.shape[0], *stage.jpeg_range, device=x.device)
    return ops.jpeg_compress(torch.clamp(x, 0, 1), quality)


def sharpen_gt(hr: torch.Tensor, config: DegradationConfig) -> torch.Tensor:
    """Apply the config's GT unsharp masking (identity when ``config.sharpen_gt`` is None); (B, 3, H, W) in [0, 1]."""
    if config.sharpen_gt is None:
        return hr
    usm = config.sharpen_gt
    return ops.usm_sharp(hr, usm.weight, usm.threshold, usm.radius, separable=usm.separable)


@torch.no_grad()
def degrade(
    hr: torch.Tensor,
    config: DegradationConfig = DegradationConfig.SEESR,
    generator: torch.Generator | int | None = None,
    scale: int = 4,
    kernels: DegradationKernels | None = None,
) -> torch.Tensor:
    """Degrade a batch of (already sharpened, if wanted) HR images with the second-order model.

    Args:
        hr: (B, 3, H, W) float in [0, 1], H and W >= 16 (H/scale, W/scale give the LR size). It is degraded as
            given: apply :func:`sharpen_gt` first for the official data path, or use :func:`synthesize_pair`.
        config: the degradation model, e.g. ``DegradationConfig.SEESR``.
        generator: the only source of randomness (a CPU generator gives identical results on CPU and GPU up to
            floating-point differences of the ops; an int is used as a seed).
        scale: down-scaling factor of the output.
        kernels: per-image kernels (each (B, K, K)) drawn beforehand, e.g. in dataset workers; sampled from
            ``generator`` when omitted.

    Returns:
        LR (B, 3, H // scale, W // scale), float32 in [0, 1] on ``hr``'s device (8-bit levels only when
        ``config.round_output``).
    """
    generator = as_generator(generator)
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(hr.shape)}")
    batch, _, height, width = hr.shape
    if min(height, width) < max(MIN_HR_SIZE, scale):
        raise ValueError(
            f"images must be at least {max(MIN_HR_SIZE, scale)} pixels on each side, got {height}x{width}"
        )
    out_h, out_w = height // scale, width // scale
    if kernels is None:
        kernels = sample_degradation_kernels(config, generator, batch)
    elif len(kernels) != batch:
        raise ValueError(f"got kernels for {len(kernels)} images but a batch of {batch}")
    kernels = kernels.to(hr.device)
    x = hr.float()

    # ----- first order: blur → resize (relative) → noise → JPEG
    first = config.first
    if _uniform(generator, 0.0, 1.0) < first.blur_prob:
        x = ops.filter2d(x, kernels.blur1)
    factor = _resize_scale(first, generator)
    mode = _choice(generator, first.resize_modes)
    x = ops.resize(x, mode, scale_factor=factor)
    x = _add_noise(x, first, generator)
    x = _jpeg(x, first, generator)

    # ----- second order: blur → resize (relative to the target LR size) → noise
    second = config.second
    if _uniform(generator, 0.0, 1.0) < second.blur_prob:
        x = ops.filter2d(x, kernels.blur2)
    factor = _resize_scale(second, generator)
    mode = _choice(generator, second.resize_modes)
    size = (max(1, int(height / scale * factor)), max(1, int(width / scale * factor)))
    x = ops.resize(x, mode, size=size)
    x = _add_noise(x, second, generator)

    # ----- last step: [resize to target → sinc → JPEG] or [JPEG → resize to target → sinc], p = 0.5 each
    if _uniform(generator, 0.0, 1.0) < 0.5:
        x = ops.resize(x, _choice(generator, second.resize_modes), size=(out_h, out_w))
        x = ops.filter2d(x, kernels.sinc)
        x = _jpeg(x, second, generator)
    else:
        x = _jpeg(x, second, generator)
        x = ops.resize(x, _choice(generator, second.resize_modes), size=(out_h, out_w))
        x = ops.filter2d(x, kernels.sinc)

    x = torch.clamp(x, 0, 1)
    if config.round_output:
        x = torch.round(x * 255) / 255
    return x


@torch.no_grad()
def synthesize_pair(
    hr: torch.Tensor,
    config: DegradationConfig = DegradationConfig.SEESR,
    generator: torch.Generator | int | None = None,
    scale: int = 4,
    kernels: DegradationKernels | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official data path: ``gt = sharpen_gt(hr)`` and ``lr = degrade(gt, ...)``.

    Returns ``(gt, lr)``: gt (B, 3, H, W) float32 in [0, 1] (the training target), lr (B, 3, H/scale, W/scale).
    """
    gt = sharpen_gt(hr.float(), config)
    return gt, degrade(gt, config, generator, scale=scale, kernels=kernels)
