"""The benchmark scripts' clock: the median of repeated calls, GPU work waited for."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _wait_for_gpu() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones (imports,
    caches, compilation). Each timed call includes the CUDA work it queued."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _wait_for_gpu()
        start = time.perf_counter()
        fn()
        _wait_for_gpu()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
