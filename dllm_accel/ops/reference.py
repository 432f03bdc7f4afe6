"""Torch twins of the ops: the CPU path, and the specification every Triton kernel is tested
against.

Shapes: r computed rows, Hq query heads, Hkv key/value heads (query head h reads key head h // (Hq /
Hkv)), n query rows, m tracked rows, T canvas positions, D head dim, d model dim, V vocabulary.
Inputs are already checked by dllm_accel.ops.
"""

from __future__ import annotations

import torch

from ..models.base import Rope, apply_rotary, attend

COSINE_EPS = (
    1e-8  # per norm, as F.cosine_similarity: rows with tiny attention still compare by direction
)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) in fp32: q [r, Hq, n, D], k [r, Hkv, T, D] -> [r, Hq, n, T]."""
    r, n_heads, n, _ = q.shape
    return _scores(q, k, key_mask).softmax(-1).view(r, n_heads, n, k.shape[2])


def _scores(q, k, key_mask) -> torch.Tensor:
    """-> [r * Hkv, (Hq / Hkv) * n, T] fp32 scaled scores, masked keys at -inf. The scale is applied
    to q and the mask added inside the matmul, so the scores are passed over once before the softmax
    (measured ~1.5x faster than scaling and masking them afterwards)."""
    r, n_heads, n, head_dim = q.shape
    n_kv, length = k.shape[1], k.shape[2]
    grouped = (q.float() * head_dim**-0.5).reshape(r * n_kv, (n_heads // n_kv) * n, head_dim)
    keys = k.float().reshape(r * n_kv, length, head_dim).transpose(1, 2)
    if key_mask is None:
        return torch.bmm(grouped, keys)
    bias = torch.zeros(r, 1, length, device=q.device).masked_fill_(
        ~key_mask[:, None], float("-inf")
    )
    return torch.baddbmm(bias.repeat_interleave(n_kv, 0), grouped, keys)


def apply_probs(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs [r, Hq, n, T] @ v [r, Hkv, T, D] -> [r, Hq, n, D] in v's dtype, accumulated in fp32."""
    r, n_heads, n, length = probs.shape
    n_kv = v.shape[1]
    out = probs.reshape(r, n_kv, (n_heads // n_kv) * n, length) @ v.float()
    return out.view(r, n_heads, n, -1).to(v.dtype)


def partial_attention(q, k, v, key_mask=None, *, mass_weights=None, key_end=None):
    """-> (out [r, Hq, n, D] in v's dtype, mass [r, T] fp32 = sum over heads and queries of
    mass_weights[n] * p[h, n, t], or None without mass_weights). Without mass_weights this is the
    model's own attention (SDPA), which no probability tensor is needed for; key_end [r, n]: query
    i sees the keys before index key_end[:, i] only (without mass_weights)."""
    if mass_weights is None:
        return attend(q, k, v, key_mask, key_end).to(v.dtype), None
    probs = attention_probs(q, k, key_mask)
    return apply_probs(probs, v), _mass(probs, mass_weights)


def attention_mass(q, k, key_mask, mass_weights):
    """partial_attention's mass [r, T] alone (no output is computed)."""
    return _mass(attention_probs(q, k, key_mask), mass_weights)


def monitored_attention(
    q, k, v, key_mask, *, mass_weights, q_before, written, keys_before, axis: str
):
    """partial_attention with mass_weights and attention_drift of the first m = q_before.shape[2]
    query rows (q_now = q[:, :, :m]) -> (out, mass, similarity [r, m]): the query rows'
    probabilities are computed once and serve both."""
    probs = attention_probs(q, k, key_mask)
    before = _probs_before(q_before, k, key_mask, written, keys_before)
    now = probs[:, :, : q_before.shape[2]]
    return (
        apply_probs(probs, v),
        _mass(probs, mass_weights),
        _similarity(before, now, key_mask, axis),
    )


def _mass(probs: torch.Tensor, mass_weights: torch.Tensor) -> torch.Tensor:
    """probs [r, Hq, n, T], weights [r, n] -> [r, T]: one batched product over heads and queries
    (measured faster than einsum or summing the heads first)."""
    r, n_heads, n, length = probs.shape
    weights = (
        mass_weights.float()[:, None, None, :].expand(r, 1, n_heads, n).reshape(r, 1, n_heads * n)
    )
    return torch.bmm(weights, probs.reshape(r, n_heads * n, length)).squeeze(1)


def attention_drift(q_before, q_now, k, key_mask, written, keys_before, *, axis: str):
    """How much the tracked rows' attention moved this step: q_before, q_now [r, Hq, m, D] (the rows
    as they stood before this step and now); k [r, Hkv, T, D] the keys after this step's writes;
    written [r, n] the positions written this step and keys_before [r, Hkv, n, D] their keys before
    the writes. -> similarity [r, m] fp32: axis 'keys', cosine over the key axis per head, averaged
    over heads; 'heads', cosine over the head axis per key, averaged over the attended keys."""
    before = _probs_before(q_before, k, key_mask, written, keys_before)
    return _similarity(before, attention_probs(q_now, k, key_mask), key_mask, axis)


def _probs_before(q_before, k, key_mask, written, keys_before):
    """The tracked rows' probabilities against the keys as they stood before this step's writes: the
    scores against today's keys with the written columns replaced (no copy of the cache)."""
    r, n_heads, m, _ = q_before.shape
    scores = _scores(q_before, k, key_mask)
    columns = written.repeat_interleave(k.shape[1], 0)[:, None, :].expand(-1, scores.shape[1], -1)
    written_mask = None if key_mask is None else key_mask.gather(1, written)
    scores.scatter_(2, columns, _scores(q_before, keys_before, written_mask))
    return scores.softmax(-1).view(r, n_heads, m, k.shape[2])


def _similarity(before, now, key_mask, axis: str) -> torch.Tensor:
    if axis == "keys":
        return _cosine(before, now, dim=-1).mean(1)
    per_key = _cosine(before, now, dim=1)  # [r, m, T]
    if key_mask is None:
        return per_key.mean(-1)
    return (per_key * key_mask[:, None]).sum(-1) / key_mask.sum(-1, keepdim=True)


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Written out: torch's CPU norm along a middle axis (which F.cosine_similarity uses) measured
    ~100x slower than these sums for the 'heads' axis."""
    norms = (a * a).sum(dim).sqrt().clamp_min(COSINE_EPS) * (b * b).sum(dim).sqrt().clamp_min(
        COSINE_EPS
    )
    return (a * b).sum(dim) / norms


def rope_write(q, k, v, rope: Rope, keys, values, rows, index, *, inputs=None, hidden=None):
    """Rotate fresh rows at their positions and write them into one layer's cache in place.

    q [r, Hq, n, D], k, v [r, Hkv, n, D] before RoPE; rope: tables [r or 1, 1, n, D] at the rows'
    true positions, in the dtype RoPE is applied in; keys, values [R, Hkv, T, D] the layer's cache;
    rows [r] model rows; index [r, n] canvas positions (repeats carry identical values); inputs [R,
    T, d] and hidden [r, n, d]: the layer inputs ElasticCache keeps. -> q rotated [r, Hq, n, D]."""
    heads = torch.arange(k.shape[1], device=k.device)[None, :, None]
    where = (rows[:, None, None], heads, index[:, None, :])
    keys[where] = apply_rotary(k, rope)
    values[where] = v
    if inputs is not None:
        inputs[rows[:, None], index] = hidden
    return apply_rotary(q, rope)


def score_tokens(logits, *, exclude: int | None = None):
    """One row per candidate, logits [M, V] -> (token [M] the most likely, never `exclude` (e.g. the
    mask id), the lowest id among equals; probability [M] of that token, margin [M] its probability
    minus the next one's, entropy [M] in nats), all over the full vocabulary in fp32."""
    ranked = (
        logits
        if exclude is None
        else logits.index_fill(1, torch.tensor([exclude], device=logits.device), float("-inf"))
    )
    token = ranked.argmax(-1)  # the first of equal maxima
    logits32 = logits.float()
    log_probs = logits32 - torch.logsumexp(logits32, -1, keepdim=True)
    top = ranked.float().topk(2, dim=-1).values - torch.logsumexp(logits32, -1, keepdim=True)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)  # a -inf logit adds nothing
    return (
        token,
        log_probs.gather(1, token[:, None]).squeeze(1).exp(),
        top[:, 0].exp() - top[:, 1].exp(),
        entropy,
    )
