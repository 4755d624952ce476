"""``upfusion convert-official IN.pth OUT_DIR``: the authors' checkpoint as an upfusion checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-official",
        help="convert the authors' released checkpoint (.pth) to upfusion's format",
        description=(
            "Converts the UP-Fusion authors' checkpoint ({'AWF': state_dict}, 'module.' prefixes allowed) to "
            "OUT_DIR/NAME.json + NAME.safetensors (+ NAME.backbone.safetensors with the ConvNeXt-Base weights). "
            "The unused '*_gt' encoder branch is dropped. The prompt embedding is taken from --text-embedding, "
            "or computed with CLIP ViT-B/32 where it can be loaded (float16 on CUDA, as the reference)."
        ),
    )
    p.add_argument("src", metavar="IN.pth", help="the authors' checkpoint")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the converted checkpoint")
    p.add_argument("--text-embedding", metavar="FILE.npy", help="the prompt's CLIP embedding, [512] or [1, 512]")
    p.add_argument(
        "--clip-weights", metavar="FILE", help="a local OpenAI-format CLIP ViT-B/32 file (instead of downloading)"
    )
    p.add_argument("--name", default="upfusion", help="checkpoint name inside OUT_DIR (default: upfusion)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pretrained.convert import convert_official
    from .output_paths import check_output_file, check_output_folder

    # before reading the .pth and building the model (seconds to minutes), not at the save after them
    out_dir = Path(args.out_dir)
    check_output_folder(out_dir, "OUT_DIR")
    for suffix in (".json", ".safetensors"):
        check_output_file(out_dir / f"{args.name}{suffix}", "OUT_DIR")
    record = convert_official(
        args.src, args.out_dir, text_embedding=args.text_embedding, name=args.name, clip_weights=args.clip_weights
    )
    print(f"wrote {record} (and its weights beside it)")
    return 0
