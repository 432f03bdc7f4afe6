"""iLLaDA (iLLaDA-8B-Base/Instruct): a Llama-style block with bidirectional attention.

Parameter names are the checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`,
`model.layers.N.mlp.gate_proj.weight`, ...). Numerics follow its public modelling code
(`modeling_illada.py`): LayerNorm (in the model dtype) when config.json gives `layer_norm_eps`, else
RMSNorm in fp32; biases where `attention_bias` / `mlp_bias` say; RoPE tables in fp32, cast to the
model dtype; absolute positions 0..T-1; padded keys hidden; the head tied to the embedding unless
`tie_word_embeddings` is false. Its logits are unshifted, and it decodes with LLaDA's sampler.
"""

from __future__ import annotations

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

SPECIAL = SpecialTokens(
    mask_texts=("<[MASK]>",),
    released_vocab=155136,
    released_mask=5,  # its README: "setting mask_id=5" runs LLaDA's inference code
)


def norm(config: dict, size: int) -> nn.Module:
    eps = config.get("layer_norm_eps")
    if eps is not None:
        return nn.LayerNorm(size, eps=eps)
    return RMSNorm(size, config_value(config, "rms_norm_eps", 1e-6))


def layer(config: dict, shape: HeadShape) -> DecoderLayer:
    d_model, bias = config["hidden_size"], bool(config.get("attention_bias"))
    return DecoderLayer(
        shape,
        Attention(d_model, shape, qkv_bias=bias, out_bias=bias),
        SwiGLU(d_model, config_value(config, "intermediate_size"), bool(config.get("mlp_bias"))),
        lambda: norm(config, d_model),
    )


class ILLaDAModel(LlamaLayoutLM):
    """Native iLLaDA; `config` is the checkpoint's config.json as a dict."""

    model_type = "llada"  # LLaDA's sampler (its README: LLaDA's inference code with mask_id=5)
    special = SPECIAL
    tied_by_default = True
    tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, config: dict, *, tokens: dict[str, int] | None = None):
        super().__init__()
        _check_supported(config)
        shape = head_shape(config)
        layers = [layer(config, shape) for _ in range(config_value(config, "num_hidden_layers"))]
        self._assemble(config, tokens, layers, norm(config, config_value(config, "hidden_size")))


def _check_supported(config: dict) -> None:
    require_supported(config, "hidden_act", ("silu",))
    require_supported(config, "rope_scaling", (None,))
