"""Training data: registered source pairs from folder pairs, paired by file stem.

``FusionPairs`` is a map-style dataset over one or more ``(folder_a, folder_b)`` pairs. Each
item is a random crop of one pair, flipped at random (both sources alike), as two luma tensors
``[1, crop, crop]`` in [0, 1]: the network sees BT.601 luma, as the pipeline gives it.

The randomness of an item comes from ``(seed, epoch, index)`` alone, never from a global
generator, so a resumed run draws exactly the crops an uninterrupted run draws, whatever the
number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import UpfusionError
from .imaging import reading_errors
from .pairing import pair_by_stem

# BT.601 luma weights (spec section 7)
LUMA = (0.299, 0.587, 0.114)


def read_image_u8(path: Path) -> np.ndarray:
    """An 8-bit image file as uint8 ``H x W`` (grey) or ``H x W x 3`` (colour); alpha dropped."""
    from PIL import ImageOps

    with reading_errors(path), Image.open(path) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            raise UpfusionError(f"{path}: {im.mode} image; training reads 8-bit images, convert it first")
        # upright, as viewers show it and as upfusion fuse reads it (a camera's EXIF orientation)
        im = ImageOps.exif_transpose(im)
        im = im.convert("L") if im.mode in ("L", "LA", "1") else im.convert("RGB")
        arr = np.asarray(im)
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = np.ascontiguousarray(arr[..., 0])  # a colour file with equal channels is grey
    return arr


def luma(arr: np.ndarray) -> np.ndarray:
    """float32 luma in [0, 1] of a uint8 grey or RGB array (BT.601, computed in float)."""
    x = arr.astype(np.float32) / np.float32(255.0)
    if x.ndim == 2:
        return x
    return LUMA[0] * x[..., 0] + LUMA[1] * x[..., 1] + LUMA[2] * x[..., 2]


@dataclass
class PairIndex:
    """The pairs found in a set of folder pairs, and what was left out and why."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)  # (stem, path_a, path_b)
    unmatched: list[Path] = field(default_factory=list)


def index_pairs(sources: Sequence[tuple[str | Path, str | Path]]) -> PairIndex:
    """Every pair (by stem) of every ``(folder_a, folder_b)``; stems are prefixed by folder when several."""
    if not sources:
        raise UpfusionError("no training folders given")
    index = PairIndex()
    # with several folder pairs, a stem is named by its folder's parent (e.g. msrs/train/00001D)
    names = _source_names(sources) if len(sources) > 1 else [""] * len(sources)
    for (folder_a, folder_b), name in zip(sources, names, strict=True):
        pairing = pair_by_stem(Path(folder_a), Path(folder_b))
        if not pairing.pairs:
            raise UpfusionError(f"{folder_a} and {folder_b}: no pair of images shares a file stem")
        prefix = f"{name}/" if name else ""
        index.pairs.extend((prefix + stem, a, b) for stem, (a, b) in pairing.pairs)
        index.unmatched.extend(pairing.unmatched)
    return index


def _source_names(sources: Sequence[tuple[str | Path, str | Path]]) -> list[str]:
    """A distinct name for each folder pair: folder A's parent (msrs/train); where two share
    it (data/vi + data/ir, data/vi2 + data/ir2), folder A; where two share that, both folders."""
    for name_of in (
        lambda a, b: a.parent.as_posix(),
        lambda a, b: a.as_posix(),
        lambda a, b: f"{a.as_posix()}+{b.as_posix()}",
    ):
        names = [name_of(Path(a), Path(b)) for a, b in sources]
        if len(set(names)) == len(names):
            return names
    twice = next(pair for i, pair in enumerate(sources) if names.index(names[i]) != i)
    raise UpfusionError(f"{twice[0]} and {twice[1]}: the same folder pair is given twice")


CONTRAST_GAIN_MAX = 2.5  # the largest gain of the contrast augmentation
DOWNSCALE_MIN = 0.4  # the smallest factor of the downscale augmentation


