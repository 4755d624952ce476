"""Where the time of ``upfusion fuse`` goes, per pair, as a markdown table.

For one real pair of each size (Harvard PET-MRI 256x256, MSRS 640x480, LLVIP 1280x1024) it
times the stages of the pipeline separately: reading both files, the network (padding
included), putting the colour back, and encoding + writing the result in the first source's
format. The network is a random-weight model of the given preset (its speed does not depend
on the weights). Median of --repeats runs after one warm-up, on this process's CPU (torch
threads as set) or on --device.

    python benchmarks/bench_fuse_pipeline.py [--preset default] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from shared_data import DATA
from timing import median_ms

from upfusion import imaging
from upfusion.fuse import Fuser
from upfusion.presets import build_model

PAIRS = {
    "PET-MRI 256x256": ("harvard/pet-mri/mri/11.png", "harvard/pet-mri/pet/11.png"),
    "MSRS 640x480": ("msrs/test/vi/00004N.png", "msrs/test/ir/00004N.png"),
    "LLVIP 1280x1024": ("llvip/test/vi/190001.jpg", "llvip/test/ir/190001.jpg"),
}


def time_stages(fuser: Fuser, a_path: Path, b_path: Path, out_dir: Path, repeats: int) -> list[float]:
    """Milliseconds for: reading both files, the network, the colour, encoding and writing."""
    a, b = imaging.read_image(a_path), imaging.read_image(b_path)
    colour = imaging.pick_color_source(a, b)
    luma = fuser._fuse_luma(a.luma()[None], b.luma()[None])[0]
    fused = imaging.compose(luma, colour, 8)
    out = out_dir / f"fused{a_path.suffix}"
    return [
        median_ms(lambda: (imaging.read_image(a_path), imaging.read_image(b_path)), repeats),
        median_ms(lambda: fuser._fuse_luma(a.luma()[None], b.luma()[None]), repeats),
        median_ms(lambda: imaging.compose(luma, colour, 8), repeats),
        median_ms(lambda: imaging.write_image(out, fused), repeats),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="network preset (default: the bundled weights' shape)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    backbone = "pretrained" if args.preset == "default" else None
    model = build_model(args.preset, backbone_weights=backbone)
    text = torch.randn(1, model.config.text_dim)
    fuser = Fuser(model, text, args.device, args.precision, name=args.preset)
    out_dir = Path(tempfile.mkdtemp(prefix="bench_fuse_"))

    print(
        f"preset {args.preset}, device {args.device}, precision {args.precision}, torch threads "
        f"{torch.get_num_threads()}, {platform.processor() or platform.machine()}; median of {args.repeats}\n"
    )
    print("| pair | read (ms) | network (ms) | colour (ms) | encode + write (ms) | total (ms) | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for label, (a_rel, b_rel) in PAIRS.items():
        times = time_stages(fuser, DATA / a_rel, DATA / b_rel, out_dir, args.repeats)
        total = sum(times)
        cells = " | ".join(f"{t:.0f}" for t in times)
        print(f"| {label} | {cells} | {total:.0f} | {1000 / total:.2f} |")


if __name__ == "__main__":
    main()
