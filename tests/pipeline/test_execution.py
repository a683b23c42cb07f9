"""Execution presets of the one loop (tiny bundle, CPU): fast in fp32 = exact, restoring what the fast path changes,
fail-safe graph/compile fallback, offload chain, backend flags, diffusers' callback_on_step_end and interrupt."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from seesr.pipeline import FastPathConfig
from seesr.pipeline.denoise import FastPathError, GuidedDenoiser, NoisePredictor, weights_version
from seesr.pipeline.execution import EXACT, FAST, backend_flags, fast_path_config_for, offload_sequence
from seesr.pipeline.pipeline_seesr import SeeSRPipeline
from seesr.pipeline.tiling import tile_grid
from tests.conftest import TINY
from tests.pipeline.helpers import small_lr, tiny_pipeline

#: 20x16 LR -> latent 8x10; tiles of 5 with overlap 2 -> 6 tiles (the tiled loop), 3 DDPM steps
TILED = dict(num_inference_steps=3, process_size=64, seed=7, latent_tile_size=5, latent_tile_overlap=2)


def _fresh() -> SeeSRPipeline:
    """A pipeline of its own (the fast path casts models in place; the shared tiny_pipeline must not change)."""
    pipe = SeeSRPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def exact_run():
    return tiny_pipeline()(small_lr(), **TILED, return_intermediates=True)


def test_exact_is_the_default_preset():
    assert tiny_pipeline().execution is EXACT and EXACT.dtype is None and EXACT.max_tile_batch_size == 1
    assert FastPathConfig is type(FAST) and FAST.name == "fast" and FAST.step_noise == "upfront"


def test_fast_preset_in_fp32_is_the_exact_tensor(exact_run):
    """Same kernels (one tile per call, no channels-last), float32 state and upfront float32 noise: the same values
    as the exact preset's per-step draws, so every tensor is identical."""
    pipe = _fresh()
    pipe.enable_fast_path(replace(FAST, dtype=torch.float32, channels_last=False, tile_batch_size=1))
    fast = pipe(small_lr(), **TILED, return_intermediates=True).intermediates[0]
    exact = exact_run.intermediates[0]
    assert len(exact["tiles"]) == 6
    for name in ("start_latents", "step_noise_pred", "step_latents_out", "final_latents", "decoded_image"):
        assert torch.equal(fast[name], exact[name]), name
    assert np.array_equal(fast["final_output_uint8"], exact["final_output_uint8"])


def test_fast_preset_batched_tiles_in_fp32_within_tolerance(exact_run):
    """Batched (4 tiles per call, last call padded) channels-last tiles take other kernels: same maths, another
    summation order. Measured over seeds 0-3: max |Δ| 3.3e-6-5.5e-6 on ε̂ (values up to 1.4) and 9.5e-6-1.5e-5 on the
    final latents (values up to 11); bounds: the fixture D tolerances, 1e-4 and 1e-3."""
    pipe = _fresh()
    pipe.enable_fast_path(replace(FAST, dtype=torch.float32, tile_batch_size=4))
    fast = pipe(small_lr(), **TILED, return_intermediates=True).intermediates[0]
    exact = exact_run.intermediates[0]
    torch.testing.assert_close(fast["step_noise_pred"], exact["step_noise_pred"], rtol=0, atol=1e-4)
    torch.testing.assert_close(fast["final_latents"], exact["final_latents"], rtol=0, atol=1e-3)
    (key,) = pipe.noise_predictor().modes
    assert key[0][0] == (8, 4, 5, 5)  # 4 tiles x CFG pair, static shape for both calls (6 tiles -> 4 + 2 padded)


def test_disable_fast_path_restores_dtypes_and_format():
    pipe = _fresh()
    before = {name: getattr(pipe, name).dtype for name in ("unet", "controlnet", "vae", "text_encoder")}
    pipe.enable_fast_path()
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    pipe.disable_fast_path()
    assert {name: getattr(pipe, name).dtype for name in before} == before
    assert pipe.fast_path is None and pipe.execution is EXACT
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous()


def test_backend_flags_are_set_during_a_call_and_restored():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        with backend_flags(FAST, torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.benchmark)
        with pytest.raises(RuntimeError), backend_flags(FAST, torch.device("cuda")):
            raise RuntimeError("boom")
        assert not torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
        with backend_flags(EXACT, torch.device("cuda")):
            assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def _predictor_inputs():
    pipe = tiny_pipeline()
    generator = torch.Generator().manual_seed(0)
    width = pipe.text_encoder.config.hidden_size
    return pipe, (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor(501),
        torch.randn(2, 77, width, generator=generator),
        torch.randn(2, 145, 512, generator=generator),
        torch.rand(2, 3, 64, 64, generator=generator),
    )


