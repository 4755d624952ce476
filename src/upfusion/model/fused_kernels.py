"""Triton kernels that run a stage of a Restormer block as one pass over memory (GPUs).

``benchmarks/roofline.py`` counts why: run operator by operator, the paper preset moves about
100 GB for one 640x480 pair in bf16, 30 ms at an H100's 3.35 TB/s, above issue #6's 13 ms
before any kernel is slow; with each block's stages fused it moves about 11 GB.

- ``gdfn_residual``: ``x + GDFN(LayerNorm(x))``. Each program takes a tile of output pixels
  with a one-pixel halo and, for each slice of the hidden channels: LayerNorm of the halo
  tile, ``project_in`` (both halves), the depth-wise 3x3 convolution (through a small scratch
  tile that stays in the GPU's cache: Triton cannot shift a tile held in registers),
  ``gelu(x1) * x2`` and its share of ``project_out``, summed in registers. The hidden channels
  are independent until ``project_out``, which is why the slices can be done one by one. In a
  block it first applies MDTA's attention, ``x + v @ M^T``, on the halo tile too.
- ``mdta_statistics``: MDTA's pass over the map, the same way head by head: q, k and v, each
  tile's share of the Gram matrices and of the norms of q and k (added atomically), and v.
  The softmax and ``M`` (``project_out``'s weight times the block-diagonal attention) are a
  few small operations in ``fast_ops``. ``cross_attention_statistics``: the same kernel for
  TCPM's top-k cross-attention (q from one map, k and v from another).

Only the blocks' inputs and outputs, and v, touch main memory. On by default where they were
timed (an H100: 2.2 times faster on the paper preset) under bf16 or fp16 autocast: on CUDA GPUs
of compute capability 9.0 and above with Triton installed (``set_fused_kernels``, or the
environment variable ``UPFUSION_FUSED_KERNELS=0`` or ``1``, turn them off or on elsewhere;
``upfusion bench --arithmetic fast|fused`` compares). The tests run the kernels with Triton's interpreter
(``TRITON_INTERPRET=1``) on the CPU, against the modules' own arithmetic, and compile them for
an H100 without one to check that they do not spill registers
(``benchmarks/kernel_resources.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
import weakref

import torch
from torch import nn


def _from_environment() -> bool | None:
    """``UPFUSION_FUSED_KERNELS``: "1" on, "0" off, unset or empty the default (None)."""
    value = os.environ.get("UPFUSION_FUSED_KERNELS", "")
    if value not in ("", "0", "1"):
        warnings.warn(f"UPFUSION_FUSED_KERNELS={value!r} is neither 0 nor 1: ignored", stacklevel=2)
    return {"1": True, "0": False}.get(value)


# True or False: set (set_fused_kernels, UPFUSION_FUSED_KERNELS); None: on where timed (_timed_gpu)
_enabled: bool | None = _from_environment()
_config: KernelConfig | None = None
_too_wide: set[int] = set()  # channel widths whose kernels do not fit this GPU (see _launched)

# The widest map the kernels take (the paper preset's latent level): the LayerNorm tile of
# [halo pixels, channels] is held whole.
MAX_CHANNELS = 512
PROJECTION_CHUNK = 32  # the attention kernel's projections are made this many columns at a time
# Programs a launch starts (see _Launch): this many per multiprocessor on a GPU (the kernels use
# 180-255 registers a thread at 8 warps, so one or two fit at a time); a few in the interpreter,
# so that the tests see programs take several tiles.
PROGRAMS_PER_SM = 2
INTERPRETER_PROGRAMS = 3
# The widest maps the kernels take on a GPU unless a config is given: timed on an H100
# (2026-11-27, batch 8, bf16), a block at 192 channels (160x120) took 5.8 ms fused with its
# fastest tiles against 3.5 ms with the inference kernels; at 384 (80x60) the paper preset's
# latent blocks took 12 ms each fused. At 48 and 96 channels the fused block is 1.8 to 2.7
# times faster.
GPU_WIDEST = 128


def set_fused_kernels(enabled: bool | None, config: KernelConfig | None = None) -> None:
    """Turns the fused Triton kernels on or off for the whole process; ``None``: the default, on
    CUDA GPUs of compute capability 9.0 and above (Hopper: where they were timed) when Triton is
    installed. With ``config``, every kernel cuts its map that way (else ``default_config``, and
    maps wider than ``GPU_WIDEST`` stay with the inference kernels on a GPU). Forgets which widths
    did not fit the GPU (``left_out``)."""
    global _enabled, _config
    _enabled, _config = (None if enabled is None else bool(enabled)), config
    _too_wide.clear()


@functools.cache
def _timed_gpu(index: int) -> bool:
    """The default for the CUDA GPU ``index``: a Hopper or later GPU, and Triton importable."""
    return torch.cuda.get_device_capability(index) >= (9, 0) and available()


def runs_for(device: torch.device, precision: str) -> bool:
    """Whether a network on ``device`` in ``precision`` ("fp32", "bf16" or "fp16") runs the
    kernels: on a CUDA GPU, in bf16 or fp16, where they are on (``set_fused_kernels``; by default
    on Hopper or later GPUs with Triton installed)."""
    if device.type != "cuda" or precision == "fp32" or _enabled is False:
        return False
    return _enabled is True or _timed_gpu(device.index)


def left_out() -> frozenset[int]:
    """The channel widths whose kernels did not fit this GPU since ``set_fused_kernels``: they run
    the inference kernels."""
    return frozenset(_too_wide)


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
    """True when the kernels should run for the map ``x`` [N, C, H, W]: when on (by default on CUDA
    GPUs of compute capability 9.0 and above, see ``set_fused_kernels``), on a CUDA GPU under bf16
    or fp16 autocast for maps up to ``GPU_WIDEST`` channels; when turned on explicitly, also on
    the CPU in Triton's interpreter (any precision: the tests check the kernels' arithmetic in
    fp32 there).

    Not in fp32 on a GPU: without half-precision tensor-core products the kernels spill 0.8 to
    92 KB of registers a thread, and the attention kernel's tiles need 132 to 320 KiB of shared
    memory (an H100 has 227; ``benchmarks/kernel_resources.py --precision fp32``), so fp32
    stays with the inference kernels.

    Under ``torch.compile`` too: the kernels' entry points are left out of the graph
    (``torch.compiler.disable``), so the compiler fuses the rest of the network around them;
    not while exporting (ONNX)."""
    if _enabled is False or x.shape[1] > MAX_CHANNELS or x.shape[1] in _too_wide or exporting():
        return False
    if x.is_cuda:
        if (_enabled is None and not _timed_gpu(x.device.index)) or (_config is None and x.shape[1] > GPU_WIDEST):
            return False
        return torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
    return _enabled is True and interpreting() and x.device.type == "cpu"


def exporting() -> bool:
    """Inside ``torch.export`` (ONNX export); False on PyTorch versions without the query."""
    return getattr(torch.compiler, "is_exporting", lambda: False)()


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How a kernel cuts the map: output tiles of ``tile`` (rows, columns), whose halo tile,
    (rows + 2) x (columns + 2), is padded to a power of two; ``num_warps`` per program.

    ``default_config`` gives the tiles timed fastest on an H100 (``benchmarks/bench_fused_stages.py``
    times other choices)."""

    tile: tuple[int, int]
    num_warps: int = 8
    # ptxas's register limit per thread (Triton's ``maxnreg``); None: up to 255, which leaves
    # room for one program of 8 warps per multiprocessor. Fewer registers, more programs, spills.
    max_registers: int | None = None
    # the depth-wise convolution's scratch tile in float32 rather than the compute dtype: twice
    # the bytes, no conversion on each of the nine reads (about a quarter of the GDFN kernel's
    # instructions on the H100 were bf16 -> float32 conversions); on an H200 (2026-11-28) no
    # block was faster with it, and the attention kernel was slower (it waits on those reads)
    float32_scratch: bool = False
    # the hidden channels the GDFN kernel takes per step; None: ``hidden_slice(channels)``
    hidden_slice: int | None = None
    # the depth-wise taps as [9, channels], so that a tap's columns are one vector load, rather
    # than [channels, 9], a scalar load per column (8% of the GDFN kernel's instructions on the
    # H100); compiled for an H100 by Triton 3.6, the vector loads spill 20-100 bytes a thread in
    # the GDFN kernel at the timed tiles (none channel-major): untimed
    tap_major: bool = False

    def notation(self) -> str:
        """This config in ``parse``'s notation."""
        options = [f"{self.tile[0]}x{self.tile[1]}", str(self.num_warps)]
        options += [str(self.max_registers)] if self.max_registers else []
        options += ["f32"] if self.float32_scratch else []
        options += [f"s{self.hidden_slice}"] if self.hidden_slice else []
        options += ["tap"] if self.tap_major else []
        return ":".join(options)

    @classmethod
    def parse(cls, text: str, default: KernelConfig | None = None) -> KernelConfig:
        """``ROWSxCOLS[:WARPS][:REGISTERS][:f32][:sSLICE][:tap]`` (the benchmarks' notation):
        ``f32`` a float32 scratch, ``s64`` 64 hidden channels a step, ``tap`` tap-major taps;
        ``default`` for ROWSxCOLS takes ``default``'s tile, and its warps if none are given."""
        if text == "default" and default is not None:
            return default
        tile, *options = text.split(":")
        numbers = [int(option) for option in options if option.isdigit()]
        slices = [int(option[1:]) for option in options if option[:1] == "s" and option[1:].isdigit()]
        unknown = set(options) - {str(n) for n in numbers} - {f"s{n}" for n in slices} - {"f32", "tap"}
        if unknown or (tile == "default" and default is None):
            raise ValueError(f"not a kernel config: {text!r}")
        rows, cols = default.tile if tile == "default" else map(int, tile.split("x"))
        return cls(
            (rows, cols),
            numbers[0] if numbers else (default.num_warps if default else 8),
            numbers[1] if len(numbers) > 1 else None,
            float32_scratch="f32" in options,
            hidden_slice=slices[0] if slices else None,
            tap_major="tap" in options,
        )


