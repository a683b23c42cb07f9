"""DAPE LoRA for stage-1 training (peft), export to the official ``DAPE.pth`` layout, and merge for inference.

Official setup (REFERENCE.md §3.7, loralib): rank 8, ``lora_alpha`` 1 (scale 1/8), no dropout, ``lora_A``
Kaiming-uniform and ``lora_B`` zeros, on

* every Swin ``attn.qkv`` with ``enable_lora=[True, False, True]``: the **query and value** thirds only;
* the tagging head's ``crossattention.self.query`` and ``crossattention.self.key``.

peft adapts whole Linear layers, so q-and-v-only LoRA on timm's fused ``qkv`` Linear is expressed by splitting it:
:class:`SplitQKV` holds three Linears ``q``, ``k``, ``v`` (same weights, same output as the fused layer) and peft's
stock LoRA targets ``qkv.q`` and ``qkv.v``. The two rank-8 factors map one-to-one onto loralib's stacked tensors:
``lora_A = cat(A_q, A_v)`` (2r, C) and ``lora_B = cat(B_q, B_v)`` (2C, r).

Typical use::

    student = apply_dape_lora(load_ram_tagger(ram_pth))   # seesr.weights.tagger; only LoRA parameters train
    ... train ...
    torch.save(export_dape_state_dict(student), "DAPE.pth")               # official layout, loads anywhere
    tagger = merge_dape_lora(student)                                      # plain DAPETagger, LoRA merged
"""

from __future__ import annotations

import torch
from torch import nn

from seesr.tagger.convert import DAPE_LORA_ALPHA
from seesr.tagger.dape import DAPETagger

DAPE_LORA_RANK = 8
ADAPTER_NAME = "default"

#: peft target modules (regex, full match on module names): Swin q and v, tagging-head query and key.
DAPE_LORA_TARGETS = (
    r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn\.qkv\.(q|v)"
    r"|tagging_head\.encoder\.layer\.\d+\.crossattention\.self\.(query|key)"
)


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear (C -> 3C) as three Linears ``q``, ``k``, ``v``; ``forward`` returns ``cat(q, k, v)``.

    Input (..., C) -> output (..., 3C), the same as the fused layer, so timm's ``WindowAttention`` is unchanged.
    """

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        dim = qkv.out_features // 3
        self.in_features, self.out_features = qkv.in_features, qkv.out_features
        factory = {"device": qkv.weight.device, "dtype": qkv.weight.dtype}
        for index, name in enumerate(("q", "k", "v")):
            linear = nn.Linear(qkv.in_features, dim, bias=qkv.bias is not None, **factory)
            with torch.no_grad():
                linear.weight.copy_(qkv.weight[index * dim : (index + 1) * dim])
                if qkv.bias is not None:
                    linear.bias.copy_(qkv.bias[index * dim : (index + 1) * dim])
            linear.weight.requires_grad_(qkv.weight.requires_grad)
            if qkv.bias is not None:
                linear.bias.requires_grad_(qkv.bias.requires_grad)
            setattr(self, name, linear)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(hidden_states), self.k(hidden_states), self.v(hidden_states)], dim=-1)

    def fuse(self) -> nn.Linear:
        """The equivalent fused Linear (weights concatenated; call after merging LoRA into q/k/v)."""
        parts = (self.q, self.k, self.v)
        fused = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.q.bias is not None,
            device=self.q.weight.device,
            dtype=self.q.weight.dtype,
        )
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in parts], dim=0))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts], dim=0))
        return fused


def _swin_attentions(tagger: DAPETagger):
    for stage in tagger.visual_encoder.layers:
        for block in stage.blocks:
            yield block.attn


def split_swin_qkv(tagger: DAPETagger) -> DAPETagger:
    """Replace every Swin ``attn.qkv`` Linear by a :class:`SplitQKV` in place; returns ``tagger``."""
    for attn in _swin_attentions(tagger):
        if isinstance(attn.qkv, nn.Linear):
            attn.qkv = SplitQKV(attn.qkv)
    return tagger


def fuse_swin_qkv(tagger: DAPETagger) -> DAPETagger:
    """Undo :func:`split_swin_qkv` in place (each :class:`SplitQKV` back to one Linear); returns ``tagger``."""
    for attn in _swin_attentions(tagger):
        if isinstance(attn.qkv, SplitQKV):
            attn.qkv = attn.qkv.fuse()
    return tagger


def dape_lora_config(rank: int = DAPE_LORA_RANK, alpha: float = DAPE_LORA_ALPHA):
    """The official DAPE LoRA as a ``peft.LoraConfig`` (Kaiming-uniform A, zero B, no dropout, no bias)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        target_modules=DAPE_LORA_TARGETS,
    )


def apply_dape_lora(
    tagger: DAPETagger, rank: int = DAPE_LORA_RANK, alpha: float = DAPE_LORA_ALPHA, adapter_name: str = ADAPTER_NAME
) -> DAPETagger:
    """Add the DAPE LoRA to ``tagger`` **in place** (diffusers' ``add_adapter`` on peft) and return it.

    Swin ``qkv`` layers are split first (:func:`split_swin_qkv`). Afterwards only the LoRA parameters require
    gradients (peft freezes the rest), as in the official ``mark_only_lora_as_trainable``. Put the model in
    ``train()`` mode for DAPE training (drop-path 0.1 and dropout 0.1 as officially).
    """
    split_swin_qkv(tagger)
    tagger.add_adapter(dape_lora_config(rank, alpha), adapter_name=adapter_name)
    return tagger


