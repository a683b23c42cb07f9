"""Blur kernels against fixture E (official BasicSR outputs, float64, rtol 1e-9) and the random kernel sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seesr.degradations import (
    BlurKernelConfig,
    DegradationConfig,
    bivariate_gaussian,
    bivariate_generalized_gaussian,
    bivariate_plateau,
    circular_lowpass_kernel,
    mesh_grid,
    sample_blur_kernel,
    sample_degradation_kernels,
    sample_final_sinc_kernel,
    sigma_matrix2,
)
from seesr.degradations.kernels import pad_kernel
from tests.conftest import BLOCKS


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(BLOCKS / "kernels.safetensors"))


def assert_kernel(actual: np.ndarray, expected: torch.Tensor) -> None:
    assert actual.shape == tuple(expected.shape)
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-9, atol=1e-300)


def test_mesh_grid_and_covariance(reference):
    assert_kernel(mesh_grid(5), reference["mesh_grid_5"])
    grid = mesh_grid(5)
    assert grid[0, 4, 0] == 2 and grid[0, 4, 1] == -2  # x along columns, y along rows
    assert_kernel(sigma_matrix2(2.5, 1.0, 0.6), reference["sigma_matrix2_sx2.5_sy1.0_t0.6"])


@pytest.mark.parametrize(
    ("key", "make"),
    [
        ("iso_k21_s2.0", lambda: bivariate_gaussian(21, 2.0, 2.0, 0.0, isotropic=True)),
        ("aniso_k21_sx2.5_sy1.0_t0.6", lambda: bivariate_gaussian(21, 2.5, 1.0, 0.6, isotropic=False)),
        ("aniso_k11_sx1.2_sy0.4_t-2.0", lambda: bivariate_gaussian(11, 1.2, 0.4, -2.0, isotropic=False)),
        ("gen_iso_k21_s1.5_b0.7", lambda: bivariate_generalized_gaussian(21, 1.5, 1.5, 0.0, 0.7, isotropic=True)),
        (
            "gen_aniso_k15_sx2.0_sy1.2_t-0.9_b3.0",
            lambda: bivariate_generalized_gaussian(15, 2.0, 1.2, -0.9, 3.0, isotropic=False),
        ),
        ("plateau_iso_k21_s1.8_b1.5", lambda: bivariate_plateau(21, 1.8, 1.8, 0.0, 1.5, isotropic=True)),
        ("plateau_aniso_k9_sx2.2_sy0.9_t1.1_b1.2", lambda: bivariate_plateau(9, 2.2, 0.9, 1.1, 1.2, isotropic=False)),
        ("sinc_k21_c1.0472", lambda: circular_lowpass_kernel(math.pi / 3, 21)),
        ("sinc_k13_c2.0_pad21", lambda: circular_lowpass_kernel(2.0, 13, pad_to=21)),
        ("sinc_k7_c2.9", lambda: circular_lowpass_kernel(2.9, 7)),
    ],
)
def test_kernel_matches_reference(reference, key, make):
    assert_kernel(make(), reference[key])


def test_padded_float32_kernel_matches_dataset_recipe(reference):
    kernel = bivariate_generalized_gaussian(15, 2.0, 1.2, -0.9, 3.0, isotropic=False)
    padded = torch.from_numpy(pad_kernel(kernel, 21)).float()
    assert torch.equal(padded, reference["gen_aniso_k15_padded21_float32"])


def test_isotropic_ignores_sigma_y_and_theta():
    np.testing.assert_array_equal(
        bivariate_gaussian(9, 1.3, 2.9, 1.0, True), bivariate_gaussian(9, 1.3, 0.1, 0.0, True)
    )
    assert not np.allclose(bivariate_gaussian(9, 1.3, 2.9, 1.0, False), bivariate_gaussian(9, 1.3, 1.3, 0.0, False))


def test_sampled_kernels_are_normalised_centred_and_reproducible():
    config = DegradationConfig.SEESR
    first = sample_degradation_kernels(config, torch.Generator().manual_seed(7), batch_size=6)
    again = sample_degradation_kernels(config, torch.Generator().manual_seed(7), batch_size=6)
    other = sample_degradation_kernels(config, torch.Generator().manual_seed(8), batch_size=6)
    for stack in (first.blur1, first.blur2, first.sinc):
        assert stack.shape == (6, 21, 21) and stack.dtype == torch.float32
        torch.testing.assert_close(stack.sum(dim=(-1, -2)), torch.ones(6), atol=1e-5, rtol=0)
        # every kernel family used here is point-symmetric about the centre
        torch.testing.assert_close(stack, stack.flip(-1).flip(-2), atol=1e-7, rtol=0)
    assert torch.equal(first.blur1, again.blur1) and torch.equal(first.sinc, again.sinc)
    assert not torch.equal(first.blur1, other.blur1)


def test_kernel_family_frequencies_follow_the_config():
    """Sinc probability 0.1 and the iso share 0.45 of the rest show up in a few hundred draws."""
    generator = torch.Generator().manual_seed(0)
    config = BlurKernelConfig(kernel_sizes=(7,), pad_to=7)
    negatives, isotropic, draws = 0, 0, 400
    for _ in range(draws):
        kernel = sample_blur_kernel(config, generator)
        if (kernel < 0).any():  # only the sinc has negative lobes
            negatives += 1
        elif torch.allclose(kernel, kernel.t(), atol=1e-7) and torch.allclose(kernel, kernel.flip(-1), atol=1e-7):
            isotropic += 1  # iso, generalized_iso, plateau_iso (0.69 of the non-sinc draws)
    assert 20 <= negatives <= 65
    assert 0.55 <= isotropic / (draws - negatives) <= 0.85


def test_final_sinc_kernel_is_pulse_or_sinc():
    never = DegradationConfig.SEESR.replace(final_sinc_prob=0.0)
    always = DegradationConfig.SEESR.replace(final_sinc_prob=1.0)
    pulse = sample_final_sinc_kernel(never, torch.Generator().manual_seed(0))
    assert pulse.sum() == 1 and pulse[10, 10] == 1
    sinc = sample_final_sinc_kernel(always, torch.Generator().manual_seed(0))
    assert sinc.shape == (21, 21) and sinc[10, 10] < 1 and abs(float(sinc.sum()) - 1) < 1e-5


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="kernel_probs"):
        BlurKernelConfig(kernel_types=("iso",), kernel_probs=(0.5, 0.5))
    with pytest.raises(ValueError, match="odd"):
        BlurKernelConfig(kernel_sizes=(8,))
    config = DegradationConfig.SEESR
    assert DegradationConfig.from_dict(config.to_dict()) == config
    assert DegradationConfig.preset("RealESRGAN") == DegradationConfig.REALESRGAN
    with pytest.raises(ValueError, match="unknown degradation preset"):
        DegradationConfig.preset("bsrgan")
