"""rope_write: rotate the fresh q/k rows at their true positions and scatter k, v (and the layer
inputs ElasticCache keeps) into one layer's cache in place, in one launch.

One program per fresh row (i, j) of the r x n block, every head at once, with t = index[i, j]:

    out[i, h, j]              = rotate(q[i, h, j])      h < Hq
    keys[rows[i], h, t]       = rotate(k[i, h, j])      h < Hkv
    values[rows[i], h, t]     = v[i, h, j]
    inputs[rows[i], t]        = hidden[i, j]            (only with inputs/hidden)

Rotate-half RoPE with the tables' row (i, or 0 when shared) at j: splitting x and the tables at D/2,

    rotate(x1, x2) = (x1 cos1 - x2 sin1,  x2 cos2 + x1 sin2)

in the tables' dtype as apply_rotary: x is cast to that dtype, the products are taken in fp32, and
the result is rounded to the tables' dtype, then to x's. Repeated (rows[i], t) carry identical
values, so the order of those writes does not matter. The caches are contiguous; every other tensor
may be strided.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dllm_accel.models.base import Rope

MAX_BLOCK_MODEL = 1024  # hidden is copied in chunks of this many features


@triton.jit
def _rotate_heads(
    src,
    src_stride_h,
    src_stride_d,
    dst,
    dst_stride_h,
    dst_stride_d,
    n_heads,
    half,
    row_ok,
    cos1,
    cos2,
    sin1,
    sin2,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """dst[h, :] = rotate(src[h, :]) for h < n_heads; src and dst point at head 0 of one row."""
    heads = tl.arange(0, BLOCK_H)[:, None].to(tl.int64)  # heads * stride_h may pass 2^31
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < n_heads) & (cols < half)
    first = src + heads * src_stride_h + cols * src_stride_d
    table_dtype = cos1.dtype
    x1 = tl.load(first, mask=mask, other=0.0).to(table_dtype).to(tl.float32)
    x2 = tl.load(first + half * src_stride_d, mask=mask, other=0.0).to(table_dtype).to(tl.float32)
    y1 = x1 * cos1.to(tl.float32) - x2 * sin1.to(tl.float32)
    y2 = x2 * cos2.to(tl.float32) + x1 * sin2.to(tl.float32)
    out_dtype = dst.dtype.element_ty
    target = dst + heads * dst_stride_h + cols * dst_stride_d
    tl.store(target, y1.to(table_dtype).to(out_dtype), mask=mask & row_ok)
    tl.store(target + half * dst_stride_d, y2.to(table_dtype).to(out_dtype), mask=mask & row_ok)


@triton.jit
def _copy_heads(
    src,
    src_stride_h,
    src_stride_d,
    dst,
    dst_stride_h,
    n_heads,
    head_dim,
    row_ok,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dst[h, :] = src[h, :] for h < n_heads; dst rows are contiguous."""
    heads = tl.arange(0, BLOCK_H)[:, None].to(tl.int64)  # heads * stride_h may pass 2^31
    cols = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < n_heads) & (cols < head_dim)
    x = tl.load(src + heads * src_stride_h + cols * src_stride_d, mask=mask, other=0.0)
    tl.store(dst + heads * dst_stride_h + cols, x.to(dst.dtype.element_ty), mask=mask & row_ok)


