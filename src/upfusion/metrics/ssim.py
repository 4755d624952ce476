"""SSIM as MathWorks' ``ssim`` computes it, and the legacy scikit-image variant the CDDFuse evaluator used.

MathWorks ``ssim``: Gaussian weights (sigma 1.5, 11x11, normalised), ``imfilter`` with replicate
padding (a full-size map), C1 = (0.01 L)^2, C2 = (0.03 L)^2, C3 = C2/2 (Wang et al. 2004, eq. 13),
result = mean of the map. L comes from the MATLAB class of the input, not from the data:
double gives L = 1 even on 0..255 data (the paper's SSIM), uint8 gives L = 255 (``SSIM_L255``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from ._common import Triple, filter_same_replicate, gaussian_1d

_WINDOW = gaussian_1d(11, 1.5)  # 2*ceil(3*sigma)+1 taps, as MATLAB's ssim chooses


def _blur(t: Triple, key: str, make) -> np.ndarray:
    return t.cached(("ssim_blur", key), lambda: filter_same_replicate(make(), _WINDOW))


def _moments(t: Triple, source: str) -> tuple[np.ndarray, ...]:
    """(mu_x mu_f, mu_x^2 + mu_f^2, sigma_xf, sigma_x^2 + sigma_f^2) of a source and F, shared by both L."""

    def make() -> tuple[np.ndarray, ...]:
        x, f = t.image(source), t.f
        mu_x = _blur(t, source, lambda: x)
        mu_f = _blur(t, "f", lambda: f)
        mu_xf = mu_x * mu_f
        mu_x2, mu_f2 = mu_x * mu_x, mu_f * mu_f
        sxf = _blur(t, source + "f", lambda: x * f) - mu_xf
        # Each variance on its own first, as MATLAB does (keeps the round-off of the original).
        s_sq = (_blur(t, source + source, lambda: x * x) - mu_x2) + (_blur(t, "ff", lambda: f * f) - mu_f2)
        mu_sq = mu_x2 + mu_f2
        return mu_xf, mu_sq, sxf, s_sq

    return t.cached(("ssim_moments", source), make)


def ssim_map(t: Triple, source: str, dynamic_range: float) -> np.ndarray:
    """MathWorks ``ssim`` map of F against one source (``"a"`` or ``"b"``), full image size."""
    mu_xf, mu_sq, sxf, s_sq = _moments(t, source)
    c1 = (0.01 * dynamic_range) ** 2
    c2 = (0.03 * dynamic_range) ** 2
    return ((2 * mu_xf + c1) * (2 * sxf + c2)) / ((mu_sq + c1) * (s_sq + c2))


def _ssim_mean(t: Triple, dynamic_range: float) -> float:
    return float((ssim_map(t, "a", dynamic_range).mean() + ssim_map(t, "b", dynamic_range).mean()) / 2.0)


def ssim_of(t: Triple) -> float:
    """SSIM of a prepared :class:`Triple` (see :func:`ssim`)."""
    return _ssim_mean(t, 1.0)


def ssim(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """SSIM (``SSIM_matlab_double_mean``, the paper's SSIM): mean of ssim(A,F) and ssim(B,F).

    Convention: MathWorks ``ssim`` on double 0..255 data, so L = 1 (C1 = 1e-4, C2 = 9e-4);
    11x11 Gaussian window (sigma 1.5) with replicate padding, mean of the full-size map.
    Range -1..1; ssim(X, X) = 1.
    """
    return ssim_of(Triple(a, b, f))


def ssim_l255_of(t: Triple) -> float:
    """SSIM_L255 of a prepared :class:`Triple` (see :func:`ssim_l255`)."""
    return _ssim_mean(t, 255.0)


def ssim_l255(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """SSIM_L255 (``SSIM_matlab_uint8_mean``): as :func:`ssim` but L = 255, as MathWorks ``ssim``
    uses for uint8 input (C1 = 6.5025, C2 = 58.5225). Mean of the two sources, range -1..1.
    """
    return ssim_l255_of(Triple(a, b, f))


def ssim_legacy_skimage(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image < 0.20 ``structural_similarity(x, y)`` on float 0..255 data, as CDDFuse called it.

    Convention: 7x7 uniform window, sample covariances (x 49/48), data_range 2 (skimage's
    default for float input then: C1 = 4e-4, C2 = 3.6e-3), mean of the map without a 3-pixel border.
    """
    size = 7
    cov_norm = size * size / (size * size - 1.0)

    def box(z: np.ndarray) -> np.ndarray:
        # The border that the padding touches is cropped below, so the mode does not matter.
        return ndimage.uniform_filter(z, size=size, mode="reflect")

    mu_x, mu_y = box(x), box(y)
    vx = cov_norm * (box(x * x) - mu_x * mu_x)
    vy = cov_norm * (box(y * y) - mu_y * mu_y)
    vxy = cov_norm * (box(x * y) - mu_x * mu_y)
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (vx + vy + c2))
    pad = (size - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())
