"""Tiny configs: the released config.json files with only the sizes shrunk.

The bundled copies in dllm_accel/assets/configs are the real config.json of LLaDA-8B-Instruct,
Dream-v0-Instruct-7B and DiffuCoder-7B-Instruct; Dream-Coder-v0-Instruct-7B's is Dream-v0's (the
same Qwen2.5-7B sizes), and LLaDA-MoE-7B-A1B-Instruct's holds its fields with its published sizes
(docs/models.md says which values are confirmed), as do iLLaDA-8B-Instruct's and LLaDA2.0-mini's.
A tiny config keeps every field and its meaning; it changes the sizes and moves the special token
ids to the top of the small vocabulary: vocab-1 mask, vocab-2 eos/pad (and Dream's bos), vocab-3
end-of-turn.
"""

from __future__ import annotations

import json
from importlib import resources

RELEASED = {
    "llada": "llada-8b-instruct",
    "Dream": "dream-v0-instruct-7b",
    "llada_moe": "llada-moe-7b-a1b-instruct",
    "diffucoder": "diffucoder-7b-instruct",
    "dream_coder": "dream-coder-v0-instruct-7b",
    "illada": "illada-8b-instruct",
    "llada2": "llada2-mini",
}

# our size knobs -> each model's own field names
_DREAM_FIELDS = dict(
    d_model="hidden_size",
    n_layers="num_hidden_layers",
    n_heads="num_attention_heads",
    n_kv_heads="num_key_value_heads",
    mlp_hidden="intermediate_size",
    vocab=("vocab_size",),
)
_FIELDS = {
    "llada": dict(
        d_model="d_model",
        n_layers="n_layers",
        n_heads="n_heads",
        n_kv_heads="n_kv_heads",
        mlp_hidden="mlp_hidden_size",
        vocab=("vocab_size", "embedding_size"),
    ),
    # Dream and the Dream-architecture code models (DiffuCoder, Dream-Coder) share Dream's names
    # Dream, the Dream-architecture code models (DiffuCoder, Dream-Coder) and iLLaDA share the
    # Qwen2 / Llama names
    **dict.fromkeys(("Dream", "diffucoder", "dream_coder", "illada"), _DREAM_FIELDS),
    "llada_moe": _DREAM_FIELDS | dict(mlp_hidden="dense_intermediate_size"),
    "llada2": _DREAM_FIELDS,
}


def released_config(model_type: str) -> dict:
    """The released checkpoint's config.json; `model_type` is a key of RELEASED ("llada", "Dream",
    "llada_moe", "diffucoder", "dream_coder", "illada", "llada2")."""
    if model_type not in RELEASED:
        raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(RELEASED)}")
    text = (
        resources.files("dllm_accel.assets")
        .joinpath("configs", f"{RELEASED[model_type]}.json")
        .read_text()
    )
    return json.loads(text)


def tiny_config(
    model_type: str,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    mlp_hidden: int = 96,
    vocab: int = 128,
    n_experts: int = 8,
    top_k: int = 2,
    expert_hidden: int = 32,
    **fields,
) -> dict:
    """The released config of `model_type` (a key of RELEASED) with the given sizes; the MoE
    sizes apply to "llada_moe" (every layer MoE) and "llada2" (the first layer dense, as
    released; n_experts in 4 groups of which 2 are kept). Extra `fields` override verbatim."""
    config = released_config(model_type)
    sizes = dict(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads or n_heads,
        mlp_hidden=mlp_hidden,
    )
    names = _FIELDS[model_type]
    for knob, value in sizes.items():
        config[names[knob]] = value
    for name in names["vocab"]:
        config[name] = vocab
    config.update(
        mask_token_id=vocab - 1,
        eos_token_id=vocab - 2,
        pad_token_id=vocab - 2,
        eot_token_id=vocab - 3,
    )
    if "bos_token_id" in config:
        config["bos_token_id"] = vocab - 2
    if model_type == "llada_moe":
        config.update(
            num_experts=n_experts,
            num_experts_per_tok=top_k,
            expert_intermediate_size=expert_hidden,
            moe_layer_freq=[1] * n_layers,
        )
    if model_type == "llada2":  # first layer dense, 4 groups of experts, 2 of them kept
        head_dim = d_model // n_heads
        config.update(
            head_dim=head_dim,
            rotary_dim=int(head_dim * config["partial_rotary_factor"]),
            num_experts=n_experts,
            num_experts_per_tok=top_k,
            moe_intermediate_size=expert_hidden,
            n_group=4,
            topk_group=2,
            max_position_embeddings=4096,
        )
    config.update(fields)
    return config
