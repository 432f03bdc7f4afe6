"""Engine overhead: what a query-rows step costs against a full forward, beside what its FLOPs
say.

    python experiments/engine_overhead.py [--d-model 1024 --layers 8 --heads 16 --mlp 2816 \
        --prompt 512 --gen 256 --query 24 --tracked 2 --threads 2]
    python experiments/engine_overhead.py --shape llada-8b   # LLaDA-8B's layer shape (a GPU's job)

Random weights in the real LLaDA layout. One canvas (prompt + gen, the generation masked) goes
through `Engine.forward` with fixed plans, each timed as the median of `--repeats` after a warm-up:

    full forward                   every position through every layer (NoCache's step)
    query rows                     `--query` rows through every layer against the cache
                                   (DualCache's step)
    query rows + drift monitor     the same with `--tracked` tracked rows and a monitor that
                                   computes the drift test and attention mass at every layer but
                                   never refreshes (ElasticCache's step when nothing drifts)
    query rows, refresh from L/2   query rows below the middle layer, every position from it on

Ratios are against the full forward; the FLOP ratio counts matmuls only (projections, MLP,
attention scores and mixing), so time ratio ÷ FLOP ratio is the engine's overhead factor: 1 when a
step costs what its arithmetic does, far above 1 when launches, gathers and host syncs dominate.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from threads import set_threads

from dllm_accel.engine import Engine, ForwardPlan
from dllm_accel.models import build_model, tiny_config
from dllm_accel.policies import AttentionDrift

SHAPES = {  # LLaDA-8B-Instruct's layer shape (vocab shrunk: the head is not part of the engine)
    "llada-8b": dict(d_model=4096, layers=32, heads=32, mlp=12288)
}


class NeverDrifts:
    """A drift judge that computes everything ElasticCache's reads, and refreshes nothing."""

    drift_axis = "heads"

    def drifted(self, layer, similarity, valid, rows):
        return (similarity * valid).sum(1) < -2.0  # a cosine mean is never below -1

    def mass_weights(self, rows, index, valid):
        return valid.float()

    def observe(self, layer, mass, rows):
        mass.topk(1, dim=1)


def matmul_flops(tokens: int, keys: int, d: int, kv: int, mlp: int) -> float:
    """Multiply-adds x 2 of one layer for `tokens` query rows against `keys` keys."""
    projections = tokens * (2 * d * d + 2 * d * kv + 3 * d * mlp)
    attention = 2 * tokens * keys * d
    return 2.0 * (projections + attention)


def step_flops(
    n_query: int, first_full_layer: int, length: int, layers: int, d: int, kv: int, mlp: int
) -> float:
    return first_full_layer * matmul_flops(n_query, length, d, kv, mlp) + (
        layers - first_full_layer
    ) * matmul_flops(length, length, d, kv, mlp)


def timed(run, repeats: int, device: torch.device) -> float:
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), help="a real model's layer shape (overrides the sizes)"
    )
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--mlp", type=int, default=2816)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument(
        "--query", type=int, default=24, help="query rows of a cached step (window + commits)"
    )
    parser.add_argument(
        "--tracked", type=int, default=2, help="tracked rows of the drift test (inside the query)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    args = parser.parse_args()
    if args.shape:
        vars(args).update(
            d_model=SHAPES[args.shape]["d_model"],
            layers=SHAPES[args.shape]["layers"],
            heads=SHAPES[args.shape]["heads"],
            mlp=SHAPES[args.shape]["mlp"],
        )
    if not 0 < args.tracked < args.query <= args.gen:
        parser.error("need 0 < --tracked < --query <= --gen")
    set_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    config = tiny_config(
        "llada",
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        mlp_hidden=args.mlp,
        vocab=256,
    )
    model = build_model(config, dtype=dtype, device=device)
    length = args.prompt + args.gen
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (1, length), generator=generator)
    ids[:, args.prompt :] = model.spec.mask_id
    ids = ids.to(device)
    query = torch.zeros(1, length, dtype=torch.bool, device=device)
    query[:, args.prompt : args.prompt + args.query] = True
    tracked = torch.zeros_like(query)
    tracked[:, args.prompt - args.tracked : args.prompt] = (
        True  # decoded (prompt) tokens, as ElasticCache tracks
    )
    query |= tracked
    engine = Engine(model, None, 1, length, cache=True, inputs=True)
    plans = {
        "full forward": (ForwardPlan(None, 0), length, 0),
        "query rows": (ForwardPlan(query, args.layers), int(query.sum()), args.layers),
        "query rows + drift monitor": (
            ForwardPlan(
                query, args.layers, AttentionDrift(tracked, NeverDrifts(), leave_after=False)
            ),
            int(query.sum()),
            args.layers,
        ),
        "query rows, refresh from L/2": (
            ForwardPlan(query, args.layers // 2),
            int(query.sum()),
            args.layers // 2,
        ),
    }
    kv = config["d_model"] // args.heads * config["n_kv_heads"]
    with torch.no_grad():
        engine.forward(ids, None, ForwardPlan(None, 0))  # fills the cache
        seconds = {
            name: timed(lambda plan=plan: engine.forward(ids, None, plan), args.repeats, device)
            for name, (plan, _, _) in plans.items()
        }
    full_flops = step_flops(length, 0, length, args.layers, args.d_model, kv, args.mlp)
    lines = [
        f"LLaDA layout, d_model {args.d_model}, {args.layers} layers, {args.heads} heads, MLP "
        f"{args.mlp}, "
        f"{length} positions ({args.prompt} prompt + {args.gen} generated), {args.query} query "
        "rows of which "
        f"{args.tracked} tracked, {str(dtype).removeprefix('torch.')}, {device}, {args.threads} "
        "threads, "
        f"median of {args.repeats}",
        "",
        "| step | ms | time ÷ full | FLOPs ÷ full | overhead (time ratio ÷ FLOP ratio) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (_, n_query, first_full_layer) in plans.items():
        flop_ratio = (
            step_flops(n_query, first_full_layer, length, args.layers, args.d_model, kv, args.mlp)
            / full_flops
        )
        time_ratio = seconds[name] / seconds["full forward"]
        lines.append(
            f"| {name} | {1000 * seconds[name]:.2f} | {time_ratio:.4f} | {flop_ratio:.4f} | "
            f"{time_ratio / flop_ratio:.1f}× |"
        )
    monitor = seconds["query rows + drift monitor"] / seconds["query rows"] - 1
    lines += ["", f"The drift monitor adds {monitor:.0%} to a query-rows step."]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = shlex.join(["python", "experiments/engine_overhead.py", *sys.argv[1:]])
        args.out.with_suffix(".json").write_text(
            json.dumps(dict(command=command, seconds=seconds, **vars(args)), indent=2, default=str)
            + "\n"
        )
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
