"""The 14 metrics written in this package's own modules: MATLAB reference values and behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from upfusion import metrics
from upfusion.metrics import METRICS, PAPER_METRICS, compute
from upfusion.metrics._common import normalize1, round_half_away
from upfusion.metrics.ssim import ssim_map

REFERENCE = SHARED / "reference" / "metrics"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/metrics missing")

# The metrics implemented in information/statistics/ssim/vif/qabf (the other six live elsewhere).
OWN = "Q_NCIE VIF SSIM Qabf SSIM_L255 Q_MI EN SD SF AG MI SCD CC PSNR".split()
FUNCTIONS = {
    "Q_NCIE": metrics.q_ncie,
    "VIF": metrics.vif,
    "SSIM": metrics.ssim,
    "Qabf": metrics.qabf,
    "SSIM_L255": metrics.ssim_l255,
    "Q_MI": metrics.q_mi,
    "EN": metrics.en,
    "SD": metrics.sd,
    "SF": metrics.sf,
    "AG": metrics.ag,
    "MI": metrics.mi,
    "SCD": metrics.scd,
    "CC": metrics.cc,
    "PSNR": metrics.psnr,
}


def _reference() -> dict:
    return json.loads((REFERENCE / "reference.json").read_text())


def _triple(entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(Image.open(REFERENCE / entry[k])) for k in "ABF")


def _reference_cases() -> list[tuple[str, str]]:
    if not (REFERENCE / "reference.json").exists():
        return []
    return [(t["id"], name) for t in _reference()["triples"] for name in OWN]


@pytest.fixture(scope="module")
def triples() -> dict[str, tuple[dict, tuple[np.ndarray, ...]]]:
    return {t["id"]: (t, _triple(t)) for t in _reference()["triples"]}


@pytest.fixture(scope="module")
def natural() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real 640x480 triple cut to an odd, non-square 201x157 patch."""
    entry = next(t for t in _reference()["triples"] if t["id"] == "t04")
    a, b, f = _triple(entry)
    return a[:157, :201], b[:157, :201], f[:157, :201]


def _close(value: float, ref: float) -> bool:
    # reference.json: "agree to 1e-6 relative (1e-6 absolute below 1)"
    return abs(value - ref) <= 1e-6 * max(1.0, abs(ref))


@pytest.mark.parametrize(("triple_id", "name"), _reference_cases())
def test_matches_matlab_reference(triples, triple_id: str, name: str) -> None:
    entry, (a, b, f) = triples[triple_id]
    ref = entry["values"][name]
    value = FUNCTIONS[name](a, b, f)
    if ref == "NaN":
        assert math.isnan(value)
    else:
        assert _close(value, ref), f"{name} on {triple_id}: {value!r} vs reference {ref!r}"


def test_reference_covers_nan_cases(triples) -> None:
    # SCD is NaN on t09 (F = A): the comparison above must have seen a NaN case.
    entry, (a, b, f) = triples["t09"]
    assert entry["values"]["SCD"] == "NaN"
    assert np.array_equal(a, f)


def test_compute_shares_work_without_changing_values(triples) -> None:
    entry, (a, b, f) = triples["t04"]
    together = compute(a, b, f, OWN)
    assert list(together) == OWN
    for name in OWN:
        alone = FUNCTIONS[name](a, b, f)
        assert together[name] == pytest.approx(alone, rel=1e-12, abs=1e-15), name


def test_registry_order_and_paper_set() -> None:
    assert list(METRICS) == [
        "Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf", "SSIM_L255", "VIFF", "Q_G", "Q_Y", "Q_CB",
        "Q_MI", "Q_TE", "EN", "SD", "SF", "AG", "MI", "SCD", "CC", "PSNR",
    ]  # fmt: skip
    assert PAPER_METRICS == ("Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf")
    assert metrics.metric_names("paper") == list(PAPER_METRICS)
    assert metrics.metric_names("all") == list(METRICS)
    assert metrics.metric_names("vif, ssim,VIF") == ["VIF", "SSIM"]
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        metrics.metric_names("VIF,nope")


