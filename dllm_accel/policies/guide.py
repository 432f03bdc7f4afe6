"""AR-guided unmasking (FlashDLM): a small autoregressive model verifies the diffusion model's
drafts.

Each step the diffusion model drafts every candidate (the unmask policy's tokens: the argmax at
temperature 0, a sample otherwise). A row's run starts at its first masked position f and ends at
its last candidate; committed tokens inside it are fed to the AR model as they are, masks as their
drafts. Acceptance walks the run left to right and stops at the first rejected draft:

    exact           draft == AR argmax
    topk_relative   draft among the AR's k most likely tokens and p_AR(draft) >= ratio * p_AR(top-1)
    speculative     accepted with probability min(1, p_AR(draft) / p_diffusion(draft)) at the unmask
                    policy's temperature (at temperature 0: exact)

The step commits the accepted drafts and whatever the unmask policy commits on its own. Position f
is always committed, so a step commits at least one token: with correct=False (FlashDLM's rule) a
rejected first draft is committed as drafted; with correct=True (speculative decoding's correction)
the first rejected draft, wherever it is, is replaced by the AR model's token (its argmax, a sample
at temperature > 0, for `speculative` a sample of the residual max(0, p_AR - p_diffusion)).

The AR cache is one transformers DynamicCache for the whole batch, addressed by slot: every forward
appends one slot column per fed position, and each row keeps a slot map and a mask of the slots it
may attend (the forward's 2-D attention mask; RoPE positions are passed per row). Cropping a row to
its committed prefix after a rejection only unmarks its slots, so rows accept different lengths in
one batched forward; trailing slots no row uses are cropped from the cache.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

import torch
from transformers import DynamicCache

from .. import assets
from ..checks import check_bool, check_choice, check_int, check_number, is_int, require
from ..models.base import ModelSpec
from ..models.loading import check_device
from ..seeding import multinomial, uniform

ACCEPTANCE = ("exact", "topk_relative", "speculative")


def _is_causal_lm(model) -> bool:
    # here, not at the top: it imports triton (tests/test_ops_dispatch)
    from transformers import PreTrainedModel

    return (
        isinstance(model, PreTrainedModel)
        and model.can_generate()
        and not getattr(model.config, "is_encoder_decoder", False)
    )


def _ids(value) -> set[int]:
    if value is None:
        return set()
    return {value} if is_int(value) else {int(v) for v in value}


def load_ar_model(path: str, *, device=None, dtype=None):
    """AutoModelForCausalLM.from_pretrained(path) in eval mode: a directory, a hub id, or a bundled
    model's name ('tiny-ar'); `dtype` a torch dtype or its name (default: the checkpoint's)."""
    from transformers import AutoModelForCausalLM  # imports triton: see _is_causal_lm

    device = check_device(device)
    source = assets.path(path) if path in assets.BUNDLED else path
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(source, **({"dtype": dtype} if dtype else {}))
    return model.to(device).eval()


class ARGuide:
    """Verifies the diffusion model's drafts with an autoregressive model; pass as
    Sampler(guide=...).

    `ar_model`: a transformers causal LM (AutoModelForCausalLM) on the diffusion model's device
    whose vocabulary matches the diffusion model's id for id; `token_map` {diffusion id: AR id}
    names special tokens that differ (e.g. Dream's <|endoftext|> scored as Qwen's <|im_end|>).
    `verify_chunk`: run positions scored per AR forward (the AR model stops reading a run once every
    row has rejected)."""

    def __init__(
        self,
        ar_model,
        *,
        acceptance: str = "topk_relative",
        k: int = 2,
        ratio: float = 0.5,
        verify_chunk: int = 32,
        correct: bool = False,
        token_map: Mapping[int, int] | None = None,
    ):
        if not _is_causal_lm(ar_model):
            raise TypeError(
                f"ar_model must be a transformers causal language model (AutoModelForCausalLM, "
                f"which reads past_key_values), got {type(ar_model).__name__}"
            )
        check_choice(acceptance, "acceptance", ACCEPTANCE)
        check_int(k, "k", 1)
        check_number(ratio, "ratio", 0, 1, open_low=True)
        check_int(verify_chunk, "verify_chunk", 1)
        check_bool(correct, "correct")
        token_map = {} if token_map is None else token_map
        require(
            isinstance(token_map, Mapping)
            and all(is_int(a) and is_int(b) and a >= 0 and b >= 0 for a, b in token_map.items()),
            "token_map",
            "None or a dict {diffusion token id: AR token id} of non-negative integers",
            token_map,
        )
        self.ar_model, self.acceptance, self.k, self.ratio = ar_model, acceptance, k, float(ratio)
        self.verify_chunk, self.correct, self.token_map = verify_chunk, correct, dict(token_map)
        self.ar_vocab = int(ar_model.config.vocab_size)
        # the Sampler checks
        self.max_positions = getattr(ar_model.config, "max_position_embeddings", None)
        # transformers >= 5.24 names it `cache` (`past_key_values` is deprecated there); remote code
        # and 4.x don't
        parameters = inspect.signature(ar_model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_logits = "logits_to_keep" in parameters

    def __repr__(self):
        return (
            f"ARGuide({type(self.ar_model).__name__}, acceptance={self.acceptance!r}, k={self.k}, "
            f"ratio={self.ratio}, verify_chunk={self.verify_chunk}, correct={self.correct}"
            + (f", token_map={self.token_map}" if self.token_map else "")
            + ")"
        )

    def check(self, spec: ModelSpec, device: torch.device) -> None:
        """Refuse a diffusion model this AR model cannot verify (the Sampler calls this when
        built)."""
        ar_device = self.ar_model.device
        if ar_device != device:
            raise ValueError(
                f"the AR model is on {ar_device}, the diffusion model on {device}; "
                f"move it with ar_model.to({str(device)!r})"
            )
        bad = {
            a: b for a, b in self.token_map.items() if a >= spec.vocab_size or b >= self.ar_vocab
        }
        if bad:
            raise ValueError(
                f"token_map {bad} names ids outside the vocabularies (diffusion: {spec.vocab_size} "
                "ids, "
                f"AR: {self.ar_vocab} ids)"
            )
        config, generation = self.ar_model.config, getattr(self.ar_model, "generation_config", None)
        ends = (
            _ids(config.eos_token_id)
            | _ids(getattr(config, "eot_token_id", None))
            | _ids(getattr(generation, "eos_token_id", None))
        )
        unmatched = [
            token for token in spec.stop_ids if self.token_map.get(token, token) not in ends
        ]
        if unmatched:
            raise ValueError(
                "the AR model's vocabulary does not match the diffusion model's: the diffusion "
                "model ends "
                f"answers with ids {list(spec.stop_ids)}, and the AR model's end-of-sequence ids "
                "are "
                f"{sorted(ends)}, without {unmatched}. Models built on one tokenizer agree on "
                "these; where only "
                "special tokens differ, name the AR model's equivalents with "
                "token_map={diffusion id: AR id}, "
                f"e.g. token_map={{{unmatched[0]}: <AR end id>}}. A vocabulary that differs beyond "
                "special tokens "
                "(LLaDA's against any public AR model's) cannot be mapped: use an AR model "
                "trained on the "
                f"diffusion model's tokenizer"
            )

    def begin(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        spec: ModelSpec,
        temperature: float,
    ) -> Verification:
        return Verification(self, x, attention_mask, spec, temperature)


class Verification:
    """One generation's AR cache, acceptance and accounting; rows are the canvas rows."""

    def __init__(self, guide: ARGuide, x, attention_mask, spec: ModelSpec, temperature: float):
        self.guide, self.spec, self.temperature = guide, spec, temperature
        batch, length = x.shape
        device = x.device
        # [B] left padding
        self.pads = (
            torch.zeros(batch, dtype=torch.long, device=device)
            if attention_mask is None
            else (attention_mask == 0).sum(1).to(device)
        )
        self.arange = torch.arange(length, device=device)
        # [B, T] the token whose K/V the cache holds at each position (left padding: none is needed)
        self.fed = torch.where(self.arange < self.pads[:, None], x, -1)
        # [B, T] its slot
        self.slot = torch.full((batch, length), -1, dtype=torch.long, device=device)
        # [B, S] the slots a row attends
        self.slot_valid = torch.zeros(batch, 0, dtype=torch.bool, device=device)
        self.keep = self.pads.clone()  # [B] the cache holds positions [0, keep) of the canvas
        self.cache = DynamicCache()
        self.forwards = self.tokens = 0
        self.to_ar = self._lookup(spec.vocab_size, guide.ar_vocab, guide.token_map, device)
        self.to_diffusion = self._lookup(
            guide.ar_vocab, spec.vocab_size, {b: a for a, b in guide.token_map.items()}, device
        )
        self.never_written = torch.zeros(guide.ar_vocab, dtype=torch.bool, device=device)
        if self.to_ar[spec.mask_id] >= 0:
            self.never_written[self.to_ar[spec.mask_id]] = True
        # fed where nothing is
        self.fill = getattr(guide.ar_model.config, "pad_token_id", None) or 0

    @staticmethod
    def _lookup(size, other, mapping, device) -> torch.Tensor:
        """id -> id in the other vocabulary (-1: none there)."""
        table = torch.arange(size, device=device)
        for a, b in mapping.items():
            table[a] = b
        return table.masked_fill_(table >= other, -1)

    # -- a step
    # --------------------------------------------------------------------------------------
    def verify(self, x, candidates, rows, positions, drafts, logits, commit, generator=None):
        """The candidates (rows, positions) [M] with the unmask policy's drafts [M], their diffusion
        logits [M, V] and its commit [M] -> (commit [M], tokens [M]) with the accepted drafts and
        each run's first position added (and, with correct=True, the first rejected draft replaced).
        What the policy commits this step counts as committed inside the run: fed as it is, never a
        reason to stop."""
        drafted = x.clone()
        drafted[rows, positions] = drafts
        index = torch.full_like(x, -1)  # [B, T] candidate -> its row in logits
        index[rows, positions] = torch.arange(rows.numel(), device=x.device)
        pending = x == self.spec.mask_id  # [B, T] drafts the guide decides
        pending[rows, positions] &= ~commit  # (rows, positions) are distinct: no bool index
        first, end = self._runs(x, candidates, pending)
        accepted_end, rejected_at, correction = (
            first.clone(),
            torch.full_like(first, -1),
            torch.zeros_like(first),
        )
        alive, begin = end > first, self.keep.clone()
        # the first forward also reads the prefix
        stop = torch.minimum(first + self.guide.verify_chunk, end)
        while True:
            count = torch.where(alive, stop - begin, 0)
            # one host sync per chunk: whether a run is left, the outputs before every run's first
            # (unread), the widest chunk
            left, skip, width = torch.stack(
                [
                    alive.any().long(),
                    torch.where(alive, first - 1 - begin, x.shape[1]).min(),
                    count.max(),
                ]
            ).tolist()
            if not left:
                break
            skip = max(0, skip)
            ar_logits = self._forward(drafted, begin, count, skip, width)
            # what they predict
            target = begin[:, None] + 1 + skip + torch.arange(ar_logits.shape[1], device=x.device)
            read_to = torch.minimum(stop + 1, end)
            window = alive[:, None] & (target >= first[:, None]) & (target < read_to[:, None])
            clamped = target.clamp(max=x.shape[1] - 1)
            is_draft = window & pending.gather(1, clamped)
            drafts_at = is_draft.nonzero(as_tuple=True)  # one sync for the four reads below
            ok = torch.ones_like(window)
            ok[drafts_at] = self._accept(
                ar_logits[drafts_at],
                drafted.gather(1, clamped)[drafts_at],
                logits,
                index.gather(1, clamped)[drafts_at],
                generator,
                is_draft.sum(1),
            )
            failed = window & ~ok
            failing = failed.any(1)
            at = target.gather(1, failed.int().argmax(1, keepdim=True)).squeeze(1)
            accepted_end = torch.where(alive, torch.where(failing, at, read_to), accepted_end)
            rejecting = alive & failing
            if self.guide.correct and bool(rejecting.any()):
                correction[rejecting] = self._correction(
                    ar_logits[failed & (target == at[:, None])],
                    logits,
                    index[rejecting, at[rejecting]],
                    generator,
                    rejecting.long(),
                )
            rejected_at = torch.where(rejecting, at, rejected_at)
            alive &= ~failing & (stop < end)
            begin = torch.where(alive, stop, begin)
            stop = torch.where(alive, torch.minimum(stop + self.guide.verify_chunk, end), stop)

        forced = (end > first)[rows] & (positions == first[rows])
        commit = commit | forced | ((positions >= first[rows]) & (positions < accepted_end[rows]))
        if self.guide.correct:
            corrected = (positions == rejected_at[rows]) & (correction[rows] >= 0)
            commit, drafts = commit | corrected, torch.where(corrected, correction[rows], drafts)
        return commit, drafts

    def _runs(self, x, candidates, pending):
        """Per row: the run [first, end): from the first masked position over committed tokens and
        candidates, to the last draft the guide decides; end == first where there is none."""
        masked = x == self.spec.mask_id
        first = masked.int().argmax(1)
        after = self.arange >= first[:, None]
        blocked = after & masked & ~candidates
        # a mask the step may not decode
        end = torch.where(blocked.any(1), blocked.int().argmax(1), x.shape[1])
        decided = after & pending & (self.arange < end[:, None])
        last = x.shape[1] - 1 - decided.flip(1).int().argmax(1)
        return first, torch.where(decided.any(1), last + 1, first)

    def after_step(self, x: torch.Tensor) -> None:
        """Crop each row's cache to its committed prefix (minus its last token, whose output
        predicts the next run's first position)."""
        masked = x == self.spec.mask_id
        first = torch.where(masked.any(1), masked.int().argmax(1), x.shape[1])
        prefix = (self.fed == x).int().cumprod(1).sum(1)
        self.keep = torch.minimum(prefix, first - 1)
        dropped = (self.arange >= self.keep[:, None]) & (self.slot >= 0)
        # the dropped positions' slots become invalid; the others write to a spare column S,
        # then dropped (a scatter: no host sync)
        n_slots = self.slot_valid.shape[1]
        target = torch.where(dropped, self.slot, n_slots)
        widened = torch.cat([self.slot_valid, self.slot_valid.new_zeros(len(x), 1)], 1)
        self.slot_valid = widened.scatter_(1, target, False)[:, :n_slots]
        self.fed.masked_fill_(self.arange >= self.keep[:, None], -1)
        self.slot.masked_fill_(dropped, -1)
        used = self.slot_valid.any(0)  # [S]
        width = (
            0
            if used.numel() == 0
            else int(torch.where(used, torch.arange(1, used.numel() + 1, device=x.device), 0).max())
        )
        if width < self.slot_valid.shape[1]:
            if width == 0:
                self.cache = DynamicCache()
            else:
                # negative: tokens to drop (transformers 4 and 5)
                self.cache.crop(width - self.slot_valid.shape[1])
            self.slot_valid = self.slot_valid[:, :width]

    # -- pieces
    # --------------------------------------------------------------------------------------
    def _forward(self, drafted, begin, count, skip, width) -> torch.Tensor:
        """Feed positions [begin, begin + count) of each row (drafts at the masks; width =
        count.max()) -> AR logits [B, n - skip, V] of the outputs from the skip-th on."""
        offsets = torch.arange(width, device=drafted.device)
        positions = begin[:, None] + offsets
        valid = offsets < count[:, None]
        tokens = drafted.gather(1, positions.clamp(max=drafted.shape[1] - 1))
        ar_tokens = self.to_ar[tokens]
        ar_tokens = torch.where(valid & (ar_tokens >= 0), ar_tokens, self.fill)
        attend = valid.clone()
        attend[:, 0] |= count == 0  # a row with nothing to read attends one throwaway slot
        out = self.guide.ar_model(
            input_ids=ar_tokens,
            attention_mask=torch.cat([self.slot_valid, attend], 1).long(),
            position_ids=(positions - self.pads[:, None]).clamp(min=0),
            use_cache=True,
            **{self.guide.cache_argument: self.cache},
            **self._keep_logits(skip, width),
        )
        # the fed positions' tokens and slots; the others go to a spare column T, then dropped
        length = self.fed.shape[1]
        target = torch.where(valid, positions, length)
        slots = (self.slot_valid.shape[1] + offsets).expand_as(positions)
        for name, values in (("fed", tokens), ("slot", slots)):
            table = getattr(self, name)
            widened = torch.cat([table, table[:, :1]], 1).scatter_(1, target, values)
            setattr(self, name, widened[:, :length])
        self.slot_valid = torch.cat([self.slot_valid, valid], 1)
        self.forwards += 1
        self.tokens = self.tokens + count.sum()  # a 0-dim tensor: read once, after the generation
        return out.logits[:, -(width - skip) :]

    def _keep_logits(self, skip, width) -> dict:
        """The LM head on the outputs read only (the prompt's would be a [B, P, V] tensor), where
        the model takes logits_to_keep."""
        return {"logits_to_keep": width - skip} if skip > 0 and self.guide.keeps_logits else {}

    def _accept(self, ar_logits, drafts, logits, index, generator, counts=None) -> torch.Tensor:
        """ar_logits [K, V_ar] predicting positions whose drafts [K] (diffusion ids) have diffusion
        logits logits[index] -> [K] bool. With generators per row, counts [B]: the drafts of each
        row, in order."""
        guide = self.guide
        ids = self.to_ar[drafts]
        scorable = ids >= 0
        ids = ids.clamp(min=0)
        if guide.acceptance == "exact" or (
            guide.acceptance == "speculative" and self.temperature == 0
        ):
            return scorable & (ar_logits.argmax(-1) == ids)
        if guide.acceptance == "topk_relative":
            probs = torch.softmax(ar_logits.float(), -1)
            chosen = probs.gather(1, ids[:, None])
            in_top_k = (probs > chosen).sum(-1) < guide.k
            return scorable & in_top_k & (chosen.squeeze(1) >= guide.ratio * probs.max(-1).values)
        p = (
            torch.softmax(ar_logits.float() / self.temperature, -1)
            .gather(1, ids[:, None])
            .squeeze(1)
        )
        q = (
            torch.softmax(logits[index].float() / self.temperature, -1)
            .gather(1, drafts[:, None])
            .squeeze(1)
        )
        u = uniform(p.shape, p.device, generator, counts)
        return scorable & (u * q < p)

    def _correction(self, ar_logits, logits, index, generator, counts=None) -> torch.Tensor:
        """The AR model's token (a diffusion id; -1 where it has none) at the first rejected drafts;
        never the diffusion model's mask token, which would leave the position undecoded. With
        generators per row, counts [B]: 1 for the rows that rejected, in order."""
        ar_logits = ar_logits.masked_fill(self.never_written, -math.inf)
        if self.temperature == 0:
            return self.to_diffusion[ar_logits.argmax(-1)]
        probs = torch.softmax(ar_logits.float() / self.temperature, -1)
        if self.guide.acceptance == "speculative":
            diffusion = torch.softmax(logits[index].float() / self.temperature, -1)
            projected = torch.zeros_like(probs)
            known = self.to_ar >= 0
            projected.index_add_(1, self.to_ar[known], diffusion[:, known])
            residual = (probs - projected).clamp(min=0)
            probs = torch.where(residual.sum(-1, keepdim=True) > 0, residual, probs)
        return self.to_diffusion[multinomial(probs, counts, generator)]
