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
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from seesr.models.image_cross_attention import IMAGE_KEY
from seesr.pipeline import fast
from seesr.pipeline.color_fix import COLOR_FIX_METHODS, apply_color_fix
from seesr.pipeline.preprocess import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    build_prompt,
    edit_tags,
    prepare_control_image,
    split_tags,
)
from seesr.pipeline.tiling import Tile, blend, gaussian_weights, tile_grid
from seesr.pipeline.vae_tiling import VAETilingConfig, vae_decode, vae_encode_moments

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LATENT_TILE_SIZE",
    "SeeSRPipeline",
    "SeeSRPipelineOutput",
    "auto_latent_tile_size",
    "denoise_step",
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


def predict_noise(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    control_image: torch.Tensor,
    conditioning_scale: float,
) -> torch.Tensor:
    """One ControlNet + UNet evaluation (REFERENCE §1.9 steps 2-3).

    Args:
        sample: latents (N, 4, h, w) in the model dtype.
        timestep: 0-dim tensor.
        prompt_embeds: CLIP embeddings (N, 77, D).
        image_embeds: DAPE embeddings (N, 145, 512).
        control_image: LR condition (N, 3, 8h, 8w) in [0, 1].
        conditioning_scale: ControlNet residual multiplier (applied inside the ControlNet).

    Returns:
        Noise prediction ε̂ (N, 4, h, w).
    """
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


