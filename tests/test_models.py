"""Native backbones: forward against an independent implementation, layer-wise surface, padding,
dtypes."""

import json

import pytest
import torch
import transformers
from conftest import MODEL_TYPES, random_ids, shared_path, tiny_model

from dllm_accel.models import DreamModel, LLaDAModel, attend
from dllm_accel.models.tiny import released_config


def llada_to_llama_keys(name: str) -> str:
    """LLaDA checkpoint key -> the same tensor's key in transformers' Llama."""
    name = name.replace("model.transformer.ff_out.", "lm_head.")
    name = name.replace("model.transformer.wte.", "model.embed_tokens.")
    name = name.replace("model.transformer.ln_f.", "model.norm.")
    name = name.replace("model.transformer.blocks.", "model.layers.")
    for ours, theirs in [
        ("attn_norm", "input_layernorm"),
        ("ff_norm", "post_attention_layernorm"),
        ("q_proj", "self_attn.q_proj"),
        ("k_proj", "self_attn.k_proj"),
        ("v_proj", "self_attn.v_proj"),
        ("attn_out", "self_attn.o_proj"),
        ("ff_proj", "mlp.gate_proj"),
        ("up_proj", "mlp.up_proj"),
        ("ff_out", "mlp.down_proj"),
    ]:
        name = name.replace(f".{ours}.", f".{theirs}.")
    return name


def reference_model(model):
    """transformers' Llama (for LLaDA) or Qwen2 (for Dream) holding the same weights, eager
    attention."""
    s = model.spec
    common = dict(
        vocab_size=s.vocab_size,
        hidden_size=s.d_model,
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        attn_implementation="eager",
    )
    if isinstance(model, LLaDAModel):
        c = model.config
        config = transformers.LlamaConfig(
            intermediate_size=c["mlp_hidden_size"],
            rms_norm_eps=c["rms_norm_eps"],
            rope_theta=c["rope_theta"],
            **common,
        )
        reference = transformers.LlamaForCausalLM(config)
        state = {llada_to_llama_keys(k): v for k, v in model.state_dict().items()}
    else:
        c = model.config
        config = transformers.Qwen2Config(
            intermediate_size=c["intermediate_size"],
            rms_norm_eps=c["rms_norm_eps"],
            rope_theta=c["rope_theta"],
            **common,
        )
        reference = transformers.Qwen2ForCausalLM(config)
        state = model.state_dict()
    reference.load_state_dict(state, strict=True)
    return reference.to(model.dtype).eval()


def reference_logits(model, input_ids, attention_mask):
    """Logits of the reference with a bidirectional mask hiding padded keys and the model's
    positions."""
    reference = reference_model(model)
    b, t = input_ids.shape
    keys = torch.ones(b, t, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    bias = torch.zeros(b, 1, t, t, dtype=model.dtype).masked_fill(
        ~keys[:, None, None, :], torch.finfo(model.dtype).min
    )
    if isinstance(model, LLaDAModel) or attention_mask is None:  # absolute positions
        positions = torch.arange(t).expand(b, t)
    else:  # Dream's diffusion_generate: count of real tokens before, padding at 1
        positions = torch.where(keys, attention_mask.cumsum(-1) - 1, 1)
    return reference(input_ids=input_ids, attention_mask=bias, position_ids=positions).logits


def left_padded(model, lengths, seed=0):
    width = max(lengths)
    ids = random_ids(model, len(lengths), width, seed)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, : width - n] = model.spec.pad_id
        mask[row, width - n :] = 1
    return ids, mask


