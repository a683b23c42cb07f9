"""DAPE: the degradation-aware prompt extractor of SeeSR (RAM Swin-L + tagging head, DAPE LoRA merged).

One forward pass gives both SeeSR prompts for a low-resolution image::

    pixel_values (B,3,384,384) ─ Swin-L (timm) ─ final LN ─┬─ mean over 144 tokens ─┐
                                                           └─ 144 tokens ──────────── cat ─ visual_features (B,145,C)
    visual_features ─ image_proj ─ image_embeds (B,145,512)           = soft prompt (RCA context of the UNet/ControlNet)
    label_embed (4585,512) ─ wordvec_proj ─ ReLU ─ queries (B,4585,H)
    tagging_head(queries, image_embeds) ─ fc ─ logits (B,4585) ─ sigmoid ─ > per-class threshold ─ tags = hard prompt

The official flow ran the Swin twice (once for tags, once for embeddings); here it runs once per call.
The image encoder is timm's ``SwinTransformer`` (RAM's Swin-L loads into it exactly); the tagging head is our own
module on transformers' BERT sub-layers (:mod:`seesr.tagger.tagging_head`). This module reads no files: weights come
from the official files via :func:`seesr.weights.tagger.load_ram_tagger` (LoRA merged by
:mod:`seesr.tagger.convert`, no LoRA code at inference) or from our converted folder via
:func:`seesr.weights.tagger.load_pretrained_tagger` (safetensors), both after :func:`check_tagger_config`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from seesr.tagger.tagging_head import TaggingHead
from seesr.tagger.tags import NUM_CLASSES, Tag, TagResult, format_tags, load_class_thresholds, load_tag_list
from seesr.utils.limits import ConfigLimitError, check_config_limits

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: What :meth:`DAPETagger.preprocess` accepts: PIL images, (H,W,3) uint8 arrays, or tensors (B,3,H,W)/(3,H,W).
ImageInput = Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray]
PreprocessMode = Literal["pipeline", "pil"]


@dataclass
class DAPEOutput(BaseOutput):
    """Output of :meth:`DAPETagger.forward`.

    Attributes:
        image_embeds: (B, 145, image_embed_dim) soft prompt (pooled token first, then 12×12 patch tokens).
        logits: (B, num_classes) tag logits.
        probs: (B, num_classes) ``sigmoid(logits)``.
        visual_features: (B, 145, C) Swin output before ``image_proj`` (C = 1536 for Swin-L).
    """

    image_embeds: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    visual_features: torch.Tensor


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision ``ToTensor`` of an RGB image: (3, H, W) float32 in [0, 1]."""
    array = np.array(image.convert("RGB"), dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)


