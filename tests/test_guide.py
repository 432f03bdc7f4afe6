"""ARGuide: the acceptance rules on hand-built distributions, the AR cache against a fresh prefill,
always/never agreeing AR models, batching, exactness under every cache and unmask policy,
accounting, bad input."""

import pytest
import torch
from conftest import EOS, EOT, decoder, prompts
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import dllm_accel
from dllm_accel import (
    ARGuide,
    DreamAlgorithm,
    DualCache,
    ElasticCache,
    EntropyThreshold,
    Factor,
    FrozenCache,
    LowConfidence,
    NoCache,
    PrefixCache,
    Sampler,
    StopAtEOS,
    Threshold,
)
from dllm_accel.policies.guide import Verification
from dllm_accel.policies.unmask import UnmaskPolicy
from dllm_accel.tasks import arith

VOCAB = 128


def ar_model(seed=0, sharpness=1.0, ends=(EOS, EOT)):
    """A random Llama causal LM over the test decoders' vocabulary; `sharpness` scales its
    logits."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=list(ends),
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def always_favouring(model, token):
    """The AR model's argmax becomes `token` at every position."""

    def favour(module, inputs, output):
        output[..., token] += 1e4
        return output

    model.lm_head.register_forward_hook(favour)
    return model


class CommitNothing(UnmaskPolicy):
    """An unmask policy that commits nothing on its own: what a step commits is the guide's
    alone."""

    def select(self, ctx, logits, quota):
        return torch.zeros(logits.shape[0], dtype=torch.bool), logits.argmax(-1)


def verification(guide, temperature=0.0, model_type="llada"):
    model = decoder(model_type)
    return guide.begin(torch.zeros(1, 4, dtype=torch.long), None, model.spec, temperature)


def hand_built(probabilities):
    return torch.tensor(probabilities).log()


# -- acceptance rules
# --------------------------------------------------------------------------------
def test_exact_accepts_only_the_argmax():
    check = verification(ARGuide(ar_model(), acceptance="exact"))
    logits = hand_built([[0.1, 0.6, 0.3] + [0.0] * (VOCAB - 3)] * 3)
    assert check._accept(logits, torch.tensor([1, 2, 0]), None, None, None).tolist() == [
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    "k, ratio, expected",
    [
        (1, 0.5, [True, False, False, False]),  # only the top-1
        (2, 0.49, [True, True, False, False]),  # 0.3 >= 0.49 * 0.6
        (
            2,
            0.51,
            [True, False, False, False],
        ),  # 0.3 < 0.51 * 0.6 (an exact tie: see the next test)
        (3, 0.1, [True, True, True, False]),  # third in rank, 0.08 >= 0.06
        (3, 1.0, [True, False, False, False]),  # ratio 1: only what ties with the top-1
        (4, 0.01, [True, True, True, True]),
    ],
)
def test_topk_relative_boundaries(k, ratio, expected):
    check = verification(ARGuide(ar_model(), acceptance="topk_relative", k=k, ratio=ratio))
    row = [0.6, 0.3, 0.08, 0.02] + [0.0] * (VOCAB - 4)
    logits = hand_built([row] * 4)
    assert check._accept(logits, torch.tensor([0, 1, 2, 3]), None, None, None).tolist() == expected


def test_topk_relative_counts_ties_as_one_rank():
    """Two tokens tied at the top: with k=1 and ratio=1 both are accepted (p_AR(draft) equals the
    top-1 exactly, and no token is more likely)."""
    check = verification(ARGuide(ar_model(), acceptance="topk_relative", k=1, ratio=1.0))
    logits = hand_built([[0.4, 0.4, 0.2] + [0.0] * (VOCAB - 3)] * 3)
    assert check._accept(logits, torch.tensor([0, 1, 2]), None, None, None).tolist() == [
        True,
        True,
        False,
    ]


def test_speculative_at_temperature_zero_is_exact():
    check = verification(ARGuide(ar_model(), acceptance="speculative"), temperature=0.0)
    logits = hand_built([[0.1, 0.6, 0.3] + [0.0] * (VOCAB - 3)] * 2)
    assert check._accept(logits, torch.tensor([1, 2]), None, None, None).tolist() == [True, False]


