"""iLLaDA (iLLaDA-8B-Base/Instruct): a Llama-style block with bidirectional attention.

Parameter names are the checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`,
`model.layers.N.mlp.gate_proj.weight`, ...). Numerics follow its public modelling code
(`modeling_illada.py`): LayerNorm (in the model dtype) when config.json gives `layer_norm_eps`, else
RMSNorm in fp32; biases where `attention_bias` / `mlp_bias` say; RoPE tables in fp32, cast to the
model dtype; absolute positions 0..T-1; padded keys hidden; the head tied to the embedding unless
`tie_word_embeddings` is false. Its logits are unshifted, and it decodes with LLaDA's sampler.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import (
    DiffusionLM,
    HeadShape,
    RMSNorm,
    SpecialTokens,
    build_spec,
    config_value,
    finish_layer,
    project_qkv,
    require_head_dim_from_width,
    require_supported,
    rope_theta,
)

SPECIAL = SpecialTokens(
    mask_texts=("<[MASK]>",),
    released_vocab=155136,
    released_mask=5,  # its README: "setting mask_id=5" runs LLaDA's inference code
)


class ILLaDAAttention(nn.Module):
    def __init__(self, d_model: int, shape: HeadShape, bias: bool):
        super().__init__()
        self.q_proj = nn.Linear(d_model, shape.n_heads * shape.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=bias)
        self.o_proj = nn.Linear(shape.n_heads * shape.head_dim, d_model, bias=bias)


class ILLaDAMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)


def norm(config: dict, size: int) -> nn.Module:
    eps = config.get("layer_norm_eps")
    if eps is not None:
        return nn.LayerNorm(size, eps=eps)
    return RMSNorm(size, config_value(config, "rms_norm_eps", 1e-6))


class ILLaDALayer(nn.Module):
    def __init__(self, config: dict, shape: HeadShape):
        super().__init__()
        d_model = config["hidden_size"]
        self.shape = shape
        self.self_attn = ILLaDAAttention(d_model, shape, bool(config.get("attention_bias")))
        self.mlp = ILLaDAMLP(
            d_model, config_value(config, "intermediate_size"), bool(config.get("mlp_bias"))
        )
        self.input_layernorm = norm(config, d_model)
        self.post_attention_layernorm = norm(config, d_model)

    def qkv(self, h, rope):
        a = self.self_attn
        return project_qkv(self.input_layernorm(h), a.q_proj, a.k_proj, a.v_proj, self.shape, rope)

    def finish(self, h, attn):
        m = self.mlp
        return finish_layer(
            h,
            attn,
            self.self_attn.o_proj,
            self.post_attention_layernorm,
            m.gate_proj,
            m.up_proj,
            m.down_proj,
        )


class ILLaDAModel(DiffusionLM):
    """Native iLLaDA; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada"  # LLaDA's sampler (its README: LLaDA's inference code with mask_id=5)
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
        vocab = config_value(config, "vocab_size")
        self.config = dict(config)
        self.rope_theta = rope_theta(config)
        self.weight_tying = bool(config.get("tie_word_embeddings", True))

        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d_model)
        self.model.layers = nn.ModuleList(
            ILLaDALayer(config, shape) for _ in range(config_value(config, "num_hidden_layers"))
        )
        self.model.norm = norm(config, d_model)
        if not self.weight_tying:
            self.lm_head = nn.Linear(d_model, vocab, bias=False)

        self.spec = build_spec(
            config,
            self.model_type,
            vocab=vocab,
            shape=shape,
            n_layers=len(self.model.layers),
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


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",))
    require_supported(config, "rope_scaling", (None,))
    require_head_dim_from_width(config)
