"""The fused Triton kernels (``upfusion.model.fused_kernels``) against the modules' own arithmetic.

On the CPU the kernels run in Triton's interpreter, which must be switched on before the
kernels are defined: the checks run in one fresh Python process (this file, run as a script),
so that no other test sees ``TRITON_INTERPRET``. On a CUDA GPU they run compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING
from unittest import mock

import pytest
import torch

if TYPE_CHECKING:
    from upfusion.model.fused_kernels import KernelConfig

pytest.importorskip("triton")


def trained_like_block(c: int, heads: int, device: str):
    """A ``TransformerBlock`` with its LayerNorms away from 1 and 0, as after training."""
    from upfusion.model.blocks import TransformerBlock

    torch.manual_seed(c)
    block = TransformerBlock(c, heads, 2.66).eval().to(device)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            else:
                p.mul_(1.5)
    return block


def stage_errors(
    stage: str,
    c: int,
    heads: int,
    size: tuple[int, int],
    precision: str,
    device: str,
    config: KernelConfig | None = None,
) -> dict[str, float | torch.Tensor]:
    """Max and mean difference from the fp32 plain arithmetic of a block's ``stage`` (``mdta``:
    x + MDTA(LN(x)); ``gdfn``: x + GDFN(LN(x)); ``block``: the whole block, where the GDFN's
    kernel also applies the attention; ``tcpm``: TCPM's top-k cross-attention of x and another
    map) in ``precision``, for the fused kernels (cut by the ``KernelConfig`` ``config``, or the
    default), the inference kernels without them ("fast") and the plain arithmetic; and the
    fused result itself ("fused")."""
    from upfusion.inference import inference_context
    from upfusion.model import TCPM, fast_ops, fused_kernels

    block = trained_like_block(c, heads, device)
    x = torch.randn(2, c, *size, device=device)
    tcpm = TCPM(c, heads, text_dim=8, keep_ratio=0.5, expansion=2.66).eval().to(device)
    with torch.no_grad():  # its LayerNorms away from 1 and 0 too
        for norm in (tcpm.norm1, tcpm.norm2):
            norm.body.weight.add_(torch.randn_like(norm.body.weight) * 0.2)
            norm.body.bias.add_(torch.randn_like(norm.body.bias) * 0.2)
    key_value = torch.randn(2, c, *size, device=device)

    def plain() -> torch.Tensor:
        with fast_ops.plain_arithmetic():
            if stage == "block":
                return block(x).float()
            if stage == "tcpm":
                return tcpm.select_attn(tcpm.norm1(x), tcpm.norm2(key_value)).float()
            y = x + block.attn(block.norm1(x)) if stage == "mdta" else x + block.ffn(block.norm2(x))
        return y.float()

    def fast() -> torch.Tensor:
        if stage == "block":
            return fast_ops.transformer_block(block, x).float()
        if stage == "tcpm":
            return fast_ops.topk_cross_attention(tcpm, x, key_value).float()
        if stage == "mdta":
            return fast_ops.mdta_residual(block, fast_ops.channels_last(x)).float()
        return fast_ops.gdfn_residual(block.norm2, block.ffn, x).float()

    def fused() -> torch.Tensor:
        fused_kernels.set_fused_kernels(True, config)
        try:
            assert fused_kernels.applies(x)  # else this would compare the inference kernels with themselves
            y = fast()
            assert not fused_kernels.left_out()
            return y
        finally:
            fused_kernels.set_fused_kernels(None)

    with inference_context(device, "fp32"):
        reference = plain()
    with inference_context(device, precision):
        results = {"fused": fused(), "fast": fast(), "plain": plain()}
    assert results["fused"].is_contiguous(memory_format=torch.channels_last)
    errors = {"fused": results["fused"]}
    for name, y in results.items():
        errors[f"{name}_max"] = (y - reference).abs().max().item()
        errors[f"{name}_mean"] = (y - reference).abs().mean().item()
    return errors


def bundled_model_and_pair(device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bundled weights' preset (random initialisation, seed 0), a random 40x56 pair and a text embedding."""
    from upfusion.presets import build_model

    torch.manual_seed(0)
    model = build_model("default").eval().to(device)
    text = torch.randn(1, model.config.text_dim, device=device)
    a, b = torch.rand(1, 1, 40, 56, device=device), torch.rand(1, 1, 40, 56, device=device)
    return model, a, b, text