def test_speculative_accepts_with_probability_p_over_q():
    """p_AR(draft) / p_diffusion(draft): 1 where the AR model likes the draft more, 0.25, and 0."""
    check = verification(ARGuide(ar_model(), acceptance="speculative"), temperature=1.0)
    n = 20000
    ar = hand_built([[0.5, 0.1, 0.4] + [0.0] * (VOCAB - 3)]).expand(n, -1)
    diffusion = hand_built([[0.25, 0.4, 0.35] + [0.0] * (VOCAB - 3)])
    generator = torch.Generator().manual_seed(0)
    index = torch.zeros(n, dtype=torch.long)
    rates = [
        check._accept(ar, torch.full((n,), token), diffusion, index, generator)
        .float()
        .mean()
        .item()
        for token in (0, 1, 3)
    ]
    assert rates[0] == 1.0
    assert abs(rates[1] - 0.25) < 0.02
    assert rates[2] == 0.0


def test_speculative_correction_samples_the_residual():
    """max(0, p_AR - p_diffusion) normalised: only token 2 has p_AR > p_diffusion."""
    check = verification(
        ARGuide(ar_model(), acceptance="speculative", correct=True), temperature=1.0
    )
    ar = hand_built([[0.5, 0.1, 0.4] + [0.0] * (VOCAB - 3)]).expand(200, -1)
    diffusion = hand_built([[0.5, 0.4, 0.1] + [0.0] * (VOCAB - 3)])
    tokens = check._correction(
        ar, diffusion, torch.zeros(200, dtype=torch.long), torch.Generator().manual_seed(1)
    )
    assert (tokens == 2).all()


def test_an_id_the_ar_model_lacks_is_rejected():
    check = verification(ARGuide(ar_model(), acceptance="topk_relative", k=VOCAB, ratio=1e-6))
    check.to_ar[5] = -1
    logits = torch.zeros(2, VOCAB)
    assert check._accept(logits, torch.tensor([5, 6]), None, None, None).tolist() == [False, True]


# -- the decode loop
# ---------------------------------------------------------------------------------
def test_an_agreeing_ar_model_commits_a_whole_block_per_step():
    model = decoder("llada", seed=30)
    ids, mask = prompts(model, [7, 4], seed=30)
    guide = ARGuide(ar_model(seed=30), k=VOCAB, ratio=1e-30)
    out = Sampler(model, unmask=CommitNothing(), guide=guide, trace=True).generate(
        ids, mask, max_new_tokens=16, block_length=8
    )
    assert [r.committed.tolist() for r in out.trace] == [[8, 8], [8, 8]]
    assert not (out.sequences == model.spec.mask_id).any()


def test_an_elastic_window_bounds_what_an_agreeing_ar_model_commits():
    model = decoder("Dream", seed=31)
    ids, _ = prompts(model, [6], seed=31)
    guide = ARGuide(ar_model(seed=31), k=VOCAB, ratio=1e-30)
    out = Sampler(
        model, unmask=CommitNothing(), cache=ElasticCache(window=4), guide=guide, trace=True
    ).generate(ids, max_new_tokens=16)
    assert [int(r.committed) for r in out.trace] == [4, 4, 4, 4]


@pytest.mark.parametrize("correct", [True, False])
def test_a_disagreeing_ar_model_commits_one_token_per_step(correct):
    """The AR model always wants token 9, which the drafts never are: each step commits the run's
    first position only, as the AR model's token (correct=True) or as drafted."""
    model = decoder("llada", seed=32, favour={9: -50.0})
    ids, mask = prompts(model, [5, 8], seed=32)
    guide = ARGuide(always_favouring(ar_model(seed=32), 9), acceptance="exact", correct=correct)
    canvases = []
    out = Sampler(model, unmask=CommitNothing(), guide=guide, trace=True).generate(
        ids, mask, max_new_tokens=8, callback=lambda record, x: canvases.append(x[:, -8:].clone())
    )
    assert [r.committed.tolist() for r in out.trace] == [[1, 1]] * 8
    for step, canvas in enumerate(canvases):  # left to right
        assert not (canvas[:, : step + 1] == model.spec.mask_id).any()
        assert (canvas[:, step + 1 :] == model.spec.mask_id).all()
    generated = out.sequences[:, -8:]
    assert (generated == 9).all() if correct else not (generated == 9).any()


