"""The loop's building blocks (tile batching, padding, step plan, noise, banded VAE storage) against the official
per-tile maths (tiny fixture models, CPU)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler

from seesr.pipeline import execution as fast
from seesr.pipeline.denoise import GuidedDenoiser, NoisePredictor, StepNoise, denoise
from seesr.pipeline.schedulers import DDPMPlan
from seesr.pipeline.tiling import blend, tile_grid
from seesr.pipeline.vae_tiling import VAETilingConfig, vae_decode, vae_encode_moments
from tests.conftest import TINY


def _inputs(height: int, width: int, cfg: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = 2 if cfg else 1
    return {
        "latents": torch.randn(1, 4, height, width, generator=generator),
        "prompt_embeds": torch.randn(rows, 77, 16, generator=generator),
        "image_embeds": torch.randn(rows, 145, 512, generator=generator),
        "control": torch.rand(rows, 3, 8 * height, 8 * width, generator=generator),
    }


def denoise_step(
    unet, controlnet, latents, timestep, prompt, image, control, guidance, scale=1.0, tiles=None, _=None, size=1
):
    """The official per-tile guided prediction: :class:`GuidedDenoiser` one tile per call, no padding."""
    tiles = tiles or tile_grid(*latents.shape[-2:], 96, 4)
    predictor = NoisePredictor(unet, controlnet)
    denoiser = GuidedDenoiser(
        predictor,
        tuple(latents.shape[-2:]),
        tiles,
        prompt,
        image,
        control,
        guidance,
        scale,
        size,
        pad_tiles=False,
        float32_output=False,
    )
    return denoiser(latents, timestep)


def test_upfront_noise_equals_per_step_draws() -> None:
    """Drawing every step's noise before the loop gives the values diffusers draws step by step (same generator)."""
    scheduler = DDPMScheduler.from_pretrained(TINY / "scheduler")
    scheduler.set_timesteps(4)
    plan = DDPMPlan(scheduler)
    shape = (1, 4, 6, 5)
    upfront = StepNoise(plan, shape, torch.Generator().manual_seed(11), torch.device("cpu"), "upfront")
    per_step = StepNoise(plan, shape, torch.Generator().manual_seed(11), torch.device("cpu"), "per_step")
    prediction = torch.zeros(shape)
    for index in range(4):
        assert torch.equal(upfront(index, prediction), per_step(index, prediction))


@pytest.mark.parametrize(
    ("tiles", "limit", "expected"), [(1, 8, 1), (9, 8, 3), (9, 4, 3), (6, 4, 3), (36, 8, 6), (7, 8, 7), (5, 2, 1)]
)
def test_choose_tile_batch_size(tiles: int, limit: int, expected: int) -> None:
    size = fast.choose_tile_batch_size(tiles, limit)
    assert size == expected
    assert math.ceil(tiles / size) * size <= math.ceil(tiles / limit) * limit


