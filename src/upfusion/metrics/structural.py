"""Structure-based fusion metrics: Q_Y (Yang et al. 2008, ``metricYang``) and Q_CB (Chen-Blum 2009,
``metricChenBlum``)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ._hard_common import as_float_image, correlate_valid_sep, normalize1

_YANG_C = 2e-16  # C1 = C2 in metricYang


@lru_cache(maxsize=1)
def yang_window() -> np.ndarray:
    """7x7 Gaussian (sigma 1.5) divided by its sum accumulated one term at a time, as MATLAB's ``sum``.

    The last bit of the sum matters (C1 = C2 = 2e-16), so numpy's pairwise sum must not be used.
    """
    a = np.arange(-3, 4, dtype=np.float64)
    e = np.exp(-(a[:, None] ** 2 + a[None, :] ** 2) / 4.5)
    total = 0.0
    for value in e.ravel(order="F"):  # column-major, from the (-3, -3) corner
        total += float(value)
    w = e / total
    w.flags.writeable = False
    return w


def _flat_sum(values: np.ndarray) -> np.ndarray:
    """w-weighted sum over a 7x7 window whose entries all equal ``values``, summed like direct correlation.

    Adds w[a, b] * value one term at a time in row-major order, as ``scipy.ndimage.correlate`` does (the
    definitions found that order to reproduce the reference; the window being symmetric, row- and
    column-major give the same sequence). In a flat window these bits decide Q_Y.
    """
    uniq, inverse = np.unique(values, return_inverse=True)
    acc = np.zeros_like(uniq)
    for weight in yang_window().ravel():
        acc += weight * uniq
    return acc[inverse]


def _running7(x: np.ndarray, op: np.ufunc, axis: int) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over each run of 7 samples along ``axis`` ('valid')."""
    x = np.moveaxis(x, axis, 0)
    two = op(x[:-1], x[1:])
    four = op(two[:-2], two[2:])
    seven = op(four[:-3], four[3:])  # two runs of 4 overlapping by one sample
    return np.moveaxis(seven, 0, axis)


def _window_range_is_zero(x: np.ndarray) -> np.ndarray:
    """Boolean 'valid' map: True where the 7x7 window of ``x`` is constant (its max equals its min)."""
    lo = _running7(_running7(x, np.minimum, 0), np.minimum, 1)
    hi = _running7(_running7(x, np.maximum, 0), np.maximum, 1)
    return lo == hi