@pytest.mark.parametrize("correct", [True, False])
def test_a_rejection_inside_the_run_ends_what_the_step_commits(correct, monkeypatch):
    """The AR model accepts the first two drafts of the run and rejects the third: the step commits
    the two, and with correct=True the AR model's token (9) in the third place (speculative
    decoding's correction: the accepted drafts plus one token of the AR model's)."""
    model = decoder("llada", seed=39, favour={9: -50.0})
    ids, _ = prompts(model, [6], seed=39)
    guide = ARGuide(always_favouring(ar_model(seed=39), 9), acceptance="exact", correct=correct)
    monkeypatch.setattr(
        Verification,
        "_accept",
        lambda self, ar_logits, drafts, *rest: torch.arange(len(drafts)) < 2,
    )
    canvases = []
    Sampler(model, unmask=CommitNothing(), guide=guide).generate(
        ids, max_new_tokens=8, callback=lambda record, x: canvases.append(x[0, 6:].clone())
    )
    first = canvases[0]
    assert not (first[:2] == model.spec.mask_id).any() and not (first[:2] == 9).any()
    assert (
        first[2] == (9 if correct else model.spec.mask_id)
        and (first[3:] == model.spec.mask_id).all()
    )


def test_the_ar_cache_after_each_step_equals_a_fresh_prefill():
    """After every step, rejections included, each row's cache holds its committed prefix (all of it
    but the last token, or less where the policy committed past what the AR model read), as a fresh
    prefill of those tokens would."""
    model = decoder("Dream", seed=33)
    ar = ar_model(seed=33, sharpness=8.0)
    ids, mask = prompts(model, [9, 4, 6], seed=33)
    guide = ARGuide(ar, k=4, ratio=0.05, verify_chunk=3)
    states = []
    begin = guide.begin
    guide.begin = lambda *args: states.append(begin(*args)) or states[-1]
    checked = 0

    def compare(record, x):
        nonlocal checked
        state = states[0]
        masked = x == model.spec.mask_id
        for row in range(x.shape[0]):
            first = int(masked[row].int().argmax()) if masked[row].any() else x.shape[1]
            pad, keep = int(state.pads[row]), int(state.keep[row])
            assert keep <= first - 1 and int(state.slot_valid[row].sum()) == keep - pad
            fresh = ar(input_ids=x[row : row + 1, pad:keep], use_cache=True).past_key_values
            for layer, fresh_layer in zip(state.cache.layers, fresh.layers, strict=True):
                slots = state.slot_valid[row]
                torch.testing.assert_close(
                    layer.keys[row][:, slots], fresh_layer.keys[0], rtol=1e-5, atol=1e-5
                )
                torch.testing.assert_close(
                    layer.values[row][:, slots], fresh_layer.values[0], rtol=1e-5, atol=1e-5
                )
            checked += 1

    out = Sampler(model, unmask=Threshold(0.95), guide=guide, trace=True).generate(
        ids, mask, max_new_tokens=16, block_length=8, callback=compare
    )
    assert not (out.sequences == model.spec.mask_id).any()
    committed = torch.stack([r.committed for r in out.trace])
    assert checked == 3 * len(out.trace) and out.steps > 2, (
        "the case needs steps with rejected drafts"
    )
    assert (committed > 1).any(), "the case needs steps with accepted drafts"


def bundled(name):
    directory = dllm_accel.assets.path(name)
    if name == "tiny-ar":
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return dllm_accel.load_model(name)


