"""Banded (memory-bounded) VAE encode/decode vs the untiled tiny VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from seesr.pipeline.vae_tiling import VAETilingConfig, vae_decode, vae_encode_moments
from tests.conftest import TINY


@pytest.fixture(scope="module")
def vae():
    return AutoencoderKL.from_pretrained(TINY / "vae").eval()


@pytest.fixture(scope="module")
def image():
    photo = Image.open(TINY / "ram" / "ram_input_source.png").convert("RGB").resize((136, 104), Image.BICUBIC)
    return torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr_uint8(a: torch.Tensor, b: torch.Tensor) -> float:
    a8 = ((a / 2 + 0.5).clamp(0, 1) * 255).round()
    b8 = ((b / 2 + 0.5).clamp(0, 1) * 255).round()
    mse = float(((a8 - b8) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_official_activation_thresholds():
    config = VAETilingConfig()
    assert not config.encode_is_tiled(1088, 600) and config.encode_is_tiled(1089, 600)
    assert not config.decode_is_tiled(246, 10) and config.decode_is_tiled(10, 247)
    assert not VAETilingConfig(enabled=False).decode_is_tiled(5000, 5000)


@torch.no_grad()
def test_small_sizes_use_the_plain_vae(vae, image):
    moments = vae_encode_moments(vae, image)
    torch.testing.assert_close(moments, vae.quant_conv(vae.encoder(image)), rtol=0, atol=0)
    latents = moments[:, :4]
    torch.testing.assert_close(vae_decode(vae, latents), vae.decode(latents).sample, rtol=0, atol=0)


@torch.no_grad()
def test_banded_encode_matches_untiled(vae, image):
    reference = vae_encode_moments(vae, image, VAETilingConfig(enabled=False))
    banded_config = VAETilingConfig(encoder_tile_size=24, encoder_pad=0)  # ~6 % of the image per band
    assert banded_config.encode_is_tiled(*image.shape[-2:])
    banded = vae_encode_moments(vae, image, banded_config)
    torch.testing.assert_close(banded, reference, rtol=0, atol=1e-4)


@torch.no_grad()
def test_banded_decode_is_seam_free(vae, image):
    latents = vae_encode_moments(vae, image, VAETilingConfig(enabled=False))[:, :4]
    reference = vae_decode(vae, latents, VAETilingConfig(enabled=False))
    banded_config = VAETilingConfig(decoder_tile_size=3, decoder_pad=0)
    assert banded_config.decode_is_tiled(*latents.shape[-2:])
    banded = vae_decode(vae, latents, banded_config)
    assert banded.shape == reference.shape
    assert psnr_uint8(banded, reference) >= 40.0
    torch.testing.assert_close(banded, reference, rtol=0, atol=1e-3)
