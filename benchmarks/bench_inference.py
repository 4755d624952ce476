"""Inference speed, memory and exactness: the tables of docs/performance.md.

    python benchmarks/bench_inference.py speed       [--presets paper default] [--sizes 640x480] [--runs 3]
    python benchmarks/bench_inference.py exactness   # fast vs plain arithmetic, on real images
    python benchmarks/bench_inference.py tiling      # tiled vs whole-image inference, on real images
    python benchmarks/bench_inference.py precision   # bf16 / fp16 autocast vs fp32
    python benchmarks/bench_inference.py large       # a 3840x2160 pair, tiled
    python benchmarks/bench_inference.py profile     # where the time goes: top operators, plain vs fast
    python benchmarks/bench_inference.py onnx        # onnxruntime against PyTorch, bundled weights [--sizes ...]

"fast" is the inference path (``upfusion.model.fast_ops``), "plain" the specification's
formulas computed literally (the reference arithmetic, kept for comparison and export). Each
speed configuration runs in a fresh process (``upfusion.benchmark.run_isolated``) so that its
peak memory is its own. Real image pairs come from ../shared/data (see its MANIFEST.md), or from
``$UPFUSION_SHARED/data`` when that variable is set (as for the tests).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import DATA

from upfusion import imaging
from upfusion.benchmark import ARITHMETIC, BenchCase, machine_description, markdown_table, parse_size, run_isolated
from upfusion.fuse import WEIGHTS_DIR
from upfusion.inference import COMPILE_SCOPES
from upfusion.model import SCPM, TCPM, fused_kernels
from upfusion.model.fast_ops import plain_arithmetic
from upfusion.pretrained.checkpoint import load_network
from upfusion.tiling import tile_count, tiled_forward


def load_pairs(dataset: str, count: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, A, B) padded luma tensors [1, 1, H8, W8] of the first ``count`` pairs of a test split."""
    folder = DATA / dataset / "test"
    pairs = []
    for path in sorted((folder / "vi").iterdir())[:count]:
        a, b = imaging.read_image(path).luma(), imaging.read_image(folder / "ir" / path.name).luma()
        pairs.append((path.name, *(torch.from_numpy(imaging.pad_to_multiple(x[None]))[:, None] for x in (a, b))))
    return pairs


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(255 * x.float().clamp(0, 1))


