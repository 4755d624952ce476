"""Comparing fusion methods on one dataset: the paper-style table and a picture grid (``upfusion report``).

- ``comparison_table(values)``: methods x metrics from plain dicts {method: {metric: value}},
  with the best value of every column marked (all methods that share it on an exact tie);
  ``table_from_results`` builds it from ``upfusion.evaluate.EvalResult`` objects and refuses
  results that were computed over different images.
- ``ComparisonTable.to_markdown()`` (best in bold) and ``.to_csv()`` (full precision, and a
  ``best`` column naming the metrics where the method is best).
- ``picture_grid(rows, labels)``: PNG bytes of a grid with one row per image pair (the two
  sources, then each method's result), drawn with matplotlib's Agg renderer (extra ``report``).

Every metric of ``upfusion.metrics`` is higher-is-better (``LOWER_IS_BETTER`` is empty): the
definitions (reference/metrics/DEFINITIONS.md) include no error or distance measure.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UpfusionError

if TYPE_CHECKING:
    from .evaluate import EvalResult

LOWER_IS_BETTER: frozenset[str] = frozenset()

# Picture-grid layout, in pixels (the PNG is drawn at 100 dpi, one figure pixel per image pixel).
GRID_DPI = 100
GRID_HEADER_PX = 28  # column titles above the first row
GRID_LABEL_PX = 24  # image stems, written upwards, left of each row
GRID_GAP_PX = 4  # between neighbouring panels


# ---------------------------------------------------------------------------- the table


def _is_lower_better(metric: str, lower_is_better: Collection[str]) -> bool:
    # Compat-mode keys such as "MI_cddfuse" keep the direction of their metric.
    return metric in lower_is_better or metric.split("_cddfuse")[0] in lower_is_better


def best_methods(
    values: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    lower_is_better: Collection[str] = LOWER_IS_BETTER,
) -> dict[str, list[str]]:
    """For each metric, the methods with the best value (several on an exact tie; none if all are NaN)."""
    best: dict[str, list[str]] = {}
    for metric in metrics:
        finite = {m: v[metric] for m, v in values.items() if not math.isnan(v[metric])}
        if not finite:
            best[metric] = []
            continue
        pick = min if _is_lower_better(metric, lower_is_better) else max
        top = pick(finite.values())
        best[metric] = [m for m, v in finite.items() if v == top]
    return best


def _fmt(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class ComparisonTable:
    """Mean metric values of several methods on one dataset, with the best of each column.

    ``values[method][metric]``: the mean; ``best[metric]``: the best methods; ``images[method]``:
    how many images the means cover; ``counts[method][metric]``: how many of them gave a value
    (the others were NaN and left out of the mean).
    """

    methods: list[str]
    metrics: list[str]
    values: dict[str, dict[str, float]]
    best: dict[str, list[str]]
    images: dict[str, int] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    lower_is_better: frozenset[str] = LOWER_IS_BETTER
    title: str = ""
    note: str = ""

    def _arrow(self, metric: str) -> str:
        return "↓" if _is_lower_better(metric, self.lower_is_better) else "↑"

    def best_of(self, method: str) -> list[str]:
        """The metrics in which ``method`` is best."""
        return [k for k in self.metrics if method in self.best[k]]

    def nan_gaps(self) -> list[tuple[str, str, int, int]]:
        """(method, metric, values, images) wherever some images gave NaN for the metric."""
        gaps = []
        for method in self.methods:
            n = self.images.get(method)
            for metric in self.metrics:
                k = self.counts.get(method, {}).get(metric)
                if n is not None and k is not None and k != n:
                    gaps.append((method, metric, k, n))
        return gaps

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table, one row per method, the best value of each column in bold."""
        lines = []
        sizes = sorted(set(self.images.values()))
        head = [f"**{self.title}**" if self.title else ""]
        if len(sizes) == 1:
            head.append(f"{sizes[0]} image{'s' if sizes[0] != 1 else ''}")
        lower = any(self._arrow(k) == "↓" for k in self.metrics)
        head.append("↑ higher / ↓ lower is better" if lower else "↑ higher is better")
        head.append("best per column in bold")
        if self.note:
            head.append(self.note)
        lines.append("; ".join(h for h in head if h))
        lines.append("")
        lines.append("| method | " + " | ".join(f"{k} {self._arrow(k)}" for k in self.metrics) + " |")
        lines.append("|---|" + "---:|" * len(self.metrics))
        for method in self.methods:
            cells = []
            for metric in self.metrics:
                text = _fmt(self.values[method][metric], digits)
                cells.append(f"**{text}**" if method in self.best[metric] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        gaps = self.nan_gaps()
        if gaps:
            lines.append("")
            lines.append(
                "NaN values left out of a mean: "
                + "; ".join(f"{metric} of {method} ({n - k} of {n} images)" for method, metric, k, n in gaps)
            )
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One row per method: ``method, images, <metrics...>, best`` (full precision, NaN as ``nan``;
        ``best`` lists the metrics where the method is best, separated by ``;``)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method", "images", *self.metrics, "best"])
        for method in self.methods:
            values = [repr(self.values[method][k]) for k in self.metrics]
            writer.writerow([method, self.images.get(method, ""), *values, ";".join(self.best_of(method))])
        return out.getvalue()


def comparison_table(
    values: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    lower_is_better: Collection[str] = LOWER_IS_BETTER,
    images: Mapping[str, int] | None = None,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    title: str = "",
    note: str = "",
) -> ComparisonTable:
    """The table of ``values`` {method: {metric: mean}} (methods in the given order).

    ``metrics`` defaults to the first method's keys; every method must have a value for each.
    """
    if not values:
        raise ValueError("no methods to compare")
    methods = list(values)
    metrics = list(metrics) if metrics is not None else list(values[methods[0]])
    for method in methods:
        missing = [k for k in metrics if k not in values[method]]
        if missing:
            raise ValueError(f"method {method!r} has no value for {', '.join(missing)}")
    table_values = {m: {k: float(values[m][k]) for k in metrics} for m in methods}
    return ComparisonTable(
        methods=methods,
        metrics=metrics,
        values=table_values,
        best=best_methods(table_values, metrics, lower_is_better),
        images=dict(images or {}),
        counts={m: dict(c) for m, c in (counts or {}).items()},
        lower_is_better=frozenset(lower_is_better),
        title=title,
        note=note,
    )


def _some(stems: set[str], shown: int = 5) -> str:
    """'2 image(s) (s1, s2)', listing at most ``shown`` stems."""
    listed = sorted(stems)
    more = ", ..." if len(listed) > shown else ""
    return f"{len(listed)} image(s) ({', '.join(listed[:shown])}{more})"


def table_from_results(results: Mapping[str, EvalResult], title: str = "", note: str = "") -> ComparisonTable:
    """The table of several ``EvalResult`` (method name -> result of ``evaluate_folders``).

    Means over different sets of images are not comparable, so every result must cover the
    same image stems; an UpfusionError names the first method that differs and the stems.
    """
    if not results:
        raise ValueError("no methods to compare")
    names = list(results)
    first = results[names[0]]
    stems = set(first.per_image)
    for name in names[1:]:
        other = set(results[name].per_image)
        if other != stems:
            parts = []
            if stems - other:
                parts.append(f"lacks {_some(stems - other)} that {names[0]} has")
            if other - stems:
                parts.append(f"has {_some(other - stems)} that {names[0]} lacks")
            where = getattr(results[name], "fused_dir", "") or name
            raise UpfusionError(
                f"{where}: method {name} {' and '.join(parts)}; every method must be scored on the same images"
            )
        if list(results[name].metrics) != list(first.metrics):
            raise ValueError(f"method {name!r} was scored with other metrics than {names[0]!r}")
    return comparison_table(
        {name: r.mean for name, r in results.items()},
        metrics=list(first.metrics),
        images={name: len(r.per_image) for name, r in results.items()},
        counts={name: r.count for name, r in results.items()},
        title=title,
        note=note,
    )


# ---------------------------------------------------------------------------- the picture grid


def read_display(path: Path | str) -> np.ndarray:
    """An 8-bit image for display: [H, W] grey or [H, W, 3] RGB uint8 (alpha dropped)."""
    from PIL import Image, ImageOps

    from .imaging import reading_errors

    path = Path(path)
    with reading_errors(path), Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            raise UpfusionError(f"{path}: image mode {im.mode} is not 8-bit; the grid shows 8-bit images")
        im = ImageOps.exif_transpose(im)  # upright, as upfusion fuse and eval read it
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
        return np.asarray(im)


def grid_size(row_shapes: Sequence[tuple[int, int]], columns: int, panel_width: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid whose rows show images of ``row_shapes`` (H, W).

    Every panel is ``panel_width`` wide and as high as its row's aspect ratio asks
    (``round(panel_width * H / W)``); panels are ``GRID_GAP_PX`` apart, below a header of
    ``GRID_HEADER_PX`` and right of a label band of ``GRID_LABEL_PX``.
    """
    width = GRID_LABEL_PX + columns * panel_width + (columns - 1) * GRID_GAP_PX
    heights = [max(1, round(panel_width * h / w)) for h, w in row_shapes]
    height = GRID_HEADER_PX + sum(heights) + (len(heights) - 1) * GRID_GAP_PX
    return width, height


def _drawable(text: str) -> str:
    """``text`` with the bytes of a file name that is not UTF-8 shown as U+FFFD (matplotlib refuses them)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def picture_grid(
    rows: Sequence[tuple[str, Sequence[Path | str]]],
    labels: Sequence[str],
    panel_width: int = 240,
) -> bytes:
    """PNG bytes of a grid: one row per ``(stem, paths)`` (the paths in column order, e.g. source A,
    source B, then each method's result), ``labels`` above the columns, the stem left of each row.

    Grey images are shown with grey levels 0..255 as they are (no contrast stretch), colour
    images as they are. The size in pixels is ``grid_size`` of the rows' first images.
    """
    from .pretrained.extras import require

    require("matplotlib", "report", "the picture grid")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no rows for the picture grid")
    if panel_width < 8:
        raise ValueError(f"panel_width must be at least 8 pixels, got {panel_width}")
    columns = len(labels)
    for stem, paths in rows:
        if len(paths) != columns:
            raise ValueError(f"row {stem!r} has {len(paths)} images for {columns} column labels")
    images = [[read_display(p) for p in paths] for _, paths in rows]
    shapes = [row[0].shape[:2] for row in images]
    width, height = grid_size(shapes, columns, panel_width)

    fig = Figure(figsize=(width / GRID_DPI, height / GRID_DPI), dpi=GRID_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    step = panel_width + GRID_GAP_PX
    for col, label in enumerate(labels):
        x = (GRID_LABEL_PX + col * step + panel_width / 2) / width
        fig.text(x, 1 - (GRID_HEADER_PX / 2) / height, _drawable(label), ha="center", va="center", fontsize=10)
    top = GRID_HEADER_PX  # pixels from the top edge
    for (stem, _), row, (h, w) in zip(rows, images, shapes, strict=True):
        row_h = max(1, round(panel_width * h / w))
        fig.text(
            (GRID_LABEL_PX / 2) / width,
            1 - (top + row_h / 2) / height,
            _drawable(stem),
            ha="center",
            va="center",
            rotation=90,
            fontsize=9,
        )
        for col, image in enumerate(row):
            left = GRID_LABEL_PX + col * step
            ax = fig.add_axes((left / width, 1 - (top + row_h) / height, panel_width / width, row_h / height))
            ax.set_axis_off()
            if image.ndim == 2:
                ax.imshow(image, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="antialiased")
            else:
                ax.imshow(image, aspect="auto", interpolation="antialiased")
        top += row_h + GRID_GAP_PX
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=GRID_DPI)
    return buffer.getvalue()
