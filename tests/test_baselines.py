"""Classic fusion baselines: exact rules, perfect reconstruction, odd sizes, and behaviour on real pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import SHARED
from upfusion import baselines
from upfusion.baselines import BASELINES, guided_filter, laplacian_pyramid, reconstruct_laplacian
from upfusion.errors import UpfusionError

MSRS = SHARED / "data" / "msrs" / "test"
SHAPES = [(9, 13), (1, 1), (2, 3), (1, 7), (17, 4), (31, 33), (64, 48)]


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


def test_registry_names():
    assert list(BASELINES) == ["average", "maximum", "laplacian", "dwt", "gff"]
    assert all(callable(f) for f in BASELINES.values())


def test_average_is_exact_mean():
    a, b = rand((37, 21), 1), rand((37, 21), 2)
    np.testing.assert_array_equal(baselines.average(a, b), (a + b) / 2)


def test_maximum_is_pointwise_max():
    a, b = rand((37, 21), 1), rand((37, 21), 2)
    out = baselines.maximum(a, b)
    np.testing.assert_array_equal(out, np.maximum(a, b))
    assert np.all((out == a) | (out == b))


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_dtype_and_identical_inputs(name, shape):
    if name == "dwt":
        pytest.importorskip("pywt")
    x = rand(shape, 3)
    out = BASELINES[name](x, x)
    assert out.shape == shape and out.dtype == np.float64
    # Fusing an image with itself gives it back.
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(BASELINES))
def test_accepts_integer_arrays_and_lists(name):
    if name == "dwt":
        pytest.importorskip("pywt")
    a = [[0, 1, 0], [1, 1, 0]]
    out = BASELINES[name](np.array(a, dtype=np.uint8), a)
    assert out.dtype == np.float64 and out.shape == (2, 3)


@pytest.mark.parametrize("name", list(BASELINES))
def test_bad_shapes_raise(name):
    with pytest.raises(ValueError, match="differ in size"):
        BASELINES[name](np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="2-D"):
        BASELINES[name](np.zeros((4, 5, 3)), np.zeros((4, 5, 3)))


# ---------------------------------------------------------------------------- Laplacian pyramid


@pytest.mark.parametrize("shape", SHAPES + [(480, 640)])
def test_pyramid_reconstructs_exactly(shape):
    x = rand(shape, 4)
    pyramid = laplacian_pyramid(x)
    assert len(pyramid) - 1 == min(4, int(np.floor(np.log2(min(shape)))))
    np.testing.assert_allclose(reconstruct_laplacian(pyramid), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(9, 13), (17, 4), (31, 33), (64, 48)])
def test_pyramid_of_constant_has_no_details(shape):
    pyramid = laplacian_pyramid(np.full(shape, 0.3))
    for detail in pyramid[:-1]:
        np.testing.assert_allclose(detail, 0.0, atol=1e-15)
    np.testing.assert_allclose(pyramid[-1], 0.3, atol=1e-15)


def test_laplacian_keeps_all_details_of_x_against_a_black_image():
    x = rand((45, 61), 5)
    pyramid = laplacian_pyramid(x)
    # Max-abs picks every detail of x, the averaged base is half of x's: x minus half its base.
    base_only = reconstruct_laplacian([np.zeros_like(d) for d in pyramid[:-1]] + [pyramid[-1]])
    expected = x - 0.5 * base_only
    zero = np.zeros_like(x)
    np.testing.assert_allclose(baselines.laplacian(x, zero), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(baselines.laplacian(zero, x), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- DWT


@pytest.mark.parametrize("shape", [(45, 61), (64, 48), (9, 13)])
def test_dwt_keeps_all_details_of_x_against_a_black_image(shape):
    pywt = pytest.importorskip("pywt")
    x = rand(shape, 6)
    wavelet = baselines.DWT_WAVELET
    n = min(baselines.DWT_LEVELS, pywt.dwt_max_level(min(shape), pywt.Wavelet(wavelet).dec_len))
    coeffs = pywt.wavedec2(x, wavelet, mode="symmetric", level=n)
    approx_only = [coeffs[0]] + [tuple(np.zeros_like(d) for d in level) for level in coeffs[1:]]
    expected = x - 0.5 * pywt.waverec2(approx_only, wavelet, mode="symmetric")[: shape[0], : shape[1]]
    zero = np.zeros_like(x)
    np.testing.assert_allclose(baselines.dwt(x, zero), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(baselines.dwt(zero, x), expected, rtol=0, atol=1e-12)


def test_dwt_without_pywavelets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywt", None)  # makes "import pywt" fail
    with pytest.raises(UpfusionError, match=r"upfusion\[wavelets\]"):
        baselines.dwt(np.zeros((8, 8)), np.zeros((8, 8)))


# ---------------------------------------------------------------------------- guided filter / GFF


def test_guided_filter_keeps_constants_and_passes_its_guide():
    guide = rand((40, 50), 7)
    np.testing.assert_allclose(guided_filter(guide, np.full_like(guide, 0.7), 3, 1e-3), 0.7, atol=1e-9)
    # With a tiny eps the guide filtered by itself comes back almost unchanged (edge preserving).
    np.testing.assert_allclose(guided_filter(guide, guide, 3, 1e-8), guide, atol=1e-4)


def naive_guided_filter(guide, src, r, eps):
    """He et al.'s guided filter written out pixel by pixel, windows clipped to the image."""
    h, w = guide.shape

    def window(i, j):
        return slice(max(0, i - r), i + r + 1), slice(max(0, j - r), j + r + 1)

    slope, offset = np.zeros((h, w)), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            g, p = guide[window(i, j)], src[window(i, j)]
            slope[i, j] = ((g * p).mean() - g.mean() * p.mean()) / (g.var() + eps)
            offset[i, j] = p.mean() - slope[i, j] * g.mean()
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = slope[window(i, j)].mean() * guide[i, j] + offset[window(i, j)].mean()
    return out