def _window_moments(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Local means, second moments and pairwise cross moments under the Yang window ('valid' maps).

    Computed as two 1-D passes, then recomputed exactly wherever the windows are flat. Only there do
    the last bits matter: with C1 = C2 = 2e-16 the SSIM of two flat windows is a ratio of round-off
    residues, which direct summation fixes; elsewhere the two summations agree to ~1e-16 relative.
    """
    w = yang_window()
    g = np.sqrt(np.diag(w))  # w = outer(g, g) up to the last bit
    pairs = [(0, 1), (0, 2), (1, 2)]
    stack = np.stack(images + [x * x for x in images] + [images[i] * images[j] for i, j in pairs])
    half = 3
    moments = correlate_valid_sep(stack, g)
    n = len(images)
    means = list(moments[:n])
    squares = list(moments[n : 2 * n])
    cross = {pair: moments[2 * n + k] for k, pair in enumerate(pairs)}

    centre = [x[half:-half, half:-half] for x in images]
    flat = [_window_range_is_zero(x) for x in images]
    for k in range(n):
        c = centre[k][flat[k]]
        means[k][flat[k]] = _flat_sum(c)
        squares[k][flat[k]] = _flat_sum(c * c)
    for i, j in pairs:
        both = flat[i] & flat[j]
        cross[(i, j)][both] = _flat_sum(centre[i][both] * centre[j][both])
    return means, squares, cross


def _ssim_map(
    mu_x: np.ndarray, mu_y: np.ndarray, sq_x: np.ndarray, sq_y: np.ndarray, xy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSIM map with C1 = C2 = 2e-16 and the two local variances (none clamped)."""
    var_x = sq_x - mu_x * mu_x
    var_y = sq_y - mu_y * mu_y
    cov = xy - mu_x * mu_y
    with np.errstate(invalid="ignore", divide="ignore"):
        ssim = ((2 * mu_x * mu_y + _YANG_C) * (2 * cov + _YANG_C)) / (
            (mu_x * mu_x + mu_y * mu_y + _YANG_C) * (var_x + var_y + _YANG_C)
        )
    return ssim, var_x, var_y


def q_y(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_Y (Yang et al. 2008): SSIM-based score on raw 0..255 with a 7x7 Gaussian window, 'valid' maps.

    Where SSIM(A, B) >= 0.75 the score is the variance-weighted mean of SSIM(A, F) and SSIM(B, F),
    elsewhere their maximum. Like the original, the two cases are blended with 0/1 factors, so a 0/0
    weight (both sources flat in a window) makes the result NaN. Images under 11 pixels on a side give
    -inf, as the original does. The local sums match direct-summation correlation (``'valid'``) where it
    matters, see :func:`_window_moments`.
    """
    a, b, f = as_float_image(a), as_float_image(b), as_float_image(f)
    if min(a.shape) < 11:
        return float("-inf")
    (mu_a, mu_b, mu_f), (sq_a, sq_b, sq_f), cross = _window_moments([a, b, f])
    ssim_ab, var_a, var_b = _ssim_map(mu_a, mu_b, sq_a, sq_b, cross[(0, 1)])
    ssim_af, _, _ = _ssim_map(mu_a, mu_f, sq_a, sq_f, cross[(0, 2)])
    ssim_bf, _, _ = _ssim_map(mu_b, mu_f, sq_b, sq_f, cross[(1, 2)])
    beta = (ssim_ab >= 0.75).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = var_a / (var_a + var_b)
    # 0/1 blend (not np.where) so that a NaN weight propagates even where beta = 0, as in the original
    q = beta * (lam * ssim_af + (1 - lam) * ssim_bf) + (1 - beta) * np.fmax(ssim_af, ssim_bf)
    return float(np.mean(q))


@lru_cache(maxsize=2)
def _csf_filter(rows: int, cols: int) -> np.ndarray:
    """Chen-Blum contrast-sensitivity filter, moved so that r = 0 sits on the DC sample (ifftshift)."""
    u = ((np.arange(cols) - cols // 2) * (2 / cols)) * (cols / 30)
    v = ((np.arange(rows) - rows // 2) * (2 / rows)) * (rows / 30)
    r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)
    s = np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2))
    s = sfft.ifftshift(s)
    s.flags.writeable = False
    return s


def _gauss_factor(sigma: float) -> np.ndarray:
    """1-D factor of the 31x31 kernel exp(-(x^2+y^2)/(2 sigma^2)) / (2 pi sigma^2), not renormalised."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _gauss31(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """31x31 separable Gaussian response of a real image, zero padding, as 1-D direct sums."""
    out = ndimage.correlate1d(x, g, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, g, axis=1, mode="constant", cval=0.0)


@lru_cache(maxsize=2)
def _gauss31_spectra(rows: int, cols: int) -> tuple[tuple[int, int], np.ndarray]:
    """Padded FFT size and real spectra of the sigma-2 and sigma-4 kernels, for zero-padded convolution."""
    shape = (sfft.next_fast_len(rows + 30, real=True), sfft.next_fast_len(cols + 30, real=True))
    kernels = np.stack([np.outer(g, g) for g in (_gauss_factor(2.0), _gauss_factor(4.0))])
    spectra = sfft.rfft2(kernels, s=shape)
    spectra.flags.writeable = False
    return shape, spectra


def _masked_contrast(x: np.ndarray, csf: np.ndarray, g2: np.ndarray, g4: np.ndarray) -> np.ndarray:
    """C' = C^3 / (C^2 + 1e-4) with C = |G2*I / G4*I - 1| of the CSF-filtered image I.

    I is kept complex, as in the original: its imaginary part is round-off, but where the real part's
    Gaussian responses are themselves at round-off level (deep inside flat black areas) it shapes C.
    The real part needs direct summation: FFT convolution would swamp those tiny responses with
    round-off from the bright parts. The imaginary part is uniformly tiny, so FFT convolution (same
    zero padding) is exact enough for it, and much cheaper.
    """
    rows, cols = x.shape
    filtered = sfft.ifft2(sfft.fft2(x) * csf)
    shape, spectra = _gauss31_spectra(rows, cols)
    imag = sfft.irfft2(sfft.rfft2(filtered.imag, s=shape) * spectra, s=shape)[:, 15 : 15 + rows, 15 : 15 + cols]
    resp2 = _gauss31(filtered.real, g2) + 1j * imag[0]
    resp4 = _gauss31(filtered.real, g4) + 1j * imag[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.abs(resp2 / resp4 - 1.0)
    return c**3 / (c * c + 1e-4)


def q_cb(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_CB (Chen-Blum 2009): contrast preservation weighted by source saliency.

    Each image is stretched by ``normalize1`` (0..255, rounded half away from zero), filtered in the DFT
    domain by the contrast-sensitivity function (complex result kept), and its local contrast is the
    ratio of two 31x31 Gaussian responses (sigma 2 and 4, not renormalised, zero padding, direct
    summation). Returns the mean over all pixels; both preservation ratios are formed everywhere, so an
    exact zero contrast gives NaN as in the original. Deep inside exactly black areas the responses are
    FFT round-off, so there the value depends on the FFT library: on mostly black images it can differ
    from the MATLAB/Octave value by several 1e-4 (the reference's tolerance is 2e-3).
    """
    a = normalize1(as_float_image(a))
    b = normalize1(as_float_image(b))
    f = normalize1(as_float_image(f))
    csf = _csf_filter(*a.shape)
    g2 = _gauss_factor(2.0)
    g4 = _gauss_factor(4.0)
    ca = _masked_contrast(a, csf, g2, g4)
    cb = _masked_contrast(b, csf, g2, g4)
    cf = _masked_contrast(f, csf, g2, g4)
    with np.errstate(invalid="ignore", divide="ignore"):
        # 0/1 blend of both ratios, as the original (equal values give 1)
        q_af = (ca < cf) * (ca / cf) + (ca >= cf) * (cf / ca)
        q_bf = (cb < cf) * (cb / cf) + (cb >= cf) * (cf / cb)
        lam_a = ca * ca / (ca * ca + cb * cb)
        lam_b = cb * cb / (ca * ca + cb * cb)
    return float(np.mean(lam_a * q_af + lam_b * q_bf))
