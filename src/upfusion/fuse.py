"""The inference pipeline: two registered images of any size and format in, one fused image out.

``upfusion.load()`` gives a ``Fuser``; ``Fuser.fuse(a, b)`` reads both sources (paths, numpy
arrays or PIL images), fuses their luma with the network (padded to a multiple of 8 and
cropped back, spec section 7), and puts the colour of the colour-carrying source back in
YCbCr. A = visible / MRI / phase contrast, B = infrared / CT / PET / SPECT / GFP.

Classic methods (``upfusion.baselines``) run through the same pipeline: ``load(method=NAME)``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import imaging
from .cuda_graphs import GraphedNetwork
from .errors import UpfusionError
from .imaging import FusedImage, SourceImage
from .inference import COMPILE_SCOPES, PRECISIONS, average_blocks, cpu_has_native_bf16, enlarge, maybe_compile
from .model import fused_kernels

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = "default"
COLOR_FROM = ("auto", "a", "b", "none")
# upscale="auto" enlarges images of up to half a megapixel by the weights' own factor (their record's
# "auto_upscale", 2 for the bundled weights: docs/quality.md has the gains), larger ones not at
# all: N times costs N^2 times the network's time and memory.
DEFAULT_OVERLAP = 64  # pixels neighbouring tiles share, unless a tile is smaller than twice this
AUTO_UPSCALE_MAX_PIXELS = 1 << 19  # 640x480 and 800x600 are below it, 1024x768 above

ImageLike = str | os.PathLike | np.ndarray | Image.Image | SourceImage


# --------------------------------------------------------------------------------------------
# where the weights, the device and the precision come from


def bundled_weights() -> list[str]:
    """Names of the weights shipped inside the package (``upfusion/weights/NAME.json``)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json")) if WEIGHTS_DIR.is_dir() else []


