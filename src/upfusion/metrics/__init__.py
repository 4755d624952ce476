"""Image-fusion metrics that reproduce the public MATLAB originals (numpy/scipy, float64).

Every metric is a function ``metric(a, b, f) -> float`` of three 2-D grey images of the same
size (any numeric dtype, grey levels 0..255, never 0..1): ``a`` and ``b`` are the sources,
``f`` the fused image. Each function's docstring states its convention (padding, log base,
range). The exact definitions, and the MATLAB code they follow, are in the project's
``reference/metrics/DEFINITIONS.md``.

- ``METRICS``: name -> function, in the order of the definitions' table.
- ``PAPER_METRICS``: the five metrics of the UP-Fusion paper.
- ``compute(a, b, f, names)``: several metrics of one triple, sharing intermediate work
  (histograms, Sobel maps, filtered moments); ``compat="cddfuse"`` gives the CDDFuse Python
  evaluator's conventions instead (see :mod:`upfusion.metrics.cddfuse`).

A metric module may also define ``<function>_of(triple: Triple) -> float``; ``compute`` then
calls that with its shared :class:`Triple`, whose cache holds e.g. the VIF scale maps
(``vif.vif_terms``), normalize1'd images and joint histograms.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable

from numpy.typing import ArrayLike

from . import cddfuse
from ._common import Triple
from .information import en, en_of, mi, mi_of, q_mi, q_mi_of, q_ncie, q_ncie_of
from .qabf import qabf, qabf_of
from .ssim import ssim, ssim_l255, ssim_l255_of, ssim_of
from .statistics import ag, ag_of, cc, cc_of, psnr, psnr_of, scd, scd_of, sd, sd_of, sf, sf_of
from .vif import vif, vif_of

Metric = Callable[[ArrayLike, ArrayLike, ArrayLike], float]


def _external(module: str, function: str) -> Metric:
    """A metric that lives in ``upfusion.metrics.<module>`` (written separately).

    If that module cannot be imported yet, a stand-in that imports it on first call keeps this
    package importable and its other metrics usable.
    """
    try:
        return getattr(importlib.import_module(f"upfusion.metrics.{module}"), function)
    except (ImportError, AttributeError):
        pass

    def metric(a: ArrayLike, b: ArrayLike, f: ArrayLike) -> float:
        return resolve(metric)(a, b, f)

    metric.__name__ = metric.__qualname__ = function
    metric.__module__ = f"upfusion.metrics.{module}"
    metric.__doc__ = f"See upfusion.metrics.{module}.{function} (imported on first use)."
    metric._target = (f"upfusion.metrics.{module}", function)  # type: ignore[attr-defined]
    return metric


def resolve(metric: Metric) -> Metric:
    """The real function behind a registry entry (imports a lazily loaded module)."""
    target = getattr(metric, "_target", None)
    if target is None:
        return metric
    module, function = target
    return getattr(importlib.import_module(module), function)


METRICS: dict[str, Metric] = {
    "Q_NCIE": q_ncie,
    "Q_P": _external("feature", "q_p"),
    "VIF": vif,
    "SSIM": ssim,
    "Qabf": qabf,
    "SSIM_L255": ssim_l255,
    "VIFF": _external("viff", "viff"),
    "Q_G": _external("feature", "q_g"),
    "Q_Y": _external("structural", "q_y"),
    "Q_CB": _external("structural", "q_cb"),
    "Q_MI": q_mi,
    "Q_TE": _external("tsallis", "q_te"),
    "EN": en,
    "SD": sd,
    "SF": sf,
    "AG": ag,
    "MI": mi,
    "SCD": scd,
    "CC": cc,
    "PSNR": psnr,
}

PAPER_METRICS: tuple[str, ...] = ("Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf")

# Versions that take a prepared Triple, so that compute() shares work between metrics.
_OF_TRIPLE: dict[str, Callable[[Triple], float]] = {
    "Q_NCIE": q_ncie_of,
    "VIF": vif_of,
    "SSIM": ssim_of,
    "Qabf": qabf_of,
    "SSIM_L255": ssim_l255_of,
    "Q_MI": q_mi_of,
    "EN": en_of,
    "SD": sd_of,
    "SF": sf_of,
    "AG": ag_of,
    "MI": mi_of,
    "SCD": scd_of,
    "CC": cc_of,
    "PSNR": psnr_of,
}

COMPAT_MODES: tuple[str, ...] = ("cddfuse",)


def metric_names(spec: str | Iterable[str]) -> list[str]:
    """Metric names from ``"paper"``, ``"all"``, ``"NAME,NAME"`` or a list (case-insensitive).

    Raises ValueError naming an unknown metric and the known ones.
    """
    if isinstance(spec, str):
        if spec.strip().lower() == "paper":
            return list(PAPER_METRICS)
        if spec.strip().lower() == "all":
            return list(METRICS)
        spec = [s for s in spec.split(",") if s.strip()]
    by_lower = {name.lower(): name for name in METRICS}
    names: list[str] = []
    for raw in spec:
        name = by_lower.get(raw.strip().lower())
        if name is None:
            raise ValueError(f"unknown metric {raw.strip()!r}; known: paper, all, {', '.join(METRICS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no metric named")
    return names


def output_name(name: str, compat: str | None = None) -> str:
    """The key under which ``compute`` reports a metric (``<NAME>_cddfuse`` where the convention differs)."""
    if compat == "cddfuse" and name in cddfuse.COMPAT:
        return name + cddfuse.SUFFIX
    return name


def convention(name: str, compat: str | None = None) -> str:
    """One line saying what a metric's value is (its docstring's first sentence, or the compat rule)."""
    if compat == "cddfuse" and name in cddfuse.COMPAT:
        return cddfuse.COMPAT[name][1]
    doc = (resolve(METRICS[name]).__doc__ or name).strip()
    text = " ".join(doc.split("\n\n")[0].split())
    return re.sub(r":\w+:`([^`]*)`", r"\1", text).replace("``", "")  # plain text, no reST markup


def _external_value(name: str, triple: Triple) -> float:
    """A metric from another module; one that also offers ``<function>_of(triple)`` shares the cache."""
    function = resolve(METRICS[name])
    module = importlib.import_module(function.__module__)
    of_triple = getattr(module, function.__name__ + "_of", None)
    if callable(of_triple):
        return of_triple(triple)
    return function(triple.a, triple.b, triple.f)


def _check_compat(compat: str | None) -> None:
    if compat is not None and compat not in COMPAT_MODES:
        raise ValueError(f"unknown compat mode {compat!r}; known: {', '.join(COMPAT_MODES)}")


# Metrics that share no intermediate work with the others and take a large part of the time
# (phase congruency: about half of all 20): with threads > 1 they run on a second thread.
_SEPARATE = ("Q_P",)


def _one(name: str, triple: Triple, compat: str | None) -> float:
    if compat == "cddfuse" and name in cddfuse.COMPAT:
        return float(cddfuse.COMPAT[name][0](triple))
    if name in _OF_TRIPLE:
        return float(_OF_TRIPLE[name](triple))
    return float(_external_value(name, triple))


def compute(
    a: ArrayLike,
    b: ArrayLike,
    f: ArrayLike,
    names: str | Iterable[str] = PAPER_METRICS,
    *,
    compat: str | None = None,
    threads: int = 1,
) -> dict[str, float]:
    """Several metrics of one triple, in the order asked, sharing intermediate results.

    ``names``: metric names, or ``"paper"``, ``"all"``, ``"NAME,NAME"``. ``compat="cddfuse"``
    reports VIF, SSIM, MI, AG and PSNR with the CDDFuse Python evaluator's conventions under
    ``<NAME>_cddfuse`` (see :mod:`upfusion.metrics.cddfuse`); other metrics are unchanged.
    ``threads=2`` computes Q_P on a second thread while the others run (numpy, scipy.ndimage
    and scipy.fft release the GIL); the values do not depend on it.
    """
    _check_compat(compat)
    triple = Triple(a, b, f)
    wanted = metric_names(names)
    values: dict[str, float] = {}
    separate = [n for n in wanted if n in _SEPARATE] if threads > 1 and len(wanted) > 1 else []
    if separate:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            futures = {n: pool.submit(_one, n, triple, compat) for n in separate}
            for name in wanted:
                if name not in futures:
                    values[name] = _one(name, triple, compat)
            values.update({n: fut.result() for n, fut in futures.items()})
    else:
        for name in wanted:
            values[name] = _one(name, triple, compat)
    return {output_name(name, compat): values[name] for name in wanted}


__all__ = [
    "METRICS",
    "PAPER_METRICS",
    "COMPAT_MODES",
    "compute",
    "metric_names",
    "output_name",
    "convention",
    "resolve",
    "Triple",
    "q_ncie",
    "vif",
    "ssim",
    "qabf",
    "ssim_l255",
    "q_mi",
    "en",
    "sd",
    "sf",
    "ag",
    "mi",
    "scd",
    "cc",
    "psnr",
]
