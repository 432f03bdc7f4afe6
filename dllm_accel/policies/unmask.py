"""Unmask policies: which masked positions a decoding step commits, and to which tokens.

A policy validates its arguments when built and is a pure function of what the Sampler hands it:

    steps = policy.steps_per_block(n_blocks)    # once per generation; None: until the block is done
    plan = policy.begin_block(n_masked, steps, size)  # once per block; n_masked [B]: masks in
                                                      # the block of `size` positions
    quota = policy.quota(ctx)                   # before the forward: tokens per row [B], or None
                                                    # when the scores decide; rows at 0 are not
                                                    computed
    commit, tokens = policy.select(ctx, logits, quota)   # logits [M, V]: one row per candidate

The candidates (`ctx.candidates` [B, L]) are the masked positions the step may commit; `logits`
holds their rows in row-major order, the model's logit shift already applied by the Sampler.

Numerics — the dtype each score is computed in, and why:
- LowConfidence and DreamAlgorithm take probabilities from a softmax in the logits' own dtype, as
  the official LLaDA and Dream samplers do, so their ranking (on a bf16 model, its ties too) is
  theirs.
- Threshold and Factor compare a probability with a fixed bar. bf16 rounding (steps of 2^-8 near 1)
  would move the bar, so they compute in fp32, on the candidate rows only. Fast-dLLM uses float64;
  fp32's relative error (~1e-7) matters only for a confidence within 1e-7 of the bar.
- EntropyThreshold computes entropy in fp32 (log-sum-exp form).
- Sampling at temperature > 0 is Gumbel-max with float64 noise, LLaDA's choice (low-precision Gumbel
  noise hurts generation quality, arXiv:2409.02908), on the candidate rows only, never the canvas.
Policies without a fixed number of steps (Threshold, Factor, EntropyThreshold) never predict the
mask token: a committed MASK makes no progress, and their loop would not end. The official samplers
do not exclude it, so LowConfidence and DreamAlgorithm do not either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import ops
from ..checks import check_bool, check_choice, check_int, check_number, is_number, require
from ..models.base import ModelSpec
from ..seeding import multinomial, uniform, uniform_canvas


@dataclass
class StepContext:
    candidates: torch.Tensor  # [B, L] bool: masked positions this step may commit
    step: int  # index of the step inside its block
    plan: object  # what begin_block returned for this block
    spec: ModelSpec
    # one torch.Generator for the batch, or a tuple of one per row (see dllm_accel.seeding)
    generator: torch.Generator | tuple[torch.Generator, ...] | None = None


class UnmaskPolicy:
    cfg_scale: float = 0.0  # > 0: the Sampler adds an unconditional pass (prompt masked) and mixes
    temperature: float = (
        0.0  # the sampling temperature (an ARGuide's speculative acceptance reads it)
    )

    def steps_per_block(self, n_blocks: int) -> int | None:
        return None

    def begin_block(self, n_masked: torch.Tensor, steps: int | None, size: int):
        return None

    def quota(self, ctx: StepContext) -> torch.Tensor | None:
        return None

    def select(self, ctx: StepContext, logits: torch.Tensor, quota: torch.Tensor | None):
        raise NotImplementedError


# -- validation ------------------------------------------------------------------------------------
def _check_steps(steps) -> None:
    check_int(steps, "steps", 1)


def _check_temperature(temperature) -> None:
    check_number(temperature, "temperature", 0)


def _split_steps(steps: int, n_blocks: int) -> int:
    if steps % n_blocks:
        raise ValueError(
            f"steps ({steps}) must be divisible by the number of blocks ({n_blocks} = generation "
            "length / "
            "block_length)"
        )
    return steps // n_blocks


# -- shared pieces ---------------------------------------------------------------------------------
def dense(values: torch.Tensor, candidates: torch.Tensor, fill: float = -math.inf) -> torch.Tensor:
    """Per-candidate values [M] laid out on the canvas [B, L], `fill` elsewhere."""
    out = torch.full(candidates.shape, fill, dtype=values.dtype, device=values.device)
    return out.masked_scatter_(candidates, values)


def top_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the `counts[b]` highest finite scores of each row (-inf marks
    non-candidates)."""
    k = int(counts.max())
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k == 0:
        return chosen
    top = scores.topk(k, dim=1)
    keep = (torch.arange(k, device=scores.device) < counts[:, None]) & (top.values > -math.inf)
    return chosen.scatter_(1, top.indices, keep)


def gumbel_argmax(
    logits: torch.Tensor, temperature: float, generator=None, counts=None
) -> torch.Tensor:
    """argmax at temperature 0; else a sample of softmax(logits / temperature), Gumbel-max in
    float64. With generators per row, counts [B]: how many consecutive rows of logits are each
    row's."""
    if temperature == 0:
        return logits.argmax(-1)
    return _gumbel_scores(logits, temperature, generator, counts).argmax(-1)


