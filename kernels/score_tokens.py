"""score_tokens: the most likely token of each logits row, its probability, its margin over the
runner-up, and the row's entropy, in one streaming pass over the vocabulary in fp32.

One program per row reads the vocabulary in tiles of BLOCK_V logits x and keeps, in fp32 scalars,

    m = max x                       the running maximum
    s = sum e^(x - m)               the softmax denominator, rescaled by e^(m_old - m) when m grows
    w = sum e^(x - m) (x - m)       rescaled the same way, plus (m_old - m) s for the shifted offset
    (x1, i1), x2                the largest logit and its id, the runner-up logit, never `exclude`

so that, with lse = m + log s,

    probability = e^(x1 - lse),   margin = e^(x1 - lse) - e^(x2 - lse),
    entropy     = lse - E[x] = log s - w / s     (no cancellation of m: both terms are O(log V)).

Ties go to the lowest id (torch.argmax's rule; the twin's torch.topk leaves their order
unspecified). Only one tile of the row is ever held, in registers: no full-vocabulary copy in any
dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# the smallest fp32, a finite start for m
LOWEST: tl.constexpr = tl.constexpr(-3.4028234663852886e38)
MAX_BLOCK_V = 4096


@triton.jit
def _top2_of_tile(x, ids, candidate, vocab):
    """The largest x among the candidate lanes of one tile with its id (the lowest on ties), and the
    next largest value -> (x1, i1, x2); -inf (and id `vocab`) where the tile has too few
    candidates."""
    ranked = tl.where(candidate, x, float("-inf"))
    x1 = tl.max(ranked, 0)
    i1 = tl.min(tl.where(candidate & (ranked == x1), ids, vocab), 0)
    x2 = tl.max(tl.where(ids != i1, ranked, float("-inf")), 0)
    return x1, i1, x2


@triton.jit
def _score_tokens_kernel(
    logits_ptr,
    token_ptr,
    probability_ptr,
    margin_ptr,
    entropy_ptr,
    vocab,
    stride_m,
    stride_v,
    exclude,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_m
    lanes = tl.arange(0, BLOCK_V)

    m = tl.full((), LOWEST, tl.float32)
    s = tl.zeros((), tl.float32)
    w = tl.zeros((), tl.float32)
    best_x = tl.full((), float("-inf"), tl.float32)
    best_i = tl.full((), 0, tl.int32) + vocab
    next_x = tl.full((), float("-inf"), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        ids = start + lanes
        inside = ids < vocab
        x = tl.load(base + ids * stride_v, mask=inside, other=float("-inf")).to(tl.float32)

        # online softmax: move the running sums to the new maximum, then add this tile
        m_new = tl.maximum(m, tl.max(x, 0))
        alpha = tl.exp(m - m_new)
        shifted = x - m_new
        # 0 outside the vocabulary and for -inf logits, where e * shifted would be NaN
        e = tl.exp(shifted)
        w = alpha * (w + (m - m_new) * s) + tl.sum(e * tl.where(e > 0, shifted, 0.0), 0)
        s = alpha * s + tl.sum(e, 0)
        m = m_new

        # top-2 merge: the running best has lower ids than this tile, so it wins ties; only the
        # runner-up's value is needed (for the margin), not its id
        x1, i1, x2 = _top2_of_tile(x, ids, inside & (ids != exclude), vocab)
        take = x1 > best_x
        next_x = tl.where(take, tl.maximum(best_x, x2), tl.maximum(next_x, x1))
        best_i = tl.where(take, i1, best_i)
        best_x = tl.where(take, x1, best_x)

    lse = m + tl.log(s)
    probability = tl.exp(best_x - lse)
    tl.store(token_ptr + row, best_i.to(tl.int64))
    tl.store(probability_ptr + row, probability)
    tl.store(margin_ptr + row, probability - tl.exp(next_x - lse))
    tl.store(entropy_ptr + row, tl.log(s) - w / s)


def score_tokens(logits: torch.Tensor, *, exclude: int | None = None):
    """logits [M, V] (fp32/fp16/bf16, any strides; checked by dllm_accel.ops) -> (token [M] long,
    probability [M], margin [M], entropy [M] fp32), `exclude` never chosen."""
    rows, vocab = logits.shape
    token = torch.empty(rows, dtype=torch.long, device=logits.device)
    probability, margin, entropy = (
        torch.empty(rows, dtype=torch.float32, device=logits.device) for _ in range(3)
    )
    _score_tokens_kernel[(rows,)](
        logits,
        token,
        probability,
        margin,
        entropy,
        vocab,
        logits.stride(0),
        logits.stride(1),
        -1 if exclude is None else exclude,
        **_config(vocab),
    )
    return token, probability, margin, entropy


def _config(vocab: int) -> dict:
    """The vocabulary tile (at most MAX_BLOCK_V logits) and the warps that read it."""
    block = min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return {"BLOCK_V": block, "num_warps": 8 if block >= 2048 else 4}
