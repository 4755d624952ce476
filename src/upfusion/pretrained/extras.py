"""One-line messages for optional dependencies that are not installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UpfusionError


def require(module: str, extra: str | None, purpose: str, package: str | None = None) -> ModuleType:
    """Imports ``module`` or stops with a message naming the extra that provides it.

    ``extra`` None: ``module`` is a core dependency (``package`` on PyPI), missing only from a
    broken install (e.g. ``pip install --no-deps``); the message names the package instead.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if extra is None:
            how = f"a dependency of upfusion; install it with: pip install {package or module}"
        else:
            how = f"install it with: pip install 'upfusion[{extra}]'"
        raise UpfusionError(f"{purpose} needs the Python package {module!r} ({exc}); {how}") from None
