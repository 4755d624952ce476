"""Reading, colour, padding and writing of the fusion pipeline (upfusion.imaging)."""

from __future__ import annotations

import io
import os
import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import png_claiming_size, shared_path
from upfusion import imaging
from upfusion.errors import UpfusionError
from upfusion.imaging import FusedImage, SourceImage


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


# ---------------------------------------------------------------------------------------------
# YCbCr


def test_ycbcr_known_values_and_exact_inverse():
    rgb = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ycc = imaging.rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycc[0], [1.0, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(ycc[1], [0.0, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(ycc[2], [0.299, 0.5 - 0.168736, 1.0], atol=1e-12)
    np.testing.assert_allclose(ycc[3], [0.114, 1.0, 0.5 - 0.081312], atol=1e-12)
    random = _rng().random((50, 3))
    np.testing.assert_allclose(imaging.ycbcr_to_rgb(imaging.rgb_to_ycbcr(random)), random, atol=1e-12)


def test_luma_matches_the_networks_reduction():
    from upfusion.model import UPFusion

    rgb = _rng().random((5, 7, 3)).astype(np.float32)
    expected = UPFusion.to_luma(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    assert imaging.luma_of(rgb).dtype == np.float32
    assert np.array_equal(imaging.luma_of(rgb), expected)


def test_compose_with_the_sources_own_luma_gives_back_the_source_exactly():
    vi = imaging.read_image(shared_path("data", "msrs", "test", "vi", "00004N.png"))
    assert vi.is_color
    original = np.asarray(Image.open(shared_path("data", "msrs", "test", "vi", "00004N.png")))
    result = imaging.compose(vi.luma(), vi, 8)
    assert result.is_color
    assert np.array_equal(result.to_uint(), original)


def test_compose_keeps_chroma_and_sets_luma():
    source = imaging.from_array(_rng().integers(0, 256, (6, 9, 3), dtype=np.uint8))
    new_y = np.full((6, 9), 0.5, np.float32)
    out = imaging.compose(new_y, source, 8)
    ycc_out, ycc_src = imaging.rgb_to_ycbcr(out.pixels), imaging.rgb_to_ycbcr(source.pixels)
    inside = (out.pixels > 0).all(-1) & (out.pixels < 1).all(-1)  # pixels not clipped by the gamut
    assert inside.sum() > 10
    np.testing.assert_allclose(ycc_out[..., 0][inside], 0.5, atol=1e-9)
    np.testing.assert_allclose(ycc_out[..., 1:][inside], ycc_src[..., 1:][inside], atol=1e-9)


def test_compose_grey_clamps_and_rounds_half_to_even():
    y = np.array([[-0.2, 0.0, 0.5 / 255, 1.5 / 255, 1.0, 1.7]], np.float32)
    assert imaging.compose(y, None, 8).to_uint().tolist() == [[0, 0, 0, 2, 255, 255]]


# ---------------------------------------------------------------------------------------------
# grey detection and colour source


@pytest.mark.parametrize(
    ("parts", "is_color"),
    [
        (("llvip", "test", "ir", "190001.jpg"), False),  # RGB JPEG with R = G = B
        (("llvip", "test", "vi", "190001.jpg"), True),
        (("harvard", "ct-mri", "mri", "11.png"), False),
        (("harvard", "pet-mri", "pet", "11.png"), True),
        (("msrs", "test", "ir", "00004N.png"), False),  # mode L
        (("gfp-pc", "gfp", "001.bmp"), True),
    ],
)
def test_grey_detection_on_real_files(parts, is_color):
    path = shared_path("data", *parts)
    image = imaging.read_image(path)
    assert image.is_color is is_color
    assert image.pixels.shape[:2] == Image.open(path).size[::-1]
    assert image.bit_depth == 8


def test_grey_tolerance_is_one_level():
    grey = np.full((4, 4, 3), 100, np.uint8)
    grey[0, 0, 1] = 101
    assert not imaging.from_array(grey).is_color
    grey[0, 0, 1] = 103
    assert imaging.from_array(grey).is_color


def test_pick_color_source():
    colour = imaging.from_array(_rng().integers(0, 256, (4, 4, 3), dtype=np.uint8), "c")
    colour2 = imaging.from_array(_rng().integers(0, 256, (4, 4, 3), dtype=np.uint8), "c2")
    grey = imaging.from_array(np.zeros((4, 4), np.uint8), "g")
    assert imaging.pick_color_source(colour, grey) is colour
    assert imaging.pick_color_source(grey, colour) is colour
    assert imaging.pick_color_source(grey, grey) is None
    assert imaging.pick_color_source(colour, colour2) is colour
    assert imaging.pick_color_source(colour, colour2, "b") is colour2
    assert imaging.pick_color_source(colour, grey, "b") is None
    assert imaging.pick_color_source(colour, colour2, "none") is None
    with pytest.raises(UpfusionError, match="color_from"):
        imaging.pick_color_source(colour, grey, "red")


# ---------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("shape", [(480, 640), (37, 45), (9, 13), (17, 8), (64, 33)])
def test_padding_is_torch_reflect_at_bottom_right(shape):
    x = _rng().random((2, *shape)).astype(np.float32)
    padded = imaging.pad_to_multiple(x)
    ph, pw = imaging.pad_amounts(*shape)
    assert padded.shape == (2, shape[0] + ph, shape[1] + pw)
    assert padded.shape[-1] % 8 == 0 and padded.shape[-2] % 8 == 0
    expected = F.pad(torch.from_numpy(x)[:, None], (0, pw, 0, ph), mode="reflect")[:, 0].numpy()
    assert np.array_equal(padded, expected)
    assert np.array_equal(padded[..., : shape[0], : shape[1]], x)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 2), (2, 9)])
def test_padding_replicates_where_the_image_is_smaller_than_the_pad(shape):
    x = _rng().random(shape).astype(np.float32)
    padded = imaging.pad_to_multiple(x)
    h, w = shape
    assert padded.shape == (h + imaging.pad_amounts(h, w)[0], w + imaging.pad_amounts(h, w)[1])
    assert np.array_equal(padded[:h, :w], x)
    ph, pw = imaging.pad_amounts(h, w)
    if pw >= w:  # replicated columns repeat the last column
        assert np.array_equal(padded[:h, w:], np.repeat(x[:, -1:], pw, axis=1))
    if ph >= h:
        assert np.array_equal(padded[h:, :], np.repeat(padded[h - 1 : h, :], ph, axis=0))


# ---------------------------------------------------------------------------------------------
# reading formats


def test_16bit_grey_png_and_tiff_keep_their_depth(tmp_path):
    values = (_rng().integers(0, 65536, (11, 13))).astype(np.uint16)
    for suffix in (".png", ".tif"):
        path = tmp_path / f"g16{suffix}"
        Image.fromarray(values).save(path)
        image = imaging.read_image(path)
        assert image.bit_depth == 16 and not image.is_color
        np.testing.assert_array_equal(np.rint(image.pixels.astype(np.float64) * 65535), values)
        imaging.write_image(tmp_path / f"out{suffix}", FusedImage(image.pixels, 16))
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"out{suffix}")), values)


