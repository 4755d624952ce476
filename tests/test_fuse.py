"""The Python API of the fusion pipeline: upfusion.load and Fuser (small random-weight checkpoints)."""

from __future__ import annotations

import json
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import upfusion
from conftest import shared_path
from upfusion import fuse as fuse_module
from upfusion.errors import UpfusionError
from upfusion.model import ModelConfig
from upfusion.presets import build_model
from upfusion.pretrained.checkpoint import save_checkpoint

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(SMALL)
    return save_checkpoint(model, path, text_embedding=torch.randn(16), text_encoder="test", prompt="test")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny")


@pytest.fixture(scope="module")
def fuser(checkpoint):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's two cores are shared
    yield upfusion.load(checkpoint, device="cpu")
    torch.set_num_threads(threads)


RNG = np.random.default_rng(3)


def reference_fused_luma(fuser, a: np.ndarray, b: np.ndarray, levels: int = 255) -> np.ndarray:
    """The spec's recipe written out with torch: reflect-pad bottom/right, network, crop, clamp, round."""
    h, w = a.shape
    pad = (0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8)
    ta = F.pad(torch.from_numpy(a)[None, None], pad, mode="reflect")
    tb = F.pad(torch.from_numpy(b)[None, None], pad, mode="reflect")
    with torch.no_grad():
        out = fuser.model(ta, tb, fuser.text)[0, 0, :h, :w].clamp(0, 1)
    return np.rint((out * levels).numpy()).astype(np.uint8 if levels == 255 else np.uint16)


def test_grey_pair_is_the_network_output_padded_and_cropped(fuser):
    a = RNG.integers(0, 256, (37, 45), dtype=np.uint8)
    b = RNG.integers(0, 256, (37, 45), dtype=np.uint8)
    out = fuser.fuse(a, b)
    assert out.shape == (37, 45) and out.dtype == np.uint8
    expected = reference_fused_luma(fuser, a.astype(np.float32) / 255, b.astype(np.float32) / 255)
    assert np.array_equal(out, expected)
    assert out.std() > 0  # a real image, not a constant


def test_upscale_fuses_the_enlarged_pair_and_averages_the_blocks_back(checkpoint, fuser):
    enlarged = upfusion.load(checkpoint, device="cpu", upscale=2)
    a = RNG.integers(0, 256, (37, 45), dtype=np.uint8)
    b = RNG.integers(0, 256, (37, 45), dtype=np.uint8)
    out = enlarged.fuse(a, b)
    # reflect-pad to a multiple of 8, each pixel a 2x2 block, network, mean of each 2x2 block, crop
    pad = (0, 3, 0, 3)
    ta, tb = (F.pad(torch.from_numpy(x.astype(np.float32) / 255)[None, None], pad, mode="reflect") for x in (a, b))
    ta, tb = (t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) for t in (ta, tb))
    with torch.no_grad():
        fused = fuser.model(ta, tb, fuser.text)
    blocks = fused.reshape(1, 1, 40, 2, 48, 2).mean(dim=(3, 5))[0, 0, :37, :45].clamp(0, 1)
    assert np.array_equal(out, np.rint((blocks * 255).numpy()).astype(np.uint8))
    assert not np.array_equal(out, fuser.fuse(a, b))  # not the 1x result


def test_upscale_auto_takes_the_weights_factor_up_to_half_a_megapixel(tmp_path, checkpoint):
    record = json.loads(checkpoint.read_text())
    for name, factor in (("three", 3), ("bad", "auto")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**record, "auto_upscale": factor}))
        (tmp_path / record["weights"]).write_bytes((checkpoint.parent / record["weights"]).read_bytes())
    three = upfusion.load(tmp_path / "three.json", device="cpu")
    assert (three.upscale_for(480, 640), three.upscale_for(512, 1024), three.upscale_for(513, 1024)) == (3, 3, 1)
    assert upfusion.load(tmp_path / "three.json", device="cpu", upscale=1).upscale_for(480, 640) == 1
    assert upfusion.load(checkpoint, device="cpu").upscale_for(480, 640) == 1  # no factor in the record
    with pytest.raises(UpfusionError, match=r"bad\.json: auto_upscale must be a whole number >= 1, not 'auto'"):
        upfusion.load(tmp_path / "bad.json", device="cpu")


