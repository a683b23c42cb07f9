"""Fast inference path for :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline` (on by default on CUDA).

The fp32 path of the pipeline reproduces the official numerics; this module holds what makes it fast on a GPU
without changing the per-tile maths (REFERENCE §1.10, §7 item 36):

* **precision**: UNet, ControlNet and text encoder in bf16 (or fp16, then the VAE stays fp32, "fp32-safe VAE");
  the latent state, classifier-free guidance, the tile blending and the DDPM update stay float32. DAPE stays fp32
  with TF32 matmuls, as in the official scripts (tags sit on thresholds; it runs once per image, so it is cheap).
* **attention**: PyTorch SDPA (``AttnProcessor2_0``) everywhere, ``channels_last`` convolutions, cuDNN autotuning.
* **one batch per step**: the CFG pair and several latent tiles go through ControlNet + UNet together
  (:class:`GuidedDenoiser`). Each tile still sees exactly the official inputs (its latent window, its ×8 control
  window, the full prompt and DAPE embeddings) and is blended with the same float64 Gaussian into float32
  accumulators, in the official order. The Gaussian weights and their normaliser are computed once per image.
* **no host synchronisation inside the loop**: the DDPM coefficients are precomputed on the host
  (:class:`DDPMStepPlan`, the exact arithmetic of diffusers' ``DDPMScheduler.step``) and every step's noise is
  drawn before the loop (same generator, same order, same values as drawing it step by step).
* **static shapes**: the last tile batch is padded to the full batch size, so one image uses at most two shapes
  (the untiled latent, or the tile batch). :class:`NoisePredictor` captures one CUDA graph per shape (and, with
  ``compile=True``, runs ``torch.compile``'d code inside it); both are reused across images of the same tile shape.
* **large images**: the banded VAE of :mod:`seesr.pipeline.vae_tiling` keeps its full-resolution activations on
  the GPU when they fit (``vae_storage="auto"``), instead of parking them on the host.
* **small cards**: :func:`enable_offload` (diffusers model / sequential CPU offload, VAE kept resident).

Use::

    pipe = SeeSRPipeline.from_pretrained(..., device="cuda")
    enable_fast_path(pipe)                       # or FastPathConfig(compile=True, tile_batch_size=4, ...)
    image = pipe(lr_image).images[0]

Nothing here is used by the fp32 parity path.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from seesr.pipeline.tiling import Tile, gaussian_weights
from seesr.pipeline.vae_tiling import (
    VAETilingConfig,
    _BandRunner,
    banded_decoder_forward,
    banded_encoder_forward,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DDPMStepPlan",
    "FastPathConfig",
    "GuidedDenoiser",
    "NoisePredictor",
    "choose_tile_batch_size",
    "decode_latents",
    "denoise",
    "draw_step_noise",
    "enable_fast_path",
    "enable_offload",
    "encode_moments",
    "fast_path_config_for",
    "max_tile_batch_for_memory",
    "resolve_tile_batch_size",
    "run_denoising",
]

VAEStorage = Literal["auto", "device", "cpu"]
OffloadMode = Literal["model", "sequential"]


@dataclass(frozen=True)
class FastPathConfig:
    """Settings of the fast path.

    Attributes:
        dtype: weights/activations of UNet, ControlNet and text encoder (``torch.bfloat16`` default; with
            ``torch.float16`` the VAE stays float32). ``torch.float32`` keeps full precision but still batches.
        channels_last: convert UNet/ControlNet convolutions to channels-last memory format.
        tile_batch_size: latent tiles per ControlNet+UNet call; None picks the largest of at most
            ``max_tile_batch_size`` that fits the free accelerator memory and wastes the fewest padded tiles.
        max_tile_batch_size: upper bound for the automatic choice.
        cuda_graphs: capture each (shape) of the ControlNet+UNet call in a CUDA graph (CUDA only, not with offload).
        compile: ``torch.compile`` the ControlNet+UNet call (static shapes: compiled once per tile shape).
        compile_mode: ``torch.compile`` mode (``"default"`` compiles fastest).
        vae_storage: where the banded VAE keeps full-resolution activations: ``"auto"`` (the accelerator when
            they fit in 70 % of its free memory, else the host), ``"device"`` or ``"cpu"``.
        tf32: allow TF32 matmuls/convolutions for float32 work (DAPE), as the official scripts do.
        max_graphs: CUDA graphs kept at once (least recently used ones are dropped).
    """

    dtype: torch.dtype = torch.bfloat16
    channels_last: bool = True
    tile_batch_size: int | None = None
    max_tile_batch_size: int = 8
    cuda_graphs: bool = True
    compile: bool = False
    compile_mode: str = "default"
    vae_storage: VAEStorage = "auto"
    tf32: bool = True
    max_graphs: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"fast path dtype must be bfloat16, float16 or float32, got {self.dtype}")
        if self.tile_batch_size is not None and self.tile_batch_size < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {self.tile_batch_size}")
        if self.max_tile_batch_size < 1:
            raise ValueError(f"max_tile_batch_size must be >= 1, got {self.max_tile_batch_size}")
        if self.vae_storage not in ("auto", "device", "cpu"):
            raise ValueError(f"vae_storage must be 'auto', 'device' or 'cpu', got {self.vae_storage!r}")

    @property
    def vae_dtype(self) -> torch.dtype:
        """float32 when the models run in float16 (SD VAEs may overflow in fp16), else ``dtype``."""
        return torch.float32 if self.dtype == torch.float16 else self.dtype


def fast_path_config_for(
    device: torch.device,
    enabled: bool | None = None,
    *,
    compile: bool = False,
    dtype: torch.dtype | None = None,
    tile_batch_size: int | None = None,
    offload: bool = False,
) -> FastPathConfig | None:
    """The fast-path settings for ``device``: None (the exact fp32 path) unless enabled.

    Args:
        enabled: None = on for CUDA only; True/False force it.
        compile: ``torch.compile`` the denoising call.
        dtype: override the compute dtype (default bf16; float16 on GPUs without bf16 support).
        tile_batch_size: fixed tile batch (None = automatic).
        offload: model offloading is active (CUDA graphs are then disabled: weights move between calls).
    """
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return None
    if dtype is None:
        dtype = torch.bfloat16
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            dtype = torch.float16
    return FastPathConfig(
        dtype=dtype,
        compile=compile,
        tile_batch_size=tile_batch_size,
        cuda_graphs=device.type == "cuda" and not offload,
    )


# ---------------------------------------------------------------------------------------------------------------
# model preparation


def _cast(module: torch.nn.Module | None, dtype: torch.dtype, channels_last: bool) -> None:
    if module is None:
        return
    # nn.Module.to: ModelMixin.to logs a spurious warning whenever a dtype is passed (diffusers 0.42)
    torch.nn.Module.to(module, dtype=dtype)
    if channels_last:
        torch.nn.Module.to(module, memory_format=torch.channels_last)


def enable_fast_path(pipe: Any, config: FastPathConfig | None = None) -> FastPathConfig:
    """Prepare ``pipe``'s models for the fast path and switch it on (``pipe.fast_path = config``).

    Casts UNet, ControlNet and text encoder to ``config.dtype`` and the VAE to ``config.vae_dtype`` (the DAPE
    tagger keeps its dtype), sets SDPA attention processors and channels-last UNet/ControlNet weights, and on CUDA
    enables TF32 and cuDNN autotuning. The pipeline's noise predictor (CUDA graphs / compiled code) is created on
    first use.

    Returns:
        The config in use.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    config = config or FastPathConfig()
    _cast(pipe.unet, config.dtype, config.channels_last)
    _cast(pipe.controlnet, config.dtype, config.channels_last)
    _cast(pipe.vae, config.vae_dtype, channels_last=False)  # the banded VAE slices NCHW bands
    if pipe.text_encoder is not None:
        torch.nn.Module.to(pipe.text_encoder, dtype=config.dtype)
    for model in (pipe.unet, pipe.controlnet):
        model.set_attn_processor(AttnProcessor2_0())
    device = pipe._execution_device
    if device.type == "cuda":
        if config.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif config.cuda_graphs:
        config = replace(config, cuda_graphs=False)
    if getattr(pipe, "_all_hooks", None) and config.cuda_graphs:
        logger.info("model offloading is active: CUDA graphs disabled (weights move between calls)")
        config = replace(config, cuda_graphs=False)
    pipe.fast_path = config
    pipe._fast_predictor = None
    return config


