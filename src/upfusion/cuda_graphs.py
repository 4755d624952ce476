"""The network replayed from CUDA graphs, for streams of pairs of one size on a GPU.

An eager call of the paper preset launches about 3,000 kernels, each from Python: at batch 1 on
an H100 the call took 105 ms a pair against 46 ms a pair of GPU work in batches of 8 (the fused
kernels), so at batch 1 most of the time is likely spent launching (not profiled). A CUDA graph
records one call's kernels once and replays them with one launch. ``GraphedNetwork`` records a
graph the second time it sees an input shape (the first call runs eagerly: it compiles the
Triton kernels and prepares their weights) and replays it from then on; the graph keeps that
call's memory, so it keeps at most ``max_graphs`` of them (the least recently used goes).
Inputs are copied into the graph's own tensors and the output is copied out, so callers see
ordinary tensors.

A graph replays the memory addresses it recorded, so nothing it reads may be freed while it
lives: autocast's cache of half-precision weights (emptied when the outermost autocast region
ends) is off while recording, so the casts are recorded too; and weights changed in place after
recording (which remakes the fused kernels' prepared copies of them) make new graphs.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

MAX_GRAPHS = 2


class CapturedGraph:
    """One recorded call: ``replay`` copies ``inputs`` into the recorded ones, replays the
    kernels and returns a copy of the recorded output."""

    def __init__(self, graph, static_inputs: list[torch.Tensor], static_output: torch.Tensor) -> None:
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_output = static_output

    def replay(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for static, value in zip(self.static_inputs, inputs, strict=True):
            static.copy_(value)
        self.graph.replay()
        return self.static_output.clone()  # the next replay overwrites the recorded output


def capture_graph(network: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> CapturedGraph:
    """Records one call of ``network`` on copies of ``inputs`` (CUDA tensors), after one call on a
    side stream, as CUDA graph capture requires (it sets up the libraries' workspaces)."""
    static = [x.clone() for x in inputs]
    autocast = torch.is_autocast_enabled("cuda")
    uncached = torch.autocast("cuda", torch.get_autocast_dtype("cuda"), enabled=autocast, cache_enabled=False)
    with uncached:
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            network(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = network(*static)
    return CapturedGraph(graph, static, output)


class GraphedNetwork:
    """``network`` (called with tensors only) replayed from a CUDA graph per input shape and
    precision; calls on the CPU, or with autograd on, run it as it is."""

    def __init__(self, network: Callable[..., torch.Tensor], max_graphs: int = MAX_GRAPHS) -> None:
        self.network = network
        self.weights = list(network.parameters()) if isinstance(network, torch.nn.Module) else []
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, CapturedGraph] = OrderedDict()
        self.seen: set[tuple] = set()
        self.eager: set[tuple] = set()  # shapes whose capture failed

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not capturable(inputs):
            return self.network(*inputs)
        key = (*graph_key(inputs), sum(w._version for w in self.weights))  # (in-place changes count up)
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph.replay(inputs)
        if key in self.eager or key not in self.seen:
            self.seen.add(key)
            return self.network(*inputs)
        try:
            graph = capture_graph(self.network, inputs)
        except RuntimeError as error:
            self.eager.add(key)
            reason = " ".join(str(error).split())[:200]
            warnings.warn(
                f"CUDA graphs: inputs of shape {tuple(inputs[0].shape)} run eagerly (capture failed: {reason})",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.network(*inputs)
        self.graphs[key] = graph
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)  # its memory goes back to PyTorch's allocator
        return graph.replay(inputs)


def capturable(inputs: tuple[torch.Tensor, ...]) -> bool:
    """CUDA inputs, no autograd (a graph records no backward)."""
    return all(x.is_cuda for x in inputs) and not torch.is_grad_enabled()


def graph_key(inputs: tuple[torch.Tensor, ...]) -> tuple:
    """What a recorded call depends on: the inputs' shapes, dtypes and devices, and the autocast
    precision (the kernels recorded differ with it)."""
    autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    return (*((tuple(x.shape), x.dtype, x.device) for x in inputs), autocast)
