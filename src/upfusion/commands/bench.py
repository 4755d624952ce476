"""``upfusion bench``: latency, pairs per second and peak memory of the network on this machine."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from . import add_compile_option

DESCRIPTION = """\
Times the fusion network on random inputs for every combination of the given presets (or a
checkpoint), sizes, batch sizes, devices, precisions and arithmetic, and prints a markdown
table: latency (median of --runs calls after --warmup untimed ones, one call fuses a batch),
pairs per second, and peak memory. Each combination runs in a fresh Python process so that
its peak memory is its own: on the CPU the process's peak resident set size (the model and
PyTorch itself included: the "model + runtime" column is that figure before the first call),
on a GPU the peak of PyTorch's CUDA allocator.

arithmetic: "fast" is what `upfusion fuse` runs in fp32 (inference kernels: channels-last, row
bands, folded attention); "plain" computes the specification's formulas literally (the
reference arithmetic); both give the same result to ~1e-6. "fused" is "fast" with each
Restormer block's attention pass and its feed-forward as one Triton kernel each (maps up to 128
channels): GPUs only, in bf16 or fp16, what `upfusion fuse` runs in bf16 or fp16 on Hopper GPUs
(2.2 times faster than "fast" on an H100; with --compile, the rest of the network is compiled
around them).
precision: fp32, bf16 or fp16 (autocast; fp16 on CUDA only). Speed does not depend on the
weights, so presets run with their random initialisation unless --weights names a checkpoint.
"""

EPILOG = """\
examples:
  upfusion bench                                        # default preset, 640x480, this machine's device
  upfusion bench --preset paper default --size 640x480 1920x1080 --arithmetic fast plain
  upfusion bench --device cuda --precision fp32 bf16 --batch 1 8 --json gpu.json --markdown gpu.md
  upfusion bench --size 3840x2160 --tile 1024              # tiled inference of a 4K pair
  upfusion bench --device cuda --precision bf16 --arithmetic plain --compile blocks   # compiled blocks
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure latency, pairs per second and peak memory on this machine",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", nargs="+", default=["default"], metavar="NAME", help="presets (default: default)")
    p.add_argument(
        "--weights",
        metavar="CHECKPOINT",
        help="measure this checkpoint (a path, or bundled weights by name: default) instead of presets",
    )
    p.add_argument(
        "--size", nargs="+", default=["640x480"], metavar="WxH", help="image sizes, multiples of 8 (default 640x480)"
    )
    p.add_argument("--batch", nargs="+", type=int, default=[1], metavar="N", help="pairs per call (default 1)")
    p.add_argument("--device", nargs="+", default=["auto"], metavar="DEV", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"], help="default fp32")
    p.add_argument(
        "--arithmetic", nargs="+", default=["fast"], choices=["fast", "plain", "fused"], help="default fast (see above)"
    )
    p.add_argument("--tile", type=int, metavar="PX", help="tiled inference with PX x PX tiles")
    p.add_argument(
        "--overlap",
        type=int,
        metavar="PX",
        help="tile overlap, as upfusion fuse's (default 64, or half a smaller tile)",
    )
    add_compile_option(
        p,
        "torch.compile each Restormer block (default scope) or the whole model (one graph, many minutes to "
        "compile); falls back to eager on failure",
    )
    p.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile's mode, with --compile (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay the network from CUDA graphs (upfusion.cuda_graphs; recorded during the warm-up, which "
        "then needs at least 2 calls), as upfusion fuse --cuda-graphs; CUDA only, not with --compile or --tile",
    )
    p.add_argument("--runs", type=int, default=5, metavar="N", help="timed calls (default 5)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed calls first (default 1)")
    p.add_argument(
        "--huge-pages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let PyTorch use transparent huge pages on Linux, as `upfusion fuse` does (default on)",
    )
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--timeout", type=float, default=3600, metavar="S", help="per configuration (default 3600)")
    p.add_argument("--json", metavar="FILE", help="also write machine, configurations and results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the table (with the machine named) to FILE")
    p.set_defaults(func=run)


def _devices(names: list[str]) -> list[str]:
    import torch

    from ..errors import UpfusionError

    devices = []
    for name in names:
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UpfusionError(f"--device {name}: no CUDA device is available to torch")
        try:
            torch.device(name)
        except RuntimeError:
            raise UpfusionError(f"--device {name}: unknown device (use auto, cpu, cuda or cuda:N)") from None
        devices.append(name)
    return devices


