"""One-line messages for optional dependencies that are not installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UpfusionError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports ``module`` or stops with a message naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UpfusionError(
            f"{purpose} needs the Python package {module!r} ({exc}); install it with: pip install 'upfusion[{extra}]'"
        ) from None
