"""SCPM: Semantic-aware Channel Pruning Module (spec section 3, paper eq. 1).

Channel weights from squeeze-excitation (``w_c``) and from a frozen pre-trained backbone
looking at a 3-channel projection of the features (``w_s``) pick the ``keep_ratio`` most
useful channels, which a 1x1 conv expands back to C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv1x1, float32_decisions, gather_channels, global_average_pool

BACKBONE_INPUT_SIZE = (224, 224)


def resize_for_backbone(s: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of the 3-channel projection to the backbone's 224x224 (no antialias)."""
    return F.interpolate(s, BACKBONE_INPUT_SIZE, mode="bilinear", align_corners=False, antialias=False)


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

    def backbone_input(self, p: torch.Tensor) -> torch.Tensor:
        """``suo_conv(p)`` resized to 224x224 (whatever the aspect ratio): what the backbone sees."""
        with torch.no_grad(), float32_decisions(p):
            return resize_for_backbone(self.suo_conv(p.float()))

    def scores(self, pooled: torch.Tensor, backbone_input: torch.Tensor | None) -> torch.Tensor:
        """``w_f`` [N, C] from ``GAP(p)`` [N, C] and the backbone's input (float32, even under autocast)."""
        with float32_decisions(pooled):
            w_f = None
            if self.fc is not None:
                w_f = self.fc(pooled.float())  # w_c
            if self.backbone is not None:
                with torch.no_grad():
                    features = self.backbone(backbone_input.float()).mean(dim=(2, 3))
                semantic = self.alpha * torch.sigmoid(self.convnext_fc(features))  # alpha * sigmoid(w_s)
                w_f = semantic if w_f is None else w_f + semantic
        return w_f

    def channel_weights(self, p: torch.Tensor) -> torch.Tensor:
        """``w_f`` [N, C]: one score per channel and sample."""
        backbone_input = self.backbone_input(p) if self.backbone is not None else None
        return self.scores(global_average_pool(p).flatten(1), backbone_input)

    def forward(self, p: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The kept channels of ``p`` in score order, expanded back to C; ``indices`` [N, k] are
        the whole image's choice when ``p`` is one tile of it (tiled inference)."""
        if indices is None:
            indices = torch.topk(self.channel_weights(p), self.keep, dim=1).indices
        return self.expand_conv(gather_channels(p, indices))
