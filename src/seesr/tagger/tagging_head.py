"""RAM's tagging head: a BERT-style decoder whose layers only cross-attend from label queries to image tokens.

Each of the ``num_layers`` layers computes, with post-LayerNorm residuals (BERT layout)::

    h = LN1(dense(CrossAttention(h, image_embeds)) + h)        # crossattention.{self, output}
    h = LN2(out_dense(GELU(inter_dense(h))) + h)               # intermediate, output

There are no embeddings, no self-attention and no pooler (RAM deletes them). Query/key/value are separate linears:
queries come from the label side (width ``hidden_size``), keys and values from the image embeddings (width
``encoder_width``, 512 for RAM, which overrides the ``encoder_width`` written in the official ``q2l_config.json``).
Attention scores are ``(Q·Kᵀ)/√head_dim`` and the softmax runs over all image tokens (the pooled one included).
The module names reproduce the official key names (``encoder.layer.N.crossattention.self.query`` ...), so checkpoints
load without renaming. The residual/LayerNorm and feed-forward sub-blocks are transformers' own BERT modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput


class TaggingCrossAttention(nn.Module):
    """Multi-head cross-attention with separate query (from ``hidden_size``) and key/value (from ``encoder_width``).

    The key name ``query``/``key``/``value`` matches BERT; the LoRA of DAPE sits on ``query`` and ``key``.
    """

    def __init__(self, hidden_size: int, num_heads: int, encoder_width: int, attention_dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(encoder_width, hidden_size)
        self.value = nn.Linear(encoder_width, hidden_size)
        self.dropout = nn.Dropout(attention_dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` (B, Q, hidden), ``encoder_hidden_states`` (B, K, encoder_width) -> (B, Q, hidden)."""
        query = self._split_heads(self.query(hidden_states))  # (B, heads, Q, head_dim)
        key = self._split_heads(self.key(encoder_hidden_states))  # (B, heads, K, head_dim)
        value = self._split_heads(self.value(encoder_hidden_states))
        # (Q·Kᵀ)/√d as in BERT; RAM's all-ones attention mask adds exactly zero and is omitted.
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, value)  # (B, heads, Q, head_dim)
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)


class TaggingCrossAttentionBlock(nn.Module):
    """``crossattention``: attention (``self``) then dense + dropout + residual + LayerNorm (``output``)."""

    def __init__(self, config: BertConfig, encoder_width: int):
        super().__init__()
        self.self = TaggingCrossAttention(
            config.hidden_size, config.num_attention_heads, encoder_width, config.attention_probs_dropout_prob
        )
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states, encoder_hidden_states), hidden_states)


class TaggingLayer(nn.Module):
    """One decoder layer: cross-attention block, then BERT's feed-forward (``intermediate`` + ``output``)."""

    def __init__(self, config: BertConfig, encoder_width: int):
        super().__init__()
        self.crossattention = TaggingCrossAttentionBlock(config, encoder_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.crossattention(hidden_states, encoder_hidden_states)
        return self.output(self.intermediate(hidden_states), hidden_states)


class TaggingEncoder(nn.Module):
    """Holds ``layer`` (a ModuleList), as BERT's encoder does, so keys read ``encoder.layer.N.*``."""

    def __init__(self, config: BertConfig, encoder_width: int):
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(config, encoder_width) for _ in range(config.num_hidden_layers))


class TaggingHead(nn.Module):
    """RAM's label decoder (``tagging_head.*`` in the official checkpoints).

    Args:
        hidden_size: query/label width (768 for RAM: the q2l config).
        num_layers: decoder layers (2).
        num_heads: attention heads (4, so head dim 192).
        intermediate_size: feed-forward width (3072).
        encoder_width: width of the image embeddings attended to (512).
        layer_norm_eps: LayerNorm epsilon (1e-12, BERT's).
        hidden_dropout: dropout after the dense layers (0.1; active only in training mode).
        attention_dropout: dropout on the attention probabilities (0.1; training only).
        hidden_act: feed-forward activation; "gelu" is the exact erf GELU (the tanh form fails parity).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 3072,
        encoder_width: int = 512,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        hidden_act: str = "gelu",
    ):
        super().__init__()
        config = BertConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            layer_norm_eps=layer_norm_eps,
            hidden_dropout_prob=hidden_dropout,
            attention_probs_dropout_prob=attention_dropout,
            hidden_act=hidden_act,
        )
        self.encoder = TaggingEncoder(config, encoder_width)

    def forward(self, label_queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """``label_queries`` (B, num_classes, hidden), ``image_embeds`` (B, 145, encoder_width) -> (B, num_classes, hidden)."""
        hidden_states = label_queries
        for layer in self.encoder.layer:
            hidden_states = layer(hidden_states, image_embeds)
        return hidden_states
