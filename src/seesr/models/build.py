"""Build SeeSR's trainable UNet + ControlNet pair from a stock Stable Diffusion 2 UNet (training start).

Official behaviour (REFERENCE.md §2.5, §4.1): the UNet is SD-2-base plus freshly initialised RCA layers; the
ControlNet is ``ControlNetModel.from_unet(unet, use_image_cross_attention=True)``, i.e. a copy of the UNet encoder
(conv_in, time embedding, down blocks, mid block) *including its fresh RCA layers*, plus a new conditioning
embedding (channels (16, 32, 96, 256), zero-initialised ``conv_out``) and zero-initialised 1x1 output convs.

Composition order matters (STYLE.md §2.3, trap 2): stock ``from_unet`` cannot copy blocks from an already wrapped
UNet, so we (1) run ``from_unet`` on the stock UNet, (2) add RCA to both models, (3) copy the UNet's
``down_blocks`` / ``mid_block`` state, now including the RCA, into the ControlNet with strict loading.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from seesr.models.image_cross_attention import (
    DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
    add_image_cross_attention,
    freeze_all_but_image_cross_attention,
    get_image_cross_attention_dim,
)

__all__ = ["DEFAULT_CONDITIONING_CHANNELS", "build_seesr_unet_and_controlnet"]

#: Channels of ControlNet's conditioning embedding in SeeSR (the "trainable image encoder" on the LR image).
DEFAULT_CONDITIONING_CHANNELS: tuple[int, ...] = (16, 32, 96, 256)


def build_seesr_unet_and_controlnet(
    base_unet: UNet2DConditionModel,
    image_cross_attention_dim: int = DEFAULT_IMAGE_CROSS_ATTENTION_DIM,
    conditioning_embedding_out_channels: Sequence[int] = DEFAULT_CONDITIONING_CHANNELS,
    *,
    unet_trainable: str = "all",
) -> tuple[UNet2DConditionModel, ControlNetModel]:
    """Turn a stock SD-2 UNet into SeeSR's UNet and ControlNet with freshly initialised RCA layers.

    Args:
        base_unet: a stock ``UNet2DConditionModel`` (e.g. SD-2-base ``unet/``). **Modified in place** (its
            cross-attention transformers get RCA twins) and returned as the SeeSR UNet; this avoids holding a
            second 865M-parameter copy.
        image_cross_attention_dim: width of the DAPE image embeddings (512). Take it from the tagger's config.
        conditioning_embedding_out_channels: ControlNet conditioning-embedding channels; the last one must be a
            multiple of the first UNet block's GroupNorm groups as in diffusers.
        unet_trainable: which UNet parameters get ``requires_grad=True``: ``"all"`` (default, nothing frozen),
            ``"rca"`` (SeeSR stage 2: only the RCA layers, the rest frozen) or ``"none"``. The ControlNet is always
            fully trainable.

    Returns:
        ``(unet, controlnet)``: the ControlNet's encoder, RCA included, equals the UNet's at return time. Both stay
        on the device/dtype of ``base_unet``.

    Raises:
        ValueError: if ``base_unet`` already has RCA layers (load it with ``load_seesr_unet`` instead) or
            ``unet_trainable`` is unknown.
    """
    if unet_trainable not in ("rca", "all", "none"):
        raise ValueError(f"unet_trainable must be 'rca', 'all' or 'none', got {unet_trainable!r}")
    if get_image_cross_attention_dim(base_unet) is not None:
        raise ValueError(
            "base_unet already has image cross-attention; build_seesr_unet_and_controlnet expects a stock SD-2 UNet"
        )
    # 1. ControlNet encoder cloned from the stock UNet (conv_in, time embedding, down/mid blocks).
    controlnet = ControlNetModel.from_unet(
        base_unet,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        load_weights_from_unet=True,
    )
    parameter = next(base_unet.parameters())
    nn.Module.to(controlnet, device=parameter.device, dtype=parameter.dtype)  # not ModelMixin.to: spurious warning

    # 2. Fresh RCA layers in the UNet, placeholder RCA layers in the ControlNet.
    unet = add_image_cross_attention(base_unet, image_cross_attention_dim)
    add_image_cross_attention(controlnet, image_cross_attention_dim)

    # 3. "RCA cloned together with the encoder": copy the UNet's wrapped blocks into the ControlNet (strict).
    controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=True)
    controlnet.mid_block.load_state_dict(unet.mid_block.state_dict(), strict=True)

    # 4. Trainability as in SeeSR stage 2.
    controlnet.requires_grad_(True)
    if unet_trainable == "rca":
        freeze_all_but_image_cross_attention(unet)
    else:
        unet.requires_grad_(unet_trainable == "all")
    return unet, controlnet
