"""The one decode loop (ARCHITECTURE.md §2): a canvas of prompt ++ MASK, refined step by step.

x [B, P+N] = prompt ++ MASK * N
for each block (semi-autoregressive; one block spanning N without block_length):
    plan = unmask.begin_block(masks in the block); cache.begin_block(...)
    each step:
        candidates = masked positions before the block's end
        quota      = unmask.quota(...)           rows with nothing to commit are not computed
        candidates = cache.restrict(...)         (ElasticCache: only inside its window)
        forward    = engine.forward(live rows, cache.plan(...)): the rows and layers the refresh
                     policy asks for, against the cached K/V of the others
        logits     = the head on the candidates' rows only, shifted by spec.logit_shift (Dream
                     scores token i from position i - 1)
        commit     = unmask.select(...)          (with guide=ARGuide: plus the drafts an AR model
                                                 accepts) tokens written; then stop.after_step,
                                                 whose rewrites the cache recomputes like commits
-> GenerationOutput
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .checks import check_bool, check_int
from .engine import Engine
from .models.base import DiffusionLM
from .policies.cfg import CFGRows
from .policies.guide import ARGuide
from .policies.refresh import BlockPrefixCache, Canvas, NoCache, RefreshPolicy
from .policies.stop import FullLength, StopPolicy, count_generated
from .policies.unmask import StepContext, UnmaskPolicy
from .seeding import row_generators


@dataclass
class StepRecord:
    block: int
    step: int  # index inside the block
    forwarded: bool  # False when no row had anything to commit: no forward ran
    committed: torch.Tensor  # [B] tokens committed per row
    # [B] per row: the first layer that recomputed every position (0: a full forward; n_layers:
    # every
    # layer reused its cache); -1 for rows not computed; None when no forward ran
    first_full_layer: torch.Tensor | None = None


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, P+N]: the prompt as given (padding included), then the generation
    # [B]: up to and including the first stop token, and before any MASK (see
    generated_tokens: torch.Tensor
    # count_generated); prompt excluded
    nfe: int  # forward passes of the model; a classifier-free-guidance step counts 2
    steps: int  # decoding steps that ran a forward
    # [B]: forward passes that computed each row (rows with nothing to do skip)
    row_forwards: torch.Tensor
    recompute_fraction: float = 1.0  # layer_units / full_units
    layer_units: int = 0  # token x layer units the engine computed
    full_units: int = 0  # those of NoCache over the same forwards (all rows, positions and layers)
    trace: list[StepRecord] | None = None
    ar_forwards: int = 0  # forward passes of the ARGuide's model
    ar_tokens: int = 0  # positions it read, summed over rows

    @property
    def tokens_per_forward(self) -> float:
        return float(self.generated_tokens.sum()) / max(1, int(self.row_forwards.sum()))


class Sampler:
    """Decodes with an unmask policy; `stop` decides what a row does after its first stop token.

    `cache` is a refresh policy (NoCache — the default —, PrefixCache, DualCache, ElasticCache).
    `trace=True` keeps a StepRecord per step on the output. `guide=ARGuide(...)` has an
    autoregressive model verify the drafts, so that a step commits every accepted one."""

    def __init__(
        self,
        model: DiffusionLM,
        *,
        unmask: UnmaskPolicy,
        cache=None,
        guide=None,
        stop=None,
        trace: bool = False,
    ):
        if not isinstance(model, DiffusionLM):
            raise TypeError(
                f"model must be a dllm_accel DiffusionLM (see load_model / from_hf), got "
                f"{type(model).__name__}"
            )
        if not isinstance(unmask, UnmaskPolicy):
            raise TypeError(
                "unmask must be an unmask policy (LowConfidence, Threshold, Factor, "
                "EntropyThreshold, "
                f"DreamAlgorithm), got {unmask!r}"
            )
        block_causal = model.spec.block_size is not None
        if cache is None:
            cache = BlockPrefixCache() if block_causal else NoCache()
        if not isinstance(cache, RefreshPolicy):
            raise TypeError(
                f"cache must be a refresh policy (NoCache, PrefixCache, DualCache, ElasticCache, "
                f"BlockPrefixCache), got {cache!r}"
            )
        _check_attention_structure(cache, block_causal)
        if guide is not None:
            if not isinstance(guide, ARGuide):
                raise TypeError(f"guide must be None or an ARGuide, got {guide!r}")
            guide.check(model.spec, model.device)
        stop = FullLength() if stop is None else stop
        if not isinstance(stop, StopPolicy):
            raise TypeError(f"stop must be FullLength() or StopAtEOS(), got {stop!r}")
        check_bool(trace, "trace")
        self.model, self.unmask, self.cache, self.stop, self.trace = (
            model,
            unmask,
            cache,
            stop,
            trace,
        )
        self.guide = guide

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
        block_length: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callable[[StepRecord, torch.Tensor], None] | None = None,
    ) -> GenerationOutput:
        """Left-padded prompts [B, P] (attention_mask 0 on padding) -> GenerationOutput.

        `generator` drives every random draw (sampling, random remasking, the guide's acceptance):
        one torch.Generator draws for the whole batch at once (the official samplers' random stream,
        so a row's draws depend on its batch); a sequence of B generators, one per row (e.g.
        dllm_accel.sample_generators(seed, sample_ids, device)), gives row b the draws it would get
        decoded alone with generator b, whatever its batch, padding or companions. `callback(record,
        sequences)` is called after every step, including steps that needed no forward."""
        spec, device = self.model.spec, self.model.device
        attention_mask = self._check_prompt(input_ids, attention_mask)
        generator = row_generators(generator, input_ids.shape[0], device)
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback must be None or a function callback(record, sequences), got {callback!r}"
            )
        batch, prompt_len = input_ids.shape
        self._check_positions(prompt_len, max_new_tokens)
        block = spec.block_size
        if block is None:
            n_blocks, block_length = _blocks(max_new_tokens, block_length)
            windows = [
                (prompt_len + j * block_length, prompt_len + (j + 1) * block_length)
                for j in range(n_blocks)
            ]
            canvas_new = max_new_tokens
        else:
            check_int(block_length, "block_length", 1, optional=True)
            check_int(max_new_tokens, "max_new_tokens", 1)
            block = block_length = block if block_length is None else block_length
            windows, canvas_new = _block_causal_windows(
                attention_mask, input_ids.shape[0], prompt_len, max_new_tokens, block, device
            )
        steps = self.unmask.steps_per_block(len(windows))
        x = torch.cat(
            [
                input_ids.to(device),
                torch.full((batch, canvas_new), spec.mask_id, dtype=torch.long, device=device),
            ],
            1,
        )
        canvas_mask = (
            None
            if attention_mask is None
            else torch.cat(
                [attention_mask.to(device), attention_mask.new_ones(batch, canvas_new).to(device)],
                1,
            )
        )
        cfg = CFGRows(batch, self.unmask.cfg_scale)
        run = _Run(self, x, canvas_mask, prompt_len, cfg, block)
        nfe = total_steps = 0
        row_forwards = torch.zeros(batch, dtype=torch.long, device=device)
        # [B] rows the last forward computed that committed nothing (see _check_progress)
        stalled, stalled_at = torch.zeros(batch, dtype=torch.bool, device=device), None
        trace = [] if self.trace else None
        columns = torch.arange(x.shape[1], device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)  # rows the stop policy ended
        for block_index, (start, end) in enumerate(windows):
            in_window = _window(columns, start, end)  # [B or 1, T]
            plan = self.unmask.begin_block(
                ((x == spec.mask_id) & in_window).sum(1), steps, block_length
            )
            run.state.begin_block(start, end)
            for step in itertools.count() if steps is None else range(steps):
                masks = x == spec.mask_id  # the masked positions still to be decoded
                still_open = self.stop.open(x[:, prompt_len:], spec)
                if still_open is not None:
                    masks[:, prompt_len:] &= still_open
                candidates = masks & _window(columns, None, end) & ~done[:, None]
                # one host sync per step: whether anything is left, and the last step's progress
                left, stuck = torch.stack([candidates.any(), stalled.any()]).tolist()
                self._check_progress(stuck, stalled, stalled_at)
                if not left:
                    break
                live, rows, commit, changed = run.step(
                    StepContext(candidates, step, plan, spec, generator), masks
                )
                committed = torch.zeros(batch, dtype=torch.long, device=device)
                if live is not None:
                    nfe, total_steps = nfe + cfg.copies, total_steps + 1
                    row_forwards += live.long() * cfg.copies
                    committed.index_add_(0, rows, commit.long())
                    stalled, stalled_at = live & (committed == 0), (block_index, step)
                    done |= self._finished(x[:, prompt_len:], changed[:, prompt_len:], done)
                if trace is None and callback is None:
                    continue
                record = StepRecord(
                    block_index,
                    step,
                    live is not None,
                    committed,
                    None if live is None else run.first_full_layer(),
                )
                if trace is not None:
                    trace.append(record)
                if callback is not None:
                    callback(record, x)
            done |= self._finished(x[:, prompt_len:], None, done)
        self._check_progress(bool(stalled.any()), stalled, stalled_at)
        layer_units = int(run.units)
        x = x[:, : prompt_len + max_new_tokens]  # a block-causal canvas ends on a whole block
        return GenerationOutput(
            sequences=x,
            generated_tokens=count_generated(x[:, prompt_len:], spec),
            nfe=nfe,
            steps=total_steps,
            row_forwards=row_forwards,
            recompute_fraction=layer_units / max(1, run.full_units),
            trace=trace,
            layer_units=layer_units,
            full_units=int(run.full_units),
            ar_forwards=0 if run.verification is None else run.verification.forwards,
            ar_tokens=0 if run.verification is None else int(run.verification.tokens),
        )

    def _finished(self, generated, changed, done) -> torch.Tensor:
        finished = self.stop.finished(generated, changed, self.model.spec)
        return done if finished is None else finished

    def _check_positions(self, prompt_len: int, max_new_tokens: int) -> None:
        """The canvas (prompt, padding included, + new tokens) must fit the positions the model (and
        the guide's AR model) were trained for; past them RoPE decodes silently out of its range."""
        used = prompt_len + max_new_tokens
        limits = [("the model", self.model.spec.max_positions)]
        if self.guide is not None:
            limits.append(("the guide's AR model", self.guide.max_positions))
        for owner, limit in limits:
            if limit is not None and used > limit:
                raise ValueError(
                    f"the prompt ({prompt_len} tokens, padding included) + max_new_tokens "
                    f"({max_new_tokens}) = {used} positions, more than {owner}'s maximum of "
                    f"{limit} "
                    f"positions (from its config.json); shorten the prompt or max_new_tokens"
                )

    def _check_progress(self, stuck: bool, stalled: torch.Tensor, at: tuple | None) -> None:
        """A row computed in a step must have committed a token; one that did not had only NaN or
        -inf scores, and would leave its masks as MASK (or, without a fixed number of steps, never
        finish). `stalled` [B] marks such rows of the step `at` (block, step)."""
        if stuck:
            row = int(stalled.int().argmax())
            raise RuntimeError(
                f"row {row} committed no token at step {at[1]} of block {at[0]}: every candidate's "
                "score was NaN or -inf, so its masks would stay MASK. The logits or the scores "
                "overflowed: check the settings that scale them (cfg_scale, temperature, alg_temp) "
                f"in unmask={self.unmask!r}, and that the model's logits are finite"
            )

    def _check_prompt(self, input_ids, attention_mask) -> torch.Tensor | None:
        """Validate once; returns the attention mask, or None when nothing is padded."""
        spec = self.model.spec
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[1] == 0:
            raise ValueError(
                "input_ids has no tokens (an empty prompt); every prompt needs at least one token"
            )
        self.model.check_inputs(input_ids, attention_mask)
        if bool((input_ids == spec.mask_id).any()):
            row, position = (input_ids == spec.mask_id).nonzero()[0].tolist()
            raise ValueError(
                f"input_ids contains the mask token {spec.mask_id} (row {row}, position "
                f"{position}); "
                f"prompts must not contain it. Pad with pad_token_id ({spec.pad_id}) instead"
            )
        if attention_mask is None:
            return None
        if not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
            raise ValueError(
                "attention_mask must be left padding: in each row only 0s (padding) then only 1s; "
                "use tokenizer.padding_side = 'left'"
            )
        return None if bool(attention_mask.all()) else attention_mask


class _Run:
    """One generation's engine, refresh state and accounting; `step` edits the canvas x in place."""

    def __init__(self, sampler: Sampler, x, canvas_mask, prompt_len, cfg: CFGRows, block):
        model, spec = sampler.model, sampler.model.spec
        self.sampler, self.x, self.prompt_len, self.cfg = sampler, x, prompt_len, cfg
        rows, length = cfg.rows, x.shape[1]
        model_mask = None if canvas_mask is None else cfg.repeat(canvas_mask)  # [R, T]
        key_valid = (
            torch.ones(rows, length, dtype=torch.bool, device=x.device)
            if model_mask is None
            else model_mask.bool()
        )
        canvas = Canvas(cfg, length, prompt_len, spec.n_layers, spec.mask_id, key_valid, block)
        self.state = sampler.cache.begin(canvas)
        self.engine = Engine(
            model,
            model_mask,
            rows,
            length,
            cache=sampler.cache.keeps_cache,
            inputs=sampler.cache.keeps_inputs,
            block=block,
        )
        self.units = self.full_units = 0
        self.verification = (
            None
            if sampler.guide is None
            else sampler.guide.begin(
                x,
                None if canvas_mask is None else canvas_mask[:, :prompt_len],
                spec,
                sampler.unmask.temperature,
            )
        )

    def step(self, ctx: StepContext, masks: torch.Tensor):
        """masks [B, T]: the masked positions still to be decoded -> (live rows [B], the candidates'
        rows [M], which of them were committed [M], the positions whose token changed [B, T]); all
        None when no row had anything to commit and nothing ran."""
        sampler, x, spec = self.sampler, self.x, ctx.spec
        quota = sampler.unmask.quota(ctx)
        live = ctx.candidates.any(1) if quota is None else ctx.candidates.any(1) & (quota > 0)
        if not bool(live.any()):
            return None, None, None, None
        candidates = self.state.restrict(masks, ctx.candidates & live[:, None], quota)
        ctx = replace(ctx, candidates=candidates)
        rows, positions = candidates.nonzero(as_tuple=True)
        logits, result, model_rows = self._candidate_logits(live, rows, positions)
        commit, tokens = sampler.unmask.select(ctx, logits, quota)
        if self.verification is not None:
            commit, tokens = self.verification.verify(
                x, candidates, rows, positions, tokens, logits, commit, ctx.generator
            )
        x[rows, positions] = torch.where(commit, tokens, spec.mask_id)
        # tokens committed, then those the stop policy rewrote
        changed = torch.zeros_like(candidates)
        changed[rows, positions] = commit  # (rows, positions) are distinct: no bool index
        rewritten = sampler.stop.after_step(x[:, self.prompt_len :], spec)
        if rewritten is not None:
            changed[:, self.prompt_len :] |= rewritten
        self.state.after_step(model_rows, result, self.cfg.repeat(changed))
        if self.verification is not None:
            self.verification.after_step(x)
        self.last_forward = model_rows, result.first_full_layer
        return live, rows, commit, changed

    def first_full_layer(self) -> torch.Tensor:
        """[B] the last forward's first layer that recomputed every position, per row (-1: the row
        was not computed)."""
        model_rows, computed = self.last_forward
        first_full = torch.full((self.cfg.rows,), -1, dtype=torch.long, device=self.x.device)  # [R]
        first_full[slice(None) if model_rows is None else model_rows] = computed
        return self.cfg.earliest(first_full)

    def _candidate_logits(self, live, rows, positions):
        """Logits [M, V] of the candidates (rows, positions), in that order, from a forward of the
        live rows (both halves under classifier-free guidance)."""
        model, x, cfg = self.sampler.model, self.x, self.cfg
        ids = cfg.model_ids(x, self.prompt_len, model.spec.mask_id)  # [R, T]
        model_live = cfg.repeat(live)  # [R]
        model_rows = None if bool(model_live.all()) else model_live.nonzero().squeeze(1)
        sources = positions - model.spec.logit_shift  # the one place the shift is applied
        copy_rows = cfg.copy_rows(rows)  # per copy [M]
        # [R, T]: the head reads these: computed
        head_reads = torch.zeros_like(ids, dtype=torch.bool)
        for model_row in copy_rows:
            head_reads[model_row, sources] = True
        plan = self.state.plan(ids, model_live, head_reads)
        result = self.engine.forward(ids, model_rows, plan)
        self.units += result.units
        # NoCache's units on this step (block-causal models: up to the block's end)
        self.full_units += result.hidden.shape[0] * (plan.length or x.shape[1]) * model.n_layers
        local = model_live.cumsum(0) - 1  # model row -> row among the computed ones
        logits = cfg.mix(
            [model.head(_rows_at(result, local[model_row], sources)) for model_row in copy_rows]
        )
        return logits, result, model_rows


def _rows_at(result, rows, positions) -> torch.Tensor:
    columns = positions if result.columns is None else result.columns[rows, positions]
    return result.hidden[rows, columns]


def _window(columns, start, end) -> torch.Tensor:
    """[B or 1, T] bool: the canvas columns in [start, end) (ints, or [B] per row; None: from 0)."""
    if isinstance(end, int):
        return ((columns >= (start or 0)) & (columns < end))[None]
    inside = columns < end[:, None]
    return inside if start is None else inside & (columns >= start[:, None])


def _block_causal_windows(attention_mask, batch, prompt_len, new_tokens, block, device):
    """The blocks of a block-causal model, per row: row b (n_b prompt tokens, left-padded to
    prompt_len) decodes its blocks of `block` counted from its first token, as the official loop
    does for one prompt: from the block holding its prompt's end to the one holding its last new
    token. -> ([(start [B], end [B]) canvas columns per block; an empty window once a row has no
    block left], the canvas positions after the prompt: new_tokens, or more so that every row ends
    on a whole block)."""
    if attention_mask is None:
        lengths = [prompt_len] * batch
    else:
        lengths = attention_mask.sum(1).tolist()  # one host sync per generation
    rows = range(batch)
    pads = [prompt_len - n for n in lengths]
    first = [n // block for n in lengths]
    stop = [-(-(n + new_tokens) // block) for n in lengths]  # past the last block
    windows = []
    for j in range(max(stop[b] - first[b] for b in rows)):
        left = [first[b] + j < stop[b] for b in rows]
        starts = [pads[b] + (first[b] + j) * block if left[b] else 0 for b in rows]
        ends = [start + block if more else 0 for start, more in zip(starts, left, strict=True)]
        windows.append(tuple(torch.tensor(v, device=device) for v in (starts, ends)))
    return windows, max(pads[b] + stop[b] * block for b in rows) - prompt_len


def _check_attention_structure(cache, block_causal: bool) -> None:
    """Refuse a refresh policy that is not exact (or has no meaning) for the model's attention."""
    if block_causal and not cache.block_causal:
        raise ValueError(
            f"cache={cache!r} does not apply to a block-causal model (ModelSpec.block_size): its "
            "finished blocks' K/V are exact, so BlockPrefixCache (the default) keeps them, and "
            "NoCache runs the official loop; PrefixCache, DualCache, FrozenCache and ElasticCache "
            "are written for bidirectional models"
        )
    if not block_causal and not cache.bidirectional:
        raise ValueError(
            f"cache={cache!r} needs a block-causal model (ModelSpec.block_size): on a "
            "bidirectional model a prefix's K/V change as later tokens are committed; use "
            "PrefixCache, "
            "DualCache or ElasticCache"
        )


def _blocks(max_new_tokens, block_length) -> tuple[int, int]:
    check_int(max_new_tokens, "max_new_tokens", 1)
    if block_length is None:
        return 1, max_new_tokens
    check_int(block_length, "block_length", 1, optional=True)
    if max_new_tokens % block_length:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) must be divisible by block_length ({block_length})"
        )
    return max_new_tokens // block_length, block_length
