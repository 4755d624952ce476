"""upfusion: UP-Fusion (Li, Li, Jiang, AAAI 2026) as an installable package.

Public API (imported lazily so that ``upfusion --help`` does not load torch):

- ``build_model(name_or_config)``: the network, by preset name or ``ModelConfig``
- ``load_network(path)``: a checkpoint's network (eval mode) and its stored text embedding
- ``ModelConfig``, ``PRESETS``: network shapes
- ``load(name_or_path=None, device=None, precision=None)``: a ``Fuser``; ``Fuser.fuse(a, b)`` fuses
  two images (paths, numpy arrays, PIL images) of any size, keeping colour
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "upfusion.model",
    "UPFusion": "upfusion.model",
    "PRESETS": "upfusion.presets",
    "build_model": "upfusion.presets",
    "get_config": "upfusion.presets",
    "load_network": "upfusion.pretrained.checkpoint",
    "save_checkpoint": "upfusion.pretrained.checkpoint",
    "convert_official": "upfusion.pretrained.convert",
    "UpfusionError": "upfusion.errors",
    "load": "upfusion.fuse",
    "Fuser": "upfusion.fuse",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'upfusion' has no attribute {name!r}")
