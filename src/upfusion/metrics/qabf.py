"""Qabf (Q^{AB/F}), Xydeas and Petrovic 2000, as ``analysis_Qabf`` computes it."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._common import Triple

# Sigmoid constants of the edge-strength (g) and orientation (a) preservation terms.
TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8


def sobel_conv_same(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses of ``conv2(x, h, 'same')`` (true convolution, zero padding).

    x-kernel [-1 0 1; -2 0 2; -1 0 1], y-kernel [1 2 1; 0 0 0; -1 -2 -1]. Convolution flips the
    kernels, so sx(i,j) = sum_k w_k (x(i+k, j-1) - x(i+k, j+1)) with w = (1, 2, 1), and likewise
    sy(i,j) = sum_k w_k (x(i+1, j+k) - x(i-1, j+k)).
    """
    p = np.pad(x, 1)
    # Vertical [1 2 1] smoothing, then the horizontal difference (and the transposed pair).
    v = p[:-2, :] + 2 * p[1:-1, :] + p[2:, :]
    sx = v[:, :-2] - v[:, 2:]
    h = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    sy = h[2:, :] - h[:-2, :]
    return sx, sy


def _strength_angle(t: Triple, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength g = sqrt(sx^2+sy^2) and angle atan(sy/sx), pi/2 where sx == 0 (``atan``, not atan2)."""

    def make() -> tuple[np.ndarray, np.ndarray]:
        sx, sy = sobel_conv_same(t.image(key))
        g = np.sqrt(sx * sx + sy * sy)
        zero = sx == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(zero, np.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
        return g, alpha

    return t.cached(("qabf_sobel", key), make)


def _preservation(g_x: np.ndarray, a_x: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Q^{XF}: the product of the edge-strength and orientation preservation sigmoids."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            g_x > g_f,
            g_f / g_x,
            # The original's quirk: G = g_F (not 1) where the strengths are equal.
            np.where(g_x == g_f, g_f, g_x / g_f),
        )
    orient = 1.0 - np.abs(a_x - a_f) / (np.pi / 2)
    q_g = TG / (1.0 + np.exp(KG * (ratio - DG)))
    q_a = TA / (1.0 + np.exp(KA * (orient - DA)))
    return q_g * q_a


def qabf_of(t: Triple) -> float:
    """Qabf of a prepared :class:`Triple` (see :func:`qabf`)."""
    g_a, a_a = _strength_angle(t, "a")
    g_b, a_b = _strength_angle(t, "b")
    g_f, a_f = _strength_angle(t, "f")
    num = np.sum(_preservation(g_a, a_a, g_f, a_f) * g_a + _preservation(g_b, a_b, g_f, a_f) * g_b)
    den = np.sum(g_a + g_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(num / den)


def qabf(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """Qabf (Xydeas-Petrovic Q^{AB/F}, ``analysis_Qabf``): edge information of A and B kept in F.

    Convention: Sobel by true convolution with zero padding (``conv2 'same'``); angle ``atan(sy/sx)``
    (pi/2 where sx = 0); strength ratio min/max except G = g_F where g_A == g_F (the original's quirk);
    sigmoids 0.9994/(1+e^{-15(G-0.5)}) and 0.9879/(1+e^{-22(A-0.8)}); weights g^L with L = 1;
    Qabf = sum(Q^{AF} g_A + Q^{BF} g_B) / sum(g_A + g_B). Range 0..1; NaN if A and B have no edges.
    """
    return qabf_of(Triple(a, b, f))
