"""partial_attention: a few query rows against the cached K/V, with the attention mass each key
receives.

    out, mass = partial_attention(q, k, v, key_mask, mass_weights=w)

q [r, Hq, n, D]; k, v [r, Hkv, T, D] (query head h reads key head h // G, G = Hq // Hkv); key_mask
[r, T] bool (True = attend) or None; mass_weights [r, n] or None. Twin: dllm_accel.ops.reference.

Two passes, neither writes the [r, Hq, n, T] probabilities:
  1. _attention_fwd, grid (row tiles, Hkv, r): flash-attention style online softmax over key tiles
     in fp32 -> out, and (when mass is asked for) the log-sum-exp of each query row.
  2. _attention_mass, grid (key tiles, r): one program owns mass[r, t-tile] and loops over every
     query row; it recomputes the scores and turns them into probabilities with the saved
     log-sum-exp, so the sum is deterministic (no atomics).

Rows are grouped per (r, kv head): the G query heads that share a key head and their n queries form
one axis of G * n rows, tiled by BLOCK_M, so each K/V tile a program loads serves all of them (GQA
reads K/V once per group, never a repeated copy) and a small n still fills a tile.

Supported: fp32, fp16, bf16 (q may differ from k/v: the scores use the promoted dtype); any T, n;
head dims 1..256 (padded to a power of two >= 16 with masked loads); any strides. Rows whose keys
are all masked get out = 0 and add nothing to mass (the twin gives NaN there).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256
LOG2E = math.log2(math.e)  # scores in base 2: exp(x) = exp2(x * log2(e))
TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _attention_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    out_ptr,
    lse_ptr,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skt,
    skd,
    svb,
    svh,
    svt,
    svd,
    smb,
    smt,
    sob,
    soh,
    son,
    sod,
    n_heads,
    n,
    length,
    head_dim,
    qk_scale,
    GROUP: tl.constexpr,
    HAS_MASK: tl.constexpr,
    STORE_LSE: tl.constexpr,
    QK_DTYPE: tl.constexpr,
    QK_PRECISION: tl.constexpr,
    PV_DTYPE: tl.constexpr,
    PV_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program: BLOCK_M of the G * n query rows of (batch row b, kv head) against all T keys.

    Scores live in base 2: s = q.k * scale * log2(e), so exp2(s - m) = exp(q.k * scale - m'). Per
    row it keeps the running max m, the running sum l = sum exp2(s - m) and acc = sum exp2(s - m) v,
    both rescaled by exp2(m_old - m_new) when the max grows; at the end out = acc / l,
    lse = m + log2(l)."""
    # int64 scalars (as every batch-row and kv-head index times a stride): b * stride_b and
    # kv_head * stride_h pass 2^31 elements at long contexts. The [BLOCK_M] row vectors stay int32
    # (they index the few query rows; 64-bit vectors cost registers and spilled on sm_80)
    tile, kv_head = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rows = (tile * BLOCK_M).to(tl.int32) + tl.arange(0, BLOCK_M)  # the G * n rows of this kv head
    row_ok = rows < GROUP * n
    head = (kv_head * GROUP).to(tl.int32) + rows // n  # [BLOCK_M] query head of each row
    query = rows % n  # [BLOCK_M] query index within the head
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim

    q_rows = q_ptr + b * sqb + head * sqh + query * sqn
    q = tl.load(
        q_rows[:, None] + dims[None, :] * sqd, mask=row_ok[:, None] & dim_ok[None, :], other=0.0
    )
    q = q.to(QK_DTYPE)  # [BLOCK_M, BLOCK_D]
    k_head = k_ptr + b * skb + kv_head * skh
    v_head = v_ptr + b * svb + kv_head * svh

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)  # noqa: E741 (the l of the softmax)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, length, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < length
        # s = q k^T * scale * log2(e) over this key tile, -inf where a key is padding or masked
        k_t = tl.load(
            k_head + keys[None, :] * skt + dims[:, None] * skd,
            mask=key_ok[None, :] & dim_ok[:, None],
            other=0.0,
        ).to(QK_DTYPE)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k_t, input_precision=QK_PRECISION) * qk_scale
        attend = key_ok
        if HAS_MASK:
            attend &= tl.load(mask_ptr + b * smb + keys * smt, mask=key_ok, other=0) != 0
        s = tl.where(attend[None, :], s, float("-inf"))
        # m_new = max(m, max_t s); a row with no key yet keeps m = -inf, measured from 0 so nothing
        # is NaN
        m_new = tl.maximum(m, tl.max(s, 1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - base[:, None])  # [BLOCK_M, BLOCK_N], 0 at masked keys
        rescale = tl.exp2(m - base)
        l = l * rescale + tl.sum(p, 1)  # noqa: E741
        v = tl.load(
            v_head + keys[:, None] * svt + dims[None, :] * svd,
            mask=key_ok[:, None] & dim_ok[None, :],
            other=0.0,
        ).to(PV_DTYPE)  # [BLOCK_N, BLOCK_D]
        acc = acc * rescale[:, None] + tl.dot(p.to(PV_DTYPE), v, input_precision=PV_PRECISION)
        m = m_new

    # out = acc / l; a row that attended no key (l = 0) gets 0, and lse = +inf so pass 2 sees p = 0
    attended = l > 0
    out = tl.where(attended[:, None], acc / tl.where(attended, l, 1.0)[:, None], 0.0)
    out_rows = out_ptr + b * sob + head * soh + query * son
    tl.store(
        out_rows[:, None] + dims[None, :] * sod,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    if STORE_LSE:  # lse [r, Hq, n] contiguous, base 2
        lse = tl.where(attended, m + tl.log2(tl.where(attended, l, 1.0)), float("inf"))
        tl.store(lse_ptr + (b * n_heads + head) * n + query, lse, mask=row_ok)


@triton.jit
def _attention_mass(
    q_ptr,
    k_ptr,
    mask_ptr,
    lse_ptr,
    w_ptr,
    mass_ptr,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skt,
    skd,
    smb,
    smt,
    swb,
    swn,
    n_kv_heads,
    n,
    length,
    head_dim,
    qk_scale,
    GROUP: tl.constexpr,
    HAS_MASK: tl.constexpr,
    QK_DTYPE: tl.constexpr,
    QK_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program owns mass[b, t-tile]: mass[t] = sum over heads h and queries i of
    w[i] * p[h, i, t], with p = exp2(s - lse) recomputed from the scores and pass 1's log-sum-exp
    (base 2)."""
    tile, b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < length
    attend = key_ok
    if HAS_MASK:
        attend &= tl.load(mask_ptr + b * smb + keys * smt, mask=key_ok, other=0) != 0
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim

    mass = tl.zeros([BLOCK_N], tl.float32)
    for kv in range(n_kv_heads):
        kv_head = tl.cast(kv, tl.int64)
        k_t = tl.load(
            k_ptr + b * skb + kv_head * skh + keys[None, :] * skt + dims[:, None] * skd,
            mask=key_ok[None, :] & dim_ok[:, None],
            other=0.0,
        ).to(QK_DTYPE)  # [BLOCK_D, BLOCK_N]
        for start in range(0, GROUP * n, BLOCK_M):  # the G * n query rows reading this kv head
            rows = start + tl.arange(0, BLOCK_M)
            row_ok = rows < GROUP * n
            head = kv_head * GROUP + rows // n
            query = rows % n
            q_rows = q_ptr + b * sqb + head * sqh + query * sqn
            q = tl.load(
                q_rows[:, None] + dims[None, :] * sqd,
                mask=row_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            lse = tl.load(
                lse_ptr + (b * n_kv_heads * GROUP + head) * n + query,
                mask=row_ok,
                other=float("inf"),
            )
            w = tl.load(w_ptr + b * swb + query * swn, mask=row_ok, other=0.0).to(tl.float32)
            # p = exp2(s - lse): the row's softmax probability of each key in the tile
            s = tl.dot(q.to(QK_DTYPE), k_t, input_precision=QK_PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(row_ok[:, None] & attend[None, :], p, 0.0)
            mass += tl.sum(p * w[:, None], 0)
    tl.store(mass_ptr + b * length + keys, mass, mask=key_ok)


def partial_attention(q, k, v, key_mask=None, *, mass_weights=None):
    """-> (out [r, Hq, n, D] in v's dtype, mass [r, T] fp32 or None); arguments checked by
    dllm_accel.ops."""
    r, n_heads, n, head_dim = q.shape
    n_kv_heads, length = k.shape[1], k.shape[2]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"the partial_attention kernel supports head dims 1..{MAX_HEAD_DIM}, got {head_dim}"
        )
    group = n_heads // n_kv_heads
    qk_dtype = torch.promote_types(q.dtype, k.dtype)
    pv_dtype = v.dtype  # p is cast to v's dtype for the p @ v product, as in flash attention
    config = _config(group * n, head_dim, torch.promote_types(qk_dtype, pv_dtype))
    scale = head_dim**-0.5 * LOG2E
    has_mask = key_mask is not None
    mask = key_mask.view(torch.uint8) if has_mask else q
    mask_strides = key_mask.stride() if has_mask else (0, 0)

    out = _empty((r, n_heads, n, head_dim), v.dtype, q.device)
    lse = _empty((r, n_heads, n), torch.float32, q.device) if mass_weights is not None else out
    grid = (triton.cdiv(group * n, config["BLOCK_M"]), n_kv_heads, r)
    _attention_fwd[grid](
        q,
        k,
        v,
        mask,
        out,
        lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *mask_strides,
        *out.stride(),
        n_heads,
        n,
        length,
        head_dim,
        scale,
        GROUP=group,
        HAS_MASK=has_mask,
        STORE_LSE=mass_weights is not None,
        QK_DTYPE=TL_DTYPES[qk_dtype],
        QK_PRECISION=_precision(qk_dtype),
        PV_DTYPE=TL_DTYPES[pv_dtype],
        PV_PRECISION=_precision(pv_dtype),
        **config,
    )
    if mass_weights is None:
        return out, None

    mass = _empty((r, length), torch.float32, q.device)
    if length:
        grid = (triton.cdiv(length, config["BLOCK_N"]), r)
        _attention_mass[grid](
            q,
            k,
            mask,
            lse,
            mass_weights,
            mass,
            *q.stride(),
            *k.stride(),
            *mask_strides,
            *mass_weights.stride(),
            n_kv_heads,
            n,
            length,
            head_dim,
            scale,
            GROUP=group,
            HAS_MASK=has_mask,
            QK_DTYPE=TL_DTYPES[qk_dtype],
            QK_PRECISION=_precision(qk_dtype),
            **config,
        )
    return out, mass


def _config(rows: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes: every tl.dot dimension >= 16; a row tile no wider than the G * n rows need (up to
    64; in fp32 32, and 16 above head dim 64); key tiles narrow enough that acc [BLOCK_M, BLOCK_D]
    and a K/V tile fit in registers: 32 keys up to head dim 64, 16 above. Ahead-of-time compiles
    for sm_80 and sm_90 (kernels/aot.py) spilled with wider tiles: fp32 at 64 x 64 (and a few bytes
    at 32 rows x 32 keys, head dim 128), 16-bit at 64 rows x 32 keys, head dim 128, and 32 x 64 at
    head dim 32 on sm_80."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    wide = dtype == torch.float32
    cap = (16 if block_d > 64 else 32) if wide else 64
    block_m = min(cap, max(16, triton.next_power_of_2(rows)))
    block_n = 32 if block_d <= 64 else 16
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_D": block_d,
        "num_warps": 4 if block_d <= 64 else 8,
    }


def _precision(dtype: torch.dtype) -> str:
    """fp32 products in full precision (TF32 would err ~1e3 x more than the fp32 twin); 16-bit ones
    are exact."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every buffer the launcher allocates (tests swap in a NaN-filled one to catch an unwritten
    element)."""
    return torch.empty(shape, dtype=dtype, device=device)
