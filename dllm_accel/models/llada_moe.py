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
    Attention,
    DecoderLayer,
    HeadShape,
    LlamaLayoutLM,
    RMSNorm,
    SpecialTokens,
    SwiGLU,
    config_value,
    head_shape,
    require_supported,
)
from .moe import ExpertBank

SPECIAL = SpecialTokens(
    mask_texts=("<|mask|>",),
    eot_text="<|role_end|>",
    released_vocab=157184,
    released_mask=156895,  # the model card's generate(mask_id=156895); not in its config.json
)


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


def layer(config: dict, shape: HeadShape, moe: bool) -> DecoderLayer:
    d_model, bias = config["hidden_size"], bool(config.get("attention_bias"))
    eps = config_value(config, "rms_norm_eps", 1e-5)
    mlp = (
        SparseMoE(d_model, config)
        if moe
        else SwiGLU(d_model, config_value(config, "dense_intermediate_size"))
    )
    attention = Attention(d_model, shape, qkv_bias=bias, out_bias=bias)
    if config.get("qk_layernorm"):
        attention.q_norm = RMSNorm(shape.head_dim, eps)
        attention.k_norm = RMSNorm(shape.head_dim, eps)
    built = DecoderLayer(
        shape, attention, mlp, lambda: RMSNorm(d_model, eps), config.get("clip_qkv")
    )
    shared = config.get("shared_expert_intermediate_size")
    if moe and shared is not None:
        built.shared_expert = SwiGLU(d_model, shared)
    return built


class LLaDAMoEModel(LlamaLayoutLM):
    """Native LLaDA-MoE; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada"  # LLaDA's family: its sampler and its chat conventions
    special = SPECIAL
    tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        shape = head_shape(config)
        moe_layers = _moe_layers(config, config_value(config, "num_hidden_layers"))
        final_norm = RMSNorm(
            config_value(config, "hidden_size"), config_value(config, "rms_norm_eps", 1e-5)
        )
        self._assemble(
            config, tokens, [layer(config, shape, moe) for moe in moe_layers], final_norm
        )


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
