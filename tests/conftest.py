"""Shared fixtures: paths to the read-only project material and small configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _find_shared() -> Path:
    """The project's read-only material: $UPFUSION_SHARED, else ../shared beside the repository."""
    candidates = [Path(os.environ["UPFUSION_SHARED"])] if os.environ.get("UPFUSION_SHARED") else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED = _find_shared()


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (tests read ../shared from the repository root)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height`` pixels (Pillow refuses above its pixel limit)."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width and height, then its CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path