def network_errors(device: str, precision: str) -> dict[str, float]:
    """The bundled weights' preset on a 40x56 pair, in ``precision``, with the kernels ("fused")
    and without ("fast"): their differences from the fp32 inference kernels."""
    from upfusion.inference import inference_context
    from upfusion.model import fast_ops, fused_kernels

    model, a, b, text = bundled_model_and_pair(device)
    with inference_context(device, "fp32"):
        reference = model(a, b, text).float()
    calls = mock.patch.object(fused_kernels, "gdfn_residual", wraps=fused_kernels.gdfn_residual)
    with inference_context(device, precision):
        fast = model(a, b, text).float()
        fused_kernels.set_fused_kernels(True)
        try:
            with calls as gdfn_calls:
                fused = model(a, b, text).float()
            left_out = fused_kernels.left_out()
        finally:
            fused_kernels.set_fused_kernels(None)
    assert fast_ops.fast_path_active() is False  # (outside inference mode again)
    assert gdfn_calls.call_count > 0 and not left_out  # every block ran the kernels
    return differences(fused, fast, reference)


def compiled_network_errors() -> dict[str, float]:
    """The bundled weights' preset under ``torch.compile`` with the kernels on (fp32, CPU, a 40x56
    pair), against the inference kernels uncompiled; and how many kernel launches ran. Dynamo
    with its eager backend: what is tested is that the kernels run, as graph breaks, inside a
    compiled model, not the compiler's code generation (minutes on a CPU)."""
    from upfusion.inference import inference_context
    from upfusion.model import TCPM, fused_kernels
    from upfusion.model.blocks import TransformerBlock

    model, a, b, text = bundled_model_and_pair("cpu")
    with inference_context("cpu", "fp32"):
        reference = model(a, b, text)
    compiled = torch.compile(model, backend="eager", dynamic=False)
    launches = mock.patch.object(fused_kernels, "_launched", wraps=fused_kernels._launched)
    fused_kernels.set_fused_kernels(True)
    try:
        with launches as launched, inference_context("cpu", "fp32"):
            out = compiled(a, b, text)
    finally:
        fused_kernels.set_fused_kernels(None)
    stages = sum(isinstance(m, (TransformerBlock, TCPM)) for m in model.modules())
    return {"fused_max": (out - reference).abs().max().item(), "launches": launched.call_count, "stages": stages}


def weights_changed_errors(device: str, precision: str) -> dict[str, float]:
    """A block after its weights changed in place since the kernels' last call (the kernels'
    weight layouts are cached), in ``precision``: differences from the fp32 plain arithmetic."""
    from upfusion.inference import inference_context
    from upfusion.model import fast_ops, fused_kernels

    block = trained_like_block(48, 1, device)
    x = torch.randn(1, 48, 12, 20, device=device)
    with inference_context(device, precision):
        fused_kernels.set_fused_kernels(True)
        try:
            fast_ops.transformer_block(block, x)
            with torch.inference_mode(False), torch.no_grad():
                block.norm1.body.weight.mul_(0.5)
                block.attn.qkv.weight.add_(0.1)
                block.norm2.body.bias.add_(0.3)
                block.ffn.project_out.weight.mul_(2.0)
            fused = fast_ops.transformer_block(block, x).float()
        finally:
            fused_kernels.set_fused_kernels(None)
        fast = fast_ops.transformer_block(block, x).float()
    with torch.no_grad(), fast_ops.plain_arithmetic():
        plain = block(x).float()
    return differences(fused, fast, plain)


