"""The one denoising loop of the package (REFERENCE §1.9-§1.10) and its parts.

* :func:`predict_noise`: one ControlNet + UNet evaluation;
* :class:`NoisePredictor`: that call eager, ``torch.compile``'d and/or replayed from CUDA graphs, failing safe;
* :class:`GuidedDenoiser`: the guided ε̂ of one image, latent tiles batched as the execution config says;
* :class:`StepNoise`: every step's variance noise, drawn per step (diffusers' order and dtype) or up front;
* :func:`denoise`: the loop (ε̂, sampler step, callback) without host synchronisation of its own.

How it runs (dtype, batching, graphs, where noise is drawn) comes from :class:`seesr.pipeline.execution.ExecutionConfig`;
the maths is the same for every config.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from seesr.models.image_cross_attention import IMAGE_KEY
from seesr.pipeline.schedulers import StepPlan
from seesr.pipeline.tiling import Tile, gaussian_weights

logger = logging.getLogger(__name__)

__all__ = ["FastPathError", "GuidedDenoiser", "NoisePredictor", "StepNoise", "denoise", "predict_noise"]


def predict_noise(
    unet: Any,
    controlnet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    control_image: torch.Tensor,
    conditioning_scale: float,
) -> torch.Tensor:
    """One ControlNet + UNet evaluation (REFERENCE §1.9 steps 2-3): ε̂ (N, 4, h, w) for ``sample`` (N, 4, h, w),
    a 0-dim ``timestep``, ``prompt_embeds`` (N, 77, D), DAPE ``image_embeds`` (N, 145, 512) and ``control_image``
    (N, 3, 8h, 8w) in [0, 1]; the ControlNet scales its residuals by ``conditioning_scale``."""
    attention_kwargs = {IMAGE_KEY: image_embeds}
    down_residuals, mid_residual = controlnet(
        sample,
        timestep,
        encoder_hidden_states=prompt_embeds,
        controlnet_cond=control_image,
        conditioning_scale=conditioning_scale,
        cross_attention_kwargs=attention_kwargs,
        return_dict=False,
    )
    return unet(
        sample,
        timestep,
        encoder_hidden_states=prompt_embeds,
        cross_attention_kwargs=attention_kwargs,
        down_block_additional_residuals=down_residuals,
        mid_block_additional_residual=mid_residual,
        return_dict=False,
    )[0]


class FastPathError(RuntimeError):
    """A CUDA-graph capture or compilation failed while the execution config is ``strict``."""


@dataclass
class _Graph:
    graph: Any
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


def weights_version(*modules: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced, moved, cast or written in place (no synchronisation)."""
    return tuple(
        (tensor.data_ptr(), tensor.dtype, tensor.device, tensor._version)
        for module in modules
        for tensor in (*module.parameters(), *module.buffers())
    )


