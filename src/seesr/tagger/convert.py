"""Official RAM / DAPE checkpoints -> :class:`~seesr.tagger.dape.DAPETagger` state dicts (pure functions: state
dicts and config dicts in, state dicts and config dicts out; the files are read by :mod:`seesr.weights.tagger`).

Official files:

* ``ram_swin_large_14m.pth``: ``{"model": state_dict}`` of RAM (Swin-L, tagging head, tag encoder, text decoder).
* ``DAPE.pth``: a flat ``{name: tensor}`` dict of every ``*.lora_A`` / ``*.lora_B`` of the LoRA-wrapped RAM
  (loralib, ``r = 8``, ``lora_alpha = 1`` so the scale is ``1/8``).

Conversion rules (each is a fact of the official model, see REFERENCE.md §3 and ADDENDUM.md "Check 1"):

1. ``vision_multi.*`` is the legacy name of ``tagging_head.*`` and is renamed.
2. Keys used for tagging and the soft prompt: ``visual_encoder.*``, ``image_proj.*``, ``label_embed``,
   ``wordvec_proj.*``, ``fc.*``, ``tagging_head.*``. ``visual_encoder.*`` goes through timm's own Swin
   ``checkpoint_filter_fn`` (it moves ``layers.N.downsample`` to ``layers.N+1.downsample``).
3. Keys deliberately ignored (:data:`IGNORED_PREFIXES`, :data:`DERIVED_BUFFER_MARKERS`): the captioning text decoder
   and the tag encoder, which tagging never runs, and the derived Swin buffers ``relative_position_index`` /
   ``attn_mask``, which timm recomputes. Any other key is an error.
4. LoRA is merged into the dense weights in float32, ``W += (B·A)·(alpha/r)``:

   * Swin ``attn.qkv`` (loralib ``MergedLinear``, ``enable_lora=[True, False, True]``): ``lora_A`` is (2r, C) and
     ``lora_B`` (2C, r); rows ``[:r]``/``[:C]`` adapt q (``W[0:C]``), rows ``[r:]``/``[C:]`` adapt v (``W[2C:3C]``);
     k is unchanged.
   * tagging head ``crossattention.self.{query,key}`` (loralib ``Linear``): ``lora_A`` (r, in), ``lora_B`` (out, r).
   * ``tag_encoder.encoder.layer.{i}.crossattention.self.{query,key}`` for the first ``len(tagging_head layers)``
     layers: in the official model these weights ARE the tagging head's (tied Parameters), so loralib's merge on
     ``.eval()`` adds their deltas to the tagging head too. They are merged in the official module order (tag encoder
     first, then tagging head). In released files their ``lora_B`` is zero, which makes them a no-op.
   * every other LoRA pair (tag encoder, text decoder) belongs to ignored modules and is ignored.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

RAM_CHECKPOINT_NAME = "ram_swin_large_14m.pth"
DAPE_CHECKPOINT_NAME = "DAPE.pth"
DAPE_LORA_ALPHA = 1.0  # loralib lora_alpha of DAPE; the rank is read from the tensor shapes (8 in DAPE.pth)

USED_PREFIXES = ("visual_encoder.", "image_proj.", "wordvec_proj.", "fc.", "tagging_head.")
USED_KEYS = ("label_embed",)
#: Official modules that tagging does not use: their keys are ignored (documented, never silently dropped otherwise).
IGNORED_PREFIXES = ("tag_encoder.", "text_decoder.")
#: Derived Swin buffers, recomputed by timm at construction.
DERIVED_BUFFER_MARKERS = ("relative_position_index", "attn_mask")
LEGACY_RENAMES = (("vision_multi.", "tagging_head."),)

_SWIN_QKV = re.compile(r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn\.qkv")
_HEAD_QK = re.compile(r"tagging_head\.encoder\.layer\.(\d+)\.crossattention\.self\.(query|key)")
_TIED_TAG_ENCODER_QK = re.compile(r"tag_encoder\.encoder\.layer\.(\d+)\.crossattention\.self\.(query|key)")

OFFICIAL_CONFIG_FILES = ("q2l_config.json", "swin/config_swinL_384.json")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model (message meant for the user)."""


@dataclass
class ConvertedRAM:
    """Result of :func:`convert_ram_state_dict`.

    ``state_dict``: DAPETagger keys -> tensors (LoRA merged, float32 where merged);
    ``ignored``: official keys deliberately not used (see the module docstring);
    ``merged_lora``: official LoRA module names whose deltas were merged.
    """

    state_dict: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)
    merged_lora: list[str] = field(default_factory=list)