def differences(fused: torch.Tensor, fast: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    return {
        "fused_max": (fused - reference).abs().max().item(),
        "fused_mean": (fused - reference).abs().mean().item(),
        "fast_mean": (fast - reference).abs().mean().item(),
    }


# The default tiles at four widths (GDFN: 6x14 at 48 and 96 channels, 6x6 at 192, 2x6 at 384;
# attention: 6x14, 6x14, 2x6, 2x6; on a GPU the last two widths run the inference kernels unless
# a config is given), 1 to 8 heads, hidden widths 127 to 1021 (padded to slices
# of 32, of 16 at 384 channels), sizes that leave partial tiles at the right and bottom edges,
# two samples.
CASES = [(48, 1, (20, 33)), (96, 2, (9, 17)), (192, 4, (7, 13)), (384, 8, (5, 9))]
STAGES = ["mdta", "gdfn", "block", "tcpm"]
FP32 = [f"{stage} {c} {heads} {h}x{w} fp32" for stage in STAGES[:2] for c, heads, (h, w) in CASES]
FP32 += [f"{stage} {c} {heads} {h}x{w} fp32" for stage in STAGES[2:] for c, heads, (h, w) in (CASES[0], CASES[-1])]
OTHER_TILES = [
    f"{stage} 48 1 20x33 fp32 5x7 {programs}" for stage in ("mdta", "gdfn", "tcpm") for programs in (1, 3, 1000)
]
HALF = [f"{stage} 48 1 20x33 {precision}" for stage in STAGES for precision in ("bf16", "fp16")]
# the depth-wise scratch in float32 rather than bf16 (KernelConfig.float32_scratch), and the taps
# tap-major, in bf16 arithmetic: the same values as the default layouts
SCRATCH = [f"block 48 1 20x33 bf16 6x14{options}" for options in ("", ":f32", ":tap")]
# every option at once (64 hidden channels a step), in fp32 (against the plain arithmetic)
OPTIONS = [f"{stage} 96 2 9x17 fp32 4x16:8:168:f32:s64:tap" for stage in ("block", "tcpm")]


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    """Every check of this file in Triton's interpreter, in one fresh process (one import of torch)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    checks = [*FP32, *OTHER_TILES, *HALF, *SCRATCH, *OPTIONS, "network", "weights", "compiled"]
    proc = subprocess.run([sys.executable, __file__, *checks], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def result(interpreted: dict[str, dict], check: str) -> dict:
    assert "error" not in interpreted[check], interpreted[check]["error"]
    return interpreted[check]


@pytest.mark.parametrize("check", FP32)
def test_fused_stage_equals_plain_in_fp32(interpreted, check):
    errors = result(interpreted, check)
    assert errors["fused_max"] < 1e-4, errors


@pytest.mark.parametrize("check", OTHER_TILES)
def test_fused_stage_with_other_tiles(interpreted, check):
    """5x7 output tiles: halo tiles (7x9) and output tiles padded to 64 pixels, 40 tiles, taken
    by one program (all of them through one scratch tile), by 3 (unequal shares) or one each."""
    errors = result(interpreted, check)
    assert errors["fused_max"] < 1e-4, errors


def test_fused_kernels_follow_weights_changed_in_place(interpreted):
    assert result(interpreted, "weights")["fused_max"] < 1e-4


@pytest.mark.parametrize("check", HALF)
def test_fused_stage_in_half_precision_is_as_close_as_the_inference_kernels(interpreted, check):
    """The kernels round where the inference kernels' operators round (the residual of MDTA in
    the compute dtype too); their error against fp32 is of the same size."""
    errors = result(interpreted, check)
    assert errors["fused_mean"] < 1.5 * errors["fast_mean"], errors
    assert errors["fused_max"] < 3 * errors["fast_max"], errors


def test_a_float32_scratch_tile_or_tap_major_taps_give_the_same_result(interpreted):
    """The projections are rounded to bf16 before they reach the scratch tile, so holding them in
    float32 changes no value; nor does the taps' layout: the whole block comes out the same."""
    default, float32, tap_major = (torch.tensor(result(interpreted, check)["fused"]) for check in SCRATCH)
    assert torch.equal(default, float32) and torch.equal(default, tap_major)
    assert default.abs().max() > 0.1  # (a real output)