def _as_list(images: ImageInput) -> list:
    if isinstance(images, (Image.Image, torch.Tensor)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    return list(images)


def preprocess_images(
    images: ImageInput,
    size: int = 384,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    mode: PreprocessMode = "pipeline",
) -> torch.Tensor:
    """Images -> normalised tagger input (B, 3, size, size) float32 on the CPU (aspect ratio is not preserved).

    ``mode="pipeline"`` (default) is exactly the official *inference* input (``test_seesr.py``): ToTensor of the
    original LR image, then a **tensor** bilinear resize with ``align_corners=False`` and ``antialias=False`` (the
    behaviour of torchvision < 0.17, which the official code pinned; newer torchvision antialiases by default), then
    ImageNet mean/std. Accepts PIL images, (H, W, 3) uint8 arrays, or tensors (B,3,H,W)/(3,H,W) in [0, 1] (uint8
    tensors are divided by 255).

    ``mode="pil"`` is RAM's own ``get_transform``: PIL bilinear resize (antialiased when shrinking), ToTensor,
    normalise. It needs PIL images or uint8 arrays (fixture C was made this way).
    """
    if mode not in ("pipeline", "pil"):
        raise ValueError(f"unknown preprocess mode {mode!r}; use 'pipeline' or 'pil'")
    batch: list[torch.Tensor] = []
    for item in _as_list(images):
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] not in (3, 4):
                raise ValueError(f"numpy images must be (H, W, 3) uint8 arrays, got {item.dtype} {item.shape}")
            item = Image.fromarray(item[..., :3])
        if isinstance(item, Image.Image):
            if mode == "pil":
                item = item.convert("RGB").resize((size, size), Image.BILINEAR)
            batch.append(_pil_to_tensor(item)[None])
        elif isinstance(item, torch.Tensor):
            if mode == "pil":
                raise ValueError("preprocess mode 'pil' needs PIL images or uint8 arrays, not tensors")
            tensor = item.detach()
            tensor = tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()
            if tensor.ndim == 3:
                tensor = tensor[None]
            if tensor.ndim != 4 or tensor.shape[1] != 3:
                raise ValueError(f"image tensors must be (B, 3, H, W) or (3, H, W), got {tuple(item.shape)}")
            batch.append(tensor.cpu())
        else:
            raise TypeError(f"unsupported image type {type(item).__name__}")
    if not batch:
        raise ValueError("no images given")
    if mode == "pipeline":
        batch = [
            t
            if t.shape[-2:] == (size, size)
            else F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
            for t in batch
        ]
    pixels = torch.cat(batch, dim=0)
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def decode_tags(probs: torch.Tensor, threshold: float | None = None, lang: str = "en") -> list[TagResult]:
    """Tag probabilities (B, 4585) or (4585,) -> one :class:`TagResult` per image.

    A tag is on iff ``probability > threshold`` (strict, float32), with the official per-class thresholds unless
    ``threshold`` overrides all of them. Tags are listed in ascending class index (tag-list order) and
    ``prompt`` joins their names with ", " exactly like the official inference (empty string when none fire).
    """
    probs = probs.detach().float().cpu()
    if probs.ndim == 1:
        probs = probs[None]
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected probabilities of shape (B, {NUM_CLASSES}), got {tuple(probs.shape)}")
    if threshold is None:
        thresholds = torch.tensor(load_class_thresholds(), dtype=torch.float32)
    else:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        thresholds = torch.full((NUM_CLASSES,), float(threshold), dtype=torch.float32)
    names = load_tag_list(lang)
    results = []
    for row in probs:
        indices = torch.nonzero(row > thresholds).flatten().tolist()
        tags = [Tag(name=names[i], probability=float(row[i]), index=i) for i in indices]
        results.append(TagResult(tags=tags, prompt=format_tags([t.name for t in tags])))
    return results


#: Upper bounds of the DAPETagger config (official: Swin-L 384/4, window 12, 4585 classes, 768-d head).
TAGGER_CONFIG_LIMITS: dict[str, int] = {
    "image_size": 2048,
    "patch_size": 64,
    "embed_dim": 2048,
    "depths": 64,
    "num_heads": 256,
    "window_size": 64,
    "image_embed_dim": 8192,
    "num_classes": 100_000,
    "label_embed_dim": 8192,
    "head_hidden_size": 8192,
    "head_num_layers": 48,
    "head_num_heads": 256,
    "head_intermediate_size": 32768,
}
#: Upper bound of the Swin shift masks and position indices built with the model (official: ~6 MB).
MAX_DERIVED_BUFFER_BYTES = 1 << 30