def test_failed_compilation_warns_once_and_runs_eagerly(monkeypatch, caplog):
    def broken_compile(function, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    pipe, inputs = _predictor_inputs()
    eager = NoisePredictor(pipe.unet, pipe.controlnet)(*inputs)
    predictor = NoisePredictor(pipe.unet, pipe.controlnet, compile=True)
    with caplog.at_level(logging.WARNING, logger="seesr.pipeline.denoise"):
        first = predictor(*inputs)
        second = predictor(*inputs)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "no C compiler" in warnings[0] and "(2, 4, 8, 8)" in warnings[0]
    assert torch.equal(first, eager) and torch.equal(second, eager)
    strict = NoisePredictor(pipe.unet, pipe.controlnet, compile=True, strict=True)
    with pytest.raises(FastPathError, match="torch.compile failed for sample shape \\(2, 4, 8, 8\\).*no C compiler"):
        strict(*inputs)


def test_weights_version_tracks_moves_casts_and_writes():
    pipe = _fresh()
    version = weights_version(pipe.unet, pipe.controlnet)
    assert weights_version(pipe.unet, pipe.controlnet) == version
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(0)  # a weight load writes in place
    written = weights_version(pipe.unet, pipe.controlnet)
    assert written != version
    torch.nn.Module.to(pipe.controlnet, dtype=torch.bfloat16)
    assert weights_version(pipe.unet, pipe.controlnet) != written
    pipe.noise_predictor()
    assert pipe._fast_predictor is not None
    pipe.to("cpu")
    assert pipe._fast_predictor is None  # .to() drops cached graphs and compiled code


def test_strict_fast_config():
    config = fast_path_config_for(torch.device("cpu"), True, strict=True)
    assert config is not None and config.strict and not config.cuda_graphs


class _OffloadHook:
    """accelerate's model-offload hook (``cpu_offload_with_hook``): before its model runs it offloads the previous
    model of the chain and loads its own; diffusers chains the models of ``model_cpu_offload_seq`` in order and gives
    every other model a hook without predecessor."""

    def __init__(self, name: str, previous: _OffloadHook | None, on_device: set[str], trips: list[str]) -> None:
        self.name, self.previous, self.on_device, self.trips = name, previous, on_device, trips

    def run(self) -> None:
        if self.previous is not None and self.previous.name in self.on_device:
            self.on_device.discard(self.previous.name)
            self.trips.append(self.previous.name)
        self.on_device.add(self.name)


def _controlnet_trips(sequence: str, steps: int) -> int:
    on_device: set[str] = set()
    trips: list[str] = []
    hooks, previous = {}, None
    for name in sequence.split("->"):
        previous = hooks[name] = _OffloadHook(name, previous, on_device, trips)
    for name in ("tagger", "text_encoder", "controlnet", "unet"):
        hooks.setdefault(name, _OffloadHook(name, None, on_device, trips))
    hooks["tagger"].run()
    hooks["text_encoder"].run()
    for _ in range(steps):
        hooks["controlnet"].run()
        hooks["unet"].run()
    return trips.count("controlnet")


def test_offload_keeps_controlnet_with_the_unet_for_the_whole_loop():
    sequence, resident = offload_sequence("model")
    assert resident == ["vae"] and SeeSRPipeline.model_cpu_offload_seq.split("->")[-2:] == ["unet", "vae"]
    assert _controlnet_trips(sequence, steps=5) == 0
    assert _controlnet_trips("tagger->text_encoder->controlnet->unet", steps=5) == 5  # the old chain
    assert offload_sequence("sequential") == ("text_encoder->unet", ["vae", "tagger"])


def test_callback_on_step_end_gets_requested_tensors_and_can_replace_latents():
    pipe = tiny_pipeline()
    calls = []

    def callback(pipeline, step, timestep, kwargs):
        calls.append((pipeline, step, timestep, sorted(kwargs)))
        if step == 2:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return None

    output = pipe(
        small_lr(),
        **TILED,
        return_intermediates=True,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "noise_pred"],
    )
    timesteps = output.intermediates[0]["timesteps"].tolist()
    assert [call[1:] for call in calls] == [(i, t, ["latents", "noise_pred"]) for i, t in enumerate(timesteps)]
    assert all(call[0] is pipe for call in calls)
    assert torch.count_nonzero(output.intermediates[0]["final_latents"]) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(small_lr(), **TILED, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["weights"])


def test_interrupt_stops_after_the_step_and_returns_what_it_has(exact_run):
    pipe = _fresh()
    steps = []

    def stop_after_second(pipeline, step, timestep, kwargs):
        steps.append(step)
        if step == 1:
            pipeline._interrupt = True
        return {}

    output = pipe(
        [small_lr(), small_lr(1)], **TILED, return_intermediates=True, callback_on_step_end=stop_after_second
    )
    assert steps == [0, 1] and pipe.interrupt
    assert len(output.images) == 1  # the second image was not started
    saved = output.intermediates[0]
    assert saved["step_latents_out"].shape[0] == 2
    assert torch.equal(saved["final_latents"], exact_run.intermediates[0]["step_latents_out"][1:2])
    assert output.images[0].size == exact_run.images[0].size
    again = pipe(small_lr(), **TILED)  # the flag is reset by the next call
    assert not pipe.interrupt and np.array_equal(np.asarray(again.images[0]), np.asarray(exact_run.images[0]))


