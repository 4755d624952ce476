"""One Restormer block stage at a time: the fused Triton kernels against the inference kernels.

    python benchmarks/bench_fused_stages.py [--batch 8] [--precision bf16] [--runs 20]
        [--tiles 14x14:8 6x6:8:168 6x14:8:f32 ...] [--programs-per-sm 1 4 64] [--channels 192 384]
        [--compiled] [--plain] [--stages block] [--network]

For the paper preset's block shapes at 640x480 (48 channels, the level-1 encoders; 96 channels
at 320x240, level 2; 96 channels at 640x480, the level-1 decoder and refinement; 192 channels at
160x120, level 3; 384 at 80x60, the latent level),
times ``x + MDTA(LN(x))``, ``x + GDFN(LN(x))`` and the whole block (where the fused GDFN
kernel also applies the attention): the inference kernels (``fast_ops``, eager;
``--compiled``: under ``torch.compile`` too, which takes minutes) and the fused kernels
(``fused_kernels``) with each kernel's default tiles (at 48 and 96 channels the fastest this
script timed on an H100; at every width, also those wider than ``fused_kernels.GPU_WIDEST``,
which run the inference kernels by default), then with each output tile and warp count of
``--tiles`` (``ROWSxCOLS:WARPS[:REGISTERS][:f32][:sSLICE][:tap]``: a register limit per
thread, a float32 scratch tile, the GDFN's hidden channels per step, tap-major depth-wise taps;
see ``fused_kernels.KernelConfig``) for both kernels: the defaults include tiles
that spill, to see what spilling costs; and with the default tiles and each count of ``--programs-per-sm``
(the persistent grid's programs a launch starts per multiprocessor, 2 by default: with many,
each program takes few tiles and the programs' scratch outgrows the L2 cache, as when each tile
had a program of its own). Prints milliseconds (median of ``--runs`` after warm-up) and
the bandwidth that the stage's unavoidable traffic (its input and output maps, and v for MDTA
and the block) would need at that speed. ``--plain``: the whole block in the plain arithmetic
too (cuDNN and cuBLAS on a GPU); ``--stages``: only these stages. ``--network``: then the paper
preset at ``--size`` and ``--batch``, fused, with the default tile tables and with the tiles
timed fastest here at each width (the whole block's, or each kernel's own stage where no
block was timed). On a CUDA GPU; ``--device cpu`` with ``TRITON_INTERPRET=1`` only
checks that the script runs (use ``--size 16x24``).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from timing import median_ms

from upfusion.benchmark import machine_description, parse_size
from upfusion.inference import inference_context
from upfusion.model import fast_ops, fused_kernels
from upfusion.model.blocks import TransformerBlock

# (channels, heads, size divisor): the paper preset's block shapes
SHAPES = [(48, 1, 1), (96, 2, 2), (96, 1, 1), (192, 4, 4), (384, 8, 8)]
# the kernels each stage runs
STAGE_KERNELS = {"MDTA": ("attention",), "GDFN": ("gdfn",), "block": ("attention", "gdfn")}


def network_with_tables(args: argparse.Namespace, tables: dict[str, tuple] | None) -> str:
    """The paper preset's median latency at ``--size`` and ``--batch`` with the fused kernels, with
    the default tile tables or ``tables`` ({"gdfn": ..., "attention": ...}) in their place."""
    from upfusion.benchmark import BenchCase, run_case

    saved = fused_kernels._GDFN_TILES, fused_kernels._ATTENTION_TILES
    if tables:
        fused_kernels._GDFN_TILES, fused_kernels._ATTENTION_TILES = tables["gdfn"], tables["attention"]
    height, width = parse_size(args.size)
    case = BenchCase(
        preset="paper", height=height, width=width, batch=args.batch, device=args.device,
        precision=args.precision, arithmetic="fused",
    )  # fmt: skip
    try:
        result = run_case(case, runs=args.runs // 2, warmup=2)
    finally:
        fused_kernels._GDFN_TILES, fused_kernels._ATTENTION_TILES = saved
    return f"{1000 * result.latency_s:.1f} ms ({1000 * result.latency_s / args.batch:.1f} ms a pair)"


def fastest_tables(timed: dict) -> dict:
    """The default tile tables with, at each timed width, the config whose block took the least
    time summed over that width's shapes (one config for both kernels), or, where no block was
    timed, the kernel's own stage's: MDTA's for the attention kernel, GDFN's for the GDFN kernel.
    The block comes first because the network runs blocks, whose GDFN kernel also applies the
    attention: on an H200 (2026-11-28) the GDFN stage alone was 17% faster with 8x8:8:128:f32
    tiles at 96 channels than with the default, and the network with them in its GDFN kernels 14%
    slower."""
    tables = {}
    for kernel, own_stage, table in (
        ("gdfn", "GDFN", fused_kernels._GDFN_TILES),
        ("attention", "MDTA", fused_kernels._ATTENTION_TILES),
    ):
        chosen = {}
        for c in sorted({c for kind, _, c in timed if kind == kernel}):
            stage = "block" if (kernel, "block", c) in timed else own_stage
            variants = timed[(kernel, stage, c)]
            shapes = max(entry[1] for entry in variants.values())  # among those timed at all the shapes
            chosen[c] = min((e for e in variants.values() if e[1] == shapes), key=lambda e: e[0])[2]
        rows = [(c, config) for c, config in sorted(chosen.items())]
        widest_timed = max(chosen, default=0)
        rows += [(widest, config) for widest, config in table if widest > widest_timed]
        tables[kernel] = tuple(rows)
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="640x480", help="the full-resolution size, WxH")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiles", nargs="*", default=["14x14:8", "6x14:8", "6x6:8", "6x14:4"])
    parser.add_argument("--programs-per-sm", nargs="*", type=int, default=[1, 4, 64])
    parser.add_argument("--channels", nargs="*", type=int, help="only the block shapes of these widths")
    parser.add_argument("--compiled", action="store_true", help="also the inference kernels under torch.compile")
    parser.add_argument("--plain", action="store_true", help="also the whole block in the plain arithmetic")
    parser.add_argument("--stages", nargs="+", default=["MDTA", "GDFN", "block"], choices=["MDTA", "GDFN", "block"])
    parser.add_argument(
        "--network", action="store_true",
        help="then the paper preset at --size and --batch, fused, with the default tiles and with the fastest timed here",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    height, width = parse_size(args.size)
    print(
        f"<!-- {machine_description()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + " -->"
    )
    print(f"\nbatch {args.batch}, {args.precision}; GB/s: the stage's input and output maps (and v) per time\n")
    print("| stage | channels | size | variant | ms | GB/s |\n|---|---:|---|---|---:|---:|")

    # the fused variants at every width (by default wider maps run the inference kernels on a GPU)
    gpu_widest, fused_kernels.GPU_WIDEST = fused_kernels.GPU_WIDEST, fused_kernels.MAX_CHANNELS
    # (kernel, stage, channels) -> variant -> (ms summed over the width's shapes, shapes, config)
    timed: dict[tuple[str, str, int], dict[str, tuple[float, int, fused_kernels.KernelConfig]]] = {}
    for c, heads, divisor in SHAPES:
        if args.channels and c not in args.channels:
            continue
        torch.manual_seed(0)
        block = TransformerBlock(c, heads, 2.66).eval().to(device)
        h, w = height // divisor, width // divisor
        x = torch.randn(args.batch, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
        itemsize = 4 if args.precision == "fp32" else 2

        def mdta(block=block, x=x):
            return fast_ops.mdta_residual(block, x)

        def gdfn(block=block, x=x):
            return fast_ops.gdfn_residual(block.norm2, block.ffn, x)

        def whole(block=block, x=x):
            return fast_ops.transformer_block(block, x)

        def plain_block(block=block, x=x):
            with fast_ops.plain_arithmetic():
                return block(x)

        for stage, call, maps in (("MDTA", mdta, 3), ("GDFN", gdfn, 2), ("block", whole, 3)):
            if stage not in args.stages:
                continue
            traffic = maps * x.numel() * itemsize
            default_programs = fused_kernels.PROGRAMS_PER_SM
            variants = [("inference kernels", call, False, None, default_programs)]
            if args.plain and stage == "block":
                variants.append(("plain arithmetic (cuDNN, cuBLAS)", plain_block, False, None, default_programs))
            if args.compiled:
                compiled = torch.compile(call, dynamic=False)
                variants.append(("inference kernels, compiled", compiled, False, None, default_programs))
            variants.append(("fused, default tiles", call, True, None, default_programs))
            variants += [
                (f"fused, {text}", call, True, fused_kernels.KernelConfig.parse(text), default_programs)
                for text in args.tiles
            ]
            variants += [(f"fused, default tiles, {n} programs/SM", call, True, None, n) for n in args.programs_per_sm]
            for name, fn, fused, config, programs in variants:
                fused_kernels.set_fused_kernels(fused, config)
                fused_kernels.PROGRAMS_PER_SM = programs
                try:
                    with warnings.catch_warnings(), inference_context(device, args.precision):
                        warnings.simplefilter("ignore")  # a tile that does not fit: said in the table
                        ms = median_ms(fn, args.runs, args.warmup)
                    if c in fused_kernels.left_out():
                        result = "did not fit the GPU (registers or shared memory) |"
                    else:
                        result = f"{ms:.3f} | {traffic / ms / 1e6:,.0f}"
                        if fused and programs == default_programs and c <= gpu_widest:
                            for kind in STAGE_KERNELS[stage]:
                                chosen = config or fused_kernels.default_config(c, kind)
                                entries = timed.setdefault((kind, stage, c), {})
                                earlier, shapes, _ = entries.get(name, (0.0, 0, chosen))
                                entries[name] = (earlier + ms, shapes + 1, chosen)
                except Exception as error:  # a configuration Triton cannot build
                    result = f"error: {type(error).__name__}: {str(error).splitlines()[0][:80]} |"
                finally:
                    fused_kernels.set_fused_kernels(None)
                    fused_kernels.PROGRAMS_PER_SM = default_programs
                print(f"| {stage} | {c} | {w}x{h} | {name} | {result} |", flush=True)

    fused_kernels.GPU_WIDEST = gpu_widest
    if args.network:
        tables = fastest_tables(timed)
        print(f"\npaper preset, {args.size}, batch {args.batch}, {args.precision}, fused:\n")
        print(f"- default tiles: {network_with_tables(args, None)}", flush=True)
        for kernel, rows in tables.items():
            print(f"- fastest timed {kernel} tiles: " + ", ".join(f"{c} ch {config.notation()}" for c, config in rows))
        print(f"- with them: {network_with_tables(args, tables)}", flush=True)


if __name__ == "__main__":
    main()
