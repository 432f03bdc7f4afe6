"""Sampler vs a plain statement of LLaDA's official loop, side by side in one process.

    python experiments/bench_sampler.py [--threads 2] [--repeats 3]

Both decode the same prompt with the same random model (greedy, low-confidence remasking) and must
give the same tokens. The official loop computes full-vocabulary logits for the whole canvas every
step; the Sampler runs the LM head on the masked rows of the active block only. The baseline is
imported from experiments/reference_samplers.py (the statement the exactness tests use), not
rewritten.
"""

from __future__ import annotations

import argparse
import time

import reference_samplers
import torch
from threads import set_threads

from dllm_accel import llada_generate
from dllm_accel.models import build_model, tiny_config

# (vocab, d_model, layers): a head-light model and one whose head dominates, as LLaDA's does
SIZES = [(128, 64, 2), (32_000, 256, 4)]


def best_of(repeats: int, fn, *args, **kwargs):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--block", type=int, default=32)
    args = parser.parse_args()
    set_threads(args.threads)
    settings = dict(steps=args.gen, gen_length=args.gen, block_length=args.block)
    print(
        f"prompt {args.prompt}, gen {args.gen}, block {args.block}, one token per step, "
        f"{args.threads} threads, "
        f"best of {args.repeats}"
    )
    print(
        f"{'vocab':>7} {'d':>5} {'layers':>6} {'official ms':>12} {'Sampler ms':>11} "
        f"{'speedup':>8} "
        f"{'same tokens':>12}"
    )
    for vocab, d_model, layers in SIZES:
        config = tiny_config(
            "llada", vocab=vocab, d_model=d_model, n_layers=layers, mlp_hidden=4 * d_model
        )
        model = build_model(config, seed=0).requires_grad_(False)
        prompt = torch.randint(
            0, vocab - 3, (1, args.prompt), generator=torch.Generator().manual_seed(0)
        )
        official_s, expected = best_of(
            args.repeats, reference_samplers.llada, model, prompt, **settings
        )
        ours_s, got = best_of(args.repeats, llada_generate, model, prompt, **settings)
        print(
            f"{vocab:>7} {d_model:>5} {layers:>6} {official_s * 1e3:>12.0f} {ours_s * 1e3:>11.0f} "
            f"{official_s / ours_s:>7.2f}x {str(torch.equal(expected, got)):>12}"
        )


if __name__ == "__main__":
    main()
