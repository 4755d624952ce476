"""Fusion quality of the bundled weights against the classic baselines, on the evaluation sets.

Fuses every evaluation pair with each method through ``upfusion fuse`` (the real command line,
so colour, padding and pairing are the product's own), scores the results with the paper's
five metrics (``upfusion eval``'s code), and prints one markdown table per dataset.

    python benchmarks/quality.py --out runs/quality [--weights default] [--datasets msrs,harvard-ct-mri]

Fused images are kept under ``--out`` and reused on a re-run (the command skips complete
outputs), so an interrupted run resumes. Results are also written to ``--out/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from shared_data import DATA

# name: (A folder, B folder); A = visible / MRI / phase contrast, B = infrared / CT / PET / SPECT / GFP
DATASETS = {
    "msrs": ("msrs/test/vi", "msrs/test/ir"),
    "llvip": ("llvip/test/vi", "llvip/test/ir"),
    "harvard-ct-mri": ("harvard/ct-mri/mri", "harvard/ct-mri/ct"),
    "harvard-pet-mri": ("harvard/pet-mri/mri", "harvard/pet-mri/pet"),
    "harvard-spect-mri": ("harvard/spect-mri/mri", "harvard/spect-mri/spect"),
    "gfp-pc": ("gfp-pc/pc", "gfp-pc/gfp"),
}
BASELINES = ["average", "maximum", "laplacian", "dwt", "gff"]
PAPER = ["Q_NCIE", "Q_P", "VIF", "SSIM", "Qabf"]

# the paper's own reported UP-Fusion figures (Table 1-2 of the paper; spec section 9), not measured here
PAPER_FIGURES = {
    "msrs": [0.8167, 0.5671, 0.4587, 0.5074, 0.6859],
    "llvip": [0.8092, 0.5042, 0.3817, 0.4636, 0.6864],
    "harvard": [0.8074, 0.5665, 0.3190, 0.3639, 0.6814],
    "gfp-pc": [0.8170, 0.4826, 0.3193, 0.3339, 0.5914],
}


def fuse(
    method: str, a: Path, b: Path, out: Path, weights: str | None, upscale: str = "auto", precision: str = "fp32"
) -> None:
    cmd = [sys.executable, "-m", "upfusion", "fuse", "--a", str(a), "--b", str(b), "--out", str(out), "--quiet"]
    if method == "upfusion":  # the weights may have changed since the last run: fuse again
        cmd += ["--overwrite", "--upscale", upscale, "--precision", precision]
        cmd += ["--weights", weights] if weights else []
    else:
        cmd += ["--method", method]
    subprocess.run(cmd, check=True)


def score(method: str, a: Path, b: Path, out: Path, workers: int | None) -> dict:
    """Paper-metric means of one method's folder; the classic methods' scores are cached beside it."""
    from upfusion.evaluate import evaluate_folders

    cache = out.with_name(out.name + ".scores.json")
    if method != "upfusion" and cache.is_file():
        return json.loads(cache.read_text())
    scored = evaluate_folders(a, b, out, metrics=PAPER, workers=workers)
    result = {"mean": scored.mean, "count": scored.count, "images": len(scored.per_image)}
    cache.write_text(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--weights", default=None, help="checkpoint for the network (default: bundled weights)")
    parser.add_argument("--label", default="upfusion (default weights)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(["upfusion", *BASELINES]))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--upscale", default="auto", help="the network's upfusion fuse --upscale (default auto)")
    parser.add_argument("--precision", default="fp32", help="the network's upfusion fuse --precision (default fp32)")
    args = parser.parse_args()

    results: dict[str, dict[str, dict]] = {}
    for dataset in args.datasets.split(","):
        a, b = (DATA / p for p in DATASETS[dataset])
        results[dataset] = {}
        for method in args.methods.split(","):
            out = args.out / dataset / method
            fuse(method, a, b, out, args.weights, args.upscale, args.precision)
            results[dataset][method] = score(method, a, b, out, args.workers)
            means = results[dataset][method]["mean"]
            print(f"{dataset} {method}: " + " ".join(f"{m}={means[m]:.4f}" for m in PAPER), file=sys.stderr)

    # Harvard as one set (all three tasks' pairs pooled), as the paper reports it
    harvard = [d for d in results if d.startswith("harvard-")]
    if len(harvard) == 3:
        results["harvard"] = {}
        for method in results[harvard[0]]:
            total = {m: 0.0 for m in PAPER}
            count = {m: 0 for m in PAPER}
            for d in harvard:
                for m in PAPER:
                    n = results[d][method]["count"][m]
                    total[m] += results[d][method]["mean"][m] * n
                    count[m] += n
            results["harvard"][method] = {"mean": {m: total[m] / count[m] for m in PAPER}, "count": count}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=1))
    for dataset, methods in results.items():
        print(f"\n**{dataset}** (mean over {max(v['count']['SSIM'] for v in methods.values())} pairs)\n")
        print("| method | " + " | ".join(PAPER) + " |")
        print("|---|" + "---:|" * len(PAPER))
        best = {m: max(v["mean"][m] for v in methods.values()) for m in PAPER}
        for method, value in methods.items():
            label = args.label if method == "upfusion" else method
            cells = [
                f"**{value['mean'][m]:.4f}**" if value["mean"][m] == best[m] else f"{value['mean'][m]:.4f}"
                for m in PAPER
            ]
            print(f"| {label} | " + " | ".join(cells) + " |")
        if dataset in PAPER_FIGURES:
            print(
                "| UP-Fusion, paper's own figures (not measured here) | "
                + " | ".join(f"{x:.4f}" for x in PAPER_FIGURES[dataset])
                + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
