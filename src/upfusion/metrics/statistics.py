"""Statistical metrics on grey levels 0..255: SD, SF, AG (of F), CC, SCD, PSNR (of F against A and B).

All work on the float64 values as given (no rounding, no normalisation).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ._common import Triple, corr2


def sd_of(t: Triple) -> float:
    """SD of a prepared :class:`Triple` (see :func:`sd`)."""
    f = t.f
    return float(np.sqrt(np.mean((f - f.mean()) ** 2)))


def sd(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """SD: population standard deviation of F (divides by N, not N-1), in grey levels 0..255.

    A and B are unused.
    """
    return sd_of(Triple(a, b, f))


def sf_of(t: Triple) -> float:
    """SF of a prepared :class:`Triple` (see :func:`sf`)."""
    f = t.f
    if min(f.shape) < 2:
        return float("nan")
    rf2 = np.mean(np.diff(f, axis=0) ** 2)  # (H-1) x W differences between adjacent rows
    cf2 = np.mean(np.diff(f, axis=1) ** 2)  # H x (W-1) differences between adjacent columns
    return float(np.sqrt(rf2 + cf2))


def sf(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """SF: spatial frequency of F, sqrt(RF^2 + CF^2).

    Convention: RF^2 is the mean over (H-1)xW of squared vertical neighbour differences, CF^2 the
    mean over Hx(W-1) of squared horizontal ones; no padding. Needs H, W >= 2 (else NaN).
    """
    return sf_of(Triple(a, b, f))


def ag_sum(f: np.ndarray) -> float:
    """Sum over all pixels of sqrt((gx^2 + gy^2)/2) with MATLAB ``gradient`` differences."""
    if min(f.shape) < 2:
        return float("nan")
    # np.gradient = MATLAB gradient: central differences inside, one-sided at the borders.
    gy, gx = np.gradient(f)
    return float(np.sum(np.sqrt((gx * gx + gy * gy) / 2.0)))


def ag_of(t: Triple) -> float:
    """AG of a prepared :class:`Triple` (see :func:`ag`)."""
    rows, cols = t.f.shape
    if min(rows, cols) < 2:  # no gradient, and (H-1)(W-1) is 0: NaN, not a division by zero
        return float("nan")
    return t.cached("ag_sum", lambda: ag_sum(t.f)) / ((rows - 1) * (cols - 1))


def ag(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """AG (Tang's average gradient) of F.

    Convention: gx, gy from MATLAB ``gradient`` (central differences, one-sided at the borders),
    AG = sum over all HxW pixels of sqrt((gx^2+gy^2)/2), divided by (H-1)(W-1). The CDDFuse
    evaluator divides by HxW instead. Needs H, W >= 2 (else NaN).
    """
    return ag_of(Triple(a, b, f))


def cc_of(t: Triple) -> float:
    """CC of a prepared :class:`Triple` (see :func:`cc`)."""
    return (corr2(t.a, t.f) + corr2(t.b, t.f)) / 2.0


def cc(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """CC: mean of the correlation coefficients corr2(A,F) and corr2(B,F) (MATLAB ``corr2``).

    Range -1..1; NaN when F or a source is constant.
    """
    return cc_of(Triple(a, b, f))


def scd_of(t: Triple) -> float:
    """SCD of a prepared :class:`Triple` (see :func:`scd`)."""
    return corr2(t.f - t.b, t.a) + corr2(t.f - t.a, t.b)


def scd(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """SCD (sum of the correlations of differences): corr2(F-B, A) + corr2(F-A, B).

    Range -2..2. NaN when F equals a source (the difference image is constant: 0/0), as in the original.
    """
    return scd_of(Triple(a, b, f))


def mse_of(t: Triple) -> float:
    """Mean of MSE(A,F) and MSE(B,F) on 0..255 grey levels."""

    def make() -> float:
        return float((np.mean((t.a - t.f) ** 2) + np.mean((t.b - t.f) ** 2)) / 2.0)

    return t.cached("mse", make)


def psnr_of(t: Triple) -> float:
    """PSNR of a prepared :class:`Triple` (see :func:`psnr`)."""
    mse = mse_of(t)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def psnr(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """PSNR (``PSNR_255``) in dB: 10 log10(255^2 / MSE), MSE the mean of MSE(A,F) and MSE(B,F).

    Convention: data 0..255, peak 255 (Tang's ``PSNR`` on 0..1 data is this + 48.13 dB; the
    CDDFuse evaluator uses max(F) as the peak). +inf when F equals both sources.
    """
    return psnr_of(Triple(a, b, f))
