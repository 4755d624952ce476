"""The network: shapes, the paper preset's exact structure and size, ablation switches, gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import shared_path
from upfusion.model import GAM, SCPM, TCPM, LayerNorm2d, ModelConfig, UPFusion
from upfusion.model.blocks import DepthwiseConv3x3
from upfusion.model.fast_ops import depthwise3x3_shifted
from upfusion.presets import PRESETS, build_model

SMALL = ModelConfig(
    dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 2, 4), num_refinement_blocks=1, semantic_backbone=None, text_dim=16
)


def _inputs(n=2, h=32, w=48, t=16):
    return torch.rand(n, 1, h, w), torch.rand(n, 1, h, w), torch.randn(t)


def test_forward_shape_and_text_forms():
    model = UPFusion(SMALL).eval()
    a, b, text = _inputs()
    with torch.no_grad():
        out_1d = model(a, b, text)
        out_2d = model(a, b, text[None])
        out_nd = model(a, b, text[None].expand(2, -1))
    assert out_1d.shape == (2, 1, 32, 48)
    assert torch.equal(out_1d, out_2d)
    assert torch.allclose(out_1d, out_nd, atol=1e-6)


def test_rgb_input_is_reduced_to_bt601_luma():
    model = UPFusion(SMALL).eval()
    rgb = torch.rand(1, 3, 16, 16)
    luma = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    b = torch.rand(1, 1, 16, 16)
    text = torch.randn(16)
    with torch.no_grad():
        assert torch.equal(model(rgb, b, text), model(luma, b, text))


def test_output_depends_on_both_sources_and_on_text():
    model = UPFusion(SMALL).eval()
    a, b, text = _inputs(n=1)
    with torch.no_grad():
        ref = model(a, b, text)
        assert not torch.allclose(ref, model(torch.rand_like(a), b, text))
        assert not torch.allclose(ref, model(a, torch.rand_like(b), text))
        # the text MLP only orders channels: a different order must change the output
        changed = [not torch.allclose(ref, model(a, b, torch.randn(16))) for _ in range(5)]
    assert any(changed)


def test_layernorm_is_population_variance_with_bias():
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ln.body.weight.uniform_(0.5, 2)
        ln.body.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    ln = ln.double()
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    expected = (x - mu) / torch.sqrt(var + 1e-5) * ln.body.weight.view(1, -1, 1, 1) + ln.body.bias.view(1, -1, 1, 1)
    assert torch.allclose(ln(x), expected, atol=1e-12)


def test_counts_truncate_toward_zero():
    tcpm = TCPM(48, 1, 512, 0.5, 2.66)
    assert tcpm.keep == 48 and tcpm.select_attn.n_keep == 43
    assert tcpm.ffn.project_out.in_channels == 127
    assert SCPM(48, 0.7, None, 1024).keep == 33


def test_paper_preset_parameter_count_and_keys():
    """49,309,724 trainable parameters, and exactly the reference's keys and shapes (less `*_gt`)."""
    model = build_model("paper")
    assert sum(p.numel() for p in model.trainable_parameters()) == 49_309_724
    assert sum(p.numel() for p in model.backbone_parameters()) == 87_564_416
    assert all(not p.requires_grad for p in model.backbone_parameters())

    reference = {}
    for line in shared_path("reference", "official_state_dict_keys.tsv").read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        if any(key.startswith(p) for p in ("encoder_level1_gt", "encoder_level2_gt", "encoder_level3_gt", "latent_gt")):
            continue
        key = key.replace("channel_select.convnext.0.", "channel_select.backbone.features.")
        reference[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference


def test_backbone_stays_frozen_in_train_mode():
    model = build_model(PRESETS["default"])
    model.train()
    assert model.channel_select.backbone.training is False
    assert model.channel_select.training is True


def _trainable_count(config: ModelConfig) -> int:
    return sum(p.numel() for p in build_model(config).trainable_parameters())


ABLATIONS = {
    "scpm": (dict(scpm=False), lambda m: m.channel_select is None),
    "gam": (dict(gam=False), lambda m: m.GEO_vi is None and m.GEO_ir is None),
    "tcpm": (
        dict(tcpm=False),
        lambda m: all(
            getattr(m, n) is None
            for n in (
                "latent_shuffle_channel",
                "encoder_shuffle_channel3",
                "encoder_shuffle_channel2",
                "encoder_shuffle_channel1",
            )
        ),
    ),
    "tcpm_channel_attention": (
        dict(tcpm_channel_attention=False),
        lambda m: (
            m.encoder_shuffle_channel1.se_fc is None
            and m.encoder_shuffle_channel1.conv1x1.in_channels == 2 * m.config.dim
        ),
    ),
    "semantic_backbone": (
        dict(semantic_backbone=None),
        lambda m: (
            m.channel_select.backbone is None
            and not hasattr(m.channel_select, "convnext_fc")
            and not hasattr(m.channel_select, "alpha")
        ),
    ),
    "scpm_channel_attention": (
        dict(scpm_channel_attention=False),
        lambda m: m.channel_select.fc is None and m.channel_select.backbone is not None,
    ),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_switch_removes_what_it_names(name):
    changes, removed = ABLATIONS[name]
    # EfficientNet-Lite0 in place of ConvNeXt-Base keeps this fast; the switches don't care
    full = PRESETS["tiny"].replace(semantic_backbone="efficientnet_lite0", backbone_dim=1280)
    model = build_model(full.replace(**changes))
    assert removed(model)
    assert not any(k.startswith(("encoder_level1_gt", "latent_gt")) for k in model.state_dict())
    if name != "tcpm_channel_attention":  # that one widens a conv instead
        assert _trainable_count(full.replace(**changes)) < _trainable_count(full)
    a, b = torch.rand(1, 1, 16, 24), torch.rand(1, 1, 16, 24)
    with torch.no_grad():
        assert model.eval()(a, b, torch.randn(512)).shape == (1, 1, 16, 24)


def test_gam_is_identity_when_gamma_and_beta_are_zero():
    gam = GAM(8)
    torch.nn.init.zeros_(gam.affine_fc[2].weight)
    torch.nn.init.zeros_(gam.affine_fc[2].bias)
    f, e = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    assert torch.equal(gam(f, e), f)


def test_scpm_gathers_each_samples_top_channels_in_score_order(monkeypatch):
    scpm = SCPM(8, 0.5, None, 0)
    p = torch.randn(2, 8, 4, 4)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.5], [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]])
    monkeypatch.setattr(scpm, "channel_weights", lambda _: scores)
    expected = torch.stack(
        [
            scpm.expand_conv(p[0:1, [1, 3, 5, 7]])[0],
            scpm.expand_conv(p[1:2, [0, 2, 4, 6]])[0],
        ]
    )
    assert torch.allclose(scpm(p), expected, atol=1e-6)


