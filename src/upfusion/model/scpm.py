"""SCPM: Semantic-aware Channel Pruning Module (spec section 3, paper eq. 1).

Channel weights from squeeze-excitation (``w_c``) and from a frozen pre-trained backbone
looking at a 3-channel projection of the features (``w_s``) pick the ``keep_ratio`` most
useful channels, which a 1x1 conv expands back to C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv1x1, gather_channels, global_average_pool

BACKBONE_INPUT_SIZE = (224, 224)


class SCPM(nn.Module):
    """``w_f = w_c + alpha * sigmoid(w_s)``; keep ``topk(w_f, int(keep_ratio * C))`` channels.

    Args:
        c: channels C of the fused shallow embedding.
        keep_ratio: share of channels kept (0.7 in the paper: 33 of 48).
        backbone: frozen semantic backbone mapping [N, 3, 224, 224] to [N, D, h, w], or
            None for the "without ConvNeXt" ablation (``w_f = w_c``).
        backbone_dim: D, the backbone's feature width (1024 for ConvNeXt-Base).
        channel_attention: False for the "without channel attention in SCPM" ablation
            (``w_f = alpha * sigmoid(w_s)``).
    """

    def __init__(
        self,
        c: int,
        keep_ratio: float,
        backbone: nn.Module | None,
        backbone_dim: int,
        channel_attention: bool = True,
    ) -> None:
        super().__init__()
        if backbone is None and not channel_attention:
            raise ValueError("SCPM needs channel attention, a semantic backbone, or both")
        self.keep = int(keep_ratio * c)
        self.fc = None
        if channel_attention:
            self.fc = nn.Sequential(nn.Linear(c, c // 8), nn.ReLU(inplace=True), nn.Linear(c // 8, c), nn.Sigmoid())
        self.backbone = backbone
        if backbone is not None:
            self.suo_conv = conv1x1(c, 3)  # features -> a 3-channel "image" for the backbone
            self.convnext_fc = nn.Linear(backbone_dim, c)
            self.alpha = nn.Parameter(torch.tensor(1.0))
        self.expand_conv = conv1x1(self.keep, c)

    def semantic_weight(self, p: torch.Tensor) -> torch.Tensor:
        """``w_s``: the backbone's spatially averaged features of ``suo_conv(p)`` at 224x224."""
        assert self.backbone is not None
        with torch.no_grad():
            s = F.interpolate(
                self.suo_conv(p), BACKBONE_INPUT_SIZE, mode="bilinear", align_corners=False, antialias=False
            )
            features = self.backbone(s).mean(dim=(2, 3))
        return self.convnext_fc(features)

    def channel_weights(self, p: torch.Tensor) -> torch.Tensor:
        """``w_f`` [N, C]: one score per channel and sample."""
        w_f = None
        if self.fc is not None:
            w_f = self.fc(global_average_pool(p).flatten(1))  # w_c
        if self.backbone is not None:
            semantic = self.alpha * torch.sigmoid(self.semantic_weight(p))
            w_f = semantic if w_f is None else w_f + semantic
        return w_f

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        idx = torch.topk(self.channel_weights(p), self.keep, dim=1).indices
        return self.expand_conv(gather_channels(p, idx))
