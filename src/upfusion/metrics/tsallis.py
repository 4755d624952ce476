"""Q_TE: Tsallis-entropy fusion metric (Nava et al.), as computed by Liu's ``metricMI(A, B, F, 3)``."""

from __future__ import annotations

import numpy as np

from ._hard_common import as_float_image, normalize1

Q_TSALLIS = 0.43137
_LEVELS = 256


def _joint_histogram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """256x256 joint probability table p[u, v] of two images holding integer levels 0..255."""
    xi = x.astype(np.int64).ravel()
    yi = y.astype(np.int64).ravel()
    counts = np.bincount(xi * _LEVELS + yi, minlength=_LEVELS * _LEVELS).reshape(_LEVELS, _LEVELS)
    return counts / xi.size


def tsallis_mi(x: np.ndarray, y: np.ndarray, q: float = Q_TSALLIS) -> float:
    """Tsallis mutual information I_q(x, y) with the original's crossed marginals.

    S = sum over (u, v) with p_y[u] * p_x[v] != 0 of p[u, v]^q / (p_y[u] * p_x[v])^(q - 1), where u indexes
    levels of x and v levels of y; I_q = (1 - S) / (1 - q). The crossing makes I_q symmetric in x and y.
    """
    p = _joint_histogram(x, y)
    p_x = p.sum(axis=1)
    p_y = p.sum(axis=0)
    denom = np.outer(p_y, p_x)  # row u pairs with the marginal of y, column v with that of x
    keep = denom != 0
    s = np.sum(p[keep] ** q * denom[keep] ** (1.0 - q))
    return float((1.0 - s) / (1.0 - q))


def _shannon_bits(x: np.ndarray) -> float:
    counts = np.bincount(x.astype(np.int64).ravel(), minlength=_LEVELS)
    p = counts[counts > 0] / x.size
    return float(-np.sum(p * np.log2(p)))


def q_te(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_TE = (I_q(a, f) + I_q(b, f)) / (H_a^q + H_b^q + I_q(a, b)), q = 0.43137.

    Each image is first stretched by ``normalize1`` (0..255, rounded half away from zero). H are Shannon
    entropies in bits of the 256-bin histograms of a and b; I_q(a, b) is added in the denominator, as in
    the original code. Returns NaN for a constant non-zero image (the original fails there).
    """
    a = normalize1(as_float_image(a))
    b = normalize1(as_float_image(b))
    f = normalize1(as_float_image(f))
    if np.isnan(a).any() or np.isnan(b).any() or np.isnan(f).any():
        return float("nan")
    q = Q_TSALLIS
    num = tsallis_mi(a, f, q) + tsallis_mi(b, f, q)
    den = _shannon_bits(a) ** q + _shannon_bits(b) ** q + tsallis_mi(a, b, q)
    return float(num / den)
