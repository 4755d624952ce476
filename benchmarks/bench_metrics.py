"""Time of each fusion metric on one real 640x480 triple, as a markdown table.

A = MSRS visible image turned grey (BT.601 luma, rounded), B = the infrared image, F = their
rounded average. Each metric is called on its own (median of --repeats runs, nothing shared),
then ``upfusion.metrics.compute`` is timed on all of them together (shared intermediate work),
on one thread and with Q_P on a second thread (what ``upfusion eval`` does for a single image).

    python benchmarks/bench_metrics.py [--data ../shared/data/msrs/test] [--stem 00004N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from shared_data import DATA

from upfusion.evaluate import read_gray
from upfusion.metrics import METRICS, compute, resolve

DEFAULT_DATA = DATA / "msrs" / "test"


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (all threads of this process) milliseconds of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with vi/ and ir/ (MSRS test)")
    parser.add_argument("--stem", default=None, help="image stem (default: the first one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    stem = args.stem or sorted(p.stem for p in (args.data / "ir").glob("*.png"))[0]
    a = read_gray(args.data / "vi" / f"{stem}.png").astype(np.float64)
    b = read_gray(args.data / "ir" / f"{stem}.png").astype(np.float64)
    f = np.floor((a + b) / 2 + 0.5)  # rounded average; halves go up (values are >= 0)

    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    print(f"triple: MSRS {stem}, {a.shape[1]}x{a.shape[0]}; median of {args.repeats} runs; {os.cpu_count()} cores,")
    print(f"load average {load} at the start (wall time grows with other work on the machine, CPU time less so)\n")
    print("| metric | ms | CPU ms |")
    print("|---|---:|---:|")
    total = total_cpu = 0.0
    available = []
    for name, metric in METRICS.items():
        try:
            resolve(metric)
        except (ImportError, AttributeError):
            print(f"| {name} | n/a (not in this build) | |")
            continue
        ms, cpu = median_ms(lambda metric=metric: metric(a, b, f), args.repeats)
        total += ms
        total_cpu += cpu
        available.append(name)
        print(f"| {name} | {ms:.1f} | {cpu:.1f} |")
    n = len(available)
    print(f"| **total, one call each ({n} metrics)** | **{total:.1f}** | {total_cpu:.1f} |")
    ms, cpu = median_ms(lambda: compute(a, b, f, available), args.repeats)
    print(f"| **compute(all {n}), shared work** | **{ms:.1f}** | {cpu:.1f} |")
    ms, cpu = median_ms(lambda: compute(a, b, f, available, threads=2), args.repeats)
    print(f"| **compute(all {n}, threads=2): Q_P on a second thread** | **{ms:.1f}** | {cpu:.1f} |")


if __name__ == "__main__":
    main()
