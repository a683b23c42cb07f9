"""Fidelity metrics (PSNR, SSIM on the Y channel) written out, plus NIQE with the pristine parameters shipped here.

Conventions (the ones super-resolution papers use, SeeSR's Table 2 among them, and BasicSR's
``calculate_psnr``/``calculate_ssim``):

* images are ``(H, W, 3)`` RGB arrays with values in ``[0, 255]`` (``uint8`` or float);
* ``test_y_channel=True`` compares the luma of ITU-R BT.601 YCbCr ("studio swing", ``Y`` in ``[16, 235]``):
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, computed in float64 and **not rounded**;
* ``crop_border`` pixels are removed from each of the four edges of both images before comparing;
* PSNR uses a peak of 255 and is ``inf`` for identical images;
* SSIM uses an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, is averaged over the "valid"
  positions only (no padding), and over channels when ``test_y_channel=False``.

NIQE delegates the feature extraction to pyiqa (pinned, see :mod:`seesr.evaluation.registry`) and uses the pristine
model (``mu``/``cov`` of 36 natural-scene features) from BasicSR 1.4.2, shipped as package data, so it needs no
download.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "NIQE_PARAMS_FILE",
    "calculate_niqe",
    "calculate_psnr",
    "calculate_ssim",
    "crop_borders",
    "load_niqe_params",
    "rgb_to_y",
]

# BT.601 luma weights for RGB in [0, 1] giving Y in [16, 235] (MATLAB ``rgb2ycbcr``).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PEAK = 255.0

NIQE_PARAMS_FILE = "niqe_pris_params.npz"
NIQE_BLOCK_SIZE = 96


def _as_float_image(image: np.ndarray, name: str) -> np.ndarray:
    """Validate an ``(H, W, C)`` or ``(H, W)`` image in [0, 255] and return it as float64."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected an (H, W, 3) RGB or (H, W) grey image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a numeric image, got dtype {array.dtype}")
    return array.astype(np.float64)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image.

    Args:
        image: ``(H, W, 3)`` RGB in ``[0, 255]`` (uint8 or float).

    Returns:
        ``(H, W)`` float64 ``Y`` in ``[16, 235]``, unrounded.
    """
    array = _as_float_image(image, "image")
    if array.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {array.shape[2]}")
    return array @ (_Y_WEIGHTS / 255.0) + _Y_OFFSET


def crop_borders(image: np.ndarray, crop_border: int) -> np.ndarray:
    """Remove ``crop_border`` pixels from each edge of an ``(H, W, ...)`` array."""
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return image
    height, width = image.shape[:2]
    if 2 * crop_border >= min(height, width):
        raise ValueError(f"crop_border={crop_border} removes the whole {width}x{height} image")
    return image[crop_border:-crop_border, crop_border:-crop_border, ...]


def _prepare_pair(
    pred: np.ndarray, gt: np.ndarray, crop_border: int, test_y_channel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, convert (Y or all channels) and crop; returns two ``(H', W', C)`` float64 arrays."""
    pred_f = _as_float_image(pred, "prediction")
    gt_f = _as_float_image(gt, "ground truth")
    if pred_f.shape != gt_f.shape:
        raise ValueError(
            f"size mismatch: prediction is {pred_f.shape[1]}x{pred_f.shape[0]}x{pred_f.shape[2]}, "
            f"ground truth is {gt_f.shape[1]}x{gt_f.shape[0]}x{gt_f.shape[2]} (width x height x channels)"
        )
    if test_y_channel and pred_f.shape[2] == 3:
        pred_f, gt_f = rgb_to_y(pred_f)[..., None], rgb_to_y(gt_f)[..., None]
    return crop_borders(pred_f, crop_border), crop_borders(gt_f, crop_border)