def test_16bit_colour_png_and_tiff_are_read_at_full_depth(tmp_path):
    pytest.importorskip("png")
    pytest.importorskip("tifffile")
    values = _rng().integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    fused = FusedImage(values.astype(np.float64) / 65535, 16)
    for suffix in (".png", ".tif"):
        path = tmp_path / f"c16{suffix}"
        imaging.write_image(path, fused)
        assert Image.open(path).mode == "RGB"  # Pillow alone would give 8 bits
        image = imaging.read_image(path)
        assert image.bit_depth == 16 and image.is_color
        assert np.array_equal(np.rint(image.pixels.astype(np.float64) * 65535), values)


def test_16bit_colour_without_the_extra_is_a_clear_error_not_8_bits(tmp_path, monkeypatch):
    pytest.importorskip("png")
    values = _rng().integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    imaging.write_image(tmp_path / "c16.png", FusedImage(values / 65535.0, 16))
    monkeypatch.setitem(sys.modules, "png", None)  # as if pypng were not installed
    with pytest.raises(UpfusionError, match=r"16-bit colour PNG.*pip install 'upfusion\[color16\]'"):
        imaging.read_image(tmp_path / "c16.png")
    with pytest.raises(UpfusionError, match=r"upfusion\[color16\]"):
        imaging.write_image(tmp_path / "again.png", FusedImage(values / 65535.0, 16))
    assert not (tmp_path / "again.png").exists()


