"""``upfusion.inference``: the precision context and torch.compile's clean fallback to eager."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from upfusion.inference import cpu_has_native_bf16, inference_context, maybe_compile


def test_inference_context_turns_off_autograd_and_checks_the_precision():
    x = torch.ones(2, requires_grad=True)
    with inference_context("cpu", "fp32"):
        assert torch.is_inference_mode_enabled() and not (x * 2).requires_grad
    with inference_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_inference_mode_enabled() and not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        with inference_context("cpu", "fp8"):
            pass


def test_compile_failure_on_first_call_warns_once_and_runs_eagerly(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: broken)
    model = torch.nn.Linear(3, 2)
    wrapped = maybe_compile(model)
    x = torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\)"):
        first = wrapped(x)
    assert torch.equal(first, model(x)) and not wrapped.is_compiled
    assert torch.equal(wrapped(x), model(x)) and len(calls) == 1  # not retried


def test_compile_unavailable_falls_back_at_once(monkeypatch):
    def unavailable(model, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = torch.nn.Linear(3, 2)
    with pytest.warns(RuntimeWarning, match="not available here"):
        wrapped = maybe_compile(model)
    x = torch.randn(1, 3)
    assert not wrapped.is_compiled and torch.equal(wrapped(x), model(x))


class _BrokenBlock(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("inductor failed")


def test_compiling_blocks_swaps_each_restormer_block_and_undoes_on_failure(monkeypatch):
    from upfusion.model.blocks import TransformerBlock
    from upfusion.presets import build_model
    from upfusion.train import model_config

    given = []

    def fake_compile(module, **kwargs):
        given.append(module)
        return _BrokenBlock()

    monkeypatch.setattr(torch, "compile", fake_compile)
    small = {"dim": 8, "num_blocks": [1, 1, 1, 2], "heads": [1, 1, 2, 4], "num_refinement_blocks": 1}
    model = build_model(model_config({**small, "semantic_backbone": None, "text_dim": 16})).eval()
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert len(blocks) > 5
    wrapped = maybe_compile(model, scope="blocks")
    assert {id(m) for m in given} == {id(m) for m in blocks}  # every block, each once
    assert not any(isinstance(m, TransformerBlock) for m in model.modules())  # swapped in place
    a, b, text = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.randn(1, 16)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: inductor failed\)"):
        out = wrapped(a, b, text)
    assert [id(m) for m in model.modules() if isinstance(m, TransformerBlock)] == [id(m) for m in blocks]
    assert not wrapped.is_compiled and torch.equal(out, model(a, b, text))
    with pytest.raises(ValueError, match="unknown compile scope 'layers'"):
        maybe_compile(model, scope="layers")


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").exists(), reason="reads x86 CPU flags"
)
def test_cpu_has_native_bf16_follows_the_cpu_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
