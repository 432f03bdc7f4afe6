"""Classifier-free guidance's row doubling, owned here and nowhere else.

Under classifier-free guidance (an unmask policy's cfg_scale > 0) the model computes every batch row
twice: once as it is (conditional) and once with the prompt masked (unconditional). The model batch
then holds R = 2B rows, copy c of batch row b at model row c * B + b:

    model rows [R = copies * B]   rows 0..B-1 conditional, rows B..2B-1 unconditional
    logits = u + (cfg_scale + 1) * (c - u)     c, u: the two copies' logits of one candidate

Without guidance there is one copy and R = B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CFGRows:
    """The model rows of a batch of `batch` rows under classifier-free guidance of `scale` (0:
    none)."""

    batch: int
    scale: float = 0.0

    @property
    def copies(self) -> int:
        """How many times the model computes each batch row: its forward passes per step."""
        return 2 if self.scale > 0 else 1

    @property
    def rows(self) -> int:
        """R, the model batch size."""
        return self.batch * self.copies

    def repeat(self, per_row: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [R, ...]: a batch row's value for each of its copies (always a new
        tensor)."""
        return per_row.repeat(self.copies, *([1] * (per_row.dim() - 1)))

    def model_ids(self, x: torch.Tensor, prompt_length: int, mask_id: int) -> torch.Tensor:
        """The canvas x [B, T] -> the model rows' ids [R, T]: the unconditional copy has its prompt
        masked."""
        if self.copies == 1:
            return x
        unconditional = x.clone()
        unconditional[:, :prompt_length] = mask_id
        return torch.cat([x, unconditional])

    def copy_rows(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Batch row ids [M] -> per copy, the model row ids [M] of those rows (conditional copy
        first)."""
        return [rows + copy * self.batch for copy in range(self.copies)]

    def mix(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Per copy, the logits [M, V] of the same candidates (as copy_rows orders them) -> the
        guided logits [M, V]."""
        if self.copies == 1:
            return logits[0]
        conditional, unconditional = logits
        return unconditional + (self.scale + 1) * (conditional - unconditional)

    def earliest(self, per_model_row: torch.Tensor) -> torch.Tensor:
        """[R] -> [B]: the smallest value over each batch row's copies."""
        return per_model_row.view(self.copies, -1).min(0).values
