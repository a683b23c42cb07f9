"""SeeSR's representation cross-attention (RCA), added to stock diffusers models by composition.

The official SeeSR code forks diffusers' UNet blocks and gives every block with cross-attention a parallel list
``image_attentions``: for each text ``Transformer2DModel`` a second, complete ``Transformer2DModel`` (GroupNorm,
proj_in, self-attention, cross-attention to the DAPE image embeddings, GEGLU feed-forward, proj_out, residual) that
runs right after the text one (REFERENCE.md §2.2-2.3).

Here the stock ``UNet2DConditionModel`` / ``ControlNetModel`` stay untouched. Each text transformer is replaced in
place by :class:`TextImageTransformer2D`, which runs the original transformer (``.text_transformer``) and then its
image twin (``.image_transformer``). The DAPE embeddings reach it through the ``cross_attention_kwargs`` dictionary
that diffusers already forwards to every cross-attention block, under the reserved key :data:`IMAGE_KEY`::

    unet(sample, t, encoder_hidden_states=text_embeds,
         cross_attention_kwargs={IMAGE_KEY: dape_embeds}, return_dict=False)[0]

Because the new layers are ordinary diffusers modules, ``attn_processors`` / ``set_attn_processor``, SDPA,
``enable_gradient_checkpointing()`` and dtype/device casts reach them without extra code.

Key names differ from the official checkpoints only by the wrapper level; see :mod:`seesr.models.convert`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

__all__ = [
    "DEFAULT_IMAGE_CROSS_ATTENTION_DIM",
    "IMAGE_KEY",
    "MissingImageEmbeddingsError",
    "TextImageTransformer2D",
    "add_image_cross_attention",
    "freeze_all_but_image_cross_attention",
    "get_image_cross_attention_dim",
    "image_cross_attention_parameters",
    "iter_image_cross_attention",
]

#: Reserved ``cross_attention_kwargs`` key carrying the DAPE image embeddings, shape (B, 145, 512).
IMAGE_KEY = "image_encoder_hidden_states"

#: Width of the DAPE soft prompt (RAM's ``image_proj`` output). The official code hard-codes it as the constructor
#: default ``image_cross_attention_dim=512`` of three block classes; here it is the single default every builder
#: and loader falls back to. Loaders prefer the value stored with (or inferred from) the checkpoint.
DEFAULT_IMAGE_CROSS_ATTENTION_DIM = 512

# Transformer2DModel.__init__ arguments copied verbatim from the text transformer's config to its image twin.
_TRANSFORMER_INIT_KEYS = frozenset(inspect.signature(Transformer2DModel.__init__).parameters) - {"self"}


class MissingImageEmbeddingsError(ValueError):
    """Raised when a model with image cross-attention is called without the DAPE embeddings."""


class TextImageTransformer2D(nn.Module):
    """A stock text ``Transformer2DModel`` followed by an image twin that cross-attends to DAPE embeddings.

    This is SeeSR's representation cross-attention (RCA): ``x -> text_transformer(x, text) ->
    image_transformer(., dape)``. The image twin copies every hyper-parameter of the text transformer's config
    (heads, head dim, layers, norm groups, linear projection, upcast, only_cross_attention, ...) except
    ``cross_attention_dim``, which becomes ``image_cross_attention_dim``. It is freshly initialised with diffusers'
    default init (the official training init, not zero-init).

    Args:
        text_transformer: the stock transformer to wrap; kept as ``.text_transformer`` (same object).
        image_cross_attention_dim: width of the image embeddings the twin attends to (512 for DAPE).
    """

    def __init__(self, text_transformer: Transformer2DModel, image_cross_attention_dim: int) -> None:
        super().__init__()
        if isinstance(text_transformer, DualTransformer2DModel) or not isinstance(
            text_transformer, Transformer2DModel
        ):
            raise TypeError(
                "image cross-attention can only wrap diffusers Transformer2DModel blocks, "
                f"got {type(text_transformer).__name__}"
            )
        if not text_transformer.is_input_continuous:
            raise TypeError("image cross-attention needs a Transformer2DModel on continuous (B, C, H, W) inputs")
        image_cross_attention_dim = int(image_cross_attention_dim)
        if image_cross_attention_dim <= 0:
            raise ValueError(f"image_cross_attention_dim must be positive, got {image_cross_attention_dim}")
        config = {k: v for k, v in text_transformer.config.items() if k in _TRANSFORMER_INIT_KEYS}
        config["cross_attention_dim"] = image_cross_attention_dim
        self._image_cross_attention_dim = image_cross_attention_dim
        self.text_transformer = text_transformer
        self.image_transformer = Transformer2DModel(**config)
        parameter = next(text_transformer.parameters(), None)
        if parameter is not None and parameter.device.type != "meta":
            nn.Module.to(self.image_transformer, device=parameter.device, dtype=parameter.dtype)

    @property
    def image_cross_attention_dim(self) -> int:
        """Width of the image embeddings the RCA attends to."""
        return self._image_cross_attention_dim

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        class_labels: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Text cross-attention transformer, then the RCA transformer.

        Args:
            hidden_states: (B, C, H, W) feature map.
            encoder_hidden_states: (B, L_text, D_text) text embeddings (CLIP: (B, 77, 1024)).
            cross_attention_kwargs: must contain :data:`IMAGE_KEY` -> (B, L_img, D_img) DAPE embeddings
                ((B, 145, 512)). The key is removed before the remaining kwargs reach the attention processors.
            encoder_attention_mask: text mask; applied to the text branch only (the image branch has no mask).
            return_dict: as in ``Transformer2DModel``.

        Returns:
            (B, C, H, W) in a ``Transformer2DModelOutput`` or a 1-tuple.
        """
        attention_kwargs = dict(cross_attention_kwargs or {})
        image_hidden_states = attention_kwargs.pop(IMAGE_KEY, None)
        if image_hidden_states is None:
            raise MissingImageEmbeddingsError(
                "this SeeSR UNet/ControlNet has image cross-attention (RCA) layers but was called without the DAPE "
                f"image embeddings; pass cross_attention_kwargs={{{IMAGE_KEY!r}: image_embeds}} with image_embeds of "
                f"shape (batch, tokens, {self.image_cross_attention_dim})"
            )
        if image_hidden_states.ndim != 3 or image_hidden_states.shape[-1] != self.image_cross_attention_dim:
            raise ValueError(
                f"{IMAGE_KEY} must have shape (batch, tokens, {self.image_cross_attention_dim}), "
                f"got {tuple(image_hidden_states.shape)}"
            )
        if image_hidden_states.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"{IMAGE_KEY} has batch size {image_hidden_states.shape[0]} but the latents have batch size "
                f"{hidden_states.shape[0]}; with classifier-free guidance duplicate the image embeddings exactly "
                "like the text embeddings"
            )
        shared = {
            "timestep": timestep,
            "added_cond_kwargs": added_cond_kwargs,
            "class_labels": class_labels,
            "cross_attention_kwargs": attention_kwargs,
            "attention_mask": attention_mask,
            "return_dict": False,
        }
        hidden_states = self.text_transformer(
            hidden_states, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask, **shared
        )[0]
        hidden_states = self.image_transformer(hidden_states, image_hidden_states, **shared)[0]
        if not return_dict:
            return (hidden_states,)
        return Transformer2DModelOutput(sample=hidden_states)


