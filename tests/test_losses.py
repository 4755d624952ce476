"""The training losses against independent numpy/scipy computations of spec section 8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from upfusion.losses import (
    LOSSES,
    TERM_WEIGHTS,
    black_margin_term,
    edge_term,
    get_loss,
    paper_loss,
    parse_term_weights,
    reference_loss,
    reported_terms,
    sobel_gradient,
    ssim,
    with_black_margin,
)

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None]


def _np_grad(x: np.ndarray) -> np.ndarray:
    # cross-correlation with zero padding, as the reference's conv2d
    gx = ndimage.correlate(x, SOBEL_X, mode="constant", cval=0.0)
    gy = ndimage.correlate(x, SOBEL_Y, mode="constant", cval=0.0)
    return np.abs(gx) + np.abs(gy)


def _np_ssim(x: np.ndarray, y: np.ndarray) -> float:
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)

    def blur(t):
        return ndimage.correlate(t, w, mode="constant", cval=0.0)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    a = ndimage.gaussian_filter(rng.random((40, 48)), 1.5)
    b = ndimage.gaussian_filter(rng.random((40, 48)), 3.0)
    f = 0.5 * a + 0.5 * b + 0.05 * rng.standard_normal((40, 48))
    return a, b, f


def test_sobel_gradient_of_a_ramp():
    x = np.tile(np.arange(16, dtype=np.float64) * 0.01, (12, 1))
    g = sobel_gradient(_t(x))[0, 0].numpy()
    # interior: |Sobel_x| = (1 + 2 + 1) * 2 * slope, Sobel_y = 0
    np.testing.assert_allclose(g[1:-1, 1:-1], 0.08, atol=1e-6)
    np.testing.assert_allclose(g, _np_grad(x), atol=1e-6)  # borders: zero padding


def test_ssim_matches_scipy_and_is_one_for_equal_images(images):
    a, b, f = images
    assert ssim(_t(a), _t(f)).item() == pytest.approx(_np_ssim(a, f), abs=1e-5)
    assert ssim(_t(b), _t(f)).item() == pytest.approx(_np_ssim(b, f), abs=1e-5)
    assert ssim(_t(a), _t(a)).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(_t(a), _t(b)).item() < 0.9


def test_paper_loss_value(images):
    a, b, f = images
    total, parts = paper_loss(_t(a), _t(b), _t(f))
    grad = np.abs(_np_grad(f) - np.maximum(_np_grad(a), _np_grad(b))).mean()
    expected = grad + np.abs(f - a).mean() + np.abs(f - b).mean()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["grad"] == pytest.approx(grad, rel=1e-5)


def test_reference_loss_value(images):
    a, b, f = images
    total, parts = reference_loss(_t(a), _t(b), _t(f))
    ga, gb = _np_grad(a), _np_grad(b)
    wa, wb = ga.mean() / (ga.mean() + gb.mean()), gb.mean() / (ga.mean() + gb.mean())
    intensity = np.abs(f - np.maximum(a, b)).mean()
    grad = np.abs(_np_grad(f) - np.maximum(ga, gb)).mean()
    structure = 1 - (wa * _np_ssim(a, f) + wb * _np_ssim(b, f))
    assert total.item() == pytest.approx(10 * intensity + 10 * grad + 10 * structure, rel=1e-5)
    assert parts == pytest.approx({"intensity": intensity, "grad": grad, "ssim": structure}, rel=1e-4)


def test_reference_loss_weights_follow_the_sharper_source(images):
    a, _, _ = images
    flat = np.zeros_like(a)  # no gradient even at the zero-padded border: all SSIM weight goes to A
    _, parts = reference_loss(_t(a), _t(flat), _t(a))
    assert parts["ssim"] == pytest.approx(0.0, abs=1e-6)
    _, parts = reference_loss(_t(a), _t(flat), _t(flat))
    assert parts["ssim"] == pytest.approx(1 - _np_ssim(a, flat), abs=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_differentiable_and_smallest_near_a_good_fusion(name, images):
    a, b, _ = images
    loss = get_loss(name)
    good = np.maximum(a, b) if name == "reference" else 0.5 * (a + b)
    f = _t(np.zeros_like(a)).requires_grad_(True)
    total, _ = loss(_t(a), _t(b), f)
    total.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert loss(_t(a), _t(b), _t(good))[0].item() < total.item()


@pytest.mark.parametrize(
    ("name", "weights"), [("reference", {"grad": 20, "ssim": 0}), ("paper", {"l1_a": 3, "l1_b": 0.5})]
)
def test_term_weights_replace_the_spec_ones(name, weights, images):
    a, b, f = (_t(x) for x in images)
    total, parts = get_loss(name, weights)(a, b, f)
    spec_total, spec_parts = get_loss(name)(a, b, f)
    assert parts == spec_parts  # the terms themselves are the same
    expected = {**TERM_WEIGHTS[name], **weights}
    assert total.item() == pytest.approx(sum(expected[k] * v for k, v in parts.items()), rel=1e-5)
    assert total.item() != pytest.approx(spec_total.item(), rel=1e-3)


def test_edge_term_against_numpy(images):
    a, b, f = images

    def components(x):
        return np.stack([ndimage.correlate(x, k, mode="constant", cval=0.0) for k in (SOBEL_X, SOBEL_Y)])

    g_a, g_b, g_f = components(a), components(b), components(f)
    target = np.where(np.abs(g_a).sum(0) >= np.abs(g_b).sum(0), g_a, g_b)
    expected = np.abs(g_f - target).sum(0).mean()
    assert edge_term(_t(a), _t(b), _t(f)).item() == pytest.approx(expected, rel=1e-5)


def test_edge_term_sees_inverted_edges_that_the_gradient_term_does_not(images):
    a, _, _ = images
    flat = np.zeros_like(a)  # no gradient, not even at the zero-padded border: a is the stronger everywhere
    inverted = -a  # the same gradient magnitudes (border included), every edge the other way round
    assert edge_term(_t(a), _t(flat), _t(a)).item() == 0.0
    magnitude_gap = (sobel_gradient(_t(inverted)) - sobel_gradient(_t(a))).abs().mean().item()
    assert magnitude_gap == pytest.approx(0.0, abs=1e-6)
    assert edge_term(_t(a), _t(flat), _t(inverted)).item() > 0.1


def test_edge_weight_adds_the_edge_term(images):
    a, b, f = (_t(x) for x in images)
    total, parts = get_loss("reference", {"edge": 5})(a, b, f)
    spec_total, spec_parts = get_loss("reference")(a, b, f)
    assert "edge" not in spec_parts  # weight 0 in the spec: not computed
    assert list(spec_parts) == reported_terms("reference") == ["intensity", "grad", "ssim"]
    assert list(parts) == reported_terms("reference", {"edge": 5}) == ["intensity", "grad", "ssim", "edge"]
    assert parts == {**spec_parts, "edge": pytest.approx(edge_term(a, b, f).item())}
    assert total.item() == pytest.approx(spec_total.item() + 5 * parts["edge"], rel=1e-5)


def test_unknown_term_and_bad_weights_are_named():
    with pytest.raises(ValueError, match="loss 'paper' has no term intensity; its terms: grad, l1_a, l1_b"):
        get_loss("paper", {"intensity": 1})
    assert parse_term_weights("grad=20, ssim=5e-1") == {"grad": 20.0, "ssim": 0.5}
    for bad in ("grad", "grad=x", "=2"):
        with pytest.raises(ValueError, match="loss weights are TERM=NUMBER"):
            parse_term_weights(bad)


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="unknown loss 'l2'; known: paper, reference"):
        get_loss("l2")


def test_black_margin_term_counts_only_pixels_black_in_both_sources():
    a = np.full((4, 4), 0.5)
    b = np.full((4, 4), 0.5)
    a[:2] = 0.0  # top half black in A
    b[:, :2] = 0.0  # left half black in B: the top-left quarter is black in both
    f = np.full((4, 4), 0.3)
    f[0, 0] = -0.2  # already below -margin: no penalty
    f[0, 1] = -0.05  # inside the margin: penalised by 0.1 - 0.05
    value = black_margin_term(_t(a), _t(b), _t(f), margin=0.1).item()
    # (0.3 + 0.1) at the two other black pixels, 0.05 at one, 0 at one; mean over all 16 pixels
    assert value == pytest.approx((2 * 0.4 + 0.05) / 16)
    assert black_margin_term(_t(a + 0.1), _t(b), _t(f), margin=0.1).item() == 0.0  # nothing black in both


def test_black_margin_settles_black_below_zero_with_the_reference_loss():
    # a bright disc on black in both sources; a free output optimised under the reference loss
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 12**2).astype(np.float64)
    a, b = 0.8 * disc, 0.5 * ndimage.gaussian_filter(disc, 1.0) * disc
    black = (a == 0) & (b == 0)
    far = black & (ndimage.distance_transform_edt(black) > 3)  # away from the disc's edge
    margin = 0.01
    results = {}
    for name, loss in (("plain", reference_loss), ("margin", with_black_margin(reference_loss, margin))):
        torch.manual_seed(0)
        f = torch.nn.Parameter(_t(np.maximum(a, b)) + 0.02 * torch.randn(1, 1, 48, 48))
        opt = torch.optim.Adam([f], lr=2e-3)
        for _ in range(300):
            total, parts = loss(_t(a), _t(b), f)
            opt.zero_grad()
            total.backward()
            opt.step()
        results[name] = f.detach()[0, 0].numpy()[far]
    assert set(parts) == {"intensity", "grad", "ssim", "black"}
    # without the margin black hovers on both sides of 0 (a network that fits less well than this
    # free image then rounds part of it up to grey level 1); with it, black sits below -margin / 2
    assert (results["plain"] > 0).mean() > 0.2 and (results["plain"] < 0).mean() > 0.2
    assert (results["margin"] < -margin / 2).all()
