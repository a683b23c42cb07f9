"""``SeeSRPipeline``: semantics-aware real-world super-resolution (SeeSR, CVPR 2024) on stock diffusers parts.

One LR image goes through (REFERENCE §1.3-§1.12, numbered like ``__call__``):

1. DAPE on the *original* LR image → tags (hard prompt) and image embeddings (soft prompt, (1, 145, 512));
2. prompt ``f"{tags}, {prompt},{added_prompt}"`` and the negative prompt, CLIP-encoded to (1, 77, D) each;
3. PIL-bicubic resize to ``I_lr↑`` (min side ``process_size // upscale``, × upscale, floor to /8): ControlNet
   condition in [0, 1], LRE input, colour-fix reference;
4. DDPM ("leading" spacing) from the LR embedding (LR latent noised to t = 999) or from pure noise;
5. each step: ControlNet + UNet (both with RCA on the DAPE embeddings, duplicated unchanged for CFG; uncond first),
   classifier-free guidance, DDPM step; Gaussian-blended latent tiles when ``h·w > tile²``;
6. VAE decode, uint8 rounding, colour fix (AdaIN / wavelet / none, truncating), PIL-bicubic resize back to
   ``upscale ×`` the original size.

Random numbers follow the fixture protocol (reference README §D) with an explicit generator per image and no use of
the global RNG: ``Generator().manual_seed(seed)`` draws the initial noise and every DDPM step's noise; the VAE
posterior noise is ``randn(2, 4, h, w)`` (row 0 used) from a *second* ``Generator().manual_seed(seed)``, which is
what the official code draws from the freshly seeded global RNG.

Steps 4-6 run the package's one denoising loop (:mod:`seesr.pipeline.denoise`) with an execution config
(:mod:`seesr.pipeline.execution`): ``exact`` (the default off CUDA; the official numerics above) or ``fast``
(:meth:`SeeSRPipeline.enable_fast_path`; bf16, batched tiles, CUDA graphs). The sampler is the scheduler's
(:mod:`seesr.pipeline.schedulers`: DDPM, DDIM or DPM-Solver++).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from seesr.pipeline.color_fix import COLOR_FIX_METHODS, apply_color_fix
from seesr.pipeline.denoise import GuidedDenoiser, NoisePredictor, StepNoise, denoise, predict_noise
from seesr.pipeline.execution import (
    EXACT,
    OFFLOAD_SEQUENCE,
    ExecutionConfig,
    backend_flags,
    disable_fast_path,
    enable_fast_path,
    resolve_tile_batch_size,
)
from seesr.pipeline.preprocess import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    build_prompt,
    edit_tags,
    prepare_control_image,
    split_tags,
)
from seesr.pipeline.schedulers import StepPlan, add_noise, check_scheduler, make_step_plan
from seesr.pipeline.tiling import tile_grid
from seesr.pipeline.vae_tiling import VAETilingConfig, vae_decode, vae_encode_moments

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LATENT_TILE_SIZE",
    "SeeSRPipeline",
    "SeeSRPipelineOutput",
    "auto_latent_tile_size",
    "predict_noise",
]

START_POINTS = ("lr", "noise")
DEFAULT_LATENT_TILE_SIZE = 96
DEFAULT_LATENT_TILE_OVERLAP = 4
#: timestep the LR latent is noised to for ``start_point="lr"`` (the official ``start_steps``)
LR_START_TIMESTEP = 999


@dataclass
class SeeSRPipelineOutput(BaseOutput):
    """Result of :class:`SeeSRPipeline`, one entry per input image.

    Attributes:
        images: upscaled PIL images, ``upscale ×`` the input size (or float arrays (H, W, 3) in [0, 1] when
            ``output_type="np"``).
        prompts / negative_prompts: the exact strings given to the text encoder.
        tags: the tags that entered the prompt (after ``extra_tags`` / ``remove_tags``).
        seeds: the seed of each image (drawn at random when none was given), None when a ``generator`` was passed.
        intermediates: per image, a dict of tensors/arrays for tests and debugging when ``return_intermediates``.
    """

    images: list[Any]
    prompts: list[str]
    negative_prompts: list[str]
    tags: list[list[str]]
    seeds: list[int | None]
    intermediates: list[dict[str, Any]] | None = None


def auto_latent_tile_size(
    unet: UNet2DConditionModel,
    device: torch.device,
    dtype: torch.dtype,
    tile_batch_size: int = 1,
    candidates: Sequence[int] = (96, 80, 64, 48, 32, 24, 16),
) -> int:
    """The largest latent tile (≤ the official 96) whose ControlNet+UNet step fits the free accelerator memory.

    On CPU and MPS (shared memory) this is the official 96. On CUDA the activation memory of one CFG step on a
    ``T×T`` tile is estimated as ``2·batch·T²·C0·160`` elements (C0 = first UNet width; measured order of
    magnitude for SD-2 with SDPA attention) and compared with 85 % of the free memory.
    """
    if device.type != "cuda":
        return candidates[0]
    free, _ = torch.cuda.mem_get_info(device)
    element = torch.finfo(dtype).bits // 8
    width = int(unet.config.block_out_channels[0])
    for tile in candidates:
        estimate = 2 * tile_batch_size * tile * tile * width * 160 * element
        if estimate < 0.85 * free:
            return tile
    return candidates[-1]


def _to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """VaeImageProcessor.postprocess: ``round(clamp(x/2 + 0.5, 0, 1)·255)`` → (H, W, 3) uint8 (clamp in the
    tensor's dtype, rounding in float32)."""
    image = (decoded / 2 + 0.5).clamp(0, 1)
    array = image.cpu().permute(0, 2, 3, 1).float().numpy()[0]
    return (array * 255).round().astype("uint8")


class SeeSRPipeline(DiffusionPipeline):
    """SeeSR super-resolution: DAPE tagger + CLIP text encoder + ControlNet/UNet with RCA + VAE, DDPM sampling.

    Components: ``vae`` (AutoencoderKL), ``text_encoder`` (CLIPTextModel), ``tokenizer`` (CLIPTokenizer), ``unet``
    and ``controlnet`` (stock diffusers models wrapped with image cross-attention by :mod:`seesr.models`),
    ``scheduler`` (DDPMScheduler; DDIM and DPM-Solver++ also run) and the optional ``tagger`` (:class:`~seesr.tagger.dape.DAPETagger`; without it
    pass ``image_encoder_hidden_states`` and tags yourself).

    Load with :meth:`from_pretrained` (release folder, converted bundle, or the default download location) and save
    a converted bundle with :meth:`save_pretrained`.
    """

    #: ControlNet is out of the chain: it stays on the device with the UNet for the whole loop (see
    #: :data:`seesr.pipeline.execution.OFFLOAD_SEQUENCE`)
    model_cpu_offload_seq = OFFLOAD_SEQUENCE
    _callback_tensor_inputs = ["latents", "noise_pred", "prompt_embeds", "image_embeds", "control_image"]
    _optional_components = ["tagger"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: Any,
        tagger: Any = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            tagger=tagger,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        #: when the VAE runs banded (memory-bounded); the defaults leave every normal-size image untouched
        self.vae_tiling = VAETilingConfig()
        #: the execution config when not the exact preset (:meth:`enable_fast_path`); None = ``exact``
        self.fast_path: ExecutionConfig | None = None
        self._fast_predictor: NoisePredictor | None = None
        self._saved_execution_state: dict[str, Any] | None = None
        self._interrupt = False

    # ------------------------------------------------------------------------------------------------------------
    # loading and saving

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        load_tagger: bool = True,
        **kwargs: Any,
    ) -> SeeSRPipeline:
        """Load from a release-layout folder, a converted bundle, or (None) the default download location.

        Args:
            pretrained_model_name_or_path: folder (see :func:`seesr.weights.resolve.resolve_model`) or None.
            device: where to put the models (default CPU).
            dtype: dtype of the VAE, text encoder, UNet and ControlNet (default float32); the tagger stays
                float32 as in the official scripts.
            load_tagger: False skips DAPE (then pass ``image_encoder_hidden_states`` to ``__call__``).

        Raises:
            seesr.weights.resolve.MissingWeightsError: files missing; the message lists them and how to get them.
        """
        from seesr.weights.loading import load_components

        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        components = load_components(
            pretrained_model_name_or_path, device=device, dtype=dtype, load_tagger=load_tagger
        )
        pipeline = cls(**components.modules())
        pipeline.model_location = components.location
        return pipeline

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """Write a converted bundle (safetensors only, our UNet/ControlNet layout, ``tagger/``, model_index.json)."""
        from seesr.weights.convert import write_bundle

        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        write_bundle(self, save_directory)

    # ------------------------------------------------------------------------------------------------------------
    # building blocks

    def encode_prompt(self, prompt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise (pad/truncate to the text encoder's 77 positions) and encode one prompt.

        Returns:
            ``(input_ids (1, 77) int64, embeds (1, 77, D))``; embeds = last hidden state after the final norm.
        """
        max_length = int(self.text_encoder.config.max_position_embeddings)
        input_ids = self.tokenizer(
            prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids
        embeds = self.text_encoder(input_ids.to(device))[0]
        return input_ids, embeds.to(self.text_encoder.dtype)

    def run_tagger(self, image: Image.Image) -> tuple[list[str], torch.Tensor]:
        """DAPE on the original LR ``image``: (tag names in tag-list order, image embeddings (1, 145, 512))."""
        if self.tagger is None:
            raise ValueError(
                "this pipeline has no tagger: load it with load_tagger=True, or pass image_encoder_hidden_states "
                "(and tags, or use_tags=False)"
            )
        results, image_embeds = self.tagger.tag_and_embed([image])
        return [tag.name for tag in results[0].tags], image_embeds

    def _seeded_generators(self, seed: int) -> tuple[torch.Generator, torch.Generator]:
        return torch.Generator("cpu").manual_seed(seed), torch.Generator("cpu").manual_seed(seed)

    # ------------------------------------------------------------------------------------------------------------
    # execution presets and diffusers conventions

    @property
    def execution(self) -> ExecutionConfig:
        """The execution config of the loop: the fast path's when enabled, else the ``exact`` preset."""
        return self.fast_path if self.fast_path is not None else EXACT

    @property
    def interrupt(self) -> bool:
        """True once a ``callback_on_step_end`` set ``pipe._interrupt = True``: the loop stops after that step."""
        return self._interrupt

    def enable_fast_path(self, config: ExecutionConfig | None = None) -> ExecutionConfig:
        """Run with ``config`` (default: the ``fast`` preset; bf16, batched tiles, CUDA graphs on CUDA):
        :func:`seesr.pipeline.execution.enable_fast_path`. Returns the config in use."""
        return enable_fast_path(self, config)

    def disable_fast_path(self) -> None:
        """Back to the ``exact`` preset, restoring the dtypes the models had before :meth:`enable_fast_path`."""
        disable_fast_path(self)

    def to(self, *args: Any, **kwargs: Any) -> SeeSRPipeline:  # type: ignore[override]
        """``DiffusionPipeline.to``; drops the cached CUDA graphs / compiled code (the weights moved)."""
        result = super().to(*args, **kwargs)
        self._fast_predictor = None
        return result

    def noise_predictor(self) -> NoisePredictor:
        """The cached ControlNet + UNet call for the current execution config (created on first use; its CUDA-graph
        key re-reads the weights' version at each call of this method, i.e. once per image)."""
        config = self.execution
        settings = (config.cuda_graphs, config.compile, config.compile_mode, config.max_graphs, config.strict)
        predictor = self._fast_predictor
        if (
            predictor is None
            or predictor.unet is not self.unet
            or predictor.controlnet is not self.controlnet
            or getattr(predictor, "settings", None) != settings
        ):
            predictor = NoisePredictor(
                self.unet,
                self.controlnet,
                cuda_graphs=config.cuda_graphs,
                compile=config.compile,
                compile_mode=config.compile_mode,
                max_graphs=config.max_graphs,
                strict=config.strict,
            )
            predictor.settings = settings
            self._fast_predictor = predictor
        predictor.refresh()  # weights may have been written since the last image
        return predictor

    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        prompt: str = "",
        added_prompt: str = DEFAULT_ADDED_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        *,
        tags: str | Sequence[str] | None = None,
        extra_tags: str | Sequence[str] = (),
        remove_tags: str | Sequence[str] = (),
        use_tags: bool = True,
        image_encoder_hidden_states: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.5,
        conditioning_scale: float = 1.0,
        upscale: int = 4,
        process_size: int = 512,
        start_point: str = "lr",
        latent_tile_size: int | str = DEFAULT_LATENT_TILE_SIZE,
        latent_tile_overlap: int = DEFAULT_LATENT_TILE_OVERLAP,
        tile_batch_size: int = 1,
        color_fix: str = "adain",
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_intermediates: bool = False,
        callback_on_step_end: Callable[..., dict[str, Any] | None] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ) -> SeeSRPipelineOutput | tuple:
        """Upscale one or more LR images; each image is processed (and seeded) on its own.

        Args:
            image: RGB PIL image(s), any size.
            prompt: user text inserted after the tags (``f"{tags}, {prompt},{added_prompt}"``).
            added_prompt / negative_prompt: official defaults ``"clean, high-resolution, 8k"`` /
                ``"dotted, noise, blur, lowres, smooth"``.
            tags: use these tags instead of DAPE's (``"a, b"`` or a list); DAPE still provides the image embeddings.
            extra_tags / remove_tags: edit the tags (case-insensitive removal; additions appended).
            use_tags: False leaves the tags out of the prompt ("skip tagging").
            image_encoder_hidden_states: DAPE embeddings (1, 145, 512) or (B, 145, 512) to use instead of running
                the tagger (then tags come from ``tags`` or are empty).
            num_inference_steps, guidance_scale, conditioning_scale: sampler steps, CFG weight (CFG iff > 1),
                ControlNet residual scale. The sampler is ``self.scheduler``: DDPM (official), DDIM or
                DPM-Solver++ (:data:`seesr.pipeline.schedulers.SUPPORTED_SCHEDULERS`).
            upscale, process_size: scale factor and minimum processing size (REFERENCE §1.4.1).
            start_point: ``"lr"`` (LR embedding noised to t = 999, default) or ``"noise"``.
            latent_tile_size, latent_tile_overlap: latent tiling (tile iff ``h·w > size²``); ``"auto"`` picks the
                largest tile that fits free accelerator memory (96 on CPU).
            tile_batch_size: latent tiles per ControlNet/UNet call (1 = official order, or automatic on the fast
                path; same per-tile maths).
            color_fix: ``"adain"`` (default), ``"wavelet"`` or ``"none"``.
            seed: per-image seed(s) (parity RNG protocol); None draws a random seed per image (reported in the
                output).
            generator: instead of seeds, one generator for every random draw of every image (initial noise, VAE
                posterior noise, step noise, in that order; not the official order of draws).
            output_type: ``"pil"`` or ``"np"`` (float (H, W, 3) in [0, 1]).
            return_intermediates: also return the tensors of every stage (for tests).
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs) -> dict | None`` after every
                step (diffusers' convention); ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs`` (from ``pipe._callback_tensor_inputs``); a returned
                ``"latents"`` replaces the latents. Setting ``pipe._interrupt = True`` stops after that step: the
                current image is finished from the latents so far and later images are not started.
        """
        # 1. Check inputs (before any work) and resolve per-image seeds
        options = _CallOptions(
            prompt=prompt,
            added_prompt=added_prompt,
            negative_prompt=negative_prompt,
            tags=tags,
            extra_tags=split_tags(extra_tags),
            remove_tags=split_tags(remove_tags),
            use_tags=use_tags,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            conditioning_scale=conditioning_scale,
            upscale=upscale,
            process_size=process_size,
            start_point=start_point,
            latent_tile_size=latent_tile_size,
            latent_tile_overlap=latent_tile_overlap,
            tile_batch_size=tile_batch_size,
            color_fix=color_fix,
            output_type=output_type,
            keep=return_intermediates,
            callback=callback_on_step_end,
            callback_inputs=tuple(callback_on_step_end_tensor_inputs),
        )
        images = [image] if isinstance(image, Image.Image) else list(image)
        seeds = self._check_inputs(images, options, seed, image_encoder_hidden_states, generator)
        device = self._execution_device
        options = self._resolve_tile_size(options, device)
        self._interrupt = False

        # 2. Upscale each image on its own (stop after an interrupt)
        results: list[_ImageResult] = []
        with backend_flags(self.execution, device):
            for index, lr_image in enumerate(images):
                embeds = _row(image_encoder_hidden_states, index)
                result = self._upscale_one(lr_image.convert("RGB"), options, embeds, seeds[index], generator, device)
                results.append(result)
                if self._interrupt:
                    break

        # 3. Release offloaded models and return
        self.maybe_free_model_hooks()
        return _output(results, options, return_dict)

    def _check_inputs(
        self,
        images: list[Image.Image],
        options: _CallOptions,
        seed: int | Sequence[int] | None,
        image_embeds: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> list[int | None]:
        """Validate every argument and the scheduler; per-image seeds (random when none, None with a generator)."""
        if not images:
            raise ValueError("no image given")
        options.validate()
        check_scheduler(self.scheduler)
        unknown = set(options.callback_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}"
            )
        if image_embeds is not None and image_embeds.shape[0] not in (1, len(images)):
            raise ValueError("image_encoder_hidden_states must have batch 1 or one row per image")
        if generator is not None:
            return [None] * len(images)
        seeds = [seed] * len(images) if isinstance(seed, int) or seed is None else list(seed)
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds given for {len(images)} images")
        return [secrets.randbelow(2**31) if value is None else value for value in seeds]

    def _resolve_tile_size(self, options: _CallOptions, device: torch.device) -> _CallOptions:
        size = options.latent_tile_size
        if size == "auto":
            size = auto_latent_tile_size(self.unet, device, self.unet.dtype, options.tile_batch_size)
        size = int(size)
        if size < 1:
            raise ValueError(f"latent_tile_size must be >= 1 or 'auto', got {size}")
        return replace(options, latent_tile_size=size)

    def _upscale_one(
        self,
        lr_image: Image.Image,
        options: _CallOptions,
        image_embeds: torch.Tensor | None,
        seed: int | None,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> _ImageResult:
        """One LR image through REFERENCE §1.3-§1.12: the steps below."""
        saved: dict[str, Any] = {}
        # the latent state dtype: the models' (official promotion) or float32 (fast presets)
        state_dtype = torch.float32 if self.execution.float32_state else self.unet.dtype

        # 1. Hard and soft prompt (DAPE on the ORIGINAL LR image), CLIP text embeddings, CFG batch
        condition = self._condition(lr_image, options, image_embeds, device, saved)

        # 2. Control image I_lr↑ (PIL bicubic resizes), (1, 3, H, W) in [0, 1]
        control_pil, control = self._control_image(lr_image, options, device, state_dtype)

        # 3. Sampler plan (timesteps kept on the host) and the per-image generators
        plan = make_step_plan(self.scheduler, options.num_inference_steps)
        if generator is None:
            generator, posterior_generator = self._seeded_generators(seed)
        else:
            posterior_generator = generator

        # 4. Start latents: LR embedding noised to t = 999, or pure noise
        latents = self._start_latents(control, options, generator, posterior_generator, state_dtype, saved)

        # 5. Denoising loop (latent tiles, CFG, sampler step, callbacks)
        saved.update(prompt_input_ids=condition.ids, timesteps=torch.tensor(plan.timesteps))
        latents = self._denoise(latents, plan, condition, control, options, generator, saved)

        # 6. Decode, uint8, colour fix against I_lr↑, resize back to upscale × the original size
        final = self._finish(latents, lr_image, control_pil, options, saved)
        return _ImageResult(final, condition.prompt, condition.tags, seed, saved if options.keep else {})

    def _condition(
        self,
        lr_image: Image.Image,
        options: _CallOptions,
        image_embeds: torch.Tensor | None,
        device: torch.device,
        saved: dict[str, Any],
    ) -> _Condition:
        """Tags and DAPE embeddings, the prompt, CLIP embeddings; with CFG ``[negative, positive]`` and the DAPE
        embeddings duplicated unchanged (REFERENCE §1.5 step 3)."""
        tag_list: list[str] = []
        if image_embeds is None or (options.use_tags and options.tags is None):
            tagger_tags, tagger_embeds = self.run_tagger(lr_image)
            image_embeds = tagger_embeds if image_embeds is None else image_embeds
            tag_list = tagger_tags
        if options.tags is not None:
            tag_list = split_tags(options.tags)
        if not options.use_tags:
            tag_list = []
        tag_list = edit_tags(tag_list, options.extra_tags, options.remove_tags)
        full_prompt = build_prompt(tag_list, options.prompt, options.added_prompt)
        prompt_ids, prompt_embeds = self.encode_prompt(full_prompt, device)
        image_embeds = image_embeds.to(device=device, dtype=self.unet.dtype)
        if options.guidance_scale > 1.0:
            negative_ids, negative_embeds = self.encode_prompt(options.negative_prompt, device)
            prompt_ids = torch.cat([negative_ids, prompt_ids])
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            image_embeds = torch.cat([image_embeds, image_embeds])
        prompt_embeds = prompt_embeds.to(self.unet.dtype)
        saved.update(prompt=full_prompt, prompt_embeds=prompt_embeds, image_encoder_hidden_states=image_embeds[:1])
        return _Condition(full_prompt, tag_list, prompt_ids, prompt_embeds, image_embeds)

    def _control_image(
        self, lr_image: Image.Image, options: _CallOptions, device: torch.device, dtype: torch.dtype
    ) -> tuple[Image.Image, torch.Tensor]:
        control_pil = prepare_control_image(lr_image, options.upscale, options.process_size)
        width, height = control_pil.size
        if width < self.vae_scale_factor or height < self.vae_scale_factor:
            raise ValueError(f"image too small to process ({lr_image.size[0]}x{lr_image.size[1]})")
        control_array = np.asarray(control_pil, dtype=np.float32) / 255.0
        control = torch.from_numpy(control_array).permute(2, 0, 1)[None].to(device=device, dtype=dtype)
        return control_pil, control

    def _start_latents(
        self,
        control: torch.Tensor,
        options: _CallOptions,
        generator: torch.Generator,
        posterior_generator: torch.Generator,
        state_dtype: torch.dtype,
        saved: dict[str, Any],
    ) -> torch.Tensor:
        """Initial noise ε (generator), then for ``start_point="lr"`` ``√ᾱ_999·z_lr + √(1−ᾱ_999)·ε`` with ``z_lr``
        the posterior sample of the control image (REFERENCE §1.8, RNG as §1.13 with private generators)."""
        height, width = (size // self.vae_scale_factor for size in control.shape[-2:])
        shape = (1, self.unet.config.in_channels, height, width)
        noise = randn_tensor(shape, generator=generator, device=control.device, dtype=state_dtype)
        noise = noise * self.scheduler.init_noise_sigma
        saved.update(init_noise_latents=noise)
        if options.start_point != "lr":
            saved.update(start_latents=noise)
            return noise
        moments = vae_encode_moments(self.vae, control * 2 - 1, self.vae_tiling, self.execution.vae_storage)
        if self.execution.float32_state:
            moments = moments.float()
        posterior = DiagonalGaussianDistribution(moments)
        # the official code encodes both (identical) CFG rows: draw (2, …) and keep row 0 for RNG parity
        rows = 2 if options.guidance_scale > 1.0 else 1
        eps = randn_tensor(
            (rows, *posterior.mean.shape[1:]),
            generator=posterior_generator,
            device=control.device,
            dtype=moments.dtype,
        )[:1]
        sample = posterior.mean + posterior.std * eps
        lr_latents = (sample * self.vae.config.scaling_factor).to(state_dtype)
        latents = add_noise(self.scheduler, lr_latents, noise, LR_START_TIMESTEP)
        saved.update(
            vae_posterior_mean=posterior.mean,
            vae_posterior_std=posterior.std,
            vae_posterior_eps=eps,
            vae_posterior_sample=sample,
            lr_latents_scaled=lr_latents,
            start_latents=latents,
        )
        return latents

    def _denoise(
        self,
        latents: torch.Tensor,
        plan: StepPlan,
        condition: _Condition,
        control: torch.Tensor,
        options: _CallOptions,
        generator: torch.Generator,
        saved: dict[str, Any],
    ) -> torch.Tensor:
        """The one loop: tiles when ``h·w > tile²`` (Gaussian-blended), CFG, sampler step, per the execution config."""
        config = self.execution
        tiles = tile_grid(*latents.shape[-2:], options.latent_tile_size, options.latent_tile_overlap)
        rows = condition.prompt_embeds.shape[0]
        control_batch = torch.cat([control] * rows)
        size = resolve_tile_batch_size(config, self.unet, latents.device, tiles, rows, options.tile_batch_size)
        denoiser = GuidedDenoiser(
            self.noise_predictor(),
            tuple(latents.shape[-2:]),
            tiles,
            condition.prompt_embeds,
            condition.image_embeds,
            control_batch,
            options.guidance_scale,
            options.conditioning_scale,
            size,
            pad_tiles=config.pad_tiles,
            batch_cfg_pair=config.batch_cfg_pair,
            compute_dtype=self.unet.dtype,
            float32_output=config.float32_state,
        )
        noise = StepNoise(plan, latents.shape, generator, latents.device, config.step_noise)
        saved.update(tiles=tiles, step_noise_pred=[], step_latents_out=[])
        with self.progress_bar(total=len(plan.timesteps)) as progress:
            on_step = self._step_hook(options, condition, control_batch, progress, saved)
            latents = denoise(denoiser, plan, latents, noise, float32_state=config.float32_state, on_step=on_step)
        return latents

    def _step_hook(
        self, options: _CallOptions, condition: _Condition, control: torch.Tensor, progress: Any, saved: dict
    ) -> Callable[[int, int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, bool]]:
        """After each step: intermediates, progress, ``callback_on_step_end`` (tensors only when asked), interrupt."""

        def on_step(index: int, timestep: int, noise_pred: torch.Tensor, latents: torch.Tensor):
            if options.keep:
                saved["step_noise_pred"].append(noise_pred)
                saved["step_latents_out"].append(latents)
            progress.update()
            if options.callback is not None:
                available = {
                    "latents": latents,
                    "noise_pred": noise_pred,
                    "prompt_embeds": condition.prompt_embeds,
                    "image_embeds": condition.image_embeds,
                    "control_image": control,
                }
                kwargs = {name: available[name] for name in options.callback_inputs}
                returned = options.callback(self, index, timestep, kwargs) or {}
                latents = returned.get("latents", latents)
            return latents, self._interrupt

        return on_step

    def _finish(
        self,
        latents: torch.Tensor,
        lr_image: Image.Image,
        control_pil: Image.Image,
        options: _CallOptions,
        saved: dict[str, Any],
    ) -> Image.Image:
        """Decode (as diffusers' VaeImageProcessor), colour fix against I_lr↑ (truncating), PIL-bicubic resize to
        ``upscale ×`` the original size (a copy when it already matches)."""
        scaling = self.vae.config.scaling_factor
        config = self.execution
        # fast presets divide in float32 (the VAE casts); exact divides in the VAE dtype, as the official code
        decoder_input = latents / scaling if config.float32_state else latents.to(self.vae.dtype) / scaling
        decoded = vae_decode(self.vae, decoder_input, self.vae_tiling, config.vae_storage)
        if config.float32_state:
            decoded = decoded.float()
        pipeline_uint8 = _to_uint8(decoded)
        fixed = apply_color_fix(Image.fromarray(pipeline_uint8), control_pil, options.color_fix)
        lr_width, lr_height = lr_image.size
        final = fixed.resize((lr_width * options.upscale, lr_height * options.upscale), Image.Resampling.BICUBIC)
        if options.keep:
            saved.update(
                control_image_uint8=np.asarray(control_pil),
                step_noise_pred=torch.cat(saved["step_noise_pred"]),
                step_latents_out=torch.cat(saved["step_latents_out"]),
                final_latents=latents,
                vae_decoder_input=decoder_input,
                decoded_image=decoded,
                pipeline_output_uint8=pipeline_uint8,
                colorfix_output_uint8=np.asarray(fixed),
                final_output_uint8=np.asarray(final),
            )
        return final


# ---------------------------------------------------------------------------------------------------------------
# call plumbing


@dataclass(frozen=True)
class _CallOptions:
    """The per-call arguments of :meth:`SeeSRPipeline.__call__` shared by every image."""

    prompt: str
    added_prompt: str
    negative_prompt: str
    tags: str | Sequence[str] | None
    extra_tags: list[str]
    remove_tags: list[str]
    use_tags: bool
    num_inference_steps: int
    guidance_scale: float
    conditioning_scale: float
    upscale: int
    process_size: int
    start_point: str
    latent_tile_size: int | str
    latent_tile_overlap: int
    tile_batch_size: int
    color_fix: str
    output_type: str
    keep: bool
    callback: Callable[..., dict[str, Any] | None] | None
    callback_inputs: tuple[str, ...]

    def validate(self) -> None:
        checks = [
            (self.start_point in START_POINTS, f"start_point must be one of {START_POINTS}, got {self.start_point!r}"),
            (
                self.color_fix in (*COLOR_FIX_METHODS, "nofix"),
                f"color_fix must be one of {COLOR_FIX_METHODS}, got {self.color_fix!r}",
            ),
            (self.num_inference_steps >= 1, f"num_inference_steps must be >= 1, got {self.num_inference_steps}"),
            (
                self.upscale >= 1 and self.process_size >= 8,
                f"upscale must be >= 1 and process_size >= 8, got {self.upscale} and {self.process_size}",
            ),
            (self.output_type in ("pil", "np"), f"output_type must be 'pil' or 'np', got {self.output_type!r}"),
            (self.tile_batch_size >= 1, f"tile_batch_size must be >= 1, got {self.tile_batch_size}"),
            (self.latent_tile_overlap >= 0, f"latent_tile_overlap must be >= 0, got {self.latent_tile_overlap}"),
            (self.callback is None or callable(self.callback), "callback_on_step_end must be callable"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class _Condition:
    prompt: str
    tags: list[str]
    ids: torch.Tensor
    prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor


@dataclass
class _ImageResult:
    image: Image.Image
    prompt: str
    tags: list[str]
    seed: int | None
    saved: dict[str, Any]


def _row(embeds: torch.Tensor | None, index: int) -> torch.Tensor | None:
    if embeds is None:
        return None
    return embeds[index : index + 1] if embeds.shape[0] > 1 else embeds


def _output(results: list[_ImageResult], options: _CallOptions, return_dict: bool) -> SeeSRPipelineOutput | tuple:
    images = [
        result.image if options.output_type == "pil" else np.asarray(result.image, dtype=np.float32) / 255
        for result in results
    ]
    prompts = [result.prompt for result in results]
    tags = [result.tags for result in results]
    if not return_dict:
        return (images, prompts, tags)
    return SeeSRPipelineOutput(
        images=images,
        prompts=prompts,
        negative_prompts=[options.negative_prompt] * len(results),
        tags=tags,
        seeds=[result.seed for result in results],
        intermediates=[result.saved for result in results] if options.keep else None,
    )
