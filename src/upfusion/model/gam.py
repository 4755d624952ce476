"""GAM: Geometric Affine Modulation (spec section 4, paper eqs. 2-3)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import conv1x1, global_average_pool


class GAM(nn.Module):
    """``F * (1 + gamma) + beta`` with ``[gamma, beta]`` predicted from the pooled original embedding."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.affine_fc = nn.Sequential(conv1x1(c, c, bias=True), nn.ReLU(inplace=True), conv1x1(c, 2 * c, bias=True))

    def forward(self, fused: torch.Tensor, embedding: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled``: ``GAP(embedding)`` [N, C, 1, 1] of the whole image when ``embedding`` is one tile of it."""
        if pooled is None:
            pooled = global_average_pool(embedding)
        gamma, beta = self.affine_fc(pooled.to(fused.dtype)).chunk(2, dim=1)
        return fused * (1 + gamma) + beta
