"""Phase congruency as used by Q_P: Kovesi's ``phasecong3`` as modified in Liu's ``myphasecong3``.

Conventions (DEFINITIONS_hard.md, section 1.1): input is raw grey levels 0..255 (no normalisation), the
DFT is numpy/MATLAB's unnormalised fft2 with ifft2 carrying 1/(R*C), logarithms are natural, and the
noise threshold is Kovesi's analytic estimate divided by 1.7. Returns the PC map and the maximum and
minimum moments M and m of the orientation covariance.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

N_SCALE = 4
N_ORIENT = 6
MIN_WAVELENGTH = 3.0
MULT = 2.1
SIGMA_ON_F = 0.55
D_THETA_ON_SIGMA = 1.2
K_NOISE = 2.0
CUT_OFF = 0.5
G_SIGMOID = 10.0
EPS = 1e-4


def _centred_coords(n: int) -> np.ndarray:
    """Filter-grid coordinate along one axis: -0.5..0.5 inclusive for odd n, -0.5..0.5-1/n for even n."""
    j = np.arange(n, dtype=np.float64)
    if n % 2:
        return (j - (n - 1) / 2) / (n - 1) if n > 1 else np.zeros(1)
    return (j - n / 2) / n


def _flip_freq(h: np.ndarray) -> np.ndarray:
    """h(-k) for an unshifted spectrum: index i -> (-i) mod n on both axes."""
    return np.roll(h[::-1, ::-1], 1, axis=(0, 1))


@lru_cache(maxsize=2)
def _filter_bank(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-Gabor radial parts (n_s, R, C), angular spreads (n_o, R, C) and per-orientation noise factors.

    The noise factor K_o is (2*S_sq + 4*S_x) / EM_o, so that E_n2 = K_o * m2 (section 1.1, step 8).
    Cached per image size: the three images of a triple share it.
    """
    x = _centred_coords(cols)[None, :]
    y = _centred_coords(rows)[:, None]
    radius = np.sqrt(x * x + y * y)
    theta = np.arctan2(-y, x)  # minus sign on y as in the original
    radius[rows // 2, cols // 2] = 1.0  # avoid ln(0) at the centre; that sample is zeroed later
    radius = sfft.ifftshift(radius)
    theta = sfft.ifftshift(theta)
    sintheta = np.sin(theta)
    costheta = np.cos(theta)

    # low-pass uses a different grid (divisor is the size itself) and fftshift, not ifftshift: for an odd
    # side this offsets it by one sample from the log-Gabor filters, as in the original
    xl = ((np.arange(cols) - cols // 2) / cols)[None, :]
    yl = ((np.arange(rows) - rows // 2) / rows)[:, None]
    lowpass = sfft.fftshift(1.0 / (1.0 + (np.sqrt(xl * xl + yl * yl) / 0.45) ** 30))

    two_log_sq = 2.0 * np.log(SIGMA_ON_F) ** 2
    log_gabor = np.empty((N_SCALE, rows, cols))
    for s in range(N_SCALE):
        fo = 1.0 / (MIN_WAVELENGTH * MULT**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / two_log_sq) * lowpass
        lg[0, 0] = 0.0
        log_gabor[s] = lg

    theta_sigma = np.pi / N_ORIENT / D_THETA_ON_SIGMA
    spread = np.empty((N_ORIENT, rows, cols))
    noise_factor = np.empty(N_ORIENT)
    for o in range(N_ORIENT):
        angl = o * np.pi / N_ORIENT
        ds = sintheta * np.cos(angl) - costheta * np.sin(angl)
        dc = costheta * np.cos(angl) + sintheta * np.sin(angl)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread[o] = np.exp(-(dtheta * dtheta) / (2.0 * theta_sigma**2))

        filters = log_gabor * spread[o]
        em = np.sum(filters[0] ** 2)
        # sum over pixels of h_s*h_t with h = Re(ifft2(H))*sqrt(RC): by Parseval this is the sum over
        # frequencies of the even parts (H(k)+H(-k))/2, which avoids 24 inverse FFTs
        even = np.stack([(f + _flip_freq(f)) / 2.0 for f in filters])
        s_sq = sum(np.sum(even[s] * even[s]) for s in range(N_SCALE))
        s_x = sum(np.sum(even[s] * even[t]) for s in range(N_SCALE) for t in range(s + 1, N_SCALE))
        noise_factor[o] = (2.0 * s_sq + 4.0 * s_x) / em

    for arr in (log_gabor, spread, noise_factor):
        arr.flags.writeable = False
    return log_gabor, spread, noise_factor


def phase_congruency(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (PC, M, m) of a 2-D image in raw grey levels (float64, R x C each).

    PC = sum_o W_o*E_o / (sum_o sum_s A_so + eps); M and m are the maximum and minimum moments of the
    covariance of the per-orientation PC_o (squares divided by n_o/2, cross term by n_o). A constant image
    gives NaN, as the original does.
    """
    img = np.asarray(image, dtype=np.float64)
    rows, cols = img.shape
    log_gabor, spread, noise_factor = _filter_bank(rows, cols)
    spectrum = sfft.fft2(img)

    energy_all = np.zeros((rows, cols))
    amp_all = np.zeros((rows, cols))
    cov_a = np.zeros((rows, cols))
    cov_b = np.zeros((rows, cols))
    cov_c = np.zeros((rows, cols))

    for o in range(N_ORIENT):
        angl = o * np.pi / N_ORIENT
        # responses at all scales of this orientation in one batched inverse FFT
        eo = sfft.ifft2(spectrum * (log_gabor * spread[o]), axes=(-2, -1), overwrite_x=True)
        even = eo.real
        odd = eo.imag
        amp = np.abs(eo)
        sum_e = even.sum(axis=0)
        sum_o = odd.sum(axis=0)
        sum_a = amp.sum(axis=0)
        max_a = amp.max(axis=0)

        # energy about the mean phase vector
        xnorm = np.sqrt(sum_e * sum_e + sum_o * sum_o) + EPS
        mean_e = sum_e / xnorm
        mean_o = sum_o / xnorm
        energy = np.sum(even * mean_e + odd * mean_o - np.abs(even * mean_o - odd * mean_e), axis=0)

        # Kovesi's analytic noise estimate from the smallest scale of this orientation
        a1 = amp[0]
        m2 = np.median(a1 * a1) / np.log(2.0)
        tau = np.sqrt(noise_factor[o] * m2 / 2.0)
        mean_noise = tau * np.sqrt(np.pi / 2.0)
        sigma_noise = np.sqrt((2.0 - np.pi / 2.0) * tau * tau)
        threshold = (mean_noise + K_NOISE * sigma_noise) / 1.7
        energy = np.maximum(energy - threshold, 0.0)

        width = (sum_a / (max_a + EPS)) / N_SCALE
        weight = 1.0 / (1.0 + np.exp((CUT_OFF - width) * G_SIGMOID))
        weighted = weight * energy
        with np.errstate(invalid="ignore", divide="ignore"):
            pc_o = weighted / sum_a  # no eps here: 0/0 only for a constant image, NaN as in the original

        energy_all += weighted
        amp_all += sum_a
        pc_c = pc_o * np.cos(angl)
        pc_s = pc_o * np.sin(angl)
        cov_a += pc_c * pc_c
        cov_b += pc_s * pc_s
        cov_c += pc_c * pc_s

    pc = energy_all / (amp_all + EPS)
    cov_a /= N_ORIENT / 2
    cov_b /= N_ORIENT / 2
    cov_c /= N_ORIENT
    denom = np.sqrt(cov_c * cov_c + (cov_a - cov_b) ** 2) + EPS
    big_m = (cov_a + cov_b + denom) / 2.0
    small_m = (cov_a + cov_b - denom) / 2.0
    return pc, big_m, small_m


def noise_thresholds(image: np.ndarray) -> np.ndarray:
    """Per-orientation noise thresholds T_o (already divided by 1.7); for checking against references."""
    img = np.asarray(image, dtype=np.float64)
    log_gabor, spread, noise_factor = _filter_bank(*img.shape)
    spectrum = sfft.fft2(img)
    out = np.empty(N_ORIENT)
    for o in range(N_ORIENT):
        a1 = np.abs(sfft.ifft2(spectrum * (log_gabor[0] * spread[o])))
        tau = np.sqrt(noise_factor[o] * (np.median(a1 * a1) / np.log(2.0)) / 2.0)
        out[o] = (tau * np.sqrt(np.pi / 2.0) + K_NOISE * np.sqrt((2.0 - np.pi / 2.0) * tau * tau)) / 1.7
    return out