class NoisePredictor:
    """:func:`predict_noise` run eagerly, compiled and/or from CUDA graphs.

    ``__call__(sample, timestep, prompt_embeds, image_embeds, control, conditioning_scale)`` -> ε̂ in the model
    dtype. With ``cuda_graphs``, each new key (every input's shape, dtype and device, the scale, and
    :func:`weights_version` of both models, read once per image: :meth:`refresh`) warms up on a side stream and is captured once; later calls copy their
    inputs in and replay it. All graphs share one memory pool (outputs are cloned at once and inputs live outside
    it, so graphs never read each other's memory). The pipeline drops its predictor on ``.to()``, offload and new
    weights; the weights version in the key also keeps a stale graph from replaying after weights written in place.

    If capture or compilation fails, ONE warning names the reason and the shape and that shape runs eagerly from
    then on, unless ``strict`` (then :class:`FastPathError`).
    """

    def __init__(
        self,
        unet: Any,
        controlnet: Any,
        *,
        cuda_graphs: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        max_graphs: int = 8,
        warmup_calls: int = 2,
        strict: bool = False,
    ) -> None:
        self.unet, self.controlnet = unet, controlnet
        self.cuda_graphs, self.max_graphs, self.warmup_calls, self.strict = (
            cuda_graphs,
            max_graphs,
            warmup_calls,
            strict,
        )
        self._graphs: OrderedDict[tuple, _Graph | None] = OrderedDict()
        self._pool: Any = None
        self._weights_key: tuple | None = None
        self._compiled: Callable[..., torch.Tensor] | None = None
        if compile:
            self._compiled = torch.compile(self._eager, mode=compile_mode, dynamic=False)
        #: shapes seen (for tests and logs): key -> "eager" | "compiled" | "graph"
        self.modes: dict[tuple, str] = {}

    def _eager(self, *inputs: Any) -> torch.Tensor:
        return predict_noise(self.unet, self.controlnet, *inputs)

    def refresh(self) -> None:
        """Read the weights' version again at the next graphed call (the pipeline calls this once per image, so
        the per-step key costs nothing; weights do not change inside a loop)."""
        self._weights_key = None

    @staticmethod
    def _on_cuda(sample: torch.Tensor) -> bool:
        return sample.is_cuda

    def _key(self, inputs: Sequence[torch.Tensor], conditioning_scale: float) -> tuple:
        return (*((tuple(x.shape), x.dtype, x.device) for x in inputs), float(conditioning_scale))

    def _fallback(self, key: tuple, what: str, error: Exception) -> None:
        shape = tuple(key[0][0])
        if self.strict:
            raise FastPathError(f"{what} failed for sample shape {shape}: {type(error).__name__}: {error}") from error
        logger.warning(
            "%s failed for sample shape %s (%s: %s); this shape runs eagerly", what, shape, type(error).__name__, error
        )
        self.modes[key] = "eager"

    def _run(self, key: tuple, inputs: tuple, conditioning_scale: float) -> torch.Tensor:
        """Compiled when asked and working for this key, else eager."""
        if self._compiled is not None and self.modes.get(key) != "eager":
            try:
                output = self._compiled(*inputs, conditioning_scale)
                self.modes.setdefault(key, "compiled")
                return output
            except Exception as error:  # noqa: BLE001 - any compiler failure: warn once, run eagerly
                self._fallback(key, "torch.compile", error)
        self.modes.setdefault(key, "eager")
        return self._eager(*inputs, conditioning_scale)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        control: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        inputs = (sample, timestep, prompt_embeds, image_embeds, control)
        key = self._key(inputs, conditioning_scale)
        if not (self.cuda_graphs and self._on_cuda(sample)):
            return self._run(key, inputs, conditioning_scale)
        if self._weights_key is None:
            self._weights_key = weights_version(self.unet, self.controlnet)
        key = (*key, self._weights_key)
        if key not in self._graphs:
            self._graphs[key] = self._capture(key, inputs, conditioning_scale)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        entry = self._graphs[key]
        if entry is None:
            return self._run(key, inputs, conditioning_scale)
        for static, value in zip(entry.inputs, inputs, strict=True):
            static.copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, key: tuple, inputs: Sequence[torch.Tensor], conditioning_scale: float) -> _Graph | None:
        static = tuple(x.clone() for x in inputs)
        device = static[0].device
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(self.warmup_calls):
                    self._run(key, static, conditioning_scale)
            torch.cuda.current_stream(device).wait_stream(side)
            if self.modes.get(key) == "eager" and self._compiled is not None:
                return None  # compilation already failed (and warned) for this key
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
                output = self._run(key, static, conditioning_scale)
        except FastPathError:
            raise
        except Exception as error:  # noqa: BLE001 - any capture failure: warn once, run this shape eagerly
            self._fallback(key, "CUDA graph capture", error)
            return None
        self.modes[key] = "graph"
        logger.debug("captured a CUDA graph for sample shape %s", tuple(static[0].shape))
        return _Graph(graph, static, output)


