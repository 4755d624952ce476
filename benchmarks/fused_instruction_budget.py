"""How many instructions the fused kernels execute for one pair, estimated without a GPU, and the
time that takes on an H100 at full issue and at the issue rate Nsight Compute measured.

    python benchmarks/fused_instruction_budget.py [--preset paper] [--size 640x480]
        [--tiles default 8x8:8:f32 4x16:8:f32:s64 ...] [--ipc 1.35]

Runs the preset's network once on the CPU (64x64, random weights) to find every fused kernel it
launches and the share of the pixels its map has; compiles each kernel of a map up to
``fused_kernels.GPU_WIDEST`` channels (wider maps run the inference kernels on a GPU) for an
H100 with each config of ``--tiles``; estimates its warp instructions per output pixel from the
SASS (``kernel_resources.py --sass``). Prints them per kernel and summed for a pair of
``--size``, with the default tiles and with the config of ``--tiles`` that executes the fewest
(among those that spill no more than the default tiles or than 16 bytes a thread, whichever
is more). An H100 SXM issues at most 4 warp instructions a cycle on each of its 132
multiprocessors at 1.98 GHz; Nsight Compute measured 1.32-1.39 for the fused kernels
(2026-11-28, waiting on loads with 8 warps a multiprocessor).
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from kernel_resources import VARIANTS, compile_variant, module_kernels

from upfusion.benchmark import parse_size
from upfusion.model import fused_kernels
from upfusion.model.network import UPFusion
from upfusion.presets import PRESETS

H100_ISSUE = 132 * 4 * 1.98e9  # warp instructions a second at full issue (H100 SXM, boost clock)
PROBE = 64  # the probe run's side


def kernel_launches(preset: str) -> Counter:
    """{(variant, channels, heads, share of the input's pixels): launches} of one forward pass."""
    config = PRESETS[preset].replace(semantic_backbone=None)
    torch.manual_seed(0)
    model = UPFusion(config).eval()
    found = Counter()

    def record(module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        share = inputs[0].shape[2] * inputs[0].shape[3] / PROBE**2
        for variant, channels, heads in module_kernels(module):
            found[(variant, channels, heads, share)] += 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if module_kernels(m)]
    with torch.inference_mode():
        image = torch.rand(1, 1, PROBE, PROBE)
        model(image, image, torch.zeros(1, config.text_dim))
    for hook in hooks:
        hook.remove()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the pair")
    parser.add_argument("--tiles", nargs="+", default=["default"], help="configs, in KernelConfig.parse's notation")
    parser.add_argument("--ipc", type=float, default=1.35, help="issue rate to time at (warp instructions a cycle)")
    args = parser.parse_args()
    height, width = parse_size(args.size)
    texts = ["default", *[text for text in args.tiles if text != "default"]]

    print(f"<!-- {args.preset} preset, {width}x{height}, bf16, sm_90; instructions: warp instructions -->\n")
    print("| kernel | channels | heads | launches | pixels | default: a pixel | fewest: config | a pixel |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    totals = Counter()
    for (variant, channels, heads, share), launches in sorted(kernel_launches(args.preset).items()):
        if channels > fused_kernels.GPU_WIDEST:
            continue
        pixels = share * height * width
        results = {}
        for text in texts:
            config = fused_kernels.KernelConfig.parse(
                text, fused_kernels.default_config(channels, VARIANTS[variant][0])
            )
            results[text] = compile_variant(variant, channels, heads, config, sass=True)
        allowed = max(16, results["default"].spill_stores)
        best = min((t for t in texts if results[t].spill_stores <= allowed), key=lambda t: results[t].per_pixel)
        for key, text in (("default", "default"), ("fewest", best)):
            totals[key] += results[text].per_pixel * pixels * launches
        print(
            f"| {variant} | {channels} | {heads} | {launches} | {pixels:,.0f} | {results['default'].per_pixel:,.0f} "
            f"| {best} | {results[best].per_pixel:,.0f} |",
            flush=True,
        )
    print(f"\n| tiles | warp instructions a pair | at full issue | at IPC {args.ipc:.2f} |")
    print("|---|---:|---:|---:|")
    for key in ("default", "fewest"):
        seconds = totals[key] / H100_ISSUE
        print(f"| {key} | {totals[key] / 1e9:.2f} G | {1e3 * seconds:.1f} ms | {1e3 * seconds * 4 / args.ipc:.1f} ms |")


if __name__ == "__main__":
    main()
