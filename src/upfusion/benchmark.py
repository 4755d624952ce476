"""Speed and memory of the network on this machine (``upfusion bench``, ``benchmarks/bench_inference.py``).

One configuration (``BenchCase``: preset or checkpoint, image size, batch, device, precision,
arithmetic, tiling, compile) is measured in a fresh Python process, so its peak memory is its
own: latency is the median of ``runs`` timed calls after ``warmup`` untimed ones; peak memory
is the process's maximum resident set size on the CPU (``ru_maxrss``, model and PyTorch
included; ``model_memory`` is that figure before the first call) or the peak of PyTorch's
CUDA allocator on a GPU. Inputs are random (speed does not depend on pixel values) and weights
are the preset's initialisation unless a checkpoint is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .huge_pages import ENV as HUGE_PAGES_ENV

ARITHMETIC = ("fast", "plain", "fused")


@dataclass(frozen=True)
class BenchCase:
    """One configuration to measure."""

    preset: str = "default"  # a preset name, or ignored when ``weights`` names a checkpoint
    height: int = 480
    width: int = 640
    batch: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    # "fast" (inference kernels), "plain" (the specification's formulas) or "fused" (fast, with the
    # Triton kernels of ``upfusion.model.fused_kernels``: GPUs, bf16 or fp16); "fast" turns them off
    arithmetic: str = "fast"
    tile: int | None = None  # tiled inference with this tile size
    overlap: int = 64
    compile: str | None = None  # torch.compile: None, "model" (one graph) or "blocks" (each Restormer block)
    compile_mode: str | None = None  # torch.compile's mode ("reduce-overhead": CUDA graphs; "max-autotune"...)
    cuda_graphs: bool = False  # the network replayed from CUDA graphs (upfusion.cuda_graphs), recorded in the warm-up
    threads: int | None = None  # torch.set_num_threads on the CPU; None keeps PyTorch's default
    weights: str | None = None  # a checkpoint instead of the preset's random initialisation
    huge_pages: bool = True  # THP_MEM_ALLOC_ENABLE in the measuring process (run_isolated only)

    @property
    def label(self) -> str:
        return Path(self.weights).stem if self.weights else self.preset


@dataclass
class BenchResult:
    case: BenchCase
    latency_s: float | None = None  # median over the timed runs, per call (a batch of pairs)
    latencies_s: list[float] = field(default_factory=list)
    pairs_per_s: float | None = None
    peak_memory_bytes: int | None = None
    model_memory_bytes: int | None = None
    memory_kind: str = ""
    threads: int | None = None
    compiled: bool | None = None
    huge_pages: bool | None = None  # whether PyTorch was asked for huge pages (THP_MEM_ALLOC_ENABLE=1)
    error: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["case"] = dataclasses.asdict(self.case)
        return d


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (width x height) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 640x480)") from None
    if width < 8 or height < 8:
        raise ValueError(f"size {text!r}: both sides must be at least 8 pixels")
    return height, width


def machine_description() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _build(case: BenchCase):
    import torch

    from .presets import build_model
    from .pretrained.checkpoint import load_network

    if case.weights:
        model, text = load_network(case.weights, device=case.device)
    else:
        model = build_model(case.preset).to(case.device).eval()
        text = torch.randn(1, model.config.text_dim, generator=torch.Generator().manual_seed(0)).to(case.device)
    return model, text


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def run_case(case: BenchCase, runs: int = 5, warmup: int = 1) -> BenchResult:
    """Measures ``case`` in this process (peak memory is this process's so far: see ``run_isolated``)."""
    import statistics

    import torch

    from .cuda_graphs import GraphedNetwork
    from .inference import inference_context, maybe_compile
    from .model import fast_ops, fused_kernels
    from .tiling import tiled_forward

    if case.arithmetic not in ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {ARITHMETIC}, not {case.arithmetic!r}")
    if case.arithmetic == "fused" and case.device.startswith("cuda") and case.precision == "fp32":
        raise ValueError("arithmetic 'fused' runs in bf16 or fp16 on a GPU (in fp32 the inference kernels run)")
    if case.arithmetic == "fused" and not fused_kernels.available():
        raise ValueError("arithmetic 'fused' needs Triton and a CUDA GPU (or TRITON_INTERPRET=1 on the CPU)")
    if case.height % 8 or case.width % 8:
        raise ValueError(f"{case.width}x{case.height}: the network takes multiples of 8 (the pipeline pads)")
    if case.cuda_graphs and (not case.device.startswith("cuda") or case.compile or case.tile or warmup < 2):
        raise ValueError("cuda_graphs: a CUDA device, no compile or tile, and a warm-up of 2 calls or more")
    if case.threads:
        torch.set_num_threads(case.threads)
    result = BenchResult(case, threads=torch.get_num_threads(), huge_pages=os.environ.get(HUGE_PAGES_ENV) == "1")
    device = torch.device(case.device)
    model, text = _build(case)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.model_memory_bytes = torch.cuda.memory_allocated(device)
        result.memory_kind = "CUDA allocator peak"
    else:
        result.model_memory_bytes = _peak_rss_bytes()
        result.memory_kind = "process peak RSS"
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(case.batch, 1, case.height, case.width, generator=generator).to(device)
    b = torch.rand(case.batch, 1, case.height, case.width, generator=generator).to(device)

    network = maybe_compile(model, mode=case.compile_mode, scope=case.compile) if case.compile else model
    if case.cuda_graphs:
        network = GraphedNetwork(network)

    def call() -> None:
        if case.tile:
            tiled_forward(network, a, b, text, tile=case.tile, overlap=case.overlap)
        else:
            network(a, b, text)
        if cuda:
            torch.cuda.synchronize(device)

    saved, saved_fused = fast_ops._enabled, fused_kernels._enabled
    fast_ops.set_fast_inference(case.arithmetic != "plain")
    fused_kernels.set_fused_kernels(case.arithmetic == "fused")
    try:
        with inference_context(device, case.precision):
            for _ in range(warmup):
                call()
            for _ in range(runs):
                start = time.perf_counter()
                call()
                result.latencies_s.append(time.perf_counter() - start)
    finally:
        fast_ops.set_fast_inference(saved)
        fused_kernels.set_fused_kernels(saved_fused)
    result.latency_s = statistics.median(result.latencies_s)
    result.pairs_per_s = case.batch / result.latency_s
    result.peak_memory_bytes = torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()
    result.compiled = network.is_compiled if case.compile else None
    return result


def run_isolated(case: BenchCase, runs: int = 5, warmup: int = 1, timeout: float | None = None) -> BenchResult:
    """``run_case`` in a fresh Python process; a failure (out of memory, timeout) becomes ``result.error``."""
    request = json.dumps({"case": dataclasses.asdict(case), "runs": runs, "warmup": warmup})
    env = {**os.environ, HUGE_PAGES_ENV: "1" if case.huge_pages else "0"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "upfusion.benchmark", request],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return BenchResult(case, error=f"timed out after {timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode < 0:
            detail = f"killed by signal {-proc.returncode} (out of memory?)"
        return BenchResult(case, error=detail[:300])
    data = json.loads(lines[-1])
    data["case"] = BenchCase(**data["case"])
    return BenchResult(**data)


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:,.0f}"


def markdown_table(results: list[BenchResult]) -> str:
    """The results as a markdown table, one row per configuration."""
    header = (
        "| model | size (WxH) | batch | device | precision | arithmetic | tile | latency (s) | pairs/s "
        "| peak memory (MiB) | of which model + runtime (MiB) | threads |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in results:
        c = r.case
        tile = f"{c.tile}/{c.overlap}" if c.tile else "-"
        arithmetic = (
            c.arithmetic
            + (f" +compile ({', '.join(filter(None, (c.compile, c.compile_mode)))})" if c.compile else "")
            + (" +CUDA graphs" if c.cuda_graphs else "")
            + (" (4 KiB pages)" if not c.huge_pages else "")
        )
        if r.error:
            timing = f"error: {r.error} | | | |"
        else:
            timing = (
                f"{r.latency_s:.{3 if r.latency_s >= 0.1 else 4}f} | {r.pairs_per_s:.3f} | {_mib(r.peak_memory_bytes)} "
                f"| {_mib(r.model_memory_bytes)} |"
            )
        lines.append(
            f"| {c.label} | {c.width}x{c.height} | {c.batch} | {c.device} | {c.precision} | {arithmetic} "
            f"| {tile} | {timing} {r.threads or ''} |"
        )
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    result = run_case(BenchCase(**request["case"]), runs=request["runs"], warmup=request["warmup"])
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
