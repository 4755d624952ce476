"""Where a kernel's instructions and stalls go, from Nsight Compute's per-instruction SASS table.

    ncu --import report.ncu-rep --page source --print-source sass --csv > sass.csv
    python benchmarks/ncu_sass_summary.py sass.csv [--top 12]

For each profiled kernel (the first launch of each name) prints: the warp-stall reasons of its
sampled warps; its instructions grouped by how often each ran (loop bodies run a multiple of
the once-per-tile code), each group's share of the executed instructions and of the stall
samples; and, for the hottest group, the opcodes with their static count and stall share. The
report needs the SourceCounters section (``gpu_check.sh``'s fused-ncu section collects it).
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter, defaultdict
from pathlib import Path

from sass_loops import opcode  # (the SASS read from a cubin without a GPU: the same opcodes)

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


def kernels(path: Path) -> dict[str, list[dict[str, str]]]:
    """The first table of each kernel name in the CSV: its rows as dicts."""
    found: dict[str, list[dict[str, str]]] = {}
    name, header, rows = None, None, []
    for row in csv.reader(path.open()):
        if row and row[0] == "Kernel Name":
            if name is not None and name not in found:
                found[name] = rows
            name, header, rows = row[1], None, []
        elif header is None and name is not None:
            header = row
        elif header is not None and len(row) > 5:
            rows.append(dict(zip(header, row, strict=False)))
    if name is not None and name not in found:
        found[name] = rows
    return found


def summarize(name: str, rows: list[dict[str, str]], top: int) -> str:
    samples = sum(int(r[SAMPLES]) for r in rows) or 1
    executed = sum(int(r[EXECUTED]) for r in rows) or 1
    lines = [f"### `{name}`: {executed:,} warp instructions executed, {samples:,} stall samples\n"]

    stalls = Counter()
    for r in rows:
        for column, value in r.items():
            if column.startswith("stall_") and "Not Issued" not in column:
                stalls[column[len("stall_") :]] += int(value)
    lines.append(
        "stall reasons: "
        + ", ".join(f"{reason} {count / samples:.0%}" for reason, count in stalls.most_common(8))
        + "\n"
    )

    groups: dict[int, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[int(r[EXECUTED])].append(r)
    lines += ["| times each ran | instructions | share executed | share of stalls |", "|---:|---:|---:|---:|"]
    ranked = sorted(groups.items(), key=lambda item: -item[0] * len(item[1]))
    for count, group in ranked[:6]:
        share = count * len(group) / executed
        stalled = sum(int(r[SAMPLES]) for r in group) / samples
        lines.append(f"| {count:,} | {len(group)} | {share:.1%} | {stalled:.1%} |")

    hottest = ranked[0][1]
    hot_samples = sum(int(r[SAMPLES]) for r in hottest) or 1
    by_opcode, stalled_by_opcode = Counter(), Counter()
    for r in hottest:
        by_opcode[opcode(r["Source"].strip())] += 1
        stalled_by_opcode[opcode(r["Source"].strip())] += int(r[SAMPLES])
    lines += [
        "",
        "the most-run group, by opcode:",
        "",
        "| opcode | instructions | share of its stalls |",
        "|---|---:|---:|",
    ]
    for op, n in by_opcode.most_common(top):
        lines.append(f"| `{op}` | {n} | {stalled_by_opcode[op] / hot_samples:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=12, help="opcodes listed")
    args = parser.parse_args()
    found = kernels(args.csv)
    if not found:
        parser.exit(1, f"{args.csv}: no per-instruction table of Nsight Compute in it\n")
    for name, rows in found.items():
        print(summarize(name, rows, args.top))


if __name__ == "__main__":
    main()
