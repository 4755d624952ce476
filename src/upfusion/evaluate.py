"""Scoring fused images against their sources, folder by folder (``upfusion eval``, ``upfusion report``).

Images are paired by file stem (``upfusion.pairing``) and read as 8-bit grey:

- 1-channel 8-bit images as they are;
- 3-channel images with equal channels as grey; other colour images by BT.601 luma rounded to
  integers, round(0.299 R + 0.587 G + 0.114 B) (half away from zero), as the reference values
  assume (MATLAB ``rgb2gray`` and OpenCV can differ from it by one grey level); an alpha channel
  is ignored;
- an EXIF orientation tag is applied (the picture upright), as ``upfusion fuse`` reads its sources;
- 16-bit and floating-point images are refused: the metrics' constants assume grey levels
  0..255, and rescaling silently would change every value.

Errors: a missing folder or no pairs at all stops the run. A bad triple (unreadable file,
sizes that differ, 16-bit) stops the run too, by default, with a one-line message naming the
file: a mean over a silently smaller set is not comparable with published numbers. With
``on_error="skip"`` (``--skip-bad``) bad triples are reported and left out, and the rest scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import UpfusionError

COMPAT_LABELS = {
    "cddfuse": "CDDFuse Python evaluator conventions (sums over the two sources, MI in nats, "
    "AG over H*W, PSNR peak max(F)); metrics it lacks keep the MATLAB conventions",
}


# ---------------------------------------------------------------------------- reading images


def to_gray_u8(arr: np.ndarray, path: Path | str = "image") -> np.ndarray:
    """An 8-bit image array (H x W, H x W x 1, H x W x 2 with alpha, H x W x 3 or x 4) as H x W uint8 grey."""
    if arr.dtype != np.uint8:
        bits = arr.dtype.itemsize * 8
        kind = "floating-point" if arr.dtype.kind == "f" else f"{bits}-bit"
        raise UpfusionError(
            f"{path}: {kind} image ({arr.dtype}); the metrics take 8-bit images (grey levels 0..255), "
            "convert it to 8 bits first"
        )
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey, or grey + alpha
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UpfusionError(f"{path}: unsupported image shape {arr.shape}")
    rgb = arr[:, :, :3]
    if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
        return np.ascontiguousarray(rgb[:, :, 0])
    r, g, b = (rgb[:, :, k].astype(np.float64) for k in range(3))
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    # Half away from zero (values are >= 0); floor(x + 0.5) would round 0.49999999999999994 up.
    whole = np.floor(luma)
    return np.clip(whole + (luma - whole >= 0.5), 0, 255).astype(np.uint8)


def read_gray(path: Path | str) -> np.ndarray:
    """An image file as H x W uint8 grey levels (see the module docstring for the rules)."""
    from PIL import Image, ImageOps

    from .imaging import reading_errors

    path = Path(path)
    with reading_errors(path), Image.open(path) as im:
        mode = im.mode
        # PIL opens 16-bit colour PNGs as 8-bit RGB, dropping the low bits: look at the raw mode.
        raw = [t.args if isinstance(t.args, str) else str(t.args) for t in im.tile if hasattr(t, "args")]
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F") or any(";16" in r for r in raw):
            kind = {"I": "32-bit integer", "F": "32-bit floating-point"}.get(mode, "16-bit")
            raise UpfusionError(
                f"{path}: {kind} image (mode {mode}); the metrics take 8-bit images "
                "(grey levels 0..255), convert it to 8 bits first"
            )
        im.load()
        # upright as upfusion fuse reads it (imaging.read_image), so results line up with their sources
        im = ImageOps.exif_transpose(im)
        if mode not in ("L", "LA", "RGB", "RGBA", "RGBX"):
            im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
        arr = np.asarray(im)
    return to_gray_u8(arr, path)


def read_triple(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, F) grey images of one stem; an error names the file whose size differs."""
    images = [read_gray(p) for p in paths]
    shape = images[0].shape
    for path, image in zip(paths[1:], images[1:], strict=True):
        if image.shape != shape:
            raise UpfusionError(
                f"{path}: size {image.shape[1]}x{image.shape[0]} differs from {paths[0].name} ({shape[1]}x{shape[0]})"
            )
    return images[0], images[1], images[2]


