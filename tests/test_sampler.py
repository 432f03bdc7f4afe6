"""The decode loop against plain statements of the official algorithms, batching, EOS, accounting,
errors."""

import pytest
import reference_samplers as ref
import torch
from conftest import EOS, EOT, MASK, StandIn, decoder, prompts, tiny_model

import dllm_accel
from dllm_accel import (
    ARGuide,
    DreamAlgorithm,
    DualCache,
    ElasticCache,
    EntropyThreshold,
    Factor,
    LowConfidence,
    PrefixCache,
    Sampler,
    StopAtEOS,
    Threshold,
)
from dllm_accel.policies.cfg import CFGRows
from dllm_accel.policies.unmask import MIN_ALG_TEMP

LLADA_CASES = {  # id: (prompt lengths, steps, gen_length, block_length, cfg_scale, eos options)
    "B1-one-per-step": ([9], 16, 16, 16, 0.0, {}),
    "B1-blocks-two-per-step": ([9], 8, 16, 4, 0.0, {}),
    "B1-uneven-schedule": ([9], 6, 16, 8, 0.0, {}),
    "B1-more-steps-than-tokens": ([9], 24, 12, 6, 0.0, {}),
    "B3-ragged": ([9, 5, 7], 16, 16, 8, 0.0, {}),
    "B3-ragged-cfg": ([9, 5, 7], 8, 16, 8, 1.5, {}),
    "B1-cfg": ([6], 16, 16, 8, 0.5, {}),
    "B2-logits-eos-inf": ([9, 6], 16, 16, 8, 0.0, dict(logits_eos_inf=True)),
    "B2-confidence-eos-eot-inf": ([9, 6], 16, 16, 8, 0.0, dict(confidence_eos_eot_inf=True)),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", LLADA_CASES)
def test_llada_greedy_equals_official_algorithm(case, seed):
    lengths, steps, gen_length, block_length, cfg_scale, options = LLADA_CASES[case]
    model = decoder("llada", seed=seed, favour={EOT: 12.0, EOS: 12.0})
    ids, mask = prompts(model, lengths, seed)
    mask = mask if len(set(lengths)) > 1 else None
    settings = dict(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        cfg_scale=cfg_scale,
        **options,
    )
    expected = ref.llada(model, ids, mask, **settings)
    assert torch.equal(dllm_accel.llada_generate(model, ids, mask, **settings), expected)


def test_llada_reproduces_official_when_the_model_predicts_mask():
    """The official sampler commits whatever is predicted, MASK included (the position stays
    open)."""
    model = decoder("llada", favour={MASK: 16.0})
    ids, _ = prompts(model, [8])
    expected = ref.llada(model, ids, steps=16, gen_length=16, block_length=8)
    assert (expected == model.spec.mask_id).any(), "the case needs a model that predicts MASK"
    assert torch.equal(
        dllm_accel.llada_generate(model, ids, steps=16, gen_length=16, block_length=8), expected
    )


DREAM_CASES = {  # id: (prompt lengths, steps, max_new_tokens, alg, top_p, top_k)
    "B1-maskgit_plus": ([8], 12, 12, "maskgit_plus", None, None),
    "B1-topk_margin-few-steps": ([8], 5, 16, "topk_margin", None, None),
    "B1-entropy-many-steps": ([8], 40, 12, "entropy", None, None),
    "B3-ragged-maskgit_plus": ([8, 4, 6], 8, 16, "maskgit_plus", None, None),
    "B3-ragged-entropy": ([8, 4, 6], 16, 16, "entropy", None, None),
    "B2-top_p": ([8, 5], 8, 16, "maskgit_plus", 0.6, None),
    "B2-top_k-margin": ([8, 5], 8, 16, "topk_margin", None, 3),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", DREAM_CASES)
def test_dream_greedy_equals_official_algorithm(case, seed):
    lengths, steps, new_tokens, alg, top_p, top_k = DREAM_CASES[case]
    model = decoder("Dream", seed=seed)
    ids, mask = prompts(model, lengths, seed)
    settings = dict(max_new_tokens=new_tokens, steps=steps, alg=alg, top_p=top_p, top_k=top_k)
    expected = ref.dream(model, ids, mask, **settings)
    got = dllm_accel.dream_generate(model, ids, mask, **settings, alg_temp=0.0)
    assert torch.equal(got, expected)


PARALLEL_RULES = {
    "threshold-0.5": (lambda: Threshold(0.5), ref.ThresholdRule(0.5)),
    "threshold-1": (lambda: Threshold(1.0), ref.ThresholdRule(1.0)),
    "factor-1": (lambda: Factor(1.0), ref.FactorRule(1.0)),
    "factor-3": (lambda: Factor(3.0), ref.FactorRule(3.0)),
    "entropy-1.5": (lambda: EntropyThreshold(1.5), ref.EntropyRule(1.5)),
}


@pytest.mark.parametrize("model_type", ["llada", "Dream"])
@pytest.mark.parametrize("rule", PARALLEL_RULES)
def test_parallel_rules_equal_their_descriptions(rule, model_type):
    policy, reference_rule = PARALLEL_RULES[rule]
    model = decoder(model_type, seed=3)
    ids, _ = prompts(model, [7, 7, 7], seed=3)
    expected = ref.parallel(model, ids, gen_length=16, block_length=8, rule=reference_rule)
    out = Sampler(model, unmask=policy()).generate(ids, max_new_tokens=16, block_length=8)
    assert torch.equal(out.sequences, expected)
    if rule != "threshold-1":
        assert (out.row_forwards < 16).any(), "the rule should commit several tokens in some steps"


def test_each_row_decodes_as_it_would_alone():
    """Rows are independent: a batch gives each row what decoding it alone gives, though rows finish
    their blocks at different steps (rows that are done are not computed)."""
    model = decoder("Dream", seed=4)
    ids, mask = prompts(model, [9, 4, 6], seed=4)
    sampler = Sampler(model, unmask=Threshold(0.6))
    batch = sampler.generate(ids, mask, max_new_tokens=16, block_length=8)
    for row, n in enumerate([9, 4, 6]):
        alone = sampler.generate(ids[row : row + 1, -n:], max_new_tokens=16, block_length=8)
        assert torch.equal(batch.sequences[row, -16:], alone.sequences[0, -16:])
        assert batch.row_forwards[row] == alone.nfe
    assert len(set(batch.row_forwards.tolist())) > 1, (
        "the case needs rows that finish at different steps"
    )


STOCHASTIC = {
    "llada-temperature": ("llada", lambda: LowConfidence(16, temperature=1.0)),
    "llada-random-remasking": ("llada", lambda: LowConfidence(16, remasking="random")),
    "dream-origin": ("Dream", lambda: DreamAlgorithm("origin", 16)),
    "dream-alg_temp": ("Dream", lambda: DreamAlgorithm("maskgit_plus", 16, alg_temp=0.5)),
    "dream-temperature-top_p": (
        "Dream",
        lambda: DreamAlgorithm("entropy", 16, temperature=0.8, top_p=0.9),
    ),
    "threshold-temperature": ("llada", lambda: Threshold(0.8, temperature=1.0)),
}


@pytest.mark.parametrize("case", STOCHASTIC)
def test_stochastic_settings_follow_the_seed(case):
    model_type, policy = STOCHASTIC[case]
    model = decoder(model_type, seed=5, sharpness=4.0)
    ids, mask = prompts(model, [6, 8], seed=5)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        out = Sampler(model, unmask=policy()).generate(
            ids, mask, max_new_tokens=16, generator=generator
        )
        return out.sequences

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


SAMPLED_ALONE = {  # id: (model type, unmask policy, cache, stop, ARGuide acceptance or None)
    "low_confidence": ("llada", lambda: LowConfidence(16, temperature=1.0), None, None, None),
    "random-remasking": (
        "llada",
        lambda: LowConfidence(16, remasking="random", temperature=0.7),
        None,
        None,
        None,
    ),
    "low_confidence-cfg": (
        "llada",
        lambda: LowConfidence(16, temperature=1.0, cfg_scale=1.0),
        None,
        None,
        None,
    ),
    "threshold-stop-dual": (
        "llada",
        lambda: Threshold(0.7, temperature=1.0),
        DualCache(),
        StopAtEOS(),
        None,
    ),
    "threshold-stop-elastic": (
        "llada",
        lambda: Threshold(0.7, temperature=1.0),
        ElasticCache(window=4),
        StopAtEOS(),
        None,
    ),
    "factor-stop-mask": (
        "llada",
        lambda: Factor(1.0, temperature=1.0),
        PrefixCache(),
        StopAtEOS("mask"),
        None,
    ),
    "entropy_threshold": (
        "Dream",
        lambda: EntropyThreshold(0.5, temperature=1.0),
        DualCache(),
        None,
        None,
    ),
    "dream-origin-stop": (
        "Dream",
        lambda: DreamAlgorithm("origin", 16, temperature=1.0),
        None,
        StopAtEOS(),
        None,
    ),
    "dream-alg_temp-top_p": (
        "Dream",
        lambda: DreamAlgorithm("maskgit_plus", 16, alg_temp=0.5, temperature=0.8, top_p=0.9),
        None,
        None,
        None,
    ),
    "dream-entropy-stop-elastic": (
        "Dream",
        lambda: DreamAlgorithm("entropy", 16, temperature=0.8),
        ElasticCache(window=4),
        StopAtEOS(),
        None,
    ),
    "guide-speculative": (
        "llada",
        lambda: Threshold(0.7, temperature=0.8),
        None,
        StopAtEOS(),
        "speculative",
    ),
    "guide-topk_relative-elastic": (
        "llada",
        lambda: Threshold(0.7, temperature=0.8),
        ElasticCache(window=4),
        StopAtEOS(),
        "topk_relative",
    ),
    "guide-speculative-dream": (
        "Dream",
        lambda: DreamAlgorithm("entropy", 16, temperature=0.8),
        DualCache(),
        None,
        "speculative",
    ),
}


@pytest.mark.parametrize("case", SAMPLED_ALONE)
def test_with_a_generator_per_row_each_row_samples_what_it_samples_alone(case):
    """Sampling at temperature > 0 with generators from dllm_accel.sample_generators(seed, ids):
    each row of a batch of 5 (left-padded, rows finishing at different steps) decodes what it
    decodes alone with its own generator, whatever its companions."""
    from test_guide import ar_model

    model_type, policy, cache, stop, acceptance = SAMPLED_ALONE[case]
    model = decoder(model_type, seed=5, sharpness=4.0, favour={EOS: 2.0})
    lengths, ids_ = [9, 4, 6, 7, 5], ["a", "b", "c", "d", "e"]
    ids, mask = prompts(model, lengths, seed=5)
    guide = (
        None
        if acceptance is None
        else ARGuide(
            ar_model(seed=35, sharpness=4.0), acceptance=acceptance, k=4, ratio=0.05, correct=True
        )
    )
    sampler = Sampler(model, unmask=policy(), cache=cache, stop=stop, guide=guide)

    def generate(input_ids, attention_mask, sample_ids, seed=3):
        return sampler.generate(
            input_ids,
            attention_mask,
            max_new_tokens=16,
            block_length=8,
            generator=dllm_accel.sample_generators(seed, sample_ids),
        )

    batch = generate(ids, mask, ids_)
    for row, n in enumerate(lengths):
        alone = generate(ids[row : row + 1, -n:], None, ids_[row : row + 1])
        assert torch.equal(batch.sequences[row, -16:], alone.sequences[0, -16:]), f"row {row}"
        assert batch.row_forwards[row] == alone.row_forwards[0]
    reordered = generate(ids.flip(0), mask.flip(0), ids_[::-1])
    assert torch.equal(reordered.sequences.flip(0), batch.sequences)
    assert not torch.equal(generate(ids, mask, ids_, seed=4).sequences, batch.sequences), (
        "the seed must matter"
    )


def test_sample_generators_are_seeded_by_seed_and_id_alone():
    first = [g.initial_seed() for g in dllm_accel.sample_generators(0, ["test-0-1", "test-0-2", 7])]
    assert first == [
        g.initial_seed() for g in dllm_accel.sample_generators(0, ["test-0-1", "test-0-2", 7])
    ]
    assert first[0] == dllm_accel.sample_generators(0, ["x", "test-0-1"])[1].initial_seed()
    assert first[0] != dllm_accel.sample_generators(1, ["test-0-1"])[0].initial_seed()
    assert len(set(first)) == 3 and all(0 <= seed < 2**63 for seed in first)
    assert first[0] == 9052672161573434478, (
        "a stable hash (blake2b), the same in every process and session"
    )
    with pytest.raises(ValueError, match=r"seed must be an integer, got '0'"):
        dllm_accel.sample_generators("0", ["a"])
    with pytest.raises(ValueError, match=r"ids must be a sequence of sample ids"):
        dllm_accel.sample_generators(0, "abc")


@pytest.mark.parametrize(
    "generator, error, message",
    [
        (
            [torch.Generator()],
            ValueError,
            r"generator must be None, one torch.Generator or a sequence of one "
            r"torch.Generator per row \(2 rows\), got 1$",
        ),
        (
            [torch.Generator(), 3],
            TypeError,
            r"per row \(2 rows\), got items of types \['Generator', 'int'\]",
        ),
        (5, TypeError, r"generator must be None, one torch.Generator or a sequence .* got 5"),
        (
            "seed",
            TypeError,
            r"generator must be None, one torch.Generator or a sequence .* got 'seed'",
        ),
    ],
)
def test_bad_generators_are_named(generator, error, message):
    with pytest.raises(error, match=message):
        _generate(generator=generator)


def test_stop_at_eos_ends_rows_early_and_leaves_no_mask():
    model = decoder("llada", seed=6, favour={EOS: 16.0})
    ids, mask = prompts(model, [7, 5, 9, 6], seed=6)
    spec = model.spec
    full = Sampler(model, unmask=Threshold(0.9)).generate(
        ids, mask, max_new_tokens=24, block_length=8
    )
    early = Sampler(model, unmask=Threshold(0.9), stop=StopAtEOS()).generate(
        ids, mask, max_new_tokens=24, block_length=8
    )
    generated = early.sequences[:, ids.shape[1] :]
    assert not (generated == spec.mask_id).any()
    for row, n in enumerate(early.generated_tokens.tolist()):
        assert (generated[row, n:] == spec.eos_id).all()
        assert not torch.isin(generated[row, : n - 1], torch.tensor(spec.stop_ids)).any()
    assert (early.generated_tokens < 24).sum() >= 2, "the case needs rows that emit EOS"
    assert early.row_forwards.sum() < full.row_forwards.sum()


def test_stop_at_eos_changes_nothing_when_no_eos_is_emitted():
    model = decoder("Dream", seed=7, favour={EOS: -30.0, EOT: -30.0})
    ids, mask = prompts(model, [7, 5], seed=7)
    unmask = DreamAlgorithm("maskgit_plus", 8)
    full = Sampler(model, unmask=unmask).generate(ids, mask, max_new_tokens=16)
    early = Sampler(model, unmask=unmask, stop=StopAtEOS()).generate(ids, mask, max_new_tokens=16)
    assert torch.equal(full.sequences, early.sequences)
    assert early.generated_tokens.tolist() == [16, 16]


def test_cfg_rows_lay_out_the_unconditional_copy_after_the_batch():
    """Model row c * B + b is copy c of batch row b; copy 1 has its prompt masked; the guided logits
    are u + (scale + 1)(c - u); a per-row value over the copies is the smaller one."""
    guided, plain = CFGRows(batch=2, scale=0.5), CFGRows(batch=2)
    assert (guided.copies, guided.rows, plain.copies, plain.rows) == (2, 4, 1, 2)
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert guided.model_ids(x, 2, 9).tolist() == [[1, 2, 3], [4, 5, 6], [9, 9, 3], [9, 9, 6]]
    assert plain.model_ids(x, 2, 9) is x
    assert [rows.tolist() for rows in guided.copy_rows(torch.tensor([1, 0]))] == [[1, 0], [3, 2]]
    assert guided.repeat(torch.tensor([True, False])).tolist() == [True, False, True, False]
    conditional, unconditional = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert guided.mix([conditional, unconditional]).tolist() == [[2.5, -0.5]]
    assert plain.mix([conditional]) is conditional
    assert guided.earliest(torch.tensor([3, 0, 1, 2])).tolist() == [1, 0]


def test_accounting():
    model = decoder("llada", seed=8)
    ids, mask = prompts(model, [5, 8], seed=8)
    out = Sampler(model, unmask=LowConfidence(12, cfg_scale=1.0), trace=True).generate(
        ids, mask, max_new_tokens=12, block_length=6
    )
    assert (out.steps, out.nfe) == (12, 24), "a guided step is two forward passes"
    assert out.row_forwards.tolist() == [24, 24]
    assert torch.stack([r.committed for r in out.trace]).sum(0).tolist() == [12, 12]
    assert out.tokens_per_forward == 0.5
    spec = model.spec
    generated = out.sequences[:, ids.shape[1] :].clone()
    generated[0] = 7
    generated[0, 3] = spec.eos_id
    generated[1, 5] = spec.eot_id
    generated[1, 8] = spec.eos_id
    counted = dllm_accel.policies.stop.count_generated(generated, spec)
    assert counted.tolist() == [4, min(6, int(out.generated_tokens[1]))]


def test_steps_that_commit_nothing_run_no_forward():
    """Dream's early steps commit int(n · (1 - s/t)) = 0 tokens when steps exceed the tokens."""
    model = decoder("Dream", seed=8)
    ids, _ = prompts(model, [6], seed=8)
    out = Sampler(model, unmask=DreamAlgorithm("entropy", 32), trace=True).generate(
        ids, max_new_tokens=8
    )
    assert len(out.trace) == 32
    assert out.steps == out.nfe == sum(r.forwarded for r in out.trace) < 32
    assert sum(int(r.committed.sum()) for r in out.trace) == 8


def test_dream_drop_in_returns_history_per_step():
    model = decoder("Dream", seed=9)
    ids, _ = prompts(model, [6], seed=9)
    out = dllm_accel.dream_generate(
        model,
        ids,
        max_new_tokens=8,
        steps=16,
        alg="entropy",
        return_dict_in_generate=True,
        output_history=True,
    )
    assert len(out.history) == 16 and torch.equal(out.history[-1], out.sequences)
    plain = dllm_accel.dream_generate(model, ids, max_new_tokens=8, steps=16, alg="entropy")
    assert torch.equal(out["sequences"], plain)
    assert dllm_accel.dream_generate(model, ids, steps=4, alg="entropy").shape == (1, 6 + 20)


def test_drop_ins_take_a_model_loaded_with_remote_code():
    """A transformers model object (here a stand-in with the remote code's names) decodes as the
    native one."""
    calls = {
        "llada": lambda m, ids: dllm_accel.llada_generate(
            m, ids, steps=8, gen_length=8, block_length=4
        ),
        "Dream": lambda m, ids: dllm_accel.dream_generate(
            m, ids, max_new_tokens=8, steps=8, alg="topk_margin"
        ),
    }
    for model_type, call in calls.items():
        model = decoder(model_type, seed=12)
        ids, _ = prompts(model, [6], seed=12)
        assert torch.equal(call(StandIn(model.state_dict(), model.config), ids), call(model, ids))


def test_callback_sees_every_step():
    model = decoder("llada", seed=10)
    ids, _ = prompts(model, [6], seed=10)
    seen = []
    Sampler(model, unmask=LowConfidence(8)).generate(
        ids,
        max_new_tokens=8,
        block_length=4,
        callback=lambda record, x: seen.append((record.block, record.step)),
    )
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]


def test_bf16_model_decodes_to_the_end():
    model = decoder("Dream", seed=11).to(torch.bfloat16)
    ids, mask = prompts(model, [6, 9], seed=11)
    out = Sampler(model, unmask=LowConfidence(16)).generate(
        ids, mask, max_new_tokens=16, block_length=8
    )
    assert not (out.sequences == model.spec.mask_id).any()


# -- bad input -------------------------------------------------------------------------------------
def _generate(**overrides):
    model = decoder("llada")
    ids, mask = prompts(model, [5, 7])
    arguments = dict(input_ids=ids, attention_mask=mask, max_new_tokens=16, block_length=8)
    arguments.update(overrides)
    policy = arguments.pop("unmask", None) or LowConfidence(16)
    return Sampler(model, unmask=policy).generate(**arguments)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block_length=5), r"max_new_tokens \(16\) must be divisible by block_length \(5\)"),
        (
            dict(unmask=LowConfidence(7)),
            r"steps \(7\) must be divisible by the number of blocks \(2",
        ),
        (dict(unmask=DreamAlgorithm("entropy", 3)), r"steps \(3\) must be divisible"),
        (dict(max_new_tokens=0), r"max_new_tokens must be an integer >= 1, got 0"),
        (dict(max_new_tokens=-4), r"max_new_tokens must be an integer >= 1"),
        (dict(input_ids=torch.zeros(2, 0, dtype=torch.long), attention_mask=None), r"empty prompt"),
        (
            dict(input_ids=torch.tensor([[5, 127, 6]]), attention_mask=None),
            r"contains the mask token 127 \(row 0, ",
        ),
        (
            dict(attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1] * 7])),
            r"attention_mask must be left padding",
        ),
        (dict(attention_mask=torch.tensor([[0] * 7, [1] * 7])), r"row with no token"),
        (dict(input_ids=torch.tensor([[5, 900]]), attention_mask=None), r"outside the vocabulary"),
    ],
)
def test_bad_generate_input_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        _generate(**overrides)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Threshold(0.0), r"tau \(the confidence threshold\) must be in \(0, 1\], got 0.0"),
        (lambda: Threshold(1.5), r"tau .* must be in \(0, 1\]"),
        (lambda: Factor(0), r"f \(the factor\) must be a finite number > 0"),
        (
            lambda: EntropyThreshold(-1),
            r"h \(the entropy threshold, nats\) must be a finite number >= 0",
        ),
        (
            lambda: DreamAlgorithm("greedy", 8),
            r"alg must be one of \('origin', 'maskgit_plus', 'topk_margin', 'entropy'\)",
        ),
        (
            lambda: DreamAlgorithm("entropy", 8, top_p=0.0),
            r"top_p must be None or in \(0, 1\], got 0.0",
        ),
        (lambda: DreamAlgorithm("entropy", 8, top_p=1.2), r"top_p must be None or in \(0, 1\]"),
        (lambda: DreamAlgorithm("entropy", 8, top_k=0), r"top_k must be None or an integer >= 1"),
        (lambda: DreamAlgorithm("entropy", 0), r"steps must be an integer >= 1, got 0"),
        (
            lambda: LowConfidence(8, remasking="lowest"),
            r"remasking must be one of \('low_confidence', 'random'\)",
        ),
        (lambda: LowConfidence(8, temperature=-1), r"temperature must be a finite number >= 0"),
        (lambda: LowConfidence(8, cfg_scale=-1), r"cfg_scale must be a finite number >= 0"),
    ],
)
def test_bad_policy_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_drop_in_argument_errors():
    model = decoder("llada")
    ids, _ = prompts(model, [5])
    with pytest.raises(
        ValueError, match=r"gen_length \(16\) must be divisible by block_length \(6\)"
    ):
        dllm_accel.llada_generate(model, ids, steps=16, gen_length=16, block_length=6)
    with pytest.raises(ValueError, match=r"mask_id=3 differs from the model's mask token 127"):
        dllm_accel.llada_generate(model, ids, mask_id=3)
    with pytest.raises(ValueError, match=r"remasking must be one of"):
        dllm_accel.llada_generate(model, ids, remasking="confidence")
    with pytest.raises(ValueError, match=r"alg must be one of"):
        dllm_accel.dream_generate(decoder("Dream"), ids, alg="maskgit")
    with pytest.raises(TypeError, match=r"unmask must be an unmask policy"):
        Sampler(model, unmask="low_confidence")
    with pytest.raises(TypeError, match=r"stop must be FullLength\(\) or StopAtEOS\(\), got 'eos'"):
        Sampler(model, unmask=Threshold(0.9), stop="eos")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda model, ids: LowConfidence(8, logits_eos_inf="no"),
            r"logits_eos_inf must be True or False, got 'no'",
        ),
        (
            lambda model, ids: LowConfidence(8, confidence_eos_eot_inf=1),
            r"confidence_eos_eot_inf must be True or False, got 1",
        ),
        (
            lambda model, ids: Sampler(model, unmask=Threshold(0.9), trace="yes"),
            r"trace must be True or False, got 'yes'",
        ),
        (
            lambda model, ids: dllm_accel.llada_generate(
                model, ids, None, 8, 8, 8, logits_eos_inf="no"
            ),
            r"logits_eos_inf must be True or False, got 'no'",
        ),
        (
            lambda model, ids: dllm_accel.dream_generate(
                model, ids, steps=8, return_dict_in_generate="yes"
            ),
            r"return_dict_in_generate must be True or False, got 'yes'",
        ),
        (
            lambda model, ids: dllm_accel.dream_generate(model, ids, steps=8, output_history=1),
            r"output_history must be True or False, got 1",
        ),
    ],
    ids=[
        "logits_eos_inf",
        "confidence_eos_eot_inf",
        "trace",
        "llada_generate",
        "return_dict_in_generate",
        "output_history",
    ],
)
def test_boolean_options_refuse_other_values(call, message):
    model = decoder("llada")
    ids, _ = prompts(model, [5])
    with pytest.raises(ValueError, match=message):
        call(model, ids)


