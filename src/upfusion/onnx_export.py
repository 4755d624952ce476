"""The network as an ONNX model (dynamic batch, height and width), checked against PyTorch with onnxruntime.

The exported graph takes ``a`` and ``b`` ([N, 1, H, W] float32 in [0, 1], any H and W) and
returns the unclamped fused luma ``fused`` [N, 1, H, W]. Inside, it pads both at the bottom and
right to a multiple of 8 as ``upfusion fuse`` does (``pad_to_multiple``) and crops the output
back. The checkpoint's prompt embedding is baked in as a constant. With
``upscale=K`` the graph also enlarges its inputs K times and averages the output back, as
``upfusion fuse --upscale K`` does; the file's metadata ``upfusion.upscale`` says which K, and
its other ``upfusion.*`` entries (``METADATA_KEYS``) the weights and this contract.
The graph is the specification's arithmetic (``plain_arithmetic``), not the PyTorch inference
kernels, which cut the image in row bands whose count depends on its size.

Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime): ``pip install 'upfusion[onnx]'``.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UpfusionError
from .inference import average_blocks, enlarge
from .model import UPFusion
from .model.fast_ops import plain_arithmetic
from .pretrained.extras import require

DEFAULT_OPSET = 18
EXPORT_SIZE = (64, 96)  # the example input's height and width (any size works afterwards)
MAX_SIDE = 16384  # the largest height and width the exported graph declares
INPUTS = (
    "a, b: float32 [N, 1, H, W], the BT.601 luma (0.299 R + 0.587 G + 0.114 B) in [0, 1] of source A "
    "(visible, MRI) and source B (infrared, CT, PET); a grey source is its own luma; any H and W (the graph "
    "pads to multiples of 8 at the bottom and right by reflection, repeating the edge for sides under 8, "
    "and crops back)"
)
OUTPUT = (
    "fused: float32 [N, 1, H, W], the fused luma, unclamped: clamp to [0, 1]; for colour, "
    "put it as Y into the full-range BT.601 YCbCr of the colour source (A if colour, else B) and convert back"
)
# the metadata_props every file carries; the upfusion export-onnx command adds the weights' identity
METADATA_KEYS = ("upfusion.version", "upfusion.upscale", "upfusion.inputs", "upfusion.output")


def padded_index(size: int | torch.SymInt, multiple: int = 8) -> torch.Tensor:
    """The source row (or column) of each row of a side of ``size`` padded at the end to a multiple
    of ``multiple``: ``upfusion.imaging.pad_to_multiple``'s rule, in tensor operations only.

    Mirrored (without repeating the edge) where the mirror stays inside the side, else the last
    row repeated (tiny sides). No Python branch on ``size``, so a symbolic size exports as a
    formula in the graph instead of a guard fixed to the example's size.
    """
    padded = (size + multiple - 1) // multiple * multiple
    index = torch.arange(padded)
    mirror = 2 * (size - 1) - index
    fits = mirror[-1] >= 0  # the last padded row mirrors onto row 0 or below: the pad is shorter than the side
    return torch.where(index < size, index, torch.where(fits, mirror, size - 1))


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """``[..., H, W]`` padded at the bottom and right to multiples of ``multiple``, as
    ``upfusion.imaging.pad_to_multiple`` pads numpy arrays (same values); exports with dynamic H, W."""
    height, width = x.shape[-2:]
    return x.index_select(-2, padded_index(height, multiple)).index_select(-1, padded_index(width, multiple))


class FixedPromptFusion(nn.Module):
    """``model(a, b, text)`` with the text embedding held as a buffer: the exported graph's two inputs.

    Any height and width: both sources are padded at the bottom and right to a multiple of 8 (the
    network's need) as ``upfusion fuse`` pads them, and the output is cropped back.
    ``upscale``: the network sees the pair enlarged that many times (``upfusion.inference.enlarge``)
    and its output is averaged back (``average_blocks``), as ``upfusion fuse --upscale`` does.
    """

    def __init__(self, model: UPFusion, text: torch.Tensor, upscale: int = 1) -> None:
        super().__init__()
        self.model = model
        self.upscale = upscale
        self.register_buffer("text", text.reshape(1, -1).float().clone())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        height, width = a.shape[-2:]
        n = self.upscale
        a, b = enlarge(pad_to_multiple(a), n), enlarge(pad_to_multiple(b), n)
        return average_blocks(self.model(a, b, self.text), n)[..., :height, :width]


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on one input size."""

    height: int
    width: int
    batch: int
    max_abs_diff: float


def export_onnx(
    model: UPFusion,
    text: torch.Tensor,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    upscale: int = 1,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Writes ``model`` (with ``text`` baked in, fusing ``upscale`` times enlarged) to ``path`` as
    ONNX; dynamic batch, height and width. ``metadata``: more ``metadata_props`` (string values)
    beside ``METADATA_KEYS``.

    The file is written under a temporary name and renamed into place; the weights are stored
    inside the ``.onnx`` file (no external data).
    """
    require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    path = Path(path)
    if path.is_dir():
        raise UpfusionError(f"{path}: is a folder; give the ONNX file's name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _export(model, text, path, opset, upscale, metadata or {})
    except OSError as exc:
        raise UpfusionError(f"{path}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return path


def _export(
    model: UPFusion, text: torch.Tensor, path: Path, opset: int, upscale: int, metadata: dict[str, str]
) -> None:
    from . import __version__

    wrapper = FixedPromptFusion(model.cpu().eval(), text.cpu(), upscale).eval()
    height, width = EXPORT_SIZE
    # a batch of 2: torch.export would fix a dimension of size 1 to 1
    example = (torch.rand(2, 1, height, width), torch.rand(2, 1, height, width))
    batch = torch.export.Dim("batch", min=1, max=64)
    height = torch.export.Dim("height", min=1, max=MAX_SIDE)  # any size: the graph pads to multiples of 8
    width = torch.export.Dim("width", min=1, max=MAX_SIDE)
    shape = {0: batch, 2: height, 3: width}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_path = Path(tmp) / path.name
        with plain_arithmetic(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    wrapper,
                    example,
                    dynamo=True,
                    input_names=["a", "b"],
                    output_names=["fused"],
                    dynamic_shapes={"a": shape, "b": shape},
                    opset_version=opset,
                    external_data=False,
                    optimize=True,
                )
            except Exception as exc:
                raise UpfusionError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
            own = dict(zip(METADATA_KEYS, (__version__, str(upscale), INPUTS, OUTPUT), strict=True))
            program.model.metadata_props.update({**own, **{k: str(v) for k, v in metadata.items()}})
            program.save(str(tmp_path), external_data=False)
        tmp_path.replace(path)


def check_onnx(
    path: str | Path,
    model: UPFusion,
    text: torch.Tensor,
    sizes: tuple[tuple[int, int], ...] = ((64, 96), (120, 160), (256, 256), (480, 640), (61, 83)),
    batch: int = 1,
    seed: int = 0,
    upscale: int = 1,
) -> list[OnnxCheck]:
    """Runs the ONNX file with onnxruntime (CPU) and PyTorch (the plain arithmetic, enlarged
    ``upscale`` times as the file was exported) on random inputs of ``sizes``."""
    ort = require("onnxruntime", "onnx", "checking the ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    wrapper = FixedPromptFusion(model.cpu().eval(), text.cpu(), upscale).eval()
    checks = []
    for height, width in sizes:
        a = torch.rand(batch, 1, height, width, generator=generator)
        b = torch.rand(batch, 1, height, width, generator=generator)
        (onnx_out,) = session.run(["fused"], {"a": a.numpy(), "b": b.numpy()})
        with plain_arithmetic(), torch.no_grad():
            torch_out = wrapper(a, b).numpy()
        checks.append(OnnxCheck(height, width, batch, float(np.abs(onnx_out - torch_out).max())))
    return checks