# ---------------------------------------------------------------------------- results


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _format(value: float, digits: int) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def _write_atomic(path: Path | str, text: str) -> None:
    """Writes a text file atomically; a missing folder is a one-line error."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UpfusionError(f"{path}: folder {folder} does not exist")
    try:
        write_text_atomic(path, text)
    except OSError as exc:  # a folder of that name, no permission, a full disk
        raise UpfusionError(f"{path}: cannot write ({exc.strerror or exc})") from None


@dataclass
class EvalResult:
    """Metric values of one fused folder: per image, the mean over images, and how many images count.

    ``mean`` leaves NaN values out; ``count[metric]`` is the number of images that entered it.
    Keys are the reported metric names (``<NAME>_cddfuse`` where the compat convention differs).
    """

    metrics: list[str]
    per_image: dict[str, dict[str, float]]
    mean: dict[str, float]
    count: dict[str, int]
    conventions: dict[str, str] = field(default_factory=dict)
    compat: str | None = None
    a_dir: str = ""
    b_dir: str = ""
    fused_dir: str = ""
    unmatched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, metrics: list[str], per_image: dict[str, dict[str, float]], **meta) -> EvalResult:
        """Builds the result and its NaN-free means and counts from per-image values."""
        mean: dict[str, float] = {}
        count: dict[str, int] = {}
        for key in metrics:
            values = [v[key] for v in per_image.values() if not math.isnan(v[key])]
            count[key] = len(values)
            mean[key] = float(np.mean(values)) if values else float("nan")
        return cls(metrics=metrics, per_image=per_image, mean=mean, count=count, **meta)

    @property
    def label(self) -> str:
        """A short name for this result: the fused folder's name."""
        return Path(self.fused_dir).name or self.fused_dir or "fused"

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN and infinite values become null."""
        from . import __version__

        return {
            "per_image": {
                stem: {k: _finite_or_none(values[k]) for k in self.metrics} for stem, values in self.per_image.items()
            },
            "mean": {k: _finite_or_none(self.mean[k]) for k in self.metrics},
            "count": dict(self.count),
            "images": len(self.per_image),
            "metrics": list(self.metrics),
            "conventions": dict(self.conventions),
            "compat": self.compat,
            "compat_label": COMPAT_LABELS.get(self.compat or "", None),
            "sources": {"a": self.a_dir, "b": self.b_dir, "fused": self.fused_dir},
            "grey": "8-bit; colour by round(0.299 R + 0.587 G + 0.114 B)",
            "unmatched": list(self.unmatched),
            "skipped": dict(self.skipped),
            "upfusion_version": __version__,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        """One row per image, then ``(mean)`` and ``(count)`` rows; NaN written ``nan``, full precision.

        In a compat mode every row also has a ``compat`` column naming it.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        extra = ["compat"] if self.compat else []
        tail = [self.compat] if self.compat else []
        writer.writerow(["stem", *self.metrics, *extra])
        for stem, values in self.per_image.items():
            writer.writerow([stem, *(repr(values[k]) for k in self.metrics), *tail])
        writer.writerow(["(mean)", *(repr(self.mean[k]) for k in self.metrics), *tail])
        writer.writerow(["(count)", *(self.count[k] for k in self.metrics), *tail])
        return out.getvalue()

    def to_markdown(self, per_image: bool = False, digits: int = 4) -> str:
        """A markdown table: one row with the means (and a row of counts if some values were NaN),
        optionally preceded by one row per image, under a line naming the folder and conventions."""
        n = len(self.per_image)
        conv = COMPAT_LABELS[self.compat] if self.compat else "MATLAB originals"
        lines = [f"**{self.label}**: {n} image{'s' if n != 1 else ''}; conventions: {conv}", ""]
        lines.append("| | " + " | ".join(self.metrics) + " |")
        lines.append("|---|" + "---:|" * len(self.metrics))
        if per_image:
            for stem, values in self.per_image.items():
                lines.append(f"| {stem} | " + " | ".join(_format(values[k], digits) for k in self.metrics) + " |")
        lines.append("| mean | " + " | ".join(_format(self.mean[k], digits) for k in self.metrics) + " |")
        if any(self.count[k] != n for k in self.metrics):
            lines.append("| n (not NaN) | " + " | ".join(str(self.count[k]) for k in self.metrics) + " |")
        return "\n".join(lines) + "\n"

    def write_json(self, path: Path | str) -> None:
        _write_atomic(path, self.to_json())

    def write_csv(self, path: Path | str) -> None:
        _write_atomic(path, self.to_csv())

    def write_markdown(self, path: Path | str, per_image: bool = False) -> None:
        _write_atomic(path, self.to_markdown(per_image=per_image))