def _lora_factors(module: nn.Module, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r)) of a peft LoRA Linear, with B rescaled so that the official ``alpha/r`` applies."""
    a = module.lora_A[adapter_name].weight.detach()
    b = module.lora_B[adapter_name].weight.detach()
    rank = a.shape[0]
    factor = float(module.scaling[adapter_name]) / (DAPE_LORA_ALPHA / rank)
    return a, b * factor if factor != 1.0 else b


def _export_tensor(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.to(dtype=torch.float32).contiguous()
    return tensor if tensor.is_meta else tensor.cpu().clone()


def export_dape_state_dict(
    model: DAPETagger,
    adapter_name: str = ADAPTER_NAME,
    full_layout: bool = False,
    text_num_layers: int = 12,
    text_hidden_size: int | None = None,
    text_encoder_width: int | None = None,
) -> dict[str, torch.Tensor]:
    """LoRA weights of a model from :func:`apply_dape_lora` in the official ``DAPE.pth`` layout (float32, CPU).

    Keys: ``visual_encoder.layers.{i}.blocks.{j}.attn.qkv.lora_{A,B}`` ((2r, C) / (2C, r)) and
    ``tagging_head.encoder.layer.{i}.crossattention.self.{query,key}.lora_{A,B}``. If the adapter's alpha/r differs
    from the official scale (1/r), ``lora_B`` is rescaled so the official loader reproduces the same delta.

    ``full_layout=True`` also writes the official file's untrained entries (tag encoder and text decoder query/key
    LoRA, all zeros, so they change nothing) for ``text_num_layers`` BERT layers of width ``text_hidden_size``
    (default: the tagging head's) and text-decoder cross-attention width ``text_encoder_width`` (default: the
    hidden size), giving exactly the 248 keys of a released ``DAPE.pth`` at full size.
    """
    modules = dict(model.named_modules())
    swin: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        if isinstance(module, SplitQKV):
            q, v = modules[f"{name}.q"], modules[f"{name}.v"]
            if not hasattr(q, "lora_A") or adapter_name not in q.lora_A:
                raise ValueError(f"{name}: no LoRA adapter {adapter_name!r}; call apply_dape_lora first")
            (a_q, b_q), (a_v, b_v) = _lora_factors(q, adapter_name), _lora_factors(v, adapter_name)
            swin[f"{name}.lora_A"] = _export_tensor(torch.cat([a_q, a_v], dim=0))
            swin[f"{name}.lora_B"] = _export_tensor(torch.cat([b_q, b_v], dim=0))
    if not swin:
        raise ValueError("the model has no DAPE LoRA (call apply_dape_lora first)")
    head: dict[str, torch.Tensor] = {}
    for index in range(model.config.head_num_layers):
        for proj in ("query", "key"):
            name = f"tagging_head.encoder.layer.{index}.crossattention.self.{proj}"
            a, b = _lora_factors(modules[name], adapter_name)
            head[f"{name}.lora_A"], head[f"{name}.lora_B"] = _export_tensor(a), _export_tensor(b)
    inactive = (
        _inactive_official_lora(model, text_num_layers, text_hidden_size, text_encoder_width) if full_layout else {}
    )
    return {**swin, **inactive, **head}  # official order: visual_encoder, tag_encoder, text_decoder, tagging_head


def _inactive_official_lora(
    model: DAPETagger, num_layers: int, hidden_size: int | None, decoder_encoder_width: int | None
) -> dict[str, torch.Tensor]:
    """Zero LoRA tensors for the official tag encoder / text decoder entries that DAPE training never updates."""
    hidden = hidden_size or model.config.head_hidden_size
    decoder_width = decoder_encoder_width or hidden
    tag_encoder_width = model.config.image_embed_dim
    rank = next(m for m in model.modules() if hasattr(m, "lora_A")).lora_A[ADAPTER_NAME].weight.shape[0]
    out: dict[str, torch.Tensor] = {}
    for prefix, cross_width in (
        ("tag_encoder.encoder", tag_encoder_width),
        ("text_decoder.bert.encoder", decoder_width),
    ):
        for index in range(num_layers):
            for kind in ("attention", "crossattention"):
                for proj in ("query", "key"):
                    in_features = cross_width if (kind == "crossattention" and proj == "key") else hidden
                    name = f"{prefix}.layer.{index}.{kind}.self.{proj}"
                    out[f"{name}.lora_A"] = torch.zeros(rank, in_features)
                    out[f"{name}.lora_B"] = torch.zeros(hidden, rank)
    return out


def merge_dape_lora(model: DAPETagger) -> DAPETagger:
    """Merge the LoRA of :func:`apply_dape_lora` into the dense weights **in place** and remove it.

    Returns a plain :class:`DAPETagger` (fused Swin ``qkv`` again, no peft modules), ready for ``save_pretrained``.
    Merge in float32 for parity with the official ``.eval()`` merge.
    """
    model.fuse_lora()
    model.unload_lora()
    fuse_swin_qkv(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
