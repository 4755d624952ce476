"""``benchmarks/sass_loops.py``: loops read from a SASS listing, and the instructions they execute."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sass_loops  # noqa: E402

# nvdisasm -c's layout: a tile loop (.L_x_0) around a slice loop (.L_x_1) that holds a tap loop
# (.L_x_2), and a forward branch that is no loop (.L_x_3)
LISTING = """\
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/               @P0 BRA `(.L_x_3) ;
        /*0030*/                   FMUL R5, R4, R4 ;
.L_x_3:
.L_x_1:
        /*0040*/                   PRMT R6, RZ, 0x5410, R4 ;
.L_x_2:
        /*0050*/                   FFMA R7, R6, R5, R7 ;
        /*0060*/                   LDL R8, [R1+0x10] ;
        /*0070*/              @!P1 BRA `(.L_x_2) ;
        /*0080*/                   STL [R1+0x10], R7 ;
        /*0090*/               @P2 BRA `(.L_x_1) ;
        /*00a0*/                   STG.E desc[UR4][R2.64], R7 ;
        /*00b0*/               @P3 BRA `(.L_x_0) ;
        /*00c0*/                   EXIT ;
.L_x_4:
        /*00d0*/                   BRA `(.L_x_4);
"""


def test_loops_are_the_backward_branches_with_their_depth() -> None:
    found, labels = sass_loops.instructions(LISTING)
    assert len(found) == 14
    assert found[4] == "PRMT R6, RZ, 0x5410, R4"
    assert labels == {".L_x_0": 1, ".L_x_3": 4, ".L_x_1": 4, ".L_x_2": 5, ".L_x_4": 13}
    nest = sass_loops.loops(found, labels)
    # the self-branch after EXIT is a loop of one instruction, outside the tile loop
    assert [(loop.start, loop.end, loop.depth) for loop in nest] == [(1, 11, 0), (4, 9, 1), (5, 7, 2), (13, 13, 0)]
    assert nest[0].contains(nest[2]) and not nest[2].contains(nest[0])


def test_each_instruction_counts_as_often_as_its_loops_run() -> None:
    found, labels = sass_loops.instructions(LISTING)
    nest = sass_loops.loops(found, labels)[:3]
    executed = sass_loops.executed_per_tile(found, nest, sass_loops.kernel_trips("gdfn", slices=4))
    # slice loop 4 times a tile, the tap loop inside it 9 times a slice
    assert executed["FFMA"] == executed["LDL"] == 36
    assert executed["PRMT"] == executed["STL"] == 4
    assert executed["LDG.E.128"] == executed["FMUL"] == executed["STG.E"] == 1
    assert "S2R" not in executed and "EXIT" not in executed  # once per program, not per tile
    assert executed.total() == 3 + (1 + 3 * 9 + 2) * 4 + 2
    heads = sass_loops.executed_per_tile(found, nest, sass_loops.kernel_trips("attention", heads=2))
    assert heads["FFMA"] == 18 and heads["PRMT"] == 2


def test_opcode_drops_the_predicate() -> None:
    assert sass_loops.opcode("@!P5 LDG.E.128 R1, desc[UR4][R2.64]") == "LDG.E.128"
    assert sass_loops.opcode("FFMA R7, R6, R5, R7") == "FFMA"


def test_estimate_of_a_compiled_kernel_is_near_what_nsight_compute_counted() -> None:
    """The GDFN kernel (with the attention applied) and MDTA's statistics at 96 channels, one
    head, default tiles, compiled for an H100: Nsight Compute counted 3.911 G and 1.815 G warp
    instructions on a 640x480 batch of 8 (2026-11-28, Triton 3.6; 1,591 and 739 a pixel). The
    estimate must find the loops and their trip counts; the compiler's version moves it a little
    (Triton 3.6: 1,610 and 747)."""
    pytest.importorskip("triton")
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        from triton import knobs

        tools = [Path(nvidia.get_ptxas(90).path), Path(knobs.nvidia.nvdisasm.path)]
    except Exception:  # (Triton raises when it finds no ptxas or nvdisasm)
        tools = []
    if not tools or not all(tool.exists() for tool in tools):
        pytest.skip("Triton's CUDA backend has no ptxas or nvdisasm here")
    import kernel_resources

    from upfusion.model import fused_kernels

    for variant, kind, measured in (("gdfn+attention", "gdfn", 3.911e9), ("mdta", "attention", 1.815e9)):
        config = fused_kernels.default_config(96, kind)
        found = kernel_resources.compile_variant(variant, 96, 1, config, sass=True)
        per_pixel = measured / (640 * 480 * 8)
        assert found.per_pixel == pytest.approx(per_pixel, rel=0.1), (variant, found)


def test_network_probe_finds_every_fused_kernel_launch_of_the_paper_preset() -> None:
    """``fused_instruction_budget.kernel_launches``: both kernels of each Transformer block and
    each TCPM, with the share of the pixels their maps have (levels of 1, 1/4, 1/16, 1/64)."""
    import fused_instruction_budget

    from upfusion.presets import PRESETS

    launches = fused_instruction_budget.kernel_launches("paper")
    config = PRESETS["paper"]
    l1, l2, l3, latent = config.num_blocks
    blocks = {  # two encoder branches and a decoder a level; the latent's two branches; the refinement
        (48, 1, 1.0): 2 * l1,
        (96, 1, 1.0): l1 + config.num_refinement_blocks,
        (96, 2, 1 / 4): 3 * l2,
        (192, 4, 1 / 16): 3 * l3,
        (384, 8, 1 / 64): 2 * latent,
    }
    expected = {("mdta", *shape): n for shape, n in blocks.items()}
    expected |= {("gdfn+attention", *shape): n for shape, n in blocks.items()}
    for c, heads, share in ((48, 1, 1.0), (96, 2, 1 / 4), (192, 4, 1 / 16), (384, 8, 1 / 64)):  # a TCPM a level
        expected |= {("cross-attention", c, heads, share): 1, ("gdfn", c, heads, share): 1}
    assert dict(launches) == expected