@pytest.mark.parametrize("cache", ["elastic", "dual"])
@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_a_guided_ragged_batch_decodes_each_row_as_alone(name, cache):
    model, ar = bundled(name), bundled("tiny-ar")
    tokenizer = dllm_accel.load_tokenizer(name)
    problems = arith.problems(4, seed=34, split="test")
    batch = dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in problems])
    policy = {"elastic": ElasticCache(window=12), "dual": DualCache()}[cache]
    sampler = Sampler(
        model,
        unmask=Threshold(0.9),
        cache=policy,
        stop=StopAtEOS(),
        guide=ARGuide(ar, verify_chunk=8),
        trace=True,
    )
    out = sampler.generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=48, block_length=24
    )
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1, "the case needs ragged prompts"
    for row, n in enumerate(lengths):
        alone = sampler.generate(
            batch["input_ids"][row : row + 1, -n:], max_new_tokens=48, block_length=24
        )
        assert torch.equal(out.sequences[row, -48:], alone.sequences[0, -48:])
    assert max(r.committed.max() for r in out.trace) > 1


@pytest.mark.parametrize(
    "unmask",
    [
        "low-confidence",
        "low-confidence-cfg",
        "threshold",
        "factor",
        "entropy-threshold",
        "dream-entropy",
        "threshold-sampled",
    ],
)
@pytest.mark.parametrize("acceptance", ["topk_relative", "speculative"])
@pytest.mark.parametrize("model_type", ["llada", "Dream"])
def test_forced_refresh_with_a_guide_equals_nocache_with_it(model_type, acceptance, unmask):
    """ElasticCache refreshing everything every step (its window spanning the generation) + guide
    decodes as NoCache + guide, under every unmask policy, sampling included."""
    policy = {
        "low-confidence": lambda: LowConfidence(16),
        "low-confidence-cfg": lambda: LowConfidence(8, cfg_scale=1.0),
        "threshold": lambda: Threshold(0.7),
        "factor": lambda: Factor(1.0),
        "entropy-threshold": lambda: EntropyThreshold(0.5),
        "dream-entropy": lambda: DreamAlgorithm("entropy", 8),
        "threshold-sampled": lambda: Threshold(0.7, temperature=0.8),
    }[unmask]
    model = decoder(model_type, seed=35)
    ids, mask = prompts(model, [9, 4, 6], seed=35)
    guide = ARGuide(
        ar_model(seed=35, sharpness=8.0), acceptance=acceptance, k=4, ratio=0.05, correct=True
    )

    def run(cache):
        out = Sampler(model, unmask=policy(), cache=cache, guide=guide).generate(
            ids, mask, max_new_tokens=16, block_length=8, generator=torch.Generator().manual_seed(5)
        )
        return out

    plain, forced = (
        run(NoCache()),
        run(ElasticCache(gamma=1.01, window=16, refresh_from="drifting")),
    )
    assert torch.equal(forced.sequences, plain.sequences)
    assert (forced.ar_forwards, forced.ar_tokens) == (plain.ar_forwards, plain.ar_tokens)
    assert not (plain.sequences == model.spec.mask_id).any()


def test_accounting_counts_ar_forwards_and_positions():
    """B=1, prompt P=6, blocks of 8, an agreeing AR model. Step 1 reads the prompt and the first
    block (P + 8 positions); step 2 the prefix's last token and the second block (9). With
    verify_chunk=4 each run takes two forwards."""
    model = decoder("llada", seed=36)
    ids, _ = prompts(model, [6], seed=36)
    for chunk, forwards in [(32, 2), (4, 4)]:
        guide = ARGuide(ar_model(seed=36), k=VOCAB, ratio=1e-30, verify_chunk=chunk)
        out = Sampler(model, unmask=CommitNothing(), guide=guide).generate(
            ids, max_new_tokens=16, block_length=8
        )
        assert (out.ar_forwards, out.ar_tokens, out.nfe) == (forwards, 6 + 8 + 9, 2)


@pytest.mark.parametrize("stop", [StopAtEOS(), StopAtEOS(fill="mask")], ids=["eos", "mask"])
@pytest.mark.parametrize(
    "cache",
    [PrefixCache, DualCache, lambda: ElasticCache(window=4), FrozenCache],
    ids=["prefix", "dual", "elastic", "frozen"],
)
def test_other_caches_and_stops_compose_with_the_guide(cache, stop):
    model = decoder("Dream", seed=37, favour={EOS: 2.0})
    ids, mask = prompts(model, [9, 4, 6], seed=37)
    guide = ARGuide(ar_model(seed=37, sharpness=8.0), k=4, ratio=0.05)
    out = Sampler(model, unmask=Threshold(0.9), cache=cache(), guide=guide, stop=stop).generate(
        ids, mask, max_new_tokens=16, block_length=8
    )
    generated = out.sequences[:, -16:]
    decoded = generated != model.spec.mask_id
    assert (decoded.all(1) | (generated == EOS).any(1)).all(), (
        "masks remain only after a stop token"
    )
    assert 0 < out.ar_forwards <= out.steps


