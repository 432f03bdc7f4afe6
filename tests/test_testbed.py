"""The bundled testbed: tokenizer, models loadable by name, and each solving held-out problems."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import dllm_accel
from dllm_accel import DreamAlgorithm, LowConfidence, Sampler
from dllm_accel.tasks import arith

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import bench  # noqa: E402
import train_tiny  # noqa: E402

HELD_OUT = arith.problems(24, seed=123, split="test")


@pytest.fixture(scope="module")
def tokenizer():
    return dllm_accel.load_tokenizer("tiny-llada")


def test_tokenizer_round_trips_every_character_the_task_produces(tokenizer):
    texts = [t for p in arith.problems(300, seed=0, split="train") for t in (p.question, p.solution)]
    characters = sorted(set("".join(texts)) | set("0123456789#=+-*. "))
    for text in [*texts, "".join(characters)]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert type(AutoTokenizer.from_pretrained(dllm_accel.assets.path("tiny-ar"))).__name__ == type(tokenizer).__name__


def test_special_tokens_and_chat_template_agree_with_every_model(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    for name in ("tiny-llada", "tiny-dream"):
        assert dllm_accel.load_tokenizer(name).get_vocab() == tokenizer.get_vocab()
        spec = dllm_accel.load_model(name).spec
        assert (spec.mask_id, spec.eos_id, spec.eot_id) == (tokenizer.mask_token_id, tokenizer.eos_token_id, eot)
    text = arith.prompt(HELD_OUT[0], tokenizer)
    assert text == f"<|user|>{HELD_OUT[0].question}<|eot|><|assistant|>"


def test_bundled_models_record_how_they_were_trained():
    for name in dllm_accel.assets.BUNDLED:
        metrics = json.loads((dllm_accel.assets.path(name) / "metrics.json").read_text())
        assert {"command", "seed", "steps", "minutes", "final_loss", "gen_length", "block_length"} <= set(metrics)
        assert metrics["minutes"] <= 60
    with pytest.raises(ValueError, match=r"no bundled model named 'tiny-gpt'; bundled: \('tiny-llada'"):
        dllm_accel.assets.path("tiny-gpt")


def _solved(texts) -> float:
    return sum(map(arith.is_correct, texts, HELD_OUT)) / len(HELD_OUT)


def _batch(tokenizer):
    return dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in HELD_OUT])


@pytest.mark.parametrize("name, unmask, block_length", [
    ("tiny-llada", LowConfidence(48), 24),
    ("tiny-dream", DreamAlgorithm("entropy", 48), None),
])
def test_diffusion_models_solve_held_out_problems_with_their_baseline(name, unmask, block_length, tokenizer):
    model = dllm_accel.load_model(name)
    assert model.dtype == torch.float32, "stored in 16 bits, run in fp32 by default"
    batch = _batch(tokenizer)
    out = Sampler(model, unmask=unmask).generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=48,
                                                 block_length=block_length)
    texts = tokenizer.batch_decode(out.sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert _solved(texts) >= 0.6


def test_ar_model_solves_held_out_problems_greedily(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(dllm_accel.assets.path("tiny-ar")).eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|eot|>"))
    assert _solved(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)) >= 0.75


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_every_benchmarked_method_decodes_the_testbed(name, tokenizer):
    model = dllm_accel.load_model(name)
    for label, (cache, unmask, block_length) in bench.methods(model, 48, 24, [0.9]).items():
        result = bench.decode(model, tokenizer, HELD_OUT[:8], 4, cache, unmask, 48, block_length)
        assert result["accuracy"] >= 0.6, label
        assert 0 < result["recompute_fraction"] <= 1 and result["tokens_per_s"] > 0


def test_semi_ar_training_states():
    """--block-share: chosen rows look like a blocked decoder's state (earlier blocks clean, later ones
    masked, the current one partly) and only the current block's masks are scored."""
    generator = torch.Generator().manual_seed(0)
    answer = torch.zeros(64, 10, dtype=torch.bool)
    answer[:, 4:] = True  # a 6-token answer in blocks of 2 after a 4-token prompt
    masked = (torch.rand(64, 10, generator=generator) < 0.5) & answer
    noised, scored, region = train_tiny.semi_ar_states(masked, answer, 2, 0.5, generator)
    chosen = region.sum(1) == 2  # the scoreable region of a chosen row is its current block
    assert 10 < int(chosen.sum()) < 54
    for row in range(64):
        if region[row].sum() == 6:  # not chosen: LLaDA's masking, every masked answer token scored
            assert torch.equal(noised[row], masked[row]) and torch.equal(scored[row], masked[row])
            continue
        block = int(region[row].nonzero()[0]) // 2 * 2
        assert not noised[row, :block].any() and noised[row, block + 2:].all()
        assert torch.equal(scored[row], masked[row] & region[row])
        assert torch.equal(noised[row, block:block + 2], masked[row, block:block + 2])
