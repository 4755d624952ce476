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


# pixels per block of the per-pixel stage: small enough to stay in cache, large enough that the Python
# overhead per block is negligible
_BLOCK_PIXELS = 16384


def _median(x: np.ndarray) -> float:
    """np.median of a 1-D array (mean of the two middle values for an even count), usually faster.

    The middle order statistics are located within a narrow bracket estimated from a strided sample,
    so only the values inside it are partitioned; if the bracket misses, the full median is taken.
    """
    n = x.size
    middle = [n // 2 - 1, n // 2] if n % 2 == 0 else [n // 2]
    sample = np.sort(x[:: max(1, n // 4096)])
    lo = sample[max(0, int(0.45 * sample.size) - 1)]
    hi = sample[min(sample.size - 1, int(0.55 * sample.size) + 1)]
    below = np.count_nonzero(x < lo)
    inside = x[(x >= lo) & (x <= hi)]
    if n < 8192 or below > middle[0] or below + inside.size <= middle[-1]:
        return float(np.median(x))
    part = np.partition(inside, [k - below for k in middle])
    return float(np.mean(part[[k - below for k in middle]]))


def _noise_threshold(a1_sq: np.ndarray, noise_factor: float) -> float:
    """Kovesi's analytic noise threshold from the squared smallest-scale amplitude, divided by 1.7."""
    m2 = _median(a1_sq.ravel()) / np.log(2.0)  # mean noise energy squared: median / ln 2 = -median / ln 0.5
    tau = np.sqrt(noise_factor * m2 / 2.0)  # Rayleigh parameter of the total noise energy
    mean_noise = tau * np.sqrt(np.pi / 2.0)
    sigma_noise = np.sqrt((2.0 - np.pi / 2.0) * tau * tau)
    return float((mean_noise + K_NOISE * sigma_noise) / 1.7)


def _orientation_block(eo: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted energy W*E and amplitude sum for a block of pixels of one orientation.

    ``eo`` holds the complex responses of all scales, shape (n_s, ...). With Z = sumE + i sumO and
    X = |Z| + eps, the energy about the mean phase vector (mE, mO) = (sumE, sumO) / X is rearranged so
    that X divides once: sum_s (e mE + o mO) = |Z|^2 / X and |e mO - o mE| = |Im(eo * conj(Z))| / X.
    """
    amp = np.abs(eo)
    sum_a = amp.sum(axis=0)
    max_a = np.maximum(np.maximum(amp[0], amp[1]), np.maximum(amp[2], amp[3]))
    total = eo.sum(axis=0)
    sum_e = total.real
    sum_o = total.imag
    norm_sq = sum_e * sum_e + sum_o * sum_o
    xnorm = np.sqrt(norm_sq) + EPS
    deviation = np.abs((eo * np.conj(total)).imag).sum(axis=0)
    energy = (norm_sq - deviation) / xnorm
    energy = np.maximum(energy - threshold, 0.0)
    width = (sum_a / (max_a + EPS)) / N_SCALE
    weight = 1.0 / (1.0 + np.exp((CUT_OFF - width) * G_SIGMOID))
    return weight * energy, sum_a


def phase_congruency(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (PC, M, m) of a 2-D image in raw grey levels (float64, R x C each).

    PC = sum_o W_o*E_o / (sum_o sum_s A_so + eps); M and m are the maximum and minimum moments of the
    covariance of the per-orientation PC_o (squares divided by n_o/2, cross term by n_o). PC_o = W*E / sum_A
    has no eps, as in the original: where all responses are exactly 0 (an all-black image) PC is 0 but
    M and m are NaN.
    """
    img = np.asarray(image, dtype=np.float64)
    rows, cols = img.shape
    log_gabor, spread, noise_factor = _filter_bank(rows, cols)
    spectrum = sfft.fft2(img)
    block = max(1, _BLOCK_PIXELS // cols)

    energy_all = np.zeros((rows, cols))
    amp_all = np.zeros((rows, cols))
    cov_a = np.zeros((rows, cols))
    cov_b = np.zeros((rows, cols))
    cov_c = np.zeros((rows, cols))
    eo = np.empty((N_SCALE, rows, cols), dtype=np.complex128)
    scratch = np.empty((rows, cols))
    # the spectrum times each radial part, reused by all orientations (filter H = log-Gabor * spread)
    spectrum_lg = spectrum * log_gabor

    for o in range(N_ORIENT):
        for s in range(N_SCALE):
            np.multiply(spectrum_lg[s], spread[o], out=eo[s])
            sfft.ifft2(eo[s], overwrite_x=True)  # in place: eo[s] becomes the complex response
        a1_sq = np.square(np.abs(eo[0], out=scratch), out=scratch)
        threshold = _noise_threshold(a1_sq, noise_factor[o])
        angl = o * np.pi / N_ORIENT
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            weighted, sum_a = _orientation_block(eo[:, r0:r1], threshold)
            with np.errstate(invalid="ignore", divide="ignore"):
                pc_o = weighted / sum_a  # no eps: 0/0 only for a constant image, NaN as in the original
            energy_all[r0:r1] += weighted
            amp_all[r0:r1] += sum_a
            pc_c = pc_o * np.cos(angl)
            pc_s = pc_o * np.sin(angl)
            cov_a[r0:r1] += pc_c * pc_c
            cov_b[r0:r1] += pc_s * pc_s
            cov_c[r0:r1] += pc_c * pc_s

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
    return np.array(
        [
            _noise_threshold(np.abs(sfft.ifft2(spectrum * (log_gabor[0] * spread[o]))) ** 2, noise_factor[o])
            for o in range(N_ORIENT)
        ]
    )
