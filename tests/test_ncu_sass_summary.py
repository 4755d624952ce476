"""benchmarks/ncu_sass_summary.py on a small table in Nsight Compute's per-instruction CSV format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from ncu_sass_summary import kernels, opcode, summarize  # noqa: E402

HEADER = '"Address","Source","Warp Stall Sampling (All Samples)","# Samples","Instructions Executed","x","stall_long_sb","stall_wait","stall_long_sb (Not Issued)"'


def write_table(path: Path) -> None:
    """Two launches of one kernel (the second must be ignored) and one of another: a loop of two
    instructions that ran 90 times each, and once-run code of three."""
    lines = ['"Kernel Name","k1",', HEADER]
    lines += [
        '"0x0","      LDG.E.128 R4, desc[UR4][R2.64]","60","60","90","-","50","10","7"',
        '"0x10","@!P5  FFMA R1, R2, R3, R1","20","20","90","-","0","20","0"',
        '"0x20","      S2R R0, SR_TID.X","10","10","1","-","10","0","0"',
        '"0x30","      STG.E [R2.64], R1","10","10","1","-","0","10","0"',
        '"0x40","      EXIT","0","0","1","-","0","0","0"',
    ]
    lines += ['"Kernel Name","k1",', HEADER, '"0x0","      NOP","5","5","1000","-","5","0","0"']
    lines += ['"Kernel Name","k2",', HEADER, '"0x0","      EXIT","1","1","4","-","1","0","0"']
    path.write_text("\n".join(lines) + "\n")


def test_opcodes_drop_their_predicate():
    assert opcode("@!P5  LDG.E.128 R12, desc[UR16][R88.64]") == "LDG.E.128"
    assert opcode("FFMA R1, R2, R3, R1") == "FFMA"


def test_the_summary_groups_instructions_by_how_often_they_ran(tmp_path):
    table = tmp_path / "sass.csv"
    write_table(table)
    found = kernels(table)
    assert list(found) == ["k1", "k2"] and len(found["k1"]) == 5  # the first launch of each
    text = summarize("k1", found["k1"], top=5)
    assert "183 warp instructions executed, 100 stall samples" in text  # 2 x 90 + 3 x 1
    assert "long_sb 60%, wait 40%" in text  # (the Not Issued column is not a reason)
    assert "| 90 | 2 | 98.4% | 80.0% |" in text  # the loop: 180 of 183 executed, 80 of 100 samples
    assert "| 1 | 3 | 1.6% | 20.0% |" in text
    assert "| `LDG.E.128` | 1 | 75.0% |" in text and "| `FFMA` | 1 | 25.0% |" in text


def test_a_file_without_a_table_is_refused(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("nothing here\n")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ncu_sass_summary.py"), str(empty)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"{empty}: no per-instruction table of Nsight Compute in it"
