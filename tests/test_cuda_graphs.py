"""upfusion.cuda_graphs: the network replayed from CUDA graphs.

Without a GPU the recording is replaced by a stand-in graph that recomputes the network on the
recorded inputs when replayed, so that what ``GraphedNetwork`` decides (when to record, what to
keep, what to copy, what to do when recording fails) runs on real values; the CUDA test at the
end checks real graphs against eager calls.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import upfusion
from upfusion import cuda_graphs
from upfusion.cuda_graphs import CapturedGraph, GraphedNetwork
from upfusion.errors import UpfusionError
from upfusion.model import ModelConfig
from upfusion.presets import build_model
from upfusion.pretrained.checkpoint import save_checkpoint

# a small network of the paper's shape (as tests/test_fuse.py's), with random weights
SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)


class StandInGraph:
    """Replays by computing the network again on the recorded inputs, into the recorded output."""

    def __init__(self, network, static_inputs, static_output) -> None:
        self.network, self.static_inputs, self.static_output = network, static_inputs, static_output

    def replay(self) -> None:
        self.static_output.copy_(self.network(*self.static_inputs))


@pytest.fixture
def recorded(monkeypatch) -> list[tuple]:
    """Every recording's input shapes; CPU tensors count as capturable."""
    shapes: list[tuple] = []

    def capture(network, inputs):
        shapes.append(tuple(x.shape for x in inputs))
        static = [x.clone() for x in inputs]
        output = network(*static)
        return CapturedGraph(StandInGraph(network, static, output), static, output)

    monkeypatch.setattr(cuda_graphs, "capturable", lambda inputs: True)
    monkeypatch.setattr(cuda_graphs, "capture_graph", capture)
    return shapes


def pair(seed: int, height: int = 16, width: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, height, width, generator=generator), torch.rand(1, 1, height, width, generator=generator)


def calls(graphed: GraphedNetwork, plain, seeds, **size):
    """(graphed, eager) results for the pairs of ``seeds``."""
    results = []
    with torch.inference_mode():
        for seed in seeds:
            a, b = pair(seed, **size)
            results.append((graphed(a, b), plain(a, b)))
    return results


def tiny_network():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    text = torch.randn(16)

    def run(a, b):
        return model(a, b, text)

    return run


def test_a_shape_is_recorded_on_its_second_call_and_replayed_after(recorded):
    run = tiny_network()
    graphed = GraphedNetwork(run)
    results = calls(graphed, run, seeds=(1,))
    assert recorded == []  # the first call runs eagerly
    results += calls(graphed, run, seeds=(2, 3))
    assert recorded == [((1, 1, 16, 24), (1, 1, 16, 24))]  # once, on the second call
    for replayed, eager in results:
        torch.testing.assert_close(replayed, eager, rtol=0, atol=1e-6)
    assert not torch.equal(results[1][0], results[2][0])  # each replay on its own inputs


def test_replayed_results_are_copies(recorded):
    run = tiny_network()
    graphed = GraphedNetwork(run)
    (_, _), (second, eager_second), (third, _) = calls(graphed, run, seeds=(1, 2, 3))
    # the third replay overwrote the graph's own output; the second result kept its values
    torch.testing.assert_close(second, eager_second, rtol=0, atol=1e-6)
    assert second.data_ptr() != third.data_ptr()


def test_at_most_max_graphs_are_kept(recorded):
    run = tiny_network()
    graphed = GraphedNetwork(run, max_graphs=2)
    for width in (24, 32, 40, 24):  # 24 is recorded, then dropped for 40, then recorded again
        calls(graphed, run, seeds=(1, 2), width=width)
    assert [shapes[0][3] for shapes in recorded] == [24, 32, 40, 24]
    assert [key[0][0][3] for key in graphed.graphs] == [40, 24]


def test_weights_changed_in_place_make_a_new_graph(recorded):
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    text = torch.randn(16)
    graphed = GraphedNetwork(model)
    with torch.inference_mode():
        a, b = pair(1)
        graphed(a, b, text)
        graphed(a, b, text)
        assert len(recorded) == 1
        graphed(a, b, text)  # replayed
        with torch.no_grad():
            model.refinement[0].ffn.project_out.weight.mul_(2.0)
        changed = graphed(a, b, text)  # a new key: eager, then recorded on the next call
        assert len(recorded) == 1
        torch.testing.assert_close(changed, model(a, b, text), rtol=0, atol=1e-6)
        graphed(a, b, text)
    assert len(recorded) == 2


def test_a_failed_recording_warns_once_and_that_shape_runs_eagerly(monkeypatch):
    tries = []

    def failing(network, inputs):
        tries.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "capturable", lambda inputs: True)
    monkeypatch.setattr(cuda_graphs, "capture_graph", failing)
    run = tiny_network()
    graphed = GraphedNetwork(run)
    with pytest.warns(RuntimeWarning, match=r"shape \(1, 1, 16, 24\) run eagerly \(capture failed: operation not"):
        results = calls(graphed, run, seeds=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results += calls(graphed, run, seeds=(3,))
    assert len(tries) == 1 and not graphed.graphs
    for graphed_result, eager in results:
        assert torch.equal(graphed_result, eager)


def test_cpu_calls_run_the_network_as_it_is():
    run = tiny_network()
    graphed = GraphedNetwork(run)
    for graphed_result, eager in calls(graphed, run, seeds=(1, 2, 3)):
        assert torch.equal(graphed_result, eager)
    assert not graphed.graphs


def test_cuda_graphs_need_a_cuda_device_and_no_compile(tmp_path):
    checkpoint = save_checkpoint(
        build_model(SMALL), tmp_path / "small", text_embedding=torch.randn(16), text_encoder="test", prompt="test"
    )
    with pytest.raises(UpfusionError, match="cuda_graphs needs a CUDA device, not cpu"):
        upfusion.load(checkpoint, device="cpu", cuda_graphs=True)
    if torch.cuda.is_available():
        with pytest.raises(UpfusionError, match="cuda_graphs and compile do not go together"):
            upfusion.load(checkpoint, device="cuda", cuda_graphs=True, compile="blocks")
    a = tmp_path / "a.png"
    out = tmp_path / "out.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(a)
    done = subprocess.run(
        [sys.executable, "-m", "upfusion", "fuse", "--a", str(a), "--b", str(a), "--out", str(out)]
        + ["--weights", str(checkpoint), "--device", "cpu", "--cuda-graphs"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and not out.exists()
    assert "cuda_graphs needs a CUDA device, not cpu" in done.stderr.strip().splitlines()[-1]
    done = subprocess.run(
        [sys.executable, "-m", "upfusion", "bench", "--device", "cpu", "--cuda-graphs", "--warmup", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "--cuda-graphs runs on CUDA devices only" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replays_give_the_eager_results(precision):
    """The bundled weights on a CUDA GPU (bf16: the fused kernels on Hopper GPUs): the pairs fused
    from a recorded graph equal those fused eagerly (their atomic sums may differ in the last bits)."""
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (96, 128), np.uint8), rng.integers(0, 256, (96, 128), np.uint8)) for _ in range(3)]
    eager = upfusion.load(device="cuda", precision=precision)
    graphed = upfusion.load(device="cuda", precision=precision, cuda_graphs=True)
    for a, b in pairs:
        assert np.abs(graphed.fuse(a, b).astype(int) - eager.fuse(a, b)).max() <= 1
    assert len(graphed.whole.graphs) == 1
