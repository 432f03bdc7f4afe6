"""The KV-cache engine and the refresh policies: exactness when refresh is forced, untouched rows,
NaN-poisoned buffers, batching, the drift test, hand-checked accounting, drop-in patching, bad
input."""

import pytest
import torch
from conftest import EOS, EOT, DreamGenerationConfig, DreamRemote, StandIn, decoder, prompts

import dllm_accel
from dllm_accel import (
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
from dllm_accel.engine import Engine, ForwardPlan, ForwardResult
from dllm_accel.policies.cfg import CFGRows
from dllm_accel.policies.refresh import AttentionDrift, Canvas
from dllm_accel.tasks import arith

CACHES = {
    "prefix": PrefixCache,
    "dual": DualCache,
    "elastic": ElasticCache,
    "elastic-w4-heads": lambda: ElasticCache(window=4, track=2, drift="heads"),
    "elastic-distant-queried": lambda: ElasticCache(window=4, cache_distant_masks=False),
    "frozen": FrozenCache,
}
UNMASKS = {
    "low-confidence": lambda: LowConfidence(16),
    "low-confidence-cfg": lambda: LowConfidence(8, cfg_scale=1.0),
    "threshold": lambda: Threshold(0.7),
    "factor": lambda: Factor(1.0),
    "entropy-threshold": lambda: EntropyThreshold(0.5),
    "dream-entropy": lambda: DreamAlgorithm("entropy", 8),
}


def finite_head(model):
    """Make the model's head refuse non-finite input: a NaN there means a never-written (poisoned)
    cache row was read."""
    head = model.head

    def checked(h):
        assert torch.isfinite(h).all(), "the head read a stale (NaN-poisoned) cache row"
        return head(h)

    model.head = checked
    return model


def generate(model, unmask, cache, lengths=(9, 5, 7), seed=3, **kwargs):
    ids, mask = prompts(model, list(lengths), seed=seed)
    settings = dict(max_new_tokens=16, block_length=8) | kwargs
    return Sampler(model, unmask=unmask, cache=cache, trace=True).generate(ids, mask, **settings)


# -- exactness
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths", [(9,), (9, 4, 6)], ids=["B1", "B3-ragged"])
@pytest.mark.parametrize(
    "unmask", ["low-confidence", "threshold", "dream-entropy", "low-confidence-cfg"]
)
@pytest.mark.parametrize("model_type", ["llada", "Dream", "llada_moe"])
def test_forced_refresh_equals_nocache(model_type, unmask, lengths):
    """gamma > 1 with refresh_from='drifting' refreshes every layer every step; the window spans the
    generation, so that it does not narrow the candidates."""
    model = finite_head(decoder(model_type, seed=21))
    plain = generate(model, UNMASKS[unmask](), NoCache(), lengths)
    forced = generate(
        model,
        UNMASKS[unmask](),
        ElasticCache(gamma=1.01, window=16, refresh_from="drifting"),
        lengths,
    )
    assert torch.equal(forced.sequences, plain.sequences)
    computed = [r.first_full_layer[r.first_full_layer >= 0] for r in forced.trace if r.forwarded]
    assert all(len(layers) and (layers == 0).all() for layers in computed), "full forwards only"
    assert not (plain.sequences == model.spec.mask_id).any()


@pytest.mark.parametrize("cache", [PrefixCache, DualCache])
@pytest.mark.parametrize("model_type", ["llada", "Dream", "llada_moe"])
def test_block_caches_equal_nocache_when_every_step_starts_a_block(model_type, cache):
    """One step per block: every step is a block's first, i.e. a full forward."""
    model = finite_head(decoder(model_type, seed=22))
    plain = generate(model, LowConfidence(4), NoCache(), block_length=4)
    cached = generate(model, LowConfidence(4), cache(), block_length=4)
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.recompute_fraction == 1.0


@pytest.mark.parametrize(
    "cache",
    ["prefix", "dual", "elastic", "elastic-drifting", "elastic-forced", "elastic-forced-next"],
)
def test_each_row_decodes_as_it_would_alone(cache):
    """Rows are independent under every cache; ElasticCache refreshes each row from its own layer,
    under either boundary."""
    policy = {
        "prefix": PrefixCache(),
        "dual": DualCache(),
        "elastic": ElasticCache(window=4),
        "elastic-drifting": ElasticCache(window=4, refresh_from="drifting"),
        "elastic-forced": ElasticCache(gamma=2.0, refresh_from="drifting"),
        "elastic-forced-next": ElasticCache(gamma=2.0),
    }[cache]
    model = finite_head(decoder("Dream", seed=4))
    ids, mask = prompts(model, [9, 4, 6], seed=4)
    sampler = Sampler(model, unmask=Threshold(0.6), cache=policy)
    batch = sampler.generate(ids, mask, max_new_tokens=16, block_length=8)
    for row, n in enumerate([9, 4, 6]):
        alone = sampler.generate(ids[row : row + 1, -n:], max_new_tokens=16, block_length=8)
        assert torch.equal(batch.sequences[row, -16:], alone.sequences[0, -16:])
    assert len(set(batch.row_forwards.tolist())) > 1, (
        "the case needs rows that finish at different steps"
    )


# -- every policy with every cache
# ------------------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("unmask", UNMASKS)
@pytest.mark.parametrize("model_type", ["llada", "Dream"])
def test_every_unmask_policy_decodes_with_every_cache(model_type, unmask, cache):
    model = finite_head(decoder(model_type, seed=24))
    out = generate(model, UNMASKS[unmask](), CACHES[cache]())
    assert not (out.sequences == model.spec.mask_id).any()
    assert 0 < out.recompute_fraction < 1
    assert all(
        ((r.first_full_layer >= 0) & (r.first_full_layer <= model.n_layers)).any()
        for r in out.trace
        if r.forwarded
    )


def test_elastic_decodes_only_inside_its_window():
    model = decoder("llada", seed=25)
    ids, _ = prompts(model, [6], seed=25)
    canvases = []
    Sampler(model, unmask=Threshold(0.5), cache=ElasticCache(window=3)).generate(
        ids, max_new_tokens=16, callback=lambda record, x: canvases.append(x[0, 6:].clone())
    )
    before = torch.full((16,), model.spec.mask_id)
    for after in canvases:
        changed = (before != after).nonzero().squeeze(1)
        masked = (before == model.spec.mask_id).nonzero().squeeze(1)
        assert set(changed.tolist()) <= set(masked[:3].tolist()), (
            "committed outside the first 3 masks"
        )
        before = after
    assert len(canvases) >= 16 // 3


@pytest.mark.parametrize("cache", [DualCache, ElasticCache])
def test_rows_stop_at_eos_with_a_cache(cache):
    model = finite_head(decoder("llada", seed=6, favour={EOS: 16.0}))
    ids, mask = prompts(model, [7, 5, 9, 6], seed=6)
    settings = dict(max_new_tokens=24, block_length=8)
    full = Sampler(model, unmask=Threshold(0.9), cache=cache()).generate(ids, mask, **settings)
    early = Sampler(model, unmask=Threshold(0.9), cache=cache(), stop=StopAtEOS()).generate(
        ids, mask, **settings
    )
    generated = early.sequences[:, ids.shape[1] :]
    for row, n in enumerate(early.generated_tokens.tolist()):
        assert (generated[row, n:] == model.spec.eos_id).all()
    assert (early.generated_tokens < 24).sum() >= 2, "the case needs rows that emit EOS"
    assert early.row_forwards.sum() < full.row_forwards.sum()


@pytest.mark.parametrize("cache", ["prefix", "dual", "elastic", "elastic-drifting"])
def test_positions_rewritten_after_eos_are_recomputed_at_the_next_forward(cache, monkeypatch):
    """After every forward the layer-0 cache equals a full forward's over the canvas it decoded
    (layer 0 sees only each position's own token), and positions StopAtEOS rewrote at the previous
    step hold a full forward's K/V in both layers of this 2-layer model (their layer-1 input attends
    only to layer 0)."""
    policy = {
        "prefix": PrefixCache(),
        "dual": DualCache(),
        "elastic": ElasticCache(window=4),
        "elastic-drifting": ElasticCache(window=4, refresh_from="drifting"),
    }[cache]
    # EOS committed while earlier masks remain (DualCache: with positions rewritten beyond its
    # block)
    seed, blocks = (9, 8) if cache == "dual" else (7, 24)
    model = decoder("llada", seed=seed, favour={EOS: 12.0})
    assert model.n_layers == 2
    forward, checked = Engine.forward, []

    def checking_forward(self, ids, rows, plan):
        result = forward(self, ids, rows, plan)
        computed = self.all_rows if rows is None else rows
        full = Engine(
            model,
            None if self.key_mask is None else self.key_mask.long(),
            len(self.all_rows),
            ids.shape[1],
            cache=True,
            inputs=False,
        )
        forward(full, ids, None, ForwardPlan(None, model.n_layers))
        assert torch.allclose(self.cache.keys[0][computed], full.cache.keys[0][computed], atol=1e-5)
        for row, position in rewritten_last_step.nonzero().tolist():
            if row in computed.tolist():
                assert torch.allclose(
                    self.cache.keys[:, row, :, position],
                    full.cache.keys[:, row, :, position],
                    atol=1e-5,
                )
                assert torch.allclose(
                    self.cache.values[:, row, :, position],
                    full.cache.values[:, row, :, position],
                    atol=1e-5,
                )
                checked.append(position)
        return result

    monkeypatch.setattr(Engine, "forward", checking_forward)
    ids, mask = prompts(model, [7, 5, 9, 6], seed=seed)
    rewritten_last_step = torch.zeros(4, ids.shape[1] + 24, dtype=torch.bool)
    previous = {"x": torch.cat([ids, torch.full((4, 24), model.spec.mask_id)], 1)}

    def note_rewrites(record, x):  # tokens changed at this step after a row's first EOS
        rewritten_last_step.zero_()
        generated = x[:, ids.shape[1] :]  # (the padding may be EOS)
        after_eos = (generated == EOS).cumsum(1) - (generated == EOS).long() > 0
        rewritten_last_step[:, ids.shape[1] :] = after_eos & (
            generated != previous["x"][:, ids.shape[1] :]
        )
        previous["x"] = x.clone()

    out = Sampler(model, unmask=LowConfidence(24), cache=policy, stop=StopAtEOS()).generate(
        ids, mask, max_new_tokens=24, block_length=blocks, callback=note_rewrites
    )
    assert (out.generated_tokens < 24).sum() >= 2 and checked, (
        "the case needs rewrites followed by a forward"
    )


@pytest.mark.parametrize("model_type", ["llada", "Dream"])
def test_stop_fill_mask_leaves_the_rest_undecided(model_type, monkeypatch):
    """StopAtEOS(fill='mask'), the released code's loop: after the first stop token nothing is
    decoded, and ElasticCache's window (its query rows) never reaches those masks, as the released
    window stops at the EOS."""
    model = decoder(model_type, seed=6, favour={EOS: 16.0})
    ids, mask = prompts(model, [7, 5, 9, 6], seed=6)
    forward, queried_closed = Engine.forward, []

    def checking_forward(self, ids_, rows, plan):
        generated = ids_[:, ids.shape[1] :]
        stop = (generated == EOS) | (generated == EOT)
        closed = (stop.cumsum(1) - stop.long() > 0) & (generated == model.spec.mask_id)
        if plan.query is not None:
            queried_closed.append(bool((plan.query[:, ids.shape[1] :] & closed).any()))
        return forward(self, ids_, rows, plan)

    monkeypatch.setattr(Engine, "forward", checking_forward)
    out = Sampler(
        model, unmask=Threshold(0.7), cache=ElasticCache(window=4), stop=StopAtEOS(fill="mask")
    ).generate(ids, mask, max_new_tokens=24)
    assert queried_closed and not any(queried_closed)
    generated = out.sequences[:, ids.shape[1] :]
    stopped = out.generated_tokens < 24
    assert stopped.sum() >= 2, "the case needs rows that emit EOS"
    for row, n in enumerate(out.generated_tokens.tolist()):
        assert not (generated[row, :n] == model.spec.mask_id).any(), (
            "everything up to the stop is decoded"
        )
    assert (generated[stopped] == model.spec.mask_id).any(), "masks after the stop stay MASK"
    assert (
        repr(StopAtEOS(fill="mask")) == "StopAtEOS(fill='mask')"
        and repr(StopAtEOS()) == "StopAtEOS()"
    )
    with pytest.raises(ValueError, match=r"fill must be one of \('eos', 'mask'\), got 'pad'"):
        StopAtEOS(fill="pad")


# -- the engine
# --------------------------------------------------------------------------------------
def engine_case(model_type="llada", rows=2, prompt=7, generation=9):
    model = decoder(model_type, seed=26)
    ids, mask = prompts(model, [prompt, prompt - 3][:rows], seed=26)
    canvas = torch.cat([ids, torch.full((rows, generation), model.spec.mask_id)], 1)
    canvas_mask = torch.cat([mask, torch.ones(rows, generation, dtype=mask.dtype)], 1)
    return model, canvas, canvas_mask


def test_rows_outside_the_query_are_untouched():
    model, canvas, canvas_mask = engine_case()
    engine = Engine(model, canvas_mask, 2, canvas.shape[1], cache=True, inputs=True)
    engine.forward(canvas, None, ForwardPlan(None, model.n_layers))
    cache = engine.cache
    before = [t.clone() for t in (cache.keys, cache.values, cache.inputs)]
    canvas[0, 8] = 5  # a committed token, and a query row of row 0 only
    query = torch.zeros_like(canvas, dtype=torch.bool)
    query[0, [8, 10, 11]] = True
    query[1, [12]] = True
    engine.forward(canvas, torch.tensor([0]), ForwardPlan(query, model.n_layers))
    written = torch.zeros_like(query)
    written[0, [8, 10, 11]] = True
    for old, new in zip(before, (cache.keys, cache.values, cache.inputs), strict=True):
        untouched = (
            ~written[None, :, None, :, None] if new.dim() == 5 else ~written[None, :, :, None]
        )
        untouched = untouched.expand_as(new)
        assert torch.equal(old[untouched], new[untouched])
        assert not torch.equal(old[~untouched], new[~untouched])


def test_a_never_written_cache_row_poisons_the_output():
    """The poison works: reading a row no forward has written gives NaN."""
    model, canvas, canvas_mask = engine_case(rows=1)
    engine = Engine(model, canvas_mask, 1, canvas.shape[1], cache=True, inputs=False)
    query = torch.zeros_like(canvas, dtype=torch.bool)
    query[0, 9] = True
    result = engine.forward(canvas, None, ForwardPlan(query, model.n_layers))
    assert torch.isnan(result.hidden).all()


class FiresAt:
    """A drift judge that fires at one layer, for the rows given (model row ids)."""

    drift_axis = "heads"

    def __init__(self, layer, rows=(0,)):
        self.layer, self.rows, self.checked = layer, rows, []

    def drifted(self, layer, similarity, valid, rows):
        self.checked.append((layer, rows.tolist()))
        return torch.tensor([layer == self.layer and row in self.rows for row in rows.tolist()])

    def mass_weights(self, rows, index, valid):
        return valid.float()

    def observe(self, layer, mass, rows):
        pass


@pytest.mark.parametrize("recompute_drifting", [True, False], ids=["drifting", "next"])
@pytest.mark.parametrize("fires", [None, 0, 1])
def test_refresh_depth_and_accounting_by_hand(fires, recompute_drifting):
    """A drift at layer f recomputes every position from f ('drifting') or from f + 1 ('next'; layer
    f keeps its query rows' output). The drift test runs at every layer first (its decisions stay
    on the device), so the query rows are computed at every layer."""
    model, canvas, canvas_mask = engine_case(rows=1, prompt=7, generation=9)  # T = 16, 2 layers
    assert model.n_layers == 2
    engine = Engine(model, canvas_mask, 1, 16, cache=True, inputs=True)
    full = engine.forward(canvas, None, ForwardPlan(None, 2))
    assert (full.first_full_layer.tolist(), full.units, full.columns) == ([0], 16 * 2, None)
    query, tracked = (
        torch.zeros_like(canvas, dtype=torch.bool),
        torch.zeros_like(canvas, dtype=torch.bool),
    )
    query[0, [3, 7, 8, 9]] = True
    tracked[0, 3] = True
    monitor = FiresAt(fires)
    plan = ForwardPlan(
        query, 2, AttentionDrift(tracked, monitor, leave_after=not recompute_drifting)
    )
    result = engine.forward(canvas, None, plan)
    if fires is None:
        assert [layer for layer, _ in monitor.checked] == [0, 1]
        assert (result.first_full_layer.tolist(), result.units) == ([2], 4 * 2)
    else:
        assert [layer for layer, _ in monitor.checked] == [0, 1]
        first = fires if recompute_drifting else fires + 1
        assert result.first_full_layer.tolist() == [first]
        assert result.units == 4 * 2 + 16 * (2 - first)
    # nothing changed since the full forward: the query rows' outputs are the full forward's
    assert torch.allclose(
        result.hidden[0, result.columns[0, [3, 7, 8, 9]]], full.hidden[0, [3, 7, 8, 9]], atol=1e-5
    )


@pytest.mark.parametrize("recompute_drifting", [True, False], ids=["drifting", "next"])
def test_each_row_refreshes_from_its_own_layer(recompute_drifting):
    """Row 1 drifts at layer 0 and recomputes everything from layer 0 ('drifting') or 1 ('next');
    row 0 keeps reusing: its cache rows outside the query stay untouched, and both rows' outputs
    equal a full forward's (nothing changed)."""
    model, canvas, canvas_mask = engine_case(rows=2, prompt=7, generation=9)
    engine = Engine(model, canvas_mask, 2, 16, cache=True, inputs=True)
    full = engine.forward(canvas, None, ForwardPlan(None, 2))
    keys = engine.cache.keys.clone()
    query, tracked = (
        torch.zeros_like(canvas, dtype=torch.bool),
        torch.zeros_like(canvas, dtype=torch.bool),
    )
    query[:, [5, 7, 8]] = True
    tracked[:, 5] = True
    monitor = AttentionDrift(tracked, FiresAt(0, rows=(1,)), leave_after=not recompute_drifting)
    plan = ForwardPlan(query, 2, monitor)
    result = engine.forward(canvas, None, plan)
    first = 0 if recompute_drifting else 1
    assert result.first_full_layer.tolist() == [2, first]
    assert result.units == 3 * 2 + (3 * 2 + 16 * (2 - first))
    outside = torch.ones(16, dtype=torch.bool)
    outside[[5, 7, 8]] = False
    assert torch.equal(engine.cache.keys[:, 0, :, outside], keys[:, 0, :, outside])
    for row in range(2):
        assert torch.allclose(
            result.hidden[row, result.columns[row, [5, 7, 8]]],
            full.hidden[row, [5, 7, 8]],
            atol=1e-5,
        )


@pytest.mark.parametrize("cache", ["prefix", "dual", "frozen", "elastic", "elastic-gamma-0"])
def test_a_cached_step_plans_the_positions_the_head_reads(cache):
    """Once every row holds a full forward, each policy's query includes `head_reads` (the Sampler
    adds nothing to a plan afterwards): here position 2, a prompt token no policy would compute."""
    policy = {"elastic-gamma-0": lambda: ElasticCache(gamma=0)}.get(cache, CACHES.get(cache))()
    rows, length, prompt, n_layers, mask_id = 2, 12, 6, 2, 99
    canvas = torch.full((rows, length), 5)
    canvas[:, prompt:] = mask_id
    state = policy.begin(
        Canvas(
            CFGRows(rows),
            length,
            prompt,
            n_layers,
            mask_id,
            torch.ones(rows, length, dtype=torch.bool),
        )
    )
    state.begin_block(prompt, length)
    masks, live = canvas == mask_id, torch.ones(rows, dtype=torch.bool)
    head_reads = torch.zeros(rows, length, dtype=torch.bool)
    head_reads[1, 2] = True
    state.restrict(masks, masks, None)
    first = state.plan(canvas, live, head_reads)
    assert first.query is None or first.first_full_layer == 0, "the first step is a full forward"
    full = ForwardResult(None, None, torch.zeros(rows, dtype=torch.long), rows * length * n_layers)
    state.after_step(None, full, torch.zeros_like(masks))
    state.restrict(masks, masks, None)
    query = state.plan(canvas, live, head_reads).query
    assert query[1, 2] and not query[0, 2]


def test_dual_cache_recompute_fraction_by_hand():
    """B1, prompt 6, 8 tokens in blocks of 4, one token per step: per block a full step of 14 rows
    and 3 steps of the 4 block rows; NoCache computes 14 rows in each of the 8 steps. Under Dream's
    shift the row before the block is computed too while the block's first token is still masked."""
    model = decoder("llada", seed=27)
    out = generate(
        model, LowConfidence(8), DualCache(), lengths=(6,), max_new_tokens=8, block_length=4
    )
    assert out.recompute_fraction == pytest.approx(2 * (14 + 3 * 4) / (8 * 14))
    assert [int(r.first_full_layer) for r in out.trace] == [0, 2, 2, 2] * 2
    model = decoder("Dream", seed=27)
    out = generate(
        model, LowConfidence(8), DualCache(), lengths=(6,), max_new_tokens=8, block_length=4
    )
    assert 2 * (14 + 3 * 4 + 1) / (8 * 14) <= out.recompute_fraction <= 2 * (14 + 3 * 5) / (8 * 14)


def test_frozen_cache_computes_only_the_blocks_masks_after_the_first_step():
    """B1, prompt 6, 8 tokens in blocks of 4, one token per step: one full step of 14 rows, then the
    block's masks only (3, 2, 1 in block 0; 4, 3, 2, 1 in block 1), nothing ever refreshed."""
    model = decoder("llada", seed=27)
    out = generate(
        model, LowConfidence(8), FrozenCache(), lengths=(6,), max_new_tokens=8, block_length=4
    )
    assert out.recompute_fraction == pytest.approx((14 + 3 + 2 + 1 + 4 + 3 + 2 + 1) / (8 * 14))
    assert [int(r.first_full_layer) for r in out.trace] == [0] + [2] * 7
    assert not torch.equal(
        out.sequences,
        generate(
            model, LowConfidence(8), NoCache(), lengths=(6,), max_new_tokens=8, block_length=4
        ).sequences,
    )


# -- the drift test
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("refresh_from", ["drifting", "next"])
@pytest.mark.parametrize("drift", ["keys", "heads"])
def test_drift_fires_when_the_tracked_token_changes_and_not_otherwise(drift, refresh_from):
    """On the trained tiny-llada (a random model's attention is too flat to drift): after a full
    first step, a second step over an unchanged canvas reuses every layer; changing the tracked
    (most-attended) prompt token moves its attention row at once, and the whole stack is recomputed
    (from layer 1 under 'next': layer 0 keeps its query rows)."""
    model, tokenizer = dllm_accel.load_model("tiny-llada"), dllm_accel.load_tokenizer("tiny-llada")
    problem = arith.problems(1, seed=0, split="test")[0]
    ids = dllm_accel.encode_chat(tokenizer, [arith.messages(problem)])["input_ids"]
    mask_id, live, prompt = model.spec.mask_id, torch.ones(1, dtype=torch.bool), ids.shape[1]
    canvas = torch.cat([ids, torch.full((1, 16), mask_id)], 1)
    for change, expected in (
        (False, model.n_layers),
        (True, 0 if refresh_from == "drifting" else 1),
    ):
        state = ElasticCache(gamma=0.9, window=4, drift=drift, refresh_from=refresh_from).begin(
            Canvas(
                CFGRows(1),
                prompt + 16,
                prompt,
                model.n_layers,
                mask_id,
                torch.ones_like(canvas, dtype=torch.bool),
            )
        )
        engine = Engine(model, None, 1, prompt + 16, cache=True, inputs=True)
        x, committed = canvas.clone(), torch.zeros_like(canvas, dtype=torch.bool)
        no_reads = torch.zeros_like(canvas, dtype=torch.bool)  # the head reads nothing here
        state.restrict(x == mask_id, x == mask_id, None)
        with torch.no_grad():
            first = engine.forward(x, None, state.plan(x, live, no_reads))
            assert first.first_full_layer.tolist() == [0], "the first step is a full forward"
            # what after_step will track
            tracked = state._most_attended(slice(None))[0].nonzero().squeeze(1)
            assert len(tracked) and bool((tracked < prompt).all()), (
                "tracked tokens are decoded (prompt) positions"
            )
            if change:
                x[0, tracked[0]] = tokenizer.convert_tokens_to_ids("7")
                committed[0, tracked[0]] = True
            state.after_step(None, first, committed)
            state.restrict(x == mask_id, x == mask_id, None)
            second = engine.forward(x, None, state.plan(x, live, no_reads))
            assert second.first_full_layer.tolist() == [expected]


@pytest.mark.parametrize("gamma, refreshing", [(0, False), (1.01, True)])
def test_gamma_zero_never_refreshes_and_above_one_always(gamma, refreshing):
    model, tokenizer = dllm_accel.load_model("tiny-llada"), dllm_accel.load_tokenizer("tiny-llada")
    batch = dllm_accel.encode_chat(
        tokenizer, [arith.messages(p) for p in arith.problems(2, seed=0, split="test")]
    )
    out = Sampler(
        model, unmask=Threshold(0.9), cache=ElasticCache(gamma=gamma, window=8), trace=True
    ).generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=24)
    starts = [
        layer
        for record in out.trace[1:]
        if record.forwarded
        for layer in record.first_full_layer.tolist()
        if layer >= 0
    ]
    assert len(starts) > 2
    assert all((layer < model.n_layers) == refreshing for layer in starts)


