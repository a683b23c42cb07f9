"""Degradation ops against fixture E (official BasicSR / DiffJPEG outputs on degradation_gt.png)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from seesr.degradations import (
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    gaussian_noise,
    jpeg_compress,
    resize,
    usm_sharp,
)
from seesr.degradations.ops import reflect_pad, usm_kernel
from tests.conftest import BLOCKS

ATOL = 1e-6


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(BLOCKS / "degradation.safetensors"))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def assert_jpeg_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """atol 1e-5, except that a few 8x8 blocks may differ by <= 0.1 where a rounding boundary flips."""
    assert actual.shape == expected.shape
    diff = (actual - expected).abs()
    assert float(diff.max()) <= 0.1
    height, width = diff.shape[-2:]
    padded = torch.nn.functional.pad(diff, (0, (-width) % 8, 0, (-height) % 8))
    blocks = padded.unfold(-2, 8, 8).unfold(-2, 8, 8).amax(dim=(-1, -2))
    assert int((blocks > 1e-5).sum()) <= 2


def test_usm_kernel_and_sharpening(ref):
    assert_close(usm_kernel(51)[None], ref["usm_kernel"])
    assert_close(usm_sharp(ref["gt"]), ref["usm_out"])
    assert_close(usm_sharp(ref["gt"], weight=0.8, threshold=5), ref["usm_out_w0.8_t5"])


def test_usm_separable_option_is_close(ref):
    fast = usm_sharp(ref["gt"], separable=True)
    torch.testing.assert_close(fast, ref["usm_out"], atol=1e-5, rtol=0)


def test_filter2d_single_and_per_sample_kernels(ref):
    assert_close(filter2d(ref["usm_out"], ref["kernel1"]), ref["filter2D_single"])
    batch = torch.cat([ref["gt"], ref["gt"].flip(-1)])
    kernels = torch.cat([ref["kernel1"], ref["sinc_kernel"]])
    assert_close(filter2d(batch, kernels), ref["filter2D_batch"])
    with pytest.raises(ValueError, match="kernels for a batch"):
        filter2d(batch, torch.cat([kernels, kernels]))


def test_reflect_pad_matches_torch_and_handles_tiny_images():
    image = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    expected = torch.nn.functional.pad(image, (3, 3, 3, 3), mode="reflect")
    assert torch.equal(reflect_pad(image, 3), expected)
    tiny = torch.tensor([[[[1.0, 2.0, 3.0]]]])  # 1x3: torch's reflect pad refuses pad >= size
    padded = reflect_pad(tiny, 4)
    assert padded.shape == (1, 1, 9, 11)
    assert padded[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]


def test_first_order_chain_with_fixed_choices(ref):
    """blur(kernel1) -> bicubic x0.7 -> Gaussian noise sigma 12.5 (seed 2023) -> clamp -> JPEG q=63.7."""
    blurred = filter2d(ref["usm_out"], ref["kernel1"])
    assert_close(blurred, ref["filter2D_single"])
    resized = resize(blurred, "bicubic", scale_factor=0.7)
    assert_close(resized, ref["deg1_resize"])  # floor(96*0.7) x floor(128*0.7) = 67 x 89
    generator = torch.Generator().manual_seed(2023)
    noise = gaussian_noise(resized, torch.tensor([12.5]), torch.tensor([0.0]), generator)
    assert_close(noise, ref["deg1_gaussian_noise"])
    noisy = add_gaussian_noise(resized, torch.tensor([12.5]), 0, torch.Generator().manual_seed(2023))
    assert_close(noisy, ref["deg1_noisy"])
    assert_jpeg_close(jpeg_compress(noisy, ref["deg1_jpeg_quality"]), ref["deg1_jpeg"])


def test_gray_gaussian_noise(ref):
    generator = torch.Generator().manual_seed(2024)
    noise = gaussian_noise(ref["deg1_resize"], torch.tensor([7.0]), torch.tensor([1.0]), generator)
    assert_close(noise, ref["gaussian_gray_noise_sigma7"])
    assert torch.equal(noise[:, 0], noise[:, 1]) and torch.equal(noise[:, 1], noise[:, 2])


def test_poisson_noise(ref):
    generator = torch.Generator().manual_seed(2025)
    noisy = add_poisson_noise(ref["deg1_resize"], torch.tensor([1.5]), torch.tensor([0.0]), generator)
    assert_close(noisy, ref["poisson_noisy_scale1.5"])


def test_gray_poisson_noise_is_channel_shared():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noisy = add_poisson_noise(image, 1.0, torch.tensor([1.0, 0.0]), torch.Generator().manual_seed(1), clip=False)
    noise = noisy - image
    torch.testing.assert_close(noise[0, 0], noise[0, 1])
    assert not torch.allclose(noise[1, 0], noise[1, 1])


def test_jpeg_per_image_quality_and_scalar(ref):
    x = torch.cat([ref["gt"][..., :90, :118], ref["gt"].flip(-2)[..., :90, :118]])
    assert_jpeg_close(jpeg_compress(x, ref["jpeg_qualities"]), ref["jpeg_out"])
    assert_jpeg_close(jpeg_compress(x, 50), ref["jpeg_out_q50_scalar"])
    # the quality is used unrounded: 63.7 and 64 give different results
    assert not torch.equal(jpeg_compress(x[:1], 63.7), jpeg_compress(x[:1], 64))
    with pytest.raises(ValueError, match="qualities"):
        jpeg_compress(x, torch.tensor([30.0, 40.0, 50.0]))


def test_resize_modes_and_sizes():
    image = torch.rand(2, 3, 40, 30)
    for mode in ("area", "bilinear", "bicubic"):
        assert resize(image, mode, scale_factor=0.5).shape == (2, 3, 20, 15)
        assert resize(image, mode, size=(11, 7)).shape == (2, 3, 11, 7)
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize(image, "nearest", scale_factor=0.5)
