"""Time of each classic fusion baseline on one real 640x480 pair, as a markdown table.

A = MSRS visible image turned grey (BT.601 luma, rounded), B = the infrared image, both as
float64 in [0, 1] (what ``upfusion fuse --method NAME`` hands the baselines: the luma channel).
Median of --repeats runs after one warm-up run, on this process's CPU (numpy/scipy threads as set).

    python benchmarks/bench_baselines.py [--data ../shared/data/msrs/test] [--stem 00004N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
from shared_data import DATA
from timing import median_ms

from upfusion.baselines import BASELINES
from upfusion.errors import UpfusionError
from upfusion.evaluate import read_gray

DEFAULT_DATA = DATA / "msrs" / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with vi/ and ir/ (MSRS test)")
    parser.add_argument("--stem", default=None, help="image stem (default: the first one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    stem = args.stem or sorted(p.stem for p in (args.data / "ir").glob("*.png"))[0]
    a = read_gray(args.data / "vi" / f"{stem}.png").astype(np.float64) / 255
    b = read_gray(args.data / "ir" / f"{stem}.png").astype(np.float64) / 255
    megapixels = a.size / 1e6

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"pair: MSRS {stem}, {a.shape[1]}x{a.shape[0]}; median of {args.repeats} runs after a warm-up")
    print(f"{platform.processor() or platform.machine()}, {cpus} CPU core(s) available\n")
    print("| baseline | ms | megapixels/s |")
    print("|---|---:|---:|")
    for name, fuse in BASELINES.items():
        try:
            ms = median_ms(lambda fuse=fuse: fuse(a, b), args.repeats)
        except UpfusionError as exc:  # e.g. PyWavelets not installed
            print(f"| {name} | n/a ({exc}) | |")
            continue
        print(f"| {name} | {ms:.1f} | {megapixels / (ms / 1000):.1f} |")


if __name__ == "__main__":
    main()