def test_repr_names_device_precision_and_upscale(fuser):
    assert repr(fuser).endswith("device='cpu', precision='fp32', upscale='auto')"), repr(fuser)
    assert (
        repr(upfusion.load(method="average")) == "BaselineFuser('average', device='cpu', precision='fp64', upscale=1)"
    )


@pytest.mark.parametrize("upscale", [0, -1, 1.5, "1.5", "two", None])
def test_bad_upscale_is_named(checkpoint, upscale):
    with pytest.raises(UpfusionError, match=f"upscale must be 'auto' or a whole number >= 1, not {upscale!r}"):
        upfusion.load(checkpoint, device="cpu", upscale=upscale)


@pytest.mark.parametrize("shape", [(9, 13), (1, 1), (5, 3), (64, 64), (121, 67)])
def test_output_size_equals_input_size(fuser, shape):
    a = RNG.integers(0, 256, shape, dtype=np.uint8)
    b = RNG.integers(0, 256, shape, dtype=np.uint8)
    assert fuser.fuse(a, b).shape == shape


def test_rgb_visible_and_grey_infrared_give_rgb_with_the_visible_chroma(fuser):
    from upfusion.imaging import rgb_to_ycbcr

    vis = RNG.integers(30, 220, (24, 40, 3), dtype=np.uint8)
    ir = RNG.integers(0, 256, (24, 40), dtype=np.uint8)
    out = fuser.fuse(vis, ir)
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    assert fuser.fuse(vis, ir, color_from="none").shape == (24, 40)
    # the random network's luma is dark (clips the colour); a mid-grey luma shows the colour pipeline
    mean = fuse_module.BaselineFuser("mean", lambda a, b: (a + b) / 2)
    out, grey = mean.fuse(vis, ir), mean.fuse(vis, ir, color_from="none")
    ycc_out, ycc_vis = rgb_to_ycbcr(out / 255.0), rgb_to_ycbcr(vis / 255.0)
    unclipped = (out > 0).all(-1) & (out < 255).all(-1)
    assert unclipped.mean() > 0.5
    # luma = the grey result; chroma = the visible image's (to within rounding)
    assert np.abs(ycc_out[..., 0] - grey / 255.0)[unclipped].max() < 1.5 / 255
    assert np.abs(ycc_out[..., 1:] - ycc_vis[..., 1:])[unclipped].max() < 2.5 / 255


def test_colour_from_b_when_only_b_has_colour(fuser):
    mri = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    pet = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert fuser.fuse(mri, pet).shape == (16, 16, 3)
    assert fuser.fuse(mri, pet, color_from="a").shape == (16, 16)
    mri_rgb = np.repeat(mri[..., None], 3, axis=-1)  # grey stored as RGB is grey
    assert np.array_equal(fuser.fuse(mri_rgb, mri_rgb), fuser.fuse(mri, mri))


def test_types_follow_the_first_source(fuser, tmp_path):
    a = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (16, 24), dtype=np.uint8)
    expected = fuser.fuse(a, b)
    pil = fuser.fuse(Image.fromarray(a), Image.fromarray(b))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and np.array_equal(np.asarray(pil), expected)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    assert np.array_equal(fuser.fuse(tmp_path / "a.png", str(tmp_path / "b.png")), expected)
    floats = fuser.fuse(a / 255.0, b / 255.0)
    assert floats.dtype == np.float32 and np.abs(floats * 255 - expected).max() <= 0.5 + 1e-3


