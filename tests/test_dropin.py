"""patch() on remote-code models: with nothing accelerated, a patched entry point decodes as the
unpatched one would, its settings resolved by the model's own methods (legacy generation defaults
included)."""

import pytest
import torch
from conftest import DreamGenerationConfig, DreamRemote, StandIn, decoder, prompts
from reference_samplers import dream as official_dream
from reference_samplers import llada as official_llada

import dllm_accel
from dllm_accel.dropin import _dream_call

ALGS = ["maskgit_plus", "topk_margin", "entropy"]


def unpatched(remote, native, ids, mask, generation_config=None, **kwargs):
    """What the remote diffusion_generate decodes at temperature 0: its own resolution, Dream's
    loop."""
    config = remote._prepare_generation_config(generation_config, **kwargs)
    config = remote._prepare_generated_length(
        config, kwargs.get("max_length") is None, ids.shape[1]
    )
    assert config.temperature == 0, "the plain statement covers greedy decoding"
    return official_dream(
        native,
        ids,
        mask,
        max_new_tokens=config.max_length - ids.shape[1],
        steps=config.steps,
        alg=config.alg,
        eps=config.eps,
        top_p=config.top_p,
        top_k=config.top_k,
    )


@pytest.mark.parametrize("lengths", [(7,), (7, 4)], ids=["B1", "B2-left-padded"])
@pytest.mark.parametrize("legacy_defaults", [True, False], ids=["transformers-4", "transformers-5"])
@pytest.mark.parametrize("alg", ALGS)
def test_patched_diffusion_generate_decodes_as_unpatched(alg, legacy_defaults, lengths):
    native = decoder("Dream", seed=31)
    remote = DreamRemote(native, legacy_defaults=legacy_defaults)
    ids, mask = prompts(native, list(lengths), seed=31)
    mask = None if len(lengths) == 1 else mask
    call = dict(max_new_tokens=16, steps=16, temperature=0.0, alg=alg)
    expected = unpatched(remote, native, ids, mask, **call)
    dllm_accel.patch(remote)
    assert torch.equal(remote.diffusion_generate(ids, attention_mask=mask, **call), expected)
    # a config: no legacy defaults
    config = DreamGenerationConfig(max_new_tokens=16, steps=16, alg=alg, top_k=3)
    assert torch.equal(
        remote.diffusion_generate(ids, generation_config=config, attention_mask=mask),
        unpatched(remote, native, ids, mask, generation_config=config),
    )
    assert torch.equal(
        remote.diffusion_generate(ids, generation_config=config, attention_mask=mask, top_k=None),
        unpatched(remote, native, ids, mask, generation_config=config, top_k=None),
    )


def test_the_settings_a_dream_user_gets_by_default():
    """Under transformers 4.x the model config's legacy defaults decide what an unconfigured call
    does: sampling at temperature 1 among the top 50 tokens (Dream's own defaults are greedy, no
    top-k)."""
    native = decoder("Dream", seed=32)
    ids, _ = prompts(native, [5], seed=32)
    legacy = _dream_call(DreamRemote(native, legacy_defaults=True), ids, None, {})
    assert (legacy["temperature"], legacy["top_k"], legacy["top_p"], legacy["alg"]) == (
        1.0,
        50,
        1.0,
        "origin",
    )
    assert legacy["max_new_tokens"] == 20 and legacy["steps"] == 512
    plain = _dream_call(DreamRemote(native, legacy_defaults=False), ids, None, {"max_length": 9})
    assert (plain["temperature"], plain["top_k"], plain["max_new_tokens"]) == (0.0, None, 4)
    copies = _dream_call(
        DreamRemote(native, legacy_defaults=False), ids, None, {"num_return_sequences": 3}
    )
    assert copies["input_ids"].shape == (3, 5)


def test_patched_llada_generate_decodes_as_the_official_function():
    native = decoder("llada", seed=33)
    ids, mask = prompts(native, [7, 4], seed=33)
    remote = dllm_accel.patch(StandIn(native.state_dict(), native.config))
    got = dllm_accel.llada_generate(remote, ids, mask, steps=8, gen_length=8, block_length=4)
    assert torch.equal(
        got, official_llada(native, ids, mask, steps=8, gen_length=8, block_length=4)
    )


def test_unrecognised_remote_code_is_refused():
    native = decoder("Dream", seed=34)
    with pytest.raises(
        TypeError,
        match=r"patch\(\) does not recognise the remote code of StandIn \(transformers "
        r"[\d.]+\): it lacks \['_prepare_generation_config', ",
    ):
        dllm_accel.patch(StandIn(native.state_dict(), native.config))
    remote = dllm_accel.patch(DreamRemote(native, legacy_defaults=False))
    ids, _ = prompts(native, [5], seed=34)
    with pytest.raises(ValueError, match=r"does not take \['generation_logits_hook_func'\]"):
        remote.diffusion_generate(ids, generation_logits_hook_func=lambda step, x, logits: logits)
