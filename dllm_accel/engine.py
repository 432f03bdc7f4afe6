"""The layer-wise forward over a KV cache (ARCHITECTURE.md §2): chosen query rows per layer against
the cached K/V of every position, switching to a full recompute from a layer the refresh policy
decides.

One forward (`Engine.forward`) for the model rows being computed (`rows`; None: all of them):

    plan.query None          every position through every layer (a full forward; fills the cache)
    plan.query [R, T] bool   only those positions ("query rows") go through the layers before
                             plan.first_full_layer: at layer i their q, k, v are computed at their
                             true positions, their k, v written into the cache, and they attend to
                             all cached keys; layers >= first_full_layer recompute every position,
                             starting from the cached input of that layer with the fresh query rows
                             substituted.
    plan.monitor             a LayerMonitor (ElasticCache's drift test, policies/refresh.py) orders
                             the query positions and, at each layer before first_full_layer, takes
                             over the query rows' attention and flags the rows that drifted there;
                             each row then recomputes every position from its first drifting layer
                             (with monitor.leave_after from the next one), or from
                             first_full_layer.

Two passes, so that the host does not wait for the device at every layer: the query rows first go
through every layer before first_full_layer, the drift flags kept on the device; then the rows'
first drifting layers are read once, and each row recomputes every position from its layer on,
from the cache's input of that layer with the query rows' input of the first pass substituted.
The tokens are those of deciding layer by layer; a row that drifted has its query rows computed
past its drifting layer too (counted in `units`), and those writes are overwritten by its
recompute.

The math is the model's own (embed / layer(i).qkv / attend / layer(i).finish), so a full forward
here is the plain forward, and a plan that recomputes everything reproduces it exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

import torch

from . import ops
from .cache import KVCache
from .models.base import DiffusionLM, Rope, attend, block_key_end


class LayerMonitor(Protocol):
    """What the engine asks of a plan's monitor. Per forward, then per layer of the query-rows path:

        index, valid = monitor.query_positions(query, rows)     the query positions' order
        weights = monitor.mass_weights(rows, index, valid)
        stale = monitor.stale_inputs(i, cache, group)           rows to project with the query rows
        before = monitor.before_writes(i, cache, group, q)      (only when stale is not None)
        attn, leaving = monitor.attend(i, q, keys, values, group, before)
    and at each layer recomputing every position, monitor.observe_full(i, q, k, group)."""

    # True: a row drifting at layer i keeps layer i's query-rows output and recomputes every
    # position from layer i + 1; False: from layer i itself
    leave_after: bool

    def query_positions(self, query: torch.Tensor, rows: torch.Tensor | None):
        """query [r, T] bool of model rows `rows` (None: all) -> (positions [r, n], valid [r,
        n])."""

    def mass_weights(
        self, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The weight [r, n] of each query row (positions index [r, n], valid [r, n]) in the
        attention mass the monitor observes."""

    def stale_inputs(self, layer: int, cache: KVCache, group: RowGroup) -> torch.Tensor | None:
        """Hidden states [g, m, d] the layer projects together with the query rows, or None."""

    def before_writes(self, layer: int, cache: KVCache, group: RowGroup, q_stale: torch.Tensor):
        """Called before this layer's K/V writes with the stale rows' queries q_stale [g, Hq, m, D]
        (RoPE not applied); returns what `attend` needs of them."""

    def attend(self, layer: int, q, keys, values, group: RowGroup, before):
        """q [g, Hq, n, D] against keys, values [g, Hkv, T, D] -> (attention output, as
        ops.partial_attention's; the rows [g] bool that drifted at this layer, or None), without
        stopping the host."""

    def observe_full(self, layer: int, q: torch.Tensor, k: torch.Tensor, group: RowGroup) -> None:
        """q [f, Hq, T, D], k [f, Hkv, T, D]: a layer recomputing every position of `group`."""


@dataclass
class ForwardPlan:
    query: torch.Tensor | None  # [R, T] bool; None: every position through every layer
    # layers >= it recompute every position (n_layers: none; a monitor may send a row there earlier)
    first_full_layer: int
    monitor: LayerMonitor | None = None
    # block-causal models: positions >= length are neither computed nor read (nothing before them
    # sees them); None: the whole canvas
    length: int | None = None