def test_every_registered_metric_resolves_and_documents_itself() -> None:
    for name, fn in METRICS.items():
        real = metrics.resolve(fn)
        assert callable(real), name
        assert metrics.convention(name), name


@pytest.mark.parametrize("name", OWN)
def test_docstring_and_type_hints(name: str) -> None:
    fn = FUNCTIONS[name]
    assert fn.__doc__ and len(fn.__doc__.split()) > 8
    assert fn.__annotations__.get("return") in (float, "float")


def test_identical_fused_and_source(natural) -> None:
    a, b, _ = natural
    # SSIM(X, X) = 1 exactly for both L, so the mean of two is (1 + SSIM(b, a)) / 2.
    for fn in (metrics.ssim, metrics.ssim_l255):
        assert fn(a, a, a) == 1.0
        assert fn(a, b, a) == pytest.approx((1.0 + fn(b, b, a)) / 2, rel=1e-12)
    assert metrics.vif(a, a, a) == pytest.approx(1.0, rel=1e-6)
    assert metrics.cc(a, b, a) == pytest.approx((1.0 + metrics.cc(b, b, a)) / 2, rel=1e-12)
    # I(A;A) = H(A), and Q_MI(A, A, A) = 2 (I/(H+H) = 1/2 per source).
    assert metrics.mi(a, a, a) == pytest.approx(2 * metrics.en(a, a, a), rel=1e-12)
    assert metrics.q_mi(a, a, a) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(metrics.scd(a, b, a))
    assert metrics.psnr(a, a, a) == math.inf


def test_qabf_equal_strength_quirk() -> None:
    # Where g_A == g_F the original uses G = g_F instead of 1: with F = A = B every edge pixel has
    # G = g (>= 1), so Q = 0.9994/(1+e^{-15(g-0.5)}) * 0.9879/(1+e^{-22*0.2}), not 1.
    x = np.zeros((9, 9))
    x[:, 4:] = 10.0  # a vertical step: |sx| = 40 in the two columns next to it
    q_a = 0.9879 / (1 + math.exp(-22 * 0.2))
    assert metrics.qabf(x, x, x) == pytest.approx(0.9994 / (1 + math.exp(-15 * (40 - 0.5))) * q_a, rel=1e-12)
    assert metrics.qabf(x, x, x) < 0.98


def test_statistics_by_hand() -> None:
    f = np.tile(np.arange(6.0), (4, 1))  # ramp along columns, 4x6
    zeros = np.zeros_like(f)
    pair = np.zeros((1, 2))
    assert metrics.sd(pair, pair, np.array([[0.0, 2.0]])) == 1.0  # population SD (N, not N-1)
    assert metrics.sf(zeros, zeros, f) == pytest.approx(1.0)  # RF = 0, CF = 1
    # gradient: gx = 1 everywhere, gy = 0 -> sqrt(1/2) per pixel, sum over HW, divided by (H-1)(W-1)
    assert metrics.ag(zeros, zeros, f) == pytest.approx(24 * math.sqrt(0.5) / 15)
    assert metrics.psnr(zeros, zeros + 2.0, zeros + 1.0) == pytest.approx(10 * math.log10(255.0**2))
    assert metrics.en(zeros, zeros, zeros) == 0.0
    levels = np.arange(256).reshape(16, 16)
    assert metrics.en(levels, levels, levels) == pytest.approx(8.0)


def test_matlab_rounding_and_normalize1() -> None:
    assert list(round_half_away(np.array([0.5, 1.5, 2.5, -2.5, 0.49999999999999994]))) == [1, 2, 3, -3, 0]
    # max - min = 170 gives exact halves: 1/170*255 = 1.5 -> 2 (numpy's round would give 2, 3 -> 4 vs 5)
    assert list(normalize1(np.array([[0.0, 1.0, 3.0, 170.0]])).ravel()) == [0, 2, 5, 255]
    assert normalize1(np.zeros((2, 2))).sum() == 0  # all-zero image is left unchanged
    assert normalize1(np.full((2, 2), 7.0)) is None  # constant non-zero: undefined


