"""The MoE expert layer's cost: does it follow the routed (token, expert) pairs or the experts?

    python experiments/bench_experts.py [--d-model 512 --hidden 256 --top-k 8 --threads 2 \
        --experts 8 64 256 --tokens 4 32 256 --repeats 20 --device cpu --dtype float32]
    python experiments/bench_experts.py --device cuda --dtype bfloat16 --d-model 2048 \
        --hidden 1024 --experts 64 --tokens 8 64 4096   # LLaDA-MoE's layer on a GPU

One `ExpertBank` (the native path: pairs sorted by expert through two grouped GEMMs) per number of
experts, random routings of `--tokens` tokens with `--top-k` experts each, timed as the median of
`--repeats` calls beside two other ways to compute the same layer, in one process:

    native      the grouped path (dllm_accel.models.moe.ExpertBank)
    loop        the released remote code's way: a Python loop over every expert, each taking the
                tokens that chose it (one boolean lookup per expert)
    dense       every token through every expert, then the routing weights (no selection at all)

Printed per row (after checking that native and loop agree): the distinct experts the routing
touched, milliseconds of each way, and the loop/native and dense/native ratios. Every touched
expert's weights must be read once, so a cost that follows the routed pairs grows with the touched
experts (at most the pairs) and only a little with experts nobody chose.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torch.nn.functional as F
from threads import set_threads

from dllm_accel.models.moe import ExpertBank


def loop_over_experts(bank: ExpertBank, x, experts, weights):
    out = torch.zeros_like(x)
    h = bank.hidden
    for e in range(bank.n_experts):
        token, slot = torch.where(experts == e)
        y = F.silu(x[token] @ bank.gate_up[e, :h].T) * (x[token] @ bank.gate_up[e, h:].T)
        out.index_add_(0, token, (y @ bank.down[e].T) * weights[token, slot, None])
    return out


def every_expert(bank: ExpertBank, x, experts, weights):
    gate, up = torch.einsum("nd,ehd->enh", x, bank.gate_up).chunk(2, dim=-1)
    y = torch.einsum("enh,edh->end", F.silu(gate) * up, bank.down)  # [E, N, d]
    dense = torch.zeros(x.shape[0], bank.n_experts, dtype=x.dtype, device=x.device)
    dense.scatter_(1, experts, weights)
    return torch.einsum("ne,end->nd", dense, y)


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    args = parse(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(
        f"d_model {args.d_model}, expert hidden {args.hidden}, top-k {args.top_k}, "
        f"{args.dtype} on {device}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'experts':>7} {'tokens':>6} {'pairs':>6} {'touched':>7} {'native':>9} {'loop':>9} "
        f"{'dense':>9} {'loop/nat':>8} {'dense/nat':>9}"
    )
    for n_experts in args.experts:
        bank = ExpertBank(n_experts, args.d_model, args.hidden)
        torch.nn.init.normal_(bank.gate_up, std=0.02)
        torch.nn.init.normal_(bank.down, std=0.02)
        bank = bank.to(device, dtype)
        for tokens in args.tokens:
            x = torch.randn(tokens, args.d_model, device=device, dtype=dtype)
            scores = torch.rand(tokens, n_experts, device=device)
            experts = scores.topk(min(args.top_k, n_experts)).indices
            weights = torch.rand(experts.shape, device=device, dtype=dtype)
            with torch.no_grad():
                ways = [
                    functools.partial(f, bank, x, experts, weights)
                    for f in (ExpertBank.forward, loop_over_experts, every_expert)
                ]
                gap = (ways[0]().float() - ways[1]().float()).abs().max().item()
                scale = ways[1]().float().abs().max().item()
                if gap > 1e-2 * scale:
                    raise SystemExit(f"native and loop disagree: max abs {gap} (scale {scale})")
                times = [median_ms(way, args.repeats, device) for way in ways]
            native, loop, dense = times
            touched = experts.unique().numel()
            print(
                f"{n_experts:>7} {tokens:>6} {experts.numel():>6} {touched:>7} {native:>9.3f} "
                f"{loop:>9.3f} {dense:>9.3f} {loop / native:>8.2f} {dense / native:>9.2f}"
            )


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4, 32, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