@pytest.mark.parametrize("check", OPTIONS)
def test_fused_stage_with_every_config_option(interpreted, check):
    errors = result(interpreted, check)
    assert errors["fused_max"] < 1e-4, errors


def test_kernel_configs_read_from_text():
    from upfusion.model.fused_kernels import KernelConfig

    assert KernelConfig.parse("6x14") == KernelConfig((6, 14))
    assert KernelConfig.parse("4x16:4:168:f32:s64:tap") == KernelConfig(
        (4, 16), 4, 168, float32_scratch=True, hidden_slice=64, tap_major=True
    )
    for text in ("6x14:8", "4x16:4:168:f32:s64:tap", "8x8:8:128:f32"):
        assert KernelConfig.parse(text).notation() == text
    default = KernelConfig((6, 14), num_warps=4)
    assert KernelConfig.parse("default", default) is default
    assert KernelConfig.parse("default:8:f32", default) == KernelConfig((6, 14), 8, float32_scratch=True)
    for bad in ("6x14:fp32", "default", "6x14:s", "6x14:split"):
        with pytest.raises(ValueError, match="not a kernel config"):
            KernelConfig.parse(bad)


def test_fused_kernels_run_inside_a_compiled_model(interpreted):
    """Under ``torch.compile`` the kernels' entry points are graph breaks: every Restormer block
    and TCPM of the bundled preset launches both kernels (once each at this size)."""
    errors = result(interpreted, "compiled")
    assert errors["fused_max"] < 1e-4, errors
    assert errors["launches"] == 2 * errors["stages"], errors


def test_fused_network_equals_fast_path(interpreted):
    """The bundled weights' preset with the kernels in every block and in TCPM's GDFN."""
    assert result(interpreted, "network")["fused_max"] < 1e-4


def test_fused_kernels_are_on_by_default_on_hopper_gpus_for_maps_up_to_128_channels(monkeypatch):
    """Without a GPU: a stand-in for a CUDA map, under bf16 autocast, on GPUs of each capability."""
    from types import SimpleNamespace

    from upfusion.model import fused_kernels

    def cuda_map(channels: int) -> SimpleNamespace:
        return SimpleNamespace(shape=(8, channels, 480, 640), is_cuda=True, device=SimpleNamespace(index=0))

    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[0])
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: True)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    monkeypatch.setattr(fused_kernels, "available", lambda: True)
    monkeypatch.setattr(fused_kernels, "_enabled", None)
    monkeypatch.setattr(fused_kernels, "_too_wide", set())
    for gpu, expected in (((9, 0), True), ((10, 0), True), ((8, 0), False), ((8, 9), False)):
        capability[0] = gpu
        fused_kernels._timed_gpu.cache_clear()
        assert fused_kernels.applies(cuda_map(96)) is expected, gpu
        assert not fused_kernels.applies(cuda_map(192)), gpu  # wider: the inference kernels
    fused_kernels._timed_gpu.cache_clear()
    try:
        fused_kernels.set_fused_kernels(True)  # on where not timed, still up to 128 channels
        assert fused_kernels.applies(cuda_map(128)) and not fused_kernels.applies(cuda_map(192))
        fused_kernels.set_fused_kernels(True, fused_kernels.KernelConfig((2, 6)))  # every width
        assert fused_kernels.applies(cuda_map(384))
        capability[0] = (9, 0)
        fused_kernels.set_fused_kernels(False)
        assert not fused_kernels.applies(cuda_map(96))
    finally:
        fused_kernels.set_fused_kernels(None)
        fused_kernels._timed_gpu.cache_clear()


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("1", True), ("", None), ("yes", None)])
def test_the_environment_turns_the_fused_kernels_off_or_on(value, expected):
    env = {**os.environ, "UPFUSION_FUSED_KERNELS": value}
    code = "from upfusion.model import fused_kernels; print(fused_kernels._enabled)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == str(expected)
    assert ("neither 0 nor 1: ignored" in proc.stderr) == (value == "yes"), proc.stderr


