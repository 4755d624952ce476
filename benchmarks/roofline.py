"""The fastest a GPU could run the network, from its counted arithmetic and memory traffic.

    python benchmarks/roofline.py [--preset paper] [--size 640x480] [--precision bf16]
                                  [--arithmetic plain fast] [--tflops 798] [--bandwidth 3.35]

One call of the network runs on this CPU (batch 1, random inputs, inference mode, autocast in
the chosen precision) while a ``TorchDispatchMode`` records every operator that reaches a kernel:
its floating-point operations (torch's own ``flop_counter`` formulas: 2 per multiply-add, for
matrix products and convolutions) and the bytes of the tensors it reads and writes. Views and
empty allocations move nothing and are not counted. Each top-level module gets its share.

From these counts, for a GPU of ``--tflops`` dense matrix throughput and ``--bandwidth`` memory
bandwidth (defaults: the 798 TFLOP/s that a large bf16 product reached on a lent H100, and the
H100 SXM's specified 3.35 TB/s), four floors per pair:

- compute: all FLOPs at the matrix rate (the "2.6 ms" of issue #6 for the paper preset);
- operator by operator: each operator as one kernel that reaches the roofline,
  ``max(flops / rate, bytes / bandwidth)``, summed (what an eager call could reach at best);
- Restormer blocks fused: each ``TransformerBlock`` as one kernel that reads its input twice
  (the channel attention needs the whole map's Gram matrix before any output) and writes its
  output once, the rest of the network operator by operator;
- upfusion's fused kernels (``upfusion.model.fused_kernels``): the blocks they take with the
  traffic those kernels have by design (``fused_kernel_bytes``; the kernels themselves are not
  run here), the other blocks and the rest operator by operator (TCPM's attention pass and
  feed-forward too, which the kernels also take: the model errs high there).

These are floors, not predictions: real kernels reach a fraction of either rate, and each
launch costs microseconds (the operator count is listed for that reason). The counts come from
CPU autocast, which keeps a few operators in float32 that CUDA autocast runs in bf16 and the
other way round; the traffic is near, not equal, to a GPU's.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from upfusion.benchmark import ARITHMETIC, machine_description, parse_size
from upfusion.inference import PRECISIONS, inference_context
from upfusion.model import fast_ops, fused_kernels
from upfusion.model.blocks import TransformerBlock
from upfusion.presets import PRESETS, build_model

# Operators that launch no kernel of their own: views, shape queries, allocations.
NO_KERNEL = {
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "lift_fresh",
    "detach",
    "_unsafe_view",
}
# Composite operators with a kernel of their own on a GPU (not counted as their decomposition).
OWN_KERNEL = {"upsample_bilinear2d", "upsample_nearest2d"}


@dataclass
class Traffic:
    """Counts of one part of the network."""

    flops: int = 0
    bytes: int = 0
    operators: int = 0
    op_floor_s: float = 0.0
    # with each Restormer block as one kernel (see the module docstring)
    fused_bytes: int = 0
    fused_floor_s: float = 0.0
    # with upfusion's fused Triton kernels in the blocks they take (modelled: see fused_kernel_bytes)
    kernels_bytes: int = 0
    kernels_floor_s: float = 0.0
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # operator -> bytes


def fused_kernel_bytes(x: torch.Tensor) -> int | None:
    """The traffic of a ``TransformerBlock`` on ``x`` with ``fused_kernels`` (None where they do
    not apply: wider maps): MDTA's kernel reads x and its halo and writes v; the GDFN's kernel
    reads x and v with their halos, applies the attention and writes the output. A halo is the
    share of extra pixels that the kernel's default tiles read."""
    c = x.shape[1]
    if c > fused_kernels.MAX_CHANNELS:
        return None

    def halo(kernel: str) -> float:
        rows, cols = fused_kernels.default_config(c, kernel).tile
        return (rows + 2) * (cols + 2) / (rows * cols)

    return round((halo("attention") + 2 * halo("gdfn") + 2) * x.numel() * x.element_size())


def tensor_bytes(tree) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class TrafficCounter(TorchDispatchMode):
    """Counts FLOPs and bytes of every kernel-launching operator, by top-level module of ``model``."""

    def __init__(self, model: torch.nn.Module, tflops: float, bandwidth: float) -> None:
        super().__init__()
        self.rate, self.bandwidth = tflops * 1e12, bandwidth * 1e12
        self.parts: dict[str, Traffic] = defaultdict(Traffic)
        self.current = "(outside the modules)"
        self.block_depth = 0  # > 0 inside a TransformerBlock
        self.block_flops = self.block_bytes = self.block_op_bytes = 0
        self.block_op_floor_s = 0.0
        self.handles = []
        for name, child in model.named_children():
            self.handles.append(child.register_forward_pre_hook(lambda m, i, name=name: setattr(self, "current", name)))
        for module in model.modules():
            if isinstance(module, TransformerBlock):
                self.handles.append(module.register_forward_pre_hook(self._enter_block))
                self.handles.append(module.register_forward_hook(self._leave_block))

    def _enter_block(self, module, inputs) -> None:
        if self.block_depth == 0:
            self.block_flops, self.block_bytes = 0, 2 * tensor_bytes(inputs)
            self.block_op_bytes, self.block_op_floor_s = 0, 0.0
        self.block_depth += 1

    def _leave_block(self, module, inputs, output) -> None:
        self.block_depth -= 1
        if self.block_depth == 0:
            part, moved = self.parts[self.current], self.block_bytes + tensor_bytes(output)
            part.fused_bytes += moved
            part.fused_floor_s += max(self.block_flops / self.rate, moved / self.bandwidth)
            modelled = fused_kernel_bytes(inputs[0])
            if modelled is None:
                part.kernels_bytes += self.block_op_bytes
                part.kernels_floor_s += self.block_op_floor_s
            else:
                part.kernels_bytes += modelled
                part.kernels_floor_s += max(self.block_flops / self.rate, modelled / self.bandwidth)

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and packet.__name__ not in OWN_KERNEL:
            # A composite operator (conv2d, linear, einsum, layer_norm ...) launches no kernel of
            # its own: count the operators it is made of (as torch's FlopCounterMode does).
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        name = packet.__name__
        if func.is_view or name in NO_KERNEL or name.startswith("_local_scalar"):
            return out
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        inputs = {k: v for k, v in kwargs.items() if k != "out"}
        moved = tensor_bytes((args, inputs)) + tensor_bytes(out)
        if moved == 0:
            return out
        part = self.parts[self.current]
        part.flops += flops
        part.bytes += moved
        part.operators += 1
        part.kinds[name] += moved
        floor = max(flops / self.rate, moved / self.bandwidth)
        part.op_floor_s += floor
        if self.block_depth == 0:
            part.fused_bytes += moved
            part.fused_floor_s += floor
            part.kernels_bytes += moved
            part.kernels_floor_s += floor
        else:
            self.block_flops += flops
            self.block_op_bytes += moved
            self.block_op_floor_s += floor
        return out


