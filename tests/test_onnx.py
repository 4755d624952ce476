"""ONNX export: any size, onnxruntime agrees with PyTorch; the CLI; a clear message without the extra."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import upfusion
from upfusion.cli import main
from upfusion.errors import UpfusionError
from upfusion.model import ModelConfig, UPFusion
from upfusion.pretrained.checkpoint import load_network, save_checkpoint

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs the onnx extra (onnx, onnxscript, onnxruntime)",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random checkpoint exported by ``upfusion export-onnx`` (one export serves every test)."""
    from test_speed_equivalence import separate_scores

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx")
    text = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    record = save_checkpoint(
        separate_scores(UPFusion(SMALL)).eval(), folder / "small", text_embedding=text, text_encoder="t", prompt="p"
    )
    path = folder / "out" / "small.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["export-onnx", str(path), "--weights", str(record), "--check", "96x64", "83x61", "48x40"])
    model, stored_text = load_network(record)
    return model, stored_text, path, record, status, printed.getvalue()


@needs_onnx
@pytest.mark.slow
def test_onnxruntime_matches_pytorch_on_several_sizes_and_batches(exported):
    from upfusion.onnx_export import check_onnx

    model, text, path = exported[:3]
    checks = check_onnx(path, model, text, sizes=((64, 96), (40, 24), (120, 160), (16, 24), (61, 83)))
    checks += check_onnx(path, model, text, sizes=((32, 48), (29, 43)), batch=3)
    assert [(c.height, c.width, c.batch) for c in checks] == [
        (64, 96, 1),
        (40, 24, 1),
        (120, 160, 1),
        (16, 24, 1),
        (61, 83, 1),
        (32, 48, 3),
        (29, 43, 3),
    ]
    # (at 8x8 the latent map is one pixel: every normalised q.k logit is +-1, and onnxruntime and
    # PyTorch break the top-k ties differently, so that size is not compared)
    assert max(c.max_abs_diff for c in checks) < 1e-4


def test_graph_padding_is_the_pipeline_padding():
    """The exported module's tensor padding gives upfusion fuse's numpy padding (reflect, or the
    edge repeated for sides too short to mirror), sizes 1 to 24 and multiples of 8 unchanged."""
    from upfusion.imaging import pad_to_multiple as numpy_pad
    from upfusion.onnx_export import pad_to_multiple

    x = np.random.default_rng(0).random((2, 24, 24), dtype=np.float32)
    for height in range(1, 25):
        for width in (1, 3, 4, 5, 7, 8, 13, 16):
            part = x[:, :height, :width]
            padded = pad_to_multiple(torch.from_numpy(part)).numpy()
            assert np.array_equal(padded, numpy_pad(part)), (height, width)


@needs_onnx
@pytest.mark.slow
def test_graph_takes_any_size_and_gives_upfusion_fuse_luma(exported):
    """Sizes that are not multiples of 8 run (the graph pads as upfusion fuse does and crops back)
    and give the luma of upfusion fuse's own pipeline (its numpy padding, its inference kernels)."""
    import onnxruntime

    _, _, path, record, _, _ = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fuser = upfusion.load(record, device="cpu", upscale=1, tile=None)
    g = np.random.default_rng(3)
    for batch, height, width in ((1, 61, 83), (1, 64, 96), (2, 13, 30), (1, 5, 17)):
        a, b = (g.random((batch, 1, height, width), dtype=np.float32) for _ in range(2))
        (graph_out,) = session.run(["fused"], {"a": a, "b": b})
        assert graph_out.shape == (batch, 1, height, width)
        pipeline = fuser._fuse_luma(a[:, 0], b[:, 0])
        assert np.abs(graph_out[:, 0] - pipeline).max() < 1e-4, (height, width)