def calculate_psnr(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB, peak 255.

    Args:
        pred: ``(H, W, 3)`` RGB in ``[0, 255]``.
        gt: same shape as ``pred``.
        crop_border: pixels removed from each edge before comparing.
        test_y_channel: compare the BT.601 ``Y`` channel (the paper's setting) instead of all RGB channels.

    Returns:
        PSNR in dB; ``inf`` when the (cropped) images are identical.
    """
    pred_f, gt_f = _prepare_pair(pred, gt, crop_border, test_y_channel)
    mse = float(np.mean((pred_f - gt_f) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK**2 / mse)


def _gaussian_kernel_1d(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation of an ``(H, W)`` array keeping only fully covered ("valid") positions."""
    from scipy.ndimage import correlate1d

    radius = (len(kernel) - 1) // 2
    filtered = correlate1d(correlate1d(image, kernel, axis=0, mode="nearest"), kernel, axis=1, mode="nearest")
    return filtered[radius:-radius, radius:-radius]


def _ssim_single_channel(pred: np.ndarray, gt: np.ndarray) -> float:
    kernel = _gaussian_kernel_1d()
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    mu_x = _filter_valid(pred, kernel)
    mu_y = _filter_valid(gt, kernel)
    sigma_x = _filter_valid(pred * pred, kernel) - mu_x**2
    sigma_y = _filter_valid(gt * gt, kernel) - mu_y**2
    sigma_xy = _filter_valid(pred * gt, kernel) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))
    return float(ssim_map.mean())


def calculate_ssim(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), peak 255.

    Args:
        pred: ``(H, W, 3)`` RGB in ``[0, 255]``.
        gt: same shape as ``pred``.
        crop_border: pixels removed from each edge before comparing.
        test_y_channel: compare the BT.601 ``Y`` channel (the paper's setting); otherwise the mean over RGB.

    Returns:
        SSIM, 1.0 for identical images.
    """
    pred_f, gt_f = _prepare_pair(pred, gt, crop_border, test_y_channel)
    if min(pred_f.shape[:2]) < SSIM_WINDOW_SIZE:
        raise ValueError(
            f"image too small for SSIM: {pred_f.shape[1]}x{pred_f.shape[0]} after cropping, "
            f"needs at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE}"
        )
    return float(np.mean([_ssim_single_channel(pred_f[..., c], gt_f[..., c]) for c in range(pred_f.shape[2])]))


def load_niqe_params(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The NIQE pristine multivariate Gaussian: ``mu`` ``(36,)`` and ``cov`` ``(36, 36)``, float64.

    By default they come from ``seesr/evaluation/data/niqe_pris_params.npz`` (BasicSR 1.4.2, Apache-2.0).
    """
    if path is None:
        source = resources.files("seesr.evaluation").joinpath("data", NIQE_PARAMS_FILE)
        with resources.as_file(source) as file:
            with np.load(file) as data:
                mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    else:
        with np.load(path) as data:
            mu, cov = data["mu_pris_param"], data["cov_pris_param"]
    mu = np.asarray(mu, dtype=np.float64).ravel()
    cov = np.asarray(cov, dtype=np.float64)
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"NIQE parameters have shapes {mu.shape} and {cov.shape}; expected (36,) and (36, 36)")
    return mu, cov


def calculate_niqe(image: np.ndarray, crop_border: int = 0) -> float:
    """NIQE (Mittal et al. 2013), lower is better; pyiqa's implementation with the shipped pristine parameters.

    Args:
        image: ``(H, W, 3)`` RGB ``uint8`` (or float in ``[0, 255]``); it is scored on its luma (pyiqa's default,
            the ``Y`` of YIQ, rounded to integers), blocks of 96x96.
        crop_border: pixels removed from each edge first.

    Returns:
        The NIQE score (about 3.06 for scikit-image's astronaut photo).
    """
    import torch
    from pyiqa.archs.niqe_arch import calculate_niqe as pyiqa_calculate_niqe

    array = _as_float_image(image, "image")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    height, width = array.shape[0] - 2 * crop_border, array.shape[1] - 2 * crop_border
    if min(height, width) < NIQE_BLOCK_SIZE:
        raise ValueError(
            f"image too small for NIQE: {width}x{height} (after cropping), needs at least "
            f"{NIQE_BLOCK_SIZE}x{NIQE_BLOCK_SIZE} (NIQE fits its model on {NIQE_BLOCK_SIZE}-pixel blocks)"
        )
    mu, cov = load_niqe_params()
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)[None] / 255.0)).float()
    score = pyiqa_calculate_niqe(
        tensor,
        crop_border,
        test_y_channel=True,
        color_space="yiq",
        mu_pris_param=torch.from_numpy(mu),
        cov_pris_param=torch.from_numpy(cov),
    )
    value = float(score.reshape(-1)[0])
    if not math.isfinite(value):
        raise ValueError("NIQE is undefined for this image (its block statistics are degenerate, e.g. a flat image)")
    return value
