"""Plain re-statements of the published sampling algorithms: the specification the exactness tests
compare the Sampler with, and the baseline of bench_sampler.py.

They follow the documented behaviour step by step, the slow way: the full logits of every position
from `model(x, attention_mask)`, every scheduled step run (even those that commit nothing), one row
at a time. Only temperature 0 and deterministic ranking are covered: these are the settings whose
tokens are fully determined, so the Sampler must equal them exactly.
"""

import math

import torch


def _canvas(model, prompt, attention_mask, gen_length):
    spec = model.spec
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), spec.mask_id, dtype=torch.long)
    x[:, :prompt_len] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], 1
        )
    return x, attention_mask


def _shifted_logits(model, x, attention_mask):
    """Logit rows aligned with the tokens they score (Dream: position i scored from i - 1, 0 from
    itself)."""
    logits = model(x, attention_mask).logits
    if model.spec.logit_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
    return logits


@torch.no_grad()
def llada(
    model,
    prompt,
    attention_mask=None,
    *,
    steps,
    gen_length,
    block_length,
    cfg_scale=0.0,
    logits_eos_inf=False,
    confidence_eos_eot_inf=False,
):
    """LLaDA's generate at temperature 0 with low-confidence remasking (its generate.py, Appendix
    B)."""
    spec = model.spec
    x, attention_mask = _canvas(model, prompt, attention_mask, gen_length)
    prompt_len = prompt.shape[1]
    n_blocks = gen_length // block_length
    steps_per_block = steps // n_blocks
    is_prompt = x != spec.mask_id
    for block in range(n_blocks):
        end = prompt_len + (block + 1) * block_length
        in_block = (x[:, end - block_length : end] == spec.mask_id).sum(1).tolist()
        schedule = [
            [
                n // steps_per_block + (1 if i < n % steps_per_block else 0)
                for i in range(steps_per_block)
            ]
            for n in in_block
        ]
        for i in range(steps_per_block):
            masked = x == spec.mask_id
            if cfg_scale > 0:
                unconditional = x.clone()
                unconditional[is_prompt] = spec.mask_id
                both_masks = (
                    None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                )
                cond, uncond = model(torch.cat([x, unconditional]), both_masks).logits.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask).logits
            if logits_eos_inf:
                logits[:, :, spec.eos_id] = -math.inf
            predicted = logits.argmax(-1)
            if confidence_eos_eot_inf:
                logits[:, :, spec.eos_id] = -math.inf
                logits[:, :, spec.eot_id] = -math.inf
            confidence = torch.softmax(logits, -1).gather(-1, predicted[..., None]).squeeze(-1)
            confidence[:, end:] = -math.inf
            confidence = torch.where(masked, confidence, -math.inf)
            predicted = torch.where(masked, predicted, x)
            for row in range(x.shape[0]):
                chosen = confidence[row].topk(schedule[row][i]).indices
                x[row, chosen] = predicted[row, chosen]
    return x


