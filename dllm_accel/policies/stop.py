"""What happens to a row after it commits a stop token (EOS, or the chat template's end-of-turn)."""

from __future__ import annotations

import torch

from ..checks import check_bool, check_choice
from ..models.base import ModelSpec


class StopPolicy:
    def open(self, generated: torch.Tensor, spec: ModelSpec) -> torch.Tensor | None:
        """generated [B, N] -> [B, N] bool: the positions that may still be decoded (None: all)."""
        return None

    def after_step(self, generated: torch.Tensor, spec: ModelSpec) -> torch.Tensor | None:
        """generated [B, N], the canvas after the prompt, may be edited in place after each step;
        returns the positions whose token it changed [B, N] (None: none), which the cache then
        recomputes."""
        return None

    def finished(self, generated, committed, spec: ModelSpec) -> torch.Tensor | None:
        """After each step (committed [B, N]: the positions it committed) and at the end of each
        block (committed None): [B] bool, the rows that stop decoding now (None: none)."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


class FullLength(StopPolicy):
    """Decode every position of the canvas, stop tokens or not: the official samplers' behaviour."""


FILLS = ("eos", "mask")


class StopAtEOS(StopPolicy):
    """A row stops at its first committed stop token (EOS or end-of-turn) and finishes when nothing
    before it is masked.

    fill='eos' (default): every position after it becomes EOS at once, never decoded and never left
    as MASK; the cache recomputes those positions at the row's next forward, so that the K/V the
    other tokens read match the tokens. fill='mask': the released Elastic-Cache loop's behaviour, to
    compare with it: the masks after the first stop token stay MASK and are never decoded (tokens
    committed there earlier stay as they are). Either way `generated_tokens` counts up to the first
    stop token (the released evaluation's tokens/s counts every non-EOS token, leftover MASK
    included)."""

    def __init__(self, fill: str = "eos"):
        self.fill = check_choice(fill, "fill", FILLS)

    def open(self, generated, spec):
        return None if self.fill == "eos" else ~_after_first_stop(generated, spec)

    def after_step(self, generated, spec):
        if self.fill == "mask":
            return None
        rewritten = _after_first_stop(generated, spec) & (generated != spec.eos_id)
        generated.masked_fill_(rewritten, spec.eos_id)
        return rewritten

    def __repr__(self):
        return "StopAtEOS()" if self.fill == "eos" else f"StopAtEOS(fill={self.fill!r})"


class StopAfterBlock(StopPolicy):
    """LLaDA2's official loop: a row stops after the block in which it holds EOS, the rest of that
    block decoded as usual (its tokens after EOS are not part of the answer). eos_early_stop=True
    (the official option) also stops a row as soon as a step commits EOS and nothing before the
    row's first EOS is masked: the same answer, fewer forwards."""

    def __init__(self, eos_early_stop: bool = False):
        self.eos_early_stop = check_bool(eos_early_stop, "eos_early_stop")

    def finished(self, generated, committed, spec):
        eos = generated == spec.eos_id
        if committed is None:
            return eos.any(1)
        if not self.eos_early_stop:
            return None
        first = torch.where(eos.any(1), eos.int().argmax(1), generated.shape[1])
        masked = generated == spec.mask_id
        first_mask = torch.where(masked.any(1), masked.int().argmax(1), generated.shape[1])
        return (eos & committed).any(1) & (first_mask > first)

    def __repr__(self):
        return f"StopAfterBlock(eos_early_stop={self.eos_early_stop})"


def _after_first_stop(generated: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    stop = is_stop(generated, spec)
    return stop.cumsum(1) - stop.long() > 0


def count_generated(generated: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[B] tokens per row up to and including the first stop token (all N when there is none), never
    a MASK: a row that still holds the mask token before its stop (the official samplers commit it
    when the model predicts it) counts only the tokens before it."""
    length = generated.shape[1]
    stop = is_stop(generated, spec)
    counted = torch.where(stop.any(1), stop.int().argmax(1) + 1, length)
    masked = generated == spec.mask_id
    return torch.minimum(counted, torch.where(masked.any(1), masked.int().argmax(1), length))


def is_stop(tokens: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    stop = tokens == spec.stop_ids[0]
    for token in spec.stop_ids[1:]:
        stop |= tokens == token
    return stop
