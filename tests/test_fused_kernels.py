"""The fused Triton kernels (``upfusion.model.fused_kernels``) against the modules' own arithmetic.

On the CPU the kernels run in Triton's interpreter, which must be switched on before the
kernels are defined: each check runs in a fresh Python process (this file, run as a script),
so that no other test sees ``TRITON_INTERPRET``. On a CUDA GPU they run compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")


def stage_errors(
    stage: str, c: int, heads: int, size: tuple[int, int], precision: str, device: str
) -> dict[str, float]:
    """Max and mean difference from the fp32 plain arithmetic of a block's ``stage`` (``mdta``:
    x + MDTA(LN(x)), or ``gdfn``: x + GDFN(LN(x))) in ``precision``, for the fused kernels, the
    inference kernels without them ("fast") and the plain arithmetic."""
    from upfusion.inference import inference_context
    from upfusion.model import fast_ops, fused_kernels
    from upfusion.model.blocks import TransformerBlock

    torch.manual_seed(c)
    block = TransformerBlock(c, heads, 2.66).eval().to(device)
    with torch.no_grad():
        for name, p in block.named_parameters():  # LayerNorm away from 1 and 0, as after training
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            else:
                p.mul_(1.5)
    x = torch.randn(2, c, *size, device=device)

    def plain() -> torch.Tensor:
        with fast_ops.plain_arithmetic():
            y = x + block.attn(block.norm1(x)) if stage == "mdta" else x + block.ffn(block.norm2(x))
        return y.float()

    def fast(fused: bool) -> torch.Tensor:
        fused_kernels.set_fused_kernels(fused)
        try:
            if stage == "mdta":
                return fast_ops.mdta_residual(block, fast_ops.channels_last(x)).float()
            return fast_ops.gdfn_residual(block.norm2, block.ffn, x).float()
        finally:
            fused_kernels.set_fused_kernels(False)

    with inference_context(device, "fp32"):
        reference = plain()
    with inference_context(device, precision):
        results = {"fused": fast(True), "fast": fast(False), "plain": plain()}
    assert results["fused"].is_contiguous(memory_format=torch.channels_last)
    errors = {}
    for name, y in results.items():
        errors[f"{name}_max"] = (y - reference).abs().max().item()
        errors[f"{name}_mean"] = (y - reference).abs().mean().item()
    return errors


def network_error(device: str) -> float:
    """Max |fused - fast| of the bundled weights' preset, fp32, on a 40x56 pair."""
    from upfusion.model import fast_ops, fused_kernels
    from upfusion.presets import build_model

    torch.manual_seed(0)
    model = build_model("default").eval().to(device)
    text = torch.randn(1, model.config.text_dim, device=device)
    a, b = torch.rand(1, 1, 40, 56, device=device), torch.rand(1, 1, 40, 56, device=device)
    with torch.inference_mode():
        fast = model(a, b, text)
        fused_kernels.set_fused_kernels(True)
        try:
            fused = model(a, b, text)
        finally:
            fused_kernels.set_fused_kernels(False)
    assert fast_ops.fast_path_active() is False  # (outside inference mode again)
    return (fused - fast).abs().max().item()


def run_interpreted(*args: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


# Both tile shapes (48 channels: 14x14 tiles; 96: 6x14), hidden widths 127 and 255 (padded to
# slices of 32), sizes that leave partial tiles at the right and bottom edges, two samples.
CASES = [(48, 1, (20, 33)), (96, 2, (9, 17))]


@pytest.mark.parametrize("stage", ["mdta", "gdfn"])
@pytest.mark.parametrize("c,heads,size", CASES)
def test_fused_stage_equals_plain_in_fp32(stage, c, heads, size):
    errors = run_interpreted(stage, str(c), str(heads), f"{size[0]}x{size[1]}", "fp32")
    assert errors["fused_max"] < 1e-4, errors


@pytest.mark.parametrize("stage", ["mdta", "gdfn"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fused_stage_in_half_precision_is_as_close_as_the_plain_path(stage, precision):
    """The kernels round where the inference kernels' operators round (the residual of MDTA in
    the compute dtype too); their error against fp32 is of the same size."""
    errors = run_interpreted(stage, "48", "1", "20x33", precision)
    assert errors["fused_mean"] < 1.5 * errors["fast_mean"], errors
    assert errors["fused_max"] < 3 * errors["fast_max"], errors


def test_fused_network_equals_fast_path():
    """The bundled weights' preset with the kernels in every block of 48 and 96 channels, and in TCPM's GDFN."""
    assert run_interpreted("network")["max"] < 1e-4


def test_fused_kernels_are_off_by_default_and_skip_wide_maps():
    from upfusion.model import fused_kernels

    x = torch.zeros(1, 48, 8, 8)
    assert not fused_kernels.applies(x)
    fused_kernels.set_fused_kernels(True)
    try:
        assert not fused_kernels.applies(
            torch.zeros(1, 192, 8, 8, device="cuda" if torch.cuda.is_available() else "cpu")
        )
    finally:
        fused_kernels.set_fused_kernels(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stage", ["mdta", "gdfn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_stage_on_cuda(stage, precision):
    errors = stage_errors(stage, 96, 2, (37, 61), precision, "cuda")
    if precision == "fp32":
        assert errors["fused_max"] < 1e-4, errors
    else:
        assert errors["fused_mean"] < 1.5 * errors["fast_mean"], errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_network_on_cuda():
    assert network_error("cuda") < 1e-4


if (
    __name__ == "__main__"
):  # one check, in Triton's interpreter: python tests/test_fused_kernels.py mdta|gdfn|network ...
    if sys.argv[1] in ("mdta", "gdfn"):
        c, heads, size, precision = sys.argv[2:6]
        height, width = map(int, size.split("x"))
        print(json.dumps(stage_errors(sys.argv[1], int(c), int(heads), (height, width), precision, "cpu")))
    else:
        print(json.dumps({"max": network_error("cpu")}))
