"""The Triton kernels of ``fused_kernels`` (imported only when they run: Triton is optional)."""

import triton
import triton.language as tl


@triton.jit
def rounded(x, DTYPE: tl.constexpr, EMULATED: tl.constexpr):
    """float32 ``x`` rounded to ``DTYPE`` (to nearest, ties to even), kept as float32.

    Triton's interpreter truncates float32 to bf16, so there the rounding is done on the bits.
    """
    if EMULATED and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def operand(x, DTYPE: tl.constexpr, EMULATED: tl.constexpr):
    """float32 ``x`` as a matrix-product operand in ``DTYPE``. The interpreter multiplies bf16
    wrongly (numpy has no bf16): there the operand is the rounded value in float32, whose
    products with another such operand are exact in float32, as on the GPU's tensor cores."""
    if EMULATED:
        return rounded(x.to(tl.float32), DTYPE, EMULATED)
    return x.to(DTYPE)


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, EMULATED: tl.constexpr):
    """``a @ b`` of two ``operand`` tiles, with float32 sums."""
    if EMULATED:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def halo_pixels(
    n, tile_h, tile_w, height, width, TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_P: tl.constexpr
):  # fmt: skip
    """The halo tile, the output tile's (TILE_H + 2) x (TILE_W + 2) pixels flattened row-major:
    their pixel indices (flattened over the batch) and which lie in the image."""
    halo_w: tl.constexpr = TILE_W + 2
    hp = tl.arange(0, HALO_P)
    row = tile_h * TILE_H - 1 + hp // halo_w
    col = tile_w * TILE_W - 1 + hp % halo_w
    inside = (hp < (TILE_H + 2) * halo_w) & (row >= 0) & (row < height) & (col >= 0) & (col < width)
    return (n * height + row).to(tl.int64) * width + col, inside


