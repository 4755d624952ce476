"""How far the network's output moves when its top-k choices see float32 rounding.

    python benchmarks/topk_sensitivity.py [--trials 3] [--relative 1e-6]

UP-Fusion picks channels with top-k (SCPM, GAM's channel choice, TCPM's channel selection and
its top-k cross-attention). Two float32 implementations of the same graph (PyTorch and
onnxruntime, a CPU and a GPU) sum in different orders, so the scores they rank differ by about
one part in a million, and a near tie can fall the other way. For each sample pair (the bundled
weights, the specification's arithmetic, 1x) this prints the largest change of the fused luma
when every top-k's scores are multiplied by ``1 + relative * noise`` (standard normal noise; the
choice changes, the values that flow on do not), beside the change from the same noise on the
input pixels, which the network's smooth parts carry through without a jump.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from upfusion.fuse import resolve_weights
from upfusion.model import fast_ops
from upfusion.pretrained.checkpoint import load_network

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PAIRS = {"msrs": ("vi", "ir"), "ct-mri": ("mri", "ct"), "pet-mri": ("mri", "pet")}


def luma(path: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    y = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    h, w = y.shape
    return torch.from_numpy(np.ascontiguousarray(y[: h - h % 8, : w - w % 8]))[None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--relative", type=float, default=1e-6)
    args = parser.parse_args()
    model, text = load_network(resolve_weights("default"), device="cpu")
    exact_topk = torch.topk
    noise = {"scores": 0.0}
    generator = torch.Generator().manual_seed(0)

    def perturbed_topk(x, k, *rest, **options):
        if noise["scores"]:
            x = x * (1 + noise["scores"] * torch.randn(x.shape, generator=generator, dtype=x.dtype))
        return exact_topk(x, k, *rest, **options)

    print(
        f"| pair | size | input pixels x (1 + {args.relative:g} noise) | top-k scores x (1 + {args.relative:g} noise) |"
    )
    print("|---|---|---|---|")
    torch.topk = perturbed_topk  # every top-k of the model goes through torch.topk
    try:
        for name, (a_dir, b_dir) in PAIRS.items():
            stem = sorted((SAMPLES / name / a_dir).iterdir())[0].name
            a, b = luma(SAMPLES / name / a_dir / stem), luma(SAMPLES / name / b_dir / stem)
            with torch.no_grad(), fast_ops.plain_arithmetic():
                reference = model(a, b, text)
                moved_input, moved_scores = [], []
                for _ in range(args.trials):
                    scale = 1 + args.relative * torch.randn(a.shape, generator=generator)
                    moved_input.append((model(a * scale, b * scale, text) - reference).abs().max().item())
                    noise["scores"] = args.relative
                    moved_scores.append((model(a, b, text) - reference).abs().max().item())
                    noise["scores"] = 0.0
            size = f"{a.shape[-1]}x{a.shape[-2]}"
            print(
                f"| {name} | {size} | {', '.join(f'{d:.1e}' for d in moved_input)} "
                f"| {', '.join(f'{d:.1e}' for d in moved_scores)} |",
                flush=True,
            )
    finally:
        torch.topk = exact_topk


if __name__ == "__main__":
    main()