class FusionPairs(Dataset):
    """Random crops of registered pairs: ``(a, b)`` tensors ``[1, crop, crop]`` in [0, 1].

    - ``sources``: ``(folder_a, folder_b)`` pairs; files are paired by stem within each.
    - ``crop``: side of the square crop (``None``: the whole image, for validation).
    - ``small``: a pair with a side under ``crop`` is ``"pad"``-ded with zeros (bottom and
      right, as the reference) or ``"skip"``-ped; ``skipped`` counts those.
    - ``flips``: random horizontal and vertical flips (p 0.5 each, both sources alike).
    - ``blackout``: probability that a crop is blacked out (both sources zero) outside a random
      ellipse, as a scanner's field of view or a rectified camera's border. Infrared-visible
      training data hardly holds pure black; without it the network paints the black
      background of medical images a few grey levels up.
    - ``self_pairs``: probability that a crop's pair is one source twice, ``(a, a)`` or
      ``(b, b)`` (either alike). The fused image of an image with itself is that image, and
      asking for it trains the network to pass fine detail through unchanged.
    - ``contrast``: probability that a crop's sources are brightened, each by its own gain drawn
      from [1, ``CONTRAST_GAIN_MAX``] and clipped at 1: higher-contrast texture and saturated
      areas (as bone in CT), which infrared-visible data seldom holds.
    - ``downscale``: probability that a crop is cut from the pair shrunk by a factor drawn from
      [``DOWNSCALE_MIN``, 1) (antialiased, both sources alike): finer detail per pixel, as in
      small images such as 256x256 medical slices, than a crop at the cameras' own scale.
    - ``exclude``: stems to leave out (held-out validation pairs).
    - ``index``: ``index_pairs(sources)`` when the caller has it already, so that the folders are
      not listed and paired again (training indexes them once for the held-out draw and both sets).
    - Images are decoded once and kept in memory as uint8 (about 1.3 bytes per pixel per
      source); luma is computed per crop.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str | Path, str | Path]],
        crop: int | None = 192,
        *,
        small: str = "pad",
        flips: bool = True,
        blackout: float = 0.0,
        self_pairs: float = 0.0,
        contrast: float = 0.0,
        downscale: float = 0.0,
        seed: int = 0,
        exclude: Sequence[str] = (),
        only: Sequence[str] | None = None,
        index: PairIndex | None = None,
    ) -> None:
        if small not in ("pad", "skip"):
            raise ValueError(f"small must be 'pad' or 'skip', not {small!r}")
        if crop is not None and crop < 8:
            raise ValueError(f"crop must be at least 8 pixels, not {crop}")
        for name, p in (
            ("blackout", blackout),
            ("self_pairs", self_pairs),
            ("contrast", contrast),
            ("downscale", downscale),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], not {p}")
        self.crop = crop
        self.flips = flips
        self.blackout = blackout
        self.self_pairs = self_pairs
        self.contrast = contrast
        self.downscale = downscale
        self.seed = seed
        self.epoch = 0
        if index is None:
            index = index_pairs(sources)
        self.unmatched = index.unmatched
        excluded = set(exclude)
        wanted = set(only) if only is not None else None
        self.stems: list[str] = []
        self.images: list[tuple[np.ndarray, np.ndarray]] = []
        self.skipped: list[str] = []
        for stem, path_a, path_b in index.pairs:
            if stem in excluded or (wanted is not None and stem not in wanted):
                continue
            a, b = read_image_u8(path_a), read_image_u8(path_b)
            if a.shape[:2] != b.shape[:2]:
                raise UpfusionError(
                    f"{path_b}: size {b.shape[1]}x{b.shape[0]} differs from its pair {path_a.name} "
                    f"({a.shape[1]}x{a.shape[0]}); training needs registered pairs"
                )
            if crop is not None and small == "skip" and min(a.shape[:2]) < crop:
                self.skipped.append(stem)
                continue
            self.stems.append(stem)
            self.images.append((a, b))
        if not self.images:
            raise UpfusionError(f"no usable pair in {', '.join(f'{a} + {b}' for a, b in sources)}")

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random crops and flips ``__getitem__`` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.images[i]
        if self.crop is None:
            return _tensor(luma(a)), _tensor(luma(b))
        rng = np.random.default_rng([self.seed, self.epoch, i])
        h, w = a.shape[:2]
        c = self.crop
        top = int(rng.integers(0, max(h - c, 0) + 1))
        left = int(rng.integers(0, max(w - c, 0) + 1))
        # its own random stream, so that the other draws, and runs without it, stay as they were
        # (made only when asked: a generator per crop is work on the loader's hot path)
        scale_rng = np.random.default_rng([self.seed, self.epoch, i, 1]) if self.downscale else None
        if scale_rng is not None and scale_rng.random() < self.downscale:
            ya, yb = _downscaled_crops(a, b, c, scale_rng)
        else:
            ya = _pad_to(luma(a[top : top + c, left : left + c]), c)
            yb = _pad_to(luma(b[top : top + c, left : left + c]), c)
        if self.flips:
            flip_h, flip_v = rng.random(2) < 0.5
            if flip_h:
                ya, yb = ya[:, ::-1], yb[:, ::-1]
            if flip_v:
                ya, yb = ya[::-1], yb[::-1]
        if self.blackout and rng.random() < self.blackout:
            field_of_view = _random_ellipse(rng, c)
            ya, yb = ya * field_of_view, yb * field_of_view
        # Drawn after the older augmentations, and only when asked, so that runs without them
        # keep their exact crops.
        if self.self_pairs and rng.random() < self.self_pairs:
            ya = yb = ya if rng.random() < 0.5 else yb
        if self.contrast and rng.random() < self.contrast:
            gain_a, gain_b = rng.uniform(1.0, CONTRAST_GAIN_MAX, 2)
            ya, yb = np.minimum(ya * gain_a, 1.0), np.minimum(yb * gain_b, 1.0)
        return _tensor(ya), _tensor(yb)


def _downscaled_crops(
    a: np.ndarray, b: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random window of side ``crop / factor`` of both sources' luma, shrunk by ``factor`` to
    ``crop`` (PIL's antialiased bilinear), zero-padded where the image is smaller."""
    factor = rng.uniform(DOWNSCALE_MIN, 1.0)
    h, w = a.shape[:2]
    side = round(crop / factor)
    top = int(rng.integers(0, max(h - side, 0) + 1))
    left = int(rng.integers(0, max(w - side, 0) + 1))
    out = []
    for x in (a, b):
        window = luma(x[top : top + side, left : left + side])
        size = (max(1, round(window.shape[1] * factor)), max(1, round(window.shape[0] * factor)))
        shrunk = np.asarray(Image.fromarray(window).resize(size, Image.Resampling.BILINEAR))
        out.append(_pad_to(np.clip(shrunk, 0.0, 1.0)[:crop, :crop], crop))
    return out[0], out[1]


def _random_ellipse(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size x size`` float32 mask: 1 inside an axis-aligned ellipse of random centre and axes, 0 outside."""
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.25, 0.75, 2) * size
    y, x = np.ogrid[:size, :size]
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0).astype(np.float32)


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads bottom and right up to ``size`` (the reference pads short images with zeros)."""
    h, w = x.shape
    if h >= size and w >= size:
        return x
    return np.pad(x, ((0, max(size - h, 0)), (0, max(size - w, 0))))


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)