def test_callback_must_be_callable():
    with pytest.raises(
        TypeError,
        match=r"callback must be None or a function callback\(record, sequences\), "
        r"got 'print'",
    ):
        _generate(callback="print")


@pytest.mark.parametrize(
    "model_type, field", [("llada", "max_sequence_length"), ("Dream", "max_position_embeddings")]
)
def test_a_canvas_past_the_models_positions_is_refused(model_type, field):
    """The prompt (padding included) + max_new_tokens must fit the positions of the model's
    config."""
    model = tiny_model(model_type, **{field: 24})
    assert model.spec.max_positions == 24
    ids, mask = prompts(model, [9, 5])
    sampler = Sampler(model, unmask=Threshold(0.9))
    with pytest.raises(
        ValueError,
        match=r"the prompt \(9 tokens, padding included\) \+ max_new_tokens \(16\) = 25 "
        r"positions, more than the model's maximum of 24 positions",
    ):
        sampler.generate(ids, mask, max_new_tokens=16)
    assert sampler.generate(ids[:, 1:], mask[:, 1:], max_new_tokens=16).sequences.shape == (2, 24)


def test_alg_temp_refused_below_what_float32_carries_and_decodes_from_there():
    model = decoder("Dream", seed=1)
    ids, mask = prompts(model, [6, 4], seed=1)
    with pytest.raises(
        ValueError,
        match=r"alg_temp must be None, 0 or a number >= 1.88e-37 \(a smaller one overflows "
        r"the float32 scores it divides.*got 1e-300",
    ):
        DreamAlgorithm("entropy", 8, alg_temp=1e-300)
    smallest = DreamAlgorithm("entropy", 8, alg_temp=MIN_ALG_TEMP)
    generator = torch.Generator().manual_seed(0)
    out = Sampler(model, unmask=smallest).generate(ids, mask, max_new_tokens=8, generator=generator)
    assert not (out.sequences == model.spec.mask_id).any()


