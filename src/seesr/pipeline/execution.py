"""How the one denoising loop executes: :class:`ExecutionConfig` and its two presets, ``exact`` and ``fast``.

The maths of every step is the same whatever the config (REFERENCE §1.9-§1.10: each latent tile sees its latent
window, its ×8 control window and the full prompt and DAPE embeddings; tiles are blended with the float64 Gaussian
into float32 accumulators in the official order; classifier-free guidance; the sampler step). The config only says
how it runs:

* ``dtype``: the dtype of UNet, ControlNet and text encoder (None keeps the loaded one); ``float32_state`` keeps
  the latent state, the guidance and the step in float32 whatever the model dtype;
* how the CFG pair and the latent tiles are batched (``tile_batch_size``, ``max_tile_batch_size``) and whether the
  last tile batch is padded to a static shape (``pad_tiles``);
* CUDA graphs, ``torch.compile``, channels-last convolutions, SDPA attention, TF32 and cuDNN autotuning;
* where each step's noise is drawn (``step_noise``): ``"per_step"`` as diffusers does (in the dtype of ε̂), or
  ``"upfront"`` (float32, before the loop, one host-to-device copy: no synchronisation inside the loop);
* where the banded VAE keeps its activations (``vae_storage``).

``EXACT`` (fp32 as loaded, one tile at a time in the official order, the official random draws) reproduces the
official outputs; ``FAST`` (bf16, batched and padded tiles, CUDA graphs on CUDA, upfront float32 noise) is the
default on CUDA. On the CPU the fast preset in float32 gives the exact tensors (tests/pipeline/test_execution.py).

``FastPathConfig`` is the old name of :class:`ExecutionConfig` (its defaults are the fast preset).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EXACT",
    "FAST",
    "PRESETS",
    "ExecutionConfig",
    "FastPathConfig",
    "backend_flags",
    "choose_tile_batch_size",
    "disable_fast_path",
    "enable_fast_path",
    "enable_offload",
    "fast_path_config_for",
    "max_tile_batch_for_memory",
    "resolve_tile_batch_size",
]

VAEStorage = Literal["auto", "device", "cpu"]
StepNoiseMode = Literal["per_step", "upfront"]
OffloadMode = Literal["model", "sequential"]


@dataclass(frozen=True)
class ExecutionConfig:
    """How the denoising loop runs (defaults: the ``fast`` preset).

    Attributes:
        name: ``"exact"``, ``"fast"`` or a name of your own (reports and logs).
        dtype: UNet/ControlNet/text-encoder dtype (bf16 default; with float16 the VAE stays float32). None keeps
            the dtypes the models were loaded with (the exact preset).
        float32_state: latent state, guidance, blending and step in float32 (False: the official promotion, the
            state follows ε̂: the model dtype untiled, float32 tiled).
        channels_last: channels-last UNet/ControlNet convolutions.
        sdpa: set PyTorch SDPA attention processors on UNet and ControlNet.
        tile_batch_size: latent tiles per ControlNet+UNet call (each with its CFG pair); None = the call's request,
            else automatic up to ``max_tile_batch_size`` (by free accelerator memory).
        max_tile_batch_size: bound of the automatic choice (1 = one tile at a time, the official order).
        pad_tiles: pad the last tile batch with repeats of its last tile (outputs dropped): static shapes.
        batch_cfg_pair: the CFG pair in one call (official); False: two calls of half the batch (less memory).
        cuda_graphs: capture each ControlNet+UNet shape in a CUDA graph (CUDA only, not with offload).
        compile: ``torch.compile`` the ControlNet+UNet call (static shapes), ``compile_mode`` its mode.
        step_noise: ``"per_step"`` (diffusers' draws in the dtype of ε̂) or ``"upfront"`` (float32, before the loop).
        vae_storage: where the banded VAE keeps full-resolution activations (``"auto"``: the accelerator when they
            fit, else the host).
        tf32: TF32 matmuls/convolutions on CUDA during a call (off: true float32; restored afterwards).
        cudnn_benchmark: cuDNN autotuning during a call (restored afterwards).
        max_graphs: CUDA graphs kept at once (least recently used dropped).
        strict: a failed CUDA-graph capture or compilation raises instead of running that shape eagerly.
    """

    name: str = "fast"
    dtype: torch.dtype | None = torch.bfloat16
    float32_state: bool = True
    channels_last: bool = True
    sdpa: bool = True
    tile_batch_size: int | None = None
    max_tile_batch_size: int = 8
    pad_tiles: bool = True
    batch_cfg_pair: bool = True
    cuda_graphs: bool = True
    compile: bool = False
    compile_mode: str = "default"
    step_noise: StepNoiseMode = "upfront"
    vae_storage: VAEStorage = "auto"
    tf32: bool = True
    cudnn_benchmark: bool = True
    max_graphs: int = 8
    strict: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"execution dtype must be bfloat16, float16, float32 or None, got {self.dtype}")
        if self.tile_batch_size is not None and self.tile_batch_size < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {self.tile_batch_size}")
        if self.max_tile_batch_size < 1:
            raise ValueError(f"max_tile_batch_size must be >= 1, got {self.max_tile_batch_size}")
        if self.vae_storage not in ("auto", "device", "cpu"):
            raise ValueError(f"vae_storage must be 'auto', 'device' or 'cpu', got {self.vae_storage!r}")
        if self.step_noise not in ("per_step", "upfront"):
            raise ValueError(f"step_noise must be 'per_step' or 'upfront', got {self.step_noise!r}")

    @property
    def vae_dtype(self) -> torch.dtype | None:
        """float32 when the models run in float16 (SD VAEs may overflow in fp16), else ``dtype``."""
        return torch.float32 if self.dtype == torch.float16 else self.dtype


#: the old name, kept for the CLI, the web server, the doctor and user code
FastPathConfig = ExecutionConfig

#: the official numerics: models as loaded (fp32 by default), one tile at a time, diffusers' random draws
EXACT = ExecutionConfig(
    name="exact",
    dtype=None,
    float32_state=False,
    channels_last=False,
    sdpa=False,
    max_tile_batch_size=1,
    pad_tiles=False,
    cuda_graphs=False,
    step_noise="per_step",
    tf32=False,
    cudnn_benchmark=False,
)
FAST = ExecutionConfig()
PRESETS = {"exact": EXACT, "fast": FAST}


def fast_path_config_for(
    device: torch.device,
    enabled: bool | None = None,
    *,
    compile: bool = False,
    dtype: torch.dtype | None = None,
    tile_batch_size: int | None = None,
    offload: bool = False,
    strict: bool = False,
) -> ExecutionConfig | None:
    """The fast preset for ``device``, or None (the exact preset) unless enabled (None = on for CUDA only).

    ``dtype`` overrides bf16 (default float16 on GPUs without bf16); ``offload`` disables CUDA graphs (weights move
    between calls); ``strict`` turns a graph/compile fallback into an error.
    """
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return None
    if dtype is None:
        dtype = torch.bfloat16
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            dtype = torch.float16
    return replace(
        FAST,
        dtype=dtype,
        compile=compile,
        tile_batch_size=tile_batch_size,
        cuda_graphs=device.type == "cuda" and not offload,
        strict=strict,
    )


# ---------------------------------------------------------------------------------------------------------------
# entering and leaving a preset


def _modules(pipe: Any) -> dict[str, torch.nn.Module]:
    names = ("unet", "controlnet", "vae", "text_encoder")
    return {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}


def _saved_state(pipe: Any) -> dict[str, Any]:
    """What :func:`enable_fast_path` changes, to put back on :func:`disable_fast_path`."""
    state: dict[str, Any] = {name: {"dtype": module.dtype} for name, module in _modules(pipe).items()}
    for name in ("unet", "controlnet"):
        module = getattr(pipe, name, None)
        if module is not None and hasattr(module, "attn_processors"):
            state[name]["processors"] = dict(module.attn_processors)
    return state


def _cast(module: torch.nn.Module, dtype: torch.dtype | None, channels_last: bool | None = None) -> None:
    # nn.Module.to: ModelMixin.to logs a spurious warning whenever a dtype is passed (diffusers 0.42)
    if dtype is not None:
        torch.nn.Module.to(module, dtype=dtype)
    if channels_last is not None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.nn.Module.to(module, memory_format=memory_format)


def enable_fast_path(pipe: Any, config: ExecutionConfig | None = None) -> ExecutionConfig:
    """Run ``pipe`` with ``config`` (default: the fast preset): cast UNet, ControlNet and text encoder to
    ``config.dtype`` and the VAE to ``config.vae_dtype`` (DAPE keeps float32), channels-last and SDPA as asked.
    What it changes is recorded once and put back by :func:`disable_fast_path`. Backend flags (TF32, cuDNN
    autotuning) are set only during each call (:func:`backend_flags`).

    Returns:
        The config in use (CUDA graphs switched off off-CUDA and under offload).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    config = config or FAST
    if getattr(pipe, "_saved_execution_state", None) is None:
        pipe._saved_execution_state = _saved_state(pipe)
    modules = _modules(pipe)
    for name in ("unet", "controlnet"):
        if name in modules:
            _cast(modules[name], config.dtype, config.channels_last)
            if config.sdpa:
                modules[name].set_attn_processor(AttnProcessor2_0())
    if "vae" in modules:
        _cast(modules["vae"], config.vae_dtype)  # the banded VAE slices NCHW bands: no channels-last
    if "text_encoder" in modules:
        _cast(modules["text_encoder"], config.dtype)
    if config.cuda_graphs and (pipe._execution_device.type != "cuda" or getattr(pipe, "_all_hooks", None)):
        config = replace(config, cuda_graphs=False)  # no CUDA, or offload hooks move the weights between calls
    pipe.fast_path = config
    pipe._fast_predictor = None
    return config


def disable_fast_path(pipe: Any) -> None:
    """Back to the exact preset, with the dtypes, memory format and attention processors from before
    :func:`enable_fast_path`."""
    state = getattr(pipe, "_saved_execution_state", None) or {}
    modules = _modules(pipe)
    for name, saved in state.items():
        if name not in modules:
            continue
        _cast(modules[name], saved["dtype"], False if name in ("unet", "controlnet") else None)
        if "processors" in saved:
            modules[name].set_attn_processor(saved["processors"])
    pipe._saved_execution_state = None
    pipe.fast_path = None
    pipe._fast_predictor = None


@contextlib.contextmanager
def backend_flags(config: ExecutionConfig, device: torch.device) -> Iterator[None]:
    """TF32 and cuDNN autotuning on or off as ``config`` says (CUDA only; the exact preset: both off, true float32
    and deterministic algorithm choice) for the duration of a call, then the caller's values again."""
    if device.type != "cuda":
        yield
        return
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.tf32
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


# ---------------------------------------------------------------------------------------------------------------
# offload


#: models offloaded in turn; ControlNet is kept out of the chain so that it stays on the device with the UNet for
#: the whole loop (loaded at its first call, released by ``maybe_free_model_hooks`` after the call), as diffusers'
#: ControlNet pipelines do. In the chain before the UNet, it went back to the CPU at every UNet call.
OFFLOAD_SEQUENCE = "tagger->text_encoder->unet->vae"


def offload_sequence(mode: OffloadMode) -> tuple[str, list[str]]:
    """``(model_cpu_offload_seq, resident models)`` for ``mode``: the VAE stays on the device (the banded VAE calls
    its layers directly); under sequential offload DAPE too (it reads its own device)."""
    resident = ["vae"] if mode == "model" else ["vae", "tagger"]
    sequence = [name for name in OFFLOAD_SEQUENCE.split("->") if name not in resident]
    return "->".join(sequence), resident


def enable_offload(pipe: Any, mode: OffloadMode = "model", device: torch.device | str | None = None) -> None:
    """CPU offloading for small GPUs (<= 8 GB): diffusers' model or sequential offload.

    ``"model"`` moves whole models to the GPU when they run, ControlNet and UNet staying there together for the
    whole loop; ``"sequential"`` moves layer by layer (lowest memory, slow). CUDA graphs are switched off and the
    graph cache dropped (the weights move).

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
    pipe.model_cpu_offload_seq, resident = offload_sequence(mode)
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
    unet: Any,
    device: torch.device,
    dtype: torch.dtype,
    tile_size: int,
    rows_per_tile: int,
    upper: int = 8,
    fraction: float = 0.6,
) -> int:
    """Largest tile batch whose ControlNet+UNet activations fit ``fraction`` of the free CUDA memory.

    Activation estimate per latent pixel and batch row: ``C0 · 160`` elements (``C0`` = the UNet's first width;
    the order of magnitude measured for SD-2 with SDPA attention). Returns ``upper`` without a memory query.
    """
    if device.type != "cuda":
        return upper
    free, _ = torch.cuda.mem_get_info(device)
    element = torch.finfo(dtype).bits // 8
    width = int(unet.config.block_out_channels[0])
    per_tile = rows_per_tile * tile_size * tile_size * width * 160 * element
    return max(1, min(upper, int(fraction * free // max(per_tile, 1))))


def resolve_tile_batch_size(
    config: ExecutionConfig, unet: Any, device: torch.device, tiles: Sequence[Any], rows: int, requested: int = 1
) -> int:
    """Tiles per call for one image: ``config.tile_batch_size``, else a requested size > 1, else automatic
    (:func:`max_tile_batch_for_memory` capped at ``config.max_tile_batch_size``, then
    :func:`choose_tile_batch_size`); 1 when untiled."""
    if len(tiles) <= 1:
        return 1
    if config.tile_batch_size is not None:
        return min(config.tile_batch_size, len(tiles))
    if requested > 1:
        return min(requested, len(tiles))
    if config.max_tile_batch_size == 1:
        return 1
    limit = max_tile_batch_for_memory(
        unet, device, unet.dtype, tiles[0].height, rows, upper=config.max_tile_batch_size
    )
    return choose_tile_batch_size(len(tiles), limit)
