"""Small helpers shared by Q_P, Q_TE, Q_CB, Q_Y, Q_G and VIFF.

Conventions follow the MATLAB originals (see DEFINITIONS_hard.md, section 0): images are float64 grey
levels 0..255, rounding is half away from zero, and "correlate" means 2-D correlation with zero padding.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def as_float_image(x: np.ndarray) -> np.ndarray:
    """``x`` as a 2-D float64 array (any numeric dtype, grey levels 0..255, never rescaled)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    return arr


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero (numpy's ``rint`` would go to even)."""
    # floor-based form is exact; floor(x + 0.5) would misround 0.49999999999999994
    fl = np.floor(np.abs(x))
    return np.copysign(fl + (np.abs(x) - fl >= 0.5), x)


def normalize1(x: np.ndarray) -> np.ndarray:
    """Liu's ``normalize1``: stretch to 0..255 and round half away from zero.

    An all-zero image is returned unchanged; a constant non-zero image gives NaN (0/0), as the original
    would fail there.
    """
    lo = x.min()
    hi = x.max()
    if hi == 0 and lo == 0:
        return x.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return round_half_away(((x - lo) / (hi - lo)) * 255.0)


def gauss_1d(n: int, sigma: float) -> np.ndarray:
    """1-D factor of gauss(n, sigma), normalised to sum 1 (for metrics whose result ignores last bits)."""
    a = np.arange(n, dtype=np.float64) - (n - 1) / 2
    g = np.exp(-(a * a) / (2.0 * sigma * sigma))
    return g / g.sum()


def correlate_valid_sep(x: np.ndarray, g: np.ndarray, step: int = 1) -> np.ndarray:
    """'valid' correlation of the last two axes of ``x`` with ``outer(g, g)`` (odd-length, symmetric ``g``).

    Keeps only the outputs whose window lies inside the image (each side shrinks by ``len(g) - 1``) and,
    with ``step``, only every step-th of those rows and columns, starting with the first. The 2-D kernel
    is applied as two 1-D passes, so use it only where the definitions say the summation order does not
    matter.
    """
    half = (len(g) - 1) // 2
    rows, cols = x.shape[-2:]
    # crop (and subsample) the rows before the second pass so that it only does the work that is kept
    out = ndimage.correlate1d(x, g, axis=-2, mode="constant", cval=0.0)[..., half : rows - half : step, :]
    out = ndimage.correlate1d(out, g, axis=-1, mode="constant", cval=0.0)
    return out[..., :, half : cols - half : step]