# -- bad input
# -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(acceptance="greedy"),
            r"acceptance must be one of \('exact', 'topk_relative', 'speculative'\), got 'greedy'",
        ),
        (dict(k=0), r"k must be an integer >= 1, got 0"),
        (dict(ratio=0.0), r"ratio must be in \(0, 1\], got 0.0"),
        (dict(ratio=1.5), r"ratio must be in \(0, 1\], got 1.5"),
        (dict(verify_chunk=0), r"verify_chunk must be an integer >= 1, got 0"),
        (dict(correct="yes"), r"correct must be True or False, got 'yes'"),
        (dict(token_map={1: -2}), r"token_map must be None or a dict"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ARGuide(ar_model(), **kwargs)


def test_a_canvas_past_the_ar_models_positions_is_refused():
    model = decoder("llada")
    ids, mask = prompts(model, [9, 5])
    # max_position_embeddings=256
    sampler = Sampler(model, unmask=Threshold(0.9), guide=ARGuide(ar_model()))
    with pytest.raises(
        ValueError,
        match=r"\+ max_new_tokens \(248\) = 257 positions, more than the guide's AR "
        r"model's maximum of 256 positions",
    ):
        sampler.generate(ids, mask, max_new_tokens=248, block_length=8)


@pytest.mark.parametrize("not_a_causal_lm", [torch.nn.Linear(2, 2), "tiny-ar", None])
def test_an_object_that_is_not_a_causal_lm_is_refused(not_a_causal_lm):
    with pytest.raises(TypeError, match="ar_model must be a transformers causal language model"):
        ARGuide(not_a_causal_lm)


def test_a_diffusion_model_is_not_a_causal_lm():
    with pytest.raises(TypeError, match="ar_model must be a transformers causal language model"):
        ARGuide(decoder("llada"))


def test_mismatched_vocabularies_are_refused_until_token_map_names_the_ends():
    model = decoder("llada")
    other = ar_model(ends=(7,))
    with pytest.raises(
        ValueError, match=r"does not match the diffusion model's.*without \[126, 125\].*token_map"
    ):
        Sampler(model, unmask=Threshold(0.9), guide=ARGuide(other))
    Sampler(model, unmask=Threshold(0.9), guide=ARGuide(other, token_map={EOS: 7, EOT: 7}))
    with pytest.raises(
        ValueError, match=r"token_map \{126: 500\} names ids outside the vocabularies"
    ):
        Sampler(model, unmask=Threshold(0.9), guide=ARGuide(other, token_map={EOS: 500}))


def test_an_ar_model_on_another_device_is_refused():
    with pytest.raises(
        ValueError,
        match=r"the AR model is on meta, the diffusion model on cpu.*ar_model.to\('cpu'\)",
    ):
        Sampler(decoder("llada"), unmask=Threshold(0.9), guide=ARGuide(ar_model().to("meta")))


def test_guide_must_be_an_ar_guide():
    with pytest.raises(TypeError, match="guide must be None or an ARGuide"):
        Sampler(decoder("llada"), unmask=Threshold(0.9), guide=ar_model())


def test_speculative_is_exact_at_temperature_zero_end_to_end():
    model = decoder("llada", seed=38)
    ids, mask = prompts(model, [5, 7], seed=38)
    ar = ar_model(seed=38, sharpness=8.0)
    outs = [
        Sampler(model, unmask=Threshold(0.9), guide=ARGuide(ar, acceptance=a))
        .generate(ids, mask, max_new_tokens=16, block_length=8)
        .sequences
        for a in ("exact", "speculative")
    ]
    assert torch.equal(*outs)