@triton.jit
def _rope_write_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    keys_ptr,
    values_ptr,
    rows_ptr,
    index_ptr,
    inputs_ptr,
    hidden_ptr,
    n,
    n_heads,
    n_kv_heads,
    half,
    n_cache_rows,
    length,
    d_model,
    q_stride_r,
    q_stride_h,
    q_stride_n,
    q_stride_d,
    k_stride_r,
    k_stride_h,
    k_stride_n,
    k_stride_d,
    v_stride_r,
    v_stride_h,
    v_stride_n,
    v_stride_d,
    cos_stride_r,
    cos_stride_n,
    cos_stride_d,
    sin_stride_r,
    sin_stride_n,
    sin_stride_d,
    rows_stride,
    index_stride_r,
    index_stride_n,
    hidden_stride_r,
    hidden_stride_n,
    hidden_stride_d,
    HAS_INPUTS: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_MODEL: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    i = (pid // n).to(tl.int64)
    j = (pid % n).to(tl.int64)
    head_dim = 2 * half

    # where this row goes: model row rows[i], canvas position t; a position outside the cache writes
    # nothing
    row = tl.load(rows_ptr + i * rows_stride)
    t = tl.load(index_ptr + i * index_stride_r + j * index_stride_n)
    row_ok = (row >= 0) & (row < n_cache_rows) & (t >= 0) & (t < length)

    # the tables' halves at (i or 0, j)
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    in_half = cols < half
    cos_row = cos_ptr + i * cos_stride_r + j * cos_stride_n + cols * cos_stride_d
    sin_row = sin_ptr + i * sin_stride_r + j * sin_stride_n + cols * sin_stride_d
    cos1 = tl.load(cos_row, mask=in_half, other=0.0)
    cos2 = tl.load(cos_row + half * cos_stride_d, mask=in_half, other=0.0)
    sin1 = tl.load(sin_row, mask=in_half, other=0.0)
    sin2 = tl.load(sin_row + half * sin_stride_d, mask=in_half, other=0.0)

    # q: rotated into the contiguous output [r, Hq, n, D]
    q_row = q_ptr + i * q_stride_r + j * q_stride_n
    out_row = out_ptr + (i * n_heads * n + j) * head_dim
    _rotate_heads(
        q_row,
        q_stride_h,
        q_stride_d,
        out_row,
        n * head_dim,
        1,
        n_heads,
        half,
        True,
        cos1,
        cos2,
        sin1,
        sin2,
        BLOCK_HQ,
        BLOCK_HALF,
    )

    # k rotated and v as is, into the caches [R, Hkv, T, D] at (row, :, t)
    cache_row = (row * n_kv_heads * length + t) * head_dim
    k_row = k_ptr + i * k_stride_r + j * k_stride_n
    _rotate_heads(
        k_row,
        k_stride_h,
        k_stride_d,
        keys_ptr + cache_row,
        length * head_dim,
        1,
        n_kv_heads,
        half,
        row_ok,
        cos1,
        cos2,
        sin1,
        sin2,
        BLOCK_HKV,
        BLOCK_HALF,
    )
    v_row = v_ptr + i * v_stride_r + j * v_stride_n
    _copy_heads(
        v_row,
        v_stride_h,
        v_stride_d,
        values_ptr + cache_row,
        length * head_dim,
        n_kv_heads,
        head_dim,
        row_ok,
        BLOCK_HKV,
        2 * BLOCK_HALF,
    )

    # hidden [r, n, d] -> inputs [R, T, d] at (row, t), BLOCK_MODEL features at a time
    if HAS_INPUTS:
        features = tl.arange(0, BLOCK_MODEL)
        src = hidden_ptr + i * hidden_stride_r + j * hidden_stride_n
        dst = inputs_ptr + (row * length + t) * d_model
        for start in range(0, d_model, BLOCK_MODEL):
            at = start + features
            mask = at < d_model
            x = tl.load(src + at * hidden_stride_d, mask=mask, other=0.0)
            tl.store(dst + at, x.to(inputs_ptr.dtype.element_ty), mask=mask & row_ok)


def _table_strides(table: torch.Tensor) -> tuple[int, int, int]:
    """(row, position, feature) strides of a [r or 1, 1, n, D] table; 0 for a row shared by all."""
    return (table.stride(0) if table.shape[0] != 1 else 0), table.stride(-2), table.stride(-1)


def rope_write(
    q, k, v, rope: Rope, keys, values, rows, index, *, inputs=None, hidden=None
) -> torch.Tensor:
    """q [r, Hq, n, D], k, v [r, Hkv, n, D], rope tables [r or 1, 1, n, D]; keys, values [R, Hkv, T,
    D] and inputs [R, T, d] contiguous, written in place at rows [r], index [r, n]; hidden [r, n,
    d]. -> q rotated [r, Hq, n, D] (contiguous, q's dtype). Checked by dllm_accel.ops."""
    r, n_heads, n, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"rotate-half RoPE needs an even head dim, got {head_dim}")
    out = torch.empty((r, n_heads, n, head_dim), dtype=q.dtype, device=q.device)
    if r * n == 0:
        return out
    n_cache_rows, n_kv_heads, length, _ = keys.shape
    has_inputs = inputs is not None
    d_model = inputs.shape[-1] if has_inputs else 0
    hidden_strides = hidden.stride() if has_inputs else (0, 0, 0)
    half = head_dim // 2
    cos, sin = rope
    _rope_write_kernel[(r * n,)](
        q,
        k,
        v,
        cos,
        sin,
        out,
        keys,
        values,
        rows,
        index,
        inputs if has_inputs else keys,
        hidden if has_inputs else keys,
        n,
        n_heads,
        n_kv_heads,
        half,
        n_cache_rows,
        length,
        d_model,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *_table_strides(cos),
        *_table_strides(sin),
        rows.stride(0),
        *index.stride(),
        *hidden_strides,
        HAS_INPUTS=has_inputs,
        **_config(n_heads, n_kv_heads, head_dim, d_model),
    )
    return out


def _config(n_heads: int, n_kv_heads: int, head_dim: int, d_model: int) -> dict:
    """Every head of a row in one tile, half a head dim wide; the layer input in chunks of at most
    MAX_BLOCK_MODEL features (d_model 0: no inputs); 8 warps once a tile holds 2048 elements (at 4,
    an 8B shape's 32 heads x 64 spilled on sm_80 and sm_90: kernels/aot.py)."""
    block_hq, block_half = triton.next_power_of_2(n_heads), triton.next_power_of_2(head_dim // 2)
    return {
        "BLOCK_HQ": block_hq,
        "BLOCK_HKV": triton.next_power_of_2(n_kv_heads),
        "BLOCK_HALF": block_half,
        "BLOCK_MODEL": min(MAX_BLOCK_MODEL, triton.next_power_of_2(max(d_model, 1))),
        "num_warps": 8 if block_hq * block_half >= 2048 else 4,
    }