def is_ignored_key(key: str) -> bool:
    """True for official keys that tagging deliberately does not use (tag encoder, text decoder, derived buffers)."""
    return key.startswith(IGNORED_PREFIXES) or any(marker in key for marker in DERIVED_BUFFER_MARKERS)


def split_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a state dict into (base weights, ``*.lora_A``/``*.lora_B`` tensors), e.g. a whole ``RAMLora`` state dict."""
    base: dict[str, torch.Tensor] = {}
    lora: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        (lora if key.endswith((".lora_A", ".lora_B")) else base)[key] = value
    return base, lora


def _lora_pairs(lora_state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in lora_state_dict:
        if not key.endswith((".lora_A", ".lora_B")):
            raise CheckpointError(f"DAPE LoRA file: unexpected key {key!r} (expected only '*.lora_A' / '*.lora_B')")
        module = key.rsplit(".", 1)[0]
        if module in pairs:
            continue
        a, b = lora_state_dict.get(f"{module}.lora_A"), lora_state_dict.get(f"{module}.lora_B")
        if a is None or b is None:
            raise CheckpointError(f"DAPE LoRA file: {module} has only one of lora_A / lora_B")
        pairs[module] = (a, b)
    return pairs


def _delta(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(B·A)·(alpha/r)`` in float32 for a plain LoRA Linear (A: (r, in), B: (out, r))."""
    rank = a.shape[0]
    if b.shape[1] != rank:
        raise CheckpointError(f"LoRA rank mismatch: lora_A {tuple(a.shape)} vs lora_B {tuple(b.shape)}")
    return (b.float() @ a.float()) * (alpha / rank)