def test_scores_that_overflow_are_an_error_not_mask_counted_as_text():
    """cfg_scale=1e308 turns every logit into inf or NaN: no token could be committed."""
    model = decoder("llada", seed=1)
    ids, mask = prompts(model, [6, 4], seed=1)
    with pytest.raises(
        RuntimeError,
        match=r"committed no token at step 0 of block 0: every candidate's score was "
        r"NaN or -inf.*cfg_scale=1e\+308",
    ):
        Sampler(model, unmask=LowConfidence(8, cfg_scale=1e308)).generate(
            ids, mask, max_new_tokens=8
        )


def test_generated_tokens_never_count_a_mask():
    """LowConfidence commits MASK where the model predicts it (as the official sampler does); the
    count stops before it."""
    model = decoder("llada", favour={MASK: 16.0})
    ids, mask = prompts(model, [8, 6])
    out = Sampler(model, unmask=LowConfidence(16)).generate(
        ids, mask, max_new_tokens=16, block_length=8
    )
    generated = out.sequences[:, ids.shape[1] :]
    assert (generated == MASK).any(), "the case needs a model that predicts MASK"
    for row, n in enumerate(out.generated_tokens.tolist()):
        assert not (generated[row, :n] == MASK).any()
        assert n == 16 or generated[row, n] == MASK or generated[row, n - 1] in (EOS, EOT)
