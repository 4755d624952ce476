"""Tiled inference: an image too large for one pass is fused in overlapping tiles that share the
network's whole-image statistics, then blended.

``tiled_forward(model, a, b, text, tile=..., overlap=...)`` has the contract of ``model(a, b, text)``
(padded ``[N, 1, H, W]`` sources, H and W multiples of 8; unclamped fused luma out).

What every tile shares (computed once for the whole image, then handed to each tile as
``SharedStatistics``):

- GAM's pooled embeddings ``GAP(eA)``, ``GAP(eB)``, and SCPM's channel selection, made from
  ``GAP(p)`` and the backbone's 224x224 view of ``suo_conv(p)`` over the whole image. The
  shallow embeddings are single 3x3 convolutions, so they are computed block by block with a
  one-pixel halo and these statistics equal the whole-image ones (up to float32 summation order).
- TCPM's SE channel selections at the four levels, from the mean of the encoder features over
  the whole image, accumulated tile by tile with each pixel counted once (in the tile whose core
  holds it). This needs the encoder run over every tile before the tiles are fused (the
  encoder is about a third of the network's work). The features are the tiles' own (see below),
  so these means are close to the whole-image ones, not equal to them.
- The text permutation (it depends on the text alone).

What is not shared: the channel attention inside every transformer block (MDTA) and TCPM's
cross-attention build their d x d channel matrices from the tile's own pixels, and the
convolutions near a tile's edges see zero padding instead of the neighbouring pixels. Where
tiles overlap, their outputs are blended with raised-cosine weights that fall to zero at the
tile's inner edges (the two weights sum to one across an overlap), so no seam is visible;
``benchmarks/bench_inference.py --tiling`` measures the difference from whole-image inference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from .model import ModelConfig, SharedStatistics, UPFusion
from .model.scpm import resize_for_backbone

ALIGN = 8  # tiles start and end on multiples of 8, so the three 2x down-samplings line up with the image's


def _round_down(value: int, multiple: int = ALIGN) -> int:
    return value // multiple * multiple


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` of size ``tile`` covering ``[0, length)``, neighbours overlapping by >= ``overlap``.

    ``length``, ``tile`` and ``overlap`` are multiples of 8 (``tile > overlap``); starts are spread
    evenly and fall on multiples of 8.
    """
    if length <= tile:
        return [(0, length)]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    while True:
        starts = [ALIGN * round(k * (length - tile) / (count - 1) / ALIGN) for k in range(count)]
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False)):
            return [(s, s + tile) for s in starts]
        count += 1


def _core_bounds(windows: list[tuple[int, int]], length: int) -> list[int]:
    """Boundaries of a partition of ``[0, length)``: window k owns ``[bounds[k], bounds[k+1])``, the middle of each overlap."""
    bounds = [0]
    for (_, prev_end), (start, _) in zip(windows, windows[1:], strict=False):
        bounds.append(ALIGN * round((start + prev_end) / 2 / ALIGN))
    return [*bounds, length]


