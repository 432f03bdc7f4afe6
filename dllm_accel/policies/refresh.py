"""KV-cache refresh policies: which rows a step computes, and from which layer everything is
recomputed.

A policy validates its settings when built; `begin` returns the mutable state of one generation,
which the Sampler drives:

    state = policy.begin(canvas)                       # once per generation
    state.begin_block(start, end)                      # once per block (canvas positions)
    # ElasticCache decodes only inside its window
    candidates = state.restrict(masks, candidates, quota)
    plan = state.plan(model_ids, live, head_reads)     # engine.ForwardPlan for this step
    state.after_step(rows, result, committed)          # what was computed and committed

- NoCache: a full forward every step (the baseline; on a block-causal model, up to the current
  block's end: the official loop).
- BlockPrefixCache: block-causal models only (LLaDA2): the current block against the cached, exact
  prefix.
- PrefixCache / DualCache (Fast-dLLM): a full forward at a block's first step, which also decodes;
  then PrefixCache computes the block and everything after it against the cached prefix, DualCache
  only the block.
- FrozenCache: a probe, not a method: one full forward at the first step, then only the current
  block's masks, so the cache never sees a committed token (how much a stale cache costs a model).
- ElasticCache ("Attention Is All You Need for KV Cache in Diffusion LLMs"): computes the tracked
  (most-attended) tokens, the tokens committed at the previous step and a sliding window of masks;
  at each layer still reusing its cache it compares the tracked tokens' attention before and after
  this step; when a layer's similarity falls below gamma, every position is recomputed from the next
  layer (refresh_from='next', the paper's and the released code's boundary) or from that layer
  ('drifting').

`head_reads` [R, T] marks the positions whose last-layer output the head reads (a candidate's own
position, or the one before it under Dream's logit shift): every query must include them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .. import ops
from ..cache import KVCache
from ..checks import check_bool, check_choice, check_int, check_number
from ..engine import ForwardPlan, ForwardResult, RowGroup, mask_index
from ..models.base import Rope, apply_rotary
from ..ops import DRIFT_AXES
from .cfg import CFGRows

REFRESH_BOUNDARIES = ("next", "drifting")


@dataclass(frozen=True)
class Canvas:
    """Facts of one generation: the model rows (R: twice the batch under classifier-free guidance)
    of T positions, of which the first `prompt_length` are the (left-padded) prompt."""

    model_rows: CFGRows
    length: int
    prompt_length: int
    n_layers: int
    mask_id: int
    key_valid: torch.Tensor  # [R, T] bool: not padding
    # block-causal models: the attention block (blocks are then per-row windows, see Sampler)
    block: int | None = None

    @property
    def rows(self) -> int:
        return self.model_rows.rows


class RefreshPolicy:
    keeps_cache = True  # the engine allocates K/V buffers
    keeps_inputs = False  # ... and every layer's input hidden states
    # which attention structures the policy is exact or meaningful for (ModelSpec.block_size)
    bidirectional = True
    block_causal = False

    def begin(self, canvas: Canvas) -> RefreshState:
        raise NotImplementedError


class RefreshState:
    def __init__(self, canvas: Canvas):
        self.canvas = canvas

    def begin_block(self, start: int, end: int) -> None:
        pass

    def restrict(
        self, masks: torch.Tensor, candidates: torch.Tensor, quota: torch.Tensor | None
    ) -> torch.Tensor:
        """masks [B, T]: the masked positions still to be decoded (a stop policy may have closed
        some)."""
        return candidates

    def plan(
        self, model_ids: torch.Tensor, live: torch.Tensor, head_reads: torch.Tensor
    ) -> ForwardPlan:
        """model_ids [R, T]; live [R]: the rows computed; head_reads [R, T]: positions the query
        must include (see the module notes)."""
        raise NotImplementedError

    def after_step(
        self, rows: torch.Tensor | None, result: ForwardResult, committed: torch.Tensor
    ) -> None:
        pass


# -- NoCache
# -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoCache(RefreshPolicy):
    """Every position through every layer, every step. On a block-causal model, every position up to
    the end of the current block (nothing before it sees the later blocks): the official loop."""

    keeps_cache = False
    block_causal = True

    def begin(self, canvas: Canvas) -> RefreshState:
        return _Full(canvas)


class _Full(RefreshState):
    length = None

    def begin_block(self, start, end):
        if self.canvas.block is not None:  # [B] windows: one host sync per block
            self.length = int(end.max())

    def plan(self, model_ids, live, head_reads):
        return ForwardPlan(None, self.canvas.n_layers, length=self.length)


# -- block-causal models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockPrefixCache(RefreshPolicy):
    """The exact prefix cache of block-causal models (LLaDA2), their default: no position sees a
    later block, so a block's K/V are final once its tokens are, and are computed once. Each step
    computes the current block's positions (at every layer) against the cached prefix; a block's
    first step also computes the block before it, whose last tokens were committed after its last
    forward (and the first step the whole prompt). The tokens are NoCache's (the official loop's)
    exactly."""

    bidirectional = False
    block_causal = True

    def begin(self, canvas: Canvas) -> RefreshState:
        return _BlockPrefix(canvas)


class _BlockPrefix(RefreshState):
    def __init__(self, canvas: Canvas):
        super().__init__(canvas)
        device = canvas.key_valid.device
        self.positions = torch.arange(canvas.length, device=device)
        # [R]: each row's K/V are final before this canvas index
        self.final = torch.zeros(canvas.rows, dtype=torch.long, device=device)

    def begin_block(self, start, end):
        rows = self.canvas.model_rows
        self.start, self.end = rows.repeat(start), rows.repeat(end)
        self.length = int(end.max())  # one host sync per block

    def plan(self, model_ids, live, head_reads):
        positions = self.positions
        query = (positions >= self.final[:, None]) & (positions < self.end[:, None])
        query &= self.canvas.key_valid
        return ForwardPlan(query | head_reads, self.canvas.n_layers, length=self.length)

    def after_step(self, rows, result, committed):
        rows = slice(None) if rows is None else rows
        # everything before the block was computed from final tokens by now
        self.final[rows] = torch.maximum(self.final[rows], self.start[rows])


# -- Fast-dLLM
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefixCache(RefreshPolicy):
    """Full forward at each block's first step; then the block and all after it against the cached
    prefix."""

    def begin(self, canvas: Canvas) -> RefreshState:
        return _BlockCache(canvas, to_end=True)


@dataclass(frozen=True)
class DualCache(RefreshPolicy):
    """Full forward at each block's first step; then only the block, its rows overwriting the cached
    ones."""

    def begin(self, canvas: Canvas) -> RefreshState:
        return _BlockCache(canvas, to_end=False)


@dataclass(frozen=True)
class FrozenCache(RefreshPolicy):
    """A probe of how much a stale cache costs, not a method: a full forward at the first step only;
    then only the current block's still-masked positions. A committed token's K/V stay those
    computed while it was a mask: the cache never sees a committed token."""

    def begin(self, canvas: Canvas) -> RefreshState:
        return _Frozen(canvas, to_end=False)


class _BlockCache(RefreshState):
    def __init__(self, canvas: Canvas, to_end: bool):
        super().__init__(canvas)
        self.to_end = to_end
        self.fresh = torch.zeros(canvas.rows, dtype=torch.bool, device=canvas.key_valid.device)
        # tokens changed outside the query (a stop rewrite)
        self.changed = torch.zeros_like(canvas.key_valid)

    def begin_block(self, start, end):
        self.fresh.zero_()  # every row refreshes at its first step in the block
        self._query_block(start, end)

    def _query_block(self, start, end):
        positions = torch.arange(self.canvas.length, device=self.fresh.device)
        self.query = (positions >= start) & ((positions < end) | self.to_end)

    def plan(self, model_ids, live, head_reads):
        if not bool((self.fresh | ~live).all()):
            return ForwardPlan(None, self.canvas.n_layers)
        return ForwardPlan(self.query | self.changed | head_reads, self.canvas.n_layers)

    def after_step(self, rows, result, committed):
        rows = slice(None) if rows is None else rows
        self.fresh[rows] |= result.first_full_layer == 0
        self.changed[rows] = False
        self.changed |= committed & ~self.query


class _Frozen(_BlockCache):
    """DualCache's query without its refreshes: the first step is the only full forward, and of the
    block only the masks are computed, so no committed (or rewritten) token is ever recomputed."""

    def begin_block(self, start, end):
        self._query_block(start, end)  # a new block refreshes nothing

    def plan(self, model_ids, live, head_reads):
        if not bool((self.fresh | ~live).all()):
            return ForwardPlan(None, self.canvas.n_layers)
        masks = self.query & (model_ids == self.canvas.mask_id)
        return ForwardPlan(masks | head_reads, self.canvas.n_layers)


# -- ElasticCache
# ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ElasticCache(RefreshPolicy):
    """Attention-drift refresh with a depth schedule and a sliding window of masks.

    gamma: similarity bar; when a layer's tracked-token attention similarity (before vs after this
        step's writes) is below it, a refresh starts there (see refresh_from; gamma > 1: every step;
        gamma 0: never after the first forward, the committed tokens' own rows still recomputed).
    window: the first `window` still-masked positions of a row form its active window (at least as
    many
        as the unmask policy must commit this step); decoding happens only inside it.
    track: most-attended decoded tokens tracked per layer (the next step's tracked set is the union
        over layers).
    cache_distant_masks: masks beyond the window are served from the cache (False: queried every
    step). drift: 'heads' — cosine over the head axis per key, averaged over keys and tracked tokens
    (the
        released code's statistic; the default: on the testbed it refreshed less at the same
        accuracy); 'keys' — cosine over the key axis per head, averaged over heads and tracked
        tokens (the paper's).
    refresh_from: where a refresh starts when layer l drifts. 'next' (the paper's l* and the
    released
        code's boundary; the default): layer l keeps its query rows' output and every position is
        recomputed from layer l + 1. 'drifting': from layer l itself, so that gamma > 1 recomputes
        every layer every step and equals NoCache exactly ('next' then still runs layer 0 on the
        query rows only).
    Each row of a batch refreshes from its own drifting layer, so a row decodes as it would alone.
    """

    gamma: float = 0.9
    window: int = 16
    track: int = 1
    cache_distant_masks: bool = True
    drift: str = "heads"
    refresh_from: str = "next"
    keeps_inputs = True

    def __post_init__(self):
        check_number(self.gamma, "gamma", 0, note="0 never refreshes, above 1 refreshes every step")
        for name in ("window", "track"):
            check_int(getattr(self, name), name, 1)
        check_choice(self.drift, "drift", DRIFT_AXES)
        check_choice(self.refresh_from, "refresh_from", REFRESH_BOUNDARIES)
        check_bool(self.cache_distant_masks, "cache_distant_masks")

    def begin(self, canvas: Canvas) -> RefreshState:
        return _Elastic(canvas, self)


class _Elastic(RefreshState):
    def __init__(self, canvas: Canvas, policy: ElasticCache):
        super().__init__(canvas)
        self.policy = policy
        device = canvas.key_valid.device
        self.fresh = torch.zeros(canvas.rows, dtype=torch.bool, device=device)
        self.all_fresh = self.refreshes_all = False  # host flags: see _live_rows_fresh
        self.tracked = torch.zeros(canvas.rows, canvas.length, dtype=torch.bool, device=device)
        # per layer and row, the attention mass the window's masks paid each key this step (-1: not
        # observed);
        # the next tracked set is chosen from it once per step, not once per layer
        self.mass = torch.empty(canvas.n_layers, canvas.rows, canvas.length, device=device)
        self.changed = torch.zeros_like(self.tracked)  # committed since the row was last computed
        self.generated = torch.arange(canvas.length, device=device) >= canvas.prompt_length

    def restrict(self, masks, candidates, quota):
        # masks a stop policy closed are outside the window, as decoded ones
        masked = masks & self.generated
        size = torch.full((masks.shape[0], 1), self.policy.window, device=masks.device)
        if quota is not None:
            size = torch.maximum(size, quota[:, None])
        window = masked & (masked.cumsum(1) <= size)
        model_rows = self.canvas.model_rows
        self.window = model_rows.repeat(window)  # [R, T]
        self.distant = (
            None if self.policy.cache_distant_masks else model_rows.repeat(masked & ~window)
        )
        return candidates & window

    def plan(self, model_ids, live, head_reads):
        self.decoded = (
            ~((model_ids == self.canvas.mask_id) & self.generated) & self.canvas.key_valid
        )
        query = self.tracked | self.changed | self.window | head_reads
        if self.distant is not None:
            query |= self.distant
        first_full_layer = self.canvas.n_layers if self._live_rows_fresh(live) else 0
        self.refreshes_all = first_full_layer == 0 and bool(live.all())
        if (
            self.policy.gamma == 0
        ):  # never refreshes: nothing to track (a cosine below 0 would refresh)
            return ForwardPlan(query, first_full_layer)
        self.mass.fill_(-1.0)
        return ForwardPlan(
            query,
            first_full_layer,
            AttentionDrift(self.tracked, self, leave_after=self.policy.refresh_from == "next"),
        )

    def _live_rows_fresh(self, live) -> bool:
        """Whether every live row has had a full forward; read from the device only until every
        row has had one."""
        return self.all_fresh or bool((self.fresh | ~live).all())

    def after_step(self, rows, result, committed):
        self.all_fresh |= self.refreshes_all  # a forward of every row from layer 0
        rows = slice(None) if rows is None else rows
        self.fresh[rows] |= result.first_full_layer == 0
        self.changed[rows] = False
        if self.policy.gamma > 0:
            self.tracked[rows] = self._most_attended(rows)
        self.changed |= committed

    # -- AttentionDrift's judge ------------------------------------------------------------------
    @property
    def drift_axis(self) -> str:
        return self.policy.drift

    def drifted(self, layer, similarity, valid, rows):
        counts = valid.sum(1)
        row_similarity = (similarity * valid).sum(1) / counts.clamp(min=1)
        return (row_similarity < self.policy.gamma) & (counts > 0)

    def mass_weights(self, rows, index, valid):
        """The window's masks among the query rows: the tokens they attend to most are tracked."""
        return (self.window[rows].gather(1, index) & valid).float()

    def observe(self, layer, mass, rows):
        self.mass[layer, rows] = mass

    def _most_attended(self, rows) -> torch.Tensor:
        """The next tracked set of `rows`: per layer the top `track` decoded tokens by the mass
        observed there, united over layers."""
        mass = self.mass[:, rows].masked_fill(~self.decoded[rows], -1.0)
        top = mass.topk(min(self.policy.track, mass.shape[-1]), dim=-1)
        chosen = torch.zeros_like(mass, dtype=torch.bool)
        chosen.scatter_(-1, top.indices, top.values >= 0)
        return chosen.any(0)


class DriftJudge(Protocol):
    """What AttentionDrift asks of ElasticCache's state (tests substitute their own)."""

    drift_axis: str  # 'heads' or 'keys': the axis ops.attention_drift compares along

    def drifted(
        self, layer: int, similarity: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """similarity [p, m]: how alike the tracked rows' attention is before and after this step's
        writes, for model rows `rows` [p]; valid [p, m] -> [p] bool: the rows that drifted."""

    def mass_weights(
        self, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The weight [p, n] of each query row (positions index [p, n], valid [p, n]) in the
        attention mass observed."""

    def observe(self, layer: int, mass: torch.Tensor, rows: torch.Tensor) -> None:
        """mass [p, T]: the weighted query rows' attention per key at this layer, for model rows
        `rows`."""


class AttentionDrift:
    """ElasticCache's drift test for one forward, as the engine's LayerMonitor (engine.py).

    The tracked positions come first among a row's query positions. At each layer still reusing the
    cache, the tracked rows' attention as the cache stood before this step (their cached layer
    input, projected in the same call as the fresh rows; the keys at the query positions read before
    this layer's writes, so no second copy of the cache is needed) is compared with their attention
    after it; `judge` decides which rows drifted and records the query rows' attention mass."""

    def __init__(self, tracked: torch.Tensor, judge: DriftJudge, *, leave_after: bool):
        # tracked [R, T] bool
        self.tracked, self.judge, self.leave_after = (tracked, judge, leave_after)
        self.n_tracked = 0  # leading query columns that are tracked (set by query_positions)

    def query_positions(self, query: torch.Tensor, rows: torch.Tensor | None):
        """-> (positions [r, n]: the tracked ones first, then the other query positions; valid [r,
        n]). Padding entries repeat the row's first non-tracked query position, so computing them
        rewrites that row with the same values."""
        tracked = self.tracked if rows is None else self.tracked[rows]
        others = query & ~tracked
        # both widths in one read from the device
        n_tracked, n_others = torch.stack([tracked.sum(1).max(), others.sum(1).max()]).tolist()
        index, valid = mask_index(others, n_others)
        tracked_index, tracked_valid = mask_index(tracked, n_tracked)
        self.n_tracked = n = tracked_index.shape[1]
        index, valid = torch.cat([tracked_index, index], 1), torch.cat([tracked_valid, valid], 1)
        return torch.where(valid, index, index[:, n : n + 1]), valid

    def mass_weights(self, rows, index, valid):
        return self.judge.mass_weights(rows, index, valid)

    def stale_inputs(self, layer: int, cache: KVCache, group: RowGroup) -> torch.Tensor | None:
        """The tracked rows' cached input of this layer [g, n_tracked, d]; None when nothing is
        tracked."""
        if self.n_tracked == 0:
            return None
        return cache.inputs[layer][group.ids[:, None], group.index[:, : self.n_tracked]]

    def before_writes(self, layer: int, cache: KVCache, group: RowGroup, q_stale: torch.Tensor):
        """-> (the tracked rows' queries before this step [g, Hq, n_tracked, D], RoPE applied; the
        keys at the query positions before this layer's writes [g, Hkv, n, D])."""
        tracked_rope = Rope(*(table[:, :, : self.n_tracked] for table in group.rope))
        q_before = apply_rotary(q_stale, tracked_rope)
        keys_before = cache.keys[layer][
            group.ids[:, None, None], cache.heads, group.index[:, None, :]
        ]
        return q_before, keys_before

    def attend(self, layer, q, keys, values, group: RowGroup, before):
        """The query rows' attention; the rows whose tracked rows drifted [g] bool (None: no test,
        nothing is tracked), decided on the device. Every row's mass is observed; a row that
        recomputes this layer is observed again then (observe_full), which overwrites it."""
        judge = self.judge
        if before is None:
            attn, mass = ops.partial_attention(
                q, keys, values, group.key_mask, mass_weights=group.mass_weights
            )
            judge.observe(layer, mass, group.ids)
            return attn, None
        q_before, keys_before = before
        attn, mass, similarity = ops.monitored_attention(
            q,
            keys,
            values,
            group.key_mask,
            mass_weights=group.mass_weights,
            q_before=q_before,
            written=group.index,
            keys_before=keys_before,
            axis=judge.drift_axis,
        )
        judge.observe(layer, mass, group.ids)
        return attn, judge.drifted(layer, similarity, group.valid[:, : self.n_tracked], group.ids)

    def observe_full(self, layer: int, q: torch.Tensor, k: torch.Tensor, group: RowGroup) -> None:
        """The query rows' attention mass at a layer recomputing every position."""
        q_rows = q.gather(2, group.index[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
        mass = ops.attention_mass(q_rows, k, group.key_mask, group.mass_weights)  # [f, T]
        self.judge.observe(layer, mass, group.ids)