# ---------------------------------------------------------------------------- scoring


def _score(
    job: tuple[str, tuple[Path, ...], list[str], str | None, int],
) -> tuple[str, dict[str, float] | None, str | None]:
    """Worker: (stem, values, None) or (stem, None, error message) for one triple."""
    from .metrics import compute

    stem, paths, names, compat, threads = job
    try:
        a, b, f = read_triple(paths)
    except UpfusionError as exc:
        return stem, None, str(exc)
    return stem, compute(a, b, f, names, compat=compat, threads=threads), None


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def evaluate_folders(
    a_dir: Path | str,
    b_dir: Path | str,
    fused_dir: Path | str,
    metrics: str | Iterable[str] = "paper",
    workers: int | None = None,
    compat: str | None = None,
    on_error: str = "raise",
    progress: bool = False,
) -> EvalResult:
    """Scores every fused image of ``fused_dir`` against the sources of the same stem in ``a_dir``, ``b_dir``.

    ``metrics``: ``"paper"``, ``"all"``, ``"NAME,NAME"`` or a list of names. ``workers``: processes
    (default: all cores; 1 scores in this process). ``compat``: None or ``"cddfuse"``.
    ``on_error``: ``"raise"`` stops at the first bad triple with an :class:`UpfusionError`;
    ``"skip"`` records it in ``result.skipped`` and scores the others. Files without a partner
    are listed in ``result.unmatched`` (the caller decides how to warn).
    """
    from . import metrics as metric_lib
    from .pairing import pair_by_stem

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    try:
        names = metric_lib.metric_names(metrics)
    except ValueError as exc:
        raise UpfusionError(f"--metrics: {exc}") from None
    if compat is not None and compat not in metric_lib.COMPAT_MODES:
        raise UpfusionError(f"--compat: unknown mode {compat!r}; known: {', '.join(metric_lib.COMPAT_MODES)}")
    for name in names:  # fail before any work if a metric's module cannot be imported
        try:
            metric_lib.resolve(metric_lib.METRICS[name])
        except (ImportError, AttributeError) as exc:
            raise UpfusionError(f"metric {name} is not available in this build ({exc})") from None

    folders = [Path(a_dir), Path(b_dir), Path(fused_dir)]
    pairing = pair_by_stem(*folders)
    if not pairing.pairs:
        raise UpfusionError(
            f"{folders[2]}: no fused image has sources of the same file stem in {folders[0]} and {folders[1]}"
        )

    cores = default_workers()
    workers = cores if workers is None else workers
    if workers < 1:
        raise UpfusionError(f"--workers: must be at least 1, got {workers}")
    workers = min(workers, len(pairing.pairs))
    # Cores left over when there are fewer images than cores: Q_P runs on a second thread.
    threads = 2 if cores >= 2 * workers else 1
    jobs = [(stem, paths, names, compat, threads) for stem, paths in pairing.pairs]

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc="eval", file=sys.stderr, disable=None if progress else True)
    per_image: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}

    def collect(stem: str, values: dict[str, float] | None, error: str | None) -> None:
        bar.update(1)
        if error is not None:
            if on_error == "raise":
                raise UpfusionError(error)
            skipped[stem] = error
        else:
            per_image[stem] = values

    try:
        if workers == 1:
            for job in jobs:
                collect(*_score(job))
        else:
            import multiprocessing

            # Leaving the with-block on an error terminates the remaining work.
            with multiprocessing.get_context().Pool(workers) as pool:
                for result in pool.imap_unordered(_score, jobs):
                    collect(*result)
    finally:
        bar.close()

    if not per_image:  # say why: the skipped reasons are otherwise never printed
        first = next(iter(skipped.values()), "")
        raise UpfusionError(f"{folders[2]}: none of the {len(jobs)} image triples could be scored (the first: {first})")
    per_image = {stem: per_image[stem] for stem, _ in pairing.pairs if stem in per_image}  # sorted by stem
    keys = [metric_lib.output_name(n, compat) for n in names]
    return EvalResult.from_values(
        keys,
        per_image,
        conventions={metric_lib.output_name(n, compat): metric_lib.convention(n, compat) for n in names},
        compat=compat,
        a_dir=str(folders[0]),
        b_dir=str(folders[1]),
        fused_dir=str(folders[2]),
        unmatched=[str(p) for p in pairing.unmatched],
        skipped=skipped,
    )