def denoise_step(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    prompt_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    control_image: torch.Tensor,
    guidance_scale: float,
    conditioning_scale: float = 1.0,
    tiles: Sequence[Tile] | None = None,
    tile_weights: torch.Tensor | None = None,
    tile_batch_size: int = 1,
) -> torch.Tensor:
    """Guided noise prediction for one denoising step (no scheduler update, no host synchronisation).

    Args:
        latents: current latents (1, 4, h, w).
        timestep: 0-dim tensor on the model device.
        prompt_embeds: (2, 77, D) ``[negative, positive]`` with CFG, else (1, 77, D), in the model dtype.
        image_embeds / control_image: CFG-batched like ``prompt_embeds``: (2, 145, 512) and (2, 3, 8h, 8w).
        guidance_scale: CFG weight ``g``; CFG is on iff the prompt batch is twice the latent batch.
        tiles: latent tiles from :func:`~seesr.pipeline.tiling.tile_grid`; None or one full tile = untiled.
        tile_weights: blending weights (1, 1, T, T) (default float64 Gaussian).
        tile_batch_size: tiles evaluated together (same per-tile maths; 1 reproduces the official order exactly).

    Returns:
        ε̂ (1, 4, h, w): ``ε_u + g·(ε_c − ε_u)``. Untiled it keeps the model dtype; tiled it is float32 (the merged
        prediction, as in the official code).
    """
    do_cfg = prompt_embeds.shape[0] == 2 * latents.shape[0]
    model_input = torch.cat([latents, latents]) if do_cfg else latents
    model_input = model_input.to(prompt_embeds.dtype)  # tiled steps leave float32 latents (official promotion)
    height, width = latents.shape[-2:]
    if tiles is None or (len(tiles) == 1 and tiles[0].height == height and tiles[0].width == width):
        noise_pred = predict_noise(
            unet, controlnet, model_input, timestep, prompt_embeds, image_embeds, control_image, conditioning_scale
        )
    else:
        scale = control_image.shape[-1] // width
        batch = model_input.shape[0]
        predictions: list[torch.Tensor] = []
        for start in range(0, len(tiles), tile_batch_size):
            chunk = tiles[start : start + tile_batch_size]
            count = len(chunk)
            sample = torch.cat([model_input[:, :, tile.rows, tile.cols] for tile in chunk])
            condition = torch.cat([control_image[(slice(None), slice(None), *tile.scaled(scale))] for tile in chunk])
            output = predict_noise(
                unet,
                controlnet,
                sample,
                timestep,
                prompt_embeds.repeat(count, 1, 1),
                image_embeds.repeat(count, 1, 1),
                condition,
                conditioning_scale,
            )
            predictions.extend(output.split(batch))
        noise_pred = blend(predictions, list(tiles), height, width, tile_weights)
    if do_cfg:
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
    return noise_pred


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
    ``scheduler`` (DDPMScheduler) and the optional ``tagger`` (:class:`~seesr.tagger.dape.DAPETagger`; without it
    pass ``image_encoder_hidden_states`` and tags yourself).

    Load with :meth:`from_pretrained` (release folder, converted bundle, or the default download location) and save
    a converted bundle with :meth:`save_pretrained`.
    """

    model_cpu_offload_seq = "tagger->text_encoder->controlnet->unet->vae"
    _optional_components = ["tagger"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: DDPMScheduler,
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
        #: fast-path settings (:class:`seesr.pipeline.fast.FastPathConfig`); None = the exact path
        self.fast_path = None
        self._fast_predictor = None

    def enable_fast_path(self, config: Any = None) -> Any:
        """Switch to the fast path (bf16, batched tiles, CUDA graphs, ...): :func:`seesr.pipeline.fast.enable_fast_path`."""
        return fast.enable_fast_path(self, config)

    def disable_fast_path(self) -> None:
        """Back to the exact loop (the models keep the dtype the fast path gave them)."""
        self.fast_path = None
        self._fast_predictor = None

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
            num_inference_steps, guidance_scale, conditioning_scale: DDPM steps, CFG weight (CFG iff > 1),
                ControlNet residual scale.
            upscale, process_size: scale factor and minimum processing size (REFERENCE §1.4.1).
            start_point: ``"lr"`` (LR embedding noised to t = 999, default) or ``"noise"``.
            latent_tile_size, latent_tile_overlap: latent tiling (tile iff ``h·w > size²``); ``"auto"`` picks the
                largest tile that fits free accelerator memory (96 on CPU).
            tile_batch_size: latent tiles per ControlNet/UNet call (1 = official order; on the fast path 1 means
                automatic).
            color_fix: ``"adain"`` (default), ``"wavelet"`` or ``"none"``.
            seed: per-image seed(s) (parity RNG protocol); None draws a random seed per image (reported in the
                output).
            generator: instead of seeds, one generator for every random draw of every image (initial noise, VAE
                posterior noise, step noise, in that order; not the official order of draws).
            output_type: ``"pil"`` or ``"np"`` (float (H, W, 3) in [0, 1]).
            return_intermediates: also return the tensors of every stage (for tests).
        """
        # 1. Check inputs
        images = [image] if isinstance(image, Image.Image) else list(image)
        if not images:
            raise ValueError("no image given")
        if start_point not in START_POINTS:
            raise ValueError(f"start_point must be one of {START_POINTS}, got {start_point!r}")
        if color_fix not in (*COLOR_FIX_METHODS, "nofix"):
            raise ValueError(f"color_fix must be one of {COLOR_FIX_METHODS}, got {color_fix!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if upscale < 1 or process_size < 8:
            raise ValueError(f"upscale must be >= 1 and process_size >= 8, got {upscale} and {process_size}")
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}")
        if tile_batch_size < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
        if latent_tile_overlap < 0:
            raise ValueError(f"latent_tile_overlap must be >= 0, got {latent_tile_overlap}")
        if isinstance(seed, int) or seed is None:
            seeds: list[int | None] = [seed] * len(images)
        else:
            seeds = list(seed)
            if len(seeds) != len(images):
                raise ValueError(f"{len(seeds)} seeds given for {len(images)} images")
        if image_encoder_hidden_states is not None and image_encoder_hidden_states.shape[0] not in (1, len(images)):
            raise ValueError("image_encoder_hidden_states must have batch 1 or one row per image")
        device = self._execution_device
        if latent_tile_size == "auto":
            latent_tile_size = auto_latent_tile_size(self.unet, device, self.unet.dtype, tile_batch_size)
        latent_tile_size = int(latent_tile_size)
        if latent_tile_size < 1:
            raise ValueError(f"latent_tile_size must be >= 1 or 'auto', got {latent_tile_size}")

        outputs: list[Any] = []
        prompts: list[str] = []
        negatives: list[str] = []
        all_tags: list[list[str]] = []
        used_seeds: list[int | None] = []
        intermediates: list[dict[str, Any]] = []
        for index, lr_image in enumerate(images):
            embeds = None
            if image_encoder_hidden_states is not None:
                rows = image_encoder_hidden_states
                embeds = rows[index : index + 1] if rows.shape[0] > 1 else rows
            image_seed = None if generator is not None else seeds[index]
            if image_seed is None and generator is None:
                image_seed = secrets.randbelow(2**31)
            result = self._upscale_one(
                lr_image.convert("RGB"),
                prompt=prompt,
                added_prompt=added_prompt,
                negative_prompt=negative_prompt,
                tags=tags,
                extra_tags=split_tags(extra_tags),
                remove_tags=split_tags(remove_tags),
                use_tags=use_tags,
                image_embeds=embeds,
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
                seed=image_seed,
                generator=generator,
                device=device,
                keep=return_intermediates,
            )
            output_image, prompt_text, tag_list, saved = result
            outputs.append(output_image if output_type == "pil" else np.asarray(output_image, dtype=np.float32) / 255)
            prompts.append(prompt_text)
            negatives.append(negative_prompt)
            all_tags.append(tag_list)
            used_seeds.append(image_seed)
            intermediates.append(saved)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (outputs, prompts, all_tags)
        return SeeSRPipelineOutput(
            images=outputs,
            prompts=prompts,
            negative_prompts=negatives,
            tags=all_tags,
            seeds=used_seeds,
            intermediates=intermediates if return_intermediates else None,
        )

    def _upscale_one(
        self,
        lr_image: Image.Image,
        *,
        prompt: str,
        added_prompt: str,
        negative_prompt: str,
        tags: str | Sequence[str] | None,
        extra_tags: list[str],
        remove_tags: list[str],
        use_tags: bool,
        image_embeds: torch.Tensor | None,
        num_inference_steps: int,
        guidance_scale: float,
        conditioning_scale: float,
        upscale: int,
        process_size: int,
        start_point: str,
        latent_tile_size: int,
        latent_tile_overlap: int,
        tile_batch_size: int,
        color_fix: str,
        seed: int | None,
        generator: torch.Generator | None,
        device: torch.device,
        keep: bool,
    ) -> tuple[Image.Image, str, list[str], dict[str, Any]]:
        saved: dict[str, Any] = {}
        dtype = self.unet.dtype
        fast_path = self.fast_path
        # the fast path keeps the latent state (and so every random draw) in float32, whatever the model dtype
        state_dtype = torch.float32 if fast_path is not None else dtype

        # 2. Hard and soft prompt from DAPE on the ORIGINAL LR image
        tag_list: list[str] = []
        if image_embeds is None or (use_tags and tags is None):
            tagger_tags, tagger_embeds = self.run_tagger(lr_image)
            if image_embeds is None:
                image_embeds = tagger_embeds
            tag_list = tagger_tags
        if tags is not None:
            tag_list = split_tags(tags)
        if not use_tags:
            tag_list = []
        tag_list = edit_tags(tag_list, extra_tags, remove_tags)
        full_prompt = build_prompt(tag_list, prompt, added_prompt)

        # 3. Text embeddings, CFG batch [negative, positive]; the DAPE embeddings are duplicated unchanged
        do_cfg = guidance_scale > 1.0
        prompt_ids, prompt_embeds = self.encode_prompt(full_prompt, device)
        image_embeds = image_embeds.to(device=device, dtype=dtype)
        if do_cfg:
            negative_ids, negative_embeds = self.encode_prompt(negative_prompt, device)
            prompt_ids = torch.cat([negative_ids, prompt_ids])
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            image_embeds = torch.cat([image_embeds, image_embeds])
        prompt_embeds = prompt_embeds.to(dtype)

        # 4. Control image I_lr↑: PIL bicubic resizes, (1, 3, H, W) in [0, 1]
        control_pil = prepare_control_image(lr_image, upscale, process_size)
        width, height = control_pil.size
        if width < self.vae_scale_factor or height < self.vae_scale_factor:
            raise ValueError(f"image too small to process ({lr_image.size[0]}x{lr_image.size[1]})")
        control_array = np.asarray(control_pil, dtype=np.float32) / 255.0
        control = torch.from_numpy(control_array).permute(2, 0, 1)[None].to(device=device, dtype=state_dtype)
        control_batch = torch.cat([control, control]) if do_cfg else control

        # 5. Timesteps (DDPM, "leading" spacing + steps_offset: 981, 961, …, 1 for 50 steps). The scheduler keeps
        #    its schedule on the CPU so that its step() never waits for the accelerator; the models get device copies.
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = self.scheduler.timesteps
        model_timesteps = timesteps.to(device)

        # 6. Initial noise ε from the per-image generator
        if generator is None:
            assert seed is not None
            generator, posterior_generator = self._seeded_generators(seed)
        else:
            posterior_generator = generator
        latent_height, latent_width = height // self.vae_scale_factor, width // self.vae_scale_factor
        channels = self.unet.config.in_channels
        shape = (1, channels, latent_height, latent_width)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=state_dtype)
        noise = noise * self.scheduler.init_noise_sigma

        # 7. Start point: LR embedding (LR latent noised to t = 999) or pure noise
        if start_point == "lr":
            vae_dtype = self.vae.dtype
            if fast_path is not None:
                moments = fast.encode_moments(
                    self.vae, control * 2 - 1, self.vae_tiling, fast_path.vae_storage
                ).float()
                vae_dtype = torch.float32
            else:
                moments = vae_encode_moments(self.vae, (control * 2 - 1).to(vae_dtype), self.vae_tiling)
            posterior = DiagonalGaussianDistribution(moments)
            # the official code encodes both (identical) CFG rows: draw (2, …) and keep row 0 for RNG parity
            eps_rows = 2 if do_cfg else 1
            posterior_eps = randn_tensor(
                (eps_rows, *posterior.mean.shape[1:]), generator=posterior_generator, device=device, dtype=vae_dtype
            )[:1]
            posterior_sample = posterior.mean + posterior.std * posterior_eps
            lr_latents = (posterior_sample * self.vae.config.scaling_factor).to(state_dtype)
            start_timestep = torch.tensor([LR_START_TIMESTEP], device=device)
            latents = self.scheduler.add_noise(lr_latents, noise, start_timestep)
            if keep:
                saved.update(
                    vae_posterior_mean=posterior.mean,
                    vae_posterior_std=posterior.std,
                    vae_posterior_eps=posterior_eps,
                    vae_posterior_sample=posterior_sample,
                    lr_latents_scaled=lr_latents,
                )
        else:
            latents = noise

        # 8. Denoising loop (tiled when h·w > tile², Gaussian-blended, float32 merged prediction)
        tiles = tile_grid(latent_height, latent_width, latent_tile_size, latent_tile_overlap)
        tile_weights = None
        if len(tiles) > 1:
            weight_dtype = torch.float32 if device.type == "mps" else torch.float64
            tile_weights = gaussian_weights(tiles[0].height, tiles[0].width, device=device, dtype=weight_dtype)
        if keep:
            saved.update(
                prompt=full_prompt,
                prompt_input_ids=prompt_ids,
                prompt_embeds=prompt_embeds,
                image_encoder_hidden_states=image_embeds[:1],
                control_image_uint8=np.asarray(control_pil),
                init_noise_latents=noise,
                start_latents=latents,
                timesteps=timesteps,
                tiles=tiles,
            )
        step_predictions, step_latents = [], []
        with self.progress_bar(total=len(timesteps)) as progress:
            if fast_path is not None:

                def on_step(index: int, noise_pred: torch.Tensor, step_output: torch.Tensor) -> None:
                    if keep:
                        step_predictions.append(noise_pred)
                        step_latents.append(step_output)
                    progress.update()

                latents = fast.run_denoising(
                    self,
                    latents,
                    timesteps,
                    prompt_embeds,
                    image_embeds,
                    control_batch,
                    tiles,
                    guidance_scale=guidance_scale,
                    conditioning_scale=conditioning_scale,
                    generator=generator,
                    tile_batch_size=tile_batch_size,
                    on_step=on_step,
                )
            else:
                for index, timestep in enumerate(timesteps.tolist()):
                    noise_pred = denoise_step(
                        self.unet,
                        self.controlnet,
                        latents,
                        model_timesteps[index],
                        prompt_embeds,
                        image_embeds,
                        control_batch,
                        guidance_scale,
                        conditioning_scale,
                        tiles,
                        tile_weights,
                        tile_batch_size,
                    )
                    latents = self.scheduler.step(
                        noise_pred, timestep, latents, generator=generator, return_dict=False
                    )[0]
                    if keep:
                        step_predictions.append(noise_pred)
                        step_latents.append(latents)
                    progress.update()

        # 9. Decode and round to uint8 (as diffusers' VaeImageProcessor)
        if fast_path is not None:
            decoder_input = latents / self.vae.config.scaling_factor
            decoded = fast.decode_latents(self.vae, decoder_input, self.vae_tiling, fast_path.vae_storage).float()
        else:
            decoder_input = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            decoded = vae_decode(self.vae, decoder_input, self.vae_tiling)
        pipeline_uint8 = _to_uint8(decoded)
        generated = Image.fromarray(pipeline_uint8)

        # 10. Colour fix against I_lr↑ (truncating back-conversion)
        fixed = apply_color_fix(generated, control_pil, color_fix)

        # 11. Resize back to upscale × the original size (PIL bicubic; a copy when the size already matches)
        lr_width, lr_height = lr_image.size
        final = fixed.resize((lr_width * upscale, lr_height * upscale), Image.Resampling.BICUBIC)

        if keep:
            saved.update(
                step_noise_pred=torch.cat(step_predictions),
                step_latents_out=torch.cat(step_latents),
                final_latents=latents,
                vae_decoder_input=decoder_input,
                decoded_image=decoded,
                pipeline_output_uint8=pipeline_uint8,
                colorfix_output_uint8=np.asarray(fixed),
                final_output_uint8=np.asarray(final),
            )
        return final, full_prompt, tag_list, saved
