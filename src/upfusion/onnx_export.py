"""The network as an ONNX model (dynamic batch, height and width), checked against PyTorch with onnxruntime.

The exported graph takes ``a`` and ``b`` ([N, 1, H, W] float32 in [0, 1], H and W multiples
of 8: pad at the bottom and right as ``upfusion fuse`` does) and returns the unclamped fused
luma ``fused`` [N, 1, H, W]. The checkpoint's prompt embedding is baked in as a constant. With
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
EXPORT_SIZE = (64, 96)  # the example input's height and width (any multiple of 8 works afterwards)
INPUTS = (
    "a, b: float32 [N, 1, H, W], the BT.601 luma (0.299 R + 0.587 G + 0.114 B) in [0, 1] of source A "
    "(visible, MRI) and source B (infrared, CT, PET); a grey source is its own luma; H and W multiples of 8 "
    "(pad at the bottom and right by reflection, repeating the edge for sides under 8)"
)
OUTPUT = (
    "fused: float32 [N, 1, H, W], the fused luma, unclamped: crop the padding, clamp to [0, 1]; for colour, "
    "put it as Y into the full-range BT.601 YCbCr of the colour source (A if colour, else B) and convert back"
)
# the metadata_props every file carries; the upfusion export-onnx command adds the weights' identity
METADATA_KEYS = ("upfusion.version", "upfusion.upscale", "upfusion.inputs", "upfusion.output")


class FixedPromptFusion(nn.Module):
    """``model(a, b, text)`` with the text embedding held as a buffer: the exported graph's two inputs.

    ``upscale``: the network sees the pair enlarged that many times (``upfusion.inference.enlarge``)
    and its output is averaged back (``average_blocks``), as ``upfusion fuse --upscale`` does.
    """

    def __init__(self, model: UPFusion, text: torch.Tensor, upscale: int = 1) -> None:
        super().__init__()
        self.model = model
        self.upscale = upscale
        self.register_buffer("text", text.reshape(1, -1).float().clone())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = self.upscale
        return average_blocks(self.model(enlarge(a, n), enlarge(b, n), self.text), n)


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
    rows = torch.export.Dim("rows", min=1, max=2048)  # H = 8 * rows: the network needs multiples of 8
    cols = torch.export.Dim("cols", min=1, max=2048)
    shape = {0: batch, 2: 8 * rows, 3: 8 * cols}
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
    sizes: tuple[tuple[int, int], ...] = ((64, 96), (120, 160), (256, 256), (480, 640)),
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
