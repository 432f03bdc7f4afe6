"""LLaDA2.x (LLaDA2.0-mini, LLaDA2.0-flash): Ling-2.0-style MoE layers under block-causal attention.

Parameter names are the checkpoint's keys (`model.word_embeddings.weight`,
`model.layers.N.attention.query_key_value.weight`, `model.layers.N.mlp.experts.E.gate_proj.weight`,
`model.layers.N.mlp.gate.expert_bias`, ...). Numerics follow the released remote code
(`modeling_llada2_moe.py`):

- attention: one fused projection whose output rows are the Hq query heads, then the Hkv key heads,
  then the Hkv value heads (head_dim rows each); q and k normalised per head over head_dim
  (`use_qk_norm`) before RoPE; scale head_dim ** -0.5; output projection `dense` (with a bias when
  `use_bias`, the remote default);
- partial RoPE: only the first R = int(head_dim * partial_rotary_factor) dims of each head rotate,
  rotate-half over those R (dim i pairs with i + R/2, frequencies theta ** (-2i / R)); the other
  head_dim - R dims pass through. Tables in fp32, cast to the model dtype, applied in it;
- router: sigmoid of fp32 logits; experts chosen on sigmoid + `expert_bias` among the `topk_group`
  of `n_group` groups with the largest sum of their two best scores; the chosen experts' unbiased
  scores, normalised to sum 1 when k > 1, times `routed_scaling_factor`, weight the experts'
  outputs, summed in fp32; a shared expert (`num_shared_experts` of them fused) is added;
- layers below `first_k_dense_replace` have a dense SwiGLU instead of experts;
- block-causal attention (spec.block_size, 32 as trained): a position sees its own block and the
  ones before it, blocks counted from the row's first token; positions count from 0 at the row's
  first token, so a left-padded row decodes exactly as the same tokens alone.

Partial RoPE without a kernel of its own. The engine and its fused RoPE-and-cache-write kernel
rotate every head dim, pairing i with i + D/2 (D = head_dim). `qkv()` therefore permutes the head
dims of q and k (never v) so that the remote code's pair (i, i + R/2), i < R/2, lands on
(i, i + D/2), and the D - R pass-through dims pair with each other; `rotary()` builds D-wide tables
whose pass-through slots hold cos 1, sin 0, leaving those dims exactly as they are. q . k is a sum
over the head dims, unchanged when q and k are permuted alike, so the attention is the remote
code's; only the cached keys are stored in the permuted order.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    HeadShape,
    LlamaLayoutLM,
    RMSNorm,
    Rope,
    SpecialTokens,
    SwiGLU,
    apply_rotary,
    config_value,
    finish_layer,
    require_supported,
)
from .moe import ExpertBank

SPECIAL = SpecialTokens(
    mask_texts=("<|mask|>",),
    eot_text="<|role_end|>",
    released_vocab=157184,
    released_mask=156895,  # the remote generate's mask_id default; not in its config.json
)
RELEASED_EOS = 156892  # the remote generate's eos_id default (<|endoftext|>, also pad_token_id)
BLOCK_SIZE = 32  # the trained block: the remote generate's block_length default


class Gate(nn.Module):
    """Router: `weight` [E, d] and the selection bias `expert_bias` [E] (a checkpoint buffer)."""

    def __init__(self, d_model: int, config: dict):
        super().__init__()
        self.n_experts = config_value(config, "num_experts")
        self.top_k = config_value(config, "num_experts_per_tok", 2)
        self.n_group = config_value(config, "n_group", 8)
        self.topk_group = config_value(config, "topk_group", 4)
        self.scale = float(config_value(config, "routed_scaling_factor", 2.5))
        self.weight = nn.Parameter(torch.empty(self.n_experts, d_model))
        self.register_buffer("expert_bias", torch.zeros(self.n_experts))

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [N, d] -> experts [N, k] and their routing weights [N, k] (fp32)."""
        n = rows.shape[0]
        scores = F.linear(rows.float(), self.weight.float()).sigmoid()  # [N, E]
        choice = scores + self.expert_bias
        grouped = choice.view(n, self.n_group, -1)  # [N, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [N, G]
        groups = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
        choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(n, -1)
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return experts, weights * self.scale


