"""Triton kernels that run a stage of a Restormer block as one pass over memory (GPUs).

``benchmarks/roofline.py`` counts why: run operator by operator, the paper preset moves about
100 GB for one 640x480 pair in bf16, 30 ms at an H100's 3.35 TB/s, above issue #6's 13 ms
before any kernel is slow; with each block's stages fused it moves about 11 GB.

- ``gdfn_residual``: ``x + GDFN(LayerNorm(x))``. Each program takes a tile of output pixels
  with a one-pixel halo and, for each slice of the hidden channels: LayerNorm of the halo
  tile, ``project_in`` (both halves), the depth-wise 3x3 convolution (through a small scratch
  tile that stays in the GPU's cache: Triton cannot shift a tile held in registers),
  ``gelu(x1) * x2`` and its share of ``project_out``, summed in registers. The hidden channels
  are independent until ``project_out``, which is why the slices can be done one by one.
- ``mdta_statistics``: MDTA's pass over the map, the same way head by head: q, k and v, each
  tile's share of the Gram matrices and of the norms of q and k (added atomically), and v.
  The softmax and the one product that applies the attention stay in ``fast_ops``.

Only the blocks' inputs and outputs (and v) touch main memory. Opt-in
(``set_fused_kernels(True)``, ``upfusion bench --arithmetic fused``) until timed on a GPU. The
tests run the kernels with Triton's interpreter (``TRITON_INTERPRET=1``) on the CPU, against
the modules' own arithmetic.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

_enabled = False

# Channel widths the kernel takes: the LayerNorm tile of [halo pixels, channels] is held whole.
MAX_CHANNELS = 128
HIDDEN_SLICE = 32  # hidden channels per step


def set_fused_kernels(enabled: bool) -> None:
    """Turns the fused Triton kernels on or off (off by default) for the whole process."""
    global _enabled
    _enabled = bool(enabled)


def available() -> bool:
    """Triton is importable and kernels can run: on a CUDA GPU, or on the CPU in Triton's interpreter."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or interpreting()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def applies(x: torch.Tensor) -> bool:
    """True when the kernels should run for the map ``x`` [N, C, H, W]."""
    if not _enabled or x.shape[1] > MAX_CHANNELS or torch.compiler.is_compiling():
        return False
    return x.is_cuda or (interpreting() and x.device.type == "cpu")


class _Launch:
    """What both kernels need for a map ``x`` [N, C, H, W]: its tiling and the arithmetic's dtypes.

    Computes in the autocast dtype when autocast is on (bf16 or fp16 products, float32 sums),
    else in float32 (TF32 off, as ``upfusion fuse`` runs fp32 on a GPU).
    """

    def __init__(self, x: torch.Tensor) -> None:
        from triton.language import bfloat16, float16, float32

        n, c, height, width = x.shape
        device_type = x.device.type
        enabled = torch.is_autocast_enabled(device_type)
        self.compute = torch.get_autocast_dtype(device_type) if enabled else torch.float32
        # the output tile: the halo tile, (rows + 2) x (columns + 2), is at most 256 pixels
        self.tile_h, self.tile_w = (14, 14) if c <= 64 else (6, 14)
        self.halo_p = _next_power_of_2((self.tile_h + 2) * (self.tile_w + 2))
        self.grid = (-(-width // self.tile_w), -(-height // self.tile_h), n)
        self.programs = self.grid[0] * self.grid[1] * n
        self.constants = dict(
            BLOCK_C=_next_power_of_2(c), TILE_H=self.tile_h, TILE_W=self.tile_w, HALO_P=self.halo_p,
            OUT_P=_next_power_of_2(self.tile_h * self.tile_w),
            DOT_DTYPE={torch.float32: float32, torch.bfloat16: bfloat16, torch.float16: float16}[self.compute],
            PRECISION="ieee" if self.compute == torch.float32 else "tf32", EMULATED=interpreting(),
        )  # fmt: skip


def _next_power_of_2(n: int) -> int:
    return 1 << max(4, math.ceil(math.log2(n)))


def _rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """A weight as float32 [rows, k] (its first axis, the rest flattened), zero-padded rows."""
    w = w.detach().flatten(1).float()
    return torch.cat([w, w.new_zeros(rows - w.shape[0], w.shape[1])]) if rows > w.shape[0] else w.contiguous()


def gdfn_residual(norm: nn.Module, ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + GDFN(norm(x))`` for a map ``x`` [N, C, H, W], in one kernel; channels-last result."""
    from .triton_kernels import gdfn_residual_kernel

    n, c, height, width = x.shape
    launch = _Launch(x)
    x = x.contiguous(memory_format=torch.channels_last)
    hidden = ffn.project_out.in_channels
    padded = -(-hidden // HIDDEN_SLICE) * HIDDEN_SLICE
    w_in, dw = ffn.project_in.weight, ffn.dwconv.weight  # [2 hidden, C, 1, 1], [2 hidden, 1, 3, 3]
    halves = [_rows(w_in[:hidden], padded).t().contiguous(), _rows(w_in[hidden:], padded).t().contiguous()]
    wo = _rows(ffn.project_out.weight.flatten(1).t(), padded)  # [padded, C]
    scratch = torch.empty(launch.programs * launch.halo_p * HIDDEN_SLICE, dtype=torch.float32, device=x.device)
    out_dtype = torch.promote_types(x.dtype, launch.compute)
    out = torch.empty(n, c, height, width, dtype=out_dtype, device=x.device, memory_format=torch.channels_last)
    gdfn_residual_kernel[launch.grid](
        x, out, scratch, norm.body.weight.detach().float(), norm.body.bias.detach().float(),
        *halves, _rows(dw[:hidden], padded), _rows(dw[hidden:], padded), wo,
        height, width, c, padded, SLICE=HIDDEN_SLICE, **launch.constants,
    )  # fmt: skip
    return out


def mdta_statistics(
    norm: nn.Module, attn: nn.Module, x: torch.Tensor, gram: torch.Tensor, q_sq: torch.Tensor, k_sq: torch.Tensor
) -> torch.Tensor:
    """MDTA's pass over ``x`` [N, C, H, W] in one kernel: adds each head's ``q_h^T k_h`` to ``gram``
    [N, heads, d, d] and the squared norms of q and k to ``q_sq``, ``k_sq`` [N, C] (float32, as
    ``fast_ops._GramAccumulator``), and returns v as [N, H*W, C] (in the compute dtype)."""
    from .triton_kernels import mdta_statistics_kernel

    n, c, height, width = x.shape
    launch = _Launch(x)
    x = x.contiguous(memory_format=torch.channels_last)
    head_width = c // attn.heads
    head_p = _next_power_of_2(head_width)
    w, dw = attn.qkv.weight, attn.qkv_dwconv.weight
    scratch = torch.empty(launch.programs * launch.halo_p * head_p, dtype=torch.float32, device=x.device)
    values = torch.empty(n, height * width, c, dtype=launch.compute, device=x.device)
    mdta_statistics_kernel[launch.grid](
        x, values, gram, q_sq, k_sq, scratch, norm.body.weight.detach().float(), norm.body.bias.detach().float(),
        *(_rows(w[i * c : (i + 1) * c], c).t().contiguous() for i in range(3)),
        *(_rows(dw[i * c : (i + 1) * c], c) for i in range(3)),
        height, width, c, attn.heads, head_width, HEAD_P=head_p, **launch.constants,
    )  # fmt: skip
    return values