@pytest.mark.parametrize("radius, eps", [(1, 1e-6), (2, 0.01), (4, 0.3)])
def test_guided_filter_matches_its_definition(radius, eps):
    guide, src = rand((11, 14), 8), (rand((11, 14), 9) > 0.5).astype(np.float64)
    expected = naive_guided_filter(guide, src, radius, eps)
    np.testing.assert_allclose(guided_filter(guide, src, radius, eps), expected, rtol=0, atol=1e-9)


def test_gff_with_a_black_image_keeps_x():
    # The black image has zero saliency, so x wins everywhere (ties go to the first source).
    x = rand((50, 70), 10)
    np.testing.assert_allclose(baselines.gff(x, np.zeros_like(x)), x, atol=1e-9)


@pytest.mark.parametrize("name", ["laplacian", "dwt", "gff"])
def test_multiscale_methods_take_each_region_from_the_textured_source(name):
    if name == "dwt":
        pytest.importorskip("pywt")
    h, w, margin = 96, 192, 24
    rng = np.random.default_rng(11)
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.0)
    texture = 0.5 + 0.15 * texture / texture.std()
    a, b = np.full((h, w), 0.5), np.full((h, w), 0.5)
    a[:, : w // 2] = texture[:, : w // 2]  # a is textured on the left, flat on the right
    b[:, w // 2 :] = texture[:, w // 2 :]  # b the other way round

    def rel_rms(fused):
        left = fused[margin:-margin, margin : w // 2 - margin] - a[margin:-margin, margin : w // 2 - margin]
        right = fused[margin:-margin, w // 2 + margin : -margin] - b[margin:-margin, w // 2 + margin : -margin]
        return np.sqrt(np.mean(np.concatenate([left.ravel(), right.ravel()]) ** 2)) / 0.15

    assert rel_rms(baselines.average(a, b)) > 0.45  # the average halves the texture
    assert rel_rms(BASELINES[name](a, b)) < 0.2


# ---------------------------------------------------------------------------- real pairs


def read_luma(path: Path) -> np.ndarray:
    from upfusion.evaluate import read_gray

    return read_gray(path).astype(np.float64) / 255


def gradient_energy(x: np.ndarray) -> float:
    return float(np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)).mean())


@pytest.mark.skipif(not MSRS.is_dir(), reason="shared MSRS test pairs not available")
@pytest.mark.parametrize("stem", ["00004N", "01566D"])
def test_real_msrs_pair(stem):
    pytest.importorskip("pywt")
    from upfusion.metrics.qabf import qabf

    a, b = read_luma(MSRS / "vi" / f"{stem}.png"), read_luma(MSRS / "ir" / f"{stem}.png")
    outputs = {name: f(a, b) for name, f in BASELINES.items()}
    for name, out in outputs.items():
        assert out.shape == a.shape and np.isfinite(out).all(), name
        # Not clamped, but only a few pixels overshoot, and not by much.
        assert np.mean((out < 0) | (out > 1)) < 0.02 and -0.3 < out.min() and out.max() < 1.3, name

    average_energy = gradient_energy(outputs["average"])
    assert average_energy < max(gradient_energy(a), gradient_energy(b))  # averaging loses contrast
    for name in ("laplacian", "dwt", "gff"):
        # The multi-scale methods keep the stronger details of both sources.
        assert gradient_energy(outputs[name]) > 0.95 * max(gradient_energy(a), gradient_energy(b)), name

    def score(out):
        return qabf(a * 255, b * 255, np.clip(np.rint(out * 255), 0, 255))

    average_qabf = score(outputs["average"])
    for name in ("maximum", "laplacian", "dwt", "gff"):
        assert score(outputs[name]) > average_qabf + 0.1, name  # more edge information transferred