def test_palette_rgba_la_and_bilevel_images(tmp_path):
    rgb = _rng().integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    palette = imaging.read_image(tmp_path / "p.png")
    assert palette.is_color and palette.pixels.shape == (8, 10, 3)
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(palette.pixels, expected, atol=1e-7)

    rgba = np.dstack([rgb, np.full((8, 10), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="a.png: alpha channel ignored"):
        image = imaging.read_image(tmp_path / "a.png")
    np.testing.assert_allclose(image.pixels, rgb.astype(np.float32) / 255, atol=1e-7)

    Image.fromarray(rgba[..., [0, 3]]).convert("LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="alpha channel ignored"):
        la = imaging.read_image(tmp_path / "la.png")
    assert not la.is_color

    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bits.png")
    bits = imaging.read_image(tmp_path / "bits.png")
    assert set(np.unique(bits.pixels)) <= {0.0, 1.0} and bits.bit_depth == 8


def test_bmp_jpeg_tiff_round_trips(tmp_path):
    rgb = _rng().integers(0, 256, (9, 13, 3), dtype=np.uint8)
    fused = FusedImage(rgb.astype(np.float64) / 255, 8)
    for suffix in (".bmp", ".tiff", ".png", ".ppm"):
        imaging.write_image(tmp_path / f"x{suffix}", fused)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"x{suffix}")), rgb)
    imaging.write_image(tmp_path / "x.jpg", fused)
    back = np.asarray(Image.open(tmp_path / "x.jpg")).astype(int)
    assert back.shape == rgb.shape and np.abs(back - rgb).mean() < 12  # lossy, quality 95


def test_exif_orientation_turns_camera_photos_upright(tmp_path):
    pixels = _rng().integers(0, 256, (6, 10), dtype=np.uint8)
    pixels[0, 0] = 255  # stored top left: upright it is the top right (orientation 6: rotate 90 clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    turned = imaging.read_image(tmp_path / "turned.png").pixels
    assert turned.shape[:2] == (10, 6)
    assert np.array_equal(np.round(255 * (turned[..., 0] if turned.ndim == 3 else turned)), np.rot90(pixels, k=-1))
    assert imaging.read_image(tmp_path / "plain.png").pixels.shape[:2] == (6, 10)


def test_from_array_conventions():
    u16 = np.array([[0, 65535]], np.uint16)
    image = imaging.from_array(u16)
    assert image.bit_depth == 16 and image.pixels.tolist() == [[0.0, 1.0]]
    assert imaging.from_array(np.zeros((3, 4, 1), np.uint8)).pixels.shape == (3, 4)
    with pytest.raises(UpfusionError, match=r"arr: floating-point images must hold finite values in \[0, 1\]"):
        imaging.from_array(np.full((3, 3), 1.5), "arr")
    with pytest.raises(UpfusionError, match="expected an image"):
        imaging.from_array(np.zeros((2, 3, 3, 3), np.uint8))
    with pytest.raises(UpfusionError, match="unsupported pixel type"):
        imaging.from_array(np.zeros((3, 3), np.int64))


# ---------------------------------------------------------------------------------------------
# bad files


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(UpfusionError, match=r"missing\.png: no such file"):
        imaging.read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UpfusionError, match=r"empty\.png: empty file \(0 bytes\)"):
        imaging.read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    with pytest.raises(UpfusionError, match=r"notes\.png: not an image file"):
        imaging.read_image(tmp_path / "notes.png")
    with pytest.raises(UpfusionError, match="not a file"):
        imaging.read_image(tmp_path)

    rgb = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
        (tmp_path / f"cut{suffix}").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        with pytest.raises(UpfusionError, match=rf"cut\{suffix}: corrupt or truncated image") as info:
            imaging.read_image(tmp_path / f"cut{suffix}")
        assert "\n" not in str(info.value)


def _every_reader():
    """The package's image-file readers: fuse (imaging), train (data), eval and the report grid."""
    from upfusion import data, evaluate, report

    return [imaging.read_image, data.read_image_u8, evaluate.read_gray, report.read_display]


def _truncated_png(path, monkeypatch):
    buffer = io.BytesIO()
    Image.fromarray(_rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _text_as_png(path, monkeypatch):
    path.write_text("these are not pixels\n")


def _over_the_pixel_limit(path, monkeypatch):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels: over twice the limit


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_truncated_png, r"corrupt or truncated image \(OSError: image file is truncated[^\n]*\)"),
        (_text_as_png, r"not an image file \(unknown or unsupported format\)"),
        (_over_the_pixel_limit, r"too many pixels for Pillow to read \(Image size \(1600 pixels\) exceeds[^\n]*\)"),
    ],
    ids=["truncated", "text", "too-many-pixels"],
)
def test_every_reader_names_a_broken_file_in_the_same_words(tmp_path, monkeypatch, make, expected):
    from upfusion.commands.fuse import is_complete

    path = tmp_path / "broken.png"
    make(path, monkeypatch)
    messages = []
    for read in _every_reader():
        with pytest.raises(UpfusionError) as info:
            read(path)
        messages.append(str(info.value))
    assert len(set(messages)) == 1, messages
    assert re.fullmatch(re.escape(str(path)) + ": " + expected, messages[0]), messages[0]
    assert not is_complete(path)  # fuse's check of an existing output only asks, it never raises


