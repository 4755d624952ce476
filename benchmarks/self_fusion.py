"""Fidelity of weights on a pair of identical images: how far fuse(x, x) is from x.

Every fusion rule worth the name returns an image fused with itself unchanged (the average, the
maximum and the pyramid methods do, up to rounding); a network only approximates it, and the
gap shows how much fine detail it loses on its way through. For each evaluation set and each of
its two source folders, fuses the grey (BT.601 luma) of every image with itself and prints the
mean PSNR and mean absolute difference against the input, one markdown table for all the
weights named.

    python benchmarks/self_fusion.py [--weights default runs/exp/final.json] [--max-images 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from quality import DATASETS
from shared_data import DATA


def fidelity(fuser, folder: Path, max_images: int) -> tuple[float, float]:
    """Mean PSNR (dB) and mean absolute difference (grey levels) of fuse(x, x) against x."""
    from upfusion.pairing import list_images

    psnrs, diffs = [], []
    for path in list(list_images(folder).values())[:max_images]:
        with Image.open(path) as image:
            x = np.asarray(image.convert("L"))
        d = fuser.fuse(x, x).astype(np.float64) - x
        psnrs.append(10 * np.log10(255.0**2 / max(float(np.mean(d * d)), 1e-12)))
        diffs.append(float(np.mean(np.abs(d))))
    return float(np.mean(psnrs)), float(np.mean(diffs))


def main() -> None:
    import upfusion

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["default"], help="checkpoints or bundled names")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all)")
    parser.add_argument("--max-images", type=int, default=10, help="images per source folder (default 10)")
    parser.add_argument("--upscale", default="auto", help="upfusion fuse's --upscale (default auto)")
    args = parser.parse_args()
    fusers = {w: upfusion.load(w, upscale=args.upscale) for w in args.weights}
    print(f"fuse(x, x) against x, grey, first {args.max_images} images of each folder: PSNR dB / mean |diff|\n")
    print("| folder | " + " | ".join(args.weights) + " |")
    print("|---|" + "---:|" * len(args.weights))
    for name in args.datasets.split(","):
        for sub in DATASETS[name]:
            cells = [fidelity(fuser, DATA / sub, args.max_images) for fuser in fusers.values()]
            print(f"| {sub} | " + " | ".join(f"{p:.1f} / {d:.2f}" for p, d in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