def hidden_slice(channels: int) -> int:
    """The hidden channels the GDFN kernel takes per step for maps of ``channels``: 16 above 256
    channels, where 32 spilled 144-220 bytes of registers a thread when compiled for an H100
    (52-60 with 16: ``benchmarks/kernel_resources.py``), else 32."""
    return 16 if channels > 256 else 32


def default_config(channels: int, kernel: str = "gdfn") -> KernelConfig:
    """The tiles of ``kernel`` ("gdfn" or "attention") for maps of ``channels``: smaller for
    wider maps. At 48 and 96 channels (the paper preset's full and half resolution) the fastest
    timed on an H100 (2026-11-27, ``benchmarks/bench_fused_stages.py``, batch 8, bf16; still the
    fastest blocks among nine other configs on an H200, 2026-11-28); at other
    widths the largest that compile for an H100 (``benchmarks/kernel_resources.py``, Triton 3.6
    and 3.8) spilling no registers or a few (16 bytes at most; at 384 channels every tile spills
    some, 24-132 bytes a thread at 2x6). The timed attention tiles at 96 channels with one head
    spill 1.2 KB a thread with 4 warps, and ran 9% faster than with 8 warps and none. Maps wider
    than ``GPU_WIDEST`` run the inference kernels on a GPU unless a config is given."""
    table = _GDFN_TILES if kernel == "gdfn" else _ATTENTION_TILES
    return next(config for widest, config in table if channels <= widest)


