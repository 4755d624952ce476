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

    def forward(self, fused: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine_fc(global_average_pool(embedding)).chunk(2, dim=1)
        return fused * (1 + gamma) + beta
