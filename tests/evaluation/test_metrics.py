"""PSNR/SSIM on the Y channel against independent formulas (scikit-image, pyiqa); NIQE with the shipped parameters."""

from __future__ import annotations

import hashlib
import math
from importlib import resources

import numpy as np
import pytest
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from seesr.evaluation.metrics import (
    calculate_niqe,
    calculate_psnr,
    calculate_ssim,
    load_niqe_params,
    rgb_to_y,
)

NIQE_NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"  # basicsr-1.4.2 sdist


def _skimage_y(image: np.ndarray, crop: int) -> np.ndarray:
    """Independent reference: scikit-image's BT.601 conversion gives Y in [16, 235] for float input in [0, 1]."""
    y = color.rgb2ycbcr(image.astype(np.float64) / 255.0)[..., 0]
    return y[crop:-crop, crop:-crop] if crop else y


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    # Gaussian window, sigma 1.5 (truncate 3.5 -> 11x11), population covariance: Wang et al.'s SSIM.
    return structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def test_rgb_to_y_equals_scikit_image(photos):
    for image in photos.values():
        np.testing.assert_allclose(rgb_to_y(image), _skimage_y(image, 0), rtol=0, atol=1e-9)
    assert rgb_to_y(np.zeros((2, 2, 3), np.uint8)).max() == pytest.approx(16.0)
    assert rgb_to_y(np.full((2, 2, 3), 255, np.uint8)).min() == pytest.approx(235.0)


@pytest.mark.parametrize("crop_border", [0, 4])
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_psnr_ssim_y_equal_reference_formulas_on_real_photos(photos, noisy, name, crop_border):
    gt = photos[name]
    pred = noisy(gt, seed=7, amplitude=20)
    y_pred, y_gt = _skimage_y(pred, crop_border), _skimage_y(gt, crop_border)
    psnr = calculate_psnr(pred, gt, crop_border=crop_border)
    ssim = calculate_ssim(pred, gt, crop_border=crop_border)
    assert psnr == pytest.approx(peak_signal_noise_ratio(y_gt, y_pred, data_range=255), abs=1e-9)
    assert ssim == pytest.approx(_skimage_ssim(y_pred, y_gt), abs=1e-9)
    assert 20 < psnr < 45 and 0.3 < ssim < 1.0


def test_psnr_matches_pyiqa_ycbcr(photos, noisy):
    """A second independent implementation: pyiqa's psnr with the YCbCr Y channel (it adds eps=1e-8 to the MSE)."""
    import torch
    from pyiqa.archs.psnr_arch import psnr as pyiqa_psnr

    gt = photos["chelsea"]
    pred = noisy(gt, seed=3)
    to_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1)[None].astype(np.float64) / 255.0)  # noqa: E731
    reference = float(pyiqa_psnr(to_tensor(pred), to_tensor(gt), test_y_channel=True, color_space="ycbcr"))
    mse = 10 ** (-reference / 10) - 1e-8  # undo pyiqa's eps
    assert calculate_psnr(pred, gt) == pytest.approx(-10 * math.log10(mse), abs=1e-6)


def test_rgb_mode_matches_scikit_image(photos, noisy):
    gt = photos["coffee"]
    pred = noisy(gt, seed=5)
    expected_psnr = peak_signal_noise_ratio(gt, pred, data_range=255)
    expected_ssim = np.mean([_skimage_ssim(pred[..., c].astype(float), gt[..., c].astype(float)) for c in range(3)])
    assert calculate_psnr(pred, gt, test_y_channel=False) == pytest.approx(expected_psnr, abs=1e-9)
    assert calculate_ssim(pred, gt, test_y_channel=False) == pytest.approx(expected_ssim, abs=1e-9)


def test_identical_images_give_inf_psnr_and_unit_ssim(photos):
    image = photos["astronaut"]
    assert calculate_psnr(image, image.copy()) == math.inf
    assert calculate_ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)
    flat = np.full((32, 32, 3), 128, np.uint8)
    assert calculate_psnr(flat, flat) == math.inf
    assert calculate_ssim(flat, flat) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_ignores_the_edges(photos):
    gt = np.ascontiguousarray(photos["astronaut"][:96, :96])
    pred = gt.copy()
    pred[:3] = 255 - pred[:3]  # damage only a 3-pixel band at the top edge
    pred[:, -2:] = 0
    assert math.isfinite(calculate_psnr(pred, gt, crop_border=2))
    assert calculate_psnr(pred, gt, crop_border=3) == math.inf
    assert calculate_ssim(pred, gt, crop_border=3) == pytest.approx(1.0)
    assert calculate_ssim(pred, gt, crop_border=0) < 0.99


def test_one_grey_level_off_is_48_db():
    gt = np.full((16, 16, 3), 100, np.uint8)
    pred = gt + 1  # every channel +1 -> Y changes by (65.481 + 128.553 + 24.966) / 255 = 219 / 255
    expected = 10 * math.log10(255**2 / (219 / 255) ** 2)
    assert calculate_psnr(pred, gt) == pytest.approx(expected, abs=1e-9)
    assert calculate_psnr(pred, gt, test_y_channel=False) == pytest.approx(10 * math.log10(255**2), abs=1e-9)


def test_errors_are_clear():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="size mismatch: prediction is 32x32x3, ground truth is 30x32x3"):
        calculate_psnr(a, np.zeros((32, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="crop_border=16 removes the whole"):
        calculate_psnr(a, a, crop_border=16)
    with pytest.raises(ValueError, match="too small for SSIM"):
        calculate_ssim(a[:10, :10], a[:10, :10])
    with pytest.raises(ValueError, match="too small for NIQE: 95x100"):
        calculate_niqe(np.zeros((100, 95, 3), np.uint8))
    with pytest.raises(ValueError, match="expected an"):
        calculate_psnr(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))


def test_niqe_params_are_basicsr_pristine_model():
    data = resources.files("seesr.evaluation").joinpath("data", "niqe_pris_params.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == NIQE_NPZ_SHA256
    mu, cov = load_niqe_params()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T, atol=1e-12)


def test_niqe_astronaut_is_about_3_06(photos):
    score = calculate_niqe(photos["astronaut"])
    assert score == pytest.approx(3.0624, abs=5e-3)  # pyiqa 3.0624, BasicSR 3.0649
    # Noise makes a natural image less natural.
    rng = np.random.default_rng(0)
    noisy_image = np.clip(photos["astronaut"] + rng.normal(0, 25, photos["astronaut"].shape), 0, 255).astype(np.uint8)
    assert calculate_niqe(noisy_image) > score + 1.0
