"""``upfusion export-onnx OUT.onnx``: the fusion network as ONNX, checked with onnxruntime."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Exports the network of a checkpoint (default: the bundled default weights) to ONNX with
dynamic batch, height and width, the checkpoint's prompt embedding baked in. Inputs "a" and
"b": [N, 1, H, W] float32 BT.601 luma (0.299 R + 0.587 G + 0.114 B) in [0, 1], any H and W
(the graph pads them to multiples of 8 at the bottom and right as `upfusion fuse` does, and
crops back); output "fused": [N, 1, H, W], unclamped (clamp to [0, 1]; put colour back as Y
of the colour source's YCbCr).
benchmarks/onnx_fuse.py does all this with numpy, Pillow and onnxruntime only. With --upscale
K the graph fuses the pair enlarged K times (each pixel a K x K block) and averages the output
back to [N, 1, H, W], as `upfusion fuse --upscale K` does (K^2 times the work; the file's
metadata "upfusion.upscale" records K).
The file's metadata_props also name the weights (upfusion.weights, .weights_sha256, .prompt,
.text_encoder), the factor upfusion fuse uses up to 2^19 pixels (upfusion.auto_upscale: export
with that --upscale to match it there) and this contract (upfusion.inputs, upfusion.output).
Then runs the file with onnxruntime on random inputs of the --check sizes and prints the
largest difference from PyTorch on each; exits 1 if one exceeds --tolerance. Needs the onnx
extra: pip install 'upfusion[onnx]'.
"""

EPILOG = """\
examples:
  upfusion export-onnx upfusion-default.onnx
  upfusion export-onnx upfusion-default-2x.onnx --upscale 2   # as upfusion fuse runs images up to 0.5 MP
  upfusion export-onnx paper.onnx --weights converted/upfusion.json --check 480x640 --tolerance 1e-3
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export the network to ONNX (dynamic size) and check it with onnxruntime",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write (replaced atomically)")
    p.add_argument("--weights", metavar="CHECKPOINT", help="checkpoint or bundled weights name (default: default)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--check",
        nargs="*",
        default=["96x64", "160x120", "256x256", "640x480", "83x61"],
        metavar="WxH",
        help="sizes to compare onnxruntime with PyTorch on (default: 96x64 160x120 256x256 640x480 83x61; "
        "'none', or no size, skips the check)",
    )
    p.add_argument(
        "--upscale",
        default="1",
        metavar="K",
        help="fuse the pair enlarged K times inside the graph, as upfusion fuse --upscale K does (default 1; "
        "the bundled weights' upfusion fuse uses 2 up to half a megapixel)",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted difference (default 1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import parse_size
    from ..errors import UpfusionError
    from ..fuse import check_upscale, resolve_weights
    from ..onnx_export import check_onnx, export_onnx
    from ..pretrained.checkpoint import network_from_record, read_record
    from ..pretrained.extras import require

    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "onnx", "upfusion export-onnx")
    try:
        sizes = [] if args.check == ["none"] else [parse_size(text) for text in args.check]
    except ValueError as exc:
        raise UpfusionError(f"--check: {exc}") from None
    upscale = check_upscale(args.upscale, "--upscale", allow_auto=False)
    checkpoint = resolve_weights(args.weights)
    record, record_path, weights_path = read_record(checkpoint)
    model, text = network_from_record(record, record_path, weights_path, device="cpu")
    identity = {
        "upfusion.weights": args.weights or "default",
        "upfusion.weights_sha256": record.get("weights_sha256", ""),
        "upfusion.text_encoder": record.get("text_encoder", ""),
        "upfusion.prompt": record.get("prompt", ""),
        "upfusion.auto_upscale": str(record.get("auto_upscale", 1)),  # upfusion fuse's factor up to 2^19 pixels
    }
    path = export_onnx(model, text, args.output, opset=args.opset, upscale=upscale, metadata=identity)
    enlarged = f", fusing {upscale} times enlarged" if upscale > 1 else ""
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) from {checkpoint}{enlarged}")
    worst = 0.0
    for check in check_onnx(path, model, text, sizes=tuple(sizes), upscale=upscale):
        worst = max(worst, check.max_abs_diff)
        print(f"  {check.width}x{check.height}: max |onnxruntime - torch| = {check.max_abs_diff:.2e}")
    if sizes and worst > args.tolerance:
        raise UpfusionError(
            f"{path}: onnxruntime differs from PyTorch by up to {worst:.2e}, more than --tolerance {args.tolerance:g}"
        )
    return 0
