"""Training UP-Fusion (spec section 8): the loop behind ``upfusion train``.

One run writes into its output folder:

- ``state.pt``: everything a resumed run needs to continue exactly (network weights, Adam
  state, schedule, step, random-generator states, the run's config and text embedding),
  rewritten atomically every ``checkpoint_every`` steps, at the end, and when the run is
  interrupted (Ctrl-C or SIGTERM);
- ``checkpoints/step_NNNNNNN.{json,safetensors}`` and ``final.{json,safetensors}``: upfusion
  checkpoints that ``upfusion fuse --weights`` reads;
- ``log.csv`` (one row per logged step: loss and its terms, learning rate, wall time),
  ``val.csv`` (validation metric means), ``config.json`` (the resolved config), and
  TensorBoard events under ``tensorboard/`` when the ``tensorboard`` package is installed.

Several processes (``torchrun --nproc-per-node N -m upfusion train ...``) train with
DistributedDataParallel, each on its share of every epoch (a ``DistributedSampler``); rank 0
writes the files. The frozen semantic backbone is left out of the optimizer and stays in
eval mode.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UpfusionError
from .model import ModelConfig

STATE_FILE = "state.pt"


@dataclass
class TrainConfig:
    """Every option of a training run; the config file's keys and the command line's long options."""

    data: list[list[str]] = field(default_factory=list)  # [[folder_a, folder_b], ...] paired by stem
    out: str = "runs/train"
    model: str | dict = "default"  # a preset name, or ModelConfig fields
    backbone_weights: str | None = "pretrained"  # None: random; "pretrained"; or a file
    text_encoder: str = "minilm"
    prompt: str | None = None  # None: the paper's prompt
    text_embedding: str | None = None  # a .npy file with the prompt embedding, instead of the encoder
    init_weights: str | None = None  # fine-tuning: start from this checkpoint's weights (a new run)
    loss: str = "reference"
    loss_weights: dict[str, float] = field(default_factory=dict)  # terms weighted otherwise than in the spec
    crop: int = 192
    small: str = "pad"  # pairs with a side under crop: "pad" (zeros) or "skip"
    flips: bool = True
    blackout: float = 0.0  # probability of a crop blacked out outside a random ellipse (data.FusionPairs)
    self_pairs: float = 0.0  # probability of a crop fused with itself, (a, a) or (b, b) (data.FusionPairs)
    contrast: float = 0.0  # probability of a crop's sources brightened by random gains (data.FusionPairs)
    downscale: float = 0.0  # probability of a crop cut from the pair shrunk by a random factor (data.FusionPairs)
    black_margin: float = 0.0  # > 0: losses.with_black_margin, output <= -margin where both sources are 0
    batch_size: int = 2  # per process
    steps: int | None = None
    epochs: int | None = None
    lr: float = 1e-4
    lr_min: float = 1e-5
    warmup_steps: int = 0
    grad_clip: float | None = None  # max gradient norm; None: no clipping
    amp: str = "auto"  # "auto": bf16 autocast on CUDA, off on CPU; "bf16"; "off"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    val_data: list[list[str]] = field(default_factory=list)  # held-out folder pairs
    val_holdout: int = 0  # or: hold out this many training pairs (a seeded draw)
    val_every: int = 0  # 0: no validation
    val_max_pairs: int = 4
    val_metrics: str = "paper"
    threads: int | None = None  # torch CPU threads; None: torch's choice
    workers: int = 0  # data-loader worker processes
    device: str = "auto"  # "auto": CUDA when available

    def resolved_total_steps(self, steps_per_epoch: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is not None:
            return int(self.epochs) * steps_per_epoch
        raise UpfusionError("give the length of the run: steps or epochs")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UpfusionError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{name: _checked_value(name, value, source) for name, value in d.items()})

    def validate(self) -> None:
        if not self.data:
            raise UpfusionError("no training data: give data (folder pairs A B)")
        for pair in list(self.data) + list(self.val_data):
            if len(pair) != 2:
                raise UpfusionError(f"data entries are [folder_a, folder_b] pairs, not {pair!r}")
        for name in (
            "crop",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "val_max_pairs",
            "steps",
            "epochs",
            "threads",
        ):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise UpfusionError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("warmup_steps", "val_holdout", "val_every", "workers"):
            if int(getattr(self, name)) < 0:
                raise UpfusionError(f"{name} must be at least 0, not {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UpfusionError(f"grad_clip must be above 0 (or absent: no clipping), not {self.grad_clip}")
        if self.small not in ("pad", "skip"):
            raise UpfusionError(f"small must be pad or skip, not {self.small!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise UpfusionError(f"device {self.device!r} is unknown (use auto, cpu, cuda or cuda:N)") from None
        if self.steps is not None and self.epochs is not None:
            raise UpfusionError("give steps or epochs, not both")
        if self.amp not in ("auto", "bf16", "off"):
            raise UpfusionError(f"amp must be auto, bf16 or off, not {self.amp!r}")
        if not (self.lr > 0 and 0 <= self.lr_min <= self.lr):
            raise UpfusionError(f"need lr > 0 and 0 <= lr_min <= lr (got lr={self.lr}, lr_min={self.lr_min})")
        for name in ("blackout", "self_pairs", "contrast", "downscale"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UpfusionError(f"{name} is a probability in [0, 1], not {getattr(self, name)}")
        if not 0.0 <= self.black_margin < 1.0:
            raise UpfusionError(f"black_margin is a level in [0, 1), not {self.black_margin}")
        from .losses import get_loss, parse_term_weights

        try:
            if isinstance(self.loss_weights, str):  # "grad=20,ssim=5", as the command line gives it
                self.loss_weights = parse_term_weights(self.loss_weights)
            get_loss(self.loss, self.loss_weights)
        except ValueError as exc:
            raise UpfusionError(str(exc)) from None
        if self.val_every:
            from .metrics import metric_names

            try:
                metric_names(self.val_metrics)
            except ValueError as exc:
                raise UpfusionError(f"val_metrics: {exc}") from None


# Each option's annotation in TrainConfig ("int", "float | None", "str", ...): the type its value must have.
_ANNOTATIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _checked_value(name: str, value: Any, source: str) -> Any:
    """``value`` of option ``name`` if it has the type of the option's ``TrainConfig`` annotation
    (a number written as YAML 1.1 reads ``1e-4``, a string, becomes that number); otherwise an
    error naming the option and the value."""
    kinds = _ANNOTATIONS.get(name, "Any").split(" | ")
    if value is None and "None" in kinds:
        return value
    if kinds[0] == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        kind = "a whole number"
    elif kinds[0] == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        kind = "a number"
    elif kinds[0] == "bool":
        if isinstance(value, bool):
            return value
        kind = "true or false"
    elif kinds[0] == "list[list[str]]":  # data, val_data
        if isinstance(value, (list, tuple)) and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in value
        ):
            return [list(pair) for pair in value]
        kind = "a list of [folder_a, folder_b] pairs"
    elif name == "model":  # str | dict
        if isinstance(value, (str, dict)):
            return value
        kind = "a preset name or a mapping of network fields"
    elif name == "loss_weights":  # a mapping, or its "term=weight,..." text
        if isinstance(value, (str, dict)):
            return value
        kind = "a mapping of term: weight"
    elif kinds[0] == "str":
        if isinstance(value, str):
            return value
        kind = "a string"
    else:
        return value
    raise UpfusionError(f"{source}: {name} must be {kind}, not {value!r}")


def _toml_reader() -> Any:
    """``tomllib`` (Python 3.11+), or on Python 3.10 its backport ``tomli`` (the ``train`` extra)."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    from .pretrained.extras import require

    return require("tomli", "train", "TOML config files on Python 3.10")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a YAML (.yaml, .yml) or TOML (.toml) file as a dict."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UpfusionError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".toml":
        toml = _toml_reader()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as exc:
            raise UpfusionError(f"{path}: not valid TOML ({exc})") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        from .pretrained.extras import require

        yaml = require("yaml", "train", "YAML config files")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UpfusionError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        raise UpfusionError(f"{path}: config files are .yaml, .yml or .toml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UpfusionError(f"{path}: the config must be a mapping of option: value")
    return data


def model_config(spec: str | dict) -> ModelConfig:
    """A preset name, or a mapping of ModelConfig fields (with ``preset`` as the base, default "paper")."""
    from .presets import get_config

    if isinstance(spec, str):
        try:
            return get_config(spec)
        except KeyError as exc:
            raise UpfusionError(str(exc.args[0])) from None
    spec = dict(spec)
    try:
        base = get_config(spec.pop("preset", "paper"))
        return ModelConfig.from_dict({**base.to_dict(), **spec})
    except (KeyError, ValueError, TypeError) as exc:
        raise UpfusionError(f"model: {exc.args[0] if exc.args else exc}") from None


def cosine_lr_factor(step: int, total: int, lr: float, lr_min: float, warmup: int) -> float:
    """Multiplier of ``lr`` at ``step``: linear warm-up, then cosine decay from lr to lr_min at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))) / lr


# ---------------------------------------------------------------------------------- helpers


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from .atomic import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _text_embedding(config: TrainConfig, text_dim: int) -> tuple[np.ndarray, str, str, str]:
    """(vector, encoder name, prompt, precision) of the run's prompt embedding."""
    from .pretrained.text import PAPER_PROMPT, encode_prompt

    prompt = config.prompt or PAPER_PROMPT
    if config.text_embedding:
        path = Path(config.text_embedding)
        try:
            vector = np.load(path).astype(np.float32).reshape(-1)
        except (OSError, ValueError) as exc:
            raise UpfusionError(f"{path}: cannot read the text embedding (.npy): {exc}") from None
        encoder, precision = config.text_encoder, f"from {path.name}"
    else:
        emb = encode_prompt(config.text_encoder, prompt)
        vector, encoder, precision = emb.vector, emb.encoder, emb.precision
    if vector.size != text_dim:
        where = f"{config.text_embedding}: " if config.text_embedding else ""
        raise UpfusionError(f"{where}text embedding has {vector.size} values; the model takes {text_dim}")
    return vector, encoder, prompt, precision


def _initial_weights(path: str, mconf: ModelConfig) -> tuple[dict[str, torch.Tensor], Path, dict[str, Any], str]:
    """(network weights, weights file, text info, backbone weights) of the checkpoint a
    fine-tuning run starts from; the backbone's is "pretrained" or the file stored beside it."""
    from .fuse import resolve_weights
    from .pretrained.checkpoint import load_tensors, read_record, verify_weights_file

    record, record_path, weights_path = read_record(resolve_weights(path))
    theirs = record.get("model_config") or {}
    ours = mconf.to_dict()
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise UpfusionError(
            f"{record_path}: its network differs from the run's model in {', '.join(differ[:6])}"
            f"{' ...' if len(differ) > 6 else ''} (give the model it was trained with)"
        )
    text_info = {
        "vector": [float(x) for x in record.get("text_embedding", [])],
        "encoder": record.get("text_encoder", "unknown"),
        "prompt": record.get("prompt", ""),
        "precision": record.get("text_embedding_precision", "unknown"),
    }
    entry = record.get("semantic_backbone") or {}
    stored = entry.get("weights", "pretrained")
    backbone = "pretrained" if stored == "pretrained" else str(record_path.parent / stored)
    if backbone != "pretrained":  # checked (sha256) as load_network checks it; build_backbone reads it
        verify_weights_file(Path(backbone), entry.get("sha256"))
    return load_tensors(weights_path, record.get("weights_sha256")), weights_path, text_info, backbone


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Pads bottom and right to a multiple of ``multiple`` (reflect; replicate when too small)."""
    h, w = x.shape[-2:]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class _CsvLog:
    """Appends rows to a CSV file; on resume drops rows past the resumed step (a crashed run's tail)."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None) -> None:
        self.path, self.fields = path, fields
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif not path.exists() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        from .atomic import write_bytes_atomic

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(self.path, buffer.getvalue().encode())

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


@torch.no_grad()
def validate(
    model, dataset, text: torch.Tensor, metrics: str, max_pairs: int, device: torch.device
) -> dict[str, float]:
    """Fuses up to ``max_pairs`` whole held-out pairs and returns the mean of each metric."""
    from .evaluate import to_gray_u8
    from .metrics import compute

    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = min(len(dataset), max_pairs)
    for i in range(count):
        a_u8, b_u8 = dataset.images[i]
        a, b = dataset[i]
        h, w = a.shape[-2:]
        fused = model(pad_to_multiple(a[None].to(device)), pad_to_multiple(b[None].to(device)), text)
        f_u8 = torch.round(255 * fused[0, 0, :h, :w].float().clamp(0, 1)).to(torch.uint8).cpu().numpy()
        values = compute(to_gray_u8(a_u8), to_gray_u8(b_u8), f_u8, metrics)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    model.train(was_training)
    return {k: v / count for k, v in sums.items()}


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_ignores_stop_signals(worker_id: int) -> None:  # noqa: ARG001
    """A data-loader worker leaves Ctrl-C and SIGTERM to the main process. Both reach the whole
    process group (a terminal, ``timeout``); a worker killed by one made the loader raise
    "worker killed by signal" in the main process before it could save its state. The worker
    starts with both blocked (``_workers_started``), so none arrives before this."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _workers_started(loader):
    """``iter(loader)``, its worker processes started with Ctrl-C and SIGTERM blocked; one that
    arrives meanwhile reaches the main process when they are unblocked here."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask"):  # Windows has no signal masks
        return iter(loader)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def _stop_signals_ignored():
    """Ctrl-C and SIGTERM ignored inside (the main thread only can set handlers): the state
    saved after a first one is written whole, and a second (an impatient user, ``timeout``)
    does not end the run with a traceback and no state."""
    main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _STOP_SIGNALS} if main else {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Stop(Exception):
    """SIGTERM: stop after saving, as Ctrl-C does."""


STATE_FORMAT = "upfusion-train-state"
_STATE_KEYS = ("step", "model", "optimizer", "scheduler", "rng", "config", "text")


def read_training_state(path: str | Path) -> tuple[dict[str, Any], Path]:
    """(the saved state, its file) of a run given as its folder or its ``state.pt``."""
    path = Path(path)
    state_path = path / STATE_FILE if path.is_dir() else path
    if not state_path.is_file():
        raise UpfusionError(f"{state_path}: no training state to resume from")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UpfusionError(f"{state_path}: not a readable training state ({detail})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UpfusionError(f"{state_path}: not an upfusion training state")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise UpfusionError(f"{state_path}: training state lacks {', '.join(missing)}")
    return state, state_path


# ------------------------------------------------------------------------------------- train


def train(config: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Runs (or resumes) a training run; returns the path of the final checkpoint record."""
    from torch.utils.data import DataLoader, DistributedSampler

    from .data import FusionPairs, index_pairs
    from .losses import get_loss, reported_terms, with_black_margin
    from .presets import build_model
    from .pretrained.checkpoint import save_checkpoint, split_state_dict

    state = read_training_state(resume)[0] if resume is not None else None
    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UpfusionError(f"{out}: is a file, not an output folder")
    if state is None and ((out / STATE_FILE).exists() or (out / "final.json").exists()):
        raise UpfusionError(
            f"{out}: holds an earlier training run; continue it with --resume {out}, or give another --out"
        )
    if config.threads:
        torch.set_num_threads(int(config.threads))

    device_kind = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    if device_kind == "auto":
        device_kind = "cpu"
    if device_kind.startswith("cuda") and not torch.cuda.is_available():
        raise UpfusionError(f"device {config.device!r}: no CUDA device is available to torch")
    dist_info = _init_distributed(device_kind.split(":")[0])
    device = torch.device(device_kind)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank if dist_info.world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # spec section 6: TF32 off
        torch.backends.cudnn.allow_tf32 = False
    use_bf16 = (config.amp == "bf16") or (config.amp == "auto" and device.type == "cuda")

    # data: the training folders are listed and paired once, for the held-out draw and both sets
    sources = [tuple(p) for p in config.data]
    index = index_pairs(sources)
    held_out: list[str] = []
    if config.val_holdout:
        stems = [stem for stem, _, _ in index.pairs]
        if config.val_holdout >= len(stems):
            raise UpfusionError(
                f"val_holdout {config.val_holdout}: the training data has {len(stems)} pairs; "
                "hold out fewer, so that some are left to train on"
            )
        rng = np.random.default_rng(config.seed)
        held_out = sorted(str(s) for s in rng.choice(stems, size=config.val_holdout, replace=False))
    dataset = FusionPairs(
        sources,
        crop=config.crop,
        small=config.small,
        flips=config.flips,
        blackout=config.blackout,
        self_pairs=config.self_pairs,
        contrast=config.contrast,
        downscale=config.downscale,
        seed=config.seed,
        exclude=held_out,
        index=index,
    )
    val_set = None
    if config.val_every:
        if config.val_data:
            val_set = FusionPairs([tuple(p) for p in config.val_data], crop=None)
        elif held_out:
            val_set = FusionPairs(sources, crop=None, only=held_out, index=index)
        else:
            raise UpfusionError("validation asked (val_every) but no val_data and no val_holdout")
    per_step = config.batch_size * dist_info.world
    steps_per_epoch = len(dataset) // per_step
    if steps_per_epoch < 1:
        raise UpfusionError(
            f"{len(dataset)} training pairs are fewer than one step's batch ({config.batch_size} x {dist_info.world})"
        )
    total = config.resolved_total_steps(steps_per_epoch)

    # model, optimizer, schedule
    mconf = model_config(config.model)
    init_weights = init_text = None
    if state is None and config.init_weights:
        init_weights, init_path, init_text, init_backbone = _initial_weights(config.init_weights, mconf)
        if mconf.uses_backbone:  # the checkpoint's frozen backbone comes with it (a resume rebuilds it)
            config = dataclasses.replace(config, backbone_weights=init_backbone)
    torch.manual_seed(config.seed)
    model = build_model(mconf, backbone_weights=config.backbone_weights).to(device)
    model.train()
    if init_weights is not None:
        from .pretrained.checkpoint import BACKBONE_PREFIX, load_state_strict

        load_state_strict(model, init_weights, init_path, ignore_prefix=BACKBONE_PREFIX)
    if state is not None:
        text_vec = np.asarray(state["text"]["vector"], dtype=np.float32)
        text_info = state["text"]
    elif init_text is not None and not (config.prompt or config.text_embedding):
        # the prompt embedding the weights were trained with, so no text encoder is needed
        text_vec = np.asarray(init_text["vector"], dtype=np.float32)
        text_info = init_text
    else:
        vec, encoder, prompt, precision = _text_embedding(config, mconf.text_dim)
        text_vec = vec
        text_info = {"vector": vec.tolist(), "encoder": encoder, "prompt": prompt, "precision": precision}
    text = torch.from_numpy(text_vec).reshape(1, -1).to(device)
    params = model.trainable_parameters()
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr_factor(s, total, config.lr, config.lr_min, config.warmup_steps)
    )
    step = 0
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        _set_rng_state(state["rng"])
    net = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # the SE and text MLPs only pick top-k indices and never receive a gradient (spec section 6)
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    loss_fn = get_loss(config.loss, config.loss_weights)
    if config.black_margin:
        loss_fn = with_black_margin(loss_fn, config.black_margin)

    def save_state(final: bool = False) -> None:
        if not dist_info.main:
            return
        network, _ = split_state_dict(model)
        _atomic_torch_save(
            {
                "format": STATE_FORMAT,
                "step": step,
                "model": network,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "config": config.to_dict(),
                "text": text_info,
                "seconds": time.time() - started,
            },
            out / STATE_FILE,
        )
        name = out / "final" if final else out / "checkpoints" / f"step_{step:07d}"
        save_checkpoint(
            model,
            name,
            text_embedding=text_vec,
            text_encoder=text_info["encoder"],
            prompt=text_info["prompt"],
            text_embedding_precision=text_info["precision"],
            backbone_weights="pretrained" if config.backbone_weights == "pretrained" else "file",
            extra={"training": {"step": step, "total_steps": total, "loss": config.loss, "config": config.to_dict()}},
        )

    log = val_log = tb = None
    parts_names = [*reported_terms(config.loss, config.loss_weights), *(["black"] if config.black_margin else [])]
    if dist_info.main:
        from .atomic import write_text_atomic

        try:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UpfusionError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
        write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
        log = _CsvLog(
            out / "log.csv",
            ["step", "epoch", "lr", "loss", *parts_names, "seconds"],
            step if state is not None else None,
        )
        if val_set is not None:
            from . import evaluate  # noqa: F401 - imported now, not at the first validation
            from .metrics import metric_names

            val_log = _CsvLog(
                out / "val.csv", ["step", *metric_names(config.val_metrics)], step if state is not None else None
            )
        tb = _tensorboard(out)
        print(
            f"upfusion train: {len(dataset)} pairs ({len(dataset.skipped)} skipped as smaller than {config.crop}, "
            f"{len(dataset.unmatched)} unmatched files, {len(held_out)} held out), {total} steps of "
            f"{per_step} crops, {steps_per_epoch} steps per epoch, device {device}"
            + (f" x {dist_info.world} processes" if dist_info.world > 1 else "")
            + (", bf16 autocast" if use_bf16 else ""),
            file=sys.stderr,
        )

    bar = None
    if dist_info.main and progress:
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            initial=step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=1 if sys.stderr.isatty() else 30,
        )
    sampler = DistributedSampler(
        dataset, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=config.seed, drop_last=True
    )

    def on_sigterm(signum, frame):  # noqa: ARG001
        raise _Stop()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if dist_info.main else None
    started = time.time() - (float(state.get("seconds", 0.0)) if state is not None else 0.0)
    completed = False
    try:
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            indices = list(sampler)[offset * config.batch_size : steps_per_epoch * config.batch_size]
            loader = DataLoader(
                dataset,
                batch_size=config.batch_size,
                sampler=indices,
                drop_last=True,
                num_workers=config.workers,
                worker_init_fn=_worker_ignores_stop_signals,
            )
            for a, b in _workers_started(loader):
                a, b = a.to(device, non_blocking=True), b.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    fused = net(a, b, text)
                loss, parts = loss_fn(a, b, fused.float())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                scheduler.step()
                step += 1
                if dist_info.main:
                    value = loss.item()
                    if not math.isfinite(value):
                        raise UpfusionError(f"loss is {value} at step {step}; lower lr or set grad_clip")
                    if bar is not None:
                        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", refresh=False)
                        bar.update(1)
                    if step % config.log_every == 0 or step == total:
                        row = {
                            "step": step,
                            "epoch": epoch,
                            "lr": f"{lr:.6g}",
                            "loss": f"{value:.6f}",
                            "seconds": f"{time.time() - started:.1f}",
                        }
                        row.update({k: f"{v:.6f}" for k, v in parts.items()})
                        log.write(row)
                        if tb is not None:
                            tb.add_scalar("loss/total", value, step)
                            tb.add_scalar("lr", lr, step)
                            for k, v in parts.items():
                                tb.add_scalar(f"loss/{k}", v, step)
                    if val_set is not None and step % config.val_every == 0:
                        values = validate(model, val_set, text, config.val_metrics, config.val_max_pairs, device)
                        val_log.write({"step": step, **{k: f"{v:.6f}" for k, v in values.items()}})
                        if tb is not None:
                            for k, v in values.items():
                                tb.add_scalar(f"val/{k}", v, step)
                        if bar is not None:
                            bar.write("step {}: {}".format(step, ", ".join(f"{k} {v:.4f}" for k, v in values.items())))
                if step % config.checkpoint_every == 0 and step < total:
                    save_state()
                if step >= total:
                    break
        completed = True
        save_state(final=True)
    except (KeyboardInterrupt, _Stop):
        with _stop_signals_ignored():
            save_state()
        if dist_info.main:
            print(f"upfusion train: stopped at step {step}; state saved to {out / STATE_FILE}", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if dist_info.world > 1:
            import torch.distributed as dist

            if completed:
                dist.barrier()
            dist.destroy_process_group()
    return out / "final.json"


def plot_training_curve(run: str | Path, png: str | Path, smooth: int = 10) -> Path:
    """Draws a run's ``log.csv`` (loss, its moving average over ``smooth`` rows, learning rate) to ``png``."""
    from .atomic import write_bytes_atomic
    from .pretrained.extras import require

    matplotlib = require("matplotlib", "report", "plotting the training curve")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run) / "log.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UpfusionError(f"{path}: cannot read the training log ({exc.strerror or exc})") from None
    if not rows:
        raise UpfusionError(f"{path}: the training log has no rows yet")
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    lr = np.array([float(r["lr"]) for r in rows])
    k = max(1, min(smooth, len(loss)))
    average = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.plot(steps, loss, color="0.75", lw=0.8, label="loss (logged steps)")
    ax.plot(steps[k - 1 :], average, color="C0", lw=1.8, label=f"moving average of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(steps, lr, color="C3", lw=1.0, ls="--", label="learning rate")
    right.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(png, buffer.getvalue())
    return png
