"""Converts the authors' released checkpoint to an upfusion checkpoint.

Their file holds ``{"AWF": state_dict}``; names may carry DDP's ``module.`` prefix. Our
module names follow theirs, so the network's keys carry over unchanged, except:

- the unused third encoder branch (``encoder_level{1,2,3}_gt``, ``latent_gt``) is dropped;
- the ConvNeXt-Base weights (``channel_select.convnext.0.*``, torchvision's ``features``
  layout) become the checkpoint's backbone file.

The configuration is read off the shapes (width, blocks, heads, keep ratios, text width).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UpfusionError
from ..model import ModelConfig
from .checkpoint import BACKBONE_PREFIX, load_state_strict, save_checkpoint
from .text import PAPER_PROMPT, TEXT_DIMS, encode_prompt

UNUSED_BRANCH = re.compile(r"^(encoder_level[123]_gt|latent_gt)\.")
OFFICIAL_BACKBONE_PREFIX = "channel_select.convnext.0."
BACKBONE_BY_WIDTH = {1024: "convnext_base", 768: "convnext_tiny"}


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        raise UpfusionError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise UpfusionError(f"{path}: no such file")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UpfusionError(f"{path}: not a readable PyTorch checkpoint ({exc.__class__.__name__})") from None
    state = raw.get("AWF", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UpfusionError(f"{path}: holds no state dict under 'AWF'")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _count_blocks(state: dict[str, torch.Tensor], stage: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(rf"^{stage}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def infer_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig whose shapes the reference state dict has (ratios checked, not guessed)."""
    try:
        dim = state["patch_embed.proj.weight"].shape[0]
        blocks = tuple(
            _count_blocks(state, s)
            for s in ("encoder_level1_vi", "encoder_level2_vi", "encoder_level3_vi", "latent_vi")
        )
        heads = tuple(
            state[f"{s}.0.attn.temperature"].shape[0]
            for s in ("encoder_level1_vi", "encoder_level2_vi", "encoder_level3_vi", "latent_vi")
        )
        refinement = _count_blocks(state, "refinement")
        hidden = state["encoder_level1_vi.0.ffn.project_out.weight"].shape[1]
        scpm_keep = state["channel_select.expand_conv.weight"].shape[1]
        tcpm_keep = state["encoder_shuffle_channel1.conv1x1.weight"].shape[1]
        text_dim = state["encoder_shuffle_channel1.text_fc.0.weight"].shape[1]
        backbone_dim = state["channel_select.convnext_fc.weight"].shape[1]
    except KeyError as exc:
        raise UpfusionError(f"not a UP-Fusion reference state dict: key {exc} missing") from None
    except IndexError:  # a tensor with fewer dimensions than the reference's
        raise UpfusionError("not a UP-Fusion reference state dict: a tensor has too few dimensions") from None
    try:
        config = ModelConfig(
            dim=dim,
            num_blocks=blocks,
            heads=heads,
            num_refinement_blocks=refinement,
            semantic_backbone=BACKBONE_BY_WIDTH.get(backbone_dim, "convnext_base"),
            backbone_dim=backbone_dim,
            text_dim=text_dim,
        )
    except ValueError as exc:
        raise UpfusionError(f"unsupported variant: {exc}") from None
    checks = [
        ("GDFN width", int(dim * config.ffn_expansion_factor), hidden),
        ("SCPM kept channels", int(config.scpm_keep_ratio * dim), scpm_keep),
        ("TCPM kept channels", int(2 * dim * config.tcpm_keep_ratio), tcpm_keep),
    ]
    for what, expected, found in checks:
        if expected != found:
            raise UpfusionError(f"{what} is {found}, the paper's ratios give {expected}: unsupported variant")
    if backbone_dim not in BACKBONE_BY_WIDTH:
        raise UpfusionError(f"backbone feature width {backbone_dim} matches no known ConvNeXt")
    return config


def _read_embedding(path: str | Path, text_dim: int) -> np.ndarray:
    try:
        vector = np.load(str(path)).astype(np.float32).reshape(-1)
    except Exception as exc:
        raise UpfusionError(f"{path}: not a readable .npy text embedding ({exc})") from None
    if vector.size != text_dim:
        raise UpfusionError(
            f"{path}: text embedding has {vector.size} values, the checkpoint's text width is {text_dim}"
        )
    return vector


def convert_official(
    src: str | Path,
    out_dir: str | Path,
    text_embedding: str | Path | np.ndarray | None = None,
    name: str = "upfusion",
    clip_weights: str | Path | None = None,
) -> Path:
    """Converts the authors' ``.pth`` into ``out_dir/NAME.{json,safetensors}``; returns the record's path.

    The prompt embedding comes from ``text_embedding`` (a ``.npy`` file or an array, [512]
    or [1, 512]), or is computed with CLIP ViT-B/32 when it can be loaded (float16 on CUDA,
    as the reference; float32 on the CPU, with a warning since that changes permutations).
    """
    from ..presets import build_model

    src = Path(src)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UpfusionError(f"{out_dir}: is a file, not an output folder")
    state = read_official_state_dict(src)
    state = {k: v for k, v in state.items() if not UNUSED_BRANCH.match(k)}
    try:
        config = infer_config(state)
    except UpfusionError as exc:
        raise UpfusionError(f"{src}: {exc}") from None

    if text_embedding is None:
        if config.text_dim != TEXT_DIMS["clip-vit-b-32"]:
            raise UpfusionError(f"text width {config.text_dim} is not CLIP's; pass --text-embedding FILE.npy")
        embedding = encode_prompt("clip-vit-b-32", PAPER_PROMPT, weights=clip_weights)
        vector, precision = embedding.vector, embedding.precision
    elif isinstance(text_embedding, np.ndarray):
        vector, precision = text_embedding.astype(np.float32).reshape(-1), "given"
    else:
        vector, precision = _read_embedding(text_embedding, config.text_dim), f"given ({Path(text_embedding).name})"

    backbone_state = {
        k[len(OFFICIAL_BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(OFFICIAL_BACKBONE_PREFIX)
    }
    network_state = {k: v for k, v in state.items() if not k.startswith(OFFICIAL_BACKBONE_PREFIX)}
    model = build_model(config)  # the backbone at random init: filled below or from the published weights
    load_state_strict(model, network_state, src, ignore_prefix=BACKBONE_PREFIX)
    backbone_source = "pretrained"
    if backbone_state:
        load_state_strict(model.channel_select.backbone, {f"features.{k}": v for k, v in backbone_state.items()}, src)
        backbone_source = "file"
    try:
        return save_checkpoint(
            model,
            Path(out_dir) / name,
            text_embedding=vector,
            text_encoder="clip-vit-b-32",
            prompt=PAPER_PROMPT,
            text_embedding_precision=precision,
            backbone_weights=backbone_source,
            extra={"converted_from": src.name},
        )
    except OSError as exc:
        raise UpfusionError(f"{out_dir}: cannot write the converted checkpoint ({exc.strerror or exc})") from None
