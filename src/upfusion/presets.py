"""Named network configurations (a registry, as timm does) and ``build_model``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .model import ModelConfig, UPFusion

PAPER = ModelConfig(notes="the paper's configuration: 49,309,724 parameters outside ConvNeXt-Base")

PRESETS: dict[str, ModelConfig] = {
    "paper": PAPER,
    # the reduced configuration of the reference parity vector (../shared/reference/parity)
    "tiny": PAPER.replace(dim=16, num_blocks=(1, 1, 1, 2), num_refinement_blocks=1, notes="parity-test size"),
    # the bundled default weights: every module of the paper, narrower and shallower, with
    # backbone and text encoder whose real weights install offline
    "default": PAPER.replace(
        dim=16,
        num_blocks=(1, 1, 2, 2),
        num_refinement_blocks=1,
        semantic_backbone="efficientnet_lite0",
        backbone_dim=1280,
        text_dim=384,
        notes="compact: fuses 640x480 on a laptop CPU; EfficientNet-Lite0 + MiniLM",
    ),
    # the paper's Table 3 ablations
    "paper-no-scpm": PAPER.replace(scpm=False),
    "paper-no-gam": PAPER.replace(gam=False),
    "paper-no-tcpm": PAPER.replace(tcpm=False),
    "paper-no-tcpm-channel-attention": PAPER.replace(tcpm_channel_attention=False),
    "paper-no-convnext": PAPER.replace(semantic_backbone=None),
    "paper-no-scpm-channel-attention": PAPER.replace(scpm_channel_attention=False),
}


def get_config(name_or_config: str | ModelConfig) -> ModelConfig:
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    try:
        return PRESETS[name_or_config]
    except KeyError:
        raise KeyError(f"unknown preset {name_or_config!r}; known: {', '.join(PRESETS)}") from None


def build_model(
    name_or_config: str | ModelConfig,
    backbone_weights: str | Path | None = None,
) -> UPFusion:
    """The UP-Fusion network for a preset name or a ``ModelConfig``.

    ``backbone_weights`` fills the frozen semantic backbone: None leaves it at random
    initialisation (enough for shapes, or when a checkpoint brings the backbone's weights),
    ``"pretrained"`` takes its published ImageNet weights (see ``upfusion.pretrained.backbones``),
    a path loads a local state-dict file.
    """
    from .pretrained.backbones import build_backbone

    config = get_config(name_or_config)
    backbone: nn.Module | None = None
    if config.uses_backbone:
        backbone = build_backbone(config.semantic_backbone, weights=backbone_weights)
        if backbone.out_dim != config.backbone_dim:
            raise ValueError(
                f"backbone {config.semantic_backbone!r} gives {backbone.out_dim} features, "
                f"config says backbone_dim={config.backbone_dim}"
            )
    return UPFusion(config, backbone)