def resolve_weights(name_or_path: str | Path | None) -> Path:
    """The checkpoint for a bundled weights name, or a checkpoint path (file, stem or folder)."""
    if name_or_path is None:
        default = WEIGHTS_DIR / f"{DEFAULT_WEIGHTS}.json"
        if not default.is_file():
            raise UpfusionError(
                f"no default weights are bundled with this installation of upfusion ({default} is missing); "
                "pass a checkpoint: upfusion.load(PATH) or --weights PATH"
            )
        return default
    text = str(name_or_path)
    is_bare_name = isinstance(name_or_path, str) and "/" not in text and "\\" not in text and "." not in text
    if is_bare_name and (WEIGHTS_DIR / f"{text}.json").is_file():
        return WEIGHTS_DIR / f"{text}.json"
    path = Path(text)
    if path.exists() or path.with_name(path.name + ".json").is_file():
        return path
    bundled = ", ".join(bundled_weights()) or "none"
    raise UpfusionError(
        f"{text}: no such checkpoint file or folder, and no bundled weights of that name (bundled: {bundled})"
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else the CPU; under torchrun, the GPU of LOCAL_RANK."""
    from .distributed import current_rank

    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(text)
    except RuntimeError:
        raise UpfusionError(f"unknown device {text!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UpfusionError(f"device {text!r}: no CUDA device is available to torch")
        if resolved.index is None:
            rank = current_rank()
            resolved = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    return resolved


def check_precision(precision: str | None, device: torch.device, warn: bool = True) -> str:
    """The precision name, after checking that ``device`` can run it."""
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise UpfusionError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if device.type == "cpu" and precision == "fp16":
        raise UpfusionError("fp16 runs on CUDA devices only; use fp32 (or bf16) on the CPU")
    if device.type == "cpu" and precision == "bf16" and warn and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no bf16 arithmetic (AVX512-BF16 or AMX): bf16 is emulated and slower than fp32",
            UserWarning,
            stacklevel=3,
        )
    return precision


# --------------------------------------------------------------------------------------------
# the pipeline


def as_source(image: ImageLike, label: str) -> SourceImage:
    """Any accepted input (path, numpy array, PIL image) as a ``SourceImage``."""
    if isinstance(image, SourceImage):
        return image
    if isinstance(image, (str, os.PathLike)):  # pathlib, py.path (pytest's tmpdir), other path types
        return imaging.read_image(image)
    if isinstance(image, Image.Image):
        return imaging.from_pil(image, getattr(image, "filename", "") or label)
    if isinstance(image, np.ndarray):
        return imaging.from_array(image, label)
    raise UpfusionError(f"{label}: expected a path, a numpy array or a PIL image, not {type(image).__name__}")


def align(a: SourceImage, b: SourceImage, resize_b_to_a: bool = False) -> tuple[SourceImage, SourceImage]:
    """The pair, checked to have one size (or B resized to A's when asked)."""
    if (a.height, a.width) != (b.height, b.width):
        if not resize_b_to_a:
            raise UpfusionError(
                f"{b.name}: size {b.width}x{b.height} differs from {a.name} ({a.width}x{a.height}); "
                "the sources must be registered (same size), or resize B (--resize-b-to-a, resize_b_to_a=True)"
            )
        b = imaging.resize_like(b, a.height, a.width)
    return a, b


def _like_input(fused: FusedImage, template: ImageLike) -> Any:
    """The result in the type of the first source: PIL in, PIL out; float array in, float32 out; else uint."""
    if isinstance(template, Image.Image):
        return imaging.to_pil(fused)
    if isinstance(template, np.ndarray) and np.issubdtype(template.dtype, np.floating):
        return fused.pixels.astype(np.float32)
    return fused.to_uint()


class Fuser:
    """Fuses image pairs with an UP-Fusion network (see ``upfusion.load``).

    ``fuse(a, b)`` returns an image of the sources' size: colour when a source has colour
    (``color_from`` picks which), grey otherwise; the type follows ``a`` (PIL image for PIL,
    float32 in [0, 1] for float arrays, else uint8, or uint16 when a source is 16-bit).
    """

    method = "upfusion"

    def __init__(
        self,
        model: torch.nn.Module,
        text: torch.Tensor,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        name: str = "",
        tile: int | str | None = "auto",
        overlap: int | None = None,
        compile: str | None = None,
        upscale: int | str = "auto",
        auto_upscale: int = 1,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.text = text.to(self.device)
        self.name = name
        self.tile = check_tile(tile, overlap)
        self.overlap = DEFAULT_OVERLAP if overlap is None else overlap  # (at most half a tile: _run_network)
        self.upscale = check_upscale(upscale)
        self.auto_upscale = check_upscale(auto_upscale, "auto_upscale", allow_auto=False)
        self.compile = check_compile(compile)
        if self.compile and fused_kernels.runs_for(self.device, self.precision):
            warnings.warn(
                "compile: on this GPU the fused kernels, which run without it, are faster (paper preset, 640x480, "
                "bf16, batches of 8 on an H100: 47 ms a pair eagerly, 75 ms with the blocks compiled)",
                UserWarning,
                stacklevel=3,
            )
        check_cuda_graphs(cuda_graphs, self.device, self.compile)  # (before compiling changes the model)
        # what runs: the model, or (compile=) its torch.compile'd self, eager again if compiling fails
        # (tiled inference calls the model's stages through it, with the blocks compiled in place)
        self.network = maybe_compile(self.model, scope=self.compile) if self.compile else self.model
        # whole images (not tiles) replayed from CUDA graphs: one per image size and batch size
        self.whole = GraphedNetwork(self.network) if cuda_graphs else self.network
        self._told: set[tuple[int, int]] = set()  # sizes already announced as tiled

    def __repr__(self) -> str:
        where = f"device={str(self.device)!r}, precision={self.precision!r}, upscale={self.upscale!r}"
        return f"{type(self).__name__}({self.name or self.method!r}, {where})"

    # public API ---------------------------------------------------------------------------

    def fuse(self, a: ImageLike, b: ImageLike, *, color_from: str = "auto", resize_b_to_a: bool = False) -> Any:
        """The fused image of ``a`` and ``b`` (paths, numpy arrays or PIL images of one size)."""
        fused = self.fuse_sources(
            [(as_source(a, "a"), as_source(b, "b"))], color_from=color_from, resize_b_to_a=resize_b_to_a
        )
        return _like_input(fused[0], a)

    def fuse_batch(
        self,
        pairs: Iterable[tuple[ImageLike, ImageLike]],
        *,
        color_from: str = "auto",
        resize_b_to_a: bool = False,
        batch_size: int = 4,
    ) -> list[Any]:
        """``fuse`` for many pairs; pairs of one size share network calls of up to ``batch_size`` pairs."""
        if not _is_int(batch_size) or batch_size < 1:
            raise UpfusionError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        try:
            iterator = iter(pairs)
        except TypeError:
            raise UpfusionError(f"pairs must be an iterable of (a, b) pairs, not {type(pairs).__name__}") from None
        sources, firsts = [], []  # the decoded pairs; each pair's a, whose type the result takes
        for i, pair in enumerate(iterator):
            try:
                a, b = pair
            except (TypeError, ValueError):
                size = f" of {len(pair)} items" if isinstance(pair, (tuple, list)) else ""
                raise UpfusionError(f"pairs[{i}]: expected a pair (a, b), not a {type(pair).__name__}{size}") from None
            sources.append((as_source(a, f"a[{i}]"), as_source(b, f"b[{i}]")))
            firsts.append(a)
        results: list[Any] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            fused = self.fuse_sources(chunk, color_from=color_from, resize_b_to_a=resize_b_to_a)
            results.extend(_like_input(f, a) for f, a in zip(fused, firsts[start : start + len(chunk)], strict=True))
        return results

    def fuse_sources(
        self,
        pairs: Sequence[tuple[SourceImage, SourceImage]],
        *,
        color_from: str = "auto",
        resize_b_to_a: bool = False,
    ) -> list[FusedImage]:
        """The pipeline on decoded sources: size check, luma fusion (pairs of one size batched), colour."""
        if color_from not in COLOR_FROM:
            raise UpfusionError(f"color_from must be one of {', '.join(COLOR_FROM)}, not {color_from!r}")
        aligned = [align(a, b, resize_b_to_a) for a, b in pairs]
        results: list[FusedImage | None] = [None] * len(aligned)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (a, _) in enumerate(aligned):
            by_size.setdefault((a.height, a.width), []).append(i)
        for indices in by_size.values():
            a_luma = np.stack([aligned[i][0].luma() for i in indices])
            b_luma = np.stack([aligned[i][1].luma() for i in indices])
            fused_luma = self._fuse_luma(a_luma, b_luma)
            for j, i in enumerate(indices):
                a, b = aligned[i]
                depth = max(a.bit_depth, b.bit_depth)
                results[i] = imaging.compose(fused_luma[j], imaging.pick_color_source(a, b, color_from), depth)
        return [r for r in results if r is not None]

    # the network call (tiled inference extends this) ---------------------------------------

    def _fuse_luma(self, a_luma: np.ndarray, b_luma: np.ndarray) -> np.ndarray:
        """Fused luma ``[N, H, W]`` (float32, unclamped) of two ``[N, H, W]`` float32 sources, any H and W.

        Pads both sources alike at the bottom and right to a multiple of 8 (spec section 7),
        enlarges them ``upscale_for(H, W)`` times (each pixel a block of that side), runs the
        network once for the batch, averages each block of the output back to one pixel, and
        crops back to ``H x W``.
        """
        height, width = a_luma.shape[-2:]
        factor = self.upscale_for(height, width)
        a = torch.from_numpy(imaging.pad_to_multiple(a_luma)).unsqueeze(1).to(self.device)
        b = torch.from_numpy(imaging.pad_to_multiple(b_luma)).unsqueeze(1).to(self.device)
        fused = average_blocks(self._run_network(enlarge(a, factor), enlarge(b, factor)).float(), factor)
        return fused[:, 0, :height, :width].cpu().numpy()

    def upscale_for(self, height: int, width: int) -> int:
        """How many times an ``height x width`` pair is enlarged for the network (see ``load``)."""
        if self.upscale != "auto":
            return self.upscale
        return self.auto_upscale if height * width <= AUTO_UPSCALE_MAX_PIXELS else 1

    def tile_for(self, batch: int, height: int, width: int) -> int | None:
        """The tile size for a padded ``batch x height x width`` call, or None for one whole-image pass.

        ``tile="auto"`` tiles only when the whole image would not fit in the memory free now
        (``upfusion.tiling.plan_tile``), and says so once per size.
        """
        from .tiling import plan_tile

        if self.tile is None:
            return None
        if self.tile != "auto":
            return self.tile if max(height, width) > self.tile else None
        tile = plan_tile(self.model.config, height, width, batch, self.device)
        if tile is not None and (height, width) not in self._told:
            self._told.add((height, width))
            warnings.warn(
                f"a {width}x{height} image would not fit in the free memory in one pass: fusing it in "
                f"{tile}x{tile} tiles (set tile= / --tile to choose, 0 for never)",
                UserWarning,
                stacklevel=4,
            )
        return tile

    def _run_network(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The network on padded ``[N, 1, H8, W8]`` tensors, in this fuser's precision, tiled when needed."""
        from .inference import inference_context
        from .model import fast_ops
        from .tiling import tiled_forward

        tile = self.tile_for(a.shape[0], a.shape[-2], a.shape[-1])
        # Compiled, the network runs the specification's formulas, which the compiler fuses: the
        # form measured on a GPU (the eager inference kernels, fast_ops, are tuned for CPU caches).
        arithmetic = fast_ops.plain_arithmetic() if self.compile else contextlib.nullcontext()
        with inference_context(self.device, self.precision), arithmetic:
            if tile is None:
                return self.whole(a, b, self.text).float()
            return tiled_forward(self.network, a, b, self.text, tile=tile, overlap=min(self.overlap, tile // 2))


def check_cuda_graphs(cuda_graphs: bool, device: torch.device, compile: str | None) -> None:
    """CUDA graphs need a CUDA device, and do not go with ``compile`` (whose ``reduce-overhead``
    mode makes graphs of its own)."""
    if cuda_graphs and device.type != "cuda":
        raise UpfusionError(f"cuda_graphs needs a CUDA device, not {device.type}")
    if cuda_graphs and compile:
        raise UpfusionError("cuda_graphs and compile do not go together: use one")


def check_compile(compile: str | None) -> str | None:
    """``compile`` as the fuser uses it: None (eager) or a ``torch.compile`` scope, "blocks" or "model"."""
    if compile is not None and compile not in COMPILE_SCOPES:
        raise UpfusionError(f"compile must be one of {', '.join(COMPILE_SCOPES)} (or None), not {compile!r}")
    return compile


def _is_int(value: Any) -> bool:
    """An int or a numpy integer, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _whole_number(value: Any) -> int | None:
    """``value`` as an int if it writes one (2, "2", a numpy integer); None for 2.5, True or "x",
    which ``int()`` would take or truncate."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if str(number) == str(value).strip() else None


def check_upscale(upscale: int | str, name: str = "upscale", allow_auto: bool = True) -> int | str:
    """``upscale`` as the fuser uses it: ``"auto"`` (where allowed) or a whole number >= 1."""
    if upscale == "auto" and allow_auto:
        return upscale
    factor = _whole_number(upscale)
    if factor is None or factor < 1:
        allowed = "'auto' or a whole number >= 1" if allow_auto else "a whole number >= 1"
        raise UpfusionError(f"{name} must be {allowed}, not {upscale!r}")
    return factor


def check_tile(tile: int | str | None, overlap: int | None = None) -> int | str | None:
    """``tile`` as the fuser uses it: ``"auto"``, None (never tile) or a tile side (multiple of 8, >= 64).
    ``overlap`` None: the default (``DEFAULT_OVERLAP``, or half a smaller tile), which always fits."""
    # overlap is checked for "auto" too: its tiles come later, when an image is large
    if overlap is not None and (not _is_int(overlap) or overlap < 0 or overlap % 8):
        raise UpfusionError(f"overlap must be a multiple of 8 and at least 0, not {overlap!r}")
    if tile == "auto" or tile is None:
        return tile
    size = _whole_number(tile)
    if size is None:
        raise UpfusionError(f"tile must be 'auto', 0 (never) or a size in pixels, not {tile!r}")
    if size == 0:
        return None
    if size < 64 or size % 8:
        raise UpfusionError(f"tile must be a multiple of 8 and at least 64 pixels, not {size}")
    if overlap is not None and overlap > size // 2:
        raise UpfusionError(f"overlap must be a multiple of 8 in [0, tile / 2], not {overlap} (tile {size})")
    return size


class BaselineFuser(Fuser):
    """A classic method from ``upfusion.baselines`` run through the same colour, format and size pipeline.

    The method takes the two float64 luma arrays [H, W] in [0, 1] and returns the fused luma; it
    needs no padding, weights or device.
    """

    def __init__(self, method: str, function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.method = method
        self.function = function
        self.device = torch.device("cpu")
        self.precision = "fp64"
        self.name = method
        self.upscale = 1  # classic methods fuse at the sources' size

    def _fuse_luma(self, a_luma: np.ndarray, b_luma: np.ndarray) -> np.ndarray:
        fused = []
        for a, b in zip(a_luma, b_luma, strict=True):
            try:
                result = np.asarray(self.function(a.astype(np.float64), b.astype(np.float64)))
            except ValueError as exc:
                raise UpfusionError(f"method {self.method!r}: {exc}") from None
            if result.shape != a.shape:
                raise UpfusionError(f"method {self.method!r} returned shape {result.shape} for inputs {a.shape}")
            fused.append(result)
        return np.stack(fused).astype(np.float32)


def load_baseline(method: str) -> BaselineFuser:
    """A ``Fuser`` for the classic method ``method`` of ``upfusion.baselines.BASELINES``."""
    try:
        from .baselines import BASELINES
    except ModuleNotFoundError as exc:
        if exc.name != "upfusion.baselines":
            raise
        raise UpfusionError(
            f"method {method!r}: the classic baselines are not part of this build of upfusion"
        ) from None
    if method not in BASELINES:
        raise UpfusionError(f"unknown method {method!r}; known: upfusion, {', '.join(sorted(BASELINES))}")
    return BaselineFuser(method, BASELINES[method])


def load(
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
    *,
    method: str = "upfusion",
    tile: int | str | None = "auto",
    overlap: int | None = None,
    compile: str | None = None,
    upscale: int | str = "auto",
    cuda_graphs: bool = False,
) -> Fuser:
    """A ready ``Fuser``.

    ``name_or_path``: None for the package's default weights, a bundled weights name, or a
    checkpoint (``NAME.json``, ``NAME.safetensors``, their common stem, or a folder holding one).
    ``device``: ``"auto"``/None (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast; fp16 on CUDA only;
    bf16 on the CPU is faster than fp32 only with bf16 arithmetic, AVX512-BF16 or AMX).
    ``method``: ``"upfusion"`` (the network) or the name of a classic method in
    ``upfusion.baselines`` (then weights, device and precision are not used). ``tile``:
    ``"auto"`` (default: tiled only when an image would not fit in the free memory), 0 or None
    (never), or a tile side in pixels (multiple of 8); ``overlap``:
    pixels shared by neighbouring tiles (``upfusion.tiling``; a multiple of 8, at most half the
    tile; None, the default: 64, or half the tile where that is less). ``compile``: None (default,
    eager), ``"blocks"`` (``torch.compile`` of each Restormer block: pays on GPUs, compiles for
    about a minute per input shape, that is per image size and batch size) or ``"model"`` (one
    graph; compiles for many minutes); a compiler failure warns and falls back to eager. Not on
    Hopper GPUs in bf16 or fp16, where the fused kernels run eagerly and faster (it warns).
    ``cuda_graphs``: on a CUDA device, replay the network from a CUDA graph recorded on the
    second call with each image size and batch size (``upfusion.cuda_graphs``; at most two
    kept): one launch instead of thousands, for streams of one size; not with ``compile``.
    ``upscale``: N (a whole number) fuses every pair enlarged N times, each pixel a block of N x N,
    and averages each block of the fused image back to one pixel (N^2 times the network's work);
    ``"auto"`` (default) uses the weights' own factor (``"auto_upscale"`` in their record: 2 for
    the bundled weights, 1 when absent) for images of up to half a megapixel (2^19 pixels) and 1
    for larger ones.
    """
    if method != "upfusion":
        return load_baseline(method)
    from .pretrained.checkpoint import network_from_record, read_record

    checkpoint = resolve_weights(name_or_path)
    torch_device = resolve_device(device)
    precision = check_precision(precision, torch_device, warn=False)  # fail before loading weights
    check_tile(tile, overlap)
    check_compile(compile)
    check_cuda_graphs(cuda_graphs, torch_device, compile)
    check_upscale(upscale)
    record, record_path, weights_path = read_record(checkpoint)  # read once: the network and auto_upscale
    try:
        auto_upscale = check_upscale(record.get("auto_upscale", 1), "auto_upscale", allow_auto=False)
    except UpfusionError as exc:
        raise UpfusionError(f"{record_path}: {exc}") from None
    model, text = network_from_record(record, record_path, weights_path, device=torch_device)
    name = str(name_or_path or DEFAULT_WEIGHTS)
    return Fuser(
        model,
        text,
        torch_device,
        precision,
        name=name,
        tile=tile,
        overlap=overlap,
        compile=compile,
        upscale=upscale,
        cuda_graphs=cuda_graphs,
        auto_upscale=auto_upscale,
    )
