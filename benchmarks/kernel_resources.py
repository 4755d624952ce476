"""The fused Triton kernels compiled for a GPU without one: registers, spills, shared memory.

    python benchmarks/kernel_resources.py [--preset paper default] [--precision bf16]
        [--arch 90] [--tiles default 6x14:8 ...] [--channels 48 96] [--sass]

Compiles each kernel of ``upfusion.model.fused_kernels`` that a preset runs (every Transformer
block: MDTA's statistics and the GDFN that applies the attention; every TCPM: the cross-attention's
statistics and its GDFN) at that block's width, with Triton's compiler for a CUDA architecture
(90: H100; the default), and reads what ``ptxas`` (bundled with Triton) reports: registers per
thread, bytes spilled to local memory, and the shared memory Triton allocates. No GPU is needed:
this is how the kernels' tiles and warp counts were chosen while no GPU was lent. ``--sass``
also estimates from the kernel's SASS the warp instructions it executes per output pixel (and
of those, the local-memory loads and stores of spilled registers; see ``sass_loops.py``).

Spilled registers go to local memory, through the cache, on every use: a memory-bound kernel
that spills loses the point of fusing. A program needs at most 255 registers per thread and
227 KiB of shared memory on an H100, or the launch fails (``fused_kernels`` then falls back).
Pointer arguments and the widths are specialized as Triton specializes them at run time (16-byte
aligned pointers, multiples of 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import tempfile

import torch
from sass_loops import disassemble, executed_per_tile, instructions, kernel_trips, loops

from upfusion.model import fused_kernels
from upfusion.model.blocks import TransformerBlock, ffn_hidden_width
from upfusion.model.network import UPFusion
from upfusion.model.tcpm import TCPM
from upfusion.presets import PRESETS

# variant: (its kernel in fused_kernels.default_config terms, SAME_INPUT or WITH_ATTENTION)
VARIANTS = {
    "mdta": ("attention", True),  # SAME_INPUT
    "gdfn+attention": ("gdfn", True),  # WITH_ATTENTION
    "cross-attention": ("attention", False),
    "gdfn": ("gdfn", False),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
ALIGNED_INTS = {"height", "width", "channels", "hidden_padded", "head_width"}  # multiples of 16 in the presets
EXPANSION = PRESETS["paper"].ffn_expansion_factor  # (2.66, as in every preset)
TILING = ("tile_columns", "tile_rows", "tiles")  # the kernels' last integer arguments (fused_kernels._Launch)


@dataclasses.dataclass(frozen=True)
class Resources:
    registers: int  # per thread
    spill_stores: int  # bytes per thread
    spill_loads: int
    shared: int  # bytes per program
    # (--sass) warp instructions executed per output pixel of a tile inside the map, estimated
    # from the SASS, and of them local-memory loads and stores (spilled registers)
    per_pixel: float | None = None
    local_per_pixel: float | None = None


def module_kernels(module: torch.nn.Module) -> list[tuple[str, int, int]]:
    """(variant, channels, heads) of the fused kernels a Transformer block or a TCPM launches
    (each once a call); none for other modules."""
    if isinstance(module, TransformerBlock):
        c, heads = module.norm1.body.weight.shape[0], module.attn.heads
        return [("mdta", c, heads), ("gdfn+attention", c, heads)]
    if isinstance(module, TCPM):
        c, heads = module.norm1.body.weight.shape[0], module.select_attn.heads
        return [("cross-attention", c, heads), ("gdfn", c, heads)]
    return []


def preset_variants(preset: str) -> list[tuple[str, int, int]]:
    """(variant, channels, heads) of every fused kernel the preset's network runs, widest last."""
    config = PRESETS[preset].replace(semantic_backbone=None)  # (the backbone runs no fused kernel)
    with torch.device("meta"):
        model = UPFusion(config)
    found = {variant for module in model.modules() for variant in module_kernels(module)}
    order = list(VARIANTS)
    return sorted(found, key=lambda v: (v[1], v[2], order.index(v[0])))


