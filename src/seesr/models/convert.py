"""Pure key renaming between the official SeeSR UNet/ControlNet checkpoints and our composed models.

The official fork stores the representation cross-attention (RCA) next to the text transformers::

    <block>.attentions.<j>.<rest>          text transformer
    <block>.image_attentions.<j>.<rest>    RCA transformer

Our models wrap both in one :class:`~seesr.models.image_cross_attention.TextImageTransformer2D`::

    <block>.attentions.<j>.text_transformer.<rest>
    <block>.attentions.<j>.image_transformer.<rest>

Every other key (resnets, samplers, conv_in, time embedding, ControlNet heads, ...) is identical. Both functions are
idempotent (keys already in the target layout pass unchanged), never touch tensor values, and raise on collisions.
They apply to UNet/ControlNet state dicts only (the VAE also has ``mid_block.attentions.0``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["official_to_seesr_key", "official_to_seesr_keys", "seesr_to_official_key", "seesr_to_official_keys"]

V = TypeVar("V")

# "(start|.)attentions.<j>." not already followed by the wrapper level; "image_attentions" is excluded by the
# required "." (or start) before "attentions".
_OFFICIAL_TEXT = re.compile(r"(^|\.)attentions\.(\d+)\.(?!text_transformer\.|image_transformer\.)")
_OFFICIAL_IMAGE = re.compile(r"(^|\.)image_attentions\.(\d+)\.")
_SEESR_TEXT = re.compile(r"(^|\.)attentions\.(\d+)\.text_transformer\.")
_SEESR_IMAGE = re.compile(r"(^|\.)attentions\.(\d+)\.image_transformer\.")


def official_to_seesr_key(key: str) -> str:
    """Rename one official key (``X.attentions.j.*`` / ``X.image_attentions.j.*``) to our layout."""
    if _OFFICIAL_IMAGE.search(key):
        return _OFFICIAL_IMAGE.sub(r"\1attentions.\2.image_transformer.", key)
    return _OFFICIAL_TEXT.sub(r"\1attentions.\2.text_transformer.", key)


def seesr_to_official_key(key: str) -> str:
    """Rename one of our keys (``X.attentions.j.{text,image}_transformer.*``) to the official layout."""
    key = _SEESR_IMAGE.sub(r"\1image_attentions.\2.", key)
    return _SEESR_TEXT.sub(r"\1attentions.\2.", key)


def _rename(state_dict: Mapping[str, V], rename: Callable[[str], str]) -> dict[str, V]:
    renamed: dict[str, V] = {}
    sources: dict[str, str] = {}
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key in renamed:
            raise ValueError(f"state dict keys {sources[new_key]!r} and {key!r} both map to {new_key!r}")
        renamed[new_key] = value
        sources[new_key] = key
    return renamed


def official_to_seesr_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Official SeeSR UNet/ControlNet state dict -> our key layout (values untouched, order kept).

    ``X.attentions.j.`` -> ``X.attentions.j.text_transformer.``;
    ``X.image_attentions.j.`` -> ``X.attentions.j.image_transformer.``.
    """
    return _rename(state_dict, official_to_seesr_key)


def seesr_to_official_keys(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Our UNet/ControlNet state dict -> the official SeeSR key layout (inverse of :func:`official_to_seesr_keys`)."""
    return _rename(state_dict, seesr_to_official_key)
