"""One onnxruntime measurement for ``bench_inference.py onnx``, in a process without PyTorch.

    python benchmarks/onnxruntime_case.py MODEL.onnx WIDTHxHEIGHT RUNS THREADS [arena|no-arena]

Prints one JSON line: the median latency of RUNS calls after a warm-up (random inputs, CPU,
onnxruntime's default session options but the thread count, and with ``no-arena`` its CPU
memory arena off) and the process's peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import onnxruntime


def main() -> None:
    path, size, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    arena = sys.argv[5:] != ["no-arena"]
    width, height = (int(v) for v in size.split("x"))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((1, 1, height, width), dtype=np.float32) for name in ("a", "b")}
    session.run(None, inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(
        json.dumps(
            {"latency_s": float(np.median(times)), "peak_memory_bytes": peak, "onnxruntime": onnxruntime.__version__}
        )
    )


if __name__ == "__main__":
    main()