def get_predictor(pipe: Any) -> NoisePredictor:
    """The pipeline's cached :class:`NoisePredictor` for its fast-path config (created on first use)."""
    config: FastPathConfig = pipe.fast_path
    predictor = getattr(pipe, "_fast_predictor", None)
    if predictor is None or predictor.unet is not pipe.unet or predictor.controlnet is not pipe.controlnet:
        predictor = NoisePredictor(
            pipe.unet,
            pipe.controlnet,
            cuda_graphs=config.cuda_graphs,
            compile=config.compile,
            compile_mode=config.compile_mode,
            max_graphs=config.max_graphs,
        )
        pipe._fast_predictor = predictor
    return predictor


def enable_offload(pipe: Any, mode: OffloadMode = "model", device: torch.device | str | None = None) -> None:
    """CPU offloading for small GPUs (<= 8 GB): diffusers' model or sequential offload, VAE kept resident.

    ``"model"`` moves whole models (DAPE, text encoder, ControlNet, UNet) to the GPU when they run (little speed
    loss); ``"sequential"`` moves layer by layer (lowest memory, slow; DAPE, ~0.9 GB, stays on the GPU). The VAE
    (~170 MB in half precision) stays on the GPU because the banded VAE calls its layers directly.

    Raises:
        ValueError: unknown mode or no accelerator.
    """
    if mode not in ("model", "sequential"):
        raise ValueError(f"offload mode must be 'model' or 'sequential', got {mode!r}")
    device = torch.device(device) if device is not None else None
    if device is None:
        if not torch.cuda.is_available():
            raise ValueError("offloading needs a CUDA device; none is available")
        device = torch.device("cuda")
    if device.type == "cpu":
        raise ValueError("offloading needs an accelerator device, not the CPU")
    # sequential offload leaves meta tensors in the modules: DAPE (which reads its own device) stays resident too
    resident = ["vae"] if mode == "model" else ["vae", "tagger"]
    sequence = [name for name in pipe.model_cpu_offload_seq.split("->") if name not in resident]
    pipe.model_cpu_offload_seq = "->".join(sequence)
    pipe._exclude_from_cpu_offload = resident
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    for name in resident:
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(device)
    if getattr(pipe, "fast_path", None) is not None and pipe.fast_path.cuda_graphs:
        pipe.fast_path = replace(pipe.fast_path, cuda_graphs=False)
        pipe._fast_predictor = None


