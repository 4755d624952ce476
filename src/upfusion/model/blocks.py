"""Restormer building blocks (Zamir et al., CVPR 2022), as UP-Fusion uses them.

Spec section 1. Every convolution is bias-free; every 3x3 conv is stride 1, zero padding 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_ops


def conv1x1(c_in: int, c_out: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)


def conv3x3(c_in: int, c_out: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class DepthwiseConv3x3(nn.Conv2d):
    """Bias-free depth-wise 3x3 convolution (one filter per channel, zero padding 1).

    Runs as ``fast_ops.depthwise3x3``: under ``torch.compile`` nine shifted products, which the
    compiler fuses with the element-wise work around it into one pass over memory (cuDNN's
    grouped kernel, which compiled graphs otherwise get, was the slowest kernel on an H100:
    docs/performance.md); eager calls and export keep the convolution.
    """

    def __init__(self, c: int) -> None:
        super().__init__(c, c, kernel_size=3, padding=1, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_ops.depthwise3x3(x, self.weight)


def dwconv3x3(c: int) -> nn.Conv2d:
    return DepthwiseConv3x3(c)


def ffn_hidden_width(c: int, expansion: float) -> int:
    """GDFN hidden width: truncated toward zero (48 * 2.66 -> 127)."""
    return int(c * expansion)


def to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, c, H, W] -> [N, heads, c / heads, H*W]; channels are head-major."""
    n, c, h, w = x.shape
    return x.reshape(n, heads, c // heads, h * w)


class _BiasedLayerNormBody(nn.Module):
    """Population-variance LayerNorm over the last axis, eps 1e-5 inside the root."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class LayerNorm2d(nn.Module):
    """Per-pixel LayerNorm over the channels of an [N, c, H, W] map (with bias).

    The statistics are taken over the last axis of the [N, H*W, c] view, as the reference
    does, so the float32 rounding matches it.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = _BiasedLayerNormBody(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.body(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(n, c, h, w)


class MDTA(nn.Module):
    """Multi-Dconv head Transposed Attention: attention across channels, linear in H*W."""

    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = conv1x1(c, 3 * c)
        self.qkv_dwconv = dwconv3x3(3 * c)
        self.project_out = conv1x1(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = F.normalize(to_heads(q, self.heads), dim=-1)
        k = F.normalize(to_heads(k, self.heads), dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = attn @ to_heads(v, self.heads)
        return self.project_out(out.reshape(n, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network: gelu(x1) * x2 over a depth-wise 3x3."""

    def __init__(self, c: int, expansion: float) -> None:
        super().__init__()
        hidden = ffn_hidden_width(c, expansion)
        self.project_in = conv1x1(c, 2 * hidden)
        self.dwconv = dwconv3x3(2 * hidden)
        self.project_out = conv1x1(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, c: int, heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.attn = MDTA(c, heads)
        self.norm2 = LayerNorm2d(c)
        self.ffn = GDFN(c, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_ops.fast_path_active():  # inference: same function, less time and memory
            return fast_ops.transformer_block(self, x)
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(c: int, heads: int, blocks: int, expansion: float) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(c, heads, expansion) for _ in range(blocks)])


class Down(nn.Module):
    """conv3x3(c -> c/2), PixelUnshuffle(2): 2c channels at half size."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(c, c // 2), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    """conv3x3(c -> 2c), PixelShuffle(2): c/2 channels at double size."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3x3(c, 2 * c), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ShallowEmbedding(nn.Module):
    """conv3x3(1 -> C): one per source (reference: `patch_embed` for A, `ir_imb` for B)."""

    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        self.proj = conv3x3(c_in, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """GAP: adaptive average pooling to 1x1 over the whole (padded) map, in float32.

    (Under autocast the map may be bf16/fp16: its mean is still accumulated and kept in float32.)
    """
    if x.dtype != torch.float32:
        return x.mean(dim=(2, 3), keepdim=True, dtype=torch.float32)
    return F.adaptive_avg_pool2d(x, 1)


def float32_decisions(x: torch.Tensor) -> torch.autocast:
    """Context for the scores behind a hard top-k selection: float32 even under autocast.

    Untrained SE and text MLPs give scores ~1 float32 ulp apart (spec section 6); rounded to
    bf16 or fp16 they would tie and the selection would be arbitrary.
    """
    return torch.autocast(x.device.type, enabled=False)


def gather_channels(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[s, j] = x[s, idx[s, j]] for an [N, c, H, W] map and [N or 1, k] indices."""
    n, _, h, w = x.shape
    idx = idx.expand(n, -1)
    return torch.gather(x, 1, idx[:, :, None, None].expand(-1, -1, h, w))