def _gumbel_scores(logits, temperature, generator, counts):
    # argmax(l - T log(-log u)) == argmax(exp(l) / (-log u)^T): LLaDA's formula, in log space
    u = uniform(logits.shape, logits.device, generator, counts, torch.float64)
    return logits.double() - temperature * torch.log(-torch.log(u))


def _random_scores(candidates: torch.Tensor, generator) -> torch.Tensor:
    return uniform_canvas(candidates, generator).masked_fill_(~candidates, -math.inf)


def _tokens_without_mask(logits, temperature, mask_id, generator, counts) -> torch.Tensor:
    """The chosen tokens with the mask token excluded (see the module notes)."""
    if temperature > 0:
        scores = _gumbel_scores(logits, temperature, generator, counts)
        scores[:, mask_id] = -math.inf
        return scores.argmax(-1)
    best_two = logits.topk(2, dim=-1).indices
    return torch.where(best_two[:, 0] == mask_id, best_two[:, 1], best_two[:, 0])


def _tokens_and_confidence(logits, temperature, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen tokens (never the mask) and their fp32 probability over the full vocabulary: one
    pass of ops.score_tokens at temperature 0; a sample and its probability otherwise."""
    if temperature == 0:
        tokens, probability, _, _ = ops.score_tokens(logits, exclude=ctx.spec.mask_id)
        return tokens, probability
    tokens = _tokens_without_mask(
        logits, temperature, ctx.spec.mask_id, ctx.generator, ctx.candidates.sum(1)
    )
    return tokens, _probability_fp32(logits, tokens)


def _probability_fp32(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] in fp32 over the full vocabulary."""
    logits32 = logits.float()
    return (logits32.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits32, -1)).exp()


def _above_bar(scores: torch.Tensor, bar: float, candidates: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: every candidate scoring >= bar, and always each row's best one."""
    chosen = scores >= bar
    best = scores.argmax(1, keepdim=True)
    chosen.scatter_(1, best, True)
    return chosen & candidates


# -- LLaDA -----------------------------------------------------------------------------------------
REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class LowConfidence(UnmaskPolicy):
    """LLaDA's official sampler: per block a fixed number of steps, each committing the scheduled
    number of tokens (masks ÷ steps, the remainder to the first steps) with the highest confidence
    (`low_confidence`: probability of the chosen token; `random`: uniform scores).

    `cfg_scale` > 0 adds classifier-free guidance: logits = u + (cfg_scale + 1)(c - u), u from a
    pass with the prompt masked. `logits_eos_inf` forbids EOS. `confidence_eos_eot_inf` drops EOS
    and end-of-turn from the softmax that scores the chosen token, so a chosen EOS/EOT scores 0 (the
    official sampler's effect at temperature 0; at temperature > 0 its code drops end-of-turn
    only)."""

    steps: int
    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    logits_eos_inf: bool = field(default=False, kw_only=True)
    confidence_eos_eot_inf: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        _check_steps(self.steps)
        check_choice(self.remasking, "remasking", REMASKING)
        _check_temperature(self.temperature)
        check_number(self.cfg_scale, "cfg_scale", 0)
        check_bool(self.logits_eos_inf, "logits_eos_inf")
        check_bool(self.confidence_eos_eot_inf, "confidence_eos_eot_inf")

    def steps_per_block(self, n_blocks):
        return _split_steps(self.steps, n_blocks)

    def begin_block(self, n_masked, steps, size):
        base, remainder = n_masked // steps, n_masked % steps
        # [B, steps]
        return base[:, None] + (torch.arange(steps, device=n_masked.device) < remainder[:, None])

    def quota(self, ctx):
        return ctx.plan[:, ctx.step]

    def select(self, ctx, logits, quota):
        spec = ctx.spec
        if self.logits_eos_inf:
            logits = logits.clone()
            logits[:, spec.eos_id] = -math.inf
        tokens = gumbel_argmax(logits, self.temperature, ctx.generator, ctx.candidates.sum(1))
        if self.remasking == "random":
            scores = _random_scores(ctx.candidates, ctx.generator)
        else:
            if self.confidence_eos_eot_inf:
                logits = logits.clone()
                logits[:, list(spec.stop_ids)] = -math.inf
            confidence = torch.softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
            scores = dense(confidence, ctx.candidates)
        return top_per_row(scores, quota)[ctx.candidates], tokens


# -- LLaDA2 ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduledThreshold(UnmaskPolicy):
    """LLaDA2's official rule (`generate` of LLaDA2.0/2.1): `steps` per block, each with a quota
    from the block's size (size ÷ steps, the remainder to the first steps, however many masks the
    block holds); a step commits every mask whose chosen token has probability > `threshold` when
    they are at least the quota, else the quota's most confident masks. Tokens: argmax at
    temperature 0, else a sample of softmax(logits / temperature) after `top_k` / `top_p`;
    probabilities in fp32 (the official code takes the logits in fp32)."""

    steps: int = 32
    threshold: float = 0.95
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self):
        _check_steps(self.steps)
        check_number(self.threshold, "threshold", 0, 1)
        _check_temperature(self.temperature)
        check_number(self.top_p, "top_p", 0, 1, open_low=True, optional=True)
        check_int(self.top_k, "top_k", 1, optional=True)

    def steps_per_block(self, n_blocks):
        return self.steps

    def begin_block(self, n_masked, steps, size):
        if steps > size:
            raise ValueError(
                f"steps ({steps}) must not exceed the block length ({size}): steps past it would "
                "have no quota"
            )
        base, remainder = divmod(size, steps)
        return base + (torch.arange(steps, device=n_masked.device) < remainder)  # [steps]

    def quota(self, ctx):
        return ctx.plan[ctx.step].expand(ctx.candidates.shape[0])

    def select(self, ctx, logits, quota):
        logits = logits.float()
        if self.temperature > 0:
            logits = logits / self.temperature
            if self.top_k is not None:
                logits = _top_k_filter(logits, self.top_k)
            if self.top_p is not None and self.top_p < 1:
                logits = _top_p_filter(logits, self.top_p)
        probs = torch.softmax(logits, -1)
        if self.temperature > 0:
            tokens = multinomial(probs, ctx.candidates.sum(1), ctx.generator)
        else:
            tokens = probs.argmax(-1)
        scores = dense(probs.gather(1, tokens[:, None]).squeeze(1), ctx.candidates)
        above = (scores > self.threshold) & ctx.candidates
        enough = above.sum(1) >= quota
        chosen = torch.where(enough[:, None], above, top_per_row(scores, quota))
        return chosen[ctx.candidates], tokens