class _Recorder:
    """Wraps a predictor and records the sample shape of every call."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, sample: torch.Tensor, *args: Any) -> torch.Tensor:
        self.shapes.append(tuple(sample.shape))
        return self.predictor(sample, *args)


@pytest.fixture(scope="module")
def tiled_reference(tiny_models: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list, torch.Tensor]:
    """The official per-tile guided prediction (tile batch 1) on a 24x20 latent with 6 tiles."""
    data = _inputs(24, 20)
    tiles = tile_grid(24, 20, 12, 4)
    assert len(tiles) == 6
    reference = denoise_step(
        tiny_models["unet"],
        tiny_models["controlnet"],
        data["latents"],
        torch.tensor(501),
        data["prompt_embeds"],
        data["image_embeds"],
        data["control"],
        5.5,
        0.8,
        tiles,
        None,
        1,
    )
    return data, tiles, reference


@pytest.mark.parametrize("tile_batch_size", [1, 4, 6])
def test_batched_tiles_match_the_official_per_tile_step(
    tiny_models: dict[str, Any], tiled_reference: tuple, tile_batch_size: int
) -> None:
    data, tiles, reference = tiled_reference
    recorder = _Recorder(NoisePredictor(tiny_models["unet"], tiny_models["controlnet"]))
    denoiser = GuidedDenoiser(
        recorder,
        (24, 20),
        tiles,
        data["prompt_embeds"],
        data["image_embeds"],
        data["control"],
        5.5,
        0.8,
        tile_batch_size,
    )
    ours = denoiser(data["latents"], torch.tensor(501))
    assert ours.dtype == torch.float32
    if tile_batch_size == 1:
        assert torch.equal(ours, reference)  # same calls, same order: bit-identical
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=0)
    # static shapes: every call has the same batch (the last group is padded)
    assert len(set(recorder.shapes)) == 1
    assert recorder.shapes[0][0] == 2 * tile_batch_size
    assert len(recorder.shapes) == math.ceil(6 / tile_batch_size)


def test_untiled_without_cfg_is_one_call_of_batch_one(tiny_models: dict[str, Any]) -> None:
    unet, controlnet = tiny_models["unet"], tiny_models["controlnet"]
    data = _inputs(8, 8, cfg=False)
    tiles = tile_grid(8, 8, 96, 4)
    recorder = _Recorder(NoisePredictor(unet, controlnet))
    denoiser = GuidedDenoiser(
        recorder, (8, 8), tiles, data["prompt_embeds"], data["image_embeds"], data["control"], 1.0
    )
    timestep = torch.tensor(999)
    ours = denoiser(data["latents"], timestep)
    reference = denoise_step(
        unet, controlnet, data["latents"], timestep, data["prompt_embeds"], data["image_embeds"], data["control"], 1.0
    )
    assert recorder.shapes == [(1, 4, 8, 8)]
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_precomputed_normaliser_equals_blend() -> None:
    tiles = tile_grid(30, 22, 12, 4)
    generator = torch.Generator().manual_seed(3)
    predictions = [torch.randn(2, 4, 12, 12, generator=generator) for _ in tiles]
    data = _inputs(30, 22)
    outputs = iter(predictions)
    denoiser = GuidedDenoiser(
        lambda *args: next(outputs),
        (30, 22),
        tiles,
        data["prompt_embeds"],
        data["image_embeds"],
        data["control"],
        1.0,
        tile_batch_size=1,
    )
    denoiser.do_cfg = False  # compare the merged prediction itself
    merged = denoiser(torch.zeros(1, 4, 30, 22), torch.tensor(1))
    assert torch.equal(merged, blend(predictions, tiles, 30, 22))


def test_fast_loop_fp32_matches_the_reference_loop(tiny_models: dict[str, Any]) -> None:
    unet, controlnet, scheduler = (
        tiny_models["unet"],
        tiny_models["controlnet"],
        copy.deepcopy(tiny_models["scheduler"]),
    )
    scheduler.set_timesteps(2)
    data = _inputs(24, 20, seed=1)
    tiles = tile_grid(24, 20, 12, 4)
    generator = torch.Generator().manual_seed(5)
    latents = data["latents"]
    for timestep in scheduler.timesteps:
        noise_pred = denoise_step(
            unet,
            controlnet,
            latents,
            timestep,
            data["prompt_embeds"],
            data["image_embeds"],
            data["control"],
            5.5,
            1.0,
            tiles,
            None,
            1,
        )
        latents = scheduler.step(noise_pred, timestep, latents, generator=generator, return_dict=False)[0]
    denoiser = GuidedDenoiser(
        NoisePredictor(unet, controlnet),
        (24, 20),
        tiles,
        data["prompt_embeds"],
        data["image_embeds"],
        data["control"],
        5.5,
        1.0,
        tile_batch_size=3,
    )
    seen: list[int] = []

    def on_step(index, timestep, noise_pred, latents):
        seen.append(index)
        return latents, False

    plan = DDPMPlan(scheduler)
    noise = StepNoise(plan, data["latents"].shape, torch.Generator().manual_seed(5), torch.device("cpu"), "upfront")
    ours = denoise(denoiser, plan, data["latents"], noise, float32_state=True, on_step=on_step)
    assert seen == [0, 1]
    torch.testing.assert_close(ours, latents, atol=1e-3, rtol=1e-4)
    assert (ours - latents).abs().max() < 1e-4


def test_vae_storage_choices_agree(tiny_pipeline_parts: dict[str, Any]) -> None:
    vae = tiny_pipeline_parts["vae"]
    tiling = VAETilingConfig(encoder_tile_size=32, decoder_tile_size=4, decoder_pad=1)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 112, 96, generator=generator) * 2 - 1
    assert tiling.encode_is_tiled(112, 96)
    torch.testing.assert_close(
        vae_encode_moments(vae, image, tiling, storage="device"),
        vae_encode_moments(vae, image, tiling, storage="cpu"),
        atol=1e-5,
        rtol=0,
    )
    latents = torch.randn(1, 4, 14, 12, generator=generator)
    assert tiling.decode_is_tiled(14, 12)
    torch.testing.assert_close(
        vae_decode(vae, latents, tiling, storage="device"), vae_decode(vae, latents, tiling), atol=1e-5, rtol=0
    )


def test_config_defaults_and_validation() -> None:
    assert fast.fast_path_config_for(torch.device("cpu")) is None
    forced = fast.fast_path_config_for(torch.device("cpu"), True, compile=True)
    assert forced is not None and forced.dtype == torch.bfloat16 and forced.compile and not forced.cuda_graphs
    assert fast.FastPathConfig(dtype=torch.float16).vae_dtype == torch.float32
    assert fast.FastPathConfig().vae_dtype == torch.bfloat16
    with pytest.raises(ValueError):
        fast.FastPathConfig(dtype=torch.int8)
    with pytest.raises(ValueError):
        fast.FastPathConfig(tile_batch_size=0)


def test_offload_needs_an_accelerator() -> None:
    with pytest.raises(ValueError, match="accelerator|CUDA"):
        fast.enable_offload(object(), "model", device="cpu")
    with pytest.raises(ValueError, match="offload mode"):
        fast.enable_offload(object(), "layers")  # type: ignore[arg-type]
