"""Running the network for inference: precision, TF32, ``torch.compile`` with a clean fallback.

- ``inference_context(device, precision)``: ``torch.inference_mode`` (which also selects the
  fast kernels of ``upfusion.model.fast_ops``), plus autocast for ``bf16``/``fp16``, or TF32
  switched off for ``fp32`` on CUDA (TF32 would move the hard channel selections, spec section 6).
  Under autocast the channel scores behind every top-k selection are still computed in float32.
- ``maybe_compile(model, scope)``: ``torch.compile`` of the whole model or of each Restormer
  block, when it works here, else the eager model and a warning (no compiler, an unsupported
  platform, or a failure on the first call).
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_SCOPES = ("blocks", "model")


def enlarge(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[N, C, H, W]`` enlarged ``factor`` times, each pixel an ``factor x factor`` block (nearest:
    no new values are made up). The first half of fusing at an enlarged scale (``--upscale``)."""
    return torch.nn.functional.interpolate(x, scale_factor=factor, mode="nearest") if factor > 1 else x


def average_blocks(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of each ``factor x factor`` block of ``[N, C, H, W]``: ``enlarge``'s way back."""
    return torch.nn.functional.avg_pool2d(x, factor) if factor > 1 else x


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic in hardware (x86: AVX512-BF16 or AMX; Arm: its BF16 extension).

    Without it bf16 is emulated and slower than fp32; with it, faster (docs/performance.md).
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        # (oneDNN's own check also accepts plain AVX-512, where it emulates bf16)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """float32 matrix products and convolutions in full float32 on CUDA (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def inference_context(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Inference mode in ``precision`` (``fp32``, ``bf16`` or ``fp16``) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    device = torch.device(device)
    dtype = PRECISIONS[precision]
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        elif device.type == "cuda":
            stack.enter_context(tf32_disabled())
        yield


class _CompiledOrEager:
    """Calls the compiled model; if compiling or running it fails, warns once and stays eager."""

    def __init__(
        self, model: torch.nn.Module, compiled: Callable[..., Any] | None, undo: Callable[[], None] | None = None
    ) -> None:
        self.model = model
        self.compiled = compiled
        self.undo = undo  # puts the model's own modules back where compiled ones were swapped in

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # the compiler's failures have no common type
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                    "running the model without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
                if self.undo is not None:
                    self.undo()
        return self.model(*args, **kwargs)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __getattr__(self, name: str) -> Any:
        # the model's own methods and attributes (tiled inference calls its stages one by one)
        return getattr(self.__dict__["model"], name)


def _compile_blocks(model: torch.nn.Module, mode: str | None) -> Callable[[], None]:
    """Swaps each Restormer block of ``model`` for its compiled self; returns the undo."""
    from .model.blocks import TransformerBlock

    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, TransformerBlock)
    ]

    def undo() -> None:
        for parent, name, child in swaps:
            setattr(parent, name, child)

    try:
        for parent, name, child in swaps:
            setattr(parent, name, torch.compile(child, mode=mode, dynamic=False))
    except Exception:
        undo()
        raise
    return undo


def maybe_compile(model: torch.nn.Module, mode: str | None = None, scope: str = "model") -> _CompiledOrEager:
    """``torch.compile`` behind a fallback to the eager model (checked on the first call).

    ``scope="model"`` compiles the whole network into one graph; ``scope="blocks"`` compiles each
    Restormer block on its own (regional compilation) and leaves the rest eager: the blocks of
    one width share their compiled code, so compiling takes a fraction of the time. This
    changes ``model`` in place (its blocks become compiled wrappers) until a failure undoes it.
    Compilation happens on the first call for each input shape and can take minutes on a CPU;
    it pays on GPUs (fused element-wise kernels, fewer launches), rarely on CPUs.
    """
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"unknown compile scope {scope!r} (use {', '.join(COMPILE_SCOPES)})")
    try:
        if scope == "blocks":
            return _CompiledOrEager(model, model, _compile_blocks(model, mode))
        compiled = torch.compile(model, mode=mode, dynamic=False)
    except Exception as exc:
        warnings.warn(f"torch.compile is not available here ({exc}); running eagerly", RuntimeWarning, stacklevel=2)
        compiled = None
    return _CompiledOrEager(model, compiled)
