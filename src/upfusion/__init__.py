"""upfusion: UP-Fusion (Li, Li, Jiang, AAAI 2026) as an installable package.

Public API (imported lazily so that ``upfusion --help`` does not load torch):

- ``build_model(name_or_config)``: the network, by preset name or ``ModelConfig``
- ``load_network(path)``: a checkpoint's network (eval mode) and its stored text embedding
- ``ModelConfig``, ``PRESETS``: network shapes
- ``load(name_or_path=None, device=None, precision=None, *, method, tile, overlap, compile, upscale)``:
  a ``Fuser``; ``Fuser.fuse(a, b)`` fuses two images (paths, numpy arrays, PIL images) of any
  size, keeping colour; ``Fuser.fuse_batch(pairs)`` many
- ``UpfusionError``: every error with a message for the user (a file or argument named)
- ``save_checkpoint``, ``convert_official``, ``get_config``, ``UPFusion``: making weights
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .errors import UpfusionError
    from .fuse import Fuser, load
    from .model import ModelConfig, UPFusion
    from .presets import PRESETS, build_model, get_config
    from .pretrained.checkpoint import load_network, save_checkpoint
    from .pretrained.convert import convert_official

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

__all__ = [  # written out (not [*_LAZY]) so that type checkers read it
    "__version__",
    "ModelConfig",
    "UPFusion",
    "PRESETS",
    "build_model",
    "get_config",
    "load_network",
    "save_checkpoint",
    "convert_official",
    "UpfusionError",
    "load",
    "Fuser",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'upfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too (help(), dir() and tab completion), not only those imported so far."""
    return sorted({*globals(), *_LAZY})