def compile_variant(
    variant: str,
    channels: int,
    heads: int,
    config: fused_kernels.KernelConfig,
    compute: torch.dtype = torch.bfloat16,
    arch: int = 90,
    sass: bool = False,
) -> Resources:
    """Compiles one kernel variant for ``sm_{arch}`` with the arguments ``fused_kernels`` passes
    it (maps and weights in ``compute``, as in the network under autocast; fp32 otherwise).
    ``sass``: with the instruction estimate (the GDFN's hidden width at every preset's expansion)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    from upfusion.model import triton_kernels

    kind, flag = VARIANTS[variant]
    constants = fused_kernels.kernel_constants(channels, config, compute)
    constants["EMULATED"] = False
    options = {"num_warps": constants.pop("num_warps")}
    if "maxnreg" in constants:  # (written into the PTX, which ptxas honours)
        options["maxnreg"] = constants.pop("maxnreg")
    data = TRITON_NAMES[compute]
    float32 = ("ln", "dw", "gram", "q_sq", "k_sq")  # LayerNorm weights, taps, sums
    step = config.hidden_slice or fused_kernels.hidden_slice(channels)
    if kind == "gdfn":
        kernel = triton_kernels.gdfn_residual_kernel
        constants.update(
            SLICE=step,
            WITH_ATTENTION=flag,
            OUT_DTYPE=constants["DOT_DTYPE"],
        )
        ints = {"height", "width", "channels", "hidden_padded", *TILING}
    else:
        kernel = triton_kernels.attention_statistics_kernel
        constants.update(fused_kernels.attention_constants(channels // heads), SAME_INPUT=flag)
        ints = {"height", "width", "channels", "heads", "head_width", *TILING}
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ints:
            signature[name] = "i32"
        else:
            wide = name.startswith(float32) or (name == "scratch_ptr" and config.float32_scratch)
            signature[name] = "*fp32" if wide else f"*{data}"
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if signature[name].startswith("*") or name in ALIGNED_INTS
    }
    compiled = triton.compile(
        ASTSource(kernel, signature, constants, aligned), target=GPUTarget("cuda", arch, 32),
        options=options,
    )  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        command = [get_ptxas(arch).path, f"-arch={sm_arch_from_capability(arch)}", "-v", ptx.name, "-o", "/dev/null"]
        log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    found = Resources(int(registers.group(1)), int(spills.group(1)), int(spills.group(2)), compiled.metadata.shared)
    if not sass:
        return found
    from triton import knobs

    listing, labels = instructions(disassemble(compiled.asm["cubin"], knobs.nvidia.nvdisasm.path))
    slices = -(-ffn_hidden_width(channels, EXPANSION) // step)
    executed = executed_per_tile(listing, loops(listing, labels), kernel_trips(kind, slices, heads))
    per_warp = options["num_warps"] / (config.tile[0] * config.tile[1])  # warps per output pixel
    local = sum(count for name, count in executed.items() if name.startswith(("LDL", "STL")))
    return dataclasses.replace(found, per_pixel=executed.total() * per_warp, local_per_pixel=local * per_warp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=["paper", "default"], choices=sorted(PRESETS))
    parser.add_argument("--precision", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100)")
    parser.add_argument(
        "--tiles", nargs="+", default=["default"], help="configs to compare, in KernelConfig.parse's notation"
    )
    parser.add_argument("--channels", nargs="+", type=int, help="only the kernels of these widths")
    parser.add_argument("--sass", action="store_true", help="estimate instructions per output pixel from the SASS")
    args = parser.parse_args()
    try:
        import triton
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401  (the CUDA backend)
    except ImportError as error:
        parser.exit(1, f"kernel_resources.py: needs Triton with its CUDA backend ({error})\n")

    print(f"<!-- Triton {triton.__version__}, sm_{args.arch}, {args.precision} -->\n")
    sass = " instructions a pixel | of them local |" if args.sass else ""
    print(f"| preset | kernel | channels | heads | tile | warps | registers | spilled (bytes) | shared (KiB) |{sass}")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if args.sass else ""))
    for preset in args.preset:
        for variant, channels, heads in preset_variants(preset):
            if args.channels and channels not in args.channels:
                continue
            for text in args.tiles:
                config = fused_kernels.KernelConfig.parse(
                    text, fused_kernels.default_config(channels, VARIANTS[variant][0])
                )
                found = compile_variant(variant, channels, heads, config, DTYPES[args.precision], args.arch, args.sass)
                tile = "x".join(map(str, config.tile)) + " (default)" if text == "default" else text
                counts = f" {found.per_pixel:,.0f} | {found.local_per_pixel:,.0f} |" if args.sass else ""
                print(
                    f"| {preset} | {variant} | {channels} | {heads} | {tile} | {config.num_warps} | "
                    f"{found.registers} | {found.spill_stores} | {found.shared / 1024:.0f} |{counts}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
