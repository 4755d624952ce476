"""Classic (non-learned) fusion methods, so that every comparison table has a floor.

Each baseline is a function ``(a, b) -> fused`` of two grey (luma) images of the same size,
float64 arrays [H, W] with values in [0, 1], of any size (odd, tiny such as 9x13, non-square).
It returns a float64 array [H, W] that is **not clamped**: the multi-scale methods can overshoot
[0, 1] slightly near strong edges, and the caller clamps (and rounds) when writing an image.
``upfusion fuse --method NAME`` runs them on the luma channel with the same colour handling as
the network.

- ``average``: (a + b) / 2.
- ``maximum``: the pointwise maximum.
- ``laplacian``: Laplacian pyramid (Burt and Adelson 1983) with the 5-tap binomial kernel
  [1, 4, 6, 4, 1] / 16, ``LAPLACIAN_LEVELS`` levels (fewer on small images); per detail
  coefficient the one of larger magnitude, the coarsest (base) level averaged.
- ``dwt``: 2-D discrete wavelet transform (PyWavelets, extra ``wavelets``) with ``DWT_WAVELET``
  = "bior2.2" and ``DWT_LEVELS`` = 4 levels (fewer on small images), symmetric borders; detail
  coefficients by maximum magnitude, the approximation averaged. The symmetric (linear-phase)
  bior2.2 filters ring less where the choice switches between sources than haar, db2, sym4 or
  coif1; on four MSRS test pairs it had the best VIF, SSIM and Qabf of those at 4 levels.
  More levels raise VIF and Qabf and lower SSIM; 4 is the usual middle ground, as for the
  Laplacian pyramid.
- ``gff``: guided-filter fusion (Li, Kang and Hu 2013, "Image fusion with guided filtering",
  IEEE TIP 22(7)): two-scale decomposition with a 31x31 average filter; saliency = Gaussian
  (11x11, sigma 5) of the absolute 3x3 Laplacian; binary weight maps from the larger saliency
  (ties to the first source), refined by guided filters guided by each source (r1 = 45,
  eps1 = 0.3 for the base layers, r2 = 7, eps2 = 1e-6 for the detail layers), clipped to
  [0, 1] and normalised to sum to one. As in the GFF MATLAB code in circulation, borders are
  replicated (``imfilter(..., 'replicate')``) and the refined weights clipped to [0, 1] (that
  code also rounds them to multiples of 1/255 by a uint8 round trip; here they stay exact).
  The guided filter's box means use the window clipped to the image (He et al.'s convention).

``BASELINES`` maps these names to the functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .pretrained.extras import require

Baseline = Callable[[ArrayLike, ArrayLike], np.ndarray]

LAPLACIAN_LEVELS = 4
DWT_WAVELET = "bior2.2"
DWT_LEVELS = 4

# Burt and Adelson's generating kernel with a = 0.375: separable, sums to one.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _as_pair(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 [H, W]; a ValueError says what is wrong with them."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"baselines take 2-D grey images [H, W], got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"the two images differ in size: {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"empty image of shape {a.shape}")
    return a, b


def _max_abs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per coefficient the one of larger magnitude (the first on ties)."""
    return np.where(np.abs(x) >= np.abs(y), x, y)


# ---------------------------------------------------------------------------- simple rules


