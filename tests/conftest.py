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
