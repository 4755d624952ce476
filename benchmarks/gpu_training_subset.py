"""The training data of the bundled weights' GPU phase, small enough for a lent GPU's transfer.

A lent GPU machine receives at most 64 MiB with the repository. This writes the subset the
fifth phase of the bundled weights trained on (src/upfusion/weights/default.md): RoadScene and
VIFB training pairs as they are, and every 4th MSRS training pair (sorted by name) as 8-bit
grey (Pillow's "L" conversion; the network sees luma anyway), about 28 MB.

    python benchmarks/gpu_training_subset.py --shared ../shared --out .devcarry/train
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

COPIED = {"roadscene": "roadscene/train", "vifb": "vifb/train"}
MSRS = "msrs-testsplit/train"
MSRS_EVERY = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared folder (data/ inside)")
    parser.add_argument("--out", type=Path, required=True, help="where to write NAME/vi and NAME/ir")
    args = parser.parse_args()
    data = args.shared / "data"
    for name, folder in COPIED.items():
        for side in ("vi", "ir"):
            shutil.copytree(data / folder / side, args.out / name / side, dirs_exist_ok=True)
    stems = sorted(p.name for p in (data / MSRS / "vi").iterdir())[::MSRS_EVERY]
    for side in ("vi", "ir"):
        (args.out / "msrs" / side).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            Image.open(data / MSRS / side / stem).convert("L").save(args.out / "msrs" / side / stem)
    print(f"{args.out}: roadscene, vifb and {len(stems)} MSRS pairs")


if __name__ == "__main__":
    main()