def test_readers_without_their_own_checks_name_a_missing_file(tmp_path):
    missing = tmp_path / "missing.png"
    for read in _every_reader()[1:]:  # read_image checks first: "no such file"
        with pytest.raises(UpfusionError, match=r"missing\.png: cannot read the file \(No such file or directory\)$"):
            read(missing)


def test_write_is_atomic_and_a_failed_encode_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")
    with pytest.raises(UpfusionError, match="cannot write '.xyz' files"):
        imaging.write_image(tmp_path / "out.xyz", FusedImage(np.zeros((2, 2), np.float32), 8))
    imaging.write_image(target, FusedImage(np.full((3, 5), 0.5, np.float32), 8))
    assert np.asarray(Image.open(target)).tolist() == [[128] * 5] * 3
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary file left behind


def test_image_over_pillows_pixel_limit_is_not_called_corrupt(tmp_path):
    huge = png_claiming_size(tmp_path / "huge.png", 20000, 10000)
    with pytest.raises(UpfusionError, match=r"huge.png: too many pixels for Pillow to read \(Image size \(200000000"):
        imaging.read_image(huge)


def test_write_to_a_name_at_the_file_systems_length_limit(tmp_path):
    # 255 bytes is the longest name; the temporary file beside it must fit that limit too
    fused = FusedImage(np.zeros((4, 5), np.float32), 8)
    for name in ("x" * 251 + ".png", "é" * 125 + "x.png"):  # 255 bytes, also in two-byte characters
        imaging.write_image(tmp_path / name, fused)
        assert Image.open(tmp_path / name).size == (5, 4)
    assert sorted(len(p.name.encode()) for p in tmp_path.iterdir()) == [255, 255]


def test_resize_like_changes_only_the_size():
    image = imaging.from_array(_rng().integers(0, 256, (10, 12, 3), dtype=np.uint8))
    resized = imaging.resize_like(image, 20, 24)
    assert resized.pixels.shape == (20, 24, 3) and resized.bit_depth == 8
    assert resized.pixels.min() >= 0 and resized.pixels.max() <= 1
    assert abs(resized.pixels.mean() - image.pixels.mean()) < 0.02


def test_source_image_is_a_plain_record():
    image = SourceImage(np.zeros((2, 3), np.float32), 8, "x")
    assert (image.height, image.width, image.is_color) == (2, 3, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image.luma() is image.pixels


def test_big_endian_arrays_are_read_like_native_ones():
    values = np.array([[0, 1000, 65535]], np.uint16)
    image = imaging.from_array(values.astype(">u2"))
    assert image.bit_depth == 16
    assert np.array_equal(image.pixels, imaging.from_array(values).pixels)
    floats = imaging.from_array(np.array([[0.25, 0.5]], ">f8"))
    assert floats.pixels.tolist() == [[0.25, 0.5]]


def test_a_broken_or_closed_pil_image_is_named_not_a_pillow_traceback(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with Image.open(tmp_path / "cut.png") as cut:
        with pytest.raises(UpfusionError, match=r"cut\.png: corrupt, truncated or closed image \(OSError: image file"):
            imaging.from_pil(cut, cut.filename)
    closed = Image.open(io.BytesIO(buffer.getvalue()))
    closed.close()
    with pytest.raises(
        UpfusionError, match=r"^b: corrupt, truncated or closed image \(ValueError: Operation on closed"
    ):
        imaging.from_pil(closed, "b")


def test_bool_arrays_are_bilevel_images_like_mode_1():
    mask = np.array([[True, False, True]])
    image = imaging.from_array(mask)
    assert image.bit_depth == 8 and image.pixels.tolist() == [[1.0, 0.0, 1.0]]
    bilevel = Image.fromarray(mask)  # mode "1"; np.asarray of it is bool again
    assert np.asarray(bilevel).dtype == np.bool_
    assert np.array_equal(imaging.from_array(np.asarray(bilevel)).pixels, imaging.from_pil(bilevel).pixels)
