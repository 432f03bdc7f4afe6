"""KV storage for one generation: buffers allocated once, rows written in place. No policy lives
here.

    keys, values [L, R, Hkv, T, D]   every layer's K/V of every canvas position (post-RoPE)
    inputs       [L, R, T, d]        every layer's input hidden state (only when a policy recomputes
                                     from the middle of the stack, as ElasticCache does)

R counts model rows (twice the batch under classifier-free guidance). The buffers start as NaN, so a
row read before it was ever written poisons the output instead of passing silently; fill=0 where
unwritten keys are read under a mask (block-causal models: a row's keys past its own block), since
a masked NaN key still poisons the attention.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        rows: int,
        length: int,
        n_kv_heads: int,
        head_dim: int,
        d_model: int,
        dtype: torch.dtype,
        device: torch.device,
        inputs: bool,
        fill: float = float("nan"),
    ):
        shape = (n_layers, rows, n_kv_heads, length, head_dim)
        self.keys = torch.full(shape, fill, dtype=dtype, device=device)
        self.values = torch.full(shape, fill, dtype=dtype, device=device)
        self.inputs = (
            torch.full((n_layers, rows, length, d_model), float("nan"), dtype=dtype, device=device)
            if inputs
            else None
        )
        # [rows, heads, positions] indexing
        self.heads = torch.arange(n_kv_heads, device=device)[None, :, None]

    def write_all(
        self, layer: int, rows: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Every position of `rows` (None: all rows) at `layer`; k, v [r, Hkv, T, D] (or the first
        positions only, [r, Hkv, n, D])."""
        _write(self.keys[layer][:, :, : k.shape[2]], rows, k)
        _write(self.values[layer][:, :, : v.shape[2]], rows, v)

    def write_inputs(self, layer: int, rows: torch.Tensor | None, hidden: torch.Tensor) -> None:
        """Layer inputs of every position of `rows`; hidden [r, T, d]."""
        _write(self.inputs[layer][:, : hidden.shape[1]], rows, hidden)

    def read(self, layer: int, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [r, Hkv, T, D] of `rows`: views when all rows are read, a gather of those rows
        otherwise."""
        if rows is None:
            return self.keys[layer], self.values[layer]
        return self.keys[layer][rows], self.values[layer][rows]


def _write(buffer: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> None:
    if rows is None:
        buffer.copy_(value)
    else:
        buffer[rows] = value
