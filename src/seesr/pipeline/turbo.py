"""The turbo pipeline: a SeeSR pipeline whose UNet is SD-turbo's with SeeSR's RCA layers (REFERENCE §1.15)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["load_turbo_pipeline"]


def load_turbo_pipeline(turbo_path: str | os.PathLike, base: Any) -> Any:
    """A SeeSR pipeline in turbo mode, sharing ``base``'s ControlNet and DAPE tagger.

    UNet = :func:`seesr.weights.turbo.graft_rca` (SD-turbo + ``base.unet``'s RCA); scheduler =
    :func:`seesr.weights.turbo.turbo_scheduler`; text encoder, tokenizer and VAE from the SD-turbo folder when it has
    them (the official script), else ``base``'s (SD-turbo reuses SD-2's OpenCLIP text encoder and VAE). Call it with
    ``**seesr.models.turbo.TURBO_DEFAULTS``.

    Args:
        turbo_path: the SD-turbo folder (diffusers layout).
        base: a loaded :class:`~seesr.pipeline.pipeline_seesr.SeeSRPipeline`. Its UNet is not modified (drop
            ``base`` afterwards to free it).

    Raises:
        seesr.weights.unet.CheckpointError / seesr.weights.loading.ModelLoadError: unusable SD-turbo files.
    """
    from seesr.weights.loading import load_text_encoder, load_tokenizer, load_vae
    from seesr.weights.turbo import graft_rca, turbo_scheduler

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
        pipeline.enable_fast_path(base.fast_path)
    return pipeline
