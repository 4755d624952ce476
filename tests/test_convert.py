"""The converter on a synthetic state dict with the reference's exact key list and shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from upfusion.cli import main
from upfusion.errors import UpfusionError
from upfusion.pretrained.checkpoint import load_network
from upfusion.pretrained.convert import convert_official


def _synthetic_official_state():
    generator = torch.Generator().manual_seed(1)
    state = {}
    for line in shared_path("reference", "official_state_dict_keys.tsv").read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        size = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
        state["module." + key] = torch.randn(size, generator=generator) * 0.02
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "UP_Fusion.pth"
    state = _synthetic_official_state()
    torch.save({"AWF": state}, path)
    return path, state


def test_convert_paper_checkpoint_with_module_prefix(official_file, tmp_path):
    path, state = official_file
    text = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    np.save(tmp_path / "prompt.npy", text)
    assert (
        main(["convert-official", str(path), str(tmp_path / "out"), "--text-embedding", str(tmp_path / "prompt.npy")])
        == 0
    )

    record = json.loads((tmp_path / "out" / "upfusion.json").read_text())
    assert record["model_config"]["dim"] == 48 and record["model_config"]["num_blocks"] == [4, 6, 6, 8]
    assert record["semantic_backbone"]["name"] == "convnext_base"
    assert record["semantic_backbone"]["weights"] == "upfusion.backbone.safetensors"
    assert np.array_equal(np.asarray(record["text_embedding"], dtype=np.float32), text[0])

    model, stored_text = load_network(tmp_path / "out")
    assert torch.equal(stored_text, torch.from_numpy(text))
    ours = model.state_dict()
    # every value arrives unchanged, the backbone under its own prefix; the unused branch is gone
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("encoder_level1_gt", "encoder_level2_gt", "encoder_level3_gt", "latent_gt")):
            assert key not in ours
            continue
        key = key.replace("channel_select.convnext.0.", "channel_select.backbone.features.")
        assert torch.equal(ours[key], value), key
    assert sum(p.numel() for p in model.trainable_parameters()) == 49_309_724


def test_convert_without_embedding_or_clip_weights_stops_clearly(official_file, tmp_path, monkeypatch):
    import upfusion.pretrained.convert as convert

    def no_clip(*args, **kwargs):
        raise UpfusionError("could not load CLIP from OpenAI's ViT-B-32.pt (download): offline")

    monkeypatch.setattr(convert, "encode_prompt", no_clip)
    with pytest.raises(UpfusionError, match="CLIP"):
        convert_official(official_file[0], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_convert_rejects_bad_inputs(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main(["convert-official", str(junk), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.pth" in err

    torch.save({"AWF": {"something.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    np.save(tmp_path / "t.npy", np.zeros(512, np.float32))
    with pytest.raises(UpfusionError, match="not a UP-Fusion reference state dict"):
        convert_official(tmp_path / "other.pth", tmp_path / "out", text_embedding=tmp_path / "t.npy")


def _parity_state():
    return torch.load(shared_path("reference", "parity", "tiny_seed0.pth"), weights_only=True)["AWF"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("encoder_level1_vi.0.attn.temperature", torch.zeros(()), "a tensor has too few dimensions"),
        ("channel_select.expand_conv.weight", torch.zeros(3), "a tensor has too few dimensions"),
        ("encoder_level1_vi.0.attn.temperature", torch.zeros(3, 1, 1), "width 16 is not divisible by 3 heads"),
    ],
)
def test_state_dicts_of_odd_shapes_are_one_line_errors_naming_the_file(tmp_path, capsys, key, value, message):
    state = _parity_state()
    state[key] = value
    src = tmp_path / "odd.pth"
    torch.save({"AWF": state}, src)
    np.save(tmp_path / "t.npy", np.zeros(512, np.float32))
    assert main(["convert-official", str(src), str(tmp_path / "out"), "--text-embedding", str(tmp_path / "t.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"upfusion convert-official: error: {src}: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bad_source_or_output_paths_are_one_line_errors(tmp_path, capsys):
    parity = str(shared_path("reference", "parity", "tiny_seed0.pth"))
    np.save(tmp_path / "t.npy", np.zeros(512, np.float32))
    (tmp_path / "folder.pth").mkdir()
    (tmp_path / "file").write_text("x")
    for src, out, message in (
        (str(tmp_path / "folder.pth"), str(tmp_path / "out"), "folder.pth: is a folder, not a checkpoint file"),
        (parity, str(tmp_path / "file"), "file: is a file, not a folder"),
        (parity, str(tmp_path / "file" / "sub"), f"sub: {tmp_path / 'file'} is not a folder"),
    ):
        assert main(["convert-official", src, out, "--text-embedding", str(tmp_path / "t.npy")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("upfusion convert-official: error: ") and message in err and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_output_folder_fails_before_reading_the_checkpoint(tmp_path, capsys, monkeypatch):
    """OUT_DIR that is a file, lies under a file, or whose record name is a folder: one line naming
    the path, before the .pth is read and the model built (not at the save after them)."""
    import upfusion.pretrained.convert as convert

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read although the output cannot be written")

    monkeypatch.setattr(convert, "read_official_state_dict", never)
    parity = str(shared_path("reference", "parity", "tiny_seed0.pth"))
    file, out = tmp_path / "file", tmp_path / "out"
    file.write_text("x")
    (out / "mine.json").mkdir(parents=True)
    for out_dir, name, message in (
        (file, "upfusion", f"{file}: is a file, not a folder"),
        (file / "a" / "b", "upfusion", f"{file / 'a' / 'b'}: {file} is not a folder"),
        (out, "mine", f"{out / 'mine.json'}: is a folder, not a file"),
    ):
        assert main(["convert-official", parity, str(out_dir), "--name", name]) == 1
        assert capsys.readouterr().err == f"upfusion convert-official: error: OUT_DIR {message}\n"
    assert file.read_text() == "x" and [p.name for p in out.iterdir()] == ["mine.json"]