@pytest.mark.parametrize("n_kv_heads", [None, 2], ids=["MHA", "GQA"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_forward_equals_independent_implementation(model_type, n_kv_heads):
    model = tiny_model(model_type, n_kv_heads=n_kv_heads)
    ids, mask = left_padded(model, [13, 9, 13])
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = reference_logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no mask at all: every position counts
        torch.testing.assert_close(
            model(ids[:1]).logits, reference_logits(model, ids[:1], None), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_full_forward_is_the_layerwise_composition_for_any_query_rows(model_type):
    """Query a subset of rows at their true positions against every key: the subset's rows of the
    full forward come out, at every layer."""
    model = tiny_model(model_type, n_kv_heads=2)
    ids, mask = left_padded(model, [11, 8])
    rows = torch.tensor([3, 4, 7, 10])  # all real in both rows
    positions = model.positions(mask, ids.shape[1]).expand(ids.shape)
    keys = mask.bool()
    with torch.no_grad():
        h_all = model.embed(ids)
        h_sub = model.embed(ids[:, rows])
        rope_all, rope_sub = model.rotary(positions), model.rotary(positions[:, rows])
        for i in range(model.n_layers):
            q, k, v = model.layer(i).qkv(h_all, rope_all)
            q_sub, k_sub, v_sub = model.layer(i).qkv(h_sub, rope_sub)
            torch.testing.assert_close(k_sub, k[:, :, rows], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(v_sub, v[:, :, rows], rtol=1e-6, atol=1e-6)
            h_sub = model.layer(i).finish(h_sub, attend(q_sub, k, v, keys))
            h_all = model.layer(i).finish(h_all, attend(q, k, v, keys))
            torch.testing.assert_close(h_sub, h_all[:, rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            model.head(h_sub), model(ids, mask).logits[:, rows], rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_left_padded_row_equals_the_row_alone(model_type):
    model = tiny_model(model_type, n_kv_heads=2)
    ids, mask = left_padded(model, [15, 6, 11])
    with torch.no_grad():
        batch = model(ids, mask).logits
        for row, n in enumerate([15, 6, 11]):
            alone = model(ids[row : row + 1, 15 - n :]).logits[0]
            torch.testing.assert_close(batch[row, 15 - n :], alone, rtol=1e-5, atol=1e-5)


def test_positions_follow_each_models_rule():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    llada, dream = tiny_model("llada"), tiny_model("Dream")
    assert llada.positions(mask, 5).tolist() == [[0, 1, 2, 3, 4]]
    assert dream.positions(mask, 5).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bf16_tracks_fp32(model_type):
    fp32 = tiny_model(model_type, n_kv_heads=2)
    bf16 = tiny_model(model_type, n_kv_heads=2, dtype=torch.bfloat16)
    ids, mask = left_padded(fp32, [12, 7])
    with torch.no_grad():
        exact, low = fp32(ids, mask).logits, bf16(ids, mask).logits
    assert low.dtype == torch.bfloat16
    real = mask.bool()
    error = (low.float() - exact)[real].abs().max()
    assert error < 0.05 * exact[real].abs().max()


def test_rope_precision_is_each_models_own():
    """LLaDA rotates q/k in fp32 (rope_full_precision); Dream casts the tables to the model
    dtype."""
    positions = torch.arange(6)[None]
    llada = tiny_model("llada", dtype=torch.bfloat16)
    dream = tiny_model("Dream", dtype=torch.bfloat16)
    assert llada.rotary(positions).cos.dtype == torch.float32
    assert dream.rotary(positions).cos.dtype == torch.bfloat16
    low = tiny_model("llada", dtype=torch.bfloat16, rope_full_precision=False)
    assert low.rotary(positions).cos.dtype == torch.bfloat16
    q, k, v = llada.layer(0).qkv(llada.embed(torch.arange(6)[None]), llada.rotary(positions))
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16


def test_dream_bf16_equals_qwen2_bf16():
    """Dream's remote code is Qwen2's math with bidirectional attention, bf16 RoPE included."""
    model = tiny_model("Dream", n_kv_heads=2, dtype=torch.bfloat16)
    ids, mask = left_padded(model, [12, 7])
    with torch.no_grad():
        ours, theirs = model(ids, mask).logits, reference_logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real].float(), theirs[real].float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_spec(model_type):
    model = tiny_model(model_type)
    spec = model.spec
    assert (spec.mask_id, spec.eos_id, spec.pad_id, spec.eot_id) == (127, 126, 126, 125)
    assert spec.logit_shift == (0 if model_type == "llada" else 1)
    assert (spec.n_layers, spec.d_model, spec.head_dim, spec.vocab_size) == (2, 64, 16, 128)


@pytest.mark.parametrize(
    "model_type, released, index_dir, ids",
    [
        ("llada", LLaDAModel, "llada-8b-instruct", (126336, 126081, 126081, 126348)),
        ("Dream", DreamModel, "dream-v0-instruct-7b", (151666, 151643, 151643, 151645)),
    ],
)
def test_parameter_names_and_sizes_are_the_released_checkpoints(
    model_type, released, index_dir, ids
):
    """Built from the real config on the meta device: exactly the real key set, and parameter
    counts that add up to the real bf16 total size."""
    index = json.loads(shared_path(index_dir, "model.safetensors.index.json").read_text())
    with torch.device("meta"):
        model = released(released_config(model_type))
    state = model.state_dict()
    assert set(state) == set(index["weight_map"])
    assert sum(t.numel() for t in state.values()) * 2 == index["metadata"]["total_size"]
    spec = model.spec
    assert (spec.mask_id, spec.eos_id, spec.pad_id, spec.eot_id) == ids


@pytest.mark.parametrize(
    "bad_ids, message",
    [
        (torch.tensor([[1, 2, 128]]), r"outside the vocabulary \[0, 128\).*max 128"),
        (torch.tensor([[-1, 2, 3]]), r"outside the vocabulary \[0, 128\).*min -1"),
        (
            torch.tensor([1, 2, 3]),
            r"input_ids must be an integer tensor of shape \[batch, length\]",
        ),
        (torch.tensor([[1.0, 2.0]]), r"input_ids must be an integer tensor"),
        (torch.zeros(1, 0, dtype=torch.long), r"input_ids is empty"),
    ],
)
def test_bad_input_ids(bad_ids, message):
    with pytest.raises(ValueError, match=message):
        tiny_model("llada")(bad_ids)


@pytest.mark.parametrize(
    "mask, message",
    [
        (
            torch.ones(1, 4, dtype=torch.long),
            r"attention_mask must have the shape of input_ids \(1, 3\), got \(1, 4\)",
        ),
        (torch.ones(3, dtype=torch.long), r"attention_mask must have the shape of input_ids"),
        (torch.tensor([[0, 2, 1]]), r"attention_mask must hold only 0 \(padding\) and 1"),
        (torch.tensor([[0, 0, 0]]), r"attention_mask has a row with no token"),
    ],
)
def test_bad_attention_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        tiny_model("Dream")(torch.tensor([[1, 2, 3]]), mask)
