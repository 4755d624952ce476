"""Images in and out of the fusion pipeline (spec section 7): reading any common format,
grey detection, YCbCr BT.601, padding to a multiple of 8, and atomic writing.

Pixels travel as floating point in [0, 1]: ``[H, W]`` for grey, ``[H, W, 3]`` for colour.
8-bit values enter as ``uint8 / 255``, 16-bit values as ``uint16 / 65535``. Only numpy and
Pillow are needed, except for 16-bit colour files (the ``color16`` extra: pypng, tifffile),
which Pillow would silently reduce to 8 bits.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UpfusionError

# Full-range BT.601 (JPEG/JFIF) RGB -> YCbCr; Cb and Cr are offset by 0.5 after this matrix.
RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
YCBCR_TO_RGB = np.linalg.inv(RGB_TO_YCBCR)  # the exact inverse of the matrix above

# A 3-channel image whose channels differ by at most this many 8-bit levels is grey: that covers
# grey images saved as RGB (LLVIP infrared, Harvard MRI/CT), also after lossy re-encoding.
GREY_TOLERANCE_LEVELS = 1

# Pillow format name and the deepest bit depth it (or the color16 extra) writes, by extension.
FORMATS: dict[str, tuple[str, int]] = {
    ".png": ("PNG", 16),
    ".tif": ("TIFF", 16),
    ".tiff": ("TIFF", 16),
    ".jpg": ("JPEG", 8),
    ".jpeg": ("JPEG", 8),
    ".bmp": ("BMP", 8),
    ".webp": ("WEBP", 8),
    ".pgm": ("PPM", 16),
    ".ppm": ("PPM", 16),
}


@dataclass
class SourceImage:
    """One source image as the pipeline sees it.

    ``pixels``: float32 in [0, 1], ``[H, W]`` (grey, including 3-channel files with equal
    channels, reduced to their luma) or ``[H, W, 3]`` (RGB colour). ``bit_depth``: 8 or 16, the
    depth of the file or array it came from. ``name``: the path or a label, for messages.
    ``suffix``: the file extension (``".png"``), None for arrays and PIL images.
    """

    pixels: np.ndarray
    bit_depth: int
    name: str
    suffix: str | None = None

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def luma(self) -> np.ndarray:
        """float32 [H, W]: the image itself if grey, else its BT.601 Y as the network computes it."""
        if not self.is_color:
            return self.pixels
        return luma_of(self.pixels)


@dataclass
class FusedImage:
    """The pipeline's result: ``pixels`` clamped to [0, 1] (float, not yet rounded), ``[H, W]`` or
    ``[H, W, 3]``, and the ``bit_depth`` (8 or 16) it is meant to be stored at."""

    pixels: np.ndarray
    bit_depth: int

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3

    def to_uint(self, bit_depth: int | None = None) -> np.ndarray:
        """uint8 or uint16 values, rounded half to even once, here (spec section 7)."""
        depth = bit_depth or self.bit_depth
        scale = self.pixels.dtype.type(2**depth - 1)
        return np.rint(self.pixels * scale).astype(np.uint16 if depth == 16 else np.uint8)


# --------------------------------------------------------------------------------------------
# colour


def luma_of(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, float32, evaluated left to right like the network."""
    rgb = rgb.astype(np.float32, copy=False)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr in float64, ``[..., 3]`` -> ``[..., 3]`` (Cb, Cr centred on 0.5)."""
    ycc = rgb.astype(np.float64) @ RGB_TO_YCBCR.T
    ycc[..., 1:] += 0.5
    return ycc


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """The exact inverse of ``rgb_to_ycbcr``, float64, not clamped."""
    centred = ycc.astype(np.float64)  # a copy
    centred[..., 1:] -= 0.5
    return centred @ YCBCR_TO_RGB.T


def is_grey_rgb(rgb: np.ndarray, tolerance: float = GREY_TOLERANCE_LEVELS / 255) -> bool:
    """True when the three channels of ``rgb`` (values in [0, 1]) are equal to within ``tolerance``."""
    slack = tolerance + 1e-6  # the division by 255 or 65535 is not exact in float32
    return bool(
        np.abs(rgb[..., 0] - rgb[..., 1]).max(initial=0) <= slack
        and np.abs(rgb[..., 1] - rgb[..., 2]).max(initial=0) <= slack
    )


def pick_color_source(a: SourceImage, b: SourceImage, color_from: str = "auto") -> SourceImage | None:
    """Which source lends its Cb/Cr to the result: ``"auto"`` (A if A has colour, else B if B has,
    else none), ``"a"``, ``"b"`` (that source, or none if it is grey) or ``"none"``."""
    if color_from == "auto":
        return a if a.is_color else (b if b.is_color else None)
    if color_from in ("a", "b"):
        source = a if color_from == "a" else b
        return source if source.is_color else None
    if color_from == "none":
        return None
    raise UpfusionError(f"color_from must be 'auto', 'a', 'b' or 'none', not {color_from!r}")


def compose(fused_luma: np.ndarray, color_source: SourceImage | None, bit_depth: int) -> FusedImage:
    """The fused luma (unclamped, [H, W]) with the colour of ``color_source`` put back in YCbCr.

    Grey results stay float32 (``clamp`` then the rounding of ``to_uint``: the reference's own
    arithmetic); colour results are computed in float64 and clamped once after the inverse.
    """
    y = np.clip(fused_luma.astype(np.float32, copy=False), 0.0, 1.0)
    if color_source is None:
        return FusedImage(y, bit_depth)
    ycc = rgb_to_ycbcr(color_source.pixels)
    ycc[..., 0] = y
    return FusedImage(np.clip(ycbcr_to_rgb(ycc), 0.0, 1.0), bit_depth)


# --------------------------------------------------------------------------------------------
# padding


def pad_amounts(height: int, width: int, multiple: int = 8) -> tuple[int, int]:
    """Rows and columns to add at the bottom and right so both sides are multiples of ``multiple``."""
    return (multiple - height % multiple) % multiple, (multiple - width % multiple) % multiple


def pad_to_multiple(x: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Pads the last two axes (H, W) at the bottom and right to a multiple of ``multiple``.

    Reflect (mirror without repeating the edge, as torch's ``reflect``) where the pad is smaller
    than the side, as the reference's test script does; replicate the edge where it is not
    (tiny images). Crop with ``[..., :H, :W]`` afterwards.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = pad_amounts(h, w, multiple)
    lead = [(0, 0)] * (x.ndim - 2)
    if pad_w:
        x = np.pad(x, [*lead, (0, 0), (0, pad_w)], mode="reflect" if pad_w < w else "edge")
    if pad_h:
        x = np.pad(x, [*lead, (0, pad_h), (0, 0)], mode="reflect" if pad_h < h else "edge")
    return x


def resize_like(image: SourceImage, height: int, width: int) -> SourceImage:
    """``image`` resampled to ``height`` x ``width`` (bicubic on the float values, per channel)."""
    channels = image.pixels if image.is_color else image.pixels[..., None]
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32)).resize(
                (width, height), Image.Resampling.BICUBIC
            )
        )
        for c in range(channels.shape[-1])
    ]
    pixels = np.clip(np.stack(resized, axis=-1), 0.0, 1.0).astype(np.float32)
    return SourceImage(pixels if image.is_color else pixels[..., 0], image.bit_depth, image.name, image.suffix)


# --------------------------------------------------------------------------------------------
# reading


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode of the first tile ('' when unknown), read before decoding."""
    if not getattr(im, "tile", None):
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _is_16bit_multichannel(im: Image.Image) -> bool:
    # Pillow decodes 16-bit RGB(A)/LA files to 8-bit modes; the raw mode still says ";16".
    return im.mode in ("RGB", "RGBA", "LA") and ";16" in _rawmode(im)


