"""Block-causal models (LLaDA2): the official loop reproduced token for token and forward for
forward, the exact prefix cache, ragged batches, and the combinations refused."""

import dataclasses
import types

import pytest
import reference_samplers as ref
import torch
from conftest import EOS, decoder, prompts
from test_guide import ar_model

from dllm_accel import (
    ARGuide,
    BlockPrefixCache,
    DualCache,
    ElasticCache,
    LowConfidence,
    NoCache,
    PrefixCache,
    Sampler,
    ScheduledThreshold,
    StopAfterBlock,
    Threshold,
    llada2_generate,
    sample_generators,
)
from dllm_accel.models.dream import DreamModel


def block_model(block, *, seed=0, eos=0.0):
    """A tiny random model attending block-causally (`eos`: how strongly it favours EOS), positions
    counted from each row's first token as LLaDA2's are."""
    model = decoder("llada", seed=seed, favour={EOS: eos} if eos else None)
    model.spec = dataclasses.replace(model.spec, block_size=block)
    model.positions = types.MethodType(DreamModel.positions, model)
    return model


CASES = {  # id: (prompt length, gen_length, block_length, steps, threshold, minimal_topk)
    "prompt-ends-mid-block": (5, 20, 8, 8, 0.95, 1),
    "prompt-ends-on-boundary": (8, 16, 8, 4, 0.9, 1),
    "long-prompt-short-answer": (13, 6, 4, 4, 0.8, 2),
    "threshold-never-met": (6, 12, 8, 8, 1.0, 1),
}