def test_any_path_like_object_is_a_path(tmp_path):
    class FilePath:  # os.PathLike, not pathlib: py.path (pytest's tmpdir), cloud and archive paths
        def __init__(self, path: Path) -> None:
            self.path = path

        def __fspath__(self) -> str:
            return str(self.path)

    a = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    average = upfusion.load(method="average")
    fused = average.fuse(FilePath(tmp_path / "a.png"), FilePath(tmp_path / "b.png"))
    assert fused.dtype == np.uint8 and np.array_equal(fused, average.fuse(a, b))
    with pytest.raises(UpfusionError, match=r"missing\.png: no such file"):
        average.fuse(FilePath(tmp_path / "missing.png"), b)


def test_16bit_sources_give_16bit_output(fuser):
    a = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)
    b = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)
    out = fuser.fuse(a, b)
    assert out.dtype == np.uint16
    expected = reference_fused_luma(fuser, a.astype(np.float32) / 65535, b.astype(np.float32) / 65535, 65535)
    assert np.array_equal(out, expected)
    assert (out % 257 != 0).any()  # 16-bit steps, not 8-bit values scaled up


def test_fuse_batch_matches_single_calls(fuser):
    pairs = [
        (RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8), RNG.integers(0, 256, (16, 24), dtype=np.uint8)),
        (RNG.integers(0, 256, (16, 24), dtype=np.uint8), RNG.integers(0, 256, (16, 24), dtype=np.uint8)),
        (RNG.integers(0, 256, (9, 13), dtype=np.uint8), RNG.integers(0, 256, (9, 13), dtype=np.uint8)),
    ]
    batch = fuser.fuse_batch(pairs, batch_size=3)
    for (a, b), got in zip(pairs, batch, strict=True):
        single = fuser.fuse(a, b)
        assert got.shape == single.shape
        assert np.abs(got.astype(int) - single).max() <= 1


def test_fuse_batch_takes_any_iterable_and_names_a_malformed_pair_or_batch_size():
    average = upfusion.load(method="average")
    a = np.array([[0, 100]], np.uint8)
    b = np.array([[50, 200]], np.uint8)
    assert average.fuse_batch([]) == []
    fused = average.fuse_batch(((a, b) for _ in range(3)), batch_size=2)  # a generator
    assert [x.tolist() for x in fused] == [[[25, 150]]] * 3
    with pytest.raises(UpfusionError, match=r"^pairs\[1\]: expected a pair \(a, b\), not a tuple of 3 items$"):
        average.fuse_batch([(a, b), (a, b, b)])
    with pytest.raises(UpfusionError, match=r"^pairs\[0\]: expected a pair \(a, b\), not a tuple of 1 items$"):
        average.fuse_batch([(a,)])
    with pytest.raises(UpfusionError, match=r"^pairs must be an iterable of \(a, b\) pairs, not int$"):
        average.fuse_batch(5)
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(
            UpfusionError, match=rf"^batch_size must be a whole number >= 1, not {re.escape(repr(bad))}$"
        ):
            average.fuse_batch([(a, b)], batch_size=bad)
    assert average.fuse_batch([(a, b)], batch_size=np.int64(1))[0].tolist() == [[25, 150]]


@pytest.mark.parametrize(
    "tile,overlap,message",
    [
        (64.5, None, "tile must be 'auto', 0 (never) or a size in pixels, not 64.5"),  # was taken as 64
        (True, None, "tile must be 'auto', 0 (never) or a size in pixels, not True"),
        (64, "16", "overlap must be a multiple of 8 and at least 0, not '16'"),  # was a TypeError
        ("auto", 16.0, "overlap must be a multiple of 8 and at least 0, not 16.0"),
    ],
)
def test_tile_and_overlap_must_be_whole_numbers(tile, overlap, message):
    with pytest.raises(UpfusionError, match=f"^{re.escape(message)}$"):
        fuse_module.check_tile(tile, overlap)


def test_tile_and_overlap_given_as_numbers_or_text():
    assert fuse_module.check_tile("64", 16) == 64
    assert fuse_module.check_tile(np.int64(128), np.int64(32)) == 128
    assert fuse_module.check_tile("0") is None


