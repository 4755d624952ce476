"""Information-theoretic metrics: Q_NCIE, Q_MI, EN, MI (histograms of 256 integer grey levels).

Conventions: histograms have 256 bins, one per integer level. EN and MI use the raw levels
(non-integer inputs are rounded half away from zero and clipped to 0..255, as MATLAB ``uint8()``);
Q_NCIE and Q_MI first stretch each image with Liu's ``normalize1``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._common import Triple, entropies_bits, entropy_bits, joint_histogram

NAN = float("nan")


def _raw_joint(t: Triple, x: str, y: str) -> np.ndarray:
    return t.cached(("joint_raw", x, y), lambda: joint_histogram(t.levels(x), t.levels(y)))


def _norm_joint(t: Triple, x: str, y: str) -> np.ndarray | None:
    def make() -> np.ndarray | None:
        nx, ny = t.normalized(x), t.normalized(y)
        if nx is None or ny is None:
            return None
        return joint_histogram(nx, ny)

    return t.cached(("joint_normalize1", x, y), make)


def _norm_entropies(t: Triple, x: str, y: str) -> tuple[float, float, float] | None:
    """(H(X), H(Y), H(X,Y)) in bits of the normalize1'd pair, or None when undefined."""

    def make() -> tuple[float, float, float] | None:
        joint = _norm_joint(t, x, y)
        return None if joint is None else entropies_bits(joint)

    return t.cached(("entropies_normalize1", x, y), make)


def q_ncie_of(t: Triple) -> float:
    """Q_NCIE of a prepared :class:`Triple` (see :func:`q_ncie`)."""
    ncc = {}
    for x, y in (("a", "b"), ("a", "f"), ("b", "f")):
        ent = _norm_entropies(t, x, y)
        if ent is None:
            return NAN
        hx, hy, hxy = ent
        # Nonlinear correlation coefficient with entropies in log base 256 (bits / 8).
        ncc[x + y] = (hx + hy - hxy) / 8.0
    r = np.array(
        [
            [1.0, ncc["ab"], ncc["af"]],
            [ncc["ab"], 1.0, ncc["bf"]],
            [ncc["af"], ncc["bf"], 1.0],
        ]
    )
    k = 3.0
    lam = np.linalg.eigvalsh(r) / k
    # For real images the NCCs are well below 1 and R is positive definite. A clearly negative
    # eigenvalue has no real entropy (the original returns a complex number): NaN. Round-off
    # around a zero eigenvalue is dropped (0 log 0 = 0).
    if lam.min() < -1e-12:
        return NAN
    lam = lam[lam > 0]
    h_r = -float(np.sum(lam * np.log2(lam))) / 8.0
    return 1.0 - h_r


def q_ncie(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """Q_NCIE (Wang et al., ``metricWang``): 1 minus the nonlinear correlation entropy of (A, B, F).

    Convention: each image is stretched by ``normalize1`` (min-max to integer levels 0..255, round
    half away from zero; an all-zero image is kept, a constant non-zero image gives NaN). Pairwise
    NCC = H(X)+H(Y)-H(X,Y) from 256x256 joint histograms, entropies in log base 256. With the
    eigenvalues l_i of the 3x3 NCC matrix, Q_NCIE = 1 + sum (l_i/3) log_256(l_i/3). Range 0..1 (NaN
    where an image is constant and non-zero, or the NCC matrix has a negative eigenvalue).
    """
    return q_ncie_of(Triple(a, b, f))


def q_mi_of(t: Triple) -> float:
    """Q_MI of a prepared :class:`Triple` (see :func:`q_mi`)."""
    total = 0.0
    for source in ("a", "b"):
        ent = _norm_entropies(t, source, "f")
        if ent is None:
            return NAN
        hx, hf, hxf = ent
        if hx + hf == 0:  # both images flat: 0/0 in the original
            return NAN
        total += (hx + hf - hxf) / (hf + hx)
    return 2.0 * total


def q_mi(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """Q_MI (Hossny's normalised mutual information, Liu's ``metricMI(..., 1)``).

    Convention: each image is stretched by ``normalize1`` first; entropies in bits from 256x256
    joint histograms. Q_MI = 2 [I(A,F)/(H(A)+H(F)) + I(B,F)/(H(B)+H(F))], range 0..2.
    NaN when an image is constant and non-zero, or when all three are all-zero.
    """
    return q_mi_of(Triple(a, b, f))


def en_of(t: Triple) -> float:
    """EN of a prepared :class:`Triple` (see :func:`en`)."""
    counts = np.bincount(t.levels("f").ravel(), minlength=256).astype(np.float64)
    return entropy_bits(counts / counts.sum())


def en(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """EN: Shannon entropy of the fused image's 256-bin histogram, in bits (MATLAB ``entropy`` on uint8).

    Convention: F as uint8 (rounded half away from zero, clipped to 0..255); A and B are unused.
    Range 0..8.
    """
    return en_of(Triple(a, b, f))


def mutual_information_bits(joint_counts: np.ndarray) -> float:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) in bits from a joint histogram of counts."""
    hx, hy, hxy = entropies_bits(joint_counts)
    return hx + hy - hxy


def mi_of(t: Triple) -> float:
    """MI of a prepared :class:`Triple` (see :func:`mi`)."""
    return sum(mutual_information_bits(_raw_joint(t, x, "f")) for x in ("a", "b"))


def mi(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
    """MI (``MI_bits``): I(A;F) + I(B;F) in bits, a sum over the two sources.

    Convention: 256x256 joint histograms of the raw grey levels (rounded half away from zero and
    clipped to 0..255 if not integers); no normalisation. Range 0..16. The CDDFuse evaluator
    reports the same sum in nats (times ln 2).
    """
    return mi_of(Triple(a, b, f))
