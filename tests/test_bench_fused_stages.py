"""How ``benchmarks/bench_fused_stages.py --network`` picks the tiles it tries in the whole network."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_fused_stages  # noqa: E402

from upfusion.model.fused_kernels import KernelConfig  # noqa: E402

DEFAULT, SMALL = KernelConfig((6, 14)), KernelConfig((8, 8), 8, 128, float32_scratch=True)


def timed_like_the_h200(with_block: bool) -> dict:
    """The H200's figures of 2026-11-28 at 96 channels (ms summed over two shapes): the GDFN
    stage alone faster with SMALL, the block (whose GDFN kernel also applies the attention) slower."""
    timed = {
        ("gdfn", "GDFN", 96): {"default": (16.2, 2, DEFAULT), "small": (13.3, 2, SMALL)},
        ("attention", "MDTA", 96): {"default": (9.7, 2, DEFAULT), "small": (14.9, 2, SMALL)},
    }
    if with_block:
        for kernel in ("gdfn", "attention"):
            timed[(kernel, "block", 96)] = {"default": (21.3, 2, DEFAULT), "small": (31.9, 2, SMALL)}
    return timed


def test_the_block_decides_where_it_was_timed() -> None:
    tables = bench_fused_stages.fastest_tables(timed_like_the_h200(with_block=True))
    assert tables["gdfn"][0] == (96, DEFAULT)
    assert tables["attention"][0] == (96, DEFAULT)


def test_each_kernels_own_stage_decides_without_a_block() -> None:
    tables = bench_fused_stages.fastest_tables(timed_like_the_h200(with_block=False))
    assert tables["gdfn"][0] == (96, SMALL)
    assert tables["attention"][0] == (96, DEFAULT)
    # the wider maps keep the default tables' rows
    assert [widest for widest, _ in tables["gdfn"]] == [96, 128, 256, 512]


def test_a_config_timed_at_fewer_shapes_is_not_chosen() -> None:
    timed = timed_like_the_h200(with_block=True)
    timed[("gdfn", "block", 96)]["partial"] = (1.0, 1, KernelConfig((4, 16)))
    assert bench_fused_stages.fastest_tables(timed)["gdfn"][0] == (96, DEFAULT)
