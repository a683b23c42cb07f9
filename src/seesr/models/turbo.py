"""SeeSR turbo mode: the SD-turbo UNet with SeeSR's RCA layers grafted in (REFERENCE §1.15, §8.6).

The official ``test_seesr_turbo.py`` builds the UNet from SD-turbo's config with image cross-attention switched
on, loads SD-turbo's UNet weights and then overwrites every ``image_attentions`` tensor with the SeeSR UNet's
(the RCA layers were trained against SD-2-base but transfer to the distilled model). ControlNet and DAPE are
SeeSR's, unchanged. Text encoder, tokenizer, VAE and scheduler config come from SD-turbo; sampling is DDPM with
*trailing* timestep spacing (2 steps: 999, 499), guidance 1.0 (so no CFG batch and no negative prompt) and latent
tile overlap 32.

This module holds the parts that read no file:

* :func:`graft_rca` - SD-turbo UNet model + SeeSR UNet -> the turbo UNet with SeeSR's RCA weights;
* :func:`turbo_scheduler_from_config` - the DDPM scheduler with trailing spacing from a stored config dict;
* :data:`TURBO_DEFAULTS` - the call arguments of the official turbo script.

Finding and reading the SD-turbo files is :mod:`seesr.weights.turbo`; the turbo pipeline is assembled by
:func:`seesr.pipeline.turbo.load_turbo_pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from diffusers import DDPMScheduler, UNet2DConditionModel

from seesr.models.image_cross_attention import (
    add_image_cross_attention,
    get_image_cross_attention_dim,
    iter_image_cross_attention,
)

logger = logging.getLogger(__name__)

__all__ = ["TURBO_DEFAULTS", "graft_rca", "turbo_scheduler_from_config"]

#: Call arguments of the official turbo script (test_seesr_turbo.py): 2 DDPM steps, no CFG, overlap 32.
TURBO_DEFAULTS: dict[str, Any] = {"num_inference_steps": 2, "guidance_scale": 1.0, "latent_tile_overlap": 32}

#: SD-2's schedule (scaled-linear betas 0.00085-0.012, 1000 steps, epsilon, offset 1), used without a stored config.
SD2_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}


def graft_rca(turbo_unet: UNet2DConditionModel, seesr_unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """SD-turbo's UNet with SeeSR's RCA (image cross-attention) layers copied in.

    Args:
        turbo_unet: the SD-turbo ``UNet2DConditionModel`` (stock, or already with RCA layers); it is **modified in
            place** (RCA layers added when missing, then overwritten).
        seesr_unet: the SeeSR UNet (with RCA), e.g. ``pipe.unet``; only its RCA weights are read.

    Returns:
        The turbo UNet with RCA, in eval mode: every non-RCA tensor from SD-turbo, every RCA tensor from SeeSR.

    Raises:
        ValueError: ``seesr_unet`` has no RCA layers, or the two UNets' topologies differ (the message names the
            layers).
    """
    image_dim = get_image_cross_attention_dim(seesr_unet)
    if image_dim is None:
        raise ValueError("seesr_unet has no image cross-attention (RCA) layers to graft; pass the SeeSR UNet")
    unet = turbo_unet
    own_dim = get_image_cross_attention_dim(unet)
    if own_dim is None:
        unet = add_image_cross_attention(unet, image_dim)
    elif own_dim != image_dim:
        raise ValueError(f"turbo UNet has RCA of width {own_dim}, the SeeSR UNet {image_dim}")
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


def turbo_scheduler_from_config(stored: Mapping[str, Any] | None = None, **overrides: Any) -> DDPMScheduler:
    """DDPM with trailing timestep spacing, as the official turbo script builds it from SD-turbo's scheduler config.

    ``stored``: the scheduler config dict (SD-turbo's ``scheduler_config.json``) or None for SD-2's schedule;
    ``overrides``: further fields. ``timestep_spacing`` is always ``"trailing"`` (SD-turbo's value) so that 2 steps
    are 999, 499 even when the config lacks the field; the stored class name (EulerDiscrete) is ignored, as in the
    official script.
    """
    config = dict(SD2_SCHEDULE)
    config.update({key: value for key, value in (stored or {}).items() if not key.startswith("_")})
    config.update(overrides)
    config["timestep_spacing"] = "trailing"
    return DDPMScheduler.from_config(config)