@torch.no_grad()
def dream(
    model,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens,
    steps,
    alg,
    eps=1e-3,
    top_p=None,
    top_k=None,
):
    """Dream's diffusion_generate at temperature 0 for maskgit_plus / topk_margin / entropy."""
    spec = model.spec
    x, attention_mask = _canvas(model, input_ids, attention_mask, max_new_tokens)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    times = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        masked = x == spec.mask_id
        logits = _shifted_logits(model, x, attention_mask)[masked]
        if top_p is not None and top_p < 1:
            logits = _nucleus(logits, top_p)
        if top_k is not None:
            kth = logits.topk(top_k, -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, -1)
        confidence, predicted = probs.max(-1)
        if alg == "topk_margin":
            ordered = probs.sort(-1, descending=True).values
            confidence = ordered[:, 0] - ordered[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        n_masked = masked.sum() / masked.shape[0]
        t, s = times[i], times[i + 1]
        count = int(n_masked * (1 - s / t)) if i < steps - 1 else int(n_masked)
        if count == 0:
            continue
        scores = torch.full(x.shape, -math.inf, dtype=logits.dtype)
        scores[masked] = confidence
        proposal = torch.full_like(x, spec.mask_id)
        proposal[masked] = predicted
        chosen = scores.topk(count, dim=1).indices
        rows = torch.arange(x.shape[0])[:, None]
        x[rows, chosen] = proposal[rows, chosen]
    return x


def _nucleus(logits, top_p):
    ordered, order = logits.sort(-1, descending=True)
    beyond = torch.softmax(ordered, -1).cumsum(-1) > top_p
    # keep the token crossing top_p
    beyond = torch.cat([torch.zeros_like(beyond[:, :1]), beyond[:, :-1]], 1)
    remove = torch.zeros_like(beyond).scatter(-1, order, beyond)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


@torch.no_grad()
def parallel(model, prompt, *, gen_length, block_length, rule):
    """Fast-dLLM's block loop: each step, every row with masks in the current block commits the
    tokens `rule(confidences sorted descending)` admits (a count); repeat until the block has no
    mask. As the Sampler documents, MASK is never a prediction here (the loop would not end); the
    confidence is the chosen token's probability under the full softmax."""
    spec = model.spec
    x, _ = _canvas(model, prompt, None, gen_length)
    prompt_len = prompt.shape[1]
    for block in range(gen_length // block_length):
        end = prompt_len + (block + 1) * block_length
        while bool((x[:, :end] == spec.mask_id).any()):
            logits = _shifted_logits(model, x, None).double()
            for row in range(x.shape[0]):
                where = (x[row, :end] == spec.mask_id).nonzero().squeeze(1)
                if len(where) == 0:
                    continue
                row_logits = logits[row, where]
                probs = torch.softmax(row_logits, -1)
                predicted = row_logits.index_fill(
                    1, torch.tensor([spec.mask_id]), -math.inf
                ).argmax(-1)
                confidence = probs.gather(1, predicted[:, None]).squeeze(1)
                entropy = -(probs * torch.log(probs)).nan_to_num().sum(-1)
                order = rule.order(confidence, entropy)
                count = rule.count(confidence[order], entropy[order])
                x[row, where[order[:count]]] = predicted[order[:count]]
    return x


class ThresholdRule:
    def __init__(self, tau):
        self.tau = tau

    def order(self, confidence, entropy):
        return confidence.argsort(descending=True)

    def count(
        self, confidence, entropy
    ):  # the first, then the contiguous run at or above tau (sorted)
        return 1 + int((confidence[1:] >= self.tau).sum())


class FactorRule(ThresholdRule):
    def count(self, confidence, entropy):
        n = len(confidence)
        passed = 0
        for i in range(n):
            if i > 0 and confidence[i] < 1 - self.tau / (i + 2):
                break
            passed += 1
        return n if passed >= n - 1 else passed


class EntropyRule(ThresholdRule):
    def order(self, confidence, entropy):
        return entropy.argsort()

    def count(self, confidence, entropy):
        return 1 + int((entropy[1:] <= self.tau).sum())


@torch.no_grad()
def llada2(
    model,
    prompt,
    *,
    gen_length,
    block_length=32,
    steps=32,
    threshold=0.95,
    minimal_topk=1,
    eos_early_stop=False,
):
    """LLaDA2's `generate` at temperature 0 for one unpadded prompt [1, P] -> (the answer [L]: up to
    and including the first EOS, or gen_length tokens; the number of forwards). The model attends
    block-causally with blocks of block_length (its spec.block_size must say so); every step runs
    the whole canvas up to the current block's end."""
    spec = model.spec
    assert spec.block_size == block_length and prompt.shape[0] == 1
    steps = min(steps, gen_length // minimal_topk)
    prompt_len = prompt.shape[1]
    n_blocks = -(-(prompt_len + gen_length) // block_length)
    x = torch.full((1, n_blocks * block_length), spec.mask_id, dtype=torch.long)
    x[:, :prompt_len] = prompt
    schedule = [block_length // steps + (i < block_length % steps) for i in range(steps)]
    forwards = 0
    for block in range(prompt_len // block_length, n_blocks):
        end = (block + 1) * block_length
        for step in range(steps):
            window = x[0, end - block_length : end]  # a view: commits write into x
            active = window == spec.mask_id
            if not active.any():
                break
            logits = model(x[:, :end]).logits[0, -block_length:].float()
            forwards += 1
            probs = torch.softmax(logits, -1)
            tokens = probs.argmax(-1)
            confidence = torch.where(active, probs.gather(1, tokens[:, None])[:, 0], -math.inf)
            commit = confidence > threshold
            if commit.sum() < schedule[step]:
                commit = torch.zeros_like(active)
                top = confidence.topk(min(schedule[step], int(active.sum()))).indices
                commit[top] = True
            window[commit] = tokens[commit]
            generated = x[0, prompt_len:]
            if eos_early_stop and (tokens[commit] == spec.eos_id).any():
                first = int((generated == spec.eos_id).int().argmax())
                if not (generated[:first] == spec.mask_id).any():
                    return generated[: first + 1].clone(), forwards
        if (x[0, prompt_len:end] == spec.eos_id).any():
            break
    answer = x[0, prompt_len : prompt_len + gen_length]
    eos = (answer == spec.eos_id).nonzero()
    return (answer if not len(eos) else answer[: int(eos[0]) + 1]).clone(), forwards
