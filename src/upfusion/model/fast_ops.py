"""Inference kernels: the same function as the modules' own ``forward``, in less time and memory.

The modules in this package compute the formulas of the specification literally (the "plain"
path, which training and ONNX export use). Without autograd, ``TransformerBlock`` and
``TCPM`` hand their work to the functions below instead. They compute the same function,
re-associated, and agree with the plain path to float32 rounding (~1e-6):

- activations are channels-last: the per-pixel LayerNorm is ``F.layer_norm`` on a free
  ``[N, H, W, C]`` view, every 1x1 conv is one matrix product on those rows, and the
  depth-wise 3x3 convs run in oneDNN's fast channels-last kernels;
- the map is walked in row bands: LayerNorm, 1x1 conv and depth-wise 3x3 conv of one band at
  a time (one halo row each side), so the 3c-wide q|k|v and the 2 x 2.66c-wide GDFN maps never
  exist at full size, and each band's work stays in cache;
- q|k|v and the two GDFN halves are separate products (contiguous operands for GELU and the
  gate), the GDFN hidden width is padded with zero channels to a multiple of 16 (127 -> 128:
  products of odd widths are up to 4x slower), adding exact zeros;
- the channel attention is kept as one d x d Gram matrix per head, accumulated over the
  bands; the L2 normalisation divides the Gram matrix by the norms instead of normalising q
  and k; ``project_out(attn @ v)`` is one product with ``project_out.weight @ blockdiag(attn)``,
  which also adds the residual;
- in TCPM the SE gather, ``conv1x1``, the text permutation and ``conv_out`` fold into one
  1x1 conv for q;
- under ``torch.compile`` the depth-wise 3x3 convs are nine shifted products, which the
  compiler fuses with their neighbours (``blocks.DepthwiseConv3x3`` does the same).
- on a GPU in bf16 or fp16 (by default on Hopper GPUs): ``fused_kernels`` runs MDTA's and TCPM's
  attention passes, and the product that applies MDTA's attention together with the GDFN, as
  single Triton kernels.

The SCPM and TCPM channel selections are made by the modules themselves, from inputs computed
by the same code in both paths (spec section 6 explains why that matters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_kernels

_enabled = True

# The rows of one band: enough for efficient matrix products, few enough that the band's
# widest product (q|k|v, or both GDFN halves) stays near BAND_ELEMENTS values. On a GPU memory
# is rarely short and every band costs kernel launches, so its bands are much larger.
BAND_ELEMENTS = 1 << 23
GPU_BAND_ELEMENTS = 1 << 28
MIN_BAND_ROWS = 16


def fast_path_active() -> bool:
    """True when the modules should use these kernels: enabled, no autograd, not tracing for export."""
    if not _enabled or torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling():
        return True
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


def set_fast_inference(enabled: bool) -> None:
    """Turns the fast inference kernels on (the default) or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def plain_arithmetic() -> Iterator[None]:
    """Within this block the modules compute the specification's formulas literally (the reference path)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


# --------------------------------------------------------------------------------------------
# layout and bands


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """The ``[N, H, W, C]`` view of a channels-last ``[N, C, H, W]`` tensor (no copy)."""
    return x.permute(0, 2, 3, 1)


def layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LayerNorm2d`` over the channels of a channels-last map, returned as ``[N, H, W, C]`` (contiguous)."""
    body = norm.body
    return F.layer_norm(nhwc(x), (x.shape[1],), body.weight, body.bias, 1e-5)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 conv as one matrix product on ``[..., C_in]`` rows (``weight``: [C_out, C_in, 1, 1])."""
    weight = weight.flatten(1)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
    return out.view(*x.shape[:-1], weight.shape[0])


def band_rows(x: torch.Tensor, channels: int) -> int:
    """Rows per band for a map like ``x`` [N, C, H, W] whose band products are ``channels`` wide."""
    budget = BAND_ELEMENTS if x.device.type == "cpu" else GPU_BAND_ELEMENTS
    return max(MIN_BAND_ROWS, budget // max(1, x.shape[0] * x.shape[3] * channels))


def conv_bands(
    x: torch.Tensor, norm: nn.Module, parts: list[tuple[torch.Tensor, torch.Tensor]], rows: int
) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """``depthwise(pointwise(norm(x)))`` band by band, for each ``(pointwise, depthwise)`` weight pair.

    Yields ``(r0, r1, outputs)``: image rows ``r0:r1``, one contiguous ``[N, (r1-r0)*W, C']``
    tensor per part. Each band is computed with one halo row above and below, so the
    depth-wise 3x3 conv sees the same neighbours as on the whole map; the halo rows' own
    outputs are dropped. The parts (q|k|v, gelu-half|gate-half) are separate convolutions with
    the matching slices of the module's weights: element-wise work on contiguous tensors is
    ~4x faster than on channel slices of one tensor.
    """
    n, _, height, width = x.shape
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        normed = layer_norm(norm, x[:, :, lo:hi])  # [N, rows + halo, W, C]
        outputs = []
        for weight, depthwise in parts:
            y = pointwise(normed, weight).permute(0, 3, 1, 2)  # channels-last [N, C', rows + halo, W]
            y = depthwise3x3(y, depthwise)
            y = channels_last(y[:, :, r0 - lo : r1 - lo])  # a no-op unless the batch has several samples
            outputs.append(nhwc(y).reshape(n, (r1 - r0) * width, y.shape[1]))
        yield r0, r1, outputs


def depthwise3x3_shifted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The bias-free depth-wise 3x3 convolution (zero padding 1) as nine shifted products.

    ``weight`` is the convolution's [C, 1, 3, 3]. The same function as ``F.conv2d(x, weight,
    padding=1, groups=C)`` with another order of the sums.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    taps = weight.to(x.dtype).reshape(1, -1, 9, 1, 1)
    out = padded[..., :h, :w] * taps[:, :, 0]
    for t in range(1, 9):
        dy, dx = divmod(t, 3)
        out = out + padded[..., dy : dy + h, dx : dx + w] * taps[:, :, t]
    return out


def compiling_for_speed() -> bool:
    """Inside ``torch.compile``, but not ``torch.export`` (ONNX export keeps the convolution)."""
    return torch.compiler.is_compiling() and not fused_kernels.exporting()


def depthwise3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The bias-free depth-wise 3x3 convolution (zero padding 1; ``weight``: [C, 1, 3, 3]): nine
    shifted products under ``torch.compile``, which the compiler fuses with their neighbours
    (cuDNN's grouped kernel was the slowest kernel of compiled graphs on an H100), the library's
    convolution otherwise (eager calls, ``torch.export``)."""
    if compiling_for_speed():
        return depthwise3x3_shifted(x, weight)
    return F.conv2d(x, weight, padding=1, groups=weight.shape[0])


def split_weights(pointwise: nn.Conv2d, depthwise: nn.Conv2d, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (1x1, depth-wise) weight pairs of each of ``parts`` equal channel parts."""
    step = pointwise.out_channels // parts
    return [
        (pointwise.weight[i * step : (i + 1) * step], depthwise.weight[i * step : (i + 1) * step]) for i in range(parts)
    ]


def padded_width(channels: int) -> int:
    """The GDFN hidden width rounded up to a multiple of 16 (127 -> 128, 255 -> 256, 42 -> 48)."""
    return -(-channels // 16) * 16


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return (
        torch.cat([weight, weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])])
        if rows > weight.shape[0]
        else weight
    )


# --------------------------------------------------------------------------------------------
# channel attention (MDTA and TCPM's top-k cross-attention)


class _GramAccumulator:
    """Per head ``q_h^T k_h`` and the squared L2 norms of q and k over all pixels, band by band."""

    def __init__(self, n: int, c: int, heads: int, like: torch.Tensor) -> None:
        self.heads, self.d = heads, c // heads
        self.gram = torch.zeros(n, heads, self.d, self.d, dtype=torch.float32, device=like.device)
        self.q_sq = torch.zeros(n, c, dtype=torch.float32, device=like.device)
        self.k_sq = torch.zeros(n, c, dtype=torch.float32, device=like.device)

    def add(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """q, k: [N, P, c] (P pixels of one band)."""
        d = self.d
        # fp16 (autocast) would overflow summing ~1e5 products of unnormalised q and k: sum in float32
        wide = q.dtype == torch.float16
        with torch.autocast(q.device.type, enabled=False) if wide else contextlib.nullcontext():
            if wide:
                q, k = q.float(), k.float()
            for h in range(self.heads):
                qh, kh = q[:, :, h * d : (h + 1) * d], k[:, :, h * d : (h + 1) * d]
                self.gram[:, h] += torch.bmm(qh.transpose(1, 2), kh).float()
        self.q_sq += q.float().square().sum(dim=1)
        self.k_sq += k.float().square().sum(dim=1)

    def logits(self, temperature: torch.Tensor) -> torch.Tensor:
        """``normalize(q) @ normalize(k)^T * temperature``, [N, heads, d, d] (F.normalize: eps 1e-12)."""
        n, d = self.gram.shape[0], self.d
        q_norm = self.q_sq.sqrt().clamp_min(1e-12).view(n, self.heads, d, 1)
        k_norm = self.k_sq.sqrt().clamp_min(1e-12).view(n, self.heads, 1, d)
        return self.gram / q_norm / k_norm * temperature.float()


def _output_matrix(project_out: nn.Conv2d, attn: torch.Tensor) -> torch.Tensor:
    """``project_out.weight @ blockdiag(attn_1 .. attn_heads)`` per sample: [N, c_out, c]."""
    n, heads, d, _ = attn.shape
    weight = project_out.weight.reshape(project_out.out_channels, heads, d).float()
    return torch.einsum("ohi,nhij->nohj", weight, attn).reshape(n, project_out.out_channels, heads * d)


def _apply_attention(
    values: torch.Tensor, matrix: torch.Tensor, residual: torch.Tensor | None, shape: tuple[int, ...]
) -> torch.Tensor:
    """``residual + project_out(attn @ v)`` as ``values @ matrix^T``, returned channels-last [N, c, H, W]."""
    n, c, height, width = shape
    matrix_t = matrix.transpose(1, 2).to(values.dtype)
    if residual is None:
        out = torch.bmm(values, matrix_t)
    else:
        out = torch.baddbmm(nhwc(residual).reshape(n, height * width, c).to(values.dtype), values, matrix_t)
    return out.view(n, height, width, c).permute(0, 3, 1, 2)


def mdta_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + MDTA(LN(x))`` of a ``TransformerBlock`` (``x`` channels-last)."""
    return _apply_attention(*_mdta_attention(block, x), x, x.shape)


def _mdta_attention(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MDTA's v as [N, H*W, c] and ``project_out.weight @ blockdiag(attn)`` as [N, c, c]."""
    attn = block.attn
    acc = _GramAccumulator(x.shape[0], x.shape[1], attn.heads, x)
    values = None
    if fused_kernels.applies(x):  # one Triton kernel on a GPU
        values = fused_kernels.mdta_statistics(block.norm1, attn, x, acc.gram, acc.q_sq, acc.k_sq)
    if values is None:
        values = _mdta_statistics(block, x, acc)
    weights = acc.logits(attn.temperature).softmax(dim=-1)
    return values, _output_matrix(attn.project_out, weights)


def _mdta_statistics(block: nn.Module, x: torch.Tensor, acc: _GramAccumulator) -> torch.Tensor:
    """q, k, v band by band: q and k into ``acc``; v returned as [N, H*W, c]."""
    n, c, height, width = x.shape
    values = None
    rows = band_rows(x, 3 * c)
    for r0, r1, (q, k, v) in conv_bands(x, block.norm1, split_weights(block.attn.qkv, block.attn.qkv_dwconv, 3), rows):
        acc.add(q, k)
        if values is None:
            values = torch.empty(n, height * width, c, dtype=v.dtype, device=v.device)
        values[:, r0 * width : r1 * width] = v
    return values


def topk_cross_attention(tcpm: nn.Module, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
    """``select_attn(norm1(query), norm2(key_value))`` of a ``TCPM`` (no residual, as in the spec)."""
    attn = tcpm.select_attn
    acc = _GramAccumulator(query.shape[0], query.shape[1], attn.heads, query)
    values = None
    if fused_kernels.applies(query):  # one Triton kernel on a GPU
        values = fused_kernels.cross_attention_statistics(tcpm, query, key_value, acc.gram, acc.q_sq, acc.k_sq)
    if values is None:
        values = _cross_attention_statistics(tcpm, query, key_value, acc)
    logits = acc.logits(attn.temperature)
    keep = torch.zeros_like(logits).scatter_(-1, torch.topk(logits, attn.n_keep, dim=-1).indices, 1.0)
    logits = torch.where(keep > 0, logits, torch.full_like(logits, float("-inf")))
    weights = logits.softmax(dim=-1) * attn.attn4.float()
    return _apply_attention(values, _output_matrix(attn.project_out, weights), None, query.shape)


def _cross_attention_statistics(
    tcpm: nn.Module, query: torch.Tensor, key_value: torch.Tensor, acc: _GramAccumulator
) -> torch.Tensor:
    """q from the query's bands, k and v from the key/value map's: q and k into ``acc``; v
    returned as [N, H*W, c]."""
    attn = tcpm.select_attn
    n, c, height, width = query.shape
    values = None
    rows = band_rows(query, 3 * c)
    q_bands = conv_bands(query, tcpm.norm1, split_weights(attn.q, attn.q_dwconv, 1), rows)
    kv_bands = conv_bands(key_value, tcpm.norm2, split_weights(attn.kv, attn.kv_dwconv, 2), rows)
    for (r0, r1, (q,)), (_, _, (k, v)) in zip(q_bands, kv_bands, strict=True):
        acc.add(q, k)
        if values is None:
            values = torch.empty(n, height * width, c, dtype=v.dtype, device=v.device)
        values[:, r0 * width : r1 * width] = v
    return values


# --------------------------------------------------------------------------------------------
# feed-forward


def gdfn_residual(norm: nn.Module, ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + GDFN(norm(x))``, band by band into a new channels-last tensor.

    The hidden width (``int(2.66 c)``: 127, 255, 510, 1021) is padded with zero channels to a
    multiple of 16 (matrix products of odd widths are up to 4x slower): their 1x1 and
    depth-wise weights are zero, so they hold gelu(0) * 0 = 0 and add exact zeros to
    ``project_out``.
    """
    if fused_kernels.applies(x):  # one Triton kernel on a GPU
        out = fused_kernels.gdfn_residual(norm, ffn, x)
        if out is not None:
            return out
    n, c, height, width = x.shape
    hidden = ffn.project_out.in_channels
    wide = padded_width(hidden)
    parts = [(_pad_rows(pw, wide), _pad_rows(dw, wide)) for pw, dw in split_weights(ffn.project_in, ffn.dwconv, 2)]
    project_out = ffn.project_out.weight
    if wide > hidden:
        project_out = torch.cat([project_out, project_out.new_zeros(c, wide - hidden, 1, 1)], dim=1)
    rows = band_rows(x, 2 * wide)
    out = None
    for r0, r1, (x1, x2) in conv_bands(x, norm, parts, rows):
        gated = F.gelu(x1).mul_(x2)  # [N, rows * W, hidden]
        residual = nhwc(x[:, :, r0:r1]).reshape(n, (r1 - r0) * width, c)
        if out is None:  # (under autocast: the dtype the plain path's x + GDFN(...) would have)
            out = torch.empty(n, height * width, c, dtype=torch.promote_types(x.dtype, gated.dtype), device=x.device)
        weight = project_out.flatten(1).t().to(out.dtype)
        for i in range(n):  # residual + project_out(gated), written in place (out= is outside autocast)
            torch.addmm(residual[i].to(out.dtype), gated[i].to(out.dtype), weight, out=out[i, r0 * width : r1 * width])
    return out.view(n, height, width, c).permute(0, 3, 1, 2)


def transformer_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``TransformerBlock`` without autograd: x + MDTA(LN(x)), then + GDFN(LN(.))."""
    x = channels_last(x)
    values, matrix = _mdta_attention(block, x)
    if fused_kernels.applies(x):  # the attention's product inside the GDFN's Triton kernel
        out = fused_kernels.gdfn_residual(block.norm2, block.ffn, x, attention=(values, matrix))
        if out is not None:
            return out
    x = _apply_attention(values, matrix, x, x.shape)
    return gdfn_residual(block.norm2, block.ffn, x)


def _folded_query_weights(tcpm: nn.Module, indices: torch.Tensor | None, perm: torch.Tensor, sample: int):
    """``conv_out(permute(conv1x1(select(x))))`` as one 1x1 conv on ``x``: (weight [c, 2c], bias [c]).

    ``q = Wo (W1 x[idx] + b1)[perm] + bo = (Wo W1[perm]) x[idx] + (Wo b1[perm] + bo)``; the
    columns of ``Wo W1[perm]`` go to the selected channels, the others get zeros.
    """
    w1, b1 = tcpm.conv1x1.weight.flatten(1).float(), tcpm.conv1x1.bias.float()
    wo, bo = tcpm.conv_out.weight.flatten(1).float(), tcpm.conv_out.bias.float()
    order = perm[min(sample, perm.shape[0] - 1)]
    folded = wo @ w1[order]
    bias = wo @ b1[order] + bo
    if indices is None:  # no SE selection: conv1x1 sees all 2c channels in order
        return folded, bias
    weight = folded.new_zeros(wo.shape[0], wo.shape[1])
    weight[:, indices[sample]] = folded
    return weight, bias


def tcpm_query_key_value(
    tcpm: nn.Module, x: torch.Tensor, indices: torch.Tensor | None, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TCPM``'s q and kv_src from ``x = concat(a, b)`` and its selections (SE ``indices`` [N, m] or
    None, text ``perm`` [N or 1, 2c]).

    The SE gather, ``conv1x1``, the text permutation and ``conv_out`` are one 1x1 conv for q
    (per sample: each sample has its own selection).
    """
    x = nhwc(channels_last(x))  # [N, H, W, 2c]
    queries = []
    for i in range(x.shape[0]):
        with torch.autocast(x.device.type, enabled=False):  # fold the weights in float32
            weight, bias = _folded_query_weights(tcpm, indices, perm, i)
        queries.append(pointwise(x[i], weight.to(x.dtype), bias.to(x.dtype)))
    query = torch.stack(queries).permute(0, 3, 1, 2)
    key_value = pointwise(x, tcpm.conv_out.weight, tcpm.conv_out.bias).permute(0, 3, 1, 2)
    return query, key_value


def tcpm_attention_ffn(tcpm: nn.Module, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
    """The rest of ``TCPM``: ``att = CA(LN1(q), LN2(kv_src))``, then ``att + GDFN(LN3(att))``."""
    att = topk_cross_attention(tcpm, channels_last(query), channels_last(key_value))
    return gdfn_residual(tcpm.norm3, tcpm.ffn, att)
