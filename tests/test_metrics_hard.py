"""Q_P, Q_TE, Q_CB, Q_Y, Q_G and VIFF against the MATLAB/Octave reference values and their own definitions."""

from __future__ import annotations

import json
import math
from functools import cache

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import SHARED
from upfusion.metrics._hard_common import normalize1
from upfusion.metrics.feature import q_g, q_p, zhao_scores
from upfusion.metrics.phase_congruency import noise_thresholds, phase_congruency
from upfusion.metrics.structural import q_cb, q_y, yang_window
from upfusion.metrics.tsallis import Q_TSALLIS, q_te
from upfusion.metrics.viff import viff

REF_DIR = SHARED / "reference" / "metrics"  # ../shared of the repo
METRICS = {"Q_P": q_p, "Q_TE": q_te, "Q_CB": q_cb, "Q_Y": q_y, "Q_G": q_g, "VIFF": viff}

needs_reference = pytest.mark.skipif(not REF_DIR.is_dir(), reason="shared reference material not available")


@cache
def _reference() -> dict:
    return json.loads((REF_DIR / "reference.json").read_text())


@cache
def _triple(triple_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entry = next(t for t in _reference()["triples"] if t["id"] == triple_id)
    return tuple(np.asarray(Image.open(REF_DIR / entry[k])) for k in "ABF")


def _tolerance(metric: str, ref: float) -> float:
    # as stated in reference.json: Q_P 1e-4 absolute, Q_CB 2e-3 absolute, others 1e-6 relative
    # (1e-6 absolute below 1)
    if metric == "Q_P":
        return 1e-4
    if metric == "Q_CB":
        return 2e-3
    return 1e-6 * max(1.0, abs(ref))


def _reference_cases() -> list[tuple[str, str]]:
    if not REF_DIR.is_dir():
        return []
    return [(m, t["id"]) for m in METRICS for t in _reference()["triples"]]


@needs_reference
@pytest.mark.parametrize(("metric", "triple_id"), _reference_cases())
def test_matches_reference(metric: str, triple_id: str) -> None:
    entry = next(t for t in _reference()["triples"] if t["id"] == triple_id)
    ref = float(entry["values"][metric])  # "NaN" parses to nan
    value = METRICS[metric](*_triple(triple_id))
    if math.isnan(ref):
        assert math.isnan(value)
    else:
        assert abs(value - ref) <= _tolerance(metric, ref), (value, ref)


@needs_reference
@pytest.mark.parametrize("triple_id", ["t01", "t04"])
def test_q_p_intermediates(triple_id: str) -> None:
    inter = json.loads((REF_DIR / "qp_intermediates.json").read_text())[triple_id]
    images = dict(zip("ABF", _triple(triple_id), strict=True))
    for key, image in images.items():
        pc, big_m, small_m = phase_congruency(image)
        expected = inter[key]
        assert pc.mean() == pytest.approx(expected["mean_PC"], abs=1e-12)
        assert big_m.mean() == pytest.approx(expected["mean_M"], abs=1e-12)
        assert small_m.mean() == pytest.approx(expected["mean_m"], abs=1e-12)
        np.testing.assert_allclose(noise_thresholds(image), expected["T"], rtol=1e-12)
        if "mask_count" in expected:
            assert int((pc > 0.1).sum()) == expected["mask_count"]
    scores = zhao_scores(images["A"], images["B"], images["F"])
    np.testing.assert_allclose(scores, [inter["P_PC"], inter["P_M"], inter["P_m"]], atol=1e-10)


def _smooth_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Natural-looking uint8 test image: smoothed noise plus a ramp, stretched to 0..255."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) + np.linspace(0, 0.05, shape[1])[None, :]
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return np.round(x).astype(np.uint8)


@pytest.fixture(scope="module")
def odd_triple() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = _smooth_image((97, 131), 1)
    b = _smooth_image((97, 131), 2)
    f = np.round((a.astype(float) + b) / 2).astype(np.uint8)
    return a, b, f


@pytest.mark.parametrize("metric", list(METRICS))
def test_odd_non_square_input_is_finite(metric: str, odd_triple) -> None:
    value = METRICS[metric](*odd_triple)
    assert math.isfinite(value)


@pytest.mark.parametrize("metric", list(METRICS))
def test_dtype_does_not_matter(metric: str, odd_triple) -> None:
    as_float = tuple(x.astype(np.float64) for x in odd_triple)
    assert METRICS[metric](*odd_triple) == METRICS[metric](*as_float)


@pytest.mark.parametrize("metric", ["Q_P", "Q_TE", "Q_CB", "Q_Y", "Q_G"])
def test_symmetric_in_the_sources(metric: str, odd_triple) -> None:
    # Q_TE and Q_CB are symmetric by construction; Q_P, Q_Y and Q_G up to ties and the last bits
    a, b, f = odd_triple
    assert METRICS[metric](a, b, f) == pytest.approx(METRICS[metric](b, a, f), rel=1e-9)


def test_phase_congruency_range_and_moments(odd_triple) -> None:
    pc, big_m, small_m = phase_congruency(odd_triple[0])
    assert pc.shape == odd_triple[0].shape
    assert np.all(pc >= 0) and np.all(pc <= 1)
    # m = M - D with D > 0 (eps is inside D)
    assert np.all(big_m > small_m)


def test_phase_congruency_of_black_image() -> None:
    # all responses are exactly 0: PC = 0 / (0 + eps) = 0, but PC_o = 0/0 (no eps there), so the moments
    # are NaN, as in the original
    pc, big_m, small_m = phase_congruency(np.zeros((32, 40)))
    assert np.all(pc == 0)
    assert np.isnan(big_m).all() and np.isnan(small_m).all()
    assert math.isnan(q_p(*(np.zeros((32, 40)),) * 3))


def test_q_g_identical_images() -> None:
    # G = 1 and A = 1 everywhere, so each pixel scores sigmoid(10 * 0.5) * sigmoid(20 * 0.25)
    x = _smooth_image((40, 50), 3)
    expected = 1.0 / (1.0 + math.exp(-5.0)) ** 2
    assert q_g(x, x, x) == pytest.approx(expected, rel=1e-12)


def test_q_cb_identical_images_is_one() -> None:
    # C'_A = C'_F gives Q_AF = 1 (equal values take the second ratio, 1), and lambda_A + lambda_B = 1
    x = _smooth_image((50, 70), 14)
    assert q_cb(x, x, x) == pytest.approx(1.0, rel=1e-12)


def test_q_y_identical_images_is_one() -> None:
    # SSIM(X, X) = 1 exactly, lambda = 1/2; no flat window, so no NaN
    x = np.random.default_rng(4).integers(0, 256, size=(40, 50))
    assert q_y(x, x, x) == 1.0


def test_q_y_nan_where_both_sources_flat() -> None:
    a = _smooth_image((40, 50), 5)
    b = _smooth_image((40, 50), 6)
    a[:10, :10] = 0
    b[:10, :10] = 0
    # lambda = 0/0 in the common black corner, which the 0/1 blend propagates
    assert math.isnan(q_y(a, b, a))


def _q_y_direct(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_Y straight from the definition: 2-D direct-summation correlation for every local moment."""
    w = yang_window()

    def local(x: np.ndarray) -> np.ndarray:
        return ndimage.correlate(x, w, mode="constant")[3:-3, 3:-3]

    def ssim(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mx, my = local(x), local(y)
        vx, vy, cxy = local(x * x) - mx * mx, local(y * y) - my * my, local(x * y) - mx * my
        c = 2e-16
        return ((2 * mx * my + c) * (2 * cxy + c)) / ((mx * mx + my * my + c) * (vx + vy + c)), vx, vy

    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    with np.errstate(invalid="ignore", divide="ignore"):
        s_ab, va, vb = ssim(a, b)
        s_af, s_bf = ssim(a, f)[0], ssim(b, f)[0]
        beta = (s_ab >= 0.75).astype(float)
        lam = va / (va + vb)
    return float(np.mean(beta * (lam * s_af + (1 - lam) * s_bf) + (1 - beta) * np.fmax(s_af, s_bf)))


def test_q_y_matches_direct_summation_on_flat_patches() -> None:
    # flat windows (bright and mid-grey, partly shared by the sources) are where the last bits of the
    # local sums decide SSIM; the fast path recomputes them exactly
    a = _smooth_image((60, 80), 12)
    b = _smooth_image((60, 80), 13)
    a[5:20, 5:30] = 255
    b[10:25, 10:40] = 255
    a[30:50, 40:70] = 37
    b[35:55, 45:75] = 191
    f = np.maximum(a, b)
    f[32:52, 42:72] = 37
    for triple in [(a, b, f), (a, b, a), (b, a, np.round((a + b.astype(float)) / 2))]:
        assert q_y(*triple) == pytest.approx(_q_y_direct(*triple), rel=1e-10)


def test_q_y_too_small_is_minus_inf() -> None:
    x = _smooth_image((10, 30), 7)
    assert q_y(x, x, x) == float("-inf")


def test_yang_window_sum_is_sequential() -> None:
    w = yang_window()
    a = np.arange(-3, 4)
    e = np.exp(-(a[:, None] ** 2 + a[None, :] ** 2) / 4.5)
    np.testing.assert_array_equal(w, e / 13.648369352002605)


def test_q_te_identical_images_closed_form() -> None:
    # I_q(x, x) = (1 - sum_u h_u^(2-q)) / (1 - q); Q_TE = 2 I / (2 H^q + I)
    x = _smooth_image((60, 70), 8)
    levels = normalize1(x.astype(np.float64)).astype(int)
    h = np.bincount(levels.ravel(), minlength=256) / levels.size
    h = h[h > 0]
    q = Q_TSALLIS
    mi = (1 - np.sum(h ** (2 - q))) / (1 - q)
    entropy = -np.sum(h * np.log2(h))
    assert q_te(x, x, x) == pytest.approx(2 * mi / (2 * entropy**q + mi), rel=1e-12)


def test_normalize1_rounds_half_away_from_zero() -> None:
    # 3 / 170 * 255 = 4.5 exactly: MATLAB gives 5 where numpy's rint gives 4
    out = normalize1(np.array([[0.0, 3.0, 170.0]]))
    np.testing.assert_array_equal(out, [[0.0, 5.0, 255.0]])


def test_viff_identical_images_is_one() -> None:
    # g = 1 and sv^2 is clamped to 1e-10, so VID = VIND at every scale and VIFF = sum(p) = 1
    x = _smooth_image((80, 90), 9)
    assert viff(x, x, x) == pytest.approx(1.0, rel=1e-9)


def test_viff_flat_second_source_gives_one() -> None:
    # a flat B has g_B = 0, so the tie rule picks B everywhere; its VID = VIND = 0, leaving only the
    # 1e-7 per pixel: every F_s = 1 and VIFF = 1 whatever F is
    a = _smooth_image((80, 90), 10)
    f = _smooth_image((80, 90), 11)
    assert viff(a, np.zeros_like(a), f) == pytest.approx(1.0, rel=1e-12)
