"""VIF in the pixel domain (Sheikh and Bovik, LIVE ``vifp_mscale``), with a source as the reference.

Convention: data 0..255 (the noise variance sigma_n^2 = 2 is absolute), 4 scales with Gaussian
windows of 17, 9, 5, 3 taps (sigma = N/5, ``fspecial``), ``filter2(..., 'valid')`` statistics
and, from scale 2 on, a 'valid' low-pass then ``(1:2:end, 1:2:end)`` subsampling.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._common import Triple, filter_valid, gaussian_1d

SIGMA_NSQ = 2.0
_WINDOWS = [gaussian_1d(2 ** (5 - s) + 1, (2 ** (5 - s) + 1) / 5.0) for s in range(1, 5)]


def _pyramid(x: np.ndarray) -> list[np.ndarray]:
    """The image at each of the 4 scales (s > 1: 'valid' filter with scale s's window, then 2x subsample)."""
    levels = [x]
    for window in _WINDOWS[1:]:
        x = filter_valid(x, window, step=2)
        levels.append(x)
    return levels


def _local_stats(x: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and (unclamped) variance with a 'valid' window."""
    mu = filter_valid(x, window)
    return mu, filter_valid(x * x, window) - mu * mu


def vif_terms(t: Triple, source: str, sigma_nsq: float = SIGMA_NSQ) -> list[tuple[np.ndarray, ...]]:
    """Per scale: (g, sv^2, sigma_1^2) after the LIVE clamps, for ``source`` as reference and F as test.

    Shared with other VIF variants through the triple's cache (sigma_nsq does not enter these maps).
    """

    def make() -> list[tuple[np.ndarray, ...]]:
        ref_levels = t.cached(("vif_pyramid", source), lambda: _pyramid(t.image(source)))
        dist_levels = t.cached(("vif_pyramid", "f"), lambda: _pyramid(t.f))
        out = []
        for s, window in enumerate(_WINDOWS):
            ref, dist = ref_levels[s], dist_levels[s]
            mu1, s1 = t.cached(("vif_stats", source, s), lambda ref=ref, w=window: _local_stats(ref, w))
            mu2, s2 = t.cached(("vif_stats", "f", s), lambda dist=dist, w=window: _local_stats(dist, w))
            s12 = filter_valid(ref * dist, window) - mu1 * mu2
            s1 = np.maximum(s1, 0.0)
            s2 = np.maximum(s2, 0.0)
            g = s12 / (s1 + 1e-10)
            sv = s2 - g * s12
            # The clamps, in the original's order (each mask is taken after the previous steps).
            flat1 = s1 < 1e-10
            g[flat1] = 0.0
            sv[flat1] = s2[flat1]
            s1 = np.where(flat1, 0.0, s1)
            flat2 = s2 < 1e-10
            g[flat2] = 0.0
            sv[flat2] = 0.0
            negative = g < 0
            sv[negative] = s2[negative]
            g[negative] = 0.0
            sv[sv <= 1e-10] = 1e-10
            out.append((g, sv, s1))
        return out

    return t.cached(("vif_terms", source), make)


def vifp_mscale(t: Triple, source: str) -> float:
    """``vifp_mscale(source, F)``: sum over scales of the information ratios' numerators / denominators."""
    num = den = 0.0
    for g, sv, s1 in vif_terms(t, source):
        num += float(np.sum(np.log10(1.0 + g * g * s1 / (sv + SIGMA_NSQ))))
        den += float(np.sum(np.log10(1.0 + s1 / SIGMA_NSQ)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(num) / np.float64(den))


def vif_of(t: Triple) -> float:
    """VIF of a prepared :class:`Triple` (see :func:`vif`)."""
    return (vifp_mscale(t, "a") + vifp_mscale(t, "b")) / 2.0


def vif(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """VIF (``VIF_vifp_mscale_mean``, the paper's VIF): mean of vifp_mscale(A,F) and vifp_mscale(B,F).

    Convention: pixel-domain multi-scale VIF of LIVE's ``vifp_mscale`` with the source as reference,
    on 0..255 data (sigma_n^2 = 2), 'valid' filtering, 4 scales. Usually 0..1; can exceed 1 when F
    enhances contrast. The CDDFuse evaluator's "VIFF" is the sum of the two (twice this).
    """
    return vif_of(Triple(a, b, f))