# -- Fast-dLLM and dParallel -----------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold(UnmaskPolicy):
    """Fast-dLLM's parallel decoding: commit every candidate whose chosen token has probability >=
    tau, and always each row's most confident one."""

    tau: float
    temperature: float = 0.0

    def __post_init__(self):
        check_number(self.tau, "tau (the confidence threshold)", 0, 1, open_low=True)
        _check_temperature(self.temperature)

    def select(self, ctx, logits, quota):
        tokens, confidence = _tokens_and_confidence(logits, self.temperature, ctx)
        scores = dense(confidence, ctx.candidates)
        return _above_bar(scores, self.tau, ctx.candidates)[ctx.candidates], tokens


@dataclass(frozen=True)
class Factor(UnmaskPolicy):
    """Fast-dLLM's factor rule: with the candidates' confidences sorted, c_1 >= c_2 >= ..., commit
    the longest prefix with c_n >= 1 - f / (n + 1) (the first always). As in Fast-dLLM's released
    code, when only the last candidate fails its bar, it is committed with the others."""

    f: float
    temperature: float = 0.0

    def __post_init__(self):
        check_number(self.f, "f (the factor)", 0, open_low=True)
        _check_temperature(self.temperature)

    def select(self, ctx, logits, quota):
        tokens, confidence = _tokens_and_confidence(logits, self.temperature, ctx)
        scores = dense(confidence, ctx.candidates)
        ordered = scores.sort(dim=1, descending=True).values
        n = torch.arange(1, scores.shape[1] + 1, device=scores.device)
        bars = 1 - self.f / (n + 1)
        bars[0] = -math.inf
        leading = (ordered >= bars).long().cumprod(1).sum(1)
        n_candidates = ctx.candidates.sum(1)
        counts = torch.where(leading >= n_candidates - 1, n_candidates, leading)
        return top_per_row(scores, counts)[ctx.candidates], tokens


@dataclass(frozen=True)
class EntropyThreshold(UnmaskPolicy):
    """dParallel's rule: commit each row's lowest-entropy candidate and every candidate whose
    predictive entropy (nats) is <= h."""

    h: float
    temperature: float = 0.0

    def __post_init__(self):
        check_number(self.h, "h (the entropy threshold, nats)", 0)
        _check_temperature(self.temperature)

    def select(self, ctx, logits, quota):
        tokens, _, _, entropy = ops.score_tokens(logits, exclude=ctx.spec.mask_id)
        if self.temperature > 0:
            tokens = _tokens_without_mask(
                logits, self.temperature, ctx.spec.mask_id, ctx.generator, ctx.candidates.sum(1)
            )
        scores = dense(-entropy, ctx.candidates)
        return _above_bar(scores, -self.h, ctx.candidates)[ctx.candidates], tokens