def _cross_attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a UNet/ControlNet that may hold cross-attention transformers, in state-dict order."""
    blocks: list[nn.Module] = [*getattr(model, "down_blocks", [])]
    if getattr(model, "mid_block", None) is not None:
        blocks.append(model.mid_block)
    blocks.extend(getattr(model, "up_blocks", []))
    return blocks


def add_image_cross_attention(
    model: UNet2DConditionModel | ControlNetModel, image_cross_attention_dim: int = DEFAULT_IMAGE_CROSS_ATTENTION_DIM
) -> UNet2DConditionModel | ControlNetModel:
    """Wrap every cross-attention transformer of ``model`` in a :class:`TextImageTransformer2D`, in place.

    The new image transformers are freshly initialised on the device/dtype of the wrapped ones (or on the meta
    device when built inside ``accelerate.init_empty_weights()``).

    Args:
        model: a stock ``UNet2DConditionModel`` or ``ControlNetModel`` (SD-2 topology or any other using
            ``Transformer2DModel`` blocks).
        image_cross_attention_dim: width of the DAPE embeddings (512).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: if ``model`` already has image cross-attention or has no cross-attention transformer.
    """
    if get_image_cross_attention_dim(model) is not None:
        raise ValueError(f"{type(model).__name__} already has image cross-attention layers")
    wrapped = 0
    for block in _cross_attention_blocks(model):
        attentions = getattr(block, "attentions", None)
        if attentions is None:
            continue
        for index, transformer in enumerate(attentions):
            if isinstance(transformer, Transformer2DModel):
                attentions[index] = TextImageTransformer2D(transformer, image_cross_attention_dim)
                wrapped += 1
            elif isinstance(transformer, DualTransformer2DModel):
                raise TypeError("dual cross-attention UNets are not supported by SeeSR's image cross-attention")
    if wrapped == 0:
        raise ValueError(f"{type(model).__name__} has no cross-attention transformer to extend")
    return model


def iter_image_cross_attention(model: nn.Module) -> Iterator[tuple[str, TextImageTransformer2D]]:
    """Yield ``(qualified_name, module)`` for every :class:`TextImageTransformer2D` in ``model``, in order."""
    for name, module in model.named_modules():
        if isinstance(module, TextImageTransformer2D):
            yield name, module


def get_image_cross_attention_dim(model: nn.Module) -> int | None:
    """The image-embedding width the RCA layers of ``model`` expect, or None if it has no RCA layers.

    Raises:
        ValueError: if different RCA layers disagree (a corrupted model).
    """
    dims = {module.image_cross_attention_dim for _, module in iter_image_cross_attention(model)}
    if not dims:
        return None
    if len(dims) > 1:
        raise ValueError(f"inconsistent image cross-attention widths in one model: {sorted(dims)}")
    return dims.pop()


def image_cross_attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every RCA layer (the ``image_transformer`` of each wrapper) of ``model``, selected by type."""
    return [p for _, module in iter_image_cross_attention(model) for p in module.image_transformer.parameters()]


def freeze_all_but_image_cross_attention(model: nn.Module) -> list[nn.Parameter]:
    """Set ``requires_grad`` to False everywhere except on the RCA layers (SeeSR stage-2 UNet setup).

    Returns:
        The RCA parameters, now trainable (e.g. to hand to an optimizer).

    Raises:
        ValueError: if ``model`` has no RCA layers.
    """
    params = image_cross_attention_parameters(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no image cross-attention layers to train")
    model.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    return params
