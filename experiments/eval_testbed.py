"""Held-out accuracy of the bundled testbed models, and how much a stale K/V cache costs tiny-llada.

    python experiments/eval_testbed.py [--problems 500] [--write]

Greedy decoding on the test split of dllm_accel.tasks.arith with each family's official baseline:
tiny-llada with LowConfidence (one token per step, semi-autoregressive blocks), tiny-dream with
Dream's entropy algorithm over the whole generation (steps = gen length), tiny-ar with transformers'
greedy generate. Sensitivity: tiny-llada decoded the same way, except that the K/V of every position
outside the current block come from the first step and are never refreshed. `--write` records the
figures in each model's metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import dllm_accel
from dllm_accel import LowConfidence
from dllm_accel.models import attend
from dllm_accel.models.base import Rope
from dllm_accel.policies.unmask import StepContext
from dllm_accel.tasks import arith

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny import accuracy  # noqa: E402


@torch.no_grad()
def frozen_kv_generate(model, ids, attention_mask, *, gen_length, block_length):
    """LLaDA's baseline schedule, but only the current block's rows are recomputed after the first step:
    every layer's K/V of all other positions stay those of the first step (a cache never refreshed)."""
    spec = model.spec
    batch, prompt_len = ids.shape
    x = torch.cat([ids, torch.full((batch, gen_length), spec.mask_id, dtype=torch.long)], 1)
    canvas_mask = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], 1)
    key_mask, rope = canvas_mask.bool(), model.rotary(model.positions(canvas_mask, x.shape[1]))
    keys, values, hidden = [], [], model.embed(x)
    for i in range(model.n_layers):  # the first step: a full forward that fills the cache
        q, k, v = model.layer(i).qkv(hidden, rope)
        keys.append(k)
        values.append(v)
        hidden = model.layer(i).finish(hidden, attend(q, k, v, key_mask))
    policy = LowConfidence(steps=gen_length)
    steps = policy.steps_per_block(gen_length // block_length)
    for block in range(gen_length // block_length):
        start, end = prompt_len + block * block_length, prompt_len + (block + 1) * block_length
        plan = policy.begin_block((x[:, start:end] == spec.mask_id).sum(1), steps)
        for step in range(steps):
            first = start - spec.logit_shift  # rows recomputed: the block (and the row scoring its first token)
            if block or step:
                hidden = model.embed(x[:, first:end])
                block_rope = Rope(rope.cos[:, :, first:end], rope.sin[:, :, first:end])
                for i in range(model.n_layers):
                    q, k, v = model.layer(i).qkv(hidden, block_rope)
                    k_all, v_all = keys[i].clone(), values[i].clone()
                    k_all[:, :, first:end], v_all[:, :, first:end] = k, v
                    hidden = model.layer(i).finish(hidden, attend(q, k_all, v_all, key_mask))
                offset = first
            else:
                offset = 0
            candidates = torch.zeros_like(x, dtype=torch.bool)
            candidates[:, start:end] = x[:, start:end] == spec.mask_id
            rows, positions = candidates.nonzero(as_tuple=True)
            logits = model.head(hidden[rows, positions - spec.logit_shift - offset])
            ctx = StepContext(candidates, step, plan, spec)
            commit, tokens = policy.select(ctx, logits, policy.quota(ctx))
            x[rows, positions] = torch.where(commit, tokens, spec.mask_id)
    return x


def frozen_decode(model, tokenizer, batch, *, gen_length, block_length) -> list[str]:
    ids = batch["input_ids"]
    out = frozen_kv_generate(model, ids, batch["attention_mask"], gen_length=gen_length, block_length=block_length)
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-length", type=int, help="tiny-llada's semi-autoregressive block (default: the "
                        "one in its metrics.json); tiny-dream and tiny-ar decode without blocks")
    parser.add_argument("--write", action="store_true", help="record the figures in each metrics.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problems = arith.problems(args.problems, seed=0, split="test")
    results = {}
    for name in dllm_accel.assets.BUNDLED:
        directory = dllm_accel.assets.path(name)
        metrics = json.loads((directory / "metrics.json").read_text())
        tokenizer = dllm_accel.load_tokenizer(name)
        if name == "tiny-ar":
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            model.config.eot_token_id = tokenizer.convert_tokens_to_ids("<|eot|>")
        else:
            model = dllm_accel.load_model(name)
        block_length = (args.block_length or metrics["block_length"]) if name == "tiny-llada" else None
        settings = dict(shots=metrics["shots"], gen_length=metrics["gen_length"], block_length=block_length)
        start = time.perf_counter()
        held_out = {"problems": len(problems), "split": "test", "seed": 0, **settings,
                    "accuracy": accuracy(model, tokenizer, problems, **settings)}
        if name == "tiny-llada":
            held_out["frozen_kv_accuracy"] = accuracy(model, tokenizer, problems, decode=frozen_decode, **settings)
        held_out["eval_minutes"] = round((time.perf_counter() - start) / 60, 1)
        results[name] = held_out
        print(name, json.dumps(held_out), flush=True)
        if args.write:
            metrics["held_out"] = held_out
            (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