# -- Dream -----------------------------------------------------------------------------------------
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
# alg_temp divides float32 scores of magnitude at most 64 (probabilities and margins <= 1; entropies
# <= ln(vocabulary size) < 64): from this alg_temp on, every quotient stays finite
MIN_ALG_TEMP = 64 / torch.finfo(torch.float32).max


@dataclass(frozen=True)
class DreamAlgorithm(UnmaskPolicy):
    """Dream's official sampler. Time grid t = linspace(1, eps, steps + 1); at step i (t, s = t_i,
    t_i+1) `origin` commits each mask with probability 1 - s/t; the others commit int(m · (1 - s/t))
    tokens per row, m the row's masks (Dream's batch mean: in its sampler every row has as many; at
    the last step all of a row's masks), ranked by `maskgit_plus` (top probability), `topk_margin`
    (top-1 minus top-2 probability) or `entropy` (negative entropy), and with `alg_temp` > 0 sampled
    in proportion to softmax(score / alg_temp) instead. Tokens: argmax at temperature 0, else a
    sample after `top_p` / `top_k` filtering. Without blocks `steps` covers the whole generation;
    with blocks each block gets steps / n_blocks and its own time grid."""

    alg: str = "origin"
    steps: int = 512
    eps: float = 1e-3
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None

    def __post_init__(self):
        check_choice(self.alg, "alg", DREAM_ALGS)
        _check_steps(self.steps)
        check_number(self.eps, "eps", 0, 1, open_low=True, open_high=True)
        usable = is_number(self.alg_temp) and (self.alg_temp == 0 or self.alg_temp >= MIN_ALG_TEMP)
        require(
            self.alg_temp is None or usable,
            "alg_temp",
            f"None, 0 or a number >= {MIN_ALG_TEMP:.3g} (a smaller one overflows the float32 "
            "scores it divides, "
            "and every score becomes -inf or NaN)",
            self.alg_temp,
        )
        _check_temperature(self.temperature)
        check_number(self.top_p, "top_p", 0, 1, open_low=True, optional=True)
        check_int(self.top_k, "top_k", 1, optional=True)

    def steps_per_block(self, n_blocks):
        return _split_steps(self.steps, n_blocks)

    def begin_block(self, n_masked, steps, size):
        return torch.linspace(1, self.eps, steps + 1, device=n_masked.device)  # float32, as Dream's

    def quota(self, ctx):
        times, i = ctx.plan, ctx.step
        last = i == len(times) - 2
        t, s = times[i], times[i + 1]
        if self.alg == "origin":
            drawn = uniform_canvas(ctx.candidates, ctx.generator) < 1 - s / t
            return ctx.candidates.sum(1) if last else (drawn & ctx.candidates).sum(1)
        # Dream's count is one number for the batch, int(m · (1 - s/t)) from the mean number of
        # masks m in
        # its float32 arithmetic. Its rows always hold equally many masks, so m is each row's own
        # count: a
        # row counts its own masks here, so that rows a guide or EOS set apart decode as they would
        # alone.
        n_masked = ctx.candidates.sum(1)
        if last:  # every row's masks (Dream's int(m) when rows are alike)
            return n_masked
        return (n_masked * (1 - s / t)).long()

    def select(self, ctx, logits, quota):
        probs, tokens = self._sample(logits, ctx.generator, ctx.candidates.sum(1))
        if self.alg == "origin":  # which masks move is independent of the scores
            return top_per_row(_random_scores(ctx.candidates, ctx.generator), quota)[
                ctx.candidates
            ], tokens
        if self.alg == "maskgit_plus":
            confidence = probs.gather(1, tokens[:, None]).squeeze(1)
        elif self.alg == "topk_margin":
            top_two = probs.topk(2, dim=-1).values
            confidence = top_two[:, 0] - top_two[:, 1]
        else:
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        scores = dense(confidence, ctx.candidates)
        if (
            self.alg_temp
        ):  # k positions without replacement ∝ softmax(score / alg_temp): Gumbel top-k
            u = uniform_canvas(ctx.candidates, ctx.generator)
            scores = scores.float() / self.alg_temp - torch.log(-torch.log(u))
        return top_per_row(scores, quota)[ctx.candidates], tokens

    def _sample(self, logits, generator, counts):
        """Dream's token choice: probabilities in the logits' dtype after temperature, top-p,
        top-k."""
        if self.temperature > 0:
            logits = logits / self.temperature
        if self.top_p is not None and self.top_p < 1:
            logits = _top_p_filter(logits, self.top_p)
        if self.top_k is not None:
            logits = _top_k_filter(logits, self.top_k)
        probs = torch.softmax(logits, -1)
        if self.temperature > 0:
            return probs, multinomial(probs.float(), counts, generator)
        return probs, probs.argmax(-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always the
    first)."""
    ordered, order = logits.sort(-1, descending=True)
    cumulative = torch.softmax(ordered, -1).cumsum(-1)
    drop_sorted = cumulative > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