@triton.jit
def load_rows(ptr, pixel, inside, channels, BLOCK_C: tl.constexpr):
    """The channels of the pixels ``pixel`` of a channels-last map, float32 [pixels, BLOCK_C]
    (0 outside the image and beyond ``channels``)."""
    ch = tl.arange(0, BLOCK_C)
    mask = inside[:, None] & (ch < channels)[None, :]
    return tl.load(ptr + pixel[:, None] * channels + ch[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def with_attention(
    x, v_ptr, mt_ptr, pixel, inside, n, channels,
    BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATED: tl.constexpr,
):  # fmt: skip
    """``x + v @ M^T`` at the pixels ``pixel``: the product that applies MDTA's attention and adds
    the residual (``fast_ops._apply_attention``; ``mt``: [N, C, C], the sample's M^T), rounded as
    that product's output. Summed over 32 input channels at a time, so that the operands stay
    small (M^T whole would be 512 KiB at 384 channels)."""
    ch = tl.arange(0, BLOCK_C)
    ch_ok = ch < channels
    applied = tl.zeros_like(x)
    for k0 in range(0, channels, 32):
        k = k0 + tl.arange(0, 32)
        k_ok = k < channels
        v = tl.load(v_ptr + pixel[:, None] * channels + k[None, :], mask=inside[:, None] & k_ok[None, :], other=0.0)
        mt = tl.load(
            mt_ptr + n.to(tl.int64) * channels * channels + k[:, None] * channels + ch[None, :],
            mask=k_ok[:, None] & ch_ok[None, :],
            other=0.0,
        )
        v = operand(v.to(tl.float32), DOT_DTYPE, EMULATED)
        applied += dot(v, operand(mt.to(tl.float32), DOT_DTYPE, EMULATED), PRECISION, EMULATED)
    return rounded(rounded(x, DOT_DTYPE, EMULATED) + applied, DOT_DTYPE, EMULATED)


@triton.jit
def layer_norm_rows(
    x, ln_w_ptr, ln_b_ptr, channels, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, EMULATED: tl.constexpr
):  # fmt: skip
    """LayerNorm over the channels (population variance, eps 1e-5) of float32 rows [pixels,
    BLOCK_C], as a product operand."""
    ch = tl.arange(0, BLOCK_C)
    ch_ok = ch < channels
    mean = tl.sum(x, axis=1) / channels
    diff = tl.where(ch_ok[None, :], x - mean[:, None], 0.0)
    inv_std = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / channels + 1e-5)
    ln_w = tl.load(ln_w_ptr + ch, mask=ch_ok, other=0.0)
    ln_b = tl.load(ln_b_ptr + ch, mask=ch_ok, other=0.0)
    return operand(diff * inv_std[:, None] * ln_w[None, :] + ln_b[None, :], DOT_DTYPE, EMULATED)


@triton.jit
def project_to_scratch(
    normed, inside, w_ptr, row_stride, col0, valid, channels, scratch,
    BLOCK_C: tl.constexpr, HALO_P: tl.constexpr, COLS: tl.constexpr, CHUNK: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, EMULATED: tl.constexpr,
):  # fmt: skip
    """A 1x1 conv of the halo tile onto the columns ``col0 + j`` (``j < valid``; ``w``:
    [channels, row_stride], input-major), rounded as the unfused convolution's output, written
    to ``scratch`` [HALO_P, COLS]. The depth-wise conv that follows zero-pads its input, so
    pixels outside the image hold 0. CHUNK columns at a time: a product's operand [BLOCK_C,
    CHUNK] is spread over the threads, and whole it would take too many registers at 384 channels."""
    ch = tl.arange(0, BLOCK_C)
    for c0 in tl.static_range(0, COLS, CHUNK):
        j = c0 + tl.arange(0, CHUNK)
        w = tl.load(
            w_ptr + ch[:, None] * row_stride + col0 + j[None, :],
            mask=(ch < channels)[:, None] & (j < valid)[None, :],
            other=0.0,
        )
        y = rounded(dot(normed, operand(w, DOT_DTYPE, EMULATED), PRECISION, EMULATED), DOT_DTYPE, EMULATED)
        y = tl.where(inside[:, None], y, 0.0)  # (exact in the scratch's dtype: y is rounded to it)
        tl.store(scratch + tl.arange(0, HALO_P)[:, None] * COLS + j[None, :], y.to(scratch.dtype.element_ty))


@triton.jit
def depthwise_from_scratch(
    scratch, dw_ptr, dw_stride, cols, cols_ok,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, OUT_P: tl.constexpr, COLS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, EMULATED: tl.constexpr, TAP_MAJOR: tl.constexpr,
):  # fmt: skip
    """The depth-wise 3x3 conv (``dw``: [channels, 9], or [9, dw_stride] ``TAP_MAJOR``) at the
    output tile's pixels, from the halo tile in ``scratch``; rounded as the unfused convolution's
    output. [OUT_P, COLS]."""
    halo_w: tl.constexpr = TILE_W + 2
    op = tl.arange(0, OUT_P)
    within = op < TILE_H * TILE_W
    row, col = op // TILE_W, op % TILE_W
    out = tl.zeros((OUT_P, COLS), dtype=tl.float32)
    for tap in range(9):  # not unrolled: unrolled, the nine loads are all issued at once and spill
        src = tl.where(within, (row + tap // 3) * halo_w + (col + tap % 3), 0)
        y = tl.load(scratch + src[:, None] * COLS + tl.arange(0, COLS)[None, :]).to(tl.float32)
        if TAP_MAJOR:
            weight = tl.load(dw_ptr + tap * dw_stride + cols, mask=cols_ok, other=0.0)
        else:
            weight = tl.load(dw_ptr + cols * 9 + tap, mask=cols_ok, other=0.0)
        out += y * weight[None, :]
    return rounded(out, DOT_DTYPE, EMULATED)


@triton.jit
def pointwise_depthwise(
    normed, inside, w_ptr, row_stride, dw_ptr, col0, valid, channels, scratch,
    BLOCK_C: tl.constexpr, HALO_P: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    OUT_P: tl.constexpr, COLS: tl.constexpr, CHUNK: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, EMULATED: tl.constexpr, TAP_MAJOR: tl.constexpr,
):  # fmt: skip
    """``dwconv3x3(conv1x1(normed))`` onto the columns ``col0 + j`` (``j < valid``) at the output
    tile's pixels, through ``scratch``; [OUT_P, COLS]. (``w``: [channels, row_stride]; ``dw``:
    [row_stride, 9], or [9, row_stride] ``TAP_MAJOR``.)"""
    project_to_scratch(
        normed, inside, w_ptr, row_stride, col0, valid, channels, scratch,
        BLOCK_C, HALO_P, COLS, CHUNK, DOT_DTYPE, PRECISION, EMULATED,
    )  # fmt: skip
    cols = col0 + tl.arange(0, COLS)
    cols_ok = tl.arange(0, COLS) < valid
    tl.debug_barrier()  # the whole halo tile is written before any thread reads a neighbour
    out = depthwise_from_scratch(
        scratch, dw_ptr, row_stride, cols, cols_ok, TILE_H, TILE_W, OUT_P, COLS, DOT_DTYPE, EMULATED, TAP_MAJOR
    )
    tl.debug_barrier()  # every read is done before the scratch is written again
    return out


@triton.jit
def output_pixels(n, tile_h, tile_w, height, width, TILE_H: tl.constexpr, TILE_W: tl.constexpr, OUT_P: tl.constexpr):
    """The output tile's pixel indices (flattened over the batch) and which lie in the image."""
    op = tl.arange(0, OUT_P)
    row, col = tile_h * TILE_H + op // TILE_W, tile_w * TILE_W + op % TILE_W
    inside = (op < TILE_H * TILE_W) & (row < height) & (col < width)
    return (n * height + row).to(tl.int64) * width + col, inside


@triton.jit
def tile_of(t, tile_columns, tile_rows):
    """The output tile ``t`` of a map cut into ``tile_columns`` x ``tile_rows`` tiles per sample:
    its column, its row and its sample."""
    return t % tile_columns, (t // tile_columns) % tile_rows, t // (tile_columns * tile_rows)


@triton.jit
def gdfn_residual_kernel(
    x_ptr, v_ptr, mt_ptr, out_ptr, scratch_ptr, ln_w_ptr, ln_b_ptr, w1_ptr, w2_ptr, dw1_ptr, dw2_ptr, wo_ptr,
    height, width, channels, hidden_padded, tile_columns, tile_rows, tiles,
    BLOCK_C: tl.constexpr, SLICE: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    HALO_P: tl.constexpr, OUT_P: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    EMULATED: tl.constexpr, TAP_MAJOR: tl.constexpr, WITH_ATTENTION: tl.constexpr, OUT_DTYPE: tl.constexpr,
):  # fmt: skip
    """``x + GDFN(LayerNorm(x))`` (channels-last maps; weights prepared by
    ``fused_kernels.gdfn_residual``). ``WITH_ATTENTION``: of ``x + v @ M^T`` instead, the block's
    attention applied first (``v``, ``mt``: see ``with_attention``). Each program takes every
    num_programs-th output tile, through a scratch tile of its own (see ``fused_kernels._Launch``)."""
    program = tl.program_id(0)
    scratch = scratch_ptr + program.to(tl.int64) * (HALO_P * SLICE)
    for t in range(program, tiles, tl.num_programs(0)):
        tile_w, tile_h, n = tile_of(t, tile_columns, tile_rows)
        pixel, inside = halo_pixels(n, tile_h, tile_w, height, width, TILE_H, TILE_W, HALO_P)
        x = load_rows(x_ptr, pixel, inside, channels, BLOCK_C)
        if WITH_ATTENTION:
            x = with_attention(x, v_ptr, mt_ptr, pixel, inside, n, channels, BLOCK_C, DOT_DTYPE, PRECISION, EMULATED)
        normed = layer_norm_rows(x, ln_w_ptr, ln_b_ptr, channels, BLOCK_C, DOT_DTYPE, EMULATED)

        acc = tl.zeros((OUT_P, BLOCK_C), dtype=tl.float32)
        for start in range(0, hidden_padded, SLICE):
            hid = start + tl.arange(0, SLICE)
            d1 = pointwise_depthwise(
                normed, inside, w1_ptr, hidden_padded, dw1_ptr, start, SLICE, channels, scratch,
                BLOCK_C, HALO_P, TILE_H, TILE_W, OUT_P, SLICE, SLICE, DOT_DTYPE, PRECISION, EMULATED, TAP_MAJOR,
            )  # fmt: skip
            d2 = pointwise_depthwise(
                normed, inside, w2_ptr, hidden_padded, dw2_ptr, start, SLICE, channels, scratch,
                BLOCK_C, HALO_P, TILE_H, TILE_W, OUT_P, SLICE, SLICE, DOT_DTYPE, PRECISION, EMULATED, TAP_MAJOR,
            )  # fmt: skip

            gated = 0.5 * d1 * (1.0 + tl.math.erf(d1 * 0.7071067811865476)) * d2  # exact GELU, as F.gelu
            ch = tl.arange(0, BLOCK_C)
            wo = tl.load(wo_ptr + hid[:, None] * channels + ch[None, :], mask=(ch < channels)[None, :], other=0.0)
            acc += dot(operand(gated, DOT_DTYPE, EMULATED), operand(wo, DOT_DTYPE, EMULATED), PRECISION, EMULATED)

        pixel, inside_out = output_pixels(n, tile_h, tile_w, height, width, TILE_H, TILE_W, OUT_P)
        ch = tl.arange(0, BLOCK_C)
        mask = inside_out[:, None] & (ch < channels)[None, :]
        x = load_rows(x_ptr, pixel, inside_out, channels, BLOCK_C)
        if WITH_ATTENTION:  # the residual is the attention's output (recomputed: it is not in registers here)
            x = with_attention(
                x, v_ptr, mt_ptr, pixel, inside_out, n, channels, BLOCK_C, DOT_DTYPE, PRECISION, EMULATED
            )
        result = rounded(x + acc, OUT_DTYPE, EMULATED)  # rounded once (as the inference kernels' addmm)
        tl.store(out_ptr + pixel[:, None] * channels + ch[None, :], result.to(OUT_DTYPE), mask=mask)


@triton.jit
def attention_statistics_kernel(
    xq_ptr, xkv_ptr, values_ptr, gram_ptr, q_sq_ptr, k_sq_ptr, scratch_ptr,
    lnq_w_ptr, lnq_b_ptr, lnkv_w_ptr, lnkv_b_ptr, wq_ptr, wk_ptr, wv_ptr, dwq_ptr, dwk_ptr, dwv_ptr,
    height, width, channels, heads, head_width, tile_columns, tile_rows, tiles,
    BLOCK_C: tl.constexpr, HEAD_P: tl.constexpr, CHUNK: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    HALO_P: tl.constexpr, OUT_P: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    EMULATED: tl.constexpr, TAP_MAJOR: tl.constexpr, SAME_INPUT: tl.constexpr,
):  # fmt: skip
    """A channel attention's pass over the map, head by head: q = dwconv(conv1x1(LNq(xq)))
    and k, v = dwconv(conv1x1(LNkv(xkv))) (MDTA: one map and one LayerNorm, ``SAME_INPUT``; TCPM's
    cross-attention: two). Adds each tile's share of each head's Gram matrix q_h^T k_h and of the
    squared norms of q and k to ``gram`` [N, heads, d, d] and ``q_sq``, ``k_sq`` [N, C] (float32),
    and writes v to ``values`` [N, H*W, C]. (``q``/``k``/``v`` weights: [C, C], input-major.) Each
    projection is made CHUNK columns at a time (see ``project_to_scratch``). Each program takes
    every num_programs-th output tile, as ``gdfn_residual_kernel``."""
    program = tl.program_id(0)
    scratch = scratch_ptr + program.to(tl.int64) * (HALO_P * HEAD_P)
    for t in range(program, tiles, tl.num_programs(0)):
        tile_w, tile_h, n = tile_of(t, tile_columns, tile_rows)
        pixel_h, inside = halo_pixels(n, tile_h, tile_w, height, width, TILE_H, TILE_W, HALO_P)
        xq = load_rows(xq_ptr, pixel_h, inside, channels, BLOCK_C)
        normed_q = layer_norm_rows(xq, lnq_w_ptr, lnq_b_ptr, channels, BLOCK_C, DOT_DTYPE, EMULATED)
        if SAME_INPUT:
            normed_kv = normed_q
        else:
            xkv = load_rows(xkv_ptr, pixel_h, inside, channels, BLOCK_C)
            normed_kv = layer_norm_rows(xkv, lnkv_w_ptr, lnkv_b_ptr, channels, BLOCK_C, DOT_DTYPE, EMULATED)
        pixel, inside_out = output_pixels(n, tile_h, tile_w, height, width, TILE_H, TILE_W, OUT_P)
        j = tl.arange(0, HEAD_P)
        j_ok = j < head_width

        for h in range(heads):
            col0 = h * head_width
            cols = col0 + j
            # v, then q, then k through the one scratch tile; pixels outside the image count as 0.
            # v is written first, so that it is not held with q and k.
            v = pointwise_depthwise(
                normed_kv, inside, wv_ptr, channels, dwv_ptr, col0, head_width, channels, scratch,
                BLOCK_C, HALO_P, TILE_H, TILE_W, OUT_P, HEAD_P, CHUNK, DOT_DTYPE, PRECISION, EMULATED, TAP_MAJOR,
            )  # fmt: skip
            out = values_ptr + pixel[:, None] * channels + cols[None, :]
            tl.store(out, v.to(values_ptr.dtype.element_ty), mask=inside_out[:, None] & j_ok[None, :])
            q = pointwise_depthwise(
                normed_q, inside, wq_ptr, channels, dwq_ptr, col0, head_width, channels, scratch,
                BLOCK_C, HALO_P, TILE_H, TILE_W, OUT_P, HEAD_P, CHUNK, DOT_DTYPE, PRECISION, EMULATED, TAP_MAJOR,
            )  # fmt: skip
            q = tl.where(inside_out[:, None], q, 0.0)
            k = pointwise_depthwise(
                normed_kv, inside, wk_ptr, channels, dwk_ptr, col0, head_width, channels, scratch,
                BLOCK_C, HALO_P, TILE_H, TILE_W, OUT_P, HEAD_P, CHUNK, DOT_DTYPE, PRECISION, EMULATED, TAP_MAJOR,
            )  # fmt: skip
            k = tl.where(inside_out[:, None], k, 0.0)

            gram = dot(operand(tl.trans(q), DOT_DTYPE, EMULATED), operand(k, DOT_DTYPE, EMULATED), PRECISION, EMULATED)
            g_offsets = ((n * heads + h) * head_width + j[:, None]) * head_width + j[None, :]
            # relaxed: only the sums matter, and they are read after the kernel has ended
            tl.atomic_add(gram_ptr + g_offsets, gram, mask=j_ok[:, None] & j_ok[None, :], sem="relaxed")
            tl.atomic_add(q_sq_ptr + n * channels + cols, tl.sum(q * q, axis=0), mask=j_ok, sem="relaxed")
            tl.atomic_add(k_sq_ptr + n * channels + cols, tl.sum(k * k, axis=0), mask=j_ok, sem="relaxed")
