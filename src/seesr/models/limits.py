"""UNet / ControlNet with RCA built from a config on the meta device, after the config's sizes are checked.

Nothing here reads a file: a loader (:mod:`seesr.weights.unet`) passes the parsed ``config.json``, builds the empty
model with :func:`empty_seesr_model`, compares its shapes with the checkpoint, and only then assigns real tensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from seesr.models.image_cross_attention import add_image_cross_attention
from seesr.utils.limits import check_config_limits

__all__ = [
    "SCHEDULER_CONFIG_LIMITS",
    "TEXT_ENCODER_CONFIG_LIMITS",
    "UNET_CONFIG_LIMITS",
    "VAE_CONFIG_LIMITS",
    "check_unet_config",
    "empty_seesr_model",
]

ModelT = TypeVar("ModelT", UNet2DConditionModel, ControlNetModel)

#: Upper bounds of UNet / ControlNet config fields (SD-2: 320..1280 channels, 2 layers per block, 1024-d text).
UNET_CONFIG_LIMITS: dict[str, int] = {
    "block_out_channels": 8192,
    "layers_per_block": 16,
    "transformer_layers_per_block": 16,
    "cross_attention_dim": 8192,
    "attention_head_dim": 1024,
    "num_attention_heads": 1024,
    "sample_size": 4096,
    "in_channels": 64,
    "out_channels": 64,
    "conditioning_channels": 64,
    "conditioning_embedding_out_channels": 8192,
    "norm_num_groups": 1024,
    "time_embedding_dim": 16384,
    "projection_class_embeddings_input_dim": 16384,
    "num_class_embeds": 100000,
    "encoder_hid_dim": 16384,
    "addition_time_embed_dim": 8192,
    "time_cond_proj_dim": 8192,
    "conv_in_kernel": 15,
    "conv_out_kernel": 15,
    "addition_embed_type_num_heads": 1024,
    "global_pool_conditions": 1,
}
#: Upper bound of the RCA width (DAPE: 512).
MAX_IMAGE_CROSS_ATTENTION_DIM = 8192


def check_unet_config(
    config: Mapping[str, Any], image_cross_attention_dim: int | None, *, source: str | os.PathLike
) -> None:
    """Raise :class:`~seesr.utils.limits.ConfigLimitError` when a field is outside :data:`UNET_CONFIG_LIMITS`."""
    check_config_limits(config, UNET_CONFIG_LIMITS, source=source)
    check_config_limits(
        {"image_cross_attention_dim": image_cross_attention_dim or 0},
        {"image_cross_attention_dim": MAX_IMAGE_CROSS_ATTENTION_DIM},
        source=source,
    )


def empty_seesr_model(
    model_class: type[ModelT],
    config: Mapping[str, Any],
    image_cross_attention_dim: int | None,
    *,
    fresh_rca: bool = False,
) -> ModelT:
    """``model_class.from_config(config)`` with RCA layers, every tensor on the meta device (nothing allocated).

    ``image_cross_attention_dim`` None builds the stock model (no RCA). With ``fresh_rca`` the RCA layers get real,
    freshly initialised CPU tensors (the training start from a stock checkpoint). Errors of diffusers on a broken
    config propagate (ValueError / TypeError / KeyError).
    """
    with torch.device("meta"):
        model = model_class.from_config(dict(config))
        if image_cross_attention_dim is not None and not fresh_rca:
            add_image_cross_attention(model, image_cross_attention_dim)
    if image_cross_attention_dim is not None and fresh_rca:
        add_image_cross_attention(model, image_cross_attention_dim)
    return model


#: Upper bounds of the stock parts' configs (SD-2: VAE 128..512 channels; OpenCLIP-H text encoder 1024 x 23 layers).
VAE_CONFIG_LIMITS: dict[str, int] = {
    "block_out_channels": 8192,
    "layers_per_block": 16,
    "in_channels": 64,
    "out_channels": 64,
    "latent_channels": 64,
    "norm_num_groups": 1024,
    "sample_size": 8192,
}
TEXT_ENCODER_CONFIG_LIMITS: dict[str, int] = {
    "hidden_size": 16384,
    "intermediate_size": 65536,
    "num_hidden_layers": 128,
    "num_attention_heads": 256,
    "max_position_embeddings": 4096,
    "vocab_size": 1_000_000,
    "projection_dim": 16384,
}
SCHEDULER_CONFIG_LIMITS: dict[str, int] = {"num_train_timesteps": 100_000}
