"""SeeSR turbo mode: the SD-turbo UNet with SeeSR's RCA layers grafted in (REFERENCE §1.15, §8.6).

The official ``test_seesr_turbo.py`` builds the UNet from SD-turbo's config with image cross-attention switched
on, loads SD-turbo's UNet weights and then overwrites every ``image_attentions`` tensor with the SeeSR UNet's
(the RCA layers were trained against SD-2-base but transfer to the distilled model). ControlNet and DAPE are
SeeSR's, unchanged. Text encoder, tokenizer, VAE and scheduler config come from SD-turbo; sampling is DDPM with
*trailing* timestep spacing (2 steps: 999, 499), guidance 1.0 (so no CFG batch and no negative prompt) and latent
tile overlap 32.

* :func:`graft_rca` - SD-turbo UNet (folder or model) + SeeSR UNet -> UNet with SD-turbo weights and SeeSR RCA;
* :func:`turbo_scheduler` - the DDPM scheduler with trailing spacing;
* :func:`find_turbo_folder` - where the SD-turbo files are (explicit folder, ``MODEL/turbo``, Hugging Face cache);
* :func:`load_turbo_pipeline` - a turbo :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline` sharing a loaded
  SeeSR pipeline's ControlNet and DAPE tagger;
* :data:`TURBO_DEFAULTS` - the call arguments of the official turbo script;
* :data:`TURBO_CATALOG` - the optional ``stabilityai/sd-turbo`` files (same layout as SD-2-base).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from seesr.models.image_cross_attention import (
    DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
    add_image_cross_attention,
    get_image_cross_attention_dim,
    iter_image_cross_attention,
)
from seesr.weights.unet import CheckpointError, load_seesr_unet
from seesr.weights.catalog import LICENSES, TURBO_CATALOG, TURBO_REPO

logger = logging.getLogger(__name__)

__all__ = [
    "TURBO_CATALOG",
    "TURBO_DEFAULTS",
    "TURBO_LICENSE",
    "TURBO_REPO",
    "find_turbo_folder",
    "graft_rca",
    "load_turbo_pipeline",
    "turbo_scheduler",
]

TURBO_LICENSE = LICENSES[TURBO_REPO]

#: Call arguments of the official turbo script (test_seesr_turbo.py): 2 DDPM steps, no CFG, overlap 32.
TURBO_DEFAULTS: dict[str, Any] = {"num_inference_steps": 2, "guidance_scale": 1.0, "latent_tile_overlap": 32}


def _unet_folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    if (folder / "config.json").is_file():
        return folder
    raise CheckpointError(
        f"{folder} is neither an SD-turbo folder (with unet/config.json) nor a UNet folder (with config.json); "
        "download it with `seesr download --turbo`"
    )


def find_turbo_folder(turbo_model: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> Path:
    """The SD-turbo folder: ``turbo_model`` if given, else ``MODEL/turbo`` of a model folder, else the
    ``stabilityai/sd-turbo`` snapshot in the Hugging Face cache (never downloads).

    Raises:
        seesr.weights.resolve.MissingWeightsError: nothing found; the message says how to get the files.
    """
    from seesr.weights.resolve import MissingWeightsError, cached_file

    if turbo_model is not None:
        folder = Path(turbo_model).expanduser()
        if not folder.is_dir():
            raise MissingWeightsError(f"SD-turbo folder {folder} does not exist")
        return folder
    if model is not None and (Path(model).expanduser() / "turbo" / "unet" / "config.json").is_file():
        return Path(model).expanduser() / "turbo"
    found = {entry.filename: cached_file(entry) for entry in TURBO_CATALOG}
    if all(path is not None for path in found.values()):
        return found["unet/config.json"].parents[1]  # the snapshot folder
    missing = [name for name, path in found.items() if path is None]
    raise MissingWeightsError(
        f"turbo mode needs the SD-turbo weights ({TURBO_REPO}, {TURBO_LICENSE}); missing: {', '.join(missing)}. "
        "Get them with `seesr download --turbo` (or place the folder at MODEL/turbo) or pass "
        "--turbo-model FOLDER"
    )


def graft_rca(
    turbo_unet: str | os.PathLike | UNet2DConditionModel,
    seesr_unet: UNet2DConditionModel,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> UNet2DConditionModel:
    """SD-turbo's UNet with SeeSR's RCA (image cross-attention) layers copied in.

    Args:
        turbo_unet: the SD-turbo folder (or its ``unet/`` folder: stock diffusers UNet, loaded strictly apart from
            the RCA layers it lacks), or a ``UNet2DConditionModel`` (stock, or already with RCA layers; it is
            **modified in place**).
        seesr_unet: the SeeSR UNet (with RCA), e.g. ``pipe.unet``; only its RCA weights are read.
        dtype / device: for a folder, the dtype (default: that of ``seesr_unet``) and device (default: that of
            ``seesr_unet``) to load to; the RCA weights are cast to the result's dtype.

    Returns:
        The turbo UNet with RCA, in eval mode: every non-RCA tensor from SD-turbo, every RCA tensor from SeeSR.

    Raises:
        ValueError: ``seesr_unet`` has no RCA layers, or the two UNets' topologies differ (the message names the
            layers).
        CheckpointError: the folder cannot be loaded.
    """
    image_dim = get_image_cross_attention_dim(seesr_unet)
    if image_dim is None:
        raise ValueError("seesr_unet has no image cross-attention (RCA) layers to graft; pass the SeeSR UNet")
    reference = next(seesr_unet.parameters())
    if isinstance(turbo_unet, UNet2DConditionModel):
        unet = turbo_unet
        own_dim = get_image_cross_attention_dim(unet)
        if own_dim is None:
            unet = add_image_cross_attention(unet, image_dim)
        elif own_dim != image_dim:
            raise ValueError(f"turbo UNet has RCA of width {own_dim}, the SeeSR UNet {image_dim}")
    else:
        unet = load_seesr_unet(
            _unet_folder(turbo_unet),
            dtype=dtype or reference.dtype,
            device=device or reference.device,
            allow_missing_rca=True,
            image_cross_attention_dim=image_dim or DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
        )
    targets = dict(iter_image_cross_attention(unet))
    sources = dict(iter_image_cross_attention(seesr_unet))
    if targets.keys() != sources.keys():
        missing = sorted(sources.keys() - targets.keys())
        extra = sorted(targets.keys() - sources.keys())
        raise ValueError(
            "the turbo UNet and the SeeSR UNet have different cross-attention layouts "
            f"(only in SeeSR: {missing[:5]}, only in turbo: {extra[:5]})"
        )
    for name, target in targets.items():
        state = sources[name].image_transformer.state_dict()
        try:
            target.image_transformer.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"RCA layer {name} does not fit the turbo UNet: {error}") from error
    logger.info("grafted %d SeeSR RCA layers into the turbo UNet", len(targets))
    return unet.eval()


def turbo_scheduler(path: str | os.PathLike | None = None, **overrides: Any) -> DDPMScheduler:
    """DDPM with trailing timestep spacing, as the official turbo script builds it from SD-turbo's scheduler config.

    Args:
        path: an SD-turbo folder (reads ``scheduler/scheduler_config.json``), a scheduler folder or config file,
            or None for the SD-2 schedule (scaled-linear betas 0.00085-0.012, 1000 steps, epsilon, offset 1).
        overrides: further config fields.

    ``timestep_spacing`` is always ``"trailing"`` (SD-turbo's value) so that 2 steps are 999, 499 even when the
    config file lacks the field; the file's class name (EulerDiscrete) is ignored, as in the official script.
    """
    config: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "clip_sample": False,
        "steps_offset": 1,
    }
    if path is not None:
        location = Path(path).expanduser()
        candidates = [location, location / "scheduler_config.json", location / "scheduler" / "scheduler_config.json"]
        file = next((candidate for candidate in candidates if candidate.is_file()), None)
        if file is None:
            raise CheckpointError(f"no scheduler_config.json at {location}")
        stored = json.loads(file.read_text(encoding="utf-8"))
        config.update({key: value for key, value in stored.items() if not key.startswith("_")})
    config.update(overrides)
    config["timestep_spacing"] = "trailing"
    return DDPMScheduler.from_config(config)


def load_turbo_pipeline(turbo_path: str | os.PathLike, base: Any) -> Any:
    """A SeeSR pipeline in turbo mode, sharing ``base``'s ControlNet and DAPE tagger.

    UNet = :func:`graft_rca` (SD-turbo + ``base.unet``'s RCA); scheduler = :func:`turbo_scheduler`; text encoder,
    tokenizer and VAE from the SD-turbo folder when it has them (the official script), else ``base``'s (SD-turbo
    reuses SD-2's OpenCLIP text encoder and VAE). Call it with ``**TURBO_DEFAULTS``.

    Args:
        turbo_path: the SD-turbo folder (diffusers layout).
        base: a loaded :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline`. Its UNet is not modified (drop
            ``base`` afterwards to free it).

    Raises:
        seesr.weights.unet.CheckpointError / seesr.weights.loading.ModelLoadError: unusable SD-turbo files.
    """
    from seesr.weights.loading import load_text_encoder, load_tokenizer, load_vae

    folder = Path(turbo_path).expanduser()
    reference = next(base.unet.parameters())
    unet = graft_rca(folder, base.unet, dtype=reference.dtype, device=reference.device)
    scheduler = turbo_scheduler(folder if (folder / "scheduler").is_dir() else None)
    text_encoder, tokenizer, vae = base.text_encoder, base.tokenizer, base.vae
    if (folder / "text_encoder" / "config.json").is_file():
        text_encoder = load_text_encoder(folder / "text_encoder", base.text_encoder.dtype, base.text_encoder.device)
    if (folder / "tokenizer").is_dir():
        tokenizer = load_tokenizer(folder / "tokenizer", int(text_encoder.config.vocab_size))
    if (folder / "vae" / "config.json").is_file():
        vae = load_vae(folder / "vae", base.vae.dtype, base.vae.device)
    pipeline = type(base)(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=base.controlnet,
        scheduler=scheduler,
        tagger=base.tagger,
    )
    pipeline.vae_tiling = base.vae_tiling
    pipeline.model_location = getattr(base, "model_location", None)
    if getattr(base, "fast_path", None) is not None:
        from seesr.pipeline.fast import enable_fast_path

        enable_fast_path(pipeline, base.fast_path)
    return pipeline
