"""The full second-order degradation: presets, determinism, shapes, ranges, batching, GPU."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from seesr.degradations import (
    DegradationConfig,
    DegradationStage,
    degrade,
    sample_degradation_kernels,
    synthesize_pair,
    usm_sharp,
)
from tests.conftest import BLOCKS


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """The fixture-E photo crop, (1, 3, 96, 128) in [0, 1]."""
    array = torch.tensor(list(Image.open(BLOCKS / "degradation_gt.png").convert("RGB").getdata()), dtype=torch.float32)
    return (array / 255).view(96, 128, 3).permute(2, 0, 1)[None].contiguous()


def test_seesr_preset_has_the_official_values():
    """REFERENCE.md §6.2-6.3 (Real-ESRGAN x4plus / SeeSR make_paired_data)."""
    config = DegradationConfig.SEESR
    first, second = config.first, config.second
    for stage in (first, second):
        assert stage.blur.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
        assert stage.blur.kernel_types == (
            "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso",
        )  # fmt: skip
        assert stage.blur.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
        assert stage.blur.sinc_prob == 0.1
        assert stage.blur.betag_range == (0.5, 4.0) and stage.blur.betap_range == (1.0, 2.0)
        assert stage.blur.rotation_range == (-math.pi, math.pi) and stage.blur.pad_to == 21
        assert stage.resize_modes == ("area", "bilinear", "bicubic")
        assert stage.gaussian_noise_prob == 0.5 and stage.gray_noise_prob == 0.4
        assert stage.jpeg_range == (30.0, 95.0)
    assert first.blur.sigma_range == (0.2, 3.0) and second.blur.sigma_range == (0.2, 1.5)
    assert first.blur_prob == 1.0 and second.blur_prob == 0.8
    assert first.resize_probs == (0.2, 0.7, 0.1) and first.resize_range == (0.15, 1.5)
    assert second.resize_probs == (0.3, 0.4, 0.3) and second.resize_range == (0.3, 1.2)
    assert first.noise_range == (1.0, 30.0) and first.poisson_scale_range == (0.05, 3.0)
    assert second.noise_range == (1.0, 25.0) and second.poisson_scale_range == (0.05, 2.5)
    assert config.final_sinc_prob == 0.8
    assert config.sharpen_gt is not None and (config.sharpen_gt.weight, config.sharpen_gt.threshold) == (0.5, 10.0)
    assert config.round_output is False
    assert DegradationConfig.REALESRGAN == config.replace(round_output=True)
    assert isinstance(second, DegradationStage) and type(first) is type(second)


def test_same_seed_same_lr_different_seed_different_lr(hr):
    a = degrade(hr, DegradationConfig.SEESR, torch.Generator().manual_seed(11))
    b = degrade(hr, DegradationConfig.SEESR, torch.Generator().manual_seed(11))
    c = degrade(hr, DegradationConfig.SEESR, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert a.shape == c.shape and not torch.equal(a, c)
    assert torch.equal(degrade(hr, DegradationConfig.SEESR, 11), a)  # an int seed is a CPU generator


def test_generator_is_required(hr):
    with pytest.raises(TypeError, match="explicit torch.Generator"):
        degrade(hr, DegradationConfig.SEESR, None)


@pytest.mark.parametrize("scale", [4, 2])
def test_output_size_range_and_dtype(hr, scale):
    for seed in range(4):
        lr = degrade(hr, DegradationConfig.SEESR, seed, scale=scale)
        assert lr.shape == (1, 3, 96 // scale, 128 // scale) and lr.dtype == torch.float32
        assert float(lr.min()) >= 0 and float(lr.max()) <= 1
        assert not torch.equal(lr, torch.nn.functional.interpolate(hr, scale_factor=1 / scale, mode="area"))


def test_realesrgan_preset_rounds_to_8_bit(hr):
    lr = degrade(hr, DegradationConfig.REALESRGAN, 3)
    torch.testing.assert_close(lr * 255, torch.round(lr * 255), atol=1e-4, rtol=0)
    seesr = degrade(hr, DegradationConfig.SEESR, 3)
    assert not torch.allclose(seesr * 255, torch.round(seesr * 255), atol=1e-3)
    torch.testing.assert_close(lr, torch.round(seesr * 255) / 255, atol=1e-6, rtol=0)


def test_batch_on_cpu_with_per_image_kernels(hr):
    batch = torch.cat([hr, hr.flip(-1), hr.flip(-2)])
    generator = torch.Generator().manual_seed(5)
    kernels = sample_degradation_kernels(DegradationConfig.SEESR, generator, 3)
    lr = degrade(batch, DegradationConfig.SEESR, generator, kernels=kernels)
    assert lr.shape == (3, 3, 24, 32)
    assert not torch.equal(lr[0], lr[1].flip(-1))  # per-image kernels, noise and JPEG quality
    again = degrade(batch, DegradationConfig.SEESR, torch.Generator().manual_seed(5))
    assert torch.equal(lr, again)  # sampling the kernels inside consumes the generator identically
    with pytest.raises(ValueError, match="kernels for 3 images"):
        degrade(batch[:2], DegradationConfig.SEESR, 0, kernels=kernels)


def test_identity_like_config_reduces_to_a_plain_resize(hr):
    """With blur, noise and JPEG switched off the pipeline is a deterministic down-scale: checks the plumbing."""
    quiet = DegradationStage(
        blur_prob=0.0,
        resize_probs=(0.0, 0.0, 1.0),
        resize_modes=("area",),
        gaussian_noise_prob=1.0,
        noise_range=(1e-9, 2e-9),
        gray_noise_prob=0.0,
        jpeg_range=(99.99, 99.99),
    )
    config = DegradationConfig(first=quiet, second=quiet, final_sinc_prob=0.0, sharpen_gt=None)
    lr = degrade(hr, config, 0)
    expected = torch.nn.functional.interpolate(hr, size=(24, 32), mode="area")
    # JPEG at q 99.99 keeps the luma (4:2:0 still blurs the chroma)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((lr * luma).sum(1), (expected * luma).sum(1), atol=1e-2, rtol=0)
    assert float((lr - expected).abs().mean()) < 0.01


def test_synthesize_pair_returns_sharpened_gt(hr):
    gt, lr = synthesize_pair(hr, DegradationConfig.SEESR, 9)
    assert torch.equal(gt, usm_sharp(hr))
    assert torch.equal(lr, degrade(usm_sharp(hr), DegradationConfig.SEESR, 9))
    plain_gt, _ = synthesize_pair(hr, DegradationConfig.SEESR.replace(sharpen_gt=None), 9)
    assert torch.equal(plain_gt, hr)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="RGB batch"):
        degrade(torch.rand(3, 32, 32), DegradationConfig.SEESR, 0)
    with pytest.raises(ValueError, match="at least 16"):
        degrade(torch.rand(1, 3, 12, 40), DegradationConfig.SEESR, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator(hr):
    cpu = degrade(hr, DegradationConfig.SEESR, torch.Generator().manual_seed(21))
    cuda = degrade(hr.cuda(), DegradationConfig.SEESR, torch.Generator().manual_seed(21))
    assert cuda.device.type == "cuda"
    # same random draws; only float op order differs (JPEG rounding may flip a few coefficients)
    assert float((cuda.cpu() - cpu).abs().mean()) < 1e-3