def _derived_buffer_bytes(config: Mapping[str, Any]) -> int:
    """Bytes of timm's Swin masks (float32, per shifted block) and relative position indices (int64, per block)."""
    image_size, patch_size = int(config.get("image_size", 384)), max(1, int(config.get("patch_size", 4)))
    window = max(1, int(config.get("window_size", 12)))
    total = 0
    for stage, depth in enumerate(config.get("depths", (2, 2, 18, 2))):
        side = max(1, image_size // patch_size // 2**stage)
        stage_window = min(window, side)
        total += int(depth) * (stage_window**4 * 8 + side * side * stage_window * stage_window * 4)
    return total


def check_tagger_config(config: Mapping[str, Any], *, source: str | os.PathLike) -> None:
    """Refuse (by file and field) a config outside :data:`TAGGER_CONFIG_LIMITS`, or whose Swin would build more than
    :data:`MAX_DERIVED_BUFFER_BYTES` of masks, before the model is built. Raises
    :class:`~seesr.utils.limits.ConfigLimitError`."""
    check_config_limits(config, TAGGER_CONFIG_LIMITS, source=source, max_list_length=8)
    try:
        size = _derived_buffer_bytes(config)
    except (TypeError, ValueError) as error:
        raise ConfigLimitError(f"{source}: Swin sizes are not numbers ({error})") from None
    if size > MAX_DERIVED_BUFFER_BYTES:
        raise ConfigLimitError(
            f"{source}: this Swin (image_size {config.get('image_size')}, window_size {config.get('window_size')}) "
            f"would build {size / 2**30:.1f} GiB of attention masks (at most {MAX_DERIVED_BUFFER_BYTES / 2**30:.0f} "
            "GiB); the config does not describe a DAPE tagger"
        )


class DAPETagger(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """RAM Swin-L tagger with the DAPE LoRA merged: tags (hard prompt) and image embeddings (soft prompt).

    Config (defaults = the official full-size model; ``image_embed_dim`` is the one home of the soft-prompt width,
    which the UNet/ControlNet image cross-attention must read from ``tagger.config.image_embed_dim``):

    * Swin: ``image_size`` 384, ``patch_size`` 4, ``embed_dim`` 192, ``depths`` (2,2,18,2), ``num_heads``
      (6,12,24,48), ``window_size`` 12, ``mlp_ratio`` 4, ``drop_path_rate`` 0.1 (training only).
    * ``image_embed_dim`` 512: ``image_proj`` output width = tagging-head key/value width.
    * Labels: ``num_classes`` 4585, ``label_embed_dim`` 512 (RAM's CLIP text label embeddings).
    * Tagging head (RAM's q2l BERT): ``head_hidden_size`` 768, ``head_num_layers`` 2, ``head_num_heads`` 4,
      ``head_intermediate_size`` 3072, ``head_layer_norm_eps`` 1e-12, ``head_hidden_act`` "gelu" (erf),
      ``head_dropout`` / ``head_attention_dropout`` 0.1 (training only).
    * ``image_mean`` / ``image_std``: ImageNet normalisation of the input.

    ``PeftAdapterMixin`` gives the diffusers adapter API (``add_adapter``, ``fuse_lora``, ...), which
    :mod:`seesr.tagger.lora` uses for stage-1 (DAPE) training.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 4,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        image_embed_dim: int = 512,
        num_classes: int = NUM_CLASSES,
        label_embed_dim: int = 512,
        head_hidden_size: int = 768,
        head_num_layers: int = 2,
        head_num_heads: int = 4,
        head_intermediate_size: int = 3072,
        head_layer_norm_eps: float = 1e-12,
        head_hidden_act: str = "gelu",
        head_dropout: float = 0.1,
        head_attention_dropout: float = 0.1,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        self.visual_encoder = SwinTransformer(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="",
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_rate=0.0,
            proj_drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=drop_path_rate,
        )
        visual_width = self.visual_encoder.num_features
        self.image_proj = nn.Linear(visual_width, image_embed_dim)
        self.label_embed = nn.Parameter(torch.zeros(num_classes, label_embed_dim))
        self.wordvec_proj = nn.Linear(label_embed_dim, head_hidden_size)
        self.tagging_head = TaggingHead(
            hidden_size=head_hidden_size,
            num_layers=head_num_layers,
            num_heads=head_num_heads,
            intermediate_size=head_intermediate_size,
            encoder_width=image_embed_dim,
            layer_norm_eps=head_layer_norm_eps,
            hidden_dropout=head_dropout,
            attention_dropout=head_attention_dropout,
            hidden_act=head_hidden_act,
        )
        self.fc = nn.Linear(head_hidden_size, 1)

    # ----------------------------------------------------------------------------------------------------- inputs
    def preprocess(self, images: ImageInput, mode: PreprocessMode = "pipeline") -> torch.Tensor:
        """Images -> (B, 3, 384, 384) normalised float32 CPU tensor; see :func:`preprocess_images` for the modes."""
        return preprocess_images(
            images, self.config.image_size, self.config.image_mean, self.config.image_std, mode=mode
        )

    # ---------------------------------------------------------------------------------------------------- forward
    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,384,384) -> (visual_features (B,145,C), image_embeds (B,145,image_embed_dim)).

        RAM's visual output: the final-LayerNorm tokens, with their mean placed in front as token 0.
        """
        tokens = self.visual_encoder.forward_features(pixel_values).flatten(1, 2)  # NHWC -> (B, 144, C)
        visual_features = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return visual_features, self.image_proj(visual_features)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DAPEOutput | tuple:
        """``pixel_values`` (B, 3, 384, 384), normalised (see :meth:`preprocess`) -> :class:`DAPEOutput`."""
        # 1. Image: Swin (once) -> visual features -> soft prompt.
        visual_features, image_embeds = self.encode_image(pixel_values)
        # 2. Label queries: ReLU(wordvec_proj(label_embed)), shared by the batch.
        queries = F.relu(self.wordvec_proj(self.label_embed))
        queries = queries.unsqueeze(0).expand(pixel_values.shape[0], -1, -1)
        # 3. Tagging head: label queries cross-attend to the image embeddings; shared 1-unit classifier.
        hidden_states = self.tagging_head(queries, image_embeds)
        logits = self.fc(hidden_states).squeeze(-1)
        probs = torch.sigmoid(logits)
        if not return_dict:
            return image_embeds, logits, probs, visual_features
        return DAPEOutput(image_embeds=image_embeds, logits=logits, probs=probs, visual_features=visual_features)

    # ------------------------------------------------------------------------------------------------- tags
    def decode_tags(self, probs: torch.Tensor, threshold: float | None = None, lang: str = "en") -> list[TagResult]:
        """Probabilities -> tags; see :func:`decode_tags` (per-class official thresholds unless ``threshold``)."""
        if self.config.num_classes != NUM_CLASSES:
            raise ValueError(f"tag names exist for {NUM_CLASSES} classes; this model has {self.config.num_classes}")
        return decode_tags(probs, threshold=threshold, lang=lang)

    @torch.no_grad()
    def tag_and_embed(
        self,
        images: ImageInput,
        threshold: float | None = None,
        lang: str = "en",
        mode: PreprocessMode = "pipeline",
    ) -> tuple[list[TagResult], torch.Tensor]:
        """Tags and soft prompt from one Swin pass: ``(results, image_embeds (B,145,512) in the model dtype)``.

        ``images`` are the ORIGINAL LR images (PIL, uint8 arrays or [0,1] tensors); preprocessing follows ``mode``.
        """
        pixel_values = self.preprocess(images, mode=mode).to(device=self.device, dtype=self.dtype)
        output = self(pixel_values)
        return self.decode_tags(output.probs, threshold=threshold, lang=lang), output.image_embeds

    def tag(
        self,
        images: ImageInput,
        threshold: float | None = None,
        lang: str = "en",
        mode: PreprocessMode = "pipeline",
    ) -> list[TagResult]:
        """Tags of each image (a list with one :class:`TagResult` per image)."""
        return self.tag_and_embed(images, threshold=threshold, lang=lang, mode=mode)[0]

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DAPETagger:
        """diffusers ``ModelMixin.from_pretrained`` (our converted folder), then recompute the derived Swin buffers.

        seesr itself loads converted folders with :func:`seesr.weights.tagger.load_pretrained_tagger` (config sizes
        checked, meta-device build, strict keys); this is the diffusers convention for users who expect it.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model.init_derived_buffers()
        return model

    def init_derived_buffers(self) -> None:
        """(Re)compute timm's non-persistent Swin buffers (relative position index, shift masks).

        Meta-device construction leaves them on the meta device; they are recreated from the window geometry on the
        device of the loaded weights.
        """
        device = self.image_proj.weight.device
        for module in self.visual_encoder.modules():
            if module is self.visual_encoder:
                continue
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.is_meta:
                    persistent = name not in module._non_persistent_buffers_set
                    module.register_buffer(name, torch.empty_like(buffer, device=device), persistent=persistent)
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