class SparseMoE(nn.Module):
    """`gate`, the routed `experts` (stacked) and the `shared_experts` where the config has them;
    only the rows given pass through the router."""

    def __init__(self, d_model: int, config: dict):
        super().__init__()
        hidden = config_value(config, "moe_intermediate_size")
        self.gate = Gate(d_model, config)
        self.experts = ExpertBank(self.gate.n_experts, d_model, hidden)
        shared = config.get("num_shared_experts", 0)  # absent: the remote default; null: none
        if shared is not None:
            self.shared_experts = SwiGLU(d_model, hidden * shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        experts, weights = self.gate(rows)
        # products and their sum in the weights' fp32, as the remote block adds them
        out = self.experts(rows, experts, weights).view_as(x)
        return out + self.shared_experts(x) if hasattr(self, "shared_experts") else out


class Attention(nn.Module):
    """`query_key_value` (fused), per-head `query_layernorm` / `key_layernorm`, `dense`."""

    def __init__(self, d_model: int, shape: HeadShape, config: dict):
        super().__init__()
        width = (shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim
        self.query_key_value = nn.Linear(d_model, width, bias=bool(config.get("use_qkv_bias")))
        if config_value(config, "use_qk_norm", True):
            eps = config_value(config, "rms_norm_eps", 1e-5)
            self.query_layernorm = RMSNorm(shape.head_dim, eps)
            self.key_layernorm = RMSNorm(shape.head_dim, eps)
        use_bias = config_value(config, "use_bias", True)  # the remote default
        self.dense = nn.Linear(shape.n_heads * shape.head_dim, d_model, bias=bool(use_bias))


class Layer(nn.Module):
    """`attention`, `mlp` (dense below first_k_dense_replace, else SparseMoE), the two norms."""

    def __init__(self, config: dict, shape: HeadShape, rotary_dim: int, moe: bool):
        super().__init__()
        d_model = config_value(config, "hidden_size")
        eps = config_value(config, "rms_norm_eps", 1e-5)
        self.shape, self.rotary_dim = shape, rotary_dim
        self.attention = Attention(d_model, shape, config)
        self.mlp = (
            SparseMoE(d_model, config)
            if moe
            else SwiGLU(d_model, config_value(config, "intermediate_size"))
        )
        self.input_layernorm = RMSNorm(d_model, eps)
        self.post_attention_layernorm = RMSNorm(d_model, eps)

    def qkv(self, h, rope: Rope | None):
        """q [B, Hq, n, D], k, v [B, Hkv, n, D]; q and k with their head dims paired for
        full-width rotate-half (module docstring), rotated unless rope is None."""
        b, n, _ = h.shape
        s = self.shape
        fused = self.attention.query_key_value(self.input_layernorm(h))
        q, k, v = fused.view(b, n, -1, s.head_dim).split([s.n_heads, s.n_kv_heads, s.n_kv_heads], 2)
        if hasattr(self.attention, "query_layernorm"):
            q, k = self.attention.query_layernorm(q), self.attention.key_layernorm(k)
        q, k = pair_rotated_dims(q, self.rotary_dim), pair_rotated_dims(k, self.rotary_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if rope is None:
            return q, k, v
        return apply_rotary(q, rope), apply_rotary(k, rope), v

    def finish(self, h, attn):
        return finish_layer(h, attn, self.attention.dense, self.post_attention_layernorm, self.mlp)


def pair_rotated_dims(x: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """x [..., D] with the remote code's rotated pairs (i, i + R/2) moved to (i, i + D/2) and the
    pass-through dims R.. split between the two halves: [a | b | c | e] -> [a | c | b | e] with
    a, b the rotated halves (R/2 each) and c, e the pass-through halves ((D-R)/2 each)."""
    d = x.shape[-1]
    if rotary_dim == d:
        return x
    r, p = rotary_dim // 2, (d - rotary_dim) // 2
    a, b, c, e = x.split([r, r, p, p], dim=-1)
    return torch.cat((a, c, b, e), dim=-1)


class LLaDA2Model(LlamaLayoutLM):
    """Native LLaDA2.x; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada2"
    special = SPECIAL
    tokenizer_class = "PreTrainedTokenizerFast"
    embedding_name = "word_embeddings"

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        shape = _head_shape(config)
        self.rotary_dim = _rotary_dim(config, shape.head_dim)
        dense = config_value(config, "first_k_dense_replace", 0)
        moe = config.get("num_experts") is not None
        layers = [
            Layer(config, shape, self.rotary_dim, moe and i >= dense)
            for i in range(config_value(config, "num_hidden_layers"))
        ]
        final_norm = RMSNorm(
            config_value(config, "hidden_size"), config_value(config, "rms_norm_eps", 1e-5)
        )
        # the released config.json names no eos_token_id; the released vocabulary's is known
        given = dict(config)
        if given.get("eos_token_id") is None and given.get("vocab_size") == SPECIAL.released_vocab:
            given["eos_token_id"] = RELEASED_EOS
        self._assemble(given, tokens, layers, final_norm, shape)
        self.config = dict(config)
        self.spec = replace(self.spec, block_size=_block_size(config))

    def positions(self, attention_mask, length):
        """0 at each row's first token (cumulative sum of the mask); padding at 0."""
        if attention_mask is None:
            return torch.arange(length, device=self.device)[None]
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def rotary(self, positions: torch.Tensor) -> Rope:
        """D-wide rotate-half tables for the paired head dims (module docstring): the first R/2
        slots of each half hold the R-dim RoPE's angles, the other slots angle 0 (cos 1, sin 0)."""
        r, d = self.rotary_dim, self.spec.head_dim
        exponent = torch.arange(0, r, 2, device=positions.device, dtype=torch.float32) / r
        inv_freq = F.pad(1.0 / (self.rope_theta**exponent), (0, (d - r) // 2))  # [D/2]
        angles = positions.reshape(-1, positions.shape[-1]).float()[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, n, D]
        return Rope(angles.cos().to(self.dtype), angles.sin().to(self.dtype))


def _head_shape(config: dict) -> HeadShape:
    n_heads = config_value(config, "num_attention_heads")
    head_dim = config_value(config, "head_dim", config_value(config, "hidden_size") // n_heads)
    n_kv = config_value(config, "num_key_value_heads")
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(
            f"config.json: num_key_value_heads={n_kv} must be >= 1 and divide "
            f"num_attention_heads={n_heads}"
        )
    return HeadShape(n_heads, n_kv, head_dim)


def _rotary_dim(config: dict, head_dim: int) -> int:
    """R = int(head_dim * partial_rotary_factor), the remote code's rule; even, so that its
    rotate-half pairs exist, and head_dim even."""
    factor = config_value(config, "partial_rotary_factor", 0.5)  # the remote default
    r = int(head_dim * factor)
    if head_dim % 2 or r % 2 or not 0 < r <= head_dim:
        raise ValueError(
            f"config.json: partial_rotary_factor={factor} with head_dim={head_dim} gives a rotary "
            f"dim of {r}; supported: an even rotary dim in [2, head_dim] and an even head_dim"
        )
    return r


def _block_size(config: dict) -> int:
    """The trained block: config.json's `block_size` / `block_length` where one is given (the
    released configs give none), else 32."""
    for name in ("block_size", "block_length"):
        if config.get(name) is not None:
            value = config[name]
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.json: {name}={value!r} must be a positive integer")
            return value
    return BLOCK_SIZE


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",), default="silu")
    require_supported(config, "rope_scaling", (None,))
    require_supported(config, "use_sliding_window", (False, None))
    # norm_head: the remote code stores it and never reads it, so any value computes the same
    if config.get("num_experts") is None:
        return
    n_experts = config["num_experts"]
    n_group = config_value(config, "n_group", 8)
    topk_group = config_value(config, "topk_group", 4)
    top_k = config_value(config, "num_experts_per_tok", 2)
    if n_group < 1 or n_experts % n_group or n_experts // n_group < 2:
        raise ValueError(
            f"config.json: n_group={n_group} is not supported with num_experts={n_experts}; it "
            "must divide num_experts into groups of at least 2 experts (a group scores its best 2)"
        )
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"config.json: topk_group={topk_group} must lie in [1, n_group={n_group}]")
    reachable = topk_group * (n_experts // n_group)
    if not 1 <= top_k <= reachable:
        raise ValueError(
            f"config.json: num_experts_per_tok={top_k} must lie in [1, {reachable}] (the experts "
            f"of topk_group={topk_group} groups of num_experts / n_group={n_experts // n_group})"
        )