# (widest channels, tiles and warps)
_GDFN_TILES = (
    (128, KernelConfig((6, 14))),
    (256, KernelConfig((6, 6))),
    (MAX_CHANNELS, KernelConfig((2, 6))),
)
_ATTENTION_TILES = (  # 4 warps: faster on the H100 at 48 and 96 channels, even where they spill
    (96, KernelConfig((6, 14), num_warps=4)),
    (128, KernelConfig((6, 14))),
    (MAX_CHANNELS, KernelConfig((2, 6))),
)


class _Launch:
    """What both kernels need for a map ``x`` [N, C, H, W]: its tiling, the arithmetic's dtypes,
    and scratch of ``scratch_columns`` values per halo pixel for each program.

    Computes in the autocast dtype when autocast is on (bf16 or fp16 products, float32 sums),
    else in float32 (TF32 off; only in Triton's interpreter: see ``applies``).

    One launch of a few programs per multiprocessor, each taking every ``programs``-th tile (a
    persistent grid), rather than one program per tile: each program's scratch (its tile's
    depth-wise inputs, in the compute dtype or float32: ``KernelConfig``) is reused tile after
    tile, so all of it, a few MB, stays in the GPU's L2 cache. With a scratch tile per output tile
    (as before 2026-11-27), the paper preset's kernels wrote 7 MB to 1.9 GB of float32 scratch per
    call on a 640x480 batch of 8, up to 4 times the map itself (MDTA at 96 channels, full
    resolution: 1.9 GB against 0.47 GB), more than the cache holds, so it went back to memory as
    well.
    """

    def __init__(self, x: torch.Tensor, config: KernelConfig, scratch_columns: int) -> None:
        n, c, height, width = x.shape
        device_type = x.device.type
        enabled = torch.is_autocast_enabled(device_type)
        self.compute = torch.get_autocast_dtype(device_type) if enabled else torch.float32
        tile_h, tile_w = config.tile
        self.constants = kernel_constants(c, config, self.compute)
        columns, rows = -(-width // tile_w), -(-height // tile_h)
        self.tiles = (columns, rows, columns * rows * n)  # the kernels' tile_columns, tile_rows, tiles
        if x.is_cuda:
            slots = torch.cuda.get_device_properties(x.device).multi_processor_count * PROGRAMS_PER_SM
        else:
            slots = INTERPRETER_PROGRAMS
        self.programs = min(self.tiles[2], slots)
        per_program = self.constants["HALO_P"] * scratch_columns
        scratch_dtype = torch.float32 if config.float32_scratch else self.compute
        self.scratch = torch.empty(self.programs * per_program, dtype=scratch_dtype, device=x.device)


def kernel_constants(channels: int, config: KernelConfig, compute: torch.dtype) -> dict:
    """The compile-time constants both kernels take for maps of ``channels`` cut by ``config``,
    computing in ``compute`` (and ``num_warps``)."""
    tile_h, tile_w = config.tile
    return dict(
        BLOCK_C=_next_power_of_2(channels), TILE_H=tile_h, TILE_W=tile_w,
        HALO_P=_next_power_of_2((tile_h + 2) * (tile_w + 2)), OUT_P=_next_power_of_2(tile_h * tile_w),
        DOT_DTYPE=_triton_dtype(compute),
        PRECISION="ieee" if compute == torch.float32 else "tf32", EMULATED=interpreting(),
        TAP_MAJOR=config.tap_major, num_warps=config.num_warps,
        **({"maxnreg": config.max_registers} if config.max_registers else {}),
    )  # fmt: skip


def attention_constants(head_width: int) -> dict:
    """The attention kernel's own compile-time constants for heads of ``head_width`` channels:
    the head padded to a power of two (HEAD_P) and the columns made at a time (CHUNK)."""
    head_p = _next_power_of_2(head_width)
    return dict(HEAD_P=head_p, CHUNK=min(head_p, PROJECTION_CHUNK))


def _triton_dtype(dtype: torch.dtype):
    import triton.language as tl  # (Triton is optional: imported when a kernel runs)

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _launched(kernel, launch: _Launch, x: torch.Tensor, *args, **constants) -> bool:
    """Runs ``kernel`` on the map ``x``. False, with a warning once per width, when Triton finds
    that it needs more registers or shared memory than this GPU has (wide maps, large tiles), or
    cannot build it for this GPU (they are on by default, so a Triton or GPU they were not
    tried with must not stop a run): that width then stays with the inference kernels."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    try:
        kernel[(launch.programs,)](x, *args, *launch.tiles, **constants, **launch.constants)
        return True
    except (OutOfResources, CompilationError) as error:
        _too_wide.add(x.shape[1])
        reason = " ".join(str(error).split())[:300]
        warnings.warn(
            f"fused kernels: {x.shape[1]}-channel maps stay with the inference kernels on this GPU ({reason})",
            stacklevel=3,
        )
        return False


def _next_power_of_2(n: int) -> int:
    return 1 << max(4, math.ceil(math.log2(n)))


def _rows(w: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """A weight as ``dtype`` [rows, k] (its first axis, the rest flattened), zero-padded rows."""
    w = w.detach().flatten(1).to(dtype)
    return torch.cat([w, w.new_zeros(rows - w.shape[0], w.shape[1])]) if rows > w.shape[0] else w.contiguous()


def _taps(dw: torch.Tensor, columns: int, tap_major: bool) -> torch.Tensor:
    """Depth-wise 3x3 taps [k, 1, 3, 3] as float32 [columns, 9] (zero-padded columns), or [9,
    columns] ``tap_major`` (``KernelConfig.tap_major``)."""
    taps = _rows(dw, columns, torch.float32)
    return taps.t().contiguous() if tap_major else taps


# The kernels' weight layouts, made once per module: each costs a dozen small operations, and
# on a GPU their launches would add up over the blocks. A parameter changed in place (training)
# has a new version, and the layouts are made again.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepared_weights(
    owner: nn.Module, modules: tuple[nn.Module, ...], layout: tuple, make
) -> tuple[torch.Tensor, ...]:
    """``make()``, cached on ``owner`` while the parameters of ``modules`` and ``layout`` (what
    else the layouts depend on: the dtype, the padding) stay the same."""
    key = layout + tuple((p.data_ptr(), p._version, p.device) for m in modules for p in m.parameters())
    cached = _prepared.get(owner)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = _prepared[owner] = (key, make())
    return cached[1]


def _gdfn_weights(
    norm: nn.Module, ffn: nn.Module, padded: int, dtype: torch.dtype, tap_major: bool
) -> tuple[torch.Tensor, ...]:
    """LayerNorm weight and bias and both halves of the depth-wise taps as [padded, 9] or [9,
    padded] (``_taps``; float32: with taps in bf16, TCPM's top-k picked unlike the inference
    kernels' in the bf16 test); in ``dtype``: both halves of ``project_in`` as [C, padded] and
    ``project_out`` as [padded, C]."""
    hidden = ffn.project_out.in_channels
    w_in, dw = ffn.project_in.weight, ffn.dwconv.weight  # [2 hidden, C, 1, 1], [2 hidden, 1, 3, 3]
    return (
        norm.body.weight.float(), norm.body.bias.float(),
        _rows(w_in[:hidden], padded, dtype).t().contiguous(), _rows(w_in[hidden:], padded, dtype).t().contiguous(),
        _taps(dw[:hidden], padded, tap_major), _taps(dw[hidden:], padded, tap_major),
        _rows(ffn.project_out.weight.flatten(1).t(), padded, dtype),
    )  # fmt: skip


@torch.compiler.disable  # a graph break: the kernels run as they are (see applies)
def gdfn_residual(
    norm: nn.Module,
    ffn: nn.Module,
    x: torch.Tensor,
    config: KernelConfig | None = None,
    attention: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """``x + GDFN(norm(x))`` for a map ``x`` [N, C, H, W], in one kernel; channels-last result
    (None if the kernel does not fit this GPU at this width: see ``_launched``).

    With ``attention = (values, matrix)`` (v as [N, H*W, C] and ``project_out.weight @
    blockdiag(attn)`` as [N, C, C], from ``mdta_statistics``), the kernel first applies MDTA's
    attention: the block's whole second half, ``y + GDFN(norm(y))`` with ``y = x + v @ M^T``.
    """
    from .triton_kernels import gdfn_residual_kernel

    n, c, height, width = x.shape
    config = config or _config or default_config(c, "gdfn")
    step = config.hidden_slice or hidden_slice(c)
    launch = _Launch(x, config, step)
    x = x.contiguous(memory_format=torch.channels_last)
    padded = -(-ffn.project_out.in_channels // step) * step
    layout = (launch.compute, padded, config.tap_major)
    weights = _prepared_weights(
        ffn, (norm, ffn), layout, lambda: _gdfn_weights(norm, ffn, padded, launch.compute, config.tap_major)
    )
    if attention is None:
        values = matrix_t = x  # (not read)
        out_dtype = torch.promote_types(x.dtype, launch.compute)
    else:  # as fast_ops._apply_attention: M^T in the values' dtype, the result too
        values, matrix = attention
        matrix_t = matrix.transpose(1, 2).to(values.dtype).contiguous()
        out_dtype = torch.promote_types(values.dtype, launch.compute)
    out = torch.empty(n, c, height, width, dtype=out_dtype, device=x.device, memory_format=torch.channels_last)
    launched = _launched(
        gdfn_residual_kernel, launch, x, values, matrix_t, out, launch.scratch, *weights, height, width, c, padded,
        SLICE=step, WITH_ATTENTION=attention is not None, OUT_DTYPE=_triton_dtype(out_dtype),
    )  # fmt: skip
    return out if launched else None


def _attention_weights(
    norm_q: nn.Module, norm_kv: nn.Module, w_q, dw_q, w_kv, dw_kv, dtype: torch.dtype, tap_major: bool
) -> tuple[torch.Tensor, ...]:
    """The two LayerNorms' weights and biases and q, k and v's depth-wise taps as [C, 9] or [9,
    C] (float32, see ``_gdfn_weights``); q, k and v's 1x1 weights as [C, C] (input-major) in
    ``dtype`` (``w_kv``, ``dw_kv``: k's channels, then v's)."""
    c = w_q.shape[0]
    return (
        norm_q.body.weight.float(), norm_q.body.bias.float(), norm_kv.body.weight.float(), norm_kv.body.bias.float(),
        _rows(w_q, c, dtype).t().contiguous(), _rows(w_kv[:c], c, dtype).t().contiguous(),
        _rows(w_kv[c:], c, dtype).t().contiguous(),
        _taps(dw_q, c, tap_major), _taps(dw_kv[:c], c, tap_major), _taps(dw_kv[c:], c, tap_major),
    )  # fmt: skip


def _attention_statistics(
    owner: nn.Module,
    modules: tuple[nn.Module, ...],
    make_weights,
    xq: torch.Tensor,
    xkv: torch.Tensor | None,
    heads: int,
    gram: torch.Tensor,
    q_sq: torch.Tensor,
    k_sq: torch.Tensor,
    config: KernelConfig | None,
) -> torch.Tensor | None:
    """The kernel of ``mdta_statistics`` (``xkv`` None: k and v from ``xq`` too) and
    ``cross_attention_statistics``; ``make_weights(dtype)``: ``_attention_weights`` of ``modules``."""
    from .triton_kernels import attention_statistics_kernel

    n, c, height, width = xq.shape
    head_width = c // heads
    config = config or _config or default_config(c, "attention")
    constants = attention_constants(head_width)
    launch = _Launch(xq, config, constants["HEAD_P"])
    layout = (launch.compute, config.tap_major)
    weights = _prepared_weights(owner, modules, layout, lambda: make_weights(launch.compute, config.tap_major))
    xq = xq.contiguous(memory_format=torch.channels_last)
    same = xkv is None
    xkv = xq if same else xkv.contiguous(memory_format=torch.channels_last)
    values = torch.empty(n, height * width, c, dtype=launch.compute, device=xq.device)
    launched = _launched(
        attention_statistics_kernel, launch, xq, xkv, values, gram, q_sq, k_sq, launch.scratch, *weights,
        height, width, c, heads, head_width, SAME_INPUT=same, **constants,
    )  # fmt: skip
    return values if launched else None


@torch.compiler.disable  # a graph break: the kernels run as they are (see applies)
def mdta_statistics(
    norm: nn.Module,
    attn: nn.Module,
    x: torch.Tensor,
    gram: torch.Tensor,
    q_sq: torch.Tensor,
    k_sq: torch.Tensor,
    config: KernelConfig | None = None,
) -> torch.Tensor | None:
    """MDTA's pass over ``x`` [N, C, H, W] in one kernel: adds each head's ``q_h^T k_h`` to ``gram``
    [N, heads, d, d] and the squared norms of q and k to ``q_sq``, ``k_sq`` [N, C] (float32, as
    ``fast_ops._GramAccumulator``), and returns v as [N, H*W, C] (in the compute dtype); None if
    the kernel does not fit this GPU at this width (see ``_launched``)."""
    c = x.shape[1]
    w, dw = attn.qkv.weight, attn.qkv_dwconv.weight  # q's channels, then k's, then v's

    def make_weights(dtype: torch.dtype, tap_major: bool) -> tuple[torch.Tensor, ...]:
        return _attention_weights(norm, norm, w[:c], dw[:c], w[c:], dw[c:], dtype, tap_major)

    return _attention_statistics(attn, (norm, attn), make_weights, x, None, attn.heads, gram, q_sq, k_sq, config)


@torch.compiler.disable  # a graph break: the kernels run as they are (see applies)
def cross_attention_statistics(
    tcpm: nn.Module,
    query: torch.Tensor,
    key_value: torch.Tensor,
    gram: torch.Tensor,
    q_sq: torch.Tensor,
    k_sq: torch.Tensor,
    config: KernelConfig | None = None,
) -> torch.Tensor | None:
    """``mdta_statistics`` for TCPM's top-k cross-attention: q from ``norm1(query)``, k and v from
    ``norm2(key_value)``."""
    attn = tcpm.select_attn

    def make_weights(dtype: torch.dtype, tap_major: bool) -> tuple[torch.Tensor, ...]:
        return _attention_weights(
            tcpm.norm1, tcpm.norm2, attn.q.weight, attn.q_dwconv.weight, attn.kv.weight, attn.kv_dwconv.weight,
            dtype, tap_major,
        )  # fmt: skip

    modules = (tcpm.norm1, tcpm.norm2, attn)
    return _attention_statistics(attn, modules, make_weights, query, key_value, attn.heads, gram, q_sq, k_sq, config)
