"""Per-sample random streams.

`Sampler.generate(generator=...)` takes one torch.Generator for the whole batch (the official
samplers' random stream: every draw is one tensor over the batch) or a sequence of generators, one
per row. With one per row, every draw of row b comes from generator b alone, in a shape and an order
fixed by row b alone: a row draws only at the steps it is computed, and only for its own candidates,
in the order of their positions in the generated region (which left padding does not move). A row
then samples what it would sample decoded alone, in any batch, after any resume, in any process.

`sample_generators(seed, ids, device)` builds those generators, each seeded by (seed, sample id)
through a stable hash (the same in every process and every Python session, unlike hash()).

The draw helpers below take either kind of generator: the policies call them instead of torch.rand /
torch.multinomial.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .checks import check_int, is_int, require


def sample_seed(seed: int, sample_id) -> int:
    """A 63-bit seed from (seed, sample id): blake2b of f"{seed}:{sample_id}"."""
    check_int(seed, "seed")
    ok = isinstance(sample_id, str) or is_int(sample_id)
    require(ok, "a sample id", "a string or an integer", sample_id)
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_generators(
    seed: int, ids: Sequence, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One torch.Generator per sample id, on `device`, seeded by (seed, id): pass the list as
    Sampler.generate(..., generator=...) for a batch whose rows are those samples, in that order."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"ids must be a sequence of sample ids (strings or integers), got {ids!r}")
    device = torch.device(device)
    return [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in ids]


def row_generators(generator, batch: int, device: torch.device):
    """Sampler.generate's `generator` checked: None, one torch.Generator, or a tuple of `batch` of
    them."""
    if generator is None:
        return None
    allowed = (
        f"None, one torch.Generator or a sequence of one torch.Generator per row ({batch} rows)"
    )
    if isinstance(generator, torch.Generator):
        generators = [generator]
    elif isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        generators = list(generator)
        if not all(isinstance(g, torch.Generator) for g in generators):
            raise TypeError(
                f"generator must be {allowed}, got items of types "
                f"{sorted({type(g).__name__ for g in generators})}"
            )
        if len(generators) != batch:
            raise ValueError(f"generator must be {allowed}, got {len(generators)}")
    else:
        raise TypeError(f"generator must be {allowed}, got {generator!r}")
    for g in generators:
        if g.device.type != device.type:
            raise ValueError(
                f"generator is on {g.device}, the model on {device}; "
                f"create it with torch.Generator({device.type!r})"
            )
    return generator if isinstance(generator, torch.Generator) else tuple(generators)


def per_row(generator) -> bool:
    return isinstance(generator, tuple)


# -- draws -----------------------------------------------------------------------------------------
def uniform(
    shape: tuple, device, generator, counts: torch.Tensor | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) noise of `shape` [K, ...]: one draw from one generator; with generators per
    row, for each row b in order counts[b] entries [counts[b], ...] from generators[b] (counts [B]
    sum to K: e.g. row b's candidates, row-major like the logits)."""
    if not per_row(generator):
        return torch.rand(shape, dtype=dtype, device=device, generator=generator)
    return _rand_per_row(counts, generator, tuple(shape[1:]), dtype, device)


def uniform_canvas(candidates: torch.Tensor, generator, dtype=torch.float32) -> torch.Tensor:
    """Uniform noise [B, L] to be read at the candidates only: one draw over the whole canvas from
    one generator (the official samplers' draw); per row, only at the row's candidates (0.5
    elsewhere)."""
    if not per_row(generator):
        return torch.rand(
            candidates.shape, dtype=dtype, device=candidates.device, generator=generator
        )
    noise = _rand_per_row(candidates.sum(1), generator, (), dtype, candidates.device)
    return torch.full(candidates.shape, 0.5, dtype=dtype, device=candidates.device).masked_scatter_(
        candidates, noise
    )


def _rand_per_row(
    counts: torch.Tensor, generators: tuple, tail: tuple, dtype, device
) -> torch.Tensor:
    """[counts.sum(), *tail]: counts[b] entries from generators[b], row after row (one host
    sync)."""
    parts = [
        torch.rand((n, *tail), dtype=dtype, device=device, generator=g)
        for n, g in zip(counts.tolist(), generators, strict=True)
        if n
    ]
    return torch.cat(parts) if parts else torch.empty((0, *tail), dtype=dtype, device=device)


def multinomial(probs: torch.Tensor, counts: torch.Tensor, generator) -> torch.Tensor:
    """One sample per row of probs [K, V] -> [K]; with generators per row, counts[b] consecutive
    rows of probs belong to row b and draw from generators[b] (counts [B] sum to K)."""
    if not per_row(generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    parts = [
        torch.multinomial(p, 1, generator=g).squeeze(1)
        for p, g in zip(probs.split(counts.tolist()), generator, strict=True)
        if len(p)
    ]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=probs.device)
