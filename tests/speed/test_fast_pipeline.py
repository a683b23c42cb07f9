"""The fast path inside SeeSRPipeline (tiny bundle, CPU): exactness in fp32, a PSNR bound in bf16, DAPE once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from seesr.pipeline.fast import FastPathConfig
from tests.conftest import TINY

#: bf16 fast path (bf16 ControlNet/UNet/VAE/text encoder, batched tiles) vs the exact fp32 path on fixture D case 2.
#: Measured 45.8-46.3 dB on the tiny bundle over seeds 123 and 1-4 (CPU); random tiny weights amplify rounding more
#: than real ones would.
MIN_BF16_PSNR_DB = 30.0

CASE2 = {"prompt": "None", "num_inference_steps": 4, "process_size": 128, "latent_tile_size": 12, "seed": 123}


def _pipeline():
    from seesr.pipeline.pipeline_seesr import SeeSRPipeline

    pipe = SeeSRPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


@pytest.fixture(scope="module")
def case2_lr() -> Image.Image:
    return Image.open(TINY / "pipeline_case2_lr.png").convert("RGB")


@pytest.fixture(scope="module")
def exact_output(case2_lr: Image.Image) -> np.ndarray:
    """The exact fp32 path (official per-tile loop) on case 2 (6 latent tiles)."""
    return np.asarray(_pipeline()(case2_lr, **CASE2).images[0])


def test_fast_path_fp32_is_the_exact_result(case2_lr: Image.Image, exact_output: np.ndarray) -> None:
    pipe = _pipeline()
    pipe.enable_fast_path(FastPathConfig(dtype=torch.float32, tile_batch_size=4))
    result = pipe(case2_lr, return_intermediates=True, **CASE2)
    output = np.asarray(result.images[0])
    diff = np.abs(output.astype(int) - exact_output.astype(int))
    assert diff.max() <= 4 and (diff == 0).mean() >= 0.999, (diff.max(), (diff == 0).mean())  # AdaIN amplifies 1 LSB
    saved = result.intermediates[0]
    assert saved["step_noise_pred"].shape == (4, 4, 24, 20) and saved["final_latents"].dtype == torch.float32


def test_fast_path_bf16_psnr_bound(case2_lr: Image.Image, exact_output: np.ndarray) -> None:
    pipe = _pipeline()
    config = pipe.enable_fast_path()  # defaults: bf16, channels-last, automatic tile batch
    assert config.dtype == torch.bfloat16 and not config.cuda_graphs  # no CUDA graphs on the CPU
    assert pipe.unet.dtype == pipe.controlnet.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.tagger.dtype == torch.float32  # DAPE stays float32 (tags sit on thresholds)
    output = np.asarray(pipe(case2_lr, **CASE2).images[0])
    assert output.shape == exact_output.shape
    assert _psnr(output, exact_output) >= MIN_BF16_PSNR_DB
    # the cached predictor saw one static shape: 6 tiles -> 1 call of 6 (automatic choice, at most 8 per call)
    assert len(pipe._fast_predictor.modes) == 1
    (key,) = pipe._fast_predictor.modes
    assert key[0][0] == (12, 4, 12, 12)  # 6 tiles x CFG pair


def test_dape_swin_runs_once_per_image(case2_lr: Image.Image) -> None:
    pipe = _pipeline()
    pipe.enable_fast_path(FastPathConfig(dtype=torch.float32))
    calls = []
    # forward_features bypasses the Swin forward hooks; its patch embedding runs once per Swin pass
    handle = pipe.tagger.visual_encoder.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        small = case2_lr.crop((0, 0, 16, 16))
        pipe([small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], num_inference_steps=1, process_size=64, seed=1)
    finally:
        handle.remove()
    assert len(calls) == 2
