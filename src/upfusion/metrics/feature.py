"""Feature-based fusion metrics: Q_P (Zhao et al. 2007, ``metricZhao``) and Q_G (Liu's ``metricXydeas``).

Both take raw grey levels 0..255 (no normalisation) and use zero-padded 'same' filtering.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._hard_common import as_float_image, gauss_1d
from .phase_congruency import phase_congruency

_QP_MASK_THRESHOLD = 0.1
_QP_C = 1e-4
_GUARD = 1e-5


# rows per block of the per-pixel stage of Q_P's local statistics (keeps temporaries small)
_ZHAO_BLOCK_ROWS = 32


def _zhao_score(stats: np.ndarray, masks: np.ndarray, count_max: int) -> float:
    """P_Y for one feature: sum over pixels of max(r_A, r_B, r_max) / number of mask_max pixels.

    ``stats`` holds the local (gauss(11, 1.5), zero padding) statistics, stacked as mean of U (3 sources),
    mean of U^2 (3), mean of U*V (3), mean of V, mean of V^2; ``masks`` the (3, R, C) source masks.
    """
    total = 0.0
    for r0 in range(0, stats.shape[1], _ZHAO_BLOCK_ROWS):
        st = stats[:, r0 : r0 + _ZHAO_BLOCK_ROWS]
        mu_u, sq_u, uv, mu_v, sq_v = st[0:3], st[3:6], st[6:9], st[9], st[10]
        var_u = sq_u - mu_u * mu_u
        var_v = sq_v - mu_v * mu_v
        cov = uv - mu_u * mu_v
        # abs of the product: round-off can make a variance slightly negative
        r = (cov + _QP_C) / (np.sqrt(np.abs(var_u * var_v)) + _QP_C)
        r = np.where(masks[:, r0 : r0 + _ZHAO_BLOCK_ROWS], r, 0.0)  # r only inside each source's own mask
        total += float(np.fmax(np.fmax(r[0], r[1]), r[2]).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / count_max)


def zhao_scores(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> tuple[float, float, float]:
    """The three factors (P_PC, P_M, P_m) of Q_P; see :func:`q_p`."""
    a, b, f = as_float_image(a), as_float_image(b), as_float_image(f)
    # each image's phase congruency is computed once and reused for all three features
    feats_a = phase_congruency(a)
    feats_b = phase_congruency(b)
    feats_f = phase_congruency(f)

    pc_a, pc_b = feats_a[0], feats_b[0]
    take_a = pc_a > pc_b  # strict: ties take B
    pc_max = np.where(take_a, pc_a, pc_b)
    masks = np.stack([pc_a > _QP_MASK_THRESHOLD, pc_b > _QP_MASK_THRESHOLD, pc_max > _QP_MASK_THRESHOLD])
    count_max = int(masks[2].sum())
    g = gauss_1d(11, 1.5)

    # buffers reused by the three features (fresh large arrays are costly to fault in)
    maps = np.empty((11,) + a.shape)
    partial = np.empty_like(maps)
    stats = np.empty_like(maps)
    scores = []
    for y_a, y_b, y_f in zip(feats_a, feats_b, feats_f, strict=True):
        # sources masked by their own PC mask (0 outside), the fused map unmasked
        maps[0:3] = 0.0
        np.copyto(maps[0], y_a, where=masks[0])
        np.copyto(maps[1], y_b, where=masks[1])
        np.copyto(maps[2], np.where(take_a, y_a, y_b), where=masks[2])
        np.multiply(maps[0:3], maps[0:3], out=maps[3:6])
        np.multiply(maps[0:3], y_f, out=maps[6:9])
        maps[9] = y_f
        np.multiply(y_f, y_f, out=maps[10])
        # gauss(11, 1.5) 'same' with zero padding, as two 1-D passes over all 11 maps at once
        ndimage.correlate1d(maps, g, axis=-2, mode="constant", output=partial)
        ndimage.correlate1d(partial, g, axis=-1, mode="constant", output=stats)
        scores.append(_zhao_score(stats, masks, count_max))
    return scores[0], scores[1], scores[2]


def q_p(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_P (Zhao et al. 2007, ``metricZhao``): P_PC * P_M * P_m.

    Phase congruency and its moments M, m per image on raw 0..255 (:func:`phase_congruency`). Sources
    are masked at PC > 0.1, the fused maps are not; the maximum-source maps take A where PC_A > PC_B
    (ties take B). Local statistics are gauss(11, 1.5) correlations with zero padding ('same'); each
    factor is the sum of max(r_A, r_B, r_max) over pixels divided by the number of pixels with
    PC_max > 0.1 (NaN if there are none).
    """
    p_pc, p_big_m, p_small_m = zhao_scores(a, b, f)
    return float(p_pc * p_big_m * p_small_m)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel correlation responses with zero padding: gx = right minus left, gy = below minus above."""
    p = np.pad(x, 1)
    # vertical smoothing [1, 2, 1] then horizontal difference, and the transpose; integer-exact sums
    sv = p[:-2, :] + 2.0 * p[1:-1, :] + p[2:, :]
    sh = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]
    gx = sv[:, 2:] - sv[:, :-2]
    gy = sh[2:, :] - sh[:-2, :]
    return gx, gy


def _strength_angle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = _sobel(x)
    strength = np.sqrt(gx * gx + gy * gy)
    gx = np.where(gx == 0, _GUARD, gx)
    return strength, np.arctan(gy / gx)  # atan of the quotient, not atan2


def _guard(g: np.ndarray) -> np.ndarray:
    return np.where(g == 0, _GUARD, g)


def q_g(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Q_G (Liu's ``metricXydeas``, not Qabf): gradient-preservation score weighted by source strength.

    Sobel responses by correlation with zero padding on raw 0..255; angle atan(gy/gx) with gx = 0 replaced
    by 1e-5; strength ratios with exact zeros guarded to 1e-5 in the original's order (g_F is guarded
    after the first ratio of the A pass); sigmoids with k_g = -10, sigma_g = 0.5, k_a = -20, sigma_a = 0.75;
    result is the mean of per-pixel weighted ratios.
    """
    a, b, f = as_float_image(a), as_float_image(b), as_float_image(f)
    g_a, alpha_a = _strength_angle(a)
    g_b, alpha_b = _strength_angle(b)
    g_f, alpha_f = _strength_angle(f)

    # source A: the first ratio still sees the unguarded g_F (so it is 0 where g_F = 0)
    a_larger = g_a > g_f
    g_a = _guard(g_a)
    ratio1 = g_f / g_a
    g_f = _guard(g_f)
    g_af = np.where(a_larger, ratio1, g_a / g_f)
    # source B: g_F stays guarded from here on
    b_larger = g_b > g_f
    g_b = _guard(g_b)
    g_bf = np.where(b_larger, g_f / g_b, g_b / g_f)

    a_af = np.abs(np.abs(alpha_a - alpha_f) - np.pi / 2) * (2 / np.pi)
    a_bf = np.abs(np.abs(alpha_b - alpha_f) - np.pi / 2) * (2 / np.pi)

    def preservation(gg: np.ndarray, aa: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-10.0 * (gg - 0.5))) * (1.0 / (1.0 + np.exp(-20.0 * (aa - 0.75))))

    q_af = preservation(g_af, a_af)
    q_bf = preservation(g_bf, a_bf)
    return float(np.mean((q_af * g_a + q_bf * g_b) / (g_a + g_b)))
