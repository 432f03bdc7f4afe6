"""Hugging Face layout: save -> load round trips, from_hf sharing storage, and every bad
checkpoint."""

import json

import pytest
import torch
from conftest import MODEL_TYPES, StandIn, random_ids, shared_path, tiny_model
from safetensors.torch import load_file, save_file
from torch import nn

import dllm_accel
from dllm_accel.models import LLaDAModel
from dllm_accel.models.loading import INDEX_FILE, SINGLE_FILE


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("shard_bytes", [None, 20_000], ids=["single", "sharded"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_load_round_trip(tmp_path, model_type, shard_bytes):
    model = tiny_model(model_type, n_kv_heads=2)
    dllm_accel.save_model(model, tmp_path, max_shard_bytes=shard_bytes)
    if shard_bytes:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert len(set(index["weight_map"].values())) > 2
        assert not (tmp_path / SINGLE_FILE).exists()
    loaded = dllm_accel.load_model(tmp_path)
    assert (
        type(loaded) is type(model) and loaded.spec == model.spec and loaded.dtype == torch.float32
    )
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids = random_ids(model, 2, 10)
    assert torch.equal(logits(model, ids), logits(loaded, ids))


def test_dtype_and_device_arguments(tmp_path):
    dllm_accel.save_model(tiny_model("llada", dtype=torch.bfloat16), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert dllm_accel.load_model(tmp_path).dtype == torch.bfloat16  # None keeps what is stored
    model = dllm_accel.load_model(tmp_path, dtype="float32", device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    # accelerate's
    assert dllm_accel.load_model(tmp_path, device=torch.device("cpu", 0)).device.type == "cpu"
    assert dllm_accel.load_model(tmp_path, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype must be .* got 'int8'"):
        dllm_accel.load_model(tmp_path, dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without CUDA")
@pytest.mark.parametrize(
    "device", ["cuda", "cuda:1", torch.device("cuda")], ids=["cuda", "cuda:1", "torch.device"]
)
def test_a_cuda_device_without_cuda_is_refused_before_loading(device, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was read before the device was checked")

    monkeypatch.setattr(dllm_accel.models.loading, "read_config", refuse)
    with pytest.raises(ValueError, match=r"device=.*cuda.*: CUDA is not available on this machine"):
        dllm_accel.load_model("tiny-llada", device=device)


def test_a_device_that_is_no_device_is_named():
    with pytest.raises(
        ValueError, match=r"device must be None, a torch.device or its name .*got 'gpu'"
    ):
        dllm_accel.load_model("tiny-llada", device="gpu")


def test_saving_again_replaces_an_earlier_sharded_save(tmp_path):
    model = tiny_model("Dream")
    dllm_accel.save_model(tiny_model("Dream", seed=5), tmp_path, max_shard_bytes=20_000)
    dllm_accel.save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", SINGLE_FILE]
    ids = random_ids(model, 1, 6)
    assert torch.equal(logits(dllm_accel.load_model(tmp_path), ids), logits(model, ids))


def test_end_of_turn_id_comes_from_the_tokenizer_files(tmp_path):
    model = tiny_model("llada")
    model.config.pop("eot_token_id")
    dllm_accel.save_model(model, tmp_path)
    # 126348 lies outside this vocabulary
    assert dllm_accel.load_model(tmp_path).spec.eot_id is None
    decoder = {"120": {"content": "<|eot_id|>", "special": True}, "121": {"content": "<|other|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert dllm_accel.load_model(tmp_path).spec.eot_id == 120


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_from_hf_shares_the_parameter_tensors(model_type):
    source = tiny_model(model_type, n_kv_heads=2)
    hf = StandIn(source.state_dict(), source.config)
    native = dllm_accel.from_hf(hf)
    hf_params = dict(hf.named_parameters())
    for name, param in native.named_parameters():
        assert param.data_ptr() == hf_params[name].data_ptr(), name
    ids = random_ids(source, 2, 8)
    assert torch.equal(logits(native, ids), logits(source, ids))
    with torch.no_grad():  # a change made through the HF model is seen by the native one
        hf_params[next(iter(hf_params))].add_(1.0)
    assert not torch.equal(logits(native, ids), logits(source, ids))


def test_from_hf_leaves_the_hf_models_parameters_as_they_were():
    source = tiny_model("llada")
    hf = StandIn(source.state_dict(), source.config)
    hf.requires_grad_(False)
    native = dllm_accel.from_hf(hf)
    assert not any(p.requires_grad for p in hf.parameters())
    assert not any(p.requires_grad for p in native.parameters())


def test_a_failed_save_leaves_the_earlier_checkpoint_whole(tmp_path, monkeypatch):
    first = tiny_model("llada")
    dllm_accel.save_model(first, tmp_path, max_shard_bytes=20_000)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(dllm_accel.models.loading, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        dllm_accel.save_model(tiny_model("llada", seed=3), tmp_path, max_shard_bytes=20_000)
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    } == before  # no staging folder left either


def test_from_hf_rejects_what_is_not_a_transformers_model():
    with pytest.raises(TypeError, match="from_hf expects a transformers model"):
        dllm_accel.from_hf(nn.Linear(2, 2))


def test_from_hf_names_a_missing_parameter():
    source = tiny_model("Dream")
    state = source.state_dict()
    state.pop("model.norm.weight")
    with pytest.raises(ValueError, match=r"1 missing key\(s\), e.g. \['model.norm.weight'\]"):
        dllm_accel.from_hf(StandIn(state, source.config))


# -- bad checkpoints
# --------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    dllm_accel.save_model(tiny_model("llada"), tmp_path)
    return tmp_path


@pytest.fixture
def sharded(tmp_path):
    dllm_accel.save_model(tiny_model("Dream"), tmp_path, max_shard_bytes=20_000)
    return tmp_path


def edit_config(directory, drop=(), **changes):
    config = json.loads((directory / "config.json").read_text())
    for field in drop:
        del config[field]
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def edit_weights(directory, edit):
    state = load_file(directory / SINGLE_FILE)
    edit(state)
    save_file(state, directory / SINGLE_FILE)


SUPPORTED = (
    r"supported.*: \['DreamModel', 'ILLaDAForCausalLM', 'LLaDA2MoeModelLM', 'LLaDAMoEModelLM', "
    r"'LLaDAModelLM'\]"
)


def test_unsupported_architecture(saved):
    edit_config(saved, architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match=r"architectures=\['LlamaForCausalLM'\] .*" + SUPPORTED):
        dllm_accel.load_model(saved)
    edit_config(saved, drop=["architectures"], model_type="llama")
    with pytest.raises(ValueError, match=r"unsupported model_type 'llama'; .*" + SUPPORTED):
        dllm_accel.load_model(saved)
    edit_config(saved, model_type="llada")  # no architectures: the model_type decides
    assert isinstance(dllm_accel.load_model(saved), LLaDAModel)


def test_unsupported_architecture_option(saved):
    edit_config(saved, alibi=True)
    with pytest.raises(
        ValueError, match=r"alibi=True is not supported; supported values: \(False, None\)"
    ):
        dllm_accel.load_model(saved)


def test_missing_config_field(saved):
    edit_config(saved, drop=["n_layers"])
    with pytest.raises(ValueError, match="config.json is missing the required field 'n_layers'"):
        dllm_accel.load_model(saved)


def test_rope_theta_default_and_rope_parameters(saved):
    edit_config(saved, drop=["rope_theta"])
    assert dllm_accel.load_model(saved).rope_theta == 10000.0  # the remote config's default
    edit_config(saved, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert dllm_accel.load_model(saved).rope_theta == 500000.0  # where transformers 5 puts it
    edit_config(saved, rope_parameters={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match=r"rope_parameters.rope_type='yarn' is not supported"):
        dllm_accel.load_model(saved)


def test_multi_query_attention_contradicting_n_kv_heads(saved):
    edit_config(saved, multi_query_attention=True, n_kv_heads=2)
    with pytest.raises(
        ValueError, match=r"n_kv_heads=2 is not supported; supported values: \(None, 1\)"
    ):
        dllm_accel.load_model(saved)


def test_llada_ties_weights_when_its_config_does_not_say(saved):
    """The remote LLaDA config defaults weight_tying to True."""
    edit_config(saved, drop=["weight_tying"])
    edit_weights(saved, lambda s: s.pop("model.transformer.ff_out.weight"))
    model = dllm_accel.load_model(saved)
    assert model.head_weight is model.embedding.weight


def test_mixed_dtype_checkpoint_loads_in_one_dtype(saved):
    norm = "model.transformer.ln_f.weight"
    edit_weights(saved, lambda s: s.update({norm: s[norm].half()}))
    edit_config(saved, drop=["torch_dtype"])
    assert {p.dtype for p in dllm_accel.load_model(saved).parameters()} == {torch.float32}
    edit_config(saved, torch_dtype="bfloat16")
    assert {p.dtype for p in dllm_accel.load_model(saved).parameters()} == {torch.bfloat16}


def test_special_id_outside_the_vocabulary(saved):
    edit_config(saved, mask_token_id=126336)
    with pytest.raises(
        ValueError, match=r"mask_token_id=126336 lies outside the vocabulary \[0, 128\)"
    ):
        dllm_accel.load_model(saved)


def test_missing_directory_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dllm_accel.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        dllm_accel.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_model("llada").config))
    with pytest.raises(FileNotFoundError, match=f"neither {SINGLE_FILE} nor {INDEX_FILE}"):
        dllm_accel.load_model(tmp_path)


def test_missing_shard(sharded):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"shard\(s\) \['{shard.name}'\] listed in .* are missing"
    ):
        dllm_accel.load_model(sharded)


def test_shard_lacking_a_key_its_index_promises(sharded):
    index = json.loads((sharded / INDEX_FILE).read_text())
    index["weight_map"]["model.norm.weight"] = sorted(set(index["weight_map"].values()))[0]
    owner = sorted(set(index["weight_map"].values()))[0]
    state = load_file(sharded / owner)
    state.pop("model.norm.weight", None)
    save_file(state, sharded / owner)
    (sharded / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"{owner} lacks \['model.norm.weight'\]"):
        dllm_accel.load_model(sharded)


def test_missing_key(saved):
    edit_weights(saved, lambda s: s.pop("model.transformer.blocks.1.up_proj.weight"))
    with pytest.raises(
        ValueError,
        match=r"1 missing key\(s\), e.g. \['model.transformer.blocks.1.up_proj.weight'\]",
    ):
        dllm_accel.load_model(saved)


def test_unexpected_key(saved):
    edit_weights(
        saved, lambda s: s.update({"model.transformer.blocks.0.q_proj.bias": torch.zeros(64)})
    )
    with pytest.raises(
        ValueError,
        match=r"1 unexpected key\(s\), e.g. \['model.transformer.blocks.0.q_proj.bias'\]",
    ):
        dllm_accel.load_model(saved)


def test_shape_mismatch(saved):
    edit_weights(saved, lambda s: s.update({"model.transformer.ln_f.weight": torch.ones(63)}))
    with pytest.raises(
        ValueError, match=r"model.transformer.ln_f.weight: expected \(64,\), found \(63,\)"
    ):
        dllm_accel.load_model(saved)


def test_weight_tying_loads_with_or_without_a_stored_head(tmp_path):
    tied = tiny_model("Dream", tie_word_embeddings=True)
    assert "lm_head.weight" not in tied.state_dict()
    dllm_accel.save_model(tied, tmp_path)
    loaded = dllm_accel.load_model(tmp_path)
    assert loaded.head_weight is loaded.embedding.weight
    ids = random_ids(tied, 1, 5)
    assert torch.equal(logits(loaded, ids), logits(tied, ids))
    # a checkpoint that also stores the tied head's copy loads the same (as Hugging Face ties it)
    edit_weights(
        tmp_path,
        lambda s: s.update({"lm_head.weight": torch.zeros_like(s["model.embed_tokens.weight"])}),
    )
    assert torch.equal(logits(dllm_accel.load_model(tmp_path), ids), logits(tied, ids))


def test_released_config_files_build(tmp_path):
    """The real config.json files as published build on the meta device without complaint."""
    for name in ["llada-8b-instruct", "dream-v0-instruct-7b"]:
        config = json.loads(shared_path(name, "config.json").read_text())
        with torch.device("meta"):
            model = dllm_accel.models.loading.model_class(config)(config)
        assert model.spec.vocab_size == config.get("embedding_size", config["vocab_size"])
