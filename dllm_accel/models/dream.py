"""Dream (Dream-v0-Base/Instruct-7B): the Qwen2 layout with bidirectional attention.

Parameter names are the checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`, ...).
Numerics follow the released remote code: RMSNorm in fp32; RoPE tables computed in fp32 and cast
to the model dtype before use; positions from the cumulative sum of the attention mask (as its
`diffusion_generate` computes them); padded keys hidden. The raw logit at position i scores token
i+1 (`spec.logit_shift == 1`); the model returns raw logits and the sampler applies the shift.
"""

from __future__ import annotations

import torch

from .base import (
    Attention,
    DecoderLayer,
    LlamaLayoutLM,
    RMSNorm,
    SpecialTokens,
    SwiGLU,
    config_value,
    head_shape,
    require_supported,
)

SPECIAL = SpecialTokens(
    mask_texts=("<|mask|>",),
    eot_text="<|im_end|>",
    end_texts=("<|dlm_pad|>",),
    released_vocab=152064,
    released_mask=151666,
    released_eot=151645,
)


class DreamModel(LlamaLayoutLM):
    """Native Dream; `config` is the checkpoint's config.json as a dict."""

    model_type = "Dream"
    special = SPECIAL
    logit_shift = 1  # the raw logit at position i scores token i+1
    tokenizer_class = "Qwen2Tokenizer"  # the remote DreamTokenizer is Qwen2's byte-level BPE

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        hidden, shape = config_value(config, "hidden_size"), head_shape(config)
        eps = config_value(config, "rms_norm_eps", 1e-6)
        intermediate = config_value(config, "intermediate_size")
        layers = [
            DecoderLayer(
                shape,
                Attention(hidden, shape, qkv_bias=True, out_bias=False),
                SwiGLU(hidden, intermediate),
                lambda: RMSNorm(hidden, eps),
            )
            for _ in range(config_value(config, "num_hidden_layers"))
        ]
        self._assemble(config, tokens, layers, RMSNorm(hidden, eps))

    def positions(self, attention_mask, length):
        if attention_mask is None:
            return torch.arange(length, device=self.device)[None]
        positions = attention_mask.long().cumsum(-1) - 1
        # padding's positions, as Dream sets them
        return positions.masked_fill(attention_mask == 0, 1)


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",))
    require_supported(config, "rope_scaling", (None,))
    require_supported(config, "use_sliding_window", (False, None))
    require_supported(config, "use_mrope", (False, None))