def test_fused_kernels_are_off_on_the_cpu_by_default_and_skip_wide_maps(monkeypatch):
    from upfusion.model import fused_kernels

    monkeypatch.setattr(fused_kernels, "interpreting", lambda: True)  # off even in the interpreter
    monkeypatch.setattr(fused_kernels, "_enabled", None)
    x = torch.zeros(1, 48, 8, 8)
    assert not fused_kernels.applies(x)
    fused_kernels.set_fused_kernels(True)
    try:
        assert fused_kernels.applies(x)
        assert not fused_kernels.applies(torch.zeros(1, 1024, 8, 8))
    finally:
        fused_kernels.set_fused_kernels(None)


@pytest.mark.parametrize("failure", ["out of resources", "compilation"])
def test_a_kernel_too_big_for_the_gpu_leaves_that_width_to_the_inference_kernels(monkeypatch, failure):
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from upfusion.model import fast_ops, fused_kernels

    class TooBig:  # what Triton does when a kernel needs more shared memory than the GPU has
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if failure == "compilation":  # or cannot build it for this GPU
                    raise CompilationError("def kernel(...):", None, "unsupported on this GPU")
                raise OutOfResources(262144, 232448, "shared memory")

            return launch

    monkeypatch.setattr(fused_kernels, "_too_wide", set())
    monkeypatch.setattr(fused_kernels, "_enabled", True)
    monkeypatch.setattr(fused_kernels, "interpreting", lambda: True)
    x = torch.randn(1, 96, 8, 12)
    assert fused_kernels.applies(x)
    with pytest.warns(UserWarning, match="96-channel maps stay with the inference kernels") as record:
        assert not fused_kernels._launched(TooBig(), fused_kernels._Launch(x, fused_kernels.default_config(96), 32), x)
    assert "\n" not in str(record[0].message)  # one line, also for Triton's multi-line compile errors
    assert not fused_kernels.applies(x)
    assert fused_kernels.left_out() == {96}
    assert fused_kernels.applies(torch.zeros(1, 48, 8, 8))

    # and a stage whose kernel gave up computes the block with the inference kernels
    monkeypatch.setattr(fused_kernels, "applies", lambda x: True)
    monkeypatch.setattr(fused_kernels, "gdfn_residual", lambda *args, **kwargs: None)
    monkeypatch.setattr(fused_kernels, "mdta_statistics", lambda *args, **kwargs: None)
    block = trained_like_block(96, 2, "cpu")
    with torch.inference_mode():
        out = fast_ops.transformer_block(block, x)
    with torch.no_grad(), fast_ops.plain_arithmetic():
        assert (out - block(x)).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# (not TCPM: its top-k may flip a near tie either way, and the atomic sums' order varies)