def count(preset: str, size: str, precision: str, arithmetic: str, tflops: float, bandwidth: float) -> TrafficCounter:
    height, width = parse_size(size)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    text = torch.randn(1, model.config.text_dim)
    a, b = torch.rand(1, 1, height, width), torch.rand(1, 1, height, width)
    counter = TrafficCounter(model, tflops, bandwidth)
    fast_ops.set_fast_inference(arithmetic == "fast")
    try:
        with inference_context("cpu", precision), counter:
            model(a, b, text)
    finally:
        fast_ops.set_fast_inference(True)
        counter.remove_hooks()
    return counter


def report(counter: TrafficCounter, heading: str, top: int) -> None:
    parts = counter.parts
    flops = sum(p.flops for p in parts.values())
    moved = sum(p.bytes for p in parts.values())
    fused = sum(p.fused_bytes for p in parts.values())
    op_floor = sum(p.op_floor_s for p in parts.values())
    fused_floor = sum(p.fused_floor_s for p in parts.values())
    kernels = sum(p.kernels_bytes for p in parts.values())
    kernels_floor = sum(p.kernels_floor_s for p in parts.values())
    print(
        f"\n**{heading}**: {flops / 1e12:.3f} TFLOP, {moved / 1e9:.1f} GB moved operator by operator "
        f"({sum(p.operators for p in parts.values()):,} operators), {fused / 1e9:.1f} GB with the Restormer "
        "blocks fused\n"
    )
    print("| floor per pair | time |\n|---|---:|")
    print(f"| compute: FLOPs at {counter.rate / 1e12:.0f} TFLOP/s | {1e3 * flops / counter.rate:.2f} ms |")
    print(
        f"| memory, operator by operator: bytes at {counter.bandwidth / 1e12:.2f} TB/s | "
        f"{1e3 * moved / counter.bandwidth:.2f} ms |"
    )
    print(f"| operator by operator, each at its roofline | {1e3 * op_floor:.2f} ms |")
    print(f"| Restormer blocks fused, the rest operator by operator | {1e3 * fused_floor:.2f} ms |")
    print(
        f"| upfusion's fused kernels in the blocks of up to {fused_kernels.MAX_CHANNELS} channels "
        f"({kernels / 1e9:.1f} GB, modelled), the rest operator by operator | {1e3 * kernels_floor:.2f} ms |"
    )

    print(
        "\n| module (top level) | GFLOP | GB moved | operators | floor, operator by operator (ms) | GB, blocks fused "
        "| GB, fused kernels |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, p in sorted(parts.items(), key=lambda kv: kv[1].op_floor_s, reverse=True):
        print(
            f"| `{name}` | {p.flops / 1e9:,.1f} | {p.bytes / 1e9:.2f} | {p.operators:,} | "
            f"{1e3 * p.op_floor_s:.2f} | {p.fused_bytes / 1e9:.2f} | {p.kernels_bytes / 1e9:.2f} |"
        )

    kinds: dict[str, int] = defaultdict(int)
    for p in parts.values():
        for kind, b in p.kinds.items():
            kinds[kind] += b
    print("\n| operator | GB moved | share |\n|---|---:|---:|")
    for kind, b in sorted(kinds.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        print(f"| `{kind}` | {b / 1e9:.2f} | {100 * b / moved:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    parser.add_argument("--arithmetic", nargs="+", default=list(ARITHMETIC), choices=ARITHMETIC)
    parser.add_argument("--tflops", type=float, default=798.0, help="dense matrix rate, TFLOP/s")
    parser.add_argument("--bandwidth", type=float, default=3.35, help="memory bandwidth, TB/s")
    parser.add_argument("--top", type=int, default=10, help="operators listed by traffic")
    args = parser.parse_args()
    print(f"<!-- counted on {machine_description()} -->")
    for arithmetic in args.arithmetic:
        counter = count(args.preset, args.size, args.precision, arithmetic, args.tflops, args.bandwidth)
        report(counter, f"{args.preset} {args.size} {args.precision}, {arithmetic} arithmetic", args.top)


if __name__ == "__main__":
    main()