def test_size_mismatch_is_an_error_unless_b_is_resized(fuser):
    a = np.zeros((16, 24), np.uint8)
    b = np.zeros((16, 20), np.uint8)
    with pytest.raises(UpfusionError, match=r"b: size 20x16 differs from a \(24x16\).*--resize-b-to-a"):
        fuser.fuse(a, b)
    assert fuser.fuse(a, b, resize_b_to_a=True).shape == (16, 24)


def test_fuse_real_pet_mri_pair_keeps_colour(fuser):
    mri = shared_path("data", "harvard", "pet-mri", "mri", "11.png")
    pet = shared_path("data", "harvard", "pet-mri", "pet", "11.png")
    out = fuser.fuse(mri, pet)
    assert out.shape == (256, 256, 3)
    channels = out.astype(int)
    assert np.abs(channels[..., 0] - channels[..., 2]).max() > 50  # PET's pseudo-colour survives


# ---------------------------------------------------------------------------------------------
# weights, device, precision


def test_load_without_bundled_default_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(fuse_module, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(UpfusionError, match="no default weights are bundled"):
        upfusion.load()


def test_load_bundled_names_and_paths(monkeypatch, tmp_path, checkpoint):
    weights = tmp_path / "weights"
    write_tiny_checkpoint(weights / "default", seed=1)
    write_tiny_checkpoint(weights / "other", seed=2)
    monkeypatch.setattr(fuse_module, "WEIGHTS_DIR", weights)
    assert fuse_module.bundled_weights() == ["default", "other"]
    a = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    default, other = upfusion.load(device="cpu"), upfusion.load("other", device="cpu")
    assert isinstance(default, upfusion.Fuser)
    assert not np.array_equal(default.fuse(a, a[::-1]), other.fuse(a, a[::-1]))  # different weights
    for spelling in (checkpoint, checkpoint.with_suffix(".safetensors"), checkpoint.with_suffix(""), checkpoint.parent):
        assert upfusion.load(spelling, device="cpu").model.config == SMALL
    with pytest.raises(UpfusionError, match=r"nope: no such checkpoint .*bundled: default, other"):
        upfusion.load("nope")


def test_corrupt_and_wrong_architecture_weights(tmp_path):
    record = write_tiny_checkpoint(tmp_path / "ck")
    weights = record.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UpfusionError, match=r"ck\.safetensors: sha256 does not match"):
        upfusion.load(record)

    record = write_tiny_checkpoint(tmp_path / "wrong")
    content = json.loads(record.read_text())
    content["model_config"]["dim"] = 16
    record.write_text(json.dumps(content))
    with pytest.raises(UpfusionError, match=r"wrong\.safetensors: weights do not fit the network"):
        upfusion.load(record)