def test_gradients_reach_trained_parts_only():
    model = UPFusion(SMALL)
    a, b, text = _inputs(n=1, h=16, w=16)
    model(a, b, text).mean().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.output.weight.grad is not None
    # hard top-k selections: the SE and text MLPs never get a gradient (spec section 6)
    assert model.encoder_shuffle_channel1.text_fc[0].weight.grad is None
    assert model.encoder_shuffle_channel1.se_fc[0].weight.grad is None


def test_depthwise_conv_by_shifts_is_the_convolution():
    torch.manual_seed(3)
    x, weight = torch.randn(2, 5, 7, 11), torch.randn(5, 1, 3, 3)
    conv = torch.nn.functional.conv2d(x, weight, padding=1, groups=5)
    assert torch.allclose(depthwise3x3_shifted(x, weight), conv, atol=1e-5)
    half = depthwise3x3_shifted(x.bfloat16(), weight)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), conv, atol=0.1, rtol=0.02)


def test_depthwise_conv_takes_the_shifts_only_while_compiling(monkeypatch):
    layer = DepthwiseConv3x3(4)
    x = torch.randn(1, 4, 6, 6)
    calls = []
    monkeypatch.setattr(
        "upfusion.model.fast_ops.depthwise3x3_shifted", lambda x, w: calls.append(1) or layer._conv_forward(x, w, None)
    )
    layer(x)
    assert calls == []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    layer(x)
    assert calls == [1]
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)  # torch.export keeps the convolution
    layer(x)
    assert calls == [1]
