"""Dream (Dream-v0-Base/Instruct-7B): the Qwen2 layout with bidirectional attention.

Parameter names are the checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`, ...).
Numerics follow the released remote code: RMSNorm in fp32; RoPE tables computed in fp32 and cast
to the model dtype before use; positions from the cumulative sum of the attention mask (as its
`diffusion_generate` computes them); padded keys hidden. The raw logit at position i scores token
i+1 (`spec.logit_shift == 1`); the model returns raw logits and the sampler applies the shift.
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
    mask_texts=("<|mask|>",),
    eot_text="<|im_end|>",
    end_texts=("<|dlm_pad|>",),
    released_vocab=152064,
    released_mask=151666,
    released_eot=151645,
)


class DreamAttention(nn.Module):
    def __init__(self, hidden: int, shape: HeadShape):
        super().__init__()
        self.q_proj = nn.Linear(hidden, shape.n_heads * shape.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, shape.n_kv_heads * shape.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, shape.n_kv_heads * shape.head_dim, bias=True)
        self.o_proj = nn.Linear(shape.n_heads * shape.head_dim, hidden, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)


class DreamLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, shape: HeadShape, eps: float):
        super().__init__()
        self.shape = shape
        self.self_attn = DreamAttention(hidden, shape)
        self.mlp = DreamMLP(hidden, intermediate)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

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


class DreamModel(DiffusionLM):
    """Native Dream; `config` is the checkpoint's config.json as a dict."""

    model_type = "Dream"
    special = SPECIAL
    head_key = "lm_head.weight"
    tokenizer_class = "Qwen2Tokenizer"  # the remote DreamTokenizer is Qwen2's byte-level BPE

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        hidden = config_value(config, "hidden_size")
        n_heads = config_value(config, "num_attention_heads")
        shape = HeadShape(
            n_heads, config_value(config, "num_key_value_heads", n_heads), hidden // n_heads
        )
        vocab = config_value(config, "vocab_size")
        eps = config_value(config, "rms_norm_eps", 1e-6)
        intermediate = config_value(config, "intermediate_size")
        self.config = dict(config)
        self.rope_theta = rope_theta(config)
        self.weight_tying = bool(config.get("tie_word_embeddings", False))

        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, hidden)
        self.model.layers = nn.ModuleList(
            DreamLayer(hidden, intermediate, shape, eps)
            for _ in range(config_value(config, "num_hidden_layers"))
        )
        self.model.norm = RMSNorm(hidden, eps)
        if not self.weight_tying:
            self.lm_head = nn.Linear(hidden, vocab, bias=False)

        self.spec = build_spec(
            config,
            self.model_type,
            vocab=vocab,
            shape=shape,
            n_layers=len(self.model.layers),
            d_model=hidden,
            logit_shift=1,
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
        if attention_mask is None:
            return torch.arange(length, device=self.device)[None]
        positions = attention_mask.long().cumsum(-1) - 1
        # padding's positions, as Dream sets them
        return positions.masked_fill(attention_mask == 0, 1)

    def rope_dtype(self):
        return self.dtype


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",))
    require_supported(config, "rope_scaling", (None,))
    require_supported(config, "use_sliding_window", (False, None))
    require_supported(config, "use_mrope", (False, None))
    require_head_dim_from_width(config)
