"""iLLaDA: logits against transformers' Llama (the same block: biases as configured, tied head,
RMSNorm or LayerNorm), its mask token from the checkpoint's own files, LLaDA's sampler."""

import json

import pytest
import torch
import transformers
from conftest import random_ids, tiny_model
from torch import nn

import dllm_accel
from dllm_accel import ElasticCache, LowConfidence, Method, NoCache, Sampler
from dllm_accel.models import ILLaDAModel, released_config


def llama(model):
    """transformers' Llama holding the same weights; LayerNorms swapped in where the model has
    them."""
    c, s = model.config, model.spec
    config = transformers.LlamaConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.d_model,
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads,
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"],
        attention_bias=c["attention_bias"],
        mlp_bias=c["mlp_bias"],
        tie_word_embeddings=model.weight_tying,
        max_position_embeddings=4096,
        attn_implementation="eager",
    )
    reference = transformers.LlamaForCausalLM(config)
    if c["layer_norm_eps"] is not None:
        d, eps = s.d_model, c["layer_norm_eps"]
        for layer in reference.model.layers:
            layer.input_layernorm = nn.LayerNorm(d, eps=eps)
            layer.post_attention_layernorm = nn.LayerNorm(d, eps=eps)
        reference.model.norm = nn.LayerNorm(d, eps=eps)
    state = model.state_dict()
    if model.weight_tying:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    reference.load_state_dict(state, strict=True)
    return reference.eval()


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False},
        {"layer_norm_eps": 1e-5},
    ],
    ids=["released-shape", "biases-untied", "layernorm"],
)
def test_logits_equal_transformers_llama(fields):
    model = tiny_model("illada", n_kv_heads=2, **fields)
    ids = random_ids(model, 2, 11)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    bias = torch.zeros(2, 1, 11, 11).masked_fill(~mask.bool()[:, None, None, :], -1e30)
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = llama(model)(input_ids=ids, attention_mask=bias).logits
        alone = model(ids[1:, 4:]).logits[0]
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-4
    torch.testing.assert_close(ours[1, 4:], alone, rtol=1e-5, atol=1e-5)


def test_mask_token_comes_from_the_checkpoint_files(tmp_path):
    """iLLaDA's config.json names no mask id; its tokenizer declares <[MASK]>. Without either, a
    checkpoint of another vocabulary than the released one is refused."""
    model = tiny_model("illada")
    model.config.pop("mask_token_id")
    dllm_accel.save_model(model, tmp_path)
    with pytest.raises(ValueError, match=r"cannot find the mask token id.*<\[MASK\]>"):
        dllm_accel.load_model(tmp_path)
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<[MASK]>": 5}))
    loaded = dllm_accel.load_model(tmp_path)
    assert isinstance(loaded, ILLaDAModel) and loaded.spec.mask_id == 5
    with torch.device("meta"):  # the released vocabulary: the README's mask_id=5
        released = ILLaDAModel(released_config("illada"))
    assert (released.spec.mask_id, released.spec.vocab_size) == (5, 155136)


def test_llada_sampler_decodes_it_and_forced_refresh_equals_nocache():
    model = tiny_model("illada", n_kv_heads=2, seed=4)
    assert Method.official(model, 8, 4).unmask == LowConfidence(steps=8)
    ids = random_ids(model, 2, 6)
    plain = Sampler(model, unmask=LowConfidence(8), cache=NoCache())
    forced = Sampler(
        model,
        unmask=LowConfidence(8),
        cache=ElasticCache(gamma=1.01, window=16, refresh_from="drifting"),
    )
    settings = dict(max_new_tokens=8, block_length=4)
    assert torch.equal(
        plain.generate(ids, **settings).sequences, forced.generate(ids, **settings).sequences
    )
