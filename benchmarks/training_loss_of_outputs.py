"""The training loss of fused images: the network's against the classic methods', per evaluation set.

Reads the fused images that ``benchmarks/quality.py`` left under ``--out`` and computes the
training loss (``--loss``, default ``reference``) of each method's output on the whole image,
with its three parts. If a classic method's output (the per-pixel maximum, say) has a lower loss
than the network's, the network has not reached what its own objective asks for on that set:
it under-fits, and more capacity or training, not another loss, is what it lacks.

    python benchmarks/training_loss_of_outputs.py --out runs/quality_default [--datasets msrs,harvard-ct-mri]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from quality import DATASETS
from shared_data import DATA


def luma(path: Path) -> torch.Tensor:
    """BT.601 luma in [0, 1] as [1, 1, H, W], as the network sees a source."""
    from upfusion.data import luma as bt601_luma
    from upfusion.data import read_image_u8

    return torch.from_numpy(np.ascontiguousarray(bt601_luma(read_image_u8(path)), dtype=np.float32))[None, None]


def main() -> None:
    from upfusion.losses import get_loss
    from upfusion.pairing import pair_by_stem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="benchmarks/quality.py's --out")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default="upfusion,maximum,laplacian,average")
    parser.add_argument("--loss", default="reference")
    args = parser.parse_args()
    loss = get_loss(args.loss)
    print(f"training loss '{args.loss}' of each method's fused images (whole images, dataset mean)\n")
    header = False
    for name in args.datasets.split(","):
        folder_a, folder_b = (DATA / sub for sub in DATASETS[name])
        for method in args.methods.split(","):
            totals, parts = [], []
            for _, (a, b, fused) in pair_by_stem(folder_a, folder_b, args.out / name / method).pairs:
                with torch.no_grad():
                    value, named = loss(luma(a), luma(b), luma(fused))
                totals.append(float(value))
                parts.append(named)
            if not header:  # the loss's own part names (reference: intensity, grad, ssim)
                print("| dataset | method | loss | " + " | ".join(parts[0]) + " |")
                print("|---|---|---:|" + "---:|" * len(parts[0]))
                header = True
            means = [np.mean([p[k] for p in parts]) for k in parts[0]]
            print(
                f"| {name} | {method} | {np.mean(totals):.4f} | " + " | ".join(f"{x:.4f}" for x in means) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