def _ramps(windows: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """1-D blending weights per window: sin^2 rising across the overlap with the previous window,
    cos^2 falling across the overlap with the next; neighbours' weights sum to one."""
    weights = []
    for k, (start, end) in enumerate(windows):
        w = torch.ones(end - start, dtype=torch.float64)
        if k > 0 and windows[k - 1][1] > start:
            width = windows[k - 1][1] - start
            w[:width] = torch.sin(math.pi / 2 * (torch.arange(width, dtype=torch.float64) + 0.5) / width) ** 2
        if k + 1 < len(windows) and end > windows[k + 1][0]:
            width = end - windows[k + 1][0]
            w[-width:] *= torch.cos(math.pi / 2 * (torch.arange(width, dtype=torch.float64) + 0.5) / width) ** 2
        weights.append(w.float().to(device))
    return weights


def _check_inputs(a: torch.Tensor, b: torch.Tensor, tile: int, overlap: int) -> None:
    if a.shape[-2:] != b.shape[-2:] or a.shape[0] != b.shape[0]:
        raise ValueError(f"sources differ in size: {tuple(a.shape)} and {tuple(b.shape)}")
    height, width = a.shape[-2:]
    if height % ALIGN or width % ALIGN:
        raise ValueError(f"height and width must be multiples of {ALIGN} (pad first), not {height}x{width}")
    if tile < 2 * ALIGN or tile % ALIGN or overlap % ALIGN or not 0 <= overlap <= tile // 2:
        raise ValueError(
            f"tile must be a multiple of {ALIGN} and at least {2 * ALIGN}, overlap a multiple of {ALIGN} "
            f"in [0, tile / 2]; got tile={tile}, overlap={overlap}"
        )


def _halo_crop(start: int, end: int, length: int) -> tuple[slice, slice]:
    """(window with a one-pixel halo inside the image, the part of it that is [start, end))."""
    lo, hi = max(start - 1, 0), min(end + 1, length)
    return slice(lo, hi), slice(start - lo, start - lo + end - start)


@torch.no_grad()
def _shallow_statistics(model: UPFusion, a: torch.Tensor, b: torch.Tensor, block: int) -> SharedStatistics:
    """GAM's pooled embeddings and SCPM's selection for the whole image, from blocks with a one-pixel halo."""
    n, _, height, width = a.shape
    c = model.config.dim
    sum_a = torch.zeros(n, c, dtype=torch.float64, device=a.device)
    sum_b = torch.zeros_like(sum_a)
    scpm = model.channel_select
    projected = None  # suo_conv(p) over the whole image: 3 channels, the backbone's input before resizing
    if scpm is not None and scpm.backbone is not None:
        projected = torch.empty(n, 3, height, width, dtype=torch.float32, device=a.device)
    for y0 in range(0, height, block):
        y1 = min(y0 + block, height)
        rows, row_crop = _halo_crop(y0, y1, height)
        for x0 in range(0, width, block):
            x1 = min(x0 + block, width)
            cols, col_crop = _halo_crop(x0, x1, width)
            e_a, e_b = model.embed(a[:, :, rows, cols], b[:, :, rows, cols])
            e_a, e_b = e_a[:, :, row_crop, col_crop], e_b[:, :, row_crop, col_crop]
            sum_a += e_a.sum(dim=(2, 3), dtype=torch.float64)
            sum_b += e_b.sum(dim=(2, 3), dtype=torch.float64)
            if projected is not None:
                with torch.autocast(a.device.type, enabled=False):
                    projected[:, :, y0:y1, x0:x1] = scpm.suo_conv(((e_a + e_b) / 2).float())
    pixels = height * width
    pooled_a, pooled_b = (sum_a / pixels).float(), (sum_b / pixels).float()
    scpm_indices = None
    if scpm is not None:
        # GAP(p) = (GAP(eA) + GAP(eB)) / 2: p is their average
        pooled_p = ((sum_a + sum_b) / 2 / pixels).float()
        backbone_input = resize_for_backbone(projected) if projected is not None else None
        scpm_indices = torch.topk(scpm.scores(pooled_p, backbone_input), scpm.keep, dim=1).indices
    gam_pooled = (pooled_a.view(n, c, 1, 1), pooled_b.view(n, c, 1, 1))
    return SharedStatistics(scpm_indices=scpm_indices, gam_pooled=gam_pooled)


@torch.no_grad()
def whole_image_statistics(
    model: UPFusion,
    a: torch.Tensor,
    b: torch.Tensor,
    tile: int,
    overlap: int,
    progress: Callable[[], None] | None = None,
) -> SharedStatistics:
    """The ``SharedStatistics`` of the whole image, computed without holding it in the network at once."""
    _check_inputs(a, b, tile, overlap)
    shared = _shallow_statistics(model, a, b, tile)
    tcpms = model.tcpm_modules()
    if not any(t is not None and t.se_fc is not None for t in tcpms):
        return shared
    n, _, height, width = a.shape
    rows, cols = tile_windows(height, tile, overlap), tile_windows(width, tile, overlap)
    row_bounds, col_bounds = _core_bounds(rows, height), _core_bounds(cols, width)
    sums: list[torch.Tensor | None] = [None] * 4
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            e_a, e_b = model.embed(a[:, :, y0:y1, x0:x1], b[:, :, y0:y1, x0:x1])
            levels = model.encode(*model.select_and_modulate(e_a, e_b, shared))
            del e_a, e_b
            for level, (feat_a, feat_b) in enumerate(levels):
                scale = 2**level
                # this window's core, in the level's coordinates relative to the window
                r = slice((row_bounds[i] - y0) // scale, (row_bounds[i + 1] - y0) // scale)
                c = slice((col_bounds[j] - x0) // scale, (col_bounds[j + 1] - x0) // scale)
                core_sum = torch.cat([feat_a[:, :, r, c], feat_b[:, :, r, c]], dim=1).sum(
                    dim=(2, 3), dtype=torch.float64
                )
                sums[level] = core_sum if sums[level] is None else sums[level] + core_sum
            if progress is not None:
                progress()
    indices = []
    for level, tcpm in enumerate(tcpms):
        if tcpm is None or tcpm.se_fc is None:
            indices.append(None)
            continue
        pixels = (height // 2**level) * (width // 2**level)
        indices.append(tcpm.channel_selection((sums[level] / pixels).float()))
    return SharedStatistics(shared.scpm_indices, shared.gam_pooled, tuple(indices))


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles ``tiled_forward`` runs the network on (once more for the encoder statistics)."""
    return len(tile_windows(height, tile, overlap)) * len(tile_windows(width, tile, overlap))


@torch.no_grad()
def tiled_forward(
    model: UPFusion,
    a: torch.Tensor,
    b: torch.Tensor,
    text: torch.Tensor,
    tile: int = 512,
    overlap: int = 64,
    progress: Callable[[], None] | None = None,
    share_statistics: bool = True,
) -> torch.Tensor:
    """``model(a, b, text)`` computed tile by tile: fused luma [N, 1, H, W] (float32, unclamped).

    ``a``, ``b``: [N, 1 or 3, H, W] with H and W multiples of 8 (pad as for the whole image: the
    padding enters the whole-image statistics). ``tile``: tile side in pixels (a multiple of 8);
    ``overlap``: pixels shared by neighbouring tiles (a multiple of 8, at most ``tile / 2``).
    An image no larger than one tile is fused in one ordinary pass. ``progress`` is called
    once per tile and pass. ``share_statistics=False`` lets every tile compute its own
    statistics (no encoder pass first; for comparison: the tiles then disagree).
    """
    _check_inputs(a, b, tile, overlap)
    n, _, height, width = a.shape
    rows, cols = tile_windows(height, tile, overlap), tile_windows(width, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return model(a, b, text).float()
    shared = whole_image_statistics(model, a, b, tile, overlap, progress) if share_statistics else None
    out = torch.zeros(n, 1, height, width, dtype=torch.float32, device=a.device)
    total = torch.zeros(1, 1, height, width, dtype=torch.float32, device=a.device)
    row_ramps, col_ramps = _ramps(rows, a.device), _ramps(cols, a.device)
    for (y0, y1), row_ramp in zip(rows, row_ramps, strict=True):
        for (x0, x1), col_ramp in zip(cols, col_ramps, strict=True):
            weight = row_ramp[:, None] * col_ramp[None, :]
            fused = model(a[:, :, y0:y1, x0:x1], b[:, :, y0:y1, x0:x1], text, shared).float()
            out[:, :, y0:y1, x0:x1] += fused * weight
            total[:, :, y0:y1, x0:x1] += weight
            if progress is not None:
                progress()
    return out / total


# --------------------------------------------------------------------------------------------
# when to tile: a peak-memory estimate of the inference kernels, fitted to measured peaks
# (benchmarks/bench_inference.py --memory); it over-estimates rather than under-estimates.

BYTES_PER_PIXEL_AND_CHANNEL = {"cpu": 60.0, "cuda": 150.0}  # x dim (C), float32 activations
BAND_BYTES = {"cpu": 400 * 2**20, "cuda": 4 * 2**30}  # row-band temporaries, independent of the image size


def estimate_peak_bytes(config: ModelConfig, height: int, width: int, batch: int = 1, device_type: str = "cpu") -> int:
    """Activation memory of one forward pass (weights and the PyTorch runtime not included)."""
    kind = "cpu" if device_type == "cpu" else "cuda"
    per_pixel = BYTES_PER_PIXEL_AND_CHANNEL[kind] * config.dim
    return int(batch * height * width * per_pixel + BAND_BYTES[kind])


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for activations now: CUDA's free memory, or the OS's MemAvailable (None if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def plan_tile(
    config: ModelConfig,
    height: int,
    width: int,
    batch: int = 1,
    device: torch.device | str = "cpu",
    budget_bytes: int | None = None,
    fraction: float = 0.7,
) -> int | None:
    """The tile size to use for a ``height x width`` image, or None when the whole image fits.

    ``budget_bytes`` defaults to ``fraction`` of the memory available now. The tile is the
    largest multiple of 64 (at least 256) whose estimate fits the budget.
    """
    device_type = torch.device(device).type
    if budget_bytes is None:
        available = available_memory_bytes(device)
        if available is None:
            return None
        budget_bytes = int(available * fraction)
    if estimate_peak_bytes(config, height, width, batch, device_type) <= budget_bytes:
        return None
    tile = 256
    while (
        tile + 64 < max(height, width)
        and estimate_peak_bytes(config, tile + 64, tile + 64, batch, device_type) <= budget_bytes
    ):
        tile += 64
    return tile