def psnr_uint8(x: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((to_uint8(x) - to_uint8(reference)) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def default_weights():
    return load_network(WEIGHTS_DIR / "default.json")


# --------------------------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> None:
    """plain arithmetic with 4 KiB pages (how a research script runs), fast with 4 KiB pages, fast with huge pages."""
    results = {}
    cases = []
    variants = (("plain", False), ("fast", False), ("fast", True))
    for preset in args.presets:
        for size in args.sizes:
            height, width = parse_size(size)
            for arithmetic, huge_pages in variants:
                cases.append(
                    BenchCase(
                        preset=preset,
                        height=height,
                        width=width,
                        arithmetic=arithmetic,
                        threads=args.threads,
                        huge_pages=huge_pages,
                    )
                )
    for case in cases:
        pages = "huge pages" if case.huge_pages else "4 KiB pages"
        print(f"... {case.preset} {case.width}x{case.height} {case.arithmetic}, {pages}", file=sys.stderr, flush=True)
        results[case] = run_isolated(case, runs=args.runs, warmup=1)
    print(markdown_table(list(results.values())))
    print(
        "\n| model | size | plain latency (s) | fast, 4 KiB pages (s) | fast, huge pages (s) | speed-up "
        "| plain peak (MiB) | fast peak (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        if case.arithmetic != "fast" or not case.huge_pages:
            continue
        fast = results[case]
        fast_small_pages = results[BenchCase(**{**case.__dict__, "huge_pages": False})]
        plain = results[BenchCase(**{**case.__dict__, "arithmetic": "plain", "huge_pages": False})]
        if fast.error or plain.error or fast_small_pages.error:
            continue
        print(
            f"| {case.preset} | {case.width}x{case.height} | {plain.latency_s:.2f} | {fast_small_pages.latency_s:.2f} "
            f"| {fast.latency_s:.2f} | {plain.latency_s / fast.latency_s:.2f}x | {plain.peak_memory_bytes / 2**20:,.0f} "
            f"| {fast.peak_memory_bytes / 2**20:,.0f} |"
        )
    print(f"\n{machine_description()}")


class _Recorder:
    """The TCPM SE selections made during one call."""

    def __init__(self) -> None:
        self.chosen: list[torch.Tensor] = []
        self._original = TCPM.channel_selection

    def __enter__(self):
        recorder = self

        def wrapped(module, pooled):
            out = recorder._original(module, pooled)
            recorder.chosen.append(out)
            return out

        TCPM.channel_selection = wrapped
        return self

    def __exit__(self, *exc):
        TCPM.channel_selection = self._original


def _separate(model: torch.nn.Module, std: float = 3.0) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            layers = [module.fc[2]] if isinstance(module, SCPM) and module.fc is not None else []
            if isinstance(module, TCPM):
                layers += [module.text_fc[2]] + ([module.se_fc[2]] if module.se_fc is not None else [])
            for layer in layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)


def _fast_vs_plain(model, text, a, b) -> tuple[float, float, int, int]:
    with torch.inference_mode():
        with _Recorder() as fast_choice:
            fast = model(a, b, text)
        with plain_arithmetic(), _Recorder() as plain_choice:
            plain = model(a, b, text)
    flipped = sum(int((f != p).any(dim=1).sum()) for f, p in zip(fast_choice.chosen, plain_choice.chosen, strict=True))
    identical = (to_uint8(fast) == to_uint8(plain)).float().mean().item()
    return (fast - plain).abs().max().item(), identical, flipped, len(fast_choice.chosen) * a.shape[0]


def exactness(args: argparse.Namespace) -> None:
    from upfusion.presets import build_model

    print("| weights | image | max abs difference | identical uint8 pixels | TCPM selections that differ |")
    print("|---|---|---|---|---|")
    model, text = default_weights()
    for name, a, b in load_pairs("msrs", args.count):
        diff, identical, flipped, total = _fast_vs_plain(model, text, a, b)
        print(f"| default (bundled) | MSRS {name} | {diff:.2e} | {100 * identical:.3f}% | {flipped} of {total} |")
    for label, separate in (
        ("paper preset, default-init SE/text MLPs", False),
        ("paper preset, separated scores", True),
    ):
        torch.manual_seed(0)
        model = build_model("paper").eval()  # random weights: the SE and text MLPs as the authors' release has them
        if separate:
            _separate(model)
        text = torch.randn(1, 512)
        for name, a, b in load_pairs("msrs", 2):
            a, b = a[..., :240, :320], b[..., :240, :320]
            diff, identical, flipped, total = _fast_vs_plain(model, text, a, b)
            print(
                f"| {label} | MSRS {name} (320x240 crop) | {diff:.2e} | {100 * identical:.3f}% | {flipped} of {total} |"
            )


def tiling(args: argparse.Namespace) -> None:
    model, text = default_weights()
    settings = [(512, 64), (512, 128), (768, 64), (384, 64), (256, 64)]
    print(
        "| image (LLVIP 1280x1024) | tile / overlap | statistics | tiles | max abs diff | mean abs diff | PSNR vs whole (dB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, a, b in load_pairs("llvip", args.count):
        with torch.inference_mode():
            whole = model(a, b, text)
            for tile, overlap in settings:
                count = tile_count(a.shape[2], a.shape[3], tile, overlap)
                for label, share in (("shared", True), ("per tile", False)):
                    if not share and (tile, overlap) != (512, 64):
                        continue
                    out = tiled_forward(model, a, b, text, tile=tile, overlap=overlap, share_statistics=share)
                    d = (out - whole).abs()
                    print(
                        f"| {name} | {tile} / {overlap} | {label} | {count} | {d.max().item():.4f} "
                        f"| {d.mean().item():.5f} | {psnr_uint8(out, whole):.2f} |",
                        flush=True,
                    )


def precision(args: argparse.Namespace) -> None:
    model, text = default_weights()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, text = model.to(device), text.to(device)
    from upfusion.inference import cpu_has_native_bf16, inference_context

    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    # without native bf16 (AVX512-BF16, AMX) the CPU emulates it slowly: a crop then
    crop = 256 if device.type == "cpu" and not cpu_has_native_bf16() else None
    print(
        "| image | device | precision | max abs diff vs fp32 | PSNR vs fp32 (uint8, dB) "
        "| TCPM channel selections unlike fp32's |"
    )
    print("|---|---|---|---|---|---|")
    for name, a, b in load_pairs("msrs", args.count):
        if crop:
            a, b = a[..., :crop, :crop], b[..., :crop, :crop]
        a, b = a.to(device), b.to(device)
        with inference_context(device, "fp32"), _Recorder() as full_choice:
            full = model(a, b, text).float()
        for p in precisions:
            with inference_context(device, p), _Recorder() as half_choice:
                half = model(a, b, text).float()
            pairs = list(zip(full_choice.chosen, half_choice.chosen, strict=True))
            unlike = sum(int(not torch.equal(f.sort().values, h.sort().values)) for f, h in pairs)
            size = f" ({crop}x{crop} crop)" if crop else ""
            print(
                f"| MSRS {name}{size} | {device.type} | {p} | {(half - full).abs().max().item():.4f} "
                f"| {psnr_uint8(half, full):.2f} | {unlike} of {len(pairs)} |"
            )


def large(args: argparse.Namespace) -> None:
    from upfusion.presets import PRESETS
    from upfusion.tiling import estimate_peak_bytes, plan_tile

    height, width = 2160, 3840
    for preset in args.presets:
        config = PRESETS[preset]
        tile = plan_tile(config, height, width) or args.tile
        print(
            f"{preset}: whole-image estimate {estimate_peak_bytes(config, height, width) / 2**30:.1f} GiB "
            f"of activations; tile {tile}",
            file=sys.stderr,
        )
        case = BenchCase(preset=preset, height=height, width=width, tile=args.tile or tile, overlap=64)
        start = time.perf_counter()
        result = run_isolated(case, runs=1, warmup=0)
        print(markdown_table([result]))
        print(f"(wall time including model build: {time.perf_counter() - start:.0f} s)")


def profile(args: argparse.Namespace) -> None:
    """The operators (CPU) or kernels (--device cuda) that take the most time, self time of one call each."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from upfusion.inference import inference_context, maybe_compile
    from upfusion.model import fast_ops
    from upfusion.presets import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]

    def self_time(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    for preset in args.presets:
        for size in args.sizes:
            height, width = parse_size(size)
            torch.manual_seed(0)
            model = build_model(preset).eval().to(device)
            text = torch.randn(1, model.config.text_dim, device=device)
            a, b = (torch.rand(args.batch, 1, height, width, device=device) for _ in range(2))
            network = maybe_compile(model, scope=args.compile) if args.compile else model
            for arithmetic in args.arithmetic:
                fast_ops.set_fast_inference(arithmetic != "plain")
                fused_kernels.set_fused_kernels(arithmetic == "fused")
                with inference_context(device, args.precision):
                    for _ in range(3 if args.compile else 1):  # warm-up (and compilation)
                        network(a, b, text)
                    with torch_profile(activities=activities) as prof:
                        network(a, b, text)
                        if cuda:
                            torch.cuda.synchronize(device)
                    by_module = (
                        time_by_module(model, functools.partial(network, a, b, text), device) if args.by_module else {}
                    )
                fast_ops.set_fast_inference(True)
                fused_kernels.set_fused_kernels(None)

                # On a GPU, the kernels alone: an operator's self device time is its kernels' time,
                # which the table would otherwise count twice.
                events = [e for e in prof.key_averages() if not cuda or e.device_type != DeviceType.CPU]
                events.sort(key=self_time, reverse=True)
                total = sum(self_time(e) for e in events)
                where = "GPU kernel" if cuda else "operator"
                compiled = f", {args.compile} compiled" if args.compile else ""
                print(
                    f"\n**{preset} {width}x{height} batch {args.batch} {args.precision} on {device.type}, "
                    f"{arithmetic}{compiled}**: {total / 1e6:.4f} s of {where} time\n"
                )
                print(f"| {'kernel' if cuda else 'operator'} | calls | self time (s) | share |")
                print("|---|---:|---:|---:|")
                for e in events[: args.top]:
                    print(
                        f"| `{e.key[:80]}` | {e.count} | {self_time(e) / 1e6:.4f} | {100 * self_time(e) / total:.0f}% |"
                    )
                if by_module:
                    whole = sum(by_module.values())
                    print("\n| module (top level) | time (ms) | share |\n|---|---:|---:|")
                    for name, ms in sorted(by_module.items(), key=lambda kv: kv[1], reverse=True)[: args.top]:
                        print(f"| `{name}` | {ms:.2f} | {100 * ms / whole:.0f}% |")


def time_by_module(model: torch.nn.Module, call, device: torch.device) -> dict[str, float]:
    """Milliseconds spent in each top-level module of ``model`` during one ``call`` (wall time on
    the CPU, CUDA events on a GPU; a module called twice is summed)."""
    cuda = device.type == "cuda"
    spent: dict[str, list[tuple]] = {}  # name -> (start, end) marks, one pair a call
    open_marks: dict[str, object] = {}

    def mark():
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def before(name):
        return lambda module, inputs: open_marks.__setitem__(name, mark())

    def after(name):
        def hook(module, inputs, output):
            spent.setdefault(name, []).append((open_marks.pop(name), mark()))

        return hook

    handles = []
    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(before(name)))
        handles.append(child.register_forward_hook(after(name)))
    try:
        call()
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        for handle in handles:
            handle.remove()
    if cuda:
        return {name: sum(s.elapsed_time(e) for s, e in marks) for name, marks in spent.items()}
    return {name: 1000 * sum(e - s for s, e in marks) for name, marks in spent.items()}


def onnx(args: argparse.Namespace) -> None:
    """The bundled weights exported to ONNX and run by onnxruntime (CPU, its default options), against
    ``upfusion bench``'s PyTorch measurement of the same network; each in a fresh process
    (onnxruntime's without PyTorch: ``onnxruntime_case.py``)."""
    from upfusion.onnx_export import export_onnx

    model, text = default_weights()
    threads = args.threads or torch.get_num_threads()
    print("| size | PyTorch, inference kernels | onnxruntime | onnxruntime / PyTorch | onnxruntime, arena off |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, text, Path(folder) / "default.onnx")
        for size in args.sizes:
            height, width = parse_size(size)
            case = BenchCase(weights=str(WEIGHTS_DIR / "default.json"), height=height, width=width, threads=threads)
            mine = run_isolated(case, runs=args.runs, warmup=1)
            theirs, lean = (_onnxruntime_case(path, size, args.runs, threads, a) for a in ("arena", "no-arena"))
            print(
                f"| {width}x{height} | {mine.latency_s:.2f} s, {mine.peak_memory_bytes / 2**20:,.0f} MiB "
                f"| {theirs['latency_s']:.2f} s, {theirs['peak_memory_bytes'] / 2**20:,.0f} MiB "
                f"| {theirs['latency_s'] / mine.latency_s:.2f}x time, "
                f"{theirs['peak_memory_bytes'] / mine.peak_memory_bytes:.1f}x memory "
                f"| {lean['latency_s']:.2f} s, {lean['peak_memory_bytes'] / 2**20:,.0f} MiB |",
                flush=True,
            )
    print(f"\nonnxruntime {theirs['onnxruntime']}, {threads} threads; {machine_description()}")


def _onnxruntime_case(path: Path, size: str, runs: int, threads: int, arena: str) -> dict:
    script = Path(__file__).with_name("onnxruntime_case.py")
    command = [sys.executable, str(script), str(path), size, str(runs), str(threads), arena]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "exactness", "tiling", "precision", "large", "profile", "onnx"])
    parser.add_argument("--presets", nargs="+", default=["paper", "default"])
    parser.add_argument("--sizes", nargs="+", default=["640x480"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=2, help="image pairs per table")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tile", type=int)
    parser.add_argument("--device", default="cpu", help="profile: cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="profile only")
    parser.add_argument("--top", type=int, default=8, help="profile: operators listed")
    parser.add_argument("--batch", type=int, default=1, help="profile: pairs per call")
    parser.add_argument("--arithmetic", nargs="+", default=["plain", "fast"], choices=ARITHMETIC, help="profile only")
    parser.add_argument("--compile", choices=COMPILE_SCOPES, help="profile: torch.compile first")
    parser.add_argument("--by-module", action="store_true", help="profile: time of each top-level module too")
    args = parser.parse_args()
    print(f"<!-- {machine_description()} -->")
    commands = {"speed": speed, "exactness": exactness, "tiling": tiling, "precision": precision, "large": large}
    commands.update(profile=profile, onnx=onnx)
    commands[args.what](args)


if __name__ == "__main__":
    main()
