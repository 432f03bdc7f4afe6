"""The Dream-architecture code models (DiffuCoder-7B-Instruct, Dream-Coder-v0-Instruct-7B): their
bundled configs, special tokens from the checkpoint's files, stopping at <|dlm_pad|>, and logits
against transformers' Qwen2."""

import json

import pytest
import torch
from conftest import EOS, MASK, decoder, prompts, tiny_model
from test_models import left_padded, reference_logits

import dllm_accel
from dllm_accel import Sampler, StopAtEOS, Threshold
from dllm_accel.models import DreamModel, build_model, released_config, tiny_config
from dllm_accel.policies.stop import count_generated, is_stop

KINDS = ["diffucoder", "dream_coder"]
# the tiny vocabulary's top ids, as the checkpoint's tokenizer files declare them
END_OF_TURN, DLM_PAD = 125, 124
ADDED_TOKENS = {
    "<|endoftext|>": EOS,
    "<|mask|>": MASK,
    "<|im_end|>": END_OF_TURN,
    "<|dlm_pad|>": DLM_PAD,
}


def checkpoint(model, directory, tokens=ADDED_TOKENS, **config):
    """Save `model` with config.json's mask and end-of-turn fields removed (the released configs
    name no end-of-turn; here no mask either), `config` fields changed and `tokens` declared in an
    added_tokens.json."""
    for name in ("mask_token_id", "eot_token_id"):
        model.config.pop(name, None)
    model.config.update(config)
    dllm_accel.save_model(model, directory)
    if tokens is not None:
        (directory / "added_tokens.json").write_text(json.dumps(tokens))
    return directory


def test_bundled_configs_are_dream_architecture_with_the_released_ids():
    for kind in KINDS:
        config = released_config(kind)
        assert config["architectures"] == ["DreamModel"] and config["model_type"] == "Dream"
        with torch.device("meta"):
            spec = DreamModel(config).spec
        assert (spec.mask_id, spec.eos_id, spec.pad_id, spec.eot_id) == (
            151666,
            151643,
            151643,
            151645,
        )
        assert (spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.max_positions) == (
            28,
            4,
            128,
            131072,
        )
    # the tiny configs keep every released field (and add an end-of-turn id)
    assert set(tiny_config("diffucoder")) - set(released_config("diffucoder")) == {"eot_token_id"}


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_come_from_the_tokenizer_files(kind, tmp_path):
    directory = checkpoint(tiny_model(kind, n_heads=8, n_kv_heads=2), tmp_path)
    assert "mask_token_id" not in json.loads((directory / "config.json").read_text())
    model = dllm_accel.load_model(directory)
    spec = model.spec
    assert type(model) is DreamModel
    assert (spec.mask_id, spec.eos_id, spec.eot_id) == (MASK, EOS, END_OF_TURN)
    assert spec.stop_ids == (EOS, END_OF_TURN, DLM_PAD)
    assert spec.max_positions == 131072 and model.rope_theta == 1e6


def test_positions_and_rope_base_are_read_from_config_json(tmp_path):
    model = tiny_model("diffucoder")
    checkpoint(model, tmp_path, max_position_embeddings=4096, rope_theta=5e5)
    loaded = dllm_accel.load_model(tmp_path)
    assert (loaded.spec.max_positions, loaded.rope_theta) == (4096, 5e5)


@pytest.mark.parametrize(
    "tokens", [None, {"<|im_end|>": END_OF_TURN}], ids=["no-tokenizer-files", "no-mask-token"]
)
def test_a_checkpoint_that_names_no_mask_token_is_refused(tokens, tmp_path):
    checkpoint(tiny_model("diffucoder"), tmp_path, tokens=tokens)
    with pytest.raises(ValueError, match="cannot find the mask token id: config.json has no"):
        dllm_accel.load_model(tmp_path)


def test_stop_at_eos_ends_an_answer_at_dlm_pad(tmp_path):
    """A model that favours <|dlm_pad|> (and never emits EOS or end-of-turn): StopAtEOS ends rows at
    their first <|dlm_pad|>, counts it, and fills the rest with EOS."""
    source = decoder("diffucoder", seed=6, favour={DLM_PAD: 16.0, EOS: -30.0, END_OF_TURN: -30.0})
    model = dllm_accel.load_model(checkpoint(source, tmp_path))
    ids, mask = prompts(model, [7, 5, 9, 6], seed=6)
    out = Sampler(model, unmask=Threshold(0.9), stop=StopAtEOS()).generate(
        ids, mask, max_new_tokens=24, block_length=8
    )
    generated = out.sequences[:, ids.shape[1] :]
    assert not (generated == model.spec.mask_id).any()
    assert (out.generated_tokens < 24).sum() >= 2, "the case needs rows that emit <|dlm_pad|>"
    for row, n in enumerate(out.generated_tokens.tolist()):
        if n < 24:
            assert generated[row, n - 1] == DLM_PAD
            assert (generated[row, n:] == EOS).all()
        assert not is_stop(generated[row, : n - 1], model.spec).any()


def test_dlm_pad_is_a_stop_token_only_where_the_tokenizer_declares_it():
    row = torch.tensor([[3, 4, DLM_PAD, 5, 6]])
    with torch.device("meta"):
        declared = DreamModel(tiny_config("diffucoder"), tokens=ADDED_TOKENS).spec
        plain = DreamModel(tiny_config("dream_coder"), tokens={}).spec
    assert count_generated(row, declared).tolist() == [3]
    assert count_generated(row, plain).tolist() == [5]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_transformers_qwen2_with_a_bidirectional_mask(kind):
    model = tiny_model(kind, n_heads=8, n_kv_heads=2)  # GQA, 4 query heads per key/value head
    assert model.rope_theta == 1e6 and model.spec.n_kv_heads == 2
    ids, mask = left_padded(model, [13, 9, 13])
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = reference_logits(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_build_model_takes_the_code_model_kinds():
    model = build_model(tiny_config("dream_coder", vocab=64))
    assert type(model) is DreamModel and model.spec.vocab_size == 64
