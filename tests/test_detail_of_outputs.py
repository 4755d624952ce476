"""benchmarks/detail_of_outputs.py's measures on a real Harvard CT-MRI pair."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import shared_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from detail_of_outputs import detail_measures  # noqa: E402


@pytest.fixture
def ct_mri() -> tuple[np.ndarray, np.ndarray]:
    folder = shared_path("data", "harvard", "ct-mri")
    name = sorted(p.name for p in (folder / "ct").iterdir())[0]
    return tuple(np.asarray(Image.open(folder / sub / name).convert("L"), dtype=float) for sub in ("ct", "mri"))


def test_the_maximum_itself_keeps_all_its_detail(ct_mri):
    a, b = ct_mri
    assert detail_measures(a, b, np.maximum(a, b)) == (0.0, 1.0, 0.0)


def test_a_blurred_maximum_is_softer_and_misses_detail(ct_mri):
    a, b = ct_mri
    blurred = ndimage.gaussian_filter(np.maximum(a, b), 1.0)
    difference, kept, error = detail_measures(a, b, blurred)
    assert difference > 1.0
    assert 0.0 < kept < 0.5  # a Gaussian of sigma 1 removes most of the Laplacian's energy
    assert 0.5 < error < 1.0


def test_a_shifted_maximum_has_its_detail_but_in_the_wrong_place(ct_mri):
    a, b = ct_mri
    shifted = np.roll(np.maximum(a, b), 1, axis=1)
    _, kept, error = detail_measures(a, b, shifted)
    assert kept == pytest.approx(1.0, abs=0.02)  # the same energy, moved by one pixel
    assert error > 0.5
