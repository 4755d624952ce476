"""How much fine detail fused images keep: each method's output against the per-pixel maximum.

Reads the fused images that ``benchmarks/quality.py`` left under ``--out``. The per-pixel maximum
max(A, B) is what the ``reference`` loss's intensity term asks for, and on the Harvard sets it
scores above the average and the Laplacian pyramid on all five paper metrics. Per dataset and
method (luma, 0..255, dataset means):

- ``|F - max|``: mean absolute difference from max(A, B) where max(A, B) > 0 (not the black surround);
- ``detail F/max``: the Laplacian's energy (mean square) of F over that of max(A, B): below 1,
  F is softer than the maximum, above 1, sharper or noisier;
- ``detail error``: the Laplacian energy of F - max(A, B) over that of max(A, B): the share of
  the maximum's fine detail that F does not reproduce (0 for F = max(A, B)).

    python benchmarks/detail_of_outputs.py --out runs/quality_default [--datasets harvard-ct-mri]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from quality import DATASETS
from scipy import ndimage
from shared_data import DATA
from training_loss_of_outputs import luma


def detail_measures(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> tuple[float, float, float]:
    """(|F - max| where max > 0, Laplacian energy of F / of max, of F - max / of max), 0..255 images."""
    maximum = np.maximum(a, b)
    foreground = maximum > 0
    energy = float(np.mean(ndimage.laplace(maximum) ** 2))
    return (
        float(np.abs(fused - maximum)[foreground].mean()),
        float(np.mean(ndimage.laplace(fused) ** 2)) / energy,
        float(np.mean(ndimage.laplace(fused - maximum) ** 2)) / energy,
    )


def main() -> None:
    from upfusion.pairing import pair_by_stem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="benchmarks/quality.py's --out")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default="upfusion,average,laplacian")
    args = parser.parse_args()
    print("fused images against the per-pixel maximum max(A, B) (luma 0..255, dataset means)\n")
    print("| dataset | method | \\|F - max\\| | detail F/max | detail error |")
    print("|---|---|---:|---:|---:|")
    for name in args.datasets.split(","):
        folder_a, folder_b = (DATA / sub for sub in DATASETS[name])
        for method in args.methods.split(","):
            rows = [
                detail_measures(*(255 * luma(path)[0, 0].double().numpy() for path in paths))
                for _, paths in pair_by_stem(folder_a, folder_b, args.out / name / method).pairs
            ]
            diff, kept, error = np.mean(rows, axis=0)
            print(f"| {name} | {method} | {diff:.1f} | {kept:.3f} | {error:.3f} |", flush=True)


if __name__ == "__main__":
    main()
