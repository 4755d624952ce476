"""The checkpoint format: network weights as safetensors plus a JSON record.

A checkpoint named ``NAME`` is two or three files side by side:

- ``NAME.safetensors``: every parameter outside the frozen semantic backbone;
- ``NAME.json``: the record: model config, semantic backbone (name and where its weights
  come from), text encoder, prompt and its embedding, sha256 of the weight files, and
  optionally ``auto_upscale`` (the enlargement ``upfusion.load(upscale="auto")`` uses);
- ``NAME.backbone.safetensors`` (optional): the backbone's weights, when they are not the
  published ones (e.g. converted from the authors' file).

Loading checks the sha256 and loads strictly, naming missing and unexpected keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_bytes_atomic
from ..errors import UpfusionError
from ..model import ModelConfig, UPFusion

FORMAT = "upfusion-checkpoint"
FORMAT_VERSION = 1
BACKBONE_PREFIX = "channel_select.backbone."


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def split_state_dict(model: UPFusion) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(network weights, backbone weights) of a model's state dict."""
    network, backbone = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX) :]] = value
        else:
            network[key] = value
    return network, backbone


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(json record, weights file) for a checkpoint given as its .json, .safetensors, stem or folder."""
    path = Path(path)
    if path.is_dir():
        records = sorted(p for p in path.glob("*.json") if _is_record(p))
        if len(records) != 1:
            raise UpfusionError(
                f"{path}: expected exactly one upfusion checkpoint record (*.json), found {len(records)}"
            )
        path = records[0]
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    elif path.suffix != ".json":
        if path.is_file() and not path.with_name(path.name + ".json").is_file():
            raise UpfusionError(
                f"{path}: not an upfusion checkpoint (give its .json record, its .safetensors weights, "
                "their common stem or their folder)"
            )
        path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise UpfusionError(f"{path}: checkpoint record not found")
    return path, path.with_suffix(".safetensors")


def _is_record(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_checkpoint(
    model: UPFusion,
    path: str | Path,
    *,
    text_embedding: np.ndarray | torch.Tensor,
    text_encoder: str,
    prompt: str,
    text_embedding_precision: str = "fp32-cpu",
    backbone_weights: str = "pretrained",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes ``model`` as checkpoint ``path`` (``dir/NAME`` or ``dir/NAME.json``); returns the record's path.

    ``backbone_weights``: ``"pretrained"`` records that the backbone's published ImageNet
    weights are to be used (they are not copied); ``"file"`` stores the model's backbone
    weights beside the checkpoint.
    """
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    record_path = path.with_name(path.name + ".json")
    weights_path = path.with_name(path.name + ".safetensors")
    vector = torch.as_tensor(text_embedding, dtype=torch.float32).reshape(-1)
    config = model.config
    if vector.numel() != config.text_dim:
        raise ValueError(f"text embedding has {vector.numel()} values, the model's text_dim is {config.text_dim}")

    network, backbone = split_state_dict(model)
    backbone_record = None
    if config.uses_backbone:
        backbone_record = {"name": config.semantic_backbone, "weights": "pretrained"}
        if backbone_weights == "file":
            backbone_path = path.with_name(path.name + ".backbone.safetensors")
            backbone_record = {
                "name": config.semantic_backbone,
                "weights": backbone_path.name,
                "sha256": _save_tensors(backbone, backbone_path),
            }
        elif backbone_weights != "pretrained":
            raise ValueError(f"backbone_weights must be 'pretrained' or 'file', not {backbone_weights!r}")
    from .. import __version__

    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"upfusion {__version__}",
        "model_config": config.to_dict(),
        "weights": weights_path.name,
        "weights_sha256": _save_tensors(network, weights_path, {"format": FORMAT}),
        "semantic_backbone": backbone_record,
        "text_encoder": text_encoder,
        "prompt": prompt,
        "text_embedding_precision": text_embedding_precision,
        "text_embedding": [float(x) for x in vector.tolist()],
        **(extra or {}),
    }
    write_bytes_atomic(record_path, (json.dumps(record, indent=1) + "\n").encode())
    return record_path


