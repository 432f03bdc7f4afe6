"""The layer-wise forward over a KV cache (ARCHITECTURE.md §2): chosen query rows per layer against the
cached K/V of every position, switching to a full recompute from a layer the refresh policy decides.

One forward (`Engine.forward`) for the model rows being computed (`rows`; None: all of them):

    plan.query None          every position through every layer (a full forward; fills the cache)
    plan.query [R, T] bool   only those positions ("query rows") go through layers < plan.full_from:
                             at layer i their q, k, v are computed at their true positions, their k, v
                             written into the cache, and they attend to all cached keys;
                             layers >= full_from recompute every position, starting from the cached
                             input of layer full_from with the fresh query rows substituted.
    plan.monitor             (ElasticCache) at each layer still reusing its cache, sees the tracked rows'
                             attention before and after this step's writes and may send a batch row to
                             the full recompute from that layer on, or with plan.recompute_drifting False
                             from the next one (each row at its own layer); sees the query rows'
                             attention probabilities at every layer.

The math is the model's own (embed / layer(i).qkv / attend / layer(i).finish), so a full forward here
is the plain forward, and a plan that recomputes everything reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from . import ops
from .cache import KVCache
from .models.base import DiffusionLM, Rope, apply_rotary, attend


class Monitor(Protocol):
    drift_axis: str  # 'heads' or 'keys': the axis ops.attention_drift compares along

    def drifted(self, layer: int, similarity: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """similarity [p, m]: how alike the tracked rows' attention is before and after this step's
        writes, for model rows `rows` [p]; valid [p, m] -> [p] bool: the rows that drifted."""

    def mass_weights(self, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The weight [p, n] of each query row (positions index [p, n], valid [p, n]) in the attention
        mass the monitor observes."""

    def observe(self, layer: int, mass: torch.Tensor, rows: torch.Tensor) -> None:
        """mass [p, T]: the weighted query rows' attention per key at this layer, for model rows `rows`."""


@dataclass
class ForwardPlan:
    query: torch.Tensor | None  # [R, T] bool; None: every position through every layer
    full_from: int  # layers >= full_from recompute every position (n_layers: none)
    tracked: torch.Tensor | None = None  # [R, T] bool, inside query: rows whose attention drift is tested
    monitor: Monitor | None = None
    # a drifting layer: True, it is recomputed with every later one; False, it keeps its query rows'
    # output and every position is recomputed from the next layer on
    recompute_drifting: bool = True


@dataclass
class ForwardResult:
    hidden: torch.Tensor  # [r, n, d] last layer's output at the query positions ([r, T, d] without a query)
    columns: torch.Tensor | None  # [r, T]: column of `hidden` holding each query position; None: identity
    full_from: torch.Tensor  # [r] per computed row: the first layer that recomputed every position
    units: int  # token x layer units computed


@dataclass
class _Rows:
    """Per-row tensors of a group of computed rows, sliced together as rows change group."""

    ids: torch.Tensor  # [g] model row ids
    whole: bool  # the group is every model row, in order (the cache is then read through views)
    index: torch.Tensor  # [g, n] query positions
    valid: torch.Tensor  # [g, n]
    key_mask: torch.Tensor | None  # [g, T]
    rope: Rope | None = None  # [g, 1, n, D]: the query positions' tables
    mass_weights: torch.Tensor | None = None  # [g, n]: the monitor's weights of the query rows

    @property
    def cache_rows(self) -> torch.Tensor | None:
        return None if self.whole else self.ids

    def select(self, keep: torch.Tensor) -> _Rows:
        rope = None if self.rope is None else Rope(self.rope.cos[keep], self.rope.sin[keep])
        return _Rows(self.ids[keep], False, self.index[keep], self.valid[keep], _take(self.key_mask, keep), rope,
                     _take(self.mass_weights, keep))


class _Split:
    """The computed rows of one forward: those still computing only their query rows (`h` [p, n, d]) and
    those recomputing every position (`hidden` [f, T, d]); `*_at` are positions among the computed rows."""

    def __init__(self, queried: _Rows, h: torch.Tensor):
        self.queried, self.partial, self.h = queried, queried, h
        self.partial_at = torch.arange(h.shape[0], device=h.device)
        self.full, self.full_at, self.hidden = None, self.partial_at[:0], None

    def move(self, leaving: torch.Tensor, fresh: torch.Tensor) -> None:
        """Rows `leaving` [p] bool switch to recomputing every position, from inputs `fresh` [l, T, d]."""
        self.full_at = torch.cat([self.full_at, self.partial_at[leaving]])
        self.hidden = fresh if self.hidden is None else torch.cat([self.hidden, fresh])
        everyone = len(self.full_at) == len(self.queried.ids)
        if everyone:  # back to batch order, so that the cache is read through views again
            order = self.full_at.argsort()
            self.full_at, self.hidden = self.full_at[order], self.hidden[order]
        self.full = self.queried.select(self.full_at)
        self.full.whole = everyone and self.queried.whole
        stay = ~leaving
        self.partial_at, self.h, self.partial = self.partial_at[stay], self.h[stay], self.partial.select(stay)

    def output(self) -> torch.Tensor:
        """The last layer's output at the query positions, [r, n, d] in batch order."""
        if not len(self.full_at):
            return self.h
        gathered = self.hidden.gather(1, self.full.index[..., None].expand(-1, -1, self.hidden.shape[-1]))
        if not len(self.partial_at):
            return gathered
        out = gathered.new_empty(len(self.partial_at) + len(self.full_at), *gathered.shape[1:])
        out[self.partial_at], out[self.full_at] = self.h, gathered
        return out


