"""The inference kernels (``upfusion.model.fast_ops``) compute what the plain modules compute.

Weights are random; where a test compares whole networks, the SE and text MLPs' last layers
are re-drawn with a large spread so that no top-k selection hinges on a last-bit difference
(spec section 6), and the selections themselves are compared too.
"""

from __future__ import annotations

import pytest
import torch

from upfusion.model import SCPM, TCPM, ModelConfig, TransformerBlock, UPFusion, fast_ops
from upfusion.model.fast_ops import plain_arithmetic

MEDIUM = ModelConfig(
    dim=16, num_blocks=(1, 1, 1, 2), heads=(1, 2, 4, 8), num_refinement_blocks=1, semantic_backbone=None, text_dim=32
)


def separate_scores(model: torch.nn.Module, std: float = 3.0, seed: int = 0) -> torch.nn.Module:
    """Re-draws the last layer of every SE / text MLP so that channel scores are far apart."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            layers = []
            if isinstance(module, SCPM) and module.fc is not None:
                layers.append(module.fc[2])
            if isinstance(module, TCPM):
                layers.append(module.text_fc[2])
                if module.se_fc is not None:
                    layers.append(module.se_fc[2])
            for layer in layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                if layer.bias is not None:
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
    return model


def randomise_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """LayerNorm affine weights and attention temperatures away from their 1 / 0 initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("body.weight", "temperature")):
                p.copy_(0.5 + torch.rand(p.shape, generator=generator))
            elif name.endswith("body.bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


class SelectionRecorder:
    """Records every SCPM score vector and TCPM SE selection made while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scpm: list[torch.Tensor] = []
        self.tcpm: list[torch.Tensor] = []
        self.text: list[torch.Tensor] = []
        scores, selection, permutation = SCPM.channel_weights, TCPM.channel_selection, TCPM.text_permutation

        def record(store, fn):
            def wrapped(module, x):
                out = fn(module, x)
                getattr(self, store).append(out.clone())
                return out

            return wrapped

        monkeypatch.setattr(SCPM, "channel_weights", record("scpm", scores))
        monkeypatch.setattr(TCPM, "channel_selection", record("tcpm", selection))
        monkeypatch.setattr(TCPM, "text_permutation", record("text", permutation))

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        taken = (self.scpm, self.tcpm, self.text)
        self.scpm, self.tcpm, self.text = [], [], []
        return taken


@pytest.fixture(params=["default bands", "3-row bands"])
def bands(request, monkeypatch):
    """Runs a test with the shipped band size and with bands of 3 rows (many bands, a short last one)."""
    if request.param == "3-row bands":
        monkeypatch.setattr(fast_ops, "BAND_ELEMENTS", 1)
        monkeypatch.setattr(fast_ops, "MIN_BAND_ROWS", 3)
    return request.param


def _pair(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


@pytest.mark.parametrize("n,h,w", [(1, 64, 96), (2, 40, 24), (1, 8, 16)])
def test_network_fast_equals_plain_with_separated_scores(bands, monkeypatch, n, h, w):
    model = randomise_norms(separate_scores(UPFusion(MEDIUM))).eval()
    a, b = _pair(n, h, w)
    text = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    recorder = SelectionRecorder(monkeypatch)
    with torch.no_grad():
        fast = model(a, b, text)
        fast_choice = recorder.take()
        with plain_arithmetic():
            plain = model(a, b, text)
        plain_choice = recorder.take()
    assert fast.shape == plain.shape == (n, 1, h, w)
    assert fast.is_contiguous()
    assert (fast - plain).abs().max().item() < 1e-5
    for fast_list, plain_list in zip(fast_choice, plain_choice, strict=True):
        assert len(fast_list) == len(plain_list) > 0
        assert all(torch.equal(f, p) for f, p in zip(fast_list, plain_list, strict=True))


def test_scpm_and_text_choices_are_bitwise_the_plain_ones_at_default_init(monkeypatch):
    """With untrained (default-init) SE and text MLPs only these two are guaranteed: their inputs are
    computed by the same code in both paths. (TCPM's SE sees encoder features that differ by ~1e-7.)"""
    config = MEDIUM.replace(semantic_backbone="efficientnet_lite0", backbone_dim=1280)
    from upfusion.presets import build_model

    model = build_model(config).eval()
    a, b = _pair(1, 48, 64)
    text = torch.randn(32)
    recorder = SelectionRecorder(monkeypatch)
    with torch.no_grad():
        model(a, b, text)
        fast_scpm, _, fast_text = recorder.take()
        with plain_arithmetic():
            model(a, b, text)
        plain_scpm, _, plain_text = recorder.take()
    assert torch.equal(fast_scpm[0], plain_scpm[0])
    assert all(torch.equal(f, p) for f, p in zip(fast_text, plain_text, strict=True))


def test_autograd_runs_the_plain_formulas():
    """Training is untouched: with gradients on, the modules compute the plain path exactly."""
    model = separate_scores(UPFusion(MEDIUM)).eval()
    a, b = _pair(1, 32, 48)
    text = torch.randn(32)
    out = model(a, b, text)
    assert out.requires_grad
    with torch.no_grad(), plain_arithmetic():
        plain = model(a, b, text)
    assert torch.equal(out.detach(), plain)


@pytest.mark.parametrize("c,heads,h,w,n", [(48, 1, 19, 24, 1), (16, 2, 16, 40, 2), (32, 4, 8, 8, 1)])
def test_transformer_block_kernel(bands, c, heads, h, w, n):
    """One block: LayerNorm, MDTA folded into one product, banded GDFN (48 -> hidden 127, padded to 128)."""
    block = randomise_norms(TransformerBlock(c, heads, 2.66)).eval()
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = fast_ops.transformer_block(block, x)
        with plain_arithmetic():
            plain = block(x)
    assert fast.shape == plain.shape
    assert (fast - plain).abs().max().item() < 2e-5 * plain.abs().max().item()


def test_banded_kernels_take_the_shifted_depthwise_products_while_compiling(bands, monkeypatch):
    """Under torch.compile the bands' depth-wise convolutions are nine shifted products (fused by the
    compiler), with the same result; eager calls keep the convolution."""
    block = randomise_norms(TransformerBlock(16, 2, 2.66)).eval()
    x = torch.randn(2, 16, 13, 20, generator=torch.Generator().manual_seed(4))
    calls = []
    shifted = fast_ops.depthwise3x3_shifted
    monkeypatch.setattr(fast_ops, "depthwise3x3_shifted", lambda y, w: calls.append(w.shape[0]) or shifted(y, w))
    with torch.no_grad():
        eager = fast_ops.transformer_block(block, x)
        assert calls == []
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        compiling = fast_ops.transformer_block(block, x)
    assert sorted(set(calls)) == [16, 48]  # q, k, v (16 each) and the two padded GDFN halves (48 each)
    assert (compiling - eager).abs().max().item() < 1e-5 * eager.abs().max().item()


@pytest.mark.parametrize("channel_attention", [True, False])
def test_tcpm_kernel_with_per_sample_selections(bands, channel_attention):
    """Folded q (SE gather, conv1x1, text permutation, conv_out as one product) and the top-k cross-attention."""
    tcpm = randomise_norms(separate_scores(TCPM(16, 2, 32, 0.5, 2.66, channel_attention=channel_attention))).eval()
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 16, 24, 32, generator=g), torch.randn(2, 16, 24, 32, generator=g)
    text = torch.randn(2, 32, generator=g)  # per-sample text: per-sample permutations
    with torch.no_grad():
        if channel_attention:  # the two samples really select different channels
            pooled = torch.cat([a, b], dim=1).mean(dim=(2, 3))
            chosen = tcpm.channel_selection(pooled)
            assert not torch.equal(chosen[0].sort().values, chosen[1].sort().values)
        fast = tcpm(a, b, text)
        with plain_arithmetic():
            plain = tcpm(a, b, text)
    assert (fast - plain).abs().max().item() < 2e-5 * plain.abs().max().item()


def test_batch_equals_pairs_one_by_one():
    """Batching same-size pairs gives each pair's own result (selections are per sample)."""
    model = separate_scores(UPFusion(MEDIUM)).eval()
    a, b = _pair(3, 32, 40)
    text = torch.randn(32)
    with torch.no_grad():
        batched = model(a, b, text)
        single = torch.cat([model(a[i : i + 1], b[i : i + 1], text) for i in range(3)])
    assert (batched - single).abs().max().item() < 1e-5


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR (dB) between the two results as the pipeline writes them: uint8 of clamp(F, 0, 1)."""
    x, y = (torch.round(255 * t.float().clamp(0, 1)) for t in (x, y))
    mse = ((x - y) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0**2 / mse)).item()


def test_autocast_scores_stay_float32(monkeypatch):
    """Under bf16 autocast the scores behind every top-k are float32 (bf16 would tie them)."""
    model = UPFusion(MEDIUM).eval()
    a, b = _pair(1, 32, 48)
    text = torch.randn(32)
    recorder = SelectionRecorder(monkeypatch)
    with torch.no_grad():
        model(a, b, text)
        _, _, text_fp32 = recorder.take()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(a, b, text)
        scpm, tcpm, text_bf16 = recorder.take()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert scpm[0].dtype == torch.float32 and len(tcpm) == 4
    assert all(torch.equal(x, y) for x, y in zip(text_fp32, text_bf16, strict=True))


def _default_weights_and_crop(height: int, width: int, device: str = "cpu"):
    from conftest import shared_path
    from upfusion import imaging
    from upfusion.fuse import WEIGHTS_DIR
    from upfusion.pretrained.checkpoint import load_network

    if not (WEIGHTS_DIR / "default.json").is_file():
        pytest.skip("no bundled default weights")
    folder = shared_path("data", "msrs", "test")
    name = sorted((folder / "vi").glob("*.png"))[0].name
    crops = [imaging.read_image(folder / side / name).luma()[:height, :width] for side in ("vi", "ir")]
    a, b = (torch.from_numpy(imaging.pad_to_multiple(c.copy()))[None, None].to(device) for c in crops)
    model, text = load_network(WEIGHTS_DIR / "default.json", device=device)
    return model, text, a, b


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_autocast_stays_within_45_db_of_fp32_on_default_weights(dtype):
    model, text, a, b = _default_weights_and_crop(96, 128)
    with torch.inference_mode():
        full = model(a, b, text)
        with torch.autocast("cpu", dtype=dtype):
            half = model(a, b, text)
    assert _psnr(half, full) >= 45


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU paths)")


@needs_cuda
def test_cuda_fast_equals_plain_in_fp32():
    from upfusion.inference import inference_context

    model = randomise_norms(separate_scores(UPFusion(MEDIUM))).eval().cuda()
    a, b = (t.cuda() for t in _pair(2, 64, 96))
    text = torch.randn(1, 32).cuda()
    with inference_context("cuda", "fp32"):
        fast = model(a, b, text)
        with plain_arithmetic():
            plain = model(a, b, text)
    assert (fast - plain).abs().max().item() < 1e-4


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_is_within_45_db_of_fp32_on_the_default_weights(precision):
    from upfusion.inference import inference_context

    model, text, a, b = _default_weights_and_crop(480, 640, device="cuda")
    with inference_context("cuda", "fp32"):
        full = model(a, b, text).float()
    with inference_context("cuda", precision):
        half = model(a, b, text).float()
    assert _psnr(half, full) >= 45


@needs_cuda
def test_cuda_batch_equals_pairs_one_by_one():
    from upfusion.inference import inference_context

    model = separate_scores(UPFusion(MEDIUM)).eval().cuda()
    a, b = (t.cuda() for t in _pair(4, 64, 96))
    text = torch.randn(32).cuda()
    with inference_context("cuda", "fp32"):
        batched = model(a, b, text)
        single = torch.cat([model(a[i : i + 1], b[i : i + 1], text) for i in range(4)])
    assert (batched - single).abs().max().item() < 1e-4