def test_cfg_pair_in_two_calls_keeps_the_per_row_maths():
    """``batch_cfg_pair=False`` halves each call's batch (uncond rows, then cond rows): other CPU kernels. Measured on
    the guided ε̂ (values up to 1.2, guidance 5.5) over seeds 0-2: max |Δ| 4.5e-6-5.6e-6 untiled, 0 tiled; bound 1e-4
    (fixture D's tolerance for ε̂)."""
    pipe, (_, timestep, prompt, image, control) = _predictor_inputs()
    latents = torch.randn(1, 4, 10, 8, generator=torch.Generator().manual_seed(1))
    control = torch.rand(2, 3, 80, 64, generator=torch.Generator().manual_seed(2))
    shapes: list[tuple[int, ...]] = []
    predictor = NoisePredictor(pipe.unet, pipe.controlnet)

    def recording(sample, *args):
        shapes.append(tuple(sample.shape))
        return predictor(sample, *args)

    for tiles in (tile_grid(10, 8, 96, 4), tile_grid(10, 8, 5, 2)):
        common = (recording, (10, 8), tiles, prompt, image, control, 5.5, 1.0, 4)
        together = GuidedDenoiser(*common)(latents, timestep)
        shapes.clear()
        apart = GuidedDenoiser(*common, batch_cfg_pair=False)(latents, timestep)
        torch.testing.assert_close(apart, together, rtol=0, atol=1e-4)
        rows = 1 if len(tiles) == 1 else 4  # the CFG half of one call: 1 untiled, 4 tiles of a batch
        assert shapes and all(shape[0] == rows for shape in shapes)


class _FakeCuda:
    """Stands in for torch.cuda's graph API on the CPU: "capture" runs the call once (recording the pool it was
    given), "replay" counts (its output buffer keeps the captured values, as a real replay of the same inputs)."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.captures, self.replays, self.pools, self.fail = 0, 0, [], fail
        fake = self

        class Graph:
            def replay(self) -> None:
                fake.replays += 1

        class Stream:
            def __init__(self, device=None) -> None:
                pass

            def wait_stream(self, other) -> None:
                pass

        @contextlib.contextmanager
        def graph(graph, pool=None):
            fake.pools.append(pool)
            if fake.fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            fake.captures += 1
            yield

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(NoisePredictor, "_on_cuda", staticmethod(lambda sample: True))


def test_graph_cache_keys_on_shape_and_weights_and_shares_one_pool(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    pipe = _fresh()
    _, inputs = _predictor_inputs()
    eager = NoisePredictor(pipe.unet, pipe.controlnet)(*inputs)
    predictor = NoisePredictor(pipe.unet, pipe.controlnet, cuda_graphs=True)
    assert torch.equal(predictor(*inputs), eager) and (fake.captures, fake.replays) == (1, 1)
    assert torch.equal(predictor(*inputs), eager) and (fake.captures, fake.replays) == (1, 2)  # replayed
    half = tuple(x[:1] if x.dim() else x for x in inputs)
    predictor(*half)  # a new shape: a new graph
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(0)  # new weights written in place: the old graphs must not replay
    predictor(*inputs)
    assert fake.captures == 2  # the version is read once per image, not at every step
    predictor.refresh()  # what SeeSRPipeline.noise_predictor() does before each image
    predictor(*inputs)
    assert fake.captures == 3 and set(predictor.modes.values()) == {"graph"}
    assert len(fake.pools) == 3 and fake.pools[0] is not None  # one shared pool for every graph
    assert all(pool is fake.pools[0] for pool in fake.pools)


def test_failed_capture_warns_once_and_runs_that_shape_eagerly(monkeypatch, caplog):
    _FakeCuda(monkeypatch, fail=True)
    pipe, inputs = _predictor_inputs()
    eager = NoisePredictor(pipe.unet, pipe.controlnet)(*inputs)
    predictor = NoisePredictor(pipe.unet, pipe.controlnet, cuda_graphs=True)
    with caplog.at_level(logging.WARNING, logger="seesr.pipeline.denoise"):
        results = [predictor(*inputs) for _ in range(3)]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "CUDA graph capture failed for sample shape (2, 4, 8, 8)" in messages[0]
    assert "stream is capturing" in messages[0]
    assert all(torch.equal(result, eager) for result in results)
    strict = NoisePredictor(pipe.unet, pipe.controlnet, cuda_graphs=True, strict=True)
    with pytest.raises(FastPathError, match="CUDA graph capture failed"):
        strict(*inputs)