def test_precision_and_device_checks(checkpoint):
    with pytest.raises(UpfusionError, match="fp16 runs on CUDA devices only"):
        upfusion.load(checkpoint, device="cpu", precision="fp16")
    with pytest.raises(UpfusionError, match="unknown precision"):
        upfusion.load(checkpoint, device="cpu", precision="fp8")
    with pytest.raises(UpfusionError, match="unknown device"):
        upfusion.load(checkpoint, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UpfusionError, match="no CUDA device"):
            upfusion.load(checkpoint, device="cuda")
    assert upfusion.load(checkpoint, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bf16_on_cpu_warns_only_without_bf16_arithmetic_and_stays_close(monkeypatch, checkpoint, fuser):
    monkeypatch.setattr(fuse_module, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upfusion.load(checkpoint, device="cpu", precision="bf16")
    monkeypatch.setattr(fuse_module, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="this CPU has no bf16 arithmetic"):
        half = upfusion.load(checkpoint, device="cpu", precision="bf16")
    a = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    b = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    out = half.fuse(a, b)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - fuser.fuse(a, b)).mean() < 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp32_matches_cpu_and_half_precisions_run(checkpoint, fuser):
    a = RNG.integers(0, 256, (40, 56), dtype=np.uint8)
    b = RNG.integers(0, 256, (40, 56), dtype=np.uint8)
    gpu = upfusion.load(checkpoint, device="cuda")
    assert np.abs(gpu.fuse(a, b).astype(int) - fuser.fuse(a, b)).max() <= 1
    for precision in ("bf16", "fp16"):
        assert upfusion.load(checkpoint, device="cuda", precision=precision).fuse(a, b).shape == (40, 56)


# ---------------------------------------------------------------------------------------------
# classic methods through the same pipeline


def test_a_classic_method_runs_through_the_colour_pipeline(monkeypatch):
    fake = types.ModuleType("upfusion.baselines")
    fake.BASELINES = {"mean": lambda a, b: (a + b) / 2}
    monkeypatch.setitem(sys.modules, "upfusion.baselines", fake)
    method = upfusion.load(method="mean")
    a = RNG.integers(0, 256, (9, 13), dtype=np.uint8)
    b = RNG.integers(0, 256, (9, 13), dtype=np.uint8)
    expected = np.rint(((a.astype(np.float32) / 255 + b.astype(np.float32) / 255) / 2) * 255)
    assert np.abs(method.fuse(a, b).astype(int) - expected).max() <= 1
    assert method.fuse(np.dstack([a, b, a]), b).shape == (9, 13, 3)
    with pytest.raises(UpfusionError, match="unknown method 'nope'; known: upfusion, mean"):
        upfusion.load(method="nope")


def test_the_real_average_baseline():
    baselines = pytest.importorskip("upfusion.baselines")
    assert "average" in baselines.BASELINES
    average = upfusion.load(method="average")
    vis = imaging_rgb = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    ir = RNG.integers(0, 256, (12, 20), dtype=np.uint8)
    out = average.fuse(vis, ir, color_from="none")
    from upfusion.imaging import luma_of

    expected = np.rint(255 * (luma_of(imaging_rgb / np.float32(255)).astype(np.float64) + ir / 255.0) / 2)
    assert np.abs(out.astype(int) - expected).max() <= 1


def _fuse_shipped_sample(kind: str, a_name: str, b_name: str) -> tuple[Path, Path, np.ndarray]:
    """A shipped sample pair (``samples/KIND/...``) and its fused luma by the bundled default weights."""
    weights = fuse_module.WEIGHTS_DIR / "default.safetensors"
    if not weights.is_file():
        pytest.skip("no bundled default weights")
    assert weights.stat().st_size <= 16 * 2**20
    samples = Path(__file__).resolve().parents[1] / "samples" / kind
    a, b = samples / a_name, samples / b_name
    return a, b, upfusion.load(device="cpu").fuse(a, b, color_from="none")


def test_bundled_default_weights_fuse_the_msrs_sample_better_than_averaging():
    """The shipped weights (at most 16 MB) on the shipped MSRS sample: more edge strength (Qabf) than the average."""
    from upfusion import imaging
    from upfusion.metrics import compute

    a, b, fused = _fuse_shipped_sample("msrs", "vi/00016N.png", "ir/00016N.png")
    luma_a, luma_b = (np.round(255 * imaging.read_image(p).luma()) for p in (a, b))
    network = compute(luma_a, luma_b, fused, "Qabf")["Qabf"]
    average = compute(luma_a, luma_b, np.round((luma_a + luma_b) / 2), "Qabf")["Qabf"]
    assert network > average + 0.1, (network, average)


def test_bundled_default_weights_fuse_medical_slices_better_enlarged_twice():
    """The bundled weights ask for 2x on images of up to half a megapixel (``auto_upscale``): on real
    PET-MRI slices (256x256) that gives more of the sources' information (VIF) and edges (Qabf)."""
    from upfusion import imaging
    from upfusion.metrics import compute

    weights = Path(upfusion.__file__).parent / "weights" / "default.json"
    if not weights.is_file():
        pytest.skip("no bundled default weights")
    assert json.loads(weights.read_text())["auto_upscale"] == 2
    root = shared_path("data", "harvard", "pet-mri")
    stems = sorted(p.stem for p in (root / "mri").iterdir())[:3]
    scores = {}
    for upscale in ("auto", 1):
        fuser = upfusion.load(device="cpu", upscale=upscale)
        values = []
        for stem in stems:
            a, b = root / "pet" / f"{stem}.png", root / "mri" / f"{stem}.png"
            luma_a, luma_b = (np.round(255 * imaging.read_image(p).luma()) for p in (a, b))
            fused = fuser.fuse(a, b, color_from="none")
            values.append(list(compute(luma_a, luma_b, fused, "VIF,Qabf").values()))
        scores[upscale] = np.mean(values, axis=0)
    assert (scores["auto"] > scores[1] + 0.01).all(), scores


def test_bundled_default_weights_keep_a_black_background_black():
    """On the shipped CT-MRI sample, where both sources are black (the scanner's outside) the fused
    image is black too: a grey veil there is what SSIM punishes most on medical pairs."""
    from upfusion import imaging

    a, b, fused = _fuse_shipped_sample("ct-mri", "mri/20.png", "ct/20.png")
    black = (imaging.read_image(a).luma() == 0) & (imaging.read_image(b).luma() == 0)
    assert black.mean() > 0.3  # the sample has a large black surround
    assert (fused[black] == 0).mean() > 0.99, (fused[black] == 0).mean()


class _RecordingBlock(torch.nn.Module):
    """Stands in for a compiled Restormer block: runs it and notes whether the fast kernels were on."""

    def __init__(self, block: torch.nn.Module, fast_seen: list[bool]) -> None:
        super().__init__()
        self.block, self.fast_seen = block, fast_seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from upfusion.model import fast_ops

        self.fast_seen.append(fast_ops.fast_path_active())
        return self.block(x)


def test_compiled_fuser_runs_its_compiled_blocks_on_plain_arithmetic(monkeypatch, checkpoint, fuser):
    fast_seen: list[bool] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: _RecordingBlock(module, fast_seen))
    compiled = upfusion.load(checkpoint, device="cpu", compile="blocks")
    assert compiled.network.is_compiled
    a, b = (RNG.random((37, 45)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(compiled.fuse(a, b), fuser.fuse(a, b), atol=1e-5)
    assert fast_seen and not any(fast_seen)  # the compiler gets the specification's formulas
    # tiled inference reaches the model's stages through the compiled wrapper
    a, b = (RNG.random((100, 140)).astype(np.float32) for _ in range(2))
    tiled = upfusion.load(checkpoint, device="cpu", compile="blocks", tile=64, overlap=16)
    eager_tiled = upfusion.load(checkpoint, device="cpu", tile=64, overlap=16)
    np.testing.assert_allclose(tiled.fuse(a, b), eager_tiled.fuse(a, b), atol=1e-5)
    with pytest.raises(UpfusionError, match="compile must be one of blocks, model"):
        upfusion.load(checkpoint, device="cpu", compile="fast")


def test_compile_warns_where_the_fused_kernels_run_without_it(monkeypatch, checkpoint):
    """On Hopper GPUs in bf16 or fp16 the eager fused kernels beat the compiled blocks; the
    fuser says so (here made to believe the kernels would run: this machine has no such GPU)."""
    from upfusion.model import fused_kernels

    monkeypatch.setattr(fused_kernels, "runs_for", lambda device, precision: True)
    with pytest.warns(UserWarning, match="the fused kernels, which run without it, are faster"):
        upfusion.load(checkpoint, device="cpu", compile="blocks")
    monkeypatch.setattr(fused_kernels, "runs_for", lambda device, precision: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upfusion.load(checkpoint, device="cpu", compile="blocks")
