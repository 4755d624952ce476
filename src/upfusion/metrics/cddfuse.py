"""The CDDFuse Python evaluator's conventions (``Evaluator.py`` as run by its ``test_IVF.py``).

Many papers report these numbers rather than the MATLAB originals. Where they differ from the
project's metric, the compatible value is reported under ``<NAME>_cddfuse``:

| project name | CDDFuse value | reported as |
|---|---|---|
| VIF | its "VIFF": vifp_mscale(A,F) + vifp_mscale(B,F), a sum | ``VIF_cddfuse`` |
| SSIM | ssim(F,A) + ssim(F,B) of scikit-image < 0.20 (7x7 box, data_range 2), a sum | ``SSIM_cddfuse`` |
| MI | I(A,F) + I(B,F) in nats (MI in bits times ln 2) | ``MI_cddfuse`` |
| AG | the sum of the gradient magnitudes over H*W, not (H-1)(W-1) | ``AG_cddfuse`` |
| PSNR | 10 log10(max(F)^2 / MSE): the peak is the fused image's maximum, not 255 | ``PSNR_cddfuse`` |

EN, SD, SF, CC, SCD and Qabf agree with the project's metrics (to float32 round-off in the
original) and keep their names. Scikit-image >= 0.20 makes the original's SSIM raise an error;
``SSIM_cddfuse`` is the value it gave with the older versions the published numbers came from.

Everything here is float64; the original reads float32 images. That changes most values only
at ~1e-7, but SSIM's C2 = 3.6e-3 is small against float32 round-off of local variances of
0..255 data, so ``SSIM_cddfuse`` can differ from a float32 run in the third or fourth digit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._common import Triple
from .information import mi_of
from .ssim import ssim_legacy_skimage
from .statistics import ag_sum, mse_of
from .vif import vifp_mscale

SUFFIX = "_cddfuse"


def vif_sum_of(t: Triple) -> float:
    """CDDFuse's "VIFF": vifp_mscale(A,F) + vifp_mscale(B,F) (the sum, not the mean)."""
    return vifp_mscale(t, "a") + vifp_mscale(t, "b")


def ssim_sum_of(t: Triple) -> float:
    """CDDFuse's SSIM: legacy scikit-image SSIM(F,A) + SSIM(F,B) (a sum, range -2..2)."""
    return ssim_legacy_skimage(t.f, t.a) + ssim_legacy_skimage(t.f, t.b)


def mi_nats_of(t: Triple) -> float:
    """CDDFuse's MI: I(A,F) + I(B,F) in nats."""
    return mi_of(t) * math.log(2.0)


def ag_hw_of(t: Triple) -> float:
    """CDDFuse's AG: sum of sqrt((gx^2+gy^2)/2) over all pixels, divided by H*W."""
    return t.cached("ag_sum", lambda: ag_sum(t.f)) / t.f.size


def psnr_peak_f_of(t: Triple) -> float:
    """CDDFuse's PSNR: 10 log10(max(F)^2 / MSE), MSE the mean of MSE(A,F) and MSE(B,F) on 0..255."""
    mse = mse_of(t)
    peak = float(t.f.max())
    if mse == 0:
        return math.inf if peak > 0 else float("nan")
    return -math.inf if peak == 0 else 10.0 * math.log10(peak * peak / mse)


# project name -> (function of a Triple, one-line convention)
COMPAT: dict[str, tuple[Callable[[Triple], float], str]] = {
    "VIF": (vif_sum_of, "CDDFuse 'VIFF': vifp_mscale(A,F) + vifp_mscale(B,F), a sum (2x VIF)"),
    "SSIM": (ssim_sum_of, "CDDFuse SSIM: skimage<0.20 SSIM(F,A) + SSIM(F,B), 7x7 box, data_range 2, a sum"),
    "MI": (mi_nats_of, "CDDFuse MI: I(A,F) + I(B,F) in nats"),
    "AG": (ag_hw_of, "CDDFuse AG: mean gradient magnitude over H*W pixels"),
    "PSNR": (psnr_peak_f_of, "CDDFuse PSNR: 10 log10(max(F)^2 / MSE) in dB"),
}
