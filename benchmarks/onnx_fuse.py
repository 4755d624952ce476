"""Fuses one image pair with a file from ``upfusion export-onnx``, using only numpy, Pillow and onnxruntime.

    python benchmarks/onnx_fuse.py MODEL.onnx A.png B.png OUT.png

A: visible / MRI; B: infrared / CT / PET (8-bit files of one size, any size). This is what
``upfusion fuse`` does around the network: the BT.601 luma of each source, fused by the graph
(which pads to a multiple of 8 and crops back itself) and clamped; the Cb and Cr of the colour
source (A if it has colour, else B) are put back. The result is ``upfusion fuse``'s when the
file's ``upfusion.upscale`` is the factor ``upfusion fuse`` uses for the pair (with the bundled
weights: 2 for images of up to 2^19 pixels, 1 above), to a few 8-bit levels where onnxruntime's
top-k choices fall differently (2 levels on samples/msrs at 2x; README, "Running the ONNX file
without upfusion"). tests/test_onnx.py runs this file against ``upfusion.load().fuse``.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

# full-range BT.601 RGB -> YCbCr (Cb and Cr centred on 0; files and upfusion store them offset by 0.5)
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def read(path: str) -> np.ndarray:
    """float32 in [0, 1]: [H, W] for grey (also RGB files whose channels differ by <= 1 level), else [H, W, 3]."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        pixels = np.asarray(im.convert("L" if im.mode in ("L", "1") else "RGB"), dtype=np.float32) / np.float32(255)
    if pixels.ndim == 3 and np.abs(np.diff(pixels, axis=-1)).max() <= 1 / 255 + 1e-6:
        pixels = luma(pixels)
    return pixels


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma, float32: the network's input for a colour source."""
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2] if rgb.ndim == 3 else rgb


def fuse(session: onnxruntime.InferenceSession, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The fused image of two ``read`` results of one size, uint8 ([H, W] or [H, W, 3])."""
    inputs = {"a": luma(a)[None, None], "b": luma(b)[None, None]}  # [1, 1, H, W] float32
    (fused,) = session.run(["fused"], inputs)
    y = np.clip(fused[0, 0], 0.0, 1.0)  # unclamped luma out
    colour = a if a.ndim == 3 else (b if b.ndim == 3 else None)
    if colour is None:
        return np.rint(y * np.float32(255)).astype(np.uint8)
    ycc = colour.astype(np.float64) @ RGB_TO_YCBCR.T  # Y, Cb, Cr (centred on 0) of the colour source
    ycc[..., 0] = y  # the fused luma replaces Y
    rgb = ycc @ np.linalg.inv(RGB_TO_YCBCR).T
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def main() -> None:
    model, a_path, b_path, out = sys.argv[1:5]
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    print(f"{model}: upscale {meta.get('upfusion.upscale', '?')}, weights {meta.get('upfusion.weights', '?')}")
    a, b = read(a_path), read(b_path)
    if a.shape[:2] != b.shape[:2]:
        sys.exit(f"{b_path}: size differs from {a_path}; the sources must be registered")
    Image.fromarray(fuse(session, a, b)).save(out)


if __name__ == "__main__":
    main()
