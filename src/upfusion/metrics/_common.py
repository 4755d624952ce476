"""Shared pieces of the metrics: input checks, MATLAB rounding, ``normalize1``, histograms,
Gaussian windows and filtering, and :class:`Triple`, which caches intermediate results
(histograms, Sobel maps, local moments) so that several metrics of one triple share them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

T = TypeVar("T")

LEVELS = 256


def as_image(x: ArrayLike, name: str = "image") -> np.ndarray:
    """A 2-D grey image as a float64 array (any numeric dtype in, values 0..255 expected)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D grey image, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    floating = np.issubdtype(arr.dtype, np.floating)
    arr = np.asarray(arr, dtype=np.float64)  # no copy for float64 input: the metrics never write to it
    if floating and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero (numpy rounds them to even); float64 result.

    ``floor(x + 0.5)`` alone is wrong where ``x + 0.5`` rounds up to an integer in floating point
    (x = 0.49999999999999994 gives 1), so those elements are stepped back by one.
    """
    mag = np.abs(x)
    r = mag + 0.5
    np.floor(r, out=r)
    r -= mag < r - 0.5  # the exact test: is |x| below the rounding point r - 0.5?
    return np.copysign(r, x, out=r)


def to_levels(x: np.ndarray) -> np.ndarray:
    """Integer grey levels 0..255 as MATLAB's ``uint8()`` makes them (round half away, saturate)."""
    return np.clip(round_half_away(x), 0, LEVELS - 1).astype(np.intp)


def normalize1(x: np.ndarray) -> np.ndarray | None:
    """Liu's ``normalize1``: min-max stretch to integer levels 0..255, rounded half away from zero.

    An all-zero image is returned unchanged; a constant non-zero image gives 0/0 in the
    original (which then fails), so ``None`` is returned and the caller reports NaN.
    """
    hi, lo = float(x.max()), float(x.min())
    if hi == 0 and lo == 0:
        return x.astype(np.intp)
    if hi == lo:
        return None
    # Same operation order as the original: divide first, then scale by 255.
    return round_half_away(((x - lo) / (hi - lo)) * 255).astype(np.intp)


def joint_histogram(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """256x256 joint histogram (counts, float64) of two integer level images; rows index ``x``."""
    counts = np.bincount((x * LEVELS + y).ravel(), minlength=LEVELS * LEVELS)
    return counts.reshape(LEVELS, LEVELS).astype(np.float64)


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits of a probability array (zero entries skipped)."""
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def entropies_bits(joint_counts: np.ndarray) -> tuple[float, float, float]:
    """(H(X), H(Y), H(X,Y)) in bits from a joint histogram of counts (rows X, columns Y)."""
    p = joint_counts / joint_counts.sum()
    return entropy_bits(p.sum(axis=1)), entropy_bits(p.sum(axis=0)), entropy_bits(p)


def corr2(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ``corr2``: Pearson correlation of all pixels; NaN when either image is constant."""
    dx = x - x.mean()
    dy = y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(dx * dy) / np.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of ``fspecial('gaussian', size, sigma)``: the 2-D window is its outer product.

    fspecial zeroes entries below eps * max before normalising; that is reproduced for the
    separable form (the 2-D window's entries are products of these, so the cut is the same
    unless an entry is within rounding of the threshold, which does not happen for the sizes used).
    """
    r = (size - 1) / 2
    k = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma * sigma))
    outer = np.outer(k, k)
    if np.any(outer < np.finfo(float).eps * outer.max()):
        raise ValueError("gaussian_1d: window too wide for a separable fspecial equivalent")
    return k / k.sum()


def filter_same_replicate(x: np.ndarray, w1d: np.ndarray) -> np.ndarray:
    """Separable correlation with a symmetric window, output the input's size, replicate padding
    (MATLAB ``imfilter(..., 'replicate')``)."""
    y = ndimage.correlate1d(x, w1d, axis=0, mode="nearest")
    return ndimage.correlate1d(y, w1d, axis=1, mode="nearest")


def filter_valid(x: np.ndarray, w1d: np.ndarray, step: int = 1) -> np.ndarray:
    """Separable correlation kept where the window lies wholly inside (MATLAB ``filter2(..., 'valid')``),
    then every ``step``-th row and column of that (``(1:step:end, 1:step:end)``).

    An image smaller than the window gives an empty array, as in MATLAB.
    """
    n = w1d.size
    r = n // 2
    rows, cols = x.shape
    if rows < n or cols < n:
        return np.zeros((max(rows - n + 1, 0), max(cols - n + 1, 0)))[::step, ::step]
    # Each pass is kept only at the rows (columns) that survive the crop and the subsampling:
    # the same sums, less work.
    y = ndimage.correlate1d(x, w1d, axis=0, mode="constant")[r : rows - r : step]
    return ndimage.correlate1d(y, w1d, axis=1, mode="constant")[:, r : cols - r : step]


class Triple:
    """One (A, B, F) triple as float64 images, with a per-triple cache of intermediate results.

    Metric functions ``<name>_of(triple)`` take a ``Triple`` so that :func:`upfusion.metrics.compute`
    can share work (histograms, Sobel maps, filtered moments) between metrics of the same images.
    """

    def __init__(self, a: ArrayLike, b: ArrayLike, f: ArrayLike) -> None:
        self.a = as_image(a, "a")
        self.b = as_image(b, "b")
        self.f = as_image(f, "f")
        if not (self.a.shape == self.b.shape == self.f.shape):
            raise ValueError(f"images differ in size: a {self.a.shape}, b {self.b.shape}, f {self.f.shape}")
        self._cache: dict[Any, Any] = {}

    def image(self, key: str) -> np.ndarray:
        """The float64 image ``"a"``, ``"b"`` or ``"f"``."""
        return {"a": self.a, "b": self.b, "f": self.f}[key]

    def cached(self, key: Any, make: Callable[[], T]) -> T:
        """``make()`` computed once per triple and key."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def levels(self, key: str) -> np.ndarray:
        """Integer grey levels 0..255 of an image, as MATLAB ``uint8()`` gives them."""
        return self.cached(("levels", key), lambda: to_levels(self.image(key)))

    def normalized(self, key: str) -> np.ndarray | None:
        """``normalize1`` of an image (None when it is constant and non-zero)."""
        return self.cached(("normalize1", key), lambda: normalize1(self.image(key)))
