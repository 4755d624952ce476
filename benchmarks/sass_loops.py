"""A compiled kernel's loops, read from its SASS without a GPU, and the warp instructions it
executes per output tile, estimated from them.

Nsight Compute (2026-11-28, an H100) found both fused kernels waiting on loads with only 8 warps
a multiprocessor, and executing many instructions: at full issue the GDFN kernel's alone would
take 3.7 ms at 96 channels. Without a GPU the instruction count is the proxy that can be
measured: ``nvdisasm`` (bundled with Triton) lists the kernel's SASS, the backward branches mark
its loops, and each instruction runs as often as the loops around it. The trip counts are the
kernels' own (``kernel_trips``): once per tile for the persistent grid's tile loop; the GDFN's
hidden-slice loop once per slice; the attention kernel's head loop once per head; a depth-wise
tap loop that the compiler kept as a loop (not unrolled) 9 times. Compiled by Triton 3.6 for an
H100, this estimate was 1.3% and 1.8% above what Nsight Compute counted for the two kernels at 96
channels (``tests/test_sass_loops.py``).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+`\((\.L_x_\d+)\)")


@dataclasses.dataclass(frozen=True)
class Loop:
    """Instructions ``start`` to ``end`` (indices, inclusive), closed by a backward branch at
    ``end``; ``depth``: how many loops enclose it (0: outermost)."""

    start: int
    end: int
    depth: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and self != other


def instructions(listing: str) -> tuple[list[str], dict[str, int]]:
    """The instructions of one kernel's SASS listing (``nvdisasm -c``; predicate and operands,
    without the address), and the instruction index of each label."""
    found, labels, pending = [], {}, []
    for line in listing.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        instruction = _INSTRUCTION.search(line)
        if instruction:
            labels.update(dict.fromkeys(pending, len(found)))
            pending = []
            found.append(instruction.group(2))
    return found, labels


def loops(found: list[str], labels: dict[str, int]) -> list[Loop]:
    """Every loop (a branch back to a label at or before it), outermost first."""
    spans = []
    for index, instruction in enumerate(found):
        branch = _BRANCH.search(instruction)
        if branch and labels[branch.group(1)] <= index:
            spans.append((labels[branch.group(1)], index))
    spans.sort(key=lambda span: (span[0], -span[1]))
    return [
        Loop(start, end, sum(1 for s, e in spans if s <= start and end <= e and (s, e) != (start, end)))
        for start, end in spans
    ]


def opcode(instruction: str) -> str:
    """``@!P5 LDG.E.128 R1, ...`` -> ``LDG.E.128``."""
    words = instruction.split()
    return words[1] if words and words[0].startswith("@") else (words[0] if words else "?")


def executed_per_tile(found: list[str], nest: list[Loop], trips: Callable[[Loop, list[Loop]], int]) -> Counter:
    """Instructions executed per warp and output tile, by opcode: each instruction inside the
    outermost loop (the tile loop, once per tile) times the trip counts of the loops around it
    (``trips(loop, nest)``; instructions outside every loop run once per program and are left out)."""
    tile_loop = nest[0]
    loop_trips = {loop: trips(loop, nest) for loop in nest[1:]}
    executed = Counter()
    for index in range(tile_loop.start, tile_loop.end + 1):
        times = 1
        for loop, count in loop_trips.items():
            if loop.start <= index <= loop.end:
                times *= count
        executed[opcode(found[index])] += times
    return executed


def kernel_trips(kernel: str, slices: int = 1, heads: int = 1) -> Callable[[Loop, list[Loop]], int]:
    """The trip counts of the loops inside the tile loop of a fused kernel ("gdfn": ``slices``
    hidden slices a tile; "attention": ``heads`` heads). The largest loop directly inside the
    tile loop is the GDFN's slice loop or the attention's head loop; a loop inside one of those is
    a depth-wise tap loop (9); any other loop directly inside the tile loop (the attention
    product's 32-channel steps, which the compiler pipelines) counts once."""

    def trips(loop: Loop, nest: list[Loop]) -> int:
        main = max((other for other in nest if other.depth == 1), key=lambda other: other.size)
        if loop == main:
            return slices if kernel == "gdfn" else heads
        return 9 if main.contains(loop) else 1

    return trips


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    """``nvdisasm -c`` of a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([nvdisasm, "-c", file.name], capture_output=True, text=True, check=True).stdout
