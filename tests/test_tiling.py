"""Tiled inference: windows, blending weights, whole-image statistics shared by every tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_speed_equivalence import MEDIUM, separate_scores
from upfusion import tiling
from upfusion.model import UPFusion
from upfusion.model.blocks import global_average_pool
from upfusion.presets import build_model

WITH_BACKBONE = MEDIUM.replace(semantic_backbone="efficientnet_lite0", backbone_dim=1280)


@pytest.fixture(scope="module")
def model():
    return separate_scores(build_model(WITH_BACKBONE)).eval()


def _pair(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


@pytest.mark.parametrize(
    "length,tile,overlap", [(160, 64, 16), (4320, 1024, 64), (520, 512, 64), (64, 64, 16), (968, 256, 128)]
)
def test_windows_cover_the_image_with_the_overlap_asked_for(length, tile, overlap):
    windows = tiling.tile_windows(length, tile, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == length
    for start, end in windows:
        assert start % 8 == 0 and end - start == min(tile, length)
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert end - start >= overlap  # neighbours overlap by at least `overlap`
    bounds = tiling._core_bounds(windows, length)
    assert bounds == sorted(bounds) and bounds[0] == 0 and bounds[-1] == length
    for (start, end), lo, hi in zip(windows, bounds, bounds[1:], strict=False):
        assert start <= lo < hi <= end and lo % 8 == 0  # each core lies inside its window


@pytest.mark.parametrize("length,tile,overlap", [(160, 64, 16), (1000, 256, 64), (520, 512, 64)])
def test_blending_weights_sum_to_one_and_vanish_at_inner_edges(length, tile, overlap):
    length = length // 8 * 8
    windows = tiling.tile_windows(length, tile, overlap)
    ramps = tiling._ramps(windows, torch.device("cpu"))
    total = torch.zeros(length, dtype=torch.float64)
    for (start, end), ramp in zip(windows, ramps, strict=True):
        total[start:end] += ramp.double()
        assert ramp.min() > 0 and ramp.max() <= 1
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    if len(windows) > 1:
        assert ramps[0][-1] < 0.01 and ramps[1][0] < 0.01  # a tile's edge next to a neighbour hardly counts


def test_one_tile_is_the_ordinary_forward(model):
    a, b = _pair(1, 48, 64)
    text = torch.randn(32)
    with torch.no_grad():
        assert torch.equal(tiling.tiled_forward(model, a, b, text, tile=64, overlap=16), model(a, b, text))


def test_shared_statistics_equal_the_whole_images(model):
    """GAM pools and the SCPM choice from 24-pixel blocks; TCPM's from one window: all as on the whole image."""
    a, b = _pair(2, 48, 64)
    with torch.no_grad():
        shallow = tiling._shallow_statistics(model, a, b, block=24)
        stats = tiling.whole_image_statistics(model, a, b, tile=64, overlap=16)
        e_a, e_b = model.embed(a, b)
        assert torch.allclose(shallow.gam_pooled[0], global_average_pool(e_a), atol=1e-6)
        assert torch.allclose(shallow.gam_pooled[1], global_average_pool(e_b), atol=1e-6)
        scpm = model.channel_select
        expected = torch.topk(scpm.channel_weights((e_a + e_b) / 2), scpm.keep, dim=1).indices
        assert torch.equal(shallow.scpm_indices, expected)
        levels = model.encode(*model.select_and_modulate(e_a, e_b, stats))
        for (feat_a, feat_b), tcpm, chosen in zip(levels, model.tcpm_modules(), stats.tcpm_indices, strict=True):
            pooled = global_average_pool(torch.cat([feat_a, feat_b], dim=1)).flatten(1)
            assert torch.equal(chosen, tcpm.channel_selection(pooled))


def test_whole_image_statistics_reproduce_the_forward(model):
    """Given the statistics of the image itself, the forward pass is unchanged (the tile = the image)."""
    a, b = _pair(1, 48, 64)
    text = torch.randn(32)
    with torch.no_grad():
        stats = tiling.whole_image_statistics(model, a, b, tile=64, overlap=16)
        assert (model(a, b, text, stats) - model(a, b, text)).abs().max().item() < 1e-6


