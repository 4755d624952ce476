"""The training dataset: pairing, crops, flips, padding/skipping, luma, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_path
from upfusion.data import CONTRAST_GAIN_MAX, DOWNSCALE_MIN, FusionPairs, index_pairs, luma, read_image_u8
from upfusion.errors import UpfusionError


def _write(folder: Path, name: str, arr: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def pairs(tmp_path):
    """Three pairs whose B is the negative of A (so alignment is checkable), one unmatched file."""
    rng = np.random.default_rng(0)
    sizes = {"p1": (40, 50), "p2": (64, 48), "small": (20, 30)}
    for stem, (h, w) in sizes.items():
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        _write(tmp_path / "vi", f"{stem}.png", a)
        _write(tmp_path / "ir", f"{stem}.png", 255 - a)
    _write(tmp_path / "ir", "lonely.png", np.zeros((8, 8), np.uint8))
    return tmp_path / "vi", tmp_path / "ir"


def test_pairs_by_stem_and_counts_unmatched(pairs):
    index = index_pairs([pairs])
    assert [stem for stem, _, _ in index.pairs] == ["p1", "p2", "small"]
    assert [p.name for p in index.unmatched] == ["lonely.png"]


def test_crops_keep_sources_aligned_and_pad_small_images(pairs):
    ds = FusionPairs([pairs], crop=32, seed=1)
    assert len(ds) == 3 and ds.skipped == []
    for i in range(len(ds)):
        a, b = ds[i]
        assert a.shape == b.shape == (1, 32, 32) and a.dtype == torch.float32
        # B = 255 - A pixel by pixel (or both padding): the same crop and flips were applied to both
        total = a + b
        padding = (a == 0) & (b == 0)
        torch.testing.assert_close(total[~padding], torch.ones_like(total[~padding]), atol=1e-6, rtol=0)
        assert padding.sum() == (0 if ds.stems[i] != "small" else 32 * 32 - 20 * 30)
    unflipped = FusionPairs([pairs], crop=32, flips=False)
    a, b = unflipped[unflipped.stems.index("small")]  # 20x30 padded with zeros at the bottom and right
    assert a[0, 20:].abs().sum() == 0 and a[0, :, 30:].abs().sum() == 0 and b[0, 20:].abs().sum() == 0


def test_skip_small_pairs_counts_them(pairs):
    ds = FusionPairs([pairs], crop=32, small="skip")
    assert ds.stems == ["p1", "p2"] and ds.skipped == ["small"]


def test_randomness_depends_on_seed_epoch_and_index_only(pairs):
    ds = FusionPairs([pairs], crop=16, seed=5)
    first = [ds[i][0] for i in range(3)]
    again = FusionPairs([pairs], crop=16, seed=5)
    assert all(torch.equal(x, again[i][0]) for i, x in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(x, ds[i][0]) for i, x in enumerate(first))


def test_flips_happen_and_can_be_turned_off(pairs):
    vi, ir = pairs
    ds = FusionPairs([(vi, ir)], crop=None, flips=True)  # whole images: flips do not apply
    full = ds[0][0][0]
    seen = set()
    flip_ds = FusionPairs([(vi, ir)], crop=40, flips=True, only=["p1"])  # 40x50: only 11 crop offsets
    plain = FusionPairs([(vi, ir)], crop=40, flips=False, only=["p1"])
    for epoch in range(12):
        flip_ds.set_epoch(epoch)
        plain.set_epoch(epoch)
        crop, reference = flip_ds[0][0][0], plain[0][0][0]
        left = int(np.argmax([torch.equal(reference, full[:, j : j + 40]) for j in range(11)]))
        assert torch.equal(reference, full[:, left : left + 40])  # the unflipped crop is a window
        seen.add(
            next(
                k
                for k, f in {"none": crop, "h": crop.flip(1), "v": crop.flip(0), "hv": crop.flip(0, 1)}.items()
                if torch.equal(f, reference)
            )
        )
    assert seen == {"none", "h", "v", "hv"}


def test_blackout_zeroes_both_sources_outside_an_ellipse_at_its_rate(pairs):
    plain = FusionPairs([pairs], crop=32, small="skip", seed=3)
    always = FusionPairs([pairs], crop=32, small="skip", seed=3, blackout=1.0)
    for i in range(len(always)):
        (a, b), (a0, b0) = always[i], plain[i]
        black = (a == 0) & (b == 0)
        assert 0 < black.float().mean() < 1  # part of the crop, both sources at once
        # inside the field of view the crop is untouched (same crop and flips as without blackout)
        assert torch.equal(a[~black], a0[~black]) and torch.equal(b[~black], b0[~black])
        rows = black[0].any(dim=1).nonzero()  # the black region is the outside of a convex shape:
        for r in rows[:, 0].tolist():  # along each row the kept pixels form one run
            kept = (~black[0, r]).nonzero()[:, 0]
            if len(kept):
                assert int(kept[-1] - kept[0]) + 1 == len(kept)
    sometimes = FusionPairs([pairs], crop=32, small="skip", seed=3, blackout=0.3)
    hits = 0
    for epoch in range(100):
        sometimes.set_epoch(epoch)
        hits += sum(bool(((sometimes[i][0] == 0) & (sometimes[i][1] == 0)).any()) for i in range(len(sometimes)))
    assert 40 <= hits <= 80  # 200 draws at p 0.3: 60 expected
    with pytest.raises(ValueError, match="blackout"):
        FusionPairs([pairs], crop=32, blackout=1.5)


def test_self_pairs_give_one_source_twice_from_the_same_crop(pairs):
    plain = FusionPairs([pairs], crop=32, small="skip", seed=3)
    always = FusionPairs([pairs], crop=32, small="skip", seed=3, self_pairs=1.0)
    picked = set()
    for epoch in range(8):
        plain.set_epoch(epoch)
        always.set_epoch(epoch)
        for i in range(len(always)):
            (a, b), (a0, b0) = always[i], plain[i]
            assert torch.equal(a, b)
            assert torch.equal(a, a0) or torch.equal(a, b0)  # the same crop and flips, one source
            picked.add("a" if torch.equal(a, a0) else "b")
    assert picked == {"a", "b"}
    sometimes = FusionPairs([pairs], crop=32, small="skip", seed=3, self_pairs=0.3)
    hits = 0
    for epoch in range(100):
        sometimes.set_epoch(epoch)
        hits += sum(bool(torch.equal(*sometimes[i])) for i in range(len(sometimes)))
    assert 40 <= hits <= 80  # 200 draws at p 0.3: 60 expected (B is A's negative, never equal)
    with pytest.raises(ValueError, match="self_pairs"):
        FusionPairs([pairs], crop=32, self_pairs=-0.1)


def test_contrast_brightens_each_source_by_its_own_gain_and_clips_at_one(pairs):
    plain = FusionPairs([pairs], crop=32, small="skip", seed=3)
    always = FusionPairs([pairs], crop=32, small="skip", seed=3, contrast=1.0)
    gains = []
    for i in range(len(always)):
        for x, x0 in zip(always[i], plain[i], strict=True):
            unclipped = (x < 1) & (x0 > 0.05)
            gain = (x[unclipped] / x0[unclipped]).mean().item()
            assert 1.0 <= gain <= CONTRAST_GAIN_MAX
            torch.testing.assert_close(x, torch.clamp(x0 * gain, max=1.0), atol=1e-5, rtol=1e-5)
            gains.append(gain)
    assert len({round(g, 4) for g in gains}) == len(gains)  # a gain of its own per source
    assert any(bool((x == 1).sum() > (x0 == 1).sum()) for x, x0 in zip(always[0], plain[0], strict=True))  # saturates
    with pytest.raises(ValueError, match="contrast"):
        FusionPairs([pairs], crop=32, contrast=2.0)


def test_downscale_shrinks_both_sources_alike(tmp_path):
    ramp = np.tile(np.linspace(0, 254, 128), (100, 1)).round().astype(np.uint8)  # +2 grey levels a column
    _write(tmp_path / "vi", "ramp.png", ramp)
    _write(tmp_path / "ir", "ramp.png", 255 - ramp)
    folders = (tmp_path / "vi", tmp_path / "ir")
    plain = FusionPairs([folders], crop=32, flips=False, seed=2)
    always = FusionPairs([folders], crop=32, flips=False, seed=2, downscale=1.0)
    assert torch.equal(FusionPairs([folders], crop=32, flips=False, seed=2, downscale=0.0)[0][0], plain[0][0])
    factors = []
    for epoch in range(20):
        plain.set_epoch(epoch)
        always.set_epoch(epoch)
        (a, b), (a0, _) = always[0], plain[0]
        torch.testing.assert_close(a + b, torch.ones_like(a), atol=1e-5, rtol=0)  # aligned: B is still 1 - A
        slope, slope0 = (a[0, :, 29] - a[0, :, 2]).mean(), (a0[0, :, 29] - a0[0, :, 2]).mean()
        factors.append((slope0 / slope).item())  # a ramp shrunk by f climbs 1/f times as fast
    assert all(DOWNSCALE_MIN - 0.03 <= f <= 1.03 for f in factors), factors
    assert max(factors) - min(factors) > 0.2  # a factor drawn per crop
    sometimes = FusionPairs([folders], crop=32, flips=False, seed=2, downscale=0.5)
    hits = 0
    for epoch in range(100):
        plain.set_epoch(epoch)
        sometimes.set_epoch(epoch)
        hits += not torch.equal(sometimes[0][0], plain[0][0])
    assert 35 <= hits <= 65
    with pytest.raises(ValueError, match="downscale"):
        FusionPairs([folders], crop=32, downscale=1.5)


def test_colour_becomes_bt601_luma(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    grey_as_rgb = np.repeat(np.full((16, 16, 1), 77, np.uint8), 3, axis=2)
    _write(tmp_path / "vi", "x.png", rgb)
    _write(tmp_path / "ir", "x.png", grey_as_rgb)
    assert read_image_u8(tmp_path / "ir" / "x.png").ndim == 2  # equal channels are grey
    a, b = FusionPairs([(tmp_path / "vi", tmp_path / "ir")], crop=16)[0]
    assert a[0, 0, 0].item() == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert b[0, 0, 0].item() == pytest.approx(77 / 255, abs=1e-7)
    assert luma(rgb).dtype == np.float32


def test_size_mismatch_names_the_file(tmp_path):
    _write(tmp_path / "vi", "x.png", np.zeros((16, 16), np.uint8))
    _write(tmp_path / "ir", "x.png", np.zeros((16, 24), np.uint8))
    with pytest.raises(UpfusionError, match=r"ir/x.png: size 24x16 differs from its pair x.png \(16x16\)"):
        FusionPairs([(tmp_path / "vi", tmp_path / "ir")], crop=8)


def test_unreadable_file_and_missing_folder_are_named(tmp_path):
    _write(tmp_path / "vi", "x.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "x.png").write_bytes(b"not a png")
    with pytest.raises(UpfusionError, match=r"ir/x.png: not an image file \(unknown or unsupported format\)$"):
        FusionPairs([(tmp_path / "vi", tmp_path / "ir")], crop=8)
    with pytest.raises(UpfusionError, match="nope: no such file or directory"):
        FusionPairs([(tmp_path / "vi", tmp_path / "nope")], crop=8)


def test_real_training_folder_with_mixed_grey_and_colour():
    vifb = shared_path("data", "vifb", "train")
    ds = FusionPairs([(vifb / "vi", vifb / "ir")], crop=64, seed=0)
    assert len(ds) == 21
    a, b = ds[0]
    assert a.shape == (1, 64, 64) and 0 <= a.min() and a.max() <= 1 and a.std() > 0.01 and b.std() > 0.01


def test_several_folder_pairs_keep_equal_stems_apart(tmp_path):
    for collection in ("one", "two"):
        _write(tmp_path / collection / "train" / "vi", "x.png", np.zeros((16, 16), np.uint8))
        _write(tmp_path / collection / "train" / "ir", "x.png", np.zeros((16, 16), np.uint8))
    sources = [(tmp_path / c / "train" / "vi", tmp_path / c / "train" / "ir") for c in ("one", "two")]
    ds = FusionPairs(sources, crop=8)
    assert len(ds) == 2 and [s.split("/")[-3:] for s in ds.stems] == [["one", "train", "x"], ["two", "train", "x"]]


def test_sibling_folder_pairs_under_one_parent_keep_their_stems_apart(tmp_path):
    # data/vi + data/ir and data/vi2 + data/ir2 share their parent: every stem must still be its own
    for a, b in (("vi", "ir"), ("vi2", "ir2")):
        for stem in ("x", "y"):
            _write(tmp_path / a, f"{stem}.png", np.zeros((16, 16), np.uint8))
            _write(tmp_path / b, f"{stem}.png", np.zeros((16, 16), np.uint8))
    sources = [(tmp_path / "vi", tmp_path / "ir"), (tmp_path / "vi2", tmp_path / "ir2")]
    stems = [stem for stem, _, _ in index_pairs(sources).pairs]
    assert len(set(stems)) == 4 and [s.split("/")[-2:] for s in stems] == [
        ["vi", "x"],
        ["vi", "y"],
        ["vi2", "x"],
        ["vi2", "y"],
    ]
    held_out = FusionPairs(sources, crop=8, exclude=[stems[0]])  # holding out one pair leaves three
    assert len(held_out) == 3 and stems[0] not in held_out.stems
    with pytest.raises(UpfusionError, match=r"ir: the same folder pair is given twice$"):
        index_pairs([sources[0], sources[1], sources[0]])


def test_exif_orientation_is_applied_as_upfusion_fuse_reads_it(tmp_path):
    from upfusion.imaging import read_image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: viewers (and upfusion fuse) turn it 90 degrees
    im.save(tmp_path / "photo.jpg", exif=exif)
    arr = read_image_u8(tmp_path / "photo.jpg")
    assert arr.shape == (30, 20, 3)
    np.testing.assert_array_equal(arr, np.round(read_image(tmp_path / "photo.jpg").pixels * 255))


def test_image_over_pillows_pixel_limit_is_named(tmp_path, monkeypatch):
    _write(tmp_path, "big.png", np.zeros((40, 40), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels: over twice the limit
    with pytest.raises(UpfusionError, match=r"big.png: too many pixels for Pillow to read"):
        read_image_u8(tmp_path / "big.png")
