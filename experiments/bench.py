"""Side-by-side decoding benchmark on the bundled testbed: accuracy, NFE, recompute fraction, tokens/s.

    python experiments/bench.py --model tiny-llada [--problems 300] [--batch-size 1] [--gammas 0.9 0.7]

Every method decodes the same held-out problems (greedy, the testbed's generation length), in one
process, one after another, after a warm-up batch each; tokens/s counts generated tokens up to the
first EOS / end-of-turn and times generation only. Ratios are against the official baseline (NoCache,
one token per step: LowConfidence for LLaDA, Dream's entropy algorithm for Dream) and against
DualCache + Threshold(0.9). "refresh layers" counts (row, step) pairs by the first layer the row
recomputed (0: full forward; n_layers: every layer reused).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch

import dllm_accel
from dllm_accel import DualCache, ElasticCache, NoCache, PrefixCache, Threshold
from dllm_accel.tasks import arith


def methods(model, gen_length: int, block_length: int, gammas: list[float]) -> dict:
    """name -> (cache, unmask, block_length)"""
    baseline = (NoCache(), *dllm_accel.official_method(model, gen_length, block_length))
    table = {
        "NoCache + one token per step (official)": baseline,
        "NoCache + Threshold(0.9)": (NoCache(), Threshold(0.9), block_length),
        "PrefixCache + Threshold(0.9)": (PrefixCache(), Threshold(0.9), block_length),
        "DualCache + Threshold(0.9)": (DualCache(), Threshold(0.9), block_length),
    }
    for gamma in gammas:
        for drift, boundary in (("heads", "next"), ("heads", "drifting"), ("keys", "next")):
            table[f"ElasticCache(γ {gamma}, {drift}, from {boundary}) + Threshold(0.9)"] = (
                ElasticCache(gamma=gamma, drift=drift, refresh_from=boundary), Threshold(0.9), None)
    table["ElasticCache(γ 0.9) + one token per step"] = (ElasticCache(), baseline[1], None)
    return table


def decode(model, tokenizer, problems, batch_size, cache, unmask, gen_length, block_length) -> dict:
    sampler = dllm_accel.Sampler(model, unmask=unmask, cache=cache, trace=True)
    batches = [dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in problems[i:i + batch_size]])
               for i in range(0, len(problems), batch_size)]

    def run(batch):
        return sampler.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=gen_length,
                                block_length=block_length)

    run(batches[0])  # warm-up
    correct = tokens = nfe = 0
    units, depths, seconds = [], Counter(), 0.0
    for batch, start in zip(batches, range(0, len(problems), batch_size), strict=True):
        begin = time.perf_counter()
        out = run(batch)
        seconds += time.perf_counter() - begin
        texts = tokenizer.batch_decode(out.sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(map(arith.is_correct, texts, problems[start:start + batch_size]))
        tokens, nfe = tokens + int(out.generated_tokens.sum()), nfe + out.nfe
        units.append((out.recompute_fraction, out.steps))
        depths.update(layer for r in out.trace if r.forwarded for layer in r.refresh_from.tolist() if layer >= 0)
    return dict(accuracy=correct / len(problems), nfe=nfe / len(batches), tokens_per_s=tokens / seconds,
                recompute_fraction=sum(f * s for f, s in units) / max(1, sum(s for _, s in units)),
                refresh_layers=dict(sorted(depths.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny-llada", "tiny-dream"], default="tiny-llada")
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--block-length", type=int, help="blocks of the block-based methods (default: the "
                        "testbed's, from metrics.json, else half the generation)")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.9])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = dllm_accel.load_model(args.model), dllm_accel.load_tokenizer(args.model)
    metrics = json.loads((dllm_accel.assets.path(args.model) / "metrics.json").read_text())
    gen_length = metrics["gen_length"]
    block_length = args.block_length or metrics.get("block_length") or gen_length // 2
    problems = arith.problems(args.problems, seed=0, split="test")
    table = methods(model, gen_length, block_length, args.gammas)
    print(f"{args.model}: {len(problems)} held-out problems, gen length {gen_length}, blocks of {block_length} "
          f"(block-based methods), batch size {args.batch_size}, {args.threads} threads\n")
    results = {}
    for name, (cache, unmask, blocks) in table.items():
        results[name] = decode(model, tokenizer, problems, args.batch_size, cache, unmask, gen_length, blocks)
    baseline = results["NoCache + one token per step (official)"]["tokens_per_s"]
    dual = results["DualCache + Threshold(0.9)"]["tokens_per_s"]
    print("| method | accuracy | NFE / batch | recompute fraction | tokens/s | × official | × DualCache | "
          "refresh layers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['accuracy']:.1%} | {r['nfe']:.1f} | {r['recompute_fraction']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / baseline:.2f} | {r['tokens_per_s'] / dual:.2f} | "
              f"{r['refresh_layers']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, problems=len(problems), batch_size=args.batch_size,
                           gen_length=gen_length, block_length=block_length, results=results), f, indent=2)


if __name__ == "__main__":
    main()