@pytest.mark.parametrize("eos_early_stop", [False, True])
@pytest.mark.parametrize("eos", [0.0, 14.0])
@pytest.mark.parametrize("case", CASES)
def test_official_loop_and_prefix_cache_equal_the_official_generate(case, eos, eos_early_stop):
    prompt_len, gen_length, block, steps, threshold, minimal_topk = CASES[case]
    model = block_model(block, eos=eos)
    ids, _ = prompts(model, [prompt_len])
    settings = dict(gen_length=gen_length, block_length=block, steps=steps, threshold=threshold)
    settings |= dict(minimal_topk=minimal_topk, eos_early_stop=eos_early_stop)
    answer, forwards = ref.llada2(model, ids, **settings)
    unmask = ScheduledThreshold(min(steps, gen_length // minimal_topk), threshold)
    outputs = {}
    for cache in (NoCache(), BlockPrefixCache()):
        sampler = Sampler(model, unmask=unmask, cache=cache, stop=StopAfterBlock(eos_early_stop))
        out = sampler.generate(ids, max_new_tokens=gen_length, block_length=block)
        assert out.sequences.shape == (1, prompt_len + gen_length)
        assert out.sequences[0, prompt_len:][: len(answer)].tolist() == answer.tolist()
        assert out.generated_tokens.tolist() == [len(answer)]
        assert out.nfe == forwards
        outputs[type(cache).__name__] = out
        assert torch.equal(llada2_generate(model, ids, cache=cache, **settings)[0], answer)
    # the cache computes each block's rows (and the previous block's once), never the prefix again
    assert outputs["BlockPrefixCache"].layer_units < outputs["NoCache"].layer_units


@pytest.mark.parametrize("block, eos", [(32, 9.0), (8, 12.0)])
@pytest.mark.parametrize("eos_early_stop", [False, True])
def test_tiny_llada2_decodes_as_the_official_generate(block, eos, eos_early_stop):
    """The native LLaDA2 model (the remote generate itself: experiments/check_remote.py
    --generate) under the official loop and the prefix cache, prompts ending mid-block and on a
    boundary, in one ragged batch."""
    model = decoder("llada2", seed=3, favour={EOS: eos})
    model.spec = dataclasses.replace(model.spec, block_size=block)
    lengths = [block + 3, block]
    ids, mask = prompts(model, lengths, seed=3)
    settings = dict(gen_length=40, block_length=block, steps=8, threshold=0.9)
    settings["eos_early_stop"] = eos_early_stop
    answers = [
        ref.llada2(model, ids[row : row + 1, -n:], **settings)[0] for row, n in enumerate(lengths)
    ]
    assert any(EOS in answer for answer in answers) and any(len(a) > 1 for a in answers)
    for cache in (NoCache(), BlockPrefixCache()):
        batch = llada2_generate(model, ids, attention_mask=mask, cache=cache, **settings)
        for row, answer in enumerate(answers):
            assert torch.equal(batch[row, : len(answer)], answer)


def test_the_prefix_cache_computes_a_block_and_its_predecessor_only():
    """Layer units of the prefix cache: the prompt and first block at the first step, then per step
    the block (two blocks at a block's first step)."""
    model = block_model(4)
    ids, _ = prompts(model, [8])
    sampler = Sampler(model, unmask=ScheduledThreshold(4, 1.0), trace=True)  # 1 token per step
    out = sampler.generate(ids, max_new_tokens=12, block_length=4)
    layers = model.n_layers
    first_block = (8 + 4) * layers + 3 * 4 * layers  # prompt + block at step 0, then the block
    later_blocks = 2 * (8 * layers + 3 * 4 * layers)
    assert out.nfe == 12 and out.layer_units == first_block + later_blocks


@pytest.mark.parametrize("cache", [NoCache(), BlockPrefixCache()], ids=["official", "prefix"])
def test_ragged_batch_decodes_each_row_as_alone(cache):
    model = block_model(8, eos=12.0, seed=1)
    lengths = [5, 8, 13, 3]
    ids, mask = prompts(model, lengths, seed=1)
    settings = dict(gen_length=20, block_length=8, steps=8, threshold=0.9, cache=cache)
    batch = llada2_generate(model, ids, attention_mask=mask, **settings)
    for row, n in enumerate(lengths):
        alone = llada2_generate(model, ids[row : row + 1, -n:], **settings)[0]
        assert torch.equal(batch[row, : len(alone)], alone)
        assert (batch[row, len(alone) :] == model.spec.eos_id).all()


def test_sampling_with_row_generators_is_batch_independent():
    model = block_model(8, seed=2)
    lengths = [6, 11]
    ids, mask = prompts(model, lengths, seed=2)
    unmask = ScheduledThreshold(8, 0.9, temperature=0.8, top_k=20, top_p=0.9)
    sampler = Sampler(model, unmask=unmask)
    batch = sampler.generate(
        ids, mask, max_new_tokens=16, generator=sample_generators(5, [0, 1], "cpu")
    )
    for row, n in enumerate(lengths):
        alone = sampler.generate(
            ids[row : row + 1, -n:], max_new_tokens=16, generator=sample_generators(5, [row], "cpu")
        )
        assert torch.equal(batch.sequences[row, -16:], alone.sequences[0, -16:])


def test_other_unmask_policies_run_on_the_block_grid():
    """Any unmask policy decodes a block-causal model; the prefix cache stays exact."""
    model = block_model(8)
    ids, mask = prompts(model, [5, 9])
    for unmask in (Threshold(0.7), LowConfidence(steps=24)):
        outs = [
            Sampler(model, unmask=unmask, cache=cache).generate(ids, mask, max_new_tokens=20)
            for cache in (NoCache(), BlockPrefixCache())
        ]
        assert torch.equal(outs[0].sequences, outs[1].sequences)


def test_the_ar_guide_decodes_block_causal_models_exactly_under_the_prefix_cache():
    model = block_model(8, eos=10.0)
    ids, mask = prompts(model, [5, 9])
    guide = ARGuide(ar_model(sharpness=5.0), acceptance="topk_relative", k=3, ratio=0.5)
    outs = [
        Sampler(model, unmask=ScheduledThreshold(8, 0.9), cache=cache, guide=guide).generate(
            ids, mask, max_new_tokens=20
        )
        for cache in (NoCache(), BlockPrefixCache())
    ]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert outs[0].ar_forwards == outs[1].ar_forwards > 0


@pytest.mark.parametrize("cache", [PrefixCache(), DualCache(), ElasticCache()])
def test_bidirectional_caches_are_refused_on_block_causal_models(cache):
    with pytest.raises(ValueError, match="block-causal model.*BlockPrefixCache"):
        Sampler(block_model(8), unmask=ScheduledThreshold(), cache=cache)


def test_the_prefix_cache_is_refused_on_bidirectional_models():
    with pytest.raises(ValueError, match="needs a block-causal model"):
        Sampler(decoder("llada"), unmask=Threshold(0.9), cache=BlockPrefixCache())


def test_the_prefix_cache_is_the_default_of_block_causal_models():
    assert isinstance(Sampler(block_model(8), unmask=Threshold(0.9)).cache, BlockPrefixCache)


def test_bad_arguments_are_named():
    model = block_model(8)
    ids, _ = prompts(model, [5])
    with pytest.raises(ValueError, match="steps \\(16\\) must not exceed the block length \\(8\\)"):
        Sampler(model, unmask=ScheduledThreshold(16)).generate(ids, max_new_tokens=8)
    with pytest.raises(ValueError, match="threshold"):
        ScheduledThreshold(threshold=1.5)
    with pytest.raises(ValueError, match="mask_id=5 differs from the model.s mask token"):
        llada2_generate(model, ids, gen_length=8, block_length=8, mask_id=5)
    with pytest.raises(ValueError, match="eos_early_stop"):
        StopAfterBlock(eos_early_stop="yes")
