"""Pre-trained parts with their true loading code.

EfficientNet-Lite0 and MiniLM are real (their weights install offline). CLIP and ConvNeXt
weights cannot be downloaded here: their loading code is tested on small random weights
that the test writes to a file, and the loaded model must hold exactly those weights.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from upfusion.errors import UpfusionError
from upfusion.pretrained.backbones import build_backbone, imagenet_preprocess, load_classifier
from upfusion.pretrained.extras import require
from upfusion.pretrained.text import PAPER_PROMPT, encode_prompt, load_clip

VEHICLES = {
    "limousine",
    "minivan",
    "police van",
    "cab",
    "sports car",
    "convertible",
    "jeep",
    "station wagon",
    "pickup",
    "moving van",
    "beach wagon",
    "car wheel",
    "racer",
    "tow truck",
    "trolleybus",
    "minibus",
}


def _imagenet_categories() -> list[str]:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.meta["categories"]


def test_efficientnet_lite0_classifies_a_real_street_photo():
    """RoadScene FLIR_00122 is a car on a street: the real ImageNet weights must say so."""
    photo = Image.open(shared_path("data", "roadscene", "train", "vi", "FLIR_00122.jpg")).convert("RGB")
    x = torch.from_numpy(np.array(photo.resize((224, 224), Image.BILINEAR))).permute(2, 0, 1)[None].float() / 255
    model = load_classifier("efficientnet_lite0")
    with torch.no_grad():
        top5 = model(imagenet_preprocess("efficientnet_lite0", x)).topk(5).indices[0].tolist()
    names = [_imagenet_categories()[i] for i in top5]
    assert names[0] in VEHICLES, names


def test_efficientnet_backbone_is_frozen_features():
    backbone = build_backbone("efficientnet_lite0", "pretrained")
    assert backbone.out_dim == 1280
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training
    with torch.no_grad():
        assert backbone(torch.rand(2, 3, 224, 224)).shape == (2, 1280, 7, 7)


def test_minilm_related_sentences_are_closer_than_unrelated():
    texts = [
        "A thermal camera sees a pedestrian crossing the road at night.",
        "An infrared image shows a person walking across the street in the dark.",
        "The recipe needs two cups of flour and a pinch of salt.",
    ]
    vectors = [encode_prompt("minilm", t).vector for t in texts]
    assert all(v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    related, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert related > unrelated + 0.3, (related, unrelated)


@pytest.mark.parametrize("layout", ["full", "features_only"])
def test_convnext_loads_a_local_weights_file(tmp_path, layout):
    torchvision = pytest.importorskip("torchvision")
    source = torchvision.models.convnext_tiny(weights=None)
    state = source.state_dict() if layout == "full" else source.features.state_dict()
    torch.save(state, tmp_path / "convnext_tiny.pth")
    backbone = build_backbone("convnext_tiny", tmp_path / "convnext_tiny.pth")
    assert backbone.out_dim == 768
    for key, value in source.features.state_dict().items():
        assert torch.equal(backbone.features.state_dict()[key], value), key
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x), source.eval().features(x))


def test_convnext_rejects_a_mismatched_file(tmp_path):
    torch.save({"features.0.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(UpfusionError, match="bad.pth"):
        build_backbone("convnext_tiny", tmp_path / "bad.pth")
    with pytest.raises(UpfusionError, match="not found"):
        build_backbone("convnext_tiny", tmp_path / "missing.pth")


def _tiny_openai_clip(path):
    """A small CLIP in OpenAI's state-dict layout (the architecture is read off its shapes)."""
    model_module = pytest.importorskip("open_clip.model")
    clip = model_module.CLIP(
        embed_dim=16,
        vision_cfg=model_module.CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32),
        text_cfg=model_module.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
        quick_gelu=True,
    )
    # OpenAI's files hold float16 weights (the loader builds in float16, then casts on the CPU)
    state = {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}
    torch.save(state, path)
    clip.load_state_dict({k: v.float() for k, v in state.items()})
    return clip.eval()


def test_clip_loading_code_on_small_random_weights(tmp_path):
    source = _tiny_openai_clip(tmp_path / "tiny_clip.pt")
    model, tokenizer, precision = load_clip(tmp_path / "tiny_clip.pt", device="cpu")
    assert precision == "fp32-cpu"
    assert torch.equal(model.token_embedding.weight, source.token_embedding.weight)
    assert torch.equal(model.text_projection, source.text_projection)
    with pytest.warns(UserWarning, match="float16 on CUDA"):
        embedding = encode_prompt("clip-vit-b-32", PAPER_PROMPT, weights=tmp_path / "tiny_clip.pt", device="cpu")
    with torch.no_grad():
        expected = source.encode_text(tokenizer([PAPER_PROMPT]))[0].numpy()
    assert embedding.vector.shape == (16,)
    assert np.allclose(embedding.vector, expected, atol=1e-6)
    with pytest.warns(UserWarning):
        other = encode_prompt("clip-vit-b-32", "a different prompt", weights=tmp_path / "tiny_clip.pt", device="cpu")
    assert not np.allclose(other.vector, embedding.vector)


def test_clip_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UpfusionError, match="missing.pt"):
        load_clip(tmp_path / "missing.pt", device="cpu")


def test_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an uninstalled package looks like to import
    with pytest.raises(UpfusionError, match=r"pip install 'upfusion\[clip\]'"):
        require("open_clip", "clip", "the clip-vit-b-32 text encoder")
