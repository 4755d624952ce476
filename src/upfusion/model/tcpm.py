"""TCPM: Text-guided Channel Perturbation Module (spec section 5).

The two branches' features are concatenated, squeeze-excitation keeps the best half of the
channels, the text embedding permutes the channels (the "perturbation"), and a sparse
(top-k) channel cross-attention between the perturbed and the plain features fuses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_ops
from .blocks import (
    GDFN,
    LayerNorm2d,
    conv1x1,
    dwconv3x3,
    float32_decisions,
    gather_channels,
    global_average_pool,
    to_heads,
)


class TopKCrossAttention(nn.Module):
    """Channel cross-attention keeping the ``int(keep_ratio * c/heads)`` largest logits per row."""

    def __init__(self, c: int, heads: int, keep_ratio: float = 0.9) -> None:
        super().__init__()
        self.heads = heads
        self.n_keep = int(keep_ratio * (c // heads))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))  # the output scale s
        self.q = conv1x1(c, c)
        self.q_dwconv = dwconv3x3(c)
        self.kv = conv1x1(c, 2 * c)
        self.kv_dwconv = dwconv3x3(2 * c)
        self.project_out = conv1x1(c, c)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        n, c, h, w = query.shape
        q = self.q_dwconv(self.q(query))
        k, v = self.kv_dwconv(self.kv(key_value)).chunk(2, dim=1)
        q = F.normalize(to_heads(q, self.heads), dim=-1)
        k = F.normalize(to_heads(k, self.heads), dim=-1)
        logits = (q @ k.transpose(-2, -1)) * self.temperature
        keep = torch.zeros_like(logits).scatter_(-1, torch.topk(logits, self.n_keep, dim=-1).indices, 1.0)
        logits = torch.where(keep > 0, logits, torch.full_like(logits, float("-inf")))
        out = (logits.softmax(dim=-1) @ to_heads(v, self.heads)) * self.attn4
        return self.project_out(out.reshape(n, c, h, w))


class TCPM(nn.Module):
    """Fuses branch features ``a`` and ``b`` (c channels each) under text guidance.

    Args:
        c: channels of each branch at this level.
        heads: attention heads at this level.
        text_dim: T, the width of the text embedding (512 for CLIP ViT-B/32).
        keep_ratio: share of the 2c channels kept by the SE selection (0.5: m = c).
        expansion: GDFN factor (2.66).
        channel_attention: False for the "without channel attention in TCPM" ablation:
            no SE or top-k, all 2c channels go to the 1x1 conv.
        attention_keep_ratio: share of logits kept per row in the cross-attention (0.9).
    """

    def __init__(
        self,
        c: int,
        heads: int,
        text_dim: int,
        keep_ratio: float,
        expansion: float,
        channel_attention: bool = True,
        attention_keep_ratio: float = 0.9,
    ) -> None:
        super().__init__()
        c2 = 2 * c
        self.text_fc = nn.Sequential(nn.Linear(text_dim, text_dim), nn.ReLU(inplace=True), nn.Linear(text_dim, c2))
        self.se_fc = None
        self.keep = c2
        if channel_attention:
            self.keep = int(c2 * keep_ratio)
            self.se_fc = nn.Sequential(
                nn.Linear(c2, c2 // 8, bias=False),
                nn.ReLU(inplace=True),
                nn.Linear(c2 // 8, c2, bias=False),
                nn.Sigmoid(),
            )
        self.conv1x1 = conv1x1(self.keep, c2, bias=True)
        self.conv_out = conv1x1(c2, c, bias=True)  # shared by the query and key/value paths
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.select_attn = TopKCrossAttention(c, heads, attention_keep_ratio)
        self.norm3 = LayerNorm2d(c)
        self.ffn = GDFN(c, expansion)

    def text_permutation(self, text: torch.Tensor) -> torch.Tensor:
        """Channel order [N or 1, 2c] from the text embedding: all 2c channels by descending score."""
        with float32_decisions(text):
            g = self.text_fc(text.float())
        return torch.topk(g, g.shape[1], dim=1).indices

    def channel_selection(self, pooled: torch.Tensor) -> torch.Tensor:
        """The SE selection [N, m] from ``GAP(concat(a, b))`` [N, 2c], in float32 even under autocast."""
        with float32_decisions(pooled):
            w = self.se_fc(pooled.float())
        return torch.topk(w, self.keep, dim=1).indices

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, text: torch.Tensor, indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``indices``: the SE selection made on the whole image when ``a``, ``b`` are one tile of it."""
        x = torch.cat([a, b], dim=1)
        if self.se_fc is None:
            indices = None  # "without channel attention": all 2c channels
        elif indices is None:
            indices = self.channel_selection(global_average_pool(x).flatten(1))
        perm = self.text_permutation(text)
        if fast_ops.fast_path_active():  # inference: same function, less time and memory
            query, key_value = fast_ops.tcpm_query_key_value(self, x, indices, perm)
            del x  # (memory)
            return fast_ops.tcpm_attention_ffn(self, query, key_value)
        selected = x if indices is None else gather_channels(x, indices)
        y_perm = gather_channels(self.conv1x1(selected), perm)  # the channel perturbation
        q = self.conv_out(y_perm)
        kv_src = self.conv_out(x)
        att = self.select_attn(self.norm1(q), self.norm2(kv_src))
        return att + self.ffn(self.norm3(att))
