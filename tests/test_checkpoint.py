"""The checkpoint format: safetensors + JSON record, sha256, strict loading with named keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from upfusion.errors import UpfusionError
from upfusion.model import ModelConfig, UPFusion
from upfusion.presets import PRESETS, build_model
from upfusion.pretrained.checkpoint import load_network, save_checkpoint, verify_weights_file

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)


def _save(model, path, text=None):
    text = np.arange(model.config.text_dim, dtype=np.float32) / 7 if text is None else text
    return save_checkpoint(model, path, text_embedding=text, text_encoder="minilm", prompt="a prompt")


def test_round_trip_restores_weights_config_and_embedding(tmp_path):
    model = UPFusion(SMALL)
    record_path = _save(model, tmp_path / "ckpt" / "small")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"small.json", "small.safetensors"}
    record = json.loads(record_path.read_text())
    assert record["model_config"] == SMALL.to_dict() and record["text_encoder"] == "minilm"
    assert record["prompt"] == "a prompt" and len(record["weights_sha256"]) == 64

    for form in (record_path, tmp_path / "ckpt" / "small.safetensors", tmp_path / "ckpt" / "small", tmp_path / "ckpt"):
        loaded, text = load_network(form)
        assert not loaded.training and loaded.config == SMALL
        assert torch.equal(text, torch.arange(16, dtype=torch.float32).reshape(1, -1) / 7)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(a, b, text), loaded(a, b, text))


def test_backbone_weights_stored_in_a_file_when_asked(tmp_path):
    config = PRESETS["tiny"].replace(semantic_backbone="efficientnet_lite0", backbone_dim=1280)
    model = build_model(config)  # random backbone: it must come back from the file, not from ImageNet
    text = np.zeros(512, np.float32)
    save_checkpoint(model, tmp_path / "m", text_embedding=text, text_encoder="x", prompt="p", backbone_weights="file")
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["semantic_backbone"]["weights"] == "m.backbone.safetensors"
    loaded, _ = load_network(tmp_path / "m.json")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_corrupt_weights_fail_the_sha256_check(tmp_path):
    _save(UPFusion(SMALL), tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UpfusionError, match=r"m\.safetensors: sha256 does not match"):
        load_network(tmp_path / "m")


def test_verify_weights_file_checks_presence_and_sha256(tmp_path):
    record = json.loads(_save(UPFusion(SMALL), tmp_path / "m").read_text())
    weights = tmp_path / "m.safetensors"
    verify_weights_file(weights, record["weights_sha256"])  # the file as saved passes
    verify_weights_file(weights, None)  # no sha256 on record: presence only
    with pytest.raises(UpfusionError, match=r"m\.safetensors: sha256 does not match"):
        verify_weights_file(weights, "0" * 64)
    with pytest.raises(UpfusionError, match=r"gone\.safetensors: weights file not found"):
        verify_weights_file(tmp_path / "gone.safetensors", record["weights_sha256"])


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    _save(UPFusion(SMALL), tmp_path / "m")
    record = json.loads((tmp_path / "m.json").read_text())
    record["model_config"]["gam"] = False  # the record now disagrees with the weights
    (tmp_path / "m.json").write_text(json.dumps(record))
    with pytest.raises(UpfusionError, match=r"unexpected 8: GEO_ir\.affine_fc"):
        load_network(tmp_path / "m")
    record["model_config"]["gam"] = True
    record["model_config"]["dim"] = 16
    (tmp_path / "m.json").write_text(json.dumps(record))
    with pytest.raises(UpfusionError, match="wrong shape"):
        load_network(tmp_path / "m")


def test_unreadable_records_are_clear_errors(tmp_path):
    with pytest.raises(UpfusionError, match="not found"):
        load_network(tmp_path / "nothing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UpfusionError, match="broken.json"):
        load_network(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(UpfusionError, match="not an upfusion checkpoint"):
        load_network(tmp_path / "other.json")


def test_text_embedding_width_must_match(tmp_path):
    with pytest.raises(ValueError, match="text_dim"):
        _save(UPFusion(SMALL), tmp_path / "m", text=np.zeros(8, np.float32))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weights", None, "'weights' must name the weights file, not None"),
        ("weights", 5, "'weights' must name the weights file, not 5"),
        ("text_embedding", "abc", "'text_embedding' must be a list of numbers"),
        ("text_embedding", [0.5, None], "'text_embedding' must be a list of numbers"),
        ("semantic_backbone", "convnext", "'semantic_backbone' must be null or"),
    ],
)
def test_malformed_record_fields_are_clear_errors(tmp_path, field, value, message):
    record_path = _save(UPFusion(SMALL), tmp_path / "m")
    record = json.loads(record_path.read_text())
    record[field] = value
    record_path.write_text(json.dumps(record))
    with pytest.raises(UpfusionError, match=f"^{record_path}: {message}"):
        load_network(record_path)


def test_a_file_of_another_format_is_named_as_such(tmp_path):
    model = UPFusion(SMALL)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(UpfusionError, match=f"^{tmp_path / 'model.pt'}: not an upfusion checkpoint"):
        load_network(tmp_path / "model.pt")