def _read_16bit_color(path: Path, fmt: str) -> np.ndarray:
    if fmt == "PNG":
        png = _require_color16("png", "reading a 16-bit colour PNG")
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    if fmt == "TIFF":
        tifffile = _require_color16("tifffile", "reading a 16-bit colour TIFF")
        return np.asarray(tifffile.imread(str(path), key=0))
    raise UpfusionError(f"{path}: 16-bit colour {fmt} files are not supported (PNG and TIFF are)")


def _require_color16(module: str, purpose: str) -> Any:
    from .pretrained.extras import require

    return require(module, "color16", purpose)


def _pil_to_array(im: Image.Image, name: str) -> np.ndarray:
    """A Pillow image as uint8 or uint16 values, [H, W] or [H, W, C] (alpha still attached)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode in ("RGBa", "La"):
        im = im.convert(mode.upper()[:-1] + "A")
    array = np.asarray(im)
    if im.mode.startswith("I;16"):
        return array.astype(np.uint16)
    if im.mode == "I":  # 16-bit data that Pillow widened to 32 bits (some PNG, PGM and TIFF files)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise UpfusionError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported")
        return array.astype(np.uint16)
    if im.mode == "F":
        raise UpfusionError(f"{name}: 32-bit floating-point images are not supported; save it as 8 or 16 bit")
    if array.dtype != np.uint8:
        raise UpfusionError(f"{name}: unsupported image mode {im.mode!r}")
    return array


def from_array(array: np.ndarray, name: str = "array", suffix: str | None = None) -> SourceImage:
    """A numpy image as a ``SourceImage``.

    ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha ignored, with a warning);
    uint8 (8-bit), uint16 (16-bit), floating point in [0, 1] (taken as 8-bit for output), or bool
    (bilevel: 0 and 255, like a mode "1" PIL image).
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:  # a bilevel image (np.asarray of a mode "1" PIL image): black and white
        array = array.astype(np.uint8) * np.uint8(255)
    if not array.dtype.isnative:  # big-endian data (FITS, some TIFF readers): the same values, native order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        warnings.warn(f"{name}: alpha channel ignored", UserWarning, stacklevel=2)
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise UpfusionError(f"{name}: expected an image [H, W] or [H, W, 1|3|4], got shape {tuple(array.shape)}")
    if min(array.shape[:2]) < 1:
        raise UpfusionError(f"{name}: empty image of shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        pixels, depth = array.astype(np.float32) / np.float32(255.0), 8
    elif array.dtype == np.uint16:
        pixels, depth = array.astype(np.float32) / np.float32(65535.0), 16
    elif np.issubdtype(array.dtype, np.floating):
        pixels, depth = array.astype(np.float32), 8
        if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
            raise UpfusionError(f"{name}: floating-point images must hold finite values in [0, 1]")
    else:
        raise UpfusionError(f"{name}: unsupported pixel type {array.dtype} (use uint8, uint16 or float in [0, 1])")
    if pixels.ndim == 3 and is_grey_rgb(pixels):
        pixels = luma_of(pixels)
    return SourceImage(np.ascontiguousarray(pixels), depth, name, suffix)


def from_pil(im: Image.Image, name: str = "image", suffix: str | None = None) -> SourceImage:
    """A Pillow image (any mode) as a ``SourceImage``."""
    try:
        im.load()  # a lazily opened file decodes here: a truncated or closed one fails here
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... for broken data
        raise UpfusionError(
            f"{name}: corrupt, truncated or closed image ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return from_array(_pil_to_array(im, name), name, suffix)


@contextmanager
def reading_errors(path: str | Path) -> Iterator[None]:
    """Turns whatever reading image file ``path`` inside the block raises into a one-line ``UpfusionError``.

    Pillow raises many exception types for broken data (OSError, SyntaxError, ValueError,
    struct.error, DecompressionBombError...): every reader of the package names the file and the
    cause alike. An ``UpfusionError`` (a reader's own check) passes through untouched.
    """
    try:
        yield
    except UpfusionError:
        raise
    except UnidentifiedImageError:
        raise UpfusionError(f"{path}: not an image file (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:  # a valid header, but more pixels than Pillow will decode
        raise UpfusionError(f"{path}: too many pixels for Pillow to read ({_one_line(exc)})") from None
    except Exception as exc:
        # an OSError with an errno is the system's (missing file, permissions, I/O), not the data's
        if isinstance(exc, OSError) and exc.errno is not None:
            raise UpfusionError(f"{path}: cannot read the file ({exc.strerror or _one_line(exc)})") from None
        raise UpfusionError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_image(path: str | Path) -> SourceImage:
    """Reads an image file; every problem becomes an ``UpfusionError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise UpfusionError(f"{path}: no such file")
    if not path.is_file():
        raise UpfusionError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UpfusionError(f"{path}: empty file (0 bytes)")
    with reading_errors(path), Image.open(path) as im:
        if _is_16bit_multichannel(im):
            array = _read_16bit_color(path, im.format)
        else:
            if getattr(im, "n_frames", 1) > 1:
                warnings.warn(f"{path}: {im.n_frames} frames, only the first is fused", UserWarning, stacklevel=2)
            im.load()
            # as viewers show it: a camera's EXIF orientation turns the pixels upright
            array = _pil_to_array(ImageOps.exif_transpose(im), str(path))
    return from_array(array, str(path), path.suffix)


# --------------------------------------------------------------------------------------------
# writing


def output_format(suffix: str) -> tuple[str, int]:
    """(Pillow format, deepest bit depth) for an output extension such as ``".png"``."""
    try:
        return FORMATS[suffix.lower()]
    except KeyError:
        raise UpfusionError(
            f"cannot write {suffix!r} files; formats: {', '.join(s.lstrip('.') for s in FORMATS)}"
        ) from None


def encode_image(image: FusedImage, suffix: str) -> bytes:
    """The file bytes of ``image`` in the format of ``suffix``, at ``min(image depth, format depth)`` bits.

    JPEG is written at quality 95 without chroma subsampling (the pipeline's output is not a
    thumbnail); 16-bit colour needs the ``color16`` extra (pypng for PNG, tifffile for TIFF).
    """
    fmt, max_depth = output_format(suffix)
    depth = min(image.bit_depth, max_depth)
    values = image.to_uint(depth)
    buffer = io.BytesIO()
    if depth == 16 and image.is_color:
        if fmt == "PNG":
            png = _require_color16("png", "writing a 16-bit colour PNG")
            height, width = values.shape[:2]
            png.Writer(width, height, greyscale=False, bitdepth=16).write(buffer, values.reshape(height, -1))
        elif fmt == "TIFF":
            tifffile = _require_color16("tifffile", "writing a 16-bit colour TIFF")
            tifffile.imwrite(buffer, values, photometric="rgb")
        else:  # PPM: Pillow has no 16-bit RGB mode; fall back to 8 bits explicitly
            values, depth = image.to_uint(8), 8
    if buffer.tell() == 0:
        options: dict[str, Any] = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
        if depth == 16:
            pil = Image.fromarray(values)  # uint16 [H, W] -> mode I;16
        else:
            pil = Image.fromarray(values)
        pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_image(path: str | Path, image: FusedImage) -> None:
    """Encodes ``image`` by ``path``'s extension and writes it atomically (temporary name, then rename)."""
    from .atomic import write_bytes_atomic

    path = Path(path)
    try:
        data = encode_image(image, path.suffix)
    except UpfusionError:
        raise
    except Exception as exc:  # Pillow's encoders raise ValueError, OSError... (a WebP wider than 16383 pixels)
        raise UpfusionError(f"{path}: cannot encode ({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise UpfusionError(f"{path}: cannot write ({exc.strerror or exc})") from None


def to_pil(image: FusedImage) -> Image.Image:
    """The result as a Pillow image: ``L``, ``RGB`` (8-bit) or ``I;16`` (16-bit grey)."""
    if image.bit_depth == 16 and not image.is_color:
        return Image.fromarray(image.to_uint(16))
    return Image.fromarray(image.to_uint(8))