class Engine:
    """Holds one generation's RoPE tables, key mask and (when a policy keeps one) KV cache."""

    def __init__(self, model: DiffusionLM, canvas_mask: torch.Tensor | None, rows: int, length: int, *,
                 cache: bool, inputs: bool):
        self.model = model
        self.rope = model.rotary(model.positions(canvas_mask, length).to(model.device))  # once per generation
        self.key_mask = None if canvas_mask is None else canvas_mask.bool()
        self.all_rows = torch.arange(rows, device=model.device)
        spec = model.spec
        self.cache = KVCache(n_layers=spec.n_layers, rows=rows, length=length, n_kv_heads=spec.n_kv_heads,
                             head_dim=spec.head_dim, d_model=spec.d_model, dtype=model.dtype, device=model.device,
                             inputs=inputs) if cache else None

    def forward(self, ids: torch.Tensor, rows: torch.Tensor | None, plan: ForwardPlan) -> ForwardResult:
        """ids [R, T] the model rows' canvas; rows [r] the ones computed (None: all). Each row leaves the
        query-rows path at its own layer: where the plan says, or where the monitor saw it drift."""
        n_layers, device = self.model.n_layers, ids.device
        ids = ids if rows is None else ids[rows]
        r, length = ids.shape
        row_ids = self.all_rows if rows is None else rows
        if plan.query is None:
            every = _Rows(row_ids, rows is None, None, None, _take(self.key_mask, rows))
            hidden = self.model.embed(ids)
            for i in range(n_layers):
                hidden = self._full_layer(i, hidden, every, self._rope(row_ids))
            return ForwardResult(hidden, None, torch.zeros(r, dtype=torch.long, device=device), r * length * n_layers)
        index, valid, n_tracked = query_index(_take(plan.query, rows), _take(plan.tracked, rows))
        weights = None if plan.monitor is None else plan.monitor.mass_weights(row_ids, index, valid)
        queried = _Rows(row_ids, rows is None, index, valid, _take(self.key_mask, rows),
                        gather_rope(self._rope(row_ids), index), weights)
        split = _Split(queried, self.model.embed(ids.gather(1, index)))
        depth = torch.full((r,), n_layers, dtype=torch.long, device=device)
        partial_layers = torch.zeros(r, dtype=torch.long, device=device)  # layers that computed a row's query rows
        drifted_before = None  # rows whose previous layer drifted under recompute_drifting=False
        for i in range(n_layers):
            if drifted_before is not None:  # every position from this layer, the drifting one's output kept
                self._recompute_from(i, split, drifted_before, split.h, ids, index, depth)
                drifted_before = None
            if len(split.partial_at):
                leaving, layer_input = None, split.h
                if i < plan.full_from:
                    partial_layers[split.partial_at] += 1
                    split.h, leaving = self._partial_layer(i, split, n_tracked, plan.monitor,
                                                           observe_drifting=not plan.recompute_drifting)
                    if leaving is not None and not plan.recompute_drifting:
                        drifted_before, leaving = leaving, None
                else:
                    leaving = torch.ones_like(split.partial_at, dtype=torch.bool)
                if leaving is not None:  # layer i recomputes these rows, the drifting layer included
                    self._recompute_from(i, split, leaving, layer_input, ids, index, depth)
            if len(split.full_at):
                split.hidden = self._full_layer(i, split.hidden, split.full, self._rope(split.full.ids), plan.monitor)
        columns = torch.full((r, length), -1, dtype=torch.long, device=device)
        columns.scatter_(1, index, torch.arange(index.shape[1], device=device).expand_as(index))
        units = int((valid.sum(1) * partial_layers).sum() + (length * (n_layers - depth)).sum())
        return ForwardResult(split.output(), columns, depth, units)

    def _recompute_from(self, i, split: _Split, leaving, layer_input, ids, index, depth) -> None:
        """Rows `leaving` [p] of the query-rows path recompute every position from layer i: its cached
        input with their fresh query rows `layer_input` [p, n, d] substituted."""
        joining = split.partial_at[leaving]
        rows = split.queried.ids[joining]
        fresh = self.model.embed(ids[joining]) if i == 0 else self.cache.inputs[i][rows]
        fresh.scatter_(1, index[joining, :, None].expand(-1, -1, fresh.shape[-1]), layer_input[leaving])
        split.move(leaving, fresh)
        depth[joining] = i

    def _partial_layer(self, i, split: _Split, n_tracked: int, monitor, observe_drifting: bool):
        """Layer i for the query rows of the rows still on that path -> (output [g, n, d], the rows that
        drifted [g] or None). `observe_drifting`: the drifting rows' attention here is final (their
        layer is not recomputed), so the monitor sees it."""
        layer, cache, group, h = self.model.layer(i), self.cache, split.partial, split.h
        n = h.shape[1]
        testing = monitor is not None and n_tracked > 0
        x = h
        if testing:
            # the tracked rows as the cache stood before this step: their cached layer input, projected in
            # the same call as the fresh rows; their keys before this step's writes are kept (n rows), so
            # no second copy of the cache is needed
            x = torch.cat([h, cache.inputs[i][group.ids[:, None], group.index[:, :n_tracked]]], 1)
        q, k, v = layer.qkv(x, None)  # RoPE is applied by rope_write (and below for the stale rows)
        if testing:
            tracked_rope = Rope(*(table[:, :, :n_tracked] for table in group.rope))
            q_before, q, k, v = apply_rotary(q[:, :, n:], tracked_rope), q[:, :, :n], k[:, :, :n], v[:, :, :n]
            keys_before = cache.keys[i][group.ids[:, None, None], cache.heads, group.index[:, None, :]]
        inputs = None if cache.inputs is None else cache.inputs[i]
        q = ops.rope_write(q, k, v, group.rope, cache.keys[i], cache.values[i], group.ids, group.index,
                           inputs=inputs, hidden=None if inputs is None else h)
        keys, values = cache.read(i, group.cache_rows)
        if monitor is None:
            return layer.finish(h, ops.partial_attention(q, keys, values, group.key_mask)[0]), None
        drifted = None
        if testing:
            attn, mass, similarity = ops.monitored_attention(
                q, keys, values, group.key_mask, mass_weights=group.mass_weights, q_before=q_before,
                written=group.index, keys_before=keys_before, axis=monitor.drift_axis)
            drifted = monitor.drifted(i, similarity, group.valid[:, :n_tracked], group.ids)
            drifted = drifted if bool(drifted.any()) else None
        else:
            attn, mass = ops.partial_attention(q, keys, values, group.key_mask, mass_weights=group.mass_weights)
        if drifted is None or observe_drifting:
            monitor.observe(i, mass, group.ids)
        elif not bool(drifted.all()):  # the drifting rows are observed when their layer is recomputed
            kept = ~drifted
            monitor.observe(i, mass[kept], group.ids[kept])
        return layer.finish(h, attn), drifted

    def _full_layer(self, i, hidden, group: _Rows, rope: Rope, monitor=None):
        """Layer i over every position of the group's rows, writing the cache where one is kept."""
        cache, layer = self.cache, self.model.layer(i)
        if cache is not None and cache.inputs is not None:
            cache.write_inputs(i, group.cache_rows, hidden)
        q, k, v = layer.qkv(hidden, rope)
        if cache is not None:
            cache.write_all(i, group.cache_rows, k, v)
        if monitor is not None:
            q_rows = q.gather(2, group.index[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
            monitor.observe(i, ops.attention_mass(q_rows, k, group.key_mask, group.mass_weights), group.ids)
        return layer.finish(hidden, attend(q, k, v, group.key_mask))

    def _rope(self, rows: torch.Tensor) -> Rope:
        if self.rope.cos.shape[0] == 1:
            return self.rope
        return Rope(self.rope.cos[rows], self.rope.sin[rows])


# -- index helpers ---------------------------------------------------------------------------------
def mask_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[r, T] bool -> (positions [r, n] ascending, valid [r, n]), n the largest count of a row; the
    entries past a row's count are unspecified (callers replace them)."""
    counts = mask.sum(1)
    n = int(counts.max())
    order = mask.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :n]
    return order, torch.arange(n, device=mask.device) < counts[:, None]


def query_index(query: torch.Tensor, tracked: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (positions [r, n]: the tracked ones first, then the other query positions; valid [r, n];
    how many leading columns are tracked). Padding entries repeat the row's first non-tracked query
    position, so computing them rewrites that row with the same values."""
    rest = query if tracked is None else query & ~tracked
    index, valid = mask_index(rest)
    n_tracked = 0
    if tracked is not None:
        tracked_index, tracked_valid = mask_index(tracked)
        n_tracked = tracked_index.shape[1]
        index, valid = torch.cat([tracked_index, index], 1), torch.cat([tracked_valid, valid], 1)
    return torch.where(valid, index, index[:, n_tracked:n_tracked + 1]), valid, n_tracked


def gather_rope(rope: Rope, index: torch.Tensor) -> Rope:
    """Tables [1 or r, 1, T, D] -> [r, 1, n, D] at positions index [r, n]."""
    where = index[:, None, :, None].expand(-1, 1, -1, rope.cos.shape[-1])
    return Rope(*(table.expand(index.shape[0], -1, -1, -1).gather(2, where) for table in rope))


def _take(tensor: torch.Tensor | None, rows: torch.Tensor | None):
    return tensor if tensor is None or rows is None else tensor[rows]