# ---------------------------------------------------------------------------------------------------------------
# DDPM without host synchronisation


class DDPMStepPlan:
    """``DDPMScheduler.step`` with every schedule scalar precomputed on the host.

    diffusers' ``step`` looks the previous timestep up with ``nonzero`` and branches on ``prev_t >= 0`` and
    ``t > 0``, which synchronises the host with the GPU at every step. This plan evaluates the same float32 scalar
    expressions once per timestep (as 0-dim CPU tensors, exactly like diffusers) so that :meth:`step` is a few
    element-wise kernels: bit-identical to ``scheduler.step`` for the same model output, sample and noise.

    Supports the SeeSR configuration: epsilon prediction, no clipping/thresholding, ``fixed_small`` variance.

    Args:
        scheduler: a ``DDPMScheduler`` after ``set_timesteps``.
        timesteps: the timesteps to run (default ``scheduler.timesteps``).
    """

    def __init__(self, scheduler: DDPMScheduler, timesteps: Sequence[int] | torch.Tensor | None = None) -> None:
        config = scheduler.config
        if config.prediction_type != "epsilon" or config.thresholding or config.clip_sample:
            raise NotImplementedError("DDPMStepPlan supports epsilon prediction without clipping or thresholding")
        if config.variance_type not in (None, "fixed_small"):
            raise NotImplementedError(f"DDPMStepPlan supports fixed_small variance, not {config.variance_type!r}")
        if timesteps is None:
            timesteps = scheduler.timesteps
        self.timesteps = [int(t) for t in (timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)]
        alphas = scheduler.alphas_cumprod.cpu()
        one = scheduler.one.cpu() if torch.is_tensor(scheduler.one) else torch.tensor(scheduler.one)
        self._coefficients: list[
            tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
        ] = []
        for index, t in enumerate(self.timesteps):
            prev_t = self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1
            alpha_prod_t = alphas[t]
            alpha_prod_t_prev = alphas[prev_t] if prev_t >= 0 else one
            beta_prod_t = 1 - alpha_prod_t
            beta_prod_t_prev = 1 - alpha_prod_t_prev
            current_alpha_t = alpha_prod_t / alpha_prod_t_prev
            current_beta_t = 1 - current_alpha_t
            original_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
            current_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
            std = None
            if t > 0:
                variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
                std = torch.clamp(variance, min=1e-20) ** 0.5
            self._coefficients.append(
                (beta_prod_t ** (0.5), alpha_prod_t ** (0.5), original_coeff, current_coeff, std)
            )

    def __len__(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, index: int) -> bool:
        """Whether step ``index`` adds variance noise (``t > 0``)."""
        return self._coefficients[index][4] is not None

    def step(
        self, index: int, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """x_{t-1} from ε̂ ``model_output`` and x_t ``sample`` (same shape); ``noise`` ~ N(0, I) if t > 0."""
        sqrt_beta, sqrt_alpha, original_coeff, current_coeff, std = self._coefficients[index]
        pred_original_sample = (sample - sqrt_beta * model_output) / sqrt_alpha
        prev_sample = original_coeff * pred_original_sample + current_coeff * sample
        if std is not None:
            if noise is None:
                raise ValueError(f"step {index} (t={self.timesteps[index]}) needs variance noise")
            prev_sample = prev_sample + std * noise
        return prev_sample


def draw_step_noise(
    plan: DDPMStepPlan,
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor | None]:
    """Every step's variance noise, drawn before the loop in the order the scheduler would draw it.

    Uses diffusers' ``randn_tensor`` exactly like ``DDPMScheduler.step`` does (so the values equal step-by-step
    drawing from the same generator). Noise drawn on the host goes to the device in one pinned, asynchronous copy.

    Returns:
        One tensor per step (None where ``t == 0``).
    """
    # draw where the generator lives (as randn_tensor does), then move everything in one copy if needed
    on_device = generator is None or generator.device.type == device.type
    draw_device = device if on_device else generator.device
    draws: list[torch.Tensor | None] = []
    for index in range(len(plan)):
        if not plan.needs_noise(index):
            draws.append(None)
            continue
        draws.append(randn_tensor(tuple(shape), generator=generator, device=draw_device, dtype=dtype))
    present = [draw for draw in draws if draw is not None]
    if on_device or not present:
        return draws
    stacked = torch.stack(present)
    if device.type == "cuda":
        stacked = stacked.pin_memory()
    moved = iter(stacked.to(device, non_blocking=True).unbind(0))
    return [None if draw is None else next(moved) for draw in draws]


# ---------------------------------------------------------------------------------------------------------------
# ControlNet + UNet call with static-shape caching


@dataclass
class _Graph:
    graph: Any
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class NoisePredictor:
    """ControlNet + UNet noise prediction (REFERENCE §1.9 steps 2-3), eager, compiled and/or CUDA-graphed.

    ``__call__(sample, timestep, prompt_embeds, image_embeds, control, conditioning_scale) -> ε̂`` with
    ``sample`` (N, 4, h, w), ``timestep`` a 0-dim tensor on the device, ``prompt_embeds`` (N, 77, D),
    ``image_embeds`` (N, 145, 512), ``control`` (N, 3, 8h, 8w) in [0, 1]; returns (N, 4, h, w) in the model dtype.

    With ``cuda_graphs``, the first call for a new combination of shapes/dtypes/scale warms up on a side stream and
    captures a graph with static input buffers; later calls copy their inputs in and replay it. A capture that fails
    falls back to eager execution for that shape (logged). With ``compile``, the call is ``torch.compile``'d with
    static shapes (a new shape compiles once, then it is reused).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        *,
        cuda_graphs: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
        max_graphs: int = 8,
        warmup_calls: int = 2,
    ) -> None:
        self.unet = unet
        self.controlnet = controlnet
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.warmup_calls = warmup_calls
        self._graphs: OrderedDict[tuple, _Graph | None] = OrderedDict()
        self._function: Callable[..., torch.Tensor] = self._eager
        if compile:
            self._function = torch.compile(self._eager, mode=compile_mode, dynamic=False)
        #: shapes seen (for tests and logs): key -> "eager" | "graph"
        self.modes: dict[tuple, str] = {}

    def _eager(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        control: torch.Tensor,
        conditioning_scale: float,
    ) -> torch.Tensor:
        from seesr.pipeline.pipeline_seesr import predict_noise

        return predict_noise(
            self.unet, self.controlnet, sample, timestep, prompt_embeds, image_embeds, control, conditioning_scale
        )

    @staticmethod
    def _key(inputs: Sequence[torch.Tensor], conditioning_scale: float) -> tuple:
        return (*((tuple(x.shape), x.dtype, x.device) for x in inputs), float(conditioning_scale))

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
        if not (self.cuda_graphs and sample.is_cuda):
            self.modes.setdefault(key, "eager")
            return self._function(*inputs, conditioning_scale)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs, conditioning_scale)
            self.modes[key] = "eager" if self._graphs[key] is None else "graph"
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        entry = self._graphs[key]
        if entry is None:
            return self._function(*inputs, conditioning_scale)
        for static, value in zip(entry.inputs, inputs, strict=True):
            static.copy_(value)
        entry.graph.replay()
        return entry.output.clone()

    def _capture(self, inputs: Sequence[torch.Tensor], conditioning_scale: float) -> _Graph | None:
        static = tuple(x.clone() for x in inputs)
        try:
            side = torch.cuda.Stream(device=static[0].device)
            side.wait_stream(torch.cuda.current_stream(static[0].device))
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(self.warmup_calls):
                    self._function(*static, conditioning_scale)
            torch.cuda.current_stream(static[0].device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                output = self._function(*static, conditioning_scale)
        except Exception as error:  # any capture problem: run this shape eagerly instead
            logger.warning("CUDA graph capture failed for %s (%s); running it eagerly", tuple(static[0].shape), error)
            return None
        logger.debug("captured a CUDA graph for sample shape %s", tuple(static[0].shape))
        return _Graph(graph, static, output)


# ---------------------------------------------------------------------------------------------------------------
# tile batching


def choose_tile_batch_size(num_tiles: int, max_batch: int) -> int:
    """Tiles per call: the size ``b <= max_batch`` with the fewest evaluated tiles ``ceil(n/b)·b`` (ties: larger).

    The last call is padded to ``b`` tiles to keep shapes static, so e.g. 9 tiles with ``max_batch`` 8 use 3 calls
    of 3 (no padding) rather than 8 + 1 padded to 8.
    """
    if num_tiles < 1 or max_batch < 1:
        raise ValueError("num_tiles and max_batch must be >= 1")
    best, best_cost = 1, num_tiles
    for size in range(1, min(max_batch, num_tiles) + 1):
        cost = math.ceil(num_tiles / size) * size
        if cost < best_cost or (cost == best_cost and size > best):
            best, best_cost = size, cost
    return best


def max_tile_batch_for_memory(
    unet: UNet2DConditionModel,
    device: torch.device,
    dtype: torch.dtype,
    tile_size: int,
    rows_per_tile: int,
    upper: int = 8,
    fraction: float = 0.6,
) -> int:
    """Largest tile batch whose ControlNet+UNet activations fit ``fraction`` of the free CUDA memory.

    Activation estimate per latent pixel and batch row: ``C0 · 160`` elements (``C0`` = the UNet's first width;
    the order of magnitude measured for SD-2 with SDPA attention, as ``auto_latent_tile_size`` uses). Returns
    ``upper`` on devices without a memory query.
    """
    if device.type != "cuda":
        return upper
    free, _ = torch.cuda.mem_get_info(device)
    element = torch.finfo(dtype).bits // 8
    width = int(unet.config.block_out_channels[0])
    per_tile = rows_per_tile * tile_size * tile_size * width * 160 * element
    return max(1, min(upper, int(fraction * free // max(per_tile, 1))))


class GuidedDenoiser:
    """Guided ε̂ for one image, tiles batched, everything that is constant per image precomputed.

    Per step: ``latents`` (1, 4, h, w) float32 -> ε̂ (1, 4, h, w) float32 with classifier-free guidance
    ``ε_u + g·(ε_c − ε_u)`` (when the prompt batch has 2 rows: uncond first).

    Untiled (one full tile): a single call on the CFG batch. Tiled: tiles are grouped ``tile_batch_size`` at a time
    (the last group padded with repeats of its last tile, whose outputs are dropped); each tile's rows are
    ``[uncond, cond]`` like the official per-tile call; predictions are blended in the official tile order as
    ``num = float32(num + pred·w)`` (float64 product) with the float64 Gaussian ``w``; the normaliser ``den`` is
    accumulated the same way once, at construction.

    Args:
        predictor: the ControlNet + UNet call.
        latent_size: (h, w).
        tiles: from :func:`~seesr.pipeline.tiling.tile_grid`.
        prompt_embeds: (P, 77, D), P = 2 with CFG ([negative, positive]) else 1.
        image_embeds: (P, 145, 512) (the DAPE embeddings, duplicated for CFG).
        control: (P, 3, 8h, 8w) in [0, 1].
        guidance_scale / conditioning_scale: CFG weight and ControlNet residual scale.
        tile_batch_size: tiles per call.
        compute_dtype: dtype of the model inputs.
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
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.predictor = predictor
        self.height, self.width = latent_size
        self.rows = prompt_embeds.shape[0]
        if image_embeds.shape[0] != self.rows or control.shape[0] != self.rows:
            raise ValueError("prompt_embeds, image_embeds and control must have the same batch (2 with CFG, else 1)")
        self.do_cfg = self.rows == 2
        self.guidance_scale = guidance_scale
        self.conditioning_scale = conditioning_scale
        self.dtype = compute_dtype or prompt_embeds.dtype
        self.device = prompt_embeds.device
        self.tiles = list(tiles)
        self.untiled = len(self.tiles) == 1 and (self.tiles[0].height, self.tiles[0].width) == latent_size
        if self.untiled:
            self.tile_batch_size = 1
            self.prompt_embeds = prompt_embeds.to(self.dtype)
            self.image_embeds = image_embeds.to(self.dtype)
            self.control = control.to(self.dtype)
            self.calls = 1
            return
        self.tile_batch_size = max(1, min(int(tile_batch_size), len(self.tiles)))
        size = self.tile_batch_size
        self.groups: list[tuple[list[Tile], int]] = []
        for start in range(0, len(self.tiles), size):
            group = self.tiles[start : start + size]
            valid = len(group)
            group = group + [group[-1]] * (size - valid)
            self.groups.append((group, valid))
        self.calls = len(self.groups)
        scale = control.shape[-1] // self.width
        self.group_controls = [
            torch.cat([control[(slice(None), slice(None), *tile.scaled(scale))] for tile in group]).to(self.dtype)
            for group, _ in self.groups
        ]
        self.prompt_embeds = prompt_embeds.to(self.dtype).repeat(size, 1, 1)
        self.image_embeds = image_embeds.to(self.dtype).repeat(size, 1, 1)
        weight_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        first = self.tiles[0]
        self.weights = gaussian_weights(first.height, first.width, device=self.device, dtype=weight_dtype)
        denominator = torch.zeros((1, 1, self.height, self.width), dtype=torch.float32, device=self.device)
        for tile in self.tiles:
            window = (slice(None), slice(None), tile.rows, tile.cols)
            denominator[window] = (denominator[window].to(weight_dtype) + self.weights).float()
        self.denominator = denominator

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_input = (torch.cat([latents] * self.rows) if self.do_cfg else latents).to(self.dtype)
        if self.untiled:
            noise_pred = self.predictor(
                model_input, timestep, self.prompt_embeds, self.image_embeds, self.control, self.conditioning_scale
            ).float()
        else:
            numerator = torch.zeros(
                (self.rows, latents.shape[1], self.height, self.width), dtype=torch.float32, device=latents.device
            )
            weights = self.weights
            for (group, valid), control in zip(self.groups, self.group_controls, strict=True):
                sample = torch.cat([model_input[:, :, tile.rows, tile.cols] for tile in group])
                output = self.predictor(
                    sample, timestep, self.prompt_embeds, self.image_embeds, control, self.conditioning_scale
                )
                for index in range(valid):
                    tile = group[index]
                    prediction = output[index * self.rows : (index + 1) * self.rows]
                    window = (slice(None), slice(None), tile.rows, tile.cols)
                    numerator[window] = (
                        numerator[window].to(weights.dtype) + prediction.to(weights.dtype) * weights
                    ).float()
            noise_pred = numerator / self.denominator
        if self.do_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
        return noise_pred


def denoise(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    plan: DDPMStepPlan,
    latents: torch.Tensor,
    generator: torch.Generator | None,
    *,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The denoising loop without host synchronisation: ε̂ = denoiser(x, t); x = DDPM step (float32 state).

    Args:
        denoiser: e.g. a :class:`GuidedDenoiser`.
        plan: the precomputed DDPM steps.
        latents: start latents (1, 4, h, w); computed in float32.
        generator: draws every step's noise before the loop (float32, the parity order).
        on_step: called as ``on_step(index, noise_pred, latents_after_step)`` (progress bars, intermediates).

    Returns:
        Final latents, float32.
    """
    latents = latents.float()
    device = latents.device
    noises = draw_step_noise(plan, latents.shape, generator, device, torch.float32)
    timesteps = torch.tensor(plan.timesteps, device=device)
    for index in range(len(plan)):
        noise_pred = denoiser(latents, timesteps[index])
        latents = plan.step(index, noise_pred, latents, noises[index])
        if on_step is not None:
            on_step(index, noise_pred, latents)
    return latents


def resolve_tile_batch_size(
    config: FastPathConfig,
    unet: UNet2DConditionModel,
    device: torch.device,
    tiles: Sequence[Tile],
    rows_per_tile: int,
    requested: int = 1,
) -> int:
    """Tiles per call for one image: ``config.tile_batch_size``, else a requested size > 1, else automatic
    (:func:`max_tile_batch_for_memory` capped at ``config.max_tile_batch_size``, then :func:`choose_tile_batch_size`)."""
    if len(tiles) <= 1:
        return 1
    if config.tile_batch_size is not None:
        return min(config.tile_batch_size, len(tiles))
    if requested > 1:
        return min(requested, len(tiles))
    limit = max_tile_batch_for_memory(
        unet, device, config.dtype, tiles[0].height, rows_per_tile, upper=config.max_tile_batch_size
    )
    return choose_tile_batch_size(len(tiles), limit)


def run_denoising(
    pipe: Any,
    latents: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor,
    prompt_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    control: torch.Tensor,
    tiles: Sequence[Tile],
    *,
    guidance_scale: float,
    conditioning_scale: float,
    generator: torch.Generator | None,
    tile_batch_size: int = 1,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The pipeline's denoising loop on the fast path (``pipe.fast_path`` set by :func:`enable_fast_path`).

    Args:
        pipe: the pipeline (its UNet, ControlNet, scheduler and cached :class:`NoisePredictor` are used).
        latents: start latents (1, 4, h, w), float32.
        timesteps: the scheduler's timesteps after ``set_timesteps``.
        prompt_embeds / image_embeds / control: CFG-batched (2 rows with CFG, uncond first), any float dtype.
        tiles: the latent tile grid.
        tile_batch_size: a requested tile batch (> 1), see :func:`resolve_tile_batch_size`.
        on_step: ``on_step(index, noise_pred, latents)`` after every step.

    Returns:
        Final latents (1, 4, h, w), float32.
    """
    config: FastPathConfig = pipe.fast_path
    size = resolve_tile_batch_size(config, pipe.unet, latents.device, tiles, prompt_embeds.shape[0], tile_batch_size)
    denoiser = GuidedDenoiser(
        get_predictor(pipe),
        tuple(latents.shape[-2:]),
        tiles,
        prompt_embeds,
        image_embeds,
        control,
        guidance_scale,
        conditioning_scale,
        size,
        compute_dtype=pipe.unet.dtype,
    )
    plan = DDPMStepPlan(pipe.scheduler, timesteps)
    return denoise(denoiser, plan, latents, generator, on_step=on_step)


# ---------------------------------------------------------------------------------------------------------------
# VAE


def _vae_storage(
    device: torch.device, storage: VAEStorage, channels: int, height: int, width: int, dtype: torch.dtype
) -> torch.device:
    if device.type == "cpu" or storage == "cpu":
        return torch.device("cpu")
    if storage == "device":
        return device
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    # a ResNet block holds its input, the hidden activation and the output at full resolution, plus float64 bands
    estimate = 4 * channels * height * width * (torch.finfo(dtype).bits // 8)
    return device if estimate < 0.7 * free else torch.device("cpu")


def encode_moments(
    vae: AutoencoderKL, image: torch.Tensor, tiling: VAETilingConfig | None = None, storage: VAEStorage = "auto"
) -> torch.Tensor:
    """Posterior moments (B, 2·z, H/8, W/8) of ``image`` (B, 3, H, W) in [-1, 1], in the VAE dtype.

    As :func:`seesr.pipeline.vae_tiling.vae_encode_moments` (banded above the encoder threshold, exact GroupNorm
    statistics), but the banded activations stay on the accelerator when they fit (``storage``), with bands four
    times larger there.
    """
    tiling = tiling or VAETilingConfig()
    image = image.to(vae.dtype)
    height, width = image.shape[-2:]
    if not tiling.encode_is_tiled(height, width):
        moments = vae.encoder(image)
    else:
        device = image.device
        target = _vae_storage(device, storage, vae.config.block_out_channels[0], height, width, vae.dtype)
        scale = 4.0 if target == device else 1.0
        fraction = min(1.0, scale * tiling.encoder_tile_size**2 / (height * width))
        moments = banded_encoder_forward(vae.encoder, image, _BandRunner(device, target, fraction)).to(device)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    return moments


def decode_latents(
    vae: AutoencoderKL, latents: torch.Tensor, tiling: VAETilingConfig | None = None, storage: VAEStorage = "auto"
) -> torch.Tensor:
    """Decode unscaled latents (B, z, h, w) to (B, 3, 8h, 8w) in the VAE dtype.

    As :func:`seesr.pipeline.vae_tiling.vae_decode`, with the banded activations kept on the accelerator when they
    fit (``storage``).
    """
    tiling = tiling or VAETilingConfig()
    latents = latents.to(vae.dtype)
    height, width = latents.shape[-2:]
    if not tiling.decode_is_tiled(height, width):
        return vae.decode(latents, return_dict=False)[0]
    device = latents.device
    if vae.post_quant_conv is not None:
        latents = vae.post_quant_conv(latents)
    scale = vae.config.block_out_channels
    target = _vae_storage(device, storage, scale[0], 8 * height, 8 * width, vae.dtype)
    factor = 4.0 if target == device else 1.0
    fraction = min(1.0, factor * tiling.decoder_tile_size**2 / (height * width))
    return banded_decoder_forward(vae.decoder, latents, _BandRunner(device, target, fraction)).to(device)