def read_record(path: str | Path) -> tuple[dict[str, Any], Path, Path]:
    record_path, weights_path = checkpoint_paths(path)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise UpfusionError(f"{record_path}: not a readable checkpoint record ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UpfusionError(f"{record_path}: not an upfusion checkpoint record")
    weights = record.get("weights", weights_path.name)
    if not isinstance(weights, str) or not weights:
        raise UpfusionError(f"{record_path}: 'weights' must name the weights file, not {weights!r}")
    text = record.get("text_embedding", [])
    if not isinstance(text, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in text):
        raise UpfusionError(f"{record_path}: 'text_embedding' must be a list of numbers")
    backbone = record.get("semantic_backbone")
    if backbone is not None and not (isinstance(backbone, dict) and isinstance(backbone.get("weights", ""), str)):
        raise UpfusionError(f'{record_path}: \'semantic_backbone\' must be null or {{"name": ..., "weights": FILE}}')
    return record, record_path, record_path.parent / weights


def _sha256_mismatch(path: Path) -> UpfusionError:
    return UpfusionError(f"{path}: sha256 does not match its checkpoint record (corrupt or replaced file)")


def verify_weights_file(path: Path, expected_sha256: str | None) -> None:
    """Checks that a weights file exists and has its record's sha256, without deserializing it."""
    if not path.is_file():
        raise UpfusionError(f"{path}: weights file not found")
    if expected_sha256 and sha256_of(path) != expected_sha256:
        raise _sha256_mismatch(path)


def load_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not path.is_file():
        raise UpfusionError(f"{path}: weights file not found")
    data = path.read_bytes()
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise _sha256_mismatch(path)
    try:
        return load(data)
    except Exception as exc:
        raise UpfusionError(f"{path}: not a readable safetensors file ({exc})") from None


def load_state_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: Path, ignore_prefix: str | tuple[str, ...] = ()
) -> None:
    """``load_state_dict`` that names missing, unexpected and mis-shaped keys in one line.

    The module's own keys starting with ``ignore_prefix`` are neither expected nor loaded.
    """
    own = {k: v for k, v in module.state_dict().items() if not (ignore_prefix and k.startswith(ignore_prefix))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [
            f"{label} {len(keys)}: {few(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        ]
        raise UpfusionError(f"{source}: weights do not fit the network ({'; '.join(parts)})")
    module.load_state_dict(state, strict=False)


def load_network(
    path: str | Path,
    device: str | torch.device = "cpu",
    backbone_weights: str | Path | None = None,
) -> tuple[UPFusion, torch.Tensor]:
    """The checkpoint's network (eval mode, weights loaded, on ``device``) and its text embedding [1, T].

    ``backbone_weights`` overrides where the frozen backbone's weights come from: a file path,
    ``"pretrained"``, or ``"random"`` (random initialisation: only sensible when the backbone
    cannot change the output, as in the reference's parity vector).
    """
    return network_from_record(*read_record(path), device=device, backbone_weights=backbone_weights)


def network_from_record(
    record: dict[str, Any],
    record_path: Path,
    weights_path: Path,
    device: str | torch.device = "cpu",
    backbone_weights: str | Path | None = None,
) -> tuple[UPFusion, torch.Tensor]:
    """``load_network`` for a record ``read_record`` has already read (callers that also use its other fields)."""
    from ..presets import build_model

    try:
        config = ModelConfig.from_dict(record["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UpfusionError(f"{record_path}: invalid model config ({exc})") from None
    state = load_tensors(weights_path, record.get("weights_sha256"))

    backbone_state = None
    source: str | Path | None = None
    if config.uses_backbone:
        entry = record.get("semantic_backbone") or {}
        if backbone_weights == "random":
            source = None
        elif backbone_weights is not None:
            source = backbone_weights
        elif entry.get("weights", "pretrained") == "pretrained":
            source = "pretrained"
        else:
            backbone_state = load_tensors(record_path.parent / entry["weights"], entry.get("sha256"))
    model = build_model(config, backbone_weights=source)
    load_state_strict(model, state, weights_path, ignore_prefix=BACKBONE_PREFIX)
    if backbone_state is not None:
        backbone = model.channel_select.backbone
        load_state_strict(backbone, backbone_state, record_path.parent / record["semantic_backbone"]["weights"])

    text = torch.tensor(record.get("text_embedding", []), dtype=torch.float32)
    if text.numel() != config.text_dim:
        raise UpfusionError(f"{record_path}: text embedding has {text.numel()} values, model expects {config.text_dim}")
    return model.to(device).eval(), text.reshape(1, -1).to(device)
