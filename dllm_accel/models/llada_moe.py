"""LLaDA-MoE (LLaDA-MoE-7B-A1B-Base/Instruct): OLMoE-style layers with bidirectional attention.

Parameter names are the checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`,
`model.layers.N.mlp.experts.E.gate_proj.weight`, ...). Numerics follow the released remote code
(`modeling_lladamoe.py`): RMSNorm in fp32; q and k normalised per head (over head_dim) before RoPE;
RoPE tables in fp32, cast to the model dtype before use; absolute positions 0..T-1. Its MoE block
scores experts with a softmax in fp32, adds `expert_bias` (when the config enables it) to the
probabilities, keeps the top k as the routing weights without renormalising them (whatever
`norm_topk_prob` says) and adds a shared expert's output when the config gives one. The remote
code ignores the attention mask; this model hides padded keys, so a padded row decodes as alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    DiffusionLM,
    HeadShape,
    RMSNorm,
    SpecialTokens,
    apply_rotary,
    build_spec,
    config_value,
    require_head_dim_from_width,
    require_supported,
    rope_theta,
)
from .moe import ExpertBank

SPECIAL = SpecialTokens(
    mask_texts=("<|mask|>",),
    eot_text="<|role_end|>",
    released_vocab=157184,
    released_mask=156895,  # the model card's generate(mask_id=156895); not in its config.json
)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    """Router `gate` and the experts; only the rows given pass through the router."""

    def __init__(self, d_model: int, config: dict):
        super().__init__()
        n_experts = config_value(config, "num_experts")
        self.top_k = config_value(config, "num_experts_per_tok")
        if not 1 <= self.top_k <= n_experts:
            raise ValueError(
                f"config.json: num_experts_per_tok={self.top_k} must lie in [1, num_experts="
                f"{n_experts}]"
            )
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = ExpertBank(
            n_experts, d_model, config_value(config, "expert_intermediate_size")
        )
        if config.get("moe_router_enable_expert_bias"):
            self.register_buffer("expert_bias", torch.zeros(n_experts))
        else:
            self.expert_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scores = F.softmax(self.gate(rows), dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            scores = scores + self.expert_bias
        weights, experts = scores.topk(self.top_k, dim=-1)
        return self.experts(rows, experts, weights.to(x.dtype)).view_as(x)


class LLaDAMoEAttention(nn.Module):
    def __init__(self, d_model: int, shape: HeadShape, bias: bool, qk_norm: bool, eps: float):
        super().__init__()
        self.q_proj = nn.Linear(d_model, shape.n_heads * shape.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=bias)
        self.o_proj = nn.Linear(shape.n_heads * shape.head_dim, d_model, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(shape.head_dim, eps)
            self.k_norm = RMSNorm(shape.head_dim, eps)


class LLaDAMoELayer(nn.Module):
    def __init__(self, config: dict, shape: HeadShape, moe: bool):
        super().__init__()
        d_model = config["hidden_size"]
        eps = config_value(config, "rms_norm_eps", 1e-5)
        self.shape = shape
        self.clip_qkv = config.get("clip_qkv")
        self.self_attn = LLaDAMoEAttention(
            d_model,
            shape,
            bool(config.get("attention_bias")),
            bool(config.get("qk_layernorm")),
            eps,
        )
        self.input_layernorm = RMSNorm(d_model, eps)
        self.post_attention_layernorm = RMSNorm(d_model, eps)
        if moe:
            self.mlp = SparseMoE(d_model, config)
            shared = config.get("shared_expert_intermediate_size")
            if shared is not None:
                self.shared_expert = SwiGLU(d_model, shared)
        else:
            self.mlp = SwiGLU(d_model, config_value(config, "dense_intermediate_size"))

    def qkv(self, h, rope):
        a, s = self.self_attn, self.shape
        x = self.input_layernorm(h)
        b, n, _ = x.shape
        q = a.q_proj(x).view(b, n, s.n_heads, s.head_dim)
        k = a.k_proj(x).view(b, n, s.n_kv_heads, s.head_dim)
        v = a.v_proj(x).view(b, n, s.n_kv_heads, s.head_dim)
        if hasattr(a, "q_norm"):
            q, k = a.q_norm(q), a.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if rope is None:
            return q, k, v
        return apply_rotary(q, rope), apply_rotary(k, rope), v

    def finish(self, h, attn):
        b, _, n, _ = attn.shape
        h = h + self.self_attn.o_proj(attn.transpose(1, 2).reshape(b, n, -1))
        x = self.post_attention_layernorm(h)
        out = self.mlp(x)
        if hasattr(self, "shared_expert"):
            out = out + self.shared_expert(x)
        return h + out


class LLaDAMoEModel(DiffusionLM):
    """Native LLaDA-MoE; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada"  # LLaDA's family: its sampler and its chat conventions
    architecture = "LLaDAMoEModelLM"
    special = SPECIAL
    head_key = "lm_head.weight"
    tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        d_model = config_value(config, "hidden_size")
        n_heads = config_value(config, "num_attention_heads")
        shape = HeadShape(
            n_heads, config_value(config, "num_key_value_heads", n_heads), d_model // n_heads
        )
        n_layers = config_value(config, "num_hidden_layers")
        moe_layers = _moe_layers(config, n_layers)
        vocab = config_value(config, "vocab_size")
        eps = config_value(config, "rms_norm_eps", 1e-5)
        self.config = dict(config)
        self.rope_theta = rope_theta(config)
        self.weight_tying = bool(config.get("tie_word_embeddings", False))

        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d_model)
        self.model.layers = nn.ModuleList(LLaDAMoELayer(config, shape, moe) for moe in moe_layers)
        self.model.norm = RMSNorm(d_model, eps)
        if not self.weight_tying:
            self.lm_head = nn.Linear(d_model, vocab, bias=False)

        self.spec = build_spec(
            config,
            self.model_type,
            vocab=vocab,
            shape=shape,
            n_layers=n_layers,
            d_model=d_model,
            logit_shift=0,
            special=SPECIAL,
            tokens=tokens,
            positions_field="max_position_embeddings",
        )

    @property
    def embedding(self):
        return self.model.embed_tokens

    @property
    def blocks(self):
        return self.model.layers

    @property
    def final_norm(self):
        return self.model.norm

    @property
    def head_weight(self):
        return self.model.embed_tokens.weight if self.weight_tying else self.lm_head.weight

    def positions(self, attention_mask, length):
        return torch.arange(length, device=self.device)[None]  # absolute, padding included

    def rope_dtype(self):
        return self.dtype


def _moe_layers(config: dict, n_layers: int) -> list[bool]:
    """Which layers are MoE: `moe_layer_freq` lists 1 (MoE) or 0 (dense) per layer."""
    freq = config_value(config, "moe_layer_freq")
    if not isinstance(freq, list) or len(freq) != n_layers or not set(freq) <= {0, 1}:
        raise ValueError(
            f"config.json: moe_layer_freq={freq!r} is not supported; it must list 0 (dense) or 1 "
            f"(MoE) for each of the num_hidden_layers={n_layers} layers"
        )
    return [bool(f) for f in freq]


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",))
    require_supported(config, "rope_scaling", (None,))
    # the remote code's router ignores these; a config that sets them expects what it does not do
    require_supported(config, "moe_router_score_function", ("softmax", None))
    require_supported(config, "partial_rotary_factor", (1, 1.0, None))
    require_head_dim_from_width(config)
