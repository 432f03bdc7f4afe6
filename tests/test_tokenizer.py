"""Tokenizers and chat templates: Dream's real tokenizer files; LLaDA's real template on a small
vocabulary."""

import json

import pytest
import torch
from conftest import shared_path, tiny_model
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import dllm_accel

DREAM_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def test_dream_chat_template_from_the_real_tokenizer_files():
    tokenizer = dllm_accel.load_tokenizer(shared_path("dream-v0-instruct-7b"))
    batch = dllm_accel.encode_chat(tokenizer, ["What is 2+3?", [{"role": "user", "content": "Hi"}]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert lengths[0] > lengths[1] and ids.shape == (2, lengths[0])
    short = ids[1, ids.shape[1] - lengths[1] :]
    assert (
        tokenizer.decode(short)
        == DREAM_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert mask[1].tolist() == [0] * (lengths[0] - lengths[1]) + [1] * lengths[1]  # left padding
    assert (ids[1, : lengths[0] - lengths[1]] == tokenizer.pad_token_id).all()
    bos = tokenizer.convert_tokens_to_ids("<|beginoftext|>")
    assert bos not in ids.tolist()[0] and ids[0, 0].item() == tokenizer.convert_tokens_to_ids(
        "<|im_start|>"
    )
    assert tokenizer.convert_tokens_to_ids(["<|mask|>", "<|im_end|>", "<|endoftext|>"]) == [
        151666,
        151645,
        151643,
    ]


def test_dream_checkpoint_spec_takes_its_special_tokens_from_its_tokenizer_files():
    directory = shared_path("dream-v0-instruct-7b")
    config = json.loads((directory / "config.json").read_text())
    tokens = dllm_accel.models.loading.tokenizer_tokens(directory)
    assert (tokens["<|im_end|>"], tokens["mask_token"]) == (151645, 151666)
    del config["mask_token_id"]
    with torch.device("meta"):
        model = dllm_accel.models.DreamModel(config, tokens=tokens)
    assert (model.spec.eot_id, model.spec.mask_id) == (151645, 151666)


def small_llada_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level vocabulary, the released LLaDA special tokens and its real chat template."""
    template = json.loads(shared_path("llada-8b-instruct", "tokenizer_config.json").read_text())[
        "chat_template"
    ]
    chars = sorted(
        set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?!+-*/=\n")
    )
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=" "))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    specials = [
        "<|startoftext|>",
        "<|endoftext|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|mdm_mask|>",
    ]
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[1],
        mask_token=specials[5],
    )
    tokenizer.chat_template = template
    return tokenizer


def test_llada_chat_template_starts_with_exactly_one_bos(tmp_path):
    model = tiny_model("llada")
    model.config.pop("eot_token_id")
    dllm_accel.save_model(model, tmp_path)
    small_llada_tokenizer().save_pretrained(tmp_path)
    tokenizer = dllm_accel.load_tokenizer(tmp_path)
    ids = dllm_accel.encode_chat(tokenizer, "What is 7*6?")["input_ids"][0].tolist()
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert ids[0] == bos and ids.count(bos) == 1
    text = "".join(tokenizer.convert_ids_to_tokens(ids))
    assert text == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 7*6?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # the model's end-of-turn id is the tokenizer's, read from the files saved beside it
    assert dllm_accel.load_model(tmp_path).spec.eot_id == tokenizer.convert_tokens_to_ids(
        "<|eot_id|>"
    )


def test_encode_chat_bad_input():
    tokenizer = small_llada_tokenizer()
    with pytest.raises(ValueError, match="conversations must be"):
        dllm_accel.encode_chat(tokenizer, [])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        dllm_accel.encode_chat(tokenizer, "hi")


def test_encode_texts_left_pads_plain_prompts():
    tokenizer = dllm_accel.load_tokenizer("tiny-llada")
    batch = dllm_accel.encode_texts(tokenizer, ["a=1.", "a=1. b=a+2."], add_special_tokens=False)
    short, long = (
        tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["a=1.", "a=1. b=a+2."]
    )
    assert batch["input_ids"][1].tolist() == long and batch["attention_mask"][1].all()
    assert batch["input_ids"][0, -len(short) :].tolist() == short
    assert batch["attention_mask"][0].tolist() == [0] * (len(long) - len(short)) + [1] * len(short)
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        dllm_accel.encode_texts(tokenizer, "a=1.")
