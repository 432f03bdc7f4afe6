"""LLaDA (LLaDA-8B-Base/Instruct, LLaDA-1.5): OLMo's Llama-style block with bidirectional attention.

Parameter names are the checkpoint's keys (`model.transformer.blocks.N.q_proj.weight`, ...).
Numerics follow the released remote code: RMSNorm in fp32; RoPE tables and their application in
fp32 when `rope_full_precision` (the released setting), then cast back; absolute positions 0..T-1
whatever the padding; padded keys hidden.
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
    build_spec,
    config_value,
    finish_layer,
    project_qkv,
    require_supported,
    rope_theta,
)

SPECIAL = SpecialTokens(
    mask_texts=("<|mdm_mask|>",),
    eot_text="<|eot_id|>",  # closes every chat turn
    released_vocab=126464,
    released_mask=126336,
    released_eot=126348,
)


class LLaDABlock(nn.Module):
    def __init__(self, d_model: int, mlp_hidden: int, shape: HeadShape, eps: float):
        super().__init__()
        self.shape = shape
        self.attn_norm = RMSNorm(d_model, eps)
        self.q_proj = nn.Linear(d_model, shape.n_heads * shape.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=False)
        self.attn_out = nn.Linear(shape.n_heads * shape.head_dim, d_model, bias=False)
        self.ff_norm = RMSNorm(d_model, eps)
        self.ff_proj = nn.Linear(d_model, mlp_hidden, bias=False)  # the SiLU gate
        self.up_proj = nn.Linear(d_model, mlp_hidden, bias=False)
        self.ff_out = nn.Linear(mlp_hidden, d_model, bias=False)  # down projection

    def qkv(self, h, rope):
        return project_qkv(self.attn_norm(h), self, self.shape, rope)

    def finish(self, h, attn):
        return finish_layer(h, attn, self.attn_out, self.ff_norm, self._mlp)

    def _mlp(self, x):
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))


class LLaDAModel(DiffusionLM):
    """Native LLaDA; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada"
    special = SPECIAL
    head_key = "model.transformer.ff_out.weight"
    tokenizer_class = "PreTrainedTokenizerFast"  # as the released tokenizer_config.json names it

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        d_model = config_value(config, "d_model")
        n_heads = config_value(config, "n_heads")
        n_kv_heads = config_value(config, "n_kv_heads", n_heads)
        if config.get("multi_query_attention"):
            # the remote code refuses the contradiction
            require_supported(config, "n_kv_heads", (None, 1))
            n_kv_heads = 1
        mlp_hidden = config_value(
            config, "mlp_hidden_size", config_value(config, "mlp_ratio", 4) * d_model
        )
        vocab = config_value(config, "embedding_size", config_value(config, "vocab_size"))
        eps = config_value(config, "rms_norm_eps", 1e-5)
        shape = HeadShape(n_heads, n_kv_heads, d_model // n_heads)
        self.config = dict(config)
        self.rope_theta = rope_theta(config)
        self.rope_full_precision = bool(config_value(config, "rope_full_precision", True))
        self.weight_tying = bool(config.get("weight_tying", True))  # the remote config's default

        modules = dict(
            wte=nn.Embedding(vocab, d_model),
            blocks=nn.ModuleList(
                LLaDABlock(d_model, mlp_hidden, shape, eps)
                for _ in range(config_value(config, "n_layers"))
            ),
            ln_f=RMSNorm(d_model, eps),
        )
        if not self.weight_tying:
            modules["ff_out"] = nn.Linear(d_model, vocab, bias=False)
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(modules)

        self.spec = build_spec(
            config,
            self.model_type,
            vocab=vocab,
            shape=shape,
            n_layers=len(modules["blocks"]),
            d_model=d_model,
            logit_shift=0,
            special=SPECIAL,
            tokens=tokens,
            positions_field="max_sequence_length",
        )

    @property
    def embedding(self):
        return self.model.transformer.wte

    @property
    def blocks(self):
        return self.model.transformer.blocks

    @property
    def final_norm(self):
        return self.model.transformer.ln_f

    @property
    def head_weight(self):
        transformer = self.model.transformer
        return transformer.wte.weight if self.weight_tying else transformer.ff_out.weight

    def positions(self, attention_mask, length):
        return torch.arange(length, device=self.device)[None]  # absolute, padding included

    def rope_dtype(self):
        return torch.float32 if self.rope_full_precision else self.dtype


def _check_supported(config: dict) -> None:
    require_supported(config, "block_type", ("llama",))
    require_supported(config, "layer_norm_type", ("rms",))
    require_supported(config, "activation_type", ("silu",))
    require_supported(config, "rope", (True,))
    require_supported(config, "block_group_size", (1,), default=1)
    require_supported(config, "layer_norm_with_affine", (True,), default=True)
    for flag in (
        "alibi",
        "include_bias",
        "include_qkv_bias",
        "bias_for_layer_norm",
        "attention_layer_norm",
        "input_emb_norm",
        "scale_logits",
    ):
        require_supported(config, flag, (False, None))
    require_supported(config, "clip_qkv", (None,))