def test_constant_image_gives_nan_not_error(natural) -> None:
    a, b, _ = natural
    flat = np.full_like(a, 128)
    # normalize1 of a constant non-zero image is 0/0; corr2 with a constant image is 0/0.
    values = compute(a, b, flat, ["Q_NCIE", "Q_MI", "CC"])
    assert all(math.isnan(v) for v in values.values())
    assert math.isfinite(metrics.scd(a, b, flat))  # F - A is not constant


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (17, 17), (8, 11)])
def test_odd_and_small_sizes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
    f = ((a.astype(int) + b) // 2).astype(np.uint8)
    values = compute(a, b, f, OWN)
    for name, value in values.items():
        if name == "VIF" and min(shape) < 17:
            continue  # no 'valid' position for the 17x17 window: 0/0 as in the original
        assert math.isfinite(value), (name, shape)


@pytest.mark.parametrize("shape", [(1, 6), (6, 1), (1, 1)])
def test_one_row_or_column_gives_nan_gradients_not_an_error(shape: tuple[int, int]) -> None:
    f = np.arange(float(shape[0] * shape[1])).reshape(shape)
    assert math.isnan(metrics.ag(f, f, f)) and math.isnan(metrics.sf(f, f, f))
    assert math.isnan(compute(f, f, f, ["AG"])["AG"])
    assert compute(f, f, f, ["EN"])["EN"] >= 0.0  # the others still work


def test_dtypes_give_same_values(natural) -> None:
    a, b, f = natural
    ref = compute(a, b, f, OWN)
    for dtype in (np.float64, np.float32, np.int16, np.int64):
        other = compute(a.astype(dtype), b.astype(dtype), f.astype(dtype), OWN)
        for name in OWN:
            assert other[name] == pytest.approx(ref[name], rel=1e-12, nan_ok=True), (dtype, name)


def test_bad_inputs_raise() -> None:
    x = np.zeros((8, 8))
    with pytest.raises(ValueError, match="2-D"):
        metrics.ssim(np.zeros((8, 8, 3)), x, x)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.ssim(x, x, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.sd(x, x, np.full((8, 8), np.nan))


def test_compat_cddfuse_conventions(natural) -> None:
    a, b, f = natural
    names = ["VIF", "SSIM", "MI", "AG", "PSNR", "EN", "Qabf"]
    base = compute(a, b, f, names)
    compat = compute(a, b, f, names, compat="cddfuse")
    assert list(compat) == "VIF_cddfuse SSIM_cddfuse MI_cddfuse AG_cddfuse PSNR_cddfuse EN Qabf".split()
    h, w = f.shape
    assert compat["VIF_cddfuse"] == pytest.approx(2 * base["VIF"], rel=1e-12)
    assert compat["MI_cddfuse"] == pytest.approx(base["MI"] * math.log(2), rel=1e-12)
    assert compat["AG_cddfuse"] == pytest.approx(base["AG"] * (h - 1) * (w - 1) / (h * w), rel=1e-12)
    peak = float(f.max())
    assert compat["PSNR_cddfuse"] == pytest.approx(base["PSNR"] + 20 * math.log10(peak / 255), rel=1e-12)
    # legacy skimage SSIM summed: within a few percent of twice the MATLAB SSIM (DEFINITIONS.md)
    assert compat["SSIM_cddfuse"] == pytest.approx(2 * base["SSIM"], rel=0.03)
    assert compat["EN"] == base["EN"] and compat["Qabf"] == base["Qabf"]
    with pytest.raises(ValueError, match="compat"):
        compute(a, b, f, names, compat="matlab")


def test_ssim_map_is_full_size(natural) -> None:
    from upfusion.metrics._common import Triple

    a, b, f = natural
    assert ssim_map(Triple(a, b, f), "a", 1.0).shape == a.shape


def test_threads_do_not_change_values(natural) -> None:
    a, b, f = natural
    names = ["Q_P", "SSIM", "EN", "Qabf"]
    assert compute(a, b, f, names, threads=2) == compute(a, b, f, names)