def average(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """The pixel-wise mean (a + b) / 2."""
    a, b = _as_pair(a, b)
    return (a + b) / 2


def maximum(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """The pixel-wise maximum."""
    a, b = _as_pair(a, b)
    return np.maximum(a, b)


# ---------------------------------------------------------------------------- Laplacian pyramid


def _binomial_blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    # 'mirror' (whole-sample symmetric) borders keep the zeros inserted by _expand alternating
    # with samples across the border, so a constant image stays constant at every level.
    k = _BINOMIAL * gain
    return ndimage.correlate1d(ndimage.correlate1d(x, k, axis=0, mode="mirror"), k, axis=1, mode="mirror")


def _reduce(x: np.ndarray) -> np.ndarray:
    return _binomial_blur(x)[::2, ::2]


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsamples a coarse level to ``shape`` (at most one row/column less than twice its size)."""
    up = np.zeros((2 * x.shape[0], 2 * x.shape[1]))
    up[::2, ::2] = x
    return _binomial_blur(up, gain=2.0)[: shape[0], : shape[1]]  # gain 2 per axis restores the mean


def pyramid_levels(shape: tuple[int, int], levels: int = LAPLACIAN_LEVELS) -> int:
    """How many levels a Laplacian pyramid of an image of ``shape`` gets: at most ``levels``, and
    no more than floor(log2(shorter side)), so every decomposed level has at least 2 pixels a side."""
    return max(0, min(levels, int(np.floor(np.log2(min(shape))))))


def laplacian_pyramid(x: ArrayLike, levels: int = LAPLACIAN_LEVELS) -> list[np.ndarray]:
    """``[L_0, ..., L_{n-1}, G_n]``: detail levels, finest first, then the coarsest Gaussian level.

    n = ``pyramid_levels(x.shape, levels)``; ``reconstruct_laplacian`` inverts it exactly
    (up to rounding), for any size.
    """
    current = np.asarray(x, dtype=np.float64)
    pyramid = []
    for _ in range(pyramid_levels(current.shape, levels)):
        coarse = _reduce(current)
        pyramid.append(current - _expand(coarse, current.shape))
        current = coarse
    pyramid.append(current)
    return pyramid


def reconstruct_laplacian(pyramid: list[np.ndarray]) -> np.ndarray:
    """The image whose Laplacian pyramid is ``pyramid`` (the inverse of ``laplacian_pyramid``)."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + _expand(image, detail.shape)
    return image


def laplacian(a: ArrayLike, b: ArrayLike, levels: int = LAPLACIAN_LEVELS) -> np.ndarray:
    """Laplacian-pyramid fusion: detail coefficients by maximum magnitude, the base level averaged."""
    a, b = _as_pair(a, b)
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    fused = [_max_abs(da, db) for da, db in zip(pa[:-1], pb[:-1], strict=True)]
    fused.append((pa[-1] + pb[-1]) / 2)
    return reconstruct_laplacian(fused)


# ---------------------------------------------------------------------------- wavelets


def dwt(a: ArrayLike, b: ArrayLike, wavelet: str = DWT_WAVELET, levels: int = DWT_LEVELS) -> np.ndarray:
    """Wavelet fusion: detail coefficients by maximum magnitude, the approximation averaged.

    Uses at most ``levels`` levels, fewer where the shorter side is too small for them
    (``pywt.dwt_max_level``); an image too small for one level gets the average.
    """
    pywt = require("pywt", "wavelets", "the dwt baseline")
    a, b = _as_pair(a, b)
    n = min(levels, pywt.dwt_max_level(min(a.shape), pywt.Wavelet(wavelet).dec_len))
    if n < 1:
        return (a + b) / 2
    ca = pywt.wavedec2(a, wavelet, mode="symmetric", level=n)
    cb = pywt.wavedec2(b, wavelet, mode="symmetric", level=n)
    fused = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:], strict=True):
        fused.append(tuple(_max_abs(x, y) for x, y in zip(da, db, strict=True)))
    # Odd sizes come back one row/column larger.
    return pywt.waverec2(fused, wavelet, mode="symmetric")[: a.shape[0], : a.shape[1]]


# ---------------------------------------------------------------------------- guided filter (GFF)


def _box_mean(x: np.ndarray, radius: int, count: np.ndarray) -> np.ndarray:
    """Mean over the (2r+1)x(2r+1) window clipped to the image; ``count`` is ``_box_count``'s."""
    return ndimage.uniform_filter(x, 2 * radius + 1, mode="constant", cval=0.0) / count


def _box_count(shape: tuple[int, ...], radius: int) -> np.ndarray:
    """The fraction of each pixel's window that lies inside the image (divides the zero-padded mean)."""
    return ndimage.uniform_filter(np.ones(shape), 2 * radius + 1, mode="constant", cval=0.0)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter (grey guide): ``src`` smoothed along the edges of ``guide``.

    Box means are taken over the window clipped to the image, as in He et al.'s code.
    """
    count = _box_count(guide.shape, radius)
    mean_i = _box_mean(guide, radius, count)
    mean_p = _box_mean(src, radius, count)
    var_i = _box_mean(guide * guide, radius, count) - mean_i * mean_i
    cov_ip = _box_mean(guide * src, radius, count) - mean_i * mean_p
    slope = cov_ip / (var_i + eps)
    offset = mean_p - slope * mean_i
    return _box_mean(slope, radius, count) * guide + _box_mean(offset, radius, count)


def _refined_weights(
    guides: tuple[np.ndarray, np.ndarray], masks: tuple[np.ndarray, np.ndarray], radius: int, eps: float
) -> list[np.ndarray]:
    # Clipping to [0, 1] and the 1e-12 keep the normalisation away from a zero or negative sum.
    weights = [
        np.clip(guided_filter(guide, mask, radius, eps), 0.0, 1.0) + 1e-12
        for guide, mask in zip(guides, masks, strict=True)
    ]
    total = weights[0] + weights[1]
    return [w / total for w in weights]


def gff(
    a: ArrayLike,
    b: ArrayLike,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
) -> np.ndarray:
    """Guided-filter fusion (Li, Kang and Hu 2013) with the paper's parameters."""
    a, b = _as_pair(a, b)
    sources = (a, b)
    bases = [ndimage.uniform_filter(x, 31, mode="nearest") for x in sources]
    # truncate=1.0 with sigma 5 gives the paper's 11x11 Gaussian window (radius 5).
    saliency = [
        ndimage.gaussian_filter(np.abs(ndimage.laplace(x, mode="nearest")), 5.0, mode="nearest", truncate=1.0)
        for x in sources
    ]
    first = (saliency[0] >= saliency[1]).astype(np.float64)
    masks = (first, 1.0 - first)
    w_base = _refined_weights(sources, masks, r1, eps1)
    w_detail = _refined_weights(sources, masks, r2, eps2)
    fused = np.zeros_like(a)
    for x, base, wb, wd in zip(sources, bases, w_base, w_detail, strict=True):
        fused += wb * base + wd * (x - base)
    return fused


BASELINES: dict[str, Baseline] = {
    "average": average,
    "maximum": maximum,
    "laplacian": laplacian,
    "dwt": dwt,
    "gff": gff,
}