def _write(path: Path, data: bytes, option: str) -> None:
    """Writes ``data`` to ``path`` atomically, creating its folder."""
    from ..atomic import write_bytes_atomic
    from ..errors import UpfusionError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise UpfusionError(f"{option} {path}: cannot write it ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchCase, machine_description, markdown_table, parse_size, run_isolated
    from ..errors import UpfusionError
    from ..fuse import DEFAULT_OVERLAP, resolve_weights
    from ..presets import PRESETS
    from ..pretrained.checkpoint import read_record
    from .output_paths import check_output_file

    if args.weights:
        weights = resolve_weights(args.weights)  # a bundled name ("default") or a path, as fuse takes
        read_record(weights)  # fails early on a missing or malformed record, naming the file
        models = [dict(weights=str(weights.resolve()))]
    else:
        unknown = [name for name in args.preset if name not in PRESETS]
        if unknown:
            raise UpfusionError(f"unknown preset {unknown[0]!r}; known: {', '.join(PRESETS)}")
        models = [dict(preset=name) for name in args.preset]
    try:
        sizes = [parse_size(text) for text in args.size]
    except ValueError as exc:
        raise UpfusionError(f"--size: {exc}") from None
    for height, width in sizes:
        if height % 8 or width % 8:
            raise UpfusionError(f"--size {width}x{height}: use multiples of 8 (fuse pads images to them)")
    if args.runs < 1 or args.warmup < 0 or min(args.batch) < 1:
        raise UpfusionError("--runs and --batch must be at least 1, --warmup at least 0")
    if args.compile_mode and not args.compile:
        raise UpfusionError("--compile-mode needs --compile")
    if args.cuda_graphs and (args.compile or args.tile or args.warmup < 2):
        raise UpfusionError("--cuda-graphs goes without --compile and --tile, with --warmup 2 or more")
    overlap = args.overlap
    if overlap is None:  # as upfusion fuse's: 64, or half a smaller tile
        overlap = min(DEFAULT_OVERLAP, args.tile // 2) if args.tile else DEFAULT_OVERLAP
    devices = _devices(args.device)
    if args.json:
        check_output_file(args.json, "--json")
    if args.markdown:
        check_output_file(args.markdown, "--markdown")
    for device in devices:
        if device == "cpu" and "fp16" in args.precision:
            raise UpfusionError("--precision fp16 runs on CUDA devices only")
        if device == "cpu" and args.cuda_graphs:
            raise UpfusionError("--cuda-graphs runs on CUDA devices only")

    cases = [
        BenchCase(
            height=height,
            width=width,
            batch=batch,
            device=device,
            precision=precision,
            arithmetic=arithmetic,
            tile=args.tile,
            overlap=overlap,
            compile=args.compile,
            compile_mode=args.compile_mode,
            cuda_graphs=args.cuda_graphs,
            threads=args.threads,
            huge_pages=args.huge_pages,
            **model,
        )
        for model, (height, width), batch, device, precision, arithmetic in itertools.product(
            models, sizes, args.batch, devices, args.precision, args.arithmetic
        )
    ]
    machine = machine_description()
    results = []
    for i, case in enumerate(cases, 1):
        print(
            f"[{i}/{len(cases)}] {case.label} {case.width}x{case.height} batch {case.batch} on {case.device}, "
            f"{case.precision}, {case.arithmetic}...",
            file=sys.stderr,
            flush=True,
        )
        results.append(run_isolated(case, runs=args.runs, warmup=args.warmup, timeout=args.timeout))
    where = machine.get("gpu") if any(c.device.startswith("cuda") for c in cases) else None
    heading = f"Measured on {machine['cpu']} ({machine['cpu_cores']} cores)" + (f", {where}" if where else "")
    heading += f", torch {machine['torch']}."
    table = markdown_table(results)
    print(table)
    print(f"\n{heading}")
    if args.markdown:
        _write(Path(args.markdown), f"{heading}\n\n{table}\n".encode(), "--markdown")
    if args.json:
        payload = {"machine": machine, "results": [r.to_dict() for r in results]}
        _write(Path(args.json), (json.dumps(payload, indent=1) + "\n").encode(), "--json")
    return 1 if any(r.error for r in results) else 0