# -- drop-in
# ----------------------------------------------------------------------------------------------
def test_patch_routes_dream_diffusion_generate_and_unpatch_restores():
    model = decoder("Dream", seed=28)
    ids, _ = prompts(model, [6], seed=28)
    remote = DreamRemote(model, legacy_defaults=False)
    expected = dllm_accel.dream_generate(
        model, ids, max_new_tokens=8, steps=8, alg="entropy", cache=DualCache()
    )
    assert dllm_accel.patch(remote, cache=DualCache()) is remote
    assert torch.equal(
        remote.diffusion_generate(ids, max_new_tokens=8, steps=8, alg="entropy"), expected
    )
    config = DreamGenerationConfig(max_new_tokens=8, steps=8, alg="entropy")
    assert torch.equal(remote.diffusion_generate(inputs=ids, generation_config=config), expected)
    # re-patching replaces
    swapped = dllm_accel.patch(remote, cache=DualCache(), unmask=Threshold(0.5))
    with_threshold = Sampler(model, unmask=Threshold(0.5), cache=DualCache()).generate(
        ids, max_new_tokens=8
    )
    assert torch.equal(swapped.diffusion_generate(ids, max_new_tokens=8), with_threshold.sequences)
    dllm_accel.unpatch(remote)
    assert not hasattr(remote, "diffusion_generate")
    with pytest.raises(ValueError, match=r"this model was not patched"):
        dllm_accel.unpatch(remote)


