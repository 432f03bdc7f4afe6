"""attention_drift: how far the tracked query rows' attention moved across this step's cache writes.

For each computed row, tracked row i and query head h, with K_now = k (the keys after the writes)
and K_before = k with the written positions restored from keys_before:

    p_before[h, t] = softmax_t(q_before[h, i] . K_before[kv(h), t] / sqrt(D))
    p_now[h, t]    = softmax_t(q_now[h, i] . K_now[kv(h), t] / sqrt(D))

axis 'keys':  similarity = mean_h cos_t(p_before[h, :], p_now[h, :]) axis 'heads': similarity = sum
over attended t of cos_h(p_before[:, t], p_now[:, t]) / (number attended)

with each norm of a cosine clamped at COSINE_EPS (the torch twin,
dllm_accel.ops.reference.attention_drift). No probability row ever reaches memory:

- `_head_kernel`, one program per (computed row, tracked row, query head), streams the keys once
  with an online softmax. For 'keys' it carries, beside the running max and sum of each softmax, the
  rescaled sums sum p_b^2, sum p_n^2 and sum p_b p_n, so one pass gives that head's cosine; the
  launcher averages the heads. For 'heads' it stores the two log-sum-exps, which the second kernel
  needs before it can see any probability.
- `_key_tile_kernel`, one program per (computed row, tracked row, key tile), recomputes both
  probabilities of its keys head by head from those log-sum-exps, takes the cosine over heads of
  each key, and stores the sum over its attended keys; the launcher adds the tiles and divides by
  the count.

Every program holds a single query row, so scores are a matrix-vector product: a broadcast multiply
of the [BLOCK_T, BLOCK_D] key tile by the query and a sum over D, in fp32. tl.dot would need at
least 16 query rows; padding one row to 16 would waste 15/16 of it, and this loop is bound by
reading the keys anyway. Splitting the work by head (and by key tile for 'heads') rather than
packing the tracked rows together keeps the GPU busy at batch 1; the programs of one key/value head
re-read the same keys, which the L2 cache mostly absorbs. Each output is summed in a fixed order (no
atomics), so results are deterministic. A row with no attended key gives NaN, as in the twin.
Compiled for sm_90 with head dims 64 and 128: no register spills when the head dim is contiguous
(stride 1, as in the caches); a strided head dim stays correct but spills.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from dllm_accel.ops.reference import COSINE_EPS

NUM_WARPS = 4
TILE_ELEMENTS = 4096  # keys x head dim held per key tile: 32 fp32 registers a thread at 4 warps


@triton.jit
def _load_keys(
    k_head, kb_head, slot_row, t, d, length, head_dim, k_st, k_sd, kb_sn, kb_sd, slot_st
):
    """The key tile at positions t, after this step's writes and before them, in fp32: a position
    whose slot is >= 0 was written this step, and its key before the write is keys_before[slot]."""
    t_in = t < length
    tile = t_in[:, None] & (d < head_dim)[None, :]
    now = tl.load(k_head + t[:, None] * k_st + d[None, :] * k_sd, mask=tile, other=0.0).to(
        tl.float32
    )
    slot = tl.load(slot_row + t * slot_st, mask=t_in, other=-1)
    written = slot >= 0
    old = tl.load(
        kb_head + tl.maximum(slot, 0)[:, None] * kb_sn + d[None, :] * kb_sd,
        mask=tile & written[:, None],
        other=0.0,
    ).to(tl.float32)
    return tl.where(written[:, None], old, now), now


@triton.jit
def _attended(mask_row, t, length, mask_st, HAS_MASK: tl.constexpr):
    """True where key t exists and key_mask lets it be attended."""
    attend = t < length
    if HAS_MASK:
        attend = attend & (tl.load(mask_row + t * mask_st, mask=attend, other=0) != 0)
    return attend


@triton.jit
def _load_query(q_ptr, row, i, head, d, head_dim, q_sr, q_sh, q_sm, q_sd, scale):
    """q[row, head, i, :] in fp32, times log2(e)/sqrt(D), so that exp2(q . k - lse) is a
    probability."""
    q = tl.load(
        q_ptr + row * q_sr + head * q_sh + i * q_sm + d * q_sd, mask=d < head_dim, other=0.0
    )
    return q.to(tl.float32) * scale


@triton.jit
def _scores(q, keys, attend):
    """log2-scaled scores of one query row against a key tile; -inf where the key is not
    attended."""
    return tl.where(attend, tl.sum(keys * q[None, :], axis=1), float("-inf"))


@triton.jit
def _head_kernel(
    qb_ptr,
    qn_ptr,
    k_ptr,
    kb_ptr,
    slot_ptr,
    mask_ptr,
    out_ptr,
    n_tracked,
    n_heads,
    group,
    length,
    head_dim,
    scale,
    qb_sr,
    qb_sh,
    qb_sm,
    qb_sd,
    qn_sr,
    qn_sh,
    qn_sm,
    qn_sd,
    k_sr,
    k_sh,
    k_st,
    k_sd,
    kb_sr,
    kb_sh,
    kb_sn,
    kb_sd,
    slot_sr,
    slot_st,
    mask_sr,
    mask_st,
    KEYS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (row * m + i, h). KEYS: out[row, i, h] = cos_t(p_before[h], p_now[h]); else out[row,
    i, h, :] = the log2-sum-exp2 of the before and now scores."""
    pid = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    row, i = pid // n_tracked, pid % n_tracked
    d = tl.arange(0, BLOCK_D)
    q_b = _load_query(qb_ptr, row, i, head, d, head_dim, qb_sr, qb_sh, qb_sm, qb_sd, scale)
    q_n = _load_query(qn_ptr, row, i, head, d, head_dim, qn_sr, qn_sh, qn_sm, qn_sd, scale)
    k_head = k_ptr + row * k_sr + (head // group) * k_sh
    kb_head = kb_ptr + row * kb_sr + (head // group) * kb_sh
    # Online softmax of both score rows: running maxes m_*, sums l_* = sum 2^(s - m_*), and (KEYS)
    # the sums of
    # products of the unnormalised probabilities, each rescaled by 2^(m_old - m_new) per factor as a
    # max grows.
    # The maxes start finite, so a leading tile with no attended key gives 2^(-inf - m) = 0, never
    # NaN.
    m_b = tl.full((), -1.0e30, tl.float32)
    m_n = tl.full((), -1.0e30, tl.float32)
    l_b = tl.zeros((), tl.float32)
    l_n = tl.zeros((), tl.float32)
    bb = tl.zeros((), tl.float32)
    nn = tl.zeros((), tl.float32)
    bn = tl.zeros((), tl.float32)
    for start in range(0, length, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        attend = _attended(mask_ptr + row * mask_sr, t, length, mask_st, HAS_MASK)
        before, now = _load_keys(
            k_head,
            kb_head,
            slot_ptr + row * slot_sr,
            t,
            d,
            length,
            head_dim,
            k_st,
            k_sd,
            kb_sn,
            kb_sd,
            slot_st,
        )
        s_b = _scores(q_b, before, attend)
        s_n = _scores(q_n, now, attend)
        new_b = tl.maximum(m_b, tl.max(s_b, axis=0))
        new_n = tl.maximum(m_n, tl.max(s_n, axis=0))
        p_b = tl.exp2(s_b - new_b)
        p_n = tl.exp2(s_n - new_n)
        a_b = tl.exp2(m_b - new_b)
        a_n = tl.exp2(m_n - new_n)
        l_b = l_b * a_b + tl.sum(p_b, axis=0)
        l_n = l_n * a_n + tl.sum(p_n, axis=0)
        if KEYS:
            bb = bb * (a_b * a_b) + tl.sum(p_b * p_b, axis=0)
            nn = nn * (a_n * a_n) + tl.sum(p_n * p_n, axis=0)
            bn = bn * (a_b * a_n) + tl.sum(p_b * p_n, axis=0)
        m_b, m_n = new_b, new_n
    if KEYS:
        # p = 2^(s - m) / l, so |p_b| = sqrt(bb) / l_b and p_b . p_n = bn / (l_b l_n).
        norm_b = tl.maximum(tl.sqrt(bb) / l_b, EPS)
        norm_n = tl.maximum(tl.sqrt(nn) / l_n, EPS)
        tl.store(out_ptr + pid * n_heads + head, bn / (l_b * l_n) / (norm_b * norm_n))
    else:
        out = out_ptr + (pid * n_heads + head) * 2
        tl.store(out, m_b + tl.log2(l_b))
        tl.store(out + 1, m_n + tl.log2(l_n))


@triton.jit
def _key_tile_kernel(
    qb_ptr,
    qn_ptr,
    k_ptr,
    kb_ptr,
    slot_ptr,
    mask_ptr,
    lse_ptr,
    out_ptr,
    n_tracked,
    n_heads,
    n_kv,
    group,
    length,
    head_dim,
    scale,
    n_tiles,
    qb_sr,
    qb_sh,
    qb_sm,
    qb_sd,
    qn_sr,
    qn_sh,
    qn_sm,
    qn_sd,
    k_sr,
    k_sh,
    k_st,
    k_sd,
    kb_sr,
    kb_sh,
    kb_sn,
    kb_sd,
    slot_sr,
    slot_st,
    mask_sr,
    mask_st,
    HAS_MASK: tl.constexpr,
    EPS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (row * m + i, tile): out[row, i, tile] = sum over the tile's attended keys t of
    cos_h(p_before[:, t], p_now[:, t]), with p = 2^(s - lse) from _head_kernel's log-sum-exps."""
    pid = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1).to(tl.int64)
    row, i = pid // n_tracked, pid % n_tracked
    d = tl.arange(0, BLOCK_D)
    t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    attend = _attended(mask_ptr + row * mask_sr, t, length, mask_st, HAS_MASK)
    # Per key t, over heads: bb = sum_h p_b^2, nn = sum_h p_n^2, bn = sum_h p_b p_n.
    bb = tl.zeros((BLOCK_T,), tl.float32)
    nn = tl.zeros((BLOCK_T,), tl.float32)
    bn = tl.zeros((BLOCK_T,), tl.float32)
    for kv_index in range(n_kv):  # each key/value head's tile is loaded once for its query heads
        kv = tl.cast(kv_index, tl.int64)  # kv * k_sh passes 2^31 elements at long contexts
        before, now = _load_keys(
            k_ptr + row * k_sr + kv * k_sh,
            kb_ptr + row * kb_sr + kv * kb_sh,
            slot_ptr + row * slot_sr,
            t,
            d,
            length,
            head_dim,
            k_st,
            k_sd,
            kb_sn,
            kb_sd,
            slot_st,
        )
        for j in range(group):
            head = kv * group + j
            q_b = _load_query(qb_ptr, row, i, head, d, head_dim, qb_sr, qb_sh, qb_sm, qb_sd, scale)
            q_n = _load_query(qn_ptr, row, i, head, d, head_dim, qn_sr, qn_sh, qn_sm, qn_sd, scale)
            lse = lse_ptr + (pid * n_heads + head) * 2
            p_b = tl.exp2(_scores(q_b, before, attend) - tl.load(lse))
            p_n = tl.exp2(_scores(q_n, now, attend) - tl.load(lse + 1))
            bb += p_b * p_b
            nn += p_n * p_n
            bn += p_b * p_n
    cosine = bn / (tl.maximum(tl.sqrt(bb), EPS) * tl.maximum(tl.sqrt(nn), EPS))
    tl.store(out_ptr + pid * n_tiles + tile, tl.sum(tl.where(attend, cosine, 0.0), axis=0))


# -- launcher --------------------------------------------------------------------------------------
# ----------------
def attention_drift(
    q_before, q_now, k, key_mask, written, keys_before, *, axis: str
) -> torch.Tensor:
    """q_before, q_now [r, Hq, m, D]; k [r, Hkv, T, D] (any strides); key_mask [r, T] bool or None;
    written [r, n] long (repeats carry identical keys); keys_before [r, Hkv, n, D] -> similarity [r,
    m] fp32 (see the module docstring). Arguments are checked by dllm_accel.ops.attention_drift."""
    r, n_heads, n_tracked, head_dim = q_now.shape
    n_kv, length = k.shape[1], k.shape[2]
    block_t, block_d = _blocks(head_dim, length)
    slot = _written_slots(written, length)
    if (
        keys_before.numel() == 0
    ):  # nothing written: keys_before is never read, but its pointer must be valid
        keys_before = k
    # a placeholder pointer without a mask
    mask = slot if key_mask is None else key_mask.view(torch.uint8)
    strides = (
        _strides("qb", q_before, "rhmd")
        | _strides("qn", q_now, "rhmd")
        | _strides("k", k, "rhtd")
        | _strides("kb", keys_before, "rhnd")
        | _strides("slot", slot, "rt")
        | _strides("mask", mask, "rt")
    )
    common = dict(
        n_tracked=n_tracked,
        n_heads=n_heads,
        group=n_heads // n_kv,
        length=length,
        head_dim=head_dim,
        scale=math.log2(math.e) / math.sqrt(head_dim),
        HAS_MASK=key_mask is not None,
        EPS=COSINE_EPS,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=NUM_WARPS,
        **strides,
    )
    tensors = (q_before, q_now, k, keys_before, slot, mask)
    if axis == "keys":
        per_head = torch.empty(r, n_tracked, n_heads, dtype=torch.float32, device=k.device)
        _head_kernel[(r * n_tracked, n_heads)](*tensors, per_head, KEYS=True, **common)
        return per_head.mean(-1)
    lse = torch.empty(r, n_tracked, n_heads, 2, dtype=torch.float32, device=k.device)
    _head_kernel[(r * n_tracked, n_heads)](*tensors, lse, KEYS=False, **common)
    n_tiles = triton.cdiv(length, block_t)
    per_tile = torch.empty(r, n_tracked, n_tiles, dtype=torch.float32, device=k.device)
    _key_tile_kernel[(r * n_tracked, n_tiles)](
        *tensors, lse, per_tile, n_kv=n_kv, n_tiles=n_tiles, **common
    )
    attended = length if key_mask is None else key_mask.sum(-1, keepdim=True)
    return per_tile.sum(-1) / attended


def _blocks(head_dim: int, length: int) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_D): the whole head dim, and a key tile of at most TILE_ELEMENTS elements (at
    least 16 keys, no more than the keys there are)."""
    block_d = triton.next_power_of_2(head_dim)
    return max(16, min(TILE_ELEMENTS // block_d, triton.next_power_of_2(length))), block_d


def _written_slots(written: torch.Tensor, length: int) -> torch.Tensor:
    """[r, T] int32: the slot j of written[row] that wrote position t this step, or -1 where none
    did. Repeated positions carry identical keys, so whichever slot the scatter keeps is right."""
    rows, n_written = written.shape
    slot = torch.full((rows, length), -1, dtype=torch.int32, device=written.device)
    slots = torch.arange(n_written, dtype=torch.int32, device=written.device).expand(rows, -1)
    return slot.scatter_(1, written, slots)


def _strides(name: str, tensor: torch.Tensor, axes: str) -> dict:
    """{'k_sr': k.stride(0), 'k_sh': ...}: the kernels' stride arguments of one tensor, one letter
    per axis."""
    return {f"{name}_s{axis}": stride for axis, stride in zip(axes, tensor.stride(), strict=True)}
