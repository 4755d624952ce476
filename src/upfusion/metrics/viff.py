"""VIFF: visual information fidelity for fusion (Han et al. 2013, ``VIFF_Public``)."""

from __future__ import annotations

import numpy as np

from ._hard_common import as_float_image, correlate_valid_sep, gauss_1d

SIGMA_N_SQ = 0.005 * 255 * 255  # visual noise variance on the 0..255 scale
_SCALE_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
_TINY = 1e-10


def _source_maps(
    mu_x: np.ndarray, sq_x: np.ndarray, mu_f: np.ndarray, sq_f: np.ndarray, xf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gain g, VID and VIND maps of one source at one scale (base-10 logs), with the original's clamps."""
    var_x = np.maximum(sq_x - mu_x * mu_x, 0.0)
    var_f = np.maximum(sq_f - mu_f * mu_f, 0.0)
    cov = xf - mu_x * mu_f
    g = cov / (var_x + _TINY)
    sv_sq = var_f - g * cov
    # clamps in the original's order, each on the current values
    flat_x = var_x < _TINY
    np.copyto(g, 0.0, where=flat_x)
    np.copyto(sv_sq, var_f, where=flat_x)
    np.copyto(var_x, 0.0, where=flat_x)
    flat_f = var_f < _TINY
    np.copyto(g, 0.0, where=flat_f)
    np.copyto(sv_sq, 0.0, where=flat_f)
    negative = g < 0
    np.copyto(sv_sq, var_f, where=negative)
    np.copyto(g, 0.0, where=negative)
    np.copyto(sv_sq, _TINY, where=sv_sq <= _TINY)
    vid = np.log10(1.0 + g * g * var_x / (sv_sq + SIGMA_N_SQ))
    vind = np.log10(1.0 + var_x / SIGMA_N_SQ)
    return g, vid, vind


def viff(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """VIFF (Han et al. 2013) on raw 0..255 single-channel images, visual noise 0.005 * 255^2.

    Four scales with gauss(N, N/5), N = 17, 9, 5, 3, 'valid' filtering and [0::2, 0::2] subsampling
    after filtering with the scale's own window. At each pixel the source with the smaller gain g is used
    (ties take B); F_s = sum(VID + 1e-7) / sum(VIND + 1e-7) and VIFF = sum_s p_s F_s with
    p = [1, 0, 0.15, 1] / 2.15. Logarithms are base 10.
    """
    x = np.stack([as_float_image(a), as_float_image(b), as_float_image(f)])
    total = 0.0
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        g = gauss_1d(n, n / 5.0)
        if scale > 0:
            x = correlate_valid_sep(x, g, step=2)
        src_a, src_b, fused = x
        # all local moments of this scale in one batched filtering pass
        products = [src_a * src_a, src_b * src_b, fused * fused, src_a * fused, src_b * fused]
        moments = correlate_valid_sep(np.stack([src_a, src_b, fused, *products]), g)
        mu_a, mu_b, mu_f, sq_a, sq_b, sq_f, af, bf = moments
        g_a, vid_a, vind_a = _source_maps(mu_a, sq_a, mu_f, sq_f, af)
        g_b, vid_b, vind_b = _source_maps(mu_b, sq_b, mu_f, sq_f, bf)
        take_a = g_a < g_b
        vid = np.where(take_a, vid_a, vid_b)
        vind = np.where(take_a, vind_a, vind_b)
        ratio = np.sum(vid + 1e-7) / np.sum(vind + 1e-7)
        total += _SCALE_WEIGHTS[scale] * ratio
    return float(total)