def _merge_linear(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, name: str) -> torch.Tensor:
    delta = _delta(a, b, alpha)
    if delta.shape != weight.shape:
        raise CheckpointError(f"{name}: LoRA delta {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    return weight.float() + delta


def _merge_qv(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float, name: str) -> torch.Tensor:
    """Merge a loralib ``MergedLinear(enable_lora=[True, False, True])`` pair into a fused (3C, C) qkv weight."""
    dim = weight.shape[0] // 3
    if weight.shape[0] != 3 * dim or a.shape[0] % 2 or b.shape[0] != 2 * dim:
        raise CheckpointError(
            f"{name}: LoRA shapes lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit qkv {tuple(weight.shape)}"
        )
    rank = a.shape[0] // 2
    merged = weight.float().clone()
    merged[:dim] += _delta(a[:rank], b[:dim], alpha)  # q
    merged[2 * dim :] += _delta(a[rank:], b[dim:], alpha)  # v
    return merged


def merge_dape_lora_into_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    lora_state_dict: Mapping[str, torch.Tensor],
    alpha: float = DAPE_LORA_ALPHA,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Merge DAPE LoRA pairs into an official-key state dict (``tagging_head.*`` / ``visual_encoder.*`` keys).

    Returns ``(merged state dict, merged LoRA module names, ignored LoRA keys)``; see the module docstring for which
    pairs are merged and why. Unknown LoRA targets raise :class:`CheckpointError`.
    """
    merged = dict(state_dict)
    done: list[str] = []
    ignored: list[str] = []
    pairs = _lora_pairs(lora_state_dict)
    # Official module order: visual_encoder, tag_encoder (tied into the tagging head), then tagging_head.
    order = {"visual_encoder": 0, "tag_encoder": 1, "text_decoder": 2, "tagging_head": 3}
    for module in sorted(pairs, key=lambda name: order.get(name.split(".", 1)[0], 4)):
        a, b = pairs[module]
        target = module
        tied = _TIED_TAG_ENCODER_QK.fullmatch(module)
        if tied:
            target = f"tagging_head.encoder.layer.{tied.group(1)}.crossattention.self.{tied.group(2)}"
            if f"{target}.weight" not in merged:
                ignored += [f"{module}.lora_A", f"{module}.lora_B"]  # a tag-encoder layer beyond the tagging head
                continue
        elif is_ignored_key(module):
            ignored += [f"{module}.lora_A", f"{module}.lora_B"]
            continue
        elif not (_SWIN_QKV.fullmatch(module) or _HEAD_QK.fullmatch(module)):
            raise CheckpointError(f"DAPE LoRA file: unexpected LoRA target {module!r}")
        weight_key = f"{target}.weight"
        if weight_key not in merged:
            raise CheckpointError(f"DAPE LoRA file: {module} adapts {weight_key}, which the RAM checkpoint lacks")
        merge = _merge_qv if _SWIN_QKV.fullmatch(module) else _merge_linear
        merged[weight_key] = merge(merged[weight_key], a, b, alpha, module)
        done.append(module)
    return merged, done, ignored


def convert_ram_state_dict(
    ram_state_dict: Mapping[str, torch.Tensor],
    lora_state_dict: Mapping[str, torch.Tensor] | None = None,
    visual_encoder: nn.Module | None = None,
    alpha: float = DAPE_LORA_ALPHA,
) -> ConvertedRAM:
    """Official RAM (+ optional DAPE LoRA) state dict -> DAPETagger state dict.

    Args:
        ram_state_dict: the ``"model"`` entry of ``ram_swin_large_14m.pth`` (a whole ``RAMLora`` state dict with
            ``lora_*`` keys is accepted too; its LoRA pairs are merged).
        lora_state_dict: the flat ``DAPE.pth`` dict, or None for plain RAM.
        visual_encoder: the timm Swin the result is meant for (may live on the meta device); timm's filter uses its
            shapes. Without it the downsample shift is applied without shape checks.
        alpha: LoRA alpha (DAPE: 1); the rank comes from the tensor shapes.
    """
    base: dict[str, torch.Tensor] = {}
    for key, value in ram_state_dict.items():
        for old, new in LEGACY_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        base[key] = value
    base, embedded_lora = split_lora_state_dict(base)
    lora = {**embedded_lora, **(lora_state_dict or {})}

    ignored = [key for key in base if is_ignored_key(key)]
    used = {key: value for key, value in base.items() if not is_ignored_key(key)}
    unexpected = [key for key in used if not (key.startswith(USED_PREFIXES) or key in USED_KEYS)]
    if unexpected:
        raise CheckpointError(f"RAM checkpoint: unexpected keys {unexpected[:5]} (is this a RAM checkpoint?)")

    # Tied tag-encoder LoRA merges into tagging-head weights; the tag encoder's base copies are ignored.
    merged_lora: list[str] = []
    if lora:
        used, merged_lora, ignored_lora = merge_dape_lora_into_state_dict(used, lora, alpha)
        ignored += ignored_lora

    visual = {key[len("visual_encoder.") :]: value for key, value in used.items() if key.startswith("visual_encoder.")}
    if visual_encoder is not None:
        from timm.models.swin_transformer import checkpoint_filter_fn

        visual = checkpoint_filter_fn(visual, visual_encoder)
    else:
        old_layout = "layers.0.downsample.reduction.weight" in visual
        visual = {
            (
                re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
                if old_layout
                else k
            ): v
            for k, v in visual.items()
        }
    state_dict = {key: value for key, value in used.items() if not key.startswith("visual_encoder.")}
    state_dict.update({f"visual_encoder.{key}": value for key, value in visual.items()})
    return ConvertedRAM(state_dict=state_dict, ignored=ignored, merged_lora=merged_lora)


def official_config(q2l: Mapping[str, Any], swin: Mapping[str, Any], source: str | os.PathLike = "RAM config") -> dict:
    """DAPETagger config values from RAM's two config dicts (``q2l_config.json``, ``swin/config_swinL_384.json``).

    ``encoder_width`` in ``q2l_config.json`` is ignored: RAM overrides it with the 512-d image embeddings.
    """
    try:
        depths, embed_dim = list(swin["depths"]), int(swin["embed_dim"])
        vision_width = swin.get("vision_width")
        if vision_width is not None and vision_width != embed_dim * 2 ** (len(depths) - 1):
            raise CheckpointError(f"{source}: vision_width {vision_width} does not match embed_dim/depths")
        return {
            "image_size": int(swin["image_res"]),
            "embed_dim": embed_dim,
            "depths": depths,
            "num_heads": list(swin["num_heads"]),
            "window_size": int(swin["window_size"]),
            "head_hidden_size": int(q2l["hidden_size"]),
            "head_num_layers": int(q2l["num_hidden_layers"]),
            "head_num_heads": int(q2l["num_attention_heads"]),
            "head_intermediate_size": int(q2l["intermediate_size"]),
            "head_layer_norm_eps": float(q2l.get("layer_norm_eps", 1e-12)),
            "head_hidden_act": q2l.get("hidden_act", "gelu"),
            "head_dropout": float(q2l.get("hidden_dropout_prob", 0.1)),
            "head_attention_dropout": float(q2l.get("attention_probs_dropout_prob", 0.1)),
        }
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{source}: not a valid RAM config ({type(error).__name__}: {error})") from None