def _smooth_pair(h, w):
    """Two registered images with structure at several scales (random smooth fields plus edges)."""
    g = torch.Generator().manual_seed(5)
    coarse = torch.nn.functional.interpolate(torch.rand(2, 1, h // 16, w // 16, generator=g), (h, w), mode="bicubic")
    edges = (torch.rand(2, 1, h // 4, w // 4, generator=g) > 0.5).float()
    fine = torch.nn.functional.interpolate(edges, (h, w), mode="nearest")
    pair = (0.7 * coarse + 0.3 * fine).clamp(0, 1)
    return pair[0:1], pair[1:2]


def test_tiles_agree_more_with_shared_statistics(model):
    """Where two tiles overlap, their raw outputs disagree less when they share the whole-image statistics."""
    a, b = _smooth_pair(64, 128)
    text = torch.randn(32)
    left, right = (
        (slice(None), slice(None), slice(0, 64), slice(0, 80)),
        (slice(None), slice(None), slice(0, 64), slice(48, 128)),
    )
    with torch.no_grad():
        stats = tiling.whole_image_statistics(model, a, b, tile=80, overlap=32)

        def disagreement(shared):
            out_left = model(a[left], b[left], text, shared)
            out_right = model(a[right], b[right], text, shared)
            return (out_left[..., 48:80] - out_right[..., 0:32]).abs().mean().item()

        assert disagreement(stats) < disagreement(None)


def test_tiled_output_shape_batch_and_finiteness(model):
    a, b = _smooth_pair(64, 128)
    a, b = torch.cat([a, b]), torch.cat([b, a])
    text = torch.randn(32)
    with torch.no_grad():
        out = tiling.tiled_forward(model, a, b, text, tile=48, overlap=16)
        single = tiling.tiled_forward(model, a[1:], b[1:], text, tile=48, overlap=16)
    assert out.shape == (2, 1, 64, 128) and torch.isfinite(out).all()
    assert (out[1:] - single).abs().max().item() < 1e-5  # samples keep their own statistics


def test_progress_is_called_for_every_tile_and_pass(model):
    a, b = _pair(1, 48, 96)
    calls = []
    with torch.no_grad():
        tiling.tiled_forward(model, a, b, torch.randn(32), tile=48, overlap=16, progress=lambda: calls.append(1))
    assert len(calls) == 2 * tiling.tile_count(48, 96, 48, 16) == 2 * 3
    calls.clear()  # each tile on its own statistics: no encoder pass first
    with torch.no_grad():
        tiling.tiled_forward(
            model, a, b, torch.randn(32), tile=48, overlap=16, progress=lambda: calls.append(1), share_statistics=False
        )
    assert len(calls) == 3


@pytest.mark.parametrize(
    "shape,tile,overlap,message",
    [((1, 1, 60, 64), 32, 8, "multiples of 8"), ((1, 1, 64, 64), 30, 8, "tile"), ((1, 1, 64, 64), 32, 24, "overlap")],
)
def test_bad_arguments_are_refused(shape, tile, overlap, message):
    model = UPFusion(MEDIUM).eval()
    a = torch.rand(shape)
    with pytest.raises(ValueError, match=message):
        tiling.tiled_forward(model, a, a, torch.randn(32), tile=tile, overlap=overlap)


def test_plan_tile_fits_the_memory_budget():
    from upfusion.presets import PRESETS

    cfg = PRESETS["paper"]
    whole = tiling.estimate_peak_bytes(cfg, 2160, 3840)
    assert whole > tiling.estimate_peak_bytes(cfg, 480, 640) > 0
    assert tiling.plan_tile(cfg, 480, 640, budget_bytes=10 * whole) is None  # fits: no tiling
    tile = tiling.plan_tile(cfg, 2160, 3840, budget_bytes=whole // 4)
    assert tile is not None and tile % 8 == 0
    assert tiling.estimate_peak_bytes(cfg, tile, tile) <= whole // 4


# --------------------------------------------------------------------------------------------
# the pipeline: upfusion.load(tile=...) and upfusion fuse --tile


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from test_fuse import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny")


def _gradient_pair(h, w):
    a, b = _smooth_pair(h, w)
    return a[0, 0].numpy(), b[0, 0].numpy()


def test_fuser_tiles_only_when_asked_or_needed(small_checkpoint, monkeypatch):
    import warnings

    import upfusion

    a, b = _gradient_pair(136, 200)
    whole = upfusion.load(small_checkpoint, device="cpu", tile=0).fuse(a, b)
    auto = upfusion.load(small_checkpoint, device="cpu").fuse(a, b)  # fits in memory: one pass
    assert np.array_equal(whole, auto)

    tiled = upfusion.load(small_checkpoint, device="cpu", tile=64, overlap=16).fuse(a, b)
    assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
    difference = np.abs(tiled - whole)
    assert 0 < difference.max() and difference.mean() < 0.05  # tiled, and close to the whole image

    # automatic tiling when the free memory is too small, announced once per size
    monkeypatch.setattr(tiling, "available_memory_bytes", lambda device="cpu": 300 * 2**20)
    monkeypatch.setattr(tiling, "estimate_peak_bytes", lambda config, h, w, batch=1, device_type="cpu": h * w * 10_000)
    a, b = _gradient_pair(296, 400)  # larger than the smallest automatic tile (256)
    fuser = upfusion.load(small_checkpoint, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fuser.fuse(a, b)
        fuser.fuse(a, b)
    messages = [str(w.message) for w in caught if "tiles" in str(w.message)]
    assert len(messages) == 1 and "400x296" in messages[0] and "256x256" in messages[0]
    whole = upfusion.load(small_checkpoint, device="cpu", tile=0).fuse(a, b)
    assert first.shape == whole.shape and not np.array_equal(first, whole)


@pytest.mark.parametrize(
    "tile,overlap,message",
    [
        ("30", 16, "multiple of 8 and at least 64"),
        ("big", 16, "'auto', 0"),
        ("64", 40, "overlap must be"),
        ("auto", 30, "overlap must be a multiple of 8"),
    ],
)
def test_bad_tile_settings_are_refused(small_checkpoint, tile, overlap, message):
    import upfusion
    from upfusion.errors import UpfusionError

    with pytest.raises(UpfusionError, match=message):
        upfusion.load(small_checkpoint, device="cpu", tile=tile, overlap=overlap)


def test_cli_tile_option(small_checkpoint, tmp_path, capsys):
    from PIL import Image

    from upfusion.cli import main

    a, b = _gradient_pair(136, 200)
    for folder, image in (("a", a), ("b", b)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.round(255 * image).astype(np.uint8)).save(tmp_path / folder / "x.png")
    args = ["fuse", "--quiet", "--a", tmp_path / "a", "--b", tmp_path / "b", "--weights", small_checkpoint]
    assert main([*map(str, args), "--out", str(tmp_path / "tiled"), "--tile", "64", "--overlap", "16"]) == 0
    assert main([*map(str, args), "--out", str(tmp_path / "whole"), "--tile", "0"]) == 0
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "x.png"), dtype=np.int16)
    whole = np.asarray(Image.open(tmp_path / "whole" / "x.png"), dtype=np.int16)
    assert tiled.shape == whole.shape == (136, 200) and np.abs(tiled - whole).mean() < 0.05 * 255
    assert main([*map(str, args), "--out", str(tmp_path / "bad"), "--tile", "30"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("upfusion fuse: error: ") and "tile must be" in err[-1]
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())

    # the default overlap (64) is halved for a tile under 128; an overlap asked for is not
    assert main([*map(str, args), "--out", str(tmp_path / "default"), "--tile", "64"]) == 0
    assert main([*map(str, args), "--out", str(tmp_path / "half"), "--tile", "64", "--overlap", "32"]) == 0
    default = np.asarray(Image.open(tmp_path / "default" / "x.png"))
    assert np.array_equal(default, np.asarray(Image.open(tmp_path / "half" / "x.png")))
    assert not np.array_equal(default, np.asarray(Image.open(tmp_path / "tiled" / "x.png")))  # (overlap 16)
    assert main([*map(str, args), "--out", str(tmp_path / "bad"), "--tile", "64", "--overlap", "64"]) == 1
    assert "overlap must be a multiple of 8 in [0, tile / 2], not 64" in capsys.readouterr().err