class GuidedDenoiser:
    """Guided ε̂ for one image: ``latents`` (1, 4, h, w) -> ``ε_u + g·(ε_c − ε_u)`` (CFG iff the prompt batch has
    2 rows, uncond first), with everything constant per image prepared once.

    Untiled (one full tile): one call on the CFG batch. Tiled: tiles go ``tile_batch_size`` at a time (rows
    ``[uncond, cond]`` per tile as the official per-tile call; with ``pad_tiles`` the last group is padded with
    repeats of its last tile, whose outputs are dropped); predictions are blended in the official tile order as
    ``num = float32(num + pred·w)`` (float64 product) with the float64 Gaussian ``w`` (float32 on MPS) and divided
    by the normaliser accumulated the same way once, here. ``tile_batch_size`` 1 is the official loop call for call.

    Args:
        predictor: the ControlNet + UNet call (e.g. :class:`NoisePredictor`).
        latent_size: (h, w).
        tiles: from :func:`~seesr.pipeline.tiling.tile_grid`.
        prompt_embeds / image_embeds / control: CFG-batched (P rows): (P, 77, D), (P, 145, 512), (P, 3, 8h, 8w).
        guidance_scale / conditioning_scale: CFG weight and ControlNet residual scale.
        tile_batch_size / pad_tiles: tiles per call; pad the last call to a static shape.
        batch_cfg_pair: the CFG pair in one call (official); False runs the uncond and cond rows as two calls of
            half the batch (less activation memory, same per-row maths).
        compute_dtype: dtype of the model inputs (default ``prompt_embeds.dtype``).
        float32_output: ε̂ always float32 (else the official promotion: model dtype untiled, float32 tiled).
    """

    def __init__(
        self,
        predictor: Callable[..., torch.Tensor],
        latent_size: tuple[int, int],
        tiles: Sequence[Tile],
        prompt_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        control: torch.Tensor,
        guidance_scale: float,
        conditioning_scale: float = 1.0,
        tile_batch_size: int = 1,
        *,
        pad_tiles: bool = True,
        batch_cfg_pair: bool = True,
        compute_dtype: torch.dtype | None = None,
        float32_output: bool = True,
    ) -> None:
        self.predictor = predictor
        self.batch_cfg_pair = batch_cfg_pair
        self.height, self.width = latent_size
        self.rows = prompt_embeds.shape[0]
        if image_embeds.shape[0] != self.rows or control.shape[0] != self.rows:
            raise ValueError("prompt_embeds, image_embeds and control must have the same batch (2 with CFG, else 1)")
        self.do_cfg = self.rows == 2
        self.guidance_scale, self.conditioning_scale = guidance_scale, conditioning_scale
        self.dtype = compute_dtype or prompt_embeds.dtype
        self.float32_output = float32_output
        self.tiles = list(tiles)
        self.untiled = len(self.tiles) == 1 and (self.tiles[0].height, self.tiles[0].width) == latent_size
        self.tile_batch_size = 1 if self.untiled else max(1, min(int(tile_batch_size), len(self.tiles)))
        self.prompt_embeds = prompt_embeds.to(self.dtype).repeat(self.tile_batch_size, 1, 1)
        self.image_embeds = image_embeds.to(self.dtype).repeat(self.tile_batch_size, 1, 1)
        if self.untiled:
            self.control = control.to(self.dtype)
            self.calls = 1
        else:
            self._prepare_tiles(control, pad_tiles)

    def _prepare_tiles(self, control: torch.Tensor, pad_tiles: bool) -> None:
        size = self.tile_batch_size
        self.groups: list[tuple[list[Tile], int]] = []
        for start in range(0, len(self.tiles), size):
            group = self.tiles[start : start + size]
            valid = len(group)
            self.groups.append((group + [group[-1]] * (size - valid) if pad_tiles else group, valid))
        self.calls = len(self.groups)
        scale = control.shape[-1] // self.width
        self.group_controls = [
            torch.cat([control[(slice(None), slice(None), *tile.scaled(scale))] for tile in group]).to(self.dtype)
            for group, _ in self.groups
        ]
        device = control.device
        weight_dtype = torch.float32 if device.type == "mps" else torch.float64
        first = self.tiles[0]
        self.weights = gaussian_weights(first.height, first.width, device=device, dtype=weight_dtype)
        denominator = torch.zeros((1, 1, self.height, self.width), dtype=torch.float32, device=device)
        for tile in self.tiles:
            window = (slice(None), slice(None), tile.rows, tile.cols)
            denominator[window] = (denominator[window].to(weight_dtype) + self.weights).float()
        self.denominator = denominator

    def _predict(self, sample: torch.Tensor, timestep: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        """The predictor on rows ``[uncond, cond]`` per tile, in one call or (``batch_cfg_pair=False``) two."""
        if self.batch_cfg_pair or not self.do_cfg:
            return self.predictor(sample, timestep, *conditions, self.conditioning_scale)
        halves = [
            self.predictor(sample[row::2], timestep, *(c[row::2] for c in conditions), self.conditioning_scale)
            for row in (0, 1)
        ]
        return torch.stack(halves, dim=1).flatten(0, 1)

    def _embeds(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = count * self.rows
        return self.prompt_embeds[:rows], self.image_embeds[:rows]

    def _tiled(self, model_input: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        numerator = torch.zeros(
            (self.rows, model_input.shape[1], self.height, self.width), dtype=torch.float32, device=model_input.device
        )
        weights = self.weights
        for (group, valid), control in zip(self.groups, self.group_controls, strict=True):
            sample = torch.cat([model_input[:, :, tile.rows, tile.cols] for tile in group])
            prompt, image = self._embeds(len(group))
            output = self._predict(sample, timestep, prompt, image, control)
            for index in range(valid):
                tile = group[index]
                prediction = output[index * self.rows : (index + 1) * self.rows]
                window = (slice(None), slice(None), tile.rows, tile.cols)
                numerator[window] = (
                    numerator[window].to(weights.dtype) + prediction.to(weights.dtype) * weights
                ).float()
        return numerator / self.denominator

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_input = (torch.cat([latents] * self.rows) if self.do_cfg else latents).to(self.dtype)
        if self.untiled:
            noise_pred = self._predict(model_input, timestep, self.prompt_embeds, self.image_embeds, self.control)
            if self.float32_output:
                noise_pred = noise_pred.float()
        else:
            noise_pred = self._tiled(model_input, timestep)
        if self.do_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
        return noise_pred


class StepNoise:
    """Every step's variance noise from ``generator``, in the order the sampler consumes it.

    ``"per_step"``: drawn when the step needs it with diffusers' ``randn_tensor`` in the dtype of ε̂ (the official
    draws, REFERENCE §1.13 item 4). ``"upfront"``: all drawn before the loop in float32 where the generator lives and
    moved to the device in one pinned copy (no host synchronisation inside the loop). With float32 ε̂ both give the
    same values.
    """

    def __init__(
        self,
        plan: StepPlan,
        shape: Sequence[int],
        generator: torch.Generator | None,
        device: torch.device,
        mode: str = "per_step",
    ) -> None:
        self.plan, self.shape, self.generator, self.device, self.mode = plan, tuple(shape), generator, device, mode
        self._drawn: list[torch.Tensor | None] | None = self._draw_all() if mode == "upfront" else None

    def _draw_all(self) -> list[torch.Tensor | None]:
        generator, device = self.generator, self.device
        on_device = generator is None or generator.device.type == device.type
        draw_device = device if on_device else generator.device
        draws = [
            randn_tensor(self.shape, generator=generator, device=draw_device, dtype=torch.float32)
            if self.plan.needs_noise(index)
            else None
            for index in range(len(self.plan.timesteps))
        ]
        present = [draw for draw in draws if draw is not None]
        if on_device or not present:
            return draws
        stacked = torch.stack(present)
        if device.type == "cuda":
            stacked = stacked.pin_memory()
        moved = iter(stacked.to(device, non_blocking=True).unbind(0))
        return [None if draw is None else next(moved) for draw in draws]

    def __call__(self, index: int, noise_pred: torch.Tensor) -> torch.Tensor | None:
        if self._drawn is not None:
            return self._drawn[index]
        if not self.plan.needs_noise(index):
            return None
        return randn_tensor(
            tuple(noise_pred.shape), generator=self.generator, device=self.device, dtype=noise_pred.dtype
        )


#: ``on_step(index, timestep, noise_pred, latents) -> (latents, stop)`` after every step
StepHook = Callable[[int, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, bool]]


def denoise(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    plan: StepPlan,
    latents: torch.Tensor,
    noise: StepNoise,
    *,
    float32_state: bool = False,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """The denoising loop: for each timestep, ε̂ = denoiser(x, t) and x = plan.step(ε̂, x, noise).

    Args:
        denoiser: e.g. a :class:`GuidedDenoiser`.
        plan: the sampler plan (:func:`seesr.pipeline.schedulers.make_step_plan`).
        latents: start latents (1, 4, h, w).
        noise: the step noise.
        float32_state: compute the state in float32 (else it follows ε̂: the official promotion).
        on_step: called after every step; it may replace the latents and stop the loop (interrupt).

    Returns:
        The latents after the last step run.
    """
    if float32_state:
        latents = latents.float()
    timesteps = torch.tensor(plan.timesteps, device=latents.device)
    for index, timestep in enumerate(plan.timesteps):
        noise_pred = denoiser(latents, timesteps[index])
        latents = plan.step(index, noise_pred, latents, noise(index, noise_pred))
        if on_step is not None:
            latents, stop = on_step(index, timestep, noise_pred, latents)
            if stop:
                break
    return latents