def test_patch_gives_llada_generate_its_defaults():
    model = decoder("llada", seed=29)
    ids, _ = prompts(model, [6], seed=29)
    remote = StandIn(model.state_dict(), model.config)
    dllm_accel.patch(remote, cache=ElasticCache(window=4), unmask=Threshold(0.6))
    expected = (
        Sampler(model, unmask=Threshold(0.6), cache=ElasticCache(window=4))
        .generate(ids, max_new_tokens=8, block_length=4)
        .sequences
    )
    assert torch.equal(
        dllm_accel.llada_generate(remote, ids, gen_length=8, block_length=4), expected
    )
    plain = dllm_accel.llada_generate(model, ids, steps=8, gen_length=8, block_length=4)
    assert torch.equal(
        dllm_accel.llada_generate(
            dllm_accel.unpatch(remote), ids, steps=8, gen_length=8, block_length=4
        ),
        plain,
    )


# -- bad input
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ElasticCache(window=0), r"window must be an integer >= 1, got 0"),
        (lambda: ElasticCache(gamma=-0.5), r"gamma must be a finite number >= 0"),
        (lambda: ElasticCache(gamma=float("nan")), r"gamma must be a finite number >= 0 .*got nan"),
        (lambda: ElasticCache(gamma=float("inf")), r"gamma must be a finite number >= 0 .*got inf"),
        (lambda: ElasticCache(track=0), r"track must be an integer >= 1, got 0"),
        (
            lambda: ElasticCache(drift="rows"),
            r"drift must be one of \('keys', 'heads'\), got 'rows'",
        ),
        (
            lambda: ElasticCache(refresh_from=1),
            r"refresh_from must be one of \('next', 'drifting'\), got 1",
        ),
        (
            lambda: ElasticCache(cache_distant_masks="yes"),
            r"cache_distant_masks must be True or False",
        ),
    ],
)
def test_bad_cache_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_cache_use_is_named():
    model = decoder("llada")
    ids, _ = prompts(model, [5])
    with pytest.raises(
        ValueError, match=r"max_new_tokens \(16\) must be divisible by block_length \(6\)"
    ):
        Sampler(model, unmask=Threshold(0.9), cache=DualCache()).generate(
            ids, max_new_tokens=16, block_length=6
        )
    with pytest.raises(TypeError, match=r"cache must be a refresh policy .*got 'dual'"):
        Sampler(model, unmask=Threshold(0.9), cache="dual")
    with pytest.raises(TypeError, match=r"patch\(\) is for models loaded with"):
        dllm_accel.patch(model, cache=DualCache())


