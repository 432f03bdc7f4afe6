"""What happens to a row after it commits a stop token (EOS, or the chat template's end-of-turn)."""

from __future__ import annotations

import torch

from ..models.base import ModelSpec


class StopPolicy:
    def after_step(self, generated: torch.Tensor, spec: ModelSpec) -> None:
        """generated [B, N], the canvas after the prompt, may be edited in place after each step."""

    def __repr__(self):
        return f"{type(self).__name__}()"


class FullLength(StopPolicy):
    """Decode every position of the canvas, stop tokens or not: the official samplers' behaviour."""


class StopAtEOS(StopPolicy):
    """A row stops at its first committed stop token: every position after it becomes EOS at once, so it
    is never decoded and never left as MASK. The row finishes when nothing before that token is masked."""

    def after_step(self, generated, spec):
        stop = is_stop(generated, spec)
        after_first_stop = stop.cumsum(1) - stop.long() > 0
        generated.masked_fill_(after_first_stop, spec.eos_id)


def count_generated(generated: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[B] tokens per row up to and including the first stop token (all N when there is none)."""
    stop = is_stop(generated, spec)
    first = stop.int().argmax(1)
    return torch.where(stop.any(1), first + 1, generated.shape[1])


def is_stop(tokens: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    stop = tokens == spec.stop_ids[0]
    for token in spec.stop_ids[1:]:
        stop |= tokens == token
    return stop
