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
                             attention before and after this step's writes and may move full_from down
                             to that layer; sees the query rows' attention probabilities at every layer.

The math is the model's own (embed / layer(i).qkv / attend / layer(i).finish), so a full forward here
is the plain forward, and a plan that recomputes everything reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .cache import KVCache
from .models.base import DiffusionLM, Rope, attend


class Monitor(Protocol):
    def drifted(self, layer: int, before: torch.Tensor, now: torch.Tensor, valid: torch.Tensor,
                rows: torch.Tensor | None) -> bool:
        """before/now [r, Hq, m, T]: the tracked rows' attention probabilities; valid [r, m]."""

    def observe(self, layer: int, probs: torch.Tensor, rows: torch.Tensor | None, index: torch.Tensor,
                valid: torch.Tensor) -> None:
        """probs [r, Hq, n, T] of the query rows at positions index [r, n] (valid [r, n])."""


@dataclass
class ForwardPlan:
    query: torch.Tensor | None  # [R, T] bool; None: every position through every layer
    full_from: int  # layers >= full_from recompute every position (n_layers: none)
    tracked: torch.Tensor | None = None  # [R, T] bool, inside query: rows whose attention drift is tested
    monitor: Monitor | None = None


@dataclass
class ForwardResult:
    hidden: torch.Tensor  # [r, n, d] last layer's output at the query positions ([r, T, d] without a query)
    columns: torch.Tensor | None  # [r, T]: column of `hidden` holding each query position; None: identity
    full_from: int  # the first layer that recomputed every position (n_layers: none did)
    units: int  # token x layer units computed


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
        """ids [R, T] the model rows' canvas; rows [r] the ones computed (None: all)."""
        n_layers = self.model.n_layers
        ids = ids if rows is None else ids[rows]
        key_mask, rope = _take(self.key_mask, rows), self._rope(rows)
        r, length = ids.shape
        if plan.query is None:
            hidden = self._full_layers(0, self.model.embed(ids), rows, key_mask, rope)
            return ForwardResult(hidden, None, 0, r * length * n_layers)
        index, valid, n_tracked = query_index(_take(plan.query, rows), _take(plan.tracked, rows))
        rope_q, row_ids = gather_rope(rope, index), self.all_rows if rows is None else rows
        h, full_from, partial = self.model.embed(ids.gather(1, index)), plan.full_from, plan.full_from
        for i in range(plan.full_from):
            h, drifted = self._partial_layer(i, h, rows, row_ids, index, valid, n_tracked, key_mask, rope_q,
                                             plan.monitor)
            if drifted:  # layer i's query rows were computed, then the whole layer is recomputed
                full_from, partial = i, i + 1
                break
        if full_from < n_layers:
            if full_from == 0:
                hidden = self.model.embed(ids)
            else:
                hidden = _take(self.cache.inputs[full_from], rows)
                hidden.scatter_(1, index[..., None].expand_as(h), h)
            hidden = self._full_layers(full_from, hidden, rows, key_mask, rope, plan.monitor, index, valid)
            h = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        columns = torch.full((r, length), -1, dtype=torch.long, device=ids.device)
        columns.scatter_(1, index, torch.arange(index.shape[1], device=ids.device).expand_as(index))
        units = int(valid.sum()) * partial + r * length * (n_layers - full_from)
        return ForwardResult(h, columns, full_from, units)

    def _partial_layer(self, i, h, rows, row_ids, index, valid, n_tracked, key_mask, rope_q, monitor):
        """Layer i for the query rows only -> (output [r, n, d], whether the monitor saw drift)."""
        layer, cache, n = self.model.layer(i), self.cache, h.shape[1]
        testing = monitor is not None and n_tracked > 0
        if testing:
            # the tracked rows as the cache stood before this step: their cached layer input, projected
            # in the same call as the fresh rows, against keys not yet overwritten (no second copy of the
            # cache is kept)
            stale = cache.inputs[i][row_ids[:, None], index[:, :n_tracked]]
            q, k, v = layer.qkv(torch.cat([h, stale], 1), _with_tracked_again(rope_q, n_tracked))
            q, q_before, k, v = q[:, :, :n], q[:, :, n:], k[:, :, :n], v[:, :, :n]
            before = attention_probs(q_before, cache.read(i, rows)[0], key_mask)
        else:
            q, k, v = layer.qkv(h, rope_q)
        if cache.inputs is not None:
            cache.write_input_rows(i, row_ids, index, h)
        cache.write_rows(i, row_ids, index, k, v)
        keys, values = cache.read(i, rows)
        if monitor is None:
            return layer.finish(h, attend(q, keys, values, key_mask)), False
        probs = attention_probs(q, keys, key_mask)
        if testing and monitor.drifted(i, before, probs[:, :, :n_tracked], valid[:, :n_tracked], rows):
            return h, True
        monitor.observe(i, probs, rows, index, valid)
        return layer.finish(h, apply_probs(probs, values)), False

    def _full_layers(self, start, hidden, rows, key_mask, rope, monitor=None, index=None, valid=None):
        """Layers start.. over every position of `rows`, writing the cache where one is kept."""
        cache = self.cache
        for i in range(start, self.model.n_layers):
            layer = self.model.layer(i)
            if cache is not None and cache.inputs is not None:
                cache.write_inputs(i, rows, hidden)
            q, k, v = layer.qkv(hidden, rope)
            if cache is not None:
                cache.write_all(i, rows, k, v)
            if monitor is not None:
                q_rows = q.gather(2, index[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
                monitor.observe(i, attention_probs(q_rows, k, key_mask), rows, index, valid)
            hidden = layer.finish(hidden, attend(q, k, v, key_mask))
        return hidden

    def _rope(self, rows) -> Rope:
        if rows is None or self.rope.cos.shape[0] == 1:
            return self.rope
        return Rope(self.rope.cos[rows], self.rope.sin[rows])


# -- attention with its probabilities (the torch twin of the partial-recompute kernel) -----------------
def attention_probs(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) in fp32: q [r, Hq, n, D], k [r, Hkv, T, D] -> [r, Hq, n, T]. Query head h
    reads key head h // (Hq / Hkv)."""
    r, n_heads, n, head_dim = q.shape
    n_kv = k.shape[1]
    grouped = q.reshape(r, n_kv, (n_heads // n_kv) * n, head_dim).float()
    scores = (grouped @ k.float().transpose(-1, -2)).view(r, n_heads, n, -1) * head_dim**-0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def apply_probs(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs [r, Hq, n, T] @ v [r, Hkv, T, D] -> [r, Hq, n, D] in v's dtype, accumulated in fp32."""
    r, n_heads, n, length = probs.shape
    n_kv = v.shape[1]
    out = probs.reshape(r, n_kv, (n_heads // n_kv) * n, length) @ v.float()
    return out.view(r, n_heads, n, -1).to(v.dtype)


# -- index helpers ---------------------------------------------------------------------------------
def mask_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[r, T] bool -> (positions [r, n] ascending, valid [r, n]), n the largest count of a row; the
    entries past a row's count are unspecified (callers replace them)."""
    counts = mask.sum(1)
    n = int(counts.max()) if mask.numel() else 0
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


def _with_tracked_again(rope: Rope, n_tracked: int) -> Rope:
    """Tables of the query rows followed by those of the (leading) tracked rows once more."""
    return Rope(*(torch.cat([table, table[:, :, :n_tracked]], 2) for table in rope))


def _take(tensor: torch.Tensor | None, rows: torch.Tensor | None):
    return tensor if tensor is None or rows is None else tensor[rows]
