"""``upfusion train``: trains UP-Fusion weights from folder pairs of registered images."""

from __future__ import annotations

import argparse
import dataclasses
import os

DESCRIPTION = """\
Trains the UP-Fusion network (spec section 8): Adam, learning rate cosine-decayed from --lr to
--lr-min, random square crops with flips, the frozen semantic backbone left out of the
optimizer. Options come from --config FILE (YAML or TOML, keys named like the long options
with '_' for '-'), then from the command line, which wins. Relative paths are taken from the
current directory.

Output (--out): state.pt (to --resume from), checkpoints/step_N.json and final.json (weights
that 'upfusion fuse --weights' reads), log.csv, val.csv, config.json, and TensorBoard events
when the tensorboard package is installed. Ctrl-C or SIGTERM saves the state before stopping.

--resume continues exactly, in the run's folder: weights, Adam state, schedule, random state
and step. Options given with it override the saved run's; a new --steps or --epochs changes the
run's length, and the cosine schedule then follows the new length from that step on.

--init-weights starts a new run (fresh Adam state and schedule) from a checkpoint's weights, to
fine-tune them, e.g. the bundled 'default' weights on your own pairs. The checkpoint's frozen
backbone comes with them, and its prompt embedding unless --prompt or --text-embedding is given.
"""

EPILOG = """\
examples:
  upfusion train --config configs/default.yaml
  upfusion train --data data/msrs/vi data/msrs/ir --steps 2000 --crop 128 --out runs/mine
  upfusion train --resume runs/mine                    # continue exactly where it stopped
  upfusion train --init-weights default --data my/vi my/ir --steps 1000 --out runs/tuned   # fine-tune
  torchrun --nproc-per-node 4 -m upfusion train --config configs/paper.yaml   # DDP, 4 GPUs
"""

# (help, metavar) of every option; the names and types come from upfusion.train.TrainConfig
HELP: dict[str, tuple[str, str | None]] = {
    "data": ("a training folder pair, files paired by stem (repeat for several)", "A B"),
    "out": ("output folder (default runs/train)", "DIR"),
    "model": (
        "network preset (default: 'default'); a config file may give ModelConfig fields instead, "
        "over the preset named in its 'preset' field (default: 'paper')",
        "PRESET",
    ),
    "backbone_weights": ("semantic backbone weights: 'pretrained' (default), 'none' or a file", "W"),
    "text_encoder": ("text encoder of the prompt: minilm (default) or clip-vit-b-32", "NAME"),
    "prompt": ("the prompt (default: the paper's)", "TEXT"),
    "text_embedding": ("a .npy file with the prompt's embedding, instead of running the encoder", "FILE"),
    "init_weights": ("fine-tune: start from this checkpoint or bundled weights name (a new run)", "CKPT"),
    "loss": ("'reference' (default) or 'paper'", "NAME"),
    "loss_weights": (
        "weights of the loss's terms instead of the spec's, e.g. grad=20 (reference: intensity, grad, ssim, each 10, and edge, ours, 0)",
        "T=W,...",
    ),
    "crop": ("side of the random square crops (default 192)", "PX"),
    "small": ("pairs smaller than the crop: 'pad' with zeros (default) or 'skip'", "MODE"),
    "flips": ("random horizontal and vertical flips (default on)", None),
    "blackout": ("probability that a crop is black outside a random ellipse, both sources (default 0)", "P"),
    "self_pairs": ("probability that a crop is one source fused with itself (default 0)", "P"),
    "contrast": ("probability that a crop's sources are brightened by random gains up to 2.5 (default 0)", "P"),
    "downscale": (
        "probability that a crop is cut from the pair shrunk by a random factor in [0.4, 1) (default 0)",
        "P",
    ),
    "black_margin": ("ask for output <= -M where both sources are 0, so black stays 0 (default 0: off)", "M"),
    "batch_size": ("crops per step and process (default 2)", "N"),
    "steps": ("length of the run in optimizer steps", "N"),
    "epochs": ("length of the run in epochs (instead of --steps)", "N"),
    "lr": ("initial learning rate (default 1e-4)", "LR"),
    "lr_min": ("final learning rate of the cosine decay (default 1e-5)", "LR"),
    "warmup_steps": ("linear warm-up steps before the cosine decay (default 0)", "N"),
    "grad_clip": ("clip the gradient norm to this value (default: no clipping)", "NORM"),
    "amp": ("'auto' (default: bf16 autocast on CUDA, fp32 on CPU), 'bf16' or 'off'", "MODE"),
    "seed": ("random seed of initialisation, order, crops and flips (default 0)", "N"),
    "checkpoint_every": ("save state and a checkpoint every N steps (default 500)", "N"),
    "log_every": ("write a log.csv row every N steps (default 10)", "N"),
    "val_data": ("a held-out folder pair for validation (repeat for several)", "A B"),
    "val_holdout": ("hold out N training pairs for validation instead", "N"),
    "val_every": ("validate every N steps with the --val-metrics (default 0: never)", "N"),
    "val_max_pairs": ("validate on at most N pairs (default 4)", "N"),
    "val_metrics": ("validation metrics: 'paper' (default) or NAME,NAME", "SET"),
    "threads": ("torch CPU threads (default: torch's choice)", "N"),
    "workers": ("data-loader worker processes (default 0)", "N"),
    "device": ("'auto' (default: CUDA when available), 'cpu', 'cuda' or 'cuda:N'", "DEV"),
}

_TYPES = {
    "crop": int,
    "batch_size": int,
    "steps": int,
    "epochs": int,
    "warmup_steps": int,
    "seed": int,
    "checkpoint_every": int,
    "log_every": int,
    "val_holdout": int,
    "val_every": int,
    "val_max_pairs": int,
    "threads": int,
    "workers": int,
    "blackout": float,
    "self_pairs": float,
    "contrast": float,
    "downscale": float,
    "black_margin": float,
    "lr": float,
    "lr_min": float,
    "grad_clip": float,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train UP-Fusion weights on folder pairs (Adam, cosine lr, checkpoints, resume, DDP)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only options actually given override the config file
    )
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of options")
    p.add_argument("--resume", metavar="PATH", help="continue a run from its folder or state.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, (help_text, metavar) in HELP.items():  # HELP's keys are TrainConfig's fields (tested)
        flag = "--" + name.replace("_", "-")
        if name in ("data", "val_data"):
            p.add_argument(flag, nargs=2, action="append", metavar=("A", "B"), help=help_text)
        elif name == "flips":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, type=_TYPES.get(name, str), metavar=metavar, help=help_text)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The run's TrainConfig: defaults, then the config file (or the resumed run's), then the command line."""
    from ..train import TrainConfig, load_config_file, read_training_state

    values: dict = {}
    if getattr(args, "resume", None):
        state, state_path = read_training_state(args.resume)
        values.update(state["config"])
        values["out"] = str(state_path.parent)  # the run goes on in its own folder, wherever it was started
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    if values.get("backbone_weights") in ("none", "None"):
        values["backbone_weights"] = None
    if values.get("grad_clip") == 0:
        values["grad_clip"] = None
    return TrainConfig.from_dict(values, source=getattr(args, "config", None) or "config")


def run(args: argparse.Namespace) -> int:
    from ..train import train
    from .output_paths import check_output_folder

    config = build_config(args)
    # before the pairs are read and the model built, not when the first file is written after them
    check_output_folder(config.out, "--out")
    final = train(config, resume=getattr(args, "resume", None), progress=not getattr(args, "no_progress", False))
    if final.exists() and os.environ.get("RANK", "0") == "0":
        print(f"upfusion train: wrote {final}")
    return 0