@dataclass
class ForwardResult:
    # [r, n, d] last layer's output at the query positions ([r, T, d] without a query)
    hidden: torch.Tensor
    # [r, T]: column of `hidden` holding each query position; None: identity
    columns: torch.Tensor | None
    # [r] per computed row: the first layer that recomputed every position (0: a full forward;
    # n_layers: every layer reused the cache)
    first_full_layer: torch.Tensor
    units: int | torch.Tensor  # token x layer units computed (a 0-dim tensor: no host sync)


@dataclass
class RowGroup:
    """Per-row tensors of a group of computed rows, sliced together as rows change group (what a
    LayerMonitor reads of the rows it watches)."""

    ids: torch.Tensor  # [g] model row ids
    whole: bool  # the group is every model row, in order (the cache is then read through views)
    index: torch.Tensor  # [g, n] query positions
    valid: torch.Tensor  # [g, n]
    key_mask: torch.Tensor | None  # [g, T]
    rope: Rope | None = None  # [g, 1, n, D]: the query positions' tables
    mass_weights: torch.Tensor | None = None  # [g, n]: the monitor's weights of the query rows
    key_end: torch.Tensor | None = None  # [g, n] block-causal models: the keys each query sees

    @property
    def cache_rows(self) -> torch.Tensor | None:
        return None if self.whole else self.ids

    def select(self, keep: torch.Tensor) -> RowGroup:
        rope = None if self.rope is None else Rope(self.rope.cos[keep], self.rope.sin[keep])
        return RowGroup(
            self.ids[keep],
            False,
            self.index[keep],
            self.valid[keep],
            _take(self.key_mask, keep),
            rope,
            _take(self.mass_weights, keep),
            _take(self.key_end, keep),
        )