@pytest.mark.parametrize("stage,precision", [(stage, p) for stage in STAGES[:3] for p in ("bf16", "fp16")])
def test_fused_stage_on_cuda(stage, precision):
    errors = stage_errors(stage, 96, 2, (37, 61), precision, "cuda", None)
    assert errors["fused_mean"] < 1.5 * errors["fast_mean"], errors
    assert errors["fused_max"] < 3 * errors["fast_max"], errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kernel_options_on_cuda():
    """Other tiles and a register limit compute the GDFN as closely as the default tiles, and a
    float32 scratch tile with tap-major taps gives the same values to the bit (no atomic sums in
    the GDFN)."""
    from upfusion.model.fused_kernels import KernelConfig

    config = KernelConfig((8, 8), 8, max_registers=168)
    narrow = stage_errors("gdfn", 96, 2, (37, 61), "bf16", "cuda", config)
    wide = stage_errors(
        "gdfn", 96, 2, (37, 61), "bf16", "cuda", dataclasses.replace(config, float32_scratch=True, tap_major=True)
    )
    assert torch.equal(narrow["fused"], wide["fused"])
    assert narrow["fused_mean"] < 1.5 * narrow["fast_mean"], narrow


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_network_on_cuda():
    for errors in (network_errors("cuda", "bf16"), weights_changed_errors("cuda", "bf16")):
        assert errors["fused_mean"] < 1.5 * errors["fast_mean"], errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kernels_leave_fp32_on_cuda_to_the_inference_kernels():
    from upfusion.inference import inference_context
    from upfusion.model import fused_kernels

    x = torch.zeros(1, 48, 8, 8, device="cuda")
    fused_kernels.set_fused_kernels(True)
    try:
        assert not fused_kernels.applies(x)
        with inference_context("cuda", "bf16"):
            assert fused_kernels.applies(x)
    finally:
        fused_kernels.set_fused_kernels(None)


def run_check(check: str) -> dict:
    """``mdta|gdfn|block|tcpm C HEADS HxW PRECISION [CONFIG [PROGRAMS]]``, ``network``, ``weights`` or
    ``compiled``, on the CPU (CONFIG: ``KernelConfig.parse``'s notation; PROGRAMS: how many programs a
    launch starts)."""
    from upfusion.model import fused_kernels

    what, *rest = check.split()
    if what in STAGES:
        c, heads, size, precision = rest[:4]
        height, width = map(int, size.split("x"))
        config = fused_kernels.KernelConfig.parse(rest[4]) if len(rest) > 4 else None
        programs = int(rest[5]) if len(rest) > 5 else fused_kernels.INTERPRETER_PROGRAMS
        with mock.patch.object(fused_kernels, "INTERPRETER_PROGRAMS", programs):
            errors = stage_errors(what, int(c), int(heads), (height, width), precision, "cpu", config)
        fused = errors.pop("fused")
        return {**errors, "fused": fused.tolist()} if check in SCRATCH else errors
    if what == "compiled":
        return compiled_network_errors()
    return network_errors("cpu", "fp32") if what == "network" else weights_changed_errors("cpu", "fp32")


def main() -> None:
    """The checks named on the command line (run with TRITON_INTERPRET=1), their results as one JSON line."""
    results = {}
    for check in sys.argv[1:]:
        try:
            results[check] = run_check(check)
        except Exception as error:  # reported by the test that reads this check
            results[check] = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()


def test_the_kernels_run_by_default_on_hopper_gpus_in_half_precision(monkeypatch):
    from upfusion.model import fused_kernels

    cuda, cuda1 = torch.device("cuda"), torch.device("cuda", 1)
    monkeypatch.setattr(fused_kernels, "_enabled", None)
    monkeypatch.setattr(fused_kernels, "_timed_gpu", lambda index: index in (None, 1))  # (no GPU asked)
    assert fused_kernels.runs_for(cuda, "bf16") and fused_kernels.runs_for(cuda1, "fp16")
    assert not fused_kernels.runs_for(cuda, "fp32") and not fused_kernels.runs_for(torch.device("cpu"), "bf16")
    assert not fused_kernels.runs_for(torch.device("cuda", 0), "bf16")  # not a Hopper GPU, say
    monkeypatch.setattr(fused_kernels, "_enabled", True)
    assert fused_kernels.runs_for(torch.device("cuda", 0), "bf16")
    monkeypatch.setattr(fused_kernels, "_enabled", False)
    assert not fused_kernels.runs_for(cuda, "bf16")