@needs_onnx
@pytest.mark.slow
def test_exported_graph_has_two_dynamic_inputs_and_the_prompt_inside(exported):
    import onnx

    path = exported[2]
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["a", "b"]
    assert [o.name for o in graph.output] == ["fused"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    record = json.loads(exported[3].read_text())
    assert meta["upfusion.upscale"] == "1" and meta["upfusion.version"] == upfusion.__version__
    assert meta["upfusion.weights"] == str(exported[3]) and meta["upfusion.prompt"] == "p"
    assert meta["upfusion.weights_sha256"] == record["weights_sha256"] and meta["upfusion.text_encoder"] == "t"
    assert "any H and W" in meta["upfusion.inputs"] and "clamp to [0, 1]" in meta["upfusion.output"]
    assert not any(f.name.endswith(".tmp") for f in path.parent.iterdir())  # written by rename


@needs_onnx
@pytest.mark.slow
def test_export_onnx_command(exported, capsys):
    _, _, path, record, status, printed = exported
    assert status == 0 and path.is_file()
    assert torch.is_grad_enabled()  # the command leaves autograd as it found it
    assert "96x64: max |onnxruntime - torch|" in printed and "83x61" in printed and "48x40" in printed
    assert main(["export-onnx", str(path), "--weights", str(record), "--check", "90"]) == 1
    assert "size '90' is not WIDTHxHEIGHT" in capsys.readouterr().err
    for skip in (["--check", "none"], ["--check"]):  # the file is written, nothing compared
        again = path.with_name(f"again{len(skip)}.onnx")
        assert main(["export-onnx", str(again), "--weights", str(record), *skip]) == 0
        assert again.is_file() and "max |onnxruntime" not in capsys.readouterr().out


@needs_onnx
@pytest.mark.slow
def test_enlarged_export_reproduces_upfusion_fuse_upscale(exported, capsys):
    """--upscale 2 puts the enlargement in the graph: onnxruntime gives the fused luma that
    ``upfusion fuse --upscale 2`` computes (its inference kernels), and the metadata says 2."""
    import onnxruntime

    import upfusion

    _, _, path, record, _, _ = exported
    enlarged = path.with_name("small-2x.onnx")
    assert main(["export-onnx", str(enlarged), "--weights", str(record), "--upscale", "2", "--check", "48x40"]) == 0
    assert "fusing 2 times enlarged" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(enlarged), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["upfusion.upscale"] == "2"
    g = np.random.default_rng(5)
    a, b = (g.random((2, 1, 40, 56), dtype=np.float32) for _ in range(2))
    (graph_out,) = session.run(["fused"], {"a": a, "b": b})
    fuser = upfusion.load(record, device="cpu", upscale=2, tile=None)
    pipeline = fuser._fuse_luma(a[:, 0], b[:, 0])
    assert graph_out.shape == (2, 1, 40, 56)
    assert np.abs(graph_out[:, 0] - pipeline).max() < 1e-4
    one_x = upfusion.load(record, device="cpu", upscale=1, tile=None)._fuse_luma(a[:, 0], b[:, 0])
    assert np.abs(graph_out[:, 0] - one_x).max() > 1e-3  # (the enlargement changes the result)
    a, b = (g.random((1, 1, 37, 53), dtype=np.float32) for _ in range(2))  # padded, enlarged, cropped
    (graph_out,) = session.run(["fused"], {"a": a, "b": b})
    assert graph_out.shape == (1, 1, 37, 53)
    assert np.abs(graph_out[:, 0] - fuser._fuse_luma(a[:, 0], b[:, 0])).max() < 1e-4
    assert main(["export-onnx", str(enlarged), "--weights", str(record), "--upscale", "0"]) == 1
    assert "--upscale must be a whole number >= 1, not '0'" in capsys.readouterr().err


@needs_onnx
@pytest.mark.slow
def test_onnx_example_script_matches_upfusion_fuse(exported, tmp_path):
    """benchmarks/onnx_fuse.py (numpy, Pillow, onnxruntime) gives upfusion.load().fuse's image on
    crops of the sample pairs that are not multiples of 8: colour (MSRS), grey, and tiny."""
    _, _, path, record, _, _ = exported
    samples = Path(__file__).parents[1] / "samples"
    fuser = upfusion.load(record, device="cpu")
    cases = {
        "colour": ("msrs/vi/00016N.png", "msrs/ir/00016N.png", (300, 200, 403, 277)),
        "grey": ("ct-mri/mri/20.png", "ct-mri/ct/20.png", (60, 70, 157, 141)),
        "tiny": ("msrs/vi/00016N.png", "msrs/ir/00016N.png", (320, 240, 325, 243)),
    }
    for name, (a_file, b_file, box) in cases.items():
        a, b = tmp_path / f"{name}-a.png", tmp_path / f"{name}-b.png"
        Image.open(samples / a_file).crop(box).save(a)
        Image.open(samples / b_file).crop(box).save(b)
        out = tmp_path / f"{name}-out.png"
        script = Path(__file__).parents[1] / "benchmarks" / "onnx_fuse.py"
        subprocess.run([sys.executable, str(script), str(path), str(a), str(b), str(out)], check=True)
        mine = np.asarray(Image.open(out)).astype(int)
        expected = fuser.fuse(a, b).astype(int)
        assert mine.shape == expected.shape and mine.shape[:2] == (box[3] - box[1], box[2] - box[0])
        assert mine.ndim == (2 if name == "grey" else 3)
        assert np.abs(mine - expected).max() <= 1, name  # (measured: equal, 0 levels, on all three)


@needs_onnx
def test_output_path_problems_are_one_line_errors(tmp_path, capsys):
    text = np.zeros(16, np.float32)
    record = save_checkpoint(UPFusion(SMALL), tmp_path / "small", text_embedding=text, text_encoder="t", prompt="p")
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "file").write_text("x")
    for path, message in (
        (tmp_path / "folder.onnx", "is a folder; give the ONNX file's name"),
        (tmp_path / "file" / "m.onnx", "cannot write the ONNX file"),
    ):
        assert main(["export-onnx", str(path), "--weights", str(record), "--check", "none"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"upfusion export-onnx: error: {path}: {message}") and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "x" and not list((tmp_path / "folder.onnx").iterdir())


def test_missing_extra_is_one_clear_line(monkeypatch):
    import upfusion.pretrained.extras as extras

    real = extras.importlib.import_module

    def fake(name, *args):
        if name.startswith("onnx"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(extras.importlib, "import_module", fake)
    from upfusion.onnx_export import export_onnx

    with pytest.raises(UpfusionError, match=r"upfusion\[onnx\]"):
        export_onnx(UPFusion(SMALL), torch.randn(16), "unused.onnx")