class Engine:
    """Holds one generation's RoPE tables, key mask and (when a policy keeps one) KV cache.
    `block`: the attention block of a block-causal model (its queries see only the keys of their
    block and the blocks before it), None for bidirectional attention."""

    def __init__(
        self,
        model: DiffusionLM,
        canvas_mask: torch.Tensor | None,
        rows: int,
        length: int,
        *,
        cache: bool,
        inputs: bool,
        block: int | None = None,
    ):
        self.model = model
        # once per generation
        positions = model.positions(canvas_mask, length).to(model.device)
        self.rope = model.rotary(positions)
        self.key_mask = None if canvas_mask is None else canvas_mask.bool()
        # [R, T]: the canvas index that ends each position's block (the keys it may see)
        self.key_end = None if block is None else block_key_end(positions, block).expand(rows, -1)
        self.all_rows = torch.arange(rows, device=model.device)
        spec = model.spec
        self.cache = (
            KVCache(
                n_layers=spec.n_layers,
                rows=rows,
                length=length,
                n_kv_heads=spec.n_kv_heads,
                head_dim=spec.head_dim,
                d_model=spec.d_model,
                dtype=model.dtype,
                device=model.device,
                inputs=inputs,
                fill=float("nan") if block is None else 0.0,
            )
            if cache
            else None
        )

    def forward(
        self, ids: torch.Tensor, rows: torch.Tensor | None, plan: ForwardPlan
    ) -> ForwardResult:
        """ids [R, T] the model rows' canvas; rows [r] the ones computed (None: all). Each row
        recomputes every position from its own layer: where the plan says, or where its attention
        drifted (see the module notes)."""
        n_layers, device = self.model.n_layers, ids.device
        ids = ids if rows is None else ids[rows]
        r, length = ids.shape
        row_ids = self.all_rows if rows is None else rows
        if plan.query is None:
            ids = ids[:, : plan.length]
            key_mask = _take(self.key_mask, rows)
            every = RowGroup(
                row_ids,
                rows is None,
                None,
                None,
                None if key_mask is None else key_mask[:, : plan.length],
            )
            rope = Rope(*(table[:, :, : plan.length] for table in self._rope(row_ids)))
            key_end = self._key_end(row_ids, plan.length)
            hidden = self.model.embed(ids)
            for i in range(n_layers):
                hidden = self._full_layer(i, hidden, every, rope, key_end)
            return ForwardResult(
                hidden,
                None,
                torch.zeros(r, dtype=torch.long, device=device),
                r * ids.shape[1] * n_layers,
            )
        monitor = plan.monitor
        query = _take(plan.query, rows)
        index, valid = (
            query_positions(query) if monitor is None else monitor.query_positions(query, rows)
        )
        weights = None if monitor is None else monitor.mass_weights(row_ids, index, valid)
        queried = RowGroup(
            row_ids,
            rows is None,
            index,
            valid,
            _take(self.key_mask, rows),
            gather_rope(self._rope(row_ids), index),
            weights,
            None if self.key_end is None else self.key_end[row_ids].gather(1, index),
        )
        # pass 1: the query rows through every layer before plan.first_full_layer; the monitor's
        # drift decisions stay on the device
        reused = min(plan.first_full_layer, n_layers)
        inputs = [self.model.embed(ids.gather(1, index))]  # the query rows' input of each layer
        drift_layer = torch.full((r,), n_layers, dtype=torch.long, device=device)
        for i in range(reused):
            h, drifted = self._partial_layer(i, queried, inputs[-1], monitor, plan.length)
            if drifted is not None:  # the first layer that drifted, per row
                drift_layer = torch.where(drifted & (drift_layer == n_layers), i, drift_layer)
            inputs.append(h)
        # pass 2: each row recomputes every position from its first drifting layer (under
        # leave_after, the next one) or from plan.first_full_layer
        leave_after = int(monitor is not None and monitor.leave_after)
        first_full = (drift_layer + leave_after).clamp(max=reused)
        out = self._recompute_from(first_full, queried, inputs, ids, monitor)
        columns = torch.full((r, length), -1, dtype=torch.long, device=device)
        columns.scatter_(1, index, torch.arange(index.shape[1], device=device).expand_as(index))
        # a 0-dim tensor: the sampler sums it over the steps and reads it once, at the end
        units = valid.sum() * reused + (length * (n_layers - first_full)).sum()
        return ForwardResult(out, columns, first_full, units)

    def _recompute_from(self, first_full, queried: RowGroup, inputs, ids, monitor):
        """Rows recompute every position from their layer first_full [r] (n_layers: not at all),
        starting from the cached input of that layer with their query rows' input `inputs[layer]`
        [r, n, d] substituted -> the last layer's output at the query positions [r, n, d]. Which
        rows start where is read from the device once (a monitor's drift decisions: the step's one
        host sync for them); without a monitor every row starts at the plan's layer."""
        n_layers, r = self.model.n_layers, first_full.shape[0]
        if monitor is not None:
            starts = sorted(first_full.tolist())
            order = first_full.argsort(stable=True)  # rows by the layer they start at
        else:
            starts, order = [len(inputs) - 1] * r, self.all_rows[:r]
        out, index = inputs[-1], queried.index
        hidden, joined = None, 0
        for i in range(starts[0], n_layers):
            count = bisect.bisect_right(starts, i) - joined  # rows starting at layer i
            if count:
                joining = order[joined : joined + count]
                fresh = (
                    self.model.embed(ids[joining])
                    if i == 0
                    else self.cache.inputs[i][queried.ids[joining]]
                )
                where = index[joining, :, None].expand(-1, -1, fresh.shape[-1])
                fresh.scatter_(1, where, inputs[i][joining])
                hidden = fresh if hidden is None else torch.cat([hidden, fresh])
                joined += count
                group = queried.select(order[:joined])
                # every row, in batch order: the cache is read and written through views
                group.whole = queried.whole and joined == r and starts[0] == starts[-1]
                rope, key_end = self._rope(group.ids), self._key_end(group.ids, None)
            hidden = self._full_layer(i, hidden, group, rope, key_end, monitor)
        if not joined:
            return out
        recomputed = order[:joined]
        gathered = hidden.gather(1, index[recomputed, :, None].expand(-1, -1, hidden.shape[-1]))
        return out.index_copy(0, recomputed, gathered)

    def _partial_layer(self, i, group: RowGroup, h, monitor: LayerMonitor | None, length):
        """Layer i for the query rows h [g, n, d] -> (output [g, n, d], the rows whose attention
        drifted at this layer [g] bool, or None without a drift test). `length`: the keys read
        (block-causal models: none past the current block; None: all)."""
        layer, cache = self.model.layer(i), self.cache
        n = h.shape[1]
        # [g, m, d] or None
        stale = None if monitor is None else monitor.stale_inputs(i, cache, group)
        # projected in one call with the query rows; RoPE is applied by rope_write
        q, k, v = layer.qkv(h if stale is None else torch.cat([h, stale], 1), None)
        before = None
        if stale is not None:
            before = monitor.before_writes(i, cache, group, q[:, :, n:])
            q, k, v = q[:, :, :n], k[:, :, :n], v[:, :, :n]
        inputs = None if cache.inputs is None else cache.inputs[i]
        q = ops.rope_write(
            q,
            k,
            v,
            group.rope,
            cache.keys[i],
            cache.values[i],
            group.ids,
            group.index,
            inputs=inputs,
            hidden=None if inputs is None else h,
        )
        keys, values = cache.read(i, group.cache_rows)
        key_mask = group.key_mask
        if length is not None:
            keys, values = keys[:, :, :length], values[:, :, :length]
            key_mask = None if key_mask is None else key_mask[:, :length]
        if monitor is None:
            attn = ops.partial_attention(q, keys, values, key_mask, key_end=group.key_end)[0]
            return layer.finish(h, attn), None
        attn, leaving = monitor.attend(i, q, keys, values, group, before)
        return layer.finish(h, attn), leaving

    def _full_layer(self, i, hidden, group: RowGroup, rope: Rope, key_end, monitor=None):
        """Layer i over every position of the group's rows, writing the cache where one is kept;
        key_end [g, n] or None (see attend)."""
        cache, layer = self.cache, self.model.layer(i)
        if cache is not None and cache.inputs is not None:
            cache.write_inputs(i, group.cache_rows, hidden)
        q, k, v = layer.qkv(hidden, rope)
        if cache is not None:
            cache.write_all(i, group.cache_rows, k, v)
        if monitor is not None:
            monitor.observe_full(i, q, k, group)
        return layer.finish(hidden, attend(q, k, v, group.key_mask, key_end))

    def _key_end(self, rows: torch.Tensor, length: int | None) -> torch.Tensor | None:
        """[g, length] the block ends of the rows' first `length` positions (None: all); None for
        bidirectional attention."""
        return None if self.key_end is None else self.key_end[rows, :length]

    def _rope(self, rows: torch.Tensor) -> Rope:
        if self.rope.cos.shape[0] == 1:
            return self.rope
        return Rope(self.rope.cos[rows], self.rope.sin[rows])


# -- index helpers ---------------------------------------------------------------------------------
def mask_index(mask: torch.Tensor, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[r, T] bool -> (positions [r, n] ascending, valid [r, n]), n the largest count of a row (read
    from the device unless given); the entries past a row's count are unspecified (callers replace
    them)."""
    counts = mask.sum(1)
    n = int(counts.max()) if n is None else n
    order = mask.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :n]
    return order, torch.arange(n, device=mask.device) < counts[:, None]


def query_positions(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[r, T] bool -> (positions [r, n] ascending, valid [r, n]). Padding entries repeat the row's
    first query position, so computing them rewrites that row with the same values."""
    index, valid = mask_index(query)
    return torch.where(valid, index, index[:, :1]), valid


def gather_rope(rope: Rope, index: torch.Tensor) -> Rope:
    """Tables [1 or r, 1, T, D] -> [r, 1, n, D] at positions index [r, n]."""
    where = index[:, None, :, None].expand(-1, 1, -1, rope.cos.shape[-1])
    return Rope(*(table.expand(index.shape[0], -1, -1, -1).gather(2, where) for table in rope))


def _take(tensor: torch.Tensor | None, rows: torch.Tensor | None):
    return tensor if tensor is None or rows is None else tensor[rows]