def test_trained_model_rows_refresh_at_their_own_depth_as_alone():
    """On tiny-llada (whose attention does drift), a batch mixes rows that recompute and rows that
    reuse in the same step, and each row still decodes as it would alone."""
    model, tokenizer = dllm_accel.load_model("tiny-llada"), dllm_accel.load_tokenizer("tiny-llada")
    problems = arith.problems(6, seed=7, split="test")
    batch = dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in problems])
    sampler = Sampler(model, unmask=Threshold(0.9), cache=ElasticCache(), trace=True)
    together = sampler.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=48)
    mixed = [
        r.first_full_layer
        for r in together.trace
        if len(set(r.first_full_layer[r.first_full_layer >= 0].tolist())) > 1
    ]
    assert mixed, "the case needs steps where rows refresh from different layers"
    for row, problem in enumerate(problems):
        alone = sampler.generate(
            dllm_accel.encode_chat(tokenizer, [arith.messages(problem)])["input_ids"],
            max_new_tokens=48,
        )
        assert torch.equal(together.sequences[row, -48:], alone.sequences[0, -48:])


@pytest.mark.parametrize("dim", [-1, 1])
def test_drift_cosine_matches_torch_on_tiny_and_zero_attention(dim):
    """Most keys get tiny attention; they must still compare by direction, as F.cosine_similarity
    does."""
    from dllm_accel.ops.reference import _cosine

    before, now = torch.rand(3, 4, 2, 20) * 1e-6, torch.rand(3, 4, 2, 20) * 1e-6
    before[0, :, 0, :3] = 0  # padded keys: no attention from any head
    expected = torch.nn.functional.cosine_similarity(before, now, dim=dim)
    assert torch.allclose(_cosine(before, now, dim), expected, atol=1e-5)
